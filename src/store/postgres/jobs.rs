//! The job store on PostgreSQL: tokens, jobs, leases and row errors.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::Row;
use postgres::fallible_iterator::FallibleIterator;

use super::writer::PgSink;
use super::{CHANNEL, PgStore, pg_err};
use crate::dataset::{Dataset, Datasets};
use crate::import::SourceOptions;
use crate::import::{BatchSink, Mode};
use crate::store::Replacement;
use crate::store::{AuditEntry, AuditRecord, Org, OrgLimits, Principal, Role, TokenInfo, User};
use crate::store::{
    Control, Controlled, Delivery, DeliveryAttempt, DeliveryState, DueDelivery, ErrorRecord,
    Inserted, Job, JobEvent, JobFilter, JobId, JobStatus, JobStore, Lease, NewChunk, NewDelivery,
    NewJob, Stats, StoreError, StoreResult, Template, Webhook,
};

pub(super) const JOB_COLUMNS: &str = "id, dataset, status, mode, filename, blob, file_size, sha256, format, options, \
    header, mapping, total_rows, rows_done, created_count, updated_count, unchanged_count, error_count, \
    batches_done, error, created_by, created_at, started_at, completed_at, attempts, lease_owner, duplicate_of, \
    retry_of, blob_deleted_at, parent_id, chunk_index, chunks_total, chunks_completed, org_id, user_id, \
    (SELECT name FROM users WHERE users.id = jobs.user_id)";

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("job {what}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

pub(super) fn job_from_row(r: &Row) -> StoreResult<Job> {
    let u = |i: usize| -> u64 { r.get::<_, i64>(i).max(0) as u64 };
    let status: String = r.get(2);
    let mode: String = r.get(3);
    let format: String = r.get(8);
    Ok(Job {
        id: r.get(0),
        dataset: r.get(1),
        status: status.parse().map_err(StoreError::Corrupt)?,
        mode: json(&format!("\"{mode}\""), "mode")?,
        filename: r.get(4),
        blob: r.get(5),
        file_size: u(6),
        sha256: r.get(7),
        format: json(&format!("\"{format}\""), "format")?,
        options: json(r.get::<_, &str>(9), "options")?,
        header: json(r.get::<_, &str>(10), "header")?,
        mapping: json(r.get::<_, &str>(11), "mapping")?,
        total_rows: r.get::<_, Option<i64>>(12).map(|n| n.max(0) as u64),
        rows_done: u(13),
        created_count: u(14),
        updated_count: u(15),
        unchanged_count: u(16),
        error_count: u(17),
        batches_done: u(18),
        error: r.get(19),
        created_by: r.get(20),
        created_at: r.get(21),
        started_at: r.get(22),
        completed_at: r.get(23),
        attempts: u(24),
        lease_owner: r.get(25),
        duplicate_of: r.get(26),
        retry_of: r.get(27),
        blob_deleted: r.get::<_, Option<DateTime<Utc>>>(28).is_some(),
        parent_id: r.get(29),
        chunk_index: r.get::<_, Option<i32>>(30).map(|n| n as u32),
        chunks_total: r.get::<_, Option<i32>>(31).map(|n| n as u32),
        chunks_completed: r.get::<_, i32>(32) as u32,
        org_id: r.get(33),
        user_id: r.get(34),
        user_name: r.get(35),
    })
}

pub(super) fn new_token() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Announces that a job may be claimable (delivered when the transaction commits).
pub(super) fn notify(tx: &mut impl postgres::GenericClient) -> StoreResult<()> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .map_err(pg_err)?;
    Ok(())
}

fn find_idempotent(
    c: &mut impl postgres::GenericClient,
    created_by: Option<i64>,
    key: &str,
) -> StoreResult<Option<JobId>> {
    let row = c
        .query_opt(
            "SELECT id FROM jobs WHERE created_by IS NOT DISTINCT FROM $1 AND idempotency_key = $2",
            &[&created_by, &key],
        )
        .map_err(pg_err)?;
    Ok(row.map(|r| r.get(0)))
}

impl JobStore for PgStore {
    fn datasets_prepare(&self, datasets: &Datasets) -> StoreResult<()> {
        let mut conn = self.conn()?;
        super::tables::prepare(&mut conn, datasets)
    }

    fn dataset_prepare(&self, dataset: &Dataset) -> StoreResult<()> {
        super::tables::prepare_dataset(&mut *self.conn()?, dataset)
    }

    fn org_insert(&self, name: &str) -> StoreResult<Option<i64>> {
        super::tenants::org_insert(&mut *self.conn()?, name)
    }

