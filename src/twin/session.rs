//! One established link: Positions both ways, then the sender and the
//! receiver run side by side until the link dies or is stopped.
//!
//! The sender ships live records from the outbox and, at link-up and after
//! every queue overflow, a table scan of everything newer than the twin's
//! resume point, interleaved (live records first, then one scan chunk).
//! Because both are idempotent under the conflict rule, nothing has to be
//! ordered between them. It moves the twin's resume point only with
//! [`Frame::Synced`], and only when no gap is open: while a scan runs, the
//! twin's resume point stays where the gap began.
//!
//! The receiver applies records under the conflict rule, counts conflicts
//! and duplicates, and lets the sender acknowledge what it applied.

use super::convert::{to_mutation, to_record};
use super::framed::{FrameReader, FrameWriter, IoError};
use super::handshake::Peer;
use super::outbox::Outbox;
use super::stats::{CatchupKind, TwinStats};
use super::{blocking, Applied, ScanCursor, TwinConfig, TwinStore};
use crate::protocol::twin::{record_wire_len, BatchWriter, Frame, Position, Record};
use crate::version::{now_ms, Version};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// A batch is written once it holds this many bytes (or the queue is empty),
/// so live records and scan chunks take turns on the socket.
const BATCH_TARGET: usize = 1 << 20;
/// Unacknowledged batches remembered for `repl_lag_ms`.
const LAG_ENTRIES: usize = 4096;

/// State of the twin module that outlives a link.
pub struct Node {
    pub store: Arc<dyn TwinStore>,
    /// Walks the table for catch-ups, at a lower CPU priority than clients.
    pub scanner: super::scanner::Scanner,
    pub cfg: TwinConfig,
    pub stats: Arc<TwinStats>,
    /// Per origin: the highest seq applied from it (on the last link) and the
    /// version its sender told us we hold everything up to (`Synced`).
    pub positions: Mutex<HashMap<u16, Position>>,
    /// Cancelled at shutdown: ship what is queued, close, and wait for the
    /// twin to have applied it ([`run`]).
    pub draining: CancellationToken,
    /// This link's side of the mutation stream's acknowledgements: under
    /// `--replication-ack` writers wait on it.
    pub ack: Arc<crate::mutation::AckHandle>,
}

impl Node {
    pub fn me(&self) -> u16 {
        self.store.hlc().node()
    }

    pub fn positions(&self) -> Vec<Position> {
        let mut v: Vec<Position> = lock(&self.positions).values().copied().collect();
        v.sort_by_key(|p| p.origin);
        v
    }

    fn update_position(&self, origin: u16, f: impl FnOnce(&mut Position)) {
        let mut g = lock(&self.positions);
        f(g.entry(origin).or_insert(Position {
            origin,
            seq: 0,
            version: 0,
        }));
    }
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("the twin refused the link ({reason:?}): {message}")]
    Refused {
        reason: crate::protocol::twin::RefuseReason,
        message: String,
    },
    #[error("no frame from the twin for {0:?}: link considered dead")]
    Dead(Duration),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("stopped")]
    Stopped,
}

/// What the sender and the receiver of one link share.
struct Link {
    peer: u16,
    /// Highest live seq of the twin applied on this link (to acknowledge).
    applied_seq: AtomicU64,
    /// Wakes an idle sender when there is something to acknowledge.
    applied: tokio::sync::Notify,
    /// (last seq of a shipped batch, write time of its oldest record).
    unacked: Mutex<VecDeque<(u64, u64)>>,
    /// The twin's fence to answer (0: none), and the last one answered.
    fence_seen: AtomicU64,
    /// Our fence the twin answered (the drain's receipt).
    fence_acked: AtomicU64,
    fenced: tokio::sync::Notify,
}

/// The token of the fence a drain sends.
const DRAIN_FENCE: u64 = 1;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The version a scan starts above, for a twin whose resume point is `p`.
pub fn scan_floor(p: u64, margin_ms: u64) -> u64 {
    if p == 0 {
        return 0;
    }
    Version::floor_for_millis(Version::from_raw(p).millis().saturating_sub(margin_ms)).get()
}

