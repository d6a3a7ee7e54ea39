//! The `stats` family as name/value pairs, shared by the text and binary protocols.
//!
//! Field names and order follow memcached 1.6.18 so that memcached_exporter,
//! memcached-tool and memcstat work unchanged. Slab-specific fields memtwin has
//! no equivalent for are left out rather than invented.

use crate::session::Shared;
use std::sync::atomic::Ordering;

pub type Pairs = Vec<(&'static str, String)>;

fn rusage() -> (String, String) {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return ("0.000000".into(), "0.000000".into());
    }
    let f = |tv: libc::timeval| format!("{}.{:06}", tv.tv_sec, tv.tv_usec);
    (f(ru.ru_utime), f(ru.ru_stime))
}

/// `stats` with no argument.
pub fn general(shared: &Shared) -> Pairs {
    let e = &shared.engine;
    let s = e.stats().snapshot();
    let store = e.store();
    let (user, sys) = rusage();
    let conns = shared.curr_conns.load(Ordering::Relaxed);
    let mut v: Pairs = vec![
        ("pid", std::process::id().to_string()),
        ("uptime", e.clock().uptime().to_string()),
        ("time", e.now().to_string()),
        ("version", crate::WIRE_VERSION.to_string()),
        (
            "pointer_size",
            (8 * std::mem::size_of::<usize>()).to_string(),
        ),
        ("rusage_user", user),
        ("rusage_system", sys),
        ("max_connections", shared.settings.max_conns.to_string()),
        ("curr_connections", conns.to_string()),
        ("total_connections", s.total_connections.to_string()),
        ("rejected_connections", s.rejected_connections.to_string()),
        ("connection_structures", conns.to_string()),
        ("cmd_get", s.cmd_get.to_string()),
        ("cmd_set", s.cmd_set.to_string()),
        ("cmd_flush", s.cmd_flush.to_string()),
        ("cmd_touch", s.cmd_touch.to_string()),
        ("cmd_meta", s.cmd_meta.to_string()),
        ("get_hits", s.get_hits.to_string()),
        ("get_misses", s.get_misses.to_string()),
        ("get_expired", s.get_expired.to_string()),
        ("get_flushed", s.get_flushed.to_string()),
        ("delete_misses", s.delete_misses.to_string()),
        ("delete_hits", s.delete_hits.to_string()),
        ("incr_misses", s.incr_misses.to_string()),
        ("incr_hits", s.incr_hits.to_string()),
        ("decr_misses", s.decr_misses.to_string()),
        ("decr_hits", s.decr_hits.to_string()),
        ("cas_misses", s.cas_misses.to_string()),
        ("cas_hits", s.cas_hits.to_string()),
        ("cas_badval", s.cas_badval.to_string()),
        ("touch_hits", s.touch_hits.to_string()),
        ("touch_misses", s.touch_misses.to_string()),
        ("store_too_large", s.store_too_large.to_string()),
        ("store_no_memory", s.store_no_memory.to_string()),
        ("auth_cmds", s.auth_cmds.to_string()),
        ("auth_errors", s.auth_errors.to_string()),
        ("bytes_read", s.bytes_read.to_string()),
        ("bytes_written", s.bytes_written.to_string()),
        ("limit_maxbytes", store.limit().to_string()),
        (
            "accepting_conns",
            u8::from(shared.accepting.load(Ordering::Relaxed)).to_string(),
        ),
        ("listen_disabled_num", s.listen_disabled_num.to_string()),
        ("threads", shared.settings.threads.to_string()),
        ("conn_yields", s.conn_yields.to_string()),
        ("bytes", store.used().to_string()),
        ("curr_items", store.len().to_string()),
        ("total_items", s.total_items.to_string()),
        ("expired_unfetched", s.expired_unfetched.to_string()),
        ("evicted_unfetched", s.evicted_unfetched.to_string()),
        ("evicted_active", s.evicted_active.to_string()),
        ("evictions", s.evictions.to_string()),
        ("reclaimed", s.reclaimed.to_string()),
    ];
    // memtwin extensions, prefixed so they never collide with memcached's names.
    let stream = e.stream();
    v.push(("memtwin_mutation_seq", stream.last_seq().to_string()));
    v.push(("memtwin_store_io_errors", s.store_io_error.to_string()));
    // Persistence (`--data-dir`): see persist::State::report for the fields.
    match store.backing() {
        Some(b) => {
            b.report(&mut v);
            v.push((
                "memtwin_persist_ram_complete",
                u8::from(store.is_complete()).to_string(),
            ));
            v.push((
                "memtwin_persist_unsettled",
                store.unsettled_len().to_string(),
            ));
        }
        None => v.push(("memtwin_persist_enabled", "0".into())),
    }
    // Twin replication (`--peer`): only when configured.
    if let Some(t) = shared.twin.get() {
        v.extend(t.report());
        v.extend(tombstones(shared));
    }
    v
}

