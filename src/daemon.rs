//! Process-level operations glue: daemonizing, pid files, dropping privileges,
//! signals, and the top-level `run` that wires engine, listeners and server.

use crate::clock::Clock;
use crate::config::Settings;
use crate::engine::{Engine, EngineConfig};
use crate::mutation::MutationStream;
use crate::persist::{PersistConfig, Persistence, Running};
use crate::server;
use crate::session::Shared;
use crate::stats::Stats;
use crate::store::StoreConfig;
use anyhow::{bail, Context};
use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

/// Detach from the terminal (`-d`). Must run before any threads exist.
pub fn daemonize() -> anyhow::Result<()> {
    // SAFETY: called from main before the runtime or any other thread starts, so
    // fork() duplicates a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => bail!("fork failed: {}", std::io::Error::last_os_error()),
        0 => {}
        // SAFETY: the parent exits immediately without running destructors.
        _ => unsafe { libc::_exit(0) },
    }
    // SAFETY: plain syscalls on our own process.
    unsafe {
        if libc::setsid() == -1 {
            bail!("setsid failed: {}", std::io::Error::last_os_error());
        }
        let devnull = CString::new("/dev/null").context("path")?;
        let fd = libc::open(devnull.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
    Ok(())
}

/// Write our pid (`-P`).
pub fn write_pidfile(path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write pid file {}", path.display()))
}

/// Drop root privileges to `user` (`-u`), as memcached does after binding.
pub fn drop_privileges(user: Option<&str>) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    match user {
        None if euid == 0 => {
            tracing::warn!("running as root without -u: consider -u memcache or a dedicated user");
            Ok(())
        }
        None => Ok(()),
        Some("root") => Ok(()),
        Some(_) if euid != 0 => {
            tracing::warn!("-u ignored: not started as root");
            Ok(())
        }
        Some(name) => {
            let cname = CString::new(name).context("user name contains a NUL byte")?;
            // SAFETY: getpwnam returns a pointer to static storage or NULL; we copy
            // the fields we need before any other call that could overwrite it.
            let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
            if pw.is_null() {
                bail!("can't find the user {name} to switch to");
            }
            // SAFETY: pw is non-null and points to a valid passwd struct.
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            // SAFETY: plain syscalls; errors are checked.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    && libc::initgroups(cname.as_ptr(), gid) != 0
                {
                    bail!("failed to drop supplementary groups");
                }
                if libc::setgid(gid) != 0 {
                    bail!("failed to assume the group of user {name}");
                }
                if libc::setuid(uid) != 0 {
                    bail!("failed to assume the identity of user {name}");
                }
            }
            Ok(())
        }
    }
}

/// File descriptors kept for everything that is not a client connection:
/// listeners, the runtime's epoll and wakers, sled's files, logs.
const FD_HEADROOM: u64 = 128;

/// What [`raise_fd_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdLimit {
    /// The soft limit already allowed `-c` connections.
    Enough(u64),
    /// Raised to this soft limit.
    Raised(u64),
    /// Could not get there; connections beyond this many descriptors will be
    /// refused by `accept` (EMFILE, counted in `listen_disabled_num`).
    Short(u64),
}

/// Make room for `-c` connections: raise the soft `RLIMIT_NOFILE` to
/// `max_conns` plus [`FD_HEADROOM`], and as root the hard limit too, as
/// memcached does at start-up. Unlike memcached (which sets both limits to
/// exactly `-c`, and exits when it cannot), a limit is never lowered and a
/// shortfall is a warning: the daemon still serves what it can.
pub fn raise_fd_limit(max_conns: usize) -> FdLimit {
    let want = (max_conns as u64).saturating_add(FD_HEADROOM);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; the result is checked.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(
            "cannot read the open-files limit: {}",
            std::io::Error::last_os_error()
        );
        return FdLimit::Short(0);
    }
    let cur: u64 = lim.rlim_cur;
    if lim.rlim_cur == libc::RLIM_INFINITY || cur >= want {
        return FdLimit::Enough(cur);
    }
    let hard: u64 = lim.rlim_max;
    let try_set = |soft: u64, hard: u64| {
        let l = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: plain syscall on a valid struct; the result is checked.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 }
    };
    // Root may raise the hard limit; anyone may raise the soft one up to it.
    if lim.rlim_max != libc::RLIM_INFINITY && hard < want && try_set(want, want) {
        return FdLimit::Raised(want);
    }
    let reachable = if lim.rlim_max == libc::RLIM_INFINITY {
        want
    } else {
        want.min(hard)
    };
    let max = if lim.rlim_max == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        hard
    };
    if reachable > cur && try_set(reachable, max) {
        if reachable >= want {
            return FdLimit::Raised(reachable);
        }
        tracing::warn!(
            "open-files limit raised to {reachable}, short of {want} for -c {max_conns}; \
             raise LimitNOFILE (systemd) or ulimit -n"
        );
        return FdLimit::Short(reachable);
    }
    tracing::warn!(
        "open-files limit is {cur}, short of {want} for -c {max_conns}; \
         raise LimitNOFILE (systemd) or ulimit -n"
    );
    FdLimit::Short(cur)
}

