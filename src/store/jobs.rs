//! Jobs, claims, leases and row errors: one implementation for both backends.
//!
//! The claim is one statement ([`claim`]): the first claimable job becomes `processing` under a
//! new lease token. Every later write of the worker is fenced by that token: zero rows updated
//! means the lease was lost.
//!
//! **Claim order.** Highest `priority` first; among equals, the job whose organisation has the
//! fewest jobs and chunks running (`processing` under a live lease), so one organisation's
//! backlog cannot starve the others; then the oldest (id). With `--org-max-running N`, nothing
//! of an organisation already running N is claimed. Priority never reorders jobs of one
//! organisation's dataset: the one-writer rule below still runs them in upload order.
//!
//! **One writer per (organisation, dataset).** A job's in-file duplicate check reads the
//! `_sluice_job` stamps its own batches left, so no other job may write the same table of the
//! same organisation while it runs; and overlapping uploads must take effect in upload order.
//! So the claim skips a job while another top-level job of its organisation and dataset is
//! `processing`, or, for a job not yet started, while an earlier one waits (`pending`): jobs into
//! one dataset run one after another in id (upload) order, chunks of one split job in parallel,
//! and other organisations and datasets are untouched. Claims are serialised (SQLite's one write
//! lock; PostgreSQL's [`CLAIM_LOCK`]), so two workers never both see "nobody is writing".

use chrono::Utc;

use super::control::{RELEASE, chunk_finished};
use super::ledger;
use super::sql::{Dialect, Row, Sql, Value, params};
use super::tenants::audit_insert;
use super::{
    AuditEntry, ChunkClaim, Completion, Cursors, ErrorRecord, Inserted, Job, JobFilter, JobId,
    JobStatus, Lease, NewChunk, NewJob, Priority, StoreError, StoreResult,
};
use crate::import::tally::{ErrorSummary, Tally};

pub const JOB_COLUMNS: &str = "id, dataset, status, mode, filename, blob, file_size, sha256, format, options, \
    header, mapping, total_rows, rows_done, created_count, updated_count, unchanged_count, error_count, \
    batches_done, error, created_by, created_at, started_at, completed_at, attempts, lease_owner, duplicate_of, \
    retry_of, blob_deleted_at IS NOT NULL, parent_id, chunk_index, chunks_total, chunks_completed, org_id, \
    user_id, (SELECT name FROM users WHERE users.id = jobs.user_id), priority, kind, params, result, analysis_of, \
    rolled_back_by, deleted_count, ledger_cursor";

