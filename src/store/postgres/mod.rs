//! The PostgreSQL backend: the job store and the dataset tables in one PostgreSQL database, shared
//! by any number of `sluice serve` and `sluice worker` processes on any number of machines.
//!
//! Workers claim with `FOR UPDATE SKIP LOCKED` and own jobs by lease, exactly as on SQLite; new
//! claimable jobs are announced with `NOTIFY sluice_jobs` so idle workers wake at once (polling
//! stays as the fallback). Batches are written by COPY into a temporary staging table and
//! set-based statements from it (`writer.rs`). Migrations are `migrations/postgres/`, applied
//! under an advisory lock and recorded in `sluice_migrations`. Uses the synchronous `postgres`
//! client: the store interface is blocking and always called from blocking threads.

mod blobs;
mod control;
mod hooks;
mod jobs;
mod tables;
mod tenants;
mod writer;

use std::sync::Mutex;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::pool::{Pool, Pooled};
use super::{StoreError, StoreResult};

/// Migrations in order; the same numbering and meaning as on SQLite. Append only.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_jobs",
        include_str!("../../../migrations/postgres/0001_jobs.sql"),
    ),
    (
        2,
        "0002_job_control",
        include_str!("../../../migrations/postgres/0002_job_control.sql"),
    ),
    (
        3,
        "0003_blobs",
        include_str!("../../../migrations/postgres/0003_blobs.sql"),
    ),
    (
        4,
        "0004_chunks",
        include_str!("../../../migrations/postgres/0004_chunks.sql"),
    ),
    (
        5,
        "0005_events_webhooks_templates",
        include_str!("../../../migrations/postgres/0005_events_webhooks_templates.sql"),
    ),
    (
        6,
        "0006_tenants",
        include_str!("../../../migrations/postgres/0006_tenants.sql"),
    ),
    (
        7,
        "0007_org_templates",
        include_str!("../../../migrations/postgres/0007_org_templates.sql"),
    ),
];

/// Key of the advisory lock that serialises migrations and table preparation across processes.
const SCHEMA_LOCK: i64 = 0x5111_CE00;

/// The channel that announces claimable jobs.
const CHANNEL: &str = "sluice_jobs";

const POOL_IDLE: usize = 8;

pub struct PgStore {
    url: String,
    /// How long a statement waits for a lock another session holds (`lock_timeout`).
    lock_timeout: Duration,
    pool: Pool<Client>,
    /// A connection that LISTENs on [`CHANNEL`], opened by the first `jobs_wait`.
    listener: Mutex<Option<Client>>,
}

impl PgStore {
    /// Connects, and creates or upgrades the job store schema.
    pub fn open(url: &str, lock_timeout: Duration) -> StoreResult<Self> {
        let u = url.to_string();
        let store = Self {
            url: url.to_string(),
            lock_timeout,
            pool: Pool::new(
                POOL_IDLE,
                Box::new(move || connect(&u, lock_timeout)),
                |c: &Client| !c.is_closed(),
            ),
            listener: Mutex::new(None),
        };
        let mut conn = store.conn()?;
        migrate(&mut conn)?;
        drop(conn);
        Ok(store)
    }

    fn conn(&self) -> StoreResult<Pooled<'_, Client>> {
        self.pool.get()
    }
}

fn connect(url: &str, lock_timeout: Duration) -> StoreResult<Client> {
    let mut client = Client::connect(url, NoTls).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot connect to PostgreSQL: {}",
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string())
        ))
    })?;
    client
        .batch_execute(&format!(
            "SET TIME ZONE 'UTC'; SET application_name = 'sluice'; SET lock_timeout = {}",
            lock_timeout.as_millis().max(1)
        ))
        .map_err(pg_err)?;
    Ok(client)
}

fn migrate(client: &mut Client) -> StoreResult<()> {
    let mut tx = client.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sluice_migrations (version INT PRIMARY KEY, name TEXT NOT NULL, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .map_err(pg_err)?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM sluice_migrations",
            &[],
        )
        .map_err(pg_err)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if applied > known {
        return Err(StoreError::Other(format!(
            "the database was written by a newer sluice (schema version {applied}, this one knows {known})"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
        tx.batch_execute(sql).map_err(pg_err)?;
        tx.execute(
            "INSERT INTO sluice_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .map_err(pg_err)?;
        tracing::info!(migration = name, "applied migration");
    }
    tx.commit().map_err(pg_err)
}

/// True for errors worth retrying: connection loss, serialization failures, deadlocks, lack of
/// resources (disk full, too many connections), shutdown.
fn is_transient(e: &postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::LOCK_NOT_AVAILABLE
        }
    }
}

/// True for errors caused by the data of a row: integrity constraints and data exceptions.
fn is_row_problem(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("23") || c.code().starts_with("22"))
}

/// The server's message and SQLSTATE (for logs; never shown to API users).
fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn pg_err(e: postgres::Error) -> StoreError {
    let text = error_text(&e);
    if is_transient(&e) {
        StoreError::Unavailable(text)
    } else {
        StoreError::Other(text)
    }
}

/// Quotes an identifier that [`crate::dataset::is_identifier`] already accepted.
fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

impl Drop for PgStore {
    /// The `postgres` client closes its connection by blocking on its own runtime, which must
    /// not happen on an async thread: close them on a thread of their own.
    fn drop(&mut self) {
        let mut clients = self.pool.drain();
        if let Ok(mut listener) = self.listener.lock()
            && let Some(c) = listener.take()
        {
            clients.push(c);
        }
        if !clients.is_empty() {
            let _ = std::thread::spawn(move || drop(clients)).join();
        }
    }
}

impl PgStore {
    /// Blocks until a claimable job is announced or `timeout` passes.
    fn wait_for_notify(&self, timeout: Duration) -> StoreResult<bool> {
        let mut guard = self
            .listener
            .lock()
            .map_err(|_| StoreError::Other("listener lock poisoned".into()))?;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let mut client = connect(&self.url, self.lock_timeout)?;
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .map_err(pg_err)?;
            *guard = Some(client);
        }
        let result = match guard.as_mut() {
            None => Ok(false),
            Some(client) => {
                let mut notifications = client.notifications();
                let first = notifications.timeout_iter(timeout).next();
                match first {
                    Ok(Some(_)) => {
                        // Drain what else arrived: one wake-up is enough.
                        while let Ok(Some(_)) = notifications.iter().next() {}
                        Ok(true)
                    }
                    Ok(None) => Ok(false),
                    Err(e) => Err(pg_err(e)),
                }
            }
        };
        if result.is_err() {
            *guard = None;
        }
        result
    }
}
