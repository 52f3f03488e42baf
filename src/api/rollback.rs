//! `POST /api/v1/import/{jobId}/rollback`: undo an import's changes as a background job of
//! `kind: "rollback"` (see [`crate::rollback`]). The creator of the job or an admin; the job
//! completed, or failed or was cancelled after committing batches; once per job.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::Request;
use axum::response::Response;

use super::AppState;
use super::auth::Caller;
use super::dto::{Accepted, ErrorBody, Said};
use super::error::ApiError;
use super::jobs::{load_job, parse_id};
use super::options::{flag, json_params};
use crate::blob::BlobStore;
use crate::import::{Format, Mapping, Mode, SourceOptions};
use crate::rollback::RollbackParams;
use crate::store::rollback::RollbackInserted;
use crate::store::{JobKind, JobStatus, NewJob};

/// The largest body read for the options.
const BODY_LIMIT: usize = 16 * 1024;

fn conflict(code: &'static str, message: String, job: Option<i64>) -> ApiError {
    ApiError::Conflict { code, message, job }
}

/// `POST /api/v1/import/{jobId}/rollback`
#[utoipa::path(post, path = "/api/v1/import/{id}/rollback", operation_id = "rollbackJob", tag = "jobs",
    summary = "Undo an import's changes: a rollback job (202)",
    description = "Rows the import created are deleted, rows it updated get their previous values back, rows it deleted return (history archived as for any write). A row a later job changed is a conflict: left alone and reported as a row error of the rollback, unless `force=true`. Options as query parameters or a JSON body.",
    params(
        ("id" = String, Path, description = "The job to undo", example = "1"),
        ("force" = Option<bool>, Query, description = "Overwrite rows later jobs changed too (default false)"),
    ),
    responses(
        (status = 202, description = "The rollback job was created; its status has `rollbackOf`", body = Said<Accepted>),
        (status = 400, description = "`invalid_parameter`, `invalid_body`", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither the job's creator nor an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job (or another organisation's)", body = ErrorBody),
        (status = 409, description = "`already_rolled_back` (with the rollback's `jobId`), `not_reversible` (not an import or rollback, a replace import, or nothing committed), `not_finished` (still pending, running or paused), `ledger_expired` (its changes are no longer kept)", body = ErrorBody),
    ))]
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(mut params): Query<HashMap<String, String>>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let body = to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| ApiError::bad("invalid_body", "the body is larger than 16 KiB"))?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        params.extend(json_params(&body)?);
    }
    let force = flag(&params, "force", false)?;
    let job = load_job(&state, &caller, parse_id(&id)?).await?;
    super::control::permitted(&caller, &job)?;
    if let Some(by) = job.rolled_back_by {
        return Err(conflict(
            "already_rolled_back",
            format!("job {} is already rolled back by job {by}", job.id),
            Some(by),
        ));
    }
    if !matches!(job.kind, JobKind::Import | JobKind::Rollback) {
        return Err(conflict(
            "not_reversible",
            format!(
                "job {} is an {}: only imports and rollbacks change rows",
                job.id,
                job.kind.as_str()
            ),
            None,
        ));
    }
    if job.kind == JobKind::Import
        && job.mode == Mode::Replace
        && job.status != JobStatus::Completed
    {
        return Err(conflict(
            "not_reversible",
            "a replace import changes the table only when it completes; this one did not, so \
             there is nothing to undo"
                .into(),
            None,
        ));
    }
    match job.status {
        JobStatus::Completed => {}
        JobStatus::Failed | JobStatus::Cancelled if job.batches_done > 0 => {}
        JobStatus::Failed | JobStatus::Cancelled => {
            return Err(conflict(
                "not_reversible",
                format!("job {} committed nothing: there is nothing to undo", job.id),
                None,
            ));
        }
        other => {
            return Err(conflict(
                "not_finished",
                format!(
                    "job {} is {}: cancel it or wait for its end before rolling it back",
                    job.id,
                    other.as_str()
                ),
                Some(job.id),
            ));
        }
    }
    // Its changes must still be in the ledger (`--retain-ledger`).
    let target = job.id;
    let recorded = state
        .jobs
        .store_call(move |s| s.job_changes(target))
        .await?;
    if recorded.is_none() {
        return Err(conflict(
            "ledger_expired",
            format!(
                "the change ledger no longer holds job {}'s changes (kept for --retain-ledger), so it cannot be rolled back",
                job.id
            ),
            None,
        ));
    }
    let params = RollbackParams {
        rollback_of: job.id,
        force,
    };
    let new_job = NewJob {
        dataset: job.dataset.clone(),
        mode: Mode::default(),
        filename: format!("rollback-of-{}", job.id),
        // No file: a name of its own that is never written (retention and the sweeps find
        // nothing to remove), and a value of its own for the active-file index.
        blob: BlobStore::new_name(),
        file_size: 0,
        sha256: format!("rollback:{}", job.id),
        format: Format::Csv,
        options: SourceOptions::default(),
        header: Vec::new(),
        mapping: Mapping::default(),
        created_by: Some(caller.token_id),
        org_id: caller.org_id,
        user_id: Some(caller.user_id),
        idempotency_key: None,
        retry_of: None,
        priority: job.priority,
        kind: JobKind::Rollback,
        params: serde_json::to_value(params).ok(),
        analysis_of: None,
    };
    let audit = caller.audit(
        "rollback",
        Some(format!("job:{}", job.id)),
        Some(format!(
            "rollback of job {}{}",
            job.id,
            if force { " (force)" } else { "" }
        )),
    );
    let inserted = state
        .jobs
        .store_call(move |s| s.rollback_insert(target, &new_job, Some(&audit)))
        .await?;
    match inserted {
        RollbackInserted::Created(new_id) => {
            state.jobs.wake.notify_one();
            Ok(super::upload::accepted_as(
                &job.dataset,
                new_id,
                JobKind::Rollback,
            ))
        }
        RollbackInserted::Already(by) => Err(conflict(
            "already_rolled_back",
            format!("job {target} is already rolled back by job {by}"),
            Some(by),
        )),
    }
}
