//! The analysis report: one workbook (sheets Summary, Errors, Columns) and one JSON document
//! with the same content, written once when the analysis completes and kept as blobs.
//!
//! Both are written as a stream: the row errors come from the store in keyset pages, the
//! Errors sheet is a `constant_memory` worksheet (rows go to a temp file as they are written),
//! the JSON is written error by error. Errors past the sheet's row limit ([`ERRORS_LIMIT`]) are
//! counted in a last line instead (and in `errorsOmitted` in the JSON).

use std::io::Write;

use rust_xlsxwriter::{Format, Workbook, XlsxError};
use serde::Serialize;

use super::stats::ColumnReport;
use crate::import::tally::ErrorSummary;
use crate::store::ErrorRecord;

/// Errors listed: an XLSX sheet has 1,048,576 rows, less the header and the "more" line.
pub const ERRORS_LIMIT: u64 = 1_048_574;

/// What the Summary sheet shows (and the status's `summary`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub filename: String,
    pub sha256: String,
    pub dataset: String,
    pub mode: String,
    /// Data rows read (valid and invalid).
    pub rows: u64,
    pub would_create: u64,
    pub would_update: u64,
    pub unchanged: u64,
    pub errors: u64,
    /// `mode=sync`: the organisation's rows whose keys the file lacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete: Option<u64>,
    /// `mode=sync`: why the import would fail on its `maxDeletePercent` guard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_refusal: Option<String>,
    pub errors_by_column: Vec<crate::import::tally::Count>,
    pub errors_by_message: Vec<crate::import::tally::MessageCount>,
}

impl Summary {
    pub fn with_tally(mut self, tally: ErrorSummary) -> Self {
        self.errors_by_column = tally.by_column;
        self.errors_by_message = tally.by_message;
        self
    }
}

/// A source of the job's row errors in row order, page by page (empty: no more).
pub type ErrorPages<'a> = dyn FnMut(u64) -> Result<Vec<ErrorRecord>, String> + 'a;

/// Hands the first [`ERRORS_LIMIT`] errors, in row order, to `f` with their 1-based position;
/// the number handed. Pages past the limit are not read: the summary's count says how many more.
fn each_listed(
    errors: &mut ErrorPages<'_>,
    mut f: impl FnMut(u64, &ErrorRecord) -> Result<(), String>,
) -> Result<u64, String> {
    let (mut written, mut after) = (0u64, 0u64);
    while written < ERRORS_LIMIT {
        let page = errors(after)?;
        let Some(last) = page.last() else { break };
        after = last.row;
        for e in page.iter().take((ERRORS_LIMIT - written) as usize) {
            written += 1;
            f(written, e)?;
        }
    }
    Ok(written)
}

fn x(e: XlsxError) -> String {
    format!("writing the report workbook: {e}")
}

