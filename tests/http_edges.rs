//! The HTTP edges of issue 12, through the real binary: a client that never finishes its headers
//! is disconnected, a trickling body is cut off with `408 body_timeout` and its partial file
//! removed, a token's extra concurrent upload gets `429 too_many_uploads`, an upload that does
//! not fit on the disk gets `507 insufficient_storage` and leaves nothing, an upload answered
//! 503 leaves no blob, the files a killed server left behind are removed at the next start while
//! the files of existing jobs stay, and a client that leaves while its job is being inserted
//! does not take the job's file with it.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CSV_HEADER: &str = "sku,name,price,stock,updated_at\n";

fn csv(rows: usize) -> String {
    let mut s = CSV_HEADER.to_string();
    for i in 0..rows {
        s.push_str(&format!("SKU-{i},Widget {i},1.50,{i},2024-01-02\n"));
    }
    s
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn blobs_dir(app: &TestApp) -> PathBuf {
    app.data_dir().join("blobs")
}

/// The names of the files in the app's blob directory.
fn blob_files(app: &TestApp) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(blobs_dir(app))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn partial_files(app: &TestApp) -> Vec<String> {
    blob_files(app)
        .into_iter()
        .filter(|n| n.ends_with(".part"))
        .collect()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Opens a connection and sends the request head of a raw-body upload that announces
/// `length` bytes.
async fn raw_upload(app: &TestApp, path: &str, content_type: &str, length: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr(app)).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n",
        addr(app)
    );
    s.write_all(head.as_bytes()).await.expect("send head");
    s
}

