//! The mutation stream: one ordered feed of every state change.
//!
//! Every change the store makes (store, delete, touch, flush, expiry, eviction)
//! gets a monotonic sequence number and, when anyone listens, a [`Mutation`]
//! record carrying the *resulting* state: an `append` or `incr` is described by
//! the item it produced, so applying records is idempotent and replaying them in
//! sequence order reproduces the table. Persistence and twin replication are
//! both subscribers of this one stream; neither has its own hooks.
//!
//! Costs: with no subscriber, publishing is a single `fetch_add` and no record is
//! built. With subscribers, the sequence number is taken and the record sent
//! under one lock, so every subscriber sees records in exactly sequence order
//! (publishers already hold the key's shard lock, so per-key order is the order
//! of the table).
//!
//! Acknowledgements: a subscriber can be *blocking* (e.g. `fsync=always`); then
//! writers wait in [`MutationStream::wait_acked`] until it has acknowledged their
//! sequence number before replying. Which number: [`take_published`] returns
//! the highest client-visible record (store, touch, delete, flush) the calling
//! thread published since it last asked, so a connection waits for exactly its
//! own writes, and not at all for refused writes or for reads that merely
//! reclaimed an expired item. When no blocking subscriber exists,
//! [`MutationStream::must_wait`] is false and connections never wait. A
//! subscriber that cannot make progress (disk full) marks itself unhealthy;
//! the engine then refuses writes with an error instead of accepting data it
//! cannot keep. Blocking subscribers always gate writes this way; a
//! non-blocking one can opt in ([`SubscribeOptions::gate_writes`]), as the
//! `fsync=everysec` persistence writer does: it does not make replies wait,
//! but a full disk must still turn writes into errors.

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

thread_local! {
    static PUBLISHED: Cell<u64> = const { Cell::new(0) };
}

/// The highest sequence number of a client-visible record (`Store`, `Touch`,
/// `Delete`, `Flush`) this thread published since the last call, or 0; resets
/// it. A connection calls it before and after processing a batch of requests
/// (no `.await` in between) to learn which number its replies must wait for.
pub fn take_published() -> u64 {
    PUBLISHED.with(|c| c.replace(0))
}

/// What kind of change a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A value was written (set/add/replace/cas/append/prepend/incr/decr, meta
    /// variants). `item` holds the full resulting item.
    Store,
    /// Only the expiry (or meta stale/win state) changed; `item` holds the result.
    Touch,
    /// The key was deleted by a client.
    Delete,
    /// The item expired or was found flushed and was reclaimed. Replicas expire on
    /// their own from the absolute time; persistence removes it from disk.
    Expire,
    /// The item was evicted from RAM for lack of memory. Not a logical delete:
    /// persistence keeps it on disk, replication ships nothing.
    Evict,
    /// `flush_all`: see [`Mutation::flush`].
    Flush,
}

/// The state of an item after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemState {
    pub value: Bytes,
    pub flags: u32,
    /// Absolute Unix expiry, 0 = never.
    pub exptime: u32,
    pub cas: u64,
    /// The version of this state (`crate::version::Version`): the conflict
    /// rule's order. Equal to `cas` for writes that change the value (when CAS
    /// is on); a touch keeps the cas and gets a new version. 0 in a state a
    /// command builds means "stamp it now": the store takes the next version
    /// under the key's lock.
    pub version: u64,
    /// Meta-protocol state bits (see `store::item::Bits`), so a replica can
    /// reproduce stale/win-token state.
    pub bits: u8,
}

/// The flush state after a `flush_all`, as records carry it (the resulting
/// state, like every record). Every item whose version is at or below `hidden`
/// is invisible; once the clock reaches `at` (Unix seconds, 0 = no delayed
/// flush pending), so is every item at or below `ceiling`. An immediate flush
/// raises `hidden` to its own version; `flush_all N` sets `at` = N and
/// `ceiling` = the last version of second N - 1, so what is written from then
/// on survives it. `version` is the latest flush's own stamp: a node applies a
/// twin's flush only if it is newer than the last flush it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushSpec {
    pub hidden: u64,
    pub at: u32,
    pub ceiling: u64,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    pub seq: u64,
    pub op: Op,
    /// Empty for `Flush`.
    pub key: Bytes,
    /// Present for `Store` and `Touch`.
    pub item: Option<ItemState>,
    /// The change's version (`crate::version::Version`): the conflict rule's
    /// order, stamped by the node that accepted the write. For `Delete` it is
    /// the tombstone's version; for `Expire` the version of the item that
    /// expired; 0 for `Evict`.
    pub version: u64,
    /// Applied from the twin (or loaded), not accepted from a client here: the
    /// disk writer keeps it, the twin link never ships it back.
    pub remote: bool,
    /// Present for `Flush`.
    pub flush: Option<FlushSpec>,
}

