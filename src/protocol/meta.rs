//! memcached's meta commands (`mg`, `ms`, `md`, `ma`, `mn`, `me`): request
//! parsing and reply helpers, with no I/O.
//!
//! Why a parser of its own rather than the classic one: meta lines are a key
//! plus single-character flags whose replies echo them *in request order*, and
//! memcached 1.6.18 validates them in a particular sequence whose first failure
//! decides the exact error line (and, for `ms`, whether the data block is
//! swallowed). [`parse`] reproduces that sequence:
//!
//! 1. missing key → `ERROR` (`me`: `CLIENT_ERROR bad command line format`);
//! 2. key over 250 bytes (the base64 text, before decoding) → bad format;
//! 3. `ms` without a datalen → bad format;
//! 4. more than 19 tokens in all → "options flags (are) too long";
//! 5. `ms` datalen not a number in `0..=INT_MAX-2` → bad format (not swallowed);
//! 6. the flag pre-parse: a repeated (or non-ASCII) flag → `duplicate flag` and
//!    an unknown one → `invalid flag`, both at once; bad numbers and base64
//!    keys are noted and parsing goes on, the *last* noted message wins.
//!    `md`/`ma` turn every pre-parse failure into `invalid or duplicate flag`;
//! 7. `ms`: bad mode, then an over-long opaque; `md`: over-long opaque;
//!    `ma`: bad mode.
//!
//! An over-long opaque on `mg`/`ma` is found only while memcached builds the
//! reply, after the command has taken effect up to that flag; [`Request::bad_opaque`]
//! tells the session where to stop.
//!
//! Errors are [`MetaError`] values, one per exact reply line.

use crate::engine::StoreMode;
use crate::protocol::base64;
use crate::protocol::number::{strtol_i32, strtoul_u32, strtoull};
use crate::protocol::text::{Tokens, KEY_MAX};
use bytes::{BufMut, BytesMut};
use std::borrow::Cow;

/// Most tokens a meta line may have, command and key included (memcached:
/// `ntokens > MFLAG_MAX_OPT_LENGTH (20)`, counting its terminal token).
pub const MAX_TOKENS: usize = 19;
/// Most flags a request can carry once the token limit is checked.
pub const MAX_FLAGS: usize = MAX_TOKENS - 2;
/// Longest opaque token, the `O` included (memcached `MFLAG_MAX_OPAQUE_LENGTH`).
pub const OPAQUE_MAX: usize = 32;

/// Which meta command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Get,
    Set,
    Delete,
    Arith,
    Noop,
    Debug,
}

impl Kind {
    /// The command for the second letter of `m?`.
    pub fn of(c: u8) -> Option<Kind> {
        Some(match c {
            b'g' => Kind::Get,
            b's' => Kind::Set,
            b'd' => Kind::Delete,
            b'a' => Kind::Arith,
            b'n' => Kind::Noop,
            b'e' => Kind::Debug,
            _ => return None,
        })
    }
}

/// One flag token: `code` is its first byte; `token` the whole token (an
/// opaque is echoed whole, `O` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag<'a> {
    pub code: u8,
    pub token: &'a [u8],
}

/// A parsed meta request. Flag values are pre-parsed; [`Request::flags`] keeps
/// the request order for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub kind: Kind,
    /// The key the item is stored under (base64-decoded with `b`).
    pub key: Cow<'a, [u8]>,
    /// `b`: the key was sent in base64 (and is echoed that way).
    pub binary: bool,
    /// `ms`: length of the data block that follows the line.
    pub datalen: usize,
    flags: [Flag<'a>; MAX_FLAGS],
    nflags: usize,
    /// `q`
    pub quiet: bool,
    /// `u`
    pub no_bump: bool,
    /// `v`
    pub value: bool,
    /// `T<ttl>`
    pub ttl: Option<i64>,
    /// `N<ttl>`
    pub vivify: Option<i64>,
    /// `R<ttl>`
    pub recache: Option<i64>,
    /// `F<flags>` (default 0; values above 32 bits truncate, as memcached's `safe_strtoul`).
    pub client_flags: u32,
    /// `C<cas>`
    pub cas: Option<u64>,
    /// `I`
    pub invalidate: bool,
    /// `J<initial>` (default 0)
    pub initial: u64,
    /// `D<delta>` (default 1)
    pub delta: u64,
    /// `ms` mode (`M<mode>`; `C` upgrades set and replace to compare-and-swap,
    /// which is [`StoreMode::Set`] with a CAS in the engine).
    pub store_mode: StoreMode,
    /// `ma` mode: increment (`I`, `+`, default) or decrement (`D`, `-`).
    pub incr: bool,
    /// `mg`/`ma`: index in [`Request::flags`] of the first opaque over
    /// [`OPAQUE_MAX`]. The command takes effect for the flags before it and
    /// then answers `CLIENT_ERROR opaque token too long`.
    pub bad_opaque: Option<usize>,
}

