//! The local plane (embedded backend): everything in this process.
//!
//! Sends are sharded by `chat_id` onto a fixed set of shard tasks. Each shard takes whatever
//! is queued (up to a batch), appends it to the store in one call (one group commit), then
//! runs the [`pipeline`]: updates the recent cache, queues the encoded `message` frame once
//! for every connection of every member (except the sending connection), queues push events
//! for members with no connection, and answers each sender with its `ack`. One shard per chat
//! is what makes fan-out order equal `seq` order; batching is what makes durability cheap.

use super::pipeline::{self, Stored};
use super::{Plane, PlaneEvents, Submission};
use crate::cache::RecentCache;
use crate::error::{Error, Result};
use crate::hub::{ConnId, Frame, Hub, frame};
use crate::members::Directory;
use crate::metrics::Metrics;
use crate::model::{ChatId, Presence, Seq, UserId};
use crate::presence::{LocalPresence, PresenceStore};
use crate::protocol;
use crate::push::Push;
use crate::store::{MessagePage, Store};
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Submissions a shard takes per store call.
const BATCH: usize = 512;

/// What the local plane works with.
pub struct LocalDeps {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub push: Option<Arc<Push>>,
    pub events: Arc<dyn PlaneEvents>,
}

pub struct LocalPlane {
    shards: Vec<mpsc::Sender<Submission>>,
    queued: Mutex<Vec<mpsc::Receiver<Submission>>>,
    cache: RecentCache,
    presence: LocalPresence,
    deps: LocalDeps,
}

impl LocalPlane {
    /// `shards` shard queues of `queue` submissions each; nothing runs until [`start`].
    ///
    /// [`start`]: LocalPlane::start
    pub fn new(shards: usize, queue: usize, deps: LocalDeps) -> Arc<Self> {
        let (txs, rxs) = (0..shards.max(1)).map(|_| mpsc::channel(queue)).unzip();
        Arc::new(LocalPlane {
            shards: txs,
            queued: Mutex::new(rxs),
            cache: RecentCache::new(20_000),
            presence: LocalPresence::default(),
            deps,
        })
    }

    /// Start the shard tasks; each returns when `stop` fires and its queue is drained.
    pub fn start(self: &Arc<Self>, tasks: &TaskTracker, stop: &CancellationToken) {
        for rx in std::mem::take(&mut *self.queued.lock()) {
            tasks.spawn(run_shard(self.clone(), rx, stop.clone()));
        }
    }

    async fn process(&self, batch: &mut Vec<Submission>) {
        let d = &self.deps;
        let messages = batch.iter().map(|s| s.message.clone()).collect();
        d.metrics.store_batch.observe(batch.len() as f64);
        let results = d.store.append_batch(messages).await;
        let stored: Vec<Stored> = batch
            .iter()
            .zip(&results)
            .map(|(s, result)| Stored {
                result,
                sent_id: s.message.message_id.as_deref(),
            })
            .collect();
        let members = pipeline::members_of(&d.directory, &pipeline::chats(&stored)).await;
        let plan = pipeline::plan(&stored, &members);
        d.metrics.messages_stored.inc_by(plan.stored);
        d.metrics.messages_duplicate.inc_by(plan.duplicates);
        for f in &plan.fan_out {
            self.cache.push(&f.message);
        }
        for f in &plan.fan_out {
            let sub = &batch[f.index];
            let n = d.hub.deliver(
                &f.members.users,
                &frame(protocol::message_frame(&f.message)),
                sub.origin,
            );
            d.metrics.deliveries.inc_by(n as u64);
            d.metrics
                .delivery_latency
                .observe(sub.received.elapsed().as_secs_f64());
        }
        if let Some(push) = &d.push {
            push.enqueue(plan.push_events(|u| d.hub.is_connected(u)))
                .await;
        }
        for (sub, result) in batch.drain(..).zip(results) {
            let client_msg_id = sub.message.client_msg_id;
            if result.is_ok() {
                d.metrics
                    .ack_latency
                    .observe(sub.received.elapsed().as_secs_f64());
            }
            sub.reply
                .answer(&d.metrics, pipeline::ack(result), client_msg_id.as_deref());
        }
    }
}

/// One shard's loop; returns when `stop` fires and the queue is drained.
async fn run_shard(
    plane: Arc<LocalPlane>,
    mut rx: mpsc::Receiver<Submission>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            s = rx.recv() => s,
            _ = stop.cancelled() => {
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
        plane.process(&mut batch).await;
    }
}

#[async_trait::async_trait]
impl Plane for LocalPlane {
    async fn submit(&self, s: Submission) -> Result<()> {
        let shard = (s.message.chat_id % self.shards.len() as u64) as usize;
        self.shards[shard]
            .send(s)
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down; resend elsewhere".into()))
    }

    async fn fan_out_except(&self, users: &[UserId], frame: &Frame, except: Option<ConnId>) {
        self.deps.hub.deliver(users, frame, except);
    }

    async fn announce_presence(&self, p: Presence) {
        self.deps.events.presence_changed(p).await;
    }

    fn presence(&self) -> &dyn PresenceStore {
        &self.presence
    }

    async fn recent_after(
        &self,
        chat_id: ChatId,
        after_seq: Seq,
        limit: usize,
    ) -> Option<MessagePage> {
        self.cache.after(chat_id, after_seq, limit)
    }

    async fn recent_latest(&self, chat_id: ChatId, limit: usize) -> Option<MessagePage> {
        self.cache.latest(chat_id, limit)
    }

    async fn members_changed(&self, chat_id: ChatId) {
        self.deps.directory.forget_members(chat_id);
    }

    async fn partners_changed(&self, users: &[UserId]) {
        self.deps.directory.forget_partners(users);
    }
}
