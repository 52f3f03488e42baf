//! Driving one import: stream the file from its checkpoint, validate, and hand each batch to a
//! [`BatchSink`] that commits rows, errors, counts and the new checkpoint together.
//!
//! Runs on a blocking thread. Stops between batches when asked to (shutdown, lost lease), so a
//! batch is either wholly committed or not at all, and a resumed job continues exactly where
//! the last commit left it.

use std::path::Path;

use super::read::Source;
use super::validate::Validator;
use super::{Batch, BatchCounts, FileError, Format, Mapping, SourceOptions};
use crate::backoff::{Backoff, Retry, RetryBudget, retry_blocking};
use crate::dataset::Dataset;

/// Where batches go: a store backend's writer for one claimed job.
pub trait BatchSink {
    /// Writes the batch's valid rows and row errors, moves the job's checkpoint to `checkpoint`
    /// (records consumed) and adds the batch's counts, all in one transaction that is refused
    /// when the job's lease is no longer ours.
    fn commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the job's lease was lost to another worker")]
    LeaseLost,
    /// A system error that may pass: database busy or unavailable, I/O.
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Fatal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// What one run of the pipeline over a job came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every record of the file is committed.
    Finished,
    /// Asked to stop; everything up to the last checkpoint is committed.
    Stopped,
    /// The job was divided into chunk jobs, which carry on the work.
    Split,
}

/// Everything the pipeline needs to know about one job.
pub struct RunSpec<'a> {
    pub dataset: &'a Dataset,
    pub path: &'a Path,
    pub format: Format,
    pub options: &'a SourceOptions,
    pub mapping: &'a Mapping,
    /// Records already committed by an earlier attempt.
    pub checkpoint: u64,
    pub batch_size: usize,
    /// How long a batch commit retries a system error before the job fails.
    pub retry: RetryBudget,
}

/// Streams the job's file from its checkpoint into `sink`, one batch per transaction.
pub fn run(
    spec: &RunSpec<'_>,
    sink: &mut dyn BatchSink,
    should_stop: &dyn Fn() -> bool,
) -> Result<RunOutcome, RunError> {
    let mut source = Source::open(spec.path, spec.format, spec.options)?;
    // A chunk file carries the original row number in an extra first column.
    let row_column = spec.options.row_column;
    let width = source.headers().len() - usize::from(row_column);
    if width != spec.mapping.columns.len() {
        return Err(FileError::Unreadable(
            "the stored file no longer matches the header checked at upload".into(),
        )
        .into());
    }
    source.skip_to(spec.checkpoint)?;
    let field_columns = spec.mapping.field_columns(spec.dataset);
    let mut batch = Batch::new(field_columns.iter().map(Option::is_some).collect());
    let validator = Validator::new(spec.dataset, field_columns, width);
    let mut record = csv::ByteRecord::new();
    let mut data = csv::ByteRecord::new();
    let batch_size = spec.batch_size.max(1);
    loop {
        if should_stop() {
            return Ok(RunOutcome::Stopped);
        }
        batch.clear();
        let before = source.position();
        while batch.rows.len() + batch.errors.len() < batch_size {
            let Some(index) = source.next_record(&mut record)? else {
                break;
            };
            let (row, fields) = if row_column {
                data.clear();
                record.iter().skip(1).for_each(|f| data.push_field(f));
                let row = std::str::from_utf8(record.get(0).unwrap_or_default())
                    .ok()
                    .and_then(|r| r.parse().ok())
                    .ok_or_else(|| {
                        FileError::Unreadable("a chunk file lost its row numbers".into())
                    })?;
                (row, &data)
            } else {
                (index + 2, &record)
            };
            match validator.validate(fields, row, source.cell_errors(), &mut batch.values) {
                Ok(()) => {
                    batch.rows.push(row);
                    batch.raw.push(fields);
                }
                Err(e) => batch.errors.push(e),
            }
        }
        batch.records = source.position() - before;
        if batch.records == 0 {
            return Ok(RunOutcome::Finished);
        }
        // Asked to stop while a commit waits for the database (shutdown, lost lease, time
        // limit): stop at this batch boundary; the batch is redone from the checkpoint.
        match commit_with_retry(sink, &batch, source.position(), spec.retry, should_stop) {
            Err(SinkError::Retryable(_)) if should_stop() => return Ok(RunOutcome::Stopped),
            other => other?,
        };
    }
}

/// Commits a batch, retrying system errors with the store's backoff within the job's budget.
fn commit_with_retry(
    sink: &mut dyn BatchSink,
    batch: &Batch,
    checkpoint: u64,
    budget: RetryBudget,
    stop: &dyn Fn() -> bool,
) -> Result<BatchCounts, SinkError> {
    let mut tries = 0u32;
    with_retry(budget, "batch commit", stop, || {
        tries += 1;
        if tries > 1 {
            crate::telemetry::batch_retry();
        }
        sink.commit(batch, checkpoint)
    })
}

/// Runs `f` while it fails with a retryable (system) error, within `budget` (at least its
/// attempts, and for its grace from the first failure), waiting [`Backoff::STORE`] between
/// tries: how the pipeline's store calls wait out a busy, restarting or unreachable database.
/// When `stop` turns true meanwhile, the last (retryable) error is returned at once.
pub fn with_retry<T>(
    budget: RetryBudget,
    what: &str,
    stop: &dyn Fn() -> bool,
    f: impl FnMut() -> Result<T, SinkError>,
) -> Result<T, SinkError> {
    retry_blocking(
        Retry::new(Backoff::STORE, budget),
        what,
        |e| matches!(e, SinkError::Retryable(_)),
        stop,
        f,
    )
}
