//! The store's domain types: jobs and their states, leases, chunks, tenants, audit lines, job
//! events, webhooks and deliveries, templates. Plain data, shared by every layer; the seam that
//! reads and writes them is [`super::JobStore`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::JobId;
use crate::dataset::Dataset;
use crate::import::{Format, Mapping, Mode, SourceOptions};

/// The closed set of job states. `pending → processing → completed | failed`; `paused` and
/// `cancelled` are part of the schema for the crash-safe jobs work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// How urgently a job wants a worker: the claim takes higher priorities first (see
/// `jobs::claim`). Stored as its [`Priority::rank`], so the claim orders by a plain integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub const NAMES: &'static str = "high, normal or low";

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The stored value: larger is claimed sooner.
    pub fn rank(self) -> i64 {
        match self {
            Priority::High => 1,
            Priority::Normal => 0,
            Priority::Low => -1,
        }
    }

    pub fn from_rank(rank: i64) -> Result<Self, String> {
        match rank {
            1 => Ok(Priority::High),
            0 => Ok(Priority::Normal),
            -1 => Ok(Priority::Low),
            other => Err(format!("unknown priority rank {other}")),
        }
    }
}

/// What a job does (migration 0012): an `import` writes a file's rows into a dataset, an
/// `export` writes a dataset's rows into a file, an `analysis` reads and validates a file as its
/// import would and classifies each row against the live table, without writing one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    #[default]
    Import,
    Export,
    Analysis,
    /// Undoes an import's changes from the ledger (`params.rollbackOf`).
    Rollback,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Import => "import",
            JobKind::Export => "export",
            JobKind::Analysis => "analysis",
            JobKind::Rollback => "rollback",
        }
    }
}

impl std::str::FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "import" => Ok(JobKind::Import),
            "export" => Ok(JobKind::Export),
            "analysis" => Ok(JobKind::Analysis),
            "rollback" => Ok(JobKind::Rollback),
            other => Err(format!("unknown job kind `{other}`")),
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!(
                "priority must be {}, not `{other}`",
                Priority::NAMES
            )),
        }
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
    pub priority: Priority,
    pub kind: JobKind,
    /// What a non-import job was asked to do (an export's format, columns and filters), as the
    /// module of its kind reads it; `None` for imports.
    pub params: Option<serde_json::Value>,
    /// The analysis this import runs the file of (`POST /api/v1/import/{id}/run`).
    pub analysis_of: Option<JobId>,
}

/// What became of an upload's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Created(JobId),
    /// The same file for the same dataset is already pending, processing or paused.
    ActiveDuplicate(JobId),
    /// The caller already sent this Idempotency-Key; this is the job it created.
    Replayed(JobId),
    /// A synchronous import found this job writing (or waiting to write) the same dataset of the
    /// same organisation; it was not created.
    DatasetBusy(JobId),
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
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total: u64,
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// Rows accepted by jobs that completed since midnight UTC.
    pub rows_imported_today: u64,
    /// Accepted rows per second of wall time, over the last 100 completed jobs.
    pub average_rows_per_second: Option<f64>,
}

/// One group of jobs with the same status, dataset and kind, as `/metrics` reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct JobGroup {
    pub status: String,
    pub dataset: String,
    /// A chunk job (`parent_id` set) rather than a top-level job.
    pub chunk: bool,
    pub count: u64,
    /// When the oldest job of the group was created.
    pub oldest: DateTime<Utc>,
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
    /// Chunk jobs have their parent's.
    pub priority: Priority,
    /// While the job is pending (a top-level job): its estimated place in the queue, 1 = next
    /// (see `jobs::queue_position`). Filled in by `job_get` and `job_list`.
    pub queue_position: Option<u64>,
    pub kind: JobKind,
    /// See [`NewJob::params`].
    pub params: Option<serde_json::Value>,
    /// What the job produced, written under its lease by [`super::JobStore::job_set_result`]
    /// (an export's file, an analysis's summary), as the module of its kind writes it.
    pub result: Option<serde_json::Value>,
    pub analysis_of: Option<JobId>,
    /// The rollback job that undid this job's changes.
    pub rolled_back_by: Option<JobId>,
    /// Rows this job deleted (a rollback removing rows an import created).
    pub deleted_count: u64,
    /// A rollback's checkpoint: the last ledger entry it has undone.
    pub ledger_cursor: Option<i64>,
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
    pub dataset: Arc<Dataset>,
    /// The top-level job (its ledger entries are the swap's changes).
    pub owner: JobId,
    pub table: String,
    pub staging: String,
    /// The organisation whose rows are replaced.
    pub org: i64,
    /// Columns copied (the dataset's fields and sluice's bookkeeping).
    pub columns: Vec<String>,
}