/// How many columns [`JOB_COLUMNS`] names: a query may read more after them.
const JOB_COLUMN_COUNT: usize = 44;

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("job {what}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// A job row read with [`JOB_COLUMNS`].
pub fn job_from_row(r: &Row) -> StoreResult<Job> {
    Ok(Job {
        id: r.i64(0)?,
        dataset: r.text(1)?,
        status: r.text(2)?.parse().map_err(StoreError::Corrupt)?,
        mode: json(&format!("\"{}\"", r.text(3)?), "mode")?,
        filename: r.text(4)?,
        blob: r.text(5)?,
        file_size: r.u64(6)?,
        sha256: r.text(7)?,
        format: json(&format!("\"{}\"", r.text(8)?), "format")?,
        options: r.json(9, "job options")?,
        header: r.json(10, "job header")?,
        mapping: r.json(11, "job mapping")?,
        total_rows: r.opt_u64(12)?,
        rows_done: r.u64(13)?,
        created_count: r.u64(14)?,
        updated_count: r.u64(15)?,
        unchanged_count: r.u64(16)?,
        error_count: r.u64(17)?,
        batches_done: r.u64(18)?,
        error: r.opt_text(19)?,
        created_by: r.opt_i64(20)?,
        created_at: r.time(21)?,
        started_at: r.opt_time(22)?,
        completed_at: r.opt_time(23)?,
        attempts: r.u64(24)?,
        lease_owner: r.opt_text(25)?,
        duplicate_of: r.opt_i64(26)?,
        retry_of: r.opt_i64(27)?,
        blob_deleted: r.bool(28)?,
        parent_id: r.opt_i64(29)?,
        chunk_index: r.opt_u32(30)?,
        chunks_total: r.opt_u32(31)?,
        chunks_completed: r.u32(32)?,
        org_id: r.opt_i64(33)?,
        user_id: r.opt_i64(34)?,
        user_name: r.opt_text(35)?,
        priority: Priority::from_rank(r.i64(36)?).map_err(StoreError::Corrupt)?,
        queue_position: None,
        kind: r.text(37)?.parse().map_err(StoreError::Corrupt)?,
        params: r.opt_text(38)?.map(|t| json(&t, "params")).transpose()?,
        result: r.opt_text(39)?.map(|t| json(&t, "result")).transpose()?,
        analysis_of: r.opt_i64(40)?,
        rolled_back_by: r.opt_i64(41)?,
        deleted_count: r.u64(42)?,
        ledger_cursor: r.opt_i64(43)?,
    })
}

/// A random lease token.
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    // Without randomness, a time-derived token still separates leases of one process.
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&Utc::now().timestamp_millis().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn find_idempotent(
    c: &mut dyn Sql,
    created_by: Option<i64>,
    key: &str,
) -> StoreResult<Option<JobId>> {
    c.query_opt(
        "SELECT id FROM jobs WHERE created_by IS NOT DISTINCT FROM $1 AND idempotency_key = $2",
        params![created_by, key],
    )?
    .map(|r| r.i64(0))
    .transpose()
}

/// Inside a write transaction: see [`super::JobStore::job_insert`].
pub fn insert(
    c: &mut dyn Sql,
    job: &NewJob,
    lease: Option<(&str, u64)>,
    audit: Option<&AuditEntry>,
) -> StoreResult<Inserted> {
    // Serialise inserts of the same file so the duplicate check and the insert agree.
    c.lock_key(&job.sha256)?;
    // And every insert with every claim: ids are then given in commit order, so a claim never
    // sees a later upload while an earlier one is still committing (PostgreSQL commits in any
    // order otherwise, and the later job would start first).
    c.lock_key(CLAIM_LOCK)?;
    if let Some(key) = &job.idempotency_key
        && let Some(id) = find_idempotent(c, job.created_by, key)?
    {
        return Ok(Inserted::Replayed(id));
    }
    // The same file counts as the same job only for the same kind: analysing a file that is
    // being imported is no duplicate of the import (an export has no file: its `sha256` is empty
    // and never matches, see below).
    let same_file = params![
        job.dataset.as_str(),
        job.sha256.as_str(),
        job.org_id,
        job.kind.as_str()
    ];
    if !job.sha256.is_empty()
        && let Some(r) = c.query_opt(
            "SELECT id FROM jobs WHERE org_id = $3 AND dataset = $1 AND sha256 = $2 AND kind = $4 \
         AND status IN ('pending', 'processing', 'paused')",
            same_file,
        )?
    {
        return Ok(Inserted::ActiveDuplicate(r.i64(0)?));
    }
    // A synchronous job starts at once, so it must find its dataset free (see `claim`).
    if lease.is_some()
        && let Some(id) = dataset_writer(c, job.org_id, &job.dataset)?
    {
        return Ok(Inserted::DatasetBusy(id));
    }
    let duplicate_of = c
        .query_one(
            "SELECT max(id) FROM jobs WHERE org_id = $3 AND dataset = $1 AND sha256 = $2 \
             AND kind = $4 AND sha256 <> '' AND status = 'completed'",
            same_file,
        )?
        .opt_i64(0)?;
    let now = Utc::now();
    let (status, token, expires, started) = match lease {
        Some((token, ms)) => (
            JobStatus::Processing,
            Some(token),
            Some(now.timestamp_millis() + ms as i64),
            Some(now),
        ),
        None => (JobStatus::Pending, None, None, None),
    };
    let id = c
        .query_one(
            "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, options, header, \
             mapping, created_by, created_at, started_at, attempts, lease_token, lease_expires_ms, \
             idempotency_key, retry_of, duplicate_of, org_id, user_id, priority, kind, params, analysis_of) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21, $22, $23, $24, $25, $26) RETURNING id",
            params![
                job.dataset.as_str(),
                status.as_str(),
                job.mode.as_str(),
                job.filename.as_str(),
                job.blob.as_str(),
                job.file_size,
                job.sha256.as_str(),
                to_json(&job.format).trim_matches('"'),
                to_json(&job.options),
                to_json(&job.header),
                to_json(&job.mapping),
                job.created_by,
                now,
                started,
                i64::from(lease.is_some()),
                token,
                expires,
                job.idempotency_key.as_deref(),
                job.retry_of,
                duplicate_of,
                job.org_id,
                job.user_id,
                job.priority.rank(),
                job.kind.as_str(),
                job.params.as_ref().map(to_json),
                job.analysis_of,
            ],
        )?
        .i64(0)?;
    if lease.is_none() {
        c.notify_jobs()?;
    }
    if let Some(audit) = audit {
        audit_insert(c, &audit.filled(format!("job:{id}"), None))?;
    }
    Ok(Inserted::Created(id))
}

pub fn get(c: &mut dyn Sql, id: JobId) -> StoreResult<Option<Job>> {
    let Some(mut job) = c
        .query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
            params![id],
        )?
        .as_ref()
        .map(job_from_row)
        .transpose()?
    else {
        return Ok(None);
    };
    with_queue_position(c, &mut job)?;
    Ok(Some(job))
}

