//! The operator's job state machine, chunk finalisation, delete, the retention sweep and stats:
//! one implementation for both backends, each function run inside a write transaction.
//!
//! Every transition is one guarded statement (`… WHERE id = $1 AND status IN (…)`) after the
//! job row is read (and, on PostgreSQL, locked `FOR UPDATE`), so it cannot race a worker: a
//! worker that loses its job this way finds its next batch commit refused (the commit is fenced
//! on `status = 'processing'` and its lease token) and stops. The transitions are drawn in
//! ARCHITECTURE.md ("The job state machine").

use chrono::{DateTime, Utc};

use super::sql::{Sql, Value, params};
use super::tenants::audit_insert;
use super::{
    AuditEntry, Control, Controlled, JobGroup, JobId, JobStatus, Stats, StoreError, StoreResult,
};

/// Clears the lease of the rows a statement updates.
pub(super) const RELEASE: &str = "lease_token = NULL, lease_expires_ms = NULL, lease_owner = NULL";

/// Cancel, pause, resume or retry one job (and a split job's chunks), with its audit line.
pub fn control(
    c: &mut dyn Sql,
    id: JobId,
    action: Control,
    audit: Option<&AuditEntry>,
) -> StoreResult<Controlled> {
    let lock = c.dialect().for_update();
    let Some(row) = c.query_opt(
        &format!(
            "SELECT status, blob_deleted_at IS NOT NULL, parent_id, chunks_total IS NOT NULL, kind \
             FROM jobs WHERE id = $1{lock}"
        ),
        params![id],
    )?
    else {
        return Ok(Controlled::NotFound);
    };
    let status: JobStatus = row.text(0)?.parse().map_err(StoreError::Corrupt)?;
    let (blob_deleted, parent, split) = (row.bool(1)?, row.opt_i64(2)?, row.bool(3)?);
    // An export reads no file and starts over on every run: its retry is always the same job
    // again (`fromStart` changes nothing), whatever became of an earlier output file.
    let export = row.text(4)? == "export";
    if let Some(parent) = parent {
        return Ok(Controlled::Conflict(format!(
            "this job is a part of job {parent}; act on job {parent}"
        )));
    }
    // A split job is driven by its chunks: it goes back to `processing`, never to `pending`
    // (which would split it again).
    let waiting = if split { "processing" } else { "pending" };
    let conflict = |what: &str| {
        Ok(Controlled::Conflict(format!(
            "cannot {what} a job that is {}",
            status.as_str()
        )))
    };
    let now = Utc::now();
    let result = match action {
        Control::Cancel => match status {
            JobStatus::Pending | JobStatus::Processing | JobStatus::Paused => {
                c.execute(
                    &format!(
                        "UPDATE jobs SET status = 'cancelled', completed_at = $2, {RELEASE} WHERE id = $1"
                    ),
                    params![id, now],
                )?;
                Controlled::Done(id)
            }
            _ => return conflict("cancel"),
        },
        Control::Pause => match status {
            JobStatus::Paused => Controlled::Done(id),
            JobStatus::Pending | JobStatus::Processing => {
                c.execute(
                    &format!("UPDATE jobs SET status = 'paused', {RELEASE} WHERE id = $1"),
                    params![id],
                )?;
                Controlled::Done(id)
            }
            _ => return conflict("pause"),
        },
        Control::Resume => match status {
            JobStatus::Pending | JobStatus::Processing => Controlled::Done(id),
            JobStatus::Paused => {
                c.execute(
                    &format!("UPDATE jobs SET status = '{waiting}' WHERE id = $1"),
                    params![id],
                )?;
                c.notify_jobs()?;
                Controlled::Done(id)
            }
            _ => return conflict("resume"),
        },
        Control::Retry { from_start } => match status {
            JobStatus::Failed | JobStatus::Cancelled => {
                if blob_deleted && !export {
                    return Ok(Controlled::Conflict(
                        "the uploaded file is no longer kept (retention); upload it again".into(),
                    ));
                }
                if let Some(other) = active_twin(c, id)? {
                    return Ok(Controlled::Conflict(format!(
                        "the same file is already importing as job {other}"
                    )));
                }
                let target = if from_start && !export {
                    c.query_one(
                        "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, \
                         options, header, mapping, created_by, created_at, retry_of, org_id, user_id, \
                         priority, kind, params, analysis_of) \
                         SELECT dataset, 'pending', mode, filename, blob, file_size, sha256, format, options, \
                         header, mapping, created_by, $2, id, org_id, user_id, priority, kind, params, \
                         analysis_of FROM jobs WHERE id = $1 \
                         RETURNING id",
                        params![id, now],
                    )?
                    .i64(0)?
                } else {
                    c.execute(
                        &format!(
                            "UPDATE jobs SET status = '{waiting}', error = NULL, completed_at = NULL WHERE id = $1"
                        ),
                        params![id],
                    )?;
                    id
                };
                c.notify_jobs()?;
                Controlled::Done(target)
            }
            _ => return conflict("retry"),
        },
    };
    if split && result == Controlled::Done(id) {
        control_chunks(c, id, action, now)?;
    }
    // A cancelled analysis's scratch keys go with it (a no-op for other jobs).
    if matches!(action, Control::Cancel) && result == Controlled::Done(id) {
        super::jobs::scratch_drop(c, id)?;
    }
    if let (Controlled::Done(target), Some(audit)) = (&result, audit) {
        let detail = (*target != id).then(|| format!("new job {target}"));
        audit_insert(c, &audit.filled(format!("job:{id}"), detail))?;
    }
    Ok(result)
}

