//! Command line and configuration file.
//!
//! The command line accepts memcached's flags (so `/etc/memcached.conf`-style
//! argument lists and existing scripts work) plus long options. Everything can
//! also be set in a TOML file (`--config`); the command line wins over the file,
//! and built-in defaults fill the rest, so the daemon runs with no file at all.

pub mod effective;
pub mod memcached_conf;

use crate::persist::{FsyncMode, PersistConfig};
use crate::twin::config::Secret;
use clap::{ArgAction, Parser, ValueEnum};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Default sled page cache (`--sled-cache-mb`). Budget RSS at several times
/// this: sled's real memory use is known to exceed its cache setting.
pub const DEFAULT_SLED_CACHE_MB: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BindingProtocol {
    #[default]
    Auto,
    Ascii,
    Binary,
}

/// memtwin: a memcached-compatible session store.
#[derive(Debug, Parser, Default)]
#[command(name = "memtwin", version, about, disable_help_flag = true)]
pub struct Cli {
    /// Print help.
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    help: Option<bool>,
    /// TOML configuration file; command-line flags override it.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the flags and the config file, print the effective settings as
    /// TOML and exit (0 if valid, 64 with the reason if not).
    #[arg(long = "check-config")]
    pub check_config: bool,
    /// Read memcached's options from a Debian-style memcached.conf (one
    /// option per line); memtwin's config file and flags override it.
    #[arg(long = "memcached-conf", value_name = "FILE")]
    pub memcached_conf: Option<PathBuf>,
    /// TCP port to listen on (default 11211).
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Interface to listen on (default 127.0.0.1); repeat or comma-separate for several.
    #[arg(short = 'l', long = "listen", value_delimiter = ',')]
    pub listen: Vec<String>,
    /// UDP port: only 0 (off) is accepted; memtwin never speaks UDP.
    #[arg(short = 'U', long = "udp-port")]
    pub udp_port: Option<u16>,
    /// Unix socket path to listen on (disables TCP, as in memcached).
    #[arg(short = 's', long = "unix-socket")]
    pub unix_socket: Option<PathBuf>,
    /// Access mask for the unix socket, in octal (default 700).
    #[arg(short = 'a', long = "unix-mask")]
    pub unix_mask: Option<String>,
    /// Item memory in megabytes (default 64).
    #[arg(short = 'm', long = "memory-limit")]
    pub memory_limit: Option<u64>,
    /// Max simultaneous connections (default 1024).
    #[arg(short = 'c', long = "conn-limit")]
    pub conn_limit: Option<usize>,
    /// Worker threads (default 4).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Max item size, with k/m suffix (default 1m).
    #[arg(short = 'I', long = "max-item-size")]
    pub max_item_size: Option<String>,
    /// Return an error on memory exhausted instead of evicting items.
    #[arg(short = 'M', long = "disable-evictions")]
    pub disable_evictions: bool,
    /// Disable CAS (every CAS value is 0).
    #[arg(short = 'C', long = "disable-cas")]
    pub disable_cas: bool,
    /// Disable flush_all.
    #[arg(short = 'F', long = "disable-flush-all")]
    pub disable_flush_all: bool,
    /// Enable the `shutdown` command.
    #[arg(short = 'A', long = "enable-shutdown")]
    pub enable_shutdown: bool,
    /// Verbose logging; repeat for more (-vv).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
    /// Protocol: auto (default), ascii or binary.
    #[arg(short = 'B', long = "protocol", value_enum)]
    pub protocol: Option<BindingProtocol>,
    /// Enable SASL authentication (binary protocol).
    #[arg(short = 'S', long = "enable-sasl")]
    pub enable_sasl: bool,
    /// SASL password file with `user:password` lines.
    #[arg(long = "sasl-pwdb", value_name = "FILE")]
    pub sasl_pwdb: Option<PathBuf>,
    /// ASCII authentication file with `user:password` lines (memcached's -Y).
    #[arg(short = 'Y', long = "auth-file", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Drop privileges to this user after binding (when started as root).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Write the process id to this file.
    #[arg(short = 'P', long = "pidfile")]
    pub pidfile: Option<PathBuf>,
    /// Run as a daemon (detach from the terminal).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    /// Listen backlog (default 1024).
    #[arg(short = 'b', long = "listen-backlog")]
    pub listen_backlog: Option<u32>,
    /// Requests a connection may have handled before the worker serves its
    /// other connections (memcached's meaning; `conn_yields` counts them).
    #[arg(short = 'R', long = "max-reqs-per-event")]
    pub max_reqs_per_event: Option<u32>,
    /// Chunk size growth factor (accepted for compatibility, ignored: no slabs).
    #[arg(short = 'f', long = "slab-growth-factor")]
    pub growth_factor: Option<f64>,
    /// Minimum item space (accepted for compatibility, ignored: no slabs).
    #[arg(short = 'n', long = "slab-min-size")]
    pub slab_min_size: Option<u32>,
    /// Large memory pages (accepted for compatibility, ignored).
    #[arg(short = 'L', long = "enable-largepages")]
    pub largepages: bool,
    /// Delimiter between key prefix and id for `stats detail` (default `:`);
    /// giving it turns per-prefix counting on, as in memcached.
    #[arg(short = 'D')]
    pub prefix_delimiter: Option<String>,
    /// Disable `stats cachedump` (always disabled in memtwin; accepted).
    #[arg(short = 'X', long = "disable-dumping")]
    pub disable_dumping: bool,
    /// Disable `watch` (not implemented in memtwin; accepted).
    #[arg(short = 'W', long = "disable-watch")]
    pub disable_watch: bool,
    /// Maximize core file limit (accepted for compatibility, ignored).
    #[arg(short = 'r', long = "enable-coredumps")]
    pub coredumps: bool,
    /// Lock down paged memory (accepted for compatibility, ignored).
    #[arg(short = 'k', long = "lock-memory")]
    pub lock_memory: bool,
    /// memcached extended options (comma separated). Unknown ones are warned about.
    #[arg(short = 'o', long = "extended", value_delimiter = ',')]
    pub extended: Vec<String>,
    /// Close connections idle longer than this many seconds (0 = never).
    #[arg(long = "idle-timeout")]
    pub idle_timeout: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; a
    /// bare port listens on 127.0.0.1).
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Persist items to this directory (sled) and reload them at start.
    /// Absent: memory only, as memcached.
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When a write is durable: always (before the reply), everysec (default:
    /// at most ~1 s lost on a crash) or no (the OS decides).
    #[arg(long = "fsync", value_enum, value_name = "MODE")]
    pub fsync: Option<FsyncMode>,
    /// sled page cache in megabytes (default 64), on top of -m.
    #[arg(long = "sled-cache-mb", value_name = "MB")]
    pub sled_cache_mb: Option<u64>,
    /// The twin's replication address; replication is off without it.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peer: Option<String>,
    /// Where the twin connects (default: the first client address, port + 1000).
    #[arg(long = "replication-listen", value_name = "ADDR")]
    pub replication_listen: Option<String>,
    /// File holding the secret shared with the twin (required with --peer).
    #[arg(long = "replication-secret", value_name = "FILE")]
    pub replication_secret: Option<PathBuf>,
    /// This node's id, 1-4095, distinct from the twin's (default: generated,
    /// kept in the data dir).
    #[arg(long = "node-id", value_name = "N")]
    pub node_id: Option<u16>,
    /// Refuse the twin link above this clock difference (default 5).
    #[arg(long = "max-clock-skew", value_name = "SECS")]
    pub max_clock_skew: Option<u64>,
    /// Keep tombstones of deleted keys at least this long (default 600).
    #[arg(long = "tombstone-ttl", value_name = "SECS")]
    pub tombstone_ttl: Option<u64>,
    /// Byte cap of the queue of records waiting for the twin (default 64).
    #[arg(long = "replication-queue-mb", value_name = "MB")]
    pub replication_queue_mb: Option<u64>,
    /// At start, answer clients with errors until caught up with the twin; if
    /// the twin is unreachable this long, serve alone (default 30, 0 = at
    /// once, "forever" = never serve without the twin).
    #[arg(long = "peer-wait", value_name = "SECS|forever")]
    pub peer_wait: Option<String>,
    /// While catching up: refuse client connections (default: the client
    /// port listens once caught up), close them unanswered, or answer errors.
    #[arg(long = "not-ready", value_name = "refuse|close|error", value_enum)]
    pub not_ready: Option<crate::twin::NotReadyReply>,
    /// Answer a write only once the twin has applied it (set on both nodes).
    #[arg(long = "replication-ack")]
    pub replication_ack: bool,
    /// With --replication-ack: answer anyway after this many milliseconds
    /// without the twin's acknowledgement (default 500).
    #[arg(long = "replication-ack-timeout", value_name = "MS")]
    pub replication_ack_timeout: Option<u64>,
    /// Recent records kept to replay after a short cut, in MB (default 64;
    /// 0 = none, every reconnect scans the table).
    #[arg(long = "replication-backlog-mb", value_name = "MB")]
    pub replication_backlog_mb: Option<u64>,
    /// ... and for at most this many seconds (default 600).
    #[arg(long = "replication-backlog-ttl", value_name = "SECS")]
    pub replication_backlog_ttl: Option<u64>,
    /// Cap a catch-up sent to the twin (scan or backlog replay) at this many
    /// MB/s, leaving CPU to this node's clients (0 = no cap).
    #[arg(long = "replication-catchup-rate", value_name = "MB")]
    pub replication_catchup_rate: Option<u64>,
}

/// The TOML file: the same settings under their long names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub memcached_conf: Option<PathBuf>,
    pub port: Option<u16>,
    pub listen: Option<Vec<String>>,
    pub unix_socket: Option<PathBuf>,
    pub unix_mask: Option<String>,
    pub memory_limit: Option<u64>,
    pub conn_limit: Option<usize>,
    pub threads: Option<usize>,
    pub max_item_size: Option<String>,
    pub disable_evictions: Option<bool>,
    pub disable_cas: Option<bool>,
    pub disable_flush_all: Option<bool>,
    pub enable_shutdown: Option<bool>,
    pub verbose: Option<u8>,
    pub protocol: Option<BindingProtocol>,
    pub enable_sasl: Option<bool>,
    pub sasl_pwdb: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    pub user: Option<String>,
    pub pidfile: Option<PathBuf>,
    pub listen_backlog: Option<u32>,
    pub idle_timeout: Option<u64>,
    pub metrics_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub fsync: Option<FsyncMode>,
    pub sled_cache_mb: Option<u64>,
    pub peer: Option<String>,
    pub replication_listen: Option<String>,
    pub replication_secret: Option<PathBuf>,
    pub node_id: Option<u16>,
    pub max_clock_skew: Option<u64>,
    pub tombstone_ttl: Option<u64>,
    pub replication_queue_mb: Option<u64>,
    pub peer_wait: Option<PeerWaitValue>,
    pub not_ready: Option<crate::twin::NotReadyReply>,
    pub replication_ack: Option<bool>,
    pub replication_ack_timeout: Option<u64>,
    pub replication_backlog_mb: Option<u64>,
    pub replication_backlog_ttl: Option<u64>,
    pub replication_catchup_rate: Option<u64>,
}