/// A job and where its changes lie in the change feed ([`ledger::job_range`]), read in one
/// statement: a status request is one round trip (two for a pending job's queue place).
pub fn get_with_changes(c: &mut dyn Sql, id: JobId) -> StoreResult<Option<(Job, Option<Cursors>)>> {
    let Some(row) = c.query_opt(
        &format!(
            "SELECT {JOB_COLUMNS}, {} FROM jobs WHERE id = $1",
            ledger::RANGE_COLUMNS
        ),
        params![id],
    )?
    else {
        return Ok(None);
    };
    let mut job = job_from_row(&row)?;
    let range = ledger::range_at(&row, JOB_COLUMN_COUNT)?;
    with_queue_position(c, &mut job)?;
    Ok(Some((job, range)))
}

pub fn list(c: &mut dyn Sql, filter: &JobFilter) -> StoreResult<(Vec<Job>, u64)> {
    let condition = "parent_id IS NULL AND (CAST($1 AS TEXT) IS NULL OR status = $1) \
         AND (CAST($2 AS TEXT) IS NULL OR dataset = $2) AND (CAST($3 AS BIGINT) IS NULL OR org_id = $3)";
    let filter_params = [
        Value::from(filter.status.map(JobStatus::as_str)),
        Value::from(filter.dataset.as_deref()),
        Value::from(filter.org_id),
    ];
    let total = c
        .query_one(
            &format!("SELECT count(*) FROM jobs WHERE {condition}"),
            &filter_params,
        )?
        .u64(0)?;
    let mut page = filter_params.to_vec();
    page.extend([Value::from(filter.limit), Value::from(filter.offset)]);
    let mut jobs = c
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE {condition} ORDER BY id DESC LIMIT $4 OFFSET $5"
            ),
            &page,
        )?
        .iter()
        .map(job_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    for job in &mut jobs {
        with_queue_position(c, job)?;
    }
    Ok((jobs, total))
}

/// The advisory lock every claim and every job insert takes on PostgreSQL.
pub const CLAIM_LOCK: &str = "sluice.claim";

/// Why a job may not start or continue yet: another top-level job of its organisation and
/// dataset is running, or — for a top-level job not yet started — an earlier one waits. Among
/// several running ones (a split job resumed while another ran), the earliest goes on and the
/// others' chunks wait. `j` is the candidate; its top-level job is `COALESCE(j.parent_id, j.id)`.
///
/// Exports read a snapshot and write no row: they are never held back and hold nothing back
/// (`kind = 'export'` is left out both as the candidate and as the blocking `o`).
const WRITER_BUSY: &str = "(j.kind <> 'export' AND EXISTS (SELECT 1 FROM jobs o \
     WHERE o.parent_id IS NULL AND o.dataset = j.dataset AND o.org_id IS NOT DISTINCT FROM j.org_id \
     AND o.kind <> 'export' AND o.id <> COALESCE(j.parent_id, j.id) \
     AND ((o.status = 'processing' AND ((j.parent_id IS NULL AND j.status = 'pending') \
                                        OR o.id < COALESCE(j.parent_id, j.id))) \
          OR (o.status = 'pending' AND j.parent_id IS NULL AND j.status = 'pending' AND o.id < j.id))))";

