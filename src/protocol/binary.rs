//! memcached's binary protocol: the 24-byte header, per-opcode validation, and
//! response encoding. No I/O and no engine calls.
//!
//! The session decodes a [`Header`] as soon as 24 bytes are buffered, checks it
//! ([`check_frame`], then [`classify`]) before reading any body byte, and only
//! then decides how much of the body it needs. So a malformed or oversized
//! request is answered from its header alone and its body is skipped without
//! ever being buffered. Every rejection is a [`BinError`] whose variant names
//! exactly one memcached 1.6.18 reply (status code, text, close or not).

use crate::engine::StoreMode;
use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};
use nom::{IResult, Parser};

pub const HEADER_LEN: usize = 24;
pub const REQ_MAGIC: u8 = 0x80;
pub const RES_MAGIC: u8 = 0x81;
/// memcached's `KEY_MAX_LENGTH`: binary keys may be 64 KiB on the wire, not in the cache.
pub const KEY_MAX: usize = 250;
/// memcached's `MAX_SASL_MECH_LEN`.
pub const SASL_MECH_MAX: usize = 32;

/// Opcodes (`protocol_binary.h`).
pub mod op {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response status codes; the discriminants are the wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Success = 0x0000,
    KeyNotFound = 0x0001,
    KeyExists = 0x0002,
    TooLarge = 0x0003,
    InvalidArguments = 0x0004,
    NotStored = 0x0005,
    DeltaBadValue = 0x0006,
    AuthError = 0x0020,
    AuthContinue = 0x0021,
    UnknownCommand = 0x0081,
    OutOfMemory = 0x0082,
    /// memcached's "Internal error". memtwin: persistence cannot accept the
    /// write (disk full, I/O error), or the node is still catching up with
    /// its twin ([`put_not_ready`]).
    Internal = 0x0084,
}

impl Status {
    /// The text body memcached sends with this status when it is an error.
    pub fn message(self) -> &'static [u8] {
        match self {
            Status::Success | Status::AuthContinue => b"",
            Status::KeyNotFound => b"Not found",
            Status::KeyExists => b"Data exists for key.",
            Status::TooLarge => b"Too large.",
            Status::InvalidArguments => b"Invalid arguments",
            Status::NotStored => b"Not stored.",
            Status::DeltaBadValue => b"Non-numeric server-side value for incr or decr",
            Status::AuthError => b"Auth failure.",
            Status::UnknownCommand => b"Unknown command",
            Status::OutOfMemory => b"Out of memory",
            Status::Internal => b"Unable to persist write",
        }
    }
}

/// A request header, in host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u8,
    pub opcode: u8,
    pub keylen: u16,
    pub extlen: u8,
    pub datatype: u8,
    pub vbucket: u16,
    pub bodylen: u32,
    pub opaque: u32,
    pub cas: u64,
}

impl Header {
    pub fn key_len(&self) -> usize {
        usize::from(self.keylen)
    }
    pub fn ext_len(&self) -> usize {
        usize::from(self.extlen)
    }
    pub fn body_len(&self) -> usize {
        self.bodylen as usize
    }
    /// Bytes of the value: the body after extras and key (0 if the lengths are inconsistent).
    pub fn value_len(&self) -> usize {
        self.body_len()
            .saturating_sub(self.ext_len() + self.key_len())
    }
    /// Header plus extras plus key.
    pub fn fixed_len(&self) -> usize {
        HEADER_LEN + self.ext_len() + self.key_len()
    }
    /// The whole packet (saturating: a 4 GiB body must not wrap on 32-bit targets).
    pub fn packet_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.body_len())
    }
}

fn header(i: &[u8]) -> IResult<&[u8], Header> {
    let (i, (magic, opcode, keylen, extlen, datatype, vbucket)) =
        (be_u8, be_u8, be_u16, be_u8, be_u8, be_u16).parse(i)?;
    let (i, (bodylen, opaque, cas)) = (be_u32, be_u32, be_u64).parse(i)?;
    Ok((
        i,
        Header {
            magic,
            opcode,
            keylen,
            extlen,
            datatype,
            vbucket,
            bodylen,
            opaque,
            cas,
        },
    ))
}

/// Decode the header at the start of `buf`; `None` until 24 bytes are there.
pub fn decode_header(buf: &[u8]) -> Option<Header> {
    header(buf).ok().map(|(_, h)| h)
}

/// A rejected request; each variant is one memcached reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinError {
    /// The magic byte is not 0x80: close without a reply.
    BadMagic,
    /// extras + key longer than the body: 0x81 `Unknown command`, then close.
    BadLengths,
    /// A key over 250 bytes, or a length combination the opcode does not accept:
    /// 0x04 `Invalid arguments`, then close.
    InvalidArguments,
    /// An opcode memcached does not implement: 0x81 `Unknown command`; the body
    /// is skipped and the connection stays usable.
    UnknownCommand,
}

