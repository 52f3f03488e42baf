//! The ledger of a `mode=replace` import (issue 16), written once for both databases in the
//! transaction that swaps its staging table in, just before the swap.
//!
//! A replace job writes its file into a staging table and, when it completes, the staging
//! rows become the organisation's rows. What that changes is the difference of the two tables,
//! read by key in keyset pages of 1,000: rows of the table whose key the staging table lacks are
//! **deleted** (ledgered with the whole row), staged keys the table lacks are **created**, and
//! keys in both whose fields differ are **updated** (ledgered with the table's values). Equal
//! rows record nothing. A created or updated entry's time is the staged row's
//! `_sluice_updated_at`, which the swap copies into the table, so a rollback tells an untouched
//! row as it does after any import.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::ledger::{self, Entry, Op};
use super::rollback::{ident, selected_of, slot, text};
use super::sql::{Dialect, Row, Sql, Value, params};
use super::{ORG_COLUMN, Replacement, StoreResult};
use crate::dataset::Dataset;

/// Rows read per page.
const PAGE: usize = 1000;

/// `(a.k1, a.k2) > ($first, $first+1)`.
fn after(d: Dialect, ds: &Dataset, alias: &str, first: usize) -> String {
    let (cols, slots): (Vec<String>, Vec<String>) = ds
        .key
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let f = &ds.fields[k];
            (
                format!("{alias}.{}", ident(&f.name)),
                slot(d, f.ty, first + j),
            )
        })
        .unzip();
    format!("({}) > ({})", cols.join(", "), slots.join(", "))
}

/// `t._sluice_org = $1 AND s._sluice_org = $1 AND t.k1 = s.k1 AND …`: both sides through
/// their primary key (organisation first; the writer stages rows as the job's organisation's).
fn same_key(ds: &Dataset) -> String {
    let mut on = vec![
        format!("t.{ORG_COLUMN} = $1"),
        format!("s.{ORG_COLUMN} = $1"),
    ];
    on.extend(ds.key.iter().map(|&k| {
        let name = ident(&ds.fields[k].name);
        format!("t.{name} = s.{name}")
    }));
    on.join(" AND ")
}

/// Pages through `sql` (a query whose first key-width columns are the key, in key order; `{after}`
/// stands for the keyset condition) and hands each page to `f`.
fn pages(
    c: &mut dyn Sql,
    ds: &Dataset,
    org: i64,
    alias: &str,
    sql: &str,
    mut f: impl FnMut(&mut dyn Sql, &[Row]) -> StoreResult<()>,
) -> StoreResult<()> {
    let d = c.dialect();
    let first = sql.replace("{after}", "");
    let next = sql.replace("{after}", &format!(" AND {}", after(d, ds, alias, 2)));
    let mut last: Option<Vec<Value>> = None;
    loop {
        let mut p = vec![Value::Int(org)];
        p.extend(last.iter().flatten().cloned());
        let page = c.query(if last.is_some() { &next } else { &first }, &p)?;
        f(c, &page)?;
        if page.len() < PAGE {
            return Ok(());
        }
        let Some(end) = page.last() else {
            return Ok(());
        };
        last = Some(end.0[..ds.key.len()].to_vec());
    }
}

/// The key of a row whose first columns are the key fields, as the ledger writes keys.
fn key_json(ds: &Dataset, r: &Row) -> String {
    ledger::texts_json(ds, &ds.key, |j| text(&r.0[j]))
}

