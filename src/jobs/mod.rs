//! Jobs and workers: claiming jobs, holding their lease, and executing them.
//!
//! A worker loop claims the oldest claimable job (pending, or processing with an expired lease),
//! keeps its lease alive with a heartbeat, and runs the import pipeline on a blocking thread.
//! Shutdown (one cancellation token) stops claiming, lets the current batch commit, and gives the
//! lease back so the job resumes at once on the next start. A worker that loses its lease stops:
//! its next commit is refused by the store. A large file is split here: a CSV file into parts the
//! splitting worker runs together ([`split_into_parts`], [`execute_parts`]), a workbook into
//! chunk files for any worker ([`split`]).

pub mod sweeper;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::{Backoff, Retry, RetryBudget, retry_blocking};
use crate::blob::{BlobError, BlobStore, LocalCopy, ManyError};
use crate::dataset::Datasets;
use crate::events::{EventBus, PublishingSink};
use crate::import::Mode;
use crate::import::partition::{chunk_options, partition};
use crate::import::run::{RunError, RunSpec, run, run_parts};
use crate::import::{FileError, RunOutcome, SinkError, read};
use crate::store::{
    ChunkClaim, Completion, DEFAULT_MAX_DELETE_PERCENT, Job, JobKind, JobStatus, JobStore, Lease,
    NewChunk, Replacement, StoreError, SyncDeletion,
};

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
    /// Attempts at a store call of a job (a batch commit, its set-up) that fails on a system
    /// error, at least, before the job fails.
    pub retry_limit: u32,
    /// How long, from the first failure, such a call keeps retrying (`--db-outage-grace`): a
    /// database restart or outage shorter than this is waited out.
    pub outage_grace: Duration,
    /// Files with more data rows than this are split into chunk files that workers run in
    /// parallel, of at most this many rows each (0: never).
    pub chunk_rows: u64,
    /// CSV files with more data rows than this are split into parts run together, when parts
    /// apply ([`parts_together`]; 0: never). Lower than `chunk_rows` by default: a split into
    /// parts costs no second pass, and two writers beat one from a few batches on.
    pub parts_from: u64,
    /// Most chunk jobs one file is split into.
    pub max_chunks: u32,
    /// Split CSV files into chunk files for any worker rather than parts this worker runs
    /// together (`--split files`).
    pub split_files: bool,
    /// Most jobs and chunks one organisation may have running at once (0: no cap).
    pub org_max_running: u32,
    /// Niceness added to the threads that run jobs (`--job-niceness`).
    pub job_niceness: i32,
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

    /// How long a job's store calls retry a system error.
    pub(crate) fn retry_budget(&self) -> RetryBudget {
        RetryBudget {
            attempts: self.config.retry_limit,
            grace: self.config.outage_grace,
        }
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
    format!("{}/w{n}", process_name())
}

/// This process: host and process id.
fn process_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/pid-{}", std::process::id())
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

/// An execution that gives its job back (or loses it) sooner than this after the claim makes
/// the worker wait before claiming again (see `worker_loop`).
const QUICK_END: Duration = Duration::from_secs(1);

