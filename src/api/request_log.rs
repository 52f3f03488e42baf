//! One log line per request, and the request id that ties a request's log lines together.
//!
//! The id is the client's `X-Request-Id` when it sends a usable one (1–128 visible ASCII
//! characters; a proxy's id is kept), otherwise a new random one; it is echoed in the response's
//! `X-Request-Id` and carried by the `request` span, so every line logged while handling the
//! request names it. The line gives the method, the route template (`/api/v1/import/status/{id}`,
//! never the raw path with its ids or query), the status and the latency — never a header, a
//! token or any part of a body.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";

/// The request id a client or proxy sent, if it is one we can echo and log safely.
fn given(req: &Request) -> Option<String> {
    let id = req.headers().get(REQUEST_ID)?.to_str().ok()?.trim();
    let visible = id.bytes().all(|b| b.is_ascii_graphic());
    (!id.is_empty() && id.len() <= 128 && visible).then(|| id.to_string())
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system provides randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = given(&req).unwrap_or_else(new_id);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let span = tracing::info_span!("request", id = %id);
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        tracing::info!(
            target: "sluice::request",
            %method,
            %route,
            status,
            latency_ms = format_args!("{latency_ms:.1}"),
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(id: &str) -> Request {
        Request::builder()
            .header(REQUEST_ID, id)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn a_usable_client_id_is_kept_and_others_replaced() {
        assert_eq!(given(&with("abc-123")).as_deref(), Some("abc-123"));
        assert_eq!(given(&with("has space")), None);
        assert_eq!(given(&with(&"x".repeat(129))), None);
        assert_eq!(new_id().len(), 16);
    }
}
