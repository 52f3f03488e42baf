//! The PostgreSQL backend: the job store and the dataset tables in one PostgreSQL database, shared
//! by any number of `sluice serve` and `sluice worker` processes on any number of machines.
//!
//! Workers claim with `FOR UPDATE SKIP LOCKED` and own jobs by lease, exactly as on SQLite; new
//! claimable jobs are announced with `NOTIFY sluice_jobs` so idle workers wake at once (polling
//! stays as the fallback). Batches are written by COPY into a temporary staging table and
//! set-based statements from it (`writer.rs`). Migrations are `migrations/postgres/`, applied
//! under an advisory lock and recorded in `sluice_migrations`. Uses the synchronous `postgres`
//! client: the store interface is blocking and always called from blocking threads.

mod binary;
mod blobs;
mod priority;
mod tables;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, GenericClient, NoTls};

use super::pool::{Check, Pool, Pooled};
use super::sql::{Dialect, Row, Sql, Value};
use super::{Backend, JobId, Lease, SqlStore, StoreError, StoreResult};
use crate::dataset::{Dataset, Datasets};
use crate::import::{BatchSink, Mode};

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
    (
        8,
        "0008_webhook_orgs",
        include_str!("../../../migrations/postgres/0008_webhook_orgs.sql"),
    ),
    (
        9,
        "0009_dataset_writer",
        include_str!("../../../migrations/postgres/0009_dataset_writer.sql"),
    ),
    (
        10,
        "0010_blob_orphans",
        include_str!("../../../migrations/postgres/0010_blob_orphans.sql"),
    ),
    (
        11,
        "0011_priority",
        include_str!("../../../migrations/postgres/0011_priority.sql"),
    ),
    (
        12,
        "0012_job_kinds",
        include_str!("../../../migrations/postgres/0012_job_kinds.sql"),
    ),
    (
        13,
        "0013_active_file_per_kind",
        include_str!("../../../migrations/postgres/0013_active_file_per_kind.sql"),
    ),
    (
        14,
        "0014_blob_chunks_lz4",
        include_str!("../../../migrations/postgres/0014_blob_chunks_lz4.sql"),
    ),
    (
        15,
        "0015_sources",
        include_str!("../../../migrations/postgres/0015_sources.sql"),
    ),
    (
        16,
        "0016_ledger",
        include_str!("../../../migrations/postgres/0016_ledger.sql"),
    ),
    (
        17,
        "0017_sync_keys",
        include_str!("../../../migrations/postgres/0017_sync_keys.sql"),
    ),
    (
        18,
        "0018_ledger_no_seq_index",
        include_str!("../../../migrations/postgres/0018_ledger_no_seq_index.sql"),
    ),
    (
        19,
        "0019_email_subscriptions",
        include_str!("../../../migrations/postgres/0019_email_subscriptions.sql"),
    ),
    (
        20,
        "0020_ledger_seq_by_writer",
        include_str!("../../../migrations/postgres/0020_ledger_seq_by_writer.sql"),
    ),
    (
        21,
        "0021_ledger_ranges",
        include_str!("../../../migrations/postgres/0021_ledger_ranges.sql"),
    ),
    (
        22,
        "0022_blob_chunks_uncompressed",
        include_str!("../../../migrations/postgres/0022_blob_chunks_uncompressed.sql"),
    ),
];

/// Key of the advisory lock that serialises migrations and table preparation across processes.
const SCHEMA_LOCK: i64 = 0x5111_CE00;

/// The channel that announces claimable jobs.
const CHANNEL: &str = "sluice_jobs";

/// The default cap on pooled connections per process (PostgreSQL allows 100 in all by default).
pub const DEFAULT_CONNECTIONS: u32 = 10;

/// The job store on PostgreSQL.
pub type PgStore = SqlStore<Postgres>;

/// The PostgreSQL backend of [`SqlStore`].
pub struct Postgres {
    url: String,
    /// How long a statement waits for a lock another session holds (`lock_timeout`).
    lock_timeout: Duration,
    pool: Pool<PgConn>,
    /// A connection that LISTENs on [`CHANNEL`], opened by the first `jobs_wait`.
    listener: Mutex<Option<Client>>,
}

