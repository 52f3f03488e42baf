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

/// The database a test runs against. Every conformance test runs once on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares tests that run on both backends: each `async fn NAME(backend: Backend)` becomes
/// `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::$name($crate::common::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() {
                if !$crate::common::postgres_wanted() {
                    return;
                }
                super::$name($crate::common::Backend::Postgres).await
            } )*
        }
    };
}

/// The server the PostgreSQL tests use when `SLUICE_TEST_POSTGRES` is not set.
pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
/// Its address, probed to decide whether those tests can run.
const DEFAULT_POSTGRES_ADDR: &str = "127.0.0.1:5432";

/// The PostgreSQL server tests create their databases on (`SLUICE_TEST_POSTGRES`, default the
/// local server with trust auth).
pub fn postgres_server() -> String {
    std::env::var("SLUICE_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.into())
}

/// Whether the PostgreSQL tests should run; every PostgreSQL test starts with
/// `if !postgres_wanted() { return; }`.
///
/// With `SLUICE_TEST_POSTGRES` set: always (an unreachable server then fails the tests loudly,
/// as CI wants). Without it: only when something answers at `127.0.0.1:5432`; otherwise the
/// tests pass without running, and one line on stderr per test process says why. Probed once
/// per process.
pub fn postgres_wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| {
        if std::env::var_os("SLUICE_TEST_POSTGRES").is_some() {
            return true;
        }
        let addr: std::net::SocketAddr = DEFAULT_POSTGRES_ADDR.parse().expect("address");
        let up = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok();
        if !up {
            // Straight to the process's stderr: `eprintln!` in a test is captured and shown
            // only when the test fails.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipping PostgreSQL tests: no server at {DEFAULT_POSTGRES_ADDR}; start one or set \
                 SLUICE_TEST_POSTGRES=postgres://USER@HOST:PORT to run them"
            );
        }
        up
    })
}

/// Runs blocking PostgreSQL client code off the test's async runtime (the `postgres` crate
/// drives its own runtime and may not run inside another).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("blocking helper panicked"))
}

fn pg_connect(url: &str) -> postgres::Client {
    off_runtime(|| postgres::Client::connect(url, postgres::NoTls)).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL must be running for the postgres tests (server {}, see README): {e}",
            postgres_server()
        )
    })
}

fn pg_execute(client: &mut postgres::Client, sql: &str) -> Result<(), postgres::Error> {
    off_runtime(|| client.batch_execute(sql))
}

/// Runs one statement on the server's `postgres` database (creating and dropping test databases).
pub fn pg_admin_execute(sql: &str) -> Result<(), postgres::Error> {
    let url = format!("{}/postgres", postgres_server());
    off_runtime(|| postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(sql))
}

/// A connection to the test's database: SQLite file or PostgreSQL database.
pub enum Db {
    Sqlite(rusqlite::Connection),
    /// Always `Some` until dropped (it is closed off the async runtime).
    Postgres(Option<postgres::Client>),
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Postgres(client) = self
            && let Some(client) = client.take()
        {
            off_runtime(move || drop(client));
        }
    }
}

