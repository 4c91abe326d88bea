//! Client-IP session affinity (Kubernetes `sessionAffinity: ClientIP`): remembers which endpoint
//! each client IP's last connection went to, so that its next connection within the timeout
//! goes there again.
//!
//! A fixed-size, set-associative table of atomics: no lock, no allocation after
//! [`AffinityTable::new`], so data-plane threads look clients up and remember them concurrently
//! while a control task sweeps out the expired entries.
//!
//! # Layout
//!
//! The table is an array of buckets of [`SLOTS`] slots. A client's bucket is chosen by a stable
//! 64-bit hash of its full IP (v4 or v6), and the same hash is the slot's key. A slot is two
//! words:
//!
//! - key: the client's hash; `EMPTY` (0) for a free slot, `BUSY` (`u64::MAX`) while a writer
//!   holds it.
//! - value: `endpoint id << 32 | stamp`, the stamp in ticks of 100 ms since the table's epoch.
//!
//! A bucket keeps its 8 keys in one 64-byte cache line and its 8 values in the next, so a lookup
//! scans one line and reads one word of the other.
//!
//! # Time
//!
//! Stamps are `u32` ticks of 100 ms: the range is 2³² × 100 ms, about 13.6 years from the epoch,
//! past which stamps saturate at the last tick and entries stop expiring (a process is
//! restarted long before). An entry remembered at `t0` is live while
//! `tick(now) - tick(t0) < ceil(timeout / 100 ms)`: for a timeout that is a whole number of
//! ticks it is live at `t0 + timeout - 100 ms` and gone at `t0 + timeout`; in between, the
//! cut-off falls within 100 ms of the exact instant.
//!
//! # Races
//!
//! Every write to a slot's value happens while its key is `BUSY`: a writer claims the slot by
//! compare-and-swap from the key it saw to `BUSY`, stores the value, then stores the new key.
//! A writer that loses the compare-and-swap gives up: remembering is best effort, and the
//! client is then placed as if new. A reader loads the key, the value, and the key again, and
//! takes the value only if both key loads match the client. That makes a mismatched pair (a
//! value written for another client) visible only if two complete rewrites of the slot, the
//! last one back to this very client, happen between the reader's two key loads. Two
//! concurrent remembers of one new client may also leave it in two slots of its bucket: lookups
//! take the first live one, and the other ages out and is evicted first.
//!
//! So a lookup may, very rarely, return an endpoint id that was not this client's. Callers
//! check the returned id against the endpoints currently in rotation and place the client anew
//! when it is not there: the worst case is one client moved to another live endpoint, never a
//! connection to a dead one.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::maglev::hash_ip;

/// Slots per bucket: how many clients that hash to one bucket the table keeps at once.
pub const SLOTS: usize = 8;

/// Key of a free slot. No client hashes to it ([`client_key`] remaps it).
const EMPTY: u64 = 0;

/// Key of a slot a writer is filling. No client hashes to it either; readers see no match and
/// other writers leave the slot alone, so a writer that is descheduled mid-write blocks no one.
const BUSY: u64 = u64::MAX;

/// Milliseconds per stamp tick.
const TICK_MS: u128 = 100;

/// A set-associative client-IP → endpoint-id table with expiry; see the module docs for the
/// layout, the time resolution and the race semantics.
pub struct AffinityTable {
    /// A power-of-two number of buckets, so the bucket index is a mask of the hash.
    buckets: Box<[Bucket]>,
    /// Time zero of the stamps.
    epoch: Instant,
}

/// [`SLOTS`] slots: the keys in one cache line, the values in the next.
#[repr(align(64))]
#[derive(Default)]
struct Bucket {
    keys: [AtomicU64; SLOTS],
    values: [AtomicU64; SLOTS],
}

impl AffinityTable {
    /// A table for at most `capacity` clients, rounded up to a power of two of at least one
    /// bucket ([`SLOTS`] entries); `epoch` is time zero for the stamps (see the module docs
    /// for their range). Memory: 16 bytes per entry of [`capacity`](Self::capacity).
    ///
    /// # Panics
    ///
    /// If the rounded capacity does not fit in `usize`.
    pub fn new(capacity: usize, epoch: Instant) -> Self {
        let slots = capacity
            .max(SLOTS)
            .checked_next_power_of_two()
            .expect("affinity table capacity overflows usize");
        let buckets = (0..slots / SLOTS).map(|_| Bucket::default()).collect();
        AffinityTable { buckets, epoch }
    }

