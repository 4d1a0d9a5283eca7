//! The push worker: takes events into the durable queue, turns closed coalescing windows into
//! outbox items, and sends due outbox items with bounded concurrency. One per process that
//! delivers (embedded: the only process; distributed: each delivery process, for the shards
//! it owns).

use super::backoff::{self, Next};
use super::metrics::{FailLabel, ProviderLabel, ReasonLabel};
use super::payload::{self, Answer};
use super::sender::Sender;
use super::{Device, OutboxItem, Pending, Platform, Provider, Push, PushEvent};
use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::store::Store;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often due rows and items are looked for.
const TICK: Duration = Duration::from_millis(100);
/// Rows or items taken per shard per tick.
const PER_TICK: usize = 256;
/// Events written per store call.
const INTAKE_BATCH: usize = 512;

/// What the worker uses of the running server.
pub struct WorkerDeps {
    /// The message store: chats (title, kind) and unread counts for the badge.
    pub store: Arc<dyn Store>,
    /// `chat_push_*` live in `metrics.push`.
    pub metrics: Arc<Metrics>,
    /// Fires when the server stops: take what is queued, finish sends, return.
    pub stop: CancellationToken,
}

/// An event and the shard whose worker queues it (embedded: 0; distributed: its Kafka
/// partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEvent {
    pub shard: i32,
    pub event: PushEvent,
}

/// Where events come from: the embedded channel or the distributed Kafka topic.
#[async_trait]
pub trait Source: Send {
    /// The next batch. Cancel-safe (it is polled in a `select!`).
    async fn next(&mut self) -> Option<Vec<ShardEvent>>;
    /// The batch last returned is durable in the store (Kafka: store its offsets).
    fn committed(&mut self);
    /// On shutdown: what is still queued and can be taken without waiting long.
    async fn drain(&mut self) -> Vec<ShardEvent>;
    /// The shards this process works on now.
    fn shards(&self) -> Vec<i32>;
    /// How often to look for due work (a CQL store reads whole shard partitions).
    fn tick(&self) -> Duration {
        TICK
    }
}

/// The embedded source: events from the delivery shards through a channel; shard 0.
pub struct ChannelSource(pub mpsc::Receiver<PushEvent>);

#[async_trait]
impl Source for ChannelSource {
    async fn next(&mut self) -> Option<Vec<ShardEvent>> {
        let first = self.0.recv().await?;
        let mut batch = vec![ShardEvent {
            shard: 0,
            event: first,
        }];
        while batch.len() < INTAKE_BATCH {
            match self.0.try_recv() {
                Ok(event) => batch.push(ShardEvent { shard: 0, event }),
                Err(_) => break,
            }
        }
        Some(batch)
    }
    fn committed(&mut self) {}
    async fn drain(&mut self) -> Vec<ShardEvent> {
        // Delivery shards finish their last batches while we stop: take what they send
        // until the channel has been quiet for a moment.
        let mut out = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), self.0.recv()).await
        {
            out.push(ShardEvent { shard: 0, event });
        }
        out
    }
    fn shards(&self) -> Vec<i32> {
        vec![0]
    }
}

