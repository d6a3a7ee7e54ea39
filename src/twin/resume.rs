//! Resume points kept across a restart (`<data-dir>/TWIN_RESUME`).
//!
//! A node presents, per origin, the version up to which its twin said it
//! holds everything; the twin then scans only above it. In memory that point
//! is lost at every restart, and a node with a data dir would get a full scan
//! of its twin's table although its disk holds nearly all of it.
//!
//! A resume point may only claim what the disk really holds. So it is
//! written at a clean shutdown *after* the disk writer has synced
//! everything, and, while the node runs, about once a second by
//! [`keep_current`]: a snapshot of the points, taken together with the
//! mutation stream's position, is written only once the disk writer's
//! durable sequence has passed that position (every record the points count
//! was applied, so published, before the snapshot), with its versions
//! lowered by `--max-clock-skew`. After `kill -9` the file is a couple of
//! seconds old, and the twin resends from 2 s below it: a partial catch-up,
//! and this node's own writes that `--fsync everysec` lost in the crash come
//! back from the twin (they carry this node's clock, the points the twin's:
//! the lowering covers the skew between them). With `--fsync no` nothing is ever known durable,
//! so only a clean shutdown keeps a point. The file is deleted (durably) as
//! soon as it is read at start, and the data set's history id is in it: a
//! point is never applied to another data set.

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

/// `points` with each version moved `by` earlier (a version 0 stays 0).
pub fn lowered(points: Vec<Position>, by: std::time::Duration) -> Vec<Position> {
    if by.is_zero() {
        return points;
    }
    let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
    points
        .into_iter()
        .map(|mut p| {
            if p.version != 0 {
                let v = crate::version::Version::from_raw(p.version);
                p.version =
                    crate::version::Version::floor_for_millis(v.millis().saturating_sub(by_ms))
                        .get();
            }
            p
        })
        .collect()
}

/// How often a running node refreshes its kept resume points.
pub const KEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Snapshots waiting for the disk to catch up (a stalled disk keeps the oldest).
const PENDING_MAX: usize = 16;

/// Where [`keep_current`] writes, how often, and by how much it lowers.
pub struct KeepOptions {
    pub dir: std::path::PathBuf,
    pub history: u128,
    pub every: std::time::Duration,
    pub skew: std::time::Duration,
}

/// While the node runs: every `every`, snapshot `positions()` with
/// `stream_seq()` (read after them), and write the newest snapshot whose
/// stream position `durable_seq()` has reached, its versions lowered by
/// `skew` (the largest clock skew the link accepts): this node's own writes
/// that a crash loses carry its clock, the points carry the twin's, and the
/// twin must resend those writes too. Ends with `stop`; the caller awaits it
/// before the final save at shutdown.
pub async fn keep_current(
    opts: KeepOptions,
    positions: impl Fn() -> Vec<Position> + Send + 'static,
    stream_seq: impl Fn() -> u64 + Send + 'static,
    durable_seq: impl Fn() -> u64 + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) {
    let KeepOptions {
        dir,
        history,
        every,
        skew,
    } = opts;
    let mut pending: std::collections::VecDeque<(u64, Vec<Position>)> = Default::default();
    let mut saved: Vec<Position> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let points = positions();
        let seq = stream_seq();
        if !points.is_empty() && pending.back().is_none_or(|(_, p)| *p != points) {
            if pending.len() == PENDING_MAX {
                pending.pop_back();
            }
            pending.push_back((seq, points));
        }
        let durable = durable_seq();
        let mut ready = None;
        while pending.front().is_some_and(|(s, _)| *s <= durable) {
            ready = pending.pop_front().map(|(_, p)| p);
        }
        let Some(points) = ready.filter(|p| *p != saved) else {
            continue;
        };
        let (d, p) = (dir.clone(), lowered(points.clone(), skew));
        match tokio::task::spawn_blocking(move || save(&d, history, &p)).await {
            Ok(Ok(())) => saved = points,
            Ok(Err(e)) => tracing::warn!("cannot refresh the twin resume points: {e}"),
            Err(_) => return,
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

    #[test]
    fn lowered_points_move_back_by_the_skew() {
        use crate::version::Version;
        let v = Version::floor_for_millis(1_800_000_010_000).get() | 5;
        let p = vec![
            Position {
                origin: 1,
                seq: 9,
                version: v,
            },
            Position {
                origin: 2,
                seq: 0,
                version: 0,
            },
        ];
        let l = lowered(p, std::time::Duration::from_secs(5));
        assert_eq!(
            l[0].version,
            Version::floor_for_millis(1_800_000_005_000).get()
        );
        assert_eq!((l[0].origin, l[0].seq), (1, 9));
        assert_eq!(l[1].version, 0);
    }

    #[tokio::test]
    async fn kept_points_follow_the_durable_sequence() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().expect("tmp");
        let pos = |v: u64| {
            vec![Position {
                origin: 2,
                seq: v,
                version: v * 10,
            }]
        };
        let points = Arc::new(Mutex::new(pos(1)));
        let (seq, durable) = (Arc::new(AtomicU64::new(10)), Arc::new(AtomicU64::new(5)));
        let stop = tokio_util::sync::CancellationToken::new();
        let (p2, s2, d2) = (points.clone(), seq.clone(), durable.clone());
        let opts = KeepOptions {
            dir: dir.path().to_path_buf(),
            history: 7,
            every: std::time::Duration::from_millis(10),
            skew: std::time::Duration::ZERO,
        };
        let task = tokio::spawn(keep_current(
            opts,
            move || p2.lock().expect("lock").clone(),
            move || s2.load(Ordering::SeqCst),
            move || d2.load(Ordering::SeqCst),
            stop.clone(),
        ));
        let kept = || {
            std::fs::read_to_string(dir.path().join(FILE_NAME))
                .ok()
                .and_then(|t| parse(&t, 7))
        };
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(80));
        settle().await;
        assert_eq!(kept(), None, "not durable yet: nothing kept");
        durable.store(10, Ordering::SeqCst);
        settle().await;
        assert_eq!(kept(), Some(pos(1)));
        // Newer points, their records not on disk yet: the old ones stay.
        *points.lock().expect("lock") = pos(2);
        seq.store(20, Ordering::SeqCst);
        durable.store(15, Ordering::SeqCst);
        settle().await;
        assert_eq!(kept(), Some(pos(1)));
        durable.store(20, Ordering::SeqCst);
        settle().await;
        assert_eq!(kept(), Some(pos(2)));
        stop.cancel();
        task.await.expect("ends");
    }

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
