//! Receipt marks: merged in memory per (chat, member) and flushed in batches.
//!
//! Clients send `delivered`/`read` up-to marks often (every message, every scroll). They are
//! merged here (max wins; `read` implies `delivered`) and every flush interval the ones that
//! advance past the stored marks are written in one store operation and announced to the other
//! members as `receipt` frames. Marks never go backwards: merging takes the maximum, the store
//! keeps the maximum, and a mark beyond the chat's last `seq` is clamped to it.
//!
//! The member's own other devices get the receipt too (so unread counts agree everywhere),
//! but not the connection that sent the mark: each pending mark remembers which connection
//! raised it last ([`Pending::delivered_by`], [`Pending::read_by`]).

use crate::model::{ChatId, Marks, ReceiptKind, Seq, UserId};
use std::collections::HashMap;

/// One member's merged marks in one chat, and the connections (hub ids of this process) that
/// raised each to its value: those already know and are skipped when it is announced. `None`:
/// nobody to skip (e.g. marks put back after a failed flush).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub delivered: Seq,
    pub read: Seq,
    pub delivered_by: Option<u64>,
    pub read_by: Option<u64>,
}

impl Pending {
    /// The connection that sent the mark of `kind`, if known.
    pub fn origin(&self, kind: ReceiptKind) -> Option<u64> {
        match kind {
            ReceiptKind::Delivered => self.delivered_by,
            ReceiptKind::Read => self.read_by,
        }
    }
}

#[derive(Debug, Default)]
pub struct PendingMarks {
    marks: HashMap<(ChatId, UserId), Pending>,
}

impl PendingMarks {
    /// Merge a mark sent by connection `origin` (`None`: not from a connection).
    pub fn record(
        &mut self,
        chat_id: ChatId,
        user_id: UserId,
        kind: ReceiptKind,
        seq: Seq,
        origin: Option<u64>,
    ) {
        let e = self.marks.entry((chat_id, user_id)).or_default();
        if seq > e.delivered {
            e.delivered = seq;
            e.delivered_by = origin;
        }
        if kind == ReceiptKind::Read && seq > e.read {
            e.read = seq;
            e.read_by = origin;
        }
    }

    /// Put back marks taken for a flush that failed (keeping who sent them).
    pub fn restore(&mut self, chat_id: ChatId, user_id: UserId, p: Pending) {
        self.record(
            chat_id,
            user_id,
            ReceiptKind::Delivered,
            p.delivered,
            p.delivered_by,
        );
        self.record(chat_id, user_id, ReceiptKind::Read, p.read, p.read_by);
    }

    pub fn take(&mut self) -> HashMap<(ChatId, UserId), Pending> {
        std::mem::take(&mut self.marks)
    }

    /// The pending (delivered, read) marks of a member.
    pub fn get(&self, chat_id: ChatId, user_id: UserId) -> Option<(Seq, Seq)> {
        self.marks
            .get(&(chat_id, user_id))
            .map(|p| (p.delivered, p.read))
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
        p.record(1, 7, ReceiptKind::Delivered, 5, None);
        p.record(1, 7, ReceiptKind::Delivered, 3, None);
        p.record(1, 7, ReceiptKind::Read, 4, None);
        p.record(1, 7, ReceiptKind::Read, 2, None);
        assert_eq!(p.get(1, 7), Some((5, 4)));
        p.record(1, 7, ReceiptKind::Read, 9, None);
        assert_eq!(p.get(1, 7), Some((9, 9)));
    }

    #[test]
    fn each_mark_remembers_the_connection_that_raised_it() {
        let mut p = PendingMarks::default();
        p.record(1, 7, ReceiptKind::Delivered, 5, Some(10));
        p.record(1, 7, ReceiptKind::Read, 3, Some(11));
        // Not higher: the origin stays.
        p.record(1, 7, ReceiptKind::Delivered, 4, Some(12));
        let taken = p.take()[&(1, 7)];
        assert_eq!(
            taken,
            Pending {
                delivered: 5,
                read: 3,
                delivered_by: Some(10),
                read_by: Some(11)
            }
        );
        assert_eq!(taken.origin(ReceiptKind::Read), Some(11));
        // A read past the delivered mark raises both, from that connection.
        p.record(1, 7, ReceiptKind::Read, 8, Some(12));
        p.restore(1, 7, taken);
        let again = p.take()[&(1, 7)];
        assert_eq!((again.delivered, again.read), (8, 8));
        assert_eq!((again.delivered_by, again.read_by), (Some(12), Some(12)));
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