impl SqlStore<Postgres> {
    /// Connects, and creates or upgrades the job store schema. At most `connections` pooled
    /// connections are open at once; a caller waits up to `wait` for one.
    pub fn open(
        url: &str,
        lock_timeout: Duration,
        connections: u32,
        wait: Duration,
    ) -> StoreResult<Self> {
        let u = url.to_string();
        let backend = Postgres {
            url: url.to_string(),
            lock_timeout,
            pool: Pool::new(
                connections,
                wait,
                move || connect(&u, lock_timeout).map(PgConn::new),
                PgConn::broken,
            ),
            listener: Mutex::new(None),
        };
        migrate(&mut *backend.pool.get_patiently(super::pool::STARTUP_WAIT)?)?;
        Ok(SqlStore(backend))
    }
}

impl Postgres {
    fn conn(&self) -> StoreResult<Pooled<PgConn>> {
        self.pool.get()
    }

    /// A batch writer's connection: its own for the whole job, outside the pool, and how to
    /// open the next one when it is lost (a restart, an outage). Its backend runs at the
    /// niceness of the job's thread ([`priority`]).
    fn sink_connection(&self) -> StoreResult<(Client, writer::Reconnect)> {
        let mut conn = self.pool.open()?.client;
        priority::follow_thread(&mut conn);
        let (url, lock_timeout) = (self.url.clone(), self.lock_timeout);
        let reconnect: writer::Reconnect = Box::new(move || {
            let mut conn = connect(&url, lock_timeout)?;
            priority::follow_thread(&mut conn);
            Ok(conn)
        });
        Ok((conn, reconnect))
    }
}

/// A pooled connection and the statements prepared on it, by their text: the store's statements
/// are fixed text, so each is parsed and planned once per connection, not on every call.
pub(super) struct PgConn {
    client: Client,
    statements: HashMap<String, postgres::Statement>,
    /// When it was last given back to the pool.
    idle_since: Instant,
    /// [`CONNECTIONS_LOST`] when it was last known to be alive.
    seen_losses: u64,
}

/// Connections found lost in this process (an error of class 08 or 57P, or none at all): a
/// pooled connection checked before the latest loss is asked once more before it is handed out.
static CONNECTIONS_LOST: AtomicU64 = AtomicU64::new(0);

/// A pooled connection idle for longer than this is asked with a round trip before it is handed
/// out: the server may have ended its session meanwhile without the client having read so yet.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Longest the round trip of that check may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

impl PgConn {
    fn new(client: Client) -> Self {
        Self {
            client,
            statements: HashMap::new(),
            idle_since: Instant::now(),
            seen_losses: CONNECTIONS_LOST.load(Ordering::Relaxed),
        }
    }

    /// The pool's check. Given back: the cheap look (see [`is_alive`]). Handed out: the same,
    /// plus a round trip (an empty query) when the connection sat idle for [`IDLE_CHECK`] or a
    /// connection was lost since it was last checked — so after a restart, the first failure
    /// makes every other idle connection prove itself before use. Connections in steady use
    /// pay nothing.
    fn broken(&mut self, check: Check) -> bool {
        if !is_alive(&mut self.client) {
            return true;
        }
        match check {
            Check::Returned => {
                self.idle_since = Instant::now();
                false
            }
            Check::CheckedOut => {
                let losses = CONNECTIONS_LOST.load(Ordering::Relaxed);
                if self.idle_since.elapsed() < IDLE_CHECK && self.seen_losses == losses {
                    return false;
                }
                self.seen_losses = losses;
                self.client.is_valid(PING_TIMEOUT).is_err()
            }
        }
    }
}

impl std::ops::Deref for PgConn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Statements kept per connection; past this the cache starts again (only fixed text is
/// cached, so this is never reached in practice).
const STATEMENT_CACHE: usize = 256;

/// A client or an open transaction on it, with its connection's statement cache, as the shared
/// store logic sees it.
struct Pg<'a, C> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, postgres::Statement>,
}

impl<C: GenericClient> Pg<'_, C> {
    fn statement(&mut self, sql: &str) -> StoreResult<postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(pg_err)?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

