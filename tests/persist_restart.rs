//! Restarts keep what a session store promises: values, flags, CAS, absolute
//! TTLs, deletes and flushes (immediate and delayed); a data set larger than
//! `-m` stays fully readable; the data directory is locked and a damaged one
//! is refused, never wiped.

mod common;

use common::{run_expect_failure, tempdir, Daemon};
use std::time::{Duration, Instant};

#[test]
fn values_flags_cas_and_deletes_survive_restart_and_crash() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let d = Daemon::start(port, &dir, &["--fsync", "always"]);
    let mut c = d.client();
    assert_eq!(c.set("sess:a", 42, 0, b"alpha"), "STORED");
    assert_eq!(c.set("sess:b", 7, 0, b"beta"), "STORED");
    assert_eq!(c.set("sess:gone", 1, 0, b"x"), "STORED");
    assert_eq!(c.cmd("delete sess:gone"), "DELETED");
    assert_eq!(c.store("append", "sess:b", b"+more"), "STORED");
    assert_eq!(c.set("n", 0, 0, b"10"), "STORED");
    assert_eq!(c.cmd("incr n 5"), "15");
    let a = c.gets("sess:a").expect("a");
    let b = c.gets("sess:b").expect("b");
    let n = c.gets("n").expect("n");
    drop(c);
    d.stop();

    let d = Daemon::start(port, &dir, &["--fsync", "always"]);
    let mut c = d.client();
    assert_eq!(
        c.gets("sess:a"),
        Some(a.clone()),
        "value, flags and CAS kept"
    );
    assert_eq!(c.gets("sess:b"), Some(b.clone()));
    assert_eq!(c.gets("n"), Some(n));
    assert_eq!(c.gets("sess:gone"), None, "a delete stays a delete");
    // CAS keeps working across the restart, and new CAS values are higher.
    assert_eq!(c.cas("sess:a", b"alpha2", a.2), "STORED");
    let a2 = c.gets("sess:a").expect("a2");
    assert!(
        a2.2 > b.2.max(a.2),
        "CAS counter continues: {} vs {}",
        a2.2,
        b.2
    );
    assert_eq!(c.cas("sess:b", b"stale", a.2), "EXISTS");
    drop(c);
    // A crash right after acknowledged writes (fsync=always) loses nothing.
    d.kill9();

    let d = Daemon::start(port, &dir, &["--fsync", "always"]);
    let mut c = d.client();
    assert_eq!(c.gets("sess:a"), Some(a2));
    assert_eq!(c.gets("sess:gone"), None);
    let st = c.stats();
    assert_eq!(
        st.get("memtwin_persist_enabled").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        st.get("memtwin_persist_fsync").map(String::as_str),
        Some("always")
    );
    assert_eq!(st.get("curr_items").map(String::as_str), Some("3"));
    drop(c);
    d.stop();
}

#[test]
fn ttl_is_absolute_across_restart() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let d = Daemon::start(port, &dir, &[]);
    let mut c = d.client();
    let t0 = Instant::now();
    // Expiry has a granularity of one second: "10" ends 9-10 s from now.
    assert_eq!(c.set("short", 0, 10, b"v"), "STORED");
    assert_eq!(c.set("long", 0, 3600, b"v"), "STORED");
    let exp_long = c.cmd("mg long t");
    drop(c);
    std::thread::sleep(Duration::from_millis(2000));
    d.stop();

    // At least 2 s left even after a slow restart on a loaded machine: still
    // there after the restart, gone on time.
    let d = Daemon::start(port, &dir, &[]);
    let mut c = d.client();
    assert!(
        t0.elapsed() < Duration::from_millis(7000),
        "restart too slow for this test"
    );
    assert_eq!(
        c.get("short").as_deref(),
        Some(&b"v"[..]),
        "not expired yet: still there"
    );
    assert_eq!(c.get("long").as_deref(), Some(&b"v"[..]));
    if exp_long.starts_with("HD") {
        // Meta get available: the remaining TTL did not restart from 3600.
        let after = c.cmd("mg long t");
        assert_ne!(after, "HD t3600", "TTL must be absolute, not reset");
    }
    while t0.elapsed() < Duration::from_millis(11300) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.get("short"), None, "expired on time after the restart");
    assert!(c.get("long").is_some());
    drop(c);
    d.stop();

    // And it stays expired (purged, not resurrected) after another restart.
    let d = Daemon::start(port, &dir, &[]);
    let mut c = d.client();
    assert_eq!(c.get("short"), None);
    assert!(c.get("long").is_some());
    drop(c);
    d.stop();
}

