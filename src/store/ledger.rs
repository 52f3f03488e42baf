//! The change ledger (issue 16): one entry per row an import created, updated or deleted,
//! written by the batch writers in the batch's own transaction, so an entry exists exactly when
//! its change does. Owns the one JSON form of an entry's key and values, written here for both
//! backends (the SQLite writer binds entries into multi-row `INSERT`s, the PostgreSQL writer
//! COPYs them under [`LEDGER_LOCK`]), the record of where they are (one `ledger_ranges` row
//! per batch: [`range_sql`], [`record_range`]), and the reads over the ledger through those
//! ranges: entries of a span ([`entries`], [`count`]), the change feed ([`changes_after`]), a
//! job's cursor range ([`job_range`]) and the retention sweep ([`sweep`]).
//!
//! Values are JSON as a consumer wants them and the import reads them back: integers as
//! numbers, booleans as `true`/`false`, decimals as strings with the field's scale (`"19.90"`:
//! exact, unlike a float), dates and times as ISO 8601 strings (`T` between date and time),
//! text as strings, NULL as `null`. A key is an object of the key fields in key order, written
//! the same way whichever side produced it, so equal keys are equal text.

use std::borrow::Cow;
use std::io::Write;

use chrono::{DateTime, Utc};

use super::sql::{Dialect, Row, Sql, Value as SqlValue, params};
use super::{Cursors, StoreError, StoreResult};
use crate::dataset::{Dataset, Field, FieldType};
use crate::import::Value;

/// Key of the PostgreSQL advisory lock a batch takes just before inserting its ledger entries
/// and holds to its commit: entries then commit in `seq` order (see migration 0016).
pub const LEDGER_LOCK: i64 = 0x5111_CE16;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Created,
    Updated,
    Deleted,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Created => "created",
            Op::Updated => "updated",
            Op::Deleted => "deleted",
        }
    }
}

/// One ledger entry as a writer inserts it (the job, organisation and dataset are the batch's).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub op: Op,
    /// JSON object of the key fields.
    pub key: String,
    /// JSON object of the replaced values (updated, deleted).
    pub old: Option<String>,
}

/// A JSON object under construction, field by field, appended to `buf` from `start` on.
struct Object<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
}

impl<'b> Object<'b> {
    fn new(buf: &'b mut Vec<u8>) -> Self {
        let start = buf.len();
        Object { buf, start }
    }

    fn name(&mut self, name: &str) {
        let first = self.buf.len() == self.start;
        self.buf.push(if first { b'{' } else { b',' });
        json_string(self.buf, name);
        self.buf.push(b':');
    }

    fn done(self) {
        if self.buf.len() == self.start {
            self.buf.push(b'{');
        }
        self.buf.push(b'}');
    }
}

