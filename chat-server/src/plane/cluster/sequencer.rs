//! The delivery role on Kafka: consume `<cluster>.messages` in a consumer group, append each
//! batch to the CQL store (sequencing is idempotent: a replayed record gets its original
//! `seq`), then run the [`pipeline`]: update the recent cache in Redis, fan out through the
//! edges' Redis channels with the acks for the origin edges in the same per-edge batch (after
//! the message they answer), queue push events for members with no route, and only then
//! store the offsets (committed by librdkafka every second and on revoke). A crash anywhere
//! before the offset commit means a replay, never a loss.

use super::redis::Redis;
use super::{edge_batches, plan_by_node};
use crate::error::{Error, Result};
use crate::members::Directory;
use crate::metrics::Metrics;
use crate::model::{ChatId, SharedMessage, UserId, now_ms};
use crate::plane::pipeline::{self, FanOut, Stored};
use crate::plane::wire::{self, EdgeItem, Outcome, SendRecord};
use crate::protocol;
use crate::push::Push;
use crate::store::Appended;
use crate::store::scylla::ScyllaStore;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Records taken from Kafka per batch (one store call, one publish per edge).
const BATCH: usize = 512;

/// Forgets cached sequence numbers whenever partitions move: the chats of a partition this
/// process gets may have been appended to by the previous owner.
pub struct RebalanceContext {
    store: Arc<ScyllaStore>,
    assigned: Arc<AtomicBool>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "delivery: partitions assigned");
                self.assigned.store(true, Ordering::Release);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "delivery: partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(cause = %e, "delivery: rebalance error"),
        }
        self.store.forget_sequences();
    }
}

pub type LogConsumer = StreamConsumer<RebalanceContext>;

/// The sequencer of one delivery process.
pub struct Sequencer {
    pub consumer: LogConsumer,
    pub topic: String,
    pub store: Arc<ScyllaStore>,
    pub redis: Redis,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub push: Option<Arc<Push>>,
}

