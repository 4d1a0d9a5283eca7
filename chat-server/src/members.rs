//! Who belongs where, cached in front of the store: a chat's kind and member ids (read on
//! every send, typing and receipt) and each user's direct-chat partners (read on every connect
//! and presence change). [`Directory`] is what the rest of the server uses; entries are dropped
//! on every membership change (in a cluster, on every process, through the plane's notices).

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

/// The store's membership data with caches in front: what every layer that needs "who is in
/// this chat" or "whose presence does this user see" takes.
pub struct Directory {
    store: Arc<dyn Store>,
    members: MemberCache,
    partners: PartnerCache,
}

impl Directory {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Directory {
            store,
            members: MemberCache::new(100_000),
            partners: PartnerCache::new(1_000_000),
        }
    }

    /// The chat's members; `not_found` if the chat does not exist.
    pub async fn members(&self, chat_id: ChatId) -> Result<Arc<ChatMembers>> {
        self.members.get(self.store.as_ref(), chat_id).await
    }

    /// The chat's members if `user` is one of them; `forbidden` otherwise.
    pub async fn require(&self, chat_id: ChatId, user: UserId) -> Result<Arc<ChatMembers>> {
        self.members
            .require(self.store.as_ref(), chat_id, user)
            .await
    }

    /// The users `user` shares a direct chat with.
    pub async fn partners(&self, user: UserId) -> Result<Arc<Vec<UserId>>> {
        self.partners.get(self.store.as_ref(), user).await
    }

    /// A chat's membership changed.
    pub fn forget_members(&self, chat_id: ChatId) {
        self.members.invalidate(chat_id);
    }

    /// These users' direct partners changed.
    pub fn forget_partners(&self, users: &[UserId]) {
        for u in users {
            self.partners.invalidate(*u);
        }
    }

    /// Drop everything (changes may have been missed, e.g. while Redis was away).
    pub fn forget_all(&self) {
        self.members.clear();
        self.partners.clear();
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
