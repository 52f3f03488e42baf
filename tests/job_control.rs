//! Crash-safe job control through the HTTP API: pause/resume, cancel/retry, duplicates and
//! idempotency keys, time limits, retention, stats, and a database that fails for real.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

async fn action(app: &TestApp, job: i64, what: &str) -> (u16, Value) {
    json_of(
        app.post(&format!("/api/v1/import/{job}/{what}"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Waits until the job has committed at least one batch but not finished.
async fn wait_for_progress(app: &TestApp, job: i64) -> Value {
    let start = Instant::now();
    loop {
        let s = app.status(job).await;
        assert_ne!(
            s["status"], "completed",
            "finished too early; make the file larger: {s}"
        );
        if s["progress"]["current"].as_u64().unwrap() > 0 {
            return s;
        }
        assert!(start.elapsed() < MINUTE, "no progress: {s}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn slow_app(backend: Backend) -> TestApp {
    spawn_app(AppOptions {
        backend,
        batch_size: 200,
        lease_seconds: 2,
        ..Default::default()
    })
}

async fn a_paused_job_stops_committing_and_resumes_to_exact_counts(backend: Backend) {
    let app = slow_app(backend);
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "200000", "--error-rate", "0.03", "--seed", "21"],
    );
    let job = job_id(&app.upload("products", &file).await.1);
    wait_for_progress(&app, job).await;

    let (code, body) = action(&app, job, "pause").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["status"], "paused");
    let frozen = app.status(job).await["progress"]["current"].clone();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = app.status(job).await;
    assert_eq!(later["status"], "paused");
    assert_eq!(
        later["progress"]["current"], frozen,
        "no batch commits after a pause"
    );

    let (code, body) = action(&app, job, "resume").await;
    assert_eq!(code, 200, "{body}");
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["createdCount"], expect["valid_rows"]);
    assert_eq!(s["errorCount"], expect["invalid_rows"]);
    let count: i64 = app.db().number("SELECT count(*) FROM products");
    assert_eq!(count as u64, expect["valid_rows"].as_u64().unwrap());

    let (code, body) = action(&app, job, "pause").await;
    assert_eq!(code, 409, "a completed job cannot be paused: {body}");
    assert_eq!(body["error"]["code"], "invalid_state");
}

async fn a_cancelled_job_keeps_its_committed_batches_and_retry_finishes_it(backend: Backend) {
    let app = slow_app(backend);
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        // Large enough that the cancel lands mid-import even when the test process stalls for
        // a second or two on a loaded machine (60,000 rows once finished first).
        &["--rows", "200000", "--error-rate", "0.03", "--seed", "22"],
    );
    let valid = expect["valid_rows"].as_u64().unwrap();
    let job = job_id(&app.upload("products", &file).await.1);
    wait_for_progress(&app, job).await;

    let (code, body) = action(&app, job, "cancel").await;
    assert_eq!(code, 200, "{body}");
    let s = app.status(job).await;
    assert_eq!(s["status"], "cancelled");
    assert!(s["completedAt"].is_string());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = app.status(job).await;
    // What stays written after a cancel: exactly the batches committed before it.
    let created = s["createdCount"].as_u64().unwrap();
    assert!(created > 0 && created < valid, "{s}");
    let count: i64 = app.db().number("SELECT count(*) FROM products");
    assert_eq!(count as u64, created);

    // Retry continues from the checkpoint: the counts end exactly as an uninterrupted run's.
    let (code, body) = action(&app, job, "retry").await;
    assert_eq!(code, 200, "{body}");
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["createdCount"], valid);
    assert_eq!(s["errorCount"], expect["invalid_rows"]);
    let (code, body) = action(&app, job, "retry").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let (code, _) = action(&app, job, "explode").await;
    assert_eq!(code, 404);
    let (code, _) = action(&app, 999, "cancel").await;
    assert_eq!(code, 404);
}

