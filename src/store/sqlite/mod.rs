//! The SQLite backend: one database file holding the job store and the dataset tables.
//!
//! WAL mode lets the API read while a worker writes. Connections come from a small pool; API
//! connections use `synchronous=FULL` (a job acknowledged with 202 survives a power cut), batch
//! writers `synchronous=NORMAL` (a lost batch is redone from its checkpoint). The WAL is copied
//! back into the file by a thread of its own after each batch (`checkpoint.rs`), not inside the
//! commits. Migrations are the files in `migrations/sqlite/`, tracked with `PRAGMA user_version`.

mod checkpoint;
mod raw;
mod tables;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::pool::Pool;
use super::sql::{self, Dialect, Row, Sql, Value};
use super::{Backend, Lease, SqlStore, StoreError, StoreResult};
use crate::dataset::{Dataset, Datasets};
use crate::import::{BatchSink, Mode};

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
    (
        "0008_webhook_orgs",
        include_str!("../../../migrations/sqlite/0008_webhook_orgs.sql"),
    ),
    (
        "0009_dataset_writer",
        include_str!("../../../migrations/sqlite/0009_dataset_writer.sql"),
    ),
    (
        "0010_blob_orphans",
        include_str!("../../../migrations/sqlite/0010_blob_orphans.sql"),
    ),
    (
        "0011_priority",
        include_str!("../../../migrations/sqlite/0011_priority.sql"),
    ),
    (
        "0012_job_kinds",
        include_str!("../../../migrations/sqlite/0012_job_kinds.sql"),
    ),
    (
        "0013_active_file_per_kind",
        include_str!("../../../migrations/sqlite/0013_active_file_per_kind.sql"),
    ),
    (
        "0014_blob_chunks_lz4",
        include_str!("../../../migrations/sqlite/0014_blob_chunks_lz4.sql"),
    ),
    (
        "0015_sources",
        include_str!("../../../migrations/sqlite/0015_sources.sql"),
    ),
    (
        "0016_ledger",
        include_str!("../../../migrations/sqlite/0016_ledger.sql"),
    ),
    (
        "0017_sync_keys",
        include_str!("../../../migrations/sqlite/0017_sync_keys.sql"),
    ),
    (
        "0018_email_subscriptions",
        include_str!("../../../migrations/sqlite/0018_email_subscriptions.sql"),
    ),
    (
        "0019_ledger_ranges",
        include_str!("../../../migrations/sqlite/0019_ledger_ranges.sql"),
    ),
];

/// The default cap on pooled connections: WAL readers run side by side, writers take turns.
pub const DEFAULT_CONNECTIONS: u32 = 8;

/// The job store on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

/// The SQLite backend of [`SqlStore`].
pub struct Sqlite {
    path: PathBuf,
    /// How long a statement waits for another connection's write lock before failing busy.
    busy_timeout: Duration,
    pool: Pool<Connection>,
    /// Checkpoints the WAL off the batch writers' commits (`checkpoint.rs`).
    checkpointer: Arc<checkpoint::Checkpointer>,
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database file and applies pending migrations. At most
    /// `connections` pooled connections are open at once; a caller waits up to `wait` for one.
    pub fn open(
        path: &Path,
        busy_timeout: Duration,
        connections: u32,
        wait: Duration,
    ) -> StoreResult<Self> {
        let (p, t) = (path.to_path_buf(), busy_timeout);
        let (cp, ct) = (path.to_path_buf(), busy_timeout);
        let checkpointer = Arc::new(checkpoint::Checkpointer::start(
            path.to_path_buf(),
            move || connect(&cp, ct, false).ok(),
        ));
        let backend = Sqlite {
            path: path.to_path_buf(),
            busy_timeout,
            checkpointer,
            pool: Pool::new(
                connections,
                wait,
                move || connect(&p, t, true),
                |c: &mut Connection, _| !c.is_autocommit(),
            ),
        };
        migrate(&mut *backend.pool.get_patiently(super::pool::STARTUP_WAIT)?)?;
        Ok(SqlStore(backend))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }
}

