//! The timestamp every bench message carries, so whoever receives it can compute latency
//! without shared state.
//!
//! It travels as the `client_msg_id` (echoed in the sender's `ack` and in every member's
//! `message` frame) and again as the first word of `content`, in case a path drops the id.
//! Times are CLOCK_REALTIME unix nanoseconds: client and server share a machine (and the bench
//! processes sharing one run do too), so one process may stamp and another receive.
//!
//! Format: `b<run hex>.<phase>.<conn>.<n>.<scheduled ns>.<sent ns>` — at most 94 bytes, under
//! the server's 128-byte `client_msg_id` limit, and unique per run so the server's
//! idempotency (same id, same user, same chat within 24 h) never swallows a message.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Random per bench process, so ids never repeat across runs.
    pub run: u32,
    /// Load phase (each rate of a sweep is one phase).
    pub phase: u32,
    /// Sending connection.
    pub conn: u32,
    /// Message number on that connection.
    pub n: u64,
    /// When the schedule said to send it.
    pub scheduled_ns: u64,
    /// When it was actually handed to the socket.
    pub sent_ns: u64,
}

impl Stamp {
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(80);
        let _ = write!(
            s,
            "b{:x}.{}.{}.{}.{}.{}",
            self.run, self.phase, self.conn, self.n, self.scheduled_ns, self.sent_ns
        );
        s
    }

    /// Parse a `client_msg_id` or a content string (whose first word is the stamp).
    /// Anything else (messages not sent by a bench) gives `None`.
    pub fn decode(s: &str) -> Option<Stamp> {
        let word = s.split(' ').next()?;
        let rest = word.strip_prefix('b')?;
        let mut parts = rest.split('.');
        let run = u32::from_str_radix(parts.next()?, 16).ok()?;
        let phase = parts.next()?.parse().ok()?;
        let conn = parts.next()?.parse().ok()?;
        let n = parts.next()?.parse().ok()?;
        let scheduled_ns = parts.next()?.parse().ok()?;
        let sent_ns = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Stamp {
            run,
            phase,
            conn,
            n,
            scheduled_ns,
            sent_ns,
        })
    }

    /// Message content: the stamp, a space, then filler up to `size` bytes (never shorter than
    /// the stamp itself).
    pub fn content(&self, size: usize) -> String {
        let mut s = self.encode();
        if s.len() + 1 < size {
            s.push(' ');
            s.extend(std::iter::repeat_n('x', size - s.len()));
        }
        s
    }
}

/// CLOCK_REALTIME now, in unix nanoseconds.
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Microseconds from `earlier_ns` to `later_ns`; 0 if the clock stepped backwards.
pub fn elapsed_us(earlier_ns: u64, later_ns: u64) -> u64 {
    later_ns.saturating_sub(earlier_ns) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_id_and_content() {
        let s = Stamp {
            run: 0xdead_beef,
            phase: 3,
            conn: 1999,
            n: 42,
            scheduled_ns: 1_790_000_000_123_456_789,
            sent_ns: 1_790_000_000_123_999_000,
        };
        assert_eq!(Stamp::decode(&s.encode()), Some(s));
        let c = s.content(256);
        assert_eq!(c.len(), 256);
        assert_eq!(Stamp::decode(&c), Some(s));
        // Small sizes keep the whole stamp.
        assert_eq!(Stamp::decode(&s.content(4)), Some(s));
    }

    #[test]
    fn worst_case_fits_the_server_limit() {
        let s = Stamp {
            run: u32::MAX,
            phase: u32::MAX,
            conn: u32::MAX,
            n: u64::MAX,
            scheduled_ns: u64::MAX,
            sent_ns: u64::MAX,
        };
        assert!(s.encode().len() <= 128, "{}", s.encode().len());
    }

    #[test]
    fn foreign_text_is_not_a_stamp() {
        for s in [
            "hello",
            "",
            "b",
            "bzz.1.2.3.4.5",
            "b1.2.3.4.5",
            "b1.2.3.4.5.6.7",
            "c1.2.3.4.5.6",
        ] {
            assert_eq!(Stamp::decode(s), None, "{s:?}");
        }
    }

    #[test]
    fn elapsed_never_underflows() {
        assert_eq!(elapsed_us(2_000, 1_000), 0);
        assert_eq!(elapsed_us(1_000, 1_501_000), 1_500);
    }
}
