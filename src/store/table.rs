//! The sharded index: dashmap's shards, used through its raw API, holding one
//! thin [`Item`] pointer per entry.
//!
//! Why the raw API: the item *is* the key (see `item.rs`), so replacing a
//! version means swapping the key object in its bucket, which dashmap's map API
//! cannot do; and the eviction clock walks the buckets of each shard in place
//! (a hand per shard), which needs bucket indexes. That replaces a separate
//! queue of keys, saving ~80 bytes per item. dashmap still provides the
//! sharding, the per-shard `RwLock`s and the tables; this module keeps every
//! `unsafe` use of them in one place.
//!
//! Locking rules (same as before): one shard lock at a time, never held across
//! an `.await`, and displaced items are handed back to the caller so their
//! memory is freed after the lock is released.

use super::item::Item;
use dashmap::{DashMap, SharedValue};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// What an [`Table::update`] closure wants done to the key's entry.
pub(crate) enum Edit {
    Keep,
    /// Insert, or replace the current item (same key).
    Put(Item),
    Remove,
}

/// What a [`Table::sweep`] visitor decides for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    Keep,
    Remove,
    /// Stop the sweep here (this item is kept).
    Stop,
}

pub(crate) struct Table {
    map: DashMap<Item, (), RandomState>,
}

impl Table {
    pub fn new() -> Self {
        Table {
            map: DashMap::with_hasher(RandomState::new()),
        }
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        // The same hash dashmap computes for a `&[u8]` probe (and, through
        // `Item: Hash`, for the stored item), so the shard choice agrees.
        self.map.hasher().hash_one(key)
    }

