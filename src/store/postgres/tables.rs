//! Dataset tables on PostgreSQL, created from `datasets.toml` and upgraded by adding missing
//! columns (under the schema advisory lock, so concurrent starts do not race).
//!
//! Types: text → TEXT, integer → BIGINT, decimal → NUMERIC (`NUMERIC(38, scale)` with a `scale`),
//! boolean → BOOLEAN, date → DATE, datetime → TIMESTAMP. Bookkeeping columns as on SQLite:
//! `_sluice_job`, `_sluice_row`, `_sluice_created_at`, `_sluice_updated_at`,
//! `_sluice_since_<field>` per history field.

use postgres::Client;

use super::{SCHEMA_LOCK, ident, pg_err};
use crate::dataset::{Dataset, Datasets, Field, FieldType};
use crate::store::{StoreError, StoreResult};

pub(super) fn since_column(field: &str) -> String {
    format!("_sluice_since_{field}")
}

pub(super) fn sql_type(f: &Field) -> String {
    match f.ty {
        FieldType::Text => "TEXT".into(),
        FieldType::Integer => "BIGINT".into(),
        FieldType::Decimal => match f.scale {
            Some(s) => format!("NUMERIC(38, {s})"),
            None => "NUMERIC".into(),
        },
        FieldType::Boolean => "BOOLEAN".into(),
        FieldType::Date => "DATE".into(),
        FieldType::Datetime => "TIMESTAMP".into(),
    }
}

fn meta_columns(ds: &Dataset) -> Vec<(String, &'static str)> {
    [
        ("_sluice_job", "BIGINT"),
        ("_sluice_row", "BIGINT"),
        ("_sluice_created_at", "TIMESTAMPTZ"),
        ("_sluice_updated_at", "TIMESTAMPTZ"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), *t))
    .chain(
        ds.fields
            .iter()
            .filter(|f| f.history)
            .map(|f| (since_column(&f.name), "TIMESTAMPTZ")),
    )
    .collect()
}

fn key_list(ds: &Dataset) -> String {
    ds.key
        .iter()
        .map(|&k| ident(&ds.fields[k].name))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn prepare(conn: &mut Client, datasets: &Datasets) -> StoreResult<()> {
    let mut tx = conn.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(pg_err)?;
    for ds in datasets.iter() {
        prepare_one(&mut tx, ds)?;
    }
    tx.commit().map_err(pg_err)
}

/// Creates or upgrades one dataset's tables (under the schema lock).
pub(super) fn prepare_dataset(conn: &mut Client, ds: &Dataset) -> StoreResult<()> {
    let mut tx = conn.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(pg_err)?;
    prepare_one(&mut tx, ds)?;
    tx.commit().map_err(pg_err)
}

fn prepare_one(tx: &mut postgres::Transaction<'_>, ds: &Dataset) -> StoreResult<()> {
    let table = ident(&ds.table);
    let existing: Vec<String> = tx
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&ds.table],
        )
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if existing.is_empty() {
        let mut cols: Vec<String> = ds
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let not_null = if ds.is_key(i) { " NOT NULL" } else { "" };
                format!("{} {}{not_null}", ident(&f.name), sql_type(f))
            })
            .collect();
        cols.extend(meta_columns(ds).iter().map(|(n, t)| format!("{n} {t}")));
        tx.batch_execute(&format!(
            "CREATE TABLE {table} ({}, PRIMARY KEY ({}))",
            cols.join(", "),
            key_list(ds)
        ))
        .map_err(pg_err)?;
    } else {
        for &k in &ds.key {
            if !existing.iter().any(|c| c == &ds.fields[k].name) {
                return Err(StoreError::Other(format!(
                    "table `{}` already exists without key column `{}`",
                    ds.table, ds.fields[k].name
                )));
            }
        }
        let wanted: Vec<(String, String)> = ds
            .fields
            .iter()
            .map(|f| (f.name.clone(), sql_type(f)))
            .chain(
                meta_columns(ds)
                    .into_iter()
                    .map(|(n, t)| (n, t.to_string())),
            )
            .collect();
        for (name, ty) in wanted
            .iter()
            .filter(|(n, _)| !existing.iter().any(|c| c == n))
        {
            tx.batch_execute(&format!(
                "ALTER TABLE {table} ADD COLUMN {} {ty}",
                ident(name)
            ))
            .map_err(pg_err)?;
        }
        tx.batch_execute(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({})",
            ident(&format!("{}_sluice_key", ds.table)),
            key_list(ds)
        ))
        .map_err(pg_err)?;
    }
    if ds.has_history() {
        let key_cols: Vec<String> = ds
            .key
            .iter()
            .map(|&k| {
                format!(
                    "{} {} NOT NULL",
                    ident(&ds.fields[k].name),
                    sql_type(&ds.fields[k])
                )
            })
            .collect();
        let history = ident(&ds.history_table());
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {history} (id BIGSERIAL PRIMARY KEY, {}, field TEXT NOT NULL, \
             old_value TEXT, new_value TEXT, valid_from TIMESTAMPTZ, valid_to TIMESTAMPTZ NOT NULL, job_id BIGINT NOT NULL);
             CREATE INDEX IF NOT EXISTS {} ON {history} ({}, field, valid_to);",
            key_cols.join(", "),
            ident(&format!("{}_history_key", ds.table)),
            key_list(ds)
        ))
        .map_err(pg_err)?;
    }
    Ok(())
}
