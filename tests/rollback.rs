//! Rollback of imports from the change ledger (issue 16) through the real server, on SQLite and
//! on PostgreSQL: import A, import B over half of A's keys with new values (history fields
//! changed) and new keys, roll B back → the table equals the table after A, every row and field,
//! and the history shows B's changes and their reversal; the rollback rolled back → the table
//! after B; a later import C over some of B's keys → exactly C's changes are conflicts (row
//! errors naming C), everything else restored, and `force=true` restores those too; the
//! refusals (twice, not finished, another organisation); a replace import ledgered at its swap
//! and rolled back to the table before it; and a server killed
//! mid-rollback → the same table as an uninterrupted rollback. And `mode=sync`, split into chunk
//! jobs: exactly the keys the file lacks are deleted (a rejected row's key is kept), ledgered,
//! and a rollback brings them back; past `maxDeletePercent` the job fails and deletes nothing.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::*;

type Table = BTreeMap<String, Vec<Option<String>>>;

/// The organisation's rows, data fields only (bookkeeping columns change with every write).
fn table(app: &TestApp, org: i64) -> Table {
    app.db()
        .rows(&format!(
            "SELECT sku, name, category, CAST(price AS TEXT), stock, CAST(updated_at AS TEXT) \
             FROM products WHERE _sluice_org = {org}"
        ))
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1..].to_vec()))
        .map(|(k, mut v)| {
            // The same decimal as SQLite's text and PostgreSQL's NUMERIC(…, 2) print it.
            if let Some(p) = v[2].as_mut() {
                *p = format!("{:.2}", p.parse::<f64>().unwrap());
            }
            (k, v)
        })
        .collect()
}

async fn upload_as(app: &TestApp, token: &str, file: &Path, fields: &[(&str, &str)]) -> i64 {
    let text = std::fs::read_to_string(file).unwrap();
    let (code, body) = app
        .upload_text_as(token, "/api/v1/import/products", "f.csv", &text, fields)
        .await;
    assert_eq!(code, 202, "{body}");
    job_id(&body)
}

async fn import_as(app: &TestApp, token: &str, file: &Path) -> Value {
    let job = upload_as(app, token, file, &[]).await;
    let status = app.wait_done_as(token, job).await;
    assert_eq!(status["status"], "completed", "{status}");
    status
}

