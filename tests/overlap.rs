//! Overlapping imports into one dataset (issue 12): two files uploaded at the same instant into
//! the same organisation's table must each be counted exactly as their files say — every in-file
//! duplicate rejected, whatever the other job writes — and leave the table as importing them one
//! after another in upload (job id) order would.
//!
//! File A has 3% bad rows, some of them keys repeated inside A; file B has the same keys and no
//! errors. Each case imports A then B and B then A one after another into two reference
//! organisations, then runs rounds in organisations of their own and compares each round with the
//! reference of its order. Small batches make many commits for the two jobs to interleave. With
//! two workers the rounds run one after another (both workers free for one organisation's two
//! jobs); with four, both files are also split into chunk jobs and all rounds run at once, so
//! jobs of several organisations overlap too.

#[macro_use]
mod common;

use std::path::Path;

use common::*;
use futures_util::future::join_all;
use serde_json::Value;

conformance!(
    overlapping_uploads_with_two_workers_take_effect_in_upload_order,
    overlapping_split_uploads_with_four_workers_take_effect_in_upload_order,
    synchronous_imports_at_the_same_instant_each_count_their_own_file,
);

const ROWS: &str = "6000";
const ROUNDS: usize = 5;

async fn overlapping_uploads_with_two_workers_take_effect_in_upload_order(backend: Backend) {
    overlapping(backend, 2, &[], Rounds::OneAtATime).await;
}

async fn overlapping_split_uploads_with_four_workers_take_effect_in_upload_order(backend: Backend) {
    let split = ["--chunk-rows", "2000", "--max-chunks", "3"];
    overlapping(backend, 4, &split, Rounds::AllAtOnce).await;
}

/// Everything one organisation's import of the two files leaves that must not depend on timing.
#[derive(Debug, PartialEq)]
struct Outcome {
    rows: Vec<Vec<Option<String>>>,
    history: Vec<Vec<Option<String>>>,
    /// Per file (A, B): its job's counts and row errors.
    jobs: [(Counts, Vec<Vec<Option<String>>>); 2],
}

type Counts = [u64; 4];

fn counts(s: &Value) -> Counts {
    [
        "createdCount",
        "updatedCount",
        "unchangedCount",
        "errorCount",
    ]
    .map(|k| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}")))
}

fn outcome(app: &TestApp, org: i64, jobs: [(i64, &Value); 2]) -> Outcome {
    let mut db = app.db();
    let mut errors = |job: i64| {
        db.rows(&format!(
            "SELECT \"row\", \"column\", message FROM job_errors WHERE job_id = {job} ORDER BY \"row\""
        ))
    };
    let jobs = jobs.map(|(id, status)| (counts(status), errors(id)));
    Outcome {
        rows: db.rows(&format!(
            "SELECT sku, name, category, price, stock, updated_at, _sluice_row FROM products \
             WHERE _sluice_org = {org} ORDER BY sku"
        )),
        history: db.rows(&format!(
            "SELECT sku, field, old_value, new_value FROM products_history \
             WHERE _sluice_org = {org} ORDER BY sku, field, valid_to"
        )),
        jobs,
    }
}

async fn upload(app: &TestApp, token: &str, file: &Path) -> i64 {
    let text = std::fs::read_to_string(file).expect("read file");
    let name = file.file_name().unwrap().to_string_lossy();
    let (code, body) = app
        .upload_text_as(token, "/api/v1/import/products", &name, &text, &[])
        .await;
    assert_eq!(code, 202, "{body}");
    job_id(&body)
}

async fn done(app: &TestApp, token: &str, job: i64) -> Value {
    let s = app.wait_done_as(token, job).await;
    assert_eq!(s["status"], "completed", "{s}");
    s
}

/// Imports the files one after another into a new organisation: its id, and each file's job
/// and final status.
async fn one_after_another(
    app: &TestApp,
    org_name: &str,
    files: [&Path; 2],
) -> (i64, Vec<(i64, Value)>) {
    let (org, token) = org_with_admin(app, org_name);
    let mut jobs = Vec::new();
    for file in files {
        let id = upload(app, &token, file).await;
        jobs.push((id, done(app, &token, id).await));
    }
    (org, jobs)
}

/// Whether the rounds (one organisation each) run one after another, so the workers are free for
/// the two jobs of one organisation, or all at once, so organisations overlap too.
#[derive(Clone, Copy, PartialEq)]
enum Rounds {
    OneAtATime,
    AllAtOnce,
}

