//! Durability through the real binary: a server killed with SIGKILL in the middle of an import
//! resumes the job from its checkpoint on restart, and the counts and the table come out exact.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

async fn a_server_killed_mid_import_resumes_with_exact_counts(backend: Backend) {
    let mut app = spawn_app(AppOptions {
        backend,
        batch_size: 500,
        lease_seconds: 1,
        // One job resumed from its own checkpoint (a split file's parts killed and resumed:
        // tests/crash.rs).
        extra_args: vec!["--chunk-rows".into(), "0".into()],
        ..Default::default()
    });
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "60000", "--error-rate", "0.02", "--seed", "11"],
    );
    let job = job_id(&app.upload("products", &file).await.1);

    // Kill it three times, each time once more rows have been committed.
    let total = 60_000u64;
    let mut last = 0;
    for round in 0..3 {
        let start = Instant::now();
        loop {
            let s = app.status(job).await;
            let current = s["progress"]["current"].as_u64().unwrap();
            assert_ne!(
                s["status"], "completed",
                "finished before kill {round}: make the file larger"
            );
            if current > last && current < total {
                last = current;
                break;
            }
            assert!(start.elapsed() < MINUTE, "no progress: {s}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        app.kill();
        app.start();
    }

    let s = app.wait_done(job, 3 * MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    let valid = expect["valid_rows"].as_u64().unwrap();
    let invalid = expect["invalid_rows"].as_u64().unwrap();
    assert_eq!(s["results"]["totalRows"], total);
    assert_eq!(s["createdCount"], valid, "{s}");
    assert_eq!(s["updatedCount"], 0, "{s}");
    assert_eq!(s["unchangedCount"], 0, "{s}");
    assert_eq!(s["errorCount"], invalid, "{s}");

    let mut db = app.db();
    let count = db.number("SELECT count(*) FROM products");
    let stock = db.number("SELECT sum(stock) FROM products");
    assert_eq!(count as u64, valid);
    assert_eq!(stock, expect["valid_sum_stock"].as_i64().unwrap());
    let errors = db.number(&format!(
        "SELECT count(*) FROM job_errors WHERE job_id = {job}"
    ));
    assert_eq!(errors as u64, invalid);
    let attempts = db.number(&format!("SELECT attempts FROM jobs WHERE id = {job}"));
    assert!(
        attempts >= 2,
        "the job was resumed by a new attempt, got {attempts}"
    );
}

async fn sigterm_lets_the_batch_finish_and_the_job_resumes_at_once(backend: Backend) {
    let mut app = spawn_app(AppOptions {
        backend,
        batch_size: 500,
        lease_seconds: 600,
        ..Default::default()
    });
    let (file, expect) = generate(app.dir.path(), "p.csv", &["--rows", "40000", "--seed", "3"]);
    let job = job_id(&app.upload("products", &file).await.1);
    let start = Instant::now();
    while app.status(job).await["progress"]["current"]
        .as_u64()
        .unwrap()
        == 0
    {
        assert!(start.elapsed() < MINUTE);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = app.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}"
    );
    // The lease was given back: with a 10-minute lease, only a release lets this finish now.
    app.start();
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["createdCount"], expect["valid_rows"]);
}

conformance!(
    a_server_killed_mid_import_resumes_with_exact_counts,
    sigterm_lets_the_batch_finish_and_the_job_resumes_at_once,
);