/// Runs `write` on a new buffer; its text (only whole UTF-8 strings and ASCII are written).
fn text_of(write: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut buf = Vec::with_capacity(128);
    write(&mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A decimal's text with the field's scale, as the import reads it back.
fn decimal_text(field: &Field, text: &str) -> String {
    match (field.scale, text.parse::<rust_decimal::Decimal>()) {
        (Some(scale), Ok(mut d)) if d.scale() < scale => {
            d.rescale(scale);
            d.to_string()
        }
        _ => text.to_string(),
    }
}

/// A value of the import as JSON.
fn push_value(out: &mut Vec<u8>, field: &Field, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Decimal(d) => json_string(out, &decimal_text(field, &d.to_string())),
        Value::DateTime(s) => json_string(out, &s.replacen(' ', "T", 1)),
        Value::Text(s) | Value::Date(s) => json_string(out, s),
    }
}

/// A stored value, read back as text, as JSON of its field's type.
fn push_text(out: &mut Vec<u8>, field: &Field, text: Option<&str>) {
    let Some(text) = text else {
        out.extend_from_slice(b"null");
        return;
    };
    match field.ty {
        FieldType::Integer if text.parse::<i64>().is_ok() => out.extend_from_slice(text.as_bytes()),
        FieldType::Boolean => match text {
            "1" | "t" | "true" => out.extend_from_slice(b"true"),
            "0" | "f" | "false" => out.extend_from_slice(b"false"),
            _ => json_string(out, text),
        },
        FieldType::Decimal => json_string(out, &decimal_text(field, text)),
        FieldType::Datetime => json_string(out, &text.replacen(' ', "T", 1)),
        _ => json_string(out, text),
    }
}

/// A stored value's text as its field's JSON (so `19.9` and `19.90`, `1` and `true` compare
/// equal).
pub fn text_json(field: &Field, text: Option<&str>) -> String {
    let mut out = Vec::new();
    push_text(&mut out, field, text);
    String::from_utf8(out).unwrap_or_default()
}

/// The key of a row of the import (`values` in dataset field order).
pub fn key_json(ds: &Dataset, values: &[Value]) -> String {
    text_of(|out| key_json_into(out, ds, values))
}

/// [`key_json`] appended to `out`.
pub fn key_json_into(out: &mut Vec<u8>, ds: &Dataset, values: &[Value]) {
    key_of(out, ds, ds.key.iter().map(|&k| &values[k]));
}

/// A key given as its values in key order (a rejected row's [`RowError::key`]).
///
/// [`RowError::key`]: crate::import::RowError::key
pub fn key_values_json(ds: &Dataset, key: &[Value]) -> String {
    text_of(|out| key_of(out, ds, key.iter()))
}

fn key_of<'a>(out: &mut Vec<u8>, ds: &Dataset, values: impl Iterator<Item = &'a Value>) {
    let mut o = Object::new(out);
    for (&k, value) in ds.key.iter().zip(values) {
        let field = &ds.fields[k];
        o.name(&field.name);
        push_value(o.buf, field, value);
    }
    o.done();
}

/// The `fields` of a row of the import as a JSON object (the ledger keeps keys only, made by the
/// same rule; kept to check that rule against stored texts).
#[cfg(test)]
pub fn values_json(ds: &Dataset, fields: &[usize], values: &[Value]) -> String {
    text_of(|out| {
        let mut o = Object::new(out);
        for &f in fields {
            let field = &ds.fields[f];
            o.name(&field.name);
            push_value(o.buf, field, &values[f]);
        }
        o.done();
    })
}

/// Stored values of `fields` (`text(j)` the j-th, as text) as a JSON object.
pub fn texts_json<'a>(
    ds: &Dataset,
    fields: &[usize],
    text: impl Fn(usize) -> Option<Cow<'a, str>>,
) -> String {
    text_of(|out| texts_json_into(out, ds, fields, text))
}

/// [`texts_json`] appended to `out`.
pub fn texts_json_into<'a>(
    out: &mut Vec<u8>,
    ds: &Dataset,
    fields: &[usize],
    text: impl Fn(usize) -> Option<Cow<'a, str>>,
) {
    let mut o = Object::new(out);
    for (j, &f) in fields.iter().enumerate() {
        let field = &ds.fields[f];
        o.name(&field.name);
        push_text(o.buf, field, text(j).as_deref());
    }
    o.done();
}

/// Entries written outside the batch writers (a rollback's, a sync's deletions), in the
/// caller's transaction: multi-row `INSERT`s on both databases, on PostgreSQL under
/// [`LEDGER_LOCK`] as the batch writers' COPY is.
pub fn insert(
    c: &mut dyn Sql,
    dataset: &str,
    job: i64,
    org: i64,
    entries: &[Entry],
    at: DateTime<Utc>,
) -> StoreResult<()> {
    /// Rows per statement (7 parameters each).
    const ROWS: usize = 200;
    if entries.is_empty() {
        return Ok(());
    }
    if c.dialect() == Dialect::Postgres {
        c.execute("SELECT pg_advisory_xact_lock($1)", params![LEDGER_LOCK])?;
    }
    for part in entries.chunks(ROWS) {
        let mut sql =
            String::from("INSERT INTO ledger (org_id, dataset, job_id, op, key, old, at) VALUES ");
        let mut p: Vec<SqlValue> = Vec::with_capacity(part.len() * 7);
        for (i, e) in part.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let slots: Vec<String> = (1..=7).map(|j| format!("${}", i * 7 + j)).collect();
            sql.push_str(&format!("({})", slots.join(", ")));
            p.extend([
                SqlValue::Int(org),
                SqlValue::Text(dataset.to_string()),
                SqlValue::Int(job),
                SqlValue::Text(e.op.as_str().to_string()),
                SqlValue::Text(e.key.clone()),
                e.old.clone().map_or(SqlValue::Null, SqlValue::Text),
                SqlValue::Time(at),
            ]);
        }
        c.execute(&sql, &p)?;
    }
    record_range(c, job, org, dataset, entries.len() as u64, Some(at))
}

