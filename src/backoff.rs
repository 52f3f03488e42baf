//! The one backoff of sluice: exponential waits with jitter, and retrying an operation for a
//! time budget.
//!
//! Used by every place that waits for something to pass: the pipeline's store calls (batch
//! commits and job set-up, `import::run::with_retry`), recording a job's end and claiming jobs
//! (`jobs`), and webhook deliveries (`webhooks::backoff`, which stores the time of the next
//! attempt instead of sleeping). One schedule, so a database that comes back is not hit by every
//! worker at the same instant, and one rule for when a retry deserves a log line.

use std::time::{Duration, Instant};

/// An exponential schedule: `first × factorⁿ`, at most `max`, plus up to `jitter` of it at
/// random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub factor: u32,
    pub max: Duration,
    /// Fraction of the wait added at random (0.25: up to a quarter more).
    pub jitter: f64,
}

impl Backoff {
    /// Store calls: 100 ms, doubling, at most 4 s (5 s with jitter), so a database that returns
    /// is used again within seconds.
    pub const STORE: Backoff = Backoff {
        first: Duration::from_millis(100),
        factor: 2,
        max: Duration::from_secs(4),
        jitter: 0.25,
    };

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let steps = attempt.saturating_sub(1).min(30);
        let factor = self.factor.max(1).saturating_pow(steps);
        let base = self.first.saturating_mul(factor).min(self.max);
        base + base.mul_f64(random_fraction() * self.jitter.clamp(0.0, 1.0))
    }
}

/// A uniformly random number in [0, 1).
fn random_fraction() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// How long the store calls of a job retry a system error: at least `attempts` tries, and for
/// `grace` from the first failure (`--retry-limit`, `--db-outage-grace`), so a database restart
/// or a short outage is waited out instead of failing the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub attempts: u32,
    pub grace: Duration,
}

/// The retries of one operation: its failures so far and when the first happened.
#[derive(Debug)]
pub struct Retry {
    backoff: Backoff,
    budget: Option<RetryBudget>,
    first_failure: Option<Instant>,
    failures: u32,
}

impl Retry {
    /// Retries within `budget`.
    pub fn new(backoff: Backoff, budget: RetryBudget) -> Self {
        Self {
            backoff,
            budget: Some(budget),
            first_failure: None,
            failures: 0,
        }
    }

    /// Retries for as long as the caller keeps asking (it decides when to stop).
    pub fn forever(backoff: Backoff) -> Self {
        Self {
            backoff,
            budget: None,
            first_failure: None,
            failures: 0,
        }
    }

    /// Records a failure. Returns the wait before the next attempt, or `None` when the budget
    /// is spent. The last wait is shortened so the final attempt falls at the end of the grace.
    pub fn failed(&mut self) -> Option<Duration> {
        self.failures += 1;
        let since = *self.first_failure.get_or_insert_with(Instant::now);
        let delay = self.backoff.delay(self.failures);
        let Some(budget) = self.budget else {
            return Some(delay);
        };
        if self.failures < budget.attempts {
            return Some(delay);
        }
        let left = budget.grace.saturating_sub(since.elapsed());
        if left.is_zero() {
            None
        } else {
            Some(delay.min(left))
        }
    }

