//! The periodic rewrite (compaction) reclaims disk space and memory without
//! losing or resurrecting anything, also when the daemon is killed while a
//! rewrite is copying or swapping.

mod common;

use common::{tempdir, verify_always, writer, Client, Daemon, Model, Rng};
use std::time::{Duration, Instant};

/// Rewrite after every sweep pass (once a second) when the data set is at
/// least 4 MiB: far more often than in production, to hit every phase. Passed
/// per daemon (not with set_var: the tests in this file run in parallel).
const EAGER: [(&str, &str); 4] = [
    ("MEMTWIN_PERSIST_SWEEP_SECS", "1"),
    ("MEMTWIN_PERSIST_COMPACT_MIN_MB", "4"),
    ("MEMTWIN_PERSIST_COMPACT_EVERY_SECS", "0"),
    ("MEMTWIN_PERSIST_COMPACT_RATIO", "1.0"),
];

fn stat_u64(c: &mut Client, name: &str) -> u64 {
    c.stat(name).parse().unwrap_or(0)
}

#[test]
fn rewrite_reclaims_space_and_keeps_everything() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let d = Daemon::start_env(port, &dir, &[], &EAGER);
    let mut c = d.client();
    let value = |round: usize, i: usize| format!("{round}:{i}:").repeat(100).into_bytes();
    // Session churn: 5 rewrites of 10k sessions, then half of them deleted.
    for round in 0..5 {
        for i in 0..10_000 {
            c.w_noreply(&format!("s{i}"), &value(round, i));
        }
        assert!(c.cmd("version").starts_with("VERSION"));
    }
    for i in (0..10_000).step_by(2) {
        assert_eq!(c.cmd(&format!("delete s{i}")), "DELETED");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while stat_u64(&mut c, "memtwin_persist_compactions") == 0 {
        assert!(
            Instant::now() < deadline,
            "no rewrite happened:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Wait for a rewrite that started after the churn ended.
    let first = stat_u64(&mut c, "memtwin_persist_compactions");
    while stat_u64(&mut c, "memtwin_persist_compactions") <= first {
        assert!(
            Instant::now() < deadline,
            "no second rewrite:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let on_disk = stat_u64(&mut c, "memtwin_persist_bytes_on_disk");
    let live: u64 = (1..10_000)
        .step_by(2)
        .map(|i| value(4, i).len() as u64 + 40)
        .sum();
    eprintln!(
        "after rewrite: {:.1} MiB on disk for {:.1} MiB live ({:.2}x)",
        on_disk as f64 / 1048576.0,
        live as f64 / 1048576.0,
        on_disk as f64 / live as f64
    );
    assert!(
        on_disk * 2 < live * 7,
        "rewrite did not reclaim space: {on_disk} vs {live}"
    );
    let check = |c: &mut Client| {
        for i in 0..10_000 {
            let got = c.get(&format!("s{i}"));
            if i % 2 == 0 {
                assert_eq!(got, None, "s{i} resurrected");
            } else {
                assert_eq!(got, Some(value(4, i)), "s{i}");
            }
        }
    };
    check(&mut c);
    drop(c);
    d.stop();
    let d = Daemon::start(port, &dir, &[]);
    check(&mut d.client());
    d.stop();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("sled.")),
        "leftovers: {names:?}"
    );
}

#[test]
fn kill9_during_rewrites_loses_nothing() {
    // Ratio 1: a rewrite starts after every sweep pass, so kills land while
    // copying, sealing and swapping.
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let args = ["--fsync", "always"];
    let mut rng = Rng::from_time();
    // Base load so the data set is above the 4 MiB minimum.
    {
        let d = Daemon::start_env(port, &dir, &args, &EAGER);
        let mut c = d.client();
        let big = vec![b'b'; 1000];
        for i in 0..6000 {
            c.w_noreply(&format!("base{i}"), &big);
        }
        assert!(c.cmd("version").starts_with("VERSION"));
        drop(c);
        d.stop();
    }
    let mut models = vec![Model::default(); 2];
    for cycle in 0..8 {
        let d = Daemon::start_env(port, &dir, &args, &EAGER);
        let mut c = d.client();
        for (t, m) in models.iter_mut().enumerate() {
            verify_always(&mut c, "cmp", t, m, cycle);
        }
        assert_eq!(
            c.stat("curr_items").parse::<usize>().map(|n| n >= 6000),
            Ok(true)
        );
        drop(c);
        let handles: Vec<_> = models
            .into_iter()
            .enumerate()
            .map(|(t, m)| {
                let seed = rng.next();
                std::thread::spawn(move || writer(port, "cmp", t, m, seed, true))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800 + rng.below(2500)));
        d.kill9();
        models = handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect();
    }
    let d = Daemon::start_env(port, &dir, &args, &EAGER);
    // The log file collects every run's output.
    let rewrites_seen = d.log_text().matches("rewriting the data set").count();
    let swaps_seen = d.log_text().matches("rewrite done").count();
    let mut c = d.client();
    for (t, m) in models.iter_mut().enumerate() {
        verify_always(&mut c, "cmp", t, m, 8);
    }
    let big = vec![b'b'; 1000];
    for i in (0..6000).step_by(97) {
        assert_eq!(c.get(&format!("base{i}")), Some(big.clone()), "base{i}");
    }
    drop(c);
    d.stop();
    eprintln!("rewrites started: {rewrites_seen}, completed: {swaps_seen}");
    assert!(
        rewrites_seen > 0,
        "no rewrite ran; the test did not test anything"
    );
}
