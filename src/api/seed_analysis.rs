//! Seed 003's analysis contract, so that its documented client (`useJobPolling` over
//! `/api/v1/analysis/job/{jobId}`) works unchanged against sluice's analysis jobs:
//!
//! - `POST /api/v1/analysis/analyze-file` — the upload path of `/api/v1/import/{dataset}` with
//!   `dryRun` forced on (`upload::receive`, `Target::Analysis`);
//! - `GET /api/v1/analysis/job/{jobId}` — the job in the seed's three shapes;
//! - `GET /api/v1/analysis/download/{filename}` — the report workbook `analysis-<jobId>.xlsx`
//!   (or `.json`), through `analysis::report_of`.
//!
//! Organisation and creator rules are those of every job route.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::dto::{AnalysisSummary, ErrorBody};
use super::error::ApiError;
use super::jobs::{load_job, parse_id};
use super::options::param;
use super::upload::{Received, Target, receive};
use crate::store::{Job, JobKind, JobStatus};

/// `{success, jobId, status: "processing", message}`: the analysis was created.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStarted {
    pub success: bool,
    pub job_id: i64,
    /// Always `processing` (seed 003's word for a job that has not ended).
    pub status: String,
    pub message: String,
}

/// An analysis in seed 003's shapes: `processing` (with `progress` 0–100), `completed` (with
/// `downloadUrl`, `excelFile`, `summary`) or `failed` (`success: false` and `error`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisJob {
    pub success: bool,
    pub job_id: i64,
    /// `processing`, `completed` or `failed` (a cancelled analysis reads as failed).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// The report's file name, for `/api/v1/analysis/download/{filename}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excel_file: Option<String>,
    /// The dataset the file was analysed against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<AnalysisSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AnalysisFailure>,
}

#[derive(Serialize, ToSchema)]
pub struct AnalysisFailure {
    pub message: String,
    pub details: String,
}

/// The form of seed 003's upload (for the document).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AnalyzeForm {
    /// The file (CSV, XLSX, XLS, ODS).
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
    /// The dataset to classify the rows against; default: the first dataset that imports in
    /// the background, in the order of `GET /api/v1/datasets`.
    dataset: Option<String>,
    /// `all` (default) or `recommended`: both analyse every row of the file — a sample would
    /// give counts that the real import then contradicts; `recommended` is accepted so that
    /// seed 003's clients need no change.
    #[schema(rename = "filterOption")]
    filter_option: Option<String>,
}

fn report_name(job: i64) -> String {
    format!("analysis-{job}.xlsx")
}

