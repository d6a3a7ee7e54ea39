//! One cached item: its metadata, key and value in a single allocation.
//!
//! Memory per item decides how many sessions fit in `-m`, so the layout is
//! compact on purpose (issue 6 asks for at most 192 bytes per 100-byte item,
//! index included; memcached's slab chunk for that item is 192 bytes).
//!
//! ```text
//! inline (value <= INLINE_MAX):  [Header 40 B][key][value]
//! external (larger values):      [Header 40 B][Bytes 32 B][key]
//! ```
//!
//! An [`Item`] is a thin owning pointer (8 bytes), and it *is* the table's key:
//! it hashes and compares as its key bytes, so the index holds one pointer per
//! item and nothing else. Small values are copied into the block (a 100-byte
//! session costs one allocation of ~160 bytes); large values keep the `Bytes`
//! the request produced, so a 4 KB session is not copied a second time.
//!
//! Only the access time and the state bits change after creation (atomics,
//! under the shard's read lock); every other change makes a new item.

use crate::mutation::ItemState;
use bytes::Bytes;
use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Values up to this many bytes live inside the item's own allocation.
pub const INLINE_MAX: usize = 1024;

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
    /// A tombstone: the key was deleted (or expired) at `version`; no value.
    /// Kept while replication is on so an older write arriving late loses.
    pub const TOMBSTONE: u8 = 32;
    /// Bits that belong to the item's logical state (shipped in mutations).
    pub const LOGICAL: u8 = Self::STALE | Self::WIN_SENT | Self::BINARY_KEY | Self::TOMBSTONE;
}

/// `vlen` of an item whose value is an external `Bytes`.
const EXTERNAL: u16 = u16::MAX;

// Inline lengths must fit `vlen` below the EXTERNAL marker.
const _: () = assert!(INLINE_MAX < EXTERNAL as usize);

/// Longest key an item holds (memcached's limit is 250 on every protocol).
pub const MAX_KEY: usize = u8::MAX as usize;

#[repr(C)]
struct Header {
    cas: u64,
    /// Sequence number of the mutation that produced this version.
    seq: u64,
    /// The conflict rule's order (`crate::version::Version`); its time part
    /// is also when the item was last written, which decides delayed flushes.
    version: u64,
    flags: u32,
    /// Absolute Unix expiry; 0 = never.
    exptime: u32,
    last_access: AtomicU32,
    /// Inline value length, or [`EXTERNAL`].
    vlen: u16,
    klen: u8,
    bits: AtomicU8,
}

const HEADER: usize = std::mem::size_of::<Header>();
const EXT: usize = std::mem::size_of::<Bytes>();

/// One item. Owns its allocation; not `Clone` (the table holds the only one).
pub struct Item {
    ptr: NonNull<Header>,
}

// SAFETY: the block holds plain data, atomics and (external) a `Bytes`, all of
// which are Send + Sync; mutation after creation goes through the atomics only.
unsafe impl Send for Item {}
unsafe impl Sync for Item {}

/// What to store: key, state, and the bookkeeping the store fills in.
pub(crate) struct NewItem<'a> {
    pub key: &'a [u8],
    pub state: ItemState,
    pub seq: u64,
    pub now: u32,
}

impl Item {
    fn layout(klen: usize, vlen: u16) -> Layout {
        let body = if vlen == EXTERNAL {
            EXT + klen
        } else {
            vlen as usize + klen
        };
        // HEADER is a multiple of 8, so the external `Bytes` is aligned.
        Layout::from_size_align(HEADER + body, std::mem::align_of::<Header>())
            .unwrap_or_else(|_| handle_alloc_error(Layout::new::<Header>()))
    }

