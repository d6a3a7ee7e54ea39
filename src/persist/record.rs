//! On-disk encoding of items and metadata in the sled tree.
//!
//! One sled tree holds everything, split by a one-byte key prefix, so a group
//! commit (items plus "last applied seq" plus flush state) is a single atomic
//! `apply_batch`:
//!
//! * `i` + memcached key → item record (below);
//! * `m` + name → metadata ([`meta`]).
//!
//! Item record, little-endian, 30-byte header then the value bytes:
//!
//! ```text
//! 0      1     2        6          10           14     22     30
//! | ver | bits | flags  | exptime  | stored_at  | cas  | seq  | value ...
//! ```
//!
//! `exptime` is **absolute** Unix time (0 = never), so a restart (or a twin)
//! expires the item at the same wall-clock second. `stored_at` is the time of
//! the last write, needed to apply a delayed `flush_all` after a restart. `seq`
//! is the mutation-stream sequence number that produced this version.
//! Decoding is strict: an unknown version or a short record is an error (the
//! loader refuses to start rather than guess).

use crate::mutation::{FlushSpec, ItemState};
use crate::store::Persisted;
use bytes::Bytes;

/// Record format version written by this build.
pub const RECORD_VERSION: u8 = 1;
/// Header bytes before the value.
pub const HEADER_LEN: usize = 30;

/// Prefix of item keys.
pub const ITEM_PREFIX: u8 = b'i';
/// Prefix of metadata keys.
pub const META_PREFIX: u8 = b'm';

/// Metadata keys (with their prefix).
pub mod meta {
    /// Data-set format marker, [`FORMAT`](super::FORMAT).
    pub const FORMAT: &[u8] = b"mformat";
    /// 16-byte random data-set identity, created with the data set.
    pub const HISTORY: &[u8] = b"mhistory";
    /// u64: sequence number of the last record applied (written in every batch).
    pub const LAST_SEQ: &[u8] = b"mlast_seq";
    /// The current flush state, [`encode_flush`](super::encode_flush).
    pub const FLUSH: &[u8] = b"mflush";
    /// u64: live items counted by the last complete sweep (progress estimate).
    pub const ITEMS_HINT: &[u8] = b"mitems_hint";
    /// u32: Unix time the data set was created.
    pub const CREATED: &[u8] = b"mcreated";
}

/// Value of [`meta::FORMAT`].
pub const FORMAT: &[u8] = b"memtwin-sled-1";

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record too short ({0} bytes)")]
    Short(usize),
    #[error("unknown record version {0}")]
    Version(u8),
}

/// The disk key of a memcached key.
pub fn item_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(ITEM_PREFIX);
    k.extend_from_slice(key);
    k
}

/// Encode an item version.
pub fn encode_item(state: &ItemState, seq: u64, stored_at: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + state.value.len());
    v.push(RECORD_VERSION);
    v.push(state.bits);
    v.extend_from_slice(&state.flags.to_le_bytes());
    v.extend_from_slice(&state.exptime.to_le_bytes());
    v.extend_from_slice(&stored_at.to_le_bytes());
    v.extend_from_slice(&state.cas.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&state.value);
    v
}

/// The fixed part of a record, without copying the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub bits: u8,
    pub flags: u32,
    pub exptime: u32,
    pub stored_at: u32,
    pub cas: u64,
    pub seq: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decode the header of a record.
pub fn decode_header(b: &[u8]) -> Result<Header, DecodeError> {
    if b.len() < HEADER_LEN {
        return Err(DecodeError::Short(b.len()));
    }
    if b[0] != RECORD_VERSION {
        return Err(DecodeError::Version(b[0]));
    }
    Ok(Header {
        bits: b[1],
        flags: u32_at(b, 2),
        exptime: u32_at(b, 6),
        stored_at: u32_at(b, 10),
        cas: u64_at(b, 14),
        seq: u64_at(b, 22),
    })
}

/// Decode a whole record (the value is copied out).
pub fn decode_item(record: &[u8]) -> Result<Persisted, DecodeError> {
    let h = decode_header(record)?;
    Ok(Persisted {
        state: ItemState {
            value: Bytes::copy_from_slice(&record[HEADER_LEN..]),
            flags: h.flags,
            exptime: h.exptime,
            cas: h.cas,
            bits: h.bits,
        },
        seq: h.seq,
        stored_at: h.stored_at,
    })
}

impl Header {
    /// Whether the item is dead at `now` under `flush` (same rules as the store).
    pub fn is_dead(&self, now: u32, flush: FlushSpec) -> bool {
        (self.exptime != 0 && self.exptime <= now)
            || self.seq <= flush.seq_ceiling
            || (flush.at != 0 && flush.at <= now && self.stored_at < flush.at)
    }
}

