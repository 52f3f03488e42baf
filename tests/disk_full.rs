//! A full disk through the real binary (SQLite): the data directory is a small tmpfs that a
//! filler file fills in the middle of an import. The server then waits with backoff — using
//! next to no CPU, the job still `processing`, not failed — and once the filler is removed the
//! job finishes exactly. Two cases: a batch commit that waits within `--db-outage-grace`, and a
//! job whose end (here its failure, the grace being 1 s) cannot be recorded — before, the
//! workers re-claimed such a job ~240 times a second.
//!
//! Needs root (to mount); without it, one line on stderr and the test passes without running.

#[macro_use]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The most CPU a waiting server may use, as a share of one core. The regressions this guards
/// against spun at ~99 % (a job re-claimed ~240 times a second); a debug-build server doing
/// nothing uses ~0.9 % (tokio's pollers, the scheduler's, webhook dispatcher's and checkpoint
/// thread's ticks), and the CPU time is read in 10 ms ticks. At 1.5 % the check failed on a busy
/// CI machine with the server waiting correctly (1.64 %), so 3 %: still 30× below a spin, and
/// above anything short of a retry loop faster than the backoff allows.
const QUIET: f64 = 0.03;

/// Fills the file system holding `dir` with one file, to the last byte it takes.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    // The last partial block, byte-sized steps at the end.
    for size in [4096usize, 512, 1] {
        while f.write_all(&block[..size]).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

/// Waits until the job has committed some rows (and not all).
async fn wait_mid_import(app: &TestApp, job: i64, total: u64) {
    let start = Instant::now();
    loop {
        let s = app.status(job).await;
        assert!(
            matches!(s["status"].as_str(), Some("pending" | "processing")),
            "{s}"
        );
        let current = s["progress"]["current"].as_u64().unwrap_or(0);
        if current > 0 && current < total {
            return;
        }
        assert!(start.elapsed() < MINUTE, "no progress: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts an app on a fresh 128 MB tmpfs (the 120k-row import and its change-ledger entries take
/// about half of it) and an import of `file` on it; fills the disk while the
/// import runs; returns the app, its job and the filler.
async fn import_onto_a_disk_that_fills(
    mounts: &mut Vec<Tmpfs>,
    root: &Path,
    name: &str,
    file: &Path,
    rows: u64,
    flags: &[&str],
) -> Option<(TestApp, i64, PathBuf)> {
    let dir = root.join(name);
    let Some(mount) = Tmpfs::mount(&dir, 128) else {
        let _ = writeln!(
            std::io::stderr(),
            "skipping disk_full: cannot mount a tmpfs (needs root)"
        );
        return None;
    };
    mounts.push(mount);
    let app = spawn_app(AppOptions {
        backend: Backend::Sqlite,
        batch_size: 500,
        // Heartbeats every 2 s; the old limit on recording a job's end was 12 s (twice this).
        lease_seconds: 6,
        data_dir: Some(dir.clone()),
        extra_args: flags.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    });
    let job = job_id(&app.upload("products", file).await.1);
    wait_mid_import(&app, job, rows).await;
    let filler = fill(&dir);
    Some((app, job, filler))
}

#[tokio::test]
async fn a_full_disk_is_waited_out_quietly_and_the_import_completes_exactly() {
    let rows = 120_000u64;
    let root = tempfile::tempdir().unwrap();
    let (file, expect) = generate(
        root.path(),
        "p.csv",
        &[
            "--rows",
            &rows.to_string(),
            "--error-rate",
            "0.02",
            "--seed",
            "81",
        ],
    );
    let valid = expect["valid_rows"].as_u64().unwrap();
    let invalid = expect["invalid_rows"].as_u64().unwrap();
    // Dropped after the apps (declared first): the servers stop before their disks go.
    let mut mounts = Vec::new();

    // 1. Batch commits wait within the grace (10 minutes here).
    let Some((app, job, filler)) = import_onto_a_disk_that_fills(
        &mut mounts,
        root.path(),
        "a",
        &file,
        rows,
        &["--db-outage-grace", "10m"],
    )
    .await
    else {
        return;
    };
    // Let the commit in flight meet the full disk, then measure without asking anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = app.status(job).await;
    let cpu = cpu_share(app.pid(), Duration::from_secs(6)).await;
    let s = app.status(job).await;
    assert_eq!(s["status"], "processing", "waiting, not failed: {s}");
    assert_eq!(
        s["progress"]["current"], stuck["progress"]["current"],
        "nothing committed on a full disk"
    );
    assert!(
        s["progress"]["current"].as_u64().unwrap() < rows,
        "the disk filled too late: {s}"
    );
    eprintln!(
        "full disk, commit waiting: server CPU {:.2}% of a core at {} rows",
        cpu * 100.0,
        s["progress"]["current"]
    );
    assert!(cpu < QUIET, "server CPU while waiting for space: {cpu}");
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let s = app.wait_done(job, 3 * MINUTE).await;
    eprintln!("completed {:?} after space returned", freed.elapsed());
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["createdCount"], valid, "{s}");
    assert_eq!(s["errorCount"], invalid, "{s}");
    assert_eq!(s["updatedCount"], 0, "{s}");
    assert_eq!(
        app.db().number("SELECT count(*) FROM products") as u64,
        valid
    );
    assert_eq!(
        app.db().number(&format!(
            "SELECT count(*) FROM job_errors WHERE job_id = {job}"
        )) as u64,
        invalid
    );
    drop(app);

    // 2. A 1 s grace: the job fails, and that failure cannot be recorded either. The worker
    //    waits with backoff (before: gave up after twice the lease and re-claimed the job in a
    //    loop, ~99% of a core) — measured over 14 s, past that old limit (12 s).
    let Some((app, job, filler)) = import_onto_a_disk_that_fills(
        &mut mounts,
        root.path(),
        "b",
        &file,
        rows,
        &["--db-outage-grace", "1s", "--retry-limit", "1"],
    )
    .await
    else {
        return;
    };
    let cpu = cpu_share(app.pid(), Duration::from_secs(14)).await;
    let s = app.status(job).await;
    // Usually the failure cannot be recorded on the full disk and the job stays `processing`.
    // Since batches also write their ledger entries, a failed batch may leave enough room in
    // the WAL file it had grown for the small statement that records the end: then it is
    // `failed` already. Either way the server must not spin (the CPU check below).
    assert!(
        matches!(s["status"].as_str(), Some("processing" | "failed")),
        "{s}"
    );
    eprintln!(
        "full disk, the job's end waiting: server CPU {:.2}% of a core",
        cpu * 100.0
    );
    assert!(
        cpu < QUIET,
        "server CPU while the end waits for space: {cpu}"
    );
    std::fs::remove_file(&filler).unwrap();
    // Whichever comes first once there is space: the waiting worker records the failure (then a
    // retry from the checkpoint finishes the job), or — the lease having expired while
    // heartbeats failed too — another worker re-claims the job and finishes it. Both exact.
    let mut s = app.wait_done(job, MINUTE).await;
    if s["status"] == "failed" {
        let message = s["error"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("retry"), "{message}");
        let (code, body) = json_of(
            app.post(&format!("/api/v1/import/{job}/retry"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        s = app.wait_done(job, 3 * MINUTE).await;
    }
    eprintln!("after space returned: attempts {}", s["attempts"]);
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["createdCount"], valid, "{s}");
    assert_eq!(s["errorCount"], invalid, "{s}");
    assert_eq!(s["updatedCount"], 0, "{s}");
    assert_eq!(
        app.db().number("SELECT count(*) FROM products") as u64,
        valid
    );
    assert_eq!(
        app.db().number(&format!(
            "SELECT count(*) FROM job_errors WHERE job_id = {job}"
        )) as u64,
        invalid
    );
    drop(app);
    drop(mounts);
}
