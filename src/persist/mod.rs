//! Disk persistence with sled: sessions survive restarts and crashes, and RAM
//! becomes a cache over disk.
//!
//! memcached forgets everything on restart; for a session store that means
//! logging every user out. With `--data-dir`, memtwin keeps every live item in
//! a sled database (memcachedb's model) and reloads it before serving.
//!
//! How it fits together, and why:
//!
//! * **One source of changes.** Persistence is a subscriber of the
//!   [`MutationStream`](crate::mutation::MutationStream), like twin replication
//!   will be; the engine and the store have no persistence hooks. Records carry
//!   resulting states, so the writer applies them idempotently and coalesces
//!   per key ([`writer`]).
//! * **Off the request path.** A dedicated thread applies the stream in batches
//!   (group commit). `--fsync` chooses when a reply may be sent:
//!   - `always`: after the write is durable (sled apply + fdatasync of the files
//!     sled wrote, see [`disk`]); the subscription is *blocking*, so connections
//!     wait for the writer's acknowledgement before replying;
//!   - `everysec` (default): once applied in memory by sled; a durable sync runs
//!     about once a second, so a crash loses at most about one second;
//!   - `no`: sled's own flush (to the OS, no fsync) about once a second.
//!
//!   In every mode a failing disk turns writes into `SERVER_ERROR unable to
//!   persist write` (the subscription gates writes) while reads keep working.
//! * **RAM is a cache.** Evictions do not touch the disk; a miss in RAM reads
//!   through via the [`Backing`](crate::store::Backing) trait implemented by
//!   [`State`]. Deletes and expiry remove from disk; a sweeper purges expired
//!   records nothing reads; `flush_all` (immediate or delayed) is persisted as
//!   the store's flush state, not as a storm of deletes.
//! * **Warm restart** ([`load`]) happens before `server::serve`: no client is
//!   answered from a half-loaded table.
//! * **Identity.** Each data set has a random 128-bit history id, created with
//!   it, and records the last applied sequence number: what twin replication
//!   needs to choose between catch-up and full resync.
//! * **Safety.** The directory is locked (`DIR/LOCK`), a damaged one is never
//!   wiped but refused with instructions ([`disk::OpenError`]).
//!
//! sled is pinned to 0.34.7; its caveats (flush is not an fsync, memory and
//! space amplification, corruption reports) and what was measured are in
//! `docs/decisions.md` and `docs/persistence.md`.

mod compact;
pub mod disk;
pub mod load;
pub mod record;
pub mod rescue;
mod writer;

pub use disk::OpenError;
pub use load::LoadReport;

use crate::clock::Clock;
use crate::mutation::{Mutation, SubscribeOptions};
use crate::store::{Backing, BackingError, BackingScan, Persisted, Store};
use crossbeam_channel::Receiver;
use disk::{Disk, Opened};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Queue between the store and the writer, in records. A full queue makes
/// writers wait (back-pressure); it never drops.
const QUEUE_CAPACITY: usize = 1 << 16;

/// When a write counts as done (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Reply only after the write is on disk (fdatasync per group commit).
    Always,
    /// Reply once applied; fsync about once a second.
    #[default]
    Everysec,
    /// Never fsync explicitly (sled hands data to the OS about once a second).
    No,
}

impl FsyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Everysec => "everysec",
            FsyncMode::No => "no",
        }
    }
}

/// Persistence settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistConfig {
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
}

/// State shared by the writer thread, the read-through path and `stats`.
#[derive(Debug)]
pub struct State {
    pub(crate) disk: Disk,
    pub(crate) mode: FsyncMode,
    history_id: u128,
    /// Highest sequence number applied to sled (what read-through sees).
    pub(crate) applied: AtomicU64,
    /// Highest sequence number known durable (explicit fsync).
    pub(crate) durable: AtomicU64,
    /// Records received by the writer but not applied yet.
    pub(crate) pending: AtomicU64,
    pub(crate) healthy: AtomicBool,
    pub(crate) write_errors: AtomicU64,
    read_errors: AtomicU64,
    disk_reads: AtomicU64,
    pub(crate) purged: AtomicU64,
    pub(crate) last_sync_us: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) bytes_on_disk: AtomicU64,
    pub(crate) items_on_disk: AtomicU64,
    pub(crate) live_bytes: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) compacting: AtomicBool,
    pub(crate) stop: AtomicBool,
    /// Exact live item count at shutdown (0 = unknown), written as the hint.
    pub(crate) final_items: AtomicU64,
    queue: OnceLock<Receiver<Arc<Mutation>>>,
}

