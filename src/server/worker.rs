//! Worker threads: `-t` of them, each one epoll loop over the connections the
//! accept loop assigned to it (round robin), memcached's own structure. A
//! connection stays on its thread for life: no task scheduler, no stealing, no
//! wake-ups of a sibling thread per request.
//!
//! The accept loop, housekeeping, signals and the waits for persistence acks
//! stay on the small tokio runtime; they reach a worker through its inbox (a
//! queue and an eventfd that wakes its `epoll_wait`).

use super::conn::{Conn, Ctx, Keep};
use super::sys::{Epoll, EventFd, Interest};
use crate::session::{ConnEntry, Shared};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::idle_yield::IdleYield;

/// Readiness reports one `epoll_wait` returns at most.
const EVENTS: usize = 256;
/// After a batch of this many readiness reports, give the CPU up once
/// (`sched_yield`) before the next `epoll_wait`. A thread with that much work
/// never sleeps, so the scheduler only takes it off the CPU at the end of its
/// time slice, milliseconds later, while the clients that share the CPUs (an
/// application server on the same host, the benchmark's generator) wait with
/// their replies unread. Yielding lets them run between batches: in the shared
/// benchmark placement it took p99 at 50-200 connections from 4 ms to under 1
/// and raised throughput 15-30 % (docs/decisions.md). With nothing else
/// runnable it is one cheap syscall per batch.
const YIELD_AFTER: usize = 4;
/// The inbox's token; connection tokens are `generation << 32 | slot`.
const INBOX: u64 = u64::MAX;

/// An accepted, non-blocking socket and its `stats conns` entry.
pub struct NewConn {
    pub fd: OwnedFd,
    pub entry: ConnEntry,
}

enum Msg {
    Adopt(NewConn),
    /// The acks a parked connection waited for: `Err` holds why they failed.
    Acked(u64, Result<(), String>),
    /// Shut down: close idle connections, let busy ones finish until `Instant`.
    Stop(Instant),
}

struct Inbox {
    queue: Mutex<Vec<Msg>>,
    wake: EventFd,
}

impl Inbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Msg>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn post(&self, m: Msg) {
        self.queue().push(m);
        self.wake.notify();
    }
    fn take(&self) -> Vec<Msg> {
        self.wake.drain();
        std::mem::take(&mut *self.queue())
    }
}

/// The worker threads of the server.
pub struct Workers {
    inboxes: Vec<Arc<Inbox>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Start `n` threads. `rt` runs the waits for acknowledgements.
    pub fn start(
        shared: &Arc<Shared>,
        n: usize,
        rt: tokio::runtime::Handle,
    ) -> std::io::Result<Workers> {
        let mut inboxes = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let inbox = Arc::new(Inbox {
                queue: Mutex::new(Vec::new()),
                wake: EventFd::new()?,
            });
            let epoll = Epoll::new(EVENTS)?;
            epoll.add(inbox.wake.raw(), Interest::Read, INBOX)?;
            let (shared, rt, mine) = (shared.clone(), rt.clone(), inbox.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("memtwin-worker".into())
                    .spawn(move || {
                        Worker {
                            epoll,
                            shared: &shared,
                            inbox: mine,
                            rt,
                        }
                        .run(i)
                    })?,
            );
            inboxes.push(inbox);
        }
        Ok(Workers {
            inboxes,
            threads,
            next: AtomicUsize::new(0),
        })
    }

    /// Hand a new connection to the next worker, round robin.
    pub fn assign(&self, conn: NewConn) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
        self.inboxes[i].post(Msg::Adopt(conn));
    }

    /// Stop every worker: idle connections close now, connections with a
    /// request in flight get until `deadline`. Returns when all have exited.
    pub fn stop(self, deadline: Instant) {
        for inbox in &self.inboxes {
            inbox.post(Msg::Stop(deadline));
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Worker<'s> {
    epoll: Epoll,
    shared: &'s Arc<Shared>,
    inbox: Arc<Inbox>,
    rt: tokio::runtime::Handle,
}

/// Connections by slot, with a generation per slot so that a message for a
/// closed connection never reaches the one that reused its slot.
#[derive(Default)]
struct Slots<'a> {
    conns: Vec<Option<Conn<'a>>>,
    generation: Vec<u32>,
    free: Vec<usize>,
}

impl<'a> Slots<'a> {
    fn vacant(&mut self) -> (usize, u64) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.generation.push(0);
            self.conns.len() - 1
        });
        (slot, (u64::from(self.generation[slot]) << 32) | slot as u64)
    }
    /// The slot `token` names, if the token is of the slot's current generation.
    fn slot_of(&self, token: u64) -> Option<usize> {
        let slot = (token & 0xffff_ffff) as usize;
        (self.generation.get(slot).copied() == Some((token >> 32) as u32)).then_some(slot)
    }
    fn get(&mut self, token: u64) -> Option<&mut Conn<'a>> {
        let slot = self.slot_of(token)?;
        self.conns[slot].as_mut()
    }
    fn close(&mut self, token: u64, shared: &Shared) {
        if let Some(slot) = self.slot_of(token) {
            self.release(slot, shared);
        }
    }
    /// Drop the connection in `slot` (if any) and retire its token.
    fn release(&mut self, slot: usize, shared: &Shared) {
        if self.conns[slot].take().is_some() {
            self.generation[slot] = self.generation[slot].wrapping_add(1);
            self.free.push(slot);
            shared.curr_conns.fetch_sub(1, Ordering::AcqRel);
        }
    }
    /// Close every connection `pred` picks; returns how many stay open.
    fn close_if(&mut self, shared: &Shared, pred: impl Fn(&Conn<'a>) -> bool) -> usize {
        let mut open = 0;
        for slot in 0..self.conns.len() {
            match &self.conns[slot] {
                Some(c) if pred(c) => self.release(slot, shared),
                Some(_) => open += 1,
                None => {}
            }
        }
        open
    }
}

