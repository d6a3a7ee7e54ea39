//! Counters of the twin link, for `stats replication` and the `repl_` fields
//! of plain `stats`. Atomics only: the link updates them, the stats command
//! reads them, neither waits for the other.

use crate::mutation::QueueGauge;
use crate::version::now_ms;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

/// State of the link, as `repl_link` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    Connecting = 0,
    Up = 1,
    Down = 2,
    Refused = 3,
}

impl LinkState {
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Refused => "refused",
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            1 => LinkState::Up,
            2 => LinkState::Down,
            3 => LinkState::Refused,
            _ => LinkState::Connecting,
        }
    }
}

#[derive(Debug, Default)]
pub struct TwinStats {
    pub peer: String,
    pub node_id: u16,
    state: AtomicU8,
    pub peer_node_id: AtomicU32,
    pub records_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub records_applied: AtomicU64,
    pub bytes_received: AtomicU64,
    pub conflicts: AtomicU64,
    pub duplicates: AtomicU64,
    pub apply_no_memory: AtomicU64,
    /// Highest local seq shipped on the current link.
    pub shipped_seq: AtomicU64,
    /// Highest seq the twin acknowledged on the current link.
    pub acked_seq: AtomicU64,
    /// Write time (Unix ms) of the oldest shipped, unacknowledged record; 0 = none.
    pub oldest_unacked_ms: AtomicU64,
    pub scans: AtomicU64,
    /// A catch-up scan is running, and how far through RAM it is (percent).
    pub scan_active: std::sync::atomic::AtomicBool,
    pub scan_percent: AtomicU8,
    pub scan_records: AtomicU64,
    pub link_ups: AtomicU64,
    pub auth_failures: AtomicU64,
    pub clock_skew_ms: AtomicI64,
    /// Highest local seq taken from the outgoing queue on the current link
    /// (shipped or not: see `session::release_acks`).
    pub taken_seq: AtomicU64,
    /// The backlog: bytes and records held, records trimmed (room or age),
    /// write time (Unix ms) of the oldest record held, replays done instead
    /// of a scan and records they shipped.
    pub backlog_bytes: AtomicU64,
    pub backlog_records: AtomicU64,
    pub backlog_trimmed: AtomicU64,
    pub backlog_oldest_ms: AtomicU64,
    pub backlog_replays: AtomicU64,
    pub backlog_replayed: AtomicU64,
    /// Scans from version 0: the twin's data set was unknown or empty (also
    /// counted in `scans`).
    pub full_syncs: AtomicU64,
    /// Bytes every catch-up (replay or scan) put on the wire.
    pub catchup_bytes: AtomicU64,
    /// The last finished catch-up: its kind ([`CatchupKind`] as u8, 0 none),
    /// records and bytes shipped, and how long it took (µs).
    pub last_catchup_kind: AtomicU8,
    pub last_catchup_records: AtomicU64,
    pub last_catchup_bytes: AtomicU64,
    pub last_catchup_us: AtomicU64,
    /// Set when the link ended by a completed drain (shutdown).
    pub drained: std::sync::atomic::AtomicBool,
    gauge: OnceLock<Arc<QueueGauge>>,
    readiness: OnceLock<Arc<super::Readiness>>,
    /// The link's acknowledgement handle and whether writers wait on it.
    ack: OnceLock<(Arc<crate::mutation::AckHandle>, bool)>,
}

/// How a link-up (or an overflow) repaired the twin's gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CatchupKind {
    /// Records replayed from the backlog.
    Backlog = 1,
    /// A table scan above the twin's resume point.
    Scan = 2,
    /// A table scan of everything: the twin's resume point was 0.
    Full = 3,
}

impl CatchupKind {
    pub fn name(self) -> &'static str {
        match self {
            CatchupKind::Backlog => "backlog",
            CatchupKind::Scan => "scan",
            CatchupKind::Full => "full",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(CatchupKind::Backlog),
            2 => Some(CatchupKind::Scan),
            3 => Some(CatchupKind::Full),
            _ => None,
        }
    }
}

