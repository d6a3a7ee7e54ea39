//! Resume points kept across a clean restart (`<data-dir>/TWIN_RESUME`).
//!
//! A node presents, per origin, the version up to which its twin said it
//! holds everything; the twin then scans only above it. In memory that point
//! is lost at every restart, and a node with a data dir would get a full scan
//! of its twin's table although its disk holds nearly all of it.
//!
//! A resume point may only claim what the disk really holds, so it is
//! written once, at a clean shutdown, *after* the disk writer has synced
//! everything; and it is deleted (durably) as soon as it is read at start.
//! After a crash there is no file, and the twin scans everything: under
//! `--fsync everysec` the last second of applied records may be gone, and a
//! stale resume point would hide that gap forever. The data set's history id
//! is in the file too: a point is never applied to another data set.

use crate::protocol::twin::Position;
use std::io::{self, Write};
use std::path::Path;

pub const FILE_NAME: &str = "TWIN_RESUME";
const MAGIC: &str = "memtwin-twin-resume 1";

/// Read and delete the resume points of `dir`, if they belong to `history`.
/// A missing file is no points; an unreadable or foreign one is no points
/// and a warning.
pub fn take(dir: &Path, history: u128) -> Vec<Position> {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!("{}: {e}; the twin will scan everything", path.display());
            return Vec::new();
        }
    };
    // Gone before anything is served: a crash from now on must not reuse it.
    if let Err(e) = std::fs::remove_file(&path).and_then(|()| sync_dir(dir)) {
        tracing::warn!(
            "cannot remove {}: {e}; ignoring it, the twin will scan everything",
            path.display()
        );
        return Vec::new();
    }
    match parse(&text, history) {
        Some(p) => p,
        None => {
            tracing::warn!(
                "{} is not this data set's (or is damaged); the twin will scan everything",
                path.display()
            );
            Vec::new()
        }
    }
}

/// Write the resume points durably (temp file, fsync, rename, fsync dir).
pub fn save(dir: &Path, history: u128, positions: &[Position]) -> io::Result<()> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(render(history, positions).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE_NAME))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn render(history: u128, positions: &[Position]) -> String {
    let mut s = format!("{MAGIC} {history:032x}\n");
    for p in positions {
        s.push_str(&format!("{} {} {}\n", p.origin, p.seq, p.version));
    }
    s
}

fn parse(text: &str, history: u128) -> Option<Vec<Position>> {
    let mut lines = text.lines();
    let head = lines.next()?;
    let hist = head.strip_prefix(MAGIC)?.trim();
    if u128::from_str_radix(hist, 16).ok()? != history {
        return None;
    }
    let mut out = Vec::new();
    for l in lines {
        let mut t = l.split_ascii_whitespace();
        let p = Position {
            origin: t.next()?.parse().ok()?,
            seq: t.next()?.parse().ok()?,
            version: t.next()?.parse().ok()?,
        };
        if t.next().is_some() {
            return None;
        }
        out.push(p);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(origin: u16, version: u64) -> Position {
        Position {
            origin,
            seq: 9,
            version,
        }
    }

    #[test]
    fn saved_points_are_taken_once_and_only_by_their_data_set() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path();
        assert!(take(d, 7).is_empty(), "no file: no points");
        save(d, 7, &[p(2, 1234), p(3, 99)]).expect("save");
        assert_eq!(take(d, 7), vec![p(2, 1234), p(3, 99)]);
        assert!(
            take(d, 7).is_empty(),
            "deleted when read: a crash cannot reuse it"
        );
        save(d, 7, &[p(2, 1234)]).expect("save");
        assert!(
            take(d, 8).is_empty(),
            "another data set's points are ignored"
        );
        assert!(!d.join(FILE_NAME).exists());
    }

    #[test]
    fn damaged_files_give_no_points() {
        for bad in [
            "",
            "memtwin-twin-resume 1 zz\n",
            "memtwin-twin-resume 1 00000000000000000000000000000007\n2 x 3\n",
            "memtwin-twin-resume 1 00000000000000000000000000000007\n2 3\n",
            "memtwin-twin-resume 1 00000000000000000000000000000007\n2 3 4 5\n",
            "something else 00000000000000000000000000000007\n",
        ] {
            assert_eq!(parse(bad, 7), None, "{bad:?}");
        }
        assert_eq!(
            parse(&render(7, &[p(2, 5)]), 7),
            Some(vec![p(2, 5)]),
            "round trip"
        );
    }
}