/// How many jobs and chunks of `job`'s organisation (`job` is a table alias) are running:
/// `processing` under a lease that has not expired at `now_ms` (a placeholder). A split job's
/// parent holds no lease, its chunks do; a synchronous import counts while it runs. Answered
/// from the `jobs_org_running` index.
fn org_running(job: &str, now_ms: &str) -> String {
    format!(
        "(SELECT count(*) FROM jobs r WHERE r.org_id = {job}.org_id AND r.status = 'processing' \
         AND r.lease_expires_ms >= {now_ms})"
    )
}

/// Claims the first claimable job for `owner` in claim order (see the module doc): pending, or
/// processing with an expired lease, not held back by another job writing its dataset, and (with
/// `org_max_running` > 0) of an organisation running fewer than that. Runs in the backend's
/// claim scope (PostgreSQL: a transaction, [`CLAIM_LOCK`] taken here).
pub fn claim(
    c: &mut dyn Sql,
    owner: &str,
    lease_ms: u64,
    org_max_running: u32,
) -> StoreResult<Option<(Job, Lease)>> {
    c.lock_key(CLAIM_LOCK)?;
    let token = new_token();
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let lock = c.dialect().skip_locked();
    let running = org_running("j", "$4");
    let Some(row) = c.query_opt(
        &format!(
            "UPDATE jobs SET status = 'processing', lease_token = $1, lease_expires_ms = $2, \
             attempts = attempts + 1, started_at = COALESCE(started_at, $3), lease_owner = $5 \
             WHERE id = (SELECT j.id FROM jobs j \
                         WHERE (j.status = 'pending' OR (j.status = 'processing' AND j.lease_expires_ms < $4)) \
                         AND NOT {WRITER_BUSY} \
                         AND (CAST($6 AS BIGINT) = 0 OR {running} < CAST($6 AS BIGINT)) \
                         ORDER BY j.priority DESC, {running}, j.id LIMIT 1{lock}) \
             RETURNING {JOB_COLUMNS}"
        ),
        params![
            token.as_str(),
            now_ms + lease_ms as i64,
            now,
            now_ms,
            owner,
            org_max_running
        ],
    )?
    else {
        return Ok(None);
    };
    let job = job_from_row(&row)?;
    let lease = Lease {
        job_id: job.id,
        token,
    };
    Ok(Some((job, lease)))
}

/// Sets a pending top-level job's [`Job::queue_position`]: 1 + the pending top-level jobs ahead
/// of it in claim order, at this moment. Ahead are the earlier uploads into its own dataset of
/// its organisation (they run first whatever their priority), and every other pending job that
/// is not held back by the one-writer rule and comes first by priority, then by its
/// organisation's running count, then by id. An estimate: running counts change as jobs start
/// and end, later uploads of a higher priority or of a quieter organisation overtake, and chunks
/// and `--org-max-running` are left out.
fn with_queue_position(c: &mut dyn Sql, job: &mut Job) -> StoreResult<()> {
    if job.status != JobStatus::Pending || job.parent_id.is_some() {
        return Ok(());
    }
    // `j` is each other pending job (WRITER_BUSY is written for `j`), `me` the job asked about.
    let (theirs, mine) = (org_running("j", "$2"), org_running("me", "$2"));
    let ahead = c
        .query_one(
            &format!(
                "SELECT count(*) FROM jobs j, jobs me \
                 WHERE me.id = $1 AND j.status = 'pending' AND j.parent_id IS NULL AND j.id <> me.id \
                 AND ((j.org_id IS NOT DISTINCT FROM me.org_id AND j.dataset = me.dataset AND j.id < me.id) \
                      OR (NOT {WRITER_BUSY} AND (j.priority > me.priority \
                          OR (j.priority = me.priority AND ({theirs} < {mine} \
                              OR ({theirs} = {mine} AND j.id < me.id))))))"
            ),
            params![job.id, Utc::now().timestamp_millis()],
        )?
        .u64(0)?;
    job.queue_position = Some(ahead + 1);
    Ok(())
}

