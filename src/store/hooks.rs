//! Live progress and notifications, one implementation for both backends: reading the job
//! event log (written by the triggers of migration 0005), webhooks and their deliveries, and
//! saved mapping templates.
//!
//! PostgreSQL commits concurrent transactions in any order, so an event with a higher `seq` can
//! be visible before one with a lower `seq` commits. There, readers stop at the *settled
//! horizon*: the highest `seq` below which every number is either visible or a gap older than
//! three seconds (a rolled-back transaction). A reader resuming from `Last-Event-ID`, and the
//! webhook cursor, never step over an event that commits late. SQLite commits one writer at a
//! time, in order, so its horizon is simply the end of the log.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::sql::{Row, Sql, params};
use super::{
    Delivery, DeliveryAttempt, DeliveryState, DueDelivery, JobEvent, JobId, NewDelivery,
    StoreError, StoreResult, Template, Webhook,
};

const EVENT_COLUMNS: &str = "seq, job_id, kind, dataset, filename, status, total_rows, rows_done, \
    created_count, updated_count, unchanged_count, error_count, batches_done, error, started_at, \
    completed_at, at, (SELECT org_id FROM jobs WHERE jobs.id = job_events.job_id)";

/// Events looked at when computing the horizon.
const HORIZON_SCAN: i64 = 10_000;

fn event(r: &Row) -> StoreResult<JobEvent> {
    Ok(JobEvent {
        seq: r.i64(0)?,
        job_id: r.i64(1)?,
        kind: r.text(2)?,
        dataset: r.text(3)?,
        filename: r.text(4)?,
        status: r
            .text(5)?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("event status: {e}")))?,
        total_rows: r.opt_u64(6)?,
        rows_done: r.u64(7)?,
        created_count: r.u64(8)?,
        updated_count: r.u64(9)?,
        unchanged_count: r.u64(10)?,
        error_count: r.u64(11)?,
        batches_done: r.u64(12)?,
        error: r.opt_text(13)?,
        started_at: r.opt_time(14)?,
        completed_at: r.opt_time(15)?,
        at: r.time(16)?,
        org_id: r.opt_i64(17)?,
    })
}

/// The highest `seq` after `after` up to which the log is complete (see the module doc).
fn settled_horizon(c: &mut dyn Sql, after: i64) -> StoreResult<i64> {
    if !c.dialect().commits_out_of_order() {
        return Ok(i64::MAX);
    }
    let rows = c.query(
        "SELECT seq, at < clock_timestamp() - interval '3 seconds' FROM job_events \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
        params![after, HORIZON_SCAN],
    )?;
    let mut horizon = after;
    for r in &rows {
        let (seq, settled) = (r.i64(0)?, r.bool(1)?);
        if seq != horizon + 1 && !settled {
            break;
        }
        horizon = seq;
    }
    Ok(horizon)
}

pub fn events_after(
    c: &mut dyn Sql,
    after: i64,
    job: Option<JobId>,
    limit: u64,
) -> StoreResult<Vec<JobEvent>> {
    let horizon = settled_horizon(c, after)?;
    c.query(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM job_events WHERE seq > $1 AND seq <= $2 \
             AND (CAST($3 AS BIGINT) IS NULL OR job_id = $3) ORDER BY seq LIMIT $4"
        ),
        params![after, horizon, job, limit],
    )?
    .iter()
    .map(event)
    .collect()
}

pub fn events_last_seq(c: &mut dyn Sql) -> StoreResult<i64> {
    c.query_one(
        "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM job_events",
        &[],
    )?
    .i64(0)
}

const WEBHOOK_COLUMNS: &str = "id, url, events, secret, created_by, created_at, org_id";

fn webhook(r: &Row) -> StoreResult<Webhook> {
    Ok(Webhook {
        id: r.i64(0)?,
        url: r.text(1)?,
        events: r.json(2, "webhook events")?,
        secret: r.text(3)?,
        created_by: r.opt_i64(4)?,
        created_at: r.time(5)?,
        org_id: r.opt_i64(6)?,
    })
}

pub fn webhook_insert(
    c: &mut dyn Sql,
    url: &str,
    events: &[String],
    secret: &str,
    created_by: Option<i64>,
    org_id: i64,
) -> StoreResult<Webhook> {
    let events_json = serde_json::to_string(events).unwrap_or_else(|_| "[]".into());
    webhook(&c.query_one(
        &format!(
            "INSERT INTO webhooks (url, events, secret, created_by, created_at, org_id) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {WEBHOOK_COLUMNS}"
        ),
        params![url, events_json, secret, created_by, Utc::now(), org_id],
    )?)
}

