//! `--metrics-listen ADDR`: Prometheus text format at `http://ADDR/metrics`.
//!
//! Why: operators already watch memcached with prometheus' memcached_exporter
//! and its dashboards and alerts. memtwin serves the same metric names and
//! labels itself (no exporter process to run next to each node), computed
//! from the very pairs `stats` prints ([`crate::session::report::general`]),
//! so the two can never disagree. The exporter's mapping is reproduced from
//! its documentation and source: `memcached_commands_total{command,status}`
//! from `get_hits`/`get_misses` (and delete, incr, decr, cas, touch),
//! `cas_badval`, `cmd_flush`, and `set` as `cmd_set` minus the cas commands
//! (memcached counts a cas in `cmd_set` too); plain counters and gauges for
//! the rest. Everything memtwin adds to `stats` (`memtwin_*`: persistence,
//! and `repl_*`: the twin, exported as `memtwin_repl_*`) is a gauge with the
//! stat's name. Off by default; a bare port listens on loopback.
//!
//! The HTTP side is deliberately tiny: one `GET /metrics` per connection,
//! a request head of at most 8 KiB read within 5 s, `Connection: close`. That
//! is all a Prometheus scrape needs, and it keeps an HTTP stack (and its
//! attack surface) out of a daemon that holds credentials.

use crate::session::{report, Shared};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest request head accepted.
const MAX_HEAD: usize = 8 << 10;
/// Time a scraper gets to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The memcached_exporter metrics read straight from one `stats` field:
/// (stat, metric, type, help).
const PLAIN: &[(&str, &str, &str, &str)] = &[
    // A counter in the exporter; a gauge here, as `promtool check metrics`
    // wants counters to end in _total (queries on the name are the same).
    (
        "uptime",
        "memcached_uptime_seconds",
        "gauge",
        "Number of seconds since the server started.",
    ),
    (
        "time",
        "memcached_time_seconds",
        "gauge",
        "Current UNIX time according to the server.",
    ),
    (
        "bytes_read",
        "memcached_read_bytes_total",
        "counter",
        "Total number of bytes read by this server from network.",
    ),
    (
        "bytes_written",
        "memcached_written_bytes_total",
        "counter",
        "Total number of bytes sent by this server to network.",
    ),
    (
        "curr_connections",
        "memcached_current_connections",
        "gauge",
        "Current number of open connections.",
    ),
    (
        "max_connections",
        "memcached_max_connections",
        "gauge",
        "Maximum number of clients allowed.",
    ),
    (
        "total_connections",
        "memcached_connections_total",
        "counter",
        "Total number of connections opened since the server started running.",
    ),
    (
        "rejected_connections",
        "memcached_connections_rejected_total",
        "counter",
        "Total number of connections rejected due to hitting the -c limit.",
    ),
    (
        "conn_yields",
        "memcached_connections_yielded_total",
        "counter",
        "Total number of connections yielded running due to hitting the -R limit.",
    ),
    (
        "listen_disabled_num",
        "memcached_connections_listener_disabled_total",
        "counter",
        "Number of times the connection limit disabled the listener.",
    ),
    (
        "bytes",
        "memcached_current_bytes",
        "gauge",
        "Current number of bytes used to store items.",
    ),
    (
        "limit_maxbytes",
        "memcached_limit_bytes",
        "gauge",
        "Number of bytes this server is allowed to use for storage.",
    ),
    (
        "curr_items",
        "memcached_current_items",
        "gauge",
        "Current number of items stored by this instance.",
    ),
    (
        "total_items",
        "memcached_items_total",
        "counter",
        "Total number of items stored during the life of this instance.",
    ),
    (
        "evictions",
        "memcached_items_evicted_total",
        "counter",
        "Total number of valid items removed from cache to free memory for new items.",
    ),
    (
        "reclaimed",
        "memcached_items_reclaimed_total",
        "counter",
        "Total number of times an entry was stored using memory from an expired entry.",
    ),
    (
        "store_too_large",
        "memcached_item_too_large_total",
        "counter",
        "The number of times an item exceeded the max-item-size when being stored.",
    ),
    (
        "store_no_memory",
        "memcached_item_no_memory_total",
        "counter",
        "The number of times an item could not be stored due to no more memory.",
    ),
];

/// Commands with `<cmd>_hits` / `<cmd>_misses` stats.
const HIT_MISS: &[&str] = &["get", "delete", "incr", "decr", "cas", "touch"];

