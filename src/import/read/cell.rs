//! Spreadsheet cell values as the text a person reads, shared by the spreadsheet readers.
//!
//! Numbers are IEEE floats in spreadsheets: 19.99 is stored as 19.989999999999998. A plain
//! integer is kept exactly as written (so 20-digit codes survive); any other number is written
//! in its shortest round-trip form (`19.99`), never in exponent notation, so the validator parses
//! it as an exact decimal and checks its scale. Date-formatted numbers become ISO dates
//! (`YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM:SS` when they carry a time) in the workbook's 1900 or 1904
//! date system.
//!
//! Times are one rule for every format ([`push_serial`], [`push_iso_duration`]): a time of day
//! without a date, and an elapsed time, are `HH:MM:SS` (24-hour, `.fff` only when the
//! milliseconds are not zero). A time of day never reads `24:00:00`: one that rounds up to the
//! end of the day is `00:00:00`, as Excel shows it. Elapsed times (`[h]:mm:ss`, and ODS time
//! cells, which are ISO durations whether they mean a time of day or not) count hours past 23
//! (`36:10:00`, and `24:00:00` for one that rounds up) and carry a sign (`-01:30:00`).

use std::io::Write;

use chrono::{Datelike, Duration, NaiveDate};

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
    if push_short_decimal(t, out) {
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

/// A decimal written without an exponent and with at most 15 significant digits reads into an
/// f64 and back unchanged but for its leading and trailing zeros, so it is written as that
/// shortest form directly (what [`push_f64`] would write), without the float round trip.
fn push_short_decimal(t: &str, out: &mut Vec<u8>) -> bool {
    let (negative, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t),
    };
    let Some((int, frac)) = body.split_once('.') else {
        return false;
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return false;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let significant = if int.is_empty() {
        frac.trim_start_matches('0').len()
    } else {
        int.len() + frac.len()
    };
    if significant > 15 {
        return false;
    }
    if int.is_empty() && frac.is_empty() {
        out.push(b'0');
        return true;
    }
    if negative {
        out.push(b'-');
    }
    if int.is_empty() {
        out.push(b'0');
    } else {
        out.extend_from_slice(int.as_bytes());
    }
    if !frac.is_empty() {
        out.push(b'.');
        out.extend_from_slice(frac.as_bytes());
    }
    true
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

/// What a cell's number format makes of its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NumberFormat {
    /// A plain number (`General`, `0.00`, currency, percent…).
    #[default]
    Plain,
    /// A calendar date, with or without a time of day (`yyyy-mm-dd`, `m/d/yy h:mm`).
    Date,
    /// A time of day without a date (`h:mm`, `h:mm:ss AM/PM`, `mm:ss`).
    TimeOfDay,
    /// An elapsed time (`[h]:mm:ss`, `[mm]:ss`): hours may pass 23.
    Elapsed,
}

/// Appends the text of a number shown with a date or time `format`; `false` when the format is
/// plain or the serial is outside Excel's dates (the caller then writes it as a number).
///
/// Day 0 of the 1900 system (`1900-01-00`) is no real date, so any date or time serial below 1
/// there is a time of day; so is a serial below 1 under a time-of-day format in either system.
/// A time-of-day format on a serial of 1 or more carries a date, kept as a date-time.
pub fn push_serial(serial: f64, format: NumberFormat, date1904: bool, out: &mut Vec<u8>) -> bool {
    if !serial.is_finite() {
        return false;
    }
    let time_only = (0.0..1.0).contains(&serial)
        && (format == NumberFormat::TimeOfDay || (format == NumberFormat::Date && !date1904));
    match format {
        NumberFormat::Plain => false,
        NumberFormat::Elapsed if serial.abs() < 2_958_466.0 => {
            push_clock((serial * 86_400_000.0).round() as i64, out);
            true
        }
        NumberFormat::Elapsed => false,
        _ if time_only => {
            push_clock((serial * 86_400_000.0).round() as i64 % 86_400_000, out);
            true
        }
        NumberFormat::Date | NumberFormat::TimeOfDay => push_excel_date(serial, date1904, out),
    }
}

/// Appends `ms` milliseconds as `HH:MM:SS[.fff]`, hours unbounded, `-` before a negative time.
fn push_clock(ms: i64, out: &mut Vec<u8>) {
    if ms < 0 {
        out.push(b'-');
    }
    let ms = ms.unsigned_abs();
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let _ = write!(out, "{h:02}:{m:02}:{s:02}");
    if milli > 0 {
        let _ = write!(out, ".{milli:03}");
    }
}

/// Appends an ISO 8601 duration (ODS time cells: `PT10H10M10S`, `P1DT2H`, `-PT1H0M0.5S`) as
/// `HH:MM:SS[.fff]`; `false`, writing nothing, when it is not one.
pub fn push_iso_duration(raw: &str, out: &mut Vec<u8>) -> bool {
    match iso_duration_ms(raw.trim()) {
        Some(ms) => {
            push_clock(ms, out);
            true
        }
        None => false,
    }
}

fn iso_duration_ms(s: &str) -> Option<i64> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let s = s.strip_prefix(['P', 'p'])?;
    let (days, time) = match s.find(['T', 't']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut total = 0.0_f64;
    let mut any = false;
    let mut add = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut rest = part;
        let mut unit = units.iter();
        while !rest.is_empty() {
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
            let number: f64 = rest[..end].parse().ok()?;
            let letter = rest[end..].chars().next()?.to_ascii_uppercase();
            // Units in order, each at most once.
            let (_, ms) = unit.by_ref().find(|(u, _)| *u == letter)?;
            total += number * ms;
            any = true;
            rest = &rest[end + 1..];
        }
        Some(())
    };
    add(days, &[('D', 86_400_000.0)])?;
    if let Some(time) = time {
        if time.is_empty() {
            return None;
        }
        add(time, &[('H', 3_600_000.0), ('M', 60_000.0), ('S', 1000.0)])?;
    }
    if !any || !total.is_finite() || total > 1e15 {
        return None;
    }
    let ms = total.round() as i64;
    Some(if negative { -ms } else { ms })
}

