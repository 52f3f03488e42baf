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

/// Finished batches that may wait in the channel. 0: the reader builds the next batch while the
/// previous one commits and hands it over when the commit side is ready, so at most three
/// batches exist at once (committing, handed over, being built); a waiting slot (1) measured no
/// faster and held 4 MB more (BENCHMARKS.md, issue 17).
const READ_AHEAD: usize = 0;

/// Streams the job's file from its checkpoint into `sink`, one batch per transaction.
///
/// Pipelined: a reader thread parses and validates the next batch while this thread commits
/// the previous one, so a job costs about max(parse, write) rather than their sum. Batches are
/// committed in file order with their own checkpoint, exactly as when read one at a time; the
/// reader runs one batch ahead (see [`READ_AHEAD`]) and stops when the commit side returns.
pub fn run(
    spec: &RunSpec<'_>,
    sink: &mut dyn BatchSink,
    should_stop: &dyn Fn() -> bool,
) -> Result<RunOutcome, RunError> {
    let mut reader = BatchReader::open(spec)?;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        // Committed batches go back to the reader, so their buffers are reused.
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Batch>();
        std::thread::Builder::new()
            .name("sluice-read".into())
            .spawn_scoped(scope, move || {
                loop {
                    // `None`: the end of the file, said explicitly (a reader that died says
                    // nothing, and must not read as a finished file).
                    let next = reader.next_batch(spare_rx.try_recv().ok()).transpose();
                    let more = matches!(next, Some(Ok(_)));
                    // A closed channel: the commit side has returned (stop, error).
                    if full_tx.send(next).is_err() || !more {
                        return;
                    }
                }
            })
            .map_err(FileError::Io)?;
        loop {
            if should_stop() {
                return Ok(RunOutcome::Stopped);
            }
            let next = match full_rx.recv() {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(RunOutcome::Finished),
                Err(_) => {
                    return Err(
                        SinkError::Fatal("the file's reader stopped unexpectedly".into()).into(),
                    );
                }
            };
            let (batch, checkpoint) = next?;
            // Asked to stop while a commit waits for the database (shutdown, lost lease, time
            // limit): stop at this batch boundary; the batch is redone from the checkpoint.
            match commit_with_retry(sink, &batch, checkpoint, spec.retry, should_stop) {
                Err(SinkError::Retryable(_)) if should_stop() => return Ok(RunOutcome::Stopped),
                other => other?,
            };
            let _ = spare_tx.send(batch);
        }
    })
}

/// The read side of a run: the file from its checkpoint, as validated batches.
struct BatchReader<'a> {
    source: Source,
    validator: Validator<'a>,
    present: Vec<bool>,
    /// A chunk file carries the original row number in an extra first column.
    row_column: bool,
    batch_size: usize,
    record: csv::ByteRecord,
    data: csv::ByteRecord,
}

impl<'a> BatchReader<'a> {
    fn open(spec: &RunSpec<'a>) -> Result<Self, RunError> {
        let mut source = Source::open(spec.path, spec.format, spec.options)?;
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
        Ok(Self {
            source,
            present: field_columns.iter().map(Option::is_some).collect(),
            validator: Validator::new(spec.dataset, field_columns, width),
            row_column,
            batch_size: spec.batch_size.max(1),
            record: csv::ByteRecord::new(),
            data: csv::ByteRecord::new(),
        })
    }

    /// The next batch (in `reuse`'s buffers when given) and the checkpoint after it; `None` at
    /// the end of the file.
    fn next_batch(&mut self, reuse: Option<Batch>) -> Result<Option<(Batch, u64)>, FileError> {
        let mut batch = reuse.unwrap_or_else(|| Batch::new(self.present.clone()));
        batch.clear();
        let before = self.source.position();
        while batch.rows.len() + batch.errors.len() < self.batch_size {
            let Some(index) = self.source.next_record(&mut self.record)? else {
                break;
            };
            let (row, fields) = if self.row_column {
                self.data.clear();
                self.record
                    .iter()
                    .skip(1)
                    .for_each(|f| self.data.push_field(f));
                let row = std::str::from_utf8(self.record.get(0).unwrap_or_default())
                    .ok()
                    .and_then(|r| r.parse().ok())
                    .ok_or_else(|| {
                        FileError::Unreadable("a chunk file lost its row numbers".into())
                    })?;
                (row, &self.data)
            } else {
                (index + 2, &self.record)
            };
            let cells = self.source.cell_errors();
            match self
                .validator
                .validate(fields, row, cells, &mut batch.values)
            {
                Ok(()) => {
                    batch.rows.push(row);
                    batch.raw.push(fields);
                }
                Err(e) => batch.errors.push(e),
            }
        }
        batch.records = self.source.position() - before;
        if batch.records == 0 {
            return Ok(None);
        }
        Ok(Some((batch, self.source.position())))
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
