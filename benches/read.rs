//! The file readers alone, without validation or a database: how fast a CSV, XLSX, XLS or ODS
//! file becomes records (issue 17's XLSX goal: ≥ 3M cells/s).
//!
//!     cargo bench --bench read -- FILE [FILE…]
//!
//! Prints, per file, the time to open it (for XLSX: the workbook parts and the shared-string
//! table), the time to read every record, rows, cells and cells/s, and a digest of every field
//! read (two files with the same values, written differently, must print the same digest). Time is wall-clock on an
//! otherwise quiet machine; compare files read in the same run.

use std::hash::{DefaultHasher, Hasher};
use std::path::Path;
use std::time::Instant;

use sluice::import::read::{Source, SourceOptions, detect_format};

fn main() {
    let files: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if files.is_empty() {
        eprintln!("usage: cargo bench --bench read -- FILE [FILE…]");
        std::process::exit(2);
    }
    for file in files {
        let path = Path::new(&file);
        let format = match detect_format(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{file}: {e}");
                continue;
            }
        };
        let t0 = Instant::now();
        let mut source = match Source::open(path, format, &SourceOptions::default()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{file}: {e}");
                continue;
            }
        };
        let opened = t0.elapsed();
        let mut record = csv::ByteRecord::new();
        let (mut rows, mut cells) = (0u64, 0u64);
        let mut digest = DefaultHasher::new();
        loop {
            match source.next_record(&mut record) {
                Ok(Some(_)) => {
                    rows += 1;
                    cells += record.len() as u64;
                    for field in record.iter() {
                        digest.write(field);
                        digest.write_u8(0xff);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("{file}: row {rows}: {e}");
                    break;
                }
            }
        }
        let total = t0.elapsed();
        let read = total - opened;
        println!(
            "{file} ({}): open {:.3} s, rows {:.3} s, total {:.3} s; {rows} rows, {cells} cells, {:.2}M cells/s; digest {:016x}",
            format.as_str(),
            opened.as_secs_f64(),
            read.as_secs_f64(),
            total.as_secs_f64(),
            cells as f64 / total.as_secs_f64() / 1e6,
            digest.finish()
        );
    }
}
