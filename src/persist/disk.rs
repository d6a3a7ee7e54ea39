//! The data directory: locking it, opening sled safely, and making writes
//! durable for real.
//!
//! Layout:
//!
//! ```text
//! DIR/LOCK         flock()ed for the daemon's lifetime; holds its pid
//! DIR/CHECKPOINT   "memtwin-checkpoint 1 <history id> <durable seq> [records=<n>]"
//! DIR/sled/        the sled 0.34.7 database (conf, db, blobs/, snap.*)
//! DIR/sled.compact a rewrite in progress (see `compact`); sled.next and
//!                  sled.old exist only for a moment while it is swapped in
//! DIR/RESCUE       writes saved when sled wedged, applied by the next open
//!                  (see `rescue`)
//! ```
//!
//! **Durability.** sled 0.34.7's `flush()` writes its buffers and calls
//! `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` on Linux, which flushes
//! neither file metadata nor the device's write cache (spacejam/sled#1452), and
//! large values live in separate `blobs/` files that sled never syncs at all.
//! [`Syncer::sync`] therefore follows `flush()` with an `fdatasync` of
//! `sled/db`, an `fdatasync` of every blob file not synced before plus an
//! `fsync` of `blobs/` when any appeared, and an `fsync` of the `sled/` directory
//! when its entries changed (snapshots are renamed into place). fsync acts on
//! the inode, so a separately opened descriptor covers what sled wrote through
//! its own.
//!
//! **Corruption.** sled can return `Corruption` or even panic when it opens or
//! reads a damaged directory (sled#1509, #1527, #1533; seen here too: an
//! assertion in `Node::set_leaf` while the warm restart scanned a log with
//! 4 KiB of garbage in it). Opening and the warm restart's reads are wrapped so
//! both become a refusal to start that names the directory and tells the operator
//! how to move it aside. memtwin never deletes or "repairs" a data directory.
//!
//! Worse, sled treats a damaged message in the *middle* of its log like a torn
//! tail after a crash: it silently recovers only the part before it (measured:
//! 4 KiB of garbage at 75 % of the `db` file, and 20 000 items came back as
//! 12 583). A crash cannot be told apart from that inside sled, so memtwin keeps
//! an out-of-band watermark, `DIR/CHECKPOINT` (history id + a sequence number
//! known durable), rewritten atomically after a durable sync at most once a
//! second and at shutdown. If sled recovers less than the watermark, writes that
//! were durable are missing: the daemon refuses to start instead of serving a
//! silently shortened data set.
//!
//! The watermark misses damage that leaves the `last_seq` metadata intact (it
//! is rewritten with every batch, so it usually sits near the end of sled's
//! log): measured, 4 KiB of garbage at 50 % of `db` gave back 19 987 of 20 000
//! items with the watermark satisfied. So a clean shutdown also counts the item
//! records on disk and writes the count into the checkpoint; the next warm
//! restart must find exactly that many (when nothing was written after the
//! count) or it refuses to start. The count is removed again as soon as it has
//! been verified, before the first purge changes the number of records.

use super::record::{self, meta};
use super::rescue;
use crate::mutation::FlushSpec;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

/// Why the data directory cannot be used. The messages are shown to operators.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "data directory {dir} is in use by another memtwin process{pid}: two daemons must \
         never share a data directory (stop the other one, or give this one its own --data-dir)"
    )]
    Locked { dir: PathBuf, pid: String },
    #[error(
        "cannot use data directory {dir}: {detail}. memtwin never deletes or repairs data on \
         its own. If the directory is damaged, keep it for inspection: move the directory aside \
         (e.g. `mv {dir} {dir}.broken-$(date +%s)`) and start again; memtwin then creates a \
         new, empty data set (sessions only in the old one are lost unless a twin holds them)"
    )]
    Unusable { dir: PathBuf, detail: String },
}

impl OpenError {
    pub fn unusable(dir: &Path, detail: impl std::fmt::Display) -> Self {
        OpenError::Unusable {
            dir: dir.to_path_buf(),
            detail: detail.to_string(),
        }
    }
}

/// What was found when the data set was opened.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub history_id: u128,
    pub last_seq: u64,
    pub flush: FlushSpec,
    pub items_hint: u64,
    pub created: bool,
    /// Item records the last clean shutdown counted on disk, when nothing was
    /// written since: the warm restart must find exactly this many.
    pub expect_records: Option<u64>,
}

