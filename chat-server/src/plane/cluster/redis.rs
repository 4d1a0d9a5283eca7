//! Redis: presence and connection routing, the fan-out channels of the edges, the shared
//! recent-message cache and cluster-wide notices.
//!
//! One Redis server, or the primary that Sentinels name, followed across failovers
//! ([`redis_primary`](super::redis_primary)). Keys (prefix `<cluster>:`; a Redis Cluster
//! would need hash tags):
//! - `pr:<user>` hash: `<node>` → that node's live connections of the user (absolute counts,
//!   written only by that node), `_ls` → last seen (ms). Presence and routing in one place:
//!   the user is online while any node counts a connection, and those nodes are where the
//!   user's frames go.
//! - `nu:<node>` set: users the node counts (so a dead node's counts can be dropped).
//! - `nodes` set and `alive:<node>` (TTL two heartbeat intervals): nodes holding connections.
//! - `recent:<chat>` sorted set, score = seq: the chat's last 50 messages (TTL one day).
//! - channels `edge:<node>` (batches for that edge) and `notice` (broadcast).

use super::redis_primary::{Primary, RedisTarget};
use crate::cache::RECENT;
use crate::model::{ChatId, Message, Presence, PresenceStatus, Seq, SharedMessage, UserId};
use crate::plane::wire::{self, CachedMessage};
use crate::store::MessagePage;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisResult};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Where one user is connected, and when they were last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The edge nodes counting connections of the user (empty: offline).
    pub nodes: Vec<String>,
    pub last_seen: Option<i64>,
}

/// Set one node's count of one user's connections; report the user's total before and after.
/// KEYS: pr:<user>, nu:<node>. ARGV: node, count, now_ms, user.
const SET_COUNT: &str = r#"
local function total()
  local t = 0
  local h = redis.call('HGETALL', KEYS[1])
  for i = 1, #h, 2 do
    if h[i] ~= '_ls' then t = t + tonumber(h[i + 1]) end
  end
  return t
end
local before = total()
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], n)
  redis.call('SADD', KEYS[2], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[4])
end
local after = total()
if before > 0 and after == 0 then
  redis.call('HSET', KEYS[1], '_ls', ARGV[3])
end
return {before, after, redis.call('HGET', KEYS[1], '_ls') or ''}
"#;

/// Longest wait for a subscription (connect + SUBSCRIBE) before it is retried.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Seconds a recent-cache entry lives after its last write.
const RECENT_TTL_SECS: i64 = 24 * 3600;

/// The outcome of [`Redis::set_count`]: the user's cluster-wide connection total before and
/// after, and their last-seen time.
pub struct CountChange {
    pub before: i64,
    pub after: i64,
    pub last_seen: Option<i64>,
}