/// `POST /api/v1/import/{job}/rollback` with `query`; the answer.
async fn ask_rollback(app: &TestApp, token: &str, job: i64, query: &str) -> (u16, Value) {
    let resp = app
        .http
        .post(app.url(&format!("/api/v1/import/{job}/rollback{query}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("rollback");
    json_of(resp).await
}

async fn rolled_back(app: &TestApp, token: &str, job: i64, query: &str) -> Value {
    let (code, body) = ask_rollback(app, token, job, query).await;
    assert_eq!(code, 202, "{body}");
    let status = app.wait_done_as(token, job_id(&body)).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["kind"], "rollback");
    assert_eq!(status["rollbackOf"], job);
    status
}

async fn metrics_text(app: &TestApp) -> String {
    let resp = app.get("/metrics").send().await.expect("GET /metrics");
    resp.text().await.expect("the metrics text")
}

fn n(status: &Value, key: &str) -> u64 {
    status[key].as_u64().unwrap()
}

fn files(dir: &Path) -> [std::path::PathBuf; 3] {
    let (a, _) = generate(dir, "a.csv", &["--rows", "2000", "--seed", "1"]);
    // Half of A's keys with other values, and 1,000 new keys.
    let (b, _) = generate(
        dir,
        "b.csv",
        &["--rows", "2000", "--seed", "2", "--start-sku", "1001"],
    );
    // Only keys B wrote: 200 it updated, 100 it created.
    let (c, _) = generate(
        dir,
        "c.csv",
        &["--rows", "300", "--seed", "3", "--start-sku", "1801"],
    );
    [a, b, c]
}

async fn a_rollback_restores_the_table_and_can_itself_be_rolled_back(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 400,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let [a, b, _] = files(dir.path());
    let org = app.db().number("SELECT min(id) FROM orgs");

    import_as(&app, TOKEN, &a).await;
    let after_a = table(&app, org);
    let sb = import_as(&app, TOKEN, &b).await;
    let after_b = table(&app, org);
    assert!(
        n(&sb, "updatedCount") > 500 && n(&sb, "createdCount") > 500,
        "{sb}"
    );
    assert_ne!(after_a, after_b);
    let jb = sb["jobId"].as_i64().unwrap();

    let r1 = rolled_back(&app, TOKEN, jb, "").await;
    assert_eq!(table(&app, org), after_a, "the table after A");
    assert_eq!(n(&r1, "deletedCount"), n(&sb, "createdCount"));
    assert_eq!(n(&r1, "updatedCount"), n(&sb, "updatedCount"));
    assert_eq!(n(&r1, "errorCount"), 0);
    assert_eq!(
        r1["progress"]["current"].as_u64().unwrap(),
        n(&sb, "createdCount") + n(&sb, "updatedCount")
    );
    let j1 = r1["jobId"].as_i64().unwrap();
    assert_eq!(app.status(jb).await["rolledBackBy"], j1);
    // The rows it deleted are counted in /metrics.
    let metrics = metrics_text(&app).await;
    let deleted = metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_rows_total{")
                && l.contains("dataset=\"products\"")
                && l.contains("outcome=\"deleted\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok());
    assert_eq!(deleted, Some(n(&r1, "deletedCount") as f64), "{metrics}");

    // The history: every change B archived, reversed by the rollback.
    let history =
        |job: i64| -> BTreeSet<(String, String, Option<String>, Option<String>)> {
            app.db()
            .rows(&format!(
                "SELECT sku, field, old_value, new_value FROM products_history WHERE job_id = {job}"
            ))
            .into_iter()
            .map(|r| {
                let num = |v: &Option<String>| {
                    v.as_ref()
                        .map(|s| s.parse::<f64>().map_or(s.clone(), |f| format!("{f:.2}")))
                };
                (r[0].clone().unwrap(), r[1].clone().unwrap(), num(&r[2]), num(&r[3]))
            })
            .collect()
        };
    let of_b = history(jb);
    assert!(!of_b.is_empty());
    let reversed: BTreeSet<_> = history(j1)
        .into_iter()
        .map(|(k, f, old, new)| (k, f, new, old))
        .collect();
    assert_eq!(reversed, of_b);

    // Twice is refused, naming the rollback.
    let (code, body) = ask_rollback(&app, TOKEN, jb, "").await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_rolled_back");
    assert_eq!(body["error"]["jobId"], j1, "{body}");

    // The rollback rolled back, by the CLI: B's table again.
    let out = std::process::Command::new(binary())
        .args(["rollback", &j1.to_string(), "--wait"])
        .args(["--server", &app.base, "--token", TOKEN])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("rolls back job {j1}")), "{stdout}");
    let r2 = app
        .status(app.status(j1).await["rolledBackBy"].as_i64().unwrap())
        .await;
    assert_eq!(r2["status"], "completed", "{r2}");
    assert_eq!(table(&app, org), after_b, "the table after B");
    assert_eq!(n(&r2, "createdCount"), n(&sb, "createdCount"));

    // The change feed shows B, its reversal and its return, in order.
    let (code, feed) = app
        .get_json("/api/v1/datasets/products/changes?after=0&limit=10000")
        .await;
    assert_eq!(code, 200);
    let jobs: Vec<i64> = feed["data"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["jobId"].as_i64().unwrap())
        .collect();
    let last_b = jobs.iter().rposition(|j| *j == jb).unwrap();
    let first_r1 = jobs.iter().position(|j| *j == j1).unwrap();
    assert!(last_b < first_r1);
    assert!(
        jobs.iter().rposition(|j| *j == j1).unwrap()
            < jobs
                .iter()
                .position(|j| *j == r2["jobId"].as_i64().unwrap())
                .unwrap()
    );

    // Refusals: another organisation, a bad `force`.
    let (_, other) = org_with_admin(&app, "other");
    let (code, _) = ask_rollback(&app, &other, jb, "").await;
    assert_eq!(code, 404);
    let (code, body) = ask_rollback(&app, TOKEN, jb, "?force=maybe").await;
    assert_eq!(code, 400, "{body}");

    // A replace import is ledgered at its swap: A's file as the whole table deletes B's new
    // keys and puts A's values back on the keys B updated; rolled back, the table is B's again.
    let replace = upload_as(&app, TOKEN, &a, &[("mode", "replace")]).await;
    let sr = app.wait_done(replace, Duration::from_secs(60)).await;
    assert_eq!(sr["status"], "completed", "{sr}");
    assert_eq!(
        table(&app, org),
        after_a,
        "the table after replacing it with A"
    );
    assert_eq!(n(&sr, "deletedCount"), n(&sb, "createdCount"));
    let ops: BTreeMap<String, u64> = app
        .db()
        .rows(&format!(
            "SELECT op, CAST(count(*) AS TEXT) FROM ledger WHERE job_id = {replace} GROUP BY op"
        ))
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(ops.get("deleted").copied(), Some(n(&sb, "createdCount")));
    assert_eq!(ops.get("updated").copied(), Some(n(&sb, "updatedCount")));
    assert_eq!(ops.get("created"), None, "{ops:?}");
    rolled_back(&app, TOKEN, replace, "").await;
    assert_eq!(table(&app, org), after_b, "the table after B again");
    app.assert_ledger_ranges_exact();
}

async fn later_changes_are_conflicts_unless_forced(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 400,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = files(dir.path());
    for force in [false, true] {
        let (org, token) = org_with_admin(&app, if force { "forced" } else { "careful" });
        import_as(&app, &token, &a).await;
        let after_a = table(&app, org);
        let sb = import_as(&app, &token, &b).await;
        let sc = import_as(&app, &token, &c).await;
        let after_c = table(&app, org);
        let jc = sc["jobId"].as_i64().unwrap();
        // What C changed: its ledger entries (C's keys are all B's).
        let changed_by_c: BTreeSet<String> = app
            .db()
            .rows(&format!("SELECT key FROM ledger WHERE job_id = {jc}"))
            .into_iter()
            .map(|r| {
                let key: Value = serde_json::from_str(r[0].as_deref().unwrap()).unwrap();
                key["sku"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(changed_by_c.len() as u64, n(&sc, "updatedCount"));
        assert!(changed_by_c.len() > 100, "{sc}");

        let jb = sb["jobId"].as_i64().unwrap();
        let query = if force { "?force=true" } else { "" };
        let status = rolled_back(&app, &token, jb, query).await;
        let now = table(&app, org);
        if force {
            assert_eq!(n(&status, "errorCount"), 0, "{status}");
            assert_eq!(now, after_a, "forced: every row as after A");
            continue;
        }
        assert_eq!(
            n(&status, "errorCount") as usize,
            changed_by_c.len(),
            "{status}"
        );
        let resp = app
            .http
            .get(app.url(&format!(
                "/api/v1/import/{}/errors?limit=100000",
                status["jobId"]
            )))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (_, errors) = json_of(resp).await;
        let errors = errors["data"]["errors"].as_array().unwrap().clone();
        let conflicts: BTreeSet<String> = errors
            .iter()
            .map(|e| e["value"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(conflicts, changed_by_c);
        assert!(
            errors.iter().all(|e| e["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("changed by job {jc} after this import"))),
            "{errors:?}"
        );
        // Every row but the conflicts is as after A; the conflicts keep C's values.
        let mut expected = after_a.clone();
        for sku in &changed_by_c {
            expected.insert(sku.clone(), after_c[sku].clone());
        }
        assert_eq!(now, expected);
    }
}

async fn a_rollback_killed_midway_ends_as_an_uninterrupted_one(backend: Backend) {
    let mut app = spawn_app(AppOptions {
        backend,
        batch_size: 2000,
        lease_seconds: 3,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = generate(dir.path(), "a.csv", &["--rows", "20000", "--seed", "7"]);
    let (b, _) = generate(
        dir.path(),
        "b.csv",
        &["--rows", "20000", "--seed", "8", "--start-sku", "10001"],
    );
    let org = app.db().number("SELECT min(id) FROM orgs");
    import_as(&app, TOKEN, &a).await;
    let after_a = table(&app, org);
    let jb = import_as(&app, TOKEN, &b).await["jobId"].as_i64().unwrap();
    let (code, body) = ask_rollback(&app, TOKEN, jb, "").await;
    assert_eq!(code, 202, "{body}");
    let rollback = job_id(&body);
    // Kill the server while the rollback is part way (1,000 entries per batch of 20,000).
    let mut kills = 0;
    for _ in 0..2000 {
        let s = app.status(rollback).await;
        let done = s["progress"]["current"].as_u64().unwrap_or(0);
        if s["status"] == "completed" {
            break;
        }
        if done > 0 {
            app.kill();
            kills += 1;
            app.start();
            if kills == 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(kills > 0, "the rollback ended before a kill");
    let status = app.wait_done(rollback, Duration::from_secs(120)).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(table(&app, org), after_a);
    assert_eq!(n(&status, "errorCount"), 0);
    assert_eq!(
        n(&status, "deletedCount") + n(&status, "updatedCount"),
        status["progress"]["total"].as_u64().unwrap()
    );
}

/// The organisation's keys.
fn keys(t: &Table) -> BTreeSet<String> {
    t.keys().cloned().collect()
}

fn sku(n: u32) -> String {
    format!("SKU-{n:07}")
}

async fn sync_deletes_exactly_the_missing_keys_within_its_guard(backend: Backend) {
    // 500-row chunks: the deletion happens when the last chunk completes the job.
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 200,
        workers: 3,
        extra_args: ["--chunk-rows", "500", "--max-chunks", "4"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let org = app.db().number("SELECT min(id) FROM orgs");
    let (a, _) = generate(dir.path(), "a.csv", &["--rows", "2000", "--seed", "1"]);
    // SKU 301–1800 with other values; SKU 1–300 and 1801–2000 are missing, except that a
    // rejected row (a price that is no number) names SKU-0000005.
    let (b, _) = generate(
        dir.path(),
        "b.csv",
        &["--rows", "1500", "--seed", "2", "--start-sku", "301"],
    );
    let mut text = std::fs::read_to_string(&b).unwrap();
    text.push_str(&format!(
        "{},Kept Row,Tools,not-a-price,1,2025-01-01\n",
        sku(5)
    ));
    std::fs::write(&b, text).unwrap();

    import_as(&app, TOKEN, &a).await;
    let after_a = table(&app, org);
    assert_eq!(after_a.len(), 2000);
    // A dry run of the sync counts what it would delete, and says when the guard would refuse.
    for (percent, refused) in [("50", false), ("10", true)] {
        let fields = [
            ("mode", "sync"),
            ("dryRun", "true"),
            ("maxDeletePercent", percent),
        ];
        let dry = upload_as(&app, TOKEN, &b, &fields).await;
        let sd = app.wait_done(dry, Duration::from_secs(120)).await;
        assert_eq!(sd["status"], "completed", "{sd}");
        assert_eq!(sd["kind"], "analysis");
        assert_eq!(n(&sd, "deletedCount"), 499, "{sd}");
        assert_eq!(sd["summary"]["wouldDelete"], 499, "{sd}");
        assert_eq!(
            sd["summary"]["deleteRefusal"].as_str().is_some_and(
                |m| m.contains("499 of the 2000 rows (24.9%), more than maxDeletePercent=10")
            ),
            refused,
            "{sd}"
        );
    }
    assert_eq!(table(&app, org), after_a, "a dry run writes nothing");
    let jb = upload_as(&app, TOKEN, &b, &[("mode", "sync")]).await;
    let sb = app.wait_done(jb, Duration::from_secs(120)).await;
    assert_eq!(sb["status"], "completed", "{sb}");
    assert_eq!(sb["mode"], "sync");
    assert!(sb["chunks"]["total"].as_u64().unwrap() > 1, "{sb}");
    assert_eq!(n(&sb, "errorCount"), 1);
    assert_eq!(n(&sb, "deletedCount"), 499);
    // The deletion is counted in the rows metric (dry runs delete nothing).
    let metrics = metrics_text(&app).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"sluice_rows_total{dataset="products",outcome="deleted"} 499"#),
        "{metrics}"
    );
    let after_b = table(&app, org);
    let mut expected: BTreeSet<String> = (301..=1800).map(sku).collect();
    expected.insert(sku(5));
    assert_eq!(keys(&after_b), expected);
    assert_eq!(
        after_b[&sku(5)],
        after_a[&sku(5)],
        "the rejected row's key kept A's row"
    );
    // Every deletion is in the ledger with the row's values, and in the change feed.
    let ledgered = app.db().rows(&format!(
        "SELECT key, old FROM ledger WHERE job_id = {jb} AND op = 'deleted'"
    ));
    assert_eq!(ledgered.len(), 499);
    let gone: BTreeSet<String> = ledgered
        .iter()
        .map(|r| {
            let key: Value = serde_json::from_str(r[0].as_deref().unwrap()).unwrap();
            let old: Value = serde_json::from_str(r[1].as_deref().unwrap()).unwrap();
            let sku = key["sku"].as_str().unwrap().to_string();
            assert_eq!(old["name"].as_str(), after_a[&sku][0].as_deref(), "{old}");
            sku
        })
        .collect();
    assert_eq!(
        gone,
        keys(&after_a).difference(&expected).cloned().collect()
    );
    let (code, feed) = app
        .get_json(&format!(
            "/api/v1/datasets/products/changes?after={}&limit=10000",
            sb["changes"]["after"]
        ))
        .await;
    assert_eq!(code, 200, "{feed}");
    let deleted_in_feed = feed["data"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["op"] == "deleted" && c["values"].is_null())
        .count();
    assert_eq!(deleted_in_feed, 499);

    // A rollback puts the deleted rows back and the updated ones as they were.
    let r = rolled_back(&app, TOKEN, jb, "").await;
    assert_eq!(n(&r, "createdCount"), 499);
    assert_eq!(table(&app, org), after_a, "the table after A");

    // 500 keys of 2,000: a sync would delete 75%, past the default guard of 50%.
    let (c, _) = generate(dir.path(), "c.csv", &["--rows", "500", "--seed", "3"]);
    let jc = upload_as(&app, TOKEN, &c, &[("mode", "sync")]).await;
    let sc = app.wait_done(jc, Duration::from_secs(60)).await;
    assert_eq!(sc["status"], "failed", "{sc}");
    let error = sc["error"].as_str().unwrap();
    assert!(
        error.contains("would delete 1500 of the 2000 rows")
            && error.contains("maxDeletePercent=50")
            && error.contains("nothing was deleted"),
        "{error}"
    );
    assert_eq!(n(&sc, "deletedCount"), 0);
    assert_eq!(keys(&table(&app, org)), keys(&after_a));
    // Allowed up to 80%: the same file deletes the 1,500 others.
    let jd = upload_as(
        &app,
        TOKEN,
        &c,
        &[("mode", "sync"), ("maxDeletePercent", "80")],
    )
    .await;
    let sd = app.wait_done(jd, Duration::from_secs(60)).await;
    assert_eq!(sd["status"], "completed", "{sd}");
    assert_eq!(n(&sd, "deletedCount"), 1500);
    assert_eq!(
        keys(&table(&app, org)),
        (1..=500).map(sku).collect::<BTreeSet<_>>()
    );

    // The CLI passes the option on: a bad one is the server's 400, said on stderr.
    let out = std::process::Command::new(binary())
        .arg("import")
        .arg(&c)
        .args([
            "-d",
            "products",
            "--mode",
            "sync",
            "--max-delete-percent",
            "101",
        ])
        .args(["--server", &app.base, "--token", TOKEN])
        .output()
        .expect("run sluice import");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 to 100"), "{stderr}");

    // The option's refusals.
    for (fields, what) in [
        (vec![("maxDeletePercent", "10")], "mode=sync only"),
        (
            vec![("mode", "sync"), ("maxDeletePercent", "101")],
            "0 to 100",
        ),
    ] {
        let (code, body) = app
            .upload_text_as(
                TOKEN,
                "/api/v1/import/products",
                "f.csv",
                "sku\nA\n",
                &fields,
            )
            .await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_max_delete_percent");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(what),
            "{body}"
        );
    }
}

/// Every type, NULLs, a two-field key: the entries a replace's swap writes (JSON made by the
/// database) must be the text a sync writes for the same change (JSON made in Rust).
const ALL_TYPES: &str = r#"
[datasets.things]
key = ["code", "n"]
[datasets.things.fields]
code = { type = "text", required = true }
n = { type = "integer", required = true }
label = { type = "text" }
qty = { type = "integer" }
price = { type = "decimal", scale = 2 }
active = { type = "boolean" }
day = { type = "date" }
seen = { type = "datetime" }
"#;

/// Two rows; the second changes every non-key field of A2 and drops A1 (with its NULLs).
const THINGS_A: &str = "code,n,label,qty,price,active,day,seen
A1,1,\"quote \"\" and, comma\",5,1.5,true,2024-01-02,2024-01-02T03:04:05
A2,2,plain,-3,20,false,2024-02-01,2024-02-01T00:00:00
A3,3,,,,,,
";
const THINGS_B: &str = "code,n,label,qty,price,active,day,seen
A2,2,other,4,0.1,true,2023-12-31,2024-03-15T12:00:00
A3,3,x,1,2,false,2024-01-01,2024-01-01T01:01:01
";

async fn a_replace_ledgers_what_a_sync_ledgers(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(ALL_TYPES.into()),
        ..Default::default()
    });
    let run = |file: &'static str, fields: Vec<(&'static str, &'static str)>| {
        let app = &app;
        async move {
            let (code, body) = app
                .upload_text_as(TOKEN, "/api/v1/import/things", "t.csv", file, &fields)
                .await;
            assert_eq!(code, 202, "{body}");
            let job = job_id(&body);
            let status = app.wait_done_as(TOKEN, job).await;
            assert_eq!(status["status"], "completed", "{status}");
            assert_eq!(status["errorCount"], 0, "{status}");
            job
        }
    };
    let entries = |job: i64| {
        app.db().rows(&format!(
            "SELECT op, key, old FROM ledger WHERE job_id = {job} ORDER BY op, key"
        ))
    };
    run(THINGS_A, vec![]).await;
    let replace = run(THINGS_B, vec![("mode", "replace")]).await;
    rolled_back(&app, TOKEN, replace, "").await;
    let sync = run(
        THINGS_B,
        vec![("mode", "sync"), ("maxDeletePercent", "100")],
    )
    .await;
    let (by_replace, by_sync) = (entries(replace), entries(sync));
    assert_eq!(by_replace.len(), 3, "{by_replace:?}");
    assert_eq!(by_replace, by_sync);
    let deleted = &by_sync[0];
    assert_eq!(deleted[0].as_deref(), Some("deleted"));
    assert_eq!(
        deleted[2].as_deref(),
        Some(
            r#"{"code":"A1","n":1,"label":"quote \" and, comma","qty":5,"price":"1.50","active":true,"day":"2024-01-02","seen":"2024-01-02T03:04:05"}"#
        )
    );
    assert_eq!(
        by_sync[2][2].as_deref(),
        Some(r#"{"label":null,"qty":null,"price":null,"active":null,"day":null,"seen":null}"#),
        "{by_sync:?}"
    );
    app.assert_ledger_ranges_exact();
}

conformance!(
    a_replace_ledgers_what_a_sync_ledgers,
    sync_deletes_exactly_the_missing_keys_within_its_guard,
    a_rollback_restores_the_table_and_can_itself_be_rolled_back,
    later_changes_are_conflicts_unless_forced,
    a_rollback_killed_midway_ends_as_an_uninterrupted_one,
);