impl Mutation {
    /// About how many bytes the record holds (for byte-capped queues).
    pub fn size(&self) -> usize {
        64 + self.key.len() + self.item.as_ref().map_or(0, |i| i.value.len())
    }

    /// Whether the twin link ships it: client changes accepted here.
    pub fn is_shipped(&self) -> bool {
        !self.remote && matches!(self.op, Op::Store | Op::Touch | Op::Delete | Op::Flush)
    }
}

/// Handle given to a subscriber: records arrive on `rx`; acknowledge with `ack`.
pub struct Subscription {
    pub rx: Receiver<Arc<Mutation>>,
    pub ack: Arc<AckHandle>,
    /// Bytes queued and records dropped, for a byte-capped subscription
    /// ([`SubscribeOptions::byte_cap`]); unused otherwise.
    pub gauge: Arc<QueueGauge>,
}

/// The fill of a byte-capped, lossy subscription. Publishers never wait for
/// such a subscriber: a record that would take the queue over its cap is
/// dropped and counted, and the subscriber learns from
/// [`QueueGauge::take_overflowed`] that it has a gap to repair by other means
/// (the twin link rescans the table). The consumer reports each record it takes
/// with [`QueueGauge::consumed`].
#[derive(Debug, Default)]
pub struct QueueGauge {
    cap: usize,
    queued: AtomicUsize,
    overflows: AtomicU64,
    overflowed: AtomicBool,
}

impl QueueGauge {
    /// A gauge for a queue of at most `cap` bytes (0: unbounded, never lossy).
    pub fn new(cap: usize) -> Self {
        QueueGauge {
            cap,
            ..Default::default()
        }
    }

    /// Try to account for a record of `size` bytes; false = over the cap (dropped).
    fn admit(&self, size: usize) -> bool {
        if self.cap == 0 {
            return true;
        }
        let before = self.queued.fetch_add(size, Ordering::Relaxed);
        if before + size > self.cap && before > 0 {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.dropped();
            return false;
        }
        true
    }

    fn dropped(&self) {
        self.overflows.fetch_add(1, Ordering::Relaxed);
        self.overflowed.store(true, Ordering::SeqCst);
    }

    /// The consumer took `m` off the queue.
    pub fn consumed(&self, m: &Mutation) {
        if self.cap != 0 {
            self.queued.fetch_sub(m.size(), Ordering::Relaxed);
        }
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Records dropped for lack of room, ever.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Whether records were dropped since the last call; resets the flag.
    pub fn take_overflowed(&self) -> bool {
        self.overflowed.swap(false, Ordering::SeqCst)
    }
}

/// The subscriber's side of acknowledgements.
#[derive(Debug)]
pub struct AckHandle {
    acked: watch::Sender<u64>,
    healthy: AtomicBool,
    blocking: bool,
    /// A blocking subscriber that may keep a writer waiting at most this long
    /// (the twin under `--replication-ack`); then the writer is answered.
    timeout: Option<std::time::Duration>,
    /// Set while the subscriber cannot acknowledge anything (the twin link is
    /// down): writers are answered without waiting for it.
    waived: AtomicBool,
    /// Writer batches that waited for this subscriber.
    pub waits: AtomicU64,
    /// Waits ended by `timeout`.
    pub timeouts: AtomicU64,
    /// Waits skipped because the subscriber was waived.
    pub waivers: AtomicU64,
}

/// How a subscriber takes part in writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    /// Writers wait for this subscriber's acknowledgement before replying.
    pub blocking: bool,
    /// While this subscriber is unhealthy, the engine refuses writes. Implied by `blocking`.
    pub gate_writes: bool,
    /// With `blocking`: a writer waits at most this long for this subscriber,
    /// then is answered anyway (counted in [`AckHandle::timeouts`]).
    pub ack_timeout: Option<std::time::Duration>,
    /// Bound the queue by bytes instead of by count, and never make a publisher
    /// wait: records over the cap are dropped and counted in the
    /// [`Subscription::gauge`]. Only for non-blocking subscribers that can
    /// repair a gap themselves (the twin link).
    pub byte_cap: Option<usize>,
    /// Receive only records accepted here, not those applied from the twin
    /// (the twin link, which never ships them back). When every subscriber
    /// says so, a remote record is not even built.
    pub local_only: bool,
}

