//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016): a fixed lookup table that maps a client IP to one member
//! of an endpoint list, so that the same client keeps reaching the same endpoint, and a change
//! of the member list moves few clients besides those of the members that left.
//!
//! The table is a pure function of the member list: it is built from a stable hash of each
//! member's address (not std's `DefaultHasher`, whose algorithm may change between Rust
//! releases), so two vipd processes, even of different builds, that see the same members build
//! identical tables and send a given client to the same endpoint. Members are sorted by address
//! inside [`MaglevTable::build`], so the order in which the caller lists them does not matter
//! either.
//!
//! Weights follow Envoy's weighted population: every member takes table entries in turns, and
//! a member whose filled share is already ahead of its weight (relative to the largest weight)
//! sits a turn out, so each member's share of entries, and hence of clients, follows its weight.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Entries in a [`MaglevTable`]. Prime, as Maglev's permutations need: any skip in
/// `1..TABLE_SIZE` is coprime with it, so every member's permutation visits every entry.
/// Large against the member counts vipd sees (the paper asks for M ≫ N), which keeps both the
/// weighted shares and the disruption on member changes close to ideal.
pub const TABLE_SIZE: usize = 65_537;

/// Seeds of [`stable_hash`] for the three independent uses of one hash function.
const OFFSET_SEED: u64 = 0x243f_6a88_85a3_08d3; // π's first fractional hex digits
const SKIP_SEED: u64 = 0x1319_8a2e_0370_7344; // ... and the next ones
const CLIENT_SEED: u64 = 0xa409_3822_299f_31d0; // ... and the next ones

/// The longest [`AddrKey`]: a family tag, 16 IPv6 octets, 2 port bytes.
const ADDR_KEY_LEN: usize = 1 + 16 + 2;

/// A Maglev lookup table: [`TABLE_SIZE`] entries, each an index into the member list it was
/// built from.
///
/// [`Debug`](fmt::Debug) shows the member count, not the 65,537 entries.
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    /// Index into the caller's member list, per entry. `u32` rather than `usize` halves the
    /// table (256 KiB) on 64-bit targets; member lists are far below 2³² long.
    entries: Box<[u32]>,
    /// How many members the table was built from: every entry is below it.
    members: usize,
}

/// One member during [`MaglevTable::build`].
struct Builder {
    /// The member's index in the caller's list: what the table stores.
    index: u32,
    weight: u64,
    /// The next entry of this member's permutation to try. Maglev's permutation is
    /// `(offset + skip * j) % TABLE_SIZE` for `j = 0, 1, ...`; stepping `next` by `skip`
    /// modulo the table walks the same sequence without a multiplication.
    next: usize,
    skip: usize,
    /// Envoy's turn bookkeeping: the member takes an entry in round `r` only if
    /// `r * weight >= target`, and each entry it takes raises `target` by the largest weight.
    target: u64,
}

