//! The batch writer on SQLite: one transaction per batch.
//!
//! In that transaction: look up the batch's keys (one statement per 500 keys), classify each row
//! as new, changed, unchanged or a duplicate, upsert new and changed rows with prepared
//! multi-row statements, stamp unchanged rows with this job (so a later repeat of the key is
//! caught), archive changed history fields, store the row errors, and move the job's checkpoint
//! and counts — fenced by the lease. Every statement is scoped to the job's organisation
//! (`_sluice_org`, which leads the key). If the data statements fail as a whole (a constraint of the
//! table), the batch is redone row by row under savepoints so only the bad rows are rejected.
//! The ledger entries' JSON (keys, replaced values) is made on a second thread while the data
//! statements run: the writer's thread is an import's critical path on SQLite.
//!
//! A system error (disk full, I/O) normally leaves the connection usable: SQLite rolls the
//! transaction back. When the connection is still inside a transaction afterwards (the rollback
//! failed too), or the error repeats, the next attempt opens a new connection rather than trust
//! that one (opening costs a millisecond; the retry waits at least 100 ms anyway).

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::sync::Arc;

use rusqlite::types::{ToSql, ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior, params};
use rust_decimal::Decimal;

use super::now_text;
use super::raw::Statements;
use super::tables::since_column;
use super::{ident, is_transient};
use crate::dataset::Dataset;
use crate::import::{Batch, BatchCounts, BatchSink, Mode, RowError, SinkError, Value};
use crate::store::ledger::{self, Op};
use crate::store::{Lease, ORG_COLUMN, StoreResult};

/// The batch's maps of keys: hashed with foldhash (randomly seeded per process) rather than
/// SipHash, whose hashing was a few per cent of an update pass's writer thread.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Keys looked up per statement.
const LOOKUP_CHUNK: usize = 500;

/// Rows from which a batch's ledger entries are made on a thread of their own (a row at a time,
/// when a batch is redone row by row, they are made in place).
const ENTRIES_APART: usize = 256;

/// Upper bound of rows per multi-row INSERT (SQLite allows 32,766 bound values).
const MAX_ROWS_PER_INSERT: usize = 500;
const MAX_BINDS: usize = 32_000;

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Text(s) | Value::Date(s) | Value::DateTime(s) => {
                ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
            }
            Value::Int(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Value::Decimal(d) => ToSqlOutput::Owned(SqlValue::Text(d.to_string())),
            Value::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
        })
    }
}

/// A key as a map key: the stored SQL values, tagged by kind.
fn key_of<'a>(parts: impl Iterator<Item = ValueRef<'a>>) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(24);
    for p in parts {
        // Writing into a String cannot fail.
        let _ = match p {
            ValueRef::Integer(i) => write!(key, "i{i}\u{1f}"),
            ValueRef::Text(t) => write!(key, "t{}\u{1f}", String::from_utf8_lossy(t)),
            ValueRef::Real(r) => write!(key, "r{r}\u{1f}"),
            ValueRef::Null | ValueRef::Blob(_) => write!(key, "n\u{1f}"),
        };
    }
    key
}

/// The key of a row of the batch, the same text [`key_of`] makes of the stored key (written
/// straight into one string: this runs several times per row).
fn sql_key(values: &[Value], key: &[usize]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(24);
    for &k in key {
        let _ = match &values[k] {
            Value::Null => write!(out, "n\u{1f}"),
            Value::Text(s) | Value::Date(s) | Value::DateTime(s) => write!(out, "t{s}\u{1f}"),
            Value::Int(i) => write!(out, "i{i}\u{1f}"),
            Value::Decimal(d) => write!(out, "t{d}\u{1f}"),
            Value::Bool(b) => write!(out, "i{}\u{1f}", i64::from(*b)),
        };
    }
    out
}

/// Whether the stored value differs from the new one; decimals compare by value.
fn differs(new: &Value, old: ValueRef<'_>) -> bool {
    match (new, old) {
        (Value::Null, ValueRef::Null) => false,
        (Value::Decimal(d), ValueRef::Text(t)) => std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.parse::<Decimal>().ok())
            .is_none_or(|o| o != *d),
        (Value::Int(i), ValueRef::Integer(o)) => *i != o,
        (Value::Bool(b), ValueRef::Integer(o)) => i64::from(*b) != o,
        (Value::Text(s) | Value::Date(s) | Value::DateTime(s), ValueRef::Text(o)) => {
            s.as_bytes() != o
        }
        _ => true,
    }
}

/// A stored value as text (the ledger's JSON is made from text, as on PostgreSQL).
fn sql_text(v: ValueRef<'_>) -> Option<Cow<'_, str>> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string().into()),
        ValueRef::Real(r) => Some(r.to_string().into()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t)),
        ValueRef::Blob(_) => Some("<blob>".into()),
    }
}

/// The ledger entries of `rows` (created, or updated with the stored values they replace).
/// A batch's ledger entries: their keys' and replaced values' JSON in one buffer, and where
/// each lies in it. The sink keeps one and reuses it, so making a batch's entries allocates
/// nothing once it has grown (an entry's two strings each were allocated on one thread and
/// freed on the other).
#[derive(Default)]
struct Entries {
    text: Vec<u8>,
    /// Each entry's operation, key and (updated) replaced values, as spans of `text`.
    spans: Vec<(Op, Span, Option<Span>)>,
}

/// Where a text lies in [`Entries::text`]: start and end.
type Span = (usize, usize);

