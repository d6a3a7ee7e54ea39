//! memtwin: a memcached-compatible session store.
//!
//! Data flows one way through the crate, and the module tree follows it:
//!
//! ```text
//! bytes ──► protocol (wire formats, no I/O) ──► engine (command semantics)
//!                                                  │
//!                                   store (table) ◄┴► mutation stream ──► disk, twin
//!                                                  │
//! bytes ◄── protocol (reply encoding) ◄────────────┘
//! ```
//!
//! * [`protocol`] parses requests and encodes replies. It never touches a socket.
//! * [`engine`] executes protocol-independent commands (set, add, incr, touch ...)
//!   against the [`store`], so the text, meta and binary protocols share one
//!   implementation of every command.
//! * [`store`] is the sharded in-memory table: memory accounting, eviction, expiry,
//!   logical `flush_all`. Every state change it makes is published on the
//!   [`mutation`] stream, the single feed for persistence and replication.
//! * [`session`] turns a connection's bytes into engine calls and replies
//!   (one state machine per protocol, no sockets).
//! * [`server`] owns sockets: the accept loop, one epoll loop per worker thread
//!   serving the connections assigned to it, limits and graceful shutdown.
//! * [`persist`] is the disk subscriber of the mutation stream (sled): group
//!   commit, fsync policy, warm restart, and the read-through backing that makes
//!   RAM a cache over disk.
//! * [`version`] stamps item versions: a hybrid logical clock with the node id
//!   in its low bits, so the twins' conflict rule is a comparison of two numbers
//!   and a stamp can serve as a CAS token on both nodes.
//! * [`auth`] holds the SASL / ASCII-auth credentials and their checks.
//! * [`config`], [`stats`], [`clock`], [`systemd`] and [`daemon`] are operations glue;
//!   [`import`] is `memtwin import`, the migration tool that copies a running
//!   memcached's items into memtwin.

pub mod auth;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod import;
pub mod metrics;
pub mod mutation;
pub mod persist;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod session;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod twin;
pub mod version;

/// memtwin's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version reported on the wire (`version`, `stats`, binary VERSION): the
/// memcached release whose behaviour memtwin reproduces, tagged with memtwin's
/// own version. Clients parse it (libmemcached rejects a major version 0 and
/// gates features on it), so it must read as a memcached version.
pub const WIRE_VERSION: &str = concat!("1.6.18-memtwin-", env!("CARGO_PKG_VERSION"));
