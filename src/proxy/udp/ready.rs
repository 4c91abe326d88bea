//! Which flows' upstream sockets have something to read, for one serve loop that polls
//! thousands of sockets from a single task.
//!
//! Every flow slot has a [`Waker`] of its own, made once and reused by every flow that takes the
//! slot. The loop polls a flow's socket with that waker; when the socket becomes readable the
//! runtime wakes it, which sets the slot's bit here and wakes the loop's task. The loop then
//! takes the set bits and reads only those sockets: the work per wake-up follows the sockets
//! that are ready, not the number of flows. Bits live in chunks of 4,096 slots with one summary
//! word each, so taking them costs one load per chunk plus one swap per ready word — no lock and
//! no allocation per datagram (wakers are allocated when the table first grows to a slot).
//!
//! A bit can be stale (a flow ended and a new one took the slot before the loop looked): the
//! loop then polls a socket that has nothing to read, which only registers the waker again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;

/// Slots per chunk: 64 words of 64 bits, one summary word.
const CHUNK: usize = 64 * 64;

/// The ready bits of [`CHUNK`] slots.
#[derive(Debug)]
struct Chunk {
    /// Bit `w` set: word `w` may have bits set.
    summary: AtomicU64,
    words: [AtomicU64; 64],
    /// The serve loop's task.
    task: Arc<AtomicWaker>,
}

impl Chunk {
    fn mark(&self, slot: usize) {
        let (word, bit) = (slot / 64, slot % 64);
        // Release: the loop that swaps the bits out with Acquire sees everything before the
        // wake. Word before summary, so a summary bit never points at a word not yet marked.
        self.words[word].fetch_or(1 << bit, Ordering::Release);
        self.summary.fetch_or(1 << word, Ordering::Release);
        self.task.wake();
    }
}

/// The waker of one slot.
#[derive(Debug)]
struct SlotWaker {
    chunk: Arc<Chunk>,
    /// The slot's index within its chunk.
    slot: u16,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.chunk.mark(usize::from(self.slot));
    }
}

/// Ready bits and wakers of the slots of one flow table.
#[derive(Debug)]
pub struct ReadySet {
    task: Arc<AtomicWaker>,
    chunks: Vec<Arc<Chunk>>,
    /// One per slot, in slot order.
    wakers: Vec<Waker>,
}

impl Default for ReadySet {
    fn default() -> Self {
        ReadySet::new()
    }
}

impl ReadySet {
    /// An empty set (no slots yet).
    pub fn new() -> Self {
        ReadySet {
            task: Arc::new(AtomicWaker::new()),
            chunks: Vec::new(),
            wakers: Vec::new(),
        }
    }

    /// Wakes `waker` whenever a slot is marked from now on. Call it on every poll of the
    /// serve loop, before taking bits, so no mark is missed.
    pub fn register(&self, waker: &Waker) {
        self.task.register(waker);
    }

    /// Makes sure slot `slot` has a waker and a bit.
    pub fn cover(&mut self, slot: usize) {
        while self.wakers.len() <= slot {
            let index = self.wakers.len();
            if index.is_multiple_of(CHUNK) {
                self.chunks.push(Arc::new(Chunk {
                    summary: AtomicU64::new(0),
                    words: std::array::from_fn(|_| AtomicU64::new(0)),
                    task: Arc::clone(&self.task),
                }));
            }
            let chunk = Arc::clone(self.chunks.last().expect("a chunk was just made"));
            let slot = u16::try_from(index % CHUNK).expect("a chunk index fits 16 bits");
            self.wakers
                .push(Waker::from(Arc::new(SlotWaker { chunk, slot })));
        }
    }

    /// The waker of `slot` (covered).
    pub fn waker(&self, slot: usize) -> &Waker {
        &self.wakers[slot]
    }

    /// Marks `slot` (covered) as ready, as its waker would.
    pub fn mark(&self, slot: usize) {
        self.chunks[slot / CHUNK].mark(slot % CHUNK);
    }

    /// Number of chunks, for [`ReadySet::take`].
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Takes the ready bits of chunk `chunk`: calls `each` with every slot marked since the
    /// last take, and clears them. (One chunk at a time, so the caller may work on its table
    /// between chunks without holding a borrow of the set.)
    pub fn take(&self, chunk: usize, mut each: impl FnMut(usize)) {
        let bits = &self.chunks[chunk];
        // A load first: most chunks have nothing, and a swap would write their line anyway.
        if bits.summary.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut summary = bits.summary.swap(0, Ordering::Acquire);
        while summary != 0 {
            let word = summary.trailing_zeros() as usize;
            summary &= summary - 1;
            let mut set = bits.words[word].swap(0, Ordering::Acquire);
            while set != 0 {
                let bit = set.trailing_zeros() as usize;
                set &= set - 1;
                each(chunk * CHUNK + word * 64 + bit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(set: &ReadySet) -> Vec<usize> {
        let mut out = Vec::new();
        for chunk in 0..set.chunks() {
            set.take(chunk, |slot| out.push(slot));
        }
        out
    }

    #[test]
    fn marks_are_taken_once_in_slot_order() {
        let mut set = ReadySet::new();
        set.cover(CHUNK + 10);
        assert_eq!(set.chunks(), 2);
        for slot in [CHUNK + 10, 3, 64, 3, 0] {
            set.mark(slot);
        }
        assert_eq!(taken(&set), vec![0, 3, 64, CHUNK + 10]);
        assert!(taken(&set).is_empty());
    }

    #[test]
    fn a_slot_waker_marks_its_slot_and_wakes_the_task() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let mut set = ReadySet::new();
        set.cover(70);
        set.register(&Waker::from(Arc::clone(&count)));
        set.waker(70).wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // A clone (what the runtime keeps while the socket waits) wakes the same slot, by value.
        let kept = set.waker(5).clone();
        kept.wake();
        assert_eq!(taken(&set), vec![5, 70]);
    }
}
