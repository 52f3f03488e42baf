//! The batch writer on PostgreSQL: COPY into a staging table, then set-based statements.
//!
//! Rows are stamped with the batch transaction's `now()` (the database's clock, see
//! [`batch_transaction`]).
//!
//! Per batch, in one transaction: COPY the valid rows (text format) into a temporary table
//! (`ON COMMIT DELETE ROWS`), classify them with one join against the target (new, changed,
//! unchanged, a key this job already wrote), archive changed history fields with
//! `INSERT … SELECT`, upsert new and changed rows with `INSERT … SELECT … ON CONFLICT DO UPDATE`,
//! stamp unchanged rows, COPY the row errors, and move the job's checkpoint and counts fenced by
//! the lease. Every statement is scoped to the job's organisation (`_sluice_org`). No per-row
//! round trips. If a statement fails on the data (a constraint of the
//! table, a value out of range), the batch is redone one row at a time under savepoints so only
//! the bad rows are rejected.
//!
//! The sink keeps one connection for the whole job. When it is lost (the server restarted or
//! went away: the client is closed, or the error's class is 08/57P), the next attempt opens a
//! new one and creates its temporary staging table again — a new session has none — and the
//! staging table's statistics are gathered again; a connection is never reused after it died.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use chrono::Utc;
use postgres::{Client, Transaction};

use super::binary;
use super::tables::{since_column, sql_type};
use super::{error_text, ident, is_alive, is_row_problem, is_transient, note_lost, nowait};
use crate::dataset::Dataset;
use crate::import::{Batch, BatchCounts, BatchSink, Mode, RowError, SinkError, Value};
use crate::store::ledger::{self, Op};
use crate::store::{Lease, ORG_COLUMN, StoreResult};

const STAGE: &str = "sluice_stage";

/// Longest the check of the connection before a batch may take.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn sink_err(e: postgres::Error) -> SinkError {
    note_lost(&e);
    let text = error_text(&e);
    if is_transient(&e) {
        SinkError::Retryable(text)
    } else {
        SinkError::Fatal(text)
    }
}

fn io_err(e: std::io::Error) -> SinkError {
    SinkError::Retryable(format!("writing COPY data: {e}"))
}

/// Appends a value in COPY text format.
fn copy_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Text(s) | Value::Date(s) | Value::DateTime(s) => copy_text(out, s),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Decimal(d) => out.extend_from_slice(d.to_string().as_bytes()),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
    }
}

fn copy_text(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Text of an error report: PostgreSQL text cannot hold NUL, so it is shown as U+FFFD.
fn copy_report(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) if s.contains('\0') => copy_text(out, &s.replace('\0', "\u{fffd}")),
        Some(s) => copy_text(out, s),
        None => out.extend_from_slice(b"\\N"),
    }
}

