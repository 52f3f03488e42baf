//! Undoing an import from the change ledger (issue 16), one batch per transaction, written once
//! for both databases over the [`Sql`] seam.
//!
//! A rollback job walks the ledger entries of the job it undoes in cursor order (each key
//! appears once per job, so the order does not matter) after its own checkpoint
//! (`jobs.ledger_cursor`), and for each entry: a created row is deleted, an updated row gets its
//! replaced values back (history archived as for any update), a deleted row is inserted again.
//! A row that changed after the entry — its `_sluice_updated_at` is no longer the entry's time,
//! or it is gone, or (for a deletion) it exists again — is a **conflict**: left alone and
//! reported as a row error naming the job that changed it, unless the rollback is forced. Every
//! change the rollback makes is itself a ledger entry (so a rollback can be rolled back, and the
//! change feed shows it). The batch's rows, entries, row errors, counts and checkpoint commit
//! together, fenced by the lease: a rollback killed at any moment resumes exactly.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::ledger::{self, Op};
use super::sql::{Dialect, Row, Sql, Value, params};
use super::{JobId, Lease, ORG_COLUMN, StoreError, StoreResult};
use crate::dataset::{Dataset, Field, FieldType};

/// What one batch of a rollback did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollbackBatch {
    /// Ledger entries handled (undone or reported).
    pub entries: u64,
    /// Rows inserted again (deletions undone).
    pub created: u64,
    /// Rows given their replaced values back.
    pub updated: u64,
    /// Rows deleted (creations undone).
    pub deleted: u64,
    /// Rows left alone because a later job changed them.
    pub conflicts: u64,
}

pub(super) fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

fn since(field: &str) -> String {
    format!("_sluice_since_{field}")
}

/// The `$n` placeholder of a field's value, typed for the column it is written to or compared
/// with (PostgreSQL cannot bind text to NUMERIC, DATE or TIMESTAMP).
pub(super) fn slot(d: Dialect, ty: FieldType, n: usize) -> String {
    match (d, ty) {
        (Dialect::Postgres, FieldType::Decimal) => format!("CAST(CAST(${n} AS TEXT) AS NUMERIC)"),
        (Dialect::Postgres, FieldType::Date) => format!("CAST(CAST(${n} AS TEXT) AS DATE)"),
        (Dialect::Postgres, FieldType::Datetime) => {
            format!("CAST(CAST(${n} AS TEXT) AS TIMESTAMP)")
        }
        _ => format!("${n}"),
    }
}

/// A field read back as text on both databases.
pub(super) fn selected(d: Dialect, f: &Field) -> String {
    selected_of(d, f, "")
}

/// [`selected`] of the table named `alias` (`"t."`).
pub(super) fn selected_of(d: Dialect, f: &Field, alias: &str) -> String {
    match (d, f.ty) {
        (Dialect::Postgres, FieldType::Decimal | FieldType::Date | FieldType::Datetime) => {
            format!("CAST({alias}{} AS TEXT)", ident(&f.name))
        }
        _ => format!("{alias}{}", ident(&f.name)),
    }
}

/// A ledger JSON value as the parameter of its field.
fn bound(field: &Field, v: &Json) -> StoreResult<Value> {
    let bad = || {
        StoreError::Corrupt(format!(
            "ledger value {v} does not fit field `{}`",
            field.name
        ))
    };
    Ok(match (field.ty, v) {
        (_, Json::Null) => Value::Null,
        (FieldType::Integer, Json::Number(n)) => Value::Int(n.as_i64().ok_or_else(bad)?),
        (FieldType::Boolean, Json::Bool(b)) => Value::Bool(*b),
        (_, Json::String(s)) => Value::Text(s.clone()),
        _ => return Err(bad()),
    })
}

/// A stored value as text (for its ledger JSON and history), `None` for NULL.
pub(super) fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(s.as_str().into()),
        Value::Int(n) => Some(n.to_string().into()),
        Value::Real(f) => Some(f.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        Value::Time(t) => Some(t.to_rfc3339().into()),
    }
}

/// One ledger entry being undone.
struct Undo {
    seq: i64,
    op: String,
    key_text: String,
    key: Vec<Value>,
    old: Option<serde_json::Map<String, Json>>,
    at: DateTime<Utc>,
}

