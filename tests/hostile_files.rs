//! Hostile and broken files through the HTTP API: each is a 400 at upload when it can be seen
//! there, or a failed job with a clear message when only reading shows it; never a 5xx, and the
//! server keeps importing other files afterwards.

mod common;

use common::xlsx::{RawSheet, header, is, one_sheet, raw_xlsx};
use common::*;

const ITEMS: &str = r#"
[datasets.items]
key = ["code"]
[datasets.items.fields]
code = { type = "text", required = true }
name = { type = "text" }
"#;

fn valid_xlsx() -> Vec<u8> {
    one_sheet(
        &(header(&["code", "name"])
            + r#"<row r="2">"#
            + &is("A2", "OK1")
            + &is("B2", "fine")
            + "</row>"),
        &[],
    )
}

/// A little pseudo-random garbage (no NUL-free luck needed: it is deterministic).
fn garbage(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn assert_server_still_imports(app: &TestApp, name: &str) {
    let (code, body) = app.upload_bytes("items", name, valid_xlsx(), &[]).await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    let (code, _) = app.get_json("/healthz").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn hostile_files_are_400s_at_upload() {
    let app = spawn_app(AppOptions {
        datasets: Some(ITEMS.into()),
        ..Default::default()
    });
    let valid = valid_xlsx();
    let dtd = r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>"#;
    let entity_bomb = raw_xlsx(
        &[RawSheet {
            name: "Sheet1",
            hidden: false,
            rows: header(&["code", "name"])
                + r#"<row r="2"><c r="A2" t="inlineStr"><is><t>&lol3;</t></is></c></row>"#,
        }],
        &[],
        false,
        dtd,
    );
    let wide_row: String = (0..20_000)
        .map(|i| format!(r#"<c t="inlineStr"><is><t>h{i}</t></is></c>"#))
        .collect();
    let wide_xlsx = one_sheet(&format!(r#"<row r="1">{wide_row}</row>"#), &[]);
    let wide_csv = (0..20_000)
        .map(|i| format!("h{i}"))
        .collect::<Vec<_>>()
        .join(",")
        + "\n1\n";
    let big_cell = "x".repeat(10 * 1024 * 1024);
    let big_shared = one_sheet(
        &(header(&["code", "name"]) + r#"<row r="2"><c r="A2" t="s"><v>0</v></c></row>"#),
        &[&big_cell],
    );
    let big_inline = one_sheet(
        &(header(&["code", "name"]) + r#"<row r="2">"# + &is("A2", &big_cell) + "</row>"),
        &[],
    );
    let big_csv = format!("code,name\nA,{big_cell}\n").into_bytes();
    let no_sheets = raw_xlsx(&[], &[], false, "");
    let empty_sheet = one_sheet("", &[]);
    let only_empty_rows = one_sheet(
        &(header(&["code", "name"])
            + &(3..2000)
                .map(|r| format!(r#"<row r="{r}"/>"#))
                .collect::<String>()),
        &[],
    );
    let zip_not_workbook = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("readme.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, b"hello").unwrap();
        zip.finish().unwrap().into_inner()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.xlsx",
            valid[..valid.len() / 2].to_vec(),
            "unreadable_file",
        ),
        (
            "bomb.xlsx",
            fixture("hostile/bomb.xlsx"),
            "archive_too_large",
        ),
        ("entities.xlsx", entity_bomb, "unreadable_file"),
        ("wide.xlsx", wide_xlsx, "too_many_columns"),
        ("wide.csv", wide_csv.into_bytes(), "too_many_columns"),
        ("big-shared.xlsx", big_shared, "cell_too_large"),
        ("big-inline.xlsx", big_inline, "cell_too_large"),
        ("big.csv", big_csv, "cell_too_large"),
        ("garbage.xlsx", garbage(64 * 1024), "unsupported_format"),
        ("garbage.csv", garbage(100), "unsupported_format"),
        (
            "image.xlsx",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0".to_vec(),
            "unsupported_format",
        ),
        ("no-sheets.xlsx", no_sheets, "unreadable_file"),
        ("empty-sheet.xlsx", empty_sheet, "empty_file"),
        ("only-empty-rows.xlsx", only_empty_rows, "no_rows"),
        ("archive.zip", zip_not_workbook, "unsupported_format"),
        (
            "ole.xls",
            [
                &[0xD0u8, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1][..],
                &garbage(4096),
            ]
            .concat(),
            "unsupported_format",
        ),
    ];
    for (name, bytes, code) in cases {
        let (status, body) = app.upload_bytes("items", name, bytes, &[]).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("/tmp") && !message.contains("blobs"),
            "{name}: {message}"
        );
    }
    let (_, body) = app.get_json("/api/v1/import/jobs").await;
    assert_eq!(
        body["data"]["jobs"].as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
    assert_server_still_imports(&app, "after.xlsx").await;
}

#[tokio::test]
async fn the_unzipped_size_limit_is_a_server_flag() {
    let app = spawn_app(AppOptions {
        extra_args: vec!["--max-unzipped-mb".into(), "1".into()],
        ..Default::default()
    });
    let (file, _) = generate(app.dir.path(), "p.xlsx", &["--rows", "20000"]);
    let (status, body) = app.upload("products", &file).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "archive_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-unzipped-mb")
    );
}

#[tokio::test]
async fn a_million_empty_rows_are_skipped_quickly() {
    let app = spawn_app(AppOptions {
        datasets: Some(ITEMS.into()),
        ..Default::default()
    });
    let mut rows = header(&["code", "name"]);
    rows.push_str(r#"<row r="2">"#);
    rows.push_str(&is("A2", "first"));
    rows.push_str("</row>");
    for r in 3..1_000_003u32 {
        rows.push_str(&format!(r#"<row r="{r}"/>"#));
    }
    rows.push_str(r#"<row r="1000003">"#);
    rows.push_str(&is("A1000003", "last"));
    rows.push_str(r#"<c r="C1000003"><v>oops</v></c>"#);
    rows.push_str("</row>");
    let (code, body) = app
        .upload_bytes("items", "sparse.xlsx", one_sheet(&rows, &[]), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["results"]["totalRows"], 2);
    assert_eq!(s["results"]["successCount"], 1);
    // A value in a column without a header is a row error at its real row number.
    let errors = app.errors_json(job).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["row"], 1_000_003);
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("wrong_field_count")
    );
}

#[tokio::test]
async fn a_problem_seen_only_while_reading_fails_the_job_cleanly() {
    let app = spawn_app(AppOptions {
        datasets: Some(ITEMS.into()),
        batch_size: 10,
        ..Default::default()
    });
    let mut rows = header(&["code", "name"]);
    for r in 2..=50 {
        rows.push_str(&format!(r#"<row r="{r}">"#));
        rows.push_str(&is(&format!("A{r}"), &format!("K{r}")));
        rows.push_str("</row>");
    }
    rows.push_str(r#"<row r="51">"#);
    rows.push_str(&is("A51", "K51"));
    rows.push_str(&is("B51", &"y".repeat(10 * 1024 * 1024)));
    rows.push_str("</row>");
    let (code, body) = app
        .upload_bytes("items", "late.xlsx", one_sheet(&rows, &[]), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "failed", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("more than 1048576 bytes"), "{error}");
    // A truncated stream mid-sheet, too.
    let mut big = header(&["code", "name"]);
    for r in 2..=3000 {
        big.push_str(&format!(r#"<row r="{r}">"#));
        big.push_str(&is(
            &format!("A{r}"),
            &format!("T{r}-{}", "z".repeat(r as usize % 50)),
        ));
        big.push_str("</row>");
    }
    let whole = raw_xlsx(
        &[RawSheet {
            name: "S",
            hidden: false,
            rows: big,
        }],
        &[],
        false,
        "",
    );
    // Cut the sheet's compressed data in the middle while keeping the central directory: a
    // zero-filled hole makes the deflate stream invalid past the first rows.
    let mut broken = whole.clone();
    let start = broken.len() / 2;
    for b in &mut broken[start..start + 200] {
        *b = 0;
    }
    let (code, body) = app.upload_bytes("items", "hole.xlsx", broken, &[]).await;
    if code == 202 {
        let s = app.wait_done(job_id(&body), MINUTE).await;
        assert_eq!(s["status"], "failed", "{s}");
        let error = s["error"].as_str().unwrap();
        assert!(
            error.contains("damaged") || error.contains("malformed"),
            "{s}"
        );
    } else {
        assert_eq!(code, 400, "{body}");
    }
    assert_server_still_imports(&app, "after.xlsx").await;
}