/// Run until `deps.stop`; then take what is still queued and wait (bounded) for sends.
pub async fn run(deps: WorkerDeps, push: Arc<Push>, sender: Arc<Sender>, mut source: impl Source) {
    let inflight: Arc<Mutex<HashSet<String>>> = Default::default();
    let mut sends: JoinSet<()> = JoinSet::new();
    let mut tick = tokio::time::interval(source.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = source.next() => match batch {
                Some(b) => {
                    if intake(&deps, &push, b).await {
                        source.committed();
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                let shards = source.shards();
                work(&deps, &push, &sender, &shards, &inflight, &mut sends).await;
            }
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
            _ = deps.stop.cancelled() => {
                let rest = source.drain().await;
                if !rest.is_empty() && intake(&deps, &push, rest).await {
                    source.committed();
                }
                break;
            }
        }
    }
    let wait = tokio::time::timeout(Duration::from_secs(5), async {
        while sends.join_next().await.is_some() {}
    });
    if wait.await.is_err() {
        // Unfinished sends stay in the outbox and are sent after the restart.
        sends.abort_all();
    }
    tracing::info!("push: worker stopped");
}

/// Write a batch of events (grouped per shard). Retries while the store fails; false if it
/// gave up because the server is stopping.
async fn intake(deps: &WorkerDeps, push: &Push, batch: Vec<ShardEvent>) -> bool {
    let mut by_shard: std::collections::BTreeMap<i32, Vec<PushEvent>> = Default::default();
    for ShardEvent { shard, event } in batch {
        by_shard.entry(shard).or_default().push(event);
    }
    let window = push.cfg.push_coalesce_ms as i64;
    for (shard, events) in by_shard {
        let n = events.len() as u64;
        let mut attempt = 0;
        loop {
            match push.store.add_events(shard, events.clone(), window).await {
                Ok(taken) => {
                    deps.metrics.push.queued.inc_by(taken as u64);
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::error!(cause = %e, shard, events = n, attempt, "push: cannot queue events; retrying");
                    if deps.stop.is_cancelled() && attempt > 3 {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * attempt.min(10))).await;
                }
            }
        }
    }
    true
}

async fn work(
    deps: &WorkerDeps,
    push: &Arc<Push>,
    sender: &Arc<Sender>,
    shards: &[i32],
    inflight: &Arc<Mutex<HashSet<String>>>,
    sends: &mut JoinSet<()>,
) {
    let now = now_ms();
    let mut oldest: Option<i64> = None;
    for &shard in shards {
        match push.store.due_pending(shard, now, PER_TICK).await {
            Ok(due) => {
                for p in due {
                    if let Err(e) = schedule(deps, push, &p).await {
                        tracing::warn!(cause = %e, user_id = p.user_id, chat_id = p.chat_id, "push: scheduling failed; retrying");
                    }
                }
            }
            Err(e) => tracing::warn!(cause = %e, shard, "push: cannot read pending notifications"),
        }
        match push.store.due_outbox(shard, now, PER_TICK).await {
            Ok(items) => {
                for item in items {
                    if sends.len() >= push.cfg.push_concurrency {
                        break;
                    }
                    if !inflight.lock().insert(item.id.clone()) {
                        continue;
                    }
                    let metrics = deps.metrics.clone();
                    let push = push.clone();
                    let sender = sender.clone();
                    let inflight = inflight.clone();
                    sends.spawn(async move {
                        let id = item.id.clone();
                        attempt(&metrics, &push, &sender, item).await;
                        inflight.lock().remove(&id);
                    });
                }
            }
            Err(e) => tracing::warn!(cause = %e, shard, "push: cannot read the outbox"),
        }
        if let Ok(Some(t)) = push.store.oldest(shard).await {
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    let age = oldest.map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0);
    deps.metrics.push.queue_age.set(age);
}

/// Turn a closed window into outbox items (or nothing: muted, already read, no device).
async fn schedule(deps: &WorkerDeps, push: &Push, p: &Pending) -> crate::error::Result<()> {
    let skip = |reason: &'static str| {
        deps.metrics
            .push
            .skipped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    };
    if push.store.is_muted(p.user_id, p.chat_id).await? {
        skip("muted");
        return push.store.schedule(p, vec![]).await;
    }
    let Some(chat) = deps.store.chat(p.chat_id).await? else {
        skip("no_chat");
        return push.store.schedule(p, vec![]).await;
    };
    let chats = deps.store.user_chats(p.user_id).await?;
    if chats
        .iter()
        .any(|c| c.chat.chat_id == p.chat_id && c.read_seq >= p.last_seq)
    {
        // Read meanwhile (on another device, or the user came back): nothing to tell.
        skip("read");
        return push.store.schedule(p, vec![]).await;
    }
    let badge: u64 = chats.iter().map(|c| c.unread).sum();
    let devices = push.store.devices(p.user_id).await?;
    let n = payload::build(
        p,
        chat.kind,
        chat.title.as_deref(),
        badge,
        push.cfg.push_hide_content,
    );
    let payload = serde_json::to_string(&n).expect("JSON serializes");
    let now = now_ms();
    let item = |provider: Provider, target: &[&Device]| OutboxItem {
        id: uuid::Uuid::now_v7().to_string(),
        shard: p.shard,
        user_id: p.user_id,
        chat_id: p.chat_id,
        provider,
        target: serde_json::to_string(target).expect("JSON serializes"),
        payload: payload.clone(),
        attempts: 0,
        next_at_ms: now,
        created_ms: now,
        last_error: None,
    };
    let mut items = Vec::new();
    let mobile: Vec<&Device> = devices
        .iter()
        .filter(|d| d.platform != Platform::Web)
        .collect();
    if !mobile.is_empty() {
        match push.cfg.mobile_provider() {
            Some(provider) => items.push(item(provider, &mobile)),
            None => skip("no_provider"),
        }
    }
    for d in devices.iter().filter(|d| d.platform == Platform::Web) {
        if push.vapid.is_some() {
            items.push(item(Provider::Webpush, &[d]));
        } else {
            skip("no_provider");
        }
    }
    if devices.is_empty() {
        skip("no_device");
    }
    push.store.schedule(p, items).await
}