    /// The endpoint id remembered for `client`, if the client's previous connection started
    /// less than `timeout` before `now` (at 100 ms resolution; see the module docs). The id
    /// may, very rarely, be another client's: callers validate it against the endpoints in
    /// rotation.
    ///
    /// Hot path: a hash, then loads of one bucket; no lock, allocation or syscall.
    pub fn lookup(&self, client: IpAddr, now: Instant, timeout: Duration) -> Option<u32> {
        let key = client_key(client);
        let bucket = self.bucket(key);
        let (now, limit) = (self.tick(now), ticks_ceil(timeout));
        for (k, v) in bucket.keys.iter().zip(&bucket.values) {
            if k.load(Ordering::Acquire) != key {
                continue;
            }
            let value = v.load(Ordering::Acquire);
            // Acquire on the value load keeps this second key load after it: if the key still
            // matches, the value was not rewritten for another client in between (module docs).
            if k.load(Ordering::Acquire) != key {
                continue;
            }
            let (endpoint, stamp) = unpack(value);
            // An expired match is not the answer, but a duplicate of the client further on may
            // be live (module docs, Races), so keep scanning.
            if live(stamp, now, limit) {
                return Some(endpoint);
            }
        }
        None
    }

    /// Remembers (or refreshes) `client` → `endpoint`, stamped `now`. A client already in the
    /// table has its slot rewritten; otherwise it takes a free slot of its bucket or, when the
    /// bucket is full, the one with the oldest stamp, expired or not: oldest go first. Best
    /// effort: if another thread is writing the chosen slot at the same moment, this call
    /// leaves it to that thread and remembers nothing.
    ///
    /// Hot path: a hash, loads and at most one compare-and-swap and two stores in one bucket;
    /// no lock, allocation or syscall.
    pub fn remember(&self, client: IpAddr, endpoint: u32, now: Instant) {
        let key = client_key(client);
        let bucket = self.bucket(key);
        let value = pack(endpoint, self.tick(now));
        // Relaxed loads to choose a slot: the compare-and-swap in `write` is what validates
        // the choice.
        if let Some(own) = bucket
            .keys
            .iter()
            .position(|k| k.load(Ordering::Relaxed) == key)
        {
            // Already stamped this tick for this endpoint (a busy client): no write, so the
            // cache line is not taken from the other cores reading it.
            if bucket.values[own].load(Ordering::Relaxed) != value {
                bucket.write(own, key, key, value);
            }
            return;
        }
        // (slot, key seen there, its stamp). A free slot ends the search: nothing is older.
        let mut victim: Option<(usize, u64, u32)> = None;
        for (i, (k, v)) in bucket.keys.iter().zip(&bucket.values).enumerate() {
            let seen = k.load(Ordering::Relaxed);
            if seen == EMPTY {
                victim = Some((i, seen, 0));
                break;
            }
            if seen == BUSY {
                continue;
            }
            let (_, stamp) = unpack(v.load(Ordering::Relaxed));
            if victim.is_none_or(|(_, _, oldest)| stamp < oldest) {
                victim = Some((i, seen, stamp));
            }
        }
        // None only if every slot is BUSY: eight writers in this bucket right now.
        if let Some((slot, seen, _)) = victim {
            bucket.write(slot, seen, key, value);
        }
    }

    /// Frees the slots of entries stamped `timeout` or longer before `now` and returns how
    /// many live entries remain (for the gauge `vipd_affinity_entries`), counting slots that a
    /// writer holds at that moment as live. Walks the whole table: for the control plane, and
    /// safe to run concurrently with lookups and remembers.
    pub fn sweep(&self, now: Instant, timeout: Duration) -> usize {
        let (now, limit) = (self.tick(now), ticks_ceil(timeout));
        let mut remaining = 0;
        for bucket in self.buckets.iter() {
            for (k, v) in bucket.keys.iter().zip(&bucket.values) {
                let key = k.load(Ordering::Acquire);
                if key == EMPTY {
                    continue;
                }
                if key == BUSY || live(unpack(v.load(Ordering::Acquire)).1, now, limit) {
                    remaining += 1;
                    continue;
                }
                // Expired when read, but a remember may have refreshed it since: claim the
                // slot, then read the stamp again before freeing it. A lost claim means a
                // writer just rewrote the slot, so the entry there is fresh.
                if k.compare_exchange(key, BUSY, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    remaining += 1;
                    continue;
                }
                if live(unpack(v.load(Ordering::Acquire)).1, now, limit) {
                    k.store(key, Ordering::Release);
                    remaining += 1;
                } else {
                    k.store(EMPTY, Ordering::Release);
                }
            }
        }
        remaining
    }

