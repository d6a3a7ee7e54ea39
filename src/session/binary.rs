//! The binary-protocol session: memcached's 24-byte-header protocol executed
//! against the same [`Engine`](crate::engine::Engine) as the text protocol.
//!
//! Why a separate session rather than a translation to text commands: binary
//! requests carry things text cannot express (CAS on ADD/DELETE/INCR, incr
//! with an initial value, opaque echo, quiet variants), so this layer decodes
//! the header ([`crate::protocol::binary`]), builds engine commands directly,
//! and encodes the outcome enums into status codes. No set/get semantics live
//! here: every mutation is an engine call and so reaches the mutation stream.
//!
//! Framing rules, all from memcached 1.6.18:
//! * a request is judged from its header before any body byte is buffered, so
//!   malformed or oversized requests are answered at once and their body is
//!   skipped (`swallow`), with bounded memory;
//! * quiet reads hide misses, quiet writes hide successes, errors are always
//!   sent and echo the (quiet) opcode and the opaque;
//! * under SASL (`-S`) only VERSION and the SASL opcodes work before
//!   authentication; anything else gets 0x20 and the connection is closed.

use crate::engine::{DeleteOutcome, DeltaCmd, DeltaOutcome, StoreCmd, StoreMode, StoreOutcome};
use crate::protocol::binary::{
    self as bin, put_error, put_response, BinError, Header, Kind, ReplyTo, Request, Status,
    HEADER_LEN, REQ_MAGIC,
};
use crate::session::{report, Flow, Shared, OUTPUT_HIGH_WATER};
use bytes::{Buf, Bytes, BytesMut};
use std::sync::Arc;

/// Where a connection is in the SASL PLAIN exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// No exchange started (or the last AUTH failed).
    #[default]
    Idle,
    /// AUTH PLAIN came without an initial response; a STEP must carry it.
    AwaitingResponse,
    /// The exchange finished; a further STEP fails.
    Done,
}

#[derive(Debug, Default)]
struct Sasl {
    authenticated: bool,
    phase: Phase,
}

pub struct BinarySession {
    shared: Arc<Shared>,
    /// Bytes of a skipped body still to discard.
    swallow: usize,
    /// Whether a mutating command ran since the server last asked.
    mutated: bool,
    /// SASL state; `None` when SASL is off.
    sasl: Option<Sasl>,
}

/// What handling one request did.
enum Step {
    /// The request (this many bytes, possibly more than are buffered: the rest
    /// is swallowed as it arrives) is done.
    Consumed(usize),
    NeedMore,
    /// Write what was produced, then close.
    Close,
}

impl BinarySession {
    pub fn new(shared: Arc<Shared>) -> Self {
        let sasl = shared.auth.sasl.is_some().then(Sasl::default);
        BinarySession {
            shared,
            swallow: 0,
            mutated: false,
            sasl,
        }
    }

    /// True once after any command that may have changed data.
    pub fn take_mutated(&mut self) -> bool {
        std::mem::take(&mut self.mutated)
    }

