//! `POST /api/v1/import/{dataset}`: receive a file, check it, create its job.
//!
//! The body (multipart field `file`, or a raw body with `?filename=`) is streamed to the blob
//! store while its SHA-256 is computed; it is never held in memory whole. Only the header and
//! the first data row are read before answering: file-level problems are a 400 and no job is
//! created. Background datasets answer 202 with the job id; synchronous ones (`sync = true`)
//! run the import in the request and answer 200 with the results.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::auth::Caller;
use super::body_rate::body_error;
use super::dto::{Accepted, ErrorBody, JobView, Said, UploadForm};
use super::error::ApiError;
use super::options::{self, ImportOptions, MappingChoice, param};
use crate::blob::BlobStore;
use crate::dataset::Dataset;
use crate::import::map::{self, Explicit};
use crate::import::read::{Source, no_rows_error, resolve_options, with_sheet_hint};
use crate::import::{FileError, Format, Mapping, Mode, SourceOptions};
use crate::jobs::{Executed, execute};
use crate::store::{
    DEFAULT_MAX_DELETE_PERCENT, Inserted, JobId, JobKind, JobStatus, NewJob, Priority,
};

/// Longest a synchronous import waits for another job writing its dataset before answering
/// `409 dataset_busy`.
const SYNC_WAIT: Duration = Duration::from_secs(30);
/// How often that wait looks again when no job end in this process wakes it.
const SYNC_POLL: Duration = Duration::from_millis(250);

/// Row errors included in a synchronous import's answer; the rest are at `errorsUrl`.
const SYNC_ERRORS_SHOWN: u64 = 100;
/// What is read and thrown away of an upload refused as too large before the 413 goes out, so
/// that a client still sending receives the answer rather than a reset connection; a larger
/// remainder is cut off with the connection.
const DISCARD_BYTES: u64 = 64 * 1024 * 1024;
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// An upload on disk; removed on drop unless kept (so every early return cleans up).
pub(crate) struct SavedBlob {
    blobs: BlobStore,
    name: String,
    size: u64,
    sha256: String,
    keep: bool,
}

impl SavedBlob {
    /// The file's SHA-256, hex.
    pub(crate) fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The file now belongs to a job: keep it when the guard goes.
    fn retain(&mut self) {
        self.keep = true;
    }
}

impl Drop for SavedBlob {
    /// Removing may touch the database (database mode): done on a blocking thread.
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // The local file (temp or finished) goes at once, so nothing half-written stays.
        for path in [
            self.blobs.temp_path(&self.name),
            self.blobs.path(&self.name),
        ]
        .into_iter()
        .flatten()
        {
            let _ = std::fs::remove_file(path);
        }
        if self.blobs.in_database_mode() {
            let (blobs, name) = (self.blobs.clone(), std::mem::take(&mut self.name));
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || blobs.discard(&name))),
                Err(_) => blobs.discard(&name),
            }
        }
    }
}

/// What the upload revealed about the file.
struct Inspected {
    format: Format,
    options: SourceOptions,
    header: Vec<String>,
    mapping: Mapping,
}

