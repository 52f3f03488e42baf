//! Analysis (dry-run) jobs through the real binary, on SQLite and PostgreSQL: `dryRun=true`
//! classifies every row exactly as the import then does (counts, row errors, duplicate keys,
//! insert mode) while the dataset and history tables stay byte-identical; the report (XLSX read
//! by openpyxl, and JSON) carries the summary, every error and the column statistics;
//! `POST /{id}/run` imports the analysed file; a killed server's analysis starts over and
//! completes with exact counts.

#[macro_use]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

conformance!(
    an_analysis_counts_exactly_what_the_import_then_does_and_writes_nothing,
    insert_mode_analysis_rejects_existing_keys_like_the_import,
    run_and_report_refuse_what_is_not_a_completed_analysis,
    a_killed_server_s_analysis_starts_over_and_completes_exactly,
    cli_analyze_prints_the_summary_and_saves_the_report,
    retention_of_an_analysis_keeps_the_file_its_import_still_needs,
);

/// Every column of the dataset and history tables, in a fixed order: what "byte-identical"
/// compares.
type Rows = Vec<Vec<Option<String>>>;

fn dump(app: &TestApp) -> (Rows, Rows) {
    let mut db = app.db();
    (
        db.rows("SELECT * FROM products ORDER BY _sluice_org, sku"),
        db.rows("SELECT * FROM products_history ORDER BY id"),
    )
}

fn counts(s: &Value) -> [u64; 4] {
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    [
        n("createdCount"),
        n("updatedCount"),
        n("unchangedCount"),
        n("errorCount"),
    ]
}

fn error_rows(app: &TestApp, job: i64) -> Vec<Vec<Option<String>>> {
    app.db().rows(&format!(
        "SELECT \"row\", \"column\", value, message FROM job_errors WHERE job_id = {job} ORDER BY \"row\""
    ))
}

fn scratch_tables(app: &TestApp) -> i64 {
    let mut db = app.db();
    match app.pg_database {
        Some(_) => db.number(
            "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '\\_sluice\\_seen\\_%'",
        ),
        None => db.number(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_sluice\\_seen\\_%' ESCAPE '\\'",
        ),
    }
}

async fn analyse(app: &TestApp, file: &Path, fields: &[(&str, &str)]) -> (i64, Value) {
    let mut all = vec![("dryRun", "true")];
    all.extend_from_slice(fields);
    let (code, body) = app.upload_with("products", file, &all).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["message"], "Products analysis started in background");
    let id = job_id(&body);
    let done = app.wait_done(id, 3 * MINUTE).await;
    assert_eq!(done["status"], "completed", "{done}");
    (id, done)
}

/// The three sheets of a workbook as read by openpyxl: `{sheet: [[cell, …], …]}`.
fn openpyxl_sheets(path: &Path) -> Value {
    let script = r#"
import json, sys, openpyxl
wb = openpyxl.load_workbook(sys.argv[1], read_only=True)
out = {}
for ws in wb.worksheets:
    out[ws.title] = [[c for c in row] for row in ws.iter_rows(values_only=True)]
out["order"] = wb.sheetnames
print(json.dumps(out, default=str))
"#;
    python_json(script, path)
}

async fn download(app: &TestApp, path: &str) -> (u16, Vec<u8>) {
    let resp = app.get(path).send().await.expect("download");
    let code = resp.status().as_u16();
    (code, resp.bytes().await.unwrap_or_default().to_vec())
}

