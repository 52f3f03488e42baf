//! Live progress and notifications on SQLite: reading the job event log (written by the
//! triggers of `0004_events_webhooks_templates.sql`), webhooks and their deliveries, and saved
//! mapping templates.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::db_err;
use super::jobs::now_text;
use crate::store::{
    Delivery, DeliveryAttempt, DeliveryState, DueDelivery, JobEvent, JobId, NewDelivery,
    StoreError, StoreResult, Template, Webhook,
};

const EVENT_COLUMNS: &str = "seq, job_id, kind, dataset, filename, status, total_rows, rows_done, \
    created_count, updated_count, unchanged_count, error_count, batches_done, error, started_at, \
    completed_at, at";

fn time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.to_utc())
}

fn corrupt(what: &str) -> impl Fn(String) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

/// A raw event row; the status is decoded after reading.
fn raw_event(r: &Row<'_>) -> rusqlite::Result<(JobEvent, String)> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok((
        JobEvent {
            seq: r.get(0)?,
            job_id: r.get(1)?,
            kind: r.get(2)?,
            dataset: r.get(3)?,
            filename: r.get(4)?,
            status: crate::store::JobStatus::Pending,
            total_rows: r.get::<_, Option<i64>>(6)?.map(|n| n.max(0) as u64),
            rows_done: u(7)?,
            created_count: u(8)?,
            updated_count: u(9)?,
            unchanged_count: u(10)?,
            error_count: u(11)?,
            batches_done: u(12)?,
            error: r.get(13)?,
            started_at: time(r.get(14)?),
            completed_at: time(r.get(15)?),
            at: time(r.get(16)?).unwrap_or_default(),
        },
        r.get(5)?,
    ))
}

fn decode_events(raws: Vec<(JobEvent, String)>) -> StoreResult<Vec<JobEvent>> {
    raws.into_iter()
        .map(|(mut e, status)| {
            e.status = status.parse().map_err(corrupt("event status"))?;
            Ok(e)
        })
        .collect()
}

pub(super) fn events_after(
    conn: &Connection,
    after: i64,
    job: Option<JobId>,
    limit: u64,
) -> StoreResult<Vec<JobEvent>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM job_events WHERE seq > ?1 AND (?2 IS NULL OR job_id = ?2) \
             ORDER BY seq LIMIT ?3"
        ))
        .map_err(db_err)?;
    let raws = stmt
        .query_map(params![after, job, limit as i64], raw_event)
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    decode_events(raws)
}

pub(super) fn events_last_seq(conn: &Connection) -> StoreResult<i64> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM job_events", [], |r| {
        r.get(0)
    })
    .map_err(db_err)
}

fn webhook_row(r: &Row<'_>) -> rusqlite::Result<(Webhook, String)> {
    Ok((
        Webhook {
            id: r.get(0)?,
            url: r.get(1)?,
            events: Vec::new(),
            secret: r.get(3)?,
            created_by: r.get(4)?,
            created_at: time(r.get(5)?).unwrap_or_default(),
        },
        r.get(2)?,
    ))
}

fn decode_webhook((mut hook, events): (Webhook, String)) -> StoreResult<Webhook> {
    hook.events = serde_json::from_str(&events)
        .map_err(|e| StoreError::Corrupt(format!("webhook events: {e}")))?;
    Ok(hook)
}

pub(super) fn webhook_insert(
    conn: &Connection,
    url: &str,
    events: &[String],
    secret: &str,
    created_by: Option<i64>,
) -> StoreResult<Webhook> {
    let events_json = serde_json::to_string(events).unwrap_or_else(|_| "[]".into());
    let raw = conn
        .query_row(
            "INSERT INTO webhooks (url, events, secret, created_by, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             RETURNING id, url, events, secret, created_by, created_at",
            params![url, events_json, secret, created_by, now_text()],
            webhook_row,
        )
        .map_err(db_err)?;
    decode_webhook(raw)
}

pub(super) fn webhook_list(conn: &Connection) -> StoreResult<Vec<Webhook>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, url, events, secret, created_by, created_at FROM webhooks ORDER BY id",
        )
        .map_err(db_err)?;
    let raws = stmt
        .query_map([], webhook_row)
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    raws.into_iter().map(decode_webhook).collect()
}

