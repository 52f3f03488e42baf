//! Spreadsheet cell values as the text a person reads, shared by the spreadsheet readers.
//!
//! Numbers are IEEE floats in spreadsheets: 19.99 is stored as 19.989999999999998. A plain
//! integer is kept exactly as written (so 20-digit codes survive); any other number is written
//! in its shortest round-trip form (`19.99`), never in exponent notation, so the validator parses
//! it as an exact decimal and checks its scale. Date-formatted numbers become ISO dates
//! (`YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM:SS` when they carry a time) in the workbook's 1900 or 1904
//! date system.

use std::io::Write;

use chrono::{Duration, NaiveDate};

/// Appends the text of a numeric cell (`raw` as stored in the file); `false` if it is not a
/// finite number.
pub fn push_number(raw: &str, out: &mut Vec<u8>) -> bool {
    let t = raw.trim();
    let digits = t.strip_prefix('-').unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if digits.bytes().all(|b| b == b'0') {
            out.push(b'0');
        } else {
            out.extend_from_slice(t.as_bytes());
        }
        return true;
    }
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => {
            push_f64(v, out);
            true
        }
        _ => false,
    }
}

/// Appends a float in its shortest round-trip decimal form, without exponent.
pub fn push_f64(v: f64, out: &mut Vec<u8>) {
    if v == 0.0 {
        out.push(b'0');
    } else {
        // `Display` for f64 is the shortest representation that reads back to the same value.
        let _ = write!(out, "{v}");
    }
}

/// Appends the ISO date (and time, when there is one) of an Excel date serial; `false` when the
/// serial is outside Excel's dates (before its epoch or after 9999-12-31).
pub fn push_excel_date(serial: f64, date1904: bool, out: &mut Vec<u8>) -> bool {
    if !serial.is_finite() || !(0.0..2_958_466.0).contains(&serial) {
        return false;
    }
    let mut days = serial.floor() as i64;
    let mut ms = ((serial - days as f64) * 86_400_000.0).round() as i64;
    if ms >= 86_400_000 {
        days += 1;
        ms -= 86_400_000;
    }
    let base = if date1904 {
        NaiveDate::from_ymd_opt(1904, 1, 1)
    } else if days == 60 {
        // Excel's 1900 system counts a 29 February 1900 that never was; keep it visibly wrong
        // so a date field rejects it.
        let _ = write!(out, "1900-02-29");
        return push_time(ms, out);
    } else if days > 60 {
        NaiveDate::from_ymd_opt(1899, 12, 30)
    } else {
        NaiveDate::from_ymd_opt(1899, 12, 31)
    };
    let Some(date) = base.and_then(|b| b.checked_add_signed(Duration::days(days))) else {
        return false;
    };
    let _ = write!(out, "{}", date.format("%Y-%m-%d"));
    push_time(ms, out)
}

fn push_time(ms: i64, out: &mut Vec<u8>) -> bool {
    if ms > 0 {
        let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        let _ = write!(out, "T{h:02}:{m:02}:{s:02}");
        if milli > 0 {
            let _ = write!(out, ".{milli:03}");
        }
    }
    true
}

/// Appends an ISO date-time written by the workbook (`t="d"` cells, ODS dates), without a
/// midnight time part.
pub fn push_iso_date(raw: &str, out: &mut Vec<u8>) {
    let t = raw.trim();
    let t = t
        .strip_suffix("T00:00:00Z")
        .or_else(|| t.strip_suffix("T00:00:00"))
        .unwrap_or(t);
    out.extend_from_slice(t.as_bytes());
}

/// Whether a number format shows a date (built-in ids, or a format code with day or year
/// parts, or months without hours and seconds). Time-only formats are not dates.
pub fn is_date_format(id: u32, code: Option<&str>) -> bool {
    if let Some(code) = code {
        return is_date_code(code);
    }
    matches!(id, 14..=17 | 22 | 27..=36 | 50..=58)
}

fn is_date_code(code: &str) -> bool {
    let mut plain = String::with_capacity(code.len());
    let mut chars = code.chars();
    while let Some(c) = chars.next() {
        match c {
            ';' => break,
            '"' => {
                for d in chars.by_ref() {
                    if d == '"' {
                        break;
                    }
                }
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
            }
            '\\' | '_' | '*' => {
                chars.next();
            }
            c => plain.push(c.to_ascii_lowercase()),
        }
    }
    plain.contains('y')
        || plain.contains('d')
        || (plain.contains('m') && !plain.contains('h') && !plain.contains('s'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(raw: &str) -> String {
        let mut out = Vec::new();
        assert!(push_number(raw, &mut out), "{raw}");
        String::from_utf8(out).unwrap()
    }

    fn date(serial: f64, date1904: bool) -> String {
        let mut out = Vec::new();
        assert!(push_excel_date(serial, date1904, &mut out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_read_as_people_write_them() {
        assert_eq!(number("19.989999999999998"), "19.99");
        assert_eq!(number("0.1"), "0.1");
        assert_eq!(number("1234.5"), "1234.5");
        assert_eq!(number("1E-3"), "0.001");
        assert_eq!(number("1.5E+20"), "150000000000000000000");
        assert_eq!(number("-0"), "0");
        assert_eq!(number("12345678901234567890"), "12345678901234567890");
        assert_eq!(number("42"), "42");
        assert!(!push_number("NaN", &mut Vec::new()));
        assert!(!push_number("inf", &mut Vec::new()));
        assert!(!push_number("abc", &mut Vec::new()));
    }

    #[test]
    fn serials_in_both_date_systems() {
        assert_eq!(date(45306.0, false), "2024-01-15");
        assert_eq!(date(43831.0, false), "2020-01-01");
        assert_eq!(date(1.0, false), "1900-01-01");
        assert_eq!(date(59.0, false), "1900-02-28");
        assert_eq!(date(60.0, false), "1900-02-29");
        assert_eq!(date(61.0, false), "1900-03-01");
        assert_eq!(date(0.0, true), "1904-01-01");
        assert_eq!(date(43845.0, true), "2024-01-16");
        assert_eq!(date(45306.5, false), "2024-01-15T12:00:00");
        assert_eq!(date(45306.000011574, false), "2024-01-15T00:00:01");
        assert!(!push_excel_date(-1.0, false, &mut Vec::new()));
        assert!(!push_excel_date(3e6, false, &mut Vec::new()));
    }

    #[test]
    fn date_formats() {
        assert!(is_date_format(14, None));
        assert!(!is_date_format(2, None));
        assert!(!is_date_format(20, None));
        assert!(is_date_format(164, Some("yyyy-mm-dd")));
        assert!(is_date_format(164, Some("dd/mm/yyyy hh:mm")));
        assert!(is_date_format(164, Some("[$-409]mmm d, yyyy;@")));
        assert!(!is_date_format(164, Some("h:mm:ss")));
        assert!(!is_date_format(164, Some("0.00")));
        assert!(!is_date_format(164, Some("\"days\" 0")));
        assert!(!is_date_format(164, Some("[Red]#,##0.00")));
        assert!(!is_date_format(164, Some("General")));
    }
}
