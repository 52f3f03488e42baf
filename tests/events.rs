//! Server-Sent Events through the real server: order, completeness, `Last-Event-ID`
//! resumption, many listeners, and a stalled listener that must not hold up an import.

#[macro_use]
mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

fn small_batches(backend: Backend) -> AppOptions {
    AppOptions {
        backend,
        batch_size: 500,
        ..AppOptions::default()
    }
}

fn seq(e: &Sse) -> i64 {
    e.id.as_deref()
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("event without a numeric id: {e:?}"))
}

async fn job_events_come_in_order_after_every_batch_and_end_with_the_results(backend: Backend) {
    let app = spawn_app(small_batches(backend));
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "10000", "--error-rate", "0.05"],
    );
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    let resp = app
        .events(&format!("/api/v1/import/{job}/events"), None)
        .await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = SseReader::new(resp).all(MINUTE).await;

    // Ids strictly increase; progress never goes back; the stream ends with one `done`.
    let seqs: Vec<i64> = events.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let currents: Vec<u64> = events
        .iter()
        .map(|e| e.data["progress"]["current"].as_u64().unwrap())
        .collect();
    assert!(currents.windows(2).all(|w| w[0] <= w[1]), "{currents:?}");
    assert_eq!(events[0].event, "status");
    assert_eq!(events[0].data["status"], "pending");
    let last = events.last().unwrap();
    assert_eq!(last.event, "done");
    assert_eq!(
        events.iter().filter(|e| e.event == "done").count(),
        1,
        "one done event"
    );
    assert_eq!(last.data["status"], "completed");
    assert_eq!(last.data["results"]["totalRows"], 10_000);
    assert_eq!(last.data["results"]["successCount"], expect["valid_rows"]);
    assert_eq!(last.data["results"]["errorCount"], expect["invalid_rows"]);

    // One progress event per batch: 10,000 rows in batches of 500.
    let batches: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data["batches"].as_u64().unwrap())
        .filter(|b| *b > 0)
        .collect();
    assert_eq!(batches, (1..=20).collect::<Vec<u64>>());
    assert!(
        events
            .iter()
            .any(|e| e.data["status"] == "processing" && e.event == "status")
    );
}

async fn reconnecting_with_last_event_id_resumes_exactly_and_keeps_the_final_event(
    backend: Backend,
) {
    let app = spawn_app(small_batches(backend));
    let (file, _) = generate(app.dir.path(), "p.csv", &["--rows", "20000"]);
    let (_, body) = app.upload("products", &file).await;
    let job = job_id(&body);
    let path = format!("/api/v1/import/{job}/events");

    // Read a few events, drop the connection, resume from the last id seen: repeatedly.
    let mut seen: Vec<Sse> = Vec::new();
    let mut last_id: Option<String> = None;
    loop {
        let resp = app.events(&path, last_id.as_deref()).await;
        if resp.status().as_u16() == 204 {
            break;
        }
        let mut reader = SseReader::new(resp);
        for _ in 0..3 {
            match reader.next(MINUTE).await {
                Some(e) => {
                    last_id = e.id.clone();
                    seen.push(e);
                }
                None => break,
            }
        }
    }
    // What the reconnecting client saw is exactly the whole stream, the final event included.
    let whole = SseReader::new(app.events(&path, None).await)
        .all(MINUTE)
        .await;
    let ids = |v: &[Sse]| v.iter().map(seq).collect::<Vec<_>>();
    assert_eq!(ids(&seen), ids(&whole));
    assert_eq!(seen.last().unwrap().event, "done");
    assert_eq!(seen.last().unwrap().data["results"]["totalRows"], 20_000);

    // Resuming from the middle gives the rest, and `?after=` means the same.
    let mid = whole[whole.len() / 2].id.clone().unwrap();
    let rest = SseReader::new(app.events(&path, Some(&mid)).await)
        .all(MINUTE)
        .await;
    assert_eq!(ids(&rest), ids(&whole[whole.len() / 2 + 1..]));
    let rest2 = SseReader::new(
        app.get(&format!("{path}?after={mid}"))
            .send()
            .await
            .unwrap(),
    )
    .all(MINUTE)
    .await;
    assert_eq!(ids(&rest2), ids(&rest));

    // A bad id is a 400; an unknown job a 404; no token a 401.
    let (code, body) = json_of(app.events(&path, Some("abc")).await).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_event_id");
    let resp = app.events("/api/v1/import/999/events", None).await;
    assert_eq!(resp.status().as_u16(), 404);
    let resp = app.http.get(app.url(&path)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

async fn many_listeners_see_every_job_and_a_stalled_listener_does_not_hold_up_the_import(
    backend: Backend,
) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 200,
        ..AppOptions::default()
    });
    // A client that subscribes and never reads a byte.
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "GET /api/v1/events?after=0 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut listeners = Vec::new();
    for _ in 0..12 {
        let mut r = SseReader::new(app.events("/api/v1/events", None).await);
        let ready = r.next(MINUTE).await.unwrap();
        assert_eq!(ready.event, "ready");
        listeners.push(r);
    }
    let (a, _) = generate(app.dir.path(), "a.csv", &["--rows", "30000"]);
    let (b, _) = generate(
        app.dir.path(),
        "b.csv",
        &["--rows", "5000", "--start-sku", "900001"],
    );
    let job_a = job_id(&app.upload("products", &a).await.1);
    let job_b = job_id(&app.upload("products", &b).await.1);
    let started = std::time::Instant::now();
    app.wait_done(job_a, MINUTE).await;
    app.wait_done(job_b, MINUTE).await;
    let took = started.elapsed();
    // 150 batches committed while one subscriber reads nothing at all.
    assert!(took < Duration::from_secs(50), "import took {took:?}");

    for mut r in listeners {
        let mut done = Vec::new();
        let mut last = 0;
        while done.len() < 2 {
            let e = r.next(MINUTE).await.expect("stream open");
            assert!(seq(&e) > last, "out of order");
            last = seq(&e);
            if e.event == "done" {
                done.push(e.data["jobId"].as_i64().unwrap());
            }
        }
        done.sort();
        assert_eq!(done, vec![job_a, job_b]);
    }
    drop(stalled);
}