/// One change of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub cursor: i64,
    pub at: DateTime<Utc>,
    pub job_id: i64,
    pub op: String,
    /// JSON object text.
    pub key: String,
    /// JSON object text of the row's values as they are now; `None` for a deletion, or when
    /// the row no longer exists (a later change deleted it).
    pub values: Option<String>,
}

/// The organisation's changes to a dataset after `after`, in commit order, at most `limit`,
/// each with its row's values as they are now (read in the same snapshot, one statement for
/// the page: the ledger does not keep the values written, the table has them).
///
/// Runs in a transaction (the store's snapshot): see [`entries`].
///
/// Entries become visible in `seq` order on both databases (SQLite commits one writer at a
/// time; PostgreSQL writers hold [`LEDGER_LOCK`] from their first entry to their commit), so a
/// reader resuming after the last cursor it saw meets every later change exactly once. Their
/// ranges commit with them, so the ranges read name every entry there is to read.
pub fn changes_after(
    c: &mut dyn Sql,
    org: i64,
    ds: &Dataset,
    after: i64,
    limit: u64,
) -> StoreResult<Vec<Change>> {
    let rows = entries(
        c,
        "seq, at, job_id, op, key",
        &Span {
            org,
            dataset: &ds.name,
            job: None,
            after,
            upto: None,
        },
        limit,
    )?;
    let keys: Vec<Vec<SqlValue>> = rows
        .iter()
        .map(|r| super::rollback::key_values(ds, &r.text(4)?))
        .collect::<StoreResult<_>>()?;
    let refs: Vec<&[SqlValue]> = keys.iter().map(Vec::as_slice).collect();
    let now = super::rollback::currents(c, ds, org, &refs)?;
    let all: Vec<usize> = (0..ds.fields.len()).collect();
    rows.iter()
        .zip(now)
        .map(|(r, row)| {
            let op = r.text(3)?;
            let values = row.filter(|_| op != Op::Deleted.as_str()).map(|row| {
                texts_json(ds, &all, |j| {
                    row.values.get(j).and_then(super::rollback::text)
                })
            });
            Ok(Change {
                cursor: r.i64(0)?,
                at: r.time(1)?,
                job_id: r.i64(2)?,
                op,
                key: r.text(4)?,
                values,
            })
        })
        .collect()
}

/// Which entries to read: an organisation's entries to a dataset (only `job`'s when given)
/// after cursor `after`, up to `upto` when given.
pub struct Span<'a> {
    pub org: i64,
    pub dataset: &'a str,
    pub job: Option<i64>,
    pub after: i64,
    pub upto: Option<i64>,
}

/// Ranges read per statement, and windows of cursors per statement reading entries (each a
/// pair of bounds in an `OR`: one index search apiece on both databases).
const RANGES_PER_READ: usize = 200;
const WINDOWS_PER_READ: usize = 50;

/// The `columns` of up to `limit` entries of `span`, in `seq` order, in the caller's
/// transaction. The span's ranges give the windows of cursors its entries fill (every cursor of
/// a range is an entry), and the entries are read by `seq` in those windows: the rowid on
/// SQLite, the BRIN index on PostgreSQL. An entry the windows promise and the ledger lacks only
/// makes the read go on to the next ranges.
///
/// PostgreSQL's planner costs a BRIN index by the column's correlation, which only ANALYZE
/// knows: before the ledger's first (autovacuum's, a minute after the first import) it scanned
/// the whole ledger for every page of the feed, 60 ms instead of 0.6 ms at 700k entries. The
/// entries' reads therefore run with sequential scans and parallel workers off, for those
/// statements only.
pub fn entries(
    c: &mut dyn Sql,
    columns: &str,
    span: &Span<'_>,
    limit: u64,
) -> StoreResult<Vec<Row>> {
    let pinned = c.dialect() == Dialect::Postgres;
    if pinned {
        c.execute("SET LOCAL enable_seqscan = off", &[])?;
        c.execute("SET LOCAL max_parallel_workers_per_gather = 0", &[])?;
    }
    let out = entries_in_windows(c, columns, span, limit)?;
    if pinned {
        c.execute("SET LOCAL enable_seqscan TO DEFAULT", &[])?;
        c.execute("SET LOCAL max_parallel_workers_per_gather TO DEFAULT", &[])?;
    }
    Ok(out)
}