macro_rules! file_keys {
    ($m:ident) => {
        $m!(
            memcached_conf,
            port,
            listen,
            unix_socket,
            unix_mask,
            memory_limit,
            conn_limit,
            threads,
            max_item_size,
            disable_evictions,
            disable_cas,
            disable_flush_all,
            enable_shutdown,
            verbose,
            protocol,
            enable_sasl,
            sasl_pwdb,
            auth_file,
            user,
            pidfile,
            listen_backlog,
            idle_timeout,
            metrics_listen,
            data_dir,
            fsync,
            sled_cache_mb,
            peer,
            replication_listen,
            replication_secret,
            node_id,
            max_clock_skew,
            tombstone_ttl,
            replication_queue_mb,
            peer_wait,
            not_ready,
            replication_ack,
            replication_ack_timeout,
            replication_backlog_mb,
            replication_backlog_ttl,
            replication_catchup_rate
        )
    };
}

impl FileConfig {
    /// Every key of `self`, and `under`'s where `self` has none.
    fn over(self, under: FileConfig) -> FileConfig {
        macro_rules! merge {
            ($($k:ident),*) => { FileConfig { $($k: self.$k.or(under.$k)),* } };
        }
        file_keys!(merge)
    }

    /// The options of a memcached.conf as a layer below the TOML file.
    fn from_cli(c: Cli) -> FileConfig {
        let flag = |b: bool| b.then_some(true);
        FileConfig {
            memcached_conf: None,
            port: c.port,
            listen: (!c.listen.is_empty()).then_some(c.listen),
            unix_socket: c.unix_socket,
            unix_mask: c.unix_mask,
            memory_limit: c.memory_limit,
            conn_limit: c.conn_limit,
            threads: c.threads,
            max_item_size: c.max_item_size,
            disable_evictions: flag(c.disable_evictions),
            disable_cas: flag(c.disable_cas),
            disable_flush_all: flag(c.disable_flush_all),
            enable_shutdown: flag(c.enable_shutdown),
            verbose: (c.verbose > 0).then_some(c.verbose),
            protocol: c.protocol,
            enable_sasl: flag(c.enable_sasl),
            sasl_pwdb: c.sasl_pwdb,
            auth_file: c.auth_file,
            user: c.user,
            pidfile: c.pidfile,
            listen_backlog: c.listen_backlog,
            idle_timeout: c.idle_timeout,
            metrics_listen: c.metrics_listen,
            data_dir: c.data_dir,
            fsync: c.fsync,
            sled_cache_mb: c.sled_cache_mb,
            peer: c.peer,
            replication_listen: c.replication_listen,
            replication_secret: c.replication_secret,
            node_id: c.node_id,
            max_clock_skew: c.max_clock_skew,
            tombstone_ttl: c.tombstone_ttl,
            replication_queue_mb: c.replication_queue_mb,
            peer_wait: c.peer_wait.map(PeerWaitValue::Word),
            not_ready: c.not_ready,
            replication_ack: flag(c.replication_ack),
            replication_ack_timeout: c.replication_ack_timeout,
            replication_backlog_mb: c.replication_backlog_mb,
            replication_backlog_ttl: c.replication_backlog_ttl,
            replication_catchup_rate: c.replication_catchup_rate,
        }
    }
}