/// Run an authenticated link until it ends. Sends our Positions, reads the
/// twin's (a Refuse there means the twin kept another connection).
pub async fn run<R, W>(
    node: &Node,
    mut rd: FrameReader<R>,
    mut wr: FrameWriter<W>,
    peer: Peer,
    outbox: &mut Outbox,
    cancel: &CancellationToken,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.send(&Frame::Positions {
        entries: node.positions(),
    })
    .await?;
    let theirs = match timeout(node.cfg.handshake_timeout, rd.read()).await {
        Err(_) => return Err(SessionError::Dead(node.cfg.handshake_timeout)),
        Ok(Ok(Frame::Positions { entries })) => entries,
        Ok(Ok(Frame::Refuse { reason, message })) => {
            return Err(SessionError::Refused { reason, message })
        }
        Ok(Ok(_)) => return Err(SessionError::Protocol("expected positions")),
        Ok(Err(e)) => return Err(e.into()),
    };
    let me = node.me();
    let resume = theirs
        .iter()
        .find(|p| p.origin == me)
        .map_or(0, |p| p.version);
    let link = Link {
        peer: peer.node,
        applied_seq: AtomicU64::new(0),
        applied: tokio::sync::Notify::new(),
        unacked: Mutex::new(VecDeque::new()),
        fence_seen: AtomicU64::new(0),
        fence_acked: AtomicU64::new(0),
        fenced: tokio::sync::Notify::new(),
    };
    let st = &node.stats;
    st.shipped_seq.store(0, Ordering::SeqCst);
    st.acked_seq.store(0, Ordering::SeqCst);
    st.oldest_unacked_ms.store(0, Ordering::Relaxed);
    let result = tokio::select! {
        r = receive(node, &link, &mut rd) => r,
        // Ok only once drained: the twin answered our fence.
        r = send(node, &link, &mut wr, outbox, resume) => r,
        _ = cancel.cancelled() => Err(SessionError::Stopped),
    };
    wr.shutdown().await;
    st.oldest_unacked_ms.store(0, Ordering::Relaxed);
    st.scan_active.store(false, Ordering::Relaxed);
    result
}

// ---------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------

async fn receive<R: AsyncRead + Unpin>(
    node: &Node,
    link: &Link,
    rd: &mut FrameReader<R>,
) -> Result<(), SessionError> {
    let st = &node.stats;
    let me = node.me();
    loop {
        let frame = match timeout(node.cfg.dead_after, rd.read()).await {
            Err(_) => return Err(SessionError::Dead(node.cfg.dead_after)),
            Ok(f) => f?,
        };
        match frame {
            Frame::Batch { origin, records } => {
                if origin != link.peer {
                    return Err(SessionError::Protocol("batch from another origin"));
                }
                apply_batch(node, link, records);
            }
            Frame::Ack { origin, seq } if origin == me => {
                st.acked_seq.fetch_max(seq, Ordering::SeqCst);
                release_acks(node);
                let mut q = lock(&link.unacked);
                while q.front().is_some_and(|(s, _)| *s <= seq) {
                    q.pop_front();
                }
                let oldest = q.front().map_or(0, |(_, t)| *t);
                st.oldest_unacked_ms.store(oldest, Ordering::Relaxed);
            }
            Frame::Ack { .. } => return Err(SessionError::Protocol("ack for another origin")),
            Frame::Ping { wall_ms } => {
                let skew = i64::try_from(wall_ms).unwrap_or(i64::MAX)
                    - i64::try_from(now_ms()).unwrap_or(0);
                st.clock_skew_ms.store(skew, Ordering::Relaxed);
            }
            Frame::Synced { origin, version } => {
                if origin != link.peer {
                    return Err(SessionError::Protocol("synced for another origin"));
                }
                node.update_position(origin, |p| p.version = p.version.max(version));
                caught_up(node);
            }
            // Frames are applied in order: everything before it is applied.
            Frame::Fence { token } => {
                link.fence_seen.store(token, Ordering::SeqCst);
                link.applied.notify_one();
            }
            Frame::FenceAck { token } => {
                link.fence_acked.store(token, Ordering::SeqCst);
                link.fenced.notify_one();
            }
            Frame::Refuse { reason, message } => {
                return Err(SessionError::Refused { reason, message })
            }
            Frame::Hello { .. } | Frame::Auth { .. } | Frame::Positions { .. } => {
                return Err(SessionError::Protocol(
                    "handshake frame on an established link",
                ))
            }
        }
    }
}