impl<'a> Request<'a> {
    fn new(kind: Kind, key: &'a [u8]) -> Self {
        Request {
            kind,
            key: Cow::Borrowed(key),
            binary: false,
            datalen: 0,
            flags: [Flag {
                code: 0,
                token: &[],
            }; MAX_FLAGS],
            nflags: 0,
            quiet: false,
            no_bump: false,
            value: false,
            ttl: None,
            vivify: None,
            recache: None,
            client_flags: 0,
            cas: None,
            invalidate: false,
            initial: 0,
            delta: 1,
            store_mode: StoreMode::Set,
            incr: true,
            bad_opaque: None,
        }
    }

    /// The flags, in request order.
    pub fn flags(&self) -> &[Flag<'a>] {
        &self.flags[..self.nflags]
    }

    /// Whether a flag with this code was sent.
    pub fn has(&self, code: u8) -> bool {
        self.flags().iter().any(|f| f.code == code)
    }

    /// The flags that take effect: all of them, or those before an over-long opaque.
    pub fn effective_flags(&self) -> &[Flag<'a>] {
        match self.bad_opaque {
            Some(i) => &self.flags()[..i],
            None => self.flags(),
        }
    }
}

/// A rejected meta line; each variant is one exact reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    /// `ERROR`
    Error,
    BadFormat,
    InvalidFlag,
    DuplicateFlag,
    BadToken,
    DecodingKey,
    InvalidInitial,
    InvalidDelta,
    ModeLength,
    MsMode,
    MaMode,
    OpaqueTooLong,
    /// `mg`'s wording.
    GetFlagsTooLong,
    /// `ms`/`md`/`ma` wording.
    FlagsTooLong,
    /// `md`/`ma`: every flag pre-parse failure.
    InvalidOrDuplicate,
    NonNumeric,
    TooLarge,
    NoMemory,
    BadDataChunk,
}

impl MetaError {
    /// The reply line, without `\r\n`.
    pub fn reply(self) -> &'static [u8] {
        match self {
            MetaError::Error => b"ERROR",
            MetaError::BadFormat => b"CLIENT_ERROR bad command line format",
            MetaError::InvalidFlag => b"CLIENT_ERROR invalid flag",
            MetaError::DuplicateFlag => b"CLIENT_ERROR duplicate flag",
            MetaError::BadToken => b"CLIENT_ERROR bad token in command line format",
            MetaError::DecodingKey => b"CLIENT_ERROR error decoding key",
            MetaError::InvalidInitial => b"CLIENT_ERROR invalid numeric initial value",
            MetaError::InvalidDelta => b"CLIENT_ERROR invalid numeric delta value",
            MetaError::ModeLength => b"CLIENT_ERROR incorrect length for M token",
            MetaError::MsMode => b"CLIENT_ERROR invalid mode for ms M token",
            MetaError::MaMode => b"CLIENT_ERROR invalid mode for ma M token",
            MetaError::OpaqueTooLong => b"CLIENT_ERROR opaque token too long",
            MetaError::GetFlagsTooLong => b"CLIENT_ERROR options flags are too long",
            MetaError::FlagsTooLong => b"CLIENT_ERROR options flags too long",
            MetaError::InvalidOrDuplicate => b"CLIENT_ERROR invalid or duplicate flag",
            MetaError::NonNumeric => {
                b"CLIENT_ERROR cannot increment or decrement non-numeric value"
            }
            MetaError::TooLarge => b"SERVER_ERROR object too large for cache",
            MetaError::NoMemory => b"SERVER_ERROR out of memory storing object",
            MetaError::BadDataChunk => b"CLIENT_ERROR bad data chunk",
        }
    }
}

/// A parse failure and, for `ms`, how many bytes of data block (+ `\r\n`) to discard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub error: MetaError,
    pub swallow: Option<usize>,
}

fn reject(error: MetaError) -> Rejected {
    Rejected {
        error,
        swallow: None,
    }
}

