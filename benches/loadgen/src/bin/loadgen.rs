//! memtwin-loadgen: a memcached load generator that costs less CPU per request
//! than the servers it drives.
//!
//! * A few threads (`--threads`), each an epoll loop over many non-blocking
//!   connections (`--conns` in total). Requests are encoded into a per-connection
//!   buffer that is reused, so there is no allocation per request; responses are
//!   parsed in place and only counted (values are skipped, not copied).
//! * Closed loop (default): every connection keeps `--pipeline` requests
//!   outstanding and sends a new one as each response completes; latency is
//!   measured from the send.
//! * Open loop (`--rate R`, requests/s in total): requests are *intended* at
//!   fixed intervals, round robin over the connections, and latency is measured
//!   from the intended time, so a stalled server is charged for the requests it
//!   delayed (no coordinated omission). Timing uses epoll_pwait2 with a 1 ns
//!   timer slack, so sends are not rounded to milliseconds.
//! * Text or binary protocol, `--get-ratio`, `--multiget K` keys per get,
//!   `--keys` key space (`<prefix><8 digits>`), `--value-size`.
//! * `--preload`: store every key of the key space once and exit.
//! * `--watch-pid PID` (repeatable): CPU seconds of that process during the
//!   measurement window, read from /proc, for server CPU per op.
//!
//! Prints one JSON object: ops/s, hits, errors, latency p50/p90/p99/p99.9/max
//! in µs, `idle_conns` (connections that completed no request in the window:
//! not accepted, or stalled), the generator's own CPU per op, and CPU of
//! watched processes and of the whole machine during the window.

use memtwin_bench::hist::Histogram;
use memtwin_bench::procfs;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Text,
    Binary,
}

#[derive(Clone, Debug)]
struct Opts {
    addr: SocketAddr,
    threads: usize,
    conns: usize,
    duration: f64,
    warmup: f64,
    proto: Proto,
    keys: u64,
    key_prefix: String,
    value_size: usize,
    get_ratio: f64,
    multiget: usize,
    pipeline: usize,
    rate: f64,
    preload: bool,
    watch: Vec<u32>,
    seed: u64,
    drain: f64,
    connect_order: ConnectOrder,
}

/// In which order the threads' connections reach the server's accept queue.
/// Servers that deal connections to worker threads round robin (memcached,
/// memtwin, the null server) map them by that order, so with few connections
/// the order decides whether each generator thread talks to one server worker
/// or to all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectOrder {
    /// Every thread connects on its own, concurrently: the order is a race.
    Free,
    /// One at a time, thread 0's first, thread 1's first, ..., thread 0's second ...
    Interleaved,
    /// One at a time, all of thread 0's, then all of thread 1's ...
    Blocked,
}

impl ConnectOrder {
    /// Position of thread `t`'s `i`-th connection in the global order, given
    /// every thread's number of connections.
    fn position(self, per_thread: &[usize], t: usize, i: usize) -> usize {
        match self {
            ConnectOrder::Free => 0,
            ConnectOrder::Blocked => per_thread[..t].iter().sum::<usize>() + i,
            ConnectOrder::Interleaved => {
                per_thread.iter().map(|&n| n.min(i)).sum::<usize>()
                    + per_thread[..t].iter().filter(|&&n| n > i).count()
            }
        }
    }
}

