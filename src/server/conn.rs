//! One client connection as a state machine driven by its event loop: read,
//! let the session process, send its replies in one `send`, repeat. The
//! protocol is chosen by the first byte (0x80 = binary).
//!
//! A connection is always in one of three states, which is also what its loop
//! asks epoll about: *reading* (requests), *writing* (replies that did not fit
//! the socket buffer; no new request is read meanwhile, so a client that does
//! not read cannot make us buffer without bound), and *parked* (its writes wait
//! for the persistence writer's acknowledgement, `--fsync always`; the socket is
//! not watched at all until the acks arrive).

use super::sys::{self, Interest};
use crate::config::BindingProtocol;
use crate::session::binary::BinarySession;
use crate::session::text::TextSession;
use crate::session::{ConnGuard, Flow, Shared, OUTPUT_HIGH_WATER};
use bytes::BytesMut;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

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
fn choose(first: u8, shared: &Arc<Shared>) -> Option<Session> {
    match (shared.auth.binding(shared.settings.protocol), first) {
        (BindingProtocol::Binary | BindingProtocol::Auto, 0x80) => {
            Some(Session::Binary(BinarySession::new(shared.clone())))
        }
        (BindingProtocol::Binary, _) => None,
        _ => Some(Session::Text(TextSession::new(shared.clone()))),
    }
}

/// What the connection does once its pending replies are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Wait for more requests.
    Read,
    /// Process the requests still buffered (the reply buffer filled up).
    Process,
    /// Process the requests still buffered, after the worker's other
    /// connections had their turn (`-R`).
    Yield,
    /// Half-close and drop the connection.
    Close,
}

impl From<Flow> for Next {
    fn from(f: Flow) -> Next {
        match f {
            Flow::NeedInput => Next::Read,
            Flow::Flush => Next::Process,
            Flow::Yield => Next::Yield,
            Flow::Close => Next::Close,
        }
    }
}

/// Whether the loop keeps the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Yes,
    /// Its writes must be acknowledged first: wait for this sequence number,
    /// then call [`Conn::acked`].
    Park(u64),
    /// It yielded (`-R`) with requests still buffered: call [`Conn::resume`]
    /// after the other ready connections.
    Again,
    No,
}

/// What a connection needs from its event loop.
pub struct Ctx<'a> {
    pub epoll: &'a sys::Epoll,
    pub shared: &'a Arc<Shared>,
    /// The connection's epoll token.
    pub token: u64,
}

pub struct Conn<'a> {
    fd: OwnedFd,
    input: BytesMut,
    out: BytesMut,
    /// Bytes of `out` already sent.
    sent: usize,
    next: Next,
    session: Option<Session>,
    interest: Interest,
    /// Engine clock (seconds) of the last request, for `idle_timeout`.
    pub last_active: u32,
    _registered: ConnGuard<'a>,
}

