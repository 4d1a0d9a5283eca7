//! The delivery role on Kafka: consume `<cluster>.messages` in a consumer group, append each
//! batch to the store (sequencing is idempotent: a replayed record gets its original `seq`),
//! update the recent cache, fan out through the edges' Redis channels, answer the origin
//! edge, and only then store the offsets (committed by librdkafka every second and on
//! revoke). A crash anywhere before the offset commit means a replay, never a loss.

use super::node::{Distributed, plan_by_node};
use super::redis::Redis;
use super::wire::{self, EdgeBatch, EdgeItem, Outcome, SendRecord};
use crate::error::{Error, Result};
use crate::model::{Ack, ChatId, SharedMessage, UserId, now_ms};
use crate::protocol;
use crate::state::AppState;
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

pub type DeliveryConsumer = StreamConsumer<RebalanceContext>;

pub fn consumer(
    brokers: &str,
    group: &str,
    topic: &str,
    store: Arc<ScyllaStore>,
    assigned: Arc<AtomicBool>,
) -> anyhow::Result<DeliveryConsumer> {
    let c: DeliveryConsumer = super::kafka::client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored by hand, after the write and the fan-out.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A killed delivery process's partitions move after this long.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "10")
        .set("socket.nagle.disable", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(RebalanceContext { store, assigned })
        .map_err(|e| anyhow::anyhow!("Kafka consumer for {brokers}: {e}"))?;
    c.subscribe(&[topic])
        .map_err(|e| anyhow::anyhow!("subscribing to {topic}: {e}"))?;
    Ok(c)
}

struct Taken {
    partition: i32,
    offset: i64,
    record: Option<SendRecord>,
}

/// The consume → append → fan-out → ack → store-offset loop.
pub async fn run(
    state: Arc<AppState>,
    plane: Arc<Distributed>,
    consumer: DeliveryConsumer,
    topic: String,
    store: Arc<ScyllaStore>,
) {
    let mut dirty: HashSet<ChatId> = HashSet::new();
    let mut retry = tokio::time::interval(DIRTY_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = retry.tick(), if !dirty.is_empty() => {
                drop_dirty(&plane.redis, &mut dirty).await;
                continue;
            }
            _ = state.stop.cancelled() => break,
        };
        let mut batch = Vec::with_capacity(BATCH);
        match first {
            Ok(m) => batch.push(take(&m)),
            Err(e) => {
                tracing::warn!(cause = %e, "delivery: Kafka consume error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        while batch.len() < BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(take(&m)),
                _ => break,
            }
        }
        if !dirty.is_empty() {
            drop_dirty(&plane.redis, &mut dirty).await;
        }
        process(&state, &plane, &store, &batch, &mut dirty).await;
        let mut last: HashMap<i32, i64> = HashMap::new();
        for t in &batch {
            let o = last.entry(t.partition).or_insert(t.offset);
            *o = (*o).max(t.offset);
        }
        for (p, o) in last {
            if let Err(e) = consumer.store_offset(&topic, p, o) {
                // Revoked meanwhile: the new owner replays, which is harmless.
                tracing::debug!(cause = %e, partition = p, "delivery: offset not stored");
            }
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(cause = %e, "delivery: final offset commit");
    }
    tracing::info!("delivery: stopped consuming");
}

fn take(m: &rdkafka::message::BorrowedMessage<'_>) -> Taken {
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
    Taken {
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
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        todo = again;
    }
    results
        .into_iter()
        .map(|r| r.expect("every record has a result"))
        .collect()
}

async fn process(
    state: &Arc<AppState>,
    plane: &Distributed,
    store: &ScyllaStore,
    batch: &[Taken],
    dirty: &mut HashSet<ChatId>,
) {
    let records: Vec<&SendRecord> = batch.iter().filter_map(|t| t.record.as_ref()).collect();
    if records.is_empty() {
        return;
    }
    state.metrics.store_batch.observe(records.len() as f64);
    let consumed = now_ms();
    for r in &records {
        state.metrics.stage(
            "consume_lag",
            ((consumed - r.accepted_ms).max(0) as f64) / 1000.0,
        );
    }
    let t = std::time::Instant::now();
    let results = append(store, &records).await;
    state.metrics.stage("append", t.elapsed().as_secs_f64());

    // What to fan out: new messages, and replays of a record (same message_id) whose first
    // fan-out may not have happened. A client's resend (new message_id) is only acked.
    let mut fan: Vec<(SharedMessage, &SendRecord)> = Vec::new();
    for (r, result) in records.iter().zip(&results) {
        match result {
            Ok(a) if !a.duplicate || a.message.message_id == r.message_id => {
                if a.duplicate {
                    state.metrics.messages_duplicate.inc();
                } else {
                    state.metrics.messages_stored.inc();
                }
                fan.push((a.message.clone(), r));
            }
            Ok(_) => {
                state.metrics.messages_duplicate.inc();
            }
            Err(_) => {}
        }
    }
    let t = std::time::Instant::now();
    update_cache(&plane.redis, &fan, dirty).await;
    state.metrics.stage("cache", t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();

    // Members of each chat, then where each recipient is connected.
    let mut members: HashMap<ChatId, Arc<crate::members::ChatMembers>> = HashMap::new();
    for (m, _) in &fan {
        if members.contains_key(&m.chat_id) {
            continue;
        }
        match state.members.get(state.store.as_ref(), m.chat_id).await {
            Ok(ms) => {
                members.insert(m.chat_id, ms);
            }
            Err(e) => {
                tracing::warn!(cause = %e, chat_id = m.chat_id, "fan-out skipped (members catch up with sync)")
            }
        }
    }
    let mut users: Vec<UserId> = members
        .values()
        .flat_map(|m| m.users.iter().copied())
        .collect();
    users.sort_unstable();
    users.dedup();
    let looked_up = plane.redis.lookup(&users).await;
    state.metrics.stage("routes", t.elapsed().as_secs_f64());
    let routes: HashMap<UserId, Vec<String>> = match looked_up {
        Ok(r) => users
            .iter()
            .copied()
            .zip(r.into_iter().map(|(nodes, _)| nodes))
            .collect(),
        Err(e) => {
            tracing::warn!(cause = %e, "Redis: routes unavailable; fan-out skipped (clients sync)");
            HashMap::new()
        }
    };

    // One ordered batch per edge: each message's fan-out, acks after the message they answer.
    let mut per_node: HashMap<String, Vec<EdgeItem>> = HashMap::new();
    let now = now_ms();
    for (m, r) in &fan {
        let Some(ms) = members.get(&m.chat_id) else {
            continue;
        };
        let f = protocol::message_frame(m);
        let with_routes: Vec<(Vec<String>, Option<i64>)> = ms
            .users
            .iter()
            .map(|u| (routes.get(u).cloned().unwrap_or_default(), None))
            .collect();
        tracing::debug!(seq = m.seq, ?with_routes, "delivery: routes");
        for (node, users) in plan_by_node(&ms.users, with_routes) {
            let except = (node == r.node).then_some(r.conn).flatten();
            per_node.entry(node).or_default().push(EdgeItem::Deliver {
                users,
                except,
                frame: f.clone(),
            });
        }
        state
            .metrics
            .delivery_latency
            .observe(((now - r.accepted_ms).max(0) as f64) / 1000.0);
    }
    for (r, result) in records.iter().zip(results) {
        let outcome = Outcome::of(&result.map(|a| Ack::of(&a.message)));
        per_node
            .entry(r.node.clone())
            .or_default()
            .push(EdgeItem::Ack {
                corr: r.corr,
                outcome,
            });
    }
    let out: Vec<(String, Vec<u8>)> = per_node
        .into_iter()
        .map(|(node, items)| {
            let batch = EdgeBatch {
                v: wire::VERSION,
                items,
            };
            (
                plane.redis.edge_channel(&node),
                serde_json::to_vec(&batch).expect("a batch serializes"),
            )
        })
        .collect();
    let t = std::time::Instant::now();
    let published = plane.redis.publish_all(&out).await;
    state.metrics.stage("publish", t.elapsed().as_secs_f64());
    if let Err(e) = published {
        // Stored, so nothing is lost: edges time out the acks (clients resend, deduplicated)
        // and recipients catch up with sync.
        tracing::warn!(cause = %e, "Redis: fan-out/ack publish failed");
    }
    // Push notifications for members with no route (offline), before offsets are stored.
    crate::push::on_stored_cluster(
        state,
        fan.iter().filter_map(|(m, _)| {
            let ms = members.get(&m.chat_id)?;
            Some((&**m, ms.users.as_slice()))
        }),
        |u| routes.get(&u).is_some_and(|nodes| !nodes.is_empty()),
        routes.len() == users.len(),
    )
    .await;
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
async fn update_cache(
    redis: &Redis,
    fan: &[(SharedMessage, &SendRecord)],
    dirty: &mut HashSet<ChatId>,
) {
    if fan.is_empty() {
        return;
    }
    let messages: Vec<SharedMessage> = fan.iter().map(|(m, _)| m.clone()).collect();
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
