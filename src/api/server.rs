//! The HTTP listener: our own accept loop over hyper, so that a connection that does not finish
//! its request headers in `--header-timeout` is closed (axum's `serve` sets no timer, so it has
//! no such timeout), with the same graceful shutdown as `axum::serve`: at shutdown the listener
//! closes, every connection finishes its request in flight, and the call returns once all are
//! done.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Most bytes hyper buffers per connection, each way: a request head must fit (far above any
/// real one), and a response body is pulled from its stream only while less than this waits to
/// be written. hyper's default (~400 KB) let each client that stops reading a download hold
/// 0.8 MB (300 stalled readers: 279 MB); the kernel's socket buffer comes on top.
const CONNECTION_BUFFER: usize = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits for the open
/// connections to finish. `header_timeout`: how long a connection may take to send a request's
/// headers (and how long an idle keep-alive connection waits for the next request); `None`: no
/// limit.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Option<Duration>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only, as `axum::serve` speaks in this build (axum's `http2` feature is off).
    // hyper's own builder rather than hyper-util's `auto` one: hyper-util implements graceful
    // shutdown for `auto` connections only with its `server-auto` feature, which pulls in h2.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(CONNECTION_BUFFER);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// As `axum::serve`: connection errors of one client are ignored; anything else (out of file
/// descriptors) is logged and the loop pauses a second rather than spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
