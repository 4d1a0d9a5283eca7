//! The distributed plane: how a process of one role reaches the rest of the cluster.
//!
//! [`ClusterPlane`] is the seam in [`AppState`](crate::state::AppState): when it is absent
//! (embedded backend) sends go to the in-process [`Delivery`](crate::delivery::Delivery)
//! shards and fan-out goes straight to the local [`Hub`](crate::hub::Hub); when present
//! (`--backend distributed`, feature `distributed`) sends go to Kafka and fan-out goes through
//! Redis to whichever edges hold the recipients. See `docs/distributed.md`.

use crate::delivery::Submission;
use crate::error::Result;
use crate::hub::Frame;
use crate::model::{ChatId, Presence, Seq, SharedMessage, UserId};

#[cfg(feature = "distributed")]
pub mod delivery;
#[cfg(feature = "distributed")]
pub mod kafka;
#[cfg(feature = "distributed")]
pub mod node;
#[cfg(feature = "distributed")]
pub mod redis;
pub mod wire;

/// Cached messages and whether more follow (the shape of a sync/history page).
pub type CachedPage = (Vec<SharedMessage>, bool);

#[async_trait::async_trait]
pub trait ClusterPlane: Send + Sync + 'static {
    /// Hand a validated send to the message log; the answer arrives through its `reply`.
    async fn submit(&self, s: Submission) -> Result<()>;
    /// Queue `frame` on every connection of `users`, wherever they are connected.
    async fn fan_out(&self, users: &[UserId], frame: &Frame);
    /// Tell every edge about a presence change (each tells its local watchers and partners).
    async fn announce_presence(&self, p: &Presence);
    /// Recent messages after `after_seq`, if the shared cache covers that range.
    async fn recent_after(
        &self,
        chat_id: ChatId,
        after_seq: Seq,
        limit: usize,
    ) -> Option<CachedPage>;
    /// The latest `limit` messages, if the shared cache holds them.
    async fn recent_latest(&self, chat_id: ChatId, limit: usize) -> Option<CachedPage>;
    /// Whether this process has joined the cluster (edge: subscribed to its channel;
    /// delivery: has its first partition assignment). `/readyz` waits for it.
    fn ready(&self) -> bool {
        true
    }
    /// A chat's membership changed: every process drops its cached members.
    async fn members_changed(&self, chat_id: ChatId);
    /// These users' direct partners changed: every process drops its cached partners.
    async fn partners_changed(&self, users: &[UserId]);
}
