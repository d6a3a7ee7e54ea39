//! Persistence benchmarks: `cargo bench --bench persistence`.
//!
//! Spawns the built `memtwin` and drives it over TCP from the same machine,
//! so every number is relative to the memory-only run of the same invocation.
//! Results go to stdout as a Markdown table (copied into docs/performance.md).
//!
//! 1. Throughput per `--fsync` mode vs memory-only: N connections, each doing
//!    request/response (no pipelining, like a session client): `set` only,
//!    and a 50/50 `get`/`set` session mix; 1 KiB values, 100k keys. Also p50/p99
//!    `set` latency and peak RSS.
//! 2. Disk amplification after session churn, without and with the rewrite.
//! 3. Warm restart of 1 M items: time until the daemon answers, RSS.
//!
//! Knobs (environment): MEMTWIN_BENCH_SECS [5] per throughput run,
//! MEMTWIN_BENCH_CONNS [8], MEMTWIN_BENCH_ROUNDS [3], MEMTWIN_BENCH_RESTART_ITEMS [1000000],
//! MEMTWIN_BENCH_ONLY [throughput,churn,restart].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_memtwin");
const PORT: u16 = 21436;
const KEYS: u64 = 100_000;
const VALUE: usize = 1024;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(args: &[&str], env: &[(&str, &str)]) -> (Daemon, Duration) {
        let started = Instant::now();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "-p",
            &PORT.to_string(),
            "-U",
            "0",
            "-l",
            "127.0.0.1",
            "-t",
            "2",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn memtwin");
        let d = Daemon { child };
        loop {
            if let Ok(mut c) = Conn::connect() {
                if c.cmd("version").starts_with("VERSION") {
                    return (d, started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn connect() -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", PORT))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read");
        l
    }
    fn cmd(&mut self, c: &str) -> String {
        self.w
            .write_all(format!("{c}\r\n").as_bytes())
            .expect("write");
        self.line()
    }
    fn set(&mut self, key: &str, v: &[u8]) {
        let mut m = format!("set {key} 0 0 {}\r\n", v.len()).into_bytes();
        m.extend_from_slice(v);
        m.extend_from_slice(b"\r\n");
        self.w.write_all(&m).expect("write");
        let l = self.line();
        assert!(l.starts_with("STORED"), "{l}");
    }
    fn get(&mut self, key: &str) {
        self.w
            .write_all(format!("get {key}\r\n").as_bytes())
            .expect("write");
        let l = self.line();
        if l.starts_with("VALUE") {
            let len: usize = l
                .split_whitespace()
                .nth(3)
                .and_then(|n| n.parse().ok())
                .expect("len");
            let mut v = vec![0u8; len + 2];
            self.r.read_exact(&mut v).expect("value");
            let end = self.line();
            assert!(end.starts_with("END"));
        }
    }
    /// Pipelined noreply sets (loading), then a round trip.
    fn load(&mut self, prefix: &str, n: u64, size: usize) {
        let v = vec![b'v'; size];
        let mut buf = Vec::with_capacity(1 << 20);
        for i in 0..n {
            buf.extend_from_slice(
                format!("set {prefix}{i:016x} 0 0 {size} noreply\r\n").as_bytes(),
            );
            buf.extend_from_slice(&v);
            buf.extend_from_slice(b"\r\n");
            if buf.len() > (1 << 20) {
                self.w.write_all(&buf).expect("write");
                buf.clear();
                self.cmd("version");
            }
        }
        self.w.write_all(&buf).expect("write");
        self.cmd("version");
    }
    fn stats(&mut self) -> HashMap<String, String> {
        self.w.write_all(b"stats\r\n").expect("write");
        let mut m = HashMap::new();
        loop {
            let l = self.line();
            if l.starts_with("END") {
                return m;
            }
            let p: Vec<&str> = l.trim_end().splitn(3, ' ').collect();
            if p.len() == 3 {
                m.insert(p[1].to_string(), p[2].to_string());
            }
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Run {
    ops_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    hwm_mb: u64,
}

fn throughput(args: &[&str], get_pct: u64, secs: u64, conns: usize, dir: Option<&Path>) -> Run {
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
    let (d, _) = Daemon::start(args, &[]);
    Conn::connect().expect("connect").load("k", KEYS, VALUE);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..conns)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Conn::connect().expect("connect");
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let v = vec![b'w'; VALUE];
                let (mut ops, mut lat) = (0u64, Vec::with_capacity(1 << 16));
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{:016x}", rng.next() % KEYS);
                    if rng.next() % 100 < get_pct {
                        c.get(&key);
                    } else {
                        let t0 = Instant::now();
                        c.set(&key, &v);
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    ops += 1;
                }
                (ops, lat)
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut ops = 0;
    let mut lat = Vec::new();
    for h in handles {
        let (o, l) = h.join().expect("client");
        ops += o;
        lat.extend(l);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let run = Run {
        ops_per_s: ops as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        hwm_mb: d.status_kb("VmHWM") / 1024,
    };
    d.stop();
    run
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                n += dir_bytes(&path);
            } else if let Ok(m) = e.metadata() {
                n += m.len();
            }
        }
    }
    n
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let secs = env_or("MEMTWIN_BENCH_SECS", 5u64);
    let conns = env_or("MEMTWIN_BENCH_CONNS", 8usize);
    let restart_items = env_or("MEMTWIN_BENCH_RESTART_ITEMS", 1_000_000u64);
    let only =
        std::env::var("MEMTWIN_BENCH_ONLY").unwrap_or_else(|_| "throughput,churn,restart".into());
    let tmp = std::env::temp_dir().join(format!("memtwin-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let data = tmp.join("data");
    let data_s: String = data.to_string_lossy().into_owned();
    println!(
        "memtwin persistence bench: {secs} s per run, {conns} connections, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    if only.contains("throughput") {
        let modes: Vec<(&str, Vec<&str>)> = vec![
            ("memory only", vec!["-m", "1024"]),
            (
                "fsync=no",
                vec!["-m", "1024", "--data-dir", &data_s, "--fsync", "no"],
            ),
            (
                "fsync=everysec",
                vec!["-m", "1024", "--data-dir", &data_s, "--fsync", "everysec"],
            ),
            (
                "fsync=always",
                vec!["-m", "1024", "--data-dir", &data_s, "--fsync", "always"],
            ),
        ];
        let rounds = env_or("MEMTWIN_BENCH_ROUNDS", 3usize);
        for (name, get_pct) in [("set only", 0u64), ("50% get / 50% set", 50)] {
            // Modes alternate within each round, so background load on a shared
            // machine hits all of them alike; medians over the rounds.
            let mut runs: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
            for _ in 0..rounds {
                for (i, (_, args)) in modes.iter().enumerate() {
                    let dir = args.contains(&"--data-dir").then_some(data.as_path());
                    runs[i].push(throughput(args, get_pct, secs, conns, dir));
                }
            }
            println!("\n### Throughput, {name} (1 KiB values, {KEYS} keys, median of {rounds})\n");
            println!(
                "| mode | ops/s | vs memory | set p50 | set p99 | peak RSS | ops/s per round |"
            );
            println!("|---|---:|---:|---:|---:|---:|---|");
            let median = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            let mut base = 0.0;
            for (i, (mode, _)) in modes.iter().enumerate() {
                let r = &runs[i];
                let ops = median(&mut r.iter().map(|x| x.ops_per_s).collect());
                let p50 = median(&mut r.iter().map(|x| x.p50_us as f64).collect());
                let p99 = median(&mut r.iter().map(|x| x.p99_us as f64).collect());
                let hwm = r.iter().map(|x| x.hwm_mb).max().unwrap_or(0);
                if i == 0 {
                    base = ops;
                }
                let each: Vec<String> = r.iter().map(|x| format!("{:.0}", x.ops_per_s)).collect();
                println!(
                    "| {mode} | {ops:.0} | {:.2} | {p50:.0} µs | {p99:.0} µs | {hwm} MiB | {} |",
                    ops / base,
                    each.join(", ")
                );
            }
        }
    }

    if only.contains("churn") {
        println!("\n### Disk amplification after session churn\n");
        println!("100k sessions x 1 KiB written 5 times, then half deleted (live ≈ 52 MiB of records).\n");
        println!("| rewrite | on disk after churn | 20 s later | live records | ratio | RSS |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (label, ratio) in [("off", "1000"), ("on (default 3x trigger)", "3")] {
            let _ = std::fs::remove_dir_all(&data);
            let env = [
                ("MEMTWIN_PERSIST_SWEEP_SECS", "3"),
                ("MEMTWIN_PERSIST_COMPACT_MIN_MB", "16"),
                ("MEMTWIN_PERSIST_COMPACT_RATIO", ratio),
            ];
            let (d, _) = Daemon::start(&["-m", "1024", "--data-dir", &data_s], &env);
            let mut c = Conn::connect().expect("connect");
            for _ in 0..5 {
                c.load("sess:", KEYS, VALUE);
            }
            for i in (0..KEYS).step_by(2) {
                c.cmd(&format!("delete sess:{i:016x}"));
            }
            let after = dir_bytes(&data);
            std::thread::sleep(Duration::from_secs(20));
            let later = dir_bytes(&data);
            let live: u64 = c
                .stats()
                .get("memtwin_persist_live_bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            println!(
                "| {label} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.1}x | {} MiB |",
                after as f64 / 1048576.0,
                later as f64 / 1048576.0,
                live as f64 / 1048576.0,
                later as f64 / live.max(1) as f64,
                d.status_kb("VmRSS") / 1024
            );
            d.stop();
        }
    }

    if only.contains("restart") {
        println!("\n### Warm restart, {restart_items} items (200-byte values, 40-byte keys)\n");
        let _ = std::fs::remove_dir_all(&data);
        let (d, _) = Daemon::start(&["-m", "4096", "--data-dir", &data_s], &[]);
        let t0 = Instant::now();
        Conn::connect()
            .expect("connect")
            .load("session:0123456789abcdef", restart_items, 200);
        let fill = t0.elapsed();
        let fill_hwm = d.status_kb("VmHWM") / 1024;
        d.stop();
        let disk = dir_bytes(&data);
        let (d, ready) = Daemon::start(&["-m", "4096", "--data-dir", &data_s], &[]);
        let items = Conn::connect()
            .expect("connect")
            .stats()
            .get("curr_items")
            .cloned()
            .unwrap_or_default();
        let rss = d.status_kb("VmRSS") / 1024;
        d.stop();
        let (d, _) = Daemon::start(&["-m", "4096"], &[]);
        Conn::connect()
            .expect("connect")
            .load("session:0123456789abcdef", restart_items, 200);
        let mem_rss = d.status_kb("VmRSS") / 1024;
        d.stop();
        println!("| measure | value |");
        println!("|---|---:|");
        println!(
            "| fill (pipelined noreply sets, everysec) | {:.1} s |",
            fill.as_secs_f64()
        );
        println!("| peak RSS while filling | {fill_hwm} MiB |");
        println!("| data directory | {:.0} MiB |", disk as f64 / 1048576.0);
        println!(
            "| restart: spawn to first reply | {:.2} s |",
            ready.as_secs_f64()
        );
        println!("| items after restart | {items} |");
        println!("| RSS after warm restart | {rss} MiB |");
        println!("| RSS memory-only, same items | {mem_rss} MiB |");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