impl Entries {
    /// Makes the entries of `rows` (created, or updated with the stored values they replace).
    fn make(&mut self, ds: &Dataset, compare: &[usize], batch: &Batch, rows: &[Write<'_>]) {
        self.text.clear();
        self.spans.clear();
        for (i, changed) in rows {
            let start = self.text.len();
            ledger::key_json_into(&mut self.text, ds, batch.row_values(*i));
            let key = (start, self.text.len());
            let old = changed.as_ref().map(|(_, old)| {
                let start = self.text.len();
                ledger::texts_json_into(&mut self.text, ds, compare, |j| sql_text(old.value(j)));
                (start, self.text.len())
            });
            let op = if changed.is_some() {
                Op::Updated
            } else {
                Op::Created
            };
            self.spans.push((op, key, old));
        }
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn text(&self, (a, b): Span) -> &str {
        // Only whole UTF-8 strings and ASCII are written (see `ledger`).
        std::str::from_utf8(&self.text[a..b]).unwrap_or_default()
    }
}

/// Archived values per history statement (at most [`MAX_BINDS`] parameters).
const HISTORY_ROWS_PER_INSERT: usize = 200;

/// The history insert `head` (`INSERT INTO … VALUES`) with `rows` rows of `per_row` values each
/// (the key, field, old, new, valid_from), `?1`–`?3` the time (`valid_to`), job and
/// organisation shared.
fn history_sql(head: &str, rows: usize, per_row: usize) -> String {
    let mut sql = String::with_capacity(head.len() + rows * (per_row * 6 + 16));
    sql.push_str(head);
    for r in 0..rows {
        sql.push_str(if r == 0 { " (" } else { ", (" });
        for j in 0..per_row {
            sql.push_str(&format!("?{}, ", 4 + r * per_row + j));
        }
        sql.push_str("?1, ?2, ?3)");
    }
    sql
}

/// Ledger entries per statement: three values each, besides the four the batch shares.
const LEDGER_ROWS_PER_INSERT: usize = 1000;

/// `INSERT INTO ledger …` of `rows` entries: `?1`–`?4` the organisation, dataset, job and time,
/// then op, key and old of each entry.
fn ledger_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO ledger (org_id, dataset, job_id, at, op, key, old) VALUES ");
    for r in 0..rows {
        let p = 5 + 3 * r;
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(?1, ?2, ?3, ?4, ?{}, ?{}, ?{})", p, p + 1, p + 2));
    }
    sql
}

/// A value of a stored row the batch met; its bytes in [`Stored::bytes`].
#[derive(Debug, Clone, Copy)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(usize, usize),
    Blob(usize, usize),
}

/// The stored rows a batch met, by key, with their values in two buffers the batch shares: as
/// owned values a row took nine allocations, whose making and freeing were about 5 % of an
/// update pass's writer thread.
struct Stored {
    rows: HashMap<String, Existing>,
    cells: Vec<Cell>,
    bytes: Vec<u8>,
    /// Cells of a row before its `_sluice_since_*` ones: `plan.compare`'s length.
    compared: usize,
}

/// A stored row met by the batch. Its cells start at `first`: the values of `plan.compare`
/// fields, then the `_sluice_since_<field>` of `plan.history` fields, in that order.
struct Existing {
    first: usize,
    job: Option<i64>,
    row: Option<i64>,
}

impl Stored {
    fn new(rows: usize, compared: usize) -> Self {
        Self {
            rows: HashMap::with_capacity_and_hasher(rows, Default::default()),
            cells: Vec::new(),
            bytes: Vec::new(),
            compared,
        }
    }

    /// Appends a stored value as the next cell.
    fn push(&mut self, v: ValueRef<'_>) {
        let mut span = |b: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            (start, self.bytes.len())
        };
        let cell = match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Integer(i),
            ValueRef::Real(r) => Cell::Real(r),
            ValueRef::Text(t) => {
                let (a, b) = span(t);
                Cell::Text(a, b)
            }
            ValueRef::Blob(t) => {
                let (a, b) = span(t);
                Cell::Blob(a, b)
            }
        };
        self.cells.push(cell);
    }

    /// Marks `key` as written by `job` at `row` (a dry run's earlier batch), adding it with
    /// empty values when the table does not hold it.
    fn mark(&mut self, key: String, cells: usize, job: i64, row: i64) {
        use std::collections::hash_map::Entry;
        let first = self.cells.len();
        let old = match self.rows.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.cells.extend(std::iter::repeat_n(Cell::Null, cells));
                e.insert(Existing {
                    first,
                    job: None,
                    row: None,
                })
            }
        };
        old.job = Some(job);
        old.row = Some(row);
    }

    fn get(&self, key: &str) -> Option<Old<'_>> {
        self.rows.get(key).map(|found| Old {
            stored: self,
            found,
        })
    }
}

/// A stored row the batch met, read through the buffers holding its values.
#[derive(Clone, Copy)]
struct Old<'e> {
    stored: &'e Stored,
    found: &'e Existing,
}

impl<'e> Old<'e> {
    /// The `i`th of the row's cells: for `i` below `plan.compare`'s length, that field's value.
    fn value(&self, i: usize) -> ValueRef<'e> {
        let bytes = &self.stored.bytes;
        match self.stored.cells[self.found.first + i] {
            Cell::Null => ValueRef::Null,
            Cell::Integer(i) => ValueRef::Integer(i),
            Cell::Real(r) => ValueRef::Real(r),
            Cell::Text(a, b) => ValueRef::Text(&bytes[a..b]),
            Cell::Blob(a, b) => ValueRef::Blob(&bytes[a..b]),
        }
    }

    /// `_sluice_since_<field>` of the `h`th `plan.history` field.
    fn since(&self, h: usize) -> Option<&'e str> {
        match self.value(self.stored.compared + h) {
            ValueRef::Text(t) => std::str::from_utf8(t).ok(),
            _ => None,
        }
    }
}

/// A row to write: its index in the batch, and for an update the positions (in
/// `plan.compare`) of the fields that changed and the stored row. The stored row travels with
/// the entry, so the row's key is built once per batch, not again by each step that needs it.
type Write<'e> = (usize, Option<(Vec<usize>, Old<'e>)>);

/// SQL and field lists for one job, built at the first batch (they depend on which fields the
/// file has).
struct Plan {
    /// Fields the file provides, in field order (keys always among them).
    present: Vec<usize>,
    /// Present non-key fields: compared to decide changed/unchanged.
    compare: Vec<usize>,
    /// Present history fields, with their index in `compare`.
    history: Vec<(usize, usize)>,
    select_prefix: String,
    upsert_head: String,
    upsert_tail: String,
    /// The tail of an insert that skips existing keys (the fast path of [`WriteCtx::insert_all`]).
    insert_tail: String,
    /// Parameters of one row of the multi-row write: `present` fields, the row number, and
    /// (in an upsert, not in an insert of new keys) the `_sluice_since_*` of `history` fields.
    /// The values every row of the batch shares — job, time, organisation — are `?1`–`?3`,
    /// bound once per statement rather than once per row.
    row_params: usize,
    rows_per_insert: usize,
    stamp: String,
    history_insert: Option<String>,
    /// The texts of full-size multi-row statements, built at their first use: see [`sized`].
    full: FullTexts,
}

