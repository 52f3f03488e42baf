//! The job store on SQLite: tokens, jobs, leases and row errors.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, db_err, hooks, writer::SqliteSink};
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

const JOB_COLUMNS: &str = "id, dataset, status, mode, filename, blob, file_size, sha256, format, options, \
    header, mapping, total_rows, rows_done, created_count, updated_count, unchanged_count, error_count, \
    batches_done, error, created_by, created_at, started_at, completed_at, attempts, lease_owner, duplicate_of, \
    retry_of, blob_deleted_at, parent_id, chunk_index, chunks_total, chunks_completed, org_id, user_id, \
    (SELECT name FROM users WHERE users.id = jobs.user_id)";

pub(super) fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn parse_time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.to_utc())
}

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("job {what}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Reads a job row; JSON and enum columns are decoded after the row is read.
struct RawJob {
    job: Job,
    status: String,
    mode: String,
    format: String,
    options: String,
    header: String,
    mapping: String,
}

fn raw_job(r: &Row<'_>) -> rusqlite::Result<RawJob> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(RawJob {
        status: r.get(2)?,
        mode: r.get(3)?,
        format: r.get(8)?,
        options: r.get(9)?,
        header: r.get(10)?,
        mapping: r.get(11)?,
        job: Job {
            id: r.get(0)?,
            dataset: r.get(1)?,
            status: JobStatus::Pending,
            mode: Mode::Upsert,
            filename: r.get(4)?,
            blob: r.get(5)?,
            file_size: u(6)?,
            sha256: r.get(7)?,
            format: crate::import::Format::Csv,
            options: Default::default(),
            header: Vec::new(),
            mapping: crate::import::Mapping::default(),
            total_rows: r.get::<_, Option<i64>>(12)?.map(|n| n.max(0) as u64),
            rows_done: u(13)?,
            created_count: u(14)?,
            updated_count: u(15)?,
            unchanged_count: u(16)?,
            error_count: u(17)?,
            batches_done: u(18)?,
            error: r.get(19)?,
            created_by: r.get(20)?,
            created_at: parse_time(r.get(21)?).unwrap_or_default(),
            started_at: parse_time(r.get(22)?),
            completed_at: parse_time(r.get(23)?),
            attempts: u(24)?,
            lease_owner: r.get(25)?,
            duplicate_of: r.get(26)?,
            retry_of: r.get(27)?,
            blob_deleted: r.get::<_, Option<String>>(28)?.is_some(),
            parent_id: r.get(29)?,
            chunk_index: r.get::<_, Option<i64>>(30)?.map(|n| n as u32),
            chunks_total: r.get::<_, Option<i64>>(31)?.map(|n| n as u32),
            chunks_completed: r.get::<_, i64>(32)? as u32,
            org_id: r.get(33)?,
            user_id: r.get(34)?,
            user_name: r.get(35)?,
        },
    })
}

impl RawJob {
    fn decode(self) -> StoreResult<Job> {
        let mut job = self.job;
        job.status = self.status.parse().map_err(StoreError::Corrupt)?;
        job.mode = json(&format!("\"{}\"", self.mode), "mode")?;
        job.format = json(&format!("\"{}\"", self.format), "format")?;
        job.options = json(&self.options, "options")?;
        job.header = json(&self.header, "header")?;
        job.mapping = json(&self.mapping, "mapping")?;
        Ok(job)
    }
}

fn find_idempotent(
    conn: &rusqlite::Connection,
    created_by: Option<i64>,
    key: &str,
) -> StoreResult<Option<JobId>> {
    conn.query_row(
        "SELECT id FROM jobs WHERE created_by IS ?1 AND idempotency_key = ?2",
        params![created_by, key],
        |r| r.get(0),
    )
    .optional()
    .map_err(db_err)
}

