//! Dataset tables on SQLite: created from `datasets.toml`, upgraded by adding missing columns.
//!
//! Each table gets `_sluice_org` (the organisation that owns the row; the primary key is
//! `(_sluice_org, key…)`, so keys are unique per organisation), its declared fields, and
//! bookkeeping columns: `_sluice_job` and
//! `_sluice_row` (the job and spreadsheet row that last wrote the row, used to report a key that
//! repeats inside one file), `_sluice_created_at`, `_sluice_updated_at`, and for each history field
//! `_sluice_since_<field>` (since when it holds its value: the `valid_from` of the next archive). Decimals are TEXT so
//! they read back exactly as written; dates are ISO 8601 TEXT; booleans 0/1.

use rusqlite::Connection;

use super::{db_err, ident};
use crate::dataset::{Dataset, Datasets, FieldType};
use crate::store::{DEFAULT_ORG, ORG_COLUMN, StoreError, StoreResult};

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

/// Creates or upgrades one dataset's tables.
pub(super) fn prepare_dataset(conn: &mut Connection, ds: &Dataset) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    prepare_one(&tx, ds)?;
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

/// The primary key's columns, in key order (empty: none declared, a rowid table).
fn primary_key(conn: &Connection, table: &str) -> StoreResult<Vec<String>> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({})", ident(table)))
        .map_err(db_err)?;
    let mut cols = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(5)?, r.get::<_, String>(1)?)))
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    cols.retain(|(pk, _)| *pk > 0);
    cols.sort();
    Ok(cols.into_iter().map(|(_, name)| name).collect())
}

fn key_names(ds: &Dataset) -> Vec<String> {
    ds.key.iter().map(|&k| ds.fields[k].name.clone()).collect()
}

fn prepare_one(conn: &Connection, ds: &Dataset) -> StoreResult<()> {
    let table = ident(&ds.table);
    let existing = existing_columns(conn, &ds.table)?;
    if existing.is_empty() {
        let mut cols: Vec<String> = vec![format!("{ORG_COLUMN} INTEGER NOT NULL")];
        cols.extend(ds.fields.iter().enumerate().map(|(i, f)| {
            let not_null = if ds.is_key(i) { " NOT NULL" } else { "" };
            format!("{} {}{not_null}", ident(&f.name), sql_type(f.ty))
        }));
        cols.extend(meta_columns(ds).iter().map(|(n, t)| format!("{n} {t}")));
        conn.execute_batch(&format!(
            "CREATE TABLE {table} ({}, PRIMARY KEY ({ORG_COLUMN}, {})) WITHOUT ROWID",
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
        if !existing.iter().any(|c| c == ORG_COLUMN) {
            add_org_column(conn, ds)?;
        }
        let existing = existing_columns(conn, &ds.table)?;
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
        // Upserts need a unique index on (organisation, key), whoever created the table.
        let mut org_key = vec![ORG_COLUMN.to_string()];
        org_key.extend(key_names(ds));
        if primary_key(conn, &ds.table)? != org_key {
            conn.execute_batch(&format!(
                "DROP INDEX IF EXISTS {};
                 CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({ORG_COLUMN}, {})",
                ident(&format!("{}_sluice_key", ds.table)),
                ident(&format!("{}_sluice_org_key", ds.table)),
                key_list(ds)
            ))
            .map_err(db_err)?;
        }
    }
    if ds.has_history() {
        prepare_history(conn, ds)?;
    }
    Ok(())
}

/// Gives a table from before organisations owned rows its `_sluice_org` column; its rows belong
/// to the `default` organisation, as their jobs do since migration 0006. A table whose primary
/// key is the dataset key and whose definition has nothing but columns, types, NOT NULL and
/// defaults (as sluice created them) is rebuilt with the key `(_sluice_org, key…)`, keeping its
/// rows, columns and indexes; any other table gets the column and a unique index.
fn add_org_column(conn: &Connection, ds: &Dataset) -> StoreResult<()> {
    let table = ident(&ds.table);
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [&ds.table],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    // A rebuild from `table_info` keeps names, types, NOT NULL and defaults; a table with
    // anything more in its definition keeps its definition instead.
    if !is_plain_definition(&sql) || primary_key(conn, &ds.table)? != key_names(ds) {
        if primary_key(conn, &ds.table)? == key_names(ds) {
            tracing::warn!(
                table = %ds.table,
                "the table's own primary key keeps keys unique across organisations; \
                 another organisation's row with a taken key is refused"
            );
        }
        return conn
            .execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {ORG_COLUMN} INTEGER NOT NULL DEFAULT {DEFAULT_ORG}"
            ))
            .map_err(db_err);
    }
    let columns: Vec<(String, String, bool, Option<String>)> = {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .map_err(db_err)?;
        stmt.query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?
    };
    // The table's own indexes, recreated after the rebuild; not sluice's old unique key index,
    // which would keep keys unique across organisations.
    let indexes: Vec<String> = {
        let mut stmt = conn
            .prepare(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 \
                 AND sql IS NOT NULL AND name <> ?2",
            )
            .map_err(db_err)?;
        stmt.query_map([&ds.table, &format!("{}_sluice_key", ds.table)], |r| {
            r.get(0)
        })
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?
    };
    let old = ident(&format!("_sluice_upgrade_{}", ds.table));
    let mut defs = vec![format!("{ORG_COLUMN} INTEGER NOT NULL")];
    defs.extend(columns.iter().map(|(name, ty, not_null, default)| {
        let mut def = format!("{} {ty}", ident(name));
        if *not_null {
            def.push_str(" NOT NULL");
        }
        if let Some(default) = default {
            def.push_str(&format!(" DEFAULT {default}"));
        }
        def
    }));
    let names = columns
        .iter()
        .map(|(n, ..)| ident(n))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute_batch(&format!(
        "ALTER TABLE {table} RENAME TO {old};
         CREATE TABLE {table} ({}, PRIMARY KEY ({ORG_COLUMN}, {})) WITHOUT ROWID;
         INSERT INTO {table} ({ORG_COLUMN}, {names}) SELECT {DEFAULT_ORG}, {names} FROM {old};
         DROP TABLE {old};",
        defs.join(", "),
        key_list(ds)
    ))
    .map_err(db_err)?;
    for sql in indexes {
        conn.execute_batch(&sql).map_err(db_err)?;
    }
    tracing::info!(table = %ds.table, "dataset table upgraded: rows belong to organisations");
    Ok(())
}