/// The key of a row, for spotting a key that repeats inside the batch.
fn key_text(values: &[Value], key: &[usize]) -> String {
    key.iter()
        .map(|&k| values[k].to_text().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// SQL for one job, built at the first batch (it depends on which fields the file has).
struct Plan {
    present: Vec<usize>,
    /// Present non-key fields, in the order of the classification's replaced values.
    compare: Vec<usize>,
    stage_ddl: String,
    copy: String,
    /// `ANALYZE` of the staging table, run with each batch until one that ran it commits: a
    /// temporary table is never analyzed by autovacuum, and without statistics the planner
    /// guesses the join against the target badly (a hash join over the whole table per batch,
    /// ~0.35 s each at 700k rows, instead of 10,000 primary-key probes).
    analyze: String,
    analyzed: std::cell::Cell<bool>,
    classify: String,
    history: Vec<String>,
    upsert: String,
    /// `COPY` straight into the target: the fast path of a batch whose keys are all expected
    /// to be new ([`Writer::copy_all`]).
    copy_new: String,
    stamp: String,
    /// A dry run's: the scratch table's DDL and the statement recording accepted keys.
    scratch: Option<(String, String)>,
}

impl Plan {
    /// `dry`: the job and mode of a dry run (see [`PgSink::dry`]).
    fn new(ds: &Dataset, present_mask: &[bool], dry: Option<(i64, Mode)>) -> Self {
        let present: Vec<usize> = (0..ds.fields.len())
            .filter(|&i| present_mask[i] || ds.is_key(i))
            .collect();
        let compare: Vec<usize> = present.iter().copied().filter(|&i| !ds.is_key(i)).collect();
        let history: Vec<usize> = compare
            .iter()
            .copied()
            .filter(|&i| ds.fields[i].history)
            .collect();
        let table = ident(&ds.table);
        let name = |i: usize| ident(&ds.fields[i].name);
        let keys: Vec<String> = ds.key.iter().map(|&k| name(k)).collect();
        // The organisation is a column of the staged rows (not a parameter), so the planner sees
        // a join on `(_sluice_org, key…)` like the one on the key alone, whatever the target's
        // statistics say; a restriction `_sluice_org = $n` on a table not yet analyzed made it scan
        // the whole organisation per batch.
        let join = std::iter::once(ORG_COLUMN.to_string())
            .chain(keys.iter().cloned())
            .map(|k| format!("t.{k} = s.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let cols: Vec<String> = present.iter().map(|&i| name(i)).collect();

        let stage_cols: Vec<String> = present
            .iter()
            .map(|&i| format!("{} {}", name(i), sql_type(&ds.fields[i])))
            .collect();
        let stage_ddl = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {STAGE}_{t} (ord INT NOT NULL, \"row\" BIGINT NOT NULL, \
             {ORG_COLUMN} BIGINT NOT NULL, {}) ON COMMIT DELETE ROWS",
            stage_cols.join(", "),
            t = ds.table
        );
        let stage = format!("{STAGE}_{}", ds.table);
        let copy = format!(
            "COPY {stage} (ord, \"row\", {ORG_COLUMN}, {}) FROM STDIN",
            cols.join(", ")
        );
        let changed = if compare.is_empty() {
            "false".to_string()
        } else {
            compare
                .iter()
                .map(|&i| format!("t.{0} IS DISTINCT FROM s.{0}", name(i)))
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        // The replaced values of a changed row, as text, for its ledger entry.
        let old = if compare.is_empty() {
            "NULL::text[]".to_string()
        } else {
            format!(
                "CASE WHEN t.{k0} IS NOT NULL AND ({changed}) THEN ARRAY[{}] END",
                compare
                    .iter()
                    .map(|&i| format!("t.{}::text", name(i)))
                    .collect::<Vec<_>>()
                    .join(", "),
                k0 = keys[0]
            )
        };
        let classify = match dry {
            None => format!(
                "SELECT s.ord, t.{k0} IS NOT NULL, t._sluice_job, t._sluice_row, {changed}, {old} \
                 FROM {stage} s LEFT JOIN {table} t ON {join} \
                 WHERE s.ord = ANY($1) ORDER BY s.ord",
                k0 = keys[0]
            ),
            // A dry run reads the keys it accepted in earlier batches from its scratch table
            // as the real writer reads its own stamps (`_sluice_job` = this job); a replace
            // job writes into an empty staging table, so nothing of the live table counts.
            Some((job, mode)) => {
                let target = if mode == Mode::Replace {
                    format!("(SELECT * FROM {table} WHERE false)")
                } else {
                    table.clone()
                };
                let djoin = keys
                    .iter()
                    .map(|k| format!("d.{k} = s.{k}"))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                format!(
                    "SELECT s.ord, (t.{k0} IS NOT NULL OR d._sluice_row IS NOT NULL), \
                     CASE WHEN d._sluice_row IS NOT NULL THEN {job}::bigint ELSE t._sluice_job END, \
                     COALESCE(d._sluice_row, t._sluice_row), {changed} \
                     FROM {stage} s LEFT JOIN {target} t ON {join} \
                     LEFT JOIN {scratch} d ON {djoin} \
                     WHERE s.ord = ANY($1) ORDER BY s.ord",
                    k0 = keys[0],
                    scratch = ident(&crate::store::scratch_table(job)),
                )
            }
        };
        let scratch = dry.map(|(job, _)| {
            let scratch = ident(&crate::store::scratch_table(job));
            let cols: Vec<String> = ds
                .key
                .iter()
                .map(|&k| format!("{} {} NOT NULL", name(k), sql_type(&ds.fields[k])))
                .collect();
            (
                format!(
                    "CREATE TABLE IF NOT EXISTS {scratch} ({}, _sluice_row BIGINT NOT NULL, PRIMARY KEY ({}))",
                    cols.join(", "),
                    keys.join(", ")
                ),
                format!(
                    "INSERT INTO {scratch} ({k}, _sluice_row) SELECT {sk}, s.\"row\" FROM {stage} s WHERE s.ord = ANY($1)",
                    k = keys.join(", "),
                    sk = keys.iter().map(|k| format!("s.{k}")).collect::<Vec<_>>().join(", "),
                ),
            )
        });
        let history_sql = history
            .iter()
            .map(|&i| {
                format!(
                    "INSERT INTO {hist} ({ORG_COLUMN}, {keys}, field, old_value, new_value, valid_from, valid_to, job_id) \
                     SELECT s.{ORG_COLUMN}, {tkeys}, $4, t.{f}::text, s.{f}::text, t.{since}, $3, $2 \
                     FROM {stage} s JOIN {table} t ON {join} \
                     WHERE s.ord = ANY($1) AND t.{f} IS DISTINCT FROM s.{f}",
                    hist = ident(&ds.history_table()),
                    keys = keys.join(", "),
                    tkeys = keys.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", "),
                    f = name(i),
                    since = since_column(&ds.fields[i].name),
                )
            })
            .collect();
        let mut insert_cols = cols.clone();
        insert_cols.extend(
            [
                "_sluice_job",
                "_sluice_row",
                "_sluice_created_at",
                "_sluice_updated_at",
                ORG_COLUMN,
            ]
            .map(String::from),
        );
        insert_cols.extend(history.iter().map(|&i| since_column(&ds.fields[i].name)));
        let mut select_cols: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
        select_cols.extend([
            "$2".into(),
            "s.\"row\"".into(),
            "$3".into(),
            "$3".into(),
            format!("s.{ORG_COLUMN}"),
        ]);
        select_cols.extend(history.iter().map(|_| "$3".to_string()));
        let mut updates: Vec<String> = compare
            .iter()
            .map(|&i| format!("{0} = EXCLUDED.{0}", name(i)))
            .collect();
        updates.extend(
            ["_sluice_job", "_sluice_row", "_sluice_updated_at"]
                .map(|c| format!("{c} = EXCLUDED.{c}")),
        );
        updates.extend(history.iter().map(|&i| {
            let c = since_column(&ds.fields[i].name);
            format!(
                "{c} = CASE WHEN {table}.{f} IS DISTINCT FROM EXCLUDED.{f} THEN EXCLUDED.{c} ELSE {table}.{c} END",
                f = name(i)
            )
        }));
        let upsert = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {stage} s WHERE s.ord = ANY($1) \
             ON CONFLICT ({ORG_COLUMN}, {}) DO UPDATE SET {}",
            insert_cols.join(", "),
            select_cols.join(", "),
            keys.join(", "),
            updates.join(", ")
        );
        // The fast path's COPY leaves every timestamp to the columns' `DEFAULT now()` (the
        // batch transaction's start, which is also the writer's `now`): a timestamp sent as
        // text is parsed per row, and four per row were a third of the COPY's time.
        let mut copy_cols = cols.clone();
        copy_cols.extend(["_sluice_job", "_sluice_row", ORG_COLUMN].map(String::from));
        let copy_new = format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            copy_cols.join(", ")
        );
        let stamp = format!(
            "UPDATE {table} t SET _sluice_job = $2, _sluice_row = s.\"row\" FROM {stage} s \
             WHERE {join} AND s.ord = ANY($1)"
        );
        Plan {
            present,
            compare,
            stage_ddl,
            copy,
            analyze: format!("ANALYZE {stage}"),
            analyzed: std::cell::Cell::new(false),
            classify,
            history: history_sql,
            upsert,
            copy_new,
            stamp,
            scratch,
        }
    }
}

/// Opens a new connection for the sink (with the store's session settings).
pub type Reconnect = Box<dyn Fn() -> StoreResult<Client> + Send>;

pub struct PgSink {
    /// `None` after the connection was lost: the next commit opens a new one.
    conn: Option<Client>,
    reconnect: Reconnect,
    /// Whether this connection's session has the temporary staging table.
    staged: bool,
    /// The last commit failed on a system error, possibly after the server committed it (the
    /// connection died before the answer came): the next attempt checks the checkpoint first.
    uncertain: bool,
    dataset: Arc<Dataset>,
    lease: Lease,
    mode: Mode,
    /// A chunk job's parent: it receives the counts and row errors, and owns the stamps.
    parent: Option<i64>,
    /// The organisation whose rows the job writes.
    org: i64,
    plan: Option<Plan>,
    /// Reused COPY buffer.
    buf: Vec<u8>,
    /// The job's first batch, or the last batch created every row: the next one tries
    /// [`Writer::copy_all`] first (a wrong guess costs a COPY up to the first existing key).
    fresh: bool,
    /// An analysis (dry run), see [`PgSink::dry`].
    dry: bool,
    /// Whether the dry run's scratch key table is known to exist.
    scratch_ready: bool,
}

impl PgSink {
    pub fn new(
        conn: Client,
        reconnect: Reconnect,
        dataset: Arc<Dataset>,
        lease: Lease,
        mode: Mode,
        parent: Option<i64>,
        org: i64,
    ) -> Self {
        Self {
            conn: Some(conn),
            reconnect,
            staged: false,
            uncertain: false,
            dataset,
            lease,
            mode,
            parent,
            org,
            plan: None,
            buf: Vec::new(),
            fresh: true,
            dry: false,
            scratch_ready: false,
        }
    }

    /// Makes this a dry-run writer (an analysis): the same staging, classification and
    /// decision, but instead of writing rows, stamps and history it records the keys it
    /// accepted in the job's scratch table, which the next batches' classification reads as
    /// the real writer reads its stamps.
    pub fn dry(mut self) -> Self {
        self.dry = true;
        self
    }
}

/// What happened to the rows given to one `write_rows` call.
struct Written {
    counts: BatchCounts,
    rejected: Vec<RowError>,
}

/// One pass of the write statements over some rows of the batch.
struct Writer<'a> {
    ds: &'a Dataset,
    plan: &'a Plan,
    job: i64,
    org: i64,
    mode: Mode,
    now: chrono::DateTime<Utc>,
    /// Create the dry run's scratch table in this transaction first.
    create_scratch: bool,
    /// The job's last batch created every row: try [`Writer::copy_all`] first.
    fresh: bool,
}

impl Writer<'_> {
    fn stage(
        &self,
        tx: &mut Transaction<'_>,
        batch: &Batch,
        rows: &[usize],
        buf: &mut Vec<u8>,
    ) -> Result<(), postgres::Error> {
        buf.clear();
        let org = self.org.to_string();
        for &i in rows {
            buf.extend_from_slice(i.to_string().as_bytes());
            buf.push(b'\t');
            buf.extend_from_slice(batch.rows[i].to_string().as_bytes());
            buf.push(b'\t');
            buf.extend_from_slice(org.as_bytes());
            let values = batch.row_values(i);
            for &f in &self.plan.present {
                buf.push(b'\t');
                copy_value(buf, &values[f]);
            }
            buf.push(b'\n');
        }
        let mut w = tx.copy_in(&self.plan.copy)?;
        // A write error here surfaces again from `finish`, with PostgreSQL's reason.
        let _ = w.write_all(buf);
        w.finish()?;
        if !self.plan.analyzed.get() && rows.len() > 1 {
            tx.batch_execute(&self.plan.analyze)?;
        }
        Ok(())
    }

    fn write_rows(
        &self,
        tx: &mut Transaction<'_>,
        batch: &Batch,
        rows: &[usize],
        buf: &mut Vec<u8>,
    ) -> Result<Written, postgres::Error> {
        if self.create_scratch
            && let Some((ddl, _)) = &self.plan.scratch
        {
            tx.batch_execute(ddl)?;
        }
        if self.fresh
            && self.plan.scratch.is_none()
            && let Some(written) = self.copy_all(tx, batch, rows, buf)?
        {
            return Ok(written);
        }
        self.stage(tx, batch, rows, buf)?;
        let ords: Vec<i32> = rows.iter().map(|&i| i as i32).collect();
        let classified = tx.query(&self.plan.classify, &[&ords])?;
        let mut counts = BatchCounts::default();
        let mut rejected = Vec::new();
        let mut seen: HashMap<String, u64> = HashMap::with_capacity(rows.len());
        let (mut upsert, mut changed, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
        // A dry run writes nothing; a replace job's rows go to its staging table (the swap is
        // not a change the ledger records row by row).
        let ledgered = self.plan.scratch.is_none() && self.mode != Mode::Replace;
        let mut entries = self.ledger_copy();
        let ds = self.ds;
        for r in &classified {
            let i = r.get::<_, i32>(0) as usize;
            let exists: bool = r.get(1);
            let job: Option<i64> = r.get(2);
            let first: Option<i64> = r.get(3);
            let differs: Option<bool> = r.get(4);
            let values = batch.row_values(i);
            let key = key_text(values, &self.ds.key);
            let reject = if let Some(first) = seen.get(&key) {
                Some(format!("duplicate key, first seen at row {first}"))
            } else if exists && job == Some(self.job) {
                Some(format!(
                    "duplicate key, first seen at row {}",
                    first.map_or_else(|| "?".to_string(), |r| r.to_string())
                ))
            } else if exists && self.mode == Mode::Insert {
                Some("key already exists (mode=insert)".to_string())
            } else {
                None
            };
            if let Some(message) = reject {
                let k = self.ds.key[0];
                rejected.push(batch.reject(
                    i,
                    &self.ds.key,
                    Some(&self.ds.fields[k].name),
                    values[k].to_text(),
                    message,
                ));
                continue;
            }
            seen.insert(key, batch.rows[i]);
            if !exists {
                counts.created += 1;
                upsert.push(i as i32);
                if ledgered {
                    entries.push(
                        Op::Created,
                        |out| ledger::key_json_into(out, ds, values),
                        None,
                    );
                }
            } else if differs.unwrap_or(true) {
                counts.updated += 1;
                upsert.push(i as i32);
                changed.push(i as i32);
                if ledgered {
                    let old: Option<Vec<Option<String>>> = r.get(5);
                    let old = old.map(|old| {
                        ledger::texts_json(self.ds, &self.plan.compare, |j| {
                            old.get(j).and_then(|t| t.as_deref()).map(Into::into)
                        })
                    });
                    let key = |out: &mut Vec<u8>| ledger::key_json_into(out, ds, values);
                    entries.push(Op::Updated, key, old.as_deref());
                }
            } else {
                counts.unchanged += 1;
                unchanged.push(i as i32);
            }
        }
        if let Some((_, remember)) = &self.plan.scratch {
            let accepted: Vec<i32> = upsert.iter().chain(&unchanged).copied().collect();
            if !accepted.is_empty() {
                tx.execute(remember, &[&accepted])?;
            }
            return Ok(Written { counts, rejected });
        }
        for (sql, &f) in self.plan.history.iter().zip(
            self.plan
                .present
                .iter()
                .filter(|&&i| !self.ds.is_key(i) && self.ds.fields[i].history),
        ) {
            if !changed.is_empty() {
                tx.execute(
                    sql,
                    &[&changed, &self.job, &self.now, &self.ds.fields[f].name],
                )?;
            }
        }
        if !upsert.is_empty() {
            tx.execute(&self.plan.upsert, &[&upsert, &self.job, &self.now])?;
        }
        if !unchanged.is_empty() {
            tx.execute(&self.plan.stamp, &[&unchanged, &self.job])?;
        }
        self.ledger(tx, entries)?;
        Ok(Written { counts, rejected })
    }

    /// The fast path of a batch whose keys are all expected to be new (the job's previous batch
    /// created every row: an initial import): the rows COPYed straight into the target, with no
    /// staging and no classification. When a key exists after all (an earlier batch's, a
    /// duplicate in this one, another job's) or a value does not fit, the COPY fails: it is
    /// rolled back to its savepoint and `None` returned, so the batch goes the usual way (and
    /// meets the problem as a row error there). The COPY is binary ([`binary`]); a value
    /// without an exact binary form returns `None` before anything is sent.
    fn copy_all(
        &self,
        tx: &mut Transaction<'_>,
        batch: &Batch,
        rows: &[usize],
        buf: &mut Vec<u8>,
    ) -> Result<Option<Written>, postgres::Error> {
        buf.clear();
        buf.extend_from_slice(binary::HEADER);
        let fields = self.plan.present.len() + 3;
        for &i in rows {
            let values = batch.row_values(i);
            binary::row(buf, fields);
            for &f in &self.plan.present {
                // A value without an exact binary form: the batch takes the text path.
                if binary::value(buf, self.ds.fields[f].ty, &values[f]).is_err() {
                    return Ok(None);
                }
            }
            // _sluice_job, _sluice_row, the org; the timestamps are the columns' defaults.
            for v in [self.job, batch.rows[i] as i64, self.org] {
                binary::int8(buf, v);
            }
        }
        buf.extend_from_slice(binary::TRAILER);
        tx.batch_execute("SAVEPOINT sluice_copy_all")?;
        let copied = {
            let mut w = tx.copy_in(&self.plan.copy_new)?;
            // A write error here surfaces again from `finish`, with PostgreSQL's reason.
            let _ = w.write_all(buf);
            w.finish()
        };
        match copied {
            Ok(n) if n as usize == rows.len() => {}
            Err(e) if e.as_db_error().is_none() => return Err(e),
            _ => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT sluice_copy_all; RELEASE sluice_copy_all")?;
                return Ok(None);
            }
        }
        tx.batch_execute("RELEASE sluice_copy_all")?;
        if self.mode != Mode::Replace && !rows.is_empty() {
            let mut entries = self.ledger_copy();
            for &i in rows {
                let values = batch.row_values(i);
                entries.push(
                    Op::Created,
                    |out| ledger::key_json_into(out, self.ds, values),
                    None,
                );
            }
            self.ledger(tx, entries)?;
        }
        Ok(Some(Written {
            counts: BatchCounts {
                created: rows.len() as u64,
                ..BatchCounts::default()
            },
            rejected: Vec::new(),
        }))
    }

    /// An empty set of ledger entries of this batch (its organisation, job, dataset and time).
    fn ledger_copy(&self) -> LedgerCopy {
        LedgerCopy::new(self.org, self.job, &self.ds.name, self.now)
    }

    /// COPYs the batch's ledger entries, the last data statement of the batch: the advisory
    /// lock taken first is held to the commit, so entries commit in the order of their `seq`
    /// (see migration 0016) while everything before it ran side by side with other writers.
    /// The entries' COPY data was made before the lock; under it only their cursors are filled
    /// in and the data sent in one piece.
    fn ledger(
        &self,
        tx: &mut Transaction<'_>,
        mut entries: LedgerCopy,
    ) -> Result<(), postgres::Error> {
        let n = entries.len() as i64;
        if n == 0 {
            return Ok(());
        }
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ledger::LEDGER_LOCK])?;
        // The batch's block of cursors, reserved in one step (a `nextval` per entry was a fifth
        // of the COPY): under the lock nobody else draws from the sequence, and `setval` moves
        // this session's `currval` to the block's end, which `range_sql` reads.
        let last: i64 = tx
            .query_one(
                "SELECT setval(pg_get_serial_sequence('ledger', 'seq'), \
                 nextval(pg_get_serial_sequence('ledger', 'seq')) + $1 - 1)",
                &[&n],
            )?
            .get(0);
        let data = entries.finish(last - n + 1);
        let mut w = tx.copy_in(
            "COPY ledger (seq, org_id, at, dataset, job_id, op, key, old) FROM STDIN (FORMAT binary)",
        )?;
        // A write error here surfaces again from `finish`, with PostgreSQL's reason.
        let _ = w.write_all(data);
        w.finish()?;
        let [widen, range] = ledger::range_sql(crate::store::sql::Dialect::Postgres);
        tx.execute(&widen, &[&self.job, &n])?;
        tx.execute(
            &range,
            &[&self.org, &self.ds.name, &self.job, &n, &self.now],
        )?;
        Ok(())
    }
}

