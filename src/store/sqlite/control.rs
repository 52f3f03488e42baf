//! Job control on SQLite: cancel, pause, resume, retry, delete, the retention sweep, and stats.
//!
//! Every transition is one guarded statement (`… WHERE id = ? AND status IN (…)`), so it cannot
//! race a worker: a worker that loses its job this way finds its next batch commit refused (the
//! commit is fenced on `status = 'processing'` and its lease token) and stops.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::db_err;
use super::jobs::now_text;
use crate::store::{AuditEntry, Control, Controlled, JobId, JobStatus, Stats, StoreResult};

fn status_of(conn: &Connection, id: JobId) -> StoreResult<Option<(JobStatus, bool)>> {
    let row: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT status, blob_deleted_at FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    Ok(row.and_then(|(s, deleted)| s.parse().ok().map(|s| (s, deleted.is_some()))))
}

pub(super) fn control(
    conn: &mut Connection,
    id: JobId,
    action: Control,
    audit: Option<&AuditEntry>,
) -> StoreResult<Controlled> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let Some((status, blob_deleted)) = status_of(&tx, id)? else {
        return Ok(Controlled::NotFound);
    };
    let (parent, split): (Option<i64>, bool) = tx
        .query_row(
            "SELECT parent_id, chunks_total IS NOT NULL FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db_err)?;
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
    let release = "lease_token = NULL, lease_expires_ms = NULL, lease_owner = NULL";
    let result = match action {
        Control::Cancel => match status {
            JobStatus::Pending | JobStatus::Processing | JobStatus::Paused => {
                tx.execute(
                    &format!("UPDATE jobs SET status = 'cancelled', completed_at = ?2, {release} WHERE id = ?1"),
                    params![id, now_text()],
                )
                .map_err(db_err)?;
                Controlled::Done(id)
            }
            _ => return conflict("cancel"),
        },
        Control::Pause => match status {
            JobStatus::Paused => Controlled::Done(id),
            JobStatus::Pending | JobStatus::Processing => {
                tx.execute(
                    &format!("UPDATE jobs SET status = 'paused', {release} WHERE id = ?1"),
                    [id],
                )
                .map_err(db_err)?;
                Controlled::Done(id)
            }
            _ => return conflict("pause"),
        },
        Control::Resume => match status {
            JobStatus::Pending | JobStatus::Processing => Controlled::Done(id),
            JobStatus::Paused => {
                tx.execute(
                    &format!("UPDATE jobs SET status = '{waiting}' WHERE id = ?1"),
                    [id],
                )
                .map_err(db_err)?;
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
                if let Some(other) = active_twin(&tx, id)? {
                    return Ok(Controlled::Conflict(format!(
                        "the same file is already importing as job {other}"
                    )));
                }
                if from_start {
                    tx.execute(
                        "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, options, \
                         header, mapping, created_by, created_at, retry_of, org_id, user_id) \
                         SELECT dataset, 'pending', mode, filename, blob, file_size, sha256, format, options, header, \
                         mapping, created_by, ?2, id, org_id, user_id FROM jobs WHERE id = ?1",
                        params![id, now_text()],
                    )
                    .map_err(db_err)?;
                    Controlled::Done(tx.last_insert_rowid())
                } else {
                    tx.execute(
                        &format!("UPDATE jobs SET status = '{waiting}', error = NULL, completed_at = NULL WHERE id = ?1"),
                        [id],
                    )
                    .map_err(db_err)?;
                    Controlled::Done(id)
                }
            }
            _ => return conflict("retry"),
        },
    };
    if split && result == Controlled::Done(id) {
        control_chunks(&tx, id, action)?;
    }
    if let (Controlled::Done(target), Some(audit)) = (&result, audit) {
        let detail = (*target != id).then(|| format!("new job {target}"));
        super::tenants::audit_insert(&tx, &audit.filled(format!("job:{id}"), detail))?;
    }
    tx.commit().map_err(db_err)?;
    Ok(result)
}