impl AckHandle {
    /// Everything up to and including `seq` has been made durable / delivered.
    pub fn ack(&self, seq: u64) {
        self.acked.send_if_modified(|v| {
            if seq > *v {
                *v = seq;
                true
            } else {
                false
            }
        });
    }

    /// Report that the subscriber cannot keep up with writes (e.g. disk full), or has recovered.
    /// Waiting writers are woken so they can fail instead of hanging.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
        self.acked.send_modify(|_| {});
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Stop (or resume) making writers wait for this subscriber; waiting
    /// writers are woken and answered.
    pub fn set_waived(&self, waived: bool) {
        self.waived.store(waived, Ordering::SeqCst);
        self.acked.send_modify(|_| {});
    }

    pub fn is_waived(&self) -> bool {
        self.waived.load(Ordering::SeqCst)
    }

    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }
}

/// Why a writer's acknowledgement did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("a blocking subscriber is unhealthy (e.g. disk write failed)")]
    Unhealthy,
    #[error("the subscriber went away")]
    Closed,
}

struct Sink {
    tx: Sender<Arc<Mutation>>,
    local_only: bool,
    /// Set for byte-capped, lossy sinks.
    lossy: Option<Arc<QueueGauge>>,
}

impl Sink {
    /// Hand `m` over; false once the subscriber is gone.
    fn send(&self, m: &Arc<Mutation>) -> bool {
        match &self.lossy {
            None => self.tx.send(m.clone()).is_ok(),
            Some(g) => {
                // Dropped for lack of room: counted, and the sink stays (a
                // gone subscriber is noticed at the next record that fits).
                !g.admit(m.size()) || self.tx.send(m.clone()).is_ok()
            }
        }
    }
}

#[derive(Default)]
struct Sinks {
    senders: Vec<Sink>,
}

impl Sinks {
    fn want_remote(&self) -> bool {
        self.senders.iter().any(|s| !s.local_only)
    }
}

/// The single stream of mutations.
pub struct MutationStream {
    /// Taken by every write on every worker: on a cache line of its own, so it
    /// does not evict what readers share (`active`, the lists).
    last_seq: CachePadded<AtomicU64>,
    active: AtomicBool,
    /// Some subscriber takes records applied from the twin (the disk does).
    remote_wanted: AtomicBool,
    sinks: Mutex<Sinks>,
    acks: Mutex<Vec<Arc<AckHandle>>>,
    /// Snapshot of the blocking ack handles, for lock-free checks on the hot path.
    blocking: arc_list::ArcList,
    /// Ack handles whose health gates writes (blocking ones and opted-in ones).
    gating: arc_list::ArcList,
}

mod arc_list {
    //! A tiny copy-on-write list: readers clone an `Arc<Vec<_>>` under a short lock.
    use super::AckHandle;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub struct ArcList(Mutex<Arc<Vec<Arc<AckHandle>>>>);

    impl ArcList {
        pub fn get(&self) -> Arc<Vec<Arc<AckHandle>>> {
            match self.0.lock() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            }
        }
        pub fn push(&self, h: Arc<AckHandle>) {
            let mut g = match self.0.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let mut v: Vec<_> = g.as_ref().clone();
            v.push(h);
            *g = Arc::new(v);
        }
    }
}

impl Default for MutationStream {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MutationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutationStream")
            .field("last_seq", &self.last_seq())
            .finish()
    }
}

impl MutationStream {
    pub fn new() -> Self {
        Self::starting_at(0)
    }