impl State {
    pub fn history_id(&self) -> u128 {
        self.history_id
    }

    pub fn last_durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Records waiting for the writer (queued plus received but not applied).
    pub fn queue_depth(&self) -> u64 {
        let queued = self.queue.get().map(|q| q.len()).unwrap_or(0) as u64;
        queued + self.pending.load(Ordering::Relaxed)
    }
}

impl Backing for State {
    fn fetch(&self, key: &[u8]) -> Result<Option<Persisted>, BackingError> {
        let rec = self.disk.get(key).map_err(|e| {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
            BackingError(e)
        })?;
        match rec {
            None => Ok(None),
            Some(v) => {
                self.disk_reads.fetch_add(1, Ordering::Relaxed);
                record::decode_item(&v).map(Some).map_err(|e| {
                    self.read_errors.fetch_add(1, Ordering::Relaxed);
                    BackingError(e.to_string())
                })
            }
        }
    }

    fn scan(&self, after: &[u8], floor: u64, max: usize) -> Result<BackingScan, BackingError> {
        let failed = |e: String| {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
            BackingError(e)
        };
        // Visit a bounded number of records per call even when the floor
        // filters most of them out, so one call never walks the whole disk.
        let (raw, next) = self
            .disk
            .scan_items(after, floor, max, max.saturating_mul(16).max(1024))
            .map_err(failed)?;
        let mut items = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let p = record::decode_item(&v).map_err(|e| failed(e.to_string()))?;
            items.push((bytes::Bytes::copy_from_slice(&k[1..]), p));
        }
        Ok(BackingScan {
            items,
            next: next.map(bytes::Bytes::from),
        })
    }

    fn applied_seq(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn report(&self, out: &mut Vec<(&'static str, String)>) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        out.push(("memtwin_persist_enabled", "1".into()));
        out.push(("memtwin_persist_fsync", self.mode.as_str().into()));
        out.push((
            "memtwin_persist_healthy",
            u8::from(self.is_healthy()).to_string(),
        ));
        out.push((
            "memtwin_persist_queue_depth",
            self.queue_depth().to_string(),
        ));
        out.push(("memtwin_persist_applied_seq", n(&self.applied)));
        out.push(("memtwin_persist_last_durable_seq", n(&self.durable)));
        out.push(("memtwin_persist_bytes_on_disk", n(&self.bytes_on_disk)));
        out.push(("memtwin_persist_items_on_disk", n(&self.items_on_disk)));
        out.push(("memtwin_persist_live_bytes", n(&self.live_bytes)));
        out.push(("memtwin_persist_compactions", n(&self.compactions)));
        out.push((
            "memtwin_persist_compacting",
            u8::from(self.compacting.load(Ordering::Relaxed)).to_string(),
        ));
        out.push(("memtwin_persist_write_errors", n(&self.write_errors)));
        out.push(("memtwin_persist_read_errors", n(&self.read_errors)));
        out.push(("memtwin_persist_syncs", n(&self.syncs)));
        out.push(("memtwin_persist_last_sync_us", n(&self.last_sync_us)));
        out.push(("memtwin_persist_disk_reads", n(&self.disk_reads)));
        out.push(("memtwin_persist_purged", n(&self.purged)));
        out.push((
            "memtwin_persist_history_id",
            format!("{:032x}", self.history_id),
        ));
    }
}

/// An opened (locked) data set, before the writer runs.
#[derive(Debug)]
pub struct Persistence {
    state: Arc<State>,
    opened: Opened,
}

/// The running writer; [`Running::shutdown`] drains and syncs.
#[derive(Debug)]
pub struct Running {
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Persistence {
    /// Lock and open the data directory (creating a data set if there is none).
    pub fn open(cfg: &PersistConfig) -> Result<Persistence, OpenError> {
        let (disk, opened) = Disk::open(&cfg.dir, cfg.cache_bytes)?;
        tracing::info!(
            "data set {} opened (history id {:032x}, last seq {}, fsync={}, sled cache {} MiB)",
            cfg.dir.display(),
            opened.history_id,
            opened.last_seq,
            cfg.fsync.as_str(),
            cfg.cache_bytes >> 20
        );
        let state = Arc::new(State {
            disk,
            mode: cfg.fsync,
            history_id: opened.history_id,
            applied: AtomicU64::new(opened.last_seq),
            durable: AtomicU64::new(opened.last_seq),
            pending: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            write_errors: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            disk_reads: AtomicU64::new(0),
            purged: AtomicU64::new(0),
            last_sync_us: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            bytes_on_disk: AtomicU64::new(0),
            items_on_disk: AtomicU64::new(opened.items_hint),
            live_bytes: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            compacting: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            final_items: AtomicU64::new(0),
            queue: OnceLock::new(),
        });
        Ok(Persistence { state, opened })
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Warm restart: load the data set into `store` (before serving).
    pub fn load(&self, store: &Store, now: u32) -> Result<LoadReport, OpenError> {
        self.load_with_progress(store, now, &mut |_| {})
    }

    /// [`Persistence::load`], calling `on_progress(items seen)` every couple of
    /// seconds (the daemon extends systemd's start timeout with it).
    pub fn load_with_progress(
        &self,
        store: &Store,
        now: u32,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<LoadReport, OpenError> {
        // sled can panic on a damaged log while it is read, not only when it
        // is opened: that is a refusal to start, like any other damage.
        let loaded = disk::contain_sled_panic("reading the data set", || {
            load::warm_restart(&self.state, &self.opened, store, now, on_progress)
        })
        .map_err(|e| OpenError::unusable(self.state.disk.dir(), e))
        .and_then(|r| r);
        let r = match loaded {
            Ok(r) => r,
            Err(e) => {
                self.state.disk.close();
                return Err(e);
            }
        };
        self.state.applied.fetch_max(r.max_seq, Ordering::AcqRel);
        self.state.durable.fetch_max(r.max_seq, Ordering::AcqRel);
        if let Some(n) = self.state.disk.size_on_disk() {
            self.state.bytes_on_disk.store(n, Ordering::Relaxed);
        }
        self.state
            .items_on_disk
            .store(r.loaded + r.disk_only, Ordering::Relaxed);
        self.state.live_bytes.store(r.live_bytes, Ordering::Relaxed);
        Ok(r)
    }

    /// Subscribe to the store's mutation stream, install the read-through
    /// backing and start the writer thread. Call after [`Persistence::load`]
    /// and before serving.
    pub fn start(self, store: &Store, clock: Arc<Clock>) -> std::io::Result<Running> {
        let mode = self.state.mode;
        let sub = store.stream().subscribe_with(
            QUEUE_CAPACITY,
            SubscribeOptions {
                blocking: mode == FsyncMode::Always,
                gate_writes: true,
                byte_cap: None,
                local_only: false,
                ack_timeout: None,
            },
        );
        let _ = self.state.queue.set(sub.rx.clone());
        let complete = store.is_complete();
        store.set_backing(self.state.clone(), complete);
        let w = writer::Writer::new(
            self.state.clone(),
            sub.rx,
            sub.ack,
            clock,
            store.flush_spec(),
        );
        let (state, ack) = (self.state.clone(), w.ack_handle());
        let thread = std::thread::Builder::new()
            .name("memtwin-persist".into())
            .spawn(move || {
                // A bug in the writer must not silently stop persistence (its
                // queue would close and later records would go nowhere): refuse
                // writes from then on, loudly.
                let run = std::panic::AssertUnwindSafe(move || w.run());
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(
                        "the persistence writer crashed: writes are refused until memtwin is \
                         restarted"
                    );
                    state.healthy.store(false, Ordering::SeqCst);
                    ack.set_healthy(false);
                }
            })?;
        Ok(Running {
            state: self.state,
            thread: Some(thread),
        })
    }
}

impl Running {
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Apply and sync everything published so far, then stop the writer.
    /// Call after the server stopped taking requests. `items` is the live item
    /// count when known exactly (RAM holds everything), recorded so the next
    /// warm restart can show its progress in percent.
    /// Returns whether everything ended on disk (the writer finished and the
    /// data set stayed healthy).
    pub fn shutdown_with_count(self, items: Option<u64>) -> bool {
        if let Some(n) = items {
            self.state.final_items.store(n, Ordering::SeqCst);
        }
        self.shutdown()
    }

    /// [`Running::shutdown_with_count`] without a count.
    pub fn shutdown(mut self) -> bool {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the persistence writer panicked");
                return false;
            }
        }
        self.state.is_healthy()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutation::{ItemState, MutationStream, Op};
    use crate::stats::Stats;
    use crate::store::{Change, Lookup, StoreConfig};
    use bytes::Bytes;
    use std::time::{Duration, Instant};

    const NOW: u32 = 1_800_000_000;

    fn store(limit: usize) -> Store {
        Store::new(
            StoreConfig::standalone(limit, true, true),
            Arc::new(MutationStream::new()),
            Arc::new(Stats::new()),
        )
    }

    fn put(s: &Store, key: &str, value: &[u8]) -> u64 {
        let version = s.next_version(NOW);
        let state = ItemState {
            value: Bytes::copy_from_slice(value),
            flags: 3,
            exptime: 0,
            cas: s.cas_for(version),
            version,
            bits: 0,
        };
        s.modify(key.as_bytes(), NOW, |_| (Change::Put(state, Op::Store), ()))
            .expect("put")
            .1
    }

    fn wait_applied(state: &State, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.applied_seq() < seq {
            assert!(Instant::now() < deadline, "writer did not apply {seq}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn cfg(dir: &std::path::Path, fsync: FsyncMode) -> PersistConfig {
        PersistConfig {
            dir: dir.to_path_buf(),
            fsync,
            cache_bytes: 8 << 20,
        }
    }

    /// A store with room for eight 1 KB items over a running persistence
    /// (`fsync always`) in `dir`.
    fn small_persisted_store(dir: &std::path::Path) -> (Store, Running, Arc<State>) {
        let item = 1000 + crate::store::ITEM_OVERHEAD;
        let s = store(item * 8);
        let p = Persistence::open(&cfg(dir, FsyncMode::Always)).expect("open");
        p.load(&s, NOW).expect("load");
        let running = p.start(&s, Arc::new(Clock::fixed(NOW))).expect("start");
        let state = running.state().clone();
        (s, running, state)
    }

    #[test]
    fn writer_persists_the_stream_and_ram_reads_through() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let (s, running, state) = small_persisted_store(&dir);

        let v = vec![b'x'; 1000 - 3];
        let mut last = 0;
        let mut first_cas = 0;
        for i in 0..40 {
            last = put(&s, &format!("k{i:02}"), &v);
            if i == 0 {
                if let Lookup::Hit(view) = s.get(b"k00", NOW, false) {
                    first_cas = view.cas;
                }
            }
            // Dirty items are not evicted, so let the writer keep up.
            wait_applied(&state, last);
        }
        assert!(s.len() <= 8, "RAM holds only what fits");
        assert!(!s.is_complete());
        // Evicted items come back from disk, with their flags and CAS.
        match s.get(b"k00", NOW, true) {
            Lookup::Hit(view) => {
                assert_ne!(first_cas, 0);
                assert_eq!(
                    (view.flags, view.cas, view.value.len()),
                    (3, first_cas, 997)
                )
            }
            other => panic!("k00 not read through: {other:?}"),
        }
        // A delete of a disk-only item sticks, even before the writer applies it.
        let del = s
            .modify(b"k01", NOW, |old| {
                assert!(old.is_some(), "modify sees the disk-only item");
                (Change::Remove, ())
            })
            .expect("delete")
            .1;
        assert!(del > last);
        assert_eq!(s.get(b"k01", NOW, true), Lookup::Miss, "not resurrected");
        wait_applied(&state, del);
        assert_eq!(s.get(b"k01", NOW, true), Lookup::Miss);
        // fsync=always: the writer acknowledged only durable records.
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.last_durable_seq() < del {
            assert!(Instant::now() < deadline, "not durable");
            std::thread::sleep(Duration::from_millis(5));
        }
        running.shutdown();
        let history = state.history_id();
        // The store (its backing) and our handle keep the directory locked.
        drop((s, state));

        // A fresh store over the same directory sees the same data set.
        let s2 = store(1 << 20);
        let p2 = Persistence::open(&cfg(&dir, FsyncMode::Everysec)).expect("reopen");
        assert_eq!(p2.state().history_id(), history);
        let r = p2.load(&s2, NOW).expect("load");
        assert_eq!((r.loaded, r.disk_only), (39, 0));
        assert!(r.max_seq >= del);
        assert_eq!(s2.stream().last_seq(), r.max_seq);
        assert!(matches!(s2.get(b"k39", NOW, true), Lookup::Hit(_)));
        assert_eq!(s2.get(b"k01", NOW, true), Lookup::Miss);
        assert!(
            s2.hlc().last().get() >= r.max_version && r.max_version > 0,
            "versions continue above the loaded ones"
        );
    }

    /// sled can silently drop records from the middle of its log while the
    /// last-seq watermark survives; the clean shutdown's record count catches it.
    #[test]
    fn a_record_missing_since_the_clean_shutdown_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let s = store(1 << 20);
        let p = Persistence::open(&cfg(&dir, FsyncMode::Everysec)).expect("open");
        p.load(&s, NOW).expect("load");
        let running = p.start(&s, Arc::new(Clock::fixed(NOW))).expect("start");
        for i in 0..10 {
            put(&s, &format!("k{i}"), b"v");
        }
        // One item that is dead by the next start (exptime in the past then).
        let version = s.next_version(NOW);
        let short = ItemState {
            value: Bytes::from_static(b"x"),
            flags: 0,
            exptime: NOW + 10,
            cas: s.cas_for(version),
            version,
            bits: 0,
        };
        s.modify(b"short", NOW, |_| (Change::Put(short, Op::Store), ()))
            .expect("put");
        assert!(running.shutdown());
        drop(s);
        let text = std::fs::read_to_string(dir.join("CHECKPOINT")).expect("checkpoint");
        assert!(text.trim_end().ends_with("records=11"), "{text}");
        let saved = tmp.path().join("saved");
        copy_tree(&dir, &saved);

        // sled "loses" one record; nothing else changes.
        {
            let db = sled::open(dir.join("sled")).expect("sled");
            db.remove(record::item_key(b"k3")).expect("remove");
            db.flush().expect("flush");
        }
        let s2 = store(1 << 20);
        let p2 = Persistence::open(&cfg(&dir, FsyncMode::Everysec)).expect("open");
        let err = p2.load(&s2, NOW).expect_err("refused");
        assert!(
            err.to_string().contains("gave back 10 item records"),
            "{err}"
        );
        drop((s2, p2));
        // Refused again: the refusal does not consume the count.
        let s2 = store(1 << 20);
        let p2 = Persistence::open(&cfg(&dir, FsyncMode::Everysec)).expect("open");
        assert!(p2.load(&s2, NOW).is_err());
        drop((s2, p2));

        // The intact copy loads; its expired item is purged after the check,
        // and a crash right after that (no clean shutdown) is no false alarm.
        std::fs::remove_dir_all(&dir).expect("rm");
        copy_tree(&saved, &dir);
        for _ in 0..2 {
            let s3 = store(1 << 20);
            let p3 = Persistence::open(&cfg(&dir, FsyncMode::Everysec)).expect("open");
            let r = p3.load(&s3, NOW + 100).expect("intact set loads");
            assert_eq!(r.loaded, 10);
            drop((s3, p3));
        }
    }

    fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read") {
            let e = e.expect("entry");
            let dst = to.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy_tree(&e.path(), &dst);
            } else if e.file_name() != "LOCK" {
                std::fs::copy(e.path(), &dst).expect("copy");
            }
        }
    }

    fn twin_store(limit: usize) -> Store {
        Store::new(
            StoreConfig {
                tombstones: true,
                ..StoreConfig::standalone(limit, true, true)
            },
            Arc::new(MutationStream::new()),
            Arc::new(Stats::new()),
        )
    }

    #[test]
    fn tombstones_survive_a_restart_and_still_refuse_older_writes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("t");
        let s = twin_store(1 << 20);
        let p = Persistence::open(&cfg(&dir, FsyncMode::Always)).expect("open");
        p.load(&s, NOW).expect("load");
        let running = p.start(&s, Arc::new(Clock::fixed(NOW))).expect("start");
        let state = running.state().clone();
        put(&s, "kept", b"1");
        put(&s, "sess", b"2");
        let mut old = None;
        s.read(b"sess", NOW, false, |it| old = Some(it.state()))
            .expect("read");
        let old = old.expect("state");
        let del = s
            .modify(b"sess", NOW, |_| (Change::Remove, ()))
            .expect("delete")
            .1;
        wait_applied(&state, del);
        running.shutdown();
        drop((s, state));

        let s2 = twin_store(1 << 20);
        let p2 = Persistence::open(&cfg(&dir, FsyncMode::Everysec)).expect("reopen");
        p2.load(&s2, NOW).expect("load");
        assert_eq!(s2.len(), 1, "tombstones are not items");
        assert_eq!(s2.tombstone_stats().count, 1);
        assert_eq!(s2.get(b"sess", NOW, true), Lookup::Miss);
        // The twin replays the write the delete replaced: it loses.
        let replay = crate::mutation::Mutation {
            seq: 1,
            op: Op::Store,
            key: Bytes::from_static(b"sess"),
            version: old.version,
            item: Some(old),
            remote: false,
            flush: None,
        };
        assert_eq!(s2.apply_remote(&replay, NOW), crate::store::Applied::Stale);
        assert_eq!(s2.get(b"sess", NOW, true), Lookup::Miss);
        drop((s2, p2));

        // Once their TTL has passed they are purged at load.
        let s3 = twin_store(1 << 20);
        let p3 = Persistence::open(&cfg(&dir, FsyncMode::Everysec)).expect("reopen");
        p3.load(&s3, NOW + 601).expect("load");
        assert_eq!(s3.tombstone_stats().count, 0);
        assert_eq!(s3.len(), 1);
    }

    /// The twin's catch-up scan of a store whose data set is larger than RAM
    /// visits the items held only on disk too, each key's current state.
    #[test]
    fn the_catch_up_scan_covers_items_held_only_on_disk() {
        use crate::store::ScanCursor;
        let tmp = tempfile::tempdir().expect("tmp");
        let (s, running, state) = small_persisted_store(&tmp.path().join("d"));
        let v = vec![b'x'; 1000 - 3];
        let mut versions = Vec::new();
        for i in 0..40 {
            let seq = put(&s, &format!("k{i:02}"), &v);
            wait_applied(&state, seq);
            if let Lookup::Hit(view) = s.get(format!("k{i:02}").as_bytes(), NOW, false) {
                versions.push(view.cas);
            }
        }
        assert!(!s.is_complete() && s.len() <= 8);
        let walk = |floor: u64| {
            let mut seen = std::collections::BTreeMap::new();
            let mut at = Some(ScanCursor::default());
            for _ in 0..1000 {
                let Some(c) = at.take() else { break };
                let (recs, next) = s.scan(c, floor, 5, NOW);
                for m in recs {
                    *seen.entry(m.key.clone()).or_insert(0) += 1;
                    assert!(m.version > floor);
                }
                at = next;
            }
            assert!(at.is_none(), "the scan ends");
            seen
        };
        let all = walk(0);
        assert_eq!(all.len(), 40, "every key, in RAM or only on disk");
        assert!(all.values().all(|n| *n <= 2), "at most twice: {all:?}");
        // Above a floor: only the newer half.
        let newer = walk(versions[19]);
        assert_eq!(newer.len(), 20);
        assert!(newer.keys().all(|k| k.as_ref() >= &b"k20"[..]));
        drop(running);
    }
}