async fn a_retried_jobs_stream_goes_past_its_earlier_end_to_the_final_one(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 100,
        workers: 1,
        ..AppOptions::default()
    });
    let (file, expect) = generate(app.dir.path(), "p.csv", &["--rows", "30000"]);
    let job = job_id(&app.upload("products", &file).await.1);
    let path = format!("/api/v1/import/{job}/events");
    // Follow it until a batch is in, then cancel it.
    let mut live = SseReader::new(app.events(&path, None).await);
    loop {
        let e = live.next(MINUTE).await.expect("open");
        if e.event == "progress" && e.data["batches"].as_u64().unwrap() > 0 {
            break;
        }
    }
    let cancel = app
        .post(&format!("/api/v1/import/{job}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 200);
    let rest = live.all(MINUTE).await;
    let cancelled = rest.last().unwrap();
    assert_eq!(
        (cancelled.event.as_str(), &cancelled.data["status"]),
        ("done", &serde_json::json!("cancelled"))
    );
    // Resuming after that final event: nothing more to say (204).
    let resp = app.events(&path, cancelled.id.as_deref()).await;
    assert_eq!(resp.status().as_u16(), 204);

    let retry = app
        .post(&format!("/api/v1/import/{job}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status().as_u16(), 200);
    // The same Last-Event-ID now resumes into the retry and ends at the real end.
    let after = SseReader::new(app.events(&path, cancelled.id.as_deref()).await)
        .all(MINUTE)
        .await;
    assert_eq!(after[0].event, "status");
    assert_eq!(after[0].data["status"], "pending");
    let last = after.last().unwrap();
    assert_eq!(last.event, "done");
    assert_eq!(last.data["status"], "completed");
    assert_eq!(last.data["results"]["successCount"], expect["valid_rows"]);
    // From the start, the whole history: the earlier `done` does not end the stream.
    let whole = SseReader::new(app.events(&path, None).await)
        .all(MINUTE)
        .await;
    let dones: Vec<&str> = whole
        .iter()
        .filter(|e| e.event == "done")
        .map(|e| e.data["status"].as_str().unwrap())
        .collect();
    assert_eq!(dones, vec!["cancelled", "completed"]);
}

async fn open_event_streams_do_not_keep_the_server_from_stopping(backend: Backend) {
    let mut app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let mut all = SseReader::new(app.events("/api/v1/events", None).await);
    // (Without closing the event bus at shutdown, axum's graceful shutdown waits forever.)
    assert_eq!(all.next(MINUTE).await.unwrap().event, "ready");
    let started = std::time::Instant::now();
    let child = app.child.as_mut().expect("running");
    let term = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not stop within 10 s of SIGTERM with an event stream open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(all.next(MINUTE).await.is_none(), "the stream ended");
}

conformance!(
    job_events_come_in_order_after_every_batch_and_end_with_the_results,
    reconnecting_with_last_event_id_resumes_exactly_and_keeps_the_final_event,
    many_listeners_see_every_job_and_a_stalled_listener_does_not_hold_up_the_import,
    a_retried_jobs_stream_goes_past_its_earlier_end_to_the_final_one,
    open_event_streams_do_not_keep_the_server_from_stopping,
);
