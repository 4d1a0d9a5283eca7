//! One process's attachment to the cluster: the [`ClusterPlane`] implementation, Redis-backed
//! presence, and the background loops (edge channel subscriber, presence refresh, dead-node
//! reaper, ack timeouts).

use super::kafka::KafkaBus;
use super::redis::Redis;
use super::wire::{self, EdgeBatch, EdgeItem, Notice};
use super::{CachedPage, ClusterPlane};
use crate::delivery::Submission;
use crate::error::{Error, Result};
use crate::hub::{Frame, frame};
use crate::model::{ChatId, Presence, PresenceStatus, Seq, UserId};
use crate::presence::PresenceStore;
use crate::state::AppState;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// The distributed plane of one process.
pub struct Distributed {
    pub node: String,
    pub redis: Redis,
    /// Present on edges (they produce sends).
    pub bus: Option<Arc<KafkaBus>>,
    state: OnceLock<Weak<AppState>>,
    /// Edge: subscribed to its channel (else acks published now would be lost).
    pub subscribed: AtomicBool,
    /// Delivery: has received a partition assignment; `None` when not a delivery process.
    pub assigned: Option<Arc<AtomicBool>>,
    edge: bool,
}

impl Distributed {
    pub fn new(
        node: String,
        redis: Redis,
        bus: Option<Arc<KafkaBus>>,
        assigned: Option<Arc<AtomicBool>>,
    ) -> Self {
        Distributed {
            node,
            redis,
            edge: bus.is_some(),
            bus,
            state: OnceLock::new(),
            subscribed: AtomicBool::new(false),
            assigned,
        }
    }

    /// Attach the state (done once, right after it is built).
    pub fn attach(&self, state: &Arc<AppState>) {
        let _ = self.state.set(Arc::downgrade(state));
    }

    fn state(&self) -> Option<Arc<AppState>> {
        self.state.get().and_then(Weak::upgrade)
    }

    async fn notice(&self, n: &Notice) {
        let payload = serde_json::to_vec(n).expect("a notice serializes");
        if let Err(e) = self
            .redis
            .publish(&self.redis.notice_channel(), &payload)
            .await
        {
            tracing::warn!(cause = %e, "Redis: cannot broadcast a notice; caches expire instead");
        }
    }
}

/// Group `users` by the edge nodes holding their connections.
pub fn plan_by_node(
    users: &[UserId],
    routes: Vec<(Vec<String>, Option<i64>)>,
) -> HashMap<String, Vec<UserId>> {
    let mut by_node: HashMap<String, Vec<UserId>> = HashMap::new();
    for (u, (nodes, _)) in users.iter().zip(routes) {
        for n in nodes {
            by_node.entry(n).or_default().push(*u);
        }
    }
    by_node
}

#[async_trait::async_trait]
impl ClusterPlane for Distributed {
    async fn submit(&self, s: Submission) -> Result<()> {
        let (Some(bus), Some(state)) = (&self.bus, self.state()) else {
            return Err(Error::Unavailable(
                "this process does not accept sends".into(),
            ));
        };
        bus.submit(&state, s)
    }

    async fn fan_out(&self, users: &[UserId], f: &Frame) {
        let routes = match self.redis.lookup(users).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cause = %e, "Redis: routes unavailable; frame not fanned out");
                return;
            }
        };
        let mut out = Vec::new();
        for (node, users) in plan_by_node(users, routes) {
            let batch = EdgeBatch {
                v: wire::VERSION,
                items: vec![EdgeItem::Deliver {
                    users,
                    except: None,
                    frame: f.as_str().to_string(),
                }],
            };
            out.push((
                self.redis.edge_channel(&node),
                serde_json::to_vec(&batch).expect("a batch serializes"),
            ));
        }
        if let Err(e) = self.redis.publish_all(&out).await {
            tracing::warn!(cause = %e, "Redis: fan-out publish failed");
        }
    }

    async fn announce_presence(&self, p: &Presence) {
        self.notice(&Notice::presence(p)).await;
    }

    async fn recent_after(
        &self,
        chat_id: ChatId,
        after_seq: Seq,
        limit: usize,
    ) -> Option<CachedPage> {
        self.redis
            .cache_after(chat_id, after_seq, limit)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(cause = %e, "Redis: recent cache unavailable, reading the store");
                None
            })
    }

    async fn recent_latest(&self, chat_id: ChatId, limit: usize) -> Option<CachedPage> {
        self.redis
            .cache_latest(chat_id, limit)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(cause = %e, "Redis: recent cache unavailable, reading the store");
                None
            })
    }

    fn ready(&self) -> bool {
        (!self.edge || self.subscribed.load(Ordering::Acquire))
            && self
                .assigned
                .as_ref()
                .is_none_or(|a| a.load(Ordering::Acquire))
    }

    async fn members_changed(&self, chat_id: ChatId) {
        self.notice(&Notice::Members { chat_id }).await;
    }

    async fn partners_changed(&self, users: &[UserId]) {
        self.notice(&Notice::Partners {
            users: users.to_vec(),
        })
        .await;
    }
}

const PRESENCE_SHARDS: usize = 64;

