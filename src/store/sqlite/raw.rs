//! The batch writer's multi-row write statements, bound without copies.
//!
//! rusqlite binds every text with `SQLITE_TRANSIENT`: SQLite copies each string into memory of
//! its own, and rusqlite's statement cache frees all of it again (`sqlite3_clear_bindings`)
//! when the statement goes back. A multi-row upsert binds thousands of texts per statement, and
//! that copying and freeing was about a tenth of the writer's time in an update pass. Here the
//! writer's own prepared statements bind text with `SQLITE_STATIC`: SQLite reads the batch's
//! strings where they are, for as long as the statement runs.
//!
//! Safety rests on three rules, each kept by the types here:
//! - a statement is used only with the connection that prepared it: [`Statements`] lives
//!   beside its connection in the sink, is declared before it (so it is dropped, and its
//!   statements finalized, first) and is cleared whenever the sink opens a new connection;
//!   a statement from another connection is never stepped ([`Statements::bind`] checks);
//! - text bound to a statement outlives the statement's run: a [`Bound`] borrows everything
//!   bound to it for its own lifetime, keeps texts made on the way ([`Bound::owned`]), and
//!   resets the statement and clears its bindings before it is dropped;
//! - nothing here is shared between threads: the sink is used by one thread at a time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::marker::PhantomData;
use std::ptr::NonNull;

use rusqlite::types::{ToSql, ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, ffi};

/// Prepared full-size statements of one connection, by their text.
#[derive(Default)]
pub struct Statements {
    cache: HashMap<String, NonNull<ffi::sqlite3_stmt>>,
}

// SAFETY: the statements are only stepped together with the connection that prepared them,
// which the same sink owns and moves with them; SQLite (built threadsafe by rusqlite) allows a
// connection and its statements to be used from any one thread at a time.
unsafe impl Send for Statements {}

impl Drop for Statements {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Statements {
    /// Finalizes every statement (before their connection is closed or replaced).
    pub fn clear(&mut self) {
        for (_, stmt) in self.cache.drain() {
            // SAFETY: each statement was prepared by `prepare` and is finalized once, here.
            unsafe { ffi::sqlite3_finalize(stmt.as_ptr()) };
        }
    }

    /// The statement `sql` on `conn`, ready to bind. A borrowed text is a full-size statement's
    /// (built once per job, used by every batch: see the writer's `sized`): it is prepared once
    /// and kept. An owned one (a batch's shorter last statement) is finalized after its run.
    pub fn bind<'s, 'a>(
        &'s mut self,
        conn: &Connection,
        sql: Cow<'_, str>,
    ) -> rusqlite::Result<Bound<'s, 'a>> {
        let keep = matches!(sql, Cow::Borrowed(_));
        // SAFETY: the handle is only used for calls on this connection, while it is borrowed.
        let db = unsafe { conn.handle() };
        if let Some(stmt) = self.cache.get(sql.as_ref()) {
            // SAFETY: a cached statement is valid until finalized by `clear`.
            if unsafe { ffi::sqlite3_db_handle(stmt.as_ptr()) } == db {
                return Ok(Bound::new(*stmt, db, false));
            }
            // A statement of another connection: the sink forgot to clear; never step it.
            self.clear();
        }
        let stmt = prepare(db, &sql, keep)?;
        if keep {
            self.cache.insert(sql.into_owned(), stmt);
        }
        Ok(Bound::new(stmt, db, !keep))
    }
}

fn prepare(
    db: *mut ffi::sqlite3,
    sql: &str,
    keep: bool,
) -> rusqlite::Result<NonNull<ffi::sqlite3_stmt>> {
    let len = c_int::try_from(sql.len())
        .map_err(|_| rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None))?;
    let flags = if keep {
        ffi::SQLITE_PREPARE_PERSISTENT
    } else {
        0
    };
    let mut stmt = std::ptr::null_mut();
    // SAFETY: `sql` is valid for `len` bytes; SQLite writes the new statement into `stmt`.
    let rc = unsafe {
        ffi::sqlite3_prepare_v3(
            db,
            sql.as_ptr().cast::<c_char>(),
            len,
            flags as _,
            &mut stmt,
            std::ptr::null_mut(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(error(db));
    }
    NonNull::new(stmt).ok_or_else(|| {
        rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_MISUSE),
            Some("an empty statement".into()),
        )
    })
}