impl BinError {
    /// The status sent, if any.
    pub fn status(self) -> Option<Status> {
        match self {
            BinError::BadMagic => None,
            BinError::BadLengths | BinError::UnknownCommand => Some(Status::UnknownCommand),
            BinError::InvalidArguments => Some(Status::InvalidArguments),
        }
    }
    /// Whether the connection is closed after the reply.
    pub fn closes(self) -> bool {
        !matches!(self, BinError::UnknownCommand)
    }
}

/// The checks memcached makes before anything else (including SASL): magic and
/// length consistency.
pub fn check_frame(h: &Header) -> Result<(), BinError> {
    if h.magic != REQ_MAGIC {
        return Err(BinError::BadMagic);
    }
    if h.key_len() + h.ext_len() > h.body_len() {
        return Err(BinError::BadLengths);
    }
    Ok(())
}

/// What a request asks for, decided from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GET/GETK (`with_key`), GAT/GATK (`touch`: 4 bytes of exptime extras).
    Get {
        with_key: bool,
        touch: bool,
    },
    /// TOUCH: 4 bytes of exptime extras.
    Touch,
    /// SET/ADD/REPLACE (8 bytes of flags + exptime extras) and APPEND/PREPEND (none).
    Store(StoreMode),
    Delete,
    /// INCREMENT/DECREMENT: 20 bytes of delta, initial, exptime.
    Delta {
        incr: bool,
    },
    Quit,
    /// 0 or 4 bytes of delay extras.
    Flush,
    Noop,
    Version,
    /// Key = group name.
    Stat,
    SaslListMechs,
    SaslAuth,
    SaslStep,
}

/// A validated request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// The quiet variant (GETQ, SETQ, ...).
    pub quiet: bool,
}

impl Request {
    /// Whether the value bytes are part of the command (stores, SASL data). For
    /// every other opcode, value bytes memcached tolerates are skipped.
    pub fn uses_value(&self) -> bool {
        matches!(self.kind, Kind::Store(_) | Kind::SaslAuth | Kind::SaslStep)
    }
}

/// Opcodes memcached serves before SASL authentication.
pub fn allowed_before_auth(opcode: u8) -> bool {
    matches!(
        opcode,
        op::SASL_LIST_MECHS | op::SASL_AUTH | op::SASL_STEP | op::VERSION
    )
}

/// Validate the lengths for the opcode, as memcached's `dispatch_bin_command`
/// does, after [`check_frame`] (and after the SASL gate, which sits between the two).
pub fn classify(h: &Header) -> Result<Request, BinError> {
    if h.key_len() > KEY_MAX {
        return Err(BinError::InvalidArguments);
    }
    let (kind, quiet) = match h.opcode {
        op::GET => (
            Kind::Get {
                with_key: false,
                touch: false,
            },
            false,
        ),
        op::GETQ => (
            Kind::Get {
                with_key: false,
                touch: false,
            },
            true,
        ),
        op::GETK => (
            Kind::Get {
                with_key: true,
                touch: false,
            },
            false,
        ),
        op::GETKQ => (
            Kind::Get {
                with_key: true,
                touch: false,
            },
            true,
        ),
        op::GAT => (
            Kind::Get {
                with_key: false,
                touch: true,
            },
            false,
        ),
        op::GATQ => (
            Kind::Get {
                with_key: false,
                touch: true,
            },
            true,
        ),
        op::GATK => (
            Kind::Get {
                with_key: true,
                touch: true,
            },
            false,
        ),
        op::GATKQ => (
            Kind::Get {
                with_key: true,
                touch: true,
            },
            true,
        ),
        op::TOUCH => (Kind::Touch, false),
        op::SET => (Kind::Store(StoreMode::Set), false),
        op::SETQ => (Kind::Store(StoreMode::Set), true),
        op::ADD => (Kind::Store(StoreMode::Add), false),
        op::ADDQ => (Kind::Store(StoreMode::Add), true),
        op::REPLACE => (Kind::Store(StoreMode::Replace), false),
        op::REPLACEQ => (Kind::Store(StoreMode::Replace), true),
        op::APPEND => (Kind::Store(StoreMode::Append), false),
        op::APPENDQ => (Kind::Store(StoreMode::Append), true),
        op::PREPEND => (Kind::Store(StoreMode::Prepend), false),
        op::PREPENDQ => (Kind::Store(StoreMode::Prepend), true),
        op::DELETE => (Kind::Delete, false),
        op::DELETEQ => (Kind::Delete, true),
        op::INCREMENT => (Kind::Delta { incr: true }, false),
        op::INCREMENTQ => (Kind::Delta { incr: true }, true),
        op::DECREMENT => (Kind::Delta { incr: false }, false),
        op::DECREMENTQ => (Kind::Delta { incr: false }, true),
        op::QUIT => (Kind::Quit, false),
        op::QUITQ => (Kind::Quit, true),
        op::FLUSH => (Kind::Flush, false),
        op::FLUSHQ => (Kind::Flush, true),
        op::NOOP => (Kind::Noop, false),
        op::VERSION => (Kind::Version, false),
        op::STAT => (Kind::Stat, false),
        op::SASL_LIST_MECHS => (Kind::SaslListMechs, false),
        op::SASL_AUTH => (Kind::SaslAuth, false),
        op::SASL_STEP => (Kind::SaslStep, false),
        _ => return Err(BinError::UnknownCommand),
    };
    let (k, e, b) = (h.key_len(), h.ext_len(), h.body_len());
    let ok = match kind {
        Kind::Noop | Kind::Version | Kind::Quit | Kind::SaslListMechs => b == 0,
        Kind::Flush => k == 0 && b == e && (e == 0 || e == 4),
        Kind::Store(StoreMode::Append | StoreMode::Prepend) => k > 0 && e == 0,
        Kind::Store(_) => e == 8 && k > 0,
        Kind::Get { touch: false, .. } => e == 0 && k > 0 && b == k,
        Kind::Get { touch: true, .. } | Kind::Touch => e == 4 && k > 0,
        Kind::Delete => e == 0 && k > 0 && b == k,
        Kind::Delta { .. } => e == 20 && k > 0 && b == k + e,
        Kind::Stat => e == 0,
        Kind::SaslAuth | Kind::SaslStep => e == 0 && k > 0,
    };
    if !ok {
        return Err(BinError::InvalidArguments);
    }
    Ok(Request { kind, quiet })
}

