//! Two real daemons linked as twins on loopback: what one accepts, the other
//! serves, with the same flags and CAS token; a node restarted empty gets its
//! twin's data back; a missing or wrong secret is refused.

mod common;

use common::{free_port, run_expect_failure, Client, Daemon};
use std::path::Path;
use std::time::{Duration, Instant};

fn secret(dir: &Path, content: &str) -> String {
    let p = dir.join(format!("secret-{}", content.len()));
    std::fs::write(&p, content).expect("secret");
    p.to_str().expect("utf8").to_string()
}

struct Node {
    port: u16,
    repl: u16,
}

fn args(me: &Node, peer: &Node, id: &str, secret: &str) -> Vec<String> {
    vec![
        "--peer".into(),
        format!("127.0.0.1:{}", peer.repl),
        "--replication-listen".into(),
        format!("127.0.0.1:{}", me.repl),
        "--replication-secret".into(),
        secret.into(),
        "--node-id".into(),
        id.into(),
    ]
}

/// Start both nodes: each is gated until the other is up and it has caught
/// up, so wait for both to listen first, then for both to serve.
fn start_pair(
    na: &Node,
    nb: &Node,
    dir: &Path,
    sa: &str,
    sb: &str,
    extra: &[&str],
) -> (Daemon, Daemon) {
    let with = |me: &Node, peer: &Node, id: &str, s: &str| {
        let mut v = args(me, peer, id, s);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let (aa, ab) = (with(na, nb, "1", sa), with(nb, na, "2", sb));
    let aa: Vec<&str> = aa.iter().map(String::as_str).collect();
    let ab: Vec<&str> = ab.iter().map(String::as_str).collect();
    let mut a = Daemon::start_listening(na.port, &dir.join("a"), &aa);
    let mut b = Daemon::start_listening(nb.port, &dir.join("b"), &ab);
    a.wait_ready();
    b.wait_ready();
    (a, b)
}

/// Poll `f` every 20 ms for at most `secs`.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn group(c: &mut Client, name: &str) -> Vec<String> {
    let mut lines = vec![c.cmd(&format!("stats {name}"))];
    while lines.last().is_some_and(|l| l.starts_with("STAT ")) {
        lines.push(c.line().expect("line"));
    }
    lines
}

#[test]
fn writes_cross_both_ways_with_the_same_cas() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = secret(tmp.path(), "0123456789abcdef0123456789abcdef\n");
    let (na, nb) = (
        Node {
            port: free_port(),
            repl: free_port(),
        },
        Node {
            port: free_port(),
            repl: free_port(),
        },
    );
    let (a, b) = start_pair(&na, &nb, tmp.path(), &s, &s, &[]);
    let (mut ca, mut cb) = (a.client(), b.client());
    assert!(eventually(10, || ca.stat("repl_link") == "up"
        && cb.stat("repl_link") == "up"));

    assert_eq!(ca.set("session:1", 42, 0, b"alice"), "STORED");
    assert!(eventually(5, || cb.gets("session:1").is_some()));
    let (fa, va, cas_a) = ca.gets("session:1").expect("on a");
    let (fb, vb, cas_b) = cb.gets("session:1").expect("on b");
    assert_eq!((fa, va, cas_a), (fb, vb, cas_b), "same item, same token");
    // gets on A, cas on B.
    assert_eq!(cb.cas("session:1", b"bob", cas_a), "STORED");
    assert!(eventually(5, || ca.get("session:1").as_deref() == Some(&b"bob"[..])));
    assert_eq!(ca.cas("session:1", b"eve", cas_a), "EXISTS", "stale token");
    assert_eq!(cb.cmd("delete session:1"), "DELETED");
    assert!(eventually(5, || ca.get("session:1").is_none()));
    // flush_all on either node flushes both; what is written after survives.
    assert_eq!(cb.set("old", 0, 0, b"x"), "STORED");
    assert!(eventually(5, || ca.get("old").is_some()));
    assert_eq!(ca.cmd("flush_all"), "OK");
    assert!(eventually(5, || cb.get("old").is_none()));
    assert_eq!(cb.set("new", 0, 0, b"y"), "STORED");
    assert!(eventually(5, || ca.get("new").is_some()));

    let g = group(&mut ca, "replication");
    assert!(g.iter().any(|l| l == "STAT link up"), "{g:?}");
    assert!(g.iter().any(|l| l == "STAT peer_node_id 2"), "{g:?}");
    assert_eq!(g.last().map(String::as_str), Some("END"));
    assert!(a.log_text().contains("twin replication: node id 1"));
    a.stop();
    b.stop();
}