async fn retry_from_start_runs_a_new_job_over_the_same_file(backend: Backend) {
    let app = slow_app(backend);
    // The cancel must land mid-way. On a loaded machine the import can win the race (40,000
    // rows, later 200,000, once completed before it): then again with a file twice as large,
    // of other keys (the finished import's rows do not meet them).
    let mut rows = 200_000u64;
    let (job, expect) = loop {
        let start_sku = (rows - 199_999).to_string();
        let (file, expect) = generate(
            app.dir.path(),
            &format!("p{rows}.csv"),
            &[
                "--rows",
                &rows.to_string(),
                "--error-rate",
                "0.02",
                "--seed",
                "23",
                "--start-sku",
                &start_sku,
            ],
        );
        let job = job_id(&app.upload("products", &file).await.1);
        wait_for_progress(&app, job).await;
        let (code, body) = action(&app, job, "cancel").await;
        if code == 200 {
            break (job, expect);
        }
        assert_eq!(body["error"]["code"], "invalid_state", "{body}");
        assert!(
            rows < 800_000,
            "every import finished before its cancel: {body}"
        );
        rows *= 2;
    };
    assert_eq!(app.status(job).await["status"], "cancelled");
    let first_created = app.status(job).await["createdCount"].as_u64().unwrap();

    let (code, body) = json_of(
        app.post(&format!("/api/v1/import/{job}/retry?fromStart=true"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let new_job = body["data"]["jobId"].as_i64().unwrap();
    assert_ne!(new_job, job);
    assert_eq!(body["data"]["retryOf"], job);
    let s = app.wait_done(new_job, MINUTE).await;
    assert_eq!(s["status"], "completed");
    // The rows the cancelled run wrote are found unchanged; the rest are created.
    assert_eq!(s["unchangedCount"].as_u64().unwrap(), first_created);
    assert_eq!(
        s["createdCount"].as_u64().unwrap() + first_created,
        expect["valid_rows"].as_u64().unwrap()
    );
    assert_eq!(s["errorCount"], expect["invalid_rows"]);
}

async fn the_same_file_twice_is_409_while_active_and_marked_duplicate_after(backend: Backend) {
    // No worker until the second upload was refused: the first job is surely still active.
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        ..Default::default()
    });
    let (file, _) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "30000", "--seed", "24"],
    );
    let first = job_id(&app.upload("products", &file).await.1);
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "duplicate_upload");
    assert_eq!(body["error"]["jobId"], first);
    app.spawn_worker(1);
    app.wait_done(first, MINUTE).await;

    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    let again = job_id(&body);
    let s = app.wait_done(again, MINUTE).await;
    assert_eq!(s["duplicateOf"], first);
    assert_eq!(s["unchangedCount"], 30000);
}

async fn an_idempotency_key_returns_the_original_answer(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let f = app.path("one.csv");
    std::fs::write(&f, "sku,name,updated_at\nA,b,2024-01-01\n").unwrap();
    let send = || async {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(&f).unwrap()).file_name("one.csv"),
        );
        let resp = app
            .post("/api/v1/import/products")
            .header("Idempotency-Key", "order-42")
            .multipart(form)
            .send()
            .await
            .unwrap();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        let (code, body) = json_of(resp).await;
        (code, body, replayed)
    };
    let (code, first, replayed) = send().await;
    assert_eq!((code, replayed), (202, false), "{first}");
    let (code, second, replayed) = send().await;
    assert_eq!((code, replayed), (202, true), "{second}");
    assert_eq!(first["data"]["jobId"], second["data"]["jobId"]);
    let (_, jobs) = app.get_json("/api/v1/import/jobs").await;
    assert_eq!(jobs["data"]["total"], 1);
}

