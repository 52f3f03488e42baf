//! `sluice serve` and `sluice migrate`: start-up, wiring, and graceful shutdown.
//!
//! Start-up order: datasets file → store (migrations) → dataset tables → first admin token →
//! workers → HTTP listener. SIGINT/SIGTERM cancel one token shared by the server and the
//! workers; workers stop at their next batch boundary and give their leases back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::logging::{self, LogArgs};
use super::{CliResult, Database, database};
use crate::api::{self, AppState, auth};
use crate::blob::{BlobStore, OrphanRules};
use crate::dataset::Datasets;
use crate::jobs::sweeper::{Retention, spawn_sweeper, sweep_orphans};
use crate::jobs::{JobContext, WorkerConfig, spawn_workers};
use crate::store::JobStore;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;

/// Rows above which a file is split into chunk files on PostgreSQL, by default (and rows per
/// chunk file).
const DEFAULT_CHUNK_ROWS_PG: u64 = 250_000;

/// Rows above which a CSV file is split into parts on PostgreSQL, by default: two writers
/// already finish a 50,000-row file in 0.25 s instead of 0.32 s (BENCHMARKS.md, issue 17).
const DEFAULT_PARTS_FROM_PG: u64 = 50_000;

/// How a large CSV file is split (`--split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitInto {
    Parts,
    Files,
}

