//! The worker threads' event loops, black-box: slow readers, idle timeouts,
//! connection accounting across workers, and shutdown with open connections.

mod common;

use common::{free_port, tempdir, Client, Daemon};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A client that sends big multi-gets and does not read: the server must stop
/// at a full socket buffer (not buffer without bound, not block its thread),
/// keep serving other connections, and deliver every byte once it reads.
#[test]
fn slow_reader_gets_every_byte_and_others_are_served_meanwhile() {
    let dir = tempdir();
    let d = Daemon::start(free_port(), dir.path(), &["-t", "1"]);
    let mut c = d.client();
    let value: Vec<u8> = (0..500_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for i in 0..8 {
        assert_eq!(c.set(&format!("big{i}"), 7, 0, &value), "STORED");
    }
    let keys: Vec<String> = (0..8).map(|i| format!("big{i}")).collect();
    let request = format!("get {}\r\n", keys.join(" "));
    let mut slow = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
    // Three multi-gets of 4 MB each, far more than the socket buffers hold.
    for _ in 0..3 {
        slow.write_all(request.as_bytes()).expect("send");
    }
    // The same (only) worker thread serves another client meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        assert_eq!(c.set(&format!("k{i}"), 0, 0, b"v"), "STORED");
        assert_eq!(c.get(&format!("k{i}")).as_deref(), Some(&b"v"[..]));
    }
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut expected = Vec::new();
    for _ in 0..3 {
        for k in &keys {
            expected.extend_from_slice(format!("VALUE {k} 7 {}\r\n", value.len()).as_bytes());
            expected.extend_from_slice(&value);
            expected.extend_from_slice(b"\r\n");
        }
        expected.extend_from_slice(b"END\r\n");
    }
    let mut got = vec![0u8; expected.len()];
    slow.read_exact(&mut got).expect("all replies");
    assert!(got == expected, "replies differ from what was stored");
    d.stop();
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Clients that pipeline `get`s of a 1 MB value (one per request, and many
/// keys on one line) and never read cost the server about one value each, not
/// the whole backlog: replies stop at the output high-water mark and a
/// multi-get resumes after the keys it has answered. Measured before the
/// bound: 6.2 MB of RSS per such connection (memcached 1.6.18: 28 KB).
#[test]
fn clients_that_never_read_cost_about_one_value_each() {
    let dir = tempdir();
    let d = Daemon::start(free_port(), dir.path(), &["-t", "2", "-m", "256"]);
    let mut c = d.client();
    let value = vec![b'x'; 1_000_000];
    assert_eq!(c.set("big", 0, 0, &value), "STORED");
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kb(d.child.id());
    let pipelined = "get big\r\n".repeat(200);
    let multi = format!("get {}\r\n", vec!["big"; 100].join(" "));
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
        let req = if i % 2 == 0 { &pipelined } else { &multi };
        s.write_all(req.as_bytes()).expect("send");
        slow.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let grown_mb = rss_kb(d.child.id()).saturating_sub(before) / 1024;
    // About 1.3 MB each (the value plus the high-water mark); 20 x 4 MB was
    // the old bound's floor for the multi-gets alone.
    assert!(
        grown_mb < 48,
        "20 non-reading clients grew RSS by {grown_mb} MB"
    );
    // The server still serves, and a slow client gets everything once it reads.
    assert_eq!(c.get("big").map(|v| v.len()), Some(1_000_000));
    let mut s = slow.pop().expect("one");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let one = "VALUE big 0 1000000\r\n".len() + 1_000_000 + 2;
    let mut got = vec![0u8; one * 100 + 5];
    s.read_exact(&mut got).expect("every reply");
    assert!(got.ends_with(b"END\r\n"));
    drop(slow);
    d.stop();
}

/// `--idle-timeout`: a connection that sends nothing is closed; one that keeps
/// talking is not.
#[test]
fn idle_timeout_closes_only_idle_connections() {
    let dir = tempdir();
    let d = Daemon::start(free_port(), dir.path(), &["--idle-timeout", "1"]);
    let mut idle = d.client();
    assert!(idle.cmd("version").starts_with("VERSION"));
    let mut busy = d.client();
    for _ in 0..12 {
        assert!(busy.cmd("version").starts_with("VERSION"));
        std::thread::sleep(Duration::from_millis(250));
    }
    // 3 s without a request: the server closed it (EOF, or a reset).
    let reply = idle.try_cmd("version");
    assert!(reply.is_err(), "idle connection still open: {reply:?}");
    assert!(busy.cmd("version").starts_with("VERSION"));
    d.stop();
}

/// Connections are spread over the workers and each keeps its own stream of
/// replies; closing them gives the count back.
#[test]
fn many_connections_over_workers_are_accounted() {
    let dir = tempdir();
    let d = Daemon::start(free_port(), dir.path(), &["-t", "3"]);
    let mut admin = d.client();
    let mut clients: Vec<Client> = (0..60).map(|_| d.client()).collect();
    for round in 0..5 {
        for (i, c) in clients.iter_mut().enumerate() {
            let v = format!("{i}-{round}");
            assert_eq!(c.set(&format!("c{i}"), 0, 0, v.as_bytes()), "STORED");
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let want = format!("{i}-{round}");
            assert_eq!(c.get(&format!("c{i}")), Some(want.into_bytes()));
        }
    }
    // (Measured relative to this point: the start-up probe's connection may
    // still have been counted a moment ago.)
    let during: u64 = admin.stat("curr_connections").parse().expect("number");
    assert!(
        during > 60,
        "curr_connections {during} with 61 clients open"
    );
    drop(clients);
    let mut now = during;
    for _ in 0..500 {
        now = admin.stat("curr_connections").parse().expect("number");
        if now == during - 60 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(now, during - 60, "closed connections still counted");
    d.stop();
}

/// SIGTERM with idle connections open: they are closed (the client reads EOF)
/// and the daemon exits cleanly.
#[test]
fn shutdown_closes_open_connections() {
    let dir = tempdir();
    let d = Daemon::start(free_port(), dir.path(), &["-t", "2"]);
    let mut clients: Vec<Client> = (0..6).map(|_| d.client()).collect();
    for c in &mut clients {
        assert!(c.cmd("version").starts_with("VERSION"));
    }
    d.stop();
    for c in &mut clients {
        assert!(
            c.try_cmd("version").is_err(),
            "connection survived shutdown"
        );
    }
}