async fn a_job_over_its_time_limit_fails_with_a_clear_message(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 100,
        datasets: Some(
            "[datasets.products]\nkey = [\"sku\"]\ntimeout = \"300ms\"\n[datasets.products.fields]\n\
             sku = { type = \"text\", required = true }\nname = { type = \"text\" }\n"
                .into(),
        ),
        ..Default::default()
    });
    let (file, _) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "200000", "--seed", "25"],
    );
    let job = job_id(&app.upload("products", &file).await.1);
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(
        s["error"],
        "the job ran longer than its time limit of 300 ms; the rows committed so far are kept — retry to continue"
    );
    let count: i64 = app.db().number("SELECT count(*) FROM products");
    assert_eq!(count as u64, s["createdCount"].as_u64().unwrap());
}

async fn retention_removes_files_then_jobs(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        extra_args: vec![
            "--retain-files".into(),
            "1s".into(),
            "--retain-jobs".into(),
            "3s".into(),
        ],
        ..Default::default()
    });
    let f = app.path("one.csv");
    std::fs::write(&f, "sku,name,updated_at\nA,b,2024-01-01\n").unwrap();
    let job = job_id(&app.upload("products", &f).await.1);
    assert_eq!(app.wait_done(job, MINUTE).await["fileRetained"], true);
    let blobs = || app.blob_count();
    assert_eq!(blobs(), 1);
    let start = Instant::now();
    while blobs() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "file not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = app.status(job).await;
    assert_eq!(s["fileRetained"], false);
    loop {
        let (code, _) = app.get_json(&format!("/api/v1/import/status/{job}")).await;
        if code == 404 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "job not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = app.get_json(&format!("/api/v1/import/{job}/errors")).await;
    assert_eq!(code, 404);
}

async fn delete_removes_the_job_its_errors_and_its_file(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let f = app.path("one.csv");
    std::fs::write(&f, "sku,name,updated_at\nA,b,2024-01-01\nB,,2024-01-01\n").unwrap();
    let job = job_id(&app.upload("products", &f).await.1);
    app.wait_done(job, MINUTE).await;
    let resp = app
        .http
        .delete(app.url(&format!("/api/v1/import/{job}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (code, _) = app.get_json(&format!("/api/v1/import/status/{job}")).await;
    assert_eq!(code, 404);
    let errors: i64 = app.db().number("SELECT count(*) FROM job_errors");
    assert_eq!(errors, 0);
    assert_eq!(app.blob_count(), 0);
    let resp = app
        .http
        .delete(app.url(&format!("/api/v1/import/{job}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

async fn stats_count_jobs_by_status_and_rows_today(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let f = app.path("two.csv");
    std::fs::write(
        &f,
        "sku,name,updated_at\nA,b,2024-01-01\nB,c,2024-01-01\nC,,2024-01-01\n",
    )
    .unwrap();
    let job = job_id(&app.upload("products", &f).await.1);
    app.wait_done(job, MINUTE).await;
    let (code, body) = app.get_json("/api/v1/import/stats").await;
    assert_eq!(code, 200, "{body}");
    let d = &body["data"];
    assert_eq!(d["total"], 1);
    assert_eq!(d["byStatus"]["completed"], 1);
    assert_eq!(d["byStatus"]["failed"], 0);
    assert_eq!(d["rowsImportedToday"], 2);
}

/// Takes a lock from another connection that the import's writes must wait for: SQLite's write
/// lock, or PostgreSQL's lock on the dataset table. With a short `--busy-timeout-ms` the store
/// fails for real (busy / lock_not_available) until the lock is released with `COMMIT`.
fn hold_write_lock(app: &TestApp) -> Db {
    let mut db = app.db();
    match db {
        Db::Sqlite(_) => db.execute("BEGIN IMMEDIATE"),
        Db::Postgres(_) => db.execute("BEGIN; LOCK TABLE products IN ACCESS EXCLUSIVE MODE"),
    }
    db
}

fn locking_app(backend: Backend) -> TestApp {
    spawn_app(AppOptions {
        backend,
        batch_size: 200,
        extra_args: vec![
            "--busy-timeout-ms".into(),
            "200".into(),
            "--retry-limit".into(),
            "3".into(),
            // Only the attempts: no grace to wait the lock out.
            "--db-outage-grace".into(),
            "0".into(),
        ],
        ..Default::default()
    })
}

async fn a_briefly_locked_database_is_retried_and_the_counts_stay_exact(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 200,
        extra_args: vec!["--busy-timeout-ms".into(), "200".into()],
        ..Default::default()
    });
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "200000", "--error-rate", "0.02", "--seed", "26"],
    );
    let job = job_id(&app.upload("products", &file).await.1);
    wait_for_progress(&app, job).await;
    let lock = hold_write_lock(&app);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Reads go on while the writer is blocked.
    assert_eq!(app.status(job).await["status"], "processing");
    let mut lock = lock;
    lock.execute("COMMIT");
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["createdCount"], expect["valid_rows"]);
    assert_eq!(s["errorCount"], expect["invalid_rows"]);
}

async fn a_database_locked_past_the_retries_fails_the_job_cleanly_and_retry_completes_it(
    backend: Backend,
) {
    let app = locking_app(backend);
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "200000", "--error-rate", "0.02", "--seed", "27"],
    );
    let job = job_id(&app.upload("products", &file).await.1);
    // 200k rows: at 40k a job could finish between its first progress and the lock (CI).
    wait_for_progress(&app, job).await;
    let lock = hold_write_lock(&app);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The server keeps serving while its store fails.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let mut lock = lock;
    lock.execute("COMMIT");
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "failed", "{s}");
    let message = s["error"].as_str().unwrap();
    assert_eq!(
        message,
        "the database could not store the import (retried, then gave up); the rows committed so far are kept — retry the job"
    );
    for leak in ["SQL", "sqlite", "locked", "/", "INSERT"] {
        assert!(!message.contains(leak), "`{message}` leaks `{leak}`");
    }
    let (code, _) = action(&app, job, "retry").await;
    assert_eq!(code, 200);
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["createdCount"], expect["valid_rows"]);
    assert_eq!(s["errorCount"], expect["invalid_rows"]);
}

