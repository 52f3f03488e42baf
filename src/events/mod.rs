//! Live job events: the in-process bell rung after every batch commit and job end, the JSON
//! shape of an event, and the stream of events that Server-Sent Events and webhooks read.
//!
//! The source of truth is the store's job event log (`JobStore::events_after`), written in the
//! same transaction as each change, so events are complete and ordered whichever process made
//! them (`sluice serve` or `sluice worker`). The [`EventBus`] only wakes readers early; readers
//! also look every [`POLL`] for changes made by other processes. Reading is pull-based: a slow
//! reader only delays itself, and ringing the bell never blocks a worker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value as JsonValue, json};
use tokio_util::sync::CancellationToken;

use crate::import::{Batch, BatchCounts, BatchSink, SinkError};
use crate::jobs::JobContext;
use crate::store::{JobEvent, JobId, StoreError};

/// How often a reader looks for events made by other processes when not woken.
pub const POLL: Duration = Duration::from_millis(500);
/// Events read from the store at a time.
const PAGE: u64 = 500;

/// A bell rung after each change; many listeners, and ringing never waits for them. Closing it
/// (at shutdown) ends every reader, so open event streams do not hold the server up.
#[derive(Clone)]
pub struct EventBus {
    tx: Arc<tokio::sync::watch::Sender<u64>>,
    closed: CancellationToken,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: Arc::new(tokio::sync::watch::Sender::new(0)),
            closed: CancellationToken::new(),
        }
    }
}

impl EventBus {
    /// Ends every reader (their streams finish); for shutdown.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Wakes every listener.
    pub fn publish(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// A [`BatchSink`] that rings the bell after every committed batch.
pub struct PublishingSink {
    inner: Box<dyn BatchSink + Send>,
    bus: EventBus,
}

impl PublishingSink {
    pub fn new(inner: Box<dyn BatchSink + Send>, bus: EventBus) -> Self {
        Self { inner, bus }
    }
}

impl BatchSink for PublishingSink {
    fn commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError> {
        let counts = self.inner.commit(batch, checkpoint)?;
        self.bus.publish();
        Ok(counts)
    }
}

/// The Server-Sent Events name of an event: `done` when it ends the job (with results),
/// `status` for other status changes and new jobs, `progress` for batches and totals.
pub fn event_name(e: &JobEvent) -> &'static str {
    if e.status.is_finished() && e.kind != "progress" {
        "done"
    } else if e.kind == "progress" {
        "progress"
    } else {
        "status"
    }
}

/// An event as clients see it: the job's progress in the shape of the status endpoint.
pub fn event_json(e: &JobEvent) -> JsonValue {
    let success = e.created_count + e.updated_count + e.unchanged_count;
    let processed = success + e.error_count;
    let total = e.total_rows.unwrap_or(processed).max(processed);
    let percentage = if e.status == crate::store::JobStatus::Completed {
        100
    } else {
        (processed * 100).checked_div(total).unwrap_or(0).min(100)
    };
    let end = e.completed_at.unwrap_or(e.at);
    let elapsed = e
        .started_at
        .map(|s| (end - s).num_milliseconds().max(0) as f64 / 1000.0);
    let rows_per_second = elapsed
        .filter(|s| *s > 0.0)
        .map(|s| (processed as f64 / s).round() as u64);
    let eta = match (e.status, rows_per_second) {
        (crate::store::JobStatus::Processing, Some(rps)) if rps > 0 && e.total_rows.is_some() => {
            Some(total.saturating_sub(processed).div_ceil(rps))
        }
        _ => None,
    };
    let mut data = json!({
        "seq": e.seq,
        "event": event_name(e),
        "jobId": e.job_id,
        "dataset": e.dataset,
        "filename": e.filename,
        "status": e.status.as_str(),
        "progress": {"current": processed, "total": total, "percentage": percentage},
        "createdCount": e.created_count,
        "updatedCount": e.updated_count,
        "unchangedCount": e.unchanged_count,
        "errorCount": e.error_count,
        "batches": e.batches_done,
        "rowsPerSecond": rows_per_second,
        "etaSeconds": eta,
        "elapsedSeconds": elapsed,
        "startedAt": e.started_at,
        "completedAt": e.completed_at,
        "at": e.at,
        "error": e.error,
        "statusUrl": format!("/api/v1/import/status/{}", e.job_id),
        "errorsUrl": format!("/api/v1/import/{}/errors", e.job_id),
    });
    if e.status.is_finished() {
        data["results"] = json!({
            "totalRows": processed,
            "successCount": success,
            "errorCount": e.error_count,
            "createdCount": e.created_count,
            "updatedCount": e.updated_count,
            "unchangedCount": e.unchanged_count,
        });
    }
    data
}

/// Reads events after a position, oldest first, waiting for new ones when caught up.
pub struct EventReader {
    ctx: Arc<JobContext>,
    wake: tokio::sync::watch::Receiver<u64>,
    closed: CancellationToken,
    after: i64,
    job: Option<JobId>,
    queued: VecDeque<JobEvent>,
}

impl EventReader {
    /// Events with `seq > after`; only `job`'s when given.
    pub fn new(ctx: Arc<JobContext>, after: i64, job: Option<JobId>) -> Self {
        let wake = ctx.events.subscribe();
        let closed = ctx.events.closed.clone();
        Self {
            ctx,
            wake,
            closed,
            after,
            job,
            queued: VecDeque::new(),
        }
    }

    /// Whether an event is already waiting (queued, or in the store after the last one read).
    pub async fn has_more(&mut self) -> Result<bool, StoreError> {
        if !self.queued.is_empty() {
            return Ok(true);
        }
        let (after, job) = (self.after, self.job);
        let page = self
            .ctx
            .store_call(move |s| s.events_after(after, job, PAGE))
            .await?;
        let more = !page.is_empty();
        self.queued.extend(page);
        Ok(more)
    }

    /// The next event, waiting as long as it takes; `None` once the bus is closed (shutdown),
    /// an error only when the store fails.
    pub async fn next(&mut self) -> Result<Option<JobEvent>, StoreError> {
        loop {
            if self.closed.is_cancelled() {
                return Ok(None);
            }
            if let Some(e) = self.queued.pop_front() {
                self.after = e.seq;
                return Ok(Some(e));
            }
            // Mark the bell as heard before reading, so a ring during the read is not lost.
            self.wake.borrow_and_update();
            let (after, job) = (self.after, self.job);
            let page = self
                .ctx
                .store_call(move |s| s.events_after(after, job, PAGE))
                .await?;
            if !page.is_empty() {
                self.queued.extend(page);
                continue;
            }
            tokio::select! {
                _ = self.wake.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = self.closed.cancelled() => {}
            }
        }
    }
}
