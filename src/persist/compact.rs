//! Periodic rewrite ("compaction") of the sled database.
//!
//! Why: sled 0.34.7 only cleans a segment once the data set's space
//! amplification exceeds a hard-coded 5x (`MAX_SPACE_AMPLIFICATION`; its
//! `segment_cleanup_threshold` setting is a no-op), and its memory use grows
//! with the volume written, not only with the live data. Measured on session
//! churn (100k x 1 KiB, 4 rewrites, half deleted): 300 MB on disk for 55 MB of
//! live records. A fresh, sorted copy of the live records takes about 1.7x,
//! and reopening sled gives its memory back.
//!
//! How (all in the writer thread, so no lock is needed against the writer):
//!
//! 1. copy live item records, in key order, a chunk per writer iteration into
//!    `DIR/sled.compact` (expired and flushed records are simply not copied);
//! 2. every batch the writer applies to the live database is mirrored into the
//!    copy for keys below the copy cursor (keys above it are copied later, from
//!    the live database, which already has the change);
//! 3. when the cursor reaches the end: copy the metadata, fsync the copy, close
//!    it and rename it to `DIR/sled.next` (the copy is complete from here on);
//! 4. under the disk write lock (read-through waits a moment): close the live
//!    database, rename `sled` -> `sled.old`, `sled.next` -> `sled`, fsync the
//!    directory, reopen, and remove `sled.old`.
//!
//! A crash at any point leaves a layout [`super::disk`] resolves at start-up:
//! `sled.compact` is an incomplete copy (removed), `sled.next` next to `sled`
//! is a complete copy that was not swapped in (removed; both are equal),
//! `sled.next` without `sled` is a swap interrupted between the two renames
//! (finished), `sled.old` next to `sled` is the replaced database (removed).

use super::disk::{close_sled, open_sled, Disk, Syncer};
use super::record::{self, ITEM_PREFIX, META_PREFIX};
use super::writer::Changes;
use crate::mutation::FlushSpec;
use std::path::PathBuf;
use std::time::Instant;

/// Records or bytes copied per step.
const CHUNK_RECORDS: usize = 2000;
const CHUNK_BYTES: usize = 4 << 20;

/// A rewrite in progress.
pub(crate) struct Compaction {
    db: sled::Db,
    path: PathBuf,
    /// Item keys below this are copied.
    cursor: Vec<u8>,
    pub(crate) copied: u64,
    pub(crate) bytes: u64,
    pub(crate) started: Instant,
}

impl std::fmt::Debug for Compaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compaction")
            .field("path", &self.path)
            .field("copied", &self.copied)
            .finish()
    }
}

impl Compaction {
    /// Start a copy next to the live database.
    pub(crate) fn start(disk: &Disk, cache_bytes: u64) -> Result<Compaction, String> {
        let path = disk.compact_dir();
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| e.to_string())?;
        }
        let db = open_sled(&path, cache_bytes)?;
        Ok(Compaction {
            db,
            path,
            cursor: vec![ITEM_PREFIX],
            copied: 0,
            bytes: 0,
            started: Instant::now(),
        })
    }

    /// Apply to the copy the writes of a batch just applied to the live
    /// database, for the keys already copied.
    pub(crate) fn mirror(&self, changes: &Changes) -> Result<(), String> {
        let mut b = sled::Batch::default();
        let mut any = false;
        for (k, v) in changes.writes_below(&self.cursor) {
            any = true;
            match v {
                Some(v) => b.insert(k.as_slice(), v.as_slice()),
                None => b.remove(k.as_slice()),
            }
        }
        if any {
            self.db.apply_batch(b).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Copy the next chunk of live records. Returns true when all are copied.
    pub(crate) fn step(
        &mut self,
        live: &sled::Db,
        now: u32,
        flush: FlushSpec,
    ) -> Result<bool, String> {
        let end = vec![ITEM_PREFIX + 1];
        let mut b = sled::Batch::default();
        let (mut n, mut bytes) = (0usize, 0usize);
        let mut last: Option<sled::IVec> = None;
        for kv in live.range(self.cursor.clone()..end.clone()) {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            let dead = record::decode_header(&v).is_ok_and(|h| h.is_dead(now, flush));
            n += 1;
            if !dead {
                bytes += k.len() + v.len();
                self.copied += 1;
                b.insert(k.clone(), v);
            }
            last = Some(k);
            if n >= CHUNK_RECORDS || bytes >= CHUNK_BYTES {
                break;
            }
        }
        self.db.apply_batch(b).map_err(|e| e.to_string())?;
        self.bytes += bytes as u64;
        match last {
            Some(k) if n >= CHUNK_RECORDS || bytes >= CHUNK_BYTES => {
                let mut next = k.to_vec();
                next.push(0);
                self.cursor = next;
                Ok(false)
            }
            _ => {
                self.cursor = end;
                Ok(true)
            }
        }
    }

    /// Copy the metadata, make the copy durable, close it, and mark it
    /// complete by renaming it to `sled.next`.
    pub(crate) fn seal(self, live: &sled::Db, disk: &Disk) -> Result<(), String> {
        let mut b = sled::Batch::default();
        for kv in live.scan_prefix([META_PREFIX]) {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            b.insert(k, v);
        }
        self.db.apply_batch(b).map_err(|e| e.to_string())?;
        let mut syncer = Syncer::new(&self.path);
        syncer.sync(&self.db, true).map_err(|e| e.to_string())?;
        close_sled(self.db, &self.path);
        std::fs::rename(&self.path, disk.next_dir()).map_err(|e| e.to_string())?;
        disk.sync_dir().map_err(|e| e.to_string())
    }

    /// Give up: close and remove the incomplete copy.
    pub(crate) fn abort(self) {
        close_sled(self.db, &self.path);
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}
