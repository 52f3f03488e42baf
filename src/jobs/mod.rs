//! Jobs and workers: claiming jobs, holding their lease, and executing them.
//!
//! A worker loop claims the oldest claimable job (pending, or processing with an expired lease),
//! keeps its lease alive with a heartbeat, and runs the import pipeline on a blocking thread.
//! Shutdown (one cancellation token) stops claiming, lets the current batch commit, and gives the
//! lease back so the job resumes at once on the next start. A worker that loses its lease stops:
//! its next commit is refused by the store.

pub mod sweeper;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::blob::{BlobError, BlobStore};
use crate::dataset::Datasets;
use crate::events::{EventBus, PublishingSink};
use crate::import::Mode;
use crate::import::partition::{chunk_options, partition};
use crate::import::run::{RunError, RunSpec, run, with_retry};
use crate::import::{FileError, RunOutcome, SinkError, read};
use crate::store::{Job, JobStatus, JobStore, Lease, NewChunk, Replacement, StoreError};

/// Settings of the worker pool.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub workers: usize,
    pub lease: Duration,
    pub batch_size: usize,
    /// How often an idle worker looks for work without being woken.
    pub poll: Duration,
    /// Longest a job may run from its first start, unless its dataset sets its own `timeout`.
    pub job_timeout: Option<Duration>,
    /// Attempts at a batch commit that fails on a system error before the job fails.
    pub retry_limit: u32,
    /// Files with more data rows than this are split into chunk jobs that workers run in
    /// parallel (0: never).
    pub chunk_rows: u64,
    /// Most chunk jobs one file is split into.
    pub max_chunks: u32,
}

/// What workers share: the store, the datasets, the uploads, a bell rung on new jobs, and the
/// event bus rung after every batch commit and job end (for live progress).
pub struct JobContext {
    pub store: Arc<dyn JobStore>,
    pub datasets: Arc<Datasets>,
    pub blobs: BlobStore,
    pub config: WorkerConfig,
    pub wake: Notify,
    pub events: EventBus,
}

impl JobContext {
    fn lease_ms(&self) -> u64 {
        self.config.lease.as_millis() as u64
    }

    /// Runs a blocking store call off the async threads.
    pub async fn store_call<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn JobStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }
}

/// How one execution of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executed {
    Finished(JobStatus),
    /// Shutdown: the lease was given back; the job resumes later from its checkpoint.
    Released,
    /// Another worker owns the job now, or an operator cancelled, paused or deleted it.
    LeaseLost,
    /// Divided into chunk jobs; the last chunk to complete finishes it.
    Split,
}

/// The name a worker claims jobs under: host, process and slot, so an operator can tell who
/// holds a lease.
pub fn worker_id(n: usize) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/pid-{}/w{n}", std::process::id())
}

/// Starts the worker pool; each worker ends when `shutdown` is cancelled.
pub fn spawn_workers(
    ctx: Arc<JobContext>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..ctx.config.workers)
        .map(|n| {
            let (ctx, shutdown, id) = (ctx.clone(), shutdown.clone(), worker_id(n));
            tokio::spawn(async move {
                worker_loop(ctx, shutdown, id)
                    .instrument(tracing::info_span!("worker", n))
                    .await
            })
        })
        .collect()
}