/// The row as it is now: every field (text on both databases) and when it was last written.
pub(super) struct Current {
    pub(super) values: Vec<Value>,
    updated_at: Option<DateTime<Utc>>,
    /// The job that last wrote (or found unchanged) the row.
    job: Option<JobId>,
    since: Vec<Option<DateTime<Utc>>>,
}

/// Undoes up to `limit` more of `target`'s ledger entries for the rollback job holding `lease`,
/// in the caller's transaction. `None` when the lease was lost (nothing is written then).
#[allow(clippy::too_many_arguments)]
pub fn batch(
    c: &mut dyn Sql,
    ds: &Dataset,
    lease: &Lease,
    target: JobId,
    org: i64,
    force: bool,
    limit: u64,
) -> StoreResult<Option<RollbackBatch>> {
    // Fenced first: on PostgreSQL the job's row stays locked to the commit, so an operator's
    // cancel waits for this batch instead of slipping in between.
    let Some(me) = c.query_opt(
        "UPDATE jobs SET batches_done = batches_done + 1 \
         WHERE id = $1 AND lease_token = $2 AND status = 'processing' \
         RETURNING ledger_cursor, rows_done",
        params![lease.job_id, lease.token.as_str()],
    )?
    else {
        return Ok(None);
    };
    let cursor = me.opt_i64(0)?.unwrap_or(0);
    let rows_done = me.u64(1)?;
    let entries = match range_of(c, target)? {
        Some((of, dataset, first, last)) => ledger::entries(
            c,
            "seq, op, key, old, at",
            &ledger::Span {
                org: of,
                dataset: &dataset,
                job: Some(target),
                after: (first - 1).max(cursor),
                upto: Some(last),
            },
            limit,
        )?,
        None => Vec::new(),
    };
    let now = Utc::now();
    let undos: Vec<Undo> = entries
        .iter()
        .map(|r| undo_of(ds, r))
        .collect::<StoreResult<_>>()?;
    let keys: Vec<&[Value]> = undos.iter().map(|u| u.key.as_slice()).collect();
    let currents = currents(c, ds, org, &keys)?;
    let mut done = RollbackBatch::default();
    let mut mine: Vec<ledger::Entry> = Vec::new();
    let mut doomed: Vec<&[Value]> = Vec::new();
    let mut conflicts: Vec<[Value; 6]> = Vec::new();
    let mut restores: Vec<Restore<'_>> = Vec::new();
    let mut reinserts: Vec<&Undo> = Vec::new();
    let mut last = cursor;
    for (undo, current) in undos.iter().zip(currents) {
        last = undo.seq;
        done.entries += 1;
        let conflict = match (undo.op.as_str(), &current) {
            ("deleted", None) => false,
            ("deleted", Some(_)) => true,
            (_, None) => true,
            (_, Some(row)) => row.updated_at != Some(undo.at),
        };
        if conflict && !force {
            done.conflicts += 1;
            conflicts.push(conflict_error(
                ds,
                lease.job_id,
                undo,
                current.as_ref(),
                rows_done + done.entries,
            ));
            continue;
        }
        match (undo.op.as_str(), current) {
            // A row the import created: deleted (forced over a later change too).
            ("created", Some(row)) => {
                doomed.push(&undo.key);
                let old = row_json(ds, &all(ds), &row.values);
                mine.push(entry_of(Op::Deleted, undo, Some(old)));
                done.deleted += 1;
            }
            // A row the import updated (or deleted, and that was created again since: forced):
            // its replaced values back.
            ("updated" | "deleted", Some(row)) => {
                restores.push(Restore { undo, row });
                done.updated += 1;
            }
            ("deleted", None) => {
                reinserts.push(undo);
                mine.push(entry_of(Op::Created, undo, None));
                done.created += 1;
            }
            // Forced over a row that is gone since: nothing left to undo.
            ("created" | "updated", None) => {}
            (other, _) => {
                return Err(StoreError::Corrupt(format!(
                    "unknown ledger operation `{other}`"
                )));
            }
        }
    }
    // A job meets each key once: the deletions are independent of the rest of the batch.
    delete_all(c, ds, org, &doomed)?;
    reinsert_all(c, ds, lease.job_id, org, &reinserts, now)?;
    let olds = restore_all(c, ds, lease.job_id, org, &restores, now)?;
    for (r, old) in restores.iter().zip(olds) {
        mine.push(entry_of(Op::Updated, r.undo, Some(old)));
    }
    conflicts_insert(c, &conflicts)?;
    ledger::insert(c, &ds.name, lease.job_id, org, &mine, now)?;
    c.execute(
        "UPDATE jobs SET rows_done = rows_done + $2, ledger_cursor = $3, \
         created_count = created_count + $4, updated_count = updated_count + $5, \
         deleted_count = deleted_count + $6, error_count = error_count + $7 WHERE id = $1",
        params![
            lease.job_id,
            done.entries as i64,
            last,
            done.created as i64,
            done.updated as i64,
            done.deleted as i64,
            done.conflicts as i64
        ],
    )?;
    Ok(Some(done))
}

