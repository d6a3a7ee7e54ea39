//! Per-prefix counters: `stats detail on|off|dump`, as memcached keeps them.
//!
//! Why: a session store's keys say what they are by their prefix
//! (memcached-session-manager writes `validity:`, `lock:` and `bak:` next to
//! the session itself), and `stats detail dump` is how a memcached operator
//! sees the traffic per kind of key without a packet capture.
//!
//! What is counted follows memcached 1.6.18 (measured, not guessed): the
//! prefix is the key up to the first delimiter (`-D`, default `:`; a key that
//! starts with it has the empty prefix), and keys without a delimiter are not
//! counted. `get` counts every key looked up by text `get`/`gets`/`gat`/`gats`
//! and binary get/getk/getq/getkq/gat/gatq/touch, `hit` those found; `set`
//! counts every text or binary set/add/replace/append/prepend/cas *attempt*
//! (stored or not); `del` every text or binary delete. Meta commands, incr,
//! decr and text touch are not counted. `stats reset` clears the table;
//! `stats detail off` stops counting but keeps what was counted. `-D` turns
//! counting on at start, as it does in memcached.
//!
//! Cost: nothing but one relaxed atomic load per command while off (the
//! default). memcached's table grows without bound; this one stops adding new
//! prefixes at [`MAX_PREFIXES`] (counted in `dropped`) so random keys with
//! colons cannot grow the daemon's memory.

use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Distinct prefixes kept; later new ones are not counted.
pub const MAX_PREFIXES: usize = 10_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    get: u64,
    hit: u64,
    set: u64,
    del: u64,
}

/// The table behind `stats detail`.
#[derive(Debug)]
pub struct PrefixStats {
    on: AtomicBool,
    delimiter: u8,
    table: DashMap<Box<[u8]>, Counts>,
    /// Records not kept because the table was full.
    dropped: AtomicU64,
}

impl PrefixStats {
    pub fn new(delimiter: u8, on: bool) -> Self {
        PrefixStats {
            on: AtomicBool::new(on),
            delimiter,
            table: DashMap::new(),
            dropped: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// A key looked up (`hit`: it was found).
    #[inline]
    pub fn get(&self, key: &[u8], hit: bool) {
        if self.enabled() {
            self.record(key, |c| {
                c.get += 1;
                c.hit += u64::from(hit);
            });
        }
    }

    /// A storage command's attempt on `key`.
    #[inline]
    pub fn set(&self, key: &[u8]) {
        if self.enabled() {
            self.record(key, |c| c.set += 1);
        }
    }

    /// A delete of `key`.
    #[inline]
    pub fn delete(&self, key: &[u8]) {
        if self.enabled() {
            self.record(key, |c| c.del += 1);
        }
    }

    fn record(&self, key: &[u8], f: impl FnOnce(&mut Counts)) {
        let Some(end) = key.iter().position(|&b| b == self.delimiter) else {
            return;
        };
        let prefix = &key[..end];
        if let Some(mut c) = self.table.get_mut(prefix) {
            f(&mut c);
            return;
        }
        if self.table.len() >= MAX_PREFIXES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        f(&mut self.table.entry(prefix.into()).or_default());
    }

    /// `stats reset`.
    pub fn clear(&self) {
        self.table.clear();
        self.dropped.store(0, Ordering::Relaxed);
    }

    /// Records not kept because [`MAX_PREFIXES`] prefixes were already known.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The `stats detail dump` text: one `PREFIX` line per prefix (sorted;
    /// memcached's order is its hash table's), then `END`.
    pub fn dump(&self) -> Vec<u8> {
        let mut rows: Vec<(Box<[u8]>, Counts)> = self
            .table
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(rows.len() * 48 + 5);
        for (prefix, c) in rows {
            out.extend_from_slice(b"PREFIX ");
            out.extend_from_slice(&prefix);
            out.extend_from_slice(
                format!(
                    " get {} hit {} set {} del {}\r\n",
                    c.get, c.hit, c.set, c.del
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"END\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(p: &PrefixStats) -> String {
        String::from_utf8(p.dump()).expect("ascii")
    }

    #[test]
    fn counts_by_prefix_like_memcached() {
        let p = PrefixStats::new(b':', true);
        p.set(b"a:1");
        p.set(b"nodelim");
        p.get(b"a:1", true);
        p.get(b"a:2", false);
        p.get(b"nodelim", true);
        p.delete(b"a:3");
        p.set(b"::x");
        p.set(b":lead");
        assert_eq!(
            dump(&p),
            "PREFIX  get 0 hit 0 set 2 del 0\r\nPREFIX a get 2 hit 1 set 1 del 1\r\nEND\r\n"
        );
    }

    #[test]
    fn off_keeps_the_table_and_reset_clears_it() {
        let p = PrefixStats::new(b':', false);
        p.get(b"a:1", true);
        assert_eq!(dump(&p), "END\r\n", "off by default");
        p.set_enabled(true);
        p.get(b"a:1", true);
        p.set_enabled(false);
        p.get(b"a:1", true);
        assert_eq!(dump(&p), "PREFIX a get 1 hit 1 set 0 del 0\r\nEND\r\n");
        p.clear();
        assert_eq!(dump(&p), "END\r\n");
    }

    #[test]
    fn another_delimiter() {
        let p = PrefixStats::new(b'_', true);
        p.set(b"sess_1");
        p.set(b"a:1");
        assert_eq!(dump(&p), "PREFIX sess get 0 hit 0 set 1 del 0\r\nEND\r\n");
    }

    #[test]
    fn the_table_is_bounded() {
        let p = PrefixStats::new(b':', true);
        for i in 0..MAX_PREFIXES + 5 {
            p.set(format!("{i}:k").as_bytes());
        }
        p.set(b"0:again");
        assert_eq!(p.table.len(), MAX_PREFIXES);
        assert_eq!(p.dropped(), 5);
        assert!(dump(&p).contains("PREFIX 0 get 0 hit 0 set 2 del 0\r\n"));
    }
}
