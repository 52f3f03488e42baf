//! Scheduled sources (issue 18) through the real server: directory sources (stability window,
//! `latest` / `all-new`, move after import, the same content never imported twice, the mapping
//! gate), URL sources against a local HTTP(S) server that honours ETag (304 starts no job; header
//! secrets never answered nor logged), the API's rules (admins only, other organisations 404,
//! 400 codes), a missed slot firing once after downtime, and two `serve` processes on one
//! PostgreSQL database firing each slot of a 1 s schedule exactly once.
//!
//! Time is driven by `POST …/run`: a file is taken once two runs at least `stableSeconds` apart
//! saw it unchanged; the only waits are those windows themselves.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{AppOptions, Backend, TestApp, spawn_app};
use serde_json::{Value, json};

fn app_with_root(backend: Backend, root: &Path, more: &[&str]) -> TestApp {
    let mut extra_args = vec!["--source-root".to_string(), root.display().to_string()];
    extra_args.extend(more.iter().map(|s| s.to_string()));
    spawn_app(AppOptions {
        backend,
        extra_args,
        ..Default::default()
    })
}

async fn create(app: &TestApp, body: Value) -> (u16, Value) {
    common::json_of(
        app.post("/api/v1/sources")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn created(app: &TestApp, body: Value) -> i64 {
    let (status, answer) = create(app, body).await;
    assert_eq!(status, 201, "{answer}");
    answer["data"]["id"].as_i64().unwrap()
}

/// `POST …/run`: the run (202).
async fn run(app: &TestApp, id: i64) -> Value {
    let (status, answer) = common::json_of(
        app.post(&format!("/api/v1/sources/{id}/run"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer["data"]["outcome"].is_string(), "finished: {answer}");
    answer["data"].clone()
}

/// Every run of the source, oldest first.
async fn runs(app: &TestApp, id: i64) -> Vec<Value> {
    let (status, answer) = app
        .get_json(&format!("/api/v1/sources/{id}/runs?limit=1000"))
        .await;
    assert_eq!(status, 200, "{answer}");
    let mut runs = answer["data"]["runs"].as_array().unwrap().clone();
    runs.reverse();
    runs
}

fn job_count(app: &TestApp) -> i64 {
    app.db().number("SELECT count(*) FROM jobs")
}

/// A products CSV of `rows` rows (5% invalid) made by the shared generator, and its counts.
fn products(dir: &Path, name: &str, rows: u32, start_sku: u32) -> (PathBuf, Value) {
    common::generate(
        dir,
        name,
        &[
            "--rows",
            &rows.to_string(),
            "--error-rate",
            "0.05",
            "--start-sku",
            &start_sku.to_string(),
        ],
    )
}

/// Waits out a stability window (the one wait these tests make: the window itself).
async fn window(seconds: u64) {
    tokio::time::sleep(Duration::from_millis(seconds * 1000 + 100)).await;
}

async fn a_directory_source_imports_a_stable_file_once_moves_it_and_ignores_the_same_content(
    backend: Backend,
) {
    let root = tempfile::tempdir().unwrap();
    let drop_dir = root.path().join("drop");
    std::fs::create_dir(&drop_dir).unwrap();
    let app = app_with_root(backend, root.path(), &[]);
    let id = created(
        &app,
        json!({"name": "nightly-prices", "dataset": "products", "kind": "directory",
               "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Berlin"}, "pick": "all-new",
               "path": drop_dir, "glob": "*.csv", "stableSeconds": 1, "after": "move",
               "moveTo": "done"}),
    )
    .await;
    let gen_dir = tempfile::tempdir().unwrap();
    let (file, expect) = products(gen_dir.path(), "prices.csv", 500, 1);
    std::fs::copy(&file, drop_dir.join("prices.csv")).unwrap();

    let first = run(&app, id).await;
    assert_eq!(
        first["outcome"], "skipped",
        "seen once, not yet stable: {first}"
    );
    assert!(first["jobId"].is_null());
    window(1).await;
    let second = run(&app, id).await;
    assert_eq!(second["outcome"], "imported", "{second}");
    assert_eq!(second["file"], "prices.csv");
    assert_eq!(second["sha256"], expect["file_sha256"]);
    let job = second["jobId"].as_i64().unwrap();
    let status = app.wait_done(job, common::MINUTE).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["createdCount"], expect["valid_rows"]);
    assert_eq!(status["errorCount"], expect["invalid_rows"]);
    assert_eq!(status["filename"], "prices.csv");
    assert!(!drop_dir.join("prices.csv").exists(), "moved away");
    assert!(drop_dir.join("done/prices.csv").exists());

    // The same content dropped again, under another name: no second job.
    std::fs::copy(&file, drop_dir.join("prices-again.csv")).unwrap();
    assert_eq!(run(&app, id).await["outcome"], "skipped");
    window(1).await;
    let again = run(&app, id).await;
    assert_eq!(again["outcome"], "unchanged", "{again}");
    assert_eq!(again["jobId"], job, "names the job that imported it");
    assert_eq!(job_count(&app), 1);
    assert!(drop_dir.join("done/prices-again.csv").exists());
    let nothing = run(&app, id).await;
    assert_eq!(nothing["outcome"], "skipped");
    assert_eq!(nothing["reason"], "no file matches `*.csv`");
    let outcomes: Vec<Value> = runs(&app, id)
        .await
        .iter()
        .map(|r| r["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            json!("skipped"),
            json!("imported"),
            json!("skipped"),
            json!("unchanged"),
            json!("skipped")
        ]
    );
    // The scheduler has not fired: the next slot is 02:00 in Berlin.
    let (_, source) = app.get_json(&format!("/api/v1/sources/{id}")).await;
    let next = source["data"]["nextDueAt"].as_str().unwrap();
    assert!(
        next.ends_with("T01:00:00Z") || next.ends_with("T01:00:00.000Z"),
        "{next}"
    );
}

async fn a_growing_file_is_not_taken_until_it_stays_the_same_for_the_window(backend: Backend) {
    let root = tempfile::tempdir().unwrap();
    let app = app_with_root(backend, root.path(), &[]);
    let id = created(
        &app,
        json!({"name": "growing", "dataset": "products", "kind": "directory",
               "schedule": {"every": "1h"}, "path": root.path(), "stableSeconds": 1}),
    )
    .await;
    let gen_dir = tempfile::tempdir().unwrap();
    let (file, expect) = products(gen_dir.path(), "big.csv", 2000, 1);
    let bytes = std::fs::read(&file).unwrap();
    let target = root.path().join("big.csv");
    // Half of it arrives; a look; the rest arrives within the window.
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(run(&app, id).await["outcome"], "skipped");
    window(1).await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&target)
            .unwrap();
        f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    }
    let early = run(&app, id).await;
    assert_eq!(
        early["outcome"], "skipped",
        "its size changed since the last look: {early}"
    );
    assert_eq!(job_count(&app), 0);
    window(1).await;
    let taken = run(&app, id).await;
    assert_eq!(taken["outcome"], "imported", "{taken}");
    let status = app
        .wait_done(taken["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(
        status["createdCount"], expect["valid_rows"],
        "the whole file"
    );
    assert_eq!(status["errorCount"], expect["invalid_rows"]);
    // Left in place (`after` defaults to leave): taken once only.
    let later = run(&app, id).await;
    assert_eq!(later["outcome"], "skipped");
    assert_eq!(later["reason"], "no new file");
    assert_eq!(job_count(&app), 1);
}

trait MoveTo {
    fn tap_move_to(self, to: &str) -> Value;
}

impl MoveTo for Value {
    fn tap_move_to(mut self, to: &str) -> Value {
        self["moveTo"] = json!(to);
        self
    }
}

fn set_mtime(path: &Path, seconds_ago: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(seconds_ago))
        .unwrap();
}

