//! Organisations, users, API tokens and the audit log: one implementation for both backends.
//!
//! A token is live while it is not revoked and `expires_at` is NULL or later than now. Finding
//! a token only reads; its last use is recorded separately, at most once a minute, by a write
//! that never waits for a lock ([`token_last_use_due`] tells when one is due).

use chrono::{DateTime, Utc};

use super::sql::{Row, Sql, Value, params};
use super::{
    AuditEntry, AuditRecord, Org, OrgLimits, Principal, Role, StoreError, StoreResult, TokenInfo,
    User,
};

fn role(s: String) -> StoreResult<Role> {
    s.parse().map_err(StoreError::Corrupt)
}

fn limits(r: &Row, at: usize) -> StoreResult<OrgLimits> {
    Ok(OrgLimits {
        max_upload_bytes: r.opt_u64(at)?,
        max_rows: r.opt_u64(at + 1)?,
    })
}

fn user(r: &Row) -> StoreResult<User> {
    Ok(User {
        id: r.i64(0)?,
        org_id: r.i64(1)?,
        name: r.text(2)?,
        role: role(r.text(3)?)?,
    })
}

/// `None` when the name is taken.
pub fn org_insert(c: &mut dyn Sql, name: &str) -> StoreResult<Option<i64>> {
    c.query_opt(
        "INSERT INTO orgs (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id",
        params![name, Utc::now()],
    )?
    .map(|r| r.i64(0))
    .transpose()
}

pub fn org_find(c: &mut dyn Sql, name: &str) -> StoreResult<Option<i64>> {
    c.query_opt("SELECT id FROM orgs WHERE name = $1", params![name])?
        .map(|r| r.i64(0))
        .transpose()
}

pub fn org_exists(c: &mut dyn Sql, id: i64) -> StoreResult<bool> {
    Ok(
        c.query_opt("SELECT 1 FROM orgs WHERE id = $1", params![id])?
            .is_some(),
    )
}

pub fn org_set_limits(c: &mut dyn Sql, id: i64, limits: OrgLimits) -> StoreResult<bool> {
    Ok(c.execute(
        "UPDATE orgs SET max_upload_bytes = $2, max_rows = $3 WHERE id = $1",
        params![id, limits.max_upload_bytes, limits.max_rows],
    )? > 0)
}

pub fn org_list(c: &mut dyn Sql) -> StoreResult<Vec<Org>> {
    c.query(
        "SELECT id, name, max_upload_bytes, max_rows FROM orgs ORDER BY id",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(Org {
            id: r.i64(0)?,
            name: r.text(1)?,
            limits: limits(r, 2)?,
        })
    })
    .collect()
}

/// `None` when the organisation already has a user of this name.
pub fn user_insert(
    c: &mut dyn Sql,
    org_id: i64,
    name: &str,
    role: Role,
) -> StoreResult<Option<i64>> {
    c.query_opt(
        "INSERT INTO users (org_id, name, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING RETURNING id",
        params![org_id, name, role.as_str(), Utc::now()],
    )?
    .map(|r| r.i64(0))
    .transpose()
}

pub fn user_get(c: &mut dyn Sql, id: i64) -> StoreResult<Option<User>> {
    c.query_opt(
        "SELECT id, org_id, name, role FROM users WHERE id = $1",
        params![id],
    )?
    .as_ref()
    .map(user)
    .transpose()
}

pub fn user_list(c: &mut dyn Sql, org_id: Option<i64>) -> StoreResult<Vec<User>> {
    c.query(
        "SELECT id, org_id, name, role FROM users WHERE CAST($1 AS BIGINT) IS NULL OR org_id = $1 \
         ORDER BY id",
        params![org_id],
    )?
    .iter()
    .map(user)
    .collect()
}

pub fn user_first_admin(c: &mut dyn Sql) -> StoreResult<Option<i64>> {
    c.query_opt(
        "SELECT id FROM users WHERE role = 'admin' ORDER BY org_id, id LIMIT 1",
        &[],
    )?
    .map(|r| r.i64(0))
    .transpose()
}

pub fn token_list(c: &mut dyn Sql, org_id: Option<i64>) -> StoreResult<Vec<TokenInfo>> {
    c.query(
        "SELECT t.id, t.user_id, u.name, u.org_id, t.label, t.created_at, t.expires_at, \
         t.last_used_at, t.revoked_at FROM tokens t LEFT JOIN users u ON u.id = t.user_id \
         WHERE CAST($1 AS BIGINT) IS NULL OR u.org_id = $1 ORDER BY t.id DESC",
        params![org_id],
    )?
    .iter()
    .map(|r| {
        Ok(TokenInfo {
            id: r.i64(0)?,
            user_id: r.opt_i64(1)?,
            user_name: r.opt_text(2)?,
            org_id: r.opt_i64(3)?,
            label: r.text(4)?,
            created_at: r.time(5)?,
            expires_at: r.opt_time(6)?,
            last_used_at: r.opt_time(7)?,
            revoked_at: r.opt_time(8)?,
        })
    })
    .collect()
}

pub fn token_count(c: &mut dyn Sql) -> StoreResult<u64> {
    c.query_one("SELECT count(*) FROM tokens WHERE revoked_at IS NULL", &[])?
        .u64(0)
}

