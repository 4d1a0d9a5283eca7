//! Membership cache: chat → kind and member ids, read on every send, typing and receipt.
//! Entries are dropped on every membership change made through this node.

use crate::error::{Error, Result};
use crate::model::{ChatId, ChatType, UserId};
use crate::store::Store;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct ChatMembers {
    pub kind: ChatType,
    pub users: Vec<UserId>,
}

impl ChatMembers {
    pub fn contains(&self, user: UserId) -> bool {
        self.users.contains(&user)
    }

    /// Everyone but `user`.
    pub fn others(&self, user: UserId) -> Vec<UserId> {
        self.users.iter().copied().filter(|u| *u != user).collect()
    }
}

pub struct MemberCache {
    chats: Mutex<HashMap<ChatId, Arc<ChatMembers>>>,
    max: usize,
}

impl MemberCache {
    pub fn new(max: usize) -> Self {
        MemberCache {
            chats: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The chat's members; `not_found` if the chat does not exist.
    pub async fn get(&self, store: &dyn Store, chat_id: ChatId) -> Result<Arc<ChatMembers>> {
        if let Some(m) = self.chats.lock().get(&chat_id) {
            return Ok(m.clone());
        }
        let chat = store
            .chat(chat_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("chat {chat_id} does not exist")))?;
        let users = store
            .members(chat_id)
            .await?
            .into_iter()
            .map(|m| m.user_id)
            .collect();
        let entry = Arc::new(ChatMembers {
            kind: chat.kind,
            users,
        });
        let mut chats = self.chats.lock();
        if chats.len() >= self.max {
            chats.clear();
        }
        chats.insert(chat_id, entry.clone());
        Ok(entry)
    }

    /// The members if `user` is one of them; `forbidden` otherwise.
    pub async fn require(
        &self,
        store: &dyn Store,
        chat_id: ChatId,
        user: UserId,
    ) -> Result<Arc<ChatMembers>> {
        let m = self.get(store, chat_id).await?;
        if m.contains(user) {
            Ok(m)
        } else {
            Err(Error::forbidden(format!(
                "you are not a member of chat {chat_id}"
            )))
        }
    }

    pub fn invalidate(&self, chat_id: ChatId) {
        self.chats.lock().remove(&chat_id);
    }

    /// Drop everything (invalidations may have been missed, e.g. while Redis was away).
    pub fn clear(&self) {
        self.chats.lock().clear();
    }
}

/// Direct-chat partners per user (who gets whose presence without subscribing). Read on every
/// connect and every presence change; dropped for both users when a direct chat is created.
pub struct PartnerCache {
    users: Mutex<HashMap<UserId, Arc<Vec<UserId>>>>,
    max: usize,
}

impl PartnerCache {
    pub fn new(max: usize) -> Self {
        PartnerCache {
            users: Mutex::new(HashMap::new()),
            max,
        }
    }

    pub async fn get(&self, store: &dyn Store, user: UserId) -> Result<Arc<Vec<UserId>>> {
        if let Some(p) = self.users.lock().get(&user) {
            return Ok(p.clone());
        }
        let partners = Arc::new(store.direct_partners(user).await?);
        let mut users = self.users.lock();
        if users.len() >= self.max {
            users.clear();
        }
        users.insert(user, partners.clone());
        Ok(partners)
    }

    pub fn invalidate(&self, user: UserId) {
        self.users.lock().remove(&user);
    }

    /// Drop everything (invalidations may have been missed).
    pub fn clear(&self) {
        self.users.lock().clear();
    }
}