/// One attempt of one item, and what follows from the answer.
async fn attempt(metrics: &Metrics, push: &Push, sender: &Sender, mut item: OutboxItem) {
    let provider = item.provider.as_str();
    let m = &metrics.push;
    let fail = |outcome: &'static str| {
        m.failed
            .get_or_create(&FailLabel { provider, outcome })
            .inc();
    };
    let answer = sender.send(&item).await;
    tracing::debug!(id = %item.id, provider, ?answer, "push: attempt");
    let result = match answer {
        Answer::Delivered { unregistered } => {
            m.sent.get_or_create(&ProviderLabel { provider }).inc();
            m.latency
                .observe(((now_ms() - item.created_ms).max(0) as f64) / 1000.0);
            for token in unregistered {
                remove(metrics, push, item.user_id, &token).await;
            }
            push.store.outbox_done(&item).await
        }
        Answer::Unregistered => {
            fail("unregistered");
            let devices: Vec<Device> = serde_json::from_str(&item.target).unwrap_or_default();
            for d in devices {
                remove(metrics, push, item.user_id, &d.token).await;
            }
            push.store.outbox_done(&item).await
        }
        Answer::Retry(e) => {
            item.attempts += 1;
            let c = &push.cfg;
            match backoff::next(
                item.attempts,
                c.push_max_attempts,
                c.push_retry_base_ms,
                c.push_retry_max_ms,
                rand::random::<f64>(),
            ) {
                Next::RetryIn(ms) => {
                    fail("retry");
                    tracing::info!(id = %item.id, provider, attempts = item.attempts, retry_in_ms = ms, cause = %e, "push: will retry");
                    item.next_at_ms = now_ms() + ms as i64;
                    item.last_error = Some(e);
                    push.store.outbox_retry(&item).await
                }
                Next::GiveUp => {
                    fail("dead");
                    tracing::warn!(id = %item.id, provider, attempts = item.attempts, cause = %e, "push: giving up; kept as a dead letter");
                    push.store.dead_letter(&item, &e).await
                }
            }
        }
        Answer::Fail(e) => {
            item.attempts += 1;
            fail("dead");
            tracing::warn!(id = %item.id, provider, cause = %e, "push: rejected; kept as a dead letter");
            push.store.dead_letter(&item, &e).await
        }
    };
    if let Err(e) = result {
        // The item stays as it was and is tried again: at worst a duplicate notification.
        tracing::warn!(cause = %e, id = %item.id, "push: cannot record the outcome");
    }
}

async fn remove(metrics: &Metrics, push: &Push, user: u64, token: &str) {
    match push.store.remove_device(user, token).await {
        Ok(true) => {
            metrics.push.devices_removed.inc();
            tracing::info!(
                user_id = user,
                "push: provider reported a device unregistered; removed"
            );
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(cause = %e, "push: cannot remove an unregistered device"),
    }
}