/// A batch's ledger entries as `COPY … (FORMAT binary)` data, made row by row before the
/// ledger lock (sent through the client's binary COPY writer, one round of its runtime per
/// entry was a tenth of the writer thread's time, under the lock). Binary: no text to parse for
/// the time (whose text input was a fifth of the COPY's cost). `at` is the upsert's
/// `_sluice_updated_at` to the microsecond: a rollback tells an untouched row by the two being
/// equal. Each entry's cursor is left blank until [`LedgerCopy::finish`].
struct LedgerCopy {
    data: Vec<u8>,
    /// Where each entry's cursor goes.
    seqs: Vec<usize>,
    org: i64,
    job: i64,
    /// The dataset's name as a COPY field (length, then bytes): the same in every entry.
    dataset: Vec<u8>,
    /// Microseconds since 2000-01-01 UTC, PostgreSQL's epoch.
    at: i64,
}

impl LedgerCopy {
    fn new(org: i64, job: i64, dataset: &str, at: chrono::DateTime<Utc>) -> Self {
        Self {
            data: binary::HEADER.to_vec(),
            seqs: Vec::new(),
            org,
            job,
            dataset: [
                &(dataset.len() as i32).to_be_bytes()[..],
                dataset.as_bytes(),
            ]
            .concat(),
            at: binary::micros_since_epoch(at.naive_utc()),
        }
    }

