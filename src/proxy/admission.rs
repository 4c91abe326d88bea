//! Admission control shared by every worker's loop.
//!
//! - [`ConnectionLimit`]: `max_connections` of the process (`[runtime]`) and of one service. A
//!   loop that finds a limit reached stops accepting on the listener (registers it for
//!   nothing, as during an accept back-off), so new clients wait in the kernel's accept queue,
//!   as behind HAProxy's `maxconn`, instead of being accepted and reset. The close that frees a
//!   slot of a limit some loop paused on wakes every loop, and they listen again.
//! - [`EndpointQueue`]: a service's connections waiting for an endpoint below its
//!   `max_connections`, first come first served. A freed slot wakes exactly the loop of the
//!   connection at the head, through that loop's [`Mailbox`]; nothing polls.
//!
//! Only connections admitted while a limit is set count against it: with no limit, accepting
//! costs no shared counter. A limit added by a reload therefore counts the connections
//! accepted from then on.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge};

use super::event_loop::wake_all_loops;

/// A `max_connections` limit and the connections counted against it.
#[derive(Debug)]
pub struct ConnectionLimit {
    /// 0: no limit.
    max: AtomicU32,
    open: AtomicU32,
    /// A loop paused a listener on this limit and waits to hear of a close.
    paused: AtomicBool,
    reached: Counter,
}

impl ConnectionLimit {
    /// A limit of `max` (none: unlimited) counting `reached` each time it fills.
    pub fn new(max: Option<NonZeroU32>, reached: Counter) -> Self {
        ConnectionLimit {
            max: AtomicU32::new(max.map_or(0, NonZeroU32::get)),
            open: AtomicU32::new(0),
            paused: AtomicBool::new(false),
            reached,
        }
    }

    /// Sets the limit (a reload); loops paused on it look again.
    pub fn set_max(&self, max: Option<NonZeroU32>) {
        self.max
            .store(max.map_or(0, NonZeroU32::get), Ordering::SeqCst);
        if self.paused.swap(false, Ordering::SeqCst) {
            wake_all_loops();
        }
    }

    /// The limit now.
    pub fn max(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.max.load(Ordering::Relaxed))
    }

    /// Connections counted against the limit now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a new connection in. `Some(true)`: counted (close it with [`Self::close`]);
    /// `Some(false)`: no limit is set, nothing counted; `None`: the limit is reached.
    pub fn try_open(&self) -> Option<bool> {
        let max = self.max.load(Ordering::Relaxed);
        if max == 0 {
            return Some(false);
        }
        let mut open = self.open.load(Ordering::SeqCst);
        loop {
            if open >= max {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    if open + 1 == max {
                        // This connection filled the limit: accepting stops until one closes.
                        self.reached.increment(1);
                    }
                    return Some(true);
                }
                Err(now) => open = now,
            }
        }
    }

    /// A counted connection ended (or was never accepted after all).
    pub fn close(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        // SeqCst on both sides (here: decrement, then read the flag; in `pause`: set the flag,
        // then read the count) means a pause and a close never miss each other.
        if self.paused.load(Ordering::SeqCst) && self.paused.swap(false, Ordering::SeqCst) {
            wake_all_loops();
        }
    }

    /// After [`Self::try_open`] found the limit reached: records that a listener pauses on it.
    /// False when a connection closed meanwhile, so accepting may go on at once.
    pub fn pause(&self) -> bool {
        self.paused.store(true, Ordering::SeqCst);
        let max = self.max.load(Ordering::SeqCst);
        max != 0 && self.open.load(Ordering::SeqCst) >= max
    }
}

/// A queued connection granted a slot: the queue it waited in, its slab key and generation.
#[derive(Debug)]
pub struct Grant {
    /// Where to pass the slot on when the connection is gone.
    pub queue: Arc<EndpointQueue>,
    /// The connection's slab key in the loop.
    pub key: usize,
    /// Its generation (a reused slab slot has another).
    pub generation: u32,
}

/// Where other threads leave work for one loop: the queued connections granted a slot. The
/// loop takes them when woken.
#[derive(Debug)]
pub struct Mailbox {
    granted: Mutex<Vec<Grant>>,
    waker: Arc<mio::Waker>,
}

impl Mailbox {
    /// The mailbox of the loop `waker` wakes.
    pub fn new(waker: Arc<mio::Waker>) -> Self {
        Mailbox {
            granted: Mutex::new(Vec::new()),
            waker,
        }
    }

    /// Hands a queued connection a slot and wakes its loop.
    fn grant(&self, grant: Grant) {
        self.granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(grant);
        let _ = self.waker.wake();
    }

    /// Moves the granted connections into `into` (emptied first).
    pub fn take(&self, into: &mut Vec<Grant>) {
        into.clear();
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *granted, into);
    }
}

