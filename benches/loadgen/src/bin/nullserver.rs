//! memtwin-nullserver: the floor of loopback + syscalls for a tokio server.
//!
//! Speaks just enough of the memcached text and binary protocols for the load
//! generator: every `get` is a hit with a fixed value (`--value-size` bytes),
//! every `set` is `STORED`, nothing is hashed or stored. By default it is built
//! like memtwin's socket loop (`-t` threads, each one level-triggered epoll loop
//! over the connections assigned to it at accept, one `recv` and one `send` per
//! ready connection, a `sched_yield` after a batch of 4 or more, and a poll
//! and a timed yield before sleeping while such yields run someone), so
//! `memtwin - null` is the cost of memtwin's own work per request.
//!
//! Flags: `-p PORT`, `-l ADDR`, `-t THREADS`, `--value-size N`; memcached's
//! other flags (`-m`, `-c`, `-U`, `-u`, ...) are accepted and ignored.
//! Experiments (docs/performance.md): `--tokio` (memtwin's earlier structure:
//! one work-stealing tokio runtime, a task per connection), `--per-core` (a
//! `current_thread` runtime per thread), `--no-yield` (epoll loops without the
//! yield), `--no-idle-yield` (without memtwin's yield before sleeping,
//! `server::idle_yield`), and `NULL_SPIN_NS=N` in the environment (spin N ns per
//! batch of requests, to emulate a server's own work).

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Opts {
    addr: String,
    port: u16,
    threads: usize,
    value_size: usize,
    /// One `current_thread` runtime per worker thread, connections handed out
    /// round robin by the accepting thread (instead of one work-stealing runtime).
    per_core: bool,
    /// One work-stealing tokio runtime, a task per connection.
    tokio: bool,
    /// Epoll loops without the yield after large batches.
    no_yield: bool,
    /// Epoll loops without the timed yield before sleeping.
    no_idle_yield: bool,
}

fn parse() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1".into(),
        port: 11211,
        threads: 4,
        value_size: 100,
        per_core: false,
        tokio: false,
        no_yield: false,
        no_idle_yield: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "-p" | "--port" => o.port = v.parse().expect("port"),
            "-l" | "--listen" => o.addr = v,
            "-t" | "--threads" => o.threads = v.parse().expect("threads"),
            "--value-size" => o.value_size = v.parse().expect("value size"),
            "--per-core" => {
                o.per_core = true;
                i += 1;
                continue;
            }
            "--tokio" => {
                o.tokio = true;
                i += 1;
                continue;
            }
            "--no-yield" => {
                o.no_yield = true;
                i += 1;
                continue;
            }
            "--no-idle-yield" => {
                o.no_idle_yield = true;
                i += 1;
                continue;
            }
            // memcached flags with a value, ignored.
            "-m" | "-c" | "-U" | "-u" | "-I" | "-b" | "-R" => {}
            // Flags without a value.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// Replies for one connection's buffered input; returns false on garbage.
