//! Organisations, users, API tokens and the audit log on PostgreSQL.

use chrono::{DateTime, Utc};
use postgres::error::SqlState;
use postgres::{Client, GenericClient};

use super::pg_err;
use crate::store::{
    AuditEntry, AuditRecord, Org, OrgLimits, Principal, Role, StoreError, StoreResult, TokenInfo,
    User,
};

fn role(s: &str) -> StoreResult<Role> {
    s.parse().map_err(StoreError::Corrupt)
}

/// `None` for a broken UNIQUE constraint (the name is taken), the row id otherwise.
fn inserted(result: Result<postgres::Row, postgres::Error>) -> StoreResult<Option<i64>> {
    match result {
        Ok(row) => Ok(Some(row.get(0))),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
        Err(e) => Err(pg_err(e)),
    }
}

pub(super) fn org_insert(c: &mut Client, name: &str) -> StoreResult<Option<i64>> {
    inserted(c.query_one("INSERT INTO orgs (name) VALUES ($1) RETURNING id", &[&name]))
}

pub(super) fn org_find(c: &mut Client, name: &str) -> StoreResult<Option<i64>> {
    let row = c
        .query_opt("SELECT id FROM orgs WHERE name = $1", &[&name])
        .map_err(pg_err)?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) fn org_exists(c: &mut Client, id: i64) -> StoreResult<bool> {
    let row = c
        .query_opt("SELECT 1 FROM orgs WHERE id = $1", &[&id])
        .map_err(pg_err)?;
    Ok(row.is_some())
}

fn to_db(n: Option<u64>) -> Option<i64> {
    n.map(|n| n.min(i64::MAX as u64) as i64)
}

fn from_db(n: Option<i64>) -> Option<u64> {
    n.map(|n| n.max(0) as u64)
}

pub(super) fn org_set_limits(c: &mut Client, id: i64, limits: OrgLimits) -> StoreResult<bool> {
    c.execute(
        "UPDATE orgs SET max_upload_bytes = $2, max_rows = $3 WHERE id = $1",
        &[
            &id,
            &to_db(limits.max_upload_bytes),
            &to_db(limits.max_rows),
        ],
    )
    .map(|n| n > 0)
    .map_err(pg_err)
}

pub(super) fn user_insert(
    c: &mut impl GenericClient,
    org_id: i64,
    name: &str,
    role: Role,
) -> StoreResult<Option<i64>> {
    inserted(c.query_one(
        "INSERT INTO users (org_id, name, role) VALUES ($1, $2, $3) RETURNING id",
        &[&org_id, &name, &role.as_str()],
    ))
}

pub(super) fn user_get(c: &mut Client, id: i64) -> StoreResult<Option<User>> {
    let row = c
        .query_opt(
            "SELECT id, org_id, name, role FROM users WHERE id = $1",
            &[&id],
        )
        .map_err(pg_err)?;
    row.map(|r| {
        Ok(User {
            id: r.get(0),
            org_id: r.get(1),
            name: r.get(2),
            role: role(r.get(3))?,
        })
    })
    .transpose()
}

pub(super) fn org_list(c: &mut Client) -> StoreResult<Vec<Org>> {
    Ok(c.query(
        "SELECT id, name, max_upload_bytes, max_rows FROM orgs ORDER BY id",
        &[],
    )
    .map_err(pg_err)?
    .iter()
    .map(|r| Org {
        id: r.get(0),
        name: r.get(1),
        limits: OrgLimits {
            max_upload_bytes: from_db(r.get(2)),
            max_rows: from_db(r.get(3)),
        },
    })
    .collect())
}

pub(super) fn user_list(c: &mut Client, org_id: Option<i64>) -> StoreResult<Vec<User>> {
    c.query(
        "SELECT id, org_id, name, role FROM users WHERE $1::BIGINT IS NULL OR org_id = $1 ORDER BY id",
        &[&org_id],
    )
    .map_err(pg_err)?
    .iter()
    .map(|r| {
        Ok(User {
            id: r.get(0),
            org_id: r.get(1),
            name: r.get(2),
            role: role(r.get(3))?,
        })
    })
    .collect()
}

pub(super) fn token_list(c: &mut Client, org_id: Option<i64>) -> StoreResult<Vec<TokenInfo>> {
    Ok(c.query(
        "SELECT t.id, t.user_id, u.name, u.org_id, t.label, t.created_at, t.expires_at, \
             t.last_used_at, t.revoked_at FROM tokens t LEFT JOIN users u ON u.id = t.user_id \
             WHERE $1::BIGINT IS NULL OR u.org_id = $1 ORDER BY t.id DESC",
        &[&org_id],
    )
    .map_err(pg_err)?
    .iter()
    .map(|r| TokenInfo {
        id: r.get(0),
        user_id: r.get(1),
        user_name: r.get(2),
        org_id: r.get(3),
        label: r.get(4),
        created_at: r.get(5),
        expires_at: r.get(6),
        last_used_at: r.get(7),
        revoked_at: r.get(8),
    })
    .collect())
}