/// A connection (or a transaction, through `Deref`) as the shared store logic sees it.
struct Lite<'a>(&'a Connection);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as V, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(V::Null),
            Value::Int(n) => ToSqlOutput::Owned(V::Integer(*n)),
            Value::Real(f) => ToSqlOutput::Owned(V::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Time(t) => ToSqlOutput::Owned(V::Text(sql::time_text(*t))),
            Value::Bool(b) => ToSqlOutput::Owned(V::Integer(i64::from(*b))),
        })
    }
}

impl Sql for Lite<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, text: &str, params: &[Value]) -> StoreResult<u64> {
        let mut stmt = self
            .0
            .prepare_cached(&sql::sqlite_placeholders(text))
            .map_err(db_err)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(params))
            .map_err(db_err)?;
        Ok(n as u64)
    }

    fn query(&mut self, text: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        use rusqlite::types::ValueRef;
        let mut stmt = self
            .0
            .prepare_cached(&sql::sqlite_placeholders(text))
            .map_err(db_err)?;
        let n = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(db_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db_err)? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(match r.get_ref(i).map_err(db_err)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Real(f) => Value::Real(f),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn query_each(
        &mut self,
        text: &str,
        params: &[Value],
        each: &mut dyn FnMut(&[Value]) -> bool,
    ) -> StoreResult<u64> {
        let mut stmt = self
            .0
            .prepare(&sql::sqlite_placeholders(text))
            .map_err(db_err)?;
        let n = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(db_err)?;
        let mut values = Vec::with_capacity(n);
        let mut count = 0;
        while let Some(r) = rows.next().map_err(db_err)? {
            values.clear();
            for i in 0..n {
                values.push(value_of(r.get_ref(i).map_err(db_err)?));
            }
            count += 1;
            if !each(&values) {
                break;
            }
        }
        Ok(count)
    }

    fn batch(&mut self, text: &str) -> StoreResult<()> {
        self.0.execute_batch(text).map_err(db_err)
    }
}

fn value_of(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            Value::Text(String::from_utf8_lossy(t).into_owned())
        }
    }
}

impl Backend for Sqlite {
    fn pool_state(&self) -> crate::store::PoolState {
        self.pool.state()
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
        let conn = self.pool.get()?;
        f(&mut Lite(&conn))
    }

    fn write<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.pool.get()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let done = f(&mut Lite(&tx))?;
        tx.commit().map_err(db_err)?;
        Ok(done)
    }

    /// A deferred transaction on one pooled connection: WAL gives it the database as of its
    /// first read until it ends, whatever commits meanwhile (and blocks no writer).
    fn snapshot<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.pool.get()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
            .map_err(db_err)?;
        let done = f(&mut Lite(&tx))?;
        tx.commit().map_err(db_err)?;
        Ok(done)
    }

    /// The claim is one statement: in autocommit it takes SQLite's one write lock by itself, so
    /// claims are serialised without a transaction around them (an idle worker asks often, and
    /// an explicit write transaction would queue behind every batch commit).
    fn claim_scope<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
        self.read(f)
    }

    fn write_nowait(&self, text: &str, params: &[Value]) -> StoreResult<u64> {
        let conn = self
            .pool
            .try_get()
            .ok_or_else(|| StoreError::Busy("no idle connection".into()))?;
        // Fail at once instead of waiting for another connection's write lock.
        conn.busy_timeout(Duration::ZERO).map_err(db_err)?;
        let result = Lite(&conn).execute(text, params);
        conn.busy_timeout(self.busy_timeout).map_err(db_err)?;
        result
    }

    fn datasets_prepare(&self, datasets: &Datasets) -> StoreResult<()> {
        tables::prepare(&mut *self.pool.get()?, datasets)
    }

    fn dataset_prepare(&self, dataset: &Dataset) -> StoreResult<()> {
        tables::prepare_dataset(&mut *self.pool.get()?, dataset)
    }

    fn batch_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        parent: Option<super::JobId>,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>> {
        // A connection of its own (`synchronous=NORMAL`), outside the pool; the sink opens a
        // new one by itself if this one becomes unusable.
        let conn = connect(&self.path, self.busy_timeout, false)?;
        let (path, busy_timeout) = (self.path.clone(), self.busy_timeout);
        let reopen = Box::new(move || connect(&path, busy_timeout, false));
        Ok(Box::new(
            writer::SqliteSink::new(conn, reopen, dataset, lease, mode, parent, org)
                .checkpointed_by(self.checkpointer.clone()),
        ))
    }

    fn analysis_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>> {
        let conn = connect(&self.path, self.busy_timeout, false)?;
        let (path, busy_timeout) = (self.path.clone(), self.busy_timeout);
        let reopen = Box::new(move || connect(&path, busy_timeout, false));
        Ok(Box::new(
            writer::SqliteSink::new(conn, reopen, dataset, lease, mode, None, org)
                .dry()
                .checkpointed_by(self.checkpointer.clone()),
        ))
    }
}

