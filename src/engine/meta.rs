//! Meta-protocol semantics that the classic commands do not have: win tokens
//! and recache (`mg N`/`R`), stale-while-revalidate (`md I`), TTL changes
//! applied in request order (`mg T`, `ma N`/`T`), and `me`'s debug view.
//!
//! Why in the engine and not in the session: these are state changes of the
//! item (stale and win-token bits, CAS, expiry) and must go through
//! [`Store::modify`](crate::store::Store::modify) like every other write, so
//! they land in the mutation stream and a twin or a restart reproduces them.
//! `ms` needs nothing here beyond [`Engine::store_item`]; `ma` shares
//! [`Engine::delta`]'s arithmetic.
//!
//! Order matters in meta: memcached walks the flags left to right, so `mg k t
//! T50` reports the TTL from before the touch, and `R` compares against the
//! expiry as `T` left it. Commands therefore pass their TTL-changing flags as
//! an ordered list of [`TtlStep`]s, and results carry a [`TtlTrace`] of the
//! expiry after each step for the reply's `t` flags.

use super::{DeltaCmd, DeltaOutcome, Engine, ITEM_HEADER};
use crate::mutation::{ItemState, Op};
use crate::store::{Bits, Change, ItemView, Lookup, StoreError};
use bytes::Bytes;

/// A flag that changes (or looks at) the expiry, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlStep {
    /// `T<ttl>`: set the TTL.
    Touch(i64),
    /// `N<ttl>`: the TTL of an item this command creates (ignored on a hit).
    Vivify(i64),
    /// `R<ttl>` (`mg`): win the recache token when less than this is left.
    Recache(i64),
}

/// At most one of each step (duplicate flags are rejected).
pub const MAX_STEPS: usize = 3;

/// The expiry before a command and after each of its [`TtlStep`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TtlTrace {
    pub start: u32,
    pub after: [u32; MAX_STEPS],
}

impl TtlTrace {
    fn flat(exptime: u32) -> Self {
        TtlTrace {
            start: exptime,
            after: [exptime; MAX_STEPS],
        }
    }

    /// The expiry once `steps` steps have been applied.
    pub fn at(&self, steps: usize) -> u32 {
        match steps {
            0 => self.start,
            n => self.after[n.min(MAX_STEPS) - 1],
        }
    }
}

/// `mg`.
#[derive(Debug, Clone, Copy)]
pub struct MetaGet<'a> {
    pub key: &'a [u8],
    /// Mark the item fetched and recently used (false with `u`).
    pub bump: bool,
    /// `N` was sent: create an empty item on a miss.
    pub vivify: bool,
    pub steps: &'a [TtlStep],
    /// The reply will be an error (an over-long opaque found while answering):
    /// memcached has then applied the steps but neither hands out a win token
    /// nor counts the command.
    pub aborted: bool,
}

/// An `mg` hit (or a created item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaHit {
    /// The item as it was before this command (for a created item: empty, no TTL).
    pub item: ItemView,
    pub created: bool,
    pub ttl: TtlTrace,
    /// `W`: this client won the right to recache.
    pub win: bool,
    /// `Z`: a win token had already been handed out.
    pub token_sent: bool,
    /// `X`: the item is stale (`md I`, `ms I`).
    pub stale: bool,
    /// The command changed the item (so it wrote a mutation).
    pub changed: bool,
    /// The time the command ran at, for `t` and `l`.
    pub now: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaGetOutcome {
    Hit(MetaHit),
    Miss,
    /// The command would have changed the item but persistence refuses writes.
    Unavailable,
}

/// `md`.
#[derive(Debug, Clone, Copy)]
pub struct MetaDelete<'a> {
    pub key: &'a [u8],
    /// `C<cas>`: act only when the item's CAS is exactly this.
    pub compare_cas: Option<u64>,
    /// `I`: mark stale instead of deleting.
    pub invalidate: bool,
    /// `T<ttl>` with `I`: the stale item's new TTL.
    pub ttl: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaDeleteOutcome {
    Deleted,
    /// Marked stale (`I`): new CAS, win token free again.
    Invalidated,
    NotFound,
    Exists,
    Unavailable,
}

