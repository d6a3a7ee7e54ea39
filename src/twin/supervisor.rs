//! Listener, dialler and the arbiter that keeps exactly one link.
//!
//! Both nodes dial and accept, so either can come up first and a link forms
//! whichever side the network lets through. Every connection is
//! authenticated on its own task, then handed to the arbiter, which owns the
//! outgoing queue and runs at most one session:
//!
//! * no link yet: the connection becomes the link;
//! * a link exists: a connection dialled by the higher node id replaces a
//!   link dialled by the lower one, anything else is refused as `Busy`.
//!
//! Both nodes apply the same rule to the same two connections, so a dial race
//! ends with the same single link on both sides. While no link is up the
//! arbiter drains and discards the queue: the next link-up rescans the table.

use super::backlog::Backlog;
use super::config::TwinConfig;
use super::framed::{FrameReader, FrameWriter};
use super::handshake::{handshake, refuse, HandshakeError, Local, Peer};
use super::outbox::Outbox;
use super::readiness::{PeerWait, Serving};
use super::session::{self, Node, SessionError};
use super::stats::{LinkState, TwinStats};
use super::TwinStore;
use crate::protocol::twin::RefuseReason;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Any byte stream the link can run over (TCP today, TLS later).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type BoxIo = Pin<Box<dyn Io>>;
type Rd = FrameReader<ReadHalf<BoxIo>>;
type Wr = FrameWriter<WriteHalf<BoxIo>>;

/// Handshakes allowed at once: more connections are closed unanswered.
const MAX_HANDSHAKES: usize = 8;

/// An authenticated connection offered to the arbiter.
struct Offer {
    rd: Rd,
    wr: Wr,
    peer: Peer,
    /// Node id of the side that dialled it.
    dialled_by: u16,
    addr: String,
    /// true: it became the link.
    reply: oneshot::Sender<bool>,
}

/// The running twin module.
pub struct Twin {
    stats: Arc<TwinStats>,
    readiness: Arc<super::Readiness>,
    draining: CancellationToken,
    node: Arc<Node>,
    listen: SocketAddr,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Twin {
    /// Bind the replication listener and start dialling the peer.
    pub async fn start(store: Arc<dyn TwinStore>, cfg: TwinConfig) -> std::io::Result<Twin> {
        let listener = TcpListener::bind(cfg.listen).await?;
        Self::start_on(listener, store, cfg)
    }

    /// [`Twin::start`] on a listener bound already (tests bind port 0 first,
    /// so each node can be told the other's address).
    pub fn start_on(
        listener: TcpListener,
        store: Arc<dyn TwinStore>,
        cfg: TwinConfig,
    ) -> std::io::Result<Twin> {
        let listen = listener.local_addr()?;
        let sub = store.subscribe(cfg.queue_bytes, cfg.ack_timeout);
        let ack = sub.ack.clone();
        // No link yet: nobody waits for acknowledgements that cannot come.
        ack.set_waived(true);
        let stats = Arc::new(TwinStats::new(cfg.peer.clone(), store.hlc().node()));
        let backlog = Backlog::new(cfg.backlog_bytes, cfg.backlog_ttl, store.hlc().last().get());
        let clock = {
            let store = store.clone();
            Box::new(move || store.hlc().last().get())
        };
        let outbox = Outbox::new(sub, backlog, clock, stats.clone())?;
        stats.set_gauge(outbox.gauge.clone());
        stats.set_readiness(cfg.readiness.clone());
        stats.set_ack(ack.clone(), cfg.ack_timeout.is_some());
        let readiness = cfg.readiness.clone();
        let resumed = cfg.resume.iter().map(|p| (p.origin, *p)).collect();
        let scanner = super::scanner::Scanner::start(store.clone())?;
        let node = Arc::new(Node {
            store,
            scanner,
            cfg,
            stats: stats.clone(),
            positions: Mutex::new(resumed),
            ack,
            draining: CancellationToken::new(),
        });
        let draining = node.draining.clone();
        let shared_node = node.clone();
        let cancel = CancellationToken::new();
        let (offer_tx, offer_rx) = mpsc::channel(4);
        let (up_tx, up_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(arbiter(
                node.clone(),
                outbox,
                offer_rx,
                up_tx,
                cancel.clone(),
            )),
            tokio::spawn(accept_loop(
                node.clone(),
                listener,
                offer_tx.clone(),
                cancel.clone(),
            )),
            tokio::spawn(peer_wait(node.clone(), up_rx.clone(), cancel.clone())),
            tokio::spawn(dial_loop(node, offer_tx, up_rx, cancel.clone())),
        ];
        Ok(Twin {
            stats,
            readiness,
            draining,
            node: shared_node,
            listen,
            cancel,
            tasks,
        })
    }

    /// Per origin, what this node holds from it (what it presents at the
    /// next link-up; kept across a clean restart by [`super::resume`]).
    pub fn positions(&self) -> Vec<crate::protocol::twin::Position> {
        self.node.positions()
    }

    /// [`Twin::positions`] for a task that outlives this borrow.
    pub fn position_source(
        &self,
    ) -> impl Fn() -> Vec<crate::protocol::twin::Position> + Send + Sync + 'static {
        let node = self.node.clone();
        move || node.positions()
    }

