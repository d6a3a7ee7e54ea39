//! On-disk encoding of items and metadata in the sled tree.
//!
//! One sled tree holds everything, split by a one-byte key prefix, so a group
//! commit (items plus "last applied seq" plus flush state) is a single atomic
//! `apply_batch`:
//!
//! * `i` + memcached key → item record (below);
//! * `m` + name → metadata ([`meta`]).
//!
//! Item record (format 2), little-endian, 34-byte header then the value bytes:
//!
//! ```text
//! 0      1      2        6          10         18     26     34
//! | ver | bits | flags  | exptime  | version  | cas  | seq  | value ...
//! ```
//!
//! `exptime` is **absolute** Unix time (0 = never), so a restart (or a twin)
//! expires the item at the same wall-clock second. `version` is the item's
//! version (`crate::version`): the twin's conflict rule after a restart, and
//! the time of the last write that a delayed `flush_all` compares. `seq` is the
//! mutation-stream sequence number that produced this version.
//!
//! Format 1 (written before versions existed) had a 30-byte header with the
//! write's Unix second (`stored_at`) where format 2 has the version; it is
//! still read, as the lowest version of that second with node id 0, which
//! loses every tie against a real write. Decoding is strict otherwise: an
//! unknown version or a short record is an error (the loader refuses to start
//! rather than guess).

use crate::mutation::{FlushSpec, ItemState};
use crate::store::Persisted;
use crate::version::Version;
use bytes::Bytes;

/// Record format version written by this build.
pub const RECORD_VERSION: u8 = 2;
/// Header bytes before the value.
pub const HEADER_LEN: usize = 34;
/// The format-1 record: `stored_at` (u32) in place of the version.
const V1: u8 = 1;
const V1_HEADER_LEN: usize = 30;

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
pub fn encode_item(state: &ItemState, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + state.value.len());
    v.push(RECORD_VERSION);
    v.push(state.bits);
    v.extend_from_slice(&state.flags.to_le_bytes());
    v.extend_from_slice(&state.exptime.to_le_bytes());
    v.extend_from_slice(&state.version.to_le_bytes());
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
    pub version: u64,
    pub cas: u64,
    pub seq: u64,
    /// Where the value starts.
    pub len: usize,
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

/// Decode the header of a record (format 2, or format 1).
pub fn decode_header(b: &[u8]) -> Result<Header, DecodeError> {
    let need = match b.first() {
        Some(&RECORD_VERSION) => HEADER_LEN,
        Some(&V1) => V1_HEADER_LEN,
        Some(&v) if b.len() >= V1_HEADER_LEN => return Err(DecodeError::Version(v)),
        _ => return Err(DecodeError::Short(b.len())),
    };
    if b.len() < need {
        return Err(DecodeError::Short(b.len()));
    }
    let (version, cas, seq) = if b[0] == RECORD_VERSION {
        (u64_at(b, 10), u64_at(b, 18), u64_at(b, 26))
    } else {
        let stored_at = u64::from(u32_at(b, 10));
        let v = Version::floor_for_millis(stored_at * 1000).get();
        (v, u64_at(b, 14), u64_at(b, 22))
    };
    Ok(Header {
        bits: b[1],
        flags: u32_at(b, 2),
        exptime: u32_at(b, 6),
        version,
        cas,
        seq,
        len: need,
    })
}

/// Decode a whole record (the value is copied out).
pub fn decode_item(record: &[u8]) -> Result<Persisted, DecodeError> {
    let h = decode_header(record)?;
    Ok(Persisted {
        state: ItemState {
            value: Bytes::copy_from_slice(&record[h.len..]),
            flags: h.flags,
            exptime: h.exptime,
            cas: h.cas,
            version: h.version,
            bits: h.bits,
        },
        seq: h.seq,
    })
}

impl Header {
    /// Whether the item is dead at `now` under `flush` (same rules as the store).
    pub fn is_dead(&self, now: u32, flush: FlushSpec) -> bool {
        (self.exptime != 0 && self.exptime <= now)
            || self.version <= flush.hidden
            || (flush.at != 0 && flush.at <= now && self.version <= flush.ceiling)
    }
}

/// Bytes of an encoded flush state.
const FLUSH_LEN: usize = 28;

pub fn encode_flush(spec: FlushSpec) -> [u8; FLUSH_LEN] {
    let mut b = [0u8; FLUSH_LEN];
    b[..8].copy_from_slice(&spec.hidden.to_le_bytes());
    b[8..12].copy_from_slice(&spec.at.to_le_bytes());
    b[12..20].copy_from_slice(&spec.ceiling.to_le_bytes());
    b[20..].copy_from_slice(&spec.version.to_le_bytes());
    b
}