/// Another active job of the same file and dataset in the same organisation (another
/// organisation's is none of its business, and its id must not show).
fn active_twin(c: &mut dyn Sql, id: JobId) -> StoreResult<Option<JobId>> {
    c.query_opt(
        "SELECT b.id FROM jobs a JOIN jobs b ON b.dataset = a.dataset AND b.sha256 = a.sha256 \
         AND b.org_id IS NOT DISTINCT FROM a.org_id AND b.id != a.id AND b.kind = a.kind \
         WHERE a.id = $1 AND b.status IN ('pending', 'processing', 'paused')",
        params![id],
    )?
    .map(|r| r.i64(0))
    .transpose()
}

/// Carries an operator's action on a split job to its chunks.
fn control_chunks(
    c: &mut dyn Sql,
    parent: JobId,
    action: Control,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    match action {
        Control::Cancel => c.execute(
            &format!(
                "UPDATE jobs SET status = 'cancelled', completed_at = $2, {RELEASE} \
                 WHERE parent_id = $1 AND status IN ('pending', 'processing', 'paused')"
            ),
            params![parent, now],
        )?,
        Control::Pause => c.execute(
            &format!(
                "UPDATE jobs SET status = 'paused', {RELEASE} WHERE parent_id = $1 \
                 AND status IN ('pending', 'processing')"
            ),
            params![parent],
        )?,
        Control::Resume => c.execute(
            "UPDATE jobs SET status = 'pending' WHERE parent_id = $1 AND status = 'paused'",
            params![parent],
        )?,
        Control::Retry { .. } => c.execute(
            "UPDATE jobs SET status = 'pending', error = NULL, completed_at = NULL \
             WHERE parent_id = $1 AND status IN ('failed', 'cancelled', 'paused')",
            params![parent],
        )?,
    };
    Ok(())
}