    /// A stream whose next sequence number is `last + 1` (after a warm restart).
    pub fn starting_at(last: u64) -> Self {
        MutationStream {
            last_seq: CachePadded::new(AtomicU64::new(last)),
            active: AtomicBool::new(false),
            remote_wanted: AtomicBool::new(false),
            sinks: Mutex::new(Sinks::default()),
            acks: Mutex::new(Vec::new()),
            blocking: arc_list::ArcList::default(),
            gating: arc_list::ArcList::default(),
        }
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
    }

    /// Raise the counter so the next number is above `seq` (used when loading persisted data).
    pub fn advance_to(&self, seq: u64) {
        self.last_seq.fetch_max(seq, Ordering::SeqCst);
    }

    /// Register a subscriber. Subscribe before serving clients: records published
    /// concurrently with the subscription itself may be missed. `capacity` bounds
    /// the queue; a full queue makes writers wait (back-pressure), it never drops.
    /// A `blocking` subscriber makes writers wait for its acknowledgement.
    pub fn subscribe(&self, capacity: usize, blocking: bool) -> Subscription {
        self.subscribe_with(
            capacity,
            SubscribeOptions {
                blocking,
                gate_writes: blocking,
                byte_cap: None,
                local_only: false,
                ack_timeout: None,
            },
        )
    }

    /// [`MutationStream::subscribe`] with explicit options.
    pub fn subscribe_with(&self, capacity: usize, opts: SubscribeOptions) -> Subscription {
        // A byte-capped queue is bounded by its gauge; the channel itself must
        // never make a publisher wait.
        let (tx, rx) = match opts.byte_cap {
            Some(_) => crossbeam_channel::unbounded(),
            None => crossbeam_channel::bounded(capacity.max(1)),
        };
        let gauge = Arc::new(QueueGauge::new(opts.byte_cap.unwrap_or(0)));
        let (acked, _) = watch::channel(self.last_seq());
        let blocking = opts.blocking;
        let ack = Arc::new(AckHandle {
            acked,
            healthy: AtomicBool::new(true),
            blocking,
            timeout: opts.ack_timeout.filter(|_| blocking),
            waived: AtomicBool::new(false),
            waits: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            waivers: AtomicU64::new(0),
        });
        {
            let mut sinks = lock(&self.sinks);
            sinks.senders.push(Sink {
                tx,
                local_only: opts.local_only,
                lossy: opts.byte_cap.map(|_| gauge.clone()),
            });
            self.remote_wanted
                .store(sinks.want_remote(), Ordering::SeqCst);
        }
        lock(&self.acks).push(ack.clone());
        if blocking {
            self.blocking.push(ack.clone());
        }
        if blocking || opts.gate_writes {
            self.gating.push(ack.clone());
        }
        self.active.store(true, Ordering::SeqCst);
        Subscription { rx, ack, gauge }
    }

    /// Whether anyone listens (records are only built then).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Take the next sequence number and, if anyone listens, publish the record
    /// `build(seq)`. Returns the sequence number.
    #[inline]
    pub fn publish(&self, build: impl FnOnce(u64) -> Mutation) -> u64 {
        self.publish_from(false, build)
    }

    /// [`MutationStream::publish`] for a record that is `remote` (applied from
    /// the twin) or not: a remote record goes only to subscribers that want
    /// them, and is not built when none does.
    #[inline]
    pub fn publish_from(&self, remote: bool, build: impl FnOnce(u64) -> Mutation) -> u64 {
        if !self.is_active() || (remote && !self.remote_wanted.load(Ordering::Relaxed)) {
            return self.last_seq.fetch_add(1, Ordering::SeqCst) + 1;
        }
        let mut sinks = lock(&self.sinks);
        let seq = self.last_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let m = Arc::new(build(seq));
        if matches!(m.op, Op::Store | Op::Touch | Op::Delete | Op::Flush) {
            PUBLISHED.with(|c| c.set(c.get().max(seq)));
        }
        sinks
            .senders
            .retain(|sink| (remote && sink.local_only) || sink.send(&m));
        seq
    }

    /// Whether writers have to wait for acknowledgements before replying.
    #[inline]
    pub fn must_wait(&self) -> bool {
        self.is_active() && !self.blocking.get().is_empty()
    }

    /// False when a write-gating subscriber reported it cannot persist writes.
    pub fn accepts_writes(&self) -> bool {
        !self.is_active() || self.gating.get().iter().all(|a| a.is_healthy())
    }

