//! Operating on jobs: cancel, pause, resume, retry, delete, and the stats of seed 003.
//!
//! Only the job's creator or an admin of its organisation may act on a job (403 otherwise); a
//! job of another organisation answers 404 like a missing one. Every action is audited.
//!
//! Every action takes effect in the store at once; a worker running the job notices at its next
//! batch commit (which the store refuses) or heartbeat, so the job stops within one batch.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};

use super::AppState;
use super::auth::Caller;
use super::dto::{Data, ErrorBody, JobView, Message, Said};
use super::error::ApiError;
use super::jobs::{job_not_found, load_job, parse_id};
use crate::store::{Control, Controlled, Job, Stats};

/// The actions of `POST /api/v1/import/{jobId}/{action}` (for the document).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum JobAction {
    Cancel,
    Pause,
    Resume,
    Retry,
}

/// `POST /api/v1/import/{jobId}/{cancel|pause|resume|retry}` (retry takes `?fromStart=true`).
#[utoipa::path(post, path = "/api/v1/import/{id}/{action}", operation_id = "controlJob", tag = "jobs",
    summary = "Cancel, pause, resume or retry a job",
    description = "Only the job's creator or an admin may act on it. Retry with `fromStart=true` starts a new job from the first row; otherwise it continues from the last committed batch.",
    params(
        ("id" = String, Path, description = "The job id", example = "1"),
        ("action" = JobAction, Path, description = "What to do"),
        ("fromStart" = Option<bool>, Query, description = "retry: start again as a new job"),
    ),
    responses(
        (status = 200, description = "Done; the job as it is now (for a retry from the start, the new job)", body = Said<JobView>),
        (status = 403, description = "`forbidden`: neither the job's creator nor an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job, or no such action", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the job's status does not allow it (with `jobId`)", body = ErrorBody),
    ))]
pub async fn act(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Said<JobView>>, ApiError> {
    let id = parse_id(&id)?;
    let job = load_job(&state, &caller, id).await?;
    let from_start = params
        .get("fromStart")
        .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "yes"));
    let control = match action.as_str() {
        "cancel" => Control::Cancel,
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "retry" => Control::Retry { from_start },
        other => {
            return Err(ApiError::NotFound(format!(
                "no action `{other}`: use cancel, pause, resume or retry"
            )));
        }
    };
    permitted(&caller, &job)?;
    let ctx = &state.jobs;
    let audit = caller.audit(&action, Some(format!("job:{id}")), None);
    let target = match ctx
        .store_call(move |s| s.job_control(id, control, Some(&audit)))
        .await?
    {
        Controlled::Done(target) => target,
        Controlled::NotFound => return Err(job_not_found()),
        Controlled::Conflict(message) => {
            return Err(ApiError::Conflict {
                code: "invalid_state",
                message,
                job: Some(id),
            });
        }
    };
    if matches!(control, Control::Resume | Control::Retry { .. }) {
        ctx.wake.notify_one();
    }
    let job = load_job(&state, &caller, target).await?;
    let message = match control {
        Control::Cancel => "cancelled; batches already committed stay written".to_string(),
        Control::Pause => "paused; resume continues from the last committed batch".to_string(),
        Control::Resume => "resumed".to_string(),
        Control::Retry { from_start: true } => format!("retrying from the start as job {target}"),
        Control::Retry { from_start: false } => {
            "retrying from the last committed batch".to_string()
        }
    };
    Ok(Json(Said {
        success: true,
        message,
        data: JobView::from(&job),
    }))
}

/// 403 unless the caller started the job or is an admin of its organisation.
pub(super) fn permitted(caller: &Caller, job: &Job) -> Result<(), ApiError> {
    if caller.controls(job) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the user who started this job or an admin may do this".into(),
        ))
    }
}

/// `DELETE /api/v1/import/{jobId}`: the job, its row errors and its file. A running job stops
/// at its next batch boundary.
#[utoipa::path(delete, path = "/api/v1/import/{id}", operation_id = "deleteJob", tag = "jobs",
    summary = "Delete a job, its row errors and its file",
    params(("id" = String, Path, description = "The job id", example = "1")),
    responses(
        (status = 200, description = "Deleted", body = Message),
        (status = 403, description = "`forbidden`: neither the job's creator nor an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    let id = parse_id(&id)?;
    let job = load_job(&state, &caller, id).await?;
    permitted(&caller, &job)?;
    let ctx = &state.jobs;
    let audit = caller.audit(
        "delete",
        Some(format!("job:{id}")),
        Some(format!("{} into {}", job.filename, job.dataset)),
    );
    match ctx
        .store_call(move |s| s.job_delete(id, Some(&audit)))
        .await?
    {
        None => Err(job_not_found()),
        Some(names) => {
            let blobs = ctx.blobs.clone();
            let _ = tokio::task::spawn_blocking(move || names.iter().for_each(|b| blobs.remove(b)))
                .await;
            Ok(Json(Message::ok(format!("job {id} deleted"))))
        }
    }
}

/// `GET /api/v1/import/stats`
#[utoipa::path(get, path = "/api/v1/import/stats", operation_id = "getStats", tag = "jobs",
    summary = "Figures over the organisation's jobs (seed 003's getStats, extended)",
    responses((status = 200, description = "The figures", body = Data<Stats>)))]
pub async fn stats(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Data<Stats>>, ApiError> {
    let org = caller.org_id;
    let stats = state
        .jobs
        .store_call(move |s| s.job_stats(Some(org)))
        .await?;
    Ok(Json(Data::ok(stats)))
}