/// The organisation's webhooks (`None`: every webhook, for the dispatcher), by id.
pub fn webhook_list(c: &mut dyn Sql, org_id: Option<i64>) -> StoreResult<Vec<Webhook>> {
    c.query(
        &format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE CAST($1 AS BIGINT) IS NULL OR org_id = $1 \
             ORDER BY id"
        ),
        params![org_id],
    )?
    .iter()
    .map(webhook)
    .collect()
}

pub fn webhook_delete(c: &mut dyn Sql, id: i64) -> StoreResult<bool> {
    Ok(c.execute("DELETE FROM webhooks WHERE id = $1", params![id])? > 0)
}

pub fn delivery_backlog(c: &mut dyn Sql, limit: u64) -> StoreResult<(i64, Vec<JobEvent>)> {
    let cursor = c
        .query_one("SELECT seq FROM webhook_cursor WHERE id = 1", &[])?
        .i64(0)?;
    let horizon = settled_horizon(c, cursor)?;
    let events = c
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM job_events WHERE seq > $1 AND seq <= $2 AND kind = 'status' \
                 AND status IN ('completed', 'failed', 'cancelled') ORDER BY seq LIMIT $3"
            ),
            params![cursor, horizon, limit],
        )?
        .iter()
        .map(event)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((cursor, events))
}

/// Inside a write transaction.
pub fn delivery_insert_many(
    c: &mut dyn Sql,
    from: i64,
    to: i64,
    deliveries: &[NewDelivery],
) -> StoreResult<bool> {
    let moved = c.execute(
        "UPDATE webhook_cursor SET seq = $2 WHERE id = 1 AND seq = $1",
        params![from, to],
    )?;
    if moved == 0 {
        return Ok(false);
    }
    let now = Utc::now();
    for d in deliveries {
        c.execute(
            "INSERT INTO webhook_deliveries (webhook_id, event_seq, event, job_id, payload, state, \
             next_attempt_ms, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) \
             ON CONFLICT (webhook_id, event_seq) DO NOTHING",
            params![
                d.webhook_id,
                d.event_seq,
                d.event.as_str(),
                d.job_id,
                d.payload.as_str(),
                now.timestamp_millis(),
                now
            ],
        )?;
    }
    Ok(true)
}

/// Whether any delivery is due (looked at before taking a write lock: the dispatcher asks
/// often and usually finds nothing).
pub fn delivery_any_due(c: &mut dyn Sql, now_ms: i64) -> StoreResult<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_ms <= $1 LIMIT 1",
        params![now_ms],
    )?
    .is_some())
}

/// Inside a write transaction.
pub fn delivery_claim_due(
    c: &mut dyn Sql,
    now_ms: i64,
    hold_ms: u64,
    limit: u64,
) -> StoreResult<Vec<DueDelivery>> {
    let lock = c.dialect().skip_locked();
    c.query(
        &format!(
            "UPDATE webhook_deliveries SET next_attempt_ms = $1 + $2 \
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' \
                          AND next_attempt_ms <= $1 ORDER BY next_attempt_ms LIMIT $3{lock}) \
             RETURNING id, (SELECT url FROM webhooks w WHERE w.id = webhook_id), \
             (SELECT secret FROM webhooks w WHERE w.id = webhook_id), event, payload, attempts"
        ),
        params![now_ms, hold_ms, limit],
    )?
    .iter()
    .filter(|r| r.opt_text(1).ok().flatten().is_some())
    .map(|r| {
        Ok(DueDelivery {
            id: r.i64(0)?,
            url: r.text(1)?,
            secret: r.text(2)?,
            event: r.text(3)?,
            payload: r.text(4)?,
            attempts: r.u32(5)?,
        })
    })
    .collect()
}

/// Inside a write transaction.
pub fn delivery_record(
    c: &mut dyn Sql,
    id: i64,
    attempt: &DeliveryAttempt,
    state: DeliveryState,
    next_attempt_ms: i64,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at, http_status, error, duration_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (delivery_id, attempt) DO UPDATE SET \
         at = excluded.at, http_status = excluded.http_status, error = excluded.error, \
         duration_ms = excluded.duration_ms",
        params![
            id,
            attempt.attempt,
            attempt.at,
            attempt.http_status.map(u32::from),
            attempt.error.as_deref(),
            attempt.duration_ms
        ],
    )?;
    c.execute(
        "UPDATE webhook_deliveries SET state = $2, attempts = $3, next_attempt_ms = $4 WHERE id = $1",
        params![id, state.as_str(), attempt.attempt, next_attempt_ms],
    )?;
    Ok(())
}

