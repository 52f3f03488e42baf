//! The CLI binary against a real server: import with --wait, status, jobs, errors, and a clear
//! failure for a bad file or a bad datasets.toml.

#[macro_use]
mod common;

use std::process::Command;

use common::*;

fn sluice(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env("SLUICE_SERVER", &app.base)
        .env("SLUICE_TOKEN", TOKEN)
        .output()
        .expect("run sluice")
}

async fn cli_imports_waits_and_downloads_rejected_rows(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "3000", "--error-rate", "0.1", "--seed", "5"],
    );
    let out = sluice(
        &app,
        &[
            "import",
            file.to_str().unwrap(),
            "--dataset",
            "products",
            "--wait",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let valid = expect["valid_rows"].as_u64().unwrap();
    let invalid = expect["invalid_rows"].as_u64().unwrap();
    assert!(stdout.contains(": completed"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "created {valid} · updated 0 · unchanged 0 · errors {invalid}"
        )),
        "{stdout}"
    );

    let rejected = app.path("rejected.csv");
    let out = sluice(&app, &["errors", "1", "--out", rejected.to_str().unwrap()]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&rejected).unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    assert_eq!(reader.records().count() as u64, invalid);

    let out = sluice(&app, &["status", "1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"));
    let out = sluice(&app, &["jobs"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 job(s) in all"));

    // A bad file: non-zero exit with the API's message.
    let bad = app.path("bad.csv");
    std::fs::write(&bad, "sku,price\nA,1\n").unwrap();
    let out = sluice(
        &app,
        &["import", bad.to_str().unwrap(), "--dataset", "products"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing_columns"));
    // A wrong token: non-zero exit that says so.
    let out = Command::new(binary())
        .args(["jobs", "--server", &app.base, "--token", "wrong"])
        .env_remove("SLUICE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn a_bad_datasets_file_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datasets.toml");
    std::fs::write(&path, "[datasets.items]\nkey = [\"id\"]\n[datasets.items.fields]\nid = { type = \"text\" }\nprice = { type = \"money\" }\n").unwrap();
    let out = Command::new(binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--datasets",
            path.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5"), "{err}");
}

/// `--sheet` and `--encoding` reach the server from the CLI.
async fn cli_passes_the_sheet_and_the_encoding(backend: Backend) {
    use common::xlsx::{RawSheet, header, is, raw_xlsx};
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let row = |sku: &str, name: &str| {
        format!(
            r#"<row r="2">{}{}{}</row>"#,
            is("A2", sku),
            is("B2", name),
            is("C2", "2024-05-06")
        )
    };
    let book = raw_xlsx(
        &[
            RawSheet {
                name: "Notes",
                hidden: false,
                rows: format!(
                    "{}{}",
                    header(&["sku", "name", "updated_at"]),
                    row("WRONG-1", "from the wrong sheet")
                ),
            },
            RawSheet {
                name: "Prices 2024",
                hidden: false,
                rows: format!(
                    "{}{}",
                    header(&["sku", "name", "updated_at"]),
                    row("X-1", "Crème brûlée")
                ),
            },
        ],
        &[],
        false,
        "",
    );
    let xlsx = app.path("book.xlsx");
    std::fs::write(&xlsx, book).unwrap();
    let out = sluice(
        &app,
        &[
            "import",
            xlsx.to_str().unwrap(),
            "--dataset",
            "products",
            "--sheet",
            "Prices 2024",
            "--wait",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut db = app.db();
    assert_eq!(
        db.rows("SELECT sku, name FROM products"),
        vec![vec![Some("X-1".into()), Some("Crème brûlée".into())]]
    );

    let out = sluice(
        &app,
        &[
            "import",
            xlsx.to_str().unwrap(),
            "--dataset",
            "products",
            "--sheet",
            "Nope",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sheet_not_found"));

    // Windows-1252 bytes, named explicitly.
    let latin = app.path("latin.csv");
    std::fs::write(&latin, b"sku,name,updated_at\nL-1,M\xfcller,2024-01-01\n").unwrap();
    let out = sluice(
        &app,
        &[
            "import",
            latin.to_str().unwrap(),
            "--dataset",
            "products",
            "--encoding",
            "windows-1252",
            "--wait",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db.value("SELECT name FROM products WHERE sku = 'L-1'")
            .as_deref(),
        Some("Müller")
    );
}

conformance!(
    cli_passes_the_sheet_and_the_encoding,
    cli_imports_waits_and_downloads_rejected_rows,
);
