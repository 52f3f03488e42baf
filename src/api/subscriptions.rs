//! A user's e-mail subscriptions: `GET/POST /api/v1/me/subscriptions`,
//! `DELETE /api/v1/me/subscriptions/{id}` and the e-mails they caused,
//! `GET /api/v1/me/emails`.
//!
//! Any user subscribes an address to the end of the imports they start (`completed`,
//! `failed`); an admin may widen that to every import of the organisation (`scope:
//! "organisation"`) and subscribe to sources' runs parked as `needs_mapping`. The e-mails are
//! planned and sent by `sources::email` with the sources' own.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::dto::{Data, Emails, ErrorBody, Message, Subscriptions};
use super::error::ApiError;
use crate::store::{EmailsOf, NewSubscription, Subscription, check_events};

/// `POST /api/v1/me/subscriptions`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Where to send the e-mails.
    #[schema(example = "ops@example.com")]
    pub address: String,
    /// Of `completed`, `failed`, `needs_mapping` (admins); default `completed` and `failed`.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// `mine` (default: the imports this user starts) or `organisation` (admins: every import
    /// of the organisation).
    #[serde(default)]
    pub scope: Option<String>,
}

impl SubscriptionSpec {
    /// The subscription to store for `caller`, or why not.
    fn check(self, caller: &Caller) -> Result<NewSubscription, ApiError> {
        let address = self.address.trim().to_string();
        if !crate::sources::email::address_ok(&address) {
            return Err(ApiError::bad(
                "invalid_address",
                format!("`{address}` is not an e-mail address"),
            ));
        }
        let mut events = self
            .events
            .unwrap_or_else(|| vec!["completed".into(), "failed".into()]);
        events.sort();
        events.dedup();
        check_events(&events).map_err(|m| ApiError::bad("invalid_events", m))?;
        let scope = self.scope.unwrap_or_else(|| "mine".into());
        if scope != "mine" && scope != "organisation" {
            return Err(ApiError::bad(
                "invalid_scope",
                format!("`scope` is `mine` or `organisation`, not `{scope}`"),
            ));
        }
        if (scope == "organisation" || events.iter().any(|e| e == "needs_mapping"))
            && !caller.is_admin()
        {
            return Err(ApiError::Forbidden(
                "only an admin may subscribe to the whole organisation's imports or to sources' \
                 `needs_mapping`"
                    .into(),
            ));
        }
        Ok(NewSubscription {
            org_id: caller.org_id,
            user_id: caller.user_id,
            address,
            events,
            scope,
        })
    }
}

/// `GET /api/v1/me/subscriptions`
#[utoipa::path(get, path = "/api/v1/me/subscriptions", operation_id = "listSubscriptions", tag = "notifications",
    summary = "Your e-mail subscriptions",
    responses(
        (status = 200, description = "The caller's subscriptions, oldest first", body = Data<Subscriptions>),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Data<Subscriptions>>, ApiError> {
    let user = caller.user_id;
    let subscriptions = state
        .jobs
        .store_call(move |s| s.subscription_list(user))
        .await?;
    Ok(Json(Data::ok(Subscriptions { subscriptions })))
}

/// `POST /api/v1/me/subscriptions`
#[utoipa::path(post, path = "/api/v1/me/subscriptions", operation_id = "createSubscription", tag = "notifications",
    summary = "Subscribe an address to the end of your imports (or, admins, the organisation's, and sources' needs_mapping)",
    request_body = SubscriptionSpec,
    responses(
        (status = 201, description = "Subscribed", body = Data<Subscription>),
        (status = 400, description = "`invalid_body`, `invalid_address`, `invalid_events`, `invalid_scope`", body = ErrorBody),
        (status = 403, description = "`forbidden`: `scope: organisation` or `needs_mapping` by a member", body = ErrorBody),
        (status = 409, description = "`subscription_exists`: you have a subscription for this address", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec: SubscriptionSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            "invalid_body",
            format!(
                "send JSON {{\"address\", \"events\": [\"completed\", \"failed\"], \"scope\": \"mine\"}}: {e}"
            ),
        )
    })?;
    let new = spec.check(&caller)?;
    let address = new.address.clone();
    match state
        .jobs
        .store_call(move |s| s.subscription_insert(&new))
        .await?
    {
        Some(saved) => Ok((StatusCode::CREATED, Json(Data::ok(saved))).into_response()),
        None => Err(ApiError::Conflict {
            code: "subscription_exists",
            message: format!(
                "you are subscribed with `{address}` already; delete that subscription to change it"
            ),
            job: None,
        }),
    }
}

/// `DELETE /api/v1/me/subscriptions/{id}`
#[utoipa::path(delete, path = "/api/v1/me/subscriptions/{id}", operation_id = "deleteSubscription", tag = "notifications",
    summary = "Unsubscribe (its e-mails not sent yet are dropped; its sent ones leave the list)",
    params(("id" = String, Path, description = "The subscription id", example = "1")),
    responses(
        (status = 200, description = "Deleted", body = Message),
        (status = 404, description = "`not_found`: you have no such subscription", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Message>, ApiError> {
    let not_found = || ApiError::NotFound("no such subscription".into());
    let id = id.parse::<i64>().map_err(|_| not_found())?;
    let user = caller.user_id;
    if state
        .jobs
        .store_call(move |s| s.subscription_delete(user, id))
        .await?
    {
        Ok(Json(Message::ok("unsubscribed")))
    } else {
        Err(not_found())
    }
}

/// `GET /api/v1/me/emails?limit=&offset=`
#[utoipa::path(get, path = "/api/v1/me/emails", operation_id = "listMyEmails", tag = "notifications",
    summary = "The e-mails your subscriptions caused, newest first: state, attempts, the last error",
    params(
        ("limit" = Option<u64>, Query, description = "Page size (default 50, at most 1000)"),
        ("offset" = Option<u64>, Query, description = "E-mails skipped"),
    ),
    responses(
        (status = 200, description = "A page of e-mails", body = Data<Emails>),
        (status = 400, description = "`invalid_parameter`: a limit or offset that is not a number", body = ErrorBody),
    ))]
pub async fn emails(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Data<Emails>>, ApiError> {
    super::sources::email_page(&state, EmailsOf::User(caller.user_id), &params).await
}