/// Appends the ISO date (and time, when there is one) of an Excel date serial; `false` when the
/// serial is outside Excel's dates (before its epoch or after 9999-12-31).
fn push_excel_date(serial: f64, date1904: bool, out: &mut Vec<u8>) -> bool {
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
    push_ymd(date.year(), date.month(), date.day(), out);
    push_time(ms, out)
}

/// Appends `YYYY-MM-DD` (years 0–9999, as these dates are) without going through a formatter:
/// a date column of a large sheet spent more time in `chrono`'s `format` than in its parse.
fn push_ymd(year: i32, month: u32, day: u32, out: &mut Vec<u8>) {
    let digit = |n: u32| b'0' + (n % 10) as u8;
    let y = year.clamp(0, 9999) as u32;
    out.extend_from_slice(&[
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(month / 10),
        digit(month),
        b'-',
        digit(day / 10),
        digit(day),
    ]);
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

/// What a number format shows: built-in ids (ECMA-376 18.8.30), or a format code's first
/// section (day or year parts, or months without hours and seconds, are dates; hours, minutes
/// with hours or seconds, and seconds are times; `[h]`, `[mm]`, `[ss]` are elapsed times).
pub fn number_format(id: u32, code: Option<&str>) -> NumberFormat {
    if let Some(code) = code {
        return code_format(code);
    }
    match id {
        14..=17 | 22 | 27..=36 | 50..=58 => NumberFormat::Date,
        18..=21 | 45 | 47 => NumberFormat::TimeOfDay,
        46 => NumberFormat::Elapsed,
        _ => NumberFormat::Plain,
    }
}

fn code_format(code: &str) -> NumberFormat {
    let mut plain = String::with_capacity(code.len());
    let mut elapsed = false;
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
                let mut inside = String::new();
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                    inside.push(d.to_ascii_lowercase());
                }
                let unit = inside.chars().next();
                elapsed |= matches!(unit, Some('h' | 'm' | 's'))
                    && inside.chars().all(|d| Some(d) == unit);
            }
            '\\' | '_' | '*' => {
                chars.next();
            }
            c => plain.push(c.to_ascii_lowercase()),
        }
    }
    // AM/PM markers are not months.
    let plain = plain.replace("am/pm", "").replace("a/p", "");
    if plain.contains('y') || plain.contains('d') {
        NumberFormat::Date
    } else if elapsed {
        NumberFormat::Elapsed
    } else if plain.contains('h') || plain.contains('s') {
        NumberFormat::TimeOfDay
    } else if plain.contains('m') {
        NumberFormat::Date
    } else {
        NumberFormat::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_decimals_are_written_as_their_float_would_be() {
        let cases = [
            "4791.60",
            "0.10",
            "00.10",
            "-0.50",
            "1.000",
            "-0.000",
            "0.0",
            ".5",
            "5.",
            "-.25",
            "123456789012345.0",
            "0.000000000000001",
            "1234567890.12345",
            "9007199254740993.5",
            "0.1234567890123456",
            "-12.3400",
            "7.07",
        ];
        for t in cases {
            let mut fast = Vec::new();
            let mut slow = Vec::new();
            let v: f64 = t.parse().unwrap();
            push_f64(v, &mut slow);
            if push_short_decimal(t, &mut fast) {
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    String::from_utf8(slow).unwrap(),
                    "{t}"
                );
            }
        }
        assert!(!push_short_decimal("1e5", &mut Vec::new()));
        assert!(!push_short_decimal("1.2.3", &mut Vec::new()));
        assert!(!push_short_decimal(".", &mut Vec::new()));
        let mut out = Vec::new();
        push_ymd(2024, 1, 5, &mut out);
        push_ymd(905, 12, 31, &mut out);
        assert_eq!(out, b"2024-01-050905-12-31");
    }

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

    fn serial(v: f64, format: NumberFormat, date1904: bool) -> String {
        let mut out = Vec::new();
        assert!(push_serial(v, format, date1904, &mut out), "{v}");
        String::from_utf8(out).unwrap()
    }

    fn duration(raw: &str) -> String {
        let mut out = Vec::new();
        assert!(push_iso_duration(raw, &mut out), "{raw}");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_of_day_read_as_clocks() {
        use NumberFormat::*;
        // 06:34 as Excel stores it, under a time format and under a date format (day 0).
        assert_eq!(serial(0.2736111111111111, TimeOfDay, false), "06:34:00");
        assert_eq!(serial(0.2736111111111111, Date, false), "06:34:00");
        assert_eq!(serial(0.2736111111111111, TimeOfDay, true), "06:34:00");
        // In the 1904 system day 0 is a real date, 1904-01-01.
        assert_eq!(serial(0.5, Date, true), "1904-01-01T12:00:00");
        assert_eq!(serial(0.0, TimeOfDay, false), "00:00:00");
        assert_eq!(serial(0.0, Date, false), "00:00:00");
        // Milliseconds only when not zero, rounded like dates.
        assert_eq!(
            serial(1.0 / 24.0 + 0.5 / 86_400.0, TimeOfDay, false),
            "01:00:00.500"
        );
        assert_eq!(
            serial(0.5 + 0.0004 / 86_400.0, TimeOfDay, false),
            "12:00:00"
        );
        // A time of day that rounds up to the end of the day is midnight, never 24:00:00.
        assert_eq!(serial(0.999_999_999, TimeOfDay, false), "00:00:00");
        assert_eq!(serial(0.999_999_999, Date, false), "00:00:00");
        // A time format on a serial of 1 or more carries a date: nothing is dropped.
        assert_eq!(serial(45306.25, TimeOfDay, false), "2024-01-15T06:00:00");
        assert_eq!(serial(45306.0, TimeOfDay, false), "2024-01-15");
        // Dates are unchanged.
        assert_eq!(serial(45306.0, Date, false), "2024-01-15");
        assert_eq!(serial(45306.5, Date, false), "2024-01-15T12:00:00");
        assert_eq!(serial(43845.0, Date, true), "2024-01-16");
        // Outside Excel's dates, and plain numbers, are the caller's to write as numbers.
        assert!(!push_serial(-0.25, TimeOfDay, false, &mut Vec::new()));
        assert!(!push_serial(-1.0, Date, false, &mut Vec::new()));
        assert!(!push_serial(0.25, Plain, false, &mut Vec::new()));
        assert!(!push_serial(f64::NAN, TimeOfDay, false, &mut Vec::new()));
    }

    #[test]
    fn elapsed_times_pass_23_hours_and_keep_their_sign() {
        use NumberFormat::Elapsed;
        assert_eq!(serial(1.5069444444444444, Elapsed, false), "36:10:00");
        assert_eq!(serial(0.999_999_999, Elapsed, false), "24:00:00");
        assert_eq!(serial(-0.0625, Elapsed, false), "-01:30:00");
        assert_eq!(serial(0.0, Elapsed, true), "00:00:00");
        assert_eq!(serial(2.0 / 86_400_000.0, Elapsed, false), "00:00:00.002");
        assert!(!push_serial(3e6, Elapsed, false, &mut Vec::new()));
    }

    #[test]
    fn iso_durations_from_ods() {
        assert_eq!(duration("PT10H10M10S"), "10:10:10");
        assert_eq!(duration("PT06H34M00S"), "06:34:00");
        assert_eq!(duration("PT36H10M"), "36:10:00");
        assert_eq!(duration("PT1H0M0.5S"), "01:00:00.500");
        assert_eq!(duration("P1DT2H"), "26:00:00");
        assert_eq!(duration("-PT1H30M"), "-01:30:00");
        assert_eq!(duration("PT23H59M59.9996S"), "24:00:00");
        assert_eq!(duration(" PT45S "), "00:00:45");
        for bad in [
            "", "P", "PT", "T10H", "10:10:10", "PT10X", "PT10M10H", "PT1H1H", "PTH", "P1H",
        ] {
            let mut out = Vec::new();
            assert!(!push_iso_duration(bad, &mut out), "{bad}");
            assert!(out.is_empty(), "{bad}");
        }
    }

    #[test]
    fn number_formats() {
        use NumberFormat::*;
        assert_eq!(number_format(14, None), Date);
        assert_eq!(number_format(22, None), Date);
        assert_eq!(number_format(2, None), Plain);
        assert_eq!(number_format(0, None), Plain);
        for id in [18, 19, 20, 21, 45, 47] {
            assert_eq!(number_format(id, None), TimeOfDay, "{id}");
        }
        assert_eq!(number_format(46, None), Elapsed);
        assert_eq!(number_format(164, None), Plain);
        let code = |c| number_format(164, Some(c));
        assert_eq!(code("yyyy-mm-dd"), Date);
        assert_eq!(code("dd/mm/yyyy hh:mm"), Date);
        assert_eq!(code("[$-409]mmm d, yyyy;@"), Date);
        assert_eq!(code("mmm"), Date);
        assert_eq!(code("h:mm:ss"), TimeOfDay);
        assert_eq!(code("h:mm"), TimeOfDay);
        assert_eq!(code("h:mm AM/PM"), TimeOfDay);
        assert_eq!(code("h:mm:ss A/P"), TimeOfDay);
        assert_eq!(code("[$-409]h:mm AM/PM"), TimeOfDay);
        assert_eq!(code("mm:ss"), TimeOfDay);
        assert_eq!(code("hh:mm:ss.000"), TimeOfDay);
        assert_eq!(code("[h]:mm:ss"), Elapsed);
        assert_eq!(code("[hh]:mm"), Elapsed);
        assert_eq!(code("[mm]:ss"), Elapsed);
        assert_eq!(code("[ss].00"), Elapsed);
        assert_eq!(code("0.00"), Plain);
        assert_eq!(code("\"days\" 0"), Plain);
        assert_eq!(code("[Red]#,##0.00"), Plain);
        assert_eq!(code("[hm]0"), Plain);
        assert_eq!(code("General"), Plain);
        assert_eq!(code("@"), Plain);
    }
}