/// The store's tombstones (kept only with a twin), `repl_` prefixed.
fn tombstones(shared: &Shared) -> Pairs {
    let t = shared.engine.store().tombstone_stats();
    vec![
        ("repl_tombstones", t.count.to_string()),
        ("repl_tombstone_bytes", t.bytes.to_string()),
        ("repl_purge_watermark", t.purge_watermark.to_string()),
    ]
}

/// `stats replication`: the link's fields without the `repl_` prefix; None
/// without `--peer`, so the group is unknown as it is in memcached.
pub fn replication(shared: &Shared) -> Option<Pairs> {
    let t = shared.twin.get()?;
    let mut v = t.report_group();
    v.extend(
        tombstones(shared)
            .into_iter()
            .map(|(k, val)| (k.strip_prefix("repl_").unwrap_or(k), val)),
    );
    Some(v)
}

/// `stats settings`.
pub fn settings(shared: &Shared) -> Pairs {
    let st = &shared.settings;
    let yes_no = |b: bool| {
        if b {
            "yes".to_string()
        } else {
            "no".to_string()
        }
    };
    vec![
        ("maxbytes", shared.engine.store().limit().to_string()),
        ("maxconns", st.max_conns.to_string()),
        (
            "tcpport",
            if st.unix_socket.is_some() { 0 } else { st.port }.to_string(),
        ),
        ("udpport", "0".into()),
        (
            "inter",
            if st.unix_socket.is_some() {
                "NULL".into()
            } else {
                st.listen.join(",")
            },
        ),
        (
            "verbosity",
            shared.verbosity.load(Ordering::Relaxed).to_string(),
        ),
        ("oldest", "0".into()),
        (
            "evictions",
            if st.evict { "on".into() } else { "off".into() },
        ),
        (
            "domain_socket",
            st.unix_socket
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "NULL".into()),
        ),
        ("umask", format!("{:o}", st.unix_mask)),
        ("shutdown_command", yes_no(st.shutdown_enabled)),
        ("num_threads", st.threads.to_string()),
        ("stat_key_prefix", ":".into()),
        ("detail_enabled", yes_no(shared.prefixes.enabled())),
        ("cas_enabled", yes_no(st.cas)),
        ("tcp_backlog", st.backlog.to_string()),
        (
            "binding_protocol",
            match shared.auth.binding(st.protocol) {
                crate::config::BindingProtocol::Auto => "auto-negotiate",
                crate::config::BindingProtocol::Ascii => "ascii",
                crate::config::BindingProtocol::Binary => "binary",
            }
            .into(),
        ),
        ("auth_enabled_sasl", yes_no(st.sasl)),
        // memcached prints the auth file's path here.
        (
            "auth_enabled_ascii",
            st.auth_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "no".into()),
        ),
        ("item_size_max", st.item_size_max.to_string()),
        ("flush_enabled", yes_no(st.flush_enabled)),
        ("dump_enabled", "no".into()),
        ("idle_timeout", st.idle_timeout.to_string()),
        ("track_sizes", "no".into()),
        ("ssl_enabled", "no".into()),
    ]
}

