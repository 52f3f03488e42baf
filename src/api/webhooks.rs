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
use serde_json::{Value as JsonValue, json};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::store::Webhook;
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
            WebhookError::TlsUnsupported => "unsupported_url",
            WebhookError::UnknownEvent(_) => "unknown_event",
        };
        ApiError::bad(code, e.to_string())
    }
}

#[derive(Deserialize)]
struct NewWebhook {
    url: String,
    #[serde(default)]
    events: Vec<String>,
}

fn webhook_json(h: &Webhook) -> JsonValue {
    json!({
        "id": h.id,
        "url": h.url,
        "events": h.events,
        "createdAt": h.created_at,
        "deliveriesUrl": format!("/api/v1/webhooks/{}/deliveries", h.id),
    })
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
    let mut data = webhook_json(&hook);
    data["secret"] = json!(secret);
    Ok((
        StatusCode::CREATED,
        Json(json!({"success": true, "data": data})),
    )
        .into_response())
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
pub async fn list(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<JsonValue>, ApiError> {
    let hooks = org_webhooks(&state, &caller).await?;
    Ok(Json(json!({
        "success": true,
        "data": {"webhooks": hooks.iter().map(webhook_json).collect::<Vec<_>>()},
    })))
}

/// `DELETE /api/v1/webhooks/{id}`
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<JsonValue>, ApiError> {
    let id = parse_webhook_id(&id)?;
    if !org_webhooks(&state, &caller)
        .await?
        .iter()
        .any(|h| h.id == id)
        || !state.jobs.store_call(move |s| s.webhook_delete(id)).await?
    {
        return Err(webhook_not_found());
    }
    Ok(Json(
        json!({"success": true, "message": format!("webhook {id} deleted")}),
    ))
}

/// `GET /api/v1/webhooks/{id}/deliveries?limit=&offset=`: newest first, every attempt listed.
pub async fn deliveries(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<JsonValue>, ApiError> {
    let id = parse_webhook_id(&id)?;
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        params.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                ApiError::bad(
                    "invalid_parameter",
                    format!("`{name}` must be a whole number ≥ 0"),
                )
            })
        })
    };
    let (limit, offset) = (number("limit", 50)?.min(1000), number("offset", 0)?);
    let hooks = org_webhooks(&state, &caller).await?;
    if !hooks.iter().any(|h| h.id == id) {
        return Err(webhook_not_found());
    }
    let (list, total) = state
        .jobs
        .store_call(move |s| s.delivery_list(id, limit, offset))
        .await?;
    Ok(Json(json!({
        "success": true,
        "data": {"deliveries": list, "total": total, "limit": limit, "offset": offset},
    })))
}