#[test]
fn flush_all_and_delayed_flush_survive_restart() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    // fsync=always: the last step crashes the daemon right after a write.
    let args = ["--fsync", "always"];
    let d = Daemon::start(port, &dir, &args);
    let mut c = d.client();
    assert_eq!(c.set("old", 0, 0, b"1"), "STORED");
    assert_eq!(c.cmd("flush_all"), "OK");
    assert_eq!(c.set("new", 0, 0, b"2"), "STORED");
    drop(c);
    d.stop();

    let d = Daemon::start(port, &dir, &args);
    let mut c = d.client();
    assert_eq!(c.get("old"), None, "flushed before the restart");
    assert_eq!(
        c.get("new").as_deref(),
        Some(&b"2"[..]),
        "stored after the flush"
    );
    // Delayed flush: items stored before the deadline vanish at the deadline,
    // even across a restart in between.
    assert_eq!(c.set("before", 0, 0, b"3"), "STORED");
    let t0 = Instant::now();
    assert_eq!(c.cmd("flush_all 8"), "OK");
    drop(c);
    d.stop();

    let d = Daemon::start(port, &dir, &args);
    let mut c = d.client();
    // The deadline is 7-8 s away (one-second granularity).
    assert!(
        t0.elapsed() < Duration::from_millis(6000),
        "restart too slow for this test"
    );
    assert_eq!(
        c.get("before").as_deref(),
        Some(&b"3"[..]),
        "deadline not reached yet"
    );
    while t0.elapsed() < Duration::from_millis(9200) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.get("before"),
        None,
        "delayed flush applied after the restart"
    );
    assert_eq!(
        c.get("new"),
        None,
        "stored before the delayed flush deadline"
    );
    assert_eq!(c.set("after", 0, 0, b"4"), "STORED");
    drop(c);
    d.kill9();

    let d = Daemon::start(port, &dir, &args);
    let mut c = d.client();
    assert_eq!(c.get("before"), None);
    assert_eq!(c.get("after").as_deref(), Some(&b"4"[..]));
    drop(c);
    d.stop();
}

fn value_for(i: usize) -> Vec<u8> {
    format!("{i:06}:")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(2000)
        .collect()
}