/// `peer-wait` in the TOML file: seconds, or the word "forever".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PeerWaitValue {
    Secs(u64),
    Word(String),
}

/// Defaults of the replication flags (docs/replication.md §8).
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 = 5;
pub const DEFAULT_TOMBSTONE_TTL_SECS: u64 = 600;
pub const DEFAULT_REPLICATION_QUEUE_MB: u64 = 64;
/// `--replication-ack-timeout`: well under the usual client timeouts (1 s and
/// more), well above a healthy link's round trip (about a millisecond).
pub const DEFAULT_REPLICATION_ACK_TIMEOUT_MS: u64 = 500;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Twin replication (`--peer` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// `HOST:PORT`, resolved at each dial (the twin may move).
    pub peer: String,
    pub listen: SocketAddr,
    pub secret: Secret,
    /// Where the secret was read from (shown by `--check-config`, never the secret).
    pub secret_file: PathBuf,
    pub max_clock_skew: Duration,
    pub queue_bytes: usize,
    pub peer_wait: crate::twin::PeerWait,
    /// `--not-ready`: how requests are refused while catching up.
    pub not_ready: crate::twin::NotReadyReply,
    /// `--replication-ack`: how long a write waits for the twin at most.
    pub ack_timeout: Option<Duration>,
    /// The backlog's bounds.
    pub backlog_bytes: usize,
    pub backlog_ttl: Duration,
    /// `--replication-catchup-rate` in bytes per second; 0 = unpaced.
    pub catchup_rate: u64,
}

/// memcached's `-R` default.
pub const DEFAULT_REQS_PER_EVENT: u32 = 20;

/// Resolved settings the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub listen: Vec<String>,
    pub unix_socket: Option<PathBuf>,
    pub unix_mask: u32,
    pub memory_limit: usize,
    pub max_conns: usize,
    pub threads: usize,
    pub item_size_max: usize,
    pub evict: bool,
    pub cas: bool,
    pub flush_enabled: bool,
    pub shutdown_enabled: bool,
    pub verbose: u8,
    pub protocol: BindingProtocol,
    pub sasl: bool,
    pub sasl_pwdb: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    pub user: Option<String>,
    pub pidfile: Option<PathBuf>,
    pub daemon: bool,
    pub backlog: u32,
    pub idle_timeout: u64,
    /// `--metrics-listen`: where Prometheus scrapes `/metrics`; None = off.
    pub metrics_listen: Option<SocketAddr>,
    /// Persistence (`--data-dir`); None = memory only.
    pub persist: Option<PersistConfig>,
    /// `--node-id`; None = generated (and kept in the data dir).
    pub node_id: Option<u16>,
    /// Minimum tombstone lifetime in seconds (`--tombstone-ttl`).
    pub tombstone_ttl: u64,
    /// Twin replication; None = standalone.
    pub replication: Option<ReplicationSettings>,
    /// `-R`: requests a connection may have handled before the worker serves
    /// its other connections (memcached's default, 20).
    pub reqs_per_event: u32,
    /// `-D`: the `stats detail` prefix delimiter (`:` by default).
    pub prefix_delimiter: u8,
    /// `stats detail` counting from the start (`-D` given).
    pub detail_enabled: bool,
    /// Warnings produced while resolving (unknown -o options ...), logged at start.
    pub warnings: Vec<String>,
    /// `--check-config`: print [`effective::render`] and exit instead of starting.
    pub check_config: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::resolve(Cli::default(), FileConfig::default())
            .unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("memcached config {path} line {line}: {why}")]
    MemcachedConf {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("UDP is not supported: use -U 0 (got -U {0})")]
    Udp(u16),
    #[error("invalid item size {0:?}: use a number with an optional k or m suffix")]
    ItemSize(String),
    #[error("item size {0} is out of range (1k .. 1024m)")]
    ItemSizeRange(usize),
    /// memcached's own words, then which flags to change.
    #[error(
        "Cannot set item size limit higher than 1/2 of memory max. (-I {item} bytes, -m {memory_mb} \
         MB: raise -m to at least twice -I, or lower -I)"
    )]
    ItemSizeOverHalfMemory { item: usize, memory_mb: u64 },
    #[error("invalid unix socket mask {0:?} (octal, e.g. 700)")]
    Mask(String),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("--metrics-listen {0:?} is not ADDR:PORT or PORT")]
    MetricsListen(String),
    /// memcached's words for `-R 0`.
    #[error("Number of requests per event must be greater than 0 (-R)")]
    ReqsPerEvent,
    /// memcached's words for `-D ''`.
    #[error("No delimiter specified (-D)")]
    NoDelimiter,
    #[error("--fsync and --sled-cache-mb need --data-dir (persistence is off without it)")]
    PersistWithoutDir,
    #[error("--node-id {0} is out of range: use 1 to 4095")]
    NodeId(u16),
    #[error("--peer {0:?} is not HOST:PORT")]
    Peer(String),
    #[error(
        "--peer needs --replication-secret FILE, the secret shared by both twins; make one with\n  \
         head -c 32 /dev/urandom | base64 > /etc/memtwin/replication.secret; chmod 600 /etc/memtwin/replication.secret\n\
         copy it to the twin and pass --replication-secret /etc/memtwin/replication.secret on both nodes"
    )]
    SecretMissing,
    #[error("cannot read the replication secret {path}: {source}")]
    SecretRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the replication secret {path} holds {len} bytes, fewer than {MIN_SECRET_BYTES}: make a \
         longer one with head -c 32 /dev/urandom | base64 > {path}"
    )]
    SecretShort { path: PathBuf, len: usize },
    #[error("--replication-listen {addr:?}: {why}")]
    ReplicationListen { addr: String, why: String },
    #[error("--peer-wait {0:?}: give seconds (0 = serve at once) or \"forever\"")]
    PeerWait(String),
    #[error("--replication-ack-timeout needs --replication-ack")]
    AckTimeoutWithoutAck,
    #[error("{0} need --peer (replication is off without it)")]
    ReplicationWithoutPeer(&'static str),
}

