//! Webhooks: turning job ends into signed HTTP deliveries, retried with backoff, every attempt
//! recorded.
//!
//! The dispatcher (one per `sluice serve`) reads the store's job event log after its cursor:
//! every event that ended a job (`job.completed`, `job.failed`, `job.cancelled`) becomes one
//! delivery per subscribed webhook, and the cursor moves in the same transaction, so no job end
//! is missed or doubled, whichever process finished the job. Due deliveries are claimed for a
//! while (so two dispatchers never send the same attempt), sent on their own tasks, and recorded.
//! Imports never wait for any of it. Delivery is at least once: receivers deduplicate by the
//! payload's `id`.
//!
//! Signature: `Sluice-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! Destinations are guarded against SSRF ([`guard`]): unless the server allows private
//! destinations, the client's resolver drops loopback, private, link-local and other internal
//! addresses, and IP-literal URLs are checked before each attempt.

pub mod guard;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Retry};
use crate::events::{POLL, event_json};
use crate::jobs::JobContext;
use crate::store::{DeliveryAttempt, DeliveryState, DueDelivery, NewDelivery, StoreError};

/// The events a webhook can subscribe to.
pub const EVENTS: &[&str] = &["job.completed", "job.failed", "job.cancelled"];
pub const SIGNATURE_HEADER: &str = "Sluice-Signature";
/// Job events turned into deliveries per round.
const PLAN_PAGE: u64 = 200;
/// Deliveries started per round.
const SEND_PAGE: u64 = 32;
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Why a webhook cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("`url` must be an absolute http:// or https:// URL: {0}")]
    InvalidUrl(String),
    #[error("unknown event `{0}`; known: job.completed, job.failed, job.cancelled")]
    UnknownEvent(String),
}