impl Replacement {
    pub fn for_dataset(dataset: &Arc<Dataset>, owner: JobId, org: i64) -> Self {
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
            dataset: dataset.clone(),
            owner,
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

/// What the transaction that completes a job (or, for a chunk, its parent) does besides
/// recording the end.
#[derive(Debug, Clone)]
pub enum Completion {
    /// `mode=replace`: the staging table's rows become the organisation's rows.
    Replace(Replacement),
    /// `mode=sync`: the organisation's rows whose keys the file did not have are deleted.
    Sync(SyncDeletion),
}

impl Completion {
    /// The dataset the completion changes.
    pub fn dataset(&self) -> &str {
        match self {
            Completion::Replace(r) => &r.dataset.name,
            Completion::Sync(s) => &s.dataset.name,
        }
    }
}

/// A `mode=sync` job's deletion (see `store/sync.rs`).
#[derive(Debug, Clone)]
pub struct SyncDeletion {
    pub dataset: Arc<Dataset>,
    /// The top-level job: the rows it wrote or saw carry it in `_sluice_job`.
    pub owner: JobId,
    pub org: i64,
    /// The guard: the job fails and deletes nothing when more than this percentage of the
    /// organisation's rows would go.
    pub max_delete_percent: u8,
}

/// The guard's default (`maxDeletePercent`).
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;

/// A chunk of a split job, about to be created: a chunk file of its own, or a part of the
/// original file (`options.part`, the parent's blob).
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub blob: String,
    /// Rows counted into a chunk file; unknown for a part until it completes.
    pub rows: Option<u64>,
    pub size: u64,
    pub format: crate::import::Format,
    pub options: SourceOptions,
}

/// Who takes a split job's chunks at once, instead of leaving them for any worker to claim
/// (the parts a worker runs together, see `jobs::split`).
#[derive(Debug, Clone, Copy)]
pub struct ChunkClaim<'a> {
    pub owner: &'a str,
    pub lease_ms: u64,
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorRecord {
    pub row: u64,
    pub column: Option<String>,
    pub value: Option<String>,
    pub message: String,
    #[serde(skip)]
    pub record: Vec<String>,
}

/// A user's role inside their organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: i64,
    pub org_id: i64,
    pub name: String,
    pub role: Role,
}

/// A line of the audit log: who did what to what.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// The organisation of the job (`None`: the job is gone, or belongs to none): readers show
    /// an event only to its organisation.
    pub org_id: Option<i64>,
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
    /// The organisation it belongs to (that of the token that registered it); it hears only of
    /// that organisation's jobs.
    pub org_id: Option<i64>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// A named column mapping saved for a dataset (column → field name, a column named by header or
/// `#N`; `None` ignores a column).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub dataset: String,
    pub name: String,
    pub mapping: std::collections::BTreeMap<String, Option<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

/// What an export reads (`JobStore::dataset_export`): the rows of one organisation, the chosen
/// fields in order, narrowed by the filters; ordered by the dataset key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportQuery {
    /// The fields written, by index in the dataset, in output order.
    pub columns: Vec<usize>,
    /// Every filter must hold.
    #[serde(default)]
    pub filters: Vec<ExportFilter>,
    /// Only rows an import created or changed at or after this time (`_sluice_updated_at`; a
    /// row an import found unchanged keeps its time).
    #[serde(default)]
    pub updated_since: Option<DateTime<Utc>>,
    /// Only rows last stamped by this import job (`_sluice_job`).
    #[serde(default)]
    pub job: Option<JobId>,
}

/// One condition on a field: its value equals `eq`, or lies within `gte`..=`lte`. Values are
/// the field's canonical text, as the import stores it (checked by the API against the type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportFilter {
    pub field: usize,
    #[serde(default)]
    pub eq: Option<String>,
    #[serde(default)]
    pub gte: Option<String>,
    #[serde(default)]
    pub lte: Option<String>,
}