/// How long shutdown waits for workers to reach a batch boundary.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Args, Clone)]
pub struct StorageArgs {
    /// Directory for the embedded database and the uploaded files.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`; default:
    /// `<data-dir>/sluice.db`. Uploaded files stay in `<data-dir>/blobs` either way.
    #[arg(long, env = "SLUICE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Your datasets.toml (target tables and fields); default: the built-in products and dealers.
    #[arg(long, env = "SLUICE_DATASETS")]
    pub datasets: Option<PathBuf>,
    /// Milliseconds a database statement waits for another writer's lock (SQLite busy
    /// timeout, PostgreSQL `lock_timeout`) before it counts as a (retried) system error.
    #[arg(long, env = "SLUICE_BUSY_TIMEOUT_MS", default_value_t = 10_000)]
    pub busy_timeout_ms: u64,
    /// Most database connections this process keeps for API requests and job bookkeeping
    /// (default: 8 on SQLite, 10 on PostgreSQL). Each running worker opens one more for its
    /// batch writer, and a PostgreSQL process one to listen for new jobs.
    #[arg(long, env = "SLUICE_DB_CONNECTIONS")]
    pub db_connections: Option<u32>,
    /// Milliseconds a request waits for a free database connection before it is answered
    /// `503 busy` with `Retry-After` (workers retry with backoff).
    #[arg(long, env = "SLUICE_DB_WAIT_MS", default_value_t = 5_000)]
    pub db_wait_ms: u64,
    /// Where uploaded files are kept: `local` (`<data-dir>/blobs`; every node must share it),
    /// `database` (PostgreSQL only: every node can read them), or `auto` (database on
    /// PostgreSQL, local on SQLite).
    #[arg(long, env = "SLUICE_BLOB_STORE", value_enum, default_value_t = BlobMode::Auto)]
    pub blob_store: BlobMode,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BlobMode {
    Auto,
    Local,
    Database,
}

/// When upload files nobody needs are removed (`serve` and `worker`, which share the rule).
#[derive(Args, Clone)]
pub struct UploadFileArgs {
    /// The body-rate window: an upload must bring `--min-body-rate` × this many bytes in each
    /// such span of waiting for it. A partial upload file not written for twice this long
    /// counts as abandoned, even when its writer cannot be seen (another machine or container).
    #[arg(long, env = "SLUICE_BODY_RATE_WINDOW", default_value = "30s", value_parser = parse_duration)]
    pub body_rate_window: Duration,
    /// How old an upload file (or a blob stored in PostgreSQL) must be before it is removed for
    /// having no job: covers the time between storing an upload and inserting its job.
    #[arg(long, env = "SLUICE_ORPHAN_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub orphan_grace: Duration,
}

impl UploadFileArgs {
    fn rules(&self) -> OrphanRules {
        OrphanRules {
            stale: self.body_rate_window * 2,
            grace: self.orphan_grace,
        }
    }
}

/// Settings of the import workers (`serve` and `worker`).
#[derive(Args, Clone)]
pub struct WorkerArgs {
    /// Import workers in this process (`serve --workers 0`: API only).
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Rows per batch transaction.
    #[arg(long, env = "SLUICE_BATCH_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,
    /// Seconds a worker's claim on a job lasts without a heartbeat; a crashed worker's job is
    /// resumed by another worker after this long.
    #[arg(long, env = "SLUICE_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_seconds: u64,
    /// Longest a job may run from its first start (`90m`, `6h`, …; `0` for no limit). A dataset's
    /// `timeout` overrides it.
    #[arg(long, env = "SLUICE_JOB_TIMEOUT", default_value = "6h", value_parser = parse_duration)]
    pub job_timeout: Duration,
    /// Attempts, at least, at a job's store call (a batch commit, its set-up) when the database
    /// fails (busy, unavailable, disk full), with exponential backoff and jitter from 100 ms,
    /// before the job fails; `--db-outage-grace` usually allows more.
    #[arg(long, env = "SLUICE_RETRY_LIMIT", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub retry_limit: u32,
    /// How long a job waits out a failing database (unreachable, restarting, busy, out of
    /// space): its store calls retry with backoff (100 ms doubling to 4 s, plus jitter) for this
    /// long from the first failure before the job fails (`90s`, `5m`, `1h`; `0`: only
    /// `--retry-limit` attempts). Recording a job's end waits as long as it takes.
    #[arg(long, env = "SLUICE_DB_OUTAGE_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub db_outage_grace: Duration,
    /// Split files with more data rows than this into chunk jobs that run in parallel (0:
    /// never), judged by the row estimate (a CSV file's size over its first rows' bytes, an
    /// XLSX sheet's declared range). See `--split` for how. Default on PostgreSQL: 50000 for a
    /// split into parts, 250000 (and as many rows per chunk file) for one into files; 0 on
    /// SQLite (one writer at a time).
    #[arg(long, env = "SLUICE_CHUNK_ROWS")]
    pub chunk_rows: Option<u64>,
    /// How a CSV file past `--chunk-rows` is split. `parts`: into one part per worker of this
    /// process (`--workers`, at least two), which the worker that split it runs together over
    /// one read of the file, each part with its own lease and checkpoint (a part left by a
    /// stopped worker is taken by any worker, which reads the whole file for its rows).
    /// `files`: into chunk files of the rows (as many as `--chunk-rows` makes, rounded up to
    /// a multiple of `--workers`) that any worker of any process takes, at the cost of a
    /// second pass over the file and storing it again. Spreadsheets are always split into
    /// files, and so is everything when `--org-max-running` caps an organisation's jobs.
    #[arg(long, env = "SLUICE_SPLIT", value_enum, default_value_t = SplitInto::Parts)]
    pub split: SplitInto,
    /// Most chunk jobs one file is split into.
    #[arg(long, env = "SLUICE_MAX_CHUNKS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=256))]
    pub max_chunks: u32,
    /// Most jobs and chunks one organisation may have running at once, across every worker on
    /// the database; more of its jobs wait while others' are claimed (0: no cap).
    #[arg(long, env = "SLUICE_ORG_MAX_RUNNING", default_value_t = 0)]
    pub org_max_running: u32,
    /// Niceness added to the threads that run jobs (Linux, 0–19): with 10, parsing and writing
    /// yield the CPU to API requests, and to every other process of the machine, whenever they
    /// want it. On PostgreSQL on the same machine, a job's writer connection gives its server
    /// process the same niceness (when sluice runs as root or as the server's user). 0 (the
    /// default) runs jobs at the server's own priority.
    #[arg(long, env = "SLUICE_JOB_NICENESS", default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub job_niceness: i32,
    /// Most megabytes a zipped workbook (XLSX, ODS) may unpack to; larger ones are refused as
    /// zip bombs.
    #[arg(long, env = "SLUICE_MAX_UNZIPPED_MB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unzipped_mb: u64,
    /// Highest compression ratio allowed for a part of a zipped workbook larger than 32 MB.
    #[arg(long, env = "SLUICE_MAX_ZIP_RATIO", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_zip_ratio: u64,
}

/// Where `/metrics` is served without a token (`serve` and `worker`).
#[derive(Args, Clone)]
pub struct MetricsArgs {
    /// Serve `GET /metrics` (Prometheus text format) without a token on this address, for a
    /// scraper on a private network (port 0 picks a free port; the address is printed). Off by
    /// default; on the main address `/metrics` answers admin tokens only.
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Starts the metrics listener when one is asked for.
    async fn start(
        &self,
        ctx: &Arc<JobContext>,
        shutdown: &CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
        let Some(addr) = self.metrics_listen else {
            return Ok(None);
        };
        let (bound, task) = api::metrics::listen(addr, ctx.clone(), shutdown.clone()).await?;
        println!("sluice metrics on http://{bound}/metrics");
        Ok(Some(task))
    }
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub work: WorkerArgs,
    #[command(flatten)]
    pub files: UploadFileArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Largest upload accepted, in megabytes.
    #[arg(long, env = "SLUICE_MAX_UPLOAD_MB", default_value_t = 2048)]
    pub max_upload_mb: u64,
    /// Requests per second each API token may send on average (bursts up to twice that);
    /// beyond it the API answers 429 with `Retry-After`. 0 turns the limit off.
    #[arg(long, env = "SLUICE_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Uploads and previews one API token may have receiving their file at once; one more is
    /// answered 429 `too_many_uploads` with `Retry-After`. 0 turns the cap off.
    #[arg(long, env = "SLUICE_MAX_UPLOADS_PER_TOKEN", default_value_t = 4)]
    pub max_uploads_per_token: u32,
    /// Slowest upload accepted, in bytes per second: counting only the time spent waiting for
    /// the client, each `--body-rate-window` of waiting must bring at least this × the window
    /// in bytes, or the upload is cut off (408 `body_timeout`, its partial file removed).
    /// 0 turns the rule off.
    #[arg(long, env = "SLUICE_MIN_BODY_RATE", default_value_t = 1024)]
    pub min_body_rate: u64,
    /// How long a connection may take to send a request's headers (also how long an idle
    /// keep-alive connection waits for its next request); then it is closed. `0`: no limit.
    #[arg(long, env = "SLUICE_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Create this admin token at start if it does not exist yet (for automation; otherwise a
    /// random one is created and printed on the first start).
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How long the uploaded file of a finished job is kept (a failed or cancelled job can be
    /// retried until then).
    #[arg(long, env = "SLUICE_RETAIN_FILES", default_value = "24h", value_parser = parse_duration)]
    pub retain_files: Duration,
    /// How long a finished job and its row errors are kept.
    #[arg(long, env = "SLUICE_RETAIN_JOBS", default_value = "30d", value_parser = parse_duration)]
    pub retain_jobs: Duration,
    /// How long the change ledger keeps an entry (what a change feed reader can still catch up
    /// on).
    #[arg(long, env = "SLUICE_RETAIN_LEDGER", default_value = "30d", value_parser = parse_duration)]
    pub retain_ledger: Duration,
    /// Attempts per webhook delivery before it is marked failed.
    #[arg(long, env = "SLUICE_WEBHOOK_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub webhook_attempts: u32,
    /// Milliseconds to wait after a webhook's first failed attempt; each later wait is 4× longer
    /// (at most 1 h), plus up to 10% jitter.
    #[arg(long, env = "SLUICE_WEBHOOK_BACKOFF_MS", default_value_t = 2000)]
    pub webhook_backoff_ms: u64,
    /// How long one webhook delivery may take (connecting, sending and the receiver's answer)
    /// before it counts as failed and is retried (`10s`, `1m`, …).
    #[arg(long, env = "SLUICE_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// Let webhooks reach loopback, private, link-local and other internal addresses (receivers
    /// on this machine or its private network). Off by default: on a server shared by several
    /// organisations such a URL would let an admin reach internal services or the cloud
    /// metadata endpoint (SSRF). For single-tenant deployments beside their receivers.
    #[arg(
        long,
        env = "SLUICE_WEBHOOK_ALLOW_PRIVATE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub webhook_allow_private: bool,
    /// A directory that directory sources may read (and move or delete files in); repeat for
    /// several. Without one, no directory source can be created.
    #[arg(
        long = "source-root",
        env = "SLUICE_SOURCE_ROOTS",
        value_delimiter = ','
    )]
    pub source_roots: Vec<PathBuf>,
    /// Let URL sources reach loopback, private, link-local and other internal addresses (as
    /// `--webhook-allow-private` does for webhooks). Off by default (SSRF).
    #[arg(
        long,
        env = "SLUICE_SOURCE_ALLOW_PRIVATE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub source_allow_private: bool,
    /// Send e-mail notifications through this SMTP server:
    /// `smtp://[USER:PASSWORD@]HOST[:PORT]` (plain, port 25 by default; add `--smtp-starttls`
    /// to require STARTTLS, port 587 by default) or `smtps://…` (TLS from the start, port 465
    /// by default). The server's certificate is checked against the system's roots and
    /// `--tls-ca-file`.
    #[arg(
        long,
        env = "SLUICE_SMTP_URL",
        hide_env_values = true,
        requires = "smtp_from"
    )]
    pub smtp_url: Option<String>,
    /// Upgrade the `smtp://` connection with STARTTLS before authenticating or sending; a mail
    /// server that does not offer it is an error (the e-mail is retried, never sent in clear).
    #[arg(
        long,
        env = "SLUICE_SMTP_STARTTLS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub smtp_starttls: bool,
    /// A PEM file of certificates to trust, besides the system's, for outbound TLS: `https://`
    /// URL sources and webhooks, and the SMTP server (an internal CA, a self-signed server).
    #[arg(long, env = "SLUICE_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// The SMTP user (instead of the one in --smtp-url).
    #[arg(long, env = "SLUICE_SMTP_USER")]
    pub smtp_user: Option<String>,
    /// The SMTP password (instead of the one in --smtp-url).
    #[arg(long, env = "SLUICE_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// The sender of notifications, e.g. `sluice <sluice@example.com>`.
    #[arg(long, env = "SLUICE_SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// Attempts per e-mail before it is marked failed.
    #[arg(long, env = "SLUICE_SMTP_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub smtp_attempts: u32,
    /// Milliseconds to wait after an e-mail's first failed attempt; each later wait is 4×
    /// longer (at most 1 h), plus up to 10% jitter.
    #[arg(long, env = "SLUICE_SMTP_BACKOFF_MS", default_value_t = 2000)]
    pub smtp_backoff_ms: u64,
    /// The server's address as people reach it, for links in e-mails (default: the listening
    /// address).
    #[arg(long, env = "SLUICE_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// `sluice worker`: workers only, sharing the store with other processes.
