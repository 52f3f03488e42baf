//! Analysis (dry-run) jobs: the import's pipeline without its writes.
//!
//! An analysis job (`jobs.kind = 'analysis'`, created by `dryRun=true` on an upload) runs
//! [`crate::import::run::run`] — the same reading, mapping and validation as an import — into
//! the store's dry-run writer ([`crate::store::JobStore::analysis_sink`]), which makes the very
//! decision of the real batch writer (the same lookup, duplicate-key rule and mode) but writes
//! only the job's own bookkeeping: counts, row errors and checkpoint, and the keys it accepted
//! in a scratch table (`_sluice_seen_<job>`) instead of stamps. No dataset row, stamp or history
//! row is written. [`stats`] gathers column statistics on the way; when the last batch is in,
//! [`report`] writes the workbook and the JSON report as blobs, named in `jobs.result` with the
//! summary and the statistics, and the scratch table is dropped.
//!
//! An analysis is not split into chunks, and one that resumes after a lost worker starts over
//! from the first row (its counts, errors and scratch keys reset in one fenced transaction):
//! it writes nothing to undo, and its statistics then always cover the whole file.

pub mod report;
pub mod stats;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dataset::Dataset;
use crate::events::PublishingSink;
use crate::import::run::{RunError, RunSpec, run as run_pipeline};
use crate::import::{Batch, BatchCounts, BatchSink, Mode, RunOutcome, SinkError};
use crate::jobs::JobContext;
use crate::store::{Job, JobStore, Lease, report_blobs};
use report::Summary;
use stats::{Stats, StatsSink};

/// Error pages read per store call while writing the report.
const ERROR_PAGE: u64 = 10_000;

/// Counts the rows an analysis classified (`sluice_analysis_rows_total`).
struct Metered {
    inner: Box<dyn BatchSink + Send>,
    dataset: String,
}

impl BatchSink for Metered {
    fn commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError> {
        let counts = self.inner.commit(batch, checkpoint)?;
        crate::telemetry::analysis_rows(&self.dataset, (batch.len() + batch.errors.len()) as u64);
        Ok(counts)
    }
}

/// Whether an earlier attempt of this analysis got anywhere (then it starts over).
pub fn needs_restart(job: &Job) -> bool {
    job.rows_done > 0 || job.batches_done > 0 || job.result.is_some() || job.error_count > 0
}

/// Runs a claimed analysis job over its (checked-out) file: the pipeline into the dry-run
/// writer, then the report. `sink` is the store's dry-run writer for the job.
pub fn run(
    ctx: &JobContext,
    job: &Job,
    lease: &Lease,
    dataset: &Dataset,
    path: &Path,
    sink: Box<dyn BatchSink + Send>,
    stop: &AtomicBool,
) -> Result<RunOutcome, RunError> {
    let mut stats = Stats::new(dataset, &job.header, &job.mapping);
    let metered = Box::new(Metered {
        inner: sink,
        dataset: job.dataset.clone(),
    });
    let published: Box<dyn BatchSink + Send> =
        Box::new(PublishingSink::new(metered, ctx.events.clone()));
    let mut sink = StatsSink {
        inner: published,
        stats: &mut stats,
    };
    let spec = RunSpec {
        dataset,
        path,
        format: job.format,
        options: &job.options,
        mapping: &job.mapping,
        checkpoint: 0,
        batch_size: ctx.config.batch_size,
        retry: ctx.retry_budget(),
    };
    let outcome = run_pipeline(&spec, &mut sink, &|| stop.load(Ordering::SeqCst))?;
    if outcome != RunOutcome::Finished {
        return Ok(outcome);
    }
    crate::jobs::set_up(ctx, stop, "writing the analysis report", || {
        complete(ctx, job, lease, &stats).map_err(RunError::Sink)
    })?;
    Ok(RunOutcome::Finished)
}

/// Writes the report blobs and the job's result; drops the scratch table.
fn complete(ctx: &JobContext, job: &Job, lease: &Lease, stats: &Stats) -> Result<(), SinkError> {
    let store: &dyn JobStore = ctx.store.as_ref();
    let now = store
        .job_get(job.id)
        .map_err(SinkError::from)?
        .ok_or(SinkError::LeaseLost)?;
    let tally = store.errors_tally(job.id).map_err(SinkError::from)?;
    // A sync import would also delete the rows whose keys the file lacks: counted now that
    // every key is in the scratch table.
    let deletion = match crate::jobs::sync_deletion_of(ctx, job).filter(|_| job.mode == Mode::Sync)
    {
        Some(sync) => Some(
            store
                .analysis_would_delete(lease, &sync)
                .map_err(SinkError::from)?
                .ok_or(SinkError::LeaseLost)?,
        ),
        None => None,
    };
    let summary = Summary {
        filename: job.filename.clone(),
        sha256: job.sha256.clone(),
        dataset: job.dataset.clone(),
        mode: format!("{:?}", job.mode).to_lowercase(),
        rows: stats.rows(),
        would_create: now.created_count,
        would_update: now.updated_count,
        unchanged: now.unchanged_count,
        errors: now.error_count,
        would_delete: deletion.as_ref().map(|w| w.rows),
        delete_refusal: deletion.and_then(|w| w.refusal),
        errors_by_column: Vec::new(),
        errors_by_message: Vec::new(),
    }
    .with_tally(tally);
    let columns = stats.report();
    let [xlsx_name, json_name] = report_blobs(&job.blob, job.id);
    let paths = [&xlsx_name, &json_name].map(|n| ctx.blobs.path(n));
    let [Some(xlsx_path), Some(json_path)] = paths else {
        return Err(SinkError::Fatal("report blob name rejected".into()));
    };
    let mut pages = |after: u64| {
        store
            .errors_after(job.id, after, ERROR_PAGE)
            .map_err(|e| e.to_string())
    };
    let written = report::write_xlsx(&xlsx_path, &summary, &columns, &mut pages)
        .and_then(|()| report::write_json(&json_path, &summary, &columns, &mut pages));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&xlsx_path);
        let _ = std::fs::remove_file(&json_path);
        return Err(SinkError::Retryable(e));
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (xlsx_size, json_size) = (size(&xlsx_path), size(&json_path));
    let sha = sha256_file(&xlsx_path).map_err(|e| SinkError::Retryable(e.to_string()))?;
    for name in [&xlsx_name, &json_name] {
        ctx.blobs
            .publish(name)
            .map_err(|e| SinkError::Retryable(e.to_string()))?;
    }
    let result = serde_json::json!({
        "summary": summary,
        "columns": columns,
        "report": {
            "blob": xlsx_name,
            "filename": format!("analysis-{}.xlsx", job.id),
            "size": xlsx_size,
            "sha256": sha,
            "jsonBlob": json_name,
            "jsonSize": json_size,
        },
    });
    if !store
        .job_set_result(lease, &result)
        .map_err(SinkError::from)?
    {
        return Err(SinkError::LeaseLost);
    }
    // The scratch table is dropped by the job's end (`job_finish`), in its transaction.
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
