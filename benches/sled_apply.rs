//! What one persisted write costs in sled, against a plain append-only log:
//! `cargo bench --bench sled_apply`.
//!
//! The persistence goals (issue "Persistence at memory speed") need the write
//! path to cost well under a microsecond of CPU per 4 KiB set, because the
//! whole memory-only request costs about 6 µs here. This measures sled 0.34.7
//! the way the writer uses it (`apply_batch` of group-committed records, 64 MiB
//! cache, `LowSpace`, no background flush) over data sets smaller and larger
//! than its cache, and batch sizes from 64 to 65 536 records, next to the cost of
//! appending the same bytes to a file. Single-threaded, CPU time of the whole
//! process (sled's own threads included) per record; results go to stdout as a
//! Markdown table (quoted in docs/decisions.md).
//!
//! Knobs: MEMTWIN_BENCH_SLED_RECORDS [300000] records per 4 KiB row.

use std::io::Write;
use std::time::Instant;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// xorshift64: keys drawn uniformly, values that do not compress.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Row {
    engine: &'static str,
    value: usize,
    keys: u64,
    cache_mb: u64,
    batch: usize,
    records: u64,
}

fn value(size: usize) -> Vec<u8> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    (0..size).map(|_| r.next() as u8).collect()
}

fn run(row: &Row, dir: &std::path::Path) -> (f64, f64) {
    let mut rng = Rng(88_172_645_463_325_252);
    let mut v = value(row.value);
    let started = (Instant::now(), cpu_seconds());
    match row.engine {
        "sled" => {
            let db = sled::Config::new()
                .path(dir.join("sled"))
                .cache_capacity(row.cache_mb << 20)
                .mode(sled::Mode::LowSpace)
                .flush_every_ms(None)
                .open()
                .expect("open sled");
            let mut done = 0;
            while done < row.records {
                let mut b = sled::Batch::default();
                for _ in 0..row.batch {
                    let x = rng.next();
                    v[..8].copy_from_slice(&x.to_le_bytes());
                    b.insert(format!("ikey:{}", x % row.keys).as_bytes(), &v[..]);
                }
                db.apply_batch(b).expect("apply");
                done += row.batch as u64;
            }
            db.flush().expect("flush");
        }
        _ => {
            // The log: each batch framed into one buffer, one write, one fdatasync.
            let mut f = std::fs::File::create(dir.join("log")).expect("create log");
            let mut buf = Vec::with_capacity(row.batch * (row.value + 32));
            let mut done = 0;
            while done < row.records {
                buf.clear();
                for _ in 0..row.batch {
                    let x = rng.next();
                    v[..8].copy_from_slice(&x.to_le_bytes());
                    let key = format!("ikey:{}", x % row.keys);
                    buf.extend_from_slice(&((key.len() + v.len()) as u32).to_le_bytes());
                    buf.extend_from_slice(key.as_bytes());
                    buf.extend_from_slice(&v);
                }
                f.write_all(&buf).expect("append");
                f.sync_data().expect("fdatasync");
                done += row.batch as u64;
            }
        }
    }
    let wall = started.0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - started.1;
    (cpu * 1e6 / row.records as f64, row.records as f64 / wall)
}

fn main() {
    let n: u64 = std::env::var("MEMTWIN_BENCH_SLED_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let row = |engine, value, keys, cache_mb, batch, records| Row {
        engine,
        value,
        keys,
        cache_mb,
        batch,
        records,
    };
    let rows = [
        row("sled", 4096, 10_000, 64, 8192, n),
        row("sled", 4096, 100_000, 64, 64, n),
        row("sled", 4096, 100_000, 64, 1024, n),
        row("sled", 4096, 100_000, 64, 8192, n),
        row("sled", 4096, 100_000, 64, 65536, n),
        row("sled", 4096, 100_000, 1024, 8192, n),
        row("sled", 64, 100_000, 64, 8192, n * 3),
        row("sled", 64, 1_000_000, 64, 8192, n * 10),
        row("log", 4096, 100_000, 0, 64, n),
        row("log", 4096, 100_000, 0, 8192, n),
        row("log", 64, 1_000_000, 0, 8192, n * 10),
    ];
    // Each row in a fresh process: sled's threads and the allocator's state
    // from one row must not be charged to the next.
    if let Some(i) = std::env::var("MEMTWIN_BENCH_SLED_ROW")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let r = &rows[i];
        let tmp = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("tmp");
        let (us, rate) = run(r, tmp.path());
        println!(
            "| {} | {} B | {} | {} MiB | {} | {} | {us:.1} | {rate:.0} |",
            r.engine,
            r.value,
            r.keys,
            (r.keys * (r.value as u64 + 12)) >> 20,
            if r.engine == "sled" {
                format!("{} MiB", r.cache_mb)
            } else {
                "-".to_string()
            },
            r.batch
        );
        return;
    }
    println!("| engine | value | keys | data set | cache | batch | CPU µs/record | records/s |");
    println!("|---|---|---|---|---|---|---|---|");
    let me = std::env::current_exe().expect("own path");
    for i in 0..rows.len() {
        let out = std::process::Command::new(&me)
            .env("MEMTWIN_BENCH_SLED_ROW", i.to_string())
            .output()
            .expect("run a row");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