conformance!(
    a_failing_chunk_fails_the_split_job_and_stops_its_siblings,
    replace_mode_swaps_the_whole_table_in_one_commit,
    replace_mode_works_for_a_file_split_into_chunks,
    cancel_and_retry_carry_to_the_chunks_of_a_split_job,
    keys_repeated_far_apart_in_a_file_split_into_parts_end_as_unsplit,
    a_paused_job_stops_committing_and_resumes_to_exact_counts,
    a_cancelled_job_keeps_its_committed_batches_and_retry_finishes_it,
    retry_from_start_runs_a_new_job_over_the_same_file,
    the_same_file_twice_is_409_while_active_and_marked_duplicate_after,
    an_idempotency_key_returns_the_original_answer,
    a_job_over_its_time_limit_fails_with_a_clear_message,
    retention_removes_files_then_jobs,
    delete_removes_the_job_its_errors_and_its_file,
    stats_count_jobs_by_status_and_rows_today,
    a_briefly_locked_database_is_retried_and_the_counts_stay_exact,
    a_database_locked_past_the_retries_fails_the_job_cleanly_and_retry_completes_it,
);

/// Rows of one key far apart in the file (the second one 20,000 records later, past many batches
/// of both parts) land in the same part, so the part catches the repeat as a plain import does:
/// the split import's counts, row errors, table and history equal those of the same file
/// imported without splitting. A job split into
/// parts is reported with two chunks, both completed, and its total is the counted rows.
async fn keys_repeated_far_apart_in_a_file_split_into_parts_end_as_unsplit(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = generate(
        dir.path(),
        "p.csv",
        &["--rows", "20000", "--error-rate", "0.02", "--seed", "63"],
    );
    // The first 300 data rows again at the end, each with another name.
    let text = std::fs::read_to_string(&file).unwrap();
    let again: String = text
        .lines()
        .skip(1)
        .take(300)
        .map(|line| {
            let mut cells: Vec<&str> = line.split(',').collect();
            let name = format!("again {}", cells.get(1).copied().unwrap_or_default());
            if cells.len() > 1 {
                cells[1] = &name;
            }
            cells.join(",") + "\n"
        })
        .collect();
    std::fs::write(&file, text + &again).unwrap();
    let run = |chunk_rows: &str| AppOptions {
        backend,
        batch_size: 250,
        extra_args: vec!["--chunk-rows".into(), chunk_rows.into()],
        ..Default::default()
    };
    let split = spawn_app(run("5000"));
    let job = job_id(&split.upload("products", &file).await.1);
    let s = split.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["chunks"]["total"], 2, "{s}");
    assert_eq!(s["chunks"]["completed"], 2, "{s}");
    assert_eq!(s["progress"]["total"], 20_300, "{s}");
    let parts = split.db().number(&format!(
        "SELECT count(*) FROM jobs WHERE parent_id = {job} AND options LIKE '%\"part\"%'"
    ));
    assert_eq!(parts, 2, "the chunks are parts of the original file");
    let got = outcome(&split, job, &s);
    drop(split);
    let plain = spawn_app(run("0"));
    let reference = job_id(&plain.upload("products", &file).await.1);
    let done = plain.wait_done(reference, MINUTE).await;
    assert!(done.get("chunks").is_none());
    let want = outcome(&plain, reference, &done);
    // A key repeated within one job's file is a row error naming the first row: 300 of them
    // beside the generator's invalid rows.
    assert!(
        want.counts[3] >= 300,
        "the repeated keys are caught: {done}"
    );
    assert_eq!(got.counts, want.counts);
    assert_eq!(got.errors, want.errors);
    assert_eq!(got.rows, want.rows);
    assert_eq!(got.history, want.history);
}