/// Deletes a job (its chunks go with it: ON DELETE CASCADE) and returns the blobs to remove.
pub fn delete(
    c: &mut dyn Sql,
    id: JobId,
    audit: Option<&AuditEntry>,
) -> StoreResult<Option<Vec<String>>> {
    let blobs = c
        .query(
            "SELECT blob FROM jobs WHERE (id = $1 OR parent_id = $1) AND blob_deleted_at IS NULL",
            params![id],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<StoreResult<Vec<_>>>()?;
    let analysis = c
        .query_opt(
            "SELECT blob FROM jobs WHERE id = $1 AND kind = 'analysis'",
            params![id],
        )?
        .map(|r| r.text(0))
        .transpose()?;
    let n = c.execute("DELETE FROM jobs WHERE id = $1", params![id])?;
    // A file another job still uses (an import run from an analysis shares its upload) stays.
    let mut blobs = unreferenced(c, &blobs)?;
    if let Some(blob) = analysis {
        super::jobs::scratch_drop(c, id)?;
        blobs.extend(super::report_blobs(&blob, id));
    }
    if n == 1
        && let Some(audit) = audit
    {
        audit_insert(c, &audit.filled(format!("job:{id}"), None))?;
    }
    Ok((n == 1).then_some(blobs))
}

/// A chunk job reached a final state (inside the transaction that recorded it): a completed
/// chunk counts towards its parent and the last one completes it, exactly once; a failed or
/// cancelled chunk fails the parent with its error and cancels its unfinished siblings. True
/// when the parent completed.
pub fn chunk_finished(
    c: &mut dyn Sql,
    parent: JobId,
    status: JobStatus,
    error: Option<&str>,
) -> StoreResult<bool> {
    let now = Utc::now();
    if status == JobStatus::Completed {
        let row = c.query_one(
            "UPDATE jobs SET chunks_completed = chunks_completed + 1 WHERE id = $1 \
             RETURNING chunks_completed, COALESCE(chunks_total, 0)",
            params![parent],
        )?;
        if row.i64(0)? >= row.i64(1)? {
            // Its counts are its chunks' (added by their batches): its exact total, where the
            // split knew only an estimate (parts of the original file).
            let n = c.execute(
                "UPDATE jobs SET status = 'completed', completed_at = $2, \
                 total_rows = created_count + updated_count + unchanged_count + error_count \
                 WHERE id = $1 AND status = 'processing'",
                params![parent, now],
            )?;
            return Ok(n == 1);
        }
        return Ok(false);
    }
    // The parent fails for its chunk's reason, worded as an unsplit job's: a split is how the
    // job runs, not something its reader needs to know (the chunk keeps its own record).
    let message = error.unwrap_or("no reason given");
    c.execute(
        "UPDATE jobs SET status = 'failed', error = $2, completed_at = $3 WHERE id = $1 \
         AND status IN ('pending', 'processing', 'paused')",
        params![parent, message, now],
    )?;
    c.execute(
        &format!(
            "UPDATE jobs SET status = 'cancelled', completed_at = $2, {RELEASE} \
             WHERE parent_id = $1 AND status IN ('pending', 'processing', 'paused')"
        ),
        params![parent, now],
    )?;
    Ok(false)
}

/// Retention, inside a write transaction: forgets the files of jobs finished before
/// `files_before`, deletes the jobs finished before `jobs_before`.
pub fn sweep(
    c: &mut dyn Sql,
    files_before: DateTime<Utc>,
    jobs_before: DateTime<Utc>,
) -> StoreResult<(Vec<String>, u64)> {
    let finished = "status IN ('completed', 'failed', 'cancelled')";
    let blobs = c
        .query(
            &format!(
                "UPDATE jobs SET blob_deleted_at = $2 WHERE {finished} AND completed_at < $1 \
                 AND blob_deleted_at IS NULL RETURNING blob, id, kind"
            ),
            params![files_before, Utc::now()],
        )?
        .iter()
        .map(|r| Ok((r.text(0)?, r.i64(1)?, r.text(2)? == "analysis")))
        .collect::<StoreResult<Vec<_>>>()?;
    // An analysis's report goes with its file.
    let mut reports: Vec<String> = blobs
        .iter()
        .filter(|(_, _, analysis)| *analysis)
        .flat_map(|(blob, id, _)| super::report_blobs(blob, *id))
        .collect();
    let mut blobs: Vec<String> = blobs.into_iter().map(|(b, _, _)| b).collect();
    let gone = c.query(
        &format!(
            "DELETE FROM jobs WHERE {finished} AND completed_at < $1 \
             RETURNING blob, blob_deleted_at IS NOT NULL, id, kind"
        ),
        params![jobs_before],
    )?;
    for r in &gone {
        let (id, analysis) = (r.i64(2)?, r.text(3)? == "analysis");
        if analysis {
            super::jobs::scratch_drop(c, id)?;
        }
        if !r.bool(1)? {
            let blob = r.text(0)?;
            if analysis {
                reports.extend(super::report_blobs(&blob, id));
            }
            blobs.push(blob);
        }
    }
    // A file another job still uses (an import run from an analysis shares its upload) stays.
    blobs.sort();
    blobs.dedup();
    let mut blobs = unreferenced(c, &blobs)?;
    blobs.extend(reports);
    Ok((blobs, gone.len() as u64))
}

/// Those of `names` that no job references (a job whose file was removed does not count).
pub fn unreferenced(c: &mut dyn Sql, names: &[String]) -> StoreResult<Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let values: Vec<Value> = names.iter().map(Value::from).collect();
    let referenced = c
        .query(
            &format!(
                "SELECT DISTINCT blob FROM jobs WHERE blob_deleted_at IS NULL AND blob IN ({})",
                marks.join(", ")
            ),
            &values,
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<StoreResult<std::collections::HashSet<_>>>()?;
    Ok(names
        .iter()
        .filter(|n| !referenced.contains(*n))
        .cloned()
        .collect())
}

/// Every job counted by status, dataset and kind, with each group's oldest creation time: one
/// statement over the whole table (retention keeps it to weeks of jobs), for `/metrics`.
pub fn groups(c: &mut dyn Sql) -> StoreResult<Vec<JobGroup>> {
    c.query(
        "SELECT status, dataset, parent_id IS NOT NULL, count(*), min(created_at) FROM jobs \
         GROUP BY status, dataset, parent_id IS NOT NULL",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(JobGroup {
            status: r.text(0)?,
            dataset: r.text(1)?,
            chunk: r.bool(2)?,
            count: r.u64(3)?,
            oldest: r.time(4)?,
        })
    })
    .collect()
}

