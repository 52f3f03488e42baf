//! The CSV writer of exports: UTF-8 (optionally with a byte order mark), RFC 4180 quoting (the
//! csv crate), and formula neutralisation ([`neutralise`], also used by the rejected-rows CSV).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{RowWriter, cell_text};
use crate::dataset::{Field, FieldType};
use crate::store::sql::Value;

/// A cell made safe for spreadsheets (OWASP "CSV injection"): a cell starting with `=`, `+`,
/// `-`, `@`, tab or carriage return could run as a formula when the file is opened, so it gets a
/// leading `'`. A genuine negative number such as `-5` is prefixed too (`'-5`): remove the quote
/// before importing such a value again.
pub fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

pub struct CsvOut {
    out: csv::Writer<BufWriter<File>>,
    fields: Vec<Field>,
    formula_safe: bool,
}

impl CsvOut {
    pub fn create(
        path: &Path,
        headers: &[String],
        fields: Vec<Field>,
        bom: bool,
        formula_safe: bool,
    ) -> std::io::Result<Self> {
        let mut file = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        if bom {
            file.write_all(b"\xEF\xBB\xBF")?;
        }
        let mut out = csv::WriterBuilder::new().from_writer(file);
        out.write_record(headers.iter().map(|h| {
            if formula_safe {
                neutralise(h).into_owned()
            } else {
                h.clone()
            }
        }))?;
        Ok(Self {
            out,
            fields,
            formula_safe,
        })
    }
}

impl RowWriter for CsvOut {
    fn write_row(&mut self, values: &[Value]) -> Result<(), String> {
        for (field, value) in self.fields.iter().zip(values) {
            let text = cell_text(field, value);
            // Only text can carry a formula: typed numbers, dates and booleans stay as they are.
            let text = if self.formula_safe && field.ty == FieldType::Text {
                match neutralise(&text) {
                    std::borrow::Cow::Borrowed(_) => text,
                    owned => owned.into_owned().into(),
                }
            } else {
                text
            };
            self.out
                .write_field(text.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        self.out
            .write_record(None::<&[u8]>)
            .map_err(|e| e.to_string())
    }

    fn finish(self: Box<Self>) -> Result<Option<u32>, String> {
        let file = self.out.into_inner().map_err(|e| e.to_string())?;
        let file = file.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        Ok(None)
    }
}
