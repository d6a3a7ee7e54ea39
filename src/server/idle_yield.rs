//! Give the CPU away once before going to sleep, but only while that helps.
//!
//! A worker that has served its ready connections and finds nothing more to do
//! would sleep in `epoll_wait` until the next request wakes it. When the clients
//! share the CPUs with the server (an application server on the same host; the
//! benchmark's generator in the "shared" placement), the next request is
//! usually written by a thread that is runnable on *this* CPU right now, behind
//! us. Sleeping and being woken again costs a context switch each way plus the
//! wake-up path; yielding once lets that thread run and write, and the
//! non-sleeping `epoll_wait` that follows finds its request already there.
//!
//! Measured with the null server (docs/performance.md, "Yield before sleep"):
//! shared placement, 4 connections crossed over both workers, 0.92x -> 1.27x
//! memcached's throughput at 4.8 -> 3.1 us of server CPU per request. This is
//! how memcached gets the same effect by accident: its slower request path
//! gives the clients time to write again before it sleeps (0.36 sleeps per
//! request against a bare loop's 0.50).
//!
//! When nobody else wants the CPU (the server alone on its cores: the "pinned"
//! placement, or a dedicated host), `sched_yield` returns at once and the extra
//! poll and yield are two wasted syscalls per sleep, 3-6 % of throughput in the
//! null server. So each yield is timed: one that comes back in under
//! [`FUTILE_BELOW`] ran nobody, and after [`FUTILE_STREAK`] of those in a row
//! the worker stops trying for [`BACKOFF`] sleeps before it probes again.

use std::time::{Duration, Instant};

/// A yield that returned sooner than this switched to no other thread. A
/// futile `sched_yield` takes about 0.2 us here (p99 0.3 us, also next to a
/// busy thread the scheduler does not prefer); a real switch and back takes
/// microseconds.
const FUTILE_BELOW: Duration = Duration::from_micros(1);
/// Futile yields in a row that make the worker stop trying for a while.
const FUTILE_STREAK: u32 = 8;
/// How many sleeps the worker then takes without trying: probing costs 8
/// polls and yields per 264 sleeps, next to nothing.
const BACKOFF: u32 = 256;

/// Per worker thread: whether a yield before the next sleep may pay.
#[derive(Debug, Default)]
pub struct IdleYield {
    /// Sleeps left to take without trying.
    skip: u32,
    /// Futile yields in a row.
    futile: u32,
}

impl IdleYield {
    /// Wait for events through `wait(timeout_ms)`, which says whether any are
    /// ready. If the previous batch `served` requests (and yields are not
    /// backing off), poll with timeout 0 first and, if nothing is ready, yield
    /// once before waiting with `timeout_ms`.
    pub fn wait<E>(
        &mut self,
        served: bool,
        timeout_ms: i32,
        mut wait: impl FnMut(i32) -> Result<bool, E>,
    ) -> Result<(), E> {
        if served && self.wants() {
            if wait(0)? {
                return Ok(());
            }
            self.yield_now();
        }
        wait(timeout_ms).map(|_| ())
    }

    /// The worker is about to sleep after serving requests: should it first
    /// poll, and yield if nothing is ready? Counts down the back-off.
    fn wants(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// Yield once, timing it.
    fn yield_now(&mut self) {
        let started = Instant::now();
        std::thread::yield_now();
        self.record(started.elapsed());
    }

    /// Learn from how long a yield took.
    fn record(&mut self, took: Duration) {
        if took >= FUTILE_BELOW {
            self.futile = 0;
            return;
        }
        self.futile += 1;
        if self.futile >= FUTILE_STREAK {
            self.futile = 0;
            self.skip = BACKOFF;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_nanos(200);
    const SWITCHED: Duration = Duration::from_micros(8);

    #[test]
    fn futile_yields_in_a_row_back_off_then_probe_again() {
        let mut y = IdleYield::default();
        for _ in 0..FUTILE_STREAK - 1 {
            assert!(y.wants());
            y.record(QUICK);
        }
        assert!(y.wants(), "not yet: one short of the streak");
        y.record(QUICK);
        for _ in 0..BACKOFF {
            assert!(!y.wants(), "backing off");
        }
        assert!(y.wants(), "probes again after the back-off");
    }

    #[test]
    fn a_useful_yield_resets_the_streak() {
        let mut y = IdleYield::default();
        for round in 0..10 {
            for _ in 0..FUTILE_STREAK - 1 {
                assert!(y.wants(), "round {round}");
                y.record(QUICK);
            }
            assert!(y.wants());
            y.record(SWITCHED);
        }
        assert!(y.wants(), "never backed off: every streak was broken");
    }

    /// The timeouts `wait` passes to the epoll wait, which answers `ready`.
    fn waits(y: &mut IdleYield, served: bool, timeout: i32, ready: bool) -> Vec<i32> {
        let mut calls = Vec::new();
        y.wait(served, timeout, |t| {
            calls.push(t);
            Ok::<_, ()>(ready)
        })
        .expect("no error");
        calls
    }

    #[test]
    fn wait_polls_first_only_after_serving() {
        let mut y = IdleYield::default();
        assert_eq!(
            waits(&mut y, false, -1, true),
            [-1],
            "nothing served: sleep"
        );
        assert_eq!(waits(&mut y, true, -1, true), [0], "the poll found work");
        assert_eq!(waits(&mut y, true, 50, false), [0, 50], "poll, yield, wait");
        assert_eq!(
            y.wait(true, -1, |_| Err::<bool, _>(7)),
            Err(7),
            "errors pass through"
        );
    }

    #[test]
    fn alone_on_the_cpu_a_real_yield_is_futile() {
        // Nothing else of ours is runnable; on a busy machine another process
        // may get the CPU, so only the direction is checked: a streak of real
        // yields that come back quickly ends in a back-off.
        let mut y = IdleYield::default();
        let mut backed_off = false;
        for _ in 0..10_000 {
            if !y.wants() {
                backed_off = true;
                break;
            }
            y.yield_now();
        }
        assert!(backed_off, "10 000 yields, never 8 quick ones in a row");
    }
}
