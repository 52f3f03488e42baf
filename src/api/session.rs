//! The web UI's session cookie: `POST /api/v1/session` checks a token exactly as every
//! authenticated route does and answers with `Set-Cookie: token=…; HttpOnly; SameSite=Strict`,
//! so page scripts never hold the token after sign-in and an injected script cannot read it;
//! `DELETE /api/v1/session` clears the cookie.
//!
//! The cookie is the same `token` cookie `auth` has always accepted (the token itself, not a
//! separate session id): revoking or expiring the token ends the session at once, and the cookie
//! lives no longer than the token (`Max-Age`). These routes are outside the token middleware
//! (the token comes in the body), so they check `Origin` themselves: another site's page can
//! neither sign a browser in (login CSRF) nor out.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::auth;
use super::dto::{Data, ErrorBody, Me, Session};
use super::error::ApiError;

/// `POST /api/v1/session`
#[derive(Deserialize, utoipa::ToSchema)]
pub struct SignIn {
    token: String,
}

/// Whether the request came over HTTPS (directly, or as a proxy in front says).
fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// A cookie value may hold only these bytes (RFC 6265 `cookie-octet`).
fn cookie_safe(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

fn cookie(value: &str, max_age: Option<i64>, secure: bool) -> HeaderValue {
    let mut c = format!("token={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie-safe by construction")
}

/// `POST /api/v1/session` with `{"token": "…"}` (or `Authorization: Bearer …` and no body) →
/// `200 {success, data: {userId, orgId, role, expiresAt}}` and the HttpOnly cookie.
#[utoipa::path(post, path = "/api/v1/session", operation_id = "createSession", tag = "session",
    summary = "Sign in: set the HttpOnly `token` cookie the web UI uses",
    description = "Send `{\"token\": \"…\"}`, or an `Authorization: Bearer` header and no body.",
    request_body(content = Option<SignIn>, description = "The token (or none, with the header)"),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Signed in; `Set-Cookie: token=…`", body = Data<Session>),
        (status = 400, description = "`invalid_body`, `token_not_cookie_safe`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no such token (or revoked, expired)", body = ErrorBody),
        (status = 403, description = "`cross_origin_request`: the Origin names another site", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !auth::same_origin(&headers) {
        return Err(ApiError::CrossOrigin);
    }
    let token = if body.iter().all(u8::is_ascii_whitespace) {
        auth::bearer(&headers).ok_or(ApiError::Unauthorized)?
    } else {
        serde_json::from_slice::<SignIn>(&body)
            .map_err(|e| {
                ApiError::bad(
                    "invalid_body",
                    format!(
                        "send JSON {{\"token\": \"…\"}} or an `Authorization: Bearer` header: {e}"
                    ),
                )
            })?
            .token
            .trim()
            .to_string()
    };
    // Checked before the token is looked up, so the answer says nothing about whether it exists.
    if !token.is_empty() && !cookie_safe(&token) {
        return Err(ApiError::bad(
            "token_not_cookie_safe",
            "this token has characters a cookie cannot hold; send it as `Authorization: Bearer` instead",
        ));
    }
    let principal = auth::authenticate(&state, &token).await?;
    let max_age = principal
        .expires_at
        .map(|at| (at - chrono::Utc::now()).num_seconds().max(0));
    let mut res = Json(Data::ok(Session {
        user_id: principal.user_id,
        org_id: principal.org_id,
        role: principal.role,
        expires_at: principal.expires_at,
    }))
    .into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&token, max_age, secure(&headers)),
    );
    Ok(res)
}

/// `DELETE /api/v1/session` → `204` and the cookie cleared (`Max-Age=0`). Needs no token: it
/// only ever removes the caller's own cookie. The token itself stays valid (revoke it with
/// `DELETE /api/v1/admin/tokens/{id}` or `sluice token revoke`).
#[utoipa::path(delete, path = "/api/v1/session", operation_id = "deleteSession", tag = "session",
    summary = "Sign out: clear the cookie (the token stays valid)",
    security(()),
    responses(
        (status = 204, description = "The cookie is cleared"),
        (status = 403, description = "`cross_origin_request`: the Origin names another site", body = ErrorBody),
    ))]
pub async fn delete(headers: HeaderMap) -> Result<Response, ApiError> {
    if !auth::same_origin(&headers) {
        return Err(ApiError::CrossOrigin);
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, cookie("", Some(0), secure(&headers)));
    Ok(res)
}

/// `GET /api/v1/me`: who the caller is — user, organisation and role — for clients and the
/// UI's header (behind the token middleware like every API route).
#[utoipa::path(get, path = "/api/v1/me", operation_id = "getMe", tag = "session",
    summary = "Who the caller is: user, organisation and role",
    responses((status = 200, description = "The caller", body = Data<Me>)))]
pub async fn me(
    State(state): State<Arc<AppState>>,
    axum::extract::Extension(caller): axum::extract::Extension<auth::Caller>,
) -> Result<Json<Data<Me>>, ApiError> {
    let (user_id, org_id) = (caller.user_id, caller.org_id);
    let (user, org) = state
        .jobs
        .store_call(move |s| {
            let user = s.user_get(user_id)?;
            let org = s.org_list()?.into_iter().find(|o| o.id == org_id);
            Ok((user, org))
        })
        .await?;
    Ok(Json(Data::ok(Me {
        user_id,
        user_name: user.map(|u| u.name),
        org_id,
        org_name: org.map(|o| o.name),
        role: caller.role,
        token_id: caller.token_id,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_strict_and_bounded() {
        assert_eq!(
            cookie("slc_ab", Some(60), true),
            "token=slc_ab; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert_eq!(
            cookie("t", None, false),
            "token=t; Path=/; HttpOnly; SameSite=Strict"
        );
        assert!(cookie_safe("slc_0123abcdef"));
        assert!(cookie_safe("test-admin-token"));
        for bad in ["", "a b", "a;b", "a,b", "a\"b", "a\\b", "é"] {
            assert!(!cookie_safe(bad), "{bad}");
        }
    }
}
