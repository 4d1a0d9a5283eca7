//! Receipt marks: merged in memory per (chat, member) and flushed in batches.
//!
//! Clients send `delivered`/`read` up-to marks often (every message, every scroll). They are
//! merged here (max wins; `read` implies `delivered`) and every flush interval the ones that
//! advance past the stored marks are written in one store operation and announced to the other
//! members as `receipt` frames. Marks never go backwards: merging takes the maximum, the store
//! keeps the maximum, and a mark beyond the chat's last `seq` is clamped to it.

use crate::model::{ChatId, Marks, ReceiptKind, Seq, UserId};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct PendingMarks {
    marks: HashMap<(ChatId, UserId), (Seq, Seq)>,
}

impl PendingMarks {
    pub fn record(&mut self, chat_id: ChatId, user_id: UserId, kind: ReceiptKind, seq: Seq) {
        let e = self.marks.entry((chat_id, user_id)).or_insert((0, 0));
        e.0 = e.0.max(seq);
        if kind == ReceiptKind::Read {
            e.1 = e.1.max(seq);
        }
    }

    pub fn take(&mut self) -> HashMap<(ChatId, UserId), (Seq, Seq)> {
        std::mem::take(&mut self.marks)
    }

    pub fn get(&self, chat_id: ChatId, user_id: UserId) -> Option<(Seq, Seq)> {
        self.marks.get(&(chat_id, user_id)).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

/// What one member's pending marks change, given the stored marks and the chat's last seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub marks: Marks,
    /// The receipts to announce: (kind, seq), only for marks that moved forward.
    pub announce: Vec<(ReceiptKind, Seq)>,
}

pub fn advance(stored: Marks, pending: (Seq, Seq), last_seq: Seq) -> Option<Advance> {
    let read = pending.1.min(last_seq).max(stored.read_seq);
    let delivered = pending.0.min(last_seq).max(stored.delivered_seq).max(read);
    let mut announce = Vec::new();
    if delivered > stored.delivered_seq {
        announce.push((ReceiptKind::Delivered, delivered));
    }
    if read > stored.read_seq {
        announce.push((ReceiptKind::Read, read));
    }
    (!announce.is_empty()).then_some(Advance {
        marks: Marks {
            user_id: stored.user_id,
            delivered_seq: delivered,
            read_seq: read,
        },
        announce,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(d: Seq, r: Seq) -> Marks {
        Marks {
            user_id: 7,
            delivered_seq: d,
            read_seq: r,
        }
    }

    #[test]
    fn merging_keeps_the_maximum_and_read_implies_delivered() {
        let mut p = PendingMarks::default();
        p.record(1, 7, ReceiptKind::Delivered, 5);
        p.record(1, 7, ReceiptKind::Delivered, 3);
        p.record(1, 7, ReceiptKind::Read, 4);
        p.record(1, 7, ReceiptKind::Read, 2);
        assert_eq!(p.get(1, 7), Some((5, 4)));
        p.record(1, 7, ReceiptKind::Read, 9);
        assert_eq!(p.get(1, 7), Some((9, 9)));
    }

    #[test]
    fn marks_never_go_backwards_and_are_clamped() {
        assert_eq!(advance(m(5, 5), (3, 2), 10), None);
        let a = advance(m(5, 2), (8, 4), 10).unwrap();
        assert_eq!(a.marks, m(8, 4));
        assert_eq!(
            a.announce,
            vec![(ReceiptKind::Delivered, 8), (ReceiptKind::Read, 4)]
        );
        // Beyond the last message: clamped.
        let a = advance(m(0, 0), (0, 99), 10).unwrap();
        assert_eq!(a.marks, m(10, 10));
        // Only read moved: delivered is not re-announced.
        let a = advance(m(10, 3), (0, 6), 10).unwrap();
        assert_eq!(a.announce, vec![(ReceiptKind::Read, 6)]);
    }
}