/// The analysed file: the generator's 10,000 rows with 5% bad ones, plus repeats of a few keys
/// (one in the same batch as its first, the others batches later).
fn analysed_file(dir: &Path) -> (std::path::PathBuf, Value) {
    let (file, expect) = generate(
        dir,
        "p.csv",
        &["--rows", "10000", "--error-rate", "0.05", "--seed", "41"],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    for i in [3usize, 10, 2_500, 7_000, 9_999] {
        writeln!(f, "{}", lines[i]).unwrap();
    }
    (file, expect)
}

async fn an_analysis_counts_exactly_what_the_import_then_does_and_writes_nothing(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 1_000,
        ..Default::default()
    });
    let dir = app.dir.path();
    let (file, expect) = analysed_file(dir);
    // The table holds half the file's keys: the first 3,000 rows as they are in the file
    // (unchanged), 2,000 more with other values (updated).
    let text = std::fs::read_to_string(&file).unwrap();
    let same: Vec<&str> = text.lines().take(3_001).collect();
    let same_path = dir.join("same.csv");
    std::fs::write(&same_path, same.join("\n") + "\n").unwrap();
    let (changed, _) = generate(
        dir,
        "changed.csv",
        &["--rows", "2000", "--seed", "42", "--start-sku", "3001"],
    );
    for f in [&same_path, &changed] {
        let j = job_id(&app.upload("products", f).await.1);
        assert_eq!(app.wait_done(j, MINUTE).await["status"], "completed");
    }

    let before = dump(&app);
    let (analysis, done) = analyse(&app, &file, &[]).await;
    assert_eq!(done["kind"], "analysis");
    assert_eq!(done["dryRun"], true);
    assert_eq!(dump(&app), before, "the analysis changed the tables");
    assert_eq!(
        scratch_tables(&app),
        0,
        "the scratch key table outlived the job"
    );
    let got = counts(&done);
    assert!(got[0] > 0 && got[1] > 0 && got[2] > 0, "{got:?}");
    // 5 repeated keys, and every bad row the generator made.
    let invalid = expect["invalid_rows"].as_u64().unwrap();
    assert_eq!(got[3], invalid + 5, "{done}");
    let summary = &done["summary"];
    assert_eq!(summary["wouldCreate"], got[0]);
    assert_eq!(summary["wouldUpdate"], got[1]);
    assert_eq!(summary["unchanged"], got[2]);
    assert_eq!(summary["errors"], got[3]);
    assert_eq!(summary["rows"], 10_005);
    let report_url = done["reportUrl"].as_str().expect("reportUrl").to_string();
    assert_eq!(report_url, format!("/api/v1/import/{analysis}/report"));
    let duplicates = error_rows(&app, analysis)
        .into_iter()
        .filter(|r| {
            r[3].as_deref()
                .is_some_and(|m| m.starts_with("duplicate key"))
        })
        .count();
    let in_file = expect["invalid_by_kind"]["duplicate_sku"].as_u64().unwrap() as usize;
    assert_eq!(duplicates, in_file + 5);

    // The real import of the analysed file, started from the analysis.
    let resp = app
        .post(&format!("/api/v1/import/{analysis}/run"))
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 202, "{body}");
    let import = job_id(&body);
    let imported = app.wait_done(import, 3 * MINUTE).await;
    assert_eq!(imported["status"], "completed", "{imported}");
    assert_eq!(imported["kind"], "import");
    assert_eq!(imported["analysisOf"], analysis);
    assert_eq!(counts(&imported), got, "analysis {done}\nimport {imported}");
    assert_eq!(error_rows(&app, import), error_rows(&app, analysis));
    assert_ne!(dump(&app), before);

    // The report as JSON: the same counts, every error, the statistics.
    let (code, json) = download(&app, &format!("{report_url}?format=json")).await;
    assert_eq!(code, 200);
    let report: Value = serde_json::from_slice(&json).expect("JSON report");
    assert_eq!(report["summary"]["wouldCreate"], got[0]);
    assert_eq!(report["summary"]["wouldUpdate"], got[1]);
    assert_eq!(report["summary"]["unchanged"], got[2]);
    assert_eq!(report["summary"]["errors"], got[3]);
    assert_eq!(report["summary"]["filename"], "p.csv");
    assert_eq!(report["summary"]["sha256"], done["sha256"]);
    assert_eq!(report["errorsOmitted"], 0);
    let errors = report["errors"].as_array().unwrap();
    let want_errors: Vec<Vec<Option<String>>> = error_rows(&app, analysis);
    assert_eq!(errors.len(), want_errors.len());
    for (e, w) in errors.iter().zip(&want_errors) {
        assert_eq!(
            e["row"].as_u64().unwrap().to_string(),
            w[0].clone().unwrap()
        );
        assert_eq!(e["column"].as_str().map(str::to_string), w[1]);
        assert_eq!(e["value"].as_str().map(str::to_string), w[2]);
        assert_eq!(e["message"].as_str().map(str::to_string), w[3]);
    }
    let by_column: u64 = report["summary"]["errorsByColumn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(by_column, got[3]);
    // Column statistics against the rows the import wrote (their values came from the file).
    let columns = report["columns"].as_array().unwrap();
    let col = |f: &str| {
        columns
            .iter()
            .find(|c| c["field"] == f)
            .unwrap_or_else(|| panic!("no column {f}"))
            .clone()
    };
    let mut db = app.db();
    let stamped = format!("FROM products WHERE _sluice_job = {import}");
    let prices: Vec<f64> = db
        .rows(&format!("SELECT price {stamped} AND price IS NOT NULL"))
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    let min = prices.iter().copied().fold(f64::INFINITY, f64::min);
    let max = prices.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let price = col("price");
    assert_eq!(price["type"], "decimal");
    assert_eq!(price["min"].as_str().unwrap().parse::<f64>().unwrap(), min);
    assert_eq!(price["max"].as_str().unwrap().parse::<f64>().unwrap(), max);
    assert_eq!(price["confidence"], 100);
    let dates = db.rows(&format!(
        "SELECT min(updated_at), max(updated_at) {stamped}"
    ));
    let updated = col("updated_at");
    let day = |v: &Option<String>| v.as_deref().unwrap()[..10].to_string();
    assert_eq!(updated["min"].as_str().unwrap(), day(&dates[0][0]));
    assert_eq!(updated["max"].as_str().unwrap(), day(&dates[0][1]));
    let sku = col("sku");
    assert!(!sku["distinctOverCap"].as_bool().unwrap());
    // Every key once, the 5 repeats not again; rows without a sku hold none.
    let blank_skus = text
        .lines()
        .skip(1)
        .filter(|l| l.split(',').next().is_none_or(|s| s.trim().is_empty()))
        .count() as u64;
    assert_eq!(sku["filled"].as_u64().unwrap(), 10_005 - blank_skus);
    assert!(sku["distinct"].as_u64().unwrap() <= 10_000 - blank_skus);
    assert!(sku["distinct"].as_u64().unwrap() >= 10_000 - blank_skus - invalid);
    let filled = sku["filledPercent"].as_f64().unwrap();
    let want = ((10_005 - blank_skus) as f64 * 10_000.0 / 10_005.0).round() / 100.0;
    assert!((filled - want).abs() < 1e-9, "{filled} vs {want}");
    let invalid_samples: usize = columns
        .iter()
        .map(|c| c["invalidSamples"].as_array().unwrap().len())
        .sum();
    assert!(invalid_samples > 0);

    // The workbook, read by openpyxl: the same summary, every error, the same statistics.
    let (code, xlsx) = download(&app, &report_url).await;
    assert_eq!(code, 200);
    let path = dir.join("report.xlsx");
    std::fs::write(&path, &xlsx).unwrap();
    let sheets = openpyxl_sheets(&path);
    assert_eq!(
        sheets["order"],
        serde_json::json!(["Summary", "Errors", "Columns"])
    );
    let summary_sheet = sheets["Summary"].as_array().unwrap();
    let line = |label: &str| -> Value {
        summary_sheet
            .iter()
            .find(|r| r[0] == label)
            .unwrap_or_else(|| panic!("no {label} line"))[1]
            .clone()
    };
    assert_eq!(line("File"), "p.csv");
    assert_eq!(line("SHA-256"), done["sha256"]);
    assert_eq!(line("Would create").as_f64().unwrap() as u64, got[0]);
    assert_eq!(line("Would update").as_f64().unwrap() as u64, got[1]);
    assert_eq!(line("Unchanged").as_f64().unwrap() as u64, got[2]);
    assert_eq!(line("Errors").as_f64().unwrap() as u64, got[3]);
    assert!(summary_sheet.iter().any(|r| r[0] == "Errors by column"));
    assert!(summary_sheet.iter().any(|r| r[0] == "Errors by message"));
    let error_sheet = sheets["Errors"].as_array().unwrap();
    assert_eq!(
        error_sheet[0],
        serde_json::json!(["Row", "Column", "Value", "Message"])
    );
    assert_eq!(error_sheet.len() - 1, want_errors.len());
    for (r, w) in error_sheet[1..].iter().zip(&want_errors) {
        assert_eq!(
            (r[0].as_f64().unwrap() as u64).to_string(),
            w[0].clone().unwrap()
        );
        assert_eq!(r[3].as_str().map(str::to_string), w[3]);
    }
    let column_sheet = sheets["Columns"].as_array().unwrap();
    assert_eq!(column_sheet.len() - 1, columns.len());
    for (r, c) in column_sheet[1..].iter().zip(columns) {
        assert_eq!(r[0], c["header"]);
        assert_eq!(r[1], c["field"]);
        assert_eq!(r[2], c["type"]);
        assert_eq!(r[3].as_f64(), c["filledPercent"].as_f64());
        assert_eq!(r[5].as_f64().map(|d| d as u64), c["distinct"].as_u64());
        assert_eq!(r[6].as_str().unwrap_or(""), c["min"].as_str().unwrap_or(""));
        assert_eq!(r[7].as_str().unwrap_or(""), c["max"].as_str().unwrap_or(""));
    }
}