#[utoipa::path(post, path = "/api/v1/import/{id}", operation_id = "uploadFile", tag = "imports",
    summary = "Upload a file into a dataset: a background job (202), or the results of a synchronous dataset (200)",
    description = "The body is a multipart form with the file in `file`, or the raw file with `?filename=`; the options may also be query parameters. File-level problems answer 400 before any job exists. A repeated `Idempotency-Key` answers the original job (header `Idempotent-Replayed: true`).",
    params(
        ("id" = String, Path, description = "The dataset", example = "products"),
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters: a retry with the same key answers the same job"),
        ("filename" = Option<String>, Query, description = "The file's name, for a raw body (or a form part without one)"),
        ("mode" = Option<String>, Query, description = "As the form field `mode`: `upsert` (the default), `insert`, `replace` or `sync` (an upsert that also deletes the organisation's rows whose keys the file does not have, when the job completes)"),
        ("maxDeletePercent" = Option<u8>, Query, description = "With `mode=sync`: the most of the organisation's rows the sync may delete, 0–100 (default 50); past it the job fails and deletes nothing"),
    ),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "A synchronous dataset: the import's results and its first row errors (`success` is false when it did not complete)", body = Said<JobView>),
        (status = 202, description = "The job was created; poll `statusUrl` (also in `Location`)", body = Said<Accepted>),
        (status = 400, description = "Form: `bad_multipart`, `missing_file`, `multiple_files`, `field_too_large`, `upload_interrupted`; options: `invalid_mode`, `invalid_max_delete_percent`, `invalid_priority`, `invalid_mapping`, `invalid_delimiter`, `unknown_template`, `invalid_dry_run`, `invalid_idempotency_key`; file: `empty_file`, `no_header`, `no_rows`, `unsupported_format`, `missing_columns`, `too_many_rows`, `unreadable_file`, `sheet_not_found`, `archive_too_large`, `too_many_columns`, `cell_too_large`, `invalid_encoding`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dataset", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body arrived slower than the minimum rate", body = ErrorBody),
        (status = 409, description = "`duplicate_upload`: the same file is already importing (with `jobId`, `statusUrl`); `dataset_busy`: a synchronous import waited for another job", body = ErrorBody),
        (status = 413, description = "`file_too_large`", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: no room to store the file", body = ErrorBody),
    ))]
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path(dataset_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    axum::Extension(caller): axum::Extension<Caller>,
    req: Request,
) -> Result<Response, ApiError> {
    match receive(&state, &caller, query, req, Target::Dataset(dataset_name)).await? {
        Received::Answered(response) => Ok(response),
        Received::Queued { dataset, job, kind } => {
            state.jobs.wake.notify_one();
            Ok(accepted_as(&dataset, job, kind))
        }
    }
}

/// Where an upload goes.
pub(super) enum Target {
    /// The dataset named in the path, resolved before the body is read.
    Dataset(String),
    /// An analysis (dry run) into the form's `dataset` field, else the first dataset that
    /// imports in the background (seed 003's `analyze-file`).
    Analysis,
}

/// What [`receive`] came to.
pub(crate) enum Received {
    /// The request is answered already: a replayed idempotency key, or a synchronous dataset's
    /// results.
    Answered(Response),
    /// A background job was created (`kind`) in `dataset`.
    Queued {
        dataset: String,
        job: JobId,
        kind: JobKind,
    },
}

fn find_dataset(
    ctx: &crate::jobs::JobContext,
    name: &str,
) -> Result<Arc<crate::dataset::Dataset>, ApiError> {
    ctx.datasets.get(name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no dataset named `{name}`; configured: {}",
            ctx.datasets.names().join(", ")
        ))
    })
}

