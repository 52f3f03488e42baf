//! Scheduled sources (admins of the organisation): `POST/GET /api/v1/sources`,
//! `GET/PATCH/DELETE /api/v1/sources/{id}`, `GET /api/v1/sources/{id}/runs` and
//! `POST /api/v1/sources/{id}/run`.
//!
//! The settings are checked by `crate::sources` (one rule set for create and update); secrets
//! (header values) are written and never answered. Another organisation's source answers
//! exactly like a missing one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::AppState;
use super::auth::Caller;
use super::dto::{Data, Emails, ErrorBody, Message, SourceRuns, SourceView, Sources};
use super::error::ApiError;
use super::options::number;
use crate::sources::run::{Trigger, execute, manual_key, start};
use crate::sources::{SourceKind, SourceSpec, SpecError};
use crate::store::{EmailsOf, RunStart, Source, SourceRun, SourceSaved};

/// How long `POST …/run` waits for the run to end before answering with it in progress.
const RUN_WAIT: Duration = Duration::from_secs(10);

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::bad(e.code, e.message)
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("no such source".into())
}

fn name_taken(name: &str) -> ApiError {
    ApiError::Conflict {
        code: "source_exists",
        message: format!("the organisation already has a source named `{name}`"),
        job: None,
    }
}

fn parse_spec(value: serde_json::Value) -> Result<SourceSpec, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::bad(
            "invalid_body",
            format!(
                "send JSON {{\"name\", \"dataset\", \"kind\": \"directory\"|\"url\", \"schedule\": {{\"every\": \"10m\"}}, …}}: {e}"
            ),
        )
    })
}

fn json_object(body: &Bytes) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("invalid_body", "send a JSON object")),
        Err(e) => Err(ApiError::bad("invalid_body", format!("not JSON: {e}"))),
    }
}

/// Checks the spec, and a URL source's destination against the SSRF guard.
async fn checked(state: &AppState, spec: &SourceSpec) -> Result<crate::sources::Checked, ApiError> {
    let checked = spec.check(&state.jobs.datasets, &state.sources)?;
    let destination = match spec.kind {
        SourceKind::Url => checked.config.url.clone(),
        SourceKind::Sftp => checked.config.host.as_deref().map(|h| {
            let h = if h.contains(':') && !h.starts_with('[') {
                format!("[{h}]")
            } else {
                h.to_string()
            };
            format!("http://{h}:{}/", checked.config.port.unwrap_or(22))
        }),
        SourceKind::Directory => None,
    };
    if !state.sources.allow_private
        && let Some(url) = destination
        && let Ok(url) = reqwest::Url::parse(&url)
    {
        crate::webhooks::guard::check_destination(&url)
            .await
            .map_err(|e| {
                ApiError::bad(
                    "source_url_not_allowed",
                    e.to_string()
                        .replace(
                            "webhooks may not be delivered there",
                            "sources may not fetch from there",
                        )
                        .replace("--webhook-allow-private", "--source-allow-private"),
                )
            })?;
    }
    Ok(checked)
}

/// The organisation's source `id`, for an admin.
async fn org_source(state: &AppState, caller: &Caller, id: &str) -> Result<Source, ApiError> {
    caller.require_admin()?;
    let id = id
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(not_found)?;
    let found = state.jobs.store_call(move |s| s.source_get(id)).await?;
    found
        .filter(|s| s.org_id == caller.org_id)
        .ok_or_else(not_found)
}