/// The connection's last error, as rusqlite reports errors (so the writer's error classes apply).
fn error(db: *mut ffi::sqlite3) -> rusqlite::Error {
    // SAFETY: `db` is an open connection; the message is copied before any other call.
    unsafe {
        let code = ffi::sqlite3_extended_errcode(db);
        let message = ffi::sqlite3_errmsg(db);
        let message =
            (!message.is_null()).then(|| CStr::from_ptr(message).to_string_lossy().into_owned());
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
    }
}

/// One run of a statement: bind, then [`Bound::execute`]. Everything bound lives at least as
/// long as `'a`; the statement is reset and its bindings cleared when this is dropped.
pub struct Bound<'s, 'a> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
    /// Finalize after the run (a statement not kept).
    finalize: bool,
    /// Texts made while binding, alive until the run ends (a `String`'s bytes stay where they
    /// are when the vector grows).
    owned: Vec<String>,
    _statements: PhantomData<&'s mut Statements>,
    _bound: PhantomData<&'a str>,
}

impl<'a> Bound<'_, 'a> {
    fn new(stmt: NonNull<ffi::sqlite3_stmt>, db: *mut ffi::sqlite3, finalize: bool) -> Self {
        Bound {
            stmt,
            db,
            finalize,
            owned: Vec::new(),
            _statements: PhantomData,
            _bound: PhantomData,
        }
    }

    fn check(&self, rc: c_int) -> rusqlite::Result<()> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db))
        }
    }

    pub fn int(&mut self, index: usize, v: i64) -> rusqlite::Result<()> {
        // SAFETY: binding an integer copies it.
        self.check(unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), index as c_int, v) })
    }

    pub fn null(&mut self, index: usize) -> rusqlite::Result<()> {
        // SAFETY: as above.
        self.check(unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), index as c_int) })
    }

    /// Binds `s` where it is: it outlives this run (`'a`).
    pub fn text(&mut self, index: usize, s: &'a str) -> rusqlite::Result<()> {
        // SAFETY: `s` lives for `'a`, longer than this run, and the binding is cleared before
        // the run ends (`Drop`), so SQLite never reads it afterwards.
        unsafe { self.bind_static(index, s.as_ptr(), s.len()) }
    }

    /// Binds a text made for this run, kept until it ends; `None` binds NULL.
    pub fn owned(&mut self, index: usize, s: Option<String>) -> rusqlite::Result<()> {
        let Some(s) = s else { return self.null(index) };
        let (ptr, len) = (s.as_ptr(), s.len());
        self.owned.push(s);
        // SAFETY: the string's bytes are owned by `self.owned` until the run ends.
        unsafe { self.bind_static(index, ptr, len) }
    }

    /// Binds a value as its `ToSql` gives it (for an import value, the writer's one rule):
    /// borrowed text where it is, text made for the value kept for the run.
    pub fn value(&mut self, index: usize, v: &'a dyn ToSql) -> rusqlite::Result<()> {
        match v.to_sql()? {
            ToSqlOutput::Borrowed(ValueRef::Null) | ToSqlOutput::Owned(SqlValue::Null) => {
                self.null(index)
            }
            ToSqlOutput::Borrowed(ValueRef::Integer(i))
            | ToSqlOutput::Owned(SqlValue::Integer(i)) => self.int(index, i),
            // SAFETY: the bytes are borrowed from `v` for `'a`, and `ToSql` text is UTF-8.
            ToSqlOutput::Borrowed(ValueRef::Text(t)) => unsafe {
                self.bind_static(index, t.as_ptr(), t.len())
            },
            ToSqlOutput::Owned(SqlValue::Text(t)) => self.owned(index, Some(t)),
            other => Err(rusqlite::Error::ToSqlConversionFailure(
                format!("a value the batch writer does not bind: {other:?}").into(),
            )),
        }
    }

    /// Binds a text that is borrowed or made for this run; `None` binds NULL.
    pub fn text_or_owned(&mut self, index: usize, s: Option<Cow<'a, str>>) -> rusqlite::Result<()> {
        match s {
            Some(Cow::Borrowed(s)) => self.text(index, s),
            Some(Cow::Owned(s)) => self.owned(index, Some(s)),
            None => self.null(index),
        }
    }

    /// # Safety
    /// `ptr` must stay valid for `len` bytes until this run ends.
    unsafe fn bind_static(
        &mut self,
        index: usize,
        ptr: *const u8,
        len: usize,
    ) -> rusqlite::Result<()> {
        // An empty text still needs a valid pointer.
        let ptr = if len == 0 {
            c"".as_ptr()
        } else {
            ptr.cast::<c_char>()
        };
        // SAFETY: the caller keeps the bytes alive; SQLITE_STATIC tells SQLite not to copy them.
        let rc = unsafe {
            ffi::sqlite3_bind_text64(
                self.stmt.as_ptr(),
                index as c_int,
                ptr,
                len as ffi::sqlite3_uint64,
                ffi::SQLITE_STATIC(),
                ffi::SQLITE_UTF8 as u8,
            )
        };
        self.check(rc)
    }

    /// Runs the statement (a write: no rows returned); the rows it changed.
    pub fn execute(self) -> rusqlite::Result<usize> {
        // SAFETY: the statement is valid and every parameter bound above is still alive.
        let rc = unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) };
        match rc {
            ffi::SQLITE_DONE => {
                // SAFETY: a call on the open connection.
                Ok(unsafe { ffi::sqlite3_changes64(self.db) } as usize)
            }
            ffi::SQLITE_ROW => Err(rusqlite::Error::ExecuteReturnedResults),
            _ => Err(error(self.db)),
        }
    }
}

