//! `memtwin import --from HOST:PORT [--to HOST:PORT]`: copy every live item of
//! a running memcached 1.6 into a running memtwin, so the sessions already in
//! memcached survive the switch.
//!
//! How, and why this way:
//!
//! * **Listing**: `lru_crawler metadump all` streams one line per live item
//!   (`key=<uri-encoded> exp=... la=... cas=... ...`) without blocking the
//!   source's clients; it is memcached's own tool for this job (1.4.31+).
//! * **Fetching**: `mg <key> v f t`, pipelined in batches: the value, the
//!   client flags and the *remaining* TTL at the moment of the read, so an
//!   item keeps its expiry whatever time passed since the listing. An item
//!   deleted or expired since the listing answers `EN` and is counted as gone.
//!   The source sees only reads.
//! * **Storing**: `ms <key> <len> F<flags> T<ttl> ME q` into memtwin (mode
//!   `E`: add), pipelined, then `mn` to collect the answers (quiet mode answers
//!   only what was not stored). Adding never overwrites what memtwin already
//!   holds, so the import can be run again after clients moved to memtwin: it
//!   fills in what was written to memcached in between and keeps every
//!   session clients have since changed on memtwin (`--overwrite` sets
//!   instead). A TTL above memcached's 30-day limit is sent as an absolute
//!   time, as memcached reads it. Keys that are not plain text-protocol keys
//!   travel base64 (`b`).
//!
//! * **Crawling again**: the crawler is not a snapshot. Items that memcached's
//!   LRU maintainer moves between its queues while the crawl walks them can be
//!   skipped (seen here: 6 of 100,000 freshly written items missing from one
//!   listing while `curr_items` said 100,000). So when the listing named fewer
//!   distinct keys than the source's `curr_items`, the tool crawls again, up to
//!   [`MAX_CRAWLS`] times in all, and copies only the keys no earlier crawl
//!   named; it stops as soon as a crawl finds nothing new.
//!
//! CAS values are not copied (memtwin stamps its own). Items written to the
//! source during the copy may or may not be included: stop writes to memcached
//! (or point clients at memtwin) before the final run, see docs/migrating.md.

use crate::protocol::base64;
use anyhow::{anyhow, bail, Context};
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

/// memcached's limit between a relative TTL and an absolute time.
const RELATIVE_MAX: i64 = 60 * 60 * 24 * 30;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Listings per import at most (see "Crawling again" above).
pub const MAX_CRAWLS: usize = 3;

/// `memtwin import` options.
#[derive(Debug, clap::Parser)]
#[command(
    name = "memtwin import",
    about = "Copy every live item of a running memcached 1.6 into a running memtwin"
)]
pub struct ImportArgs {
    /// The memcached to copy from (only read).
    #[arg(long = "from", value_name = "HOST:PORT")]
    pub from: String,
    /// The memtwin to copy into.
    #[arg(
        long = "to",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:11211"
    )]
    pub to: String,
    /// Replace items memtwin already holds (default: only add missing ones).
    #[arg(long = "overwrite")]
    pub overwrite: bool,
    /// Items fetched and stored per round trip.
    #[arg(long = "batch", default_value_t = 200)]
    pub batch: usize,
    /// No progress lines, only the summary.
    #[arg(long = "quiet", short = 'q')]
    pub quiet: bool,
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Items the listing named.
    pub listed: u64,
    /// Copied into memtwin.
    pub copied: u64,
    /// Gone from the source between listing and fetch (deleted, expired).
    pub gone: u64,
    /// Already in memtwin, kept as they were (add mode).
    pub kept: u64,
    /// Refused by memtwin (the error lines are logged).
    pub failed: u64,
    /// Of `listed`, keys only a second or later crawl named.
    pub recrawled: u64,
    /// Value bytes read from the source.
    pub bytes: u64,
}

