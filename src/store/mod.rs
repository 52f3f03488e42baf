//! The store: the only seam between sluice and its database.
//!
//! [`JobStore`] is a blocking interface (callers on the async side use `spawn_blocking`); method
//! names read noun-then-verb (`job_claim`, `job_heartbeat`) and every write a worker makes after
//! claiming a job is fenced by its [`Lease`]: zero rows updated means the lease was lost. SQL
//! lives only in the backend modules and `migrations/`. Two backends implement it: `sqlite`
//! (embedded, the default) and `postgres` (shared by many processes and machines).

mod control;
mod hooks;
mod jobs;
mod pool;
pub mod postgres;
pub mod sql;
mod sql_store;
pub mod sqlite;
mod tenants;

pub use sql_store::{Backend, SqlStore};

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Datasets};
use crate::import::{BatchSink, Format, Mapping, Mode, SourceOptions};

pub type JobId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is busy, unavailable or out of space: worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Every pooled connection stayed in use for the whole wait: worth retrying soon.
    #[error("database busy: {0}")]
    Busy(String),
    #[error("database error: {0}")]
    Other(String),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether trying again later may succeed (the database was unreachable, busy or full).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Busy(_))
    }
}

/// The closed set of job states. `pending → processing → completed | failed`; `paused` and
/// `cancelled` are part of the schema for the crash-safe jobs work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Processing,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Paused => "paused",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => JobStatus::Pending,
            "processing" => JobStatus::Processing,
            "paused" => JobStatus::Paused,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(format!("unknown status `{other}`")),
        })
    }
}

/// A job about to be created by an upload.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub dataset: String,
    pub mode: Mode,
    pub filename: String,
    pub blob: String,
    pub file_size: u64,
    pub sha256: String,
    pub format: Format,
    pub options: SourceOptions,
    pub header: Vec<String>,
    pub mapping: Mapping,
    pub created_by: Option<i64>,
    /// The organisation the job belongs to, and the user who started it.
    pub org_id: i64,
    pub user_id: Option<i64>,
    /// A client's `Idempotency-Key`: a repeated request returns the job it created first.
    pub idempotency_key: Option<String>,
    /// The job this one repeats from the start (`retry?fromStart=true`).
    pub retry_of: Option<JobId>,
}

/// What became of an upload's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Created(JobId),
    /// The same file for the same dataset is already pending, processing or paused.
    ActiveDuplicate(JobId),
    /// The caller already sent this Idempotency-Key; this is the job it created.
    Replayed(JobId),
}

/// An operator's action on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop for good at the next batch boundary; committed batches stay written.
    Cancel,
    /// Stop at the next batch boundary and wait for `Resume`.
    Pause,
    /// Make a paused job claimable again; it continues from its checkpoint.
    Resume,
    /// Run a failed or cancelled job again: from its checkpoint, or as a new job from the start.
    Retry { from_start: bool },
}

/// The answer to a [`Control`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controlled {
    /// Done; the job to follow (a new one for a retry from the start).
    Done(JobId),
    NotFound,
    /// Not possible in the job's current state; the reason is fit for users.
    Conflict(String),
}