#[derive(Args, Clone)]
pub struct WorkerOnlyArgs {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub work: WorkerArgs,
    #[command(flatten)]
    pub files: UploadFileArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s)
}

fn load_datasets(args: &StorageArgs) -> Result<Datasets, String> {
    match &args.datasets {
        Some(path) => Datasets::load(path).map_err(|e| e.to_string()),
        None => Ok(Datasets::builtin()),
    }
}

fn open_store(args: &StorageArgs, datasets: &Datasets) -> Result<Arc<dyn JobStore>, String> {
    let store = open_job_store(args)?;
    store
        .datasets_prepare(datasets)
        .map_err(|e| format!("cannot prepare the dataset tables: {e}"))?;
    Ok(store)
}

/// Opens the job store (applying its migrations) without touching the dataset tables.
pub(super) fn open_job_store(args: &StorageArgs) -> Result<Arc<dyn JobStore>, String> {
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    let store: Arc<dyn JobStore> = match database(&args.data_dir, args.database_url.as_deref())? {
        Database::Sqlite(path) => {
            let store = SqliteStore::open(
                &path,
                Duration::from_millis(args.busy_timeout_ms),
                args.db_connections
                    .unwrap_or(crate::store::sqlite::DEFAULT_CONNECTIONS),
                Duration::from_millis(args.db_wait_ms),
            )
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Arc::new(store)
        }
        Database::Postgres(url) => {
            let store = PgStore::open(
                &url,
                Duration::from_millis(args.busy_timeout_ms),
                args.db_connections
                    .unwrap_or(crate::store::postgres::DEFAULT_CONNECTIONS),
                Duration::from_millis(args.db_wait_ms),
            )
            .map_err(|e| format!("cannot open the PostgreSQL database: {e}"))?;
            Arc::new(store)
        }
    };
    Ok(store)
}

