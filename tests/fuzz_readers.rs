//! A property-based fuzz harness over the file readers (format detection, CSV, XLSX, XLS, ODS):
//! whatever the bytes, reading them ends in records or a file error — never a panic, never an
//! I/O error (which the API would turn into a 500).
//!
//! Bounded for `cargo test` (64 cases per property). For a longer run:
//!     PROPTEST_CASES=5000 cargo test --release --test fuzz_readers

mod common;

use std::path::Path;

use common::xlsx::{RawSheet, header, is, raw_xlsx};
use proptest::prelude::*;
use sluice::import::FileError;
use sluice::import::SourceOptions;
use sluice::import::read::{Source, resolve_options};

/// Reads a file the way an upload and a job do; returns the error, if any.
fn read_all(dir: &Path, bytes: &[u8], options: &SourceOptions) -> Option<FileError> {
    let path = dir.join("upload");
    std::fs::write(&path, bytes).unwrap();
    let result = (|| {
        let (format, settled) = resolve_options(&path, options)?;
        let mut source = Source::open(&path, format, &settled)?;
        let _ = source.headers();
        let mut record = csv::ByteRecord::new();
        let mut n = 0;
        while source.next_record(&mut record)?.is_some() {
            let _ = source.cell_errors();
            n += 1;
            if n > 100_000 {
                break;
            }
        }
        let position = source.position();
        let mut again = Source::open(&path, format, &settled)?;
        again.skip_to(position / 2)?;
        Ok::<_, FileError>(())
    })();
    result.err()
}

fn check(bytes: &[u8], options: &SourceOptions) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    if let Some(e) = read_all(dir.path(), bytes, options) {
        prop_assert!(
            !matches!(e, FileError::Io(_)),
            "an I/O error would be a 500: {e}"
        );
        prop_assert!(
            !e.to_string().contains(&*dir.path().to_string_lossy()),
            "{e}"
        );
    }
    Ok(())
}

fn seeds() -> Vec<Vec<u8>> {
    let fixtures = common::fixtures_dir().join("libreoffice");
    let mut seeds: Vec<Vec<u8>> = ["items.xlsx", "items.ods", "items.xls"]
        .iter()
        .map(|f| std::fs::read(fixtures.join(f)).unwrap())
        .collect();
    seeds.push(sheet(&sample_rows()));
    seeds.push(b"code;name\r\n1;\"a\"\"b\"\r\n2;\"multi\nline\"\r\n".to_vec());
    seeds.push(b"\xFF\xFEc\0o\0d\0e\0,\0n\0\n\0x\0,\0y\0\n\0".to_vec());
    seeds
}

fn sample_rows() -> String {
    header(&["code", "name", "price"])
        + r#"<row r="2">"#
        + &is("A2", "a&b")
        + r#"<c r="B2" t="s"><v>0</v></c><c r="C2" s="1"><v>45306.25</v></c></row><row r="4"><c r="A4" t="e"><v>#N/A</v></c><c r="C4" t="b"><v>1</v></c></row>"#
}

fn sheet(rows: &str) -> Vec<u8> {
    raw_xlsx(
        &[RawSheet {
            name: "S",
            hidden: false,
            rows: rows.to_string(),
        }],
        &["shared &amp; string", "two"],
        false,
        "",
    )
}

/// Applies byte edits (position, value) and an optional truncation.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for (pos, value) in edits {
        let i = pos % bytes.len();
        bytes[i] = *value;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check(&bytes, &SourceOptions::default())?;
    }

    #[test]
    fn mutated_real_files_never_panic(
        seed in 0usize..6,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let bytes = mutate(seeds()[seed].clone(), &edits, cut);
        check(&bytes, &SourceOptions::default())?;
    }

    #[test]
    fn mutated_sheet_xml_in_a_valid_zip_never_panics(
        edits in proptest::collection::vec((any::<usize>(), prop::sample::select(b"<>&/\"=;#x0 rcvt".to_vec())), 0..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let xml = mutate(sample_rows().into_bytes(), &edits, cut);
        let xml = String::from_utf8_lossy(&xml).into_owned();
        check(&sheet(&xml), &SourceOptions::default())?;
    }

    #[test]
    fn csv_options_never_panic(
        text in "[a-z,;\t|\"\r\n ]{0,200}",
        encoding in prop::sample::select(vec!["utf-8", "utf-16le", "utf-16be", "windows-1252"]),
        delimiter in proptest::option::of(prop::sample::select(b",;\t|".to_vec())),
    ) {
        let options = SourceOptions { delimiter, encoding: Some(encoding.into()), sheet: None, row_column: false, part: None };
        check(text.as_bytes(), &options)?;
    }
}
