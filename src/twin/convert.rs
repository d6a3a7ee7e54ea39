//! Mutation (the local stream's record) ⇄ Record (the wire's), both ways.
//!
//! The two carry the same resulting state; the conversion only renames
//! fields, so a record applied on the twin reproduces the origin's item
//! exactly (value, flags, absolute expiry, CAS, meta bits, version).

use crate::mutation::{FlushSpec, ItemState, Mutation, Op};
use crate::protocol::twin::{ItemRecord, Record, RecordBody};
use bytes::Bytes;

/// The record to ship for `m`, or None for what is never shipped (expiry,
/// eviction) or malformed (a store without its item, a flush without spec).
pub fn to_record(m: &Mutation) -> Option<Record> {
    let item = |i: &ItemState| ItemRecord {
        key: m.key.clone(),
        value: i.value.clone(),
        cas: i.cas,
        flags: i.flags,
        exptime: i.exptime,
        bits: i.bits,
    };
    let body = match m.op {
        Op::Store => RecordBody::Store(item(m.item.as_ref()?)),
        Op::Touch => RecordBody::Touch(item(m.item.as_ref()?)),
        Op::Delete => RecordBody::Delete { key: m.key.clone() },
        Op::Flush => {
            let f = m.flush?;
            RecordBody::Flush {
                hidden: f.hidden,
                at: f.at,
                ceiling: f.ceiling,
            }
        }
        Op::Expire | Op::Evict => return None,
    };
    if !matches!(body, RecordBody::Flush { .. }) && m.key.is_empty() {
        return None;
    }
    let version = match (m.op, m.flush) {
        (Op::Flush, Some(f)) if m.version == 0 => f.version,
        _ => m.version,
    };
    Some(Record {
        origin_seq: m.seq,
        version,
        body,
    })
}

/// The mutation to apply for a record received from the twin (`remote`).
pub fn to_mutation(r: Record) -> Mutation {
    let version = r.version;
    let item = |i: ItemRecord| {
        (
            i.key,
            Some(ItemState {
                value: i.value,
                flags: i.flags,
                exptime: i.exptime,
                cas: i.cas,
                version,
                bits: i.bits,
            }),
        )
    };
    let (op, key, item, flush) = match r.body {
        RecordBody::Store(i) => {
            let (k, s) = item(i);
            (Op::Store, k, s, None)
        }
        RecordBody::Touch(i) => {
            let (k, s) = item(i);
            (Op::Touch, k, s, None)
        }
        RecordBody::Delete { key } => (Op::Delete, key, None, None),
        RecordBody::Flush {
            hidden,
            at,
            ceiling,
        } => (
            Op::Flush,
            Bytes::new(),
            None,
            Some(FlushSpec {
                hidden,
                at,
                ceiling,
                version: r.version,
            }),
        ),
    };
    Mutation {
        seq: r.origin_seq,
        op,
        key,
        item,
        version: r.version,
        remote: true,
        flush,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: &'static [u8]) -> ItemState {
        ItemState {
            value: Bytes::from_static(v),
            flags: 0xdead_beef,
            exptime: 1_800_000_000,
            cas: 41,
            version: 42,
            bits: 3,
        }
    }

    fn m(op: Op) -> Mutation {
        Mutation {
            seq: 7,
            op,
            key: Bytes::from_static(b"session:1"),
            item: matches!(op, Op::Store | Op::Touch).then(|| state(b"v\r\n")),
            version: 42,
            remote: false,
            flush: None,
        }
    }

    #[test]
    fn every_shipped_kind_round_trips() {
        let flush = Mutation {
            key: Bytes::new(),
            flush: Some(FlushSpec {
                hidden: 40,
                at: 99,
                ceiling: 1 << 40,
                version: 42,
            }),
            ..m(Op::Flush)
        };
        for orig in [m(Op::Store), m(Op::Touch), m(Op::Delete), flush] {
            let rec = to_record(&orig).expect("shipped");
            assert_eq!((rec.origin_seq, rec.version), (7, 42));
            let back = to_mutation(rec);
            assert_eq!(
                back,
                Mutation {
                    remote: true,
                    ..orig.clone()
                }
            );
        }
    }

    #[test]
    fn housekeeping_and_malformed_are_not_shipped() {
        assert!(to_record(&m(Op::Expire)).is_none());
        assert!(to_record(&m(Op::Evict)).is_none());
        assert!(to_record(&Mutation {
            item: None,
            ..m(Op::Store)
        })
        .is_none());
        assert!(to_record(&m(Op::Flush)).is_none(), "flush without spec");
        assert!(to_record(&Mutation {
            key: Bytes::new(),
            ..m(Op::Delete)
        })
        .is_none());
    }

    #[test]
    fn flush_takes_its_spec_version_when_the_mutation_has_none() {
        let f = Mutation {
            key: Bytes::new(),
            version: 0,
            flush: Some(FlushSpec {
                hidden: 0,
                at: 1,
                ceiling: 2,
                version: 3,
            }),
            ..m(Op::Flush)
        };
        assert_eq!(to_record(&f).map(|r| r.version), Some(3));
    }
}