async fn overlapping(backend: Backend, workers: usize, extra: &[&str], rounds: Rounds) {
    let app = spawn_app(AppOptions {
        backend,
        workers,
        batch_size: 250,
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (a, expect_a) = generate(
        dir.path(),
        "a.csv",
        &["--rows", ROWS, "--error-rate", "0.03", "--seed", "1"],
    );
    let (b, expect_b) = generate(
        dir.path(),
        "b.csv",
        &["--rows", ROWS, "--error-rate", "0", "--seed", "2"],
    );
    assert!(
        expect_a["invalid_by_kind"]["duplicate_sku"]
            .as_u64()
            .unwrap()
            > 0,
        "file A repeats keys: {expect_a}"
    );

    // The references: A then B, and B then A, each run alone.
    let mut reference = Vec::new();
    for (name, files) in [("ref-ab", [&a, &b]), ("ref-ba", [&b, &a])] {
        let (org, jobs) = one_after_another(&app, name, files.map(|p| p.as_path())).await;
        // Per file: A's job first in the outcome, whichever ran first.
        let (ia, ib) = if name == "ref-ab" { (0, 1) } else { (1, 0) };
        let [(ja, sa), (jb, sb)] = [&jobs[ia], &jobs[ib]];
        reference.push(outcome(&app, org, [(*ja, sa), (*jb, sb)]));
    }
    let [ab, ba]: [Outcome; 2] = reference.try_into().unwrap();
    assert_ne!(
        ab.rows, ba.rows,
        "the order of the two files shows in the table"
    );

    // The rounds: in each organisation A and B are uploaded at the same instant.
    let round = |round: usize| {
        let (app, a, b) = (&app, &a, &b);
        async move {
            let (org, token) = org_with_admin(app, &format!("round-{round}"));
            let (ja, jb) = tokio::join!(upload(app, &token, a), upload(app, &token, b));
            let (sa, sb) = tokio::join!(done(app, &token, ja), done(app, &token, jb));
            (round, org, ja, jb, sa, sb)
        }
    };
    let results = match rounds {
        Rounds::AllAtOnce => join_all((0..ROUNDS).map(round)).await,
        Rounds::OneAtATime => {
            let mut results = Vec::new();
            for r in 0..ROUNDS {
                results.push(round(r).await);
            }
            results
        }
    };
    for (round, org, ja, jb, sa, sb) in results {
        let got = outcome(&app, org, [(ja, &sa), (jb, &sb)]);
        let valid = |e: &Value| e["valid_rows"].as_u64().unwrap();
        let invalid = |e: &Value| e["invalid_rows"].as_u64().unwrap();
        let [ca, cb] = [got.jobs[0].0, got.jobs[1].0];
        assert_eq!(
            (ca[0] + ca[1] + ca[2], ca[3]),
            (valid(&expect_a), invalid(&expect_a)),
            "round {round}: file A's counts {ca:?}"
        );
        assert_eq!(
            (cb[0] + cb[1] + cb[2], cb[3]),
            (valid(&expect_b), invalid(&expect_b)),
            "round {round}: file B's counts {cb:?}"
        );
        let want = if ja < jb { &ab } else { &ba };
        assert!(
            got == *want,
            "round {round} (A = job {ja}, B = job {jb}): the outcome differs from importing them \
             one after another in upload order ({} vs {} rows, {} vs {} history lines, counts \
             {:?} vs {:?})",
            got.rows.len(),
            want.rows.len(),
            got.history.len(),
            want.history.len(),
            [got.jobs[0].0, got.jobs[1].0],
            [want.jobs[0].0, want.jobs[1].0],
        );
    }
}

/// A synchronous dataset runs its import in the request: requests that overlap take turns
/// (each waits for the dataset's writer), so each answer counts its own file exactly.
async fn synchronous_imports_at_the_same_instant_each_count_their_own_file(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let files: Vec<String> = (0..4)
        .map(|i| {
            let mut csv = String::from("code,name\n");
            for n in 1..=300 {
                csv.push_str(&format!("D{n},file {i}\n"));
            }
            // A key repeated inside the file: rejected, whatever the other files wrote.
            csv.push_str(&format!("D5,file {i} again\n"));
            csv
        })
        .collect();
    let answers = join_all(files.iter().enumerate().map(|(i, csv)| {
        let app = &app;
        async move {
            app.upload_text_as(
                TOKEN,
                "/api/v1/import/dealers",
                &format!("d{i}.csv"),
                csv,
                &[],
            )
            .await
        }
    }))
    .await;
    let mut last = (0, 0);
    for (i, (code, body)) in answers.iter().enumerate() {
        assert_eq!(*code, 200, "{body}");
        let results = &body["data"]["results"];
        assert_eq!(results["successCount"], 300, "file {i}: {body}");
        assert_eq!(results["errorCount"], 1, "file {i}: {body}");
        assert_eq!(
            body["data"]["errors"][0]["message"], "duplicate key, first seen at row 6",
            "file {i}: {body}"
        );
        let id = job_id(body);
        if id > last.0 {
            last = (id, i);
        }
    }
    let names = app.db().rows("SELECT DISTINCT name FROM dealers");
    assert_eq!(
        names,
        vec![vec![Some(format!("file {}", last.1))]],
        "the last upload's values are the table's"
    );
}