impl ToSql for Value {
    /// Binds to the type the server inferred for the parameter (an integer to `int4` or
    /// `int8`, a time to `timestamptz`), so statements are written once for both backends.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::FLOAT8 => (*n as f64).to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => n.to_string().to_sql(ty, out),
                _ => n.to_sql(ty, out),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Time(t) => match *ty {
                Type::TIMESTAMP => t.naive_utc().to_sql(ty, out),
                _ => t.to_sql(ty, out),
            },
            Value::Bool(b) => match *ty {
                Type::INT2 | Type::INT4 | Type::INT8 => Value::Int(i64::from(*b)).to_sql(ty, out),
                _ => b.to_sql(ty, out),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One column of a result row as a [`Value`], by its type.
fn column(r: &postgres::Row, i: usize) -> StoreResult<Value> {
    fn get<'a, T: postgres::types::FromSql<'a>>(
        r: &'a postgres::Row,
        i: usize,
        v: impl FnOnce(T) -> Value,
    ) -> StoreResult<Value> {
        r.try_get::<_, Option<T>>(i)
            .map(|o| o.map_or(Value::Null, v))
            .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
    }
    match *r.columns()[i].type_() {
        Type::INT2 => get(r, i, |n: i16| Value::Int(n.into())),
        Type::INT4 => get(r, i, |n: i32| Value::Int(n.into())),
        Type::INT8 => get(r, i, Value::Int),
        Type::FLOAT4 => get(r, i, |f: f32| Value::Real(f.into())),
        Type::FLOAT8 => get(r, i, Value::Real),
        Type::BOOL => get(r, i, Value::Bool),
        Type::TIMESTAMPTZ => get(r, i, Value::Time),
        Type::TIMESTAMP => get(r, i, |t: chrono::NaiveDateTime| Value::Time(t.and_utc())),
        _ => get(r, i, Value::Text),
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Rows streamed from a statement: inside a transaction (an export's snapshot), `COPY (…) TO
/// STDOUT` decoded by the statement's column types ([`copy_rows`]), else a portal fetched
/// [`PORTAL_ROWS`] rows at a time (the server keeps the rest); on a bare connection, the row
/// stream of one query.
trait Stream {
    fn stream(
        &mut self,
        sql: &str,
        statement: &postgres::Statement,
        params: &[Value],
        each: &mut dyn FnMut(&[Value]) -> StoreResult<bool>,
    ) -> StoreResult<u64>;
}

/// Rows per fetch of a portal.
const PORTAL_ROWS: i32 = 2_000;

/// The values of a row of the extended protocol.
fn row_values(r: &postgres::Row, values: &mut Vec<Value>) -> StoreResult<()> {
    values.clear();
    for i in 0..r.len() {
        values.push(column(r, i)?);
    }
    Ok(())
}

/// Whether a column's COPY text can be decoded as [`column`] decodes it.
fn copyable(ty: &Type) -> bool {
    [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::BOOL,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
    ]
    .contains(ty)
}

impl Stream for postgres::Transaction<'_> {
    fn stream(
        &mut self,
        sql: &str,
        statement: &postgres::Statement,
        params: &[Value],
        each: &mut dyn FnMut(&[Value]) -> StoreResult<bool>,
    ) -> StoreResult<u64> {
        let types: Vec<Type> = statement
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        if types.iter().all(copyable) {
            return copy_rows(self, sql, params, &types, each);
        }
        let portal = self.bind(statement, &refs(params)).map_err(pg_err)?;
        let (mut count, mut values) = (0, Vec::new());
        loop {
            let rows = self.query_portal(&portal, PORTAL_ROWS).map_err(pg_err)?;
            for r in &rows {
                count += 1;
                row_values(r, &mut values)?;
                if !each(&values)? {
                    return Ok(count);
                }
            }
            if rows.len() < PORTAL_ROWS as usize {
                return Ok(count);
            }
        }
    }
}

/// Streams a query's rows with `COPY (query) TO STDOUT`, the server's fastest way out (the
/// 700k-row export: 2.4 s through a portal). COPY takes no parameters, so each `$n` becomes
/// `CAST(current_setting('sluice.pN') AS type)`, set with `set_config` for this transaction
/// only: values still never enter the SQL text. The text format is decoded by the column types
/// of the prepared statement, into the same values as [`column`].
fn copy_rows(
    tx: &mut postgres::Transaction<'_>,
    sql: &str,
    params: &[Value],
    types: &[Type],
    each: &mut dyn FnMut(&[Value]) -> StoreResult<bool>,
) -> StoreResult<u64> {
    use std::io::BufRead;
    let cast = |v: &Value| match v {
        Value::Null => None,
        Value::Int(_) => Some("BIGINT"),
        Value::Real(_) => Some("DOUBLE PRECISION"),
        Value::Text(_) => Some("TEXT"),
        Value::Time(_) => Some("TIMESTAMPTZ"),
        Value::Bool(_) => Some("BOOLEAN"),
    };
    for (i, p) in params.iter().enumerate() {
        let text = match p {
            Value::Null => continue,
            Value::Int(n) => n.to_string(),
            Value::Real(f) => f.to_string(),
            Value::Text(t) => t.clone(),
            Value::Time(t) => t.to_rfc3339(),
            Value::Bool(b) => b.to_string(),
        };
        tx.execute(
            "SELECT set_config($1, $2, true)",
            &[&format!("sluice.p{}", i + 1), &text],
        )
        .map_err(pg_err)?;
    }
    let query = super::sql::placeholders(sql, |n| match params.get(n.wrapping_sub(1)) {
        Some(v) => match cast(v) {
            Some(ty) => format!("CAST(current_setting('sluice.p{n}') AS {ty})"),
            None => "NULL".to_string(),
        },
        // Not a parameter of this query: left for the server to refuse.
        None => format!("${n}"),
    });
    let mut reader = tx
        .copy_out(&format!("COPY ({query}) TO STDOUT"))
        .map_err(pg_err)?;
    let (mut line, mut field, mut values) = (Vec::new(), Vec::new(), Vec::new());
    let mut count = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| StoreError::Unavailable(format!("reading COPY data: {e}")))?;
        if n == 0 {
            return Ok(count);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        values.clear();
        for (i, raw) in line.split(|&b| b == b'\t').enumerate() {
            let ty = types
                .get(i)
                .ok_or_else(|| StoreError::Corrupt("COPY row wider than its query".into()))?;
            values.push(copy_value(raw, ty, &mut field)?);
        }
        if values.len() != types.len() {
            return Err(StoreError::Corrupt(
                "COPY row narrower than its query".into(),
            ));
        }
        count += 1;
        if !each(&values)? {
            return Ok(count);
        }
    }
}

/// One field of COPY's text format (`\N` is NULL; backslash escapes) as a value of its type.
fn copy_value(raw: &[u8], ty: &Type, buf: &mut Vec<u8>) -> StoreResult<Value> {
    if raw == b"\\N" {
        return Ok(Value::Null);
    }
    buf.clear();
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            buf.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => buf.push(b'\n'),
            Some(b'r') => buf.push(b'\r'),
            Some(b't') => buf.push(b'\t'),
            Some(b'b') => buf.push(8),
            Some(b'f') => buf.push(12),
            Some(b'v') => buf.push(11),
            Some(d @ b'0'..=b'7') => {
                // Up to three octal digits.
                let mut n = u32::from(d - b'0');
                for _ in 0..2 {
                    match bytes.clone().next() {
                        Some(d @ b'0'..=b'7') => {
                            n = n * 8 + u32::from(d - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                buf.push(n as u8);
            }
            Some(other) => buf.push(other),
            None => buf.push(b'\\'),
        }
    }
    let text = std::str::from_utf8(buf)
        .map_err(|_| StoreError::Corrupt("COPY data is not UTF-8".into()))?;
    let bad = || StoreError::Corrupt(format!("COPY value `{text}` is not a {ty}"));
    Ok(match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 => Value::Int(text.parse().map_err(|_| bad())?),
        Type::FLOAT4 | Type::FLOAT8 => Value::Real(text.parse().map_err(|_| bad())?),
        Type::BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(bad()),
        },
        _ => Value::Text(text.to_string()),
    })
}

impl Stream for Client {
    fn stream(
        &mut self,
        _sql: &str,
        statement: &postgres::Statement,
        params: &[Value],
        each: &mut dyn FnMut(&[Value]) -> StoreResult<bool>,
    ) -> StoreResult<u64> {
        let mut rows = self.query_raw(statement, refs(params)).map_err(pg_err)?;
        let (mut count, mut values) = (0, Vec::new());
        while let Some(r) = rows.next().map_err(pg_err)? {
            count += 1;
            row_values(&r, &mut values)?;
            if !each(&values)? {
                break;
            }
        }
        Ok(count)
    }
}

impl<C: GenericClient + Stream> Sql for Pg<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let statement = self.statement(sql)?;
        self.client
            .execute(&statement, &refs(params))
            .map_err(pg_err)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        let statement = self.statement(sql)?;
        self.client
            .query(&statement, &refs(params))
            .map_err(pg_err)?
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| column(r, i))
                    .collect::<StoreResult<_>>()
                    .map(Row)
            })
            .collect()
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&[Value]) -> bool,
    ) -> StoreResult<u64> {
        let statement = self.statement(sql)?;
        self.client
            .stream(sql, &statement, params, &mut |values| Ok(each(values)))
    }

    fn notify_jobs(&mut self) -> StoreResult<()> {
        self.client
            .execute("SELECT pg_notify($1, '')", &[&CHANNEL])
            .map_err(pg_err)?;
        Ok(())
    }

    fn lock_key(&mut self, key: &str) -> StoreResult<()> {
        self.client
            .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])
            .map_err(pg_err)?;
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> StoreResult<()> {
        self.client.batch_execute(sql).map_err(pg_err)
    }
}

