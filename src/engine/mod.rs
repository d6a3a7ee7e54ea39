//! Command execution, independent of any wire format.
//!
//! The text, meta and binary protocols all decode into calls on [`Engine`] and
//! encode its outcome enums into their own replies, so `set`, `add`, `incr` ...
//! are implemented exactly once. The engine owns memcached's command semantics
//! (CAS rules, add-as-lock, append keeping flags and TTL, incr padding, the
//! too-large unlink rule) and the per-command counters; the [`Store`] below it
//! owns memory, eviction, expiry and the mutation stream.

pub mod meta;
pub mod numeric;

use crate::clock::Clock;
use crate::mutation::{ItemState, MutationStream, Op};
use crate::stats::Stats;
use crate::store::{Bits, Change, Item, ItemView, Missed, Store, StoreConfig, StoreError};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// memcached's item header size on 64-bit builds, used for the `-I` limit so
/// the largest accepted value is exactly memcached's (`item_size_max - 51 - key
/// - 8 with CAS`).
const ITEM_HEADER: usize = 48;

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub store: StoreConfig,
    /// Largest item, as `-I` (header + key + value).
    pub item_size_max: usize,
}

/// How a value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

/// A write request.
#[derive(Debug, Clone)]
pub struct StoreCmd<'a> {
    pub key: &'a [u8],
    pub value: Bytes,
    pub flags: u32,
    /// Protocol exptime (relative / absolute / negative rules apply).
    pub exptime: i64,
    pub mode: StoreMode,
    /// Compare-and-swap: with `Set` this is memcached's `cas` command (a missing
    /// key is NOT_FOUND, a mismatch EXISTS, and 0 never matches); with the other
    /// modes a non-zero value must match.
    pub compare_cas: Option<u64>,
    /// Meta `E`: the CAS the new version gets (instead of the next counter value).
    pub new_cas: Option<u64>,
    /// Meta `I` with `C`: a lower CAS is accepted and the item is marked stale.
    pub invalidate: bool,
    /// Meta `N` for append/prepend: create the item (with this exptime) when missing.
    pub vivify: Option<i64>,
    /// Meta `b`: the key was sent in base64, so meta replies show it that way
    /// (the item gets [`Bits::BINARY_KEY`]).
    pub binary_key: bool,
}

impl<'a> StoreCmd<'a> {
    pub fn new(mode: StoreMode, key: &'a [u8], flags: u32, exptime: i64, value: Bytes) -> Self {
        StoreCmd {
            key,
            value,
            flags,
            exptime,
            mode,
            compare_cas: None,
            new_cas: None,
            invalidate: false,
            vivify: None,
            binary_key: false,
        }
    }

    /// Apply a binary-protocol header CAS. memcached (`process_bin_update`)
    /// turns SET, ADD and REPLACE with a non-zero CAS into one and the same CAS
    /// store (missing key: NOT_FOUND, mismatch: EXISTS, match: stored), so ADD
    /// with a CAS can overwrite. APPEND/PREPEND only compare. 0 means "no CAS".
    pub fn with_header_cas(mut self, cas: u64) -> Self {
        if cas != 0 {
            if matches!(self.mode, StoreMode::Add | StoreMode::Replace) {
                self.mode = StoreMode::Set;
            }
            self.compare_cas = Some(cas);
        }
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored {
        cas: u64,
    },
    NotStored,
    Exists,
    NotFound,
    TooLarge,
    NoMemory,
    /// Persistence cannot accept writes (disk full, I/O error).
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    Exists,
    Unavailable,
}

/// An incr/decr request.
#[derive(Debug, Clone)]
pub struct DeltaCmd<'a> {
    pub key: &'a [u8],
    pub incr: bool,
    pub delta: u64,
    /// Create the item with this initial value and exptime when missing
    /// (binary protocol, meta `N`/`J`).
    pub create: Option<(u64, i64)>,
    pub compare_cas: Option<u64>,
    pub new_cas: Option<u64>,
    /// Meta `T`: also update the TTL.
    pub touch: Option<i64>,
}

