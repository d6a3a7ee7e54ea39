//! The twin replication link: every change a node accepts reaches its twin,
//! both ways, asynchronously (docs/replication.md §6).
//!
//! Why it is built this way:
//!
//! * **The store is behind a small trait** ([`TwinStore`]): the link needs a
//!   clock, a lossy subscription to the mutation stream, "apply under the
//!   conflict rule" and a resumable table scan, nothing else. That keeps the
//!   whole link testable in-process against a fake table, and keeps the
//!   store's internals out of here.
//! * **Clients never wait for the link.** The outgoing queue is a byte-capped
//!   subscription whose publisher never blocks ([`crate::mutation::QueueGauge`]).
//!   When it overflows, or whenever the link comes up, the sender repairs the
//!   gap by scanning the table for everything newer than the twin's resume
//!   point, interleaved with the live records. Both are idempotent under the
//!   conflict rule, so overlaps are harmless and the two nodes converge.
//! * **Resume points only move when the sender says so** ([`crate::protocol::twin::Frame::Synced`]):
//!   a receiver never believes it is complete up to a version while a scan
//!   that would fill a gap below it is still running.
//! * **One link, whoever dialled.** Both nodes dial and accept; after both
//!   proofs verified, the connection dialled by the higher node id wins a race
//!   ([`supervisor`]), so exactly one link remains.
//!
//! Modules: [`config`] (what the daemon passes in), [`engine`] (the real
//! store behind the trait), [`convert`] (mutation ⇄ record), [`framed`] (frames over any byte stream, bounded), [`handshake`],
//! [`session`] (sender and receiver of one established link), [`supervisor`]
//! (listener, dialler, arbitration), [`outbox`] (the subscription bridged into
//! the runtime), [`readiness`] (whether clients may be answered yet), [`scanner`]
//! (catch-up scans on a low-priority thread), [`stats`].

pub mod backlog;
pub mod config;
pub mod convert;
pub mod engine;
pub mod framed;
pub mod handshake;
pub mod node_id;
pub mod outbox;
pub mod readiness;
pub mod resume;
pub mod scanner;
pub mod session;
pub mod stats;
pub mod supervisor;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use crate::mutation::{Mutation, Subscription};
use crate::version::Hlc;
use std::sync::Arc;

pub use config::TwinConfig;
pub use readiness::{NotReadyReply, PeerWait, Readiness, Serving};
pub use stats::TwinStats;
pub use supervisor::Twin;

/// What the twin link needs from the store.
pub trait TwinStore: Send + Sync + 'static {
    /// This node's clock; `hlc().node()` is the node id. Apply paths call `observe` themselves.
    fn hlc(&self) -> &Hlc;
    /// A lossy byte-capped subscription to the local mutation stream (the link ships only `m.is_shipped()` records);
    /// with `ack_timeout`, blocking: writers wait (at most that long) for the twin's acknowledgement.
    fn subscribe(&self, byte_cap: usize, ack_timeout: Option<std::time::Duration>) -> Subscription;
    /// Apply a record received from the twin under the conflict rule (`version::wins`), publishing it locally with remote = true.
    fn apply_remote(&self, m: &Mutation) -> Applied;
    /// Items and tombstones in the table with version > floor, about `max` per call, resumable: (records, next cursor or None when done).
    /// Records come as Mutations: op Store (item Some, version, cas in item), Delete (tombstone: key + version), and at most once per scan the current Flush.
    fn scan(
        &self,
        from: ScanCursor,
        floor: u64,
        max: usize,
    ) -> (Vec<Arc<Mutation>>, Option<ScanCursor>);

    /// How far a scan at `at` is, in percent, for progress reports.
    fn scan_percent(&self, _at: &ScanCursor) -> u8 {
        0
    }
}

/// The outcome of [`TwinStore::apply_remote`] and where a scan resumes: the
/// store's own types, so the adapter ([`engine`]) converts nothing.
pub use crate::store::{Applied, ScanCursor};

/// The daemon's store as the link reaches it: through the engine, which
/// owns the store and the clock that `apply_remote` and `scan` need.
pub fn engine_store(engine: &Arc<crate::engine::Engine>) -> Arc<dyn TwinStore> {
    engine.clone()
}

/// Run a store call that may touch the disk without stalling the runtime's
/// only worker: on a multi-threaded runtime the worker hands its other tasks
/// over first; elsewhere (single-threaded tests) it just runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
