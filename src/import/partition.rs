//! Splitting a large file into chunk files by key (seed 004): every row goes to chunk
//! `hash(key) % N`, so all rows of one key land in the same chunk and chunks can be written in
//! parallel without meeting each other's keys.
//!
//! One streaming pass over the source. Each chunk is a UTF-8 CSV whose first column is the row's
//! number in the original file (so row errors keep pointing at the original rows), followed by
//! the original columns. The key is hashed in its parsed form (` 42` and `42` are the same integer
//! key); a key that does not parse is hashed as written, since its row will be rejected anyway.

use std::io::Write;
use std::path::Path;

use super::read::Source;
use super::validate::parse_field;
use super::{FileError, Format, Mapping, SourceOptions};
use crate::dataset::{Dataset, Field};

/// The header of a chunk file's first column.
pub const ROW_COLUMN: &str = "__sluice_row";

/// How a chunk file is read back.
pub fn chunk_options() -> SourceOptions {
    SourceOptions {
        delimiter: Some(b','),
        encoding: Some("UTF-8".into()),
        sheet: None,
        row_column: true,
        part: None,
    }
}

/// FNV-1a: stable across processes and versions (unlike `std`'s hasher), fast, good enough to
/// spread keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which part of `n` a record's key puts it in: the same for every reader of the same file
/// (the chunk files' partition, a part reading the original file, the parts read together).
pub struct KeyHash {
    /// Each key field with the file's column that holds it.
    columns: Vec<(Field, Option<usize>)>,
    key: Vec<u8>,
}

impl KeyHash {
    pub fn new(dataset: &Dataset, mapping: &Mapping) -> Self {
        let field_columns = mapping.field_columns(dataset);
        Self {
            columns: (dataset.key.iter())
                .map(|&k| (dataset.fields[k].clone(), field_columns[k]))
                .collect(),
            key: Vec::new(),
        }
    }

    /// The part (`0..n`) of the record's key: hashed in its parsed form, or as written when it
    /// does not parse.
    pub fn part_of(&mut self, record: &csv::ByteRecord, n: u32) -> u32 {
        self.key.clear();
        for (field, column) in &self.columns {
            let raw = column.and_then(|c| record.get(c)).unwrap_or_default();
            let text = std::str::from_utf8(raw).unwrap_or_default();
            match parse_field(field, text).ok().and_then(|v| v.to_text()) {
                Some(parsed) => self.key.extend_from_slice(parsed.as_bytes()),
                None => self.key.extend_from_slice(raw),
            }
            self.key.push(0x1f);
        }
        (fnv1a(&self.key) % u64::from(n.max(1))) as u32
    }
}

/// Writes one chunk file into each of `chunks` from the source file; the data rows each got.
pub fn partition<W: Write>(
    dataset: &Dataset,
    path: &Path,
    format: Format,
    options: &SourceOptions,
    mapping: &Mapping,
    chunks: &mut [W],
) -> Result<Vec<u64>, FileError> {
    let n = chunks.len().max(1);
    let mut source = Source::open(path, format, options)?;
    let mut header = vec![ROW_COLUMN.to_string()];
    header.extend(source.headers().iter().cloned());
    let csv_err = |e: csv::Error| FileError::Unreadable(format!("writing a chunk file: {e}"));
    let mut writers = Vec::with_capacity(n);
    for chunk in chunks.iter_mut() {
        let mut w = csv::WriterBuilder::new().flexible(true).from_writer(chunk);
        w.write_record(&header).map_err(csv_err)?;
        writers.push(w);
    }
    let mut keys = KeyHash::new(dataset, mapping);
    let mut rows = vec![0u64; n];
    let mut record = csv::ByteRecord::new();
    let mut out = csv::ByteRecord::new();
    while let Some(index) = source.next_record(&mut record)? {
        let chunk = keys.part_of(&record, n as u32) as usize;
        out.clear();
        out.push_field((index + 2).to_string().as_bytes());
        record.iter().for_each(|f| out.push_field(f));
        writers[chunk].write_byte_record(&out).map_err(csv_err)?;
        rows[chunk] += 1;
    }
    for mut w in writers {
        w.flush()?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
