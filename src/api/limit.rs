//! Per-token limits, in memory (per server process): the request rate (a token bucket per API
//! token) and the uploads in progress at once.
//!
//! Each token may send `rate` requests per second on average and bursts of up to `2 × rate`;
//! a request beyond that answers 429 `rate_limited` with `Retry-After`. Each token may have at
//! most `--max-uploads-per-token` uploads and previews receiving their body at once; one more
//! answers 429 `too_many_uploads` with `Retry-After`. Limits are per process: with several
//! servers behind a balancer each enforces its own.

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

/// Uploads in progress per token id.
pub struct UploadSlots {
    /// Most at once per token; 0 turns the cap off.
    max: u32,
    busy: Arc<Mutex<HashMap<i64, u32>>>,
}

/// One upload in progress; its slot is given back on drop, however the request ends.
pub struct UploadSlot {
    token_id: i64,
    busy: Arc<Mutex<HashMap<i64, u32>>>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = busy.get_mut(&self.token_id) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.token_id);
            }
        }
    }
}

/// Seconds a client refused for too many uploads is asked to wait.
const UPLOAD_RETRY_AFTER: u64 = 5;

impl UploadSlots {
    pub fn new(max: u32) -> Self {
        Self {
            max,
            busy: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more upload of the token; `Err(seconds)` to wait when all are taken.
    pub fn take(&self, token_id: i64) -> Result<Option<UploadSlot>, u64> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = busy.entry(token_id).or_insert(0);
        if *n >= self.max {
            return Err(UPLOAD_RETRY_AFTER);
        }
        *n += 1;
        Ok(Some(UploadSlot {
            token_id,
            busy: self.busy.clone(),
        }))
    }
}

/// Middleware of the routes that receive files (upload, preview; after `require_token`): takes
/// one of the token's upload slots for the whole request (429 `too_many_uploads` when none is
/// free) and puts the body under the minimum body rate.
pub async fn upload_limits(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let slot = match req.extensions().get::<Caller>() {
        Some(caller) => state
            .uploads
            .take(caller.token_id)
            .map_err(|retry_after| ApiError::TooManyUploads { retry_after })?,
        None => None,
    };
    let response = next.run(state.body_rate.guard(req)).await;
    drop(slot);
    Ok(response)
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
    fn uploads_beyond_the_cap_are_refused_until_a_slot_is_given_back() {
        let slots = UploadSlots::new(2);
        let a = slots.take(1).unwrap();
        let _b = slots.take(1).unwrap();
        assert!(slots.take(1).is_err());
        assert!(slots.take(2).is_ok(), "another token has its own slots");
        drop(a);
        assert!(slots.take(1).is_ok());
        assert!(UploadSlots::new(0).take(1).unwrap().is_none());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limiter.take(1, t0).is_ok()));
    }
}