async fn latest_takes_only_the_newest_file_and_all_new_every_new_one_oldest_first(
    backend: Backend,
) {
    let root = tempfile::tempdir().unwrap();
    let gen_dir = tempfile::tempdir().unwrap();
    let (old, _) = products(gen_dir.path(), "old.csv", 50, 1);
    let (new, new_expect) = products(gen_dir.path(), "new.csv", 80, 1001);
    let app = app_with_root(backend, root.path(), &[]);
    let mut ids = HashMap::new();
    for pick in ["latest", "all-new"] {
        let dir = root.path().join(pick);
        std::fs::create_dir(&dir).unwrap();
        for (file, name, age) in [(&old, "a-old.csv", 600), (&new, "b-new.csv", 300)] {
            std::fs::copy(file, dir.join(name)).unwrap();
            set_mtime(&dir.join(name), age);
        }
        // A newer file that does not match the glob is not a candidate.
        std::fs::write(dir.join("notes.txt"), "not a price list").unwrap();
        let id = created(
            &app,
            json!({"name": pick, "dataset": "products", "kind": "directory",
                   "schedule": {"every": "1h"}, "pick": pick, "path": dir, "glob": "*.csv",
                   "stableSeconds": 0}),
        )
        .await;
        ids.insert(pick, id);
    }
    let latest = run(&app, ids["latest"]).await;
    assert_eq!(latest["outcome"], "imported", "{latest}");
    assert_eq!(latest["file"], "b-new.csv");
    let status = app
        .wait_done(latest["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(status["createdCount"], new_expect["valid_rows"]);
    let again = run(&app, ids["latest"]).await;
    assert_eq!(again["outcome"], "unchanged", "{again}");
    assert_eq!(runs(&app, ids["latest"]).await.len(), 2);

    let first = run(&app, ids["all-new"]).await;
    assert_eq!(first["file"], "a-old.csv", "oldest first: {first}");
    let all = runs(&app, ids["all-new"]).await;
    let files: Vec<&str> = all.iter().map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(files, vec!["a-old.csv", "b-new.csv"]);
    assert_eq!(
        all[1]["runKey"],
        format!("{}#2", all[0]["runKey"].as_str().unwrap())
    );
    // b-new.csv has the same content as the latest source's file, but another source took it:
    // each source has its own history.
    assert!(all.iter().all(|r| r["outcome"] == "imported"), "{all:?}");
    for r in &all {
        app.wait_done(r["jobId"].as_i64().unwrap(), common::MINUTE)
            .await;
    }
    let none = run(&app, ids["all-new"]).await;
    assert_eq!(none["outcome"], "skipped");
    assert_eq!(none["reason"], "no new file");
}

async fn a_renamed_column_parks_the_run_as_needs_mapping_until_the_source_maps_it(
    backend: Backend,
) {
    let root = tempfile::tempdir().unwrap();
    let app = app_with_root(backend, root.path(), &[]);
    let id = created(
        &app,
        json!({"name": "renamed", "dataset": "products", "kind": "directory",
               "schedule": {"every": "1h"}, "path": root.path(), "stableSeconds": 0,
               "pick": "latest"}),
    )
    .await;
    // `stock` became `Stok`: it would map by similarity only.
    std::fs::write(
        root.path().join("p.csv"),
        "sku,name,Stok,updated_at\nSKU-1,Lamp,3,2024-01-02\nSKU-2,Desk,4,2024-01-03\n",
    )
    .unwrap();
    let parked = run(&app, id).await;
    assert_eq!(parked["outcome"], "needs_mapping", "{parked}");
    assert!(
        parked["reason"]
            .as_str()
            .unwrap()
            .contains("`Stok` → `stock`"),
        "{parked}"
    );
    assert!(parked["jobId"].is_null());
    assert_eq!(job_count(&app), 0);
    // A required column renamed: parked too.
    std::fs::write(
        root.path().join("p.csv"),
        "article,name,stock,updated_at\nSKU-1,Lamp,3,2024-01-02\n",
    )
    .unwrap();
    assert_eq!(run(&app, id).await["outcome"], "needs_mapping");
    assert_eq!(job_count(&app), 0);
    // The source is given the mapping: the next run imports.
    let (status, patched) = common::json_of(
        app.http
            .patch(app.url(&format!("/api/v1/sources/{id}")))
            .bearer_auth(common::TOKEN)
            .json(&json!({"options": {"mapping": {"article": "sku"}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["options"]["mapping"]["article"], "sku");
    let imported = run(&app, id).await;
    assert_eq!(imported["outcome"], "imported", "{imported}");
    let status = app
        .wait_done(imported["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(status["createdCount"], 1);
}

conformance!(
    a_directory_source_imports_a_stable_file_once_moves_it_and_ignores_the_same_content,
    a_growing_file_is_not_taken_until_it_stays_the_same_for_the_window,
    latest_takes_only_the_newest_file_and_all_new_every_new_one_oldest_first,
    a_renamed_column_parks_the_run_as_needs_mapping_until_the_source_maps_it,
    subscriptions_mail_own_imports_the_organisations_and_needs_mapping_once_per_address,
);

/// A local HTTP server that serves one file with an ETag and Last-Modified, answers 304 to a
/// matching `If-None-Match`, and writes the `Authorization` header it received to a file; a POST
/// (a webhook delivery) is answered 200 and written there as `POST <path> <type>`. With a
/// certificate and key as further arguments it speaks HTTPS.
const ETAG_SERVER: &str = r#"
import hashlib, http.server, json, os, ssl, sys
root, seen = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()
        with open(seen, 'a') as f:
            f.write('POST ' + self.path + ' ' + json.loads(body).get('type', '?') + '\n')
    def do_GET(self):
        with open(seen, 'a') as f:
            f.write((self.headers.get('Authorization') or '-') + ' ' + (self.headers.get('If-None-Match') or '-') + '\n')
        path = os.path.join(root, os.path.basename(self.path))
        if not os.path.isfile(path):
            self.send_response(404); self.end_headers(); return
        body = open(path, 'rb').read()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.headers.get('If-None-Match') == etag:
            self.send_response(304); self.send_header('ETag', etag); self.end_headers(); return
        self.send_response(200)
        self.send_header('ETag', etag)
        self.send_header('Last-Modified', self.date_time_string(os.path.getmtime(path)))
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
if len(sys.argv) > 4:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[3], sys.argv[4])
    s.socket = tls.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// The Python server above, killed when dropped.
struct EtagServer {
    child: Child,
    port: u16,
    seen: PathBuf,
}

impl EtagServer {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// HTTPS with this certificate chain and key.
    fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Self {
        Self::start_with(dir, &[cert, key])
    }

    fn start_with(dir: &Path, tls: &[&Path]) -> Self {
        let script = dir.join("etag_server.py");
        std::fs::write(&script, ETAG_SERVER).unwrap();
        let seen = dir.join("seen.txt");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir)
            .arg(&seen)
            .args(tls)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server's port");
        EtagServer { child, port, seen }
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.seen)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for EtagServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (openssl): the CA's PEM, the
/// server's certificate and key.
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=sluice test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test]
async fn https_sources_and_webhooks_trust_the_tls_ca_file_and_name_an_untrusted_certificate() {
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(files.path());
    let server = EtagServer::start_tls(files.path(), &cert, &key);
    let (_, expect) = products(files.path(), "prices.csv", 250, 1);
    let url = format!("https://127.0.0.1:{}/prices.csv", server.port);
    let source = json!({"name": "tls", "dataset": "products", "kind": "url",
                        "schedule": {"every": "1h"}, "url": url});

    // Trusting the test CA: the file is fetched over TLS, imported, and a webhook is delivered
    // to an https:// receiver; the next run is a conditional request answered 304.
    let app = spawn_app(AppOptions {
        webhook_allow_private: true,
        extra_args: vec![
            "--source-allow-private".into(),
            "--tls-ca-file".into(),
            ca.to_string_lossy().into_owned(),
        ],
        ..Default::default()
    });
    let hook = format!("https://127.0.0.1:{}/hook", server.port);
    let (status, body) = common::json_of(
        app.post("/api/v1/webhooks")
            .json(&json!({"url": hook, "events": ["job.completed"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = created(&app, source.clone()).await;
    let first = run(&app, id).await;
    assert_eq!(first["outcome"], "imported", "{first}");
    let job = first["jobId"].as_i64().unwrap();
    let status = app.wait_done(job, common::MINUTE).await;
    assert_eq!(status["createdCount"], expect["valid_rows"]);
    assert_eq!(run(&app, id).await["outcome"], "unchanged");
    let start = Instant::now();
    while !server
        .requests()
        .iter()
        .any(|r| r == "POST /hook job.completed")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no webhook over TLS: {:?}",
            server.requests()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without the CA the same certificate is not trusted, and the run says so.
    let strict = spawn_app(AppOptions {
        webhook_allow_private: true,
        extra_args: vec!["--source-allow-private".into()],
        ..Default::default()
    });
    let id = created(&strict, source).await;
    let refused = run(&strict, id).await;
    assert_eq!(refused["outcome"], "failed", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("cannot fetch the URL: TLS: invalid peer certificate"),
        "{reason}"
    );
    assert_eq!(job_count(&strict), 0);

    // A CA file that holds no certificate stops the server at start with a clear message.
    let empty = files.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(files.path().join("never"))
        .arg("--tls-ca-file")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-ca-file") && err.contains("no PEM certificate"),
        "{err}"
    );
}

const SECRET: &str = "Bearer supersecret-7f3a";

#[tokio::test]
async fn an_unchanged_url_answers_304_and_starts_no_job_and_its_secret_is_never_shown() {
    let files = tempfile::tempdir().unwrap();
    let server = EtagServer::start(files.path());
    let (file, expect) = products(files.path(), "prices.csv", 300, 1);
    let log = tempfile::tempdir().unwrap();
    let log_file = log.path().join("server.log");
    let app = spawn_app(AppOptions {
        extra_args: vec!["--source-allow-private".into()],
        log_file: Some(log_file.clone()),
        ..Default::default()
    });
    let url = format!("http://127.0.0.1:{}/prices.csv", server.port);
    let (status, answer) = create(
        &app,
        json!({"name": "supplier", "dataset": "products", "kind": "url", "schedule": {"every": "1h"},
               "url": url, "headers": {"Authorization": SECRET}}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert!(!answer.to_string().contains("supersecret"), "{answer}");
    assert_eq!(answer["data"]["headerNames"], json!(["Authorization"]));
    let id = answer["data"]["id"].as_i64().unwrap();

    let first = run(&app, id).await;
    assert_eq!(first["outcome"], "imported", "{first}");
    assert_eq!(first["sha256"], expect["file_sha256"]);
    let status = app
        .wait_done(first["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(status["createdCount"], expect["valid_rows"]);
    let second = run(&app, id).await;
    assert_eq!(second["outcome"], "unchanged", "{second}");
    assert_eq!(second["reason"], "not modified (HTTP 304)");
    assert_eq!(job_count(&app), 1);
    let seen = server.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with(&format!("{SECRET} -")), "{seen:?}");
    assert!(
        seen[1].starts_with(SECRET) && !seen[1].ends_with(" -"),
        "the second request is conditional: {seen:?}"
    );
    // A new file at the URL: imported.
    let (changed, changed_expect) = products(files.path(), "next.csv", 120, 5001);
    std::fs::copy(&changed, &file).unwrap();
    let third = run(&app, id).await;
    assert_eq!(third["outcome"], "imported", "{third}");
    let status = app
        .wait_done(third["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(status["createdCount"], changed_expect["valid_rows"]);
    // A URL that answers 404: failed, with the status.
    let (_, missing) = create(
        &app,
        json!({"name": "missing", "dataset": "products", "kind": "url", "schedule": {"every": "1h"},
               "url": format!("http://127.0.0.1:{}/nothing.csv", server.port)}),
    )
    .await;
    let failed = run(&app, missing["data"]["id"].as_i64().unwrap()).await;
    assert_eq!(failed["outcome"], "failed");
    assert_eq!(failed["reason"], "the server answered HTTP 404");

    for path in [
        "/api/v1/sources".to_string(),
        format!("/api/v1/sources/{id}"),
        format!("/api/v1/sources/{id}/runs"),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 200);
        assert!(!body.to_string().contains("supersecret"), "{path}: {body}");
    }
    let text = std::fs::read_to_string(&log_file).unwrap();
    assert!(text.contains("/api/v1/sources"), "the log has the requests");
    assert!(!text.contains("supersecret"), "{text}");
}

#[tokio::test]
async fn sources_are_for_admins_of_their_organisation_and_bad_settings_are_400s() {
    let root = tempfile::tempdir().unwrap();
    let app = app_with_root(Backend::Sqlite, root.path(), &[]);
    let ok = json!({"name": "a", "dataset": "products", "kind": "directory",
                    "schedule": {"every": "10m"}, "path": root.path()});
    let id = created(&app, ok.clone()).await;
    let (status, dup) = create(&app, ok.clone()).await;
    assert_eq!(
        (status, dup["error"]["code"].as_str()),
        (409, Some("source_exists"))
    );

    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b["name"] = json!("b");
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v;
        }
        b
    };
    for (body, code) in [
        (json!([1, 2]), "invalid_body"),
        (
            with("schedule", json!({"every": "soon"})),
            "invalid_schedule",
        ),
        (
            with("schedule", json!({"cron": "0 2 * *"})),
            "invalid_schedule",
        ),
        (
            with(
                "schedule",
                json!({"cron": "0 2 * * *", "timezone": "Nowhere/City"}),
            ),
            "invalid_schedule",
        ),
        (with("schedule", json!({})), "invalid_schedule"),
        (with("dataset", json!("nope")), "unknown_dataset"),
        (with("path", json!("/etc")), "source_path_not_allowed"),
        (
            with("path", json!(root.path().join("../.."))),
            "source_path_not_allowed",
        ),
        (with("kind", json!("sftp")), "invalid_source"),
        (with("kind", json!("ftp")), "invalid_body"),
        (with("pick", json!("oldest")), "invalid_body"),
        (with("after", json!("move")), "invalid_source"),
        (
            with("after", json!("move")).tap_move_to("../../elsewhere"),
            "source_path_not_allowed",
        ),
        (
            with("after", json!("move")).tap_move_to("/tmp/sluice-not-a-root"),
            "source_path_not_allowed",
        ),
        (
            with("url", json!("http://example.com/x.csv")),
            "invalid_source",
        ),
        (with("options", json!({"mode": "merge"})), "invalid_mode"),
        (with("notify", json!(["not an address"])), "invalid_notify"),
        (with("surprise", json!(1)), "invalid_body"),
        (
            json!({"name": "u", "dataset": "products", "kind": "url", "schedule": {"every": "1m"},
                   "url": "http://127.0.0.1:9/x.csv"}),
            "source_url_not_allowed",
        ),
        (
            json!({"name": "u", "dataset": "products", "kind": "url", "schedule": {"every": "1m"},
                   "url": "file:///etc/passwd"}),
            "invalid_url",
        ),
    ] {
        let (status, answer) = create(&app, body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {answer}"
        );
    }

    // A member of the organisation: 403 everywhere; another organisation's admin: 404.
    let (_, org_token) = common::org_with_admin(&app, "other");
    let member = common::created(
        &app,
        &[
            "user", "create", "--org", "default", "--name", "mia", "--role", "member",
        ],
    );
    let (member_token, _) = common::token_for(&app, member, &[]);
    let paths = [
        ("GET", "/api/v1/sources".to_string()),
        ("GET", format!("/api/v1/sources/{id}")),
        ("GET", format!("/api/v1/sources/{id}/runs")),
        ("POST", format!("/api/v1/sources/{id}/run")),
        ("PATCH", format!("/api/v1/sources/{id}")),
        ("DELETE", format!("/api/v1/sources/{id}")),
    ];
    for (method, path) in &paths {
        for (token, want) in [(&member_token, 403), (&org_token, 404)] {
            if *path == "/api/v1/sources" && want == 404 {
                continue;
            }
            let resp = app
                .http
                .request(method.parse().unwrap(), app.url(path))
                .bearer_auth(token)
                .json(&json!({"enabled": false}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), want, "{method} {path}");
        }
    }
    let (_, others) = common::json_of(
        app.http
            .get(app.url("/api/v1/sources"))
            .bearer_auth(&org_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(others["data"]["sources"], json!([]));

    // PATCH: disabling clears the next slot; the whole is checked again.
    let patch = |body: Value| {
        app.http
            .patch(app.url(&format!("/api/v1/sources/{id}")))
            .bearer_auth(common::TOKEN)
            .json(&body)
            .send()
    };
    let (status, off) = common::json_of(patch(json!({"enabled": false})).await.unwrap()).await;
    assert_eq!(status, 200, "{off}");
    assert_eq!(off["data"]["enabled"], false);
    assert!(off["data"]["nextDueAt"].is_null());
    let (status, bad) =
        common::json_of(patch(json!({"schedule": {"every": "x"}})).await.unwrap()).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_schedule"))
    );
    let (status, bad) = common::json_of(patch(json!("x")).await.unwrap()).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    // A disabled source still runs when asked.
    assert_eq!(run(&app, id).await["outcome"], "skipped");
    let resp = app
        .http
        .delete(app.url(&format!("/api/v1/sources/{id}")))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = app.get_json(&format!("/api/v1/sources/{id}/runs")).await;
    assert_eq!(status, 404);
    assert!(
        !Path::new("/tmp/sluice-not-a-root").exists(),
        "nothing is created outside the roots"
    );
}

#[tokio::test]
async fn a_slot_missed_while_the_server_was_down_fires_once() {
    let root = tempfile::tempdir().unwrap();
    let mut app = app_with_root(Backend::Sqlite, root.path(), &[]);
    let id = created(
        &app,
        json!({"name": "hourly", "dataset": "products", "kind": "directory",
               "schedule": {"every": "1h"}, "path": root.path()}),
    )
    .await;
    app.terminate();
    // Down for five hours: five slots missed.
    app.db().execute(&format!(
        "UPDATE sources SET next_due_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-5 hours') \
         WHERE id = {id}"
    ));
    app.start();
    let start = Instant::now();
    while runs(&app, id).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the missed slot never fired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several scheduler ticks later, still one run, and the next slot is an hour from now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = runs(&app, id).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["trigger"], "schedule");
    let (_, source) = app.get_json(&format!("/api/v1/sources/{id}")).await;
    let next: chrono::DateTime<chrono::Utc> = source["data"]["nextDueAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ahead = next - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::minutes(58) && ahead <= chrono::Duration::hours(1),
        "{ahead}"
    );
    // Restarted without the root: the directory is no longer allowed.
    app.terminate();
    app.options.extra_args.clear();
    app.start();
    let refused = run(&app, id).await;
    assert_eq!(refused["outcome"], "failed");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("allows no directory sources"),
        "{refused}"
    );
}

/// A second `sluice serve` on the test's PostgreSQL database; killed when dropped.
struct SecondServer(Child);

impl SecondServer {
    fn start(app: &TestApp, root: &Path) -> Self {
        let data = app.path("second-data");
        let mut child = Command::new(common::binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--database-url")
            .arg(app.database_url().unwrap())
            .arg("--source-root")
            .arg(root)
            .env("SLUICE_LOG", "warn")
            .env_remove("SLUICE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a second sluice");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "second server exited"
            );
            if line.starts_with("sluice listening on ") {
                break;
            }
        }
        std::thread::spawn(move || for _ in reader.lines() {});
        SecondServer(child)
    }
}

impl Drop for SecondServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn two_servers_on_one_postgres_database_fire_each_slot_exactly_once() {
    if !common::postgres_wanted() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let app = app_with_root(Backend::Postgres, root.path(), &[]);
    let _second = SecondServer::start(&app, root.path());
    let id = created(
        &app,
        json!({"name": "every-second", "dataset": "products", "kind": "directory",
               "schedule": {"every": "1s"}, "path": root.path()}),
    )
    .await;
    // Both schedulers look every 250 ms; give them six slots.
    let start = Instant::now();
    while runs(&app, id).await.len() < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the schedule does not fire"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let per_key = app.db().rows(&format!(
        "SELECT run_key, count(*) FROM source_runs WHERE source_id = {id} GROUP BY run_key"
    ));
    assert!(per_key.len() >= 6, "{per_key:?}");
    for row in &per_key {
        assert_eq!(
            row[1].as_deref(),
            Some("1"),
            "slot fired more than once: {per_key:?}"
        );
        assert!(row[0].as_deref().unwrap().starts_with("slot:"));
    }
    let slots = app.db().rows(&format!(
        "SELECT scheduled_for FROM source_runs WHERE source_id = {id} ORDER BY scheduled_for"
    ));
    let distinct: std::collections::BTreeSet<_> = slots.iter().map(|r| r[0].clone()).collect();
    assert_eq!(distinct.len(), slots.len(), "one run per slot: {slots:?}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zipped(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        z.start_file(
            *name,
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// `sluice_source_runs_total{outcome="…"}` from `/metrics`.
async fn runs_counted(app: &TestApp, outcome: &str) -> u64 {
    let text = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("sluice_source_runs_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn gz_and_single_file_zip_are_unpacked_a_done_marker_makes_a_file_ready_and_delete_removes_it()
 {
    let root = tempfile::tempdir().unwrap();
    let app = app_with_root(Backend::Sqlite, root.path(), &[]);
    let id = created(
        &app,
        json!({"name": "packed", "dataset": "products", "kind": "directory",
               "schedule": {"every": "1h"}, "path": root.path(), "doneMarker": true,
               "after": "delete"}),
    )
    .await;
    let gen_dir = tempfile::tempdir().unwrap();
    let (a, a_expect) = products(gen_dir.path(), "a.csv", 300, 1);
    let (b, b_expect) = products(gen_dir.path(), "b.csv", 200, 1001);
    std::fs::write(
        root.path().join("a.csv.gz"),
        gzip(&std::fs::read(&a).unwrap()),
    )
    .unwrap();
    std::fs::write(root.path().join("a.csv.gz.done"), "").unwrap();
    std::fs::write(
        root.path().join("b.zip"),
        zipped(&[("inner/b.csv", &std::fs::read(&b).unwrap())]),
    )
    .unwrap();

    let first = run(&app, id).await;
    assert_eq!(first["outcome"], "imported", "{first}");
    assert_eq!(first["file"], "a.csv.gz");
    assert_eq!(
        first["sha256"], a_expect["file_sha256"],
        "the unpacked content's"
    );
    let status = app
        .wait_done(first["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(status["filename"], "a.csv");
    assert_eq!(status["createdCount"], a_expect["valid_rows"]);
    assert_eq!(status["errorCount"], a_expect["invalid_rows"]);
    assert!(!root.path().join("a.csv.gz").exists(), "deleted");
    assert!(
        !root.path().join("a.csv.gz.done").exists(),
        "its marker too"
    );
    assert_eq!(runs(&app, id).await.len(), 1, "b.zip waits for its marker");
    assert!(root.path().join("b.zip").exists());

    std::fs::write(root.path().join("b.zip.done"), "").unwrap();
    let second = run(&app, id).await;
    assert_eq!(second["outcome"], "imported", "{second}");
    let status = app
        .wait_done(second["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(status["filename"], "b.csv");
    assert_eq!(status["createdCount"], b_expect["valid_rows"]);

    std::fs::write(
        root.path().join("two.zip"),
        zipped(&[("x.csv", b"sku\n1\n"), ("y.csv", b"sku\n2\n")]),
    )
    .unwrap();
    std::fs::write(root.path().join("two.zip.done"), "").unwrap();
    let failed = run(&app, id).await;
    assert_eq!(failed["outcome"], "failed", "{failed}");
    assert_eq!(
        failed["reason"],
        "two.zip holds 2 files; a zipped source file must hold exactly one"
    );
    assert!(root.path().join("two.zip").exists(), "a failed file stays");
    assert_eq!(job_count(&app), 2);
    assert_eq!(runs_counted(&app, "imported").await, 2);
    assert_eq!(runs_counted(&app, "failed").await, 1);
    assert_eq!(runs_counted(&app, "needs_mapping").await, 0);
}

fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(common::binary())
        .args(args)
        .env("SLUICE_SERVER", &app.base)
        .env("SLUICE_TOKEN", common::TOKEN)
        .output()
        .expect("run sluice")
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_cli_adds_lists_runs_and_shows_the_runs_of_a_source() {
    let root = tempfile::tempdir().unwrap();
    let app = app_with_root(Backend::Sqlite, root.path(), &[]);
    let dir = root.path().display().to_string();
    let id: i64 = stdout_of(&cli(
        &app,
        &[
            "source",
            "add",
            "drop",
            "--dataset",
            "products",
            "--dir",
            &dir,
            "--glob",
            "*.csv",
            "--stable-seconds",
            "0",
            "--cron",
            "30 6 * * 1-5",
            "--timezone",
            "Europe/Berlin",
            "--pick",
            "latest",
        ],
    ))
    .trim()
    .parse()
    .unwrap();
    let list = stdout_of(&cli(&app, &["source", "list"]));
    assert!(
        list.contains(&format!(
            "{id}\tdrop\tdirectory\tproducts\tcron 30 6 * * 1-5 Europe/Berlin\t"
        )),
        "{list}"
    );
    let gen_dir = tempfile::tempdir().unwrap();
    let (file, expect) = products(gen_dir.path(), "p.csv", 100, 1);
    std::fs::copy(&file, root.path().join("p.csv")).unwrap();
    let ran = stdout_of(&cli(&app, &["source", "run", &id.to_string()]));
    assert!(ran.contains("imported  p.csv  job 1"), "{ran}");
    let status = app.wait_done(1, common::MINUTE).await;
    assert_eq!(status["createdCount"], expect["valid_rows"]);
    let again = stdout_of(&cli(&app, &["source", "run", &id.to_string()]));
    assert!(again.contains("unchanged  p.csv"), "{again}");
    let shown = stdout_of(&cli(&app, &["source", "runs", &id.to_string()]));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    assert!(lines[0].contains("unchanged") && lines[1].contains("imported"));
    assert_eq!(lines[2], "2 run(s) in all");
    // A refused setting: the API's code and message, non-zero exit.
    let bad = cli(
        &app,
        &[
            "source",
            "add",
            "x",
            "--dataset",
            "products",
            "--dir",
            "/etc",
            "--every",
            "1h",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("400 source_path_not_allowed"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// A real SMTP server (aiosmtpd) on `port`, writing each message it receives as JSON
/// (`to`, `subject`, `body`, decoded) into `out`; stopped when dropped.
const SMTP_SERVER: &str = r#"
import email, email.policy, json, os, signal, sys
from aiosmtpd.controller import Controller
port, out = int(sys.argv[1]), sys.argv[2]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        n = len([f for f in os.listdir(out) if f.endswith('.json')])
        path = os.path.join(out, '%04d.json' % n)
        with open(path + '.part', 'w') as f:
            json.dump({'to': envelope.rcpt_tos, 'from': str(msg['from']), 'subject': str(msg['subject']),
                       'body': msg.get_content()}, f)
        os.rename(path + '.part', path)
        return '250 OK'
tls = {}
if len(sys.argv) > 3:
    import ssl
    mode, cert, key = sys.argv[3:6]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls = {'ssl_context': context} if mode == 'tls' else {'tls_context': context, 'require_starttls': True}
controller = Controller(Handler(), hostname='127.0.0.1', port=port, **tls)
controller.start()
print('ready', flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
controller.stop()
"#;

struct SmtpServer(Child);

impl SmtpServer {
    fn start(dir: &Path, port: u16, out: &Path) -> Self {
        Self::start_with(dir, port, out, &[])
    }

    /// `mode` `starttls` (required before MAIL) or `tls` (from the first byte), with this
    /// certificate and key.
    fn start_tls(dir: &Path, port: u16, out: &Path, mode: &str, cert: &Path, key: &Path) -> Self {
        Self::start_with(
            dir,
            port,
            out,
            &[mode.as_ref(), cert.as_os_str(), key.as_os_str()],
        )
    }

    fn start_with(dir: &Path, port: u16, out: &Path, tls: &[&std::ffi::OsStr]) -> Self {
        let script = dir.join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(out)
            .args(tls)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "aiosmtpd did not start (pip install aiosmtpd)"
        );
        SmtpServer(child)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn received(out: &Path) -> Vec<Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

async fn emails(app: &TestApp, id: i64) -> Vec<Value> {
    let (status, body) = app.get_json(&format!("/api/v1/sources/{id}/emails")).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["emails"].as_array().unwrap().clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until every e-mail of the source is delivered, or one fails for good.
async fn all_delivered(app: &TestApp, id: i64, count: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let list = emails(app, id).await;
        if list.len() == count && list.iter().all(|e| e["state"] == "delivered") {
            return list;
        }
        assert!(start.elapsed() < common::MINUTE, "not delivered: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn e_mails_go_over_starttls_or_tls_and_an_untrusted_mail_server_is_not_sent_to() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(certs.path());
    let ca_arg = ca.to_string_lossy().into_owned();
    let gen_dir = tempfile::tempdir().unwrap();
    let (file, expect) = products(gen_dir.path(), "p.csv", 50, 1);
    // A server that insists on STARTTLS, one that speaks TLS from the start, and (for the
    // refusal) a STARTTLS server the sluice server has no CA for.
    for (mode, scheme, starttls, trusted) in [
        ("starttls", "smtp", true, true),
        ("tls", "smtps", false, true),
        ("starttls", "smtp", true, false),
    ] {
        let root = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let port = free_port();
        let _smtp = SmtpServer::start_tls(root.path(), port, out.path(), mode, &cert, &key);
        let smtp_url = format!("{scheme}://127.0.0.1:{port}");
        let mut args = vec!["--smtp-url", &smtp_url, "--smtp-from", "sluice@example.com"];
        args.extend(["--smtp-backoff-ms", "100"]);
        if starttls {
            args.push("--smtp-starttls");
        }
        if trusted {
            args.extend(["--tls-ca-file", &ca_arg]);
        }
        let app = app_with_root(Backend::Sqlite, root.path(), &args);
        let drop_dir = root.path().join("drop");
        std::fs::create_dir(&drop_dir).unwrap();
        std::fs::copy(&file, drop_dir.join("p.csv")).unwrap();
        let id = created(
            &app,
            json!({"name": "prices", "dataset": "products", "kind": "directory",
                   "schedule": {"every": "1h"}, "path": drop_dir, "stableSeconds": 0,
                   "notify": ["ops@example.com"]}),
        )
        .await;
        let imported = run(&app, id).await;
        assert_eq!(imported["outcome"], "imported", "{imported}");
        let job = imported["jobId"].as_i64().unwrap();
        assert_eq!(
            app.wait_done(job, common::MINUTE).await["createdCount"],
            expect["valid_rows"]
        );
        if trusted {
            all_delivered(&app, id, 1).await;
            let got = received(out.path());
            assert_eq!(got.len(), 1, "{mode}: {got:?}");
            assert!(
                got[0]["subject"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("job {job} completed")),
                "{mode}: {got:?}"
            );
        } else {
            let start = Instant::now();
            loop {
                let list = emails(&app, id).await;
                if let Some(error) = list.first().and_then(|e| e["lastError"].as_str()) {
                    assert!(error.contains("certificate"), "{error}");
                    assert_eq!(list[0]["state"], "pending");
                    break;
                }
                assert!(start.elapsed() < common::MINUTE, "no attempt: {list:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(received(out.path()).is_empty(), "nothing is sent in clear");
        }
    }
}

/// POSTs JSON as `token`.
async fn post_as(app: &TestApp, token: &str, path: &str, body: Value) -> (u16, Value) {
    common::json_of(
        app.http
            .post(app.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn subscriptions_mail_own_imports_the_organisations_and_needs_mapping_once_per_address(
    backend: Backend,
) {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let _smtp = SmtpServer::start(root.path(), port, out.path());
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let app = app_with_root(
        backend,
        root.path(),
        &["--smtp-url", &smtp_url, "--smtp-from", "sluice@example.com"],
    );
    let admin = common::TOKEN;
    let mia = common::created(
        &app,
        &[
            "user", "create", "--org", "default", "--name", "mia", "--role", "member",
        ],
    );
    let (mia, _) = common::token_for(&app, mia, &[]);
    let subscribe = |token: &'static str, body: Value| {
        let app = &app;
        async move { post_as(app, token, "/api/v1/me/subscriptions", body).await }
    };
    let mia: &'static str = Box::leak(mia.into_boxed_str());

    // The rules: a member subscribes to their own imports only.
    for (body, code) in [
        (
            json!({"address": "mia@example.com", "scope": "organisation"}),
            "forbidden",
        ),
        (
            json!({"address": "mia@example.com", "events": ["needs_mapping"]}),
            "forbidden",
        ),
        (json!({"address": "not an address"}), "invalid_address"),
        (
            json!({"address": "mia@example.com", "events": ["exploded"]}),
            "invalid_events",
        ),
        (
            json!({"address": "mia@example.com", "scope": "everyone"}),
            "invalid_scope",
        ),
        (
            json!({"address": "mia@example.com", "extra": 1}),
            "invalid_body",
        ),
    ] {
        let (status, answer) = subscribe(mia, body.clone()).await;
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(status, if code == "forbidden" { 403 } else { 400 });
    }
    let (status, own) = subscribe(mia, json!({"address": "mia@example.com"})).await;
    assert_eq!(status, 201, "{own}");
    assert_eq!(own["data"]["events"], json!(["completed", "failed"]));
    assert_eq!(own["data"]["scope"], "mine");
    let (status, again) = subscribe(mia, json!({"address": "mia@example.com"})).await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("subscription_exists"))
    );
    // The admin: their own imports to one address, the organisation's failures and parked
    // source runs to another.
    let (status, _) = subscribe(admin, json!({"address": "boss@example.com"})).await;
    assert_eq!(status, 201);
    let (status, ops) = subscribe(
        admin,
        json!({"address": "ops@example.com", "scope": "organisation",
               "events": ["failed", "needs_mapping"]}),
    )
    .await;
    assert_eq!(status, 201, "{ops}");

    // Mia's import completes; her next, a sync that would delete too much, fails.
    let two = "sku,name,stock,updated_at\nSKU-1,Lamp,3,2024-01-02\nSKU-2,Desk,4,2024-01-03\n";
    let (_, a) = app
        .upload_text_as(mia, "/api/v1/import/products", "a.csv", two, &[])
        .await;
    let a = common::job_id(&a);
    assert_eq!(app.wait_done_as(mia, a).await["status"], "completed");
    let one = "sku,name,stock,updated_at\nSKU-1,Lamp,5,2024-01-04\n";
    let fields = [("mode", "sync"), ("maxDeletePercent", "10")];
    let (_, b) = app
        .upload_text_as(mia, "/api/v1/import/products", "b.csv", one, &fields)
        .await;
    let b = common::job_id(&b);
    assert_eq!(app.wait_done_as(mia, b).await["status"], "failed");
    // The admin's source imports a file (its `notify` names the admin's own address too, for
    // completed jobs: one e-mail), then parks a renamed column (not for that address).
    let (status, bad) = create(
        &app,
        json!({"name": "x", "dataset": "products", "kind": "directory", "schedule": {"every": "1h"},
               "path": root.path(), "notify": [{"address": "a@example.com", "events": ["done"]}]}),
    )
    .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_notify"))
    );
    let drop_dir = root.path().join("drop");
    std::fs::create_dir(&drop_dir).unwrap();
    std::fs::write(
        drop_dir.join("c.csv"),
        "sku,name,stock,updated_at\nSKU-9,Lamp,1,2024-01-02\n",
    )
    .unwrap();
    let source = created(
        &app,
        json!({"name": "drop", "dataset": "products", "kind": "directory",
               "schedule": {"every": "1h"}, "path": drop_dir, "stableSeconds": 0,
               "pick": "latest",
               "notify": [{"address": "boss@example.com", "events": ["completed"]}]}),
    )
    .await;
    let imported = run(&app, source).await;
    let c = imported["jobId"].as_i64().unwrap();
    assert_eq!(
        app.wait_done(c, common::MINUTE).await["status"],
        "completed"
    );
    std::fs::write(
        drop_dir.join("c.csv"),
        "sku,name,Stok,updated_at\nSKU-9,Lamp,1,2024-01-05\n",
    )
    .unwrap();
    assert_eq!(run(&app, source).await["outcome"], "needs_mapping");

    // In the order of (address, subject).
    let expected = [
        ("boss@example.com", format!("job {c} completed")),
        ("mia@example.com", format!("job {a} completed")),
        ("mia@example.com", format!("job {b} failed")),
        ("ops@example.com", "c.csv needs a mapping".to_string()),
        ("ops@example.com", format!("job {b} failed")),
    ];
    let start = Instant::now();
    while received(out.path()).len() < expected.len() {
        assert!(
            start.elapsed() < common::MINUTE,
            "{:?}",
            received(out.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Three more rounds of the notifier (every 0.5 s) plan nothing more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got: Vec<(String, String)> = received(out.path())
        .iter()
        .map(|m| {
            (
                m["to"][0].as_str().unwrap().to_string(),
                m["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for ((to, subject), (want_to, want)) in got.iter().zip(&expected) {
        assert_eq!(to, want_to, "{got:?}");
        assert!(
            subject.contains(want.as_str()),
            "{subject} lacks {want}: {got:?}"
        );
    }

    // Each user sees their subscriptions' e-mails; a member cannot delete another's.
    let (status, mine) = common::json_of(
        app.http
            .get(app.url("/api/v1/me/emails"))
            .bearer_auth(mia)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["data"]["total"], 2, "{mine}");
    assert!(
        mine["data"]["emails"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "delivered" && e["subscriptionId"] == own["data"]["id"]),
        "{mine}"
    );
    let ops_id = ops["data"]["id"].as_i64().unwrap();
    let delete = |token: &'static str, id: i64| {
        let app = &app;
        async move {
            app.http
                .delete(app.url(&format!("/api/v1/me/subscriptions/{id}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(delete(mia, ops_id).await, 404);
    assert_eq!(delete(admin, ops_id).await, 200);
    let (_, left) = app.get_json("/api/v1/me/subscriptions").await;
    assert_eq!(
        left["data"]["subscriptions"].as_array().unwrap().len(),
        1,
        "{left}"
    );

    // The CLI, as the admin: add, list, the e-mails, remove.
    let id = stdout_of(&cli(
        &app,
        &[
            "subscription",
            "add",
            "cli@example.com",
            "--events",
            "failed,needs_mapping",
        ],
    ));
    let listed = stdout_of(&cli(&app, &["subscription", "list"]));
    assert!(
        listed.contains(&format!(
            "{}\tcli@example.com\tfailed,needs_mapping\tmine",
            id.trim()
        )),
        "{listed}"
    );
    let mails = stdout_of(&cli(&app, &["subscription", "emails"]));
    assert!(mails.starts_with("ID\tSTATE"), "{mails}");
    let refused = cli(&app, &["subscription", "add", "cli@example.com"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("409 subscription_exists"));
    stdout_of(&cli(&app, &["subscription", "remove", id.trim()]));
    assert!(!stdout_of(&cli(&app, &["subscription", "list"])).contains("cli@example.com"));
}

#[tokio::test]
async fn e_mails_tell_of_a_parked_run_and_a_completed_job_and_wait_out_a_stopped_mail_server() {
    let root = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let app = app_with_root(
        Backend::Sqlite,
        root.path(),
        &[
            "--smtp-url",
            &smtp_url,
            "--smtp-from",
            "sluice <sluice@example.com>",
            "--smtp-backoff-ms",
            "100",
            "--public-url",
            "http://sluice.example:8080",
        ],
    );
    let drop_dir = root.path().join("drop");
    std::fs::create_dir(&drop_dir).unwrap();
    let id = created(
        &app,
        json!({"name": "prices", "dataset": "products", "kind": "directory",
               "schedule": {"every": "1h"}, "path": drop_dir, "stableSeconds": 0,
               "pick": "latest", "notify": ["ops@example.com"]}),
    )
    .await;
    // The mail server is down: a parked run, then an import.
    std::fs::write(
        drop_dir.join("p.csv"),
        "sku,name,Stok,updated_at\nSKU-1,Lamp,3,2024-01-02\n",
    )
    .unwrap();
    assert_eq!(run(&app, id).await["outcome"], "needs_mapping");
    let gen_dir = tempfile::tempdir().unwrap();
    let (file, expect) = products(gen_dir.path(), "p.csv", 400, 1);
    std::fs::copy(&file, drop_dir.join("p.csv")).unwrap();
    let imported = run(&app, id).await;
    assert_eq!(imported["outcome"], "imported", "{imported}");
    let job = imported["jobId"].as_i64().unwrap();
    let status = app.wait_done(job, common::MINUTE).await;
    assert_eq!(
        status["status"], "completed",
        "the import does not wait for mail"
    );
    let start = Instant::now();
    loop {
        let list = emails(&app, id).await;
        if list.len() == 2 && list.iter().all(|e| e["attempts"].as_u64() >= Some(2)) {
            for e in &list {
                assert_eq!(e["state"], "pending", "{e}");
                assert!(
                    e["lastError"].as_str().unwrap().contains("mail server"),
                    "{e}"
                );
                assert!(e["nextAttemptAt"].is_string());
            }
            break;
        }
        assert!(start.elapsed() < common::MINUTE, "not retried: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The mail server comes back: each e-mail arrives once.
    let out = tempfile::tempdir().unwrap();
    let _smtp = SmtpServer::start(root.path(), port, out.path());
    let start = Instant::now();
    while emails(&app, id)
        .await
        .iter()
        .any(|e| e["state"] != "delivered")
    {
        assert!(start.elapsed() < common::MINUTE, "never delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut got = received(out.path());
    assert_eq!(got.len(), 2, "{got:?}");
    got.sort_by_key(|m| m["subject"].as_str().unwrap().contains("needs a mapping"));
    let (done, parked) = (&got[0], &got[1]);
    for m in &got {
        assert_eq!(m["to"], json!(["ops@example.com"]));
        assert!(
            m["from"].as_str().unwrap().contains("sluice@example.com"),
            "{m}"
        );
    }
    assert_eq!(parked["subject"], "[sluice] prices: p.csv needs a mapping");
    let body = parked["body"].as_str().unwrap();
    assert!(body.contains("`Stok` → `stock`"), "{body}");
    assert!(
        body.contains(&format!(
            "http://sluice.example:8080/api/v1/sources/{id}/runs"
        )),
        "{body}"
    );
    let counts = format!(
        "{} created, 0 updated, 0 unchanged, {} rejected",
        expect["valid_rows"], expect["invalid_rows"]
    );
    assert_eq!(
        done["subject"],
        format!("[sluice] prices: job {job} completed ({counts})")
    );
    let body = done["body"].as_str().unwrap();
    assert!(body.contains(&format!("Rows: {counts}.")), "{body}");
    assert!(
        body.contains(&format!("http://sluice.example:8080/#/jobs/{job}")),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "http://sluice.example:8080/api/v1/import/{job}/errors?format=csv"
        )),
        "{body}"
    );
    let list = emails(&app, id).await;
    assert!(
        list.iter().all(|e| e["deliveredAt"].is_string()),
        "{list:?}"
    );
    let events: Vec<&str> = list.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, vec!["completed", "needs_mapping"]);
    let text = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |result: &str| -> u64 {
        let series = format!("sluice_source_emails_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(count("delivered"), 2);
    assert!(count("retrying") >= 2);
    assert_eq!(count("failed"), 0);
}

/// An OpenSSH server (Debian's `sshd`) of the test's own: its config, a fresh host key, the
/// test's key authorised for the current user, on a free port of 127.0.0.1. Killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
    /// `SHA256:…` of its host key.
    host_key: String,
    /// The authorised private key (OpenSSH format).
    user_key: String,
    /// Another authorised key, encrypted with [`PASSPHRASE`].
    locked_key: String,
    user: String,
}

const PASSPHRASE: &str = "correct horse battery";

fn keygen(path: &Path) {
    keygen_with(path, "")
}

fn keygen_with(path: &Path, passphrase: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(status.success());
}

fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

impl Sshd {
    fn start(dir: &Path) -> Self {
        let host = dir.join("host_key");
        let user_key = dir.join("user_key");
        keygen(&host);
        keygen(&user_key);
        keygen_with(&dir.join("locked_key"), PASSPHRASE);
        let authorized = dir.join("authorized_keys");
        let mut keys = std::fs::read_to_string(dir.join("user_key.pub")).unwrap();
        keys.push_str(&std::fs::read_to_string(dir.join("locked_key.pub")).unwrap());
        std::fs::write(&authorized, keys).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 Subsystem sftp internal-sftp\n",
                host.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        // Debian's sshd wants its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd (apt-get install openssh-server)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let user = String::from_utf8(Command::new("whoami").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        Sshd {
            child,
            port,
            host_key: fingerprint(&dir.join("host_key.pub")),
            user_key: std::fs::read_to_string(&user_key).unwrap(),
            locked_key: std::fs::read_to_string(dir.join("locked_key")).unwrap(),
            user,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_sftp_source_takes_only_the_newest_file_and_refuses_a_host_key_that_differs() {
    let keys = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(keys.path());
    let remote = tempfile::tempdir().unwrap();
    let gen_dir = tempfile::tempdir().unwrap();
    let (old, _) = products(gen_dir.path(), "old.csv", 60, 1);
    let (new, new_expect) = products(gen_dir.path(), "new.csv", 90, 2001);
    std::fs::copy(&old, remote.path().join("prices-1.csv")).unwrap();
    set_mtime(&remote.path().join("prices-1.csv"), 600);
    std::fs::copy(&new, remote.path().join("prices-2.csv")).unwrap();
    set_mtime(&remote.path().join("prices-2.csv"), 60);
    let log = tempfile::tempdir().unwrap();
    let log_file = log.path().join("server.log");
    let app = spawn_app(AppOptions {
        extra_args: vec!["--source-allow-private".into()],
        log_file: Some(log_file.clone()),
        ..Default::default()
    });
    let body = |name: &str, host_key: &str| {
        json!({"name": name, "dataset": "products", "kind": "sftp", "schedule": {"every": "1h"},
               "pick": "latest", "host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
               "privateKey": sshd.user_key, "hostKey": host_key, "path": remote.path(),
               "glob": "*.csv", "stableSeconds": 0, "after": "move", "moveTo": "done"})
    };
    let (status, answer) = create(&app, body("supplier", &sshd.host_key)).await;
    assert_eq!(status, 201, "{answer}");
    assert!(!answer.to_string().contains("PRIVATE KEY"), "{answer}");
    assert_eq!(answer["data"]["auth"], "privateKey");
    let id = answer["data"]["id"].as_i64().unwrap();
    let taken = run(&app, id).await;
    assert_eq!(taken["outcome"], "imported", "{taken}");
    assert_eq!(taken["file"], "prices-2.csv");
    let status = app
        .wait_done(taken["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(status["createdCount"], new_expect["valid_rows"]);
    assert_eq!(status["errorCount"], new_expect["invalid_rows"]);
    assert!(
        remote.path().join("done/prices-2.csv").exists(),
        "moved on the server"
    );
    assert!(
        remote.path().join("prices-1.csv").exists(),
        "the older file is not taken"
    );
    assert_eq!(job_count(&app), 1);

    // Another key than the pinned one: refused, naming both.
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let bad_id = created(&app, body("impostor", wrong)).await;
    let refused = run(&app, bad_id).await;
    assert_eq!(refused["outcome"], "failed", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("the server's host key is {}", sshd.host_key))
            && reason.contains(&format!("not the pinned {wrong}: refused")),
        "{reason}"
    );
    assert_eq!(job_count(&app), 1);

    let (status, bad) = create(&app, body("typo", "SHA256:short")).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_host_key"))
    );
    let mut no_key = body("nokey", &sshd.host_key);
    no_key["privateKey"] = json!("not a key");
    let (status, bad) = create(&app, no_key).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_private_key"))
    );
    // An encrypted key: refused without its passphrase or with a wrong one, taken with it.
    let mut locked = body("locked", &sshd.host_key);
    locked["privateKey"] = json!(sshd.locked_key);
    let (status, bad) = create(&app, locked.clone()).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(
        bad["error"]["message"],
        "`privateKey` is encrypted: give its `privateKeyPassphrase`"
    );
    locked["privateKeyPassphrase"] = json!("wrong horse");
    let (status, bad) = create(&app, locked.clone()).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_private_key"))
    );
    locked["privateKeyPassphrase"] = json!(PASSPHRASE);
    locked["pick"] = json!("all-new");
    locked["after"] = json!("leave");
    locked.as_object_mut().unwrap().remove("moveTo");
    let (status, answer) = create(&app, locked).await;
    assert_eq!(status, 201, "{answer}");
    assert!(!answer.to_string().contains(PASSPHRASE), "{answer}");
    let unlocked = run(&app, answer["data"]["id"].as_i64().unwrap()).await;
    assert_eq!(unlocked["outcome"], "imported", "{unlocked}");
    assert_eq!(
        unlocked["file"], "prices-1.csv",
        "the older file, still there"
    );
    app.wait_done(unlocked["jobId"].as_i64().unwrap(), common::MINUTE)
        .await;
    assert_eq!(job_count(&app), 2);
    // Without --source-allow-private, 127.0.0.1 is refused.
    let guarded = spawn_app(AppOptions::default());
    let (status, bad) = create(&guarded, body("x", &sshd.host_key)).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("source_url_not_allowed"))
    );

    for path in [
        "/api/v1/sources".to_string(),
        format!("/api/v1/sources/{id}"),
    ] {
        let (_, body) = app.get_json(&path).await;
        assert!(!body.to_string().contains("PRIVATE KEY"), "{body}");
    }
    let text = std::fs::read_to_string(&log_file).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    // The CLI makes the same source from flags.
    let target = format!(
        "{}@127.0.0.1:{}:{}",
        sshd.user,
        sshd.port,
        remote.path().display()
    );
    let key_file = keys.path().join("locked_key");
    let out = cli(
        &app,
        &[
            "source",
            "add",
            "from-cli",
            "--dataset",
            "products",
            "--sftp",
            &target,
            "--host-key",
            &sshd.host_key,
            "--private-key-file",
            key_file.to_str().unwrap(),
            "--private-key-passphrase",
            PASSPHRASE,
            "--glob",
            "*.csv",
            "--stable-seconds",
            "0",
            "--every",
            "1h",
        ],
    );
    let cli_id = stdout_of(&out).trim().to_string();
    let (_, made) = app.get_json(&format!("/api/v1/sources/{cli_id}")).await;
    assert_eq!(made["data"]["kind"], "sftp");
    assert_eq!(made["data"]["port"], sshd.port);
    assert_eq!(made["data"]["auth"], "privateKey");
    let ran = stdout_of(&cli(&app, &["source", "run", &cli_id]));
    assert!(ran.contains("imported  prices-1.csv"), "{ran}");
}
