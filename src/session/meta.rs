//! Meta commands (`mg`, `ms`, `md`, `ma`, `mn`, `me`) on a text connection.
//!
//! The text session hands over each `m?` line; this module parses it
//! ([`protocol::meta`]), calls the engine (the same one the classic commands
//! use, so meta and classic commands mix freely on one connection) and encodes
//! the reply. Return flags are echoed in request order, as memcached builds
//! them: walking the request's flags left to right, with `T`/`N`/`R` taking
//! effect where they stand (so `mg k t T50` reports the TTL from before).
//!
//! `q` hides only the "nothing interesting" reply of each command: `EN` for
//! `mg`, `HD` for `ms` and `md`, and `HD`/`VA` for an `ma` that changed an
//! existing number. Errors are never hidden.

use crate::engine::meta::{
    MetaArith, MetaArithOutcome, MetaDelete, MetaDeleteOutcome, MetaGet, MetaGetOutcome, TtlStep,
    MAX_STEPS,
};
use crate::engine::{Engine, StoreCmd, StoreOutcome};
use crate::protocol::meta::{self as wire, Kind, MetaError, Request};
use crate::session::text::UNAVAILABLE;
use crate::session::Shared;
use crate::store::Bits;
use bytes::{BufMut, Bytes, BytesMut};

/// What a meta command consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Done {
        consumed: usize,
        mutated: bool,
    },
    NeedMore,
    /// Reply written; discard `swallow` more bytes (a refused `ms` data block).
    Swallow {
        consumed: usize,
        swallow: usize,
    },
    /// Refused while catching up with `--not-ready close`: close unanswered.
    Close {
        consumed: usize,
    },
}

/// Execute the meta command `m<cmd>` whose line ends at `next` in `input`.
pub fn execute(
    shared: &Shared,
    cmd: u8,
    line: &[u8],
    input: &BytesMut,
    next: usize,
    out: &mut BytesMut,
) -> Step {
    let done = |mutated| Step::Done {
        consumed: next,
        mutated,
    };
    let req = match wire::parse(cmd, line) {
        Ok(r) => r,
        Err(rej) => {
            wire::put_error(out, rej.error);
            return match rej.swallow {
                Some(swallow) => Step::Swallow {
                    consumed: next,
                    swallow,
                },
                None => done(false),
            };
        }
    };
    if req.kind != Kind::Noop && !shared.serving() {
        if shared.readiness.refusal_closes() {
            return Step::Close { consumed: next };
        }
        out.put_slice(crate::session::NOT_READY);
        return match req.kind {
            Kind::Set => Step::Swallow {
                consumed: next,
                swallow: req.datalen + 2,
            },
            _ => done(false),
        };
    }
    let e = &*shared.engine;
    match req.kind {
        Kind::Noop => {
            out.put_slice(b"MN\r\n");
            done(false)
        }
        Kind::Debug => {
            debug(e, &req, out);
            done(false)
        }
        Kind::Get => done(get(e, &req, out)),
        Kind::Delete => {
            delete(e, &req, out);
            done(true)
        }
        Kind::Arith => {
            arith(e, &req, out);
            done(true)
        }
        Kind::Set => set(e, &req, input, next, out),
    }
}

