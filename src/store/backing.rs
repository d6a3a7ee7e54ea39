//! What the store consults when a key is not in RAM: the persisted data set.
//!
//! With persistence on, RAM is a cache over disk: items evicted for lack of
//! memory (or never loaded because the data set is larger than `-m`) are still
//! on disk, and a miss in RAM must read them back. The store knows nothing about
//! sled; it only sees this trait, installed once at start-up by
//! [`Store::set_backing`](super::Store::set_backing). Without a backing (memory
//! only) every path is exactly what it was.
//!
//! Consistency contract (see the `Store` docs for how it is used):
//!
//! * the backing is written only by the persistence writer, which applies the
//!   mutation stream in sequence order, so what [`Backing::fetch`] returns
//!   reflects every record up to [`Backing::applied_seq`] and nothing later;
//! * `fetch` is called with the key's shard lock held, so no write to that key
//!   can race the read-through and the value it re-inserts.

use crate::mutation::ItemState;

/// An item as the backing holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub state: ItemState,
    /// Sequence number of the mutation that produced this version.
    pub seq: u64,
}

/// One step of [`Backing::scan`].
#[derive(Debug, Default)]
pub struct BackingScan {
    pub items: Vec<(bytes::Bytes, Persisted)>,
    pub next: Option<bytes::Bytes>,
}

/// Why a backing read failed. The store treats it as a miss (and counts it):
/// the request path has no error reply for reads.
#[derive(Debug, Clone, thiserror::Error)]
#[error("persisted data unreadable: {0}")]
pub struct BackingError(pub String);

/// The persisted data set, as seen by the store.
pub trait Backing: Send + Sync + std::fmt::Debug {
    /// The persisted version of `key`, if any (dead items included: the store
    /// decides liveness). Called with the key's shard lock held; must not call
    /// back into the store.
    fn fetch(&self, key: &[u8]) -> Result<Option<Persisted>, BackingError>;

    /// Persisted items and tombstones whose version is above `floor`, in key
    /// order after the key `after` (from the first when empty), about `max`
    /// of them: (key, item) pairs and the key to resume after, None at the
    /// end. Not called with a shard lock held.
    fn scan(&self, after: &[u8], floor: u64, max: usize) -> Result<BackingScan, BackingError>;

    /// The highest sequence number whose record [`Backing::fetch`] reflects.
    fn applied_seq(&self) -> u64;

    /// Extra `stats` lines (name, value).
    fn report(&self, out: &mut Vec<(&'static str, String)>);
}
