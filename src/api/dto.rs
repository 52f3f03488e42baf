//! The JSON shapes the API answers, as types: each handler returns one of these, and the
//! OpenAPI document (`openapi`) describes them from the same definitions, so the document cannot
//! drift from the answers. A new field is one line here.
//!
//! Every success is `{success: true, data}` (`Data`), with a `message` where the handler says
//! something (`Said`, `Message`); every error is [`ErrorBody`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::sources::{ImportSpec, ScheduleSpec, SourceConfig};
use crate::store::{
    AuditRecord, Delivery, EmailDelivery, ErrorRecord, Job, JobId, JobKind, JobStatus, Role,
    Source, SourceRun, Template, TokenInfo, User, Webhook,
};

/// `{success: true, data}`.
#[derive(Serialize, ToSchema)]
pub struct Data<T> {
    pub success: bool,
    pub data: T,
}

impl<T> Data<T> {
    pub fn ok(data: T) -> Self {
        Data {
            success: true,
            data,
        }
    }
}

/// `{success, message, data}`.
#[derive(Serialize, ToSchema)]
pub struct Said<T> {
    pub success: bool,
    pub message: String,
    pub data: T,
}

/// `{success: true, message}`: an action with nothing more to say.
#[derive(Serialize, ToSchema)]
pub struct Message {
    pub success: bool,
    pub message: String,
}

impl Message {
    pub fn ok(message: impl Into<String>) -> Self {
        Message {
            success: true,
            message: message.into(),
        }
    }
}

/// Every error: `{success: false, error: {code, message}}` with a stable `code`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_parameter`, `missing_columns`, `not_found`, …
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// 409 only: the job the request clashes with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
}

/// A job (seed 000's status shape, extended).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: JobId,
    /// `import`, `export` or `analysis` (a dry run of an import).
    pub kind: String,
    /// An analysis: the file is read and validated, no row is written.
    pub dry_run: bool,
    /// An import started from an analysis (`POST /api/v1/import/{id}/run`): that analysis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis_of: Option<JobId>,
    pub dataset: String,
    pub filename: String,
    /// `upsert`, `insert` or `replace`.
    pub mode: String,
    pub status: JobStatus,
    pub progress: Progress,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_count: u64,
    pub updated_count: u64,
    pub unchanged_count: u64,
    pub error_count: u64,
    /// Batches committed.
    pub batches: u64,
    pub rows_per_second: Option<u64>,
    pub eta_seconds: Option<u64>,
    pub errors_url: String,
    /// Why the job failed.
    pub error: Option<String>,
    pub file_size: u64,
    pub sha256: String,
    pub warnings: Vec<String>,
    pub attempts: u64,
    pub worker_id: Option<String>,
    pub duplicate_of: Option<JobId>,
    pub retry_of: Option<JobId>,
    pub file_retained: bool,
    pub user_id: Option<i64>,
    pub user_name: Option<String>,
    /// `high`, `normal` or `low`: claimed by priority, then fairly across organisations.
    pub priority: String,
    /// While pending: an estimate of its place in the queue, 1 = next (see the README).
    pub queue_position: Option<u64>,
    /// A job split into chunk jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Chunks>,
    /// A chunk job: its parent and its index among the parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<u32>,
    /// Once the job is finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Results>,
    /// A synchronous import's answer only: its first row errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ErrorRecord>>,
    /// An analysis (dry run): rows, would-create, would-update, unchanged, errors and the
    /// errors by column and by message — while it runs from its counts, once completed as in
    /// its report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<AnalysisSummary>,
    /// A completed analysis: its report (`?format=xlsx|json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_url: Option<String>,
    /// A completed export whose file is kept: where to download it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// A completed job's file: when retention (`--retain-files`) removes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// An import that changed rows: the cursors of its changes in the dataset's change feed
    /// (`GET /api/v1/datasets/{dataset}/changes?after={after}` reads them, up to `last`).
    /// Only in a single job's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeRange>,
    /// A rollback: the job whose changes it undoes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<JobId>,
    /// The rollback job that undid (or is undoing) this job's changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_by: Option<JobId>,
    /// Rows the job deleted (a rollback removing rows an import created).
    pub deleted_count: u64,
}

