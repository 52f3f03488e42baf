//! The change feed: `GET /api/v1/datasets/{dataset}/changes?after=CURSOR&limit=&wait=`, the
//! organisation's ledger entries of one dataset in commit order (see [`crate::store::ledger`]),
//! for search indexes and other consumers that follow what imports changed. `wait` long-polls:
//! an empty page waits, holding no database connection, until a batch commits in this process
//! (the event bell) or half a second passes (workers in other processes), then looks again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};

use super::AppState;
use super::auth::Caller;
use super::dto::{ChangeView, ChangesPage, Data, ErrorBody};
use super::error::ApiError;
use super::options::param;
use crate::store::ledger::{self, Change};

/// Changes per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: u64 = 1_000;
const MAX_LIMIT: u64 = 10_000;
/// The longest `wait`.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting request looks again when no bell rings (workers in other processes).
const POLL: Duration = Duration::from_millis(500);

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_parameter", message)
}

/// The page's options.
struct Ask {
    after: i64,
    limit: u64,
    wait: Duration,
}

impl Ask {
    fn parse(params: &HashMap<String, String>) -> Result<Ask, ApiError> {
        let after = match param(params, "after").map(str::trim) {
            None | Some("") => 0,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| bad(format!("after must be a cursor (0 or more), not `{text}`")))?,
        };
        let limit = match param(params, "limit").map(str::trim) {
            None | Some("") => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| bad(format!("limit must be 1 to {MAX_LIMIT}, not `{text}`")))?,
        };
        let wait = match param(params, "wait").map(str::trim) {
            None | Some("") => Duration::ZERO,
            Some(text) => crate::duration::parse(text).map_err(bad)?.min(MAX_WAIT),
        };
        Ok(Ask { after, limit, wait })
    }
}

fn view(c: Change) -> Result<ChangeView, ApiError> {
    Ok(ChangeView {
        cursor: c.cursor,
        at: c.at,
        job_id: c.job_id,
        op: c.op,
        key: ledger::object(&c.key, "key")?,
        values: c
            .values
            .as_deref()
            .map(|v| ledger::object(v, "values"))
            .transpose()?,
    })
}

/// `GET /api/v1/datasets/{dataset}/changes`
#[utoipa::path(get, path = "/api/v1/datasets/{id}/changes", operation_id = "listChanges", tag = "datasets",
    summary = "The organisation's changes to a dataset, in commit order: a feed to follow",
    description = "Every row an import created, updated or deleted, once, in the order the changes committed; resume with `after` set to `next`. `wait` (e.g. `30s`, at most 60 s) holds an empty page open until a change arrives.",
    params(
        ("id" = String, Path, description = "The dataset", example = "products"),
        ("after" = Option<i64>, Query, description = "Changes after this cursor (default 0: from the oldest kept)"),
        ("limit" = Option<u64>, Query, description = "Changes per page (default 1000, at most 10000)"),
        ("wait" = Option<String>, Query, description = "Long-poll: how long an empty page may wait for a change (`30s`; default 0)"),
    ),
    responses(
        (status = 200, description = "A page of changes", body = Data<ChangesPage>),
        (status = 400, description = "`invalid_parameter`: an `after`, `limit` or `wait` that is not one", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dataset", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(dataset): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Data<ChangesPage>>, ApiError> {
    let ctx = &state.jobs;
    let Some(ds) = ctx.datasets.get(&dataset) else {
        return Err(ApiError::NotFound(format!(
            "no dataset named `{dataset}`; configured: {}",
            ctx.datasets.names().join(", ")
        )));
    };
    let ask = Ask::parse(&params)?;
    let deadline = tokio::time::Instant::now() + ask.wait;
    let mut bell = ctx.events.subscribe();
    let (org, limit) = (caller.org_id, ask.limit);
    let mut changes = loop {
        bell.mark_unchanged();
        let ds = ds.clone();
        let found = ctx
            .store_call(move |s| s.changes_after(org, &ds, ask.after, limit + 1))
            .await?;
        if !found.is_empty() || tokio::time::Instant::now() >= deadline {
            break found;
        }
        tokio::select! {
            _ = bell.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    };
    let has_more = changes.len() as u64 > limit;
    changes.truncate(limit as usize);
    let next = changes.last().map_or(ask.after, |c| c.cursor);
    Ok(Json(Data::ok(ChangesPage {
        changes: changes.into_iter().map(view).collect::<Result<_, _>>()?,
        next,
        has_more,
    })))
}