/// `ma`.
#[derive(Debug, Clone, Copy)]
pub struct MetaArith<'a> {
    pub key: &'a [u8],
    pub incr: bool,
    pub delta: u64,
    /// `C<cas>` (0 matches anything; ignored when creating).
    pub compare_cas: Option<u64>,
    /// `N` with `J`: create the item holding this number on a miss.
    pub create: Option<u64>,
    pub steps: &'a [TtlStep],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaArithOutcome {
    Value {
        value: u64,
        cas: u64,
        created: bool,
        ttl: TtlTrace,
        now: u32,
    },
    NotFound,
    NonNumeric,
    Exists,
    NoMemory,
    Unavailable,
}

/// What `me` shows about an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaDebug {
    pub item: ItemView,
    /// memcached's item size (`ITEM_ntotal`) and slab class for it.
    pub size: usize,
    pub class: u32,
    pub now: u32,
}

impl Engine {
    /// `mg`: read, optionally create (`N`), touch (`T`), and hand out win tokens
    /// (`N` on create, `R` when little TTL is left, the first read of a stale item).
    pub fn meta_get(&self, cmd: &MetaGet<'_>) -> MetaGetOutcome {
        let now = self.now();
        if !cmd.vivify && cmd.steps.is_empty() {
            // The common read: no lock, unless a stale item's token is still free.
            match self.store.get(cmd.key, now, cmd.bump) {
                Lookup::Hit(view) => {
                    let stale = view.bits & Bits::STALE != 0;
                    let token_sent = view.bits & Bits::WIN_SENT != 0;
                    if !stale || token_sent || cmd.aborted {
                        if !cmd.aborted {
                            self.count_meta_get(true, false);
                        }
                        return MetaGetOutcome::Hit(MetaHit {
                            ttl: TtlTrace::flat(view.exptime),
                            item: view,
                            created: false,
                            win: false,
                            token_sent,
                            stale,
                            changed: false,
                            now,
                        });
                    }
                    return self.meta_get_locked(cmd, now, Some(view));
                }
                miss => {
                    if !cmd.aborted {
                        self.count_meta_get(false, false);
                        match miss {
                            Lookup::Expired => self.stats.bump(|c| &c.get_expired),
                            Lookup::Flushed => self.stats.bump(|c| &c.get_flushed),
                            _ => {}
                        }
                    }
                    return MetaGetOutcome::Miss;
                }
            }
        }
        self.meta_get_locked(cmd, now, None)
    }

