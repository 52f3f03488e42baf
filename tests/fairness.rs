//! Job priorities and fairness between organisations, through the real server: the `priority`
//! upload option (form field, query parameter, the CLI's `--priority`, a bad value refused),
//! `priority` and `queuePosition` in the job status and list, and the order workers claim in.
//!
//! Order is proven by the job event log, never by timings: the trigger on `jobs` writes a
//! `status` event with a global sequence number in the claim's own transaction, so the order of
//! the first `processing` events is the claim order. Workers are held back (`--workers 0`) while
//! the queue is built, then started with `spawn_worker`.

#[macro_use]
mod common;

use std::process::Command;

use common::*;

/// Four copies of the products dataset (`d1`…`d4`), so one organisation's jobs are not held back
/// by the one-writer-per-dataset rule.
fn datasets() -> String {
    (1..=4)
        .map(|i| {
            format!(
                "[datasets.d{i}]\nkey = [\"sku\"]\n[datasets.d{i}.fields]\n\
                 sku = {{ type = \"text\", required = true }}\n\
                 name = {{ type = \"text\", required = true }}\n\
                 category = {{ type = \"text\" }}\n\
                 price = {{ type = \"decimal\", min = 0 }}\n\
                 stock = {{ type = \"integer\", min = 0 }}\n\
                 updated_at = {{ type = \"date\", required = true }}\n"
            )
        })
        .collect()
}

/// A server with no workers of its own, serving [`datasets`].
fn held_back(backend: Backend) -> TestApp {
    spawn_app(AppOptions {
        backend,
        workers: 0,
        datasets: Some(datasets()),
        ..Default::default()
    })
}

/// Starts a worker process with `n` workers on the app's database and datasets.
fn start_workers(app: &TestApp, n: usize) {
    let datasets = app.path("datasets.toml");
    app.spawn_worker_with(n, &["--datasets", datasets.to_str().expect("path")]);
}

/// Jobs in the order they were claimed: the first `processing` status event of each.
fn claim_order(app: &TestApp) -> Vec<i64> {
    let mut order: Vec<i64> = Vec::new();
    for row in app.db().rows(
        "SELECT job_id FROM job_events WHERE kind = 'status' AND status = 'processing' ORDER BY seq",
    ) {
        let id: i64 = row[0].as_deref().and_then(|v| v.parse().ok()).expect("id");
        if !order.contains(&id) {
            order.push(id);
        }
    }
    order
}

fn position(order: &[i64], job: i64) -> usize {
    order
        .iter()
        .position(|&j| j == job)
        .unwrap_or_else(|| panic!("job {job} was never claimed: {order:?}"))
}

/// Uploads a file with `token` into `dataset`; the new job's id.
async fn upload_as(app: &TestApp, token: &str, dataset: &str, file: &std::path::Path) -> i64 {
    let text = std::fs::read_to_string(file).expect("read upload");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let (code, body) = app
        .upload_text_as(
            token,
            &format!("/api/v1/import/{dataset}"),
            &name,
            &text,
            &[],
        )
        .await;
    assert_eq!(code, 202, "{body}");
    job_id(&body)
}

/// Organisation A queues four large imports (into four datasets, so all four could run at
/// once), then organisation B one small one. Two workers: B's job is claimed before A's third,
/// although A's are older. Strictly oldest first would run A1, A2, then A3 as soon as either
/// ends, and B after that.
async fn a_small_organisation_is_not_starved_by_a_large_backlog(backend: Backend) {
    let app = held_back(backend);
    let (_, a) = org_with_admin(&app, "acme");
    let (_, b) = org_with_admin(&app, "globex");
    // Large enough that A's first job is still running when the second worker claims (a few
    // milliseconds after the first); nothing depends on how long they take beyond that.
    let mut a_jobs = Vec::new();
    for i in 1..=4 {
        let (file, _) = generate(
            app.dir.path(),
            &format!("a{i}.csv"),
            &["--rows", "20000", "--seed", &i.to_string()],
        );
        a_jobs.push(upload_as(&app, &a, &format!("d{i}"), &file).await);
    }
    let (small, _) = generate(app.dir.path(), "b.csv", &["--rows", "1000", "--seed", "9"]);
    let b_job = upload_as(&app, &b, "d1", &small).await;
    // Nothing runs yet: B's job is next but for A's first (oldest; nobody runs anything).
    let s = app.status_as(&b, b_job).await;
    assert_eq!(
        (s["status"].as_str(), s["priority"].as_str()),
        (Some("pending"), Some("normal"))
    );
    assert_eq!(
        s["queuePosition"], 5,
        "by age while nobody runs anything: {s}"
    );

    start_workers(&app, 2);
    for &job in a_jobs.iter().chain([&b_job]) {
        let token = if job == b_job { &b } else { &a };
        let s = app.wait_done_as(token, job).await;
        assert_eq!(s["status"], "completed", "{s}");
    }
    let order = claim_order(&app);
    assert!(
        position(&order, b_job) < position(&order, a_jobs[2]),
        "B's job (#{b_job}) was claimed before A's third (#{}): claim order {order:?}",
        a_jobs[2]
    );
}