    /// All subscribers' ack handles (for stats).
    pub fn ack_handles(&self) -> Vec<Arc<AckHandle>> {
        lock(&self.acks).clone()
    }

    /// Wait until every blocking subscriber acknowledged `seq` (a waived one
    /// is skipped, one with a timeout is waited for at most that long).
    pub async fn wait_acked(&self, seq: u64) -> Result<(), AckError> {
        let handles = self.blocking.get();
        for h in handles.iter().filter(|h| h.blocking) {
            if h.is_waived() {
                h.waivers.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            h.waits.fetch_add(1, Ordering::Relaxed);
            let mut rx = h.acked.subscribe();
            let wait = rx.wait_for(|v| *v >= seq || !h.is_healthy() || h.is_waived());
            let res = match h.timeout {
                None => wait.await,
                Some(t) => match tokio::time::timeout(t, wait).await {
                    Ok(r) => r,
                    Err(_) => {
                        h.timeouts.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
            };
            match res {
                Ok(v) if *v >= seq => {}
                Ok(_) if h.is_waived() => {
                    h.waivers.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => return Err(AckError::Unhealthy),
                Err(_) => return Err(AckError::Closed),
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Mutation {
        Mutation {
            seq,
            op: Op::Delete,
            key: Bytes::from_static(b"k"),
            item: None,
            version: seq,
            remote: false,
            flush: None,
        }
    }

    #[test]
    fn without_subscribers_only_numbers_advance() {
        let s = MutationStream::new();
        assert_eq!(
            s.publish(|_| unreachable!("no record is built without subscribers")),
            1
        );
        assert_eq!(s.publish(|_| unreachable!()), 2);
        assert!(!s.must_wait());
        assert!(s.accepts_writes());
    }

    #[test]
    fn subscribers_see_records_in_sequence_order() {
        let s = Arc::new(MutationStream::new());
        let sub = s.subscribe(1 << 16, false);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        s.publish(rec);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        let seqs: Vec<u64> = sub.rx.try_iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=2000).collect::<Vec<_>>());
    }

    /// A writer waiting for `seq`'s acknowledgements, on its own task.
    fn spawn_wait(
        s: &Arc<MutationStream>,
        seq: u64,
    ) -> tokio::task::JoinHandle<Result<(), AckError>> {
        let s = s.clone();
        tokio::spawn(async move { s.wait_acked(seq).await })
    }

    #[tokio::test]
    async fn blocking_subscriber_gates_writers() {
        let s = Arc::new(MutationStream::new());
        let sub = s.subscribe(16, true);
        assert!(s.must_wait());
        let seq = s.publish(rec);
        let waiter = spawn_wait(&s, seq);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        sub.ack.ack(seq);
        assert_eq!(waiter.await.expect("join"), Ok(()));

        let seq = s.publish(rec);
        sub.ack.set_healthy(false);
        assert!(!s.accepts_writes());
        assert_eq!(s.wait_acked(seq).await, Err(AckError::Unhealthy));
    }

    /// The twin under `--replication-ack`: lossy queue, writers wait for it
    /// at most the timeout, and not at all while it is waived (link down).
    #[tokio::test]
    async fn a_bounded_blocking_subscriber_times_out_and_can_be_waived() {
        let s = Arc::new(MutationStream::new());
        let twin = s.subscribe_with(
            1,
            SubscribeOptions {
                byte_cap: Some(1 << 20),
                blocking: true,
                ack_timeout: Some(std::time::Duration::from_millis(50)),
                ..Default::default()
            },
        );
        assert!(s.must_wait());
        let seq = s.publish(rec);
        // Acknowledged: answered at once.
        twin.ack.ack(seq);
        assert_eq!(s.wait_acked(seq).await, Ok(()));
        // Never acknowledged: answered after the timeout, counted.
        let seq = s.publish(rec);
        let t0 = tokio::time::Instant::now();
        assert_eq!(s.wait_acked(seq).await, Ok(()));
        assert!(t0.elapsed() >= std::time::Duration::from_millis(50));
        assert_eq!(twin.ack.timeouts.load(Ordering::Relaxed), 1);
        // Waived while waiting: the waiter is released, counted.
        let seq = s.publish(rec);
        let waiter = spawn_wait(&s, seq);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        twin.ack.set_waived(true);
        assert_eq!(waiter.await.expect("join"), Ok(()));
        // Waived: no wait at all.
        let seq = s.publish(rec);
        assert_eq!(s.wait_acked(seq).await, Ok(()));
        assert_eq!(twin.ack.waivers.load(Ordering::Relaxed), 2);
        assert_eq!(twin.ack.timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(
            twin.ack.waits.load(Ordering::Relaxed),
            3,
            "waived waits are not waits"
        );
        assert!(s.accepts_writes(), "a waived twin never refuses writes");
    }

    #[test]
    fn published_seq_is_per_thread_and_ignores_housekeeping() {
        let s = MutationStream::new();
        let _sub = s.subscribe(16, false);
        take_published();
        let seq = s.publish(|seq| Mutation {
            op: Op::Store,
            ..rec(seq)
        });
        s.publish(|seq| Mutation {
            op: Op::Expire,
            ..rec(seq)
        });
        assert_eq!(
            take_published(),
            seq,
            "expiry records need no acknowledgement"
        );
        assert_eq!(take_published(), 0);
        std::thread::scope(|sc| {
            sc.spawn(|| s.publish(rec));
        });
        assert_eq!(take_published(), 0, "another thread's write is not ours");
    }

    #[test]
    fn byte_capped_subscriber_drops_and_counts_instead_of_blocking() {
        let s = MutationStream::new();
        let one = rec(1).size();
        let sub = s.subscribe_with(
            1,
            SubscribeOptions {
                byte_cap: Some(one * 3),
                ..Default::default()
            },
        );
        for _ in 0..10 {
            s.publish(rec);
        }
        assert_eq!(sub.rx.len(), 3, "the cap holds three records");
        assert_eq!(sub.gauge.queued_bytes(), one * 3);
        assert_eq!(sub.gauge.overflows(), 7);
        assert!(sub.gauge.take_overflowed());
        assert!(!sub.gauge.take_overflowed(), "the flag resets");
        let m = sub.rx.try_recv().expect("queued");
        sub.gauge.consumed(&m);
        assert_eq!(sub.gauge.queued_bytes(), one * 2);
        s.publish(rec);
        assert_eq!(sub.rx.len(), 3, "room again after the consumer took one");
        assert_eq!(sub.gauge.overflows(), 7);
    }

    #[test]
    fn remote_records_skip_local_only_subscribers_and_are_not_built_for_them() {
        let s = MutationStream::new();
        let twin = s.subscribe_with(
            16,
            SubscribeOptions {
                byte_cap: Some(1 << 20),
                local_only: true,
                ..Default::default()
            },
        );
        s.publish_from(true, |_| unreachable!("nobody wants remote records"));
        s.publish(rec);
        assert_eq!(twin.rx.len(), 1);
        let disk = s.subscribe(16, false);
        s.publish_from(true, |seq| Mutation {
            remote: true,
            ..rec(seq)
        });
        assert_eq!(
            (twin.rx.len(), disk.rx.len()),
            (1, 1),
            "only the disk gets it"
        );
    }

    #[test]
    fn only_local_client_changes_are_shipped() {
        let store = Mutation {
            op: Op::Store,
            ..rec(1)
        };
        assert!(store.is_shipped());
        assert!(rec(1).is_shipped(), "a delete is shipped");
        assert!(!Mutation {
            remote: true,
            ..store.clone()
        }
        .is_shipped());
        for op in [Op::Expire, Op::Evict] {
            assert!(!Mutation { op, ..rec(1) }.is_shipped());
        }
    }

    #[test]
    fn gating_subscriber_refuses_writes_without_blocking() {
        let s = MutationStream::new();
        let plain = s.subscribe(16, false);
        plain.ack.set_healthy(false);
        assert!(s.accepts_writes(), "a plain subscriber never gates writes");
        let gate = s.subscribe_with(
            16,
            SubscribeOptions {
                blocking: false,
                gate_writes: true,
                byte_cap: None,
                local_only: false,
                ack_timeout: None,
            },
        );
        assert!(!s.must_wait());
        assert!(s.accepts_writes());
        gate.ack.set_healthy(false);
        assert!(!s.accepts_writes());
        gate.ack.set_healthy(true);
        assert!(s.accepts_writes());
    }
}
