//! Reading a dataset's rows out (exports): one statement over the table, built from an
//! [`ExportQuery`], run inside the backend's snapshot transaction so that a count and the rows
//! agree and an import committing meanwhile shows up wholly or not at all.
//!
//! Values come back in one shape on both databases: PostgreSQL's `NUMERIC`, `DATE` and
//! `TIMESTAMP` are read as text (SQLite stores them as text already), integers as integers,
//! booleans as booleans (SQLite: 0/1). Filters bind their values typed per field, so a decimal
//! range compares numbers on both (SQLite: `CAST(… AS REAL)`, PostgreSQL: `NUMERIC`).

use super::sql::{Dialect, Sql, Value};
use super::{ExportQuery, ExportRows, ORG_COLUMN, StoreError, StoreResult};
use crate::dataset::{Dataset, FieldType};

/// A name `datasets.toml` already checked as a plain identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

/// The select list entry of a field: text for the types whose native value the store does not
/// decode alike on both databases.
fn selected(d: Dialect, name: &str, ty: FieldType) -> String {
    match (d, ty) {
        (Dialect::Postgres, FieldType::Decimal | FieldType::Date | FieldType::Datetime) => {
            format!("CAST({} AS TEXT)", ident(name))
        }
        _ => ident(name),
    }
}

/// The column and its `$n` parameter as compared by a filter.
fn compared(d: Dialect, name: &str, ty: FieldType, n: usize) -> (String, String) {
    let col = ident(name);
    match (d, ty) {
        (Dialect::Sqlite, FieldType::Decimal) => (
            format!("CAST({col} AS REAL)"),
            format!("CAST(${n} AS REAL)"),
        ),
        // The value travels as text (its parameter typed TEXT), then becomes the column's type.
        (Dialect::Postgres, FieldType::Decimal) => {
            (col, format!("CAST(CAST(${n} AS TEXT) AS NUMERIC)"))
        }
        (Dialect::Postgres, FieldType::Date) => (col, format!("CAST(CAST(${n} AS TEXT) AS DATE)")),
        (Dialect::Postgres, FieldType::Datetime) => {
            (col, format!("CAST(CAST(${n} AS TEXT) AS TIMESTAMP)"))
        }
        _ => (col, format!("${n}")),
    }
}

/// A filter's canonical text as the parameter its field's column compares with.
fn bound(ty: FieldType, text: &str) -> StoreResult<Value> {
    let bad = || StoreError::Other(format!("filter value `{text}` does not fit its field"));
    Ok(match ty {
        FieldType::Integer => Value::Int(text.parse().map_err(|_| bad())?),
        FieldType::Boolean => Value::Bool(match text {
            "true" => true,
            "false" => false,
            _ => return Err(bad()),
        }),
        _ => Value::Text(text.to_string()),
    })
}

/// The `WHERE` clause (after the organisation, `$1`) and its parameters.
fn conditions(
    d: Dialect,
    ds: &Dataset,
    org: i64,
    q: &ExportQuery,
) -> StoreResult<(String, Vec<Value>)> {
    let mut sql = format!("{ORG_COLUMN} = $1");
    let mut params = vec![Value::Int(org)];
    for f in &q.filters {
        let field = ds
            .fields
            .get(f.field)
            .ok_or_else(|| StoreError::Other(format!("no field {}", f.field)))?;
        for (op, value) in [("=", &f.eq), (">=", &f.gte), ("<=", &f.lte)] {
            let Some(value) = value else { continue };
            params.push(bound(field.ty, value)?);
            let (col, param) = compared(d, &field.name, field.ty, params.len());
            sql.push_str(&format!(" AND {col} {op} {param}"));
        }
    }
    if let Some(since) = q.updated_since {
        params.push(Value::Time(since));
        sql.push_str(&format!(" AND _sluice_updated_at >= ${}", params.len()));
    }
    if let Some(job) = q.job {
        params.push(Value::Int(job));
        sql.push_str(&format!(" AND _sluice_job = ${}", params.len()));
    }
    Ok((sql, params))
}

/// Counts the rows, then streams them in key order into `out`; inside a snapshot (see
/// [`super::Backend::snapshot`]). Returns the rows handed over.
pub fn export(
    c: &mut dyn Sql,
    ds: &Dataset,
    org: i64,
    q: &ExportQuery,
    out: &mut dyn ExportRows,
) -> StoreResult<u64> {
    let d = c.dialect();
    let table = ident(&ds.table);
    let (cond, params) = conditions(d, ds, org, q)?;
    let total = c
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE {cond}"),
            &params,
        )?
        .u64(0)?;
    if !out.total(total) {
        return Ok(0);
    }
    let columns = q
        .columns
        .iter()
        .map(|&i| {
            ds.fields
                .get(i)
                .map(|f| selected(d, &f.name, f.ty))
                .ok_or_else(|| StoreError::Other(format!("no field {i}")))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let mut order = vec![ORG_COLUMN.to_string()];
    order.extend(ds.key.iter().map(|&k| ident(&ds.fields[k].name)));
    c.query_each(
        &format!(
            "SELECT {} FROM {table} WHERE {cond} ORDER BY {}",
            columns.join(", "),
            order.join(", ")
        ),
        &params,
        &mut |row| out.row(row),
    )
}