/// Presence kept in Redis: this node writes its own absolute count of each user's
/// connections; the user is online while any live node counts one. Writes for one user are
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
            shards: (0..PRESENCE_SHARDS)
                .map(|_| tokio::sync::Mutex::new(HashMap::new()))
                .collect(),
            refresh: Notify::new(),
        }
    }

    async fn change(&self, user: UserId, delta: i32) -> Option<Presence> {
        let mut shard = self.shards[user as usize % PRESENCE_SHARDS].lock().await;
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

/// Follow this process's channels (`edge:<node>` on edges, and the cluster `notice`
/// channel), reconnecting with backoff when Redis goes away.
pub async fn subscribe_loop(
    state: Arc<AppState>,
    plane: Arc<Distributed>,
    presence: Option<Arc<RedisPresence>>,
    edge: bool,
) {
    let mut channels = vec![plane.redis.notice_channel()];
    if edge {
        channels.push(plane.redis.edge_channel(&plane.node));
    }
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let ps = tokio::select! {
            r = plane.redis.subscribe(&channels) => r,
            _ = state.stop.cancelled() => return,
        };
        let mut ps = match ps {
            Ok(ps) => ps,
            Err(e) => {
                tracing::warn!(cause = %e, "Redis: cannot subscribe; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = state.stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        plane.subscribed.store(true, Ordering::Release);
        if !first {
            tracing::info!("Redis: subscribed again; re-registering this node's connections");
            // Notices sent while the subscription was down are gone: forget cached members
            // and partners rather than serve stale ones.
            state.members.clear();
            state.partners.clear();
            if let Some(p) = &presence {
                p.refresh.notify_one();
            }
        }
        first = false;
        let mut stream = ps.on_message();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = state.stop.cancelled() => return,
            };
            let Some(msg) = msg else {
                tracing::warn!("Redis: subscription lost; reconnecting");
                break;
            };
            handle(
                &state,
                &plane,
                msg.get_channel_name(),
                msg.get_payload_bytes(),
            );
        }
    }
}

fn handle(state: &Arc<AppState>, plane: &Distributed, channel: &str, payload: &[u8]) {
    if channel == plane.redis.notice_channel() {
        match wire::decode::<Notice>("notice", payload) {
            Ok(Notice::Presence {
                user_id,
                online,
                last_seen,
            }) => {
                let p = Presence {
                    user_id,
                    status: if online {
                        PresenceStatus::Online
                    } else {
                        PresenceStatus::Offline
                    },
                    last_seen,
                };
                let st = state.clone();
                state
                    .tasks
                    .spawn(async move { st.announce_presence_locally(p).await });
            }
            Ok(Notice::Members { chat_id }) => state.members.invalidate(chat_id),
            Ok(Notice::Partners { users }) => {
                for u in users {
                    state.partners.invalidate(u);
                }
            }
            Err(e) => tracing::warn!(cause = %e, "ignored a notice"),
        }
        return;
    }
    let batch = match wire::decode::<EdgeBatch>("edge batch", payload) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(cause = %e, "ignored an edge batch");
            return;
        }
    };
    for item in batch.items {
        match item {
            EdgeItem::Deliver {
                users,
                except,
                frame: text,
            } => {
                let f = frame(text);
                let n = state.hub.deliver(&users, &f, except);
                tracing::debug!(?users, ?except, n, "edge: deliver");
                state.metrics.deliveries.inc_by(n as u64);
            }
            EdgeItem::Ack { corr, outcome } => {
                if let Some(bus) = &plane.bus {
                    bus.answer(state, corr, outcome.into_result());
                }
            }
        }
    }
}

/// Keep this node's liveness key and counts fresh; re-register at once when Redis returns.
pub async fn presence_refresh_loop(state: Arc<AppState>, presence: Arc<RedisPresence>) {
    let hb = Duration::from_secs(state.cfg.heartbeat_interval);
    let ttl = hb * 2 + Duration::from_secs(1);
    let period = (hb / 2).max(Duration::from_millis(500));
    loop {
        // After a failure (Redis restarting: the first command on the old connection fails
        // while the manager reconnects) retry soon, not a whole period later.
        let wait = match presence.refresh_all(ttl).await {
            Ok(back) => {
                for p in back {
                    state.announce_presence(p).await;
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
            _ = state.stop.cancelled() => return,
        }
    }
}

/// The presence role: find nodes that stopped refreshing (crashed edges), drop their counts
/// and announce the users that went offline.
pub async fn reaper_loop(state: Arc<AppState>, plane: Arc<Distributed>) {
    let period = Duration::from_secs(state.cfg.heartbeat_interval)
        .div_f32(2.0)
        .max(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {},
            _ = state.stop.cancelled() => return,
        }
        let dead = match plane.redis.dead_nodes().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(cause = %e, "presence reaper: Redis unavailable");
                continue;
            }
        };
        for node in dead {
            match plane.redis.reap(&node).await {
                Ok(offline) => {
                    tracing::info!(
                        node,
                        users = offline.len(),
                        "node stopped refreshing: its users are offline"
                    );
                    for p in offline {
                        state.announce_presence(p).await;
                    }
                }
                Err(e) => tracing::warn!(cause = %e, node, "presence reaper"),
            }
        }
    }
}

/// Answer sends whose confirmation did not come in time.
pub async fn ack_timeout_loop(state: Arc<AppState>, bus: Arc<KafkaBus>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => bus.expire(&state),
            _ = state.stop.cancelled() => {
                bus.flush(Duration::from_secs(5));
                bus.expire(&state);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_grouped_by_the_edges_that_hold_them() {
        let routes = vec![
            (vec!["a".to_string()], None),
            (vec!["a".to_string(), "b".to_string()], None),
            (vec![], Some(5)),
        ];
        let plan = plan_by_node(&[1, 2, 3], routes);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan["a"], vec![1, 2]);
        assert_eq!(plan["b"], vec![2]);
    }
}
