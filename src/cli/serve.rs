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

use super::{CliResult, sqlite_path};
use crate::api::{self, AppState, auth};
use crate::blob::BlobStore;
use crate::dataset::Datasets;
use crate::jobs::{JobContext, WorkerConfig, spawn_workers};
use crate::store::JobStore;
use crate::store::sqlite::SqliteStore;

/// How long shutdown waits for workers to reach a batch boundary.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Args, Clone)]
pub struct StorageArgs {
    /// Directory for the embedded database and the uploaded files.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    pub data_dir: PathBuf,
    /// Database URL (`sqlite://PATH`); default: `<data-dir>/sluice.db`.
    #[arg(long, env = "SLUICE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Your datasets.toml (target tables and fields); default: the built-in products and dealers.
    #[arg(long, env = "SLUICE_DATASETS")]
    pub datasets: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Import workers in this process (0: API only).
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Rows per batch transaction.
    #[arg(long, env = "SLUICE_BATCH_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,
    /// Largest upload accepted, in megabytes.
    #[arg(long, env = "SLUICE_MAX_UPLOAD_MB", default_value_t = 2048)]
    pub max_upload_mb: u64,
    /// Seconds a worker's claim on a job lasts without a heartbeat; a crashed worker's job is
    /// resumed by another worker after this long.
    #[arg(long, env = "SLUICE_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_seconds: u64,
    /// Most megabytes a zipped workbook (XLSX, ODS) may unpack to; larger ones are refused as
    /// zip bombs.
    #[arg(long, env = "SLUICE_MAX_UNZIPPED_MB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unzipped_mb: u64,
    /// Highest compression ratio allowed for a part of a zipped workbook larger than 32 MB.
    #[arg(long, env = "SLUICE_MAX_ZIP_RATIO", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_zip_ratio: u64,
    /// Create this admin token at start if it does not exist yet (for automation; otherwise a
    /// random one is created and printed on the first start).
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

fn load_datasets(args: &StorageArgs) -> Result<Datasets, String> {
    match &args.datasets {
        Some(path) => Datasets::load(path).map_err(|e| e.to_string()),
        None => Ok(Datasets::builtin()),
    }
}

fn open_store(args: &StorageArgs, datasets: &Datasets) -> Result<SqliteStore, String> {
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    let path = sqlite_path(&args.data_dir, args.database_url.as_deref())?;
    let store =
        SqliteStore::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    store
        .datasets_prepare(datasets)
        .map_err(|e| format!("cannot prepare the dataset tables: {e}"))?;
    Ok(store)
}

pub async fn migrate(args: StorageArgs) -> CliResult {
    let datasets = load_datasets(&args)?;
    let store = tokio::task::spawn_blocking(move || open_store(&args, &datasets)).await??;
    println!("sluice: {} is up to date", store.path().display());
    Ok(())
}

/// Makes sure someone can call the API: the configured token, or a new one printed once.
fn bootstrap_token(store: &dyn JobStore, args: &ServeArgs) -> Result<(), String> {
    let err = |e: crate::store::StoreError| e.to_string();
    if let Some(token) = args.admin_token.as_deref().filter(|t| !t.is_empty()) {
        let hash = auth::hash_token(token);
        if store.token_find(&hash).map_err(err)?.is_none() {
            store
                .token_insert("SLUICE_ADMIN_TOKEN", &hash, "admin")
                .map_err(err)?;
        }
        return Ok(());
    }
    if store.token_count().map_err(err)? == 0 {
        let token = auth::new_token();
        store
            .token_insert("first admin token", &auth::hash_token(&token), "admin")
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

pub async fn serve(args: ServeArgs) -> CliResult {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let datasets = load_datasets(&args.storage)?;
    crate::import::read::set_limits(crate::import::read::Limits {
        max_unzipped_bytes: args.max_unzipped_mb.saturating_mul(1024 * 1024),
        max_zip_ratio: args.max_zip_ratio,
    });
    let store: Arc<dyn JobStore> = {
        let (storage, ds) = (args.storage.clone(), datasets.clone());
        Arc::new(tokio::task::spawn_blocking(move || open_store(&storage, &ds)).await??)
    };
    {
        let (store, args) = (store.clone(), args.clone());
        tokio::task::spawn_blocking(move || bootstrap_token(store.as_ref(), &args)).await??;
    }
    let blobs = BlobStore::open(&args.storage.data_dir.join("blobs"))
        .map_err(|e| format!("cannot create the blob directory: {e}"))?;
    let ctx = Arc::new(JobContext {
        store,
        datasets: Arc::new(datasets),
        blobs,
        config: WorkerConfig {
            workers: args.workers,
            lease: Duration::from_secs(args.lease_seconds),
            batch_size: args.batch_size as usize,
            poll: Duration::from_secs(1),
        },
        wake: Notify::new(),
    });
    let shutdown = CancellationToken::new();
    let workers = spawn_workers(ctx.clone(), shutdown.clone());
    let state = Arc::new(AppState {
        jobs: ctx,
        max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("sluice listening on http://{addr}");
    tracing::info!(%addr, workers = args.workers, "sluice started");
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing current batches");
            shutdown.cancel();
        });
    }
    let server_shutdown = shutdown.clone();
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
        .await?;
    let all = futures_util::future::join_all(workers);
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
        tracing::warn!("workers did not stop in time; their leases will expire");
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
