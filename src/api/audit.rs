//! The audit log: who did what and when (uploads, job control, users and token changes), kept
//! per organisation and listed for its admins. Lines are written by the store in the same
//! transaction as their action (each audited store call takes its line), so there is never an
//! action without its line nor a line for an action that did not happen.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Query, State};

use super::AppState;
use super::auth::Caller;
use super::dto::{AuditPage, Data, ErrorBody};
use super::error::ApiError;
use super::options::number;

/// `GET /api/v1/audit?limit=&offset=`: the caller's organisation's log, newest first (admins).
#[utoipa::path(get, path = "/api/v1/audit", operation_id = "listAudit", tag = "admin",
    summary = "The organisation's audit log, newest first (admins)",
    params(
        ("limit" = Option<u64>, Query, description = "Page size (default 100, at most 1000)"),
        ("offset" = Option<u64>, Query, description = "Entries skipped"),
    ),
    responses(
        (status = 200, description = "A page of the log", body = Data<AuditPage>),
        (status = 400, description = "`invalid_parameter`: a limit or offset that is not a number", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Data<AuditPage>>, ApiError> {
    caller.require_admin()?;
    let limit = number(&params, "limit", 100)?.min(1000);
    let offset = number(&params, "offset", 0)?;
    let org = caller.org_id;
    let (entries, total) = state
        .jobs
        .store_call(move |s| s.audit_list(org, limit, offset))
        .await?;
    Ok(Json(Data::ok(AuditPage {
        entries,
        total,
        limit,
        offset,
    })))
}
