//! The local hub: which connections (WebSocket or long-poll sessions) this edge holds, per
//! user, and the bounded queue of each. Frames are encoded once and shared (`Utf8Bytes` is a
//! reference-counted buffer), so a 1000-member fan-out copies no payload.
//!
//! Slow-consumer policy: a connection whose queue is full is *kicked*: its session closes it
//! with close code [`CLOSE_SLOW_CONSUMER`] and the client reconnects and `sync`s. Nothing is
//! lost, because every message is durable before it is fanned out.

use crate::model::UserId;
use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type Frame = Utf8Bytes;
pub type ConnId = u64;

/// WebSocket close code sent to a connection that could not keep up.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// A handle on one live connection, held by the hub and by in-flight sends (for their ack).
#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub id: ConnId,
    pub user_id: UserId,
    tx: mpsc::Sender<Frame>,
    kicked: CancellationToken,
}

impl ConnHandle {
    /// Queue a frame; on a full queue the connection is kicked. Returns whether it was queued.
    pub fn send(&self, frame: Frame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kicked.is_cancelled() {
                    tracing::warn!(
                        conn = self.id,
                        user_id = self.user_id,
                        "slow consumer: send queue full, closing"
                    );
                    self.kicked.cancel();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Resolves when the hub gave up on this connection (slow consumer).
    pub fn kicked(&self) -> &CancellationToken {
        &self.kicked
    }
}

const SHARDS: usize = 64;

pub struct Hub {
    shards: Vec<Mutex<HashMap<UserId, Vec<ConnHandle>>>>,
    next_id: AtomicU64,
    queue_len: usize,
}

impl Hub {
    pub fn new(queue_len: usize) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            queue_len: queue_len.max(8),
        }
    }

    fn shard(&self, user: UserId) -> &Mutex<HashMap<UserId, Vec<ConnHandle>>> {
        &self.shards[(user as usize) % SHARDS]
    }

    /// Register a new connection whose queue starts with `first` (the `hello`: nothing fanned
    /// out can overtake it). Returns its handle, the receiving end of its queue, and the number
    /// of connections the user now has here.
    pub fn register(
        &self,
        user_id: UserId,
        first: Frame,
    ) -> (ConnHandle, mpsc::Receiver<Frame>, usize) {
        let (tx, rx) = mpsc::channel(self.queue_len);
        tx.try_send(first).expect("a new queue has room");
        let handle = ConnHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user_id,
            tx,
            kicked: CancellationToken::new(),
        };
        let mut shard = self.shard(user_id).lock();
        let conns = shard.entry(user_id).or_default();
        conns.push(handle.clone());
        let n = conns.len();
        (handle, rx, n)
    }

    /// Remove a connection; returns how many the user still has here.
    pub fn unregister(&self, conn: &ConnHandle) -> usize {
        let mut shard = self.shard(conn.user_id).lock();
        let Some(conns) = shard.get_mut(&conn.user_id) else {
            return 0;
        };
        conns.retain(|c| c.id != conn.id);
        let n = conns.len();
        if n == 0 {
            shard.remove(&conn.user_id);
        }
        n
    }

    /// Queue `frame` on every connection of every user in `users`, except `except`.
    /// Returns how many connections got it.
    pub fn deliver(&self, users: &[UserId], frame: &Frame, except: Option<ConnId>) -> usize {
        let mut n = 0;
        for u in users {
            let shard = self.shard(*u).lock();
            if let Some(conns) = shard.get(u) {
                for c in conns {
                    if Some(c.id) != except && c.send(frame.clone()) {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    pub fn is_connected(&self, user: UserId) -> bool {
        self.shard(user).lock().contains_key(&user)
    }

    /// Every live connection (for draining on shutdown).
    pub fn all(&self) -> Vec<ConnHandle> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().values().flatten().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// Share one encoded frame among receivers.
pub fn frame(text: String) -> Frame {
    Utf8Bytes::from(text)
}

pub type SharedHub = Arc<Hub>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_skips_the_sender_and_kicks_slow_consumers() {
        let hub = Hub::new(8);
        let (a1, mut a1_rx, _) = hub.register(1, frame("hello".into()));
        let (_a2, mut a2_rx, n) = hub.register(1, frame("hello".into()));
        assert_eq!(n, 2);
        let (b, _b_rx, _) = hub.register(2, frame("hello".into()));
        let f = frame("x".into());
        assert_eq!(hub.deliver(&[1, 2], &f, Some(a1.id)), 2);
        assert_eq!(a1_rx.try_recv().unwrap().as_str(), "hello");
        assert!(a1_rx.try_recv().is_err());
        assert_eq!(a2_rx.try_recv().unwrap().as_str(), "hello");
        assert_eq!(a2_rx.try_recv().unwrap().as_str(), "x");
        // b never reads: after its queue (8) is full it is kicked, others unaffected.
        for _ in 0..8 {
            hub.deliver(&[2], &f, None);
        }
        assert!(b.kicked().is_cancelled());
        assert_eq!(hub.unregister(&b), 0);
        assert!(!hub.is_connected(2));
        assert_eq!(hub.unregister(&a1), 1);
    }
}
