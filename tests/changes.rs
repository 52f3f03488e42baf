//! The change ledger and its feed (issue 16) through the real server, on SQLite and on
//! PostgreSQL: every row an import creates or updates is one entry, written with its batch;
//! `GET /api/v1/datasets/{dataset}/changes` hands them out once each, in commit order, to the
//! organisation that owns them only; a job's status names its cursor range; an unchanged row
//! writes nothing; and a reader paging through the feed while chunk jobs commit side by side
//! (PostgreSQL) or batches commit one after another (SQLite) sees every change exactly once.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// One page of the feed as `token` sees it.
async fn page(app: &TestApp, token: &str, query: &str) -> (u16, Value) {
    let resp = app
        .http
        .get(app.url(&format!("/api/v1/datasets/products/changes?{query}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("changes");
    json_of(resp).await
}

/// Every change after `after`, read in pages of `limit`; checks the cursors increase.
async fn read_all(app: &TestApp, token: &str, after: i64, limit: u64) -> (Vec<Value>, i64) {
    let (mut after, mut all) = (after, Vec::new());
    loop {
        let (code, body) = page(app, token, &format!("after={after}&limit={limit}")).await;
        assert_eq!(code, 200, "{body}");
        let data = &body["data"];
        let changes = data["changes"].as_array().unwrap();
        assert!(changes.len() as u64 <= limit);
        for c in changes {
            let cursor = c["cursor"].as_i64().unwrap();
            assert!(cursor > after, "cursor {cursor} after {after}");
            after = cursor;
            all.push(c.clone());
        }
        assert_eq!(data["next"].as_i64().unwrap(), after, "{data}");
        if !data["hasMore"].as_bool().unwrap() {
            return (all, after);
        }
    }
}

fn sku(change: &Value) -> String {
    change["key"]["sku"].as_str().unwrap().to_string()
}

async fn import(app: &TestApp, file: &std::path::Path) -> Value {
    let (code, body) = app.upload("products", file).await;
    assert_eq!(code, 202, "{body}");
    let status = app.wait_done(job_id(&body), Duration::from_secs(120)).await;
    assert_eq!(status["status"], "completed", "{status}");
    status
}

fn n(status: &Value, key: &str) -> u64 {
    status[key].as_u64().unwrap()
}

async fn every_created_and_updated_row_is_one_change_in_commit_order(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 500,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    // B overlaps the second half of A's keys with other values, and adds as many new keys.
    let (a, _) = generate(
        dir.path(),
        "a.csv",
        &["--rows", "3000", "--seed", "1", "--error-rate", "0.02"],
    );
    let (b, _) = generate(
        dir.path(),
        "b.csv",
        &["--rows", "3000", "--seed", "2", "--start-sku", "1501"],
    );
    let sa = import(&app, &a).await;
    let (after_a, _) = read_all(&app, TOKEN, 0, 700).await;
    let sb = import(&app, &b).await;
    assert!(n(&sb, "updatedCount") > 1000, "{sb}");
    assert!(n(&sb, "createdCount") > 1000, "{sb}");

    let (all, last) = read_all(&app, TOKEN, 0, 700).await;
    let (ja, jb) = (sa["jobId"].as_i64().unwrap(), sb["jobId"].as_i64().unwrap());
    let of = |job: i64, op: &str| {
        all.iter()
            .filter(|c| c["jobId"] == job && c["op"] == op)
            .count() as u64
    };
    assert_eq!(of(ja, "created"), n(&sa, "createdCount"));
    assert_eq!(of(ja, "updated"), n(&sa, "updatedCount"));
    assert_eq!(of(jb, "created"), n(&sb, "createdCount"));
    assert_eq!(of(jb, "updated"), n(&sb, "updatedCount"));
    assert_eq!(
        all.len() as u64,
        n(&sa, "createdCount") + n(&sb, "createdCount") + n(&sb, "updatedCount")
    );
    // A's changes all come before B's: commit order.
    let first_b = all.iter().position(|c| c["jobId"] == jb).unwrap();
    assert!(all[first_b..].iter().all(|c| c["jobId"] == jb));

    // A feed gives a row's values as they are now: B wrote last, so every change — A's to the
    // keys B updated included — shows the table's values, field by field; A's changes read
    // before B showed A's.
    let table: HashMap<String, Vec<Option<String>>> = app
        .db()
        .rows("SELECT sku, name, category, price, stock, updated_at FROM products")
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r))
        .collect();
    for c in &all {
        let row = &table[&sku(c)];
        let v = &c["values"];
        assert_eq!(v["sku"], c["key"]["sku"]);
        assert_eq!(v["name"].as_str(), row[1].as_deref(), "{c}");
        let price = v["price"].as_str().map(|p| p.parse::<f64>().unwrap());
        assert_eq!(
            price,
            row[3].as_deref().map(|p| p.parse::<f64>().unwrap()),
            "{c}"
        );
        assert_eq!(
            v["stock"].as_i64(),
            row[4].as_deref().map(|s| s.parse().unwrap()),
            "{c}"
        );
        assert_eq!(v["updated_at"].as_str(), row[5].as_deref(), "{c}");
    }

    // An update's ledger entry keeps the values it replaced: A's, as the feed gave them then.
    let by_a: HashMap<String, &Value> = after_a.iter().map(|c| (sku(c), c)).collect();
    let olds = app.db().rows(&format!(
        "SELECT key, old FROM ledger WHERE job_id = {jb} AND op = 'updated'"
    ));
    assert_eq!(olds.len() as u64, n(&sb, "updatedCount"));
    for row in olds {
        let key: Value = serde_json::from_str(row[0].as_deref().unwrap()).unwrap();
        let old: Value = serde_json::from_str(row[1].as_deref().unwrap()).unwrap();
        let before = &by_a[key["sku"].as_str().unwrap()]["values"];
        for field in ["name", "category", "price", "stock", "updated_at"] {
            assert_eq!(old[field], before[field], "{field} of {key}");
        }
    }

    // The status names B's cursor range: reading from `after` gives exactly B's changes.
    let range = &app.status(jb).await["changes"];
    let (after, to) = (
        range["after"].as_i64().unwrap(),
        range["last"].as_i64().unwrap(),
    );
    assert_eq!(to, last);
    let (of_b, _) = read_all(&app, TOKEN, after, 5000).await;
    assert_eq!(of_b.len(), all.len() - first_b);
    assert!(of_b.iter().all(|c| c["jobId"] == jb));

    // B again: every row unchanged, no entry, the feed where it was.
    let again = import(&app, &b).await;
    assert_eq!(
        n(&again, "unchangedCount"),
        n(&sb, "createdCount") + n(&sb, "updatedCount")
    );
    assert!(again.get("changes").is_none(), "{again}");
    let (code, body) = page(&app, TOKEN, &format!("after={last}")).await;
    assert_eq!(code, 200);
    assert_eq!(body["data"]["changes"], serde_json::json!([]));
    assert_eq!(body["data"]["next"], last);

    // Another organisation's token sees none of it; its own import is its own feed.
    let (_, other) = org_with_admin(&app, "other");
    let (code, body) = page(&app, &other, "after=0").await;
    assert_eq!(code, 200);
    assert_eq!(body["data"]["changes"], serde_json::json!([]), "{body}");

    // Its import lies in the ledger between two of ours; each feed reads its own, page by page
    // (pages that start and end inside a batch's entries).
    let text = std::fs::read_to_string(&a).unwrap();
    let (code, body) = app
        .upload_text_as(&other, "/api/v1/import/products", "o.csv", &text, &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let so = app.wait_done_as(&other, job_id(&body)).await;
    assert_eq!(so["status"], "completed", "{so}");
    let (c, _) = generate(
        dir.path(),
        "c.csv",
        &["--rows", "1000", "--seed", "3", "--start-sku", "9001"],
    );
    let sc = import(&app, &c).await;
    if backend == Backend::Postgres {
        // The writer summarised the BRIN block ranges its batches appended (a VACUUM meanwhile
        // summarises all but the last, partial one), so reads need not scan them whole.
        let left = app
            .db()
            .number("SELECT brin_summarize_new_values('ledger_seq')");
        assert!(
            left <= 1,
            "{left} block ranges of the ledger were not summarised"
        );
    }
    let (theirs, _) = read_all(&app, &other, 0, 333).await;
    assert_eq!(theirs.len() as u64, n(&so, "createdCount"));
    assert!(theirs.iter().all(|c| c["jobId"] == so["jobId"]));
    let (ours, _) = read_all(&app, TOKEN, last, 333).await;
    assert_eq!(ours.len() as u64, n(&sc, "createdCount"));
    assert!(ours.iter().all(|c| c["jobId"] == sc["jobId"]));
    let (c_after, c_last) = (
        sc["changes"]["after"].as_i64().unwrap(),
        sc["changes"]["last"].as_i64().unwrap(),
    );
    assert!(c_after > last, "{sc}");
    assert_eq!(c_last, ours.last().unwrap()["cursor"].as_i64().unwrap());

    // Bad parameters and an unknown dataset.
    for query in ["after=-1", "after=x", "limit=0", "limit=10001", "wait=soon"] {
        let (code, body) = page(&app, TOKEN, query).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{query}");
    }
    let (code, _) = app.get_json("/api/v1/datasets/nope/changes").await;
    assert_eq!(code, 404);
    app.assert_ledger_ranges_exact();
}

async fn a_reader_following_the_feed_during_an_import_sees_each_change_once(backend: Backend) {
    // On PostgreSQL the file is split into chunk jobs that commit side by side.
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 200,
        workers: 4,
        extra_args: ["--chunk-rows", "2000", "--max-chunks", "4"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = generate(dir.path(), "f.csv", &["--rows", "12000", "--seed", "3"]);

    // A long poll started before anything exists answers when the first batch commits.
    let waiting = {
        let url = app.url("/api/v1/datasets/products/changes?after=0&limit=50&wait=60s");
        let http = app.http.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = http.get(url).bearer_auth(TOKEN).send().await.unwrap();
            (json_of(resp).await, started.elapsed())
        })
    };
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);

    let ((code, first), waited) = waiting.await.unwrap();
    assert_eq!(code, 200, "{first}");
    assert!(!first["data"]["changes"].as_array().unwrap().is_empty());
    assert!(waited < Duration::from_secs(60), "{waited:?}");

    // Follow in small pages while the job runs, then read to the end once it is done.
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut keys = HashSet::new();
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = matches!(
            app.status(job).await["status"].as_str(),
            Some("completed" | "failed")
        );
        let (code, body) = page(&app, TOKEN, &format!("after={after}&limit=150&wait=1s")).await;
        assert_eq!(code, 200, "{body}");
        let changes = body["data"]["changes"].as_array().unwrap();
        for c in changes {
            let cursor = c["cursor"].as_i64().unwrap();
            assert!(cursor > after, "cursor {cursor} after {after}");
            after = cursor;
            assert!(keys.insert(sku(c)), "{} twice", sku(c));
            seen.insert(cursor, sku(c));
        }
        if done && changes.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the feed did not reach the job's end"
        );
    }
    let status = app.status(job).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(seen.len() as u64, n(&status, "createdCount"));
    if backend == Backend::Postgres {
        assert!(status["chunks"]["total"].as_u64().unwrap() > 1, "{status}");
    }
    // And a reader starting over from 0 now gets the same changes in the same order.
    let (again, _) = read_all(&app, TOKEN, 0, 1000).await;
    let again: BTreeMap<i64, String> = again
        .iter()
        .map(|c| (c["cursor"].as_i64().unwrap(), sku(c)))
        .collect();
    assert_eq!(again, seen);
    app.assert_ledger_ranges_exact();
}