/// Where an export's rows go, one at a time, inside the store's read transaction.
pub trait ExportRows {
    /// How many rows the snapshot holds, before the first row. False stops the export.
    fn total(&mut self, rows: u64) -> bool;
    /// One row: the query's columns in order (text, integers, booleans or NULL; decimals, dates
    /// and times as text). False stops the export.
    fn row(&mut self, values: &[super::sql::Value]) -> bool;
}

// --- Sources (migration 0015): scheduled imports from where the files live.

/// A source as stored. `kind`, `pick`, `schedule`, `options` and `config` are checked by
/// `crate::sources` before they are stored; `secrets` never leave the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub id: i64,
    pub org_id: i64,
    pub name: String,
    pub dataset: String,
    /// `directory`, `url` or `sftp`.
    pub kind: String,
    pub schedule: serde_json::Value,
    /// `latest` or `all-new`.
    pub pick: String,
    pub options: serde_json::Value,
    pub notify: Vec<NotifyTarget>,
    /// The kind's settings without secrets (path, glob, url, …).
    pub config: serde_json::Value,
    /// Header values, passwords, keys: written, never returned.
    pub secrets: serde_json::Value,
    /// What runs remember (files seen, a URL's validators).
    pub state: serde_json::Value,
    pub enabled: bool,
    pub created_by: Option<i64>,
    pub user_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the scheduler fires it next (`None`: never, a disabled source).
    pub next_due_at: Option<DateTime<Utc>>,
}

/// What a source is made of (insert and update).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSource {
    pub org_id: i64,
    pub name: String,
    pub dataset: String,
    pub kind: String,
    pub schedule: serde_json::Value,
    pub pick: String,
    pub options: serde_json::Value,
    pub notify: Vec<NotifyTarget>,
    pub config: serde_json::Value,
    pub secrets: serde_json::Value,
    pub enabled: bool,
    pub created_by: Option<i64>,
    pub user_id: Option<i64>,
    pub next_due_at: Option<DateTime<Utc>>,
}

/// The outcome of saving a source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSaved {
    Saved(Box<Source>),
    /// The organisation has another source of this name.
    NameTaken,
    /// No such source (update).
    Missing,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// A job was created for the file (`jobId`).
    Imported,
    /// Nothing to import now (no file, not stable yet, already importing); see `reason`.
    Skipped,
    /// The file's content was imported by this source before, or the server answered 304.
    Unchanged,
    /// The file's header does not map with full confidence: no job; fix the mapping.
    NeedsMapping,
    Failed,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Imported => "imported",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Unchanged => "unchanged",
            RunOutcome::NeedsMapping => "needs_mapping",
            RunOutcome::Failed => "failed",
        }
    }
}

impl std::str::FromStr for RunOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "imported" => RunOutcome::Imported,
            "skipped" => RunOutcome::Skipped,
            "unchanged" => RunOutcome::Unchanged,
            "needs_mapping" => RunOutcome::NeedsMapping,
            "failed" => RunOutcome::Failed,
            other => return Err(format!("unknown run outcome `{other}`")),
        })
    }
}

/// One run of a source: started by the scheduler (its slot is the run key) or by a person.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceRun {
    pub id: i64,
    pub source_id: i64,
    /// Unique per source: `slot:<time>` for a scheduled run, `manual:<random>` otherwise.
    pub run_key: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    /// When the run started.
    pub at: DateTime<Utc>,
    /// `None` while the run is in progress.
    pub outcome: Option<RunOutcome>,
    pub file: Option<String>,
    pub sha256: Option<String>,
    pub job_id: Option<JobId>,
    pub reason: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What starting a run came to.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStart {
    Started(Box<SourceRun>),
    /// The source already has a run of this key (another node fired the slot).
    KeyTaken,
    /// Another run of the source is in progress (started within [`RUN_HOLD_MINUTES`]).
    Busy,
}

/// How long an unfinished run keeps others of its source from starting (a process that died
/// mid-run holds its source no longer than this).
pub const RUN_HOLD_MINUTES: i64 = 15;

/// How a run ended, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub outcome: RunOutcome,
    pub file: Option<String>,
    pub sha256: Option<String>,
    pub job_id: Option<JobId>,
    pub reason: Option<String>,
}

