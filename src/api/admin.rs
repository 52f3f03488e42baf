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

use super::AppState;
use super::auth::{self, Caller};
use super::dto::{Data, ErrorBody, Message, TokenCreated, Tokens, UserCreated, Users};
use super::error::ApiError;
use crate::store::Role;

/// `POST /api/v1/admin/users`
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "ada", "role": "member"}))]
pub struct NewUser {
    name: String,
    /// `admin` or `member`.
    role: String,
}

/// `POST /api/v1/admin/tokens`
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"userId": 1, "expires": "30d", "label": "nightly sync"}))]
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
#[utoipa::path(get, path = "/api/v1/admin/users", operation_id = "listUsers", tag = "admin",
    summary = "The organisation's users (admins)",
    responses(
        (status = 200, description = "The users", body = Data<Users>),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ))]
pub async fn user_list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Data<Users>>, ApiError> {
    caller.require_admin()?;
    let org = caller.org_id;
    let users = state
        .jobs
        .store_call(move |s| s.user_list(Some(org)))
        .await?;
    Ok(Json(Data::ok(Users { users })))
}

/// `GET /api/v1/admin/tokens`: the tokens of the admin's organisation, newest first, with
/// their user, label, expiry, last use and revocation — never the token itself.
#[utoipa::path(get, path = "/api/v1/admin/tokens", operation_id = "listTokens", tag = "admin",
    summary = "The organisation's tokens, newest first, never the token itself (admins)",
    responses(
        (status = 200, description = "The tokens", body = Data<Tokens>),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ))]
pub async fn token_list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Data<Tokens>>, ApiError> {
    caller.require_admin()?;
    let org = caller.org_id;
    let tokens = state
        .jobs
        .store_call(move |s| s.token_list(Some(org)))
        .await?;
    Ok(Json(Data::ok(Tokens { tokens })))
}

/// `POST /api/v1/admin/users {name, role}`: a user in the admin's organisation.
#[utoipa::path(post, path = "/api/v1/admin/users", operation_id = "createUser", tag = "admin",
    summary = "Create a user in the organisation (admins)",
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = Data<UserCreated>),
        (status = 400, description = "`invalid_body`, `invalid_name`, `invalid_role`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 409, description = "`user_exists`: the organisation has a user of that name", body = ErrorBody),
    ))]
pub async fn user_create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    payload: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Data<UserCreated>>), ApiError> {
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
        Json(Data::ok(UserCreated { id, name, role })),
    ))
}

/// `POST /api/v1/admin/tokens {userId, expires?, label?}`: a token for a user of the admin's
/// organisation; the answer is the only time the token is shown.
#[utoipa::path(post, path = "/api/v1/admin/tokens", operation_id = "createToken", tag = "admin",
    summary = "Create a token for a user of the organisation (admins); shown only in this answer",
    request_body = NewToken,
    responses(
        (status = 201, description = "Created", body = Data<TokenCreated>),
        (status = 400, description = "`invalid_body`, `invalid_expires`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such user in the organisation", body = ErrorBody),
    ))]
pub async fn token_create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    payload: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Data<TokenCreated>>), ApiError> {
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
        Json(Data::ok(TokenCreated {
            id,
            user_id,
            token,
            expires_at,
        })),
    ))
}

/// `DELETE /api/v1/admin/tokens/{id}`: revokes a token of the admin's organisation.
#[utoipa::path(delete, path = "/api/v1/admin/tokens/{id}", operation_id = "revokeToken", tag = "admin",
    summary = "Revoke a token of the organisation (admins)",
    params(("id" = String, Path, description = "The token id")),
    responses(
        (status = 200, description = "Revoked", body = Message),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such token", body = ErrorBody),
    ))]
pub async fn token_revoke(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
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
    Ok(Json(Message::ok(format!("token {id} revoked"))))
}
