//! The message tail: messages that are durable in `message_log` but not yet in `messages`.
//!
//! Why: a message inserted into `messages` at once dirtied two pages of its own chat (the
//! `(chat_id, seq)` leaf and the idempotency-index leaf) in every commit — ~9 WAL pages per
//! 1:1 commit, each written, checksummed and fsynced (docs/benchmarks.md, sixth pass). Now the
//! commit that acks a message appends one row to `message_log`, a rowid table with no index,
//! so the messages of a commit share its rightmost leaf (1–2 pages per commit). The writer
//! moves them into `messages` later, a chat at a time and many messages per chat, in
//! transactions that are not fsynced on their own (the next acking commit's fsync covers them;
//! if they are lost, `message_log` still has the rows and the next start moves them again).
//!
//! Until then the messages live here, in memory, for readers (history, a chat's last seq,
//! unread counts) and for the writer (next seq, idempotency). Only the writer thread changes
//! the tail; a reader takes the tail's part first and the database's second, so a message the
//! writer moves in between is seen twice (merged by seq), never missed.

use crate::model::{ChatId, Seq, SharedMessage, UserId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// An idempotency key: (chat, sender, client_msg_id).
pub(super) type Key = (ChatId, UserId, String);

/// When the writer moves tail messages into `messages`.
#[derive(Debug, Clone, Copy)]
pub struct TailPolicy {
    /// A chat's messages are moved once its oldest tail message is this old: the longer, the
    /// more messages of one chat share a page when they are moved.
    pub max_age: Duration,
    /// Past this many messages in the tail, the oldest chats are moved regardless of age
    /// (bounds memory: ~0.5 KiB per message).
    pub max_len: usize,
    /// Most messages moved by one commit (each acking commit carries up to this many, or twice
    /// what it appends if that is more), so no commit grows long from moving.
    pub chunk: usize,
}

impl Default for TailPolicy {
    fn default() -> Self {
        TailPolicy {
            max_age: Duration::from_secs(1),
            max_len: 50_000,
            chunk: 64,
        }
    }
}

#[derive(Default)]
pub(super) struct Tail {
    /// Per chat, ascending seq: (`message_log` rowid, message).
    chats: HashMap<ChatId, VecDeque<(i64, SharedMessage)>>,
    keys: HashMap<Key, SharedMessage>,
    /// Chats with messages here, in the order their oldest one arrived.
    due: VecDeque<(ChatId, Instant)>,
    len: usize,
    /// How many times messages were moved out (readers use it to detect a move mid-read).
    moves: u64,
}

/// What the writer picked to move: per chat, the first `n` tail messages.
pub(super) struct Pick {
    pub chats: Vec<(ChatId, Vec<SharedMessage>)>,
    /// Every `message_log` row below this id is in `messages` once the picked ones are.
    pub watermark: i64,
}

impl Tail {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn moves(&self) -> u64 {
        self.moves
    }

    pub fn push(&mut self, rowid: i64, m: SharedMessage, now: Instant) {
        let q = self.chats.entry(m.chat_id).or_default();
        if q.is_empty() {
            self.due.push_back((m.chat_id, now));
        }
        if let Some(cid) = &m.client_msg_id {
            self.keys
                .insert((m.chat_id, m.sender_id, cid.clone()), m.clone());
        }
        q.push_back((rowid, m));
        self.len += 1;
    }

    pub fn by_key(&self, key: &Key) -> Option<SharedMessage> {
        self.keys.get(key).cloned()
    }

    pub fn last(&self, chat: ChatId) -> Option<&SharedMessage> {
        self.chats.get(&chat).and_then(|q| q.back()).map(|(_, m)| m)
    }

    /// The chat's tail messages with `after < seq < before`, ascending: the first `take` of
    /// them when `after` is given (paging forward), else the last `take` (paging back) —
    /// what a page of `take - 1` can use.
    pub fn range(
        &self,
        chat: ChatId,
        after: Option<Seq>,
        before: Seq,
        take: usize,
    ) -> Vec<SharedMessage> {
        let Some(q) = self.chats.get(&chat) else {
            return Vec::new();
        };
        let within = |m: &&SharedMessage| after.is_none_or(|a| m.seq > a) && m.seq < before;
        let msgs = q.iter().map(|(_, m)| m);
        if after.is_some() {
            msgs.filter(within).take(take).cloned().collect()
        } else {
            let mut v: Vec<_> = msgs.rev().filter(within).take(take).cloned().collect();
            v.reverse();
            v
        }
    }

    /// Tail messages of `chat` after `seq` not sent by `user` (for unread counts).
    pub fn unread(&self, chat: ChatId, after: Seq, user: UserId) -> u64 {
        self.chats.get(&chat).map_or(0, |q| {
            q.iter()
                .filter(|(_, m)| m.seq > after && m.sender_id != user)
                .count() as u64
        })
    }

    /// The chats due to move, oldest first, up to `chunk` messages (more when the tail is over
    /// `max_len`); everything when `all`. `None` when nothing is due.
    pub fn pick(&self, policy: &TailPolicy, now: Instant, all: bool) -> Option<Pick> {
        let over = self.len.saturating_sub(policy.max_len);
        let mut budget = if all {
            usize::MAX
        } else {
            policy.chunk.max(1) + over
        };
        let mut chats = Vec::new();
        let mut taken: HashMap<ChatId, usize> = HashMap::new();
        for (chat, since) in &self.due {
            if budget == 0 {
                break;
            }
            let old = now.saturating_duration_since(*since) >= policy.max_age;
            if !(all || old || over > 0) {
                break; // `due` is oldest first
            }
            let q = &self.chats[chat];
            let n = q.len().min(budget);
            chats.push((*chat, q.iter().take(n).map(|(_, m)| m.clone()).collect()));
            taken.insert(*chat, n);
            budget -= n;
        }
        if chats.is_empty() {
            return None;
        }
        let watermark = self
            .chats
            .iter()
            .filter_map(|(chat, q)| q.get(taken.get(chat).copied().unwrap_or(0)))
            .map(|(rowid, _)| *rowid)
            .min()
            .unwrap_or(i64::MAX);
        Some(Pick { chats, watermark })
    }

    /// The picked messages are in `messages` now: forget them.
    pub fn remove(&mut self, pick: &Pick) {
        self.moves += 1;
        for (chat, msgs) in &pick.chats {
            let Some(q) = self.chats.get_mut(chat) else {
                continue;
            };
            for m in msgs {
                if q.front().is_some_and(|(_, f)| f.seq == m.seq) {
                    q.pop_front();
                    self.len -= 1;
                    if let Some(cid) = &m.client_msg_id {
                        self.keys.remove(&(m.chat_id, m.sender_id, cid.clone()));
                    }
                }
            }
            if q.is_empty() {
                self.chats.remove(chat);
            }
        }
        let chats = &self.chats;
        self.due.retain(|(c, _)| chats.contains_key(c));
    }
}

/// Merge a page read from `messages` with the tail's part of the same range. `db` is in the
/// query's order (ascending when `ascending`, else descending) and holds at most `limit + 1`
/// rows; `tail` is ascending. Returns the page ascending and whether more exist.
pub(super) fn merge_page(
    mut db: Vec<SharedMessage>,
    tail: Vec<SharedMessage>,
    ascending: bool,
    limit: usize,
) -> (Vec<SharedMessage>, bool) {
    if !ascending {
        db.reverse();
    }
    if !tail.is_empty() {
        db.extend(tail);
        db.sort_by_key(|m| m.seq);
        db.dedup_by_key(|m| m.seq);
    }
    let has_more = db.len() > limit;
    if has_more {
        if ascending {
            db.truncate(limit);
        } else {
            db.drain(..db.len() - limit);
        }
    }
    (db, has_more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;
    use std::sync::Arc;

    fn msg(chat: ChatId, seq: Seq, sender: UserId, cid: Option<&str>) -> SharedMessage {
        Arc::new(Message {
            message_id: format!("m{chat}-{seq}"),
            chat_id: chat,
            seq,
            sender_id: sender,
            content: "x".into(),
            media_url: None,
            media: None,
            client_msg_id: cid.map(str::to_string),
            created_at: 0,
        })
    }

    fn seqs(v: &[SharedMessage]) -> Vec<Seq> {
        v.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn pick_takes_due_chats_oldest_first_within_the_chunk_and_keeps_the_watermark() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let mut t = Tail::default();
        let mut row = 0;
        for (chat, seq) in [(1, 1), (2, 1), (1, 2), (1, 3), (3, 1), (2, 2)] {
            row += 1;
            t.push(row, msg(chat, seq, 7, Some(&format!("c{chat}-{seq}"))), t0);
        }
        let p = TailPolicy {
            max_age: Duration::from_secs(1),
            max_len: 100,
            chunk: 4,
        };
        assert!(t.pick(&p, t0, false).is_none(), "nothing is old yet");
        let pick = t.pick(&p, later, false).unwrap();
        // chat 1 (3 messages), then 1 of chat 2: the chunk is 4.
        assert_eq!(pick.chats.len(), 2);
        assert_eq!(seqs(&pick.chats[0].1), vec![1, 2, 3]);
        assert_eq!(seqs(&pick.chats[1].1), vec![1]);
        // Left: chat 2 seq 2 (row 6) and chat 3 seq 1 (row 5).
        assert_eq!(pick.watermark, 5);
        t.remove(&pick);
        assert_eq!(t.len(), 2);
        assert!(t.by_key(&(1, 7, "c1-2".into())).is_none());
        assert!(t.by_key(&(2, 7, "c2-2".into())).is_some());
        assert_eq!(t.last(2).unwrap().seq, 2);
        assert!(t.last(1).is_none());
        let rest = t.pick(&p, later, true).unwrap();
        assert_eq!(rest.watermark, i64::MAX);
        t.remove(&rest);
        assert_eq!(t.len(), 0);
        assert!(t.pick(&p, later, true).is_none());
    }

    #[test]
    fn an_over_full_tail_moves_young_chats_too() {
        let t0 = Instant::now();
        let mut t = Tail::default();
        for seq in 1..=10 {
            t.push(seq as i64, msg(9, seq, 1, None), t0);
        }
        let p = TailPolicy {
            max_age: Duration::from_secs(60),
            max_len: 4,
            chunk: 2,
        };
        let pick = t.pick(&p, t0, false).unwrap();
        assert_eq!(seqs(&pick.chats[0].1), (1..=8).collect::<Vec<_>>());
        assert_eq!(pick.watermark, 9);
    }

    #[test]
    fn range_takes_from_the_paging_end() {
        let t0 = Instant::now();
        let mut t = Tail::default();
        for seq in 10..=20 {
            t.push(seq as i64, msg(4, seq, 1, None), t0);
        }
        assert_eq!(seqs(&t.range(4, Some(12), 19, 3)), vec![13, 14, 15]);
        assert_eq!(seqs(&t.range(4, None, 19, 3)), vec![16, 17, 18]);
        assert_eq!(seqs(&t.range(4, None, 11, 3)), vec![10]);
        assert!(t.range(5, None, 100, 3).is_empty());
    }

    #[test]
    fn merge_dedups_and_pages_both_ways() {
        let db_asc = vec![msg(1, 3, 1, None), msg(1, 4, 1, None)];
        let tail = vec![msg(1, 4, 1, None), msg(1, 5, 1, None), msg(1, 6, 1, None)];
        let (page, more) = merge_page(db_asc, tail.clone(), true, 3);
        assert_eq!((seqs(&page), more), (vec![3, 4, 5], true));
        let db_desc = vec![msg(1, 4, 1, None), msg(1, 3, 1, None), msg(1, 2, 1, None)];
        let (page, more) = merge_page(db_desc, tail, false, 3);
        assert_eq!((seqs(&page), more), (vec![4, 5, 6], true));
        let (page, more) = merge_page(vec![msg(1, 1, 1, None)], vec![], false, 3);
        assert_eq!((seqs(&page), more), (vec![1], false));
    }
}