fn all(ds: &Dataset) -> Vec<usize> {
    (0..ds.fields.len()).collect()
}

/// A key's JSON (the ledger's form) as the parameters of its key fields, in key order.
pub(super) fn key_values(ds: &Dataset, key_text: &str) -> StoreResult<Vec<Value>> {
    match serde_json::from_str::<Json>(key_text) {
        Ok(Json::Object(map)) => ds
            .key
            .iter()
            .map(|&k| {
                let f = &ds.fields[k];
                bound(f, map.get(&f.name).unwrap_or(&Json::Null))
            })
            .collect(),
        _ => Err(StoreError::Corrupt(
            "a ledger key is not a JSON object".into(),
        )),
    }
}

fn undo_of(ds: &Dataset, r: &Row) -> StoreResult<Undo> {
    let key_text = r.text(2)?;
    let key = key_values(ds, &key_text)?;
    let old = match r.opt_text(3)? {
        None => None,
        Some(t) => match serde_json::from_str::<Json>(&t) {
            Ok(Json::Object(map)) => Some(map),
            _ => {
                return Err(StoreError::Corrupt(
                    "ledger values are not a JSON object".into(),
                ));
            }
        },
    };
    Ok(Undo {
        seq: r.i64(0)?,
        op: r.text(1)?,
        key_text,
        key,
        old,
        at: r.time(4)?,
    })
}

fn key_params(org: i64, key: &[Value]) -> Vec<Value> {
    std::iter::once(Value::Int(org))
        .chain(key.iter().cloned())
        .collect()
}

/// A key field's `$n` in a `VALUES` list, typed on PostgreSQL (there is no column to infer the
/// type from).
fn typed_slot(d: Dialect, ty: FieldType, n: usize) -> String {
    match (d, ty) {
        (Dialect::Postgres, FieldType::Integer) => format!("CAST(${n} AS BIGINT)"),
        (Dialect::Postgres, FieldType::Boolean) => format!("CAST(${n} AS BOOLEAN)"),
        (Dialect::Postgres, FieldType::Text) => format!("CAST(${n} AS TEXT)"),
        _ => slot(d, ty, n),
    }
}

/// `(VALUES (0, $2, …), (1, $4, …) …)`: the keys as a table, `column1` their position in
/// `keys` (written `with_index`) and `column2…` the key fields; the parameters after `$1`.
fn key_table(
    d: Dialect,
    ds: &Dataset,
    keys: &[&[Value]],
    with_index: bool,
) -> (String, Vec<Value>) {
    let mut params = Vec::with_capacity(keys.len() * ds.key.len());
    let rows: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let mut cells: Vec<String> = Vec::with_capacity(ds.key.len() + 1);
            if with_index {
                cells.push(i.to_string());
            }
            for (j, &k) in ds.key.iter().enumerate() {
                params.push(key[j].clone());
                cells.push(typed_slot(d, ds.fields[k].ty, 1 + params.len()));
            }
            format!("({})", cells.join(", "))
        })
        .collect();
    (format!("(VALUES {})", rows.join(", ")), params)
}

/// Keys per statement that looks rows up by a `VALUES` list of keys: PostgreSQL plans 1,000
/// keys as a hash join over a scan of the whole table (28 ms for 150k rows, and growing with
/// the table); at 100 it walks the primary key for each.
const KEYS_PER_STATEMENT: usize = 100;

/// The rows of `keys` as they are now, in the order of `keys` (`None`: no such row): every
/// field (text on both databases), the last write and the history fields' validity, one
/// statement per [`KEYS_PER_STATEMENT`] keys.
pub(super) fn currents(
    c: &mut dyn Sql,
    ds: &Dataset,
    org: i64,
    keys: &[&[Value]],
) -> StoreResult<Vec<Option<Current>>> {
    let mut found = Vec::with_capacity(keys.len());
    for part in keys.chunks(KEYS_PER_STATEMENT) {
        found.extend(currents_of(c, ds, org, part)?);
    }
    Ok(found)
}

