//! What an operator runs sluice with: structured logs (JSON lines with a request id on every
//! request's line, no tokens or file contents), and a readiness check that tells a node that
//! cannot take work (database gone, no room for uploads) from one that can.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The JSON log lines written so far.
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The value of `key` in the span named `span` of a JSON log line.
fn span_field<'a>(line: &'a Value, span: &str, key: &str) -> Option<&'a Value> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == span)
        .and_then(|s| s.get(key))
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_never_the_token_or_file_contents() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let app = spawn_app(AppOptions {
        log_file: Some(log.clone()),
        extra_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    });
    // A client's id is echoed and logged; without one, the server makes one.
    let resp = app
        .get("/api/v1/import/jobs")
        .header("X-Request-Id", "client-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-req-42");
    let resp = app.get("/api/v1/import/jobs").send().await.unwrap();
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 16, "{made}");
    let (file, expect) = generate(app.dir.path(), "p.csv", &["--rows", "200"]);
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    let status = app.wait_done(job, MINUTE).await;
    assert_eq!(status["createdCount"], expect["valid_rows"]);
    // A refused request is logged too, with its status.
    let resp = app
        .http
        .get(app.url("/api/v1/import/jobs"))
        .bearer_auth("slc_not_a_real_token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(TOKEN) && !text.contains("slc_not_a_real_token"),
        "a token was logged"
    );
    assert!(
        !text.contains(expect["valid_sku_last"].as_str().unwrap()),
        "file contents were logged"
    );
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
    let lines = json_lines(&log);
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request")
        .collect();
    let by_id = |id: &str| {
        requests
            .iter()
            .find(|l| span_field(l, "request", "id").and_then(Value::as_str) == Some(id))
            .copied()
    };
    let mine = by_id("client-req-42").expect("the client's request id in the log");
    assert_eq!(mine["fields"]["route"], "/api/v1/import/jobs");
    assert_eq!(mine["fields"]["method"], "GET");
    assert_eq!(mine["fields"]["status"], 200);
    assert!(mine["fields"]["latency_ms"].is_string() || mine["fields"]["latency_ms"].is_number());
    assert!(by_id(&made).is_some(), "the generated id in the log");
    // Routes are templates: never an id.
    let status_line = requests
        .iter()
        .find(|l| l["fields"]["route"] == "/api/v1/import/status/{id}")
        .expect("a status request line");
    assert_eq!(status_line["fields"]["status"], 200);
    assert!(
        requests.iter().all(|l| l["fields"]["route"]
            .as_str()
            .unwrap()
            .split('/')
            .all(|segment| segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()))),
        "a route carries an id"
    );
    assert!(requests.iter().any(|l| l["fields"]["status"] == 401));
    // The job's lines carry its id and dataset, also from its blocking run.
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job started")
        .expect("a job started line");
    assert_eq!(
        span_field(started, "execute", "job"),
        Some(&Value::from(job))
    );
    assert_eq!(
        span_field(started, "execute", "dataset"),
        Some(&Value::from("products"))
    );
}

#[tokio::test]
async fn text_logs_written_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let app = spawn_app(AppOptions {
        log_file: Some(log.clone()),
        ..Default::default()
    });
    let resp = app.get("/api/v1/import/jobs").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sluice started"), "{text}");
    assert!(
        text.contains(&id) && text.contains("route=/api/v1/import/jobs status=200"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}

/// `/readyz` answers 503 with the reason while uploads have no room, and 200 again after.
#[tokio::test]
async fn readyz_fails_while_the_blob_store_is_full() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let Some(_mount) = Tmpfs::mount(&data, 16) else {
        let _ = writeln!(
            std::io::stderr(),
            "skipping: cannot mount a tmpfs (needs root)"
        );
        return;
    };
    let app = spawn_app(AppOptions {
        data_dir: Some(data.clone()),
        ..Default::default()
    });
    let (code, body) = app.get_json("/readyz").await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    // Fill the file system.
    let filler = data.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let resp = app.get("/readyz").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let (_, body) = json_of(resp).await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["reason"], "the blob store's disk is full", "{body}");
    // Liveness is another question: the process is up.
    let (code, _) = app.get_json("/healthz").await;
    assert_eq!(code, 200);
    std::fs::remove_file(&filler).unwrap();
    let (code, _) = app.get_json("/readyz").await;
    assert_eq!(code, 200);
}

/// On PostgreSQL, `/readyz` answers 503 naming the database when the node's database is gone.
#[tokio::test]
async fn readyz_fails_while_the_database_is_gone() {
    if !postgres_wanted() {
        return;
    }
    let app = spawn_app(AppOptions {
        backend: Backend::Postgres,
        ..Default::default()
    });
    let (code, _) = app.get_json("/readyz").await;
    assert_eq!(code, 200);
    let db = app.pg_database.clone().unwrap();
    // This test's own database only: the shared server stays up for the other tests.
    pg_admin_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false")).unwrap();
    pg_admin_execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    ))
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let resp = app.get("/readyz").send().await.unwrap();
        if resp.status() == 503 {
            break json_of(resp).await.1;
        }
        assert!(std::time::Instant::now() < deadline, "readyz stayed ready");
    };
    assert_eq!(body["reason"], "the database does not answer", "{body}");
    pg_admin_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).unwrap();
}

/// Niceness of each thread of `pid`, by thread name.
fn thread_niceness(pid: u32) -> Vec<(String, i64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            // `pid (comm) state ppid …`: the fields after the name, nice is the 19th field.
            let after = &stat[stat.rfind(')')? + 2..];
            let nice = after.split(' ').nth(16)?.parse().ok()?;
            let name = std::fs::read_to_string(t.join("comm")).ok()?;
            Some((name.trim().to_string(), nice))
        })
        .collect()
}

#[tokio::test]
async fn job_niceness_lowers_the_priority_of_the_threads_that_run_jobs_only() {
    let app = spawn_app(AppOptions {
        batch_size: 50,
        extra_args: vec!["--job-niceness".into(), "7".into()],
        ..Default::default()
    });
    let (file, _) = generate(app.dir.path(), "p.csv", &["--rows", "200000"]);
    let job = job_id(&app.upload("products", &file).await.1);
    // While the job runs (4,000 small batches), its thread and the reader thread it started
    // run at niceness 7; the API's threads do not.
    let deadline = std::time::Instant::now() + MINUTE;
    let threads = loop {
        let threads = thread_niceness(app.pid());
        if threads.iter().any(|(n, _)| n == "sluice-read") {
            break threads;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no job thread: {threads:?}"
        );
        tokio::task::yield_now().await;
    };
    let nice = |name: &str| -> Vec<i64> {
        threads
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(nice("sluice-job"), vec![7], "{threads:?}");
    assert_eq!(nice("sluice-read"), vec![7], "{threads:?}");
    let api = nice("tokio-rt-worker");
    assert!(
        !api.is_empty() && api.iter().all(|&n| n == 0),
        "{threads:?}"
    );
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["createdCount"], 200_000, "{s}");
}