impl TwinStats {
    pub fn new(peer: String, node_id: u16) -> Self {
        TwinStats {
            peer,
            node_id,
            ..Default::default()
        }
    }

    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Set the state; returns the previous one (callers log on a change).
    pub fn set_state(&self, s: LinkState) -> LinkState {
        LinkState::from_u8(self.state.swap(s as u8, Ordering::Relaxed))
    }

    pub(crate) fn set_gauge(&self, g: Arc<QueueGauge>) {
        let _ = self.gauge.set(g);
    }

    /// After a record entered the backlog (`trimmed` records left it).
    pub(crate) fn note_backlog(&self, b: &super::backlog::Backlog, trimmed: u64) {
        self.backlog_bytes
            .store(b.bytes() as u64, Ordering::Relaxed);
        self.backlog_records
            .store(b.len() as u64, Ordering::Relaxed);
        self.backlog_oldest_ms
            .store(b.oldest_ms().unwrap_or(0), Ordering::Relaxed);
        if trimmed > 0 {
            self.backlog_trimmed.fetch_add(trimmed, Ordering::Relaxed);
        }
    }

    /// A catch-up finished: remember it for `repl_last_catchup*`.
    pub(crate) fn note_catchup(
        &self,
        kind: CatchupKind,
        records: u64,
        bytes: u64,
        took: std::time::Duration,
    ) {
        self.last_catchup_records.store(records, Ordering::Relaxed);
        self.last_catchup_bytes.store(bytes, Ordering::Relaxed);
        self.last_catchup_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.last_catchup_kind.store(kind as u8, Ordering::Relaxed);
    }

    /// Bytes of records waiting for the link.
    pub fn queued_bytes(&self) -> u64 {
        self.gauge.get().map_or(0, |g| g.queued_bytes() as u64)
    }

    pub(crate) fn set_ack(&self, h: Arc<crate::mutation::AckHandle>, on: bool) {
        let _ = self.ack.set((h, on));
    }

    pub(crate) fn set_readiness(&self, r: Arc<super::Readiness>) {
        let _ = self.readiness.set(r);
    }

    fn lag_records(&self) -> u64 {
        self.shipped_seq
            .load(Ordering::Relaxed)
            .saturating_sub(self.acked_seq.load(Ordering::Relaxed))
    }

    fn lag_ms(&self) -> u64 {
        match self.oldest_unacked_ms.load(Ordering::Relaxed) {
            0 => 0,
            t => now_ms().saturating_sub(t),
        }
    }

