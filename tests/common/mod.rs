//! The test harness: `spawn_app()` starts the real `sluice` binary on a free port with a fresh
//! data directory, and `TestApp` has one helper per endpoint. Tests speak HTTP to it and read the
//! real SQLite file to check what was written.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";

pub struct AppOptions {
    pub lease_seconds: u64,
    pub batch_size: u64,
    pub workers: usize,
    pub max_upload_mb: Option<u64>,
    pub datasets: Option<String>,
    pub admin_token: Option<String>,
    /// SQL run on the fresh database file before the server first starts (tables of your own).
    pub setup_sql: Option<String>,
    /// More `serve` flags.
    pub extra_args: Vec<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            lease_seconds: 30,
            batch_size: 10_000,
            workers: 2,
            max_upload_mb: None,
            datasets: None,
            admin_token: Some(TOKEN.into()),
            setup_sql: None,
            extra_args: Vec::new(),
        }
    }
}

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub child: Option<Child>,
    pub stdout_lines: Vec<String>,
    pub options: AppOptions,
    pub http: reqwest::Client,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// Starts a server on a fresh data directory.
pub fn spawn_app(options: AppOptions) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut app = TestApp {
        dir,
        base: String::new(),
        child: None,
        stdout_lines: Vec::new(),
        options,
        http: reqwest::Client::new(),
    };
    if let Some(sql) = &app.options.setup_sql {
        std::fs::create_dir_all(app.data_dir()).expect("data dir");
        let db = rusqlite::Connection::open(app.data_dir().join("sluice.db")).expect("create db");
        db.execute_batch(sql).expect("setup sql");
    }
    app.start();
    app
}

impl TestApp {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts) the server process on the same data directory.
    pub fn start(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--workers")
            .arg(self.options.workers.to_string())
            .arg("--batch-size")
            .arg(self.options.batch_size.to_string())
            .arg("--lease-seconds")
            .arg(self.options.lease_seconds.to_string())
            .env("SLUICE_LOG", "warn")
            .env_remove("SLUICE_ADMIN_TOKEN")
            .env_remove("SLUICE_DATASETS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = &self.options.admin_token {
            cmd.env("SLUICE_ADMIN_TOKEN", t);
        }
        cmd.args(&self.options.extra_args);
        if let Some(mb) = self.options.max_upload_mb {
            cmd.arg("--max-upload-mb").arg(mb.to_string());
        }
        if let Some(toml) = &self.options.datasets {
            let path = self.path("datasets.toml");
            std::fs::write(&path, toml).expect("write datasets");
            cmd.arg("--datasets").arg(path);
        }
        let mut child = cmd.spawn().expect("start sluice");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let base = loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read stdout");
            assert!(n > 0, "sluice exited before listening; stdout: {lines:?}");
            if let Some(addr) = line.trim().strip_prefix("sluice listening on ") {
                break addr.to_string();
            }
            lines.push(line.trim_end().to_string());
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        self.base = base;
        self.stdout_lines = lines;
        self.child = Some(child);
    }

    /// Starts a `sluice worker` process on the same data directory.
    pub fn spawn_worker(&self, workers: usize) -> Child {
        let mut cmd = Command::new(binary());
        cmd.arg("worker")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--batch-size")
            .arg(self.options.batch_size.to_string())
            .arg("--lease-seconds")
            .arg(self.options.lease_seconds.to_string())
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd.spawn().expect("start sluice worker")
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(TOKEN)
    }

    /// Kills the server without warning (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().expect("wait")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(TOKEN)
    }

    /// Uploads a file as multipart field `file`; returns status and JSON body.
    pub async fn upload(&self, dataset: &str, file: &Path) -> (u16, Value) {
        self.upload_with(dataset, file, &[]).await
    }

    pub async fn upload_with(
        &self,
        dataset: &str,
        file: &Path,
        fields: &[(&str, &str)],
    ) -> (u16, Value) {
        let bytes = std::fs::read(file).expect("read upload");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name),
        );
        let resp = self
            .http
            .post(self.url(&format!("/api/v1/import/{dataset}")))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        json_of(resp).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        json_of(self.get(path).send().await.expect("request")).await
    }

    pub async fn status(&self, job: i64) -> Value {
        let (code, body) = self.get_json(&format!("/api/v1/import/status/{job}")).await;
        assert_eq!(code, 200, "{body}");
        body["data"].clone()
    }

    /// Polls until the job is completed, failed or cancelled (at most `limit`).
    pub async fn wait_done(&self, job: i64, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let s = self.status(job).await;
            if matches!(
                s["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "job {job} not done after {limit:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn errors_csv(&self, job: i64) -> String {
        let resp = self
            .get(&format!("/api/v1/import/{job}/errors?format=csv"))
            .send()
            .await
            .expect("errors csv");
        assert_eq!(resp.status().as_u16(), 200);
        resp.text().await.expect("text")
    }

    /// The dataset database, opened read-only.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data_dir().join("sluice.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open db")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Runs the shared test-data generator; returns the file and its `--expect` counts.
pub fn generate(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, Value) {
    let out = dir.join(name);
    let expect = dir.join(format!("{name}.expect.json"));
    let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datagen/gen_products.py");
    let status = Command::new("python3")
        .arg(&generator)
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("--expect")
        .arg(&expect)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run gen_products.py");
    assert!(status.success(), "gen_products.py failed");
    let expect: Value = serde_json::from_str(&std::fs::read_to_string(&expect).unwrap()).unwrap();
    (out, expect)
}

pub fn job_id(body: &Value) -> i64 {
    body["data"]["jobId"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id in {body}"))
}

pub const MINUTE: Duration = Duration::from_secs(60);

/// One Server-Sent Event as received.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// Reads Server-Sent Events from a streaming response.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status().as_u16(), 200, "not an event stream");
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ends. Panics
    /// after `limit` without one.
    pub async fn next(&mut self, limit: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(Sse { id, event, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("no event in time")
                .expect("event stream broke")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Every event until the stream ends.
    pub async fn all(&mut self, limit: Duration) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next(limit).await {
            out.push(e);
        }
        out
    }
}

impl TestApp {
    /// Opens an event stream (`path` with optional `Last-Event-ID`).
    pub async fn events(&self, path: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut req = self.get(path);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        req.send().await.expect("open event stream")
    }
}