    /// `mg` under the key's lock. `prior` is the view a lock-free read already
    /// took (and marked fetched); it is reported when the item is still that version.
    fn meta_get_locked(
        &self,
        cmd: &MetaGet<'_>,
        now: u32,
        prior: Option<ItemView>,
    ) -> MetaGetOutcome {
        let writable = self.stream().accepts_writes();
        let res = self.store.modify(cmd.key, now, |old| match old {
            None if cmd.vivify => {
                if !writable {
                    return (Change::Keep, MetaGetOutcome::Unavailable);
                }
                let (cas, version) = self.stamp(None);
                let mut ttl = TtlTrace::flat(0);
                let mut exptime = 0;
                let mut win = false;
                for (i, step) in cmd.steps.iter().take(MAX_STEPS).enumerate() {
                    match *step {
                        TtlStep::Touch(t) => exptime = self.clock.expiry(t),
                        TtlStep::Vivify(t) => {
                            exptime = self.clock.expiry(t);
                            win = true;
                        }
                        TtlStep::Recache(_) => {}
                    }
                    ttl.after[i] = exptime;
                }
                let win = win && !cmd.aborted;
                let state = ItemState {
                    value: Bytes::new(),
                    flags: 0,
                    exptime,
                    cas,
                    version,
                    bits: if win { Bits::WIN_SENT } else { 0 },
                };
                let item = ItemView {
                    value: Bytes::new(),
                    flags: 0,
                    exptime: 0,
                    cas,
                    last_access: now,
                    bits: 0,
                };
                let hit = MetaHit {
                    item,
                    created: true,
                    ttl,
                    win,
                    token_sent: false,
                    stale: false,
                    changed: true,
                    now,
                };
                (Change::Put(state, Op::Store), MetaGetOutcome::Hit(hit))
            }
            None => (Change::Keep, MetaGetOutcome::Miss),
            Some(it) => {
                let item = match prior {
                    Some(p) if p.cas == it.cas() => p,
                    _ => ItemView::of(it),
                };
                let token_sent = it.has(Bits::WIN_SENT);
                let stale = it.has(Bits::STALE);
                let mut ttl = TtlTrace::flat(it.exptime());
                let mut exptime = it.exptime();
                let mut touched = false;
                let mut win = false;
                for (i, step) in cmd.steps.iter().take(MAX_STEPS).enumerate() {
                    match *step {
                        TtlStep::Touch(t) => {
                            exptime = self.clock.expiry(t);
                            touched = true;
                        }
                        TtlStep::Vivify(_) => {}
                        TtlStep::Recache(r) => {
                            if !token_sent && exptime != 0 && exptime < self.clock.expiry(r) {
                                win = true;
                            }
                        }
                    }
                    ttl.after[i] = exptime;
                }
                // The first reader of a stale item wins the right to recache it.
                if stale && !token_sent {
                    win = true;
                }
                let win = win && !cmd.aborted;
                let changed = touched || win;
                if changed && !writable {
                    return (Change::Keep, MetaGetOutcome::Unavailable);
                }
                if cmd.bump {
                    it.mark_accessed(now, true);
                }
                let change = if changed {
                    let mut state = it.state();
                    // A touch: same CAS, a new version (stamped by the store).
                    state.version = 0;
                    state.exptime = exptime;
                    if win {
                        state.bits |= Bits::WIN_SENT;
                    }
                    Change::Put(state, Op::Touch)
                } else {
                    Change::Keep
                };
                let hit = MetaHit {
                    item,
                    created: false,
                    ttl,
                    win,
                    token_sent,
                    stale,
                    changed,
                    now,
                };
                (change, MetaGetOutcome::Hit(hit))
            }
        });
        // Out of memory only happens when creating: memcached then answers a miss.
        let outcome = match res {
            Ok((o, _)) => o,
            Err(StoreError::NoMemory) => MetaGetOutcome::Miss,
        };
        if cmd.bump && matches!(&outcome, MetaGetOutcome::Hit(h) if h.created) {
            // memcached bumps the item it just created like any other hit, which
            // marks it fetched; a new item cannot carry that bit in its state.
            let _ = self.store.get(cmd.key, now, true);
        }
        if !cmd.aborted {
            let touched = cmd.steps.iter().any(|s| matches!(s, TtlStep::Touch(_)));
            match &outcome {
                MetaGetOutcome::Hit(_) => self.count_meta_get(true, touched),
                MetaGetOutcome::Miss => self.count_meta_get(false, false),
                MetaGetOutcome::Unavailable => {}
            }
        }
        outcome
    }

    /// memcached counts an `mg` that touched a hit as a touch, everything else as a get.
    fn count_meta_get(&self, hit: bool, touched: bool) {
        match (hit, touched) {
            (true, true) => {
                self.stats.bump(|c| &c.cmd_touch);
                self.stats.bump(|c| &c.touch_hits);
            }
            (true, false) => {
                self.stats.bump(|c| &c.cmd_get);
                self.stats.bump(|c| &c.get_hits);
            }
            (false, _) => {
                self.stats.bump(|c| &c.cmd_get);
                self.stats.bump(|c| &c.get_misses);
            }
        }
    }

