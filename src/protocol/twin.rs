//! Wire format of the twin replication link: frames, records and the
//! authentication proof. No I/O.
//!
//! Why it looks the way it does:
//!
//! * **Length-prefixed frames.** Every message is `len: u32` (covering the kind
//!   byte and the payload), `kind: u8`, payload. A reader knows how many bytes
//!   it needs before parsing anything, can refuse an oversized frame from its
//!   first four bytes, and never depends on the transport's packet boundaries,
//!   so the same byte stream can later be wrapped in TLS unchanged.
//! * **Authentication before any data.** Both sides open with a [`Frame::Hello`]
//!   carrying a fresh random nonce, then answer the peer's challenge with a
//!   [`Frame::Auth`] proof ([`auth_proof`], [`verify_proof`]). Only after both
//!   proofs check out do [`Frame::Positions`] and [`Frame::Batch`] flow; a
//!   [`Frame::Refuse`] says why a side gives up, in words an operator can act on.
//!   A Hello with another [`PROTOCOL_VERSION`] still decodes, so the refusal can
//!   name both versions.
//! * **Resulting state is shipped, not commands.** A [`Record`] is the state a
//!   mutation left behind (the whole item after `append` or `incr`, a tombstone
//!   after `delete`, the flush horizon after `flush_all`), stamped with its
//!   origin's sequence number and a version. Applying a record is idempotent
//!   and needs no knowledge of the command that produced it, so a replayed or
//!   duplicated batch is harmless and both twins converge on the same state.
//!
//! All integers are little-endian. Decoding is strict: a short payload,
//! trailing bytes, an out-of-range length or an unknown code is an error (the
//! link is then closed), never a guess. Keys and values of decoded records are
//! zero-copy slices of the received frame.
//!
//! ```text
//! frame:  len u32 | kind u8 | payload            (len = 1 + payload length)
//! record: tag u8 | origin_seq u64 | version u64 | key_len u16 | key | tail
//!   Store/Touch tail: cas u64 | flags u32 | exptime u32 | bits u8 | value_len u32 | value
//!   Delete tail:      (none)
//!   Flush tail:       hidden u64 | at u32 | ceiling u64   (key_len = 0)
//! ```
//!
//! After the handshake, [`Frame::Synced`] is the sender's promise about the
//! receiver's state: every change of its own up to a version has been sent in
//! the frames before it. The receiver keeps that as its resume point, so a
//! gap (a dropped link, an overflowing queue, a table scan cut short) never
//! advances it past what really arrived.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Version of this wire format, sent in [`Frame::Hello`].
pub const PROTOCOL_VERSION: u16 = 1;
/// First four payload bytes of a Hello: catches a peer that is not a twin.
pub const MAGIC: [u8; 4] = *b"MTWN";
/// Default limit on a frame's `len` (kind byte plus payload).
pub const MAX_FRAME_DEFAULT: usize = 4 << 20;
/// Longest key a record may carry (memcached's `KEY_MAX_LENGTH`).
pub const MAX_KEY: usize = 250;
/// Most entries a [`Frame::Positions`] may carry.
pub const MAX_POSITIONS: usize = 64;
/// Longest [`Frame::Refuse`] message, in bytes.
pub const MAX_REFUSE_MESSAGE: usize = 1024;

/// Bytes of the `len` prefix.
const LEN_PREFIX: usize = 4;
/// Bytes of a Batch frame before its first record: len, kind, origin, count.
const BATCH_HEADER: usize = LEN_PREFIX + 1 + 2 + 4;
/// Bytes of a record before its key: tag, origin_seq, version, key_len.
const RECORD_HEAD: usize = 1 + 8 + 8 + 2;
/// Bytes of a Store/Touch tail before the value.
const ITEM_TAIL: usize = 8 + 4 + 4 + 1 + 4;
/// Bytes of a Flush tail.
const FLUSH_TAIL: usize = 8 + 4 + 8;
/// Domain-separation prefix of the authentication MAC.
const AUTH_CONTEXT: &[u8] = b"memtwin twin auth v1";

/// Frame kinds (the byte after `len`).
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const POSITIONS: u8 = 3;
    pub const REFUSE: u8 = 4;
    pub const BATCH: u8 = 5;
    pub const ACK: u8 = 6;
    pub const PING: u8 = 7;
    pub const SYNCED: u8 = 8;
    pub const FENCE: u8 = 9;
    pub const FENCE_ACK: u8 = 10;
}

/// Record tags (a record's first byte).
pub mod tag {
    pub const STORE: u8 = 1;
    pub const TOUCH: u8 = 2;
    pub const DELETE: u8 = 3;
    pub const FLUSH: u8 = 4;
}

/// Why bytes received on the twin link are not a valid frame. Any of these
/// ends the link: the stream can no longer be trusted to be in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame (length 0)")]
    Empty,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("hello does not start with the twin magic")]
    BadMagic,
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Why a side refuses the link; the discriminants are the wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RefuseReason {
    AuthFailed = 1,
    Version = 2,
    ClockSkew = 3,
    SameNode = 4,
    Busy = 5,
    Other = 6,
}

impl RefuseReason {
    /// The reason with wire code `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::AuthFailed,
            2 => Self::Version,
            3 => Self::ClockSkew,
            4 => Self::SameNode,
            5 => Self::Busy,
            6 => Self::Other,
            _ => return None,
        })
    }

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// How far a side has applied the stream of one origin node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub origin: u16,
    pub seq: u64,
    pub version: u64,
}

