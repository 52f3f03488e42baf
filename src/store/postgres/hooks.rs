//! Live progress and notifications on PostgreSQL: the job event log (written by the trigger of
//! `0005_events_webhooks_templates.sql`), webhooks and their deliveries, and mapping templates.
//!
//! Unlike SQLite, PostgreSQL commits concurrent transactions in any order, so an event with a
//! higher `seq` can be visible before one with a lower `seq` commits. Readers therefore stop at
//! the *settled horizon*: the highest `seq` below which every number is either visible or a gap
//! older than [`GAP_SETTLE`] (a rolled-back transaction). A reader resuming from `Last-Event-ID`,
//! and the webhook cursor, never step over an event that commits late.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient, Row};

use super::pg_err;
use crate::store::{
    Delivery, DeliveryAttempt, DeliveryState, DueDelivery, JobEvent, JobId, NewDelivery,
    StoreError, StoreResult, Template, Webhook,
};

const EVENT_COLUMNS: &str = "seq, job_id, kind, dataset, filename, status, total_rows, rows_done, \
    created_count, updated_count, unchanged_count, error_count, batches_done, error, started_at, \
    completed_at, at";

/// How long a gap in the event sequence may stay open before it counts as a rollback.
const GAP_SETTLE: &str = "3 seconds";

/// Events looked at when computing the horizon.
const HORIZON_SCAN: i64 = 10_000;

fn event(r: &Row) -> StoreResult<JobEvent> {
    let u = |i: usize| r.get::<_, i64>(i).max(0) as u64;
    Ok(JobEvent {
        seq: r.get(0),
        job_id: r.get(1),
        kind: r.get(2),
        dataset: r.get(3),
        filename: r.get(4),
        status: r
            .get::<_, String>(5)
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("event status: {e}")))?,
        total_rows: r.get::<_, Option<i64>>(6).map(|n| n.max(0) as u64),
        rows_done: u(7),
        created_count: u(8),
        updated_count: u(9),
        unchanged_count: u(10),
        error_count: u(11),
        batches_done: u(12),
        error: r.get(13),
        started_at: r.get(14),
        completed_at: r.get(15),
        at: r.get(16),
    })
}

/// The highest `seq` after `after` up to which the log is complete (see the module doc).
fn settled_horizon(c: &mut impl GenericClient, after: i64) -> StoreResult<i64> {
    let rows = c
        .query(
            &format!(
                "SELECT seq, at < clock_timestamp() - interval '{GAP_SETTLE}' FROM job_events \
                 WHERE seq > $1 ORDER BY seq LIMIT $2"
            ),
            &[&after, &HORIZON_SCAN],
        )
        .map_err(pg_err)?;
    let mut horizon = after;
    for r in &rows {
        let (seq, settled): (i64, bool) = (r.get(0), r.get(1));
        if seq != horizon + 1 && !settled {
            break;
        }
        horizon = seq;
    }
    Ok(horizon)
}

pub(super) fn events_after(
    c: &mut Client,
    after: i64,
    job: Option<JobId>,
    limit: u64,
) -> StoreResult<Vec<JobEvent>> {
    let horizon = settled_horizon(c, after)?;
    c.query(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM job_events WHERE seq > $1 AND seq <= $2 \
             AND ($3::bigint IS NULL OR job_id = $3) ORDER BY seq LIMIT $4"
        ),
        &[&after, &horizon, &job, &(limit.min(i64::MAX as u64) as i64)],
    )
    .map_err(pg_err)?
    .iter()
    .map(event)
    .collect()
}

pub(super) fn events_last_seq(c: &mut Client) -> StoreResult<i64> {
    Ok(
        c.query_one("SELECT COALESCE(MAX(seq), 0)::bigint FROM job_events", &[])
            .map_err(pg_err)?
            .get(0),
    )
}

fn webhook(r: &Row) -> StoreResult<Webhook> {
    Ok(Webhook {
        id: r.get(0),
        url: r.get(1),
        events: serde_json::from_str(r.get::<_, &str>(2))
            .map_err(|e| StoreError::Corrupt(format!("webhook events: {e}")))?,
        secret: r.get(3),
        created_by: r.get(4),
        created_at: r.get(5),
    })
}

pub(super) fn webhook_insert(
    c: &mut Client,
    url: &str,
    events: &[String],
    secret: &str,
    created_by: Option<i64>,
) -> StoreResult<Webhook> {
    let events_json = serde_json::to_string(events).unwrap_or_else(|_| "[]".into());
    let row = c
        .query_one(
            "INSERT INTO webhooks (url, events, secret, created_by, created_at) VALUES ($1, $2, $3, $4, now()) \
             RETURNING id, url, events, secret, created_by, created_at",
            &[&url, &events_json, &secret, &created_by],
        )
        .map_err(pg_err)?;
    webhook(&row)
}

