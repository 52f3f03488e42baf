//! Webhooks through the real server and a real receiver on a local port: signed deliveries a
//! receiver can verify, retries with backoff after failures, and the recorded attempts.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver on a free local port that answers 500 to its first `fail_first` requests.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let mut v = seen.lock().unwrap();
                v.push(Received { headers, body });
                if v.len() <= fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), got)
}

/// What a receiver does: recompute the HMAC of "<t>.<body>" and compare, and check the time.
fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

async fn register(app: &TestApp, body: Value) -> (u16, Value) {
    json_of(
        app.post("/api/v1/webhooks")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn deliveries(app: &TestApp, hook: i64) -> Value {
    let (code, body) = app
        .get_json(&format!("/api/v1/webhooks/{hook}/deliveries"))
        .await;
    assert_eq!(code, 200, "{body}");
    body["data"]["deliveries"].clone()
}

/// Waits until the webhook's newest delivery is no longer pending.
async fn settled(app: &TestApp, hook: i64) -> Value {
    let start = std::time::Instant::now();
    loop {
        let d = deliveries(app, hook).await;
        if d.as_array().is_some_and(|a| !a.is_empty())
            && d.as_array()
                .unwrap()
                .iter()
                .all(|x| x["state"] != "pending")
        {
            return d;
        }
        assert!(start.elapsed() < MINUTE, "deliveries not settled: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_finished_import_is_posted_signed_and_the_receiver_can_verify_it(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        webhook_allow_private: true,
        ..Default::default()
    });
    let (url, got) = receiver(0).await;
    let (code, hook) = register(&app, json!({"url": url, "events": ["job.completed"]})).await;
    assert_eq!(code, 201, "{hook}");
    let secret = hook["data"]["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let hook_id = hook["data"]["id"].as_i64().unwrap();
    // A second webhook that only wants failures hears nothing of a completed job.
    let (_, only_failed) = register(&app, json!({"url": url, "events": ["job.failed"]})).await;

    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "3000", "--error-rate", "0.05"],
    );
    let job = job_id(&app.upload("products", &file).await.1);
    app.wait_done(job, MINUTE).await;
    let list = settled(&app, hook_id).await;

    let received = got.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "exactly one delivery");
    let r = &received[0];
    let signature = r.headers["sluice-signature"].to_str().unwrap();
    assert!(
        verify(&secret, signature, &r.body),
        "signature: {signature}"
    );
    assert!(!verify("whsec_wrong", signature, &r.body));
    let mut tampered = r.body.to_vec();
    tampered.push(b' ');
    assert!(!verify(&secret, signature, &tampered));
    assert_eq!(r.headers["sluice-event"], "job.completed");
    assert_eq!(r.headers["content-type"], "application/json");
    let payload: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(payload["type"], "job.completed");
    assert_eq!(payload["data"]["jobId"], job);
    assert_eq!(payload["data"]["results"]["totalRows"], 3000);
    assert_eq!(
        payload["data"]["results"]["errorCount"],
        expect["invalid_rows"]
    );
    // Where the import's changes lie in the change feed, as its status says.
    let changes = &app.status(job).await["changes"];
    assert!(changes["last"].as_i64().unwrap() > changes["after"].as_i64().unwrap());
    assert_eq!(&payload["data"]["changes"], changes);

    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["state"], "delivered");
    assert_eq!(list[0]["jobId"], job);
    assert_eq!(list[0]["attempts"][0]["httpStatus"], 204);
    let failed_list = deliveries(&app, only_failed["data"]["id"].as_i64().unwrap()).await;
    assert_eq!(failed_list, json!([]));

    // A cancelled job is announced as job.cancelled to a webhook that asked for it.
    let (_, on_cancel) = register(&app, json!({"url": url, "events": ["job.cancelled"]})).await;
    let cancel_secret = on_cancel["data"]["secret"].as_str().unwrap().to_string();
    let on_cancel = on_cancel["data"]["id"].as_i64().unwrap();
    let (big, _) = generate(
        app.dir.path(),
        "big.csv",
        &["--rows", "200000", "--start-sku", "500001"],
    );
    let big_job = job_id(&app.upload("products", &big).await.1);
    let cancel = app
        .post(&format!("/api/v1/import/{big_job}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 200);
    let list = settled(&app, on_cancel).await;
    assert_eq!(list[0]["event"], "job.cancelled");
    assert_eq!(list[0]["jobId"], big_job);
    let last = got.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.headers["sluice-event"], "job.cancelled");
    let signature = last.headers["sluice-signature"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(verify(&cancel_secret, &signature, &last.body));
    assert!(
        !verify(&secret, &signature, &last.body),
        "each webhook has its own key"
    );

    // The list of webhooks never shows the secret again.
    let (_, hooks) = app.get_json("/api/v1/webhooks").await;
    assert_eq!(hooks["data"]["webhooks"].as_array().unwrap().len(), 3);
    assert!(!hooks.to_string().contains(&secret) && !hooks.to_string().contains(&cancel_secret));
}

async fn a_failing_receiver_is_retried_with_backoff_and_every_attempt_is_recorded(
    backend: Backend,
) {
    let app = spawn_app(AppOptions {
        backend,
        extra_args: vec![
            "--webhook-backoff-ms".into(),
            "200".into(),
            "--webhook-attempts".into(),
            "4".into(),
        ],
        webhook_allow_private: true,
        ..AppOptions::default()
    });
    let (flaky_url, got) = receiver(2).await;
    let (_, flaky) = register(&app, json!({"url": flaky_url})).await;
    let flaky_id = flaky["data"]["id"].as_i64().unwrap();
    // A receiver that is never there: a port that was free a moment ago.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let (_, dead) = register(&app, json!({"url": dead_url})).await;
    let dead_id = dead["data"]["id"].as_i64().unwrap();

    let (file, _) = generate(app.dir.path(), "p.csv", &["--rows", "500"]);
    let job = job_id(&app.upload("products", &file).await.1);
    let done = app.wait_done(job, MINUTE).await;
    assert_eq!(done["status"], "completed");

    let list = settled(&app, flaky_id).await;
    let attempts = list[0]["attempts"].as_array().unwrap().clone();
    let statuses: Vec<&Value> = attempts.iter().map(|a| &a["httpStatus"]).collect();
    assert_eq!(statuses, vec![&json!(500), &json!(500), &json!(204)]);
    assert_eq!(list[0]["state"], "delivered");
    // The waits grow: ≥ 200 ms after the first failure, ≥ 800 ms after the second.
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(attempts[i]["at"].as_str().unwrap()).unwrap()
    };
    assert!((at(1) - at(0)).num_milliseconds() >= 200);
    assert!((at(2) - at(1)).num_milliseconds() >= 800);
    // Every attempt carried the same signed body, and the receiver saw three.
    let received = got.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    assert!(received.windows(2).all(|w| w[0].body == w[1].body));

    let list = settled(&app, dead_id).await;
    assert_eq!(list[0]["state"], "failed");
    let attempts = list[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert!(attempts.iter().all(|a| a["httpStatus"].is_null()
        && a["error"] == "could not connect to the receiver"));
}

async fn webhook_registration_is_checked(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        webhook_allow_private: true,
        ..Default::default()
    });
    let (code, body) = register(&app, json!({"url": "ftp://example.com/hook"})).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_url"))
    );
    let (code, body) = register(
        &app,
        json!({"url": "http://127.0.0.1:9/h", "events": ["job.exploded"]}),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("unknown_event"))
    );
    let (code, body) = register(&app, json!({"events": []})).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    let (code, body) = register(&app, json!({"url": "http://127.0.0.1:9/h"})).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        body["data"]["events"],
        json!(["job.completed", "job.failed", "job.cancelled"])
    );
    let id = body["data"]["id"].as_i64().unwrap();
    let resp = app
        .http
        .delete(app.url(&format!("/api/v1/webhooks/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (code, _) = app
        .get_json(&format!("/api/v1/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(code, 404);
    let resp = app
        .http
        .get(app.url("/api/v1/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

async fn a_receiver_that_never_answers_does_not_hold_up_imports(backend: Backend) {
    // Deliveries wait far longer than the imports take, however slow the machine.
    let app = spawn_app(AppOptions {
        backend,
        webhook_allow_private: true,
        extra_args: vec!["--webhook-timeout".into(), "5m".into()],
        ..Default::default()
    });
    // Accepts connections and never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", hanging.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in hanging.incoming().take(4).flatten() {
            open.push(s);
        }
        std::thread::sleep(Duration::from_secs(60));
        drop(open);
    });
    let (_, hook) = register(&app, json!({"url": url})).await;
    let hook = hook["data"]["id"].as_i64().unwrap();
    for n in 0..3 {
        let (file, _) = generate(
            app.dir.path(),
            &format!("p{n}.csv"),
            &[
                "--rows",
                "2000",
                "--start-sku",
                &(100_000 * (n + 1)).to_string(),
            ],
        );
        let job = job_id(&app.upload("products", &file).await.1);
        assert_eq!(app.wait_done(job, MINUTE).await["status"], "completed");
    }
    // Three jobs done while every delivery is still waiting for its answer. (The dispatcher
    // plans a delivery shortly after its job ends: wait for all three to be planned.)
    let start = std::time::Instant::now();
    let list = loop {
        let list = deliveries(&app, hook).await;
        if list.as_array().unwrap().len() == 3 {
            break list;
        }
        assert!(start.elapsed() < MINUTE, "deliveries not planned: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "pending" && d["attempts"] == json!([]))
    );
    drop(held);
}

async fn a_new_webhook_hears_only_of_jobs_that_end_after_it_was_registered(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        webhook_allow_private: true,
        ..Default::default()
    });
    let (file, _) = generate(app.dir.path(), "old.csv", &["--rows", "300"]);
    let old = job_id(&app.upload("products", &file).await.1);
    app.wait_done(old, MINUTE).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let (url, got) = receiver(0).await;
    let (_, hook) = register(&app, json!({"url": url})).await;
    let hook = hook["data"]["id"].as_i64().unwrap();
    let (file, _) = generate(
        app.dir.path(),
        "new.csv",
        &["--rows", "300", "--start-sku", "9000"],
    );
    let new = job_id(&app.upload("products", &file).await.1);
    app.wait_done(new, MINUTE).await;
    let list = settled(&app, hook).await;
    let jobs: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["jobId"].as_i64().unwrap())
        .collect();
    assert_eq!(jobs, vec![new]);
    assert_eq!(got.lock().unwrap().len(), 1);
}

/// Without `--webhook-allow-private`, internal destinations are refused when the webhook is
/// registered: IP literals in every spelling, and a host name (`localhost`) whose addresses
/// are all loopback.
async fn internal_destinations_are_refused_at_registration_by_default(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let (url, got) = receiver(0).await;
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/hook")
        .to_string();
    for target in [
        url.clone(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://[::1]/".to_string(),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
        "http://192.168.1.10:8080/".to_string(),
        "http://100.64.0.1/".to_string(),
        "http://0.0.0.0/".to_string(),
        format!("http://localhost:{port}/hook"),
    ] {
        let (code, body) = register(&app, json!({"url": target})).await;
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (400, Some("webhook_url_not_allowed")),
            "{target}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--webhook-allow-private"), "{message}");
    }
    // A public address is accepted (nothing is sent to it here: no job ends).
    let (code, body) = register(&app, json!({"url": "http://8.8.8.8:9/hook"})).await;
    assert_eq!(code, 201, "{body}");
    let (_, hooks) = app.get_json("/api/v1/webhooks").await;
    assert_eq!(hooks["data"]["webhooks"].as_array().unwrap().len(), 1);
    assert!(got.lock().unwrap().is_empty());
}

/// The delivery-time guard, for webhooks that got past registration: a name that resolves to
/// loopback now (DNS rebinding: it looked public when it was registered) and an IP literal are
/// both refused before any request leaves, and the attempt records a message naming no address.
async fn deliveries_to_internal_addresses_are_refused_and_nothing_reaches_the_receiver(
    backend: Backend,
) {
    let app = spawn_app(AppOptions {
        backend,
        extra_args: vec!["--webhook-attempts".into(), "1".into()],
        ..Default::default()
    });
    let (url, got) = receiver(0).await;
    let by_name = url.replace("127.0.0.1", "localhost");
    // Straight into the database, as if registered while the names pointed elsewhere.
    let mut db = app.db();
    let admin = db.number("SELECT id FROM tokens WHERE label = 'SLUICE_ADMIN_TOKEN'");
    for target in [&by_name, &url] {
        db.execute(&format!(
            "INSERT INTO webhooks (url, events, secret, created_by, created_at, org_id) VALUES \
             ('{target}', '[\"job.completed\",\"job.failed\",\"job.cancelled\"]', \
              'whsec_test', {admin}, '2000-01-01T00:00:00.000Z', \
              (SELECT u.org_id FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = {admin}))"
        ));
    }
    drop(db);
    let (_, hooks) = app.get_json("/api/v1/webhooks").await;
    let ids: Vec<i64> = hooks["data"]["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{hooks}");

    let (file, _) = generate(app.dir.path(), "p.csv", &["--rows", "200"]);
    let job = job_id(&app.upload("products", &file).await.1);
    assert_eq!(app.wait_done(job, MINUTE).await["status"], "completed");
    for id in ids {
        let list = settled(&app, id).await;
        assert_eq!(list[0]["state"], "failed", "{list}");
        assert_eq!(list[0]["jobId"], job);
        let attempt = &list[0]["attempts"][0];
        assert!(attempt["httpStatus"].is_null(), "{attempt}");
        let error = attempt["error"].as_str().unwrap();
        assert!(error.contains("not allowed"), "{error}");
        for leak in ["127.0.0.1", "::1", "localhost", "dns", "resolve"] {
            assert!(!error.contains(leak), "{error}");
        }
    }
    assert!(
        got.lock().unwrap().is_empty(),
        "a refused delivery must not reach the receiver"
    );
}

conformance!(
    a_finished_import_is_posted_signed_and_the_receiver_can_verify_it,
    a_failing_receiver_is_retried_with_backoff_and_every_attempt_is_recorded,
    webhook_registration_is_checked,
    a_receiver_that_never_answers_does_not_hold_up_imports,
    a_new_webhook_hears_only_of_jobs_that_end_after_it_was_registered,
    internal_destinations_are_refused_at_registration_by_default,
    deliveries_to_internal_addresses_are_refused_and_nothing_reaches_the_receiver,
);
