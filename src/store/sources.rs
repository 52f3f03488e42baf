//! Sources and their runs (migration 0015), one implementation for both backends.
//!
//! Two guards make a scheduled slot fire once across every node on the database: the scheduler
//! moves `next_due_at` with `UPDATE … WHERE id = $1 AND next_due_at = $2` (only the node whose
//! statement changed the row fires), and the run row's `UNIQUE (source_id, run_key)` with the
//! slot as key refuses a second run of the same slot whatever happens.

use chrono::{DateTime, Utc};

use super::sql::{Row, Sql, params};
use super::{
    JobId, NewSource, RUN_HOLD_MINUTES, RunEnd, RunStart, Source, SourceRun, SourceSaved,
    StoreError, StoreResult,
};

const SOURCE_COLUMNS: &str = "id, org_id, name, dataset, kind, schedule, pick, options, notify, \
    config, secrets, state, enabled, created_by, user_id, created_at, updated_at, next_due_at";

fn source(r: &Row) -> StoreResult<Source> {
    Ok(Source {
        id: r.i64(0)?,
        org_id: r.i64(1)?,
        name: r.text(2)?,
        dataset: r.text(3)?,
        kind: r.text(4)?,
        schedule: r.json(5, "source schedule")?,
        pick: r.text(6)?,
        options: r.json(7, "source options")?,
        notify: r.json(8, "source notify")?,
        config: r.json(9, "source config")?,
        secrets: r.json(10, "source secrets")?,
        state: r.json(11, "source state")?,
        enabled: r.bool(12)?,
        created_by: r.opt_i64(13)?,
        user_id: r.opt_i64(14)?,
        created_at: r.time(15)?,
        updated_at: r.time(16)?,
        next_due_at: r.opt_time(17)?,
    })
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn name_taken(c: &mut dyn Sql, org_id: i64, name: &str, except: i64) -> StoreResult<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM sources WHERE org_id = $1 AND name = $2 AND id <> $3",
        params![org_id, name, except],
    )?
    .is_some())
}

/// Inside a write transaction.
pub fn source_insert(c: &mut dyn Sql, s: &NewSource) -> StoreResult<SourceSaved> {
    let now = Utc::now();
    let row = c.query_opt(
        &format!(
            "INSERT INTO sources (org_id, name, dataset, kind, schedule, pick, options, notify, \
             config, secrets, state, enabled, created_by, user_id, created_at, updated_at, \
             next_due_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, '{{}}', $11, $12, $13, \
             $14, $14, $15) ON CONFLICT (org_id, name) DO NOTHING RETURNING {SOURCE_COLUMNS}"
        ),
        params![
            s.org_id,
            s.name.as_str(),
            s.dataset.as_str(),
            s.kind.as_str(),
            json(&s.schedule),
            s.pick.as_str(),
            json(&s.options),
            json(&s.notify),
            json(&s.config),
            json(&s.secrets),
            s.enabled,
            s.created_by,
            s.user_id,
            now,
            s.next_due_at
        ],
    )?;
    Ok(match row {
        Some(r) => SourceSaved::Saved(Box::new(source(&r)?)),
        None => SourceSaved::NameTaken,
    })
}

/// Replaces a source's settings (its creator, creation time and run state stay); the state is
/// cleared when `reset_state` (another kind, path or URL: what was seen no longer applies).
/// Inside a write transaction.
pub fn source_update(
    c: &mut dyn Sql,
    id: i64,
    s: &NewSource,
    reset_state: bool,
) -> StoreResult<SourceSaved> {
    if name_taken(c, s.org_id, &s.name, id)? {
        return Ok(SourceSaved::NameTaken);
    }
    let row = c.query_opt(
        &format!(
            "UPDATE sources SET name = $2, dataset = $3, kind = $4, schedule = $5, pick = $6, \
             options = $7, notify = $8, config = $9, secrets = $10, enabled = $11, \
             updated_at = $12, next_due_at = $13, \
             state = CASE WHEN $14 THEN '{{}}' ELSE state END \
             WHERE id = $1 AND org_id = $15 RETURNING {SOURCE_COLUMNS}"
        ),
        params![
            id,
            s.name.as_str(),
            s.dataset.as_str(),
            s.kind.as_str(),
            json(&s.schedule),
            s.pick.as_str(),
            json(&s.options),
            json(&s.notify),
            json(&s.config),
            json(&s.secrets),
            s.enabled,
            Utc::now(),
            s.next_due_at,
            reset_state,
            s.org_id
        ],
    )?;
    Ok(match row {
        Some(r) => SourceSaved::Saved(Box::new(source(&r)?)),
        None => SourceSaved::Missing,
    })
}