    /// Whether clients may be answered yet (shared with every session).
    pub fn readiness(&self) -> Arc<super::Readiness> {
        self.readiness.clone()
    }

    pub fn stats(&self) -> Arc<TwinStats> {
        self.stats.clone()
    }

    /// The bound replication address (the real port when 0 was asked for).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// At shutdown, once clients are gone: ship everything queued (and finish
    /// a running scan), then wait until the twin has applied it, for at most
    /// `bound`. Returns whether the twin has everything.
    pub async fn drain(&self, bound: Duration) -> bool {
        let started = Instant::now();
        if self.stats.state() != LinkState::Up {
            let queued = self.stats.queued_bytes();
            if queued > 0 {
                tracing::warn!(
                    "shutting down with the twin link down: {queued} bytes of writes not \
                     replicated (the twin gets them from this node's disk at the next link, if it has one)"
                );
            }
            return false;
        }
        self.draining.cancel();
        let ended = tokio::time::timeout(bound, async {
            while self.stats.state() == LinkState::Up {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok();
        if ended && self.stats.drained.load(Ordering::Relaxed) {
            tracing::info!(
                "the twin has everything this node accepted (drained in {} ms)",
                started.elapsed().as_millis()
            );
            true
        } else {
            tracing::warn!(
                "the twin did not confirm everything within {} s: up to {} bytes of writes may \
                 exist on this node only",
                bound.as_secs(),
                self.stats.queued_bytes()
            );
            false
        }
    }

    /// Close the link and the listener, and wait for the tasks.
    pub async fn stop(self) {
        self.node.ack.set_waived(true);
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats.set_state(LinkState::Down);
    }
}

fn local(node: &Node) -> Local<'_> {
    Local {
        node: node.me(),
        history_id: node.cfg.history_id,
        secret: &node.cfg.secret,
        max_skew: node.cfg.max_clock_skew,
    }
}

/// Authenticate `io`; Ok = an offer-ready connection.
async fn authenticate(
    node: &Node,
    io: BoxIo,
    addr: &str,
) -> Result<(Rd, Wr, Peer), HandshakeError> {
    let (r, w) = tokio::io::split(io);
    let mut rd = FrameReader::new(r, node.cfg.max_frame);
    let mut wr = FrameWriter::new(w);
    let peer = match tokio::time::timeout(
        node.cfg.handshake_timeout,
        handshake(&mut rd, &mut wr, local(node), &node.stats, addr),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => {
            wr.shutdown().await;
            return Err(HandshakeError::Timeout);
        }
    };
    Ok((rd, wr, peer))
}

/// A refusal an operator must act on shows as `refused` unless a link is up.
fn note_refusal(node: &Node, e: &HandshakeError) {
    if e.is_refusal() && node.stats.state() != LinkState::Up {
        node.stats.set_state(LinkState::Refused);
    }
}

// ---------------------------------------------------------------------------
// Arbiter
// ---------------------------------------------------------------------------

struct Current {
    dialled_by: u16,
    peer: u16,
    addr: String,
    cancel: CancellationToken,
    handle: JoinHandle<(Outbox, Result<(), SessionError>)>,
}

enum Event {
    Stop,
    Offer(Offer),
    Ended(Result<(Outbox, Result<(), SessionError>), tokio::task::JoinError>),
    Queued,
}

async fn arbiter(
    node: Arc<Node>,
    outbox: Outbox,
    mut offers: mpsc::Receiver<Offer>,
    up: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut idle: Option<Outbox> = Some(outbox);
    let mut current: Option<Current> = None;
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => Event::Stop,
            o = offers.recv() => match o { Some(o) => Event::Offer(o), None => Event::Stop },
            r = async { match current.as_mut() { Some(c) => (&mut c.handle).await, None => std::future::pending().await } } => Event::Ended(r),
            _ = async { match idle.as_mut() { Some(ob) => ob.ready().await, None => std::future::pending().await } } => Event::Queued,
        };
        match ev {
            Event::Stop => break,
            Event::Queued => {
                if let Some(ob) = idle.as_mut() {
                    ob.discard();
                }
            }
            Event::Ended(r) => {
                let Some(c) = current.take() else { continue };
                let _ = up.send(false);
                match r {
                    Ok((ob, res)) => {
                        idle = Some(ob);
                        link_down(&node, &c, res);
                    }
                    Err(e) => {
                        // The session panicked: the queue went with it. Nothing
                        // can be shipped any more; say so loudly.
                        tracing::error!("twin link task failed: {e}; replication stopped");
                        node.stats.set_state(LinkState::Down);
                        break;
                    }
                }
            }
            Event::Offer(o) if node.draining.is_cancelled() => {
                // Shutting down: no new link.
                let _ = o.reply.send(false);
            }
            Event::Offer(o) => {
                let preferred = node.me().max(o.peer.node);
                let replace = match &current {
                    None => true,
                    Some(c) => o.dialled_by == preferred && c.dialled_by != preferred,
                };
                if !replace {
                    tracing::debug!(
                        "twin: a second connection from {} closed (link already up)",
                        o.addr
                    );
                    let _ = o.reply.send(false);
                    let mut wr = o.wr;
                    tokio::spawn(async move {
                        refuse(
                            &mut wr,
                            RefuseReason::Busy,
                            "another link is up".into(),
                            String::new(),
                        )
                        .await;
                    });
                    continue;
                }
                if let Some(c) = current.take() {
                    tracing::debug!(
                        "twin: dial race, keeping the link dialled by node {preferred}"
                    );
                    c.cancel.cancel();
                    if let Ok((ob, _)) = c.handle.await {
                        idle = Some(ob);
                    }
                }
                let Some(ob) = idle.take() else {
                    let _ = o.reply.send(false);
                    continue;
                };
                current = Some(start_session(&node, o, ob, &cancel));
                let _ = up.send(true);
            }
        }
    }
    if let Some(c) = current.take() {
        c.cancel.cancel();
        let _ = c.handle.await;
    }
}