/// A finished run whose e-mails are due: it ended `needs_mapping`, or its job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyItem {
    pub run_id: i64,
    pub source_id: i64,
    pub source_name: String,
    pub dataset: String,
    pub notify: Vec<NotifyTarget>,
    /// Subscriptions of the source's organisation to `needs_mapping` (id, address), for a run
    /// parked so; empty otherwise.
    pub subscribers: Vec<(i64, String)>,
    pub outcome: RunOutcome,
    pub file: Option<String>,
    pub reason: Option<String>,
    /// The run's job, when it has one still: (id, status, created, updated, unchanged, errors,
    /// the job's error).
    pub job: Option<NotifiedJob>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotifiedJob {
    pub id: JobId,
    pub status: String,
    pub filename: String,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub errors: u64,
    pub error: Option<String>,
}

/// An e-mail to send.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEmail {
    /// `completed`, `failed` or `needs_mapping`.
    pub event: String,
    pub address: String,
    pub subject: String,
    pub body: String,
    pub job_id: Option<JobId>,
    /// The user's subscription that asked for it (none: a source's `notify`).
    pub subscription_id: Option<i64>,
}

/// An e-mail claimed for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct DueEmail {
    pub id: i64,
    pub address: String,
    pub subject: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// An e-mail delivery as listed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailDelivery {
    pub id: i64,
    /// The source run it tells of (none for a subscription's e-mail about a job).
    pub run_id: Option<i64>,
    /// The subscription that asked for it (none: a source's `notify`).
    pub subscription_id: Option<i64>,
    pub job_id: Option<JobId>,
    /// `completed`, `failed` or `needs_mapping`.
    pub event: String,
    pub address: String,
    pub subject: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it is tried again (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Whose e-mails a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailsOf {
    /// A source's (its `notify` addresses).
    Source(i64),
    /// A user's subscriptions'.
    User(i64),
}

/// What a subscription (or a source's `notify` entry) tells of.
pub const SUBSCRIPTION_EVENTS: &[&str] = &["completed", "failed", "needs_mapping"];

/// Checks a list of e-mail events: at least one, each of [`SUBSCRIPTION_EVENTS`]; the message
/// says what is wrong.
pub fn check_events(events: &[String]) -> Result<(), String> {
    if events.is_empty() {
        return Err("`events` names at least one of completed, failed, needs_mapping".into());
    }
    match events
        .iter()
        .find(|e| !SUBSCRIPTION_EVENTS.contains(&e.as_str()))
    {
        Some(e) => Err(format!(
            "unknown event `{e}`; known: completed, failed, needs_mapping"
        )),
        None => Ok(()),
    }
}

/// A user's e-mail subscription (issue 18).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: i64,
    #[schema(example = "ops@example.com")]
    pub address: String,
    /// Of `completed`, `failed` (an import's end) and `needs_mapping` (a source's run parked).
    #[schema(example = json!(["completed", "failed"]))]
    pub events: Vec<String>,
    /// `mine`: the imports this user started; `organisation`: every import of the organisation
    /// (admins). `needs_mapping` is about every source of the organisation either way.
    #[schema(example = "mine")]
    pub scope: String,
    pub created_at: DateTime<Utc>,
}

/// A subscription to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    pub org_id: i64,
    pub user_id: i64,
    pub address: String,
    pub events: Vec<String>,
    pub scope: String,
}

/// An import that ended, and a subscription that wants to hear of it with no e-mail planned yet.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribedJob {
    pub subscription_id: i64,
    pub address: String,
    pub dataset: String,
    pub job: NotifiedJob,
}

/// An address a source's e-mails go to, and of which events: a plain address hears of every
/// one, `{"address", "events"}` of those named (`completed`, `failed`, `needs_mapping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum NotifyTarget {
    #[schema(example = "ops@example.com")]
    Address(String),
    Filtered {
        address: String,
        #[schema(example = json!(["failed", "needs_mapping"]))]
        events: Vec<String>,
    },
}

impl NotifyTarget {
    pub fn address(&self) -> &str {
        match self {
            NotifyTarget::Address(a) | NotifyTarget::Filtered { address: a, .. } => a,
        }
    }

    /// Whether this address hears of `event`.
    pub fn wants(&self, event: &str) -> bool {
        match self {
            NotifyTarget::Address(_) => true,
            NotifyTarget::Filtered { events, .. } => events.iter().any(|e| e == event),
        }
    }
}

impl From<&str> for NotifyTarget {
    fn from(address: &str) -> Self {
        NotifyTarget::Address(address.to_string())
    }
}
