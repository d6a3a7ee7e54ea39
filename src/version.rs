//! Item versions: a hybrid logical clock whose stamps are also CAS tokens.
//!
//! Twin replication resolves every conflict with one rule, applied identically
//! on both nodes: *the higher version wins*. That only converges if a version
//! is stamped once, at the node that accepted the write (KeyDB's active
//! replicas re-stamp replayed writes with the receiver's clock, which is why
//! their healed splits never agree), and if the two nodes can never produce
//! the same version. A [`Version`] is one `u64` laid out so that comparing two
//! of them as integers *is* "last writer wins on (clock, node id)":
//!
//! ```text
//!  63                                   23 22          12 11          0
//! +---------------------------------------+--------------+-------------+
//! | milliseconds since 2024-01-01 UTC (41) | counter (11) | node id (12)|
//! +---------------------------------------+--------------+-------------+
//! ```
//!
//! * The high part is a hybrid logical clock ([`Hlc`]): the next stamp is
//!   `max(last + 1, wall clock)`. It follows real time while clocks agree,
//!   never goes backwards when the wall clock steps back, and stays ahead of
//!   every version the node has applied or loaded ([`Hlc::observe`]). 11
//!   counter bits give 2,048 stamps per millisecond (2 million writes per
//!   second per node); beyond that the clock runs ahead of the wall clock and
//!   catches up when the rate falls.
//! * The node id (1..=4095) sits in the low bits, so concurrent writes in the
//!   same millisecond are ordered by node id on both nodes, and two nodes with
//!   different ids never produce equal stamps. That is what lets a stamp serve
//!   as a CAS token across the pair: a token names one item value on both
//!   twins, so `gets` on one node and `cas` on the other work.
//! * 41 bits of milliseconds last until 2093, and the values stay below 2^63
//!   until 2058. That matters because Java clients (spymemcached, which
//!   memcached-session-manager uses) keep CAS values in a signed `long`.
//! * Versions of data written before stamps existed (small CAS counters) are
//!   simply older than every stamp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds of 2024-01-01T00:00:00Z, the zero of the clock field.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
/// Position of the milliseconds field.
pub const MS_SHIFT: u32 = 23;
/// Width of the node id field.
pub const NODE_BITS: u32 = 12;
/// Largest node id (0 is reserved for "no node": floors and old data).
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;

const NODE_MASK: u64 = (1 << NODE_BITS) - 1;
/// The last millisecond the 41-bit field can hold.
const MAX_MS: u64 = (1 << (64 - MS_SHIFT)) - 1;
/// One step of the clock part (the counter's lowest bit).
const TICK: u64 = 1 << NODE_BITS;

/// A version stamp (see the module docs for its layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(u64);

impl Version {
    /// A stamp from its raw bits (wire, disk, CAS token).
    pub const fn from_raw(v: u64) -> Self {
        Version(v)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The node that stamped it (0 for floors and pre-stamp data).
    pub fn node_of(self) -> u16 {
        (self.0 & NODE_MASK) as u16
    }

    /// Unix milliseconds of the clock part.
    pub fn millis(self) -> u64 {
        (self.0 >> MS_SHIFT) + EPOCH_MS
    }

    /// Unix seconds of the clock part (saturating at `u32::MAX`).
    pub fn unix_secs(self) -> u32 {
        u32::try_from(self.millis() / 1000).unwrap_or(u32::MAX)
    }

    /// The smallest stamp taken at `unix_ms` by any node: every write stamped
    /// at or after that millisecond compares above it.
    /// Times past the field's end (2093) clamp to its last millisecond
    /// instead of wrapping to a small value.
    pub fn floor_for_millis(unix_ms: u64) -> Version {
        let ms = unix_ms.saturating_sub(EPOCH_MS).min(MAX_MS);
        Version(ms << MS_SHIFT)
    }
}

/// The conflict rule, the same on both nodes for stores, touches, deletes
/// (tombstones) and flushes: state with `incoming` replaces state with
/// `current` only if `incoming` is higher. Equal versions are the same write
/// delivered twice (idempotent), not a conflict.
#[inline]
pub fn wins(incoming: Version, current: Version) -> bool {
    incoming > current
}

/// Why a node id is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("node id {0} is out of range: use 1 to 4095")]
    NodeId(u32),
}