/// Parse `1m`, `512k`, `2048` into bytes.
pub fn parse_size(s: &str) -> Result<usize, ConfigError> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1024),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| ConfigError::ItemSize(s.to_string()))
}

/// `--metrics-listen`: `HOST:PORT`, or a bare port on loopback.
fn parse_metrics_listen(a: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(port) = a.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    a.parse()
        .map_err(|_| ConfigError::MetricsListen(a.to_string()))
}

impl Settings {
    /// Parse the process arguments and the config file they name.
    pub fn from_args<I, T>(args: I) -> Result<Settings, anyhow::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let mut cli = cli;
        let legacy = match cli.memcached_conf.as_ref().or(file.memcached_conf.as_ref()) {
            Some(path) => Some(memcached_conf::read(path)?),
            None => None,
        };
        let file = match legacy {
            Some(memcached_conf::Legacy { cli: old, warnings }) => {
                if let Some(udp) = old.udp_port.filter(|&u| u != 0) {
                    return Err(ConfigError::Udp(udp).into());
                }
                let mut extended = old.extended.clone();
                extended.append(&mut cli.extended);
                cli.extended = extended;
                let mut s = Settings::resolve(cli, file.over(FileConfig::from_cli(old)))?;
                s.warnings.extend(warnings);
                return Ok(s);
            }
            None => file,
        };
        Ok(Settings::resolve(cli, file)?)
    }

    /// Merge: command line, then file, then defaults.
    pub fn resolve(cli: Cli, file: FileConfig) -> Result<Settings, ConfigError> {
        let mut warnings = Vec::new();
        if let Some(udp) = cli.udp_port {
            if udp != 0 {
                return Err(ConfigError::Udp(udp));
            }
        }
        let item_size_max = match cli
            .max_item_size
            .as_deref()
            .or(file.max_item_size.as_deref())
        {
            Some(s) => parse_size(s)?,
            None => 1024 * 1024,
        };
        if !(1024..=1024 * 1024 * 1024).contains(&item_size_max) {
            return Err(ConfigError::ItemSizeRange(item_size_max));
        }
        let mask_str = cli
            .unix_mask
            .or(file.unix_mask)
            .unwrap_or_else(|| "700".into());
        let unix_mask =
            u32::from_str_radix(&mask_str, 8).map_err(|_| ConfigError::Mask(mask_str.clone()))?;
        let memory_mb = cli.memory_limit.or(file.memory_limit).unwrap_or(64);
        // memcached refuses this too (exit 64): an item could take half the cache.
        if item_size_max as u64 > memory_mb.saturating_mul(1024 * 1024) / 2 {
            return Err(ConfigError::ItemSizeOverHalfMemory {
                item: item_size_max,
                memory_mb,
            });
        }
        let threads = cli.threads.or(file.threads).unwrap_or(4);
        if threads == 0 {
            return Err(ConfigError::Zero("threads (-t)"));
        }
        let max_conns = cli.conn_limit.or(file.conn_limit).unwrap_or(1024);
        if max_conns == 0 {
            return Err(ConfigError::Zero("connection limit (-c)"));
        }
        for opt in &cli.extended {
            let name = opt.split('=').next().unwrap_or("");
            if !name.is_empty() {
                warnings.push(format!("ignoring unsupported extended option -o {opt}"));
            }
        }
        if cli.growth_factor.is_some() || cli.slab_min_size.is_some() {
            warnings.push("slab options -f/-n are ignored: memtwin has no slab allocator".into());
        }
        let prefix_delimiter = match cli.prefix_delimiter.as_deref().map(str::as_bytes) {
            None => b':',
            Some([c, ..]) => *c,
            Some([]) => return Err(ConfigError::NoDelimiter),
        };
        let metrics_listen = match cli.metrics_listen.as_ref().or(file.metrics_listen.as_ref()) {
            None => None,
            Some(a) => Some(parse_metrics_listen(a)?),
        };
        let reqs_per_event = match cli.max_reqs_per_event {
            None => DEFAULT_REQS_PER_EVENT,
            Some(0) => return Err(ConfigError::ReqsPerEvent),
            Some(n) => n,
        };
        let fsync = cli.fsync.or(file.fsync);
        let sled_cache_mb = cli.sled_cache_mb.or(file.sled_cache_mb);
        let persist = match cli.data_dir.or(file.data_dir) {
            Some(dir) => {
                let mb = sled_cache_mb.unwrap_or(DEFAULT_SLED_CACHE_MB);
                if mb == 0 {
                    return Err(ConfigError::Zero("sled cache (--sled-cache-mb)"));
                }
                Some(PersistConfig {
                    dir,
                    fsync: fsync.unwrap_or_default(),
                    cache_bytes: mb.saturating_mul(1024 * 1024),
                })
            }
            None if fsync.is_some() || sled_cache_mb.is_some() => {
                return Err(ConfigError::PersistWithoutDir)
            }
            None => None,
        };
        let protocol = cli.protocol.or(file.protocol).unwrap_or_default();
        let sasl = cli.enable_sasl || file.enable_sasl.unwrap_or(false);
        let auth_file = cli.auth_file.or(file.auth_file);
        // The server overrides -B so authentication cannot be skipped (server/conn.rs).
        if sasl && auth_file.is_none() && protocol == BindingProtocol::Ascii {
            warnings.push(
                "-B ascii is ignored: SASL (-S) is binary-only; add -Y for ASCII auth".into(),
            );
        }
        if auth_file.is_some() && !sasl && protocol == BindingProtocol::Binary {
            warnings
                .push("-B binary is ignored: ASCII auth (-Y) is text-only; add -S for SASL".into());
        }
        let listen = if !cli.listen.is_empty() {
            cli.listen
        } else {
            file.listen.unwrap_or_else(|| vec!["127.0.0.1".into()])
        };
        let port = cli.port.or(file.port).unwrap_or(11211);
        let node_id = cli.node_id.or(file.node_id);
        if let Some(id) = node_id {
            if id == 0 || id > crate::version::MAX_NODE_ID {
                return Err(ConfigError::NodeId(id));
            }
        }
        let replication = resolve_replication(
            ReplicationInput {
                peer: cli.peer.or(file.peer),
                listen: cli.replication_listen.or(file.replication_listen),
                secret: cli.replication_secret.or(file.replication_secret),
                max_clock_skew: cli.max_clock_skew.or(file.max_clock_skew),
                queue_mb: cli.replication_queue_mb.or(file.replication_queue_mb),
                peer_wait: cli.peer_wait.map(PeerWaitValue::Word).or(file.peer_wait),
                not_ready: cli.not_ready.or(file.not_ready),
                ack: cli.replication_ack || file.replication_ack.unwrap_or(false),
                ack_timeout_ms: cli.replication_ack_timeout.or(file.replication_ack_timeout),
                backlog_mb: cli.replication_backlog_mb.or(file.replication_backlog_mb),
                backlog_ttl: cli.replication_backlog_ttl.or(file.replication_backlog_ttl),
                catchup_rate_mb: cli
                    .replication_catchup_rate
                    .or(file.replication_catchup_rate),
            },
            &listen,
            port,
        )?;
        Ok(Settings {
            port,
            listen,
            unix_socket: cli.unix_socket.or(file.unix_socket),
            unix_mask,
            memory_limit: usize::try_from(memory_mb.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
            max_conns,
            threads,
            item_size_max,
            evict: !(cli.disable_evictions || file.disable_evictions.unwrap_or(false)),
            cas: !(cli.disable_cas || file.disable_cas.unwrap_or(false)),
            flush_enabled: !(cli.disable_flush_all || file.disable_flush_all.unwrap_or(false)),
            shutdown_enabled: cli.enable_shutdown || file.enable_shutdown.unwrap_or(false),
            verbose: if cli.verbose > 0 {
                cli.verbose
            } else {
                file.verbose.unwrap_or(0)
            },
            protocol,
            sasl,
            sasl_pwdb: cli.sasl_pwdb.or(file.sasl_pwdb),
            auth_file,
            user: cli.user.or(file.user),
            pidfile: cli.pidfile.or(file.pidfile),
            daemon: cli.daemon,
            backlog: cli.listen_backlog.or(file.listen_backlog).unwrap_or(1024),
            idle_timeout: cli.idle_timeout.or(file.idle_timeout).unwrap_or(0),
            metrics_listen,
            persist,
            node_id,
            tombstone_ttl: cli
                .tombstone_ttl
                .or(file.tombstone_ttl)
                .unwrap_or(DEFAULT_TOMBSTONE_TTL_SECS),
            replication,
            reqs_per_event,
            prefix_delimiter,
            detail_enabled: cli.prefix_delimiter.is_some(),
            warnings,
            check_config: cli.check_config,
        })
    }
}

