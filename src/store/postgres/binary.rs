//! `COPY … (FORMAT binary)` data, written by hand into one buffer: the framing (header, field
//! counts, lengths, trailer) and the binary forms of the values a dataset holds. Binary spares
//! PostgreSQL the text input functions (`numeric_in`, `date_in`, `int8in`: 14 % of a 700k-row
//! COPY's backend time, BENCHMARKS.md issue 17 session 13). A value with no exact binary form
//! here ([`Unencodable`]) sends its batch down the text path instead, where PostgreSQL's own
//! input rules decide.

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;

use crate::dataset::FieldType;
use crate::import::Value;

/// The binary COPY header: signature, flags, no extension.
pub(super) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The end of binary COPY data.
pub(super) const TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// A value whose column type or form has no binary encoding here.
#[derive(Debug)]
pub(super) struct Unencodable;

/// Starts a row of `fields` fields.
pub(super) fn row(out: &mut Vec<u8>, fields: usize) {
    out.extend_from_slice(&(fields as i16).to_be_bytes());
}

pub(super) fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

pub(super) fn int8(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

/// A `text` (or `bytea`) field: its bytes as they are.
pub(super) fn bytes(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
    out.extend_from_slice(v);
}

/// PostgreSQL's epoch, 2000-01-01, in days from 0001-01-01 (chrono's `num_days_from_ce`).
const EPOCH_DAYS_FROM_CE: i32 = 730_120;

/// PostgreSQL's epoch, 2000-01-01 00:00 UTC, in microseconds since the Unix epoch.
const EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Microseconds since PostgreSQL's epoch: the binary form of a `timestamp` (read as UTC) or a
/// `timestamptz`.
pub(super) fn micros_since_epoch(at: NaiveDateTime) -> i64 {
    at.and_utc().timestamp_micros() - EPOCH_UNIX_MICROS
}

/// A validated value in the binary form of its field's column type (`tables::sql_type`).
pub(super) fn value(out: &mut Vec<u8>, ty: FieldType, v: &Value) -> Result<(), Unencodable> {
    match (ty, v) {
        (_, Value::Null) => null(out),
        (FieldType::Text, Value::Text(s)) => bytes(out, s.as_bytes()),
        (FieldType::Integer, Value::Int(i)) => int8(out, *i),
        (FieldType::Decimal, Value::Decimal(d)) => numeric(out, d),
        (FieldType::Boolean, Value::Bool(b)) => {
            out.extend_from_slice(&1i32.to_be_bytes());
            out.push(u8::from(*b));
        }
        (FieldType::Date, Value::Date(s)) => {
            let date: NaiveDate = s.parse().map_err(|_| Unencodable)?;
            let days = date.num_days_from_ce() - EPOCH_DAYS_FROM_CE;
            out.extend_from_slice(&4i32.to_be_bytes());
            out.extend_from_slice(&days.to_be_bytes());
        }
        (FieldType::Datetime, Value::DateTime(s)) => {
            // A `timestamp` column ignores a zone in its text input; the validator's `Z` is UTC.
            let naive = s.strip_suffix('Z').unwrap_or(s);
            // More than microseconds would be rounded by PostgreSQL's text input: leave it that.
            if naive.rsplit_once('.').is_some_and(|(_, f)| f.len() > 6) {
                return Err(Unencodable);
            }
            let at: NaiveDateTime = naive.parse().map_err(|_| Unencodable)?;
            int8(out, micros_since_epoch(at));
        }
        _ => return Err(Unencodable),
    }
    Ok(())
}

/// A `numeric` field: base-10000 digits, most significant first, with the weight of the first
/// digit, the sign and the display scale (kept, so `0.00` stays `0.00` as its text would).
pub(super) fn numeric(out: &mut Vec<u8>, d: &Decimal) {
    let scale = d.scale() as usize;
    // Pad the fraction on the right to whole groups of four digits. |mantissa| < 2^96, times
    // at most 1000 fits in a u128.
    let pad = (4 - scale % 4) % 4;
    let mut m = d.mantissa().unsigned_abs() * 10u128.pow(pad as u32);
    let fraction_groups = (scale + pad) / 4;
    // Least significant first; at most 33 digits = 9 groups.
    let mut groups = [0u16; 10];
    let mut n = 0;
    while m > 0 {
        groups[n] = (m % 10_000) as u16;
        m /= 10_000;
        n += 1;
    }
    let weight = n as i16 - fraction_groups as i16 - 1;
    // Trailing zero groups are left out (the display scale keeps the zeros).
    let skip = groups[..n].iter().take_while(|&&g| g == 0).count();
    let digits = &groups[skip..n];
    let negative = d.is_sign_negative() && n > 0;
    out.extend_from_slice(&((8 + 2 * digits.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&(if digits.is_empty() { 0 } else { weight }).to_be_bytes());
    out.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&(scale as u16).to_be_bytes());
    for g in digits.iter().rev() {
        out.extend_from_slice(&(*g as i16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (ndigits, weight, sign, dscale, digits) of an encoded numeric field.
    fn decode(field: &[u8]) -> (i16, i16, u16, u16, Vec<i16>) {
        let be16 = |i: usize| [field[i], field[i + 1]];
        let len = i32::from_be_bytes([field[0], field[1], field[2], field[3]]) as usize;
        assert_eq!(len, field.len() - 4);
        let n = i16::from_be_bytes(be16(4));
        let digits = (0..n as usize)
            .map(|i| i16::from_be_bytes(be16(12 + 2 * i)))
            .collect();
        (
            n,
            i16::from_be_bytes(be16(6)),
            u16::from_be_bytes(be16(8)),
            u16::from_be_bytes(be16(10)),
            digits,
        )
    }

    fn encoded(text: &str) -> (i16, i16, u16, u16, Vec<i16>) {
        let mut out = Vec::new();
        numeric(&mut out, &text.parse::<Decimal>().unwrap());
        decode(&out)
    }

    #[test]
    fn numerics_take_postgresqls_binary_form() {
        // What `SELECT numeric_send('…'::numeric)` answers for each.
        assert_eq!(encoded("4791.60"), (2, 0, 0, 2, vec![4791, 6000]));
        assert_eq!(encoded("0.00"), (0, 0, 0, 2, vec![]));
        assert_eq!(encoded("-0.5"), (1, -1, 0x4000, 1, vec![5000]));
        assert_eq!(encoded("12345678"), (2, 1, 0, 0, vec![1234, 5678]));
        assert_eq!(encoded("10000"), (1, 1, 0, 0, vec![1]));
        assert_eq!(encoded("0.00001"), (1, -2, 0, 5, vec![1000]));
        assert_eq!(encoded("-123.4567"), (2, 0, 0x4000, 4, vec![123, 4567]));
        assert_eq!(
            encoded("79228162514264337593543950335"),
            (8, 7, 0, 0, vec![7, 9228, 1625, 1426, 4337, 5935, 4395, 335])
        );
        assert_eq!(
            encoded("7.9228162514264337593543950335"),
            (
                8,
                0,
                0,
                28,
                vec![7, 9228, 1625, 1426, 4337, 5935, 4395, 335]
            )
        );
    }

    /// Each value COPYed in binary reads back as its text form COPYed as text would (on the
    /// server of `SLUICE_TEST_POSTGRES`, in a temporary table; skipped without it).
    #[test]
    fn binary_values_read_back_as_their_text_input() {
        let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES") else {
            return;
        };
        let mut client = postgres::Client::connect(&format!("{url}/postgres"), postgres::NoTls)
            .expect("connect");
        let d = |s: &str| Value::Decimal(s.parse().unwrap());
        // (column type, field type, [(value, its text input)])
        type Case<'a> = (&'a str, FieldType, Vec<(Value, &'a str)>);
        let cases: Vec<Case> = vec![
            (
                "NUMERIC(38, 2)",
                FieldType::Decimal,
                vec![
                    (d("4791.6"), "4791.6"),
                    (d("0"), "0"),
                    (d("-0.01"), "-0.01"),
                ],
            ),
            (
                "NUMERIC",
                FieldType::Decimal,
                ["0.00", "-0.5", "10000", "0.00001", "12345678.12345678"]
                    .map(|s| (d(s), s))
                    .into(),
            ),
            (
                "BIGINT",
                FieldType::Integer,
                vec![(Value::Int(i64::MIN), "-9223372036854775808")],
            ),
            (
                "DATE",
                FieldType::Date,
                ["0001-01-01", "1999-12-31", "2024-02-29", "9999-12-31"]
                    .map(|s| (Value::Date(s.into()), s))
                    .into(),
            ),
            (
                "TIMESTAMP",
                FieldType::Datetime,
                [
                    "1970-01-01T00:00:00.1",
                    "2024-01-02T03:04:05.123456",
                    "1999-12-31T23:59:59Z",
                ]
                .map(|s| (Value::DateTime(s.into()), s))
                .into(),
            ),
            (
                "BOOLEAN",
                FieldType::Boolean,
                vec![(Value::Bool(true), "t"), (Value::Bool(false), "f")],
            ),
            (
                "TEXT",
                FieldType::Text,
                vec![(Value::Text("ü \\ \t €".into()), "ü \\ \t €")],
            ),
        ];
        for (sql_type, ty, values) in cases {
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS pg_temp.b; CREATE TEMP TABLE b (i INT, v {sql_type})"
                ))
                .unwrap();
            let mut data = HEADER.to_vec();
            for (i, (v, _)) in values.iter().enumerate() {
                row(&mut data, 2);
                out_int4(&mut data, i as i32);
                value(&mut data, ty, v).unwrap();
            }
            data.extend_from_slice(TRAILER);
            let mut w = client
                .copy_in("COPY b (i, v) FROM STDIN (FORMAT binary)")
                .unwrap();
            std::io::Write::write_all(&mut w, &data).unwrap();
            w.finish().unwrap();
            for (i, (_, text)) in values.iter().enumerate() {
                let row = client
                    .query_one(
                        &format!("SELECT v::text, $2::text::{sql_type}::text FROM b WHERE i = $1"),
                        &[&(i as i32), text],
                    )
                    .unwrap();
                let (got, want): (String, String) = (row.get(0), row.get(1));
                assert_eq!(got, want, "{sql_type} {text}");
            }
        }
    }

    fn out_int4(out: &mut Vec<u8>, v: i32) {
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }

    #[test]
    fn the_epoch_constants_are_2000_01_01() {
        let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
        assert_eq!(epoch.num_days_from_ce(), EPOCH_DAYS_FROM_CE);
        assert_eq!(micros_since_epoch(epoch.and_hms_opt(0, 0, 0).unwrap()), 0);
    }

    #[test]
    fn dates_and_times_count_from_2000() {
        let mut out = Vec::new();
        value(&mut out, FieldType::Date, &Value::Date("2000-01-02".into())).unwrap();
        assert_eq!(out, [0, 0, 0, 4, 0, 0, 0, 1]);
        out.clear();
        value(&mut out, FieldType::Date, &Value::Date("1999-12-31".into())).unwrap();
        assert_eq!(out[4..], (-1i32).to_be_bytes());
        out.clear();
        let at = Value::DateTime("2000-01-01T00:00:01.5Z".into());
        value(&mut out, FieldType::Datetime, &at).unwrap();
        assert_eq!(out[4..], 1_500_000i64.to_be_bytes());
        let finer = Value::DateTime("2000-01-01T00:00:01.1234567".into());
        assert!(value(&mut out, FieldType::Datetime, &finer).is_err());
        assert!(value(&mut out, FieldType::Integer, &Value::Text("1".into())).is_err());
    }
}
