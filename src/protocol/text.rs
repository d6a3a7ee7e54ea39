//! memcached's classic text protocol: framing, tokenizing and command parsing,
//! plus reply encoding.
//!
//! Framing first, parsing second: [`frame`] finds one line (bare `\n` accepted,
//! the 2048-byte rule for lines without a newline enforced), then [`parse`]
//! tokenizes it (a hand-written space splitter: see [`Tokens`]) and decides the
//! command. Errors are [`TextError`] values that name the exact reply.

use crate::engine::StoreMode;
use crate::protocol::number::{strtol_i32, strtoul_u32, strtoull};

/// memcached's `KEY_MAX_LENGTH`.
pub const KEY_MAX: usize = 250;
/// A line without `\n` longer than this closes the connection (unless it is a `get`).
pub const LINE_LIMIT: usize = 2048;
/// Upper bound for a multi-get line (memcached has none; we bound memory per connection).
pub const GET_LINE_MAX: usize = 4 << 20;

/// Result of looking for one command line in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line: its content ends at `end` (without `\r\n`), the next command starts at `next`.
    Line { end: usize, next: usize },
    /// Need more bytes.
    Incomplete,
    /// The client is not speaking the protocol (overlong line): close the connection.
    Close,
}

/// Find the next command line in `buf`.
pub fn frame(buf: &[u8]) -> Frame {
    match memchr::memchr(b'\n', buf) {
        Some(nl) => {
            let end = if nl > 0 && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            Frame::Line { end, next: nl + 1 }
        }
        None if buf.len() > LINE_LIMIT => {
            let lead = buf.iter().take_while(|&&c| c == b' ').count();
            let rest = &buf[lead..];
            let is_get = rest.starts_with(b"get ") || rest.starts_with(b"gets ");
            if lead > 100 || !is_get || buf.len() > GET_LINE_MAX {
                Frame::Close
            } else {
                Frame::Incomplete
            }
        }
        None => Frame::Incomplete,
    }
}

/// One space-separated token, skipping leading spaces: `(rest, token)`, or
/// `None` when only spaces are left. Hand-written rather than nom's
/// `preceded(take_while, take_till1)`: this runs for every key of every
/// request, and callgrind put the combinator version at 17 % of the server's
/// user-space instructions for pipelined gets (docs/decisions.md).
#[inline]
fn token(i: &[u8]) -> Option<(&[u8], &[u8])> {
    let start = i.iter().position(|&c| c != b' ')?;
    let i = &i[start..];
    let end = i.iter().position(|&c| c == b' ').unwrap_or(i.len());
    Some((&i[end..], &i[..end]))
}

/// Iterator over the space-separated tokens of a line.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    rest: &'a [u8],
}

impl<'a> Tokens<'a> {
    pub fn new(line: &'a [u8]) -> Self {
        Tokens { rest: line }
    }