/// `stats slabs`: memtwin has no slab classes; its one item class is reported
/// as memcached's class 1 with memcached's field names (once anything was
/// stored, as memcached shows a class once it has a page), so per-slab
/// dashboards keep working. There are no fixed-size chunks, so a "chunk" is an
/// item: `used_chunks` = `total_chunks` = items, `chunk_size` = the average
/// bytes charged per item (`chunk_size` x `used_chunks` = memory used, what
/// those dashboards compute), pages are 1 MiB of it. The hit counters are the
/// server's, all items being in the one class.
pub fn slabs(shared: &Shared) -> Pairs {
    let store = shared.engine.store();
    let used = store.used();
    let s = shared.engine.stats().snapshot();
    let mut out = Vec::new();
    if s.total_items > 0 || !store.is_empty() {
        let items = store.len();
        let chunk = used.checked_div(items).unwrap_or(0);
        const PAGE: usize = 1 << 20;
        out.extend([
            ("1:chunk_size", chunk.to_string()),
            (
                "1:chunks_per_page",
                PAGE.checked_div(chunk).unwrap_or(0).to_string(),
            ),
            ("1:total_pages", used.div_ceil(PAGE).to_string()),
            ("1:total_chunks", items.to_string()),
            ("1:used_chunks", items.to_string()),
            ("1:free_chunks", "0".into()),
            ("1:free_chunks_end", "0".into()),
            ("1:get_hits", s.get_hits.to_string()),
            ("1:cmd_set", s.cmd_set.to_string()),
            ("1:delete_hits", s.delete_hits.to_string()),
            ("1:incr_hits", s.incr_hits.to_string()),
            ("1:decr_hits", s.decr_hits.to_string()),
            ("1:cas_hits", s.cas_hits.to_string()),
            ("1:cas_badval", s.cas_badval.to_string()),
            ("1:touch_hits", s.touch_hits.to_string()),
        ]);
    }
    let active = usize::from(!out.is_empty());
    out.push(("active_slabs", active.to_string()));
    out.push(("total_malloced", used.to_string()));
    out
}

/// `stats items`: memtwin has one item class, reported as memcached's class 1
/// (nothing when the cache is empty, as memcached). Only fields memtwin tracks
/// are listed; per-LRU-segment fields have no equivalent.
pub fn items(shared: &Shared) -> Pairs {
    let e = &shared.engine;
    let store = e.store();
    if store.is_empty() {
        return Vec::new();
    }
    let s = e.stats().snapshot();
    vec![
        ("items:1:number", store.len().to_string()),
        ("items:1:mem_requested", store.used().to_string()),
        ("items:1:evicted", s.evictions.to_string()),
        ("items:1:outofmemory", s.store_no_memory.to_string()),
        ("items:1:reclaimed", s.reclaimed.to_string()),
        ("items:1:expired_unfetched", s.expired_unfetched.to_string()),
        ("items:1:evicted_unfetched", s.evicted_unfetched.to_string()),
        ("items:1:evicted_active", s.evicted_active.to_string()),
    ]
}

/// `stats conns`: one group of lines per connection and listener, as memcached.
pub fn conns(shared: &Shared) -> Vec<(String, String)> {
    let now = shared.engine.now();
    let mut v = Vec::new();
    for (id, e) in shared.conns.entries() {
        v.push((format!("{id}:addr"), e.addr.clone()));
        v.push((format!("{id}:listen_addr"), e.listen_addr.clone()));
        let state = if e.listening {
            "conn_listening"
        } else {
            "conn_parse_cmd"
        };
        v.push((format!("{id}:state"), state.to_string()));
        v.push((
            format!("{id}:secs_since_last_cmd"),
            now.saturating_sub(e.since).to_string(),
        ));
    }
    v
}
