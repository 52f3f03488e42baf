//! Organisations, users, API tokens and the audit log on SQLite.
//!
//! Times are RFC 3339 text in UTC with milliseconds (as [`now_text`] writes them), so they
//! compare correctly as strings: a token is live while `expires_at` is NULL or later than now.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::db_err;
use super::jobs::now_text;
use crate::store::{
    AuditEntry, AuditRecord, Org, OrgLimits, Principal, Role, StoreError, StoreResult, TokenInfo,
    User,
};

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn role(s: String) -> StoreResult<Role> {
    s.parse().map_err(StoreError::Corrupt)
}

/// `None` for a broken UNIQUE constraint (the name is taken), the row id otherwise.
fn inserted(conn: &Connection, result: rusqlite::Result<usize>) -> StoreResult<Option<i64>> {
    match result {
        Ok(_) => Ok(Some(conn.last_insert_rowid())),
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

pub(super) fn org_insert(conn: &Connection, name: &str) -> StoreResult<Option<i64>> {
    let result = conn.execute(
        "INSERT INTO orgs (name, created_at) VALUES (?1, ?2)",
        params![name, now_text()],
    );
    inserted(conn, result)
}

pub(super) fn org_find(conn: &Connection, name: &str) -> StoreResult<Option<i64>> {
    conn.query_row("SELECT id FROM orgs WHERE name = ?1", [name], |r| r.get(0))
        .optional()
        .map_err(db_err)
}

pub(super) fn org_exists(conn: &Connection, id: i64) -> StoreResult<bool> {
    conn.query_row("SELECT count(*) FROM orgs WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n > 0)
    .map_err(db_err)
}

fn to_db(n: Option<u64>) -> Option<i64> {
    n.map(|n| n.min(i64::MAX as u64) as i64)
}

fn from_db(n: Option<i64>) -> Option<u64> {
    n.map(|n| n.max(0) as u64)
}

pub(super) fn org_set_limits(conn: &Connection, id: i64, limits: OrgLimits) -> StoreResult<bool> {
    conn.execute(
        "UPDATE orgs SET max_upload_bytes = ?2, max_rows = ?3 WHERE id = ?1",
        params![id, to_db(limits.max_upload_bytes), to_db(limits.max_rows)],
    )
    .map(|n| n > 0)
    .map_err(db_err)
}

pub(super) fn user_insert(
    conn: &Connection,
    org_id: i64,
    name: &str,
    role: Role,
) -> StoreResult<Option<i64>> {
    let result = conn.execute(
        "INSERT INTO users (org_id, name, role, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![org_id, name, role.as_str(), now_text()],
    );
    inserted(conn, result)
}

pub(super) fn user_get(conn: &Connection, id: i64) -> StoreResult<Option<User>> {
    let row = conn
        .query_row(
            "SELECT id, org_id, name, role FROM users WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .optional()
        .map_err(db_err)?;
    row.map(|(id, org_id, name, r)| {
        Ok(User {
            id,
            org_id,
            name,
            role: role(r)?,
        })
    })
    .transpose()
}

/// A stored RFC 3339 time; `None` for NULL (or text that is not one).
fn stored_time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.to_utc())
}

pub(super) fn org_list(conn: &Connection) -> StoreResult<Vec<Org>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, name, max_upload_bytes, max_rows FROM orgs ORDER BY id")
        .map_err(db_err)?;
    stmt.query_map([], |r| {
        Ok(Org {
            id: r.get(0)?,
            name: r.get(1)?,
            limits: OrgLimits {
                max_upload_bytes: from_db(r.get(2)?),
                max_rows: from_db(r.get(3)?),
            },
        })
    })
    .map_err(db_err)?
    .collect::<Result<Vec<_>, _>>()
    .map_err(db_err)
}

pub(super) fn user_list(conn: &Connection, org_id: Option<i64>) -> StoreResult<Vec<User>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, org_id, name, role FROM users WHERE ?1 IS NULL OR org_id = ?1 ORDER BY id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([org_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    rows.into_iter()
        .map(|(id, org_id, name, r)| {
            Ok(User {
                id,
                org_id,
                name,
                role: role(r)?,
            })
        })
        .collect()
}

pub(super) fn token_list(conn: &Connection, org_id: Option<i64>) -> StoreResult<Vec<TokenInfo>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT t.id, t.user_id, u.name, u.org_id, t.label, t.created_at, t.expires_at, \
             t.last_used_at, t.revoked_at FROM tokens t LEFT JOIN users u ON u.id = t.user_id \
             WHERE ?1 IS NULL OR u.org_id = ?1 ORDER BY t.id DESC",
        )
        .map_err(db_err)?;
    stmt.query_map([org_id], |r| {
        Ok(TokenInfo {
            id: r.get(0)?,
            user_id: r.get(1)?,
            user_name: r.get(2)?,
            org_id: r.get(3)?,
            label: r.get(4)?,
            created_at: stored_time(r.get(5)?).unwrap_or_default(),
            expires_at: stored_time(r.get(6)?),
            last_used_at: stored_time(r.get(7)?),
            revoked_at: stored_time(r.get(8)?),
        })
    })
    .map_err(db_err)?
    .collect::<Result<Vec<_>, _>>()
    .map_err(db_err)
}