/// The top-level job of this organisation that is writing `dataset` or waiting to, if any: a
/// synchronous import, which runs in its request, may not start beside it (an export is no
/// writer). Asked under
/// [`CLAIM_LOCK`].
fn dataset_writer(c: &mut dyn Sql, org: i64, dataset: &str) -> StoreResult<Option<JobId>> {
    c.query_opt(
        "SELECT id FROM jobs WHERE parent_id IS NULL AND dataset = $1 AND org_id = $2 \
         AND kind <> 'export' AND status IN ('pending', 'processing') ORDER BY id LIMIT 1",
        params![dataset, org],
    )?
    .map(|r| r.i64(0))
    .transpose()
}

pub fn heartbeat(c: &mut dyn Sql, lease: &Lease, lease_ms: u64) -> StoreResult<bool> {
    let expires = Utc::now().timestamp_millis() + lease_ms as i64;
    Ok(c.execute(
        "UPDATE jobs SET lease_expires_ms = $1 WHERE id = $2 AND lease_token = $3 AND status = 'processing'",
        params![expires, lease.job_id, lease.token.as_str()],
    )? == 1)
}

pub fn set_total(c: &mut dyn Sql, lease: &Lease, total_rows: u64) -> StoreResult<bool> {
    Ok(c.execute(
        "UPDATE jobs SET total_rows = $1 WHERE id = $2 AND lease_token = $3",
        params![total_rows, lease.job_id, lease.token.as_str()],
    )? == 1)
}

/// Records what the job produced (see [`super::Job::result`]); fenced by the lease.
pub fn set_progress(c: &mut dyn Sql, lease: &Lease, rows_done: u64) -> StoreResult<bool> {
    Ok(c.execute(
        "UPDATE jobs SET rows_done = $1 WHERE id = $2 AND lease_token = $3",
        params![rows_done, lease.job_id, lease.token.as_str()],
    )? == 1)
}

pub fn set_result(c: &mut dyn Sql, lease: &Lease, result: &serde_json::Value) -> StoreResult<bool> {
    Ok(c.execute(
        "UPDATE jobs SET result = $1 WHERE id = $2 AND lease_token = $3",
        params![to_json(result), lease.job_id, lease.token.as_str()],
    )? == 1)
}

/// Inside a write transaction: see [`super::JobStore::analysis_restart`].
pub fn analysis_restart(c: &mut dyn Sql, lease: &Lease) -> StoreResult<bool> {
    let n = c.execute(
        "UPDATE jobs SET rows_done = 0, created_count = 0, updated_count = 0, unchanged_count = 0, \
         error_count = 0, batches_done = 0, deleted_count = 0, result = NULL \
         WHERE id = $1 AND lease_token = $2 AND status = 'processing' AND kind = 'analysis'",
        params![lease.job_id, lease.token.as_str()],
    )?;
    if n != 1 {
        return Ok(false);
    }
    c.execute(
        "DELETE FROM job_errors WHERE job_id = $1",
        params![lease.job_id],
    )?;
    scratch_drop(c, lease.job_id)?;
    Ok(true)
}

/// See [`super::JobStore::scratch_drop`].
pub fn scratch_drop(c: &mut dyn Sql, job: JobId) -> StoreResult<()> {
    c.execute(
        &format!("DROP TABLE IF EXISTS \"{}\"", super::scratch_table(job)),
        &[],
    )?;
    Ok(())
}