impl Backend for Postgres {
    fn pool_state(&self) -> crate::store::PoolState {
        self.pool.state()
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let PgConn {
            client, statements, ..
        } = &mut *conn;
        f(&mut Pg { client, statements })
    }

    fn write<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let PgConn {
            client, statements, ..
        } = &mut *conn;
        let mut tx = client.transaction().map_err(pg_err)?;
        let done = f(&mut Pg {
            client: &mut tx,
            statements,
        })?;
        tx.commit().map_err(pg_err)?;
        Ok(done)
    }

    /// `REPEATABLE READ READ ONLY`: every statement sees the database as of the first one.
    fn snapshot<T>(&self, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let PgConn {
            client, statements, ..
        } = &mut *conn;
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(pg_err)?;
        let done = f(&mut Pg {
            client: &mut tx,
            statements,
        })?;
        tx.commit().map_err(pg_err)?;
        Ok(done)
    }

    fn write_nowait(&self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let mut conn = self
            .pool
            .try_get()
            .ok_or_else(|| StoreError::Busy("no idle connection".into()))?;
        let PgConn {
            client, statements, ..
        } = &mut *conn;
        let mut tx = nowait(client).map_err(pg_err)?;
        let n = Pg {
            client: &mut tx,
            statements,
        }
        .execute(sql, params)?;
        tx.commit().map_err(pg_err)?;
        Ok(n)
    }

    fn ledger_written(&self) {
        if let Err(e) = self.write_nowait(crate::store::ledger::SUMMARIZE_SQL, &[]) {
            tracing::debug!(error = %e, "the ledger's new block ranges are left for later");
        }
    }

    fn datasets_prepare(&self, datasets: &Datasets) -> StoreResult<()> {
        tables::prepare(&mut *self.conn()?, datasets)
    }

    fn dataset_prepare(&self, dataset: &Dataset) -> StoreResult<()> {
        tables::prepare_dataset(&mut *self.conn()?, dataset)
    }

    fn batch_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        parent: Option<JobId>,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>> {
        let (conn, reconnect) = self.sink_connection()?;
        Ok(Box::new(writer::PgSink::new(
            conn, reconnect, dataset, lease, mode, parent, org,
        )))
    }

    fn analysis_sink(
        &self,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        org: i64,
    ) -> StoreResult<Box<dyn BatchSink + Send>> {
        let (conn, reconnect) = self.sink_connection()?;
        Ok(Box::new(
            writer::PgSink::new(conn, reconnect, dataset, lease, mode, None, org).dry(),
        ))
    }

    fn announces_jobs(&self) -> bool {
        true
    }

    fn jobs_wait(&self, timeout: Duration) -> StoreResult<bool> {
        self.wait_for_notify(timeout)
    }

    fn keeps_blobs(&self) -> bool {
        true
    }

    fn blob_write(&self, name: &str, from: &mut dyn std::io::Read) -> StoreResult<u64> {
        self.write_blob(name, from)
    }

    fn blob_write_many(
        &self,
        names: &[String],
        pieces: &mut dyn Iterator<Item = StoreResult<(usize, Vec<u8>)>>,
    ) -> StoreResult<()> {
        self.write_blobs(names, pieces)
    }

    fn blob_append(&self, name: &str, seq: i32, data: &[u8]) -> StoreResult<()> {
        self.append_blob(name, seq, data)
    }

    fn blob_size(&self, name: &str) -> StoreResult<u64> {
        self.blob_bytes(name)
    }

    fn blob_read(&self, name: &str, to: &mut dyn std::io::Write) -> StoreResult<u64> {
        self.read_blob(name, to)
    }

    fn blob_delete(&self, name: &str) -> StoreResult<()> {
        self.delete_blob(name)
    }

    fn blob_orphans(&self, before: chrono::DateTime<chrono::Utc>) -> StoreResult<Vec<String>> {
        self.orphan_blobs(before)
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

/// A transaction for a best-effort write: it gives up at once on a lock, and does not wait for
/// its commit to reach the disk (losing it in a crash is harmless).
fn nowait(client: &mut Client) -> Result<postgres::Transaction<'_>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL lock_timeout = '1ms'; SET LOCAL synchronous_commit = off")?;
    Ok(tx)
}

