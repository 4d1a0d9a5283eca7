//! The cluster plane (`--backend distributed`): how a process of one role reaches the rest.
//!
//! - [`producer`]: an edge produces each accepted send to Kafka and waits for its answer.
//! - [`sequencer`]: the delivery role consumes the log, appends to the CQL store, updates the
//!   recent cache in Redis, fans out and answers through the edges' Redis channels.
//! - [`subscriber`]: every process follows its Redis channels (edge batches, notices).
//! - [`presence`]: connection counts in Redis, their refresh, the dead-node reaper.
//! - [`redis`], [`kafka`]: the clients; [`wire`](crate::plane::wire): what travels.
//!
//! See `docs/distributed.md`.

pub mod kafka;
pub mod presence;
pub mod producer;
pub mod redis;
pub mod redis_primary;
pub mod sequencer;
pub mod subscriber;

use self::presence::RedisPresence;
use self::producer::SendProducer;
use self::redis::Redis;
use crate::error::Result;
use crate::hub::{ConnId, Frame, Hub};
use crate::members::Directory;
use crate::metrics::Metrics;
use crate::model::{ChatId, Presence, Seq, UserId};
use crate::plane::wire::{self, EdgeBatch, EdgeItem, Notice};
use crate::plane::{Plane, PlaneEvents, Submission, no_sends_here};
use crate::presence::PresenceStore;
use crate::store::MessagePage;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a cluster plane works with.
pub struct ClusterDeps {
    /// This process's id in the cluster (its Redis channel is `edge:<node>`).
    pub node: String,
    pub redis: Redis,
    /// Edges only: where sends go.
    pub producer: Option<Arc<SendProducer>>,
    pub hub: Arc<Hub>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<dyn PlaneEvents>,
}

/// The cluster plane of one process.
pub struct ClusterPlane {
    deps: ClusterDeps,
    presence: Arc<RedisPresence>,
    /// Subscribed to its channels (else acks published now would be lost).
    subscribed: AtomicBool,
    /// Delivery processes: has received a partition assignment.
    assigned: Option<Arc<AtomicBool>>,
}

impl ClusterPlane {
    /// `assigned` is given on delivery processes (set by the sequencer's consumer).
    pub fn new(deps: ClusterDeps, assigned: Option<Arc<AtomicBool>>) -> Arc<Self> {
        let presence = Arc::new(RedisPresence::new(deps.redis.clone(), deps.node.clone()));
        Arc::new(ClusterPlane {
            deps,
            presence,
            subscribed: AtomicBool::new(false),
            assigned,
        })
    }

    pub fn node(&self) -> &str {
        &self.deps.node
    }

    pub fn redis(&self) -> &Redis {
        &self.deps.redis
    }

    pub fn redis_presence(&self) -> &Arc<RedisPresence> {
        &self.presence
    }

    async fn notice(&self, n: &Notice) {
        let redis = &self.deps.redis;
        let payload = serde_json::to_vec(n).expect("a notice serializes");
        if let Err(e) = redis.publish(&redis.notice_channel(), &payload).await {
            tracing::warn!(cause = %e, "Redis: cannot broadcast a notice; caches expire instead");
        }
    }
}

/// Group `users` by the edge nodes holding their connections (`nodes` gives each user's
/// nodes, in the order of `users`).
pub fn plan_by_node<'a>(
    users: &[UserId],
    nodes: impl IntoIterator<Item = &'a [String]>,
) -> HashMap<&'a str, Vec<UserId>> {
    let mut by_node: HashMap<&str, Vec<UserId>> = HashMap::new();
    for (u, nodes) in users.iter().zip(nodes) {
        for n in nodes {
            by_node.entry(n.as_str()).or_default().push(*u);
        }
    }
    by_node
}

/// One encoded batch per edge channel.
pub fn edge_batches(
    redis: &Redis,
    per_node: impl IntoIterator<Item = (String, Vec<EdgeItem>)>,
) -> Vec<(String, Vec<u8>)> {
    per_node
        .into_iter()
        .map(|(node, items)| {
            let batch = EdgeBatch {
                v: wire::VERSION,
                items,
            };
            (
                redis.edge_channel(&node),
                serde_json::to_vec(&batch).expect("a batch serializes"),
            )
        })
        .collect()
}

#[async_trait::async_trait]
impl Plane for ClusterPlane {
    async fn submit(&self, s: Submission) -> Result<()> {
        match &self.deps.producer {
            Some(p) => p.submit(s),
            None => Err(no_sends_here()),
        }
    }

    async fn fan_out_except(&self, users: &[UserId], f: &Frame, except: Option<ConnId>) {
        let redis = &self.deps.redis;
        let routes = match redis.lookup(users).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cause = %e, "Redis: routes unavailable; frame not fanned out");
                return;
            }
        };
        let per_node = plan_by_node(users, routes.iter().map(|r| r.nodes.as_slice()))
            .into_iter()
            .map(|(node, users)| {
                // `except` is a connection of this process: only this edge's batch skips it.
                let item = EdgeItem::Deliver {
                    users,
                    except: except.filter(|_| node == self.deps.node),
                    frame: f.as_str().to_string(),
                };
                (node.to_string(), vec![item])
            });
        if let Err(e) = redis.publish_all(&edge_batches(redis, per_node)).await {
            tracing::warn!(cause = %e, "Redis: fan-out publish failed");
        }
    }

    async fn announce_presence(&self, p: Presence) {
        self.notice(&Notice::presence(&p)).await;
    }

    fn presence(&self) -> &dyn PresenceStore {
        self.presence.as_ref()
    }

    async fn recent_after(
        &self,
        chat_id: ChatId,
        after_seq: Seq,
        limit: usize,
    ) -> Option<MessagePage> {
        self.deps
            .redis
            .cache_after(chat_id, after_seq, limit)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(cause = %e, "Redis: recent cache unavailable, reading the store");
                None
            })
    }

    async fn recent_latest(&self, chat_id: ChatId, limit: usize) -> Option<MessagePage> {
        self.deps
            .redis
            .cache_latest(chat_id, limit)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(cause = %e, "Redis: recent cache unavailable, reading the store");
                None
            })
    }

    async fn members_changed(&self, chat_id: ChatId) {
        self.deps.directory.forget_members(chat_id);
        self.notice(&Notice::Members { chat_id }).await;
    }

    async fn partners_changed(&self, users: &[UserId]) {
        self.deps.directory.forget_partners(users);
        self.notice(&Notice::Partners {
            users: users.to_vec(),
        })
        .await;
    }

    fn ready(&self) -> bool {
        (self.deps.producer.is_none() || self.subscribed.load(Ordering::Acquire))
            && self
                .assigned
                .as_ref()
                .is_none_or(|a| a.load(Ordering::Acquire))
    }

    async fn close(&self) {
        if let Err(e) = self.deps.redis.node_gone(&self.deps.node).await {
            tracing::warn!(cause = %e, "could not unregister this node from Redis (the presence role will)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_grouped_by_the_edges_that_hold_them() {
        let nodes = [
            vec!["a".to_string()],
            vec!["a".to_string(), "b".to_string()],
            vec![],
        ];
        let plan = plan_by_node(&[1, 2, 3], nodes.iter().map(Vec::as_slice));
        assert_eq!(plan.len(), 2);
        assert_eq!(plan["a"], vec![1, 2]);
        assert_eq!(plan["b"], vec![2]);
    }
}
