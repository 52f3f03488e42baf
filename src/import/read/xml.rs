//! A streaming XML tokenizer for the two large parts of a workbook: the worksheets and the
//! shared-string table (the small parts — workbook, relationships, styles — go through
//! `quick-xml`).
//!
//! It yields tags with their local name (any namespace prefix dropped) and raw attribute text,
//! character data and CDATA sections, and skips comments and processing instructions; a DTD is
//! refused (no entity expansion), as is an undefined entity. Tags borrow straight from one
//! buffer that is refilled as the part is unpacked, so a cell costs no copy and no allocation;
//! measured on a 700k-row sheet this reads 2–3× faster than `quick-xml`'s event reader, which
//! was the critical path of an XLSX import (BENCHMARKS.md, issue 17). It checks what the readers
//! rely on, not all of XML's well-formedness (end tags are not matched against start tags,
//! which a spreadsheet reader does not need). A token may not exceed [`MAX_TOKEN`] bytes;
//! [`super::archive::MarkupGuard`] under it bounds text runs the same way.

use std::io::{self, Read};

use super::FileError;
use super::archive::unpack_error;

/// Largest tag, text node, comment or CDATA section (twice the markup guard's run).
pub(super) const MAX_TOKEN: usize = 8 * super::MAX_CELL_BYTES;

/// Bytes read from the part at a time.
const CHUNK: usize = 256 * 1024;

