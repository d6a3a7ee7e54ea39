//! The real store behind [`TwinStore`]: the engine owns the store and the
//! clock (`now`, in seconds) that expiry and delayed flushes are judged by,
//! which `apply_remote` and `scan` need. The twin's subscription is the
//! byte-capped, lossy kind: the publisher never waits for the link.

use super::{Applied, ScanCursor, TwinStore};
use crate::engine::Engine;
use crate::mutation::{FlushSpec, Mutation, Op, SubscribeOptions, Subscription};
use crate::version::Hlc;
use std::sync::Arc;

impl TwinStore for Engine {
    fn hlc(&self) -> &Hlc {
        self.store().hlc()
    }

    fn subscribe(&self, byte_cap: usize) -> Subscription {
        self.stream().subscribe_with(
            1,
            SubscribeOptions {
                byte_cap: Some(byte_cap.max(1)),
                ..Default::default()
            },
        )
    }

    fn apply_remote(&self, m: &Mutation) -> Applied {
        match m.flush {
            // Records carry the flush *state* (what `Store` publishes and
            // scans), but `Store::apply_remote` installs its `(at, ceiling)`
            // as a flush command and ignores `hidden`. An immediate flush
            // lives in `hidden` only: hand it over as the command that
            // produced it. (A delayed flush pending over an older hidden one
            // still loses the older part; see the report to the store.)
            Some(spec) if m.op == Op::Flush && spec.at == 0 => {
                let cmd = Mutation {
                    flush: Some(FlushSpec {
                        at: 0,
                        ceiling: spec.hidden,
                        ..spec
                    }),
                    ..m.clone()
                };
                self.store().apply_remote(&cmd, self.now())
            }
            _ => self.store().apply_remote(m, self.now()),
        }
    }

    fn scan(
        &self,
        from: ScanCursor,
        floor: u64,
        max: usize,
    ) -> (Vec<Arc<Mutation>>, Option<ScanCursor>) {
        self.store().scan(from, floor, max, self.now())
    }
}