/// Join `group` on `topic`; `assigned` turns true at the first partition assignment.
pub fn consumer(
    brokers: &str,
    group: &str,
    topic: &str,
    store: Arc<ScyllaStore>,
    assigned: Arc<AtomicBool>,
) -> anyhow::Result<LogConsumer> {
    let c: LogConsumer = super::kafka::consumer_config(brokers, group, 10)
        .set("socket.nagle.disable", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(RebalanceContext { store, assigned })
        .map_err(|e| anyhow::anyhow!("Kafka consumer for {brokers}: {e}"))?;
    c.subscribe(&[topic])
        .map_err(|e| anyhow::anyhow!("subscribing to {topic}: {e}"))?;
    Ok(c)
}

/// One record taken from the log.
struct Consumed {
    partition: i32,
    offset: i64,
    /// `None` when it could not be decoded (skipped, logged).
    record: Option<SendRecord>,
}

impl Sequencer {
    /// The consume → append → fan-out → ack → store-offset loop, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut dirty: HashSet<ChatId> = HashSet::new();
        let mut retry = tokio::time::interval(DIRTY_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = retry.tick(), if !dirty.is_empty() => {
                    drop_dirty(&self.redis, &mut dirty).await;
                    continue;
                }
                _ = stop.cancelled() => break,
            };
            let mut batch = Vec::with_capacity(BATCH);
            match first {
                Ok(m) => batch.push(consumed(&m)),
                Err(e) => {
                    tracing::warn!(cause = %e, "delivery: Kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            while batch.len() < BATCH {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(consumed(&m)),
                    _ => break,
                }
            }
            if !dirty.is_empty() {
                drop_dirty(&self.redis, &mut dirty).await;
            }
            self.process(&batch, &mut dirty).await;
            let mut last: HashMap<i32, i64> = HashMap::new();
            for t in &batch {
                let o = last.entry(t.partition).or_insert(t.offset);
                *o = (*o).max(t.offset);
            }
            for (p, o) in last {
                if let Err(e) = self.consumer.store_offset(&self.topic, p, o) {
                    // Revoked meanwhile: the new owner replays, which is harmless.
                    tracing::debug!(cause = %e, partition = p, "delivery: offset not stored");
                }
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(cause = %e, "delivery: final offset commit");
        }
        tracing::info!("delivery: stopped consuming");
    }

    async fn process(&self, batch: &[Consumed], dirty: &mut HashSet<ChatId>) {
        let m = &self.metrics;
        let records: Vec<&SendRecord> = batch.iter().filter_map(|t| t.record.as_ref()).collect();
        if records.is_empty() {
            return;
        }
        m.store_batch.observe(records.len() as f64);
        let consumed = now_ms();
        for r in &records {
            m.stage(
                "consume_lag",
                ((consumed - r.accepted_ms).max(0) as f64) / 1000.0,
            );
        }
        let t = std::time::Instant::now();
        let results = append(&self.store, &records).await;
        m.stage("append", t.elapsed().as_secs_f64());
        let stored: Vec<Stored> = records
            .iter()
            .zip(&results)
            .map(|(r, result)| Stored {
                result,
                sent_id: Some(r.message_id.as_str()),
            })
            .collect();
        let members = pipeline::members_of(&self.directory, &pipeline::chats(&stored)).await;
        let plan = pipeline::plan(&stored, &members);
        m.messages_stored.inc_by(plan.stored);
        m.messages_duplicate.inc_by(plan.duplicates);

        let t = std::time::Instant::now();
        update_cache(&self.redis, &plan.fan_out, dirty).await;
        m.stage("cache", t.elapsed().as_secs_f64());

        // Where each recipient is connected.
        let t = std::time::Instant::now();
        let mut users: Vec<UserId> = plan
            .fan_out
            .iter()
            .flat_map(|f| f.members.users.iter().copied())
            .collect();
        users.sort_unstable();
        users.dedup();
        let looked_up = self.redis.lookup(&users).await;
        m.stage("routes", t.elapsed().as_secs_f64());
        let routes_ok = looked_up.is_ok();
        let routes: HashMap<UserId, Vec<String>> = match looked_up {
            Ok(r) => users
                .iter()
                .copied()
                .zip(r.into_iter().map(|r| r.nodes))
                .collect(),
            Err(e) => {
                tracing::warn!(cause = %e, "Redis: routes unavailable; fan-out skipped (clients sync)");
                HashMap::new()
            }
        };

        // One ordered batch per edge: each message's fan-out, acks after the message they
        // answer.
        let mut per_node: HashMap<String, Vec<EdgeItem>> = HashMap::new();
        let now = now_ms();
        let no_route: Vec<String> = Vec::new();
        for f in &plan.fan_out {
            let r = records[f.index];
            let text = protocol::message_frame(&f.message);
            let nodes = f
                .members
                .users
                .iter()
                .map(|u| routes.get(u).unwrap_or(&no_route).as_slice());
            for (node, users) in plan_by_node(&f.members.users, nodes) {
                let except = (node == r.node).then_some(r.conn).flatten();
                per_node
                    .entry(node.to_string())
                    .or_default()
                    .push(EdgeItem::Deliver {
                        users,
                        except,
                        frame: text.clone(),
                    });
            }
            m.delivery_latency
                .observe(((now - r.accepted_ms).max(0) as f64) / 1000.0);
        }
        // Push candidates, before the results are consumed by the acks.
        let push = match (&self.push, routes_ok) {
            (Some(_), true) => {
                plan.push_events(|u| routes.get(&u).is_some_and(|nodes| !nodes.is_empty()))
            }
            _ => Vec::new(),
        };
        for (r, result) in records.iter().zip(results) {
            let outcome = Outcome::of(&pipeline::ack(result));
            per_node
                .entry(r.node.clone())
                .or_default()
                .push(EdgeItem::Ack {
                    corr: r.corr,
                    outcome,
                });
        }
        let t = std::time::Instant::now();
        let published = self
            .redis
            .publish_all(&edge_batches(&self.redis, per_node))
            .await;
        m.stage("publish", t.elapsed().as_secs_f64());
        if let Err(e) = published {
            // Stored, so nothing is lost: edges time out the acks (clients resend,
            // deduplicated) and recipients catch up with sync.
            tracing::warn!(cause = %e, "Redis: fan-out/ack publish failed");
        }
        // Push for members with no route (offline), before offsets are stored. Nobody is
        // pushed when the route lookup failed: everyone would look offline.
        if let Some(p) = &self.push {
            p.enqueue(push).await;
        }
    }
}

fn consumed(m: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
    let record = match m
        .payload()
        .map(|p| wire::decode::<SendRecord>("Kafka record", p))
    {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            tracing::error!(cause = %e, partition = m.partition(), offset = m.offset(), "delivery: skipping an undecodable record");
            None
        }
        None => None,
    };
    Consumed {
        partition: m.partition(),
        offset: m.offset(),
        record,
    }
}