/// Where a job's changes lie in the change feed.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRange {
    /// The cursor just before the job's first change: pass it as `after`.
    pub after: i64,
    /// The cursor of the job's last change (so far, while it runs).
    pub last: i64,
}

/// One change of a dataset's change feed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeView {
    /// Its position in the feed: strictly increasing in commit order.
    pub cursor: i64,
    /// When the change was written.
    pub at: DateTime<Utc>,
    /// The job that made the change (a chunk's parent).
    pub job_id: JobId,
    /// `created`, `updated` or `deleted`.
    pub op: String,
    /// The row's key fields and values.
    #[schema(value_type = Object)]
    pub key: serde_json::Value,
    /// The row's values as they are now (every field, key included); `null` for a deletion, or
    /// when the row was deleted since (that deletion comes later in the feed).
    #[schema(value_type = Option<Object>)]
    pub values: Option<serde_json::Value>,
}

/// `GET /api/v1/datasets/{dataset}/changes`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangesPage {
    pub changes: Vec<ChangeView>,
    /// The cursor to resume from (`after`): the last change's, or the `after` given when the
    /// page is empty.
    pub next: i64,
    /// Whether more changes follow right away.
    pub has_more: bool,
}

/// An analysis's summary (`summary` in its status).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSummary {
    /// Data rows read so far (valid and invalid).
    pub rows: u64,
    pub would_create: u64,
    pub would_update: u64,
    pub unchanged: u64,
    pub errors: u64,
    /// `mode=sync`, once completed: the organisation's rows the import would delete (the keys
    /// the file lacks; a rejected row's readable key counts as had). Also `deletedCount`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete: Option<u64>,
    /// `mode=sync`, once completed: the import would fail on its `maxDeletePercent` guard, and
    /// why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_refusal: Option<String>,
    /// Once completed (empty before; `/errors/summary` has them while it runs).
    pub errors_by_column: Vec<crate::import::tally::Count>,
    pub errors_by_message: Vec<crate::import::tally::MessageCount>,
}

impl AnalysisSummary {
    pub(super) fn of(job: &Job) -> Self {
        let done = job.result.as_ref().and_then(|r| r.get("summary"));
        let list = |key: &str| done.and_then(|s| s.get(key)).cloned();
        AnalysisSummary {
            rows: job.created_count + job.updated_count + job.unchanged_count + job.error_count,
            would_create: job.created_count,
            would_update: job.updated_count,
            unchanged: job.unchanged_count,
            errors: job.error_count,
            would_delete: list("wouldDelete").and_then(|v| v.as_u64()),
            delete_refusal: list("deleteRefusal").and_then(|v| v.as_str().map(String::from)),
            errors_by_column: list("errorsByColumn")
                .and_then(|v| serde_json::from_value::<Vec<CountIn>>(v).ok())
                .map(|v| v.into_iter().map(Into::into).collect())
                .unwrap_or_default(),
            errors_by_message: list("errorsByMessage")
                .and_then(|v| serde_json::from_value::<Vec<MessageIn>>(v).ok())
                .map(|v| v.into_iter().map(Into::into).collect())
                .unwrap_or_default(),
        }
    }
}

/// The tally's JSON read back from `jobs.result`.
#[derive(serde::Deserialize)]
struct CountIn {
    column: String,
    count: u64,
}

impl From<CountIn> for crate::import::tally::Count {
    fn from(c: CountIn) -> Self {
        Self {
            column: c.column,
            count: c.count,
        }
    }
}

#[derive(serde::Deserialize)]
struct MessageIn {
    message: String,
    count: u64,
    example: String,
    example_row: u64,
}