/// Receives an upload — the file streamed to a blob, the options from the query and the form —,
/// checks the file and creates its job: the one path of `POST /api/v1/import/{dataset}` and of
/// seed 003's `POST /api/v1/analysis/analyze-file`.
pub(super) async fn receive(
    state: &Arc<AppState>,
    caller: &Caller,
    query: HashMap<String, String>,
    req: Request,
    target: Target,
) -> Result<Received, ApiError> {
    let ctx = &state.jobs;
    let named = match &target {
        Target::Dataset(name) => Some(find_dataset(ctx, name)?),
        Target::Analysis => None,
    };
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::bad(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1–255 visible ASCII characters",
                    )
                })
        })
        .transpose()?;
    if let Some(key) = idempotency_key.clone() {
        let by = Some(caller.token_id);
        if let Some(job_id) = ctx
            .store_call(move |s| s.job_find_idempotent(by, &key))
            .await?
        {
            return replay(state, job_id).await.map(Received::Answered);
        }
    }
    // The organisation's limits narrow the server's, never widen them.
    let max_bytes = caller
        .limits
        .max_upload_bytes
        .map_or(state.max_upload_bytes, |m| m.min(state.max_upload_bytes));
    let mut params = query;
    let is_multipart = options::is_multipart(req.headers());
    let mut filename = params.get("filename").cloned();
    let saved = if is_multipart {
        let mut multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad("bad_multipart", e.body_text()))?;
        let mut saved = None;
        while let Some(mut field) = multipart
            .next_field()
            .await
            .map_err(options::multipart_error)?
        {
            let name = field.name().unwrap_or_default().to_string();
            if name == "file" {
                if saved.is_some() {
                    return Err(ApiError::bad("multiple_files", "send one file per request"));
                }
                filename = field.file_name().map(str::to_string).or(filename);
                let result = save_stream(state, max_bytes, &mut field).await;
                drop(field);
                if let Err(e @ (ApiError::TooLarge(_) | ApiError::InsufficientStorage(_))) = result
                {
                    // The rest of the form (its closing boundary, fields after the file).
                    let deadline = tokio::time::Instant::now() + DISCARD_TIME;
                    while let Ok(Ok(Some(mut rest))) =
                        tokio::time::timeout_at(deadline, multipart.next_field()).await
                    {
                        discard(&mut rest).await;
                    }
                    return Err(e);
                }
                saved = Some(result?);
            } else {
                let text = options::text_field(&mut field, &name).await?;
                params.insert(name, text);
            }
        }
        saved.ok_or_else(|| {
            ApiError::bad(
                "missing_file",
                "send the file in a multipart form field named `file`",
            )
        })?
    } else {
        save_stream(state, max_bytes, &mut req.into_body().into_data_stream()).await?
    };
    if matches!(target, Target::Analysis) {
        super::seed_analysis::check_filter_option(&params)?;
    }
    let dataset = match named {
        Some(dataset) => dataset,
        None => match param(&params, "dataset") {
            Some(name) => find_dataset(ctx, name.trim())?,
            None => ctx
                .datasets
                .names()
                .into_iter()
                .find_map(|n| ctx.datasets.get(n).filter(|d| !d.sync))
                .ok_or_else(|| {
                    ApiError::bad(
                        "missing_dataset",
                        "name the dataset to analyse against in the form field `dataset`",
                    )
                })?,
        },
    };

    let arrival = Arrival {
        dataset,
        params,
        filename,
        idempotency_key,
        analysis: matches!(target, Target::Analysis),
        mapping_gate: false,
    };
    create_job(state, caller, saved, arrival).await
}

/// What arrived besides the file: where it goes and how to import it.
pub(crate) struct Arrival {
    pub dataset: Arc<Dataset>,
    /// The import options (`mode`, `mapping`, `template`, `sheet`, …), as form fields.
    pub params: HashMap<String, String>,
    pub filename: Option<String>,
    pub idempotency_key: Option<String>,
    /// An analysis (dry run) whatever `dryRun` says.
    pub analysis: bool,
    /// Refuse (`needs_mapping`) a header that maps only by similarity (sources: nobody looks
    /// at the mapping before the import runs).
    pub mapping_gate: bool,
}