#[test]
fn data_set_larger_than_memory_is_fully_readable() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let n = 3000; // ~6 MB of values with -m 2
    let args = ["-m", "2", "--fsync", "no"];
    let d = Daemon::start(port, &dir, &args);
    let mut c = d.client();
    for i in 0..n {
        assert_eq!(
            c.set(&format!("s{i}"), i as u32, 0, &value_for(i)),
            "STORED"
        );
    }
    let st = c.stats();
    let evictions: u64 = st["evictions"].parse().expect("n");
    assert!(
        evictions > 1000,
        "RAM is smaller than the data set ({evictions} evictions)"
    );
    assert_eq!(st["memtwin_persist_ram_complete"], "0");
    for i in 0..n {
        let v = c
            .gets(&format!("s{i}"))
            .unwrap_or_else(|| panic!("s{i} lost"));
        assert_eq!((v.0, v.1), (i as u32, value_for(i)), "s{i}");
    }
    let reads: u64 = c.stat("memtwin_persist_disk_reads").parse().expect("n");
    assert!(reads > 1000, "read through from disk ({reads})");

    // Commands on items that are only on disk behave as if they were in RAM.
    for i in 0..50 {
        c.set(&format!("filler{i}"), 0, 0, &value_for(i));
    }
    assert_eq!(
        c.store("add", "s1", b"x"),
        "NOT_STORED",
        "add sees the disk item"
    );
    assert_eq!(c.store("append", "s2", b"!"), "STORED");
    assert_eq!(c.cmd("touch s3 3600"), "TOUCHED");
    assert_eq!(c.cmd("delete s4"), "DELETED");
    let s5 = c.gets("s5").expect("s5");
    for i in 0..50 {
        c.set(&format!("filler2-{i}"), 0, 0, &value_for(i));
    }
    assert_eq!(c.cas("s5", b"cas-ok", s5.2), "STORED");
    c.set("num", 0, 0, b"41");
    for i in 0..50 {
        c.set(&format!("filler3-{i}"), 0, 0, &value_for(i));
    }
    assert_eq!(c.cmd("incr num 1"), "42");
    assert_eq!(c.get("s4"), None, "a delete of a disk-only item sticks");
    drop(c);
    d.stop();

    // Restart with the same small -m: everything still readable.
    let d = Daemon::start(port, &dir, &args);
    assert!(d.log_text().contains("on disk only"), "{}", d.log_text());
    let mut c = d.client();
    for i in (0..n).filter(|i| ![2, 4, 5].contains(i)) {
        let v = c
            .gets(&format!("s{i}"))
            .unwrap_or_else(|| panic!("s{i} lost after restart"));
        assert_eq!(v.1, value_for(i), "s{i}");
    }
    let mut s2 = value_for(2);
    s2.push(b'!');
    assert_eq!(c.get("s2"), Some(s2));
    assert_eq!(c.get("s4"), None);
    assert_eq!(c.get("s5").as_deref(), Some(&b"cas-ok"[..]));
    assert_eq!(c.get("num").as_deref(), Some(&b"42"[..]));
    drop(c);
    d.stop();
}

#[test]
fn deletes_are_never_resurrected_by_read_through() {
    // Tiny RAM: every key is evicted and read back constantly, while keys are
    // deleted and rewritten. A delete must never be undone by an older disk copy.
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let d = Daemon::start(
        port,
        &dir,
        &["-m", "1", "-I", "512k", "--fsync", "everysec"],
    );
    let mut c = d.client();
    let big = vec![b'z'; 4000];
    for round in 0..4 {
        for i in 0..400 {
            let k = format!("k{i}");
            assert_eq!(c.set(&k, round, 0, &big), "STORED");
            if i % 3 == 0 {
                assert_eq!(c.cmd(&format!("delete {k}")), "DELETED");
                assert_eq!(c.get(&k), None, "{k} resurrected right after its delete");
            }
        }
        for i in 0..400 {
            let k = format!("k{i}");
            let got = c.gets(&k);
            if i % 3 == 0 {
                assert_eq!(got, None, "{k} resurrected (round {round})");
            } else {
                assert_eq!(got.map(|v| v.0), Some(round), "{k} has an old version");
            }
        }
    }
    drop(c);
    d.stop();
}

#[test]
fn second_daemon_on_the_same_directory_refuses() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let d = Daemon::start(common::free_port(), &dir, &[]);
    let log = run_expect_failure(common::free_port(), &dir, &[]);
    assert!(
        log.contains("is in use by another memtwin process")
            && log.contains(&*dir.to_string_lossy()),
        "unclear refusal:\n{log}"
    );
    // The first daemon is unaffected.
    let mut c = d.client();
    assert_eq!(c.set("k", 0, 0, b"v"), "STORED");
    drop(c);
    d.stop();
}