const USAGE: &str =
    "usage: memtwin-loadgen --addr HOST:PORT [--threads 1] [--conns 50] [--duration 8] \
[--warmup 1] [--proto text|binary] [--keys 100000] [--key-prefix key:] [--value-size 100] \
[--get-ratio 0.9] [--multiget 1] [--pipeline 1] [--rate REQ_PER_S] [--preload] \
[--watch-pid PID]... [--seed N] [--drain 2] [--connect-order free|interleaved|blocked]";

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        addr: "127.0.0.1:11211".parse().map_err(|e| format!("{e}"))?,
        threads: 1,
        conns: 50,
        duration: 8.0,
        warmup: 1.0,
        proto: Proto::Text,
        keys: 100_000,
        key_prefix: "key:".into(),
        value_size: 100,
        get_ratio: 0.9,
        multiget: 1,
        pipeline: 1,
        rate: 0.0,
        preload: false,
        watch: Vec::new(),
        seed: 0x9e37_79b9_7f4a_7c15,
        drain: 2.0,
        connect_order: ConnectOrder::Free,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut val = || -> Result<String, String> {
            i += 1;
            args.get(i).cloned().ok_or(format!("{a} needs a value"))
        };
        fn num<T: std::str::FromStr>(s: String, what: &str) -> Result<T, String> {
            s.parse().map_err(|_| format!("bad value for {what}: {s}"))
        }
        match a {
            "--addr" => {
                let v = val()?;
                o.addr = v
                    .to_socket_addrs()
                    .map_err(|e| format!("{v}: {e}"))?
                    .next()
                    .ok_or("no address")?;
            }
            "--threads" => o.threads = num(val()?, a)?,
            "--conns" => o.conns = num(val()?, a)?,
            "--duration" => o.duration = num(val()?, a)?,
            "--warmup" => o.warmup = num(val()?, a)?,
            "--proto" => {
                o.proto = match val()?.as_str() {
                    "text" | "ascii" => Proto::Text,
                    "binary" | "bin" => Proto::Binary,
                    p => return Err(format!("unknown protocol {p}")),
                }
            }
            "--keys" => o.keys = num(val()?, a)?,
            "--key-prefix" => o.key_prefix = val()?,
            "--value-size" => o.value_size = num(val()?, a)?,
            "--get-ratio" => o.get_ratio = num(val()?, a)?,
            "--multiget" => o.multiget = num(val()?, a)?,
            "--pipeline" => o.pipeline = num(val()?, a)?,
            "--rate" => o.rate = num(val()?, a)?,
            "--preload" => o.preload = true,
            "--watch-pid" => o.watch.push(num(val()?, a)?),
            "--seed" => o.seed = num(val()?, a)?,
            "--drain" => o.drain = num(val()?, a)?,
            "--connect-order" => {
                o.connect_order = match val()?.as_str() {
                    "free" => ConnectOrder::Free,
                    "interleaved" => ConnectOrder::Interleaved,
                    "blocked" => ConnectOrder::Blocked,
                    x => return Err(format!("unknown connect order {x}")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
        i += 1;
    }
    if o.threads == 0 || o.conns < o.threads {
        return Err("need at least one connection per thread".into());
    }
    if o.keys == 0 || o.keys > 100_000_000 {
        return Err("--keys must be in 1..=100000000 (8-digit key ids)".into());
    }
    if o.multiget == 0 || o.pipeline == 0 {
        return Err("--multiget and --pipeline must be at least 1".into());
    }
    if o.key_prefix.len() + 8 > 250 {
        return Err("key prefix too long".into());
    }
    if o.preload {
        o.get_ratio = 0.0;
        o.multiget = 1;
        o.rate = 0.0;
        o.pipeline = o.pipeline.max(32);
    }
    Ok(o)
}

// ---- request encoding ---------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Get,
    MultiGet,
    Set,
}

/// Everything needed to encode requests without allocating.
struct Encoder {
    proto: Proto,
    prefix: Vec<u8>,
    value: Vec<u8>,
    vlen_text: Vec<u8>,
    multiget: usize,
}

const BIN_GET: u8 = 0x00;
const BIN_SET: u8 = 0x01;
const BIN_NOOP: u8 = 0x0a;
const BIN_GETKQ: u8 = 0x0d;

impl Encoder {
    fn key(&self, buf: &mut Vec<u8>, id: u64) {
        buf.extend_from_slice(&self.prefix);
        let mut d = [b'0'; 8];
        let mut x = id;
        for slot in d.iter_mut().rev() {
            *slot = b'0' + (x % 10) as u8;
            x /= 10;
        }
        buf.extend_from_slice(&d);
    }

    fn key_len(&self) -> usize {
        self.prefix.len() + 8
    }

    fn bin_header(&self, buf: &mut Vec<u8>, opcode: u8, extlen: u8, body: usize) {
        let kl = if opcode == BIN_NOOP {
            0
        } else {
            self.key_len() as u16
        };
        buf.extend_from_slice(&[0x80, opcode]);
        buf.extend_from_slice(&kl.to_be_bytes());
        buf.extend_from_slice(&[extlen, 0, 0, 0]);
        buf.extend_from_slice(&(body as u32).to_be_bytes());
        buf.extend_from_slice(&[0; 12]); // opaque, cas
    }

    /// Append one request; `keys` yields key ids.
    fn encode(&self, buf: &mut Vec<u8>, kind: Kind, mut keys: impl FnMut() -> u64) {
        match (self.proto, kind) {
            (Proto::Text, Kind::Get | Kind::MultiGet) => {
                buf.extend_from_slice(b"get");
                let n = if kind == Kind::Get { 1 } else { self.multiget };
                for _ in 0..n {
                    buf.push(b' ');
                    self.key(buf, keys());
                }
                buf.extend_from_slice(b"\r\n");
            }
            (Proto::Text, Kind::Set) => {
                buf.extend_from_slice(b"set ");
                self.key(buf, keys());
                buf.extend_from_slice(b" 0 0 ");
                buf.extend_from_slice(&self.vlen_text);
                buf.extend_from_slice(b"\r\n");
                buf.extend_from_slice(&self.value);
                buf.extend_from_slice(b"\r\n");
            }
            (Proto::Binary, Kind::Get) => {
                self.bin_header(buf, BIN_GET, 0, self.key_len());
                self.key(buf, keys());
            }
            (Proto::Binary, Kind::MultiGet) => {
                for _ in 0..self.multiget {
                    self.bin_header(buf, BIN_GETKQ, 0, self.key_len());
                    self.key(buf, keys());
                }
                self.bin_header(buf, BIN_NOOP, 0, 0);
            }
            (Proto::Binary, Kind::Set) => {
                self.bin_header(buf, BIN_SET, 8, 8 + self.key_len() + self.value.len());
                buf.extend_from_slice(&[0; 8]); // flags, exptime
                self.key(buf, keys());
                buf.extend_from_slice(&self.value);
            }
        }
    }
}

// ---- per-thread event loop ------------------------------------------------------

#[derive(Clone, Copy)]
struct Pending {
    /// Send (closed loop) or intended send (open loop) time, ns since the epoch.
    t: u64,
    kind: Kind,
    /// Sent inside the measurement window.
    counted: bool,
}

struct Conn {
    /// Owns the socket (closed on drop); I/O goes through `fd`.
    _sock: TcpStream,
    fd: i32,
    wbuf: Vec<u8>,
    wpos: usize,
    want_out: bool,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    /// Bytes of a value still to skip.
    skip: usize,
    /// The head request completes (ok or not) once `skip` reaches 0 (binary bodies).
    complete_after_skip: Option<bool>,
    /// Hits seen so far for the head request (a multi-get spans reads).
    hits: u64,
    pending: VecDeque<Pending>,
    dirty: bool,
    /// Responses to counted requests on this connection.
    served: u64,
}

#[derive(Default)]
struct Totals {
    ops: u64,
    keys_requested: u64,
    hits: u64,
    errors: u64,
    timeouts: u64,
    sent: u64,
    /// Connections that completed no counted request: never accepted or stalled for the
    /// whole window (in a closed loop their requests were sent before the window, so
    /// they would not show as timeouts).
    idle_conns: u64,
}

struct Rng(u64);
impl Rng {
    #[inline]
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Where key ids come from.
enum Keys {
    Random {
        n: u64,
    },
    /// Preload: each key of this thread's slice once.
    Sequential {
        next: u64,
        end: u64,
    },
}

struct Worker {
    opts: Arc<Opts>,
    enc: Encoder,
    conns: Vec<Conn>,
    epfd: i32,
    rng: Rng,
    keys: Keys,
    get_threshold: u64,
    hist: Histogram,
    tot: Totals,
    epoch: Instant,
    t_start: u64,
    t_end: u64,
    sending: bool,
    dirty: Vec<usize>,
    max_outstanding: usize,
}

const RBUF: usize = 256 * 1024;

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Worker {
    fn new(
        opts: Arc<Opts>,
        idx: usize,
        per_thread: &[usize],
        turn: &AtomicUsize,
        epoch: Instant,
    ) -> io::Result<Worker> {
        let n_conns = per_thread[idx];
        let enc = Encoder {
            proto: opts.proto,
            prefix: opts.key_prefix.as_bytes().to_vec(),
            value: vec![b'x'; opts.value_size],
            vlen_text: opts.value_size.to_string().into_bytes(),
            multiget: opts.multiget,
        };
        // SAFETY: plain syscall.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let max_outstanding = if opts.rate > 0.0 {
            100_000
        } else {
            opts.pipeline
        };
        let mut conns = Vec::with_capacity(n_conns);
        let ordered = opts.connect_order != ConnectOrder::Free;
        for i in 0..n_conns {
            if ordered {
                // Wait (bounded) for this connection's turn in the global order.
                let me = opts.connect_order.position(per_thread, idx, i);
                let deadline = Instant::now() + Duration::from_secs(30);
                while turn.load(Ordering::Acquire) != me {
                    if Instant::now() > deadline {
                        return Err(io::Error::other("timed out waiting for the connect turn"));
                    }
                    std::thread::yield_now();
                }
            }
            let sock = TcpStream::connect_timeout(&opts.addr, Duration::from_secs(5));
            if ordered {
                turn.fetch_add(1, Ordering::AcqRel);
            }
            let sock = sock?;
            sock.set_nodelay(true)?;
            sock.set_nonblocking(true)?;
            let fd = sock.as_raw_fd();
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: valid fds and event struct.
            if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let wcap =
                (opts.pipeline.max(16) * (64 + opts.value_size + 40 * opts.multiget)).min(64 << 20);
            conns.push(Conn {
                _sock: sock,
                fd,
                wbuf: Vec::with_capacity(wcap),
                wpos: 0,
                want_out: false,
                rbuf: vec![0; RBUF],
                rpos: 0,
                rlen: 0,
                skip: 0,
                complete_after_skip: None,
                hits: 0,
                pending: VecDeque::with_capacity(max_outstanding.min(4096)),
                dirty: false,
                served: 0,
            });
        }
        let keys = if opts.preload {
            let per = opts.keys.div_ceil(opts.threads as u64);
            let lo = per * idx as u64;
            Keys::Sequential {
                next: lo.min(opts.keys),
                end: (lo + per).min(opts.keys),
            }
        } else {
            Keys::Random { n: opts.keys }
        };
        let get_threshold = (opts.get_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        Ok(Worker {
            rng: Rng(opts.seed ^ ((idx as u64 + 1) * 0x9e37_79b9_7f4a_7c15) | 1),
            opts,
            enc,
            conns,
            epfd,
            keys,
            get_threshold,
            hist: Histogram::new(),
            tot: Totals::default(),
            epoch,
            t_start: 0,
            t_end: u64::MAX,
            sending: true,
            dirty: Vec::with_capacity(n_conns),
            max_outstanding,
        })
    }

    fn next_key(&mut self) -> Option<u64> {
        match &mut self.keys {
            Keys::Random { n } => Some(self.rng.below(*n)),
            Keys::Sequential { next, end } => {
                if *next >= *end {
                    None
                } else {
                    *next += 1;
                    Some(*next - 1)
                }
            }
        }
    }

    /// Queue one request on connection `c`, intended at time `t`.
    fn enqueue(&mut self, c: usize, t: u64) -> bool {
        let kind = if self.rng.next() < self.get_threshold {
            if self.opts.multiget > 1 {
                Kind::MultiGet
            } else {
                Kind::Get
            }
        } else {
            Kind::Set
        };
        if matches!(self.keys, Keys::Sequential { next, end } if next >= end) {
            self.sending = false;
            return false;
        }
        let counted = self.opts.preload || (t >= self.t_start && t < self.t_end);
        // Borrow dance: draw key ids first (at most `multiget` of them).
        let mut ids = [0u64; 64];
        let n = match kind {
            Kind::MultiGet => self.opts.multiget.min(64),
            _ => 1,
        };
        for slot in ids.iter_mut().take(n) {
            *slot = match self.next_key() {
                Some(k) => k,
                None => return false,
            };
        }
        let mut j = 0;
        let conn = &mut self.conns[c];
        self.enc.encode(&mut conn.wbuf, kind, || {
            let k = ids[j % n];
            j += 1;
            k
        });
        conn.pending.push_back(Pending { t, kind, counted });
        if counted {
            self.tot.sent += 1;
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
        true
    }

    fn flush(&mut self, c: usize) -> io::Result<()> {
        let conn = &mut self.conns[c];
        conn.dirty = false;
        while conn.wpos < conn.wbuf.len() {
            let buf = &conn.wbuf[conn.wpos..];
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::write(conn.fd, buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = errno();
                if e == libc::EAGAIN {
                    break;
                }
                if e == libc::EINTR {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(e));
            }
            conn.wpos += n as usize;
        }
        let done = conn.wpos == conn.wbuf.len();
        if done {
            conn.wbuf.clear();
            conn.wpos = 0;
        } else if conn.wpos > conn.wbuf.capacity() / 2 {
            conn.wbuf.drain(..conn.wpos);
            conn.wpos = 0;
        }
        if done == conn.want_out {
            conn.want_out = !done;
            let events = libc::EPOLLIN as u32 | if done { 0 } else { libc::EPOLLOUT as u32 };
            let mut ev = libc::epoll_event {
                events,
                u64: c as u64,
            };
            // SAFETY: valid fds.
            unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, conn.fd, &mut ev) };
        }
        Ok(())
    }

    fn flush_dirty(&mut self) -> io::Result<()> {
        while let Some(c) = self.dirty.pop() {
            self.flush(c)?;
        }
        Ok(())
    }

    fn complete(&mut self, c: usize, now: u64, ok: bool, hits: u64) {
        let Some(p) = self.conns[c].pending.pop_front() else {
            return;
        };
        if p.counted {
            self.conns[c].served += 1;
            self.tot.ops += 1;
            self.tot.hits += hits;
            if p.kind != Kind::Set {
                self.tot.keys_requested += if p.kind == Kind::MultiGet {
                    self.opts.multiget as u64
                } else {
                    1
                };
            }
            if !ok {
                self.tot.errors += 1;
            }
            self.hist.record(now.saturating_sub(p.t));
        }
        if self.opts.rate <= 0.0 && self.sending {
            self.enqueue(c, now);
        }
    }

    /// Read what is there and complete every full response.
    fn readable(&mut self, c: usize) -> io::Result<()> {
        {
            let conn = &mut self.conns[c];
            if conn.rpos == conn.rlen {
                conn.rpos = 0;
                conn.rlen = 0;
            } else if conn.rlen == conn.rbuf.len() {
                conn.rbuf.copy_within(conn.rpos..conn.rlen, 0);
                conn.rlen -= conn.rpos;
                conn.rpos = 0;
            }
            let buf = &mut conn.rbuf[conn.rlen..];
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::read(conn.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = errno();
                if e == libc::EAGAIN || e == libc::EINTR {
                    return Ok(());
                }
                return Err(io::Error::from_raw_os_error(e));
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            conn.rlen += n as usize;
        }
        let now = now_ns(self.epoch);
        loop {
            let conn = &mut self.conns[c];
            if conn.skip > 0 {
                let k = conn.skip.min(conn.rlen - conn.rpos);
                conn.rpos += k;
                conn.skip -= k;
                if conn.skip > 0 {
                    break;
                }
                if let Some(ok) = conn.complete_after_skip.take() {
                    let hits = std::mem::take(&mut conn.hits);
                    self.complete(c, now, ok, hits);
                    continue;
                }
            }
            let Some(head) = conn.pending.front().map(|p| p.kind) else {
                if conn.rpos < conn.rlen {
                    return Err(io::Error::other("unexpected bytes from server"));
                }
                break;
            };
            let avail = &conn.rbuf[conn.rpos..conn.rlen];
            match self.opts.proto {
                Proto::Text => {
                    let Some(nl) = memchr::memchr(b'\n', avail) else {
                        if avail.len() > 64 * 1024 {
                            return Err(io::Error::other("overlong reply line"));
                        }
                        break;
                    };
                    let line = &avail[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let advance = nl + 1;
                    if line.starts_with(b"VALUE ") {
                        let len = line
                            .split(|&b| b == b' ')
                            .nth(3)
                            .and_then(|t| std::str::from_utf8(t).ok())
                            .and_then(|t| t.parse::<usize>().ok())
                            .ok_or_else(|| io::Error::other("bad VALUE line"))?;
                        conn.rpos += advance;
                        conn.skip = len + 2;
                        conn.hits += 1;
                        continue;
                    }
                    let ok = match head {
                        Kind::Get | Kind::MultiGet => line == b"END",
                        Kind::Set => line == b"STORED",
                    };
                    conn.rpos += advance;
                    let hits = std::mem::take(&mut conn.hits);
                    self.complete(c, now, ok, hits);
                }
                Proto::Binary => {
                    if avail.len() < 24 {
                        break;
                    }
                    if avail[0] != 0x81 {
                        return Err(io::Error::other("bad response magic"));
                    }
                    let opcode = avail[1];
                    let status = u16::from_be_bytes([avail[6], avail[7]]);
                    let body =
                        u32::from_be_bytes([avail[8], avail[9], avail[10], avail[11]]) as usize;
                    conn.rpos += 24;
                    conn.skip = body;
                    let (done, ok) = match head {
                        Kind::MultiGet => {
                            if opcode == BIN_NOOP {
                                (true, true)
                            } else {
                                conn.hits += u64::from(status == 0);
                                (false, true)
                            }
                        }
                        Kind::Get => {
                            conn.hits += u64::from(status == 0);
                            (true, status == 0 || status == 1)
                        }
                        Kind::Set => (true, status == 0),
                    };
                    if done {
                        if body == 0 {
                            let hits = std::mem::take(&mut conn.hits);
                            self.complete(c, now, ok, hits);
                        } else {
                            conn.complete_after_skip = Some(ok);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut [libc::epoll_event],
        timeout_ns: Option<u64>,
    ) -> io::Result<usize> {
        let ts;
        let tsp = match timeout_ns {
            Some(ns) => {
                ts = libc::timespec {
                    tv_sec: (ns / 1_000_000_000) as libc::time_t,
                    tv_nsec: (ns % 1_000_000_000) as libc::c_long,
                };
                &ts as *const libc::timespec
            }
            None => std::ptr::null(),
        };
        // SAFETY: valid epoll fd, event buffer and timespec (or NULL).
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.epfd,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                tsp,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                return Ok(0);
            }
            if e == libc::ENOSYS {
                let ms = timeout_ns
                    .map(|ns| ns.div_ceil(1_000_000) as i32)
                    .unwrap_or(-1);
                // SAFETY: as above.
                let n = unsafe {
                    libc::epoll_wait(self.epfd, events.as_mut_ptr(), events.len() as i32, ms)
                };
                return if n < 0 { Ok(0) } else { Ok(n as usize) };
            }
            return Err(io::Error::from_raw_os_error(e));
        }
        Ok(n as usize)
    }

    fn run(&mut self, t_go: u64) -> io::Result<()> {
        let o = self.opts.clone();
        let n = self.conns.len();
        self.t_start = t_go + (o.warmup * 1e9) as u64;
        self.t_end = self.t_start + (o.duration * 1e9) as u64;
        if o.preload {
            self.t_end = u64::MAX;
        }
        let open = o.rate > 0.0;
        // Open loop: this thread's share of the rate, one send every `spacing` ns,
        // round robin over its connections.
        let share = o.rate * n as f64 / o.conns as f64;
        let spacing = if open { (1e9 / share).max(1.0) } else { 0.0 };
        let mut next_due = t_go as f64;
        let mut rr = 0usize;
        if !open {
            let now = now_ns(self.epoch);
            for c in 0..n {
                for _ in 0..o.pipeline {
                    if !self.enqueue(c, now) {
                        break;
                    }
                }
            }
        }
        let drain_deadline = |t_end: u64| t_end.saturating_add((o.drain * 1e9) as u64);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            let mut now = now_ns(self.epoch);
            if self.sending && now >= self.t_end {
                self.sending = false;
            }
            if open && self.sending {
                while (next_due as u64) <= now && (next_due as u64) < self.t_end {
                    if self.conns[rr].pending.len() < self.max_outstanding {
                        self.enqueue(rr, next_due as u64);
                    } else {
                        self.tot.errors += 1; // could not even queue it
                    }
                    next_due += spacing;
                    rr += 1;
                    if rr == n {
                        rr = 0;
                    }
                }
            }
            self.flush_dirty()?;
            if !self.sending {
                let outstanding = self.conns.iter().any(|c| !c.pending.is_empty());
                if !outstanding || now >= drain_deadline(self.t_end) {
                    break;
                }
            }
            now = now_ns(self.epoch);
            let until = if self.sending {
                if open {
                    (next_due as u64).min(self.t_end)
                } else {
                    self.t_end
                }
            } else {
                drain_deadline(self.t_end)
            };
            let timeout = until.saturating_sub(now);
            let k = self.wait(&mut events, Some(timeout))?;
            for ev in events.iter().take(k) {
                let c = ev.u64 as usize;
                let flags = ev.events;
                if flags & (libc::EPOLLIN as u32 | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32)
                    != 0
                {
                    self.readable(c)?;
                }
                if flags & libc::EPOLLOUT as u32 != 0 && !self.conns[c].dirty {
                    self.conns[c].dirty = true;
                    self.dirty.push(c);
                }
            }
        }
        // Whatever is still unanswered and was counted is a timeout; charge it the
        // time it waited so the tail is not flattered.
        let now = now_ns(self.epoch);
        self.tot.idle_conns = self.conns.iter().filter(|c| c.served == 0).count() as u64;
        for c in 0..n {
            while let Some(p) = self.conns[c].pending.pop_front() {
                if p.counted {
                    self.tot.timeouts += 1;
                    self.hist.record(now.saturating_sub(p.t));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.epfd) };
    }
}

struct Sample {
    gen_cpu: f64,
    watched: Vec<Option<f64>>,
    sys_busy: f64,
    cpu_busy: Vec<f64>,
}

fn sample(o: &Opts) -> Sample {
    let (sys_busy, cpu_busy) = procfs::system_busy();
    Sample {
        gen_cpu: procfs::self_cpu(),
        watched: o.watch.iter().map(|&p| procfs::process_cpu(p)).collect(),
        sys_busy,
        cpu_busy,
    }
}

fn sleep_until(epoch: Instant, t: u64) {
    let now = now_ns(epoch);
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let epoch = Instant::now();
    let go = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(opts.threads + 1));
    let per_thread: Arc<Vec<usize>> = Arc::new(
        (0..opts.threads)
            .map(|t| opts.conns / opts.threads + usize::from(t < opts.conns % opts.threads))
            .collect(),
    );
    let turn = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..opts.threads {
        let (opts, go, barrier) = (opts.clone(), go.clone(), barrier.clone());
        let (per_thread, turn) = (per_thread.clone(), turn.clone());
        handles.push(std::thread::spawn(
            move || -> Result<(Histogram, Totals), String> {
                // SAFETY: prctl on the calling thread; 1 ns slack makes timed waits precise.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
                let w = Worker::new(opts, t, &per_thread, &turn, epoch);
                barrier.wait();
                barrier.wait();
                let mut w = w.map_err(|e| format!("connect: {e}"))?;
                w.run(go.load(Ordering::Acquire))
                    .map_err(|e| format!("worker {t}: {e}"))?;
                Ok((std::mem::take(&mut w.hist), std::mem::take(&mut w.tot)))
            },
        ));
    }
    barrier.wait();
    let t_go = now_ns(epoch) + 1_000_000;
    go.store(t_go, Ordering::Release);
    barrier.wait();
    let (before, after, window) = if opts.preload {
        let b = sample(&opts);
        (b, None, 0.0)
    } else {
        let t_start = t_go + (opts.warmup * 1e9) as u64;
        let t_end = t_start + (opts.duration * 1e9) as u64;
        sleep_until(epoch, t_start);
        let b = sample(&opts);
        let real_start = now_ns(epoch);
        sleep_until(epoch, t_end);
        let a = sample(&opts);
        let real = (now_ns(epoch) - real_start) as f64 / 1e9;
        (b, Some(a), real)
    };
    let mut hist = Histogram::new();
    let mut tot = Totals::default();
    let mut failed = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok((h, t))) => {
                hist.merge(&h);
                tot.ops += t.ops;
                tot.hits += t.hits;
                tot.keys_requested += t.keys_requested;
                tot.errors += t.errors;
                tot.timeouts += t.timeouts;
                tot.sent += t.sent;
                tot.idle_conns += t.idle_conns;
            }
            Ok(Err(e)) => failed.push(e),
            Err(_) => failed.push("worker panicked".into()),
        }
    }
    let elapsed = epoch.elapsed().as_secs_f64();
    let after = after.unwrap_or_else(|| sample(&opts));
    let window = if opts.preload { elapsed } else { window };
    let us = |ns: u64| ns as f64 / 1000.0;
    let ops = tot.ops as f64;
    let per_op = |cpu: f64| if tot.ops > 0 { cpu * 1e6 / ops } else { 0.0 };
    let gen_cpu = after.gen_cpu - before.gen_cpu;
    let mut watched = String::new();
    for (i, pid) in opts.watch.iter().enumerate() {
        let d = match (before.watched[i], after.watched[i]) {
            (Some(b), Some(a)) => a - b,
            _ => f64::NAN,
        };
        if i > 0 {
            watched.push_str(", ");
        }
        let d_s = if d.is_nan() {
            "null".to_string()
        } else {
            format!("{d:.4}")
        };
        let per = if d.is_nan() {
            "null".to_string()
        } else {
            format!("{:.3}", per_op(d))
        };
        watched.push_str(&format!(
            "\"{pid}\": {{\"cpu_s\": {d_s}, \"cpu_us_per_op\": {per}}}"
        ));
    }
    let cpu_busy: Vec<String> = after
        .cpu_busy
        .iter()
        .zip(before.cpu_busy.iter())
        .map(|(a, b)| format!("{:.3}", a - b))
        .collect();
    let errors: Vec<String> = failed.iter().map(|e| format!("{e:?}")).collect();
    let json = format!(
        concat!(
            "{{\"proto\": \"{proto}\", \"conns\": {conns}, \"threads\": {threads}, ",
            "\"pipeline\": {pipe}, \"multiget\": {mg}, \"rate\": {rate}, ",
            "\"value_size\": {vs}, \"get_ratio\": {gr}, \"keys\": {keys}, ",
            "\"seconds\": {secs:.3}, \"ops\": {ops}, \"ops_per_sec\": {ops_s:.1}, ",
            "\"keys_per_sec\": {keys_s:.1}, \"hits\": {hits}, \"keys_requested\": {kr}, ",
            "\"errors\": {errs}, \"timeouts\": {to}, \"idle_conns\": {idle}, ",
            "\"lat_us\": {{\"p50\": {p50:.1}, \"p90\": {p90:.1}, \"p99\": {p99:.1}, ",
            "\"p999\": {p999:.1}, \"max\": {max:.1}, \"mean\": {mean:.1}}}, ",
            "\"gen_cpu_s\": {gcpu:.4}, \"gen_cpu_us_per_op\": {gper:.3}, ",
            "\"watched\": {{{watched}}}, \"sys_busy_s\": {sys:.3}, \"cpu_busy_s\": [{cpus}], ",
            "\"failures\": [{fails}]}}"
        ),
        proto = if opts.proto == Proto::Text {
            "text"
        } else {
            "binary"
        },
        conns = opts.conns,
        threads = opts.threads,
        pipe = opts.pipeline,
        mg = opts.multiget,
        rate = opts.rate,
        vs = opts.value_size,
        gr = opts.get_ratio,
        keys = opts.keys,
        secs = window,
        ops = tot.ops,
        ops_s = if window > 0.0 { ops / window } else { 0.0 },
        keys_s = if window > 0.0 {
            tot.keys_requested as f64 / window
        } else {
            0.0
        },
        hits = tot.hits,
        kr = tot.keys_requested,
        errs = tot.errors,
        to = tot.timeouts,
        idle = tot.idle_conns,
        p50 = us(hist.quantile(0.5)),
        p90 = us(hist.quantile(0.9)),
        p99 = us(hist.quantile(0.99)),
        p999 = us(hist.quantile(0.999)),
        max = us(hist.max()),
        mean = hist.mean() / 1000.0,
        gcpu = gen_cpu,
        gper = per_op(gen_cpu),
        watched = watched,
        sys = after.sys_busy - before.sys_busy,
        cpus = cpu_busy.join(", "),
        fails = errors.join(", "),
    );
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{json}");
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectOrder;

    /// Every connection gets a distinct turn, and the turns are 0..total.
    fn turns(order: ConnectOrder, per_thread: &[usize]) -> Vec<Vec<usize>> {
        per_thread
            .iter()
            .enumerate()
            .map(|(t, &n)| (0..n).map(|i| order.position(per_thread, t, i)).collect())
            .collect()
    }

    #[test]
    fn orders_are_permutations_in_the_promised_sequence() {
        assert_eq!(
            turns(ConnectOrder::Interleaved, &[2, 2]),
            vec![vec![0, 2], vec![1, 3]]
        );
        assert_eq!(
            turns(ConnectOrder::Blocked, &[2, 2]),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert_eq!(
            turns(ConnectOrder::Interleaved, &[3, 2]),
            vec![vec![0, 2, 4], vec![1, 3]]
        );
        for shape in [&[1usize][..], &[3, 3], &[26, 25], &[4, 1, 1], &[100, 100]] {
            for order in [ConnectOrder::Interleaved, ConnectOrder::Blocked] {
                let mut all: Vec<usize> = turns(order, shape).concat();
                all.sort_unstable();
                let total: usize = shape.iter().sum();
                assert_eq!(all, (0..total).collect::<Vec<_>>(), "{order:?} {shape:?}");
            }
        }
    }
}
