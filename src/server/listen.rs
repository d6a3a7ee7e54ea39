//! Binding TCP and unix listeners from the settings.

use crate::config::Settings;
use crate::systemd::InheritedFd;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpSocket, UnixListener};

/// A bound listener of either family.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    /// Bound, not listening yet (`--not-ready refuse`): connections are
    /// refused until [`Listener::listen`].
    /// (The socket is an Option only so that `listen` can move it out.)
    Deferred(Option<TcpSocket>, u32),
}

impl Stream {
    /// memcached's address notation of the peer, for `stats conns`.
    pub fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_else(|_| "tcp".into()),
            Stream::Unix(_) => "unix".into(),
        }
    }
}

/// An accepted connection.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// The socket, still non-blocking, for a worker's event loop.
    pub fn into_fd(self) -> io::Result<std::os::fd::OwnedFd> {
        Ok(match self {
            Stream::Tcp(s) => s.into_std()?.into(),
            Stream::Unix(s) => s.into_std()?.into(),
        })
    }
}

impl Listener {
    /// Start listening (a no-op unless deferred).
    pub fn listen(mut self) -> io::Result<Listener> {
        if let Listener::Deferred(sock, backlog) = &mut self {
            if let Some(sock) = sock.take() {
                return Ok(Listener::Tcp(sock.listen(*backlog)?));
            }
        }
        Ok(self)
    }

    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Deferred(..) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "listener not listening yet",
            )),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }

    /// memcached's address notation for `stats conns`.
    pub fn stat_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Deferred(s, _) => s
                .as_ref()
                .and_then(|s| s.local_addr().ok())
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_else(|| "tcp".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// The TCP address this listener is bound to (None for a unix socket).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Deferred(s, _) => s.as_ref().and_then(|s| s.local_addr().ok()),
            Listener::Unix(..) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Deferred(s, _) => s
                .as_ref()
                .and_then(|s| s.local_addr().ok())
                .map(|a| format!("{a} (listening once caught up with the twin)"))
                .unwrap_or_else(|| "tcp".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// All listeners of the process.
pub struct Listeners(Vec<Listener>);

impl Listeners {
    pub fn into_vec(self) -> Vec<Listener> {
        self.0
    }
    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.0.iter()
    }
}

fn resolve(spec: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(vec![sa]);
    }
    let host = spec.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    // host or host:port
    let (h, p) = match spec.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().unwrap_or(port)),
        _ => (spec, port),
    };
    Ok((h, p).to_socket_addrs()?.collect())
}

/// Bind every configured listener (before privileges are dropped). Listeners
/// inherited from systemd socket activation (named `memcache`, or unnamed)
/// replace the configured addresses. With `defer`, TCP sockets are bound (so
/// a taken port fails the start) but listen only later.
pub fn bind_all(
    settings: &Settings,
    inherited: &[InheritedFd],
    defer: bool,
) -> io::Result<Listeners> {
    let mut out = Vec::new();
    for fd in inherited
        .iter()
        .filter(|f| matches!(f.name.as_str(), "memcache" | "unknown" | ""))
    {
        let std_listener = crate::systemd::tcp_listener(fd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "inherited fd {} ({}) is not a TCP listener: {e}",
                    fd.fd, fd.name
                ),
            )
        })?;
        out.push(Listener::Tcp(TcpListener::from_std(std_listener)?));
    }
    if !out.is_empty() {
        return Ok(Listeners(out));
    }
    if let Some(path) = &settings.unix_socket {
        // memcached removes a stale socket file before binding.
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(settings.unix_mask))?;
        out.push(Listener::Unix(l, path.clone()));
        return Ok(Listeners(out));
    }
    for spec in &settings.listen {
        for addr in resolve(spec, settings.port)? {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.set_reuseaddr(true)?;
            sock.bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
            out.push(if defer {
                Listener::Deferred(Some(sock), settings.backlog)
            } else {
                Listener::Tcp(sock.listen(settings.backlog)?)
            });
        }
    }
    Ok(Listeners(out))
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The loud warning for a client listener that anyone beyond this host may
/// reach without authenticating (memtwin has no TLS yet either), or None.
/// Sessions are credentials: whoever reads a session key logs in as its user.
/// memcached starts silently in that case; memtwin starts too (it must stay a
/// drop-in), but says what it exposes and which flags fix it.
pub fn exposure_warning(addr: std::net::SocketAddr, authenticated: bool) -> Option<String> {
    let ip = match addr.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        ip => ip,
    };
    if ip.is_loopback() || authenticated {
        return None;
    }
    let reach = if ip.is_unspecified() {
        "every network interface"
    } else {
        "a non-loopback address"
    };
    Some(format!(
        "SECURITY: listening on {addr} ({reach}) with no authentication and no TLS: anyone who \
         can reach this port can read, change and delete every session in it. Listen on \
         loopback (-l 127.0.0.1), require authentication (-S --sasl-pwdb FILE, or -Y FILE), \
         and keep the port behind a firewall or on a private network"
    ))
}

#[cfg(test)]
mod exposure_tests {
    use super::exposure_warning;

    #[test]
    fn only_unauthenticated_listeners_beyond_loopback_are_flagged() {
        let w = |a: &str, auth| exposure_warning(a.parse().expect("addr"), auth);
        for quiet in [
            "127.0.0.1:11211",
            "127.0.0.2:1",
            "[::1]:11211",
            "[::ffff:127.0.0.1]:5",
        ] {
            assert_eq!(w(quiet, false), None, "{quiet}");
        }
        let all = w("0.0.0.0:11211", false).expect("flagged");
        assert!(
            all.contains("every network interface") && all.contains("-S --sasl-pwdb"),
            "{all}"
        );
        assert!(w("[::]:11211", false)
            .expect("flagged")
            .contains("every network interface"));
        assert!(w("10.1.2.3:11211", false)
            .expect("flagged")
            .contains("non-loopback"));
        assert_eq!(w("0.0.0.0:11211", true), None, "authentication required");
    }
}
