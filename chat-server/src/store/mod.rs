//! The message store port: chats, members, messages, receipt marks.
//!
//! Contract every implementation keeps (the protocol suite checks it through the server):
//! - [`Store::append_batch`] assigns each chat's next `seq` (1, 2, 3, … no gaps) in the order
//!   of the batch, and returns only once every result is durable (committed and fsynced for
//!   SQLite; written with quorum for CQL). A message whose `(chat_id, sender_id, client_msg_id)`
//!   was already stored is not stored again: the original comes back with `duplicate = true`.
//!   Callers that need per-chat ordering of side effects call it from one task per chat shard.
//! - Marks only grow: [`Store::save_marks`] keeps the maximum of stored and given values.
//! - Membership changes are atomic: an add that would exceed the limit adds nobody.
//! - A user's name is the last one written ([`Store::set_user_name`]); users without one are
//!   absent from [`Store::user_names`].

#[cfg(feature = "distributed")]
pub mod scylla;
#[cfg(feature = "distributed")]
pub mod scylla_schema;
pub mod sqlite;

use crate::error::Result;
use crate::media::record::MediaRecord;
use crate::model::{Chat, ChatId, Marks, Member, NewMessage, Seq, SharedMessage, UserId};
use async_trait::async_trait;
use std::collections::HashMap;

/// Result of appending one message.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: SharedMessage,
    /// True when this was an idempotent resend of an already stored message.
    pub duplicate: bool,
}

/// Which page of a chat's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after_seq: Option<Seq>,
    pub before_seq: Option<Seq>,
    pub limit: usize,
}

/// A page of messages in ascending `seq`, and whether more exist in the paging direction
/// (newer when `after_seq` was given, older otherwise).
#[derive(Debug, Clone)]
pub struct MessagePage {
    pub messages: Vec<SharedMessage>,
    pub has_more: bool,
}

/// What [`Store::user_chats`] returns per chat: the chat plus the caller's marks.
#[derive(Debug, Clone)]
pub struct UserChat {
    pub chat: Chat,
    pub read_seq: Seq,
    pub unread: u64,
}

/// The members of a new group: the creator first, then `members` in order without repeats.
/// `GroupFull` if that is more than `limit`. Shared by every implementation.
pub fn group_members(creator: UserId, members: Vec<UserId>, limit: usize) -> Result<Vec<UserId>> {
    let mut seen = std::collections::HashSet::with_capacity(members.len() + 1);
    seen.insert(creator);
    let mut all = vec![creator];
    all.extend(members.into_iter().filter(|m| seen.insert(*m)));
    if all.len() > limit {
        return Err(crate::error::Error::GroupFull { limit });
    }
    Ok(all)
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The direct chat of the pair, created if missing. `true` when it was created now.
    async fn create_direct(&self, a: UserId, b: UserId) -> Result<(Chat, bool)>;
    /// A new group; `creator` becomes admin. `members` excludes nobody: duplicates and the
    /// creator are merged. Fails with `GroupFull` beyond `limit`.
    async fn create_group(
        &self,
        creator: UserId,
        title: Option<String>,
        members: Vec<UserId>,
        limit: usize,
    ) -> Result<Chat>;
    async fn chat(&self, chat_id: ChatId) -> Result<Option<Chat>>;
    async fn members(&self, chat_id: ChatId) -> Result<Vec<Member>>;
    async fn user_chats(&self, user_id: UserId) -> Result<Vec<UserChat>>;
    /// Adds the users not yet members as `member`s; returns the ones added.
    async fn add_members(
        &self,
        chat_id: ChatId,
        user_ids: Vec<UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>>;
    /// Removes a member. If the last admin leaves a group, the longest-standing member is made
    /// admin. Returns false if the user was not a member.
    async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<bool>;
    async fn append_batch(&self, batch: Vec<NewMessage>) -> Vec<Result<Appended>>;
    async fn messages(&self, chat_id: ChatId, page: Page) -> Result<MessagePage>;
    async fn marks(&self, chat_id: ChatId) -> Result<Vec<Marks>>;
    async fn save_marks(&self, updates: Vec<(ChatId, Marks)>) -> Result<()>;
    /// Everyone who shares a direct chat with `user_id`.
    async fn direct_partners(&self, user_id: UserId) -> Result<Vec<UserId>>;
    /// Set (or clear, with `None`) a chat's title. Does not touch its activity time.
    async fn set_title(&self, chat_id: ChatId, title: Option<String>) -> Result<()>;

    // ---- users ----
    /// Keep `name` as the user's display name (the latest write wins). Validated by the caller.
    async fn set_user_name(&self, user_id: UserId, name: &str) -> Result<()>;
    /// The display names of those of `user_ids` that have one.
    async fn user_names(&self, user_ids: &[UserId]) -> Result<HashMap<UserId, String>>;

    // ---- media (see the media module) ----
    /// Record an uploaded media object (durably, before the upload is answered). It counts as
    /// "never sent" until [`Store::link_media`].
    async fn put_media(&self, media: MediaRecord) -> Result<()>;
    async fn media(&self, media_id: &str) -> Result<Option<MediaRecord>>;
    /// Record that the media was sent to `chat_id` (idempotent): members of that chat may read
    /// it, and it is no longer an orphan. Called before the message is appended.
    async fn link_media(&self, media: &MediaRecord, chat_id: ChatId) -> Result<()>;
    /// The chats the media was sent to.
    async fn media_chats(&self, media_id: &str) -> Result<Vec<ChatId>>;
    /// Up to `limit` media never sent to any chat and created before `before_ms`.
    async fn unsent_media(&self, before_ms: i64, limit: usize) -> Result<Vec<MediaRecord>>;
    /// Forget a media object entirely (its blobs are deleted by the caller first), renditions
    /// included.
    async fn delete_media(&self, media: &MediaRecord) -> Result<()>;
    /// Replace what the transcoder made of a video (kept apart from the upload's own row,
    /// which never changes). [`Store::media`] returns it in `MediaRecord::renditions` for
    /// `video/*` media.
    async fn set_media_renditions(
        &self,
        media_id: &str,
        renditions: &crate::media::record::Renditions,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_members_merge_repeats_and_count_the_creator() {
        assert_eq!(
            group_members(1, vec![2, 1, 3, 2], 3).unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(
            group_members(1, vec![2, 3, 4], 3).unwrap_err().code(),
            "group_full"
        );
        assert_eq!(group_members(1, vec![], 1).unwrap(), vec![1]);
    }
}
