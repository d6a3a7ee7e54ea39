//! One client connection: read, let the session process, write its replies in
//! one write, repeat. The protocol is chosen by the first byte (0x80 = binary).

use crate::config::BindingProtocol;
use crate::server::listen::Stream;
use crate::session::binary::BinarySession;
use crate::session::text::TextSession;
use crate::session::{Flow, Shared};
use bytes::BytesMut;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READ_CHUNK: usize = 16 * 1024;
/// Give a buffer that grew for a large value back when it is idle again.
const SHRINK_ABOVE: usize = 256 * 1024;

enum Session {
    Text(TextSession),
    Binary(BinarySession),
}

impl Session {
    fn process(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Flow {
        match self {
            Session::Text(s) => s.process(input, out),
            Session::Binary(s) => s.process(input, out),
        }
    }
    fn take_mutated(&mut self) -> bool {
        match self {
            Session::Text(s) => s.take_mutated(),
            Session::Binary(s) => s.take_mutated(),
        }
    }
}

/// Pick the session for a new connection from its first byte and `-B`, as
/// narrowed by authentication ([`crate::auth::Auth::binding`]): with SASL only
/// (`-S`) ASCII connections are closed; with ASCII auth only (`-Y`) everything
/// is text, so a binary packet meets the auth gate as a text line.
fn choose(first: u8, shared: &std::sync::Arc<Shared>) -> Option<Session> {
    match (shared.auth.binding(shared.settings.protocol), first) {
        (BindingProtocol::Binary | BindingProtocol::Auto, 0x80) => {
            Some(Session::Binary(BinarySession::new(shared.clone())))
        }
        (BindingProtocol::Binary, _) => None,
        _ => Some(Session::Text(TextSession::new(shared.clone()))),
    }
}

pub async fn run(mut sock: Stream, shared: &std::sync::Arc<Shared>) {
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    let mut session: Option<Session> = None;
    let stats = shared.engine.stats();
    let idle = match shared.settings.idle_timeout {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    // Shutdown: register this task's waker with the token ONCE, then only check
    // the token's flag. Polling a `cancelled()` future per read took the token's
    // global waiter-list mutex once or twice per request (~400 instructions, and
    // contention between worker threads). The registration stays valid for the
    // connection's life: a task's waker does not change, and `cancel()` sets the
    // flag before it wakes the registered waiters.
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    if std::future::poll_fn(|cx| Poll::Ready(cancelled.as_mut().poll(cx)))
        .await
        .is_ready()
    {
        return;
    }
    let shutdown = std::future::poll_fn(|_| {
        if shared.shutdown.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::pin!(shutdown);
    loop {
        if input.is_empty() {
            // Everything was consumed: read into the start of the buffer again
            // (reserve on an empty, unshared buffer just resets its offset).
            // Otherwise each read lands further into it, and 200 connections
            // walk 200 x 16 KiB of cache instead of reusing a few hot lines.
            input.reserve(READ_CHUNK);
        } else if input.capacity() - input.len() < READ_CHUNK / 2 {
            input.reserve(READ_CHUNK);
        }
        let read = async {
            match idle {
                Some(d) => tokio::time::timeout(d, sock.read_buf(&mut input))
                    .await
                    .unwrap_or(Ok(0)),
                None => sock.read_buf(&mut input).await,
            }
        };
        let n = tokio::select! {
            // Read first: when data is there the shutdown waiter is not polled at
            // all (and no random branch order is drawn).
            biased;
            r = read => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = &mut shutdown => return,
        };
        stats.add(|c| &c.bytes_read, n as u64);
        if session.is_none() {
            match choose(input[0], shared) {
                Some(s) => session = Some(s),
                None => {
                    tracing::debug!("protocol not allowed on this connection (-B / -S)");
                    return;
                }
            }
        }
        let Some(sess) = session.as_mut() else { return };
        loop {
            // Attribute the records this batch publishes to this connection
            // (process() runs to completion on this thread, no await inside).
            crate::mutation::take_published();
            let flow = sess.process(&mut input, &mut out);
            let published = crate::mutation::take_published();
            if sess.take_mutated() && published > 0 {
                let stream = shared.engine.stream();
                if stream.must_wait() {
                    if let Err(e) = stream.wait_acked(published).await {
                        // The outcome of these writes is unknown to us: say nothing rather
                        // than a success we cannot vouch for; the client sees a closed connection.
                        tracing::warn!("closing connection: write not acknowledged ({e})");
                        return;
                    }
                }
            }
            if !out.is_empty() {
                if sock.write_all(&out).await.is_err() {
                    return;
                }
                stats.add(|c| &c.bytes_written, out.len() as u64);
                out.clear();
            }
            match flow {
                Flow::NeedInput => break,
                Flow::Flush => continue,
                Flow::Close => {
                    let _ = sock.shutdown().await;
                    return;
                }
            }
        }
        if input.is_empty() && input.capacity() > SHRINK_ABOVE {
            input = BytesMut::with_capacity(READ_CHUNK);
        }
        if out.capacity() > SHRINK_ABOVE {
            out = BytesMut::with_capacity(READ_CHUNK);
        }
    }
}
