//! "Read until the expectation is met": a pure matcher fed the bytes of a reply as they arrive,
//! in however many pieces, that says when the expected bytes have been seen or when to give up.
//!
//! It holds no reply: only its first bytes (for the failure message) and the last
//! `expected.len() - 1` (an expected string may be split across two reads), so a probe costs
//! the same whatever the limit.

use std::fmt;
use std::time::Duration;

/// Printable characters of an excerpt in a failure message (escapes count as their length).
const EXCERPT_CHARS: usize = 80;

/// Where a reply stands after the bytes fed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The expected bytes have arrived.
    Found,
    /// Not yet; more bytes may still bring them.
    More,
    /// The limit is reached without them; reading on cannot help.
    Full,
}

/// Why a reply ended before the expected bytes arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed the connection.
    PeerClosed,
    /// The HTTP body ended.
    BodyEnded,
    /// The matcher's limit was reached.
    Limit(usize),
    /// The probe's timeout passed.
    TimedOut(Duration),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::PeerClosed => f.write_str("peer closed"),
            End::BodyEnded => f.write_str("end of body"),
            End::Limit(limit) => write!(f, "read limit of {limit} bytes reached"),
            End::TimedOut(after) => write!(f, "timed out after {after:?}"),
        }
    }
}

/// An expectation that was not met: what was expected, how much arrived and how it began.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected \"{expected}\" not found in {received} bytes received ({end}){}", received_excerpt(.excerpt))]
pub struct Unmet {
    /// The expected bytes, escaped and shortened for a log line.
    pub expected: String,
    /// How many bytes arrived (up to the limit).
    pub received: usize,
    /// The first of them, escaped and shortened for a log line.
    pub excerpt: String,
    /// How the reply ended.
    pub end: End,
}

fn received_excerpt(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": \"{excerpt}\"")
    }
}

/// Looks for `expected` in the first `limit` bytes of a reply fed piece by piece.
#[derive(Debug)]
pub struct Matcher<'a> {
    expected: &'a [u8],
    limit: usize,
    received: usize,
    found: bool,
    /// The first bytes of the reply, for the excerpt.
    head: Vec<u8>,
    /// The last `expected.len() - 1` bytes fed: a match may start in them.
    tail: Vec<u8>,
}

