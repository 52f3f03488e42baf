//! The web UI end to end in real headless Chromium, driven by Node scripts (playwright-core).
//!
//! - `tests/browser/e2e.mjs` signs in, previews and uploads a 50k-row file with errors, watches
//!   the bar move and finish, checks the counts, pages the error table, downloads the rejected
//!   rows, cancels a second import, uses `/sluice.js`, and takes screenshots.
//! - `tests/browser/sources.mjs` creates a directory source through the Sources page's form (on
//!   a server started with `--source-root`), presses "Run now", follows the run to its job and
//!   sees its counts, sees the API's 400 message beside the field it is about, and creates a URL
//!   source whose secret header is nowhere in the page afterwards.
//!
//! Each test starts its server, makes the files, runs its script, and checks through the API that
//! the browser's actions really happened. Screenshots go to `target/screenshots/`. The two take
//! turns (one Chromium at a time), so neither slows the other's timing on a small machine.
//!
//! Needs Debian's `chromium` and `npm ci` in `tests/browser` (`.ci/run` installs both), so they
//! are `#[ignore]`d in a plain `cargo test`; run them with `cargo test --test browser -- --ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// One browser test at a time: two servers and two Chromiums on a two-core CI machine would
/// slow each other's live-progress checks.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Chromium to drive, once it and playwright-core are known to be there.
fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (see .ci/run)"
    );
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "run `npm ci` in tests/browser first (see .ci/run)"
    );
    chromium
}