/// The open data directory. Readers (read-through) and the writer share the
/// sled handle through an `RwLock` so the writer can close and reopen sled
/// after an I/O error without any reader holding a stale handle.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    sled_dir: PathBuf,
    cache_bytes: u64,
    db: RwLock<Option<sled::Db>>,
    _lock: File,
}

fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    std::fs::create_dir_all(dir).map_err(|e| OpenError::unusable(dir, e))?;
    if !dir.is_dir() {
        return Err(OpenError::unusable(dir, "not a directory"));
    }
    let path = dir.join("LOCK");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| OpenError::unusable(dir, format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        return Err(OpenError::unusable(
            dir,
            format!("cannot lock {}: {err}", path.display()),
        ));
    }
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    let _ = f.sync_all();
    Ok(f)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Run sled code that may panic on damaged data; a panic becomes
/// `Err("sled panicked while <doing>: <message>")`.
pub(crate) fn contain_sled_panic<T>(doing: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| format!("sled panicked while {doing}: {}", panic_text(p)))
}

/// Open sled at `path`, turning its panics into errors.
pub(crate) fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, String> {
    let cfg = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::LowSpace)
        // memtwin decides when to flush and fsync (see the writer).
        .flush_every_ms(None);
    contain_sled_panic("opening", || cfg.open())?.map_err(|e| e.to_string())
}

/// How long [`close_sled`] keeps waking a stuck flush before giving up.
const CLOSE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Drop the sled handle of the database in `sled_dir`, containing a panic
/// from its drop-time flush, and never hanging the caller.
///
/// sled 0.34.7 can wedge after an I/O error: seen here about once in 30 runs
/// of the disk-full test under load, the writer thread hung for good in
/// `Tree::drop`, whose flush waits for a log position that no write will ever
/// reach (every sled I/O thread idle, no error recorded; a second flush waits
/// the same way), so the daemon never became writable again. The flush
/// therefore runs on a helper thread first, with a second flush after 100 ms
/// to deliver the wake-up sled can miss when an error *was* recorded
/// (`pagecache/logger.rs` records one without notifying). If sled has not
/// answered after [`CLOSE_PATIENCE`], the handle is wedged and abandoned, and
/// [`sled_wedged`] says so from then on. The stuck flush holds sled's
/// concurrency-control lock, which is one static for the whole process: every
/// later `apply_batch`, on any handle, would wait for it forever (seen: the
/// reopened handle hung in `concurrency_control::write`). The writer therefore
/// saves what it holds in [`super::rescue`] and exits for a restart.
pub(crate) fn close_sled(db: sled::Db, sled_dir: &Path) {
    if !flush_waking(&db) {
        // Dropping it would hang this thread in the same wait.
        std::mem::forget(db);
        SLED_WEDGED.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::error!(
            "persistence: sled wedged after an I/O error: closing {} did not finish within {} \
             s, and sled's lock is process-wide, so no sled handle can write again until \
             memtwin restarts",
            sled_dir.display(),
            CLOSE_PATIENCE.as_secs()
        );
        return;
    }
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db))).is_err() {
        tracing::warn!("sled panicked while closing after an I/O error");
    }
}

/// Set for good once a sled handle wedged (see [`close_sled`]).
static SLED_WEDGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once sled wedged in this process: only a restart helps.
pub(crate) fn sled_wedged() -> bool {
    SLED_WEDGED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Flush `db` on a helper thread, waking it while it waits (see
/// [`close_sled`]). False when sled did not answer within [`CLOSE_PATIENCE`];
/// the handle then stays with the helper.
fn flush_waking(db: &sled::Db) -> bool {
    use std::time::{Duration, Instant};
    let Some(first) = spawn_flush(db, "memtwin-sled-close") else {
        return true;
    };
    let started = Instant::now();
    let mut waker: Option<std::thread::JoinHandle<()>> = None;
    while !first.is_finished() {
        if started.elapsed() >= CLOSE_PATIENCE {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
        // A flush that finds the error recorded wakes the stuck one; one
        // waker at a time, a new one when the last returned.
        let waking = waker.as_ref().is_some_and(|w| !w.is_finished());
        if !first.is_finished() && !waking && started.elapsed() >= Duration::from_millis(100) {
            waker = spawn_flush(db, "memtwin-sled-wake");
        }
    }
    true
}

/// `db.flush()` on its own thread, a panic contained.
fn spawn_flush(db: &sled::Db, name: &str) -> Option<std::thread::JoinHandle<()>> {
    let db = db.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.flush()));
        })
        .ok()
}

