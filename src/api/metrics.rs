//! `GET /metrics` in the Prometheus text format, where it is served, and the request metrics.
//!
//! On the main address the route sits behind the token middleware and answers admins only;
//! `--metrics-listen` serves the same document without a token on an address of its own (a
//! scraper on a private network), from `sluice serve` and `sluice worker` alike. What the
//! document holds is `telemetry`'s business. [`track`] is the router's outermost middleware:
//! it counts every request by its route template (axum's `MatchedPath`), never the raw path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::jobs::JobContext;
use crate::telemetry;

/// The text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long the metrics listener waits for a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /metrics` on the main address: admins only.
pub async fn scrape(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    Ok(document(&state.jobs).await)
}

async fn document(ctx: &Arc<JobContext>) -> Response {
    let text = telemetry::render(ctx).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Middleware: counts and times each request by route template (`unmatched` when no route
/// matched). The time is until the response's headers (a stream's body is not waited for).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(
        || telemetry::UNMATCHED.to_string(),
        |p| p.as_str().to_string(),
    );
    let started = Instant::now();
    let response = next.run(req).await;
    telemetry::http_request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// `--metrics-listen`: binds `addr` and serves `/metrics` there without a token until
/// `shutdown`. Returns the bound address (port 0 picks one) and the server's task.
pub async fn listen(
    addr: SocketAddr,
    ctx: Arc<JobContext>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("metrics listener: {e}"))?;
    let router = Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |State(ctx): State<Arc<JobContext>>| async move { document(&ctx).await },
            ),
        )
        .fallback(|| async { ApiError::NotFound("only /metrics is served here".into()) })
        .with_state(ctx);
    let task = tokio::spawn(super::server::serve(
        listener,
        router,
        Some(HEADER_TIMEOUT),
        shutdown,
    ));
    Ok((bound, task))
}
