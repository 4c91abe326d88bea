//! A hashed timer wheel on a millisecond clock the caller passes in (so tests simulate time).
//!
//! Entries are `(deadline, token)`; a slot holds every entry whose deadline tick maps to it,
//! whatever the revolution, and [`Wheel::advance`] takes only those that are due. Entries are
//! never removed early: the owner checks on expiry whether the deadline still holds (activity
//! moves an idle deadline without touching the wheel) and inserts again if not. Stale tokens
//! are recognised by the generation they carry.

/// Milliseconds per wheel tick.
pub const TICK_MS: u64 = 10;
/// Slots in the wheel: one revolution is `SLOTS × TICK_MS` (5.12 s).
const SLOTS: usize = 512;

/// A wheel of `(deadline_ms, token)` entries.
#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<(u64, u64)>>,
    /// The last tick [`Wheel::advance`] processed.
    tick: u64,
    len: usize,
}

impl Wheel {
    /// An empty wheel at time `now_ms`.
    pub fn new(now_ms: u64) -> Wheel {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            tick: now_ms / TICK_MS,
            len: 0,
        }
    }

    /// Entries waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry waits.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fires `token` once the clock passed `at_ms` (rounded up to a tick; a deadline in the
    /// past fires at the next advance).
    pub fn insert(&mut self, at_ms: u64, token: u64) {
        let tick = at_ms.div_ceil(TICK_MS).max(self.tick + 1);
        self.slots[(tick % SLOTS as u64) as usize].push((tick, token));
        self.len += 1;
    }

    /// Moves the clock to `now_ms`, appending the tokens now due to `due`.
    pub fn advance(&mut self, now_ms: u64, due: &mut Vec<u64>) {
        let now = now_ms / TICK_MS;
        if now <= self.tick {
            return;
        }
        // A jump of a whole revolution or more visits every slot once.
        let steps = (now - self.tick).min(SLOTS as u64);
        for step in 1..=steps {
            let slot = &mut self.slots[((self.tick + step) % SLOTS as u64) as usize];
            let before = slot.len();
            slot.retain(|&(tick, token)| {
                if tick <= now {
                    due.push(token);
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
        }
        self.tick = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advance(wheel: &mut Wheel, now: u64) -> Vec<u64> {
        let mut due = Vec::new();
        wheel.advance(now, &mut due);
        due.sort_unstable();
        due
    }

    #[test]
    fn entries_fire_once_their_tick_passed_and_not_before() {
        let mut wheel = Wheel::new(1_000);
        wheel.insert(1_025, 1);
        wheel.insert(1_100, 2);
        wheel.insert(1_100, 3);
        assert_eq!(wheel.len(), 3);
        assert!(advance(&mut wheel, 1_020).is_empty());
        assert_eq!(advance(&mut wheel, 1_030), vec![1]);
        assert!(advance(&mut wheel, 1_099).is_empty());
        assert_eq!(advance(&mut wheel, 1_100), vec![2, 3]);
        assert!(wheel.is_empty());
        assert!(advance(&mut wheel, 9_000).is_empty());
    }

    #[test]
    fn a_deadline_beyond_one_revolution_waits_its_turn() {
        let mut wheel = Wheel::new(0);
        let far = (SLOTS as u64) * TICK_MS * 3 + 40;
        wheel.insert(far, 7);
        // Its slot comes round three times before it is due.
        let mut now = 0;
        while now + TICK_MS < far {
            now += TICK_MS;
            assert!(advance(&mut wheel, now).is_empty(), "fired early at {now}");
        }
        assert_eq!(advance(&mut wheel, far), vec![7]);
    }

    #[test]
    fn a_long_jump_fires_everything_due_and_keeps_the_rest() {
        let mut wheel = Wheel::new(0);
        for i in 0..2_000u64 {
            wheel.insert(i * 7, i);
        }
        let jump = 7 * 1_500;
        let due = advance(&mut wheel, jump);
        assert_eq!(due, (0..=1_500).collect::<Vec<_>>());
        assert_eq!(wheel.len(), 2_000 - 1_501);
        let rest = advance(&mut wheel, 100_000);
        assert_eq!(rest, (1_501..2_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_past_deadline_fires_at_the_next_tick() {
        let mut wheel = Wheel::new(500);
        wheel.insert(10, 1);
        assert!(advance(&mut wheel, 505).is_empty());
        assert_eq!(advance(&mut wheel, 510), vec![1]);
    }
}
