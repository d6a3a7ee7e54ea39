//! Coarse clock and memcached's expiry-time rules.
//!
//! memcached keeps time in whole seconds, advanced by a timer, rather than asking
//! the kernel on every request; expiry has one-second resolution anyway. memtwin
//! does the same: [`Clock::now`] is one relaxed atomic load. The housekeeping task
//! calls [`Clock::tick`] every second, and the tick counter doubles as a liveness
//! signal (a wedged runtime stops ticking).
//!
//! Times are absolute Unix seconds (`u32`, good until 2106) so that items can be
//! persisted and replicated without translating "seconds since process start".

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// memcached's `REALTIME_MAXDELTA`: exptimes above 30 days are absolute Unix times.
pub const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// An absolute expiry time that is always in the past (Unix second 1).
pub const EXPIRED: u32 = 1;

#[derive(Debug)]
pub struct Clock {
    now: AtomicU32,
    started: u32,
    ticks: AtomicU64,
}

fn wall_seconds() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        let now = wall_seconds();
        // memcached sets process_started two seconds in the past so that
        // "absolute time <= started" never catches a freshly computed time.
        let started = now.saturating_sub(2);
        Clock {
            now: AtomicU32::new(now),
            started,
            ticks: AtomicU64::new(0),
        }
    }

    /// A clock frozen at `now`, for tests.
    pub fn fixed(now: u32) -> Self {
        Clock {
            now: AtomicU32::new(now),
            started: now.saturating_sub(2),
            ticks: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn now(&self) -> u32 {
        self.now.load(Ordering::Relaxed)
    }

    pub fn started(&self) -> u32 {
        self.started
    }

    pub fn uptime(&self) -> u32 {
        self.now().saturating_sub(self.started)
    }

    /// Re-read the wall clock. Never moves time backwards.
    pub fn tick(&self) {
        let wall = wall_seconds();
        self.now.fetch_max(wall, Ordering::Relaxed);
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// Set the time explicitly (tests only move it forward).
    pub fn set(&self, now: u32) {
        self.now.store(now, Ordering::Relaxed);
    }

    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Convert a protocol exptime into an absolute expiry (0 = never), following
    /// memcached's `realtime()`: 0 never expires, negative values are already
    /// expired, values up to 30 days are relative, larger ones are absolute Unix
    /// times (expired when not in the future).
    pub fn expiry(&self, exptime: i64) -> u32 {
        abs_expiry(exptime, self.now())
    }
}

/// See [`Clock::expiry`].
pub fn abs_expiry(exptime: i64, now: u32) -> u32 {
    if exptime == 0 {
        0
    } else if exptime < 0 {
        EXPIRED
    } else if exptime > REALTIME_MAXDELTA {
        u32::try_from(exptime).unwrap_or(u32::MAX).max(EXPIRED)
    } else {
        // exptime <= 30 days, so this cannot overflow for any u32 `now` below u32::MAX - 30d.
        now.saturating_add(exptime as u32)
    }
}

/// Seconds of life left for an absolute expiry, as meta's `t` flag and `me` report it (-1 = never).
pub fn ttl_left(exptime: u32, now: u32) -> i64 {
    if exptime == 0 {
        -1
    } else {
        i64::from(exptime) - i64::from(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rules_match_memcached() {
        let now = 1_800_000_000;
        assert_eq!(abs_expiry(0, now), 0);
        assert_eq!(abs_expiry(-1, now), EXPIRED);
        assert_eq!(abs_expiry(10, now), now + 10);
        assert_eq!(
            abs_expiry(REALTIME_MAXDELTA, now),
            now + REALTIME_MAXDELTA as u32
        );
        // 31 days is an absolute time in 1970: already expired.
        assert_eq!(abs_expiry(2_678_400, now), 2_678_400);
        assert!(abs_expiry(2_678_400, now) <= now);
        assert_eq!(abs_expiry(i64::from(now) + 5, now), now + 5);
        assert_eq!(abs_expiry(i64::MAX, now), u32::MAX);
    }

    #[test]
    fn tick_never_goes_backwards() {
        let c = Clock::fixed(u32::MAX - 5);
        c.tick();
        assert_eq!(c.now(), u32::MAX - 5);
        assert_eq!(c.ticks(), 1);
    }
}
