//! The XLSX writer of exports: rust_xlsxwriter in constant-memory mode (each row goes to a
//! temporary file, unnamed, in the blob directory, as soon as the next one starts), typed cells
//! — integers and decimals as numbers (a decimal's scale as its number format), dates and times
//! as date cells, booleans as booleans, text as inline strings —, a bold frozen header with an
//! autofilter on every sheet, and a new sheet after [`MAX_DATA_ROWS`] data rows.

use std::path::{Path, PathBuf};

use rust_xlsxwriter::{ExcelDateTime, Format, Workbook, Worksheet, XlsxError};

use super::{RowWriter, cell_text};
use crate::dataset::{Field, FieldType};
use crate::store::sql::Value;

/// Data rows per worksheet: Excel's 1,048,576 rows less the header.
pub const MAX_DATA_ROWS: u32 = 1_048_575;

/// Longest text a cell holds (Excel's limit, in characters).
const MAX_CELL_CHARS: usize = 32_767;

/// Integers beyond this lose digits as a spreadsheet number (f64): written as text instead.
const EXACT_INTEGER: i64 = 1 << 53;

pub struct XlsxOut {
    path: PathBuf,
    book: Workbook,
    headers: Vec<String>,
    fields: Vec<Field>,
    /// One number format per column (decimals, dates, times), or none.
    formats: Vec<Option<Format>>,
    bold: Format,
    /// The worksheet being written, and its rows so far (header included).
    sheet: usize,
    row: u32,
    sheets: u32,
    /// Data rows per sheet ([`MAX_DATA_ROWS`]; smaller in tests).
    sheet_rows: u32,
}

fn err(e: XlsxError) -> String {
    e.to_string()
}

impl XlsxOut {
    pub fn create(path: &Path, headers: &[String], fields: Vec<Field>) -> Result<Self, String> {
        Self::with_sheet_rows(path, headers, fields, MAX_DATA_ROWS)
    }

    /// As [`XlsxOut::create`], with at most `sheet_rows` data rows per sheet.
    pub fn with_sheet_rows(
        path: &Path,
        headers: &[String],
        fields: Vec<Field>,
        sheet_rows: u32,
    ) -> Result<Self, String> {
        let mut book = Workbook::new();
        if let Some(dir) = path.parent() {
            book.set_tempdir(dir).map_err(err)?;
        }
        book.use_zip_large_file(true);
        let formats = fields
            .iter()
            .map(|f| match f.ty {
                FieldType::Decimal => f.scale.map(|s| {
                    let num = match s {
                        0 => "0".to_string(),
                        s => format!("0.{}", "0".repeat(s as usize)),
                    };
                    Format::new().set_num_format(num)
                }),
                FieldType::Date => Some(Format::new().set_num_format("yyyy-mm-dd")),
                FieldType::Datetime => Some(Format::new().set_num_format("yyyy-mm-dd hh:mm:ss")),
                _ => None,
            })
            .collect();
        let mut out = Self {
            path: path.to_path_buf(),
            book,
            headers: headers.to_vec(),
            fields,
            formats,
            bold: Format::new().set_bold(),
            sheet: 0,
            row: 0,
            sheets: 0,
            sheet_rows: sheet_rows.clamp(1, MAX_DATA_ROWS),
        };
        out.new_sheet()?;
        Ok(out)
    }

    fn current(&mut self) -> Result<&mut Worksheet, String> {
        self.book.worksheet_from_index(self.sheet).map_err(err)
    }

    /// Closes the current sheet's header (autofilter over its rows).
    fn close_sheet(&mut self) -> Result<(), String> {
        let (last_row, last_col) = (self.row.saturating_sub(1), self.headers.len().max(1) - 1);
        let sheet = self.current()?;
        sheet
            .autofilter(0, 0, last_row, last_col as u16)
            .map_err(err)?;
        Ok(())
    }

