//! The WAL checkpointer: copies committed pages from the write-ahead log into the database file
//! on a thread of its own, so that the batch writer's commits only append to the log.
//!
//! SQLite's default runs a checkpoint inside whichever commit finds the log past 1,000 pages:
//! during an import that is the batch writer, every few batches (0.4–0.75 s of a 700k-row
//! import, measured), or an API request's small commit. Here every connection checkpoints by
//! itself only past [`SAFETY_PAGES`] (a bound on the log should this thread fall behind), and
//! this thread runs a `PASSIVE` checkpoint — it never waits for readers or the writer — after
//! each batch commit ([`Checkpointer::nudge`]) and every 5 s otherwise.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::Duration;

use rusqlite::Connection;

use crate::backoff::{Backoff, Retry};

/// Log pages past which a committing connection checkpoints by itself (16 MB of 4 KiB pages).
pub const SAFETY_PAGES: u32 = 4000;

/// How often the thread checkpoints when no commit nudges it.
const IDLE: Duration = Duration::from_secs(5);

/// Waits after failed checkpoints: 1 s, doubling, at most 30 s.
const FAILING: Backoff = Backoff {
    first: Duration::from_secs(1),
    factor: 2,
    max: Duration::from_secs(30),
    jitter: 0.25,
};

/// The handle of the checkpoint thread; the thread ends when the last handle is dropped.
pub struct Checkpointer {
    nudge: SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread with `open` as its way to a connection (opened again after a failure).
    pub fn start(path: PathBuf, open: impl Fn() -> Option<Connection> + Send + 'static) -> Self {
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("sluice-checkpoint".into())
            .spawn(move || {
                let mut conn: Option<Connection> = None;
                let mut retry = Retry::forever(FAILING);
                loop {
                    match nudged.recv_timeout(IDLE) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if conn.is_none() {
                        conn = open();
                    }
                    let done = match conn.as_ref() {
                        Some(c) => c
                            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                            .map_err(|e| e.to_string()),
                        None => Err("cannot open the database".into()),
                    };
                    match done {
                        Ok(()) => retry = Retry::forever(FAILING),
                        Err(e) => {
                            // A full disk, say: the committing connections' own checkpoints
                            // bound the log meanwhile. Waiting longer each time keeps a server
                            // that waits for space quiet (`tests/disk_full.rs` measures it).
                            let wait = retry.failed().unwrap_or(FAILING.max);
                            if retry.worth_logging() {
                                tracing::debug!(error = %e, path = %path.display(), "WAL checkpoint failed");
                            }
                            std::thread::sleep(wait);
                            while nudged.try_recv().is_ok() {}
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the WAL checkpoint thread; commits checkpoint by themselves");
        }
        Checkpointer { nudge }
    }

    /// Asks for a checkpoint soon (a batch was committed); never blocks.
    pub fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}
