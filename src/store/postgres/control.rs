//! Job control on PostgreSQL: cancel, pause, resume, retry, delete, the retention sweep, and
//! stats. Each transition locks the job row (`FOR UPDATE`) and is one guarded statement, as on
//! SQLite; a running worker finds its next fenced commit refused and stops.

use chrono::{DateTime, Utc};
use postgres::Client;

use super::jobs::notify;
use super::pg_err;
use crate::store::{Control, Controlled, JobId, JobStatus, Stats, StoreResult};

pub(super) fn control(conn: &mut Client, id: JobId, action: Control) -> StoreResult<Controlled> {
    let mut tx = conn.transaction().map_err(pg_err)?;
    let row = tx
        .query_opt(
            "SELECT status, blob_deleted_at IS NOT NULL FROM jobs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .map_err(pg_err)?;
    let Some(row) = row else {
        return Ok(Controlled::NotFound);
    };
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
                tx.execute("UPDATE jobs SET status = 'pending' WHERE id = $1", &[&id])
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
                         AND b.id != a.id WHERE a.id = $1 AND b.status IN ('pending', 'processing', 'paused')",
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
                         header, mapping, created_by, created_at, retry_of) \
                         SELECT dataset, 'pending', mode, filename, blob, file_size, sha256, format, options, header, \
                         mapping, created_by, now(), id FROM jobs WHERE id = $1 RETURNING id",
                        &[&id],
                    )
                    .map_err(pg_err)?
                    .get(0)
                } else {
                    tx.execute(
                        "UPDATE jobs SET status = 'pending', error = NULL, completed_at = NULL WHERE id = $1",
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
    tx.commit().map_err(pg_err)?;
    Ok(result)
}

pub(super) fn delete(conn: &mut Client, id: JobId) -> StoreResult<Option<Option<String>>> {
    let row = conn
        .query_opt(
            "DELETE FROM jobs WHERE id = $1 RETURNING blob, blob_deleted_at IS NOT NULL",
            &[&id],
        )
        .map_err(pg_err)?;
    Ok(row.map(|r| (!r.get::<_, bool>(1)).then(|| r.get(0))))
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

pub(super) fn stats(conn: &mut Client) -> StoreResult<Stats> {
    let mut stats = Stats::default();
    for r in conn
        .query("SELECT status, count(*) FROM jobs GROUP BY status", &[])
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
             WHERE status = 'completed' AND completed_at >= date_trunc('day', now())",
            &[],
        )
        .map_err(pg_err)?
        .get(0);
    stats.rows_imported_today = today as u64;
    let row = conn
        .query_one(
            "SELECT COALESCE(sum(created_count + updated_count + unchanged_count + error_count), 0)::float8, \
             COALESCE(sum(EXTRACT(EPOCH FROM completed_at - started_at)), 0)::float8 \
             FROM (SELECT * FROM jobs WHERE status = 'completed' AND started_at IS NOT NULL ORDER BY id DESC LIMIT 100) j",
            &[],
        )
        .map_err(pg_err)?;
    let (rows, seconds): (f64, f64) = (row.get(0), row.get(1));
    stats.average_rows_per_second = (seconds > 0.0).then(|| (rows / seconds).round());
    Ok(stats)
}