/// Inside a write transaction: see [`super::JobStore::job_finish`].
pub fn finish(
    c: &mut dyn Sql,
    lease: &Lease,
    completion: Option<&Completion>,
    status: JobStatus,
    error: Option<&str>,
) -> StoreResult<Option<u64>> {
    // A sync's guard is asked before the end is recorded: a job refused by it ends `failed`
    // (its webhook and events never say `completed`).
    let (mut refused, mut chunk) = (None, false);
    if let Some(Completion::Sync(sync)) = completion
        && status == JobStatus::Completed
        && let Some(is_chunk) = completes_owner(c, lease)?
    {
        refused = super::sync::refusal(c, sync)?;
        chunk = is_chunk;
    }
    let (status, error) = match refused.as_deref() {
        Some(message) if !chunk => (JobStatus::Failed, Some(message)),
        _ => (status, error),
    };
    // A job that read its whole file knows its exact row total: the progress total may have
    // been an estimate (`read::row_total`; a part's share of it). A chunk's counts are its own;
    // an export's and a rollback's totals were exact from the start.
    let exact_total = if status == JobStatus::Completed {
        "total_rows = CASE WHEN kind NOT IN ('export', 'rollback') \
         THEN created_count + updated_count + unchanged_count + error_count ELSE total_rows END,"
    } else {
        ""
    };
    let Some(row) = c.query_opt(
        &format!(
            "UPDATE jobs SET status = $1, error = $2, completed_at = $3, {exact_total} {RELEASE} \
             WHERE id = $4 AND lease_token = $5 RETURNING parent_id, kind"
        ),
        params![
            status.as_str(),
            error,
            Utc::now(),
            lease.job_id,
            lease.token.as_str()
        ],
    )?
    else {
        return Ok(None);
    };
    // An analysis's scratch keys end with it, whatever its end.
    if row.text(1)? == "analysis" {
        scratch_drop(c, lease.job_id)?;
    }
    let completed = match (row.opt_i64(0)?, refused.as_deref()) {
        // The last chunk of a sync past its guard: the chunk did its part, the job fails.
        (Some(parent), Some(message)) => {
            c.execute(
                "UPDATE jobs SET chunks_completed = chunks_completed + 1, status = 'failed', \
                 error = $2, completed_at = $3 WHERE id = $1 AND status = 'processing'",
                params![parent, message, Utc::now()],
            )?;
            false
        }
        (Some(parent), None) => chunk_finished(c, parent, status, error)?,
        (None, _) => status == JobStatus::Completed,
    };
    let deleted = match completion {
        Some(Completion::Replace(replace)) if completed => {
            let deleted = super::replace::record(c, replace)?;
            for sql in replace.statements() {
                c.batch(&sql)?;
            }
            deleted
        }
        Some(Completion::Sync(sync)) if completed => super::sync::delete(c, sync)?,
        _ => 0,
    };
    Ok(Some(deleted))
}

/// Whether the job holding `lease` completing now completes its top-level job — it is one, or
/// the last unfinished chunk of its parent —, and then whether it is a chunk. On PostgreSQL the
/// parent's row is locked first: two last chunks ending at once would otherwise both count the
/// other as unfinished, and the one completing the job would skip a sync's guard.
fn completes_owner(c: &mut dyn Sql, lease: &Lease) -> StoreResult<Option<bool>> {
    let Some(row) = c.query_opt(
        "SELECT parent_id FROM jobs WHERE id = $1 AND lease_token = $2",
        params![lease.job_id, lease.token.as_str()],
    )?
    else {
        return Ok(None);
    };
    let Some(parent) = row.opt_i64(0)? else {
        return Ok(Some(false));
    };
    let lock = if c.dialect() == Dialect::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let p = c.query_one(
        &format!(
            "SELECT chunks_completed, COALESCE(chunks_total, 0) FROM jobs WHERE id = $1{lock}"
        ),
        params![parent],
    )?;
    Ok((p.i64(0)? + 1 >= p.i64(1)?).then_some(true))
}

