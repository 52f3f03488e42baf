//! The minimum body rate of uploads (`--min-body-rate`, `--body-rate-window`): one rule for the
//! upload and the preview routes, applied by wrapping the request body before any handler or
//! multipart parser reads it.
//!
//! The rule: counting only the time the server spends waiting for the client's next bytes, each
//! `window` of waiting must bring at least `rate × window` bytes. A body that does not is cut
//! off: the read fails with [`BodyTooSlow`], which the handlers answer with `408 body_timeout`
//! (their blob guard removes the partial file). Time the server itself spends (writing to disk,
//! hashing) is not counted, so a slow disk is never blamed on the client.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// `--min-body-rate` bytes per second over `--body-rate-window`.
#[derive(Debug, Clone, Copy)]
pub struct BodyRate {
    /// Bytes per second; 0 turns the rule off.
    pub bytes_per_second: u64,
    pub window: Duration,
}

impl BodyRate {
    fn needed(&self) -> u64 {
        (self.bytes_per_second as f64 * self.window.as_secs_f64()).ceil() as u64
    }

    /// The request with its body under this rule (unchanged when the rule is off).
    pub fn guard(self, req: Request) -> Request {
        if self.bytes_per_second == 0 || self.window.is_zero() {
            return req;
        }
        req.map(|body| {
            Body::from_stream(MinRate {
                inner: body.into_data_stream(),
                rule: self,
                window_bytes: 0,
                waited: Duration::ZERO,
                waiting_since: None,
                timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                done: false,
            })
        })
    }
}

/// The error a too-slow body ends with; found again in the handlers' error chains.
#[derive(Debug, thiserror::Error)]
#[error(
    "the upload arrived slower than {bytes_per_second} bytes per second over {window_seconds} s; \
     it was cut off"
)]
pub struct BodyTooSlow {
    bytes_per_second: u64,
    window_seconds: u64,
}

/// `408 body_timeout` when `e` (a body or multipart error) comes from the rate rule; otherwise
/// the handler's own answer for a broken body.
pub fn body_error<E>(e: E, otherwise: impl FnOnce(E) -> ApiError) -> ApiError
where
    E: std::error::Error + 'static,
{
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(slow) = c.downcast_ref::<BodyTooSlow>() {
            return ApiError::BodyTimeout(slow.to_string());
        }
        cause = c.source();
    }
    otherwise(e)
}

struct MinRate<S> {
    inner: S,
    rule: BodyRate,
    /// Bytes received in the current window.
    window_bytes: u64,
    /// Time spent waiting for the client in the current window, before `waiting_since`.
    waited: Duration,
    /// When the current wait began (the inner stream last answered `Pending`).
    waiting_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    done: bool,
}

impl<S> MinRate<S> {
    /// Closes the window once a full window of waiting has passed: `Err` when it brought too
    /// little.
    fn check(&mut self, now: Instant) -> Result<(), BodyTooSlow> {
        let waited = self.waited + self.waiting_since.map_or(Duration::ZERO, |s| now - s);
        if waited < self.rule.window {
            return Ok(());
        }
        if self.window_bytes < self.rule.needed() {
            return Err(BodyTooSlow {
                bytes_per_second: self.rule.bytes_per_second,
                window_seconds: self.rule.window.as_secs(),
            });
        }
        self.window_bytes = 0;
        self.waited = Duration::ZERO;
        if self.waiting_since.is_some() {
            self.waiting_since = Some(now);
        }
        Ok(())
    }
}

impl<S, E> Stream for MinRate<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<axum::BoxError>,
{
    type Item = Result<Bytes, axum::BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                let now = Instant::now();
                if let Some(since) = this.waiting_since.take() {
                    this.waited += now - since;
                }
                match item {
                    None => {
                        this.done = true;
                        Poll::Ready(None)
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    Some(Ok(chunk)) => {
                        this.window_bytes += chunk.len() as u64;
                        if let Err(slow) = this.check(now) {
                            this.done = true;
                            return Poll::Ready(Some(Err(slow.into())));
                        }
                        Poll::Ready(Some(Ok(chunk)))
                    }
                }
            }
            Poll::Pending => {
                let now = Instant::now();
                this.waiting_since.get_or_insert(now);
                if let Err(slow) = this.check(now) {
                    this.done = true;
                    return Poll::Ready(Some(Err(slow.into())));
                }
                let since = this.waiting_since.unwrap_or(now);
                let left = this.rule.window.saturating_sub(this.waited + (now - since));
                this.timer.as_mut().reset(now + left);
                if this.timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn rule() -> BodyRate {
        BodyRate {
            bytes_per_second: 10,
            window: Duration::from_secs(2),
        }
    }

    fn stream(
        chunks: Vec<(u64, &'static [u8])>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        Box::pin(
            futures_util::stream::iter(chunks).then(|(ms, b)| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Bytes::from_static(b))
            }),
        )
    }

    async fn read_all(rule: BodyRate, chunks: Vec<(u64, &'static [u8])>) -> Result<usize, String> {
        let mut guarded = MinRate {
            inner: stream(chunks),
            rule,
            window_bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            done: false,
        };
        let mut n = 0;
        while let Some(c) = guarded.next().await {
            n += c.map_err(|e| e.to_string())?.len();
        }
        Ok(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_fast_enough_passes_and_a_trickle_is_cut_off() {
        // 20 bytes per 2 s window are needed.
        let fast = vec![(500, &b"0123456789"[..]); 8];
        assert_eq!(read_all(rule(), fast).await, Ok(80));
        let trickle = vec![(1000, &b"x"[..]); 10];
        let e = read_all(rule(), trickle).await.unwrap_err();
        assert!(e.contains("slower than 10 bytes per second"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_off_after_one_window() {
        let start = Instant::now();
        let stalled = vec![(0, &b"x"[..]), (3_600_000, &b"y"[..])];
        assert!(read_all(rule(), stalled).await.is_err());
        let took = Instant::now() - start;
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}