/// Decode a flush state. The 12-byte state of format 1 (`at` and a sequence
/// ceiling) becomes "everything written up to the end of second `at`": the
/// sequence ceiling has no version equivalent, and hiding the rest of that
/// second errs on the side the flush asked for.
pub fn decode_flush(b: &[u8]) -> Result<FlushSpec, DecodeError> {
    match b.len() {
        FLUSH_LEN => Ok(FlushSpec {
            hidden: u64_at(b, 0),
            at: u32_at(b, 8),
            ceiling: u64_at(b, 12),
            version: u64_at(b, 20),
        }),
        12 => {
            let at = u32_at(b, 0);
            let ceiling = match at {
                0 => 0,
                _ => Version::floor_for_millis((u64::from(at) + 1) * 1000)
                    .get()
                    .saturating_sub(1),
            };
            Ok(FlushSpec {
                hidden: 0,
                at,
                ceiling,
                version: 0,
            })
        }
        n => Err(DecodeError::Short(n)),
    }
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
            version: 0x1122_3344_5566_7788,
            bits: 4,
        }
    }

    #[test]
    fn item_round_trip() {
        let s = state(b"hello\r\nworld");
        let enc = encode_item(&s, 42);
        assert_eq!(enc.len(), HEADER_LEN + 12);
        let p = decode_item(&enc).expect("decodes");
        assert_eq!(p.state, s);
        assert_eq!(p.seq, 42);
    }

    #[test]
    fn layout_is_stable() {
        // The on-disk format is a compatibility promise: pin the bytes.
        let enc = encode_item(&state(b"v"), 0x0102);
        assert_eq!(
            enc,
            vec![
                2, 4, 0xef, 0xbe, 0xad, 0xde, 0x7b, 0xd2, 0x49, 0x6b, 0x88, 0x77, 0x66, 0x55, 0x44,
                0x33, 0x22, 0x11, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0, 0,
                0, 0, 0, 0, b'v'
            ]
        );
    }

    #[test]
    fn format_1_records_still_load() {
        // The bytes format 1 wrote for (flags, exptime, stored_at 0x6b49d27b...).
        let stored_at: u32 = 1_800_000_000;
        let mut v1 = vec![1u8, 4];
        v1.extend_from_slice(&7u32.to_le_bytes());
        v1.extend_from_slice(&0u32.to_le_bytes());
        v1.extend_from_slice(&stored_at.to_le_bytes());
        v1.extend_from_slice(&99u64.to_le_bytes());
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.extend_from_slice(b"old");
        let p = decode_item(&v1).expect("format 1 decodes");
        assert_eq!(p.state.value, Bytes::from_static(b"old"));
        assert_eq!((p.state.flags, p.state.cas, p.seq), (7, 99, 5));
        let v = Version::from_raw(p.state.version);
        assert_eq!(v.unix_secs(), stored_at);
        assert_eq!(v.node_of(), 0, "a legacy version loses every tie");
    }

    #[test]
    fn empty_value_and_bad_records() {
        let enc = encode_item(&state(b""), 1);
        assert_eq!(enc.len(), HEADER_LEN);
        assert!(decode_item(&enc).is_ok());
        assert_eq!(
            decode_item(&enc[..HEADER_LEN - 1]),
            Err(DecodeError::Short(HEADER_LEN - 1))
        );
        let mut bad = enc.clone();
        bad[0] = 9;
        assert_eq!(decode_header(&bad), Err(DecodeError::Version(9)));
        assert_eq!(decode_header(&[]), Err(DecodeError::Short(0)));
    }

    #[test]
    fn flush_and_meta_values() {
        let spec = FlushSpec {
            hidden: 5,
            at: 77,
            ceiling: 1 << 40,
            version: 9,
        };
        assert_eq!(decode_flush(&encode_flush(spec)), Ok(spec));
        assert!(decode_flush(b"short").is_err());
        let mut legacy = [0u8; 12];
        legacy[..4].copy_from_slice(&1_800_000_000u32.to_le_bytes());
        let old = decode_flush(&legacy).expect("format 1 flush");
        assert_eq!(old.at, 1_800_000_000);
        assert_eq!(
            Version::from_raw(old.ceiling).unix_secs(),
            1_800_000_000,
            "the whole flush second is hidden"
        );
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
            version: 50,
            cas: 1,
            seq: 10,
            len: HEADER_LEN,
        };
        let none = FlushSpec::default();
        assert!(!h.is_dead(99, none));
        assert!(h.is_dead(100, none));
        let immediate = FlushSpec { hidden: 50, ..none };
        assert!(h.is_dead(0, immediate));
        let delayed = FlushSpec {
            at: 70,
            ceiling: 50,
            ..none
        };
        assert!(!h.is_dead(69, delayed));
        assert!(h.is_dead(70, delayed));
        let later = Header { version: 51, ..h };
        assert!(
            !later.is_dead(70, delayed),
            "written after the ceiling survives"
        );
    }

    proptest! {
        #[test]
        fn any_item_round_trips(value in proptest::collection::vec(any::<u8>(), 0..600),
                                flags: u32, exptime: u32, cas: u64, version: u64, bits: u8, seq: u64) {
            let s = ItemState { value: Bytes::from(value), flags, exptime, cas, version, bits };
            let p = decode_item(&encode_item(&s, seq)).expect("decodes");
            prop_assert_eq!(p.state, s);
            prop_assert_eq!(p.seq, seq);
        }

        #[test]
        fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_item(&b);
            let _ = decode_flush(&b);
        }
    }
}