fn entries_in_windows(
    c: &mut dyn Sql,
    columns: &str,
    span: &Span<'_>,
    limit: u64,
) -> StoreResult<Vec<Row>> {
    let mut out: Vec<Row> = Vec::new();
    let mut after = span.after;
    while (out.len() as u64) < limit {
        let want = limit - out.len() as u64;
        let windows = windows(c, span, after, want)?;
        let Some(&(_, end)) = windows.last() else {
            break;
        };
        for part in windows.chunks(WINDOWS_PER_READ) {
            let mut p: Vec<SqlValue> = vec![
                SqlValue::Int(span.org),
                SqlValue::Text(span.dataset.to_string()),
            ];
            let within = within_windows(part, &mut p);
            let mut sql = format!(
                "SELECT {columns} FROM ledger WHERE org_id = $1 AND dataset = $2 AND {within}"
            );
            if let Some(job) = span.job {
                sql.push_str(&format!(" AND job_id = ${}", p.len() + 1));
                p.push(SqlValue::Int(job));
            }
            sql.push_str(" ORDER BY seq");
            out.extend(c.query(&sql, &p)?);
        }
        after = end;
    }
    out.truncate(limit as usize);
    Ok(out)
}

/// The condition that `seq` lies in one of `windows` (first, last), its bounds appended to `p`.
fn within_windows(windows: &[(i64, i64)], p: &mut Vec<SqlValue>) -> String {
    let mut sql = String::from("(");
    for (i, &(lo, hi)) in windows.iter().enumerate() {
        let n = p.len();
        if i > 0 {
            sql.push_str(" OR ");
        }
        sql.push_str(&format!("(seq >= ${} AND seq <= ${})", n + 1, n + 2));
        p.extend([SqlValue::Int(lo), SqlValue::Int(hi)]);
    }
    sql.push(')');
    sql
}

/// The windows of cursors (first, last) holding the next `want` entries of `span` after
/// `after`, in order: the ranges past `after`, clipped to the span and cut at `want` entries.
fn windows(
    c: &mut dyn Sql,
    span: &Span<'_>,
    after: i64,
    want: u64,
) -> StoreResult<Vec<(i64, i64)>> {
    let (filter, p) = ranges_of(span, after);
    // Every range holds one entry at least.
    let n = want.min(RANGES_PER_READ as u64);
    let sql = format!(
        "SELECT first_seq, last_seq FROM ledger_ranges WHERE {filter} \
         ORDER BY last_seq LIMIT {n}"
    );
    let mut left = want;
    let mut out = Vec::new();
    for r in c.query(&sql, &p)? {
        let lo = r.i64(0)?.max(after + 1);
        let last = r.i64(1)?;
        let hi = span.upto.map_or(last, |u| last.min(u));
        if hi < lo {
            continue;
        }
        let take = ((hi - lo + 1) as u64).min(left);
        out.push((lo, lo + take as i64 - 1));
        left -= take;
        if left == 0 {
            break;
        }
    }
    Ok(out)
}

/// How many entries of `span` there are: the sum of its ranges' lengths (for a job's span,
/// whose ranges all lie within it).
pub fn count(c: &mut dyn Sql, span: &Span<'_>) -> StoreResult<u64> {
    let (filter, p) = ranges_of(span, span.after);
    let sql = format!(
        "SELECT CAST(COALESCE(sum(last_seq - first_seq + 1), 0) AS BIGINT) FROM ledger_ranges \
         WHERE {filter}"
    );
    c.query_one(&sql, &p)?.u64(0)
}