/// Checks a webhook's URL and events; no events means all of them.
pub fn check(url: &str, events: &[String]) -> Result<Vec<String>, WebhookError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => {}
        other => {
            return Err(WebhookError::InvalidUrl(format!(
                "scheme `{other}` or a missing host"
            )));
        }
    }
    if events.is_empty() {
        return Ok(EVENTS.iter().map(|e| e.to_string()).collect());
    }
    let mut out = Vec::new();
    for e in events {
        if !EVENTS.contains(&e.as_str()) {
            return Err(WebhookError::UnknownEvent(e.clone()));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// How the dispatcher retries.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Attempts per delivery before it is marked failed.
    pub attempts: u32,
    /// Wait after the first failed attempt; each later wait is four times longer (+ jitter).
    pub backoff: Duration,
    /// Longest an attempt may take.
    pub timeout: Duration,
    /// Deliver to loopback, private and link-local addresses too (`--webhook-allow-private`).
    pub allow_private: bool,
}

/// What a refused attempt records: nothing about the addresses the name had.
pub const REFUSED_MESSAGE: &str = "the receiver's address is not allowed: private, loopback and link-local destinations are refused";

/// A new signing secret: `whsec_` and 64 hex digits.
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system provides randomness");
    format!("whsec_{}", hex(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

/// The value of the [`SIGNATURE_HEADER`].
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// The wait after failed attempt number `attempt` (1-based): backoff × 4^(attempt-1), capped,
/// plus up to 10% jitter so receivers coming back are not hit all at once ([`Backoff`], the one
/// schedule sluice has; the dispatcher stores the due time instead of sleeping).
pub fn backoff(config: &WebhookConfig, attempt: u32) -> Duration {
    Backoff {
        first: config.backoff,
        factor: 4,
        max: MAX_BACKOFF,
        jitter: 0.1,
    }
    .delay(attempt)
}

/// Starts the dispatcher; it ends when `shutdown` is cancelled.
pub fn spawn_dispatcher(
    ctx: Arc<JobContext>,
    config: WebhookConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut builder = crate::tls::http_client()
            .timeout(config.timeout)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
        if !config.allow_private {
            // Every lookup goes through the guard; a proxy would be resolved instead of the
            // receiver (and would reach anything), so none is used.
            builder = builder
                .dns_resolver(guard::GuardedResolver)
                .redirect(guard::redirect_policy())
                .no_proxy();
        }
        let http = match builder.build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks disabled: no HTTP client");
                return;
            }
        };
        let mut wake = ctx.events.subscribe();
        // While the database fails, the dispatcher backs off instead of asking at poll rate.
        let mut outage = Retry::forever(Backoff::STORE);
        while !shutdown.is_cancelled() {
            wake.borrow_and_update();
            let planned = plan(&ctx).await;
            let result = send_due(&ctx, &http, &config).await.and(planned);
            let pause = match result {
                Ok(()) => {
                    outage = Retry::forever(Backoff::STORE);
                    POLL
                }
                Err(e) => {
                    let wait = outage.failed().unwrap_or(POLL).max(POLL);
                    if outage.worth_logging() {
                        tracing::warn!(error = %e, failures = outage.failures(), "webhook dispatch failed; backing off");
                    }
                    wait
                }
            };
            tokio::select! {
                _ = wake.changed(), if outage.failures() == 0 => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    })
}

/// Turns job ends after the cursor into deliveries.
async fn plan(ctx: &Arc<JobContext>) -> Result<(), StoreError> {
    loop {
        // No webhooks, no writes: the cursor waits, and a webhook registered later only hears
        // of job ends after its creation (below).
        let hooks = ctx.store_call(|s| s.webhook_list(None)).await?;
        if hooks.is_empty() {
            return Ok(());
        }
        let (cursor, ends) = ctx.store_call(|s| s.delivery_backlog(PLAN_PAGE)).await?;
        let Some(last) = ends.last().map(|e| e.seq) else {
            return Ok(());
        };
        // A webhook hears only of its own organisation's jobs: both are recorded (the
        // webhook's row, and the job of each event).
        let mut deliveries = Vec::new();
        for e in &ends {
            let event = format!("job.{}", e.status.as_str());
            let mut data = event_json(e);
            // An import that changed rows: where its changes lie in the change feed.
            if e.created_count + e.updated_count > 0 {
                let job = e.job_id;
                if let Some((first, last)) = ctx.store_call(move |s| s.job_changes(job)).await? {
                    data["changes"] = json!({"after": first - 1, "last": last});
                }
            }
            let payload = json!({
                "id": format!("evt_{}", e.seq),
                "type": event,
                "createdAt": e.at,
                "data": data,
            })
            .to_string();
            let subscribed = hooks.iter().filter(|h| {
                h.events.contains(&event)
                    && h.created_at <= e.at
                    && e.org_id.is_some()
                    && h.org_id == e.org_id
            });
            for hook in subscribed {
                deliveries.push(NewDelivery {
                    webhook_id: hook.id,
                    event_seq: e.seq,
                    event: event.clone(),
                    job_id: e.job_id,
                    payload: payload.clone(),
                });
            }
        }
        let n = deliveries.len();
        let moved = ctx
            .store_call(move |s| s.delivery_insert_many(cursor, last, &deliveries))
            .await?;
        if moved && n > 0 {
            tracing::debug!(deliveries = n, "webhook deliveries planned");
        }
        if (ends.len() as u64) < PLAN_PAGE {
            return Ok(());
        }
    }
}

/// Claims due deliveries and sends each on its own task.
async fn send_due(
    ctx: &Arc<JobContext>,
    http: &reqwest::Client,
    config: &WebhookConfig,
) -> Result<(), StoreError> {
    let hold = (config.timeout + Duration::from_secs(5)).as_millis() as u64;
    let now = chrono::Utc::now().timestamp_millis();
    let due = ctx
        .store_call(move |s| s.delivery_claim_due(now, hold, SEND_PAGE))
        .await?;
    for d in due {
        let (ctx, http, config) = (ctx.clone(), http.clone(), config.clone());
        tokio::spawn(async move { deliver(&ctx, &http, &config, d).await });
    }
    Ok(())
}

/// One attempt at one delivery, recorded whatever happens.
async fn deliver(
    ctx: &Arc<JobContext>,
    http: &reqwest::Client,
    config: &WebhookConfig,
    d: DueDelivery,
) {
    let number = d.attempts + 1;
    let timestamp = chrono::Utc::now().timestamp();
    let started = Instant::now();
    let at = chrono::Utc::now();
    // IP-literal hosts never reach the resolver: checked here, before anything is sent.
    let literal_refused = !config.allow_private
        && reqwest::Url::parse(&d.url).is_ok_and(|u| !guard::literal_allowed(&u));
    let sent = if literal_refused {
        Err(None)
    } else {
        http.post(&d.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature_header(&d.secret, timestamp, d.payload.as_bytes()),
            )
            .header("Sluice-Event", &d.event)
            .header("Sluice-Delivery", d.id.to_string())
            .header("Sluice-Attempt", number.to_string())
            .body(d.payload.clone())
            .send()
            .await
            .map_err(Some)
    };
    let (http_status, error) = match sent {
        Ok(resp) if resp.status().is_success() => (Some(resp.status().as_u16()), None),
        Ok(resp) => (
            Some(resp.status().as_u16()),
            Some(format!("the receiver answered {}", resp.status())),
        ),
        Err(None) => (None, Some(REFUSED_MESSAGE.into())),
        Err(Some(e)) if guard::is_refusal(&e) => (None, Some(REFUSED_MESSAGE.into())),
        Err(Some(e)) if e.is_timeout() => {
            (None, Some("the receiver did not answer in time".into()))
        }
        Err(Some(e)) if e.is_connect() => match crate::tls::handshake_failure(&e) {
            Some(tls) => (None, Some(format!("TLS with the receiver failed: {tls}"))),
            None => (None, Some("could not connect to the receiver".into())),
        },
        Err(Some(e)) => (None, Some(format!("the request failed: {e}"))),
    };
    let state = match (&error, number >= config.attempts) {
        (None, _) => DeliveryState::Delivered,
        (Some(_), true) => DeliveryState::Failed,
        (Some(_), false) => DeliveryState::Pending,
    };
    crate::telemetry::webhook_attempt(match state {
        DeliveryState::Delivered => "delivered",
        DeliveryState::Failed => "failed",
        DeliveryState::Pending => "retrying",
    });
    let next = chrono::Utc::now().timestamp_millis() + backoff(config, number).as_millis() as i64;
    let attempt = DeliveryAttempt {
        attempt: number,
        at,
        http_status,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    if attempt.error.is_some() {
        tracing::info!(delivery = d.id, attempt = number, error = ?attempt.error, "webhook attempt failed");
    }
    let id = d.id;
    if let Err(e) = ctx
        .store_call(move |s| s.delivery_record(id, &attempt, state, next))
        .await
    {
        tracing::warn!(error = %e, delivery = id, "could not record a webhook attempt; it will be retried");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let header = signature_header("whsec_x", 1700000000, b"{}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
    }

    #[test]
    fn backoff_grows_fourfold_with_some_jitter() {
        let c = WebhookConfig {
            attempts: 5,
            backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            allow_private: false,
        };
        for (attempt, base) in [(1, 100), (2, 400), (3, 1600)] {
            let d = backoff(&c, attempt).as_millis() as u64;
            assert!(d >= base && d <= base + base / 10 + 1, "{attempt}: {d}");
        }
        assert!(backoff(&c, 40) <= MAX_BACKOFF + MAX_BACKOFF / 10);
    }

    #[test]
    fn urls_and_events_are_checked() {
        assert!(check("http://127.0.0.1:9/hook", &[]).unwrap().len() == 3);
        assert!(check("https://example.com/hook", &[]).is_ok());
        assert!(check("ftp://x", &[]).is_err());
        assert!(check("not a url", &[]).is_err());
        assert!(matches!(
            check("http://x/", &["job.exploded".into()]),
            Err(WebhookError::UnknownEvent(_))
        ));
    }
}