impl MaglevTable {
    /// Builds the table for `members`: each endpoint's stable identity (its address) and weight,
    /// in candidate order. [`lookup`](Self::lookup) then returns indices into that same slice.
    ///
    /// The result depends only on the set of `(address, weight)` pairs, not on their order:
    /// members are sorted by address here (a byte order of family, IP octets and port that does
    /// not rest on std's `Ord` for `SocketAddr`) and mapped back to the caller's indices. Only
    /// the IP and port of an address count: IPv6 flow info and scope id do not. Callers should
    /// not pass one address twice; if they do, both copies get entries, and which caller index
    /// each gets follows the order given.
    ///
    /// A weight of 0 is taken as 1 (callers leave endpoints out of rotation by leaving them out
    /// of the list), so every member owns at least one entry as long as there are no more than
    /// [`TABLE_SIZE`] members; past that, the members that come last by address own none.
    ///
    /// Build time is about `TABLE_SIZE * ln(TABLE_SIZE)` steps for equal weights, plus up to
    /// `TABLE_SIZE * members.len()` turn checks when one weight dwarfs all the others.
    ///
    /// # Panics
    ///
    /// If `members` is empty, so that [`lookup`](Self::lookup) always has an index to return
    /// (callers never build a table for an empty list), or if it has `u32::MAX` members or more.
    pub fn build(members: &[(SocketAddr, u32)]) -> MaglevTable {
        assert!(
            !members.is_empty(),
            "a Maglev table needs at least one member"
        );
        // Indices must stay below EMPTY (u32::MAX), the filler of unset entries.
        assert!(
            members.len() < u32::MAX as usize,
            "a Maglev table takes fewer than u32::MAX members"
        );
        let mut keyed: Vec<(AddrKey, u32, u32)> = members
            .iter()
            .enumerate()
            .map(|(index, &(addr, weight))| (AddrKey::new(addr), index as u32, weight.max(1)))
            .collect();
        // Stable sort: duplicates of one address keep the caller's order among themselves.
        keyed.sort_by(|a, b| a.0.bytes().cmp(b.0.bytes()));

        let max_weight = keyed.iter().map(|m| u64::from(m.2)).max().unwrap_or(1);
        let mut builders: Vec<Builder> = keyed
            .iter()
            .map(|(key, index, weight)| {
                let offset = (stable_hash(key.bytes(), OFFSET_SEED) % TABLE_SIZE as u64) as usize;
                let skip = stable_hash(key.bytes(), SKIP_SEED) % (TABLE_SIZE as u64 - 1) + 1;
                Builder {
                    index: *index,
                    weight: u64::from(*weight),
                    next: offset,
                    skip: skip as usize,
                    target: 0,
                }
            })
            .collect();

        // u32::MAX marks an unfilled entry: member indices are below it (asserted above).
        const EMPTY: u32 = u32::MAX;
        let mut entries = vec![EMPTY; TABLE_SIZE].into_boxed_slice();
        let mut filled = 0usize;
        // Round 0 lets every member take one entry (0 * w >= 0), which is what guarantees each
        // member at least one. The largest-weight member takes a turn every round, so each
        // round fills at least one entry and the loop ends.
        let mut round: u64 = 0;
        'fill: loop {
            for b in &mut builders {
                if round * b.weight < b.target {
                    continue;
                }
                b.target += max_weight;
                // The table is not full, so the member's permutation (which visits every entry)
                // reaches a free one; the entries it skips stay filled, so across the whole
                // build each member walks its permutation at most once.
                while entries[b.next] != EMPTY {
                    b.next = step(b.next, b.skip);
                }
                entries[b.next] = b.index;
                b.next = step(b.next, b.skip);
                filled += 1;
                if filled == TABLE_SIZE {
                    break 'fill;
                }
            }
            round += 1;
        }
        MaglevTable {
            entries,
            members: members.len(),
        }
    }

    /// Index into the `members` the table was built from for a client IP: always the same for
    /// the same IP and member list. An IPv4 address and its IPv4-mapped IPv6 form
    /// (`::ffff:a.b.c.d`) hash differently and may land on different members; a listener sees
    /// one form or the other consistently, so this only matters across address families.
    ///
    /// Hot path: one hash and one load; no lock, allocation or syscall.
    pub fn lookup(&self, client: IpAddr) -> usize {
        self.entries[(hash_ip(client) % TABLE_SIZE as u64) as usize] as usize
    }

    /// How many members the table was built from; [`lookup`](Self::lookup) is always below it.
    pub fn members(&self) -> usize {
        self.members
    }
}

impl fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("members", &self.members)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// One step along a Maglev permutation: `(position + skip) % TABLE_SIZE`, with both below it.
fn step(position: usize, skip: usize) -> usize {
    let next = position + skip;
    if next >= TABLE_SIZE {
        next - TABLE_SIZE
    } else {
        next
    }
}

/// A stable 64-bit hash of a client IP: the same value in every build and on every platform.
/// The bytes hashed are a family tag (4 or 6) and the address octets in network order, so an
/// IPv4 address and its IPv4-mapped IPv6 form are distinct keys.
///
/// Hot path safe: no allocation.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            stable_hash(&[4, o[0], o[1], o[2], o[3]], CLIENT_SEED)
        }
        IpAddr::V6(v6) => {
            let mut bytes = [0u8; 17];
            bytes[0] = 6;
            bytes[1..].copy_from_slice(&v6.octets());
            stable_hash(&bytes, CLIENT_SEED)
        }
    }
}

