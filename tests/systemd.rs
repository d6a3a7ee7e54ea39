//! systemd integration, tested without systemd as PID 1: socket activation
//! (a listener passed as fd 3), readiness and stop notifications over a fake
//! NOTIFY_SOCKET, and `systemd-analyze verify` of the shipped units.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_memtwin")
}

#[test]
fn socket_activation_and_notify() {
    let dir = tempfile::tempdir().expect("tmp");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=memcache exec \"$0\" -U 0 -p 1")
        .arg(bin())
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).expect("log"));
    // SAFETY: dup2 and fcntl are async-signal-safe; runs in the child between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself is a no-op that keeps FD_CLOEXEC (Rust opens
            // sockets close-on-exec): when the listener already is fd 3 (the
            // lowest free number, as happened in CI), clear the flag instead,
            // or exec closes it and the daemon finds its own epoll fd there.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    drop(listener);

    let mut buf = [0u8; 256];
    // Generous: a loaded CI machine can take seconds to schedule a start-up.
    let n = match notify.recv(&mut buf) {
        Ok(n) => n,
        Err(e) => {
            let exited = child.try_wait().ok().flatten();
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
            panic!("no READY notification ({e}); exited: {exited:?}; log:\n{log}");
        }
    };
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "got {msg:?}");

    // -p 1 would fail to bind; the inherited socket is used instead.
    let mut c = TcpStream::connect(addr).expect("connect to inherited socket");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(b"set a 0 0 1\r\nx\r\nget a\r\n")
        .expect("write");
    let mut got = Vec::new();
    while !got.ends_with(b"END\r\n") {
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n");

    // SAFETY: plain kill(2) on our child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let n = notify.recv(&mut buf).expect("STOPPING notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn shipped_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed; skipping (scripts/test installs it)");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let root = env!("CARGO_MANIFEST_DIR");
    for unit in ["memtwin.service", "memtwin@.service", "memtwin.socket"] {
        let text =
            std::fs::read_to_string(format!("{root}/packaging/systemd/{unit}")).expect("unit");
        // verify checks that ExecStart exists: point it at the built binary.
        let text = text.replace("/usr/bin/memtwin", bin());
        std::fs::write(dir.path().join(unit), text).expect("write");
    }
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args(["verify", "--man=no", "memtwin.service", "memtwin.socket"])
        .output()
        .expect("run verify");
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .args(["verify", "--man=no", "memtwin@sessions.service"])
        .output()
        .expect("run verify");
    assert!(
        out.status.success(),
        "template verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args([
            "security",
            "--offline=true",
            "--threshold=15",
            "memtwin.service",
        ])
        .output()
        .expect("run security");
    assert!(
        out.status.success(),
        "hardening regressed: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
}