/// Checks a stored file and creates its job: the inspection (format, header, mapping, rows),
/// the job row and, for a synchronous dataset, the import itself. The one path from a file in
/// the blob store to a job, for uploads (after [`save_stream`]) and for sources.
pub(crate) async fn create_job(
    state: &Arc<AppState>,
    caller: &Caller,
    saved: SavedBlob,
    arrival: Arrival,
) -> Result<Received, ApiError> {
    let ctx = &state.jobs;
    let Arrival {
        dataset,
        params,
        filename,
        idempotency_key,
        analysis,
        mapping_gate,
    } = arrival;
    let max_rows = caller.limits.max_rows;
    let mode: Mode = param(&params, "mode")
        .unwrap_or("upsert")
        .parse()
        .map_err(|m: String| ApiError::bad("invalid_mode", m))?;
    // A dry run is an analysis job: the same file, options and mapping, read and classified
    // by a worker without writing the dataset (see `analysis`).
    let dry_run = match param(&params, "dryRun").map(str::trim) {
        _ if analysis => true,
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "invalid_dry_run",
                format!("dryRun must be true or false, not `{other}`"),
            ));
        }
    };
    let max_delete_percent = max_delete_percent(&params, mode)?;
    let priority: Priority = param(&params, "priority")
        .map(|v| v.trim().parse())
        .transpose()
        .map_err(|m: String| ApiError::bad("invalid_priority", m))?
        .unwrap_or_default();
    let ImportOptions {
        source: requested,
        mapping,
    } = ImportOptions::parse(&params)?;
    let explicit = match mapping {
        MappingChoice::Auto => None,
        MappingChoice::Manual(m) => Some(m),
        MappingChoice::Template(name) => {
            Some(template_mapping(state, caller.org_id, &dataset.name, &name).await?)
        }
    };

    let inspected = {
        let (dataset, blobs, name, size) = (
            dataset.clone(),
            ctx.blobs.clone(),
            saved.name.clone(),
            saved.size,
        );
        tokio::task::spawn_blocking(move || {
            inspect(
                &blobs,
                &name,
                size,
                &dataset,
                max_rows,
                &requested,
                explicit.as_ref(),
            )
        })
        .await
        .map_err(|e| ApiError::Internal(format!("inspect task: {e}")))??
    };
    if mapping_gate && !inspected.mapping.fuzzy.is_empty() {
        let guessed: Vec<String> = inspected
            .mapping
            .fuzzy
            .iter()
            .map(|f| format!("`{}` → `{}` ({}%)", f.header, f.field, f.percent))
            .collect();
        return Err(ApiError::bad(
            "needs_mapping",
            format!(
                "the header maps only by similarity: {}; give the source a mapping or a template",
                guessed.join(", ")
            ),
        ));
    }
    let new_job = NewJob {
        dataset: dataset.name.clone(),
        mode,
        filename: clean_filename(filename.as_deref()),
        blob: saved.name.clone(),
        file_size: saved.size,
        sha256: saved.sha256.clone(),
        format: inspected.format,
        options: inspected.options,
        header: inspected.header,
        mapping: inspected.mapping,
        created_by: Some(caller.token_id),
        org_id: caller.org_id,
        user_id: Some(caller.user_id),
        idempotency_key,
        retry_of: None,
        priority,
        kind: if dry_run {
            JobKind::Analysis
        } else {
            JobKind::Import
        },
        params: max_delete_percent.map(|p| serde_json::json!({ "maxDeletePercent": p })),
        analysis_of: None,
    };
    let audit = caller.audit("upload", None, upload_detail(&new_job));
    // A synchronous dataset's job is owned by this request from the start.
    // An analysis always runs on a worker.
    let lease = (dataset.sync && !dry_run).then(crate::api::auth::new_token);
    // Another job writing a synchronous dataset of the organisation goes first (imports into
    // one table run one after another): wait for it, woken by job ends in this process or a
    // short poll.
    let give_up = tokio::time::Instant::now() + SYNC_WAIT;
    let mut ended = ctx.events.subscribe();
    let (mut saved, mut publish) = (saved, ctx.blobs.in_database_mode());
    let inserted = loop {
        let attempt = (new_job.clone(), lease.clone(), audit.clone());
        let (inserted, back) = store_job(ctx, saved, publish, attempt).await?;
        (saved, publish) = (back, false);
        match inserted {
            Inserted::DatasetBusy(id)
                if lease.is_some() && tokio::time::Instant::now() < give_up =>
            {
                tracing::debug!(
                    job = id,
                    "synchronous import waits for the dataset's writer"
                );
                tokio::select! {
                    _ = ended.changed() => {}
                    _ = tokio::time::sleep(SYNC_POLL) => {}
                    _ = tokio::time::sleep_until(give_up) => {}
                }
            }
            other => break other,
        }
    };
    // Kept when the job was created; otherwise the file goes with the guard.
    drop(saved);
    let job_id = created_or_answer(state, inserted).await?;
    if let Some(token) = lease {
        return import_now(state, job_id, token)
            .await
            .map(Received::Answered);
    }
    Ok(Received::Queued {
        dataset: dataset.name.clone(),
        job: job_id,
        kind: new_job.kind,
    })
}

/// Makes the stored upload readable by every worker (database mode, when `publish`) and inserts
/// its job, in a task of its own that owns the blob guard: a request dropped meanwhile (its
/// client left) can then neither remove the file of a job that the insert goes on to create,
/// nor leave the file of one that it does not create. The job is inserted as processing, owned
/// by the caller, when a lease token is given. Returns the outcome and the guard (kept when the
/// job was created).
async fn store_job(
    ctx: &Arc<crate::jobs::JobContext>,
    mut saved: SavedBlob,
    publish: bool,
    (new_job, lease, audit): (NewJob, Option<String>, crate::store::AuditEntry),
) -> Result<(Inserted, SavedBlob), ApiError> {
    let ctx = ctx.clone();
    let lease_ms = ctx.config.lease.as_millis() as u64;
    tokio::spawn(async move {
        // Every worker must be able to read the file before the job exists.
        if publish {
            let (blobs, name) = (ctx.blobs.clone(), saved.name.clone());
            tokio::task::spawn_blocking(move || blobs.publish(&name))
                .await
                .map_err(|e| ApiError::Internal(format!("publish task: {e}")))?
                .map_err(|e| blob_error(e, "publishing the upload"))?;
        }
        let inserted = ctx
            .store_call(move |s| {
                let lease = lease.as_deref().map(|t| (t, lease_ms));
                s.job_insert(&new_job, lease, Some(&audit))
            })
            .await?;
        if matches!(inserted, Inserted::Created(_)) {
            saved.retain();
        }
        Ok((inserted, saved))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("job insert task: {e}")))?
}