/// Figures over the organisation's jobs (`None`: all).
pub fn stats(c: &mut dyn Sql, org_id: Option<i64>) -> StoreResult<Stats> {
    let mut stats = Stats::default();
    for r in c.query(
        "SELECT status, count(*) FROM jobs WHERE parent_id IS NULL \
         AND (CAST($1 AS BIGINT) IS NULL OR org_id = $1) GROUP BY status",
        params![org_id],
    )? {
        let n = r.u64(1)?;
        stats.total += n;
        stats.by_status.insert(r.text(0)?, n);
    }
    for s in [
        JobStatus::Pending,
        JobStatus::Processing,
        JobStatus::Paused,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ] {
        stats.by_status.entry(s.as_str().to_string()).or_insert(0);
    }
    let midnight = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or_default();
    stats.rows_imported_today = c
        .query_one(
            "SELECT CAST(COALESCE(sum(created_count + updated_count + unchanged_count), 0) AS BIGINT) \
             FROM jobs WHERE parent_id IS NULL AND status = 'completed' AND completed_at >= $1 \
             AND (CAST($2 AS BIGINT) IS NULL OR org_id = $2)",
            params![midnight, org_id],
        )?
        .u64(0)?;
    let seconds = c.dialect().seconds_between("started_at", "completed_at");
    let r = c.query_one(
        &format!(
            "SELECT CAST(COALESCE(sum(created_count + updated_count + unchanged_count + error_count), 0) AS BIGINT), \
             CAST(COALESCE(sum({seconds}), 0) AS DOUBLE PRECISION) \
             FROM (SELECT * FROM jobs WHERE parent_id IS NULL AND status = 'completed' \
             AND started_at IS NOT NULL AND (CAST($1 AS BIGINT) IS NULL OR org_id = $1) \
             ORDER BY id DESC LIMIT 100) recent"
        ),
        params![org_id],
    )?;
    let (rows, seconds) = (r.u64(0)?, r.f64(1)?);
    stats.average_rows_per_second = (seconds > 0.0).then(|| (rows as f64 / seconds).round());
    Ok(stats)
}