/// The TTL steps among `flags`, in order: `T`, `N` and (for `mg`) `R`.
/// Reply encoders count the same flags with [`is_step`] to find the TTL a `t`
/// flag shows.
fn steps(flags: &[wire::Flag<'_>], req: &Request<'_>) -> ([TtlStep; MAX_STEPS], usize) {
    let mut buf = [TtlStep::Touch(0); MAX_STEPS];
    let mut n = 0;
    for f in flags.iter().filter(|f| is_step(req.kind, f.code)) {
        let step = match f.code {
            b'T' => req.ttl.map(TtlStep::Touch),
            b'N' => req.vivify.map(TtlStep::Vivify),
            b'R' => req.recache.map(TtlStep::Recache),
            _ => None,
        };
        if let Some(s) = step {
            if n < MAX_STEPS {
                buf[n] = s;
                n += 1;
            }
        }
    }
    (buf, n)
}

/// Whether a flag is a [`TtlStep`] for this command (`R` only means something to `mg`).
fn is_step(kind: Kind, code: u8) -> bool {
    match code {
        b'T' | b'N' => true,
        b'R' => kind == Kind::Get,
        _ => false,
    }
}

fn end_line(out: &mut BytesMut) {
    out.put_slice(b"\r\n");
}

/// `mg`. Returns whether the item changed.
fn get(e: &Engine, req: &Request<'_>, out: &mut BytesMut) -> bool {
    let (buf, n) = steps(req.effective_flags(), req);
    let aborted = req.bad_opaque.is_some();
    // memcached delays the LRU bump of commands that look at (or change) the
    // item's access state, and skips it when the reply fails.
    let delayed_bump = req
        .flags()
        .iter()
        .any(|f| matches!(f.code, b'N' | b'T' | b'R' | b'l' | b'h'));
    let skip_bump = req.no_bump || (aborted && delayed_bump);
    let cmd = MetaGet {
        key: &req.key,
        bump: !skip_bump,
        vivify: req.vivify.is_some(),
        steps: &buf[..n],
        aborted,
    };
    let outcome = e.meta_get(&cmd);
    let changed = matches!(&outcome, MetaGetOutcome::Hit(h) if h.changed);
    if aborted {
        wire::put_error(out, MetaError::OpaqueTooLong);
        return changed;
    }
    match outcome {
        MetaGetOutcome::Unavailable => {
            out.put_slice(UNAVAILABLE);
            end_line(out);
        }
        MetaGetOutcome::Miss => {
            if !req.quiet {
                out.put_slice(b"EN");
                for f in req.flags() {
                    match f.code {
                        b'O' => wire::put_token(out, f.token),
                        b'k' => wire::put_key(out, &req.key, req.binary),
                        _ => {}
                    }
                }
                end_line(out);
            }
        }
        MetaGetOutcome::Hit(h) => {
            let it = &h.item;
            let started = e.clock().started();
            out.reserve(it.value.len() + 64 + 2 * req.key.len());
            if req.value {
                out.put_slice(b"VA ");
                out.put_slice(itoa::Buffer::new().format(it.value.len()).as_bytes());
            } else {
                out.put_slice(b"HD");
            }
            let mut done_steps = 0;
            for f in req.flags() {
                match f.code {
                    c if is_step(req.kind, c) => done_steps += 1,
                    b's' => wire::put_num(out, b's', it.value.len()),
                    b't' => wire::put_ttl(out, h.ttl.at(done_steps), h.now, started),
                    b'c' => wire::put_num(out, b'c', it.cas),
                    b'f' => wire::put_num(out, b'f', it.flags),
                    b'l' => wire::put_num(out, b'l', h.now.wrapping_sub(it.last_access)),
                    b'h' => wire::put_num(out, b'h', u8::from(it.bits & Bits::FETCHED != 0)),
                    b'O' => wire::put_token(out, f.token),
                    b'k' => wire::put_key(out, &req.key, it.bits & Bits::BINARY_KEY != 0),
                    _ => {}
                }
            }
            if h.token_sent {
                out.put_slice(b" Z");
            }
            if h.stale {
                out.put_slice(b" X");
            }
            if h.win {
                out.put_slice(b" W");
            }
            end_line(out);
            if req.value {
                out.put_slice(&it.value);
                end_line(out);
            }
        }
    }
    changed
}

/// `ms`: the data block follows the line.
fn set(e: &Engine, req: &Request<'_>, input: &BytesMut, next: usize, out: &mut BytesMut) -> Step {
    let len = req.datalen;
    if !e.fits(req.key.len(), len) {
        // Refuse without buffering the value; memcached also unlinks the old item.
        e.meta_too_large(&req.key);
        wire::put_error(out, MetaError::TooLarge);
        return Step::Swallow {
            consumed: next,
            swallow: len + 2,
        };
    }
    let total = next + len + 2;
    if input.len() < total {
        return Step::NeedMore;
    }
    let data = &input[next..total];
    if &data[len..] != b"\r\n" {
        wire::put_error(out, MetaError::BadDataChunk);
        return Step::Done {
            consumed: total,
            mutated: false,
        };
    }
    let mut c = StoreCmd::new(
        req.store_mode,
        &req.key,
        req.client_flags,
        req.ttl.unwrap_or(0),
        Bytes::copy_from_slice(&data[..len]),
    );
    c.compare_cas = req.cas;
    c.invalidate = req.invalidate;
    c.binary_key = req.binary;
    let stored = Step::Done {
        consumed: total,
        mutated: true,
    };
    // Status and the CAS a `c` flag shows (0 unless stored); errors carry no flags.
    let (code, cas): (&[u8], u64) = match e.store_item(c) {
        StoreOutcome::Stored { .. } if req.quiet => return stored,
        StoreOutcome::Stored { cas } => (b"HD", cas),
        StoreOutcome::NotStored => (b"NS", 0),
        StoreOutcome::Exists => (b"EX", 0),
        StoreOutcome::NotFound => (b"NF", 0),
        StoreOutcome::TooLarge => return error_line(out, MetaError::TooLarge.reply(), stored),
        StoreOutcome::NoMemory => return error_line(out, MetaError::NoMemory.reply(), stored),
        StoreOutcome::Unavailable => return error_line(out, UNAVAILABLE, stored),
    };
    out.put_slice(code);
    for f in req.flags() {
        match f.code {
            b'O' => wire::put_token(out, f.token),
            b'k' => wire::put_key(out, &req.key, req.binary),
            b'c' => wire::put_num(out, b'c', cas),
            _ => {}
        }
    }
    end_line(out);
    stored
}

fn error_line(out: &mut BytesMut, line: &[u8], step: Step) -> Step {
    out.put_slice(line);
    end_line(out);
    step
}

/// Append `O` and `k` return flags (the only ones on misses and most replies).
fn put_opaque_and_key(out: &mut BytesMut, req: &Request<'_>) {
    for f in req.flags() {
        match f.code {
            b'O' => wire::put_token(out, f.token),
            b'k' => wire::put_key(out, &req.key, req.binary),
            _ => {}
        }
    }
}

/// `md`.
fn delete(e: &Engine, req: &Request<'_>, out: &mut BytesMut) {
    let outcome = e.meta_delete(&MetaDelete {
        key: &req.key,
        compare_cas: req.cas,
        invalidate: req.invalidate,
        ttl: req.ttl,
    });
    let code: &[u8] = match outcome {
        MetaDeleteOutcome::Deleted | MetaDeleteOutcome::Invalidated => {
            if req.quiet {
                return;
            }
            b"HD"
        }
        MetaDeleteOutcome::NotFound => b"NF",
        MetaDeleteOutcome::Exists => b"EX",
        MetaDeleteOutcome::Unavailable => {
            out.put_slice(UNAVAILABLE);
            end_line(out);
            return;
        }
    };
    out.put_slice(code);
    put_opaque_and_key(out, req);
    end_line(out);
}

/// `ma`.
fn arith(e: &Engine, req: &Request<'_>, out: &mut BytesMut) {
    let (buf, n) = steps(req.effective_flags(), req);
    let outcome = e.meta_arith(&MetaArith {
        key: &req.key,
        incr: req.incr,
        delta: req.delta,
        compare_cas: req.cas,
        create: req.vivify.map(|_| req.initial),
        steps: &buf[..n],
    });
    // memcached meets an over-long opaque while echoing flags, which a
    // non-numeric value or a failed allocation never reaches.
    let echoes = !matches!(
        outcome,
        MetaArithOutcome::NonNumeric | MetaArithOutcome::NoMemory | MetaArithOutcome::Unavailable
    );
    if req.bad_opaque.is_some() && echoes {
        wire::put_error(out, MetaError::OpaqueTooLong);
        return;
    }
    let started = e.clock().started();
    match outcome {
        MetaArithOutcome::Value {
            value,
            cas,
            created,
            ttl,
            now,
        } => {
            if req.quiet && !created {
                return;
            }
            let mut ib = itoa::Buffer::new();
            let digits = ib.format(value).as_bytes();
            if req.value {
                out.put_slice(b"VA ");
                out.put_slice(itoa::Buffer::new().format(digits.len()).as_bytes());
            } else {
                out.put_slice(b"HD");
            }
            let mut done_steps = 0;
            for f in req.flags() {
                match f.code {
                    c if is_step(req.kind, c) => done_steps += 1,
                    b'c' => wire::put_num(out, b'c', cas),
                    b't' => wire::put_ttl(out, ttl.at(done_steps), now, started),
                    b'O' => wire::put_token(out, f.token),
                    b'k' => wire::put_key(out, &req.key, req.binary),
                    _ => {}
                }
            }
            end_line(out);
            if req.value {
                out.put_slice(digits);
                end_line(out);
            }
        }
        MetaArithOutcome::NotFound | MetaArithOutcome::Exists => {
            let code: &[u8] = if outcome == MetaArithOutcome::NotFound {
                b"NF"
            } else {
                b"EX"
            };
            out.put_slice(code);
            put_opaque_and_key(out, req);
            end_line(out);
        }
        MetaArithOutcome::NonNumeric => wire::put_error(out, MetaError::NonNumeric),
        MetaArithOutcome::NoMemory => {
            out.put_slice(b"SERVER_ERROR out of memory\r\n");
        }
        MetaArithOutcome::Unavailable => {
            out.put_slice(UNAVAILABLE);
            end_line(out);
        }
    }
}

/// `me`: `ME <key> exp=.. la=.. cas=.. fetch=yes|no cls=.. size=..` or `EN`.
fn debug(e: &Engine, req: &Request<'_>, out: &mut BytesMut) {
    let Some(d) = e.meta_debug(&req.key) else {
        out.put_slice(b"EN\r\n");
        return;
    };
    let it = &d.item;
    out.put_slice(b"ME ");
    if it.bits & Bits::BINARY_KEY != 0 {
        let mut enc = Vec::new();
        crate::protocol::base64::encode_into(&req.key, &mut enc);
        out.put_slice(&enc);
    } else {
        out.put_slice(&req.key);
    }
    // memcached prints the expiry as (now - exptime): negative while the item lives.
    let exp = if it.exptime == 0 {
        -1
    } else {
        i64::from(d.now) - i64::from(it.exptime)
    };
    let fetched = if it.bits & Bits::FETCHED != 0 {
        "yes"
    } else {
        "no"
    };
    let line = format!(
        " exp={exp} la={} cas={} fetch={fetched} cls={} size={}\r\n",
        d.now.wrapping_sub(it.last_access),
        it.cas,
        d.class,
        d.size
    );
    out.put_slice(line.as_bytes());
}

#[cfg(test)]
mod tests {

    use crate::session::text::TextSession;
    use crate::session::{Flow, Shared};

    use bytes::BytesMut;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn session() -> TextSession {
        TextSession::new(Arc::new(Shared::for_tests()))
    }

    /// Feed `input` and return everything the session answered.
    fn run(s: &mut TextSession, input: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::from(input);
        let mut out = BytesMut::new();
        while s.process(&mut buf, &mut out) == Flow::Flush {}
        out.to_vec()
    }

    /// The first letters of the return flags on a reply's status line.
    fn reply_flags(reply: &[u8]) -> Vec<u8> {
        let line = reply.split(|&c| c == b'\r').next().unwrap_or_default();
        let mut toks = line.split(|&c| c == b' ').filter(|t| !t.is_empty());
        let status = toks.next().unwrap_or_default();
        if status == b"VA" {
            toks.next();
        }
        toks.map(|t| t[0]).collect()
    }

    #[test]
    fn transcript() {
        let mut s = session();
        let out = run(
            &mut s,
            b"ms k 2 T0 F5 c\r\nhi\r\nmg k s v t f k\r\nmd k I\r\nmg k c\r\nmg k\r\nmn\r\n",
        );
        let text = String::from_utf8_lossy(&out);
        let (text, cas) = crate::session::testing::mask_cas(&text);
        assert!(
            text.starts_with(
                "HD c#\r\nVA 2 s2 t-1 f5 kk\r\nhi\r\nHD\r\nHD c# X W\r\nHD Z X\r\nMN\r\n"
            ),
            "{text}"
        );
        assert!(
            cas[1] > cas[0],
            "invalidation gives a new, later CAS: {cas:?}"
        );
    }

    #[test]
    fn ttl_flags_report_the_expiry_where_they_stand() {
        let mut s = session();
        // `R` is not a TTL step for `ma`; `N0` after `T30` wins on create.
        let out = run(
            &mut s,
            b"ma c R40 T30 N0 t\r\nma c R20 t T30\r\nmg c t T50\r\nmg c R60 t\r\n",
        );
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text, "HD t-1\r\nHD t-1\r\nHD t30\r\nHD t50 W\r\n");
    }

    const ECHOED: &[u8] = b"stcflhkO";

    proptest! {
        #[test]
        fn random_meta_input_never_panics(
            lines in proptest::collection::vec(
                (proptest::sample::select(vec!["mg", "ms", "md", "ma", "me", "mn", "mx"]),
                 "[ -~]{0,60}"),
                1..12),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut s = session();
            let mut input = Vec::new();
            for (cmd, rest) in lines {
                input.extend_from_slice(cmd.as_bytes());
                input.push(b' ');
                input.extend_from_slice(rest.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(&tail);
            let _ = run(&mut s, &input);
        }

        #[test]
        fn mg_flags_echo_in_request_order(
            flags in Just(vec!["s", "t", "c", "f", "l", "h", "k", "O7", "v", "u", "T30", "R10"])
                .prop_shuffle()
                .prop_flat_map(|v| { let n = v.len(); (Just(v), 0..=n) }),
            hit in any::<bool>(),
        ) {
            let (all, n) = flags;
            let chosen = &all[..n];
            let mut s = session();
            if hit {
                run(&mut s, b"ms key 2 T100\r\nhi\r\n");
            }
            let line = format!("mg key {}\r\n", chosen.join(" "));
            let reply = run(&mut s, line.as_bytes());
            let expect: Vec<u8> = chosen
                .iter()
                .map(|f| f.as_bytes()[0])
                .filter(|c| if hit { ECHOED.contains(c) } else { matches!(c, b'k' | b'O') })
                .collect();
            prop_assert_eq!(reply_flags(&reply), expect, "{}", String::from_utf8_lossy(&reply));
        }

        #[test]
        fn ms_ma_md_flags_echo_in_request_order(
            flags in Just(vec!["c", "k", "O1", "t", "T30", "F3", "v", "s", "N0"])
                .prop_shuffle()
                .prop_flat_map(|v| { let n = v.len(); (Just(v), 0..=n) }),
        ) {
            let (all, n) = flags;
            let chosen = &all[..n];
            let mut s = session();
            let first = |v: &[&str], keep: &[u8]| -> Vec<u8> {
                v.iter().map(|f| f.as_bytes()[0]).filter(|c| keep.contains(c)).collect()
            };
            let ms = run(&mut s, format!("ms n 1 {}\r\n5\r\n", chosen.join(" ")).as_bytes());
            prop_assert_eq!(reply_flags(&ms), first(chosen, b"ckO"));
            let ma = run(&mut s, format!("ma n {}\r\n", chosen.join(" ")).as_bytes());
            prop_assert_eq!(reply_flags(&ma), first(chosen, b"ckOt"));
            let md = run(&mut s, format!("md n {}\r\n", chosen.join(" ")).as_bytes());
            prop_assert_eq!(reply_flags(&md), first(chosen, b"kO"));
        }
    }
}
