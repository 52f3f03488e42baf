//! CSV/TSV text: encoding detection and decoding, delimiter sniffing, and a streaming record
//! source.
//!
//! UTF-8 is read as is (a BOM is dropped); UTF-16 (found by its BOM) and Windows-1252 (the
//! fallback when the bytes are not valid UTF-8) are decoded to UTF-8 on the fly with
//! `encoding_rs` before the csv parser sees them. Records are read into one reused
//! `csv::ByteRecord`; nothing here holds more than a record and two 64 KiB buffers.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use encoding_rs::{CoderResult, Decoder, Encoding, UTF_8, WINDOWS_1252};

use super::{FileError, MAX_CELL_BYTES, MAX_COLUMNS, SourceOptions};

const BUFFER: usize = 256 * 1024;

/// The encoding announced by a byte-order mark, if any.
pub(super) fn bom_encoding(head: &[u8]) -> Option<&'static Encoding> {
    Encoding::for_bom(head).map(|(e, _)| e)
}

/// The encoding named by a client's `encoding` option (WHATWG labels: `utf-8`, `utf-16le`,
/// `utf-16be`, `windows-1252`, `latin1`, …).
pub(super) fn encoding_for_label(label: &str) -> Result<&'static Encoding, FileError> {
    Encoding::for_label_no_replacement(label.trim().as_bytes()).ok_or_else(|| {
        FileError::BadEncoding(format!(
            "unknown encoding `{}`; use utf-8, utf-16le, utf-16be or windows-1252",
            label.trim()
        ))
    })
}

/// The encoding of a text file without an explicit choice: its BOM, else UTF-8 when every
/// byte of the file is valid UTF-8, else Windows-1252 (which also reads Latin-1).
pub(super) fn detect_encoding(path: &Path, head: &[u8]) -> Result<&'static Encoding, FileError> {
    if let Some(e) = bom_encoding(head) {
        return Ok(e);
    }
    if std::str::from_utf8(head).is_err_and(|e| e.error_len().is_some()) {
        return Ok(WINDOWS_1252);
    }
    Ok(if is_utf8_file(path)? {
        UTF_8
    } else {
        WINDOWS_1252
    })
}

/// Checks a whole file for valid UTF-8, a buffer at a time.
fn is_utf8_file(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; BUFFER];
    let mut carry = 0;
    loop {
        let n = file.read(&mut buf[carry..])?;
        if n == 0 {
            return Ok(carry == 0);
        }
        let len = carry + n;
        match std::str::from_utf8(&buf[..len]) {
            Ok(_) => carry = 0,
            Err(e) if e.error_len().is_some() => return Ok(false),
            Err(e) => {
                let valid = e.valid_up_to();
                buf.copy_within(valid..len, 0);
                carry = len - valid;
            }
        }
    }
}

/// The first bytes as text, for sniffing the delimiter.
pub(super) fn decode_head<'a>(head: &'a [u8], encoding: &'static Encoding) -> Cow<'a, str> {
    encoding.decode_with_bom_removal(head).0
}

/// Picks the delimiter among `,` `;` tab `|` from the header and the first lines (outside
/// quotes): the one that appears in the header and the same number of times in the most
/// following lines; `,` when none appears.
pub fn sniff_delimiter(head: &[u8]) -> u8 {
    const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];
    let head = strip_bom(head);
    let mut lines: Vec<[usize; 4]> = Vec::new();
    let mut current = [0usize; 4];
    let mut in_quotes = false;
    let mut any = false;
    for &b in head {
        if lines.len() >= 20 {
            break;
        }
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\n' | b'\r' if !in_quotes => {
                if any {
                    lines.push(current);
                }
                current = [0; 4];
                any = false;
                continue;
            }
            _ if !in_quotes => {
                if let Some(k) = CANDIDATES.iter().position(|c| *c == b) {
                    current[k] += 1;
                }
            }
            _ => {}
        }
        any = true;
    }
    if any && lines.is_empty() {
        lines.push(current);
    }
    let Some(header) = lines.first() else {
        return b',';
    };
    (0..CANDIDATES.len())
        .filter(|&k| header[k] > 0)
        .max_by_key(|&k| {
            let consistent = lines[1..].iter().filter(|l| l[k] == header[k]).count();
            (consistent, header[k], usize::MAX - k)
        })
        .map_or(b',', |k| CANDIDATES[k])
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)
}

/// Bytes into UTF-8, a buffer at a time.
struct Decoding<R> {
    inner: R,
    decoder: Decoder,
    input: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    output: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    eof: bool,
    done: bool,
}

impl<R: Read> Decoding<R> {
    fn new(inner: R, encoding: &'static Encoding) -> Self {
        Self {
            inner,
            // BOM sniffing: a BOM in the file wins over the chosen encoding, and is dropped.
            decoder: encoding.new_decoder(),
            input: vec![0; BUFFER / 4],
            in_pos: 0,
            in_len: 0,
            output: vec![0; BUFFER / 2],
            out_pos: 0,
            out_len: 0,
            eof: false,
            done: false,
        }
    }
}

impl<R: Read> Read for Decoding<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out_len {
                let n = buf.len().min(self.out_len - self.out_pos);
                buf[..n].copy_from_slice(&self.output[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            if self.in_pos == self.in_len && !self.eof {
                self.in_len = self.inner.read(&mut self.input)?;
                self.in_pos = 0;
                self.eof = self.in_len == 0;
            }
            let (result, read, written, _) = self.decoder.decode_to_utf8(
                &self.input[self.in_pos..self.in_len],
                &mut self.output,
                self.eof,
            );
            self.in_pos += read;
            self.out_pos = 0;
            self.out_len = written;
            if self.eof && result == CoderResult::InputEmpty {
                self.done = true;
            }
        }
    }
}