pub fn encode_flush(spec: FlushSpec) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&spec.at.to_le_bytes());
    b[4..].copy_from_slice(&spec.seq_ceiling.to_le_bytes());
    b
}

pub fn decode_flush(b: &[u8]) -> Result<FlushSpec, DecodeError> {
    if b.len() != 12 {
        return Err(DecodeError::Short(b.len()));
    }
    Ok(FlushSpec {
        at: u32_at(b, 0),
        seq_ceiling: u64_at(b, 4),
    })
}

pub fn decode_u64(b: &[u8]) -> Result<u64, DecodeError> {
    if b.len() != 8 {
        return Err(DecodeError::Short(b.len()));
    }
    Ok(u64_at(b, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(value: &[u8]) -> ItemState {
        ItemState {
            value: Bytes::copy_from_slice(value),
            flags: 0xdead_beef,
            exptime: 1_800_000_123,
            cas: u64::MAX - 7,
            bits: 4,
        }
    }

    #[test]
    fn item_round_trip() {
        let s = state(b"hello\r\nworld");
        let enc = encode_item(&s, 42, 1_799_999_999);
        assert_eq!(enc.len(), HEADER_LEN + 12);
        let p = decode_item(&enc).expect("decodes");
        assert_eq!(p.state, s);
        assert_eq!((p.seq, p.stored_at), (42, 1_799_999_999));
    }

    #[test]
    fn layout_is_stable() {
        // The on-disk format is a compatibility promise: pin the bytes.
        let enc = encode_item(&state(b"v"), 0x0102, 0x0a0b0c0d);
        assert_eq!(
            enc,
            vec![
                1, 4, 0xef, 0xbe, 0xad, 0xde, 0x7b, 0xd2, 0x49, 0x6b, 0x0d, 0x0c, 0x0b, 0x0a, 0xf8,
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0, 0, 0, 0, 0, 0, b'v'
            ]
        );
    }

    #[test]
    fn empty_value_and_bad_records() {
        let enc = encode_item(&state(b""), 1, 2);
        assert_eq!(enc.len(), HEADER_LEN);
        assert!(decode_item(&enc).is_ok());
        assert_eq!(
            decode_item(&enc[..HEADER_LEN - 1]),
            Err(DecodeError::Short(HEADER_LEN - 1))
        );
        let mut bad = enc.clone();
        bad[0] = 9;
        assert_eq!(decode_header(&bad), Err(DecodeError::Version(9)));
    }

    #[test]
    fn flush_and_meta_values() {
        let spec = FlushSpec {
            at: 77,
            seq_ceiling: 1 << 40,
        };
        assert_eq!(decode_flush(&encode_flush(spec)), Ok(spec));
        assert!(decode_flush(b"short").is_err());
        assert_eq!(decode_u64(&9u64.to_le_bytes()), Ok(9));
        assert!(decode_u64(b"").is_err());
        assert_eq!(item_key(b"k")[0], ITEM_PREFIX);
        for k in [
            meta::FORMAT,
            meta::HISTORY,
            meta::LAST_SEQ,
            meta::FLUSH,
            meta::ITEMS_HINT,
            meta::CREATED,
        ] {
            assert_eq!(k[0], META_PREFIX);
        }
    }

    #[test]
    fn deadness_matches_store_rules() {
        let h = Header {
            bits: 0,
            flags: 0,
            exptime: 100,
            stored_at: 50,
            cas: 1,
            seq: 10,
        };
        let none = FlushSpec::default();
        assert!(!h.is_dead(99, none));
        assert!(h.is_dead(100, none));
        let immediate = FlushSpec {
            at: 60,
            seq_ceiling: 10,
        };
        assert!(h.is_dead(61, immediate));
        let delayed = FlushSpec {
            at: 70,
            seq_ceiling: 0,
        };
        assert!(!h.is_dead(69, delayed));
        assert!(h.is_dead(70, delayed));
        let later = Header { stored_at: 70, ..h };
        assert!(
            !later.is_dead(70, delayed),
            "stored at the flush second survives"
        );
    }

    proptest! {
        #[test]
        fn any_item_round_trips(value in proptest::collection::vec(any::<u8>(), 0..600),
                                flags: u32, exptime: u32, cas: u64, bits: u8, seq: u64, stored_at: u32) {
            let s = ItemState { value: Bytes::from(value), flags, exptime, cas, bits };
            let p = decode_item(&encode_item(&s, seq, stored_at)).expect("decodes");
            prop_assert_eq!(p.state, s);
            prop_assert_eq!((p.seq, p.stored_at), (seq, stored_at));
        }

        #[test]
        fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_item(&b);
        }
    }
}