pub(super) fn webhook_list(c: &mut Client) -> StoreResult<Vec<Webhook>> {
    c.query(
        "SELECT id, url, events, secret, created_by, created_at FROM webhooks ORDER BY id",
        &[],
    )
    .map_err(pg_err)?
    .iter()
    .map(webhook)
    .collect()
}

pub(super) fn webhook_delete(c: &mut Client, id: i64) -> StoreResult<bool> {
    Ok(c.execute("DELETE FROM webhooks WHERE id = $1", &[&id])
        .map_err(pg_err)?
        > 0)
}

pub(super) fn delivery_backlog(c: &mut Client, limit: u64) -> StoreResult<(i64, Vec<JobEvent>)> {
    let cursor: i64 = c
        .query_one("SELECT seq FROM webhook_cursor WHERE id = 1", &[])
        .map_err(pg_err)?
        .get(0);
    let horizon = settled_horizon(c, cursor)?;
    let events = c
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM job_events WHERE seq > $1 AND seq <= $2 AND kind = 'status' \
                 AND status IN ('completed', 'failed', 'cancelled') ORDER BY seq LIMIT $3"
            ),
            &[&cursor, &horizon, &(limit.min(i64::MAX as u64) as i64)],
        )
        .map_err(pg_err)?
        .iter()
        .map(event)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((cursor, events))
}

pub(super) fn delivery_insert_many(
    c: &mut Client,
    from: i64,
    to: i64,
    deliveries: &[NewDelivery],
) -> StoreResult<bool> {
    let mut tx = c.transaction().map_err(pg_err)?;
    let moved = tx
        .execute(
            "UPDATE webhook_cursor SET seq = $2 WHERE id = 1 AND seq = $1",
            &[&from, &to],
        )
        .map_err(pg_err)?;
    if moved == 0 {
        return Ok(false);
    }
    let now_ms = Utc::now().timestamp_millis();
    for d in deliveries {
        tx.execute(
            "INSERT INTO webhook_deliveries (webhook_id, event_seq, event, job_id, payload, state, \
             next_attempt_ms, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, now()) \
             ON CONFLICT (webhook_id, event_seq) DO NOTHING",
            &[
                &d.webhook_id,
                &d.event_seq,
                &d.event,
                &d.job_id,
                &d.payload,
                &now_ms,
            ],
        )
        .map_err(pg_err)?;
    }
    tx.commit().map_err(pg_err)?;
    Ok(true)
}

pub(super) fn delivery_claim_due(
    c: &mut Client,
    now_ms: i64,
    hold_ms: u64,
    limit: u64,
) -> StoreResult<Vec<DueDelivery>> {
    let rows = c
        .query(
            "UPDATE webhook_deliveries d SET next_attempt_ms = $1 + $2 \
             FROM webhooks w \
             WHERE w.id = d.webhook_id AND d.id IN ( \
                 SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_ms <= $1 \
                 ORDER BY next_attempt_ms LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING d.id, w.url, w.secret, d.event, d.payload, d.attempts",
            &[&now_ms, &(hold_ms as i64), &(limit.min(i64::MAX as u64) as i64)],
        )
        .map_err(pg_err)?;
    Ok(rows
        .iter()
        .map(|r| DueDelivery {
            id: r.get(0),
            url: r.get(1),
            secret: r.get(2),
            event: r.get(3),
            payload: r.get(4),
            attempts: r.get::<_, i32>(5).max(0) as u32,
        })
        .collect())
}

pub(super) fn delivery_record(
    c: &mut Client,
    id: i64,
    attempt: &DeliveryAttempt,
    state: DeliveryState,
    next_attempt_ms: i64,
) -> StoreResult<()> {
    let mut tx = c.transaction().map_err(pg_err)?;
    tx.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at, http_status, error, duration_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (delivery_id, attempt) DO UPDATE SET at = EXCLUDED.at, \
         http_status = EXCLUDED.http_status, error = EXCLUDED.error, duration_ms = EXCLUDED.duration_ms",
        &[
            &id,
            &(attempt.attempt as i32),
            &attempt.at,
            &attempt.http_status.map(i32::from),
            &attempt.error,
            &(attempt.duration_ms as i64),
        ],
    )
    .map_err(pg_err)?;
    tx.execute(
        "UPDATE webhook_deliveries SET state = $2, attempts = $3, next_attempt_ms = $4 WHERE id = $1",
        &[&id, &state.as_str(), &(attempt.attempt as i32), &next_attempt_ms],
    )
    .map_err(pg_err)?;
    tx.commit().map_err(pg_err)
}