/// Records what swapping `r`'s staging table in changes; the deleted rows are counted in the
/// job's `deleted_count`.
pub fn record(c: &mut dyn Sql, r: &Replacement) -> StoreResult<()> {
    let ds = &r.dataset;
    let d = c.dialect();
    let (table, staging) = (ident(&ds.table), ident(&r.staging));
    let order = |alias: &str| {
        ds.key
            .iter()
            .map(|&k| format!("{alias}.{}", ident(&ds.fields[k].name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let keys_of = |alias: &str| {
        ds.key
            .iter()
            .map(|&k| selected_of(d, &ds.fields[k], &format!("{alias}.")))
            .collect::<Vec<_>>()
    };
    let nk = ds.key.len();
    let now = Utc::now();
    let mut deleted = 0u64;

    // Rows the file does not have: deleted, with all their values.
    let all: Vec<usize> = (0..ds.fields.len()).collect();
    let mut cols = keys_of("t");
    cols.extend(ds.fields.iter().map(|f| selected_of(d, f, "t.")));
    let sql = format!(
        "SELECT {} FROM {table} t WHERE t.{ORG_COLUMN} = $1 AND NOT EXISTS \
         (SELECT 1 FROM {staging} s WHERE {}){{after}} ORDER BY {} LIMIT {PAGE}",
        cols.join(", "),
        same_key(ds),
        order("t")
    );
    pages(c, ds, r.org, "t", &sql, |c, page| {
        let entries: Vec<Entry> = page
            .iter()
            .map(|row| Entry {
                op: Op::Deleted,
                key: key_json(ds, row),
                old: Some(ledger::texts_json(ds, &all, |j| text(&row.0[nk + j]))),
            })
            .collect();
        deleted += entries.len() as u64;
        ledger::insert(c, &ds.name, r.owner, r.org, &entries, now)
    })?;

    // Keys the table does not have: created.
    let mut cols = keys_of("s");
    cols.push("s._sluice_updated_at".into());
    let sql = format!(
        "SELECT {} FROM {staging} s WHERE s.{ORG_COLUMN} = $1 AND NOT EXISTS \
         (SELECT 1 FROM {table} t WHERE {}){{after}} ORDER BY {} LIMIT {PAGE}",
        cols.join(", "),
        same_key(ds),
        order("s")
    );
    pages(c, ds, r.org, "s", &sql, |c, page| {
        let entries = page
            .iter()
            .map(|row| {
                Ok((
                    row.time(nk)?,
                    Entry {
                        op: Op::Created,
                        key: key_json(ds, row),
                        old: None,
                    },
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        insert_at(c, r, entries)
    })?;

    // Keys in both whose fields differ: updated, with the table's values.
    let changed: Vec<usize> = (0..ds.fields.len()).filter(|&i| !ds.is_key(i)).collect();
    if !changed.is_empty() {
        let mut cols = keys_of("s");
        cols.push("s._sluice_updated_at".into());
        cols.extend(changed.iter().map(|&i| selected_of(d, &ds.fields[i], "t.")));
        let differs: Vec<String> = changed
            .iter()
            .map(|&i| {
                let name = ident(&ds.fields[i].name);
                format!("t.{name} IS DISTINCT FROM s.{name}")
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {staging} s JOIN {table} t ON {} \
             WHERE s.{ORG_COLUMN} = $1 AND ({}){{after}} ORDER BY {} LIMIT {PAGE}",
            cols.join(", "),
            same_key(ds),
            differs.join(" OR "),
            order("s")
        );
        pages(c, ds, r.org, "s", &sql, |c, page| {
            let entries = page
                .iter()
                .map(|row| {
                    Ok((
                        row.time(nk)?,
                        Entry {
                            op: Op::Updated,
                            key: key_json(ds, row),
                            old: Some(ledger::texts_json(ds, &changed, |j| {
                                text(&row.0[nk + 1 + j])
                            })),
                        },
                    ))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            insert_at(c, r, entries)
        })?;
    }
    if deleted > 0 {
        c.execute(
            "UPDATE jobs SET deleted_count = deleted_count + $2 WHERE id = $1",
            params![r.owner, deleted as i64],
        )?;
    }
    Ok(())
}

/// Ledgers entries that each carry their own time (a staged row's), one insert per time.
fn insert_at(
    c: &mut dyn Sql,
    r: &Replacement,
    entries: Vec<(DateTime<Utc>, Entry)>,
) -> StoreResult<()> {
    let mut by_time: BTreeMap<DateTime<Utc>, Vec<Entry>> = BTreeMap::new();
    for (at, e) in entries {
        by_time.entry(at).or_default().push(e);
    }
    for (at, group) in by_time {
        ledger::insert(c, &r.dataset.name, r.owner, r.org, &group, at)?;
    }
    Ok(())
}