/// One piece of the document.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Token<'a> {
    /// `<name …>`, or `<name …/>` when `empty`: the local name and the raw attribute text.
    Start {
        name: &'a [u8],
        attrs: &'a [u8],
        empty: bool,
    },
    /// `</name>`: the local name.
    End {
        name: &'a [u8],
    },
    /// Character data as written (references not yet resolved: [`push_text`]).
    Text(&'a [u8]),
    /// The content of a CDATA section.
    CData(&'a [u8]),
    Eof,
}

/// What was found at the read position, as offsets into the buffer.
enum Found {
    Start {
        name: (usize, usize),
        attrs: (usize, usize),
        empty: bool,
    },
    End(usize, usize),
    Text(usize, usize),
    CData(usize, usize),
    Skip,
    Incomplete,
}

pub(super) struct Tokenizer<R> {
    src: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
}

fn malformed(what: &str) -> FileError {
    FileError::Unreadable(format!("the workbook's XML is malformed ({what})"))
}

pub(super) fn refuse_dtd() -> FileError {
    FileError::Unreadable(
        "the workbook declares a DTD (XML entities), which sluice refuses to expand".into(),
    )
}

pub(super) fn too_large() -> FileError {
    FileError::CellTooLarge(format!(
        "a cell of the workbook holds more than {} bytes; that is not a spreadsheet value sluice \
         accepts",
        super::MAX_CELL_BYTES
    ))
}

/// The local part of a qualified name (`x:row` → `row`).
pub(super) fn local(name: &[u8]) -> &[u8] {
    // Names are a few bytes: a plain loop beats a vectorised search's set-up.
    match name.iter().rposition(|&b| b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl<R: Read> Tokenizer<R> {
    pub(super) fn new(src: R) -> Self {
        Self {
            src,
            buf: vec![0; CHUNK],
            pos: 0,
            len: 0,
            eof: false,
        }
    }

    /// Reads more of the part behind the unread bytes (moved to the front; the buffer doubles
    /// when they fill it). `false` at the end of the part.
    fn fill(&mut self) -> Result<bool, FileError> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            if self.buf.len() >= MAX_TOKEN {
                return Err(too_large());
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.len += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(unpack_error(&e)),
            }
        }
    }

    /// The next token.
    pub(super) fn next_token(&mut self) -> Result<Token<'_>, FileError> {
        loop {
            if self.pos == self.len && !self.fill()? {
                return Ok(Token::Eof);
            }
            let found = self.find()?;
            let token = match found {
                Found::Incomplete => {
                    if !self.fill()? {
                        if self.buf[self.pos] != b'<' {
                            // Text up to the end of the part.
                            let start = self.pos;
                            self.pos = self.len;
                            return Ok(Token::Text(&self.buf[start..self.len]));
                        }
                        return Err(malformed("the part ends inside a tag"));
                    }
                    continue;
                }
                Found::Skip => continue,
                found => found,
            };
            let b = &self.buf;
            return Ok(match token {
                Found::Start { name, attrs, empty } => Token::Start {
                    name: local(&b[name.0..name.1]),
                    attrs: &b[attrs.0..attrs.1],
                    empty,
                },
                Found::End(s, e) => Token::End {
                    name: local(&b[s..e]),
                },
                Found::Text(s, e) => Token::Text(&b[s..e]),
                Found::CData(s, e) => Token::CData(&b[s..e]),
                Found::Skip | Found::Incomplete => unreachable!("handled above"),
            });
        }
    }

    /// Finds the token at `pos` and moves past it, or says it is not all in the buffer yet.
    fn find(&mut self) -> Result<Found, FileError> {
        let start = self.pos;
        let rest = &self.buf[start..self.len];
        if rest[0] != b'<' {
            return Ok(match memchr::memchr(b'<', rest) {
                Some(i) => {
                    self.pos += i;
                    Found::Text(start, start + i)
                }
                None => Found::Incomplete,
            });
        }
        let Some(&second) = rest.get(1) else {
            return Ok(Found::Incomplete);
        };
        match second {
            b'/' => {
                let Some(gt) = memchr::memchr(b'>', rest) else {
                    return Ok(Found::Incomplete);
                };
                let mut end = gt;
                while end > 2 && is_space(rest[end - 1]) {
                    end -= 1;
                }
                self.pos += gt + 1;
                Ok(Found::End(start + 2, start + end))
            }
            b'?' => Ok(match memchr::memmem::find(&rest[2..], b"?>") {
                Some(i) => {
                    self.pos += 2 + i + 2;
                    Found::Skip
                }
                None => Found::Incomplete,
            }),
            b'!' => {
                if rest.starts_with(b"<!--") {
                    Ok(match memchr::memmem::find(&rest[4..], b"-->") {
                        Some(i) => {
                            self.pos += 4 + i + 3;
                            Found::Skip
                        }
                        None => Found::Incomplete,
                    })
                } else if rest.starts_with(b"<![CDATA[") {
                    Ok(match memchr::memmem::find(&rest[9..], b"]]>") {
                        Some(i) => {
                            self.pos += 9 + i + 3;
                            Found::CData(start + 9, start + 9 + i)
                        }
                        None => Found::Incomplete,
                    })
                } else if rest.len() >= 9 && rest[2..9].eq_ignore_ascii_case(b"DOCTYPE") {
                    Err(refuse_dtd())
                } else if rest.len() < 9 && !self.eof {
                    // Not yet long enough to tell a comment, CDATA and a DTD apart.
                    Ok(Found::Incomplete)
                } else {
                    Err(malformed("an unknown `<!` declaration"))
                }
            }
            _ => {
                // A start tag: up to the first `>` outside a quoted attribute value.
                let mut i = 1;
                let gt = loop {
                    match memchr::memchr3(b'>', b'"', b'\'', &rest[i..]) {
                        None => return Ok(Found::Incomplete),
                        Some(j) if rest[i + j] == b'>' => break i + j,
                        Some(j) => {
                            let quote = rest[i + j];
                            match memchr::memchr(quote, &rest[i + j + 1..]) {
                                Some(k) => i += j + 1 + k + 1,
                                None => return Ok(Found::Incomplete),
                            }
                        }
                    }
                };
                let empty = rest[gt - 1] == b'/' && gt > 1;
                let inner_end = if empty { gt - 1 } else { gt };
                let name_end = rest[1..inner_end]
                    .iter()
                    .position(|&b| is_space(b))
                    .map_or(inner_end, |p| p + 1);
                if name_end == 1 {
                    return Err(malformed("a tag without a name"));
                }
                self.pos += gt + 1;
                Ok(Found::Start {
                    name: (start + 1, start + name_end),
                    attrs: (start + name_end, start + inner_end),
                    empty,
                })
            }
        }
    }
}