/// The `memtwin import` command line (after the word `import`).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use clap::Parser;
    let a = match ImportArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let started = Instant::now();
    match run(&a) {
        Ok(s) => {
            println!(
                "memtwin import: {} items listed on {}{}, {} copied to {} ({:.1} MiB read), {} \
                 already there and kept, {} gone before they could be read, {} refused; {:.1} s",
                s.listed,
                a.from,
                if s.recrawled > 0 {
                    format!(" ({} only by a second crawl)", s.recrawled)
                } else {
                    String::new()
                },
                s.copied,
                a.to,
                s.bytes as f64 / 1048576.0,
                s.kept,
                s.gone,
                s.failed,
                started.elapsed().as_secs_f64()
            );
            if s.failed > 0 {
                std::process::ExitCode::from(1)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("memtwin import: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Run an import.
pub fn run(a: &ImportArgs) -> anyhow::Result<Summary> {
    let mut src = Conn::open(&a.from).with_context(|| format!("memcached at {}", a.from))?;
    let mut dst = Conn::open(&a.to).with_context(|| format!("memtwin at {}", a.to))?;
    let version = src.version()?;
    if !version.starts_with("1.6") && !version.starts_with("1.7") {
        bail!(
            "{} runs memcached {version}; the import needs 1.6 or later",
            a.from
        );
    }
    dst.version()
        .context("the destination does not answer `version`")?;
    let mut s = Summary::default();
    // 64-bit hashes of the keys copied so far, not the keys: 16 bytes a key
    // whatever its length (a collision could only make a re-crawl skip a key).
    let hasher = std::collections::hash_map::RandomState::new();
    let mut seen: HashSet<u64> = HashSet::new();
    for crawl in 0..MAX_CRAWLS {
        let mut listed = src
            .list_keys()
            .context("listing the items (lru_crawler metadump all)")?;
        // New keys only, each once (a crawl may also name a key twice).
        listed.retain(|l| seen.insert(hasher.hash_one(&l.key)));
        if listed.is_empty() {
            break;
        }
        s.listed += listed.len() as u64;
        if crawl > 0 {
            s.recrawled += listed.len() as u64;
        }
        copy(&mut src, &mut dst, &listed, a, &mut s)?;
        // Fewer keys than the source holds: the crawl skipped some.
        match src.curr_items() {
            Ok(n) if (seen.len() as u64) < n => {}
            _ => break,
        }
    }
    Ok(s)
}

/// Fetch and store `listed`, batch by batch, adding to `s`.
fn copy(
    src: &mut Conn,
    dst: &mut Conn,
    listed: &[Listed],
    a: &ImportArgs,
    s: &mut Summary,
) -> anyhow::Result<()> {
    let done_before = s.copied + s.kept + s.gone + s.failed;
    let mut progress = Progress::new(!a.quiet, listed.len() as u64);
    for chunk in listed.chunks(a.batch.max(1)) {
        let items = src.fetch(chunk)?;
        s.gone += (chunk.len() - items.len()) as u64;
        let r = dst.store(&items, a.overwrite)?;
        s.copied += r.stored;
        s.kept += r.kept;
        s.failed += r.failed;
        s.bytes += r.bytes;
        progress.show(s.copied + s.kept + s.gone + s.failed - done_before, s.bytes);
    }
    progress.done();
    Ok(())
}

/// One fetched item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub flags: u32,
    /// Remaining seconds, -1 = never expires.
    pub ttl: i64,
    /// The absolute expiry the listing showed (-1 = never).
    pub listed_exp: i64,
}

/// One line of the listing: the key and its absolute expiry (-1 = never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: Vec<u8>,
    pub exp: i64,
}

/// What one batch did on the destination.
#[derive(Debug, Default)]
struct Stored {
    stored: u64,
    kept: u64,
    failed: u64,
    bytes: u64,
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> anyhow::Result<Conn> {
        let w = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
        w.set_read_timeout(Some(IO_TIMEOUT))?;
        w.set_write_timeout(Some(IO_TIMEOUT))?;
        let _ = w.set_nodelay(true);
        Ok(Conn {
            r: BufReader::new(w.try_clone()?),
            w,
        })
    }

    fn line(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut l = Vec::new();
        let n = self.r.read_until(b'\n', &mut l)?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        while matches!(l.last(), Some(b'\n' | b'\r')) {
            l.pop();
        }
        Ok(l)
    }

    /// The source's `curr_items`.
    fn curr_items(&mut self) -> anyhow::Result<u64> {
        self.w.write_all(b"stats\r\n")?;
        let mut n = None;
        loop {
            let l = self.line()?;
            if l == b"END" {
                break;
            }
            if let Some(v) = l.strip_prefix(b"STAT curr_items ") {
                n = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
            }
        }
        n.ok_or_else(|| anyhow!("the source's stats have no curr_items"))
    }

    fn version(&mut self) -> anyhow::Result<String> {
        self.w.write_all(b"version\r\n")?;
        let l = self.line()?;
        let v = l
            .strip_prefix(b"VERSION ")
            .ok_or_else(|| anyhow!("unexpected answer to version: {}", show(&l)))?;
        Ok(String::from_utf8_lossy(v).into_owned())
    }

    /// Every item `lru_crawler metadump all` lists (retrying while the crawler
    /// is busy with another job).
    fn list_keys(&mut self) -> anyhow::Result<Vec<Listed>> {
        for attempt in 0..30 {
            self.w.write_all(b"lru_crawler metadump all\r\n")?;
            let mut keys = Vec::new();
            loop {
                let l = self.line()?;
                if l == b"END" {
                    return Ok(keys);
                }
                if l.starts_with(b"BUSY") && keys.is_empty() {
                    break;
                }
                if l.starts_with(b"ERROR") || l.starts_with(b"CLIENT_ERROR") {
                    bail!("the source refused the listing: {}", show(&l));
                }
                keys.push(parse_dump_line(&l)?);
            }
            std::thread::sleep(Duration::from_millis(100 * (attempt + 1).min(10)));
        }
        bail!("the source's LRU crawler stayed busy")
    }

    /// `mg` each key; the items still there.
    fn fetch(&mut self, keys: &[Listed]) -> anyhow::Result<Vec<Item>> {
        let mut req = Vec::with_capacity(keys.len() * 48);
        for k in keys {
            req.extend_from_slice(b"mg ");
            let b64 = put_key(&mut req, &k.key);
            req.extend_from_slice(if b64 { b" b v f t\r\n" } else { b" v f t\r\n" });
        }
        self.w.write_all(&req)?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let l = self.line()?;
            if l == b"EN" {
                continue;
            }
            let (len, flags, ttl) = parse_value_header(&l)
                .ok_or_else(|| anyhow!("unexpected answer to mg: {}", show(&l)))?;
            let mut value = vec![0u8; len + 2];
            std::io::Read::read_exact(&mut self.r, &mut value)?;
            if !value.ends_with(b"\r\n") {
                bail!("a value from the source is not terminated by CRLF");
            }
            value.truncate(len);
            out.push(Item {
                key: k.key.clone(),
                value,
                flags,
                ttl,
                listed_exp: k.exp,
            });
        }
        Ok(out)
    }

    /// `ms ... q` each item (in add mode unless `overwrite`), then `mn`.
    /// Quiet mode answers only items not stored, in order.
    fn store(&mut self, items: &[Item], overwrite: bool) -> anyhow::Result<Stored> {
        let mut r = Stored::default();
        if items.is_empty() {
            return Ok(r);
        }
        let now = unix_now();
        let mut req = Vec::new();
        for it in items {
            req.extend_from_slice(b"ms ");
            let b64 = put_key(&mut req, &it.key);
            let t = exptime_for(it.ttl, it.listed_exp, now);
            let head = format!(
                " {} F{} T{t}{}{} q\r\n",
                it.value.len(),
                it.flags,
                if b64 { " b" } else { "" },
                if overwrite { "" } else { " ME" }
            );
            req.extend_from_slice(head.as_bytes());
            req.extend_from_slice(&it.value);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"mn\r\n");
        self.w.write_all(&req)?;
        loop {
            let l = self.line()?;
            if l == b"MN" {
                break;
            }
            if l == b"NS" && !overwrite {
                r.kept += 1;
                continue;
            }
            r.failed += 1;
            if r.failed <= 5 {
                eprintln!(
                    "memtwin import: the destination refused an item: {}",
                    show(&l)
                );
            }
        }
        let total = items.len() as u64;
        r.stored = total.saturating_sub(r.kept + r.failed);
        r.bytes = items.iter().map(|i| i.value.len() as u64).sum();
        Ok(r)
    }
}

/// The key and expiry of a metadump line (`key=<uri-encoded> exp=<unix time
/// or -1> ...`).
pub fn parse_dump_line(l: &[u8]) -> anyhow::Result<Listed> {
    let mut fields = l.split(|&c| c == b' ');
    let enc = fields
        .next()
        .and_then(|f| f.strip_prefix(b"key="))
        .ok_or_else(|| anyhow!("unexpected metadump line: {}", show(l)))?;
    let key =
        uri_decode(enc).ok_or_else(|| anyhow!("undecodable key in metadump line: {}", show(l)))?;
    let exp = fields
        .find_map(|f| f.strip_prefix(b"exp="))
        .and_then(|e| std::str::from_utf8(e).ok()?.parse().ok())
        .unwrap_or(-1);
    Ok(Listed { key, exp })
}

/// `%XX` decoding (memcached's `uriencode` leaves unreserved bytes as they are).
pub fn uri_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// `VA <len> f<flags> t<ttl>` → (len, flags, ttl).
pub fn parse_value_header(l: &[u8]) -> Option<(usize, u32, i64)> {
    let text = std::str::from_utf8(l).ok()?;
    let mut it = text.split(' ');
    if it.next()? != "VA" {
        return None;
    }
    let len = it.next()?.parse().ok()?;
    let (mut flags, mut ttl) = (0u32, -1i64);
    for tok in it {
        if let Some(f) = tok.strip_prefix('f') {
            flags = f.parse().ok()?;
        } else if let Some(t) = tok.strip_prefix('t') {
            ttl = t.parse().ok()?;
        }
    }
    Some((len, flags, ttl))
}

/// The `T` token memtwin (like memcached) reads as the same expiry: relative
/// up to 30 days, absolute beyond; 0 = never. Beyond 30 days the listing's
/// absolute time is used when it agrees with the remaining TTL (both servers
/// keep whole-second clocks that lag the wall clock, so `now + ttl` alone can
/// land up to 2 s late); a TTL changed since the listing wins.
pub fn exptime_for(ttl: i64, listed_exp: i64, now: i64) -> i64 {
    match ttl {
        t if t < 0 => 0,
        // Expires within the second: keep it for one rather than never.
        0 => 1,
        t if t > RELATIVE_MAX => {
            if listed_exp > 0 && (now + t - listed_exp).abs() <= 2 {
                listed_exp
            } else {
                now + t
            }
        }
        t => t,
    }
}

/// Write `key` as a meta key; true if it had to be base64 (`b` flag).
fn put_key(out: &mut Vec<u8>, key: &[u8]) -> bool {
    let plain = !key.is_empty() && key.len() <= 250 && key.iter().all(|&c| c > b' ' && c != 0x7f);
    if plain {
        out.extend_from_slice(key);
    } else {
        base64::encode_into(key, out);
    }
    !plain
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn show(l: &[u8]) -> String {
    String::from_utf8_lossy(&l[..l.len().min(200)]).into_owned()
}

/// A progress line on stderr: redrawn in place on a terminal, else one line
/// every few seconds.
struct Progress {
    on: bool,
    tty: bool,
    total: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(on: bool, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            on,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            total,
            started: now,
            last: now,
        }
    }

    fn show(&mut self, done: u64, bytes: u64) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !self.on || self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        let bar: String = (0..30)
            .map(|i| if i * 100 < pct * 30 { '#' } else { '.' })
            .collect();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "[{bar}] {done}/{} items ({pct}%), {:.1} MiB, {rate:.0} items/s",
            self.total,
            bytes as f64 / 1048576.0
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("memtwin import: {line}");
        }
    }

    fn done(&self) {
        if self.on && self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake memcached for `run`: its crawler names `first` on the first
    /// listing and every key afterwards; `curr_items` is every key. As the
    /// destination it takes quiet `ms` and answers `mn`.
    fn fake_server(keys: Vec<&'static str>, first: usize) -> (String, std::thread::JoinHandle<()>) {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let h = std::thread::spawn(move || {
            let mut crawls = 0;
            // The import opens one connection per role.
            let Ok((s, _)) = l.accept() else { return };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut w = s;
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let reply = match words.as_slice() {
                    ["version"] => "VERSION 1.6.18\r\n".to_string(),
                    ["lru_crawler", "metadump", "all"] => {
                        crawls += 1;
                        let n = if crawls == 1 { first } else { keys.len() };
                        let mut out: String = keys[..n]
                            .iter()
                            .map(|k| format!("key={k} exp=-1 la=1 cas=1\r\n"))
                            .collect();
                        out.push_str("END\r\n");
                        out
                    }
                    ["stats"] => format!("STAT curr_items {}\r\nEND\r\n", keys.len()),
                    ["mg", _, ..] => "VA 1 f7 t-1\r\nx\r\n".to_string(),
                    ["ms", _, len, ..] => {
                        let mut data = vec![0u8; len.parse::<usize>().expect("len") + 2];
                        r.read_exact(&mut data).expect("data");
                        String::new()
                    }
                    ["mn"] => "MN\r\n".to_string(),
                    other => panic!("unexpected {other:?}"),
                };
                w.write_all(reply.as_bytes()).expect("write");
                line.clear();
            }
        });
        (addr, h)
    }

    #[test]
    fn keys_a_crawl_skipped_are_found_by_the_next_one() {
        let keys = vec!["a", "b", "c", "d"];
        let (from, src) = fake_server(keys.clone(), 2);
        let (to, dst) = fake_server(keys, 0);
        let a = ImportArgs {
            from,
            to,
            overwrite: false,
            batch: 200,
            quiet: true,
        };
        let s = run(&a).expect("import");
        assert_eq!((s.listed, s.copied, s.recrawled, s.kept), (4, 4, 2, 0));
        drop(a);
        src.join().expect("src");
        dst.join().expect("dst");
    }

    #[test]
    fn metadump_lines_and_meta_headers_parse() {
        let k = parse_dump_line(
            b"key=sess%3Aabc%20d exp=-1 la=1700000000 cas=5 fetch=no cls=1 size=70",
        )
        .expect("parses");
        assert_eq!((k.key.as_slice(), k.exp), (&b"sess:abc d"[..], -1));
        let k = parse_dump_line(b"key=a exp=1800000300 la=1").expect("parses");
        assert_eq!(k.exp, 1_800_000_300);
        assert!(parse_dump_line(b"garbage").is_err());
        assert!(uri_decode(b"%zz").is_none());
        assert!(uri_decode(b"%4").is_none());
        assert_eq!(parse_value_header(b"VA 5 f17 t-1"), Some((5, 17, -1)));
        assert_eq!(parse_value_header(b"VA 0 t300 f0"), Some((0, 0, 300)));
        assert_eq!(parse_value_header(b"EN"), None);
        assert_eq!(parse_value_header(b"VA x"), None);
    }

    #[test]
    fn ttls_keep_memcached_meaning() {
        let now = 1_800_000_000;
        assert_eq!(exptime_for(-1, -1, now), 0);
        assert_eq!(exptime_for(0, now, now), 1);
        assert_eq!(exptime_for(300, now + 300, now), 300);
        assert_eq!(exptime_for(RELATIVE_MAX, -1, now), RELATIVE_MAX);
        let far = RELATIVE_MAX + 1;
        assert_eq!(exptime_for(far, -1, now), now + far);
        assert_eq!(
            exptime_for(far, now + far - 2, now),
            now + far - 2,
            "the listing's time"
        );
        assert_eq!(
            exptime_for(far, now + 10, now),
            now + far,
            "touched since the listing"
        );
        let mut out = Vec::new();
        assert!(!put_key(&mut out, b"plain"));
        assert_eq!(out, b"plain");
        out.clear();
        assert!(put_key(&mut out, b"has space"));
        assert_eq!(out, b"aGFzIHNwYWNl");
    }
}
