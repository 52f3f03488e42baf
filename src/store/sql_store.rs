//! [`SqlStore`]: the one implementation of [`JobStore`], over a [`Backend`].
//!
//! The store's logic (jobs and claims, the control state machine, chunk finalisation, tenants
//! and audit, the event log, webhooks and deliveries, templates) lives in `jobs.rs`,
//! `control.rs`, `tenants.rs` and `hooks.rs` and runs on a [`Sql`] connection. A backend says how
//! to get one (a pooled connection for reads, a write transaction for changes) and supplies what
//! truly differs per database: dataset DDL, the batch writer, stored blobs, waiting for jobs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::sql::{Sql, Value};
use super::{
    AuditEntry, AuditRecord, ChunkClaim, Completion, Control, Controlled, Delivery,
    DeliveryAttempt, DeliveryState, DueDelivery, ErrorRecord, Inserted, Job, JobEvent, JobFilter,
    JobGroup, JobId, JobStatus, JobStore, Lease, NewChunk, NewDelivery, NewJob, Org, OrgLimits,
    Principal, Role, Stats, StoreResult, Template, TokenInfo, User, Webhook,
};
use super::{Cursors, subscriptions, tenants};
use super::{DueEmail, EmailDelivery, EmailsOf, NewEmail, NotifyItem};
use super::{NewSource, RunEnd, RunStart, Source, SourceRun, SourceSaved};
use super::{NewSubscription, SubscribedJob, Subscription};
use super::{SyncDeletion, WouldDelete, control, hooks, jobs, ledger, rollback, sources};
use crate::dataset::{Dataset, Datasets};
use crate::import::{BatchSink, Mode};

/// What one database provides to [`SqlStore`].
pub trait Backend: Send + Sync + 'static {
    /// Runs `f` on a pooled connection in autocommit mode (reads, single statements).
    fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T>;
    /// Runs `f` in a write transaction: committed when it returns `Ok`, rolled back otherwise.
    fn write<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T>;
    /// Runs `f` in a read-only transaction that sees one consistent snapshot of the database
    /// from its first statement to its end (exports).
    fn snapshot<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T>;
    /// A best-effort single statement that never waits: not for a pooled connection, not for
    /// a lock, not for a durable commit. For bookkeeping that may be lost (a token's last use).
    fn write_nowait(&self, sql: &str, params: &[Value]) -> StoreResult<u64>;
    /// Runs a job claim so that claims see each other's results: by default a write
    /// transaction (the claim takes [`jobs::CLAIM_LOCK`] in it).
    fn claim_scope<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
        self.write(f)
    }
    /// Upkeep after a transaction that wrote ledger entries outside the batch writers (a
    /// rollback's batch, a replace's or sync's end), committed: best effort, never waits.
    fn ledger_written(&self) {}

    fn datasets_prepare(&self, datasets: &Datasets) -> StoreResult<()>;
    fn dataset_prepare(&self, dataset: &Dataset) -> StoreResult<()>;
    fn batch_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        parent: Option<JobId>,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>>;

    fn analysis_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>>;

    /// The pool of connections `read` and `write` take from.
    fn pool_state(&self) -> super::PoolState;

    fn announces_jobs(&self) -> bool {
        false
    }
    fn jobs_wait(&self, timeout: Duration) -> StoreResult<bool> {
        std::thread::sleep(timeout);
        Ok(false)
    }
    fn keeps_blobs(&self) -> bool {
        false
    }
    fn blob_write(&self, name: &str, from: &mut dyn std::io::Read) -> StoreResult<u64> {
        let _ = (name, from);
        Err(super::StoreError::Other("this store keeps no files".into()))
    }
    fn blob_write_many(
        &self,
        names: &[String],
        pieces: &mut dyn Iterator<Item = StoreResult<(usize, Vec<u8>)>>,
    ) -> StoreResult<()> {
        let _ = (names, pieces);
        Err(super::StoreError::Other("this store keeps no files".into()))
    }
    fn blob_append(&self, name: &str, seq: i32, data: &[u8]) -> StoreResult<()> {
        let _ = (name, seq, data);
        Err(super::StoreError::Other("this store keeps no files".into()))
    }
    fn blob_size(&self, name: &str) -> StoreResult<u64> {
        let _ = name;
        Ok(0)
    }
    fn blob_read(&self, name: &str, to: &mut dyn std::io::Write) -> StoreResult<u64> {
        let _ = (name, to);
        Err(super::StoreError::Other("this store keeps no files".into()))
    }
    fn blob_delete(&self, name: &str) -> StoreResult<()> {
        let _ = name;
        Ok(())
    }
    fn blob_orphans(&self, before: DateTime<Utc>) -> StoreResult<Vec<String>> {
        let _ = before;
        Ok(Vec::new())
    }
}

