//! The store conformance suite: one set of cases against `&dyn JobStore`, run on a fresh SQLite
//! file (`sqlite::CASE`) and on a fresh PostgreSQL database (`postgres::CASE`), so the two
//! backends are held to the same contract without going through HTTP.
//!
//! It covers: claiming (two workers racing for one job; lease expiry and re-claim; a stale
//! lease's heartbeat, finish and batch commit refused; one writer per organisation and dataset,
//! in upload order, with chunks in parallel and synchronous jobs refused beside a writer; the claim
//! order: priority, then the organisation running fewest, then age, `--org-max-running`, chunks
//! counting and inheriting, queue positions), every operator transition and every
//! refusal (`job_control`), tokens (find, revoke, expiry, organisation scope, re-inserting a
//! taken hash, marking last use), chunk finalisation (a failing chunk; the last of racing chunks
//! completing the parent once), the job event log, webhook deliveries (planning once when two
//! dispatchers race, claiming, recording attempts), the audit log (a line per action done,
//! none for a refused one) and the orphan sweep's questions (unreferenced and stored blobs).
//!
//! Each case gets its own database. The PostgreSQL half creates `sluice_s_<random>` on the test
//! server (`SLUICE_TEST_POSTGRES`, default the local one) and drops it afterwards; it is skipped
//! by the same rule as the API tests (see `common::postgres_wanted`). Plain `#[test]`s: the
//! store is blocking, and no async runtime is involved.

#[macro_use]
mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sluice::dataset::Datasets;
use sluice::import::read::Part;
use sluice::import::{Batch, Format, Mapping, Mode, SinkError, SourceOptions, Value};
use sluice::store::postgres::PgStore;
use sluice::store::sqlite::SqliteStore;
use sluice::store::{
    AuditEntry, ChunkClaim, Control, Controlled, DeliveryAttempt, DeliveryState, Inserted, Job,
    JobEvent, JobId, JobKind, JobStatus, JobStore, Lease, NewChunk, NewDelivery, NewJob, NewSource,
    Priority, Role, RunEnd, RunOutcome, RunStart, SourceSaved, StoreError,
};

/// What `sluice serve` waits for a lock by default (`--busy-timeout-ms`).
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a store call waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// A lease long enough never to expire during a test.
const LONG_LEASE_MS: u64 = 600_000;

/// Declares the cases: each `fn CASE(store: &dyn JobStore)` becomes `sqlite::CASE` and
/// `postgres::CASE`.
macro_rules! store_conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $case() { super::on_sqlite(super::$case) } )*
        }
        mod postgres {
            $( #[test] fn $case() { super::on_postgres(super::$case) } )*
        }
    };
}

fn on_sqlite(case: fn(&dyn JobStore)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        SqliteStore::open(&dir.path().join("sluice.db"), LOCK_TIMEOUT, 8, POOL_WAIT).expect("open");
    case(&store);
}

fn on_postgres(case: fn(&dyn JobStore)) {
    if !common::postgres_wanted() {
        return;
    }
    let db = PgDatabase::create();
    let store =
        PgStore::open(&db.url(), LOCK_TIMEOUT, 10, POOL_WAIT).expect("open the PostgreSQL store");
    case(&store);
}

/// A PostgreSQL database of one case, dropped when the case ends (passed or failed).
struct PgDatabase(String);

impl PgDatabase {
    fn create() -> Self {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let name = format!(
            "sluice_s_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        );
        common::pg_admin_execute(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL must be running for the postgres tests (server {}, see README): {e}",
                common::postgres_server()
            )
        });
        PgDatabase(name)
    }

    fn url(&self) -> String {
        format!("{}/{}", common::postgres_server(), self.0)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ =
            common::pg_admin_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

// --- Fixtures.

const DATASETS: &str = r#"
[datasets.items]
key = ["sku"]

[datasets.items.fields]
sku  = { type = "text", required = true }
name = { type = "text" }
"#;

fn datasets() -> Datasets {
    Datasets::parse(DATASETS, "store_conformance.rs").expect("datasets")
}

/// An organisation with an admin user: (org, user).
fn tenant(store: &dyn JobStore, name: &str) -> (i64, i64) {
    let org = store.org_insert(name).unwrap().expect("new organisation");
    let user = store
        .user_insert(org, "ada", Role::Admin, None)
        .unwrap()
        .expect("new user");
    (org, user)
}

/// An upload of file `name` (its own checksum) for organisation `org`.
fn upload(org: i64, name: &str) -> NewJob {
    upload_into(org, "items", name)
}

/// An upload of file `name` into `dataset` for organisation `org`.
fn upload_into(org: i64, dataset: &str, name: &str) -> NewJob {
    NewJob {
        dataset: dataset.into(),
        mode: Mode::Upsert,
        filename: format!("{name}.csv"),
        blob: format!("blob-{name}"),
        file_size: 100,
        sha256: format!("sha-{name}"),
        format: Format::Csv,
        options: SourceOptions::default(),
        header: vec!["sku".into(), "name".into()],
        mapping: Mapping {
            columns: vec![Some("sku".into()), Some("name".into())],
            ignored: Vec::new(),
            fuzzy: Vec::new(),
        },
        created_by: None,
        org_id: org,
        user_id: None,
        idempotency_key: None,
        retry_of: None,
        priority: Priority::Normal,
        kind: JobKind::Import,
        params: None,
        analysis_of: None,
    }
}

fn created(inserted: Inserted) -> JobId {
    match inserted {
        Inserted::Created(id) => id,
        other => panic!("expected a new job, got {other:?}"),
    }
}

/// A new pending job.
fn pending(store: &dyn JobStore, org: i64, name: &str) -> JobId {
    created(store.job_insert(&upload(org, name), None, None).unwrap())
}

/// A new pending job for `dataset`.
fn pending_into(store: &dyn JobStore, org: i64, dataset: &str, name: &str) -> JobId {
    created(
        store
            .job_insert(&upload_into(org, dataset, name), None, None)
            .unwrap(),
    )
}

/// A new pending job of `priority` for `dataset` (named after the file too).
fn pending_at(store: &dyn JobStore, org: i64, name: &str, priority: Priority) -> JobId {
    let job = NewJob {
        priority,
        ..upload_into(org, name, name)
    };
    created(store.job_insert(&job, None, None).unwrap())
}

/// Claims the next job under `--org-max-running cap`, if any.
fn next_capped(store: &dyn JobStore, owner: &str, cap: u32) -> Option<Lease> {
    store
        .job_claim(owner, LONG_LEASE_MS, cap)
        .unwrap()
        .map(|(_, l)| l)
}

fn done(store: &dyn JobStore, lease: &Lease) {
    assert!(
        store
            .job_finish(lease, None, JobStatus::Completed, None)
            .unwrap()
    );
}

/// Claims the next job, if any: its id.
fn next_claim(store: &dyn JobStore, owner: &str) -> Option<(JobId, Lease)> {
    store
        .job_claim(owner, LONG_LEASE_MS, 0)
        .unwrap()
        .map(|(j, l)| (j.id, l))
}

/// A new job that starts out processing, owned by the caller (as a synchronous import does).
fn processing(store: &dyn JobStore, org: i64, name: &str) -> Lease {
    let token = format!("lease-{name}");
    let id = created(
        store
            .job_insert(&upload(org, name), Some((&token, LONG_LEASE_MS)), None)
            .unwrap(),
    );
    Lease { job_id: id, token }
}

fn job(store: &dyn JobStore, id: JobId) -> Job {
    store.job_get(id).unwrap().expect("job exists")
}

fn status(store: &dyn JobStore, id: JobId) -> JobStatus {
    job(store, id).status
}

/// A job in the given state, and its lease while it is processing.
fn job_in(store: &dyn JobStore, org: i64, state: JobStatus, name: &str) -> (JobId, Option<Lease>) {
    let finished = |status, error: Option<&str>| {
        let lease = processing(store, org, name);
        assert!(store.job_finish(&lease, None, status, error).unwrap());
        (lease.job_id, None)
    };
    let (id, lease) = match state {
        JobStatus::Pending => (pending(store, org, name), None),
        JobStatus::Processing => {
            let lease = processing(store, org, name);
            (lease.job_id, Some(lease))
        }
        JobStatus::Paused => {
            let id = pending(store, org, name);
            assert_eq!(
                store.job_control(id, Control::Pause, None).unwrap(),
                Controlled::Done(id)
            );
            (id, None)
        }
        JobStatus::Cancelled => {
            let id = pending(store, org, name);
            assert_eq!(
                store.job_control(id, Control::Cancel, None).unwrap(),
                Controlled::Done(id)
            );
            (id, None)
        }
        JobStatus::Completed => finished(JobStatus::Completed, None),
        JobStatus::Failed => finished(JobStatus::Failed, Some("the file cannot be read")),
    };
    assert_eq!(status(store, id), state);
    (id, lease)
}

/// One valid row (`sku`, `name`) as the pipeline hands it to a sink: spreadsheet row 2.
fn one_row_batch(sku: &str, name: &str) -> Batch {
    let mut batch = Batch::new(vec![true, true]);
    batch.rows.push(2);
    batch
        .values
        .extend([Value::Text(sku.into()), Value::Text(name.into())]);
    batch.raw.push(&csv::ByteRecord::from(vec![sku, name]));
    batch.records = 1;
    batch
}

/// Splits a claimed job into `n` chunk jobs of 10 rows each; their ids in chunk order.
fn split(store: &dyn JobStore, lease: &Lease, n: usize) -> Vec<JobId> {
    let options = SourceOptions {
        row_column: true,
        ..Default::default()
    };
    let chunks: Vec<NewChunk> = (0..n)
        .map(|i| NewChunk {
            blob: format!("chunk-{}-{i}", lease.job_id),
            rows: Some(10),
            size: 100,
            format: Format::Csv,
            options: options.clone(),
        })
        .collect();
    let claimed = store.job_split(lease, 10 * n as u64, &chunks, None);
    assert_eq!(claimed.unwrap().map(|c| c.len()), Some(0));
    let mut ids: Vec<(u32, JobId)> = Vec::new();
    for id in lease.job_id + 1..lease.job_id + 1 + 10 * n as i64 {
        if let Some(j) = store.job_get(id).unwrap()
            && j.parent_id == Some(lease.job_id)
        {
            ids.push((j.chunk_index.expect("chunk index"), j.id));
        }
    }
    ids.sort();
    assert_eq!(ids.len(), n, "{n} chunk jobs");
    ids.into_iter().map(|(_, id)| id).collect()
}

/// Claims the next job, which must be `want`.
fn claim(store: &dyn JobStore, owner: &str, want: JobId) -> Lease {
    let (job, lease) = store
        .job_claim(owner, LONG_LEASE_MS, 0)
        .unwrap()
        .expect("a claimable job");
    assert_eq!(job.id, want, "claimed the oldest claimable job");
    lease
}

/// Claims for `owner` as soon as another owner's short lease has expired: a bounded poll (a few
/// seconds at most), not a guess at how long to sleep.
fn claim_once_expired(store: &dyn JobStore, owner: &str) -> (Job, Lease) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(claimed) = store.job_claim(owner, LONG_LEASE_MS, 0).unwrap() {
            return claimed;
        }
        assert!(Instant::now() < deadline, "the short lease never expired");
        std::thread::yield_now();
    }
}