/// The state of one item after a store or touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    pub key: Bytes,
    pub value: Bytes,
    /// The CAS token: the version of the last write that changed the value.
    /// Equal to the record's version except after a touch, which keeps it
    /// (as memcached's touch and gat do), so it travels on its own.
    pub cas: u64,
    pub flags: u32,
    /// Absolute Unix time, 0 = never.
    pub exptime: u32,
    pub bits: u8,
}

/// What a record says about the key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// The item as it now is.
    Store(ItemRecord),
    /// The item after a touch (same state, new expiry).
    Touch(ItemRecord),
    /// The key is gone (a tombstone).
    Delete { key: Bytes },
    /// The flush state after a `flush_all` (`crate::mutation::FlushSpec`):
    /// items with a version up to `hidden` are dead, and from Unix second
    /// `at` (0 = none pending) those up to `ceiling` too.
    Flush { hidden: u64, at: u32, ceiling: u64 },
}

/// One replicated state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number in the origin node's mutation stream.
    pub origin_seq: u64,
    pub version: u64,
    pub body: RecordBody,
}

/// A message on the twin link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
        node_id: u16,
        history_id: u128,
        wall_ms: u64,
        nonce: [u8; 32],
    },
    Auth {
        proof: [u8; 32],
    },
    /// At most [`MAX_POSITIONS`] entries.
    Positions {
        entries: Vec<Position>,
    },
    /// `message` is at most [`MAX_REFUSE_MESSAGE`] bytes.
    Refuse {
        reason: RefuseReason,
        message: String,
    },
    Batch {
        origin: u16,
        records: Vec<Record>,
    },
    Ack {
        origin: u16,
        seq: u64,
    },
    Ping {
        wall_ms: u64,
    },
    /// From the sender of `origin`'s changes: all of them with a version at
    /// or below `version` are in the frames sent before this one.
    Synced {
        origin: u16,
        version: u64,
    },
    /// From a sender about to close (clean shutdown): answer with
    /// [`Frame::FenceAck`] once every frame before this one is applied. An
    /// application-level receipt: a TCP FIN may be answered by a proxy.
    Fence {
        token: u64,
    },
    /// Everything before the [`Frame::Fence`] with this token is applied.
    FenceAck {
        token: u64,
    },
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Auth { .. } => kind::AUTH,
            Frame::Positions { .. } => kind::POSITIONS,
            Frame::Refuse { .. } => kind::REFUSE,
            Frame::Batch { .. } => kind::BATCH,
            Frame::Ack { .. } => kind::ACK,
            Frame::Ping { .. } => kind::PING,
            Frame::Synced { .. } => kind::SYNCED,
            Frame::Fence { .. } => kind::FENCE,
            Frame::FenceAck { .. } => kind::FENCE_ACK,
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Append `frame` (len, kind, payload) to `out`.
///
/// The encoder trusts its caller for what the decoder checks: keys of 1 to
/// [`MAX_KEY`] bytes and a frame within the peer's limit (size batches with
/// [`record_wire_len`] or [`BatchWriter::bytes`]). Two limits it enforces by
/// clamping, so it never emits a frame the peer must reject: Positions beyond
/// [`MAX_POSITIONS`] are dropped and a Refuse message is cut to
/// [`MAX_REFUSE_MESSAGE`] bytes at a character boundary.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u8(frame.kind());
    match frame {
        Frame::Hello {
            version,
            node_id,
            history_id,
            wall_ms,
            nonce,
        } => {
            out.put_slice(&MAGIC);
            out.put_u16_le(*version);
            out.put_u16_le(*node_id);
            out.put_u128_le(*history_id);
            out.put_u64_le(*wall_ms);
            out.put_slice(nonce);
        }
        Frame::Auth { proof } => out.put_slice(proof),
        Frame::Positions { entries } => put_positions(out, entries),
        Frame::Refuse { reason, message } => put_refuse(out, *reason, message),
        Frame::Batch { origin, records } => {
            out.put_u16_le(*origin);
            out.put_u32_le(clamp_u32(records.len()));
            for rec in records {
                put_record(out, rec);
            }
        }
        Frame::Ack { origin, seq } => {
            out.put_u16_le(*origin);
            out.put_u64_le(*seq);
        }
        Frame::Ping { wall_ms } => out.put_u64_le(*wall_ms),
        Frame::Fence { token } | Frame::FenceAck { token } => out.put_u64_le(*token),
        Frame::Synced { origin, version } => {
            out.put_u16_le(*origin);
            out.put_u64_le(*version);
        }
    }
    patch_u32(out, start, out.len() - start - LEN_PREFIX);
}

fn put_positions(out: &mut BytesMut, entries: &[Position]) {
    let entries = &entries[..entries.len().min(MAX_POSITIONS)];
    out.put_u16_le(entries.len() as u16);
    for p in entries {
        out.put_u16_le(p.origin);
        out.put_u64_le(p.seq);
        out.put_u64_le(p.version);
    }
}

fn put_refuse(out: &mut BytesMut, reason: RefuseReason, message: &str) {
    let message = truncate_utf8(message, MAX_REFUSE_MESSAGE);
    out.put_u8(reason.code());
    out.put_u16_le(message.len() as u16);
    out.put_slice(message.as_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Overwrite the four bytes at `at` with `value` (clamped to u32).
fn patch_u32(out: &mut BytesMut, at: usize, value: usize) {
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&clamp_u32(value).to_le_bytes());
    }
}