/// The job store over one backend (`SqliteStore`, `PgStore`).
pub struct SqlStore<B>(pub(super) B);

impl<B: Backend> SqlStore<B> {
    /// Runs `act` and writes its audit line in one transaction; `target` names what the action
    /// did, or `None` when it did nothing (no line then).
    fn audited<T>(
        &self,
        audit: Option<&AuditEntry>,
        act: impl FnOnce(&mut dyn Sql) -> StoreResult<T>,
        target: impl FnOnce(&T) -> Option<String>,
    ) -> StoreResult<T> {
        self.0.write(|c| {
            let done = act(c)?;
            if let Some(audit) = audit
                && let Some(target) = target(&done)
            {
                tenants::audit_insert(c, &audit.filled(target, None))?;
            }
            Ok(done)
        })
    }
}

impl<B: Backend> JobStore for SqlStore<B> {
    fn datasets_prepare(&self, datasets: &Datasets) -> StoreResult<()> {
        self.0.datasets_prepare(datasets)
    }

    fn dataset_prepare(&self, dataset: &Dataset) -> StoreResult<()> {
        self.0.dataset_prepare(dataset)
    }

    fn org_insert(&self, name: &str) -> StoreResult<Option<i64>> {
        self.0.write(|c| tenants::org_insert(c, name))
    }

    fn org_find(&self, name: &str) -> StoreResult<Option<i64>> {
        self.0.read(|c| tenants::org_find(c, name))
    }

    fn org_exists(&self, id: i64) -> StoreResult<bool> {
        self.0.read(|c| tenants::org_exists(c, id))
    }

