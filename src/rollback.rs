//! Rollback jobs (`kind = rollback`, issue 16): undo what an import changed, from the change
//! ledger. Owns the job's parameters ([`RollbackParams`], `jobs.params`) and its run: the total
//! (the target's ledger entries), then batches of [`BATCH`] entries, each one transaction of
//! the store ([`crate::store::rollback`]) with the rows, the rollback's own ledger entries, the
//! conflicts as row errors, the counts and the checkpoint — retried on system errors like an
//! import's batch, resumed from the checkpoint after a crash or restart.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::import::run::{RunError, with_retry};
use crate::import::{FileError, RunOutcome, SinkError};
use crate::jobs::JobContext;
use crate::store::{Job, JobId, Lease};

/// Ledger entries undone per transaction.
pub const BATCH: u64 = 1_000;

/// What a rollback job was asked for (`jobs.params`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackParams {
    /// The job whose changes are undone.
    pub rollback_of: JobId,
    /// Overwrite rows a later job changed too, instead of reporting them as conflicts.
    #[serde(default)]
    pub force: bool,
}

impl RollbackParams {
    pub fn of(job: &Job) -> Option<RollbackParams> {
        job.params
            .as_ref()
            .and_then(|p| serde_json::from_value(p.clone()).ok())
    }
}

/// Runs a rollback job from its checkpoint: see the module doc.
pub fn run(
    ctx: &JobContext,
    job: &Job,
    lease: &Lease,
    stop: &AtomicBool,
) -> Result<RunOutcome, RunError> {
    let params = RollbackParams::of(job)
        .ok_or_else(|| FileError::Output("the rollback's parameters are not readable".into()))?;
    let dataset = ctx.datasets.get(&job.dataset).ok_or_else(|| {
        FileError::Output(format!("dataset `{}` is no longer configured", job.dataset))
    })?;
    let org = job
        .org_id
        .ok_or_else(|| FileError::Output("the job belongs to no organisation".into()))?;
    let stopped = || stop.load(Ordering::SeqCst);
    let budget = ctx.retry_budget();
    if job.total_rows.is_none() {
        let total = with_retry(budget, "counting the ledger entries", &stopped, || {
            ctx.store
                .ledger_entries_of(params.rollback_of)
                .map_err(SinkError::from)
        })?;
        let recorded = with_retry(budget, "recording the total", &stopped, || {
            ctx.store
                .job_set_total(lease, total)
                .map_err(SinkError::from)
        })?;
        if !recorded {
            return Err(SinkError::LeaseLost.into());
        }
        ctx.events.publish();
    }
    loop {
        if stopped() {
            return Ok(RunOutcome::Stopped);
        }
        let done = with_retry(budget, "rolling back a batch", &stopped, || {
            ctx.store
                .rollback_batch(
                    &dataset,
                    lease,
                    params.rollback_of,
                    org,
                    params.force,
                    BATCH,
                )
                .map_err(SinkError::from)
        })?;
        let Some(done) = done else {
            return Err(SinkError::LeaseLost.into());
        };
        crate::telemetry::rollback_committed(&job.dataset, &done);
        ctx.events.publish();
        if done.entries < BATCH {
            tracing::info!(target = params.rollback_of, "rollback done");
            return Ok(RunOutcome::Finished);
        }
    }
}