impl<'a> Matcher<'a> {
    /// A matcher for `expected` (non-empty, as validation guarantees) over the first `limit`
    /// bytes.
    pub fn new(expected: &'a [u8], limit: usize) -> Self {
        Matcher {
            expected,
            limit,
            received: 0,
            // Nothing to look for is found at once.
            found: expected.is_empty(),
            head: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// Takes the next bytes of the reply; bytes past the limit are ignored.
    pub fn feed(&mut self, bytes: &[u8]) -> Progress {
        if self.found {
            return Progress::Found;
        }
        let bytes = &bytes[..bytes.len().min(self.limit - self.received)];
        self.received += bytes.len();
        let head_room = EXCERPT_CHARS.saturating_sub(self.head.len());
        self.head
            .extend_from_slice(&bytes[..bytes.len().min(head_room)]);

        let keep = self.expected.len() - 1;
        // A match that starts in the tail ends within the first `keep` new bytes.
        let mut seam = std::mem::take(&mut self.tail);
        seam.extend_from_slice(&bytes[..bytes.len().min(keep)]);
        self.found = contains(&seam, self.expected) || contains(bytes, self.expected);
        if self.found {
            return Progress::Found;
        }
        // The new tail: the last `keep` bytes of old tail + new bytes, which end `seam` when
        // the new bytes are short, and end `bytes` otherwise.
        self.tail = if bytes.len() >= keep {
            bytes[bytes.len() - keep..].to_vec()
        } else {
            seam.drain(..seam.len().saturating_sub(keep));
            seam
        };
        if self.received >= self.limit {
            Progress::Full
        } else {
            Progress::More
        }
    }

    /// Takes the next bytes and says whether the probe is decided: `Some(Ok)` once found,
    /// `Some(Err)` once the limit is reached without them, `None` to read on.
    pub fn verdict(&mut self, bytes: &[u8]) -> Option<Result<(), Unmet>> {
        match self.feed(bytes) {
            Progress::Found => Some(Ok(())),
            Progress::Full => Some(Err(self.unmet(End::Limit(self.limit)))),
            Progress::More => None,
        }
    }

    /// How many bytes counted so far (at most the limit).
    pub fn received(&self) -> usize {
        self.received
    }

    /// The failure to report when the reply ended as `end` without the expected bytes.
    pub fn unmet(&self, end: End) -> Unmet {
        Unmet {
            expected: excerpt(self.expected),
            received: self.received,
            excerpt: excerpt(&self.head),
            end,
        }
    }
}

/// Whether `needle` (non-empty) occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `bytes` made printable (`\r`, `\n`, `\xNN`, quotes escaped) and cut to about
/// `EXCERPT_CHARS` characters, with `...` when cut.
fn excerpt(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        let escaped = std::ascii::escape_default(b).to_string();
        if out.len() + escaped.len() > EXCERPT_CHARS {
            out.push_str("...");
            break;
        }
        out.push_str(&escaped);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` in order and returns the progress after each.
    fn feed_all(matcher: &mut Matcher<'_>, pieces: &[&[u8]]) -> Vec<Progress> {
        pieces.iter().map(|p| matcher.feed(p)).collect()
    }

    #[test]
    fn found_in_one_piece() {
        let mut m = Matcher::new(b"role:master", 16384);
        assert_eq!(
            feed_all(&mut m, &[b"# Replication\r\nrole:master\r\n"]),
            [Progress::Found]
        );
    }

    #[test]
    fn found_across_every_split_point() {
        let reply = b"# Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
        for split in 0..=reply.len() {
            let (a, b) = reply.split_at(split);
            let mut m = Matcher::new(b"role:master", 16384);
            let progress = feed_all(&mut m, &[a, b]);
            assert_eq!(progress.last(), Some(&Progress::Found), "split at {split}");
        }
    }

    #[test]
    fn found_when_fed_one_byte_at_a_time() {
        let mut m = Matcher::new(b"master", 100);
        let pieces: Vec<&[u8]> = b"role:master".chunks(1).collect();
        let progress = feed_all(&mut m, &pieces);
        assert_eq!(progress.last(), Some(&Progress::Found));
        assert!(
            progress[..progress.len() - 1]
                .iter()
                .all(|p| *p == Progress::More)
        );
    }

    #[test]
    fn a_one_byte_expectation_has_no_tail() {
        let mut m = Matcher::new(b"+", 100);
        assert_eq!(
            feed_all(&mut m, &[b"-ERR", b"x+"]),
            [Progress::More, Progress::Found]
        );
    }

    #[test]
    fn bytes_past_the_limit_do_not_count() {
        // "master" would be complete only past the limit of 10 bytes.
        let mut m = Matcher::new(b"master", 10);
        assert_eq!(
            feed_all(&mut m, &[b"role:mas", b"ter"]),
            [Progress::More, Progress::Full]
        );
        assert_eq!(m.received(), 10);
        // Found exactly at the limit.
        let mut m = Matcher::new(b"master", 11);
        assert_eq!(
            feed_all(&mut m, &[b"role:mas", b"ter"]),
            [Progress::More, Progress::Found]
        );
    }

    #[test]
    fn verdict_decides_on_found_or_full_only() {
        let mut m = Matcher::new(b"ok", 6);
        assert_eq!(m.verdict(b"o"), None);
        assert_eq!(m.verdict(b"k"), Some(Ok(())));
        let mut m = Matcher::new(b"ok", 6);
        assert_eq!(m.verdict(b"nope"), None);
        let full = m.verdict(b"no ok").expect("decided").expect_err("full");
        assert_eq!(full.end, End::Limit(6));
        assert_eq!(full.received, 6);
    }

    #[test]
    fn unmet_says_what_was_missing_and_what_came() {
        let mut m = Matcher::new(b"role:master", 16384);
        m.feed(b"# Replication\r\nrole:slave\r\n");
        let unmet = m.unmet(End::PeerClosed);
        assert_eq!(unmet.received, 27);
        assert_eq!(
            unmet.to_string(),
            "expected \"role:master\" not found in 27 bytes received (peer closed): \
             \"# Replication\\r\\nrole:slave\\r\\n\""
        );
        let silent = Matcher::new(b"PONG", 10).unmet(End::TimedOut(Duration::from_millis(200)));
        assert_eq!(
            silent.to_string(),
            "expected \"PONG\" not found in 0 bytes received (timed out after 200ms)"
        );
    }

    #[test]
    fn excerpts_are_escaped_and_short() {
        assert_eq!(excerpt(b"a\"b\x00\xff\t"), "a\\\"b\\x00\\xff\\t");
        let long = excerpt(&[b'x'; 200]);
        assert_eq!(long, format!("{}...", "x".repeat(80)));
        // An escape is never cut in half.
        let escapes = excerpt(&[0u8; 30]);
        assert_eq!(escapes, format!("{}...", "\\x00".repeat(20)));
    }

    #[test]
    fn excerpt_keeps_only_the_first_bytes() {
        let mut m = Matcher::new(b"never", 1 << 20);
        for _ in 0..100 {
            m.feed(&[b'y'; 1000]);
        }
        assert_eq!(m.received(), 100_000);
        assert_eq!(m.head.len(), EXCERPT_CHARS);
        assert_eq!(m.tail.len(), 4);
    }
}
