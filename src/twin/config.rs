//! What the link runs with: the operator's settings (`--peer`, the secret,
//! `--max-clock-skew` ...) plus the timings, which tests shorten.

use crate::protocol::twin::MAX_FRAME_DEFAULT;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::readiness::{PeerWait, Readiness};

/// The shared secret. Never printed: `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: &[u8]) -> Self {
        Secret(Arc::from(bytes))
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// Everything [`super::Twin::start`] needs besides the store.
#[derive(Debug, Clone)]
pub struct TwinConfig {
    /// Where the twin connects to us (never the client port).
    pub listen: SocketAddr,
    /// The twin's replication address, `HOST:PORT`, resolved at each dial.
    pub peer: String,
    pub secret: Secret,
    /// Identity of the local data set (0 without `--data-dir`).
    pub history_id: u128,
    /// Refuse the link above this clock difference.
    pub max_clock_skew: Duration,
    /// Byte cap of the outgoing queue.
    pub queue_bytes: usize,
    /// Largest frame accepted from the twin, and sent to it.
    pub max_frame: usize,
    pub handshake_timeout: Duration,
    /// No frame for this long: the link is dead.
    pub dead_after: Duration,
    pub ack_interval: Duration,
    pub ping_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Records per table-scan call.
    pub scan_chunk: usize,
    /// Margin subtracted from the twin's resume point before a scan: covers
    /// versions stamped slightly out of order with their publication.
    pub resume_margin_ms: u64,
    /// The node's serving state: the link opens the gate once caught up.
    pub readiness: Arc<Readiness>,
    /// How long to stay gated while the twin cannot be reached (`--peer-wait`).
    pub peer_wait: PeerWait,
    /// Per origin, what the data dir holds from it (read from
    /// [`super::resume`] after a clean restart): the twin scans only above.
    pub resume: Vec<crate::protocol::twin::Position>,
    /// `--replication-ack`: a write is answered once the twin applied it, or
    /// after this long (`--replication-ack-timeout`). None: asynchronous.
    pub ack_timeout: Option<Duration>,
    /// The backlog's bounds (`--replication-backlog-mb`, `-ttl`).
    pub backlog_bytes: usize,
    pub backlog_ttl: Duration,
    /// Bytes per second a catch-up (scan or replay) may put on the link, so
    /// that streaming leaves the source's clients their CPU; 0 = unpaced
    /// (`--replication-catchup-rate`).
    pub catchup_rate: u64,
}

/// Default of `--replication-catchup-rate`, MB/s: about what a gigabit link
/// carries, so pacing costs nothing there, while on loopback or 10 GbE a
/// full sync no longer takes the source's CPU from its clients
/// (docs/performance.md: 0.37x of the source's ops unpaced, 0.64x at 100).
pub const DEFAULT_CATCHUP_RATE_MB: u64 = 100;

/// Default of `--peer-wait`: long enough for a twin that restarts with it
/// (both nodes of a pair rebooted together), short enough that a node whose
/// twin is gone for good serves within a minute.
pub const DEFAULT_PEER_WAIT: Duration = Duration::from_secs(30);

impl TwinConfig {
    /// Production timings (docs/replication.md §6).
    pub fn new(listen: SocketAddr, peer: String, secret: Secret) -> Self {
        TwinConfig {
            listen,
            peer,
            secret,
            history_id: 0,
            max_clock_skew: Duration::from_secs(5),
            queue_bytes: 64 << 20,
            max_frame: MAX_FRAME_DEFAULT,
            handshake_timeout: Duration::from_secs(5),
            dead_after: Duration::from_secs(10),
            ack_interval: Duration::from_millis(10),
            ping_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            scan_chunk: 512,
            resume_margin_ms: 2000,
            readiness: Arc::new(Readiness::gated()),
            peer_wait: PeerWait::For(DEFAULT_PEER_WAIT),
            resume: Vec::new(),
            ack_timeout: None,
            backlog_bytes: super::backlog::DEFAULT_BACKLOG_BYTES,
            backlog_ttl: super::backlog::DEFAULT_BACKLOG_TTL,
            catchup_rate: DEFAULT_CATCHUP_RATE_MB << 20,
        }
    }
}