impl Db {
    /// Runs a query; every value as text (NULL as None).
    pub fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get::<_, rusqlite::types::Value>(i)? {
                                rusqlite::types::Value::Null => None,
                                rusqlite::types::Value::Integer(v) => Some(v.to_string()),
                                rusqlite::types::Value::Real(v) => Some(v.to_string()),
                                rusqlite::types::Value::Text(t) => Some(t),
                                rusqlite::types::Value::Blob(b) => Some(format!("{b:?}")),
                            })
                        })
                        .collect()
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
            }
            Db::Postgres(c) => off_runtime(|| c.as_mut().expect("open").simple_query(sql))
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect(),
        }
    }

    /// The first column of the first row.
    pub fn value(&mut self, sql: &str) -> Option<String> {
        self.rows(sql)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten()
    }

    /// A number from the first column of the first row.
    pub fn number(&mut self, sql: &str) -> i64 {
        self.value(sql)
            .unwrap_or_else(|| panic!("{sql}: NULL"))
            .parse()
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub fn execute(&mut self, sql: &str) {
        match self {
            Db::Sqlite(c) => c
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Db::Postgres(c) => {
                pg_execute(c.as_mut().expect("open"), sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }
}

pub struct AppOptions {
    pub backend: Backend,
    pub lease_seconds: u64,
    pub batch_size: u64,
    pub workers: usize,
    pub max_upload_mb: Option<u64>,
    pub datasets: Option<String>,
    pub admin_token: Option<String>,
    /// SQL run on the fresh database file before the server first starts (tables of your own).
    pub setup_sql: Option<String>,
    /// More `sluice serve` flags.
    pub extra_args: Vec<String>,
    /// `--webhook-allow-private`: for tests whose webhook receivers listen on 127.0.0.1.
    pub webhook_allow_private: bool,
    /// The data directory, instead of `data` in the test's temp dir (a small file system, to
    /// fill it).
    pub data_dir: Option<PathBuf>,
    /// The server's log (stderr) goes to this file at level `info`, instead of the test's
    /// stderr at `warn`.
    pub log_file: Option<PathBuf>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            lease_seconds: 30,
            batch_size: 10_000,
            workers: 2,
            max_upload_mb: None,
            datasets: None,
            admin_token: Some(TOKEN.into()),
            setup_sql: None,
            extra_args: Vec::new(),
            webhook_allow_private: false,
            data_dir: None,
            log_file: None,
        }
    }
}

pub struct TestApp {
    /// Worker processes started by `spawn_worker*`: killed with the app, even when a test fails.
    pub workers: std::sync::Mutex<Vec<Child>>,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database of this test, when it runs on PostgreSQL.
    pub pg_database: Option<String>,
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
    let pg_database = (options.backend == Backend::Postgres).then(|| {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let name = format!(
            "sluice_t_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        );
        pg_admin_execute(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL must be running for the postgres tests (server {}, see README): {e}",
                postgres_server()
            )
        });
        name
    });
    let mut app = TestApp {
        workers: std::sync::Mutex::new(Vec::new()),
        dir,
        pg_database,
        base: String::new(),
        child: None,
        stdout_lines: Vec::new(),
        options,
        // Idle connections are dropped before the server's idle keep-alive limit (the header
        // timeout, 30 s): a POST sent on a connection the server is closing at that instant
        // fails with "IncompleteMessage" and is not retried (seen after a long openpyxl read).
        http: sluice::tls::http_client()
            .pool_idle_timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client"),
    };
    if let Some(sql) = app.options.setup_sql.clone() {
        std::fs::create_dir_all(app.data_dir()).expect("data dir");
        app.db().execute(&sql);
    }
    app.start();
    app
}