fn currents_of(
    c: &mut dyn Sql,
    ds: &Dataset,
    org: i64,
    keys: &[&[Value]],
) -> StoreResult<Vec<Option<Current>>> {
    let mut found: Vec<Option<Current>> = (0..keys.len()).map(|_| None).collect();
    if keys.is_empty() {
        return Ok(found);
    }
    let d = c.dialect();
    let mut cols: Vec<String> = vec!["v.column1".into()];
    cols.extend(ds.fields.iter().map(|f| selected_of(d, f, "t.")));
    cols.push("t._sluice_updated_at".into());
    cols.push("t._sluice_job".into());
    cols.extend(
        ds.fields
            .iter()
            .filter(|f| f.history)
            .map(|f| format!("t.{}", since(&f.name))),
    );
    let on: Vec<String> = ds
        .key
        .iter()
        .enumerate()
        .map(|(j, &k)| format!("t.{} = v.column{}", ident(&ds.fields[k].name), j + 2))
        .collect();
    let (values, key_params) = key_table(d, ds, keys, true);
    let mut params = vec![Value::Int(org)];
    params.extend(key_params);
    let rows = c.query(
        &format!(
            "SELECT {} FROM {values} AS v JOIN {} t ON t.{ORG_COLUMN} = $1 AND {}",
            cols.join(", "),
            ident(&ds.table),
            on.join(" AND ")
        ),
        &params,
    )?;
    let n = ds.fields.len();
    let history = ds.fields.iter().filter(|f| f.history).count();
    for row in rows {
        let i = usize::try_from(row.i64(0)?)
            .map_err(|_| StoreError::Corrupt("a key's position is negative".into()))?;
        let since = (0..history)
            .map(|h| row.opt_time(n + 3 + h))
            .collect::<StoreResult<_>>()?;
        let current = Current {
            values: row.0[1..=n].to_vec(),
            updated_at: row.opt_time(n + 1)?,
            job: row.opt_i64(n + 2)?,
            since,
        };
        if let Some(slot) = found.get_mut(i) {
            *slot = Some(current);
        }
    }
    Ok(found)
}

/// Deletes the organisation's rows of `keys`, one statement per [`KEYS_PER_STATEMENT`].
fn delete_all(c: &mut dyn Sql, ds: &Dataset, org: i64, keys: &[&[Value]]) -> StoreResult<()> {
    let d = c.dialect();
    let cols: Vec<String> = ds.key.iter().map(|&k| ident(&ds.fields[k].name)).collect();
    for part in keys.chunks(KEYS_PER_STATEMENT) {
        let (values, key_params) = key_table(d, ds, part, false);
        let mut params = vec![Value::Int(org)];
        params.extend(key_params);
        c.execute(
            &format!(
                "DELETE FROM {} WHERE {ORG_COLUMN} = $1 AND ({}) IN {values}",
                ident(&ds.table),
                cols.join(", ")
            ),
            &params,
        )?;
    }
    Ok(())
}

fn row_json(ds: &Dataset, fields: &[usize], values: &[Value]) -> String {
    ledger::texts_json(ds, fields, |j| values.get(fields[j]).and_then(text))
}

fn entry_of(op: Op, undo: &Undo, old: Option<String>) -> ledger::Entry {
    ledger::Entry {
        op,
        key: undo.key_text.clone(),
        old,
    }
}

/// One row a batch gives its replaced values back.
struct Restore<'a> {
    undo: &'a Undo,
    row: Current,
}

/// A history row: the organisation, the key, the field, old and new value, valid from.
type Archived = (
    Vec<Value>,
    String,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
);