    fn len(&self) -> usize {
        self.seqs.len()
    }

    /// One entry: `key` appends the key's JSON, `old` is the replaced values' JSON.
    fn push(&mut self, op: Op, key: impl FnOnce(&mut Vec<u8>), old: Option<&str>) {
        binary::row(&mut self.data, 8);
        self.seqs.push(self.data.len() + 4);
        binary::int8(&mut self.data, 0);
        binary::int8(&mut self.data, self.org);
        binary::int8(&mut self.data, self.at);
        self.data.extend_from_slice(&self.dataset);
        binary::int8(&mut self.data, self.job);
        binary::bytes(&mut self.data, op.as_str().as_bytes());
        let length_at = self.data.len();
        self.data.extend_from_slice(&0i32.to_be_bytes());
        key(&mut self.data);
        let length = (self.data.len() - length_at - 4) as i32;
        self.data[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
        match old {
            Some(old) => binary::bytes(&mut self.data, old.as_bytes()),
            None => binary::null(&mut self.data),
        }
    }

    /// The COPY data, with the entries' cursors `first`, `first + 1`, … and the trailer.
    fn finish(&mut self, first: i64) -> &[u8] {
        for (seq, &at) in (first..).zip(&self.seqs) {
            self.data[at..at + 8].copy_from_slice(&seq.to_be_bytes());
        }
        self.data.extend_from_slice(binary::TRAILER);
        &self.data
    }
}

impl BatchSink for PgSink {
    fn commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError> {
        let result = self.try_commit(batch, checkpoint);
        self.uncertain = matches!(result, Err(SinkError::Retryable(_)));
        if matches!(result, Err(SinkError::Retryable(_)))
            && let Some(conn) = self.conn.as_mut()
            && !is_alive(conn)
        {
            tracing::warn!("the batch writer's database connection was lost; reconnecting");
            self.conn = None;
        }
        result
    }
}

impl PgSink {
    /// The live connection, with the staging table in its session: a new one if the last was
    /// lost.
    fn connection(&mut self, present: &[bool]) -> Result<(), SinkError> {
        // Checked before each batch too, with a round trip (an empty query: ~0.1 ms against a
        // batch's tens of milliseconds): after a restart the server has already ended the
        // session, and a batch sent on it would only fail and wait a backoff.
        if let Some(conn) = self.conn.as_mut()
            && conn.is_valid(PING_TIMEOUT).is_err()
        {
            tracing::warn!("the batch writer's database connection was closed; reconnecting");
            self.conn = None;
        }
        if self.conn.is_none() {
            let conn = (self.reconnect)().map_err(|e| SinkError::Retryable(e.to_string()))?;
            self.conn = Some(conn);
            self.staged = false;
            if let Some(plan) = &self.plan {
                // A new session's staging table has no statistics yet.
                plan.analyzed.set(false);
            }
        }
        let dry = self
            .dry
            .then(|| (self.parent.unwrap_or(self.lease.job_id), self.mode));
        let plan = self
            .plan
            .get_or_insert_with(|| Plan::new(&self.dataset, present, dry));
        if !self.staged
            && let Some(conn) = self.conn.as_mut()
        {
            conn.batch_execute(&plan.stage_ddl).map_err(sink_err)?;
            self.staged = true;
        }
        Ok(())
    }

