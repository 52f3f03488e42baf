//! The bounded connection pool both backends share, over r2d2.
//!
//! At most `size` connections are open at once (`--db-connections`); a caller waits at most
//! `wait` (`--db-wait`) for one to come free and then gets [`StoreError::Busy`] (the API answers
//! `503 busy` with `Retry-After`), or [`StoreError::Unavailable`] when the database could not be
//! reached meanwhile. Connections open on demand and close after ten idle minutes; one in a bad
//! state (closed, its session ended by the server, or left inside a transaction) is dropped
//! instead of returned, and checked again when it is handed out (PostgreSQL: with a round trip
//! when it sat idle for a second or a connection was lost since), so after a database restart
//! the idle connections are replaced rather than failing one request each. While the database
//! cannot be reached, a caller waits about [`OUTAGE_WAIT`] instead of the whole `wait`, so the
//! API answers `503 unavailable` quickly. Batch writers open connections of their own
//! ([`Pool::open`]): one per running worker, outside the cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{StoreError, StoreResult};

/// How long opening a store waits for its first connection.
pub const STARTUP_WAIT: Duration = Duration::from_secs(30);

/// How long a caller waits for a connection once an attempt to connect has failed.
pub const OUTAGE_WAIT: Duration = Duration::from_millis(500);

/// How long a connection may sit idle before the pool closes it (r2d2 looks every 30 s). A burst
/// (300 stalled downloads) opens the pool to its cap; a minute later it is back to what the load
/// needs, and so is the process's memory. Reopening costs a few milliseconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// When a connection's state is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Given back to the pool: must not wait on the database.
    Returned,
    /// About to be handed out: may ask the database when in doubt (a connection idle for a
    /// while, or a connection lost elsewhere since this one was last checked).
    CheckedOut,
}

/// Whether a connection is unusable.
pub type Broken<C> = fn(&mut C, Check) -> bool;

type Connect<C> = Arc<dyn Fn() -> StoreResult<C> + Send + Sync>;

pub struct Manager<C> {
    connect: Connect<C>,
    broken: Broken<C>,
    /// Whether the last attempt to connect failed (a timeout then means "unavailable").
    failing: Arc<AtomicBool>,
    /// Attempts to connect that failed in a row (r2d2 retries by itself while callers wait).
    failures: Arc<AtomicU32>,
}

impl<C: Send + 'static> r2d2::ManageConnection for Manager<C> {
    type Connection = C;
    type Error = StoreError;

    fn connect(&self) -> Result<C, StoreError> {
        let result = (self.connect)();
        self.failing.store(result.is_err(), Ordering::Relaxed);
        if result.is_ok() {
            let failed = self.failures.swap(0, Ordering::Relaxed);
            if failed > 0 {
                tracing::info!(failures = failed, "connected to the database again");
            }
        }
        result
    }

    fn is_valid(&self, conn: &mut C) -> Result<(), StoreError> {
        if (self.broken)(conn, Check::CheckedOut) {
            Err(StoreError::Unavailable(
                "an idle connection was closed (it is replaced)".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn has_broken(&self, conn: &mut C) -> bool {
        (self.broken)(conn, Check::Returned)
    }
}

/// Logs connection failures (connecting, or an idle connection found closed at checkout)
/// through tracing instead of r2d2's `log` output: the 1st, 2nd,
/// 4th, 8th… in a row (r2d2 retries every few hundred milliseconds while the database is down,
/// which would otherwise be a line each time).
#[derive(Debug)]
struct QuietErrors(Arc<AtomicU32>);

impl r2d2::HandleError<StoreError> for QuietErrors {
    fn handle_error(&self, error: StoreError) {
        let failures = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        if failures.is_power_of_two() {
            tracing::warn!(%error, failures, "a database connection failed");
        }
    }
}

pub type Pooled<C> = r2d2::PooledConnection<Manager<C>>;

pub struct Pool<C: Send + 'static> {
    /// Always `Some` until dropped (it is dropped on a thread of its own: see `Drop`).
    inner: Option<r2d2::Pool<Manager<C>>>,
    connect: Connect<C>,
    failing: Arc<AtomicBool>,
    size: u32,
}

impl<C: Send + 'static> Pool<C> {
    pub fn new(
        size: u32,
        wait: Duration,
        connect: impl Fn() -> StoreResult<C> + Send + Sync + 'static,
        broken: Broken<C>,
    ) -> Self {
        let connect: Connect<C> = Arc::new(connect);
        let failing = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU32::new(0));
        let size = size.max(1);
        let inner = r2d2::Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            .connection_timeout(wait.max(Duration::from_millis(1)))
            .idle_timeout(Some(IDLE_TIMEOUT))
            // `broken` asks the database only when in doubt, so every checkout may run it.
            .test_on_check_out(true)
            .error_handler(Box::new(QuietErrors(failures.clone())))
            .build_unchecked(Manager {
                connect: connect.clone(),
                broken,
                failing: failing.clone(),
                failures,
            });
        Self {
            inner: Some(inner),
            connect,
            failing,
            size,
        }
    }

    fn pool(&self) -> &r2d2::Pool<Manager<C>> {
        self.inner.as_ref().expect("present until drop")
    }

    /// A pooled connection, waiting up to the pool's wait time for one to come free.
    /// Waits in slices of [`OUTAGE_WAIT`]: once an attempt to connect has failed, the caller
    /// is answered "unavailable" at the end of the slice instead of the whole wait.
    pub fn get(&self) -> StoreResult<Pooled<C>> {
        let started = Instant::now();
        let deadline = started + self.pool().connection_timeout();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = left.min(OUTAGE_WAIT);
            match self.pool().get_timeout(slice) {
                Ok(conn) => {
                    crate::telemetry::pool_wait(started.elapsed());
                    return Ok(conn);
                }
                Err(e) if slice >= left || self.failing.load(Ordering::Relaxed) => {
                    return Err(self.timed_out(e));
                }
                Err(_) => {}
            }
        }
    }

    /// A pooled connection, waiting up to `wait` (start-up: the database may be slow to answer
    /// its first connection).
    pub fn get_patiently(&self, wait: Duration) -> StoreResult<Pooled<C>> {
        let result = self.pool().get_timeout(wait);
        result.map_err(|e| self.timed_out(e))
    }

    /// Busy when every connection is open and in use; unavailable when the database could not
    /// be reached, or did not answer a new connection in time.
    fn timed_out(&self, e: r2d2::Error) -> StoreError {
        let open = self.pool().state().connections;
        if self.failing.load(Ordering::Relaxed) || open < self.size {
            StoreError::Unavailable(format!("cannot connect to the database ({e})"))
        } else {
            StoreError::Busy(format!(
                "all {} database connections are in use ({e})",
                self.size
            ))
        }
    }

    /// A pooled connection if one is free at once.
    pub fn try_get(&self) -> Option<Pooled<C>> {
        self.pool().try_get()
    }

    /// A new connection that is not pooled (a batch writer's own).
    pub fn open(&self) -> StoreResult<C> {
        (self.connect)()
    }

    /// The cap, and the connections open and idle now.
    pub fn state(&self) -> super::PoolState {
        let s = self.pool().state();
        super::PoolState {
            max: self.size,
            open: s.connections,
            idle: s.idle_connections,
        }
    }
}