/// Parse the meta line `m<cmd> ...` (without its line terminator).
pub fn parse(cmd: u8, line: &[u8]) -> Result<Request<'_>, Rejected> {
    let kind = Kind::of(cmd).ok_or(reject(MetaError::Error))?;
    let mut toks = Tokens::new(line);
    let _name = toks.next();
    if kind == Kind::Noop {
        return Ok(Request::new(kind, &[]));
    }
    let Some(key) = toks.next() else {
        return Err(reject(if kind == Kind::Debug {
            MetaError::BadFormat
        } else {
            MetaError::Error
        }));
    };
    if key.len() > KEY_MAX {
        return Err(reject(MetaError::BadFormat));
    }
    let mut req = Request::new(kind, key);
    if kind == Kind::Debug {
        // `me <key> b`: only a third token of exactly "b" means base64.
        if toks.next() == Some(&b"b"[..]) {
            let decoded = base64::decode(key).ok_or(reject(MetaError::BadFormat))?;
            req.key = Cow::Owned(decoded);
            req.binary = true;
        }
        return Ok(req);
    }
    let rest = toks;
    if kind == Kind::Set && { rest }.next().is_none() {
        return Err(reject(MetaError::BadFormat));
    }
    if 2 + rest.take(MAX_TOKENS).count() > MAX_TOKENS {
        return Err(reject(if kind == Kind::Get {
            MetaError::GetFlagsTooLong
        } else {
            MetaError::FlagsTooLong
        }));
    }
    let mut flag_toks = rest;
    if kind == Kind::Set {
        let len = flag_toks.next().and_then(strtol_i32);
        match len {
            Some(n) if (0..=i32::MAX - 2).contains(&n) => req.datalen = n as usize,
            _ => return Err(reject(MetaError::BadFormat)),
        }
    }
    // From here on an ms error leaves the data block to be discarded.
    let fail = |req: &Request<'_>, e: MetaError| Rejected {
        error: match kind {
            Kind::Delete | Kind::Arith => MetaError::InvalidOrDuplicate,
            _ => e,
        },
        swallow: (kind == Kind::Set).then_some(req.datalen + 2),
    };
    if let Err(e) = preparse(&mut req, flag_toks) {
        return Err(fail(&req, e));
    }
    let long_opaque = req
        .flags()
        .iter()
        .position(|f| f.code == b'O' && f.token.len() > OPAQUE_MAX);
    match kind {
        Kind::Set => {
            req.store_mode = match req.flags().iter().find(|f| f.code == b'M') {
                None => StoreMode::Set,
                Some(f) => match f.token[1] {
                    b'S' => StoreMode::Set,
                    b'E' => StoreMode::Add,
                    b'A' => StoreMode::Append,
                    b'P' => StoreMode::Prepend,
                    b'R' => StoreMode::Replace,
                    _ => return Err(fail(&req, MetaError::MsMode)),
                },
            };
            if req.cas.is_some() && req.store_mode == StoreMode::Replace {
                req.store_mode = StoreMode::Set;
            }
            if long_opaque.is_some() {
                return Err(fail(&req, MetaError::OpaqueTooLong));
            }
        }
        Kind::Delete => {
            if long_opaque.is_some() {
                return Err(reject(MetaError::OpaqueTooLong));
            }
        }
        Kind::Arith => {
            if let Some(f) = req.flags().iter().find(|f| f.code == b'M') {
                req.incr = match f.token[1] {
                    b'I' | b'+' => true,
                    b'D' | b'-' => false,
                    _ => return Err(reject(MetaError::MaMode)),
                };
            }
            req.bad_opaque = long_opaque;
        }
        _ => req.bad_opaque = long_opaque,
    }
    Ok(req)
}