pub async fn migrate(args: StorageArgs) -> CliResult {
    let datasets = load_datasets(&args)?;
    tokio::task::spawn_blocking(move || open_store(&args, &datasets)).await??;
    println!("sluice: the job store and the dataset tables are up to date");
    Ok(())
}

/// Makes sure someone can call the API: the configured token, or a new one printed once. Both
/// act as the first admin user of the `default` organisation (created by migration 0006).
fn bootstrap_token(store: &dyn JobStore, args: &ServeArgs) -> Result<(), String> {
    let err = |e: crate::store::StoreError| e.to_string();
    let admin = store.user_first_admin().map_err(err)?.ok_or(
        "the database has no admin user; create one with `sluice user create --role admin`",
    )?;
    if let Some(token) = args.admin_token.as_deref().filter(|t| !t.is_empty()) {
        let hash = auth::hash_token(token);
        if store.token_find(&hash).map_err(err)?.is_none() {
            // A revoked or expired SLUICE_ADMIN_TOKEN stays dead: its hash is taken.
            if let Err(e) = store.token_insert("SLUICE_ADMIN_TOKEN", &hash, admin, None, None)
                // Another process starting at the same moment may have stored it just now.
                && store.token_find(&hash).map_err(err)?.is_none()
            {
                tracing::warn!(error = %e, "SLUICE_ADMIN_TOKEN was revoked or expired; not restored");
            }
        }
        return Ok(());
    }
    if store.token_count().map_err(err)? == 0 {
        let token = auth::new_token();
        store
            .token_insert(
                "first admin token",
                &auth::hash_token(&token),
                admin,
                None,
                None,
            )
            .map_err(err)?;
        let host = match args.listen.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            ip => ip.to_string(),
        };
        println!("sluice: created an admin API token. It is shown only this once; keep it:\n");
        println!("    {token}\n");
        println!(
            "Try it:\n    curl -H \"Authorization: Bearer {token}\" http://{host}:{}/api/v1/import/jobs\n",
            args.listen.port()
        );
    }
    Ok(())
}

