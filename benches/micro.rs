//! Micro-benchmarks of memtwin's hot paths (no sockets).
//!
//! Quick by default (short warm-up and measurement); run with
//! `cargo bench --bench micro` or filter, e.g. `cargo bench --bench micro -- store`.
//! These measure the server's own work per request; the syscalls around it
//! (read, write, epoll) cost 5-8 µs per unpipelined request on the dev VMs and
//! are measured by the load benchmark instead (`benches/compare.py`).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use memtwin::clock::Clock;
use memtwin::config::Settings;
use memtwin::engine::{Engine, EngineConfig, StoreCmd, StoreMode};
use memtwin::mutation::MutationStream;
use memtwin::protocol::{binary, text};
use memtwin::session::text::TextSession;
use memtwin::session::{Flow, Shared};
use memtwin::stats::Stats;
use memtwin::store::StoreConfig;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 100_000;

fn engine() -> Arc<Engine> {
    Arc::new(Engine::new(
        EngineConfig {
            store: StoreConfig::standalone(1 << 30, true, true),
            item_size_max: 1 << 20,
        },
        Arc::new(Clock::fixed(1_800_000_000)),
        Arc::new(Stats::new()),
        Arc::new(MutationStream::new()),
    ))
}

fn key(i: usize) -> Vec<u8> {
    format!("key:{i:08}").into_bytes()
}

fn preloaded() -> (Arc<Engine>, Vec<Vec<u8>>) {
    let e = engine();
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let v = Bytes::from(vec![b'v'; 100]);
    for k in &keys {
        e.store_item(StoreCmd::new(StoreMode::Set, k, 0, 0, v.clone()));
    }
    (e, keys)
}

fn text_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("text_parse");
    let set = b"set key:00012345 0 0 100\r\n";
    let get = b"get key:00012345\r\n";
    let multi: Vec<u8> = {
        let mut s = b"get".to_vec();
        for i in 0..10 {
            s.extend_from_slice(format!(" key:{:08}", i * 977).as_bytes());
        }
        s.extend_from_slice(b"\r\n");
        s
    };
    let line = |buf: &[u8]| match text::frame(buf) {
        text::Frame::Line { end, .. } => end,
        _ => unreachable!(),
    };
    g.bench_function("set_line", |b| {
        b.iter(|| {
            let end = line(black_box(set));
            black_box(text::parse(&set[..end]).is_ok())
        })
    });
    g.bench_function("get_line", |b| {
        b.iter(|| {
            let end = line(black_box(get));
            black_box(text::parse(&get[..end]).is_ok())
        })
    });
    g.bench_function("multiget_10_line", |b| {
        b.iter(|| {
            let buf = black_box(&multi[..]);
            let end = line(buf);
            let Ok(text::Command::Get { keys, .. }) = text::parse(&buf[..end]) else {
                unreachable!()
            };
            let ok = text::check_keys(keys).is_ok();
            black_box((ok, text::Tokens::new(keys).count()))
        })
    });
    g.finish();
}

/// The table's hasher: std SipHash-1-3 vs foldhash (both randomly seeded), on a
/// session-id-sized key, in the same run so machine noise hits both alike.
fn hashing(c: &mut Criterion) {
    use std::hash::BuildHasher;
    let mut g = c.benchmark_group("hash");
    let sip = std::collections::hash_map::RandomState::new();
    let fold = foldhash::quality::RandomState::default();
    for key in [
        &b"key:00012345"[..],
        &b"session:3f9a0c1e5b7d4a2e8c6f0b1d9e7a5c3b"[..],
    ] {
        let n = key.len();
        g.bench_function(format!("siphash_{n}B"), |b| {
            b.iter(|| sip.hash_one(black_box(key)))
        });
        g.bench_function(format!("foldhash_{n}B"), |b| {
            b.iter(|| fold.hash_one(black_box(key)))
        });
    }
    g.finish();
}

fn binary_header(c: &mut Criterion) {
    let mut pkt = vec![0x80u8, 0x00, 0, 12, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 7];
    pkt.extend_from_slice(&[0; 8]);
    pkt.extend_from_slice(b"key:00012345");
    c.bench_function("binary_decode_header", |b| {
        b.iter(|| {
            let h = binary::decode_header(black_box(&pkt)).expect("header");
            black_box(binary::classify(&h).is_ok())
        })
    });
}