impl TestApp {
    /// `--database-url` for this test's PostgreSQL database.
    pub fn database_url(&self) -> Option<String> {
        self.pg_database
            .as_ref()
            .map(|db| format!("{}/{db}", postgres_server()))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.options
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
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
            .env_remove("SLUICE_DATABASE_URL")
            .env_remove("SLUICE_ADMIN_TOKEN")
            .env_remove("SLUICE_DATASETS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = &self.options.admin_token {
            cmd.env("SLUICE_ADMIN_TOKEN", t);
        }
        if let Some(path) = &self.options.log_file {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open log file");
            cmd.env("SLUICE_LOG", "info").stderr(log);
        }
        cmd.args(&self.options.extra_args);
        if self.options.webhook_allow_private {
            cmd.arg("--webhook-allow-private");
        }
        if let Some(url) = self.database_url() {
            cmd.arg("--database-url").arg(url);
        }
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

    /// Starts a `sluice worker` process on the same data directory; returns its pid.
    pub fn spawn_worker(&self, workers: usize) -> u32 {
        self.spawn_worker_in(&self.data_dir(), workers)
    }

    /// Starts a `sluice worker` process with its own data directory (another machine, as far as
    /// local files go) on the same database; returns its pid.
    pub fn spawn_worker_in(&self, data_dir: &Path, workers: usize) -> u32 {
        self.worker_command(data_dir, workers, &[])
    }

    /// Starts a `sluice worker` process on the same data directory, with more flags.
    pub fn spawn_worker_with(&self, workers: usize, args: &[&str]) -> u32 {
        self.worker_command(&self.data_dir(), workers, args)
    }

    /// Kills one of the worker processes with SIGKILL.
    pub fn kill_worker(&self, pid: u32) {
        let mut workers = self.workers.lock().unwrap();
        let i = workers
            .iter()
            .position(|w| w.id() == pid)
            .expect("one of our workers");
        let mut w = workers.remove(i);
        let _ = w.kill();
        let _ = w.wait();
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.lock().unwrap().iter().map(Child::id).collect()
    }

    fn worker_command(&self, data_dir: &Path, workers: usize, args: &[&str]) -> u32 {
        let mut cmd = Command::new(binary());
        cmd.arg("worker")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--batch-size")
            .arg(self.options.batch_size.to_string())
            .arg("--lease-seconds")
            .arg(self.options.lease_seconds.to_string())
            .args(args)
            .env("SLUICE_LOG", "warn")
            .env_remove("SLUICE_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = self.database_url() {
            cmd.arg("--database-url").arg(url);
        }
        let child = cmd.spawn().expect("start sluice worker");
        let pid = child.id();
        self.workers.lock().unwrap().push(child);
        pid
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

    /// Uploads `text` as a file named `name` to `POST path` (e.g. `/api/v1/import/items?mode=
    /// insert`) with `token` and more form fields; the answer.
    pub async fn upload_text_as(
        &self,
        token: &str,
        path: &str,
        name: &str,
        text: &str,
        fields: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        let form = form.part(
            "file",
            reqwest::multipart::Part::bytes(text.as_bytes().to_vec()).file_name(name.to_string()),
        );
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        json_of(resp).await
    }

    /// Polls the job's status with `token` until it is completed, failed or cancelled; the
    /// status's `data`.
    pub async fn wait_done_as(&self, token: &str, job: i64) -> Value {
        let start = Instant::now();
        loop {
            let data = self.status_as(token, job).await;
            if matches!(
                data["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return data;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{data}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One job's status `data`, asked with `token` (must answer 200).
    pub async fn status_as(&self, token: &str, job: i64) -> Value {
        let resp = self
            .http
            .get(self.url(&format!("/api/v1/import/status/{job}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("status");
        let (code, body) = json_of(resp).await;
        assert_eq!(code, 200, "{body}");
        body["data"].clone()
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

    /// Uploads raw bytes under a file name (multipart), with form fields.
    pub async fn upload_bytes(
        &self,
        dataset: &str,
        name: &str,
        bytes: Vec<u8>,
        fields: &[(&str, &str)],
    ) -> (u16, Value) {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write upload");
        self.upload_with(dataset, &path, fields).await
    }

    /// All row errors of a job, as JSON objects.
    pub async fn errors_json(&self, job: i64) -> Vec<Value> {
        let (code, body) = self
            .get_json(&format!(
                "/api/v1/import/{job}/errors?format=json&limit=100000"
            ))
            .await;
        assert_eq!(code, 200, "{body}");
        body["data"]["errors"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The SQLite file itself, for reader tests that run on SQLite only (the readers do not
    /// depend on the store; the conformance tests cover both backends).
    pub fn sqlite(&self) -> rusqlite::Connection {
        assert!(self.pg_database.is_none(), "sqlite() on a PostgreSQL test");
        rusqlite::Connection::open(self.data_dir().join("sluice.db")).expect("open db")
    }

    /// Uploaded files the server keeps: files in `<data-dir>/blobs`, plus (PostgreSQL) files
    /// stored in the database.
    pub fn blob_count(&self) -> usize {
        // An upload's spool a server keeps for its workers (`.kept`) is a copy of a stored file.
        let local = std::fs::read_dir(self.data_dir().join("blobs")).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".kept"))
                .count()
        });
        let stored = match self.pg_database {
            Some(_) => {
                self.db()
                    .number("SELECT count(DISTINCT blob) FROM blob_chunks") as usize
            }
            None => 0,
        };
        local + stored
    }

    /// Bytes of stored upload files: the files in the data directory's `blobs/` (partial ones
    /// too) and, on PostgreSQL, the stored chunks.
    pub fn blob_bytes(&self) -> u64 {
        let local: u64 = std::fs::read_dir(self.data_dir().join("blobs")).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".kept"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        });
        let stored = match self.pg_database {
            Some(_) => self
                .db()
                .number("SELECT COALESCE(sum(length(data)), 0) FROM blob_chunks")
                as u64,
            None => 0,
        };
        local + stored
    }

    /// A new connection to the test's database.
    /// The ledger's ranges describe its entries exactly (migrations 0019, 0021): every entry
    /// lies in a range of its own organisation, dataset and job whose time is not after its own,
    /// and the ranges hold as many cursors as there are entries, so none overlap and every
    /// cursor of a range is an entry.
    pub fn assert_ledger_ranges_exact(&self) {
        let mut db = self.db();
        let outside = db.number(
            "SELECT count(*) FROM ledger l WHERE NOT EXISTS (SELECT 1 FROM ledger_ranges r \
             WHERE l.seq >= r.first_seq AND l.seq <= r.last_seq AND r.org_id = l.org_id \
             AND r.dataset = l.dataset AND r.job_id = l.job_id AND r.at <= l.at)",
        );
        assert_eq!(outside, 0, "ledger entries outside their ranges");
        let entries = db.number("SELECT count(*) FROM ledger");
        let cursors = db.number(
            "SELECT CAST(COALESCE(sum(last_seq - first_seq + 1), 0) AS BIGINT) FROM ledger_ranges",
        );
        assert_eq!(cursors, entries, "ranges hold cursors that are no entries");
    }

    pub fn db(&self) -> Db {
        match self.database_url() {
            Some(url) => Db::Postgres(Some(pg_connect(&url))),
            None => Db::Sqlite(
                rusqlite::Connection::open(self.data_dir().join("sluice.db")).expect("open db"),
            ),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
        for mut w in self
            .workers
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
        {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(db) = &self.pg_database {
            let _ = pg_admin_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

pub async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// `tests/fixtures/`: files written by other programs (see its README).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The bytes of `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
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
pub mod xlsx;

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

// --- The server-side CLI (`sluice org|user|token …`) on the test's database.

/// Runs `sluice ARGS` against the test's database; returns stdout (trimmed) and stderr.
pub fn sluice(app: &TestApp, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .arg("--data-dir")
        .arg(app.data_dir())
        .env_remove("SLUICE_DATABASE_URL")
        .env("SLUICE_LOG", "warn");
    if let Some(url) = app.database_url() {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output().expect("run sluice");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "sluice {args:?}: {stdout}\n{stderr}");
    (stdout, stderr)
}

/// The id a `create` command printed.
pub fn created(app: &TestApp, args: &[&str]) -> i64 {
    let (stdout, stderr) = sluice(app, args);
    stdout
        .parse()
        .unwrap_or_else(|_| panic!("sluice {args:?} printed `{stdout}` ({stderr})"))
}

/// An organisation with one admin; returns the organisation's id and the admin's token.
pub fn org_with_admin(app: &TestApp, name: &str) -> (i64, String) {
    let org = created(app, &["org", "create", name]);
    let user = created(
        app,
        &[
            "user", "create", "--org", name, "--name", "admin", "--role", "admin",
        ],
    );
    (org, token_for(app, user, &[]).0)
}

/// A new token for a user: the token and its id (from the sentence on stderr).
pub fn token_for(app: &TestApp, user: i64, extra: &[&str]) -> (String, i64) {
    let user = user.to_string();
    let mut args = vec!["token", "create", "--user", user.as_str()];
    args.extend_from_slice(extra);
    let (token, stderr) = sluice(app, &args);
    assert!(token.starts_with("slc_"), "{token}");
    let id = stderr
        .split("created token ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no token id in `{stderr}`"));
    (token, id)
}

/// Everything an import of the products dataset leaves behind that must not depend on crashes,
/// restarts or outages: the table, its history, the job's row errors and its counts.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub rows: Vec<Vec<Option<String>>>,
    pub history: Vec<Vec<Option<String>>>,
    pub errors: Vec<Vec<Option<String>>>,
    pub counts: [u64; 4],
}

pub fn outcome(app: &TestApp, job: i64, status: &serde_json::Value) -> Outcome {
    let mut db = app.db();
    let n = |k: &str| status[k].as_u64().unwrap();
    Outcome {
        rows: db.rows("SELECT sku, name, category, price, stock, updated_at, _sluice_row FROM products ORDER BY sku"),
        history: db.rows("SELECT sku, field, old_value, new_value FROM products_history ORDER BY sku, field"),
        errors: db.rows(&format!(
            "SELECT \"row\", \"column\", message FROM job_errors WHERE job_id = {job} ORDER BY \"row\""
        )),
        counts: [n("createdCount"), n("updatedCount"), n("unchangedCount"), n("errorCount")],
    }
}

/// CPU time a process has used so far (user + system), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which is in parentheses and may hold spaces): state is
    // field 3, utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / per_second)
}

/// The share of one core the process used over `window` (the caller must not ask the server for
/// anything meanwhile, or it measures itself).
pub async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let (before, start) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(window).await;
    let used = cpu_time(pid).saturating_sub(before);
    used.as_secs_f64() / start.elapsed().as_secs_f64()
}

impl TestApp {
    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

/// A tmpfs mounted over a directory for one test (we run as root), unmounted on drop — after the
/// server that uses it, lazily if a process still holds it. `None` when it cannot be mounted:
/// the test then says so on stderr and returns.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, megabytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}M"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.0).status().is_ok_and(|s| s.success())
        };
        if !umount(false) {
            umount(true);
        }
    }
}

/// Runs a Python script (`python3 -c SCRIPT PATH`, e.g. one that opens a workbook with openpyxl)
/// and parses the JSON it prints.
pub fn python_json(script: &str, path: &Path) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the Python script failed (pip install openpyxl?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}
