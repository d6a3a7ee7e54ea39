//! The persistence writer: one OS thread draining the mutation stream into sled.
//!
//! A plain thread, not a tokio task: sled calls block (fsync takes
//! milliseconds), and the request path must never wait on them except through
//! acknowledgements under `fsync=always`.
//!
//! **Group commit.** The writer blocks for the first record, then takes every
//! record already queued (up to a size limit) and applies them as one atomic
//! sled batch together with the `last_seq` metadata. Under `always` it then
//! makes the batch durable ([`Syncer::sync`]) and acknowledges the batch's
//! last sequence number, releasing every connection waiting on it. Records that
//! arrive during the fsync form the next batch, so the fsync cost is shared.
//! Under `everysec` the batch is acknowledged once applied and a durable sync
//! runs about once a second; under `no` sled's `flush()` (no fsync) runs once a
//! second. Batches coalesce: sled's batch and [`Changes`] keep the last write
//! per key, which is valid because records carry resulting states.
//!
//! **Errors.** A failed apply or sync marks the subscription unhealthy: the
//! engine refuses writes (`SERVER_ERROR unable to persist write`), reads keep
//! working, the error is counted and logged. The writer keeps draining the
//! stream into its pending set (so publishers never block on a dead disk) and
//! periodically probes for space. sled 0.34 latches the first I/O error for the
//! life of its handle, so recovery closes and reopens sled, replays everything
//! applied since the last successful durable sync plus what is pending, syncs,
//! and only then reports healthy again. Nothing acknowledged before the error
//! is lost: it is either durable or in the replayed set.
//!
//! **A reserve of free space.** sled must never see a full disk in the first
//! place: a blob write that fails with `ENOSPC` can leave a hole in its log
//! that no flush ever fills, and then even closing the handle hangs (seen here
//! about once in 30 disk-full runs under load; see [`super::disk::close_sled`]).
//! So before each batch the writer checks the filesystem (`statvfs`, about a
//! microsecond) and refuses writes, exactly as for an I/O error, while less
//! than [`Tuning::min_free_bytes`] plus twice the batch would remain, the way
//! Elasticsearch's flood-stage watermark turns indices read-only. sled is
//! untouched then, so recovery needs no reopen: writes resume as soon as there
//! is room again. A rewrite starts only when the copy fits above the reserve.
//!
//! **Sweeper.** Expired and flushed records that nothing reads any more are
//! purged by a paced scan of the item keys (a chunk every tick, a pass about
//! once a minute, and promptly after a `flush_all`). The pass also counts live
//! items (the warm restart uses that to show progress in percent) and live
//! bytes: when sled's files exceed [`Tuning::compact_ratio`] times the live
//! bytes, a rewrite starts ([`super::compact`]).
//!
//! Tuning knobs (environment, for operators and tests; defaults in brackets):
//! `MEMTWIN_PERSIST_SWEEP_SECS` [60] between sweep passes,
//! `MEMTWIN_PERSIST_COMPACT_RATIO` [3.0] disk/live ratio that triggers a rewrite,
//! `MEMTWIN_PERSIST_COMPACT_MIN_MB` [64] no rewrite below this size on disk,
//! `MEMTWIN_PERSIST_COMPACT_EVERY_SECS` [600] minimum time between rewrites,
//! `MEMTWIN_PERSIST_MIN_FREE_MB` [64] free space kept in reserve on the data
//! directory's filesystem (0: no reserve).

use super::compact::Compaction;
use super::disk::Syncer;
use super::record::{self, meta, ITEM_PREFIX};
use super::{FsyncMode, State};
use crate::clock::Clock;
use crate::mutation::{AckHandle, FlushSpec, Mutation, Op};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Group-commit limits (a batch closes at whichever comes first).
const MAX_BATCH_RECORDS: usize = 8192;
const MAX_BATCH_BYTES: usize = 16 << 20;
/// How often the writer wakes up when idle.
const TICK: Duration = Duration::from_millis(100);
/// `everysec` / `no` sync interval.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Records examined per sweep step.
const SWEEP_CHUNK: usize = 2000;
/// How often `bytes_on_disk` is refreshed.
const SIZE_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between recovery attempts while the disk fails.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a shutdown keeps trying to persist the backlog on a failing disk.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest a shutdown spends counting the records for the checkpoint.
const COUNT_LIMIT: Duration = Duration::from_secs(5);
/// Minimum interval between `DIR/CHECKPOINT` rewrites (see `disk`).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Sweep and rewrite pacing (see the module docs for the knobs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub sweep_every: Duration,
    pub compact_ratio: f64,
    pub compact_min_bytes: u64,
    pub compact_every: Duration,
    /// Writes are refused while less than this would stay free on disk.
    pub min_free_bytes: u64,
}

