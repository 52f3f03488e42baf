//! Admin routes: users and API tokens of the caller's own organisation (admins only).
//!
//! The same operations as `sluice user create|list`, `sluice token create|list|revoke`,
//! confined to the organisation of the admin's token: a user or token of another organisation
//! answers 404 like one that does not exist. Creating organisations stays on the command line.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::AppState;
use super::auth::{self, Caller};
use super::error::ApiError;
use crate::store::Role;

#[derive(Deserialize)]
pub struct NewUser {
    name: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewToken {
    user_id: i64,
    /// `90m`, `12h`, `30d`, …; none: until revoked.
    expires: Option<String>,
    label: Option<String>,
}

fn body<T>(
    payload: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    payload
        .map(|Json(v)| v)
        .map_err(|e| ApiError::bad("invalid_body", e.body_text()))
}

/// `GET /api/v1/admin/users`: the users of the admin's organisation.
pub async fn user_list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<JsonValue>, ApiError> {
    caller.require_admin()?;
    let org = caller.org_id;
    let users = state
        .jobs
        .store_call(move |s| s.user_list(Some(org)))
        .await?;
    Ok(Json(json!({"success": true, "data": {"users": users}})))
}

/// `GET /api/v1/admin/tokens`: the tokens of the admin's organisation, newest first, with
/// their user, label, expiry, last use and revocation — never the token itself.
pub async fn token_list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<JsonValue>, ApiError> {
    caller.require_admin()?;
    let org = caller.org_id;
    let tokens = state
        .jobs
        .store_call(move |s| s.token_list(Some(org)))
        .await?;
    Ok(Json(json!({"success": true, "data": {"tokens": tokens}})))
}

/// `POST /api/v1/admin/users {name, role}`: a user in the admin's organisation.
pub async fn user_create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    payload: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    caller.require_admin()?;
    let new = body(payload)?;
    let name = new.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad(
            "invalid_name",
            "a user needs a name of 1–200 bytes",
        ));
    }
    let role: Role = new
        .role
        .parse()
        .map_err(|m: String| ApiError::bad("invalid_role", m))?;
    let (org, n) = (caller.org_id, name.clone());
    let audit = caller.audit("user.create", None, Some(role.as_str().into()));
    let id = state
        .jobs
        .store_call(move |s| s.user_insert(org, &n, role, Some(&audit)))
        .await?
        .ok_or_else(|| ApiError::Conflict {
            code: "user_exists",
            message: format!("the organisation already has a user named `{name}`"),
            job: None,
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"success": true, "data": {"id": id, "name": name, "role": role}})),
    ))
}

/// `POST /api/v1/admin/tokens {userId, expires?, label?}`: a token for a user of the admin's
/// organisation; the answer is the only time the token is shown.
pub async fn token_create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    payload: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    caller.require_admin()?;
    let new = body(payload)?;
    let expires_at = new
        .expires
        .as_deref()
        .map(|text| {
            crate::duration::parse(text)
                .ok()
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| Utc::now().checked_add_signed(d))
                .ok_or_else(|| {
                    ApiError::bad(
                        "invalid_expires",
                        "expires must be a duration like 12h or 30d",
                    )
                })
        })
        .transpose()?;
    let label = new
        .label
        .unwrap_or_else(|| "created through the API".into())
        .chars()
        .take(200)
        .collect::<String>();
    let token = auth::new_token();
    let hash = auth::hash_token(&token);
    let (user_id, org) = (new.user_id, caller.org_id);
    let audit = caller.audit("token.create", None, Some(format!("for user {user_id}")));
    let id = state
        .jobs
        .store_call(move |s| match s.user_get(user_id)? {
            Some(u) if u.org_id == org => s
                .token_insert(&label, &hash, u.id, expires_at, Some(&audit))
                .map(Some),
            _ => Ok(None),
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"success": true, "data": {
            "id": id, "userId": user_id, "token": token, "expiresAt": expires_at,
        }})),
    ))
}

/// `DELETE /api/v1/admin/tokens/{id}`: revokes a token of the admin's organisation.
pub async fn token_revoke(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    caller.require_admin()?;
    let not_found = || ApiError::NotFound("no such token".into());
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let org = caller.org_id;
    let audit = caller.audit("token.revoke", None, None);
    state
        .jobs
        .store_call(move |s| s.token_revoke(id, Some(org), Some(&audit)))
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(
        json!({"success": true, "message": format!("token {id} revoked")}),
    ))
}