/// The key field of a record (empty for Flush).
fn record_key(body: &RecordBody) -> &[u8] {
    match body {
        RecordBody::Store(item) | RecordBody::Touch(item) => &item.key,
        RecordBody::Delete { key } => key,
        RecordBody::Flush { .. } => &[],
    }
}

fn record_tag(body: &RecordBody) -> u8 {
    match body {
        RecordBody::Store(_) => tag::STORE,
        RecordBody::Touch(_) => tag::TOUCH,
        RecordBody::Delete { .. } => tag::DELETE,
        RecordBody::Flush { .. } => tag::FLUSH,
    }
}

/// Bytes `rec` takes inside a Batch payload.
pub fn record_wire_len(rec: &Record) -> usize {
    let tail = match &rec.body {
        RecordBody::Store(item) | RecordBody::Touch(item) => ITEM_TAIL + item.value.len(),
        RecordBody::Delete { .. } => 0,
        RecordBody::Flush { .. } => FLUSH_TAIL,
    };
    RECORD_HEAD + record_key(&rec.body).len() + tail
}

fn put_record(out: &mut BytesMut, rec: &Record) {
    let key = record_key(&rec.body);
    out.reserve(record_wire_len(rec));
    out.put_u8(record_tag(&rec.body));
    out.put_u64_le(rec.origin_seq);
    out.put_u64_le(rec.version);
    out.put_u16_le(key.len() as u16);
    out.put_slice(key);
    match &rec.body {
        RecordBody::Store(item) | RecordBody::Touch(item) => put_item_tail(out, item),
        RecordBody::Delete { .. } => {}
        RecordBody::Flush {
            hidden,
            at,
            ceiling,
        } => {
            out.put_u64_le(*hidden);
            out.put_u32_le(*at);
            out.put_u64_le(*ceiling);
        }
    }
}

fn put_item_tail(out: &mut BytesMut, item: &ItemRecord) {
    out.put_u64_le(item.cas);
    out.put_u32_le(item.flags);
    out.put_u32_le(item.exptime);
    out.put_u8(item.bits);
    out.put_u32_le(clamp_u32(item.value.len()));
    out.put_slice(&item.value);
}

/// Builds a [`Frame::Batch`] in place in the output buffer, one record at a
/// time, without collecting a `Vec<Record>`: [`begin`](Self::begin) writes
/// the header with placeholder length and count, [`push`](Self::push) appends
/// records, [`finish`](Self::finish) patches the header. The result decodes to
/// the same frame [`encode`] would have written for those records.
///
/// Between `begin` and `finish` nothing else may be written to, or removed
/// from, `out`.
#[derive(Debug)]
#[must_use = "a batch must be finished, or its header stays unpatched"]
pub struct BatchWriter {
    start: usize,
    count: u32,
    bytes: usize,
}

impl BatchWriter {
    /// Start a batch of records from `origin` at the end of `out`.
    pub fn begin(out: &mut BytesMut, origin: u16) -> BatchWriter {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u8(kind::BATCH);
        out.put_u16_le(origin);
        out.put_u32_le(0);
        BatchWriter {
            start,
            count: 0,
            bytes: BATCH_HEADER,
        }
    }

    /// Append one record. Cloning a record whose key and value are
    /// [`Bytes`] only bumps reference counts, so callers may build a
    /// throw-away [`Record`] around data they already hold.
    pub fn push(&mut self, out: &mut BytesMut, rec: &Record) {
        put_record(out, rec);
        self.count = self.count.saturating_add(1);
        self.bytes += record_wire_len(rec);
    }

