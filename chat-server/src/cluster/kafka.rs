//! Kafka: the message log. Edges produce accepted sends to `<cluster>.messages`, keyed by
//! `chat_id` (so a chat's messages share a partition and keep their order); the delivery
//! role consumes it in a consumer group. Producer: idempotent, `acks=all`.

use super::wire::{self, SendRecord};
use crate::delivery::{ReplyTo, Submission};
use crate::error::{Error, Result};
use crate::model::now_ms;
use crate::state::AppState;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long librdkafka keeps trying to deliver a record before the send fails (a Kafka
/// outage longer than this turns into `unavailable` errors, never into silent loss).
const MESSAGE_TIMEOUT_MS: &str = "5000";

static SECURITY: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();

/// Set the security settings (SASL) every Kafka client of this process uses; once, at start.
pub fn configure_security(settings: Vec<(&'static str, String)>) {
    let _ = SECURITY.set(settings);
}

/// A client configuration for `brokers` with the process's security settings.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in SECURITY.get().map(Vec::as_slice).unwrap_or_default() {
        c.set(*k, v);
    }
    c
}

pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = client_config(brokers);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        // Nagle's algorithm holds small produce requests back (tens of ms on loopback).
        .set("socket.nagle.disable", "true")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
        .set("socket.keepalive.enable", "true");
    c
}

/// A send waiting for the delivery role's answer.
struct Pending {
    reply: ReplyTo,
    client_msg_id: Option<String>,
    since: Instant,
}

/// The edge side of the message log: produce, and match answers to waiting replies.
pub struct KafkaBus {
    producer: FutureProducer,
    topic: String,
    node: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    timeout: Duration,
}

impl KafkaBus {
    pub fn new(
        brokers: &str,
        topic: String,
        node: String,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer = producer_config(brokers)
            .create()
            .map_err(|e| anyhow::anyhow!("Kafka producer for {brokers}: {e}"))?;
        Ok(KafkaBus {
            producer,
            topic,
            node,
            // Unique across restarts of this node id: answers meant for a previous run are
            // ignored instead of reaching the wrong waiter.
            next: AtomicU64::new((now_ms() as u64) << 16),
            pending: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Produce the send; its answer comes back through [`answer`](Self::answer). Records of
    /// one edge are queued in call order, so one connection's sends keep their order.
    pub fn submit(self: &Arc<Self>, state: &Arc<AppState>, s: Submission) -> Result<()> {
        let corr = self.next.fetch_add(1, Ordering::Relaxed);
        let m = s.message;
        let record = SendRecord {
            v: wire::VERSION,
            node: self.node.clone(),
            corr,
            conn: s.origin,
            accepted_ms: now_ms(),
            message_id: m
                .message_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            chat_id: m.chat_id,
            sender_id: m.sender_id,
            content: m.content,
            media_url: m.media_url,
            media: m.media,
            client_msg_id: m.client_msg_id,
        };
        let payload = serde_json::to_vec(&record).map_err(Error::internal)?;
        let key = record.chat_id.to_string();
        self.pending.lock().insert(
            corr,
            Pending {
                reply: s.reply,
                client_msg_id: record.client_msg_id.clone(),
                since: s.received,
            },
        );
        let sent = self
            .producer
            .send_result(FutureRecord::to(&self.topic).key(&key).payload(&payload));
        let failed = move |bus: &Arc<KafkaBus>, state: &AppState, why: String| {
            tracing::warn!(cause = %why, "send not accepted by Kafka");
            bus.answer(
                state,
                corr,
                Err(Error::Unavailable(
                    "the message log is unreachable; the message was not sent. Retry (with the \
                     same client_msg_id)"
                        .into(),
                )),
            );
        };
        match sent {
            Err((e, _)) => {
                failed(self, state, e.to_string());
                Ok(())
            }
            Ok(delivery) => {
                let (bus, st) = (self.clone(), state.clone());
                let t = Instant::now();
                state.tasks.spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => st.metrics.stage("produce", t.elapsed().as_secs_f64()),
                        Ok(Err((e, _))) => failed(&bus, &st, e.to_string()),
                        Err(_) => failed(&bus, &st, "producer closed".into()),
                    }
                });
                Ok(())
            }
        }
    }

    /// Deliver the answer for `corr` (from the delivery role, a produce failure or the
    /// timeout sweep). Unknown ids (answered already, or of an earlier run) are ignored.
    pub fn answer(&self, state: &AppState, corr: u64, result: Result<crate::model::Ack>) {
        let Some(p) = self.pending.lock().remove(&corr) else {
            return;
        };
        if result.is_ok() {
            state
                .metrics
                .ack_latency
                .observe(p.since.elapsed().as_secs_f64());
        }
        p.reply.answer(state, result, p.client_msg_id.as_deref());
    }

    /// Answer sends that waited longer than the ack timeout with `unavailable`.
    pub fn expire(&self, state: &AppState) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .lock()
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) > self.timeout)
            .map(|(c, _)| *c)
            .collect();
        for corr in expired {
            self.answer(
                state,
                corr,
                Err(Error::Unavailable(format!(
                    "the message was not confirmed within {} ms; resend it with the same \
                     client_msg_id (it will not be duplicated)",
                    self.timeout.as_millis()
                ))),
            );
        }
    }

    /// Wait (bounded) for queued records to reach Kafka, on shutdown.
    pub fn flush(&self, wait: Duration) {
        if let Err(e) = self.producer.flush(wait) {
            tracing::warn!(cause = %e, "Kafka producer flush on shutdown");
        }
    }
}

/// Create the message topic, or grow its partition count to `partitions`. Idempotent.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| anyhow::anyhow!("Kafka admin client for {brokers}: {e}"))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        // Messages live in ScyllaDB; the log only needs to outlive an outage of the
        // delivery role.
        .set("retention.ms", "604800000")
        .set(
            "min.insync.replicas",
            if replication >= 3 { "2" } else { "1" },
        );
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| anyhow::anyhow!("creating topic {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, replication, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let md = admin
                    .inner()
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .map_err(|e| anyhow::anyhow!("reading metadata of {topic}: {e}"))?;
                let have = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map_or(0, |t| t.partitions().len()) as i32;
                if have < partitions {
                    let grow = NewPartitions::new(topic, partitions as usize);
                    for r in admin
                        .create_partitions([&grow], &opts)
                        .await
                        .map_err(|e| anyhow::anyhow!("adding partitions to {topic}: {e}"))?
                    {
                        r.map_err(|(_, e)| anyhow::anyhow!("adding partitions to {topic}: {e}"))?;
                    }
                    tracing::warn!(
                        topic,
                        from = have,
                        to = partitions,
                        "grew the topic; chats move to other partitions, so run this only \
                         while no messages are in flight (delivery re-reads chat state after a \
                         rebalance)"
                    );
                } else {
                    tracing::info!(topic, partitions = have, "Kafka topic exists");
                }
            }
            Err((_, e)) => anyhow::bail!("creating topic {topic}: {e}"),
        }
    }
    Ok(())
}