/// The mapping of one of the organisation's saved templates (`template` field), marking it used.
/// `maxDeletePercent` (0–100, `mode=sync` only): the most of the organisation's rows a sync may
/// delete; a sync without it gets the default.
fn max_delete_percent(
    params: &HashMap<String, String>,
    mode: Mode,
) -> Result<Option<u8>, ApiError> {
    let bad = |m: String| ApiError::bad("invalid_max_delete_percent", m);
    let Some(text) = param(params, "maxDeletePercent").map(str::trim) else {
        return Ok((mode == Mode::Sync).then_some(DEFAULT_MAX_DELETE_PERCENT));
    };
    if mode != Mode::Sync {
        return Err(bad(format!(
            "maxDeletePercent applies to mode=sync only, not mode={}",
            mode.as_str()
        )));
    }
    match text.parse::<u8>() {
        Ok(p) if p <= 100 => Ok(Some(p)),
        _ => Err(bad(format!(
            "maxDeletePercent must be a whole number from 0 to 100, not `{text}`"
        ))),
    }
}

async fn template_mapping(
    state: &Arc<AppState>,
    org_id: i64,
    dataset: &str,
    name: &str,
) -> Result<Explicit, ApiError> {
    let (d, n) = (dataset.to_string(), name.to_string());
    let found = state
        .jobs
        .store_call(move |s| s.template_use(org_id, &d, &n))
        .await?;
    found.map(|t| t.mapping).ok_or_else(|| {
        ApiError::bad(
            "unknown_template",
            format!("dataset `{dataset}` has no mapping template named `{name}`"),
        )
    })
}

/// What the audit log says about an upload: the file, its size and where it goes.
fn upload_detail(job: &NewJob) -> Option<String> {
    Some(format!(
        "{} ({} bytes) into {}",
        job.filename, job.file_size, job.dataset
    ))
}

/// Synchronous datasets: run the import inside the request (the job was inserted as processing
/// under `token`) and answer with its results.
async fn import_now(
    state: &Arc<AppState>,
    job_id: JobId,
    token: String,
) -> Result<Response, ApiError> {
    let ctx = &state.jobs;
    let job = ctx
        .store_call(move |s| s.job_get(job_id))
        .await?
        .ok_or_else(|| ApiError::Internal("job vanished after insert".into()))?;
    let lease = crate::store::Lease { job_id, token };
    let executed = execute(ctx, job, lease, &CancellationToken::new()).await;
    let completed = executed == Executed::Finished(JobStatus::Completed);
    sync_results(state, job_id, completed).await
}

/// The answer of a synchronous import: the job and its first row errors.
async fn sync_results(
    state: &Arc<AppState>,
    job_id: JobId,
    completed: bool,
) -> Result<Response, ApiError> {
    let ctx = &state.jobs;
    let (job, (errors, _)) = ctx
        .store_call(move |s| {
            Ok((
                s.job_get(job_id)?,
                s.errors_page(job_id, SYNC_ERRORS_SHOWN, 0)?,
            ))
        })
        .await?;
    let job = job.ok_or_else(|| ApiError::Internal("job vanished after import".into()))?;
    let mut data = JobView::from(&job);
    data.errors = Some(errors);
    let message = if completed {
        format!("{} import completed", capitalised(&job.dataset))
    } else {
        format!("{} import did not complete", capitalised(&job.dataset))
    };
    Ok((
        StatusCode::OK,
        Json(Said {
            success: completed,
            message,
            data,
        }),
    )
        .into_response())
}