/// A `high` upload is claimed before older `normal` ones, a `low` one after them; while they
/// wait, status and list show the priority and the queue position; a bad priority is a 400.
async fn a_high_job_is_claimed_before_older_normal_ones(backend: Backend) {
    let app = held_back(backend);
    let dir = app.dir.path();
    let files: Vec<_> = (1..=4)
        .map(|i| {
            generate(
                dir,
                &format!("f{i}.csv"),
                &["--rows", "100", "--seed", &i.to_string()],
            )
            .0
        })
        .collect();

    let (code, body) = app
        .upload_with("d1", &files[0], &[("priority", "urgent")])
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_priority");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for allowed in ["high", "normal", "low"] {
        assert!(message.contains(allowed), "{message}");
    }
    let (_, list) = app.get_json("/api/v1/import/jobs").await;
    assert_eq!(list["data"]["total"], 0, "no job for a refused upload");

    let normal1 = job_id(&app.upload("d1", &files[0]).await.1);
    let (code, body) = app
        .upload_with("d2", &files[1], &[("priority", "normal")])
        .await;
    assert_eq!(code, 202, "{body}");
    let normal2 = job_id(&body);
    // As a query parameter, like the other options.
    let (code, body) = app.upload_with("d3?priority=low", &files[2], &[]).await;
    assert_eq!(code, 202, "{body}");
    let low = job_id(&body);
    let (code, body) = app
        .upload_with("d4", &files[3], &[("priority", "high")])
        .await;
    assert_eq!(code, 202, "{body}");
    let high = job_id(&body);

    for (job, priority, place) in [
        (high, "high", 1),
        (normal1, "normal", 2),
        (normal2, "normal", 3),
        (low, "low", 4),
    ] {
        let s = app.status(job).await;
        assert_eq!(s["priority"], priority, "{s}");
        assert_eq!(s["queuePosition"], place, "{s}");
    }
    let (_, list) = app.get_json("/api/v1/import/jobs").await;
    let listed: Vec<(i64, String, u64)> = list["data"]["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            (
                j["jobId"].as_i64().unwrap_or(0),
                j["priority"].as_str().unwrap_or("?").to_string(),
                j["queuePosition"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (high, "high".into(), 1),
            (low, "low".into(), 4),
            (normal2, "normal".into(), 3),
            (normal1, "normal".into(), 2),
        ]
    );

    start_workers(&app, 1);
    for job in [normal1, normal2, low, high] {
        let s = app.wait_done(job, MINUTE).await;
        assert_eq!(s["status"], "completed", "{s}");
        assert!(
            s["queuePosition"].is_null(),
            "only a pending job has one: {s}"
        );
        assert!(
            s["priority"].is_string(),
            "a finished job keeps its priority: {s}"
        );
    }
    assert_eq!(claim_order(&app), vec![high, normal1, normal2, low]);
}

/// `sluice import --priority` sends the option; the job shows it.
async fn the_cli_sends_the_priority(backend: Backend) {
    let app = held_back(backend);
    let (file, _) = generate(app.dir.path(), "p.csv", &["--rows", "10"]);
    let out = Command::new(binary())
        .args([
            "import",
            file.to_str().unwrap(),
            "--dataset",
            "d1",
            "--priority",
            "low",
        ])
        .env("SLUICE_SERVER", &app.base)
        .env("SLUICE_TOKEN", TOKEN)
        .output()
        .expect("run sluice import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, list) = app.get_json("/api/v1/import/jobs").await;
    assert_eq!(list["data"]["jobs"][0]["priority"], "low", "{list}");
    let out = Command::new(binary())
        .args([
            "import",
            file.to_str().unwrap(),
            "--dataset",
            "d2",
            "--priority",
            "soon",
        ])
        .env("SLUICE_SERVER", &app.base)
        .env("SLUICE_TOKEN", TOKEN)
        .output()
        .expect("run sluice import");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_priority"));
}

conformance!(
    a_small_organisation_is_not_starved_by_a_large_backlog,
    a_high_job_is_claimed_before_older_normal_ones,
    the_cli_sends_the_priority,
);