fn process(input: &mut BytesMut, out: &mut BytesMut, value: &[u8], vlen: &[u8]) -> bool {
    static SPIN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let spin = *SPIN.get_or_init(|| env_u32("NULL_SPIN_NS").unwrap_or(0) as u64);
    if spin > 0 {
        let t = std::time::Instant::now();
        while (t.elapsed().as_nanos() as u64) < spin {
            std::hint::spin_loop();
        }
    }
    loop {
        if input.is_empty() {
            return true;
        }
        if input[0] == 0x80 {
            if input.len() < 24 {
                return true;
            }
            let opcode = input[1];
            let keylen = u16::from_be_bytes([input[2], input[3]]) as usize;
            let extlen = input[4] as usize;
            let body = u32::from_be_bytes([input[8], input[9], input[10], input[11]]) as usize;
            if input.len() < 24 + body {
                return true;
            }
            let opaque = [input[12], input[13], input[14], input[15]];
            let hdr = |out: &mut BytesMut, extras: usize, key: &[u8], val: usize| {
                out.extend_from_slice(&[0x81, opcode]);
                out.extend_from_slice(&(key.len() as u16).to_be_bytes());
                out.extend_from_slice(&[extras as u8, 0, 0, 0]);
                out.extend_from_slice(&((extras + key.len() + val) as u32).to_be_bytes());
                out.extend_from_slice(&opaque);
                out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
            };
            match opcode {
                // GET, GETQ: flags + value.
                0x00 | 0x09 => {
                    hdr(out, 4, &[], value.len());
                    out.extend_from_slice(&[0; 4]);
                    out.extend_from_slice(value);
                }
                // GETK, GETKQ: flags + key + value.
                0x0c | 0x0d => {
                    let key = &input[24 + extlen..24 + extlen + keylen];
                    hdr(out, 4, key, value.len());
                    out.extend_from_slice(&[0; 4]);
                    out.extend_from_slice(key);
                    out.extend_from_slice(value);
                }
                // Quiet writes: no reply.
                0x11..=0x14 => {}
                _ => hdr(out, 0, &[], 0),
            }
            input.advance(24 + body);
            continue;
        }
        let Some(nl) = memchr::memchr(b'\n', input) else {
            return input.len() <= 2048;
        };
        let line_end = if nl > 0 && input[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let line = &input[..line_end];
        if line.starts_with(b"get ") || line.starts_with(b"gets ") {
            for key in line[4..].split(|&b| b == b' ').filter(|k| !k.is_empty()) {
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(key);
                out.extend_from_slice(b" 0 ");
                out.extend_from_slice(vlen);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"END\r\n");
            input.advance(nl + 1);
        } else if line.starts_with(b"set ")
            || line.starts_with(b"add ")
            || line.starts_with(b"replace ")
        {
            let len: usize = line
                .split(|&b| b == b' ')
                .filter(|t| !t.is_empty())
                .nth(4)
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let noreply = line.ends_with(b"noreply");
            let total = nl + 1 + len + 2;
            if input.len() < total {
                input.reserve(total - input.len());
                return true;
            }
            if !noreply {
                out.extend_from_slice(b"STORED\r\n");
            }
            input.advance(total);
        } else if line == b"version" {
            out.extend_from_slice(b"VERSION 0.0.0-null\r\n");
            input.advance(nl + 1);
        } else if line == b"quit" {
            return false;
        } else {
            out.extend_from_slice(b"END\r\n");
            input.advance(nl + 1);
        }
    }
}

async fn conn(mut sock: TcpStream, value: std::sync::Arc<(Vec<u8>, Vec<u8>)>) {
    let _ = sock.set_nodelay(true);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        if input.capacity() - input.len() < 8 * 1024 {
            input.reserve(16 * 1024);
        }
        match sock.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let keep = process(&mut input, &mut out, &value.0, &value.1);
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if !keep {
            return;
        }
    }
}

fn main() {
    let o = parse();
    let value = std::sync::Arc::new((
        vec![b'x'; o.value_size],
        o.value_size.to_string().into_bytes(),
    ));
    if o.per_core {
        per_core(o, value);
        return;
    }
    if !o.tokio {
        epoll_loops(o, value);
        return;
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(o.threads.max(1)).enable_all();
    // Scheduler knobs for experiments (see docs/performance.md).
    if let Some(n) = env_u32("NULL_EVENT_INTERVAL") {
        b.event_interval(n);
    }
    if let Some(n) = env_u32("NULL_GLOBAL_QUEUE_INTERVAL") {
        b.global_queue_interval(n);
    }
    let rt = b.build().expect("runtime");
    rt.block_on(async move {
        let l = TcpListener::bind((o.addr.as_str(), o.port))
            .await
            .unwrap_or_else(|e| panic!("bind {}:{}: {e}", o.addr, o.port));
        loop {
            if let Ok((s, _)) = l.accept().await {
                tokio::spawn(conn(s, value.clone()));
            }
        }
    });
}

fn env_u32(name: &str) -> Option<u32> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `--per-core`: N threads, each a `current_thread` runtime; a blocking accept
/// loop hands sockets out round robin.
fn per_core(o: Opts, value: std::sync::Arc<(Vec<u8>, Vec<u8>)>) {
    let l = std::net::TcpListener::bind((o.addr.as_str(), o.port))
        .unwrap_or_else(|e| panic!("bind {}:{}: {e}", o.addr, o.port));
    let mut workers = Vec::new();
    for _ in 0..o.threads.max(1) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let value = value.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                while let Some(s) = rx.recv().await {
                    if s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if let Ok(s) = TcpStream::from_std(s) {
                        tokio::task::spawn_local(conn(s, value.clone()));
                    }
                }
            });
        });
        workers.push(tx);
    }
    for (next, s) in l.incoming().flatten().enumerate() {
        let _ = workers[next % workers.len()].send(s);
    }
}

