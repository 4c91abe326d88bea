//! What a completion is for (its `user_data`), and the state machine of one relay direction,
//! both free of the ring so they can be tested alone.

/// Slab key space: the low 32 bits of `user_data`.
const KEY_BITS: u32 = 32;
/// Generation space: the 24 bits above the key (wraps; a slot would need 16 M reuses while
/// one stale completion is still in flight to be confused).
const GEN_BITS: u32 = 24;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// The operation a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The listener's multishot accept (no connection).
    Accept = 1,
    /// Cancelling the multishot accept (no connection).
    CancelAccept,
    /// A connect to an endpoint.
    Connect,
    /// The timeout linked to a connect.
    ConnectTimeout,
    /// Recv from the client (direction 0, client → endpoint).
    RecvClient,
    /// Send to the endpoint (direction 0).
    SendUpstream,
    /// Recv from the endpoint (direction 1, endpoint → client).
    RecvUpstream,
    /// Send to the client (direction 1).
    SendClient,
    /// Cancelling what is still in flight on a closing connection's sockets.
    Cancel,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        use Kind::*;
        Some(match value {
            1 => Accept,
            2 => CancelAccept,
            3 => Connect,
            4 => ConnectTimeout,
            5 => RecvClient,
            6 => SendUpstream,
            7 => RecvUpstream,
            8 => SendClient,
            9 => Cancel,
            _ => return None,
        })
    }

    /// The recv of direction `dir` (0: client → endpoint, 1: endpoint → client).
    pub fn recv(dir: usize) -> Kind {
        if dir == 0 {
            Kind::RecvClient
        } else {
            Kind::RecvUpstream
        }
    }

    /// The send of direction `dir`.
    pub fn send(dir: usize) -> Kind {
        if dir == 0 {
            Kind::SendUpstream
        } else {
            Kind::SendClient
        }
    }

    /// The direction of a recv or send.
    pub fn dir(self) -> Option<usize> {
        match self {
            Kind::RecvClient | Kind::SendUpstream => Some(0),
            Kind::RecvUpstream | Kind::SendClient => Some(1),
            _ => None,
        }
    }
}

/// A decoded `user_data`: kind, slab key and the slot's generation when submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// What the operation was.
    pub kind: Kind,
    /// The connection's slab key (0 for loop-level operations).
    pub key: u32,
    /// The slot generation at submission, masked to 24 bits.
    pub generation: u32,
}

impl Op {
    /// An operation of connection `key` at generation `generation` (masked).
    pub fn new(kind: Kind, key: u32, generation: u32) -> Op {
        Op {
            kind,
            key,
            generation: generation & GEN_MASK,
        }
    }

    /// The 64-bit `user_data`: kind in the top byte, generation, key in the low 32 bits.
    pub fn encode(self) -> u64 {
        (u64::from(self.kind as u8) << (KEY_BITS + GEN_BITS))
            | (u64::from(self.generation & GEN_MASK) << KEY_BITS)
            | u64::from(self.key)
    }

    /// Decodes a `user_data`; `None` for one this loop never made.
    pub fn decode(user_data: u64) -> Option<Op> {
        let kind = Kind::from_u8((user_data >> (KEY_BITS + GEN_BITS)) as u8)?;
        Some(Op {
            kind,
            key: user_data as u32,
            generation: (user_data >> KEY_BITS) as u32 & GEN_MASK,
        })
    }

    /// Whether this operation is for the slot now at `generation`.
    pub fn is_for(self, generation: u32) -> bool {
        self.generation == generation & GEN_MASK
    }
}

/// Where one direction of a relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// A recv into the direction's buffer is (to be) in flight.
    Receiving,
    /// Bytes `start..end` of the buffer are (to be) sent.
    Sending {
        /// First byte not yet sent.
        start: usize,
        /// End of the bytes received.
        end: usize,
    },
    /// The source reached EOF and the destination was shut down for writing.
    Done,
}

/// What the loop does next for a direction, after a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Submit a send of `start..end`; `moved` bytes arrived (count them) or left.
    Send {
        /// First byte to send.
        start: usize,
        /// End of the bytes to send.
        end: usize,
        /// Bytes the completion moved (received, or sent).
        moved: usize,
    },
    /// Sent everything: `moved` bytes left; submit a recv.
    SentAll {
        /// Bytes the completion sent.
        moved: usize,
    },
    /// EOF: shut the destination's sending side down; the direction is done.
    Eof,
    /// The operation failed with this errno: end the connection.
    Fail(i32),
}

