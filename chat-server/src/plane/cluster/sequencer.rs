//! The delivery role on Kafka: consume `<cluster>.messages` in a consumer group, append each
//! batch to the CQL store (sequencing is idempotent: a replayed record gets its original
//! `seq`), then run the [`pipeline`]: update the recent cache in Redis, fan out through the
//! edges' Redis channels with the acks for the origin edges in the same per-edge batch (after
//! the message they answer), queue push events for members with no route, and only then
//! store the offsets (committed by librdkafka every second and on revoke). A crash anywhere
//! before the offset commit means a replay, never a loss.
//!
//! **One worker per partition.** A dispatcher reads the log and hands each record to the
//! worker of its partition; workers run their batches concurrently (one partition's CQL write
//! overlaps another's publish), each in order, so a chat — which lives in one partition — is
//! still sequenced by one task at a time. **Hand-over on rebalance:** the store assumes one
//! appender per chat. When partitions are revoked, [`RebalanceContext`] marks them revoked
//! (workers drop what they still hold for them: the next owner replays it from the committed
//! offset) and waits, in the rebalance callback, until their batches in flight are finished and
//! their offsets stored, so librdkafka's commit on revoke includes them and the next owner
//! never appends to a chat this process is still appending to.

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

/// Which partitions this process owns (with the assignment's epoch) and how many batches of
/// each are in flight; shared by the rebalance callback and the workers.
#[derive(Default)]
pub struct Ownership {
    state: std::sync::Mutex<OwnedPartitions>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct OwnedPartitions {
    /// Partition → epoch of its current assignment.
    assigned: HashMap<i32, u64>,
    /// Partition → batches being processed.
    in_flight: HashMap<i32, usize>,
    next_epoch: u64,
}

/// How long a revoke waits for batches in flight (then gives the partition up anyway: the
/// store write of a batch is bounded by its retries, well below this).
const HAND_OVER_WAIT: Duration = Duration::from_secs(30);

impl Ownership {
    fn assign(&self, partitions: &[i32]) {
        let mut s = self.state.lock().expect("not poisoned");
        for p in partitions {
            s.next_epoch += 1;
            let e = s.next_epoch;
            s.assigned.insert(*p, e);
        }
    }

    /// Mark `partitions` revoked and wait until none of their batches is in flight.
    fn revoke(&self, partitions: &[i32]) {
        let mut s = self.state.lock().expect("not poisoned");
        for p in partitions {
            s.assigned.remove(p);
        }
        let deadline = std::time::Instant::now() + HAND_OVER_WAIT;
        while partitions
            .iter()
            .any(|p| s.in_flight.get(p).is_some_and(|n| *n > 0))
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::error!(
                    ?partitions,
                    "delivery: batches still in flight after {HAND_OVER_WAIT:?}; giving the \
                     partitions up anyway"
                );
                break;
            }
            s = self.changed.wait_timeout(s, left).expect("not poisoned").0;
        }
    }

    /// The current epoch of `partition`, if this process owns it.
    fn epoch(&self, partition: i32) -> Option<u64> {
        self.state
            .lock()
            .expect("not poisoned")
            .assigned
            .get(&partition)
            .copied()
    }

    /// Start a batch of `partition` taken under `epoch`; false if the partition was revoked
    /// (or revoked and assigned again) since.
    fn begin(&self, partition: i32, epoch: u64) -> bool {
        let mut s = self.state.lock().expect("not poisoned");
        if s.assigned.get(&partition) != Some(&epoch) {
            return false;
        }
        *s.in_flight.entry(partition).or_default() += 1;
        true
    }

    fn end(&self, partition: i32) {
        let mut s = self.state.lock().expect("not poisoned");
        if let Some(n) = s.in_flight.get_mut(&partition) {
            *n = n.saturating_sub(1);
        }
        drop(s);
        self.changed.notify_all();
    }
}