impl<'a> DeltaCmd<'a> {
    pub fn new(key: &'a [u8], incr: bool, delta: u64) -> Self {
        DeltaCmd {
            key,
            incr,
            delta,
            create: None,
            compare_cas: None,
            new_cas: None,
            touch: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// The new number, and the resulting item.
    Value {
        value: u64,
        cas: u64,
        exptime: u32,
        created: bool,
    },
    NotFound,
    NonNumeric,
    Exists,
    NoMemory,
    Unavailable,
}

pub struct Engine {
    store: Store,
    clock: Arc<Clock>,
    stats: Arc<Stats>,
    item_size_max: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .finish()
    }
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        clock: Arc<Clock>,
        stats: Arc<Stats>,
        stream: Arc<MutationStream>,
    ) -> Self {
        Engine {
            store: Store::new(cfg.store, stream, stats.clone()),
            clock,
            stats,
            item_size_max: cfg.item_size_max,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn stream(&self) -> &Arc<MutationStream> {
        self.store.stream()
    }

    pub fn item_size_max(&self) -> usize {
        self.item_size_max
    }

    #[inline]
    pub fn now(&self) -> u32 {
        self.clock.now()
    }

    /// Whether an item with this key and value length fits under `-I`.
    pub fn fits(&self, key_len: usize, value_len: usize) -> bool {
        let cas = if self.store.use_cas() { 8 } else { 0 };
        ITEM_HEADER + key_len + 1 + value_len + 2 + cas <= self.item_size_max
    }

    // ---- reads ------------------------------------------------------------

    /// `get`: one key. Counts `cmd_get`, hits, misses, expired and flushed.
    pub fn get(&self, key: &[u8]) -> Option<ItemView> {
        self.get_opts(key, true)
    }

    /// A read with optional LRU bump (meta `u` disables it).
    pub fn get_opts(&self, key: &[u8], bump: bool) -> Option<ItemView> {
        self.read(key, bump, ItemView::of)
    }

    /// `get` without an owned copy: `f` encodes the reply straight from the
    /// stored item, under the shard's read lock (see [`Store::read`]). Counts
    /// like [`Engine::get`].
    #[inline]
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&Item) -> R) -> Option<R> {
        self.read(key, true, f)
    }

    fn read<R>(&self, key: &[u8], bump: bool, f: impl FnOnce(&Item) -> R) -> Option<R> {
        self.stats.bump(|c| &c.cmd_get);
        match self.store.read(key, self.now(), bump, f) {
            Ok(r) => {
                self.stats.bump(|c| &c.get_hits);
                Some(r)
            }
            Err(Missed::Miss) => {
                self.stats.bump(|c| &c.get_misses);
                None
            }
            Err(Missed::Expired) => {
                self.stats.bump(|c| &c.get_misses);
                self.stats.bump(|c| &c.get_expired);
                None
            }
            Err(Missed::Flushed) => {
                self.stats.bump(|c| &c.get_misses);
                self.stats.bump(|c| &c.get_flushed);
                None
            }
        }
    }

    /// `gat`/`gats`: read and set a new TTL. The CAS value does not change.
    /// memcached counts these as touches only (`cmd_touch`, `touch_hits`).
    pub fn get_and_touch(&self, key: &[u8], exptime: i64) -> Option<ItemView> {
        self.stats.bump(|c| &c.cmd_touch);
        let hit = self.touch_inner(key, exptime);
        match &hit {
            Some(_) => self.stats.bump(|c| &c.touch_hits),
            None => self.stats.bump(|c| &c.touch_misses),
        }
        hit
    }

    // ---- writes -----------------------------------------------------------

    /// set/add/replace/append/prepend/cas.
    pub fn store_item(&self, cmd: StoreCmd<'_>) -> StoreOutcome {
        if !self.fits(cmd.key.len(), cmd.value.len()) {
            return self.too_large(cmd);
        }
        self.stats.bump(|c| &c.cmd_set);
        if !self.stream().accepts_writes() {
            self.stats.bump(|c| &c.store_io_error);
            return StoreOutcome::Unavailable;
        }
        let now = self.now();
        let exptime = self.clock.expiry(cmd.exptime);
        let is_cas = cmd.mode == StoreMode::Set && cmd.compare_cas.is_some();
        let res = self.store.modify(cmd.key, now, |old| {
            self.decide_store(&cmd, old, exptime, now)
        });
        match res {
            Ok((outcome, _)) => {
                if let StoreOutcome::Stored { .. } = outcome {
                    // memcached counts every item it links, overwrites included.
                    self.stats.bump(|c| &c.total_items);
                }
                if is_cas {
                    match outcome {
                        StoreOutcome::Stored { .. } => self.stats.bump(|c| &c.cas_hits),
                        StoreOutcome::Exists => self.stats.bump(|c| &c.cas_badval),
                        StoreOutcome::NotFound => self.stats.bump(|c| &c.cas_misses),
                        _ => {}
                    }
                }
                outcome
            }
            Err(StoreError::NoMemory) => {
                self.unlink_after_failed_set(&cmd);
                StoreOutcome::NoMemory
            }
        }
    }

