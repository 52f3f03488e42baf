//! `mode=sync` (issue 16): the deletion that completes a sync import, written once for both
//! databases over the [`Sql`] seam, in the transaction that records the job's end.
//!
//! A sync import upserts batch by batch like any import; every row its file has — created,
//! updated or unchanged — then carries the job (`_sluice_job`, a chunk's parent). A row of the
//! file that was rejected still kept its key when the key fields read well (`job_errors.key`):
//! those rows are stamped with the job first, so a price typo does not delete a product. What
//! is left — the organisation's rows that carry another job — is what the file no longer has.
//!
//! The guard: when that is more than `maxDeletePercent` of the organisation's rows (a truncated
//! file, the wrong supplier's file), the job fails with a message saying so and nothing is
//! deleted. Otherwise the rows go in key order, a page at a time (keyset, so each page is one
//! index range), each page's deletions ledgered with the row's full values (a rollback puts
//! them back) and counted in the job's `deleted_count`.

use super::ledger::{self, Op};
use super::rollback::{ident, key_values, selected, slot};
use super::sql::{Dialect, Row, Sql, Value, params};
use super::{ORG_COLUMN, StoreResult, SyncDeletion};
use crate::dataset::Dataset;

/// Rows read and deleted per statement.
const PAGE: i64 = 1000;

/// `_sluice_org = $1 AND the row carries another job than $2`.
const DOOMED: &str = "_sluice_org = $1 AND (_sluice_job IS NULL OR _sluice_job <> $2)";

/// Keeps the rows of rejected keys, then applies the guard: `Some(message)` when the deletion
/// is refused (nothing deleted), `None` when [`delete`] may go on.
pub fn refusal(c: &mut dyn Sql, s: &SyncDeletion) -> StoreResult<Option<String>> {
    keep_rejected(c, s)?;
    let table = ident(&s.dataset.table);
    let doomed = c
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE {DOOMED}"),
            params![s.org, s.owner],
        )?
        .u64(0)?;
    if doomed == 0 {
        return Ok(None);
    }
    let total = c
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE {ORG_COLUMN} = $1"),
            params![s.org],
        )?
        .u64(0)?;
    let max = u64::from(s.max_delete_percent);
    if doomed * 100 <= max * total {
        return Ok(None);
    }
    Ok(Some(format!(
        "mode=sync would delete {doomed} of the {total} rows ({:.1}%), more than \
         maxDeletePercent={max}; nothing was deleted. The file's rows were written: roll the \
         job back to undo them, or import again with a higher maxDeletePercent",
        doomed as f64 * 100.0 / total as f64
    )))
}

/// Stamps the organisation's rows whose keys a rejected row of the file named, so that they are
/// not deleted.
fn keep_rejected(c: &mut dyn Sql, s: &SyncDeletion) -> StoreResult<()> {
    let ds = &s.dataset;
    let d = c.dialect();
    let stamp = format!(
        "UPDATE {} SET _sluice_job = $2 WHERE {DOOMED} AND {}",
        ident(&ds.table),
        key_match(d, ds, 3)
    );
    let mut after = 0i64;
    loop {
        let page = c.query(
            "SELECT \"row\", key FROM job_errors WHERE job_id = $1 AND \"row\" > $2 \
             AND key IS NOT NULL ORDER BY \"row\" LIMIT $3",
            params![s.owner, after, PAGE],
        )?;
        for r in &page {
            after = r.i64(0)?;
            let mut p = vec![Value::Int(s.org), Value::Int(s.owner)];
            p.extend(key_values(ds, &r.text(1)?)?);
            c.execute(&stamp, &p)?;
        }
        if (page.len() as i64) < PAGE {
            return Ok(());
        }
    }
}