/// The text of each multi-row statement at its full size (10–30 KB each, made with a
/// `format!` per parameter), kept for the job: the text is only the prepared statement cache's
/// key, and building it for every statement cost about 5 % of the writer's time (much of it in
/// the allocator, consolidating its free lists for the large string).
#[derive(Default)]
struct FullTexts {
    upsert: OnceCell<String>,
    insert: OnceCell<String>,
    select: OnceCell<String>,
    ledger: OnceCell<String>,
    history: OnceCell<String>,
}

/// A statement's text for `rows` rows: `full`'s (built once) when `rows` is the full size, else
/// built now (a batch's last, shorter statement).
fn sized(
    full: &OnceCell<String>,
    full_rows: usize,
    rows: usize,
    build: impl Fn(usize) -> String,
) -> Cow<'_, str> {
    if rows == full_rows {
        Cow::Borrowed(full.get_or_init(|| build(rows)))
    } else {
        Cow::Owned(build(rows))
    }
}

impl Plan {
    fn new(ds: &Dataset, present_mask: &[bool]) -> Self {
        let present: Vec<usize> = (0..ds.fields.len())
            .filter(|&i| present_mask[i] || ds.is_key(i))
            .collect();
        let compare: Vec<usize> = present.iter().copied().filter(|&i| !ds.is_key(i)).collect();
        let history: Vec<(usize, usize)> = compare
            .iter()
            .enumerate()
            .filter(|(_, f)| ds.fields[**f].history)
            .map(|(pos, f)| (*f, pos))
            .collect();
        let table = ident(&ds.table);
        let name = |i: usize| ident(&ds.fields[i].name);
        let key_cols: Vec<String> = ds.key.iter().map(|&k| name(k)).collect();

        let mut select_cols: Vec<String> = key_cols.clone();
        select_cols.extend(compare.iter().map(|&i| name(i)));
        select_cols.push("_sluice_job".into());
        select_cols.push("_sluice_row".into());
        select_cols.extend(
            history
                .iter()
                .map(|(f, _)| since_column(&ds.fields[*f].name)),
        );
        let key_expr = if key_cols.len() == 1 {
            key_cols[0].clone()
        } else {
            format!("({})", key_cols.join(", "))
        };
        // The key is unique per organisation: every statement names the job's.
        let select_prefix = format!(
            "SELECT {} FROM {table} WHERE {ORG_COLUMN} = ? AND {key_expr} IN ",
            select_cols.join(", ")
        );

        let mut insert_cols: Vec<String> = present.iter().map(|&i| name(i)).collect();
        insert_cols.extend(
            [
                "_sluice_job",
                "_sluice_row",
                "_sluice_created_at",
                "_sluice_updated_at",
                ORG_COLUMN,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        insert_cols.extend(
            history
                .iter()
                .map(|(f, _)| since_column(&ds.fields[*f].name)),
        );
        let mut updates: Vec<String> = compare
            .iter()
            .map(|&i| format!("{0} = excluded.{0}", name(i)))
            .collect();
        updates.extend(
            ["_sluice_job", "_sluice_row", "_sluice_updated_at"]
                .iter()
                .map(|c| format!("{c} = excluded.{c}")),
        );
        updates.extend(history.iter().map(|(f, _)| {
            let c = since_column(&ds.fields[*f].name);
            format!("{c} = excluded.{c}")
        }));
        let width = insert_cols.len();
        let upsert_head = format!("INSERT INTO {table} ({}) VALUES ", insert_cols.join(", "));
        let upsert_tail = format!(
            " ON CONFLICT ({ORG_COLUMN}, {}) DO UPDATE SET {}",
            key_cols.join(", "),
            updates.join(", ")
        );
        let row_params = present.len() + 1 + history.len();
        let rows_per_insert = (MAX_BINDS / width).clamp(1, MAX_ROWS_PER_INSERT);

        let key_where: Vec<String> = key_cols
            .iter()
            .enumerate()
            .map(|(j, k)| format!("{k} = ?{}", j + 4))
            .collect();
        let stamp = format!(
            "UPDATE {table} SET _sluice_job = ?1, _sluice_row = ?2 WHERE {ORG_COLUMN} = ?3 AND {}",
            key_where.join(" AND ")
        );
        // The head of the history insert: rows are added by `history_sql`.
        let history_insert = (!history.is_empty()).then(|| {
            format!(
                "INSERT INTO {} ({}, field, old_value, new_value, valid_from, valid_to, job_id, {ORG_COLUMN}) \
                 VALUES",
                ident(&ds.history_table()),
                key_cols.join(", "),
            )
        });
        Plan {
            present,
            compare,
            history,
            select_prefix,
            upsert_head,
            upsert_tail,
            insert_tail: format!(
                " ON CONFLICT ({ORG_COLUMN}, {}) DO NOTHING",
                key_cols.join(", ")
            ),
            row_params,
            rows_per_insert,
            stamp,
            history_insert,
            full: FullTexts::default(),
        }
    }

    /// The multi-row write of `rows` rows: an upsert, or (`skip_existing`) an insert that
    /// leaves existing keys alone.
    fn upsert_sql(&self, rows: usize, skip_existing: bool) -> Cow<'_, str> {
        let full = if skip_existing {
            &self.full.insert
        } else {
            &self.full.upsert
        };
        sized(full, self.rows_per_insert, rows, |rows| {
            self.build_upsert_sql(rows, skip_existing)
        })
    }

    fn build_upsert_sql(&self, rows: usize, skip_existing: bool) -> String {
        use std::fmt::Write as _;
        let tail = if skip_existing {
            &self.insert_tail
        } else {
            &self.upsert_tail
        };
        let mut sql = String::with_capacity(
            self.upsert_head.len() + rows * (self.row_params * 7 + 24) + tail.len(),
        );
        sql.push_str(&self.upsert_head);
        let per_row = self.params_per_row(skip_existing);
        for r in 0..rows {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            let first = 4 + r * per_row;
            // The row's fields; writing into a String cannot fail.
            for p in first..first + self.present.len() {
                let _ = write!(sql, "?{p}, ");
            }
            // `_sluice_job`, the row's `_sluice_row`, `_created_at`, `_updated_at`, the
            // organisation.
            let _ = write!(sql, "?1, ?{}, ?2, ?2, ?3", first + self.present.len());
            for h in 0..self.history.len() {
                if skip_existing {
                    sql.push_str(", ?2");
                } else {
                    let _ = write!(sql, ", ?{}", first + self.present.len() + 1 + h);
                }
            }
            sql.push(')');
        }
        sql.push_str(tail);
        sql
    }

    /// Parameters each row of a multi-row write binds (see [`Plan::row_params`]): an insert of
    /// new keys stamps every `_sluice_since_*` with the batch's time (`?2`).
    fn params_per_row(&self, skip_existing: bool) -> usize {
        if skip_existing {
            self.row_params - self.history.len()
        } else {
            self.row_params
        }
    }

    fn select_sql(&self, keys: usize, key_width: usize) -> Cow<'_, str> {
        sized(&self.full.select, LOOKUP_CHUNK, keys, |keys| {
            self.build_select_sql(keys, key_width)
        })
    }

