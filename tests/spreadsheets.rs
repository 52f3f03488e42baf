//! Real-world spreadsheets through the HTTP API of the real server: XLSX (generated, written by
//! rust_xlsxwriter, hand-written XML, files from LibreOffice and openpyxl), XLS (LibreOffice,
//! xlwt) and ODS, sheets, floats, dates and times, CSV encodings and dialects, and detection by
//! content. Values are checked exactly in the dataset table.

mod common;

use std::collections::BTreeSet;

use common::xlsx::{RawSheet, header, is, one_sheet, raw_xlsx};
use common::*;
use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};
use serde_json::Value;

/// A dataset with one field of every type.
pub const ITEMS: &str = r#"
[datasets.items]
key = ["code"]
[datasets.items.fields]
code   = { type = "text", required = true }
name   = { type = "text" }
price  = { type = "decimal", scale = 2 }
qty    = { type = "integer" }
active = { type = "boolean" }
born   = { type = "date" }
seen   = { type = "datetime" }
"#;

/// Form fields of an upload.
type Fields = Vec<(&'static str, &'static str)>;

fn items_app() -> TestApp {
    spawn_app(AppOptions {
        datasets: Some(ITEMS.into()),
        ..Default::default()
    })
}

type ItemRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn items(app: &TestApp) -> Vec<ItemRow> {
    let db = app.sqlite();
    let mut stmt = db
        .prepare("SELECT code, name, price, qty, active, born, seen FROM items ORDER BY code")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn names(app: &TestApp) -> Vec<(String, String)> {
    let db = app.sqlite();
    let mut stmt = db
        .prepare("SELECT code, name FROM items ORDER BY code")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn row(code: &str, name: Option<&str>) -> ItemRow {
    (
        code.into(),
        name.map(Into::into),
        None,
        None,
        None,
        None,
        None,
    )
}

/// Uploads, expects 202, waits for the end; returns the final status.
async fn import(
    app: &TestApp,
    name: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> (i64, Value) {
    let (code, body) = app.upload_bytes("items", name, bytes, fields).await;
    assert_eq!(code, 202, "{name}: {body}");
    let job = job_id(&body);
    (job, app.wait_done(job, MINUTE).await)
}

#[tokio::test]
async fn generated_xlsx_imports_with_exact_counts_for_shared_and_inline_strings() {
    let app = spawn_app(AppOptions {
        batch_size: 500,
        ..Default::default()
    });
    for (strings, dates) in [("shared", "serial"), ("inline", "text")] {
        let name = format!("gen-{strings}-{dates}.xlsx");
        let (file, expect) = generate(
            app.dir.path(),
            &name,
            &[
                "--rows",
                "3000",
                "--error-rate",
                "0.05",
                "--seed",
                "11",
                "--xlsx-strings",
                strings,
                "--xlsx-dates",
                dates,
            ],
        );
        let (code, body) = app.upload("products", &file).await;
        assert_eq!(code, 202, "{body}");
        let job = job_id(&body);
        let s = app.wait_done(job, MINUTE).await;
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(s["results"]["totalRows"], 3000);
        assert_eq!(s["results"]["successCount"], expect["valid_rows"]);
        assert_eq!(s["results"]["errorCount"], expect["invalid_rows"]);
        let expected_rows: BTreeSet<u64> = expect["invalid_row_numbers"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap() + 1)
            })
            .collect();
        let got: BTreeSet<u64> = app
            .errors_json(job)
            .await
            .iter()
            .map(|e| e["row"].as_u64().unwrap())
            .collect();
        assert_eq!(got, expected_rows, "{strings}/{dates}");
        let db = app.sqlite();
        let (count, stock, price): (i64, i64, String) = db
            .query_row(
                "SELECT count(*), sum(stock), printf('%.2f', sum(CAST(price AS REAL))) FROM products",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(count, expect["valid_rows"].as_i64().unwrap());
        assert_eq!(stock, expect["valid_sum_stock"].as_i64().unwrap());
        assert_eq!(price, expect["valid_sum_price"].as_str().unwrap());
        // Float cells are written back as their shortest decimal, never 19.989999999999998.
        let long: i64 = db
            .query_row(
                "SELECT count(*) FROM products WHERE length(price) - instr(price, '.') > 2 AND instr(price, '.') > 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(long, 0);
        let dates: i64 = db
            .query_row(
                "SELECT count(*) FROM products WHERE updated_at NOT GLOB '20[2][0-5]-[01][0-9]-[0-3][0-9]'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(dates, 0);
        // The second file has the same keys and values: its rows are all unchanged.
        let first_sku: String = db
            .query_row("SELECT min(sku) FROM products", [], |r| r.get(0))
            .unwrap();
        assert_eq!(first_sku, expect["valid_sku_first"].as_str().unwrap());
    }
}

/// A workbook as Excel users make it: a hidden notes sheet first, the data on the second sheet,
/// numbers, booleans, dates and date-times, a `#N/A` formula, a gap and a ragged row.
fn items_workbook() -> Vec<u8> {
    let mut wb = Workbook::new();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let datetime = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    {
        let notes = wb.add_worksheet();
        notes.set_name("Notes").unwrap();
        notes.write_string(0, 0, "read me").unwrap();
        notes.set_hidden(true);
    }
    {
        let ws = wb.add_worksheet();
        ws.set_name("Items").unwrap();
        ws.set_active(true);
        for (c, h) in ["code", "name", "price", "qty", "active", "born", "seen"]
            .iter()
            .enumerate()
        {
            ws.write_string(0, c as u16, *h).unwrap();
        }
        // Row 2: a leading-zero code and floats that are not exact in binary.
        ws.write_string(1, 0, "00123").unwrap();
        ws.write_string(1, 1, "Crème brûlée").unwrap();
        ws.write_number(1, 2, 19.99).unwrap();
        ws.write_number(1, 3, 4.0).unwrap();
        ws.write_boolean(1, 4, true).unwrap();
        ws.write_datetime_with_format(1, 5, ExcelDateTime::from_ymd(2024, 1, 15).unwrap(), &date)
            .unwrap();
        ws.write_datetime_with_format(
            1,
            6,
            ExcelDateTime::from_ymd(2024, 1, 15)
                .unwrap()
                .and_hms(13, 45, 30)
                .unwrap(),
            &datetime,
        )
        .unwrap();
        // Row 3: a 20-digit code as text, a midnight date-time.
        ws.write_string(2, 0, "12345678901234567890").unwrap();
        ws.write_string(2, 1, "Müller").unwrap();
        ws.write_number(2, 2, 0.1).unwrap();
        ws.write_number(2, 3, 12).unwrap();
        ws.write_boolean(2, 4, false).unwrap();
        ws.write_datetime_with_format(2, 5, ExcelDateTime::from_ymd(1999, 12, 31).unwrap(), &date)
            .unwrap();
        ws.write_datetime_with_format(
            2,
            6,
            ExcelDateTime::from_ymd(2000, 1, 1).unwrap(),
            &datetime,
        )
        .unwrap();
        // Row 4: three decimals for a field with two.
        ws.write_string(3, 0, "A4").unwrap();
        ws.write_number(3, 2, 1.005).unwrap();
        // Row 5: a fraction for an integer field.
        ws.write_string(4, 0, "A5").unwrap();
        ws.write_number(4, 3, 4.5).unwrap();
        // Row 6: a formula whose result is #N/A.
        ws.write_string(5, 0, "A6").unwrap();
        ws.write_formula(5, 2, Formula::new("=NA()").set_result("#N/A"))
            .unwrap();
        // Row 7 is empty; row 8 is ragged (only two cells).
        ws.write_string(7, 0, "A8").unwrap();
        ws.write_string(7, 1, "Ragged").unwrap();
    }
    {
        let other = wb.add_worksheet();
        other.set_name("Other").unwrap();
        other.write_string(0, 0, "code").unwrap();
        other.write_string(0, 1, "name").unwrap();
        other.write_string(1, 0, "O1").unwrap();
        other.write_string(1, 1, "From the third sheet").unwrap();
    }
    wb.save_to_buffer().unwrap()
}

#[tokio::test]
async fn xlsx_values_arrive_as_people_read_them() {
    let app = items_app();
    let (job, s) = import(&app, "items.xlsx", items_workbook(), &[]).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["results"]["totalRows"], 6);
    assert_eq!(s["results"]["successCount"], 3);
    assert_eq!(s["results"]["errorCount"], 3);
    assert_eq!(
        items(&app),
        vec![
            (
                "00123".into(),
                Some("Crème brûlée".into()),
                Some("19.99".into()),
                Some(4),
                Some(1),
                Some("2024-01-15".into()),
                Some("2024-01-15T13:45:30".into()),
            ),
            (
                "12345678901234567890".into(),
                Some("Müller".into()),
                Some("0.1".into()),
                Some(12),
                Some(0),
                Some("1999-12-31".into()),
                Some("2000-01-01T00:00:00".into()),
            ),
            row("A8", Some("Ragged")),
        ]
    );
    let errors = app.errors_json(job).await;
    let summary: Vec<(u64, String, String)> = errors
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["column"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (4, "price".into(), "1.005".into()),
            (5, "qty".into(), "4.5".into()),
            (6, "price".into(), "#N/A".into()),
        ]
    );
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("more than 2 decimal places")
    );
    assert!(
        errors[2]["message"]
            .as_str()
            .unwrap()
            .contains("spreadsheet error #N/A")
    );
}

#[tokio::test]
async fn the_sheet_option_picks_by_name_or_position_and_a_missing_one_lists_the_sheets() {
    let app = items_app();
    let (code, body) = app
        .upload_bytes("items", "wb.xlsx", items_workbook(), &[("sheet", "Nope")])
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "sheet_not_found");
    assert_eq!(
        body["error"]["message"],
        "there is no sheet `Nope` in the workbook; its sheets are: Notes, Items, Other"
    );
    let (_, s) = import(&app, "wb.xlsx", items_workbook(), &[("sheet", "Other")]).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(
        names(&app),
        vec![("O1".into(), "From the third sheet".into())]
    );
    // By 1-based position: the hidden first sheet has no `code` column.
    let (code, body) = app
        .upload_bytes("items", "wb.xlsx", items_workbook(), &[("sheet", "1")])
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "missing_columns");
    let (_, s) = import(&app, "wb.xlsx", items_workbook(), &[("sheet", "2")]).await;
    assert_eq!(s["results"]["successCount"], 3, "{s}");
}

