//! A job's PostgreSQL backend at the job's priority.
//!
//! `--job-niceness` lowers the threads that run jobs, so API requests get the CPU first. On
//! PostgreSQL most of an import's CPU is not in those threads but in the server process that
//! runs its COPYs and commits: with the server on the same machine, that backend competes with
//! the API's own backends at full priority. So a job's writer connection asks for its backend's
//! process id and gives that process the niceness of the thread that drives it.
//!
//! Best effort, and only where it is certain to be the right process: the backend's working
//! directory must be the server's data directory (a server in another PID namespace, or on
//! another machine, fails that check), and sluice must be allowed to change its priority (the
//! same user as the server, or root). Anything else leaves the backend as it is.

use postgres::Client;

/// Gives the connection's backend the calling thread's niceness when that is lower in
/// priority than the backend's own; returns whether it did.
pub fn follow_thread(client: &mut Client) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let Some(niceness) = niceness(tid).filter(|&n| n > 0) else {
            return false;
        };
        match backend_here(client) {
            Some(pid) => renice(pid, niceness),
            None => false,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = client;
        false
    }
}

/// The backend's process id, when it is a process of this machine's view: its working
/// directory is the data directory the server names.
#[cfg(target_os = "linux")]
fn backend_here(client: &mut Client) -> Option<libc::pid_t> {
    // `data_directory` is readable by superusers and `pg_read_all_settings` only; without it
    // the check cannot be made.
    let row = client
        .query_one(
            "SELECT pg_backend_pid(), current_setting('data_directory')",
            &[],
        )
        .ok()?;
    let pid: i32 = row.get(0);
    let data: String = row.get(1);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let data = std::fs::canonicalize(data).ok()?;
    (cwd == data).then_some(pid)
}

/// The niceness of a thread or process (Linux: a thread id or a process id), `None` if it
/// cannot be read (`getpriority` may return -1 as a value, so errno tells the error).
#[cfg(target_os = "linux")]
fn niceness(id: libc::pid_t) -> Option<i32> {
    // SAFETY: getpriority only reads; errno is this thread's own.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, id as libc::id_t);
        (*libc::__errno_location() == 0).then_some(n)
    }
}

/// Lowers `pid` to `niceness` unless it already runs at that or lower priority.
#[cfg(target_os = "linux")]
fn renice(pid: libc::pid_t, to: i32) -> bool {
    if niceness(pid).is_none_or(|current| current >= to) {
        return false;
    }
    // SAFETY: setpriority on a process id; the worst outcome is EPERM or ESRCH.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, to) == 0 }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn backend_niceness(client: &mut Client) -> i32 {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        // SAFETY: reads a process's niceness.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t) }
    }

    /// On the server of `SLUICE_TEST_POSTGRES` (skipped without it, and when this process may
    /// not change the server's processes: it runs as root in CI): a connection made on a thread
    /// at niceness 7 gets a backend at 7; one made at niceness 0 is left alone.
    #[test]
    fn a_backend_follows_the_niceness_of_its_thread() {
        let Ok(url) = std::env::var("SLUICE_TEST_POSTGRES") else {
            return;
        };
        // SAFETY: reads this process's effective user id.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root may lower the priority of the server's processes here");
            return;
        }
        let url = format!("{url}/postgres");
        let at = |niceness: i32| {
            let url = url.clone();
            std::thread::spawn(move || {
                // SAFETY: changes only this test thread's niceness.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, niceness);
                }
                let mut client = Client::connect(&url, postgres::NoTls).unwrap();
                let before = backend_niceness(&mut client);
                let followed = follow_thread(&mut client);
                (before, followed, backend_niceness(&mut client))
            })
            .join()
            .unwrap()
        };
        assert_eq!(
            at(7),
            (0, true, 7),
            "a backend at 0 follows its thread to 7"
        );
        assert_eq!(
            at(0),
            (0, false, 0),
            "a thread at 0 leaves its backend alone"
        );
    }
}