/// Gives rows the values their entries replaced — one `UPDATE … FROM (VALUES …)` per
/// [`KEYS_PER_STATEMENT`] rows
/// that replaced the same fields — and archives every history field whose value changes, closing
/// its current validity. Returns each row's replaced values (JSON: the rollback's own entries'
/// `old`), in the order of `items`.
fn restore_all(
    c: &mut dyn Sql,
    ds: &Dataset,
    job: JobId,
    org: i64,
    items: &[Restore<'_>],
    now: DateTime<Utc>,
) -> StoreResult<Vec<String>> {
    let d = c.dialect();
    let history: Vec<usize> = (0..ds.fields.len())
        .filter(|&i| ds.fields[i].history)
        .collect();
    let mut olds = Vec::with_capacity(items.len());
    let mut groups: std::collections::BTreeMap<Vec<usize>, Vec<usize>> = Default::default();
    for (n, item) in items.iter().enumerate() {
        let old = item.undo.old.as_ref().ok_or_else(|| {
            StoreError::Corrupt("an update's ledger entry has no replaced values".into())
        })?;
        // The fields the entry replaced, in dataset order.
        let fields: Vec<usize> = (0..ds.fields.len())
            .filter(|&i| !ds.is_key(i) && old.contains_key(&ds.fields[i].name))
            .collect();
        olds.push(row_json(ds, &fields, &item.row.values));
        groups.entry(fields).or_default().push(n);
    }
    let mut archived: Vec<Archived> = Vec::new();
    for (fields, members) in groups {
        if fields.is_empty() {
            continue;
        }
        // History fields among them, with their place among all history fields.
        let hist: Vec<(usize, usize)> = history
            .iter()
            .enumerate()
            .filter(|(_, i)| fields.contains(i))
            .map(|(h, &i)| (h, i))
            .collect();
        let (nk, nf) = (ds.key.len(), fields.len());
        let mut sets: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(j, &i)| format!("{} = v.column{}", ident(&ds.fields[i].name), nk + 1 + j))
            .collect();
        sets.push("_sluice_job = $2".into());
        sets.push("_sluice_updated_at = $3".into());
        for (x, &(_, i)) in hist.iter().enumerate() {
            let col = since(&ds.fields[i].name);
            sets.push(format!(
                "{col} = CASE WHEN v.column{} THEN $3 ELSE {col} END",
                nk + nf + 1 + x
            ));
        }
        let on: Vec<String> = ds
            .key
            .iter()
            .enumerate()
            .map(|(j, &k)| format!("t.{} = v.column{}", ident(&ds.fields[k].name), j + 1))
            .collect();
        for chunk in members.chunks(KEYS_PER_STATEMENT) {
            let mut params = vec![Value::Int(org), Value::Int(job), Value::Time(now)];
            let mut rows = Vec::with_capacity(chunk.len());
            for &n in chunk {
                let Restore { undo, row } = &items[n];
                let old = undo.old.as_ref().ok_or_else(|| {
                    StoreError::Corrupt("an update's ledger entry has no replaced values".into())
                })?;
                let mut cells = Vec::with_capacity(nk + nf + hist.len());
                for (j, &k) in ds.key.iter().enumerate() {
                    params.push(undo.key[j].clone());
                    cells.push(typed_slot(d, ds.fields[k].ty, params.len()));
                }
                let mut values = Vec::with_capacity(nf);
                for &i in &fields {
                    let f = &ds.fields[i];
                    let v = bound(f, &old[&f.name])?;
                    values.push(v.clone());
                    params.push(v);
                    cells.push(typed_slot(d, f.ty, params.len()));
                }
                for &(h, i) in &hist {
                    let f = &ds.fields[i];
                    let j = fields.iter().position(|&x| x == i).unwrap_or_default();
                    let before = text(&row.values[i]).map(Cow::into_owned);
                    let after = text(&values[j]).map(Cow::into_owned);
                    let changed = ledger::text_json(f, before.as_deref())
                        != ledger::text_json(f, after.as_deref());
                    if changed {
                        archived.push((
                            key_params(org, &undo.key),
                            f.name.clone(),
                            before,
                            after,
                            row.since[h],
                        ));
                    }
                    params.push(Value::Bool(changed));
                    cells.push(typed_slot(d, FieldType::Boolean, params.len()));
                }
                rows.push(format!("({})", cells.join(", ")));
            }
            c.execute(
                &format!(
                    "UPDATE {} AS t SET {} FROM (VALUES {}) AS v WHERE t.{ORG_COLUMN} = $1 AND {}",
                    ident(&ds.table),
                    sets.join(", "),
                    rows.join(", "),
                    on.join(" AND ")
                ),
                &params,
            )?;
        }
    }
    archive_all(c, ds, &archived, now, job)?;
    Ok(olds)
}