/// Cancel and retry reach the chunk jobs of a split file: a cancelled split job cancels its
/// chunks, and retry finishes exactly the rows that were missing.
async fn cancel_and_retry_carry_to_the_chunks_of_a_split_job(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 200,
        lease_seconds: 2,
        extra_args: vec!["--chunk-rows".into(), "60000".into()],
        ..Default::default()
    });
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        // Large enough that the cancel lands mid-import even when the test process stalls for
        // a second or two on a loaded machine (40,000 rows in chunks of 10,000 once finished
        // between the first progress and the cancel, in CI).
        &["--rows", "200000", "--error-rate", "0.02", "--seed", "61"],
    );
    let job = job_id(&app.upload("products", &file).await.1);
    wait_for_progress(&app, job).await;
    let (code, body) = action(&app, job, "cancel").await;
    assert_eq!(code, 200, "{body}");
    let chunks = app
        .db()
        .rows(&format!("SELECT status FROM jobs WHERE parent_id = {job}"));
    // About four (the split rounds an estimated row total up to a multiple of the workers).
    assert!((2..=6).contains(&chunks.len()), "{chunks:?}");
    for c in &chunks {
        let status = c[0].as_deref().unwrap();
        assert!(status == "cancelled" || status == "completed", "{status}");
    }
    // A chunk cannot be driven on its own.
    let chunk = app
        .db()
        .number(&format!("SELECT min(id) FROM jobs WHERE parent_id = {job}"));
    let (code, body) = action(&app, chunk, "retry").await;
    assert_eq!(code, 409, "{body}");

    let (code, body) = action(&app, job, "retry").await;
    assert_eq!(code, 200, "{body}");
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["chunks"]["completed"], chunks.len());
    assert_eq!(s["createdCount"], expect["valid_rows"]);
    assert_eq!(s["errorCount"], expect["invalid_rows"]);
    assert_eq!(
        app.db().number("SELECT count(*) FROM products") as u64,
        expect["valid_rows"].as_u64().unwrap()
    );
}

