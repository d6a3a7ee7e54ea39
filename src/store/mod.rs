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
//! * **logical `flush_all`**: a [`FlushSpec`] compared on access, never a scan.
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

pub use backing::{Backing, BackingError, Persisted};
pub use item::{Bits, Item, ItemView, INLINE_MAX};

use crate::mutation::{FlushSpec, ItemState, Mutation, MutationStream, Op};
use crate::stats::Stats;
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
}

impl From<Dead> for Missed {
    fn from(d: Dead) -> Self {
        match d {
            Dead::Expired => Missed::Expired,
            Dead::Flushed => Missed::Flushed,
        }
    }
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
    cas: CachePadded<AtomicU64>,
    flush_at: AtomicU32,
    flush_seq: AtomicU64,
    flush_lock: Mutex<()>,
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
        let table = Table::new();
        let shards = table.shard_count();
        Store {
            table,
            used: CachePadded::new(AtomicUsize::new(0)),
            limit: AtomicUsize::new(cfg.limit),
            cfg,
            evict_hand: Hand::new(shards),
            reap_hand: Hand::new(shards),
            cas: CachePadded::new(AtomicU64::new(0)),
            flush_at: AtomicU32::new(0),
            flush_seq: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
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

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    pub fn use_cas(&self) -> bool {
        self.cfg.use_cas
    }

    /// A fresh CAS value (0 when CAS is disabled).
    #[inline]
    pub fn next_cas(&self) -> u64 {
        if self.cfg.use_cas {
            self.cas.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        }
    }

    /// Make sure future CAS values are above `cas` (client-chosen CAS, loaded data).
    pub fn observe_cas(&self, cas: u64) {
        self.cas.fetch_max(cas, Ordering::Relaxed);
    }

    /// The current flush state.
    pub fn flush_spec(&self) -> FlushSpec {
        FlushSpec {
            at: self.flush_at.load(Ordering::Acquire),
            seq_ceiling: self.flush_seq.load(Ordering::Acquire),
        }
    }

    #[inline]
    fn dead(&self, item: &Item, now: u32) -> Option<Dead> {
        let exptime = item.exptime();
        if exptime != 0 && exptime <= now {
            return Some(Dead::Expired);
        }
        if item.seq() <= self.flush_seq.load(Ordering::Acquire) {
            return Some(Dead::Flushed);
        }
        let at = self.flush_at.load(Ordering::Acquire);
        if at != 0 && at <= now && item.stored_at() < at {
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
        let item = Item::new(NewItem {
            key,
            state: p.state,
            seq: p.seq,
            now,
            stored_at: p.stored_at,
        });
        match self.dead(&item, now) {
            None => Fetched::Live(item),
            Some(d) => {
                self.removed(key, Op::Expire);
                Fetched::Dead(d)
            }
        }
    }

    /// Remove `key` if it is dead, publishing an `Expire` record.
    fn reclaim(&self, key: &[u8], now: u32) {
        let ((), gone) = self.table.update(key, |cur| match cur {
            Some(item) if self.dead(item, now).is_some() => {
                self.removed(key, Op::Expire);
                self.uncharge(item);
                (Edit::Remove, ())
            }
            _ => (Edit::Keep, ()),
        });
        if let Some(item) = gone {
            self.stats.bump(|c| &c.reclaimed);
            if !item.has(Bits::FETCHED) {
                self.stats.bump(|c| &c.expired_unfetched);
            }
        }
    }

    /// Publish why `key` leaves the table. Must be called with the key's shard
    /// lock held, before the entry is removed, so the record takes its place in
    /// per-key order and a concurrent read-through sees the removal as unsettled.
    fn removed(&self, key: &[u8], op: Op) -> u64 {
        let seq = self.stream.publish(|seq| Mutation {
            seq,
            op,
            key: Bytes::copy_from_slice(key),
            item: None,
            stored_at: 0,
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
        drop(displaced);
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
        match split(change) {
            Err(Change::Remove) => {
                // Published under the lock, before the entry is unlinked.
                let op = if dead.is_some() {
                    Op::Expire
                } else {
                    Op::Delete
                };
                let seq = self.removed(key, op);
                self.uncharge(item);
                (Edit::Remove, Ok((r, if dead.is_some() { 0 } else { seq })))
            }
            Err(_keep) => {
                if dead.is_none() {
                    return (Edit::Keep, Ok((r, 0)));
                }
                self.removed(key, Op::Expire);
                self.uncharge(item);
                self.stats.bump(|c| &c.reclaimed);
                (Edit::Remove, Ok((r, 0)))
            }
            Ok((state, op, in_place)) => {
                let live = if dead.is_none() { Some(item) } else { None };
                match self.new_version(key, live, charge_of(item), state, op, in_place, now) {
                    Ok((next, seq)) => {
                        if dead.is_some() {
                            self.stats.bump(|c| &c.reclaimed);
                        }
                        (Edit::Put(next), Ok((r, seq)))
                    }
                    Err(e) => (Edit::Keep, Err(e)),
                }
            }
        }
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
                let seq = self.removed(key, Op::Delete);
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

    /// The item a write makes, under the key's shard lock: charge it in place
    /// of `old_charge`, publish it, and build it. `prev` is the live version the
    /// command saw (in RAM or on disk): a touch keeps its store time, and a
    /// touch or in-place rewrite keeps its fetched bit.
    #[allow(clippy::too_many_arguments)]
    fn new_version(
        &self,
        key: &[u8],
        prev: Option<&Item>,
        old_charge: usize,
        state: ItemState,
        op: Op,
        in_place: bool,
        now: u32,
    ) -> Result<(Item, u64), StoreError> {
        self.reserve(charge(key.len(), state.value.len()), old_charge)?;
        let stored_at = match prev {
            Some(p) if op == Op::Touch => p.stored_at(),
            _ => now,
        };
        let seq = self.publish_put(key, &state, op, stored_at);
        let next = Item::new(NewItem {
            key,
            state,
            seq,
            now,
            stored_at,
        });
        if let Some(p) = prev {
            if op == Op::Touch || in_place {
                next.mark_accessed(now, p.has(Bits::FETCHED));
            }
        }
        Ok((next, seq))
    }

    fn publish_put(&self, key: &[u8], state: &ItemState, op: Op, stored_at: u32) -> u64 {
        self.stream.publish(|seq| Mutation {
            seq,
            op,
            key: Bytes::copy_from_slice(key),
            item: Some(state.clone()),
            stored_at,
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
                if self.dead(it, now).is_some() {
                    self.removed(it.key(), Op::Expire);
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
                self.removed(it.key(), Op::Evict);
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
            out.clear();
        }
    }

    /// Examine about `max` items with the reaper's own hand and reclaim the
    /// dead ones. Returns how many were reclaimed. Called by the reaper thread.
    pub fn reap(&self, now: u32, max: usize) -> usize {
        self.settle();
        let mut reclaimed = 0;
        let mut examined = 0;
        let mut steps = max / SWEEP_STEP + 2 * self.table.shard_count() + 1;
        let mut out = Vec::new();
        while examined < max && steps > 0 {
            steps -= 1;
            let (shard, at) = self.reap_hand.position();
            let (next, wrapped) = self.table.sweep(shard, at, SWEEP_STEP, &mut out, |it| {
                examined += 1;
                if self.dead(it, now).is_none() {
                    return Sweep::Keep;
                }
                self.removed(it.key(), Op::Expire);
                self.uncharge(it);
                self.stats.bump(|c| &c.reclaimed);
                if !it.has(Bits::FETCHED) {
                    self.stats.bump(|c| &c.expired_unfetched);
                }
                Sweep::Remove
            });
            self.reap_hand.advance(shard, next, wrapped);
            reclaimed += out.len();
            out.clear();
        }
        reclaimed
    }

    /// Logical `flush_all`: with `at <= now` everything stored so far becomes
    /// invisible at once; with a future `at`, items stored before `at` become
    /// invisible when the clock reaches it.
    pub fn flush(&self, at: u32, now: u32) -> u64 {
        let _g = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut spec = self.flush_spec();
        let immediate = at <= now;
        let seq = self.stream.publish(|seq| {
            spec.at = if immediate { now } else { at };
            if immediate {
                spec.seq_ceiling = seq;
            }
            Mutation {
                seq,
                op: Op::Flush,
                key: Bytes::new(),
                item: None,
                stored_at: 0,
                flush: Some(spec),
            }
        });
        // Compute again outside the closure (it only runs when someone listens).
        spec.at = if immediate { now } else { at };
        if immediate {
            spec.seq_ceiling = seq;
        }
        self.apply_flush(spec);
        seq
    }

    /// Install a flush state (from `flush`, or loaded from disk / a twin).
    pub fn apply_flush(&self, spec: FlushSpec) {
        self.flush_at.store(spec.at, Ordering::Release);
        self.flush_seq.fetch_max(spec.seq_ceiling, Ordering::AcqRel);
    }

    /// Insert an item as it was persisted or replicated, without publishing a
    /// mutation (the item already has its sequence number). Items that are
    /// already dead are skipped. Returns false when skipped or out of memory.
    pub fn load(&self, key: Bytes, state: ItemState, seq: u64, stored_at: u32, now: u32) -> bool {
        self.observe_cas(state.cas);
        self.stream.advance_to(seq);
        let item = Item::new(NewItem {
            key: &key,
            state,
            seq,
            now,
            stored_at,
        });
        if self.dead(&item, now).is_some() {
            return false;
        }
        if self.reserve(charge_of(&item), 0).is_err() {
            return false;
        }
        let ((), old) = self.table.update(&key, |_| (Edit::Put(item), ()));
        if let Some(old) = old {
            self.uncharge(&old);
        }
        self.evict_if_needed(now);
        true
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
            stored_at: p.stored_at,
        });
        if self.dead(&item, now).is_some() {
            return Warm::Dead;
        }
        let size = charge_of(&item);
        if self.used() + size > self.limit() {
            self.complete.store(false, Ordering::SeqCst);
            return Warm::NoRoom;
        }
        self.used.fetch_add(size, Ordering::Relaxed);
        let ((), old) = self.table.update(&key, |_| (Edit::Put(item), ()));
        if let Some(old) = old {
            self.uncharge(&old);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u32 = 1_800_000_000;

    fn store(limit: usize, evict: bool) -> Store {
        Store::new(
            StoreConfig {
                limit,
                evict,
                use_cas: true,
            },
            Arc::new(MutationStream::new()),
            Arc::new(Stats::new()),
        )
    }

    fn put(s: &Store, key: &str, value: &str, exptime: u32, now: u32) -> Result<u64, StoreError> {
        let cas = s.next_cas();
        s.modify(key.as_bytes(), now, |_| {
            (
                Change::Put(
                    ItemState {
                        value: Bytes::copy_from_slice(value.as_bytes()),
                        flags: 0,
                        exptime,
                        cas,
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

    #[test]
    fn mutations_carry_resulting_state() {
        let stream = Arc::new(MutationStream::new());
        let sub = stream.subscribe(64, false);
        let s = Store::new(
            StoreConfig {
                limit: 1 << 20,
                evict: true,
                use_cas: true,
            },
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