/// The replication flags as given (command line over file).
struct ReplicationInput {
    peer: Option<String>,
    listen: Option<String>,
    secret: Option<PathBuf>,
    max_clock_skew: Option<u64>,
    queue_mb: Option<u64>,
    peer_wait: Option<PeerWaitValue>,
    not_ready: Option<crate::twin::NotReadyReply>,
    ack: bool,
    ack_timeout_ms: Option<u64>,
    backlog_mb: Option<u64>,
    backlog_ttl: Option<u64>,
    catchup_rate_mb: Option<u64>,
}

fn resolve_replication(
    input: ReplicationInput,
    client_listen: &[String],
    client_port: u16,
) -> Result<Option<ReplicationSettings>, ConfigError> {
    let Some(peer) = input.peer else {
        if input.listen.is_some() {
            return Err(ConfigError::ReplicationWithoutPeer("--replication-listen"));
        }
        if input.secret.is_some() {
            return Err(ConfigError::ReplicationWithoutPeer("--replication-secret"));
        }
        if input.peer_wait.is_some() {
            return Err(ConfigError::ReplicationWithoutPeer("--peer-wait"));
        }
        if input.not_ready.is_some() {
            return Err(ConfigError::ReplicationWithoutPeer("--not-ready"));
        }
        if input.ack || input.ack_timeout_ms.is_some() {
            return Err(ConfigError::ReplicationWithoutPeer("--replication-ack"));
        }
        if input.catchup_rate_mb.is_some() {
            return Err(ConfigError::ReplicationWithoutPeer(
                "--replication-catchup-rate",
            ));
        }
        if input.backlog_mb.is_some() || input.backlog_ttl.is_some() {
            return Err(ConfigError::ReplicationWithoutPeer(
                "--replication-backlog-mb/-ttl",
            ));
        }
        return Ok(None);
    };
    match peer.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) => {}
        _ => return Err(ConfigError::Peer(peer)),
    }
    let path = input.secret.ok_or(ConfigError::SecretMissing)?;
    let secret = read_secret(&path)?;
    let listen = match input.listen {
        Some(a) => resolve_addr(&a, None)?,
        None => {
            let first = client_listen.first().map_or("127.0.0.1", String::as_str);
            let port =
                client_port
                    .checked_add(1000)
                    .ok_or_else(|| ConfigError::ReplicationListen {
                        addr: first.to_string(),
                        why: format!(
                            "client port {client_port} + 1000 overflows: set --replication-listen"
                        ),
                    })?;
            resolve_addr(first, Some(port))?
        }
    };
    let mb = input.queue_mb.unwrap_or(DEFAULT_REPLICATION_QUEUE_MB);
    if mb == 0 {
        return Err(ConfigError::Zero(
            "replication queue (--replication-queue-mb)",
        ));
    }
    let skew = input.max_clock_skew.unwrap_or(DEFAULT_MAX_CLOCK_SKEW_SECS);
    if skew == 0 {
        return Err(ConfigError::Zero("--max-clock-skew"));
    }
    let peer_wait = match input.peer_wait {
        None => crate::twin::PeerWait::For(crate::twin::config::DEFAULT_PEER_WAIT),
        Some(v) => parse_peer_wait(&v)?,
    };
    Ok(Some(ReplicationSettings {
        peer,
        listen,
        secret,
        secret_file: path,
        max_clock_skew: Duration::from_secs(skew),
        queue_bytes: usize::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
        peer_wait,
        not_ready: input.not_ready.unwrap_or_default(),
        ack_timeout: match (input.ack, input.ack_timeout_ms) {
            (false, None) => None,
            (false, Some(_)) => return Err(ConfigError::AckTimeoutWithoutAck),
            (true, Some(0)) => return Err(ConfigError::Zero("--replication-ack-timeout")),
            (true, ms) => Some(Duration::from_millis(
                ms.unwrap_or(DEFAULT_REPLICATION_ACK_TIMEOUT_MS),
            )),
        },
        backlog_bytes: match input.backlog_mb {
            None => crate::twin::backlog::DEFAULT_BACKLOG_BYTES,
            Some(mb) => usize::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
        },
        catchup_rate: input
            .catchup_rate_mb
            .unwrap_or(crate::twin::config::DEFAULT_CATCHUP_RATE_MB)
            .saturating_mul(1 << 20),
        backlog_ttl: input.backlog_ttl.map_or(
            crate::twin::backlog::DEFAULT_BACKLOG_TTL,
            Duration::from_secs,
        ),
    }))
}