/// `k1 = $first AND k2 = $first+1 …`.
fn key_match(d: Dialect, ds: &Dataset, first: usize) -> String {
    ds.key
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let f = &ds.fields[k];
            format!("{} = {}", ident(&f.name), slot(d, f.ty, first + j))
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `(k1, k2) <op> ($first, $first+1)`: a bound of a page in key order.
fn key_bound(d: Dialect, ds: &Dataset, op: &str, first: usize) -> String {
    let (cols, slots): (Vec<String>, Vec<String>) = ds
        .key
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let f = &ds.fields[k];
            (ident(&f.name), slot(d, f.ty, first + j))
        })
        .unzip();
    format!("({}) {op} ({})", cols.join(", "), slots.join(", "))
}

/// Deletes the rows the file did not have, ledgered; returns how many. Call after
/// [`refusal`] answered `None`, in the same transaction.
pub fn delete(c: &mut dyn Sql, s: &SyncDeletion) -> StoreResult<u64> {
    let ds = &s.dataset;
    let d = c.dialect();
    let table = ident(&ds.table);
    let order: Vec<String> = ds.key.iter().map(|&k| ident(&ds.fields[k].name)).collect();
    let fields: Vec<String> = ds.fields.iter().map(|f| selected(d, f)).collect();
    let read = |bounded: bool| {
        format!(
            "SELECT {} FROM {table} WHERE {DOOMED}{} ORDER BY {} LIMIT {PAGE}",
            fields.join(", "),
            if bounded {
                format!(" AND {}", key_bound(d, ds, ">", 3))
            } else {
                String::new()
            },
            order.join(", ")
        )
    };
    let (first_page, next_page) = (read(false), read(true));
    let n = ds.key.len();
    let erase = |bounded: bool| {
        let upper = key_bound(d, ds, "<=", 3);
        if bounded {
            format!(
                "DELETE FROM {table} WHERE {DOOMED} AND {} AND {upper}",
                key_bound(d, ds, ">", 3 + n)
            )
        } else {
            format!("DELETE FROM {table} WHERE {DOOMED} AND {upper}")
        }
    };
    let (erase_first, erase_next) = (erase(false), erase(true));
    let all: Vec<usize> = (0..ds.fields.len()).collect();
    let now = chrono::Utc::now();
    let mut before: Option<Vec<Value>> = None;
    let mut deleted = 0u64;
    loop {
        let mut p = vec![Value::Int(s.org), Value::Int(s.owner)];
        p.extend(before.iter().flatten().cloned());
        let page = c.query(
            if before.is_some() {
                &next_page
            } else {
                &first_page
            },
            &p,
        )?;
        let Some(last) = page.last() else { break };
        let last_key = key_of(ds, last);
        let entries: Vec<ledger::Entry> = page
            .iter()
            .map(|r| ledger::Entry {
                op: Op::Deleted,
                key: ledger::texts_json(ds, &ds.key, |j| text(r, ds.key[j])),
                old: Some(ledger::texts_json(ds, &all, |j| text(r, j))),
            })
            .collect();
        let mut p = vec![Value::Int(s.org), Value::Int(s.owner)];
        p.extend(last_key.iter().cloned());
        p.extend(before.iter().flatten().cloned());
        let gone = c.execute(
            if before.is_some() {
                &erase_next
            } else {
                &erase_first
            },
            &p,
        )?;
        ledger::insert(c, &ds.name, s.owner, s.org, &entries, now)?;
        deleted += gone;
        if (page.len() as i64) < PAGE {
            break;
        }
        before = Some(last_key);
    }
    if deleted > 0 {
        c.execute(
            "UPDATE jobs SET deleted_count = deleted_count + $2 WHERE id = $1",
            params![s.owner, deleted as i64],
        )?;
    }
    Ok(deleted)
}

fn key_of(ds: &Dataset, r: &Row) -> Vec<Value> {
    ds.key.iter().map(|&k| r.0[k].clone()).collect()
}

fn text(r: &Row, i: usize) -> Option<std::borrow::Cow<'_, str>> {
    super::rollback::text(&r.0[i])
}
