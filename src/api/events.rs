//! Server-Sent Events: `GET /api/v1/import/{id}/events` (one job, from its creation, ending with
//! its latest `done` event)
//! and `GET /api/v1/events` (every job, never ending).
//!
//! Each event's id is its `seq` in the store's job event log, so a client reconnecting with
//! `Last-Event-ID` (or `?after=`) gets exactly the events it missed, in order, the final one
//! included. A job stream whose `done` event the client already has answers 204, which tells an
//! `EventSource` to stop reconnecting. Every connection reads the store at its own pace; none can
//! hold up an import.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::dto::ErrorBody;
use super::error::ApiError;
use super::jobs::{load_job, parse_id};
use crate::events::{EventReader, event_json, event_name};
use crate::store::JobEvent;

#[derive(Deserialize)]
pub struct After {
    after: Option<String>,
}

/// The position to resume after: `Last-Event-ID`, else `?after=`.
fn resume_point(headers: &HeaderMap, query: &After) -> Result<Option<i64>, ApiError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .or(query.after.as_deref());
    raw.map(|v| {
        v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad(
                "invalid_event_id",
                "Last-Event-ID (or `after`) must be an event id from this stream",
            )
        })
    })
    .transpose()
}

fn sse_event(e: &JobEvent) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(event_name(e))
        .data(event_json(e).to_string())
}

fn keep_alive() -> KeepAlive {
    KeepAlive::new().interval(Duration::from_secs(15))
}

/// `GET /api/v1/import/{jobId}/events`
#[utoipa::path(get, path = "/api/v1/import/{id}/events", operation_id = "jobEvents", tag = "events",
    summary = "Server-Sent Events of one job, ending with its latest `done` event",
    params(
        ("id" = String, Path, description = "The job id", example = "1"),
        ("after" = Option<i64>, Query, description = "Resume after this event id (or send `Last-Event-ID`)"),
    ),
    responses(
        (status = 200, description = "The event stream: `created`, `status`, `progress`, `done`", content_type = "text/event-stream", body = String),
        (status = 204, description = "The client already has the job's final event"),
        (status = 400, description = "`invalid_event_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
    ))]
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<After>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let after = resume_point(&headers, &query)?.unwrap_or(0);
    // Another organisation's job answers exactly like a missing one.
    let job = load_job(&state, &caller, id).await?;
    if job.status.is_finished() {
        let pending = state
            .jobs
            .store_call(move |s| s.events_after(after, Some(id), 1))
            .await?;
        if pending.is_empty() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
    let reader = EventReader::new(state.jobs.clone(), after, Some(id));
    Ok(Sse::new(counted(until_done(reader)))
        .keep_alive(keep_alive())
        .into_response())
}

/// `GET /api/v1/events`: every job's events; without a resume point, from now on.
#[utoipa::path(get, path = "/api/v1/events", operation_id = "allEvents", tag = "events",
    summary = "Server-Sent Events of every job of the organisation, never ending (first a `ready` event)",
    params(("after" = Option<i64>, Query, description = "Resume after this event id (or send `Last-Event-ID`); default: from now on")),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_event_id`", body = ErrorBody),
    ))]
pub async fn all_events(
    State(state): State<Arc<AppState>>,
    Query(query): Query<After>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = match resume_point(&headers, &query)? {
        Some(after) => after,
        None => state.jobs.store_call(|s| s.events_last_seq()).await?,
    };
    let reader = EventReader::new(state.jobs.clone(), after, None);
    let ready = Event::default()
        .event("ready")
        .data(serde_json::json!({"after": after}).to_string());
    let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(ready) });
    Ok(Sse::new(counted(futures_util::StreamExt::chain(
        stream,
        forever(reader, caller.org_id),
    )))
    .keep_alive(keep_alive())
    .into_response())
}

/// The stream, counted in `sluice_sse_clients` until it ends or the client leaves (either way
/// the stream is dropped, and the count with it).
fn counted<S: Stream>(stream: S) -> impl Stream<Item = S::Item> {
    let client = crate::telemetry::SseClient::open();
    futures_util::StreamExt::map(stream, move |item| {
        let _ = &client;
        item
    })
}

/// A job's events up to and including its latest `done` event. An earlier `done` (the job was
/// cancelled or failed, then retried) does not end the stream: only one with nothing after it.
fn until_done(reader: EventReader) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next().await {
            Ok(Some(e)) => {
                let done = event_name(&e) == "done" && !reader.has_more().await.unwrap_or(false);
                Some((Ok(sse_event(&e)), (!done).then_some(reader)))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "event stream ended on a store error");
                None
            }
        }
    })
}

/// Every event of the caller's organisation's jobs, for as long as the client listens. Each
/// event carries its job's organisation, so nothing is looked up (and no transient failure can
/// hide a job for the rest of the stream).
fn forever(reader: EventReader, org: i64) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(reader, move |mut reader| async move {
        loop {
            match reader.next().await {
                Ok(Some(e)) if e.org_id == Some(org) => return Some((Ok(sse_event(&e)), reader)),
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream ended on a store error");
                    return None;
                }
            }
        }
    })
}