/// The raw value of attribute `name` (local name) in a tag's attribute text.
pub(super) fn attr<'a>(attrs: &'a [u8], name: &[u8]) -> Result<Option<&'a [u8]>, FileError> {
    let mut it = Attrs { rest: attrs };
    while let Some((key, value)) = it.next_attr()? {
        if local(key) == name {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// An attribute: its qualified name and raw value.
pub(super) type Attr<'a> = (&'a [u8], &'a [u8]);

/// The attributes of a tag, in order.
pub(super) struct Attrs<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub(super) fn next_attr(&mut self) -> Result<Option<Attr<'a>>, FileError> {
        let rest = self.rest;
        let Some(start) = rest.iter().position(|&b| !is_space(b)) else {
            self.rest = &[];
            return Ok(None);
        };
        let Some(eq) = rest[start..]
            .iter()
            .position(|&b| b == b'=')
            .map(|i| start + i)
        else {
            return Err(malformed("an attribute without a value"));
        };
        let mut key_end = eq;
        while key_end > start && is_space(rest[key_end - 1]) {
            key_end -= 1;
        }
        let Some(q) = rest[eq + 1..]
            .iter()
            .position(|&b| !is_space(b))
            .map(|i| eq + 1 + i)
        else {
            return Err(malformed("an attribute without a value"));
        };
        let quote = rest[q];
        if quote != b'"' && quote != b'\'' {
            return Err(malformed("an unquoted attribute value"));
        }
        let Some(close) = rest[q + 1..]
            .iter()
            .position(|&b| b == quote)
            .map(|i| q + 1 + i)
        else {
            return Err(malformed("an unterminated attribute value"));
        };
        self.rest = &rest[close + 1..];
        Ok(Some((&rest[start..key_end], &rest[q + 1..close])))
    }
}

/// Appends character data with its references resolved and its line ends normalised as XML 1.0
/// does (`\r\n` and a lone `\r` become `\n`). Fails on an undefined entity and on bytes that are
/// not UTF-8.
pub(super) fn push_text(raw: &[u8], out: &mut Vec<u8>) -> Result<(), FileError> {
    let from = out.len();
    if raw.len() < 32 && !raw.iter().any(|&b| b == b'&' || b == b'\r') {
        // Most values: short and plain.
        out.extend_from_slice(raw);
        return utf8(&out[from..]);
    }
    let mut rest = raw;
    while let Some(i) = memchr::memchr2(b'&', b'\r', rest) {
        out.extend_from_slice(&rest[..i]);
        if rest[i] == b'\r' {
            out.push(b'\n');
            rest = &rest[i + 1..];
            if rest.first() == Some(&b'\n') {
                rest = &rest[1..];
            }
            continue;
        }
        let Some(semi) = memchr::memchr(b';', &rest[i..]).map(|j| i + j) else {
            return Err(malformed("an `&` that starts no reference"));
        };
        push_reference(&rest[i + 1..semi], out)?;
        rest = &rest[semi + 1..];
    }
    out.extend_from_slice(rest);
    utf8(&out[from..])
}

/// Appends a CDATA section's content with its line ends normalised.
pub(super) fn push_cdata(raw: &[u8], out: &mut Vec<u8>) -> Result<(), FileError> {
    let from = out.len();
    let mut rest = raw;
    while let Some(i) = memchr::memchr(b'\r', rest) {
        out.extend_from_slice(&rest[..i]);
        out.push(b'\n');
        rest = &rest[i + 1..];
        if rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
    }
    out.extend_from_slice(rest);
    utf8(&out[from..])
}

fn utf8(bytes: &[u8]) -> Result<(), FileError> {
    if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
        Ok(())
    } else {
        Err(malformed("text that is not UTF-8"))
    }
}

