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
pub mod report;
pub mod text;

use crate::config::Settings;
use crate::engine::Engine;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Stop producing replies into one batch past this many bytes; the server
/// writes them out first. Bounds per-connection memory for huge multi-gets.
pub const OUTPUT_HIGH_WATER: usize = 4 << 20;

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
    pub detail: AtomicBool,
    /// Cancelled by the `shutdown` command (with `-A`) or a signal.
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn new(engine: Arc<Engine>, settings: Arc<Settings>) -> Self {
        Shared {
            verbosity: AtomicU32::new(u32::from(settings.verbose)),
            engine,
            settings,
            auth: crate::auth::Auth::default(),
            curr_conns: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            detail: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
        }
    }
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
}