async fn worker_loop(ctx: Arc<JobContext>, shutdown: CancellationToken, id: String) {
    let (lease_ms, cap) = (ctx.lease_ms(), ctx.config.org_max_running);
    // While claims fail (the database is down or full), wait longer each time, up to the
    // store's backoff cap, and say so once per step rather than at poll rate.
    let mut outage = Retry::forever(Backoff::STORE);
    while !shutdown.is_cancelled() {
        let owner = id.clone();
        let claimed = ctx
            .store_call(move |s| s.job_claim(&owner, lease_ms, cap))
            .await;
        // Claims work again (nothing to claim, or a job ran properly: reset below).
        if matches!(claimed, Ok(None)) && outage.failures() > 0 {
            tracing::info!(
                failures = outage.failures(),
                waited_ms = outage.elapsed().as_millis() as u64,
                "claiming jobs works again"
            );
            outage = Retry::forever(Backoff::STORE);
        }
        match claimed {
            Ok(Some((job, lease))) => {
                let started = tokio::time::Instant::now();
                let executed = execute(&ctx, job, lease, &shutdown).await;
                // A job given back or lost within moments of its claim (its end could not be
                // recorded, or the store refused its first write) is not claimed again at
                // once (issue 12 measured a job re-claimed ~240 times a second on a full disk).
                if matches!(executed, Executed::Released | Executed::LeaseLost)
                    && started.elapsed() < QUICK_END
                    && !shutdown.is_cancelled()
                {
                    let wait = outage.failed().unwrap_or(ctx.config.poll).max(QUICK_END);
                    if outage.worth_logging() {
                        tracing::warn!(
                            failures = outage.failures(),
                            next_ms = wait.as_millis() as u64,
                            "a job ended within moments of its claim without finishing; waiting before the next claim"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => {}
                    }
                } else {
                    outage = Retry::forever(Backoff::STORE);
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = ctx.wake.notified() => {}
                    _ = tokio::time::sleep(ctx.config.poll) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Err(e) => {
                let wait = outage
                    .failed()
                    .unwrap_or(ctx.config.poll)
                    .max(ctx.config.poll);
                if outage.worth_logging() {
                    tracing::error!(
                        error = %e,
                        failures = outage.failures(),
                        next_ms = wait.as_millis() as u64,
                        "claiming a job failed; backing off"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
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
    /// A split into parts this worker runs together (see [`split`]): handed from the job's
    /// thread to [`execute_job`].
    parts: std::sync::Mutex<Option<Parts>>,
}

/// The parts of a split job, claimed by the worker that split it, and the original file they
/// read.
struct Parts {
    chunks: Vec<(Job, Lease)>,
    file: LocalCopy,
}

/// Executes a claimed job to its end, a shutdown, its time limit, or the loss of its lease.
/// A top-level job's end and any lost lease are counted in the metrics.
#[tracing::instrument(skip_all, fields(job = job.id, dataset = %job.dataset, org = job.org_id, chunk = job.chunk_index))]
pub async fn execute(
    ctx: &Arc<JobContext>,
    job: Job,
    lease: Lease,
    shutdown: &CancellationToken,
) -> Executed {
    // Its memory goes back to the system when the last run (and download) ends.
    let _in_flight = crate::memory::Stream::start();
    let (dataset, top_level) = (job.dataset.clone(), job.parent_id.is_none());
    // The first start, across restarts (the claim sets it once).
    let started = job.started_at.unwrap_or_else(chrono::Utc::now);
    let executed = execute_job(ctx, job, lease, shutdown).await;
    match executed {
        Executed::LeaseLost => crate::telemetry::lease_lost(),
        Executed::Finished(status) if top_level => {
            let took = (chrono::Utc::now() - started).to_std().unwrap_or_default();
            crate::telemetry::job_ended(&dataset, status.as_str(), took);
        }
        _ => {}
    }
    executed
}

async fn execute_job(
    ctx: &Arc<JobContext>,
    job: Job,
    lease: Lease,
    shutdown: &CancellationToken,
) -> Executed {
    let Watched {
        signals,
        watcher,
        completion,
        limit,
    } = Watched::start(ctx, &job, &lease, shutdown);
    tracing::info!(
        attempt = job.attempts,
        checkpoint = job.rows_done,
        "job started"
    );
    let outcome = {
        let (ctx, lease, signals) = (ctx.clone(), lease.clone(), signals.clone());
        on_job_thread(&ctx.clone(), move || {
            run_blocking(&ctx, &job, lease, &signals)
        })
        .await
    };
    if matches!(outcome, Ok(RunOutcome::Split))
        && let Some(parts) = signals.parts.lock().ok().and_then(|mut p| p.take())
    {
        drop(watcher);
        execute_parts(ctx, parts, shutdown).await;
        return Executed::Split;
    }
    let executed = conclude(
        ctx,
        &lease,
        outcome,
        &signals,
        completion.as_ref(),
        limit,
        shutdown,
    )
    .await;
    // The watcher keeps heartbeating until the job's end is recorded (in `conclude`), which may
    // wait for the database: the lease must not expire meanwhile.
    drop(watcher);
    executed
}

/// A running job's watcher ([`watch`]: heartbeat, shutdown, time limit) with the flags it
/// raises, and what recording the job's end needs.
struct Watched {
    signals: Arc<Signals>,
    watcher: AbortOnDrop,
    /// A replace job's rows become the table's when it (or, for a chunk, its parent)
    /// completes; a sync job's missing keys are deleted then.
    completion: Option<Completion>,
    limit: Option<Duration>,
}

impl Watched {
    fn start(
        ctx: &Arc<JobContext>,
        job: &Job,
        lease: &Lease,
        shutdown: &CancellationToken,
    ) -> Self {
        let signals = Arc::new(Signals::default());
        let (limit, deadline) = time_limit(ctx, job);
        let watcher = AbortOnDrop(tokio::spawn(watch(
            ctx.clone(),
            lease.clone(),
            signals.clone(),
            shutdown.clone(),
            deadline,
        )));
        Self {
            signals,
            watcher,
            completion: completion_of(ctx, job),
            limit,
        }
    }
}

/// The job's time limit (its dataset's, else the server's) and when it runs out: the limit
/// counts from the job's first start, across restarts.
fn time_limit(ctx: &JobContext, job: &Job) -> (Option<Duration>, Option<tokio::time::Instant>) {
    let limit = ctx
        .datasets
        .get(&job.dataset)
        .and_then(|d| d.timeout)
        .or(ctx.config.job_timeout);
    let deadline = limit.map(|limit| {
        let ran = job
            .started_at
            .map(|s| (chrono::Utc::now() - s).to_std().unwrap_or_default())
            .unwrap_or_default();
        tokio::time::Instant::now() + limit.saturating_sub(ran)
    });
    (limit, deadline)
}

/// Runs `f` on a thread of its own rather than the blocking pool's: it may run at a lower
/// priority (`--job-niceness`, inherited by the threads it starts), which a pooled thread would
/// keep for the API's calls later. The blocking run logs inside the caller's span.
async fn on_job_thread<T: Send + 'static>(
    ctx: &Arc<JobContext>,
    f: impl FnOnce() -> Result<T, RunError> + Send + 'static,
) -> Result<T, RunError> {
    let niceness = ctx.config.job_niceness;
    let span = tracing::Span::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("sluice-job".into())
        .spawn(move || {
            lower_priority(niceness);
            let _ = tx.send(span.in_scope(f));
        });
    let failed = |e: String| {
        Err(RunError::Sink(SinkError::Fatal(format!(
            "worker thread failed: {e}"
        ))))
    };
    match spawned {
        Ok(_) => rx
            .await
            .unwrap_or_else(|_| failed("the job's thread ended without an outcome".to_string())),
        Err(e) => failed(format!("could not start the job's thread: {e}")),
    }
}

/// Runs the parts a split handed over together (one read of the file, a writer each:
/// [`crate::import::run::run_parts`]), each under its own lease, heartbeat and time limit, and
/// records each one's end as if it had run alone.
async fn execute_parts(ctx: &Arc<JobContext>, parts: Parts, shutdown: &CancellationToken) {
    let Parts { chunks, file } = parts;
    let each: Vec<Watched> = (chunks.iter())
        .map(|(job, lease)| Watched::start(ctx, job, lease, shutdown))
        .collect();
    tracing::info!(parts = chunks.len(), "running the parts together");
    let outcomes = {
        let (ctx, chunks) = (ctx.clone(), chunks.clone());
        let signals: Vec<Arc<Signals>> = each.iter().map(|e| e.signals.clone()).collect();
        on_job_thread(&ctx.clone(), move || {
            Ok(run_parts_blocking(&ctx, &chunks, &file, &signals))
        })
        .await
    };
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let text = e.to_string();
            (0..chunks.len())
                .map(|_| Err(SinkError::Fatal(text.clone()).into()))
                .collect()
        }
    };
    for (((job, lease), outcome), watched) in chunks.iter().zip(outcomes).zip(each) {
        let Watched {
            signals,
            watcher,
            completion,
            limit,
        } = watched;
        let span = tracing::info_span!("part", job = job.id, chunk = job.chunk_index);
        let executed = conclude(
            ctx,
            lease,
            outcome,
            &signals,
            completion.as_ref(),
            limit,
            shutdown,
        )
        .instrument(span)
        .await;
        drop(watcher);
        if executed == Executed::LeaseLost {
            crate::telemetry::lease_lost();
        }
    }
}

/// Records how a run of a job ended (its final state, or its lease given back) and says so.
async fn conclude(
    ctx: &Arc<JobContext>,
    lease: &Lease,
    outcome: Result<RunOutcome, RunError>,
    signals: &Signals,
    completion: Option<&Completion>,
    limit: Option<Duration>,
    shutdown: &CancellationToken,
) -> Executed {
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
        Err(RunError::Sink(e @ SinkError::Fatal(_))) => {
            tracing::error!(error = %e, "job failed on an error that retrying cannot mend");
            (
                JobStatus::Failed,
                Some(
                    "the job stopped on an internal error (the server log has the details); \
                     the rows committed so far are kept — retry the job"
                        .to_string(),
                ),
            )
        }
        Err(RunError::Sink(e)) => {
            tracing::error!(error = %e, "job failed on a system error");
            let why = if ctx.config.outage_grace.is_zero() {
                "retried, then gave up".to_string()
            } else {
                format!(
                    "it stayed unavailable for longer than the outage grace of {}",
                    human(ctx.config.outage_grace)
                )
            };
            (
                JobStatus::Failed,
                Some(format!(
                    "the database could not store the import ({why}); the rows committed so far are kept — retry the job"
                )),
            )
        }
    };
    let finished = finish(
        ctx,
        lease,
        completion,
        status,
        message.as_deref(),
        signals,
        shutdown,
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

/// Aborts a task when dropped (the job's watcher, whatever way `execute` returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What completing an import does besides recording its end (`None` for other modes and
/// kinds): a replace's swap, a sync's deletion.
fn completion_of(ctx: &JobContext, job: &Job) -> Option<Completion> {
    if job.kind != JobKind::Import {
        return None;
    }
    let dataset = ctx.datasets.get(&job.dataset)?;
    let (owner, org) = (job.parent_id.unwrap_or(job.id), job.org_id?);
    match job.mode {
        Mode::Replace => Some(Completion::Replace(Replacement::for_dataset(
            &dataset, owner, org,
        ))),
        Mode::Sync => sync_deletion_of(ctx, job).map(Completion::Sync),
        _ => None,
    }
}

/// A `mode=sync` job's deletion (an import's at its end, an analysis's count of it).
pub(crate) fn sync_deletion_of(ctx: &JobContext, job: &Job) -> Option<SyncDeletion> {
    Some(SyncDeletion {
        dataset: ctx.datasets.get(&job.dataset)?,
        owner: job.parent_id.unwrap_or(job.id),
        org: job.org_id?,
        max_delete_percent: job
            .params
            .as_ref()
            .and_then(|p| p.get("maxDeletePercent"))
            .and_then(serde_json::Value::as_u64)
            .map_or(DEFAULT_MAX_DELETE_PERCENT, |p| p.min(100) as u8),
    })
}

/// Records the job's final state. While the database is busy, unavailable or full, it waits
/// with the store's backoff — as long as it takes, the heartbeat keeping the lease — and tries
/// again: a job that finished must be neither redone nor re-claimed in a loop because its end
/// could not be written (issue 12 measured ~240 claims a second on a full disk). It stops
/// waiting at shutdown or when the lease is lost; a failure it cannot retry is returned at once.
async fn finish(
    ctx: &Arc<JobContext>,
    lease: &Lease,
    completion: Option<&Completion>,
    status: JobStatus,
    message: Option<&str>,
    signals: &Signals,
    shutdown: &CancellationToken,
) -> Result<bool, StoreError> {
    let mut retry = Retry::forever(Backoff::STORE);
    loop {
        let (l, msg, r) = (
            lease.clone(),
            message.map(str::to_string),
            completion.cloned(),
        );
        let result = ctx
            .store_call(move |s| s.job_finish(&l, r.as_ref(), status, msg.as_deref()))
            .await;
        match result {
            Err(e) if e.is_transient() => {
                let wait = retry.failed().unwrap_or(Backoff::STORE.max);
                if retry.worth_logging() {
                    tracing::warn!(
                        error = %e,
                        failures = retry.failures(),
                        waited_ms = retry.elapsed().as_millis() as u64,
                        next_ms = wait.as_millis() as u64,
                        "recording the end of the job failed; waiting for the database"
                    );
                }
                if signals.lost.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Err(e),
                }
            }
            other => {
                if other.is_ok() {
                    retry.recovered("recording the end of the job");
                }
                return other;
            }
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
    let mut deadline = deadline;
    let mut stopping = false;
    // Heartbeats that fail in a row (the database is down): logged once per backoff step.
    let mut failing = Retry::forever(Backoff::STORE);
    loop {
        // After the time limit or a shutdown the heartbeat goes on: the job's end (or the
        // release) is still to be recorded under this lease.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(never)) => {
                tracing::warn!("time limit reached; stopping at the next batch boundary");
                signals.timed_out.store(true, Ordering::SeqCst);
                signals.stop.store(true, Ordering::SeqCst);
                deadline = None;
                continue;
            }
            _ = shutdown.cancelled(), if !stopping => {
                signals.stop.store(true, Ordering::SeqCst);
                stopping = true;
                continue;
            }
        }
        let l = lease.clone();
        match ctx.store_call(move |s| s.job_heartbeat(&l, lease_ms)).await {
            Ok(true) => {
                if failing.failures() > 0 {
                    tracing::info!(failures = failing.failures(), "heartbeat works again");
                    failing = Retry::forever(Backoff::STORE);
                }
            }
            Ok(false) => {
                tracing::warn!(
                    "lease lost (another worker, or the job was cancelled, paused or deleted); stopping"
                );
                signals.lost.store(true, Ordering::SeqCst);
                signals.stop.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                failing.failed();
                if failing.worth_logging() {
                    tracing::warn!(error = %e, failures = failing.failures(), "heartbeat failed");
                }
            }
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

/// How many chunks a file of about `total` rows is split into: enough for at most `chunk_rows`
/// each, at least two, rounded up to a multiple of this process's `workers` (three chunks on
/// two workers left the third running alone for a third of the job), at most `max_chunks`.
fn chunk_count(total: u64, chunk_rows: u64, workers: usize, max_chunks: u32) -> usize {
    let n = total.div_ceil(chunk_rows.max(1)).max(2) as usize;
    n.next_multiple_of(workers.max(1))
        .min(max_chunks as usize)
        .max(2)
}

/// Splits a large job into `n` chunk jobs by hash of the key (seed 004): writes the chunk
/// files where every worker can read them (in database mode straight into the database, while
/// the file is read: [`BlobStore::create_many`]), and records the chunks and the parent's new
/// state in one transaction. The parent's lease is given back; its chunks drive it from now on.
fn split(
    ctx: &JobContext,
    job: &Job,
    dataset: &crate::dataset::Dataset,
    path: &std::path::Path,
    lease: &Lease,
    n: usize,
) -> Result<(), RunError> {
    let names: Vec<String> = (0..n).map(|_| BlobStore::new_name()).collect();
    let cleanup = || names.iter().for_each(|name| ctx.blobs.remove(name));
    let written = ctx.blobs.create_many(&names, |chunks| {
        partition(
            dataset,
            path,
            job.format,
            &job.options,
            &job.mapping,
            chunks,
        )
    });
    let (rows, sizes) = match written {
        Ok(written) => written,
        Err(e) => {
            cleanup();
            return Err(match e {
                ManyError::Fill(e) => e.into(),
                ManyError::Blob(e) => SinkError::Retryable(e.to_string()).into(),
            });
        }
    };
    let chunks: Vec<NewChunk> = names
        .iter()
        .zip(rows.iter().zip(sizes))
        .map(|(name, (&rows, size))| NewChunk {
            blob: name.clone(),
            rows: Some(rows),
            size,
            format: crate::import::Format::Csv,
            options: chunk_options(),
        })
        .collect();
    let total = rows.iter().sum();
    match ctx.store.job_split(lease, total, &chunks, None) {
        Ok(Some(_)) => {
            tracing::info!(chunks = n, rows = total, "job split into chunk jobs");
            Ok(())
        }
        Ok(None) => {
            cleanup();
            Err(SinkError::LeaseLost.into())
        }
        Err(e) => {
            cleanup();
            Err(SinkError::from(e).into())
        }
    }
}

fn run_blocking(
    ctx: &JobContext,
    job: &Job,
    lease: Lease,
    signals: &Signals,
) -> Result<RunOutcome, RunError> {
    let stop = &signals.stop;
    let ran = match job.kind {
        JobKind::Import | JobKind::Analysis => run_job(ctx, job, lease, signals),
        // Exports start over on every run (their file is written from one snapshot).
        JobKind::Export => set_up(ctx, stop, "exporting", || {
            crate::export::run(ctx, job, &lease, stop)
        }),
        // Rollbacks resume from their checkpoint in the ledger.
        JobKind::Rollback => crate::rollback::run(ctx, job, &lease, stop),
    };
    match ran {
        // Asked to stop while a store call waited for the database: the job resumes from its
        // checkpoint (here after a release, or elsewhere once the lease expires).
        Err(RunError::Sink(SinkError::Retryable(_))) if stop.load(Ordering::SeqCst) => {
            Ok(RunOutcome::Stopped)
        }
        other => other,
    }
}

/// Lowers the calling thread's scheduling priority by `niceness` (Linux: niceness is per
/// thread, and the threads it starts inherit it), so that a job yields the CPU to API requests
/// when both want it and uses it fully when nothing else does. Best effort: a refusal changes
/// nothing else.
fn lower_priority(niceness: i32) {
    #[cfg(target_os = "linux")]
    if niceness > 0 {
        // SAFETY: setpriority on our own thread id changes only that thread's niceness.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, current + niceness);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = niceness;
}

/// A set-up step of a job (its file, row total, split, staging table, batch writer), retried
/// on system errors within the job's budget, exactly as a batch commit is.
pub(crate) fn set_up<T>(
    ctx: &JobContext,
    stop: &AtomicBool,
    what: &str,
    f: impl FnMut() -> Result<T, RunError>,
) -> Result<T, RunError> {
    retry_blocking(
        Retry::new(Backoff::STORE, ctx.retry_budget()),
        what,
        |e| matches!(e, RunError::Sink(SinkError::Retryable(_))),
        &|| stop.load(Ordering::SeqCst),
        f,
    )
}

fn run_job(
    ctx: &JobContext,
    job: &Job,
    lease: Lease,
    signals: &Signals,
) -> Result<RunOutcome, RunError> {
    let stop = &signals.stop;
    let dataset = ctx.datasets.get(&job.dataset).ok_or_else(|| {
        FileError::Unreadable(format!("dataset `{}` is no longer configured", job.dataset))
    })?;
    // Rows are written into the job's organisation; a job without one (never backfilled) writes
    // nothing, as no organisation may see it.
    let org = job
        .org_id
        .ok_or_else(|| FileError::Unreadable("the job belongs to no organisation".into()))?;
    let store_err = SinkError::from;
    let path = set_up(ctx, stop, "reading the uploaded file", || {
        match ctx.blobs.checkout(&job.blob) {
            Ok(copy) => Ok(copy),
            Err(BlobError::Missing) => {
                Err(FileError::Unreadable("the uploaded file is no longer available".into()).into())
            }
            Err(BlobError::Io(e)) => Err(FileError::Io(e).into()),
            Err(BlobError::Store(e)) => Err(store_err(e).into()),
        }
    })?;
    // An analysis (dry run) is never split, and starts over when an earlier attempt got
    // anywhere (see `analysis`).
    let analysis = job.kind == JobKind::Analysis;
    if analysis && crate::analysis::needs_restart(job) {
        tracing::info!("the analysis starts over from the first row");
        if !set_up(ctx, stop, "restarting the analysis", || {
            Ok(ctx.store.analysis_restart(&lease).map_err(store_err)?)
        })? {
            return Err(SinkError::LeaseLost.into());
        }
    }
    if job.total_rows.is_none() {
        let chunk_rows = ctx.config.chunk_rows;
        let together = parts_together(ctx, job);
        let threshold = if together {
            ctx.config.parts_from
        } else {
            chunk_rows
        };
        // An analysis is never split (it writes nothing; see `analysis`).
        let may_split = !analysis && job.parent_id.is_none() && !dataset.sync && threshold > 0;
        // An estimate (CSV: from the size; XLSX: the sheet's `<dimension>`) decides whether to
        // split: the partition counts every row anyway, and a counting pass of its own cost a
        // full read before the first chunk could start. An unsplit job's total is corrected
        // when it completes.
        let total = read::row_total(&path, job.format, &job.options)?;
        if may_split && total > threshold {
            if together {
                // One part per writer: parts written one after another fill the key range
                // again from its start, into the middle of the index pages the earlier parts
                // filled (four parts on two writers took 15 % more time than two).
                let n = ctx
                    .config
                    .workers
                    .clamp(2, ctx.config.max_chunks.max(2) as usize);
                let chunks = set_up(ctx, stop, "splitting the job into parts", || {
                    split_into_parts(ctx, job, &lease, total, n)
                })?;
                tracing::info!(parts = n, rows = total, "job split into parts run together");
                if let Ok(mut parts) = signals.parts.lock() {
                    *parts = Some(Parts { chunks, file: path });
                }
                return Ok(RunOutcome::Split);
            }
            let n = chunk_count(total, chunk_rows, ctx.config.workers, ctx.config.max_chunks);
            set_up(ctx, stop, "splitting the job", || {
                split(ctx, job, &dataset, &path, &lease, n)
            })?;
            // Idle workers of this process take the chunks now, not at their next poll.
            ctx.wake.notify_waiters();
            ctx.wake.notify_one();
            return Ok(RunOutcome::Split);
        }
        if !set_up(ctx, stop, "recording the row total", || {
            Ok(ctx.store.job_set_total(&lease, total).map_err(store_err)?)
        })? {
            return Err(SinkError::LeaseLost.into());
        }
        ctx.events.publish();
    }
    // A replace job writes into its staging table; the swap happens when it completes.
    if analysis {
        let sink = set_up(ctx, stop, "opening the dry-run writer", || {
            Ok(ctx
                .store
                .analysis_sink(dataset.clone(), lease.clone(), job.mode, org)
                .map_err(store_err)?)
        })?;
        return crate::analysis::run(ctx, job, &lease, &dataset, &path, sink, stop);
    }
    let mut sink = open_sink(ctx, job, &lease, &dataset, org, stop)?;
    let spec = RunSpec {
        dataset: &dataset,
        path: &path,
        format: job.format,
        options: &job.options,
        mapping: &job.mapping,
        checkpoint: job.rows_done,
        batch_size: ctx.config.batch_size,
        retry: ctx.retry_budget(),
    };
    run(&spec, &mut sink, &|| stop.load(Ordering::SeqCst))
}

/// The batch writer of an import job (a chunk's too): into its table, or for a replace into
/// the staging table that becomes the table when the job completes.
fn open_sink(
    ctx: &JobContext,
    job: &Job,
    lease: &Lease,
    dataset: &Arc<crate::dataset::Dataset>,
    org: i64,
    stop: &AtomicBool,
) -> Result<PublishingSink, RunError> {
    let store_err = SinkError::from;
    let target = if job.mode == Mode::Replace {
        let staged = Arc::new(dataset.staging(job.parent_id.unwrap_or(job.id)));
        set_up(ctx, stop, "preparing the staging table", || {
            Ok(ctx.store.dataset_prepare(&staged).map_err(store_err)?)
        })?;
        staged
    } else {
        dataset.clone()
    };
    let sink = set_up(ctx, stop, "opening the batch writer", || {
        Ok(ctx
            .store
            .batch_sink(target.clone(), lease.clone(), job.mode, job.parent_id, org)
            .map_err(store_err)?)
    })?;
    let sink = Box::new(crate::telemetry::MeteredSink::new(sink, &job.dataset));
    Ok(PublishingSink::new(sink, ctx.events.clone()))
}

/// Whether a job this worker splits runs as parts of the original file that this worker runs
/// together ([`split_into_parts`]) rather than as chunk files for any worker (`--split`): for
/// CSV (a part read alone after a restart reads the whole file again, cheap for CSV, not for a
/// workbook), and not under a cap on an organisation's running jobs (the parts are all claimed
/// at once).
fn parts_together(ctx: &JobContext, job: &Job) -> bool {
    !ctx.config.split_files
        && job.format == crate::import::Format::Csv
        && ctx.config.org_max_running == 0
}

/// Splits a large CSV job into `n` parts that read the original file, each keeping the rows
/// whose key hashes to it (as the chunk files would have them: [`partition`]), and claims them
/// all for this worker, which runs them together over one read of the file. Each part keeps its
/// own lease and checkpoint, so a part whose runner stopped is claimed and read alone by any
/// worker. Nothing is written but the jobs: no second pass over the file, no chunk files.
fn split_into_parts(
    ctx: &JobContext,
    job: &Job,
    lease: &Lease,
    total: u64,
    n: usize,
) -> Result<Vec<(Job, Lease)>, RunError> {
    let count = n as u32;
    let chunks: Vec<NewChunk> = (0..count)
        .map(|index| NewChunk {
            blob: job.blob.clone(),
            rows: Some(total.div_ceil(u64::from(count))),
            size: job.file_size,
            format: job.format,
            options: crate::import::SourceOptions {
                part: Some(crate::import::read::Part { index, count }),
                ..job.options.clone()
            },
        })
        .collect();
    let owner = format!("{}/parts-of-{}", process_name(), job.id);
    let claim = ChunkClaim {
        owner: &owner,
        lease_ms: ctx.lease_ms(),
    };
    match ctx.store.job_split(lease, total, &chunks, Some(claim)) {
        Ok(Some(claimed)) => Ok(claimed),
        Ok(None) => Err(SinkError::LeaseLost.into()),
        Err(e) => Err(SinkError::from(e).into()),
    }
}

/// Runs the parts of one split job together (see [`execute_parts`]); what each came to.
fn run_parts_blocking(
    ctx: &JobContext,
    chunks: &[(Job, Lease)],
    file: &std::path::Path,
    signals: &[Arc<Signals>],
) -> Vec<Result<RunOutcome, RunError>> {
    let Some((first, _)) = chunks.first() else {
        return Vec::new();
    };
    let opened = (|| {
        let dataset = ctx.datasets.get(&first.dataset).ok_or_else(|| {
            FileError::Unreadable(format!(
                "dataset `{}` is no longer configured",
                first.dataset
            ))
        })?;
        let org = first
            .org_id
            .ok_or_else(|| FileError::Unreadable("the job belongs to no organisation".into()))?;
        let sinks = chunks
            .iter()
            .zip(signals)
            .map(|((job, lease), signals)| open_sink(ctx, job, lease, &dataset, org, &signals.stop))
            .collect::<Result<Vec<_>, RunError>>()?;
        Ok::<_, RunError>((dataset, sinks))
    })();
    let (dataset, mut sinks) = match opened {
        Ok(opened) => opened,
        Err(e) => return stopped_if_asked(chunks.iter().map(|_| Err(same_error(&e))), signals),
    };
    let options = crate::import::SourceOptions {
        part: None,
        ..first.options.clone()
    };
    let spec = RunSpec {
        dataset: &dataset,
        path: file,
        format: first.format,
        options: &options,
        mapping: &first.mapping,
        checkpoint: 0,
        batch_size: ctx.config.batch_size,
        retry: ctx.retry_budget(),
    };
    let stops: Vec<_> = signals
        .iter()
        .map(|s| move || s.stop.load(Ordering::SeqCst))
        .collect();
    let parts = sinks
        .iter_mut()
        .zip(&stops)
        .map(|(sink, stop)| crate::import::run::PartSink { sink, stop })
        .collect();
    stopped_if_asked(run_parts(&spec, parts).into_iter(), signals)
}

/// A part asked to stop while a store call waited for the database resumes from its
/// checkpoint (as [`run_blocking`] has it for a job run alone).
fn stopped_if_asked(
    outcomes: impl Iterator<Item = Result<RunOutcome, RunError>>,
    signals: &[Arc<Signals>],
) -> Vec<Result<RunOutcome, RunError>> {
    outcomes
        .zip(signals)
        .map(|(outcome, signals)| match outcome {
            Err(RunError::Sink(SinkError::Retryable(_))) if signals.stop.load(Ordering::SeqCst) => {
                Ok(RunOutcome::Stopped)
            }
            other => other,
        })
        .collect()
}

/// The same failure again, for each part that shares it: a file error keeps the message the
/// user sees, a system error stays retryable.
fn same_error(e: &RunError) -> RunError {
    match e {
        RunError::File(f) => FileError::Unreadable(file_failure(f)).into(),
        RunError::Sink(SinkError::LeaseLost) => SinkError::LeaseLost.into(),
        RunError::Sink(SinkError::Retryable(t)) => SinkError::Retryable(t.clone()).into(),
        RunError::Sink(SinkError::Fatal(t)) => SinkError::Fatal(t.clone()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_count;

    #[test]
    fn chunks_come_in_multiples_of_the_workers() {
        // 700k rows at 250k a chunk: three chunks, four on two workers, three on three.
        assert_eq!(chunk_count(700_000, 250_000, 2, 16), 4);
        assert_eq!(chunk_count(700_000, 250_000, 3, 16), 3);
        assert_eq!(chunk_count(700_000, 250_000, 1, 16), 3);
        // Just over one chunk's rows: two at least.
        assert_eq!(chunk_count(250_001, 250_000, 1, 16), 2);
        assert_eq!(chunk_count(250_001, 250_000, 4, 16), 4);
        // The cap holds, and two stay the least.
        assert_eq!(chunk_count(10_000_000, 250_000, 3, 16), 16);
        assert_eq!(chunk_count(600_000, 250_000, 8, 2), 2);
    }
}
