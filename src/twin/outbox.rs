//! The outgoing queue: the store's byte-capped subscription, bridged from
//! its crossbeam channel into the runtime.
//!
//! A small thread blocks on the channel and hands over everything queued at
//! once, so the async sender wakes once per burst, not once per record, and
//! no task polls. The byte cap covers records until the sender takes them
//! ([`Outbox::take`] reports them consumed to the gauge), so memory held for
//! the link stays bounded whether or not the link is up.

use super::backlog::Backlog;
use super::stats::TwinStats;
use crate::mutation::{Mutation, QueueGauge, Subscription};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the bridge thread looks whether the runtime side is gone.
const POLL: Duration = Duration::from_millis(200);

pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Vec<Arc<Mutation>>>,
    pub gauge: Arc<QueueGauge>,
    pending: std::collections::VecDeque<Arc<Mutation>>,
    bridge: Option<std::thread::JoinHandle<()>>,
    /// Highest sequence number taken so far.
    taken: u64,
    /// Every shipped-kind record taken, kept for replay after a short cut.
    pub backlog: Backlog,
    /// The queue's drop count when last looked at (a change is a gap).
    seen_overflows: u64,
    /// The node's clock (`hlc().last()`), for the backlog's gap point.
    clock: Box<dyn Fn() -> u64 + Send>,
    stats: Arc<TwinStats>,
}

impl Outbox {
    /// Start bridging `sub`. The thread ends when the outbox is dropped.
    pub fn new(
        sub: Subscription,
        backlog: Backlog,
        clock: Box<dyn Fn() -> u64 + Send>,
        stats: Arc<TwinStats>,
    ) -> std::io::Result<Outbox> {
        let (tx, rx) = mpsc::unbounded_channel();
        let Subscription {
            rx: chan, gauge, ..
        } = sub;
        let bridge = std::thread::Builder::new()
            .name("twin-outbox".into())
            .spawn(move || bridge(chan, tx))?;
        Ok(Outbox {
            rx,
            gauge,
            pending: Default::default(),
            bridge: Some(bridge),
            taken: 0,
            backlog,
            seen_overflows: 0,
            clock,
            stats,
        })
    }

    /// Wait until something is queued (cancel-safe).
    pub async fn ready(&mut self) {
        if !self.pending.is_empty() {
            return;
        }
        match self.rx.recv().await {
            Some(v) => self.pending.extend(v),
            // The bridge is gone (the subscription closed): never ready again.
            None => std::future::pending().await,
        }
    }

    /// Take the next queued record without waiting.
    pub fn take(&mut self) -> Option<Arc<Mutation>> {
        if self.pending.is_empty() {
            while let Ok(v) = self.rx.try_recv() {
                self.pending.extend(v);
                if self.pending.len() >= 4096 {
                    break;
                }
            }
        }
        let m = self.pending.pop_front()?;
        self.gauge.consumed(&m);
        self.taken = self.taken.max(m.seq);
        let drops = self.gauge.overflows();
        if drops != self.seen_overflows {
            self.seen_overflows = drops;
            self.backlog.gap((self.clock)());
        }
        if m.is_shipped() {
            let trimmed = self.backlog.trimmed;
            self.backlog.push(&m);
            self.stats
                .note_backlog(&self.backlog, self.backlog.trimmed - trimmed);
        }
        Some(m)
    }

    /// Highest sequence number taken from the queue so far.
    pub fn taken_seq(&self) -> u64 {
        self.taken
    }

    /// The next queued record, if it is one to ship, peeked for sizing.
    pub fn peek(&mut self) -> Option<&Arc<Mutation>> {
        if self.pending.is_empty() {
            if let Ok(v) = self.rx.try_recv() {
                self.pending.extend(v);
            }
        }
        self.pending.front()
    }

    /// Drop everything queued (the link is down); returns how many.
    pub fn discard(&mut self) -> usize {
        let mut n = 0;
        while self.take().is_some() {
            n += 1;
        }
        n
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // The bridge notices within POLL and ends; joining here would stall
        // the runtime thread that drops the outbox.
        self.rx.close();
        drop(self.bridge.take());
    }
}

fn bridge(
    chan: crossbeam_channel::Receiver<Arc<Mutation>>,
    tx: mpsc::UnboundedSender<Vec<Arc<Mutation>>>,
) {
    loop {
        match chan.recv_timeout(POLL) {
            Ok(first) => {
                let mut v = vec![first];
                v.extend(chan.try_iter().take(4095));
                if tx.send(v).is_err() {
                    return;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if tx.is_closed() {
                    return;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}