/// Figures over all jobs (seed 003's getStats, extended).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total: u64,
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// Rows accepted by jobs that completed since midnight UTC.
    pub rows_imported_today: u64,
    /// Accepted rows per second of wall time, over the last 100 completed jobs.
    pub average_rows_per_second: Option<f64>,
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub dataset: String,
    pub status: JobStatus,
    pub mode: Mode,
    pub filename: String,
    pub blob: String,
    pub file_size: u64,
    pub sha256: String,
    pub format: Format,
    pub options: SourceOptions,
    pub header: Vec<String>,
    pub mapping: Mapping,
    pub total_rows: Option<u64>,
    pub rows_done: u64,
    pub created_count: u64,
    pub updated_count: u64,
    pub unchanged_count: u64,
    pub error_count: u64,
    pub batches_done: u64,
    pub error: Option<String>,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub attempts: u64,
    /// The worker holding the lease, while one does.
    pub lease_owner: Option<String>,
    /// An earlier completed job that imported the same file into the same dataset.
    pub duplicate_of: Option<JobId>,
    pub retry_of: Option<JobId>,
    /// Set once the retention sweeper removed the uploaded file.
    pub blob_deleted: bool,
    /// A chunk job: the job it is a part of, and its index among the parts.
    pub parent_id: Option<JobId>,
    pub chunk_index: Option<u32>,
    /// A split job: how many chunk jobs it has, and how many completed.
    pub chunks_total: Option<u32>,
    pub chunks_completed: u32,
    /// The organisation the job belongs to (`None`: an unmigrated row no organisation sees).
    pub org_id: Option<i64>,
    /// The user who started it, and their name.
    pub user_id: Option<i64>,
    pub user_name: Option<String>,
}

/// The column of every dataset table (and its history and staging tables) that names the
/// organisation a row belongs to; the key is unique per organisation: `(_sluice_org, key…)`.
pub const ORG_COLUMN: &str = "_sluice_org";

/// The organisation that owns rows written before dataset rows carried one: migration 0006
/// moved every existing job to it.
pub const DEFAULT_ORG: i64 = 1;

/// What a completing `mode=replace` job swaps: the staging table's rows become the table's rows
/// of the job's organisation, in the transaction that completes the job (or, for a chunk, its
/// parent). Other organisations' rows are not touched.
#[derive(Debug, Clone)]
pub struct Replacement {
    pub table: String,
    pub staging: String,
    /// The organisation whose rows are replaced.
    pub org: i64,
    /// Columns copied (the dataset's fields and sluice's bookkeeping).
    pub columns: Vec<String>,
}

impl Replacement {
    pub fn for_dataset(dataset: &Dataset, owner: JobId, org: i64) -> Self {
        let mut columns: Vec<String> = dataset.fields.iter().map(|f| f.name.clone()).collect();
        columns.extend(
            [
                "_sluice_job",
                "_sluice_row",
                "_sluice_created_at",
                "_sluice_updated_at",
            ]
            .map(String::from),
        );
        Self {
            table: dataset.table.clone(),
            staging: crate::dataset::staging_table(owner),
            org,
            columns,
        }
    }

    /// The statements of the swap, in order. The rows go in as the job's organisation's
    /// whatever the staging table says (one staged before the staging table had the column
    /// reads as the `default` organisation's).
    pub fn statements(&self) -> [String; 3] {
        let cols = self
            .columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        [
            format!(
                "DELETE FROM \"{}\" WHERE {ORG_COLUMN} = {}",
                self.table, self.org
            ),
            format!(
                "INSERT INTO \"{}\" ({ORG_COLUMN}, {cols}) SELECT {}, {cols} FROM \"{}\"",
                self.table, self.org, self.staging
            ),
            format!("DROP TABLE \"{}\"", self.staging),
        ]
    }
}

/// A chunk of a split job, about to be created.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub blob: String,
    pub rows: u64,
    pub size: u64,
}

/// Proof that a worker owns a job: every write it makes names the token, and is refused once
/// another worker has claimed the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub token: String,
}

/// Filters for the job list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this organisation's jobs (`None`: all, for operators).
    pub org_id: Option<i64>,
    pub status: Option<JobStatus>,
    pub dataset: Option<String>,
    pub limit: u64,
    pub offset: u64,
}

/// A stored row error.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRecord {
    pub row: u64,
    pub column: Option<String>,
    pub value: Option<String>,
    pub message: String,
    #[serde(skip)]
    pub record: Vec<String>,
}

/// A user's role inside their organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages tokens, users and the audit log, and controls every job of the organisation.
    Admin,
    /// Imports, sees the organisation's jobs, and controls the jobs they started.
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            other => Err(format!("unknown role `{other}`: use admin or member")),
        }
    }
}

