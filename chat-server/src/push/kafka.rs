//! The distributed push queue's front: `<cluster>.push`. The delivery role produces one record
//! per offline member (JSON [`PushEvent`], key = user id, partition = the user's shard =
//! `user_id % partitions`) before it stores the message's offset, so a crash replays rather
//! than loses; the delivery role consumes the topic in the group `<cluster>.push` and a
//! partition's owner is the only process that works on that shard's rows in ScyllaDB.

use super::PushEvent;
use super::worker::{ShardEvent, Source};
use crate::model::UserId;
use async_trait::async_trait;
use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub fn topic(cluster: &str) -> String {
    format!("{cluster}.push")
}

pub fn group(cluster: &str) -> String {
    format!("{cluster}.push")
}

/// The shard (and partition) of a user.
pub fn shard_of(user: UserId, partitions: i32) -> i32 {
    (user % partitions.max(1) as u64) as i32
}

/// Attempts to produce a batch before giving up on it (logged; the message itself is stored).
const PRODUCE_ATTEMPTS: u32 = 5;

pub struct PushProducer {
    producer: FutureProducer,
    topic: String,
    partitions: i32,
}

impl PushProducer {
    /// A producer for `topic`, which must exist (`chat-server setup` creates it).
    pub fn new(brokers: &str, topic: String) -> anyhow::Result<Self> {
        let producer: FutureProducer = crate::plane::cluster::kafka::producer_config(brokers)
            .create()
            .map_err(|e| anyhow::anyhow!("Kafka producer for {brokers}: {e}"))?;
        let md = rdkafka::producer::Producer::client(&producer)
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("reading metadata of {topic}: {e}"))?;
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len()) as i32;
        anyhow::ensure!(
            partitions > 0,
            "Kafka topic {topic} is missing: run `chat-server setup` (it creates it)"
        );
        Ok(PushProducer {
            producer,
            topic,
            partitions,
        })
    }

    /// Produce the events and wait until Kafka has them (`acks=all`), retrying failures.
    pub async fn produce(&self, mut events: Vec<PushEvent>) {
        for attempt in 1..=PRODUCE_ATTEMPTS {
            let encoded: Vec<(String, Vec<u8>)> = events
                .iter()
                .map(|e| {
                    let payload = serde_json::to_vec(e).expect("JSON serializes");
                    (e.user_id.to_string(), payload)
                })
                .collect();
            let sends: Vec<_> = events
                .iter()
                .zip(&encoded)
                .map(|(e, (key, payload))| {
                    let record = FutureRecord::to(&self.topic)
                        .key(key)
                        .payload(payload)
                        .partition(shard_of(e.user_id, self.partitions));
                    self.producer.send(record, Duration::from_secs(5))
                })
                .collect();
            let results = futures::future::join_all(sends).await;
            let failed: Vec<PushEvent> = events
                .into_iter()
                .zip(results)
                .filter_map(|(e, r)| r.is_err().then_some(e))
                .collect();
            if failed.is_empty() {
                return;
            }
            tracing::warn!(
                failed = failed.len(),
                attempt,
                "push: producing to Kafka failed; retrying"
            );
            events = failed;
            tokio::time::sleep(crate::retry::backoff(
                Duration::from_millis(400),
                attempt - 1,
                Duration::from_secs(10),
            ))
            .await;
        }
        tracing::error!(
            lost = events.len(),
            "push: could not queue pushes in Kafka; these members get no notification (their \
             messages are stored and sync normally)"
        );
    }
}

/// Tracks which partitions (= shards) this process owns.
pub struct ShardContext {
    owned: Arc<Mutex<BTreeSet<i32>>>,
}

impl ClientContext for ShardContext {}

impl ConsumerContext for ShardContext {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let mut owned = self.owned.lock();
        match r {
            Rebalance::Assign(tpl) => {
                owned.extend(tpl.elements().iter().map(|e| e.partition()));
                tracing::info!(shards = ?*owned, "push: shards assigned");
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    owned.remove(&e.partition());
                }
                tracing::info!(shards = ?*owned, "push: shards revoked");
            }
            Rebalance::Error(e) => tracing::warn!(cause = %e, "push: rebalance error"),
        }
    }
}

/// The worker's event source in the distributed mode.
pub struct KafkaSource {
    consumer: StreamConsumer<ShardContext>,
    topic: String,
    owned: Arc<Mutex<BTreeSet<i32>>>,
    last: HashMap<i32, i64>,
}

impl KafkaSource {
    pub fn new(brokers: &str, group: &str, topic: &str) -> anyhow::Result<Self> {
        let owned: Arc<Mutex<BTreeSet<i32>>> = Default::default();
        // Offsets are stored once the events are in ScyllaDB.
        let consumer: StreamConsumer<ShardContext> =
            crate::plane::cluster::kafka::consumer_config(brokers, group, 50)
                .create_with_context(ShardContext {
                    owned: owned.clone(),
                })
                .map_err(|e| anyhow::anyhow!("Kafka consumer for {brokers}: {e}"))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| anyhow::anyhow!("subscribing to {topic}: {e}"))?;
        Ok(KafkaSource {
            consumer,
            topic: topic.to_string(),
            owned,
            last: HashMap::new(),
        })
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Option<Vec<ShardEvent>> {
        let mut batch = Vec::new();
        let mut take = |m: &rdkafka::message::BorrowedMessage<'_>, batch: &mut Vec<_>| {
            let o = self.last.entry(m.partition()).or_insert(m.offset());
            *o = (*o).max(m.offset());
            match m.payload().map(serde_json::from_slice::<PushEvent>) {
                Some(Ok(event)) => batch.push(ShardEvent {
                    shard: m.partition(),
                    event,
                }),
                _ => tracing::error!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "push: skipping an undecodable record"
                ),
            }
        };
        loop {
            match self.consumer.recv().await {
                Ok(m) => {
                    take(&m, &mut batch);
                    break;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "push: Kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        while batch.len() < 512 {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => take(&m, &mut batch),
                _ => break,
            }
        }
        Some(batch)
    }

    fn committed(&mut self) {
        for (p, o) in self.last.drain() {
            if let Err(e) = self.consumer.store_offset(&self.topic, p, o) {
                tracing::debug!(cause = %e, partition = p, "push: offset not stored (revoked)");
            }
        }
    }

    async fn drain(&mut self) -> Vec<ShardEvent> {
        // Nothing to rescue: what was not stored is consumed again by the next owner.
        if let Err(e) = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            tracing::debug!(cause = %e, "push: final offset commit");
        }
        Vec::new()
    }

    fn shards(&self) -> Vec<i32> {
        self.owned.lock().iter().copied().collect()
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(250)
    }
}