    fn org_find(&self, name: &str) -> StoreResult<Option<i64>> {
        super::tenants::org_find(&mut *self.conn()?, name)
    }

    fn org_exists(&self, id: i64) -> StoreResult<bool> {
        super::tenants::org_exists(&mut *self.conn()?, id)
    }

    fn org_set_limits(&self, id: i64, limits: OrgLimits) -> StoreResult<bool> {
        super::tenants::org_set_limits(&mut *self.conn()?, id, limits)
    }

    fn user_insert(
        &self,
        org_id: i64,
        name: &str,
        role: Role,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Option<i64>> {
        self.audited(
            audit,
            |c| super::tenants::user_insert(c, org_id, name, role),
            |id| id.map(|id| format!("user:{id}")),
        )
    }

    fn user_get(&self, id: i64) -> StoreResult<Option<User>> {
        super::tenants::user_get(&mut *self.conn()?, id)
    }

    fn org_list(&self) -> StoreResult<Vec<Org>> {
        super::tenants::org_list(&mut *self.conn()?)
    }

    fn user_list(&self, org_id: Option<i64>) -> StoreResult<Vec<User>> {
        super::tenants::user_list(&mut *self.conn()?, org_id)
    }

    fn token_list(&self, org_id: Option<i64>) -> StoreResult<Vec<TokenInfo>> {
        super::tenants::token_list(&mut *self.conn()?, org_id)
    }

    fn user_first_admin(&self) -> StoreResult<Option<i64>> {
        super::tenants::user_first_admin(&mut *self.conn()?)
    }

    fn token_count(&self) -> StoreResult<u64> {
        super::tenants::token_count(&mut *self.conn()?)
    }

    fn token_insert(
        &self,
        label: &str,
        token_hash: &str,
        user_id: i64,
        expires_at: Option<DateTime<Utc>>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<i64> {
        self.audited(
            audit,
            |c| super::tenants::token_insert(c, label, token_hash, user_id, expires_at),
            |id| Some(format!("token:{id}")),
        )
    }

    fn token_find(&self, token_hash: &str) -> StoreResult<Option<Principal>> {
        super::tenants::token_find(&mut *self.conn()?, token_hash)
    }

    fn token_org(&self, id: i64) -> StoreResult<Option<i64>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT u.org_id FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
                &[&id],
            )
            .map_err(pg_err)?
            .map(|r| r.get(0)))
    }

    fn token_revoke(
        &self,
        id: i64,
        org_id: Option<i64>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Option<i64>> {
        self.audited(
            audit,
            |c| super::tenants::token_revoke(c, id, org_id),
            |org| org.map(|_| format!("token:{id}")),
        )
    }

    fn audit_list(
        &self,
        org_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<AuditRecord>, u64)> {
        super::tenants::audit_list(&mut *self.conn()?, org_id, limit, offset)
    }

    fn job_insert(
        &self,
        job: &NewJob,
        lease: Option<(&str, u64)>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Inserted> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg_err)?;
        // Serialise inserts of the same file so the duplicate check and the insert agree.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&job.sha256])
            .map_err(pg_err)?;
        if let Some(key) = &job.idempotency_key
            && let Some(id) = find_idempotent(&mut tx, job.created_by, key)?
        {
            return Ok(Inserted::Replayed(id));
        }
        let active = tx
            .query_opt(
                "SELECT id FROM jobs WHERE org_id = $3 AND dataset = $1 AND sha256 = $2 \
                 AND status IN ('pending', 'processing', 'paused')",
                &[&job.dataset, &job.sha256, &job.org_id],
            )
            .map_err(pg_err)?;
        if let Some(row) = active {
            return Ok(Inserted::ActiveDuplicate(row.get(0)));
        }
        let duplicate_of: Option<i64> = tx
            .query_one(
                "SELECT max(id) FROM jobs WHERE org_id = $3 AND dataset = $1 AND sha256 = $2 AND status = 'completed'",
                &[&job.dataset, &job.sha256, &job.org_id],
            )
            .map_err(pg_err)?
            .get(0);
        let (status, token, expires, attempts) = match lease {
            Some((token, ms)) => (
                JobStatus::Processing,
                Some(token),
                Some(now_ms() + ms as i64),
                1i64,
            ),
            None => (JobStatus::Pending, None, None, 0),
        };
        let format = to_json(&job.format);
        let row = tx
            .query_one(
                "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, options, header, \
                 mapping, created_by, created_at, started_at, attempts, lease_token, lease_expires_ms, \
                 idempotency_key, retry_of, duplicate_of, org_id, user_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now(), \
                 CASE WHEN $13::bigint = 1 THEN now() END, $13, $14, $15, $16, $17, $18, $19, $20) RETURNING id",
                &[
                    &job.dataset,
                    &status.as_str(),
                    &job.mode.as_str(),
                    &job.filename,
                    &job.blob,
                    &(job.file_size as i64),
                    &job.sha256,
                    &format.trim_matches('"'),
                    &to_json(&job.options),
                    &to_json(&job.header),
                    &to_json(&job.mapping),
                    &job.created_by,
                    &attempts,
                    &token,
                    &expires,
                    &job.idempotency_key,
                    &job.retry_of,
                    &duplicate_of,
                    &job.org_id,
                    &job.user_id,
                ],
            )
            .map_err(pg_err)?;
        if lease.is_none() {
            notify(&mut tx)?;
        }
        let id: i64 = row.get(0);
        if let Some(audit) = audit {
            super::tenants::audit_insert(&mut tx, &audit.filled(format!("job:{id}"), None))?;
        }
        tx.commit().map_err(pg_err)?;
        Ok(Inserted::Created(id))
    }

    fn job_find_idempotent(
        &self,
        created_by: Option<i64>,
        key: &str,
    ) -> StoreResult<Option<JobId>> {
        find_idempotent(&mut *self.conn()?, created_by, key)
    }

    fn job_get(&self, id: JobId) -> StoreResult<Option<Job>> {
        let row = self
            .conn()?
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                &[&id],
            )
            .map_err(pg_err)?;
        row.as_ref().map(job_from_row).transpose()
    }

    fn job_list(&self, filter: &JobFilter) -> StoreResult<(Vec<Job>, u64)> {
        let mut conn = self.conn()?;
        let status = filter.status.map(JobStatus::as_str);
        let dataset = filter.dataset.as_deref();
        let condition = "parent_id IS NULL AND ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR dataset = $2) \
             AND ($3::bigint IS NULL OR org_id = $3)";
        let total: i64 = conn
            .query_one(
                &format!("SELECT count(*) FROM jobs WHERE {condition}"),
                &[&status, &dataset, &filter.org_id],
            )
            .map_err(pg_err)?
            .get(0);
        let rows = conn
            .query(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {condition} ORDER BY id DESC LIMIT $4 OFFSET $5"),
                &[&status, &dataset, &filter.org_id, &(filter.limit as i64), &(filter.offset as i64)],
            )
            .map_err(pg_err)?;
        let jobs = rows
            .iter()
            .map(job_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((jobs, total as u64))
    }

    fn job_claim(&self, owner: &str, lease_ms: u64) -> StoreResult<Option<(Job, Lease)>> {
        let token = new_token();
        let now = now_ms();
        let row = self
            .conn()?
            .query_opt(
                &format!(
                    "UPDATE jobs SET status = 'processing', lease_token = $1, lease_expires_ms = $2, \
                     attempts = attempts + 1, started_at = COALESCE(started_at, now()), lease_owner = $4 \
                     WHERE id = (SELECT id FROM jobs WHERE status = 'pending' \
                                 OR (status = 'processing' AND lease_expires_ms < $3) \
                                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                     RETURNING {JOB_COLUMNS}"
                ),
                &[&token, &(now + lease_ms as i64), &now, &owner],
            )
            .map_err(pg_err)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let job = job_from_row(&row)?;
                let lease = Lease {
                    job_id: job.id,
                    token,
                };
                Ok(Some((job, lease)))
            }
        }
    }

    fn job_heartbeat(&self, lease: &Lease, lease_ms: u64) -> StoreResult<bool> {
        let n = self
            .conn()?
            .execute(
                "UPDATE jobs SET lease_expires_ms = $1 WHERE id = $2 AND lease_token = $3 AND status = 'processing'",
                &[&(now_ms() + lease_ms as i64), &lease.job_id, &lease.token],
            )
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    fn job_set_total(&self, lease: &Lease, total_rows: u64) -> StoreResult<bool> {
        let n = self
            .conn()?
            .execute(
                "UPDATE jobs SET total_rows = $1 WHERE id = $2 AND lease_token = $3",
                &[&(total_rows as i64), &lease.job_id, &lease.token],
            )
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    fn job_finish(
        &self,
        lease: &Lease,
        replace: Option<&Replacement>,
        status: JobStatus,
        error: Option<&str>,
    ) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg_err)?;
        let row = tx
            .query_opt(
                "UPDATE jobs SET status = $1, error = $2, completed_at = now(), lease_token = NULL, \
                 lease_expires_ms = NULL, lease_owner = NULL WHERE id = $3 AND lease_token = $4 RETURNING parent_id",
                &[&status.as_str(), &error, &lease.job_id, &lease.token],
            )
            .map_err(pg_err)?;
        let Some(row) = row else {
            return Ok(false);
        };
        let completed = match row.get::<_, Option<i64>>(0) {
            Some(parent) => {
                super::control::chunk_finished(&mut tx, parent, lease.job_id, status, error)?
            }
            None => status == JobStatus::Completed,
        };
        if completed && let Some(replace) = replace {
            for sql in replace.statements() {
                tx.batch_execute(&sql).map_err(pg_err)?;
            }
        }
        tx.commit().map_err(pg_err)?;
        Ok(true)
    }

    fn job_split(
        &self,
        lease: &Lease,
        total_rows: u64,
        options: &SourceOptions,
        chunks: &[NewChunk],
    ) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg_err)?;
        let n = tx
            .execute(
                "UPDATE jobs SET total_rows = $1, chunks_total = $2, lease_token = NULL, lease_expires_ms = NULL, \
                 lease_owner = NULL WHERE id = $3 AND lease_token = $4 AND status = 'processing'",
                &[&(total_rows as i64), &(chunks.len() as i32), &lease.job_id, &lease.token],
            )
            .map_err(pg_err)?;
        if n != 1 {
            return Ok(false);
        }
        let options = to_json(options);
        for (i, c) in chunks.iter().enumerate() {
            tx.execute(
                "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, options, header, \
                 mapping, created_by, created_at, total_rows, parent_id, chunk_index, org_id, user_id) \
                 SELECT dataset, 'pending', mode, filename, $2, $3, sha256 || '#chunk' || $4::int, 'csv', $5, header, \
                 mapping, created_by, now(), $6, id, $4::int, org_id, user_id FROM jobs WHERE id = $1",
                &[&lease.job_id, &c.blob, &(c.size as i64), &(i as i32), &options, &(c.rows as i64)],
            )
            .map_err(pg_err)?;
        }
        notify(&mut tx)?;
        tx.commit().map_err(pg_err)?;
        Ok(true)
    }

    fn job_release(&self, lease: &Lease) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg_err)?;
        tx.execute(
            "UPDATE jobs SET lease_token = NULL, lease_expires_ms = 0, lease_owner = NULL WHERE id = $1 AND lease_token = $2",
            &[&lease.job_id, &lease.token],
        )
        .map_err(pg_err)?;
        notify(&mut tx)?;
        tx.commit().map_err(pg_err)
    }

    fn announces_jobs(&self) -> bool {
        true
    }

    fn jobs_wait(&self, timeout: Duration) -> StoreResult<bool> {
        self.wait_for_notify(timeout)
    }

    fn job_control(
        &self,
        id: JobId,
        action: Control,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Controlled> {
        super::control::control(&mut *self.conn()?, id, action, audit)
    }

    fn job_delete(
        &self,
        id: JobId,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Option<Vec<String>>> {
        super::control::delete(&mut *self.conn()?, id, audit)
    }

    fn jobs_sweep(
        &self,
        files_before: DateTime<Utc>,
        jobs_before: DateTime<Utc>,
    ) -> StoreResult<(Vec<String>, u64)> {
        super::control::sweep(&mut *self.conn()?, files_before, jobs_before)
    }

    fn job_stats(&self, org_id: Option<i64>) -> StoreResult<Stats> {
        super::control::stats(&mut *self.conn()?, org_id)
    }

    fn keeps_blobs(&self) -> bool {
        true
    }

    fn blob_write(&self, name: &str, from: &mut dyn std::io::Read) -> StoreResult<u64> {
        self.write_blob(name, from)
    }

    fn blob_read(&self, name: &str, to: &mut dyn std::io::Write) -> StoreResult<u64> {
        self.read_blob(name, to)
    }

    fn blob_delete(&self, name: &str) -> StoreResult<()> {
        self.delete_blob(name)
    }

    fn errors_page(
        &self,
        job: JobId,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<ErrorRecord>, u64)> {
        let mut conn = self.conn()?;
        let total: i64 = conn
            .query_one("SELECT count(*) FROM job_errors WHERE job_id = $1", &[&job])
            .map_err(pg_err)?
            .get(0);
        let limit = limit.min(i64::MAX as u64) as i64;
        let mut errors = Vec::new();
        let mut rows = conn
            .query_raw(
                "SELECT \"row\", \"column\", value, message, record FROM job_errors WHERE job_id = $1 \
                 ORDER BY \"row\" LIMIT $2 OFFSET $3",
                [&job as &(dyn postgres::types::ToSql + Sync), &limit, &(offset as i64)],
            )
            .map_err(pg_err)?;
        while let Some(r) = rows.next().map_err(pg_err)? {
            errors.push(ErrorRecord {
                row: r.get::<_, i64>(0) as u64,
                column: r.get(1),
                value: r.get(2),
                message: r.get(3),
                record: json(r.get::<_, &str>(4), "error record")?,
            });
        }
        Ok((errors, total as u64))
    }

    fn batch_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        parent: Option<JobId>,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>> {
        let conn = self.pool.open()?;
        Ok(Box::new(PgSink::new(
            conn, dataset, lease, mode, parent, org,
        )))
    }

    fn events_after(
        &self,
        after: i64,
        job: Option<JobId>,
        limit: u64,
    ) -> StoreResult<Vec<JobEvent>> {
        super::hooks::events_after(&mut *self.conn()?, after, job, limit)
    }

    fn events_last_seq(&self) -> StoreResult<i64> {
        super::hooks::events_last_seq(&mut *self.conn()?)
    }

    fn webhook_insert(
        &self,
        url: &str,
        events: &[String],
        secret: &str,
        created_by: Option<i64>,
    ) -> StoreResult<Webhook> {
        super::hooks::webhook_insert(&mut *self.conn()?, url, events, secret, created_by)
    }

    fn webhook_list(&self) -> StoreResult<Vec<Webhook>> {
        super::hooks::webhook_list(&mut *self.conn()?)
    }

    fn webhook_delete(&self, id: i64) -> StoreResult<bool> {
        super::hooks::webhook_delete(&mut *self.conn()?, id)
    }

    fn delivery_backlog(&self, limit: u64) -> StoreResult<(i64, Vec<JobEvent>)> {
        super::hooks::delivery_backlog(&mut *self.conn()?, limit)
    }

    fn delivery_insert_many(
        &self,
        from: i64,
        to: i64,
        deliveries: &[NewDelivery],
    ) -> StoreResult<bool> {
        super::hooks::delivery_insert_many(&mut *self.conn()?, from, to, deliveries)
    }

    fn delivery_claim_due(
        &self,
        now_ms: i64,
        hold_ms: u64,
        limit: u64,
    ) -> StoreResult<Vec<DueDelivery>> {
        super::hooks::delivery_claim_due(&mut *self.conn()?, now_ms, hold_ms, limit)
    }

    fn delivery_record(
        &self,
        id: i64,
        attempt: &DeliveryAttempt,
        state: DeliveryState,
        next_attempt_ms: i64,
    ) -> StoreResult<()> {
        super::hooks::delivery_record(&mut *self.conn()?, id, attempt, state, next_attempt_ms)
    }

    fn delivery_list(
        &self,
        webhook_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<Delivery>, u64)> {
        super::hooks::delivery_list(&mut *self.conn()?, webhook_id, limit, offset)
    }

    fn template_save(
        &self,
        org_id: i64,
        dataset: &str,
        name: &str,
        mapping: &std::collections::BTreeMap<String, Option<String>>,
    ) -> StoreResult<Template> {
        super::hooks::template_save(&mut *self.conn()?, org_id, dataset, name, mapping)
    }

    fn template_list(&self, org_id: i64, dataset: &str) -> StoreResult<Vec<Template>> {
        super::hooks::template_list(&mut *self.conn()?, org_id, dataset)
    }

    fn template_use(
        &self,
        org_id: i64,
        dataset: &str,
        name: &str,
    ) -> StoreResult<Option<Template>> {
        super::hooks::template_use(&mut *self.conn()?, org_id, dataset, name)
    }
}

impl PgStore {
    /// Runs `act` and writes its audit line in one transaction; `target` names what the action
    /// did, or `None` when it did nothing (no line then).
    fn audited<T>(
        &self,
        audit: Option<&AuditEntry>,
        act: impl FnOnce(&mut postgres::Transaction<'_>) -> StoreResult<T>,
        target: impl FnOnce(&T) -> Option<String>,
    ) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg_err)?;
        let done = act(&mut tx)?;
        if let Some(audit) = audit
            && let Some(target) = target(&done)
        {
            super::tenants::audit_insert(&mut tx, &audit.filled(target, None))?;
        }
        tx.commit().map_err(pg_err)?;
        Ok(done)
    }
}
