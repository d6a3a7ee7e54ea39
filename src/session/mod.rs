//! Per-connection protocol sessions: bytes in, engine calls, bytes out.
//!
//! A session owns a connection's protocol state (pending data block, swallow
//! count, authentication) but no socket: the server hands it the bytes read so
//! far and a buffer for replies, and writes what it produced in one write. So
//! every reply produced from one read leaves in one `write` (memcached 1.6.35's
//! "response stacking"), and sessions can be tested without any I/O.

pub mod ascii_auth;
pub mod binary;
pub mod meta;
pub mod prefix_stats;
pub mod report;
pub mod text;

use crate::config::Settings;
use crate::engine::Engine;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Stop producing replies into one batch past this many bytes; the server
/// writes them out first (and reads no new request until it has). Bounds what
/// a client that does not read its replies costs: about this plus one value.
/// Measured with a client pipelining 200 `get`s of a 1 MB value and reading
/// nothing: 4 MiB here made each such connection cost 6.2 MB of RSS
/// (memcached 1.6.18, which sends from the item itself: 28 KB).
pub const OUTPUT_HIGH_WATER: usize = 256 << 10;

/// State shared by all connections.
#[derive(Debug)]
pub struct Shared {
    pub engine: Arc<Engine>,
    pub settings: Arc<Settings>,
    /// SASL and ASCII-auth credentials (both `None` unless `-S` / `-Y`).
    pub auth: crate::auth::Auth,
    pub verbosity: AtomicU32,
    pub curr_conns: AtomicUsize,
    pub accepting: AtomicBool,
    /// `stats detail`: per-prefix counters.
    pub prefixes: prefix_stats::PrefixStats,
    pub conns: ConnRegistry,
    /// Cancelled by the `shutdown` command (with `-A`) or a signal.
    pub shutdown: CancellationToken,
    /// The twin link's counters, once it runs (`--peer`): `stats replication`
    /// and the `repl_` fields of `stats`.
    pub twin: std::sync::OnceLock<Arc<crate::twin::TwinStats>>,
    /// Whether requests may be answered yet: a node with a twin answers
    /// errors until it has caught up (`twin::readiness`).
    pub readiness: Arc<crate::twin::Readiness>,
}

impl Shared {
    pub fn new(engine: Arc<Engine>, settings: Arc<Settings>) -> Self {
        let prefixes =
            prefix_stats::PrefixStats::new(settings.prefix_delimiter, settings.detail_enabled);
        Shared {
            verbosity: AtomicU32::new(u32::from(settings.verbose)),
            engine,
            settings,
            auth: crate::auth::Auth::default(),
            curr_conns: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            prefixes,
            conns: ConnRegistry::default(),
            shutdown: CancellationToken::new(),
            twin: std::sync::OnceLock::new(),
            readiness: Arc::new(crate::twin::Readiness::standalone()),
        }
    }

    /// False while this node must refuse a request (counted): close the
    /// connection or answer [`NOT_READY`], by `--not-ready`.
    #[inline]
    pub fn serving(&self) -> bool {
        if self.readiness.serving() {
            return true;
        }
        self.readiness.refuse();
        false
    }
}

/// The text and meta reply while the node catches up with its twin: an error
/// (clients fail over), never a miss (clients would log the user out).
pub const NOT_READY: &[u8] = b"SERVER_ERROR not ready: catching up with the twin\r\n";

#[cfg(test)]
pub(crate) mod testing {
    /// Replace every meta CAS token (`c` and digits) in `text` with `c#`, so a
    /// transcript can be compared without pinning version values; returns the
    /// masked text and the values in order.
    pub(crate) fn mask_cas(text: &str) -> (String, Vec<u64>) {
        let mut values = Vec::new();
        let lines: Vec<String> = text
            .split("\r\n")
            .map(|line| {
                line.split(' ')
                    .map(|tok| match tok.strip_prefix('c').map(str::parse::<u64>) {
                        Some(Ok(v)) => {
                            values.push(v);
                            "c#".to_string()
                        }
                        _ => tok.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        (lines.join("\r\n"), values)
    }
}

#[cfg(test)]
impl Shared {
    /// Default settings over [`Engine::for_tests`], for session unit tests.
    pub(crate) fn for_tests() -> Shared {
        let stream = Arc::new(crate::mutation::MutationStream::new());
        Shared::new(
            Arc::new(Engine::for_tests(stream)),
            Arc::new(Settings::default()),
        )
    }
}

/// Discard up to `pending` bytes of a rejected data block from `input`.
/// Returns true while more remain to be discarded (the session needs more input).
/// Swallowed bytes are never buffered, so a huge rejected value costs no memory.
pub(crate) fn swallow(pending: &mut usize, input: &mut bytes::BytesMut) -> bool {
    use bytes::Buf;
    if *pending == 0 {
        return false;
    }
    let n = (*pending).min(input.len());
    input.advance(n);
    *pending -= n;
    *pending > 0
}

/// What the server should do after a session processed its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// All complete requests are handled; write the replies and read more.
    NeedInput,
    /// The reply buffer is full; write it, then call `process` again.
    Flush,
    /// Write the replies, then close the connection.
    Close,
    /// `-R` requests were handled in this call and more are buffered: write
    /// the replies and let the worker's other connections run before the
    /// next `process` (memcached's `conn_yields`).
    Yield,
}

/// Open connections and listeners, for `stats conns`.
#[derive(Debug, Default)]
pub struct ConnRegistry {
    next: std::sync::atomic::AtomicU64,
    map: std::sync::Mutex<std::collections::BTreeMap<u64, ConnEntry>>,
}

#[derive(Debug, Clone)]
pub struct ConnEntry {
    /// `tcp:1.2.3.4:5678` or `unix:/path`.
    pub addr: String,
    pub listen_addr: String,
    pub listening: bool,
    /// Unix time the entry was created.
    pub since: u32,
}

/// Removes its entry from the registry when dropped.
#[derive(Debug)]
pub struct ConnGuard<'a> {
    registry: &'a ConnRegistry,
    id: u64,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl ConnRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, ConnEntry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a connection (or a listener) until the guard is dropped.
    pub fn register(&self, entry: ConnEntry) -> ConnGuard<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, entry);
        ConnGuard { registry: self, id }
    }

    /// A copy of all entries, ordered by id.
    pub fn entries(&self) -> Vec<(u64, ConnEntry)> {
        self.lock().iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}