    /// Build an item. New items start with the CLOCK bit set, so a fresh
    /// write survives one pass of the eviction hand.
    pub(crate) fn new(n: NewItem<'_>) -> Item {
        let NewItem {
            key,
            state,
            seq,
            now,
        } = n;
        // Keys are at most 250 bytes on every protocol; clamp defensively.
        let key = &key[..key.len().min(MAX_KEY)];
        let inline = state.value.len() <= INLINE_MAX;
        let vlen = if inline {
            state.value.len() as u16
        } else {
            EXTERNAL
        };
        let layout = Self::layout(key.len(), vlen);
        // SAFETY: the layout has a non-zero size (the header).
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw as *mut Header) else {
            handle_alloc_error(layout)
        };
        let header = Header {
            cas: state.cas,
            seq,
            version: state.version,
            flags: state.flags,
            exptime: state.exptime,
            last_access: AtomicU32::new(now),
            vlen,
            klen: key.len() as u8,
            bits: AtomicU8::new((state.bits & Bits::LOGICAL) | Bits::ACCESSED),
        };
        // SAFETY: `raw` is a fresh allocation of `layout`, large enough for the
        // header plus the body laid out as `layout` computed it.
        unsafe {
            ptr.as_ptr().write(header);
            let body = raw.add(HEADER);
            if inline {
                std::ptr::copy_nonoverlapping(key.as_ptr(), body, key.len());
                std::ptr::copy_nonoverlapping(
                    state.value.as_ptr(),
                    body.add(key.len()),
                    state.value.len(),
                );
            } else {
                (body as *mut Bytes).write(state.value);
                std::ptr::copy_nonoverlapping(key.as_ptr(), body.add(EXT), key.len());
            }
        }
        Item { ptr }
    }

    #[inline]
    fn h(&self) -> &Header {
        // SAFETY: `ptr` points to an initialised header for the item's lifetime.
        unsafe { self.ptr.as_ref() }
    }

    #[inline]
    fn body(&self) -> *const u8 {
        // SAFETY: the body follows the header inside the same allocation.
        unsafe { (self.ptr.as_ptr() as *const u8).add(HEADER) }
    }

    #[inline]
    fn is_external(&self) -> bool {
        self.h().vlen == EXTERNAL
    }

    #[inline]
    fn external(&self) -> Option<&Bytes> {
        if self.is_external() {
            // SAFETY: external items store an initialised `Bytes` at the body start.
            Some(unsafe { &*(self.body() as *const Bytes) })
        } else {
            None
        }
    }

    #[inline]
    pub fn key(&self) -> &[u8] {
        let h = self.h();
        let off = if h.vlen == EXTERNAL { EXT } else { 0 };
        // SAFETY: `klen` key bytes were written at this offset by `new`.
        unsafe { std::slice::from_raw_parts(self.body().add(off), h.klen as usize) }
    }

    #[inline]
    pub fn value(&self) -> &[u8] {
        match self.external() {
            Some(b) => b,
            None => {
                let h = self.h();
                // SAFETY: `vlen` value bytes follow the key (see `new`).
                unsafe {
                    std::slice::from_raw_parts(self.body().add(h.klen as usize), h.vlen as usize)
                }
            }
        }
    }

    /// The value as `Bytes`: a refcount for large values, a copy for inline ones.
    pub fn value_bytes(&self) -> Bytes {
        match self.external() {
            Some(b) => b.clone(),
            None => Bytes::copy_from_slice(self.value()),
        }
    }

    #[inline]
    pub fn flags(&self) -> u32 {
        self.h().flags
    }

    #[inline]
    pub fn exptime(&self) -> u32 {
        self.h().exptime
    }

    #[inline]
    pub fn cas(&self) -> u64 {
        self.h().cas
    }

    #[inline]
    pub fn seq(&self) -> u64 {
        self.h().seq
    }

    #[inline]
    pub fn version(&self) -> u64 {
        self.h().version
    }

    /// Unix second of the item's last write (from its version).
    #[inline]
    pub fn stored_at(&self) -> u32 {
        crate::version::Version::from_raw(self.h().version).unix_secs()
    }

    /// Whether this is a tombstone (a deleted key remembered for replication).
    #[inline]
    pub fn is_tombstone(&self) -> bool {
        self.has(Bits::TOMBSTONE)
    }

    /// Bytes of the item's own allocation (header, key, inline value or handle).
    pub fn block_size(&self) -> usize {
        Self::layout(self.h().klen as usize, self.h().vlen).size()
    }

    #[inline]
    pub fn bits(&self) -> u8 {
        self.h().bits.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn has(&self, bit: u8) -> bool {
        self.bits() & bit != 0
    }

    /// Unix time of the last access.
    #[inline]
    pub fn last_access(&self) -> u32 {
        self.h().last_access.load(Ordering::Relaxed)
    }

    /// Record a read or a "ping" (failed add): recency for eviction, fetched bit.
    pub fn mark_accessed(&self, now: u32, fetched: bool) {
        let add = if fetched {
            Bits::ACCESSED | Bits::FETCHED
        } else {
            Bits::ACCESSED
        };
        let h = self.h();
        if h.bits.load(Ordering::Relaxed) & add != add {
            h.bits.fetch_or(add, Ordering::Relaxed);
        }
        if h.last_access.load(Ordering::Relaxed) != now {
            h.last_access.store(now, Ordering::Relaxed);
        }
    }

    /// Clear and return the CLOCK bit.
    pub(crate) fn take_accessed(&self) -> bool {
        self.h().bits.fetch_and(!Bits::ACCESSED, Ordering::Relaxed) & Bits::ACCESSED != 0
    }

    /// The item's logical state, as published in mutations.
    pub fn state(&self) -> ItemState {
        ItemState {
            value: self.value_bytes(),
            flags: self.flags(),
            exptime: self.exptime(),
            cas: self.cas(),
            version: self.version(),
            bits: self.bits() & Bits::LOGICAL,
        }
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        let h = self.h();
        let layout = Self::layout(h.klen as usize, h.vlen);
        // SAFETY: the block was allocated with this layout in `new`; the
        // external `Bytes` (if any) is initialised and dropped exactly once.
        unsafe {
            if h.vlen == EXTERNAL {
                std::ptr::drop_in_place(self.body() as *mut Bytes);
            }
            dealloc(self.ptr.as_ptr() as *mut u8, layout);
        }
    }
}

