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
use serde_json::{Value as JsonValue, json};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::jobs::{job_json, job_not_found, load_job, parse_id};
use crate::store::{Control, Controlled, Job};

/// `POST /api/v1/import/{jobId}/{cancel|pause|resume|retry}` (retry takes `?fromStart=true`).
pub async fn act(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<JsonValue>, ApiError> {
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
    Ok(Json(
        json!({"success": true, "message": message, "data": job_json(&job)}),
    ))
}

/// 403 unless the caller started the job or is an admin of its organisation.
fn permitted(caller: &Caller, job: &Job) -> Result<(), ApiError> {
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
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
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
            Ok(Json(
                json!({"success": true, "message": format!("job {id} deleted")}),
            ))
        }
    }
}

/// `GET /api/v1/import/stats`
pub async fn stats(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<JsonValue>, ApiError> {
    let org = caller.org_id;
    let stats = state
        .jobs
        .store_call(move |s| s.job_stats(Some(org)))
        .await?;
    Ok(Json(json!({"success": true, "data": stats})))
}