    /// `md`: delete, or with `I` mark stale: new CAS, win token free again, TTL
    /// kept unless `T` is given.
    pub fn meta_delete(&self, cmd: &MetaDelete<'_>) -> MetaDeleteOutcome {
        if !self.stream().accepts_writes() {
            return MetaDeleteOutcome::Unavailable;
        }
        let res = self.store.modify(cmd.key, self.now(), |old| match old {
            None => (Change::Keep, MetaDeleteOutcome::NotFound),
            Some(it) => {
                if cmd.compare_cas.is_some_and(|c| c != it.cas()) {
                    return (Change::Keep, MetaDeleteOutcome::Exists);
                }
                if !cmd.invalidate {
                    return (Change::Remove, MetaDeleteOutcome::Deleted);
                }
                let mut state = it.state();
                if let Some(t) = cmd.ttl {
                    state.exptime = self.clock.expiry(t);
                }
                state.bits = (state.bits | Bits::STALE) & !Bits::WIN_SENT;
                (state.cas, state.version) = self.stamp(None);
                (
                    Change::Put(state, Op::Touch),
                    MetaDeleteOutcome::Invalidated,
                )
            }
        });
        let outcome = res
            .map(|(o, _)| o)
            .unwrap_or(MetaDeleteOutcome::Unavailable);
        match outcome {
            MetaDeleteOutcome::Deleted => self.stats.bump(|c| &c.delete_hits),
            MetaDeleteOutcome::NotFound | MetaDeleteOutcome::Exists => {
                self.stats.bump(|c| &c.delete_misses)
            }
            _ => {}
        }
        outcome
    }

    /// `ma`: incr/decr with optional create (`N`/`J`), CAS check and TTL steps.
    /// A created item holds `J` exactly; delta and mode do not apply to it.
    pub fn meta_arith(&self, cmd: &MetaArith<'_>) -> MetaArithOutcome {
        if !self.stream().accepts_writes() {
            return MetaArithOutcome::Unavailable;
        }
        let now = self.now();
        let mut delta = DeltaCmd::new(cmd.key, cmd.incr, cmd.delta);
        delta.compare_cas = cmd.compare_cas;
        let walk = |start: u32, created: bool| {
            let mut ttl = TtlTrace::flat(start);
            let mut exptime = start;
            for (i, step) in cmd.steps.iter().take(MAX_STEPS).enumerate() {
                match *step {
                    TtlStep::Touch(t) => exptime = self.clock.expiry(t),
                    TtlStep::Vivify(t) if created => exptime = self.clock.expiry(t),
                    _ => {}
                }
                ttl.after[i] = exptime;
            }
            (ttl, exptime)
        };
        let res = self.store.modify(cmd.key, now, |old| match old {
            None => match cmd.create {
                Some(initial) => {
                    let (ttl, exptime) = walk(0, true);
                    let (cas, version) = self.stamp(None);
                    let state = ItemState {
                        value: Bytes::from(super::numeric::render(initial, 0)),
                        flags: 0,
                        exptime,
                        cas,
                        version,
                        bits: 0,
                    };
                    (
                        Change::Put(state, Op::Store),
                        MetaArithOutcome::Value {
                            value: initial,
                            cas,
                            created: true,
                            ttl,
                            now,
                        },
                    )
                }
                None => (Change::Keep, MetaArithOutcome::NotFound),
            },
            Some(it) => match self.delta_state(it, &delta) {
                Ok((mut state, value, in_place)) => {
                    let (ttl, exptime) = walk(it.exptime(), false);
                    // memcached applies `T` to the item it modified in place; a
                    // number that grew went into a new item, and the TTL change
                    // lands on the replaced one: shown in the reply, not kept.
                    if in_place {
                        state.exptime = exptime;
                    }
                    let cas = state.cas;
                    (
                        super::delta_change(state, in_place),
                        MetaArithOutcome::Value {
                            value,
                            cas,
                            created: false,
                            ttl,
                            now,
                        },
                    )
                }
                Err(DeltaOutcome::Exists) => (Change::Keep, MetaArithOutcome::Exists),
                Err(_) => (Change::Keep, MetaArithOutcome::NonNumeric),
            },
        });
        let outcome = match res {
            Ok((o, _)) => o,
            Err(StoreError::NoMemory) => MetaArithOutcome::NoMemory,
        };
        match (&outcome, cmd.incr) {
            (MetaArithOutcome::Value { created: false, .. }, true) => {
                self.stats.bump(|c| &c.incr_hits)
            }
            (MetaArithOutcome::Value { created: false, .. }, false) => {
                self.stats.bump(|c| &c.decr_hits)
            }
            (MetaArithOutcome::NotFound, true) => self.stats.bump(|c| &c.incr_misses),
            (MetaArithOutcome::NotFound, false) => self.stats.bump(|c| &c.decr_misses),
            _ => {}
        }
        outcome
    }