/// The job id of a created job, or the response for a duplicate or a replayed request.
pub(super) async fn created_or_answer(
    state: &Arc<AppState>,
    inserted: Inserted,
) -> Result<JobId, ApiError> {
    match inserted {
        Inserted::Created(id) => Ok(id),
        Inserted::ActiveDuplicate(id) => Err(ApiError::Conflict {
            code: "duplicate_upload",
            message: format!("the same file is already importing into this dataset as job {id}"),
            job: Some(id),
        }),
        Inserted::Replayed(id) => Err(ApiError::Replay(Box::new(replay(state, id).await?))),
        Inserted::DatasetBusy(id) => Err(ApiError::Conflict {
            code: "dataset_busy",
            message: format!(
                "job {id} is importing into this dataset; a synchronous import waited {} s for it — try again when it ends",
                SYNC_WAIT.as_secs()
            ),
            job: Some(id),
        }),
    }
}

/// A repeated request with the same Idempotency-Key: the original answer, for the job it made.
async fn replay(state: &Arc<AppState>, job_id: JobId) -> Result<Response, ApiError> {
    let job = state
        .jobs
        .store_call(move |s| s.job_get(job_id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job with id `{job_id}`")))?;
    let sync = state
        .jobs
        .datasets
        .get(&job.dataset)
        .is_some_and(|d| d.sync);
    let mut response = if sync {
        sync_results(state, job_id, job.status == JobStatus::Completed).await?
    } else {
        accepted(&job.dataset, job_id)
    };
    response.headers_mut().insert(
        "idempotent-replayed",
        header::HeaderValue::from_static("true"),
    );
    Ok(response)
}

pub(super) fn accepted(dataset: &str, job_id: JobId) -> Response {
    accepted_as(dataset, job_id, JobKind::Import)
}

/// The 202 of a background job of `kind` (an import, or an analysis: "… analysis started").
pub(super) fn accepted_as(dataset: &str, job_id: JobId, kind: JobKind) -> Response {
    let status_url = format!("/api/v1/import/status/{job_id}");
    let body = Said {
        success: true,
        message: format!(
            "{} {} started in background",
            capitalised(dataset),
            kind.as_str()
        ),
        data: Accepted {
            job_id,
            status_url: status_url.clone(),
        },
    };
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, status_url)],
        Json(body),
    )
        .into_response()
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The client's file name, for display only: its last path segment, printable, at most 255
/// characters. It never becomes a path.
fn clean_filename(name: Option<&str>) -> String {
    let name = name.unwrap_or("upload");
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = last.chars().filter(|c| !c.is_control()).take(255).collect();
    if clean.trim().is_empty() {
        "upload".into()
    } else {
        clean
    }
}

/// Streams a body to a new blob, hashing on the way and refusing past the size limit.
/// Reads and throws away the rest of a refused upload, within `DISCARD_BYTES` and
/// `DISCARD_TIME`.
async fn discard<S, E>(stream: &mut S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + DISCARD_TIME;
    let mut left = DISCARD_BYTES;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        left = left.saturating_sub(chunk.len() as u64);
        if left == 0 {
            break;
        }
    }
}

pub(crate) async fn save_stream<S, E>(
    state: &AppState,
    max_bytes: u64,
    stream: &mut S,
) -> Result<SavedBlob, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + 'static,
{
    let name = BlobStore::new_name();
    // Database mode: stored while it arrives; a refused upload's pieces are gone before the
    // answer (a request dropped midway leaves that to the copy's drop).
    let mut copy = state.jobs.blobs.upload_copy(&name);
    let saved = receive_stream(state, max_bytes, stream, name, &mut copy).await;
    if saved.is_err()
        && let Some(copy) = copy
    {
        copy.discard().await;
    }
    saved
}

