//! Seed 003's analysis contract through the real binary, on SQLite and PostgreSQL: its
//! documented client (`tests/seed003/use-job-polling.mjs`: the component's FormData upload and
//! `useJobPolling`'s loop, run by Node) starts an analysis, polls it to `completed` and
//! downloads the report — counts exact, nothing written; the seed's `processing` and `failed`
//! shapes, refusals and organisation rules over HTTP.

#[macro_use]
mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

conformance!(
    seed_003s_polling_client_analyses_a_file_unchanged,
    the_analysis_contract_answers_in_the_seeds_shapes_and_keeps_organisations_apart,
);

/// Sends seed 003's form (`file`, `filterOption`, and more fields) with `token`.
async fn analyze_file(
    app: &TestApp,
    token: &str,
    file: &std::path::Path,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let part = reqwest::multipart::Part::bytes(std::fs::read(file).unwrap()).file_name("f.csv");
    let resp = app
        .http
        .post(app.url("/api/v1/analysis/analyze-file"))
        .bearer_auth(token)
        .multipart(form.part("file", part))
        .send()
        .await
        .unwrap();
    json_of(resp).await
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let resp = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    json_of(resp).await
}

async fn seed_003s_polling_client_analyses_a_file_unchanged(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 500,
        ..Default::default()
    });
    let (file, expect) = generate(
        app.dir.path(),
        "supplier.csv",
        &["--rows", "4000", "--error-rate", "0.05", "--seed", "31"],
    );
    let out = app.path("result.xlsx");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = off_runtime(|| {
        Command::new("node")
            .arg(root.join("tests/seed003/use-job-polling.mjs"))
            .env("SLUICE_URL", &app.base)
            .env("SLUICE_TOKEN", TOKEN)
            .env("FILE", &file)
            .env("OUT", &out)
            .output()
            .expect("node (20+) runs the seed's client")
    });
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let started = &got["started"];
    assert_eq!(started["success"], true, "{got}");
    assert_eq!(started["status"], "processing");
    assert!(started["message"].as_str().unwrap().contains("jobId"));
    let job = started["jobId"].as_i64().unwrap();
    let result = &got["result"];
    assert_eq!(result["status"], "completed", "{got}");
    assert_eq!(result["success"], true);
    assert_eq!(result["jobId"], job);
    assert_eq!(result["dataSource"], "products");
    assert_eq!(result["excelFile"], format!("analysis-{job}.xlsx"));
    assert_eq!(
        result["downloadUrl"],
        format!("/api/v1/analysis/download/analysis-{job}.xlsx")
    );
    let summary = &result["summary"];
    assert_eq!(summary["rows"], 4000);
    assert_eq!(summary["wouldCreate"], expect["valid_rows"], "{summary}");
    assert_eq!(summary["errors"], expect["invalid_rows"]);
    assert_eq!(summary["wouldUpdate"], 0);
    assert!(got["polls"].as_u64().unwrap() >= 1);
    // The report is the workbook `/report` serves, byte for byte.
    assert_eq!(got["report"]["status"], 200, "{got}");
    let saved = std::fs::read(&out).unwrap();
    let direct = app
        .get(&format!("/api/v1/import/{job}/report"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(saved, direct.to_vec());
    assert!(saved.starts_with(b"PK"), "an XLSX package");
    // Served as every stored file is (`api::files`): ETag, and a range resumes a download.
    let resp = app
        .get(&format!("/api/v1/analysis/download/analysis-{job}.xlsx"))
        .header("Range", "bytes=2-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert!(resp.headers().contains_key("etag"));
    assert_eq!(resp.bytes().await.unwrap().to_vec(), saved[2..10].to_vec());
    // An analysis writes nothing.
    assert_eq!(app.db().number("SELECT count(*) FROM products"), 0);
    let (_, s) = app.get_json(&format!("/api/v1/import/status/{job}")).await;
    assert_eq!(s["data"]["kind"], "analysis");
    assert_eq!(s["data"]["dryRun"], true);
}

async fn the_analysis_contract_answers_in_the_seeds_shapes_and_keeps_organisations_apart(
    backend: Backend,
) {
    // No workers: jobs stay pending until this test says so.
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        ..Default::default()
    });
    let (file, _) = generate(app.dir.path(), "p.csv", &["--rows", "200", "--seed", "4"]);
    let (code, body) = analyze_file(&app, TOKEN, &file, &[("filterOption", "some")]).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_filter_option");
    let (code, body) = analyze_file(&app, TOKEN, &file, &[("dataset", "nope")]).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (404, "not_found".into())
    );
    let (_, jobs) = app.get_json("/api/v1/import/jobs").await;
    assert_eq!(
        jobs["data"]["total"], 0,
        "a refused form makes no job: {jobs}"
    );

    let (code, body) = analyze_file(
        &app,
        TOKEN,
        &file,
        &[("filterOption", "recommended"), ("dataset", "products")],
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let job = body["jobId"].as_i64().unwrap();
    // Pending: the seed's `processing`, with a progress number.
    let (code, s) = app.get_json(&format!("/api/v1/analysis/job/{job}")).await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["status"], "processing");
    assert_eq!(s["success"], true);
    assert_eq!(s["progress"], 0);
    assert!(
        s["message"].is_string() && s.get("downloadUrl").is_none(),
        "{s}"
    );
    let (code, body) = app
        .get_json(&format!("/api/v1/analysis/download/analysis-{job}.xlsx"))
        .await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "not_ready".into())
    );

    // Another organisation sees neither the job nor its report.
    let (_, other) = org_with_admin(&app, "other");
    for path in [
        format!("/api/v1/analysis/job/{job}"),
        format!("/api/v1/analysis/download/analysis-{job}.xlsx"),
    ] {
        let (code, body) = get_as(&app, &other, &path).await;
        assert_eq!(code, 404, "{path}: {body}");
    }
    // An import is not an analysis; names that are not reports are not found.
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    let import = job_id(&body);
    for path in [
        format!("/api/v1/analysis/job/{import}"),
        format!("/api/v1/analysis/download/analysis-{import}.xlsx"),
        "/api/v1/analysis/download/result.xlsx".to_string(),
        format!("/api/v1/analysis/download/analysis-{job}.exe"),
        "/api/v1/analysis/job/job_1738268400000_abc".to_string(),
    ] {
        let (code, body) = app.get_json(&path).await;
        assert_eq!(code, 404, "{path}: {body}");
        assert_eq!(body["success"], false);
    }

    // Cancelled: the seed's `failed` shape.
    let resp = app
        .post(&format!("/api/v1/import/{job}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (code, s) = app.get_json(&format!("/api/v1/analysis/job/{job}")).await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["success"], false);
    assert_eq!(s["status"], "failed");
    assert_eq!(s["error"]["message"], "Analysis cancelled", "{s}");
    assert!(s["error"]["details"].is_string());
}
