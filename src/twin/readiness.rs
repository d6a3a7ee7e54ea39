//! Whether this node may answer clients yet (docs/replication.md §7).
//!
//! Session clients treat a miss as "no session": the user is logged out. A
//! node that restarts while its twin holds the sessions must therefore not
//! answer a single `get` until it has caught up, yet it must answer *something*
//! at once, because with socket activation the kernel accepts connections
//! before the daemon runs, and a timeout would stall every client where a
//! failure makes it go to the twin.
//!
//! So a node started with `--peer` is `catching_up` until the twin has sent
//! it everything (the first [`crate::protocol::twin::Frame::Synced`] of a
//! link: the twin's link-up scan is complete), and every client request but
//! `stats`, `quit`, `mn`, `noop` and `verbosity` is refused meanwhile. If
//! the twin cannot be reached for `--peer-wait` seconds it serves alone, with
//! a loud warning; it catches up both ways when the twin appears.
//!
//! Refused how ([`NotReadyReply`], `--not-ready`): by default the client
//! port is bound but not listening, so connections are refused, which every
//! client takes for a failed server (it goes to the twin). With socket
//! activation the port listens before the daemon runs; there, and on a unix
//! socket, a refused request closes its connection instead. The other
//! choices are for clients known to cope with them, and not the default
//! because libmemcached's `memcached_get` (PHP's session handler, pylibmc)
//! returns "not found", a miss, for a `get` answered with an error, for a
//! connection closed after the request, and for a timeout: measured with
//! libmemcached 1.1.4, where only a refused connection stays an error.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What a node does with client requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Serving {
    /// Started with a twin, not caught up yet: requests get errors.
    CatchingUp = 0,
    /// Caught up with a reachable twin (or standalone).
    Ready = 1,
    /// Serving without the twin: it was unreachable for `--peer-wait`, or the
    /// link dropped after catch-up.
    Alone = 2,
}

impl Serving {
    /// The value of `repl_state`.
    pub fn name(self) -> &'static str {
        match self {
            Serving::CatchingUp => "catching_up",
            Serving::Ready => "ready",
            Serving::Alone => "alone",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Serving::CatchingUp,
            2 => Serving::Alone,
            _ => Serving::Ready,
        }
    }
}

/// How a catching-up node refuses a client request (`--not-ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotReadyReply {
    /// Do not listen on the client port until caught up: connections are
    /// refused (inherited and unix listeners: as `Close`).
    #[default]
    Refuse,
    /// Accept, and close the connection at its first gated request, without
    /// an answer.
    Close,
    /// Answer `SERVER_ERROR not ready` (text, meta) or binary status 0x0084:
    /// clients that surface errors (pymemcache, spymemcached) go to the twin,
    /// and `stats` on the same connection keeps working; libmemcached reads
    /// the error to a `get` as a miss.
    Error,
}

impl NotReadyReply {
    /// The flag's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReadyReply::Refuse => "refuse",
            NotReadyReply::Close => "close",
            NotReadyReply::Error => "error",
        }
    }
}

/// How long a node without its twin waits before serving alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerWait {
    For(Duration),
    Forever,
}

/// The node's serving state, shared by the twin link (which moves it) and
/// every client session (which reads it).
#[derive(Debug)]
pub struct Readiness {
    state: AtomicU8,
    changed: watch::Sender<Serving>,
    started: Instant,
    /// Milliseconds from start to the first catch-up; 0 = not yet.
    caught_up_after_ms: AtomicU64,
    /// Client requests refused while catching up.
    refused: AtomicU64,
    reply: NotReadyReply,
}

impl Readiness {
    fn with(s: Serving) -> Self {
        Readiness {
            state: AtomicU8::new(s as u8),
            changed: watch::Sender::new(s),
            started: Instant::now(),
            caught_up_after_ms: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reply: NotReadyReply::default(),
        }
    }

    /// How requests are refused while catching up.
    pub fn with_reply(mut self, reply: NotReadyReply) -> Self {
        self.reply = reply;
        self
    }

    /// True when a refused request closes its connection (no reply).
    #[inline]
    pub fn refusal_closes(&self) -> bool {
        self.reply != NotReadyReply::Error
    }