/// memcached's `_meta_flag_preparse`: record every flag, stop at a duplicate or
/// unknown one, note (and keep going past) bad values. The last noted message
/// wins; a bad `F` notes a failure without a message of its own.
fn preparse<'a>(req: &mut Request<'a>, toks: Tokens<'a>) -> Result<(), MetaError> {
    let mut seen = [false; 128];
    let mut failed = false;
    let mut message = MetaError::BadFormat;
    let mut note = |e: Option<MetaError>| {
        failed = true;
        if let Some(e) = e {
            message = e;
        }
    };
    for tok in toks {
        let code = tok[0];
        if code >= 127 || seen[usize::from(code)] {
            return Err(MetaError::DuplicateFlag);
        }
        seen[usize::from(code)] = true;
        let arg = &tok[1..];
        let ttl = |arg: &[u8]| strtol_i32(arg).map(i64::from);
        match code {
            b'b' => {
                req.binary = true;
                match base64::decode(&req.key) {
                    Some(k) => req.key = Cow::Owned(k),
                    None => note(Some(MetaError::DecodingKey)),
                }
            }
            b'N' => match ttl(arg) {
                Some(t) => req.vivify = Some(t),
                None => note(Some(MetaError::BadToken)),
            },
            b'T' => match ttl(arg) {
                Some(t) => req.ttl = Some(t),
                None => note(Some(MetaError::BadToken)),
            },
            b'R' => match ttl(arg) {
                Some(t) => req.recache = Some(t),
                None => note(Some(MetaError::BadToken)),
            },
            b'O' | b'P' | b'L' | b'k' | b's' | b't' | b'c' | b'f' | b'l' | b'h' => {}
            b'v' => req.value = true,
            b'u' => req.no_bump = true,
            b'q' => req.quiet = true,
            b'I' => req.invalidate = true,
            b'F' => match strtoul_u32(arg) {
                Some(f) => req.client_flags = f,
                None => note(None),
            },
            b'C' => match strtoull(arg) {
                Some(c) => req.cas = Some(c),
                None => note(Some(MetaError::BadToken)),
            },
            b'M' => {
                if tok.len() != 2 {
                    note(Some(MetaError::ModeLength));
                }
            }
            b'J' => match strtoull(arg) {
                Some(j) => req.initial = j,
                None => note(Some(MetaError::InvalidInitial)),
            },
            b'D' => match strtoull(arg) {
                Some(d) => req.delta = d,
                None => note(Some(MetaError::InvalidDelta)),
            },
            _ => return Err(MetaError::InvalidFlag),
        }
        // The token limit was checked before, so this never drops a flag.
        if req.nflags < MAX_FLAGS {
            req.flags[req.nflags] = Flag { code, token: tok };
            req.nflags += 1;
        }
    }
    if failed {
        Err(message)
    } else {
        Ok(())
    }
}

// ---- replies ----------------------------------------------------------------

/// Append an error reply line.
pub fn put_error(out: &mut BytesMut, e: MetaError) {
    put_line(out, e.reply());
}

fn put_line(out: &mut BytesMut, line: &[u8]) {
    out.reserve(line.len() + 2);
    out.put_slice(line);
    out.put_slice(b"\r\n");
}

/// Append ` <code><n>` (a numeric return flag).
pub fn put_num(out: &mut BytesMut, code: u8, n: impl itoa::Integer) {
    let mut ib = itoa::Buffer::new();
    out.put_u8(b' ');
    out.put_u8(code);
    out.put_slice(ib.format(n).as_bytes());
}

/// Append ` <token>` (an opaque, echoed whole).
pub fn put_token(out: &mut BytesMut, token: &[u8]) {
    out.put_u8(b' ');
    out.put_slice(token);
}

/// Append ` k<key>`, or ` k<base64 key> b` for a binary key.
pub fn put_key(out: &mut BytesMut, key: &[u8], binary: bool) {
    out.put_slice(b" k");
    if binary {
        let mut enc = Vec::new();
        base64::encode_into(key, &mut enc);
        out.put_slice(&enc);
        out.put_slice(b" b");
    } else {
        out.put_slice(key);
    }
}

