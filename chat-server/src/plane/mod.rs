//! The message plane: how a send becomes a stored, ordered, fanned-out message, and how
//! frames and presence reach users wherever they are connected.
//!
//! [`Plane`] is the one seam between the transports (through the app state) and a backend,
//! the way Centrifuge's `Node` talks to a `Broker` whose memory engine is the default:
//! - [`local::LocalPlane`] (embedded): per-chat shards append to SQLite with group commit
//!   and fan out to this process's [`Hub`](crate::hub::Hub).
//! - [`cluster::ClusterPlane`] (`--backend distributed`, feature `distributed`): edges
//!   produce sends to Kafka; the delivery role's [`cluster::sequencer`] appends them to the
//!   CQL store and fans out through the edges' Redis channels.
//!
//! Both turn a stored batch into deliveries, acks and push candidates with the same pure
//! [`pipeline`]. A plane never sees the app state; it calls back through [`PlaneEvents`].

use crate::error::{Error, Result};
use crate::hub::{ConnHandle, ConnId, Frame, frame};
use crate::metrics::Metrics;
use crate::model::{Ack, ChatId, NewMessage, Presence, Seq, UserId};
use crate::presence::PresenceStore;
use crate::protocol;
use crate::store::MessagePage;
use std::time::Instant;
use tokio::sync::oneshot;

#[cfg(feature = "distributed")]
pub mod cluster;
pub mod local;
pub mod pipeline;
pub mod wire;

/// A validated send on its way to the store.
pub struct Submission {
    pub message: NewMessage,
    pub reply: ReplyTo,
    /// The sending connection, if any: it gets the ack and not the message.
    pub origin: Option<ConnId>,
    pub received: Instant,
}

/// Where the answer to a send goes.
pub enum ReplyTo {
    /// A WebSocket connection: the `ack` (or `error`) frame is queued on it.
    Conn(ConnHandle),
    /// An HTTP request or long-poll `POST /v1/frames`: the caller awaits it.
    Waiter(oneshot::Sender<Result<Ack>>),
}

impl ReplyTo {
    pub fn answer(self, metrics: &Metrics, result: Result<Ack>, client_msg_id: Option<&str>) {
        match self {
            ReplyTo::Conn(c) => {
                let text = match &result {
                    Ok(ack) => protocol::ack_frame(ack),
                    Err(e) => {
                        metrics.error(e.code());
                        protocol::error_frame(e, client_msg_id)
                    }
                };
                c.send(frame(text));
            }
            ReplyTo::Waiter(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// What a plane tells the process it serves (Centrifuge's `BrokerEventHandler`).
#[async_trait::async_trait]
pub trait PlaneEvents: Send + Sync + 'static {
    /// A user's presence changed (here or on another node): tell this process's watchers and
    /// direct-chat partners of that user.
    async fn presence_changed(&self, p: Presence);
}

/// A backend's message plane. Every method is safe to call from any task.
#[async_trait::async_trait]
pub trait Plane: Send + Sync + 'static {
    /// Hand a validated send over; its answer (ack or error) arrives through its `reply`
    /// once the message is durable (or failed). `Err` means it was not taken at all.
    async fn submit(&self, s: Submission) -> Result<()>;
    /// Queue `frame` on every connection of `users`, wherever they are connected.
    async fn fan_out(&self, users: &[UserId], frame: &Frame) {
        self.fan_out_except(users, frame, None).await;
    }
    /// Like [`Plane::fan_out`], but not on `except`, a connection of this process (the one
    /// that caused the frame, e.g. the device whose own `read` mark is announced).
    async fn fan_out_except(&self, users: &[UserId], frame: &Frame, except: Option<ConnId>);
    /// Announce a presence change to watchers and partners on every node.
    async fn announce_presence(&self, p: Presence);
    /// Live connections per user across the cluster.
    fn presence(&self) -> &dyn PresenceStore;
    /// Recent messages after `after_seq`, if the recent-message cache covers that range
    /// (`None`: read the store).
    async fn recent_after(
        &self,
        chat_id: ChatId,
        after_seq: Seq,
        limit: usize,
    ) -> Option<MessagePage>;
    /// The latest `limit` messages, if the recent-message cache holds them.
    async fn recent_latest(&self, chat_id: ChatId, limit: usize) -> Option<MessagePage>;
    /// A chat's membership changed: every process drops its cached members.
    async fn members_changed(&self, chat_id: ChatId);
    /// These users' direct partners changed: every process drops its cached partners.
    async fn partners_changed(&self, users: &[UserId]);
    /// Whether this process has joined (edge: subscribed to its channel; delivery: has
    /// partitions). `/readyz` waits for it.
    fn ready(&self) -> bool {
        true
    }
    /// Called once after every background task stopped: leave the cluster, close the store.
    async fn close(&self) {}
}

/// The error of a plane that takes no sends (delivery and presence processes).
pub fn no_sends_here() -> Error {
    Error::Unavailable("this process does not accept sends".into())
}