    /// `me`: the item as memcached's debug line shows it, without touching it.
    /// Counted as `cmd_meta`, the only meta command memcached 1.6.18 counts there.
    pub fn meta_debug(&self, key: &[u8]) -> Option<MetaDebug> {
        self.stats.bump(|c| &c.cmd_meta);
        let now = self.now();
        match self.store.get(key, now, false) {
            Lookup::Hit(item) => {
                let size = self.item_total(key.len(), item.value.len(), item.flags);
                Some(MetaDebug {
                    class: slab_class(size),
                    size,
                    item,
                    now,
                })
            }
            _ => None,
        }
    }

    /// memcached's `ITEM_ntotal`: header, key + NUL, value + CRLF, client
    /// flags when non-zero, CAS when enabled.
    pub fn item_total(&self, key_len: usize, value_len: usize, flags: u32) -> usize {
        let cas = if self.store.use_cas() { 8 } else { 0 };
        let flags = if flags != 0 { 4 } else { 0 };
        ITEM_HEADER + key_len + 1 + value_len + 2 + flags + cas
    }

    /// `ms` whose value is over `-I`: refused, and unlike the classic `set`
    /// rule, memcached's `ms` unlinks the old item whatever the mode.
    pub fn meta_too_large(&self, key: &[u8]) {
        self.stats.bump(|c| &c.store_too_large);
        let _ = self.store.modify(key, self.now(), |old| {
            let change = if old.is_some() {
                Change::Remove
            } else {
                Change::Keep
            };
            (change, ())
        });
    }
}

