//! Sources and their runs (migration 0015), one implementation for both backends.
//!
//! Two guards make a scheduled slot fire once across every node on the database: the scheduler
//! moves `next_due_at` with `UPDATE … WHERE id = $1 AND next_due_at = $2` (only the node whose
//! statement changed the row fires), and the run row's `UNIQUE (source_id, run_key)` with the
//! slot as key refuses a second run of the same slot whatever happens.

use chrono::{DateTime, Utc};

use super::sql::{Row, Sql, params};
use super::{
    DeliveryState, DueEmail, EmailDelivery, EmailsOf, JobId, NewEmail, NewSource, NotifiedJob,
    NotifyItem, RUN_HOLD_MINUTES, RunEnd, RunOutcome, RunStart, Source, SourceRun, SourceSaved,
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

/// Records how a run ended. Its e-mails are left to plan only when it imported or needs a
/// mapping and its source has addresses to tell.
pub fn run_finish(c: &mut dyn Sql, id: i64, end: &RunEnd) -> StoreResult<()> {
    c.execute(
        "UPDATE source_runs SET outcome = $2, file = $3, sha256 = $4, job_id = $5, reason = $6, \
         finished_at = $7, notified = NOT ( \
           ($2 IN ('imported', 'needs_mapping') \
            AND (SELECT notify FROM sources WHERE sources.id = source_runs.source_id) <> '[]') \
           OR ($2 = 'needs_mapping' AND EXISTS (SELECT 1 FROM email_subscriptions e \
               JOIN sources s ON s.org_id = e.org_id \
               WHERE s.id = source_runs.source_id AND e.on_needs_mapping = $8))) \
         WHERE id = $1",
        params![
            id,
            end.outcome.as_str(),
            end.file.as_deref(),
            end.sha256.as_deref(),
            end.job_id,
            end.reason.as_deref(),
            Utc::now(),
            true
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

/// Runs finished since `since` whose e-mails are due and not planned yet: ended `needs_mapping`
/// (with the organisation's subscribers to it), or imported and their job ended (or is gone).
pub fn notify_backlog(
    c: &mut dyn Sql,
    since: DateTime<Utc>,
    limit: u64,
) -> StoreResult<Vec<NotifyItem>> {
    let rows = c.query(
        "SELECT r.id, r.source_id, s.name, s.dataset, s.notify, r.outcome, r.file, r.reason, \
         j.id, j.status, j.filename, j.created_count, j.updated_count, j.unchanged_count, \
         j.error_count, j.error, s.org_id \
         FROM source_runs r JOIN sources s ON s.id = r.source_id \
         LEFT JOIN jobs j ON j.id = r.job_id \
         WHERE r.notified = $1 AND r.at > $2 AND (r.outcome = 'needs_mapping' OR \
         (r.outcome = 'imported' AND (j.id IS NULL OR j.status IN ('completed', 'failed', 'cancelled')))) \
         ORDER BY r.id LIMIT $3",
        params![false, since, limit],
    )?;
    let mut items = rows
        .iter()
        .map(|r| {
            let job = match r.opt_i64(8)? {
                None => None,
                Some(_) => Some(notified_job(r, 8)?),
            };
            let item = NotifyItem {
                run_id: r.i64(0)?,
                source_id: r.i64(1)?,
                source_name: r.text(2)?,
                dataset: r.text(3)?,
                notify: r.json(4, "source notify")?,
                subscribers: Vec::new(),
                outcome: r.text(5)?.parse().map_err(StoreError::Corrupt)?,
                file: r.opt_text(6)?,
                reason: r.opt_text(7)?,
                job,
            };
            Ok((item, r.i64(16)?))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    for (item, org) in &mut items {
        if item.outcome == RunOutcome::NeedsMapping {
            item.subscribers = super::subscriptions::needs_mapping_subscribers(c, *org)?;
        }
    }
    Ok(items.into_iter().map(|(item, _)| item).collect())
}

/// The job an e-mail tells of, from the columns `j.id, j.status, j.filename, j.created_count,
/// j.updated_count, j.unchanged_count, j.error_count, j.error` starting at `at`.
pub(super) fn notified_job(r: &Row, at: usize) -> StoreResult<NotifiedJob> {
    Ok(NotifiedJob {
        id: r.i64(at)?,
        status: r.text(at + 1)?,
        filename: r.text(at + 2)?,
        created: r.u64(at + 3)?,
        updated: r.u64(at + 4)?,
        unchanged: r.u64(at + 5)?,
        errors: r.u64(at + 6)?,
        error: r.opt_text(at + 7)?,
    })
}

/// Marks the run's e-mails planned and inserts them, once: false (nothing written) when another
/// node planned them first. Inside a write transaction.
pub fn notify_plan(
    c: &mut dyn Sql,
    run_id: i64,
    source_id: i64,
    emails: &[NewEmail],
) -> StoreResult<bool> {
    if c.execute(
        "UPDATE source_runs SET notified = $2 WHERE id = $1 AND notified = $3",
        params![run_id, true, false],
    )? == 0
    {
        return Ok(false);
    }
    insert_emails(c, Some(source_id), Some(run_id), emails)?;
    Ok(true)
}

/// Inserts e-mails to send, skipping any whose run and address, or job and address, already
/// has one.
pub fn insert_emails(
    c: &mut dyn Sql,
    source_id: Option<i64>,
    run_id: Option<i64>,
    emails: &[NewEmail],
) -> StoreResult<()> {
    let now = Utc::now();
    for e in emails {
        c.execute(
            "INSERT INTO email_deliveries (source_id, run_id, subscription_id, job_id, event, \
             address, subject, body, state, next_attempt_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10) ON CONFLICT DO NOTHING",
            params![
                source_id,
                run_id,
                e.subscription_id,
                e.job_id,
                e.event.as_str(),
                e.address.as_str(),
                e.subject.as_str(),
                e.body.as_str(),
                now.timestamp_millis(),
                now
            ],
        )?;
    }
    Ok(())
}

/// Claims up to `limit` pending e-mails due by `now_ms`, holding each for `hold_ms`. Inside a
/// write transaction.
pub fn email_claim_due(
    c: &mut dyn Sql,
    now_ms: i64,
    hold_ms: u64,
    limit: u64,
) -> StoreResult<Vec<DueEmail>> {
    let lock = c.dialect().skip_locked();
    c.query(
        &format!(
            "UPDATE email_deliveries SET next_attempt_ms = $1 + $2 \
             WHERE id IN (SELECT id FROM email_deliveries WHERE state = 'pending' \
                          AND next_attempt_ms <= $1 ORDER BY next_attempt_ms LIMIT $3{lock}) \
             RETURNING id, address, subject, body, attempts"
        ),
        params![now_ms, hold_ms, limit],
    )?
    .iter()
    .map(|r| {
        Ok(DueEmail {
            id: r.i64(0)?,
            address: r.text(1)?,
            subject: r.text(2)?,
            body: r.text(3)?,
            attempts: r.u32(4)?,
        })
    })
    .collect()
}

/// Records an attempt: the delivery's new state, attempts, error and next attempt.
pub fn email_record(
    c: &mut dyn Sql,
    id: i64,
    attempts: u32,
    state: DeliveryState,
    error: Option<&str>,
    next_attempt_ms: i64,
) -> StoreResult<()> {
    let delivered = (state == DeliveryState::Delivered).then(Utc::now);
    c.execute(
        "UPDATE email_deliveries SET state = $2, attempts = $3, last_error = $4, \
         next_attempt_ms = $5, delivered_at = $6 WHERE id = $1",
        params![
            id,
            state.as_str(),
            attempts,
            error,
            next_attempt_ms,
            delivered
        ],
    )?;
    Ok(())
}

/// A page of a source's or a user's e-mails, newest first, and their total.
pub fn email_list(
    c: &mut dyn Sql,
    of: EmailsOf,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<EmailDelivery>, u64)> {
    let (filter, id) = match of {
        EmailsOf::Source(id) => ("source_id = $1", id),
        EmailsOf::User(id) => (
            "subscription_id IN (SELECT id FROM email_subscriptions WHERE user_id = $1)",
            id,
        ),
    };
    let total = c
        .query_one(
            &format!("SELECT count(*) FROM email_deliveries WHERE {filter}"),
            params![id],
        )?
        .u64(0)?;
    let rows = c.query(
        &format!(
            "SELECT id, run_id, job_id, event, address, subject, state, attempts, last_error, \
             next_attempt_ms, created_at, delivered_at, subscription_id FROM email_deliveries \
             WHERE {filter} ORDER BY id DESC LIMIT $2 OFFSET $3"
        ),
        params![id, limit, offset],
    )?;
    let list = rows
        .iter()
        .map(|r| {
            let state = match r.text(6)?.as_str() {
                "pending" => DeliveryState::Pending,
                "delivered" => DeliveryState::Delivered,
                "failed" => DeliveryState::Failed,
                other => return Err(StoreError::Corrupt(format!("e-mail state `{other}`"))),
            };
            Ok(EmailDelivery {
                id: r.i64(0)?,
                run_id: r.opt_i64(1)?,
                subscription_id: r.opt_i64(12)?,
                job_id: r.opt_i64(2)?,
                event: r.text(3)?,
                address: r.text(4)?,
                subject: r.text(5)?,
                state,
                attempts: r.u32(7)?,
                last_error: r.opt_text(8)?,
                next_attempt_at: (state == DeliveryState::Pending)
                    .then(|| r.i64(9).ok().and_then(DateTime::from_timestamp_millis))
                    .flatten(),
                created_at: r.time(10)?,
                delivered_at: r.opt_time(11)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((list, total))
}