/// Who a live token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: i64,
    /// The stored hash the token was found by; the caller confirms it in constant time.
    pub token_hash: String,
    pub user_id: i64,
    pub org_id: i64,
    pub role: Role,
    /// The organisation's limits (`None`: the server's).
    pub limits: OrgLimits,
    /// When the token stops working (`None`: never); a session cookie lasts no longer.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An organisation's own limits on uploads; `None` leaves the server's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrgLimits {
    pub max_upload_bytes: Option<u64>,
    /// Most data rows one upload may have.
    pub max_rows: Option<u64>,
}

/// An organisation as listed for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: i64,
    pub name: String,
    pub limits: OrgLimits,
}

/// An API token as admins see it: never the token, nor its hash.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: i64,
    pub user_id: Option<i64>,
    pub user_name: Option<String>,
    pub org_id: Option<i64>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: i64,
    pub org_id: i64,
    pub name: String,
    pub role: Role,
}

/// A line of the audit log: who did what to what.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub org_id: Option<i64>,
    /// `None`: the command line on the server.
    pub user_id: Option<i64>,
    pub token_id: Option<i64>,
    /// `upload`, `cancel`, `pause`, `resume`, `retry`, `delete`, `token.create`, `token.revoke`.
    pub action: String,
    /// What it was done to, e.g. `job:42` or `token:7`.
    pub target: Option<String>,
    pub detail: Option<String>,
}

impl AuditEntry {
    /// The line as a store call writes it for what it just did: `target` and `detail` filled in
    /// where the caller left them out (the id of a row the call creates is known only inside it).
    pub fn filled(&self, target: String, detail: Option<String>) -> AuditEntry {
        let mut e = self.clone();
        e.target.get_or_insert(target);
        if e.detail.is_none() {
            e.detail = detail;
        }
        e
    }
}

/// A stored audit entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// One entry of the job event log (`job_events`): a snapshot of a job's counts when it was
/// created, changed status, committed a batch or learned its row total. Written by the store in
/// the same transaction as the change, so it is complete whichever process made the change;
/// `seq` orders all events of all jobs and is the Server-Sent Events id.
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub seq: i64,
    pub job_id: JobId,
    /// `created`, `status` (the status changed) or `progress` (a batch or the total).
    pub kind: String,
    pub dataset: String,
    pub filename: String,
    pub status: JobStatus,
    pub total_rows: Option<u64>,
    pub rows_done: u64,
    pub created_count: u64,
    pub updated_count: u64,
    pub unchanged_count: u64,
    pub error_count: u64,
    pub batches_done: u64,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// A webhook subscription. `secret` is the HMAC-SHA256 key its deliveries are signed with.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    /// Event names: `job.completed`, `job.failed`, `job.cancelled`.
    pub events: Vec<String>,
    pub secret: String,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// A delivery to make: one job event for one webhook, with the exact body every attempt sends.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub webhook_id: i64,
    pub event_seq: i64,
    pub event: String,
    pub job_id: JobId,
    pub payload: String,
}