    /// The fields, named with their `repl_` prefix (plain `stats`); strip it
    /// for `stats replication`.
    pub fn report(&self) -> Vec<(&'static str, String)> {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let (queue, overflows) = self
            .gauge
            .get()
            .map_or((0, 0), |g| (g.queued_bytes() as u64, g.overflows()));
        let (state, refused, caught_up) = match self.readiness.get() {
            Some(r) => (
                r.state().name(),
                r.refused(),
                r.caught_up_after().map_or(0, |d| d.as_millis() as u64),
            ),
            None => ("ready", 0, 0),
        };
        let (ack_on, ack_waits, ack_timeouts, ack_skipped) = match self.ack.get() {
            Some((h, on)) => (
                *on,
                h.waits.load(Ordering::Relaxed),
                h.timeouts.load(Ordering::Relaxed),
                h.waivers.load(Ordering::Relaxed),
            ),
            None => (false, 0, 0, 0),
        };
        vec![
            ("repl_state", state.to_string()),
            ("repl_link", self.state().name().to_string()),
            ("repl_peer", self.peer.clone()),
            ("repl_node_id", self.node_id.to_string()),
            (
                "repl_peer_node_id",
                self.peer_node_id.load(Ordering::Relaxed).to_string(),
            ),
            ("repl_records_sent", n(&self.records_sent)),
            ("repl_bytes_sent", n(&self.bytes_sent)),
            ("repl_records_applied", n(&self.records_applied)),
            ("repl_bytes_received", n(&self.bytes_received)),
            ("repl_conflicts", n(&self.conflicts)),
            ("repl_duplicates", n(&self.duplicates)),
            ("repl_apply_no_memory", n(&self.apply_no_memory)),
            ("repl_lag_records", self.lag_records().to_string()),
            ("repl_lag_ms", self.lag_ms().to_string()),
            ("repl_queue_bytes", queue.to_string()),
            ("repl_queue_overflows", overflows.to_string()),
            ("repl_backlog_bytes", n(&self.backlog_bytes)),
            ("repl_backlog_records", n(&self.backlog_records)),
            (
                "repl_backlog_age_ms",
                match self.backlog_records.load(Ordering::Relaxed) {
                    0 => 0,
                    _ => now_ms().saturating_sub(self.backlog_oldest_ms.load(Ordering::Relaxed)),
                }
                .to_string(),
            ),
            ("repl_backlog_trimmed", n(&self.backlog_trimmed)),
            ("repl_backlog_replays", n(&self.backlog_replays)),
            ("repl_backlog_replayed", n(&self.backlog_replayed)),
            ("repl_scans", n(&self.scans)),
            ("repl_scan_records", n(&self.scan_records)),
            ("repl_full_syncs", n(&self.full_syncs)),
            ("repl_catchup_bytes", n(&self.catchup_bytes)),
            (
                "repl_last_catchup",
                CatchupKind::from_u8(self.last_catchup_kind.load(Ordering::Relaxed))
                    .map_or("none", CatchupKind::name)
                    .to_string(),
            ),
            ("repl_last_catchup_records", n(&self.last_catchup_records)),
            ("repl_last_catchup_bytes", n(&self.last_catchup_bytes)),
            ("repl_last_catchup_us", n(&self.last_catchup_us)),
            (
                "repl_scan_active",
                u8::from(self.scan_active.load(Ordering::Relaxed)).to_string(),
            ),
            (
                "repl_scan_percent",
                self.scan_percent.load(Ordering::Relaxed).to_string(),
            ),
            (
                "repl_reconnects",
                self.link_ups
                    .load(Ordering::Relaxed)
                    .saturating_sub(1)
                    .to_string(),
            ),
            ("repl_auth_failures", n(&self.auth_failures)),
            ("repl_not_ready_replies", refused.to_string()),
            ("repl_ack", u8::from(ack_on).to_string()),
            ("repl_ack_waits", ack_waits.to_string()),
            ("repl_ack_timeouts", ack_timeouts.to_string()),
            ("repl_ack_skipped", ack_skipped.to_string()),
            ("repl_caught_up_after_ms", caught_up.to_string()),
            (
                "repl_clock_skew_ms",
                self.clock_skew_ms.load(Ordering::Relaxed).to_string(),
            ),
        ]
    }

    /// `stats replication`: the same fields without the prefix.
    pub fn report_group(&self) -> Vec<(&'static str, String)> {
        self.report()
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("repl_").unwrap_or(k), v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes() {
        let s = TwinStats::new("b:12211".into(), 7);
        s.set_state(LinkState::Up);
        s.shipped_seq.store(10, Ordering::Relaxed);
        s.acked_seq.store(4, Ordering::Relaxed);
        s.link_ups.store(3, Ordering::Relaxed);
        let r = s.report();
        assert!(r.iter().all(|(k, _)| k.starts_with("repl_")));
        let get = |k: &str| r.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("repl_link").as_deref(), Some("up"));
        assert_eq!(get("repl_peer").as_deref(), Some("b:12211"));
        assert_eq!(get("repl_lag_records").as_deref(), Some("6"));
        assert_eq!(get("repl_lag_ms").as_deref(), Some("0"));
        assert_eq!(get("repl_reconnects").as_deref(), Some("2"));
        let g = s.report_group();
        assert_eq!(g[0], ("state", "ready".to_string()));
        assert_eq!(g[1], ("link", "up".to_string()));
        assert_eq!(g.len(), r.len());
    }
}
