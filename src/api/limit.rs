//! The request rate limit: a token bucket per API token, in memory (per server process).
//!
//! Each token may send `rate` requests per second on average and bursts of up to `2 × rate`;
//! a request beyond that answers 429 with `Retry-After`. Limits are per process: with several
//! servers behind a balancer each enforces its own bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets of every token seen, refilled lazily when the token next calls.
pub struct RateLimiter {
    /// Requests per second; 0 turns the limit off.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self {
            rate,
            burst: (rate * 2.0).max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from the token's bucket at `now`; `Err(seconds)` to wait when empty.
    pub fn take(&self, token_id: i64, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = buckets.entry(token_id).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// Middleware (after `require_token`): 429 with `Retry-After` once a token's bucket is empty.
pub async fn rate_limit(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(caller) = req.extensions().get::<Caller>()
        && let Err(retry_after) = state.limiter.take(caller.token_id, Instant::now())
    {
        return Err(ApiError::RateLimited { retry_after });
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_until_the_bucket_refills() {
        let limiter = RateLimiter::new(2);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_eq!(limiter.take(1, t0), Ok(()));
        }
        assert_eq!(limiter.take(1, t0), Err(1));
        // Another token has its own bucket.
        assert_eq!(limiter.take(2, t0), Ok(()));
        // Half a second refills one request at 2 per second.
        assert_eq!(limiter.take(1, t0 + Duration::from_millis(500)), Ok(()));
        assert_eq!(limiter.take(1, t0 + Duration::from_millis(500)), Err(1));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limiter.take(1, t0).is_ok()));
    }
}