/// The ordering rule itself, on PostgreSQL: a transaction that wrote a ledger entry and has not
/// committed (here the test's own, holding the ledger lock as a batch does) keeps every later
/// batch's entries from committing before it, so a reader that has read past nothing of it yet
/// cannot step over its entry. Without the writers' lock, the import commits entries with higher
/// cursors meanwhile, the reader moves past the open entry's cursor, and never sees it.
#[tokio::test]
async fn postgres_an_entry_committing_late_is_not_stepped_over() {
    if !postgres_wanted() {
        return;
    }
    let app = spawn_app(AppOptions {
        backend: Backend::Postgres,
        batch_size: 200,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = generate(dir.path(), "f.csv", &["--rows", "1000", "--seed", "4"]);
    let org = app.db().number("SELECT min(id) FROM orgs");

    // An open transaction with one entry, holding the ledger lock as a batch does.
    let url = app.database_url().unwrap();
    let (hold, held) = std::sync::mpsc::channel::<()>();
    let (opened, open) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&sluice::store::ledger::LEDGER_LOCK],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO ledger (org_id, dataset, job_id, op, key) \
             VALUES ($1, 'products', 0, 'created', '{\"sku\":\"LATE\"}')",
            &[&org],
        )
        .unwrap();
        // And its range, as every writer of entries records it (migration 0021).
        tx.execute(
            "INSERT INTO ledger_ranges (org_id, dataset, job_id, first_seq, last_seq, at) \
             SELECT $1, 'products', 0, s, s, now() \
             FROM currval(pg_get_serial_sequence('ledger', 'seq')) s",
            &[&org],
        )
        .unwrap();
        opened.send(()).unwrap();
        held.recv().unwrap();
        tx.commit().unwrap();
    });
    open.recv().unwrap();
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    // Until the import waits behind the held lock, or (were the writers not to take it) is done.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let waiting = app
            .db()
            .number("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted");
        let status = app.status(job).await;
        if waiting > 0 || status["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (before, next) = read_all(&app, TOKEN, 0, 1000).await;
    hold.send(()).unwrap();
    holder.join().unwrap();
    let status = app.wait_done(job, Duration::from_secs(120)).await;
    assert_eq!(status["status"], "completed", "{status}");
    let (after, _) = read_all(&app, TOKEN, next, 1000).await;
    let skus: Vec<String> = before.iter().chain(&after).map(sku).collect();
    assert_eq!(
        skus.iter().filter(|s| *s == "LATE").count(),
        1,
        "the entry that committed late was stepped over"
    );
    assert_eq!(skus.len() as u64, n(&status, "createdCount") + 1);
}