impl Hash for Item {
    /// Hashes exactly like the key slice, so the table can be probed with `&[u8]`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Item {}

impl Borrow<[u8]> for Item {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("len", &self.value().len())
            .field("flags", &self.flags())
            .field("exptime", &self.exptime())
            .field("cas", &self.cas())
            .field("seq", &self.seq())
            .field("version", &self.version())
            .finish()
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
            value: item.value_bytes(),
            flags: item.flags(),
            exptime: item.exptime(),
            cas: item.cas(),
            last_access: item.last_access(),
            bits: item.bits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(value: &[u8], bits: u8) -> ItemState {
        ItemState {
            value: Bytes::copy_from_slice(value),
            flags: 7,
            exptime: 99,
            cas: 42,
            version: 43 << 23,
            bits,
        }
    }

    fn item(key: &[u8], value: &[u8]) -> Item {
        Item::new(NewItem {
            key,
            state: state(value, Bits::STALE | Bits::FETCHED),
            seq: 5,
            now: 1000,
        })
    }

    #[test]
    fn header_stays_compact() {
        assert_eq!(HEADER, 40);
        assert_eq!(std::mem::size_of::<Item>(), 8);
    }

    #[test]
    fn inline_and_external_round_trip() {
        for len in [0, 1, 100, INLINE_MAX, INLINE_MAX + 1, 4096] {
            let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let it = item(b"session:abc", &value);
            assert_eq!(it.key(), b"session:abc");
            assert_eq!(it.value(), &value[..]);
            assert_eq!(
                (it.flags(), it.exptime(), it.cas(), it.seq(), it.version()),
                (7, 99, 42, 5, 43 << 23)
            );
            assert_eq!(it.last_access(), 1000);
            // Only logical bits are kept; a new item has its CLOCK bit set.
            assert_eq!(it.bits(), Bits::STALE | Bits::ACCESSED);
            assert_eq!(it.state().value, value);
            let inline_size = HEADER + 11 + len;
            let expect = if len <= INLINE_MAX {
                inline_size
            } else {
                HEADER + EXT + 11
            };
            assert_eq!(it.block_size(), expect);
        }
    }

    #[test]
    fn external_values_are_shared_not_copied() {
        let big = Bytes::from(vec![b'x'; 5000]);
        let it = Item::new(NewItem {
            key: b"k",
            state: ItemState {
                value: big.clone(),
                flags: 0,
                exptime: 0,
                cas: 0,
                version: 0,
                bits: 0,
            },
            seq: 1,
            now: 0,
        });
        assert_eq!(it.value().as_ptr(), big.as_ptr());
        assert_eq!(it.value_bytes().as_ptr(), big.as_ptr());
    }

    #[test]
    fn clock_and_fetched_bits() {
        let it = item(b"k", b"v");
        assert!(it.take_accessed());
        assert!(!it.take_accessed());
        it.mark_accessed(2000, true);
        assert!(it.has(Bits::FETCHED) && it.has(Bits::ACCESSED));
        assert_eq!(it.last_access(), 2000);
    }

    #[test]
    fn hashes_and_compares_as_its_key() {
        use std::collections::hash_map::RandomState;
        use std::hash::BuildHasher;
        let s = RandomState::new();
        let it = item(b"abc", b"v");
        let k: &[u8] = b"abc";
        assert_eq!(s.hash_one(&it), s.hash_one(k));
        let b: &[u8] = it.borrow();
        assert_eq!(b, k);
    }
}