impl<'a> Conn<'a> {
    /// Adopt an accepted, non-blocking socket and watch it for requests.
    pub fn new(fd: OwnedFd, registered: ConnGuard<'a>, ctx: &Ctx<'_>) -> io::Result<Conn<'a>> {
        ctx.epoll.add(fd.as_raw_fd(), Interest::Read, ctx.token)?;
        Ok(Conn {
            fd,
            input: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::with_capacity(READ_CHUNK),
            sent: 0,
            next: Next::Read,
            session: None,
            interest: Interest::Read,
            last_active: ctx.shared.engine.now(),
            _registered: registered,
        })
    }

    /// Waiting for requests with nothing half-done (for idle timeouts and
    /// shutdown: such a connection can be closed without losing a reply).
    pub fn is_idle(&self) -> bool {
        self.interest == Interest::Read && self.out.is_empty() && self.next != Next::Yield
    }

    fn watch(&mut self, ctx: &Ctx<'_>, interest: Interest) -> io::Result<()> {
        if self.interest == interest {
            return Ok(());
        }
        let fd = self.fd.as_raw_fd();
        match (self.interest, interest) {
            // Parked connections are not registered at all: a socket reset by
            // the peer reports EPOLLHUP even with no interest, level-triggered.
            (_, Interest::None) => ctx.epoll.delete(fd),
            (Interest::None, i) => ctx.epoll.add(fd, i, ctx.token)?,
            (_, i) => ctx.epoll.modify(fd, i, ctx.token)?,
        }
        self.interest = interest;
        Ok(())
    }

    /// The socket reported readiness (or a hang-up or error): do what the
    /// connection's state waits for. A reset is reported as readable and
    /// writable, so `recv` or `send` notices it in either state, and a socket
    /// that keeps reporting it is closed instead of spinning the loop.
    pub fn ready(&mut self, ctx: &Ctx<'_>) -> Keep {
        match self.interest {
            Interest::Read => self.read(ctx),
            Interest::Write => self.advance(ctx),
            Interest::None => Keep::Yes,
        }
    }

    fn read(&mut self, ctx: &Ctx<'_>) -> Keep {
        // When everything was consumed, reserve on the empty, unshared buffer
        // just resets its offset: reading into its start again lets 200
        // connections reuse a few hot lines instead of 200 x 16 KiB.
        if self.input.is_empty() || self.input.capacity() - self.input.len() < READ_CHUNK / 2 {
            self.input.reserve(READ_CHUNK);
        }
        match sys::recv(&self.fd, &mut self.input) {
            Ok(0) => return Keep::No,
            Ok(n) => ctx.shared.engine.stats().add(|c| &c.bytes_read, n as u64),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Keep::Yes
            }
            Err(_) => return Keep::No,
        }
        self.last_active = ctx.shared.engine.now();
        if self.session.is_none() {
            match choose(self.input[0], ctx.shared) {
                Some(s) => self.session = Some(s),
                None => {
                    tracing::debug!("protocol not allowed on this connection (-B / -S)");
                    return Keep::No;
                }
            }
        }
        self.next = Next::Process;
        self.advance(ctx)
    }

    /// Its turn again after a yield (`Keep::Again`). Nothing to do if an
    /// event already had it process its input meanwhile.
    pub fn resume(&mut self, ctx: &Ctx<'_>) -> Keep {
        if self.next != Next::Yield {
            return Keep::Yes;
        }
        self.next = Next::Process;
        self.advance(ctx)
    }

    /// The writes this connection waited for are acknowledged (`Ok`) or will
    /// not be (`Err`: the outcome is unknown to us, so say nothing rather than
    /// a success we cannot vouch for; the client sees a closed connection).
    pub fn acked(&mut self, ctx: &Ctx<'_>, result: Result<(), String>) -> Keep {
        if let Err(e) = result {
            tracing::warn!("closing connection: write not acknowledged ({e})");
            return Keep::No;
        }
        self.advance(ctx)
    }

    /// Send pending replies, act on the session's verdict, process buffered
    /// requests; until the connection must wait for the socket, for acks, or
    /// for more requests.
    fn advance(&mut self, ctx: &Ctx<'_>) -> Keep {
        loop {
            // Back from a yield (`-R`), the replies wait for the rest of the
            // batch: one send for it all, as without the yield (a send per 20
            // requests halved the throughput of 100-deep pipelines).
            let batching = self.next == Next::Process && self.out.len() < OUTPUT_HIGH_WATER;
            while self.sent < self.out.len() && !batching {
                match sys::send(&self.fd, &self.out[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return self.wait_for(ctx, Interest::Write);
                    }
                    Err(_) => return Keep::No,
                }
            }
            if !self.out.is_empty() && !batching {
                ctx.shared
                    .engine
                    .stats()
                    .add(|c| &c.bytes_written, self.out.len() as u64);
                self.out.clear();
                self.sent = 0;
            }
            match self.next {
                Next::Close => {
                    sys::shutdown_write(&self.fd);
                    return Keep::No;
                }
                Next::Read => {
                    if self.input.is_empty() && self.input.capacity() > SHRINK_ABOVE {
                        self.input = BytesMut::with_capacity(READ_CHUNK);
                    }
                    if self.out.capacity() > SHRINK_ABOVE {
                        self.out = BytesMut::with_capacity(READ_CHUNK);
                    }
                    return self.wait_for(ctx, Interest::Read);
                }
                // Parked while yielding: acknowledged and sent now.
                Next::Yield => return self.yield_turn(ctx),
                Next::Process => {}
            }
            let Some(sess) = self.session.as_mut() else {
                return Keep::No;
            };
            // Attribute the records this batch publishes to this connection
            // (process() runs to completion on this thread).
            crate::mutation::take_published();
            self.next = sess.process(&mut self.input, &mut self.out).into();
            if self.next == Next::Yield {
                ctx.shared.engine.stats().bump(|c| &c.conn_yields);
            }
            let published = crate::mutation::take_published();
            if sess.take_mutated() && published > 0 && ctx.shared.engine.stream().must_wait() {
                return match self.watch(ctx, Interest::None) {
                    Ok(()) => Keep::Park(published),
                    Err(_) => Keep::No,
                };
            }
            if self.next == Next::Yield {
                return self.yield_turn(ctx);
            }
        }
    }

    /// Let the worker's other connections run; [`Conn::resume`] continues.
    fn yield_turn(&mut self, ctx: &Ctx<'_>) -> Keep {
        match self.wait_for(ctx, Interest::Read) {
            Keep::Yes => Keep::Again,
            other => other,
        }
    }

    fn wait_for(&mut self, ctx: &Ctx<'_>, interest: Interest) -> Keep {
        match self.watch(ctx, interest) {
            Ok(()) => Keep::Yes,
            Err(e) => {
                tracing::debug!("closing connection: epoll: {e}");
                Keep::No
            }
        }
    }
}