/// `--peer-wait`: seconds, or "forever" (also "infinity").
fn parse_peer_wait(v: &PeerWaitValue) -> Result<crate::twin::PeerWait, ConfigError> {
    use crate::twin::PeerWait;
    let word = match v {
        PeerWaitValue::Secs(s) => return Ok(PeerWait::For(Duration::from_secs(*s))),
        PeerWaitValue::Word(w) => w.trim(),
    };
    if word.eq_ignore_ascii_case("forever") || word.eq_ignore_ascii_case("infinity") {
        return Ok(PeerWait::Forever);
    }
    word.parse::<u64>()
        .map(|s| PeerWait::For(Duration::from_secs(s)))
        .map_err(|_| ConfigError::PeerWait(word.to_string()))
}

/// The secret file's bytes, trailing newline trimmed; at least 16 bytes.
pub fn read_secret(path: &std::path::Path) -> Result<Secret, ConfigError> {
    let raw = std::fs::read(path).map_err(|source| ConfigError::SecretRead {
        path: path.to_path_buf(),
        source,
    })?;
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    if end < MIN_SECRET_BYTES {
        return Err(ConfigError::SecretShort {
            path: path.to_path_buf(),
            len: end,
        });
    }
    Ok(Secret::new(&raw[..end]))
}