/// Opens the store and builds what workers and handlers share.
async fn job_context(
    storage: &StorageArgs,
    work: &WorkerArgs,
) -> Result<Arc<JobContext>, Box<dyn std::error::Error + Send + Sync>> {
    let datasets = load_datasets(storage)?;
    crate::telemetry::install(datasets.names());
    crate::import::read::set_limits(crate::import::read::Limits {
        max_unzipped_bytes: work.max_unzipped_mb.saturating_mul(1024 * 1024),
        max_zip_ratio: work.max_zip_ratio,
    });
    let store = {
        let (storage, ds) = (storage.clone(), datasets.clone());
        tokio::task::spawn_blocking(move || open_store(&storage, &ds)).await??
    };
    let dir = storage.data_dir.join("blobs");
    let in_database = match storage.blob_store {
        BlobMode::Auto => store.keeps_blobs(),
        BlobMode::Local => false,
        BlobMode::Database if store.keeps_blobs() => true,
        BlobMode::Database => {
            return Err("--blob-store database needs a PostgreSQL database".into());
        }
    };
    let blobs = if in_database {
        BlobStore::in_database(&dir, store.clone())
    } else {
        BlobStore::local(&dir)
    }
    .map_err(|e| format!("cannot create the blob directory: {e}"))?
    .keeping_uploads(work.workers > 0);
    // Splits are on by default where files are kept in the database (PostgreSQL).
    let split_default = |rows: u64| if in_database { rows } else { 0 };
    Ok(Arc::new(JobContext {
        store,
        datasets: Arc::new(datasets),
        blobs,
        config: WorkerConfig {
            workers: work.workers,
            lease: Duration::from_secs(work.lease_seconds),
            batch_size: work.batch_size as usize,
            poll: Duration::from_secs(1),
            job_timeout: (!work.job_timeout.is_zero()).then_some(work.job_timeout),
            retry_limit: work.retry_limit,
            outage_grace: work.db_outage_grace,
            chunk_rows: work
                .chunk_rows
                .unwrap_or(split_default(DEFAULT_CHUNK_ROWS_PG)),
            parts_from: work
                .chunk_rows
                .unwrap_or(split_default(DEFAULT_PARTS_FROM_PG)),
            max_chunks: work.max_chunks,
            split_files: work.split == SplitInto::Files,
            org_max_running: work.org_max_running,
            job_niceness: work.job_niceness,
        },
        wake: Notify::new(),
        events: crate::events::EventBus::default(),
    }))
}