/// Appends the text of a reference's name (between `&` and `;`): one of XML's five entities
/// or a character reference; nothing else exists in a workbook.
fn push_reference(name: &[u8], out: &mut Vec<u8>) -> Result<(), FileError> {
    let c = match name {
        b"amp" => '&',
        b"lt" => '<',
        b"gt" => '>',
        b"quot" => '"',
        b"apos" => '\'',
        [b'#', b'x' | b'X', hex @ ..] => char_ref(hex, 16)?,
        [b'#', dec @ ..] => char_ref(dec, 10)?,
        other => {
            return Err(FileError::Unreadable(format!(
                "the workbook uses the undefined XML entity `&{};`",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let mut tmp = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
    Ok(())
}

fn char_ref(digits: &[u8], radix: u32) -> Result<char, FileError> {
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|d| u32::from_str_radix(d, radix).ok())
        .and_then(char::from_u32)
        .filter(|&c| c != '\0')
        .ok_or_else(|| malformed("a character reference to no character"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields its bytes a few at a time, so tokens straddle reads.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn tokens(xml: &[u8], step: usize) -> Result<Vec<String>, FileError> {
        let mut t = Tokenizer::new(Trickle(xml, step));
        let mut out = Vec::new();
        loop {
            let s = match t.next_token()? {
                Token::Start { name, attrs, empty } => format!(
                    "<{}|{}{}>",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(attrs).trim(),
                    if empty { "/" } else { "" }
                ),
                Token::End { name } => format!("</{}>", String::from_utf8_lossy(name)),
                Token::Text(raw) => {
                    let mut v = Vec::new();
                    push_text(raw, &mut v)?;
                    format!("'{}'", String::from_utf8_lossy(&v))
                }
                Token::CData(raw) => format!("[{}]", String::from_utf8_lossy(raw)),
                Token::Eof => return Ok(out),
            };
            out.push(s);
        }
    }

    #[test]
    fn tags_text_and_references_at_any_read_size() {
        let xml = br#"<?xml version="1.0"?><!-- a > comment --><x:row r="2" a='1>2'><c r="A2" t="s"/><v>a &amp; b&#x41;&#66;&lt;</v><t><![CDATA[<raw>]]></t></x:row >tail"#;
        let want = [
            "<row|r=\"2\" a='1>2'>",
            "<c|r=\"A2\" t=\"s\"/>",
            "<v|>",
            "'a & bAB<'",
            "</v>",
            "<t|>",
            "[<raw>]",
            "</t>",
            "</row>",
            "'tail'",
        ];
        for step in [1, 2, 3, 7, 64, 100_000] {
            assert_eq!(tokens(xml, step).unwrap(), want, "read size {step}");
        }
    }

    #[test]
    fn line_ends_are_normalised_and_bad_input_refused() {
        assert_eq!(tokens(b"<t>a\r\nb\rc</t>", 3).unwrap()[1], "'a\nb\nc'");
        for bad in [
            &b"<!DOCTYPE x [<!ENTITY e 'boom'>]><x/>"[..],
            b"<t>&bogus;</t>",
            b"<t>a & b</t>",
            b"<t>&#0;</t>",
            b"<t>\xff\xfe</t>",
            b"<row r=\"1\"",
            b"< r=\"1\">",
            b"<!ELEMENT x ANY>",
        ] {
            assert!(tokens(bad, 4).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn attributes_by_local_name() {
        let a = br#" r="B7"  x:t = 's' s="3""#;
        assert_eq!(attr(a, b"r").unwrap(), Some(&b"B7"[..]));
        assert_eq!(attr(a, b"t").unwrap(), Some(&b"s"[..]));
        assert_eq!(attr(a, b"s").unwrap(), Some(&b"3"[..]));
        assert_eq!(attr(a, b"z").unwrap(), None);
        assert!(attr(b" r=B7", b"r").is_err());
    }
}
