//! Wire formats: request parsing and reply encoding, with no I/O.
//!
//! Parsers work on complete byte slices handed to them by the session layer and
//! report either a typed request, "need more bytes", or a typed error that maps
//! 1:1 to the reply memcached sends. Nothing here knows about sockets or tokio.
//!
//! [`twin`] is the odd one out: not a client protocol but the framing, record
//! encoding and authentication proof of the link between twin peers.

pub mod base64;
pub mod binary;
pub mod meta;
pub mod number;
pub mod text;
pub mod twin;