impl From<MessageIn> for crate::import::tally::MessageCount {
    fn from(m: MessageIn) -> Self {
        Self {
            message: m.message,
            count: m.count,
            example: m.example,
            example_row: m.example_row,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Progress {
    pub current: u64,
    pub total: u64,
    pub percentage: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Chunks {
    pub total: u32,
    pub completed: u32,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    pub total_rows: u64,
    pub success_count: u64,
    pub error_count: u64,
    pub created_count: u64,
    pub updated_count: u64,
    pub unchanged_count: u64,
}

impl JobView {
    /// Adds when the job's file expires, for a server keeping files `retain` after a job ends.
    pub fn expiring(mut self, retain: std::time::Duration) -> Self {
        if self.kind == JobKind::Export.as_str() && self.file_retained {
            self.expires_at = self
                .completed_at
                .zip(chrono::Duration::from_std(retain).ok())
                .map(|(done, retain)| done + retain);
        }
        self
    }
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        let export = (job.kind == JobKind::Export).then(|| crate::export::ExportResult::of(job));
        let success = job.created_count + job.updated_count + job.unchanged_count;
        // An export's progress counts the rows written, a rollback's the ledger entries handled.
        let processed = match &export {
            Some(Some(result)) => result.rows,
            Some(None) => job.rows_done,
            None if job.kind == JobKind::Rollback => job.rows_done,
            None => success + job.error_count,
        };
        // An export's total is its snapshot's row count, read before its first row.
        let total = match (&export, job.total_rows) {
            (Some(_), Some(total)) => total,
            (_, total) => total.unwrap_or(processed).max(processed),
        };
        let percentage = if job.status == JobStatus::Completed {
            100
        } else {
            (processed * 100).checked_div(total).unwrap_or(0).min(100)
        };
        let end = job.completed_at.unwrap_or_else(Utc::now);
        let elapsed = job
            .started_at
            .map(|s| (end - s).num_milliseconds().max(0) as f64 / 1000.0);
        let rows_per_second = elapsed
            .filter(|e| *e > 0.0)
            .map(|e| (processed as f64 / e).round() as u64);
        let eta = match (job.status, rows_per_second) {
            (JobStatus::Processing, Some(rps)) if rps > 0 && job.total_rows.is_some() => {
                Some(total.saturating_sub(processed).div_ceil(rps))
            }
            _ => None,
        };
        JobView {
            job_id: job.id,
            kind: job.kind.as_str().into(),
            dry_run: job.kind == JobKind::Analysis,
            analysis_of: job.analysis_of,
            dataset: job.dataset.clone(),
            filename: job.filename.clone(),
            mode: job.mode.as_str().into(),
            status: job.status,
            progress: Progress {
                current: processed,
                total,
                percentage,
            },
            created_at: job.created_at,
            started_at: job.started_at,
            completed_at: job.completed_at,
            created_count: job.created_count,
            updated_count: job.updated_count,
            unchanged_count: job.unchanged_count,
            error_count: job.error_count,
            batches: job.batches_done,
            rows_per_second,
            eta_seconds: eta,
            errors_url: format!("/api/v1/import/{}/errors", job.id),
            error: job.error.clone(),
            file_size: match &export {
                Some(Some(result)) => result.size,
                _ => job.file_size,
            },
            sha256: match &export {
                Some(Some(result)) => result.sha256.clone(),
                Some(None) => String::new(),
                None => job.sha256.clone(),
            },
            warnings: job.mapping.warnings(),
            attempts: job.attempts,
            worker_id: job.lease_owner.clone(),
            duplicate_of: job.duplicate_of,
            retry_of: job.retry_of,
            file_retained: !job.blob_deleted,
            user_id: job.user_id,
            user_name: job.user_name.clone(),
            priority: job.priority.as_str().into(),
            queue_position: job.queue_position,
            chunks: job.chunks_total.map(|total| Chunks {
                total,
                completed: job.chunks_completed,
            }),
            parent_id: job.parent_id,
            chunk_index: job.parent_id.and(job.chunk_index),
            results: job.status.is_finished().then_some(Results {
                total_rows: processed,
                success_count: match &export {
                    Some(_) => processed,
                    None if job.kind == JobKind::Rollback => {
                        processed.saturating_sub(job.error_count)
                    }
                    None => success,
                },
                error_count: job.error_count,
                created_count: job.created_count,
                updated_count: job.updated_count,
                unchanged_count: job.unchanged_count,
            }),
            errors: None,
            summary: (job.kind == JobKind::Analysis).then(|| AnalysisSummary::of(job)),
            report_url: (job.kind == JobKind::Analysis
                && job.status == JobStatus::Completed
                && job
                    .result
                    .as_ref()
                    .is_some_and(|r| r.get("report").is_some()))
            .then(|| format!("/api/v1/import/{}/report", job.id)),
            download_url: (export.is_some()
                && job.status == JobStatus::Completed
                && !job.blob_deleted)
                .then(|| format!("/api/v1/export/{}/download", job.id)),
            expires_at: None,
            changes: None,
            rollback_of: crate::rollback::RollbackParams::of(job).map(|p| p.rollback_of),
            rolled_back_by: job.rolled_back_by,
            deleted_count: job.deleted_count,
        }
    }
}

/// `GET /api/v1/import/jobs`
#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

/// `GET /api/v1/import/{jobId}/errors?format=json`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorsPage {
    pub job_id: JobId,
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
    pub errors: Vec<ErrorRecord>,
}

/// `POST /api/v1/export/{dataset}`: the options, as a JSON body, form fields or query
/// parameters. Described for the document only (the handler reads them once for all three).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ExportRequest {
    /// `csv` (default) or `xlsx`.
    pub format: Option<String>,
    /// Fields in output order: `a,b` or a JSON array (default: every field, in dataset order;
    /// with a template, the fields it maps).
    pub columns: Option<Vec<String>>,
    /// Field → value (equality), or field → `{"gte": …, "lte": …}` (a range, either end
    /// optional); values typed as the field is.
    #[serde(rename = "where")]
    pub filter: Option<std::collections::HashMap<String, WhereCondition>>,
    /// Only rows an import created or changed at or after this time (RFC 3339, or a date);
    /// rows an import found unchanged keep their time.
    pub updated_since: Option<String>,
    /// Only rows this import job (of the dataset, of the organisation) wrote last.
    pub job_id: Option<i64>,
    /// A saved mapping template: its headers name the columns.
    pub template: Option<String>,
    /// CSV: start with a UTF-8 byte order mark (default false).
    pub bom: Option<bool>,
    /// CSV: prefix text cells that start with `=`, `+`, `-`, `@`, tab or CR with `'`
    /// (default true).
    pub formula_safe: Option<bool>,
    /// `high`, `normal` (default) or `low`.
    pub priority: Option<String>,
}

/// One field's condition in an export's `where`: a value the field must equal, or a range.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum WhereCondition {
    Text(String),
    Number(f64),
    Flag(bool),
    Range(WhereRange),
}

