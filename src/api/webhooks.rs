//! Webhook subscriptions and their delivery log: `POST/GET /api/v1/webhooks`,
//! `DELETE /api/v1/webhooks/{id}`, `GET /api/v1/webhooks/{id}/deliveries`.
//!
//! The signing secret is returned once, when the webhook is created.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::dto::{Data, Deliveries, ErrorBody, Message, WebhookView, Webhooks};
use super::error::ApiError;
use super::options::number;
use crate::webhooks::guard::DestinationError;
use crate::webhooks::{self, WebhookError};

impl From<DestinationError> for ApiError {
    fn from(e: DestinationError) -> Self {
        ApiError::bad("webhook_url_not_allowed", e.to_string())
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        let code = match e {
            WebhookError::InvalidUrl(_) => "invalid_url",
            WebhookError::UnknownEvent(_) => "unknown_event",
        };
        ApiError::bad(code, e.to_string())
    }
}

/// `POST /api/v1/webhooks`
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"url": "https://example.com/hooks/sluice", "events": ["job.completed", "job.failed"]}))]
pub struct NewWebhook {
    url: String,
    #[serde(default)]
    events: Vec<String>,
}

fn parse_webhook_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(webhook_not_found)
}

/// The answer for a webhook the caller cannot see: a missing one and another organisation's are
/// told apart by nothing, not even the id echoed back.
fn webhook_not_found() -> ApiError {
    ApiError::NotFound("no such webhook".into())
}

/// `POST /api/v1/webhooks {url, events}` → 201 with the signing secret (shown only here).
#[utoipa::path(post, path = "/api/v1/webhooks", operation_id = "createWebhook", tag = "webhooks",
    summary = "Register a webhook (admins); the answer shows its signing secret once",
    request_body = NewWebhook,
    responses(
        (status = 201, description = "Registered", body = Data<WebhookView>),
        (status = 400, description = "`invalid_body`, `invalid_url`, `unknown_event`, `webhook_url_not_allowed` (a private or loopback address)", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let req: NewWebhook = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            "invalid_body",
            format!("send JSON {{\"url\": \"http://…\", \"events\": [\"job.completed\", …]}}: {e}"),
        )
    })?;
    let events = webhooks::check(&req.url, &req.events)?;
    if !state.webhook_allow_private {
        let url = reqwest::Url::parse(&req.url)
            .map_err(|e| ApiError::from(WebhookError::InvalidUrl(e.to_string())))?;
        webhooks::guard::check_destination(&url).await?;
    }
    let secret = webhooks::new_secret();
    let (url, s) = (req.url.clone(), secret.clone());
    let hook = state
        .jobs
        .store_call(move |st| {
            st.webhook_insert(&url, &events, &s, Some(caller.token_id), caller.org_id)
        })
        .await?;
    let mut data = WebhookView::from(&hook);
    data.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(Data::ok(data))).into_response())
}

/// The webhooks of the caller's organisation (a webhook belongs to the organisation of the
/// token that registered it, recorded with it). Admins only.
async fn org_webhooks(
    state: &AppState,
    caller: &Caller,
) -> Result<Vec<crate::store::Webhook>, ApiError> {
    caller.require_admin()?;
    let org = caller.org_id;
    Ok(state
        .jobs
        .store_call(move |s| s.webhook_list(Some(org)))
        .await?)
}

/// `GET /api/v1/webhooks`
#[utoipa::path(get, path = "/api/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks",
    summary = "The organisation's webhooks (admins)",
    responses(
        (status = 200, description = "The webhooks", body = Data<Webhooks>),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Data<Webhooks>>, ApiError> {
    let hooks = org_webhooks(&state, &caller).await?;
    Ok(Json(Data::ok(Webhooks {
        webhooks: hooks.iter().map(WebhookView::from).collect(),
    })))
}

/// `DELETE /api/v1/webhooks/{id}`
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks",
    summary = "Remove a webhook (admins)",
    params(("id" = String, Path, description = "The webhook id", example = "1")),
    responses(
        (status = 200, description = "Removed", body = Message),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such webhook", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Message>, ApiError> {
    let id = parse_webhook_id(&id)?;
    if !org_webhooks(&state, &caller)
        .await?
        .iter()
        .any(|h| h.id == id)
        || !state.jobs.store_call(move |s| s.webhook_delete(id)).await?
    {
        return Err(webhook_not_found());
    }
    Ok(Json(Message::ok(format!("webhook {id} deleted"))))
}

/// `GET /api/v1/webhooks/{id}/deliveries?limit=&offset=`: newest first, every attempt listed.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", operation_id = "listDeliveries", tag = "webhooks",
    summary = "A webhook's deliveries, newest first, every attempt listed (admins)",
    params(
        ("id" = String, Path, description = "The webhook id", example = "1"),
        ("limit" = Option<u64>, Query, description = "Page size (default 50, at most 1000)"),
        ("offset" = Option<u64>, Query, description = "Deliveries skipped"),
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = Data<Deliveries>),
        (status = 400, description = "`invalid_parameter`: a limit or offset that is not a number", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such webhook", body = ErrorBody),
    ))]
pub async fn deliveries(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Data<Deliveries>>, ApiError> {
    let id = parse_webhook_id(&id)?;
    let limit = number(&params, "limit", 50)?.min(1000);
    let offset = number(&params, "offset", 0)?;
    let hooks = org_webhooks(&state, &caller).await?;
    if !hooks.iter().any(|h| h.id == id) {
        return Err(webhook_not_found());
    }
    let (list, total) = state
        .jobs
        .store_call(move |s| s.delivery_list(id, limit, offset))
        .await?;
    Ok(Json(Data::ok(Deliveries {
        deliveries: list,
        total,
        limit,
        offset,
    })))
}
