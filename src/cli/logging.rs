//! Logging set-up for the long-running commands: the `--log-format` choice (text for people,
//! JSON lines for a log collector), colours only when writing to a terminal, and the level filter
//! from `SLUICE_LOG` (`info` by default; any `tracing` directive, e.g. `sluice=debug`).

use std::io::IsTerminal;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`), `target` and
    /// the `spans` it happened in (request id, job id…).
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log lines as `text` or as `json` objects (one per line), on stderr.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the process's subscriber (once; a second call is ignored).
pub fn init(args: &LogArgs) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}