fn audit(org: i64, user: i64, action: &str) -> AuditEntry {
    AuditEntry {
        org_id: Some(org),
        user_id: Some(user),
        action: action.into(),
        ..Default::default()
    }
}

// --- One writer per organisation and dataset.

fn jobs_into_one_dataset_run_one_after_another_in_upload_order(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let (globex, _) = tenant(store, "globex");
    let a1 = pending(store, acme, "a1");
    let a2 = pending(store, acme, "a2");
    let g1 = pending(store, globex, "g1");
    let other = pending_into(store, acme, "other", "o1");
    let a3 = pending(store, acme, "a3");

    let l1 = claim(store, "w1", a1);
    // a2 and a3 wait for a1; the other organisation and the other dataset do not.
    let lg = claim(store, "w2", g1);
    let lo = claim(store, "w3", other);
    assert!(next_claim(store, "w4").is_none(), "a2 and a3 wait for a1");

    assert!(
        store
            .job_finish(&l1, None, JobStatus::Completed, None)
            .unwrap()
    );
    let l2 = claim(store, "w4", a2);
    assert!(next_claim(store, "w5").is_none(), "a3 waits for a2");
    // A failed job does not hold the dataset.
    assert!(
        store
            .job_finish(
                &l2,
                None,
                JobStatus::Failed,
                Some("the file cannot be read")
            )
            .unwrap()
    );
    let l3 = claim(store, "w5", a3);

    // Retrying the failed a2 while a3 runs: a2 waits for a3 (a running job goes first).
    assert_eq!(
        store
            .job_control(a2, Control::Retry { from_start: false }, None)
            .unwrap(),
        Controlled::Done(a2)
    );
    assert_eq!(status(store, a2), JobStatus::Pending);
    assert!(
        next_claim(store, "w6").is_none(),
        "the retried a2 waits for a3"
    );
    assert!(
        store
            .job_finish(&l3, None, JobStatus::Completed, None)
            .unwrap()
    );
    claim(store, "w6", a2);
    for l in [lg, lo] {
        assert!(
            store
                .job_finish(&l, None, JobStatus::Completed, None)
                .unwrap()
        );
    }
}

fn a_paused_job_steps_aside_and_a_resumed_one_waits_its_turn(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let first = pending(store, org, "first");
    let second = pending(store, org, "second");
    assert_eq!(
        store.job_control(first, Control::Pause, None).unwrap(),
        Controlled::Done(first)
    );
    let l2 = claim(store, "w1", second);
    assert_eq!(
        store.job_control(first, Control::Resume, None).unwrap(),
        Controlled::Done(first)
    );
    assert!(
        next_claim(store, "w2").is_none(),
        "the resumed job waits for the running one"
    );
    assert!(
        store
            .job_finish(&l2, None, JobStatus::Completed, None)
            .unwrap()
    );
    claim(store, "w2", first);
}

fn a_split_jobs_chunks_run_together_and_the_next_upload_waits_for_all(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let big = pending(store, org, "big");
    let later = pending(store, org, "later");
    let parent = claim(store, "w0", big);
    let chunks = split(store, &parent, 3);
    // The parent gave its lease back but still holds the dataset: its chunks are claimed, in
    // parallel, and the later upload is not.
    let leases: Vec<Lease> = chunks
        .iter()
        .enumerate()
        .map(|(i, &c)| claim(store, &format!("w{i}"), c))
        .collect();
    assert!(next_claim(store, "w9").is_none(), "the later upload waits");
    for lease in &leases {
        assert!(
            store
                .job_finish(lease, None, JobStatus::Completed, None)
                .unwrap()
        );
    }
    assert_eq!(status(store, big), JobStatus::Completed);
    claim(store, "w9", later);
}

/// A split into parts of the original file claims them for the splitting worker at once: they
/// come back running under its leases, carry the parent's file, format and options with their
/// part, are not claimable by anyone else while the leases hold, and complete the parent with
/// its counted total.
fn a_split_into_claimed_parts_hands_them_to_the_splitter(store: &dyn JobStore) {
    let datasets = datasets();
    store.datasets_prepare(&datasets).unwrap();
    let items = datasets.get("items").unwrap();
    let (org, _) = tenant(store, "acme");
    let big = pending(store, org, "big");
    let parent = claim(store, "w0", big);
    let file = store.job_get(big).unwrap().unwrap();
    let parts: Vec<NewChunk> = (0..2u32)
        .map(|index| NewChunk {
            blob: file.blob.clone(),
            rows: Some(5),
            size: file.file_size,
            format: file.format,
            options: SourceOptions {
                part: Some(Part { index, count: 2 }),
                ..file.options.clone()
            },
        })
        .collect();
    let claim = ChunkClaim {
        owner: "host/pid-1/parts-of-1",
        lease_ms: LONG_LEASE_MS,
    };
    let claimed = store
        .job_split(&parent, 10, &parts, Some(claim))
        .unwrap()
        .expect("the parent's lease holds");
    assert_eq!(claimed.len(), 2);
    for (i, (job, lease)) in claimed.iter().enumerate() {
        assert_eq!(job.status, JobStatus::Processing);
        assert_eq!(job.parent_id, Some(big));
        assert_eq!(job.chunk_index, Some(i as u32));
        assert_eq!(job.blob, file.blob, "a part reads the original file");
        assert_eq!(job.format, file.format);
        assert_eq!(
            job.options.part,
            Some(Part {
                index: i as u32,
                count: 2
            })
        );
        assert_eq!(job.total_rows, Some(5));
        assert!(job.started_at.is_some());
        assert!(store.job_heartbeat(lease, LONG_LEASE_MS).unwrap());
    }
    assert!(next_claim(store, "w9").is_none(), "the parts are taken");
    // The parent's lease went back with the split: a second split is refused.
    assert!(
        store
            .job_split(&parent, 10, &parts, None)
            .unwrap()
            .is_none()
    );
    let mut batch = one_row_batch("a", "first");
    for (job, lease) in &claimed {
        let mut sink = store
            .batch_sink(items.clone(), lease.clone(), Mode::Upsert, Some(big), org)
            .unwrap();
        batch.values[0] = Value::Text(format!("sku-{}", job.id));
        sink.commit(&batch, 7).unwrap();
        drop(sink);
        assert!(
            store
                .job_finish(lease, None, JobStatus::Completed, None)
                .unwrap()
        );
        assert_eq!(store.job_get(job.id).unwrap().unwrap().total_rows, Some(1));
    }
    let done = store.job_get(big).unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(
        done.total_rows,
        Some(2),
        "the estimate gives way to the count"
    );
}

fn a_synchronous_import_does_not_start_beside_another_writer(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let waiting = pending(store, org, "waiting");
    let lease = Some(("sync-lease", LONG_LEASE_MS));
    assert_eq!(
        store.job_insert(&upload(org, "sync"), lease, None).unwrap(),
        Inserted::DatasetBusy(waiting),
        "a pending job of the same dataset goes first"
    );
    assert!(
        matches!(
            store
                .job_insert(&upload_into(org, "other", "sync"), lease, None)
                .unwrap(),
            Inserted::Created(_)
        ),
        "another dataset is free"
    );
    let l = claim(store, "w1", waiting);
    assert!(
        store
            .job_finish(&l, None, JobStatus::Completed, None)
            .unwrap()
    );
    assert!(matches!(
        store.job_insert(&upload(org, "sync"), lease, None).unwrap(),
        Inserted::Created(_)
    ));
}

fn workers_racing_for_two_uploads_into_one_dataset_start_only_the_first(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    for round in 0..10 {
        let a = pending(store, org, &format!("a{round}"));
        let b = pending(store, org, &format!("b{round}"));
        let start = Barrier::new(3);
        let claims: Vec<Option<(JobId, Lease)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..3)
                .map(|w| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        next_claim(store, &format!("worker-{w}"))
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let won: Vec<&(JobId, Lease)> = claims.iter().flatten().collect();
        assert_eq!(won.len(), 1, "round {round}: one writer at a time");
        assert_eq!(won[0].0, a, "round {round}: the earlier upload first");
        assert!(
            store
                .job_finish(&won[0].1, None, JobStatus::Completed, None)
                .unwrap()
        );
        let lb = claim(store, "worker-0", b);
        assert!(
            store
                .job_finish(&lb, None, JobStatus::Completed, None)
                .unwrap()
        );
    }
}

// --- Claim order: priority, then fairness between organisations, then age.

fn a_high_job_goes_before_older_normal_ones_and_a_low_one_after_them(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    // Each into its own dataset, so the one-writer rule holds none of them back.
    let normal1 = pending_at(store, org, "n1", Priority::Normal);
    let low = pending_at(store, org, "l1", Priority::Low);
    let normal2 = pending_at(store, org, "n2", Priority::Normal);
    let high = pending_at(store, org, "h1", Priority::High);
    assert_eq!(job(store, high).priority, Priority::High);
    assert_eq!(job(store, low).priority, Priority::Low);
    for (i, want) in [high, normal1, normal2, low].into_iter().enumerate() {
        claim(store, &format!("w{i}"), want);
    }
    assert!(next_claim(store, "w9").is_none());
}

