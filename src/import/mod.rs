//! The import pipeline: read → map → validate → write, one batch at a time.
//!
//! `read` turns an uploaded file into records, `map` decides which column feeds which field,
//! `validate` turns a record into typed values or a [`RowError`], and `run` drives a job through
//! batches into a [`BatchSink`] (implemented by each store backend). Nothing here touches the
//! database directly, and nothing holds more than one batch in memory.

pub mod map;
pub mod partition;
pub mod read;
pub mod run;
pub mod tally;
pub mod validate;

use serde::{Deserialize, Serialize};

pub use map::Mapping;
pub use read::{Format, SourceOptions};
pub use run::{BatchSink, RunOutcome, SinkError};
pub use validate::Value;

/// A problem with the file as a whole, found before or while reading it. Each has a stable code
/// that the API returns with a 400 (or that fails the job when it appears only mid-file).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error("the file has no header row")]
    NoHeader,
    #[error("the file has a header but no data rows")]
    NoRows,
    #[error("{0}")]
    UnsupportedFormat(String),
    /// Required fields no column feeds; `hint` (for a workbook whose other sheets have data)
    /// says which `sheet` to try.
    #[error("missing required column(s): {}{}", .missing.join(", "), .hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    MissingColumns {
        missing: Vec<String>,
        hint: Option<String>,
    },
    #[error("{0}")]
    BadMapping(String),
    #[error("the file has more than {max} data rows, the most this dataset accepts in one request")]
    TooManyRows { max: u64 },
    #[error("the file cannot be read: {0}")]
    Unreadable(String),
    #[error("there is no sheet `{requested}` in the workbook; its sheets are: {}", .available.join(", "))]
    SheetNotFound {
        requested: String,
        available: Vec<String>,
    },
    /// A zip archive over the unpacked-size or compression-ratio limit (a zip bomb, or a file
    /// too big for this server's settings).
    #[error("{0}")]
    ArchiveLimit(String),
    #[error("the file has {found} columns; at most {max} are supported")]
    TooManyColumns { found: usize, max: usize },
    #[error("{0}")]
    CellTooLarge(String),
    #[error("{0}")]
    BadEncoding(String),
    /// The chosen sheet of a workbook has no cells (`header: false`, code `empty_file`) or a
    /// header and no data rows (`header: true`, code `no_rows`); `with_data` names the sheets
    /// that do have data rows, so the user knows which `sheet` to pass.
    #[error("{}", empty_sheet_message(.sheet, *.header, .with_data))]
    EmptySheet {
        sheet: String,
        header: bool,
        with_data: Vec<String>,
    },
    #[error("reading the uploaded file failed: {0}")]
    Io(#[from] std::io::Error),
    /// A job writing a file (an export) could not: the message says why, fit for users.
    #[error("{0}")]
    Output(String),
}

impl FileError {
    pub fn code(&self) -> &'static str {
        match self {
            FileError::Empty => "empty_file",
            FileError::NoHeader => "no_header",
            FileError::NoRows => "no_rows",
            FileError::UnsupportedFormat(_) => "unsupported_format",
            FileError::MissingColumns { .. } => "missing_columns",
            FileError::BadMapping(_) => "invalid_mapping",
            FileError::TooManyRows { .. } => "too_many_rows",
            FileError::Unreadable(_) => "unreadable_file",
            FileError::SheetNotFound { .. } => "sheet_not_found",
            FileError::ArchiveLimit(_) => "archive_too_large",
            FileError::TooManyColumns { .. } => "too_many_columns",
            FileError::CellTooLarge(_) => "cell_too_large",
            FileError::BadEncoding(_) => "invalid_encoding",
            FileError::EmptySheet { header: false, .. } => "empty_file",
            FileError::EmptySheet { header: true, .. } => "no_rows",
            FileError::Io(_) => "io_error",
            FileError::Output(_) => "export_failed",
        }
    }
}

fn empty_sheet_message(sheet: &str, header: bool, with_data: &[String]) -> String {
    let what = if header {
        "has a header but no data rows"
    } else {
        "is empty"
    };
    if with_data.is_empty() {
        return format!("sheet \"{sheet}\" {what}, and the workbook has no other sheet with data");
    }
    format!("sheet \"{sheet}\" {what}; {}", other_sheets(with_data))
}

/// "sheets with data: "Data", "2024" (choose one with the `sheet` option)".
pub fn other_sheets(with_data: &[String]) -> String {
    /// Sheets named in the message; a longer list ends with how many more there are.
    const LISTED: usize = 20;
    let mut list: Vec<String> = with_data
        .iter()
        .take(LISTED)
        .map(|s| format!("\"{s}\""))
        .collect();
    if with_data.len() > LISTED {
        list.push(format!("and {} more", with_data.len() - LISTED));
    }
    format!(
        "sheets with data: {} (choose one with the `sheet` option)",
        list.join(", ")
    )
}

/// A rejected row: data, not an exception. `row` counts as a spreadsheet shows it (the header
/// is row 1, the first data row is row 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowError {
    pub row: u64,
    pub column: Option<String>,
    pub value: Option<String>,
    pub message: String,
    /// The original fields of the row, so the rejected rows can be downloaded and fixed.
    pub record: Vec<String>,
    /// The row's key (key fields in key order) when they read well although the row was
    /// rejected: a `mode=sync` import keeps the table's row of that key.
    #[serde(skip)]
    pub key: Option<Box<[Value]>>,
}