    /// A write whose value does not fit under `-I`: counted (as `store_too_large`,
    /// not `cmd_set`: memcached never reads such a value), refused, and (for a
    /// plain `set`) the old item is unlinked. The value itself may never have
    /// been read (the text protocol swallows it unbuffered).
    pub fn too_large(&self, cmd: StoreCmd<'_>) -> StoreOutcome {
        self.stats.bump(|c| &c.store_too_large);
        self.unlink_after_failed_set(&cmd);
        StoreOutcome::TooLarge
    }

    /// memcached unlinks the old item when a plain `set` fails to allocate
    /// ("avoid stale data persisting in cache because we failed alloc").
    fn unlink_after_failed_set(&self, cmd: &StoreCmd<'_>) {
        if cmd.mode == StoreMode::Set && cmd.compare_cas.is_none() {
            let _ = self.store.modify(cmd.key, self.now(), |old| {
                (
                    if old.is_some() {
                        Change::Remove
                    } else {
                        Change::Keep
                    },
                    (),
                )
            });
        }
    }

    fn decide_store(
        &self,
        cmd: &StoreCmd<'_>,
        old: Option<&Item>,
        exptime: u32,
        now: u32,
    ) -> (Change, StoreOutcome) {
        let keep = |o| (Change::Keep, o);
        // A new version starts with no meta state: a plain write ends stale-while-
        // revalidate and frees the win token.
        let mut bits = if cmd.binary_key { Bits::BINARY_KEY } else { 0 };
        let (value, flags, exptime) = match (cmd.mode, old) {
            (StoreMode::Add, Some(it)) => {
                // A failed add is memcached's lock/ping primitive: it promotes the
                // item in the LRU but changes neither value, TTL nor CAS.
                it.mark_accessed(now, false);
                return keep(StoreOutcome::NotStored);
            }
            (StoreMode::Set, None) if cmd.compare_cas.is_some() => {
                return keep(StoreOutcome::NotFound)
            }
            (StoreMode::Replace, None) => return keep(StoreOutcome::NotStored),
            (StoreMode::Append | StoreMode::Prepend, None) => match cmd.vivify {
                Some(ttl) => (cmd.value.clone(), cmd.flags, self.clock.expiry(ttl)),
                None => return keep(StoreOutcome::NotStored),
            },
            (StoreMode::Set | StoreMode::Replace, Some(it)) if cmd.compare_cas.is_some() => {
                let want = cmd.compare_cas.unwrap_or(0);
                if want == it.cas() && want != 0 {
                    (cmd.value.clone(), cmd.flags, exptime)
                } else if cmd.invalidate && want != 0 && want < it.cas() {
                    // Meta `ms I C<older cas>`: a late writer's value is accepted but
                    // stays stale; TTL and an already handed-out win token are kept.
                    bits |= Bits::STALE | (it.bits() & Bits::WIN_SENT);
                    (cmd.value.clone(), cmd.flags, it.exptime())
                } else {
                    return keep(StoreOutcome::Exists);
                }
            }
            (StoreMode::Append | StoreMode::Prepend, Some(it)) => {
                if let Some(want) = cmd.compare_cas {
                    if want != 0 && want != it.cas() {
                        return keep(StoreOutcome::Exists);
                    }
                }
                // memcached cannot allocate the combined item: NOT_STORED, item kept.
                if !self.fits(cmd.key.len(), it.value().len() + cmd.value.len()) {
                    return keep(StoreOutcome::NotStored);
                }
                let mut v = BytesMut::with_capacity(it.value().len() + cmd.value.len());
                if cmd.mode == StoreMode::Append {
                    v.extend_from_slice(it.value());
                    v.extend_from_slice(&cmd.value);
                } else {
                    v.extend_from_slice(&cmd.value);
                    v.extend_from_slice(it.value());
                }
                // Appends keep the old flags and TTL. Like memcached, which builds a
                // new item, they drop the meta state: stale, win token, binary key.
                bits = 0;
                (v.freeze(), it.flags(), it.exptime())
            }
            (_, _) => (cmd.value.clone(), cmd.flags, exptime),
        };
        let (cas, version) = self.stamp(cmd.new_cas);
        (
            Change::Put(
                ItemState {
                    value,
                    flags,
                    exptime,
                    cas,
                    version,
                    bits,
                },
                Op::Store,
            ),
            StoreOutcome::Stored { cas },
        )
    }