fn the_organisation_with_the_fewest_running_jobs_goes_first(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let (globex, _) = tenant(store, "globex");
    let a1 = pending_at(store, acme, "a1", Priority::Normal);
    let a2 = pending_at(store, acme, "a2", Priority::Normal);
    let a3 = pending_at(store, acme, "a3", Priority::Normal);
    let g1 = pending_at(store, globex, "g1", Priority::Normal);
    let g2 = pending_at(store, globex, "g2", Priority::Normal);
    // Nobody runs anything: the oldest. Then acme runs one and globex none: globex's, though
    // acme's are older; then one each: the oldest again.
    let l1 = claim(store, "w1", a1);
    claim(store, "w2", g1);
    claim(store, "w3", a2);
    claim(store, "w4", g2);
    // acme runs two, globex two; acme's a1 ends: acme runs fewer.
    done(store, &l1);
    claim(store, "w5", a3);
    // Priority comes before fairness: acme (two running) with a high job beats an idle
    // organisation's normal one.
    let (initech, _) = tenant(store, "initech");
    let i1 = pending_at(store, initech, "i1", Priority::Normal);
    let urgent = pending_at(store, acme, "urgent", Priority::High);
    claim(store, "w6", urgent);
    claim(store, "w7", i1);
}

fn chunk_jobs_count_as_running_and_inherit_the_priority(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let (globex, _) = tenant(store, "globex");
    let big = pending_at(store, acme, "big", Priority::High);
    let parent = claim(store, "w0", big);
    let chunks = split(store, &parent, 3);
    for &c in &chunks {
        assert_eq!(
            job(store, c).priority,
            Priority::High,
            "a chunk has its parent's"
        );
    }
    // Uploaded after the split: younger than every chunk, and high too.
    let g1 = pending_at(store, globex, "g1", Priority::High);
    // The parent gave its lease back: acme runs nothing, so its oldest chunk goes first; then
    // acme runs a chunk and globex nothing.
    claim(store, "w1", chunks[0]);
    claim(store, "w2", g1);
    claim(store, "w3", chunks[1]);
    claim(store, "w4", chunks[2]);
}

fn org_max_running_holds_an_organisations_jobs_and_chunks_back(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let (globex, _) = tenant(store, "globex");
    let cap = 2;
    let big = pending_at(store, acme, "big", Priority::High);
    let a2 = pending_at(store, acme, "a2", Priority::High);
    let g1 = pending_at(store, globex, "g1", Priority::Low);
    let parent = store
        .job_claim("w0", LONG_LEASE_MS, cap)
        .unwrap()
        .expect("a claim")
        .1;
    assert_eq!(parent.job_id, big);
    let chunks = split(store, &parent, 3);
    // The parent gave its lease back. acme's other job and a chunk fill its cap; the other
    // chunks wait, globex's low job does not.
    let la2 = next_capped(store, "w1", cap).expect("a claim");
    assert_eq!(la2.job_id, a2);
    let lc0 = next_capped(store, "w2", cap).expect("a claim");
    assert_eq!(lc0.job_id, chunks[0]);
    let lg = next_capped(store, "w3", cap).expect("a claim");
    assert_eq!(lg.job_id, g1, "acme is at its cap");
    assert!(
        next_capped(store, "w4", cap).is_none(),
        "acme is at its cap"
    );
    done(store, &lc0);
    let lc1 = next_capped(store, "w4", cap).expect("a claim");
    assert_eq!(lc1.job_id, chunks[1]);
    assert!(next_capped(store, "w5", cap).is_none());
    // Without a cap the same chunk is claimable: the cap alone held it.
    assert_eq!(next_claim(store, "w5").map(|c| c.0), Some(chunks[2]));
    done(store, &la2);
    done(store, &lg);
}

fn an_expired_lease_does_not_count_towards_the_cap(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let a1 = pending_at(store, acme, "a1", Priority::Normal);
    let a2 = pending_at(store, acme, "a2", Priority::Normal);
    let (first, _) = store.job_claim("w1", 1, 1).unwrap().expect("a claim");
    assert_eq!(first.id, a1);
    // Once a1's lease lapsed, acme runs nothing and may claim again under a cap of 1: its
    // oldest claimable job, a1 itself (a bounded poll while the 1 ms lease runs out).
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        if let Some(lease) = next_capped(store, "w2", 1) {
            break lease;
        }
        assert!(Instant::now() < deadline, "the expired lease still counts");
        std::thread::yield_now();
    };
    assert_eq!(again.job_id, a1);
    assert!(next_capped(store, "w3", 1).is_none(), "a1 runs again");
    assert_eq!(next_claim(store, "w3").map(|c| c.0), Some(a2));
}

fn a_high_job_still_waits_for_the_writer_of_its_dataset(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let (globex, _) = tenant(store, "globex");
    let running = pending(store, acme, "running");
    let waiting = pending(store, acme, "waiting");
    let lr = claim(store, "w1", running);
    let urgent = created(
        store
            .job_insert(
                &NewJob {
                    priority: Priority::High,
                    ..upload(acme, "urgent")
                },
                None,
                None,
            )
            .unwrap(),
    );
    let g1 = pending_at(store, globex, "g1", Priority::Low);
    // acme's items dataset is being written: neither of its jobs starts, whatever its priority.
    let lg = claim(store, "w2", g1);
    assert!(next_claim(store, "w3").is_none(), "items is being written");
    done(store, &lr);
    // And the earlier upload goes first: priority never reorders one dataset's jobs.
    let lw = claim(store, "w3", waiting);
    assert!(next_claim(store, "w4").is_none());
    done(store, &lw);
    claim(store, "w4", urgent);
    done(store, &lg);
}

fn a_retry_from_the_start_keeps_the_priority(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let id = pending_at(store, acme, "once", Priority::Low);
    assert_eq!(
        store.job_control(id, Control::Cancel, None).unwrap(),
        Controlled::Done(id)
    );
    let Controlled::Done(again) = store
        .job_control(id, Control::Retry { from_start: true }, None)
        .unwrap()
    else {
        panic!("retry refused");
    };
    assert_ne!(again, id);
    assert_eq!(job(store, again).priority, Priority::Low);
}