    fn build_select_sql(&self, keys: usize, key_width: usize) -> String {
        let one = if key_width == 1 {
            "?".to_string()
        } else {
            format!("({})", vec!["?"; key_width].join(", "))
        };
        let list = vec![one; keys].join(", ");
        if key_width == 1 {
            format!("{}({list})", self.select_prefix)
        } else {
            format!("{}(VALUES {list})", self.select_prefix)
        }
    }
}

/// What to do with one valid row of the batch.
enum Action {
    Insert,
    /// Update; `changed` lists positions in `plan.compare` whose value changes.
    Update {
        changed: Vec<usize>,
    },
    Unchanged,
    Reject(String),
}

/// Opens a new connection for the sink (with the batch writer's settings).
pub type Reopen = Box<dyn Fn() -> StoreResult<Connection> + Send>;

pub struct SqliteSink {
    /// The multi-row write statements of `conn` (declared first: finalized before `conn`
    /// closes; cleared when it is replaced).
    statements: RefCell<Statements>,
    /// Ledger entries' buffer, reused by every batch (see [`Entries`]).
    entries: RefCell<Entries>,
    conn: Connection,
    reopen: Reopen,
    /// The connection failed in a way that may have left it unusable: open a new one first.
    suspect: bool,
    /// System errors in a row.
    failures: u32,
    dataset: Arc<Dataset>,
    lease: Lease,
    mode: Mode,
    plan: Option<Plan>,
    /// A chunk job's parent: it receives the counts and row errors, and owns the stamps.
    parent: Option<i64>,
    /// The organisation whose rows the job writes.
    org: i64,
    /// An analysis (dry run): classify and count, write nothing but the job's own bookkeeping
    /// and its scratch key table ([`crate::store::scratch_table`]).
    dry: bool,
    /// Whether the scratch key table is known to exist.
    scratch_ready: bool,
    /// Told after each commit.
    checkpointer: Option<Arc<super::checkpoint::Checkpointer>>,
    /// The job's first batch, or the last batch created every row: the next one tries
    /// [`WriteCtx::insert_all`] first (a wrong guess costs one batch's inserts, rolled back).
    fresh: bool,
}

impl SqliteSink {
    pub fn new(
        conn: Connection,
        reopen: Reopen,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        parent: Option<i64>,
        org: i64,
    ) -> Self {
        Self {
            statements: RefCell::default(),
            entries: RefCell::default(),
            conn,
            reopen,
            suspect: false,
            failures: 0,
            dataset,
            lease,
            mode,
            plan: None,
            parent,
            org,
            dry: false,
            scratch_ready: false,
            checkpointer: None,
            fresh: true,
        }
    }

    /// Nudges `checkpointer` after each commit (the WAL is copied back off this thread).
    pub fn checkpointed_by(mut self, checkpointer: Arc<super::checkpoint::Checkpointer>) -> Self {
        self.checkpointer = Some(checkpointer);
        self
    }

    /// Makes this a dry-run writer (an analysis): the same lookup and decision, but instead of
    /// writing rows, stamps and history it records the keys it accepted in the job's scratch
    /// table, which the next batches' duplicate rule reads as the real writer reads its stamps.
    pub fn dry(mut self) -> Self {
        self.dry = true;
        self
    }

    /// The job that owns the rows, errors and counts: the parent of a chunk job, or the job.
    fn owner(&self) -> i64 {
        self.parent.unwrap_or(self.lease.job_id)
    }
}

fn sink_err(e: rusqlite::Error) -> SinkError {
    if is_transient(&e) {
        SinkError::Retryable(e.to_string())
    } else {
        SinkError::Fatal(e.to_string())
    }
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig)
    )
}

impl BatchSink for SqliteSink {
    fn commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError> {
        if self.suspect {
            self.statements.get_mut().clear();
            self.conn = (self.reopen)().map_err(|e| SinkError::Retryable(e.to_string()))?;
            self.suspect = false;
            tracing::info!("the batch writer opened a new database connection");
        }
        let result = self.try_commit(batch, checkpoint);
        if let Err(SinkError::Retryable(_)) = &result {
            self.failures += 1;
            self.suspect = !self.conn.is_autocommit() || self.failures >= 2;
        } else {
            self.failures = 0;
        }
        result
    }
}