pub(super) fn user_first_admin(conn: &Connection) -> StoreResult<Option<i64>> {
    conn.query_row(
        "SELECT id FROM users WHERE role = 'admin' ORDER BY org_id, id LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
    .map_err(db_err)
}

pub(super) fn token_count(conn: &Connection) -> StoreResult<u64> {
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM tokens WHERE revoked_at IS NULL",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    Ok(n as u64)
}

pub(super) fn token_insert(
    conn: &Connection,
    label: &str,
    token_hash: &str,
    user_id: i64,
    expires_at: Option<DateTime<Utc>>,
) -> StoreResult<i64> {
    let n = conn
        .execute(
            "INSERT INTO tokens (label, token_hash, role, created_at, user_id, expires_at) \
             SELECT ?1, ?2, role, ?3, id, ?5 FROM users WHERE id = ?4",
            params![label, token_hash, now_text(), user_id, expires_at.map(text)],
        )
        .map_err(db_err)?;
    if n == 0 {
        return Err(StoreError::Other(format!("no user with id {user_id}")));
    }
    Ok(conn.last_insert_rowid())
}

pub(super) fn token_find(conn: &Connection, token_hash: &str) -> StoreResult<Option<Principal>> {
    let now = now_text();
    let row = conn
        .query_row(
            "SELECT t.id, u.id, u.org_id, u.role, o.max_upload_bytes, o.max_rows, t.token_hash, t.expires_at \
             FROM tokens t JOIN users u ON u.id = t.user_id JOIN orgs o ON o.id = u.org_id \
             WHERE t.token_hash = ?1 AND t.revoked_at IS NULL \
             AND (t.expires_at IS NULL OR t.expires_at > ?2)",
            params![token_hash, now],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    OrgLimits {
                        max_upload_bytes: from_db(r.get(4)?),
                        max_rows: from_db(r.get(5)?),
                    },
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            },
        )
        .optional()
        .map_err(db_err)?;
    let Some((token_id, user_id, org_id, r, limits, token_hash, expires_at)) = row else {
        return Ok(None);
    };
    // Best effort: a busy database must not turn a valid token away. At most once a minute per
    // token, so that reads do not queue for SQLite's single write lock on every request.
    let a_minute_ago = (chrono::Utc::now() - chrono::Duration::seconds(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let _ = conn.execute(
        "UPDATE tokens SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?3)",
        params![now, token_id, a_minute_ago],
    );
    Ok(Some(Principal {
        token_id,
        token_hash,
        user_id,
        org_id,
        role: role(r)?,
        limits,
        expires_at: expires_at
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
    }))
}

pub(super) fn token_revoke(
    conn: &Connection,
    id: i64,
    org_id: Option<i64>,
) -> StoreResult<Option<i64>> {
    conn.query_row(
        "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL \
         AND (?3 IS NULL OR user_id IN (SELECT id FROM users WHERE org_id = ?3)) \
         RETURNING (SELECT org_id FROM users WHERE users.id = tokens.user_id)",
        params![now_text(), id, org_id],
        |r| r.get::<_, Option<i64>>(0),
    )
    .optional()
    .map(Option::flatten)
    .map_err(db_err)
}

pub(super) fn audit_insert(conn: &Connection, e: &AuditEntry) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO audit_log (org_id, user_id, token_id, action, target, detail, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            e.org_id,
            e.user_id,
            e.token_id,
            e.action,
            e.target,
            e.detail,
            now_text()
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

pub(super) fn audit_list(
    conn: &Connection,
    org_id: i64,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<AuditRecord>, u64)> {
    let total: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE org_id = ?1",
            [org_id],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, at, org_id, user_id, token_id, action, target, detail FROM audit_log \
             WHERE org_id = ?1 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(
            params![
                org_id,
                limit.min(i64::MAX as u64) as i64,
                offset.min(i64::MAX as u64) as i64
            ],
            |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at: DateTime::parse_from_rfc3339(&r.get::<_, String>(1)?)
                        .map(|d| d.to_utc())
                        .unwrap_or_default(),
                    entry: AuditEntry {
                        org_id: r.get(2)?,
                        user_id: r.get(3)?,
                        token_id: r.get(4)?,
                        action: r.get(5)?,
                        target: r.get(6)?,
                        detail: r.get(7)?,
                    },
                })
            },
        )
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    Ok((rows, total as u64))
}
