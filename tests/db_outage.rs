//! Database outages through the real binary and the machine's own PostgreSQL server: a restart
//! (`pg_ctlcluster … restart`) and a 20-second stop in the middle of an import are waited out —
//! the job completes without a manual retry, with exactly the table, counts and row errors of an
//! uninterrupted import — and while the database is down the API answers `503 unavailable` with
//! `Retry-After`, and `/healthz` says so.
//!
//! This stops the shared server, so it only runs against the local cluster (not with
//! `SLUICE_TEST_POSTGRES` pointing elsewhere), both scenarios run in one test (never in
//! parallel), and a guard starts the server again whatever happens, panics included.

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const READY_WAIT: Duration = Duration::from_secs(60);

/// The local cluster's version directory (`/etc/postgresql/<version>/main`).
fn cluster_version() -> Option<String> {
    std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.path().join("main").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

fn pg_ctl(version: &str, action: &str) -> bool {
    Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", action])
        .status()
        .is_ok_and(|s| s.success())
}

fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_ready() {
    let start = Instant::now();
    while !pg_ready() {
        assert!(
            start.elapsed() < READY_WAIT,
            "PostgreSQL not ready after {READY_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Held while the server is disturbed: dropping it (at the end of a scenario, or in a panic's
/// unwinding) starts the server if it is not running and waits until it accepts connections.
struct ServerBack {
    version: String,
}

impl Drop for ServerBack {
    fn drop(&mut self) {
        if !pg_ready() {
            // "Already running" fails harmlessly; then the wait below decides.
            pg_ctl(&self.version, "start");
        }
        let start = Instant::now();
        while !pg_ready() && start.elapsed() < READY_WAIT {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !pg_ready() {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "db_outage: PostgreSQL did not come back; start it by hand"
            );
        }
    }
}

/// Waits until the job is processing with some rows committed (and not all).
async fn wait_mid_import(app: &TestApp, job: i64, total: u64) {
    let start = Instant::now();
    loop {
        let s = app.status(job).await;
        assert_ne!(s["status"], "completed", "finished too early: {s}");
        assert_ne!(s["status"], "failed", "{s}");
        let current = s["progress"]["current"].as_u64().unwrap_or(0);
        if current > 0 && current < total {
            return;
        }
        assert!(start.elapsed() < MINUTE, "no progress: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One status request and one `/healthz` while the database is down: both must be
/// `503 unavailable` with `Retry-After`. Returns whether they were (false: not down yet).
async fn both_unavailable(app: &TestApp, job: i64) -> bool {
    let check = |resp: reqwest::Response| async move {
        let code = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (_, body) = json_of(resp).await;
        (code, retry_after, body)
    };
    let status = app
        .get(&format!("/api/v1/import/status/{job}"))
        .send()
        .await
        .unwrap();
    let (code, retry_after, body) = check(status).await;
    if code != 503 {
        assert_eq!(code, 200, "{body}");
        return false;
    }
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    let text = body["error"]["message"].as_str().unwrap_or_default();
    for internal in ["SQL", "postgres", "57P01", "connection closed", "5432"] {
        assert!(!text.contains(internal), "internals in `{text}`");
    }
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    let (code, retry_after, body) = check(health).await;
    assert_eq!(code, 503, "/healthz while the database is down: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(retry_after.is_some());
    true
}

#[tokio::test]
async fn imports_wait_out_a_database_restart_and_a_stop_and_complete_exactly() {
    if !postgres_wanted() {
        return;
    }
    let Some(version) = cluster_version().filter(|_| {
        std::env::var("SLUICE_TEST_POSTGRES").is_err() || postgres_server() == DEFAULT_POSTGRES
    }) else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping db_outage: it restarts the local PostgreSQL cluster (none in /etc/postgresql, or SLUICE_TEST_POSTGRES names another server)"
        );
        return;
    };
    let rows: u64 = std::env::var("SLUICE_OUTAGE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let files = tempfile::tempdir().unwrap();
    let (file, expect) = generate(
        files.path(),
        "p.csv",
        &[
            "--rows",
            &rows.to_string(),
            "--error-rate",
            "0.03",
            "--seed",
            "71",
        ],
    );
    let options = |lease: u64, chunk_rows: u64| AppOptions {
        backend: Backend::Postgres,
        batch_size: 500,
        lease_seconds: lease,
        extra_args: vec![
            "--chunk-rows".into(),
            chunk_rows.to_string(),
            "--db-outage-grace".into(),
            "2m".into(),
        ],
        ..Default::default()
    };

    // The uninterrupted import everything is compared with.
    let reference = spawn_app(options(30, 0));
    let plain = job_id(&reference.upload("products", &file).await.1);
    let done = reference.wait_done(plain, 3 * MINUTE).await;
    assert_eq!(done["status"], "completed", "{done}");
    let want = outcome(&reference, plain, &done);
    assert_eq!(want.counts[0], expect["valid_rows"].as_u64().unwrap());
    assert_eq!(want.counts[3], expect["invalid_rows"].as_u64().unwrap());
    drop(reference);

    // 1. A restart (a couple of seconds) during a split import: two parts run together by the
    //    worker that split it (one per worker).
    let app = spawn_app(options(5, rows.div_ceil(4)));
    let job = job_id(&app.upload("products", &file).await.1);
    wait_mid_import(&app, job, rows).await;
    let back = ServerBack {
        version: version.clone(),
    };
    let restarted_at = Instant::now();
    assert!(pg_ctl(&version, "restart"), "pg_ctlcluster restart failed");
    wait_ready();
    let restart_took = restarted_at.elapsed();
    drop(back);
    let s = app.wait_done(job, 3 * MINUTE).await;
    assert_eq!(s["status"], "completed", "after a restart: {s}");
    assert_eq!(s["chunks"]["completed"], 2, "{s}");
    let got = outcome(&app, job, &s);
    assert_eq!(got.counts, want.counts, "after a restart");
    assert_eq!(got.errors, want.errors, "after a restart");
    assert_eq!(got.rows, want.rows, "after a restart");
    eprintln!("restart took {restart_took:?}; job finished: {s}");
    drop(app);

    // 2. A 20-second stop during an unsplit import, longer than the 5 s lease: heartbeats fail,
    //    the lease expires, and whichever worker goes on after the database returns, nothing is
    //    counted twice.
    let app = spawn_app(options(5, 0));
    let job = job_id(&app.upload("products", &file).await.1);
    wait_mid_import(&app, job, rows).await;
    let before = app.status(job).await;
    let back = ServerBack {
        version: version.clone(),
    };
    assert!(pg_ctl(&version, "stop"), "pg_ctlcluster stop failed");
    let stopped_at = Instant::now();
    // The API notices at once: the pool's idle connections are found dead without a round trip.
    let mut seen_down = false;
    while !seen_down && stopped_at.elapsed() < Duration::from_secs(3) {
        seen_down = both_unavailable(&app, job).await;
        if !seen_down {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        seen_down,
        "the API never answered 503 while the database was down"
    );
    let noticed = stopped_at.elapsed();
    // Stay down for 20 s in all; measure the server's CPU meanwhile (no requests).
    let pid = app.pid();
    let rest = Duration::from_secs(20).saturating_sub(stopped_at.elapsed());
    let cpu = cpu_share(pid, rest).await;
    assert!(both_unavailable(&app, job).await, "still down after 20 s");
    assert!(pg_ctl(&version, "start"), "pg_ctlcluster start failed");
    wait_ready();
    let started_at = Instant::now();
    drop(back);
    // Recovery: the first status answer, then the first new commit.
    let mut first_answer = None;
    let recovered = loop {
        let resp = app
            .get(&format!("/api/v1/import/status/{job}"))
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 200 {
            first_answer.get_or_insert(started_at.elapsed());
            let (_, body) = json_of(resp).await;
            let s = &body["data"];
            assert_ne!(s["status"], "failed", "the job failed over the outage: {s}");
            if s["progress"]["current"].as_u64() > before["progress"]["current"].as_u64()
                || s["status"] == "completed"
            {
                break started_at.elapsed();
            }
        }
        assert!(
            started_at.elapsed() < MINUTE,
            "no progress a minute after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let s = app.wait_done(job, 3 * MINUTE).await;
    assert_eq!(s["status"], "completed", "after a stop: {s}");
    let got = outcome(&app, job, &s);
    assert_eq!(got.counts, want.counts, "after a stop");
    assert_eq!(got.errors, want.errors, "after a stop");
    assert_eq!(got.rows, want.rows, "after a stop");
    assert_eq!(
        app.db().number("SELECT count(*) FROM products") as u64,
        expect["valid_rows"].as_u64().unwrap()
    );
    eprintln!(
        "stop: 503 after {noticed:?}; server CPU while down {:.2}% of a core; after start: API answered in {:?}, import went on in {recovered:?}; attempts {}",
        cpu * 100.0,
        first_answer.unwrap_or_default(),
        s["attempts"]
    );
    assert!(cpu < 0.05, "server CPU while the database was down: {cpu}");
}