#[tokio::test]
async fn hand_written_xlsx_covers_inline_strings_1904_dates_errors_and_gaps() {
    let app = items_app();
    // The header is on row 2, row 4 is an empty row element, a #DIV/0! sits in a column no
    // field reads, numbers carry float noise, and the workbook uses the 1904 date system.
    let rows = [
        r#"<row r="2">"#.to_string()
            + &is("A2", "code")
            + &is("B2", "name")
            + &is("C2", "price")
            + &is("D2", "qty")
            + &is("E2", "active")
            + &is("F2", "born")
            + &is("G2", "seen")
            + &is("H2", "notes")
            + "</row>",
        r#"<row r="3"><c r="A3" t="s"><v>0</v></c><c r="B3" t="s"><v>1</v></c><c r="C3" s="3"><v>19.989999999999998</v></c><c r="D3"><v>7</v></c><c r="E3" t="b"><v>1</v></c><c r="F3" s="1"><v>43845</v></c><c r="G3" s="2"><v>43845.5</v></c><c r="H3" t="e"><v>#DIV/0!</v></c></row>"#.to_string(),
        r#"<row r="4"/>"#.to_string(),
        r#"<row r="5"><c r="A5"><v>12345678901234567890</v></c><c r="B5" t="inlineStr"><is><r><t>Rich </t></r><r><t>text</t></r></is></c><c r="C5"><v>2.5E-1</v></c></row>"#.to_string(),
        r#"<row r="6">"#.to_string() + &is("A6", "bad") + r#"<c r="D6"><v>1.5</v></c></row>"#,
        r#"<row r="7"><c r="A7" t="str"><f>CONCAT("f","x")</f><v>fx</v></c><c r="E7" t="b"><v>0</v></c></row>"#.to_string(),
    ]
    .concat();
    let bytes = raw_xlsx(
        &[RawSheet {
            name: "Data",
            hidden: false,
            rows,
        }],
        &["S&P <500>", "Ünïcødé"],
        true,
        "",
    );
    let (job, s) = import(&app, "raw.xlsx", bytes, &[]).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["results"]["totalRows"], 4);
    assert_eq!(
        items(&app),
        vec![
            (
                "12345678901234567890".into(),
                Some("Rich text".into()),
                Some("0.25".into()),
                None,
                None,
                None,
                None
            ),
            (
                "S&P <500>".into(),
                Some("Ünïcødé".into()),
                Some("19.99".into()),
                Some(7),
                Some(1),
                Some("2024-01-16".into()),
                Some("2024-01-16T12:00:00".into()),
            ),
            ("fx".into(), None, None, None, Some(0), None, None),
        ]
    );
    let errors = app.errors_json(job).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["row"], 6);
    assert_eq!(errors[0]["column"], "qty");
}