/// The whole `/metrics` page.
pub fn render(shared: &Shared) -> String {
    let pairs = report::general(shared);
    let stat = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let num = |name: &str| stat(name).and_then(|v| v.parse::<f64>().ok());
    let mut out = String::with_capacity(8 << 10);
    family(
        &mut out,
        "memcached_up",
        "gauge",
        "Could the memcached server be reached.",
    );
    out.push_str("memcached_up 1\n");
    family(
        &mut out,
        "memcached_version",
        "gauge",
        "The version of this memcached server.",
    );
    let _ = writeln!(
        out,
        "memcached_version{{version=\"{}\"}} 1",
        escape(stat("version").unwrap_or(""))
    );
    for (name, key) in [
        ("memcached_process_user_cpu_seconds_total", "rusage_user"),
        (
            "memcached_process_system_cpu_seconds_total",
            "rusage_system",
        ),
    ] {
        family(
            &mut out,
            name,
            "counter",
            "Accumulated CPU time for this process.",
        );
        let _ = writeln!(out, "{name} {}", num(key).unwrap_or(0.0));
    }
    for &(key, name, kind, help) in PLAIN {
        if let Some(v) = num(key) {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
    family(
        &mut out,
        "memcached_commands_total",
        "counter",
        "Total number of all requests broken down by command (get, set, etc.) and status.",
    );
    let mut command = |cmd: &str, status: &str, v: f64| {
        let _ = writeln!(
            out,
            "memcached_commands_total{{command=\"{cmd}\",status=\"{status}\"}} {v}"
        );
    };
    for cmd in HIT_MISS {
        command(cmd, "hit", num(&format!("{cmd}_hits")).unwrap_or(0.0));
        command(cmd, "miss", num(&format!("{cmd}_misses")).unwrap_or(0.0));
    }
    command("cas", "badval", num("cas_badval").unwrap_or(0.0));
    command("flush", "hit", num("cmd_flush").unwrap_or(0.0));
    let cas: f64 = ["cas_misses", "cas_hits", "cas_badval"]
        .iter()
        .filter_map(|k| num(k))
        .sum();
    command("set", "hit", (num("cmd_set").unwrap_or(0.0) - cas).max(0.0));
    for (key, value) in &pairs {
        let name = if key.starts_with("memtwin_") {
            key.to_string()
        } else if key.starts_with("repl_") {
            format!("memtwin_{key}")
        } else {
            continue;
        };
        // Non-numeric fields (the link's state, the peer's address) are
        // shown as a labelled 1, like the version.
        match value.parse::<f64>() {
            Ok(v) => {
                family(
                    &mut out,
                    &name,
                    "gauge",
                    &format!("memtwin stat {key} (see `stats`)."),
                );
                let _ = writeln!(out, "{name} {v}");
            }
            Err(_) => {
                family(
                    &mut out,
                    &name,
                    "gauge",
                    &format!("memtwin stat {key} (see `stats`)."),
                );
                let _ = writeln!(out, "{name}{{value=\"{}\"}} 1", escape(value));
            }
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve `/metrics` on `addr` until the process exits.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("metrics at http://{}/metrics", listener.local_addr()?);
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "metrics on {addr}, beyond loopback: the page holds counters only (never keys \
             or values) but tells anyone who reaches it how busy this node is; keep the port \
             behind a firewall"
        );
    }
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &shared).await {
                    tracing::debug!("metrics: {e}");
                }
            });
        }
    });
    Ok(())
}

/// One request, one response.
async fn answer(mut s: tokio::net::TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(head.windows(4).any(|w| w == b"\r\n\r\n"))
    })
    .await
    .unwrap_or(Ok(false))?;
    let reply = match (complete, request_target(&head)) {
        (false, _) => response("400 Bad Request", "text/plain", "bad request\n"),
        (true, Some(("GET", "/metrics"))) => response(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &render(shared),
        ),
        (true, Some(("GET", _))) => response("404 Not Found", "text/plain", "see /metrics\n"),
        (true, Some(_)) => response("405 Method Not Allowed", "text/plain", "GET only\n"),
        (true, None) => response("400 Bad Request", "text/plain", "bad request\n"),
    };
    s.write_all(reply.as_bytes()).await?;
    s.shutdown().await
}

/// The method and path of a request head (query string dropped).
fn request_target(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut it = line.split(' ');
    let (method, target, version) = (it.next()?, it.next()?, it.next()?);
    if !version.starts_with("HTTP/1.") || it.next().is_some() {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

fn response(status: &str, kind: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            request_target(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_target(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_target(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_target(b"\xff\xfe HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn the_page_has_the_exporters_names_and_counts_sets_without_cas() {
        let sh = Shared::for_tests();
        let e = &sh.engine;
        let store = |mode, key: &[u8]| {
            let c = crate::engine::StoreCmd::new(mode, key, 0, 0, bytes::Bytes::from_static(b"v"));
            e.store_item(c)
        };
        store(crate::engine::StoreMode::Set, b"a");
        store(crate::engine::StoreMode::Set, b"b");
        let _ = e.get_with(b"a", |_| ());
        let _ = e.get_with(b"zz", |_| ());
        let page = render(&sh);
        for line in [
            "memcached_up 1",
            "memcached_current_items 2",
            "memcached_commands_total{command=\"get\",status=\"hit\"} 1",
            "memcached_commands_total{command=\"get\",status=\"miss\"} 1",
            "memcached_commands_total{command=\"set\",status=\"hit\"} 2",
            "# TYPE memcached_items_total counter",
            "memtwin_persist_enabled 0",
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        assert!(
            page.contains("memcached_version{version=\"1.6.18-memtwin-"),
            "{page}"
        );
        // Every sample line is NAME[{labels}] VALUE, every family declared once.
        let mut types = std::collections::HashSet::new();
        for l in page.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or("");
                assert!(types.insert(name.to_string()), "{name} declared twice");
            } else if !l.starts_with('#') {
                let (_, v) = l.rsplit_once(' ').expect("value");
                assert!(v.parse::<f64>().is_ok(), "{l}");
            }
        }
    }
}
