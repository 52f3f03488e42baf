//! The bounded connection pool through the real server: when every database connection stays in
//! use for the whole wait, a request is answered `503 busy` with `Retry-After` — never a 500,
//! never a hang — and the server keeps working once the crowd has gone. On PostgreSQL the
//! database never sees more connections from the server than the cap allows (plus its writers
//! and its listener).

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

/// Pool of one connection, a wait of one millisecond, no rate limit: a crowd of requests must
/// find it taken now and then.
fn one_connection(backend: Backend) -> AppOptions {
    AppOptions {
        backend,
        workers: 1,
        extra_args: [
            "--db-connections",
            "1",
            "--db-wait-ms",
            "1",
            "--rate-limit",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        ..AppOptions::default()
    }
}

/// The job's status once it is finished, asking again after `Retry-After` while the one
/// connection is taken (by the worker's heartbeat, say).
async fn status_when_free(app: &TestApp, job: i64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = app.get_json(&format!("/api/v1/import/status/{job}")).await;
        assert!(code == 200 || code == 503, "{code}: {body}");
        let status = body["data"]["status"].as_str().unwrap_or_default();
        if matches!(status, "completed" | "failed" | "cancelled") {
            return status.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} not done: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_crowd_on_one_connection_gets_503_busy_and_nothing_worse(backend: Backend) {
    let app = spawn_app(one_connection(backend));
    let (file, _) = generate(
        app.dir.path(),
        "small.csv",
        &["--rows", "50", "--format", "csv"],
    );
    // The one connection may be taken by the idle worker's claim now and then: ask again.
    let mut answer = app.upload("products", &file).await;
    for _ in 0..20 {
        if answer.0 != 503 {
            break;
        }
        answer = app.upload("products", &file).await;
    }
    let (code, body) = answer;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    assert_eq!(status_when_free(&app, job).await, "completed");
    let mut busy = 0;
    // Rounds of 200 concurrent status requests, until the pool was found taken at least once
    // (bounded: a machine that answers every one of 2,000 in turn is a failure to look at).
    for _ in 0..10 {
        let requests = (0..200).map(|_| {
            let request = app.get(&format!("/api/v1/import/status/{job}"));
            async move {
                let response = request.send().await.expect("an answer");
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap_or_default().to_string());
                let body: serde_json::Value = response.json().await.expect("a JSON body");
                (status, retry_after, body)
            }
        });
        for (status, retry_after, body) in futures_util::future::join_all(requests).await {
            match status {
                200 => assert_eq!(body["data"]["status"], "completed"),
                503 => {
                    assert_eq!(body["success"], false, "{body}");
                    assert_eq!(body["error"]["code"], "busy", "{body}");
                    assert_eq!(retry_after.as_deref(), Some("1"));
                    busy += 1;
                }
                other => panic!("status {other}: {body}"),
            }
        }
        if busy > 0 {
            break;
        }
    }
    assert!(
        busy > 0,
        "2,000 concurrent requests never found the one connection taken"
    );
    // Once the crowd has gone, everything answers.
    assert_eq!(status_when_free(&app, job).await, "completed");
    if backend == Backend::Postgres {
        let db = app.pg_database.clone().expect("a database");
        // One pooled connection, the idle worker's listener, and nothing else.
        let open = app.db().number(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid != pg_backend_pid()"
        ));
        assert!(open <= 2, "{open} connections from a server capped at 1");
    }
}

conformance!(a_crowd_on_one_connection_gets_503_busy_and_nothing_worse);
