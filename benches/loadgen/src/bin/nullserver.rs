//! memtwin-nullserver: the floor of loopback + syscalls for a tokio server.
//!
//! Speaks just enough of the memcached text and binary protocols for the load
//! generator: every `get` is a hit with a fixed value (`--value-size` bytes),
//! every `set` is `STORED`, nothing is hashed or stored. It is built exactly
//! like memtwin's socket loop (tokio multi-thread runtime with `-t` workers,
//! `read_buf` into a `BytesMut`, all replies of one read in one write), so
//! `memtwin - null` is the cost of memtwin's own work per request.
//!
//! Flags: `-p PORT`, `-l ADDR`, `-t THREADS`, `--value-size N`; memcached's
//! other flags (`-m`, `-c`, `-U`, `-u`, ...) are accepted and ignored.

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
}

fn parse() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1".into(),
        port: 11211,
        threads: 4,
        value_size: 100,
        per_core: false,
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