    /// Records pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Size of the frame so far, its 4-byte length prefix included. The peer
    /// accepts the frame while `bytes() - 4` stays within its `max_frame`, so
    /// check `bytes() + record_wire_len(next)` before pushing more.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Patch the frame's length and record count.
    pub fn finish(self, out: &mut BytesMut) {
        patch_u32(out, self.start, out.len() - self.start - LEN_PREFIX);
        patch_u32(out, self.start + LEN_PREFIX + 1 + 2, self.count as usize);
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Take one frame off the front of `buf`.
///
/// `Ok(None)`: the frame is not complete yet and `buf` is untouched. `Ok(Some)`:
/// exactly that frame's bytes were consumed. `Err`: the link is broken and
/// should be closed; a length error leaves `buf` untouched, a payload error
/// consumes the bad frame. `max_frame` bounds the `len` field (kind plus
/// payload), so a hostile peer cannot make the reader buffer more than that.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = le_u32(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_frame {
        return Err(FrameError::Oversized {
            len,
            max: max_frame,
        });
    }
    if buf.len() - LEN_PREFIX < len {
        return Ok(None);
    }
    let frame = buf.split_to(LEN_PREFIX + len).freeze().slice(LEN_PREFIX..);
    let mut r = Reader(frame);
    let kind = r.u8("missing kind")?;
    let frame = decode_payload(kind, &mut r)?;
    r.finish()?;
    Ok(Some(frame))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn decode_payload(kind: u8, r: &mut Reader) -> Result<Frame, FrameError> {
    match kind {
        kind::HELLO => decode_hello(r),
        kind::AUTH => Ok(Frame::Auth {
            proof: r.array("short auth proof")?,
        }),
        kind::POSITIONS => decode_positions(r),
        kind::REFUSE => decode_refuse(r),
        kind::BATCH => decode_batch(r),
        kind::ACK => Ok(Frame::Ack {
            origin: r.u16("short ack")?,
            seq: r.u64("short ack")?,
        }),
        kind::PING => Ok(Frame::Ping {
            wall_ms: r.u64("short ping")?,
        }),
        kind::SYNCED => Ok(Frame::Synced {
            origin: r.u16("short synced")?,
            version: r.u64("short synced")?,
        }),
        kind::FENCE => Ok(Frame::Fence {
            token: r.u64("short fence")?,
        }),
        kind::FENCE_ACK => Ok(Frame::FenceAck {
            token: r.u64("short fence ack")?,
        }),
        other => Err(FrameError::UnknownKind(other)),
    }
}

fn decode_hello(r: &mut Reader) -> Result<Frame, FrameError> {
    const SHORT: &str = "short hello";
    if r.array::<4>(SHORT)? != MAGIC {
        return Err(FrameError::BadMagic);
    }
    Ok(Frame::Hello {
        version: r.u16(SHORT)?,
        node_id: r.u16(SHORT)?,
        history_id: r.u128(SHORT)?,
        wall_ms: r.u64(SHORT)?,
        nonce: r.array(SHORT)?,
    })
}

fn decode_positions(r: &mut Reader) -> Result<Frame, FrameError> {
    const SHORT: &str = "short positions";
    let count = r.u16(SHORT)? as usize;
    if count > MAX_POSITIONS {
        return Err(FrameError::Malformed("too many positions"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push(Position {
            origin: r.u16(SHORT)?,
            seq: r.u64(SHORT)?,
            version: r.u64(SHORT)?,
        });
    }
    Ok(Frame::Positions { entries })
}

fn decode_refuse(r: &mut Reader) -> Result<Frame, FrameError> {
    const SHORT: &str = "short refuse";
    let reason = RefuseReason::from_code(r.u8(SHORT)?)
        .ok_or(FrameError::Malformed("unknown refuse reason"))?;
    let len = r.u16(SHORT)? as usize;
    if len > MAX_REFUSE_MESSAGE {
        return Err(FrameError::Malformed("refuse message too long"));
    }
    let raw = r.take(len, SHORT)?;
    let message = std::str::from_utf8(&raw)
        .map_err(|_| FrameError::Malformed("refuse message is not UTF-8"))?
        .to_owned();
    Ok(Frame::Refuse { reason, message })
}

fn decode_batch(r: &mut Reader) -> Result<Frame, FrameError> {
    const SHORT: &str = "short batch";
    let origin = r.u16(SHORT)?;
    let count = r.u32(SHORT)? as usize;
    // The count is untrusted: never reserve more than the bytes could hold.
    let mut records = Vec::with_capacity(count.min(r.remaining() / RECORD_HEAD));
    for _ in 0..count {
        records.push(decode_record(r)?);
    }
    Ok(Frame::Batch { origin, records })
}

fn decode_record(r: &mut Reader) -> Result<Record, FrameError> {
    const SHORT: &str = "short record";
    let tag = r.u8(SHORT)?;
    let origin_seq = r.u64(SHORT)?;
    let version = r.u64(SHORT)?;
    let key_len = r.u16(SHORT)? as usize;
    check_key_len(tag, key_len)?;
    let key = r.take(key_len, SHORT)?;
    let body = match tag {
        tag::STORE => RecordBody::Store(decode_item(r, key)?),
        tag::TOUCH => RecordBody::Touch(decode_item(r, key)?),
        tag::DELETE => RecordBody::Delete { key },
        _ => RecordBody::Flush {
            hidden: r.u64(SHORT)?,
            at: r.u32(SHORT)?,
            ceiling: r.u64(SHORT)?,
        },
    };
    Ok(Record {
        origin_seq,
        version,
        body,
    })
}

/// Validate the tag and its key length (1..=MAX_KEY, or 0 for Flush).
fn check_key_len(tag: u8, key_len: usize) -> Result<(), FrameError> {
    match tag {
        tag::STORE | tag::TOUCH | tag::DELETE if (1..=MAX_KEY).contains(&key_len) => Ok(()),
        tag::STORE | tag::TOUCH | tag::DELETE => Err(FrameError::Malformed("bad key length")),
        tag::FLUSH if key_len == 0 => Ok(()),
        tag::FLUSH => Err(FrameError::Malformed("flush record with a key")),
        _ => Err(FrameError::Malformed("unknown record tag")),
    }
}

fn decode_item(r: &mut Reader, key: Bytes) -> Result<ItemRecord, FrameError> {
    const SHORT: &str = "short item record";
    let cas = r.u64(SHORT)?;
    let flags = r.u32(SHORT)?;
    let exptime = r.u32(SHORT)?;
    let bits = r.u8(SHORT)?;
    let value_len = r.u32(SHORT)? as usize;
    Ok(ItemRecord {
        key,
        value: r.take(value_len, SHORT)?,
        cas,
        flags,
        exptime,
        bits,
    })
}

/// Bounds-checked little-endian reader over a received frame (the `bytes`
/// crate's `try_get_*`, with our error); `take` hands out zero-copy slices.
struct Reader(Bytes);

impl Reader {
    fn remaining(&self) -> usize {
        self.0.len()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed(what));
        }
        Ok(self.0.split_to(n))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        self.0.try_get_u8().map_err(|_| FrameError::Malformed(what))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        self.0
            .try_get_u16_le()
            .map_err(|_| FrameError::Malformed(what))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        self.0
            .try_get_u32_le()
            .map_err(|_| FrameError::Malformed(what))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        self.0
            .try_get_u64_le()
            .map_err(|_| FrameError::Malformed(what))
    }

    fn u128(&mut self, what: &'static str) -> Result<u128, FrameError> {
        self.0
            .try_get_u128_le()
            .map_err(|_| FrameError::Malformed(what))
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed("trailing bytes"))
        }
    }
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