/// The states of a delivery: `pending` (an attempt is due or running), `delivered` (a 2xx
/// answer), `failed` (every attempt failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// A delivery with its webhook's address and key, claimed for one attempt.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: i64,
    pub url: String,
    pub secret: String,
    pub event: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// One attempt at a delivery, as recorded.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, if it answered.
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// A delivery and every attempt at it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: i64,
    pub event: String,
    pub job_id: JobId,
    pub state: DeliveryState,
    pub attempts: Vec<DeliveryAttempt>,
    /// When the next attempt is due, while the delivery is pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A named column mapping saved for a dataset (header → field name; `None` ignores a column).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub dataset: String,
    pub name: String,
    pub mapping: std::collections::BTreeMap<String, Option<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

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
    /// Jobs newest first, and how many match the filter in all.
    fn job_list(&self, filter: &JobFilter) -> StoreResult<(Vec<Job>, u64)>;
    /// Claims the oldest pending job, or a processing one whose lease expired, for `owner`.
    fn job_claim(&self, owner: &str, lease_ms: u64) -> StoreResult<Option<(Job, Lease)>>;
    /// Extends the lease; false when it was lost.
    fn job_heartbeat(&self, lease: &Lease, lease_ms: u64) -> StoreResult<bool>;
    fn job_set_total(&self, lease: &Lease, total_rows: u64) -> StoreResult<bool>;
    /// Splits a claimed job into chunk jobs (pending, reading `options`) and gives the parent's
    /// lease back: from now on the parent is driven by its chunks. False when the lease was lost.
    fn job_split(
        &self,
        lease: &Lease,
        total_rows: u64,
        options: &SourceOptions,
        chunks: &[NewChunk],
    ) -> StoreResult<bool>;
    /// Moves the job to a final state; false when the lease was lost. For a chunk job, in the
    /// same transaction: a completed chunk counts towards its parent, and the last one completes
    /// it (exactly once); a failed chunk fails the parent and cancels its unfinished siblings.
    fn job_finish(
        &self,
        lease: &Lease,
        replace: Option<&Replacement>,
        status: JobStatus,
        error: Option<&str>,
    ) -> StoreResult<bool>;
    /// Gives the job back (shutdown): it stays `processing` and is claimable at once.
    fn job_release(&self, lease: &Lease) -> StoreResult<()>;

    /// Whether this backend announces claimable jobs (so `jobs_wait` is worth calling).
    fn announces_jobs(&self) -> bool {
        false
    }
    /// Blocks until a claimable job is announced (true) or `timeout` passes (false).
    fn jobs_wait(&self, timeout: std::time::Duration) -> StoreResult<bool> {
        std::thread::sleep(timeout);
        Ok(false)
    }

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

    /// Whether the store keeps uploaded files itself, so that every node can read them.
    fn keeps_blobs(&self) -> bool {
        false
    }
    /// Stores an uploaded file under `name`; returns its size.
    fn blob_write(&self, name: &str, from: &mut dyn std::io::Read) -> StoreResult<u64> {
        let _ = (name, from);
        Err(StoreError::Other("this store keeps no files".into()))
    }
    /// Streams a stored file into `to`; returns its size (0 and nothing written if unknown).
    fn blob_read(&self, name: &str, to: &mut dyn std::io::Write) -> StoreResult<u64> {
        let _ = (name, to);
        Err(StoreError::Other("this store keeps no files".into()))
    }
    fn blob_delete(&self, name: &str) -> StoreResult<()> {
        let _ = name;
        Ok(())
    }

    /// A page of the job's row errors, in row order, and their total.
    fn errors_page(
        &self,
        job: JobId,
        limit: u64,
        offset: u64,
    ) -> StoreResult<(Vec<ErrorRecord>, u64)>;

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

    // --- Job events (migration 0004). The backend must append a `JobEvent` in the same
    // transaction as every job insert, status change, batch commit and total count (SQLite does
    // it with triggers).

    /// Up to `limit` events with `seq > after`, oldest first; only `job`'s when given.
    fn events_after(
        &self,
        after: i64,
        job: Option<JobId>,
        limit: u64,
    ) -> StoreResult<Vec<JobEvent>>;
    /// The newest event's `seq` (0 when there is none).
    fn events_last_seq(&self) -> StoreResult<i64>;

    // --- Webhooks and their deliveries.

    fn webhook_insert(
        &self,
        url: &str,
        events: &[String],
        secret: &str,
        created_by: Option<i64>,
    ) -> StoreResult<Webhook>;
    fn webhook_list(&self) -> StoreResult<Vec<Webhook>>;
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
}