fn queue_positions_follow_the_claim_order(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let (globex, _) = tenant(store, "globex");
    let a1 = pending_at(store, acme, "a1", Priority::Normal);
    let a2 = pending_at(store, acme, "a2", Priority::Normal);
    let behind = pending_into(store, acme, "a1", "behind-a1");
    let g1 = pending_at(store, globex, "g1", Priority::Normal);
    let low = pending_at(store, globex, "g2", Priority::Low);
    let high = pending_at(store, globex, "g3", Priority::High);
    let position = |id| job(store, id).queue_position;
    // Nobody runs anything: priority, then id; `behind` waits for a1 of its dataset.
    // `behind` waits for a1 and counts nobody ahead of the others.
    let expect = [(high, 1), (a1, 2), (a2, 3), (g1, 4), (low, 5)];
    for (id, want) in expect {
        assert_eq!(position(id), Some(want), "job {id}");
    }
    assert_eq!(
        position(behind),
        Some(4),
        "after a1 (its dataset), high and a2"
    );
    let lh = claim(store, "w1", high);
    assert_eq!(
        position(high),
        None,
        "a running job has no place in the queue"
    );
    // globex runs one, acme none: acme's jobs go first now.
    assert_eq!(position(a1), Some(1));
    assert_eq!(position(a2), Some(2));
    assert_eq!(position(g1), Some(3));
    claim(store, "w2", a1);
    // One each: by id again; `behind` is held back by a1 and counts nobody else ahead of it.
    assert_eq!(position(a2), Some(1));
    assert_eq!(position(g1), Some(2));
    claim(store, "w3", a2);
    claim(store, "w4", g1);
    done(store, &lh);
    // The listed jobs carry it too.
    let (listed, _) = store
        .job_list(&sluice::store::JobFilter {
            org_id: Some(globex),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let low_listed = listed.iter().find(|j| j.id == low).expect("listed");
    assert_eq!(low_listed.queue_position, Some(1));
}

// --- Claims and leases.

fn two_workers_racing_for_one_pending_job_exactly_one_claims_it(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let id = pending(store, org, "race");
    let start = Barrier::new(2);
    let claims: Vec<Option<Lease>> = std::thread::scope(|s| {
        let workers: Vec<_> = ["worker-a", "worker-b"]
            .into_iter()
            .map(|owner| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    store
                        .job_claim(owner, LONG_LEASE_MS, 0)
                        .unwrap()
                        .map(|(_, l)| l)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let won: Vec<&Lease> = claims.iter().flatten().collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one worker claims the job: {claims:?}"
    );
    assert_eq!(won[0].job_id, id);
    let j = job(store, id);
    assert_eq!(j.status, JobStatus::Processing);
    assert_eq!(j.attempts, 1, "claimed once");
    assert!(
        store
            .job_claim("worker-c", LONG_LEASE_MS, 0)
            .unwrap()
            .is_none()
    );
}

fn an_expired_lease_is_claimed_by_another_owner_and_the_first_loses_it(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let id = pending(store, org, "expiring");
    let (first_job, first) = store.job_claim("worker-a", 1, 0).unwrap().expect("claimed");
    assert_eq!(first_job.id, id);
    assert_eq!(first_job.attempts, 1);
    let (second_job, second) = claim_once_expired(store, "worker-b");
    assert_eq!(second_job.id, id);
    assert_eq!(second_job.attempts, first_job.attempts + 1);
    assert_eq!(second_job.lease_owner.as_deref(), Some("worker-b"));
    assert_ne!(first.token, second.token);
    assert!(
        !store.job_heartbeat(&first, LONG_LEASE_MS).unwrap(),
        "the first owner's heartbeat is refused"
    );
    assert!(
        !store
            .job_finish(&first, None, JobStatus::Completed, None)
            .unwrap(),
        "the first owner cannot finish the job"
    );
    assert!(store.job_heartbeat(&second, LONG_LEASE_MS).unwrap());
    assert_eq!(status(store, id), JobStatus::Processing);
}

fn a_stale_lease_cannot_commit_a_batch_after_the_job_was_claimed_again(store: &dyn JobStore) {
    let datasets = datasets();
    store.datasets_prepare(&datasets).unwrap();
    let items = datasets.get("items").unwrap();
    let (org, _) = tenant(store, "acme");
    let id = pending(store, org, "stale");
    let (_, stale) = store.job_claim("worker-a", 1, 0).unwrap().expect("claimed");
    let (_, current) = claim_once_expired(store, "worker-b");

    let mut late = store
        .batch_sink(items.clone(), stale, Mode::Upsert, None, org)
        .unwrap();
    let refused = late.commit(&one_row_batch("A-1", "from the stale lease"), 1);
    assert!(
        matches!(refused, Err(SinkError::LeaseLost)),
        "the stale lease's commit fails with LeaseLost, got {refused:?}"
    );
    let j = job(store, id);
    assert_eq!((j.rows_done, j.created_count, j.batches_done), (0, 0, 0));

    // The current owner's commit of the same row goes through: nothing of the refused one stayed.
    let mut sink = store
        .batch_sink(items, current, Mode::Upsert, None, org)
        .unwrap();
    let counts = sink
        .commit(&one_row_batch("A-1", "from the current lease"), 1)
        .expect("the current lease commits");
    assert_eq!((counts.created, counts.updated, counts.errors), (1, 0, 0));
    let j = job(store, id);
    assert_eq!((j.rows_done, j.created_count, j.batches_done), (1, 1, 1));
}

fn the_database_answers_a_ping(store: &dyn JobStore) {
    store.database_ping().expect("a live database answers");
}

/// What a restart does to sessions, without stopping the shared server: the server ends every
/// session of the case's database (FATAL 57P01, socket closed). The batch writer must open a new
/// connection (and staging table) by itself, and the pool must not hand out a dead one.
#[test]
fn postgres_sessions_ended_by_the_server_are_replaced_not_reused() {
    if !common::postgres_wanted() {
        return;
    }
    let db = PgDatabase::create();
    let store = PgStore::open(&db.url(), LOCK_TIMEOUT, 10, POOL_WAIT).expect("open");
    let datasets = datasets();
    store.datasets_prepare(&datasets).unwrap();
    let items = datasets.get("items").unwrap();
    let (org, _) = tenant(&store, "acme");
    let id = pending(&store, org, "ended");
    let (_, lease) = store
        .job_claim("w", LONG_LEASE_MS, 0)
        .unwrap()
        .expect("claimed");
    let mut sink = store
        .batch_sink(items, lease, Mode::Upsert, None, org)
        .unwrap();
    sink.commit(&one_row_batch("A-1", "before"), 1)
        .expect("first batch");

    let mut admin = ::postgres::Client::connect(&db.url(), ::postgres::NoTls).expect("connect");
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    let start = Instant::now();
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sessions still there"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Every pooled connection is dead now. The one just used may not know yet (the client reads
    // the server's goodbye with its next request): at most that first call fails, as
    // `Unavailable` (a 503 for the API), and it makes every other idle connection prove itself,
    // so every later call succeeds.
    match store.database_ping() {
        Ok(()) => {}
        Err(StoreError::Unavailable(_)) => {}
        Err(e) => panic!("a lost connection must read as unavailable, got {e:?}"),
    }
    for _ in 0..5 {
        store.database_ping().expect("the pool reconnected");
    }
    assert_eq!(job(&store, id).rows_done, 1);
    // The writer's session is gone, with its temporary staging table: the next batch goes
    // through on a new one, at the first attempt.
    let counts = sink
        .commit(&one_row_batch("A-2", "after"), 2)
        .expect("the batch writer reconnected by itself");
    assert_eq!(counts.created, 1);
    let j = job(&store, id);
    assert_eq!((j.rows_done, j.created_count, j.batches_done), (2, 2, 2));
}

// --- Operator control.

fn every_allowed_transition_is_done_and_every_other_is_a_conflict(store: &dyn JobStore) {
    use JobStatus::*;
    let (org, _) = tenant(store, "acme");
    let checkpoint = Control::Retry { from_start: false };
    let from_start = Control::Retry { from_start: true };
    // (state before, action, state after; `None`: refused as a conflict).
    let table: &[(JobStatus, Control, Option<JobStatus>)] = &[
        (Pending, Control::Cancel, Some(Cancelled)),
        (Processing, Control::Cancel, Some(Cancelled)),
        (Paused, Control::Cancel, Some(Cancelled)),
        (Completed, Control::Cancel, None),
        (Failed, Control::Cancel, None),
        (Cancelled, Control::Cancel, None),
        (Pending, Control::Pause, Some(Paused)),
        (Processing, Control::Pause, Some(Paused)),
        (Paused, Control::Pause, Some(Paused)),
        (Completed, Control::Pause, None),
        (Failed, Control::Pause, None),
        (Cancelled, Control::Pause, None),
        (Pending, Control::Resume, Some(Pending)),
        (Processing, Control::Resume, Some(Processing)),
        (Paused, Control::Resume, Some(Pending)),
        (Completed, Control::Resume, None),
        (Failed, Control::Resume, None),
        (Cancelled, Control::Resume, None),
        (Pending, checkpoint, None),
        (Processing, checkpoint, None),
        (Paused, checkpoint, None),
        (Completed, checkpoint, None),
        (Failed, checkpoint, Some(Pending)),
        (Cancelled, checkpoint, Some(Pending)),
        (Pending, from_start, None),
        (Processing, from_start, None),
        (Paused, from_start, None),
        (Completed, from_start, None),
        // From the start: the old job stays as it was; a new pending job repeats it.
        (Failed, from_start, Some(Failed)),
        (Cancelled, from_start, Some(Cancelled)),
    ];
    for (n, &(before, action, after)) in table.iter().enumerate() {
        let what = format!("{action:?} on a {} job", before.as_str());
        let (id, lease) = job_in(store, org, before, &format!("job-{n}"));
        let answer = store.job_control(id, action, None).unwrap();
        match after {
            None => {
                let verb = match action {
                    Control::Cancel => "cancel",
                    Control::Pause => "pause",
                    Control::Resume => "resume",
                    Control::Retry { .. } => "retry",
                };
                assert_eq!(
                    answer,
                    Controlled::Conflict(format!(
                        "cannot {verb} a job that is {}",
                        before.as_str()
                    )),
                    "{what}"
                );
                assert_eq!(
                    status(store, id),
                    before,
                    "{what}: a refusal changes nothing"
                );
            }
            Some(after) => {
                let j = job(store, id);
                assert_eq!(j.status, after, "{what}");
                if action == from_start {
                    let Controlled::Done(new) = answer else {
                        panic!("{what}: {answer:?}");
                    };
                    assert_ne!(new, id, "{what}: a new job");
                    let retry = job(store, new);
                    assert_eq!(retry.status, Pending, "{what}");
                    assert_eq!(retry.retry_of, Some(id), "{what}");
                    assert_eq!(retry.sha256, j.sha256, "{what}: the same file");
                    store.job_delete(new, None).unwrap();
                } else {
                    assert_eq!(answer, Controlled::Done(id), "{what}");
                }
                if action == checkpoint {
                    assert_eq!(j.error, None, "{what}: the old failure is cleared");
                    assert_eq!(j.completed_at, None, "{what}");
                }
                if after == Cancelled && before != Cancelled {
                    assert!(j.completed_at.is_some(), "{what}: cancelled at");
                }
            }
        }
        // An operator's cancel or pause takes a running job's lease away.
        if let Some(lease) = lease {
            let kept = matches!(after, Some(Processing)) || after.is_none();
            assert_eq!(
                store.job_heartbeat(&lease, LONG_LEASE_MS).unwrap(),
                kept,
                "{what}: the worker's heartbeat"
            );
        }
        // Out of the way, so that each row's job is the only claimable one.
        assert!(store.job_delete(id, None).unwrap().is_some());
    }
}

fn control_of_a_missing_job_is_not_found(store: &dyn JobStore) {
    for action in [
        Control::Cancel,
        Control::Pause,
        Control::Resume,
        Control::Retry { from_start: false },
        Control::Retry { from_start: true },
    ] {
        assert_eq!(
            store.job_control(4242, action, None).unwrap(),
            Controlled::NotFound,
            "{action:?}"
        );
    }
    assert_eq!(store.job_delete(4242, None).unwrap(), None);
}

fn a_retry_is_refused_while_the_same_file_is_importing_again(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let (old, _) = job_in(store, org, JobStatus::Cancelled, "same-file");
    let again = pending(store, org, "same-file");
    for from_start in [false, true] {
        assert_eq!(
            store
                .job_control(old, Control::Retry { from_start }, None)
                .unwrap(),
            Controlled::Conflict(format!("the same file is already importing as job {again}")),
            "from_start: {from_start}"
        );
    }
    assert_eq!(status(store, old), JobStatus::Cancelled);
}

fn a_chunk_job_refuses_control_and_names_its_parent(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let parent = processing(store, org, "split");
    let chunks = split(store, &parent, 2);
    let p = parent.job_id;
    for action in [
        Control::Cancel,
        Control::Pause,
        Control::Resume,
        Control::Retry { from_start: false },
        Control::Retry { from_start: true },
    ] {
        assert_eq!(
            store.job_control(chunks[0], action, None).unwrap(),
            Controlled::Conflict(format!("this job is a part of job {p}; act on job {p}")),
            "{action:?}"
        );
    }
    assert_eq!(status(store, chunks[0]), JobStatus::Pending);
    // The parent is what operators act on: pausing it pauses its chunks, and resuming gives it
    // back as `processing` (driven by its chunks), never `pending` (which would split it again).
    assert_eq!(
        store.job_control(p, Control::Pause, None).unwrap(),
        Controlled::Done(p)
    );
    assert_eq!(status(store, chunks[1]), JobStatus::Paused);
    assert!(
        store
            .job_claim("worker", LONG_LEASE_MS, 0)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.job_control(p, Control::Resume, None).unwrap(),
        Controlled::Done(p)
    );
    assert_eq!(status(store, p), JobStatus::Processing);
    assert_eq!(status(store, chunks[0]), JobStatus::Pending);
    claim(store, "worker", chunks[0]);
}

// --- Tokens.

fn a_token_is_found_with_its_user_organisation_and_role_until_revoked(store: &dyn JobStore) {
    let (org, admin) = tenant(store, "acme");
    let member = store
        .user_insert(org, "bob", Role::Member, None)
        .unwrap()
        .expect("new user");
    let admin_token = store
        .token_insert("ci", "hash-admin", admin, None, None)
        .unwrap();
    let member_token = store
        .token_insert("laptop", "hash-member", member, None, None)
        .unwrap();
    assert_ne!(admin_token, member_token);

    let p = store.token_find("hash-admin").unwrap().expect("live token");
    assert_eq!(
        (p.token_id, p.user_id, p.org_id, p.role),
        (admin_token, admin, org, Role::Admin)
    );
    assert_eq!(p.token_hash, "hash-admin");
    assert_eq!(p.expires_at, None);
    let p = store
        .token_find("hash-member")
        .unwrap()
        .expect("live token");
    assert_eq!(
        (p.token_id, p.user_id, p.org_id, p.role),
        (member_token, member, org, Role::Member)
    );
    assert_eq!(store.token_find("hash-unknown").unwrap(), None);

    assert_eq!(
        store.token_revoke(member_token, None, None).unwrap(),
        Some(org)
    );
    assert_eq!(store.token_find("hash-member").unwrap(), None);
    assert_eq!(
        store.token_revoke(member_token, None, None).unwrap(),
        None,
        "a revoked token is not live"
    );
    assert!(store.token_find("hash-admin").unwrap().is_some());
    assert_eq!(store.token_org(member_token).unwrap(), Some(org));
    let listed = store.token_list(Some(org)).unwrap();
    let revoked = listed.iter().find(|t| t.id == member_token).unwrap();
    assert!(revoked.revoked_at.is_some(), "listed, as revoked");
    assert_eq!(store.token_count().unwrap(), 1, "live tokens");
}

fn an_expired_token_is_not_found(store: &dyn JobStore) {
    let (_, user) = tenant(store, "acme");
    let past = Utc::now() - chrono::Duration::minutes(1);
    let future = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();
    store
        .token_insert("old", "hash-past", user, Some(past), None)
        .unwrap();
    store
        .token_insert("new", "hash-future", user, Some(future), None)
        .unwrap();
    assert_eq!(store.token_find("hash-past").unwrap(), None);
    let p = store
        .token_find("hash-future")
        .unwrap()
        .expect("live token");
    assert_eq!(p.expires_at, Some(future));
}

fn a_token_cannot_be_revoked_from_another_organisation(store: &dyn JobStore) {
    let (acme, ada) = tenant(store, "acme");
    let (globex, _) = tenant(store, "globex");
    let id = store
        .token_insert("ci", "hash-acme", ada, None, None)
        .unwrap();
    assert_eq!(store.token_revoke(id, Some(globex), None).unwrap(), None);
    assert!(
        store.token_find("hash-acme").unwrap().is_some(),
        "still live after a foreign revoke"
    );
    assert_eq!(
        store.token_revoke(id, Some(acme), None).unwrap(),
        Some(acme)
    );
    assert_eq!(store.token_find("hash-acme").unwrap(), None);
}

/// Where the backends must agree (they drift today): re-inserting a hash that is taken.
///
/// `sluice serve` (src/cli/serve.rs, `bootstrap_token`) calls `token_insert` for
/// `SLUICE_ADMIN_TOKEN` whenever `token_find` does not find it, meaning "not there yet" or
/// "revoked or expired", and logs "SLUICE_ADMIN_TOKEN was revoked or expired; not restored"
/// only when `token_insert` returns an error. So the contract is: inserting a taken hash is an
/// error; it creates no second token, does not revive the revoked one, and writes no audit line.
/// (Returning the existing id instead would keep the token dead too, but would make that
/// warning unreachable, and would hand a caller an id as if a token had been created.)
fn inserting_a_taken_token_hash_fails_and_does_not_revive_a_revoked_token(store: &dyn JobStore) {
    let (org, admin) = tenant(store, "acme");
    let first = store
        .token_insert("SLUICE_ADMIN_TOKEN", "hash-admin", admin, None, None)
        .unwrap();
    assert_eq!(store.token_revoke(first, None, None).unwrap(), Some(org));
    let tokens_before = store.token_list(None).unwrap().len();
    let (_, audit_before) = store.audit_list(org, 100, 0).unwrap();

    let again = store.token_insert(
        "SLUICE_ADMIN_TOKEN",
        "hash-admin",
        admin,
        None,
        Some(&audit(org, admin, "token.create")),
    );
    assert!(
        again.is_err(),
        "token_insert of a taken hash must fail (serve.rs warns \"not restored\" only on an \
         error), got {again:?}"
    );
    assert_eq!(store.token_list(None).unwrap().len(), tokens_before);
    assert_eq!(
        store.token_find("hash-admin").unwrap(),
        None,
        "stays revoked"
    );
    assert_eq!(store.audit_list(org, 100, 0).unwrap().1, audit_before);
}

/// Where the backends must agree: `token_find` marks the token used (shown to admins as
/// `lastUsedAt`), and every request authenticates, however many arrive at once.
fn token_find_marks_last_use_and_succeeds_when_called_many_times_at_once(store: &dyn JobStore) {
    let (org, user) = tenant(store, "acme");
    let id = store
        .token_insert("busy", "hash-busy", user, None, None)
        .unwrap();
    let last_used = || {
        store
            .token_list(Some(org))
            .unwrap()
            .into_iter()
            .find(|t| t.id == id)
            .expect("listed")
            .last_used_at
    };
    assert_eq!(last_used(), None, "never used yet");
    let before = Utc::now() - chrono::Duration::seconds(5);
    assert!(store.token_find("hash-busy").unwrap().is_some());
    let after = Utc::now() + chrono::Duration::seconds(5);
    let used = last_used().expect("marked as used");
    assert!(
        before <= used && used <= after,
        "last used at {used}, between {before} and {after}"
    );

    let (threads, calls) = (8, 25);
    let start = Barrier::new(threads);
    let found: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let mut n = 0;
                    for _ in 0..calls {
                        match store.token_find("hash-busy") {
                            Ok(Some(p)) if p.token_id == id => n += 1,
                            other => return Err(format!("{other:?}")),
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for f in &found {
        assert_eq!(f, &Ok(calls), "every lookup finds the token: {found:?}");
    }
    assert!(last_used().is_some_and(|t| t >= used));
}

// --- Chunk jobs.

fn a_failing_chunk_fails_the_parent_naming_the_part_and_cancels_the_rest(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let parent = processing(store, org, "big");
    let chunks = split(store, &parent, 3);
    let p = parent.job_id;
    let j = job(store, p);
    assert_eq!(j.status, JobStatus::Processing);
    assert_eq!((j.chunks_total, j.chunks_completed), (Some(3), 0));
    assert_eq!(j.total_rows, Some(30));
    assert!(
        !store.job_heartbeat(&parent, LONG_LEASE_MS).unwrap(),
        "the parent's lease was given back"
    );

    let first = claim(store, "worker-a", chunks[0]);
    let second = claim(store, "worker-b", chunks[1]);
    assert!(
        store
            .job_finish(&first, None, JobStatus::Completed, None)
            .unwrap()
    );
    assert_eq!(job(store, p).chunks_completed, 1);
    assert_eq!(status(store, p), JobStatus::Processing);
    assert!(
        store
            .job_finish(
                &second,
                None,
                JobStatus::Failed,
                Some("the file cannot be read")
            )
            .unwrap()
    );

    let j = job(store, p);
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.error.as_deref(), Some("the file cannot be read"));
    assert!(j.completed_at.is_some());
    assert_eq!(status(store, chunks[0]), JobStatus::Completed);
    assert_eq!(status(store, chunks[1]), JobStatus::Failed);
    assert_eq!(status(store, chunks[2]), JobStatus::Cancelled);
    assert!(
        store
            .job_claim("worker-c", LONG_LEASE_MS, 0)
            .unwrap()
            .is_none()
    );
}

fn the_last_chunks_completing_at_once_complete_the_parent_exactly_once(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let parent = processing(store, org, "big");
    let chunks = split(store, &parent, 3);
    let p = parent.job_id;
    let leases: Vec<Lease> = chunks
        .iter()
        .enumerate()
        .map(|(i, &c)| claim(store, &format!("worker-{i}"), c))
        .collect();
    assert!(
        store
            .job_finish(&leases[0], None, JobStatus::Completed, None)
            .unwrap()
    );
    assert_eq!(status(store, p), JobStatus::Processing);

    // The two last chunks finish at the same moment.
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        for lease in &leases[1..] {
            let start = &start;
            s.spawn(move || {
                start.wait();
                assert!(
                    store
                        .job_finish(lease, None, JobStatus::Completed, None)
                        .unwrap()
                );
            });
        }
    });

    let j = job(store, p);
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.chunks_completed, 3);
    let completions = store
        .events_after(0, Some(p), 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "status" && e.status == JobStatus::Completed)
        .count();
    assert_eq!(completions, 1, "the parent completed exactly once");
    assert!(
        !store
            .job_finish(&leases[2], None, JobStatus::Completed, None)
            .unwrap(),
        "a finished chunk's lease is spent"
    );
    assert_eq!(job(store, p).chunks_completed, 3);
}

// --- The job event log.

fn events_come_back_in_order_resume_after_a_position_and_filter_by_job(store: &dyn JobStore) {
    assert_eq!(store.events_last_seq().unwrap(), 0, "a fresh log is empty");
    let (org, _) = tenant(store, "acme");
    let a = pending(store, org, "a");
    let b = pending(store, org, "b");
    let lease = claim(store, "worker", a);
    assert!(store.job_set_total(&lease, 10).unwrap());
    assert_eq!(
        store.job_control(b, Control::Pause, None).unwrap(),
        Controlled::Done(b)
    );

    let all = store.events_after(0, None, 100).unwrap();
    let seen: Vec<(JobId, &str, JobStatus)> = all
        .iter()
        .map(|e| (e.job_id, e.kind.as_str(), e.status))
        .collect();
    assert_eq!(
        seen,
        [
            (a, "created", JobStatus::Pending),
            (b, "created", JobStatus::Pending),
            (a, "status", JobStatus::Processing),
            (a, "progress", JobStatus::Processing),
            (b, "status", JobStatus::Paused),
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "in seq order");
    assert_eq!(all[3].total_rows, Some(10));
    assert_eq!(all[0].dataset, "items");
    assert_eq!(all[0].filename, "a.csv");
    assert!(
        all.iter().all(|e| e.org_id == Some(org)),
        "every event names its job's organisation"
    );
    assert_eq!(store.events_last_seq().unwrap(), all[4].seq);

    fn seqs(events: &[JobEvent]) -> Vec<i64> {
        events.iter().map(|e| e.seq).collect()
    }
    let rest = store.events_after(all[1].seq, None, 100).unwrap();
    assert_eq!(seqs(&rest), seqs(&all[2..]), "resumes after a position");
    let first_two = store.events_after(0, None, 2).unwrap();
    assert_eq!(seqs(&first_two), seqs(&all[..2]), "limit");
    let of_b = store.events_after(0, Some(b), 100).unwrap();
    assert_eq!(seqs(&of_b), [all[1].seq, all[4].seq], "only job b's");
    assert!(
        store
            .events_after(all[4].seq, None, 100)
            .unwrap()
            .is_empty()
    );
}

// --- Webhook deliveries.

/// A webhook and one completed job: the delivery to plan from the backlog.
fn completed_job_for_a_webhook(store: &dyn JobStore) -> (i64, NewDelivery, i64, i64) {
    let (org, _) = tenant(store, "acme");
    let hook = store
        .webhook_insert(
            "http://hooks.example/sluice",
            &["job.completed".to_string()],
            "whsec_test",
            None,
            org,
        )
        .unwrap();
    assert_eq!(hook.org_id, Some(org));
    let (other, _) = tenant(store, "globex");
    assert!(store.webhook_list(Some(other)).unwrap().is_empty());
    assert_eq!(store.webhook_list(Some(org)).unwrap().len(), 1);
    assert_eq!(store.webhook_list(None).unwrap().len(), 1);
    let lease = processing(store, org, "done");
    assert!(
        store
            .job_finish(&lease, None, JobStatus::Completed, None)
            .unwrap()
    );
    let (cursor, ends) = store.delivery_backlog(100).unwrap();
    assert_eq!(ends.len(), 1, "one job end after the cursor: {ends:?}");
    let end = &ends[0];
    assert_eq!(
        (end.job_id, end.kind.as_str(), end.status),
        (lease.job_id, "status", JobStatus::Completed)
    );
    let delivery = NewDelivery {
        webhook_id: hook.id,
        event_seq: end.seq,
        event: "job.completed".into(),
        job_id: end.job_id,
        payload: format!("{{\"id\":\"evt_{}\"}}", end.seq),
    };
    (hook.id, delivery, cursor, end.seq)
}

fn two_dispatchers_planning_the_same_backlog_insert_its_deliveries_once(store: &dyn JobStore) {
    let (hook, delivery, cursor, last) = completed_job_for_a_webhook(store);
    let start = Barrier::new(2);
    let moved: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (start, delivery) = (&start, delivery.clone());
                s.spawn(move || {
                    start.wait();
                    store
                        .delivery_insert_many(cursor, last, std::slice::from_ref(&delivery))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        moved.iter().filter(|m| **m).count(),
        1,
        "the cursor moves exactly once: {moved:?}"
    );
    let (deliveries, total) = store.delivery_list(hook, 10, 0).unwrap();
    assert_eq!(total, 1);
    assert_eq!(deliveries[0].state, DeliveryState::Pending);
    assert_eq!(deliveries[0].job_id, delivery.job_id);
    assert!(deliveries[0].attempts.is_empty());
    let (cursor_now, ends) = store.delivery_backlog(100).unwrap();
    assert_eq!(cursor_now, last);
    assert!(ends.is_empty(), "nothing left to plan");
    assert!(
        !store
            .delivery_insert_many(cursor, last, std::slice::from_ref(&delivery))
            .unwrap(),
        "a dispatcher behind the cursor writes nothing"
    );
}

fn a_claimed_delivery_is_not_claimed_again_while_held_and_attempts_are_recorded(
    store: &dyn JobStore,
) {
    let (hook, delivery, cursor, last) = completed_job_for_a_webhook(store);
    assert!(
        store
            .delivery_insert_many(cursor, last, std::slice::from_ref(&delivery))
            .unwrap()
    );
    let now = Utc::now().timestamp_millis() + 1000;
    let hold = 60_000;
    let due = store.delivery_claim_due(now, hold, 10).unwrap();
    assert_eq!(due.len(), 1);
    let d = &due[0];
    assert_eq!(
        (
            d.url.as_str(),
            d.secret.as_str(),
            d.event.as_str(),
            d.attempts
        ),
        (
            "http://hooks.example/sluice",
            "whsec_test",
            "job.completed",
            0
        )
    );
    assert_eq!(d.payload, delivery.payload);
    assert!(
        store.delivery_claim_due(now, hold, 10).unwrap().is_empty(),
        "held: not claimed again"
    );
    assert!(
        store
            .delivery_claim_due(now + hold as i64 - 1, hold, 10)
            .unwrap()
            .is_empty(),
        "still held just before the hold ends"
    );

    // The first attempt fails and is due again at `now`; the second is delivered.
    let at = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let failed = DeliveryAttempt {
        attempt: 1,
        at,
        http_status: Some(500),
        error: Some("the receiver answered 500".into()),
        duration_ms: 12,
    };
    store
        .delivery_record(d.id, &failed, DeliveryState::Pending, now)
        .unwrap();
    let (listed, _) = store.delivery_list(hook, 10, 0).unwrap();
    assert_eq!(listed[0].state, DeliveryState::Pending);
    assert_eq!(listed[0].attempts.len(), 1);
    assert_eq!(
        listed[0].next_attempt_at.map(|t| t.timestamp_millis()),
        Some(now)
    );
    let due = store.delivery_claim_due(now, hold, 10).unwrap();
    assert_eq!(due.len(), 1, "due again after a failed attempt");
    assert_eq!(due[0].attempts, 1);
    let delivered = DeliveryAttempt {
        attempt: 2,
        at,
        http_status: Some(204),
        error: None,
        duration_ms: 3,
    };
    store
        .delivery_record(d.id, &delivered, DeliveryState::Delivered, now)
        .unwrap();

    let (listed, total) = store.delivery_list(hook, 10, 0).unwrap();
    assert_eq!(total, 1);
    let l = &listed[0];
    assert_eq!(l.state, DeliveryState::Delivered);
    assert_eq!(l.next_attempt_at, None);
    let attempts: Vec<(u32, Option<u16>, Option<&str>, u64)> = l
        .attempts
        .iter()
        .map(|a| (a.attempt, a.http_status, a.error.as_deref(), a.duration_ms))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, Some(500), Some("the receiver answered 500"), 12),
            (2, Some(204), None, 3)
        ]
    );
    assert!(l.attempts.iter().all(|a| a.at == at));
    assert!(
        store
            .delivery_claim_due(now + 10 * hold as i64, hold, 10)
            .unwrap()
            .is_empty(),
        "a delivered delivery is never due"
    );
}

// --- The audit log.

fn an_audited_action_writes_its_line_and_a_refused_one_writes_none(store: &dyn JobStore) {
    let (org, user) = tenant(store, "acme");
    let (other_org, other_user) = tenant(store, "globex");
    let lines = || {
        let (records, total) = store.audit_list(org, 100, 0).unwrap();
        assert_eq!(records.len() as u64, total);
        records
            .into_iter()
            .map(|r| {
                (
                    r.entry.action,
                    r.entry.target.unwrap_or_default(),
                    r.entry.detail,
                )
            })
            .collect::<Vec<_>>()
    };
    let line =
        |action: &str, target: String, detail: Option<String>| (action.to_string(), target, detail);

    let id = created(
        store
            .job_insert(&upload(org, "a"), None, Some(&audit(org, user, "upload")))
            .unwrap(),
    );
    assert_eq!(lines(), [line("upload", format!("job:{id}"), None)]);
    let (records, _) = store.audit_list(org, 1, 0).unwrap();
    assert_eq!(
        (records[0].entry.org_id, records[0].entry.user_id),
        (Some(org), Some(user))
    );

    // Refused: the same file again while it is active, a retry of a pending job, deleting a job
    // that does not exist.
    assert!(matches!(
        store
            .job_insert(&upload(org, "a"), None, Some(&audit(org, user, "upload")))
            .unwrap(),
        Inserted::ActiveDuplicate(dup) if dup == id
    ));
    assert!(matches!(
        store
            .job_control(
                id,
                Control::Retry { from_start: true },
                Some(&audit(org, user, "retry"))
            )
            .unwrap(),
        Controlled::Conflict(_)
    ));
    assert_eq!(
        store
            .job_delete(4242, Some(&audit(org, user, "delete")))
            .unwrap(),
        None
    );
    assert_eq!(lines().len(), 1, "refused actions write no line");

    assert_eq!(
        store
            .job_control(id, Control::Cancel, Some(&audit(org, user, "cancel")))
            .unwrap(),
        Controlled::Done(id)
    );
    let Controlled::Done(new) = store
        .job_control(
            id,
            Control::Retry { from_start: true },
            Some(&audit(org, user, "retry")),
        )
        .unwrap()
    else {
        panic!("retry from the start is done");
    };
    assert_eq!(
        lines(),
        [
            line("retry", format!("job:{id}"), Some(format!("new job {new}"))),
            line("cancel", format!("job:{id}"), None),
            line("upload", format!("job:{id}"), None),
        ],
        "newest first"
    );

    // Tokens: a revoke from another organisation is refused and writes no line anywhere.
    let token = store
        .token_insert(
            "ci",
            "hash-acme",
            user,
            None,
            Some(&audit(org, user, "token.create")),
        )
        .unwrap();
    assert_eq!(
        store
            .token_revoke(
                token,
                Some(other_org),
                Some(&audit(other_org, other_user, "token.revoke"))
            )
            .unwrap(),
        None
    );
    assert_eq!(store.audit_list(other_org, 100, 0).unwrap().1, 0);
    assert_eq!(
        store
            .token_revoke(token, Some(org), Some(&audit(org, user, "token.revoke")))
            .unwrap(),
        Some(org)
    );
    let all = lines();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0], line("token.revoke", format!("token:{token}"), None));
    assert_eq!(all[1], line("token.create", format!("token:{token}"), None));
}