#[test]
fn damaged_or_unusable_directories_are_refused_not_wiped() {
    let tmp = tempdir();
    let port = common::free_port();

    // A regular file where the directory should be.
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let log = run_expect_failure(port, &file, &[]);
    assert!(log.contains("cannot use data directory"), "{log}");
    assert!(log.contains(&*file.to_string_lossy()), "{log}");

    // A data set whose sled configuration is damaged.
    let dir = tmp.path().join("data");
    let d = Daemon::start(port, &dir, &[]);
    let mut c = d.client();
    assert_eq!(c.set("precious", 0, 0, b"session"), "STORED");
    drop(c);
    d.stop();
    let conf = dir.join("sled").join("conf");
    std::fs::write(&conf, b"segment_size: banana\n").expect("corrupt conf");
    let before = std::fs::metadata(dir.join("sled").join("db"))
        .expect("db")
        .len();
    let log = run_expect_failure(port, &dir, &[]);
    assert!(
        log.contains(&*dir.to_string_lossy()) && log.contains("move the directory aside"),
        "refusal must name the directory and the way out:\n{log}"
    );
    let after = std::fs::metadata(dir.join("sled").join("db"))
        .expect("db kept")
        .len();
    assert_eq!(before, after, "the damaged data set is left untouched");

    // Damage in the middle of sled's log: sled alone would silently recover a
    // shortened data set; the durable-seq checkpoint turns that into a refusal.
    let dir = tmp.path().join("data2");
    let d = Daemon::start(port, &dir, &[]);
    let mut c = d.client();
    let v = vec![b'v'; 200];
    for i in 0..20_000 {
        c.w_noreply(&format!("k{i}"), &v);
    }
    assert!(c.cmd("version").starts_with("VERSION"));
    drop(c);
    d.stop();
    let db = dir.join("sled").join("db");
    let len = std::fs::metadata(&db).expect("db").len();
    let saved = std::fs::read(&db).expect("read db");
    let mut refused_or_intact = 0;
    let positions = [10u64, 25, 40, 50, 60, 75, 85, 90, 97];
    for pct in positions {
        let mut damaged = saved.clone();
        let at = (len * pct / 100) as usize;
        damaged[at..at + 4096].fill(0xAA);
        std::fs::write(&db, &damaged).expect("damage");
        let args: Vec<String> = Vec::new();
        let mut d = Daemon::spawn(port, &dir, &args);
        match common::wait_timeout(&mut d.child, Duration::from_secs(3)) {
            Some(status) => {
                assert!(!status.success());
                let log = d.log_text();
                assert!(log.contains("move the directory aside"), "{log}");
            }
            None => {
                // It started: then it must have everything.
                d.wait_ready();
                let mut c = d.client();
                assert_eq!(
                    c.stat("curr_items"),
                    "20000",
                    "silently shortened at {pct}%"
                );
                drop(c);
                d.kill9();
            }
        }
        refused_or_intact += 1;
        std::fs::write(&db, &saved).expect("restore");
    }
    assert_eq!(refused_or_intact, positions.len());

    // A sled database without memtwin's marker is not mistaken for an empty one.
    let other = tmp.path().join("foreign");
    {
        let db = sled::open(other.join("sled")).expect("sled");
        db.insert(b"ix", b"not ours".to_vec()).expect("insert");
        db.flush().expect("flush");
    }
    let log = run_expect_failure(port, &other, &[]);
    assert!(log.contains("format marker"), "{log}");
}

#[test]
fn graceful_shutdown_drains_the_queue() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let d = Daemon::start(port, &dir, &["--fsync", "no"]);
    let mut c = d.client();
    // noreply writes: the daemon accepts them faster than anything is synced.
    let mut batch = Vec::new();
    for i in 0..20_000 {
        batch.extend_from_slice(format!("set q{i} 0 0 5 noreply\r\n{i:05}\r\n").as_bytes());
    }
    use std::io::Write;
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    raw.write_all(&batch).expect("write");
    raw.write_all(b"version\r\n").expect("write");
    let mut buf = [0u8; 64];
    use std::io::Read;
    let _ = raw.read(&mut buf).expect("version reply");
    drop(raw);
    assert!(c.cmd("version").starts_with("VERSION"));
    drop(c);
    d.stop();
    let d = Daemon::start(port, &dir, &[]);
    let mut c = d.client();
    assert_eq!(c.stat("curr_items"), "20000");
    assert_eq!(c.get("q19999").as_deref(), Some(&b"19999"[..]));
    drop(c);
    d.stop();
}