/// The condition on `ledger_ranges` of `span`'s ranges that reach past `after`, and its
/// parameters.
fn ranges_of(span: &Span<'_>, after: i64) -> (String, Vec<SqlValue>) {
    let mut sql = String::from("org_id = $1 AND dataset = $2 AND last_seq > $3");
    let mut p: Vec<SqlValue> = params![span.org, span.dataset, after].to_vec();
    if let Some(upto) = span.upto {
        sql.push_str(&format!(" AND first_seq <= ${}", p.len() + 1));
        p.push(SqlValue::Int(upto));
    }
    if let Some(job) = span.job {
        sql.push_str(&format!(" AND job_id = ${}", p.len() + 1));
        p.push(SqlValue::Int(job));
    }
    (sql, p)
}

/// The columns of a job row (`jobs`) that give its change range: first, last, and whether the
/// last entry is still kept. The sweep removes the oldest entries first, each batch's with its
/// range: the last range gone, all are. See [`range_at`].
pub const RANGE_COLUMNS: &str = "jobs.ledger_first, jobs.ledger_last, EXISTS (SELECT 1 FROM ledger_ranges r \
     WHERE r.org_id = jobs.org_id AND r.dataset = jobs.dataset AND r.last_seq = jobs.ledger_last)";

/// The change range read with [`RANGE_COLUMNS`] from column `at` on.
pub fn range_at(r: &Row, at: usize) -> StoreResult<Option<Cursors>> {
    Ok(match (r.opt_i64(at)?, r.opt_i64(at + 1)?) {
        (Some(first), Some(last)) if r.bool(at + 2)? => Some((first, last)),
        _ => None,
    })
}

/// The first and last cursor of a job's changes (kept on its row, `jobs.ledger_first/last`),
/// `None` when it changed nothing (yet) or its entries are swept.
pub fn job_range(c: &mut dyn Sql, job: i64) -> StoreResult<Option<Cursors>> {
    c.query_opt(
        &format!("SELECT {RANGE_COLUMNS} FROM jobs WHERE id = $1"),
        params![job],
    )?
    .map(|r| range_at(&r, 0))
    .transpose()
    .map(Option::flatten)
}

/// The SQL of the cursor of the last entry this transaction inserted.
pub fn last_seq_sql(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "last_insert_rowid()",
        Dialect::Postgres => "currval(pg_get_serial_sequence('ledger', 'seq'))",
    }
}

/// The two statements that record the `n` entries just inserted, whose cursors are consecutive
/// (SQLite has one writer, PostgreSQL writers hold [`LEDGER_LOCK`]): the first widens the job's
/// cursor range (`$1` the job, `$2` the count), the second adds the batch's range (`$1` the
/// organisation, `$2` the dataset, `$3` the job, `$4` the count, `$5` the entries' time).
pub fn range_sql(d: Dialect) -> [String; 2] {
    let last = last_seq_sql(d);
    [
        format!(
            "UPDATE jobs SET ledger_first = COALESCE(ledger_first, {last} - $2 + 1), \
             ledger_last = {last} WHERE id = $1"
        ),
        format!(
            "INSERT INTO ledger_ranges (org_id, dataset, job_id, first_seq, last_seq, at) \
             VALUES ($1, $2, $3, {last} - $4 + 1, {last}, $5)"
        ),
    ]
}

/// Records the `n` entries of `job` just inserted (see [`range_sql`]), in the caller's
/// transaction. `at` is the entries' time; `None` when they have times of their own (a
/// replace's, its rows'): the range then takes the earliest, and the sweep removes the range
/// with all its entries once that is old enough (see [`sweep`]).
pub fn record_range(
    c: &mut dyn Sql,
    job: i64,
    org: i64,
    dataset: &str,
    n: u64,
    at: Option<DateTime<Utc>>,
) -> StoreResult<()> {
    if n == 0 {
        return Ok(());
    }
    let d = c.dialect();
    let [widen, range] = range_sql(d);
    c.execute(&widen, params![job, n as i64])?;
    match at {
        Some(at) => c.execute(&range, params![org, dataset, job, n as i64, at])?,
        None => {
            let last = last_seq_sql(d);
            let earliest = format!(
                "(SELECT min(at) FROM ledger WHERE seq >= {last} - $4 + 1 AND seq <= {last})"
            );
            c.execute(
                &range.replace("$5", &earliest),
                params![org, dataset, job, n as i64],
            )?
        }
    };
    Ok(())
}