/// The orphan sweep's questions: which upload files no job needs any more.
fn only_blobs_that_no_live_job_references_are_orphans(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    job_in(store, org, JobStatus::Completed, "a");
    pending(store, org, "b");
    let names: Vec<String> = ["blob-a", "blob-b", "blob-x"].map(String::from).to_vec();
    assert_eq!(store.blobs_unreferenced(&names).unwrap(), vec!["blob-x"]);
    // Retention forgets the finished job's file: the job no longer needs it.
    let (forgotten, deleted) = store
        .jobs_sweep(
            Utc::now() + chrono::Duration::hours(1),
            Utc::now() - chrono::Duration::days(365),
        )
        .unwrap();
    assert_eq!((forgotten, deleted), (vec!["blob-a".to_string()], 0));
    assert_eq!(
        store.blobs_unreferenced(&names).unwrap(),
        vec!["blob-a", "blob-x"]
    );
    // Stored files: those of no job, stored before the given time.
    let later = Utc::now() + chrono::Duration::minutes(1);
    if store.keeps_blobs() {
        store.blob_write("blob-b", &mut &b"b"[..]).unwrap();
        store.blob_write("blob-y", &mut &b"y"[..]).unwrap();
        let earlier = Utc::now() - chrono::Duration::hours(1);
        assert_eq!(store.blob_orphans(earlier).unwrap(), Vec::<String>::new());
        assert_eq!(store.blob_orphans(later).unwrap(), vec!["blob-y"]);
    } else {
        assert_eq!(store.blob_orphans(later).unwrap(), Vec::<String>::new());
    }
}

