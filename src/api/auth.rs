//! API tokens: random, shown once, stored as SHA-256 hashes, sent as `Authorization: Bearer`
//! or as a `token` cookie (as in the seeds).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;

/// Who is calling: attached to every authenticated request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub token_id: i64,
}

pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token: `slc_` and 64 hex digits.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system provides randomness");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("slc_{hex}")
}

fn token_from(req: &Request) -> Option<String> {
    let headers = req.headers();
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix("token=")
                .map(|t| t.trim().to_string())
        })
}

/// Middleware: rejects requests without a live token with 401.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = token_from(&req)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let hash = hash_token(&token);
    let id = state
        .jobs
        .store_call(move |s| s.token_find(&hash))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    req.extensions_mut().insert(Caller { token_id: id });
    Ok(next.run(req).await)
}