/// Runs the search-index recipe once (`--once --out`): what it would send, appended to `out`.
fn recipe(app: &TestApp, state: &std::path::Path, out: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/search-index/follow_changes.py");
    let run = std::process::Command::new("python3")
        .arg(script)
        .args([
            "--server",
            &app.base,
            "--token",
            TOKEN,
            "--dataset",
            "products",
        ])
        .args(["--limit", "400", "--once"])
        .arg("--state")
        .arg(state)
        .arg("--out")
        .arg(out)
        .output()
        .expect("python3");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The documented consumer (`examples/search-index/follow_changes.py`) and `sluice changes`
/// against the real feed: one document per change with the row's values, the cursor remembered
/// between runs so a second run sends only what came since.
#[tokio::test]
async fn the_search_index_recipe_and_the_cli_follow_the_feed() {
    let app = spawn_app(AppOptions {
        batch_size: 300,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = generate(dir.path(), "a.csv", &["--rows", "1000", "--seed", "5"]);
    let (b, _) = generate(
        dir.path(),
        "b.csv",
        &["--rows", "1000", "--seed", "6", "--start-sku", "801"],
    );
    let (state, out) = (dir.path().join("cursor"), dir.path().join("sent.jsonl"));

    let sa = import(&app, &a).await;
    recipe(&app, &state, &out);
    let sent = lines(&out);
    assert_eq!(sent.len() as u64, n(&sa, "createdCount"));
    let (all, last) = read_all(&app, TOKEN, 0, 5000).await;
    for (doc, change) in sent.iter().zip(&all) {
        assert_eq!(doc["id"].as_str().unwrap(), sku(change));
        let mut values = change["values"].clone();
        values["id"] = doc["id"].clone();
        assert_eq!(doc, &values);
    }
    assert_eq!(
        std::fs::read_to_string(&state).unwrap().trim(),
        last.to_string()
    );

    // Only B's changes the second time.
    let sb = import(&app, &b).await;
    recipe(&app, &state, &out);
    let sent = lines(&out);
    let of_b = n(&sb, "createdCount") + n(&sb, "updatedCount");
    assert_eq!(sent.len() as u64, n(&sa, "createdCount") + of_b);
    let b_skus: HashSet<String> = sent[all.len()..]
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(b_skus.len() as u64, of_b);
    recipe(&app, &state, &out);
    assert_eq!(lines(&out).len(), sent.len(), "nothing new, nothing sent");

    // The CLI prints the same changes as JSON lines and says where to resume.
    let (stdout, stderr) = sluice_client(&app, &["changes", "products", "--limit", "333"]);
    let printed: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (every, end) = read_all(&app, TOKEN, 0, 5000).await;
    assert_eq!(printed, every);
    assert!(stderr.contains(&format!("next cursor: {end}")), "{stderr}");
    let (stdout, _) = sluice_client(&app, &["changes", "products", "--after", &last.to_string()]);
    assert_eq!(stdout.lines().count() as u64, of_b);
}

/// `--retain-ledger`: the sweeper removes entries older than it, and a job whose changes are
/// gone cannot be rolled back (409 `ledger_expired`) instead of "completing" without undoing.
#[tokio::test]
async fn the_ledger_is_swept_after_its_retention_and_a_rollback_then_refused() {
    let app = spawn_app(AppOptions {
        extra_args: ["--retain-ledger", "2s"].map(String::from).to_vec(),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = generate(dir.path(), "f.csv", &["--rows", "500", "--seed", "9"]);
    let status = import(&app, &file).await;
    let job = status["jobId"].as_i64().unwrap();
    assert!(status["changes"]["last"].as_i64().unwrap() > 0, "{status}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (changes, _) = read_all(&app, TOKEN, 0, 1000).await;
        if changes.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the ledger was not swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(app.status(job).await.get("changes").is_none());
    let resp = app
        .http
        .post(app.url(&format!("/api/v1/import/{job}/rollback")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "ledger_expired");
}

/// A batch's entries are swept together with their range, even when their own times straddle
/// the retention (a replace's created and updated entries carry their rows' times, earliest in
/// the range): no entry is left that no range finds, which the feed would silently skip.
async fn a_range_is_swept_with_all_its_entries(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        extra_args: ["--retain-ledger", "20s"].map(String::from).to_vec(),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = generate(dir.path(), "a.csv", &["--rows", "400", "--seed", "3"]);
    let (b, _) = generate(
        dir.path(),
        "b.csv",
        &["--rows", "300", "--seed", "4", "--start-sku", "9001"],
    );
    let ja = import(&app, &a).await["jobId"].as_i64().unwrap();
    let jb = import(&app, &b).await["jobId"].as_i64().unwrap();
    // A's one range and its first 100 entries are a day old, its other entries a day ahead;
    // all of B is a day ahead, so only A's range is ever due. Written in one transaction,
    // well before the imports are 20 s old (the sweeper looks every 5 s).
    let (old, ahead) = ("2000-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z");
    let mut db = app.db();
    db.execute(&format!(
        "BEGIN; \
         UPDATE ledger SET at = '{ahead}' WHERE job_id IN ({ja}, {jb}); \
         UPDATE ledger_ranges SET at = '{ahead}' WHERE job_id = {jb}; \
         UPDATE ledger_ranges SET at = '{old}' WHERE job_id = {ja}; \
         UPDATE ledger SET at = '{old}' WHERE job_id = {ja} AND seq < \
           (SELECT min(seq) + 100 FROM ledger WHERE job_id = {ja}); \
         COMMIT;"
    ));
    let left = |db: &mut Db, job: i64| {
        db.number(&format!("SELECT count(*) FROM ledger WHERE job_id = {job}"))
    };
    assert_eq!((left(&mut db, ja), left(&mut db, jb)), (400, 300));
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.number("SELECT count(*) FROM ledger_ranges") > 1 {
        assert!(Instant::now() < deadline, "A's range was not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (left(&mut db, ja), left(&mut db, jb)),
        (0, 300),
        "A's entries went with its range, every one; B's stay"
    );
    app.assert_ledger_ranges_exact();
    let (changes, _) = read_all(&app, TOKEN, 0, 1000).await;
    assert_eq!(changes.len(), 300);
    assert!(changes.iter().all(|c| c["jobId"] == jb));
}

/// Runs a client command of the CLI against the app with the admin token.
fn sluice_client(app: &TestApp, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(binary())
        .args(args)
        .args(["--server", &app.base, "--token", TOKEN])
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

conformance!(
    a_range_is_swept_with_all_its_entries,
    every_created_and_updated_row_is_one_change_in_commit_order,
    a_reader_following_the_feed_during_an_import_sees_each_change_once,
);