/// Append with retries: the store is idempotent, so a retry after an unknown outcome is safe.
async fn append(store: &ScyllaStore, records: &[&SendRecord]) -> Vec<Result<Appended>> {
    use crate::store::Store;
    let mut results: Vec<Option<Result<Appended>>> = (0..records.len()).map(|_| None).collect();
    let mut todo: Vec<usize> = (0..records.len()).collect();
    for attempt in 0..4 {
        let batch = todo.iter().map(|i| records[*i].to_new_message()).collect();
        let got = store.append_batch(batch).await;
        let mut again = Vec::new();
        for (i, r) in todo.into_iter().zip(got) {
            let transient = matches!(&r, Err(Error::Internal(_) | Error::Unavailable(_)));
            if transient && attempt < 3 {
                again.push(i);
            }
            results[i] = Some(r);
        }
        if again.is_empty() {
            break;
        }
        tracing::warn!(
            failed = again.len(),
            attempt,
            "delivery: store append failed; retrying"
        );
        tokio::time::sleep(crate::retry::backoff(
            Duration::from_millis(200),
            attempt,
            Duration::from_secs(2),
        ))
        .await;
        todo = again;
    }
    results
        .into_iter()
        .map(|r| r.expect("every record has a result"))
        .collect()
}

/// How often the cached runs of dirty chats are retried for removal while Redis is back
/// but no new message came for them.
const DIRTY_RETRY: Duration = Duration::from_millis(200);

/// Drop the cached runs of chats whose cache update failed. Until this succeeds an edge may
/// answer a `sync` from a run that lacks the newest messages (Redis was unreachable for the
/// update, so it is for those reads too, except in the moment it comes back): retried every
/// [`DIRTY_RETRY`] and before every batch, so that moment stays short even in a chat that
/// gets no new message.
async fn drop_dirty(redis: &Redis, dirty: &mut HashSet<ChatId>) {
    let chats: Vec<ChatId> = dirty.iter().copied().collect();
    match redis.cache_drop(&chats).await {
        Ok(()) => {
            tracing::info!(
                chats = chats.len(),
                "Redis back: dropped the recent cache of chats that missed updates"
            );
            dirty.clear();
        }
        Err(e) => tracing::debug!(cause = %e, "Redis: dirty recent cache not dropped yet"),
    }
}

/// Add the batch's messages to the recent cache. A chat whose update failed is marked dirty;
/// its cached run is dropped by [`drop_dirty`] or at its next successful update (it may have
/// a hole).
async fn update_cache(redis: &Redis, fan: &[FanOut], dirty: &mut HashSet<ChatId>) {
    if fan.is_empty() {
        return;
    }
    let messages: Vec<SharedMessage> = fan.iter().map(|f| f.message.clone()).collect();
    let mut chats: Vec<ChatId> = messages.iter().map(|m| m.chat_id).collect();
    chats.sort_unstable();
    chats.dedup();
    let reset: Vec<ChatId> = chats
        .iter()
        .copied()
        .filter(|c| dirty.contains(c))
        .collect();
    match redis.cache_push(&messages, &reset).await {
        Ok(()) => {
            for c in reset {
                dirty.remove(&c);
            }
        }
        Err(e) => {
            tracing::warn!(cause = %e, "Redis: recent cache not updated; those chats read from the store");
            dirty.extend(chats);
        }
    }
}