/// Another active job of the same file and dataset in the same organisation (another
/// organisation's is none of its business, and its id must not show).
fn active_twin(conn: &Connection, id: JobId) -> StoreResult<Option<JobId>> {
    conn.query_row(
        "SELECT b.id FROM jobs a JOIN jobs b ON b.dataset = a.dataset AND b.sha256 = a.sha256 \
         AND b.org_id IS a.org_id AND b.id != a.id \
         WHERE a.id = ?1 AND b.status IN ('pending', 'processing', 'paused')",
        [id],
        |r| r.get(0),
    )
    .optional()
    .map_err(db_err)
}

pub(super) fn delete(
    conn: &mut Connection,
    id: JobId,
    audit: Option<&AuditEntry>,
) -> StoreResult<Option<Vec<String>>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let blobs = {
        let mut stmt = tx
            .prepare("SELECT blob FROM jobs WHERE (id = ?1 OR parent_id = ?1) AND blob_deleted_at IS NULL")
            .map_err(db_err)?;
        stmt.query_map([id], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?
    };
    // Chunk jobs go with their parent (ON DELETE CASCADE).
    let n = tx
        .execute("DELETE FROM jobs WHERE id = ?1", [id])
        .map_err(db_err)?;
    if n == 1
        && let Some(audit) = audit
    {
        super::tenants::audit_insert(&tx, &audit.filled(format!("job:{id}"), None))?;
    }
    tx.commit().map_err(db_err)?;
    Ok((n == 1).then_some(blobs))
}