impl Tuning {
    pub(crate) fn from_env() -> Tuning {
        fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
            std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
        }
        Tuning {
            sweep_every: Duration::from_secs(env("MEMTWIN_PERSIST_SWEEP_SECS").unwrap_or(60)),
            compact_ratio: env("MEMTWIN_PERSIST_COMPACT_RATIO").unwrap_or(3.0),
            compact_min_bytes: env::<u64>("MEMTWIN_PERSIST_COMPACT_MIN_MB").unwrap_or(64) << 20,
            compact_every: Duration::from_secs(
                env("MEMTWIN_PERSIST_COMPACT_EVERY_SECS").unwrap_or(600),
            ),
            min_free_bytes: env::<u64>("MEMTWIN_PERSIST_MIN_FREE_MB").unwrap_or(64) << 20,
        }
    }
}

/// Writes not yet applied (or applied but not yet durable), last write per key.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Disk key → new record (None = remove).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    last_seq: u64,
    flush: Option<FlushSpec>,
    records: usize,
    bytes: usize,
}

impl Changes {
    pub(crate) fn add(&mut self, m: &Mutation) {
        self.records += 1;
        self.last_seq = self.last_seq.max(m.seq);
        match m.op {
            Op::Store | Op::Touch => {
                if let Some(item) = &m.item {
                    let v = record::encode_item(item, m.seq);
                    self.bytes += v.len() + m.key.len();
                    self.writes.insert(record::item_key(&m.key), Some(v));
                }
            }
            // With a twin, the key becomes a tombstone, kept on disk too so a
            // restarted node still refuses the older writes its twin may send.
            Op::Delete | Op::Expire => match &m.item {
                Some(tomb) => {
                    let v = record::encode_item(tomb, m.seq);
                    self.bytes += v.len() + m.key.len();
                    self.writes.insert(record::item_key(&m.key), Some(v));
                }
                None => {
                    self.bytes += m.key.len();
                    self.writes.insert(record::item_key(&m.key), None);
                }
            },
            // RAM is a cache over disk: an eviction leaves the disk alone.
            Op::Evict => {}
            Op::Flush => self.flush = m.flush.or(self.flush),
        }
    }

    /// Fold in `newer` (its writes win).
    fn absorb(&mut self, newer: Changes) {
        self.writes.extend(newer.writes);
        self.last_seq = self.last_seq.max(newer.last_seq);
        self.flush = newer.flush.or(self.flush);
        self.records += newer.records;
        self.bytes += newer.bytes;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records == 0 && self.writes.is_empty()
    }

    /// The writes to disk keys below `bound`.
    pub(crate) fn writes_below<'a>(
        &'a self,
        bound: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
        use std::ops::Bound;
        self.writes
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(bound)))
    }

    /// The metadata that goes with the writes: the last sequence number and
    /// the flush state, when there are any.
    fn meta(&self) -> impl Iterator<Item = (&'static [u8], Vec<u8>)> {
        let seq =
            (self.last_seq > 0).then(|| (meta::LAST_SEQ, self.last_seq.to_le_bytes().to_vec()));
        let flush = self
            .flush
            .map(|f| (meta::FLUSH, record::encode_flush(f).to_vec()));
        seq.into_iter().chain(flush)
    }

    /// The writes as (disk key, value) pairs, metadata included: what
    /// [`Changes::batch`] would apply.
    fn entries(&self) -> Vec<super::rescue::Entry> {
        let writes = self.writes.iter().map(|(k, v)| (k.clone(), v.clone()));
        let meta = self.meta().map(|(k, v)| (k.to_vec(), Some(v)));
        writes.chain(meta).collect()
    }

    fn full(&self) -> bool {
        self.records >= MAX_BATCH_RECORDS || self.bytes >= MAX_BATCH_BYTES
    }

    /// The sled batch: the writes plus the metadata that goes with them.
    pub(crate) fn batch(&self) -> sled::Batch {
        let mut b = sled::Batch::default();
        for (k, v) in &self.writes {
            match v {
                Some(v) => b.insert(k.as_slice(), v.as_slice()),
                None => b.remove(k.as_slice()),
            }
        }
        for (k, v) in self.meta() {
            b.insert(k, v);
        }
        b
    }
}