    /// What is left after the tokens returned so far.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        match token(self.rest) {
            Some((rest, tok)) => {
                self.rest = rest;
                Some(tok)
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

/// Tokens of a line collected into a small fixed array (memcached's MAX_TOKENS
/// is 24; longer lines only matter for multi-gets, which iterate lazily).
struct Args<'a> {
    toks: [&'a [u8]; 24],
    n: usize,
    /// More than 24 tokens.
    overflow: bool,
}

impl<'a> Args<'a> {
    fn of(line: &'a [u8]) -> Self {
        let mut a = Args {
            toks: [&[]; 24],
            n: 0,
            overflow: false,
        };
        for t in Tokens::new(line) {
            if a.n == a.toks.len() {
                a.overflow = true;
                break;
            }
            a.toks[a.n] = t;
            a.n += 1;
        }
        a
    }
    fn get(&self, i: usize) -> &'a [u8] {
        self.toks[i]
    }
    fn len(&self) -> usize {
        if self.overflow {
            usize::MAX
        } else {
            self.n
        }
    }
    fn last_is_noreply(&self) -> bool {
        self.n > 0 && !self.overflow && self.toks[self.n - 1] == b"noreply"
    }
}

/// A parsed text-protocol command. Keys and arguments borrow the input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// get/gets/gat/gats; `keys` is the rest of the line, tokenized lazily.
    Get {
        keys: &'a [u8],
        cas: bool,
        touch: Option<i64>,
    },
    /// set/add/replace/append/prepend/cas: the data block of `len` bytes + `\r\n` follows.
    Store {
        mode: StoreMode,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        len: usize,
        cas: Option<u64>,
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Delta {
        key: &'a [u8],
        incr: bool,
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Version,
    Verbosity {
        level: u32,
        noreply: bool,
    },
    Quit,
    /// `shutdown [graceful]`; `valid` is false for any other argument.
    Shutdown {
        valid: bool,
    },
    /// `stats [args]`: the arguments after `stats`.
    Stats {
        args: &'a [u8],
    },
    CacheMemlimit {
        mb: u32,
        noreply: bool,
    },
    /// `slabs automove <0|1|2>` or `slabs automove ratio <r>`: accepted as
    /// memcached does; memtwin has one slab class, so there is nothing to move.
    SlabsAutomove {
        noreply: bool,
    },
    /// A two-letter meta command (`mg`, `ms`, `md`, `ma`, `mn`, `me`); `line` is the whole line.
    Meta {
        cmd: u8,
        line: &'a [u8],
    },
}

/// A rejected command line; each variant is one exact reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// `ERROR`
    Error,
    /// `CLIENT_ERROR <msg>`
    Client(&'static str),
    /// Close the connection without a reply (the HTTP guard).
    Close,
}

/// An error that still carries the `noreply` state of the command that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub error: TextError,
    pub noreply: bool,
    /// For storage commands rejected before reading data: nothing is swallowed,
    /// the data block is read as the next command (memcached behaviour).
    pub swallow: usize,
}

pub const BAD_FORMAT: &str = "bad command line format";
pub const BAD_EXPTIME: &str = "invalid exptime argument";
pub const BAD_DELTA: &str = "invalid numeric delta argument";
pub const DELETE_USAGE: &str = "bad command line format.  Usage: delete <key> [noreply]";

fn reject(error: TextError, noreply: bool) -> Rejected {
    Rejected {
        error,
        noreply,
        swallow: 0,
    }
}

/// Parse one command line (without its line terminator).
pub fn parse(line: &[u8]) -> Result<Command<'_>, Rejected> {
    // The hottest command first, without collecting tokens: `get`/`gets` and at
    // least one key. Anything unusual (leading spaces, no key) takes the general
    // path below, which gives the same result for these lines.
    if let Some(rest) = line.strip_prefix(b"get") {
        let (cas, rest) = match rest.split_first() {
            Some((b's', r)) => (true, r),
            _ => (false, rest),
        };
        if rest.first() == Some(&b' ') && rest.iter().any(|&c| c != b' ') {
            return Ok(Command::Get {
                keys: rest,
                cas,
                touch: None,
            });
        }
    }
    parse_general(line)
}

