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
use axum::http::header;
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

    /// An audit entry for an action of this caller.
    pub fn audit(&self, action: &str, target: String, detail: Option<String>) -> AuditEntry {
        AuditEntry {
            org_id: Some(self.org_id),
            user_id: Some(self.user_id),
            token_id: Some(self.token_id),
            action: action.to_string(),
            target: Some(target),
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
    let lookup = hash.clone();
    let principal = state
        .jobs
        .store_call(move |s| s.token_find(&lookup))
        .await?
        .filter(|p| same_secret(p.token_hash.as_bytes(), hash.as_bytes()))
        .ok_or(ApiError::Unauthorized)?;
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
}
