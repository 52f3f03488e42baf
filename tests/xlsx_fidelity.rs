//! XLSX packages that other readers open and sluice once misread or refused, through the HTTP
//! API of the real server (upload, job, preview): Excel 2013+'s second `workbookPr` in the 1904
//! date system, empty shared-string cells, a workbook at the package root, part names in another
//! case than the relationships give, and the message for an empty sheet (XLSX and XLS). Values
//! are checked exactly in the dataset table.

mod common;

use common::xlsx::{
    RawSheet, header, one_sheet, parts_xlsx, raw_xlsx, rels_xml, shared_strings_xml, sheet_xml,
    styles_xml, workbook_xml,
};
use common::*;
use serde_json::{Value, json};

const ITEMS: &str = r#"
[datasets.items]
key = ["code"]
[datasets.items.fields]
code   = { type = "text", required = true }
name   = { type = "text" }
price  = { type = "decimal", scale = 2 }
born   = { type = "date" }
seen   = { type = "datetime" }
"#;

fn items_app() -> TestApp {
    spawn_app(AppOptions {
        datasets: Some(ITEMS.into()),
        ..Default::default()
    })
}

type Item = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn items(app: &TestApp) -> Vec<Item> {
    let db = app.sqlite();
    let mut stmt = db
        .prepare("SELECT code, name, price, born, seen FROM items ORDER BY code")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn item(code: &str, name: Option<&str>, price: Option<&str>, born: Option<&str>) -> Item {
    (
        code.into(),
        name.map(Into::into),
        price.map(Into::into),
        born.map(Into::into),
        None,
    )
}

/// Uploads, expects 202, waits for the end; the final status.
async fn import(app: &TestApp, name: &str, bytes: Vec<u8>, fields: &[(&str, &str)]) -> Value {
    let (code, body) = app.upload_bytes("items", name, bytes, fields).await;
    assert_eq!(code, 202, "{name}: {body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "completed", "{name}: {s}");
    s
}

/// `POST /api/v1/import/items/preview` with the file and form fields.
async fn preview(
    app: &TestApp,
    name: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    json_of(
        app.post("/api/v1/import/items/preview")
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The preview's rows as their fields.
fn preview_rows(body: &Value) -> Vec<Vec<String>> {
    body["data"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_value(r["values"].clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn an_excel_2013_workbook_in_the_1904_system_keeps_its_dates() {
    // openpyxl's 1904 workbook with the extLst Excel 2013+ writes after `<workbookPr
    // date1904="1"/>`: `<x15:workbookPr chartTrackingRefBase="1"/>`, which once reset the flag.
    let app = items_app();
    let bytes = fixture("openpyxl/date1904_excel2013.xlsx");
    let s = import(&app, "mac.xlsx", bytes.clone(), &[]).await;
    assert_eq!(s["results"]["successCount"], 3, "{s}");
    let dated = |code: &str, name: &str, born: &str, seen: &str| -> Item {
        (
            code.into(),
            Some(name.into()),
            None,
            Some(born.into()),
            Some(seen.into()),
        )
    };
    assert_eq!(
        items(&app),
        vec![
            dated("D1", "day one", "1904-01-02", "1904-01-02T06:00:00"),
            dated("D2", "leap day", "2024-02-29", "2024-02-29T13:30:00"),
            dated("D3", "millennium", "1999-12-31", "2000-01-01T00:00:01"),
        ]
    );
    let (code, body) = preview(&app, "mac.xlsx", bytes, &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        preview_rows(&body)
            .iter()
            .map(|r| (r[2].as_str(), r[3].as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("1904-01-02", "1904-01-02T06:00:00"),
            ("2024-02-29", "2024-02-29T13:30:00"),
            ("1999-12-31", "2000-01-01T00:00:01"),
        ]
    );
}

#[tokio::test]
async fn empty_shared_string_cells_read_as_empty_and_keep_their_columns() {
    let app = items_app();
    let rows = header(&["code", "name", "price"])
        // `<v/>`, and a shared-string cell with no value element at all.
        + r#"<row r="2"><c r="A2" t="s"><v>0</v></c><c r="B2" t="s"><v/></c><c r="C2"><v>1.5</v></c></row>"#
        + r#"<row r="3"><c r="A3" t="s"><v>1</v></c><c r="B3" t="s"/><c r="C3" t="s"></c></row>"#
        // Cells without references: the empty ones still take their column.
        + r#"<row r="4"><c t="s"><v>2</v></c><c t="s"><v></v></c><c><v>4.5</v></c></row>"#
        + r#"<row r="5"><c t="s"><v>3</v></c><c t="s"/><c><v>7</v></c></row>"#;
    let bytes = one_sheet(&rows, &["E1", "E2", "E3", "E4"]);
    let s = import(&app, "sparse.xlsx", bytes.clone(), &[]).await;
    assert_eq!(s["results"]["successCount"], 4, "{s}");
    assert_eq!(
        items(&app),
        vec![
            item("E1", None, Some("1.5"), None),
            item("E2", None, None, None),
            item("E3", None, Some("4.5"), None),
            item("E4", None, Some("7"), None),
        ]
    );
    let (code, body) = preview(&app, "sparse.xlsx", bytes, &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        preview_rows(&body),
        vec![
            vec!["E1", "", "1.5"],
            vec!["E2", "", ""],
            vec!["E3", "", "4.5"],
            vec!["E4", "", "7"],
        ]
    );
    // An index past the end of the table is still an error.
    let bad = one_sheet(
        &(header(&["code", "name"]) + r#"<row r="2"><c r="A2" t="s"><v>9</v></c></row>"#),
        &["only"],
    );
    let (code, body) = app.upload_bytes("items", "bad.xlsx", bad, &[]).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "unreadable_file");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("row 2 refers to a shared string that does not exist"),
        "{body}"
    );
}

const TYPES: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/></Types>"#;

/// The rows of the package tests: shared strings, a date (style 1) and a number.
fn dated_rows(codes: (usize, usize)) -> String {
    header(&["code", "name", "price", "born"])
        + &format!(
            r#"<row r="2"><c r="A2" t="s"><v>{}</v></c><c r="B2" t="s"><v>{}</v></c><c r="C2"><v>2.5</v></c><c r="D2" s="1"><v>45672</v></c></row>"#,
            codes.0, codes.1
        )
}

#[tokio::test]
async fn a_workbook_at_the_package_root_is_read_through_its_relationships() {
    let app = items_app();
    // A minimal valid OPC package: `_rels/.rels` → `workbook.xml` at the root, its
    // relationships in `_rels/workbook.xml.rels`, the sheet as `sheet1.xml`.
    let bytes = parts_xlsx(&[
        ("[Content_Types].xml", TYPES.to_string()),
        (
            "_rels/.rels",
            rels_xml(&[("rId1", "officeDocument", "workbook.xml")]),
        ),
        ("workbook.xml", workbook_xml(&[("Root Sheet", "rId1")])),
        (
            "_rels/workbook.xml.rels",
            rels_xml(&[
                ("rId1", "worksheet", "sheet1.xml"),
                ("rId2", "sharedStrings", "sharedStrings.xml"),
                ("rId3", "styles", "/styles.xml"),
            ]),
        ),
        ("sheet1.xml", sheet_xml(&dated_rows((0, 1)))),
        (
            "sharedStrings.xml",
            shared_strings_xml(&["R1", "at the root"]),
        ),
        ("styles.xml", styles_xml()),
    ]);
    import(&app, "root.xlsx", bytes.clone(), &[("sheet", "Root Sheet")]).await;
    assert_eq!(
        items(&app),
        vec![item(
            "R1",
            Some("at the root"),
            Some("2.5"),
            Some("2025-01-15")
        )]
    );
    let (code, body) = preview(&app, "root.xlsx", bytes, &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["format"], "xlsx");
    assert_eq!(body["data"]["sheets"], json!(["Root Sheet"]));
    assert_eq!(
        preview_rows(&body),
        vec![vec!["R1", "at the root", "2.5", "2025-01-15"]]
    );
}

#[tokio::test]
async fn part_names_in_another_case_than_the_relationships_give_are_found() {
    let app = items_app();
    // The relationships and content types say `sharedStrings.xml`, `worksheets/sheet1.xml`;
    // the zip holds `xl/SharedStrings.xml`, `xl/Worksheets/Sheet1.xml` (Excel opens it).
    let types = TYPES.replace(
        "</Types>",
        r#"<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>"#,
    );
    let bytes = parts_xlsx(&[
        ("[Content_Types].xml", types),
        (
            "_rels/.rels",
            rels_xml(&[("rId1", "officeDocument", "xl/workbook.xml")]),
        ),
        (
            "xl/workbook.xml",
            workbook_xml(&[("Cased", "rId1"), ("Second", "rId4")]),
        ),
        (
            "xl/_rels/Workbook.xml.rels",
            rels_xml(&[
                ("rId1", "worksheet", "worksheets/sheet1.xml"),
                ("rId2", "sharedStrings", "sharedStrings.xml"),
                ("rId3", "styles", "/xl/styles.xml"),
                ("rId4", "worksheet", "../xl/worksheets/sheet2.xml"),
            ]),
        ),
        ("xl/Worksheets/Sheet1.xml", sheet_xml(&dated_rows((0, 1)))),
        ("XL/WORKSHEETS/SHEET2.XML", sheet_xml(&dated_rows((2, 1)))),
        (
            "xl/SharedStrings.xml",
            shared_strings_xml(&["K1", "case-insensitive", "K2"]),
        ),
        ("xl/Styles.xml", styles_xml()),
    ]);
    import(&app, "cased.xlsx", bytes.clone(), &[]).await;
    import(&app, "cased.xlsx", bytes.clone(), &[("sheet", "2")]).await;
    assert_eq!(
        items(&app),
        vec![
            item(
                "K1",
                Some("case-insensitive"),
                Some("2.5"),
                Some("2025-01-15")
            ),
            item(
                "K2",
                Some("case-insensitive"),
                Some("2.5"),
                Some("2025-01-15")
            ),
        ]
    );
    let (code, body) = preview(&app, "cased.xlsx", bytes, &[("sheet", "Second")]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["sheets"], json!(["Cased", "Second"]));
    assert_eq!(
        preview_rows(&body),
        vec![vec!["K2", "case-insensitive", "2.5", "2025-01-15"]]
    );
}

#[tokio::test]
async fn an_empty_sheet_is_named_with_the_sheets_that_have_data() {
    let app = items_app();
    let empty = r#"sheet "Cover" is empty; sheets with data: "Data", "2024" (choose one with the `sheet` option)"#;
    let header_only = r#"sheet "Notes" has a header but no data rows; sheets with data: "Data", "2024" (choose one with the `sheet` option)"#;
    for file in ["openpyxl/cover_first.xlsx", "xlwt/cover_first.xls"] {
        let bytes = fixture(file);
        let name = file.rsplit('/').next().unwrap();
        for (sheet, code, message) in [
            (None, "empty_file", empty),
            (Some("Notes"), "no_rows", header_only),
        ] {
            let fields: Vec<(&str, &str)> = sheet.map(|s| ("sheet", s)).into_iter().collect();
            let (status, body) = app
                .upload_bytes("items", name, bytes.clone(), &fields)
                .await;
            assert_eq!(status, 400, "{file} {sheet:?}: {body}");
            assert_eq!(body["error"]["code"], code, "{file}: {body}");
            assert_eq!(body["error"]["message"], message, "{file}");
            // The preview says the same: an error for an empty sheet, a problem for no rows.
            let (status, body) = preview(&app, name, bytes.clone(), &fields).await;
            if sheet.is_none() {
                assert_eq!(status, 400, "{file}: {body}");
                assert_eq!(body["error"]["code"], code, "{file}: {body}");
                assert_eq!(body["error"]["message"], message, "{file}");
            } else {
                assert_eq!(status, 200, "{file}: {body}");
                assert_eq!(
                    body["data"]["problems"],
                    json!([{"code": code, "message": message}]),
                    "{file}"
                );
            }
        }
        let s = import(&app, name, bytes, &[("sheet", "Data")]).await;
        assert_eq!(s["results"]["successCount"], 2, "{file}: {s}");
    }
    // A workbook with nothing anywhere says so.
    let (status, body) = app
        .upload_bytes("items", "blank.xlsx", one_sheet("", &[]), &[])
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "empty_file");
    assert_eq!(
        body["error"]["message"],
        r#"sheet "Sheet1" is empty, and the workbook has no other sheet with data"#
    );
    // Hidden sheets with data are listed too: `sheet` can pick them.
    let hidden = raw_xlsx(
        &[
            RawSheet {
                name: "Old",
                hidden: true,
                rows: header(&["code"])
                    + r#"<row r="2"><c r="A2" t="inlineStr"><is><t>H</t></is></c></row>"#,
            },
            RawSheet {
                name: "Front",
                hidden: false,
                rows: String::new(),
            },
        ],
        &[],
        false,
        "",
    );
    let (status, body) = app.upload_bytes("items", "hidden.xlsx", hidden, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["message"],
        r#"sheet "Front" is empty; sheets with data: "Old" (choose one with the `sheet` option)"#
    );
}

/// A title sheet first ("Sales report 2024" in A1): its one cell is taken for the header, so the
/// required columns are missing — and the message says which sheets have data.
#[tokio::test]
async fn a_title_sheet_first_names_the_sheets_with_data_when_columns_are_missing() {
    use common::xlsx::{RawSheet, header, is, raw_xlsx};
    let app = items_app();
    let book = raw_xlsx(
        &[
            RawSheet {
                name: "Title",
                hidden: false,
                rows: format!("<row r=\"1\">{}</row>", is("A1", "Sales report 2024")),
            },
            RawSheet {
                name: "Data",
                hidden: false,
                rows: format!(
                    "{}<row r=\"2\">{}{}</row>",
                    header(&["code", "name"]),
                    is("A2", "T-1"),
                    is("B2", "Tea")
                ),
            },
        ],
        &[],
        false,
        "",
    );
    let want = r#"missing required column(s): code; this is sheet "Title"; sheets with data: "Data" (choose one with the `sheet` option)"#;
    let (status, body) = app
        .upload_bytes("items", "report.xlsx", book.clone(), &[])
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "missing_columns");
    assert_eq!(body["error"]["message"], want);
    let (status, body) = preview(&app, "report.xlsx", book.clone(), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["problems"][0]["message"], want);
    let s = import(&app, "report.xlsx", book, &[("sheet", "Data")]).await;
    assert_eq!(s["results"]["successCount"], 1, "{s}");
}

/// A package of one sheet part `sheet` under `xl/`, with a shared-string part `sst` (written
/// as given) if any.
fn xl_package(sheet: String, sst: Option<String>) -> Vec<u8> {
    let mut rels = vec![("rId1", "worksheet", "worksheets/sheet1.xml")];
    if sst.is_some() {
        rels.push(("rId2", "sharedStrings", "sharedStrings.xml"));
    }
    let mut parts = vec![
        ("[Content_Types].xml", TYPES.to_string()),
        (
            "_rels/.rels",
            rels_xml(&[("rId1", "officeDocument", "xl/workbook.xml")]),
        ),
        ("xl/workbook.xml", workbook_xml(&[("Sheet1", "rId1")])),
        ("xl/_rels/workbook.xml.rels", rels_xml(&rels)),
        ("xl/worksheets/sheet1.xml", sheet),
    ];
    if let Some(sst) = sst {
        parts.push(("xl/sharedStrings.xml", sst));
    }
    parts_xlsx(&parts)
}

/// A package whose one sheet declares the used range `dimension` and holds `rows`.
fn dimensioned(dimension: &str, rows: &str) -> Vec<u8> {
    xl_package(
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><dimension ref="{dimension}"/><sheetData>{rows}</sheetData></worksheet>"#
        ),
        None,
    )
}

fn coded_rows(prefix: &str, rows: impl IntoIterator<Item = usize>) -> String {
    let mut out = header(&["code", "name"]);
    for r in rows {
        out += &format!(
            "<row r=\"{r}\">{}{}</row>",
            common::xlsx::is(&format!("A{r}"), &format!("{prefix}{r}")),
            common::xlsx::is(&format!("B{r}"), "n")
        );
    }
    out
}

#[tokio::test]
async fn a_sheets_declared_range_is_only_the_progress_estimate_and_the_total_comes_out_exact() {
    // The progress total of an unsplit XLSX job is the sheet's `<dimension>` (no counting pass);
    // a writer's range may be too small or too large, and the finished job reports what it read.
    let app = items_app();
    let s = import(
        &app,
        "short.xlsx",
        dimensioned("A1:B5", &coded_rows("S", 2..=41)),
        &[],
    )
    .await;
    assert_eq!(s["progress"]["total"], 40, "{s}");
    assert_eq!(s["progress"]["current"], 40, "{s}");
    assert_eq!(s["results"]["totalRows"], 40, "{s}");
    assert_eq!(s["createdCount"], 40);
    // A range past the last row, and blank rows in between: only the rows with cells count.
    let rows = coded_rows("L", [2, 3, 7, 9]);
    let s = import(&app, "long.xlsx", dimensioned("A1:B$1000", &rows), &[]).await;
    assert_eq!(s["progress"]["total"], 4, "{s}");
    assert_eq!(s["progress"]["percentage"], 100, "{s}");
    assert_eq!(s["createdCount"], 4);
    assert_eq!(items(&app).len(), 44);
}

#[tokio::test]
async fn shared_strings_read_beside_the_sheet_give_every_cell_its_own_string() {
    // The shared strings are unpacked on a thread of their own while the sheet is read, and
    // handed to it every 64 KiB: a table of 12,032 strings (about 600 KB) arrives in several
    // hand-overs while the rows are read. The names follow the table in order; the keys run up
    // to 63 rows ahead of them and behind them (rows shuffled in blocks of 64).
    let app = items_app();
    let n = 6016usize;
    let strings: Vec<String> = (0..2 * n)
        .map(|i| format!("s{i:05}-{}", "w".repeat(i % 80)))
        .collect();
    let code_of = |r: usize| 2 * (r ^ 63);
    let mut rows = header(&["code", "name"]);
    for r in 0..n {
        let line = r + 2;
        rows += &format!(
            r#"<row r="{line}"><c r="A{line}" t="s"><v>{}</v></c><c r="B{line}" t="s"><v>{}</v></c></row>"#,
            code_of(r),
            2 * r + 1
        );
    }
    let refs: Vec<&str> = strings.iter().map(String::as_str).collect();
    let s = import(&app, "strings.xlsx", one_sheet(&rows, &refs), &[]).await;
    assert_eq!(s["results"]["successCount"], n, "{s}");
    let mut want: Vec<Item> = (0..n)
        .map(|r| {
            let name = strings[2 * r + 1].as_str();
            item(&strings[code_of(r)], Some(name), None, None)
        })
        .collect();
    want.sort();
    assert_eq!(items(&app), want);

    // A table damaged after every string the cells use still fails the file, as it did when
    // the table was read whole before the first row; now at the end of the sheet, so the
    // upload (which reads only the first row) is accepted and the job fails.
    let mut sst = shared_strings_xml(&refs);
    sst.insert_str(sst.len() - "</sst>".len(), "<si><t>&bogus;</t></si>");
    let rows = header(&["code", "name"])
        + r#"<row r="2"><c r="A2" t="s"><v>0</v></c><c r="B2" t="s"><v>1</v></c></row>"#;
    let (code, body) = app
        .upload_bytes(
            "items",
            "damaged.xlsx",
            xl_package(sheet_xml(&rows), Some(sst)),
            &[],
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "failed", "{s}");
    let message = s["error"].as_str().unwrap_or_default();
    assert!(message.contains("undefined XML entity `&bogus;`"), "{s}");
    assert_eq!(s["createdCount"], 0, "{s}");
    assert_eq!(items(&app).len(), n);
}