    /// The (CAS, version) of a value-changing write, taken under the key's
    /// lock. The CAS token is the version itself, so a token names one value
    /// on both twins; a client-chosen CAS (meta `E`, binary CAS on set is not
    /// one) is shown as chosen while the version still orders the write.
    fn stamp(&self, chosen: Option<u64>) -> (u64, u64) {
        let version = self.store.next_version(self.now());
        match chosen {
            Some(c) if self.store.use_cas() => (c, version),
            _ => (self.store.cas_for(version), version),
        }
    }

    /// `delete`, optionally compare-and-delete (binary CAS, meta `C`).
    pub fn delete(&self, key: &[u8], compare_cas: Option<u64>) -> DeleteOutcome {
        if !self.stream().accepts_writes() {
            return DeleteOutcome::Unavailable;
        }
        let res = self.store.modify(key, self.now(), |old| match old {
            None => (Change::Keep, DeleteOutcome::NotFound),
            Some(it) => match compare_cas {
                Some(c) if c != 0 && c != it.cas() => (Change::Keep, DeleteOutcome::Exists),
                _ => (Change::Remove, DeleteOutcome::Deleted),
            },
        });
        let outcome = res.map(|(o, _)| o).unwrap_or(DeleteOutcome::NotFound);
        match outcome {
            DeleteOutcome::Deleted => self.stats.bump(|c| &c.delete_hits),
            DeleteOutcome::NotFound => self.stats.bump(|c| &c.delete_misses),
            _ => {}
        }
        outcome
    }

    /// `incr`/`decr`.
    pub fn delta(&self, cmd: DeltaCmd<'_>) -> DeltaOutcome {
        if !self.stream().accepts_writes() {
            return DeltaOutcome::Unavailable;
        }
        let now = self.now();
        let res = self.store.modify(cmd.key, now, |old| match old {
            None => match cmd.create {
                Some((initial, ttl)) => {
                    let exptime = self.clock.expiry(ttl);
                    let (cas, version) = self.stamp(cmd.new_cas);
                    let value = Bytes::from(numeric::render(initial, 0));
                    (
                        Change::Put(
                            ItemState {
                                value,
                                flags: 0,
                                exptime,
                                cas,
                                version,
                                bits: 0,
                            },
                            Op::Store,
                        ),
                        DeltaOutcome::Value {
                            value: initial,
                            cas,
                            exptime,
                            created: true,
                        },
                    )
                }
                None => (Change::Keep, DeltaOutcome::NotFound),
            },
            Some(it) => {
                let (mut state, n, in_place) = match self.delta_state(it, &cmd) {
                    Ok(r) => r,
                    Err(o) => return (Change::Keep, o),
                };
                if let Some(t) = cmd.touch {
                    state.exptime = self.clock.expiry(t);
                }
                let (cas, exptime) = (state.cas, state.exptime);
                (
                    delta_change(state, in_place),
                    DeltaOutcome::Value {
                        value: n,
                        cas,
                        exptime,
                        created: false,
                    },
                )
            }
        });
        let outcome = match res {
            Ok((o, _)) => o,
            Err(StoreError::NoMemory) => DeltaOutcome::NoMemory,
        };
        if let DeltaOutcome::Value { created: true, .. } = outcome {
            self.stats.bump(|c| &c.total_items);
        }
        self.count_delta(cmd.incr, &outcome);
        outcome
    }

