//! `--check-config`: the settings memtwin would run with, as a TOML file.
//!
//! An operator who merged flags, a config file and defaults wants to see the
//! result before a restart, in the form they would write it: the output uses
//! the config file's key names, so it can be saved and used as `--config`.
//! The twin's secret is never printed (only the file it comes from), and
//! settings that take effect elsewhere (`-o` warnings) are listed as comments.

use super::{BindingProtocol, Settings};
use toml::{Table, Value};

/// The effective settings, as TOML text.
pub fn render(s: &Settings) -> String {
    let mut t = Table::new();
    let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let path = |p: &std::path::Path| Value::String(p.display().to_string());
    t.insert("port".into(), int(u64::from(s.port)));
    t.insert(
        "listen".into(),
        Value::Array(s.listen.iter().cloned().map(Value::String).collect()),
    );
    if let Some(p) = &s.unix_socket {
        t.insert("unix-socket".into(), path(p));
        t.insert(
            "unix-mask".into(),
            Value::String(format!("{:o}", s.unix_mask)),
        );
    }
    t.insert("memory-limit".into(), int((s.memory_limit >> 20) as u64));
    t.insert("conn-limit".into(), int(s.max_conns as u64));
    t.insert("threads".into(), int(s.threads as u64));
    t.insert(
        "max-item-size".into(),
        Value::String(size_text(s.item_size_max)),
    );
    t.insert("disable-evictions".into(), Value::Boolean(!s.evict));
    t.insert("disable-cas".into(), Value::Boolean(!s.cas));
    t.insert("disable-flush-all".into(), Value::Boolean(!s.flush_enabled));
    t.insert("enable-shutdown".into(), Value::Boolean(s.shutdown_enabled));
    t.insert("verbose".into(), int(u64::from(s.verbose)));
    let protocol = match s.protocol {
        BindingProtocol::Auto => "auto",
        BindingProtocol::Ascii => "ascii",
        BindingProtocol::Binary => "binary",
    };
    t.insert("protocol".into(), Value::String(protocol.into()));
    t.insert("enable-sasl".into(), Value::Boolean(s.sasl));
    if let Some(p) = &s.sasl_pwdb {
        t.insert("sasl-pwdb".into(), path(p));
    }
    if let Some(p) = &s.auth_file {
        t.insert("auth-file".into(), path(p));
    }
    if let Some(u) = &s.user {
        t.insert("user".into(), Value::String(u.clone()));
    }
    if let Some(p) = &s.pidfile {
        t.insert("pidfile".into(), path(p));
    }
    t.insert("listen-backlog".into(), int(u64::from(s.backlog)));
    t.insert("idle-timeout".into(), int(s.idle_timeout));
    if let Some(a) = s.metrics_listen {
        t.insert("metrics-listen".into(), Value::String(a.to_string()));
    }
    if let Some(p) = &s.persist {
        t.insert("data-dir".into(), path(&p.dir));
        t.insert("fsync".into(), Value::String(p.fsync.as_str().into()));
        t.insert("sled-cache-mb".into(), int(p.cache_bytes >> 20));
    }
    if let Some(id) = s.node_id {
        t.insert("node-id".into(), int(u64::from(id)));
    }
    t.insert("tombstone-ttl".into(), int(s.tombstone_ttl));
    if let Some(r) = &s.replication {
        t.insert("peer".into(), Value::String(r.peer.clone()));
        t.insert(
            "replication-listen".into(),
            Value::String(r.listen.to_string()),
        );
        t.insert("replication-secret".into(), path(&r.secret_file));
        t.insert("max-clock-skew".into(), int(r.max_clock_skew.as_secs()));
        t.insert(
            "replication-queue-mb".into(),
            int((r.queue_bytes >> 20) as u64),
        );
        let wait = match r.peer_wait {
            crate::twin::PeerWait::For(d) => int(d.as_secs()),
            crate::twin::PeerWait::Forever => Value::String("forever".into()),
        };
        t.insert("peer-wait".into(), wait);
        t.insert(
            "not-ready".into(),
            Value::String(r.not_ready.as_str().into()),
        );
        t.insert(
            "replication-ack".into(),
            Value::Boolean(r.ack_timeout.is_some()),
        );
        if let Some(d) = r.ack_timeout {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            t.insert("replication-ack-timeout".into(), int(ms));
        }
        t.insert(
            "replication-backlog-mb".into(),
            int((r.backlog_bytes >> 20) as u64),
        );
        t.insert(
            "replication-backlog-ttl".into(),
            int(r.backlog_ttl.as_secs()),
        );
        t.insert("replication-catchup-rate".into(), int(r.catchup_rate >> 20));
    }
    let mut out = String::from(
        "# memtwin: effective settings (command line, then the config file, then defaults)\n",
    );
    for w in &s.warnings {
        out.push_str(&format!("# warning: {w}\n"));
    }
    out.push_str(&t.to_string());
    out
}

/// `-I` as the flag takes it: bytes, or k/m when exact.
fn size_text(bytes: usize) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{}m", bytes >> 20)
    } else if bytes % 1024 == 0 {
        format!("{}k", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::settings;

    #[test]
    fn the_output_reads_back_as_the_same_settings() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a-long-enough-shared-secret-for-tests\n").expect("write");
        let secret_s = secret.to_str().expect("utf8");
        let data = dir.path().join("data");
        let data_s = data.to_str().expect("utf8");
        let s = settings(&[
            "-p",
            "22122",
            "-m",
            "128",
            "-I",
            "2m",
            "-c",
            "77",
            "-M",
            "--data-dir",
            data_s,
            "--fsync",
            "always",
            "--peer",
            "127.0.0.3:23122",
            "--replication-secret",
            secret_s,
            "--replication-ack",
            "--peer-wait",
            "forever",
        ]);
        let text = render(&s);
        assert!(
            !text.contains("a-long-enough"),
            "the secret is never printed"
        );
        let file = dir.path().join("effective.toml");
        std::fs::write(&file, &text).expect("write");
        let again = settings(&["--config", file.to_str().expect("utf8")]);
        assert_eq!(render(&again), text, "round trip:\n{text}");
        assert_eq!(again.port, 22122);
        assert_eq!(again.item_size_max, 2 << 20);
        assert!(!again.evict);
        let r = again.replication.expect("twin");
        assert_eq!(r.peer_wait, crate::twin::PeerWait::Forever);
        assert!(r.ack_timeout.is_some());
        assert_eq!(
            again.persist.map(|p| p.fsync),
            Some(crate::persist::FsyncMode::Always)
        );
    }

    #[test]
    fn defaults_render_and_sizes_keep_their_units() {
        let text = render(&settings(&[]));
        assert!(text.contains("port = 11211"), "{text}");
        assert!(text.contains("max-item-size = \"1m\""), "{text}");
        assert!(!text.contains("data-dir"), "memory only by default");
        assert_eq!(size_text(512 << 10), "512k");
        assert_eq!(size_text(1500), "1500");
    }
}