/// [`save_stream`]'s receiving, with the store's copy (finished and taken when it succeeds).
async fn receive_stream<S, E>(
    state: &AppState,
    max_bytes: u64,
    stream: &mut S,
    name: String,
    copy: &mut Option<crate::blob::UploadCopy>,
) -> Result<SavedBlob, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + 'static,
{
    let blobs = state.jobs.blobs.clone();
    let path = blobs
        .temp_path(&name)
        .ok_or_else(|| ApiError::Internal("generated blob name rejected".into()))?;
    let mut saved = SavedBlob {
        blobs,
        name,
        size: 0,
        sha256: String::new(),
        keep: false,
    };
    let file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| ApiError::storage(e, "creating blob"))?;
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            body_error(e, |e| {
                ApiError::bad(
                    "upload_interrupted",
                    format!("the upload did not arrive whole: {e}"),
                )
            })
        })?;
        saved.size += chunk.len() as u64;
        if saved.size > max_bytes {
            discard(stream).await;
            return Err(ApiError::TooLarge(format!(
                "the file is larger than the limit of {max_bytes} bytes"
            )));
        }
        hasher.update(&chunk);
        if let Err(e) = out.write_all(&chunk).await {
            return Err(refuse(stream, ApiError::storage(e, "writing blob")).await);
        }
        if let Some(copy) = copy
            && let Err(e) = copy.write(&chunk).await
        {
            return Err(refuse(stream, blob_error(e, "storing the upload")).await);
        }
    }
    if let Err(e) = out.flush().await {
        return Err(refuse(stream, ApiError::storage(e, "writing blob")).await);
    }
    if let Some(copy) = copy.take() {
        copy.finish()
            .await
            .map_err(|e| blob_error(e, "storing the upload"))?;
    }
    // The job row will point at this file: it must survive a crash once we answer. In database
    // mode the job points at the store's copy instead, written in a transaction before the job.
    if !saved.blobs.in_database_mode() {
        out.get_ref()
            .sync_all()
            .await
            .map_err(|e| ApiError::storage(e, "syncing blob"))?;
    }
    drop(out);
    let (blobs, name) = (saved.blobs.clone(), saved.name.clone());
    tokio::task::spawn_blocking(move || blobs.finish(&name))
        .await
        .map_err(|e| ApiError::Internal(format!("finish task: {e}")))?
        .map_err(|e| ApiError::storage(e, "finishing blob"))?;
    saved.sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(saved)
}

/// The answer for a failure of the blob store while `doing`.
fn blob_error(e: crate::blob::BlobError, doing: &str) -> ApiError {
    match e {
        crate::blob::BlobError::Store(e) => ApiError::from(e),
        crate::blob::BlobError::Io(e) => ApiError::storage(e, doing),
        other => ApiError::Internal(other.to_string()),
    }
}

/// A refused upload whose client may still be sending: the rest of the body is read and thrown
/// away first (as for a too-large one), so the answer reaches the client — for a full disk, and
/// (database mode, the upload stored while it arrives) a database that stopped answering.
async fn refuse<S, E>(stream: &mut S, e: ApiError) -> ApiError
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    if matches!(
        e,
        ApiError::InsufficientStorage(_) | ApiError::Unavailable(_) | ApiError::Busy(_)
    ) {
        discard(stream).await;
    }
    e
}

/// Reads the header and the first rows: the format, the mapping, and the row limit of
/// synchronous datasets.
fn inspect(
    blobs: &BlobStore,
    name: &str,
    size: u64,
    dataset: &Dataset,
    org_max_rows: Option<u64>,
    requested: &SourceOptions,
    explicit: Option<&Explicit>,
) -> Result<Inspected, FileError> {
    if size == 0 {
        return Err(FileError::Empty);
    }
    let path = blobs
        .path(name)
        .ok_or_else(|| FileError::Unreadable("invalid blob name".into()))?;
    let (format, options) = resolve_options(&path, requested)?;
    let mut source = Source::open(&path, format, &options)?;
    let header = source.headers().to_vec();
    let mapping = map::resolve(dataset, &header, explicit)
        .map_err(|e| with_sheet_hint(e, &path, format, &options))?;
    // Background datasets only need to know the file has rows; synchronous ones, and uploads of
    // an organisation with a row limit, are counted up to the limit.
    let limit = match (dataset.sync.then_some(dataset.max_rows), org_max_rows) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut record = csv::ByteRecord::new();
    let mut rows = 0u64;
    while source.next_record(&mut record)?.is_some() {
        rows += 1;
        if limit.is_none_or(|max| rows > max) {
            break;
        }
    }
    if rows == 0 {
        return Err(no_rows_error(&path, format, &options));
    }
    if let Some(max) = limit
        && rows > max
    {
        return Err(FileError::TooManyRows { max });
    }
    Ok(Inspected {
        format,
        options,
        header,
        mapping,
    })
}