fn start_session(
    node: &Arc<Node>,
    o: Offer,
    mut ob: Outbox,
    parent: &CancellationToken,
) -> Current {
    let st = &node.stats;
    st.peer_node_id
        .store(u32::from(o.peer.node), Ordering::Relaxed);
    st.link_ups.fetch_add(1, Ordering::Relaxed);
    if st.set_state(LinkState::Up) != LinkState::Up {
        tracing::info!(
            "twin link up with node {} at {} (clock skew {} ms)",
            o.peer.node,
            o.addr,
            o.peer.skew_ms
        );
    }
    // Writers under --replication-ack wait for this link's acknowledgements.
    node.ack.set_waived(false);
    let cancel = parent.child_token();
    let (n, c) = (node.clone(), cancel.clone());
    let Offer {
        rd,
        wr,
        peer,
        dialled_by,
        addr,
        reply,
    } = o;
    let handle = tokio::spawn(async move {
        let res = session::run(&n, rd, wr, peer, &mut ob, &c).await;
        (ob, res)
    });
    let _ = reply.send(true);
    Current {
        dialled_by,
        peer: peer.node,
        addr,
        cancel,
        handle,
    }
}

fn link_down(node: &Node, c: &Current, res: Result<(), SessionError>) {
    // Nothing can be acknowledged now: answer waiting writers.
    node.ack.set_waived(true);
    if node.draining.is_cancelled() {
        node.stats
            .drained
            .store(matches!(res, Ok(())), Ordering::Relaxed);
        node.stats.set_state(LinkState::Down);
        return;
    }
    let lost = !matches!(
        res,
        Err(SessionError::Stopped)
            | Err(SessionError::Refused {
                reason: RefuseReason::Busy,
                ..
            })
    );
    if lost && node.cfg.readiness.link_lost() == Serving::Ready {
        tracing::warn!(
            "twin link lost: serving alone; writes reach the twin when the link returns"
        );
    }
    match res {
        Err(SessionError::Stopped) => {}
        Err(SessionError::Refused {
            reason: RefuseReason::Busy,
            ..
        }) => {
            node.stats.set_state(LinkState::Connecting);
            tracing::debug!("twin: node {} kept its other connection", c.peer);
        }
        Err(e) => {
            node.stats.set_state(LinkState::Down);
            tracing::warn!("twin link to node {} at {} down: {e}", c.peer, c.addr);
        }
        Ok(()) => {
            node.stats.set_state(LinkState::Down);
            tracing::warn!("twin link to node {} at {} down", c.peer, c.addr);
        }
    }
}