/// The twin's link-up scan is complete: we hold everything it had.
fn caught_up(node: &Node) {
    let r = &node.cfg.readiness;
    match r.synced() {
        super::Serving::CatchingUp => tracing::info!(
            "caught up with the twin after {:.1} s ({} records applied): serving clients",
            r.caught_up_after().map_or(0.0, |d| d.as_secs_f64()),
            node.stats.records_applied.load(Ordering::Relaxed)
        ),
        super::Serving::Alone => {
            tracing::info!("caught up with the twin again: no longer serving alone")
        }
        super::Serving::Ready => {}
    }
}

/// Tell waiting writers (`--replication-ack`) what the twin has: everything
/// up to its last ack, and, once every shipped record is acknowledged, also
/// the records taken from the queue without shipping (kinds the link does
/// not carry). Loads in this order: a record counted in `taken` was counted
/// in `shipped` first.
fn release_acks(node: &Node) {
    let st = &node.stats;
    let taken = st.taken_seq.load(Ordering::SeqCst);
    let shipped = st.shipped_seq.load(Ordering::SeqCst);
    let acked = st.acked_seq.load(Ordering::SeqCst);
    node.ack.ack(if shipped <= acked { taken } else { acked });
}

fn apply_batch(node: &Node, link: &Link, records: Vec<Record>) {
    let st = &node.stats;
    let bytes: usize = records.iter().map(record_wire_len).sum::<usize>() + 11;
    st.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    let mut max_seq = 0;
    let (mut applied, mut stale, mut dup, mut nomem) = (0u64, 0u64, 0u64, 0u64);
    let store = &node.store;
    blocking(|| {
        for r in records {
            max_seq = max_seq.max(r.origin_seq);
            match store.apply_remote(&to_mutation(r)) {
                Applied::Applied => applied += 1,
                Applied::Stale => stale += 1,
                Applied::Duplicate => dup += 1,
                Applied::NoMemory => nomem += 1,
            }
        }
    });
    st.records_applied.fetch_add(applied, Ordering::Relaxed);
    st.conflicts.fetch_add(stale, Ordering::Relaxed);
    st.duplicates.fetch_add(dup, Ordering::Relaxed);
    if nomem > 0 {
        st.apply_no_memory.fetch_add(nomem, Ordering::Relaxed);
    }
    if max_seq > 0 {
        link.applied_seq.fetch_max(max_seq, Ordering::Relaxed);
        link.applied.notify_one();
        node.update_position(link.peer, |p| p.seq = p.seq.max(max_seq));
    }
}

// ---------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------

/// A table scan in progress.
struct Scan {
    cursor: ScanCursor,
    floor: u64,
    /// Our clock when it started: once it ends, the twin holds everything of
    /// ours up to here.
    start: u64,
    /// For progress reports: when it started, records and bytes shipped, and
    /// when progress was last logged.
    began: Instant,
    records: u64,
    bytes: u64,
    logged: Instant,
    /// Some: a replay from the backlog instead of a table scan.
    replay: Option<VecDeque<Arc<crate::mutation::Mutation>>>,
    kind: CatchupKind,
}

/// A running scan logs its progress this often.
const SCAN_LOG_EVERY: Duration = Duration::from_secs(5);

/// The sender's bookkeeping.
struct Sender {
    scan: Option<Scan>,
    /// The twin's resume point for us, as we last set it (or it presented).
    synced: u64,
    /// Highest version of a live record shipped on this link.
    live_max: u64,
    acked_sent: u64,
    next_ack: Instant,
    next_ping: Instant,
    /// When an idle link next moves the twin's resume point to the clock.
    next_clock_sync: Instant,
}

