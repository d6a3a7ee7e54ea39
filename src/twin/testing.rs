//! A table that follows the same conflict rule as the real store, for
//! testing the link in-process: apply iff `wins(incoming, current)`, deletes
//! leave tombstones, flushes hide what is at or below their ceiling.

use super::{Applied, ScanCursor, TwinStore};
use crate::mutation::{
    FlushSpec, ItemState, Mutation, MutationStream, Op, SubscribeOptions, Subscription,
};
use crate::version::{wins, Hlc, Version};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One key's state: an item or a tombstone (`item` None), with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: u64,
    pub item: Option<ItemState>,
}

#[derive(Default)]
struct Table {
    keys: BTreeMap<Bytes, Entry>,
    flush: Option<FlushSpec>,
}

pub struct FakeStore {
    hlc: Hlc,
    stream: MutationStream,
    table: Mutex<Table>,
}

impl FakeStore {
    pub fn new(node: u16) -> Arc<FakeStore> {
        Arc::new(FakeStore {
            hlc: Hlc::new(node).expect("test node id"),
            stream: MutationStream::new(),
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn local(&self, t: &mut Table, op: Op, key: &[u8], item: Option<ItemState>, version: u64) {
        let key = Bytes::copy_from_slice(key);
        t.keys.insert(
            key.clone(),
            Entry {
                version,
                item: item.clone(),
            },
        );
        self.stream.publish(|seq| Mutation {
            seq,
            op,
            key,
            item,
            version,
            remote: false,
            flush: None,
        });
    }

    /// A client `set`.
    pub fn set(&self, key: &[u8], value: &[u8]) -> u64 {
        let mut t = self.lock();
        let v = self.hlc.now().get();
        let item = ItemState {
            value: Bytes::copy_from_slice(value),
            flags: 5,
            exptime: 0,
            cas: v,
            version: v,
            bits: 0,
        };
        self.local(&mut t, Op::Store, key, Some(item), v);
        v
    }

    /// A client `touch`: new version, same CAS.
    pub fn touch(&self, key: &[u8], exptime: u32) -> bool {
        let mut t = self.lock();
        let Some(Entry {
            item: Some(mut item),
            ..
        }) = t.keys.get(key).cloned()
        else {
            return false;
        };
        item.exptime = exptime;
        let v = self.hlc.now().get();
        item.version = v;
        self.local(&mut t, Op::Touch, key, Some(item), v);
        true
    }

    /// A client `delete`: a tombstone.
    pub fn delete(&self, key: &[u8]) -> bool {
        let mut t = self.lock();
        if t.keys.get(key).is_none_or(|e| e.item.is_none()) {
            return false;
        }
        let v = self.hlc.now().get();
        self.local(&mut t, Op::Delete, key, None, v);
        true
    }

    /// A client `flush_all` (immediate).
    pub fn flush_all(&self) {
        let mut t = self.lock();
        let v = self.hlc.now().get();
        let spec = FlushSpec {
            hidden: v,
            at: 0,
            ceiling: 0,
            version: v,
        };
        apply_flush(&mut t, spec);
        self.stream.publish(|seq| Mutation {
            seq,
            op: Op::Flush,
            key: Bytes::new(),
            item: None,
            version: v,
            remote: false,
            flush: Some(spec),
        });
    }

    /// The value held for `key` (None for absent or tombstone).
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.lock()
            .keys
            .get(key)
            .and_then(|e| e.item.as_ref().map(|i| i.value.clone()))
    }

    /// Every key's state, for comparing twins.
    pub fn digest(&self) -> BTreeMap<Bytes, Entry> {
        self.lock().keys.clone()
    }

    /// Live items (tombstones excluded).
    pub fn len(&self) -> usize {
        self.lock()
            .keys
            .values()
            .filter(|e| e.item.is_some())
            .count()
    }
}

fn apply_flush(t: &mut Table, spec: FlushSpec) {
    t.keys
        .retain(|_, e| e.item.is_none() || e.version > spec.hidden);
    t.flush = Some(spec);
}

impl TwinStore for FakeStore {
    fn hlc(&self) -> &Hlc {
        &self.hlc
    }

    fn subscribe(&self, byte_cap: usize, ack_timeout: Option<std::time::Duration>) -> Subscription {
        self.stream.subscribe_with(
            1,
            SubscribeOptions {
                byte_cap: Some(byte_cap),
                blocking: ack_timeout.is_some(),
                ack_timeout,
                ..Default::default()
            },
        )
    }

    fn apply_remote(&self, m: &Mutation) -> Applied {
        let mut t = self.lock();
        let v = Version::from_raw(m.version);
        self.hlc.observe(v);
        if m.op == Op::Flush {
            let Some(spec) = m.flush else {
                return Applied::Stale;
            };
            let cur = t.flush.map_or(0, |f| f.version);
            if spec.version == cur {
                return Applied::Duplicate;
            }
            if !wins(Version::from_raw(spec.version), Version::from_raw(cur)) {
                return Applied::Stale;
            }
            apply_flush(&mut t, spec);
        } else {
            let cur = t.keys.get(&m.key).map_or(0, |e| e.version);
            if m.version == cur {
                return Applied::Duplicate;
            }
            if !wins(v, Version::from_raw(cur)) {
                return Applied::Stale;
            }
            // An item at or below the flush ceiling is dead on arrival.
            if let (Some(f), Some(_)) = (t.flush, &m.item) {
                if m.version <= f.hidden {
                    return Applied::Stale;
                }
            }
            t.keys.insert(
                m.key.clone(),
                Entry {
                    version: m.version,
                    item: m.item.clone(),
                },
            );
        }
        let rec = Mutation {
            remote: true,
            ..m.clone()
        };
        self.stream.publish(|seq| Mutation { seq, ..rec });
        Applied::Applied
    }

    fn scan(
        &self,
        from: ScanCursor,
        floor: u64,
        max: usize,
    ) -> (Vec<Arc<Mutation>>, Option<ScanCursor>) {
        let t = self.lock();
        let mut out = Vec::new();
        if from.bucket == 0 {
            if let Some(f) = t.flush.filter(|f| f.version > floor) {
                out.push(Arc::new(Mutation {
                    seq: 0,
                    op: Op::Flush,
                    key: Bytes::new(),
                    item: None,
                    version: f.version,
                    remote: false,
                    flush: Some(f),
                }));
            }
        }
        let mut idx = from.bucket;
        for (k, e) in t.keys.iter().skip(from.bucket).take(max.max(1)) {
            idx += 1;
            if e.version <= floor {
                continue;
            }
            out.push(Arc::new(Mutation {
                seq: 0,
                op: if e.item.is_some() {
                    Op::Store
                } else {
                    Op::Delete
                },
                key: k.clone(),
                item: e.item.clone(),
                version: e.version,
                remote: false,
                flush: None,
            }));
        }
        let next = (idx < t.keys.len()).then_some(ScanCursor {
            shard: 0,
            bucket: idx,
            disk: None,
        });
        (out, next)
    }
}