/// A split's chunk files, stored as they are written: pieces of several files interleaved in one
/// transaction, each file whole in its order; a failed writing stores none of them.
fn a_set_of_stored_files_is_kept_whole_or_not_at_all(store: &dyn JobStore) {
    let names: Vec<String> = ["set-a", "set-b", "set-c"].map(String::from).to_vec();
    let pieces = [(0, "a1"), (1, "b1"), (0, "a2"), (0, "a3"), (1, "b2")];
    let mut ok = pieces.iter().map(|&(i, p)| Ok((i, p.as_bytes().to_vec())));
    if !store.keeps_blobs() {
        assert!(store.blob_write_many(&names, &mut ok).is_err());
        return;
    }
    store.blob_write_many(&names, &mut ok).unwrap();
    let read = |name: &str| {
        let mut out = Vec::new();
        let size = store.blob_read(name, &mut out).unwrap();
        assert_eq!(size, out.len() as u64);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        (read("set-a"), read("set-b"), read("set-c")),
        ("a1a2a3".into(), "b1b2".into(), String::new())
    );
    // The writing fails after some pieces: nothing of the set is kept, not even what arrived.
    let others: Vec<String> = ["set-d", "set-e"].map(String::from).to_vec();
    let mut failing = [
        Ok((0, b"d1".to_vec())),
        Ok((1, b"e1".to_vec())),
        Err(StoreError::Other("the source went away".into())),
    ]
    .into_iter();
    let e = store.blob_write_many(&others, &mut failing).unwrap_err();
    assert!(e.to_string().contains("the source went away"), "{e}");
    assert_eq!(
        (read("set-d"), read("set-e")),
        (String::new(), String::new())
    );
    // A piece for a file not in the set is refused, and stores nothing either.
    let mut stray = [Ok((0, b"f1".to_vec())), Ok((2, b"x".to_vec()))].into_iter();
    assert!(store.blob_write_many(&others[..1], &mut stray).is_err());
    assert_eq!(read("set-d"), "");
}