/// Every command, through the collected tokens.
fn parse_general(line: &[u8]) -> Result<Command<'_>, Rejected> {
    let a = Args::of(line);
    let n = a.len();
    // memcached: fewer than one token, or a command name shorter than 2 bytes, is ERROR.
    if n == 0 || a.get(0).len() < 2 {
        return Err(reject(TextError::Error, false));
    }
    let name = a.get(0);
    let noreply = a.last_is_noreply();
    let want = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(reject(TextError::Error, false))
        }
    };
    match name {
        b"get" | b"gets" | b"bget" => {
            want(n >= 2)?;
            Ok(Command::Get {
                keys: after_first(line),
                cas: name == b"gets",
                touch: None,
            })
        }
        b"gat" | b"gats" => {
            want(n >= 2)?;
            let rest = after_first(line);
            let mut t = Tokens::new(rest);
            let exp = t.next().unwrap_or_default();
            let Some(exptime) = strtol_i32(exp) else {
                return Err(reject(TextError::Client(BAD_EXPTIME), false));
            };
            Ok(Command::Get {
                keys: t.rest,
                cas: name == b"gats",
                touch: Some(i64::from(exptime)),
            })
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" => {
            want(n == 5 || n == 6)?;
            let mode = match name {
                b"set" => StoreMode::Set,
                b"add" => StoreMode::Add,
                b"replace" => StoreMode::Replace,
                b"append" => StoreMode::Append,
                _ => StoreMode::Prepend,
            };
            parse_store(&a, mode, false, noreply)
        }
        b"cas" => {
            want(n == 6 || n == 7)?;
            parse_store(&a, StoreMode::Set, true, noreply)
        }
        b"delete" => {
            want((2..=4).contains(&n))?;
            if n > 2 {
                let hold_zero = a.get(2) == b"0";
                let valid = (n == 3 && (hold_zero || noreply)) || (n == 4 && hold_zero && noreply);
                if !valid {
                    return Err(reject(TextError::Client(DELETE_USAGE), noreply));
                }
            }
            let key = key_ok(a.get(1), noreply)?;
            Ok(Command::Delete { key, noreply })
        }
        b"incr" | b"decr" => {
            want(n == 3 || n == 4)?;
            let key = key_ok(a.get(1), noreply)?;
            let Some(delta) = strtoull(a.get(2)) else {
                return Err(reject(TextError::Client(BAD_DELTA), noreply));
            };
            Ok(Command::Delta {
                key,
                incr: name == b"incr",
                delta,
                noreply,
            })
        }
        b"touch" => {
            want(n == 3 || n == 4)?;
            let key = key_ok(a.get(1), noreply)?;
            let Some(exptime) = strtol_i32(a.get(2)) else {
                return Err(reject(TextError::Client(BAD_EXPTIME), noreply));
            };
            Ok(Command::Touch {
                key,
                exptime: i64::from(exptime),
                noreply,
            })
        }
        b"flush_all" => {
            want((1..=3).contains(&n))?;
            let has_delay = n != if noreply { 2 } else { 1 };
            let delay = if has_delay {
                match strtol_i32(a.get(1)) {
                    Some(d) => i64::from(d),
                    None => return Err(reject(TextError::Client(BAD_EXPTIME), noreply)),
                }
            } else {
                0
            };
            Ok(Command::FlushAll { delay, noreply })
        }
        b"version" => Ok(Command::Version),
        b"quit" => Ok(Command::Quit),
        b"verbosity" => {
            want(n == 2 || n == 3)?;
            match strtoul_u32(a.get(1)) {
                Some(level) => Ok(Command::Verbosity { level, noreply }),
                None => Err(reject(TextError::Client(BAD_FORMAT), noreply)),
            }
        }
        b"shutdown" => Ok(Command::Shutdown {
            valid: n == 1 || (n == 2 && a.get(1) == b"graceful"),
        }),
        b"stats" => Ok(Command::Stats {
            args: after_first(line),
        }),
        b"cache_memlimit" => {
            want(n == 2 || n == 3)?;
            match strtoul_u32(a.get(1)) {
                Some(mb) => Ok(Command::CacheMemlimit { mb, noreply }),
                None => Err(reject(TextError::Error, noreply)),
            }
        }
        b"slabs" if n >= 3 && a.get(1) == b"automove" => parse_slabs_automove(&a, noreply),
        [b'm', c] => Ok(Command::Meta { cmd: *c, line }),
        _ => {
            // The HTTP guard: an unknown command whose last token starts with HTTP/.
            if n != usize::MAX && a.get(n - 1).starts_with(b"HTTP/") {
                Err(reject(TextError::Close, false))
            } else {
                Err(reject(TextError::Error, false))
            }
        }
    }
}

/// memcached's `process_slabs_automove_command`: a level that is not a number
/// is a client error, a number other than 0-2 is `ERROR`, and `ratio` needs a
/// number after it (else `ERROR`).
fn parse_slabs_automove<'a>(a: &Args<'a>, noreply: bool) -> Result<Command<'a>, Rejected> {
    let ok = Ok(Command::SlabsAutomove { noreply });
    if a.get(2) == b"ratio" {
        let ratio = std::str::from_utf8(a.get(3))
            .ok()
            .and_then(|r| r.parse::<f64>().ok());
        return match ratio {
            Some(_) if a.len() >= 4 => ok,
            _ => Err(reject(TextError::Error, noreply)),
        };
    }
    match strtoul_u32(a.get(2)) {
        None => Err(reject(TextError::Client(BAD_FORMAT), noreply)),
        Some(0..=2) => ok,
        Some(_) => Err(reject(TextError::Error, noreply)),
    }
}

