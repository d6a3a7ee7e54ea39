//! The whole link in-process: two fake tables, two twins over loopback TCP.
//! Every wait is bounded in time.

use super::config::{Secret, TwinConfig};
use super::stats::LinkState;
use super::testing::FakeStore;
use super::{PeerWait, Serving, Twin, TwinStore};
use crate::protocol::twin::{decode, encode, Frame, RefuseReason, MAX_FRAME_DEFAULT};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn cfg(peer: SocketAddr, secret: &[u8]) -> TwinConfig {
    let mut c = TwinConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        peer.to_string(),
        Secret::new(secret),
    );
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.dead_after = Duration::from_secs(3);
    c.handshake_timeout = Duration::from_secs(2);
    c.scan_chunk = 64;
    c
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// Poll `cond` every 20 ms for at most `secs`.
async fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

struct Pair {
    a: Arc<FakeStore>,
    b: Arc<FakeStore>,
    ta: Twin,
    tb: Twin,
}

async fn pair_with(
    ida: u16,
    idb: u16,
    sa: &[u8],
    sb: &[u8],
    tweak: impl Fn(&mut TwinConfig),
) -> Pair {
    let (la, aa) = bind().await;
    let (lb, ab) = bind().await;
    let (a, b) = (FakeStore::new(ida), FakeStore::new(idb));
    let mut ca = cfg(ab, sa);
    tweak(&mut ca);
    let mut cb = cfg(aa, sb);
    tweak(&mut cb);
    let ta = Twin::start_on(la, a.clone(), ca).expect("start a");
    let tb = Twin::start_on(lb, b.clone(), cb).expect("start b");
    Pair { a, b, ta, tb }
}

async fn pair() -> Pair {
    pair_with(1, 2, SECRET, SECRET, |_| {}).await
}

