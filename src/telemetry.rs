//! Metrics in the Prometheus text format, for `GET /metrics` (`api::metrics` serves them).
//!
//! Two kinds. **Events** — rows committed, batch and job times, lost leases, retries, webhook
//! attempts, HTTP requests, pool waits, SSE clients — are counted where they happen through the
//! `metrics` facade into the process's one recorder (`metrics-exporter-prometheus`, installed by
//! [`install`]); each process reports what it did itself. **State** — jobs by status, the queue,
//! the connection pool, resident memory — is read when scraped ([`render`]): the job figures
//! come from the store in one statement, so any node reports the same truth, and a store that does
//! not answer within [`STORE_WAIT`] leaves them out (`sluice_store_up 0`) instead of hanging the
//! scrape. Labels are only closed sets and configured names (status, dataset, outcome, route
//! template): never a job id, file name or token.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::import::{Batch, BatchCounts, BatchSink, SinkError};
use crate::jobs::JobContext;
use crate::store::{JobGroup, PoolState};

/// How long a scrape waits for the store's job figures.
pub const STORE_WAIT: Duration = Duration::from_secs(3);

/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets (seconds) of each histogram; the exporter would otherwise render summaries.
const BUCKETS: &[(&str, &[f64])] = &[
    (
        "sluice_batch_commit_seconds",
        &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
    ),
    (
        "sluice_job_duration_seconds",
        &[
            0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
        ],
    ),
    (
        "sluice_http_request_duration_seconds",
        &[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
    ),
    (
        "sluice_db_pool_wait_seconds",
        &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
    ),
];

/// Installs the process's recorder (once; later calls do nothing) and registers the counters
/// that should read 0 before anything happens, `datasets` naming the `sluice_rows_total` series.
pub fn install<'a>(datasets: impl IntoIterator<Item = &'a str>) {
    if HANDLE.get().is_some() {
        return;
    }
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in BUCKETS {
        builder = match builder.set_buckets_for_metric(Matcher::Full((*name).into()), buckets) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, metric = name, "metrics: buckets refused");
                return;
            }
        };
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "metrics: a recorder was already installed");
        return;
    }
    if HANDLE.set(handle).is_err() {
        return;
    }
    describe();
    counter!("sluice_lease_lost_total").increment(0);
    counter!("sluice_batch_retries_total").increment(0);
    for format in ["csv", "xlsx"] {
        counter!("sluice_export_rows_total", "format" => format).increment(0);
        counter!("sluice_exports_total", "format" => format).increment(0);
    }
    for result in ["delivered", "retrying", "failed"] {
        counter!("sluice_webhook_deliveries_total", "result" => result).increment(0);
    }
    for outcome in [
        "imported",
        "skipped",
        "unchanged",
        "needs_mapping",
        "failed",
    ] {
        counter!("sluice_source_runs_total", "outcome" => outcome).increment(0);
    }
    for result in ["delivered", "retrying", "failed"] {
        counter!("sluice_source_emails_total", "result" => result).increment(0);
    }
    for dataset in datasets {
        for outcome in ["created", "updated", "unchanged", "deleted", "rejected"] {
            counter!("sluice_rows_total", "dataset" => dataset.to_string(), "outcome" => outcome)
                .increment(0);
        }
    }
    gauge!("sluice_sse_clients").set(0.0);
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "sluice_rows_total",
        "Rows committed by this process's workers, by dataset and outcome (created, updated, unchanged, deleted, rejected; a rollback's conflicts count as rejected)"
    );
    describe_counter!(
        "sluice_analysis_rows_total",
        "Rows read and classified by this process's analysis (dry run) jobs, by dataset"
    );
    describe_histogram!(
        "sluice_batch_commit_seconds",
        "Time of each batch transaction (every attempt)"
    );
    describe_histogram!(
        "sluice_job_duration_seconds",
        "Wall time of a job from its first start to its end, by dataset and final status"
    );
    describe_counter!(
        "sluice_lease_lost_total",
        "Job executions that stopped because their lease was lost (another worker, or an operator's cancel, pause or delete)"
    );
    describe_counter!(
        "sluice_export_rows_total",
        "Rows written into export files by this process's workers, by format"
    );
    describe_counter!(
        "sluice_exports_total",
        "Export files this process's workers completed, by format"
    );
    describe_counter!(
        "sluice_batch_retries_total",
        "Batch commits tried again after a transient store error"
    );
    describe_counter!(
        "sluice_webhook_deliveries_total",
        "Webhook delivery attempts by result (delivered, retrying, failed: the last attempt failed)"
    );
    describe_counter!(
        "sluice_source_runs_total",
        "Runs of scheduled sources (one per file taken) by outcome: imported, skipped, unchanged, needs_mapping, failed"
    );
    describe_counter!(
        "sluice_source_emails_total",
        "Attempts at sources' e-mail notifications by result (delivered, retrying, failed: the last attempt failed)"
    );
    describe_gauge!("sluice_sse_clients", "Open Server-Sent Events streams");
    describe_counter!(
        "sluice_http_requests_total",
        "HTTP requests by route template and status code"
    );
    describe_histogram!(
        "sluice_http_request_duration_seconds",
        "Time from a request to its response's headers, by route template"
    );
    describe_histogram!(
        "sluice_db_pool_wait_seconds",
        "Time to check out a pooled database connection"
    );
}

