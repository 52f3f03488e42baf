//! Job control on SQLite: cancel, pause, resume, retry, delete, the retention sweep, and stats.
//!
//! Every transition is one guarded statement (`… WHERE id = ? AND status IN (…)`), so it cannot
//! race a worker: a worker that loses its job this way finds its next batch commit refused (the
//! commit is fenced on `status = 'processing'` and its lease token) and stops.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::db_err;
use super::jobs::now_text;
use crate::store::{Control, Controlled, JobId, JobStatus, Stats, StoreResult};

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
) -> StoreResult<Controlled> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let Some((status, blob_deleted)) = status_of(&tx, id)? else {
        return Ok(Controlled::NotFound);
    };
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
                tx.execute("UPDATE jobs SET status = 'pending' WHERE id = ?1", [id])
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
                         header, mapping, created_by, created_at, retry_of) \
                         SELECT dataset, 'pending', mode, filename, blob, file_size, sha256, format, options, header, \
                         mapping, created_by, ?2, id FROM jobs WHERE id = ?1",
                        params![id, now_text()],
                    )
                    .map_err(db_err)?;
                    Controlled::Done(tx.last_insert_rowid())
                } else {
                    tx.execute(
                        "UPDATE jobs SET status = 'pending', error = NULL, completed_at = NULL WHERE id = ?1",
                        [id],
                    )
                    .map_err(db_err)?;
                    Controlled::Done(id)
                }
            }
            _ => return conflict("retry"),
        },
    };
    tx.commit().map_err(db_err)?;
    Ok(result)
}

/// Another active job of the same file and dataset.
fn active_twin(conn: &Connection, id: JobId) -> StoreResult<Option<JobId>> {
    conn.query_row(
        "SELECT b.id FROM jobs a JOIN jobs b ON b.dataset = a.dataset AND b.sha256 = a.sha256 AND b.id != a.id \
         WHERE a.id = ?1 AND b.status IN ('pending', 'processing', 'paused')",
        [id],
        |r| r.get(0),
    )
    .optional()
    .map_err(db_err)
}

pub(super) fn delete(conn: &Connection, id: JobId) -> StoreResult<Option<Option<String>>> {
    let row: Option<(String, Option<String>)> = conn
        .query_row(
            "DELETE FROM jobs WHERE id = ?1 RETURNING blob, blob_deleted_at",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    Ok(row.map(|(blob, deleted)| deleted.is_none().then_some(blob)))
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

pub(super) fn stats(conn: &Connection) -> StoreResult<Stats> {
    let mut stats = Stats::default();
    {
        let mut stmt = conn
            .prepare("SELECT status, count(*) FROM jobs GROUP BY status")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
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
             WHERE status = 'completed' AND completed_at >= ?1",
            [text(midnight)],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    stats.rows_imported_today = today as u64;
    let (rows, seconds): (i64, f64) = conn
        .query_row(
            "SELECT COALESCE(sum(created_count + updated_count + unchanged_count + error_count), 0), \
             COALESCE(sum((julianday(completed_at) - julianday(started_at)) * 86400.0), 0) \
             FROM (SELECT * FROM jobs WHERE status = 'completed' AND started_at IS NOT NULL ORDER BY id DESC LIMIT 100)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db_err)?;
    stats.average_rows_per_second = (seconds > 0.0).then(|| (rows as f64 / seconds).round());
    Ok(stats)
}