async fn worker_loop(ctx: Arc<JobContext>, shutdown: CancellationToken, id: String) {
    let lease_ms = ctx.lease_ms();
    while !shutdown.is_cancelled() {
        let owner = id.clone();
        match ctx.store_call(move |s| s.job_claim(&owner, lease_ms)).await {
            Ok(Some((job, lease))) => {
                execute(&ctx, job, lease, &shutdown).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = ctx.wake.notified() => {}
                    _ = tokio::time::sleep(ctx.config.poll) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "claiming a job failed");
                tokio::select! {
                    _ = tokio::time::sleep(ctx.config.poll) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
}

/// Flags shared by a running job and its watcher task.
#[derive(Default)]
struct Signals {
    /// Ask the pipeline to stop at the next batch boundary.
    stop: AtomicBool,
    /// The lease is gone (another worker, or an operator's cancel/pause/delete).
    lost: AtomicBool,
    /// The job's time limit passed.
    timed_out: AtomicBool,
}

/// Executes a claimed job to its end, a shutdown, its time limit, or the loss of its lease.
#[tracing::instrument(skip_all, fields(job = job.id, dataset = %job.dataset))]
pub async fn execute(
    ctx: &Arc<JobContext>,
    job: Job,
    lease: Lease,
    shutdown: &CancellationToken,
) -> Executed {
    let signals = Arc::new(Signals::default());
    let limit = ctx
        .datasets
        .get(&job.dataset)
        .and_then(|d| d.timeout)
        .or(ctx.config.job_timeout);
    // The limit counts from the job's first start, across restarts.
    let deadline = limit.map(|limit| {
        let ran = job
            .started_at
            .map(|s| (chrono::Utc::now() - s).to_std().unwrap_or_default())
            .unwrap_or_default();
        tokio::time::Instant::now() + limit.saturating_sub(ran)
    });
    // A replace job's rows become the table's when it (or, for a chunk, its parent) completes.
    let replacement = (job.mode == Mode::Replace)
        .then(|| ctx.datasets.get(&job.dataset).zip(job.org_id))
        .flatten()
        .map(|(d, org)| Replacement::for_dataset(&d, job.parent_id.unwrap_or(job.id), org));
    let watcher = tokio::spawn(watch(
        ctx.clone(),
        lease.clone(),
        signals.clone(),
        shutdown.clone(),
        deadline,
    ));
    tracing::info!(
        attempt = job.attempts,
        checkpoint = job.rows_done,
        "job started"
    );
    let result = {
        let (ctx, lease, signals) = (ctx.clone(), lease.clone(), signals.clone());
        tokio::task::spawn_blocking(move || run_blocking(&ctx, &job, lease, &signals.stop)).await
    };
    watcher.abort();
    let outcome = match result {
        Ok(r) => r,
        Err(e) => Err(RunError::Sink(SinkError::Fatal(format!(
            "worker thread failed: {e}"
        )))),
    };
    let (status, message) = match outcome {
        Ok(RunOutcome::Finished) => (JobStatus::Completed, None),
        Ok(RunOutcome::Split) => return Executed::Split,
        Ok(RunOutcome::Stopped) if signals.lost.load(Ordering::SeqCst) => {
            return Executed::LeaseLost;
        }
        Err(RunError::Sink(SinkError::LeaseLost)) => return Executed::LeaseLost,
        Ok(RunOutcome::Stopped) if signals.timed_out.load(Ordering::SeqCst) => (
            JobStatus::Failed,
            Some(format!(
                "the job ran longer than its time limit of {}; the rows committed so far are kept — retry to continue",
                limit.map(human).unwrap_or_default()
            )),
        ),
        Ok(RunOutcome::Stopped) => {
            let l = lease.clone();
            if let Err(e) = ctx.store_call(move |s| s.job_release(&l)).await {
                tracing::warn!(error = %e, "could not release the lease; it will expire");
            }
            tracing::info!("job released at a batch boundary");
            return Executed::Released;
        }
        Err(RunError::File(e)) => (JobStatus::Failed, Some(file_failure(&e))),
        Err(RunError::Sink(e)) => {
            tracing::error!(error = %e, "job failed on a system error");
            (
                JobStatus::Failed,
                Some(
                    "the database could not store the import (retried, then gave up); the rows committed so far are kept — retry the job"
                        .to_string(),
                ),
            )
        }
    };
    let finished = finish(
        ctx,
        &lease,
        replacement.as_ref(),
        status,
        message.as_deref(),
    )
    .await;
    ctx.events.publish();
    match finished {
        Ok(true) => {
            tracing::info!(
                status = status.as_str(),
                error = message.as_deref().unwrap_or(""),
                "job finished"
            );
            Executed::Finished(status)
        }
        Ok(false) => Executed::LeaseLost,
        Err(e) => {
            tracing::error!(error = %e, "could not record the end of the job; it will be resumed");
            Executed::Released
        }
    }
}

/// Records the job's final state, retrying while the database is busy or unavailable (for up
/// to twice the lease, at least 10 s): a job that finished must not be redone for a busy moment.
async fn finish(
    ctx: &Arc<JobContext>,
    lease: &Lease,
    replace: Option<&Replacement>,
    status: JobStatus,
    message: Option<&str>,
) -> Result<bool, StoreError> {
    let give_up = tokio::time::Instant::now() + (ctx.config.lease * 2).max(Duration::from_secs(10));
    let mut pause = Duration::from_millis(100);
    loop {
        let (l, msg, r) = (lease.clone(), message.map(str::to_string), replace.cloned());
        match ctx
            .store_call(move |s| s.job_finish(&l, r.as_ref(), status, msg.as_deref()))
            .await
        {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up => {
                tracing::warn!(error = %e, "recording the end of the job failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Keeps the lease alive while the job runs, and raises `stop` on shutdown, on a lost lease
/// (which is also how cancel, pause and delete reach a running job) and at the time limit.
async fn watch(
    ctx: Arc<JobContext>,
    lease: Lease,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
    deadline: Option<tokio::time::Instant>,
) {
    let every = ctx.config.lease / 3;
    let lease_ms = ctx.lease_ms();
    let never = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(never)) => {
                tracing::warn!("time limit reached; stopping at the next batch boundary");
                signals.timed_out.store(true, Ordering::SeqCst);
                signals.stop.store(true, Ordering::SeqCst);
                return;
            }
            _ = shutdown.cancelled() => {
                signals.stop.store(true, Ordering::SeqCst);
                return;
            }
        }
        let l = lease.clone();
        match ctx.store_call(move |s| s.job_heartbeat(&l, lease_ms)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "lease lost (another worker, or the job was cancelled, paused or deleted); stopping"
                );
                signals.lost.store(true, Ordering::SeqCst);
                signals.stop.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        _ if s.is_multiple_of(3600) => format!("{} h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{} min", s / 60),
        _ => format!("{s} s"),
    }
}

/// A failure message fit for users: what went wrong with the file, no paths or internals.
fn file_failure(e: &FileError) -> String {
    match e {
        FileError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            "the uploaded file is no longer available".into()
        }
        FileError::Io(_) => "the uploaded file could not be read".into(),
        other => other.to_string(),
    }
}

/// Splits a large job into `n` chunk jobs by hash of the key (seed 004): writes the chunk
/// files, makes them readable by every worker, and records the chunks and the parent's new state
/// in one transaction. The parent's lease is given back; its chunks drive it from now on.
fn split(
    ctx: &JobContext,
    job: &Job,
    dataset: &crate::dataset::Dataset,
    path: &std::path::Path,
    lease: &Lease,
    total: u64,
    n: usize,
) -> Result<(), RunError> {
    let names: Vec<String> = (0..n).map(|_| BlobStore::new_name()).collect();
    let paths: Vec<std::path::PathBuf> = names
        .iter()
        .map(|name| {
            ctx.blobs
                .path(name)
                .ok_or_else(|| FileError::Unreadable("generated blob name rejected".into()))
        })
        .collect::<Result<_, _>>()?;
    let cleanup = || names.iter().for_each(|name| ctx.blobs.remove(name));
    let files = match partition(
        dataset,
        path,
        job.format,
        &job.options,
        &job.mapping,
        &paths,
    ) {
        Ok(files) => files,
        Err(e) => {
            cleanup();
            return Err(e.into());
        }
    };
    let mut chunks = Vec::with_capacity(n);
    for (name, file) in names.iter().zip(&files) {
        let size = std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
        if let Err(e) = ctx.blobs.publish(name) {
            cleanup();
            return Err(SinkError::Retryable(e.to_string()).into());
        }
        chunks.push(NewChunk {
            blob: name.clone(),
            rows: file.rows,
            size,
        });
    }
    match ctx.store.job_split(lease, total, &chunk_options(), &chunks) {
        Ok(true) => {
            tracing::info!(chunks = n, rows = total, "job split into chunk jobs");
            Ok(())
        }
        Ok(false) => {
            cleanup();
            Err(SinkError::LeaseLost.into())
        }
        Err(e) => {
            cleanup();
            Err(SinkError::Retryable(e.to_string()).into())
        }
    }
}

fn run_blocking(
    ctx: &JobContext,
    job: &Job,
    lease: Lease,
    stop: &AtomicBool,
) -> Result<RunOutcome, RunError> {
    let dataset = ctx.datasets.get(&job.dataset).ok_or_else(|| {
        FileError::Unreadable(format!("dataset `{}` is no longer configured", job.dataset))
    })?;
    // Rows are written into the job's organisation; a job without one (never backfilled) writes
    // nothing, as no organisation may see it.
    let org = job
        .org_id
        .ok_or_else(|| FileError::Unreadable("the job belongs to no organisation".into()))?;
    let store_err = |e: StoreError| match e {
        e if e.is_transient() => SinkError::Retryable(e.to_string()),
        other => SinkError::Fatal(other.to_string()),
    };
    let path = match ctx.blobs.checkout(&job.blob) {
        Ok(copy) => copy,
        Err(BlobError::Missing) => {
            return Err(
                FileError::Unreadable("the uploaded file is no longer available".into()).into(),
            );
        }
        Err(BlobError::Io(e)) => return Err(FileError::Io(e).into()),
        Err(BlobError::Store(e)) => return Err(store_err(e).into()),
    };
    if job.total_rows.is_none() {
        let total = read::count_rows(&path, job.format, &job.options)?;
        let chunk_rows = ctx.config.chunk_rows;
        if job.parent_id.is_none() && !dataset.sync && chunk_rows > 0 && total > chunk_rows {
            let n = total
                .div_ceil(chunk_rows)
                .min(u64::from(ctx.config.max_chunks))
                .max(2) as usize;
            split(ctx, job, &dataset, &path, &lease, total, n)?;
            return Ok(RunOutcome::Split);
        }
        let attempts = ctx.config.retry_limit;
        if !with_retry(attempts, "recording the row total", || {
            ctx.store.job_set_total(&lease, total).map_err(store_err)
        })? {
            return Err(SinkError::LeaseLost.into());
        }
        ctx.events.publish();
    }
    // A replace job writes into its staging table; the swap happens when it completes.
    let target = if job.mode == Mode::Replace {
        let staged = Arc::new(dataset.staging(job.parent_id.unwrap_or(job.id)));
        with_retry(
            ctx.config.retry_limit,
            "preparing the staging table",
            || ctx.store.dataset_prepare(&staged).map_err(store_err),
        )?;
        staged
    } else {
        dataset.clone()
    };
    let sink = with_retry(ctx.config.retry_limit, "opening the batch writer", || {
        ctx.store
            .batch_sink(target.clone(), lease.clone(), job.mode, job.parent_id, org)
            .map_err(store_err)
    })?;
    let mut sink = PublishingSink::new(sink, ctx.events.clone());
    let spec = RunSpec {
        dataset: &dataset,
        path: &path,
        format: job.format,
        options: &job.options,
        mapping: &job.mapping,
        checkpoint: job.rows_done,
        batch_size: ctx.config.batch_size,
        commit_attempts: ctx.config.retry_limit,
    };
    run(&spec, &mut sink, &|| stop.load(Ordering::SeqCst))
}