pub fn source_get(c: &mut dyn Sql, id: i64) -> StoreResult<Option<Source>> {
    c.query_opt(
        &format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE id = $1"),
        params![id],
    )?
    .as_ref()
    .map(source)
    .transpose()
}

/// The organisation's sources (`None`: all), by id.
pub fn source_list(c: &mut dyn Sql, org_id: Option<i64>) -> StoreResult<Vec<Source>> {
    c.query(
        &format!(
            "SELECT {SOURCE_COLUMNS} FROM sources WHERE CAST($1 AS BIGINT) IS NULL OR org_id = $1 \
             ORDER BY id"
        ),
        params![org_id],
    )?
    .iter()
    .map(source)
    .collect()
}

/// Deletes a source and its runs. Inside a write transaction.
pub fn source_delete(c: &mut dyn Sql, id: i64) -> StoreResult<bool> {
    c.execute("DELETE FROM source_runs WHERE source_id = $1", params![id])?;
    Ok(c.execute("DELETE FROM sources WHERE id = $1", params![id])? > 0)
}

/// Enabled sources due by `now`, the longest overdue first.
pub fn sources_due(c: &mut dyn Sql, now: DateTime<Utc>, limit: u64) -> StoreResult<Vec<Source>> {
    c.query(
        &format!(
            "SELECT {SOURCE_COLUMNS} FROM sources WHERE enabled = $1 AND next_due_at <= $2 \
             ORDER BY next_due_at, id LIMIT $3"
        ),
        params![true, now, limit],
    )?
    .iter()
    .map(source)
    .collect()
}

/// The earliest next slot of any enabled source.
pub fn sources_next_due(c: &mut dyn Sql) -> StoreResult<Option<DateTime<Utc>>> {
    c.query_one(
        "SELECT min(next_due_at) FROM sources WHERE enabled = $1",
        params![true],
    )?
    .opt_time(0)
}

/// Moves the source's next slot from `due` to `next`; false when another node moved it first.
pub fn source_claim_slot(
    c: &mut dyn Sql,
    id: i64,
    due: DateTime<Utc>,
    next: DateTime<Utc>,
) -> StoreResult<bool> {
    Ok(c.execute(
        "UPDATE sources SET next_due_at = $3 WHERE id = $1 AND next_due_at = $2 AND enabled = $4",
        params![id, due, next, true],
    )? == 1)
}

pub fn source_set_state(c: &mut dyn Sql, id: i64, state: &serde_json::Value) -> StoreResult<()> {
    c.execute(
        "UPDATE sources SET state = $2 WHERE id = $1",
        params![id, json(state)],
    )?;
    Ok(())
}

const RUN_COLUMNS: &str = "id, source_id, run_key, trigger, scheduled_for, at, outcome, file, \
    sha256, job_id, reason, finished_at";

fn run(r: &Row) -> StoreResult<SourceRun> {
    Ok(SourceRun {
        id: r.i64(0)?,
        source_id: r.i64(1)?,
        run_key: r.text(2)?,
        trigger: r.text(3)?,
        scheduled_for: r.opt_time(4)?,
        at: r.time(5)?,
        outcome: r
            .opt_text(6)?
            .map(|o| o.parse().map_err(StoreError::Corrupt))
            .transpose()?,
        file: r.opt_text(7)?,
        sha256: r.opt_text(8)?,
        job_id: r.opt_i64(9)?,
        reason: r.opt_text(10)?,
        finished_at: r.opt_time(11)?,
    })
}

