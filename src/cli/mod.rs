//! The command line: `serve` and `migrate` run the service; `org`, `user` and `token` manage
//! tenants in the database directly; `import`, `status`, `jobs` and `errors` are clients of its
//! HTTP API.
//!
//! Every flag has a `SLUICE_*` environment variable. Errors end the process with a message and
//! a non-zero exit code.

mod admin;
mod client;
mod logging;
mod serve;
mod subscriptions;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Durable background imports of huge CSV files into your database",
    long_about = "sluice imports huge CSV files as durable background jobs: upload a file, get a job id at once, \
                  and follow real progress while workers validate every row and write it in chunked transactions.\n\n\
                  Start the service with `sluice serve` (embedded SQLite in ./sluice-data), then upload with \
                  `sluice import FILE --dataset products --wait` or with curl (see the README)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the import workers.
    Serve(Box<serve::ServeArgs>),
    /// Run import workers only (no HTTP), sharing the store with `serve` and other workers.
    Worker(serve::WorkerOnlyArgs),
    /// Create or upgrade the job store and the dataset tables, then exit.
    Migrate(serve::StorageArgs),
    /// Manage organisations (in the database, like `migrate`).
    #[command(subcommand)]
    Org(admin::OrgCommand),
    /// Manage users of organisations.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Create and revoke API tokens.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Upload a file to a running server; with --wait, follow it to the end.
    Import(client::ImportArgs),
    /// Analyse a file without importing it (a dry run): follow it, print its summary, save its
    /// report.
    Analyze(client::AnalyzeArgs),
    /// Show one job's status.
    Status(client::JobArgs),
    /// List recent jobs, newest first.
    Jobs(client::JobsArgs),
    /// Download a job's rejected rows (CSV with an `error` column, or JSON).
    Errors(client::ErrorsArgs),
    /// Export a dataset's rows to a CSV or XLSX file (a job on the server; progress bar, then
    /// the download).
    Export(client::ExportArgs),
    /// Print a dataset's change feed as JSON lines (every row imports created or updated, in
    /// commit order); with --follow, keep waiting for new changes.
    Changes(client::ChangesArgs),
    /// Undo an import's changes (a rollback job); rows a later job changed are reported, not
    /// overwritten, unless --force.
    Rollback(client::RollbackArgs),
    /// Scheduled sources on a running server (admins): add, list, run now, runs.
    #[command(subcommand)]
    Source(client::SourceCommand),
    /// Your e-mail subscriptions to the end of imports (and, admins, sources' runs that need a
    /// mapping): add, list, remove, and the e-mails they caused.
    #[command(subcommand)]
    Subscription(subscriptions::SubscriptionCommand),
}

/// How a client command reaches the server.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Base URL of the sluice server.
    #[arg(
        long,
        env = "SLUICE_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// API token (printed by `sluice serve` on its first start).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Threads for blocking work (store calls, file I/O) besides one per import worker, which holds
/// its own for a whole job. More would only wait for one of the few database connections, each
/// with its own stack and allocator arena: 300 stalled downloads once grew the default pool (512)
/// to 480 threads and kept 40 MB resident after they left.
const BLOCKING_THREADS: usize = 48;

/// How long an idle blocking thread lingers before it exits (tokio's default, made explicit for
/// [`crate::memory`], which trims again once they are gone).
pub const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match &cli.command {
        Command::Serve(args) => args.work.workers,
        Command::Worker(args) => args.work.workers,
        _ => 0,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS + workers)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(*args).await,
            Command::Worker(args) => serve::worker(args).await,
            Command::Migrate(args) => serve::migrate(args).await,
            Command::Org(cmd) => admin::org(cmd).await,
            Command::User(cmd) => admin::user(cmd).await,
            Command::Token(cmd) => admin::token(cmd).await,
            Command::Import(args) => client::import(args).await,
            Command::Analyze(args) => client::analyze(args).await,
            Command::Status(args) => client::status(args).await,
            Command::Jobs(args) => client::jobs(args).await,
            Command::Errors(args) => client::errors(args).await,
            Command::Export(args) => client::export(args).await,
            Command::Changes(args) => client::changes(args).await,
            Command::Rollback(args) => client::rollback(args).await,
            Command::Source(cmd) => client::source(cmd).await,
            Command::Subscription(cmd) => subscriptions::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Which database a URL names.
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Where the data lives: `--database-url` (`sqlite://PATH`, `postgres://…`), or
/// `<data-dir>/sluice.db` by default.
pub fn database(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
) -> Result<Database, String> {
    match database_url.map(str::trim) {
        None | Some("") => Ok(Database::Sqlite(data_dir.join("sluice.db"))),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Database::Postgres(url.to_string()))
        }
        Some(url) => match url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Some(path) => {
                let path = path.split('?').next().unwrap_or(path);
                if path.is_empty() {
                    return Err(
                        "SLUICE_DATABASE_URL `sqlite://` needs a file path, e.g. sqlite://./sluice-data/sluice.db".into(),
                    );
                }
                Ok(Database::Sqlite(PathBuf::from(path)))
            }
            None => Err(format!(
                "unsupported database URL `{url}`: use sqlite://PATH or postgres://USER@HOST/DB"
            )),
        },
    }
}
