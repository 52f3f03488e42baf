//! Validation: one record in, typed values or one [`RowError`] out.
//!
//! Each field type has one parser here. Empty cells are `Null`; a required field that is `Null`
//! is an error. Text is kept exactly as written; other types ignore surrounding whitespace.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat};
use rust_decimal::Decimal;

use super::RowError;
use crate::dataset::{Dataset, Field, FieldType};

/// A typed value bound for the dataset table.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Decimal(Decimal),
    Bool(bool),
    /// `YYYY-MM-DD`.
    Date(String),
    /// `YYYY-MM-DDTHH:MM:SS[.fff]` (no zone), or with `Z` when the input carried an offset.
    DateTime(String),
}

impl Value {
    /// The value as text, for history rows and error messages.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Text(s) | Value::Date(s) | Value::DateTime(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Decimal(d) => Some(d.to_string()),
            Value::Bool(b) => Some(if *b { "true" } else { "false" }.to_string()),
        }
    }
}

/// Validates records of one file against one dataset.
pub struct Validator<'a> {
    dataset: &'a Dataset,
    /// For each dataset field, the file column that feeds it.
    field_columns: Vec<Option<usize>>,
    /// Number of columns in the header.
    width: usize,
}

impl<'a> Validator<'a> {
    pub fn new(dataset: &'a Dataset, field_columns: Vec<Option<usize>>, width: usize) -> Self {
        Self {
            dataset,
            field_columns,
            width,
        }
    }