    /// Failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Time since the first failure.
    pub fn elapsed(&self) -> Duration {
        self.first_failure.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Logs, once, that `what` succeeded after failures (nothing when it never failed).
    pub fn recovered(&self, what: &str) {
        if self.failures > 0 {
            tracing::info!(
                failures = self.failures,
                waited_ms = self.elapsed().as_millis() as u64,
                "{what} succeeded after waiting for the database"
            );
        }
    }

    /// Whether the failure just recorded deserves a log line: the 1st, 2nd, 4th, 8th, … — one
    /// warning per step of the schedule while it grows, then ever rarer, never one per attempt.
    pub fn worth_logging(&self) -> bool {
        self.failures.is_power_of_two()
    }
}

/// Runs `f` until it succeeds, fails with an error `transient` says will not pass, or `retry`
/// is spent, sleeping the backoff between tries (blocking threads only). `stop` is checked
/// while waiting: when it turns true the last error is returned at once (the caller asked to
/// stop, e.g. at shutdown, and tells that apart itself). Logs a warning per step of the
/// schedule (see [`Retry::worth_logging`]), and one line when it recovers.
pub fn retry_blocking<T, E: std::fmt::Display>(
    mut retry: Retry,
    what: &str,
    transient: impl Fn(&E) -> bool,
    stop: &dyn Fn() -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    loop {
        match f() {
            Err(e) if transient(&e) => match retry.failed() {
                Some(wait) => {
                    if retry.worth_logging() {
                        tracing::warn!(
                            failures = retry.failures(),
                            waited_ms = retry.elapsed().as_millis() as u64,
                            next_ms = wait.as_millis() as u64,
                            error = %e,
                            "{what} failed; retrying"
                        );
                    }
                    if sleep_unless(wait, stop) {
                        return Err(e);
                    }
                }
                None => {
                    tracing::error!(
                        failures = retry.failures(),
                        waited_ms = retry.elapsed().as_millis() as u64,
                        error = %e,
                        "{what} failed; giving up"
                    );
                    return Err(e);
                }
            },
            other => {
                if other.is_ok() {
                    retry.recovered(what);
                }
                return other;
            }
        }
    }
}

/// Sleeps for `wait` in short slices; true (at once) when `stop` turns true.
fn sleep_unless(wait: Duration, stop: &dyn Fn() -> bool) -> bool {
    let until = Instant::now() + wait;
    loop {
        if stop() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_by_the_factor_up_to_the_cap_with_some_jitter() {
        let b = Backoff {
            first: Duration::from_millis(100),
            factor: 4,
            max: Duration::from_secs(3600),
            jitter: 0.1,
        };
        for (attempt, base) in [(1, 100), (2, 400), (3, 1600)] {
            let d = b.delay(attempt).as_millis() as u64;
            assert!(d >= base && d <= base + base / 10 + 1, "{attempt}: {d}");
        }
        assert!(b.delay(40) <= Duration::from_secs(3960));
        let store = Backoff::STORE;
        assert!(store.delay(1) >= Duration::from_millis(100));
        assert!(store.delay(100) <= Duration::from_secs(5));
        assert!(store.delay(100) >= Duration::from_secs(4));
    }

    #[test]
    fn a_budget_allows_its_attempts_then_its_grace() {
        let budget = RetryBudget {
            attempts: 3,
            grace: Duration::ZERO,
        };
        let mut r = Retry::new(Backoff::STORE, budget);
        assert!(r.failed().is_some());
        assert!(r.failed().is_some());
        assert!(r.failed().is_none(), "three attempts, no grace");

        let mut r = Retry::new(
            Backoff::STORE,
            RetryBudget {
                attempts: 1,
                grace: Duration::from_millis(150),
            },
        );
        let first = r.failed().expect("within the grace");
        assert!(first <= Duration::from_millis(150));
        std::thread::sleep(Duration::from_millis(160));
        assert!(r.failed().is_none(), "the grace is spent");
    }

    #[test]
    fn warnings_thin_out_as_failures_go_on() {
        let mut r = Retry::forever(Backoff::STORE);
        let logged: Vec<u32> = (1..=20)
            .filter(|_| {
                r.failed();
                r.worth_logging()
            })
            .collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn retry_blocking_stops_at_a_permanent_error_and_returns_a_success() {
        let fast = Backoff {
            first: Duration::from_millis(1),
            factor: 2,
            max: Duration::from_millis(2),
            jitter: 0.0,
        };
        let budget = RetryBudget {
            attempts: 10,
            grace: Duration::ZERO,
        };
        let mut calls = 0;
        let got: Result<u32, String> = retry_blocking(
            Retry::new(fast, budget),
            "test",
            |e| e == "busy",
            &|| false,
            || {
                calls += 1;
                if calls < 4 {
                    Err("busy".into())
                } else {
                    Ok(calls)
                }
            },
        );
        assert_eq!(got, Ok(4));
        let mut calls = 0;
        let got: Result<u32, String> = retry_blocking(
            Retry::new(fast, budget),
            "test",
            |e| e == "busy",
            &|| false,
            || {
                calls += 1;
                Err("broken".into())
            },
        );
        assert_eq!((got, calls), (Err("broken".into()), 1));
        // Asked to stop while waiting: the last error comes back without more attempts.
        let mut calls = 0;
        let slow = Backoff {
            first: Duration::from_secs(30),
            ..fast
        };
        let got: Result<u32, String> = retry_blocking(
            Retry::new(slow, budget),
            "test",
            |e| e == "busy",
            &|| true,
            || {
                calls += 1;
                Err("busy".into())
            },
        );
        assert_eq!((got, calls), (Err("busy".into()), 1));
    }
}
