//! Users' e-mail subscriptions (migration 0018/0019), one implementation for both backends.
//!
//! A subscription's e-mails about imports are planned from the jobs themselves: an import that
//! ended after the subscription was made, in its scope, with no e-mail to that address about that
//! job yet. The unique `(job_id, address)` of `email_deliveries` makes the plan once-only across
//! nodes, and also keeps a source's `notify` and a subscription of the same address from
//! mailing twice about one job. Its `needs_mapping` e-mails ride on the source run's own plan
//! (`sources::notify_backlog`).

use chrono::{DateTime, Utc};

use super::sql::{Row, Sql, params};
use super::{NewEmail, NewSubscription, StoreResult, SubscribedJob, Subscription};

const COLUMNS: &str = "id, address, on_completed, on_failed, on_needs_mapping, scope, created_at";

fn subscription(r: &Row) -> StoreResult<Subscription> {
    let events = [(2, "completed"), (3, "failed"), (4, "needs_mapping")]
        .into_iter()
        .filter_map(|(i, e)| r.bool(i).map(|on| on.then(|| e.to_string())).transpose())
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Subscription {
        id: r.i64(0)?,
        address: r.text(1)?,
        events,
        scope: r.text(5)?,
        created_at: r.time(6)?,
    })
}

/// Stores a subscription; `None` when the user has one for this address already.
pub fn insert(c: &mut dyn Sql, s: &NewSubscription) -> StoreResult<Option<Subscription>> {
    let on = |e: &str| s.events.iter().any(|x| x == e);
    c.query_opt(
        &format!(
            "INSERT INTO email_subscriptions (org_id, user_id, address, on_completed, on_failed, \
             on_needs_mapping, scope, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id, address) DO NOTHING RETURNING {COLUMNS}"
        ),
        params![
            s.org_id,
            s.user_id,
            s.address.as_str(),
            on("completed"),
            on("failed"),
            on("needs_mapping"),
            s.scope.as_str(),
            Utc::now()
        ],
    )?
    .as_ref()
    .map(subscription)
    .transpose()
}

/// The user's subscriptions, oldest first.
pub fn list(c: &mut dyn Sql, user_id: i64) -> StoreResult<Vec<Subscription>> {
    c.query(
        &format!("SELECT {COLUMNS} FROM email_subscriptions WHERE user_id = $1 ORDER BY id"),
        params![user_id],
    )?
    .iter()
    .map(subscription)
    .collect()
}

/// Removes one of the user's subscriptions (false: the user has none of that id). Its e-mails
/// not sent yet go with it.
pub fn delete(c: &mut dyn Sql, user_id: i64, id: i64) -> StoreResult<bool> {
    c.execute(
        "DELETE FROM email_deliveries WHERE subscription_id = $1 AND state = 'pending' \
         AND subscription_id IN (SELECT id FROM email_subscriptions WHERE user_id = $2)",
        params![id, user_id],
    )?;
    Ok(c.execute(
        "DELETE FROM email_subscriptions WHERE id = $1 AND user_id = $2",
        params![id, user_id],
    )? > 0)
}

/// The organisation's subscriptions to `needs_mapping`: (id, address).
pub fn needs_mapping_subscribers(c: &mut dyn Sql, org_id: i64) -> StoreResult<Vec<(i64, String)>> {
    c.query(
        "SELECT id, address FROM email_subscriptions WHERE org_id = $1 AND on_needs_mapping = $2 \
         ORDER BY id",
        params![org_id, true],
    )?
    .iter()
    .map(|r| Ok((r.i64(0)?, r.text(1)?)))
    .collect()
}

/// Imports that ended since `since` (and after the subscription was made) that a subscription
/// wants to hear of, with no e-mail to its address about them yet. Chunks of a split file are
/// not imports of their own: their parent is.
pub fn backlog(
    c: &mut dyn Sql,
    since: DateTime<Utc>,
    limit: u64,
) -> StoreResult<Vec<SubscribedJob>> {
    c.query(
        "SELECT s.id, s.address, j.dataset, j.id, j.status, j.filename, j.created_count, \
         j.updated_count, j.unchanged_count, j.error_count, j.error \
         FROM email_subscriptions s JOIN jobs j ON j.org_id = s.org_id \
         AND (s.scope = 'organisation' OR j.user_id = s.user_id) \
         WHERE j.kind = 'import' AND j.parent_id IS NULL AND j.completed_at > $1 \
         AND j.completed_at > s.created_at \
         AND ((j.status = 'completed' AND s.on_completed = $2) \
              OR (j.status = 'failed' AND s.on_failed = $2)) \
         AND NOT EXISTS (SELECT 1 FROM email_deliveries d \
                         WHERE d.job_id = j.id AND d.address = s.address) \
         ORDER BY j.id, s.id LIMIT $3",
        params![since, true, limit],
    )?
    .iter()
    .map(|r| {
        Ok(SubscribedJob {
            subscription_id: r.i64(0)?,
            address: r.text(1)?,
            dataset: r.text(2)?,
            job: super::sources::notified_job(r, 3)?,
        })
    })
    .collect()
}

/// Plans subscriptions' e-mails about jobs; one already planned for the same job and address
/// (by another node, or a source's `notify`) is left as it is. Inside a write transaction.
pub fn plan(c: &mut dyn Sql, emails: &[NewEmail]) -> StoreResult<()> {
    super::sources::insert_emails(c, None, None, emails)
}
