//! The zip layer under XLSX and ODS: opening an archive safely and streaming its entries.
//!
//! Before anything is unpacked, the central directory is checked against the zip-bomb limits
//! ([`super::Limits`]: total unpacked size, and the compression ratio of large entries). An
//! entry is then streamed from its own file handle (so a reader can own it for the whole job)
//! and refused if it unpacks to more than its declared size. [`MarkupGuard`] bounds the longest
//! run of bytes without `<` or `>`, which bounds the XML parser's buffer (one text node or tag).
//! Entries are looked up by name as Excel does ([`entry_index`]): exactly, else ignoring ASCII
//! case, since OPC part names are case-insensitive.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use zip::ZipArchive;
use zip::result::ZipError;

use super::{FileError, Format, MAX_CELL_BYTES, RATIO_FLOOR, limits};

/// Longest run of bytes between XML markup characters.
const MAX_MARKUP_RUN: usize = 4 * MAX_CELL_BYTES;

pub(super) fn damaged(e: impl std::fmt::Display) -> FileError {
    FileError::Unreadable(format!(
        "the workbook is a damaged or truncated zip archive ({e})"
    ))
}

/// Opens a zip archive and checks it against the zip-bomb limits.
pub(super) fn open(path: &Path) -> Result<ZipArchive<File>, FileError> {
    let mut zip = ZipArchive::new(File::open(path)?).map_err(damaged)?;
    check_limits(&mut zip)?;
    Ok(zip)
}

fn check_limits(zip: &mut ZipArchive<File>) -> Result<(), FileError> {
    let limits = limits();
    let mut total: u64 = 0;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(damaged)?;
        if entry.encrypted() {
            return Err(FileError::UnsupportedFormat(
                "the workbook is password-protected; remove the password and upload it again"
                    .into(),
            ));
        }
        let size = entry.size();
        total = total.saturating_add(size);
        if total > limits.max_unzipped_bytes {
            return Err(FileError::ArchiveLimit(format!(
                "the workbook unpacks to more than {} MB, the limit of this server \
                 (--max-unzipped-mb); this looks like a zip bomb",
                limits.max_unzipped_bytes / (1024 * 1024)
            )));
        }
        let ratio = size / entry.compressed_size().max(1);
        if size > RATIO_FLOOR && ratio > limits.max_zip_ratio {
            return Err(FileError::ArchiveLimit(format!(
                "a part of the workbook is compressed {ratio}:1, more than the limit of {}:1 \
                 (--max-zip-ratio); this looks like a zip bomb",
                limits.max_zip_ratio
            )));
        }
    }
    Ok(())
}

/// What kind of workbook a zip archive holds, and the sheet to read (by exact name).
pub(super) fn resolve_zip(path: &Path, sheet: Option<&str>) -> Result<(Format, String), FileError> {
    let mut zip = open(path)?;
    if let Some(workbook) = super::xlsx::workbook_path(&mut zip)? {
        let lower = workbook.to_ascii_lowercase();
        if lower.ends_with(".bin") {
            return Err(FileError::UnsupportedFormat(
                "this is a binary Excel workbook (XLSB); save it as XLSX or CSV".into(),
            ));
        }
        // Word and PowerPoint files are the same kind of package, with their own main part.
        for (part, what) in [
            ("document.xml", "a Word document (DOCX)"),
            ("presentation.xml", "a PowerPoint presentation (PPTX)"),
        ] {
            if lower.rsplit('/').next() == Some(part) {
                return Err(FileError::UnsupportedFormat(format!(
                    "this is {what}, not a spreadsheet; upload CSV, XLSX, XLS or ODS"
                )));
            }
        }
        let name = super::xlsx::resolve_sheet(&mut zip, sheet)?;
        return Ok((Format::Xlsx, name));
    }
    let ods = match read_small(&mut zip, "mimetype", 1024)? {
        Some(m) => m.starts_with(b"application/vnd.oasis.opendocument.spreadsheet"),
        None => zip.index_for_name("content.xml").is_some(),
    };
    if ods {
        drop(zip);
        let name = super::calc::resolve_sheet(path, Format::Ods, sheet)?;
        return Ok((Format::Ods, name));
    }
    Err(FileError::UnsupportedFormat(
        "this is a zip archive, but not an XLSX or ODS workbook".into(),
    ))
}

