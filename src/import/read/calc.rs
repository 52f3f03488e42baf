//! Legacy Excel `.xls` (BIFF in an OLE container) and OpenDocument `.ods`, through calamine.
//!
//! calamine reads these formats a whole sheet at a time, so they are size-capped
//! ([`MAX_WHOLE_SHEET_BYTES`]: the `.xls` file, or the unpacked `content.xml` of an `.ods`);
//! XLSX, the format of big uploads, has its own streaming reader. calamine is called under
//! `catch_unwind`, so a malformed file it trips over becomes a clean error, never a crash.

use std::fs::File;
use std::io::{BufReader, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use calamine::{Data, ExcelDateTime, ExcelDateTimeType, Range, Reader, SheetVisible};

use super::cell::{NumberFormat, push_f64, push_iso_date, push_iso_duration, push_serial};
use super::{FileError, Format, MAX_CELL_BYTES, MAX_COLUMNS, SourceOptions, archive, pick_sheet};

/// Largest `.xls` file, or unpacked `.ods` sheet content, read whole.
pub const MAX_WHOLE_SHEET_BYTES: u64 = 200 * 1024 * 1024;

type Workbook = calamine::Sheets<BufReader<File>>;

fn calamine_call<T>(f: impl FnOnce() -> Result<T, FileError>) -> Result<T, FileError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(FileError::Unreadable(
            "the workbook is damaged and could not be read".into(),
        ))
    })
}

fn open_workbook(path: &Path, format: Format) -> Result<Workbook, FileError> {
    let too_big = || {
        FileError::ArchiveLimit(format!(
            "{} workbooks are read whole and may be at most {} MB; save this one as XLSX or CSV",
            format.as_str().to_uppercase(),
            MAX_WHOLE_SHEET_BYTES / (1024 * 1024)
        ))
    };
    match format {
        Format::Xls => {
            if std::fs::metadata(path)?.len() > MAX_WHOLE_SHEET_BYTES {
                return Err(too_big());
            }
        }
        Format::Ods => {
            let mut zip = archive::open(path)?;
            let index = zip
                .index_for_name("content.xml")
                .ok_or_else(|| FileError::Unreadable("the ODS file has no content".into()))?;
            let size = zip.by_index_raw(index).map_err(archive::damaged)?.size();
            if size > MAX_WHOLE_SHEET_BYTES {
                return Err(too_big());
            }
        }
        _ => {
            return Err(FileError::UnsupportedFormat(format!(
                "{} is not read by calamine here",
                format.as_str()
            )));
        }
    }
    let file = BufReader::new(File::open(path)?);
    calamine_call(|| match format {
        Format::Xls => calamine::Xls::new(file)
            .map(calamine::Sheets::Xls)
            .map_err(|e| {
                FileError::UnsupportedFormat(format!(
                    "this is an Office file that is not a readable Excel 97-2003 workbook \
                 (password-protected, or another kind of document): {e}"
                ))
            }),
        _ => calamine::Ods::new(file)
            .map(calamine::Sheets::Ods)
            .map_err(|e| FileError::Unreadable(format!("the ODS workbook is damaged ({e})"))),
    })
}

fn sheets(wb: &Workbook) -> Vec<(String, bool)> {
    wb.sheets_metadata()
        .iter()
        .map(|s| (s.name.clone(), s.visible == SheetVisible::Visible))
        .collect()
}

