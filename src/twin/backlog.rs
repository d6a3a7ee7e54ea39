//! The backlog: a ring of the records this node shipped (or would have
//! shipped while the link was down), bounded by bytes and by age
//! (`--replication-backlog-mb`, `--replication-backlog-ttl`).
//!
//! A short cut is the common outage. Without a backlog every reconnect walks
//! the whole table to find what the twin missed; with one, the sender replays
//! the records above the twin's resume point from memory, and scans only when
//! the ring no longer reaches that far back.
//!
//! The ring knows how far back it is complete: `covered_from`, a version such
//! that every shipped record with a higher version is in the ring. Trimming
//! the oldest record raises it to that record's version (versions are only
//! nearly ordered by sequence, hence the max). A queue overflow (records
//! dropped before they reached the ring) raises it to the clock at the moment
//! the drop was noticed: every dropped record was stamped before then.

use crate::mutation::{Mutation, Op};
use crate::version::Version;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Defaults of `--replication-backlog-mb` / `--replication-backlog-ttl`:
/// 64 MiB holds about 60,000 session writes of 1 KB, about a minute of a busy
/// node's writes, and ten minutes matches the default tombstone lifetime, past
/// which a deleted key's tombstone may be gone anyway.
pub const DEFAULT_BACKLOG_BYTES: usize = 64 << 20;
pub const DEFAULT_BACKLOG_TTL: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Backlog {
    ring: VecDeque<Arc<Mutation>>,
    bytes: usize,
    cap: usize,
    ttl_ms: u64,
    /// Every shipped record with a version above this is in the ring.
    covered_from: u64,
    /// Records trimmed for room or age (the ring's "overflows").
    pub trimmed: u64,
}

/// The version a record is judged by (a flush's is in its spec).
pub fn version_of(m: &Mutation) -> u64 {
    match (m.op, m.flush) {
        (Op::Flush, Some(f)) if m.version == 0 => f.version,
        _ => m.version,
    }
}

fn millis_of(m: &Mutation) -> u64 {
    Version::from_raw(version_of(m)).millis()
}

impl Backlog {
    /// An empty ring that covers nothing before `now_version` (records
    /// stamped earlier were never offered to it).
    pub fn new(cap: usize, ttl: Duration, now_version: u64) -> Self {
        Backlog {
            ring: VecDeque::new(),
            bytes: 0,
            cap,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            covered_from: now_version,
            trimmed: 0,
        }
    }

    /// Keep a shipped record.
    pub fn push(&mut self, m: &Arc<Mutation>) {
        if self.cap == 0 {
            self.covered_from = self.covered_from.max(version_of(m));
            return;
        }
        self.bytes += m.size();
        self.ring.push_back(m.clone());
        while self.bytes > self.cap {
            self.pop();
        }
        // The newest record's own time stands for "now": no clock read per record.
        self.expire(millis_of(m));
    }

    /// Drop records older than the ttl before `now_ms` (by their version's
    /// wall time). Run at each push with the pushed record's own time, so an
    /// idle ring keeps its records (harmless: only memory, bounded by the cap).
    pub fn expire(&mut self, now_ms: u64) {
        let oldest_ok = now_ms.saturating_sub(self.ttl_ms);
        while self.ring.front().is_some_and(|m| millis_of(m) < oldest_ok) {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(m) = self.ring.pop_front() {
            self.bytes -= m.size();
            self.covered_from = self.covered_from.max(version_of(&m));
            self.trimmed += 1;
        }
    }

    /// Records were dropped before reaching the ring, all stamped at or
    /// below `now_version`: the ring is complete only above it.
    pub fn gap(&mut self, now_version: u64) {
        self.ring.clear();
        self.bytes = 0;
        self.covered_from = self.covered_from.max(now_version);
    }

    /// The records to replay for a twin that holds everything up to `floor`,
    /// in sequence order, or None when the ring does not reach back so far.
    pub fn replay_above(&self, floor: u64) -> Option<VecDeque<Arc<Mutation>>> {
        if self.covered_from > floor {
            return None;
        }
        Some(
            self.ring
                .iter()
                .filter(|m| version_of(m) > floor)
                .cloned()
                .collect(),
        )
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Write time (Unix ms) of the oldest record held.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.ring.front().map(|m| millis_of(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::now_ms;
    use bytes::Bytes;

    fn v(ms: u64, n: u64) -> u64 {
        Version::floor_for_millis(ms).get() + n
    }

    fn rec(seq: u64, version: u64) -> Arc<Mutation> {
        Arc::new(Mutation {
            seq,
            op: Op::Delete,
            key: Bytes::from(format!("k{seq}")),
            item: None,
            version,
            remote: false,
            flush: None,
        })
    }

    #[test]
    fn replays_above_a_covered_floor_and_refuses_below_it() {
        let t0 = now_ms();
        let mut b = Backlog::new(1 << 20, Duration::from_secs(600), v(t0, 0));
        for i in 1..=10 {
            b.push(&rec(i, v(t0, i)));
        }
        let r = b.replay_above(v(t0, 6)).expect("covered");
        assert_eq!(
            r.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        assert_eq!(b.replay_above(v(t0, 0)).map(|r| r.len()), Some(10));
        assert!(
            b.replay_above(v(t0 - 1, 0)).is_none(),
            "before the ring began"
        );
    }

    #[test]
    fn trimming_for_room_moves_the_coverage_up() {
        let t0 = now_ms();
        let one = rec(1, 0).size();
        let mut b = Backlog::new(one * 3, Duration::from_secs(600), v(t0, 0));
        for i in 1..=5 {
            b.push(&rec(i, v(t0, i)));
        }
        assert_eq!((b.len(), b.bytes(), b.trimmed), (3, one * 3, 2));
        assert!(b.replay_above(v(t0, 1)).is_none(), "record 2 is gone");
        assert_eq!(b.replay_above(v(t0, 2)).map(|r| r.len()), Some(3));
    }

    #[test]
    fn old_records_expire_and_a_gap_resets_the_ring() {
        let t0 = now_ms();
        let mut b = Backlog::new(1 << 20, Duration::from_secs(60), v(t0 - 120_000, 0));
        b.push(&rec(1, v(t0 - 90_000, 0)));
        assert_eq!(b.len(), 1, "the newest record is never too old");
        // A record 90 s newer makes the first one older than the ttl.
        b.push(&rec(2, v(t0, 1)));
        assert_eq!(b.len(), 1, "older than the ttl");
        assert!(b.replay_above(v(t0 - 100_000, 0)).is_none());
        assert_eq!(b.oldest_ms(), Some(t0));
        b.gap(v(t0, 5));
        assert!(b.is_empty());
        assert!(
            b.replay_above(v(t0, 4)).is_none(),
            "dropped records may lie above"
        );
        assert_eq!(b.replay_above(v(t0, 5)).map(|r| r.len()), Some(0));
    }

    #[test]
    fn a_zero_cap_keeps_nothing_and_covers_nothing_behind() {
        let t0 = now_ms();
        let mut b = Backlog::new(0, Duration::from_secs(60), v(t0, 0));
        b.push(&rec(1, v(t0, 3)));
        assert!(b.is_empty());
        assert!(b.replay_above(v(t0, 2)).is_none());
    }
}
