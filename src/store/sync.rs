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
use super::{Lease, ORG_COLUMN, StoreResult, SyncDeletion};
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
    Ok(past_guard(s, doomed, total).map(|over| {
        format!(
            "{over}; nothing was deleted. The file's rows were written: roll the job back to \
             undo them, or import again with a higher maxDeletePercent"
        )
    }))
}

/// What deleting `doomed` of `total` rows breaks of the guard, `None` when it holds.
fn past_guard(s: &SyncDeletion, doomed: u64, total: u64) -> Option<String> {
    let max = u64::from(s.max_delete_percent);
    (doomed * 100 > max * total).then(|| {
        format!(
            "mode=sync would delete {doomed} of the {total} rows ({:.1}%), more than \
             maxDeletePercent={max}",
            doomed as f64 * 100.0 / total as f64
        )
    })
}

/// What a sync import of an analysed file would delete (see [`super::JobStore::analysis_would_delete`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WouldDelete {
    /// The organisation's rows whose keys the file lacks (rejected rows' keys count as had).
    pub rows: u64,
    /// The organisation's rows now.
    pub of: u64,
    /// The guard's refusal, when the import would fail on it.
    pub refusal: Option<String>,
}

/// A dry run's deletion: the keys its file had are in its scratch table (valid rows' by the
/// dry-run writer; rejected rows' with readable keys added here, as [`refusal`] keeps them);
/// the organisation's rows with no key there are what the import would delete. Counted into the
/// analysis's `deleted_count`, fenced by its lease (`None`: the lease was lost).
pub fn would_delete(
    c: &mut dyn Sql,
    lease: &Lease,
    s: &SyncDeletion,
) -> StoreResult<Option<WouldDelete>> {
    let ds = &s.dataset;
    let d = c.dialect();
    let (table, scratch) = (ident(&ds.table), ident(&super::scratch_table(lease.job_id)));
    let keys: Vec<String> = ds.key.iter().map(|&k| ident(&ds.fields[k].name)).collect();
    let slots: Vec<String> = ds
        .key
        .iter()
        .enumerate()
        .map(|(j, &k)| slot(d, ds.fields[k].ty, 2 + j))
        .collect();
    let add = format!(
        "INSERT INTO {scratch} ({}, _sluice_row) VALUES ({}, $1) ON CONFLICT DO NOTHING",
        keys.join(", "),
        slots.join(", ")
    );
    let exists = match d {
        Dialect::Sqlite => "SELECT count(*) FROM sqlite_master WHERE name = $1",
        Dialect::Postgres => "SELECT count(to_regclass(quote_ident($1)))",
    };
    let name = super::scratch_table(lease.job_id);
    let had_rows = c.query_one(exists, params![name.as_str()])?.u64(0)? > 0;
    // No scratch table: no batch was committed, the file had no row and every row would go.
    if had_rows {
        each_rejected_key(c, ds, lease.job_id, |c, row, key| {
            let mut p = vec![Value::Int(row)];
            p.extend(key);
            c.execute(&add, &p).map(drop)
        })?;
    }
    let same: Vec<String> = keys.iter().map(|k| format!("s.{k} = t.{k}")).collect();
    let missing = if had_rows {
        format!(
            "NOT EXISTS (SELECT 1 FROM {scratch} s WHERE {})",
            same.join(" AND ")
        )
    } else {
        "TRUE".into()
    };
    let row = c.query_one(
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE {missing}) FROM {table} t \
             WHERE t.{ORG_COLUMN} = $1"
        ),
        params![s.org],
    )?;
    let (of, rows) = (row.u64(0)?, row.u64(1)?);
    let fenced = c.execute(
        "UPDATE jobs SET deleted_count = $1 WHERE id = $2 AND lease_token = $3",
        params![rows as i64, lease.job_id, lease.token.as_str()],
    )?;
    Ok((fenced == 1).then(|| WouldDelete {
        rows,
        of,
        refusal: past_guard(s, rows, of),
    }))
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
    each_rejected_key(c, ds, s.owner, |c, _, key| {
        let mut p = vec![Value::Int(s.org), Value::Int(s.owner)];
        p.extend(key);
        c.execute(&stamp, &p).map(drop)
    })
}

/// Hands the readable key of each of `job`'s rejected rows (`job_errors.key`) to `f` with its
/// row, in row order, a page at a time.
fn each_rejected_key(
    c: &mut dyn Sql,
    ds: &Dataset,
    job: i64,
    mut f: impl FnMut(&mut dyn Sql, i64, Vec<Value>) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut after = 0i64;
    loop {
        let page = c.query(
            "SELECT \"row\", key FROM job_errors WHERE job_id = $1 AND \"row\" > $2 \
             AND key IS NOT NULL ORDER BY \"row\" LIMIT $3",
            params![job, after, PAGE],
        )?;
        for r in &page {
            after = r.i64(0)?;
            f(c, after, key_values(ds, &r.text(1)?)?)?;
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
    count_deleted(c, s.owner, deleted)?;
    Ok(deleted)
}

/// Adds `n` rows deleted at a job's end to its `deleted_count`.
pub(super) fn count_deleted(c: &mut dyn Sql, job: i64, n: u64) -> StoreResult<()> {
    if n > 0 {
        c.execute(
            "UPDATE jobs SET deleted_count = deleted_count + $2 WHERE id = $1",
            params![job, n as i64],
        )?;
    }
    Ok(())
}

fn key_of(ds: &Dataset, r: &Row) -> Vec<Value> {
    ds.key.iter().map(|&k| r.0[k].clone()).collect()
}

fn text(r: &Row, i: usize) -> Option<std::borrow::Cow<'_, str>> {
    super::rollback::text(&r.0[i])
}