/// A batch committed: its counts, as the job records them.
fn rows_committed(dataset: &str, counts: &BatchCounts) {
    for (outcome, n) in [
        ("created", counts.created),
        ("updated", counts.updated),
        ("unchanged", counts.unchanged),
        ("rejected", counts.errors),
    ] {
        counter!("sluice_rows_total", "dataset" => dataset.to_string(), "outcome" => outcome)
            .increment(n);
    }
}

/// Rows a completing job deleted (a sync's keys its file lacked, a replace's swap).
pub fn rows_deleted(dataset: &str, n: u64) {
    counter!("sluice_rows_total", "dataset" => dataset.to_string(), "outcome" => "deleted")
        .increment(n);
}

/// A rollback's batch committed: rows re-created, restored and deleted, and its conflicts.
pub fn rollback_committed(dataset: &str, b: &crate::store::rollback::RollbackBatch) {
    for (outcome, n) in [
        ("created", b.created),
        ("updated", b.updated),
        ("deleted", b.deleted),
        ("rejected", b.conflicts),
    ] {
        counter!("sluice_rows_total", "dataset" => dataset.to_string(), "outcome" => outcome)
            .increment(n);
    }
}

/// A [`BatchSink`] that times each batch transaction and counts the rows of each committed
/// one (`sluice_rows_total`, from the counts the commit added to the job).
pub struct MeteredSink {
    inner: Box<dyn BatchSink + Send>,
    dataset: String,
}

impl MeteredSink {
    pub fn new(inner: Box<dyn BatchSink + Send>, dataset: &str) -> Self {
        Self {
            inner,
            dataset: dataset.to_string(),
        }
    }
}

impl BatchSink for MeteredSink {
    fn commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError> {
        let started = Instant::now();
        let result = self.inner.commit(batch, checkpoint);
        histogram!("sluice_batch_commit_seconds").record(started.elapsed().as_secs_f64());
        if let Ok(counts) = &result {
            rows_committed(&self.dataset, counts);
        }
        result
    }
}

/// Rows an analysis (dry run) job read and classified, by dataset
/// (`sluice_analysis_rows_total`; not in `sluice_rows_total`, which counts rows written).
pub fn analysis_rows(dataset: &str, rows: u64) {
    counter!("sluice_analysis_rows_total", "dataset" => dataset.to_string()).increment(rows);
}

/// A batch commit is tried again after a transient store error.
pub fn batch_retry() {
    counter!("sluice_batch_retries_total").increment(1);
}

/// An export file completed with `rows` rows.
pub fn export_written(format: &'static str, rows: u64) {
    counter!("sluice_export_rows_total", "format" => format).increment(rows);
    counter!("sluice_exports_total", "format" => format).increment(1);
}

/// A job's execution stopped on a lost lease.
pub fn lease_lost() {
    counter!("sluice_lease_lost_total").increment(1);
}

/// A job ended with `status` after `took` of wall time since its first start.
pub fn job_ended(dataset: &str, status: &'static str, took: Duration) {
    histogram!("sluice_job_duration_seconds", "dataset" => dataset.to_string(), "status" => status)
        .record(took.as_secs_f64());
}

/// One webhook attempt: `delivered`, `retrying` or `failed`.
pub fn webhook_attempt(result: &'static str) {
    counter!("sluice_webhook_deliveries_total", "result" => result).increment(1);
}

/// One run of a source (one per file it took), by outcome.
pub fn source_run(outcome: &'static str) {
    counter!("sluice_source_runs_total", "outcome" => outcome).increment(1);
}

/// One attempt at a source's e-mail: `delivered`, `retrying` or `failed`.
pub fn source_email(result: &'static str) {
    counter!("sluice_source_emails_total", "result" => result).increment(1);
}

/// One HTTP request, by its route template.
pub fn http_request(route: &str, status: u16, took: Duration) {
    counter!("sluice_http_requests_total", "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
    histogram!("sluice_http_request_duration_seconds", "route" => route.to_string())
        .record(took.as_secs_f64());
}

/// Checking out a pooled connection took this long.
pub fn pool_wait(took: Duration) {
    histogram!("sluice_db_pool_wait_seconds").record(took.as_secs_f64());
}

/// An open Server-Sent Events stream: counted in `sluice_sse_clients` while it lives.
pub struct SseClient(());

impl SseClient {
    pub fn open() -> Self {
        gauge!("sluice_sse_clients").increment(1.0);
        SseClient(())
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        gauge!("sluice_sse_clients").decrement(1.0);
    }
}

/// The whole scrape: the recorder's series, then the state read now.
pub async fn render(ctx: &Arc<JobContext>) -> String {
    let groups = tokio::time::timeout(STORE_WAIT, ctx.store_call(|s| s.job_groups())).await;
    let groups = match groups {
        Ok(Ok(groups)) => Some(groups),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the job figures could not be read");
            None
        }
        Err(_) => {
            tracing::warn!("metrics: the store did not answer in time");
            None
        }
    };
    let mut out = HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    let datasets = ctx.datasets.names();
    state(
        &mut out,
        groups.as_deref(),
        &datasets,
        ctx.store.pool_state(),
        resident_bytes(),
        chrono::Utc::now(),
    );
    out
}