    fn new_sheet(&mut self) -> Result<(), String> {
        self.sheets += 1;
        let name = match self.sheets {
            1 => "Data".to_string(),
            n => format!("Data {n}"),
        };
        let (headers, bold) = (self.headers.clone(), self.bold.clone());
        let sheet = self
            .book
            .add_worksheet_with_constant_memory()
            .map_err(err)?;
        sheet.set_name(name).map_err(err)?;
        for (col, h) in headers.iter().enumerate() {
            sheet
                .write_string_with_format(0, col as u16, h, &bold)
                .map_err(err)?;
        }
        sheet.set_freeze_panes(1, 0).map_err(err)?;
        self.sheet = self.sheets as usize - 1;
        self.row = 1;
        Ok(())
    }
}

/// Text cut to what a cell holds.
fn fit(text: &str) -> &str {
    match text.char_indices().nth(MAX_CELL_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

impl RowWriter for XlsxOut {
    fn write_row(&mut self, values: &[Value]) -> Result<(), String> {
        if self.row > self.sheet_rows {
            self.close_sheet()?;
            self.new_sheet()?;
        }
        let row = self.row;
        let sheet = self.book.worksheet_from_index(self.sheet).map_err(err)?;
        for (col, ((field, value), format)) in self
            .fields
            .iter()
            .zip(values)
            .zip(&self.formats)
            .enumerate()
        {
            let col = col as u16;
            let written = match (field.ty, value) {
                (_, Value::Null) => continue,
                (FieldType::Boolean, Value::Bool(b)) => sheet.write_boolean(row, col, *b),
                (FieldType::Boolean, Value::Int(n)) => sheet.write_boolean(row, col, *n != 0),
                (FieldType::Integer, Value::Int(n)) if n.abs() < EXACT_INTEGER => {
                    sheet.write_number(row, col, *n as f64)
                }
                (FieldType::Decimal, Value::Text(s)) => match s.parse::<f64>() {
                    Ok(n) => match format {
                        Some(f) => sheet.write_number_with_format(row, col, n, f),
                        None => sheet.write_number(row, col, n),
                    },
                    Err(_) => sheet.write_string(row, col, fit(s)),
                },
                (FieldType::Date | FieldType::Datetime, Value::Text(s)) => {
                    let text = cell_text(field, value);
                    // Excel has no dates before 1900: those stay text.
                    let in_range = s
                        .get(..4)
                        .and_then(|y| y.parse::<u16>().ok())
                        .is_some_and(|y| y >= 1900);
                    match (ExcelDateTime::parse_from_str(&text), format) {
                        (Ok(d), Some(f)) if in_range => {
                            sheet.write_datetime_with_format(row, col, d, f)
                        }
                        _ => sheet.write_string(row, col, fit(&text)),
                    }
                }
                _ => {
                    let text = cell_text(field, value);
                    sheet.write_string(row, col, fit(&text))
                }
            };
            written.map_err(err)?;
        }
        self.row += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Option<u32>, String> {
        self.close_sheet()?;
        let path = self.path.clone();
        self.book.save(&path).map_err(err)?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        Ok(Some(self.sheets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{Data, Reader};

    #[test]
    fn a_full_sheet_continues_on_a_new_one_with_the_same_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.xlsx");
        let ds = crate::dataset::Datasets::parse(
            "[datasets.t]\nkey = [\"n\"]\n[datasets.t.fields]\nn = { type = \"integer\" }\n",
            "test",
        )
        .unwrap();
        let fields = ds.get("t").unwrap().fields.clone();
        let mut out: Box<dyn RowWriter> =
            Box::new(XlsxOut::with_sheet_rows(&path, &["n".to_string()], fields, 3).unwrap());
        for n in 1..=7 {
            out.write_row(&[Value::Int(n)]).unwrap();
        }
        assert_eq!(out.finish().unwrap(), Some(3));
        let mut book = calamine::open_workbook_auto(&path).unwrap();
        assert_eq!(book.sheet_names(), ["Data", "Data 2", "Data 3"]);
        let mut seen = Vec::new();
        for name in book.sheet_names() {
            let range = book.worksheet_range(&name).unwrap();
            let mut rows = range.rows();
            assert_eq!(rows.next().unwrap(), [Data::String("n".into())]);
            seen.push(
                rows.map(|r| match &r[0] {
                    Data::Float(f) => *f as i64,
                    Data::Int(n) => *n,
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            );
        }
        assert_eq!(seen, [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    }
}