/// `{"gte": …, "lte": …}`: either end optional, both inclusive.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WhereRange {
    #[schema(value_type = Option<String>)]
    pub gte: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    pub lte: Option<serde_json::Value>,
}

/// The 202 of a background upload (also in `Location`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub job_id: JobId,
    pub status_url: String,
}

/// `GET /healthz`
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: String,
    /// `ok`, or `busy` when every connection is in use (still up).
    pub database: String,
}

/// `GET /readyz`: `ready`, or `unavailable` with the reason (a 503).
#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /api/v1/datasets`
#[derive(Serialize, ToSchema)]
pub struct Datasets {
    pub datasets: Vec<DatasetView>,
}

#[derive(Serialize, ToSchema)]
pub struct DatasetView {
    pub name: String,
    pub table: String,
    /// The key's fields.
    pub key: Vec<String>,
    /// Imported in the request (200) rather than as a background job (202).
    pub sync: bool,
    pub fields: Vec<FieldView>,
}

#[derive(Serialize, ToSchema)]
pub struct FieldView {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    pub aliases: Vec<String>,
    pub history: bool,
}

/// A webhook; `secret` only in the answer that created it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub deliveries_url: String,
    /// The HMAC-SHA256 key deliveries are signed with: shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&Webhook> for WebhookView {
    fn from(h: &Webhook) -> Self {
        WebhookView {
            id: h.id,
            url: h.url.clone(),
            events: h.events.clone(),
            created_at: h.created_at,
            deliveries_url: format!("/api/v1/webhooks/{}/deliveries", h.id),
            secret: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Webhooks {
    pub webhooks: Vec<WebhookView>,
}

#[derive(Serialize, ToSchema)]
pub struct Deliveries {
    pub deliveries: Vec<Delivery>,
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Users {
    pub users: Vec<User>,
}

#[derive(Serialize, ToSchema)]
pub struct Tokens {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct UserCreated {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

/// A new token: the only answer that shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub id: i64,
    pub user_id: i64,
    pub token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/session`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub user_id: i64,
    pub org_id: i64,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/me`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub user_id: i64,
    pub user_name: Option<String>,
    pub org_id: i64,
    pub org_name: Option<String>,
    pub role: Role,
    pub token_id: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Templates {
    pub templates: Vec<Template>,
}

/// `POST /api/v1/import/{dataset}/preview`. Described for the document only: the handler
/// builds this answer as JSON (its columns and mapping follow the file).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PreviewView {
    pub dataset: String,
    /// `csv`, `xlsx`, `xls`, `ods`, …
    pub format: String,
    pub delimiter: Option<String>,
    pub headers: Vec<String>,
    /// Per column: `header`, `field`, `match`, `confidence`, `suggestion`, `key`, `position`.
    pub columns: Vec<serde_json::Value>,
    /// Column key → field (or `null`: ignored).
    pub mapping: std::collections::BTreeMap<String, Option<String>>,
    /// `auto`, `manual` or `template`.
    pub mapping_source: String,
    pub fields: Vec<serde_json::Value>,
    pub warnings: Vec<String>,
    /// File-level problems an import would refuse with, as `{code, message}`.
    pub problems: Vec<serde_json::Value>,
    /// The first rows: `{row, values}`.
    pub rows: Vec<serde_json::Value>,
    pub errors: Vec<ErrorRecord>,
    pub fuzzy_threshold: f64,
    pub truncated: bool,
    pub sheets: Vec<String>,
    pub templates: Vec<Template>,
    pub suggested_template: Option<String>,
}

/// The multipart form of an upload and of a preview. The same fields may be query parameters;
/// a raw body (not multipart) with `?filename=` is the file itself.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file: CSV (any delimiter), TSV, XLSX, XLS or ODS.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// JSON object: column (its header, or `#N` by position) → field name, or `null` to ignore.
    pub mapping: Option<String>,
    /// The name of a saved mapping template (instead of `mapping`).
    pub template: Option<String>,
    /// `upsert` (default), `insert` or `replace`.
    pub mode: Option<String>,
    /// `high`, `normal` (default) or `low`: the claim order (see the README).
    pub priority: Option<String>,
    /// The worksheet of a workbook to read (default: the first with data).
    pub sheet: Option<String>,
    /// A text file's encoding (default: detected; e.g. `windows-1252`, `utf-16le`).
    pub encoding: Option<String>,
    /// A CSV's delimiter: one ASCII character or `tab` (default: detected).
    pub delimiter: Option<String>,
    /// The file's name when the form part has none (or with a raw body).
    pub filename: Option<String>,
    /// `true`: analyse without writing.
    #[schema(rename = "dryRun")]
    pub dry_run: Option<bool>,
}

/// A source as the API shows it: its settings without secrets (header values show as
/// `headerNames` only).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    pub id: i64,
    pub name: String,
    pub dataset: String,
    /// `directory`, `url` or `sftp`.
    pub kind: String,
    pub schedule: ScheduleSpec,
    /// `latest` or `all-new`.
    pub pick: String,
    pub options: ImportSpec,
    pub notify: Vec<crate::store::NotifyTarget>,
    pub enabled: bool,
    #[serde(flatten)]
    pub config: SourceConfig,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the schedule fires next (absent for a disabled source).
    pub next_due_at: Option<DateTime<Utc>>,
    pub runs_url: String,
}

impl From<&Source> for SourceView {
    fn from(s: &Source) -> Self {
        SourceView {
            id: s.id,
            name: s.name.clone(),
            dataset: s.dataset.clone(),
            kind: s.kind.clone(),
            schedule: serde_json::from_value(s.schedule.clone()).unwrap_or_default(),
            pick: s.pick.clone(),
            options: serde_json::from_value(s.options.clone()).unwrap_or_default(),
            notify: s.notify.clone(),
            enabled: s.enabled,
            config: serde_json::from_value(s.config.clone()).unwrap_or_default(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            next_due_at: s.next_due_at,
            runs_url: format!("/api/v1/sources/{}/runs", s.id),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Sources {
    pub sources: Vec<SourceView>,
}

/// A page of a source's runs, newest first.
#[derive(Serialize, ToSchema)]
pub struct SourceRuns {
    pub runs: Vec<SourceRun>,
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

/// The caller's e-mail subscriptions.
#[derive(Serialize, ToSchema)]
pub struct Subscriptions {
    pub subscriptions: Vec<crate::store::Subscription>,
}

/// A page of e-mail notifications (a source's, or a user's subscriptions'), newest first.
#[derive(Serialize, ToSchema)]
pub struct Emails {
    pub emails: Vec<EmailDelivery>,
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}