/// `--peer-wait`: a node still catching up when the deadline passes with no
/// link up serves alone. A link that is up at the deadline is streaming the
/// catch-up: the gate stays closed until it completes or the link drops.
async fn peer_wait(node: Arc<Node>, mut up: watch::Receiver<bool>, cancel: CancellationToken) {
    let readiness = node.cfg.readiness.clone();
    let PeerWait::For(wait) = node.cfg.peer_wait else {
        return;
    };
    let deadline = tokio::time::Instant::now() + wait;
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = readiness.wait_change(Serving::CatchingUp) => return,
        _ = tokio::time::sleep_until(deadline) => {}
    }
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = readiness.wait_change(Serving::CatchingUp) => return,
        r = up.wait_for(|u| !*u) => if r.is_err() { return },
    }
    if readiness.give_up_waiting() == Serving::CatchingUp {
        tracing::warn!(
            "the twin {} was not reachable within --peer-wait {} s: SERVING ALONE, without the \
             twin's sessions; this node catches up (both ways) when the twin appears",
            node.cfg.peer,
            wait.as_secs()
        );
    }
}

/// Offer an authenticated connection; true if it became the link.
async fn offer(
    offers: &mpsc::Sender<Offer>,
    (rd, wr, peer): (Rd, Wr, Peer),
    dialled_by: u16,
    addr: String,
) -> bool {
    let (tx, rx) = oneshot::channel();
    let o = Offer {
        rd,
        wr,
        peer,
        dialled_by,
        addr,
        reply: tx,
    };
    if offers.send(o).await.is_err() {
        return false;
    }
    rx.await.unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Listener
// ---------------------------------------------------------------------------

async fn accept_loop(
    node: Arc<Node>,
    listener: TcpListener,
    offers: mpsc::Sender<Offer>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let log = Arc::new(Mutex::new(RateLimit::default()));
    loop {
        let (sock, addr) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("twin listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let (node, offers, cancel, log) =
            (node.clone(), offers.clone(), cancel.clone(), log.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let addr = addr.to_string();
            let auth = tokio::select! {
                _ = cancel.cancelled() => return,
                r = authenticate(&node, Box::pin(sock), &addr) => r,
            };
            match auth {
                Ok(conn) => {
                    let dialled_by = conn.2.node;
                    offer(&offers, conn, dialled_by, addr).await;
                }
                Err(e) => {
                    note_refusal(&node, &e);
                    if let Some(suppressed) = lock(&log).allow() {
                        let more = if suppressed > 0 {
                            format!(" ({suppressed} similar messages suppressed)")
                        } else {
                            String::new()
                        };
                        tracing::warn!("twin connection from {addr} closed: {e}{more}");
                    }
                }
            }
        });
    }
}

/// Log lines the listener may write in a burst, and how fast the allowance
/// comes back: every refused connection is logged, until something floods the
/// port, and then a line says how many were left out.
const LOG_BURST: u32 = 20;
const LOG_REFILL: Duration = Duration::from_secs(3);

struct RateLimit {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            tokens: LOG_BURST,
            refilled: Instant::now(),
            suppressed: 0,
        }
    }
}

