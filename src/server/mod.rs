//! Sockets: listeners, the accept loop, connection limits, housekeeping and
//! graceful shutdown. Connections are served by the worker threads' event
//! loops ([`worker`]); protocol work is delegated to [`crate::session`].

mod conn;
pub mod idle_yield;
mod listen;
mod sys;
mod worker;

use crate::session::{ConnEntry, Shared};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::task::TaskTracker;

pub use listen::{bind_all, exposure_warning, Listener, Listeners};

/// How long in-flight connections get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve on already bound listeners until `shared.shutdown` is cancelled.
pub async fn serve(listeners: Listeners, shared: Arc<Shared>) -> std::io::Result<()> {
    let workers = Arc::new(worker::Workers::start(
        &shared,
        shared.settings.threads,
        tokio::runtime::Handle::current(),
    )?);
    let tracker = TaskTracker::new();
    tracker.spawn(housekeeping(shared.clone()));
    let reaper = match spawn_reaper(shared.clone()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(
                "cannot start the reaper thread ({e}); expired items are reclaimed on access only"
            );
            None
        }
    };
    for l in listeners.into_vec() {
        tracker.spawn(accept_loop(
            l,
            shared.clone(),
            tracker.clone(),
            workers.clone(),
        ));
    }
    shared.shutdown.cancelled().await;
    shared.accepting.store(false, Ordering::Relaxed);
    tracker.close();
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish within {:?}", DRAIN_TIMEOUT);
    }
    // The accept loops are gone, so this is the last reference: the workers
    // close idle connections and give busy ones until the deadline.
    match Arc::try_unwrap(workers) {
        Ok(w) => {
            let _ = tokio::task::spawn_blocking(move || w.stop(deadline)).await;
        }
        Err(_) => tracing::warn!("worker threads still referenced at shutdown"),
    }
    if let Some(h) = reaper {
        // It notices the cancellation within one slice (100 ms).
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    Ok(())
}

/// Tick the clock every second and pet the systemd watchdog: this task stops
/// when the runtime is wedged, and so do the pets.
async fn housekeeping(shared: Arc<Shared>) {
    let notifier = crate::systemd::Notifier::from_env();
    let watchdog = crate::systemd::Notifier::watchdog_interval().is_some() && notifier.enabled();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        shared.engine.clock().tick();
        if watchdog {
            notifier.notify("WATCHDOG=1");
        }
    }
}

/// How long one reaper pass over the whole table takes, at most (seconds).
const REAP_PASS_SECS: usize = 600;

/// How often the reaper examines a slice of the table.
const REAP_SLICE: Duration = Duration::from_millis(100);

/// Reclaim expired items on a thread of its own, a slice every 100 ms: a full
/// pass over the table about every ten minutes, at least 10k items a second.
/// Each examined item is a random, cache-cold lookup, so a pass of 10k items
/// costs milliseconds: on a worker thread it stalled every connection of that
/// worker once a second, which showed in p99 at fixed load. A pass per minute
/// (the first choice) made a request cost 4.40 instead of 4.23 µs of CPU at 10 M
/// items (scaling benchmark), where cost per request must not grow with the
/// item count; dead items are also reclaimed on
/// access and by the eviction hand, so the reaper only bounds how long an
/// expired item nobody touches keeps its memory.
fn spawn_reaper(shared: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("memtwin-reaper".into())
        .spawn(move || {
            let slices = (Duration::from_secs(1).as_millis() / REAP_SLICE.as_millis()) as usize;
            while !shared.shutdown.is_cancelled() {
                std::thread::sleep(REAP_SLICE);
                let engine = &shared.engine;
                let store = engine.store();
                let per_second = (store.len() / REAP_PASS_SECS).max(10_000);
                store.reap(engine.now(), per_second.div_ceil(slices));
            }
        })
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    workers: Arc<worker::Workers>,
) {
    let listen_addr = listener.stat_addr();
    // `--not-ready refuse`: connections are refused until caught up.
    let listener = if matches!(listener, Listener::Deferred(..)) {
        tokio::select! {
            _ = shared.readiness.wait_serving() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        match listener.listen() {
            Ok(l) => {
                tracing::info!("listening on {} for clients", l.describe());
                l
            }
            Err(e) => {
                tracing::error!("cannot listen on {listen_addr}: {e}; shutting down");
                shared.shutdown.cancel();
                return;
            }
        }
    } else {
        listener
    };
    let _registered = shared.conns.register(ConnEntry {
        addr: listen_addr.clone(),
        listen_addr: listen_addr.clone(),
        listening: true,
        since: shared.engine.now(),
    });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.shutdown.cancelled() => return,
        };
        let mut stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                shared.engine.stats().bump(|c| &c.listen_disabled_num);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let stats = shared.engine.stats();
        let current = shared.curr_conns.fetch_add(1, Ordering::AcqRel) + 1;
        if current > shared.settings.max_conns {
            shared.curr_conns.fetch_sub(1, Ordering::AcqRel);
            stats.bump(|c| &c.rejected_connections);
            tracker.spawn(async move {
                let _ = stream
                    .write_all(b"ERROR Too many open connections\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        stats.bump(|c| &c.total_connections);
        let entry = ConnEntry {
            addr: stream.peer(),
            listen_addr: listen_addr.clone(),
            listening: false,
            since: shared.engine.now(),
        };
        match stream.into_fd() {
            Ok(fd) => workers.assign(worker::NewConn { fd, entry }),
            Err(e) => {
                tracing::warn!("cannot take over an accepted socket: {e}");
                shared.curr_conns.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}