/// `mode=replace`: the file becomes the whole table, and readers see the old table until the
/// job completes, then the new one — never a mix.
async fn replace(backend: Backend, chunk_rows: &str) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 300,
        lease_seconds: 2,
        extra_args: vec!["--chunk-rows".into(), chunk_rows.into()],
        ..Default::default()
    });
    let (old, _) = generate(
        app.dir.path(),
        "old.csv",
        &["--rows", "10000", "--seed", "71"],
    );
    let first = job_id(&app.upload("products", &old).await.1);
    app.wait_done(first, MINUTE).await;
    let (new, expect) = generate(
        app.dir.path(),
        "new.csv",
        &[
            "--rows",
            "30000",
            "--seed",
            "72",
            "--start-sku",
            "5001",
            "--error-rate",
            "0.02",
        ],
    );
    let (code, body) = app
        .upload_with("products", &new, &[("mode", "replace")])
        .await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    wait_for_progress(&app, job).await;
    // Mid-import, the table is still exactly the old one.
    let mut db = app.db();
    assert_eq!(db.number("SELECT count(*) FROM products"), 10000);
    assert_eq!(
        db.number("SELECT count(*) FROM products WHERE sku > 'SKU-0010000'"),
        0
    );
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["mode"], "replace");
    assert_eq!(s["createdCount"], expect["valid_rows"]);
    assert_eq!(s["errorCount"], expect["invalid_rows"]);
    // Now it is exactly the new file's valid rows: the first 5,000 old keys are gone.
    assert_eq!(
        db.number("SELECT count(*) FROM products") as u64,
        expect["valid_rows"].as_u64().unwrap()
    );
    assert_eq!(
        db.value("SELECT min(sku) FROM products").as_deref(),
        Some("SKU-0005001")
    );
    assert_eq!(
        db.number("SELECT sum(stock) FROM products"),
        expect["valid_sum_stock"].as_i64().unwrap()
    );
    // The staging table is gone.
    let tables = match backend {
        Backend::Sqlite => {
            format!("SELECT count(*) FROM sqlite_master WHERE name = '_sluice_next_{job}'")
        }
        Backend::Postgres => format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = '_sluice_next_{job}'"
        ),
    };
    assert_eq!(db.number(&tables), 0);
}

async fn replace_mode_swaps_the_whole_table_in_one_commit(backend: Backend) {
    replace(backend, "0").await;
}

async fn replace_mode_works_for_a_file_split_into_chunks(backend: Backend) {
    replace(backend, "8000").await;
}

/// A chunk that fails fails its split job, names the part, and cancels the other chunks.
async fn a_failing_chunk_fails_the_split_job_and_stops_its_siblings(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 100,
        extra_args: vec!["--chunk-rows".into(), "10000".into()],
        datasets: Some(
            "[datasets.products]\nkey = [\"sku\"]\ntimeout = \"1ms\"\n[datasets.products.fields]\n\
             sku = { type = \"text\", required = true }\nname = { type = \"text\" }\n"
                .into(),
        ),
        ..Default::default()
    });
    let (file, _) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "60000", "--seed", "81"],
    );
    let job = job_id(&app.upload("products", &file).await.1);
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "failed", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.starts_with("the job ran longer than its time limit"),
        "{error}"
    );
    // One part per worker (two), run together by the worker that split the file.
    assert_eq!(s["chunks"]["total"], 2);
    // No chunk keeps running or waiting once the job has failed.
    let start = std::time::Instant::now();
    loop {
        let active = app.db().number(&format!(
            "SELECT count(*) FROM jobs WHERE parent_id = {job} AND status IN ('pending', 'processing', 'paused')"
        ));
        if active == 0 {
            break;
        }
        assert!(start.elapsed() < MINUTE, "{active} chunks still active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
