//! The `memtwin` daemon binary: parse flags, set up logging, run.

use memtwin::config::Settings;
use std::process::ExitCode;

#[global_allocator]
static ALLOC: memtwin::store::pages::HugePageAdvisingAlloc =
    memtwin::store::pages::HugePageAdvisingAlloc;

fn main() -> ExitCode {
    // `memtwin import ...`: the migration tool, not the daemon.
    if std::env::args_os().nth(1).is_some_and(|a| a == "import") {
        return memtwin::import::main(std::env::args_os().skip(1));
    }
    let settings = match Settings::from_args(std::env::args_os()) {
        Ok(s) => s,
        Err(e) => {
            if let Some(clap_err) = e.downcast_ref::<clap::Error>() {
                clap_err.exit();
            }
            eprintln!("memtwin: {e:#}");
            return ExitCode::from(64);
        }
    };
    if settings.check_config {
        print!("{}", memtwin::config::effective::render(&settings));
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(memtwin::reload::level_filter(settings.verbose))
    });
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colour only for a person at a terminal: journald, pipes and log files
    // get plain lines (NO_COLOR, https://no-color.org, turns it off there too).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && !journald
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false);
    // SIGHUP sets the level again (memtwin::reload).
    if journald {
        let builder = builder.without_time().with_filter_reloading();
        level_hook(builder.reload_handle());
        builder.init();
    } else {
        let builder = builder.with_filter_reloading();
        level_hook(builder.reload_handle());
        builder.init();
    }
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    if settings.daemon {
        if let Err(e) = memtwin::daemon::daemonize() {
            eprintln!("memtwin: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    // Connections are served by `-t` worker threads of their own (server::worker);
    // the runtime only accepts, keeps time, handles signals and waits for acks.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("memtwin-io")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("memtwin: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(memtwin::daemon::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("memtwin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Let `memtwin::reload` change the log filter through `handle`.
fn level_hook<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) {
    memtwin::reload::set_level_hook(Box::new(move |verbose| {
        let filter = tracing_subscriber::EnvFilter::new(memtwin::reload::level_filter(verbose));
        handle.reload(filter).map_err(|e| e.to_string())
    }));
}