/// Writes the workbook to `out`.
pub fn write_xlsx(
    out: &std::path::Path,
    summary: &Summary,
    columns: &[ColumnReport],
    errors: &mut ErrorPages<'_>,
) -> Result<(), String> {
    let mut wb = Workbook::new();
    let bold = Format::new().set_bold();
    {
        let ws = wb.add_worksheet();
        ws.set_name("Summary").map_err(x)?;
        let mut lines: Vec<(&str, String)> = vec![
            ("File", summary.filename.clone()),
            ("SHA-256", summary.sha256.clone()),
            ("Dataset", summary.dataset.clone()),
            ("Mode", summary.mode.clone()),
            ("Rows", summary.rows.to_string()),
            ("Would create", summary.would_create.to_string()),
            ("Would update", summary.would_update.to_string()),
            ("Unchanged", summary.unchanged.to_string()),
        ];
        if let Some(n) = summary.would_delete {
            lines.push(("Would delete", n.to_string()));
        }
        if let Some(why) = &summary.delete_refusal {
            lines.push(("Would fail", why.clone()));
        }
        lines.push(("Errors", summary.errors.to_string()));
        for (r, (label, value)) in lines.iter().enumerate() {
            let r = r as u32;
            ws.write_string_with_format(r, 0, *label, &bold)
                .map_err(x)?;
            match value.parse::<u64>() {
                Ok(n) if *label != "SHA-256" && *label != "File" => {
                    ws.write_number(r, 1, n as f64).map_err(x)?;
                }
                _ => {
                    ws.write_string(r, 1, value).map_err(x)?;
                }
            }
        }
        let mut r = lines.len() as u32 + 1;
        ws.write_string_with_format(r, 0, "Errors by column", &bold)
            .map_err(x)?;
        ws.write_string_with_format(r, 1, "Count", &bold)
            .map_err(x)?;
        for c in &summary.errors_by_column {
            r += 1;
            ws.write_string(r, 0, &c.column).map_err(x)?;
            ws.write_number(r, 1, c.count as f64).map_err(x)?;
        }
        r += 2;
        ws.write_string_with_format(r, 0, "Errors by message", &bold)
            .map_err(x)?;
        ws.write_string_with_format(r, 1, "Count", &bold)
            .map_err(x)?;
        ws.write_string_with_format(r, 2, "Example", &bold)
            .map_err(x)?;
        ws.write_string_with_format(r, 3, "Example row", &bold)
            .map_err(x)?;
        for m in &summary.errors_by_message {
            r += 1;
            ws.write_string(r, 0, &m.message).map_err(x)?;
            ws.write_number(r, 1, m.count as f64).map_err(x)?;
            ws.write_string(r, 2, &m.example).map_err(x)?;
            ws.write_number(r, 3, m.example_row as f64).map_err(x)?;
        }
        ws.set_column_width(0, 40).map_err(x)?;
        ws.set_column_width(1, 20).map_err(x)?;
    }
    {
        let ws = wb.add_worksheet_with_constant_memory().map_err(x)?;
        ws.set_name("Errors").map_err(x)?;
        for (c, h) in ["Row", "Column", "Value", "Message"].iter().enumerate() {
            ws.write_string_with_format(0, c as u16, *h, &bold)
                .map_err(x)?;
        }
        let written = each_listed(errors, |n, e| {
            let r = n as u32;
            ws.write_number(r, 0, e.row as f64).map_err(x)?;
            ws.write_string(r, 1, e.column.as_deref().unwrap_or(""))
                .map_err(x)?;
            ws.write_string(r, 2, e.value.as_deref().unwrap_or(""))
                .map_err(x)?;
            ws.write_string(r, 3, &e.message).map_err(x)?;
            Ok(())
        })?;
        let total = summary.errors.max(written);
        if total > written {
            ws.write_string(
                written as u32 + 1,
                0,
                format!(
                    "{} more errors are not listed (the sheet's row limit); download them as CSV from /errors",
                    total - written
                ),
            )
            .map_err(x)?;
        }
    }
    {
        let ws = wb.add_worksheet();
        ws.set_name("Columns").map_err(x)?;
        let heads = [
            "Header",
            "Field",
            "Type",
            "Filled %",
            "Filled",
            "Distinct values",
            "Min",
            "Max",
            "Longest (characters)",
            "Longest text",
            "Invalid values (sample)",
            "Mapping confidence %",
        ];
        for (c, h) in heads.iter().enumerate() {
            ws.write_string_with_format(0, c as u16, *h, &bold)
                .map_err(x)?;
        }
        for (i, col) in columns.iter().enumerate() {
            let r = i as u32 + 1;
            ws.write_string(r, 0, &col.header).map_err(x)?;
            ws.write_string(r, 1, &col.field).map_err(x)?;
            ws.write_string(r, 2, &col.ty).map_err(x)?;
            ws.write_number(r, 3, col.filled_percent).map_err(x)?;
            ws.write_number(r, 4, col.filled as f64).map_err(x)?;
            if col.distinct_over_cap {
                ws.write_string(r, 5, col.distinct_text()).map_err(x)?;
            } else {
                ws.write_number(r, 5, col.distinct as f64).map_err(x)?;
            }
            ws.write_string(r, 6, col.min.as_deref().unwrap_or(""))
                .map_err(x)?;
            ws.write_string(r, 7, col.max.as_deref().unwrap_or(""))
                .map_err(x)?;
            ws.write_number(r, 8, col.longest_length as f64)
                .map_err(x)?;
            ws.write_string(r, 9, col.longest_sample.as_deref().unwrap_or(""))
                .map_err(x)?;
            ws.write_string(r, 10, col.invalid_samples.join(" | "))
                .map_err(x)?;
            ws.write_number(r, 11, f64::from(col.confidence))
                .map_err(x)?;
        }
    }
    let file = std::fs::File::create(out).map_err(|e| format!("creating the report: {e}"))?;
    let mut w = std::io::BufWriter::new(file);
    wb.save_to_writer(&mut w).map_err(x)?;
    let file = w
        .into_inner()
        .map_err(|e| format!("writing the report: {e}"))?;
    file.sync_all()
        .map_err(|e| format!("writing the report: {e}"))?;
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonError<'a> {
    row: u64,
    column: Option<&'a str>,
    value: Option<&'a str>,
    message: &'a str,
}

/// Writes the JSON report to `out`: `{summary, columns, errors: [...], errorsOmitted}`.
pub fn write_json(
    out: &std::path::Path,
    summary: &Summary,
    columns: &[ColumnReport],
    errors: &mut ErrorPages<'_>,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("writing the JSON report: {e}");
    let js = |e: serde_json::Error| format!("writing the JSON report: {e}");
    let file = std::fs::File::create(out).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(b"{\"summary\":").map_err(io)?;
    serde_json::to_writer(&mut w, summary).map_err(js)?;
    w.write_all(b",\"columns\":").map_err(io)?;
    serde_json::to_writer(&mut w, columns).map_err(js)?;
    w.write_all(b",\"errors\":[").map_err(io)?;
    let written = each_listed(errors, |n, e| {
        if n > 1 {
            w.write_all(b",").map_err(io)?;
        }
        serde_json::to_writer(
            &mut w,
            &JsonError {
                row: e.row,
                column: e.column.as_deref(),
                value: e.value.as_deref(),
                message: &e.message,
            },
        )
        .map_err(js)
    })?;
    let omitted = summary.errors.saturating_sub(written);
    write!(w, "],\"errorsOmitted\":{omitted}}}").map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}
