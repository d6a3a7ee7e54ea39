//! The in-memory table.
//!
//! A sharded hash table ([`dashmap`] through its raw API, seeded SipHash: keys
//! are attacker-chosen) of compact [`Item`]s (header, key and value in one
//! allocation; the item is its own key, so the index holds one pointer per
//! item), plus what dashmap does not give:
//!
//! * **memory accounting**: every item is charged `key + value + ITEM_OVERHEAD`
//!   bytes (what it really costs: its block, allocator slack and index slot)
//!   against the `-m` limit in one atomic counter;
//! * **eviction**: an approximate LRU (CLOCK): a hand walks the buckets of each
//!   shard in turn; an item written or read since the hand last passed gets a
//!   second chance. No queue, so no memory per item beyond the index;
//! * **expiry**: lazy on access, plus [`Store::reap`] called by housekeeping;
//! * **logical `flush_all`**: a [`FlushSpec`] compared on access, never a scan;
//! * **versions** ([`crate::version`]): every write is stamped under its key's
//!   lock by the store's hybrid logical clock; the version orders writes for
//!   the twin's conflict rule and is the CAS token of value-changing writes;
//! * **tombstones** (only when a twin is configured): a delete, or the reclaim
//!   of an expired item, leaves the key with its version and no value, so a
//!   write with an older version arriving late from the twin loses
//!   ([`Store::apply_remote`]). They are invisible to clients, never counted in
//!   `curr_items`, purged after `tombstone_ttl` and evicted before live items.
//!
//! The store is synchronous and never hands out a lock guard: reads return owned
//! [`ItemView`]s and writes go through [`Store::modify`] with a closure that runs
//! under the key's shard lock. So no guard can be held across an `.await`, and
//! no code path holds two keys at once. Every change (removals included) is
//! published on the [`MutationStream`] while the shard lock is held, so per-key
//! order in the stream is the order of the table.
//!
//! ## RAM as a cache over disk
//!
//! With persistence on, a [`Backing`] is installed and RAM becomes a cache of the
//! persisted data set: a key missing from RAM is looked up in the backing and,
//! when live there, re-inserted (by `get` as by every [`Store::modify`], so add,
//! cas, incr, append, touch and delete behave as if the item had never left
//! RAM). The backing lags the table (the writer applies the stream behind the
//! request path), so three rules keep the read-through from returning something
//! the table no longer says:
//!
//! 1. the backing is read with the key's shard lock held, so no write to the
//!    key runs between the read and the re-insert;
//! 2. a key removed from RAM by a delete or an expiry is remembered as
//!    *unsettled* (key -> sequence number of the removal) until the backing has
//!    applied that number; until then a read-through answers "miss" instead of
//!    resurrecting the old version from disk;
//! 3. an item is only evicted once the backing has applied its sequence number
//!    (a *dirty* item is skipped by the eviction clock), so an evicted item's
//!    latest version is always on disk.
//!
//! While RAM is known to hold every persisted item (`complete`: nothing has been
//! evicted or left on disk at load), a miss is a miss and the backing is not
//! consulted at all.

mod backing;
mod item;
pub mod pages;
mod table;

pub use backing::{Backing, BackingError, BackingScan, Persisted};
pub use item::{Bits, Item, ItemView, INLINE_MAX};

use crate::mutation::{FlushSpec, ItemState, Mutation, MutationStream, Op};
use crate::stats::Stats;
use crate::version::{self, Hlc, Version};
use bytes::Bytes;
use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use item::NewItem;
use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use table::{Edit, Sweep, Table};

/// How many dirty items (not yet applied by the backing) one eviction pass may
/// skip before giving up; the next write tries again.
const DIRTY_SKIP_LIMIT: usize = 64;

/// Buckets one step of the eviction or reaper hand examines under a shard's
/// write lock (a few microseconds of lock hold).
const SWEEP_STEP: usize = 128;

/// Sweep steps one write may spend evicting (at most 4096 buckets, ~0.1-0.3 ms
/// of cache misses). Right after the table fills, every item still has its
/// CLOCK bit set and the hand must pass them all once before it evicts; with
/// millions of items that pass is spread over many writes instead of stalling
/// one, and memory overshoots the limit by at most a few thousand items
/// meanwhile.
const EVICT_SWEEPS_PER_CALL: usize = 32;

/// Bytes charged per item on top of key and value: the 40-byte header, the
/// allocator's chunk header and rounding (~16), and the index slot (an
/// 8-byte pointer and a control byte, at 45-87 % load).
pub const ITEM_OVERHEAD: usize = 72;

/// Extra charge of a value kept outside the item block (above [`INLINE_MAX`]):
/// its `Bytes` handle and the second allocation's header.
const EXTERNAL_OVERHEAD: usize = 48;

/// Why a write was refused by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Memory is full and eviction is disabled (`-M`), or the item alone exceeds the limit.
    #[error("out of memory storing object")]
    NoMemory,
}

/// What a [`Store::modify`] closure decides.
#[derive(Debug)]
pub enum Change {
    /// Leave the key as it is.
    Keep,
    /// Write this item (its sequence number and timestamps are filled in by the store).
    Put(ItemState, Op),
    /// Write a new version *in place* of the live item, published as a store:
    /// memcached rewrites an incr/decr result that still fits into the same item,
    /// so its fetched bit and recency survive (unlike a `set`, which makes a new item).
    Rewrite(ItemState),
    /// Delete the key (a client delete).
    Remove,
}

/// Result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(ItemView),
    Miss,
    /// The key existed but had expired (counted as `get_expired`).
    Expired,
    /// The key existed but was invalidated by `flush_all` (`get_flushed`).
    Flushed,
}

/// Why [`Store::read`] found no live item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    Miss,
    /// The key existed but had expired (counted as `get_expired`).
    Expired,
    /// The key existed but was invalidated by `flush_all` (`get_flushed`).
    Flushed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dead {
    Expired,
    Flushed,
    /// A deleted key remembered for the conflict rule: a plain miss.
    Tombstone,
}

impl From<Dead> for Missed {
    fn from(d: Dead) -> Self {
        match d {
            Dead::Expired => Missed::Expired,
            Dead::Flushed => Missed::Flushed,
            Dead::Tombstone => Missed::Miss,
        }
    }
}

/// What [`Store::apply_remote`] did with a twin's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The record was newer than what the key held, and now is its state.
    Applied,
    /// The key holds a newer version: the record lost the conflict rule.
    Stale,
    /// The key already holds exactly this version (a record delivered twice).
    Duplicate,
    /// No room for the item (`-M` and memory full, or larger than `-m`).
    NoMemory,
}

/// Where [`Store::scan`] resumes: a RAM shard and bucket, then (when RAM does
/// not hold the whole persisted data set) the last key visited on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanCursor {
    pub shard: usize,
    pub bucket: usize,
    /// Some: the disk phase, resuming after this key (empty: from the first).
    pub disk: Option<Bytes>,
}

/// Tombstone bookkeeping, for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TombstoneStats {
    pub count: usize,
    pub bytes: usize,
    /// The highest version of a tombstone (or expired item) forgotten so far: a
    /// twin resuming from below it cannot be caught up by a version scan.
    pub purge_watermark: u64,
}

/// What a read-through found.
enum Fetched {
    Live(Item),
    Dead(Dead),
    Absent,
}

/// Result of [`Store::warm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    Loaded,
    /// Expired or flushed: not loaded (the caller purges it from disk).
    Dead,
    /// RAM is full: left on disk, read through on demand.
    NoRoom,
}

/// Store configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Memory limit in bytes (`-m`).
    pub limit: usize,
    /// Evict cold items when full (false with `-M`).
    pub evict: bool,
    /// Hand out CAS values (false with `-C`: every CAS is 0).
    pub use_cas: bool,
    /// This node's id, the low bits of every version it stamps (1..=4095).
    pub node_id: u16,
    /// Keep tombstones for deleted and expired keys (on when a twin is configured).
    pub tombstones: bool,
    /// Seconds a tombstone is kept at least (`--tombstone-ttl`).
    pub tombstone_ttl: u32,
    /// Versions follow the system clock (always, but in unit tests with a
    /// frozen engine clock, whose versions then depend on nothing else).
    pub wall_clock: bool,
}

impl StoreConfig {
    /// A standalone store: no tombstones, node id 1.
    pub fn standalone(limit: usize, evict: bool, use_cas: bool) -> Self {
        StoreConfig {
            limit,
            evict,
            use_cas,
            node_id: 1,
            tombstones: false,
            tombstone_ttl: 600,
            wall_clock: true,
        }
    }
}

/// The flush state: a ceiling already in force, and the latest flush (which
/// may be delayed). Written under `flush_lock`, read lock-free.
#[derive(Default)]
struct FlushCell {
    hidden: AtomicU64,
    at: AtomicU32,
    ceiling: AtomicU64,
    version: AtomicU64,
}

/// A hand walking the table shard by shard, bucket by bucket (eviction's
/// CLOCK hand, and the reaper's). Updated without a lock: two threads racing
/// on it examine a few buckets twice, which is harmless.
struct Hand {
    shard: AtomicUsize,
    at: Box<[AtomicUsize]>,
}