/// Inside a write transaction: see [`super::JobStore::job_split`].
pub fn split(
    c: &mut dyn Sql,
    lease: &Lease,
    total_rows: u64,
    chunks: &[NewChunk],
    claim: Option<ChunkClaim<'_>>,
) -> StoreResult<Option<Vec<(Job, Lease)>>> {
    let n = c.execute(
        &format!(
            "UPDATE jobs SET total_rows = $1, chunks_total = $2, {RELEASE} \
             WHERE id = $3 AND lease_token = $4 AND status = 'processing'"
        ),
        params![total_rows, chunks.len(), lease.job_id, lease.token.as_str()],
    )?;
    if n != 1 {
        return Ok(None);
    }
    let now = Utc::now();
    let mut claimed = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let token = claim.map(|_| new_token());
        let row = c.query_one(
            &format!(
                "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, options, header, \
                 mapping, created_by, created_at, total_rows, parent_id, chunk_index, org_id, user_id, priority, \
                 kind, params, lease_token, lease_expires_ms, lease_owner, attempts, started_at) \
                 SELECT dataset, CASE WHEN CAST($8 AS TEXT) IS NULL THEN 'pending' ELSE 'processing' END, mode, filename, $2, $3, \
                 sha256 || '#chunk' || CAST($4 AS INTEGER), $5, $6, header, mapping, created_by, $7, $9, id, $4, \
                 org_id, user_id, priority, kind, params, $8, $10, $11, \
                 CASE WHEN CAST($8 AS TEXT) IS NULL THEN 0 ELSE 1 END, $12 \
                 FROM jobs WHERE id = $1 RETURNING {JOB_COLUMNS}"
            ),
            params![
                lease.job_id,
                chunk.blob.as_str(),
                chunk.size,
                i,
                chunk.format.as_str(),
                to_json(&chunk.options).as_str(),
                now,
                token.as_deref(),
                chunk.rows,
                claim.map(|c| now.timestamp_millis() + c.lease_ms as i64),
                claim.map(|c| c.owner),
                claim.map(|_| now)
            ],
        )?;
        if let Some(token) = token {
            let job = job_from_row(&row)?;
            claimed.push((
                Lease {
                    job_id: job.id,
                    token,
                },
                job,
            ));
        }
    }
    c.notify_jobs()?;
    Ok(Some(claimed.into_iter().map(|(l, j)| (j, l)).collect()))
}

/// Gives the job back (shutdown): it stays `processing` and is claimable at once.
pub fn release(c: &mut dyn Sql, lease: &Lease) -> StoreResult<()> {
    c.execute(
        "UPDATE jobs SET lease_token = NULL, lease_expires_ms = 0, lease_owner = NULL \
         WHERE id = $1 AND lease_token = $2",
        params![lease.job_id, lease.token.as_str()],
    )?;
    c.notify_jobs()
}

pub fn errors_page(
    c: &mut dyn Sql,
    job: JobId,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<ErrorRecord>, u64)> {
    let total = c
        .query_one(
            "SELECT count(*) FROM job_errors WHERE job_id = $1",
            params![job],
        )?
        .u64(0)?;
    let errors = c
        .query(
            "SELECT \"row\", \"column\", value, message, record FROM job_errors WHERE job_id = $1 \
             ORDER BY \"row\" LIMIT $2 OFFSET $3",
            params![job, limit, offset],
        )?
        .iter()
        .map(error_record)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((errors, total))
}

/// Up to `limit` row errors after row `after`, in row order (a keyset page: each costs the
/// same wherever it starts).
pub fn errors_after(
    c: &mut dyn Sql,
    job: JobId,
    after: u64,
    limit: u64,
) -> StoreResult<Vec<ErrorRecord>> {
    c.query(
        "SELECT \"row\", \"column\", value, message, record FROM job_errors \
         WHERE job_id = $1 AND \"row\" > $2 ORDER BY \"row\" LIMIT $3",
        params![job, after, limit],
    )?
    .iter()
    .map(error_record)
    .collect()
}

/// Every row error of `job` counted by column and by message shape, read in keyset pages of
/// (row, column, message) so the tally costs memory for its counts only.
pub fn errors_tally(c: &mut dyn Sql, job: JobId) -> StoreResult<ErrorSummary> {
    const PAGE: u64 = 5_000;
    let mut tally = Tally::default();
    let mut after = 0u64;
    loop {
        let rows = c.query(
            "SELECT \"row\", \"column\", message FROM job_errors \
             WHERE job_id = $1 AND \"row\" > $2 ORDER BY \"row\" LIMIT $3",
            params![job, after, PAGE],
        )?;
        for r in &rows {
            after = r.u64(0)?;
            tally.add(after, r.opt_text(1)?.as_deref(), &r.text(2)?);
        }
        if (rows.len() as u64) < PAGE {
            return Ok(tally.summary());
        }
    }
}

fn error_record(r: &Row) -> StoreResult<ErrorRecord> {
    Ok(ErrorRecord {
        row: r.u64(0)?,
        column: r.opt_text(1)?,
        value: r.opt_text(2)?,
        message: r.text(3)?,
        record: r.json(4, "error record")?,
    })
}