/// The index of entry `name`: the entry of exactly that name, else the first whose name differs
/// only in ASCII case (`xl/SharedStrings.xml` for `xl/sharedStrings.xml`), as Excel reads them.
pub(super) fn entry_index(zip: &ZipArchive<File>, name: &str) -> Option<usize> {
    zip.index_for_name(name).or_else(|| {
        (0..zip.len()).find(|&i| {
            zip.name_for_index(i)
                .is_some_and(|n| n.is_ok_and(|n| n.eq_ignore_ascii_case(name)))
        })
    })
}

/// Reads a small entry whole; `None` if the archive has no such entry.
pub(super) fn read_small(
    zip: &mut ZipArchive<File>,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, FileError> {
    let Some(index) = entry_index(zip, name) else {
        return Ok(None);
    };
    let mut entry = match zip.by_index(index) {
        Ok(e) => e,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(damaged(e)),
    };
    if entry.size() > max {
        return Err(FileError::ArchiveLimit(format!(
            "the workbook part `{name}` is larger than {} MB",
            max / (1024 * 1024)
        )));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    (&mut entry)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(damaged)?;
    Ok(Some(bytes))
}

/// The unpacked bytes of one entry, read from a file handle of its own.
pub(super) struct EntryStream {
    inner: Box<dyn Read + Send>,
    remaining: u64,
}

impl Read for EntryStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a part of the workbook unpacks to more than its declared size",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Opens a streaming reader over entry `name`; `None` if the archive has no such entry.
pub(super) fn stream_entry(
    zip: &mut ZipArchive<File>,
    path: &Path,
    name: &str,
) -> Result<Option<EntryStream>, FileError> {
    let Some(index) = entry_index(zip, name) else {
        return Ok(None);
    };
    let (start, compressed, size, method) = {
        let raw = zip.by_index_raw(index).map_err(damaged)?;
        let start = raw
            .data_start()
            .ok_or_else(|| damaged("an entry has no data"))?;
        (start, raw.compressed_size(), raw.size(), raw.compression())
    };
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let raw = BufReader::with_capacity(64 * 1024, file).take(compressed);
    let inner: Box<dyn Read + Send> = match method {
        zip::CompressionMethod::Stored => Box::new(raw),
        zip::CompressionMethod::Deflated => Box::new(flate2::bufread::DeflateDecoder::new(raw)),
        other => {
            return Err(FileError::UnsupportedFormat(format!(
                "the workbook uses the zip compression method {other:?}; save it again with \
                 Excel or LibreOffice"
            )));
        }
    };
    // A large part (a sheet, the shared strings) is unpacked on a thread of its own, a few
    // chunks ahead of the XML parser that reads it.
    let inner = if compressed >= INFLATE_AHEAD_MIN {
        Box::new(InflateAhead::spawn(inner)?)
    } else {
        inner
    };
    Ok(Some(EntryStream {
        inner,
        remaining: size,
    }))
}

/// Smallest compressed part unpacked on a thread of its own.
const INFLATE_AHEAD_MIN: u64 = 1024 * 1024;
/// Bytes per unpacked chunk, and chunks unpacked ahead of the reader: at most 1 MiB per part.
const INFLATE_CHUNK: usize = 256 * 1024;
const INFLATE_AHEAD: usize = 3;

/// The bytes of a reader, produced by a thread a few chunks ahead. The thread ends at the end
/// of the data, on an error (handed on to the reader), or when the reader is dropped.
struct InflateAhead {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl InflateAhead {
    fn spawn(mut inner: Box<dyn Read + Send>) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(INFLATE_AHEAD);
        std::thread::Builder::new()
            .name("sluice-inflate".into())
            .spawn(move || {
                loop {
                    let mut chunk = vec![0; INFLATE_CHUNK];
                    let mut len = 0;
                    let result = loop {
                        match inner.read(&mut chunk[len..]) {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                len += n;
                                if len == chunk.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    chunk.truncate(len);
                    // An empty chunk is the end of the data.
                    let last = len == 0 || result.is_err();
                    let sent = match result {
                        Err(e) if len == 0 => tx.send(Err(e)),
                        Err(e) => tx.send(Ok(chunk)).and_then(|()| tx.send(Err(e))),
                        Ok(()) => tx.send(Ok(chunk)),
                    };
                    if sent.is_err() || last {
                        return;
                    }
                }
            })?;
        Ok(Self {
            rx,
            chunk: Vec::new(),
            pos: 0,
            done: false,
        })
    }
}

impl Read for InflateAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.done = chunk.is_empty();
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => return Err(io::Error::other("the workbook's unpacking stopped")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Marks the I/O error [`MarkupGuard`] raises, so that readers can report it as a cell that
/// is too large.
#[derive(Debug)]
pub(super) struct Oversized;

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a cell or tag is larger than {MAX_MARKUP_RUN} bytes")
    }
}

impl std::error::Error for Oversized {}

/// Fails the read when more than [`MAX_MARKUP_RUN`] bytes pass without a `<` or `>`.
pub(super) struct MarkupGuard<R> {
    inner: R,
    run: usize,
}

impl<R: Read> MarkupGuard<R> {
    pub(super) fn new(inner: R) -> Self {
        Self { inner, run: 0 }
    }
}

impl<R: Read> Read for MarkupGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = &buf[..n];
        match memchr::memchr2(b'<', b'>', chunk) {
            None => self.run += n,
            Some(first) => {
                self.run += first;
                if self.run <= MAX_MARKUP_RUN {
                    // Runs inside one chunk are shorter than the chunk; only the tail carries on.
                    let last = memchr::memrchr2(b'<', b'>', chunk).unwrap_or(first);
                    self.run = n - last - 1;
                }
            }
        }
        if self.run > MAX_MARKUP_RUN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, Oversized));
        }
        Ok(n)
    }
}