/// Whether a `CREATE TABLE` statement has nothing but columns, types, NOT NULL, defaults and a
/// primary key: none of the keywords of what a rebuild from `table_info` would lose, outside
/// quoted names and strings (so a column named `"checksum"` or `unique_code` does not count).
fn is_plain_definition(sql: &str) -> bool {
    let mut bare = String::with_capacity(sql.len());
    let mut quote = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`' | '[') => {
                quote = Some(if c == '[' { ']' } else { c });
                bare.push(' ');
            }
            None => bare.push(c),
        }
    }
    !bare
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|word| {
            [
                "CHECK",
                "REFERENCES",
                "UNIQUE",
                "COLLATE",
                "GENERATED",
                "FOREIGN",
            ]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
        })
}

/// The history table: the organisation and key of the row, the field, the old and new values and
/// the validity of the old one.
fn prepare_history(conn: &Connection, ds: &Dataset) -> StoreResult<()> {
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
    let name = ds.history_table();
    let history = ident(&name);
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {history} (id INTEGER PRIMARY KEY, {ORG_COLUMN} INTEGER NOT NULL, {}, \
         field TEXT NOT NULL, old_value TEXT, new_value TEXT, valid_from TEXT, valid_to TEXT NOT NULL, \
         job_id INTEGER NOT NULL)",
        key_cols.join(", "),
    ))
    .map_err(db_err)?;
    if !existing_columns(conn, &name)?
        .iter()
        .any(|c| c == ORG_COLUMN)
    {
        conn.execute_batch(&format!(
            "ALTER TABLE {history} ADD COLUMN {ORG_COLUMN} INTEGER NOT NULL DEFAULT {DEFAULT_ORG}"
        ))
        .map_err(db_err)?;
    }
    conn.execute_batch(&format!(
        "DROP INDEX IF EXISTS {};
         CREATE INDEX IF NOT EXISTS {} ON {history} ({ORG_COLUMN}, {}, field, valid_to);",
        ident(&format!("{}_history_key", ds.table)),
        ident(&format!("{}_history_org_key", ds.table)),
        key_list(ds)
    ))
    .map_err(db_err)
}

#[cfg(test)]
mod tests {
    use super::is_plain_definition;

    #[test]
    fn plain_definitions_are_told_from_richer_ones() {
        assert!(is_plain_definition(
            r#"CREATE TABLE "p" ("sku" TEXT NOT NULL, "checksum" TEXT, unique_code TEXT DEFAULT 'CHECK', PRIMARY KEY ("sku")) WITHOUT ROWID"#
        ));
        for rich in [
            "CREATE TABLE p (sku TEXT PRIMARY KEY, price TEXT CHECK (price > 0))",
            "CREATE TABLE p (sku TEXT PRIMARY KEY, name TEXT UNIQUE)",
            "CREATE TABLE p (sku TEXT PRIMARY KEY COLLATE NOCASE)",
            "CREATE TABLE p (sku TEXT PRIMARY KEY, d TEXT REFERENCES dealers (code))",
            "CREATE TABLE p (sku TEXT PRIMARY KEY, n INTEGER GENERATED ALWAYS AS (1))",
        ] {
            assert!(!is_plain_definition(rich), "{rich}");
        }
    }
}
