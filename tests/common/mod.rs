//! Helpers for the persistence integration tests: spawn the built `memtwin`
//! binary on a data directory, talk the text protocol to it, stop it gently
//! (SIGTERM) or brutally (SIGKILL).
//!
//! Ports: every daemon gets a port the kernel just handed out as free
//! ([`free_port`]), so tests in one binary run in parallel and never collide
//! with anything else listening on the machine (fixed ports once did).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_memtwin");

/// A loopback port that was free a moment ago (ephemeral range, so it does not
/// collide with servers on fixed ports). A test keeps using it across restarts.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Daemon {
    /// Start on `dir` with extra `args`, and wait until it answers.
    pub fn start(port: u16, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_env(port, dir, args, &[])
    }

    /// [`Daemon::start`] with extra environment variables for the daemon.
    pub fn start_env(port: u16, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut d = Self::spawn_env(port, dir, &args, env);
        d.wait_ready();
        d
    }

    /// Spawn without waiting (for start-up failure tests).
    pub fn spawn(port: u16, dir: &Path, args: &[String]) -> Daemon {
        Self::spawn_env(port, dir, args, &[])
    }

    fn spawn_env(port: u16, dir: &Path, args: &[String], env: &[(&str, &str)]) -> Daemon {
        let log = dir.with_extension(format!("{port}.log"));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["-p", &port.to_string(), "-U", "0", "-l", "127.0.0.1"])
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env("RUST_LOG", "memtwin=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn memtwin");
        Daemon {
            child,
            port,
            dir: dir.to_path_buf(),
            log,
            args: args.to_vec(),
        }
    }

    /// Wrap a child spawned by the caller (e.g. with resource limits).
    pub fn from_child(child: Child, port: u16, dir: &Path, log: PathBuf) -> Daemon {
        Daemon {
            child,
            port,
            dir: dir.to_path_buf(),
            log,
            args: Vec::new(),
        }
    }

    /// Spawn and wait until the daemon answers at all: a node with a twin
    /// answers errors until it has caught up (see [`Daemon::wait_ready`]).
    #[allow(dead_code)]
    pub fn start_listening(port: u16, dir: &Path, args: &[&str]) -> Daemon {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut d = Self::spawn_env(port, dir, &args, &[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("memtwin exited early ({status}):\n{}", d.log_text());
            }
            if let Ok(mut c) = Client::try_connect(d.port) {
                // Any answer, or a close without one (a node catching up
                // with its twin refuses requests that way by default).
                match c.try_cmd("version") {
                    Ok(_) => return d,
                    Err(e) if is_refusal(&e) => return d,
                    Err(_) => {}
                }
            }
            // `--not-ready refuse` (the default): the client port listens
            // only once caught up; the log says the node is catching up.
            if d.log_text()
                .contains("before serving: client requests are refused")
            {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "memtwin not listening:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `version` gets `VERSION`: loaded and, with a twin, caught up.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("memtwin exited early ({status}):\n{}", self.log_text());
            }
            if let Ok(mut c) = Client::try_connect(self.port) {
                if c.try_cmd("version").is_ok_and(|v| v.starts_with("VERSION")) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "memtwin not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (graceful shutdown: the writer drains and syncs).
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut self.child, Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "memtwin did not stop cleanly ({status:?}):\n{}",
            self.log_text()
        );
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same directory with the same arguments.
    pub fn restart_args(port: u16, dir: &Path, args: &[&str]) -> Daemon {
        Daemon::start(port, dir, args)
    }

    pub fn args(&self) -> Vec<String> {
        self.args.clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + d;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run the binary to completion (it is expected to refuse to start).
pub fn run_expect_failure(port: u16, dir: &Path, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut d = Daemon::spawn(port, dir, &args);
    let status = wait_timeout(&mut d.child, Duration::from_secs(30));
    let log = d.log_text();
    assert!(
        matches!(status, Some(s) if !s.success()),
        "memtwin should have refused to start ({status:?}):\n{log}"
    );
    log
}

/// A text-protocol client.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

pub type Value = (u32, Vec<u8>, u64);

impl Client {
    pub fn try_connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    pub fn connect(port: u16) -> Client {
        Client::try_connect(port).expect("connect")
    }

    pub fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(l.trim_end().to_string())
    }

    pub fn try_cmd(&mut self, c: &str) -> std::io::Result<String> {
        self.w.write_all(format!("{c}\r\n").as_bytes())?;
        self.line()
    }

    pub fn cmd(&mut self, c: &str) -> String {
        self.try_cmd(c).expect("reply")
    }

    pub fn try_store(
        &mut self,
        verb: &str,
        key: &str,
        flags: u32,
        exptime: i64,
        value: &[u8],
    ) -> std::io::Result<String> {
        let mut m = format!("{verb} {key} {flags} {exptime} {}\r\n", value.len()).into_bytes();
        m.extend_from_slice(value);
        m.extend_from_slice(b"\r\n");
        self.w.write_all(&m)?;
        self.line()
    }

    /// `set ... noreply` (no reply is read).
    pub fn w_noreply(&mut self, key: &str, value: &[u8]) {
        let mut m = format!("set {key} 0 0 {} noreply\r\n", value.len()).into_bytes();
        m.extend_from_slice(value);
        m.extend_from_slice(b"\r\n");
        self.w.write_all(&m).expect("write");
    }

    pub fn set(&mut self, key: &str, flags: u32, exptime: i64, value: &[u8]) -> String {
        self.try_store("set", key, flags, exptime, value)
            .expect("reply")
    }

    pub fn store(&mut self, verb: &str, key: &str, value: &[u8]) -> String {
        self.try_store(verb, key, 0, 0, value).expect("reply")
    }

    pub fn cas(&mut self, key: &str, value: &[u8], cas: u64) -> String {
        let mut m = format!("cas {key} 0 0 {} {cas}\r\n", value.len()).into_bytes();
        m.extend_from_slice(value);
        m.extend_from_slice(b"\r\n");
        self.w.write_all(&m).expect("write");
        self.line().expect("reply")
    }

    /// `gets` for several keys: key -> (flags, value, cas).
    pub fn try_gets_many(&mut self, keys: &[String]) -> std::io::Result<HashMap<String, Value>> {
        let mut out = HashMap::new();
        if keys.is_empty() {
            return Ok(out);
        }
        self.w
            .write_all(format!("gets {}\r\n", keys.join(" ")).as_bytes())?;
        loop {
            let l = self.line()?;
            if l == "END" {
                return Ok(out);
            }
            let parts: Vec<&str> = l.split(' ').collect();
            assert_eq!(parts[0], "VALUE", "unexpected line {l:?}");
            let len: usize = parts[3].parse().expect("len");
            let mut v = vec![0u8; len + 2];
            self.r.read_exact(&mut v)?;
            v.truncate(len);
            out.insert(
                parts[1].to_string(),
                (
                    parts[2].parse().expect("flags"),
                    v,
                    parts[4].parse().expect("cas"),
                ),
            );
        }
    }

    pub fn gets(&mut self, key: &str) -> Option<Value> {
        self.try_gets_many(&[key.to_string()])
            .expect("gets")
            .remove(key)
    }

    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.gets(key).map(|v| v.1)
    }

    pub fn stats(&mut self) -> HashMap<String, String> {
        self.w.write_all(b"stats\r\n").expect("write");
        let mut m = HashMap::new();
        loop {
            let l = self.line().expect("stats line");
            if l == "END" {
                return m;
            }
            let mut it = l.splitn(3, ' ');
            it.next();
            if let (Some(k), Some(v)) = (it.next(), it.next()) {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }

    pub fn stat(&mut self, name: &str) -> String {
        self.stats().remove(name).unwrap_or_default()
    }
}

/// Small deterministic PRNG (xorshift64*), seeded from the clock unless given.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn from_time() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42);
        eprintln!("rng seed {seed}");
        Rng::new(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A fresh directory under the system temp dir; removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("memtwin-persist-")
        .tempdir()
        .expect("tempdir")
}

/// Keys per writer in the acknowledged-write model.
pub const MODEL_KEYS: usize = 150;

/// The acknowledged state of one writer's keys, plus its in-flight request.
#[derive(Default, Clone)]
pub struct Model {
    pub acked: HashMap<String, Option<String>>,
    /// Key and the state it would have if the in-flight request was applied.
    pub in_flight: Option<(String, Option<String>)>,
    pub ops: u64,
}

fn key(prefix: &str, t: usize, i: usize) -> String {
    format!("{prefix}:{t}:{i}")
}

/// Write until the connection breaks (the daemon was killed).
pub fn writer(
    port: u16,
    prefix: &str,
    t: usize,
    mut model: Model,
    seed: u64,
    deletes: bool,
) -> Model {
    let mut rng = Rng::new(seed);
    let Ok(mut c) = Client::try_connect(port) else {
        return model;
    };
    let mut counter = model.ops;
    loop {
        counter += 1;
        let k = key(prefix, t, rng.below(MODEL_KEYS as u64) as usize);
        let delete = deletes && rng.below(100) < 15;
        let (res, next) = if delete {
            (c.try_cmd(&format!("delete {k}")), None)
        } else {
            let v = format!("{t}-{counter}-{}", "x".repeat(rng.below(300) as usize));
            (c.try_store("set", &k, 0, 0, v.as_bytes()), Some(v))
        };
        match res {
            Ok(r) if r == "STORED" || r == "DELETED" => {
                model.acked.insert(k, next);
            }
            Ok(r) if r == "NOT_FOUND" => {
                model.acked.insert(k, None);
            }
            Ok(r) => panic!("unexpected reply {r:?}"),
            Err(_) => {
                model.in_flight = Some((k, next));
                model.ops = counter;
                return model;
            }
        }
    }
}

fn all_keys(prefix: &str, t: usize) -> Vec<String> {
    (0..MODEL_KEYS).map(|i| key(prefix, t, i)).collect()
}

pub fn read_all_model(c: &mut Client, prefix: &str, t: usize) -> HashMap<String, String> {
    c.try_gets_many(&all_keys(prefix, t))
        .expect("gets")
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.1).expect("utf8")))
        .collect()
}

/// Check a writer's model against the restarted daemon, resolving the
/// in-flight request to whatever outcome was persisted.
pub fn verify_always(c: &mut Client, prefix: &str, t: usize, model: &mut Model, cycle: usize) {
    let actual = read_all_model(c, prefix, t);
    for k in all_keys(prefix, t) {
        let got = actual.get(&k).cloned();
        let want = model.acked.get(&k).cloned().flatten();
        match &model.in_flight {
            Some((fk, maybe)) if *fk == k => {
                assert!(
                    got == want || got == *maybe,
                    "cycle {cycle}: in-flight key {k}: got {got:?}, acknowledged {want:?}, in flight {maybe:?}"
                );
                model.acked.insert(k, got);
            }
            _ => assert_eq!(
                got, want,
                "cycle {cycle}: acknowledged write to {k} lost or changed"
            ),
        }
    }
    model.in_flight = None;
}

/// A connection closed (or reset) without an answer: how a node catching up
/// with its twin refuses a request by default.
pub fn is_refusal(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
    )
}