async fn insert_mode_analysis_rejects_existing_keys_like_the_import(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 300,
        ..Default::default()
    });
    let dir = app.dir.path();
    let (base, _) = generate(dir, "base.csv", &["--rows", "500", "--seed", "5"]);
    let (file, _) = generate(
        dir,
        "p.csv",
        &[
            "--rows",
            "1000",
            "--error-rate",
            "0.02",
            "--seed",
            "6",
            "--start-sku",
            "251",
        ],
    );
    let j = job_id(&app.upload("products", &base).await.1);
    app.wait_done(j, MINUTE).await;
    let before = dump(&app);
    let (analysis, done) = analyse(&app, &file, &[("mode", "insert")]).await;
    assert_eq!(done["mode"], "insert");
    assert_eq!(dump(&app), before);
    let got = counts(&done);
    assert_eq!(
        got[1] + got[2],
        0,
        "insert mode neither updates nor keeps: {done}"
    );
    let existing = error_rows(&app, analysis)
        .iter()
        .filter(|r| r[3].as_deref() == Some("key already exists (mode=insert)"))
        .count();
    assert!(existing >= 200, "{existing}");
    let (code, body) = app
        .upload_with("products", &file, &[("mode", "insert")])
        .await;
    assert_eq!(code, 202, "{body}");
    let import = job_id(&body);
    let imported = app.wait_done(import, MINUTE).await;
    assert_eq!(counts(&imported), got);
    assert_eq!(error_rows(&app, import), error_rows(&app, analysis));
}

