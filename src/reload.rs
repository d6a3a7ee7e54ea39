//! SIGHUP: reread what can change without a restart, dropping no connection.
//!
//! Why: memcached survives SIGHUP, and `systemctl reload` (the packaged unit's
//! `ExecReload`) sends it; before this, SIGHUP's default action killed
//! memtwin. What a reload changes:
//!
//! * the log level (`verbose` in the config file, or `-v`): unless `RUST_LOG`
//!   is set, which keeps deciding;
//! * the users in the SASL password database and the ASCII auth file, as the
//!   reread settings name them (see [`crate::auth::Auth::reload`]): a
//!   connection that already authenticated stays authenticated; new
//!   authentications use the new users.
//!
//! The settings are reread exactly as at start-up (the same arguments, the
//! config file, the memcached.conf it names) and validated in full first; if
//! that fails, nothing changes and the log says why. Everything else (ports,
//! memory, persistence, the twin) needs a restart, and a reload that finds it
//! changed says so. Files are read as the service user (after `-u`), so they
//! must be readable by it.

use crate::config::Settings;
use crate::session::Shared;
use std::sync::OnceLock;

/// Sets the log level from a `-v` count; installed by the binary, which owns
/// the subscriber.
pub type LevelHook = Box<dyn Fn(u8) -> Result<(), String> + Send + Sync>;

static LEVEL_HOOK: OnceLock<LevelHook> = OnceLock::new();

/// Install the log-level hook (once; later calls are ignored).
pub fn set_level_hook(hook: LevelHook) {
    let _ = LEVEL_HOOK.set(hook);
}

/// The `tracing` filter of a `-v` count.
pub fn level_filter(verbose: u8) -> String {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    format!("memtwin={level},warn")
}

/// Reread the settings and apply what can change live.
pub fn reload(shared: &Shared) {
    tracing::info!("SIGHUP: rereading the configuration");
    let new = match Settings::from_args(std::env::args_os()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("reload: the configuration is not valid, nothing changed: {e:#}");
            return;
        }
    };
    apply_level(&new);
    shared.auth.reload(&new);
    warn_about_restart_only(&shared.settings, &new);
}

fn apply_level(new: &Settings) {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing::info!("reload: RUST_LOG is set and keeps deciding the log level");
        return;
    }
    match LEVEL_HOOK.get().map(|set| set(new.verbose)) {
        Some(Ok(())) => tracing::info!("reload: log filter {}", level_filter(new.verbose)),
        Some(Err(e)) => tracing::warn!("reload: cannot change the log level: {e}"),
        None => {}
    }
}

/// Name the settings that changed but only take effect after a restart.
fn warn_about_restart_only(old: &Settings, new: &Settings) {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("port (-p)", old.port != new.port);
    check("listen (-l)", old.listen != new.listen);
    check("memory-limit (-m)", old.memory_limit != new.memory_limit);
    check("max-conns (-c)", old.max_conns != new.max_conns);
    check("threads (-t)", old.threads != new.threads);
    check("max-item-size (-I)", old.item_size_max != new.item_size_max);
    check(
        "data-dir / fsync",
        old.persist.as_ref().map(|p| (&p.dir, p.fsync))
            != new.persist.as_ref().map(|p| (&p.dir, p.fsync)),
    );
    check(
        "peer",
        old.replication.as_ref().map(|r| &r.peer) != new.replication.as_ref().map(|r| &r.peer),
    );
    if !changed.is_empty() {
        tracing::warn!(
            "reload: {} changed but only take effect after a restart",
            changed.join(", ")
        );
    }
}