impl Hand {
    fn new(shards: usize) -> Self {
        Hand {
            shard: AtomicUsize::new(0),
            at: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Where to look next: (shard, bucket).
    fn position(&self) -> (usize, usize) {
        let s = self.shard.load(Ordering::Relaxed) % self.at.len().max(1);
        (s, self.at[s].load(Ordering::Relaxed))
    }

    fn advance(&self, shard: usize, next: usize, wrapped: bool) {
        self.at[shard].store(next, Ordering::Relaxed);
        if wrapped {
            self.shard
                .store((shard + 1) % self.at.len().max(1), Ordering::Relaxed);
        }
    }
}

pub struct Store {
    table: Table,
    /// The two counters every write updates, each on a cache line of its own:
    /// next to the read-mostly fields (limit, flush state) they made every
    /// write invalidate the line every read on the other cores needs.
    used: CachePadded<AtomicUsize>,
    cfg: StoreConfig,
    limit: AtomicUsize,
    evict_hand: Hand,
    reap_hand: Hand,
    hlc: Hlc,
    flush: FlushCell,
    flush_lock: Mutex<()>,
    tombstones: AtomicUsize,
    tombstone_bytes: AtomicUsize,
    purge_watermark: AtomicU64,
    stream: Arc<MutationStream>,
    stats: Arc<Stats>,
    backing: OnceLock<Arc<dyn Backing>>,
    /// RAM holds every live persisted item, so a miss needs no disk lookup.
    complete: AtomicBool,
    /// Keys removed from RAM (delete, expiry) whose removal the backing has not
    /// applied yet: key -> sequence number of the removal record.
    unsettled: DashMap<Bytes, u64, RandomState>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("items", &self.table.len())
            .field("used", &self.used())
            .finish()
    }
}

/// A write (`Ok((state, op, in_place))`) or the other changes (`Err`).
fn split(change: Change) -> Result<(ItemState, Op, bool), Change> {
    match change {
        Change::Put(state, op) => Ok((state, op, false)),
        Change::Rewrite(state) => Ok((state, Op::Store, true)),
        other => Err(other),
    }
}

/// Bytes charged against `-m` for an item with this key and value length.
#[inline]
pub fn charge(key_len: usize, value_len: usize) -> usize {
    let external = if value_len > INLINE_MAX {
        EXTERNAL_OVERHEAD
    } else {
        0
    };
    key_len + value_len + ITEM_OVERHEAD + external
}

#[inline]
fn charge_of(item: &Item) -> usize {
    charge(item.key().len(), item.value().len())
}

/// What [`Store::modify`] returns from under the lock.
type Modified<R> = Result<(R, u64), StoreError>;

impl Store {
    pub fn new(cfg: StoreConfig, stream: Arc<MutationStream>, stats: Arc<Stats>) -> Self {
        let hlc = Hlc::new(cfg.node_id).unwrap_or_else(|e| {
            tracing::error!("{e}; using node id 1");
            Hlc::new(1).unwrap_or_else(|_| unreachable!("1 is a valid node id"))
        });
        let table = Table::new();
        let shards = table.shard_count();
        Store {
            table,
            used: CachePadded::new(AtomicUsize::new(0)),
            limit: AtomicUsize::new(cfg.limit),
            cfg,
            evict_hand: Hand::new(shards),
            reap_hand: Hand::new(shards),
            hlc,
            flush: FlushCell::default(),
            flush_lock: Mutex::new(()),
            tombstones: AtomicUsize::new(0),
            tombstone_bytes: AtomicUsize::new(0),
            purge_watermark: AtomicU64::new(0),
            stream,
            stats,
            backing: OnceLock::new(),
            complete: AtomicBool::new(true),
            unsettled: DashMap::with_hasher(RandomState::new()),
        }
    }

    /// Install the persisted data set RAM caches (once, before serving).
    /// `complete` says whether RAM already holds all of it.
    pub fn set_backing(&self, backing: Arc<dyn Backing>, complete: bool) {
        self.complete.store(complete, Ordering::SeqCst);
        if self.backing.set(backing).is_err() {
            tracing::warn!("store backing installed twice; keeping the first");
        }
    }

    pub fn backing(&self) -> Option<&Arc<dyn Backing>> {
        self.backing.get()
    }

    /// Whether a miss in RAM has to look at the backing.
    #[inline]
    fn reads_through(&self) -> bool {
        self.backing.get().is_some() && !self.complete.load(Ordering::SeqCst)
    }

    /// Whether every live persisted item is in RAM (no read-through needed).
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// Removals not yet applied by the backing (for stats and tests).
    pub fn unsettled_len(&self) -> usize {
        self.unsettled.len()
    }

    pub fn stream(&self) -> &Arc<MutationStream> {
        &self.stream
    }

    /// Bytes charged for all items.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Change the memory limit at run time (`cache_memlimit`).
    pub fn set_limit(&self, limit: usize, now: u32) {
        self.limit.store(limit, Ordering::Relaxed);
        self.evict_if_needed(now);
    }

