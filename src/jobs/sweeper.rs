//! Retention: a background task that removes the uploaded files of finished jobs after
//! `--retain-files`, deletes finished jobs (with their row errors) after `--retain-jobs` and
//! change-ledger entries after `--retain-ledger`;
//! each pass also removes orphaned upload files ([`crate::blob::OrphanRules`]), which
//! `sluice serve` and `sluice worker` also do once at start.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::JobContext;
use crate::blob::{OrphanRules, Swept};

/// How long finished jobs keep their file and their row.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub files: Duration,
    pub jobs: Duration,
    /// How long change-ledger entries are kept (`--retain-ledger`).
    pub ledger: Duration,
}

impl Retention {
    /// Sweep often enough that nothing outlives its retention by more than a quarter of it,
    /// but at most every 5 minutes and at least every second.
    fn interval(&self) -> Duration {
        (self.files.min(self.jobs).min(self.ledger) / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(300))
    }
}

/// Runs one sweep: returns the number of files removed and jobs deleted.
pub async fn sweep_once(
    ctx: &Arc<JobContext>,
    retention: Retention,
) -> Result<(usize, u64), crate::store::StoreError> {
    let now = chrono::Utc::now();
    let age = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let (files_before, jobs_before) = (age(retention.files), age(retention.jobs));
    let (blobs, deleted) = ctx
        .store_call(move |s| s.jobs_sweep(files_before, jobs_before))
        .await?;
    // The files go right after their jobs stopped naming them, before the ledger's sweep.
    let removed = blobs.len();
    let store = ctx.blobs.clone();
    let _ = tokio::task::spawn_blocking(move || blobs.iter().for_each(|b| store.remove(b))).await;
    let ledger_before = age(retention.ledger);
    let entries = ctx
        .store_call(move |s| s.ledger_sweep(ledger_before))
        .await?;
    if entries > 0 {
        tracing::info!(entries, "ledger retention sweep");
    }
    Ok((removed, deleted))
}

/// Removes the upload files nothing needs any more (partial, unreferenced, stored orphans).
pub async fn sweep_orphans(
    ctx: &Arc<JobContext>,
    rules: OrphanRules,
) -> Result<Swept, crate::blob::BlobError> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || ctx.blobs.sweep_orphans(ctx.store.as_ref(), rules))
        .await
        .map_err(|e| crate::blob::BlobError::Io(std::io::Error::other(e)))?
}

pub fn spawn_sweeper(
    ctx: Arc<JobContext>,
    retention: Retention,
    orphans: OrphanRules,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = sweep_orphans(&ctx, orphans).await {
                tracing::warn!(error = %e, "orphan sweep failed; will try again");
            }
            match sweep_once(&ctx, retention).await {
                Ok((0, 0)) => {}
                Ok((files, jobs)) => tracing::info!(files, jobs, "retention sweep"),
                Err(e) => tracing::warn!(error = %e, "retention sweep failed; will try again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(retention.interval()) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}