impl RateLimit {
    /// Some(lines suppressed since the last one) if a line may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_millis() / LOG_REFILL.as_millis();
        if earned > 0 {
            self.tokens = LOG_BURST.min(self.tokens + u32::try_from(earned).unwrap_or(LOG_BURST));
            self.refilled = now;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

// ---------------------------------------------------------------------------
// Dialler
// ---------------------------------------------------------------------------

async fn dial_loop(
    node: Arc<Node>,
    offers: mpsc::Sender<Offer>,
    mut up: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let peer = node.cfg.peer.clone();
    let mut backoff = Backoff::new(
        node.cfg.backoff_min,
        node.cfg.backoff_max,
        u64::from(node.me()),
    );
    let mut last_failure: Option<String> = None;
    loop {
        if node.draining.is_cancelled() {
            return;
        }
        // Dial only while no link is up.
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = up.wait_for(|u| !*u) => if r.is_err() { return },
        }
        if node.stats.state() == LinkState::Down {
            node.stats.set_state(LinkState::Connecting);
        }
        let attempt = async {
            let sock = tokio::time::timeout(node.cfg.handshake_timeout, TcpStream::connect(&peer))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| format!("cannot connect: {e}"))?;
            let _ = sock.set_nodelay(true);
            let addr = sock
                .peer_addr()
                .map_or_else(|_| peer.clone(), |a| a.to_string());
            match authenticate(&node, Box::pin(sock), &addr).await {
                Ok(conn) => Ok(offer(&offers, conn, node.me(), addr).await),
                Err(e) => {
                    note_refusal(&node, &e);
                    Err(e.to_string())
                }
            }
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(true) => {
                backoff.reset();
                last_failure = None;
                continue;
            }
            Ok(false) => {}
            Err(why) => {
                if last_failure.as_deref() != Some(why.as_str()) {
                    tracing::warn!(
                        "twin {peer}: {why} (retrying with backoff up to {:?})",
                        node.cfg.backoff_max
                    );
                    last_failure = Some(why);
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
            // An incoming connection became the link meanwhile.
            _ = up.wait_for(|u| *u) => { backoff.reset(); last_failure = None; }
        }
    }
}

/// Capped exponential backoff with ±25 % jitter, so two nodes that lost the
/// link together do not redial in lockstep.
pub struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let t = crate::version::now_ms();
        Backoff {
            min,
            max,
            cur: min,
            rng: (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t) | 1,
        }
    }

    pub fn reset(&mut self) {
        self.cur = self.min;
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs no more.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        let quarter = base.as_micros() as u64 / 4;
        let jitter = if quarter == 0 {
            0
        } else {
            self.rng % (2 * quarter)
        };
        Duration::from_micros(base.as_micros() as u64 - quarter + jitter).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_logs_are_rate_limited() {
        let mut r = RateLimit::default();
        for _ in 0..LOG_BURST {
            assert_eq!(r.allow(), Some(0));
        }
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.refilled -= LOG_REFILL;
        assert_eq!(
            r.allow(),
            Some(2),
            "one more, saying how many were left out"
        );
        assert_eq!(r.allow(), None);
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 3);
        let d: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(75) && d[0] <= Duration::from_millis(125));
        assert!(d[3] >= Duration::from_millis(600));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(5)));
        assert!(d[11] >= Duration::from_millis(3750));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