/// Turns an I/O error met while unpacking into the file error users see.
pub(super) fn unpack_error(e: &io::Error) -> FileError {
    if e.get_ref().is_some_and(|inner| inner.is::<Oversized>()) {
        return FileError::CellTooLarge(format!(
            "a cell of the workbook holds more than {} bytes; that is not a spreadsheet value sluice accepts",
            MAX_CELL_BYTES
        ));
    }
    FileError::Unreadable(format!("the workbook's data is damaged ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data`, then fails.
    struct FailsAfter(io::Cursor<Vec<u8>>);

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt deflate stream",
                )),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn inflate_ahead_hands_on_every_byte_then_the_end_or_the_error() {
        let data: Vec<u8> = (0..(3 * INFLATE_CHUNK + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut out = Vec::new();
        InflateAhead::spawn(Box::new(io::Cursor::new(data.clone())))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);

        let mut ahead =
            InflateAhead::spawn(Box::new(FailsAfter(io::Cursor::new(data.clone())))).unwrap();
        let mut out = Vec::new();
        let err = ahead.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(out, data, "the bytes before the error arrive first");
        // A reader dropped early ends the thread (it would otherwise block on a full channel).
        let endless = io::repeat(b'x');
        let mut ahead = InflateAhead::spawn(Box::new(endless)).unwrap();
        let mut first = [0u8; 10];
        ahead.read_exact(&mut first).unwrap();
        drop(ahead);
    }

    #[test]
    fn guard_refuses_long_runs_without_markup() {
        let ok: Vec<u8> = b"<a>"
            .iter()
            .chain(&vec![b'x'; 1000])
            .chain(b"</a>")
            .copied()
            .collect();
        let mut out = Vec::new();
        MarkupGuard::new(&ok[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, ok);
        let long = vec![b'x'; MAX_MARKUP_RUN + 10];
        let err = std::io::copy(
            &mut MarkupGuard::new(BufReader::with_capacity(8192, &long[..])),
            &mut std::io::sink(),
        )
        .unwrap_err();
        assert!(matches!(unpack_error(&err), FileError::CellTooLarge(_)));
    }
}