pub(super) fn webhook_delete(conn: &Connection, id: i64) -> StoreResult<bool> {
    conn.execute("DELETE FROM webhooks WHERE id = ?1", [id])
        .map(|n| n > 0)
        .map_err(db_err)
}

pub(super) fn delivery_backlog(conn: &Connection, limit: u64) -> StoreResult<(i64, Vec<JobEvent>)> {
    let cursor: i64 = conn
        .query_row("SELECT seq FROM webhook_cursor WHERE id = 1", [], |r| {
            r.get(0)
        })
        .map_err(db_err)?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM job_events WHERE seq > ?1 AND kind = 'status' \
             AND status IN ('completed', 'failed', 'cancelled') ORDER BY seq LIMIT ?2"
        ))
        .map_err(db_err)?;
    let raws = stmt
        .query_map(params![cursor, limit as i64], raw_event)
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    Ok((cursor, decode_events(raws)?))
}

pub(super) fn delivery_insert_many(
    conn: &mut Connection,
    from: i64,
    to: i64,
    deliveries: &[NewDelivery],
) -> StoreResult<bool> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let moved = tx
        .execute(
            "UPDATE webhook_cursor SET seq = ?2 WHERE id = 1 AND seq = ?1",
            params![from, to],
        )
        .map_err(db_err)?;
    if moved == 0 {
        return Ok(false);
    }
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, event_seq, event, job_id, \
                 payload, state, next_attempt_ms, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
            )
            .map_err(db_err)?;
        let (now, now_ms) = (now_text(), Utc::now().timestamp_millis());
        for d in deliveries {
            stmt.execute(params![
                d.webhook_id,
                d.event_seq,
                d.event,
                d.job_id,
                d.payload,
                now_ms,
                now
            ])
            .map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)?;
    Ok(true)
}

