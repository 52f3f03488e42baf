//! Dataset tables on SQLite: created from `datasets.toml`, upgraded by adding missing columns.
//!
//! Each table gets its declared fields plus four bookkeeping columns: `_sluice_job` and
//! `_sluice_row` (the job and spreadsheet row that last wrote the row, used to report a key that
//! repeats inside one file), `_sluice_created_at`, `_sluice_updated_at`, and for each history field
//! `_sluice_since_<field>` (since when it holds its value: the `valid_from` of the next archive). Decimals are TEXT so
//! they read back exactly as written; dates are ISO 8601 TEXT; booleans 0/1.

use rusqlite::Connection;

use super::{db_err, ident};
use crate::dataset::{Dataset, Datasets, FieldType};
use crate::store::{StoreError, StoreResult};

pub(super) const META_COLUMNS: &[(&str, &str)] = &[
    ("_sluice_job", "INTEGER"),
    ("_sluice_row", "INTEGER"),
    ("_sluice_created_at", "TEXT"),
    ("_sluice_updated_at", "TEXT"),
];

/// The hidden column that records since when a history field holds its current value.
pub(super) fn since_column(field: &str) -> String {
    format!("_sluice_since_{field}")
}

/// Bookkeeping columns of a dataset table: the fixed ones and one per history field.
pub(super) fn meta_columns(ds: &Dataset) -> Vec<(String, &'static str)> {
    META_COLUMNS
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .chain(
            ds.fields
                .iter()
                .filter(|f| f.history)
                .map(|f| (since_column(&f.name), "TEXT")),
        )
        .collect()
}

pub(super) fn sql_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Integer | FieldType::Boolean => "INTEGER",
        FieldType::Text | FieldType::Decimal | FieldType::Date | FieldType::Datetime => "TEXT",
    }
}

pub(super) fn prepare(conn: &mut Connection, datasets: &Datasets) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    for ds in datasets.iter() {
        prepare_one(&tx, ds)?;
    }
    tx.commit().map_err(db_err)
}

fn existing_columns(conn: &Connection, table: &str) -> StoreResult<Vec<String>> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({})", ident(table)))
        .map_err(db_err)?;
    let cols = stmt
        .query_map([], |r| r.get::<_, String>(1))
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    Ok(cols)
}

fn key_list(ds: &Dataset) -> String {
    ds.key
        .iter()
        .map(|&k| ident(&ds.fields[k].name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn prepare_one(conn: &Connection, ds: &Dataset) -> StoreResult<()> {
    let table = ident(&ds.table);
    let existing = existing_columns(conn, &ds.table)?;
    if existing.is_empty() {
        let mut cols: Vec<String> = ds
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let not_null = if ds.is_key(i) { " NOT NULL" } else { "" };
                format!("{} {}{not_null}", ident(&f.name), sql_type(f.ty))
            })
            .collect();
        cols.extend(meta_columns(ds).iter().map(|(n, t)| format!("{n} {t}")));
        conn.execute_batch(&format!(
            "CREATE TABLE {table} ({}, PRIMARY KEY ({})) WITHOUT ROWID",
            cols.join(", "),
            key_list(ds)
        ))
        .map_err(db_err)?;
    } else {
        for &k in &ds.key {
            if !existing.iter().any(|c| c == &ds.fields[k].name) {
                return Err(StoreError::Other(format!(
                    "table `{}` already exists without key column `{}`",
                    ds.table, ds.fields[k].name
                )));
            }
        }
        let wanted: Vec<(String, &str)> = ds
            .fields
            .iter()
            .map(|f| (f.name.clone(), sql_type(f.ty)))
            .chain(meta_columns(ds))
            .collect();
        let missing = wanted
            .iter()
            .filter(|(n, _)| !existing.iter().any(|c| c == n));
        for (name, ty) in missing {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {} {ty}",
                ident(name)
            ))
            .map_err(db_err)?;
        }
        // Upserts need a unique index on the key, whoever created the table.
        conn.execute_batch(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({})",
            ident(&format!("{}_sluice_key", ds.table)),
            key_list(ds)
        ))
        .map_err(db_err)?;
    }
    if ds.has_history() {
        let key_cols: Vec<String> = ds
            .key
            .iter()
            .map(|&k| {
                format!(
                    "{} {} NOT NULL",
                    ident(&ds.fields[k].name),
                    sql_type(ds.fields[k].ty)
                )
            })
            .collect();
        let history = ident(&ds.history_table());
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {history} (id INTEGER PRIMARY KEY, {}, field TEXT NOT NULL, \
             old_value TEXT, new_value TEXT, valid_from TEXT, valid_to TEXT NOT NULL, job_id INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS {} ON {history} ({}, field, valid_to);",
            key_cols.join(", "),
            ident(&format!("{}_history_key", ds.table)),
            key_list(ds)
        ))
        .map_err(db_err)?;
    }
    Ok(())
}