/// `POST /api/v1/analysis/analyze-file`
#[utoipa::path(post, path = "/api/v1/analysis/analyze-file", operation_id = "analyzeFile", tag = "analysis",
    summary = "Seed 003: start an analysis (dry run) of a file",
    description = "The same upload, checks, options and limits as `POST /api/v1/import/{dataset}` with `dryRun=true`; the dataset comes from the form field `dataset` (default: the first background dataset). Poll `GET /api/v1/analysis/job/{jobId}`.",
    request_body(content = AnalyzeForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "The analysis was created", body = AnalysisStarted),
        (status = 400, description = "As for an upload (`missing_file`, `no_header`, …), and `invalid_filter_option`, `missing_dataset` (no dataset imports in the background)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dataset", body = ErrorBody),
        (status = 409, description = "`duplicate_upload`: the same file is already being analysed", body = ErrorBody),
        (status = 413, description = "`file_too_large`", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`", body = ErrorBody),
    ))]
pub async fn analyze_file(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Response, ApiError> {
    match receive(&state, &caller, query, req, Target::Analysis).await? {
        Received::Answered(response) => Ok(response),
        Received::Queued { job, .. } => {
            state.jobs.wake.notify_one();
            let body = AnalysisStarted {
                success: true,
                job_id: job,
                status: "processing".into(),
                message: "Analysis started. Use the jobId to check progress.".into(),
            };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
    }
}

/// Checks seed 003's `filterOption` (query or form): `all` or `recommended`, which both
/// analyse every row (see [`AnalyzeForm`]).
pub(super) fn check_filter_option(params: &HashMap<String, String>) -> Result<(), ApiError> {
    match param(params, "filterOption").map(str::trim) {
        None | Some("" | "all" | "recommended") => Ok(()),
        Some(other) => Err(ApiError::bad(
            "invalid_filter_option",
            format!("filterOption must be all or recommended, not `{other}`"),
        )),
    }
}

/// An analysis of the caller's organisation, or 404 (an import's id is not an analysis here).
async fn load_analysis(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    let job = load_job(state, caller, parse_id(id)?).await?;
    if job.kind != JobKind::Analysis {
        return Err(ApiError::NotFound(format!(
            "job {} is not an analysis",
            job.id
        )));
    }
    Ok(job)
}

/// `GET /api/v1/analysis/job/{jobId}`
#[utoipa::path(get, path = "/api/v1/analysis/job/{jobId}", operation_id = "getAnalysisJob", tag = "analysis",
    summary = "Seed 003: an analysis's state, for polling",
    description = "`processing` (pending, running or paused) with `progress` 0–100; `completed` with `downloadUrl`, `excelFile` and `summary`; `failed` (also a cancelled analysis) with `success: false` and `error: {message, details}`. Always 200 for an analysis the caller may see.",
    params(("jobId" = String, Path, description = "The analysis job's id", example = "1")),
    responses(
        (status = 200, description = "The analysis", body = AnalysisJob),
        (status = 404, description = "`not_found`: no such analysis (or another organisation's, or not an analysis)", body = ErrorBody),
    ))]
pub async fn job(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<AnalysisJob>, ApiError> {
    let job = load_analysis(&state, &caller, &id).await?;
    let view = super::dto::JobView::from(&job);
    let mut out = AnalysisJob {
        success: true,
        job_id: job.id,
        status: "processing".into(),
        progress: None,
        message: None,
        download_url: None,
        excel_file: None,
        data_source: Some(job.dataset.clone()),
        summary: None,
        error: None,
    };
    match job.status {
        JobStatus::Completed => {
            out.status = "completed".into();
            out.message = Some("Analysis completed successfully".into());
            out.download_url = Some(format!("/api/v1/analysis/download/{}", report_name(job.id)));
            out.excel_file = Some(report_name(job.id));
            out.summary = Some(AnalysisSummary::of(&job));
        }
        JobStatus::Failed | JobStatus::Cancelled => {
            out.success = false;
            out.status = "failed".into();
            let message = if job.status == JobStatus::Cancelled {
                "Analysis cancelled".to_string()
            } else {
                "Analysis failed".to_string()
            };
            out.error = Some(AnalysisFailure {
                message,
                details: job.error.clone().unwrap_or_default(),
            });
        }
        JobStatus::Pending | JobStatus::Processing | JobStatus::Paused => {
            out.progress = Some(view.progress.percentage);
            out.message = Some(match job.status {
                JobStatus::Pending => "Analysis waiting for a worker".into(),
                JobStatus::Paused => "Analysis paused".into(),
                _ => "Analysis in progress".into(),
            });
        }
    }
    Ok(Json(out))
}

/// `GET /api/v1/analysis/download/{filename}`
#[utoipa::path(get, path = "/api/v1/analysis/download/{filename}", operation_id = "downloadAnalysis", tag = "analysis",
    summary = "Seed 003: the report workbook of a completed analysis",
    description = "`analysis-<jobId>.xlsx` as `excelFile` names it (or `analysis-<jobId>.json`: the same content as JSON), as `GET /api/v1/import/{jobId}/report` serves it.",
    params(("filename" = String, Path, description = "The report's file name", example = "analysis-1.xlsx")),
    responses(
        (status = 200, description = "The report", content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        (status = 404, description = "`not_found`: no such report (or another organisation's)", body = ErrorBody),
        (status = 409, description = "`not_ready`: the analysis has not completed; `report_gone`: retention removed it", body = ErrorBody),
    ))]
pub async fn download(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(filename): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no report named `{filename}`"));
    let rest = filename.strip_prefix("analysis-").ok_or_else(not_found)?;
    let (id, json) = match rest.rsplit_once('.') {
        Some((id, "xlsx")) => (id, false),
        Some((id, "json")) => (id, true),
        _ => return Err(not_found()),
    };
    let job = load_analysis(&state, &caller, id).await?;
    super::analysis::report_of(&state, &caller, job.id, json, &headers).await
}