/// Stores a token for a user. A hash that is already stored (live, revoked or expired) is
/// refused, never restored: a revoked token stays dead.
pub fn token_insert(
    c: &mut dyn Sql,
    label: &str,
    token_hash: &str,
    user_id: i64,
    expires_at: Option<DateTime<Utc>>,
) -> StoreResult<i64> {
    if c.query_opt(
        "SELECT 1 FROM tokens WHERE token_hash = $1",
        params![token_hash],
    )?
    .is_some()
    {
        return Err(StoreError::Other(
            "this token is already stored (it may have been revoked or have expired)".into(),
        ));
    }
    c.query_opt(
        "INSERT INTO tokens (label, token_hash, role, created_at, user_id, expires_at) \
         SELECT $1, $2, role, $3, id, $5 FROM users WHERE id = $4 \
         ON CONFLICT DO NOTHING RETURNING id",
        params![label, token_hash, Utc::now(), user_id, expires_at],
    )?
    .map(|r| r.i64(0))
    .transpose()?
    .ok_or_else(|| {
        StoreError::Other(format!(
            "no user with id {user_id}, or the token was stored meanwhile"
        ))
    })
}

/// The live token with this hash, and whether its last use should be recorded (it was not
/// recorded in the last minute).
pub fn token_find(c: &mut dyn Sql, token_hash: &str) -> StoreResult<Option<(Principal, bool)>> {
    let now = Utc::now();
    let Some(r) = c.query_opt(
        "SELECT t.id, u.id, u.org_id, u.role, o.max_upload_bytes, o.max_rows, t.token_hash, \
         t.expires_at, t.last_used_at FROM tokens t JOIN users u ON u.id = t.user_id \
         JOIN orgs o ON o.id = u.org_id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)",
        params![token_hash, now],
    )?
    else {
        return Ok(None);
    };
    let last_used = r.opt_time(8)?;
    let principal = Principal {
        token_id: r.i64(0)?,
        user_id: r.i64(1)?,
        org_id: r.i64(2)?,
        role: role(r.text(3)?)?,
        limits: limits(&r, 4)?,
        token_hash: r.text(6)?,
        expires_at: r.opt_time(7)?,
    };
    Ok(Some((principal, token_last_use_due(last_used, now))))
}

/// A token's last use is recorded at most once a minute, so that reads do not queue for a
/// write on every request.
pub fn token_last_use_due(last_used: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_used.is_none_or(|t| now - t >= LAST_USE_EVERY)
}

/// How often a token's last use is recorded at most.
const LAST_USE_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// The statement that records a token's last use, and its parameters (run by the backend's
/// no-wait write).
pub fn token_touch(token_id: i64, now: DateTime<Utc>) -> (&'static str, [Value; 3]) {
    (
        "UPDATE tokens SET last_used_at = $1 WHERE id = $2 \
         AND (last_used_at IS NULL OR last_used_at < $3)",
        [now.into(), token_id.into(), (now - LAST_USE_EVERY).into()],
    )
}

pub fn token_revoke(c: &mut dyn Sql, id: i64, org_id: Option<i64>) -> StoreResult<Option<i64>> {
    Ok(c.query_opt(
        "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL \
         AND (CAST($3 AS BIGINT) IS NULL OR user_id IN (SELECT id FROM users WHERE org_id = $3)) \
         RETURNING (SELECT org_id FROM users WHERE users.id = tokens.user_id)",
        params![Utc::now(), id, org_id],
    )?
    .map(|r| r.opt_i64(0))
    .transpose()?
    .flatten())
}

pub fn token_org(c: &mut dyn Sql, id: i64) -> StoreResult<Option<i64>> {
    c.query_opt(
        "SELECT u.org_id FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
        params![id],
    )?
    .map(|r| r.i64(0))
    .transpose()
}

pub fn audit_insert(c: &mut dyn Sql, e: &AuditEntry) -> StoreResult<()> {
    c.execute(
        "INSERT INTO audit_log (org_id, user_id, token_id, action, target, detail, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params![
            e.org_id,
            e.user_id,
            e.token_id,
            e.action.as_str(),
            e.target.as_deref(),
            e.detail.as_deref(),
            Utc::now()
        ],
    )?;
    Ok(())
}

pub fn audit_list(
    c: &mut dyn Sql,
    org_id: i64,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<AuditRecord>, u64)> {
    let total = c
        .query_one(
            "SELECT count(*) FROM audit_log WHERE org_id = $1",
            params![org_id],
        )?
        .u64(0)?;
    let records = c
        .query(
            "SELECT id, at, org_id, user_id, token_id, action, target, detail FROM audit_log \
             WHERE org_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
            params![org_id, limit, offset],
        )?
        .iter()
        .map(|r| {
            Ok(AuditRecord {
                id: r.i64(0)?,
                at: r.time(1)?,
                entry: AuditEntry {
                    org_id: r.opt_i64(2)?,
                    user_id: r.opt_i64(3)?,
                    token_id: r.opt_i64(4)?,
                    action: r.text(5)?,
                    target: r.opt_text(6)?,
                    detail: r.opt_text(7)?,
                },
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((records, total))
}
