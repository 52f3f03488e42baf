//! The dialect seam: what the shared store logic needs of a database connection.
//!
//! Every statement of the job store is written once, in PostgreSQL's spelling (`$1` placeholders,
//! `CAST(… AS BIGINT)` where a parameter's type must be named); the SQLite adapter rewrites the
//! placeholders to `?1`. Values travel as [`Value`] and rows come back as [`Row`], so each row type
//! is decoded once for both backends. Where the two databases truly differ, [`Dialect`] supplies
//! the fragment (`FOR UPDATE SKIP LOCKED`, the seconds between two times) and [`Sql::notify_jobs`]
//! the side effect (PostgreSQL's `NOTIFY`; nothing on SQLite).
//!
//! Times are bound as times: PostgreSQL stores `timestamptz`; SQLite stores RFC 3339 text in UTC
//! with milliseconds ([`time_text`]), which compares correctly as text.

use chrono::{DateTime, SecondsFormat, Utc};

use super::{StoreError, StoreResult};

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Time(DateTime<Utc>),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<u64> for Value {
    /// Counts and sizes; saturating at `i64::MAX` (the columns are signed).
    fn from(v: u64) -> Self {
        Value::Int(v.min(i64::MAX as u64) as i64)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::from(v as u64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Self {
        Value::Time(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters: `params![a, b, c]` converts each into a [`Value`].
#[macro_export]
macro_rules! sql_params {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Value::from($v)),*] };
}
pub use crate::sql_params as params;

/// How SQLite stores a time: RFC 3339 in UTC with milliseconds.
pub fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn corrupt(i: usize, want: &str, got: &Value) -> StoreError {
    StoreError::Corrupt(format!("column {i}: expected {want}, found {got:?}"))
}

/// One result row, decoded once for both backends.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> StoreResult<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} is missing")))
    }

    pub fn opt_i64(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(n) => Ok(Some(*n)),
            Value::Bool(b) => Ok(Some(i64::from(*b))),
            other => Err(corrupt(i, "an integer", other)),
        }
    }

    pub fn i64(&self, i: usize) -> StoreResult<i64> {
        self.opt_i64(i)?
            .ok_or_else(|| corrupt(i, "an integer", &Value::Null))
    }

    /// A count or size: negative values read as 0.
    pub fn u64(&self, i: usize) -> StoreResult<u64> {
        Ok(self.i64(i)?.max(0) as u64)
    }

    pub fn opt_u64(&self, i: usize) -> StoreResult<Option<u64>> {
        Ok(self.opt_i64(i)?.map(|n| n.max(0) as u64))
    }

    pub fn u32(&self, i: usize) -> StoreResult<u32> {
        Ok(self.i64(i)?.clamp(0, i64::from(u32::MAX)) as u32)
    }

    pub fn opt_u32(&self, i: usize) -> StoreResult<Option<u32>> {
        Ok(self
            .opt_i64(i)?
            .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32))
    }

    pub fn f64(&self, i: usize) -> StoreResult<f64> {
        match self.at(i)? {
            Value::Null => Ok(0.0),
            Value::Int(n) => Ok(*n as f64),
            Value::Real(f) => Ok(*f),
            other => Err(corrupt(i, "a number", other)),
        }
    }

    pub fn bool(&self, i: usize) -> StoreResult<bool> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(n) => Ok(*n != 0),
            other => Err(corrupt(i, "a boolean", other)),
        }
    }

    pub fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            other => Err(corrupt(i, "text", other)),
        }
    }

    pub fn text(&self, i: usize) -> StoreResult<String> {
        self.opt_text(i)?
            .ok_or_else(|| corrupt(i, "text", &Value::Null))
    }

    /// A time: PostgreSQL's `timestamptz`, or SQLite's RFC 3339 text.
    pub fn opt_time(&self, i: usize) -> StoreResult<Option<DateTime<Utc>>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Time(t) => Ok(Some(*t)),
            Value::Text(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.to_utc()))
                .map_err(|e| StoreError::Corrupt(format!("column {i}: time `{s}`: {e}"))),
            other => Err(corrupt(i, "a time", other)),
        }
    }

    pub fn time(&self, i: usize) -> StoreResult<DateTime<Utc>> {
        self.opt_time(i)?
            .ok_or_else(|| corrupt(i, "a time", &Value::Null))
    }

    /// A JSON document stored as text.
    pub fn json<T: serde::de::DeserializeOwned>(&self, i: usize, what: &str) -> StoreResult<T> {
        let text = self.text(i)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    }
}