/// `IP:PORT`, `HOST:PORT`, or (with `port`) a bare `IP`/`HOST` as in `-l`.
fn resolve_addr(spec: &str, port: Option<u16>) -> Result<SocketAddr, ConfigError> {
    let bad = |why: String| ConfigError::ReplicationListen {
        addr: spec.to_string(),
        why,
    };
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(match port {
            Some(p) => SocketAddr::new(sa.ip(), p),
            None => sa,
        });
    }
    let host = spec.trim_start_matches('[').trim_end_matches(']');
    if let (Ok(ip), Some(p)) = (host.parse::<std::net::IpAddr>(), port) {
        return Ok(SocketAddr::new(ip, p));
    }
    let (h, p) = match (spec.rsplit_once(':'), port) {
        (Some((h, p)), None) => (
            h,
            p.parse::<u16>().map_err(|_| bad("not HOST:PORT".into()))?,
        ),
        (_, Some(p)) => (spec, p),
        (None, None) => return Err(bad("not HOST:PORT".into())),
    };
    (h, p)
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings from these flags (after the program name); panics if invalid.
    pub(crate) fn settings(args: &[&str]) -> Settings {
        let mut v = vec!["memtwin"];
        v.extend_from_slice(args);
        Settings::from_args(v).expect("valid")
    }

    #[test]
    fn defaults() {
        let s = settings(&[]);
        assert_eq!(
            (s.port, s.listen.clone(), s.memory_limit, s.max_conns),
            (11211, vec!["127.0.0.1".to_string()], 64 << 20, 1024)
        );
        assert_eq!(s.item_size_max, 1 << 20);
        assert!(s.evict && s.cas && s.flush_enabled && !s.shutdown_enabled);
    }

    #[test]
    fn memcached_flags() {
        let s = settings(&[
            "-p",
            "22122",
            "-l",
            "127.0.0.1,::1",
            "-m",
            "128",
            "-c",
            "10",
            "-t",
            "2",
            "-I",
            "2m",
            "-M",
            "-C",
            "-F",
            "-A",
            "-U",
            "0",
            "-vv",
            "-u",
            "root",
            "-o",
            "modern,lru_crawler",
        ]);
        assert_eq!(s.port, 22122);
        assert_eq!(s.listen, vec!["127.0.0.1", "::1"]);
        assert_eq!(
            (s.memory_limit, s.max_conns, s.threads, s.item_size_max),
            (128 << 20, 10, 2, 2 << 20)
        );
        assert!(!s.evict && !s.cas && !s.flush_enabled && s.shutdown_enabled);
        assert_eq!(s.verbose, 2);
        assert_eq!(s.warnings.len(), 2);
    }

    #[test]
    fn an_item_size_over_half_the_memory_is_refused_like_memcached() {
        let refused = |args: &[&str]| {
            let mut all = vec!["memtwin"];
            all.extend_from_slice(args);
            Settings::from_args(all).expect_err("refused").to_string()
        };
        let e = refused(&["-m", "1"]);
        assert!(
            e.starts_with("Cannot set item size limit higher than 1/2 of memory max.")
                && e.contains("-m 1 MB"),
            "{e}"
        );
        assert!(refused(&["-m", "0"]).contains("1/2 of memory max"));
        assert!(refused(&["-m", "4", "-I", "3m"]).contains("-I 3145728 bytes"));
        // Exactly half is allowed, as in memcached.
        assert_eq!(settings(&["-m", "2"]).item_size_max, 1 << 20);
        assert_eq!(
            settings(&["-m", "1", "-I", "512k"]).item_size_max,
            512 << 10
        );
    }

    #[test]
    fn a_memcached_conf_is_the_lowest_layer() {
        let dir = tempfile::tempdir().expect("tmp");
        let conf = dir.path().join("memcached.conf");
        std::fs::write(
            &conf,
            "-d\nlogfile /var/log/memcached.log\n-m 256\n-p 11311\n-c 99\n-M\n-o foo=1\n",
        )
        .expect("write");
        let conf_s = conf.to_str().expect("utf8");
        let s = settings(&["--memcached-conf", conf_s]);
        assert_eq!(
            (s.memory_limit, s.port, s.max_conns, s.evict, s.daemon),
            (256 << 20, 11311, 99, false, false)
        );
        assert!(s.warnings.iter().any(|w| w.contains("`logfile` ignored")));
        assert!(
            s.warnings.iter().any(|w| w.contains("foo")),
            "{:?}",
            s.warnings
        );
        // The TOML file (which may name the memcached.conf itself) overrides
        // it, and the command line overrides both.
        let toml = dir.path().join("memtwin.toml");
        std::fs::write(
            &toml,
            format!("memcached-conf = {conf_s:?}\nport = 11411\nconn-limit = 50\n"),
        )
        .expect("write");
        let toml_s = toml.to_str().expect("utf8");
        let s = settings(&["--config", toml_s, "-c", "7"]);
        assert_eq!((s.memory_limit, s.port, s.max_conns), (256 << 20, 11411, 7));
        // UDP in the old file is refused as on the command line; -U 0 is fine.
        std::fs::write(&conf, "-U 11211\n").expect("write");
        let e = Settings::from_args(["memtwin", "--memcached-conf", conf_s]).expect_err("udp");
        assert!(e.to_string().contains("UDP is not supported"), "{e}");
        std::fs::write(&conf, "-U 0\n").expect("write");
        assert_eq!(settings(&["--memcached-conf", conf_s]).port, 11211);
        let missing = dir.path().join("nope.conf");
        let e = Settings::from_args([
            "memtwin",
            "--memcached-conf",
            missing.to_str().expect("utf8"),
        ])
        .expect_err("missing");
        assert!(e.to_string().contains("nope.conf"), "{e}");
    }

    #[test]
    fn udp_is_refused() {
        let e = Settings::from_args(["memtwin", "-U", "11211"]).expect_err("udp refused");
        assert!(e.to_string().contains("UDP is not supported"));
    }

    #[test]
    fn cli_wins_over_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "port = 1234\nmemory-limit = 8\nlisten = [\"0.0.0.0\"]\n",
        )
        .expect("write");
        let s = settings(&["--config", path.to_str().expect("utf8"), "-p", "999"]);
        assert_eq!(
            (s.port, s.memory_limit, s.listen.clone()),
            (999, 8 << 20, vec!["0.0.0.0".to_string()])
        );
        std::fs::write(&path, "bogus = 1\n").expect("write");
        assert!(
            Settings::from_args(["memtwin", "--config", path.to_str().expect("utf8")]).is_err()
        );
    }

    #[test]
    fn persistence_flags_and_file_keys() {
        assert!(settings(&[]).persist.is_none());
        let s = settings(&["--data-dir", "/var/lib/memtwin"]);
        assert_eq!(
            s.persist,
            Some(PersistConfig {
                dir: "/var/lib/memtwin".into(),
                fsync: FsyncMode::Everysec,
                cache_bytes: DEFAULT_SLED_CACHE_MB << 20,
            })
        );
        let s = settings(&[
            "--data-dir",
            "/d",
            "--fsync",
            "always",
            "--sled-cache-mb",
            "16",
        ]);
        let p = s.persist.expect("on");
        assert_eq!((p.fsync, p.cache_bytes), (FsyncMode::Always, 16 << 20));
        assert!(Settings::from_args(["memtwin", "--fsync", "no"]).is_err());
        assert!(
            Settings::from_args(["memtwin", "--data-dir", "/d", "--fsync", "sometimes"]).is_err()
        );

        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "data-dir = \"/srv/sessions\"\nfsync = \"no\"\nsled-cache-mb = 8\n",
        )
        .expect("write");
        let s = settings(&["--config", path.to_str().expect("utf8")]);
        let p = s.persist.expect("on");
        assert_eq!(
            (p.dir, p.fsync, p.cache_bytes),
            ("/srv/sessions".into(), FsyncMode::No, 8 << 20)
        );
        let s = settings(&[
            "--config",
            path.to_str().expect("utf8"),
            "--fsync",
            "always",
        ]);
        assert_eq!(s.persist.map(|p| p.fsync), Some(FsyncMode::Always));
    }

    fn secret_file(dir: &std::path::Path, content: &[u8]) -> String {
        let p = dir.join("secret");
        std::fs::write(&p, content).expect("write");
        p.to_str().expect("utf8").to_string()
    }

    /// Settings of a node with a twin (`--peer b:12211`) and `extra` flags.
    fn twinned(secret: &str, extra: &[&str]) -> anyhow::Result<Settings> {
        let mut v = vec![
            "memtwin",
            "--peer",
            "b:12211",
            "--replication-secret",
            secret,
        ];
        v.extend_from_slice(extra);
        Settings::from_args(v)
    }

    #[test]
    fn replication_is_off_by_default() {
        let s = settings(&[]);
        assert!(s.replication.is_none());
        assert_eq!((s.node_id, s.tombstone_ttl), (None, 600));
    }

    #[test]
    fn replication_flags_and_defaults() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = secret_file(dir.path(), b"0123456789abcdef0123\n");
        let s = settings(&[
            "-p",
            "11311",
            "-l",
            "10.0.0.1,127.0.0.1",
            "--peer",
            "twin.example:12311",
            "--replication-secret",
            &secret,
            "--node-id",
            "17",
            "--tombstone-ttl",
            "900",
        ]);
        let r = s.replication.expect("on");
        assert_eq!(r.peer, "twin.example:12311");
        assert_eq!(r.listen, "10.0.0.1:12311".parse().expect("addr"));
        assert_eq!(r.secret.bytes(), b"0123456789abcdef0123", "newline trimmed");
        assert_eq!(r.max_clock_skew, Duration::from_secs(5));
        assert_eq!(r.queue_bytes, 64 << 20);
        assert_eq!((s.node_id, s.tombstone_ttl), (Some(17), 900));
        assert!(!format!("{r:?}").contains("0123456789"), "secret redacted");

        let s = settings(&[
            "--peer",
            "10.0.0.2:12211",
            "--replication-secret",
            &secret,
            "--replication-listen",
            "0.0.0.0:7000",
            "--max-clock-skew",
            "2",
            "--replication-queue-mb",
            "8",
        ]);
        let r = s.replication.expect("on");
        assert_eq!(r.listen, "0.0.0.0:7000".parse().expect("addr"));
        assert_eq!(r.max_clock_skew, Duration::from_secs(2));
        assert_eq!(r.queue_bytes, 8 << 20);
    }

    #[test]
    fn replication_ack_flags() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = secret_file(dir.path(), b"0123456789abcdef0123\n");
        let run = |extra: &[&str]| {
            twinned(&secret, extra).map(|s| s.replication.expect("on").ack_timeout)
        };
        assert_eq!(run(&[]).expect("ok"), None, "asynchronous by default");
        assert_eq!(
            run(&["--replication-ack"]).expect("ok"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            run(&["--replication-ack", "--replication-ack-timeout", "40"]).expect("ok"),
            Some(Duration::from_millis(40))
        );
        let e = run(&["--replication-ack-timeout", "40"]).expect_err("refused");
        assert!(e.to_string().contains("needs --replication-ack"), "{e}");
        assert!(run(&["--replication-ack", "--replication-ack-timeout", "0"]).is_err());
        let path = dir.path().join("memtwin.toml");
        std::fs::write(
            &path,
            "replication-ack = true\nreplication-ack-timeout = 75\n",
        )
        .expect("write");
        assert_eq!(
            run(&["--config", path.to_str().expect("utf8")]).expect("ok"),
            Some(Duration::from_millis(75))
        );
        let backlog = |extra: &[&str]| {
            let r = twinned(&secret, extra)
                .expect("ok")
                .replication
                .expect("on");
            (r.backlog_bytes, r.backlog_ttl)
        };
        assert_eq!(backlog(&[]), (64 << 20, Duration::from_secs(600)));
        let rate = |extra: &[&str]| {
            let r = twinned(&secret, extra)
                .expect("ok")
                .replication
                .expect("on");
            r.catchup_rate
        };
        assert_eq!(rate(&[]), 100 << 20);
        assert_eq!(rate(&["--replication-catchup-rate", "0"]), 0);
        assert_eq!(rate(&["--replication-catchup-rate", "20"]), 20 << 20);
        assert!(Settings::from_args(vec!["memtwin", "--replication-catchup-rate", "5"]).is_err());
        assert_eq!(
            backlog(&[
                "--replication-backlog-mb",
                "0",
                "--replication-backlog-ttl",
                "30"
            ]),
            (0, Duration::from_secs(30))
        );
        let e = Settings::from_args(vec!["memtwin", "--replication-ack"]).expect_err("refused");
        assert!(e.to_string().contains("need --peer"), "{e}");
    }

    #[test]
    fn not_ready_flag_and_file_key() {
        use crate::twin::NotReadyReply;
        let dir = tempfile::tempdir().expect("tmp");
        let secret = secret_file(dir.path(), b"0123456789abcdef0123\n");
        let with = |extra: &[&str]| {
            let r = twinned(&secret, extra)
                .expect("ok")
                .replication
                .expect("on");
            r.not_ready
        };
        assert_eq!(with(&[]), NotReadyReply::Refuse);
        assert_eq!(with(&["--not-ready", "close"]), NotReadyReply::Close);
        assert_eq!(with(&["--not-ready", "error"]), NotReadyReply::Error);
        let path = dir.path().join("memtwin.toml");
        std::fs::write(&path, "not-ready = \"error\"\n").expect("write");
        assert_eq!(
            with(&["--config", path.to_str().expect("utf8")]),
            NotReadyReply::Error
        );
        assert!(Settings::from_args(vec!["memtwin", "--not-ready", "error"]).is_err());
        assert!(twinned(&secret, &["--not-ready", "maybe"]).is_err());
    }

    #[test]
    fn peer_wait_flag_and_file_key() {
        use crate::twin::PeerWait;
        let dir = tempfile::tempdir().expect("tmp");
        let secret = secret_file(dir.path(), b"0123456789abcdef0123\n");
        let with = |extra: &[&str]| {
            let mut v = vec!["--peer", "b:12211", "--replication-secret", &secret];
            v.extend_from_slice(extra);
            settings(&v).replication.expect("on").peer_wait
        };
        assert_eq!(with(&[]), PeerWait::For(Duration::from_secs(30)));
        assert_eq!(with(&["--peer-wait", "0"]), PeerWait::For(Duration::ZERO));
        assert_eq!(with(&["--peer-wait", "forever"]), PeerWait::Forever);
        let path = dir.path().join("memtwin.toml");
        for (toml, want) in [
            ("peer-wait = 7\n", PeerWait::For(Duration::from_secs(7))),
            ("peer-wait = \"forever\"\n", PeerWait::Forever),
        ] {
            std::fs::write(&path, toml).expect("write");
            assert_eq!(with(&["--config", path.to_str().expect("utf8")]), want);
        }
        let e = Settings::from_args(vec![
            "memtwin",
            "--peer",
            "b:1",
            "--replication-secret",
            &secret,
            "--peer-wait",
            "soon",
        ])
        .expect_err("refused")
        .to_string();
        assert!(e.contains("forever"), "{e}");
        let e = Settings::from_args(vec!["memtwin", "--peer-wait", "3"])
            .expect_err("refused")
            .to_string();
        assert!(e.contains("need --peer"), "{e}");
    }

    #[test]
    fn metrics_listen_takes_an_address_or_a_loopback_port() {
        let m = |a: &str| parse_metrics_listen(a).map(|s| s.to_string()).ok();
        assert_eq!(m("9150").as_deref(), Some("127.0.0.1:9150"));
        assert_eq!(m("0.0.0.0:9150").as_deref(), Some("0.0.0.0:9150"));
        assert_eq!(m("[::1]:9150").as_deref(), Some("[::1]:9150"));
        assert!(matches!(
            parse_metrics_listen("localhost"),
            Err(ConfigError::MetricsListen(_))
        ));
        let s = settings(&["--metrics-listen", "9150"]);
        assert_eq!(s.metrics_listen.map(|a| a.port()), Some(9150));
        assert_eq!(settings(&[]).metrics_listen, None, "off by default");
    }

    #[test]
    fn replication_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let good = secret_file(dir.path(), b"0123456789abcdef");
        let err = |args: &[&str]| {
            let mut v = vec!["memtwin"];
            v.extend_from_slice(args);
            Settings::from_args(v).expect_err("refused").to_string()
        };
        let e = err(&["--peer", "b:12211"]);
        assert!(e.contains("head -c 32 /dev/urandom | base64"), "{e}");
        assert!(err(&["--peer", "b", "--replication-secret", &good]).contains("HOST:PORT"));
        assert!(err(&["--peer", "b:0", "--replication-secret", &good]).contains("HOST:PORT"));
        assert!(err(&["--node-id", "0"]).contains("1 to 4095"));
        assert!(err(&["--node-id", "4096"]).contains("1 to 4095"));
        assert!(err(&["--replication-secret", &good]).contains("need --peer"));
        assert!(
            err(&["--peer", "b:1", "--replication-secret", "/nonexistent/s"])
                .contains("cannot read")
        );
        let empty = secret_file(dir.path(), b"\n");
        assert!(err(&["--peer", "b:1", "--replication-secret", &empty]).contains("fewer than 16"));
        let short = secret_file(dir.path(), b"short secret\n");
        assert!(err(&["--peer", "b:1", "--replication-secret", &short]).contains("12 bytes"));
        let good = secret_file(dir.path(), b"0123456789abcdef");
        assert!(err(&[
            "-p",
            "65000",
            "--peer",
            "b:1",
            "--replication-secret",
            &good
        ])
        .contains("overflows"));
        assert!(err(&[
            "--peer",
            "b:1",
            "--replication-secret",
            &good,
            "--replication-queue-mb",
            "0"
        ])
        .contains("at least 1"));
    }

    #[test]
    fn replication_file_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = secret_file(dir.path(), b"0123456789abcdef");
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            format!(
                "peer = \"10.0.0.2:12211\"\nreplication-secret = \"{secret}\"\nreplication-listen = \"127.0.0.1:9999\"\n\
                 node-id = 3\nmax-clock-skew = 3\ntombstone-ttl = 1200\nreplication-queue-mb = 16\n"
            ),
        )
        .expect("write");
        let s = settings(&["--config", path.to_str().expect("utf8"), "--node-id", "4"]);
        let r = s.replication.expect("on");
        assert_eq!(r.peer, "10.0.0.2:12211");
        assert_eq!(r.listen, "127.0.0.1:9999".parse().expect("addr"));
        assert_eq!(r.max_clock_skew, Duration::from_secs(3));
        assert_eq!(r.queue_bytes, 16 << 20);
        assert_eq!((s.node_id, s.tombstone_ttl), (Some(4), 1200), "cli wins");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1m").expect("ok"), 1 << 20);
        assert_eq!(parse_size("512k").expect("ok"), 512 << 10);
        assert!(parse_size("lots").is_err());
    }
}
