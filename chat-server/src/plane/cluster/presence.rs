//! Presence kept in Redis: each edge writes its own absolute count of each user's
//! connections; the user is online while any live node counts one. An edge refreshes its
//! counts and its liveness key every half heartbeat; the presence role reaps nodes that
//! stopped (crashed edges) and announces their users offline.

use super::redis::Redis;
use crate::error::{Error, Result};
use crate::model::{Presence, PresenceStatus, UserId};
use crate::plane::Plane;
use crate::presence::PresenceStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 64;

/// This node's connection counts, written through to Redis. Writes for one user are
/// serialised (per shard) so the last write is always the current count.
pub struct RedisPresence {
    redis: Redis,
    node: String,
    shards: Vec<tokio::sync::Mutex<HashMap<UserId, u32>>>,
    /// Kicked when Redis came back (after a restart it has forgotten everything).
    pub refresh: Notify,
}

impl RedisPresence {
    pub fn new(redis: Redis, node: String) -> Self {
        RedisPresence {
            redis,
            node,
            shards: (0..SHARDS)
                .map(|_| tokio::sync::Mutex::new(HashMap::new()))
                .collect(),
            refresh: Notify::new(),
        }
    }

    async fn change(&self, user: UserId, delta: i32) -> Option<Presence> {
        let mut shard = self.shards[user as usize % SHARDS].lock().await;
        let n = shard.entry(user).or_default();
        *n = (*n as i64 + delta as i64).max(0) as u32;
        let count = *n;
        if count == 0 {
            shard.remove(&user);
        }
        match self.redis.set_count(user, &self.node, count).await {
            Ok(c) => c.transition(user),
            Err(e) => {
                tracing::warn!(cause = %e, user_id = user, "Redis: presence not updated now; the next refresh repairs it");
                None
            }
        }
    }

    /// Re-write this node's counts (after a Redis restart, or to keep them fresh) and its
    /// liveness key. Returns the users that this made online again.
    pub async fn refresh_all(&self, ttl: Duration) -> Result<Vec<Presence>> {
        let err = |e: redis::RedisError| Error::Unavailable(format!("Redis: {e}"));
        self.redis.node_alive(&self.node, ttl).await.map_err(err)?;
        let mut back = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().await;
            if shard.is_empty() {
                continue;
            }
            let counts: Vec<(UserId, u32)> = shard.iter().map(|(u, n)| (*u, *n)).collect();
            let changes = self
                .redis
                .set_counts(&self.node, &counts)
                .await
                .map_err(err)?;
            for ((u, _), c) in counts.iter().zip(changes) {
                back.extend(c.transition(*u));
            }
        }
        Ok(back)
    }
}

#[async_trait::async_trait]
impl PresenceStore for RedisPresence {
    async fn connected(&self, user: UserId) -> Option<Presence> {
        self.change(user, 1).await
    }

    async fn disconnected(&self, user: UserId) -> Option<Presence> {
        self.change(user, -1).await
    }

    async fn get(&self, users: &[UserId]) -> Vec<Presence> {
        match self.redis.presence_of(users).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(cause = %e, "Redis: presence unavailable, answering offline");
                users
                    .iter()
                    .map(|u| Presence {
                        user_id: *u,
                        status: PresenceStatus::Offline,
                        last_seen: None,
                    })
                    .collect()
            }
        }
    }
}

/// Keep this node's liveness key and counts fresh (every half `heartbeat`); re-register at
/// once when Redis returns, and announce the users that this made online again.
pub async fn refresh_loop(
    presence: Arc<RedisPresence>,
    plane: Arc<dyn Plane>,
    heartbeat: Duration,
    stop: CancellationToken,
) {
    let ttl = heartbeat * 2 + Duration::from_secs(1);
    let period = (heartbeat / 2).max(Duration::from_millis(500));
    loop {
        // After a failure (Redis restarting: the first command on the old connection fails
        // while the manager reconnects) retry soon, not a whole period later.
        let wait = match presence.refresh_all(ttl).await {
            Ok(back) => {
                for p in back {
                    plane.announce_presence(p).await;
                }
                period
            }
            Err(e) => {
                tracing::warn!(cause = %e, "presence refresh failed; retrying");
                Duration::from_millis(250).min(period)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = presence.refresh.notified() => {},
            _ = stop.cancelled() => return,
        }
    }
}

/// The presence role: find nodes that stopped refreshing (crashed edges), drop their counts
/// and announce the users that went offline.
pub async fn reaper_loop(
    redis: Redis,
    plane: Arc<dyn Plane>,
    heartbeat: Duration,
    stop: CancellationToken,
) {
    let period = (heartbeat / 2).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {},
            _ = stop.cancelled() => return,
        }
        let dead = match redis.dead_nodes().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(cause = %e, "presence reaper: Redis unavailable");
                continue;
            }
        };
        for node in dead {
            match redis.reap(&node).await {
                Ok(offline) => {
                    tracing::info!(
                        node,
                        users = offline.len(),
                        "node stopped refreshing: its users are offline"
                    );
                    for p in offline {
                        plane.announce_presence(p).await;
                    }
                }
                Err(e) => tracing::warn!(cause = %e, node, "presence reaper"),
            }
        }
    }
}
