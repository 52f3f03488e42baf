//! Export jobs: a dataset's rows of one organisation written into a CSV or XLSX file.
//!
//! Owns the job's parameters ([`ExportParams`], stored as `jobs.params`), the run (`run`): ONE
//! snapshot read through [`JobStore::dataset_export`] streamed row by row into the file's
//! writer (`csv.rs`, `xlsx.rs`) at the blob's temp path, progress (`rows_done`) recorded every
//! [`PROGRESS_EVERY`] rows on another connection, then the file published as the job's blob and
//! its description (`{format, size, sha256, rows, sheets}`) stored as `jobs.result`. Values are
//! written as the import reads them back ([`cell_text`]). A run that stops (shutdown, lost
//! lease, killed worker) leaves nothing: the next run starts the file over.

pub mod csv;
pub mod xlsx;

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Field, FieldType};
use crate::import::run::RunError;
use crate::import::{FileError, RunOutcome, SinkError};
use crate::jobs::JobContext;
use crate::store::sql::Value;
use crate::store::{ExportQuery, ExportRows, Job, JobStore, Lease, StoreError};

/// Rows between two progress records.
pub const PROGRESS_EVERY: u64 = 20_000;

/// The file formats an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Csv,
    Xlsx,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Xlsx => "xlsx",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Xlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
        }
    }
}

/// What an export job was asked for (`jobs.params`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExportParams {
    pub format: ExportFormat,
    pub query: ExportQuery,
    /// The header of each column (the field's name, or a template's header for it).
    pub headers: Vec<String>,
    /// CSV: start with a UTF-8 byte order mark (Excel then reads the file as UTF-8).
    #[serde(default)]
    pub bom: bool,
    /// CSV: prefix text cells that a spreadsheet could run as a formula with `'`.
    #[serde(default = "yes")]
    pub formula_safe: bool,
}

fn yes() -> bool {
    true
}

/// What an export produced (`jobs.result`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExportResult {
    pub format: ExportFormat,
    pub size: u64,
    pub sha256: String,
    pub rows: u64,
    /// XLSX: worksheets written (a new one after every 1,048,575 data rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheets: Option<u32>,
}

impl ExportResult {
    pub fn of(job: &Job) -> Option<ExportResult> {
        job.result
            .as_ref()
            .and_then(|r| serde_json::from_value(r.clone()).ok())
    }
}

/// A value as text, as the import reads it back: decimals with the field's scale, dates and
/// times ISO 8601 (`T` between date and time), booleans `true`/`false`; NULL is empty.
pub fn cell_text<'a>(field: &Field, value: &'a Value) -> Cow<'a, str> {
    match value {
        Value::Null => "".into(),
        Value::Bool(b) => if *b { "true" } else { "false" }.into(),
        Value::Int(n) if field.ty == FieldType::Boolean => {
            if *n != 0 { "true" } else { "false" }.into()
        }
        Value::Int(n) => n.to_string().into(),
        Value::Real(f) => f.to_string().into(),
        Value::Time(t) => t.to_rfc3339().into(),
        Value::Text(s) => match field.ty {
            FieldType::Decimal => match (field.scale, s.parse::<rust_decimal::Decimal>()) {
                (Some(scale), Ok(mut d)) => {
                    d.rescale(scale);
                    d.to_string().into()
                }
                _ => s.as_str().into(),
            },
            FieldType::Datetime => s.replacen(' ', "T", 1).into(),
            _ => s.as_str().into(),
        },
    }
}

/// A file writer for one format: one row at a time.
pub trait RowWriter {
    fn write_row(&mut self, values: &[Value]) -> Result<(), String>;
    /// Completes the file; the worksheets written (XLSX).
    fn finish(self: Box<Self>) -> Result<Option<u32>, String>;
}

/// The bridge between the store's snapshot and the file: writes each row, records progress,
/// and stops at a stop request or a lost lease.
struct Pump<'a> {
    store: &'a dyn JobStore,
    lease: &'a Lease,
    stop: &'a AtomicBool,
    writer: Box<dyn RowWriter>,
    rows: u64,
    failed: Option<RunError>,
    stopped: bool,
}

fn store_err(e: StoreError) -> RunError {
    SinkError::from(e).into()
}

impl Pump<'_> {
    fn checkpoint(&mut self, total: Option<u64>) -> bool {
        if self.stop.load(Ordering::SeqCst) {
            self.stopped = true;
            return false;
        }
        let recorded = match total {
            Some(total) => self.store.job_set_total(self.lease, total),
            None => self.store.job_set_progress(self.lease, self.rows),
        };
        match recorded {
            Ok(true) => true,
            Ok(false) => {
                self.failed = Some(SinkError::LeaseLost.into());
                false
            }
            // Progress is worth losing rather than the export: only the lease matters.
            Err(e) if total.is_none() && e.is_transient() => true,
            Err(e) => {
                self.failed = Some(store_err(e));
                false
            }
        }
    }
}

impl ExportRows for Pump<'_> {
    fn total(&mut self, rows: u64) -> bool {
        self.checkpoint(Some(rows))
    }

    fn row(&mut self, values: &[Value]) -> bool {
        if let Err(e) = self.writer.write_row(values) {
            self.failed =
                Some(FileError::Output(format!("writing the export file failed: {e}")).into());
            return false;
        }
        self.rows += 1;
        !self.rows.is_multiple_of(PROGRESS_EVERY) || self.checkpoint(None)
    }
}