/// memcached's default slab class for an item of `size` bytes: classes start
/// at 96 bytes and grow by 1.25, 8-byte aligned, up to 512 KiB chunks.
pub fn slab_class(size: usize) -> u32 {
    const CHUNK_MAX: usize = 512 * 1024;
    let mut chunk = 96usize;
    let mut class = 1;
    while chunk < size && chunk < CHUNK_MAX {
        class += 1;
        chunk = (chunk * 5 / 4).div_ceil(8) * 8;
        if chunk * 5 / 4 > CHUNK_MAX {
            chunk = CHUNK_MAX;
        }
    }
    class
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::{StoreCmd, StoreMode, StoreOutcome};
    use crate::mutation::MutationStream;

    use std::sync::Arc;

    const NOW: u32 = crate::engine::TEST_NOW;

    fn engine() -> (Engine, Arc<MutationStream>) {
        let stream = Arc::new(MutationStream::new());
        (Engine::for_tests(stream.clone()), stream)
    }

    fn set(e: &Engine, key: &[u8], exptime: i64) -> u64 {
        let c = StoreCmd::new(StoreMode::Set, key, 0, exptime, Bytes::from_static(b"hi"));
        match e.store_item(c) {
            StoreOutcome::Stored { cas } => cas,
            o => panic!("{o:?}"),
        }
    }

    fn get<'a>(key: &'a [u8], steps: &'a [TtlStep]) -> MetaGet<'a> {
        MetaGet {
            key,
            bump: true,
            vivify: steps.iter().any(|s| matches!(s, TtlStep::Vivify(_))),
            steps,
            aborted: false,
        }
    }

    fn hit(o: MetaGetOutcome) -> MetaHit {
        match o {
            MetaGetOutcome::Hit(h) => h,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn invalidate_then_one_winner_then_store_clears() {
        let (e, stream) = engine();
        let sub = stream.subscribe(64, false);
        let cas = set(&e, b"k", 100);
        let md = MetaDelete {
            key: b"k",
            compare_cas: None,
            invalidate: true,
            ttl: Some(30),
        };
        assert_eq!(e.meta_delete(&md), MetaDeleteOutcome::Invalidated);
        let first = hit(e.meta_get(&get(b"k", &[])));
        assert!(first.stale && first.win && !first.token_sent);
        assert!(first.item.cas > cas);
        assert_eq!(first.ttl.at(0), NOW + 30);
        let second = hit(e.meta_get(&get(b"k", &[])));
        assert!(second.stale && !second.win && second.token_sent);
        // The stale and win state travelled in the mutation stream.
        let recs: Vec<_> = sub.rx.try_iter().collect();
        let last = recs.last().and_then(|m| m.item.clone()).expect("item");
        assert_eq!(last.bits & Bits::LOGICAL, Bits::STALE | Bits::WIN_SENT);
        assert_eq!(recs.last().map(|m| m.op), Some(Op::Touch));
        set(&e, b"k", 0);
        let after = hit(e.meta_get(&get(b"k", &[])));
        assert!(!after.stale && !after.win && !after.token_sent);
    }

    #[test]
    fn steps_apply_in_order() {
        let (e, _) = engine();
        set(&e, b"k", 100);
        // `R` sees the expiry `T` left: a 10 s TTL is under the 50 s threshold.
        let steps = [TtlStep::Touch(10), TtlStep::Recache(50)];
        let h = hit(e.meta_get(&get(b"k", &steps)));
        assert_eq!((h.ttl.at(0), h.ttl.at(1)), (NOW + 100, NOW + 10));
        assert!(h.win);
        // No recache win on items without TTL.
        set(&e, b"n", 0);
        assert!(!hit(e.meta_get(&get(b"n", &[TtlStep::Recache(50)]))).win);
    }

    #[test]
    fn vivify_wins_once() {
        let (e, _) = engine();
        let steps = [TtlStep::Vivify(30), TtlStep::Touch(40)];
        let h = hit(e.meta_get(&get(b"v", &steps)));
        assert!(h.created && h.win);
        assert_eq!(
            (h.ttl.at(0), h.ttl.at(1), h.ttl.at(2)),
            (0, NOW + 30, NOW + 40)
        );
        let again = hit(e.meta_get(&get(b"v", &[TtlStep::Vivify(30)])));
        assert!(!again.created && !again.win && again.token_sent);
        assert_eq!(again.item.exptime, NOW + 40);
    }

    #[test]
    fn aborted_get_applies_steps_but_takes_no_token() {
        let (e, _) = engine();
        let mut g = get(b"v", &[]);
        g.vivify = true;
        g.aborted = true;
        let h = hit(e.meta_get(&g));
        assert!(h.created && !h.win);
        let next = hit(e.meta_get(&get(b"v", &[])));
        assert!(!next.token_sent && !next.win);
    }

    #[test]
    fn arith_create_and_ttl() {
        let (e, _) = engine();
        let steps = [TtlStep::Vivify(30), TtlStep::Touch(40)];
        let ma = MetaArith {
            key: b"n",
            incr: false,
            delta: 5,
            compare_cas: Some(1),
            create: Some(7),
            steps: &steps,
        };
        match e.meta_arith(&ma) {
            MetaArithOutcome::Value {
                value: 7,
                created: true,
                ttl,
                ..
            } => assert_eq!(ttl.at(2), NOW + 40),
            o => panic!("{o:?}"),
        }
        let ma = MetaArith {
            compare_cas: None,
            ..ma
        };
        assert!(matches!(
            e.meta_arith(&ma),
            MetaArithOutcome::Value {
                value: 2,
                created: false,
                ..
            }
        ));
        let s = e.stats().snapshot();
        assert_eq!((s.decr_hits, s.decr_misses), (1, 0));
    }

    #[test]
    fn stale_store_with_older_cas_keeps_ttl_and_token() {
        let (e, _) = engine();
        let old = set(&e, b"k", 100);
        e.meta_delete(&MetaDelete {
            key: b"k",
            compare_cas: None,
            invalidate: true,
            ttl: Some(30),
        });
        assert!(hit(e.meta_get(&get(b"k", &[]))).win);
        let mut c = StoreCmd::new(StoreMode::Set, b"k", 0, 0, Bytes::from_static(b"ho"));
        c.compare_cas = Some(old);
        c.invalidate = true;
        assert!(matches!(e.store_item(c), StoreOutcome::Stored { .. }));
        let h = hit(e.meta_get(&get(b"k", &[])));
        assert!(h.stale && h.token_sent && !h.win);
        assert_eq!(h.item.exptime, NOW + 30);
    }

    #[test]
    fn slab_classes() {
        assert_eq!(slab_class(63), 1);
        assert_eq!(slab_class(96), 1);
        assert_eq!(slab_class(97), 2);
        assert!(slab_class(1 << 20) > 30);
    }
}