/// How long a clean shutdown waits for the twin to confirm it has every
/// write this node accepted (docs/replication.md §7.3): well inside systemd's
/// default TimeoutStopSec of 90 s.
const TWIN_DRAIN_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Build everything from the settings and serve until shut down.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let clock = Arc::new(Clock::new());
    let stats = Arc::new(Stats::new());
    let stream = Arc::new(MutationStream::new());
    // Every version this node stamps carries this id (the store's clock).
    let (node_id, node_id_source) = crate::twin::node_id::resolve(
        settings.node_id,
        settings.persist.as_ref().map(|p| p.dir.as_path()),
    )?;
    let engine = Arc::new(Engine::new(
        EngineConfig {
            store: StoreConfig {
                node_id,
                // Tombstones exist only for a twin: standalone costs as before.
                tombstones: settings.replication.is_some(),
                tombstone_ttl: u32::try_from(settings.tombstone_ttl).unwrap_or(u32::MAX),
                ..StoreConfig::standalone(settings.memory_limit, settings.evict, settings.cas)
            },
            item_size_max: settings.item_size_max,
        },
        clock.clone(),
        stats,
        stream,
    ));
    let mut shared = Shared::new(engine.clone(), settings.clone());
    shared.auth = crate::auth::Auth::load(&settings)?;
    if let Some(r) = &settings.replication {
        // Gated from the first connection: a client must never read a miss
        // for a session the twin holds.
        shared.readiness = Arc::new(
            match r.peer_wait {
                crate::twin::PeerWait::For(d) if d.is_zero() => crate::twin::Readiness::alone(),
                _ => crate::twin::Readiness::gated(),
            }
            .with_reply(r.not_ready),
        );
    }
    let shared = Arc::new(shared);
    // Before the listeners exist: a client (or systemd) can see the port and
    // signal us right away, and SIGTERM's default action would be an unclean exit.
    // A signal during the warm restart stops the daemon once the load is done.
    spawn_signal_handler(shared.clone())?;
    // Before dropping privileges: as root the hard limit can be raised too.
    match raise_fd_limit(settings.max_conns) {
        FdLimit::Raised(n) => tracing::debug!("open-files limit raised to {n}"),
        FdLimit::Enough(_) | FdLimit::Short(_) => {}
    }
    let inherited = crate::systemd::listen_fds();
    let listeners = server::bind_all(&settings, &inherited, shared.readiness.defers_listening())
        .context("cannot listen")?;
    // Before dropping privileges, like the client ports; served from the start
    // (a node catching up with its twin is worth watching too).
    if let Some(addr) = settings.metrics_listen {
        crate::metrics::serve(addr, shared.clone())
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    }
    if let Some(p) = &settings.pidfile {
        write_pidfile(p)?;
    }
    drop_privileges(settings.user.as_deref())?;
    // The data set is opened as the service user (files it creates must stay
    // writable) and fully loaded before any client is served: connections that
    // arrive meanwhile wait in the listen backlog, they are never answered
    // from a half-loaded table.
    let persist = match settings.persist.clone() {
        Some(cfg) => {
            let engine = engine.clone();
            let clock = clock.clone();
            let limit = settings.memory_limit;
            Some(
                tokio::task::spawn_blocking(move || start_persistence(&cfg, &engine, clock, limit))
                    .await
                    .context("persistence start-up")??,
            )
        }
        None => None,
    };
    // As the service user, once the data dir is ours.
    if let Err(e) = crate::twin::node_id::keep(&node_id_source, node_id) {
        tracing::warn!("node id {node_id} not kept, a new one is drawn at restart: {e}");
    }
    // After the load (the twin scans the table) and before clients: no
    // client write is accepted before the link's subscription exists.
    let twin = match &settings.replication {
        Some(r) => {
            let history = persist.as_ref().map_or(0, |p| p.state().history_id());
            // What the disk holds from the twin (kept at the last clean stop,
            // or refreshed while running), so the twin scans only above it:
            // a partial catch-up.
            let resume = match (&persist, &settings.persist) {
                (Some(_), Some(cfg)) => crate::twin::resume::take(&cfg.dir, history),
                _ => Vec::new(),
            };
            if !resume.is_empty() {
                tracing::info!("twin: resuming from the points kept on disk (a partial catch-up)");
            }
            let t = start_twin(
                r,
                &settings,
                &engine,
                history,
                shared.readiness.clone(),
                resume,
            )
            .await?;
            tracing::info!(
                "twin replication: node id {node_id} ({}), listening on {}, peer {}",
                node_id_source.describe(),
                t.listen_addr(),
                r.peer
            );
            let _ = shared.twin.set(t.stats());
            Some(t)
        }
        None => None,
    };
    // With a disk and a twin: keep the resume points current, so that a
    // restart after a crash is a partial catch-up too.
    let keeper = match (&twin, &persist, &settings.persist) {
        (Some(t), Some(p), Some(cfg)) => {
            let stop = tokio_util::sync::CancellationToken::new();
            let (state, stream) = (p.state().clone(), engine.stream().clone());
            let opts = crate::twin::resume::KeepOptions {
                dir: cfg.dir.clone(),
                history: state.history_id(),
                every: crate::twin::resume::KEEP_EVERY,
                skew: settings
                    .replication
                    .as_ref()
                    .map_or(std::time::Duration::ZERO, |r| r.max_clock_skew),
            };
            let task = tokio::spawn(crate::twin::resume::keep_current(
                opts,
                t.position_source(),
                move || stream.last_seq(),
                move || state.last_durable_seq(),
                stop.clone(),
            ));
            Some((stop, task))
        }
        _ => None,
    };
    let authenticated = shared.auth.sasl.is_some() || shared.auth.ascii.is_some();
    for l in listeners.iter() {
        tracing::info!("memtwin {} listening on {}", crate::VERSION, l.describe());
        if let Some(w) = l
            .tcp_addr()
            .and_then(|a| server::exposure_warning(a, authenticated))
        {
            tracing::warn!("{w}");
        }
    }
    let notifier = crate::systemd::Notifier::from_env();
    tokio::spawn(announce_ready(
        notifier.clone(),
        shared.clone(),
        listeners.iter().count(),
    ));
    server::serve(listeners, shared.clone())
        .await
        .context("cannot start the worker threads")?;
    notifier.notify("STOPPING=1");
    // Clients are gone: hand the twin what it does not have yet (bounded),
    // then stop applying its records before the disk writer drains.
    let mut resume = None;
    // Before the final points are saved: no older snapshot may follow them.
    if let Some((stop, task)) = keeper {
        stop.cancel();
        let _ = task.await;
    }
    if let Some(t) = twin {
        t.drain(TWIN_DRAIN_BOUND).await;
        // Final: no link forms while draining (a lower point is always safe).
        resume = Some(t.positions());
        t.stop().await;
    }
    if let Some(p) = persist {
        // Everything the server accepted is in the stream: drain and sync it.
        let store = engine.store();
        let count = store.is_complete().then(|| store.len() as u64);
        let history = p.state().history_id();
        match tokio::task::spawn_blocking(move || p.shutdown_with_count(count)).await {
            Err(_) | Ok(false) => tracing::error!("persistence shutdown failed"),
            // Only now does the disk hold everything the points claim.
            Ok(true) => {
                if let (Some(points), Some(cfg)) = (resume, &settings.persist) {
                    if let Err(e) = crate::twin::resume::save(&cfg.dir, history, &points) {
                        tracing::warn!(
                            "cannot keep the twin resume points ({e}): the next start gets a full scan"
                        );
                    }
                }
            }
        }
    }
    if let Some(p) = &settings.pidfile {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("memtwin stopped");
    Ok(())
}

