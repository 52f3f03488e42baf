//! API tokens and who may do what: tokens are random, shown once, stored as SHA-256 hashes,
//! sent as `Authorization: Bearer` or as a `token` cookie (as in the seeds). A token speaks for
//! a user of one organisation; revoked and expired tokens answer 401.
//!
//! The policy lives here: a caller sees only its organisation's jobs ([`Caller::sees`]; any
//! other job answers exactly like a missing one), and controls a job only as its creator or as
//! an admin of its organisation ([`Caller::controls`]).
//!
//! Tokens are looked up by the SHA-256 of what the client sent, in a unique index, and the hash
//! found is then confirmed against the one computed with a constant-time comparison
//! ([`same_secret`]), so neither step has an early exit that depends on a valid token's bytes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::store::{AuditEntry, Job, OrgLimits, Principal, Role};

/// Who is calling: attached to every authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub token_id: i64,
    pub user_id: i64,
    pub org_id: i64,
    pub role: Role,
    /// The organisation's upload limits.
    pub limits: OrgLimits,
}

impl From<Principal> for Caller {
    fn from(p: Principal) -> Self {
        Self {
            token_id: p.token_id,
            user_id: p.user_id,
            org_id: p.org_id,
            role: p.role,
            limits: p.limits,
        }
    }
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the job belongs to the caller's organisation.
    pub fn sees(&self, job: &Job) -> bool {
        job.org_id == Some(self.org_id)
    }

    /// Whether the caller may cancel, pause, resume, retry or delete the job: its creator, or an
    /// admin of its organisation.
    pub fn controls(&self, job: &Job) -> bool {
        self.sees(job) && (self.is_admin() || job.user_id == Some(self.user_id))
    }

    /// Only admins manage tokens, users and webhooks, and read the audit log.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only an admin of the organisation may do this".into(),
            ))
        }
    }

    /// An audit line for an action of this caller, for the store to write with the action
    /// (`target: None`: the row the action creates).
    pub fn audit(
        &self,
        action: &str,
        target: Option<String>,
        detail: Option<String>,
    ) -> AuditEntry {
        AuditEntry {
            org_id: Some(self.org_id),
            user_id: Some(self.user_id),
            token_id: Some(self.token_id),
            action: action.to_string(),
            target,
            detail,
        }
    }
}

/// Whether two secrets are equal, in time that depends only on their lengths.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
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

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    Cookie,
}

/// The token of a request: `Authorization: Bearer` first, then the `token` cookie.
pub fn token_from(headers: &HeaderMap) -> Option<(String, TokenSource)> {
    if let Some(t) = bearer(headers) {
        return Some((t, TokenSource::Bearer));
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
        .map(|t| (t, TokenSource::Cookie))
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_string())
}

/// Checks a token as every authenticated route does: unknown, revoked and expired tokens are
/// all the same 401.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    if token.is_empty() {
        return Err(ApiError::Unauthorized);
    }
    let hash = hash_token(token);
    let lookup = hash.clone();
    state
        .jobs
        .store_call(move |s| s.token_find(&lookup))
        .await?
        .filter(|p| same_secret(p.token_hash.as_bytes(), hash.as_bytes()))
        .ok_or(ApiError::Unauthorized)
}

/// The cheap CSRF check: false when the request names an `Origin` whose host and port differ
/// from the server's, as the request's `Host` (or a proxy's `X-Forwarded-Host`) gives it. A
/// request without `Origin` passes (not a browser's cross-site request: browsers send `Origin`
/// with every cross-origin request that is not a GET or HEAD).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some((scheme, authority)) = origin
        .to_str()
        .ok()
        .and_then(|o| o.trim().split_once("://"))
    else {
        return false; // `null` (sandboxed frames, file:// pages) or garbage
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let normal = |a: &str| {
        let a = a.trim().to_ascii_lowercase();
        match a.strip_suffix(default_port) {
            Some(bare) => bare.to_string(),
            None => a,
        }
    };
    let origin = normal(authority.trim_end_matches('/'));
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(normal)
    };
    [first("host"), first("x-forwarded-host")]
        .into_iter()
        .flatten()
        .any(|host| host == origin)
}

/// Middleware: rejects requests without a live token with 401, and cookie-authenticated
/// requests that change something from another site's page with 403.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (token, source) = token_from(req.headers()).ok_or(ApiError::Unauthorized)?;
    let principal = authenticate(&state, &token).await?;
    if source == TokenSource::Cookie
        && !matches!(*req.method(), Method::GET | Method::HEAD)
        && !same_origin(req.headers())
    {
        return Err(ApiError::CrossOrigin);
    }
    req.extensions_mut().insert(Caller::from(principal));
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_is_equality() {
        let h = hash_token("slc_a");
        assert!(same_secret(h.as_bytes(), hash_token("slc_a").as_bytes()));
        assert!(!same_secret(h.as_bytes(), hash_token("slc_b").as_bytes()));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(same_secret(b"", b""));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn origin_must_match_the_host() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "Sluice.Example.com"),
            ("origin", "https://sluice.example.com:443")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "sluice.example.com"),
            ("origin", "https://sluice.example.com")
        ])));
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:8081",
            "null",
            "127.0.0.1:8080",
            "ftp://127.0.0.1:8080",
        ] {
            let mut h = headers(&[("host", "127.0.0.1:8080")]);
            h.insert(header::ORIGIN, origin.parse().unwrap());
            assert!(!same_origin(&h), "{origin}");
        }
    }

    #[test]
    fn bearer_wins_over_the_cookie() {
        let h = headers(&[
            ("authorization", "Bearer abc"),
            ("cookie", "a=1; token=xyz"),
        ]);
        assert_eq!(token_from(&h), Some(("abc".into(), TokenSource::Bearer)));
        let h = headers(&[("cookie", "a=1; token=xyz")]);
        assert_eq!(token_from(&h), Some(("xyz".into(), TokenSource::Cookie)));
    }
}