/// Whether a connection is still usable, found without a round trip: polls it once without
/// blocking, which reads what the server may have sent meanwhile — when the server stops or
/// restarts, it ends every session with a FATAL message (57P01) and closes the socket — and
/// closes the client if so. A connection that failed silently (a network partition) is found by
/// its next statement's error instead.
fn is_alive(client: &mut Client) -> bool {
    if client.is_closed() {
        return false;
    }
    let polled = client.notifications().iter().next();
    polled.is_ok() && !client.is_closed()
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

/// True for errors that mean the connection itself is gone: no SQLSTATE (closed, I/O), class
/// 08 (connection exception), or 57P01–57P03 (the server shut down, crashed or is starting).
fn is_connection_lost(e: &postgres::Error) -> bool {
    e.code().is_none_or(|c| {
        let c = c.code();
        c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
    })
}

/// Counts the error in [`CONNECTIONS_LOST`] when it means a lost connection.
fn note_lost(e: &postgres::Error) {
    if is_connection_lost(e) {
        CONNECTIONS_LOST.fetch_add(1, Ordering::Relaxed);
    }
}

fn pg_err(e: postgres::Error) -> StoreError {
    note_lost(&e);
    let text = error_text(&e);
    if e.code() == Some(&SqlState::DISK_FULL) {
        StoreError::Full(text)
    } else if is_transient(&e) {
        StoreError::Unavailable(text)
    } else {
        StoreError::Other(text)
    }
}

/// Quotes an identifier that [`crate::dataset::is_identifier`] already accepted.
fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

impl Drop for Postgres {
    /// The `postgres` client closes its connection by blocking on its own runtime, which must
    /// not happen on an async thread: close the listener on a thread of its own (the pool does
    /// the same for its connections).
    fn drop(&mut self) {
        if let Ok(mut listener) = self.listener.lock()
            && let Some(c) = listener.take()
        {
            let _ = std::thread::spawn(move || drop(c)).join();
        }
    }
}

impl Postgres {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 0021 builds one range per run of consecutive cursors of one organisation,
    /// dataset, job and time, from the entries written before it (on the server of
    /// `SLUICE_TEST_POSTGRES`, in a database of its own; skipped without it).
    #[test]
    fn ledger_ranges_are_built_for_the_entries_already_written() {
        let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES") else {
            return;
        };
        let name = format!("sluice_t_ranges_{}", std::process::id());
        let mut admin = Client::connect(&format!("{url}/postgres"), NoTls).unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin.batch_execute(&sql).unwrap();
        }
        let mut client = Client::connect(&format!("{url}/{name}"), NoTls).unwrap();
        client
            .batch_execute(
                "CREATE TABLE sluice_migrations (version INT PRIMARY KEY, name TEXT NOT NULL, \
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .unwrap();
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 < 21) {
            client.batch_execute(sql).unwrap();
            client
                .execute(
                    "INSERT INTO sluice_migrations (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .unwrap();
        }
        // (seq, org, dataset, job, second of `at`); 9 is a rolled-back batch's.
        let entries: [(i64, i64, &str, i64, f64); 10] = [
            (1, 1, "a", 10, 1.0),
            (2, 1, "a", 10, 1.0),
            (3, 1, "a", 10, 1.0),
            (4, 2, "a", 11, 1.0),
            (5, 2, "a", 11, 1.0),
            (6, 1, "a", 10, 2.0),
            (7, 1, "a", 10, 2.0),
            (8, 1, "a", 12, 2.0),
            (10, 1, "a", 12, 2.0),
            (11, 1, "b", 12, 2.0),
        ];
        for (seq, org, ds, job, at) in entries {
            client
                .execute(
                    "INSERT INTO ledger (seq, org_id, dataset, job_id, op, key, at) \
                     VALUES ($1, $2, $3, $4, 'created', '{}', to_timestamp($5))",
                    &[&seq, &org, &ds, &job, &at],
                )
                .unwrap();
        }
        let built = migrate(&mut client).and_then(|()| {
            client
                .query(
                    "SELECT org_id, dataset, first_seq, last_seq, job_id, \
                     CAST(extract(epoch FROM at) AS FLOAT8) FROM ledger_ranges ORDER BY last_seq",
                    &[],
                )
                .map_err(pg_err)
        });
        drop(client);
        admin
            .batch_execute(&format!("DROP DATABASE {name}"))
            .unwrap();
        let ranges: Vec<(i64, String, i64, i64, i64, f64)> = built
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect();
        let want = [
            (1, "a", 1, 3, 10, 1.0),
            (2, "a", 4, 5, 11, 1.0),
            (1, "a", 6, 7, 10, 2.0),
            (1, "a", 8, 8, 12, 2.0),
            (1, "a", 10, 10, 12, 2.0),
            (1, "b", 11, 11, 12, 2.0),
        ];
        let want: Vec<(i64, String, i64, i64, i64, f64)> = want
            .iter()
            .map(|&(o, d, f, l, j, a)| (o, d.to_string(), f, l, j, a))
            .collect();
        assert_eq!(ranges, want);
    }

    #[test]
    fn copy_text_fields_decode_by_column_type() {
        let mut buf = Vec::new();
        let mut value = |raw: &[u8], ty: &Type| copy_value(raw, ty, &mut buf).unwrap();
        assert_eq!(value(b"\\N", &Type::TEXT), Value::Null);
        assert_eq!(value(b"\\N", &Type::INT8), Value::Null);
        assert_eq!(
            value(b"a\\tb\\nc\\\\d\\re\\101", &Type::TEXT),
            Value::Text("a\tb\nc\\d\reA".into())
        );
        assert_eq!(
            value("é\\\\N".as_bytes(), &Type::TEXT),
            Value::Text("é\\N".into())
        );
        assert_eq!(value(b"-42", &Type::INT8), Value::Int(-42));
        assert_eq!(value(b"t", &Type::BOOL), Value::Bool(true));
        assert_eq!(value(b"f", &Type::BOOL), Value::Bool(false));
        assert_eq!(value(b"1.5", &Type::FLOAT8), Value::Real(1.5));
        assert!(copy_value(b"x", &Type::INT8, &mut Vec::new()).is_err());
        assert!(copy_value(b"\xff", &Type::TEXT, &mut Vec::new()).is_err());
    }
}