/// Open (and lock) the data directory, warm-restart the store from it, and start
/// the writer.
fn start_persistence(
    cfg: &PersistConfig,
    engine: &Engine,
    clock: Arc<Clock>,
    memory_limit: usize,
) -> anyhow::Result<Running> {
    tracing::info!(
        "memory budget: {} MiB for items (-m) + {} MiB sled cache (--sled-cache-mb); sled's own \
         overhead can reach several times its cache, see docs/persistence.md",
        memory_limit >> 20,
        cfg.cache_bytes >> 20
    );
    let p = Persistence::open(cfg)?;
    // A large data set can take longer than TimeoutStartSec: keep extending it
    // while the load makes progress, and show it in `systemctl status`.
    let notifier = crate::systemd::Notifier::from_env();
    notifier.notify(&format!(
        "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=loading the data set from {}",
        cfg.dir.display()
    ));
    p.load_with_progress(engine.store(), engine.now(), &mut |items| {
        notifier.notify(&format!(
            "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=warm restart: {items} items loaded"
        ));
    })?;
    Ok(p.start(engine.store(), clock)?)
}

/// `READY=1` once clients are answered: at once, or, with a twin, after the
/// catch-up (client requests are refused meanwhile, and systemd sees progress).
async fn announce_ready(notifier: crate::systemd::Notifier, shared: Arc<Shared>, listeners: usize) {
    let readiness = shared.readiness.clone();
    if !readiness.serving() {
        let peer = shared
            .settings
            .replication
            .as_ref()
            .map_or("", |r| r.peer.as_str());
        let how = if readiness.defers_listening() {
            "the client port listens once caught up"
        } else if readiness.refusal_closes() {
            "their connections are closed unanswered"
        } else {
            "they get a not-ready error"
        };
        tracing::info!(
            "catching up with the twin {peer} before serving: client requests are refused ({how}) until then"
        );
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            let applied = shared.twin.get().map_or(0, |t| {
                t.records_applied.load(std::sync::atomic::Ordering::Relaxed)
            });
            notifier.notify(&format!(
                "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=catching up with the twin {peer}: {applied} records applied"
            ));
            tokio::select! {
                _ = readiness.wait_serving() => break,
                _ = tick.tick() => {}
            }
        }
    }
    notifier.notify(&format!(
        "READY=1\nSTATUS=serving {listeners} listener(s) ({})",
        match readiness.state() {
            crate::twin::Serving::Alone => "alone: the twin is unreachable",
            _ if shared.settings.replication.is_some() => "caught up with the twin",
            _ => "standalone",
        }
    ));
}

