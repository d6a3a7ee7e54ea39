//! The real store behind [`TwinStore`]: the engine owns the store and the
//! clock (`now`, in seconds) that expiry and delayed flushes are judged by,
//! which `apply_remote` and `scan` need. The twin's subscription is the
//! byte-capped, lossy, local-only kind: the publisher never waits for the
//! link, and records applied from the twin are not even built for it.

use super::{Applied, ScanCursor, TwinStore};
use crate::engine::Engine;
use crate::mutation::{Mutation, SubscribeOptions, Subscription};
use crate::version::Hlc;
use std::sync::Arc;
use std::time::Duration;

impl TwinStore for Engine {
    fn hlc(&self) -> &Hlc {
        self.store().hlc()
    }

    fn subscribe(&self, byte_cap: usize, ack_timeout: Option<Duration>) -> Subscription {
        self.stream().subscribe_with(
            1,
            SubscribeOptions {
                byte_cap: Some(byte_cap.max(1)),
                // Records applied from the twin are never shipped back.
                local_only: true,
                // --replication-ack: writers wait for the twin (bounded).
                blocking: ack_timeout.is_some(),
                ack_timeout,
                ..Default::default()
            },
        )
    }

    fn apply_remote(&self, m: &Mutation) -> Applied {
        self.store().apply_remote(m, self.now())
    }

    fn scan(
        &self,
        from: ScanCursor,
        floor: u64,
        max: usize,
    ) -> (Vec<Arc<Mutation>>, Option<ScanCursor>) {
        self.store().scan(from, floor, max, self.now())
    }

    fn scan_percent(&self, at: &ScanCursor) -> u8 {
        self.store().scan_percent(at)
    }
}
