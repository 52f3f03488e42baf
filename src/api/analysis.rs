//! Analysis (dry-run) jobs over HTTP: the report of a completed analysis
//! (`GET /api/v1/import/{jobId}/report?format=xlsx|json`) and the real import of an analysed
//! file (`POST /api/v1/import/{jobId}/run`). The analysis itself is created by the upload
//! (`dryRun=true`, `upload.rs`) and run by a worker (`crate::analysis`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::AppState;
use super::auth::Caller;
use super::dto::{Accepted, ErrorBody, Said};
use super::error::ApiError;
use super::jobs::{load_job, parse_id};
use crate::store::{Job, JobKind, JobStatus, NewJob};

/// The forms of the report (for the document).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ReportFormat {
    Xlsx,
    Json,
}

fn not_analysis(id: i64) -> ApiError {
    ApiError::Conflict {
        code: "not_analysis",
        message: format!("job {id} is not an analysis (upload with dryRun=true)"),
        job: Some(id),
    }
}

fn not_ready(job: &Job) -> ApiError {
    ApiError::Conflict {
        code: "not_ready",
        message: format!(
            "analysis {} is {}; its report exists once it completes",
            job.id,
            job.status.as_str()
        ),
        job: Some(job.id),
    }
}

/// `GET /api/v1/import/{jobId}/report`
#[utoipa::path(get, path = "/api/v1/import/{id}/report", operation_id = "getAnalysisReport", tag = "jobs",
    summary = "The report of a completed analysis (dry run)",
    description = "The workbook (sheets Summary, Errors, Columns) or the same content as JSON: `{summary, columns, errors, errorsOmitted}`. Written once when the analysis completed.",
    params(
        ("id" = String, Path, description = "The analysis job's id", example = "1"),
        ("format" = Option<ReportFormat>, Query, description = "`xlsx` (default) or `json`"),
    ),
    responses(
        (status = 200, description = "The report", content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        (status = 400, description = "`invalid_format`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job (or another organisation's)", body = ErrorBody),
        (status = 409, description = "`not_analysis`: the job is not an analysis; `not_ready`: it has not completed; `report_gone`: its files were removed by retention", body = ErrorBody),
    ))]
pub async fn report(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let json = match params.get("format").map(|f| f.trim()) {
        None | Some("" | "xlsx") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "invalid_format",
                format!("format must be xlsx or json, not `{other}`"),
            ));
        }
    };
    report_of(&state, &caller, parse_id(&id)?, json, &headers).await
}

/// The report of analysis `id` (XLSX, or JSON when `json`), under the caller's organisation
/// rules: for `/report` and seed 003's `/api/v1/analysis/download/{filename}`.
pub(super) async fn report_of(
    state: &Arc<AppState>,
    caller: &Caller,
    id: i64,
    json: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let job = load_job(state, caller, id).await?;
    if job.kind != JobKind::Analysis {
        return Err(not_analysis(job.id));
    }
    let report = job.result.as_ref().and_then(|r| r.get("report"));
    let Some(report) = report.filter(|_| job.status == JobStatus::Completed) else {
        return Err(not_ready(&job));
    };
    let field = |key: &str| report.get(key);
    let (blob, size, sha256) = if json {
        (field("jsonBlob"), field("jsonSize"), None)
    } else {
        (field("blob"), field("size"), field("sha256"))
    };
    let blob = blob
        .and_then(|b| b.as_str())
        .map(str::to_string)
        .ok_or_else(|| ApiError::Internal("the analysis's result names no report".into()))?;
    if job.blob_deleted {
        return Err(gone(job.id));
    }
    let file = super::files::Served {
        blob,
        filename: format!("analysis-{}.{}", job.id, if json { "json" } else { "xlsx" }),
        content_type: if json {
            "application/json"
        } else {
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        },
        size: size.and_then(|s| s.as_u64()).unwrap_or(0),
        sha256: sha256.and_then(|s| s.as_str()).map(str::to_string),
    };
    let id = job.id;
    super::files::serve(state, file, headers, || gone(id)).await
}

fn gone(id: i64) -> ApiError {
    ApiError::Conflict {
        code: "report_gone",
        message: format!("the files of analysis {id} were removed (retention)"),
        job: Some(id),
    }
}

/// `POST /api/v1/import/{jobId}/run`
#[utoipa::path(post, path = "/api/v1/import/{id}/run", operation_id = "runAnalysedImport", tag = "jobs",
    summary = "Import the file of a completed analysis",
    description = "Creates the real import of the analysed file with the same mode, options and mapping, without uploading it again; its status has `analysisOf`. Only the analysis's creator or an admin may.",
    params(("id" = String, Path, description = "The analysis job's id", example = "1")),
    responses(
        (status = 202, description = "The import job was created", body = Said<Accepted>),
        (status = 403, description = "`forbidden`: neither the analysis's creator nor an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job (or another organisation's)", body = ErrorBody),
        (status = 409, description = "`not_analysis`, `not_ready` (the analysis has not completed), `file_gone` (retention removed the file), `duplicate_upload` (the file is already importing)", body = ErrorBody),
    ))]
pub async fn run(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = load_job(&state, &caller, parse_id(&id)?).await?;
    super::control::permitted(&caller, &job)?;
    if job.kind != JobKind::Analysis {
        return Err(not_analysis(job.id));
    }
    if job.status != JobStatus::Completed {
        return Err(not_ready(&job));
    }
    if job.blob_deleted {
        return Err(ApiError::Conflict {
            code: "file_gone",
            message: format!(
                "the file of analysis {} was removed (retention); upload it again",
                job.id
            ),
            job: Some(job.id),
        });
    }
    let new_job = NewJob {
        dataset: job.dataset.clone(),
        mode: job.mode,
        filename: job.filename.clone(),
        // The analysis's stored upload: retention and the sweeps keep a file while any job
        // that has not had its file removed names it.
        blob: job.blob.clone(),
        file_size: job.file_size,
        sha256: job.sha256.clone(),
        format: job.format,
        options: job.options.clone(),
        header: job.header.clone(),
        mapping: job.mapping.clone(),
        created_by: Some(caller.token_id),
        org_id: caller.org_id,
        user_id: Some(caller.user_id),
        idempotency_key: None,
        retry_of: None,
        priority: job.priority,
        kind: JobKind::Import,
        params: None,
        analysis_of: Some(job.id),
    };
    let audit = caller.audit(
        "run",
        Some(format!("job:{}", job.id)),
        Some(format!("analysis {}", job.id)),
    );
    let inserted = state
        .jobs
        .store_call(move |s| s.job_insert(&new_job, None, Some(&audit)))
        .await?;
    let new_id = super::upload::created_or_answer(&state, inserted).await?;
    state.jobs.wake.notify_one();
    Ok(super::upload::accepted(&job.dataset, new_id))
}