    /// Handle every complete request in `input`, appending replies to `out`.
    pub fn process(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Flow {
        let limit = self.shared.settings.reqs_per_event;
        let mut served = 0u32;
        loop {
            if super::swallow(&mut self.swallow, input) {
                return Flow::NeedInput;
            }
            let Some(&magic) = input.first() else {
                return Flow::NeedInput;
            };
            if magic != REQ_MAGIC {
                // memcached closes without a reply; no need to wait for 24 bytes of garbage.
                return Flow::Close;
            }
            if out.len() >= OUTPUT_HIGH_WATER {
                return Flow::Flush;
            }
            let Some(h) = bin::decode_header(input) else {
                return Flow::NeedInput;
            };
            if served >= limit {
                return Flow::Yield;
            }
            served += 1;
            match self.packet(&h, input, out) {
                Step::Consumed(n) => {
                    let now = n.min(input.len());
                    input.advance(now);
                    self.swallow = n - now;
                }
                Step::NeedMore => return Flow::NeedInput,
                Step::Close => return Flow::Close,
            }
        }
    }

    fn packet(&mut self, h: &Header, input: &BytesMut, out: &mut BytesMut) -> Step {
        let to = ReplyTo::from(h);
        if let Err(e) = bin::check_frame(h) {
            return reject(e, h, out);
        }
        if let Some(s) = &self.sasl {
            if !s.authenticated && !bin::allowed_before_auth(h.opcode) {
                put_error(out, to, Status::AuthError);
                return Step::Close;
            }
        }
        let req = match bin::classify(h) {
            Ok(r) => r,
            Err(e) => return reject(e, h, out),
        };
        if gated(req.kind) && !self.shared.serving() {
            // Catching up with the twin: close, or an error (the client
            // fails over), never a miss. A value is skipped unbuffered.
            if self.shared.readiness.refusal_closes() {
                return Step::Close;
            }
            bin::put_not_ready(out, to);
            return Step::Consumed(h.packet_len());
        }
        let e = &self.shared.engine;
        match req.kind {
            Kind::Store(mode) if !e.fits(h.key_len(), h.value_len()) => {
                // Answer from the header and key; the value is skipped unbuffered.
                if input.len() < h.fixed_len() {
                    return Step::NeedMore;
                }
                let (extras, key) = extras_key(h, input);
                let (flags, exptime) = store_args(mode, extras);
                let cmd =
                    StoreCmd::new(mode, key, flags, exptime, Bytes::new()).with_header_cas(h.cas);
                self.mutated = true;
                e.too_large(cmd);
                put_error(out, to, Status::TooLarge);
                return Step::Consumed(h.packet_len());
            }
            Kind::SaslListMechs | Kind::SaslAuth | Kind::SaslStep if self.sasl.is_none() => {
                put_error(out, to, Status::UnknownCommand);
                return Step::Consumed(h.packet_len());
            }
            Kind::SaslAuth | Kind::SaslStep if h.key_len() > bin::SASL_MECH_MAX => {
                put_error(out, to, Status::InvalidArguments);
                return Step::Consumed(h.packet_len());
            }
            Kind::SaslAuth | Kind::SaslStep if !e.fits(h.key_len(), h.value_len()) => {
                put_error(out, to, Status::OutOfMemory);
                return Step::Consumed(h.packet_len());
            }
            _ => {}
        }
        let need = if req.uses_value() {
            h.packet_len()
        } else {
            h.fixed_len()
        };
        if input.len() < need {
            return Step::NeedMore;
        }
        let (extras, key) = extras_key(h, input);
        let value: &[u8] = if req.uses_value() {
            &input[h.fixed_len()..h.packet_len()]
        } else {
            &[]
        };
        if self.execute(req, h, extras, key, value, out) {
            Step::Consumed(h.packet_len())
        } else {
            Step::Close
        }
    }

    /// Run one validated request; false closes the connection.
    fn execute(
        &mut self,
        req: Request,
        h: &Header,
        extras: &[u8],
        key: &[u8],
        value: &[u8],
        out: &mut BytesMut,
    ) -> bool {
        let to = ReplyTo::from(h);
        let quiet = req.quiet;
        let e = &self.shared.engine;
        match req.kind {
            Kind::Get { with_key, touch } => {
                let rkey = if with_key { key } else { &[][..] };
                let hit = if touch {
                    self.mutated = true;
                    e.get_and_touch(key, i64::from(bin::exptime_extras(extras)))
                        .map(|v| {
                            let flags = v.flags.to_be_bytes();
                            put_response(out, to, Status::Success, v.cas, &flags, rkey, &v.value)
                        })
                } else {
                    // Encoded straight from the table: no copy of the item.
                    e.get_with(key, |it| {
                        let flags = it.flags().to_be_bytes();
                        put_response(out, to, Status::Success, it.cas(), &flags, rkey, it.value())
                    })
                };
                self.shared.prefixes.get(key, hit.is_some());
                match hit {
                    Some(()) => {}
                    None if quiet => {}
                    // GETK/GATK misses carry the key instead of the text.
                    None if with_key => {
                        put_response(out, to, Status::KeyNotFound, 0, &[], key, &[])
                    }
                    None => put_error(out, to, Status::KeyNotFound),
                }
            }
            Kind::Touch => {
                self.mutated = true;
                let touched = e.touch(key, i64::from(bin::exptime_extras(extras)));
                // memcached's binary touch goes through its get-and-touch path.
                self.shared.prefixes.get(key, touched.is_some());
                match touched {
                    Some(v) => put_response(
                        out,
                        to,
                        Status::Success,
                        v.cas,
                        &v.flags.to_be_bytes(),
                        &[],
                        &[],
                    ),
                    None => put_error(out, to, Status::KeyNotFound),
                }
            }
            Kind::Store(mode) => {
                let (flags, exptime) = store_args(mode, extras);
                let cmd = StoreCmd::new(mode, key, flags, exptime, Bytes::copy_from_slice(value))
                    .with_header_cas(h.cas);
                self.mutated = true;
                self.shared.prefixes.set(key);
                let status = match e.store_item(cmd) {
                    StoreOutcome::Stored { cas } => {
                        if !quiet {
                            put_response(out, to, Status::Success, cas, &[], &[], &[]);
                        }
                        return true;
                    }
                    StoreOutcome::Exists => Status::KeyExists,
                    StoreOutcome::NotFound => Status::KeyNotFound,
                    // A failed ADD is "exists", a failed REPLACE "not found" (memcached).
                    StoreOutcome::NotStored => match mode {
                        StoreMode::Add => Status::KeyExists,
                        StoreMode::Replace => Status::KeyNotFound,
                        _ => Status::NotStored,
                    },
                    StoreOutcome::TooLarge => Status::TooLarge,
                    StoreOutcome::NoMemory => Status::OutOfMemory,
                    StoreOutcome::Unavailable => Status::Internal,
                };
                put_error(out, to, status);
            }
            Kind::Delete => {
                self.mutated = true;
                self.shared.prefixes.delete(key);
                let status = match e.delete(key, (h.cas != 0).then_some(h.cas)) {
                    DeleteOutcome::Deleted => Status::Success,
                    DeleteOutcome::NotFound => Status::KeyNotFound,
                    DeleteOutcome::Exists => Status::KeyExists,
                    DeleteOutcome::Unavailable => Status::Internal,
                };
                match status {
                    Status::Success if quiet => {}
                    Status::Success => put_response(out, to, Status::Success, 0, &[], &[], &[]),
                    _ => put_error(out, to, status),
                }
            }
            Kind::Delta { incr } => {
                let Some((delta, initial, exptime)) = bin::delta_extras(extras) else {
                    put_error(out, to, Status::InvalidArguments);
                    return false;
                };
                let mut cmd = DeltaCmd::new(key, incr, delta);
                // 0xffffffff: do not create a missing item.
                cmd.create = (exptime != u32::MAX).then_some((initial, i64::from(exptime)));
                cmd.compare_cas = (h.cas != 0).then_some(h.cas);
                self.mutated = true;
                let status = match e.delta(cmd) {
                    DeltaOutcome::Value { value, cas, .. } => {
                        if !quiet {
                            put_response(
                                out,
                                to,
                                Status::Success,
                                cas,
                                &[],
                                &[],
                                &value.to_be_bytes(),
                            );
                        }
                        return true;
                    }
                    DeltaOutcome::NotFound => Status::KeyNotFound,
                    DeltaOutcome::NonNumeric => Status::DeltaBadValue,
                    DeltaOutcome::Exists => Status::KeyExists,
                    DeltaOutcome::NoMemory => Status::OutOfMemory,
                    DeltaOutcome::Unavailable => Status::Internal,
                };
                put_error(out, to, status);
            }
            Kind::Quit => {
                if !quiet {
                    put_response(out, to, Status::Success, 0, &[], &[], &[]);
                }
                return false;
            }
            Kind::Flush => {
                if !self.shared.settings.flush_enabled {
                    // memcached answers a disabled flush with an auth error.
                    put_error(out, to, Status::AuthError);
                } else {
                    self.mutated = true;
                    e.flush_all(i64::from(bin::exptime_extras(extras)));
                    if !quiet {
                        put_response(out, to, Status::Success, 0, &[], &[], &[]);
                    }
                }
            }
            Kind::Noop => put_response(out, to, Status::Success, 0, &[], &[], &[]),
            Kind::Version => put_response(
                out,
                to,
                Status::Success,
                0,
                &[],
                &[],
                crate::WIRE_VERSION.as_bytes(),
            ),
            Kind::Stat => self.stat(key, to, out),
            Kind::SaslListMechs | Kind::SaslAuth | Kind::SaslStep => {
                self.sasl(req.kind, key, value, to, out)
            }
        }
        true
    }

    /// STAT: one packet per stat, then an empty-key terminator. Group names are
    /// matched as memcached's binary STAT does (prefix for reset/settings/detail).
    fn stat(&self, group: &[u8], to: ReplyTo, out: &mut BytesMut) {
        let sh = &self.shared;
        let pairs = if group.is_empty() {
            report::general(sh)
        } else if group.starts_with(b"reset") {
            sh.engine.stats().reset();
            sh.prefixes.clear();
            Vec::new()
        } else if group.starts_with(b"settings") {
            report::settings(sh)
        } else if let Some(sub) = group.strip_prefix(b"detail") {
            if sub.starts_with(b" dump") {
                let dump = String::from_utf8_lossy(&sh.prefixes.dump()).into_owned();
                vec![("detailed", dump)]
            } else if sub.starts_with(b" on") {
                sh.prefixes.set_enabled(true);
                Vec::new()
            } else if sub.starts_with(b" off") {
                sh.prefixes.set_enabled(false);
                Vec::new()
            } else {
                put_error(out, to, Status::KeyNotFound);
                return;
            }
        } else {
            match group {
                b"items" => report::items(sh),
                b"slabs" => report::slabs(sh),
                b"sizes" => vec![("sizes_status", "disabled".to_string())],
                b"replication" => match report::replication(sh) {
                    Some(p) => p,
                    None => {
                        put_error(out, to, Status::KeyNotFound);
                        return;
                    }
                },
                _ => {
                    put_error(out, to, Status::KeyNotFound);
                    return;
                }
            }
        };
        for (name, value) in &pairs {
            put_response(
                out,
                to,
                Status::Success,
                0,
                &[],
                name.as_bytes(),
                value.as_bytes(),
            );
        }
        put_response(out, to, Status::Success, 0, &[], &[], &[]);
    }

    /// SASL PLAIN. Like memcached (whose `init_sasl_conn` runs for each of
    /// these opcodes), any SASL request first drops the connection's
    /// authentication; only a successful exchange restores it.
    fn sasl(&mut self, kind: Kind, mech: &[u8], data: &[u8], to: ReplyTo, out: &mut BytesMut) {
        let (Some(creds), Some(state)) = (self.shared.auth.sasl.as_ref(), self.sasl.as_mut())
        else {
            put_error(out, to, Status::UnknownCommand);
            return;
        };
        state.authenticated = false;
        let verdict = match kind {
            Kind::SaslListMechs => {
                put_response(out, to, Status::Success, 0, &[], &[], b"PLAIN");
                return;
            }
            Kind::SaslAuth if !mech.eq_ignore_ascii_case(b"PLAIN") => {
                state.phase = Phase::Idle;
                Some(false)
            }
            Kind::SaslAuth if data.is_empty() => {
                state.phase = Phase::AwaitingResponse;
                None
            }
            Kind::SaslAuth => {
                let ok = creds.current().verify_plain(data);
                state.phase = if ok { Phase::Done } else { Phase::Idle };
                Some(ok)
            }
            _ => match state.phase {
                Phase::AwaitingResponse => {
                    state.phase = Phase::Done;
                    Some(creds.current().verify_plain(data))
                }
                Phase::Idle | Phase::Done => Some(false),
            },
        };
        let stats = self.shared.engine.stats();
        match verdict {
            None => put_response(out, to, Status::AuthContinue, 0, &[], &[], &[]),
            Some(true) => {
                state.authenticated = true;
                stats.bump(|c| &c.auth_cmds);
                put_response(out, to, Status::Success, 0, &[], &[], b"Authenticated");
            }
            Some(false) => {
                stats.bump(|c| &c.auth_cmds);
                stats.bump(|c| &c.auth_errors);
                tracing::debug!("SASL authentication failed");
                put_error(out, to, Status::AuthError);
            }
        }
    }
}

/// Whether a request waits for the twin catch-up: everything but the
/// requests that reveal no data (stats, quit, noop) and authentication.
fn gated(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::Quit
            | Kind::Noop
            | Kind::Stat
            | Kind::SaslListMechs
            | Kind::SaslAuth
            | Kind::SaslStep
    )
}