/// Inserts history rows, 200 a statement.
fn archive_all(
    c: &mut dyn Sql,
    ds: &Dataset,
    rows: &[Archived],
    now: DateTime<Utc>,
    job: JobId,
) -> StoreResult<()> {
    let keys: Vec<String> = ds.key.iter().map(|&k| ident(&ds.fields[k].name)).collect();
    let d = c.dialect();
    for part in rows.chunks(200) {
        let mut params = vec![Value::Time(now), Value::Int(job)];
        let mut slots = Vec::with_capacity(part.len());
        for (key, field, old, new, valid_from) in part {
            let mut cells = Vec::with_capacity(keys.len() + 7);
            // The organisation, then the key fields.
            for (j, v) in key.iter().enumerate() {
                params.push(v.clone());
                cells.push(if j == 0 {
                    format!("${}", params.len())
                } else {
                    slot(d, ds.fields[ds.key[j - 1]].ty, params.len())
                });
            }
            for v in [
                Value::Text(field.clone()),
                old.clone().map_or(Value::Null, Value::Text),
                new.clone().map_or(Value::Null, Value::Text),
                valid_from.map_or(Value::Null, Value::Time),
            ] {
                params.push(v);
                cells.push(format!("${}", params.len()));
            }
            cells.push("$1".into());
            cells.push("$2".into());
            slots.push(format!("({})", cells.join(", ")));
        }
        c.execute(
            &format!(
                "INSERT INTO {} ({ORG_COLUMN}, {}, field, old_value, new_value, valid_from, valid_to, job_id) \
                 VALUES {}",
                ident(&ds.history_table()),
                keys.join(", "),
                slots.join(", ")
            ),
            &params,
        )?;
    }
    Ok(())
}

/// Inserts deleted rows again from the values their deletions recorded: multi-row `INSERT`s,
/// one per field set (a deletion records every field, so normally one), of at most 500 rows and
/// 30,000 parameters (SQLite allows 32,766, PostgreSQL 65,535).
fn reinsert_all(
    c: &mut dyn Sql,
    ds: &Dataset,
    job: JobId,
    org: i64,
    undos: &[&Undo],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let d = c.dialect();
    let mut groups: Vec<(Vec<usize>, Vec<&Undo>)> = Vec::new();
    for &undo in undos {
        let old = undo
            .old
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("a deletion's ledger entry has no values".into()))?;
        let fields: Vec<usize> = (0..ds.fields.len())
            .filter(|&i| old.contains_key(&ds.fields[i].name))
            .collect();
        match groups.iter_mut().find(|(f, _)| *f == fields) {
            Some((_, list)) => list.push(undo),
            None => groups.push((fields, vec![undo])),
        }
    }
    for (fields, list) in &groups {
        let mut cols = vec![
            ORG_COLUMN.to_string(),
            "_sluice_job".into(),
            "_sluice_created_at".into(),
            "_sluice_updated_at".into(),
        ];
        cols.extend(fields.iter().map(|&i| ident(&ds.fields[i].name)));
        let histories: Vec<&Field> = ds.fields.iter().filter(|f| f.history).collect();
        cols.extend(histories.iter().map(|f| since(&f.name)));
        let per_statement = (30_000 / fields.len().max(1)).clamp(1, 500);
        for part in list.chunks(per_statement) {
            let mut params = vec![Value::Int(org), Value::Int(job), Value::Time(now)];
            let mut rows = Vec::with_capacity(part.len());
            for undo in part {
                let old = undo.old.as_ref().ok_or_else(|| {
                    StoreError::Corrupt("a deletion's ledger entry has no values".into())
                })?;
                let mut slots = vec!["$1".to_string(), "$2".into(), "$3".into(), "$3".into()];
                for &i in fields {
                    let f = &ds.fields[i];
                    params.push(bound(f, &old[&f.name])?);
                    slots.push(slot(d, f.ty, params.len()));
                }
                slots.extend(histories.iter().map(|_| "$3".to_string()));
                rows.push(format!("({})", slots.join(", ")));
            }
            c.execute(
                &format!(
                    "INSERT INTO {} ({}) VALUES {}",
                    ident(&ds.table),
                    cols.join(", "),
                    rows.join(", ")
                ),
                &params,
            )?;
        }
    }
    Ok(())
}