/// The MAC a node keyed with `secret` computes as its proof: over the peer's
/// challenge first, its own second, then its own node id and the peer's.
fn proof_mac(
    secret: &[u8],
    signer_nonce: &[u8; 32],
    challenger_nonce: &[u8; 32],
    signer_node: u16,
    challenger_node: u16,
) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(AUTH_CONTEXT);
    mac.update(challenger_nonce);
    mac.update(signer_nonce);
    mac.update(&signer_node.to_le_bytes());
    mac.update(&challenger_node.to_le_bytes());
    mac
}

/// The proof this node sends in its [`Frame::Auth`]:
/// `HMAC-SHA256(secret, "memtwin twin auth v1" || peer_nonce || own_nonce ||
/// own_node LE || peer_node LE)`.
///
/// Signing the peer's fresh nonce proves knowledge of the secret *now* (a
/// recorded proof is useless against a new nonce); including our own nonce
/// and both node ids, in signer-first order, makes the proof directional.
pub fn auth_proof(
    secret: &[u8],
    own_nonce: &[u8; 32],
    peer_nonce: &[u8; 32],
    own_node: u16,
    peer_node: u16,
) -> [u8; 32] {
    proof_mac(secret, own_nonce, peer_nonce, own_node, peer_node)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `proof` is what the peer must have sent: [`auth_proof`] with the
/// roles swapped (the peer signs *our* nonce first and names itself first).
/// The comparison is constant-time.
///
/// Why reflection fails: an attacker without the secret who opens a link to
/// us, and relays our own challenge or our own proof back, gets a MAC over
/// `peer_nonce || my_nonce || my_node || peer_node`, while we accept only one
/// over `my_nonce || peer_nonce || peer_node || my_node`. With distinct node
/// ids (the caller refuses [`RefuseReason::SameNode`] before authenticating)
/// the two inputs always differ, so a node's own proof never verifies as its
/// peer's. Callers should also refuse a Hello echoing their own nonce.
pub fn verify_proof(
    secret: &[u8],
    my_nonce: &[u8; 32],
    peer_nonce: &[u8; 32],
    my_node: u16,
    peer_node: u16,
    proof: &[u8; 32],
) -> bool {
    proof_mac(secret, peer_nonce, my_nonce, peer_node, my_node)
        .verify_slice(proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(key: &'static [u8], value: &'static [u8]) -> ItemRecord {
        ItemRecord {
            key: Bytes::from_static(key),
            value: Bytes::from_static(value),
            cas: 8,
            flags: 0x0102_0304,
            exptime: 5,
            bits: 1,
        }
    }

    fn rec(origin_seq: u64, body: RecordBody) -> Record {
        Record {
            origin_seq,
            version: origin_seq + 100,
            body,
        }
    }

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                node_id: 7,
                history_id: u128::MAX - 3,
                wall_ms: 1_800_000_000_123,
                nonce: [0xa5; 32],
            },
            Frame::Auth { proof: [9; 32] },
            Frame::Positions { entries: vec![] },
            Frame::Positions {
                entries: vec![
                    Position {
                        origin: 1,
                        seq: 2,
                        version: 3,
                    },
                    Position {
                        origin: 2,
                        seq: u64::MAX,
                        version: 0,
                    },
                ],
            },
            Frame::Refuse {
                reason: RefuseReason::ClockSkew,
                message: "clock differs by 12 s — fix NTP".into(),
            },
            Frame::Batch {
                origin: 3,
                records: vec![],
            },
            Frame::Batch {
                origin: 3,
                records: vec![
                    rec(1, RecordBody::Store(item(b"k", b"v\r\n"))),
                    rec(2, RecordBody::Touch(item(b"session:1", b""))),
                    rec(
                        3,
                        RecordBody::Delete {
                            key: Bytes::from_static(b"gone"),
                        },
                    ),
                    rec(
                        4,
                        RecordBody::Flush {
                            hidden: 5,
                            at: 77,
                            ceiling: 1 << 40,
                        },
                    ),
                ],
            },
            Frame::Ack {
                origin: 2,
                seq: 1 << 33,
            },
            Frame::Ping { wall_ms: 42 },
            Frame::Synced {
                origin: 4095,
                version: u64::MAX,
            },
            Frame::Fence { token: 7 },
            Frame::FenceAck { token: u64::MAX },
        ]
    }

    fn encoded(frame: &Frame) -> BytesMut {
        let mut b = BytesMut::new();
        encode(frame, &mut b);
        b
    }

    fn decode_all(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        decode(&mut BytesMut::from(bytes), MAX_FRAME_DEFAULT)
    }

    /// A frame of `kind` with `payload`, length prefix computed.
    fn raw(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
        v.push(kind);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn every_kind_round_trips() {
        for f in sample_frames() {
            let mut b = encoded(&f);
            assert_eq!(decode(&mut b, MAX_FRAME_DEFAULT), Ok(Some(f)));
            assert!(b.is_empty(), "exactly one frame consumed");
        }
    }

    #[test]
    fn back_to_back_frames_decode_one_at_a_time() {
        let frames = sample_frames();
        let mut b = BytesMut::new();
        for f in &frames {
            encode(f, &mut b);
        }
        for f in frames {
            assert_eq!(decode(&mut b, MAX_FRAME_DEFAULT), Ok(Some(f)));
        }
        assert_eq!(decode(&mut b, MAX_FRAME_DEFAULT), Ok(None));
    }

    #[test]
    fn batch_layout_is_stable() {
        // The wire format is a compatibility promise between twins of
        // different builds: pin the bytes.
        let f = Frame::Batch {
            origin: 2,
            records: vec![Record {
                origin_seq: 7,
                version: 9,
                body: RecordBody::Store(item(b"k", b"v")),
            }],
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            49, 0, 0, 0,             // len
            5,                       // kind: batch
            2, 0,                    // origin
            1, 0, 0, 0,              // count
            1,                       // tag: store
            7, 0, 0, 0, 0, 0, 0, 0,  // origin_seq
            9, 0, 0, 0, 0, 0, 0, 0,  // version
            1, 0, b'k',              // key
            8, 0, 0, 0, 0, 0, 0, 0,  // cas
            4, 3, 2, 1,              // flags
            5, 0, 0, 0,              // exptime
            1,                       // bits
            1, 0, 0, 0, b'v',        // value
        ];
        assert_eq!(&encoded(&f)[..], want);
    }

    #[test]
    fn decoded_keys_and_values_share_the_frame() {
        let f = Frame::Batch {
            origin: 1,
            records: vec![rec(1, RecordBody::Store(item(b"key", b"value")))],
        };
        let mut b = encoded(&f);
        let base = b.as_ptr() as usize;
        let end = base + b.len();
        let Ok(Some(Frame::Batch { records, .. })) = decode(&mut b, MAX_FRAME_DEFAULT) else {
            panic!("decodes");
        };
        let RecordBody::Store(it) = &records[0].body else {
            panic!("store");
        };
        for p in [it.key.as_ptr() as usize, it.value.as_ptr() as usize] {
            assert!((base..end).contains(&p), "zero-copy slice");
        }
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        for f in sample_frames() {
            let full = encoded(&f);
            for n in 0..full.len() {
                let mut b = BytesMut::from(&full[..n]);
                assert_eq!(
                    decode(&mut b, MAX_FRAME_DEFAULT),
                    Ok(None),
                    "{f:?} prefix {n}"
                );
                assert_eq!(&b[..], &full[..n], "buffer untouched");
            }
        }
    }

    #[test]
    fn length_errors() {
        let mut b = BytesMut::from(&[0u8, 0, 0, 0, 1][..]);
        assert_eq!(decode(&mut b, MAX_FRAME_DEFAULT), Err(FrameError::Empty));
        let over = (MAX_FRAME_DEFAULT as u32 + 1).to_le_bytes();
        assert_eq!(
            decode_all(&over),
            Err(FrameError::Oversized {
                len: MAX_FRAME_DEFAULT + 1,
                max: MAX_FRAME_DEFAULT
            })
        );
        let ping = encoded(&Frame::Ping { wall_ms: 1 });
        assert_eq!(
            decode(&mut ping.clone(), 8),
            Err(FrameError::Oversized { len: 9, max: 8 })
        );
        assert!(decode(&mut ping.clone(), 9).is_ok());
    }

    #[test]
    fn unknown_kind() {
        assert_eq!(decode_all(&raw(0, &[])), Err(FrameError::UnknownKind(0)));
        assert_eq!(
            decode_all(&raw(99, &[1, 2])),
            Err(FrameError::UnknownKind(99))
        );
    }

    #[test]
    fn hello_magic_and_foreign_version() {
        let hello = Frame::Hello {
            version: 9,
            node_id: 1,
            history_id: 2,
            wall_ms: 3,
            nonce: [4; 32],
        };
        let mut b = encoded(&hello);
        assert_eq!(
            decode(&mut b.clone(), MAX_FRAME_DEFAULT),
            Ok(Some(hello)),
            "other version decodes"
        );
        b[5] = b'X';
        assert_eq!(decode(&mut b, MAX_FRAME_DEFAULT), Err(FrameError::BadMagic));
    }

    #[test]
    fn trailing_and_short_payloads_are_malformed() {
        for f in sample_frames() {
            let full = encoded(&f);
            let mut payload = full[5..].to_vec();
            payload.push(0);
            let long = raw(full[4], &payload);
            assert_eq!(
                decode_all(&long),
                Err(FrameError::Malformed("trailing bytes")),
                "{f:?}"
            );
            if full.len() > 5 {
                let short = raw(full[4], &full[5..full.len() - 1]);
                assert!(
                    matches!(decode_all(&short), Err(FrameError::Malformed(_))),
                    "{f:?}"
                );
            }
        }
    }

    #[test]
    fn bad_refuse_frames() {
        let mut p = vec![RefuseReason::Other.code(), 2, 0, 0xff, 0xfe];
        assert_eq!(
            decode_all(&raw(kind::REFUSE, &p)),
            Err(FrameError::Malformed("refuse message is not UTF-8"))
        );
        p[0] = 0;
        assert_eq!(
            decode_all(&raw(kind::REFUSE, &p)),
            Err(FrameError::Malformed("unknown refuse reason"))
        );
        let mut long = vec![1u8];
        long.extend_from_slice(&1025u16.to_le_bytes());
        long.extend_from_slice(&[b'a'; 1025]);
        assert_eq!(
            decode_all(&raw(kind::REFUSE, &long)),
            Err(FrameError::Malformed("refuse message too long"))
        );
        for code in 1..=6 {
            let r = RefuseReason::from_code(code).expect("known code");
            assert_eq!(r.code(), code);
        }
        assert_eq!(RefuseReason::from_code(7), None);
    }

    #[test]
    fn encoder_clamps_refuse_message_and_positions() {
        let message = "é".repeat(600); // 1200 bytes
        let f = Frame::Refuse {
            reason: RefuseReason::Busy,
            message: message.clone(),
        };
        let Ok(Some(Frame::Refuse { message: got, .. })) = decode_all(&encoded(&f)) else {
            panic!("decodes");
        };
        assert_eq!(got, "é".repeat(512));
        let p = Position {
            origin: 0,
            seq: 0,
            version: 0,
        };
        let f = Frame::Positions {
            entries: vec![p; 70],
        };
        assert_eq!(
            decode_all(&encoded(&f)),
            Ok(Some(Frame::Positions {
                entries: vec![p; MAX_POSITIONS]
            }))
        );
        let mut many = 65u16.to_le_bytes().to_vec();
        many.extend_from_slice(&[0; 65 * 18]);
        assert_eq!(
            decode_all(&raw(kind::POSITIONS, &many)),
            Err(FrameError::Malformed("too many positions"))
        );
    }

    fn batch_of(records: Vec<Record>) -> Vec<u8> {
        encoded(&Frame::Batch { origin: 1, records }).to_vec()
    }

    #[test]
    fn key_length_limits() {
        let key = |n: usize| Bytes::from(vec![b'k'; n]);
        let del = |n| rec(1, RecordBody::Delete { key: key(n) });
        assert!(decode_all(&batch_of(vec![del(MAX_KEY)])).is_ok());
        for n in [0, MAX_KEY + 1] {
            assert_eq!(
                decode_all(&batch_of(vec![del(n)])),
                Err(FrameError::Malformed("bad key length"))
            );
            let mut it = item(b"x", b"v");
            it.key = key(n);
            assert_eq!(
                decode_all(&batch_of(vec![rec(1, RecordBody::Store(it))])),
                Err(FrameError::Malformed("bad key length"))
            );
        }
        // A flush record carrying a key.
        let mut b = batch_of(vec![rec(
            1,
            RecordBody::Flush {
                hidden: 0,
                at: 0,
                ceiling: 0,
            },
        )]);
        b[11 + 17] = 1;
        assert_eq!(
            decode_all(&b),
            Err(FrameError::Malformed("flush record with a key"))
        );
        let mut b = batch_of(vec![del(1)]);
        b[11] = 9;
        assert_eq!(
            decode_all(&b),
            Err(FrameError::Malformed("unknown record tag"))
        );
    }

    #[test]
    fn huge_batch_count_is_not_trusted() {
        let mut p = 1u16.to_le_bytes().to_vec();
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_all(&raw(kind::BATCH, &p)),
            Err(FrameError::Malformed("short record"))
        );
    }

    #[test]
    fn batch_writer_matches_encode() {
        let Some(Frame::Batch { origin, records }) = sample_frames().into_iter().nth(6) else {
            panic!("sample batch");
        };
        let mut out = BytesMut::from(&b"prefix"[..]);
        let mut w = BatchWriter::begin(&mut out, origin);
        assert_eq!(w.bytes(), BATCH_HEADER);
        for r in &records {
            w.push(&mut out, r);
        }
        assert_eq!(w.count(), 4);
        assert_eq!(w.bytes(), out.len() - 6);
        assert_eq!(
            w.bytes(),
            BATCH_HEADER + records.iter().map(record_wire_len).sum::<usize>()
        );
        w.finish(&mut out);
        let want = Frame::Batch { origin, records };
        assert_eq!(&out[6..], &encoded(&want)[..]);
        let _ = out.split_to(6);
        assert_eq!(decode(&mut out, MAX_FRAME_DEFAULT), Ok(Some(want)));
    }

    const SECRET: &[u8] = b"correct horse battery staple";
    const NA: [u8; 32] = [1; 32];
    const NB: [u8; 32] = [2; 32];

    #[test]
    fn proof_verifies_on_the_other_side() {
        let a = auth_proof(SECRET, &NA, &NB, 1, 2);
        let b = auth_proof(SECRET, &NB, &NA, 2, 1);
        assert!(verify_proof(SECRET, &NB, &NA, 2, 1, &a), "B accepts A");
        assert!(verify_proof(SECRET, &NA, &NB, 1, 2, &b), "A accepts B");
        assert_ne!(a, b);
    }

    #[test]
    fn proof_fails_with_wrong_secret() {
        let a = auth_proof(b"wrong", &NA, &NB, 1, 2);
        assert!(!verify_proof(SECRET, &NB, &NA, 2, 1, &a));
        let empty = auth_proof(b"", &NA, &NB, 1, 2);
        assert!(!verify_proof(SECRET, &NB, &NA, 2, 1, &empty));
    }

    #[test]
    fn reflected_proof_fails() {
        // A's own proof handed back to A as if the peer had sent it.
        let a = auth_proof(SECRET, &NA, &NB, 1, 2);
        assert!(!verify_proof(SECRET, &NA, &NB, 1, 2, &a));
        // Even when the attacker echoes A's nonce as its own.
        let echo = auth_proof(SECRET, &NA, &NA, 1, 2);
        assert!(!verify_proof(SECRET, &NA, &NA, 1, 2, &echo));
    }

    #[test]
    fn proof_is_bound_to_node_ids() {
        let a = auth_proof(SECRET, &NA, &NB, 1, 2);
        assert!(!verify_proof(SECRET, &NB, &NA, 1, 2, &a), "swapped ids");
        assert!(
            !verify_proof(SECRET, &NB, &NA, 3, 1, &a),
            "other verifier id"
        );
        let mut bad = a;
        bad[31] ^= 1;
        assert!(!verify_proof(SECRET, &NB, &NA, 2, 1, &bad));
    }

    fn arb_bytes(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), len).prop_map(Bytes::from)
    }

    fn arb_item() -> impl Strategy<Value = ItemRecord> {
        (
            arb_bytes(1..=MAX_KEY),
            arb_bytes(0..=64),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            any::<u64>(),
        )
            .prop_map(|(key, value, flags, exptime, bits, cas)| ItemRecord {
                key,
                value,
                cas,
                flags,
                exptime,
                bits,
            })
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let body = prop_oneof![
            arb_item().prop_map(RecordBody::Store),
            arb_item().prop_map(RecordBody::Touch),
            arb_bytes(1..=MAX_KEY).prop_map(|key| RecordBody::Delete { key }),
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(hidden, at, ceiling)| {
                RecordBody::Flush {
                    hidden,
                    at,
                    ceiling,
                }
            }),
        ];
        (any::<u64>(), any::<u64>(), body).prop_map(|(origin_seq, version, body)| Record {
            origin_seq,
            version,
            body,
        })
    }

    fn arb_reason() -> impl Strategy<Value = RefuseReason> {
        (1u8..=6).prop_filter_map("known code", RefuseReason::from_code)
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let position =
            (any::<u16>(), any::<u64>(), any::<u64>()).prop_map(|(origin, seq, version)| {
                Position {
                    origin,
                    seq,
                    version,
                }
            });
        prop_oneof![
            (
                any::<u16>(),
                any::<u16>(),
                any::<u128>(),
                any::<u64>(),
                any::<[u8; 32]>()
            )
                .prop_map(|(version, node_id, history_id, wall_ms, nonce)| {
                    Frame::Hello {
                        version,
                        node_id,
                        history_id,
                        wall_ms,
                        nonce,
                    }
                }),
            any::<[u8; 32]>().prop_map(|proof| Frame::Auth { proof }),
            proptest::collection::vec(position, 0..=MAX_POSITIONS)
                .prop_map(|entries| Frame::Positions { entries }),
            (arb_reason(), "\\PC{0,200}")
                .prop_map(|(reason, message)| Frame::Refuse { reason, message }),
            (any::<u16>(), proptest::collection::vec(arb_record(), 0..8))
                .prop_map(|(origin, records)| Frame::Batch { origin, records }),
            (any::<u16>(), any::<u64>()).prop_map(|(origin, seq)| Frame::Ack { origin, seq }),
            any::<u64>().prop_map(|wall_ms| Frame::Ping { wall_ms }),
            (any::<u16>(), any::<u64>())
                .prop_map(|(origin, version)| Frame::Synced { origin, version }),
            any::<u64>().prop_map(|token| Frame::Fence { token }),
            any::<u64>().prop_map(|token| Frame::FenceAck { token }),
        ]
    }

    proptest! {
        #[test]
        fn any_frame_round_trips(f in arb_frame()) {
            let mut b = encoded(&f);
            prop_assert_eq!(decode(&mut b, MAX_FRAME_DEFAULT), Ok(Some(f)));
            prop_assert!(b.is_empty());
        }

        #[test]
        fn batch_writer_equals_encode(origin: u16, records in proptest::collection::vec(arb_record(), 0..8)) {
            let mut out = BytesMut::new();
            let mut w = BatchWriter::begin(&mut out, origin);
            for r in &records {
                w.push(&mut out, r);
            }
            prop_assert_eq!(w.count() as usize, records.len());
            prop_assert_eq!(w.bytes(), out.len());
            w.finish(&mut out);
            prop_assert_eq!(&out[..], &encoded(&Frame::Batch { origin, records })[..]);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_all(&b);
        }

        #[test]
        fn garbage_after_a_plausible_header_never_panics(kind in 0u8..10, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_all(&raw(kind, &payload));
        }

        #[test]
        fn prefixes_need_more_and_bit_flips_never_panic(f in arb_frame(), cut: prop::sample::Index, flip: prop::sample::Index, bit in 0u8..8) {
            let full = encoded(&f);
            let n = cut.index(full.len());
            prop_assert_eq!(decode_all(&full[..n]), Ok(None));
            let mut flipped = full.to_vec();
            let i = flip.index(flipped.len());
            flipped[i] ^= 1 << bit;
            let _ = decode_all(&flipped);
            let _ = decode(&mut BytesMut::from(&flipped[..]), 64);
        }
    }
}