/// The start-up orphan sweep: upload files left by a crash (a failure is logged, not fatal).
async fn remove_orphans(ctx: &Arc<JobContext>, rules: OrphanRules) {
    match sweep_orphans(ctx, rules).await {
        Ok(swept) if swept == Default::default() => {}
        Ok(swept) => tracing::info!(?swept, "removed orphaned upload files"),
        Err(e) => tracing::warn!(error = %e, "could not sweep orphaned upload files"),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
fn cancel_on_signal(shutdown: &CancellationToken) {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing current batches");
        shutdown.cancel();
    });
}

async fn join_workers(workers: Vec<tokio::task::JoinHandle<()>>) {
    let all = futures_util::future::join_all(workers);
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
        tracing::warn!("workers did not stop in time; their leases will expire");
    }
}

pub async fn serve(args: ServeArgs) -> CliResult {
    logging::init(&args.log);
    let mut roots = Vec::new();
    for root in &args.source_roots {
        roots.push(
            std::fs::canonicalize(root)
                .map_err(|e| format!("--source-root {}: {e}", root.display()))?,
        );
    }
    if let Some(path) = &args.tls_ca_file {
        crate::tls::set_extra_roots(path)?;
    }
    let smtp = match &args.smtp_url {
        Some(url) => {
            let target = crate::sources::email::SmtpTarget::parse(
                url,
                args.smtp_starttls,
                args.smtp_user.as_deref(),
                args.smtp_password.as_deref(),
                args.smtp_from.as_deref().unwrap_or_default(),
            )?;
            let transport = target.transport()?;
            Some((target, transport))
        }
        None => None,
    };
    let ctx = job_context(&args.storage, &args.work).await?;
    {
        let (store, args) = (ctx.store.clone(), args.clone());
        tokio::task::spawn_blocking(move || bootstrap_token(store.as_ref(), &args)).await??;
    }
    remove_orphans(&ctx, args.files.rules()).await;
    let shutdown = CancellationToken::new();
    let workers = spawn_workers(ctx.clone(), shutdown.clone());
    let retention = Retention {
        files: args.retain_files,
        jobs: args.retain_jobs,
        ledger: args.retain_ledger,
    };
    let sweeper = spawn_sweeper(ctx.clone(), retention, args.files.rules(), shutdown.clone());
    let dispatcher = crate::webhooks::spawn_dispatcher(
        ctx.clone(),
        crate::webhooks::WebhookConfig {
            attempts: args.webhook_attempts,
            backoff: Duration::from_millis(args.webhook_backoff_ms),
            timeout: args.webhook_timeout,
            allow_private: args.webhook_allow_private,
        },
        shutdown.clone(),
    );
    let ctx_events = ctx.events.clone();
    let state = Arc::new(AppState {
        jobs: ctx,
        max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
        limiter: api::limit::RateLimiter::new(args.rate_limit),
        uploads: api::limit::UploadSlots::new(args.max_uploads_per_token),
        body_rate: api::body_rate::BodyRate {
            bytes_per_second: args.min_body_rate,
            window: args.files.body_rate_window,
        },
        webhook_allow_private: args.webhook_allow_private,
        bulk_reads: Arc::new(tokio::sync::Semaphore::new(api::bulk_read_slots())),
        retain_files: args.retain_files,
        sources: crate::sources::SourcesConfig {
            roots,
            allow_private: args.source_allow_private,
        },
    });
    let scheduler = crate::sources::run::spawn_scheduler(state.clone(), shutdown.clone());
    let metrics = args.metrics.start(&state.jobs, &shutdown).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let notifier = smtp.map(|(smtp, transport)| {
        crate::sources::email::spawn_notifier(
            state.jobs.clone(),
            crate::sources::email::EmailConfig {
                smtp,
                attempts: args.smtp_attempts,
                backoff: Duration::from_millis(args.smtp_backoff_ms),
                public_url: args
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}")),
            },
            transport,
            shutdown.clone(),
        )
    });
    println!("sluice listening on http://{addr}");
    tracing::info!(%addr, workers = args.work.workers, "sluice started");
    if args.webhook_allow_private {
        tracing::warn!(
            "webhooks may be delivered to private and loopback addresses (--webhook-allow-private)"
        );
    }
    cancel_on_signal(&shutdown);
    // Open event streams end at shutdown, so they do not keep the server from stopping.
    {
        let (events, shutdown) = (ctx_events, shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            events.close();
        });
    }
    let header_timeout = (!args.header_timeout.is_zero()).then_some(args.header_timeout);
    api::server::serve(
        listener,
        api::router(state),
        header_timeout,
        shutdown.clone(),
    )
    .await;
    join_workers(workers).await;
    sweeper.abort();
    dispatcher.abort();
    scheduler.abort();
    if let Some(notifier) = notifier {
        notifier.abort();
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    Ok(())
}

pub async fn worker(args: WorkerOnlyArgs) -> CliResult {
    logging::init(&args.log);
    if args.work.workers == 0 {
        return Err("`sluice worker` needs --workers 1 or more".into());
    }
    let ctx = job_context(&args.storage, &args.work).await?;
    remove_orphans(&ctx, args.files.rules()).await;
    let shutdown = CancellationToken::new();
    let metrics = args.metrics.start(&ctx, &shutdown).await?;
    let workers = spawn_workers(ctx, shutdown.clone());
    println!(
        "sluice worker started ({} workers, pid {})",
        args.work.workers,
        std::process::id()
    );
    cancel_on_signal(&shutdown);
    shutdown.cancelled().await;
    join_workers(workers).await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