/// Now, as SQLite stores times.
fn now_text() -> String {
    sql::time_text(chrono::Utc::now())
}

/// Turns off SQLite's memory statistics (a global mutex around every allocation, 3–4 % of a
/// batch commit's time in a profile) before the library initialises; sluice never reads them.
/// Once the library is initialised the call is refused, which changes nothing.
fn configure_library() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config before sqlite3_initialize, with the documented int argument;
        // called once, before this process opens its first connection through this module.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0);
        }
    });
}

/// Opens a new connection with sluice's settings.
fn connect(path: &Path, busy_timeout: Duration, durable: bool) -> StoreResult<Connection> {
    configure_library();
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
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16000;
         PRAGMA wal_autocheckpoint = {};",
        checkpoint::SAFETY_PAGES
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
    if e.sqlite_error_code() == Some(ErrorCode::DiskFull) {
        StoreError::Full(e.to_string())
    } else if is_transient(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Other(e.to_string())
    }
}

/// Quotes an identifier that [`crate::dataset::is_identifier`] already accepted.
fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 0019 builds one range per run of consecutive cursors of one organisation,
    /// dataset, job and time, from the entries written before it.
    #[test]
    fn ledger_ranges_are_built_for_the_entries_already_written() {
        let mut conn = Connection::open_in_memory().unwrap();
        let before = MIGRATIONS
            .iter()
            .position(|(name, _)| *name == "0019_ledger_ranges")
            .unwrap();
        for (_, sql) in &MIGRATIONS[..before] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64)
            .unwrap();
        // (seq, org, dataset, job, at); 9 is a rolled-back batch's.
        let entries = [
            (1, 1, "a", 10, "t1"),
            (2, 1, "a", 10, "t1"),
            (3, 1, "a", 10, "t1"),
            (4, 2, "a", 11, "t1"),
            (5, 2, "a", 11, "t1"),
            (6, 1, "a", 10, "t2"),
            (7, 1, "a", 10, "t2"),
            (8, 1, "a", 12, "t2"),
            (10, 1, "a", 12, "t2"),
            (11, 1, "b", 12, "t2"),
        ];
        for (seq, org, ds, job, at) in entries {
            conn.execute(
                "INSERT INTO ledger (seq, org_id, dataset, job_id, op, key, at) \
                 VALUES (?1, ?2, ?3, ?4, 'created', '{}', ?5)",
                rusqlite::params![seq, org, ds, job, at],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT org_id, dataset, first_seq, last_seq, job_id, at FROM ledger_ranges \
                 ORDER BY last_seq",
            )
            .unwrap();
        let ranges: Vec<(i64, String, i64, i64, i64, String)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = [
            (1, "a", 1, 3, 10, "t1"),
            (2, "a", 4, 5, 11, "t1"),
            (1, "a", 6, 7, 10, "t2"),
            (1, "a", 8, 8, 12, "t2"),
            (1, "a", 10, 10, 12, "t2"),
            (1, "b", 11, 11, 12, "t2"),
        ];
        let want: Vec<(i64, String, i64, i64, i64, String)> = want
            .iter()
            .map(|&(o, d, f, l, j, a)| (o, d.to_string(), f, l, j, a.to_string()))
            .collect();
        assert_eq!(ranges, want);
    }
}