/// Starts a run under `run_key`, unless the source already has a run of that key or one in
/// progress: one run of a source at a time, across every node. Inside a write transaction.
pub fn run_start(
    c: &mut dyn Sql,
    source_id: i64,
    run_key: &str,
    trigger: &str,
    scheduled_for: Option<DateTime<Utc>>,
) -> StoreResult<RunStart> {
    c.lock_key(&format!("source-run:{source_id}"))?;
    let now = Utc::now();
    let hold = now - chrono::Duration::minutes(RUN_HOLD_MINUTES);
    let busy = c
        .query_opt(
            "SELECT 1 FROM source_runs WHERE source_id = $1 AND outcome IS NULL AND at > $2 \
             LIMIT 1",
            params![source_id, hold],
        )?
        .is_some();
    if busy {
        return Ok(RunStart::Busy);
    }
    let row = c.query_opt(
        &format!(
            "INSERT INTO source_runs (source_id, run_key, trigger, scheduled_for, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source_id, run_key) DO NOTHING \
             RETURNING {RUN_COLUMNS}"
        ),
        params![source_id, run_key, trigger, scheduled_for, now],
    )?;
    Ok(match row {
        Some(r) => RunStart::Started(Box::new(run(&r)?)),
        None => RunStart::KeyTaken,
    })
}

/// Records one more file of a run in progress (`<key>#N`), already ended. Inside a write
/// transaction.
pub fn run_add(c: &mut dyn Sql, of: &SourceRun, n: usize, end: &RunEnd) -> StoreResult<()> {
    let row = c.query_one(
        &format!(
            "INSERT INTO source_runs (source_id, run_key, trigger, scheduled_for, at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {RUN_COLUMNS}"
        ),
        params![
            of.source_id,
            format!("{}#{n}", of.run_key),
            of.trigger.as_str(),
            of.scheduled_for,
            Utc::now()
        ],
    )?;
    run_finish(c, run(&row)?.id, end)
}

pub fn run_finish(c: &mut dyn Sql, id: i64, end: &RunEnd) -> StoreResult<()> {
    c.execute(
        "UPDATE source_runs SET outcome = $2, file = $3, sha256 = $4, job_id = $5, reason = $6, \
         finished_at = $7 WHERE id = $1",
        params![
            id,
            end.outcome.as_str(),
            end.file.as_deref(),
            end.sha256.as_deref(),
            end.job_id,
            end.reason.as_deref(),
            Utc::now()
        ],
    )?;
    Ok(())
}

pub fn run_get(c: &mut dyn Sql, id: i64) -> StoreResult<Option<SourceRun>> {
    c.query_opt(
        &format!("SELECT {RUN_COLUMNS} FROM source_runs WHERE id = $1"),
        params![id],
    )?
    .as_ref()
    .map(run)
    .transpose()
}

/// A page of the source's runs, newest first, and their total.
pub fn run_list(
    c: &mut dyn Sql,
    source_id: i64,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<SourceRun>, u64)> {
    let total = c
        .query_one(
            "SELECT count(*) FROM source_runs WHERE source_id = $1",
            params![source_id],
        )?
        .u64(0)?;
    let runs = c
        .query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM source_runs WHERE source_id = $1 \
                 ORDER BY id DESC LIMIT $2 OFFSET $3"
            ),
            params![source_id, limit, offset],
        )?
        .iter()
        .map(run)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((runs, total))
}

/// The job of an earlier run of the source that imported a file with this content.
pub fn run_imported(c: &mut dyn Sql, source_id: i64, sha256: &str) -> StoreResult<Option<JobId>> {
    c.query_opt(
        "SELECT job_id FROM source_runs WHERE source_id = $1 AND sha256 = $2 \
         AND outcome = 'imported' ORDER BY id LIMIT 1",
        params![source_id, sha256],
    )?
    .map(|r| r.opt_i64(0).map(|j| j.unwrap_or(0)))
    .transpose()
}
