//! Dataset tables on PostgreSQL, created from `datasets.toml` and upgraded by adding missing
//! columns (under the schema advisory lock, so concurrent starts do not race).
//!
//! Types: text → TEXT, integer → BIGINT, decimal → NUMERIC (`NUMERIC(38, scale)` with a `scale`),
//! boolean → BOOLEAN, date → DATE, datetime → TIMESTAMP. `_sluice_org BIGINT` owns each row and
//! leads the primary key `(_sluice_org, key…)`. Bookkeeping columns as on SQLite:
//! `_sluice_job`, `_sluice_row`, `_sluice_created_at`, `_sluice_updated_at`,
//! `_sluice_since_<field>` per history field.

use postgres::Client;

use super::{SCHEMA_LOCK, ident, pg_err};
use crate::dataset::{Dataset, Datasets, Field, FieldType};
use crate::store::{DEFAULT_ORG, ORG_COLUMN, StoreError, StoreResult};

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

/// The bookkeeping timestamps' type. Each gets `DEFAULT now()` ([`stamp_defaults`]).
const STAMP: &str = "TIMESTAMPTZ";

fn meta_columns(ds: &Dataset) -> Vec<(String, &'static str)> {
    [
        ("_sluice_job", "BIGINT"),
        ("_sluice_row", "BIGINT"),
        ("_sluice_created_at", STAMP),
        ("_sluice_updated_at", STAMP),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), *t))
    .chain(
        ds.fields
            .iter()
            .filter(|f| f.history)
            .map(|f| (since_column(&f.name), STAMP)),
    )
    .collect()
}