/// Tracks ownership on rebalance and forgets cached sequence numbers whenever partitions
/// move: the chats of a partition this process gets may have been appended to by the previous
/// owner.
pub struct RebalanceContext {
    store: Arc<ScyllaStore>,
    assigned: Arc<AtomicBool>,
    owned: Arc<Ownership>,
}

fn partitions_of(tpl: &rdkafka::TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            let partitions = partitions_of(tpl);
            let t = std::time::Instant::now();
            self.owned.revoke(&partitions);
            tracing::info!(
                ?partitions,
                waited_ms = t.elapsed().as_millis() as u64,
                "delivery: partitions revoked after their batches in flight finished"
            );
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                let partitions = partitions_of(tpl);
                tracing::info!(?partitions, "delivery: partitions assigned");
                self.owned.assign(&partitions);
                self.assigned.store(true, Ordering::Release);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(cause = %e, "delivery: rebalance error"),
        }
        self.store.forget_sequences();
    }
}

pub type LogConsumer = StreamConsumer<RebalanceContext>;

/// The sequencer of one delivery process.
pub struct Sequencer {
    pub consumer: LogConsumer,
    /// The same [`Ownership`] the consumer's [`RebalanceContext`] updates.
    pub owned: Arc<Ownership>,
    pub topic: String,
    pub store: Arc<ScyllaStore>,
    pub redis: Redis,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub push: Option<Arc<Push>>,
}