/// A node's stamp source. Lock-free; strictly increasing across threads.
#[derive(Debug)]
pub struct Hlc {
    node: u16,
    /// The last stamp's clock part (node bits clear).
    last: AtomicU64,
}

impl Hlc {
    pub fn new(node: u16) -> Result<Hlc, VersionError> {
        if node == 0 || node > MAX_NODE_ID {
            return Err(VersionError::NodeId(u32::from(node)));
        }
        Ok(Hlc {
            node,
            last: AtomicU64::new(0),
        })
    }

    pub fn node(&self) -> u16 {
        self.node
    }

    /// The last stamp handed out or observed (with this node's id).
    pub fn last(&self) -> Version {
        Version(self.last.load(Ordering::Acquire) | u64::from(self.node))
    }

    /// A new stamp, above every earlier one of this clock, at or after
    /// `wall_ms` (Unix milliseconds) when the clock is not running ahead.
    pub fn next(&self, wall_ms: u64) -> Version {
        let wall = Version::floor_for_millis(wall_ms).0;
        let mut cur = self.last.load(Ordering::Acquire);
        loop {
            let next = cur.saturating_add(TICK).max(wall) & !NODE_MASK;
            match self
                .last
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Version(next | u64::from(self.node)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// A stamp for now, read from the system clock.
    pub fn now(&self) -> Version {
        self.next(now_ms())
    }

    /// Make every later stamp greater than `v` (a version applied from the
    /// twin or loaded from disk). The clock follows whatever it observes, so a
    /// twin with a wildly wrong clock could drag it far ahead: the link must
    /// refuse peers whose clocks are skewed (the handshake compares them)
    /// before their versions reach this. At the very top of the range the
    /// clock saturates and would repeat its last stamp.
    pub fn observe(&self, v: Version) {
        self.last.fetch_max(v.0 & !NODE_MASK, Ordering::AcqRel);
    }
}

/// The system clock in Unix milliseconds (0 if it is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A random node id in 1..=4095, from the kernel.
pub fn generate_node_id() -> std::io::Result<u16> {
    use std::io::Read;
    let mut f = std::fs::File::open("/dev/urandom")?;
    // Rejection sampling keeps every id equally likely (a plain modulo
    // would favour the lowest ones).
    loop {
        let mut b = [0u8; 2];
        f.read_exact(&mut b)?;
        let n = u16::from_le_bytes(b) & MAX_NODE_ID;
        if n != 0 {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// 2026-12-02T00:00:00Z.
    const WALL: u64 = 1_796_169_600_000;

    #[test]
    fn layout_round_trips() {
        let h = Hlc::new(4095).expect("node");
        let v = h.next(WALL);
        assert_eq!(v.node_of(), 4095);
        assert_eq!(v.millis(), WALL);
        assert_eq!(v.unix_secs(), (WALL / 1000) as u32);
        assert!(v.get() < 1 << 63, "below 2^63 for Java's signed long");
        assert!(Version::floor_for_millis(WALL) < v);
        assert!(Version::floor_for_millis(WALL + 1) > v);
        // 2058 is where the sign bit would be reached.
        let late = Version::floor_for_millis(EPOCH_MS + (1 << 40) - 1);
        assert!(late.get() < 1 << 63);
        // Past 2093 the floor clamps instead of wrapping to a tiny value.
        let beyond = Version::floor_for_millis(u64::MAX);
        assert!(beyond > Version::floor_for_millis(WALL));
        assert_eq!(beyond.node_of(), 0);
    }

    #[test]
    fn never_goes_backwards_with_the_wall_clock() {
        let h = Hlc::new(1).expect("node");
        let a = h.next(WALL);
        let b = h.next(WALL - 60_000);
        assert!(b > a);
        assert_eq!(b.millis(), WALL, "held at the last time, counter advanced");
        let c = h.next(WALL + 5);
        assert_eq!(c.millis(), WALL + 5, "follows the wall clock again");
    }

    #[test]
    fn counter_overflow_carries_into_milliseconds() {
        let h = Hlc::new(7).expect("node");
        let mut prev = Version::default();
        for _ in 0..5000 {
            let v = h.next(WALL);
            assert!(v > prev);
            assert_eq!(v.node_of(), 7);
            prev = v;
        }
        assert!(prev.millis() >= WALL + 2 && prev.millis() <= WALL + 3);
    }

    #[test]
    fn observe_moves_the_clock_past_remote_versions() {
        let a = Hlc::new(1).expect("node");
        let b = Hlc::new(2).expect("node");
        let remote = b.next(WALL + 3_600_000);
        a.observe(remote);
        let v = a.next(WALL);
        assert!(wins(v, remote));
        assert_eq!(v.node_of(), 1);
        // Observing an older version changes nothing.
        a.observe(Version::from_raw(5));
        assert!(a.next(WALL) > v);
    }

    #[test]
    fn same_millisecond_on_two_nodes_is_ordered_by_node_id() {
        let a = Hlc::new(10).expect("node");
        let b = Hlc::new(20).expect("node");
        let (va, vb) = (a.next(WALL), b.next(WALL));
        assert_ne!(va, vb);
        assert!(wins(vb, va) && !wins(va, vb));
        assert!(!wins(va, va), "a redelivery is not a win");
    }

    #[test]
    fn threads_get_unique_increasing_stamps() {
        let h = Hlc::new(3).expect("node");
        let all: Vec<Vec<Version>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..10_000).map(|_| h.now()).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().map(|t| t.join().expect("join")).collect()
        });
        let mut seen = HashSet::new();
        for per_thread in &all {
            assert!(per_thread.windows(2).all(|w| w[0] < w[1]));
            for v in per_thread {
                assert!(seen.insert(*v), "duplicate stamp {v:?}");
            }
        }
        assert_eq!(seen.len(), 40_000);
    }

    #[test]
    fn node_ids_are_validated_and_generated_in_range() {
        assert_eq!(Hlc::new(0).err(), Some(VersionError::NodeId(0)));
        assert_eq!(Hlc::new(4096).err(), Some(VersionError::NodeId(4096)));
        assert!(Hlc::new(MAX_NODE_ID).is_ok());
        for _ in 0..100 {
            let n = generate_node_id().expect("urandom");
            assert!((1..=MAX_NODE_ID).contains(&n));
        }
    }

    proptest! {
        /// Any interleaving of writes (with wall clocks that jump around) and
        /// deliveries between two nodes: stamps are unique across the pair and
        /// strictly increasing per node, and a node's next stamp beats every
        /// stamp it has observed.
        #[test]
        fn two_nodes_never_collide(steps in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..5_000), 1..400)) {
            let nodes = [Hlc::new(1).expect("node"), Hlc::new(2).expect("node")];
            let mut last = [Version::default(); 2];
            let mut seen = HashSet::new();
            for (second, deliver, jitter) in steps {
                let i = usize::from(second);
                if deliver {
                    let other = last[1 - i];
                    nodes[i].observe(other);
                    let v = nodes[i].next(WALL + jitter);
                    prop_assert!(wins(v, other));
                    prop_assert!(v > last[i]);
                    prop_assert!(seen.insert(v));
                    last[i] = v;
                } else {
                    let v = nodes[i].next(WALL + jitter);
                    prop_assert!(v > last[i]);
                    prop_assert_eq!(usize::from(v.node_of()), i + 1);
                    prop_assert!(seen.insert(v));
                    last[i] = v;
                }
            }
        }
    }
}