fn new_token() -> String {
    let mut b = [0u8; 16];
    // Without randomness, a time-derived token still separates leases of one process.
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl JobStore for SqliteStore {
    fn datasets_prepare(&self, datasets: &Datasets) -> StoreResult<()> {
        let mut conn = self.conn()?;
        super::tables::prepare(&mut conn, datasets)
    }

    fn dataset_prepare(&self, dataset: &Dataset) -> StoreResult<()> {
        let mut conn = self.conn()?;
        super::tables::prepare_dataset(&mut conn, dataset)
    }

    fn org_insert(&self, name: &str) -> StoreResult<Option<i64>> {
        super::tenants::org_insert(&*self.conn()?, name)
    }

    fn org_find(&self, name: &str) -> StoreResult<Option<i64>> {
        super::tenants::org_find(&*self.conn()?, name)
    }

    fn org_exists(&self, id: i64) -> StoreResult<bool> {
        super::tenants::org_exists(&*self.conn()?, id)
    }

    fn org_set_limits(&self, id: i64, limits: OrgLimits) -> StoreResult<bool> {
        super::tenants::org_set_limits(&*self.conn()?, id, limits)
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
        super::tenants::user_get(&*self.conn()?, id)
    }

    fn org_list(&self) -> StoreResult<Vec<Org>> {
        super::tenants::org_list(&*self.conn()?)
    }

    fn user_list(&self, org_id: Option<i64>) -> StoreResult<Vec<User>> {
        super::tenants::user_list(&*self.conn()?, org_id)
    }

    fn token_list(&self, org_id: Option<i64>) -> StoreResult<Vec<TokenInfo>> {
        super::tenants::token_list(&*self.conn()?, org_id)
    }

    fn user_first_admin(&self) -> StoreResult<Option<i64>> {
        super::tenants::user_first_admin(&*self.conn()?)
    }

    fn token_count(&self) -> StoreResult<u64> {
        super::tenants::token_count(&*self.conn()?)
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
        super::tenants::token_find(&*self.conn()?, token_hash)
    }

    fn token_org(&self, id: i64) -> StoreResult<Option<i64>> {
        self.conn()?
            .query_row(
                "SELECT u.org_id FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)
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
        super::tenants::audit_list(&*self.conn()?, org_id, limit, offset)
    }

    fn job_insert(
        &self,
        job: &NewJob,
        lease: Option<(&str, u64)>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Inserted> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if let Some(key) = &job.idempotency_key
            && let Some(id) = find_idempotent(&tx, job.created_by, key)?
        {
            return Ok(Inserted::Replayed(id));
        }
        let active: Option<i64> = tx
            .query_row(
                "SELECT id FROM jobs WHERE org_id = ?3 AND dataset = ?1 AND sha256 = ?2 AND status IN ('pending', 'processing', 'paused')",
                params![job.dataset, job.sha256, job.org_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if let Some(id) = active {
            return Ok(Inserted::ActiveDuplicate(id));
        }
        let duplicate_of: Option<i64> = tx
            .query_row(
                "SELECT max(id) FROM jobs WHERE org_id = ?3 AND dataset = ?1 AND sha256 = ?2 AND status = 'completed'",
                params![job.dataset, job.sha256, job.org_id],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let now = now_text();
        let (status, token, expires, started) = match lease {
            Some((token, ms)) => (
                JobStatus::Processing,
                Some(token),
                Some(now_ms() + ms as i64),
                Some(now.as_str()),
            ),
            None => (JobStatus::Pending, None, None, None),
        };
        tx.execute(
            "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, options, header, \
             mapping, created_by, created_at, started_at, attempts, lease_token, lease_expires_ms, \
             idempotency_key, retry_of, duplicate_of, org_id, user_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
            params![
                job.dataset,
                status.as_str(),
                job.mode.as_str(),
                job.filename,
                job.blob,
                job.file_size as i64,
                job.sha256,
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
                job.idempotency_key,
                job.retry_of,
                duplicate_of,
                job.org_id,
                job.user_id,
            ],
        )
        .map_err(db_err)?;
        let id = tx.last_insert_rowid();
        if let Some(audit) = audit {
            super::tenants::audit_insert(&tx, &audit.filled(format!("job:{id}"), None))?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Inserted::Created(id))
    }

    fn job_find_idempotent(
        &self,
        created_by: Option<i64>,
        key: &str,
    ) -> StoreResult<Option<JobId>> {
        let conn = self.conn()?;
        find_idempotent(&conn, created_by, key)
    }

    fn job_get(&self, id: JobId) -> StoreResult<Option<Job>> {
        let conn = self.conn()?;
        let raw = conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                raw_job,
            )
            .optional()
            .map_err(db_err)?;
        raw.map(RawJob::decode).transpose()
    }

    fn job_list(&self, filter: &JobFilter) -> StoreResult<(Vec<Job>, u64)> {
        let conn = self.conn()?;
        let status = filter.status.map(JobStatus::as_str);
        let dataset = filter.dataset.as_deref();
        let condition = "parent_id IS NULL AND (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR dataset = ?2) \
             AND (?5 IS NULL OR org_id = ?5)";
        let total: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM jobs WHERE {condition}"),
                params![status, dataset, None::<i64>, None::<i64>, filter.org_id],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE {condition} ORDER BY id DESC LIMIT ?3 OFFSET ?4"
            ))
            .map_err(db_err)?;
        let raws = stmt
            .query_map(
                params![
                    status,
                    dataset,
                    filter.limit as i64,
                    filter.offset as i64,
                    filter.org_id
                ],
                raw_job,
            )
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let jobs = raws
            .into_iter()
            .map(RawJob::decode)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((jobs, total as u64))
    }

    fn job_claim(&self, owner: &str, lease_ms: u64) -> StoreResult<Option<(Job, Lease)>> {
        let conn = self.conn()?;
        let token = new_token();
        let now = now_ms();
        let raw = conn
            .query_row(
                &format!(
                    "UPDATE jobs SET status = 'processing', lease_token = ?1, lease_expires_ms = ?2, \
                     attempts = attempts + 1, started_at = COALESCE(started_at, ?3), lease_owner = ?5 \
                     WHERE id = (SELECT id FROM jobs WHERE status = 'pending' \
                                 OR (status = 'processing' AND lease_expires_ms < ?4) ORDER BY id LIMIT 1) \
                     RETURNING {JOB_COLUMNS}"
                ),
                params![token, now + lease_ms as i64, now_text(), now, owner],
                raw_job,
            )
            .optional()
            .map_err(db_err)?;
        match raw {
            None => Ok(None),
            Some(raw) => {
                let job = raw.decode()?;
                let lease = Lease {
                    job_id: job.id,
                    token,
                };
                Ok(Some((job, lease)))
            }
        }
    }

    fn job_heartbeat(&self, lease: &Lease, lease_ms: u64) -> StoreResult<bool> {
        let conn = self.conn()?;
        let n = conn
            .execute(
                "UPDATE jobs SET lease_expires_ms = ?1 WHERE id = ?2 AND lease_token = ?3 AND status = 'processing'",
                params![now_ms() + lease_ms as i64, lease.job_id, lease.token],
            )
            .map_err(db_err)?;
        Ok(n == 1)
    }

    fn job_set_total(&self, lease: &Lease, total_rows: u64) -> StoreResult<bool> {
        let conn = self.conn()?;
        let n = conn
            .execute(
                "UPDATE jobs SET total_rows = ?1 WHERE id = ?2 AND lease_token = ?3",
                params![total_rows as i64, lease.job_id, lease.token],
            )
            .map_err(db_err)?;
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
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let parent: Option<Option<i64>> = tx
            .query_row(
                "UPDATE jobs SET status = ?1, error = ?2, completed_at = ?3, lease_token = NULL, lease_expires_ms = NULL, \
                 lease_owner = NULL WHERE id = ?4 AND lease_token = ?5 RETURNING parent_id",
                params![status.as_str(), error, now_text(), lease.job_id, lease.token],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let Some(parent) = parent else {
            return Ok(false);
        };
        let completed = match parent {
            Some(parent) => {
                super::control::chunk_finished(&tx, parent, lease.job_id, status, error)?
            }
            None => status == JobStatus::Completed,
        };
        if completed && let Some(replace) = replace {
            for sql in replace.statements() {
                tx.execute_batch(&sql).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
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
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let n = tx
            .execute(
                "UPDATE jobs SET total_rows = ?1, chunks_total = ?2, lease_token = NULL, lease_expires_ms = NULL, \
                 lease_owner = NULL WHERE id = ?3 AND lease_token = ?4 AND status = 'processing'",
                params![total_rows as i64, chunks.len() as i64, lease.job_id, lease.token],
            )
            .map_err(db_err)?;
        if n != 1 {
            return Ok(false);
        }
        let now = now_text();
        let options = to_json(options);
        for (i, c) in chunks.iter().enumerate() {
            tx.execute(
                "INSERT INTO jobs (dataset, status, mode, filename, blob, file_size, sha256, format, options, header, \
                 mapping, created_by, created_at, total_rows, parent_id, chunk_index, org_id, user_id) \
                 SELECT dataset, 'pending', mode, filename, ?2, ?3, sha256 || '#chunk' || ?4, 'csv', ?5, header, \
                 mapping, created_by, ?6, ?7, id, ?4, org_id, user_id FROM jobs WHERE id = ?1",
                params![lease.job_id, c.blob, c.size as i64, i as i64, options, now, c.rows as i64],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    fn job_release(&self, lease: &Lease) -> StoreResult<()> {
        let conn = self.conn()?;
        conn.execute(
            "UPDATE jobs SET lease_token = NULL, lease_expires_ms = 0, lease_owner = NULL WHERE id = ?1 AND lease_token = ?2",
            params![lease.job_id, lease.token],
        )
        .map_err(db_err)?;
        Ok(())
    }

    fn job_control(
        &self,
        id: JobId,
        action: Control,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Controlled> {
        let mut conn = self.conn()?;
        super::control::control(&mut conn, id, action, audit)
    }

    fn job_delete(
        &self,
        id: JobId,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Option<Vec<String>>> {
        let mut conn = self.conn()?;
        super::control::delete(&mut conn, id, audit)
    }

    fn jobs_sweep(
        &self,
        files_before: DateTime<Utc>,
        jobs_before: DateTime<Utc>,
    ) -> StoreResult<(Vec<String>, u64)> {
        let mut conn = self.conn()?;
        super::control::sweep(&mut conn, files_before, jobs_before)
    }

    fn job_stats(&self, org_id: Option<i64>) -> StoreResult<Stats> {
        let conn = self.conn()?;
        super::control::stats(&conn, org_id)
    }

    fn errors_page(
        &self,
        job: JobId,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<ErrorRecord>, u64)> {
        let conn = self.conn()?;
        let total: i64 = conn
            .query_row(
                "SELECT count(*) FROM job_errors WHERE job_id = ?1",
                [job],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT row, column, value, message, record FROM job_errors WHERE job_id = ?1 \
                 ORDER BY row LIMIT ?2 OFFSET ?3",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(
                params![job, limit.min(i64::MAX as u64) as i64, offset as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let errors = rows
            .into_iter()
            .map(|(row, column, value, message, record)| {
                Ok(ErrorRecord {
                    row: row as u64,
                    column,
                    value,
                    message,
                    record: json(&record, "error record")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
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
        let conn = self.writer_conn()?;
        Ok(Box::new(SqliteSink::new(
            conn, dataset, lease, mode, parent, org,
        )))
    }

    fn events_after(
        &self,
        after: i64,
        job: Option<JobId>,
        limit: u64,
    ) -> StoreResult<Vec<JobEvent>> {
        hooks::events_after(&*self.conn()?, after, job, limit)
    }

    fn events_last_seq(&self) -> StoreResult<i64> {
        hooks::events_last_seq(&*self.conn()?)
    }

    fn webhook_insert(
        &self,
        url: &str,
        events: &[String],
        secret: &str,
        created_by: Option<i64>,
    ) -> StoreResult<Webhook> {
        hooks::webhook_insert(&*self.conn()?, url, events, secret, created_by)
    }

    fn webhook_list(&self) -> StoreResult<Vec<Webhook>> {
        hooks::webhook_list(&*self.conn()?)
    }

    fn webhook_delete(&self, id: i64) -> StoreResult<bool> {
        hooks::webhook_delete(&*self.conn()?, id)
    }

    fn delivery_backlog(&self, limit: u64) -> StoreResult<(i64, Vec<JobEvent>)> {
        hooks::delivery_backlog(&*self.conn()?, limit)
    }

    fn delivery_insert_many(
        &self,
        from: i64,
        to: i64,
        deliveries: &[NewDelivery],
    ) -> StoreResult<bool> {
        hooks::delivery_insert_many(&mut *self.conn()?, from, to, deliveries)
    }

    fn delivery_claim_due(
        &self,
        now_ms: i64,
        hold_ms: u64,
        limit: u64,
    ) -> StoreResult<Vec<DueDelivery>> {
        hooks::delivery_claim_due(&mut *self.conn()?, now_ms, hold_ms, limit)
    }

    fn delivery_record(
        &self,
        id: i64,
        attempt: &DeliveryAttempt,
        state: DeliveryState,
        next_attempt_ms: i64,
    ) -> StoreResult<()> {
        hooks::delivery_record(&mut *self.conn()?, id, attempt, state, next_attempt_ms)
    }

    fn delivery_list(
        &self,
        webhook_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<Delivery>, u64)> {
        hooks::delivery_list(&*self.conn()?, webhook_id, limit, offset)
    }

    fn template_save(
        &self,
        org_id: i64,
        dataset: &str,
        name: &str,
        mapping: &std::collections::BTreeMap<String, Option<String>>,
    ) -> StoreResult<Template> {
        hooks::template_save(&*self.conn()?, org_id, dataset, name, mapping)
    }

    fn template_list(&self, org_id: i64, dataset: &str) -> StoreResult<Vec<Template>> {
        hooks::template_list(&*self.conn()?, org_id, dataset)
    }

    fn template_use(
        &self,
        org_id: i64,
        dataset: &str,
        name: &str,
    ) -> StoreResult<Option<Template>> {
        hooks::template_use(&*self.conn()?, org_id, dataset, name)
    }
}

impl SqliteStore {
    /// Runs `act` and writes its audit line in one transaction; `target` names what the action
    /// did, or `None` when it did nothing (no line then).
    fn audited<T>(
        &self,
        audit: Option<&AuditEntry>,
        act: impl FnOnce(&rusqlite::Connection) -> StoreResult<T>,
        target: impl FnOnce(&T) -> Option<String>,
    ) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let done = act(&tx)?;
        if let Some(audit) = audit
            && let Some(target) = target(&done)
        {
            super::tenants::audit_insert(&tx, &audit.filled(target, None))?;
        }
        tx.commit().map_err(db_err)?;
        Ok(done)
    }
}