/// The file as the csv parser reads it: raw UTF-8, or decoded on the fly.
enum Input {
    Plain(File),
    Decoded(Box<Decoding<File>>),
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Plain(f) => f.read(buf),
            Input::Decoded(d) => d.read(buf),
        }
    }
}

/// A streaming CSV reader positioned after the header.
pub struct CsvSource {
    reader: csv::Reader<Input>,
    headers: Vec<String>,
    /// Records read after the header, blank ones included: the next record's index.
    position: u64,
}

impl CsvSource {
    pub fn open(path: &Path, options: &SourceOptions) -> Result<Self, FileError> {
        let file = File::open(path)?;
        let encoding = match options.encoding.as_deref() {
            Some(label) => encoding_for_label(label)?,
            None => UTF_8,
        };
        let input = if encoding == UTF_8 {
            Input::Plain(file)
        } else {
            Input::Decoded(Box::new(Decoding::new(file, encoding)))
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(options.delimiter.unwrap_or(b','))
            .buffer_capacity(BUFFER)
            .from_reader(input);
        let mut first = csv::ByteRecord::new();
        let has_header = reader.read_byte_record(&mut first).map_err(csv_error)?;
        if !has_header {
            return Err(FileError::Empty);
        }
        if first.len() > MAX_COLUMNS {
            return Err(FileError::TooManyColumns {
                found: first.len(),
                max: MAX_COLUMNS,
            });
        }
        check_cells(&first, 1)?;
        let mut headers = Vec::with_capacity(first.len());
        for (i, field) in first.iter().enumerate() {
            let field = if i == 0 { strip_bom(field) } else { field };
            let text = std::str::from_utf8(field).map_err(|_| {
                FileError::Unreadable(
                    "the header row is not valid UTF-8 text; pass the file's `encoding`".into(),
                )
            })?;
            headers.push(text.trim().to_string());
        }
        // Trailing delimiters: empty header cells at the end are not columns.
        while headers.len() > 1 && headers.last().is_some_and(String::is_empty) {
            headers.pop();
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
    /// (0 for the first record after the header), or `None` at the end of the file. Empty
    /// fields after the last column (trailing delimiters) are dropped.
    pub fn next_record(&mut self, record: &mut csv::ByteRecord) -> Result<Option<u64>, FileError> {
        loop {
            let more = self.reader.read_byte_record(record).map_err(csv_error)?;
            if !more {
                return Ok(None);
            }
            let index = self.position;
            self.position += 1;
            if record.iter().all(|f| f.is_empty()) {
                continue;
            }
            check_cells(record, index + 2)?;
            let mut len = record.len();
            while len > self.headers.len() && record.get(len - 1).is_some_and(<[u8]>::is_empty) {
                len -= 1;
            }
            record.truncate(len);
            return Ok(Some(index));
        }
    }

    /// The bytes of the file read so far, when they are known: the file is UTF-8 (read as it
    /// is, so the parser's offset is the file's).
    pub fn bytes_read(&self) -> Option<u64> {
        match self.reader.get_ref() {
            Input::Plain(_) => Some(self.reader.position().byte()),
            Input::Decoded(_) => None,
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
                .map_err(csv_error)?;
            if !more {
                break;
            }
            self.position += 1;
        }
        Ok(())
    }
}

fn check_cells(record: &csv::ByteRecord, row: u64) -> Result<(), FileError> {
    if record.as_slice().len() > MAX_CELL_BYTES && record.iter().any(|f| f.len() > MAX_CELL_BYTES) {
        return Err(FileError::CellTooLarge(format!(
            "a cell in row {row} holds more than {MAX_CELL_BYTES} bytes; that is not a \
             spreadsheet value sluice accepts"
        )));
    }
    Ok(())
}

fn csv_error(e: csv::Error) -> FileError {
    match e.kind() {
        csv::ErrorKind::Io(io) => {
            FileError::Unreadable(format!("the text could not be decoded: {io}"))
        }
        _ => FileError::Unreadable(e.to_string()),
    }
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
        // Decimal commas in a semicolon file; commas in tab-separated names.
        assert_eq!(sniff_delimiter(b"a;b;c\r\n1,5;2,5;3\r\n"), b';');
        assert_eq!(sniff_delimiter(b"sku\tname\nA\tx, y, z\nB\tq\n"), b'\t');
        // The header has one comma by accident, the lines agree on semicolons.
        assert_eq!(sniff_delimiter(b"a,x;b;c\r1;2;3\r4;5;6\r"), b';');
    }

    #[test]
    fn decodes_utf16_and_windows_1252() {
        let text = "name\nCrème brûlée\n";
        let mut utf16: Vec<u8> = vec![0xFF, 0xFE];
        for u in text.encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        let mut out = String::new();
        Decoding::new(&utf16[..], encoding_rs::UTF_16LE)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, text);
        let latin = b"name\nM\xFCller\n";
        let mut out = String::new();
        Decoding::new(&latin[..], WINDOWS_1252)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "name\nMüller\n");
        assert!(encoding_for_label("latin1").is_ok());
        assert_eq!(
            encoding_for_label("klingon").unwrap_err().code(),
            "invalid_encoding"
        );
    }
}