/// The SHA-256 (hex) and size of a file.
fn digest(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok((
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        size,
    ))
}

fn output_failed(what: &str, e: impl std::fmt::Display) -> RunError {
    FileError::Output(format!("{what}: {e}")).into()
}

/// Runs an export job from the start: see the module doc.
pub fn run(
    ctx: &JobContext,
    job: &Job,
    lease: &Lease,
    stop: &AtomicBool,
) -> Result<RunOutcome, RunError> {
    let dataset = ctx.datasets.get(&job.dataset).ok_or_else(|| {
        FileError::Output(format!("dataset `{}` is no longer configured", job.dataset))
    })?;
    let org = job
        .org_id
        .ok_or_else(|| FileError::Output("the job belongs to no organisation".into()))?;
    let params: ExportParams = job
        .params
        .clone()
        .and_then(|p| serde_json::from_value(p).ok())
        .ok_or_else(|| FileError::Output("the export's parameters are not readable".into()))?;
    let temp = ctx
        .blobs
        .temp_path(&job.blob)
        .ok_or_else(|| FileError::Output("the export has no valid file name".into()))?;
    let written = write_file(ctx, &dataset, org, &params, &temp, lease, stop);
    let (rows, sheets) = match written {
        Ok(Some(done)) => done,
        Ok(None) => {
            let _ = std::fs::remove_file(&temp);
            return Ok(RunOutcome::Stopped);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    let (sha256, size) = digest(&temp).map_err(|e| output_failed("reading the export file", e))?;
    ctx.blobs
        .finish(&job.blob)
        .map_err(|e| output_failed("keeping the export file", e))?;
    if let Err(e) = ctx.blobs.publish(&job.blob) {
        ctx.blobs.remove(&job.blob);
        return Err(SinkError::Retryable(e.to_string()).into());
    }
    let result = ExportResult {
        format: params.format,
        size,
        sha256,
        rows,
        sheets,
    };
    let value = serde_json::to_value(&result).map_err(|e| SinkError::Fatal(e.to_string()))?;
    match ctx.store.job_set_result(lease, &value) {
        Ok(true) => {}
        Ok(false) => return Err(SinkError::LeaseLost.into()),
        Err(e) => return Err(store_err(e)),
    }
    crate::telemetry::export_written(params.format.as_str(), rows);
    tracing::info!(
        rows,
        size,
        format = params.format.as_str(),
        "export written"
    );
    Ok(RunOutcome::Finished)
}

/// Writes the whole file at `temp` from one snapshot: `Some((rows, sheets))`, or `None` when
/// asked to stop.
fn write_file(
    ctx: &JobContext,
    dataset: &Dataset,
    org: i64,
    params: &ExportParams,
    temp: &Path,
    lease: &Lease,
    stop: &AtomicBool,
) -> Result<Option<(u64, Option<u32>)>, RunError> {
    let fields: Vec<Field> = params
        .query
        .columns
        .iter()
        .map(|&i| {
            dataset
                .fields
                .get(i)
                .cloned()
                .ok_or_else(|| FileError::Output("a column is no longer in the dataset".into()))
        })
        .collect::<Result<_, _>>()?;
    let writer: Box<dyn RowWriter> = match params.format {
        ExportFormat::Csv => Box::new(
            csv::CsvOut::create(
                temp,
                &params.headers,
                fields,
                params.bom,
                params.formula_safe,
            )
            .map_err(|e| output_failed("creating the export file", e))?,
        ),
        ExportFormat::Xlsx => Box::new(
            xlsx::XlsxOut::create(temp, &params.headers, fields)
                .map_err(|e| output_failed("creating the export file", e))?,
        ),
    };
    let mut pump = Pump {
        store: ctx.store.as_ref(),
        lease,
        stop,
        writer,
        rows: 0,
        failed: None,
        stopped: false,
    };
    let read = ctx
        .store
        .dataset_export(dataset, org, &params.query, &mut pump);
    if let Some(e) = pump.failed.take() {
        return Err(e);
    }
    if pump.stopped {
        return Ok(None);
    }
    read.map_err(store_err)?;
    let rows = pump.rows;
    let sheets = pump
        .writer
        .finish()
        .map_err(|e| output_failed("writing the export file", e))?;
    Ok(Some((rows, sheets)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_the_import_reads_them() {
        let ds = crate::dataset::Datasets::parse(
            "[datasets.t]\nkey = [\"k\"]\n[datasets.t.fields]\nk = { type = \"text\" }\n\
             p = { type = \"decimal\", scale = 2 }\nq = { type = \"decimal\" }\n\
             b = { type = \"boolean\" }\nt = { type = \"datetime\" }\n",
            "test",
        )
        .unwrap();
        let f = &ds.get("t").unwrap().fields;
        let text = |i: usize, v: Value| cell_text(&f[i], &v).into_owned();
        assert_eq!(text(1, Value::Text("19.9".into())), "19.90");
        assert_eq!(text(1, Value::Text("5".into())), "5.00");
        assert_eq!(text(2, Value::Text("19.9".into())), "19.9");
        assert_eq!(text(3, Value::Int(1)), "true");
        assert_eq!(text(3, Value::Bool(false)), "false");
        assert_eq!(
            text(4, Value::Text("2024-01-02 03:04:05".into())),
            "2024-01-02T03:04:05"
        );
        assert_eq!(text(0, Value::Null), "");
    }
}