/// The bytes that identify a member: family tag (4 or 6), IP octets, port big-endian. They are
/// both hashed and used as the sort key, so that the table depends on nothing but these bytes;
/// the tag comes first, so IPv4 members sort first.
struct AddrKey {
    buf: [u8; ADDR_KEY_LEN],
    len: usize,
}

impl AddrKey {
    fn new(addr: SocketAddr) -> Self {
        let mut buf = [0u8; ADDR_KEY_LEN];
        let ip_len = match addr.ip() {
            IpAddr::V4(v4) => {
                buf[0] = 4;
                buf[1..5].copy_from_slice(&v4.octets());
                4
            }
            IpAddr::V6(v6) => {
                buf[0] = 6;
                buf[1..17].copy_from_slice(&v6.octets());
                16
            }
        };
        buf[1 + ip_len..3 + ip_len].copy_from_slice(&addr.port().to_be_bytes());
        AddrKey {
            buf,
            len: 3 + ip_len,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// FNV-1a 64 over `bytes`, started from the FNV offset basis XOR `seed`, then the splitmix64
/// finalizer. FNV-1a alone mixes the last bytes poorly into the high bits (and `% TABLE_SIZE`
/// uses all of them); the finalizer spreads every input bit over the whole word. Both halves are
/// fixed, published algorithms written out here, so the value never changes with the compiler.
fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET_BASIS ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // splitmix64's finalizer (Steele, Lea, Flood 2014; constants from Stafford's "Mix13").
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

    fn member(a: u8, b: u8, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, a, b), port))
    }

    fn equal(n: u8) -> Vec<(SocketAddr, u32)> {
        (0..n).map(|i| (member(0, i + 1, 8080), 1)).collect()
    }

    /// 10,000 distinct client addresses, 10.0.x.y.
    fn clients() -> Vec<IpAddr> {
        (0..40u8)
            .flat_map(|x| (0..250u8).map(move |y| IpAddr::V4(Ipv4Addr::new(10, 0, x, y))))
            .collect()
    }

    /// The member address each client reaches.
    fn placement(members: &[(SocketAddr, u32)]) -> Vec<SocketAddr> {
        let table = MaglevTable::build(members);
        clients()
            .into_iter()
            .map(|c| members[table.lookup(c)].0)
            .collect()
    }

    /// Per member, the share (in percent) of table entries and of the 10,000 clients.
    fn shares(members: &[(SocketAddr, u32)]) -> (Vec<f64>, Vec<f64>) {
        let table = MaglevTable::build(members);
        let mut entries = vec![0usize; members.len()];
        for &e in table.entries.iter() {
            entries[e as usize] += 1;
        }
        let mut hits = vec![0usize; members.len()];
        let clients = clients();
        for &c in &clients {
            hits[table.lookup(c)] += 1;
        }
        let percent = |counts: Vec<usize>, total: usize| {
            counts
                .into_iter()
                .map(|n| 100.0 * n as f64 / total as f64)
                .collect()
        };
        (percent(entries, TABLE_SIZE), percent(hits, clients.len()))
    }

    #[test]
    fn hashes_are_pinned() {
        // These values must never change: other vipd builds rely on them to build the same
        // tables. A failure here means the hash changed, not that the test needs updating.
        assert_eq!(
            hash_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            0x6a77_6486_a39b_ad3f
        );
        assert_eq!(
            hash_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            0x19e5_7720_e86c_08d0
        );
        let key = AddrKey::new(member(0, 1, 8080));
        assert_eq!(stable_hash(key.bytes(), OFFSET_SEED), 0xc66a_8a0b_2761_78c5);
        assert_eq!(stable_hash(key.bytes(), SKIP_SEED), 0x2c4c_cad0_2136_3270);
    }

    #[test]
    fn table_is_pinned() {
        // The same guard for the population: a checksum of a small table's entries. The pinned
        // values here and above were computed by an independent implementation of this
        // module's description (FNV-1a + splitmix64, Envoy's weighted population).
        let table = MaglevTable::build(&[
            (member(0, 1, 80), 1),
            (member(0, 2, 80), 2),
            (member(0, 3, 443), 3),
        ]);
        let entries: Vec<u8> = table.entries.iter().map(|&e| e as u8).collect();
        assert_eq!(stable_hash(&entries, 0), 0xd91a_e964_9b11_621f);
    }

    #[test]
    fn same_client_same_member() {
        let table = MaglevTable::build(&equal(5));
        for c in clients() {
            let first = table.lookup(c);
            assert!(first < 5);
            for _ in 0..3 {
                assert_eq!(table.lookup(c), first);
            }
        }
    }

    #[test]
    fn builds_are_identical() {
        let members = equal(7);
        assert_eq!(MaglevTable::build(&members), MaglevTable::build(&members));
    }

    #[test]
    fn order_of_members_does_not_matter() {
        let members: Vec<(SocketAddr, u32)> = (0..6u8)
            .map(|i| (member(i, 1, 9000 + u16::from(i)), u32::from(i % 3) + 1))
            .chain([(SocketAddr::from((Ipv6Addr::LOCALHOST, 80)), 2)])
            .collect();
        let mut shuffled = members.clone();
        shuffled.reverse();
        shuffled.rotate_left(3);
        assert_ne!(shuffled, members);
        assert_eq!(placement(&members), placement(&shuffled));
    }

    #[test]
    fn removing_a_member_moves_only_its_clients() {
        let before = equal(5);
        let gone = before[2].0;
        let after: Vec<_> = before.iter().copied().filter(|m| m.0 != gone).collect();
        let (old, new) = (placement(&before), placement(&after));
        let (mut others, mut kept) = (0usize, 0usize);
        for (o, n) in old.iter().zip(&new) {
            assert_ne!(*n, gone);
            if *o != gone {
                others += 1;
                kept += usize::from(o == n);
            }
        }
        let share = 100.0 * kept as f64 / others as f64;
        assert!(
            share >= 98.0,
            "kept {kept} of {others} clients of the remaining members ({share:.2}%)"
        );
        // Shown with `--nocapture`: the figure the test measured.
        println!("kept {kept} of {others} clients of the remaining members ({share:.2}%)");
    }

    #[test]
    fn shares_follow_weights() {
        for weights in [&[1u32, 2, 3][..], &[1, 1, 5, 3]] {
            let members: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (member(0, i as u8 + 1, 8080), w))
                .collect();
            let total: u32 = weights.iter().sum();
            let (entries, clients) = shares(&members);
            for (i, &w) in weights.iter().enumerate() {
                let want = 100.0 * f64::from(w) / f64::from(total);
                for (what, got) in [("entries", entries[i]), ("clients", clients[i])] {
                    assert!(
                        (got - want).abs() <= 2.0,
                        "weights {weights:?}: member {i} has {got:.2}% of {what}, want {want:.2}%"
                    );
                }
            }
            println!("weights {weights:?}: entries {entries:.2?}%, clients {clients:.2?}%");
        }
    }

    #[test]
    fn single_member_gets_everything() {
        let table = MaglevTable::build(&[(member(0, 1, 80), 3)]);
        assert!(table.entries.iter().all(|&e| e == 0));
        assert_eq!(table.lookup(IpAddr::V6(Ipv6Addr::LOCALHOST)), 0);
        assert_eq!(table.members(), 1);
    }

    #[test]
    #[should_panic(expected = "at least one member")]
    fn empty_list_is_refused() {
        MaglevTable::build(&[]);
    }

    #[test]
    fn a_thousand_members_each_own_an_entry() {
        // Mixed weights, one of them dwarfing the rest: the turn rule still gives every member
        // its round-0 entry.
        let members: Vec<_> = (0..1000u16)
            .map(|i| {
                let weight = if i == 0 { 1_000 } else { u32::from(i % 7) + 1 };
                (member((i / 250) as u8, (i % 250) as u8, 8000 + i), weight)
            })
            .collect();
        let table = MaglevTable::build(&members);
        let mut owned = vec![0usize; members.len()];
        for &e in table.entries.iter() {
            owned[e as usize] += 1;
        }
        let without: Vec<usize> = (0..owned.len()).filter(|&i| owned[i] == 0).collect();
        assert!(without.is_empty(), "members without entries: {without:?}");
    }
}
