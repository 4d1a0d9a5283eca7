//! Recent-message cache: the last [`RECENT`] messages of each recently written chat.
//!
//! Invariant: an entry holds a contiguous run of `seq`s ending at the chat's last committed
//! message. Only the delivery shard that owns a chat pushes to it, right after the commit and
//! in `seq` order, so the invariant holds without reading the store. After a restart an entry
//! starts at the first message written since; older ranges are read from the store.

use crate::model::{ChatId, Seq, SharedMessage};
use crate::store::MessagePage;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

pub const RECENT: usize = 50;

pub struct RecentCache {
    chats: Mutex<HashMap<ChatId, VecDeque<SharedMessage>>>,
    max_chats: usize,
}

impl RecentCache {
    pub fn new(max_chats: usize) -> Self {
        RecentCache {
            chats: Mutex::new(HashMap::new()),
            max_chats: max_chats.max(1),
        }
    }

    /// Record a just-committed message (called in seq order per chat).
    pub fn push(&self, m: &SharedMessage) {
        let mut chats = self.chats.lock();
        if !chats.contains_key(&m.chat_id)
            && chats.len() >= self.max_chats
            && let Some(victim) = chats.keys().next().copied()
        {
            chats.remove(&victim);
        }
        let q = chats.entry(m.chat_id).or_default();
        if q.back().is_some_and(|last| last.seq + 1 != m.seq) {
            q.clear(); // not contiguous (should not happen): start over rather than mislead
        }
        q.push_back(m.clone());
        if q.len() > RECENT {
            q.pop_front();
        }
    }

    /// Messages with `seq > after_seq`, at most `limit`, if the cache covers that range.
    /// `None` when the store must be asked.
    pub fn after(&self, chat_id: ChatId, after_seq: Seq, limit: usize) -> Option<MessagePage> {
        let chats = self.chats.lock();
        let q = chats.get(&chat_id)?;
        let first = q.front()?.seq;
        if after_seq + 1 < first {
            return None;
        }
        let mut out: Vec<_> = q
            .iter()
            .filter(|m| m.seq > after_seq)
            .take(limit + 1)
            .cloned()
            .collect();
        let has_more = out.len() > limit;
        out.truncate(limit);
        Some(MessagePage {
            messages: out,
            has_more,
        })
    }

    /// The latest `limit` messages, if the cache holds them all (or the chat's whole history).
    pub fn latest(&self, chat_id: ChatId, limit: usize) -> Option<MessagePage> {
        let chats = self.chats.lock();
        let q = chats.get(&chat_id)?;
        let first = q.front()?.seq;
        if q.len() < limit && first != 1 {
            return None;
        }
        let skip = q.len().saturating_sub(limit);
        let out: Vec<_> = q.iter().skip(skip).cloned().collect();
        let has_more = out.first().is_some_and(|m| m.seq > 1);
        Some(MessagePage {
            messages: out,
            has_more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;
    use std::sync::Arc;

    fn msg(seq: Seq) -> SharedMessage {
        Arc::new(Message {
            message_id: format!("m{seq}"),
            chat_id: 1,
            seq,
            sender_id: 1,
            content: String::new(),
            media_url: None,
            media: None,
            client_msg_id: None,
            created_at: 0,
        })
    }

    fn page(p: Option<MessagePage>) -> (Vec<SharedMessage>, bool) {
        let p = p.expect("served from the cache");
        (p.messages, p.has_more)
    }

    #[test]
    fn serves_only_ranges_it_covers() {
        let c = RecentCache::new(10);
        for s in 11..=70 {
            c.push(&msg(s));
        }
        // Holds 21..=70.
        assert!(c.after(1, 10, 50).is_none());
        let (m, more) = page(c.after(1, 20, 10));
        assert_eq!((m.first().unwrap().seq, m.len(), more), (21, 10, true));
        let (m, more) = page(c.after(1, 65, 10));
        assert_eq!((m.len(), more), (5, false));
        assert_eq!(page(c.after(1, 70, 10)).0.len(), 0);
        let (m, more) = page(c.latest(1, 50));
        assert_eq!((m.len(), m[0].seq, more), (50, 21, true));
        assert!(c.after(2, 0, 10).is_none());
    }

    #[test]
    fn short_history_is_complete_from_seq_one() {
        let c = RecentCache::new(10);
        for s in 1..=3 {
            c.push(&msg(s));
        }
        let (m, more) = page(c.latest(1, 50));
        assert_eq!((m.len(), more), (3, false));
    }
}
