//! Catch-up scans run on a thread of their own, at a lower CPU priority than
//! the threads that answer clients.
//!
//! A full sync walks the whole table: for a million sessions that is seconds of
//! copying at the catch-up rate, on a node that is serving clients at the same
//! time (the whole point of the twin is that the source keeps serving). On the
//! runtime thread the scan competed with client work as an equal, and on a busy
//! core the scheduler gave it whole time slices while requests waited (the
//! source's p99 rose from about 0.45 ms to 1.3-4 ms in benches/replication.py,
//! pinned). Here it runs at nice [`SCAN_NICE`]: when the core is idle it runs
//! at the paced rate as before, when clients need the core they get it first.
//! The runtime thread only encodes what the scanner produced and writes it.
//!
//! Lowering one's own priority needs no privilege; a service manager may still
//! forbid the system call (systemd's `@resources` set), in which case the
//! scanner logs that once and runs at normal priority.

use super::{ScanCursor, TwinStore};
use crate::mutation::Mutation;
use std::sync::Arc;

/// The scanner's nice value (clients' threads stay at the process's).
pub const SCAN_NICE: i32 = 10;

/// What one scan step returns: records and where to continue (None: done).
pub type Chunk = (Vec<Arc<Mutation>>, Option<ScanCursor>);

struct Job {
    cursor: ScanCursor,
    floor: u64,
    max: usize,
    reply: tokio::sync::oneshot::Sender<Chunk>,
}

/// Handle to the scanner thread; the thread ends when the handle is dropped.
#[derive(Debug)]
pub struct Scanner {
    jobs: crossbeam_channel::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("floor", &self.floor).finish()
    }
}

impl Scanner {
    /// Start the scanner thread for `store`.
    pub fn start(store: Arc<dyn TwinStore>) -> std::io::Result<Scanner> {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(1);
        std::thread::Builder::new()
            .name("memtwin-scan".into())
            .spawn(move || {
                lower_own_priority();
                for job in rx {
                    let chunk = store.scan(job.cursor, job.floor, job.max);
                    // The link may have gone while we scanned: nothing to do.
                    let _ = job.reply.send(chunk);
                }
            })?;
        Ok(Scanner { jobs })
    }

    /// One scan step on the scanner thread. None when the thread is gone (it
    /// panicked): the caller scans inline instead.
    pub async fn scan(&self, cursor: ScanCursor, floor: u64, max: usize) -> Option<Chunk> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            cursor,
            floor,
            max,
            reply,
        };
        // One link scans at a time, so the queue is empty; never block the
        // runtime on it all the same.
        self.jobs.try_send(job).ok()?;
        answer.await.ok()
    }
}

/// nice(SCAN_NICE) for the calling thread only (Linux: priority is per thread).
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SCAN_NICE)
        };
        if rc != 0 {
            tracing::info!(
                "twin catch-up scans run at normal CPU priority (setpriority: {})",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::testing::FakeStore;

    #[tokio::test]
    async fn the_scanner_walks_the_table_at_a_lower_priority() {
        let store = FakeStore::new(1);
        for i in 0..10u32 {
            store.set(format!("k{i}").as_bytes(), b"v");
        }
        let scanner = Scanner::start(store.clone()).expect("start");
        let mut seen = 0;
        let mut at = Some(ScanCursor::default());
        for _ in 0..100 {
            let Some(c) = at.take() else { break };
            let (recs, next) = scanner.scan(c, 0, 3).await.expect("scanner alive");
            seen += recs.len();
            at = next;
        }
        assert!(at.is_none(), "the scan ends");
        assert_eq!(seen, 10);
        // The thread's nice value (from /proc) is SCAN_NICE.
        let nice = std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|t| t.ok())
            .find_map(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
                let (name, rest) = stat.split_once(") ")?;
                name.ends_with("(memtwin-scan").then(|| {
                    rest.split_whitespace()
                        .nth(16)
                        .and_then(|n| n.parse::<i32>().ok())
                })?
            });
        assert_eq!(nice, Some(SCAN_NICE));
    }
}