pub(super) fn delivery_list(
    c: &mut Client,
    webhook_id: i64,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<Delivery>, u64)> {
    let total: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1",
            &[&webhook_id],
        )
        .map_err(pg_err)?
        .get(0);
    let rows = c
        .query(
            "SELECT id, event, job_id, state, next_attempt_ms, created_at FROM webhook_deliveries \
             WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
            &[
                &webhook_id,
                &(limit.min(i64::MAX as u64) as i64),
                &(offset as i64),
            ],
        )
        .map_err(pg_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.get(0);
        let attempts = c
            .query(
                "SELECT attempt, at, http_status, error, duration_ms FROM webhook_attempts \
                 WHERE delivery_id = $1 ORDER BY attempt",
                &[&id],
            )
            .map_err(pg_err)?
            .iter()
            .map(|a| DeliveryAttempt {
                attempt: a.get::<_, i32>(0).max(0) as u32,
                at: a.get(1),
                http_status: a.get::<_, Option<i32>>(2).map(|s| s.clamp(0, 999) as u16),
                error: a.get(3),
                duration_ms: a.get::<_, i64>(4).max(0) as u64,
            })
            .collect();
        let state = match r.get::<_, &str>(3) {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => return Err(StoreError::Corrupt(format!("delivery state `{other}`"))),
        };
        out.push(Delivery {
            id,
            webhook_id,
            event: r.get(1),
            job_id: r.get(2),
            state,
            attempts,
            next_attempt_at: (state == DeliveryState::Pending)
                .then(|| DateTime::from_timestamp_millis(r.get(4)))
                .flatten(),
            created_at: r.get(5),
        });
    }
    Ok((out, total.max(0) as u64))
}

const TEMPLATE_COLUMNS: &str = "dataset, name, mapping, created_at, updated_at, used_at";

fn template(r: &Row) -> StoreResult<Template> {
    Ok(Template {
        dataset: r.get(0),
        name: r.get(1),
        mapping: serde_json::from_str(r.get::<_, &str>(2))
            .map_err(|e| StoreError::Corrupt(format!("template mapping: {e}")))?,
        created_at: r.get(3),
        updated_at: r.get(4),
        used_at: r.get(5),
    })
}

pub(super) fn template_save(
    c: &mut Client,
    org_id: i64,
    dataset: &str,
    name: &str,
    mapping: &BTreeMap<String, Option<String>>,
) -> StoreResult<Template> {
    let json = serde_json::to_string(mapping).unwrap_or_else(|_| "{}".into());
    let row = c
        .query_one(
            &format!(
                "INSERT INTO mapping_templates (org_id, dataset, name, mapping, created_at, updated_at) \
                 VALUES ($4, $1, $2, $3, now(), now()) ON CONFLICT (org_id, dataset, name) DO UPDATE SET \
                 mapping = EXCLUDED.mapping, updated_at = EXCLUDED.updated_at RETURNING {TEMPLATE_COLUMNS}"
            ),
            &[&dataset, &name, &json, &org_id],
        )
        .map_err(pg_err)?;
    template(&row)
}

pub(super) fn template_list(
    c: &mut Client,
    org_id: i64,
    dataset: &str,
) -> StoreResult<Vec<Template>> {
    c.query(
        &format!(
            "SELECT {TEMPLATE_COLUMNS} FROM mapping_templates WHERE org_id = $2 AND dataset = $1 \
             ORDER BY GREATEST(COALESCE(used_at, updated_at), updated_at) DESC, name"
        ),
        &[&dataset, &org_id],
    )
    .map_err(pg_err)?
    .iter()
    .map(template)
    .collect()
}

pub(super) fn template_use(
    c: &mut Client,
    org_id: i64,
    dataset: &str,
    name: &str,
) -> StoreResult<Option<Template>> {
    c.query_opt(
        &format!(
            "UPDATE mapping_templates SET used_at = clock_timestamp() WHERE org_id = $3 AND dataset = $1 AND name = $2 \
             RETURNING {TEMPLATE_COLUMNS}"
        ),
        &[&dataset, &name, &org_id],
    )
    .map_err(pg_err)?
    .as_ref()
    .map(template)
    .transpose()
}
