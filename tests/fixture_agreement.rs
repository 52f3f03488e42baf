//! The preview and the import against each other over every file in `tests/fixtures/`: the
//! preview must never refuse what the import accepts, nor accept what it refuses, and the rows it
//! shows must be the rows the import writes — the same values, the same row errors.
//!
//! Each file is mapped by position onto a dataset of text fields (`c1` … `c40`, key `c1`), so
//! the comparison is of reading, not of typing: every column lands in the table as read.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

/// The fixtures both must refuse, with the code both must give; every other one is accepted.
const REFUSED: &[(&str, &str)] = &[
    ("csv/header_only.csv", "no_rows"),
    ("hostile/bomb.xlsx", "archive_too_large"),
    ("libreoffice/items.fods", "unsupported_format"),
    ("markup/spreadsheetml_2003.xml", "unsupported_format"),
    ("markup/web_export.xls", "unsupported_format"),
    ("office/slides.pptx", "unsupported_format"),
    ("office/table.docx", "unsupported_format"),
    // The first visible sheet is an empty cover; the message lists the sheets with data.
    ("openpyxl/cover_first.xlsx", "empty_file"),
    ("xlwt/cover_first.xls", "empty_file"),
];

/// Columns mapped; fixtures are narrower.
const COLUMNS: usize = 40;

fn dataset() -> String {
    let mut toml = String::from("[datasets.corpus]\nkey = [\"c1\"]\n[datasets.corpus.fields]\n");
    for i in 1..=COLUMNS {
        toml.push_str(&format!(
            "c{i} = {{ type = \"text\"{} }}\n",
            if i == 1 { ", required = true" } else { "" }
        ));
    }
    toml
}

/// Every fixture file (not the READMEs, scripts and this test's options).
fn corpus() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("md" | "py" | "json")
            ) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&fixtures_dir(), &mut out);
    out.sort();
    out
}

/// What the server said of a file: accepted, or refused with an error code.
#[derive(Debug, PartialEq)]
enum Verdict {
    Accepted,
    Refused(String),
}

async fn send(
    app: &TestApp,
    path: &str,
    file: &Path,
    fields: &BTreeMap<String, String>,
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.clone(), v.clone());
    }
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(file).unwrap()).file_name(name),
    );
    json_of(app.post(path).multipart(form).send().await.unwrap()).await
}

/// The preview's verdict: a 400, or a 200 whose `problems` would stop an import.
fn preview_verdict(code: u16, body: &Value) -> Verdict {
    match code {
        200 => match body["data"]["problems"][0]["code"].as_str() {
            Some(problem) => Verdict::Refused(problem.to_string()),
            None => Verdict::Accepted,
        },
        400 => Verdict::Refused(body["error"]["code"].as_str().unwrap_or("?").to_string()),
        _ => panic!("preview answered {code}: {body}"),
    }
}

fn upload_verdict(code: u16, body: &Value) -> Verdict {
    match code {
        202 => Verdict::Accepted,
        400 => Verdict::Refused(body["error"]["code"].as_str().unwrap_or("?").to_string()),
        _ => panic!("upload answered {code}: {body}"),
    }
}

/// A cell as a text field stores it: blank is NULL, anything else kept as read.
fn stored(value: &Value) -> Option<String> {
    value
        .as_str()
        .filter(|v| !v.trim().is_empty())
        .map(str::to_string)
}

#[tokio::test]
async fn preview_and_import_agree_on_every_fixture() {
    let app = spawn_app(AppOptions {
        datasets: Some(dataset()),
        ..Default::default()
    });
    let options: BTreeMap<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("options.json")).unwrap(),
    )
    .unwrap();
    let files = corpus();
    assert!(files.len() >= 10, "the corpus is too small: {files:?}");
    let mut report = Vec::new();
    let (mut compared, mut rows_compared) = (0, 0);
    for file in &files {
        let rel = file
            .strip_prefix(fixtures_dir())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut fields: BTreeMap<String, String> = options
            .get(&rel)
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        // First the preview alone, for the number of columns; then both with every column
        // mapped by position.
        fields.insert("mapping".into(), json!({"#1": "c1"}).to_string());
        // The table then holds this file's rows only.
        fields.insert("mode".into(), "replace".into());
        let (code, first) = send(&app, "/api/v1/import/corpus/preview", file, &fields).await;
        if let Some(headers) = first["data"]["headers"].as_array() {
            let mapping: BTreeMap<String, String> = (1..=headers.len().min(COLUMNS))
                .map(|i| (format!("#{i}"), format!("c{i}")))
                .collect();
            fields.insert("mapping".into(), json!(mapping).to_string());
        }
        let (pcode, preview) = if code == 200 {
            send(&app, "/api/v1/import/corpus/preview", file, &fields).await
        } else {
            (code, first)
        };
        let (ucode, upload) = send(&app, "/api/v1/import/corpus", file, &fields).await;
        let (pv, uv) = (
            preview_verdict(pcode, &preview),
            upload_verdict(ucode, &upload),
        );
        assert_eq!(pv, uv, "{rel}: preview {preview} / upload {upload}");
        let want = REFUSED
            .iter()
            .find(|(f, _)| *f == rel)
            .map_or(Verdict::Accepted, |(_, code)| {
                Verdict::Refused(code.to_string())
            });
        assert_eq!(uv, want, "{rel}: {upload}");
        report.push(format!("{rel}: {uv:?}"));
        compared += 1;
        if uv != Verdict::Accepted {
            continue;
        }
        let job = job_id(&upload);
        let status = app.wait_done(job, MINUTE).await;
        assert_eq!(status["status"], "completed", "{rel}: {status}");
        let d = &preview["data"];
        let shown = d["rows"].as_array().unwrap();
        assert!(!shown.is_empty(), "{rel}: {d}");
        let last = shown.last().unwrap()["row"].as_i64().unwrap();
        // The same row errors among the rows shown.
        let preview_errors: BTreeSet<i64> = d["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["row"].as_i64().unwrap())
            .collect();
        let import_errors: BTreeSet<i64> = app
            .errors_json(job)
            .await
            .iter()
            .map(|e| e["row"].as_i64().unwrap())
            .filter(|&r| r <= last)
            .collect();
        assert_eq!(preview_errors, import_errors, "{rel}: {d}");
        // The same values in every row written.
        let width = d["headers"].as_array().unwrap().len().min(COLUMNS);
        let columns: Vec<String> = (1..=width).map(|i| format!("c{i}")).collect();
        let mut db = app.db();
        for row in shown {
            let n = row["row"].as_i64().unwrap();
            if preview_errors.contains(&n) {
                continue;
            }
            let values: Vec<Option<String>> = row["values"]
                .as_array()
                .unwrap()
                .iter()
                .take(width)
                .map(stored)
                .collect();
            let written = db.rows(&format!(
                "SELECT {} FROM corpus WHERE _sluice_row = {n}",
                columns.join(", ")
            ));
            assert_eq!(written, vec![values], "{rel} row {n}");
            rows_compared += 1;
        }
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(compared, files.len());
    assert!(rows_compared >= 20, "only {rows_compared} rows compared");
}
