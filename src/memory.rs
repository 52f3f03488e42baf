//! Giving memory back to the operating system after a burst of streaming clients or imports.
//!
//! Each streaming download holds a few pages of bytes while its client reads; 300 clients that
//! stall hold a few hundred megabytes between them. Each running import holds its batches, its
//! reader's buffers and a workbook's shared strings. When they end, glibc's allocator keeps the
//! freed pages in its per-thread arenas (measured: 200 MB of 214 MB still resident 10 s after 300
//! stalled readers left; 234 MB after 20 imports from 5 organisations had ended), so the process
//! never shrinks back. [`Stream`] counts the streams and job runs in flight; when the last one
//! ends, `malloc_trim(0)` returns the arenas' free pages — at once, and again once the blocking
//! threads the burst woke have exited (their arenas' memory is only free then). On other
//! allocators and platforms it only counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// One streaming download (errors CSV, exports) or job run in flight; hold it for its life.
pub struct Stream(());

impl Stream {
    pub fn start() -> Self {
        STREAMS.fetch_add(1, Ordering::SeqCst);
        Stream(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if STREAMS.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Trimming walks every arena under its lock: off the async threads.
            std::thread::spawn(|| {
                release_free_memory();
                std::thread::sleep(crate::cli::BLOCKING_KEEP_ALIVE + Duration::from_secs(1));
                if STREAMS.load(Ordering::SeqCst) == 0 {
                    release_free_memory();
                }
            });
        }
    }
}

/// Tunes glibc's allocator for the batch writers, before anything is allocated: no "fastbins".
///
/// SQLite copies every text parameter it is given and frees the copies when a statement is
/// reset, thousands of small frees per multi-row statement. glibc parks such frees in its
/// fastbins, unmerged, and merges them all (`malloc_consolidate`) at the next large request, on
/// the writer's thread. Without fastbins a freed chunk is merged at once (the per-thread cache
/// still serves the most recent ones). Measured on 700k-row SQLite imports (BENCHMARKS.md,
/// issue 17 session 8): server CPU of the initial import −17 %; end to end −4 % initial and
/// −11 % update pass, within a noisy sitting. The same as `GLIBC_TUNABLES=glibc.malloc.mxfast=0`;
/// on other allocators, nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes the allocator's parameters; M_MXFAST 0 is a documented value.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

/// Returns the allocator's free pages to the operating system (glibc), or does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only reorganises the allocator's own free lists;
    // it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