/// Append a TTL as meta's `t` shows it: `-1` for none, else the seconds left.
///
/// memcached computes this in unsigned seconds since its start, so an item
/// that `T-1` just expired (expiry "1", memcached's "long ago") shows a huge
/// wrapped number rather than a negative one; `started` (the process start)
/// lets us print the same kind of number.
pub fn put_ttl(out: &mut BytesMut, exptime: u32, now: u32, started: u32) {
    if exptime == 0 {
        out.put_slice(b" t-1");
    } else {
        let rel = |t: u32| if t <= started { 1 } else { t - started };
        put_num(out, b't', rel(exptime).wrapping_sub(rel(now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(line: &str) -> Request<'_> {
        let b = line.as_bytes();
        parse(b[1], b).expect("parses")
    }
    fn err(line: &str) -> Rejected {
        let b = line.as_bytes();
        parse(b[1], b).expect_err("rejected")
    }
    fn codes(r: &Request<'_>) -> Vec<u8> {
        r.flags().iter().map(|f| f.code).collect()
    }

    #[test]
    fn flags_keep_request_order_and_values() {
        let r = ok("mg key  v c  O123 T30 N-1 R5 kjunk q u");
        assert_eq!(r.kind, Kind::Get);
        assert_eq!(&*r.key, b"key");
        assert_eq!(codes(&r), b"vcOTNRkqu".to_vec());
        assert_eq!(r.flags()[2].token, b"O123");
        assert_eq!((r.ttl, r.vivify, r.recache), (Some(30), Some(-1), Some(5)));
        assert!(r.value && r.quiet && r.no_bump);
        let r = ok("ms k 2 F4294967296 C7 MR I");
        assert_eq!(r.datalen, 2);
        assert_eq!(r.client_flags, 0);
        assert_eq!(r.cas, Some(7));
        assert_eq!(r.store_mode, StoreMode::Set, "replace with a CAS is a cas");
        assert!(r.invalidate);
        let r = ok("ma k D5 J3 M-");
        assert_eq!((r.delta, r.initial, r.incr), (5, 3, false));
    }

    #[test]
    fn base64_keys() {
        let r = ok("mg aGk= b k");
        assert_eq!(&*r.key, b"hi");
        assert!(r.binary);
        assert_eq!(err("mg !!!! b v").error, MetaError::DecodingKey);
        assert_eq!(err("md !!!! b").error, MetaError::InvalidOrDuplicate);
        let r = ok("me aGk= b");
        assert_eq!(&*r.key, b"hi");
        assert_eq!(err("me !!!! b").error, MetaError::BadFormat);
        assert_eq!(&*ok("me !!!! x b").key, b"!!!!");
    }

    #[test]
    fn error_precedence() {
        assert_eq!(err("mg").error, MetaError::Error);
        assert_eq!(err("me").error, MetaError::BadFormat);
        assert_eq!(err("mx k").error, MetaError::Error);
        assert_eq!(err("mg k Tx Jx").error, MetaError::InvalidInitial);
        assert_eq!(err("mg k Fx").error, MetaError::BadFormat);
        assert_eq!(err("mg k Tx Fx").error, MetaError::BadToken);
        assert_eq!(err("mg k Tx Z").error, MetaError::InvalidFlag);
        assert_eq!(err("mg k v v").error, MetaError::DuplicateFlag);
        assert_eq!(err("mg k \u{7f}").error, MetaError::DuplicateFlag);
        assert_eq!(err("mg k MZZ").error, MetaError::ModeLength);
        assert_eq!(err("mg k E5").error, MetaError::InvalidFlag);
        assert_eq!(err("md k x").error, MetaError::InvalidOrDuplicate);
        assert_eq!(err("ma k MX").error, MetaError::MaMode);
        let many = format!("mg k {}", vec!["v"; 18].join(" "));
        assert_eq!(err(&many).error, MetaError::GetFlagsTooLong);
        let long = format!("mg {} v", "k".repeat(251));
        assert_eq!(err(&long).error, MetaError::BadFormat);
    }

    #[test]
    fn ms_swallow_rules() {
        // Before the datalen is known nothing is swallowed.
        assert_eq!(err("ms k").swallow, None);
        assert_eq!(err("ms k x").swallow, None);
        assert_eq!(err("ms k -1").swallow, None);
        let many = format!("ms k 2 {}", vec!["v"; 17].join(" "));
        assert_eq!(err(&many), reject(MetaError::FlagsTooLong));
        // After it, the data block goes.
        let r = err("ms k 2 Z");
        assert_eq!((r.error, r.swallow), (MetaError::InvalidFlag, Some(4)));
        let r = err("ms k 3 MZ O123456789012345678901234567890123");
        assert_eq!((r.error, r.swallow), (MetaError::MsMode, Some(5)));
        let r = err("ms k 0 O123456789012345678901234567890123");
        assert_eq!((r.error, r.swallow), (MetaError::OpaqueTooLong, Some(2)));
        assert_eq!(err("ms k 2 M").error, MetaError::ModeLength);
        assert_eq!(err("ms k 2 Ma").error, MetaError::MsMode);
    }

    #[test]
    fn long_opaque_is_deferred_for_mg_and_ma() {
        let o = format!("O{}", "1".repeat(32));
        let line = format!("mg k T5 {o} t");
        let r = ok(&line);
        assert_eq!(r.bad_opaque, Some(1));
        assert_eq!(r.effective_flags().len(), 1);
        let line = format!("ma k {o}");
        let r = ok(&line);
        assert_eq!(r.bad_opaque, Some(0));
        assert_eq!(
            err(&format!("md k {o}")).error,
            MetaError::OpaqueTooLong,
            "md checks before acting"
        );
        assert_eq!(ok(&format!("mg k O{}", "1".repeat(31))).bad_opaque, None);
    }

    proptest! {
        #[test]
        fn random_lines_never_panic(cmd in any::<u8>(), line in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(cmd, &line);
        }

        #[test]
        fn random_flag_lines_never_panic(
            cmd in proptest::sample::select(b"gsdaenx".to_vec()),
            key in "[A-Za-z0-9+/=!]{1,12}",
            flags in proptest::collection::vec("[A-Za-z0-9+\\-=]{0,6}", 0..24),
        ) {
            let line = format!("m{} {} {}", cmd as char, key, flags.join(" "));
            let _ = parse(cmd, line.as_bytes());
        }
    }
}