fn store_ops(c: &mut Criterion) {
    let (e, keys) = preloaded();
    let mut g = c.benchmark_group("store");
    let mut i = 0usize;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(e.get(&keys[i]).is_some())
        })
    });
    g.bench_function("get_miss", |b| {
        b.iter(|| black_box(e.get(black_box(b"key:nothere")).is_some()))
    });
    let v = vec![b'w'; 100];
    g.bench_function("set_existing_100B", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            // The server copies the value out of its read buffer: include that copy.
            let value = Bytes::copy_from_slice(&v);
            black_box(e.store_item(StoreCmd::new(StoreMode::Set, &keys[i], 0, 0, value)))
        })
    });
    // Two threads on one table: this thread measures, a second one hammers
    // the same key space with a 90/10 get/set mix.
    for mode in ["get_hit_contended", "set_existing_contended"] {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = {
            let (e, stop) = (e.clone(), stop.clone());
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut j = 1usize;
                let v = Bytes::from(vec![b'x'; 100]);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    j = (j + 104_729) % KEYS;
                    if j % 10 == 0 {
                        e.store_item(StoreCmd::new(StoreMode::Set, &keys[j], 0, 0, v.clone()));
                    } else {
                        black_box(e.get(&keys[j]));
                    }
                }
            })
        };
        g.bench_function(mode, |b| {
            b.iter(|| {
                i = (i + 7919) % KEYS;
                if mode.starts_with("get") {
                    black_box(e.get(&keys[i]).is_some());
                } else {
                    let value = Bytes::copy_from_slice(&v);
                    black_box(e.store_item(StoreCmd::new(StoreMode::Set, &keys[i], 0, 0, value)));
                }
            })
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        other.join().expect("contender");
    }
    g.finish();
}

fn reply_encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let value = vec![b'v'; 100];
    let mut out = BytesMut::with_capacity(64 * 1024);
    g.bench_function("text_value_100B", |b| {
        b.iter(|| {
            if out.len() > 60_000 {
                out.clear();
            }
            text::put_value(&mut out, b"key:00012345", 0, black_box(&value), None);
        })
    });
    g.bench_function("text_line_stored", |b| {
        b.iter(|| {
            if out.len() > 60_000 {
                out.clear();
            }
            text::put_line(&mut out, black_box(b"STORED"));
        })
    });
    let to = binary::ReplyTo {
        opcode: 0,
        opaque: 7,
    };
    g.bench_function("binary_get_response_100B", |b| {
        b.iter(|| {
            if out.len() > 60_000 {
                out.clear();
            }
            binary::put_response(
                &mut out,
                to,
                binary::Status::Success,
                42,
                &[0, 0, 0, 0],
                &[],
                black_box(&value),
            );
        })
    });
    g.finish();
}

/// Whole text session, no sockets: what one read of requests costs the server.
fn session(c: &mut Criterion) {
    let (e, _) = preloaded();
    let shared = Arc::new(Shared::new(e, Arc::new(Settings::default())));
    let mut g = c.benchmark_group("session_text");
    let mut gets = Vec::new();
    for i in 0..10 {
        gets.extend_from_slice(format!("get key:{:08}\r\n", i * 7919).as_bytes());
    }
    let mut set = b"set key:00000042 0 0 100\r\n".to_vec();
    set.extend_from_slice(&[b's'; 100]);
    set.extend_from_slice(b"\r\n");
    let mut multi = b"get".to_vec();
    for i in 0..10 {
        multi.extend_from_slice(format!(" key:{:08}", i * 7919).as_bytes());
    }
    multi.extend_from_slice(b"\r\n");
    for (name, req, n) in [
        ("get_pipelined_10", &gets, 10u64),
        ("set_100B", &set, 1),
        ("multiget_10", &multi, 1),
    ] {
        g.throughput(Throughput::Elements(n));
        let mut s = TextSession::new(shared.clone());
        let mut out = BytesMut::with_capacity(64 * 1024);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&req[..]),
                |input| {
                    out.clear();
                    let flow = s.process(input, &mut out);
                    debug_assert_eq!(flow, Flow::NeedInput);
                    black_box(out.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = quick();
    targets = text_parsing, hashing, binary_header, store_ops, reply_encoding, session
}
criterion_main!(benches);