pub(super) fn delivery_claim_due(
    conn: &mut Connection,
    now_ms: i64,
    hold_ms: u64,
    limit: u64,
) -> StoreResult<Vec<DueDelivery>> {
    // Look before taking the write lock: the dispatcher asks often and usually finds nothing.
    let any: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_ms <= ?1 LIMIT 1",
            [now_ms],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    if any.is_none() {
        return Ok(Vec::new());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let due = claim(&tx, now_ms, hold_ms, limit)?;
    tx.commit().map_err(db_err)?;
    Ok(due)
}

fn claim(
    conn: &Connection,
    now_ms: i64,
    hold_ms: u64,
    limit: u64,
) -> StoreResult<Vec<DueDelivery>> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET next_attempt_ms = ?1 + ?2 \
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' \
                          AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms LIMIT ?3) \
             RETURNING id, webhook_id, event, payload, attempts",
        )
        .map_err(db_err)?;
    let claimed = stmt
        .query_map(params![now_ms, hold_ms as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    let mut due = Vec::with_capacity(claimed.len());
    for (id, webhook_id, event, payload, attempts) in claimed {
        let hook: Option<(String, String)> = conn
            .query_row(
                "SELECT url, secret FROM webhooks WHERE id = ?1",
                [webhook_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        if let Some((url, secret)) = hook {
            due.push(DueDelivery {
                id,
                url,
                secret,
                event,
                payload,
                attempts: attempts.max(0) as u32,
            });
        }
    }
    Ok(due)
}

pub(super) fn delivery_record(
    conn: &mut Connection,
    id: i64,
    attempt: &DeliveryAttempt,
    state: DeliveryState,
    next_attempt_ms: i64,
) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute(
        "INSERT OR REPLACE INTO webhook_attempts (delivery_id, attempt, at, http_status, error, duration_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            attempt.attempt,
            attempt.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            attempt.http_status,
            attempt.error,
            attempt.duration_ms as i64
        ],
    )
    .map_err(db_err)?;
    tx.execute(
        "UPDATE webhook_deliveries SET state = ?2, attempts = ?3, next_attempt_ms = ?4 WHERE id = ?1",
        params![id, state.as_str(), attempt.attempt, next_attempt_ms],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)
}

pub(super) fn delivery_list(
    conn: &Connection,
    webhook_id: i64,
    limit: u64,
    offset: u64,
) -> StoreResult<(Vec<Delivery>, u64)> {
    let total: i64 = conn
        .query_row(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = ?1",
            [webhook_id],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, event, job_id, state, next_attempt_ms, created_at FROM webhook_deliveries \
             WHERE webhook_id = ?1 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![webhook_id, limit as i64, offset as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    let mut attempts_stmt = conn
        .prepare_cached(
            "SELECT attempt, at, http_status, error, duration_ms FROM webhook_attempts \
             WHERE delivery_id = ?1 ORDER BY attempt",
        )
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, event, job_id, state, next_ms, created_at) in rows {
        let attempts = attempts_stmt
            .query_map([id], |r| {
                Ok(DeliveryAttempt {
                    attempt: r.get::<_, i64>(0)?.max(0) as u32,
                    at: time(r.get(1)?).unwrap_or_default(),
                    http_status: r.get::<_, Option<i64>>(2)?.map(|s| s.clamp(0, 999) as u16),
                    error: r.get(3)?,
                    duration_ms: r.get::<_, i64>(4)?.max(0) as u64,
                })
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let state = match state.as_str() {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => return Err(StoreError::Corrupt(format!("delivery state `{other}`"))),
        };
        out.push(Delivery {
            id,
            webhook_id,
            event,
            job_id,
            state,
            attempts,
            next_attempt_at: (state == DeliveryState::Pending)
                .then(|| DateTime::from_timestamp_millis(next_ms))
                .flatten(),
            created_at: time(Some(created_at)).unwrap_or_default(),
        });
    }
    Ok((out, total.max(0) as u64))
}

const TEMPLATE_COLUMNS: &str = "dataset, name, mapping, created_at, updated_at, used_at";

fn template_row(r: &Row<'_>) -> rusqlite::Result<(Template, String)> {
    Ok((
        Template {
            dataset: r.get(0)?,
            name: r.get(1)?,
            mapping: BTreeMap::new(),
            created_at: time(r.get(3)?).unwrap_or_default(),
            updated_at: time(r.get(4)?).unwrap_or_default(),
            used_at: time(r.get(5)?),
        },
        r.get(2)?,
    ))
}

fn decode_template((mut t, mapping): (Template, String)) -> StoreResult<Template> {
    t.mapping = serde_json::from_str(&mapping)
        .map_err(|e| StoreError::Corrupt(format!("template mapping: {e}")))?;
    Ok(t)
}

pub(super) fn template_save(
    conn: &Connection,
    org_id: i64,
    dataset: &str,
    name: &str,
    mapping: &BTreeMap<String, Option<String>>,
) -> StoreResult<Template> {
    let json = serde_json::to_string(mapping).unwrap_or_else(|_| "{}".into());
    let now = now_text();
    let raw = conn
        .query_row(
            &format!(
                "INSERT INTO mapping_templates (org_id, dataset, name, mapping, created_at, updated_at) \
                 VALUES (?5, ?1, ?2, ?3, ?4, ?4) \
                 ON CONFLICT (org_id, dataset, name) DO UPDATE SET mapping = excluded.mapping, \
                 updated_at = excluded.updated_at RETURNING {TEMPLATE_COLUMNS}"
            ),
            params![dataset, name, json, now, org_id],
            template_row,
        )
        .map_err(db_err)?;
    decode_template(raw)
}

pub(super) fn template_list(
    conn: &Connection,
    org_id: i64,
    dataset: &str,
) -> StoreResult<Vec<Template>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM mapping_templates WHERE org_id = ?2 AND dataset = ?1 \
             ORDER BY max(COALESCE(used_at, ''), updated_at) DESC, name"
        ))
        .map_err(db_err)?;
    let raws = stmt
        .query_map(params![dataset, org_id], template_row)
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    raws.into_iter().map(decode_template).collect()
}

pub(super) fn template_use(
    conn: &Connection,
    org_id: i64,
    dataset: &str,
    name: &str,
) -> StoreResult<Option<Template>> {
    let raw = conn
        .query_row(
            &format!(
                "UPDATE mapping_templates SET used_at = ?3 WHERE org_id = ?4 AND dataset = ?1 AND name = ?2 \
                 RETURNING {TEMPLATE_COLUMNS}"
            ),
            params![dataset, name, now_text(), org_id],
            template_row,
        )
        .optional()
        .map_err(db_err)?;
    raw.map(decode_template).transpose()
}
