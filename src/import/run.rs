//! Driving one import: stream the file from its checkpoint, validate, and hand each batch to a
//! [`BatchSink`] that commits rows, errors, counts and the new checkpoint together.
//!
//! Runs on a blocking thread. Stops between batches when asked to (shutdown, lost lease), so a
//! batch is either wholly committed or not at all, and a resumed job continues exactly where
//! the last commit left it. [`run_parts`] drives the parts of a split job the same way over one
//! read of the file, each part into its own sink with its own checkpoint.

use std::path::Path;

use super::partition::KeyHash;
use super::read::{Part, Source};
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
    /// A part reading the original file keeps only the records whose key hashes to it.
    part: Option<(KeyHash, Part)>,
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
        let part = (spec.options.part).map(|p| (KeyHash::new(spec.dataset, spec.mapping), p));
        Ok(Self {
            source,
            present: field_columns.iter().map(Option::is_some).collect(),
            validator: Validator::new(spec.dataset, field_columns, width),
            row_column,
            part,
            batch_size: spec.batch_size.max(1),
            record: csv::ByteRecord::new(),
            data: csv::ByteRecord::new(),
        })
    }

    fn is_full(&self, batch: &Batch) -> bool {
        batch.rows.len() + batch.errors.len() >= self.batch_size
    }

    /// The next batch (in `reuse`'s buffers when given) and the checkpoint after it; `None` at
    /// the end of the file.
    fn next_batch(&mut self, reuse: Option<Batch>) -> Result<Option<(Batch, u64)>, FileError> {
        let mut batch = reuse.unwrap_or_else(|| Batch::new(self.present.clone()));
        batch.clear();
        let before = self.source.position();
        while !self.is_full(&batch) {
            let Some(index) = self.source.next_record(&mut self.record)? else {
                break;
            };
            if let Some((keys, part)) = &mut self.part
                && keys.part_of(&self.record, part.count) != part.index
            {
                continue;
            }
            self.add(index, &mut batch)?;
        }
        batch.records = self.source.position() - before;
        if batch.rows.is_empty() && batch.errors.is_empty() {
            return Ok(None);
        }
        Ok(Some((batch, self.source.position())))
    }

    /// Validates the record just read (the file's record `index`) into `batch`.
    fn add(&mut self, index: u64, batch: &mut Batch) -> Result<(), FileError> {
        let (row, fields) = if self.row_column {
            self.data.clear();
            self.record
                .iter()
                .skip(1)
                .for_each(|f| self.data.push_field(f));
            let row = std::str::from_utf8(self.record.get(0).unwrap_or_default())
                .ok()
                .and_then(|r| r.parse().ok())
                .ok_or_else(|| FileError::Unreadable("a chunk file lost its row numbers".into()))?;
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
        Ok(())
    }
}

/// Finished batches that may wait for each part's writer in [`run_parts`]: one, so that the
/// reader goes on filling the other parts' batches while a writer is busy.
const PART_AHEAD: usize = 1;

/// What the reader of [`run_parts`] hands a part's writer: its next batch and checkpoint, the
/// end of the file (`None`), or the file's error.
type PartBatch = Option<Result<(Batch, u64), FileError>>;

/// One part of [`run_parts`]: its writer and whether it should stop.
pub struct PartSink<'s> {
    pub sink: &'s mut (dyn BatchSink + Send),
    pub stop: &'s (dyn Fn() -> bool + Sync),
}