fn delivery_state(s: &str) -> StoreResult<DeliveryState> {
    Ok(match s {
        "pending" => DeliveryState::Pending,
        "delivered" => DeliveryState::Delivered,
        "failed" => DeliveryState::Failed,
        other => return Err(StoreError::Corrupt(format!("delivery state `{other}`"))),
    })
}

pub fn delivery_list(
    c: &mut dyn Sql,
    webhook_id: i64,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<Delivery>, u64)> {
    let total = c
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1",
            params![webhook_id],
        )?
        .u64(0)?;
    let rows = c.query(
        "SELECT id, event, job_id, state, next_attempt_ms, created_at FROM webhook_deliveries \
         WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
        params![webhook_id, limit, offset],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id = r.i64(0)?;
        let attempts = c
            .query(
                "SELECT attempt, at, http_status, error, duration_ms FROM webhook_attempts \
                 WHERE delivery_id = $1 ORDER BY attempt",
                params![id],
            )?
            .iter()
            .map(|a| {
                Ok(DeliveryAttempt {
                    attempt: a.u32(0)?,
                    at: a.time(1)?,
                    http_status: a.opt_i64(2)?.map(|s| s.clamp(0, 999) as u16),
                    error: a.opt_text(3)?,
                    duration_ms: a.u64(4)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let state = delivery_state(&r.text(3)?)?;
        out.push(Delivery {
            id,
            webhook_id,
            event: r.text(1)?,
            job_id: r.i64(2)?,
            state,
            attempts,
            next_attempt_at: (state == DeliveryState::Pending)
                .then(|| r.i64(4).ok().and_then(DateTime::from_timestamp_millis))
                .flatten(),
            created_at: r.time(5)?,
        });
    }
    Ok((out, total))
}

const TEMPLATE_COLUMNS: &str = "dataset, name, mapping, created_at, updated_at, used_at";

fn template(r: &Row) -> StoreResult<Template> {
    Ok(Template {
        dataset: r.text(0)?,
        name: r.text(1)?,
        mapping: r.json(2, "template mapping")?,
        created_at: r.time(3)?,
        updated_at: r.time(4)?,
        used_at: r.opt_time(5)?,
    })
}

pub fn template_save(
    c: &mut dyn Sql,
    org_id: i64,
    dataset: &str,
    name: &str,
    mapping: &BTreeMap<String, Option<String>>,
) -> StoreResult<Template> {
    let json = serde_json::to_string(mapping).unwrap_or_else(|_| "{}".into());
    template(&c.query_one(
        &format!(
            "INSERT INTO mapping_templates (org_id, dataset, name, mapping, created_at, updated_at) \
             VALUES ($5, $1, $2, $3, $4, $4) \
             ON CONFLICT (org_id, dataset, name) DO UPDATE SET mapping = excluded.mapping, \
             updated_at = excluded.updated_at RETURNING {TEMPLATE_COLUMNS}"
        ),
        params![dataset, name, json, Utc::now(), org_id],
    )?)
}

pub fn template_list(c: &mut dyn Sql, org_id: i64, dataset: &str) -> StoreResult<Vec<Template>> {
    let greatest = c.dialect().greatest();
    c.query(
        &format!(
            "SELECT {TEMPLATE_COLUMNS} FROM mapping_templates WHERE org_id = $2 AND dataset = $1 \
             ORDER BY {greatest}(COALESCE(used_at, updated_at), updated_at) DESC, name"
        ),
        params![dataset, org_id],
    )?
    .iter()
    .map(template)
    .collect()
}

pub fn template_use(
    c: &mut dyn Sql,
    org_id: i64,
    dataset: &str,
    name: &str,
) -> StoreResult<Option<Template>> {
    c.query_opt(
        &format!(
            "UPDATE mapping_templates SET used_at = $3 WHERE org_id = $4 AND dataset = $1 AND name = $2 \
             RETURNING {TEMPLATE_COLUMNS}"
        ),
        params![dataset, name, Utc::now(), org_id],
    )?
    .as_ref()
    .map(template)
    .transpose()
}
