//! The API description: `GET /api/openapi.json` lists every route the router has (read from
//! `src/api/mod.rs`, so a new route without a doc entry fails here), every operation answers a
//! 2xx and an error, `/api/docs` renders it under a strict CSP, and schemathesis, fuzzing a real
//! server against the document, finds no 5xx, no answer that breaks its schema or answers an
//! undocumented status or content type, and no invalid input accepted.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{AppOptions, TOKEN, spawn_app};
use serde_json::Value;

/// Routes the document leaves out on purpose: Prometheus text for scrapers, not a JSON API.
const UNDOCUMENTED: &[&str] = &["/metrics"];

/// Operations schemathesis does not call, and why:
/// - `revokeToken`: revoking the token the run uses (or the admin's) would lock the run out;
/// - `allEvents`: a stream that never ends (it would only time out);
/// - `jobEvents`: a stream that ends only when its job does.
const NOT_FUZZED: &[&str] = &["revokeToken", "allEvents", "jobEvents"];

/// `(METHOD, path)` of every route in `src/api/mod.rs`: each `.route("PATH", …)` with the
/// method routers (`get(`, `post(`, `delete(`, …) inside its call.
fn router_routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api/mod.rs");
    let mut routes = BTreeSet::new();
    for call in source.split(".route(").skip(1) {
        // The call's text: up to its closing parenthesis.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(call.len(), |(i, _)| i);
        let call = &call[..end];
        let Some(path) = call.split('"').nth(1) else {
            continue;
        };
        for method in ["get", "post", "put", "patch", "delete"] {
            let needle = format!("{method}(");
            let found = call.match_indices(&needle).any(|(i, _)| {
                i == 0
                    || !call[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if found {
                routes.insert((method.to_uppercase(), path.to_string()));
            }
        }
    }
    routes
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn document_lists_every_route_and_each_operation_says_success_and_errors() {
    let app = spawn_app(AppOptions::default());
    // Public: no token.
    let resp = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.expect("the document is JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );

    let routes = router_routes();
    assert!(
        routes.len() > 25,
        "the route table was not read: {routes:?}"
    );
    let ops = documented(&doc);
    let missing: Vec<_> = routes
        .iter()
        .filter(|(_, p)| !UNDOCUMENTED.contains(&p.as_str()))
        .filter(|r| !ops.contains(*r))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a doc entry: {missing:?}"
    );
    let extra: Vec<_> = ops.iter().filter(|o| !routes.contains(*o)).collect();
    assert!(extra.is_empty(), "doc entries without a route: {extra:?}");

    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let name = format!("{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_string()),
                "{name}: operationId `{id}` twice"
            );
            let statuses: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            assert!(
                statuses.iter().any(|s| (200..300).contains(s)),
                "{name}: no 2xx"
            );
            // The document and its page are static: they have no error to answer.
            let static_doc = matches!(path.as_str(), "/api/openapi.json" | "/api/docs");
            assert!(
                static_doc || statuses.iter().any(|s| *s >= 400),
                "{name}: no error"
            );
            // Every error is the one error body.
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    let ok = schema == "#/components/schemas/ErrorBody"
                        || (path == "/readyz" && status == "503");
                    assert!(ok, "{name} {status}: not an ErrorBody: {response}");
                }
            }
        }
    }
    assert!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer",
        "{}",
        doc["components"]["securitySchemes"]
    );
    // The upload's form fields are described.
    let form = &doc["components"]["schemas"]["UploadForm"]["properties"];
    for field in [
        "file",
        "mapping",
        "template",
        "mode",
        "sheet",
        "encoding",
        "delimiter",
        "filename",
    ] {
        assert!(form.get(field).is_some(), "upload form lacks `{field}`");
    }

    // The reference: a page of ours, its script and style from the binary, under a CSP that
    // allows no inline script.
    let page = app.http.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<script src="/api/docs/docs.js""#),
        "{html}"
    );
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count(),
        "an inline script: {html}"
    );
    for (asset, kind) in [
        ("/api/docs/docs.js", "javascript"),
        ("/api/docs/docs.css", "css"),
    ] {
        let resp = app.http.get(app.url(asset)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.contains(kind), "{asset}: {ct}");
        assert!(!resp.text().await.unwrap().is_empty(), "{asset}");
    }
    let (code, body) = app.get_json("/api/docs/nothing.js").await;
    assert_eq!(code, 404, "{body}");
}