/// One queued connection: its loop, its slab key and generation there.
#[derive(Debug)]
struct Waiter {
    mailbox: Arc<Mailbox>,
    key: usize,
    generation: u32,
}

impl Waiter {
    fn is(&self, mailbox: &Arc<Mailbox>, key: usize, generation: u32) -> bool {
        Arc::ptr_eq(&self.mailbox, mailbox) && self.key == key && self.generation == generation
    }
}

/// A service's connections waiting for an endpoint below its limit, in arrival order.
///
/// `waiting` counts the queued connections and those granted a slot but not yet connected, so
/// a newcomer queues behind them rather than taking the slot they were woken for.
#[derive(Debug)]
pub struct EndpointQueue {
    waiting: AtomicUsize,
    queue: Mutex<VecDeque<Waiter>>,
    gauge: Gauge,
    /// `vipd_queue_timeouts_total{service}`.
    pub timeouts: Counter,
}

impl EndpointQueue {
    /// An empty queue reporting to `gauge` and `timeouts`.
    pub fn new(gauge: Gauge, timeouts: Counter) -> Self {
        EndpointQueue {
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            gauge,
            timeouts,
        }
    }

    /// Whether connections wait (a newcomer must queue behind them).
    pub fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Connections waiting now (queued or granted, not yet connected).
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether no connection waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a connection at the back.
    pub fn push(&self, mailbox: &Arc<Mailbox>, key: usize, generation: u32) {
        let mut queue = self.lock();
        queue.push_back(Waiter {
            mailbox: Arc::clone(mailbox),
            key,
            generation,
        });
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.gauge.increment(1.0);
    }

    /// Puts a granted connection that found no slot after all back at the head (it is still
    /// counted as waiting).
    pub fn push_front(&self, mailbox: &Arc<Mailbox>, key: usize, generation: u32) {
        self.lock().push_front(Waiter {
            mailbox: Arc::clone(mailbox),
            key,
            generation,
        });
    }

    /// A slot freed (or may have): the connection at the head is granted it. Pops nothing when
    /// the queue is empty.
    pub fn slot_freed(self: &Arc<Self>) {
        if !self.has_waiters() {
            return;
        }
        let head = self.lock().pop_front();
        if let Some(waiter) = head {
            waiter.mailbox.grant(Grant {
                queue: Arc::clone(self),
                key: waiter.key,
                generation: waiter.generation,
            });
        }
    }

    /// A waiting connection is done waiting: it got a slot, timed out, or went away. Removes
    /// it from the queue if it is still there (not yet granted).
    pub fn leave(&self, mailbox: &Arc<Mailbox>, key: usize, generation: u32) {
        {
            let mut queue = self.lock();
            if let Some(i) = queue.iter().position(|w| w.is(mailbox, key, generation)) {
                queue.remove(i);
            }
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.gauge.decrement(1.0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiter>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> Counter {
        Counter::noop()
    }

    #[test]
    fn a_limit_admits_up_to_max_and_counts_only_while_set() {
        let limit = ConnectionLimit::new(NonZeroU32::new(2), counter());
        assert_eq!(limit.try_open(), Some(true));
        assert_eq!(limit.try_open(), Some(true));
        assert_eq!(limit.try_open(), None, "full at 2");
        assert!(limit.pause(), "still full: the listener stays paused");
        limit.close();
        assert!(!limit.pause(), "a close came first: accept again");
        assert_eq!(limit.try_open(), Some(true));
        limit.set_max(None);
        assert_eq!(limit.try_open(), Some(false), "no limit: nothing counted");
        assert_eq!(limit.open(), 2);
    }

    #[test]
    fn the_head_of_the_queue_is_granted_first() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let mailbox = Arc::new(Mailbox::new(waker));
        let queue = Arc::new(EndpointQueue::new(Gauge::noop(), counter()));
        let keys = |granted: &[Grant]| -> Vec<(usize, u32)> {
            granted.iter().map(|g| (g.key, g.generation)).collect()
        };
        for key in 0..3 {
            queue.push(&mailbox, key, 7);
        }
        assert_eq!(queue.len(), 3);
        // The middle one times out: it leaves at once.
        queue.leave(&mailbox, 1, 7);
        queue.slot_freed();
        let mut granted = Vec::new();
        mailbox.take(&mut granted);
        assert_eq!(keys(&granted), vec![(0, 7)]);
        assert!(
            queue.has_waiters(),
            "granted, not yet connected: still waiting"
        );
        queue.leave(&mailbox, 0, 7);
        queue.slot_freed();
        mailbox.take(&mut granted);
        assert_eq!(keys(&granted), vec![(2, 7)]);
        queue.leave(&mailbox, 2, 7);
        assert!(queue.is_empty());
        queue.slot_freed();
        mailbox.take(&mut granted);
        assert!(granted.is_empty(), "nobody waits: nothing granted");
    }
}
