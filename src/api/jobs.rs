//! Reporting on jobs: status (seed 000's shape plus extensions), the job list, row errors as
//! JSON pages or a streamed CSV, and the configured datasets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::Caller;
use super::dto::{
    ChangeRange, Data, DatasetView, Datasets, ErrorBody, ErrorsPage, FieldView, JobList, JobView,
};
use super::error::ApiError;
use super::options::number;
use crate::export::csv::neutralise;
use crate::import::tally::ErrorSummary;
use crate::store::StoreError;
use crate::store::{Job, JobFilter, JobId, JobKind, JobStatus};

/// Errors fetched per page while streaming the CSV.
/// Rows per page of the rejected-rows CSV: each page is one short store call, and a client that
/// stops reading holds at most one page in memory (and no database connection).
const CSV_PAGE: u64 = 1_000;

/// Tries at reading one page while the database is busy or unreachable, a second apart.
const PAGE_ATTEMPTS: u32 = 10;
const DEFAULT_LIMIT: u64 = 100;

/// The answer for a job the caller cannot see: a missing job and another organisation's job
/// get the very same body, so a job id reveals nothing across organisations.
pub(super) fn job_not_found() -> ApiError {
    ApiError::NotFound("no such job".into())
}

pub(super) fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse::<JobId>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(job_not_found)
}

/// The job, if the caller's organisation owns it; any other job is "not found".
pub(super) async fn load_job(
    state: &AppState,
    caller: &Caller,
    id: JobId,
) -> Result<Job, ApiError> {
    state
        .jobs
        .store_call(move |s| s.job_get(id))
        .await?
        .filter(|job| caller.sees(job))
        .ok_or_else(job_not_found)
}

/// `GET /api/v1/import/status/{jobId}`
#[utoipa::path(get, path = "/api/v1/import/status/{id}", operation_id = "getJobStatus", tag = "jobs",
    summary = "A job's status (seed 000's shape, extended)",
    params(("id" = String, Path, description = "The job id", example = "1")),
    responses(
        (status = 200, description = "The job", body = Data<JobView>),
        (status = 404, description = "`not_found`: no such job (or another organisation's)", body = ErrorBody),
    ))]
pub async fn status(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Data<JobView>>, ApiError> {
    let id = parse_id(&id)?;
    let (job, range) = state
        .jobs
        .store_call(move |s| s.job_with_changes(id))
        .await?
        .filter(|(job, _)| caller.sees(job))
        .ok_or_else(job_not_found)?;
    let mut view = JobView::from(&job).expiring(state.retain_files);
    view.changes = change_range(&job, range);
    Ok(Json(Data::ok(view)))
}

/// Where an import's changes lie in its dataset's change feed, given the job's range.
pub(super) fn change_range(job: &Job, range: Option<(i64, i64)>) -> Option<ChangeRange> {
    if job.kind != JobKind::Import || job.created_count + job.updated_count == 0 {
        return None;
    }
    range.map(|(first, last)| ChangeRange {
        after: first - 1,
        last,
    })
}

/// `GET /api/v1/import/jobs?status=&dataset=&limit=&offset=`
#[utoipa::path(get, path = "/api/v1/import/jobs", operation_id = "listJobs", tag = "jobs",
    summary = "The organisation's jobs, newest first",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this status"),
        ("dataset" = Option<String>, Query, description = "Only jobs of this dataset"),
        ("limit" = Option<u64>, Query, description = "Page size (default 20, at most 1000)"),
        ("offset" = Option<u64>, Query, description = "Jobs skipped"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = Data<JobList>),
        (status = 400, description = "`invalid_parameter`: a status, limit or offset that is not one", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Data<JobList>>, ApiError> {
    let status = params
        .get("status")
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<JobStatus>())
        .transpose()
        .map_err(|m| ApiError::bad("invalid_parameter", m))?;
    let filter = JobFilter {
        org_id: Some(caller.org_id),
        status,
        dataset: params.get("dataset").filter(|s| !s.is_empty()).cloned(),
        limit: number(&params, "limit", 20)?.min(1000),
        offset: number(&params, "offset", 0)?,
    };
    let f = filter.clone();
    let (jobs, total) = state.jobs.store_call(move |s| s.job_list(&f)).await?;
    Ok(Json(Data::ok(JobList {
        jobs: jobs
            .iter()
            .map(|j| JobView::from(j).expiring(state.retain_files))
            .collect(),
        total,
        limit: filter.limit,
        offset: filter.offset,
    })))
}

/// `GET /api/v1/import/{jobId}/errors?format=json|csv&limit=&offset=`
#[utoipa::path(get, path = "/api/v1/import/{id}/errors", operation_id = "getJobErrors", tag = "jobs",
    summary = "A job's rejected rows: JSON pages, or every row as CSV (the file's columns plus `error`)",
    params(
        ("id" = String, Path, description = "The job id", example = "1"),
        ("format" = Option<ErrorsFormat>, Query, description = "`json` (default) or `csv`"),
        ("limit" = Option<u64>, Query, description = "JSON page size (default 100)"),
        ("offset" = Option<u64>, Query, description = "Rows skipped (JSON)"),
    ),
    responses(
        (status = 200, description = "The rejected rows", content(
            (Data<ErrorsPage> = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "`invalid_parameter`: an unknown format, or a limit or offset that is not a number", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
    ))]
pub async fn errors(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let job = load_job(&state, &caller, parse_id(&id)?).await?;
    match params.get("format").map(String::as_str).unwrap_or("json") {
        "json" => {
            let limit = number(&params, "limit", DEFAULT_LIMIT)?;
            let offset = number(&params, "offset", 0)?;
            let id = job.id;
            let (errors, total) = state
                .jobs
                .store_call(move |s| s.errors_page(id, limit, offset))
                .await?;
            Ok(Json(Data::ok(ErrorsPage {
                job_id: job.id,
                total,
                limit,
                offset,
                errors,
            }))
            .into_response())
        }
        "csv" => Ok(errors_csv(state, job)),
        other => Err(ApiError::bad(
            "invalid_parameter",
            format!("format must be `json` or `csv`, not `{other}`"),
        )),
    }
}

/// `GET /api/v1/import/{jobId}/errors/summary`
#[utoipa::path(get, path = "/api/v1/import/{id}/errors/summary", operation_id = "getJobErrorSummary", tag = "jobs",
    summary = "A job's rejected rows counted by column and by kind of message (the value taken out), most frequent first",
    params(("id" = String, Path, description = "The job id", example = "1")),
    responses(
        (status = 200, description = "The counts", body = Data<ErrorSummary>),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
    ))]
