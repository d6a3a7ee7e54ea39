//! The text-protocol session: classic commands (and meta commands, which share
//! the connection) executed against the engine.

use crate::engine::{DeleteOutcome, DeltaCmd, DeltaOutcome, StoreCmd, StoreOutcome};
use crate::protocol::text::{self, Command, Frame, Rejected, TextError, Tokens};
use crate::session::ascii_auth::{self, Gate};
use crate::session::{report, Flow, Shared, OUTPUT_HIGH_WATER};
use bytes::{Buf, Bytes, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct TextSession {
    shared: Arc<Shared>,
    /// Bytes of a rejected data block still to discard.
    swallow: usize,
    /// Whether a mutating command ran since the server last asked.
    mutated: bool,
    /// False while ASCII auth (`-Y`) still has to let this connection in.
    authenticated: bool,
    /// A multi-get interrupted when its replies filled the output batch: bytes
    /// of its key list already answered (0 = none). The line stays in the
    /// input until its last key is served.
    get_resume: usize,
}

impl TextSession {
    pub fn new(shared: Arc<Shared>) -> Self {
        TextSession {
            authenticated: shared.auth.ascii.is_none(),
            shared,
            swallow: 0,
            mutated: false,
            get_resume: 0,
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
            if input.is_empty() {
                return Flow::NeedInput;
            }
            if out.len() >= OUTPUT_HIGH_WATER {
                return Flow::Flush;
            }
            if !self.authenticated {
                match ascii_auth::gate(&self.shared, input, out) {
                    Gate::Consumed { n, authenticated } => {
                        input.advance(n);
                        self.authenticated = authenticated;
                        continue;
                    }
                    Gate::NeedMore => return Flow::NeedInput,
                    Gate::Close => return Flow::Close,
                }
            }
            let (end, next) = match text::frame(input) {
                Frame::Incomplete => return Flow::NeedInput,
                Frame::Close => return Flow::Close,
                Frame::Line { end, next } => (end, next),
            };
            if served >= limit {
                return Flow::Yield;
            }
            served += 1;
            match self.command(input, end, next, out) {
                Step::Consumed(n) => input.advance(n),
                Step::NeedMore => return Flow::NeedInput,
                Step::Flush => return Flow::Flush,
                Step::Close(n) => {
                    input.advance(n);
                    return Flow::Close;
                }
            }
        }
    }

    fn command(&mut self, input: &BytesMut, end: usize, next: usize, out: &mut BytesMut) -> Step {
        let line = &input[..end];
        let cmd = match text::parse(line) {
            Ok(c) => c,
            Err(r) => return self.rejected(r, next, out),
        };
        if !self.shared.readiness.serving() {
            if let Some(step) = self.not_ready(&cmd, next, out) {
                return step;
            }
        }
        let e = &self.shared.engine;
        match cmd {
            Command::Get { keys, cas, touch } => {
                if let Err(r) = text::check_keys(keys) {
                    return self.rejected(r, next, out);
                }
                // A multi-get of large values must not buffer them all: past
                // the high-water mark the batch goes out first and the same
                // line resumes after the keys already answered.
                let mut toks = Tokens::new(&keys[self.get_resume.min(keys.len())..]);
                while let Some(key) = toks.next() {
                    match touch {
                        Some(exptime) => {
                            self.mutated = true;
                            let found = e.get_and_touch(key, exptime);
                            if let Some(v) = &found {
                                text::put_value(out, key, v.flags, &v.value, cas.then_some(v.cas));
                            }
                            self.shared.prefixes.get(key, found.is_some());
                        }
                        // Encoded straight from the table: no copy of the item.
                        None => {
                            let found = e.get_with(key, |it| {
                                text::put_value(
                                    out,
                                    key,
                                    it.flags(),
                                    it.value(),
                                    cas.then_some(it.cas()),
                                )
                            });
                            self.shared.prefixes.get(key, found.is_some());
                        }
                    }
                    let rest = toks.rest();
                    if out.len() >= OUTPUT_HIGH_WATER && rest.iter().any(|&c| c != b' ') {
                        self.get_resume = keys.len() - rest.len();
                        return Step::Flush;
                    }
                }
                self.get_resume = 0;
                text::put_line(out, b"END");
            }
            Command::Store {
                mode,
                key,
                flags,
                exptime,
                len,
                cas,
                noreply,
            } => {
                let total = next + len + 2;
                if !e.fits(key.len(), len) {
                    self.shared.prefixes.set(key);
                    // Reply now and discard the data block without buffering it.
                    let mut c = StoreCmd::new(mode, key, flags, exptime, Bytes::new());
                    c.compare_cas = cas;
                    self.mutated = true;
                    let outcome = e.too_large(c);
                    self.store_reply(outcome, noreply, out);
                    self.swallow = len + 2;
                    return Step::Consumed(next);
                }
                if input.len() < total {
                    return Step::NeedMore;
                }
                let data = &input[next..total];
                self.shared.prefixes.set(key);
                if &data[len..] != b"\r\n" {
                    if !noreply {
                        text::put_error(out, TextError::Client("bad data chunk"));
                    }
                    return Step::Consumed(total);
                }
                let mut c = StoreCmd::new(
                    mode,
                    key,
                    flags,
                    exptime,
                    Bytes::copy_from_slice(&data[..len]),
                );
                c.compare_cas = cas;
                self.mutated = true;
                let outcome = e.store_item(c);
                self.store_reply(outcome, noreply, out);
                return Step::Consumed(total);
            }
            Command::Delete { key, noreply } => {
                self.mutated = true;
                self.shared.prefixes.delete(key);
                let reply: &[u8] = match e.delete(key, None) {
                    DeleteOutcome::Deleted => b"DELETED",
                    DeleteOutcome::NotFound => b"NOT_FOUND",
                    DeleteOutcome::Exists => b"EXISTS",
                    DeleteOutcome::Unavailable => UNAVAILABLE,
                };
                reply_unless(out, noreply, reply);
            }
            Command::Delta {
                key,
                incr,
                delta,
                noreply,
            } => {
                self.mutated = true;
                match e.delta(DeltaCmd::new(key, incr, delta)) {
                    DeltaOutcome::Value { value, .. } => {
                        if !noreply {
                            text::put_number(out, value);
                        }
                    }
                    DeltaOutcome::NotFound => reply_unless(out, noreply, b"NOT_FOUND"),
                    DeltaOutcome::NonNumeric => reply_unless(
                        out,
                        noreply,
                        b"CLIENT_ERROR cannot increment or decrement non-numeric value",
                    ),
                    DeltaOutcome::Exists => reply_unless(out, noreply, b"EXISTS"),
                    DeltaOutcome::NoMemory => {
                        reply_unless(out, noreply, b"SERVER_ERROR out of memory")
                    }
                    DeltaOutcome::Unavailable => reply_unless(out, noreply, UNAVAILABLE),
                }
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                self.mutated = true;
                let reply: &[u8] = if e.touch(key, exptime).is_some() {
                    b"TOUCHED"
                } else {
                    b"NOT_FOUND"
                };
                reply_unless(out, noreply, reply);
            }
            Command::FlushAll { delay, noreply } => {
                if !self.shared.settings.flush_enabled {
                    reply_unless(out, noreply, b"CLIENT_ERROR flush_all not allowed");
                } else {
                    self.mutated = true;
                    e.flush_all(delay);
                    reply_unless(out, noreply, b"OK");
                }
            }
            Command::Version => {
                text::put_line(out, format!("VERSION {}", crate::WIRE_VERSION).as_bytes());
            }
            Command::Verbosity { level, noreply } => {
                self.shared.verbosity.store(level.min(2), Ordering::Relaxed);
                reply_unless(out, noreply, b"OK");
            }
            Command::SlabsAutomove { noreply } => reply_unless(out, noreply, b"OK"),
            Command::Quit => return Step::Close(next),
            Command::Shutdown { valid } => {
                if !self.shared.settings.shutdown_enabled {
                    text::put_line(out, b"ERROR: shutdown not enabled");
                } else if !valid {
                    text::put_line(out, b"CLIENT_ERROR invalid shutdown mode");
                } else {
                    tracing::info!("shutdown requested by a client");
                    self.shared.shutdown.cancel();
                    return Step::Close(next);
                }
            }
            Command::Stats { args } => self.stats(args, out),
            Command::CacheMemlimit { mb, noreply } => {
                let reply: &[u8] = if mb < 8 {
                    b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m"
                } else if mb > 1_000_000_000 {
                    b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes"
                } else {
                    e.store().set_limit(mb as usize * 1024 * 1024, e.now());
                    b"OK"
                };
                reply_unless(out, noreply, reply);
            }
            Command::Meta { cmd, line } => {
                return match crate::session::meta::execute(
                    &self.shared,
                    cmd,
                    line,
                    input,
                    next,
                    out,
                ) {
                    crate::session::meta::Step::Done { consumed, mutated } => {
                        self.mutated |= mutated;
                        Step::Consumed(consumed)
                    }
                    crate::session::meta::Step::NeedMore => Step::NeedMore,
                    crate::session::meta::Step::Swallow { consumed, swallow } => {
                        self.swallow = swallow;
                        Step::Consumed(consumed)
                    }
                    crate::session::meta::Step::Close { consumed } => Step::Close(consumed),
                };
            }
        }
        Step::Consumed(next)
    }

    /// While catching up with the twin (the caller checked): close the
    /// connection, or the error instead of executing `cmd` (a data block is
    /// discarded unbuffered), by `--not-ready`; or None for the commands that
    /// reveal no data and stay available (`stats`, `quit`, `verbosity`,
    /// `shutdown`) and for meta commands, which gate themselves.
    fn not_ready(&mut self, cmd: &Command, next: usize, out: &mut BytesMut) -> Option<Step> {
        match cmd {
            Command::Stats { .. }
            | Command::Quit
            | Command::Verbosity { .. }
            | Command::SlabsAutomove { .. }
            | Command::Shutdown { .. }
            | Command::Meta { .. } => None,
            _ => {
                self.shared.readiness.refuse();
                if self.shared.readiness.refusal_closes() {
                    // What came before this request is answered, then the
                    // connection closes: the client goes to the twin.
                    return Some(Step::Close(next));
                }
                // Sent even with noreply, as memcached sends its errors.
                out.extend_from_slice(crate::session::NOT_READY);
                if let Command::Store { len, .. } = cmd {
                    self.swallow = len + 2;
                }
                Some(Step::Consumed(next))
            }
        }
    }

    fn rejected(&mut self, r: Rejected, next: usize, out: &mut BytesMut) -> Step {
        if r.error == TextError::Close {
            return Step::Close(next);
        }
        if !r.noreply {
            text::put_error(out, r.error);
        }
        self.swallow = r.swallow;
        Step::Consumed(next)
    }

    fn store_reply(&self, outcome: StoreOutcome, noreply: bool, out: &mut BytesMut) {
        let reply: &[u8] = match outcome {
            StoreOutcome::Stored { .. } => b"STORED",
            StoreOutcome::NotStored => b"NOT_STORED",
            StoreOutcome::Exists => b"EXISTS",
            StoreOutcome::NotFound => b"NOT_FOUND",
            StoreOutcome::TooLarge => b"SERVER_ERROR object too large for cache",
            StoreOutcome::NoMemory => b"SERVER_ERROR out of memory storing object",
            StoreOutcome::Unavailable => UNAVAILABLE,
        };
        reply_unless(out, noreply, reply);
    }

    fn stats(&self, args: &[u8], out: &mut BytesMut) {
        let mut toks = Tokens::new(args);
        let sub = toks.next();
        let pairs = match sub {
            None => report::general(&self.shared),
            Some(b"settings") => report::settings(&self.shared),
            Some(b"slabs") => report::slabs(&self.shared),
            Some(b"items") => report::items(&self.shared),
            Some(b"sizes") => Vec::new(),
            Some(b"replication") => match report::replication(&self.shared) {
                Some(p) => p,
                None => {
                    text::put_line(out, b"ERROR");
                    return;
                }
            },
            Some(b"conns") => {
                for (name, value) in report::conns(&self.shared) {
                    text::put_stat(out, &name, &value);
                }
                text::put_line(out, b"END");
                return;
            }
            Some(b"reset") => {
                self.shared.engine.stats().reset();
                self.shared.prefixes.clear();
                text::put_line(out, b"RESET");
                return;
            }
            Some(b"detail") => {
                match toks.next() {
                    Some(b"on") => {
                        self.shared.prefixes.set_enabled(true);
                        text::put_line(out, b"OK");
                    }
                    Some(b"off") => {
                        self.shared.prefixes.set_enabled(false);
                        text::put_line(out, b"OK");
                    }
                    Some(b"dump") => out.extend_from_slice(&self.shared.prefixes.dump()),
                    _ => text::put_line(out, b"CLIENT_ERROR usage: stats detail on|off|dump"),
                }
                return;
            }
            Some(_) => {
                text::put_line(out, b"ERROR");
                return;
            }
        };
        if sub == Some(b"sizes") {
            text::put_stat(out, "sizes_status", "disabled");
        }
        for (name, value) in &pairs {
            text::put_stat(out, name, value);
        }
        text::put_line(out, b"END");
    }
}

/// The reply when persistence cannot accept writes (disk full, I/O error).
pub const UNAVAILABLE: &[u8] = b"SERVER_ERROR unable to persist write";

enum Step {
    Consumed(usize),
    NeedMore,
    Close(usize),
    /// Send what is in the output first, then run the same line again (a
    /// multi-get resuming, see `TextSession::get_resume`).
    Flush,
}

fn reply_unless(out: &mut BytesMut, noreply: bool, reply: &[u8]) {
    if !noreply {
        text::put_line(out, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::for_tests())
    }

    #[test]
    fn yields_after_r_requests_and_resumes_where_it_stopped() {
        let stream = Arc::new(crate::mutation::MutationStream::new());
        let settings = crate::config::Settings {
            reqs_per_event: 3,
            ..crate::config::Settings::default()
        };
        let engine = crate::engine::Engine::for_tests(stream);
        let sh = Shared::new(Arc::new(engine), Arc::new(settings));
        let mut s = TextSession::new(Arc::new(sh));
        let mut input = BytesMut::from(&b"version\r\n".repeat(7)[..]);
        let mut out = BytesMut::new();
        let mut flows = Vec::new();
        loop {
            let f = s.process(&mut input, &mut out);
            flows.push(f);
            if f == Flow::NeedInput {
                break;
            }
        }
        assert_eq!(flows, [Flow::Yield, Flow::Yield, Flow::NeedInput]);
        assert_eq!(
            out.iter().filter(|&&b| b == b'\n').count(),
            7,
            "every reply, in order"
        );
        assert!(input.is_empty());
    }

    /// Feed `chunks` one after another, as separate reads; return all output.
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut s = TextSession::new(shared());
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        let mut closed = false;
        for c in chunks {
            input.extend_from_slice(c);
            loop {
                match s.process(&mut input, &mut out) {
                    Flow::NeedInput => break,
                    Flow::Flush | Flow::Yield => continue,
                    Flow::Close => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                break;
            }
        }
        (out.to_vec(), closed)
    }

    fn run_on(sh: Arc<Shared>, input: &[u8]) -> String {
        let mut s = TextSession::new(sh);
        let mut input = BytesMut::from(input);
        let mut out = BytesMut::new();
        while let Flow::Flush = s.process(&mut input, &mut out) {}
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn stats_replication_only_with_a_peer() {
        let sh = shared();
        assert_eq!(run_on(sh.clone(), b"stats replication\r\n"), "ERROR\r\n");
        assert!(!run_on(sh.clone(), b"stats\r\n").contains("repl_"));
        let t = Arc::new(crate::twin::TwinStats::new("10.0.0.2:12211".into(), 3));
        assert!(sh.twin.set(t).is_ok());
        let out = run_on(sh.clone(), b"stats replication\r\n");
        assert!(
            out.starts_with(
                "STAT state ready\r\nSTAT link connecting\r\nSTAT peer 10.0.0.2:12211\r\n"
            ),
            "{out}"
        );
        assert!(out.contains("STAT node_id 3\r\n") && out.ends_with("END\r\n"));
        let out = run_on(sh, b"stats\r\n");
        assert!(
            out.contains("STAT repl_link connecting\r\n") && out.contains("STAT repl_lag_ms 0\r\n")
        );
    }

    #[test]
    fn catching_up_answers_errors_never_misses_then_serves() {
        let mut sh = Shared::for_tests();
        sh.readiness =
            Arc::new(crate::twin::Readiness::gated().with_reply(crate::twin::NotReadyReply::Error));
        let sh = Arc::new(sh);
        let ready = sh.readiness.clone();
        let nr = "SERVER_ERROR not ready: catching up with the twin\r\n";
        let mut s = TextSession::new(sh.clone());
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        // A data block split over reads is discarded, not parsed as commands.
        for chunk in [
            &b"set k 0 0 7\r\nget "[..],
            b"x\r\n\r\nget k\r\nadd k 0 0 1 noreply\r\nz\r\nms k 2\r\nhi",
            b"\r\nmg k v\r\nmn\r\ndelete k\r\nincr k 1\r\ntouch k 1\r\nflush_all\r\nversion\r\n",
        ] {
            input.extend_from_slice(chunk);
            while let Flow::Flush = s.process(&mut input, &mut out) {}
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let want = format!("{nr}{nr}{nr}{nr}{nr}MN\r\n{nr}{nr}{nr}{nr}{nr}");
        assert_eq!(text, want);
        assert_eq!(ready.refused(), 10);
        // Stats stay available (operators watch the catch-up).
        assert!(run_on(sh.clone(), b"stats\r\n").ends_with("END\r\n"));
        ready.synced();
        assert_eq!(
            run_on(sh, b"set k 0 0 1\r\nv\r\nget k\r\n"),
            "STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
        );
        assert_eq!(ready.refused(), 10);
    }

    #[test]
    fn catching_up_closes_at_the_first_gated_request_by_default() {
        let mut sh = Shared::for_tests();
        sh.readiness = Arc::new(crate::twin::Readiness::gated());
        let sh = Arc::new(sh);
        let ready = sh.readiness.clone();
        for (input, answered) in [
            (
                &b"stats settings\r\nmn\r\nget k\r\nversion\r\n"[..],
                "MN\r\n",
            ),
            (b"mg k v\r\nget k\r\n", ""),
            (b"set k 0 0 1\r\nv\r\n", ""),
        ] {
            let mut s = TextSession::new(sh.clone());
            let mut buf = BytesMut::from(input);
            let mut out = BytesMut::new();
            let mut flow = Flow::Flush;
            for _ in 0..10 {
                flow = s.process(&mut buf, &mut out);
                if !matches!(flow, Flow::Flush) {
                    break;
                }
            }
            assert!(matches!(flow, Flow::Close), "{input:?}");
            let text = String::from_utf8_lossy(&out).into_owned();
            assert!(text.ends_with(answered), "{input:?}: {text:?}");
            assert!(!text.contains("VALUE") && !text.contains("END\r\nEND"));
            assert!(!text.contains("SERVER_ERROR") && !text.contains("STORED"));
        }
        assert_eq!(ready.refused(), 3);
        ready.synced();
        assert_eq!(
            run_on(sh, b"set k 0 0 1\r\nv\r\nget k\r\n"),
            "STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
        );
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        let key = "[a-z]{1,8}";
        prop_oneof![
            (key, 0u32..10, 0usize..20, any::<bool>()).prop_map(|(k, f, n, nr)| {
                let v = "v".repeat(n);
                format!(
                    "set {k} {f} 0 {n}{}\r\n{v}\r\n",
                    if nr { " noreply" } else { "" }
                )
                .into_bytes()
            }),
            (key, 0usize..5).prop_map(|(k, n)| format!(
                "append {k} 0 0 {n}\r\n{}\r\n",
                "a".repeat(n)
            )
            .into_bytes()),
            (key, key).prop_map(|(a, b)| format!("get {a} {b}\r\n").into_bytes()),
            key.prop_map(|k| format!("gets {k}\n").into_bytes()),
            (key, 0u64..100).prop_map(|(k, d)| format!("incr {k} {d}\r\n").into_bytes()),
            key.prop_map(|k| format!("delete {k}\r\n").into_bytes()),
            key.prop_map(|k| format!("touch {k} 10\r\n").into_bytes()),
            Just(b"bogus\r\n".to_vec()),
            Just(b"set k 0 0 2\r\nabc\r\n".to_vec()),
            Just(b"stats\r\n".to_vec()),
            Just(b"mn\r\n".to_vec()),
        ]
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_replies(reqs in prop::collection::vec(request(), 1..12), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let whole: Vec<u8> = reqs.concat();
            let (expected, _) = run(&[&whole]);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(whole.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&whole[last..p]);
                last = p;
            }
            chunks.push(&whole[last..]);
            let (got, _) = run(&chunks);
            // `stats` carries changing numbers (bytes_read differs per split); compare the rest.
            let strip = |v: &[u8]| String::from_utf8_lossy(v).lines().filter(|l| !l.starts_with("STAT ")).collect::<Vec<_>>().join("\n");
            prop_assert_eq!(strip(&got), strip(&expected));
        }

        #[test]
        fn garbage_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 1..8)) {
            let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
            let _ = run(&refs);
        }

        #[test]
        fn truncated_requests_never_panic(req in request(), cut in any::<prop::sample::Index>()) {
            let n = cut.index(req.len() + 1);
            let _ = run(&[&req[..n]]);
        }
    }

    #[test]
    fn overlong_line_closes_and_buffer_stays_bounded() {
        let junk = vec![b'x'; 3000];
        let (out, closed) = run(&[&junk]);
        assert!(closed && out.is_empty());
    }

    #[test]
    fn oversize_value_is_swallowed_without_buffering() {
        let mut s = TextSession::new(shared());
        let mut input = BytesMut::from(&b"set big 0 0 2000000\r\n"[..]);
        let mut out = BytesMut::new();
        assert_eq!(s.process(&mut input, &mut out), Flow::NeedInput);
        assert_eq!(&out[..], b"SERVER_ERROR object too large for cache\r\n");
        out.clear();
        for _ in 0..40 {
            input.extend_from_slice(&[b'z'; 50_000]);
            assert_eq!(s.process(&mut input, &mut out), Flow::NeedInput);
            assert!(input.is_empty(), "swallowed data must not accumulate");
        }
        input.extend_from_slice(b"\r\nget big\r\n");
        s.process(&mut input, &mut out);
        assert_eq!(&out[..], b"END\r\n");
    }
}
