//! systemd integration without libsystemd: socket activation and sd_notify.
//!
//! * **Socket activation** (`sd_listen_fds(3)`): when `LISTEN_PID` is our pid,
//!   fds 3.. are listeners handed over by `memtwin.socket`; `LISTEN_FDNAMES`
//!   names their roles (`memcache`, and later `replication`). The environment
//!   is read once, before the runtime starts, and never modified.
//! * **Readiness** (`sd_notify(3)`): `READY=1` is sent only once listeners are
//!   bound and data is loaded, so `Type=notify` units order correctly;
//!   `STOPPING=1` on shutdown; `WATCHDOG=1` from housekeeping only while the
//!   clock keeps ticking (a wedged runtime stops petting the watchdog).
//!
//! Everything is a no-op when not started by systemd.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// A listener inherited from systemd.
#[derive(Debug)]
pub struct InheritedFd {
    pub fd: RawFd,
    pub name: String,
}

/// Listeners passed by systemd, if `LISTEN_PID` names this process.
pub fn listen_fds() -> Vec<InheritedFd> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !pid_ok {
        return Vec::new();
    }
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    (0..n.max(0))
        .map(|i| {
            let fd = 3 + i;
            // SAFETY: FD_CLOEXEC on an fd we own by the sd_listen_fds contract.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            InheritedFd {
                fd,
                name: names
                    .get(i as usize)
                    .cloned()
                    .unwrap_or_else(|| "unknown".into()),
            }
        })
        .collect()
}

/// Turn an inherited fd into a std TCP listener, checking that it is one.
pub fn tcp_listener(fd: &InheritedFd) -> std::io::Result<std::net::TcpListener> {
    // SAFETY: the fd was handed to us by systemd and is used exactly once here.
    let l = unsafe { std::net::TcpListener::from_raw_fd(fd.fd) };
    l.local_addr()?; // fails on a non-socket or non-TCP fd
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The notify socket, if systemd gave us one.
#[derive(Debug, Clone)]
pub struct Notifier {
    path: Option<PathBuf>,
}

impl Notifier {
    pub fn from_env() -> Self {
        let path = std::env::var_os("NOTIFY_SOCKET")
            .map(PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty());
        Notifier { path }
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Send a notification such as `READY=1\nSTATUS=...`. Errors are logged, never fatal.
    pub fn notify(&self, msg: &str) {
        let Some(path) = &self.path else { return };
        let res = UnixDatagram::unbound().and_then(|s| s.send_to(msg.as_bytes(), path));
        if let Err(e) = res {
            tracing::debug!("sd_notify to {} failed: {e}", path.display());
        }
    }

    /// Half the watchdog period, when `WATCHDOG_USEC` is set for this process.
    pub fn watchdog_interval() -> Option<std::time::Duration> {
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .map(|p| p.parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (pid_ok && usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_the_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier { path: Some(path) };
        n.notify("READY=1\nSTATUS=test");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=test");
    }
}