    #[inline]
    fn rehash(&self) -> impl Fn(&(Item, SharedValue<()>)) -> u64 + '_ {
        move |(it, _)| self.hash(it.key())
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        self.map.determine_shard(hash as usize)
    }

    pub fn shard_count(&self) -> usize {
        self.map.shards().len()
    }

    /// Buckets of shard `shard` now (0 for no such shard).
    pub fn buckets(&self, shard: usize) -> usize {
        self.map
            .shards()
            .get(shard)
            .map_or(0, |t| t.read().buckets())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Run `f` on the item stored at `key` under the shard's read lock.
    #[inline]
    pub fn read<R>(&self, key: &[u8], f: impl FnOnce(Option<&Item>) -> R) -> R {
        let hash = self.hash(key);
        let shard = self.map.shards()[self.shard_of(hash)].read();
        f(shard.get(hash, |(it, _)| it.key() == key).map(|(it, _)| it))
    }

    /// Run `f` on the item stored at `key` (or `None`) under the shard's write
    /// lock and apply the [`Edit`] it returns. Returns `f`'s result and the item
    /// that left the table, to be dropped by the caller outside the lock.
    pub fn update<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Item>) -> (Edit, R),
    ) -> (R, Option<Item>) {
        let hash = self.hash(key);
        let mut shard = self.map.shards()[self.shard_of(hash)].write();
        match shard.find(hash, |(it, _)| it.key() == key) {
            Some(bucket) => {
                // SAFETY: the bucket was just found in this table and the write
                // lock is held, so it is full and nobody else can reach it.
                let cur = unsafe { &mut bucket.as_mut().0 };
                let (edit, r) = f(Some(cur));
                match edit {
                    Edit::Keep => (r, None),
                    Edit::Put(next) => {
                        debug_assert!(next.key() == key);
                        (r, Some(std::mem::replace(cur, next)))
                    }
                    Edit::Remove => {
                        // SAFETY: as above; the bucket is not used afterwards.
                        let ((old, _), _) = unsafe { shard.remove(bucket) };
                        (r, Some(old))
                    }
                }
            }
            None => {
                let (edit, r) = f(None);
                if let Edit::Put(next) = edit {
                    debug_assert!(next.key() == key);
                    shard.insert(hash, (next, SharedValue::new(())), self.rehash());
                }
                (r, None)
            }
        }
    }

    /// Walk up to `max` buckets of shard `shard` from bucket `start` under its
    /// write lock, letting `visit` keep or remove each item. Returns the bucket
    /// index to resume from (0 after the shard's last bucket: the hand wraps)
    /// and whether the walk wrapped. Removed items are pushed to `out`.
    pub fn sweep(
        &self,
        shard: usize,
        start: usize,
        max: usize,
        out: &mut Vec<Item>,
        mut visit: impl FnMut(&Item) -> Sweep,
    ) -> (usize, bool) {
        let mut t = self.map.shards()[shard].write();
        let buckets = t.buckets();
        let mut i = start;
        let end = start.saturating_add(max).min(buckets);
        while i < end {
            // SAFETY: `i < buckets()` and the write lock is held, so the bucket
            // index is valid and its fullness cannot change under us.
            if unsafe { t.is_bucket_full(i) } {
                let bucket = unsafe { t.bucket(i) };
                let verdict = visit(unsafe { &bucket.as_ref().0 });
                match verdict {
                    Sweep::Keep => {}
                    Sweep::Remove => {
                        // SAFETY: a full bucket of this table, not used again.
                        let ((old, _), _) = unsafe { t.remove(bucket) };
                        out.push(old);
                    }
                    Sweep::Stop => return (i, false),
                }
            }
            i += 1;
        }
        if i >= buckets {
            (0, true)
        } else {
            (i, false)
        }
    }

    /// Visit up to `max` buckets of shard `shard` from bucket `start` under its
    /// read lock. Returns the bucket to resume from, or `None` when the shard's
    /// last bucket was visited. Buckets move when a shard grows, so a walk that
    /// spans several calls may see an item twice or miss one inserted meanwhile;
    /// callers use it where that is harmless (the twin's catch-up scan: records
    /// are idempotent, and items written meanwhile are shipped live).
    pub fn scan(
        &self,
        shard: usize,
        start: usize,
        max: usize,
        mut visit: impl FnMut(&Item),
    ) -> Option<usize> {
        let t = self.map.shards().get(shard)?.read();
        let buckets = t.buckets();
        let end = start.saturating_add(max).min(buckets);
        for i in start..end {
            // SAFETY: `i < buckets()` and the read lock is held, so the index is
            // valid and the bucket's fullness cannot change under us.
            if unsafe { t.is_bucket_full(i) } {
                visit(unsafe { &t.bucket(i).as_ref().0 });
            }
        }
        (end < buckets).then_some(end)
    }

    /// Visit every item, one shard's read lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(&Item)) {
        for shard in self.map.shards() {
            let t = shard.read();
            // SAFETY: the iterator lives while the read lock is held.
            for bucket in unsafe { t.iter() } {
                f(unsafe { &bucket.as_ref().0 });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutation::ItemState;
    use crate::store::item::NewItem;
    use bytes::Bytes;

    fn item(key: &str, v: &str) -> Item {
        Item::new(NewItem {
            key: key.as_bytes(),
            state: ItemState {
                value: Bytes::copy_from_slice(v.as_bytes()),
                flags: 0,
                exptime: 0,
                cas: 0,
                version: 0,
                bits: 0,
            },
            seq: 0,
            now: 0,
        })
    }

    fn get(t: &Table, key: &str) -> Option<String> {
        t.read(key.as_bytes(), |it| {
            it.map(|it| String::from_utf8_lossy(it.value()).into_owned())
        })
    }

    #[test]
    fn insert_replace_remove() {
        let t = Table::new();
        let ((), old) = t.update(b"a", |cur| {
            assert!(cur.is_none());
            (Edit::Put(item("a", "1")), ())
        });
        assert!(old.is_none());
        let ((), old) = t.update(b"a", |cur| {
            assert_eq!(cur.map(|c| c.value()), Some(&b"1"[..]));
            (Edit::Put(item("a", "2")), ())
        });
        assert_eq!(old.map(|o| o.value().to_vec()), Some(b"1".to_vec()));
        assert_eq!(get(&t, "a").as_deref(), Some("2"));
        let ((), old) = t.update(b"a", |_| (Edit::Remove, ()));
        assert!(old.is_some());
        assert_eq!(get(&t, "a"), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn scan_visits_every_item_in_steps() {
        let t = Table::new();
        for i in 0..3000 {
            let k = format!("s{i}");
            t.update(k.as_bytes(), |_| (Edit::Put(item(&k, "v")), ()));
        }
        let mut seen = std::collections::HashSet::new();
        for shard in 0..t.shard_count() {
            let mut at = Some(0);
            let mut calls = 0;
            while let Some(start) = at {
                calls += 1;
                assert!(calls < 10_000, "scan never finished shard {shard}");
                at = t.scan(shard, start, 64, |it| {
                    seen.insert(it.key().to_vec());
                });
            }
        }
        assert_eq!(seen.len(), 3000);
        assert_eq!(
            t.scan(t.shard_count(), 0, 64, |_| {}),
            None,
            "past the last shard"
        );
    }

    #[test]
    fn many_keys_survive_growth_and_sweeps_cover_every_item() {
        let t = Table::new();
        for i in 0..5000 {
            let k = format!("key{i}");
            t.update(k.as_bytes(), |_| (Edit::Put(item(&k, &k)), ()));
        }
        assert_eq!(t.len(), 5000);
        for i in (0..5000).step_by(7) {
            let k = format!("key{i}");
            assert_eq!(get(&t, &k).as_deref(), Some(k.as_str()));
        }
        // Remove every item whose number is even, in small sweep steps.
        let mut out = Vec::new();
        let mut seen = 0;
        for s in 0..t.shard_count() {
            let mut at = 0;
            loop {
                let (next, wrapped) = t.sweep(s, at, 100, &mut out, |it| {
                    seen += 1;
                    let n: u32 = std::str::from_utf8(&it.key()[3..])
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1);
                    if n % 2 == 0 {
                        Sweep::Remove
                    } else {
                        Sweep::Keep
                    }
                });
                if wrapped {
                    break;
                }
                at = next;
            }
        }
        assert_eq!(seen, 5000);
        assert_eq!(out.len(), 2500);
        assert_eq!(t.len(), 2500);
        let mut n = 0;
        t.for_each(|_| n += 1);
        assert_eq!(n, 2500);
        assert_eq!(get(&t, "key3").as_deref(), Some("key3"));
        assert_eq!(get(&t, "key4"), None);
    }
}
