//! `GET /metrics` of the real server: a Prometheus text document whose row counters equal the
//! jobs' own counts, whose job gauges come from the store, whose request counters use route
//! templates, and whose labels never carry a job id or a file name; admins only on the main
//! address, no token on `--metrics-listen`.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;

/// One sample: its metric name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed text-format document: the declared type of each family, and every sample.
#[derive(Debug)]
struct Document {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Document {
    /// Parses the text format strictly: `# HELP`/`# TYPE` lines, `name{labels} value` samples,
    /// and every sample belongs to a family with a TYPE (histograms through `_bucket`, `_sum`
    /// and `_count`).
    fn parse(text: &str) -> Document {
        let mut types = HashMap::new();
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let at = || format!("line {}: `{line}`", n + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        assert!(
                            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                            "{}",
                            at()
                        );
                        assert!(valid_name(name), "{}", at());
                        let before = types.insert(name.to_string(), kind.to_string());
                        assert!(before.is_none(), "TYPE repeated: {}", at());
                    }
                    (Some("HELP"), Some(name), _) => assert!(valid_name(name), "{}", at()),
                    _ => panic!("unknown comment {}", at()),
                }
                continue;
            }
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => panic!("no value: {}", at()),
            };
            assert!(valid_name(name), "bad name: {}", at());
            let (labels, rest) = if let Some(rest) = rest.strip_prefix('{') {
                parse_labels(rest).unwrap_or_else(|| panic!("bad labels: {}", at()))
            } else {
                (BTreeMap::new(), rest)
            };
            let value = rest.trim().split(' ').next().unwrap_or_default();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value: {}", at())),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        let doc = Document { types, samples };
        for s in &doc.samples {
            assert!(
                doc.family(&s.name).is_some(),
                "sample {} has no TYPE",
                s.name
            );
        }
        doc
    }

    /// The family a sample name belongs to.
    fn family(&self, name: &str) -> Option<&str> {
        if let Some(kind) = self.types.get(name) {
            return Some(kind);
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some(kind) = self.types.get(base)
                && (kind == "histogram" || kind == "summary")
            {
                return Some(kind);
            }
        }
        None
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `a="x",b="y"}` → the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = &s[..eq];
        if !valid_name(key) {
            return None;
        }
        let mut chars = s[eq + 1..].strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    _ => return None,
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = &s[eq + 1..][1 + end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

async fn scrape_with(app: &TestApp, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = app.http.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("scrape");
    let status = resp.status().as_u16();
    if status == 200 {
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    }
    (status, resp.text().await.unwrap_or_default())
}

async fn scrape(app: &TestApp) -> Document {
    let (code, text) = scrape_with(app, &app.url("/metrics"), Some(TOKEN)).await;
    assert_eq!(code, 200, "{text}");
    Document::parse(&text)
}

/// A products CSV whose header and first rows are fine but whose row 300 holds a cell over the
/// 1 MiB limit: accepted at upload, and the job fails when the worker reaches it.
fn failing_csv() -> Vec<u8> {
    let mut csv = String::from("sku,name,category,price,stock,updated_at\n");
    for i in 1..300 {
        csv.push_str(&format!("FAIL-{i:05},Thing {i},tools,1.50,3,2024-01-02\n"));
    }
    csv.push_str(&format!(
        "FAIL-99999,{},tools,1.50,3,2024-01-02\n",
        "x".repeat(2 * 1024 * 1024)
    ));
    csv.into_bytes()
}

async fn metrics_report_the_imports_exactly(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 250,
        extra_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..Default::default()
    });
    // Created and rejected rows; then a file whose first half is the same rows (unchanged) and
    // whose second half changed (updated).
    let (first, expect) = generate(
        app.dir.path(),
        "first-file.csv",
        &["--rows", "2000", "--error-rate", "0.05", "--seed", "3"],
    );
    let (changed, _) = generate(
        app.dir.path(),
        "changed-file.csv",
        &["--rows", "2000", "--error-rate", "0.05", "--seed", "4"],
    );
    let a = std::fs::read_to_string(&first).unwrap();
    let b = std::fs::read_to_string(&changed).unwrap();
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut mixed: Vec<&str> = a[..1001].to_vec();
    mixed.extend_from_slice(&b[1001..]);
    let second = app.path("second-file.csv");
    std::fs::write(&second, mixed.join("\n") + "\n").unwrap();

    let before = scrape(&app).await;
    assert_eq!(before.sum("sluice_store_up", &[]), 1.0);
    assert_eq!(
        before.sum("sluice_jobs", &[("status", "failed")]),
        0.0,
        "no job has failed yet"
    );

    let mut jobs = Vec::new();
    for file in [&first, &second] {
        let (code, body) = app.upload("products", file).await;
        assert_eq!(code, 202, "{body}");
        let job = job_id(&body);
        let s = app.wait_done(job, MINUTE).await;
        assert_eq!(s["status"], "completed", "{s}");
        jobs.push((job, s));
    }
    assert_eq!(jobs[0].1["createdCount"], expect["valid_rows"]);
    let (code, body) = app
        .upload_bytes("products", "failing-file.csv", failing_csv(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let failed = job_id(&body);
    let s = app.wait_done(failed, MINUTE).await;
    assert_eq!(s["status"], "failed", "{s}");
    jobs.push((failed, s));

    // Every job is done: the counters have seen every batch.
    let mid = scrape(&app).await;
    let total = |key: &str| -> f64 {
        jobs.iter()
            .map(|(_, s)| s[key].as_u64().unwrap() as f64)
            .sum()
    };
    for (outcome, key) in [
        ("created", "createdCount"),
        ("updated", "updatedCount"),
        ("unchanged", "unchangedCount"),
        ("rejected", "errorCount"),
    ] {
        assert!(total(key) > 0.0, "the imports produced no {outcome} rows");
        assert_eq!(
            mid.sum(
                "sluice_rows_total",
                &[("dataset", "products"), ("outcome", outcome)]
            ),
            total(key),
            "sluice_rows_total{{outcome={outcome}}}"
        );
    }
    assert_eq!(
        mid.sum(
            "sluice_jobs",
            &[
                ("status", "failed"),
                ("dataset", "products"),
                ("kind", "job")
            ]
        ),
        1.0
    );
    assert_eq!(
        mid.sum(
            "sluice_jobs",
            &[
                ("status", "completed"),
                ("dataset", "products"),
                ("kind", "job")
            ]
        ),
        2.0
    );
    assert_eq!(
        mid.sum("sluice_queue_depth", &[("dataset", "products")]),
        0.0
    );
    assert_eq!(mid.sum("sluice_queue_oldest_seconds", &[]), 0.0);
    assert!(mid.sum("sluice_batch_commit_seconds_count", &[]) >= 8.0);
    assert_eq!(mid.types["sluice_batch_commit_seconds"], "histogram");
    assert_eq!(
        mid.sum(
            "sluice_job_duration_seconds_count",
            &[("dataset", "products"), ("status", "completed")]
        ),
        2.0
    );
    assert_eq!(
        mid.sum(
            "sluice_job_duration_seconds_count",
            &[("dataset", "products"), ("status", "failed")]
        ),
        1.0
    );
    assert!(mid.sum("sluice_db_pool_connections", &[("state", "max")]) >= 1.0);
    assert!(mid.sum("sluice_db_pool_wait_seconds_count", &[]) > 0.0);
    assert!(mid.sum("process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(mid.sum("sluice_lease_lost_total", &[]), 0.0);

    // Status requests are counted by their route template.
    let route = "/api/v1/import/status/{id}";
    let ok_before = mid.sum(
        "sluice_http_requests_total",
        &[("route", route), ("status", "200")],
    );
    for (job, _) in &jobs {
        app.status(*job).await;
        app.status(*job).await;
    }
    let (code, _) = app.get_json("/api/v1/import/status/987654").await;
    assert_eq!(code, 404);
    let (code, _) = app.get_json("/no/such/route/987654").await;
    assert_eq!(code, 404);
    let after = scrape(&app).await;
    assert_eq!(
        after.sum(
            "sluice_http_requests_total",
            &[("route", route), ("status", "200")]
        ) - ok_before,
        2.0 * jobs.len() as f64
    );
    assert_eq!(
        after.sum(
            "sluice_http_requests_total",
            &[("route", route), ("status", "404")]
        ),
        1.0
    );
    assert!(after.sum("sluice_http_requests_total", &[("route", "unmatched")]) >= 1.0);
    assert!(
        after
            .matching(
                "sluice_http_request_duration_seconds_count",
                &[("route", route)]
            )
            .count()
            == 1
    );

    // No label carries a job id, a raw path or a file name.
    let ids: Vec<String> = jobs.iter().map(|(id, _)| id.to_string()).collect();
    for s in &after.samples {
        for (key, value) in &s.labels {
            assert!(
                !value.contains("987654") && !value.contains("file") && !value.contains(".csv"),
                "{} has {key}={value}",
                s.name
            );
            if key != "le" && key != "status" {
                assert!(!ids.contains(value), "{} has {key}={value}", s.name);
            }
        }
    }
    for name in [
        "sluice_batch_retries_total",
        "sluice_webhook_deliveries_total",
        "sluice_sse_clients",
    ] {
        assert!(after.has(name), "{name} missing");
    }

    // An open event stream is counted while it is open.
    let stream = app.events("/api/v1/events", None).await;
    assert_eq!(stream.status().as_u16(), 200);
    assert_eq!(scrape(&app).await.sum("sluice_sse_clients", &[]), 1.0);
    drop(stream);

    // A member's token is refused; no token at all is 401.
    let member = created(
        &app,
        &[
            "user", "create", "--org", "default", "--name", "member", "--role", "member",
        ],
    );
    let (member_token, _) = token_for(&app, member, &[]);
    let (code, _) = scrape_with(&app, &app.url("/metrics"), Some(&member_token)).await;
    assert_eq!(code, 403);
    let (code, _) = scrape_with(&app, &app.url("/metrics"), None).await;
    assert_eq!(code, 401);

    // The metrics address answers without a token, and only /metrics.
    let listen = metrics_address(&app);
    let (code, text) = scrape_with(&app, &listen, None).await;
    assert_eq!(code, 200, "{text}");
    let private = Document::parse(&text);
    assert_eq!(
        private.sum(
            "sluice_rows_total",
            &[("dataset", "products"), ("outcome", "created")]
        ),
        total("createdCount")
    );
    assert_eq!(private.sum("sluice_jobs", &[("status", "failed")]), 1.0);
    let other = listen.replace("/metrics", "/api/v1/import/jobs");
    let (code, _) = scrape_with(&app, &other, Some(TOKEN)).await;
    assert_eq!(code, 404);
}

/// A database that refuses connections leaves the store's gauges out of the scrape and reports
/// `sluice_store_up 0`, instead of failing or hanging the scrape (PostgreSQL: connections to the
/// test's database are refused and the open ones ended). Scraped on `--metrics-listen`: on the
/// main address the token check needs the database too, and answers 503 during an outage.
#[tokio::test]
async fn a_database_outage_leaves_the_job_gauges_out() {
    if !postgres_wanted() {
        return;
    }
    let app = spawn_app(AppOptions {
        backend: Backend::Postgres,
        extra_args: vec![
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--db-wait-ms".into(),
            "1000".into(),
        ],
        ..Default::default()
    });
    let listen = metrics_address(&app);
    let (code, text) = scrape_with(&app, &listen, None).await;
    assert_eq!(code, 200, "{text}");
    let up = Document::parse(&text);
    assert_eq!(up.sum("sluice_store_up", &[]), 1.0);
    assert!(up.has("sluice_queue_oldest_seconds"));
    let db = app.pg_database.clone().expect("a PostgreSQL database");
    // Committed on its own first, so no session can reconnect once the others are ended.
    pg_admin_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .expect("refuse connections");
    // Ending a session is asynchronous: end them until none of the database's is left.
    let admin = format!("{}/postgres", postgres_server());
    let end_sessions = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}' \
         AND backend_type = 'client backend'"
    );
    let mut left = i64::MAX;
    for _ in 0..200 {
        left = off_runtime(|| {
            let mut c = ::postgres::Client::connect(&admin, ::postgres::NoTls).expect("connect");
            c.query_one(&end_sessions, &[])
                .expect("end sessions")
                .get(0)
        });
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(left, 0, "the sessions of {db} did not end");
    let down = scrape_with(&app, &listen, None).await;
    pg_admin_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .expect("allow connections again");
    let (code, text) = down;
    assert_eq!(code, 200, "{text}");
    let down = Document::parse(&text);
    assert_eq!(down.sum("sluice_store_up", &[]), 0.0, "{text}");
    for name in [
        "sluice_jobs",
        "sluice_queue_depth",
        "sluice_queue_oldest_seconds",
    ] {
        assert!(
            !down.has(name),
            "{name} reported during the outage:\n{text}"
        );
    }
    assert!(down.has("process_resident_memory_bytes"));
    // Once the database is back, so are the gauges (the pool reconnects on its own schedule).
    let mut back = 0.0;
    for _ in 0..50 {
        let (_, text) = scrape_with(&app, &listen, None).await;
        back = Document::parse(&text).sum("sluice_store_up", &[]);
        if back == 1.0 {
            break;
        }
    }
    assert_eq!(back, 1.0, "the gauges did not come back");
}

/// The `--metrics-listen` URL the server printed.
fn metrics_address(app: &TestApp) -> String {
    app.stdout_lines
        .iter()
        .find_map(|l| l.strip_prefix("sluice metrics on "))
        .unwrap_or_else(|| panic!("no metrics address in {:?}", app.stdout_lines))
        .to_string()
}

/// `sluice worker --metrics-listen`: the worker that committed the rows counts them, and the
/// API-only server beside it counts none, while both read the same job figures from the store.
async fn a_worker_process_reports_the_rows_it_committed(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        batch_size: 300,
        ..Default::default()
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    app.spawn_worker_with(1, &["--metrics-listen", &addr]);
    let (file, expect) = generate(
        app.dir.path(),
        "worker-file.csv",
        &["--rows", "1500", "--error-rate", "0.1", "--seed", "5"],
    );
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["createdCount"], expect["valid_rows"]);
    // The worker bound its metrics address before it started claiming, so it is up by now.
    let (code, text) = scrape_with(&app, &format!("http://{addr}/metrics"), None).await;
    assert_eq!(code, 200, "{text}");
    let worker = Document::parse(&text);
    let server = scrape(&app).await;
    for (outcome, key) in [("created", "createdCount"), ("rejected", "errorCount")] {
        let labels = [("dataset", "products"), ("outcome", outcome)];
        assert_eq!(
            worker.sum("sluice_rows_total", &labels),
            s[key].as_u64().unwrap() as f64,
            "{outcome}"
        );
        assert_eq!(server.sum("sluice_rows_total", &labels), 0.0, "{outcome}");
    }
    for doc in [&worker, &server] {
        assert_eq!(
            doc.sum("sluice_jobs", &[("status", "completed"), ("kind", "job")]),
            1.0
        );
    }
}

conformance!(
    metrics_report_the_imports_exactly,
    a_worker_process_reports_the_rows_it_committed,
);