/// Bind the replication listener and start the link.
async fn start_twin(
    r: &crate::config::ReplicationSettings,
    settings: &Settings,
    engine: &Arc<Engine>,
    history_id: u128,
    readiness: Arc<crate::twin::Readiness>,
    resume: Vec<crate::protocol::twin::Position>,
) -> anyhow::Result<crate::twin::Twin> {
    use crate::twin::{Twin, TwinConfig};
    let mut cfg = TwinConfig::new(r.listen, r.peer.clone(), r.secret.clone());
    cfg.readiness = readiness;
    cfg.peer_wait = r.peer_wait;
    cfg.resume = resume;
    cfg.ack_timeout = r.ack_timeout;
    cfg.backlog_bytes = r.backlog_bytes;
    cfg.backlog_ttl = r.backlog_ttl;
    cfg.catchup_rate = r.catchup_rate;
    if r.ack_timeout.is_some() {
        // The twin runs with the same flag and waits on our acks: send them
        // as soon as a batch is applied, not on the 10 ms tick.
        cfg.ack_interval = std::time::Duration::ZERO;
    }
    cfg.history_id = history_id;
    cfg.max_clock_skew = r.max_clock_skew;
    cfg.queue_bytes = r.queue_bytes;
    // The largest item must fit one frame (both twins need the same -I).
    cfg.max_frame =
        crate::protocol::twin::MAX_FRAME_DEFAULT.max(settings.item_size_max + (64 << 10));
    Twin::start(crate::twin::engine_store(engine), cfg)
        .await
        .with_context(|| format!("cannot listen for the twin on {}", r.listen))
}

fn spawn_signal_handler(shared: Arc<Shared>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // memcached survives SIGHUP; memtwin rereads its configuration (`reload`).
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                _ = hup.recv() => {
                    // Files are read off the runtime's one thread.
                    let sh = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&sh)).await;
                    continue;
                }
                _ = shared.shutdown.cancelled() => return,
            }
            break;
        }
        shared.shutdown.cancel();
    });
    Ok(())
}