/// Runs `tests/browser/{script}` with these variables (and `CHROMIUM`); its last line of output,
/// a JSON summary, once it succeeded.
async fn run_script(script: &'static str, vars: Vec<(&'static str, String)>) -> serde_json::Value {
    let chromium = chromium();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser"))
            .envs(vars)
            .env("CHROMIUM", chromium)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser test {script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// `target/screenshots/`, without the files of an earlier run whose names start with one of
/// `stale` (each test its own: the other's stay).
fn screenshots(stale: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale.iter().any(|s| name.starts_with(s)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    dir
}

fn assert_screenshots(names: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    for name in names {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name} is a PNG");
    }
}

#[tokio::test]
#[ignore = "needs chromium and tests/browser/node_modules; .ci/run runs it"]
async fn the_web_ui_imports_follows_cancels_and_downloads_in_a_real_browser() {
    let _turn = ONE_BROWSER.lock().await;
    chromium();
    let app = spawn_app(AppOptions {
        batch_size: 500,
        ..AppOptions::default()
    });
    let (file_a, _) = generate(
        app.dir.path(),
        "products-50k.csv",
        &["--rows", "50000", "--error-rate", "0.05", "--seed", "6"],
    );
    let expect_a = app.dir.path().join("products-50k.csv.expect.json");
    let (file_b, _) = generate(
        app.dir.path(),
        "products-400k.csv",
        &["--rows", "400000", "--seed", "7", "--start-sku", "2000001"],
    );
    let shots = screenshots(&["0", "10", "11", "12", "failure"]);
    let summary = run_script(
        "e2e.mjs",
        vec![
            ("SLUICE_URL", app.base.clone()),
            ("SLUICE_TOKEN", TOKEN.to_string()),
            ("FILE_A", file_a.display().to_string()),
            ("EXPECT_A", expect_a.display().to_string()),
            ("FILE_B", file_b.display().to_string()),
            ("SCREENSHOTS", shots.display().to_string()),
        ],
    )
    .await;

    // What the browser did, seen through the API.
    let expect: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(app.dir.path().join("products-50k.csv.expect.json")).unwrap(),
    )
    .unwrap();
    let a = app.status(summary["jobA"].as_i64().unwrap()).await;
    assert_eq!(a["status"], "completed");
    assert_eq!(a["filename"], "products-50k.csv");
    assert_eq!(a["results"]["successCount"], expect["valid_rows"]);
    assert_eq!(a["results"]["errorCount"], expect["invalid_rows"]);
    let b = app.status(summary["jobB"].as_i64().unwrap()).await;
    assert_eq!(b["status"], "cancelled");
    assert!(b["progress"]["current"].as_u64().unwrap() < 400_000);
    assert_screenshots(&[
        "02-dashboard.png",
        "03-preview.png",
        "04-active-import.png",
        "05-import-finished.png",
        "06-job-page.png",
        "07-second-import-cancelled.png",
        "08-phone-dashboard.png",
    ]);
}

#[tokio::test]
#[ignore = "needs chromium and tests/browser/node_modules; .ci/run runs it"]
async fn the_web_ui_creates_a_directory_source_with_its_form_and_runs_it() {
    let _turn = ONE_BROWSER.lock().await;
    chromium();
    let roots = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(roots.path()).unwrap();
    let drop = root.join("prices");
    std::fs::create_dir(&drop).unwrap();
    let app = spawn_app(AppOptions {
        extra_args: vec![
            "--source-root".into(),
            root.display().to_string(),
            // The URL source the script creates points at 127.0.0.1 (it never runs).
            "--source-allow-private".into(),
        ],
        ..AppOptions::default()
    });
    // Made beside the server's files, then dropped whole into the source's directory.
    let (made, expect) = generate(
        app.dir.path(),
        "prices-1.csv",
        &["--rows", "300", "--error-rate", "0.05", "--seed", "11"],
    );
    let file = drop.join("prices-1.csv");
    std::fs::rename(&made, &file).unwrap();
    let shots = screenshots(&["2", "sources-failure"]);
    let summary = run_script(
        "sources.mjs",
        vec![
            ("SLUICE_URL", app.base.clone()),
            ("SLUICE_TOKEN", TOKEN.to_string()),
            ("DROP_DIR", drop.display().to_string()),
            (
                "EXPECT",
                app.dir
                    .path()
                    .join("prices-1.csv.expect.json")
                    .display()
                    .to_string(),
            ),
            ("BAD_PATH", app.dir.path().display().to_string()),
            ("SCREENSHOTS", shots.display().to_string()),
        ],
    )
    .await;

    // The source as the form sent it, through the API.
    let id = summary["sourceId"].as_i64().unwrap();
    let (status, body) = app.get_json(&format!("/api/v1/sources/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let src = &body["data"];
    assert_eq!(src["name"], "drop-prices");
    assert_eq!(src["dataset"], "products");
    assert_eq!(src["kind"], "directory");
    assert_eq!(src["path"], drop.display().to_string());
    assert_eq!(src["glob"], "*.csv");
    assert_eq!(src["stableSeconds"], 0);
    assert_eq!(src["after"], "move");
    assert_eq!(src["moveTo"], drop.join("done").display().to_string());
    assert_eq!(src["schedule"], serde_json::json!({"every": "1h"}));
    assert_eq!(src["pick"], "all-new");
    assert_eq!(src["options"], serde_json::json!({"mode": "upsert"}));
    assert_eq!(
        src["notify"],
        serde_json::json!(["ops@example.com", "buyer@example.com"])
    );
    // Its one run imported the file, whose job created the file's valid rows, and moved it.
    let (_, runs) = app.get_json(&format!("/api/v1/sources/{id}/runs")).await;
    let runs = runs["data"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "imported");
    assert_eq!(runs[0]["jobId"], summary["jobId"]);
    let job = app.status(summary["jobId"].as_i64().unwrap()).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["filename"], "prices-1.csv");
    assert_eq!(job["results"]["createdCount"], expect["valid_rows"]);
    assert_eq!(job["results"]["errorCount"], expect["invalid_rows"]);
    assert!(!file.exists() && drop.join("done/prices-1.csv").exists());
    assert_eq!(
        app.db().number(&format!(
            "SELECT count(*) FROM products WHERE _sluice_job = {}",
            summary["jobId"]
        )),
        expect["valid_rows"].as_i64().unwrap()
    );

    // The refused sources were not made; the URL source keeps its header's value to itself.
    let (_, list) = app.get_json("/api/v1/sources").await;
    let names: Vec<&str> = list["data"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"drop-prices") && names.contains(&"supplier-url"));
    let url_id = summary["urlId"].as_i64().unwrap();
    let (_, url) = app.get_json(&format!("/api/v1/sources/{url_id}")).await;
    assert_eq!(url["data"]["url"], "http://127.0.0.1:9/prices.csv");
    assert_eq!(
        url["data"]["headerNames"],
        serde_json::json!(["Authorization", "X-Supplier"])
    );
    assert_eq!(
        url["data"]["schedule"],
        serde_json::json!({"cron": "0 3 1 1 *", "timezone": "Europe/Berlin"})
    );
    assert!(!url.to_string().contains("s3cret"), "{url}");

    assert_screenshots(&[
        "20-source-form.png",
        "21-source-created.png",
        "22-source-run.png",
        "23-source-job.png",
        "24-source-error.png",
        "25-sources.png",
        "26-phone-sources.png",
    ]);
}
