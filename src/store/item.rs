//! One cached item and its compact metadata.

use crate::mutation::ItemState;
use bytes::Bytes;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Per-item state bits.
///
/// `FETCHED` and `ACCESSED` are local bookkeeping (meta `h`, the CLOCK bit). `STALE`
/// and `WIN_SENT` are meta-protocol state (`md I`, recache win tokens) and
/// `BINARY_KEY` marks an item stored by `ms ... b` (meta replies show its key in
/// base64): all three are part of the item's replicated state, because a client
/// reading from a twin must see the same `X`/`W`/`Z` flags and key form.
pub struct Bits;
impl Bits {
    pub const FETCHED: u8 = 1;
    pub const ACCESSED: u8 = 2;
    pub const STALE: u8 = 4;
    pub const WIN_SENT: u8 = 8;
    pub const BINARY_KEY: u8 = 16;
    /// Bits that belong to the item's logical state (shipped in mutations).
    pub const LOGICAL: u8 = Self::STALE | Self::WIN_SENT | Self::BINARY_KEY;
}

#[derive(Debug)]
pub struct Item {
    pub value: Bytes,
    pub flags: u32,
    /// Absolute Unix expiry; 0 = never.
    pub exptime: u32,
    pub cas: u64,
    /// Sequence number of the mutation that produced this version.
    pub seq: u64,
    /// Unix time of the last write (for delayed `flush_all`).
    pub stored_at: u32,
    /// Identity in the eviction queue; kept across overwrites of the same key.
    pub(crate) qid: u64,
    last_access: AtomicU32,
    bits: AtomicU8,
}

impl Item {
    pub(crate) fn new(state: ItemState, seq: u64, now: u32, qid: u64) -> Self {
        Item {
            value: state.value,
            flags: state.flags,
            exptime: state.exptime,
            cas: state.cas,
            seq,
            stored_at: now,
            qid,
            last_access: AtomicU32::new(now),
            bits: AtomicU8::new(state.bits & Bits::LOGICAL),
        }
    }

    pub fn bits(&self) -> u8 {
        self.bits.load(Ordering::Relaxed)
    }

    pub fn has(&self, bit: u8) -> bool {
        self.bits() & bit != 0
    }

    /// Unix time of the last access.
    pub fn last_access(&self) -> u32 {
        self.last_access.load(Ordering::Relaxed)
    }

    /// Record a read or a "ping" (failed add): recency for eviction, fetched bit.
    pub fn mark_accessed(&self, now: u32, fetched: bool) {
        let add = if fetched {
            Bits::ACCESSED | Bits::FETCHED
        } else {
            Bits::ACCESSED
        };
        if self.bits() & add != add {
            self.bits.fetch_or(add, Ordering::Relaxed);
        }
        if self.last_access() != now {
            self.last_access.store(now, Ordering::Relaxed);
        }
    }

    /// Clear and return the CLOCK bit.
    pub(crate) fn take_accessed(&self) -> bool {
        self.bits.fetch_and(!Bits::ACCESSED, Ordering::Relaxed) & Bits::ACCESSED != 0
    }

    /// The item's logical state, as published in mutations.
    pub fn state(&self) -> ItemState {
        ItemState {
            value: self.value.clone(),
            flags: self.flags,
            exptime: self.exptime,
            cas: self.cas,
            bits: self.bits() & Bits::LOGICAL,
        }
    }
}

/// An owned copy of an item, handed out by reads so no lock guard leaves the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemView {
    pub value: Bytes,
    pub flags: u32,
    pub exptime: u32,
    pub cas: u64,
    /// Unix time of the previous access (before this read).
    pub last_access: u32,
    /// State bits before this read (fetched, stale, win-sent).
    pub bits: u8,
}

impl ItemView {
    pub fn of(item: &Item) -> Self {
        ItemView {
            value: item.value.clone(),
            flags: item.flags,
            exptime: item.exptime,
            cas: item.cas,
            last_access: item.last_access(),
            bits: item.bits(),
        }
    }
}