impl CountChange {
    /// The presence to announce, if the change flipped online/offline.
    pub fn transition(&self, user_id: UserId) -> Option<Presence> {
        match (self.before > 0, self.after > 0) {
            (false, true) => Some(Presence {
                user_id,
                status: PresenceStatus::Online,
                last_seen: None,
            }),
            (true, false) => Some(Presence {
                user_id,
                status: PresenceStatus::Offline,
                last_seen: self.last_seen,
            }),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Redis {
    primary: Arc<Primary>,
    prefix: Arc<str>,
}

impl Redis {
    /// Connect to `url` (`redis://…`, or `redis+sentinel://…/<master>` for the primary that
    /// Sentinels name; see [`RedisTarget`]), retrying for up to `wait`.
    pub async fn connect(url: &str, prefix: &str, wait: Duration) -> anyhow::Result<Self> {
        let target = RedisTarget::parse(url).map_err(|e| anyhow::anyhow!("--redis-url {e}"))?;
        Ok(Redis {
            primary: Primary::connect(&target, wait).await?,
            prefix: prefix.into(),
        })
    }

    /// The server behind this handle (followed across Sentinel failovers).
    pub fn primary(&self) -> &Arc<Primary> {
        &self.primary
    }

    /// The shared connection to the current primary.
    fn conn(&self) -> ConnectionManager {
        self.primary.conn()
    }

    /// Pass a command's result through, noting failures (the primary may have moved).
    fn seen<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        self.primary.saw(&r);
        r
    }

    fn key(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}:{}", self.prefix, rest)
    }
    pub fn edge_channel(&self, node: &str) -> String {
        self.key(format_args!("edge:{node}"))
    }
    pub fn notice_channel(&self) -> String {
        self.key(format_args!("notice"))
    }
    fn presence_key(&self, user: UserId) -> String {
        self.key(format_args!("pr:{user}"))
    }
    fn node_users_key(&self, node: &str) -> String {
        self.key(format_args!("nu:{node}"))
    }
    fn nodes_key(&self) -> String {
        self.key(format_args!("nodes"))
    }
    fn alive_key(&self, node: &str) -> String {
        self.key(format_args!("alive:{node}"))
    }
    fn recent_key(&self, chat: ChatId) -> String {
        self.key(format_args!("recent:{chat}"))
    }

    fn set_count_cmd(&self, pipe: &mut redis::Pipeline, user: UserId, node: &str, count: u32) {
        pipe.cmd("EVAL")
            .arg(SET_COUNT)
            .arg(2)
            .arg(self.presence_key(user))
            .arg(self.node_users_key(node))
            .arg(node)
            .arg(count)
            .arg(crate::model::now_ms())
            .arg(user);
    }

    /// Set `node`'s count of `user`'s connections (absolute, so a repeat is harmless).
    pub async fn set_count(
        &self,
        user: UserId,
        node: &str,
        count: u32,
    ) -> RedisResult<CountChange> {
        Ok(self.set_counts(node, &[(user, count)]).await?.remove(0))
    }

    /// [`set_count`](Self::set_count) for many users in one round trip.
    pub async fn set_counts(
        &self,
        node: &str,
        counts: &[(UserId, u32)],
    ) -> RedisResult<Vec<CountChange>> {
        let mut pipe = redis::pipe();
        for (user, n) in counts {
            self.set_count_cmd(&mut pipe, *user, node, *n);
        }
        let rows: Vec<(i64, i64, String)> = self.seen(pipe.query_async(&mut self.conn()).await)?;
        Ok(rows
            .into_iter()
            .map(|(before, after, ls)| CountChange {
                before,
                after,
                last_seen: ls.parse().ok(),
            })
            .collect())
    }

    /// Presence and routes of `users`, in the order given.
    pub async fn lookup(&self, users: &[UserId]) -> RedisResult<Vec<Route>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hgetall(self.presence_key(*u));
        }
        let maps: Vec<HashMap<String, String>> =
            self.seen(pipe.query_async(&mut self.conn()).await)?;
        Ok(maps
            .into_iter()
            .map(|m| {
                let mut nodes = Vec::new();
                let mut last_seen = None;
                for (k, v) in m {
                    if k == "_ls" {
                        last_seen = v.parse().ok();
                    } else if v.parse::<i64>().is_ok_and(|n| n > 0) {
                        nodes.push(k);
                    }
                }
                Route { nodes, last_seen }
            })
            .collect())
    }

    pub async fn presence_of(&self, users: &[UserId]) -> RedisResult<Vec<Presence>> {
        Ok(users
            .iter()
            .zip(self.lookup(users).await?)
            .map(|(u, r)| Presence {
                user_id: *u,
                status: if r.nodes.is_empty() {
                    PresenceStatus::Offline
                } else {
                    PresenceStatus::Online
                },
                last_seen: if r.nodes.is_empty() {
                    r.last_seen
                } else {
                    None
                },
            })
            .collect())
    }

    /// Mark `node` alive for `ttl` (it holds connections and refreshes its counts).
    pub async fn node_alive(&self, node: &str, ttl: Duration) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.sadd(self.nodes_key(), node)
            .ignore()
            .set_ex(self.alive_key(node), 1, ttl.as_secs().max(1))
            .ignore();
        self.seen(pipe.query_async::<()>(&mut self.conn()).await)
    }

    /// A node leaving cleanly: forget it (its counts were already set to zero).
    pub async fn node_gone(&self, node: &str) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.srem(self.nodes_key(), node)
            .ignore()
            .del(self.alive_key(node))
            .ignore()
            .del(self.node_users_key(node))
            .ignore();
        self.seen(pipe.query_async::<()>(&mut self.conn()).await)
    }

    /// Nodes registered but no longer refreshing their liveness key.
    pub async fn dead_nodes(&self) -> RedisResult<Vec<String>> {
        let nodes: Vec<String> = self.seen(self.conn().smembers(self.nodes_key()).await)?;
        if nodes.is_empty() {
            return Ok(nodes);
        }
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.exists(self.alive_key(n));
        }
        let alive: Vec<bool> = self.seen(pipe.query_async(&mut self.conn()).await)?;
        Ok(nodes
            .into_iter()
            .zip(alive)
            .filter(|(_, a)| !a)
            .map(|(n, _)| n)
            .collect())
    }

    /// Drop a dead node's counts; returns the users that went offline because of it.
    pub async fn reap(&self, node: &str) -> RedisResult<Vec<Presence>> {
        let users: Vec<UserId> =
            self.seen(self.conn().smembers(self.node_users_key(node)).await)?;
        let mut offline = Vec::new();
        for chunk in users.chunks(1000) {
            let counts: Vec<(UserId, u32)> = chunk.iter().map(|u| (*u, 0)).collect();
            for (u, change) in chunk.iter().zip(self.set_counts(node, &counts).await?) {
                offline.extend(change.transition(*u));
            }
        }
        self.node_gone(node).await?;
        Ok(offline)
    }

    pub async fn publish(&self, channel: &str, payload: &[u8]) -> RedisResult<()> {
        self.seen(self.conn().publish::<_, _, ()>(channel, payload).await)
    }

    /// Publish several payloads in one round trip (in order, on one connection: Redis
    /// delivers them to a subscriber in this order).
    pub async fn publish_all(&self, items: &[(String, Vec<u8>)]) -> RedisResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (channel, payload) in items {
            pipe.publish(channel, payload).ignore();
        }
        self.seen(pipe.query_async::<()>(&mut self.conn()).await)
    }

    /// Add just-stored messages to their chats' recent sets (in seq order per chat), keep the
    /// last [`RECENT`]. `reset` chats are emptied first (their set may have missed writes).
    pub async fn cache_push(
        &self,
        messages: &[SharedMessage],
        reset: &[ChatId],
    ) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        for c in reset {
            pipe.del(self.recent_key(*c)).ignore();
        }
        let mut touched: Vec<ChatId> = Vec::new();
        for m in messages {
            let json = serde_json::to_string(&CachedMessage::from(m.as_ref()))
                .expect("a message serializes");
            pipe.zadd(self.recent_key(m.chat_id), json, m.seq).ignore();
            if !touched.contains(&m.chat_id) {
                touched.push(m.chat_id);
            }
        }
        for c in touched {
            let k = self.recent_key(c);
            pipe.zremrangebyrank(&k, 0, -(RECENT as isize) - 1)
                .ignore()
                .expire(&k, RECENT_TTL_SECS)
                .ignore();
        }
        self.seen(pipe.query_async::<()>(&mut self.conn()).await)
    }

    /// Remove chats' cached runs (they missed an update).
    pub async fn cache_drop(&self, chats: &[ChatId]) -> RedisResult<()> {
        if chats.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = chats.iter().map(|c| self.recent_key(*c)).collect();
        self.seen(self.conn().del::<_, ()>(keys).await)
    }

    /// Drop the whole recent cache of this cluster (after a failover the new primary may lack
    /// the last writes of the old one, and a run missing its tail looks complete to readers).
    /// Returns the number of chats dropped.
    pub async fn cache_flush_all(&self) -> RedisResult<usize> {
        let pattern = self.key(format_args!("recent:*"));
        let mut conn = self.conn();
        let mut cursor: u64 = 0;
        let mut dropped = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self.seen(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await,
            )?;
            if !keys.is_empty() {
                dropped += keys.len();
                self.seen(
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<()>(&mut conn)
                        .await,
                )?;
            }
            if next == 0 {
                return Ok(dropped);
            }
            cursor = next;
        }
    }

    /// Messages with `seq > after_seq` (at most `limit`) if the cached run covers them.
    pub async fn cache_after(
        &self,
        chat: ChatId,
        after_seq: Seq,
        limit: usize,
    ) -> RedisResult<Option<MessagePage>> {
        let k = self.recent_key(chat);
        type FirstAndRows = (Vec<(String, f64)>, Vec<String>);
        let got: RedisResult<FirstAndRows> = redis::pipe()
            .zrange_withscores(&k, 0, 0)
            .zrangebyscore_limit(&k, format!("({after_seq}"), "+inf", 0, limit as isize + 1)
            .query_async(&mut self.conn())
            .await;
        let (first, rows) = self.seen(got)?;
        let Some((_, lowest)) = first.first() else {
            return Ok(None); // nothing cached: ask the store
        };
        if *lowest as Seq > after_seq + 1 {
            return Ok(None); // the cache starts later than asked
        }
        let mut messages = decode_rows(rows);
        if !wire::contiguous_after(after_seq, &messages) {
            return Ok(None);
        }
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        Ok(Some(MessagePage {
            messages: messages.into_iter().map(Arc::new).collect(),
            has_more,
        }))
    }

    /// The latest `limit` messages, if the cache holds that many (or the chat's start).
    pub async fn cache_latest(
        &self,
        chat: ChatId,
        limit: usize,
    ) -> RedisResult<Option<MessagePage>> {
        let k = self.recent_key(chat);
        let rows: Vec<String> =
            self.seen(self.conn().zrevrange(&k, 0, limit as isize - 1).await)?;
        let mut messages = decode_rows(rows);
        messages.reverse();
        let Some(first) = messages.first() else {
            return Ok(None);
        };
        let starts_chat = first.seq == 1;
        if (messages.len() < limit && !starts_chat)
            || !wire::contiguous_after(first.seq - 1, &messages)
        {
            return Ok(None);
        }
        let has_more = !starts_chat;
        Ok(Some(MessagePage {
            messages: messages.into_iter().map(Arc::new).collect(),
            has_more,
        }))
    }

    /// Open a subscription to `channels` (a dedicated connection).
    ///
    /// Bounded by [`SUBSCRIBE_TIMEOUT`]: the connection has no timeouts of its own, and after
    /// Redis moved (a restarted pod behind a Service) a connect can go to the old address
    /// until kube-proxy catches up and hang there for a minute or more; the caller retries.
    pub async fn subscribe(&self, channels: &[String]) -> RedisResult<redis::aio::PubSub> {
        let attempt = async {
            let mut ps = self.primary.client().get_async_pubsub().await?;
            for c in channels {
                ps.subscribe(c).await?;
            }
            Ok(ps)
        };
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, attempt).await {
            Ok(r) => self.seen(r),
            Err(_) => self.seen(Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "subscribing took longer than {}s",
                    SUBSCRIBE_TIMEOUT.as_secs()
                ),
            )))),
        }
    }
}

fn decode_rows(rows: Vec<String>) -> Vec<Message> {
    rows.into_iter()
        .filter_map(|r| match serde_json::from_str::<CachedMessage>(&r) {
            Ok(m) => Some(Message::from(m)),
            Err(e) => {
                tracing::warn!(cause = %e, "undecodable recent-cache entry ignored");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crossing_zero_is_a_presence_change() {
        let c = |before, after| CountChange {
            before,
            after,
            last_seen: Some(7),
        };
        assert_eq!(
            c(0, 1).transition(1).unwrap().status,
            PresenceStatus::Online
        );
        let off = c(2, 0).transition(1).unwrap();
        assert_eq!(
            (off.status, off.last_seen),
            (PresenceStatus::Offline, Some(7))
        );
        assert!(c(1, 2).transition(1).is_none());
        assert!(c(2, 1).transition(1).is_none());
        assert!(c(0, 0).transition(1).is_none());
    }
}
