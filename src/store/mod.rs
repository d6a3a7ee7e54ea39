//! The in-memory table.
//!
//! A sharded hash map ([`dashmap`], seeded SipHash: keys are attacker-chosen)
//! from key to [`Item`], plus what dashmap does not give:
//!
//! * **memory accounting**: every item is charged `key + value + ITEM_OVERHEAD`
//!   bytes against the `-m` limit in one atomic counter;
//! * **eviction**: an approximate LRU (CLOCK): a lock-free FIFO of keys, where an
//!   item read since it was last examined gets a second chance;
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

pub use backing::{Backing, BackingError, Persisted};
pub use item::{Bits, Item, ItemView};

use crate::mutation::{FlushSpec, ItemState, Mutation, MutationStream, Op};
use crate::stats::Stats;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// How many dirty items (not yet applied by the backing) one eviction pass may
/// skip before giving up; the next write tries again.
const DIRTY_SKIP_LIMIT: usize = 64;

/// Bytes charged per item on top of key and value: the `Item` struct, the key's
/// `Bytes` handle, the hash-table slot and control bytes at typical load, the
/// eviction-queue entry, and allocator headers for key and value.
pub const ITEM_OVERHEAD: usize = 160;

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

/// What [`Store::apply_occupied`] did.
struct Applied<R> {
    r: R,
    /// Sequence number of the published mutation (0 when nothing changed).
    seq: u64,
    /// The entry must be unlinked (already accounted and published).
    remove: bool,
    /// The key got a new eviction-queue identity.
    new_key: bool,
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

pub struct Store {
    map: DashMap<Bytes, Item, RandomState>,
    used: AtomicUsize,
    cfg: StoreConfig,
    limit: AtomicUsize,
    queue: SegQueue<(Bytes, u64)>,
    next_qid: AtomicU64,
    cas: AtomicU64,
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
            .field("items", &self.map.len())
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

#[inline]
fn charge(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ITEM_OVERHEAD
}

impl Store {
    pub fn new(cfg: StoreConfig, stream: Arc<MutationStream>, stats: Arc<Stats>) -> Self {
        Store {
            map: DashMap::with_hasher(RandomState::new()),
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(cfg.limit),
            cfg,
            queue: SegQueue::new(),
            next_qid: AtomicU64::new(1),
            cas: AtomicU64::new(0),
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
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
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
        if item.exptime != 0 && item.exptime <= now {
            return Some(Dead::Expired);
        }
        if item.seq <= self.flush_seq.load(Ordering::Acquire) {
            return Some(Dead::Flushed);
        }
        let at = self.flush_at.load(Ordering::Acquire);
        if at != 0 && at <= now && item.stored_at < at {
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
        let dead = match self.map.get(key) {
            None => return self.read_through(key, now, bump, f),
            Some(item) => match self.dead(&item, now) {
                None => {
                    let r = f(&item);
                    if bump {
                        item.mark_accessed(now, true);
                    }
                    return Ok(r);
                }
                Some(d) => d,
            },
        };
        self.reclaim(key, now);
        Err(match dead {
            Dead::Expired => Missed::Expired,
            Dead::Flushed => Missed::Flushed,
        })
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
        let vac = match self.map.entry(Bytes::copy_from_slice(key)) {
            // Inserted since our lookup: an ordinary read sees it.
            Entry::Occupied(occ) => {
                drop(occ);
                return match self.map.get(key) {
                    Some(item) if self.dead(&item, now).is_none() => {
                        let r = f(&item);
                        if bump {
                            item.mark_accessed(now, true);
                        }
                        Ok(r)
                    }
                    _ => Err(Missed::Miss),
                };
            }
            Entry::Vacant(vac) => vac,
        };
        match self.fetch_persisted(vac.key(), now) {
            Fetched::Absent => Err(Missed::Miss),
            Fetched::Dead(Dead::Expired) => Err(Missed::Expired),
            Fetched::Dead(Dead::Flushed) => Err(Missed::Flushed),
            Fetched::Live(item) => {
                let r = f(&item);
                if bump {
                    item.mark_accessed(now, true);
                }
                if self.cache_vacant(vac, item) {
                    self.evict_if_needed(now);
                }
                Ok(r)
            }
        }
    }

    /// Under the key's shard lock, with the key absent from RAM: its live
    /// persisted version, if any. A dead one is reported (and an `Expire` is
    /// published so the writer purges it).
    fn fetch_persisted(&self, key: &Bytes, now: u32) -> Fetched {
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
        let qid = self.next_qid.fetch_add(1, Ordering::Relaxed);
        let mut item = Item::new(p.state, p.seq, now, qid);
        item.stored_at = p.stored_at;
        match self.dead(&item, now) {
            None => Fetched::Live(item),
            Some(d) => {
                self.removed(key, Op::Expire);
                Fetched::Dead(d)
            }
        }
    }

    /// Insert an item read through from the backing into its vacant slot, if
    /// memory allows (with `-M` and a full cache it is served but not cached).
    /// Returns whether it was inserted (the caller then runs eviction, after
    /// the slot's lock is released).
    fn cache_vacant(
        &self,
        vac: dashmap::mapref::entry::VacantEntry<'_, Bytes, Item>,
        item: Item,
    ) -> bool {
        if self.reserve(charge(vac.key(), &item.value), 0).is_err() {
            return false;
        }
        let entry = (vac.key().clone(), item.qid);
        drop(vac.insert(item));
        self.queue.push(entry);
        true
    }

    /// Remove `key` if it is dead, publishing an `Expire` record.
    fn reclaim(&self, key: &[u8], now: u32) {
        if let Some((k, item)) = self.map.remove_if(key, |k, it| {
            let dead = self.dead(it, now).is_some();
            if dead {
                self.removed(k, Op::Expire);
            }
            dead
        }) {
            self.uncharge(&k, &item);
            self.stats.bump(|c| &c.reclaimed);
            if !item.has(Bits::FETCHED) {
                self.stats.bump(|c| &c.expired_unfetched);
            }
        }
    }

    /// Publish why `key` leaves the table. Must be called with the key's shard
    /// lock held, before the entry is removed, so the record takes its place in
    /// per-key order and a concurrent read-through sees the removal as unsettled.
    fn removed(&self, key: &Bytes, op: Op) -> u64 {
        let seq = self.stream.publish(|seq| Mutation {
            seq,
            op,
            key: key.clone(),
            item: None,
            stored_at: 0,
            flush: None,
        });
        if matches!(op, Op::Delete | Op::Expire) && self.backing.get().is_some() {
            self.unsettled.insert(key.clone(), seq);
        }
        seq
    }

    /// Give back the memory of an item that left the table.
    fn uncharge(&self, key: &Bytes, item: &Item) {
        self.used
            .fetch_sub(charge(key, &item.value), Ordering::Relaxed);
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
    pub fn modify<R>(
        &self,
        key: &[u8],
        now: u32,
        f: impl FnOnce(Option<&Item>) -> (Change, R),
    ) -> Result<(R, u64), StoreError> {
        // Fast path for a key that exists (overwrites, deletes, touches, incr: the
        // common case for a session store): look it up by the borrowed key, so no
        // key is allocated, hash once, and decide under the shard's write lock.
        let mut f = Some(f);
        let mut decided = None;
        let removed = self.map.remove_if_mut(key, |k, item| {
            let Some(f) = f.take() else { return false };
            let res = self.apply_occupied(k, item, now, f);
            let remove = matches!(res, Ok(Applied { remove: true, .. }));
            decided = Some(res);
            remove
        });
        // The removed key and item are freed here, outside the lock.
        drop(removed);
        let applied = match (decided, f) {
            (Some(res), _) => res?,
            // Absent from RAM (or removed by someone else in between).
            (None, Some(f)) => self.modify_absent(key, now, f)?,
            (None, None) => unreachable!("the closure ran but decided nothing"),
        };
        if applied.new_key {
            self.tidy_queue();
        }
        self.evict_if_needed(now);
        Ok((applied.r, applied.seq))
    }

    /// [`Store::modify`] for a key the fast path did not find: the entry API,
    /// which needs an owned key because it may insert one, and which looks at the
    /// backing (read-through) while the key's slot is locked.
    fn modify_absent<R>(
        &self,
        key: &[u8],
        now: u32,
        f: impl FnOnce(Option<&Item>) -> (Change, R),
    ) -> Result<Applied<R>, StoreError> {
        let done = |r, seq, new_key| Applied {
            r,
            seq,
            remove: false,
            new_key,
        };
        Ok(match self.map.entry(Bytes::copy_from_slice(key)) {
            // Rare: the key appeared since the fast path looked.
            Entry::Occupied(mut occ) => {
                let k = occ.key().clone();
                let applied = self.apply_occupied(&k, occ.get_mut(), now, f)?;
                if applied.remove {
                    occ.remove_entry();
                }
                applied
            }
            Entry::Vacant(vac) => match self.fetch_persisted(vac.key(), now) {
                // Only on disk: the command sees it exactly as if it were in RAM.
                Fetched::Live(disk) => {
                    let (change, r) = f(Some(&disk));
                    match split(change) {
                        Err(Change::Remove) => {
                            let seq = self.removed(vac.key(), Op::Delete);
                            done(r, seq, false)
                        }
                        Err(_keep) => {
                            let new_key = self.cache_vacant(vac, disk);
                            done(r, 0, new_key)
                        }
                        Ok((state, op, in_place)) => {
                            self.reserve(charge(vac.key(), &state.value), 0)?;
                            let stored_at = if op == Op::Touch { disk.stored_at } else { now };
                            let seq = self.publish_put(vac.key(), &state, op, stored_at);
                            let mut item = Item::new(state, seq, now, disk.qid);
                            item.stored_at = stored_at;
                            if op == Op::Touch || in_place {
                                item.mark_accessed(now, disk.has(Bits::FETCHED));
                            }
                            let key = vac.key().clone();
                            drop(vac.insert(item));
                            self.queue.push((key, disk.qid));
                            done(r, seq, true)
                        }
                    }
                }
                Fetched::Dead(_) | Fetched::Absent => {
                    let (change, r) = f(None);
                    match split(change) {
                        Err(_) => done(r, 0, false),
                        Ok((state, op, _)) => {
                            self.reserve(charge(vac.key(), &state.value), 0)?;
                            let qid = self.next_qid.fetch_add(1, Ordering::Relaxed);
                            let seq = self.publish_put(vac.key(), &state, op, now);
                            let key = vac.key().clone();
                            drop(vac.insert(Item::new(state, seq, now, qid)));
                            self.queue.push((key, qid));
                            done(r, seq, true)
                        }
                    }
                }
            },
        })
    }

    /// Run `f` on the item stored at `key` (live, or dead and so shown as `None`)
    /// and apply its decision in place, under the shard lock the caller holds.
    /// A removal is accounted and published here; the caller unlinks the entry.
    fn apply_occupied<R>(
        &self,
        key: &Bytes,
        item: &mut Item,
        now: u32,
        f: impl FnOnce(Option<&Item>) -> (Change, R),
    ) -> Result<Applied<R>, StoreError> {
        let dead = self.dead(item, now);
        let (change, r) = f(if dead.is_none() { Some(item) } else { None });
        let done = |r, seq, remove| Applied {
            r,
            seq,
            remove,
            new_key: false,
        };
        match split(change) {
            Err(Change::Remove) => {
                // Published under the lock, before the caller unlinks the entry.
                let op = if dead.is_some() {
                    Op::Expire
                } else {
                    Op::Delete
                };
                let seq = self.removed(key, op);
                self.uncharge(key, item);
                Ok(done(r, if dead.is_some() { 0 } else { seq }, true))
            }
            Err(_keep) => {
                if dead.is_some() {
                    self.removed(key, Op::Expire);
                    self.uncharge(key, item);
                    self.stats.bump(|c| &c.reclaimed);
                }
                Ok(done(r, 0, dead.is_some()))
            }
            Ok((state, op, in_place)) => {
                let old = charge(key, &item.value);
                let new = charge(key, &state.value);
                self.reserve(new, old)?;
                let new_key = dead.is_some();
                let qid = if new_key {
                    self.stats.bump(|c| &c.reclaimed);
                    self.next_qid.fetch_add(1, Ordering::Relaxed)
                } else {
                    item.qid
                };
                let stored_at = if op == Op::Touch && dead.is_none() {
                    item.stored_at
                } else {
                    now
                };
                let seq = self.publish_put(key, &state, op, stored_at);
                let mut next = Item::new(state, seq, now, qid);
                next.stored_at = stored_at;
                if (op == Op::Touch || in_place) && dead.is_none() {
                    // A touch (or in-place rewrite) keeps the fetched bit and
                    // recency of the old version.
                    next.mark_accessed(now, item.has(Bits::FETCHED));
                }
                *item = next;
                if new_key {
                    self.queue.push((key.clone(), qid));
                }
                Ok(Applied {
                    r,
                    seq,
                    remove: false,
                    new_key,
                })
            }
        }
    }

    fn publish_put(&self, key: &Bytes, state: &ItemState, op: Op, stored_at: u32) -> u64 {
        self.stream.publish(|seq| Mutation {
            seq,
            op,
            key: key.clone(),
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

    /// Evict cold items (CLOCK) until usage is under the limit. Dead items found
    /// on the way are reclaimed instead. Runs without holding any lock between
    /// candidates, so it never holds two keys at once.
    fn evict_if_needed(&self, now: u32) {
        if !self.cfg.evict {
            return;
        }
        let mut budget = self.queue.len() * 2 + 16;
        let mut dirty_skips = 0;
        let backing = self.backing.get();
        while self.used() > self.limit() && budget > 0 && dirty_skips < DIRTY_SKIP_LIMIT {
            budget -= 1;
            let Some((key, qid)) = self.queue.pop() else {
                break;
            };
            let mut requeue = false;
            let mut dead = false;
            let removed = self.map.remove_if(&key, |k, it| {
                if it.qid != qid {
                    return false;
                }
                if self.dead(it, now).is_some() {
                    dead = true;
                    self.removed(k, Op::Expire);
                    return true;
                }
                if it.take_accessed() {
                    requeue = true;
                    return false;
                }
                if let Some(b) = backing {
                    if it.seq > b.applied_seq() {
                        // Its latest version is not on disk yet: evicting it
                        // now would let a read-through return an older one.
                        requeue = true;
                        dirty_skips += 1;
                        return false;
                    }
                    self.complete.store(false, Ordering::SeqCst);
                }
                self.removed(k, Op::Evict);
                true
            });
            match removed {
                Some((k, item)) if dead => {
                    self.uncharge(&k, &item);
                    self.stats.bump(|c| &c.reclaimed);
                }
                Some((k, item)) => {
                    self.uncharge(&k, &item);
                    self.stats.bump(|c| &c.evictions);
                    if !item.has(Bits::FETCHED) {
                        self.stats.bump(|c| &c.evicted_unfetched);
                    }
                    if item.last_access() + 60 > now {
                        self.stats.bump(|c| &c.evicted_active);
                    }
                }
                None if requeue => self.queue.push((key, qid)),
                None => {}
            }
        }
    }

    /// Drop queue entries of keys that are gone, so delete-heavy workloads do not
    /// grow the queue without bound. Amortised: a few entries per new key.
    fn tidy_queue(&self) {
        if self.queue.len() <= self.map.len() * 2 + 1024 {
            return;
        }
        for _ in 0..4 {
            let Some((key, qid)) = self.queue.pop() else {
                return;
            };
            let live = self.map.get(&key).is_some_and(|it| it.qid == qid);
            if live {
                self.queue.push((key, qid));
            }
        }
    }

    /// Examine up to `max` items in queue order and reclaim the dead ones.
    /// Returns how many were reclaimed. Called by housekeeping every second.
    pub fn reap(&self, now: u32, max: usize) -> usize {
        self.settle();
        let mut reclaimed = 0;
        for _ in 0..max.min(self.queue.len()) {
            let Some((key, qid)) = self.queue.pop() else {
                break;
            };
            // Most examined items are alive: look under the read lock first and
            // take the write lock only to unlink a dead one.
            let alive = match self.map.get(&key) {
                None => continue,
                Some(it) if it.qid != qid => continue,
                Some(it) => self.dead(&it, now).is_none(),
            };
            if alive {
                self.queue.push((key, qid));
                continue;
            }
            let mut keep = false;
            let removed = self.map.remove_if(&key, |k, it| {
                if it.qid != qid {
                    return false;
                }
                keep = self.dead(it, now).is_none();
                if !keep {
                    self.removed(k, Op::Expire);
                }
                !keep
            });
            if let Some((k, item)) = removed {
                self.uncharge(&k, &item);
                self.stats.bump(|c| &c.reclaimed);
                if !item.has(Bits::FETCHED) {
                    self.stats.bump(|c| &c.expired_unfetched);
                }
                reclaimed += 1;
            } else if keep {
                self.queue.push((key, qid));
            }
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
        let qid = self.next_qid.fetch_add(1, Ordering::Relaxed);
        let mut item = Item::new(state, seq, now, qid);
        item.stored_at = stored_at;
        if self.dead(&item, now).is_some() {
            return false;
        }
        let size = charge(&key, &item.value);
        if self.reserve(size, 0).is_err() {
            return false;
        }
        if let Some(old) = self.map.insert(key.clone(), item) {
            self.used
                .fetch_sub(charge(&key, &old.value), Ordering::Relaxed);
        }
        self.queue.push((key, qid));
        self.evict_if_needed(now);
        true
    }

    /// Insert a persisted item at warm restart, without publishing and without
    /// evicting anything: when RAM is full the item stays on disk only (and the
    /// store stops being `complete`). The caller restores the CAS counter and
    /// the stream's sequence number once, after loading.
    pub fn warm(&self, key: Bytes, p: Persisted, now: u32) -> Warm {
        let qid = self.next_qid.fetch_add(1, Ordering::Relaxed);
        let mut item = Item::new(p.state, p.seq, now, qid);
        item.stored_at = p.stored_at;
        if self.dead(&item, now).is_some() {
            return Warm::Dead;
        }
        let size = charge(&key, &item.value);
        if self.used() + size > self.limit() {
            self.complete.store(false, Ordering::SeqCst);
            return Warm::NoRoom;
        }
        self.used.fetch_add(size, Ordering::Relaxed);
        if let Some(old) = self.map.insert(key.clone(), item) {
            self.uncharge(&key, &old);
        }
        self.queue.push((key, qid));
        Warm::Loaded
    }

    /// Visit every live item in RAM (for snapshots). Items only on disk are not
    /// visited. Holds one shard's read lock at a time; `f` must not call back
    /// into the store.
    pub fn for_each_live(&self, now: u32, mut f: impl FnMut(&Bytes, &Item)) {
        for r in self.map.iter() {
            if self.dead(r.value(), now).is_none() {
                f(r.key(), r.value());
            }
        }
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
        let item = charge(b"k000", &[0u8; 100]);
        let s = store(item * 10, true);
        let v = "x".repeat(100);
        for i in 0..10 {
            put(&s, &format!("k{i:03}"), &v, 0, NOW).expect("put");
        }
        assert_eq!(s.used(), item * 10);
        // Read k000 so it gets a second chance; the next insert evicts k001.
        assert!(value(&s, "k000", NOW).is_some());
        put(&s, "k010", &v, 0, NOW).expect("put");
        assert!(s.used() <= item * 10);
        assert!(value(&s, "k000", NOW).is_some());
        assert!(value(&s, "k001", NOW).is_none());
        assert_eq!(s.stats.snapshot().evictions, 1);
    }

    #[test]
    fn no_evict_mode_refuses_instead() {
        let item = charge(b"k0", b"v");
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
            for r in s.map.iter() {
                expect += charge(r.key(), &r.value().value);
            }
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
    fn delete_heavy_churn_keeps_queue_bounded() {
        let s = store(1 << 30, true);
        for i in 0..20_000 {
            let k = format!("s{i}");
            put(&s, &k, "v", 0, NOW).expect("put");
            s.modify(k.as_bytes(), NOW, |_| (Change::Remove, ()))
                .expect("rm");
        }
        assert!(s.queue.len() <= 1024 + 8, "queue has {}", s.queue.len());
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