    /// Items in the table, tombstones not included (`curr_items`).
    pub fn len(&self) -> usize {
        self.table
            .len()
            .saturating_sub(self.tombstones.load(Ordering::Relaxed))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn use_cas(&self) -> bool {
        self.cfg.use_cas
    }

    /// The store's clock: its node id and the last version it stamped or saw.
    pub fn hlc(&self) -> &Hlc {
        &self.hlc
    }

    /// A fresh version for a write at `now` (the engine's clock, which decides
    /// expiry and delayed flushes). Call under the key's lock (inside a
    /// [`Store::modify`] closure) so versions of one key rise in table order.
    /// The clock part never runs behind `now`: in production the wall clock is
    /// ahead of the coarse `now` anyway; a clock frozen in tests makes versions
    /// deterministic.
    #[inline]
    pub fn next_version(&self, now: u32) -> u64 {
        let engine_ms = u64::from(now) * 1000;
        let wall = if self.cfg.wall_clock {
            version::now_ms().max(engine_ms)
        } else {
            engine_ms
        };
        self.hlc.next(wall).get()
    }

    /// The CAS token a value-changing write with version `version` shows:
    /// the version itself, or 0 with `-C`.
    #[inline]
    pub fn cas_for(&self, version: u64) -> u64 {
        if self.cfg.use_cas {
            version
        } else {
            0
        }
    }

    /// Make sure future versions are above `v` (loaded data, a twin's records).
    pub fn observe_version(&self, v: u64) {
        self.hlc.observe(Version::from_raw(v));
    }

    /// Tombstones held now, and the purge watermark.
    pub fn tombstone_stats(&self) -> TombstoneStats {
        TombstoneStats {
            count: self.tombstones.load(Ordering::Relaxed),
            bytes: self.tombstone_bytes.load(Ordering::Relaxed),
            purge_watermark: self.purge_watermark.load(Ordering::Relaxed),
        }
    }

    /// The current flush state (what persistence saves).
    pub fn flush_spec(&self) -> FlushSpec {
        FlushSpec {
            hidden: self.flush.hidden.load(Ordering::Acquire),
            at: self.flush.at.load(Ordering::Acquire),
            ceiling: self.flush.ceiling.load(Ordering::Acquire),
            version: self.flush.version.load(Ordering::Acquire),
        }
    }

    #[inline]
    fn dead(&self, item: &Item, now: u32) -> Option<Dead> {
        if item.is_tombstone() {
            return Some(Dead::Tombstone);
        }
        let exptime = item.exptime();
        if exptime != 0 && exptime <= now {
            return Some(Dead::Expired);
        }
        let v = item.version();
        if v <= self.flush.hidden.load(Ordering::Acquire) {
            return Some(Dead::Flushed);
        }
        let at = self.flush.at.load(Ordering::Acquire);
        if at != 0 && at <= now && v <= self.flush.ceiling.load(Ordering::Acquire) {
            return Some(Dead::Flushed);
        }
        None
    }

    /// Read a live item. `fetch` marks it as fetched (for meta `h`) and recently used;
    /// `bump` = false (meta `u`) leaves recency alone.
    pub fn get(&self, key: &[u8], now: u32, bump: bool) -> Lookup {
        match self.read(key, now, bump, ItemView::of) {
            Ok(view) => Lookup::Hit(view),
            Err(Missed::Miss) => Lookup::Miss,
            Err(Missed::Expired) => Lookup::Expired,
            Err(Missed::Flushed) => Lookup::Flushed,
        }
    }

    /// Read a live item in place: `f` runs under the shard's read lock and sees
    /// the item as it was before this read (then it is marked fetched and, with
    /// `bump`, recently used). `f` must not call back into the store. This is the
    /// hot read path: replies are encoded straight from the table, so a hit
    /// costs no refcount traffic on the value and no owned copy of the item.
    pub fn read<R>(
        &self,
        key: &[u8],
        now: u32,
        bump: bool,
        f: impl FnOnce(&Item) -> R,
    ) -> Result<R, Missed> {
        let mut f = Some(f);
        let found = self.table.read(key, |cur| {
            let item = cur?;
            Some(match self.dead(item, now) {
                None => {
                    let f = f.take()?;
                    let r = f(item);
                    if bump {
                        item.mark_accessed(now, true);
                    }
                    Ok(r)
                }
                Some(d) => Err(d),
            })
        });
        match (found, f) {
            (Some(Ok(r)), _) => Ok(r),
            (Some(Err(Dead::Tombstone)), _) => Err(Missed::Miss),
            (Some(Err(dead)), _) => {
                self.reclaim(key, now);
                Err(dead.into())
            }
            (None, Some(f)) => self.read_through(key, now, bump, f),
            (None, None) => Err(Missed::Miss),
        }
    }

    /// A miss in RAM: with a backing that RAM does not fully cover, look the
    /// key up on disk under its shard lock and re-insert it when live.
    fn read_through<R>(
        &self,
        key: &[u8],
        now: u32,
        bump: bool,
        f: impl FnOnce(&Item) -> R,
    ) -> Result<R, Missed> {
        if !self.reads_through() {
            return Err(Missed::Miss);
        }
        let mut cached = false;
        let (res, displaced) = self.table.update(key, |cur| match cur {
            // Inserted since our lookup: an ordinary read sees it.
            Some(item) => match self.dead(item, now) {
                None => {
                    let r = f(item);
                    if bump {
                        item.mark_accessed(now, true);
                    }
                    (Edit::Keep, Ok(r))
                }
                Some(_) => (Edit::Keep, Err(Missed::Miss)),
            },
            None => match self.fetch_persisted(key, now) {
                Fetched::Absent => (Edit::Keep, Err(Missed::Miss)),
                Fetched::Dead(d) => (Edit::Keep, Err(d.into())),
                Fetched::Live(item) => {
                    let r = f(&item);
                    if bump {
                        item.mark_accessed(now, true);
                    }
                    // With `-M` and a full cache it is served but not cached.
                    if self.reserve(charge_of(&item), 0).is_ok() {
                        cached = true;
                        (Edit::Put(item), Ok(r))
                    } else {
                        (Edit::Keep, Ok(r))
                    }
                }
            },
        });
        drop(displaced);
        if cached {
            self.evict_if_needed(now);
        }
        res
    }

    /// Under the key's shard lock, with the key absent from RAM: its live
    /// persisted version, if any. A dead one is reported (and an `Expire` is
    /// published so the writer purges it).
    fn fetch_persisted(&self, key: &[u8], now: u32) -> Fetched {
        if !self.reads_through() {
            return Fetched::Absent;
        }
        let Some(backing) = self.backing.get() else {
            return Fetched::Absent;
        };
        let applied = backing.applied_seq();
        if let Some(removed_at) = self.unsettled.get(key).map(|r| *r) {
            if removed_at > applied {
                // Deleted or expired here; the disk does not know yet.
                return Fetched::Absent;
            }
            self.unsettled.remove_if(key, |_, s| *s <= applied);
        }
        let p = match backing.fetch(key) {
            Ok(Some(p)) => p,
            Ok(None) => return Fetched::Absent,
            Err(e) => {
                self.stats.bump(|c| &c.store_io_error);
                tracing::error!("read-through of a key failed, answering a miss: {e}");
                return Fetched::Absent;
            }
        };
        let item = Self::persisted_item(key, p, now);
        match self.dead(&item, now) {
            None => Fetched::Live(item),
            // A persisted tombstone stays on disk until its purge time.
            Some(Dead::Tombstone) => Fetched::Dead(Dead::Tombstone),
            Some(d) => {
                self.removed(key, Op::Expire, item.version(), false);
                Fetched::Dead(d)
            }
        }
    }

    /// Reclaim `key` if it is dead (see [`Store::bury`]).
    fn reclaim(&self, key: &[u8], now: u32) {
        let (buried, gone) = self.table.update(key, |cur| match cur {
            Some(item) => match self.dead(item, now) {
                Some(d) if d != Dead::Tombstone => (self.bury(key, item, d, now), true),
                _ => (Edit::Keep, false),
            },
            None => (Edit::Keep, false),
        });
        if let Some(item) = gone {
            self.gone(&item);
            if buried && !item.has(Bits::FETCHED) {
                self.stats.bump(|c| &c.expired_unfetched);
            }
        }
        if buried {
            self.stats.bump(|c| &c.reclaimed);
        }
    }

    /// What becomes of a dead item (expired or flushed, not a tombstone) found
    /// under its shard lock: an `Expire` record is published and the item goes,
    /// or, with tombstones on and the item expired, a tombstone with the item's
    /// version takes its place (so a late older write from the twin still
    /// loses to the write that expired). A flushed key needs none: the flush's
    /// ceiling already makes every older write dead on arrival.
    fn bury(&self, key: &[u8], item: &Item, dead: Dead, now: u32) -> Edit {
        let version = item.version();
        if self.cfg.tombstones && dead == Dead::Expired {
            let (t, _) = self.entomb(key, Op::Expire, version, false, now);
            // A tombstone is never larger than the item it replaces.
            let _ = self.reserve(charge_of(&t), charge_of(item));
            return Edit::Put(t);
        }
        self.removed(key, Op::Expire, version, false);
        self.uncharge(item);
        Edit::Remove
    }

    /// Turn `key` into a tombstone, under its shard lock: publish the `op`
    /// (`Delete` or `Expire`) record carrying the tombstone as its item, so
    /// persistence keeps it too, and build it: no value, the delete's (or the
    /// expired write's) version, and its purge time where an item keeps its
    /// expiry. The caller charges it. Returns it and the record's number.
    fn entomb(&self, key: &[u8], op: Op, version: u64, remote: bool, now: u32) -> (Item, u64) {
        let state = ItemState {
            value: Bytes::new(),
            flags: 0,
            exptime: now.saturating_add(self.cfg.tombstone_ttl.max(1)),
            cas: 0,
            version,
            bits: Bits::TOMBSTONE,
        };
        let seq = self.publish_removal(key, op, version, remote, Some(state.clone()));
        (self.tombstone_item(key, state, seq, now), seq)
    }

    /// Build a tombstone item and count it.
    fn tombstone_item(&self, key: &[u8], state: ItemState, seq: u64, now: u32) -> Item {
        let t = Item::new(NewItem {
            key,
            state,
            seq,
            now,
        });
        self.tombstones.fetch_add(1, Ordering::Relaxed);
        self.tombstone_bytes
            .fetch_add(charge_of(&t), Ordering::Relaxed);
        t
    }

    /// Bookkeeping for an item that left the table (replaced or removed).
    fn gone(&self, item: &Item) {
        if item.is_tombstone() {
            self.tombstones.fetch_sub(1, Ordering::Relaxed);
            self.tombstone_bytes
                .fetch_sub(charge_of(item), Ordering::Relaxed);
        }
    }

    /// A tombstone (or an expired item that would have become one) is
    /// forgotten: versions up to its own can no longer be told apart from
    /// "never written" by a scan.
    fn forgot(&self, version: u64) {
        self.purge_watermark.fetch_max(version, Ordering::Relaxed);
    }

    /// Publish why `key` leaves the table (or becomes a tombstone). Must be
    /// called with the key's shard lock held, before the entry changes, so the
    /// record takes its place in per-key order and a concurrent read-through
    /// sees the removal as unsettled.
    fn removed(&self, key: &[u8], op: Op, version: u64, remote: bool) -> u64 {
        self.publish_removal(key, op, version, remote, None)
    }

    /// [`Store::removed`], with the tombstone that takes the key's place.
    fn publish_removal(
        &self,
        key: &[u8],
        op: Op,
        version: u64,
        remote: bool,
        tombstone: Option<ItemState>,
    ) -> u64 {
        let seq = self.stream.publish_from(remote, |seq| Mutation {
            seq,
            op,
            key: Bytes::copy_from_slice(key),
            item: tombstone,
            version,
            remote,
            flush: None,
        });
        if matches!(op, Op::Delete | Op::Expire) && self.backing.get().is_some() {
            self.unsettled.insert(Bytes::copy_from_slice(key), seq);
        }
        seq
    }

    /// Give back the memory of an item that leaves the table.
    fn uncharge(&self, item: &Item) {
        self.used.fetch_sub(charge_of(item), Ordering::Relaxed);
    }

    /// Forget unsettled removals the backing has applied (housekeeping).
    pub fn settle(&self) {
        if let Some(b) = self.backing.get() {
            let applied = b.applied_seq();
            self.unsettled.retain(|_, s| *s > applied);
        }
    }

    /// Run `f` on the key's current live item (or `None`) under the shard lock and
    /// apply the [`Change`] it returns. Returns `f`'s result and the sequence
    /// number of the published mutation (0 when nothing changed).
    ///
    /// One hash, one write lock, and no allocation besides the new item (whose
    /// block holds the key). A key absent from RAM is looked up in the backing
    /// (read-through) while its slot is locked.
    pub fn modify<R>(
        &self,
        key: &[u8],
        now: u32,
        f: impl FnOnce(Option<&Item>) -> (Change, R),
    ) -> Result<(R, u64), StoreError> {
        let (res, displaced) = self.table.update(key, |cur| match cur {
            Some(item) => self.apply_occupied(key, item, now, f),
            None => self.apply_absent(key, now, f),
        });
        // The replaced or removed item is freed here, outside the lock.
        if let Some(old) = displaced {
            self.gone(&old);
        }
        let done = res?;
        self.evict_if_needed(now);
        Ok(done)
    }

    /// Run `f` on the item stored at `key` (live, or dead and so shown as `None`)
    /// and decide the edit, under the shard lock the caller holds. Removals and
    /// writes are accounted and published here.
    fn apply_occupied<R>(
        &self,
        key: &[u8],
        item: &Item,
        now: u32,
        f: impl FnOnce(Option<&Item>) -> (Change, R),
    ) -> (Edit, Modified<R>) {
        let dead = self.dead(item, now);
        let (change, r) = f(if dead.is_none() { Some(item) } else { None });
        match (split(change), dead) {
            (Err(Change::Remove), None) => {
                let (edit, seq) = self.delete_live(key, item, now);
                (edit, Ok((r, seq)))
            }
            (Err(_), None) | (Err(_), Some(Dead::Tombstone)) => (Edit::Keep, Ok((r, 0))),
            // The command saw no item; the dead one is reclaimed on the way.
            (Err(_), Some(d)) => {
                let edit = self.bury(key, item, d, now);
                self.stats.bump(|c| &c.reclaimed);
                (edit, Ok((r, 0)))
            }
            (Ok((state, op, in_place)), _) => {
                let live = if dead.is_none() { Some(item) } else { None };
                match self.new_version(key, live, charge_of(item), state, op, in_place, now) {
                    Ok((next, seq)) => {
                        if matches!(dead, Some(Dead::Expired | Dead::Flushed)) {
                            self.stats.bump(|c| &c.reclaimed);
                        }
                        (Edit::Put(next), Ok((r, seq)))
                    }
                    Err(e) => (Edit::Keep, Err(e)),
                }
            }
        }
    }

    /// A client deletes a live item: a `Delete` record with a new version, and
    /// a tombstone in its place when tombstones are on. Returns the edit and
    /// the record's sequence number.
    fn delete_live(&self, key: &[u8], item: &Item, now: u32) -> (Edit, u64) {
        let version = self.next_version(now);
        // Published under the lock, before the entry changes.
        if self.cfg.tombstones {
            let (t, seq) = self.entomb(key, Op::Delete, version, false, now);
            let _ = self.reserve(charge_of(&t), charge_of(item));
            return (Edit::Put(t), seq);
        }
        let seq = self.removed(key, Op::Delete, version, false);
        self.uncharge(item);
        (Edit::Remove, seq)
    }

    /// [`Store::modify`] for a key not in RAM: with a backing, the command sees
    /// the persisted version exactly as if it were in RAM.
    fn apply_absent<R>(
        &self,
        key: &[u8],
        now: u32,
        f: impl FnOnce(Option<&Item>) -> (Change, R),
    ) -> (Edit, Modified<R>) {
        let disk = match self.fetch_persisted(key, now) {
            Fetched::Live(disk) => Some(disk),
            Fetched::Dead(_) | Fetched::Absent => None,
        };
        let (change, r) = f(disk.as_ref());
        match (split(change), disk) {
            (Err(Change::Remove), Some(_)) => {
                let version = self.next_version(now);
                if self.cfg.tombstones {
                    let (t, seq) = self.entomb(key, Op::Delete, version, false, now);
                    if self.reserve(charge_of(&t), 0).is_ok() {
                        return (Edit::Put(t), Ok((r, seq)));
                    }
                    // No room in RAM: the tombstone is on its way to disk.
                    self.gone(&t);
                    return (Edit::Keep, Ok((r, seq)));
                }
                let seq = self.removed(key, Op::Delete, version, false);
                (Edit::Keep, Ok((r, seq)))
            }
            (Err(_), None) => (Edit::Keep, Ok((r, 0))),
            // Read by the command and left alone: cache it, memory allowing.
            (Err(_keep), Some(disk)) => match self.reserve(charge_of(&disk), 0) {
                Ok(()) => (Edit::Put(disk), Ok((r, 0))),
                Err(_) => (Edit::Keep, Ok((r, 0))),
            },
            (Ok((state, op, in_place)), disk) => {
                match self.new_version(key, disk.as_ref(), 0, state, op, in_place, now) {
                    Ok((next, seq)) => (Edit::Put(next), Ok((r, seq))),
                    Err(e) => (Edit::Keep, Err(e)),
                }
            }
        }
    }

    /// The item a write makes, under the key's shard lock: stamp it (unless
    /// the command already did), charge it in place of `old_charge`, publish
    /// it, and build it. `prev` is the live version the command saw (in RAM or
    /// on disk): a touch or in-place rewrite keeps its fetched bit.
    #[allow(clippy::too_many_arguments)]
    fn new_version(
        &self,
        key: &[u8],
        prev: Option<&Item>,
        old_charge: usize,
        mut state: ItemState,
        op: Op,
        in_place: bool,
        now: u32,
    ) -> Result<(Item, u64), StoreError> {
        self.reserve(charge(key.len(), state.value.len()), old_charge)?;
        if state.version == 0 {
            state.version = self.next_version(now);
        }
        let seq = self.publish_put(key, &state, op, false);
        let next = Item::new(NewItem {
            key,
            state,
            seq,
            now,
        });
        if let Some(p) = prev {
            if op == Op::Touch || in_place {
                next.mark_accessed(now, p.has(Bits::FETCHED));
            }
        }
        Ok((next, seq))
    }

    fn publish_put(&self, key: &[u8], state: &ItemState, op: Op, remote: bool) -> u64 {
        self.stream.publish_from(remote, |seq| Mutation {
            seq,
            op,
            key: Bytes::copy_from_slice(key),
            item: Some(state.clone()),
            version: state.version,
            remote,
            flush: None,
        })
    }

    /// Charge `new` bytes in place of `old`, refusing when eviction is off and
    /// the limit would be exceeded, or when the item alone exceeds the limit.
    fn reserve(&self, new: usize, old: usize) -> Result<(), StoreError> {
        let limit = self.limit();
        if new > limit {
            self.stats.bump(|c| &c.store_no_memory);
            return Err(StoreError::NoMemory);
        }
        if new > old {
            let grow = new - old;
            if !self.cfg.evict {
                let mut cur = self.used.load(Ordering::Relaxed);
                loop {
                    if cur + grow > limit {
                        self.stats.bump(|c| &c.store_no_memory);
                        return Err(StoreError::NoMemory);
                    }
                    match self.used.compare_exchange_weak(
                        cur,
                        cur + grow,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Ok(()),
                        Err(actual) => cur = actual,
                    }
                }
            }
            self.used.fetch_add(grow, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Evict cold items (CLOCK) until usage is under the limit, or until this
    /// call's share of the work ([`EVICT_SWEEPS_PER_CALL`]) is done. Dead items
    /// found on the way are reclaimed instead. The hand moves [`SWEEP_STEP`]
    /// buckets per lock acquisition, one shard at a time, so it never holds two.
    fn evict_if_needed(&self, now: u32) {
        if !self.cfg.evict || self.used() <= self.limit() {
            return;
        }
        let backing = self.backing.get();
        let mut dirty_skips = 0;
        let mut out = Vec::new();
        for _ in 0..EVICT_SWEEPS_PER_CALL {
            if self.used() <= self.limit() || dirty_skips >= DIRTY_SKIP_LIMIT {
                break;
            }
            let (shard, at) = self.evict_hand.position();
            let (next, wrapped) = self.table.sweep(shard, at, SWEEP_STEP, &mut out, |it| {
                if self.used() <= self.limit() || dirty_skips >= DIRTY_SKIP_LIMIT {
                    return Sweep::Stop;
                }
                // Tombstones go first, whatever their CLOCK bit: losing one
                // risks a resurrection only in a rare race, losing a live
                // session logs a user out.
                if it.is_tombstone() {
                    self.forgot(it.version());
                    self.uncharge(it);
                    return Sweep::Remove;
                }
                if self.dead(it, now).is_some() {
                    self.removed(it.key(), Op::Expire, it.version(), false);
                    if self.cfg.tombstones {
                        self.forgot(it.version());
                    }
                    self.uncharge(it);
                    self.stats.bump(|c| &c.reclaimed);
                    return Sweep::Remove;
                }
                if it.take_accessed() {
                    return Sweep::Keep;
                }
                if let Some(b) = backing {
                    if it.seq() > b.applied_seq() {
                        // Its latest version is not on disk yet: evicting it
                        // now would let a read-through return an older one.
                        dirty_skips += 1;
                        return Sweep::Keep;
                    }
                    self.complete.store(false, Ordering::SeqCst);
                }
                self.removed(it.key(), Op::Evict, it.version(), false);
                self.uncharge(it);
                self.stats.bump(|c| &c.evictions);
                if !it.has(Bits::FETCHED) {
                    self.stats.bump(|c| &c.evicted_unfetched);
                }
                if it.last_access() + 60 > now {
                    self.stats.bump(|c| &c.evicted_active);
                }
                Sweep::Remove
            });
            self.evict_hand.advance(shard, next, wrapped);
            // Freed outside the shard lock.
            out.drain(..).for_each(|it| self.gone(&it));
        }
    }

    /// Examine about `max` items with the reaper's own hand and reclaim the
    /// dead ones. Returns how many were reclaimed. Called by the reaper thread.
    pub fn reap(&self, now: u32, max: usize) -> usize {
        self.settle();
        self.promote_flush(now);
        let mut reclaimed = 0;
        let mut examined = 0;
        let mut steps = max / SWEEP_STEP + 2 * self.table.shard_count() + 1;
        let mut out = Vec::new();
        let mut to_bury = Vec::new();
        while examined < max && steps > 0 {
            steps -= 1;
            let (shard, at) = self.reap_hand.position();
            let (next, wrapped) = self.table.sweep(shard, at, SWEEP_STEP, &mut out, |it| {
                examined += 1;
                match self.dead(it, now) {
                    None => Sweep::Keep,
                    // A tombstone keeps its purge time where items keep their expiry.
                    Some(Dead::Tombstone) if it.exptime() > now => Sweep::Keep,
                    Some(Dead::Tombstone) => {
                        self.forgot(it.version());
                        self.uncharge(it);
                        Sweep::Remove
                    }
                    // Becomes a tombstone: done under its own lock after the sweep.
                    Some(Dead::Expired) if self.cfg.tombstones => {
                        to_bury.push(Bytes::copy_from_slice(it.key()));
                        Sweep::Keep
                    }
                    Some(_) => {
                        self.removed(it.key(), Op::Expire, it.version(), false);
                        self.uncharge(it);
                        self.stats.bump(|c| &c.reclaimed);
                        if !it.has(Bits::FETCHED) {
                            self.stats.bump(|c| &c.expired_unfetched);
                        }
                        reclaimed += 1;
                        Sweep::Remove
                    }
                }
            });
            self.reap_hand.advance(shard, next, wrapped);
            out.drain(..).for_each(|it| self.gone(&it));
            for key in to_bury.drain(..) {
                self.reclaim(&key, now);
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// Logical `flush_all`: with `at <= now` everything stored so far becomes
    /// invisible at once; with a future `at`, items stored before `at` become
    /// invisible when the clock reaches it. Returns the record's sequence number.
    pub fn flush(&self, at: u32, now: u32) -> u64 {
        let _g = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.next_version(now);
        let (at, ceiling) = if at <= now {
            (0, version)
        } else {
            let second = Version::floor_for_millis(u64::from(at) * 1000).get();
            (at, second.saturating_sub(1))
        };
        let spec = self.install_flush(at, ceiling, version, now);
        self.stream.publish(|seq| Mutation {
            seq,
            op: Op::Flush,
            key: Bytes::new(),
            item: None,
            version,
            remote: false,
            flush: Some(spec),
        })
    }

    /// Make a flush (`at` = 0: immediate) the latest, under `flush_lock`.
    /// A new flush replaces a delayed one still pending, as in memcached.
    /// Returns the resulting state.
    fn install_flush(&self, at: u32, ceiling: u64, version: u64, now: u32) -> FlushSpec {
        let f = &self.flush;
        // A pending flush already due takes effect first, so the pair below
        // is only ever replaced while both `at`s lie in the future, where a
        // reader pairing an old `at` with the new ceiling (or the reverse)
        // hides nothing either way.
        self.promote_flush_locked(now);
        if at == 0 || at <= now {
            f.hidden.fetch_max(ceiling, Ordering::AcqRel);
            f.at.store(0, Ordering::Release);
            f.ceiling.store(0, Ordering::Release);
        } else {
            f.ceiling.store(ceiling, Ordering::Release);
            f.at.store(at, Ordering::Release);
        }
        f.version.fetch_max(version, Ordering::AcqRel);
        self.flush_spec()
    }

    /// A delayed flush whose time has come joins the ceiling in force.
    fn promote_flush(&self, now: u32) {
        let f = &self.flush;
        let at = f.at.load(Ordering::Acquire);
        if at == 0 || at > now {
            return;
        }
        let _g = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.promote_flush_locked(now);
    }

    fn promote_flush_locked(&self, now: u32) {
        let f = &self.flush;
        let at = f.at.load(Ordering::Acquire);
        if at != 0 && at <= now {
            // Raise the ceiling in force before the pending flush is cleared.
            f.hidden
                .fetch_max(f.ceiling.load(Ordering::Acquire), Ordering::AcqRel);
            f.at.store(0, Ordering::Release);
            f.ceiling.store(0, Ordering::Release);
        }
    }

    /// Install a flush state loaded from disk.
    pub fn apply_flush(&self, spec: FlushSpec) {
        let _g = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let f = &self.flush;
        f.hidden.fetch_max(spec.hidden, Ordering::AcqRel);
        f.ceiling.store(spec.ceiling, Ordering::Release);
        f.at.store(spec.at, Ordering::Release);
        f.version.fetch_max(spec.version, Ordering::AcqRel);
        self.observe_version(spec.version);
    }

    /// Insert a persisted item at warm restart, without publishing and without
    /// evicting anything: when RAM is full the item stays on disk only (and the
    /// store stops being `complete`). The caller restores the CAS counter and
    /// the stream's sequence number once, after loading.
    pub fn warm(&self, key: Bytes, p: Persisted, now: u32) -> Warm {
        let item = Item::new(NewItem {
            key: &key,
            state: p.state,
            seq: p.seq,
            now,
        });
        // A tombstone is kept until its purge time, while tombstones are on;
        // a standalone node purges the ones a twinned past left.
        let keep = match self.dead(&item, now) {
            None => true,
            Some(Dead::Tombstone) => self.cfg.tombstones && item.exptime() > now,
            Some(_) => false,
        };
        if !keep {
            return Warm::Dead;
        }
        let size = charge_of(&item);
        if self.used() + size > self.limit() {
            self.complete.store(false, Ordering::SeqCst);
            return Warm::NoRoom;
        }
        self.used.fetch_add(size, Ordering::Relaxed);
        if item.is_tombstone() {
            self.tombstones.fetch_add(1, Ordering::Relaxed);
            self.tombstone_bytes.fetch_add(size, Ordering::Relaxed);
        }
        let ((), old) = self.table.update(&key, |_| (Edit::Put(item), ()));
        if let Some(old) = old {
            self.uncharge(&old);
            self.gone(&old);
        }
        Warm::Loaded
    }

    /// Visit every live item in RAM (for snapshots). Items only on disk are not
    /// visited. Holds one shard's read lock at a time; `f` must not call back
    /// into the store.
    pub fn for_each_live(&self, now: u32, mut f: impl FnMut(&Item)) {
        self.table.for_each(|it| {
            if self.dead(it, now).is_none() {
                f(it)
            }
        });
    }

    /// Apply a record received from the twin, under the conflict rule: it
    /// becomes the key's state only if its version is above the version the
    /// key holds (a live item, a dead one not yet reclaimed, a tombstone, or
    /// the persisted one when RAM does not cover the disk). Applied records are
    /// published with `remote` set, so the disk keeps them and the twin link
    /// does not send them back. The clock always moves past the record.
    pub fn apply_remote(&self, m: &Mutation, now: u32) -> Applied {
        self.observe_version(m.version);
        match (m.op, &m.item, m.flush) {
            (Op::Store | Op::Touch, Some(state), _) => self.apply_remote_put(m, state, now),
            (Op::Delete, _, _) => self.apply_remote_delete(&m.key, m.version, now),
            (Op::Flush, _, Some(spec)) => self.apply_remote_flush(spec, m.version, now),
            // Malformed or never shipped (expiry, eviction): nothing to apply.
            _ => Applied::Stale,
        }
    }

    /// The version `key` holds when it is not in RAM: the persisted one when
    /// the backing may hold items RAM does not, else none (0).
    fn version_off_ram(&self, key: &[u8]) -> u64 {
        if !self.reads_through() {
            return 0;
        }
        match self.backing.get().map(|b| b.fetch(key)) {
            Some(Ok(Some(p))) => p.state.version,
            Some(Err(e)) => {
                self.stats.bump(|c| &c.store_io_error);
                tracing::error!("reading a key's persisted version failed: {e}");
                0
            }
            _ => 0,
        }
    }

    /// The conflict rule for a record with version `incoming` against what
    /// `cur` (or the disk) holds for `key`.
    fn judge(&self, key: &[u8], cur: Option<&Item>, incoming: u64) -> Option<Applied> {
        let current = match cur {
            Some(it) => it.version(),
            None => self.version_off_ram(key),
        };
        if incoming == current {
            Some(Applied::Duplicate)
        } else if !version::wins(Version::from_raw(incoming), Version::from_raw(current)) {
            Some(Applied::Stale)
        } else {
            None
        }
    }

    fn apply_remote_put(&self, m: &Mutation, state: &ItemState, now: u32) -> Applied {
        let key = &m.key[..];
        let (res, displaced) = self.table.update(key, |cur| {
            if let Some(verdict) = self.judge(key, cur, m.version) {
                return (Edit::Keep, verdict);
            }
            let mut state = state.clone();
            state.version = m.version;
            let old = cur.map_or(0, charge_of);
            if self
                .reserve(charge(key.len(), state.value.len()), old)
                .is_err()
            {
                return (Edit::Keep, Applied::NoMemory);
            }
            let seq = self.publish_put(key, &state, m.op, true);
            let item = Item::new(NewItem {
                key,
                state,
                seq,
                now,
            });
            (Edit::Put(item), Applied::Applied)
        });
        self.applied(res, displaced, now)
    }

    /// After a twin's record went through the table: bookkeeping for what it
    /// displaced, and eviction when it added memory.
    fn applied(&self, res: Applied, displaced: Option<Item>, now: u32) -> Applied {
        if let Some(old) = displaced {
            self.gone(&old);
        }
        if res == Applied::Applied {
            self.evict_if_needed(now);
        }
        res
    }

    fn apply_remote_delete(&self, key: &[u8], version: u64, now: u32) -> Applied {
        let (res, displaced) = self.table.update(key, |cur| {
            if let Some(verdict) = self.judge(key, cur, version) {
                return (Edit::Keep, verdict);
            }
            if self.cfg.tombstones {
                let (t, _) = self.entomb(key, Op::Delete, version, true, now);
                if self
                    .reserve(charge_of(&t), cur.map_or(0, charge_of))
                    .is_ok()
                {
                    return (Edit::Put(t), Applied::Applied);
                }
                // No room even for a tombstone (the disk still gets it): the
                // key is deleted all the same.
                self.gone(&t);
            } else {
                self.removed(key, Op::Delete, version, true);
            }
            match cur {
                Some(it) => {
                    self.uncharge(it);
                    (Edit::Remove, Applied::Applied)
                }
                None => (Edit::Keep, Applied::Applied),
            }
        });
        self.applied(res, displaced, now)
    }

    fn apply_remote_flush(&self, spec: FlushSpec, version: u64, now: u32) -> Applied {
        let _g = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.flush.version.load(Ordering::Acquire);
        if version == last {
            return Applied::Duplicate;
        }
        if version < last {
            return Applied::Stale;
        }
        // The twin's whole resulting state: the ceiling in force there, and
        // its latest (possibly delayed) flush.
        self.flush.hidden.fetch_max(spec.hidden, Ordering::AcqRel);
        let spec = self.install_flush(spec.at, spec.ceiling, version, now);
        self.stream.publish(|seq| Mutation {
            seq,
            op: Op::Flush,
            key: Bytes::new(),
            item: None,
            version,
            remote: true,
            flush: Some(spec),
        });
        Applied::Applied
    }

    /// The twin's catch-up scan: items and tombstones with a version above
    /// `floor`, as records (`Store` with the item, `Delete` for a tombstone;
    /// the current flush state first when it is newer than `floor`), about
    /// `max` per call. Resume from the returned cursor; `None` means
    /// everything has been visited. Flushed and expired items are skipped:
    /// the flush travels itself.
    ///
    /// First RAM, bucket by bucket; then, when RAM does not hold the whole
    /// persisted data set (`-m` smaller than it), every key on disk, shipped
    /// as it is *now*: from RAM if it is there, else from disk. A key that
    /// moves between RAM and disk while the scan runs (evicted, or read back)
    /// is therefore seen by one phase or the other; one held in both may be
    /// shipped twice, which the conflict rule makes harmless.
    pub fn scan(
        &self,
        from: ScanCursor,
        floor: u64,
        max: usize,
        now: u32,
    ) -> (Vec<Arc<Mutation>>, Option<ScanCursor>) {
        let mut out = Vec::new();
        let spec = self.flush_spec();
        if from == ScanCursor::default() && spec.version > floor {
            out.push(Arc::new(Mutation {
                seq: 0,
                op: Op::Flush,
                key: Bytes::new(),
                item: None,
                version: spec.version,
                remote: false,
                flush: Some(spec),
            }));
        }
        if let Some(after) = &from.disk {
            return self.scan_disk(after, floor, max, now, out);
        }
        let shards = self.table.shard_count();
        let mut at = from;
        while out.len() < max.max(1) && at.shard < shards {
            let next = self.table.scan(at.shard, at.bucket, SWEEP_STEP, |it| {
                if it.version() <= floor || self.dead(it, now) == Some(Dead::Flushed) {
                    return;
                }
                out.push(Arc::new(Self::record_of(it)));
            });
            at = match next {
                Some(bucket) => ScanCursor {
                    shard: at.shard,
                    bucket,
                    disk: None,
                },
                None => ScanCursor {
                    shard: at.shard + 1,
                    bucket: 0,
                    disk: None,
                },
            };
        }
        if at.shard < shards {
            return (out, Some(at));
        }
        // RAM is walked; the disk holds more only when RAM is incomplete.
        let disk = self.reads_through().then(|| ScanCursor {
            disk: Some(Bytes::new()),
            ..ScanCursor::default()
        });
        (out, disk)
    }

    /// How far a [`Store::scan`] at `c` is through RAM, in percent (100 once
    /// it walks the disk).
    pub fn scan_percent(&self, c: &ScanCursor) -> u8 {
        if c.disk.is_some() {
            return 100;
        }
        let shards = self.table.shard_count().max(1);
        let within = match self.table.buckets(c.shard) {
            0 => 0.0,
            b => c.bucket as f64 / b as f64,
        };
        let pct = (c.shard as f64 + within.min(1.0)) * 100.0 / shards as f64;
        pct.clamp(0.0, 100.0) as u8
    }

    /// The disk phase of [`Store::scan`]: persisted keys after `after`.
    fn scan_disk(
        &self,
        after: &Bytes,
        floor: u64,
        max: usize,
        now: u32,
        mut out: Vec<Arc<Mutation>>,
    ) -> (Vec<Arc<Mutation>>, Option<ScanCursor>) {
        let Some(backing) = self.backing.get() else {
            return (out, None);
        };
        let step = match backing.scan(after, floor, max.max(1)) {
            Ok(s) => s,
            Err(e) => {
                self.stats.bump(|c| &c.store_io_error);
                tracing::error!(
                    "the twin's catch-up scan cannot read the data set ({e}): items held only on \
                     disk after this point are not sent"
                );
                return (out, None);
            }
        };
        for (key, p) in step.items {
            if let Some(m) = self.current_record(&key, p, floor, now) {
                out.push(Arc::new(m));
            }
        }
        let next = step.next.map(|k| ScanCursor {
            disk: Some(k),
            ..ScanCursor::default()
        });
        (out, next)
    }

    /// The record for `key` as the store holds it now: RAM's item or
    /// tombstone when RAM has the key, else the persisted `p` (unless RAM
    /// removed it since, or it is dead). None when there is nothing newer
    /// than `floor` to ship.
    fn current_record(&self, key: &[u8], p: Persisted, floor: u64, now: u32) -> Option<Mutation> {
        let in_ram = self.table.read(key, |cur| {
            cur.map(|it| {
                (it.version() > floor && self.dead(it, now) != Some(Dead::Flushed))
                    .then(|| Self::record_of(it))
            })
        });
        if let Some(ram) = in_ram {
            return ram;
        }
        if let Some(removed_at) = self.unsettled.get(key).map(|r| *r) {
            if self
                .backing
                .get()
                .is_some_and(|b| removed_at > b.applied_seq())
            {
                return None;
            }
        }
        let item = Self::persisted_item(key, p, now);
        match self.dead(&item, now) {
            None | Some(Dead::Tombstone) if item.version() > floor => Some(Self::record_of(&item)),
            _ => None,
        }
    }

    /// A persisted item (or tombstone) back as a table item.
    fn persisted_item(key: &[u8], p: Persisted, now: u32) -> Item {
        Item::new(NewItem {
            key,
            state: p.state,
            seq: p.seq,
            now,
        })
    }

    /// An item (or tombstone) as the record that would recreate it.
    fn record_of(it: &Item) -> Mutation {
        let tomb = it.is_tombstone();
        Mutation {
            seq: it.seq(),
            op: if tomb { Op::Delete } else { Op::Store },
            key: Bytes::copy_from_slice(it.key()),
            item: (!tomb).then(|| it.state()),
            version: it.version(),
            remote: false,
            flush: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u32 = 1_800_000_000;

    fn store(limit: usize, evict: bool) -> Store {
        Store::new(
            StoreConfig::standalone(limit, evict, true),
            Arc::new(MutationStream::new()),
            Arc::new(Stats::new()),
        )
    }

    fn put(s: &Store, key: &str, value: &str, exptime: u32, now: u32) -> Result<u64, StoreError> {
        s.modify(key.as_bytes(), now, |_| {
            let version = s.next_version(now);
            (
                Change::Put(
                    ItemState {
                        value: Bytes::copy_from_slice(value.as_bytes()),
                        flags: 0,
                        exptime,
                        cas: s.cas_for(version),
                        version,
                        bits: 0,
                    },
                    Op::Store,
                ),
                (),
            )
        })
        .map(|(_, seq)| seq)
    }

    fn value(s: &Store, key: &str, now: u32) -> Option<String> {
        match s.get(key.as_bytes(), now, true) {
            Lookup::Hit(v) => Some(String::from_utf8_lossy(&v.value).into_owned()),
            _ => None,
        }
    }

    #[test]
    fn expiry_is_lazy_and_reaped() {
        let s = store(1 << 20, true);
        put(&s, "a", "1", NOW + 2, NOW).expect("put");
        put(&s, "b", "2", NOW + 2, NOW).expect("put");
        assert_eq!(value(&s, "a", NOW + 1).as_deref(), Some("1"));
        assert_eq!(s.get(b"a", NOW + 2, true), Lookup::Expired);
        assert_eq!(s.len(), 1);
        assert_eq!(s.reap(NOW + 2, 100), 1);
        assert_eq!(s.len(), 0);
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn eviction_keeps_usage_under_limit_and_prefers_recently_read() {
        let item = charge(4, 100);
        let s = store(item * 10, true);
        let v = "x".repeat(100);
        for i in 0..10 {
            put(&s, &format!("k{i:03}"), &v, 0, NOW).expect("put");
        }
        assert_eq!(s.used(), item * 10);
        // The first eviction clears every CLOCK bit (new items have theirs set)
        // and evicts one item.
        put(&s, "k010", &v, 0, NOW).expect("put");
        assert_eq!(s.len(), 10);
        assert_eq!(s.stats.snapshot().evictions, 1);
        // Read five survivors: they get a second chance, the unread do not.
        let read: Vec<String> = (0..11)
            .map(|i| format!("k{i:03}"))
            .filter(|k| value(&s, k, NOW).is_some())
            .take(5)
            .collect();
        assert_eq!(read.len(), 5);
        for i in 11..15 {
            put(&s, &format!("k{i:03}"), &v, 0, NOW).expect("put");
        }
        assert!(s.used() <= item * 10);
        assert_eq!(s.stats.snapshot().evictions, 5);
        for k in &read {
            assert!(value(&s, k, NOW).is_some(), "{k} was read and got evicted");
        }
        // The newest items have not been passed by the hand yet either.
        for i in 11..15 {
            assert!(value(&s, &format!("k{i:03}"), NOW).is_some());
        }
    }

    #[test]
    fn eviction_under_churn_stays_bounded_and_serves_new_items() {
        let item = charge(8, 100);
        let s = store(item * 500, true);
        let v = "y".repeat(100);
        for i in 0..20_000 {
            put(&s, &format!("c{i:07}"), &v, 0, NOW).expect("put");
            assert!(s.used() <= s.limit());
        }
        assert!(s.len() >= 490, "kept {}", s.len());
        assert!(value(&s, "c0019999", NOW).is_some());
        let mut sum = 0;
        s.for_each_live(NOW, |it| sum += charge_of(it));
        assert_eq!(sum, s.used());
    }

    #[test]
    fn no_evict_mode_refuses_instead() {
        let item = charge(2, 1);
        let s = store(item * 2, false);
        put(&s, "k0", "v", 0, NOW).expect("put");
        put(&s, "k1", "v", 0, NOW).expect("put");
        assert_eq!(put(&s, "k2", "v", 0, NOW), Err(StoreError::NoMemory));
        // Overwriting with the same size still works.
        put(&s, "k1", "w", 0, NOW).expect("overwrite");
        assert_eq!(s.used(), item * 2);
    }

    #[test]
    fn accounting_never_drifts() {
        let s = store(1 << 16, true);
        for round in 0..50u32 {
            for i in 0..40 {
                let key = format!("key{}", (i * 7 + round) % 60);
                match (i + round) % 4 {
                    0 => {
                        s.modify(key.as_bytes(), NOW, |_| (Change::Remove, ()))
                            .expect("remove");
                    }
                    1 => {
                        put(
                            &s,
                            &key,
                            &"v".repeat((i as usize * 13) % 700),
                            NOW + 1 + round % 3,
                            NOW + round % 5,
                        )
                        .expect("put");
                    }
                    _ => {
                        put(&s, &key, &"w".repeat((i as usize * 31) % 900), 0, NOW).expect("put");
                    }
                }
            }
            s.reap(NOW + round % 5, 10);
            let mut expect = 0;
            s.table.for_each(|it| expect += charge_of(it));
            assert_eq!(s.used(), expect, "round {round}");
            assert!(s.used() <= s.limit());
        }
    }

    #[test]
    fn flush_immediate_and_delayed() {
        let s = store(1 << 20, true);
        put(&s, "old", "1", 0, NOW).expect("put");
        s.flush(NOW, NOW);
        assert_eq!(s.get(b"old", NOW, true), Lookup::Flushed);
        put(&s, "new", "2", 0, NOW).expect("put");
        assert!(
            value(&s, "new", NOW).is_some(),
            "stored after the flush, same second"
        );

        s.flush(NOW + 2, NOW);
        put(&s, "before", "3", 0, NOW + 1).expect("put");
        assert!(value(&s, "before", NOW + 1).is_some());
        assert!(value(&s, "before", NOW + 2).is_none());
        put(&s, "after", "4", 0, NOW + 2).expect("put");
        assert!(value(&s, "after", NOW + 3).is_some());
    }

    #[test]
    fn first_eviction_pass_is_spread_over_writes() {
        let item = charge(8, 10);
        let n = 40_000;
        let s = store(item * n, true);
        for i in 0..n {
            put(&s, &format!("f{i:07}"), "0123456789", 0, NOW).expect("put");
        }
        // Every item has its CLOCK bit set: one write cannot pass them all.
        put(&s, "g0000000", "0123456789", 0, NOW).expect("put");
        assert!(s.used() > s.limit(), "one write swept the whole table");
        assert!(s.used() <= s.limit() + item);
        // Later writes carry on; the overshoot stays at a handful of items and
        // ends once the hand has cleared the bits and starts evicting.
        let mut writes = 0;
        while s.used() > s.limit() {
            writes += 1;
            assert!(writes < 100, "eviction never caught up");
            put(&s, &format!("g{writes:07}"), "0123456789", 0, NOW).expect("put");
            assert!(s.used() <= s.limit() + (writes + 1) * item);
        }
        assert!(s.stats.snapshot().evictions > 0);
    }

    #[test]
    fn reaper_hand_reclaims_expired_items_across_shards() {
        let s = store(1 << 30, true);
        for i in 0..5000 {
            let exp = if i % 2 == 0 { NOW + 5 } else { 0 };
            put(&s, &format!("r{i}"), "v", exp, NOW).expect("put");
        }
        let mut reclaimed = 0;
        for _ in 0..200 {
            reclaimed += s.reap(NOW + 5, 100);
        }
        assert_eq!(reclaimed, 2500);
        assert_eq!(s.len(), 2500);
        let expect: usize = (1..5000)
            .step_by(2)
            .map(|i| charge(format!("r{i}").len(), 1))
            .sum();
        assert_eq!(s.used(), expect);
        assert!(value(&s, "r1", NOW + 5).is_some());
        assert!(value(&s, "r0", NOW + 5).is_none());
    }

    #[test]
    fn large_values_are_charged_for_their_handle() {
        assert_eq!(charge(10, INLINE_MAX), 10 + INLINE_MAX + ITEM_OVERHEAD);
        assert_eq!(
            charge(10, INLINE_MAX + 1),
            10 + INLINE_MAX + 1 + ITEM_OVERHEAD + EXTERNAL_OVERHEAD
        );
        let s = store(1 << 20, true);
        put(&s, "big", &"b".repeat(5000), 0, NOW).expect("put");
        assert_eq!(s.used(), charge(3, 5000));
        assert_eq!(value(&s, "big", NOW).map(|v| v.len()), Some(5000));
    }

    fn twin_store(node: u16) -> Store {
        Store::new(
            StoreConfig {
                node_id: node,
                tombstones: true,
                tombstone_ttl: 600,
                ..StoreConfig::standalone(1 << 20, true, true)
            },
            Arc::new(MutationStream::new()),
            Arc::new(Stats::new()),
        )
    }

    /// A record as a twin would ship it.
    fn remote_put(key: &str, value: &str, version: u64) -> Mutation {
        Mutation {
            seq: 1,
            op: Op::Store,
            key: Bytes::copy_from_slice(key.as_bytes()),
            item: Some(ItemState {
                value: Bytes::copy_from_slice(value.as_bytes()),
                flags: 9,
                exptime: 0,
                cas: version,
                version,
                bits: 0,
            }),
            version,
            remote: false,
            flush: None,
        }
    }

    fn remote_delete(key: &str, version: u64) -> Mutation {
        Mutation {
            op: Op::Delete,
            item: None,
            ..remote_put(key, "", version)
        }
    }

    fn version_of(s: &Store, key: &str) -> u64 {
        let mut v = 0;
        s.table
            .read(key.as_bytes(), |it| v = it.map_or(0, |it| it.version()));
        v
    }

    #[test]
    fn writes_are_stamped_and_cas_is_the_version() {
        let s = twin_store(7);
        put(&s, "a", "1", 0, NOW).expect("put");
        let v = version_of(&s, "a");
        assert_eq!(Version::from_raw(v).node_of(), 7);
        match s.get(b"a", NOW, false) {
            Lookup::Hit(view) => assert_eq!(view.cas, v),
            other => panic!("{other:?}"),
        }
        put(&s, "a", "2", 0, NOW).expect("put");
        assert!(version_of(&s, "a") > v);
    }

    #[test]
    fn remote_records_apply_only_when_newer() {
        let s = twin_store(1);
        let base = Version::floor_for_millis(u64::from(NOW) * 1000 + 5000).get();
        let (older, newer) = (base | 2, (base + (1 << 12)) | 2);
        assert_eq!(
            s.apply_remote(&remote_put("k", "new", newer), NOW),
            Applied::Applied
        );
        assert_eq!(
            s.apply_remote(&remote_put("k", "new", newer), NOW),
            Applied::Duplicate
        );
        assert_eq!(
            s.apply_remote(&remote_put("k", "old", older), NOW),
            Applied::Stale
        );
        assert_eq!(value(&s, "k", NOW).as_deref(), Some("new"));
        assert!(
            s.hlc().last().get() >> 12 >= newer >> 12,
            "the clock moved past the record"
        );
        // A local write after it gets a higher version, and wins.
        put(&s, "k", "local", 0, NOW).expect("put");
        assert!(version_of(&s, "k") > newer);
    }

    #[test]
    fn applied_records_are_published_as_remote() {
        let stream = Arc::new(MutationStream::new());
        let sub = stream.subscribe(64, false);
        let s = Store::new(
            StoreConfig {
                tombstones: true,
                ..StoreConfig::standalone(1 << 20, true, true)
            },
            stream,
            Arc::new(Stats::new()),
        );
        let v = Version::floor_for_millis(u64::from(NOW) * 1000).get() | 2;
        s.apply_remote(&remote_put("k", "x", v), NOW);
        put(&s, "j", "y", 0, NOW).expect("put");
        let recs: Vec<_> = sub.rx.try_iter().collect();
        assert_eq!(recs.len(), 2);
        assert!(recs[0].remote && !recs[0].is_shipped(), "not sent back");
        assert_eq!(recs[0].version, v);
        assert!(!recs[1].remote && recs[1].is_shipped());
    }

    #[test]
    fn a_delete_leaves_a_tombstone_that_beats_late_older_writes() {
        let s = twin_store(1);
        put(&s, "sess", "data", 0, NOW).expect("put");
        let written = version_of(&s, "sess");
        s.modify(b"sess", NOW, |_| (Change::Remove, ()))
            .expect("delete");
        assert_eq!(s.get(b"sess", NOW, true), Lookup::Miss);
        assert_eq!(s.len(), 0, "tombstones are not items");
        assert_eq!(s.tombstone_stats().count, 1);
        assert_eq!(s.tombstone_stats().bytes, charge(4, 0));
        // The twin's write, made before the delete, arrives late: it loses.
        assert_eq!(
            s.apply_remote(&remote_put("sess", "stale", written + 1), NOW),
            Applied::Stale
        );
        assert_eq!(s.get(b"sess", NOW, true), Lookup::Miss);
        // A delete is a miss for every command, and a new write replaces it.
        let seen = s.modify(b"sess", NOW, |old| (Change::Keep, old.is_some()));
        assert!(!seen.expect("m").0);
        put(&s, "sess", "again", 0, NOW).expect("put");
        assert_eq!(value(&s, "sess", NOW).as_deref(), Some("again"));
        assert_eq!(s.tombstone_stats().count, 0);
        let mut sum = 0;
        s.table.for_each(|it| sum += charge_of(it));
        assert_eq!(sum, s.used());
    }

    #[test]
    fn a_remote_delete_of_an_unknown_key_still_leaves_a_tombstone() {
        let s = twin_store(1);
        let v = Version::floor_for_millis(u64::from(NOW) * 1000).get();
        assert_eq!(
            s.apply_remote(&remote_delete("gone", v | 3), NOW),
            Applied::Applied
        );
        assert_eq!(
            s.apply_remote(&remote_put("gone", "old", v | 2), NOW),
            Applied::Stale
        );
        assert_eq!(s.get(b"gone", NOW, true), Lookup::Miss);
        assert_eq!(s.tombstone_stats().count, 1);
    }

    #[test]
    fn expiry_leaves_a_tombstone_with_the_items_version_and_the_reaper_purges_it() {
        let s = twin_store(1);
        put(&s, "e", "v", NOW + 1, NOW).expect("put");
        let v = version_of(&s, "e");
        assert_eq!(s.get(b"e", NOW + 1, true), Lookup::Expired);
        assert_eq!(version_of(&s, "e"), v, "the tombstone keeps the version");
        assert_eq!(s.tombstone_stats().count, 1);
        assert_eq!(
            s.apply_remote(&remote_put("e", "older", v - 1), NOW + 1),
            Applied::Stale
        );
        // Purged once the tombstone TTL has passed, which raises the watermark.
        for _ in 0..50 {
            s.reap(NOW + 1 + 600, 10_000);
        }
        assert_eq!(s.tombstone_stats().count, 0);
        assert_eq!(s.tombstone_stats().purge_watermark, v);
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn reaper_turns_expired_items_into_tombstones_when_replicating() {
        let s = twin_store(1);
        for i in 0..300 {
            put(&s, &format!("x{i}"), "v", NOW + 1, NOW).expect("put");
        }
        let mut n = 0;
        for _ in 0..100 {
            n += s.reap(NOW + 2, 1000);
        }
        assert_eq!(n, 300);
        assert_eq!((s.len(), s.tombstone_stats().count), (0, 300));
        let expect: usize = (0..300).map(|i| charge(format!("x{i}").len(), 0)).sum();
        assert_eq!(s.used(), expect);
    }

    #[test]
    fn eviction_takes_tombstones_before_live_items() {
        let item = charge(4, 100);
        let s = Store::new(
            StoreConfig {
                tombstones: true,
                ..StoreConfig::standalone(item * 20, true, true)
            },
            Arc::new(MutationStream::new()),
            Arc::new(Stats::new()),
        );
        let v = "z".repeat(100);
        for i in 0..10 {
            put(&s, &format!("t{i:03}"), &v, 0, NOW).expect("put");
            s.modify(format!("t{i:03}").as_bytes(), NOW, |_| (Change::Remove, ()))
                .expect("rm");
        }
        for i in 0..19 {
            put(&s, &format!("l{i:03}"), &v, 0, NOW).expect("put");
        }
        assert_eq!(s.stats.snapshot().evictions, 0, "tombstones went first");
        assert_eq!(s.len(), 19);
        assert!(s.tombstone_stats().count < 10);
        assert!(s.tombstone_stats().purge_watermark > 0);
    }

    #[test]
    fn flushes_hide_by_version_and_apply_once_from_the_twin() {
        let a = twin_store(1);
        let b = twin_store(2);
        put(&a, "k", "1", 0, NOW).expect("put");
        let rec = a.apply_remote(&remote_put("r", "x", version_of(&a, "k") + 4096), NOW);
        assert_eq!(rec, Applied::Applied);
        a.flush(NOW, NOW);
        assert_eq!(a.get(b"k", NOW, true), Lookup::Flushed);
        assert_eq!(a.get(b"r", NOW, true), Lookup::Flushed);
        let spec = a.flush_spec();
        let flush = Mutation {
            seq: 9,
            op: Op::Flush,
            key: Bytes::new(),
            item: None,
            version: spec.version,
            remote: false,
            // As the link carries it: the resulting state.
            flush: Some(spec),
        };
        put(&b, "k", "old on b", 0, NOW).expect("put");
        assert_eq!(b.apply_remote(&flush, NOW), Applied::Applied);
        assert_eq!(b.apply_remote(&flush, NOW), Applied::Duplicate);
        assert_eq!(
            b.get(b"k", NOW, true),
            Lookup::Flushed,
            "written before the flush"
        );
        put(&b, "k", "new on b", 0, NOW).expect("put");
        assert_eq!(value(&b, "k", NOW).as_deref(), Some("new on b"));
        // A twin's record older than the flush is dead on arrival.
        let before = remote_put("old", "x", spec.hidden - 4096);
        b.apply_remote(&before, NOW);
        assert!(value(&b, "old", NOW).is_none());
    }

    #[test]
    fn scan_returns_items_and_tombstones_above_the_floor() {
        let s = twin_store(1);
        for i in 0..500 {
            put(&s, &format!("s{i}"), "v", 0, NOW).expect("put");
        }
        let floor = s.hlc().last().get();
        for i in 0..50 {
            put(&s, &format!("n{i}"), "w", 0, NOW).expect("put");
        }
        s.modify(b"s1", NOW, |_| (Change::Remove, ())).expect("rm");
        let mut got = Vec::new();
        let mut at = Some(ScanCursor::default());
        let mut calls = 0;
        let mut percent = 0;
        assert_eq!(s.scan_percent(&ScanCursor::default()), 0);
        while let Some(from) = at {
            calls += 1;
            assert!(calls < 10_000);
            let p = s.scan_percent(&from);
            assert!(
                p >= percent && p <= 100,
                "progress only grows: {percent} then {p}"
            );
            percent = p;
            let (recs, next) = s.scan(from, floor, 16, NOW);
            got.extend(recs);
            at = next;
        }
        assert!(
            calls > 2 && percent > 50,
            "{calls} calls, last at {percent} %"
        );
        assert_eq!(got.len(), 51);
        assert!(got.iter().all(|m| m.version > floor));
        let tomb: Vec<_> = got.iter().filter(|m| m.op == Op::Delete).collect();
        assert_eq!(tomb.len(), 1);
        assert_eq!(&tomb[0].key[..], b"s1");
        // Applying a scan to an empty twin reproduces the table.
        let t = twin_store(2);
        for m in &got {
            assert_eq!(t.apply_remote(m, NOW), Applied::Applied);
        }
        assert_eq!(t.len(), 50);
        assert_eq!(value(&t, "n7", NOW).as_deref(), Some("w"));
    }

    #[test]
    fn mutations_carry_resulting_state() {
        let stream = Arc::new(MutationStream::new());
        let sub = stream.subscribe(64, false);
        let s = Store::new(
            StoreConfig::standalone(1 << 20, true, true),
            stream,
            Arc::new(Stats::new()),
        );
        let seq = put(&s, "a", "hello", NOW + 10, NOW).expect("put");
        s.modify(b"a", NOW, |_| (Change::Remove, ())).expect("rm");
        let recs: Vec<_> = sub.rx.try_iter().collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].seq, seq);
        assert_eq!(recs[0].op, Op::Store);
        assert_eq!(recs[0].item.as_ref().map(|i| i.exptime), Some(NOW + 10));
        assert_eq!(recs[1].op, Op::Delete);
        assert_eq!(recs[1].key, Bytes::from_static(b"a"));
    }
}