fn after_first(line: &[u8]) -> &[u8] {
    match token(line) {
        Some((rest, _)) => rest,
        None => &[],
    }
}

fn key_ok(key: &[u8], noreply: bool) -> Result<&[u8], Rejected> {
    if key.len() > KEY_MAX {
        Err(reject(TextError::Client(BAD_FORMAT), noreply))
    } else {
        Ok(key)
    }
}

fn parse_store<'a>(
    a: &Args<'a>,
    mode: StoreMode,
    with_cas: bool,
    noreply: bool,
) -> Result<Command<'a>, Rejected> {
    let bad = || reject(TextError::Client(BAD_FORMAT), noreply);
    let key = key_ok(a.get(1), noreply)?;
    let flags = strtoul_u32(a.get(2)).ok_or_else(bad)?;
    let exptime = strtol_i32(a.get(3)).ok_or_else(bad)?;
    let len = strtol_i32(a.get(4)).ok_or_else(bad)?;
    let cas = if with_cas {
        Some(strtoull(a.get(5)).ok_or_else(bad)?)
    } else {
        None
    };
    if !(0..=i32::MAX - 2).contains(&len) {
        return Err(bad());
    }
    Ok(Command::Store {
        mode,
        key,
        flags,
        exptime: i64::from(exptime),
        len: len as usize,
        cas,
        noreply,
    })
}

/// Validate the keys of a multi-get before executing any of them: memcached fails
/// the whole request (no partial `VALUE`s) when one key is too long.
pub fn check_keys(keys: &[u8]) -> Result<(), Rejected> {
    // No token can be longer than the whole list: the usual short list needs no scan.
    if keys.len() > KEY_MAX && Tokens::new(keys).any(|k| k.len() > KEY_MAX) {
        Err(reject(TextError::Client(BAD_FORMAT), false))
    } else {
        Ok(())
    }
}

// ---- replies ----------------------------------------------------------------

use bytes::{BufMut, BytesMut};