/// A chunk job reached a final state (inside the transaction that recorded it): a completed
/// chunk counts towards its parent and the last one completes it; a failed or cancelled chunk
/// fails the parent and cancels its unfinished siblings. True when the parent completed.
pub(super) fn chunk_finished(
    conn: &Connection,
    parent: JobId,
    chunk: JobId,
    status: JobStatus,
    error: Option<&str>,
) -> StoreResult<bool> {
    let now = now_text();
    if status == JobStatus::Completed {
        let (done, total): (i64, i64) = conn
            .query_row(
                "UPDATE jobs SET chunks_completed = chunks_completed + 1 WHERE id = ?1 \
                 RETURNING chunks_completed, COALESCE(chunks_total, 0)",
                [parent],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db_err)?;
        if done >= total {
            let n = conn
                .execute(
                    "UPDATE jobs SET status = 'completed', completed_at = ?2 WHERE id = ?1 AND status = 'processing'",
                    params![parent, now],
                )
                .map_err(db_err)?;
            return Ok(n == 1);
        }
        return Ok(false);
    }
    let index: i64 = conn
        .query_row(
            "SELECT COALESCE(chunk_index, 0) FROM jobs WHERE id = ?1",
            [chunk],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let message = format!(
        "part {} of the file failed: {}",
        index + 1,
        error.unwrap_or("no reason given")
    );
    conn.execute(
        "UPDATE jobs SET status = 'failed', error = ?2, completed_at = ?3 WHERE id = ?1 \
         AND status IN ('pending', 'processing', 'paused')",
        params![parent, message, now],
    )
    .map_err(db_err)?;
    conn.execute(
        "UPDATE jobs SET status = 'cancelled', completed_at = ?2, lease_token = NULL, lease_expires_ms = NULL, \
         lease_owner = NULL WHERE parent_id = ?1 AND status IN ('pending', 'processing', 'paused')",
        params![parent, now],
    )
    .map_err(db_err)?;
    Ok(false)
}

/// Carries an operator's action on a split job to its chunks.
fn control_chunks(conn: &Connection, parent: JobId, action: Control) -> StoreResult<()> {
    let release = "lease_token = NULL, lease_expires_ms = NULL, lease_owner = NULL";
    let sql = match action {
        Control::Cancel => format!(
            "UPDATE jobs SET status = 'cancelled', completed_at = ?2, {release} \
             WHERE parent_id = ?1 AND status IN ('pending', 'processing', 'paused')"
        ),
        Control::Pause => format!(
            "UPDATE jobs SET status = 'paused', {release} WHERE parent_id = ?1 AND status IN ('pending', 'processing') \
             AND ?2 IS NOT NULL"
        ),
        Control::Resume => {
            "UPDATE jobs SET status = 'pending' WHERE parent_id = ?1 AND status = 'paused' AND ?2 IS NOT NULL".to_string()
        }
        Control::Retry { .. } => "UPDATE jobs SET status = 'pending', error = NULL, completed_at = NULL \
             WHERE parent_id = ?1 AND status IN ('failed', 'cancelled', 'paused') AND ?2 IS NOT NULL"
            .to_string(),
    };
    conn.execute(&sql, params![parent, now_text()])
        .map_err(db_err)?;
    Ok(())
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(super) fn sweep(
    conn: &mut Connection,
    files_before: DateTime<Utc>,
    jobs_before: DateTime<Utc>,
) -> StoreResult<(Vec<String>, u64)> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let finished = "status IN ('completed', 'failed', 'cancelled')";
    let mut blobs = Vec::new();
    {
        let mut stmt = tx
            .prepare(&format!(
                "UPDATE jobs SET blob_deleted_at = ?2 WHERE {finished} AND completed_at < ?1 \
                 AND blob_deleted_at IS NULL RETURNING blob"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![text(files_before), now_text()], |r| {
                r.get::<_, String>(0)
            })
            .map_err(db_err)?;
        for r in rows {
            blobs.push(r.map_err(db_err)?);
        }
    }
    let mut deleted = 0;
    {
        let mut stmt = tx
            .prepare(&format!(
                "DELETE FROM jobs WHERE {finished} AND completed_at < ?1 RETURNING blob, blob_deleted_at"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([text(jobs_before)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .map_err(db_err)?;
        for r in rows {
            let (blob, gone) = r.map_err(db_err)?;
            deleted += 1;
            if gone.is_none() {
                blobs.push(blob);
            }
        }
    }
    tx.commit().map_err(db_err)?;
    Ok((blobs, deleted))
}

/// `org_id`: only that organisation's jobs (`None`: all).
pub(super) fn stats(conn: &Connection, org_id: Option<i64>) -> StoreResult<Stats> {
    let mut stats = Stats::default();
    {
        let mut stmt = conn
            .prepare(
                "SELECT status, count(*) FROM jobs WHERE parent_id IS NULL \
                 AND (?1 IS NULL OR org_id = ?1) GROUP BY status",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([org_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(db_err)?;
        for r in rows {
            let (status, n) = r.map_err(db_err)?;
            stats.total += n as u64;
            stats.by_status.insert(status, n as u64);
        }
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
    let midnight = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or_default();
    let today: i64 = conn
        .query_row(
            "SELECT COALESCE(sum(created_count + updated_count + unchanged_count), 0) FROM jobs \
             WHERE parent_id IS NULL AND status = 'completed' AND completed_at >= ?1 \
             AND (?2 IS NULL OR org_id = ?2)",
            params![text(midnight), org_id],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    stats.rows_imported_today = today as u64;
    let (rows, seconds): (i64, f64) = conn
        .query_row(
            "SELECT COALESCE(sum(created_count + updated_count + unchanged_count + error_count), 0), \
             COALESCE(sum((julianday(completed_at) - julianday(started_at)) * 86400.0), 0) \
             FROM (SELECT * FROM jobs WHERE parent_id IS NULL AND status = 'completed' AND started_at IS NOT NULL \
             AND (?1 IS NULL OR org_id = ?1) ORDER BY id DESC LIMIT 100)",
            [org_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db_err)?;
    stats.average_rows_per_second = (seconds > 0.0).then(|| (rows as f64 / seconds).round());
    Ok(stats)
}
