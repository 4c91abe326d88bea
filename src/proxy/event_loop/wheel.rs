//! A hashed timer wheel over milliseconds of the loop's own clock (passed in, so tests run on
//! simulated time).
//!
//! Deadlines are rounded up to whole ticks (never early, at most one tick late) and hashed into
//! `slots` by tick; an entry further out than one revolution stays in its slot and is skipped
//! until its tick comes round. Entries are never removed before they fire: the owner checks a
//! fired entry against what it armed last (see `Conn::armed_tick`) and ignores stale ones, so
//! arming costs a push and cancelling costs nothing.

/// One armed deadline: the owner's key and generation, and the tick it fires at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tick: u64,
    key: usize,
    generation: u32,
}

/// Hashed timer wheel.
#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<Entry>>,
    tick_ms: u64,
    /// The last tick whose slot was processed; new entries go at least one tick later.
    done: u64,
    len: usize,
}

impl Wheel {
    /// A wheel of `slots` slots of `tick_ms` milliseconds each, starting at time `now_ms`.
    pub fn new(slots: usize, tick_ms: u64, now_ms: u64) -> Wheel {
        assert!(slots > 0 && tick_ms > 0);
        Wheel {
            slots: vec![Vec::new(); slots],
            tick_ms,
            done: now_ms / tick_ms,
            len: 0,
        }
    }

    /// Entries armed and not yet fired (stale ones included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is armed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms a deadline at `at_ms` for `(key, generation)`; returns the tick it will fire at
    /// (the owner keeps it to recognise the entry).
    pub fn insert(&mut self, at_ms: u64, key: usize, generation: u32) -> u64 {
        let tick = at_ms.div_ceil(self.tick_ms).max(self.done + 1);
        let slot = (tick % self.slots.len() as u64) as usize;
        self.slots[slot].push(Entry {
            tick,
            key,
            generation,
        });
        self.len += 1;
        tick
    }

    /// Processes every tick up to `now_ms`, pushing `(key, generation, tick)` of each entry due
    /// onto `fired`.
    pub fn advance(&mut self, now_ms: u64, fired: &mut Vec<(usize, u32, u64)>) {
        let now_tick = now_ms / self.tick_ms;
        if now_tick <= self.done {
            return;
        }
        // Past one revolution every slot is visited once: each entry is seen at most once.
        let first = self
            .done
            .max(now_tick.saturating_sub(self.slots.len() as u64))
            + 1;
        let n = self.slots.len() as u64;
        for tick in first..=now_tick {
            if self.len == 0 {
                break;
            }
            let slot = &mut self.slots[(tick % n) as usize];
            let before = slot.len();
            slot.retain(|entry| {
                if entry.tick <= now_tick {
                    fired.push((entry.key, entry.generation, entry.tick));
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
        }
        self.done = now_tick;
    }

    /// The earliest time (ms) the wheel may have something due, looking at most one revolution
    /// ahead; `None` when empty. Conservative: an entry of a later revolution in a nearer slot
    /// makes it answer early (the loop then wakes, finds nothing, and asks again).
    pub fn next_due_ms(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len() as u64;
        (self.done + 1..=self.done + n)
            .find(|tick| !self.slots[(tick % n) as usize].is_empty())
            .map(|tick| tick * self.tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(wheel: &mut Wheel, now_ms: u64) -> Vec<usize> {
        let mut out = Vec::new();
        wheel.advance(now_ms, &mut out);
        let mut keys: Vec<usize> = out.into_iter().map(|(key, _, _)| key).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn fires_at_the_deadline_rounded_up_never_early() {
        let mut wheel = Wheel::new(8, 10, 1_000);
        assert_eq!(wheel.insert(1_025, 1, 0), 103);
        assert_eq!(wheel.next_due_ms(), Some(1_030));
        assert!(fired(&mut wheel, 1_029).is_empty());
        assert_eq!(fired(&mut wheel, 1_030), vec![1]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_due_ms(), None);
    }

    #[test]
    fn a_deadline_in_the_past_fires_on_the_next_tick() {
        let mut wheel = Wheel::new(8, 10, 1_000);
        wheel.insert(500, 7, 3);
        let mut out = Vec::new();
        wheel.advance(1_009, &mut out);
        assert!(out.is_empty());
        wheel.advance(1_010, &mut out);
        assert_eq!(out, vec![(7, 3, 101)]);
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_for_their_round() {
        let mut wheel = Wheel::new(4, 10, 0);
        // Same slot (tick 5 and tick 9 and tick 13 on 4 slots → slot 1).
        wheel.insert(50, 1, 0);
        wheel.insert(90, 2, 0);
        wheel.insert(130, 3, 0);
        assert_eq!(fired(&mut wheel, 50), vec![1]);
        assert_eq!(fired(&mut wheel, 89), Vec::<usize>::new());
        assert_eq!(fired(&mut wheel, 90), vec![2]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(fired(&mut wheel, 200), vec![3]);
    }

    #[test]
    fn a_long_jump_fires_everything_due_once() {
        let mut wheel = Wheel::new(4, 10, 0);
        for key in 0..20 {
            wheel.insert(key as u64 * 7 + 1, key, 0);
        }
        wheel.insert(10_000, 99, 0);
        let keys = fired(&mut wheel, 5_000);
        assert_eq!(keys, (0..20).collect::<Vec<_>>());
        assert_eq!(wheel.len(), 1);
        assert_eq!(fired(&mut wheel, 10_000), vec![99]);
    }

    #[test]
    fn next_due_is_conservative_for_later_rounds() {
        let mut wheel = Wheel::new(4, 10, 0);
        wheel.insert(130, 1, 0); // tick 13, slot 1: looks due at tick 1 first.
        assert_eq!(wheel.next_due_ms(), Some(10));
        assert!(fired(&mut wheel, 10).is_empty());
        assert_eq!(wheel.next_due_ms(), Some(50));
        assert!(fired(&mut wheel, 90).is_empty());
        assert_eq!(wheel.next_due_ms(), Some(130));
        assert_eq!(fired(&mut wheel, 130), vec![1]);
    }
}