    /// True when the client listeners this process binds must not listen
    /// until the node serves.
    pub fn defers_listening(&self) -> bool {
        self.reply == NotReadyReply::Refuse && !self.serving()
    }

    /// A node without a twin: always serving.
    pub fn standalone() -> Self {
        Self::with(Serving::Ready)
    }

    /// A node with a twin: gated until it has caught up.
    pub fn gated() -> Self {
        Self::with(Serving::CatchingUp)
    }

    /// A node with a twin that serves from the start (`--peer-wait 0`).
    pub fn alone() -> Self {
        Self::with(Serving::Alone)
    }

    pub fn state(&self) -> Serving {
        Serving::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// False while client requests must get the not-ready error.
    #[inline]
    pub fn serving(&self) -> bool {
        self.state.load(Ordering::Relaxed) != Serving::CatchingUp as u8
    }

    /// Count one request answered with the not-ready error.
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Seconds (ms) from start to the first catch-up, if it happened.
    pub fn caught_up_after(&self) -> Option<Duration> {
        match self.caught_up_after_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    fn set(&self, s: Serving) -> Serving {
        let old = Serving::from_u8(self.state.swap(s as u8, Ordering::AcqRel));
        if old != s {
            self.changed.send_replace(s);
        }
        old
    }

    /// The twin says we hold everything it has: serve (again) as ready.
    /// Returns the previous state.
    pub fn synced(&self) -> Serving {
        if self.state() == Serving::CatchingUp {
            // Before the state changes: whoever wakes on it sees the time.
            let ms = self.started.elapsed().as_millis().max(1);
            self.caught_up_after_ms
                .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        self.set(Serving::Ready)
    }

    /// The link dropped: a ready node goes on alone; one still catching up
    /// stays gated (its peer-wait decides). Returns the previous state.
    pub fn link_lost(&self) -> Serving {
        match self.state() {
            Serving::Ready => self.set(Serving::Alone),
            s => s,
        }
    }

    /// The twin stayed unreachable for `--peer-wait`: serve alone.
    /// Returns the previous state.
    pub fn give_up_waiting(&self) -> Serving {
        match self.state() {
            Serving::CatchingUp => self.set(Serving::Alone),
            s => s,
        }
    }

    /// Wait until the node serves (tests and the daemon's `READY=1`).
    pub async fn wait_serving(&self) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|s| *s != Serving::CatchingUp).await;
    }

    /// For `--peer-wait`: wait until the state changes from `from`.
    pub async fn wait_change(&self, from: Serving) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|s| *s != from).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catching_up_then_ready_then_alone_never_gated_again() {
        let r = Readiness::gated();
        assert!(!r.serving());
        assert_eq!(r.state().name(), "catching_up");
        assert_eq!(r.link_lost(), Serving::CatchingUp, "still gated");
        assert!(!r.serving());
        assert_eq!(r.synced(), Serving::CatchingUp);
        assert!(r.serving());
        assert!(r.caught_up_after().is_some());
        assert_eq!(r.link_lost(), Serving::Ready);
        assert_eq!(r.state(), Serving::Alone);
        assert!(r.serving());
        assert_eq!(
            r.give_up_waiting(),
            Serving::Alone,
            "no effect once serving"
        );
        assert_eq!(r.synced(), Serving::Alone);
        assert_eq!(r.state(), Serving::Ready);
    }

    #[test]
    fn peer_wait_opens_the_gate() {
        let r = Readiness::gated();
        assert_eq!(r.give_up_waiting(), Serving::CatchingUp);
        assert_eq!(r.state(), Serving::Alone);
        assert!(r.serving());
        assert!(r.caught_up_after().is_none());
        assert!(Readiness::standalone().serving());
    }

    #[tokio::test]
    async fn waiters_wake_on_change() {
        let r = std::sync::Arc::new(Readiness::gated());
        let w = {
            let r = r.clone();
            tokio::spawn(async move { r.wait_serving().await })
        };
        tokio::task::yield_now().await;
        assert!(!w.is_finished());
        r.synced();
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("woken")
            .expect("joined");
    }
}