/// Found by schemathesis (`negative_data_rejection`): the document says `limit` and `offset` are
/// 64-bit integers, and the server took 2⁶³ and more (answering 200 with that offset).
#[tokio::test]
async fn paging_numbers_past_the_documented_range_are_refused() {
    let app = spawn_app(AppOptions {
        webhook_allow_private: true,
        ..AppOptions::default()
    });
    let csv = app.path("one.csv");
    std::fs::write(&csv, "sku,name,updated_at\nA-1,One,2024-01-01\n").unwrap();
    let (code, body) = app.upload("products", &csv).await;
    assert_eq!(code, 202, "{body}");
    let job = common::job_id(&body);
    let resp = app
        .post("/api/v1/webhooks")
        .json(&serde_json::json!({"url": "http://127.0.0.1:9/hook", "events": ["job.completed"]}))
        .send()
        .await
        .unwrap();
    let (_, hook) = common::json_of(resp).await;
    let hook = hook["data"]["id"].as_i64().unwrap();
    for path in [
        "/api/v1/import/jobs".to_string(),
        "/api/v1/audit".to_string(),
        format!("/api/v1/import/{job}/errors"),
        format!("/api/v1/webhooks/{hook}/deliveries"),
    ] {
        for query in ["offset=9223372036854775808", "limit=18446744073709551615"] {
            let (code, body) = app.get_json(&format!("{path}?{query}")).await;
            assert_eq!(code, 400, "{path}?{query}: {body}");
            assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
        }
        let (code, body) = app
            .get_json(&format!("{path}?offset=9223372036854775807"))
            .await;
        assert_eq!(code, 200, "{path}: {body}");
    }
}

/// The numbers at the end of schemathesis's summary, for the test's output.
fn summary(out: &str) -> String {
    out.lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let version = Command::new("schemathesis").arg("--version").output();
    let Some(version) = version.ok().filter(|o| o.status.success()) else {
        panic!(
            "the `schemathesis` command is missing: pip install schemathesis (CI installs the \
             version in .ci/run)"
        );
    };
    let app = spawn_app(AppOptions {
        webhook_allow_private: true,
        extra_args: vec![
            "--rate-limit".into(),
            "100000".into(),
            "--max-uploads-per-token".into(),
            "64".into(),
        ],
        ..AppOptions::default()
    });
    // Something to find: job 1, webhook 1, a template of `products` (the document's examples).
    let csv = app.path("seed.csv");
    std::fs::write(
        &csv,
        "sku,name,price,stock,updated_at\nA-1,One,1.50,3,2024-01-01\nA-2,Two,oops,1,2024-01-02\n",
    )
    .unwrap();
    let (code, body) = app.upload("products", &csv).await;
    assert_eq!(code, 202, "{body}");
    let job = common::job_id(&body);
    assert_eq!(job, 1, "the document's example job id");
    app.wait_done(job, std::time::Duration::from_secs(60)).await;
    let resp = app
        .post("/api/v1/webhooks")
        .json(&serde_json::json!({"url": "http://127.0.0.1:9/hook", "events": ["job.completed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = app
        .post("/api/v1/datasets/products/templates")
        .json(&serde_json::json!({"name": "shop", "mapping": {"sku": "sku", "name": "name"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let mut cmd = Command::new("schemathesis");
    cmd.current_dir(app.dir.path())
        .arg("run")
        .arg(app.url("/api/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // One worker: with two, schemathesis's threads run `ast.parse` at once (Hypothesis
        // describing a strategy's lambdas), and CPython 3.11's parser is not thread-safe there
        // ("SystemError: AST constructor recursion depth mismatch", reported as a flaky
        // Runtime Error of an operation we did not touch).
        .args(["--max-examples", "40", "--seed", "14", "--workers", "1"])
        .args(["--request-timeout", "30", "--no-color"]);
    for op in NOT_FUZZED {
        cmd.args(["--exclude-operation-id", op]);
    }
    let out = cmd.output().expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with `--nocapture`: how many operations and cases ran.
    println!(
        "{} {}",
        String::from_utf8_lossy(&version.stdout).trim(),
        summary(&stdout)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
}