#[test]
fn a_node_restarted_empty_gets_its_twins_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = secret(tmp.path(), "0123456789abcdef0123456789abcdef");
    let (na, nb) = (
        Node {
            port: free_port(),
            repl: free_port(),
        },
        Node {
            port: free_port(),
            repl: free_port(),
        },
    );
    let (a, b) = start_pair(&na, &nb, tmp.path(), &s, &s, &[]);
    const N: usize = 20_000;
    let mut ca = a.client();
    for i in 0..N {
        ca.w_noreply(&format!("s{i}"), b"v");
    }
    assert!(ca.cmd("version").starts_with("VERSION"));
    let mut cb = b.client();
    assert!(eventually(10, || cb.get(&format!("s{}", N - 1)).is_some()));
    b.stop();
    // B comes back on a fresh data dir. A client reads from it from the
    // moment it starts: refusals (connections refused) while B catches up,
    // then hits, never a miss.
    let bargs = args(&nb, &na, "2", &s);
    let bargs: Vec<&str> = bargs.iter().map(String::as_str).collect();
    let b = Daemon::start_listening(nb.port, &tmp.path().join("b2"), &bargs);
    // The default refuses connections until caught up: count those too.
    let (mut errors, mut rounds) = (0u64, 0);
    let connect = |errors: &mut u64| loop {
        match Client::try_connect(nb.port) {
            Ok(c) => return c,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                *errors += 1;
                assert!(*errors < 100_000, "B never listened");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    let mut cb = connect(&mut errors);
    let keys: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all_hit = true;
        for chunk in keys.chunks(500) {
            match get_or_error(&mut cb, chunk) {
                Err(closed) => {
                    errors += 1;
                    all_hit = false;
                    if closed {
                        cb = connect(&mut errors);
                        break;
                    }
                }
                Ok(hits) => assert_eq!(
                    hits,
                    chunk.len(),
                    "a miss on a catching-up node (round {rounds}, after {errors} errors)"
                ),
            }
        }
        rounds += 1;
        if all_hit {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never caught up: {errors} errors"
        );
    }
    assert_eq!(cb.stat("repl_state"), "ready");
    // Refused connections never reach the daemon, so they are not counted.
    let counted = cb.stat("repl_not_ready_replies").parse::<u64>().expect("n");
    assert!(counted <= errors, "{counted} counted, {errors} seen");
    assert!(
        b.log_text().contains("caught up with the twin"),
        "{}",
        b.log_text()
    );
    a.stop();
    b.stop();
}

/// `get` several one-byte values: Ok(hits), or Err(closed) for a refusal:
/// the connection closed unanswered (the default) or the not-ready error.
fn get_or_error(c: &mut Client, keys: &[String]) -> Result<usize, bool> {
    let first = match c.try_cmd(&format!("get {}", keys.join(" "))) {
        Ok(line) => line,
        Err(e) if common::is_refusal(&e) => return Err(true),
        Err(e) => panic!("get: {e}"),
    };
    if first.starts_with("SERVER_ERROR not ready") {
        return Err(false);
    }
    let (mut hits, mut line) = (0, first);
    while line != "END" {
        assert!(line.starts_with("VALUE "), "unexpected {line:?}");
        assert_eq!(c.line().expect("data"), "v");
        hits += 1;
        line = c.line().expect("line");
    }
    Ok(hits)
}

#[test]
fn peer_without_a_good_secret_refuses_to_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = run_expect_failure(
        free_port(),
        &tmp.path().join("d"),
        &["--peer", "127.0.0.1:1"],
    );
    assert!(log.contains("head -c 32 /dev/urandom | base64"), "{log}");
    let short = secret(tmp.path(), "short\n");
    let log = run_expect_failure(
        free_port(),
        &tmp.path().join("e"),
        &["--peer", "127.0.0.1:1", "--replication-secret", &short],
    );
    assert!(log.contains("fewer than 16"), "{log}");
}

#[test]
fn wrong_secret_is_refused_and_nothing_crosses() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s1 = secret(tmp.path(), "0123456789abcdef0123456789abcdef");
    let s2 = secret(tmp.path(), "a different secret, also long enough!");
    let (na, nb) = (
        Node {
            port: free_port(),
            repl: free_port(),
        },
        Node {
            port: free_port(),
            repl: free_port(),
        },
    );
    // The link never forms: both serve alone at once.
    let (a, b) = start_pair(&na, &nb, tmp.path(), &s1, &s2, &["--peer-wait", "0"]);
    let (mut ca, mut cb) = (a.client(), b.client());
    assert_eq!(ca.set("k", 0, 0, b"v"), "STORED");
    assert!(eventually(10, || ca.stat("repl_link") == "refused"
        && ca.stat("repl_auth_failures") != "0"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(cb.get("k").is_none());
    assert_eq!(cb.stat("repl_records_applied"), "0");
    assert!(a.log_text().contains("authentication") || a.log_text().contains("secret"));
    assert!(
        !a.log_text().contains("0123456789abcdef"),
        "the secret is never logged"
    );
    a.stop();
    b.stop();
}
