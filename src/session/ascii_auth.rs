//! ASCII authentication (`-Y FILE`), memcached 1.6.18's "auth token" gate in
//! front of a text connection.
//!
//! Until a connection authenticates, every line is answered with
//! `CLIENT_ERROR unauthenticated`, except the one shape memcached accepts as a
//! login: `set <any> <any> <any> <n>\r\n<user> <pass>\r\n`. Nothing is stored;
//! the data block only carries the credentials. It lives outside the text
//! session so the session itself needs just one check before dispatch, and so
//! that no command parser ever sees input from an unauthenticated client.
//!
//! Deliberate difference: memcached 1.6.18 loses replies when several of these
//! arrive in one read (it reuses one response object); memtwin answers each.

use crate::protocol::number::strtoul_u32;
use crate::protocol::text::{Tokens, LINE_LIMIT};
use crate::session::Shared;
use bytes::BytesMut;

/// Largest credential block accepted. memcached reads it into its 16 KiB read
/// buffer and drops the connection when it does not fit; so does memtwin.
pub const DATA_MAX: usize = 16 * 1024;

/// What the gate did with the start of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// `n` bytes were handled (and replied to); `authenticated` is the new state.
    Consumed {
        n: usize,
        authenticated: bool,
    },
    NeedMore,
    Close,
}

/// Handle one request of an unauthenticated text connection.
pub fn gate(shared: &Shared, input: &[u8], out: &mut BytesMut) -> Gate {
    // memcached 1.6.18 waits for a second byte before looking for a line.
    if input.len() < 2 {
        return Gate::NeedMore;
    }
    let Some(nl) = memchr::memchr(b'\n', input) else {
        return if input.len() > LINE_LIMIT {
            Gate::Close
        } else {
            Gate::NeedMore
        };
    };
    let end = if nl > 0 && input[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let next = nl + 1;
    let mut toks = Tokens::new(&input[..end]);
    let (cmd, size) = (toks.next(), toks.nth(3));
    let size = match (cmd, size.and_then(strtoul_u32)) {
        (Some(b"set"), Some(n)) => n as usize,
        _ => return refuse(out, next, b"CLIENT_ERROR unauthenticated"),
    };
    let total = size + 2;
    if total > DATA_MAX {
        return Gate::Close;
    }
    if input.len() < next + total {
        return Gate::NeedMore;
    }
    let data = &input[next..next + total];
    let n = next + total;
    if &data[size..] != b"\r\n" {
        return refuse(out, n, b"CLIENT_ERROR bad command line termination");
    }
    // memcached tokenizes the block as a C string: a NUL ends it.
    let block = &data[..size];
    let block = &block[..memchr::memchr(0, block).unwrap_or(block.len())];
    let mut creds = Tokens::new(block);
    let (Some(user), Some(pass)) = (creds.next(), creds.next()) else {
        return refuse(out, n, b"CLIENT_ERROR bad authentication token format");
    };
    let ok = shared
        .auth
        .ascii
        .as_ref()
        .is_some_and(|c| c.current().verify(user, pass));
    let stats = shared.engine.stats();
    stats.bump(|c| &c.auth_cmds);
    if ok {
        // The `noreply` a client may have put on the line is ignored, as in memcached.
        out.extend_from_slice(b"STORED\r\n");
        Gate::Consumed {
            n,
            authenticated: true,
        }
    } else {
        stats.bump(|c| &c.auth_errors);
        tracing::debug!("ASCII authentication failed");
        refuse(out, n, b"CLIENT_ERROR authentication failure")
    }
}

fn refuse(out: &mut BytesMut, n: usize, reply: &[u8]) -> Gate {
    out.extend_from_slice(reply);
    out.extend_from_slice(b"\r\n");
    Gate::Consumed {
        n,
        authenticated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Credentials, Format, LiveCredentials};

    fn shared() -> Shared {
        let mut s = Shared::for_tests();
        s.auth.ascii = Credentials::parse(b"alice:s3cret\n", Format::AuthFile)
            .ok()
            .map(|c| LiveCredentials::new(Format::AuthFile, c));
        s
    }

    fn once(s: &Shared, input: &[u8]) -> (Gate, Vec<u8>) {
        let mut out = BytesMut::new();
        let g = gate(s, input, &mut out);
        (g, out.to_vec())
    }

    #[test]
    fn memcached_replies() {
        let s = shared();
        let ok = |n| Gate::Consumed {
            n,
            authenticated: true,
        };
        let no = |n| Gate::Consumed {
            n,
            authenticated: false,
        };
        assert_eq!(
            once(&s, b"get foo\r\n"),
            (no(9), b"CLIENT_ERROR unauthenticated\r\n".to_vec())
        );
        assert_eq!(
            once(&s, b"set x 0 0 12\r\nalice s3cret\r\nget"),
            (ok(28), b"STORED\r\n".to_vec())
        );
        assert_eq!(
            once(&s, b"set x y z 13\r\n alice s3cret\r\n"),
            (ok(29), b"STORED\r\n".to_vec())
        );
        assert_eq!(
            once(&s, b"set x 0 0 11\r\nalice wrong\r\n"),
            (no(27), b"CLIENT_ERROR authentication failure\r\n".to_vec())
        );
        assert_eq!(
            once(&s, b"set x 0 0 6\r\nalice \r\n"),
            (
                no(21),
                b"CLIENT_ERROR bad authentication token format\r\n".to_vec()
            )
        );
        assert_eq!(
            once(&s, b"set x 0 0 12\r\nalice s3cretXX"),
            (
                no(28),
                b"CLIENT_ERROR bad command line termination\r\n".to_vec()
            )
        );
        assert_eq!(once(&s, b"set x 0 0 12\r\nalice"), (Gate::NeedMore, vec![]));
        assert_eq!(
            once(&s, b"set x 0 0 -1\r\n"),
            (no(14), b"CLIENT_ERROR unauthenticated\r\n".to_vec())
        );
        assert_eq!(once(&s, b"set x 0 0 100000\r\n"), (Gate::Close, vec![]));
        assert_eq!(once(&s, &[b'x'; 3000]), (Gate::Close, vec![]));
        let snap = s.engine.stats().snapshot();
        assert_eq!((snap.auth_cmds, snap.auth_errors), (3, 1));
    }
}