    /// Capacity after rounding: the number of slots.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    /// The bucket of a client key.
    fn bucket(&self, key: u64) -> &Bucket {
        // The bucket count is a power of two; the hash's low bits are as well mixed as any.
        &self.buckets[key as usize & (self.buckets.len() - 1)]
    }

    /// `now` in stamp ticks since the epoch, saturating at both ends of the `u32` range.
    fn tick(&self, now: Instant) -> u32 {
        let ticks = now.saturating_duration_since(self.epoch).as_millis() / TICK_MS;
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }
}

impl Bucket {
    /// Rewrites slot `slot` from key `seen` to `key` → `value`, or does nothing if the slot no
    /// longer holds `seen` (another thread got there first).
    fn write(&self, slot: usize, seen: u64, key: u64, value: u64) {
        if self.keys[slot]
            .compare_exchange(seen, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Release: a reader whose value load sees this store also sees the key as BUSY (or
        // newer), so its second key load cannot match the key that was there before.
        self.values[slot].store(value, Ordering::Release);
        self.keys[slot].store(key, Ordering::Release);
    }
}

impl fmt::Debug for AffinityTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityTable")
            .field("capacity", &self.capacity())
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// A client's key: the stable hash of its IP, moved off the two reserved keys.
fn client_key(client: IpAddr) -> u64 {
    match hash_ip(client) {
        EMPTY | BUSY => 1,
        hash => hash,
    }
}

/// `timeout` in whole ticks, rounded up, saturating.
fn ticks_ceil(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis().div_ceil(TICK_MS)).unwrap_or(u64::MAX)
}

/// Whether an entry stamped `stamp` is live at tick `now` with a timeout of `limit` ticks. A
/// stamp after `now` (a writer whose clock reading was a little later) counts as age 0.
fn live(stamp: u32, now: u32, limit: u64) -> bool {
    u64::from(now.saturating_sub(stamp)) < limit
}

fn pack(endpoint: u32, stamp: u32) -> u64 {
    u64::from(endpoint) << 32 | u64::from(stamp)
}

fn unpack(value: u64) -> (u32, u32) {
    ((value >> 32) as u32, value as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MINUTE: Duration = Duration::from_secs(60);

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two_of_whole_buckets() {
        let epoch = Instant::now();
        for (asked, got) in [(0, 8), (1, 8), (8, 8), (9, 16), (100, 128), (4096, 4096)] {
            assert_eq!(AffinityTable::new(asked, epoch).capacity(), got, "{asked}");
        }
        assert_eq!(std::mem::size_of::<Bucket>(), 128);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
    }

    #[test]
    fn two_clients_each_stick() {
        let t0 = Instant::now();
        let table = AffinityTable::new(1024, t0);
        table.remember(v4(1), 11, t0);
        table.remember(v4(2), 22, t0);
        for later in [t0, t0 + secs(30)] {
            assert_eq!(table.lookup(v4(1), later, MINUTE), Some(11));
            assert_eq!(table.lookup(v4(2), later, MINUTE), Some(22));
            assert_eq!(table.lookup(v4(3), later, MINUTE), None);
        }
        // A new endpoint for a known client replaces the old one.
        table.remember(v4(1), 33, t0 + secs(1));
        assert_eq!(table.lookup(v4(1), t0 + secs(1), MINUTE), Some(33));
        assert_eq!(table.sweep(t0 + secs(1), MINUTE), 2);
    }

    #[test]
    fn remember_refreshes_the_stamp() {
        let t0 = Instant::now();
        let table = AffinityTable::new(64, t0);
        let timeout = secs(10);
        table.remember(v4(1), 7, t0);
        table.remember(v4(1), 7, t0 + secs(8));
        assert_eq!(table.lookup(v4(1), t0 + secs(15), timeout), Some(7));
        assert_eq!(table.lookup(v4(1), t0 + secs(18), timeout), None);
    }

    #[test]
    fn expires_exactly_at_the_timeout() {
        let epoch = Instant::now();
        let table = AffinityTable::new(64, epoch);
        let timeout = secs(10);
        let tick = Duration::from_millis(100);
        // Remembered on a tick, between ticks, and just before one.
        for (i, at) in [0u64, 50, 99, 1250, 123_456].into_iter().enumerate() {
            let client = v4(i as u8);
            let t0 = epoch + Duration::from_millis(at);
            table.remember(client, i as u32, t0);
            assert_eq!(table.lookup(client, t0, timeout), Some(i as u32), "{at}");
            let last = t0 + timeout - tick;
            assert_eq!(table.lookup(client, last, timeout), Some(i as u32), "{at}");
            assert_eq!(table.lookup(client, t0 + timeout, timeout), None, "{at}");
        }
        // A zero timeout keeps nothing.
        table.remember(v4(200), 1, epoch);
        assert_eq!(table.lookup(v4(200), epoch, Duration::ZERO), None);
    }

    #[test]
    fn ipv6_clients_and_mapped_addresses_are_their_own_keys() {
        let t0 = Instant::now();
        let table = AffinityTable::new(256, t0);
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        table.remember(a, 1, t0);
        table.remember(b, 2, t0);
        table.remember(mapped, 3, t0);
        table.remember(v4(1), 4, t0);
        assert_eq!(table.lookup(a, t0, MINUTE), Some(1));
        assert_eq!(table.lookup(b, t0, MINUTE), Some(2));
        assert_eq!(table.lookup(mapped, t0, MINUTE), Some(3));
        assert_eq!(table.lookup(v4(1), t0, MINUTE), Some(4));
    }

    #[test]
    fn a_full_bucket_evicts_the_oldest_entry_first() {
        let t0 = Instant::now();
        // One bucket: every client collides.
        let table = AffinityTable::new(1, t0);
        assert_eq!(table.capacity(), SLOTS);
        for c in 0..SLOTS as u8 {
            table.remember(v4(c), u32::from(c), t0 + secs(u64::from(c)));
        }
        let present = |c: u8, at: u64| table.lookup(v4(c), t0 + secs(at), MINUTE).is_some();
        assert!((0..SLOTS as u8).all(|c| present(c, 10)));
        // Refreshing client 0 makes client 1 the oldest.
        table.remember(v4(0), 0, t0 + secs(10));
        table.remember(v4(100), 100, t0 + secs(11));
        assert!(!present(1, 11));
        assert!(present(0, 11) && present(100, 11));
        assert!((2..SLOTS as u8).all(|c| present(c, 11)));
        table.remember(v4(101), 101, t0 + secs(12));
        assert!(!present(2, 12) && present(101, 12));
        // Expired entries are simply the oldest: long after everything, the next newcomer
        // takes the slot of the oldest stamp (client 3) and the others stay until swept.
        table.remember(v4(102), 102, t0 + secs(600));
        assert_eq!(table.lookup(v4(3), t0, secs(3600)), None);
        assert_eq!(table.lookup(v4(4), t0, secs(3600)), Some(4));
    }

    #[test]
    fn sweep_clears_expired_and_counts_live() {
        let t0 = Instant::now();
        let table = AffinityTable::new(1024, t0);
        let timeout = secs(10);
        for c in 0..5 {
            table.remember(v4(c), u32::from(c), t0);
        }
        for c in 5..8 {
            table.remember(v4(c), u32::from(c), t0 + secs(20));
        }
        assert_eq!(table.sweep(t0 + secs(25), timeout), 3);
        // Cleared, not merely expired: a lookup with a longer timeout finds nothing either.
        assert!((0..5).all(|c| table.lookup(v4(c), t0, secs(3600)).is_none()));
        assert!((5..8).all(|c| table.lookup(v4(c), t0 + secs(25), timeout).is_some()));
        assert_eq!(table.sweep(t0 + secs(40), timeout), 0);
        assert_eq!(table.sweep(t0 + secs(40), timeout), 0);
    }

    #[test]
    fn concurrent_writers_never_return_a_foreign_id() {
        // 64 clients in 2 buckets of 8: constant eviction and slot contention. Thread `t`
        // writes id `2c + t` for client `c`, so a client's only valid ids are 2c and 2c + 1.
        const CLIENTS: u32 = 64;
        const ROUNDS: u64 = 100_000;
        let t0 = Instant::now();
        let table = AffinityTable::new(16, t0);
        let client = |c: u32| v4(c as u8);
        let hits: Vec<u64> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..2u32)
                .map(|t| {
                    let table = &table;
                    s.spawn(move || {
                        let mut hits = 0u64;
                        for i in 0..ROUNDS {
                            let now = t0 + Duration::from_millis(i);
                            let c = (i as u32 * 7 + t * 13) % CLIENTS;
                            table.remember(client(c), 2 * c + t, now);
                            let other = (c + 1 + t) % CLIENTS;
                            if let Some(id) = table.lookup(client(other), now, MINUTE) {
                                assert!(id / 2 == other, "client {other} got id {id}");
                                hits += 1;
                            }
                            // Thread 0 also sweeps, so claims by the sweeper race the writers.
                            if t == 0 && i % 997 == 0 {
                                table.sweep(now, Duration::from_millis(500));
                            }
                        }
                        hits
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        // Not vacuous: lookups did find entries.
        assert!(hits.iter().all(|&h| h > 0), "hits per thread: {hits:?}");
    }
}
