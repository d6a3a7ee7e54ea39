//! Warm restart: load the persisted data set into RAM before serving.
//!
//! One scan over the item keys. Each record is decoded and, while RAM has room
//! (`-m`), inserted into the store as it was (value, flags, absolute expiry,
//! CAS, sequence number); once RAM is full the rest stay on disk only and are
//! read through on demand. Dead records (expired, or hidden by the persisted
//! flush state) are skipped and purged. Afterwards the CAS counter and the
//! mutation stream's sequence number continue above everything loaded.
//! An undecodable record stops the start-up: a data set that cannot be read
//! faithfully is not served. So does a record count that differs from the one
//! the last clean shutdown wrote into the checkpoint (see `disk`): sled lost or
//! invented records. While such a count is pending, dead records are purged
//! only after it has been verified (a purge changes the count, and a crash in
//! the middle of the load must not turn into a false alarm at the next start).

use super::disk::{OpenError, Opened};
use super::record::{self, ITEM_PREFIX};
use super::State;
use crate::store::{Store, Warm};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// Purge batches are applied every this many dead records.
const PURGE_BATCH: usize = 10_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a warm restart did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Items inserted into RAM.
    pub loaded: u64,
    /// Live items left on disk only (RAM full).
    pub disk_only: u64,
    /// Dead records purged.
    pub purged: u64,
    /// Bytes of records read.
    pub bytes: u64,
    /// Bytes of the live records among them.
    pub live_bytes: u64,
    pub max_seq: u64,
    pub max_cas: u64,
    /// The highest item version loaded: the store's clock continues above it.
    pub max_version: u64,
    pub millis: u64,
}

pub(crate) fn warm_restart(
    state: &State,
    opened: &Opened,
    store: &Store,
    now: u32,
    on_progress: &mut dyn FnMut(u64),
) -> Result<LoadReport, OpenError> {
    let dir = state.disk.dir();
    let bad = |d: String| OpenError::unusable(dir, d);
    store.apply_flush(opened.flush);
    let g = state.disk.read();
    let db = g
        .as_ref()
        .ok_or_else(|| bad("data set closed".to_string()))?;
    let started = Instant::now();
    let mut last_log = started;
    let mut r = LoadReport {
        max_seq: opened.last_seq,
        ..LoadReport::default()
    };
    let mut purge = sled::Batch::default();
    let mut purge_n = 0;
    let mut seen: u64 = 0;
    let defer_purge = opened.expect_records.is_some();
    for kv in db.scan_prefix([ITEM_PREFIX]) {
        let (k, v) = kv.map_err(|e| bad(format!("cannot read the data set: {e}")))?;
        seen += 1;
        r.bytes += (k.len() + v.len()) as u64;
        let header = record::decode_header(&v).map_err(|e| {
            bad(format!(
                "undecodable record for key {:?}: {e}",
                String::from_utf8_lossy(&k[1..])
            ))
        })?;
        r.max_seq = r.max_seq.max(header.seq);
        r.max_cas = r.max_cas.max(header.cas);
        r.max_version = r.max_version.max(header.version);
        let dead = header.is_dead(now, opened.flush);
        let outcome = if dead {
            Warm::Dead
        } else if !store.is_complete() {
            // RAM is already full: no need to copy the value.
            Warm::NoRoom
        } else {
            let p = record::decode_item(&v).map_err(|e| bad(e.to_string()))?;
            store.warm(Bytes::copy_from_slice(&k[1..]), p, now)
        };
        if outcome != Warm::Dead {
            r.live_bytes += (k.len() + v.len()) as u64;
        }
        match outcome {
            Warm::Loaded => r.loaded += 1,
            Warm::NoRoom => r.disk_only += 1,
            Warm::Dead => {
                purge.remove(k);
                purge_n += 1;
                r.purged += 1;
                if purge_n >= PURGE_BATCH && !defer_purge {
                    db.apply_batch(std::mem::take(&mut purge))
                        .map_err(|e| bad(format!("cannot purge expired records: {e}")))?;
                    purge_n = 0;
                }
            }
        }
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            progress(seen, r.bytes, started, opened.items_hint);
            on_progress(seen);
        }
    }
    if let Some(expected) = opened.expect_records {
        verify_count(state, opened, seen, expected)?;
    }
    if purge_n > 0 {
        db.apply_batch(purge)
            .map_err(|e| bad(format!("cannot purge expired records: {e}")))?;
    }
    // Not the CAS: a client-chosen one (meta `E`) may be any number.
    store.observe_version(r.max_version);
    store.stream().advance_to(r.max_seq);
    r.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(
        "warm restart from {}: {} items loaded into RAM, {} on disk only (RAM full), {} expired \
         or flushed purged; {:.1} MiB in {:.2} s ({:.0} items/s); seq {}, cas {}",
        dir.display(),
        r.loaded,
        r.disk_only,
        r.purged,
        r.bytes as f64 / 1048576.0,
        secs,
        seen as f64 / secs,
        r.max_seq,
        r.max_cas
    );
    if r.disk_only > 0 {
        tracing::warn!(
            "the data set is larger than -m: {} items are served from disk on demand; raise -m \
             to keep them all in RAM",
            r.disk_only
        );
    }
    Ok(r)
}

/// Compare the records found with the clean shutdown's count, then drop the
/// count from the checkpoint (purges and new writes change it from now on).
fn verify_count(state: &State, opened: &Opened, seen: u64, expected: u64) -> Result<(), OpenError> {
    let dir = state.disk.dir();
    if seen != expected {
        return Err(OpenError::unusable(
            dir,
            format!(
                "sled gave back {seen} item records, but the clean shutdown at mutation {} left \
                 {expected} on disk: part of sled's log is damaged and sled {} records without \
                 an error",
                opened.last_seq,
                if seen < expected {
                    "dropped"
                } else {
                    "invented"
                }
            ),
        ));
    }
    super::disk::write_checkpoint(dir, opened.history_id, opened.last_seq, None)
        .map_err(|e| OpenError::unusable(dir, format!("cannot rewrite the checkpoint: {e}")))?;
    tracing::debug!("warm restart: all {seen} item records of the clean shutdown are there");
    Ok(())
}

fn progress(seen: u64, bytes: u64, started: Instant, hint: u64) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let pct = match (seen * 100).checked_div(hint) {
        Some(p) => format!("~{}%", p.min(99)),
        None => "?%".to_string(),
    };
    tracing::info!(
        "warm restart: {seen} items, {:.1} MiB read in {:.0} s ({:.0} items/s), {pct} of about \
         {hint}",
        bytes as f64 / 1048576.0,
        secs,
        seen as f64 / secs
    );
}