pub async fn error_summary(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Data<ErrorSummary>>, ApiError> {
    let job = load_job(&state, &caller, parse_id(&id)?).await?;
    let id = job.id;
    let summary = state.jobs.store_call(move |s| s.errors_tally(id)).await?;
    Ok(Json(Data::ok(summary)))
}

/// Streams every rejected row as CSV: the file's columns plus `error`, ready to fix and upload
/// again. Pages are read from the store as the client consumes them.
fn errors_csv(state: Arc<AppState>, job: Job) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let filename = format!("job-{}-rejected-rows.csv", job.id);
    tokio::spawn(async move {
        // The reading side counts too: memory is trimmed once both sides of every stream are gone.
        let _in_flight = crate::memory::Stream::start();
        let mut header = job.header.clone();
        header.push("error".into());
        let first = csv_bytes(std::iter::once(header));
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut after = 0;
        loop {
            let id = job.id;
            let mut page = Err(StoreError::Busy("not read yet".into()));
            // A busy or briefly unreachable database delays the download, it does not cut it.
            for attempt in 0..PAGE_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Never closed: a failure here would only mean reading without a turn.
                let _turn = state.bulk_reads.acquire().await.ok();
                // A client that left while this waited for its turn costs no read.
                if tx.is_closed() {
                    return;
                }
                page = state
                    .jobs
                    .store_call(move |s| s.errors_after(id, after, CSV_PAGE))
                    .await;
                if !matches!(&page, Err(e) if e.is_transient()) {
                    break;
                }
            }
            let errors = match page {
                Ok(errors) => errors,
                Err(e) => {
                    tracing::error!(error = %e, job = job.id, "reading errors for CSV failed");
                    let _ = tx
                        .send(Err(std::io::Error::other("reading errors failed")))
                        .await;
                    return;
                }
            };
            if errors.is_empty() {
                return;
            }
            after = errors.last().map_or(after, |e| e.row);
            let rows = errors.into_iter().map(|e| {
                let mut r = e.record;
                r.push(e.message);
                r
            });
            if tx.send(Ok(csv_bytes(rows))).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// CSV text of rows, every cell neutralised.
fn csv_bytes(rows: impl Iterator<Item = Vec<String>>) -> Bytes {
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    for r in rows {
        // Writing to a Vec cannot fail.
        let _ = w.write_record(r.iter().map(|c| neutralise(c).into_owned()));
    }
    Bytes::from(w.into_inner().unwrap_or_default())
}

/// A response body from a channel; counted as a stream in flight until the response is dropped
/// (its client got everything or went away), for [`crate::memory::Stream`].
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    let stream = crate::memory::Stream::start();
    futures_util::stream::poll_fn(move |cx| {
        let _in_flight = &stream;
        rx.poll_recv(cx)
    })
}

/// `GET /api/v1/datasets`: what can be imported, and the fields each expects.
#[utoipa::path(get, path = "/api/v1/datasets", operation_id = "listDatasets", tag = "datasets",
    summary = "The configured datasets and the fields each expects",
    responses((status = 200, description = "The datasets", body = Data<Datasets>)))]
pub async fn datasets(State(state): State<Arc<AppState>>) -> Json<Data<Datasets>> {
    let datasets = state
        .jobs
        .datasets
        .iter()
        .map(|d| DatasetView {
            name: d.name.clone(),
            table: d.table.clone(),
            key: d.key.iter().map(|&k| d.fields[k].name.clone()).collect(),
            sync: d.sync,
            fields: d
                .fields
                .iter()
                .map(|f| FieldView {
                    name: f.name.clone(),
                    ty: format!("{:?}", f.ty).to_lowercase(),
                    required: f.required,
                    aliases: f.aliases.clone(),
                    history: f.history,
                })
                .collect(),
        })
        .collect();
    Json(Data::ok(Datasets { datasets }))
}

/// The forms of `GET /api/v1/import/{jobId}/errors` (for the document).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ErrorsFormat {
    Json,
    Csv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_prefixed_and_others_left_alone() {
        for risky in ["=1+1", "+1", "-5", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(neutralise(risky), format!("'{risky}"));
        }
        for safe in ["", "abc", "1-2", "'=x", " =x"] {
            assert_eq!(neutralise(safe), safe);
        }
        let csv = csv_bytes(std::iter::once(vec![
            "=cmd|' /C calc'!A0".into(),
            "ok".into(),
        ]));
        assert_eq!(&csv[..], b"'=cmd|' /C calc'!A0,ok\n");
    }
}