/// Gives the bookkeeping timestamps `DEFAULT now()`, which the batch writer's fast path relies
/// on: its COPY leaves them out, so each row gets its transaction's `now()` (the writer's `now`
/// for everything else in the batch). Only columns without one are altered (`ALTER` takes the
/// table's strongest lock); rows that existed keep their values (NULL in a column just added).
fn stamp_defaults(tx: &mut postgres::Transaction<'_>, ds: &Dataset) -> StoreResult<()> {
    let stamps: Vec<String> = meta_columns(ds)
        .into_iter()
        .filter(|(_, t)| *t == STAMP)
        .map(|(n, _)| n)
        .collect();
    let missing: Vec<String> = tx
        .query(
            "SELECT a.attname::text FROM pg_attribute a \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = to_regclass($1) AND a.attname = ANY($2) AND d.adbin IS NULL",
            &[&ident(&ds.table), &stamps],
        )
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for column in missing {
        tx.batch_execute(&format!(
            "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT now()",
            ident(&ds.table),
            ident(&column)
        ))
        .map_err(pg_err)?;
    }
    Ok(())
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

fn key_names(ds: &Dataset) -> Vec<String> {
    ds.key.iter().map(|&k| ds.fields[k].name.clone()).collect()
}

fn columns_of(tx: &mut postgres::Transaction<'_>, table: &str) -> StoreResult<Vec<String>> {
    Ok(tx
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&table],
        )
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The primary key constraint's name and columns in key order, if the table has one.
fn primary_key(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> StoreResult<Option<(String, Vec<String>)>> {
    let row = tx
        .query_opt(
            "SELECT c.conname::text, array_agg(a.attname::text ORDER BY k.ord) \
             FROM pg_constraint c \
             CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum \
             WHERE c.contype = 'p' AND c.conrelid = to_regclass($1) GROUP BY c.conname",
            &[&ident(table)],
        )
        .map_err(pg_err)?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

fn prepare_one(tx: &mut postgres::Transaction<'_>, ds: &Dataset) -> StoreResult<()> {
    let table = ident(&ds.table);
    let existing = columns_of(tx, &ds.table)?;
    let mut org_key = vec![ORG_COLUMN.to_string()];
    org_key.extend(key_names(ds));
    if existing.is_empty() {
        let mut cols: Vec<String> = vec![format!("{ORG_COLUMN} BIGINT NOT NULL")];
        cols.extend(ds.fields.iter().enumerate().map(|(i, f)| {
            let not_null = if ds.is_key(i) { " NOT NULL" } else { "" };
            format!("{} {}{not_null}", ident(&f.name), sql_type(f))
        }));
        cols.extend(meta_columns(ds).iter().map(|(n, t)| format!("{n} {t}")));
        tx.batch_execute(&format!(
            "CREATE TABLE {table} ({}, PRIMARY KEY ({ORG_COLUMN}, {}))",
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
        if !existing.iter().any(|c| c == ORG_COLUMN) {
            // Rows from before organisations owned rows belong to the `default` one, as their
            // jobs do since migration 0006; a primary key on the dataset key (as sluice created
            // it) becomes `(_sluice_org, key…)`.
            tx.batch_execute(&format!(
                "ALTER TABLE {table} ADD COLUMN {ORG_COLUMN} BIGINT NOT NULL DEFAULT {DEFAULT_ORG};
                 ALTER TABLE {table} ALTER COLUMN {ORG_COLUMN} DROP DEFAULT"
            ))
            .map_err(pg_err)?;
            if let Some((name, cols)) = primary_key(tx, &ds.table)?
                && cols == key_names(ds)
            {
                tx.batch_execute(&format!(
                    "ALTER TABLE {table} DROP CONSTRAINT {}, ADD PRIMARY KEY ({ORG_COLUMN}, {})",
                    ident(&name),
                    key_list(ds)
                ))
                .map_err(pg_err)?;
            }
            tracing::info!(table = %ds.table, "dataset table upgraded: rows belong to organisations");
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
        // Upserts need a unique index on (organisation, key), whoever created the table.
        if primary_key(tx, &ds.table)?.map(|(_, cols)| cols) != Some(org_key) {
            tx.batch_execute(&format!(
                "DROP INDEX IF EXISTS {};
                 CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({ORG_COLUMN}, {})",
                ident(&format!("{}_sluice_key", ds.table)),
                ident(&format!("{}_sluice_org_key", ds.table)),
                key_list(ds)
            ))
            .map_err(pg_err)?;
        }
    }
    stamp_defaults(tx, ds)?;
    if ds.has_history() {
        prepare_history(tx, ds)?;
    }
    Ok(())
}

/// The history table: the organisation and key of the row, the field, the old and new values and
/// the validity of the old one.
fn prepare_history(tx: &mut postgres::Transaction<'_>, ds: &Dataset) -> StoreResult<()> {
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
    let name = ds.history_table();
    let history = ident(&name);
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {history} (id BIGSERIAL PRIMARY KEY, {ORG_COLUMN} BIGINT NOT NULL, {}, \
         field TEXT NOT NULL, old_value TEXT, new_value TEXT, valid_from TIMESTAMPTZ, \
         valid_to TIMESTAMPTZ NOT NULL, job_id BIGINT NOT NULL)",
        key_cols.join(", "),
    ))
    .map_err(pg_err)?;
    if !columns_of(tx, &name)?.iter().any(|c| c == ORG_COLUMN) {
        tx.batch_execute(&format!(
            "ALTER TABLE {history} ADD COLUMN {ORG_COLUMN} BIGINT NOT NULL DEFAULT {DEFAULT_ORG};
             ALTER TABLE {history} ALTER COLUMN {ORG_COLUMN} DROP DEFAULT"
        ))
        .map_err(pg_err)?;
    }
    tx.batch_execute(&format!(
        "DROP INDEX IF EXISTS {};
         CREATE INDEX IF NOT EXISTS {} ON {history} ({ORG_COLUMN}, {}, field, valid_to);",
        ident(&format!("{}_history_key", ds.table)),
        ident(&format!("{}_history_org_key", ds.table)),
        key_list(ds)
    ))
    .map_err(pg_err)
}