/// PostgreSQL: summarises the block ranges of the ledger's BRIN index on `seq` (migration 0021)
/// appended since the last summary, which every read would otherwise scan whole. Run after a
/// transaction that wrote entries commits, best effort: it waits for no lock (a concurrent
/// summary or VACUUM does the same work), and a range left out is taken by the next one.
pub const SUMMARIZE_SQL: &str = "SELECT brin_summarize_new_values('ledger_seq')";

/// Deletes the entries of every range older than `before` (a range's time is its earliest
/// entry's), with the range; returns how many entries. A range's entries go together, so none is
/// left that no range finds: a replace's created and updated entries carry their rows' own times,
/// which may straddle `before`, and an entry outliving its range would vanish from the feed
/// while still kept.
pub fn sweep(c: &mut dyn Sql, before: DateTime<Utc>) -> StoreResult<u64> {
    let ranges: Vec<(i64, i64)> = c
        .query(
            "SELECT first_seq, last_seq FROM ledger_ranges WHERE at < $1",
            params![before],
        )?
        .iter()
        .map(|r| Ok((r.i64(0)?, r.i64(1)?)))
        .collect::<StoreResult<_>>()?;
    let mut swept = 0;
    for part in ranges.chunks(WINDOWS_PER_READ) {
        let mut p = Vec::new();
        let within = within_windows(part, &mut p);
        swept += c.execute(&format!("DELETE FROM ledger WHERE {within}"), &p)?;
    }
    c.execute("DELETE FROM ledger_ranges WHERE at < $1", params![before])?;
    // Entries no range finds (none are written so; kept from before ranges existed, say).
    Ok(swept + c.execute("DELETE FROM ledger WHERE at < $1", params![before])?)
}

/// Checks that a stored JSON text is an object (the feed hands it on as JSON).
pub fn object(text: &str, what: &str) -> StoreResult<serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        _ => Err(StoreError::Corrupt(format!(
            "ledger {what} is not a JSON object"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> Dataset {
        crate::dataset::Datasets::parse(
            "[datasets.t]\nkey = [\"k\", \"n\"]\n[datasets.t.fields]\nk = { type = \"text\" }\n\
             n = { type = \"integer\" }\np = { type = \"decimal\", scale = 2 }\n\
             b = { type = \"boolean\" }\nt = { type = \"datetime\" }\nd = { type = \"date\" }\n",
            "test",
        )
        .unwrap()
        .get("t")
        .unwrap()
        .as_ref()
        .clone()
    }

    #[test]
    fn values_and_stored_texts_give_the_same_json() {
        let ds = ds();
        let values = vec![
            Value::Text("a\"b".into()),
            Value::Int(7),
            Value::Decimal("19.9".parse().unwrap()),
            Value::Bool(true),
            Value::DateTime("2024-01-02T03:04:05".into()),
            Value::Null,
        ];
        let all: Vec<usize> = (0..6).collect();
        let new = values_json(&ds, &all, &values);
        assert_eq!(
            new,
            r#"{"k":"a\"b","n":7,"p":"19.90","b":true,"t":"2024-01-02T03:04:05","d":null}"#
        );
        // As SQLite (1, text as bound) and PostgreSQL (t, numeric(…,2), a space) give them back.
        let sqlite = ["a\"b", "7", "19.9", "1", "2024-01-02T03:04:05"];
        let postgres = ["a\"b", "7", "19.90", "t", "2024-01-02 03:04:05"];
        for stored in [sqlite, postgres] {
            let text = texts_json(&ds, &all, |j| stored.get(j).map(|s| Cow::Borrowed(*s)));
            assert_eq!(text, new);
        }
        assert_eq!(key_json(&ds, &values), r#"{"k":"a\"b","n":7}"#);
        assert_eq!(values_json(&ds, &[], &values), "{}");
        assert!(object(&new, "values").is_ok());
        assert!(object("[1]", "values").is_err());
    }
}