impl SqliteSink {
    fn try_commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError> {
        let owner = self.owner();
        let plan = self
            .plan
            .get_or_insert_with(|| Plan::new(&self.dataset, &batch.present));
        let ctx = WriteCtx {
            ds: &self.dataset,
            plan,
            statements: &self.statements,
            entries: &self.entries,
            job: owner,
            org: self.org,
            mode: self.mode,
            now: now_text(),
            dry: self.dry,
        };
        let all: Vec<usize> = (0..batch.len()).collect();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sink_err)?;
        if ctx.dry && !self.scratch_ready {
            tx.execute_batch(&scratch_ddl(&self.dataset, owner))
                .map_err(sink_err)?;
        }
        let written = if self.fresh && !ctx.dry {
            ctx.insert_all(&tx, batch, &all)
                .and_then(|fast| match fast {
                    Some(counts) => Ok((counts, Vec::new())),
                    None => ctx.write_rows(&tx, batch, &all),
                })
        } else {
            ctx.write_rows(&tx, batch, &all)
        };
        let (mut counts, mut rejected) = match written {
            Ok(done) => done,
            Err(e) if is_constraint(&e) => {
                drop(tx);
                return self.commit_row_by_row(batch, checkpoint);
            }
            Err(e) => return Err(sink_err(e)),
        };
        rejected.extend(batch.errors.iter().cloned());
        counts.errors = rejected.len() as u64;
        finish_batch(
            &tx,
            &self.dataset,
            &self.lease,
            self.parent,
            &rejected,
            counts,
            checkpoint,
        )?;
        tx.commit().map_err(sink_err)?;
        if let Some(c) = &self.checkpointer {
            c.nudge();
        }
        self.fresh = !batch.is_empty() && counts.created == batch.len() as u64;
        self.scratch_ready = self.dry;
        Ok(counts)
    }
}

/// The dry-run writer's scratch key table: the dataset's key columns (their types, so values
/// compare as in the dataset table) and the row that first had the key.
fn scratch_ddl(ds: &Dataset, job: i64) -> String {
    let cols: Vec<String> = ds
        .key
        .iter()
        .map(|&k| {
            format!(
                "{} {} NOT NULL",
                ident(&ds.fields[k].name),
                super::tables::sql_type(ds.fields[k].ty)
            )
        })
        .collect();
    let keys: Vec<String> = ds.key.iter().map(|&k| ident(&ds.fields[k].name)).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, _sluice_row INTEGER NOT NULL, PRIMARY KEY ({})) WITHOUT ROWID",
        ident(&crate::store::scratch_table(job)),
        cols.join(", "),
        keys.join(", ")
    )
}

impl SqliteSink {
    /// Redoes a batch one row at a time, each under a savepoint, so a row the database refuses
    /// becomes a row error and the others are written.
    fn commit_row_by_row(
        &mut self,
        batch: &Batch,
        checkpoint: u64,
    ) -> Result<BatchCounts, SinkError> {
        let plan = self
            .plan
            .as_ref()
            .ok_or_else(|| SinkError::Fatal("no plan".into()))?;
        let ctx = WriteCtx {
            ds: &self.dataset,
            plan,
            statements: &self.statements,
            entries: &self.entries,
            job: self.owner(),
            org: self.org,
            mode: self.mode,
            now: now_text(),
            dry: self.dry,
        };
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sink_err)?;
        if ctx.dry {
            tx.execute_batch(&scratch_ddl(&self.dataset, ctx.job))
                .map_err(sink_err)?;
        }
        let mut counts = BatchCounts::default();
        let mut rejected = Vec::new();
        for i in 0..batch.len() {
            let sp = tx.savepoint().map_err(sink_err)?;
            match ctx.write_rows(&sp, batch, &[i]) {
                Ok((c, r)) => {
                    sp.commit().map_err(sink_err)?;
                    counts.created += c.created;
                    counts.updated += c.updated;
                    counts.unchanged += c.unchanged;
                    rejected.extend(r);
                }
                Err(e) if is_constraint(&e) => {
                    drop(sp);
                    rejected.push(batch.reject(i, &self.dataset.key, None, None, refusal(&e)));
                }
                Err(e) => return Err(sink_err(e)),
            }
        }
        rejected.extend(batch.errors.iter().cloned());
        counts.errors = rejected.len() as u64;
        finish_batch(
            &tx,
            &self.dataset,
            &self.lease,
            self.parent,
            &rejected,
            counts,
            checkpoint,
        )?;
        tx.commit().map_err(sink_err)?;
        if let Some(c) = &self.checkpointer {
            c.nudge();
        }
        Ok(counts)
    }
}

/// Why SQLite refused a row, without SQL: "constraint NAME failed" (SQLite's message names a
/// CHECK constraint, or the column of a UNIQUE/NOT NULL one, after a colon).
fn refusal(e: &rusqlite::Error) -> String {
    let text = e.to_string();
    let name = text
        .split_once("failed: ")
        .map(|(_, name)| name.trim())
        .filter(|n| !n.is_empty() && n.len() < 100 && !n.contains(' '));
    match name {
        Some(name) => format!("the database refused the row (constraint {name} failed)"),
        None => "the database refused the row (constraint failed)".to_string(),
    }
}

/// Stores the row errors and moves the checkpoint and counts, fenced by the lease.
fn finish_batch(
    tx: &Transaction<'_>,
    ds: &Dataset,
    lease: &Lease,
    parent: Option<i64>,
    rejected: &[RowError],
    counts: BatchCounts,
    checkpoint: u64,
) -> Result<(), SinkError> {
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO job_errors (job_id, row, column, value, message, record, key) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sink_err)?;
        for e in rejected {
            let record = serde_json::to_string(&e.record).unwrap_or_else(|_| "[]".into());
            let key = e.key.as_ref().map(|k| ledger::key_values_json(ds, k));
            insert
                .execute(params![
                    parent.unwrap_or(lease.job_id),
                    e.row as i64,
                    e.column,
                    e.value,
                    e.message,
                    record,
                    key
                ])
                .map_err(sink_err)?;
        }
    }
    let add = |job: i64, fence: &str, extra: &str| -> Result<usize, SinkError> {
        tx.execute(
            &format!(
                "UPDATE jobs SET created_count = created_count + ?1, updated_count = updated_count + ?2, \
                 unchanged_count = unchanged_count + ?3, error_count = error_count + ?4, \
                 batches_done = batches_done + 1 {extra} WHERE id = ?5 {fence}"
            ),
            params![
                counts.created as i64,
                counts.updated as i64,
                counts.unchanged as i64,
                counts.errors as i64,
                job,
                lease.token,
                checkpoint as i64
            ],
        )
        .map_err(sink_err)
    };
    // The chunk's (or job's) own row: checkpoint and counts, fenced by the lease.
    let n = add(
        lease.job_id,
        "AND lease_token = ?6 AND status = 'processing'",
        ", rows_done = ?7",
    )?;
    if n != 1 {
        return Err(SinkError::LeaseLost);
    }
    // A chunk's parent shows the progress of the whole file.
    if let Some(parent) = parent {
        add(parent, "AND ?6 IS NOT NULL AND ?7 IS NOT NULL", "")?;
    }
    Ok(())
}