/// Appends the state series: store figures (when read), the pool, resident memory.
fn state(
    out: &mut String,
    groups: Option<&[JobGroup]>,
    datasets: &[&str],
    pool: PoolState,
    resident: Option<u64>,
    now: chrono::DateTime<chrono::Utc>,
) {
    family(
        out,
        "sluice_store_up",
        "gauge",
        "1 when this scrape read the job figures from the store, 0 when it failed or timed out",
    );
    let _ = writeln!(out, "sluice_store_up {}", u8::from(groups.is_some()));
    if let Some(groups) = groups {
        family(
            out,
            "sluice_jobs",
            "gauge",
            "Jobs in the store by status, dataset and kind (job: top-level, chunk: part of a split job)",
        );
        for g in groups {
            let kind = if g.chunk { "chunk" } else { "job" };
            let _ = writeln!(
                out,
                "sluice_jobs{{status=\"{}\",dataset=\"{}\",kind=\"{kind}\"}} {}",
                escape(&g.status),
                escape(&g.dataset),
                g.count
            );
        }
        let pending = || groups.iter().filter(|g| g.status == "pending" && !g.chunk);
        family(
            out,
            "sluice_queue_depth",
            "gauge",
            "Pending top-level jobs by dataset",
        );
        let mut names: Vec<&str> = datasets.to_vec();
        names.extend(pending().map(|g| g.dataset.as_str()));
        names.sort_unstable();
        names.dedup();
        for name in names {
            let n: u64 = pending()
                .filter(|g| g.dataset == name)
                .map(|g| g.count)
                .sum();
            let _ = writeln!(
                out,
                "sluice_queue_depth{{dataset=\"{}\"}} {n}",
                escape(name)
            );
        }
        family(
            out,
            "sluice_queue_oldest_seconds",
            "gauge",
            "Age of the oldest pending top-level job since its upload (0 when none)",
        );
        let oldest = pending().map(|g| g.oldest).min();
        let age = oldest.map_or(0.0, |t| {
            (now - t).to_std().unwrap_or_default().as_secs_f64()
        });
        let _ = writeln!(out, "sluice_queue_oldest_seconds {age:.3}");
    }
    family(
        out,
        "sluice_db_pool_connections",
        "gauge",
        "This process's pooled database connections: idle, in_use, and the cap (max)",
    );
    for (state, n) in [
        ("idle", pool.idle),
        ("in_use", pool.open.saturating_sub(pool.idle)),
        ("max", pool.max),
    ] {
        let _ = writeln!(out, "sluice_db_pool_connections{{state=\"{state}\"}} {n}");
    }
    if let Some(bytes) = resident {
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Resident memory from `/proc/self/statm` (pages × page size); `None` where there is none.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(status: &str, dataset: &str, chunk: bool, count: u64, age_s: i64) -> JobGroup {
        JobGroup {
            status: status.into(),
            dataset: dataset.into(),
            chunk,
            count,
            oldest: chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(1000 - age_s),
        }
    }

    #[test]
    fn state_series_come_from_the_groups_read() {
        let now = chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(1000);
        let groups = [
            group("pending", "products", false, 3, 40),
            group("pending", "products", true, 5, 90),
            group("failed", "dealers", false, 1, 500),
        ];
        let pool = PoolState {
            max: 8,
            open: 3,
            idle: 1,
        };
        let mut out = String::new();
        state(
            &mut out,
            Some(&groups),
            &["dealers", "products"],
            pool,
            Some(4096),
            now,
        );
        for line in [
            "sluice_store_up 1",
            "sluice_jobs{status=\"pending\",dataset=\"products\",kind=\"chunk\"} 5",
            "sluice_jobs{status=\"failed\",dataset=\"dealers\",kind=\"job\"} 1",
            "sluice_queue_depth{dataset=\"dealers\"} 0",
            "sluice_queue_depth{dataset=\"products\"} 3",
            "sluice_queue_oldest_seconds 40.000",
            "sluice_db_pool_connections{state=\"in_use\"} 2",
            "sluice_db_pool_connections{state=\"max\"} 8",
            "process_resident_memory_bytes 4096",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }

    #[test]
    fn a_store_that_did_not_answer_leaves_its_series_out() {
        let pool = PoolState {
            max: 1,
            open: 0,
            idle: 0,
        };
        let mut out = String::new();
        state(
            &mut out,
            None,
            &["products"],
            pool,
            None,
            chrono::Utc::now(),
        );
        assert!(out.contains("sluice_store_up 0"));
        assert!(!out.contains("sluice_jobs"));
        assert!(!out.contains("sluice_queue"));
        assert!(out.contains("sluice_db_pool_connections{state=\"max\"} 1"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn resident_memory_is_read() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
