//! The delivery role: orders, persists and fans out messages.
//!
//! Sends are sharded by `chat_id` onto a fixed set of shard tasks. Each shard takes whatever is
//! queued (up to a batch), appends it to the store in one call (one group commit), then, in
//! `seq` order, updates the recent cache, queues the encoded `message` frame once for every
//! connection of every member (except the sending connection) and answers the sender with the
//! `ack`. One shard per chat is what makes fan-out order equal `seq` order; batching is what
//! makes durability cheap.

use crate::error::{Error, Result};
use crate::hub::{ConnHandle, ConnId, frame};
use crate::model::{Ack, NewMessage};
use crate::protocol;
use crate::state::AppState;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Where the answer to a send goes.
pub enum ReplyTo {
    /// A WebSocket connection: the `ack` (or `error`) frame is queued on it.
    Conn(ConnHandle),
    /// An HTTP request or long-poll `POST /v1/frames`: the caller awaits it.
    Waiter(oneshot::Sender<Result<Ack>>),
}

impl ReplyTo {
    pub fn answer(self, state: &AppState, result: Result<Ack>, client_msg_id: Option<&str>) {
        match self {
            ReplyTo::Conn(c) => {
                let text = match &result {
                    Ok(ack) => protocol::ack_frame(ack),
                    Err(e) => {
                        state.metrics.error(e.code());
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

pub struct Submission {
    pub message: NewMessage,
    pub reply: ReplyTo,
    /// The sending connection, if any: it gets the ack and not the message.
    pub origin: Option<ConnId>,
    pub received: Instant,
}

pub struct Delivery {
    shards: Vec<mpsc::Sender<Submission>>,
}

const BATCH: usize = 512;

impl Delivery {
    /// The shard senders and their receivers (started later with [`run_shard`]).
    pub fn new(shards: usize, queue: usize) -> (Self, Vec<mpsc::Receiver<Submission>>) {
        let (txs, rxs) = (0..shards.max(1)).map(|_| mpsc::channel(queue)).unzip();
        (Delivery { shards: txs }, rxs)
    }

    /// Queue a send. Its answer arrives through `reply` once it is durable (or failed).
    pub async fn submit(&self, s: Submission) -> Result<()> {
        let shard = (s.message.chat_id % self.shards.len() as u64) as usize;
        self.shards[shard]
            .send(s)
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down; resend elsewhere".into()))
    }
}

/// One shard's loop; returns when `stop` fires and the queue is drained.
pub async fn run_shard(state: Arc<AppState>, mut rx: mpsc::Receiver<Submission>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            s = rx.recv() => s,
            _ = state.stop.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        process(&state, &mut batch).await;
    }
}

async fn process(state: &AppState, batch: &mut Vec<Submission>) {
    let messages = batch.iter().map(|s| s.message.clone()).collect();
    state.metrics.store_batch.observe(batch.len() as f64);
    let results = state.store.append_batch(messages).await;
    for (sub, result) in batch.drain(..).zip(results) {
        let client_msg_id = sub.message.client_msg_id.clone();
        match result {
            Ok(appended) => {
                let m = &appended.message;
                if appended.duplicate {
                    state.metrics.messages_duplicate.inc();
                } else {
                    state.metrics.messages_stored.inc();
                    state.cache.push(m);
                    match state.members.get(state.store.as_ref(), m.chat_id).await {
                        Ok(members) => {
                            let f = frame(protocol::message_frame(m));
                            let n = state.hub.deliver(&members.users, &f, sub.origin);
                            state.metrics.deliveries.inc_by(n as u64);
                            crate::push::on_stored(state, m, &members.users).await;
                            state
                                .metrics
                                .delivery_latency
                                .observe(sub.received.elapsed().as_secs_f64());
                        }
                        Err(e) => {
                            // Stored but not fanned out: members catch up with `sync`.
                            tracing::warn!(cause = %e, chat_id = m.chat_id, "fan-out skipped");
                        }
                    }
                }
                state
                    .metrics
                    .ack_latency
                    .observe(sub.received.elapsed().as_secs_f64());
                sub.reply
                    .answer(state, Ok(Ack::of(m)), client_msg_id.as_deref());
            }
            Err(e) => sub.reply.answer(state, Err(e), client_msg_id.as_deref()),
        }
    }
}