    fn try_commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError> {
        self.connection(&batch.present)?;
        let (Some(plan), Some(conn)) = (self.plan.as_ref(), self.conn.as_mut()) else {
            return Err(SinkError::Fatal("no write plan".into()));
        };
        if self.uncertain {
            // Only after a failed attempt, so off the hot path: if the checkpoint already is
            // this batch's, the failed attempt did commit, and redoing it would count it twice.
            let row = conn
                .query_opt(
                    "SELECT rows_done FROM jobs WHERE id = $1 AND lease_token = $2 AND status = 'processing'",
                    &[&self.lease.job_id, &self.lease.token],
                )
                .map_err(sink_err)?;
            match row.map(|r| r.get::<_, i64>(0)) {
                None => return Err(SinkError::LeaseLost),
                Some(done) if batch.records > 0 && done as u64 == checkpoint => {
                    tracing::info!(
                        checkpoint,
                        "the batch had committed before the connection was lost"
                    );
                    return Ok(BatchCounts::default());
                }
                Some(_) => {}
            }
        }
        let all: Vec<usize> = (0..batch.len()).collect();
        let (mut tx, now) = batch_transaction(conn)?;
        let writer = Writer {
            ds: &self.dataset,
            plan,
            job: self.parent.unwrap_or(self.lease.job_id),
            org: self.org,
            mode: self.mode,
            now,
            create_scratch: self.dry && !self.scratch_ready,
            fresh: self.fresh,
        };
        let written = match writer.write_rows(&mut tx, batch, &all, &mut self.buf) {
            Ok(w) => w,
            Err(e) if is_row_problem(&e) => {
                drop(tx);
                return row_by_row(
                    conn,
                    &writer,
                    &self.lease,
                    self.parent,
                    batch,
                    checkpoint,
                    &mut self.buf,
                );
            }
            Err(e) => return Err(sink_err(e)),
        };
        let counts = finish_batch(
            &mut tx,
            &self.dataset,
            &self.lease,
            self.parent,
            batch,
            written,
            checkpoint,
            &mut self.buf,
        )?;
        tx.commit().map_err(sink_err)?;
        if counts.created + counts.updated > 0 && !self.dry {
            summarize_ledger(conn);
        }
        self.fresh = !batch.is_empty() && counts.created == batch.len() as u64;
        // The statistics stay once a batch that gathered them committed.
        plan.analyzed.set(true);
        self.scratch_ready = self.dry;
        Ok(counts)
    }
}

/// Summarises the ledger's block ranges this batch appended ([`ledger::SUMMARIZE_SQL`]), after
/// its commit: best effort, waiting for no lock.
fn summarize_ledger(conn: &mut Client) {
    let done = nowait(conn).and_then(|mut tx| {
        tx.batch_execute(ledger::SUMMARIZE_SQL)?;
        tx.commit()
    });
    if let Err(e) = done {
        tracing::debug!(error = %e, "the ledger's new block ranges are left for later");
    }
}

/// A batch's transaction. Every join it makes is the staged batch (at most a batch of rows)
/// against the target table on `(_sluice_org, key…)`, which the primary key or sluice's unique
/// index serves: primary-key probes are the right plan whatever the table's size. Left to its
/// costs, the planner often hashes the batch and scans the whole target instead (0.2–0.35 s per
/// statement at 700k rows, several statements per batch), so hash and merge joins are off for
/// this transaction only.
///
/// Returned with the transaction's `now()`, the time every row, history entry and ledger entry
/// of the batch is stamped with: the database's clock, so that the rows the fast path COPYs
/// (stamped by the columns' `DEFAULT now()`) and the rest agree to the microsecond.
fn batch_transaction(
    conn: &mut Client,
) -> Result<(Transaction<'_>, chrono::DateTime<Utc>), SinkError> {
    let mut tx = conn.transaction().map_err(sink_err)?;
    tx.batch_execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        .map_err(sink_err)?;
    let now = tx.query_one("SELECT now()", &[]).map_err(sink_err)?.get(0);
    Ok((tx, now))
}

/// Redoes a batch one row at a time under savepoints; rows the database refuses become errors.
fn row_by_row(
    conn: &mut Client,
    writer: &Writer<'_>,
    lease: &Lease,
    parent: Option<i64>,
    batch: &Batch,
    checkpoint: u64,
    buf: &mut Vec<u8>,
) -> Result<BatchCounts, SinkError> {
    let (mut tx, now) = batch_transaction(conn)?;
    let writer = &Writer { now, ..*writer };
    let mut total = Written {
        counts: BatchCounts::default(),
        rejected: Vec::new(),
    };
    for i in 0..batch.len() {
        let mut sp = tx.savepoint("sluice_row").map_err(sink_err)?;
        match writer.write_rows(&mut sp, batch, &[i], buf) {
            Ok(w) => {
                sp.commit().map_err(sink_err)?;
                total.counts.created += w.counts.created;
                total.counts.updated += w.counts.updated;
                total.counts.unchanged += w.counts.unchanged;
                total.rejected.extend(w.rejected);
            }
            Err(e) if is_row_problem(&e) => {
                let reason = match e.as_db_error() {
                    Some(d) if d.code().code().starts_with("23") => match d.constraint() {
                        Some(name) => format!("constraint {name} failed"),
                        None => "constraint failed".to_string(),
                    },
                    Some(d) => match d.column() {
                        Some(col) => format!("value not valid for column {col}"),
                        None => "a value is not valid for its column".to_string(),
                    },
                    None => "constraint failed".to_string(),
                };
                drop(sp);
                total.rejected.push(batch.reject(
                    i,
                    &writer.ds.key,
                    None,
                    None,
                    format!("the database refused the row ({reason})"),
                ));
            }
            Err(e) => return Err(sink_err(e)),
        }
    }
    let counts = finish_batch(
        &mut tx, writer.ds, lease, parent, batch, total, checkpoint, buf,
    )?;
    tx.commit().map_err(sink_err)?;
    Ok(counts)
}

/// COPYs the row errors and moves the checkpoint and counts, fenced by the lease.
#[allow(clippy::too_many_arguments)]
fn finish_batch(
    tx: &mut Transaction<'_>,
    ds: &Dataset,
    lease: &Lease,
    parent: Option<i64>,
    batch: &Batch,
    written: Written,
    checkpoint: u64,
    buf: &mut Vec<u8>,
) -> Result<BatchCounts, SinkError> {
    let mut counts = written.counts;
    let errors: Vec<&RowError> = written.rejected.iter().chain(batch.errors.iter()).collect();
    counts.errors = errors.len() as u64;
    if !errors.is_empty() {
        buf.clear();
        for e in &errors {
            let record = serde_json::to_string(&e.record).unwrap_or_else(|_| "[]".into());
            buf.extend_from_slice(
                format!("{}\t{}\t", parent.unwrap_or(lease.job_id), e.row).as_bytes(),
            );
            copy_report(buf, e.column.as_deref());
            buf.push(b'\t');
            copy_report(buf, e.value.as_deref());
            buf.push(b'\t');
            copy_report(buf, Some(&e.message));
            buf.push(b'\t');
            copy_report(buf, Some(&record));
            buf.push(b'\t');
            let key = e.key.as_ref().map(|k| ledger::key_values_json(ds, k));
            copy_report(buf, key.as_deref());
            buf.push(b'\n');
        }
        let mut w = tx
            .copy_in(
                "COPY job_errors (job_id, \"row\", \"column\", value, message, record, key) FROM STDIN",
            )
            .map_err(sink_err)?;
        w.write_all(buf).map_err(io_err)?;
        w.finish().map_err(sink_err)?;
    }
    let n = tx
        .execute(
            "UPDATE jobs SET rows_done = $1, created_count = created_count + $2, updated_count = updated_count + $3, \
             unchanged_count = unchanged_count + $4, error_count = error_count + $5, batches_done = batches_done + 1 \
             WHERE id = $6 AND lease_token = $7 AND status = 'processing'",
            &[
                &(checkpoint as i64),
                &(counts.created as i64),
                &(counts.updated as i64),
                &(counts.unchanged as i64),
                &(counts.errors as i64),
                &lease.job_id,
                &lease.token,
            ],
        )
        .map_err(sink_err)?;
    if n != 1 {
        return Err(SinkError::LeaseLost);
    }
    // A chunk's parent shows the progress of the whole file.
    if let Some(parent) = parent {
        tx.execute(
            "UPDATE jobs SET created_count = created_count + $1, updated_count = updated_count + $2, \
             unchanged_count = unchanged_count + $3, error_count = error_count + $4, batches_done = batches_done + 1 \
             WHERE id = $5",
            &[
                &(counts.created as i64),
                &(counts.updated as i64),
                &(counts.unchanged as i64),
                &(counts.errors as i64),
                &parent,
            ],
        )
        .map_err(sink_err)?;
    }
    Ok(counts)
}