fn up(t: &Twin) -> bool {
    t.stats().state() == LinkState::Up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_both_ways() {
    let p = pair().await;
    assert!(wait_until(5, || up(&p.ta) && up(&p.tb)).await, "link up");
    p.a.set(b"k1", b"from a");
    p.b.set(b"k2", b"from b");
    assert!(wait_until(5, || p.b.get(b"k1").is_some() && p.a.get(b"k2").is_some()).await);
    assert_eq!(p.b.get(b"k1").as_deref(), Some(&b"from a"[..]));
    p.a.touch(b"k2", 99);
    p.b.delete(b"k1");
    assert!(
        wait_until(5, || p.a.get(b"k1").is_none()
            && p.a.digest() == p.b.digest())
        .await
    );
    assert_eq!(
        p.b.digest()[&b"k2"[..]].item.as_ref().map(|i| i.exptime),
        Some(99)
    );
    p.b.flush_all();
    assert!(wait_until(5, || p.a.len() == 0).await, "flush replicated");
    let sa = p.ta.stats();
    assert!(sa.records_sent.load(Ordering::Relaxed) >= 2);
    assert!(sa.records_applied.load(Ordering::Relaxed) >= 3);
    assert!(
        wait_until(5, || {
            let r = sa.report();
            r.iter().any(|(k, v)| *k == "repl_lag_records" && v == "0")
        })
        .await
    );
    p.ta.stop().await;
    p.tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_converge() {
    let p = pair().await;
    assert!(wait_until(5, || up(&p.ta) && up(&p.tb)).await);
    for i in 0..2000u32 {
        let k = format!("s{}", i % 300);
        match i % 7 {
            0 => {
                p.a.delete(k.as_bytes());
            }
            1 => {
                p.b.touch(k.as_bytes(), i);
            }
            2 | 4 => {
                p.b.set(k.as_bytes(), &i.to_le_bytes());
            }
            _ => {
                p.a.set(k.as_bytes(), &i.to_le_bytes());
            }
        }
    }
    assert!(
        wait_until(10, || p.a.digest() == p.b.digest()).await,
        "converged"
    );
    p.ta.stop().await;
    p.tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_moves_no_data() {
    let p = pair_with(1, 2, SECRET, b"another secret, 32 bytes long!!!", |_| {}).await;
    p.a.set(b"secret-session", b"v");
    p.b.set(b"other", b"v");
    let (sa, sb) = (p.ta.stats(), p.tb.stats());
    assert!(
        wait_until(5, || sa.auth_failures.load(Ordering::Relaxed) > 0
            && sb.auth_failures.load(Ordering::Relaxed) > 0)
        .await
    );
    assert!(wait_until(5, || sa.state() == LinkState::Refused).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in [&sa, &sb] {
        assert_eq!(s.records_applied.load(Ordering::Relaxed), 0);
        assert_eq!(
            s.bytes_received.load(Ordering::Relaxed),
            0,
            "no batch crossed"
        );
        assert_eq!(s.records_sent.load(Ordering::Relaxed), 0);
    }
    assert!(p.b.get(b"secret-session").is_none());
    p.ta.stop().await;
    p.tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_id_is_refused() {
    let p = pair_with(7, 7, SECRET, SECRET, |_| {}).await;
    assert!(
        wait_until(5, || p.ta.stats().state() == LinkState::Refused
            && p.tb.stats().state() == LinkState::Refused)
        .await
    );
    p.a.set(b"k", b"v");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.b.get(b"k").is_none());
    p.ta.stop().await;
    p.tb.stop().await;
}

/// A raw client of A's replication port: what it sends, what comes back.
async fn raw_exchange(addr: SocketAddr, send: &[u8]) -> Vec<Frame> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(send).await;
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {
                while let Ok(Some(f)) = decode(&mut buf, MAX_FRAME_DEFAULT) {
                    frames.push(f);
                }
            }
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_truncated_and_old_version_are_closed() {
    // B is never started: A's only link attempts come from the raw clients.
    let (_lb, ab) = bind().await;
    let (la, aa) = bind().await;
    let a = FakeStore::new(1);
    let ta = Twin::start_on(la, a.clone(), cfg(ab, SECRET)).expect("start");
    a.set(b"k", b"v");
    let is_batch = |fs: &[Frame]| fs.iter().any(|f| matches!(f, Frame::Batch { .. }));

    let fs = raw_exchange(aa, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!is_batch(&fs));
    let fs = raw_exchange(aa, &(64u32 << 20).to_le_bytes()).await;
    assert!(!is_batch(&fs), "oversized frame closed");
    let mut hello = BytesMut::new();
    encode(
        &Frame::Hello {
            version: 99,
            node_id: 2,
            history_id: 0,
            wall_ms: crate::version::now_ms(),
            nonce: [3; 32],
        },
        &mut hello,
    );
    let fs = raw_exchange(aa, &hello[..hello.len() - 3]).await;
    assert!(!is_batch(&fs), "truncated hello");
    let fs = raw_exchange(aa, &hello).await;
    assert!(
        fs.iter().any(|f| matches!(f, Frame::Refuse { reason: RefuseReason::Version, message } if message.contains("99"))),
        "{fs:?}"
    );
    // A current-version hello with a bogus proof: refused, no data.
    let mut hello = BytesMut::new();
    encode(
        &Frame::Hello {
            version: crate::protocol::twin::PROTOCOL_VERSION,
            node_id: 2,
            history_id: 0,
            wall_ms: crate::version::now_ms(),
            nonce: [3; 32],
        },
        &mut hello,
    );
    encode(&Frame::Auth { proof: [0; 32] }, &mut hello);
    let fs = raw_exchange(aa, &hello).await;
    assert!(fs.iter().any(|f| matches!(
        f,
        Frame::Refuse {
            reason: RefuseReason::AuthFailed,
            ..
        }
    )));
    assert!(!is_batch(&fs));
    // A skewed clock.
    let mut hello = BytesMut::new();
    encode(
        &Frame::Hello {
            version: crate::protocol::twin::PROTOCOL_VERSION,
            node_id: 2,
            history_id: 0,
            wall_ms: crate::version::now_ms() + 60_000,
            nonce: [3; 32],
        },
        &mut hello,
    );
    let fs = raw_exchange(aa, &hello).await;
    assert!(fs.iter().any(|f| matches!(
        f,
        Frame::Refuse {
            reason: RefuseReason::ClockSkew,
            ..
        }
    )));
    assert_eq!(ta.stats().records_sent.load(Ordering::Relaxed), 0);
    ta.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_race_ends_with_one_stable_link() {
    for _ in 0..3 {
        let p = pair_with(5, 9, SECRET, SECRET, |c| {
            c.backoff_min = Duration::from_millis(1);
        })
        .await;
        assert!(wait_until(5, || up(&p.ta) && up(&p.tb)).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ups = (
            p.ta.stats().link_ups.load(Ordering::Relaxed),
            p.tb.stats().link_ups.load(Ordering::Relaxed),
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            ups,
            (
                p.ta.stats().link_ups.load(Ordering::Relaxed),
                p.tb.stats().link_ups.load(Ordering::Relaxed)
            ),
            "no flapping"
        );
        assert!(up(&p.ta) && up(&p.tb));
        p.a.set(b"x", b"1");
        p.b.set(b"y", b"2");
        assert!(wait_until(5, || p.a.digest() == p.b.digest() && p.a.len() == 2).await);
        p.ta.stop().await;
        p.tb.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_empty_peer_gets_everything_back() {
    let (la, aa) = bind().await;
    let (lb, ab) = bind().await;
    let a = FakeStore::new(1);
    let b = FakeStore::new(2);
    let ta = Twin::start_on(la, a.clone(), cfg(ab, SECRET)).expect("a");
    let tb = Twin::start_on(lb, b.clone(), cfg(aa, SECRET)).expect("b");
    for i in 0..500u32 {
        a.set(format!("a{i}").as_bytes(), b"x");
        b.set(format!("b{i}").as_bytes(), b"y");
    }
    assert!(wait_until(10, || a.len() == 1000 && b.len() == 1000).await);
    assert_eq!(ta.readiness().state(), Serving::Ready);
    // B restarts empty, on the same address.
    tb.stop().await;
    assert!(wait_until(10, || ta.readiness().state() == Serving::Alone).await);
    let b2 = FakeStore::new(2);
    let lb = TcpListener::bind(ab).await.expect("rebind");
    let tb = Twin::start_on(lb, b2.clone(), cfg(aa, SECRET)).expect("b again");
    // The gate opens only once B holds everything A has.
    let ready = tb.readiness();
    assert!(!ready.serving());
    tokio::time::timeout(Duration::from_secs(10), ready.wait_serving())
        .await
        .expect("caught up");
    assert_eq!(b2.len(), 1000, "served before it held everything");
    assert_eq!(ready.state(), Serving::Ready);
    assert!(ready.caught_up_after().is_some());
    assert!(wait_until(10, || ta.readiness().state() == Serving::Ready).await);
    let sa = ta.stats();
    assert!(sa.scan_records.load(Ordering::Relaxed) >= 1000);
    assert!(sa.link_ups.load(Ordering::Relaxed) >= 2);
    // B came back with an unknown data set: A's repair was a full sync.
    assert!(
        sa.full_syncs.load(Ordering::Relaxed) >= 2,
        "first link and the restart"
    );
    assert_eq!(
        sa.last_catchup_kind.load(Ordering::Relaxed),
        super::stats::CatchupKind::Full as u8
    );
    assert!(sa.last_catchup_records.load(Ordering::Relaxed) >= 1000);
    assert!(sa.last_catchup_bytes.load(Ordering::Relaxed) >= 1000 * 3);
    b2.set(b"after", b"restart");
    assert!(wait_until(5, || a.get(b"after").is_some()).await);
    ta.stop().await;
    tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_queue_is_repaired_by_a_scan() {
    let p = pair_with(1, 2, SECRET, SECRET, |c| c.queue_bytes = 2_000).await;
    assert!(wait_until(5, || up(&p.ta) && up(&p.tb)).await);
    for i in 0..5000u32 {
        p.a.set(format!("k{i}").as_bytes(), &[b'v'; 100]);
    }
    assert!(
        wait_until(15, || p.b.len() == 5000).await,
        "b has {}",
        p.b.len()
    );
    let sa = p.ta.stats();
    let overflows = sa
        .report()
        .into_iter()
        .find(|(k, _)| *k == "repl_queue_overflows")
        .map(|(_, v)| v);
    assert_ne!(overflows.as_deref(), Some("0"), "the tiny queue overflowed");
    assert!(sa.scans.load(Ordering::Relaxed) >= 2);
    p.ta.stop().await;
    p.tb.stop().await;
}

/// A TCP relay that can be cut: drops every relayed connection and refuses
/// new ones while cut.
struct Relay {
    addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    gen: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let (l, addr) = bind().await;
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gen = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (c, g) = (cut.clone(), gen.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let mut rx = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut out) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            gen,
            task,
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            self.gen.send_modify(|g| *g += 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_write_during_a_cut_and_converge() {
    let (la, _aa) = bind().await;
    let (lb, ab) = bind().await;
    let relay = Relay::start(ab).await;
    // Only A dials (through the relay); B's peer address goes nowhere.
    let (_dead, dead_addr) = bind().await;
    let a = FakeStore::new(1);
    let b = FakeStore::new(2);
    let ta = Twin::start_on(la, a.clone(), cfg(relay.addr, SECRET)).expect("a");
    let tb = Twin::start_on(lb, b.clone(), cfg(dead_addr, SECRET)).expect("b");
    assert!(wait_until(5, || up(&ta) && up(&tb)).await);
    for i in 0..200u32 {
        a.set(format!("k{i}").as_bytes(), b"before");
    }
    assert!(wait_until(5, || b.len() == 200).await);
    relay.set_cut(true);
    assert!(wait_until(5, || !up(&ta) && !up(&tb)).await, "cut noticed");
    for i in 0..200u32 {
        let k = format!("k{i}");
        match i % 4 {
            0 => {
                a.set(k.as_bytes(), b"a during cut");
            }
            1 => {
                b.set(k.as_bytes(), b"b during cut");
            }
            2 => {
                b.delete(k.as_bytes());
            }
            _ => {
                a.set(k.as_bytes(), b"a");
                b.set(k.as_bytes(), b"b wins, later");
            }
        }
        a.set(format!("new-a{i}").as_bytes(), b"x");
        b.set(format!("new-b{i}").as_bytes(), b"y");
    }
    // Both sides' live records during the cut were discarded: the heal's
    // scans must carry them.
    relay.set_cut(false);
    assert!(wait_until(10, || up(&ta) && up(&tb)).await, "healed");
    assert!(
        wait_until(10, || a.digest() == b.digest()).await,
        "converged"
    );
    assert_eq!(a.get(b"k3").as_deref(), Some(&b"b wins, later"[..]));
    assert!(a.get(b"k2").is_none(), "the delete won");
    assert_eq!(a.len(), 200 - 50 + 400);
    relay.task.abort();
    ta.stop().await;
    tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_twin_gates_for_peer_wait_then_serves_alone() {
    // A port nobody listens on: bind, note it, close.
    let dead = {
        let (l, a) = bind().await;
        drop(l);
        a
    };
    let start = |wait: PeerWait| async move {
        let (l, _) = bind().await;
        let mut c = cfg(dead, SECRET);
        c.peer_wait = wait;
        Twin::start_on(l, FakeStore::new(1), c).expect("start")
    };
    let t = start(PeerWait::For(Duration::from_millis(300))).await;
    let forever = start(PeerWait::Forever).await;
    assert_eq!(t.readiness().state(), Serving::CatchingUp);
    tokio::time::timeout(Duration::from_secs(5), t.readiness().wait_serving())
        .await
        .expect("serves after --peer-wait");
    assert_eq!(t.readiness().state(), Serving::Alone);
    assert!(t.readiness().caught_up_after().is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(forever.readiness().state(), Serving::CatchingUp);
    t.stop().await;
    forever.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_once_the_twin_applied_everything() {
    let p = pair().await;
    assert!(wait_until(5, || up(&p.ta) && up(&p.tb)).await, "link up");
    for i in 0..20_000u32 {
        p.a.set(format!("d{i}").as_bytes(), &[b'x'; 200]);
    }
    assert!(p.ta.drain(Duration::from_secs(10)).await, "drained");
    assert_eq!(
        p.b.len(),
        20_000,
        "the twin applied everything before drain returned"
    );
    assert!(!up(&p.ta));
    // Draining refuses new links: the twin's redials do not bring it back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!up(&p.ta));
    p.ta.stop().await;
    p.tb.stop().await;
}

/// A cut while both sides write, healed: with the backlog holding the gap,
/// both sides replay it (no table scan beyond the link-up ones); with no
/// backlog, both scan. Either way they converge.
async fn cut_and_heal(backlog_bytes: usize) -> (u64, u64, u64, [u8; 2]) {
    let (la, _aa) = bind().await;
    let (lb, ab) = bind().await;
    let relay = Relay::start(ab).await;
    let (_dead, dead_addr) = bind().await;
    let (a, b) = (FakeStore::new(1), FakeStore::new(2));
    let tweak = |mut c: TwinConfig| {
        c.backlog_bytes = backlog_bytes;
        // The ring starts at start-up; a short margin lets a resume point
        // taken a little later fall inside it.
        c.resume_margin_ms = 20;
        c
    };
    let ta = Twin::start_on(la, a.clone(), tweak(cfg(relay.addr, SECRET))).expect("a");
    let tb = Twin::start_on(lb, b.clone(), tweak(cfg(dead_addr, SECRET))).expect("b");
    assert!(wait_until(5, || up(&ta) && up(&tb)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..100u32 {
        a.set(format!("a{i}").as_bytes(), b"before");
        b.set(format!("b{i}").as_bytes(), b"before");
    }
    assert!(wait_until(5, || a.len() == 200 && b.len() == 200).await);
    // Let the resume points move past the writes (Synced on the ack tick).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let scans = ta.stats().scans.load(Ordering::Relaxed) + tb.stats().scans.load(Ordering::Relaxed);
    relay.set_cut(true);
    assert!(wait_until(5, || !up(&ta) && !up(&tb)).await, "cut noticed");
    for i in 0..100u32 {
        a.set(format!("a{i}").as_bytes(), b"a during cut");
        b.delete(format!("b{i}").as_bytes());
        a.set(format!("cut-a{i}").as_bytes(), b"x");
        b.set(format!("cut-b{i}").as_bytes(), b"y");
    }
    relay.set_cut(false);
    assert!(wait_until(10, || up(&ta) && up(&tb)).await, "healed");
    assert!(
        wait_until(10, || a.digest() == b.digest()).await,
        "converged"
    );
    assert_eq!(a.len(), 100 + 200);
    let st = |t: &Twin, f: fn(&super::TwinStats) -> &std::sync::atomic::AtomicU64| {
        f(&t.stats()).load(Ordering::Relaxed)
    };
    let new_scans = st(&ta, |s| &s.scans) + st(&tb, |s| &s.scans) - scans;
    let replays = st(&ta, |s| &s.backlog_replays) + st(&tb, |s| &s.backlog_replays);
    let replayed = st(&ta, |s| &s.backlog_replayed) + st(&tb, |s| &s.backlog_replayed);
    let kinds = [&ta, &tb].map(|t| t.stats().last_catchup_kind.load(Ordering::Relaxed));
    relay.task.abort();
    ta.stop().await;
    tb.stop().await;
    (new_scans, replays, replayed, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_cut_is_repaired_from_the_backlog() {
    let (scans, replays, replayed, kinds) = cut_and_heal(1 << 20).await;
    assert_eq!(
        (scans, replays),
        (0, 2),
        "both sides replayed, neither scanned"
    );
    assert_eq!(kinds, [super::stats::CatchupKind::Backlog as u8; 2]);
    assert!(replayed >= 400, "{replayed} records replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backlog_the_heal_scans() {
    let (scans, replays, _, kinds) = cut_and_heal(0).await;
    assert_eq!((scans, replays), (2, 0));
    // Both sides knew each other's position: partial scans, not full syncs.
    assert_eq!(kinds, [super::stats::CatchupKind::Scan as u8; 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_trait_is_object_safe() {
    let s: Arc<dyn TwinStore> = FakeStore::new(3);
    assert_eq!(s.hlc().node(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_moves_the_resume_point_to_the_clock() {
    // A burst of writes, then quiet: the twin's resume point for A must
    // follow A's clock, so that a clean stop long after the burst resumes
    // above it (with a 2 s margin) instead of resending the whole burst.
    let p = pair_with(1, 2, SECRET, SECRET, |c| {
        c.ping_interval = Duration::from_millis(200);
    })
    .await;
    for i in 0..200u32 {
        p.a.set(format!("k{i}").as_bytes(), b"v");
    }
    assert!(wait_until(5, || p.b.len() == 200).await);
    let burst_ms = crate::version::now_ms();
    let of_a = |t: &Twin| {
        t.positions()
            .iter()
            .find(|q| q.origin == 1)
            .map_or(0, |q| crate::version::Version::from_raw(q.version).millis())
    };
    assert!(
        wait_until(5, || of_a(&p.tb) >= burst_ms + 600).await,
        "resume point for A stayed at {} (burst ended {burst_ms})",
        of_a(&p.tb)
    );
    p.ta.stop().await;
    p.tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_catch_up_keeps_to_its_rate() {
    // --replication-catchup-rate: 256 KiB/s. About 300 KB of A's table to a
    // node that starts empty cannot cross in less than about a second.
    let (la, aa) = bind().await;
    let (lb, ab) = bind().await;
    let (a, b) = (FakeStore::new(1), FakeStore::new(2));
    let paced = |mut c: TwinConfig| {
        c.catchup_rate = 256 << 10;
        c
    };
    for i in 0..2000u32 {
        a.set(format!("k{i}").as_bytes(), &[b'v'; 120]);
    }
    let ta = Twin::start_on(la, a.clone(), paced(cfg(ab, SECRET))).expect("a");
    let started = Instant::now();
    let tb = Twin::start_on(lb, b.clone(), paced(cfg(aa, SECRET))).expect("b");
    let ready = tb.readiness();
    tokio::time::timeout(Duration::from_secs(20), ready.wait_serving())
        .await
        .expect("caught up");
    let took = started.elapsed();
    assert_eq!(b.len(), 2000);
    let bytes = ta.stats().last_catchup_bytes.load(Ordering::Relaxed);
    assert!(bytes >= 2000 * 120, "{bytes} bytes");
    let floor = Duration::from_secs_f64(bytes as f64 / f64::from(256u32 << 10)) * 9 / 10;
    assert!(
        took >= floor,
        "{bytes} bytes in {took:?}, faster than the rate allows"
    );
    ta.stop().await;
    tb.stop().await;
}