impl Dir {
    /// Applies a recv completion's `result`.
    pub fn on_recv(&mut self, result: i32) -> Next {
        debug_assert_eq!(*self, Dir::Receiving);
        match result {
            0 => {
                *self = Dir::Done;
                Next::Eof
            }
            n if n > 0 => {
                let end = n as usize;
                *self = Dir::Sending { start: 0, end };
                Next::Send {
                    start: 0,
                    end,
                    moved: end,
                }
            }
            errno => Next::Fail(-errno),
        }
    }

    /// Applies a send completion's `result`.
    pub fn on_send(&mut self, result: i32) -> Next {
        let Dir::Sending { start, end } = *self else {
            debug_assert!(false, "a send completed while not sending: {self:?}");
            return Next::Fail(libc::EINVAL);
        };
        match result {
            n if n > 0 => {
                let start = start + n as usize;
                if start >= end {
                    *self = Dir::Receiving;
                    Next::SentAll { moved: n as usize }
                } else {
                    *self = Dir::Sending { start, end };
                    Next::Send {
                        start,
                        end,
                        moved: n as usize,
                    }
                }
            }
            // A send of a non-empty buffer returning 0 would repeat forever.
            0 => Next::Fail(libc::EPIPE),
            errno => Next::Fail(-errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_every_kind() {
        use Kind::*;
        for kind in [
            Accept,
            CancelAccept,
            Connect,
            ConnectTimeout,
            RecvClient,
            SendUpstream,
            RecvUpstream,
            SendClient,
            Cancel,
        ] {
            for (key, generation) in [(0, 0), (1, 1), (u32::MAX, GEN_MASK), (77, 12_345)] {
                let op = Op::new(kind, key, generation);
                assert_eq!(Op::decode(op.encode()), Some(op), "{op:?}");
            }
        }
        assert_eq!(Op::decode(0), None);
        assert_eq!(Op::decode(u64::MAX), None);
    }

    #[test]
    fn generations_tell_stale_completions_apart() {
        let old = Op::new(Kind::RecvClient, 5, 41);
        assert!(old.is_for(41));
        assert!(!old.is_for(42));
        // Generations wrap at 24 bits, consistently on both sides.
        let wrapped = Op::new(Kind::RecvClient, 5, GEN_MASK + 1);
        assert!(wrapped.is_for(0));
        assert_eq!(Op::decode(wrapped.encode()).unwrap().generation, 0);
    }

    #[test]
    fn kinds_know_their_direction() {
        for dir in [0, 1] {
            assert_eq!(Kind::recv(dir).dir(), Some(dir));
            assert_eq!(Kind::send(dir).dir(), Some(dir));
        }
        assert_eq!(Kind::Connect.dir(), None);
    }

    #[test]
    fn a_direction_relays_partial_sends_then_reads_again() {
        let mut dir = Dir::Receiving;
        assert_eq!(
            dir.on_recv(100),
            Next::Send {
                start: 0,
                end: 100,
                moved: 100
            }
        );
        assert_eq!(
            dir.on_send(60),
            Next::Send {
                start: 60,
                end: 100,
                moved: 60
            }
        );
        assert_eq!(dir.on_send(40), Next::SentAll { moved: 40 });
        assert_eq!(dir, Dir::Receiving);
        assert_eq!(dir.on_recv(0), Next::Eof);
        assert_eq!(dir, Dir::Done);
    }

    #[test]
    fn errors_end_the_direction() {
        let mut dir = Dir::Receiving;
        assert_eq!(dir.on_recv(-libc::ECONNRESET), Next::Fail(libc::ECONNRESET));
        let mut dir = Dir::Sending { start: 0, end: 10 };
        assert_eq!(dir.on_send(-libc::EPIPE), Next::Fail(libc::EPIPE));
        let mut dir = Dir::Sending { start: 0, end: 10 };
        assert_eq!(dir.on_send(0), Next::Fail(libc::EPIPE));
    }
}
