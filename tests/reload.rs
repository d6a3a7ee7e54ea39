//! SIGHUP rereads the log level and the auth files without dropping a
//! connection; a bad new file or config keeps what is in force and says why.
//! (Before, SIGHUP's default action killed memtwin; memcached survives it.)

mod common;

use common::Client;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Server {
    fn start(dir: &Path, args: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let log = dir.join("memtwin.log");
        let child = Command::new(env!("CARGO_BIN_EXE_memtwin"))
            .args(["-p", &port.to_string(), "-U", "0", "-l", "127.0.0.1"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        let s = Server { child, port, log };
        s.wait_log("listening on");
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log has `what` `n` times.
    fn wait_log_n(&self, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(what).count() < n {
            assert!(Instant::now() < deadline, "no {what:?} in:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_log(&self, what: &str) {
        self.wait_log_n(what, 1);
    }

    fn hup(&mut self) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) },
            0
        );
    }

    fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// memcached's ASCII auth: a set whose data is "user password".
fn auth(c: &mut Client, user: &str, pass: &str) -> String {
    c.set("auth", 0, 0, format!("{user} {pass}").as_bytes())
}

fn auth_with(s: &Server, user: &str, pass: &str) -> String {
    auth(&mut s.connect(), user, pass)
}

#[test]
fn sighup_reloads_the_level_and_the_users_and_keeps_connections() {
    let tmp = tempfile::tempdir().expect("tmp");
    let users = tmp.path().join("users");
    let conf = tmp.path().join("memtwin.toml");
    std::fs::write(&users, "alice:one\n").expect("write");
    std::fs::write(&conf, "verbose = 0\n").expect("write");
    let (u, c) = (
        users.to_str().expect("utf-8"),
        conf.to_str().expect("utf-8"),
    );
    let mut s = Server::start(tmp.path(), &["--config", c, "-Y", u]);

    let mut held = s.connect();
    assert_eq!(auth(&mut held, "alice", "one"), "STORED");
    assert_eq!(held.set("k", 0, 0, b"x"), "STORED");
    assert_eq!(
        auth_with(&s, "mallory", "x"),
        "CLIENT_ERROR authentication failure"
    );
    assert!(
        !s.log().contains("ASCII authentication failed"),
        "debug at info level"
    );

    // New users and a higher level.
    std::fs::write(&users, "bob:two\n").expect("write");
    std::fs::write(&conf, "verbose = 1\n").expect("write");
    s.hup();
    s.wait_log("reload: ASCII auth: 1 user(s)");
    s.wait_log("reload: log filter memtwin=debug");
    assert!(s.alive(), "SIGHUP must not stop memtwin:\n{}", s.log());
    assert_eq!(auth_with(&s, "bob", "two"), "STORED");
    assert_eq!(
        auth_with(&s, "alice", "one"),
        "CLIENT_ERROR authentication failure"
    );
    s.wait_log("ASCII authentication failed");
    // The connection held across the reload is still authenticated.
    assert_eq!(held.cmd("get k"), "VALUE k 0 1");

    // A bad users file keeps bob.
    std::fs::write(&users, "no colon\n").expect("write");
    s.hup();
    s.wait_log("reload: ASCII auth: keeping the 1 user(s) in force");
    assert_eq!(auth_with(&s, "bob", "two"), "STORED");

    // A bad config changes nothing at all.
    std::fs::write(&users, "carol:three\n").expect("write");
    std::fs::write(&conf, "verbose = \"loud\"\n").expect("write");
    s.hup();
    s.wait_log("the configuration is not valid, nothing changed");
    assert_eq!(auth_with(&s, "bob", "two"), "STORED");
    assert_eq!(
        auth_with(&s, "carol", "three"),
        "CLIENT_ERROR authentication failure"
    );

    // What needs a restart is named.
    std::fs::write(&conf, "verbose = 0\nmemory-limit = 128\n").expect("write");
    s.hup();
    s.wait_log("memory-limit (-m) changed but only take effect after a restart");
    assert_eq!(auth_with(&s, "carol", "three"), "STORED");
    assert!(s.alive());
    let mut again = s.connect();
    assert_eq!(auth(&mut again, "carol", "three"), "STORED");
    assert_eq!(again.cmd("get k"), "VALUE k 0 1");
}