async fn send<W: AsyncWrite + Unpin>(
    node: &Node,
    link: &Link,
    wr: &mut FrameWriter<W>,
    outbox: &mut Outbox,
    resume: u64,
) -> Result<(), SessionError> {
    // The link-up scan covers whatever overflowed while the link was down.
    outbox.gauge.take_overflowed();
    let now = Instant::now();
    let mut s = Sender {
        scan: None,
        synced: resume,
        live_max: 0,
        acked_sent: 0,
        next_ack: now,
        next_ping: now,
        next_clock_sync: now,
    };
    // A short cut: the backlog still holds everything above the twin's
    // resume point, so replay it instead of walking the table.
    let floor = scan_floor(resume, node.cfg.resume_margin_ms);
    match (resume > 0)
        .then(|| outbox.backlog.replay_above(floor))
        .flatten()
    {
        Some(records) => start_replay(node, &mut s, floor, records),
        None => start_scan(node, &mut s, "link up"),
    }
    loop {
        if node.draining.is_cancelled()
            && s.scan.is_none()
            && outbox.peek().is_none()
            && outbox.gauge.queued_bytes() == 0
        {
            return fence(node, link, wr, &mut s).await;
        }
        if outbox.gauge.take_overflowed() {
            start_scan(node, &mut s, "outgoing queue overflowed");
        }
        // A paced catch-up ahead of its rate waits (live records do not).
        let paced = s.scan.as_ref().and_then(|sc| pace(node, sc));
        let busy = if outbox.peek().is_some() {
            ship_live(node, link, wr, outbox, &mut s);
            true
        } else if s.scan.is_some() && paced.is_none() {
            ship_scan_chunk(node, wr, &mut s).await;
            true
        } else {
            false
        };
        // Idle: every record issued so far has been shipped (up to the
        // records a writer is pushing this instant, which the resume margin
        // covers), so the twin's resume point may follow the clock.
        let idle = !busy && outbox.peek().is_none() && outbox.gauge.queued_bytes() == 0;
        housekeeping(node, link, wr, &mut s, idle);
        if !wr.buf.is_empty() {
            let n = wr.flush().await?;
            node.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        if busy {
            tokio::task::yield_now().await;
        } else {
            // Idle and nothing to acknowledge: sleep until the next ping
            // rather than ticking every ack interval.
            let ack_due = link.applied_seq.load(Ordering::Relaxed) > s.acked_sent
                || (s.scan.is_none() && s.live_max > s.synced);
            let mut wake = if ack_due {
                s.next_ack.min(s.next_ping)
            } else {
                s.next_ping
            };
            if let Some(due) = paced {
                wake = wake.min(due);
            }
            tokio::select! {
                _ = outbox.ready() => {}
                _ = link.applied.notified(), if !ack_due => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = node.draining.cancelled() => {}
            }
        }
    }
}

/// The end of a drain: everything is written; send a fence and wait (at most
/// `dead_after`) for the twin to answer it, which it does once it has applied
/// every frame before it. Meanwhile keep acknowledging the twin's records.
async fn fence<W: AsyncWrite + Unpin>(
    node: &Node,
    link: &Link,
    wr: &mut FrameWriter<W>,
    s: &mut Sender,
) -> Result<(), SessionError> {
    housekeeping(node, link, wr, s, false);
    wr.push(&Frame::Fence { token: DRAIN_FENCE });
    let deadline = Instant::now() + node.cfg.dead_after;
    loop {
        let n = wr.flush().await?;
        node.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        if link.fence_acked.load(Ordering::SeqCst) == DRAIN_FENCE {
            return Ok(());
        }
        tokio::select! {
            _ = link.fenced.notified() => {}
            _ = link.applied.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return Err(SessionError::Dead(node.cfg.dead_after)),
        }
        housekeeping(node, link, wr, s, false);
    }
}

/// When a paced catch-up may send its next chunk, if not yet: `--replication-catchup-rate`
/// bytes per second since it began. A drain is never paced (it has a deadline).
fn pace(node: &Node, scan: &Scan) -> Option<Instant> {
    let rate = node.cfg.catchup_rate;
    if rate == 0 || node.draining.is_cancelled() {
        return None;
    }
    let due = scan.began + Duration::from_secs_f64(scan.bytes as f64 / rate as f64);
    (due > Instant::now()).then_some(due)
}

fn start_replay(
    node: &Node,
    s: &mut Sender,
    floor: u64,
    records: VecDeque<Arc<crate::mutation::Mutation>>,
) {
    tracing::debug!(
        "twin: replaying {} records above version {floor} from the backlog",
        records.len()
    );
    let st = &node.stats;
    st.backlog_replays.fetch_add(1, Ordering::Relaxed);
    st.backlog_replayed
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    begin(node, s, floor, Some(records), CatchupKind::Backlog);
}

fn start_scan(node: &Node, s: &mut Sender, why: &str) {
    let floor = scan_floor(s.synced, node.cfg.resume_margin_ms);
    tracing::debug!("twin: table scan above version {floor} ({why})");
    node.stats.scans.fetch_add(1, Ordering::Relaxed);
    let kind = if floor == 0 {
        node.stats.full_syncs.fetch_add(1, Ordering::Relaxed);
        CatchupKind::Full
    } else {
        CatchupKind::Scan
    };
    begin(node, s, floor, None, kind);
}

/// Open a gap repair: a scan, or a replay of `replay`.
fn begin(
    node: &Node,
    s: &mut Sender,
    floor: u64,
    replay: Option<VecDeque<Arc<crate::mutation::Mutation>>>,
    kind: CatchupKind,
) {
    let now = Instant::now();
    s.scan = Some(Scan {
        cursor: ScanCursor::default(),
        floor,
        start: node.store.hlc().last().get(),
        began: now,
        records: 0,
        bytes: 0,
        logged: now,
        replay,
        kind,
    });
    node.stats.scan_active.store(true, Ordering::Relaxed);
    node.stats.scan_percent.store(0, Ordering::Relaxed);
}

/// Largest payload to put in one batch (the twin accepts up to max_frame).
fn batch_limit(node: &Node) -> usize {
    node.cfg.max_frame.min(BATCH_TARGET)
}

/// Whether `rec` fits the batch `w` (a batch always takes its first record
/// if it fits the twin's frame limit at all).
fn fits(node: &Node, w: &BatchWriter, rec: &Record) -> bool {
    let after = w.bytes() + record_wire_len(rec) - 4;
    if w.count() == 0 {
        after <= node.cfg.max_frame
    } else {
        after <= batch_limit(node)
    }
}

fn ship_live<W>(
    node: &Node,
    link: &Link,
    wr: &mut FrameWriter<W>,
    outbox: &mut Outbox,
    s: &mut Sender,
) {
    let st = &node.stats;
    let mut w = BatchWriter::begin(&mut wr.buf, node.me());
    let (mut first_ms, mut last_seq) = (0u64, 0u64);
    while let Some(m) = outbox.peek() {
        if !m.is_shipped() {
            outbox.take();
            continue;
        }
        let Some(rec) = to_record(m) else {
            outbox.take();
            continue;
        };
        if !fits(node, &w, &rec) {
            if w.count() == 0 {
                // Larger than the twin's frame limit: it can never cross.
                tracing::warn!(
                    "twin: a record of {} bytes exceeds the link's frame limit and is not replicated",
                    record_wire_len(&rec)
                );
                outbox.take();
                continue;
            }
            break;
        }
        w.push(&mut wr.buf, &rec);
        if first_ms == 0 {
            first_ms = Version::from_raw(rec.version).millis();
        }
        last_seq = last_seq.max(rec.origin_seq);
        s.live_max = s.live_max.max(rec.version);
        outbox.take();
    }
    let count = w.count();
    w.finish(&mut wr.buf);
    // Shipped before taken (see release_acks).
    st.shipped_seq.fetch_max(last_seq, Ordering::SeqCst);
    st.taken_seq.fetch_max(outbox.taken_seq(), Ordering::SeqCst);
    if count == 0 {
        return;
    }
    st.records_sent
        .fetch_add(u64::from(count), Ordering::Relaxed);
    let mut q = lock(&link.unacked);
    if q.is_empty() {
        st.oldest_unacked_ms.store(first_ms, Ordering::Relaxed);
    }
    if q.len() < LAG_ENTRIES {
        q.push_back((last_seq, first_ms));
    } else if let Some(back) = q.back_mut() {
        back.0 = last_seq;
    }
}

async fn ship_scan_chunk<W>(node: &Node, wr: &mut FrameWriter<W>, s: &mut Sender) {
    let Some(scan) = s.scan.as_mut() else {
        return;
    };
    let (cursor, floor, max) = (scan.cursor.clone(), scan.floor, node.cfg.scan_chunk);
    let store = &node.store;
    let (chunk, next) = match scan.replay.as_mut() {
        Some(q) => {
            let chunk: Vec<_> = q.drain(..max.min(q.len())).collect();
            (chunk, (!q.is_empty()).then_some(cursor))
        }
        None => match node.scanner.scan(cursor.clone(), floor, max).await {
            Some(chunk) => chunk,
            None => blocking(|| store.scan(cursor, floor, max)),
        },
    };
    let st = &node.stats;
    let before = wr.buf.len();
    let mut w = BatchWriter::begin(&mut wr.buf, node.me());
    let mut sent = 0u64;
    for m in &chunk {
        let Some(mut rec) = to_record(m) else {
            continue;
        };
        // Scan records are not part of the live sequence: no ack or lag.
        rec.origin_seq = 0;
        if !fits(node, &w, &rec) {
            if w.count() == 0 {
                continue;
            }
            w.finish(&mut wr.buf);
            w = BatchWriter::begin(&mut wr.buf, node.me());
            if !fits(node, &w, &rec) {
                continue;
            }
        }
        w.push(&mut wr.buf, &rec);
        sent += 1;
    }
    w.finish(&mut wr.buf);
    st.records_sent.fetch_add(sent, Ordering::Relaxed);
    if scan.replay.is_none() {
        st.scan_records.fetch_add(sent, Ordering::Relaxed);
    }
    let bytes = wr.buf.len().saturating_sub(before) as u64;
    scan.records += sent;
    scan.bytes += bytes;
    st.catchup_bytes.fetch_add(bytes, Ordering::Relaxed);
    match next {
        Some(c) => {
            let pct = match &scan.replay {
                Some(q) => (scan.records * 100 / (scan.records + q.len() as u64).max(1)) as u8,
                None => store.scan_percent(&c),
            };
            st.scan_percent.store(pct, Ordering::Relaxed);
            scan.cursor = c;
            if scan.logged.elapsed() >= SCAN_LOG_EVERY {
                scan.logged = Instant::now();
                let secs = scan.began.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    "twin catch-up scan: {} records, {:.1} MiB sent, {pct} % of RAM walked{} ({:.0} records/s)",
                    scan.records,
                    scan.bytes as f64 / 1048576.0,
                    if scan.cursor.disk.is_some() { ", now the items held only on disk" } else { "" },
                    scan.records as f64 / secs
                );
            }
        }
        None => {
            st.scan_active.store(false, Ordering::Relaxed);
            st.scan_percent.store(100, Ordering::Relaxed);
            let took = scan.began.elapsed();
            st.note_catchup(scan.kind, scan.records, scan.bytes, took);
            let secs = took.as_secs_f64();
            if secs >= 1.0 {
                tracing::info!(
                    "twin catch-up ({}) done: {} records, {:.1} MiB in {secs:.1} s",
                    scan.kind.name(),
                    scan.records,
                    scan.bytes as f64 / 1048576.0
                );
            }
            let done = scan.start.max(s.live_max);
            s.scan = None;
            s.synced = s.synced.max(done);
            wr.push(&Frame::Synced {
                origin: node.me(),
                version: s.synced,
            });
            tracing::debug!(
                "twin: table scan done, twin synced up to version {}",
                s.synced
            );
        }
    }
}