/// SET/ADD/REPLACE extras: (flags, exptime).
pub fn store_extras(extras: &[u8]) -> Option<(u32, u32)> {
    (be_u32::<_, nom::error::Error<&[u8]>>, be_u32)
        .parse(extras)
        .ok()
        .map(|(_, v)| v)
}

/// INCREMENT/DECREMENT extras: (delta, initial, exptime).
pub fn delta_extras(extras: &[u8]) -> Option<(u64, u64, u32)> {
    (be_u64::<_, nom::error::Error<&[u8]>>, be_u64, be_u32)
        .parse(extras)
        .ok()
        .map(|(_, v)| v)
}

/// TOUCH/GAT/FLUSH extras: exptime (0 when absent).
pub fn exptime_extras(extras: &[u8]) -> u32 {
    be_u32::<_, nom::error::Error<&[u8]>>(extras)
        .map(|(_, v)| v)
        .unwrap_or(0)
}

/// Who a response goes to: the request's opcode (echoed verbatim, quiet or not)
/// and opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub opcode: u8,
    pub opaque: u32,
}

impl From<&Header> for ReplyTo {
    fn from(h: &Header) -> Self {
        ReplyTo {
            opcode: h.opcode,
            opaque: h.opaque,
        }
    }
}

/// Append one response packet.
pub fn put_response(
    out: &mut bytes::BytesMut,
    to: ReplyTo,
    status: Status,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    let body = extras.len() + key.len() + value.len();
    out.reserve(HEADER_LEN + body);
    out.extend_from_slice(&[RES_MAGIC, to.opcode]);
    // Keys are at most 250 bytes and extras at most 20 here; truncation cannot happen.
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(&[extras.len() as u8, 0]);
    out.extend_from_slice(&(status as u16).to_be_bytes());
    out.extend_from_slice(&(body as u32).to_be_bytes());
    out.extend_from_slice(&to.opaque.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Append an error response: no extras, no key, CAS 0, the status text as value.
pub fn put_error(out: &mut bytes::BytesMut, to: ReplyTo, status: Status) {
    put_response(out, to, status, 0, &[], &[], status.message());
}

/// The body of the not-ready reply.
pub const NOT_READY_MESSAGE: &[u8] = b"Not ready: catching up with the twin";

/// The reply to a request while the node catches up with its twin: status
/// 0x0084 "Internal error", which every client surfaces as an error. Not
/// 0x0085 "Busy" or 0x0086 "Temporary failure": spymemcached turns those
/// into a plain failed status, and a `get` that fails that way returns null,
/// the same as a miss (measured: a session client read thousands of "lost"
/// sessions from a catching-up node with 0x0086).
pub fn put_not_ready(out: &mut bytes::BytesMut, to: ReplyTo) {
    put_response(out, to, Status::Internal, 0, &[], &[], NOT_READY_MESSAGE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn raw(opcode: u8, keylen: u16, extlen: u8, bodylen: u32) -> Header {
        Header {
            magic: REQ_MAGIC,
            opcode,
            keylen,
            extlen,
            datatype: 0,
            vbucket: 0,
            bodylen,
            opaque: 0,
            cas: 0,
        }
    }

    #[test]
    fn header_roundtrip() {
        let mut b = vec![
            0x80, 0x01, 0, 3, 8, 0, 0, 0, 0, 0, 0, 14, 0xde, 0xad, 0xbe, 0xef,
        ];
        b.extend_from_slice(&7u64.to_be_bytes());
        let h = decode_header(&b).expect("24 bytes");
        assert_eq!(
            (h.opcode, h.keylen, h.extlen, h.bodylen, h.opaque, h.cas),
            (op::SET, 3, 8, 14, 0xdeadbeef, 7)
        );
        assert_eq!((h.value_len(), h.fixed_len(), h.packet_len()), (3, 35, 38));
        assert!(decode_header(&b[..23]).is_none());
    }

    #[test]
    fn validation_matches_memcached() {
        assert_eq!(
            check_frame(&raw(op::GET, 4, 0, 2)),
            Err(BinError::BadLengths)
        );
        assert_eq!(
            check_frame(&raw(op::SET, 4, 8, 10)),
            Err(BinError::BadLengths)
        );
        let mut bad = raw(op::NOOP, 0, 0, 0);
        bad.magic = 0x81;
        assert_eq!(check_frame(&bad), Err(BinError::BadMagic));
        let einval = Err(BinError::InvalidArguments);
        assert_eq!(classify(&raw(op::GET, 251, 0, 251)), einval);
        assert_eq!(classify(&raw(op::SET, 2, 4, 9)), einval);
        assert_eq!(classify(&raw(op::GET, 2, 4, 6)), einval);
        assert_eq!(classify(&raw(op::GET, 0, 0, 0)), einval);
        assert_eq!(classify(&raw(op::DELETE, 2, 0, 3)), einval);
        assert_eq!(classify(&raw(op::INCREMENT, 2, 8, 10)), einval);
        assert_eq!(classify(&raw(op::TOUCH, 2, 0, 2)), einval);
        assert_eq!(classify(&raw(op::APPEND, 2, 8, 11)), einval);
        assert_eq!(classify(&raw(op::FLUSH, 0, 8, 8)), einval);
        assert_eq!(classify(&raw(op::STAT, 0, 4, 4)), einval);
        assert_eq!(classify(&raw(op::NOOP, 1, 0, 1)), einval);
        assert_eq!(classify(&raw(op::SASL_LIST_MECHS, 1, 0, 1)), einval);
        assert_eq!(
            classify(&raw(op::VERBOSITY, 0, 4, 4)),
            Err(BinError::UnknownCommand)
        );
        let r = classify(&raw(op::GETKQ, 3, 0, 3)).expect("valid");
        assert_eq!(
            (r.kind, r.quiet),
            (
                Kind::Get {
                    with_key: true,
                    touch: false
                },
                true
            )
        );
        assert!(classify(&raw(op::FLUSHQ, 0, 4, 4)).is_ok());
        assert!(classify(&raw(op::PREPEND, 1, 0, 1)).is_ok());
    }

    #[test]
    fn extras_and_encoding() {
        assert_eq!(store_extras(&[0, 0, 0, 5, 0, 0, 1, 0]), Some((5, 256)));
        assert_eq!(store_extras(&[0, 0, 0, 5]), None);
        let mut d = Vec::new();
        d.extend_from_slice(&1u64.to_be_bytes());
        d.extend_from_slice(&2u64.to_be_bytes());
        d.extend_from_slice(&3u32.to_be_bytes());
        assert_eq!(delta_extras(&d), Some((1, 2, 3)));
        assert_eq!(exptime_extras(&[0, 0, 0, 9]), 9);
        assert_eq!(exptime_extras(&[]), 0);
        let mut out = BytesMut::new();
        put_error(
            &mut out,
            ReplyTo {
                opcode: op::GETQ,
                opaque: 7,
            },
            Status::KeyNotFound,
        );
        assert_eq!(
            &out[..],
            b"\x81\x09\0\0\0\0\0\x01\0\0\0\x09\0\0\0\x07\0\0\0\0\0\0\0\0Not found"
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(h) = decode_header(&bytes) {
                let _ = check_frame(&h).and_then(|_| classify(&h));
                let _ = (h.value_len(), h.fixed_len(), h.packet_len());
            }
            let _ = store_extras(&bytes);
            let _ = delta_extras(&bytes);
            let _ = exptime_extras(&bytes);
        }
    }
}
