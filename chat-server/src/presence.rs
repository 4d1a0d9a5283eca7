//! Presence: the pure state machine, and the in-process presence store (embedded backend).
//!
//! A user is online while they have at least one live connection or long-poll session on any
//! node; the last one closing makes them offline with `last_seen` = that moment. Connections
//! that fall silent are closed by their session after two heartbeat intervals, which is what
//! bounds how stale "online" can be.

use crate::model::{Presence, PresenceStatus, UserId, now_ms};
use parking_lot::Mutex;
use std::collections::HashMap;

/// One user's presence record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserPresence {
    pub connections: u32,
    pub last_seen: Option<i64>,
}

impl UserPresence {
    /// A connection opened. Returns the new presence if this changed the status.
    pub fn connect(&mut self, user_id: UserId) -> Option<Presence> {
        self.connections += 1;
        (self.connections == 1).then(|| self.view(user_id))
    }

    /// A connection closed at `now`. Returns the new presence if the user went offline.
    pub fn disconnect(&mut self, user_id: UserId, now: i64) -> Option<Presence> {
        if self.connections == 0 {
            return None;
        }
        self.connections -= 1;
        if self.connections == 0 {
            self.last_seen = Some(now);
            Some(self.view(user_id))
        } else {
            None
        }
    }

    pub fn view(&self, user_id: UserId) -> Presence {
        Presence {
            user_id,
            status: if self.connections > 0 {
                PresenceStatus::Online
            } else {
                PresenceStatus::Offline
            },
            last_seen: if self.connections > 0 {
                None
            } else {
                self.last_seen
            },
        }
    }
}

/// The presence port: live connections per user across the cluster.
///
/// Contract: `connected`/`disconnected` are called once per connection open/close, in that
/// order; each returns the new presence when it changed the user's status (first connection:
/// online; last one gone: offline with `last_seen` = now), so the caller can announce it.
/// A distributed implementation keeps the counts with a TTL of about two heartbeat intervals,
/// refreshed by the edges, so a crashed edge's users go offline by themselves.
#[async_trait::async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn connected(&self, user: UserId) -> Option<Presence>;
    async fn disconnected(&self, user: UserId) -> Option<Presence>;
    async fn get(&self, users: &[UserId]) -> Vec<Presence>;
}

/// In-process presence for the embedded backend.
#[derive(Default)]
pub struct LocalPresence {
    users: Mutex<HashMap<UserId, UserPresence>>,
}

#[async_trait::async_trait]
impl PresenceStore for LocalPresence {
    async fn connected(&self, user: UserId) -> Option<Presence> {
        self.users.lock().entry(user).or_default().connect(user)
    }

    async fn disconnected(&self, user: UserId) -> Option<Presence> {
        self.users
            .lock()
            .entry(user)
            .or_default()
            .disconnect(user, now_ms())
    }

    async fn get(&self, users: &[UserId]) -> Vec<Presence> {
        let map = self.users.lock();
        users
            .iter()
            .map(|u| map.get(u).copied().unwrap_or_default().view(*u))
            .collect()
    }
}

/// Who asked to watch whom (`presence_subscribe`), counted per subscribing connection.
#[derive(Default)]
pub struct Subscriptions {
    watchers: Mutex<HashMap<UserId, HashMap<UserId, u32>>>,
}

impl Subscriptions {
    pub fn add(&self, subscriber: UserId, watched: &[UserId]) {
        let mut map = self.watchers.lock();
        for w in watched {
            *map.entry(*w).or_default().entry(subscriber).or_default() += 1;
        }
    }

    pub fn remove(&self, subscriber: UserId, watched: &[UserId]) {
        let mut map = self.watchers.lock();
        for w in watched {
            if let Some(subs) = map.get_mut(w) {
                if let Some(n) = subs.get_mut(&subscriber) {
                    *n -= 1;
                    if *n == 0 {
                        subs.remove(&subscriber);
                    }
                }
                if subs.is_empty() {
                    map.remove(w);
                }
            }
        }
    }

    pub fn watchers(&self, watched: UserId) -> Vec<UserId> {
        self.watchers
            .lock()
            .get(&watched)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_until_the_last_connection_closes() {
        let mut p = UserPresence::default();
        assert_eq!(p.view(1).status, PresenceStatus::Offline);
        assert_eq!(p.view(1).last_seen, None);
        assert_eq!(p.connect(1).unwrap().status, PresenceStatus::Online);
        assert!(p.connect(1).is_none());
        assert!(p.disconnect(1, 100).is_none());
        let off = p.disconnect(1, 200).unwrap();
        assert_eq!(off.status, PresenceStatus::Offline);
        assert_eq!(off.last_seen, Some(200));
        // An unmatched disconnect changes nothing.
        assert!(p.disconnect(1, 300).is_none());
        assert_eq!(p.view(1).last_seen, Some(200));
    }

    #[test]
    fn subscriptions_are_counted() {
        let s = Subscriptions::default();
        s.add(1, &[5, 6]);
        s.add(1, &[5]);
        s.remove(1, &[5]);
        assert_eq!(s.watchers(5), vec![1]);
        s.remove(1, &[5, 6]);
        assert!(s.watchers(5).is_empty() && s.watchers(6).is_empty());
    }
}