    /// Appends the record's values (one per dataset field) to `out`, or returns why the row is
    /// rejected (leaving `out` as it was). `cell_errors` lists the columns whose spreadsheet
    /// cells hold an error such as `#N/A`; such a cell in a mapped column rejects the row.
    pub fn validate(
        &self,
        record: &csv::ByteRecord,
        row: u64,
        cell_errors: &[usize],
        out: &mut Vec<Value>,
    ) -> Result<(), RowError> {
        let reject = |column: Option<&str>, value: Option<&[u8]>, message: String| RowError {
            row,
            column: column.map(str::to_string),
            value: value.map(|v| String::from_utf8_lossy(v).into_owned()),
            message,
            record: record
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect(),
            key: self.key_of(record),
        };
        if record.len() != self.width {
            return Err(reject(
                None,
                None,
                format!(
                    "wrong_field_count: the row has {} fields, the header has {}",
                    record.len(),
                    self.width
                ),
            ));
        }
        let start = out.len();
        for (field, column) in self.dataset.fields.iter().zip(&self.field_columns) {
            let raw = column.and_then(|c| record.get(c)).unwrap_or(b"");
            if column.is_some_and(|c| cell_errors.contains(&c)) {
                out.truncate(start);
                return Err(reject(
                    Some(&field.name),
                    Some(raw),
                    format!(
                        "{}: the cell holds the spreadsheet error {}",
                        field.name,
                        String::from_utf8_lossy(raw)
                    ),
                ));
            }
            let parsed = std::str::from_utf8(raw)
                .map_err(|_| "is not valid UTF-8 text".to_string())
                .and_then(|text| parse_field(field, text));
            match parsed {
                Ok(value) => out.push(value),
                Err(message) => {
                    out.truncate(start);
                    return Err(reject(
                        Some(&field.name),
                        Some(raw),
                        format!("{}: {message}", field.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Validator<'_> {
    /// The key of a rejected record, when every key field reads well and is not empty.
    fn key_of(&self, record: &csv::ByteRecord) -> Option<Box<[Value]>> {
        self.dataset
            .key
            .iter()
            .map(|&k| {
                let raw = record.get(self.field_columns[k]?)?;
                let text = std::str::from_utf8(raw).ok()?;
                match parse_field(&self.dataset.fields[k], text).ok()? {
                    Value::Null => None,
                    v => Some(v),
                }
            })
            .collect()
    }
}

/// Parses one cell for one field; the error is a sentence without the field name.
pub fn parse_field(field: &Field, text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return if field.required {
            Err("is required".into())
        } else {
            Ok(Value::Null)
        };
    }
    match field.ty {
        FieldType::Text => {
            if let Some(max) = field.max_len {
                let len = text.chars().count();
                if len > max {
                    return Err(format!(
                        "is {len} characters long; at most {max} are allowed"
                    ));
                }
            }
            Ok(Value::Text(text.to_string()))
        }
        FieldType::Integer => {
            let n = i64::from_str(trimmed.strip_prefix('+').unwrap_or(trimmed))
                .map_err(|_| format!("`{trimmed}` is not a whole number"))?;
            check_bounds(field, Decimal::from(n))?;
            Ok(Value::Int(n))
        }
        FieldType::Decimal => {
            let d = parse_decimal(trimmed)
                .ok_or_else(|| format!("`{trimmed}` is not a decimal number"))?;
            if let Some(scale) = field.scale
                && d.scale() > scale
            {
                return Err(format!("`{trimmed}` has more than {scale} decimal places"));
            }
            check_bounds(field, d)?;
            Ok(Value::Decimal(d))
        }
        FieldType::Boolean => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Ok(Value::Bool(true)),
            "false" | "f" | "no" | "n" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!(
                "`{trimmed}` is not a boolean (true/false, yes/no, 1/0)"
            )),
        },
        FieldType::Date => parse_date(field, trimmed).map(Value::Date),
        FieldType::Datetime => parse_datetime(field, trimmed).map(Value::DateTime),
    }
}

/// Plain decimal notation only: optional sign, digits, optional point and digits.
fn parse_decimal(s: &str) -> Option<Decimal> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let mut parts = digits.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let plain = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let ok =
        plain(int) && frac.is_none_or(plain) && !(int.is_empty() && frac.is_none_or(str::is_empty));
    if !ok {
        return None;
    }
    Decimal::from_str_exact(s.strip_prefix('+').unwrap_or(s)).ok()
}

fn check_bounds(field: &Field, v: Decimal) -> Result<(), String> {
    if let Some(min) = field.min
        && v < min
    {
        return Err(format!("{v} is below the minimum {min}"));
    }
    if let Some(max) = field.max
        && v > max
    {
        return Err(format!("{v} is above the maximum {max}"));
    }
    Ok(())
}

/// Whether `s` is `YYYY-MM-DD` (digits only) naming a real calendar date: then it is already
/// the canonical text chrono's `%Y-%m-%d` would give. Checked by hand: chrono's format-string
/// parsing and formatting were a tenth of the reader's time on a file with a date column.
fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    match (number(&b[0..4]), number(&b[5..7]), number(&b[8..10])) {
        (Some(y), Some(m), Some(d)) => NaiveDate::from_ymd_opt(y as i32, m, d).is_some(),
        _ => false,
    }
}

fn parse_date(field: &Field, s: &str) -> Result<String, String> {
    if is_iso_date(s) {
        return Ok(s.to_string());
    }
    let iso = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|_| s.len() == 10);
    let date = iso.or_else(|| {
        field
            .formats
            .iter()
            .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
    });
    match date {
        Some(d) => Ok(d.format("%Y-%m-%d").to_string()),
        None if is_clock(s) => Err(format!(
            "`{s}` is a time of day without a date; a date (YYYY-MM-DD) is needed"
        )),
        None if field.formats.is_empty() => Err(format!("`{s}` is not a date (YYYY-MM-DD)")),
        None => Err(format!(
            "`{s}` is not a date (YYYY-MM-DD or {})",
            field.formats.join(", ")
        )),
    }
}

fn parse_datetime(field: &Field, s: &str) -> Result<String, String> {
    // A date alone (a spreadsheet date cell without a time) is midnight.
    if is_iso_date(s) {
        return Ok(format!("{s}T00:00:00"));
    }
    if s.len() == 10
        && let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
    {
        return Ok(d.format("%Y-%m-%dT00:00:00").to_string());
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(dt.to_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    let naive_formats = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    naive_formats
        .iter()
        .copied()
        .chain(field.formats.iter().map(String::as_str))
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|dt| dt.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
        .ok_or_else(|| {
            if is_clock(s) {
                format!(
                    "`{s}` is a time of day without a date; a date and time \
                     (YYYY-MM-DDTHH:MM:SS) is needed"
                )
            } else {
                format!("`{s}` is not a date and time (ISO 8601)")
            }
        })
}

/// Whether `s` reads as a clock time or an elapsed time (`06:34`, `06:34:00.500`, `-36:10:00`),
/// as spreadsheet time cells arrive.
fn is_clock(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (hms, frac) = s.split_once('.').unwrap_or((s, "0"));
    let parts: Vec<&str> = hms.split(':').collect();
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    (2..=3).contains(&parts.len())
        && parts.iter().all(|p| digits(p))
        && parts[1..].iter().all(|p| p.len() == 2)
        && digits(frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Datasets;

    #[test]
    fn iso_dates_are_kept_as_written_exactly_when_chrono_reads_them_so() {
        let chrono = |s: &str| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .filter(|_| s.len() == 10)
                .map(|d| d.format("%Y-%m-%d").to_string())
        };
        for s in [
            "2021-11-12",
            "2024-02-29",
            "2023-02-29",
            "2021-13-01",
            "2021-00-10",
            "2021-01-32",
            "0999-01-01",
            "0000-01-01",
            "9999-12-31",
            "2021-1-12",
            "2021/11/12",
            "+021-11-12",
            "2021-11-1 ",
            " 021-11-12",
            "2021-11-12x",
            "２０２１-11-12",
            "",
        ] {
            assert_eq!(is_iso_date(s), chrono(s).as_deref() == Some(s), "{s:?}");
        }
    }

    fn field(ds: &str, name: &str) -> Field {
        let d = Datasets::builtin().get(ds).unwrap();
        d.fields[d.field_index(name).unwrap()].clone()
    }

    #[test]
    fn decimals_are_exact_and_bounded() {
        let price = field("products", "price");
        assert_eq!(
            parse_field(&price, "1234.50").unwrap(),
            Value::Decimal(Decimal::new(123450, 2))
        );
        assert_eq!(
            parse_field(&price, "1234.50").unwrap().to_text().unwrap(),
            "1234.50"
        );
        assert!(parse_field(&price, "12.3.4").is_err());
        assert!(parse_field(&price, "abc").is_err());
        assert!(parse_field(&price, "N/A").is_err());
        assert!(parse_field(&price, "1e5").is_err());
        assert!(
            parse_field(&price, "-0.01")
                .unwrap_err()
                .contains("below the minimum")
        );
        assert_eq!(parse_field(&price, "").unwrap(), Value::Null);
    }

    #[test]
    fn integers_dates_and_required() {
        let stock = field("products", "stock");
        assert_eq!(parse_field(&stock, " 42 ").unwrap(), Value::Int(42));
        assert!(parse_field(&stock, "-3").is_err());
        assert!(parse_field(&stock, "4.5").is_err());
        let date = field("products", "updated_at");
        assert_eq!(
            parse_field(&date, "2024-02-29").unwrap(),
            Value::Date("2024-02-29".into())
        );
        assert!(parse_field(&date, "2023-02-30").is_err());
        assert!(parse_field(&date, "31/12/2023").is_err());
        assert!(parse_field(&date, "not-a-date").is_err());
        assert_eq!(parse_field(&date, "").unwrap_err(), "is required");
        let sku = field("products", "sku");
        assert_eq!(
            parse_field(&sku, "00123").unwrap(),
            Value::Text("00123".into())
        );
    }

    #[test]
    fn booleans_and_datetimes() {
        let active = field("dealers", "active");
        assert_eq!(parse_field(&active, "Yes").unwrap(), Value::Bool(true));
        assert!(parse_field(&active, "maybe").is_err());
        let mut f = field("products", "updated_at");
        f.ty = FieldType::Datetime;
        assert_eq!(
            parse_field(&f, "2024-01-02T03:04:05+02:00").unwrap(),
            Value::DateTime("2024-01-02T01:04:05Z".into())
        );
        assert_eq!(
            parse_field(&f, "2024-01-02 03:04:05").unwrap(),
            Value::DateTime("2024-01-02T03:04:05".into())
        );
        assert_eq!(
            parse_field(&f, "2024-01-02").unwrap(),
            Value::DateTime("2024-01-02T00:00:00".into())
        );
        // A spreadsheet time cell has no date: said so, not just "not a date".
        for time in ["06:34:00", "36:10:00", "01:00:00.500", "6:34"] {
            assert!(
                parse_field(&f, time)
                    .unwrap_err()
                    .contains("is a time of day without a date"),
                "{time}"
            );
        }
        assert!(
            parse_field(&f, "2024-01-02 03:04:99")
                .unwrap_err()
                .contains("is not a date and time")
        );
        f.ty = FieldType::Date;
        assert!(
            parse_field(&f, "06:34:00")
                .unwrap_err()
                .contains("is a time of day without a date; a date (YYYY-MM-DD) is needed")
        );
        assert!(
            parse_field(&field("products", "price"), "06:34:00")
                .unwrap_err()
                .contains("is not a decimal number")
        );
        f.formats = vec!["%d/%m/%Y".into()];
        assert_eq!(
            parse_field(&f, "31/12/2023").unwrap(),
            Value::Date("2023-12-31".into())
        );
    }
}
