//! The HTTP API (v1): routes, authentication, errors and the JSON shapes of seed 000.
//!
//! `upload` receives files and creates jobs, `jobs` reports on them; `error` is the single place
//! an error becomes a response, `auth` the single place a token is checked.

mod admin;
mod analysis;
mod audit;
pub mod auth;
pub mod body_rate;
mod changes;
mod control;
pub mod dto;
pub mod error;
mod events;
mod export;
mod files;
mod jobs;
pub mod limit;
pub mod metrics;
pub mod openapi;
mod options;
mod preview;
mod request_log;
mod rollback;
mod seed_analysis;
pub mod server;
mod session;
mod sources;
mod subscriptions;
pub(crate) mod upload;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::jobs::JobContext;

/// What every handler can reach.
pub struct AppState {
    pub jobs: Arc<JobContext>,
    /// Largest upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Requests per second per token.
    pub limiter: limit::RateLimiter,
    /// Uploads (and previews) in progress per token.
    pub uploads: limit::UploadSlots,
    /// The slowest an upload's body may arrive.
    pub body_rate: body_rate::BodyRate,
    /// Webhooks may point at private and loopback addresses (`--webhook-allow-private`).
    pub webhook_allow_private: bool,
    /// Pages of bulk downloads (the rejected-rows CSV) read at once, however many clients
    /// download: a crowd of downloads shares this, and status requests keep their connections
    /// and their CPU.
    pub bulk_reads: Arc<tokio::sync::Semaphore>,
    /// How long a finished job's file is kept (`--retain-files`): an export's `expiresAt`.
    pub retain_files: std::time::Duration,
    /// What sources may reach (`--source-root`, `--source-allow-private`).
    pub sources: crate::sources::SourcesConfig,
}

/// Checks import options given as form fields (a source's `options`): the 400 code and message
/// of the first problem.
pub fn options_check(
    params: &std::collections::HashMap<String, String>,
) -> Result<(), (&'static str, String)> {
    match options::ImportOptions::parse(params) {
        Ok(_) => Ok(()),
        Err(error::ApiError::BadRequest { code, message }) => Err((code, message)),
        Err(other) => Err(("invalid_options", other.to_string())),
    }
}

/// Bulk download pages read at once: half the cores, at least one.
pub fn bulk_read_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

pub fn router(state: Arc<AppState>) -> Router {
    // The routes that receive files: the per-token upload cap and the minimum body rate.
    let receiving = axum::middleware::from_fn_with_state(state.clone(), limit::upload_limits);
    let api = Router::new()
        .route(
            "/api/v1/import/{id}",
            post(upload::upload)
                .layer(DefaultBodyLimit::disable())
                .layer(receiving.clone()),
        )
        .route(
            "/api/v1/import/{id}",
            axum::routing::delete(control::delete),
        )
        .route(
            "/api/v1/analysis/analyze-file",
            post(seed_analysis::analyze_file)
                .layer(DefaultBodyLimit::disable())
                .layer(receiving.clone()),
        )
        .route("/api/v1/analysis/job/{jobId}", get(seed_analysis::job))
        .route(
            "/api/v1/analysis/download/{filename}",
            get(seed_analysis::download),
        )
        .route("/api/v1/import/{id}/run", post(analysis::run))
        .route("/api/v1/import/{id}/rollback", post(rollback::rollback))
        .route("/api/v1/import/{id}/report", get(analysis::report))
        .route("/api/v1/import/{id}/{action}", post(control::act))
        .route("/api/v1/import/stats", get(control::stats))
        .route("/api/v1/import/status/{id}", get(jobs::status))
        .route("/api/v1/import/jobs", get(jobs::list))
        .route("/api/v1/import/{id}/errors", get(jobs::errors))
        .route(
            "/api/v1/import/{id}/errors/summary",
            get(jobs::error_summary),
        )
        .route("/api/v1/import/{id}/events", get(events::job_events))
        .route("/api/v1/events", get(events::all_events))
        .route(
            "/api/v1/webhooks",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/api/v1/webhooks/{id}",
            axum::routing::delete(webhooks::delete),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route("/api/v1/sources", post(sources::create).get(sources::list))
        .route(
            "/api/v1/sources/{id}",
            get(sources::get)
                .patch(sources::update)
                .delete(sources::delete),
        )
        .route("/api/v1/sources/{id}/runs", get(sources::runs))
        .route("/api/v1/sources/{id}/run", post(sources::run))
        .route("/api/v1/sources/{id}/emails", get(sources::emails))
        .route(
            "/api/v1/me/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/api/v1/me/subscriptions/{id}",
            axum::routing::delete(subscriptions::delete),
        )
        .route("/api/v1/me/emails", get(subscriptions::emails))
        .route("/api/v1/datasets", get(jobs::datasets))
        .route("/api/v1/datasets/{id}/changes", get(changes::list))
        .route("/api/v1/export/{id}", post(export::create))
        .route("/api/v1/export/{id}/download", get(export::download))
        .route(
            "/api/v1/import/{id}/preview",
            post(preview::preview)
                .layer(DefaultBodyLimit::disable())
                .layer(receiving),
        )
        .route(
            "/api/v1/datasets/{id}/templates",
            get(preview::templates).post(preview::save_template),
        )
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/me", get(session::me))
        .route("/metrics", get(metrics::scrape))
        .route(
            "/api/v1/admin/users",
            post(admin::user_create).get(admin::user_list),
        )
        .route(
            "/api/v1/admin/tokens",
            post(admin::token_create).get(admin::token_list),
        )
        .route(
            "/api/v1/admin/tokens/{id}",
            axum::routing::delete(admin::token_revoke),
        )
        // Layers run outside in: the token is checked first, then its rate.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::rate_limit,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Public documentation, like the UI's pages.
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/docs", get(openapi::reference))
        .route("/api/docs/{asset}", get(openapi::asset))
        // Takes the token in its body, so it is outside the token middleware.
        .route(
            "/api/v1/session",
            post(session::create).delete(session::delete),
        )
        .merge(api)
        .merge(crate::web::router())
        .fallback(|| async { error::ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn(request_log::log_request))
        .with_state(state)
}

/// How long `/healthz` waits for the database before it answers 503.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /healthz`, without a token: 200 `{"status":"ok"}` when the database answers a trivial
/// statement (or every connection is busy: it is up), otherwise `503 unavailable` with `Retry-After` (the details only in the log), so a
/// load balancer or orchestrator sees the outage the API is in.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health",
    summary = "Liveness: the database answers",
    security(()),
    responses(
        (status = 200, description = "Up", body = dto::Health),
        (status = 503, description = "`unavailable` (with `Retry-After`)", body = dto::ErrorBody),
    ))]
