//! The SQLite backend: one database file holding the job store and the dataset tables.
//!
//! WAL mode lets the API read while a worker writes. Connections come from a small pool; API
//! connections use `synchronous=FULL` (a job acknowledged with 202 survives a power cut), batch
//! writers `synchronous=NORMAL` (a lost batch is redone from its checkpoint). Migrations are the
//! files in `migrations/sqlite/`, tracked with `PRAGMA user_version`.

mod control;
mod hooks;
mod jobs;
mod tables;
mod tenants;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::pool::{Pool, Pooled};
use super::{StoreError, StoreResult};

/// Migrations in order; `user_version` counts how many are applied. Append only.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_jobs",
        include_str!("../../../migrations/sqlite/0001_jobs.sql"),
    ),
    (
        "0002_job_control",
        include_str!("../../../migrations/sqlite/0002_job_control.sql"),
    ),
    (
        "0003_blobs",
        include_str!("../../../migrations/sqlite/0003_blobs.sql"),
    ),
    (
        "0004_chunks",
        include_str!("../../../migrations/sqlite/0004_chunks.sql"),
    ),
    (
        "0005_events_webhooks_templates",
        include_str!("../../../migrations/sqlite/0005_events_webhooks_templates.sql"),
    ),
    (
        "0006_tenants",
        include_str!("../../../migrations/sqlite/0006_tenants.sql"),
    ),
    (
        "0007_org_templates",
        include_str!("../../../migrations/sqlite/0007_org_templates.sql"),
    ),
];

/// Idle connections kept for reuse.
const POOL_IDLE: usize = 8;

pub struct SqliteStore {
    path: PathBuf,
    /// How long a statement waits for another connection's write lock before failing busy.
    busy_timeout: Duration,
    pool: Pool<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path, busy_timeout: Duration) -> StoreResult<Self> {
        let (p, t) = (path.to_path_buf(), busy_timeout);
        let store = Self {
            path: path.to_path_buf(),
            busy_timeout,
            pool: Pool::new(
                POOL_IDLE,
                Box::new(move || connect(&p, t, true)),
                Connection::is_autocommit,
            ),
        };
        let mut conn = store.conn()?;
        migrate(&mut conn)?;
        drop(conn);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A pooled connection for short API and job-store statements.
    fn conn(&self) -> StoreResult<Pooled<'_, Connection>> {
        self.pool.get()
    }

    /// A connection of its own for a batch writer (`synchronous=NORMAL`).
    fn writer_conn(&self) -> StoreResult<Connection> {
        connect(&self.path, self.busy_timeout, false)
    }
}

/// Opens a new connection with sluice's settings.
fn connect(path: &Path, busy_timeout: Duration, durable: bool) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    conn.busy_timeout(busy_timeout).map_err(db_err)?;
    let synchronous = if durable { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16000;"
    ))
    .map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Applies pending migrations, each in its own write transaction that re-reads the version
/// first, so several processes starting at once apply each migration exactly once.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let applied = tx
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(db_err)? as usize;
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Other(format!(
                "the database was written by a newer sluice (schema version {applied}, this one knows {})",
                MIGRATIONS.len()
            )));
        }
        let Some((name, sql)) = MIGRATIONS.get(applied) else {
            return Ok(());
        };
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", (applied + 1) as i64)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(migration = name, "applied migration");
    }
}

/// True for errors worth retrying: the database is busy, locked, or its disk failed or filled.
fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
        )
    )
}

fn db_err(e: rusqlite::Error) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Other(e.to_string())
    }
}

/// Quotes an identifier that [`crate::dataset::is_identifier`] already accepted.
fn ident(name: &str) -> String {
    format!("\"{name}\"")
}
