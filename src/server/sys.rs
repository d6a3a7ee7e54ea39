//! The few Linux syscalls the event loops need, behind safe wrappers: epoll,
//! eventfd, and `recv`/`send` on a non-blocking socket. All of the server's
//! `unsafe` is in this file.
//!
//! Why not tokio for the connections: with tokio's work-stealing runtime the
//! server's workers, and the clients sharing the CPUs with them, were preempted
//! and woken far more often than memcached's (its structure is one epoll loop
//! per thread, connections assigned at accept); see `docs/decisions.md`.

use bytes::BytesMut;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Readiness a connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Requests (level-triggered: reported while unread bytes remain).
    Read,
    /// Room in the send buffer for replies that did not fit.
    Write,
    /// Nothing: the connection waits for something else (its writes' acks).
    None,
}

impl Interest {
    fn bits(self) -> u32 {
        match self {
            Interest::Read => (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            Interest::Write => libc::EPOLLOUT as u32,
            Interest::None => 0,
        }
    }
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// `capacity`: how many readiness reports one `wait` returns at most.
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: plain syscall; the fd it returns is owned from here on.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token,
        };
        // SAFETY: valid epoll fd and a pointer to a live epoll_event.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) }).map(|_| ())
    }

    pub fn add(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    pub fn modify(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    pub fn delete(&self, fd: RawFd) {
        // Closing the fd removes it too; this is for fds that stay open.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, Interest::None, 0);
    }

    /// Wait up to `timeout_ms` (-1: forever) and put the tokens of the ready
    /// fds in `out`. What is ready is not reported: a connection's state says
    /// what it waits for, and its `recv` or `send` then finds out (including a
    /// hang-up or an error).
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        // SAFETY: `events` is a live buffer of `len` epoll_event entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        let n = match check(n) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        out.extend(self.events[..n].iter().map(|e| e.u64));
        Ok(())
    }
}

/// A counter another thread bumps to wake an epoll loop.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the fd it returns is owned from here on.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Make the owning loop's next (or current) `wait` return.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) means
        // a wake-up is already pending, which is all we need.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset the counter (level-triggered epoll reports it until then).
    pub fn drain(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN (already 0) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
    }
}

/// Read what the socket has into the spare capacity of `buf` (one `recv`).
/// `Ok(0)`: the peer closed; `WouldBlock`: nothing there yet.
pub fn recv(fd: &OwnedFd, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the kernel writes at most `spare.len()` bytes into the spare
    // capacity, which `set_len` below then covers exactly.
    let n = check_size(unsafe {
        libc::recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), 0)
    })?;
    // SAFETY: the first `n` spare bytes were initialised by recv.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Send as much of `data` as the socket takes now (one `send`, no SIGPIPE).
pub fn send(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `data.len()` bytes from `data`.
    check_size(unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    })
}

/// Half-close: the peer reads EOF after the replies already sent.
pub fn shutdown_write(fd: &OwnedFd) {
    // SAFETY: plain syscall on a descriptor we own.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (OwnedFd, OwnedFd) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        (a.into(), b.into())
    }

    #[test]
    fn send_recv_and_readiness() {
        let (a, b) = pair();
        let mut ep = Epoll::new(8).expect("epoll");
        ep.add(b.as_raw_fd(), Interest::Read, 7).expect("add");
        let mut evs = Vec::new();
        ep.wait(0, &mut evs).expect("wait");
        assert!(evs.is_empty(), "nothing to read yet");
        let mut buf = BytesMut::with_capacity(64);
        assert_eq!(
            recv(&b, &mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        assert_eq!(send(&a, b"hello").expect("send"), 5);
        ep.wait(1000, &mut evs).expect("wait");
        assert_eq!(evs, [7]);
        assert_eq!(recv(&b, &mut buf).expect("recv"), 5);
        assert_eq!(&buf[..], b"hello");
        ep.wait(0, &mut evs).expect("wait");
        assert!(
            evs.is_empty(),
            "level-triggered: reported only while unread"
        );
        // Peer closes: reported, and recv returns 0.
        drop(a);
        ep.wait(1000, &mut evs).expect("wait");
        assert_eq!(evs, [7]);
        assert_eq!(recv(&b, &mut buf).expect("recv"), 0);
        // Deleted: no more reports although the hang-up stays.
        ep.delete(b.as_raw_fd());
        ep.wait(0, &mut evs).expect("wait");
        assert!(evs.is_empty());
    }

    #[test]
    fn eventfd_wakes_until_drained() {
        let mut ep = Epoll::new(8).expect("epoll");
        let efd = EventFd::new().expect("eventfd");
        ep.add(efd.raw(), Interest::Read, 1).expect("add");
        let mut evs = Vec::new();
        ep.wait(0, &mut evs).expect("wait");
        assert!(evs.is_empty());
        efd.notify();
        efd.notify();
        ep.wait(1000, &mut evs).expect("wait");
        assert_eq!(evs.len(), 1);
        ep.wait(0, &mut evs).expect("wait");
        assert_eq!(evs.len(), 1, "level-triggered until drained");
        efd.drain();
        ep.wait(0, &mut evs).expect("wait");
        assert!(evs.is_empty());
    }

    #[test]
    fn full_send_buffer_would_block_and_reports_writable_again() {
        let (a, b) = pair();
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        loop {
            match send(&a, &chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("send: {e}"),
            }
            assert!(sent < 64 << 20, "send buffer never filled");
        }
        let mut ep = Epoll::new(8).expect("epoll");
        ep.add(a.as_raw_fd(), Interest::Write, 3).expect("add");
        let mut evs = Vec::new();
        ep.wait(0, &mut evs).expect("wait");
        assert!(evs.is_empty(), "buffer is full");
        let mut buf = BytesMut::with_capacity(1 << 20);
        while recv(&b, &mut buf).is_ok() {
            buf.clear();
        }
        ep.wait(1000, &mut evs).expect("wait");
        assert_eq!(evs, [3]);
    }
}