    /// memcached counts a hit only for a number actually changed and a miss only
    /// for a missing key; a created item, a non-numeric value and a CAS mismatch
    /// count as neither.
    fn count_delta(&self, incr: bool, outcome: &DeltaOutcome) {
        match (incr, outcome) {
            (true, DeltaOutcome::Value { created: false, .. }) => self.stats.bump(|c| &c.incr_hits),
            (false, DeltaOutcome::Value { created: false, .. }) => {
                self.stats.bump(|c| &c.decr_hits)
            }
            (true, DeltaOutcome::NotFound) => self.stats.bump(|c| &c.incr_misses),
            (false, DeltaOutcome::NotFound) => self.stats.bump(|c| &c.decr_misses),
            _ => {}
        }
    }

    /// incr/decr applied to an existing item: its next state, the new number,
    /// and whether memcached would rewrite it in place (the number still fits).
    /// Shared by the classic, binary and meta (`ma`) commands.
    fn delta_state(
        &self,
        it: &Item,
        cmd: &DeltaCmd<'_>,
    ) -> Result<(ItemState, u64, bool), DeltaOutcome> {
        // memcached refuses an empty value before it looks at the CAS.
        if it.value().is_empty() {
            return Err(DeltaOutcome::NonNumeric);
        }
        if let Some(want) = cmd.compare_cas {
            if want != 0 && want != it.cas() {
                return Err(DeltaOutcome::Exists);
            }
        }
        let n = numeric::parse_stored(it.value()).ok_or(DeltaOutcome::NonNumeric)?;
        let n = numeric::apply_delta(n, cmd.delta, cmd.incr);
        let value = numeric::render(n, it.value().len());
        // memcached rewrites a number that still fits in place, keeping the item's
        // meta state (stale, win token, binary key); a longer one goes into a new
        // item, which starts without it.
        let in_place = value.len() <= it.value().len();
        let bits = if in_place {
            it.bits() & Bits::LOGICAL
        } else {
            0
        };
        let (cas, version) = self.stamp(cmd.new_cas);
        Ok((
            ItemState {
                value: Bytes::from(value),
                flags: it.flags(),
                exptime: it.exptime(),
                cas,
                version,
                bits,
            },
            n,
            in_place,
        ))
    }

    /// `touch`: new TTL, same value and CAS. Returns the item when it existed.
    /// Like memcached's `item_touch`, which fetches the item with an LRU bump, it
    /// marks the item fetched (visible through meta `h` and `me`).
    pub fn touch(&self, key: &[u8], exptime: i64) -> Option<ItemView> {
        self.stats.bump(|c| &c.cmd_touch);
        let hit = self.touch_inner(key, exptime);
        if hit.is_some() {
            self.stats.bump(|c| &c.touch_hits);
        } else {
            self.stats.bump(|c| &c.touch_misses);
        }
        hit
    }

    fn touch_inner(&self, key: &[u8], exptime: i64) -> Option<ItemView> {
        let now = self.now();
        let exptime = self.clock.expiry(exptime);
        let res = self.store.modify(key, now, |old| match old {
            None => (Change::Keep, None),
            Some(it) => {
                let view = ItemView::of(it);
                let mut state = it.state();
                // Same CAS, a new version (stamped by the store).
                state.version = 0;
                state.exptime = exptime;
                it.mark_accessed(now, true);
                (Change::Put(state, Op::Touch), Some(view))
            }
        });
        res.ok().and_then(|(v, _)| v)
    }

    /// `flush_all [delay]`: delay <= 0 flushes now; otherwise at `realtime(delay)`.
    pub fn flush_all(&self, delay: i64) {
        self.stats.bump(|c| &c.cmd_flush);
        let now = self.now();
        let at = if delay > 0 {
            self.clock.expiry(delay)
        } else {
            now
        };
        self.store.flush(at, now);
    }
}

/// The store change for an incr/decr result: in place (keeping the item's
/// fetched bit and recency) when the number still fits, else a new version.
fn delta_change(state: ItemState, in_place: bool) -> Change {
    if in_place {
        Change::Rewrite(state)
    } else {
        Change::Put(state, Op::Store)
    }
}

/// The clock value unit tests freeze time at.
#[cfg(test)]
pub(crate) const TEST_NOW: u32 = 1_800_000_000;