/// Append `VALUE <key> <flags> <len>[ <cas>]\r\n<data>\r\n`.
pub fn put_value(out: &mut BytesMut, key: &[u8], flags: u32, value: &[u8], cas: Option<u64>) {
    let mut ib = itoa::Buffer::new();
    out.reserve(key.len() + value.len() + 48);
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    out.put_u8(b' ');
    out.put_slice(ib.format(flags).as_bytes());
    out.put_u8(b' ');
    out.put_slice(ib.format(value.len()).as_bytes());
    if let Some(cas) = cas {
        out.put_u8(b' ');
        out.put_slice(ib.format(cas).as_bytes());
    }
    out.put_slice(b"\r\n");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Append `<line>\r\n`.
pub fn put_line(out: &mut BytesMut, line: &[u8]) {
    out.reserve(line.len() + 2);
    out.put_slice(line);
    out.put_slice(b"\r\n");
}

/// Append the reply for a [`TextError`] (nothing for `Close`).
pub fn put_error(out: &mut BytesMut, e: TextError) {
    match e {
        TextError::Error => put_line(out, b"ERROR"),
        TextError::Client(msg) => {
            out.put_slice(b"CLIENT_ERROR ");
            put_line(out, msg.as_bytes());
        }
        TextError::Close => {}
    }
}

/// Append `STAT <name> <value>\r\n`.
pub fn put_stat(out: &mut BytesMut, name: &str, value: &str) {
    out.reserve(name.len() + value.len() + 8);
    out.put_slice(b"STAT ");
    out.put_slice(name.as_bytes());
    out.put_u8(b' ');
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// Append a decimal number line (incr/decr replies).
pub fn put_number(out: &mut BytesMut, n: u64) {
    let mut ib = itoa::Buffer::new();
    put_line(out, ib.format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command<'_> {
        parse(line.as_bytes()).expect("parses")
    }
    fn err(line: &str) -> TextError {
        parse(line.as_bytes()).expect_err("rejected").error
    }

    #[test]
    fn framing() {
        assert_eq!(frame(b"get a\r\nrest"), Frame::Line { end: 5, next: 7 });
        assert_eq!(frame(b"get a\nrest"), Frame::Line { end: 5, next: 6 });
        assert_eq!(frame(b"get a"), Frame::Incomplete);
        let long = vec![b'x'; LINE_LIMIT + 1];
        assert_eq!(frame(&long), Frame::Close);
        let mut get = b"get ".to_vec();
        get.extend(vec![b'k'; LINE_LIMIT]);
        assert_eq!(frame(&get), Frame::Incomplete);
    }

    #[test]
    fn storage_commands() {
        assert_eq!(
            ok("set  k  1 2 3 noreply"),
            Command::Store {
                mode: StoreMode::Set,
                key: b"k",
                flags: 1,
                exptime: 2,
                len: 3,
                cas: None,
                noreply: true
            }
        );
        assert_eq!(
            ok("cas k 4294967296 0 0 77"),
            Command::Store {
                mode: StoreMode::Set,
                key: b"k",
                flags: 0,
                exptime: 0,
                len: 0,
                cas: Some(77),
                noreply: false
            }
        );
        assert_eq!(err("set k 0 0 -1"), TextError::Client(BAD_FORMAT));
        assert_eq!(err("set k 0 0 notanumber"), TextError::Client(BAD_FORMAT));
        assert_eq!(err("set k -1 0 1"), TextError::Client(BAD_FORMAT));
        assert_eq!(err("set k 0 0"), TextError::Error);
        assert_eq!(
            err(&format!("set {} 0 0 1", "k".repeat(251))),
            TextError::Client(BAD_FORMAT)
        );
    }

    #[test]
    fn other_commands() {
        assert_eq!(err("GET a"), TextError::Error);
        assert_eq!(err(""), TextError::Error);
        assert_eq!(err("get"), TextError::Error);
        assert_eq!(err("GET / HTTP/1.0"), TextError::Close);
        assert_eq!(
            ok("delete k 0"),
            Command::Delete {
                key: b"k",
                noreply: false
            }
        );
        assert_eq!(err("delete k 10"), TextError::Client(DELETE_USAGE));
        assert_eq!(err("incr k -1"), TextError::Client(BAD_DELTA));
        assert_eq!(err("incr k"), TextError::Error);
        assert_eq!(
            ok("flush_all noreply"),
            Command::FlushAll {
                delay: 0,
                noreply: true
            }
        );
        assert_eq!(
            ok("flush_all 5"),
            Command::FlushAll {
                delay: 5,
                noreply: false
            }
        );
        assert_eq!(err("flush_all x"), TextError::Client(BAD_EXPTIME));
        assert_eq!(
            ok("gat 10 a b"),
            Command::Get {
                keys: b" a b",
                cas: false,
                touch: Some(10)
            }
        );
        assert_eq!(err("gat x a"), TextError::Client(BAD_EXPTIME));
        assert_eq!(
            ok("mn"),
            Command::Meta {
                cmd: b'n',
                line: b"mn"
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn get_fast_path_agrees_with_the_general_parser(
            head in proptest::sample::select(vec!["get", "gets", "getss", "ge", " get", "gat", ""]),
            tail in proptest::collection::vec(proptest::sample::select(b"  kxs\t".to_vec()), 0..10)
        ) {
            let mut line = head.as_bytes().to_vec();
            line.extend_from_slice(&tail);
            proptest::prop_assert_eq!(parse(&line), parse_general(&line));
        }
    }

    #[test]
    fn multiget_keys_checked_as_a_whole() {
        let keys = format!(" a {} b", "k".repeat(251));
        assert!(check_keys(keys.as_bytes()).is_err());
        assert!(check_keys(b" a b ").is_ok());
        assert_eq!(
            Tokens::new(b"  a  b ").collect::<Vec<_>>(),
            vec![&b"a"[..], b"b"]
        );
    }
}
