//! The bounded connection pool both backends share, over r2d2.
//!
//! At most `size` connections are open at once (`--db-connections`); a caller waits at most
//! `wait` (`--db-wait`) for one to come free and then gets [`StoreError::Busy`] (the API answers
//! `503 busy` with `Retry-After`), or [`StoreError::Unavailable`] when the database could not be
//! reached meanwhile. Connections open on demand and close after ten idle minutes; one in a bad
//! state (closed, or left inside a transaction) is dropped instead of returned. Batch writers
//! open connections of their own ([`Pool::open`]): one per running worker, outside the cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{StoreError, StoreResult};

/// How long opening a store waits for its first connection.
pub const STARTUP_WAIT: Duration = Duration::from_secs(30);

type Connect<C> = Arc<dyn Fn() -> StoreResult<C> + Send + Sync>;

pub struct Manager<C> {
    connect: Connect<C>,
    broken: fn(&C) -> bool,
    /// Whether the last attempt to connect failed (a timeout then means "unavailable").
    failing: Arc<AtomicBool>,
}

impl<C: Send + 'static> r2d2::ManageConnection for Manager<C> {
    type Connection = C;
    type Error = StoreError;

    fn connect(&self) -> Result<C, StoreError> {
        let result = (self.connect)();
        self.failing.store(result.is_err(), Ordering::Relaxed);
        result
    }

    fn is_valid(&self, _: &mut C) -> Result<(), StoreError> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut C) -> bool {
        (self.broken)(conn)
    }
}

/// Logs connection failures once through tracing instead of r2d2's `log` output.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<StoreError> for QuietErrors {
    fn handle_error(&self, error: StoreError) {
        tracing::warn!(%error, "opening a database connection failed");
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
        broken: fn(&C) -> bool,
    ) -> Self {
        let connect: Connect<C> = Arc::new(connect);
        let failing = Arc::new(AtomicBool::new(false));
        let size = size.max(1);
        let inner = r2d2::Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            .connection_timeout(wait.max(Duration::from_millis(1)))
            .idle_timeout(Some(Duration::from_secs(600)))
            .test_on_check_out(false)
            .error_handler(Box::new(QuietErrors))
            .build_unchecked(Manager {
                connect: connect.clone(),
                broken,
                failing: failing.clone(),
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
    pub fn get(&self) -> StoreResult<Pooled<C>> {
        let result = self.pool().get();
        result.map_err(|e| self.timed_out(e))
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
    pub fn state(&self) -> (u32, u32, u32) {
        let s = self.pool().state();
        (self.size, s.connections, s.idle_connections)
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
        let pool = Pool::new(1, Duration::from_millis(20), || Ok(7u32), |_| false);
        let held = pool.get().expect("the only connection");
        assert!(matches!(pool.get(), Err(StoreError::Busy(_))));
        assert!(pool.try_get().is_none());
        drop(held);
        assert_eq!(*pool.get().expect("returned to the pool"), 7);
        assert_eq!(pool.state().0, 1);
    }

    #[test]
    fn a_database_that_cannot_be_reached_is_unavailable_not_busy() {
        let pool: Pool<u32> = Pool::new(
            2,
            Duration::from_millis(50),
            || Err(StoreError::Unavailable("refused".into())),
            |_| false,
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
            |n: &u32| *n == 0,
        );
        assert_eq!(*pool.get().unwrap(), 0);
        // The first connection reported itself broken on return: a new one is opened.
        assert_eq!(*pool.get().unwrap(), 1);
        assert_eq!(*pool.get().unwrap(), 1);
    }
}
