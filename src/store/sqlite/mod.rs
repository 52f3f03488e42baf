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
mod writer;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, ErrorCode, OpenFlags};

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
    // 0003 is `0003_blobs` on main; when the branches meet it goes here, before 0004.
    (
        "0004_events_webhooks_templates",
        include_str!("../../../migrations/sqlite/0004_events_webhooks_templates.sql"),
    ),
];

/// Idle connections kept for reuse.
const POOL_IDLE: usize = 8;

pub struct SqliteStore {
    path: PathBuf,
    /// How long a statement waits for another connection's write lock before failing busy.
    busy_timeout: std::time::Duration,
    idle: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path, busy_timeout: std::time::Duration) -> StoreResult<Self> {
        let store = Self {
            path: path.to_path_buf(),
            busy_timeout,
            idle: Mutex::new(Vec::new()),
        };
        let mut conn = store.connect(true)?;
        migrate(&mut conn)?;
        store.put_back(conn);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a new connection with sluice's settings.
    fn connect(&self, durable: bool) -> StoreResult<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        conn.busy_timeout(self.busy_timeout).map_err(db_err)?;
        let synchronous = if durable { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16000;"
        ))
        .map_err(db_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// A pooled connection for short API and job-store statements.
    fn conn(&self) -> StoreResult<Pooled<'_>> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => self.connect(true)?,
        };
        Ok(Pooled {
            store: self,
            conn: Some(conn),
        })
    }

    fn put_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < POOL_IDLE
        {
            idle.push(conn);
        }
    }
}

/// A connection borrowed from the pool; returned on drop.
struct Pooled<'a> {
    store: &'a SqliteStore,
    conn: Option<Connection>,
}

impl Deref for Pooled<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.is_autocommit()
        {
            self.store.put_back(conn);
        }
    }
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