async fn healthz(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Result<axum::Json<dto::Health>, error::ApiError> {
    let health = |database: &str| {
        axum::Json(dto::Health {
            status: "ok".into(),
            database: database.into(),
        })
    };
    match database_state(&state).await {
        Database::Answers => Ok(health("ok")),
        Database::Busy => Ok(health("busy")),
        Database::Down(e) => Err(error::ApiError::Unavailable(e)),
        Database::Late => Err(error::ApiError::Unavailable(
            "the database did not answer the health check in time".into(),
        )),
    }
}

/// What a trivial statement, given [`HEALTH_WAIT`], says of the database.
enum Database {
    Answers,
    /// Every connection is in use: a busy database, not a down one.
    Busy,
    Down(String),
    Late,
}

async fn database_state(state: &AppState) -> Database {
    let ping = state.jobs.store_call(|s| s.database_ping());
    match tokio::time::timeout(HEALTH_WAIT, ping).await {
        Ok(Ok(())) => Database::Answers,
        Ok(Err(crate::store::StoreError::Busy(_))) => Database::Busy,
        Ok(Err(e)) => Database::Down(e.to_string()),
        Err(_) => Database::Late,
    }
}

/// `GET /readyz`, without a token: whether this node can take work — 200 `{"status":"ready"}`
/// when the database answers and the blob store takes a file, otherwise 503
/// `{"status":"unavailable","reason":…}` with `Retry-After`. `/healthz` stays the liveness
/// check. The details of a failure go to the log, not to the unauthenticated caller.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    summary = "Readiness: the database answers and the blob store takes a file",
    security(()),
    responses(
        (status = 200, description = "Ready: `{\"status\":\"ready\"}`", body = dto::Ready),
        (status = 503, description = "Not ready: `{\"status\":\"unavailable\",\"reason\":…}` (with `Retry-After`)", body = dto::Ready),
    ))]
async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let reason = match database_state(&state).await {
        Database::Answers | Database::Busy => None,
        Database::Down(e) => {
            tracing::warn!(error = %e, "not ready: the database does not answer");
            Some("the database does not answer")
        }
        Database::Late => Some("the database did not answer in time"),
    };
    let reason = match reason {
        Some(r) => Some(r),
        None => {
            let blobs = state.jobs.blobs.clone();
            let probe = tokio::task::spawn_blocking(move || blobs.probe_writable());
            match tokio::time::timeout(HEALTH_WAIT, probe).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "not ready: the blob store cannot take files");
                    Some(if e.kind() == std::io::ErrorKind::StorageFull {
                        "the blob store's disk is full"
                    } else {
                        "the blob store cannot take files"
                    })
                }
                _ => Some("the blob store did not answer in time"),
            }
        }
    };
    match reason {
        None => axum::Json(dto::Ready {
            status: "ready".into(),
            reason: None,
        })
        .into_response(),
        Some(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "2")],
            axum::Json(dto::Ready {
                status: "unavailable".into(),
                reason: Some(reason.into()),
            }),
        )
            .into_response(),
    }
}

/// Headers on every response: nothing is sniffed, framed, cached or given a referrer, and a
/// response rendered by mistake as a page may load nothing. A handler that sets its own (the web
/// UI's CSP, its caching) keeps them.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