/// The workbook's sheet names, in order.
pub(super) fn sheet_names(path: &Path, format: Format) -> Result<Vec<String>, FileError> {
    Ok(sheets(&open_workbook(path, format)?)
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// The exact name of the sheet to read.
pub(super) fn resolve_sheet(
    path: &Path,
    format: Format,
    requested: Option<&str>,
) -> Result<String, FileError> {
    let wb = open_workbook(path, format)?;
    let list = sheets(&wb);
    Ok(list[pick_sheet(&list, requested)?].0.clone())
}

fn sheet_range(wb: &mut Workbook, name: &str) -> Result<Range<Data>, FileError> {
    calamine_call(|| {
        wb.worksheet_range(name)
            .map_err(|e| FileError::Unreadable(format!("the sheet `{name}` is damaged ({e})")))
    })
}

/// Every sheet of the workbook, in order, as `(name, visible, has a header and a data row)`;
/// the workbook is read once. A sheet that cannot be read counts as one without rows.
pub(super) fn sheets_with_rows(
    path: &Path,
    format: Format,
) -> Result<Vec<(String, bool, bool)>, FileError> {
    let mut wb = open_workbook(path, format)?;
    let mut record = csv::ByteRecord::new();
    Ok(sheets(&wb)
        .into_iter()
        .map(|(name, visible)| {
            let rows = sheet_range(&mut wb, &name)
                .and_then(CalcSource::from_range)
                .and_then(|mut s| s.next_record(&mut record))
                .is_ok_and(|r| r.is_some());
            (name, visible, rows)
        })
        .collect())
}

/// Appends a cell's text; `true` if the cell holds a spreadsheet error.
fn push_data(d: &Data, out: &mut Vec<u8>) -> bool {
    match d {
        Data::Empty => {}
        Data::String(s) => out.extend_from_slice(s.as_bytes()),
        // ODS time cells; one that is not an ISO duration is handed on as written.
        Data::DurationIso(s) => {
            if !push_iso_duration(s, out) {
                out.extend_from_slice(s.as_bytes());
            }
        }
        Data::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Data::Float(f) => push_f64(*f, out),
        Data::Bool(b) => out.extend_from_slice(if *b { b"TRUE" } else { b"FALSE" }),
        // XLS numbers with a date or time format. calamine tells elapsed times (`[h]:mm:ss`)
        // apart, but not dates from times of day: a serial below 1 is read as a time of day in
        // both date systems (in the 1904 one it could also be 1904-01-01, which no one types).
        Data::DateTime(dt) => {
            let serial = dt.as_f64();
            let format = if dt.is_duration() {
                NumberFormat::Elapsed
            } else if serial < 1.0 {
                NumberFormat::TimeOfDay
            } else {
                NumberFormat::Date
            };
            // calamine keeps the date system private; an equal value built for 1900 says which.
            let date1904 = *dt != ExcelDateTime::new(serial, ExcelDateTimeType::DateTime, false)
                && dt.is_datetime();
            if !push_serial(serial, format, date1904, out) {
                push_f64(serial, out);
            }
        }
        Data::DateTimeIso(s) => push_iso_date(s, out),
        Data::Error(e) => {
            let _ = write!(out, "{e}");
            return true;
        }
    }
    false
}

/// A sheet of an `.xls` or `.ods` workbook as a record source.
pub struct CalcSource {
    range: Range<Data>,
    /// 0-based sheet row of the range's first row.
    first_row: u64,
    /// Next row of the range to read.
    next: usize,
    headers: Vec<String>,
    position: u64,
    errors: Vec<usize>,
    cell: Vec<u8>,
}

impl CalcSource {
    pub fn open(path: &Path, format: Format, options: &SourceOptions) -> Result<Self, FileError> {
        let mut wb = open_workbook(path, format)?;
        let list = sheets(&wb);
        let name = &list[pick_sheet(&list, options.sheet.as_deref())?].0;
        Self::from_range(sheet_range(&mut wb, name)?)
    }

    /// A source over a sheet's cells; reads up to the header.
    fn from_range(range: Range<Data>) -> Result<Self, FileError> {
        if range.width() > MAX_COLUMNS {
            return Err(FileError::TooManyColumns {
                found: range.width(),
                max: MAX_COLUMNS,
            });
        }
        let first_row = u64::from(range.start().map_or(0, |s| s.0));
        let mut source = Self {
            range,
            first_row,
            next: 0,
            headers: Vec::new(),
            position: 0,
            errors: Vec::new(),
            cell: Vec::new(),
        };
        let mut record = csv::ByteRecord::new();
        loop {
            if source.next >= source.range.height() {
                return Err(FileError::Empty);
            }
            let row = source.next;
            source.next += 1;
            if source.read_row(row, &mut record)? {
                break;
            }
        }
        let mut headers: Vec<String> = record
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_string())
            .collect();
        while headers.last().is_some_and(String::is_empty) {
            headers.pop();
        }
        if headers.is_empty() {
            return Err(FileError::NoHeader);
        }
        source.headers = headers;
        // The header is at sheet row `first_row + next` (1-based); data indexes start after it.
        source.position = (source.first_row + source.next as u64).saturating_sub(1);
        Ok(source)
    }

    /// Reads range row `row` into `record`; `false` if it is blank.
    fn read_row(&mut self, row: usize, record: &mut csv::ByteRecord) -> Result<bool, FileError> {
        record.clear();
        self.errors.clear();
        let mut any = false;
        for col in 0..self.range.width() {
            self.cell.clear();
            let data = self.range.get((row, col)).unwrap_or(&Data::Empty);
            if push_data(data, &mut self.cell) {
                self.errors.push(col);
            }
            if self.cell.len() > MAX_CELL_BYTES {
                return Err(FileError::CellTooLarge(format!(
                    "a cell in row {} holds more than {MAX_CELL_BYTES} bytes",
                    self.first_row + row as u64 + 1
                )));
            }
            any |= !self.cell.is_empty();
            record.push_field(&self.cell);
        }
        // Trailing empty cells beyond the header are not fields.
        let mut len = record.len();
        while len > self.headers.len().max(1) && record.get(len - 1).is_some_and(<[u8]>::is_empty) {
            len -= 1;
        }
        record.truncate(len);
        Ok(any)
    }

    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    pub fn cell_errors(&self) -> &[usize] {
        &self.errors
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn next_record(&mut self, record: &mut csv::ByteRecord) -> Result<Option<u64>, FileError> {
        while self.next < self.range.height() {
            let row = self.next;
            self.next += 1;
            // Sheet row (1-based) is first_row + row + 1; the data index is that minus 2.
            let index = (self.first_row + row as u64).saturating_sub(1);
            self.position = index + 1;
            if self.read_row(row, record)? {
                while record.len() < self.headers.len() {
                    record.push_field(b"");
                }
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    pub fn skip_to(&mut self, position: u64) -> Result<(), FileError> {
        while self.position < position && self.next < self.range.height() {
            let index = (self.first_row + self.next as u64).saturating_sub(1);
            if index >= position {
                break;
            }
            self.next += 1;
            self.position = index + 1;
        }
        self.position = self.position.max(position);
        Ok(())
    }
}
