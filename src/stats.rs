//! Server counters with memcached's names.
//!
//! Counters are striped: each worker thread adds to its own cache-padded stripe,
//! so hot counters (`cmd_get`, `bytes_read` ...) never bounce a cache line between
//! cores. Reading sums the stripes; that is only done by `stats` and metrics.
//! Gauges that are not monotonic (current connections, bytes, items) live where
//! their truth lives (server, store) and are read from there.

use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// One stripe of counters.
        #[derive(Default, Debug)]
        pub struct Counters { $(pub $name: AtomicU64,)* }

        /// A summed, plain-number copy of all counters.
        #[derive(Default, Debug, Clone, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl Counters {
            fn add_into(&self, s: &mut Snapshot) {
                $( s.$name += self.$name.load(Ordering::Relaxed); )*
            }
            fn reset(&self) {
                $( self.$name.store(0, Ordering::Relaxed); )*
            }
        }
    };
}

counters!(
    cmd_get,
    cmd_set,
    cmd_flush,
    cmd_touch,
    cmd_meta,
    get_hits,
    get_misses,
    get_expired,
    get_flushed,
    delete_misses,
    delete_hits,
    incr_misses,
    incr_hits,
    decr_misses,
    decr_hits,
    cas_misses,
    cas_hits,
    cas_badval,
    touch_hits,
    touch_misses,
    store_too_large,
    store_no_memory,
    store_io_error,
    auth_cmds,
    auth_errors,
    bytes_read,
    bytes_written,
    total_connections,
    rejected_connections,
    total_items,
    evictions,
    reclaimed,
    expired_unfetched,
    evicted_unfetched,
    evicted_active,
    conn_yields,
    listen_disabled_num,
);

const STRIPES: usize = 16;

/// Process-wide counters.
#[derive(Debug)]
pub struct Stats {
    stripes: Box<[CachePadded<Counters>]>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static STRIPE: Cell<usize> = Cell::new(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES);
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            stripes: (0..STRIPES)
                .map(|_| CachePadded::new(Counters::default()))
                .collect(),
        }
    }

    /// The calling thread's stripe. Use as `stats.local().cmd_get.fetch_add(1, Relaxed)`,
    /// or better through [`Stats::bump`].
    #[inline]
    pub fn local(&self) -> &Counters {
        let i = STRIPE.with(|s| s.get());
        &self.stripes[i]
    }

    #[inline]
    pub fn bump(&self, f: impl FnOnce(&Counters) -> &AtomicU64) {
        f(self.local()).fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, f: impl FnOnce(&Counters) -> &AtomicU64, n: u64) {
        f(self.local()).fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for stripe in self.stripes.iter() {
            stripe.add_into(&mut s);
        }
        s
    }

    /// `stats reset`: zero the counters (gauges are unaffected, as in memcached).
    pub fn reset(&self) {
        for stripe in self.stripes.iter() {
            stripe.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_sum_across_threads() {
        let stats = std::sync::Arc::new(Stats::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.bump(|c| &c.cmd_get);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(stats.snapshot().cmd_get, 4000);
        stats.reset();
        assert_eq!(stats.snapshot().cmd_get, 0);
    }
}