/// How an import treats keys that already exist in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Insert new keys, update changed rows, leave unchanged rows alone.
    #[default]
    Upsert,
    /// Insert new keys; a key that already exists is a row error.
    Insert,
    /// The file becomes the whole table: rows are written to a staging table and replace the
    /// table's contents in one commit when the job completes (readers never see a half import).
    Replace,
    /// An upsert that, in the transaction completing the job, also deletes the organisation's
    /// rows whose keys the file does not have (a rejected row's key counts as present when its
    /// key fields read well), ledgered — unless that would delete more than the job's
    /// `maxDeletePercent` of the rows: the job then fails and deletes nothing.
    Sync,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "upsert" | "" => Ok(Mode::Upsert),
            "insert" => Ok(Mode::Insert),
            "replace" => Ok(Mode::Replace),
            "sync" => Ok(Mode::Sync),
            other => Err(format!(
                "unknown mode `{other}`; use upsert, insert, replace or sync"
            )),
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Upsert => "upsert",
            Mode::Insert => "insert",
            Mode::Replace => "replace",
            Mode::Sync => "sync",
        }
    }
}

/// The original bytes of the valid rows of a batch, kept so that a row the database rejects
/// (a duplicate key, say) can still be reported with its original fields. One arena per batch,
/// reused: no allocation per row.
#[derive(Debug, Default)]
pub struct RawRows {
    bytes: Vec<u8>,
    field_ends: Vec<usize>,
    row_ends: Vec<usize>,
}

impl RawRows {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.field_ends.clear();
        self.row_ends.clear();
    }

    pub fn push(&mut self, record: &csv::ByteRecord) {
        for field in record {
            self.bytes.extend_from_slice(field);
            self.field_ends.push(self.bytes.len());
        }
        self.row_ends.push(self.field_ends.len());
    }

    /// The fields of row `i`, as text (invalid UTF-8 shown with replacement characters).
    pub fn get(&self, i: usize) -> Vec<String> {
        let first_field = if i == 0 { 0 } else { self.row_ends[i - 1] };
        let mut start = if first_field == 0 {
            0
        } else {
            self.field_ends[first_field - 1]
        };
        self.field_ends[first_field..self.row_ends[i]]
            .iter()
            .map(|&end| {
                let s = String::from_utf8_lossy(&self.bytes[start..end]).into_owned();
                start = end;
                s
            })
            .collect()
    }
}

/// One batch of parsed rows: the valid ones as typed values, the invalid ones as errors.
#[derive(Debug, Default)]
pub struct Batch {
    /// Number of fields per row in `values` (the dataset's field count).
    pub width: usize,
    /// For each dataset field, whether the file has a column for it. Fields without one are
    /// left as they are when an existing row is updated.
    pub present: Vec<bool>,
    /// Spreadsheet row number of each valid row.
    pub rows: Vec<u64>,
    /// `rows.len() * width` values, row-major, in dataset field order.
    pub values: Vec<Value>,
    /// Original fields of each valid row.
    pub raw: RawRows,
    /// Rows rejected while parsing and validating.
    pub errors: Vec<RowError>,
    /// Records of the file this batch covers (valid, invalid and blank).
    pub records: u64,
}

impl Batch {
    pub fn new(present: Vec<bool>) -> Self {
        Self {
            width: present.len(),
            present,
            ..Self::default()
        }
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.values.clear();
        self.raw.clear();
        self.errors.clear();
        self.records = 0;
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.errors.is_empty()
    }

    pub fn row_values(&self, i: usize) -> &[Value] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    /// A row error for valid row `i` that the writer rejected; `key` are the dataset's key
    /// fields (the error keeps the row's key).
    pub fn reject(
        &self,
        i: usize,
        key: &[usize],
        column: Option<&str>,
        value: Option<String>,
        message: String,
    ) -> RowError {
        let values = self.row_values(i);
        RowError {
            row: self.rows[i],
            column: column.map(str::to_string),
            value,
            message,
            record: self.raw.get(i),
            key: Some(key.iter().map(|&k| values[k].clone()).collect()),
        }
    }
}

/// What one committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BatchCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sheet_messages_name_the_sheets_with_data() {
        let e = |header, with_data: Vec<String>| FileError::EmptySheet {
            sheet: "Cover".into(),
            header,
            with_data,
        };
        let err = e(false, vec!["Data".into(), "2024".into()]);
        assert_eq!(err.code(), "empty_file");
        assert_eq!(
            err.to_string(),
            r#"sheet "Cover" is empty; sheets with data: "Data", "2024" (choose one with the `sheet` option)"#
        );
        let err = e(true, Vec::new());
        assert_eq!(err.code(), "no_rows");
        assert_eq!(
            err.to_string(),
            r#"sheet "Cover" has a header but no data rows, and the workbook has no other sheet with data"#
        );
        let many = e(false, (1..=25).map(|i| format!("S{i}")).collect()).to_string();
        assert!(many.contains(r#""S20", and 5 more (choose"#), "{many}");
        assert!(!many.contains("S21"), "{many}");
    }
}
