//! The store: the only seam between sluice and its database.
//!
//! [`JobStore`] is a blocking interface (callers on the async side use `spawn_blocking`); method
//! names read noun-then-verb (`job_claim`, `job_heartbeat`) and every write a worker makes after
//! claiming a job is fenced by its [`Lease`]: zero rows updated means the lease was lost.
//!
//! One implementation serves both databases: [`SqlStore`] (`sql_store.rs`) runs the store's
//! logic, written once over the [`sql::Sql`] dialect seam: `jobs.rs` (insert, claim, lease,
//! finish, split, row errors), `control.rs` (the operator's state machine, chunk finalisation,
//! delete, retention, stats), `tenants.rs` (organisations, users, tokens, audit) and `hooks.rs`
//! (the job event log, webhooks and deliveries, mapping templates) and `sources.rs` (scheduled
//! sources and their runs). A [`Backend`] provides
//! connections and what truly differs: `sqlite/` (embedded, the default) and `postgres/`
//! (shared by many processes and machines) each keep their connecting and migrations, dataset
//! DDL (`tables.rs`) and batch writer (`writer.rs`); PostgreSQL also stored blobs and LISTEN.
//! `pool.rs` bounds the connections; `types.rs` holds the domain types. SQL lives only here and
//! in `migrations/`.

mod control;
mod export;
mod hooks;
mod jobs;
pub mod ledger;
mod pool;
pub mod postgres;
mod replace;
pub mod rollback;
mod sources;
pub mod sql;
mod sql_store;
pub mod sqlite;
mod subscriptions;
mod sync;
mod tenants;
mod types;

pub use sql_store::{Backend, SqlStore};
pub use sync::WouldDelete;
pub use types::*;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::dataset::{Dataset, Datasets};
use crate::import::{BatchSink, Mode};

pub type JobId = i64;

/// The scratch key table of an analysis (dry run) job: the keys its dry-run writer accepted so
/// far, created by its first batch, dropped when it ends ([`JobStore::scratch_drop`]) and by
/// the retention sweep for jobs that died.
pub fn scratch_table(job: JobId) -> String {
    format!("_sluice_seen_{job}")
}

/// The blobs of an analysis job's report (`[workbook, JSON]`), named after the job's upload so
/// that the orphan sweeps can tell whose they are; they go when the job's file goes.
pub fn report_blobs(upload_blob: &str, job: JobId) -> [String; 2] {
    let stem = upload_blob.trim_end_matches(".upload");
    [
        format!("{stem}.a{job}.report.xlsx"),
        format!("{stem}.a{job}.report.json"),
    ]
}

/// The connection pool at one moment (`--db-connections` is `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    pub max: u32,
    pub open: u32,
    pub idle: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is busy, unavailable or out of space: worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Every pooled connection stayed in use for the whole wait: worth retrying soon.
    #[error("database busy: {0}")]
    Busy(String),
    /// The database (or its disk) is out of space: worth retrying later; an upload answers 507.
    #[error("database full: {0}")]
    Full(String),
    #[error("database error: {0}")]
    Other(String),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether trying again later may succeed (the database was unreachable, busy or full).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Busy(_) | StoreError::Full(_)
        )
    }
}

/// A store call's failure as a job step's: worth retrying (within the job's outage budget) when
/// the database was unreachable, busy or full; otherwise retrying cannot mend it.
impl From<StoreError> for crate::import::SinkError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            crate::import::SinkError::Retryable(e.to_string())
        } else {
            crate::import::SinkError::Fatal(e.to_string())
        }
    }
}

/// The first and last change-feed cursor of a job's changes.
pub type Cursors = (i64, i64);