/// Runs the parts of a split job together over one read of the original file (`spec.options`
/// without a part, checkpoint 0): every record goes to the part its key hashes to
/// ([`KeyHash`], as a part read alone would take it), and each part's writer thread commits
/// that part's batches with its own checkpoint (the file's records consumed when its batch was
/// handed over). A part that stops or fails ends alone: the others go on, and its records are
/// no longer validated. What each part came to, in order.
pub fn run_parts(
    spec: &RunSpec<'_>,
    parts: Vec<PartSink<'_>>,
) -> Vec<Result<RunOutcome, RunError>> {
    let n = parts.len();
    let mut reader = match BatchReader::open(spec) {
        Ok(reader) => reader,
        Err(e) => {
            let text = e.to_string();
            return (0..n)
                .map(|_| Err(FileError::Unreadable(text.clone()).into()))
                .collect();
        }
    };
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(n);
        let mut spares = Vec::with_capacity(n);
        let mut writers = Vec::with_capacity(n);
        for part in parts {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<PartBatch>(PART_AHEAD);
            let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Batch>();
            senders.push(Some(full_tx));
            spares.push(spare_rx);
            let retry = spec.retry;
            writers.push(
                std::thread::Builder::new()
                    .name("sluice-part".into())
                    .spawn_scoped(scope, move || write_part(part, full_rx, spare_tx, retry)),
            );
        }
        let read = move || {
            let count = n as u32;
            let mut keys = KeyHash::new(spec.dataset, spec.mapping);
            let fresh = |reader: &BatchReader<'_>| Batch::new(reader.present.clone());
            let mut batches: Vec<Batch> = (0..n).map(|_| fresh(&reader)).collect();
            // A part whose writer has returned is closed: its records are skipped.
            let send = |senders: &mut Vec<Option<_>>, i: usize, next: PartBatch| {
                let tx: &Option<std::sync::mpsc::SyncSender<PartBatch>> = &senders[i];
                if tx.as_ref().is_some_and(|tx| tx.send(next).is_err()) {
                    senders[i] = None;
                }
            };
            loop {
                let index = match reader.source.next_record(&mut reader.record) {
                    Ok(Some(index)) => index,
                    Ok(None) => break,
                    Err(e) => {
                        let text = e.to_string();
                        for i in 0..n {
                            let e = FileError::Unreadable(text.clone());
                            send(&mut senders, i, Some(Err(e)));
                        }
                        return;
                    }
                };
                let i = keys.part_of(&reader.record, count) as usize;
                if senders[i].is_none() {
                    if senders.iter().all(Option::is_none) {
                        return;
                    }
                    continue;
                }
                let mut batch = std::mem::take(&mut batches[i]);
                if let Err(e) = reader.add(index, &mut batch) {
                    send(&mut senders, i, Some(Err(e)));
                    continue;
                }
                if reader.is_full(&batch) {
                    batch.records = (batch.rows.len() + batch.errors.len()) as u64;
                    send(&mut senders, i, Some(Ok((batch, reader.source.position()))));
                    batch = spares[i].try_recv().unwrap_or_else(|_| fresh(&reader));
                    batch.clear();
                }
                batches[i] = batch;
            }
            let position = reader.source.position();
            for (i, mut batch) in batches.into_iter().enumerate() {
                if !batch.rows.is_empty() || !batch.errors.is_empty() {
                    batch.records = (batch.rows.len() + batch.errors.len()) as u64;
                    send(&mut senders, i, Some(Ok((batch, position))));
                }
                send(&mut senders, i, None);
            }
        };
        // Without its thread the reader's channels close at once: every part ends with the
        // "reader stopped" error below.
        let _ = std::thread::Builder::new()
            .name("sluice-read".into())
            .spawn_scoped(scope, read);
        writers
            .into_iter()
            .map(|writer| {
                let failed =
                    |what: &str| Err(SinkError::Fatal(format!("a part's writer {what}")).into());
                match writer {
                    Ok(thread) => thread.join().unwrap_or_else(|_| failed("panicked")),
                    Err(e) => failed(&format!("could not start: {e}")),
                }
            })
            .collect()
    })
}

/// The commit side of one part of [`run_parts`].
fn write_part(
    part: PartSink<'_>,
    full: std::sync::mpsc::Receiver<PartBatch>,
    spare: std::sync::mpsc::Sender<Batch>,
    retry: RetryBudget,
) -> Result<RunOutcome, RunError> {
    loop {
        if (part.stop)() {
            return Ok(RunOutcome::Stopped);
        }
        let (batch, checkpoint) = match full.recv() {
            Ok(Some(next)) => next?,
            Ok(None) => return Ok(RunOutcome::Finished),
            Err(_) => {
                return Err(
                    SinkError::Fatal("the file's reader stopped unexpectedly".into()).into(),
                );
            }
        };
        match commit_with_retry(part.sink, &batch, checkpoint, retry, part.stop) {
            Err(SinkError::Retryable(_)) if (part.stop)() => return Ok(RunOutcome::Stopped),
            other => other?,
        };
        let _ = spare.send(batch);
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