/// Reads until the server closes the connection or `limit` passes; the bytes read.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app(AppOptions {
        workers: 0,
        extra_args: args(&["--header-timeout", "1s"]),
        ..AppOptions::default()
    });
    // A long response (an event stream) is not cut by the header timeout.
    let mut events = SseReader::new(app.events("/api/v1/events", None).await);
    let ready = events.next(Duration::from_secs(10)).await.expect("ready");
    assert_eq!(ready.event, "ready");
    // Half a request head, then nothing.
    let start = Instant::now();
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(b"POST /api/v1/import/products HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(15))
        .await
        .expect("the server should have closed the connection");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the header timeout"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains(" 2"),
        "no request may have been served: {got:?}"
    );
    // A connection that sends nothing at all is closed too.
    let start = Instant::now();
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    read_until_closed(&mut idle, Duration::from_secs(15))
        .await
        .expect("an idle connection should have been closed");
    assert!(start.elapsed() >= Duration::from_millis(900));
    // A complete request on a fresh connection is still served, and the event stream, open
    // for more than twice the header timeout by now, still delivers.
    let (code, body) = app
        .upload_bytes("products", "a.csv", csv(2).into_bytes(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let event = events.next(Duration::from_secs(10)).await;
    assert!(event.is_some(), "the event stream ended");
}

/// Sends `prefix` at once, then one byte of `trickle` every 200 ms, until the server answers;
/// returns the answer and how long it took.
async fn trickle(mut s: TcpStream, prefix: &[u8], app: &TestApp) -> (String, Duration) {
    let start = Instant::now();
    s.write_all(prefix).await.unwrap();
    // The upload is being written: its partial file exists.
    until(Duration::from_secs(10), "the partial upload file", || {
        !partial_files(app).is_empty()
    })
    .await;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        for b in CSV_HEADER.bytes().cycle().take(2000) {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got)).await;
    writer.abort();
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

async fn a_trickling_body_is_cut_off_and_its_partial_file_removed(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        extra_args: args(&["--min-body-rate", "100", "--body-rate-window", "1s"]),
        ..AppOptions::default()
    });
    // A raw-body upload: 5 bytes per second where 100 are needed.
    let s = raw_upload(
        &app,
        "/api/v1/import/products?filename=a.csv",
        "text/csv",
        100_000,
    )
    .await;
    let (answer, took) = trickle(s, CSV_HEADER.as_bytes(), &app).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer}");
    assert!(answer.contains("\"body_timeout\""), "answer: {answer}");
    assert!(took >= Duration::from_secs(1), "cut off after {took:?}");
    assert_eq!(partial_files(&app), Vec::<String>::new());
    assert_eq!(app.blob_count(), 0, "files: {:?}", blob_files(&app));

    // The preview shares the rule, through its multipart parser.
    let boundary = "sluiceboundary";
    let s = raw_upload(
        &app,
        "/api/v1/import/products/preview",
        &format!("multipart/form-data; boundary={boundary}"),
        100_000,
    )
    .await;
    let prefix = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\
         Content-Type: text/csv\r\n\r\n{CSV_HEADER}"
    );
    let (answer, _) = trickle(s, prefix.as_bytes(), &app).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer}");
    assert!(answer.contains("\"body_timeout\""), "answer: {answer}");
    assert_eq!(app.blob_count(), 0, "files: {:?}", blob_files(&app));
    // A normal upload still goes through.
    let (code, body) = app
        .upload_bytes("products", "ok.csv", csv(3).into_bytes(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
}

#[tokio::test]
async fn a_tokens_upload_beyond_its_cap_gets_429_with_retry_after() {
    let app = spawn_app(AppOptions {
        workers: 0,
        extra_args: args(&["--max-uploads-per-token", "2", "--min-body-rate", "0"]),
        ..AppOptions::default()
    });
    // Two uploads held open mid-body.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = raw_upload(
            &app,
            "/api/v1/import/products?filename=a.csv",
            "text/csv",
            1_000_000,
        )
        .await;
        s.write_all(CSV_HEADER.as_bytes()).await.unwrap();
        held.push(s);
    }
    until(Duration::from_secs(10), "two uploads in progress", || {
        partial_files(&app).len() == 2
    })
    .await;
    let resp = app
        .post("/api/v1/import/products?filename=b.csv")
        .header("content-type", "text/csv")
        .body(csv(2))
        .send()
        .await
        .unwrap();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(seconds >= 1);
    // Other requests of the token are not refused.
    assert_eq!(app.get_json("/api/v1/import/jobs").await.0, 200);
    // One held upload goes away: its slot is given back.
    drop(held.pop());
    until(
        Duration::from_secs(10),
        "the abandoned upload's file to go",
        || partial_files(&app).len() == 1,
    )
    .await;
    // The slot is given back as the abandoned request ends, just after its file goes.
    let start = Instant::now();
    loop {
        let (code, body) = app
            .upload_bytes("products", "c.csv", csv(2).into_bytes(), &[])
            .await;
        if code == 429 && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!(code, 202, "{body}");
        break;
    }
}