/// Reply to a rejected header and say whether the connection survives.
fn reject(e: BinError, h: &Header, out: &mut BytesMut) -> Step {
    if let Some(status) = e.status() {
        put_error(out, ReplyTo::from(h), status);
    }
    if e.closes() {
        Step::Close
    } else {
        Step::Consumed(h.packet_len())
    }
}

/// The extras and key of a request whose fixed part is buffered.
fn extras_key<'a>(h: &Header, input: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    let ext_end = HEADER_LEN + h.ext_len();
    (&input[HEADER_LEN..ext_end], &input[ext_end..h.fixed_len()])
}

/// Flags and exptime of a store; APPEND/PREPEND have no extras (the engine
/// keeps the item's own flags and TTL for them).
fn store_args(mode: StoreMode, extras: &[u8]) -> (u32, i64) {
    match mode {
        StoreMode::Append | StoreMode::Prepend => (0, 0),
        _ => bin::store_extras(extras)
            .map(|(flags, exptime)| (flags, i64::from(exptime)))
            .unwrap_or((0, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Credentials, Format, LiveCredentials};

    use crate::protocol::binary::op;

    use proptest::prelude::*;

    fn shared(sasl: bool) -> Arc<Shared> {
        let mut s = Shared::for_tests();
        if sasl {
            s.auth.sasl = Credentials::parse(b"alice:s3cret\n", Format::SaslPwdb)
                .ok()
                .map(|c| LiveCredentials::new(Format::SaslPwdb, c));
        }
        Arc::new(s)
    }

    fn req(opcode: u8, key: &[u8], extras: &[u8], value: &[u8], cas: u64, opaque: u32) -> Vec<u8> {
        let body = extras.len() + key.len() + value.len();
        let mut v = vec![REQ_MAGIC, opcode];
        v.extend_from_slice(&(key.len() as u16).to_be_bytes());
        v.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
        v.extend_from_slice(&(body as u32).to_be_bytes());
        v.extend_from_slice(&opaque.to_be_bytes());
        v.extend_from_slice(&cas.to_be_bytes());
        v.extend_from_slice(extras);
        v.extend_from_slice(key);
        v.extend_from_slice(value);
        v
    }

    /// Feed `chunks` one at a time, as reads would deliver them; returns the
    /// output and whether the session asked to close.
    fn run(sess: &mut BinarySession, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for c in chunks {
            input.extend_from_slice(c);
            loop {
                match sess.process(&mut input, &mut out) {
                    Flow::NeedInput => break,
                    Flow::Flush | Flow::Yield => continue,
                    Flow::Close => return (out.to_vec(), true),
                }
            }
        }
        (out.to_vec(), false)
    }

    fn status_of(reply: &[u8]) -> u16 {
        u16::from_be_bytes([reply[6], reply[7]])
    }

    #[test]
    fn catching_up_closes_unanswered_by_default() {
        let mut sh = Shared::for_tests();
        sh.readiness = Arc::new(crate::twin::Readiness::gated());
        let sh = Arc::new(sh);
        let mut s = BinarySession::new(sh.clone());
        // A noop is answered; the get closes the connection without a reply.
        let mut batch = req(op::NOOP, b"", &[], &[], 0, 1);
        batch.extend(req(op::GET, b"k", &[], &[], 0, 2));
        batch.extend(req(op::NOOP, b"", &[], &[], 0, 3));
        let (out, closed) = run(&mut s, &[&batch]);
        assert!(closed);
        assert_eq!(out.len(), 24, "only the first noop's reply");
        assert_eq!((out[1], status_of(&out)), (op::NOOP, 0));
        assert_eq!(sh.readiness.refused(), 1);
    }

    #[test]
    fn stats_replication_group_only_with_a_peer() {
        let sh = shared(false);
        let mut s = BinarySession::new(sh.clone());
        let (out, _) = run(&mut s, &[&req(op::STAT, b"replication", &[], &[], 0, 1)]);
        assert_eq!(status_of(&out), Status::KeyNotFound as u16);
        let t = Arc::new(crate::twin::TwinStats::new("b:12211".into(), 3));
        assert!(sh.twin.set(t).is_ok());
        let (out, _) = run(&mut s, &[&req(op::STAT, b"replication", &[], &[], 0, 2)]);
        assert_eq!(status_of(&out), 0);
        // The first pair: key "state", value "ready".
        let (klen, blen) = (
            u16::from_be_bytes([out[2], out[3]]) as usize,
            u32::from_be_bytes([out[8], out[9], out[10], out[11]]) as usize,
        );
        assert_eq!(&out[24..24 + klen], b"state");
        assert_eq!(&out[24 + klen..24 + blen], b"ready");
    }

    #[test]
    fn catching_up_answers_an_internal_error_never_a_miss() {
        let mut sh = Shared::for_tests();
        sh.readiness =
            Arc::new(crate::twin::Readiness::gated().with_reply(crate::twin::NotReadyReply::Error));
        let sh = Arc::new(sh);
        let mut s = BinarySession::new(sh.clone());
        let set = req(op::SET, b"k", &[0, 0, 0, 7, 0, 0, 0, 0], b"value", 0, 1);
        // The value arrives in a later read: it is skipped, not parsed.
        let (head, tail) = set.split_at(30);
        let mut rest = tail.to_vec();
        rest.extend(req(op::GETKQ, b"k", &[], &[], 0, 2));
        rest.extend(req(op::STAT, b"", &[], &[], 0, 3));
        let (out, closed) = run(&mut s, &[head, &rest]);
        assert!(!closed);
        assert_eq!(status_of(&out), Status::Internal as u16);
        let body = &out[24..24 + u32::from_be_bytes([out[8], out[9], out[10], out[11]]) as usize];
        assert_eq!(body, bin::NOT_READY_MESSAGE);
        let second = &out[24 + u32::from_be_bytes([out[8], out[9], out[10], out[11]]) as usize..];
        assert_eq!(second[1], op::GETKQ, "a quiet get gets the error too");
        assert_eq!(status_of(second), Status::Internal as u16);
        assert_eq!(sh.readiness.refused(), 2);
        sh.readiness.synced();
        let mut batch = req(op::SET, b"k", &[0, 0, 0, 7, 0, 0, 0, 0], b"v", 0, 4);
        batch.extend(req(op::GET, b"k", &[], &[], 0, 5));
        let (out, _) = run(&mut s, &[&batch]);
        assert_eq!(status_of(&out), 0);
        assert_eq!(status_of(&out[24..]), 0, "the get hits");
    }

    #[test]
    fn set_get_quiet_and_noop() {
        let mut s = BinarySession::new(shared(false));
        let mut batch = req(op::SETQ, b"k", &[0, 0, 0, 7, 0, 0, 0, 0], b"v", 0, 1);
        batch.extend(req(op::GETKQ, b"miss", &[], &[], 0, 2));
        batch.extend(req(op::GETK, b"k", &[], &[], 0, 3));
        batch.extend(req(op::NOOP, b"", &[], &[], 0, 4));
        let (out, closed) = run(&mut s, &[&batch]);
        assert!(!closed);
        // GETK hit (24 + 4 + 1 + 1) then NOOP (24).
        assert_eq!(out.len(), 30 + 24);
        assert_eq!(
            (out[1], status_of(&out), &out[24..30]),
            (op::GETK, 0, &b"\0\0\0\x07kv"[..])
        );
        assert_eq!(out[31], op::NOOP);
    }

    #[test]
    fn oversized_set_is_answered_from_the_header_and_swallowed() {
        let mut s = BinarySession::new(shared(false));
        let big = vec![b'x'; (1 << 20) + 1];
        let packet = req(op::SET, b"big", &[0; 8], &big, 0, 9);
        // Only the fixed part arrives: the error is already sent.
        let (out, _) = run(&mut s, &[&packet[..40]]);
        assert_eq!(status_of(&out), Status::TooLarge as u16);
        let (out, closed) = run(
            &mut s,
            &[&packet[40..], &req(op::NOOP, b"", &[], &[], 0, 1)],
        );
        assert!(!closed);
        assert_eq!(out.len(), 24);
        assert_eq!(out[1], op::NOOP);
    }

    #[test]
    fn sasl_gate() {
        let sh = shared(true);
        let mut s = BinarySession::new(sh.clone());
        let (out, closed) = run(&mut s, &[&req(op::VERSION, b"", &[], &[], 0, 1)]);
        assert!(!closed && status_of(&out) == 0);
        let (out, closed) = run(
            &mut s,
            &[&req(op::SASL_AUTH, b"PLAIN", &[], b"\0alice\0nope", 0, 1)],
        );
        assert!(!closed && status_of(&out) == Status::AuthError as u16);
        let (out, closed) = run(&mut s, &[&req(op::SASL_AUTH, b"PLAIN", &[], b"", 0, 1)]);
        assert!(!closed && status_of(&out) == Status::AuthContinue as u16);
        let (out, closed) = run(
            &mut s,
            &[&req(op::SASL_STEP, b"PLAIN", &[], b"\0alice\0s3cret", 0, 1)],
        );
        assert!(!closed && status_of(&out) == 0);
        let (out, _) = run(&mut s, &[&req(op::GET, b"k", &[], &[], 0, 1)]);
        assert_eq!(status_of(&out), Status::KeyNotFound as u16);
        let snap = sh.engine.stats().snapshot();
        assert_eq!((snap.auth_cmds, snap.auth_errors), (2, 1));
        let mut other = BinarySession::new(sh);
        let (out, closed) = run(&mut other, &[&req(op::NOOP, b"", &[], &[], 0, 1)]);
        assert!(closed && status_of(&out) == Status::AuthError as u16);
    }

    fn valid_request() -> impl Strategy<Value = Vec<u8>> {
        let key = proptest::sample::select(vec![&b"a"[..], b"bb", b"counter"]);
        let value = proptest::collection::vec(any::<u8>(), 0..40);
        let quiet_opcodes = proptest::sample::select(vec![
            op::GET,
            op::GETQ,
            op::GETK,
            op::GETKQ,
            op::SET,
            op::SETQ,
            op::ADD,
            op::ADDQ,
            op::REPLACE,
            op::APPEND,
            op::PREPENDQ,
            op::DELETE,
            op::DELETEQ,
            op::INCREMENT,
            op::DECREMENTQ,
            op::TOUCH,
            op::GATKQ,
            op::NOOP,
            op::VERSION,
            op::VERBOSITY,
        ]);
        (quiet_opcodes, key, value, any::<u32>(), 0u64..4).prop_map(
            |(opcode, key, value, opaque, cas)| match opcode {
                op::SET | op::SETQ | op::ADD | op::ADDQ | op::REPLACE => {
                    req(opcode, key, &[0, 0, 0, 1, 0, 0, 0, 0], &value, cas, opaque)
                }
                op::APPEND | op::PREPENDQ => req(opcode, key, &[], &value, cas, opaque),
                op::INCREMENT | op::DECREMENTQ => {
                    let mut x = vec![0u8; 20];
                    x[7] = 1;
                    req(opcode, key, &x, &[], cas, opaque)
                }
                op::TOUCH | op::GATKQ => req(opcode, key, &[0, 0, 0, 0], &[], 0, opaque),
                op::VERBOSITY => req(opcode, &[], &[0, 0, 0, 1], &value, 0, opaque),
                op::NOOP | op::VERSION => req(opcode, &[], &[], &[], 0, opaque),
                _ => req(opcode, key, &[], &[], cas, opaque),
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..6),
            lead in any::<bool>(),
        ) {
            let mut s = BinarySession::new(shared(false));
            let mut first: Vec<Vec<u8>> = Vec::new();
            if lead {
                // Mostly-valid starts reach deeper than random magic bytes.
                first.push(vec![REQ_MAGIC]);
            }
            first.extend(chunks);
            let refs: Vec<&[u8]> = first.iter().map(|c| c.as_slice()).collect();
            let _ = run(&mut s, &refs);
        }

        #[test]
        fn splits_do_not_change_output(
            reqs in proptest::collection::vec(valid_request(), 1..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let all: Vec<u8> = reqs.concat();
            let (whole, closed_whole) = run(&mut BinarySession::new(shared(false)), &[&all]);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(all.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(&all[at..p]);
                at = p;
            }
            chunks.push(&all[at..]);
            let (split, closed_split) = run(&mut BinarySession::new(shared(false)), &chunks);
            prop_assert_eq!(closed_whole, closed_split);
            prop_assert_eq!(whole, split);
        }
    }
}