#[cfg(test)]
impl Engine {
    /// An engine for unit tests: clock frozen at [`TEST_NOW`], 16 MiB of item
    /// memory with eviction, 1 MiB items, CAS on, publishing on `stream`.
    pub(crate) fn for_tests(stream: Arc<MutationStream>) -> Engine {
        Engine::new(
            EngineConfig {
                store: StoreConfig {
                    wall_clock: false,
                    ..StoreConfig::standalone(1 << 24, true, true)
                },
                item_size_max: 1 << 20,
            },
            Arc::new(Clock::fixed(TEST_NOW)),
            Arc::new(Stats::new()),
            stream,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u32 = TEST_NOW;

    fn engine() -> Engine {
        Engine::for_tests(Arc::new(MutationStream::new()))
    }

    fn set(e: &Engine, mode: StoreMode, key: &str, val: &str) -> StoreOutcome {
        e.store_item(StoreCmd::new(
            mode,
            key.as_bytes(),
            0,
            0,
            Bytes::copy_from_slice(val.as_bytes()),
        ))
    }

    #[test]
    fn failed_add_keeps_value_ttl_and_cas() {
        let e = engine();
        let mut cmd = StoreCmd::new(StoreMode::Set, b"lock", 3, 100, Bytes::from_static(b"a"));
        let StoreOutcome::Stored { cas } = e.store_item(cmd.clone()) else {
            panic!("stored")
        };
        cmd.mode = StoreMode::Add;
        cmd.exptime = 5;
        cmd.value = Bytes::from_static(b"b");
        assert_eq!(e.store_item(cmd), StoreOutcome::NotStored);
        let v = e.get(b"lock").expect("hit");
        assert_eq!(
            (v.value.as_ref(), v.flags, v.exptime, v.cas),
            (&b"a"[..], 3, NOW + 100, cas)
        );
    }

    #[test]
    fn cas_rules() {
        let e = engine();
        let StoreOutcome::Stored { cas } = set(&e, StoreMode::Set, "k", "a") else {
            panic!()
        };
        let mut c = StoreCmd::new(StoreMode::Set, b"k", 0, 0, Bytes::from_static(b"b"));
        c.compare_cas = Some(0);
        assert_eq!(e.store_item(c.clone()), StoreOutcome::Exists);
        c.compare_cas = Some(cas + 1);
        assert_eq!(e.store_item(c.clone()), StoreOutcome::Exists);
        c.compare_cas = Some(cas);
        assert!(matches!(
            e.store_item(c.clone()),
            StoreOutcome::Stored { .. }
        ));
        c.key = b"missing";
        assert_eq!(e.store_item(c), StoreOutcome::NotFound);
        let s = e.stats.snapshot();
        assert_eq!((s.cas_hits, s.cas_badval, s.cas_misses), (1, 2, 1));
    }

    #[test]
    fn touch_and_gat_keep_cas() {
        let e = engine();
        let StoreOutcome::Stored { cas } = set(&e, StoreMode::Set, "k", "a") else {
            panic!()
        };
        assert_eq!(e.touch(b"k", 50).map(|v| v.cas), Some(cas));
        assert_eq!(e.get_and_touch(b"k", 60).map(|v| v.cas), Some(cas));
        let v = e.get(b"k").expect("hit");
        assert_eq!((v.cas, v.exptime), (cas, NOW + 60));
    }

    #[test]
    fn append_keeps_flags_and_ttl() {
        let e = engine();
        e.store_item(StoreCmd::new(
            StoreMode::Set,
            b"a",
            5,
            0,
            Bytes::from_static(b"b"),
        ));
        e.store_item(StoreCmd::new(
            StoreMode::Append,
            b"a",
            9,
            100,
            Bytes::from_static(b"cd"),
        ));
        e.store_item(StoreCmd::new(
            StoreMode::Prepend,
            b"a",
            0,
            0,
            Bytes::from_static(b"z"),
        ));
        let v = e.get(b"a").expect("hit");
        assert_eq!((v.value.as_ref(), v.flags, v.exptime), (&b"zbcd"[..], 5, 0));
        assert_eq!(
            set(&e, StoreMode::Append, "nope", "x"),
            StoreOutcome::NotStored
        );
    }

    #[test]
    fn header_cas_turns_add_and_replace_into_cas_stores() {
        let e = engine();
        let add = |key: &'static [u8], cas: u64| {
            e.store_item(
                StoreCmd::new(StoreMode::Add, key, 2, 0, Bytes::from_static(b"n"))
                    .with_header_cas(cas),
            )
        };
        assert_eq!(add(b"k", 777), StoreOutcome::NotFound);
        let StoreOutcome::Stored { cas } = set(&e, StoreMode::Set, "k", "a") else {
            panic!()
        };
        assert_eq!(add(b"k", cas + 1), StoreOutcome::Exists);
        assert!(matches!(add(b"k", cas), StoreOutcome::Stored { .. }));
        assert_eq!(e.get(b"k").expect("hit").value.as_ref(), b"n");
        assert_eq!(add(b"k", 0), StoreOutcome::NotStored);
        let rep = StoreCmd::new(StoreMode::Replace, b"gone", 0, 0, Bytes::new()).with_header_cas(5);
        assert_eq!(e.store_item(rep), StoreOutcome::NotFound);
        let app = StoreCmd::new(StoreMode::Append, b"k", 0, 0, Bytes::new()).with_header_cas(5);
        assert_eq!((app.mode, app.compare_cas), (StoreMode::Append, Some(5)));
    }

    #[test]
    fn append_beyond_item_size_is_not_stored() {
        let e = engine();
        let big = Bytes::from(vec![b'x'; 1_000_000]);
        e.store_item(StoreCmd::new(StoreMode::Set, b"a", 0, 0, big));
        for mode in [StoreMode::Append, StoreMode::Prepend] {
            let more = Bytes::from(vec![b'y'; 100_000]);
            assert_eq!(
                e.store_item(StoreCmd::new(mode, b"a", 0, 0, more)),
                StoreOutcome::NotStored
            );
        }
        assert_eq!(e.get(b"a").expect("kept").value.len(), 1_000_000);
    }

    #[test]
    fn incr_decr_wrap_saturate_pad() {
        let e = engine();
        set(&e, StoreMode::Set, "n", "100");
        assert!(matches!(
            e.delta(DeltaCmd::new(b"n", false, 1)),
            DeltaOutcome::Value { value: 99, .. }
        ));
        assert_eq!(e.get(b"n").expect("hit").value.as_ref(), b"99 ");
        set(&e, StoreMode::Set, "m", "18446744073709551615");
        assert!(matches!(
            e.delta(DeltaCmd::new(b"m", true, 1)),
            DeltaOutcome::Value { value: 0, .. }
        ));
        assert!(matches!(
            e.delta(DeltaCmd::new(b"m", false, 5)),
            DeltaOutcome::Value { value: 0, .. }
        ));
        set(&e, StoreMode::Set, "x", "abc");
        assert_eq!(
            e.delta(DeltaCmd::new(b"x", true, 1)),
            DeltaOutcome::NonNumeric
        );
        assert_eq!(
            e.delta(DeltaCmd::new(b"none", true, 1)),
            DeltaOutcome::NotFound
        );
    }

    #[test]
    fn too_large_set_unlinks_old_item() {
        let e = engine();
        set(&e, StoreMode::Set, "big", "small");
        let huge = Bytes::from(vec![b'x'; 1 << 20]);
        assert_eq!(
            e.store_item(StoreCmd::new(StoreMode::Set, b"big", 0, 0, huge)),
            StoreOutcome::TooLarge
        );
        assert!(e.get(b"big").is_none());
        // The largest value memcached accepts with a 2-byte key and CAS on.
        assert!(e.fits(2, 1_048_515));
        assert!(!e.fits(2, 1_048_516));
        assert!(e.fits(250, 1_048_267));
    }

    #[test]
    fn absolute_past_exptime_expires_at_once() {
        let e = engine();
        let c = StoreCmd::new(StoreMode::Add, b"probe", 0, 2_678_400, Bytes::new());
        assert!(matches!(
            e.store_item(c.clone()),
            StoreOutcome::Stored { .. }
        ));
        assert!(e.get(b"probe").is_none());
        assert!(
            matches!(e.store_item(c), StoreOutcome::Stored { .. }),
            "add succeeds again: the probe vanished"
        );
    }
}