/// `/metrics`' one statement: jobs counted by status, dataset and kind (a chunk job apart from
/// top-level ones), each group with its oldest creation time.
fn jobs_are_grouped_by_status_dataset_and_kind(store: &dyn JobStore) {
    assert_eq!(store.job_groups().unwrap(), Vec::new());
    let (org, _) = tenant(store, "acme");
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    job_in(store, org, JobStatus::Failed, "f");
    let parent = pending(store, org, "big");
    let lease = claim(store, "w1", parent);
    split(store, &lease, 2);
    pending_into(store, org, "others", "o1");
    pending_into(store, org, "others", "o2");
    let mut groups: Vec<(String, String, bool, u64)> = store
        .job_groups()
        .unwrap()
        .into_iter()
        .map(|g| {
            assert!(
                g.oldest >= before && g.oldest <= chrono::Utc::now(),
                "{g:?}"
            );
            (g.status, g.dataset, g.chunk, g.count)
        })
        .collect();
    groups.sort();
    let own = |s: &str, d: &str, chunk: bool, n: u64| (s.to_string(), d.to_string(), chunk, n);
    assert_eq!(
        groups,
        vec![
            own("failed", "items", false, 1),
            own("pending", "items", true, 2),
            own("pending", "others", false, 2),
            own("processing", "items", false, 1),
        ]
    );
    assert!(store.pool_state().max >= 1);
}

/// An export reads a snapshot and writes no row: the one-writer rule neither holds it back
/// behind an import of its dataset nor lets it hold an import (or a synchronous one) back.
fn exports_neither_wait_for_nor_block_imports_of_their_dataset(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let export = |name: &str| NewJob {
        kind: JobKind::Export,
        sha256: format!("export:{name}"),
        params: Some(serde_json::json!({})),
        ..upload(org, name)
    };
    let import = pending(store, org, "a");
    let first = created(store.job_insert(&export("e1"), None, None).unwrap());
    let (claimed, import_lease) = next_claim(store, "w1").expect("the import");
    assert_eq!(claimed, import);
    // Pending behind a processing import of its dataset, the export is claimed anyway.
    let (claimed, export_lease) = next_claim(store, "w2").expect("the export");
    assert_eq!(claimed, first);
    done(store, &import_lease);
    // A running export holds back neither a new import nor a synchronous one.
    let second = pending(store, org, "b");
    let (claimed, second_lease) = next_claim(store, "w1").expect("the second import");
    assert_eq!(claimed, second);
    done(store, &second_lease);
    let sync = store
        .job_insert(&upload(org, "c"), Some(("lease-c", LONG_LEASE_MS)), None)
        .unwrap();
    assert!(matches!(sync, Inserted::Created(_)), "{sync:?}");
    // Two exports of one dataset may wait and run side by side.
    let third = created(store.job_insert(&export("e2"), None, None).unwrap());
    let (claimed, _) = next_claim(store, "w3").expect("the second export");
    assert_eq!(claimed, third);
    assert_eq!(status(store, first), JobStatus::Processing);
    done(store, &export_lease);
}

// --- Sources (migration 0015).

fn a_source(org: i64, name: &str, due: Option<DateTime<Utc>>) -> NewSource {
    NewSource {
        org_id: org,
        name: name.into(),
        dataset: "items".into(),
        kind: "url".into(),
        schedule: serde_json::json!({"every": "1s"}),
        pick: "latest".into(),
        options: serde_json::json!({"mode": "upsert"}),
        notify: vec!["ops@example.com".into()],
        config: serde_json::json!({"url": "http://example.com/p.csv"}),
        secrets: serde_json::json!({"headers": {"Authorization": "Bearer s3cret"}}),
        enabled: true,
        created_by: None,
        user_id: None,
        next_due_at: due,
    }
}

fn started(r: RunStart) -> sluice::store::SourceRun {
    match r {
        RunStart::Started(r) => *r,
        other => panic!("expected a started run, got {other:?}"),
    }
}

fn saved(s: SourceSaved) -> sluice::store::Source {
    match s {
        SourceSaved::Saved(s) => *s,
        other => panic!("expected a saved source, got {other:?}"),
    }
}

fn sources_are_unique_by_name_per_organisation_and_keep_their_settings(store: &dyn JobStore) {
    let (acme, _) = tenant(store, "acme");
    let (other, _) = tenant(store, "other");
    let s = saved(
        store
            .source_insert(&a_source(acme, "prices", None))
            .unwrap(),
    );
    assert_eq!(s.org_id, acme);
    assert_eq!(s.secrets["headers"]["Authorization"], "Bearer s3cret");
    assert_eq!(s.notify, vec!["ops@example.com".into()]);
    assert!(s.enabled);
    assert_eq!(s.state, serde_json::json!({}));
    assert_eq!(
        store
            .source_insert(&a_source(acme, "prices", None))
            .unwrap(),
        SourceSaved::NameTaken
    );
    let o = saved(
        store
            .source_insert(&a_source(other, "prices", None))
            .unwrap(),
    );
    assert_ne!(o.id, s.id, "another organisation may use the name");
    assert_eq!(store.source_list(Some(acme)).unwrap(), vec![s.clone()]);
    assert_eq!(store.source_list(None).unwrap().len(), 2);

    let second = saved(store.source_insert(&a_source(acme, "stock", None)).unwrap());
    let mut renamed = a_source(acme, "prices", None);
    renamed.enabled = false;
    assert_eq!(
        store.source_update(second.id, &renamed, false).unwrap(),
        SourceSaved::NameTaken
    );
    store
        .source_set_state(s.id, &serde_json::json!({"etag": "\"v1\""}))
        .unwrap();
    let kept = saved(store.source_update(s.id, &renamed, false).unwrap());
    assert!(!kept.enabled);
    assert_eq!(kept.state["etag"], "\"v1\"", "the state stays");
    assert_eq!(kept.created_at, s.created_at);
    let reset = saved(store.source_update(s.id, &renamed, true).unwrap());
    assert_eq!(reset.state, serde_json::json!({}));
    let mut elsewhere = a_source(other, "x", None);
    elsewhere.org_id = other;
    assert_eq!(
        store.source_update(s.id, &elsewhere, false).unwrap(),
        SourceSaved::Missing,
        "another organisation cannot update it"
    );
    assert!(matches!(
        store.run_start(s.id, "k", "manual", None).unwrap(),
        RunStart::Started(_)
    ));
    assert!(store.source_delete(s.id).unwrap());
    assert!(!store.source_delete(s.id).unwrap());
    assert_eq!(store.source_get(s.id).unwrap(), None);
}