/// The default: N threads, each one epoll loop (level-triggered) over the
/// connections the accepting thread handed it (round robin, through a queue and
/// an eventfd), memtwin's and memcached's structure. One read, process, one
/// write per ready connection; no task scheduler.
fn epoll_loops(o: Opts, value: std::sync::Arc<(Vec<u8>, Vec<u8>)>) {
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::sync::{Arc, Mutex};
    let l = std::net::TcpListener::bind((o.addr.as_str(), o.port))
        .unwrap_or_else(|e| panic!("bind {}:{}: {e}", o.addr, o.port));
    struct Worker {
        queue: Mutex<Vec<i32>>,
        efd: i32,
    }
    let mut workers = Vec::new();
    for _ in 0..o.threads.max(1) {
        // SAFETY: plain syscall.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(efd >= 0, "eventfd");
        let w = Arc::new(Worker {
            queue: Mutex::new(Vec::new()),
            efd,
        });
        let w2 = w.clone();
        let value = value.clone();
        let yield_after = if o.no_yield { usize::MAX } else { 4 };
        let yield_idle = !o.no_idle_yield;
        std::thread::spawn(move || {
            epoll_worker(&w2.queue, w2.efd, &value, yield_after, yield_idle)
        });
        workers.push(w);
    }
    for (next, s) in l.incoming().flatten().enumerate() {
        let _ = s.set_nodelay(true);
        let _ = s.set_nonblocking(true);
        let w = &workers[next % workers.len()];
        w.queue.lock().unwrap().push(s.into_raw_fd());
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(w.efd, &one as *const u64 as *const libc::c_void, 8) };
    }
    let _ = l.as_raw_fd();
}

fn epoll_worker(
    queue: &std::sync::Mutex<Vec<i32>>,
    efd: i32,
    value: &(Vec<u8>, Vec<u8>),
    yield_after: usize,
    yield_idle: bool,
) {
    use std::collections::HashMap;
    struct Conn {
        input: BytesMut,
        out: BytesMut,
    }
    // SAFETY: plain syscalls on fds this thread owns.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: u64::MAX,
    };
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev) };
    let mut conns: HashMap<i32, Conn> = HashMap::new();
    let mut pacing = memtwin::server::idle_yield::IdleYield::default();
    let mut served = false;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // memtwin's pacing: having served requests, poll before sleeping and,
        // if nothing is ready, yield once (while yields are not futile).
        let mut n = 0;
        let _ = pacing.wait(yield_idle && served, -1, |t| {
            n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, t) };
            Ok::<_, ()>(n > 0)
        });
        served = n > 0;
        if n.max(0) as usize >= yield_after {
            std::thread::yield_now();
        }
        for e in events.iter().take(n.max(0) as usize) {
            let tok = e.u64;
            if tok == u64::MAX {
                let mut buf = 0u64;
                unsafe { libc::read(efd, &mut buf as *mut u64 as *mut libc::c_void, 8) };
                let fds: Vec<i32> = std::mem::take(&mut *queue.lock().unwrap());
                for fd in fds {
                    let mut ev = libc::epoll_event {
                        events: libc::EPOLLIN as u32,
                        u64: fd as u64,
                    };
                    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
                    conns.insert(
                        fd,
                        Conn {
                            input: BytesMut::with_capacity(16 * 1024),
                            out: BytesMut::with_capacity(16 * 1024),
                        },
                    );
                }
                continue;
            }
            let fd = tok as i32;
            let Some(c) = conns.get_mut(&fd) else {
                continue;
            };
            if c.input.capacity() - c.input.len() < 8 * 1024 {
                c.input.reserve(16 * 1024);
            }
            let spare = c.input.spare_capacity_mut();
            let r = unsafe { libc::read(fd, spare.as_mut_ptr() as *mut libc::c_void, spare.len()) };
            let mut close = r <= 0;
            if r > 0 {
                unsafe { c.input.set_len(c.input.len() + r as usize) };
                let keep = process(&mut c.input, &mut c.out, &value.0, &value.1);
                let mut off = 0;
                while off < c.out.len() {
                    let w = unsafe {
                        libc::send(
                            fd,
                            c.out[off..].as_ptr() as *const libc::c_void,
                            c.out.len() - off,
                            libc::MSG_NOSIGNAL,
                        )
                    };
                    if w <= 0 {
                        // A benchmark server: a full socket buffer is waited out by spinning.
                        if w < 0
                            && std::io::Error::last_os_error().kind()
                                == std::io::ErrorKind::WouldBlock
                        {
                            std::thread::yield_now();
                            continue;
                        }
                        close = true;
                        break;
                    }
                    off += w as usize;
                }
                c.out.clear();
                close |= !keep;
            } else if r < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
            {
                close = false;
            }
            if close {
                conns.remove(&fd);
                unsafe { libc::close(fd) };
            }
        }
    }
}
