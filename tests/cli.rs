//! The daemon's operational flags, tested on the real binary: `-d` with `-P`,
//! `-u` privilege drop, `-s` unix sockets, `-U` refusal, unknown `-o` options,
//! and clean exit on SIGINT/SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::free_port;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_memtwin")
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn roundtrip<S: Read + Write>(mut s: S, req: &[u8], until: &[u8]) -> Vec<u8> {
    s.write_all(req).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(until) {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid we started.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[test]
fn daemonize_writes_pidfile_and_serves() {
    let dir = tempfile::tempdir().expect("tmp");
    let pidfile = dir.path().join("memtwin.pid");
    let port = free_port();
    let status = Command::new(bin())
        .args(["-d", "-U", "0", "-p", &port.to_string(), "-P"])
        .arg(&pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert!(
        status.success(),
        "the foreground process exits 0 after forking"
    );
    let pid: i32 = wait_for("pid file", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    let conn = wait_for("listener", || TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(roundtrip(conn, b"version\r\n", b"\r\n").starts_with(b"VERSION 1.6.18-memtwin-"));
    kill(pid, libc::SIGTERM);
    wait_for("exit", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists() || !pidfile.exists()).then_some(())
    });
}

#[test]
fn drops_privileges_to_the_named_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: -u has nothing to drop; skipping");
        return;
    }
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["-U", "0", "-u", "nobody", "-p", &port.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let conn = wait_for("listener", || TcpStream::connect(("127.0.0.1", port)).ok());
    // The port accepts into its backlog from bind(2) on, which is *before* the
    // privilege drop (as in memcached: bind as root, then switch). Only a
    // served reply proves the daemon got past the switch; reading the uid on
    // connect alone raced with it (3 of 300 runs under CPU load said root).
    assert!(roundtrip(conn, b"version\r\n", b"\r\n").starts_with(b"VERSION "));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line")
        .to_string();
    kill(child.id() as i32, libc::SIGINT);
    assert!(
        child.wait().expect("wait").success(),
        "SIGINT is a clean exit"
    );
    assert!(
        !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
        "still root: {uid_line}"
    );
}

#[test]
fn unix_socket_listener() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("memtwin.sock");
    let mut child = Command::new(bin())
        .args(["-U", "0", "-s"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let conn = wait_for("unix socket", || UnixStream::connect(&path).ok());
    assert_eq!(
        roundtrip(conn, b"set u 0 0 1\r\nx\r\nget u\r\n", b"END\r\n"),
        b"STORED\r\nVALUE u 0 1\r\nx\r\nEND\r\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    kill(child.id() as i32, libc::SIGTERM);
    assert!(child.wait().expect("wait").success());
    assert!(!path.exists(), "socket file removed on exit");
}

#[test]
fn udp_is_a_clear_startup_error() {
    let out = Command::new(bin())
        .args(["-U", "11211"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UDP is not supported"));
}

/// Run with `args`: memtwin must exit 64 (its status for every configuration
/// error) with `message` (memcached's words) on stderr.
fn refused_with(args: &[&str], message: &str) {
    let out = Command::new(bin())
        .args(["-p", "0"])
        .args(args)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(message), "{args:?}: {err}");
}

/// memcached 1.6.18 `-m 1` (default `-I 1m`): "Cannot set item size limit
/// higher than 1/2 of memory max." on stderr, exit status 64.
#[test]
fn an_item_limit_over_half_the_memory_exits_64_like_memcached() {
    refused_with(
        &["-m", "1"],
        "Cannot set item size limit higher than 1/2 of memory max.",
    );
}

/// memcached 1.6.18 refuses these with the same words (it exits 1).
#[test]
fn memcacheds_other_flag_errors_are_refused_in_its_words() {
    refused_with(&["-D", ""], "No delimiter specified");
    refused_with(
        &["-R", "0"],
        "Number of requests per event must be greater than 0",
    );
}

/// Migration: point memtwin at Debian's memcached.conf and check what it would
/// run with, without starting it.
#[test]
fn check_config_prints_the_effective_settings_of_a_memcached_conf() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("memcached.conf");
    std::fs::write(
        &conf,
        "# memcached default config file\n-d\nlogfile /var/log/memcached.log\n-m 64\n\
         -p 11211\n-u memcache\n-l 127.0.0.1\n-P /var/run/memcached/memcached.pid\n",
    )
    .expect("write");
    let out = Command::new(bin())
        .arg("--memcached-conf")
        .arg(&conf)
        .args(["-m", "512", "--check-config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "memory-limit = 512",
        "port = 11211",
        "user = \"memcache\"",
        "pidfile = \"/var/run/memcached/memcached.pid\"",
        "listen = [\"127.0.0.1\"]",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(
        text.contains("# warning:") && text.contains("logfile"),
        "{text}"
    );
    // A bad line is refused with its line number, exit 64.
    std::fs::write(&conf, "-m 64\n-Q\n").expect("write");
    let out = Command::new(bin())
        .arg("--memcached-conf")
        .arg(&conf)
        .arg("--check-config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{out:?}"
    );
}

#[test]
fn unknown_extended_options_warn_but_start() {
    let port = free_port();
    let child = Command::new(bin())
        .args([
            "-U",
            "0",
            "-p",
            &port.to_string(),
            "-o",
            "modern,no_such_option=1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for("listener", || TcpStream::connect(("127.0.0.1", port)).ok());
    kill(child.id() as i32, libc::SIGTERM);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_option"));
}

/// Whether this process may raise hard limits (capability 24, CAP_SYS_RESOURCE).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// The soft open-files limit of a running process, from /proc.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("soft limit")
}

/// Start memtwin with `-c conns` under the given open-files limits and return
/// its soft limit once it serves.
fn nofile_after_start(soft: u64, hard: u64, conns: &str) -> u64 {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let mut cmd = Command::new(bin());
    cmd.args([
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-p",
        &port.to_string(),
        "-c",
        conns,
    ])
    .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    wait_for("listener", || TcpStream::connect(("127.0.0.1", port)).ok());
    let n = soft_nofile(child.id());
    kill(child.id() as i32, libc::SIGTERM);
    let _ = child.wait();
    n
}

#[test]
fn connection_limit_raises_the_open_files_limit() {
    // -c 1000 needs 1000 descriptors plus headroom (128): raised within the hard limit.
    assert_eq!(nofile_after_start(256, 4096, "1000"), 1128);
    // Never lowered.
    assert_eq!(nofile_after_start(4000, 4096, "100"), 4000);
    // Above the hard limit only a process with CAP_SYS_RESOURCE (root, unless a
    // container drops it) can go; others get as far as the hard limit.
    let expect = if has_cap_sys_resource() { 1128 } else { 512 };
    assert_eq!(nofile_after_start(256, 512, "1000"), expect);
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    // stderr is a file here, as under a service manager or `2>log`.
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let d = common::Daemon::start(port, &dir.path().join("d"), &[]);
    let mut c = d.client();
    assert!(c.cmd("version").starts_with("VERSION"));
    let log = d.log_text();
    d.stop();
    assert!(log.contains("listening on"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape in a log file:\n{log:?}"
    );
}