const CHECKPOINT_MAGIC: &str = "memtwin-checkpoint 1";

/// The contents of `DIR/CHECKPOINT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub history: u128,
    /// A sequence number known durable.
    pub durable: u64,
    /// Item records on disk, counted by a clean shutdown at `durable`.
    pub records: Option<u64>,
}

/// Read `DIR/CHECKPOINT`. Missing = None.
pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, OpenError> {
    let path = dir.join("CHECKPOINT");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OpenError::unusable(dir, format!("{}: {e}", path.display()))),
    };
    let bad = || {
        OpenError::unusable(
            dir,
            format!("{} is not a memtwin checkpoint", path.display()),
        )
    };
    let rest = text.trim().strip_prefix(CHECKPOINT_MAGIC).ok_or_else(bad)?;
    let mut it = rest.split_whitespace();
    let history = it
        .next()
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .ok_or_else(bad)?;
    let durable = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    // Later fields are optional `name=value` pairs; unknown ones are ignored
    // so an older build can still read a newer checkpoint.
    let mut records = None;
    for field in it {
        if let Some(n) = field.strip_prefix("records=") {
            records = Some(n.parse().map_err(|_| bad())?);
        }
    }
    Ok(Some(Checkpoint {
        history,
        durable,
        records,
    }))
}

/// Atomically replace `DIR/CHECKPOINT` (write, fsync, rename, fsync dir).
/// `records` only from a clean shutdown (see the module docs).
pub fn write_checkpoint(
    dir: &Path,
    history: u128,
    durable_seq: u64,
    records: Option<u64>,
) -> io::Result<()> {
    let tmp = dir.join("CHECKPOINT.tmp");
    {
        let mut f = File::create(&tmp)?;
        match records {
            Some(n) => writeln!(
                f,
                "{CHECKPOINT_MAGIC} {history:032x} {durable_seq} records={n}"
            )?,
            None => writeln!(f, "{CHECKPOINT_MAGIC} {history:032x} {durable_seq}")?,
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("CHECKPOINT"))?;
    File::open(dir)?.sync_all()
}

/// Finish or clean up after a rewrite interrupted by a crash (see `compact`).
/// Only derived copies are removed, never the authoritative database.
fn resolve_layout(dir: &Path) -> Result<(), OpenError> {
    let live = dir.join("sled");
    let next = dir.join("sled.next");
    let old = dir.join("sled.old");
    let compact = dir.join("sled.compact");
    let fail = |e: io::Error| {
        OpenError::unusable(dir, format!("cannot finish an interrupted rewrite: {e}"))
    };
    if next.exists() {
        if live.exists() {
            tracing::warn!(
                "removing {}: a complete rewrite that was never swapped in",
                next.display()
            );
            std::fs::remove_dir_all(&next).map_err(fail)?;
        } else {
            tracing::warn!(
                "finishing an interrupted rewrite: {} -> {}",
                next.display(),
                live.display()
            );
            std::fs::rename(&next, &live).map_err(fail)?;
            File::open(dir).and_then(|f| f.sync_all()).map_err(fail)?;
        }
    }
    if old.exists() && live.exists() {
        tracing::warn!("removing {}: replaced by a rewrite", old.display());
        std::fs::remove_dir_all(&old).map_err(fail)?;
    }
    if compact.exists() {
        tracing::warn!("removing {}: an unfinished rewrite", compact.display());
        std::fs::remove_dir_all(&compact).map_err(fail)?;
    }
    Ok(())
}

/// 16 random bytes from the kernel.
fn random_u128() -> io::Result<u128> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u128::from_le_bytes(b))
}

fn now_unix() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