    fn org_set_limits(&self, id: i64, limits: OrgLimits) -> StoreResult<bool> {
        self.0.write(|c| tenants::org_set_limits(c, id, limits))
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
            |c| tenants::user_insert(c, org_id, name, role),
            |id| id.map(|id| format!("user:{id}")),
        )
    }

    fn user_get(&self, id: i64) -> StoreResult<Option<User>> {
        self.0.read(|c| tenants::user_get(c, id))
    }

    fn org_list(&self) -> StoreResult<Vec<Org>> {
        self.0.read(tenants::org_list)
    }

    fn user_list(&self, org_id: Option<i64>) -> StoreResult<Vec<User>> {
        self.0.read(|c| tenants::user_list(c, org_id))
    }

    fn token_list(&self, org_id: Option<i64>) -> StoreResult<Vec<TokenInfo>> {
        self.0.read(|c| tenants::token_list(c, org_id))
    }

    fn user_first_admin(&self) -> StoreResult<Option<i64>> {
        self.0.read(tenants::user_first_admin)
    }

    fn database_ping(&self) -> StoreResult<()> {
        self.0.read(|c| c.query("SELECT 1", &[]).map(|_| ()))
    }

    fn token_count(&self) -> StoreResult<u64> {
        self.0.read(tenants::token_count)
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
            |c| tenants::token_insert(c, label, token_hash, user_id, expires_at),
            |id| Some(format!("token:{id}")),
        )
    }

    fn token_find(&self, token_hash: &str) -> StoreResult<Option<Principal>> {
        let Some((principal, touch)) = self.0.read(|c| tenants::token_find(c, token_hash))? else {
            return Ok(None);
        };
        if touch {
            let (sql, params) = tenants::token_touch(principal.token_id, Utc::now());
            // Best effort: a busy database must not turn a valid token away or slow it down.
            if let Err(e) = self.0.write_nowait(sql, &params) {
                tracing::debug!(error = %e, "recording a token's last use was skipped");
            }
        }
        Ok(Some(principal))
    }

    fn token_revoke(
        &self,
        id: i64,
        org_id: Option<i64>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Option<i64>> {
        self.audited(
            audit,
            |c| tenants::token_revoke(c, id, org_id),
            |org| org.map(|_| format!("token:{id}")),
        )
    }

    fn token_org(&self, id: i64) -> StoreResult<Option<i64>> {
        self.0.read(|c| tenants::token_org(c, id))
    }

    fn audit_list(
        &self,
        org_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<AuditRecord>, u64)> {
        self.0
            .read(|c| tenants::audit_list(c, org_id, limit, offset))
    }

    fn job_insert(
        &self,
        job: &NewJob,
        lease: Option<(&str, u64)>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Inserted> {
        self.0.write(|c| jobs::insert(c, job, lease, audit))
    }

    fn job_find_idempotent(
        &self,
        created_by: Option<i64>,
        key: &str,
    ) -> StoreResult<Option<JobId>> {
        self.0.read(|c| jobs::find_idempotent(c, created_by, key))
    }

    fn job_get(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.0.read(|c| jobs::get(c, id))
    }

    fn job_with_changes(&self, id: JobId) -> StoreResult<Option<(Job, Option<Cursors>)>> {
        self.0.read(|c| jobs::get_with_changes(c, id))
    }

    fn job_list(&self, filter: &JobFilter) -> StoreResult<(Vec<Job>, u64)> {
        self.0.read(|c| jobs::list(c, filter))
    }

    fn job_claim(
        &self,
        owner: &str,
        lease_ms: u64,
        org_max_running: u32,
    ) -> StoreResult<Option<(Job, Lease)>> {
        self.0
            .claim_scope(|c| jobs::claim(c, owner, lease_ms, org_max_running))
    }

    fn job_heartbeat(&self, lease: &Lease, lease_ms: u64) -> StoreResult<bool> {
        self.0.read(|c| jobs::heartbeat(c, lease, lease_ms))
    }

    fn job_set_total(&self, lease: &Lease, total_rows: u64) -> StoreResult<bool> {
        self.0.read(|c| jobs::set_total(c, lease, total_rows))
    }

    fn job_set_progress(&self, lease: &Lease, rows_done: u64) -> StoreResult<bool> {
        self.0.read(|c| jobs::set_progress(c, lease, rows_done))
    }

    fn dataset_export(
        &self,
        dataset: &Dataset,
        org: i64,
        query: &super::ExportQuery,
        out: &mut dyn super::ExportRows,
    ) -> StoreResult<u64> {
        self.0
            .snapshot(|c| super::export::export(c, dataset, org, query, out))
    }

    fn job_set_result(&self, lease: &Lease, result: &serde_json::Value) -> StoreResult<bool> {
        self.0.read(|c| jobs::set_result(c, lease, result))
    }

    fn job_split(
        &self,
        lease: &Lease,
        total_rows: u64,
        chunks: &[NewChunk],
        claim: Option<ChunkClaim<'_>>,
    ) -> StoreResult<Option<Vec<(Job, Lease)>>> {
        self.0
            .write(|c| jobs::split(c, lease, total_rows, chunks, claim))
    }

    fn job_finish(
        &self,
        lease: &Lease,
        completion: Option<&Completion>,
        status: JobStatus,
        error: Option<&str>,
    ) -> StoreResult<bool> {
        let deleted = self
            .0
            .write(|c| jobs::finish(c, lease, completion, status, error))?;
        if completion.is_some() {
            self.0.ledger_written();
        }
        // Counted once committed: a sync's or a replace's deletion at the job's end.
        if let (Some(n @ 1..), Some(completion)) = (deleted, completion) {
            crate::telemetry::rows_deleted(completion.dataset(), n);
        }
        Ok(deleted.is_some())
    }

    fn job_release(&self, lease: &Lease) -> StoreResult<()> {
        self.0.write(|c| jobs::release(c, lease))
    }

    fn announces_jobs(&self) -> bool {
        self.0.announces_jobs()
    }

    fn jobs_wait(&self, timeout: Duration) -> StoreResult<bool> {
        self.0.jobs_wait(timeout)
    }

    fn job_control(
        &self,
        id: JobId,
        action: Control,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Controlled> {
        self.0.write(|c| control::control(c, id, action, audit))
    }

    fn job_delete(
        &self,
        id: JobId,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Option<Vec<String>>> {
        self.0.write(|c| control::delete(c, id, audit))
    }

    fn jobs_sweep(
        &self,
        files_before: DateTime<Utc>,
        jobs_before: DateTime<Utc>,
    ) -> StoreResult<(Vec<String>, u64)> {
        self.0
            .write(|c| control::sweep(c, files_before, jobs_before))
    }

    fn job_stats(&self, org_id: Option<i64>) -> StoreResult<Stats> {
        self.0.read(|c| control::stats(c, org_id))
    }

    fn job_groups(&self) -> StoreResult<Vec<JobGroup>> {
        self.0.read(control::groups)
    }

    fn pool_state(&self) -> super::PoolState {
        self.0.pool_state()
    }

    fn keeps_blobs(&self) -> bool {
        self.0.keeps_blobs()
    }

    fn blob_write(&self, name: &str, from: &mut dyn std::io::Read) -> StoreResult<u64> {
        self.0.blob_write(name, from)
    }

    fn blob_write_many(
        &self,
        names: &[String],
        pieces: &mut dyn Iterator<Item = StoreResult<(usize, Vec<u8>)>>,
    ) -> StoreResult<()> {
        self.0.blob_write_many(names, pieces)
    }

    fn blob_append(&self, name: &str, seq: i32, data: &[u8]) -> StoreResult<()> {
        self.0.blob_append(name, seq, data)
    }

    fn blob_size(&self, name: &str) -> StoreResult<u64> {
        self.0.blob_size(name)
    }

    fn blob_read(&self, name: &str, to: &mut dyn std::io::Write) -> StoreResult<u64> {
        self.0.blob_read(name, to)
    }

    fn blob_delete(&self, name: &str) -> StoreResult<()> {
        self.0.blob_delete(name)
    }

    fn blob_orphans(&self, before: DateTime<Utc>) -> StoreResult<Vec<String>> {
        self.0.blob_orphans(before)
    }

    fn blobs_unreferenced(&self, names: &[String]) -> StoreResult<Vec<String>> {
        self.0.read(|c| control::unreferenced(c, names))
    }

    fn errors_page(
        &self,
        job: JobId,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<ErrorRecord>, u64)> {
        self.0.read(|c| jobs::errors_page(c, job, limit, offset))
    }

    fn errors_after(&self, job: JobId, after: u64, limit: u64) -> StoreResult<Vec<ErrorRecord>> {
        self.0.read(|c| jobs::errors_after(c, job, after, limit))
    }

    fn errors_tally(&self, job: JobId) -> StoreResult<crate::import::tally::ErrorSummary> {
        self.0.read(|c| jobs::errors_tally(c, job))
    }

    fn batch_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        parent: Option<JobId>,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>> {
        self.0.batch_sink(dataset, lease, mode, parent, org)
    }

    fn analysis_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>> {
        self.0.analysis_sink(dataset, lease, mode, org)
    }

    fn scratch_drop(&self, job: JobId) -> StoreResult<()> {
        self.0.write(|c| jobs::scratch_drop(c, job))
    }

    fn analysis_restart(&self, lease: &Lease) -> StoreResult<bool> {
        self.0.write(|c| jobs::analysis_restart(c, lease))
    }

    fn analysis_would_delete(
        &self,
        lease: &Lease,
        sync: &SyncDeletion,
    ) -> StoreResult<Option<WouldDelete>> {
        self.0.write(|c| super::sync::would_delete(c, lease, sync))
    }

    fn events_after(
        &self,
        after: i64,
        job: Option<JobId>,
        limit: u64,
    ) -> StoreResult<Vec<JobEvent>> {
        self.0.read(|c| hooks::events_after(c, after, job, limit))
    }

    fn events_last_seq(&self) -> StoreResult<i64> {
        self.0.read(hooks::events_last_seq)
    }

    fn changes_after(
        &self,
        org_id: i64,
        dataset: &Dataset,
        after: i64,
        limit: u64,
    ) -> StoreResult<Vec<ledger::Change>> {
        self.0
            .snapshot(|c| ledger::changes_after(c, org_id, dataset, after, limit))
    }

    fn job_changes(&self, job: JobId) -> StoreResult<Option<(i64, i64)>> {
        self.0.read(|c| ledger::job_range(c, job))
    }

    fn ledger_sweep(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.0.write(|c| ledger::sweep(c, before))
    }

    fn ledger_entries_of(&self, job: JobId) -> StoreResult<u64> {
        self.0.read(|c| rollback::entries_of(c, job))
    }

    fn rollback_insert(
        &self,
        target: JobId,
        job: &NewJob,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<rollback::RollbackInserted> {
        self.0.write(|c| rollback::create(c, target, job, audit))
    }

    fn rollback_batch(
        &self,
        dataset: &Dataset,
        lease: &Lease,
        target: JobId,
        org: i64,
        force: bool,
        limit: u64,
    ) -> StoreResult<Option<rollback::RollbackBatch>> {
        let done = self
            .0
            .write(|c| rollback::batch(c, dataset, lease, target, org, force, limit))?;
        self.0.ledger_written();
        Ok(done)
    }

    fn webhook_insert(
        &self,
        url: &str,
        events: &[String],
        secret: &str,
        created_by: Option<i64>,
        org_id: i64,
    ) -> StoreResult<Webhook> {
        self.0
            .write(|c| hooks::webhook_insert(c, url, events, secret, created_by, org_id))
    }

    fn webhook_list(&self, org_id: Option<i64>) -> StoreResult<Vec<Webhook>> {
        self.0.read(|c| hooks::webhook_list(c, org_id))
    }

    fn webhook_delete(&self, id: i64) -> StoreResult<bool> {
        self.0.write(|c| hooks::webhook_delete(c, id))
    }

    fn delivery_backlog(&self, limit: u64) -> StoreResult<(i64, Vec<JobEvent>)> {
        self.0.read(|c| hooks::delivery_backlog(c, limit))
    }

    fn delivery_insert_many(
        &self,
        from: i64,
        to: i64,
        deliveries: &[NewDelivery],
    ) -> StoreResult<bool> {
        self.0
            .write(|c| hooks::delivery_insert_many(c, from, to, deliveries))
    }

    fn delivery_claim_due(
        &self,
        now_ms: i64,
        hold_ms: u64,
        limit: u64,
    ) -> StoreResult<Vec<DueDelivery>> {
        if !self.0.read(|c| hooks::delivery_any_due(c, now_ms))? {
            return Ok(Vec::new());
        }
        self.0
            .write(|c| hooks::delivery_claim_due(c, now_ms, hold_ms, limit))
    }

    fn delivery_record(
        &self,
        id: i64,
        attempt: &DeliveryAttempt,
        state: DeliveryState,
        next_attempt_ms: i64,
    ) -> StoreResult<()> {
        self.0
            .write(|c| hooks::delivery_record(c, id, attempt, state, next_attempt_ms))
    }

    fn delivery_list(
        &self,
        webhook_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<Delivery>, u64)> {
        self.0
            .read(|c| hooks::delivery_list(c, webhook_id, limit, offset))
    }

    fn template_save(
        &self,
        org_id: i64,
        dataset: &str,
        name: &str,
        mapping: &std::collections::BTreeMap<String, Option<String>>,
    ) -> StoreResult<Template> {
        self.0
            .write(|c| hooks::template_save(c, org_id, dataset, name, mapping))
    }

    fn template_list(&self, org_id: i64, dataset: &str) -> StoreResult<Vec<Template>> {
        self.0.read(|c| hooks::template_list(c, org_id, dataset))
    }

    fn template_use(
        &self,
        org_id: i64,
        dataset: &str,
        name: &str,
    ) -> StoreResult<Option<Template>> {
        self.0
            .write(|c| hooks::template_use(c, org_id, dataset, name))
    }
    fn source_insert(&self, source: &NewSource) -> StoreResult<SourceSaved> {
        self.0.write(|c| sources::source_insert(c, source))
    }

    fn source_update(
        &self,
        id: i64,
        source: &NewSource,
        reset_state: bool,
    ) -> StoreResult<SourceSaved> {
        self.0
            .write(|c| sources::source_update(c, id, source, reset_state))
    }

    fn source_get(&self, id: i64) -> StoreResult<Option<Source>> {
        self.0.read(|c| sources::source_get(c, id))
    }

    fn source_list(&self, org_id: Option<i64>) -> StoreResult<Vec<Source>> {
        self.0.read(|c| sources::source_list(c, org_id))
    }

    fn source_delete(&self, id: i64) -> StoreResult<bool> {
        self.0.write(|c| sources::source_delete(c, id))
    }

    fn sources_due(&self, now: DateTime<Utc>, limit: u64) -> StoreResult<Vec<Source>> {
        self.0.read(|c| sources::sources_due(c, now, limit))
    }

    fn sources_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        self.0.read(sources::sources_next_due)
    }

    fn source_claim_slot(
        &self,
        id: i64,
        due: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.0
            .write(|c| sources::source_claim_slot(c, id, due, next))
    }

    fn source_set_state(&self, id: i64, state: &serde_json::Value) -> StoreResult<()> {
        self.0.write(|c| sources::source_set_state(c, id, state))
    }

    fn run_start(
        &self,
        source_id: i64,
        run_key: &str,
        trigger: &str,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> StoreResult<RunStart> {
        self.0
            .write(|c| sources::run_start(c, source_id, run_key, trigger, scheduled_for))
    }

    fn run_add(&self, of: &SourceRun, n: usize, end: &RunEnd) -> StoreResult<()> {
        self.0.write(|c| sources::run_add(c, of, n, end))
    }

    fn run_finish(&self, id: i64, end: &RunEnd) -> StoreResult<()> {
        self.0.write(|c| sources::run_finish(c, id, end))
    }

    fn run_get(&self, id: i64) -> StoreResult<Option<SourceRun>> {
        self.0.read(|c| sources::run_get(c, id))
    }

    fn run_list(
        &self,
        source_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<SourceRun>, u64)> {
        self.0
            .read(|c| sources::run_list(c, source_id, limit, offset))
    }

    fn run_imported(&self, source_id: i64, sha256: &str) -> StoreResult<Option<JobId>> {
        self.0.read(|c| sources::run_imported(c, source_id, sha256))
    }
    fn notify_backlog(&self, since: DateTime<Utc>, limit: u64) -> StoreResult<Vec<NotifyItem>> {
        self.0.read(|c| sources::notify_backlog(c, since, limit))
    }

    fn notify_plan(&self, run_id: i64, source_id: i64, emails: &[NewEmail]) -> StoreResult<bool> {
        self.0
            .write(|c| sources::notify_plan(c, run_id, source_id, emails))
    }

    fn email_claim_due(&self, now_ms: i64, hold_ms: u64, limit: u64) -> StoreResult<Vec<DueEmail>> {
        self.0
            .write(|c| sources::email_claim_due(c, now_ms, hold_ms, limit))
    }

    fn email_record(
        &self,
        id: i64,
        attempts: u32,
        state: DeliveryState,
        error: Option<&str>,
        next_attempt_ms: i64,
    ) -> StoreResult<()> {
        self.0
            .write(|c| sources::email_record(c, id, attempts, state, error, next_attempt_ms))
    }

    fn email_list(
        &self,
        of: EmailsOf,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<EmailDelivery>, u64)> {
        self.0.read(|c| sources::email_list(c, of, limit, offset))
    }

    fn subscription_insert(&self, s: &NewSubscription) -> StoreResult<Option<Subscription>> {
        self.0.write(|c| subscriptions::insert(c, s))
    }

    fn subscription_list(&self, user_id: i64) -> StoreResult<Vec<Subscription>> {
        self.0.read(|c| subscriptions::list(c, user_id))
    }

    fn subscription_delete(&self, user_id: i64, id: i64) -> StoreResult<bool> {
        self.0.write(|c| subscriptions::delete(c, user_id, id))
    }

    fn subscription_backlog(
        &self,
        since: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<SubscribedJob>> {
        self.0.read(|c| subscriptions::backlog(c, since, limit))
    }

    fn subscription_plan(&self, emails: &[NewEmail]) -> StoreResult<()> {
        self.0.write(|c| subscriptions::plan(c, emails))
    }
}