fn housekeeping<W>(node: &Node, link: &Link, wr: &mut FrameWriter<W>, s: &mut Sender, idle: bool) {
    release_acks(node);
    let fence = link.fence_seen.swap(0, Ordering::SeqCst);
    if fence != 0 {
        wr.push(&Frame::FenceAck { token: fence });
    }
    let now = Instant::now();
    if now >= s.next_ack {
        s.next_ack = now + node.cfg.ack_interval;
        let applied = link.applied_seq.load(Ordering::Relaxed);
        if applied > s.acked_sent {
            s.acked_sent = applied;
            wr.push(&Frame::Ack {
                origin: link.peer,
                seq: applied,
            });
        }
        // No gap open: everything live shipped so far is the twin's; and
        // when idle, everything up to now (a record issued later gets a
        // version at or above the wall clock of its issue), so that a
        // resume point kept at a clean stop is no older than the stop.
        if s.scan.is_none() {
            let mut synced = s.synced.max(s.live_max);
            if idle && now >= s.next_clock_sync {
                s.next_clock_sync = now + node.cfg.ping_interval;
                synced = synced.max(Version::floor_for_millis(now_ms()).get());
            }
            if synced > s.synced {
                s.synced = synced;
                wr.push(&Frame::Synced {
                    origin: node.me(),
                    version: s.synced,
                });
            }
        }
    }
    if now >= s.next_ping {
        s.next_ping = now + node.cfg.ping_interval;
        wr.push(&Frame::Ping { wall_ms: now_ms() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_floor_leaves_a_margin() {
        assert_eq!(scan_floor(0, 2000), 0);
        let v = Version::floor_for_millis(1_800_000_010_000).get() | 7;
        let f = scan_floor(v, 2000);
        assert_eq!(f, Version::floor_for_millis(1_800_000_008_000).get());
        assert!(f < v);
        assert_eq!(scan_floor(5, 2000), Version::floor_for_millis(0).get());
    }
}