async fn an_upload_larger_than_the_free_disk_gets_507_and_leaves_nothing(backend: Backend) {
    let mut app = spawn_app(AppOptions {
        backend,
        workers: 1,
        ..AppOptions::default()
    });
    // The data directory (database, blobs, spool) becomes a 12 MB disk.
    app.kill();
    let Some(_disk) = Tmpfs::mount(&app.data_dir(), 12) else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping the disk-full test: cannot mount a tmpfs"
        );
        return;
    };
    app.start();
    let big = csv(400_000); // about 17 MB
    assert!(big.len() > 12 * 1024 * 1024);
    let (code, body) = app
        .upload_bytes("products", "big.csv", big.into_bytes(), &[])
        .await;
    assert_eq!(code, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(
        blob_files(&app),
        Vec::<String>::new(),
        "nothing half-written stays"
    );
    assert_eq!(app.blob_count(), 0);
    assert_eq!(app.db().number("SELECT count(*) FROM jobs"), 0);
    // The room is back: a small upload is stored and imported.
    let (code, body) = app
        .upload_bytes("products", "small.csv", csv(5).into_bytes(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let done = app.wait_done(job_id(&body), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["results"]["successCount"], 5, "{done}");
}

async fn an_upload_answered_503_after_storing_its_file_leaves_no_blob(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        extra_args: args(&["--busy-timeout-ms", "200"]),
        ..AppOptions::default()
    });
    // Another writer holds the jobs table: the upload is stored, then its job cannot be inserted.
    let mut holder = app.db();
    match backend {
        Backend::Sqlite => holder.execute("BEGIN IMMEDIATE"),
        Backend::Postgres => holder.execute("BEGIN; LOCK TABLE jobs IN EXCLUSIVE MODE"),
    }
    let (code, body) = app
        .upload_bytes("products", "a.csv", csv(5).into_bytes(), &[])
        .await;
    assert_eq!(code, 503, "{body}");
    until(
        Duration::from_secs(15),
        "the refused upload's blob to go",
        || app.blob_count() == 0,
    )
    .await;
    holder.execute("COMMIT");
    let (code, body) = app
        .upload_bytes("products", "a.csv", csv(5).into_bytes(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(app.blob_count(), 1);
}

fn age(path: &Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

async fn files_a_killed_server_left_are_removed_at_the_next_start(backend: Backend) {
    let mut app = spawn_app(AppOptions {
        backend,
        workers: 1,
        ..AppOptions::default()
    });
    // A finished job, whose file must stay (it may be retried until --retain-files).
    let (code, body) = app
        .upload_bytes("products", "done.csv", csv(5).into_bytes(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let done = app.wait_done(job_id(&body), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let job_blob = app.db().value("SELECT blob FROM jobs").expect("blob");
    assert_eq!(app.blob_count(), 1, "files: {:?}", blob_files(&app));

    // Unreferenced finished blobs: one older than the grace period, one within it.
    let dir = blobs_dir(&app);
    let old = format!("{}.upload", "a".repeat(32));
    let fresh = format!("{}.upload", "b".repeat(32));
    std::fs::write(dir.join(&old), csv(1)).unwrap();
    age(&dir.join(&old), Duration::from_secs(7200));
    std::fs::write(dir.join(&fresh), csv(1)).unwrap();
    if backend == Backend::Postgres {
        // A stored upload that no job references, stored two hours ago.
        app.db().execute(&format!(
            "INSERT INTO blob_chunks (blob, seq, data, created_at) \
             VALUES ('{}.upload', 0, '\\x00', now() - interval '2 hours')",
            "c".repeat(32)
        ));
    }

    // An upload in flight when the server is killed.
    let mut s = raw_upload(
        &app,
        "/api/v1/import/products?filename=big.csv",
        "text/csv",
        10_000_000,
    )
    .await;
    s.write_all(csv(1000).as_bytes()).await.unwrap();
    until(Duration::from_secs(10), "the upload's partial file", || {
        partial_files(&app).len() == 1
    })
    .await;
    app.kill();
    drop(s);
    let partial = partial_files(&app)
        .pop()
        .expect("the partial file outlives the server");
    // A worker's local copy by the same (now dead) process.
    let owner = partial
        .split('.')
        .find(|p| p.starts_with('p'))
        .expect("owner tag");
    let copy = format!("{job_blob}.{owner}.{}.copy", "d".repeat(32));
    std::fs::write(dir.join(&copy), b"").unwrap();
    // An upload's spool the dead process kept for its workers.
    let kept = format!("{}.upload.{owner}.kept", "e".repeat(32));
    std::fs::write(dir.join(&kept), csv(1)).unwrap();

    app.start();
    let left = blob_files(&app);
    assert!(!left.contains(&partial), "partial upload left: {left:?}");
    assert!(!left.contains(&copy), "dead worker's copy left: {left:?}");
    assert!(
        !left.contains(&kept),
        "dead server's kept upload left: {left:?}"
    );
    assert!(!left.contains(&old), "old unreferenced blob left: {left:?}");
    assert!(
        left.contains(&fresh),
        "a blob within the grace period was removed: {left:?}"
    );
    let mut db = app.db();
    match backend {
        Backend::Sqlite => assert!(left.contains(&job_blob), "the job's file was removed"),
        Backend::Postgres => {
            assert_eq!(
                db.number(&format!(
                    "SELECT count(*) FROM blob_chunks WHERE blob = '{job_blob}'"
                )),
                1,
                "the job's stored file was removed"
            );
            assert_eq!(
                db.number("SELECT count(DISTINCT blob) FROM blob_chunks"),
                1,
                "the unreferenced stored blob is still there"
            );
        }
    }
    // The job's file is whole.
    let size = match backend {
        Backend::Sqlite => std::fs::metadata(dir.join(&job_blob)).unwrap().len() as i64,
        Backend::Postgres => db.number(&format!(
            "SELECT sum(length(data)) FROM blob_chunks WHERE blob = '{job_blob}'"
        )),
    };
    assert_eq!(size, csv(5).len() as i64);
}

async fn an_upload_whose_client_leaves_during_the_job_insert_keeps_the_jobs_file(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 1,
        extra_args: args(&["--busy-timeout-ms", "20000"]),
        ..AppOptions::default()
    });
    let mut holder = app.db();
    match backend {
        Backend::Sqlite => holder.execute("BEGIN IMMEDIATE"),
        Backend::Postgres => holder.execute("BEGIN; LOCK TABLE jobs IN EXCLUSIVE MODE"),
    }
    // The upload is stored, then waits for the jobs table; its client gives up meanwhile.
    let mut s = raw_upload(
        &app,
        "/api/v1/import/products?filename=a.csv",
        "text/csv",
        csv(5).len(),
    )
    .await;
    s.write_all(csv(5).as_bytes()).await.unwrap();
    // Stored whole, so the body has been read: the file appears as soon as the upload starts,
    // and a client leaving before its body is read aborts the upload (CI saw that once).
    let whole = csv(5).len() as u64;
    until(
        Duration::from_secs(10),
        "the upload to be stored whole",
        || app.blob_count() == 1 && app.blob_bytes() == whole,
    )
    .await;
    drop(s);
    // The server notices the closed connection at its next read; nothing to poll for that.
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.execute("COMMIT");
    // The insert that was waiting commits: the job must find its file.
    let mut db = app.db();
    let start = Instant::now();
    let job = loop {
        if let Some(id) = db.value("SELECT id FROM jobs") {
            break id.parse::<i64>().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no job was created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done = app.wait_done(job, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["results"]["successCount"], 5, "{done}");
}

/// In database mode an upload is stored in pieces while it arrives: the job's stored file is
/// the upload byte for byte, and a client that leaves in the middle takes the pieces stored so
/// far along (locally: its partial file).
async fn an_upload_stored_while_it_arrives_is_whole_and_one_cut_off_leaves_nothing(
    backend: Backend,
) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        ..AppOptions::default()
    });
    let body = csv(120_000);
    assert!(body.len() > 4 << 20, "{}", body.len());
    let (code, answer) = app
        .upload_bytes("products", "big.csv", body.clone().into_bytes(), &[])
        .await;
    assert_eq!(code, 202, "{answer}");
    let job = job_id(&answer);
    let mut db = app.db();
    let blob = db
        .value(&format!("SELECT blob FROM jobs WHERE id = {job}"))
        .expect("blob");
    let sha = db
        .value(&format!("SELECT sha256 FROM jobs WHERE id = {job}"))
        .expect("sha256");
    if backend == Backend::Postgres {
        let pieces = db.number(&format!(
            "SELECT count(*) FROM blob_chunks WHERE blob = '{blob}'"
        ));
        assert_eq!(pieces as usize, body.len().div_ceil(1 << 20));
        let stored = db.value(&format!(
            "SELECT encode(sha256(string_agg(data, ''::bytea ORDER BY seq)), 'hex') \
             FROM blob_chunks WHERE blob = '{blob}'"
        ));
        assert_eq!(
            stored.as_deref(),
            Some(sha.as_str()),
            "the stored file differs"
        );
        assert!(blob_files(&app).is_empty(), "{:?}", blob_files(&app));
    }
    assert_eq!(app.blob_count(), 1);

    // A client that leaves after 3 MB of a 10 MB upload.
    let mut s = raw_upload(
        &app,
        "/api/v1/import/products?filename=left.csv",
        "text/csv",
        10_000_000,
    )
    .await;
    s.write_all(&body.as_bytes()[..3_000_000]).await.unwrap();
    // Its partial file, and in database mode its stored pieces as a second stored file.
    let arriving = match backend {
        Backend::Sqlite => 2,
        Backend::Postgres => 3,
    };
    until(
        Duration::from_secs(10),
        "the arriving upload's pieces",
        || app.blob_count() == arriving,
    )
    .await;
    drop(s);
    until(
        Duration::from_secs(15),
        "the abandoned upload's pieces and partial file to go",
        || app.blob_count() == 1,
    )
    .await;
}

/// Database mode: a database that stops taking an upload's pieces while it arrives answers the
/// client 503 (the rest of its body is read and dropped, so the answer arrives), and nothing of
/// the upload is kept. (Locally there are no pieces: the SQLite half only checks the upload.)
async fn an_upload_whose_pieces_the_database_refuses_gets_503_and_leaves_nothing(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        extra_args: args(&["--busy-timeout-ms", "300"]),
        ..AppOptions::default()
    });
    let mut holder = app.db();
    if backend == Backend::Postgres {
        holder.execute("BEGIN; LOCK TABLE blob_chunks IN ACCESS EXCLUSIVE MODE");
    }
    // A plain client that sends its whole body before it reads the answer; more than the
    // sockets' buffers hold, so the rest must be read by the server.
    let body = csv(1_000_000);
    let mut s = raw_upload(
        &app,
        "/api/v1/import/products?filename=big.csv",
        "text/csv",
        body.len(),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), s.write_all(body.as_bytes()))
        .await
        .expect("the server reads the whole body")
        .expect("the body is sent");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\"success\"") {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(
            n > 0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    let expected = match backend {
        Backend::Sqlite => "HTTP/1.1 202",
        Backend::Postgres => "HTTP/1.1 503",
    };
    assert!(answer.starts_with(expected), "{answer}");
    if backend == Backend::Sqlite {
        return;
    }
    assert!(answer.contains("\"code\":\"unavailable\""), "{answer}");
    holder.execute("COMMIT");
    until(
        Duration::from_secs(15),
        "the refused upload's pieces and spool to go",
        || app.blob_count() == 0,
    )
    .await;
    assert_eq!(app.db().number("SELECT count(*) FROM jobs"), 0);
}

/// In database mode a server that runs workers keeps an upload's spool after storing it, and
/// the worker that takes the job runs on it instead of fetching the stored file again; the
/// kept file goes with the run. On SQLite the upload is the file: nothing is kept.
async fn a_job_runs_on_the_upload_its_server_kept_and_leaves_no_copy(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let app = spawn_app(AppOptions {
        backend,
        workers: 1,
        log_file: Some(log.clone()),
        ..AppOptions::default()
    });
    let (code, body) = app
        .upload_bytes("products", "kept.csv", csv(2000).into_bytes(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let done = app.wait_done(job_id(&body), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["createdCount"], 2000, "{done}");
    let text = std::fs::read_to_string(&log).unwrap();
    let used = text.contains("running on the upload this process kept");
    assert_eq!(used, backend == Backend::Postgres, "{text}");
    let left: Vec<String> = blob_files(&app)
        .into_iter()
        .filter(|n| n.ends_with(".kept") || n.ends_with(".copy"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

conformance!(
    a_job_runs_on_the_upload_its_server_kept_and_leaves_no_copy,
    an_upload_whose_pieces_the_database_refuses_gets_503_and_leaves_nothing,
    an_upload_stored_while_it_arrives_is_whole_and_one_cut_off_leaves_nothing,
    a_trickling_body_is_cut_off_and_its_partial_file_removed,
    an_upload_larger_than_the_free_disk_gets_507_and_leaves_nothing,
    an_upload_answered_503_after_storing_its_file_leaves_no_blob,
    files_a_killed_server_left_are_removed_at_the_next_start,
    an_upload_whose_client_leaves_during_the_job_insert_keeps_the_jobs_file,
);