/// Everything sluice asks of its database. Blocking: call from a blocking thread.
pub trait JobStore: Send + Sync + 'static {
    /// Creates or upgrades the dataset tables (and their history tables).
    fn datasets_prepare(&self, datasets: &Datasets) -> StoreResult<()>;
    /// Creates or upgrades one table (a replace job's staging table).
    fn dataset_prepare(&self, dataset: &Dataset) -> StoreResult<()>;

    /// Creates an organisation; `None` when the name is taken.
    fn org_insert(&self, name: &str) -> StoreResult<Option<i64>>;
    /// The id of the organisation with this name.
    fn org_find(&self, name: &str) -> StoreResult<Option<i64>>;
    /// Whether the organisation exists.
    fn org_exists(&self, id: i64) -> StoreResult<bool>;
    /// Sets the organisation's limits; false when there is no such organisation.
    fn org_set_limits(&self, id: i64, limits: OrgLimits) -> StoreResult<bool>;
    // Actions that are audited take the audit line (`audit`) and write it in their own
    // transaction, only when the action happens: no action without its line, no line without
    // its action. A line without a `target` gets the created row's (`user:ID`, `token:ID`,
    // `job:ID`); see [`AuditEntry::filled`].

    /// Creates a user; `None` when the organisation already has a user of this name.
    fn user_insert(
        &self,
        org_id: i64,
        name: &str,
        role: Role,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Option<i64>>;
    fn user_get(&self, id: i64) -> StoreResult<Option<User>>;
    /// Every organisation, by id.
    fn org_list(&self) -> StoreResult<Vec<Org>>;
    /// The users of one organisation (`None`: of all), by id.
    fn user_list(&self, org_id: Option<i64>) -> StoreResult<Vec<User>>;
    /// The tokens of one organisation (`None`: of all), newest first; revoked ones included.
    fn token_list(&self, org_id: Option<i64>) -> StoreResult<Vec<TokenInfo>>;
    /// The first admin user of the oldest organisation (the one the start-up token acts as).
    fn user_first_admin(&self) -> StoreResult<Option<i64>>;

    /// Whether the database answers (`/healthz`): one trivial statement on a pooled connection.
    fn database_ping(&self) -> StoreResult<()>;

    fn token_count(&self) -> StoreResult<u64>;
    /// Stores a token (its hash) for a user, optionally expiring.
    fn token_insert(
        &self,
        label: &str,
        token_hash: &str,
        user_id: i64,
        expires_at: Option<DateTime<Utc>>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<i64>;
    /// Who the live (not revoked, not expired) token with this hash speaks for, marking it used.
    fn token_find(&self, token_hash: &str) -> StoreResult<Option<Principal>>;
    /// Revokes a token (only one of organisation `org_id`'s users, when given); returns the
    /// organisation of its user, or `None` when there is no such live token.
    fn token_revoke(
        &self,
        id: i64,
        org_id: Option<i64>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Option<i64>>;
    /// The organisation of a token's user (revoked tokens included: what they created keeps
    /// belonging to that organisation).
    fn token_org(&self, id: i64) -> StoreResult<Option<i64>>;

    /// A page of the organisation's audit log, newest first, and its total.
    fn audit_list(
        &self,
        org_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<AuditRecord>, u64)>;

    /// Creates a job, unless the same caller already sent the same Idempotency-Key or the same
    /// file is already active for the dataset. With a lease, the job starts out `processing`
    /// and owned by the caller (synchronous imports); without, it is `pending` for the workers.
    /// The audit line is written only when a job is created.
    fn job_insert(
        &self,
        job: &NewJob,
        lease: Option<(&str, u64)>,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Inserted>;
    /// The job an earlier request with this Idempotency-Key created.
    fn job_find_idempotent(&self, created_by: Option<i64>, key: &str)
    -> StoreResult<Option<JobId>>;
    fn job_get(&self, id: JobId) -> StoreResult<Option<Job>>;
    /// A job and the first and last cursor of its changes (as [`JobStore::job_changes`]), in one
    /// statement: what a status request reads.
    fn job_with_changes(&self, id: JobId) -> StoreResult<Option<(Job, Option<Cursors>)>>;
    /// Jobs newest first, and how many match the filter in all.
    fn job_list(&self, filter: &JobFilter) -> StoreResult<(Vec<Job>, u64)>;
    /// Claims the next pending job, or a processing one whose lease expired, for `owner`: by
    /// priority, then the organisation with the fewest jobs running, then the oldest; nothing of
    /// an organisation already running `org_max_running` jobs and chunks (0: no cap).
    fn job_claim(
        &self,
        owner: &str,
        lease_ms: u64,
        org_max_running: u32,
    ) -> StoreResult<Option<(Job, Lease)>>;
    /// Extends the lease; false when it was lost.
    fn job_heartbeat(&self, lease: &Lease, lease_ms: u64) -> StoreResult<bool>;
    fn job_set_total(&self, lease: &Lease, total_rows: u64) -> StoreResult<bool>;
    /// Records an export's progress (rows written so far, as `rows_done`); false when the
    /// lease was lost.
    fn job_set_progress(&self, lease: &Lease, rows_done: u64) -> StoreResult<bool>;
    /// Records what the job produced ([`Job::result`]); false when the lease was lost.
    fn job_set_result(&self, lease: &Lease, result: &serde_json::Value) -> StoreResult<bool>;
    /// Splits a claimed job into chunk jobs and gives the parent's lease back: from now on the
    /// parent is driven by its chunks. The chunks are pending, or with `claim` taken by that
    /// owner at once (returned with their leases). `None` when the lease was lost.
    fn job_split(
        &self,
        lease: &Lease,
        total_rows: u64,
        chunks: &[NewChunk],
        claim: Option<ChunkClaim<'_>>,
    ) -> StoreResult<Option<Vec<(Job, Lease)>>>;
    /// Moves the job to a final state; false when the lease was lost. For a chunk job, in the
    /// same transaction: a completed chunk counts towards its parent, and the last one completes
    /// it (exactly once); a failed chunk fails the parent and cancels its unfinished siblings.
    /// `completion` runs in the transaction that completes the job (or its parent): a replace's
    /// swap, a sync's deletion — or, past the sync's guard, the job fails instead.
    fn job_finish(
        &self,
        lease: &Lease,
        completion: Option<&Completion>,
        status: JobStatus,
        error: Option<&str>,
    ) -> StoreResult<bool>;
    /// Gives the job back (shutdown): it stays `processing` and is claimable at once.
    fn job_release(&self, lease: &Lease) -> StoreResult<()>;

    /// Whether this backend announces claimable jobs (so `jobs_wait` is worth calling).
    fn announces_jobs(&self) -> bool;
    /// Blocks until a claimable job is announced (true) or `timeout` passes (false).
    fn jobs_wait(&self, timeout: std::time::Duration) -> StoreResult<bool>;

    /// Cancel, pause, resume or retry a job. The audit line (written when the action is done)
    /// gets the detail `new job ID` for a retry from the start.
    fn job_control(
        &self,
        id: JobId,
        action: Control,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<Controlled>;
    /// Deletes a job (with its chunks) and its row errors; returns the blob names to remove,
    /// or `None` when there was no such job.
    fn job_delete(&self, id: JobId, audit: Option<&AuditEntry>)
    -> StoreResult<Option<Vec<String>>>;
    /// Retention: forgets the files of jobs finished before `files_before` and deletes jobs
    /// finished before `jobs_before`. Returns the blob names to remove and the jobs deleted.
    fn jobs_sweep(
        &self,
        files_before: DateTime<Utc>,
        jobs_before: DateTime<Utc>,
    ) -> StoreResult<(Vec<String>, u64)>;
    /// Figures over the organisation's jobs (`None`: all jobs).
    fn job_stats(&self, org_id: Option<i64>) -> StoreResult<Stats>;
    /// Every job counted by status, dataset and kind (top-level or chunk), with the oldest
    /// creation time of each group: one statement, read at each `/metrics` scrape.
    fn job_groups(&self) -> StoreResult<Vec<JobGroup>>;
    /// The connection pool now: its cap, the connections open, and those of them idle.
    fn pool_state(&self) -> PoolState;

    /// Whether the store keeps uploaded files itself, so that every node can read them.
    fn keeps_blobs(&self) -> bool;
    /// Stores an uploaded file under `name`; returns its size.
    fn blob_write(&self, name: &str, from: &mut dyn std::io::Read) -> StoreResult<u64>;
    /// Stores several new files in one transaction from pieces of any of them, in any
    /// interleaving (`pieces` yields `(index into names, bytes)`, each file's pieces in order);
    /// an `Err` from `pieces` stores nothing and is returned.
    fn blob_write_many(
        &self,
        names: &[String],
        pieces: &mut dyn Iterator<Item = StoreResult<(usize, Vec<u8>)>>,
    ) -> StoreResult<()>;
    /// Stores piece `seq` (0, 1, …) of a new file `name` while the file still arrives, in a
    /// transaction of its own that does not wait for the disk: the piece is durable once any
    /// later durable commit is (the insert of the job that reads the file). Holds a connection
    /// only for the piece, never while waiting for the next one.
    fn blob_append(&self, name: &str, seq: i32, data: &[u8]) -> StoreResult<()>;
    /// The bytes stored for `name` (0 when none).
    fn blob_size(&self, name: &str) -> StoreResult<u64>;
    /// Streams a stored file into `to`; returns its size (0 and nothing written if unknown).
    fn blob_read(&self, name: &str, to: &mut dyn std::io::Write) -> StoreResult<u64>;
    fn blob_delete(&self, name: &str) -> StoreResult<()>;
    /// Stored files last written to before `before` that no job references (none when the
    /// store keeps no files).
    fn blob_orphans(&self, before: DateTime<Utc>) -> StoreResult<Vec<String>>;
    /// Those of `names` that no job references (ignoring jobs whose file was already removed).
    fn blobs_unreferenced(&self, names: &[String]) -> StoreResult<Vec<String>>;

    /// A page of the job's row errors, in row order, and their total.
    fn errors_page(
        &self,
        job: JobId,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<ErrorRecord>, u64)>;

    /// Up to `limit` of the job's row errors after row `after` (0: from the first), in row order.
    fn errors_after(&self, job: JobId, after: u64, limit: u64) -> StoreResult<Vec<ErrorRecord>>;
    /// Every row error of `job` counted by column and by kind of message.
    fn errors_tally(&self, job: JobId) -> StoreResult<crate::import::tally::ErrorSummary>;

    /// Streams organisation `org`'s rows of `dataset` that `query` selects into `out`, in key
    /// order, from ONE read-only snapshot (SQLite: a read transaction on WAL; PostgreSQL:
    /// `REPEATABLE READ READ ONLY`): the row count first, then each row. Rows committed by an
    /// import meanwhile are all in it or all not. Returns the rows handed over.
    fn dataset_export(
        &self,
        dataset: &Dataset,
        org: i64,
        query: &ExportQuery,
        out: &mut dyn ExportRows,
    ) -> StoreResult<u64>;

    /// A writer of batches for a claimed job, into the rows of organisation `org`.
    /// For a chunk job, `parent` receives the counts and row errors, and stamps rows as its own
    /// (so a key repeated in the file is caught).
    fn batch_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        parent: Option<JobId>,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>>;

    /// The dry-run writer of an analysis job: the batch writer's lookup and decision (the same
    /// counts, row errors and duplicate rule), writing no dataset row, stamp or history; keys go
    /// to the job's scratch table ([`scratch_table`]).
    fn analysis_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>>;
    /// Drops an analysis job's scratch key table (if it exists).
    fn scratch_drop(&self, job: JobId) -> StoreResult<()>;
    /// Starts a claimed analysis over: its counts, checkpoint, row errors and scratch keys go
    /// (a resumed analysis is redone from the first row, so its statistics are whole). False
    /// when the lease was lost.
    fn analysis_restart(&self, lease: &Lease) -> StoreResult<bool>;
    /// What a `mode=sync` import of the analysed file would delete, counted into the analysis's
    /// `deleted_count` when its batches are all in (`sync.rs`); `None` when the lease was lost.
    fn analysis_would_delete(
        &self,
        lease: &Lease,
        sync: &SyncDeletion,
    ) -> StoreResult<Option<WouldDelete>>;

    // --- Job events (migration 0004). The backend must append a `JobEvent` in the same
    // transaction as every job insert, status change, batch commit and total count (SQLite does
    // it with triggers).

    /// Up to `limit` events with `seq > after`, oldest first; only `job`'s when given. Each
    /// carries its job's organisation (`JobEvent::org_id`): readers show it only to that one.
    fn events_after(
        &self,
        after: i64,
        job: Option<JobId>,
        limit: u64,
    ) -> StoreResult<Vec<JobEvent>>;
    /// The newest event's `seq` (0 when there is none).
    fn events_last_seq(&self) -> StoreResult<i64>;

    // --- The change ledger (migration 0016): entries written by the batch writers.

    /// Up to `limit` of the organisation's changes to `dataset` with a cursor after `after`, in
    /// commit order (see [`ledger::changes_after`]).
    fn changes_after(
        &self,
        org_id: i64,
        dataset: &Dataset,
        after: i64,
        limit: u64,
    ) -> StoreResult<Vec<ledger::Change>>;
    /// The first and last cursor of a job's changes (`None`: no change recorded).
    fn job_changes(&self, job: JobId) -> StoreResult<Option<(i64, i64)>>;
    /// Deletes ledger entries written before `before`; returns how many.
    fn ledger_sweep(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// How many ledger entries a job wrote.
    fn ledger_entries_of(&self, job: JobId) -> StoreResult<u64>;
    /// Creates `target`'s rollback job (see [`rollback::create`]).
    fn rollback_insert(
        &self,
        target: JobId,
        job: &NewJob,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<rollback::RollbackInserted>;
    /// Undoes up to `limit` more of `target`'s entries for the rollback job holding `lease`, in
    /// one transaction (see [`rollback::batch`]); `None` when the lease was lost.
    fn rollback_batch(
        &self,
        dataset: &Dataset,
        lease: &Lease,
        target: JobId,
        org: i64,
        force: bool,
        limit: u64,
    ) -> StoreResult<Option<rollback::RollbackBatch>>;

    // --- Webhooks and their deliveries.

    /// Registers a webhook of organisation `org_id`.
    fn webhook_insert(
        &self,
        url: &str,
        events: &[String],
        secret: &str,
        created_by: Option<i64>,
        org_id: i64,
    ) -> StoreResult<Webhook>;
    /// The organisation's webhooks (`None`: every webhook, for the dispatcher), by id.
    fn webhook_list(&self, org_id: Option<i64>) -> StoreResult<Vec<Webhook>>;
    /// Deletes a webhook and its delivery log; false when it did not exist.
    fn webhook_delete(&self, id: i64) -> StoreResult<bool>;
    /// The webhook cursor and up to `limit` job events after it that ended a job (status
    /// events with a finished status): the events to turn into deliveries.
    fn delivery_backlog(&self, limit: u64) -> StoreResult<(i64, Vec<JobEvent>)>;
    /// Inserts deliveries and moves the cursor from `from` to `to`, in one transaction; false
    /// (and nothing written) when another dispatcher moved the cursor first.
    fn delivery_insert_many(
        &self,
        from: i64,
        to: i64,
        deliveries: &[NewDelivery],
    ) -> StoreResult<bool>;
    /// Claims up to `limit` pending deliveries due by `now_ms`, holding each for `hold_ms` (no
    /// other dispatcher takes it meanwhile).
    fn delivery_claim_due(
        &self,
        now_ms: i64,
        hold_ms: u64,
        limit: u64,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// Records one attempt and the delivery's new state; `next_attempt_ms` is when to try again
    /// while it stays pending.
    fn delivery_record(
        &self,
        id: i64,
        attempt: &DeliveryAttempt,
        state: DeliveryState,
        next_attempt_ms: i64,
    ) -> StoreResult<()>;
    /// A webhook's deliveries, newest first, each with its attempts, and their total.
    fn delivery_list(
        &self,
        webhook_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<Delivery>, u64)>;

    // --- Mapping templates.

    // Templates belong to an organisation (migration 0007): each call names it.

    /// Creates or replaces the organisation's template of that name for the dataset.
    fn template_save(
        &self,
        org_id: i64,
        dataset: &str,
        name: &str,
        mapping: &std::collections::BTreeMap<String, Option<String>>,
    ) -> StoreResult<Template>;
    /// The organisation's templates for the dataset, most recently used or saved first.
    fn template_list(&self, org_id: i64, dataset: &str) -> StoreResult<Vec<Template>>;
    /// One of the organisation's templates, marking it used (so it is suggested first next time).
    fn template_use(&self, org_id: i64, dataset: &str, name: &str)
    -> StoreResult<Option<Template>>;
    // --- Sources (migration 0015) and their runs.

    /// Creates a source; `NameTaken` when the organisation has one of that name.
    fn source_insert(&self, source: &NewSource) -> StoreResult<SourceSaved>;
    /// Replaces the settings of the organisation's source `id` (`Missing`: none such); its run
    /// state is cleared when `reset_state`.
    fn source_update(
        &self,
        id: i64,
        source: &NewSource,
        reset_state: bool,
    ) -> StoreResult<SourceSaved>;
    fn source_get(&self, id: i64) -> StoreResult<Option<Source>>;
    /// The organisation's sources (`None`: all), by id.
    fn source_list(&self, org_id: Option<i64>) -> StoreResult<Vec<Source>>;
    /// Deletes a source and its runs; false when it did not exist.
    fn source_delete(&self, id: i64) -> StoreResult<bool>;
    /// Up to `limit` enabled sources whose next slot is due by `now`, longest overdue first.
    fn sources_due(&self, now: DateTime<Utc>, limit: u64) -> StoreResult<Vec<Source>>;
    /// The earliest next slot of any enabled source (the scheduler wakes for it).
    fn sources_next_due(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// Moves a source's next slot from `due` to `next` in one guarded statement: true for
    /// exactly one caller per slot, however many nodes try.
    fn source_claim_slot(
        &self,
        id: i64,
        due: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Stores what the source's runs remember (files seen, validators).
    fn source_set_state(&self, id: i64, state: &serde_json::Value) -> StoreResult<()>;
    /// Starts a run under a key unique per source, unless that key has run already or another
    /// run of the source is in progress (one at a time, across every node).
    fn run_start(
        &self,
        source_id: i64,
        run_key: &str,
        trigger: &str,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> StoreResult<RunStart>;
    /// Records file number `n` (2, 3, …) of run `of`, ended, as a run of its own (`<key>#n`).
    fn run_add(&self, of: &SourceRun, n: usize, end: &RunEnd) -> StoreResult<()>;
    /// Records how a run ended.
    fn run_finish(&self, id: i64, end: &RunEnd) -> StoreResult<()>;
    fn run_get(&self, id: i64) -> StoreResult<Option<SourceRun>>;
    /// A page of the source's runs, newest first, and their total.
    fn run_list(
        &self,
        source_id: i64,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<SourceRun>, u64)>;
    /// The job of an earlier run of the source that imported a file of this SHA-256 (`Some(0)`
    /// if that run recorded no job).
    fn run_imported(&self, source_id: i64, sha256: &str) -> StoreResult<Option<JobId>>;
    // --- E-mails of sources (migration 0015).

    /// Runs finished since `since` whose e-mails are due and not yet planned.
    fn notify_backlog(&self, since: DateTime<Utc>, limit: u64) -> StoreResult<Vec<NotifyItem>>;
    /// Plans a run's e-mails, once across nodes (false: planned already; nothing written).
    fn notify_plan(&self, run_id: i64, source_id: i64, emails: &[NewEmail]) -> StoreResult<bool>;
    /// Claims up to `limit` pending e-mails due by `now_ms`, holding each for `hold_ms`.
    fn email_claim_due(&self, now_ms: i64, hold_ms: u64, limit: u64) -> StoreResult<Vec<DueEmail>>;
    /// Records an attempt at an e-mail.
    fn email_record(
        &self,
        id: i64,
        attempts: u32,
        state: DeliveryState,
        error: Option<&str>,
        next_attempt_ms: i64,
    ) -> StoreResult<()>;
    /// A page of a source's or a user's e-mails, newest first, and their total.
    fn email_list(
        &self,
        of: EmailsOf,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<EmailDelivery>, u64)>;

    // ---- users' e-mail subscriptions (issue 18)
    /// Stores a subscription; `None` when the user has one for the address already.
    fn subscription_insert(&self, s: &NewSubscription) -> StoreResult<Option<Subscription>>;
    /// The user's subscriptions, oldest first.
    fn subscription_list(&self, user_id: i64) -> StoreResult<Vec<Subscription>>;
    /// Removes one of the user's subscriptions and its unsent e-mails (false: no such one).
    fn subscription_delete(&self, user_id: i64, id: i64) -> StoreResult<bool>;
    /// Imports ended since `since` that subscriptions want to hear of and have no e-mail yet.
    fn subscription_backlog(
        &self,
        since: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<SubscribedJob>>;
    /// Plans subscriptions' e-mails about jobs, once per job and address across nodes.
    fn subscription_plan(&self, emails: &[NewEmail]) -> StoreResult<()>;
}