impl<'s> Worker<'s> {
    fn run(mut self, index: usize) {
        let shared = self.shared;
        let mut slots = Slots::default();
        let idle = shared.settings.idle_timeout;
        let mut events = Vec::with_capacity(EVENTS);
        let mut stopping: Option<Instant> = None;
        let mut last_sweep = shared.engine.now();
        let mut pacing = IdleYield::default();
        // Connections that yielded (`-R`) with requests still buffered, and
        // the buffer they are resumed from (both kept, not reallocated).
        let mut again: Vec<u64> = Vec::new();
        let mut resuming: Vec<u64> = Vec::new();
        loop {
            let timeout = match stopping {
                _ if !again.is_empty() => 0,
                Some(_) => 50,
                None if idle > 0 => 1000,
                None => -1,
            };
            // Having just served requests, look before sleeping: if nothing is
            // ready, let a client that shares this CPU write its next request
            // first (see `idle_yield`).
            let served = !events.is_empty();
            let epoll = &mut self.epoll;
            if let Err(e) = pacing.wait(served, timeout, |t| {
                epoll.wait(t, &mut events).map(|()| !events.is_empty())
            }) {
                tracing::error!("worker {index}: epoll_wait failed: {e}; closing its connections");
                break;
            }
            for &token in &events {
                if token == INBOX {
                    for m in self.inbox.take() {
                        match m {
                            Msg::Adopt(nc) => self.adopt(&mut slots, nc, stopping.is_some()),
                            Msg::Acked(token, result) => {
                                let ctx = self.ctx(token);
                                let keep = match slots.get(token) {
                                    Some(c) => c.acked(&ctx, result),
                                    None => continue,
                                };
                                self.settle(&mut slots, token, keep, &mut again);
                            }
                            Msg::Stop(deadline) => stopping = Some(deadline),
                        }
                    }
                    continue;
                }
                let ctx = self.ctx(token);
                let Some(c) = slots.get(token) else {
                    continue;
                };
                let keep = c.ready(&ctx);
                self.settle(&mut slots, token, keep, &mut again);
            }
            // Their turn again, after every connection that was ready.
            std::mem::swap(&mut again, &mut resuming);
            for token in resuming.drain(..) {
                let ctx = self.ctx(token);
                let Some(c) = slots.get(token) else {
                    continue;
                };
                let keep = c.resume(&ctx);
                self.settle(&mut slots, token, keep, &mut again);
            }
            if events.len() >= YIELD_AFTER {
                std::thread::yield_now();
            }
            let now = shared.engine.now();
            if idle > 0 && now != last_sweep {
                last_sweep = now;
                slots.close_if(shared, |c| {
                    c.is_idle() && u64::from(now.saturating_sub(c.last_active)) >= idle
                });
            }
            if let Some(deadline) = stopping {
                let busy = slots.close_if(shared, |c| c.is_idle());
                if busy == 0 {
                    return;
                }
                if Instant::now() >= deadline {
                    tracing::warn!("worker {index}: {busy} connection(s) did not finish in time");
                    break;
                }
            }
        }
        slots.close_if(shared, |_| true);
    }

    fn ctx(&self, token: u64) -> Ctx<'_> {
        Ctx {
            epoll: &self.epoll,
            shared: self.shared,
            token,
        }
    }

    fn adopt<'a>(&self, slots: &mut Slots<'a>, nc: NewConn, stopping: bool)
    where
        's: 'a,
    {
        if stopping {
            // Accepted just before shutdown: closed (dropping the fd) unserved.
            self.shared.curr_conns.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let registered = self.shared.conns.register(nc.entry);
        let (slot, token) = slots.vacant();
        match Conn::new(nc.fd, registered, &self.ctx(token)) {
            Ok(c) => slots.conns[slot] = Some(c),
            Err(e) => {
                tracing::warn!("cannot watch a new connection: {e}");
                slots.free.push(slot);
                self.shared.curr_conns.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Act on what a connection said after an event.
    fn settle(&self, slots: &mut Slots<'_>, token: u64, keep: Keep, again: &mut Vec<u64>) {
        match keep {
            Keep::Yes => {}
            Keep::Again => again.push(token),
            Keep::No => slots.close(token, self.shared),
            Keep::Park(seq) => {
                let stream = self.shared.engine.stream().clone();
                let inbox = self.inbox.clone();
                self.rt.spawn(async move {
                    let r = stream.wait_acked(seq).await.map_err(|e| e.to_string());
                    inbox.post(Msg::Acked(token, r));
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_tokens_are_not_reused_across_generations() {
        let mut s: Slots<'_> = Slots::default();
        let (slot, t1) = s.vacant();
        assert_eq!(slot, 0);
        // Nothing stored: closing is a no-op and the slot is not freed twice.
        let shared = Shared::for_tests();
        s.close(t1, &shared);
        assert!(s.free.is_empty());
        s.free.push(slot);
        s.generation[slot] += 1;
        let (slot2, t2) = s.vacant();
        assert_eq!(slot2, slot);
        assert_ne!(t1, t2, "same slot, new generation, new token");
        assert!(s.get(t1).is_none());
    }
}