/// Records a conflict as a row error of the rollback, naming the job that changed the row.
fn conflict_error(
    ds: &Dataset,
    job: JobId,
    undo: &Undo,
    now: Option<&Current>,
    row: u64,
) -> [Value; 6] {
    // The row's own last writer: a lookup of the key in later ledger entries would scan every
    // entry since, per conflict.
    let keep = "left as it is (force=true overwrites)";
    let message = match (now, undo.op.as_str()) {
        (None, _) => format!("deleted after this import; {keep}"),
        (Some(row), "deleted") => match row.job {
            Some(by) => format!("created again by job {by} after this import; {keep}"),
            None => format!("created again after this import; {keep}"),
        },
        (Some(row), _) => match row.job {
            Some(by) => format!("changed by job {by} after this import; {keep}"),
            None => format!("changed after this import; {keep}"),
        },
    };
    let k = &ds.fields[ds.key[0]];
    let value = text(&undo.key[0]).map(Cow::into_owned);
    let record: Vec<String> = undo
        .key
        .iter()
        .map(|v| text(v).map(Cow::into_owned).unwrap_or_default())
        .collect();
    [
        Value::Int(job),
        Value::Int(row as i64),
        Value::Text(k.name.clone()),
        value.map_or(Value::Null, Value::Text),
        Value::Text(message),
        Value::Text(serde_json::to_string(&record).unwrap_or_else(|_| "[]".into())),
    ]
}

/// Stores a batch's conflicts: multi-row `INSERT`s of [`conflict_error`]'s rows.
fn conflicts_insert(c: &mut dyn Sql, rows: &[[Value; 6]]) -> StoreResult<()> {
    for part in rows.chunks(500) {
        let slots: Vec<String> = (0..part.len())
            .map(|i| {
                let n = i * 6;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6
                )
            })
            .collect();
        let params: Vec<Value> = part.iter().flatten().cloned().collect();
        c.execute(
            &format!(
                "INSERT INTO job_errors (job_id, \"row\", \"column\", value, message, record) \
                 VALUES {}",
                slots.join(", ")
            ),
            &params,
        )?;
    }
    Ok(())
}

/// A job's organisation, dataset and cursor range (`None`: it wrote no entry).
fn range_of(c: &mut dyn Sql, job: JobId) -> StoreResult<Option<(i64, String, i64, i64)>> {
    let Some(r) = c.query_opt(
        "SELECT org_id, dataset, ledger_first, ledger_last FROM jobs WHERE id = $1",
        params![job],
    )?
    else {
        return Ok(None);
    };
    Ok(match (r.opt_i64(0)?, r.opt_i64(2)?, r.opt_i64(3)?) {
        (Some(org), Some(first), Some(last)) => Some((org, r.text(1)?, first, last)),
        _ => None,
    })
}

/// How many ledger entries a job wrote (a rollback's total).
pub fn entries_of(c: &mut dyn Sql, job: JobId) -> StoreResult<u64> {
    let Some((org, dataset, first, last)) = range_of(c, job)? else {
        return Ok(0);
    };
    ledger::count(
        c,
        &ledger::Span {
            org,
            dataset: &dataset,
            job: Some(job),
            after: first - 1,
            upto: Some(last),
        },
    )
}

/// What asking to roll a job back came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackInserted {
    /// The rollback job was created.
    Created(JobId),
    /// The job was rolled back (or is being rolled back) already, by this job.
    Already(JobId),
}

/// Creates the rollback job of `target` and marks the target as rolled back by it, in the
/// caller's transaction: at most one rollback per job, whoever asks at the same time.
pub fn create(
    c: &mut dyn Sql,
    target: JobId,
    job: &super::NewJob,
    audit: Option<&super::AuditEntry>,
) -> StoreResult<RollbackInserted> {
    // Takes the target's row lock (PostgreSQL) before anything is decided.
    let free = c.execute(
        "UPDATE jobs SET rolled_back_by = rolled_back_by WHERE id = $1 AND rolled_back_by IS NULL",
        params![target],
    )?;
    if free == 0 {
        let by = c
            .query_one(
                "SELECT rolled_back_by FROM jobs WHERE id = $1",
                params![target],
            )?
            .i64(0)?;
        return Ok(RollbackInserted::Already(by));
    }
    let id = match super::jobs::insert(c, job, None, audit)? {
        super::Inserted::Created(id) => id,
        other => {
            return Err(StoreError::Other(format!(
                "the rollback job was not created: {other:?}"
            )));
        }
    };
    c.execute(
        "UPDATE jobs SET rolled_back_by = $2 WHERE id = $1",
        params![target, id],
    )?;
    Ok(RollbackInserted::Created(id))
}