/// The two databases, for the few fragments they spell differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Locks the selected rows for the transaction (SQLite's write transaction already holds the
    /// whole database).
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Locks the selected rows, skipping those another transaction holds (claims).
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Seconds from time column `a` to time column `b`, as a double.
    pub fn seconds_between(self, a: &str, b: &str) -> String {
        match self {
            Dialect::Sqlite => format!("((julianday({b}) - julianday({a})) * 86400.0)"),
            Dialect::Postgres => {
                format!("CAST(EXTRACT(EPOCH FROM ({b} - {a})) AS DOUBLE PRECISION)")
            }
        }
    }

    /// The greater of two values (`max` is SQLite's scalar spelling).
    pub fn greatest(self) -> &'static str {
        match self {
            Dialect::Sqlite => "max",
            Dialect::Postgres => "GREATEST",
        }
    }

    /// Whether concurrent transactions may commit out of `seq` order (so readers of the event
    /// log must stop at the settled horizon).
    pub fn commits_out_of_order(self) -> bool {
        self == Dialect::Postgres
    }
}

/// A connection (or an open transaction) the shared store logic runs its statements on.
pub trait Sql {
    fn dialect(&self) -> Dialect;

    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> StoreResult<u64>;

    /// Runs a query; every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>>;

    /// Announces that a job may be claimable, when the transaction commits (PostgreSQL's
    /// `NOTIFY`; SQLite's workers poll).
    fn notify_jobs(&mut self) -> StoreResult<()> {
        Ok(())
    }

    /// Serialises transactions about the same `key` (PostgreSQL's advisory lock; SQLite's write
    /// transaction already excludes every other writer).
    fn lock_key(&mut self, key: &str) -> StoreResult<()> {
        let _ = key;
        Ok(())
    }

    /// Runs several statements without parameters (a replace job's swap).
    fn batch(&mut self, sql: &str) -> StoreResult<()>;

    /// Runs a query and hands each row to `each` as it arrives, never holding them all
    /// (SQLite steps the statement; PostgreSQL, in a transaction, fetches a portal 2,000 rows at
    /// a time, the server keeping the rest). `each` returning false stops early.
    /// Returns the rows handed over.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&[Value]) -> bool,
    ) -> StoreResult<u64>;

    fn query_opt(&mut self, sql: &str, params: &[Value]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn query_one(&mut self, sql: &str, params: &[Value]) -> StoreResult<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::Other("the query returned no row".into()))
    }
}

/// Rewrites `$1` placeholders as SQLite's `?1`, outside quoted strings and names.
pub fn sqlite_placeholders(sql: &str) -> String {
    placeholders(sql, |n| format!("?{n}"))
}

/// Replaces each `$n` placeholder outside quoted strings and names with `with(n)`.
pub fn placeholders(sql: &str, with: impl Fn(usize) -> String) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push(c);
                }
                '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                    let mut n = 0usize;
                    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                        n = n.saturating_mul(10).saturating_add(d as usize);
                        chars.next();
                    }
                    out.push_str(&with(n));
                }
                _ => out.push(c),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes_only() {
        assert_eq!(
            sqlite_placeholders("SELECT '$1', \"a$2\" FROM t WHERE a = $1 AND b = $12"),
            "SELECT '$1', \"a$2\" FROM t WHERE a = ?1 AND b = ?12"
        );
    }

    #[test]
    fn rows_decode_times_from_text_and_integers_as_booleans() {
        let t = Utc::now();
        let row = Row(vec![Value::Text(time_text(t)), Value::Int(1), Value::Null]);
        assert_eq!(
            row.time(0).unwrap().timestamp_millis(),
            t.timestamp_millis()
        );
        assert!(row.bool(1).unwrap());
        assert_eq!(row.opt_time(2).unwrap(), None);
        assert!(row.text(2).is_err());
    }
}