async fn run_and_report_refuse_what_is_not_a_completed_analysis(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        ..Default::default()
    });
    let dir = app.dir.path();
    let (file, _) = generate(dir, "p.csv", &["--rows", "50", "--seed", "8"]);
    let (code, body) = app
        .upload_with("products", &file, &[("dryRun", "maybe")])
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_dry_run");
    let (code, body) = app
        .upload_with("products", &file, &[("dryRun", "true")])
        .await;
    assert_eq!(code, 202, "{body}");
    let pending = job_id(&body);
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(
        code, 202,
        "an analysis is no duplicate of an import: {body}"
    );
    let import = job_id(&body);
    let post = |id: i64| app.post(&format!("/api/v1/import/{id}/run")).send();
    let (code, body) = json_of(post(pending).await.unwrap()).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "not_ready".into()),
        "{body}"
    );
    let (code, body) = json_of(post(import).await.unwrap()).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "not_analysis".into()),
        "{body}"
    );
    let (code, body) = app
        .get_json(&format!("/api/v1/import/{pending}/report"))
        .await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "not_ready".into()),
        "{body}"
    );
    let (code, body) = app
        .get_json(&format!("/api/v1/import/{import}/report?format=json"))
        .await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = app
        .get_json(&format!("/api/v1/import/{pending}/report?format=pdf"))
        .await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (400, "invalid_format".into()),
        "{body}"
    );
    let status = app.status(pending).await;
    assert_eq!(status["kind"], "analysis");
    assert_eq!(status["dryRun"], true);
    assert!(status.get("reportUrl").is_none());
    // Another organisation sees none of it.
    let (_, other) = org_with_admin(&app, "other");
    for path in [
        format!("/api/v1/import/{pending}/report"),
        format!("/api/v1/import/status/{pending}"),
    ] {
        let resp = app
            .http
            .get(app.url(&path))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
    }
    let resp = app
        .http
        .post(app.url(&format!("/api/v1/import/{pending}/run")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

async fn a_killed_server_s_analysis_starts_over_and_completes_exactly(backend: Backend) {
    let options = || AppOptions {
        backend,
        batch_size: 200,
        lease_seconds: 1,
        ..Default::default()
    };
    let reference = spawn_app(options());
    let dir = reference.dir.path();
    let (base, _) = generate(dir, "base.csv", &["--rows", "5000", "--seed", "12"]);
    let (file, _) = generate(
        dir,
        "p.csv",
        &[
            "--rows",
            "20000",
            "--error-rate",
            "0.03",
            "--seed",
            "13",
            "--start-sku",
            "2501",
        ],
    );
    let j = job_id(&reference.upload("products", &base).await.1);
    reference.wait_done(j, MINUTE).await;
    let (want_job, want) = analyse(&reference, &file, &[]).await;
    let want_errors = error_rows(&reference, want_job);

    let mut app = spawn_app(options());
    let j = job_id(&app.upload("products", &base).await.1);
    app.wait_done(j, MINUTE).await;
    let before = dump(&app);
    let (code, body) = app
        .upload_with("products", &file, &[("dryRun", "true")])
        .await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    let start = Instant::now();
    loop {
        let s = app.status(job).await;
        assert_ne!(
            s["status"], "completed",
            "finished before the kill; raise the rows"
        );
        if s["progress"]["current"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(start.elapsed() < MINUTE, "no progress: {s}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    app.kill();
    app.start();
    let done = app.wait_done(job, 3 * MINUTE).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["attempts"].as_u64().unwrap() >= 2, "{done}");
    assert_eq!(counts(&done), counts(&want));
    assert_eq!(done["summary"]["rows"], want["summary"]["rows"]);
    let got_errors = error_rows(&app, job);
    assert_eq!(got_errors.len(), want_errors.len());
    assert_eq!(got_errors, want_errors);
    assert_eq!(dump(&app), before);
    assert_eq!(scratch_tables(&app), 0);
    let (code, json) = download(&app, &format!("/api/v1/import/{job}/report?format=json")).await;
    assert_eq!(code, 200);
    let report: Value = serde_json::from_slice(&json).unwrap();
    let (_, json) = download(
        &reference,
        &format!("/api/v1/import/{want_job}/report?format=json"),
    )
    .await;
    let want_report: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(report["columns"], want_report["columns"]);
    assert_eq!(report["errors"], want_report["errors"]);
}

async fn cli_analyze_prints_the_summary_and_saves_the_report(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let dir = app.dir.path();
    let (file, expect) = generate(
        dir,
        "p.csv",
        &["--rows", "2000", "--error-rate", "0.05", "--seed", "21"],
    );
    let run = |args: &[&str]| {
        Command::new(binary())
            .args(args)
            .env("SLUICE_SERVER", &app.base)
            .env("SLUICE_TOKEN", TOKEN)
            .output()
            .expect("run sluice")
    };
    let report = dir.join("r.xlsx");
    let out = run(&[
        "analyze",
        file.to_str().unwrap(),
        "--dataset",
        "products",
        "--report",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (valid, invalid) = (
        expect["valid_rows"].as_u64().unwrap(),
        expect["invalid_rows"].as_u64().unwrap(),
    );
    assert!(stdout.contains(": completed"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "would create {valid} · would update 0 · unchanged 0 · errors {invalid}"
        )),
        "{stdout}"
    );
    let sheets = openpyxl_sheets(&report);
    assert_eq!(
        sheets["Errors"].as_array().unwrap().len() as u64,
        invalid + 1
    );
    assert_eq!(app.db().number("SELECT count(*) FROM products"), 0);
    let json = dir.join("r.json");
    let out = run(&[
        "analyze",
        file.to_str().unwrap(),
        "--dataset",
        "products",
        "--json",
        "--report",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("--json");
    assert_eq!(status["kind"], "analysis");
    assert_eq!(status["createdCount"], valid);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["summary"]["wouldCreate"], valid);
    assert_eq!(report["errors"].as_array().unwrap().len() as u64, invalid);
}

async fn retention_of_an_analysis_keeps_the_file_its_import_still_needs(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        extra_args: vec!["--retain-files".into(), "1s".into()],
        ..Default::default()
    });
    let dir = app.dir.path();
    let (file, _) = generate(
        dir,
        "p.csv",
        &["--rows", "300", "--error-rate", "0.05", "--seed", "3"],
    );
    let worker = app.spawn_worker(1);
    let (analysis, done) = analyse(&app, &file, &[]).await;
    app.kill_worker(worker);
    // The upload and the two report files.
    assert_eq!(app.blob_count(), 3);
    let resp = app
        .post(&format!("/api/v1/import/{analysis}/run"))
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 202, "{body}");
    let import = job_id(&body);
    // Retention removes the finished analysis's files: its reports go, the upload its pending
    // import names stays. The job stops naming its files before they are removed.
    let start = Instant::now();
    while app.status(analysis).await["fileRetained"] == true || app.blob_count() > 1 {
        assert!(
            start.elapsed() < MINUTE,
            "the analysis's files were never swept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.blob_count(), 1);
    let (code, body) = app
        .get_json(&format!("/api/v1/import/{analysis}/report"))
        .await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "report_gone".into())
    );
    let resp = app
        .post(&format!("/api/v1/import/{analysis}/run"))
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(resp).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "file_gone".into())
    );
    app.spawn_worker(1);
    let imported = app.wait_done(import, MINUTE).await;
    assert_eq!(imported["status"], "completed", "{imported}");
    assert_eq!(counts(&imported), counts(&done));
}