impl Drop for Bound<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: the statement is valid; after the reset and clear it holds no pointer to
        // the texts bound above, which may go now.
        unsafe {
            ffi::sqlite3_reset(self.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.stmt.as_ptr());
            if self.finalize {
                ffi::sqlite3_finalize(self.stmt.as_ptr());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::Value;
    use rust_decimal::Decimal;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER, d TEXT, e TEXT)")
            .expect("create");
        conn
    }

    #[test]
    fn bound_texts_are_read_in_place_and_the_statement_is_reused() {
        let conn = table();
        let mut statements = Statements::default();
        let sql = "INSERT INTO t (k, n, d, e) VALUES (?1, ?2, ?3, ?4), (?5, ?6, ?7, ?8)";
        let rows = [
            [
                Value::Text("a".into()),
                Value::Int(1),
                Value::Decimal(Decimal::new(1050, 2)),
                Value::Text(String::new()),
            ],
            [
                Value::Text("b".into()),
                Value::Bool(true),
                Value::Null,
                Value::Date("2024-01-02".into()),
            ],
        ];
        for round in 0..2 {
            let mut stmt = statements.bind(&conn, sql.into()).expect("bind");
            for (r, row) in rows.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    stmt.value(1 + r * 4 + c, v).expect("value");
                }
            }
            if round == 0 {
                assert_eq!(stmt.execute().expect("execute"), 2);
                conn.execute("DELETE FROM t", []).expect("delete");
            } else {
                assert_eq!(stmt.execute().expect("execute"), 2);
            }
        }
        assert_eq!(statements.cache.len(), 1);
        type Row = (String, Option<i64>, Option<String>, Option<String>);
        let got: Vec<Row> = conn
            .prepare("SELECT k, n, d, e FROM t ORDER BY k")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            got,
            vec![
                (
                    "a".into(),
                    Some(1),
                    Some("10.50".into()),
                    Some(String::new())
                ),
                ("b".into(), Some(1), None, Some("2024-01-02".into())),
            ]
        );
    }

    #[test]
    fn a_refused_row_is_a_rusqlite_constraint_error_and_the_statement_still_works() {
        let conn = table();
        let mut statements = Statements::default();
        let sql = "INSERT INTO t (k, n) VALUES (?1, ?2)";
        for _ in 0..2 {
            let mut stmt = statements
                .bind(&conn, sql.to_string().into())
                .expect("bind");
            stmt.text(1, "same").expect("text");
            stmt.int(2, 7).expect("int");
            let _ = stmt.execute();
        }
        let mut stmt = statements.bind(&conn, sql.into()).expect("bind");
        stmt.owned(1, Some("same".to_string())).expect("owned");
        let err = stmt.execute().expect_err("a duplicate key");
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        );
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        let mut stmt = statements.bind(&conn, sql.into()).expect("bind");
        stmt.text(1, "other").expect("text");
        stmt.null(2).expect("null");
        assert_eq!(stmt.execute().expect("execute"), 1);
    }

    #[test]
    fn a_statement_of_another_connection_is_never_used() {
        let (first, second) = (table(), table());
        let mut statements = Statements::default();
        let sql = "INSERT INTO t (k) VALUES (?1)";
        let mut stmt = statements.bind(&first, sql.into()).expect("bind");
        stmt.text(1, "x").expect("text");
        stmt.execute().expect("execute");
        // The sink clears on a new connection; if it did not, the statement is prepared anew.
        let mut stmt = statements.bind(&second, sql.into()).expect("bind");
        stmt.text(1, "y").expect("text");
        stmt.execute().expect("execute");
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .expect("count")
        };
        assert_eq!((count(&first), count(&second)), (1, 1));
        drop(statements);
        drop(first);
    }
}
