//! Wire formats: request parsing and reply encoding, with no I/O.
//!
//! Parsers work on complete byte slices handed to them by the session layer and
//! report either a typed request, "need more bytes", or a typed error that maps
//! 1:1 to the reply memcached sends. Nothing here knows about sockets or tokio.

pub mod base64;
pub mod binary;
pub mod meta;
pub mod number;
pub mod text;
