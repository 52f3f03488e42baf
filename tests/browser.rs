//! The web UI end to end in real headless Chromium: `tests/browser/e2e.mjs` (Node +
//! playwright-core) signs in, previews and uploads a 50k-row file with errors, watches the bar
//! move and finish, checks the counts, pages the error table, downloads the rejected rows,
//! cancels a second import, uses `/sluice.js`, and takes screenshots (into
//! `target/screenshots/`). This test starts the server, makes the files, runs the script, and
//! checks through the API that the browser's actions really happened.
//!
//! Needs Debian's `chromium` and `npm ci` in `tests/browser` (`.ci/run` installs both), so it is
//! `#[ignore]`d in a plain `cargo test`; run it with `cargo test --test browser -- --ignored`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[tokio::test]
#[ignore = "needs chromium and tests/browser/node_modules; .ci/run runs it"]
async fn the_web_ui_imports_follows_cancels_and_downloads_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (see .ci/run)"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "run `npm ci` in tests/browser first (see .ci/run)"
    );
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
    let shots = root.join("target/screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("e2e.mjs")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser"))
            .env("SLUICE_URL", base)
            .env("SLUICE_TOKEN", TOKEN)
            .env("FILE_A", &file_a)
            .env("EXPECT_A", &expect_a)
            .env("FILE_B", &file_b)
            .env("SCREENSHOTS", &shots)
            .env("CHROMIUM", chromium)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();

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
    for name in [
        "02-dashboard.png",
        "03-preview.png",
        "04-active-import.png",
        "05-import-finished.png",
        "06-job-page.png",
        "07-second-import-cancelled.png",
        "08-phone-dashboard.png",
    ] {
        let bytes = std::fs::read(root.join("target/screenshots").join(name)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name} is a PNG");
    }
}