/// Paced scan that purges dead records.
#[derive(Debug)]
struct Sweeper {
    cursor: Option<Vec<u8>>,
    active: bool,
    pass_started: Instant,
    next_pass: Instant,
    live: u64,
    live_bytes: u64,
}

type Failure = (&'static str, String);

/// Exit status after sled wedged (EX_TEMPFAIL: a restart recovers).
pub(crate) const EXIT_SLED_WEDGED: i32 = 75;

/// The failure that left sled untouched: too little room on disk.
const SPACE: &str = "space reserve";

pub(crate) struct Writer {
    state: Arc<State>,
    rx: Receiver<Arc<Mutation>>,
    ack: Arc<AckHandle>,
    clock: Arc<Clock>,
    mode: FsyncMode,
    syncer: Syncer,
    pending: Changes,
    unsynced: Changes,
    flush: FlushSpec,
    last_sync: Instant,
    healthy: bool,
    /// The last failure was sled's (not the reserve): recovery reopens it.
    sled_failed: bool,
    backoff: Duration,
    retry_at: Instant,
    last_error_log: Instant,
    sweeper: Sweeper,
    last_size: Instant,
    stop_deadline: Option<Instant>,
    last_checkpoint: Instant,
    checkpointed: u64,
    tuning: Tuning,
    compaction: Option<Compaction>,
    last_compaction: Instant,
}

impl Writer {
    pub(crate) fn new(
        state: Arc<State>,
        rx: Receiver<Arc<Mutation>>,
        ack: Arc<AckHandle>,
        clock: Arc<Clock>,
        flush: FlushSpec,
    ) -> Self {
        let now = Instant::now();
        let syncer = Syncer::new(state.disk.sled_dir());
        let tuning = Tuning::from_env();
        Writer {
            mode: state.mode,
            state,
            rx,
            ack,
            clock,
            syncer,
            pending: Changes::default(),
            unsynced: Changes::default(),
            flush,
            last_sync: now,
            healthy: true,
            sled_failed: false,
            backoff: Duration::from_millis(100),
            retry_at: now,
            last_error_log: now,
            sweeper: Sweeper {
                cursor: None,
                active: false,
                pass_started: now,
                // The first pass starts shortly after start-up (the warm
                // restart already purged what was dead then).
                next_pass: now + tuning.sweep_every.min(Duration::from_secs(5)),
                live: 0,
                live_bytes: 0,
            },
            last_size: now - SIZE_EVERY,
            stop_deadline: None,
            last_checkpoint: now,
            checkpointed: 0,
            tuning,
            compaction: None,
            // Allow a first rewrite soon after start-up if the set needs it.
            last_compaction: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
        }
    }

    pub(crate) fn ack_handle(&self) -> Arc<AckHandle> {
        self.ack.clone()
    }

    /// The thread's body: returns after a shutdown request once everything
    /// received has been applied and synced.
    pub(crate) fn run(mut self) {
        loop {
            if super::disk::sled_wedged() {
                self.fail_stop();
            }
            let stopping = self.state.stop.load(Ordering::SeqCst);
            let mut disconnected = false;
            if !stopping && (self.pending.is_empty() || !self.healthy) {
                match self.rx.recv_timeout(self.wait_time()) {
                    Ok(m) => self.pending.add(&m),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => disconnected = true,
                }
            }
            // Group commit: everything already queued joins this batch.
            while !(self.healthy && self.pending.full()) {
                match self.rx.try_recv() {
                    Ok(m) => self.pending.add(&m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            self.state
                .pending
                .store(self.pending.records as u64, Ordering::Relaxed);
            if self.healthy && !self.pending.is_empty() {
                if let Err((what, e)) = self.commit() {
                    self.failed(what, &e);
                }
            }
            if self.healthy {
                self.housekeeping();
                if self.compaction.is_some() && !stopping {
                    self.compaction_step();
                }
            } else {
                self.try_recover();
            }
            if stopping || disconnected {
                if self.healthy && self.pending.is_empty() && self.rx.is_empty() {
                    self.finish();
                    return;
                }
                let deadline = *self
                    .stop_deadline
                    .get_or_insert_with(|| Instant::now() + STOP_GRACE);
                if !self.healthy && Instant::now() >= deadline {
                    tracing::error!(
                        "persistence: shutting down with {} records not written to {} \
                         (the disk keeps failing); they are lost",
                        self.pending.records + self.unsynced.records + self.rx.len(),
                        self.state.disk.dir().display()
                    );
                    return;
                }
                if !self.healthy {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn wait_time(&self) -> Duration {
        if self.compaction.is_some() && self.healthy {
            return Duration::ZERO;
        }
        if self.mode == FsyncMode::Always || self.unsynced.is_empty() {
            return TICK;
        }
        SYNC_EVERY
            .saturating_sub(self.last_sync.elapsed())
            .clamp(Duration::from_millis(1), TICK)
    }

    /// Apply the pending batch; under `always` make it durable and acknowledge.
    fn commit(&mut self) -> Result<(), Failure> {
        self.check_room(self.pending.bytes)?;
        let batch = self.pending.batch();
        {
            let g = self.state.disk.read();
            let db = g.as_ref().ok_or(("write", "data set closed".to_string()))?;
            db.apply_batch(batch)
                .map_err(|e| ("write", e.to_string()))?;
        }
        let done = std::mem::take(&mut self.pending);
        self.state.pending.store(0, Ordering::Relaxed);
        if let Some(c) = &self.compaction {
            if let Err(e) = c.mirror(&done) {
                self.abort_compaction(&e);
            }
        }
        if let Some(f) = done.flush {
            self.flush = f;
            // Purge what the flush hid without waiting for the next pass.
            self.sweeper.next_pass = Instant::now();
        }
        let last = done.last_seq;
        self.unsynced.absorb(done);
        self.state.applied.fetch_max(last, Ordering::AcqRel);
        match self.mode {
            FsyncMode::Always => self.sync_now(),
            _ => {
                self.ack.ack(last);
                Ok(())
            }
        }
    }

    /// Flush sled and (except with `no`) fsync its files; acknowledge under `always`.
    fn sync_now(&mut self) -> Result<(), Failure> {
        let started = Instant::now();
        let upto = self.state.applied.load(Ordering::Acquire);
        {
            let g = self.state.disk.read();
            let db = g.as_ref().ok_or(("sync", "data set closed".to_string()))?;
            self.syncer
                .sync(db, self.mode != FsyncMode::No)
                .map_err(|e| ("sync", e.to_string()))?;
        }
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.state.last_sync_us.store(us, Ordering::Relaxed);
        self.state.syncs.fetch_add(1, Ordering::Relaxed);
        if self.mode != FsyncMode::No {
            self.state.durable.fetch_max(upto, Ordering::AcqRel);
        }
        if self.mode == FsyncMode::Always {
            self.ack.ack(upto);
        }
        self.unsynced = Changes::default();
        self.last_sync = Instant::now();
        if self.mode != FsyncMode::No && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint(upto)?;
        }
        Ok(())
    }

    /// Record `seq` as durable in `DIR/CHECKPOINT` (only after a durable sync).
    fn checkpoint(&mut self, seq: u64) -> Result<(), Failure> {
        self.last_checkpoint = Instant::now();
        if seq <= self.checkpointed {
            return Ok(());
        }
        self.write_checkpoint(seq, None)
    }

    fn write_checkpoint(&mut self, seq: u64, records: Option<u64>) -> Result<(), Failure> {
        let (dir, history) = (self.state.disk.dir(), self.state.history_id());
        super::disk::write_checkpoint(dir, history, seq, records)
            .map_err(|e| ("checkpoint", e.to_string()))?;
        self.checkpointed = seq;
        Ok(())
    }

    /// Refuse a batch of `bytes` that would eat into the free-space reserve.
    fn check_room(&self, bytes: usize) -> Result<(), Failure> {
        if self.tuning.min_free_bytes == 0 {
            return Ok(());
        }
        let free = self
            .state
            .disk
            .free_bytes()
            .map_err(|e| (SPACE, format!("cannot read free space: {e}")))?;
        let need = self.tuning.min_free_bytes + 2 * bytes as u64;
        if free < need {
            return Err((
                SPACE,
                format!(
                    "only {:.1} MiB free, below the reserve of {} MiB \
                     (MEMTWIN_PERSIST_MIN_FREE_MB) plus this batch",
                    free as f64 / 1048576.0,
                    self.tuning.min_free_bytes >> 20
                ),
            ));
        }
        Ok(())
    }

    fn failed(&mut self, what: &str, e: &str) {
        self.state.write_errors.fetch_add(1, Ordering::Relaxed);
        if what != SPACE {
            self.sled_failed = true;
        }
        if self.compaction.is_some() {
            self.abort_compaction("the live database failed");
        }
        if self.healthy {
            let dir = self.state.disk.dir().display();
            if what == SPACE {
                tracing::error!(
                    "persistence: {dir} is nearly full: {e}; writes are refused with \
                     SERVER_ERROR until there is room again (reads keep working)"
                );
            } else {
                tracing::error!(
                    "persistence: {what} to {dir} failed: {e}; writes are refused with \
                     SERVER_ERROR until the disk accepts them again (reads keep working)"
                );
            }
            self.healthy = false;
            self.state.healthy.store(false, Ordering::SeqCst);
            self.ack.set_healthy(false);
            self.backoff = Duration::from_millis(100);
            self.retry_at = Instant::now() + self.backoff;
            self.last_error_log = Instant::now();
        } else if self.last_error_log.elapsed() >= Duration::from_secs(10) {
            tracing::warn!(
                "persistence: still failing ({what}: {e}); {} records waiting",
                self.pending.records + self.unsynced.records
            );
            self.last_error_log = Instant::now();
        }
    }

    /// While unhealthy: probe for space, then reopen sled and replay.
    fn try_recover(&mut self) {
        if Instant::now() < self.retry_at {
            return;
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.retry_at = Instant::now() + self.backoff;
        if let Err((what, e)) = self.check_room(self.pending.bytes + self.unsynced.bytes) {
            self.failed(what, &e);
            return;
        }
        if !self.sled_failed {
            // Only the reserve stopped us: sled is intact, the loop commits
            // what is pending.
            self.set_healthy_again(0);
            return;
        }
        if let Err(e) = self.state.disk.probe_space() {
            self.failed("space check", &e.to_string());
            return;
        }
        let mut all = std::mem::take(&mut self.unsynced);
        all.absorb(std::mem::take(&mut self.pending));
        let batch = all.batch();
        let syncer = &mut self.syncer;
        let res = self.state.disk.reopen(|db| {
            syncer.reset();
            db.apply_batch(batch).map_err(|e| e.to_string())?;
            syncer.sync(db, true).map_err(|e| e.to_string())
        });
        match res {
            Ok(()) => {
                let last = all.last_seq;
                self.state.applied.fetch_max(last, Ordering::AcqRel);
                self.state
                    .durable
                    .fetch_max(self.state.applied.load(Ordering::Acquire), Ordering::AcqRel);
                self.state.pending.store(0, Ordering::Relaxed);
                self.ack.ack(self.state.applied.load(Ordering::Acquire));
                self.last_sync = Instant::now();
                self.sled_failed = false;
                self.set_healthy_again(all.records);
            }
            Err(e) => {
                self.unsynced = all;
                self.failed("reopen", &e);
            }
        }
    }

    /// sled wedged (see `disk::close_sled`): nothing in this process can
    /// write to it again. Save what is held in `DIR/RESCUE` for the next start
    /// and exit, so the service manager restarts memtwin (`Restart=on-failure`),
    /// as PostgreSQL does after a failed fsync.
    fn fail_stop(&mut self) -> ! {
        let mut all = std::mem::take(&mut self.unsynced);
        all.absorb(std::mem::take(&mut self.pending));
        while let Ok(m) = self.rx.try_recv() {
            all.add(&m);
        }
        let entries = all.entries();
        let dir = self.state.disk.dir();
        match super::rescue::write(dir, self.state.history_id(), &entries) {
            Ok(()) => tracing::error!(
                "persistence: sled cannot write any more in this process; {} writes saved in {} \
                 for the next start; exiting (status {EXIT_SLED_WEDGED}) to be restarted",
                entries.len(),
                super::rescue::path(dir).display()
            ),
            Err(e) => tracing::error!(
                "persistence: sled cannot write any more in this process, and saving {} writes \
                 in {} failed ({e}): they are lost; exiting (status {EXIT_SLED_WEDGED}) to be \
                 restarted",
                all.records,
                super::rescue::path(dir).display()
            ),
        }
        std::process::exit(EXIT_SLED_WEDGED)
    }

    fn set_healthy_again(&mut self, written: usize) {
        self.healthy = true;
        self.state.healthy.store(true, Ordering::SeqCst);
        self.ack.set_healthy(true);
        tracing::info!(
            "persistence: {} is writable again; {written} waiting records written, accepting \
             writes",
            self.state.disk.dir().display(),
        );
    }

    fn housekeeping(&mut self) {
        if self.mode != FsyncMode::Always
            && !self.unsynced.is_empty()
            && self.last_sync.elapsed() >= SYNC_EVERY
        {
            if let Err((what, e)) = self.sync_now() {
                self.failed(what, &e);
                return;
            }
        }
        if self.last_size.elapsed() >= SIZE_EVERY {
            self.last_size = Instant::now();
            if let Some(n) = self.state.disk.size_on_disk() {
                self.state.bytes_on_disk.store(n, Ordering::Relaxed);
            }
        }
        if self.compaction.is_none() {
            if let Err(e) = self.sweep_step() {
                self.failed("purge", &e);
            }
        }
    }

    /// After a sweep pass: start a rewrite when sled's files are much larger
    /// than the live records.
    fn maybe_compact(&mut self, live_bytes: u64) {
        let on_disk = self.state.disk.size_on_disk().unwrap_or(0);
        self.state.bytes_on_disk.store(on_disk, Ordering::Relaxed);
        let t = self.tuning;
        let ratio = on_disk as f64 / live_bytes.max(1) as f64;
        if on_disk < t.compact_min_bytes
            || ratio < t.compact_ratio
            || self.last_compaction.elapsed() < t.compact_every
            || self.compaction.is_some()
        {
            return;
        }
        self.last_compaction = Instant::now();
        // The copy holds the live records (about live_bytes, plus sled's
        // own overhead): start only when it fits above the reserve.
        let free = self.state.disk.free_bytes().unwrap_or(0);
        let copy = live_bytes.saturating_mul(3) / 2;
        if free < t.min_free_bytes.saturating_add(copy) {
            tracing::warn!(
                "persistence: not rewriting the data set ({:.1} MiB on disk for {:.1} MiB live): \
                 only {:.1} MiB free, the copy needs about {:.1} MiB above the reserve",
                on_disk as f64 / 1048576.0,
                live_bytes as f64 / 1048576.0,
                free as f64 / 1048576.0,
                copy as f64 / 1048576.0
            );
            return;
        }
        let cache = (self.state.disk.cache_bytes() / 4).max(8 << 20);
        match Compaction::start(&self.state.disk, cache) {
            Ok(c) => {
                tracing::info!(
                    "persistence: rewriting the data set ({:.1} MiB on disk for {:.1} MiB of \
                     live records, {ratio:.1}x)",
                    on_disk as f64 / 1048576.0,
                    live_bytes as f64 / 1048576.0
                );
                self.state.compacting.store(true, Ordering::Relaxed);
                self.compaction = Some(c);
            }
            Err(e) => tracing::warn!("persistence: cannot start a rewrite: {e}"),
        }
    }

    fn abort_compaction(&mut self, why: &str) {
        if let Some(c) = self.compaction.take() {
            tracing::warn!("persistence: rewrite abandoned: {why}");
            c.abort();
        }
        self.state.compacting.store(false, Ordering::Relaxed);
    }

    /// Copy the next chunk; when done, seal the copy and swap it in.
    fn compaction_step(&mut self) {
        let now = self.clock.now();
        let flush = self.flush;
        let res = {
            let g = self.state.disk.read();
            match (g.as_ref(), self.compaction.as_mut()) {
                (Some(db), Some(c)) => c.step(db, now, flush),
                _ => return,
            }
        };
        match res {
            Ok(false) => {}
            Ok(true) => self.finish_compaction(),
            Err(e) => self.abort_compaction(&e),
        }
    }

    fn finish_compaction(&mut self) {
        let Some(c) = self.compaction.take() else {
            return;
        };
        self.state.compacting.store(false, Ordering::Relaxed);
        let (copied, bytes, started) = (c.copied, c.bytes, c.started);
        let before = self.state.disk.size_on_disk().unwrap_or(0);
        let sealed = {
            let g = self.state.disk.read();
            match g.as_ref() {
                Some(db) => c.seal(db, &self.state.disk),
                None => Err("data set closed".to_string()),
            }
        };
        if let Err(e) = sealed {
            tracing::warn!("persistence: rewrite abandoned while sealing: {e}");
            return;
        }
        let syncer = &mut self.syncer;
        match self.state.disk.swap(|_| {
            syncer.reset();
            Ok(())
        }) {
            Ok(()) => {
                // Everything applied was copied and synced with the copy.
                let upto = self.state.applied.load(Ordering::Acquire);
                self.state.durable.fetch_max(upto, Ordering::AcqRel);
                self.unsynced = Changes::default();
                self.last_sync = Instant::now();
                self.state.compactions.fetch_add(1, Ordering::Relaxed);
                release_freed_memory();
                let after = self.state.disk.size_on_disk().unwrap_or(0);
                self.state.bytes_on_disk.store(after, Ordering::Relaxed);
                self.last_size = Instant::now();
                tracing::info!(
                    "persistence: rewrite done in {:.1} s: {copied} live items ({:.1} MiB), \
                     {:.1} MiB -> {:.1} MiB on disk",
                    started.elapsed().as_secs_f64(),
                    bytes as f64 / 1048576.0,
                    before as f64 / 1048576.0,
                    after as f64 / 1048576.0
                );
                if self.mode != FsyncMode::No {
                    if let Err((what, e)) = self.checkpoint(upto) {
                        self.failed(what, &e);
                    }
                }
            }
            Err(e) => self.failed("rewrite swap", &e),
        }
    }

    /// Examine the next chunk of item records and remove the dead ones.
    fn sweep_step(&mut self) -> Result<(), String> {
        let sw = &mut self.sweeper;
        if !sw.active {
            if Instant::now() < sw.next_pass {
                return Ok(());
            }
            sw.active = true;
            sw.cursor = None;
            sw.live = 0;
            sw.live_bytes = 0;
            sw.pass_started = Instant::now();
        }
        let now = self.clock.now();
        let g = self.state.disk.read();
        let db = g.as_ref().ok_or("data set closed")?;
        let start = sw.cursor.take().unwrap_or_else(|| vec![ITEM_PREFIX]);
        let end = vec![ITEM_PREFIX + 1];
        let mut batch = sled::Batch::default();
        let mut dead = 0u64;
        let mut seen = 0;
        for kv in db.range(start..end) {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            seen += 1;
            match record::decode_header(&v) {
                Ok(h) if h.is_dead(now, self.flush) => {
                    batch.remove(k.clone());
                    dead += 1;
                }
                Ok(_) => {
                    sw.live += 1;
                    sw.live_bytes += (k.len() + v.len()) as u64;
                }
                Err(e) => {
                    tracing::warn!("persistence: undecodable record skipped by the sweeper: {e}")
                }
            }
            if seen >= SWEEP_CHUNK {
                let mut next = k.to_vec();
                next.push(0);
                sw.cursor = Some(next);
                break;
            }
        }
        let pass_done = sw.cursor.is_none();
        let live_bytes = sw.live_bytes;
        if pass_done {
            sw.active = false;
            sw.next_pass = sw.pass_started + self.tuning.sweep_every;
            self.state.items_on_disk.store(sw.live, Ordering::Relaxed);
            self.state
                .live_bytes
                .store(sw.live_bytes, Ordering::Relaxed);
            batch.insert(meta::ITEMS_HINT, &sw.live.to_le_bytes()[..]);
        }
        db.apply_batch(batch).map_err(|e| e.to_string())?;
        drop(g);
        self.state.purged.fetch_add(dead, Ordering::Relaxed);
        if pass_done {
            self.maybe_compact(live_bytes);
        }
        Ok(())
    }

    /// Shutdown: everything received is applied; make it durable in every mode.
    fn finish(&mut self) {
        if let Some(c) = self.compaction.take() {
            c.abort();
        }
        let started = Instant::now();
        let items = self.state.final_items.load(Ordering::SeqCst);
        let res = {
            let g = self.state.disk.read();
            match g.as_ref() {
                Some(db) => {
                    let hint = if items > 0 {
                        db.insert(meta::ITEMS_HINT, &items.to_le_bytes()[..])
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    };
                    hint.and_then(|_| self.syncer.sync(db, true).map_err(|e| e.to_string()))
                }
                None => Err("data set closed".to_string()),
            }
        };
        match res {
            Ok(()) => {
                let upto = self.state.applied.load(Ordering::Acquire);
                self.state.durable.fetch_max(upto, Ordering::AcqRel);
                self.ack.ack(upto);
                let records = self.count_records();
                if let Err((_, e)) = self.write_checkpoint(upto, records) {
                    tracing::error!("persistence: cannot write the checkpoint: {e}");
                }
                tracing::info!(
                    "persistence: data set in {} synced up to seq {upto}, {} item records ({} \
                     ms)",
                    self.state.disk.dir().display(),
                    records.map_or("?".to_string(), |n| n.to_string()),
                    started.elapsed().as_millis()
                );
            }
            Err(e) => tracing::error!("persistence: final sync failed: {e}"),
        }
    }
}

impl Writer {
    /// Item records in sled after the final sync (the next warm restart
    /// checks it, see `disk`); None if sled cannot be read or the count takes
    /// longer than [`COUNT_LIMIT`] (about 1 s per million records here).
    fn count_records(&self) -> Option<u64> {
        let g = self.state.disk.read();
        let db = g.as_ref()?;
        let started = Instant::now();
        let mut n = 0u64;
        for k in db.scan_prefix([ITEM_PREFIX]).keys() {
            if let Err(e) = k {
                tracing::warn!("persistence: cannot count the records at shutdown: {e}");
                return None;
            }
            n += 1;
            if n % 65536 == 0 && started.elapsed() > COUNT_LIMIT {
                tracing::info!(
                    "persistence: not counting the records at shutdown (more than {n}); the \
                     next start cannot check that sled returns all of them"
                );
                return None;
            }
        }
        Some(n)
    }
}

/// Hand memory sled freed (the old database's caches) back to the OS; glibc
/// keeps freed heap otherwise, and RSS would not show the rewrite's benefit.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutation::ItemState;
    use bytes::Bytes;

    fn m(seq: u64, op: Op, key: &str, value: &str) -> Mutation {
        Mutation {
            seq,
            op,
            key: Bytes::copy_from_slice(key.as_bytes()),
            item: matches!(op, Op::Store | Op::Touch).then(|| ItemState {
                value: Bytes::copy_from_slice(value.as_bytes()),
                flags: 1,
                exptime: 0,
                cas: seq,
                version: seq,
                bits: 0,
            }),
            version: seq,
            remote: false,
            flush: None,
        }
    }

    #[test]
    fn changes_keep_the_last_write_per_key_and_skip_evictions() {
        let mut c = Changes::default();
        c.add(&m(1, Op::Store, "a", "1"));
        c.add(&m(2, Op::Store, "b", "2"));
        c.add(&m(3, Op::Delete, "a", ""));
        c.add(&m(4, Op::Evict, "b", ""));
        c.add(&m(5, Op::Store, "c", "3"));
        assert_eq!(c.records, 5);
        assert_eq!(c.last_seq, 5);
        assert_eq!(c.writes.len(), 3);
        assert_eq!(c.writes.get(&record::item_key(b"a")), Some(&None));
        let b = c
            .writes
            .get(&record::item_key(b"b"))
            .and_then(|v| v.clone())
            .expect("b kept despite the eviction");
        assert_eq!(record::decode_item(&b).expect("decodes").seq, 2);

        let mut older = Changes::default();
        older.add(&m(1, Op::Store, "c", "old"));
        older.add(&m(2, Op::Store, "d", "d"));
        older.absorb(c);
        let cv = older
            .writes
            .get(&record::item_key(b"c"))
            .and_then(|v| v.clone())
            .expect("c");
        assert_eq!(
            &record::decode_item(&cv).expect("decodes").state.value[..],
            b"3"
        );
        assert_eq!((older.last_seq, older.records), (5, 7));
    }

    #[test]
    fn flush_records_are_carried_as_metadata() {
        let mut c = Changes::default();
        let spec = FlushSpec {
            hidden: 3,
            at: 10,
            ceiling: 4,
            version: 3,
        };
        c.add(&Mutation {
            seq: 3,
            op: Op::Flush,
            key: Bytes::new(),
            item: None,
            version: 3,
            remote: false,
            flush: Some(spec),
        });
        assert_eq!(c.flush, Some(spec));
        assert!(c.writes.is_empty());
        assert!(!c.is_empty());
        let dir = tempfile::tempdir().expect("tmp");
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("open sled");
        db.apply_batch(c.batch()).expect("apply");
        let f = db.get(meta::FLUSH).expect("get").expect("present");
        assert_eq!(record::decode_flush(&f), Ok(spec));
        let s = db.get(meta::LAST_SEQ).expect("get").expect("present");
        assert_eq!(record::decode_u64(&s), Ok(3));
    }
}