/// Join `group` on `topic`; `assigned` turns true at the first partition assignment; `owned`
/// follows every assignment and revocation.
pub fn consumer(
    brokers: &str,
    group: &str,
    topic: &str,
    store: Arc<ScyllaStore>,
    assigned: Arc<AtomicBool>,
    owned: Arc<Ownership>,
) -> anyhow::Result<LogConsumer> {
    let c: LogConsumer = super::kafka::consumer_config(brokers, group, 10)
        .set("socket.nagle.disable", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(RebalanceContext {
            store,
            assigned,
            owned,
        })
        .map_err(|e| anyhow::anyhow!("Kafka consumer for {brokers}: {e}"))?;
    c.subscribe(&[topic])
        .map_err(|e| anyhow::anyhow!("subscribing to {topic}: {e}"))?;
    Ok(c)
}

/// One record taken from the log.
struct Consumed {
    partition: i32,
    /// The epoch of the partition's assignment when the record was read.
    epoch: u64,
    offset: i64,
    /// `None` when it could not be decoded (skipped, logged).
    record: Option<SendRecord>,
}

/// Records queued per partition worker (back-pressure on the dispatcher beyond that).
const WORKER_QUEUE: usize = 4 * BATCH;

impl Sequencer {
    /// Dispatch records to one worker per partition until `stop`; then let the workers finish
    /// what they hold and commit the offsets.
    pub async fn run(self, stop: CancellationToken) {
        let me = Arc::new(self);
        let mut workers: HashMap<i32, tokio::sync::mpsc::Sender<Consumed>> = HashMap::new();
        let mut running = tokio::task::JoinSet::new();
        let mut moved = me.redis.primary().generation();
        loop {
            let m = tokio::select! {
                m = me.consumer.recv() => m,
                _ = moved.changed() => {
                    flush_cache_after_failover(&me.redis).await;
                    continue;
                }
                _ = stop.cancelled() => break,
            };
            let record = match m {
                Ok(m) => match me.owned.epoch(m.partition()) {
                    Some(epoch) => consumed(&m, epoch),
                    // Read just before its partition was revoked: the next owner replays it.
                    None => continue,
                },
                Err(e) => {
                    tracing::warn!(cause = %e, "delivery: Kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let partition = record.partition;
            let tx = workers.entry(partition).or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(WORKER_QUEUE);
                running.spawn(me.clone().work(partition, rx));
                tx
            });
            tokio::select! {
                r = tx.send(record) => if r.is_err() {
                    tracing::error!(partition, "delivery: a partition worker stopped");
                },
                _ = stop.cancelled() => break,
            }
        }
        drop(workers);
        while running.join_next().await.is_some() {}
        if let Err(e) = me.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(cause = %e, "delivery: final offset commit");
        }
        tracing::info!("delivery: stopped consuming");
    }

    /// One partition's worker: batches of what is queued, in order, until the dispatcher
    /// drops its queue. Two stages overlap: while one batch is appended to the store, the
    /// previous batch's fan-out (recent cache, routes, publish with its acks, push, offset)
    /// runs. At most one fan-out is in flight and each starts after the previous one ended,
    /// so edges get batches (and acks) in order and offsets are stored in order; a batch is
    /// appended only after the previous append finished, so sequencing is as before. Under
    /// load this hides the Redis round trips (~9 ms per batch measured) behind the next
    /// append (~30 ms); an idle worker finishes its fan-out before waiting for records.
    async fn work(self: Arc<Self>, partition: i32, mut rx: tokio::sync::mpsc::Receiver<Consumed>) {
        let mut dirty: HashSet<ChatId> = HashSet::new();
        let mut retry = tokio::time::interval(DIRTY_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The previous batch's fan-out; it hands the set of chats whose cache update failed
        // back when it ends.
        let mut fan_out: Option<tokio::task::JoinHandle<HashSet<ChatId>>> = None;
        loop {
            if rx.is_empty()
                && let Some(prev) = fan_out.take()
            {
                dirty = finished(prev).await;
            }
            let first = tokio::select! {
                r = rx.recv() => r,
                _ = retry.tick(), if fan_out.is_none() && !dirty.is_empty() => {
                    drop_dirty(&self.redis, &mut dirty).await;
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut batch: Vec<Consumed> = Vec::with_capacity(BATCH);
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            // A batch never mixes epochs: records of an older assignment are dropped (the
            // partition was revoked since; whoever owns it now replays them).
            let epoch = batch.last().map_or(0, |r| r.epoch);
            batch.retain(|r| r.epoch == epoch);
            if !self.owned.begin(partition, epoch) {
                continue;
            }
            // Ends the batch for the hand-over when dropped, even if a stage panics.
            let in_flight = InFlight {
                owned: self.owned.clone(),
                partition,
            };
            let results = self.append_stage(&batch).await;
            if let Some(prev) = fan_out.take() {
                dirty = finished(prev).await;
            }
            let mut carried = std::mem::take(&mut dirty);
            let me = self.clone();
            fan_out = Some(tokio::spawn(async move {
                let _in_flight = in_flight;
                if !carried.is_empty() {
                    drop_dirty(&me.redis, &mut carried).await;
                }
                if let Some(results) = results {
                    me.fan_out_stage(&batch, results, &mut carried).await;
                }
                if let Some(last) = batch.iter().map(|r| r.offset).max()
                    && let Err(e) = me.consumer.store_offset(&me.topic, partition, last)
                {
                    // Revoked meanwhile (only after the wait gave up): the new owner replays.
                    tracing::debug!(cause = %e, partition, "delivery: offset not stored");
                }
                carried
            }));
        }
        if let Some(prev) = fan_out.take() {
            finished(prev).await;
        }
    }

    /// Store a batch's records (`None` when it has none).
    async fn append_stage(&self, batch: &[Consumed]) -> Option<Vec<Result<Appended>>> {
        let m = &self.metrics;
        let records: Vec<&SendRecord> = batch.iter().filter_map(|t| t.record.as_ref()).collect();
        if records.is_empty() {
            return None;
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
        Some(results)
    }

    /// A stored batch's fan-out: the recent cache, routes, one publish per edge with the
    /// messages and the acks, push for those offline.
    async fn fan_out_stage(
        &self,
        batch: &[Consumed],
        results: Vec<Result<Appended>>,
        dirty: &mut HashSet<ChatId>,
    ) {
        let m = &self.metrics;
        let records: Vec<&SendRecord> = batch.iter().filter_map(|t| t.record.as_ref()).collect();
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
        let looked_up = redis_retrying("route lookup", || self.redis.lookup(&users)).await;
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
        let batches = edge_batches(&self.redis, per_node);
        let published =
            redis_retrying("fan-out/ack publish", || self.redis.publish_all(&batches)).await;
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

/// A batch counted in flight for the hand-over ([`Ownership::begin`]) until dropped.
struct InFlight {
    owned: Arc<Ownership>,
    partition: i32,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.owned.end(self.partition);
    }
}

/// Wait for a fan-out stage; its dirty chats (empty if it panicked: logged, and those
/// chats' cached runs then expire instead of being dropped).
async fn finished(stage: tokio::task::JoinHandle<HashSet<ChatId>>) -> HashSet<ChatId> {
    stage.await.unwrap_or_else(|e| {
        tracing::error!(cause = %e, "delivery: a fan-out stage failed");
        HashSet::new()
    })
}

fn consumed(m: &rdkafka::message::BorrowedMessage<'_>, epoch: u64) -> Consumed {
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
        epoch,
        offset: m.offset(),
        record,
    }
}

/// How long a batch's route lookup and publish keep retrying while Redis is unreachable
/// (a Sentinel failover takes a few seconds): below the edges' default ack timeout (10 s), so
/// the acks of the sends waiting for this batch still arrive in time when Redis comes back.
const REDIS_RETRY_FOR: Duration = Duration::from_secs(6);

/// Run `op` until it succeeds or [`REDIS_RETRY_FOR`] has passed (each step is bounded by the
/// connection's 2 s timeouts). Only for operations that are harmless to repeat: a lookup, or
/// a publish (a repeated `deliver` is de-duplicated by clients, a repeated ack is ignored).
async fn redis_retrying<T, F, Fut>(what: &str, mut op: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let deadline = tokio::time::Instant::now() + REDIS_RETRY_FOR;
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => {
                if attempt > 0 {
                    tracing::info!(what, attempt, "Redis: succeeded again");
                }
                return Ok(v);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::warn!(cause = %e, what, attempt, "Redis: failed; retrying");
                tokio::time::sleep(crate::retry::backoff(
                    Duration::from_millis(100),
                    attempt,
                    Duration::from_millis(500),
                ))
                .await;
                attempt += 1;
            }
        }
    }
}

/// After a Sentinel failover: the new primary may lack the old one's last cache writes (Redis
/// replicates asynchronously), and a cached run missing its tail looks complete to a reader.
/// Drop the whole recent cache (reads go to the store until it fills again). Every delivery
/// process does this when it sees the move; repeats are harmless.
async fn flush_cache_after_failover(redis: &Redis) {
    for attempt in 0..10u32 {
        match redis.cache_flush_all().await {
            Ok(n) => {
                tracing::warn!(
                    chats = n,
                    "Redis failover: dropped the recent-message cache"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(cause = %e, attempt, "Redis failover: dropping the recent cache failed; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    tracing::error!("Redis failover: the recent cache could not be dropped; it expires in a day");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_waits_for_batches_in_flight_and_old_epochs_are_refused() {
        let owned = Arc::new(Ownership::default());
        owned.assign(&[0, 1]);
        let e0 = owned.epoch(0).unwrap();
        assert!(owned.begin(0, e0));
        // Revoking partition 0 blocks until its batch ends (on another thread).
        let o = owned.clone();
        let ender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            o.end(0);
        });
        let t = std::time::Instant::now();
        owned.revoke(&[0]);
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        ender.join().unwrap();
        // Records read under the old assignment are refused, now and after a new assignment.
        assert_eq!(owned.epoch(0), None);
        assert!(!owned.begin(0, e0));
        owned.assign(&[0]);
        let e0b = owned.epoch(0).unwrap();
        assert_ne!(e0, e0b);
        assert!(!owned.begin(0, e0));
        assert!(owned.begin(0, e0b));
        owned.end(0);
        // Partition 1 was never touched and a revoke with nothing in flight returns at once.
        let t = std::time::Instant::now();
        owned.revoke(&[1]);
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