fn a_due_slot_is_claimed_by_exactly_one_of_racing_schedulers(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let due = Utc::now() - chrono::Duration::seconds(5);
    let due = DateTime::from_timestamp_millis(due.timestamp_millis()).unwrap();
    let s = saved(
        store
            .source_insert(&a_source(org, "prices", Some(due)))
            .unwrap(),
    );
    let later = saved(
        store
            .source_insert(&a_source(
                org,
                "later",
                Some(Utc::now() + chrono::Duration::hours(1)),
            ))
            .unwrap(),
    );
    let found = store.sources_due(Utc::now(), 10).unwrap();
    assert_eq!(found.iter().map(|f| f.id).collect::<Vec<_>>(), vec![s.id]);
    assert_eq!(found[0].next_due_at, Some(due), "stored to the millisecond");
    assert_eq!(store.sources_next_due().unwrap(), Some(due));
    let next = due + chrono::Duration::seconds(60);
    let start = Barrier::new(4);
    let won: Vec<bool> = std::thread::scope(|sc| {
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let start = &start;
                sc.spawn(move || {
                    start.wait();
                    store.source_claim_slot(s.id, due, next).unwrap()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    assert!(store.sources_due(Utc::now(), 10).unwrap().is_empty());
    assert!(!store.source_claim_slot(later.id, due, next).unwrap());
    assert_eq!(store.sources_next_due().unwrap(), Some(next));
    // The run key is the second guard: one run per slot.
    let key = "slot:2026-12-06T09:00:00.000Z";
    let start = Barrier::new(3);
    let keys: Vec<bool> = std::thread::scope(|sc| {
        let start = &start;
        let racers: Vec<_> = (0..3)
            .map(|_| {
                sc.spawn(move || {
                    start.wait();
                    matches!(
                        store.run_start(s.id, key, "schedule", Some(due)).unwrap(),
                        RunStart::Started(_)
                    )
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(keys.iter().filter(|k| **k).count(), 1, "{keys:?}");
}

fn runs_are_recorded_listed_newest_first_and_remember_imported_content(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let s = saved(store.source_insert(&a_source(org, "prices", None)).unwrap());
    let first = started(store.run_start(s.id, "manual:a", "manual", None).unwrap());
    assert_eq!(
        store.run_start(s.id, "manual:x", "manual", None).unwrap(),
        RunStart::Busy,
        "one run of a source at a time"
    );
    assert_eq!(first.outcome, None, "in progress");
    assert_eq!(store.run_imported(s.id, "abc").unwrap(), None);
    store
        .run_finish(
            first.id,
            &RunEnd {
                outcome: RunOutcome::NeedsMapping,
                file: Some("p.csv".into()),
                sha256: Some("abc".into()),
                job_id: None,
                reason: Some("column `sku` is missing".into()),
            },
        )
        .unwrap();
    assert_eq!(
        store.run_imported(s.id, "abc").unwrap(),
        None,
        "a file parked for its mapping was not imported"
    );
    let id = pending(store, org, "p.csv");
    assert_eq!(
        store.run_start(s.id, "manual:a", "manual", None).unwrap(),
        RunStart::KeyTaken
    );
    let second = started(store.run_start(s.id, "manual:b", "manual", None).unwrap());
    store
        .run_finish(
            second.id,
            &RunEnd {
                outcome: RunOutcome::Imported,
                file: Some("p.csv".into()),
                sha256: Some("abc".into()),
                job_id: Some(id),
                reason: None,
            },
        )
        .unwrap();
    assert_eq!(store.run_imported(s.id, "abc").unwrap(), Some(id));
    let more = RunEnd {
        outcome: RunOutcome::Skipped,
        file: Some("q.csv".into()),
        sha256: None,
        job_id: None,
        reason: Some("the same file is importing already".into()),
    };
    store.run_add(&second, 2, &more).unwrap();
    let other = saved(store.source_insert(&a_source(org, "other", None)).unwrap());
    assert_eq!(store.run_imported(other.id, "abc").unwrap(), None);
    let (mut runs, total) = store.run_list(s.id, 10, 0).unwrap();
    assert_eq!(total, 3);
    let added = runs.remove(0);
    assert_eq!(added.run_key, "manual:b#2");
    assert_eq!(added.outcome, Some(RunOutcome::Skipped));
    assert_eq!(added.file.as_deref(), Some("q.csv"));
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![second.id, first.id]
    );
    assert_eq!(runs[0].outcome, Some(RunOutcome::Imported));
    assert_eq!(runs[0].job_id, Some(id));
    assert!(runs[0].finished_at.is_some());
    assert_eq!(runs[1].reason.as_deref(), Some("column `sku` is missing"));
    assert_eq!(store.run_get(first.id).unwrap().unwrap(), runs[1]);
    let (page, _) = store.run_list(s.id, 1, 2).unwrap();
    assert_eq!(page, vec![runs[1].clone()]);
}

fn a_runs_e_mails_are_planned_once_claimed_held_and_recorded(store: &dyn JobStore) {
    let (org, _) = tenant(store, "acme");
    let mut quiet = a_source(org, "quiet", None);
    quiet.notify = Vec::new();
    let quiet = saved(store.source_insert(&quiet).unwrap());
    let s = saved(store.source_insert(&a_source(org, "prices", None)).unwrap());
    let parked = RunEnd {
        outcome: RunOutcome::NeedsMapping,
        file: Some("p.csv".into()),
        sha256: Some("abc".into()),
        job_id: None,
        reason: Some("`Stok` → `stock`".into()),
    };
    for source in [&quiet, &s] {
        let r = started(
            store
                .run_start(source.id, "manual:a", "manual", None)
                .unwrap(),
        );
        store.run_finish(r.id, &parked).unwrap();
    }
    let skipped = started(store.run_start(s.id, "manual:b", "manual", None).unwrap());
    store
        .run_finish(
            skipped.id,
            &RunEnd {
                outcome: RunOutcome::Skipped,
                file: None,
                sha256: None,
                job_id: None,
                reason: Some("no new file".into()),
            },
        )
        .unwrap();
    let since = Utc::now() - chrono::Duration::hours(1);
    let backlog = store.notify_backlog(since, 10).unwrap();
    assert_eq!(
        backlog.len(),
        1,
        "only the parked run of a source with addresses: {backlog:?}"
    );
    let item = &backlog[0];
    assert_eq!(item.source_id, s.id);
    assert_eq!(item.outcome, RunOutcome::NeedsMapping);
    assert_eq!(item.notify, vec!["ops@example.com".into()]);
    assert_eq!(item.job, None);
    let email = sluice::store::NewEmail {
        event: "needs_mapping".into(),
        address: "ops@example.com".into(),
        subject: "p.csv needs a mapping".into(),
        body: "…".into(),
        job_id: None,
        subscription_id: None,
    };
    let start = Barrier::new(3);
    let planned: Vec<bool> = std::thread::scope(|sc| {
        let racers: Vec<_> = (0..3)
            .map(|_| {
                let (start, email) = (&start, email.clone());
                sc.spawn(move || {
                    start.wait();
                    store
                        .notify_plan(item.run_id, item.source_id, &[email])
                        .unwrap()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(planned.iter().filter(|p| **p).count(), 1, "{planned:?}");
    assert!(store.notify_backlog(since, 10).unwrap().is_empty());

    let now = Utc::now().timestamp_millis();
    let due = store.email_claim_due(now, 60_000, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 0);
    assert!(
        store.email_claim_due(now, 60_000, 10).unwrap().is_empty(),
        "held while it is sent"
    );
    store
        .email_record(
            due[0].id,
            1,
            DeliveryState::Pending,
            Some("refused"),
            now - 1,
        )
        .unwrap();
    let again = store.email_claim_due(now, 60_000, 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    store
        .email_record(again[0].id, 2, DeliveryState::Delivered, None, 0)
        .unwrap();
    let (list, total) = store
        .email_list(sluice::store::EmailsOf::Source(s.id), 10, 0)
        .unwrap();
    assert_eq!(total, 1);
    assert_eq!(list[0].state, DeliveryState::Delivered);
    assert_eq!(list[0].attempts, 2);
    assert_eq!(list[0].last_error, None);
    assert!(list[0].delivered_at.is_some());
    assert_eq!(list[0].event, "needs_mapping");
    assert!(
        store
            .email_claim_due(now + 1_000_000, 1, 10)
            .unwrap()
            .is_empty()
    );
}

store_conformance!(
    a_runs_e_mails_are_planned_once_claimed_held_and_recorded,
    sources_are_unique_by_name_per_organisation_and_keep_their_settings,
    a_due_slot_is_claimed_by_exactly_one_of_racing_schedulers,
    runs_are_recorded_listed_newest_first_and_remember_imported_content,
    exports_neither_wait_for_nor_block_imports_of_their_dataset,
    a_high_job_goes_before_older_normal_ones_and_a_low_one_after_them,
    the_organisation_with_the_fewest_running_jobs_goes_first,
    chunk_jobs_count_as_running_and_inherit_the_priority,
    org_max_running_holds_an_organisations_jobs_and_chunks_back,
    an_expired_lease_does_not_count_towards_the_cap,
    a_high_job_still_waits_for_the_writer_of_its_dataset,
    a_retry_from_the_start_keeps_the_priority,
    queue_positions_follow_the_claim_order,
    jobs_are_grouped_by_status_dataset_and_kind,
    only_blobs_that_no_live_job_references_are_orphans,
    a_set_of_stored_files_is_kept_whole_or_not_at_all,
    the_database_answers_a_ping,
    two_workers_racing_for_one_pending_job_exactly_one_claims_it,
    jobs_into_one_dataset_run_one_after_another_in_upload_order,
    a_paused_job_steps_aside_and_a_resumed_one_waits_its_turn,
    a_split_jobs_chunks_run_together_and_the_next_upload_waits_for_all,
    a_split_into_claimed_parts_hands_them_to_the_splitter,
    a_synchronous_import_does_not_start_beside_another_writer,
    workers_racing_for_two_uploads_into_one_dataset_start_only_the_first,
    an_expired_lease_is_claimed_by_another_owner_and_the_first_loses_it,
    a_stale_lease_cannot_commit_a_batch_after_the_job_was_claimed_again,
    every_allowed_transition_is_done_and_every_other_is_a_conflict,
    control_of_a_missing_job_is_not_found,
    a_retry_is_refused_while_the_same_file_is_importing_again,
    a_chunk_job_refuses_control_and_names_its_parent,
    a_token_is_found_with_its_user_organisation_and_role_until_revoked,
    an_expired_token_is_not_found,
    a_token_cannot_be_revoked_from_another_organisation,
    inserting_a_taken_token_hash_fails_and_does_not_revive_a_revoked_token,
    token_find_marks_last_use_and_succeeds_when_called_many_times_at_once,
    a_failing_chunk_fails_the_parent_naming_the_part_and_cancels_the_rest,
    the_last_chunks_completing_at_once_complete_the_parent_exactly_once,
    events_come_back_in_order_resume_after_a_position_and_filter_by_job,
    two_dispatchers_planning_the_same_backlog_insert_its_deliveries_once,
    a_claimed_delivery_is_not_claimed_again_while_held_and_attempts_are_recorded,
    an_audited_action_writes_its_line_and_a_refused_one_writes_none,
);
