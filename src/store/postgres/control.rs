//! Job control on PostgreSQL: cancel, pause, resume, retry, delete, the retention sweep, and
//! stats. Each transition locks the job row (`FOR UPDATE`) and is one guarded statement, as on
//! SQLite; a running worker finds its next fenced commit refused and stops.

use chrono::{DateTime, Utc};
use postgres::Client;

use super::jobs::notify;
use super::pg_err;
use crate::store::{AuditEntry, Control, Controlled, JobId, JobStatus, Stats, StoreResult};

pub(super) fn control(
    conn: &mut Client,
    id: JobId,
    action: Control,
    audit: Option<&AuditEntry>,
) -> StoreResult<Controlled> {
    let mut tx = conn.transaction().map_err(pg_err)?;
    let row = tx
        .query_opt(
            "SELECT status, blob_deleted_at IS NOT NULL, parent_id, chunks_total IS NOT NULL FROM jobs \
             WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .map_err(pg_err)?;
    let Some(row) = row else {
        return Ok(Controlled::NotFound);
    };
    let parent: Option<i64> = row.get(2);
    let split: bool = row.get(3);
    if let Some(parent) = parent {
        return Ok(Controlled::Conflict(format!(
            "this job is a part of job {parent}; act on job {parent}"
        )));
    }
    // A split job is driven by its chunks: it goes back to `processing`, never to `pending`
    // (which would split it again).
    let waiting = if split { "processing" } else { "pending" };
    let status: JobStatus = row
        .get::<_, String>(0)
        .parse()
        .map_err(crate::store::StoreError::Corrupt)?;
    let blob_deleted: bool = row.get(1);
    let conflict = |what: &str| {
        Ok(Controlled::Conflict(format!(
            "cannot {what} a job that is {}",
            status.as_str()
        )))
    };
    let release = "lease_token = NULL, lease_expires_ms = NULL, lease_owner = NULL";
    let result = match action {
        Control::Cancel => match status {
            JobStatus::Pending | JobStatus::Processing | JobStatus::Paused => {
                tx.execute(
                    &format!("UPDATE jobs SET status = 'cancelled', completed_at = now(), {release} WHERE id = $1"),
                    &[&id],
                )
                .map_err(pg_err)?;
                Controlled::Done(id)
            }
            _ => return conflict("cancel"),
        },
        Control::Pause => match status {
            JobStatus::Paused => Controlled::Done(id),
            JobStatus::Pending | JobStatus::Processing => {
                tx.execute(
                    &format!("UPDATE jobs SET status = 'paused', {release} WHERE id = $1"),
                    &[&id],
                )
                .map_err(pg_err)?;
                Controlled::Done(id)
            }
            _ => return conflict("pause"),
        },
        Control::Resume => match status {
            JobStatus::Pending | JobStatus::Processing => Controlled::Done(id),
            JobStatus::Paused => {
                tx.execute(
                    &format!("UPDATE jobs SET status = '{waiting}' WHERE id = $1"),
                    &[&id],
                )
                .map_err(pg_err)?;
                notify(&mut tx)?;
                Controlled::Done(id)
            }
            _ => return conflict("resume"),
        },
        Control::Retry { from_start } => match status {
            JobStatus::Failed | JobStatus::Cancelled => {
                if blob_deleted {
                    return Ok(Controlled::Conflict(
                        "the uploaded file is no longer kept (retention); upload it again".into(),
                    ));
                }
                let twin = tx
                    .query_opt(
                        "SELECT b.id FROM jobs a JOIN jobs b ON b.dataset = a.dataset AND b.sha256 = a.sha256 \
                         AND b.org_id IS NOT DISTINCT FROM a.org_id AND b.id != a.id WHERE a.id = $1 AND b.status IN ('pending', 'processing', 'paused')",
                        &[&id],
                    )
                    .map_err(pg_err)?;
                if let Some(twin) = twin {
                    let other: i64 = twin.get(0);
                    return Ok(Controlled::Conflict(format!(
                        "the same file is already importing as job {other}"
                    )));
                }
                let target = if from_start {
                    tx.query_one(
                        "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, options, \
                         header, mapping, created_by, created_at, retry_of, org_id, user_id) \
                         SELECT dataset, 'pending', mode, filename, blob, file_size, sha256, format, options, header, \
                         mapping, created_by, now(), id, org_id, user_id FROM jobs WHERE id = $1 RETURNING id",
                        &[&id],
                    )
                    .map_err(pg_err)?
                    .get(0)
                } else {
                    tx.execute(
                        &format!("UPDATE jobs SET status = '{waiting}', error = NULL, completed_at = NULL WHERE id = $1"),
                        &[&id],
                    )
                    .map_err(pg_err)?;
                    id
                };
                notify(&mut tx)?;
                Controlled::Done(target)
            }
            _ => return conflict("retry"),
        },
    };
    if split && result == Controlled::Done(id) {
        control_chunks(&mut tx, id, action)?;
    }
    if let (Controlled::Done(target), Some(audit)) = (&result, audit) {
        let detail = (*target != id).then(|| format!("new job {target}"));
        super::tenants::audit_insert(&mut tx, &audit.filled(format!("job:{id}"), detail))?;
    }
    tx.commit().map_err(pg_err)?;
    Ok(result)
}

pub(super) fn delete(
    conn: &mut Client,
    id: JobId,
    audit: Option<&AuditEntry>,
) -> StoreResult<Option<Vec<String>>> {
    let mut tx = conn.transaction().map_err(pg_err)?;
    let blobs: Vec<String> = tx
        .query(
            "SELECT blob FROM jobs WHERE (id = $1 OR parent_id = $1) AND blob_deleted_at IS NULL",
            &[&id],
        )
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Chunk jobs go with their parent (ON DELETE CASCADE).
    let n = tx
        .execute("DELETE FROM jobs WHERE id = $1", &[&id])
        .map_err(pg_err)?;
    if n == 1
        && let Some(audit) = audit
    {
        super::tenants::audit_insert(&mut tx, &audit.filled(format!("job:{id}"), None))?;
    }
    tx.commit().map_err(pg_err)?;
    Ok((n == 1).then_some(blobs))
}

/// A chunk job reached a final state (inside the transaction that recorded it): a completed
/// chunk counts towards its parent and the last one completes it (the row lock on the parent
/// makes exactly one finaliser); a failed or cancelled chunk fails the parent and cancels its
/// unfinished siblings.
pub(super) fn chunk_finished(
    tx: &mut postgres::Transaction<'_>,
    parent: JobId,
    chunk: JobId,
    status: JobStatus,
    error: Option<&str>,
) -> StoreResult<bool> {
    if status == JobStatus::Completed {
        let row = tx
            .query_one(
                "UPDATE jobs SET chunks_completed = chunks_completed + 1 WHERE id = $1 \
                 RETURNING chunks_completed, COALESCE(chunks_total, 0)",
                &[&parent],
            )
            .map_err(pg_err)?;
        let (done, total): (i32, i32) = (row.get(0), row.get(1));
        if done >= total {
            let n = tx
                .execute(
                    "UPDATE jobs SET status = 'completed', completed_at = now() WHERE id = $1 AND status = 'processing'",
                    &[&parent],
                )
                .map_err(pg_err)?;
            return Ok(n == 1);
        }
        return Ok(false);
    }
    let index: i32 = tx
        .query_one(
            "SELECT COALESCE(chunk_index, 0) FROM jobs WHERE id = $1",
            &[&chunk],
        )
        .map_err(pg_err)?
        .get(0);
    let message = format!(
        "part {} of the file failed: {}",
        index + 1,
        error.unwrap_or("no reason given")
    );
    tx.execute(
        "UPDATE jobs SET status = 'failed', error = $2, completed_at = now() WHERE id = $1 \
         AND status IN ('pending', 'processing', 'paused')",
        &[&parent, &message],
    )
    .map_err(pg_err)?;
    tx.execute(
        "UPDATE jobs SET status = 'cancelled', completed_at = now(), lease_token = NULL, lease_expires_ms = NULL, \
         lease_owner = NULL WHERE parent_id = $1 AND status IN ('pending', 'processing', 'paused')",
        &[&parent],
    )
    .map_err(pg_err)?;
    Ok(false)
}

/// Carries an operator's action on a split job to its chunks.
fn control_chunks(
    tx: &mut postgres::Transaction<'_>,
    parent: JobId,
    action: Control,
) -> StoreResult<()> {
    let release = "lease_token = NULL, lease_expires_ms = NULL, lease_owner = NULL";
    let sql = match action {
        Control::Cancel => format!(
            "UPDATE jobs SET status = 'cancelled', completed_at = now(), {release} \
             WHERE parent_id = $1 AND status IN ('pending', 'processing', 'paused')"
        ),
        Control::Pause => format!(
            "UPDATE jobs SET status = 'paused', {release} WHERE parent_id = $1 AND status IN ('pending', 'processing')"
        ),
        Control::Resume => {
            "UPDATE jobs SET status = 'pending' WHERE parent_id = $1 AND status = 'paused'"
                .to_string()
        }
        Control::Retry { .. } => {
            "UPDATE jobs SET status = 'pending', error = NULL, completed_at = NULL \
             WHERE parent_id = $1 AND status IN ('failed', 'cancelled', 'paused')"
                .to_string()
        }
    };
    tx.execute(&sql, &[&parent]).map_err(pg_err)?;
    if matches!(action, Control::Resume | Control::Retry { .. }) {
        notify(tx)?;
    }
    Ok(())
}

pub(super) fn sweep(
    conn: &mut Client,
    files_before: DateTime<Utc>,
    jobs_before: DateTime<Utc>,
) -> StoreResult<(Vec<String>, u64)> {
    let mut tx = conn.transaction().map_err(pg_err)?;
    let finished = "status IN ('completed', 'failed', 'cancelled')";
    let mut blobs: Vec<String> = tx
        .query(
            &format!(
                "UPDATE jobs SET blob_deleted_at = now() WHERE {finished} AND completed_at < $1 \
                 AND blob_deleted_at IS NULL RETURNING blob"
            ),
            &[&files_before],
        )
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let deleted = tx
        .query(
            &format!("DELETE FROM jobs WHERE {finished} AND completed_at < $1 RETURNING blob, blob_deleted_at IS NULL"),
            &[&jobs_before],
        )
        .map_err(pg_err)?;
    for r in &deleted {
        if r.get::<_, bool>(1) {
            blobs.push(r.get(0));
        }
    }
    tx.commit().map_err(pg_err)?;
    Ok((blobs, deleted.len() as u64))
}

/// `org_id`: only that organisation's jobs (`None`: all).
pub(super) fn stats(conn: &mut Client, org_id: Option<i64>) -> StoreResult<Stats> {
    let mut stats = Stats::default();
    for r in conn
        .query(
            "SELECT status, count(*) FROM jobs WHERE parent_id IS NULL \
             AND ($1::bigint IS NULL OR org_id = $1) GROUP BY status",
            &[&org_id],
        )
        .map_err(pg_err)?
    {
        let n = r.get::<_, i64>(1) as u64;
        stats.total += n;
        stats.by_status.insert(r.get(0), n);
    }
    for s in [
        "pending",
        "processing",
        "paused",
        "completed",
        "failed",
        "cancelled",
    ] {
        stats.by_status.entry(s.to_string()).or_insert(0);
    }
    let today: i64 = conn
        .query_one(
            "SELECT COALESCE(sum(created_count + updated_count + unchanged_count), 0)::bigint FROM jobs \
             WHERE parent_id IS NULL AND status = 'completed' AND completed_at >= date_trunc('day', now()) \
             AND ($1::bigint IS NULL OR org_id = $1)",
            &[&org_id],
        )
        .map_err(pg_err)?
        .get(0);
    stats.rows_imported_today = today as u64;
    let row = conn
        .query_one(
            "SELECT COALESCE(sum(created_count + updated_count + unchanged_count + error_count), 0)::float8, \
             COALESCE(sum(EXTRACT(EPOCH FROM completed_at - started_at)), 0)::float8 \
             FROM (SELECT * FROM jobs WHERE parent_id IS NULL AND status = 'completed' AND started_at IS NOT NULL \
             AND ($1::bigint IS NULL OR org_id = $1) ORDER BY id DESC LIMIT 100) j",
            &[&org_id],
        )
        .map_err(pg_err)?;
    let (rows, seconds): (f64, f64) = (row.get(0), row.get(1));
    stats.average_rows_per_second = (seconds > 0.0).then(|| (rows / seconds).round());
    Ok(stats)
}