fn encode_utf16(text: &str, big_endian: bool, bom: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if bom {
        out.extend_from_slice(if big_endian {
            &[0xFE, 0xFF]
        } else {
            &[0xFF, 0xFE]
        });
    }
    for u in text.encode_utf16() {
        out.extend_from_slice(&if big_endian {
            u.to_be_bytes()
        } else {
            u.to_le_bytes()
        });
    }
    out
}

#[tokio::test]
async fn csv_in_every_encoding_arrives_intact() {
    let app = items_app();
    let text = |p: &str| format!("code,name\n{p}1,Crème brûlée\n{p}2,Müller\n");
    let latin1: Vec<u8> = text("W")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect();
    let cases: Vec<(&str, Vec<u8>, Fields)> = vec![
        ("utf8.csv", text("U").into_bytes(), vec![]),
        (
            "utf8bom.csv",
            [b"\xEF\xBB\xBF".to_vec(), text("B").into_bytes()].concat(),
            vec![],
        ),
        ("utf16le.csv", encode_utf16(&text("L"), false, true), vec![]),
        ("utf16be.csv", encode_utf16(&text("G"), true, true), vec![]),
        ("cp1252.csv", latin1.clone(), vec![]),
        (
            "utf16-nobom.csv",
            encode_utf16(&text("N"), false, false),
            vec![("encoding", "utf-16le")],
        ),
    ];
    for (name, bytes, fields) in cases {
        let (code, body) = app.upload_bytes("items", name, bytes, &fields).await;
        assert_eq!(code, 202, "{name}: {body}");
        let s = app.wait_done(job_id(&body), MINUTE).await;
        assert_eq!(s["results"]["successCount"], 2, "{name}: {s}");
    }
    let got = names(&app);
    let mut expected = Vec::new();
    for p in ["B", "G", "L", "N", "U", "W"] {
        expected.push((format!("{p}1"), "Crème brûlée".to_string()));
        expected.push((format!("{p}2"), "Müller".to_string()));
    }
    assert_eq!(got, expected);
    // The option overrides detection: the Latin-1 file read as UTF-16 makes no sense.
    let (code, body) = app
        .upload_bytes("items", "x.csv", latin1, &[("encoding", "klingon")])
        .await;
    assert_eq!(code, 400);
    assert_eq!(body["error"]["code"], "invalid_encoding");
    // Without the option, BOM-less UTF-16 is binary-looking and refused.
    let (code, body) = app
        .upload_bytes(
            "items",
            "y.csv",
            encode_utf16(&text("Z"), false, false),
            &[],
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_format");
}

#[tokio::test]
async fn csv_dialects_are_sniffed_and_the_delimiter_option_overrides() {
    let app = items_app();
    let cases: Vec<(&str, &[u8], Fields)> = vec![
        (
            "semi.csv",
            b"code;name;price\r\nS1;\"Semi; colon\";1.50\r\nS2;Plain;2\r\n",
            vec![],
        ),
        (
            "tab.tsv",
            b"code\tname\nT1\tA, B and C\nT2\tTabbed\n",
            vec![],
        ),
        ("pipe.csv", b"code|name\rP1|Old Mac\rP2|Lines\r", vec![]),
        (
            "quotes.csv",
            b"code,name\nQ1,\"He said \"\"hi\"\"\"\nQ2,\"line one\nline two\"\n",
            vec![],
        ),
        (
            "trailing.csv",
            b"code,name,\nR1,Trailing,\nR2,None\n",
            vec![],
        ),
        ("rows-trailing.csv", b"code,name\nR3,Extra,\n", vec![]),
        (
            "colon.csv",
            b"code:name\nC1:Colon\n",
            vec![("delimiter", ":")],
        ),
    ];
    for (name, bytes, fields) in cases {
        let (code, body) = app
            .upload_bytes("items", name, bytes.to_vec(), &fields)
            .await;
        assert_eq!(code, 202, "{name}: {body}");
        let s = app.wait_done(job_id(&body), MINUTE).await;
        assert_eq!(s["results"]["errorCount"], 0, "{name}: {s}");
    }
    let expected: Vec<(String, String)> = [
        ("C1", "Colon"),
        ("P1", "Old Mac"),
        ("P2", "Lines"),
        ("Q1", "He said \"hi\""),
        ("Q2", "line one\nline two"),
        ("R1", "Trailing"),
        ("R2", "None"),
        ("R3", "Extra"),
        ("S1", "Semi; colon"),
        ("S2", "Plain"),
        ("T1", "A, B and C"),
        ("T2", "Tabbed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(names(&app), expected);
    let price: String = app
        .sqlite()
        .query_row("SELECT price FROM items WHERE code = 'S1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(price, "1.50");
    // Without the option the colon file is one column named `code:name`.
    let (code, body) = app
        .upload_bytes("items", "colon.csv", b"code:name\nC1:Colon\n".to_vec(), &[])
        .await;
    assert_eq!(code, 400);
    assert_eq!(body["error"]["code"], "missing_columns");
}

#[tokio::test]
async fn the_format_comes_from_the_content_not_the_name() {
    let app = items_app();
    let bytes = one_sheet(
        &(header(&["code", "name"])
            + r#"<row r="2">"#
            + &is("A2", "X1")
            + &is("B2", "Zipped")
            + "</row>"),
        &[],
    );
    let (_, s) = import(&app, "really-a-spreadsheet.csv", bytes, &[]).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(names(&app), vec![("X1".into(), "Zipped".into())]);
    let (_, s) = import(
        &app,
        "text.xlsx",
        b"code,name\nX2,Plain text\n".to_vec(),
        &[],
    )
    .await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(names(&app).len(), 2);
}

#[tokio::test]
async fn workbooks_saved_by_libreoffice_as_xlsx_ods_and_xls_read_the_same() {
    let dir = fixtures_dir().join("libreoffice");
    for ext in ["xlsx", "ods", "xls"] {
        let app = items_app();
        let bytes = std::fs::read(dir.join(format!("items.{ext}"))).unwrap();
        // Named .bin: the format must come from the content.
        let (job, s) = import(&app, &format!("items-{ext}.bin"), bytes, &[]).await;
        assert_eq!(s["status"], "completed", "{ext}: {s}");
        assert_eq!(s["results"]["totalRows"], 3, "{ext}");
        assert_eq!(
            items(&app),
            vec![
                (
                    "00123".into(),
                    Some("Crème brûlée".into()),
                    Some("19.99".into()),
                    Some(4),
                    Some(1),
                    Some("2024-01-15".into()),
                    None,
                ),
                (
                    "L2".into(),
                    Some("Müller".into()),
                    Some("0.1".into()),
                    Some(12),
                    Some(0),
                    Some("1999-12-31".into()),
                    None,
                ),
            ],
            "{ext}"
        );
        let errors = app.errors_json(job).await;
        assert_eq!(errors.len(), 1, "{ext}");
        assert_eq!(errors[0]["row"], 4, "{ext}");
        assert_eq!(errors[0]["column"], "price", "{ext}");
        assert_eq!(errors[0]["value"], "1.005", "{ext}");
    }
}

/// A dataset that reads one time column as text, and times into a datetime and a date field.
const TIMES: &str = r#"
[datasets.times]
key = ["code"]
[datasets.times.fields]
code  = { type = "text", required = true }
clock = { type = "text" }
at    = { type = "datetime" }
day   = { type = "date" }
"#;

/// `code, clock, at, day` as stored.
type TimeRow = (String, Option<String>, Option<String>, Option<String>);

/// The `times` table, by code.
fn time_rows(app: &TestApp) -> Vec<TimeRow> {
    let db = app.sqlite();
    let mut stmt = db
        .prepare("SELECT code, clock, at, day FROM times ORDER BY code")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn time_cells_read_the_same_from_xlsx_xls_and_ods_written_by_other_programs() {
    let dir = fixtures_dir().join("times");
    let stored =
        |code: &str, clock: Option<&str>, at: Option<&str>, day: Option<&str>| -> TimeRow {
            (
                code.to_string(),
                clock.map(str::to_string),
                at.map(str::to_string),
                day.map(str::to_string),
            )
        };
    let times = vec![
        stored(
            "t1",
            Some("06:34:00"),
            Some("2024-01-15T10:30:00"),
            Some("2024-01-15"),
        ),
        stored("t2", Some("10:10:10"), None, None),
        stored("t3", Some("13:45:30"), None, None),
        stored("t4", Some("18:05:00"), None, None),
        stored("t5", Some("00:00:45"), None, None),
        // An elapsed time ([h]:mm:ss, an ODS duration) counts hours past 23.
        stored("t6", Some("36:10:00"), None, None),
        stored("t7", Some("01:00:00.500"), None, None),
        // A time format on a date keeps the date.
        stored(
            "t8",
            Some("2024-01-15T08:00:00"),
            Some("2024-01-15T08:00:00"),
            None,
        ),
    ];
    // xlwt (XLS), openpyxl (XLSX) and a LibreOffice-style content.xml (ODS).
    for ext in ["xlsx", "xls", "ods"] {
        let app = spawn_app(AppOptions {
            datasets: Some(TIMES.into()),
            ..Default::default()
        });
        let bytes = std::fs::read(dir.join(format!("times.{ext}"))).unwrap();
        let (code, body) = app
            .upload_bytes("times", &format!("times.{ext}"), bytes, &[])
            .await;
        assert_eq!(code, 202, "{ext}: {body}");
        let job = job_id(&body);
        let s = app.wait_done(job, MINUTE).await;
        assert_eq!(s["status"], "completed", "{ext}: {s}");
        assert_eq!(s["results"]["totalRows"], 11, "{ext}");
        let rows = time_rows(&app);
        let mut expected = times.clone();
        // An ODS error cell is text to calamine: a text field keeps `#N/A`.
        if ext == "ods" {
            expected.insert(0, stored("err", Some("#N/A"), None, None));
        }
        assert_eq!(rows, expected, "{ext}");

        let errors = app.errors_json(job).await;
        let found: Vec<(i64, String, String)> = errors
            .iter()
            .map(|e| {
                (
                    e["row"].as_i64().unwrap(),
                    e["column"].as_str().unwrap().to_string(),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut wanted = vec![
            (
                10,
                "at".to_string(),
                "at: `06:34:00` is a time of day without a date; a date and time \
                 (YYYY-MM-DDTHH:MM:SS) is needed"
                    .to_string(),
            ),
            (
                11,
                "day".to_string(),
                "day: `06:34:00` is a time of day without a date; a date (YYYY-MM-DD) is needed"
                    .to_string(),
            ),
        ];
        if ext != "ods" {
            wanted.push((
                12,
                "clock".to_string(),
                "clock: the cell holds the spreadsheet error #N/A".to_string(),
            ));
        }
        assert_eq!(found, wanted, "{ext}");
    }
}

#[tokio::test]
async fn xls_in_the_1904_date_system_keeps_its_dates_and_reads_times_as_clocks() {
    let app = spawn_app(AppOptions {
        datasets: Some(TIMES.into()),
        ..Default::default()
    });
    let path = fixtures_dir().join("times/times1904.xls");
    let (code, body) = app
        .upload_bytes("times", "times1904.xls", std::fs::read(path).unwrap(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["results"]["successCount"], 3, "{s}");
    let rows = time_rows(&app);
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        rows,
        vec![
            (
                "t1".into(),
                some("06:34:00"),
                some("2024-01-15T10:30:00"),
                some("2024-01-15")
            ),
            ("t2".into(), some("10:10:10"), None, None),
            (
                "t8".into(),
                some("2024-01-15T08:00:00"),
                some("2024-01-15T08:00:00"),
                None
            ),
        ]
    );
}
