//! Reading uploaded files: format detection by content, and a streaming CSV record source.
//!
//! Records are read into one reused `csv::ByteRecord`; nothing here holds more than a record.
//! The header is row 1; blank records (every field empty) are skipped and not counted as rows.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::FileError;

/// Bytes looked at to detect the format and sniff the delimiter.
const SNIFF_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
}

/// How to read a file: decided at upload, stored with the job, reused by the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOptions {
    /// Field delimiter; sniffed from the first line when not given.
    pub delimiter: Option<u8>,
}

/// Decides the format from the first bytes of the file, not from its name.
pub fn detect_format(head: &[u8]) -> Result<Format, FileError> {
    if head.is_empty() {
        return Err(FileError::Empty);
    }
    if head.starts_with(b"PK\x03\x04") {
        return Err(FileError::UnsupportedFormat(
            "this is a zip file (XLSX/ODS); spreadsheet files are not supported yet, export it as CSV".into(),
        ));
    }
    if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        return Err(FileError::UnsupportedFormat(
            "this is a legacy Office file (XLS); export it as CSV".into(),
        ));
    }
    if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
        return Err(FileError::UnsupportedFormat(
            "UTF-16 text is not supported yet; save the file as UTF-8 CSV".into(),
        ));
    }
    let sample = &head[..head.len().min(4096)];
    if sample.contains(&0) {
        return Err(FileError::UnsupportedFormat(
            "the file is binary, not CSV text".into(),
        ));
    }
    Ok(Format::Csv)
}

/// Picks the delimiter among `,` `;` tab `|` that occurs most often, outside quotes, in the
/// first line; `,` when none does.
pub fn sniff_delimiter(head: &[u8]) -> u8 {
    let mut counts = [0usize; 4];
    let candidates = [b',', b';', b'\t', b'|'];
    let mut in_quotes = false;
    for &b in head {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\n' | b'\r' if !in_quotes => break,
            _ if !in_quotes => {
                if let Some(i) = candidates.iter().position(|c| *c == b) {
                    counts[i] += 1;
                }
            }
            _ => {}
        }
    }
    let (best, n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(i, n)| (**n, usize::MAX - i))
        .unwrap_or((0, &0));
    if *n == 0 { b',' } else { candidates[best] }
}

/// Reads the first bytes of a file for detection.
pub fn read_head(path: &Path) -> Result<Vec<u8>, FileError> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    File::open(path)?
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Settles the options for a file: the detected format and the delimiter to use.
pub fn resolve_options(
    path: &Path,
    requested: &SourceOptions,
) -> Result<(Format, SourceOptions), FileError> {
    let head = read_head(path)?;
    let format = detect_format(&head)?;
    let delimiter = requested
        .delimiter
        .unwrap_or_else(|| sniff_delimiter(strip_bom(&head)));
    Ok((
        format,
        SourceOptions {
            delimiter: Some(delimiter),
        },
    ))
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)
}

/// A streaming CSV reader positioned after the header.
pub struct CsvSource {
    reader: csv::Reader<BufReader<File>>,
    headers: Vec<String>,
    /// Records read after the header, blank ones included: the next record's index.
    position: u64,
}

impl CsvSource {
    pub fn open(path: &Path, options: &SourceOptions) -> Result<Self, FileError> {
        let file = File::open(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(options.delimiter.unwrap_or(b','))
            .buffer_capacity(256 * 1024)
            .from_reader(BufReader::with_capacity(256 * 1024, file));
        let mut first = csv::ByteRecord::new();
        let has_header = reader
            .read_byte_record(&mut first)
            .map_err(|e| FileError::Unreadable(e.to_string()))?;
        if !has_header {
            return Err(FileError::Empty);
        }
        let mut headers = Vec::with_capacity(first.len());
        for (i, field) in first.iter().enumerate() {
            let field = if i == 0 { strip_bom(field) } else { field };
            let text = std::str::from_utf8(field).map_err(|_| {
                FileError::Unreadable("the header row is not valid UTF-8 text".into())
            })?;
            headers.push(text.trim().to_string());
        }
        if headers.iter().all(String::is_empty) {
            return Err(FileError::NoHeader);
        }
        Ok(Self {
            reader,
            headers,
            position: 0,
        })
    }

    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Reads the next non-blank record into `record`; returns its index among the data records
    /// (0 for the first record after the header), or `None` at the end of the file.
    pub fn next_record(&mut self, record: &mut csv::ByteRecord) -> Result<Option<u64>, FileError> {
        loop {
            let more = self
                .reader
                .read_byte_record(record)
                .map_err(|e| FileError::Unreadable(e.to_string()))?;
            if !more {
                return Ok(None);
            }
            let index = self.position;
            self.position += 1;
            if record.iter().all(|f| f.is_empty()) {
                continue;
            }
            return Ok(Some(index));
        }
    }

    /// Records consumed so far (the checkpoint a resumed job skips to).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Skips records until `position` records have been consumed.
    pub fn skip_to(&mut self, position: u64) -> Result<(), FileError> {
        let mut record = csv::ByteRecord::new();
        while self.position < position {
            let more = self
                .reader
                .read_byte_record(&mut record)
                .map_err(|e| FileError::Unreadable(e.to_string()))?;
            if !more {
                break;
            }
            self.position += 1;
        }
        Ok(())
    }
}

/// Counts the non-blank data rows of a file (one fast pass, no parsing of values).
pub fn count_rows(path: &Path, options: &SourceOptions) -> Result<u64, FileError> {
    let mut source = CsvSource::open(path, options)?;
    let mut record = csv::ByteRecord::new();
    let mut n = 0;
    while source.next_record(&mut record)?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_common_delimiters() {
        assert_eq!(sniff_delimiter(b"a,b,c\n1,2,3"), b',');
        assert_eq!(sniff_delimiter(b"a;b;c\n1;2;3"), b';');
        assert_eq!(sniff_delimiter(b"a\tb\tc\n"), b'\t');
        assert_eq!(sniff_delimiter(b"a|b|c"), b'|');
        assert_eq!(sniff_delimiter(b"\"x;y\",b,c"), b',');
        assert_eq!(sniff_delimiter(b"single"), b',');
    }

    #[test]
    fn detects_by_content() {
        assert!(matches!(detect_format(b""), Err(FileError::Empty)));
        assert!(matches!(
            detect_format(b"PK\x03\x04rest"),
            Err(FileError::UnsupportedFormat(_))
        ));
        assert!(matches!(
            detect_format(b"\x89PNG\r\n\x1a\n\0\0"),
            Err(FileError::UnsupportedFormat(_))
        ));
        assert!(matches!(detect_format(b"sku,name\n"), Ok(Format::Csv)));
    }
}