struct WriteCtx<'a> {
    ds: &'a Dataset,
    plan: &'a Plan,
    /// The connection's multi-row write statements.
    statements: &'a RefCell<Statements>,
    /// The sink's buffer for ledger entries, reused batch after batch.
    entries: &'a RefCell<Entries>,
    job: i64,
    org: i64,
    mode: Mode,
    now: String,
    /// A dry run: see [`SqliteSink::dry`].
    dry: bool,
}

impl WriteCtx<'_> {
    /// Writes the given valid rows of the batch; returns the counts and the rows rejected for
    /// their key (duplicates, or existing keys in insert mode).
    fn write_rows(
        &self,
        tx: &Connection,
        batch: &Batch,
        rows: &[usize],
    ) -> rusqlite::Result<(BatchCounts, Vec<RowError>)> {
        let mut existing = if self.dry && self.mode == Mode::Replace {
            // A replace job writes into an empty staging table.
            Stored::new(0, self.plan.compare.len())
        } else {
            self.lookup(tx, batch, rows)?
        };
        if self.dry {
            // Keys accepted by earlier batches of this dry run are what the real writer's
            // stamps (`_sluice_job` = this job) would be.
            let cells = self.plan.compare.len() + self.plan.history.len();
            for (key, row) in self.lookup_seen(tx, batch, rows)? {
                existing.mark(key, cells, self.job, row);
            }
        }
        let mut counts = BatchCounts::default();
        let mut rejected = Vec::new();
        let mut seen: HashMap<String, u64> =
            HashMap::with_capacity_and_hasher(rows.len(), Default::default());
        let mut upserts: Vec<Write<'_>> = Vec::new();
        let mut unchanged: Vec<usize> = Vec::new();
        for &i in rows {
            let values = batch.row_values(i);
            let key = sql_key(values, &self.ds.key);
            let found = existing.get(&key);
            let action = if let Some(first) = seen.get(&key) {
                Action::Reject(format!("duplicate key, first seen at row {first}"))
            } else {
                self.decide(values, found)
            };
            match action {
                Action::Reject(message) => {
                    let (column, value) = self.key_cell(values);
                    rejected.push(batch.reject(i, &self.ds.key, column, value, message));
                    continue;
                }
                Action::Insert => {
                    counts.created += 1;
                    upserts.push((i, None));
                }
                Action::Update { changed } => {
                    counts.updated += 1;
                    // `decide` says Update only of a stored row.
                    if let Some(old) = found {
                        upserts.push((i, Some((changed, old))));
                    }
                }
                Action::Unchanged => {
                    counts.unchanged += 1;
                    unchanged.push(i);
                }
            }
            seen.insert(key, batch.rows[i]);
        }
        if self.dry {
            let accepted: Vec<usize> = upserts.iter().map(|(i, _)| *i).chain(unchanged).collect();
            self.remember(tx, batch, &accepted)?;
            return Ok((counts, rejected));
        }
        self.write_and_ledger(tx, batch, &upserts, true, || {
            self.upsert(tx, batch, &upserts, false)?;
            self.stamp(tx, batch, &unchanged)?;
            self.archive(tx, batch, &upserts)
        })?;
        Ok((counts, rejected))
    }

    /// The fast path of a batch whose keys are all expected to be new (the job's previous batch
    /// created every row: an initial import): every row inserted at once, no lookup. When a key
    /// exists after all (a row of an earlier batch, a duplicate in this one, another job's row),
    /// fewer rows are written: the attempt is rolled back to its savepoint and `None` returned,
    /// so the batch goes the usual way.
    fn insert_all(
        &self,
        tx: &Connection,
        batch: &Batch,
        rows: &[usize],
    ) -> rusqlite::Result<Option<BatchCounts>> {
        let all: Vec<Write<'_>> = rows.iter().map(|&i| (i, None)).collect();
        tx.execute_batch("SAVEPOINT sluice_insert_all")?;
        let written = self.upsert(tx, batch, &all, true)?;
        if written != rows.len() {
            tx.execute_batch("ROLLBACK TO sluice_insert_all; RELEASE sluice_insert_all")?;
            return Ok(None);
        }
        tx.execute_batch("RELEASE sluice_insert_all")?;
        // The entries made here, not beside the insert: in an initial import the reader's
        // thread is as busy as this one, and a third thread slowed both (measured).
        self.write_and_ledger(tx, batch, &all, false, || Ok(()))?;
        Ok(Some(BatchCounts {
            created: rows.len() as u64,
            ..BatchCounts::default()
        }))
    }

    /// A dry run's keys already accepted (in earlier batches), with their first row.
    fn lookup_seen(
        &self,
        tx: &Connection,
        batch: &Batch,
        rows: &[usize],
    ) -> rusqlite::Result<HashMap<String, i64>> {
        let key = &self.ds.key;
        let keys: Vec<String> = key
            .iter()
            .map(|&k| ident(&self.ds.fields[k].name))
            .collect();
        let key_expr = if keys.len() == 1 {
            keys[0].clone()
        } else {
            format!("({})", keys.join(", "))
        };
        let one = if key.len() == 1 {
            "?".to_string()
        } else {
            format!("({})", vec!["?"; key.len()].join(", "))
        };
        let table = ident(&crate::store::scratch_table(self.job));
        let mut found = HashMap::default();
        for chunk in rows.chunks(LOOKUP_CHUNK) {
            let list = vec![one.as_str(); chunk.len()].join(", ");
            let list = if key.len() == 1 {
                format!("({list})")
            } else {
                format!("(VALUES {list})")
            };
            let sql = format!(
                "SELECT {}, _sluice_row FROM {table} WHERE {key_expr} IN {list}",
                keys.join(", ")
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let mut idx = 1;
            for &i in chunk {
                let values = batch.row_values(i);
                for &k in key {
                    stmt.raw_bind_parameter(idx, &values[k])?;
                    idx += 1;
                }
            }
            let mut result = stmt.raw_query();
            while let Some(r) = result.next()? {
                let k = key_of((0..key.len()).map(|j| r.get_ref(j).unwrap_or(ValueRef::Null)));
                found.insert(k, r.get(key.len())?);
            }
        }
        Ok(found)
    }

    /// Records a dry run's accepted keys in its scratch table.
    fn remember(&self, tx: &Connection, batch: &Batch, rows: &[usize]) -> rusqlite::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let key = &self.ds.key;
        let keys: Vec<String> = key
            .iter()
            .map(|&k| ident(&self.ds.fields[k].name))
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}, _sluice_row) VALUES ({}, ?)",
            ident(&crate::store::scratch_table(self.job)),
            keys.join(", "),
            vec!["?"; key.len()].join(", ")
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        for &i in rows {
            let values = batch.row_values(i);
            for (j, &k) in key.iter().enumerate() {
                stmt.raw_bind_parameter(j + 1, &values[k])?;
            }
            stmt.raw_bind_parameter(key.len() + 1, batch.rows[i] as i64)?;
            stmt.raw_execute()?;
        }
        Ok(())
    }

    fn key_cell(&self, values: &[Value]) -> (Option<&str>, Option<String>) {
        let k = self.ds.key[0];
        (Some(self.ds.fields[k].name.as_str()), values[k].to_text())
    }

    fn decide(&self, values: &[Value], found: Option<Old<'_>>) -> Action {
        let Some(old) = found else {
            return Action::Insert;
        };
        if old.found.job == Some(self.job) {
            let first = old
                .found
                .row
                .map_or_else(|| "?".to_string(), |r| r.to_string());
            return Action::Reject(format!("duplicate key, first seen at row {first}"));
        }
        if self.mode == Mode::Insert {
            return Action::Reject("key already exists (mode=insert)".into());
        }
        let changed: Vec<usize> = self
            .plan
            .compare
            .iter()
            .enumerate()
            .filter(|(pos, f)| differs(&values[**f], old.value(*pos)))
            .map(|(pos, _)| pos)
            .collect();
        if changed.is_empty() {
            Action::Unchanged
        } else {
            Action::Update { changed }
        }
    }

    fn lookup(&self, tx: &Connection, batch: &Batch, rows: &[usize]) -> rusqlite::Result<Stored> {
        let key = &self.ds.key;
        let ncompare = self.plan.compare.len();
        let nhistory = self.plan.history.len();
        let mut found = Stored::new(rows.len(), ncompare);
        for chunk in rows.chunks(LOOKUP_CHUNK) {
            let sql = self.plan.select_sql(chunk.len(), key.len());
            let mut stmt = tx.prepare_cached(&sql)?;
            stmt.raw_bind_parameter(1, self.org)?;
            let mut idx = 2;
            for &i in chunk {
                let values = batch.row_values(i);
                for &k in key {
                    stmt.raw_bind_parameter(idx, &values[k])?;
                    idx += 1;
                }
            }
            let mut result = stmt.raw_query();
            while let Some(r) = result.next()? {
                let k = key_of((0..key.len()).map(|j| r.get_ref(j).unwrap_or(ValueRef::Null)));
                let base = key.len();
                let first = found.cells.len();
                for j in 0..ncompare {
                    found.push(r.get_ref(base + j)?);
                }
                for j in 0..nhistory {
                    found.push(r.get_ref(base + ncompare + 2 + j)?);
                }
                let job = r.get(base + ncompare)?;
                let row = r.get(base + ncompare + 1)?;
                found.rows.insert(k, Existing { first, job, row });
            }
        }
        Ok(found)
    }

    /// Writes `rows` (an upsert, or with `skip_existing` an insert leaving existing keys
    /// alone); the rows written.
    fn upsert(
        &self,
        tx: &Connection,
        batch: &Batch,
        rows: &[Write<'_>],
        skip_existing: bool,
    ) -> rusqlite::Result<usize> {
        let mut written = 0;
        let mut statements = self.statements.borrow_mut();
        for chunk in rows.chunks(self.plan.rows_per_insert) {
            let sql = self.plan.upsert_sql(chunk.len(), skip_existing);
            let mut stmt = statements.bind(tx, sql)?;
            stmt.int(1, self.job)?;
            stmt.text(2, &self.now)?;
            stmt.int(3, self.org)?;
            let mut idx = 4;
            for (i, changed) in chunk {
                let values = batch.row_values(*i);
                for &f in &self.plan.present {
                    stmt.value(idx, &values[f])?;
                    idx += 1;
                }
                stmt.int(idx, batch.rows[*i] as i64)?;
                idx += 1;
                if skip_existing {
                    continue;
                }
                for (h, (_, pos)) in self.plan.history.iter().enumerate() {
                    let keep_old = match changed {
                        Some((changed, old)) if !changed.contains(pos) => old.since(h),
                        _ => None,
                    };
                    match keep_old {
                        Some(since) => stmt.text(idx, since)?,
                        None => stmt.text(idx, &self.now)?,
                    }
                    idx += 1;
                }
            }
            written += stmt.execute()?;
        }
        Ok(written)
    }

    fn stamp(&self, tx: &Connection, batch: &Batch, rows: &[usize]) -> rusqlite::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut stmt = tx.prepare_cached(&self.plan.stamp)?;
        // Bindings outlive each execution (it only resets the statement): the shared ones once.
        stmt.raw_bind_parameter(1, self.job)?;
        stmt.raw_bind_parameter(3, self.org)?;
        for &i in rows {
            let values = batch.row_values(i);
            stmt.raw_bind_parameter(2, batch.rows[i] as i64)?;
            for (j, &k) in self.ds.key.iter().enumerate() {
                stmt.raw_bind_parameter(j + 4, &values[k])?;
            }
            stmt.raw_execute()?;
        }
        Ok(())
    }

    /// Runs `write` (the batch's data statements), then records `rows` in the ledger. With
    /// `beside`, another thread makes the entries (their keys' and replaced values' JSON: a
    /// tenth of the writer's time in an update pass) on the core the writer leaves idle while
    /// `write` runs; otherwise they are made here, after it. A replace records its changes when
    /// it completes, not here.
    fn write_and_ledger(
        &self,
        tx: &Connection,
        batch: &Batch,
        rows: &[Write<'_>],
        beside: bool,
        write: impl FnOnce() -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        if self.mode == Mode::Replace || rows.is_empty() {
            return write();
        }
        let (ds, compare) = (self.ds, &self.plan.compare);
        let mut entries = std::mem::take(&mut *self.entries.borrow_mut());
        let entries = if beside && rows.len() >= ENTRIES_APART {
            std::thread::scope(|s| {
                let maker = std::thread::Builder::new()
                    .name("sluice-ledger".into())
                    .spawn_scoped(s, move || {
                        entries.make(ds, compare, batch, rows);
                        entries
                    });
                let written = write();
                let entries = match maker {
                    Ok(maker) => maker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    // No thread to be had: made here, after the statements.
                    Err(_) => {
                        let mut entries = Entries::default();
                        entries.make(ds, compare, batch, rows);
                        entries
                    }
                };
                written.map(|()| entries)
            })?
        } else {
            write()?;
            entries.make(ds, compare, batch, rows);
            entries
        };
        self.ledger(tx, &entries)?;
        *self.entries.borrow_mut() = entries;
        Ok(())
    }

    /// Records each created and updated row in the ledger (see [`crate::store::ledger`]):
    /// multi-row statements, the batch's organisation, dataset, job and time bound once.
    fn ledger(&self, tx: &Connection, entries: &Entries) -> rusqlite::Result<()> {
        if entries.spans.is_empty() {
            return Ok(());
        }
        let mut statements = self.statements.borrow_mut();
        for chunk in entries.spans.chunks(LEDGER_ROWS_PER_INSERT) {
            let sql = sized(
                &self.plan.full.ledger,
                LEDGER_ROWS_PER_INSERT,
                chunk.len(),
                ledger_sql,
            );
            let mut stmt = statements.bind(tx, sql)?;
            stmt.int(1, self.org)?;
            stmt.text(2, &self.ds.name)?;
            stmt.int(3, self.job)?;
            stmt.text(4, &self.now)?;
            let mut idx = 5;
            for &(op, key, old) in chunk {
                stmt.text(idx, op.as_str())?;
                stmt.text(idx + 1, entries.text(key))?;
                stmt.text_or_owned(idx + 2, old.map(|old| Cow::Borrowed(entries.text(old))))?;
                idx += 3;
            }
            stmt.execute()?;
        }
        drop(statements);
        let [widen, range] = ledger::range_sql(crate::store::sql::Dialect::Sqlite);
        let n = entries.len() as i64;
        tx.prepare_cached(&widen.replace('$', "?"))?
            .execute(params![self.job, n])?;
        tx.prepare_cached(&range.replace('$', "?"))?
            .execute(params![self.org, &self.ds.name, self.job, n, &self.now])?;
        Ok(())
    }

    /// Archives the old value of every changed history field: multi-row statements, the
    /// batch's time, job and organisation bound once.
    fn archive(&self, tx: &Connection, batch: &Batch, rows: &[Write<'_>]) -> rusqlite::Result<()> {
        let Some(head) = &self.plan.history_insert else {
            return Ok(());
        };
        // (row index, history position) of every archived value, in row order.
        let mut records: Vec<(usize, usize, Old<'_>)> = Vec::new();
        for (i, changed) in rows {
            let Some((changed, old)) = changed else {
                continue;
            };
            for (h, (_, pos)) in self.plan.history.iter().enumerate() {
                if changed.contains(pos) {
                    records.push((*i, h, *old));
                }
            }
        }
        let nkey = self.ds.key.len();
        let per_row = nkey + 4;
        let per_statement = (MAX_BINDS / per_row).clamp(1, HISTORY_ROWS_PER_INSERT);
        let mut statements = self.statements.borrow_mut();
        for chunk in records.chunks(per_statement) {
            let sql = sized(
                &self.plan.full.history,
                per_statement,
                chunk.len(),
                |rows| history_sql(head, rows, per_row),
            );
            let mut stmt = statements.bind(tx, sql)?;
            stmt.text(1, &self.now)?;
            stmt.int(2, self.job)?;
            stmt.int(3, self.org)?;
            let mut idx = 4;
            for &(i, h, old) in chunk {
                let values = batch.row_values(i);
                let (field, pos) = self.plan.history[h];
                for &k in &self.ds.key {
                    stmt.value(idx, &values[k])?;
                    idx += 1;
                }
                stmt.text(idx, &self.ds.fields[field].name)?;
                stmt.text_or_owned(idx + 1, sql_text(old.value(pos)))?;
                let new = match &values[field] {
                    Value::Text(t) => Some(Cow::Borrowed(t.as_str())),
                    other => other.to_text().map(Cow::Owned),
                };
                stmt.text_or_owned(idx + 2, new)?;
                stmt.text_or_owned(idx + 3, old.since(h).map(Cow::Borrowed))?;
                idx += 4;
            }
            stmt.execute()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_key_is_the_text_of_the_stored_key() {
        let values = vec![
            Value::Text("a\u{1f}b".into()),
            Value::Int(-7),
            Value::Decimal("19.90".parse().unwrap()),
            Value::Bool(true),
            Value::Null,
            Value::Date("2024-01-02".into()),
        ];
        let key: Vec<usize> = (0..values.len()).collect();
        // As the lookup reads the key back: the values as they were bound.
        let bound: Vec<ToSqlOutput<'_>> = values.iter().map(|v| v.to_sql().unwrap()).collect();
        let stored = bound.iter().map(|o| match o {
            ToSqlOutput::Borrowed(r) => *r,
            ToSqlOutput::Owned(v) => ValueRef::from(v),
            _ => ValueRef::Null,
        });
        assert_eq!(sql_key(&values, &key), key_of(stored));
        assert_eq!(
            sql_key(&values, &[1, 3, 4]),
            "i-7\u{1f}i1\u{1f}n\u{1f}",
            "integers, booleans and NULL tagged"
        );
    }
}
