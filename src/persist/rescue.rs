//! The rescue file: what the writer still held when sled wedged, kept for the
//! next start.
//!
//! Why: sled 0.34.7 can wedge for good after an I/O error (see
//! [`super::disk::close_sled`]), and because its concurrency control is one
//! lock for the whole process, no sled handle in the process can take a batch
//! after that; only a restart helps. The writer then holds records that were
//! acknowledged but are not durable yet (up to a second of them under
//! `everysec`) plus what arrived since the error. Rather than lose them with
//! the process, it writes them to `DIR/RESCUE` (written, fsynced, renamed into
//! place, directory fsynced) and exits; the next [`super::disk::Disk::open`]
//! applies the file as one batch on top of what sled recovered, makes it
//! durable and removes it. The entries are resulting states (the writer's
//! last write per disk key), so applying them is idempotent.
//!
//! Format, little-endian:
//!
//! ```text
//! "memtwin-rescue 1\n" | history u128 | count u64 |
//!     count × ( klen u32 | key | vlen u32 (u32::MAX = remove) | value ) |
//! crc32 of everything before
//! ```
//!
//! The codec ([`encode`], [`decode`]) does no I/O; [`write`] and [`read`] do.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"memtwin-rescue 1\n";
/// `vlen` of a removal.
const REMOVE: u32 = u32::MAX;

/// One disk write: a sled key and its new value (None = remove).
pub type Entry = (Vec<u8>, Option<Vec<u8>>);

/// Why a rescue file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RescueError {
    #[error("not a memtwin rescue file")]
    Magic,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("checksum mismatch (damaged)")]
    Checksum,
    #[error("{0} bytes after the last entry")]
    Trailing(usize),
}

/// The file's location in a data directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("RESCUE")
}

pub fn encode<'a>(history: u128, entries: impl ExactSizeIterator<Item = &'a Entry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&history.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, v) in entries {
        out.extend_from_slice(&len32(k.len()).to_le_bytes());
        out.extend_from_slice(k);
        match v {
            Some(v) => {
                out.extend_from_slice(&len32(v.len()).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&REMOVE.to_le_bytes()),
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Keys and values are bounded far below 4 GiB (item size limit); saturate
/// rather than wrap if that ever changed, so decoding fails loudly.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(REMOVE - 1)
}

/// The history id and the entries of an encoded rescue file.
pub fn decode(b: &[u8]) -> Result<(u128, Vec<Entry>), RescueError> {
    if !b.starts_with(MAGIC) {
        return Err(RescueError::Magic);
    }
    if b.len() < MAGIC.len() + 16 + 8 + 4 {
        return Err(RescueError::Truncated(b.len()));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(RescueError::Checksum);
    }
    let mut r = Reader {
        b: body,
        at: MAGIC.len(),
    };
    let history = u128::from_le_bytes(r.take(16)?.try_into().map_err(|_| r.short())?);
    let count = u64::from_le_bytes(r.take(8)?.try_into().map_err(|_| r.short())?);
    let mut entries = Vec::new();
    for _ in 0..count {
        let klen = r.u32()? as usize;
        let key = r.take(klen)?.to_vec();
        let value = match r.u32()? {
            REMOVE => None,
            n => Some(r.take(n as usize)?.to_vec()),
        };
        entries.push((key, value));
    }
    if r.at != body.len() {
        return Err(RescueError::Trailing(body.len() - r.at));
    }
    Ok((history, entries))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn short(&self) -> RescueError {
        RescueError::Truncated(self.at)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RescueError> {
        let end = self.at.checked_add(n).ok_or(self.short())?;
        let s = self.b.get(self.at..end).ok_or(self.short())?;
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, RescueError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Write `DIR/RESCUE` durably (temporary file, fsync, rename, fsync dir).
pub fn write(dir: &Path, history: u128, entries: &[Entry]) -> io::Result<()> {
    let tmp = dir.join("RESCUE.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(history, entries.iter()))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    File::open(dir)?.sync_all()
}

/// The rescue file's bytes, or None when there is none.
pub fn read(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path(dir)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove the applied rescue file durably.
pub fn remove(dir: &Path) -> io::Result<()> {
    std::fs::remove_file(path(dir))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn puts_and_removes_round_trip() {
        let entries: Vec<Entry> = vec![
            (b"ia".to_vec(), Some(b"value".to_vec())),
            (b"ib".to_vec(), None),
            (b"mlast_seq".to_vec(), Some(7u64.to_le_bytes().to_vec())),
            (b"ic".to_vec(), Some(Vec::new())),
        ];
        let b = encode(0xabc, entries.iter());
        assert_eq!(decode(&b), Ok((0xabc, entries)));
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let entries: Vec<Entry> = vec![(b"ia".to_vec(), Some(vec![1; 40]))];
        let b = encode(1, entries.iter());
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(decode(&d).is_err(), "flip at {i} accepted");
        }
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    proptest! {
        #[test]
        fn any_entries_round_trip(
            history in any::<u128>(),
            entries in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100))),
                0..20),
        ) {
            let b = encode(history, entries.iter());
            prop_assert_eq!(decode(&b), Ok((history, entries)));
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&b);
            let _ = decode(&with_magic);
        }
    }
}