impl Disk {
    /// Lock `dir` and open (or create) the data set in it.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<(Disk, Opened), OpenError> {
        let lock = lock_dir(dir)?;
        resolve_layout(dir)?;
        let sled_dir = dir.join("sled");
        let fresh_dir = !sled_dir.join("db").exists();
        let db = open_sled(&sled_dir, cache_bytes).map_err(|e| {
            if e.contains("could not acquire lock") {
                OpenError::Locked {
                    dir: dir.to_path_buf(),
                    pid: String::new(),
                }
            } else {
                OpenError::unusable(dir, format!("sled cannot open {}: {e}", sled_dir.display()))
            }
        })?;
        let mut opened = Self::read_or_init_meta(dir, &db, fresh_dir)?;
        if let Some(Checkpoint {
            history,
            durable,
            records,
        }) = read_checkpoint(dir)?
        {
            if history == opened.history_id && durable == opened.last_seq {
                opened.expect_records = records;
            }
            if history == opened.history_id && durable > opened.last_seq {
                return Err(OpenError::unusable(
                    dir,
                    format!(
                        "sled recovered the data set only up to mutation {}, but mutation \
                         {durable} was durable before (see {}): part of sled's log is damaged \
                         and sled dropped everything after it",
                        opened.last_seq,
                        dir.join("CHECKPOINT").display()
                    ),
                ));
            }
        }
        if let Some(applied) = Self::apply_rescue(dir, &sled_dir, &db, opened.history_id)? {
            opened = Self::read_or_init_meta(dir, &db, false)?;
            tracing::warn!(
                "applied {applied} writes from {} (saved when sled wedged before the last stop); \
                 last seq now {}",
                rescue::path(dir).display(),
                opened.last_seq
            );
        }
        if fresh_dir {
            // Make the new files' directory entries durable too.
            for d in [dir, sled_dir.as_path()] {
                File::open(d)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| OpenError::unusable(dir, e))?;
            }
        }
        Ok((
            Disk {
                dir: dir.to_path_buf(),
                sled_dir,
                cache_bytes,
                db: RwLock::new(Some(db)),
                _lock: lock,
            },
            opened,
        ))
    }

    /// Apply `DIR/RESCUE` (see [`super::rescue`]) durably and remove it.
    /// Returns how many writes it held, or None when there was none.
    fn apply_rescue(
        dir: &Path,
        sled_dir: &Path,
        db: &sled::Db,
        history: u128,
    ) -> Result<Option<usize>, OpenError> {
        let file = rescue::path(dir);
        let bad = |d: String| {
            OpenError::unusable(
                dir,
                format!(
                    "{}: {d}; it holds writes saved when sled wedged, move it aside to start \
                     without them",
                    file.display()
                ),
            )
        };
        let Some(bytes) = rescue::read(dir).map_err(|e| bad(e.to_string()))? else {
            return Ok(None);
        };
        let (from, entries) = rescue::decode(&bytes).map_err(|e| bad(e.to_string()))?;
        if from != history {
            return Err(bad(format!(
                "it belongs to data set {from:032x}, not to this one ({history:032x})"
            )));
        }
        let mut b = sled::Batch::default();
        for (k, v) in &entries {
            match v {
                Some(v) => b.insert(k.as_slice(), v.as_slice()),
                None => b.remove(k.as_slice()),
            }
        }
        db.apply_batch(b)
            .map_err(|e| bad(format!("cannot apply it: {e}")))?;
        Syncer::new(sled_dir)
            .sync(db, true)
            .map_err(|e| bad(format!("cannot make it durable: {e}")))?;
        rescue::remove(dir).map_err(|e| bad(format!("applied, but cannot remove it: {e}")))?;
        Ok(Some(entries.len()))
    }

    fn read_or_init_meta(dir: &Path, db: &sled::Db, fresh_dir: bool) -> Result<Opened, OpenError> {
        let bad = |d: String| OpenError::unusable(dir, d);
        let get = |k: &[u8]| {
            db.get(k)
                .map_err(|e| bad(format!("cannot read metadata: {e}")))
        };
        match get(meta::FORMAT)? {
            Some(f) if f.as_ref() == record::FORMAT => {}
            Some(f) => {
                return Err(bad(format!(
                    "unknown data format {:?} (this build reads {:?})",
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(record::FORMAT)
                )))
            }
            None => {
                if !fresh_dir {
                    // sled opened existing files but our marker is gone: never
                    // paper over that by starting a new, empty data set.
                    return Err(bad(
                        "the sled database has no memtwin format marker (not a memtwin data \
                         set, damaged, or its creation was interrupted)"
                            .into(),
                    ));
                }
                let history = random_u128().map_err(|e| bad(format!("no randomness: {e}")))?;
                let mut b = sled::Batch::default();
                b.insert(meta::HISTORY, &history.to_le_bytes()[..]);
                b.insert(meta::LAST_SEQ, &0u64.to_le_bytes()[..]);
                b.insert(meta::FLUSH, &record::encode_flush(FlushSpec::default())[..]);
                b.insert(meta::CREATED, &now_unix().to_le_bytes()[..]);
                // The marker last: a data set without it was never fully created.
                b.insert(meta::FORMAT, record::FORMAT);
                db.apply_batch(b)
                    .and_then(|_| db.flush().map(|_| ()))
                    .map_err(|e| bad(format!("cannot initialise the data set: {e}")))?;
                tracing::info!(
                    "created a new data set in {} (history id {history:032x})",
                    dir.display()
                );
                return Ok(Opened {
                    history_id: history,
                    last_seq: 0,
                    flush: FlushSpec::default(),
                    items_hint: 0,
                    created: true,
                    expect_records: None,
                });
            }
        }
        let history = match get(meta::HISTORY)? {
            Some(h) if h.len() == 16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&h);
                u128::from_le_bytes(a)
            }
            _ => return Err(bad("the data-set identity (history id) is missing".into())),
        };
        let last_seq = match get(meta::LAST_SEQ)? {
            Some(v) => record::decode_u64(&v).map_err(|e| bad(format!("last_seq: {e}")))?,
            None => 0,
        };
        let flush = match get(meta::FLUSH)? {
            Some(v) => record::decode_flush(&v).map_err(|e| bad(format!("flush state: {e}")))?,
            None => FlushSpec::default(),
        };
        let items_hint = match get(meta::ITEMS_HINT)? {
            Some(v) => record::decode_u64(&v).unwrap_or(0),
            None => 0,
        };
        Ok(Opened {
            history_id: history,
            last_seq,
            flush,
            items_hint,
            created: false,
            expect_records: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn sled_dir(&self) -> &Path {
        &self.sled_dir
    }

    pub(crate) fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    pub(crate) fn compact_dir(&self) -> PathBuf {
        self.dir.join("sled.compact")
    }

    pub(crate) fn next_dir(&self) -> PathBuf {
        self.dir.join("sled.next")
    }

    /// fsync the data directory (after renames in it).
    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Swap a sealed rewrite (`sled.next`) in place of the live database and
    /// open it; `after` runs on the new handle before readers can see it.
    pub(crate) fn swap(
        &self,
        after: impl FnOnce(&sled::Db) -> Result<(), String>,
    ) -> Result<(), String> {
        let old_dir = self.dir.join("sled.old");
        let mut g = self.write();
        if let Some(db) = g.take() {
            close_sled(db, &self.sled_dir);
        }
        if sled_wedged() {
            return Err("sled wedged: no handle in this process can write any more".into());
        }
        let renamed = std::fs::rename(&self.sled_dir, &old_dir)
            .and_then(|_| match std::fs::rename(self.next_dir(), &self.sled_dir) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Put the live database back where it was.
                    let _ = std::fs::rename(&old_dir, &self.sled_dir);
                    Err(e)
                }
            })
            .and_then(|_| self.sync_dir());
        if let Err(e) = &renamed {
            tracing::error!("rewrite swap failed ({e}); reopening the previous database");
        }
        let db = open_sled(&self.sled_dir, self.cache_bytes)?;
        after(&db)?;
        *g = Some(db);
        drop(g);
        renamed.map_err(|e| e.to_string())?;
        if let Err(e) = std::fs::remove_dir_all(&old_dir) {
            tracing::warn!("cannot remove {}: {e}", old_dir.display());
        }
        Ok(())
    }

    /// Close the handle, containing a panic from sled's drop-time flush (after
    /// a failed warm restart the data set may be damaged).
    pub(crate) fn close(&self) {
        if let Some(db) = self.write().take() {
            close_sled(db, &self.sled_dir);
        }
    }

    /// Shared access to the sled handle (None while a reopen failed).
    pub fn read(&self) -> RwLockReadGuard<'_, Option<sled::Db>> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Option<sled::Db>> {
        self.db.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Read one item record.
    pub fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, String> {
        let g = self.read();
        let db = g
            .as_ref()
            .ok_or_else(|| "the data set is closed after an I/O error".to_string())?;
        // A damaged page must become an error reply, not a dead worker thread.
        contain_sled_panic("reading an item", || db.get(record::item_key(key)))?
            .map_err(|e| e.to_string())
    }

    /// Item records after the item key `after` (from the first when empty),
    /// in key order: those whose version is above `floor`, at most `max` of
    /// them, visiting at most `visit` records. Returns them with the key to
    /// resume after, or None when the last item was visited.
    #[allow(clippy::type_complexity)]
    pub fn scan_items(
        &self,
        after: &[u8],
        floor: u64,
        max: usize,
        visit: usize,
    ) -> Result<(Vec<(sled::IVec, sled::IVec)>, Option<Vec<u8>>), String> {
        use std::ops::Bound;
        let g = self.read();
        let db = g
            .as_ref()
            .ok_or_else(|| "the data set is closed after an I/O error".to_string())?;
        let start = if after.is_empty() {
            Bound::Included(vec![record::ITEM_PREFIX])
        } else {
            Bound::Excluded(record::item_key(after))
        };
        let end = Bound::Excluded(vec![record::ITEM_PREFIX + 1]);
        contain_sled_panic("scanning items", || {
            let mut out = Vec::new();
            let mut last: Option<Vec<u8>> = None;
            for (n, kv) in db.range::<Vec<u8>, _>((start, end)).enumerate() {
                if n >= visit || out.len() >= max {
                    return Ok((out, last));
                }
                let (k, v) = kv.map_err(|e| e.to_string())?;
                last = Some(k[1..].to_vec());
                let header = record::decode_header(&v).map_err(|e| e.to_string())?;
                if header.version > floor {
                    out.push((k, v));
                }
            }
            Ok((out, None))
        })?
    }

    /// Close sled and open it again (after an I/O error left it unusable:
    /// sled 0.34 latches the first write error for the life of the handle).
    /// Runs `after` on the new handle before any reader can see it.
    pub fn reopen(
        &self,
        after: impl FnOnce(&sled::Db) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut g = self.write();
        if let Some(old) = g.take() {
            close_sled(old, &self.sled_dir);
        }
        if sled_wedged() {
            return Err("sled wedged: no handle in this process can write any more".into());
        }
        // sled's background threads may hold the old file (and its lock) for a
        // moment after the handle is dropped.
        let mut last = String::new();
        for _ in 0..20 {
            match open_sled(&self.sled_dir, self.cache_bytes) {
                Ok(db) => {
                    after(&db)?;
                    *g = Some(db);
                    return Ok(());
                }
                Err(e) => {
                    last = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
        Err(last)
    }

    /// Check there is room to write again: write and sync a scratch file as
    /// large as a sled segment, then remove it.
    pub fn probe_space(&self) -> io::Result<()> {
        let path = self.dir.join("space-probe.tmp");
        let res = (|| {
            let mut f = File::create(&path)?;
            f.write_all(&vec![0u8; 1 << 20])?;
            f.sync_all()
        })();
        let _ = std::fs::remove_file(&path);
        res
    }

    /// Bytes available to memtwin on the data directory's filesystem.
    pub fn free_bytes(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs writes into the zeroed struct we pass.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a valid pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
    }

    /// Bytes of sled's files on disk.
    pub fn size_on_disk(&self) -> Option<u64> {
        let g = self.read();
        g.as_ref().and_then(|db| db.size_on_disk().ok())
    }
}

/// Makes what sled wrote durable (see the module docs). Owned by the writer.
#[derive(Debug)]
pub struct Syncer {
    sled_dir: PathBuf,
    db_file: Option<File>,
    synced_blobs: std::collections::HashSet<std::ffi::OsString>,
    dir_mtime: Option<SystemTime>,
}

impl Syncer {
    pub fn new(sled_dir: &Path) -> Self {
        Syncer {
            sled_dir: sled_dir.to_path_buf(),
            db_file: None,
            synced_blobs: Default::default(),
            dir_mtime: None,
        }
    }

    /// Forget cached descriptors (after sled was reopened).
    pub fn reset(&mut self) {
        self.db_file = None;
        self.dir_mtime = None;
    }

    /// `flush()` sled, and when `durable`, fsync what it wrote.
    pub fn sync(&mut self, db: &sled::Db, durable: bool) -> io::Result<()> {
        db.flush().map_err(io::Error::other)?;
        if !durable {
            return Ok(());
        }
        if self.db_file.is_none() {
            self.db_file = Some(File::open(self.sled_dir.join("db"))?);
        }
        if let Some(f) = &self.db_file {
            f.sync_data()?;
        }
        self.sync_blobs()?;
        let mtime = std::fs::metadata(&self.sled_dir)?.modified().ok();
        if mtime.is_none() || mtime != self.dir_mtime {
            File::open(&self.sled_dir)?.sync_all()?;
            self.dir_mtime = mtime;
        }
        Ok(())
    }

    /// fdatasync blob files not synced yet, then the blobs directory.
    fn sync_blobs(&mut self) -> io::Result<()> {
        let dir = self.sled_dir.join("blobs");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = std::collections::HashSet::new();
        let mut new = false;
        for entry in rd {
            let name = entry?.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(dir.join(&name)) {
                    Ok(f) => f.sync_data()?,
                    // Removed by sled's GC in the meantime.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        self.synced_blobs = present;
        if new {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_panics_become_errors_that_say_what_was_being_done() {
        assert_eq!(contain_sled_panic("reading", || 7), Ok(7));
        let err = contain_sled_panic("reading the data set", || -> u8 {
            panic!("assertion failed: *key < self.hi")
        })
        .expect_err("contained");
        assert_eq!(
            err,
            "sled panicked while reading the data set: assertion failed: *key < self.hi"
        );
        let err = contain_sled_panic("opening", || -> u8 { panic!("{} {}", "node", 3) })
            .expect_err("contained");
        assert_eq!(err, "sled panicked while opening: node 3");
    }

    fn make_data_set(dir: &Path, key: &[u8]) -> u128 {
        let (disk, opened) = Disk::open(dir, 8 << 20).expect("open");
        {
            let g = disk.read();
            let db = g.as_ref().expect("db");
            db.insert(record::item_key(key), b"v".to_vec())
                .expect("insert");
            db.flush().expect("flush");
        }
        opened.history_id
    }

    fn has(dir: &Path, key: &[u8]) -> bool {
        let (disk, _) = Disk::open(dir, 8 << 20).expect("reopen");
        let found = disk.get(key).expect("get").is_some();
        drop(disk);
        found
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read") {
            let e = e.expect("entry");
            let dst = to.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy_dir(&e.path(), &dst);
            } else {
                std::fs::copy(e.path(), dst).expect("copy");
            }
        }
    }

    fn refusal(dir: &Path) -> String {
        match Disk::open(dir, 8 << 20) {
            Ok(_) => panic!("{} opened", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_rescue_file_is_applied_once_and_a_bad_one_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let history = make_data_set(&dir, b"gone");
        let entries: Vec<rescue::Entry> = vec![
            (record::item_key(b"saved"), Some(b"v".to_vec())),
            (record::item_key(b"gone"), None),
            (meta::LAST_SEQ.to_vec(), Some(42u64.to_le_bytes().to_vec())),
        ];
        // Another data set's file, then a damaged one: refused, left in place.
        rescue::write(&dir, history ^ 1, &entries).expect("write");
        let err = refusal(&dir);
        assert!(err.contains("belongs to data set"), "{err}");
        let mut b = rescue::encode(history, entries.iter());
        b[30] ^= 1;
        std::fs::write(rescue::path(&dir), &b).expect("write");
        let err = refusal(&dir);
        assert!(
            err.contains("checksum") && err.contains("move it aside"),
            "{err}"
        );
        assert!(rescue::path(&dir).exists());
        // The right one: applied on top of what sled has, then removed.
        rescue::write(&dir, history, &entries).expect("write");
        let (disk, opened) = Disk::open(&dir, 8 << 20).expect("open");
        assert_eq!(opened.last_seq, 42);
        assert!(disk.get(b"saved").expect("get").is_some());
        assert!(disk.get(b"gone").expect("get").is_none());
        drop(disk);
        assert!(!rescue::path(&dir).exists());
        assert!(has(&dir, b"saved"), "durable without the file");
    }

    #[test]
    fn interrupted_rewrites_resolve_to_a_complete_database() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let history = make_data_set(&dir, b"k");
        let live = dir.join("sled");

        // An unfinished copy is discarded.
        copy_dir(&live, &dir.join("sled.compact"));
        assert!(has(&dir, b"k"));
        assert!(!dir.join("sled.compact").exists());

        // A sealed copy that was never swapped in is discarded (both are equal).
        copy_dir(&live, &dir.join("sled.next"));
        assert!(has(&dir, b"k"));
        assert!(!dir.join("sled.next").exists());

        // Crash between the two renames: the sealed copy becomes the database.
        std::fs::rename(&live, dir.join("sled.old")).expect("mv");
        copy_dir(&dir.join("sled.old"), &dir.join("sled.next"));
        let (disk, opened) = Disk::open(&dir, 8 << 20).expect("open after interrupted swap");
        assert_eq!(opened.history_id, history, "same data set");
        assert!(disk.get(b"k").expect("get").is_some());
        drop(disk);
        assert!(!dir.join("sled.old").exists() && !dir.join("sled.next").exists());
    }

    #[test]
    fn checkpoint_round_trip_and_refusal() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let history = make_data_set(&dir, b"k");
        write_checkpoint(&dir, history, 0, None).expect("write");
        let cp = |durable, records| {
            Some(Checkpoint {
                history,
                durable,
                records,
            })
        };
        assert_eq!(read_checkpoint(&dir).expect("read"), cp(0, None));
        let (disk, opened) = Disk::open(&dir, 8 << 20).expect("open");
        assert_eq!(opened.expect_records, None);
        drop(disk);
        // A clean shutdown's count is handed to the warm restart...
        write_checkpoint(&dir, history, 0, Some(7)).expect("write");
        assert_eq!(read_checkpoint(&dir).expect("read"), cp(0, Some(7)));
        let (disk, opened) = Disk::open(&dir, 8 << 20).expect("open");
        assert_eq!(opened.expect_records, Some(7));
        drop(disk);
        // ...unless newer writes reached the disk after it.
        {
            let (disk, _) = Disk::open(&dir, 8 << 20).expect("open");
            let g = disk.read();
            let db = g.as_ref().expect("db");
            db.insert(meta::LAST_SEQ, &5u64.to_le_bytes()[..])
                .expect("insert");
            db.flush().expect("flush");
        }
        assert!(Disk::open(&dir, 8 << 20).is_ok_and(|(_, o)| o.expect_records.is_none()));
        // Unknown fields are ignored; a malformed count is not.
        std::fs::write(
            dir.join("CHECKPOINT"),
            format!("{CHECKPOINT_MAGIC} {history:032x} 0 future=1\n"),
        )
        .expect("write");
        assert_eq!(read_checkpoint(&dir).expect("read"), cp(0, None));
        std::fs::write(
            dir.join("CHECKPOINT"),
            format!("{CHECKPOINT_MAGIC} {history:032x} 0 records=x\n"),
        )
        .expect("write");
        assert!(read_checkpoint(&dir).is_err());
        // Claims a durable write the database does not have: refused.
        write_checkpoint(&dir, history, 99, None).expect("write");
        let err = Disk::open(&dir, 8 << 20).expect_err("refused");
        assert!(err.to_string().contains("was durable before"), "{err}");
        // A checkpoint of another data set is ignored.
        write_checkpoint(&dir, history ^ 1, 99, Some(1)).expect("write");
        assert!(Disk::open(&dir, 8 << 20).is_ok_and(|(_, o)| o.expect_records.is_none()));
        std::fs::write(dir.join("CHECKPOINT"), b"garbage").expect("write");
        assert!(Disk::open(&dir, 8 << 20).is_err());
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let (_disk, _) = Disk::open(&dir, 8 << 20).expect("open");
        let err = Disk::open(&dir, 8 << 20).expect_err("locked");
        assert!(matches!(err, OpenError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
    }
}