/// `POST /api/v1/sources`
#[utoipa::path(post, path = "/api/v1/sources", operation_id = "createSource", tag = "sources",
    summary = "Create a source (admins): where files are fetched from, when, and how they are imported",
    request_body = SourceSpec,
    responses(
        (status = 201, description = "Created (secrets are never echoed)", body = Data<SourceView>),
        (status = 400, description = "`invalid_body`, `invalid_name`, `unknown_dataset`, `sync_dataset`, `invalid_schedule`, `invalid_mode`, `invalid_priority`, `invalid_mapping`, `invalid_delimiter`, `invalid_notify`, `invalid_source`, `invalid_host_key`, `invalid_private_key`, `source_path_not_allowed`, `invalid_url`, `invalid_header`, `source_url_not_allowed`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 409, description = "`source_exists`: the organisation has a source of that name", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let spec = parse_spec(serde_json::Value::Object(json_object(&body)?))?;
    let checked = checked(&state, &spec).await?;
    let new = spec.to_new(
        &checked,
        caller.org_id,
        Some(caller.token_id),
        Some(caller.user_id),
        Utc::now(),
    );
    match state
        .jobs
        .store_call(move |s| s.source_insert(&new))
        .await?
    {
        SourceSaved::Saved(source) => Ok((
            StatusCode::CREATED,
            Json(Data::ok(SourceView::from(source.as_ref()))),
        )
            .into_response()),
        _ => Err(name_taken(&spec.name)),
    }
}

/// `GET /api/v1/sources`
#[utoipa::path(get, path = "/api/v1/sources", operation_id = "listSources", tag = "sources",
    summary = "The organisation's sources (admins)",
    responses(
        (status = 200, description = "The sources", body = Data<Sources>),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Data<Sources>>, ApiError> {
    caller.require_admin()?;
    let org = caller.org_id;
    let sources = state
        .jobs
        .store_call(move |s| s.source_list(Some(org)))
        .await?;
    Ok(Json(Data::ok(Sources {
        sources: sources.iter().map(SourceView::from).collect(),
    })))
}

/// `GET /api/v1/sources/{id}`
#[utoipa::path(get, path = "/api/v1/sources/{id}", operation_id = "getSource", tag = "sources",
    summary = "One source (admins)",
    params(("id" = String, Path, description = "The source id", example = "1")),
    responses(
        (status = 200, description = "The source", body = Data<SourceView>),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such source", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Data<SourceView>>, ApiError> {
    let source = org_source(&state, &caller, &id).await?;
    Ok(Json(Data::ok(SourceView::from(&source))))
}

/// `PATCH /api/v1/sources/{id}`: the fields given replace the source's (a given `headers`
/// replaces all headers; `null` removes an optional field); the whole is checked again.
#[utoipa::path(patch, path = "/api/v1/sources/{id}", operation_id = "updateSource", tag = "sources",
    summary = "Change a source (admins): the fields given replace its own, then the whole is checked as on create",
    params(("id" = String, Path, description = "The source id", example = "1")),
    request_body(content = Object, description = "Any fields of `SourceSpec`", content_type = "application/json"),
    responses(
        (status = 200, description = "Changed", body = Data<SourceView>),
        (status = 400, description = "As on create", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such source", body = ErrorBody),
        (status = 409, description = "`source_exists`: another source has that name", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Json<Data<SourceView>>, ApiError> {
    let source = org_source(&state, &caller, &id).await?;
    let patch = json_object(&body)?;
    let current = SourceSpec::of(&source)
        .and_then(serde_json::to_value)
        .map_err(|e| ApiError::Internal(format!("stored source {}: {e}", source.id)))?;
    let serde_json::Value::Object(mut doc) = current else {
        return Err(ApiError::Internal("stored source is not an object".into()));
    };
    for (k, v) in patch {
        if v.is_null() {
            doc.remove(&k);
        } else {
            doc.insert(k, v);
        }
    }
    let spec = parse_spec(serde_json::Value::Object(doc))?;
    let checked = checked(&state, &spec).await?;
    let mut new = spec.to_new(
        &checked,
        source.org_id,
        source.created_by,
        source.user_id,
        Utc::now(),
    );
    if new.schedule == source.schedule && new.enabled == source.enabled {
        new.next_due_at = source.next_due_at;
    }
    let reset = new.kind != source.kind || new.config != source.config;
    let sid = source.id;
    match state
        .jobs
        .store_call(move |s| s.source_update(sid, &new, reset))
        .await?
    {
        SourceSaved::Saved(saved) => Ok(Json(Data::ok(SourceView::from(saved.as_ref())))),
        SourceSaved::NameTaken => Err(name_taken(&spec.name)),
        SourceSaved::Missing => Err(not_found()),
    }
}

/// `DELETE /api/v1/sources/{id}`
#[utoipa::path(delete, path = "/api/v1/sources/{id}", operation_id = "deleteSource", tag = "sources",
    summary = "Remove a source and its runs (admins; the jobs it created stay)",
    params(("id" = String, Path, description = "The source id", example = "1")),
    responses(
        (status = 200, description = "Removed", body = Message),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such source", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Message>, ApiError> {
    let source = org_source(&state, &caller, &id).await?;
    let sid = source.id;
    if !state.jobs.store_call(move |s| s.source_delete(sid)).await? {
        return Err(not_found());
    }
    Ok(Json(Message::ok(format!("source {sid} deleted"))))
}

/// `GET /api/v1/sources/{id}/runs?limit=&offset=`
#[utoipa::path(get, path = "/api/v1/sources/{id}/runs", operation_id = "listSourceRuns", tag = "sources",
    summary = "A source's runs, newest first: when, the file, the outcome and why, the job started (admins)",
    params(
        ("id" = String, Path, description = "The source id", example = "1"),
        ("limit" = Option<u64>, Query, description = "Page size (default 50, at most 1000)"),
        ("offset" = Option<u64>, Query, description = "Runs skipped"),
    ),
    responses(
        (status = 200, description = "A page of runs", body = Data<SourceRuns>),
        (status = 400, description = "`invalid_parameter`: a limit or offset that is not a number", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such source", body = ErrorBody),
    ))]
pub async fn runs(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Data<SourceRuns>>, ApiError> {
    let limit = number(&params, "limit", 50)?.min(1000);
    let offset = number(&params, "offset", 0)?;
    let source = org_source(&state, &caller, &id).await?;
    let sid = source.id;
    let (runs, total) = state
        .jobs
        .store_call(move |s| s.run_list(sid, limit, offset))
        .await?;
    Ok(Json(Data::ok(SourceRuns {
        runs,
        total,
        limit,
        offset,
    })))
}

/// `POST /api/v1/sources/{id}/run`: runs the source now (a disabled one too). Answers 202 with
/// the run once it ended, or in progress (no `outcome` yet) after 10 s.
#[utoipa::path(post, path = "/api/v1/sources/{id}/run", operation_id = "runSource", tag = "sources",
    summary = "Run a source now (admins)",
    params(("id" = String, Path, description = "The source id", example = "1")),
    responses(
        (status = 202, description = "The run (its first file; further files are further runs)", body = Data<SourceRun>),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such source", body = ErrorBody),
        (status = 409, description = "`run_in_progress`: the source is running now", body = ErrorBody),
    ))]
pub async fn run(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Response, ApiError> {
    let source = org_source(&state, &caller, &id).await?;
    let run = match start(&state, &source, manual_key(), Trigger::Manual, None).await? {
        RunStart::Started(run) => *run,
        RunStart::Busy => {
            return Err(ApiError::Conflict {
                code: "run_in_progress",
                message: "the source is running now; try again when the run has ended".into(),
                job: None,
            });
        }
        RunStart::KeyTaken => return Err(ApiError::Internal("a fresh run key was taken".into())),
    };
    let run_id = run.id;
    let task = tokio::spawn(execute(state.clone(), source, run));
    let _ = tokio::time::timeout(RUN_WAIT, task).await;
    let run = state
        .jobs
        .store_call(move |s| s.run_get(run_id))
        .await?
        .ok_or_else(|| ApiError::Internal("the run vanished".into()))?;
    Ok((StatusCode::ACCEPTED, Json(Data::ok(run))).into_response())
}

/// `GET /api/v1/sources/{id}/emails?limit=&offset=`
#[utoipa::path(get, path = "/api/v1/sources/{id}/emails", operation_id = "listSourceEmails", tag = "sources",
    summary = "A source's e-mail notifications, newest first: state, attempts, the last error (admins)",
    params(
        ("id" = String, Path, description = "The source id", example = "1"),
        ("limit" = Option<u64>, Query, description = "Page size (default 50, at most 1000)"),
        ("offset" = Option<u64>, Query, description = "E-mails skipped"),
    ),
    responses(
        (status = 200, description = "A page of e-mails", body = Data<Emails>),
        (status = 400, description = "`invalid_parameter`: a limit or offset that is not a number", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such source", body = ErrorBody),
    ))]
pub async fn emails(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Data<Emails>>, ApiError> {
    let source = org_source(&state, &caller, &id).await?;
    email_page(&state, EmailsOf::Source(source.id), &params).await
}

/// A page of e-mails (`limit`, default 50 and at most 1000, and `offset` from the query): a
/// source's, or a user's subscriptions'.
pub(super) async fn email_page(
    state: &AppState,
    of: EmailsOf,
    params: &HashMap<String, String>,
) -> Result<Json<Data<Emails>>, ApiError> {
    let limit = number(params, "limit", 50)?.min(1000);
    let offset = number(params, "offset", 0)?;
    let (emails, total) = state
        .jobs
        .store_call(move |s| s.email_list(of, limit, offset))
        .await?;
    Ok(Json(Data::ok(Emails {
        emails,
        total,
        limit,
        offset,
    })))
}