impl<C: Send + 'static> Drop for Pool<C> {
    /// The `postgres` client closes its connection by blocking on its own runtime, which must
    /// not happen on an async thread: the idle connections are closed on a thread of their own.
    fn drop(&mut self) {
        if let Some(pool) = self.inner.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_busy_when_every_connection_stays_in_use() {
        let pool = Pool::new(
            1,
            Duration::from_millis(20),
            || Ok(7u32),
            |_: &mut u32, _| false,
        );
        let held = pool.get().expect("the only connection");
        assert!(matches!(pool.get(), Err(StoreError::Busy(_))));
        assert!(pool.try_get().is_none());
        drop(held);
        assert_eq!(*pool.get().expect("returned to the pool"), 7);
        assert_eq!(pool.state().max, 1);
    }

    #[test]
    fn a_database_that_cannot_be_reached_is_unavailable_not_busy() {
        let pool: Pool<u32> = Pool::new(
            2,
            Duration::from_millis(50),
            || Err(StoreError::Unavailable("refused".into())),
            |_: &mut u32, _| false,
        );
        assert!(matches!(pool.get(), Err(StoreError::Unavailable(_))));
    }

    #[test]
    fn a_broken_connection_is_not_reused() {
        let opened = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = opened.clone();
        let pool = Pool::new(
            1,
            Duration::from_secs(1),
            move || Ok(counter.fetch_add(1, Ordering::SeqCst)),
            |n: &mut u32, _| *n == 0,
        );
        // The first connection is broken: it is found so when handed out (or returned), and a
        // new one is opened instead.
        assert_eq!(*pool.get().unwrap(), 1);
        assert_eq!(*pool.get().unwrap(), 1);
    }

    /// The "server" of `a_connection_that_broke_while_idle_is_not_handed_out`: connections
    /// remember the epoch they were opened in, and a restart starts a new one.
    static SERVER_EPOCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    #[test]
    fn a_connection_that_broke_while_idle_is_not_handed_out() {
        let pool = Pool::new(
            1,
            Duration::from_secs(1),
            || Ok(SERVER_EPOCH.load(Ordering::SeqCst)),
            |epoch: &mut u32, _| *epoch != SERVER_EPOCH.load(Ordering::SeqCst),
        );
        assert_eq!(*pool.get().unwrap(), 0);
        // The server restarts while the connection sits idle in the pool.
        SERVER_EPOCH.store(1, Ordering::SeqCst);
        assert_eq!(
            *pool.get().unwrap(),
            1,
            "the dead idle connection was replaced at checkout"
        );
    }
}
