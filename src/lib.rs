//! sluice: durable background imports of huge CSV files into a database.
//!
//! The map (see ARCHITECTURE.md): `api` speaks HTTP, `jobs` runs workers that claim and execute
//! import jobs, `import` is the streaming pipeline (read → map → validate → write), `store` is
//! the only database seam, `dataset` describes the target tables, `blob` keeps uploads, `sources` fetches files on a schedule,
//! `telemetry` counts what `/metrics` reports, and `cli` is the command line (server and client).

pub mod analysis;
pub mod api;
pub mod backoff;
pub mod blob;
pub mod cli;
pub mod dataset;
pub mod duration;
pub mod events;
pub mod export;
pub mod import;
pub mod jobs;
pub mod memory;
pub mod rollback;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;
pub mod webhooks;