pub(super) fn user_first_admin(c: &mut Client) -> StoreResult<Option<i64>> {
    let row = c
        .query_opt(
            "SELECT id FROM users WHERE role = 'admin' ORDER BY org_id, id LIMIT 1",
            &[],
        )
        .map_err(pg_err)?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) fn token_count(c: &mut Client) -> StoreResult<u64> {
    let n: i64 = c
        .query_one("SELECT count(*) FROM tokens WHERE revoked_at IS NULL", &[])
        .map_err(pg_err)?
        .get(0);
    Ok(n as u64)
}

pub(super) fn token_insert(
    c: &mut impl GenericClient,
    label: &str,
    token_hash: &str,
    user_id: i64,
    expires_at: Option<DateTime<Utc>>,
) -> StoreResult<i64> {
    let row = c
        .query_opt(
            "INSERT INTO tokens (label, token_hash, role, created_at, user_id, expires_at) \
             SELECT $1, $2, role, now(), id, $4 FROM users WHERE id = $3 \
             ON CONFLICT (token_hash) DO UPDATE SET label = tokens.label RETURNING id",
            &[&label, &token_hash, &user_id, &expires_at],
        )
        .map_err(pg_err)?;
    row.map(|r| r.get(0))
        .ok_or_else(|| StoreError::Other(format!("no user with id {user_id}")))
}

pub(super) fn token_find(c: &mut Client, token_hash: &str) -> StoreResult<Option<Principal>> {
    let row = c
        .query_opt(
            "UPDATE tokens t SET last_used_at = now() FROM users u JOIN orgs o ON o.id = u.org_id \
             WHERE u.id = t.user_id AND t.token_hash = $1 AND t.revoked_at IS NULL \
             AND (t.expires_at IS NULL OR t.expires_at > now()) \
             RETURNING t.id, u.id, u.org_id, u.role, o.max_upload_bytes, o.max_rows, t.token_hash, t.expires_at",
            &[&token_hash],
        )
        .map_err(pg_err)?;
    row.map(|r| {
        Ok(Principal {
            token_id: r.get(0),
            token_hash: r.get(6),
            user_id: r.get(1),
            org_id: r.get(2),
            role: role(r.get(3))?,
            limits: OrgLimits {
                max_upload_bytes: from_db(r.get(4)),
                max_rows: from_db(r.get(5)),
            },
            expires_at: r.get(7),
        })
    })
    .transpose()
}

pub(super) fn token_revoke(
    c: &mut impl GenericClient,
    id: i64,
    org_id: Option<i64>,
) -> StoreResult<Option<i64>> {
    let row = c
        .query_opt(
            "UPDATE tokens t SET revoked_at = now() FROM users u \
             WHERE u.id = t.user_id AND t.id = $1 AND t.revoked_at IS NULL \
             AND ($2::bigint IS NULL OR u.org_id = $2) RETURNING u.org_id",
            &[&id, &org_id],
        )
        .map_err(pg_err)?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) fn audit_insert(c: &mut impl GenericClient, e: &AuditEntry) -> StoreResult<()> {
    c.execute(
        "INSERT INTO audit_log (org_id, user_id, token_id, action, target, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &e.org_id,
            &e.user_id,
            &e.token_id,
            &e.action,
            &e.target,
            &e.detail,
        ],
    )
    .map_err(pg_err)?;
    Ok(())
}

pub(super) fn audit_list(
    c: &mut Client,
    org_id: i64,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<AuditRecord>, u64)> {
    let total: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_log WHERE org_id = $1",
            &[&org_id],
        )
        .map_err(pg_err)?
        .get(0);
    let rows = c
        .query(
            "SELECT id, at, org_id, user_id, token_id, action, target, detail FROM audit_log \
             WHERE org_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
            &[
                &org_id,
                &(limit.min(i64::MAX as u64) as i64),
                &(offset.min(i64::MAX as u64) as i64),
            ],
        )
        .map_err(pg_err)?;
    let records = rows
        .iter()
        .map(|r| AuditRecord {
            id: r.get(0),
            at: r.get(1),
            entry: AuditEntry {
                org_id: r.get(2),
                user_id: r.get(3),
                token_id: r.get(4),
                action: r.get(5),
                target: r.get(6),
                detail: r.get(7),
            },
        })
        .collect();
    Ok((records, total as u64))
}
