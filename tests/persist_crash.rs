//! Crash tests: writers under load, `kill -9` of the daemon at random moments,
//! restart, verify.
//!
//! * `fsync=always`: every acknowledged write (set or delete) is present with
//!   its latest value after every crash; only the one request per connection
//!   that was in flight at the kill may have either outcome. 20 cycles.
//! * `fsync=everysec`: what survives is a consistent earlier state, and no
//!   write acknowledged more than LOSS_BOUND before the kill is lost.
//!
//! Bounded in time: about 20-40 s for both on a 2-core machine.

mod common;

use common::{tempdir, verify_always, writer, Client, Daemon, Model, Rng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: usize = 4;

/// The two tests run one after the other: the `always` test's fsync storm on the
/// same disk made one `everysec` sync take ~1.9 s in CI, and a loss window
/// measures this daemon's sync time, not a neighbour's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serialized() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}
const KEYS: usize = common::MODEL_KEYS;

fn run_cycle(
    port: u16,
    models: Vec<Model>,
    rng: &mut Rng,
    min_ms: u64,
    max_ms: u64,
    deletes: bool,
    d: Daemon,
) -> (Vec<Model>, Instant) {
    let handles: Vec<_> = models
        .into_iter()
        .enumerate()
        .map(|(t, m)| {
            let seed = rng.next();
            std::thread::spawn(move || writer(port, "crash", t, m, seed, deletes))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(min_ms + rng.below(max_ms - min_ms)));
    let killed_at = Instant::now();
    d.kill9();
    let models = handles
        .into_iter()
        .map(|h| h.join().expect("writer"))
        .collect();
    (models, killed_at)
}

#[test]
fn fsync_always_loses_no_acknowledged_write_across_kill9() {
    let _one = serialized();
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let args = ["--fsync", "always"];
    let mut rng = Rng::from_time();
    let mut models = vec![Model::default(); WRITERS];
    let cycles = 20;
    let mut total_ops = 0;
    for cycle in 0..cycles {
        let d = Daemon::start(port, &dir, &args);
        let mut c = d.client();
        for (t, m) in models.iter_mut().enumerate() {
            verify_always(&mut c, "crash", t, m, cycle);
        }
        drop(c);
        let before: u64 = models.iter().map(|m| m.ops).sum();
        let (m, _) = run_cycle(port, models, &mut rng, 100, 600, true, d);
        models = m;
        total_ops += models.iter().map(|m| m.ops).sum::<u64>() - before;
    }
    let d = Daemon::start(port, &dir, &args);
    let mut c = d.client();
    for (t, m) in models.iter_mut().enumerate() {
        verify_always(&mut c, "crash", t, m, cycles);
    }
    drop(c);
    d.stop();
    eprintln!(
        "fsync=always: {cycles} kill -9 cycles, {total_ops} writes, nothing acknowledged lost"
    );
    assert!(total_ops > 200, "the writers made progress ({total_ops})");
}

/// everysec: values are `<t>-<counter>-...`; counters grow per writer.
fn counter_of(v: &str) -> u64 {
    v.split('-')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("counter")
}

/// The largest allowed loss window for fsync=everysec: the 1 s sync interval
/// plus the sync itself and scheduling slack on a loaded 2-core CI machine.
const LOSS_BOUND: Duration = Duration::from_millis(2500);

#[test]
fn fsync_everysec_loss_is_bounded_across_kill9() {
    let _one = serialized();
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let mut rng = Rng::from_time();
    let mut worst = Duration::ZERO;
    for cycle in 0..5 {
        // Fresh keys per cycle: each writer records when every write was acknowledged.
        let d = Daemon::start(port, &dir, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..WRITERS)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || everysec_writer(port, t, cycle, &stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500 + rng.below(1500)));
        let killed_at = Instant::now();
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        let logs: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect();

        let d = Daemon::start(port, &dir, &[]);
        let mut c = d.client();
        for (t, log) in logs.iter().enumerate() {
            let keys: Vec<String> = (0..KEYS).map(|i| format!("es{cycle}:{t}:{i}")).collect();
            let actual = c.try_gets_many(&keys).expect("gets");
            for (i, k) in keys.iter().enumerate() {
                let got = actual
                    .get(k)
                    .map(|v| counter_of(std::str::from_utf8(&v.1).expect("utf8")));
                let writes = &log[i];
                // Nothing that was never written (or in flight) may appear.
                if let Some(g) = got {
                    assert!(
                        writes.iter().any(|(c, _)| *c == g),
                        "{k}: value {g} was never written"
                    );
                }
                // The first acknowledged write not reflected bounds the loss.
                let lost = writes
                    .iter()
                    .find(|(c, acked)| acked.is_some() && got.is_none_or(|g| *c > g));
                if let Some((_, Some(at))) = lost {
                    let window = killed_at.saturating_duration_since(*at);
                    worst = worst.max(window);
                    assert!(
                        window <= LOSS_BOUND,
                        "{k}: lost a write acknowledged {window:?} before the crash"
                    );
                }
            }
        }
        drop(c);
        d.stop();
    }
    eprintln!("fsync=everysec: worst loss window over 5 kill -9 cycles: {worst:?}");
}

/// Per key: (counter, ack time) of every write, in order (None = in flight).
type WriteLog = Vec<Vec<(u64, Option<Instant>)>>;

fn everysec_writer(port: u16, t: usize, cycle: usize, stop: &AtomicBool) -> WriteLog {
    let mut log: WriteLog = vec![Vec::new(); KEYS];
    let Ok(mut c) = Client::try_connect(port) else {
        return log;
    };
    let mut rng = Rng::new((t as u64 + 1) * 7919 + cycle as u64);
    let mut counter = 0u64;
    while !stop.load(Ordering::SeqCst) {
        counter += 1;
        let i = rng.below(KEYS as u64) as usize;
        let v = format!("{t}-{counter}-{}", "y".repeat(200));
        log[i].push((counter, None));
        match c.try_store("set", &format!("es{cycle}:{t}:{i}"), 0, 0, v.as_bytes()) {
            Ok(r) if r == "STORED" => {
                if let Some(last) = log[i].last_mut() {
                    last.1 = Some(Instant::now());
                }
            }
            Ok(r) => panic!("unexpected reply {r:?}"),
            Err(_) => break,
        }
    }
    log
}
