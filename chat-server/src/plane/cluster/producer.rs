//! The edge side of the message log: accepted sends are produced to `<cluster>.messages`,
//! keyed by `chat_id` (a chat's messages share a partition and keep their order), and each
//! waits here, by correlation id, for the sequencer's answer (or a produce failure, or the
//! ack timeout).

use super::kafka::producer_config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{Ack, now_ms};
use crate::plane::wire::{self, SendRecord};
use crate::plane::{ReplyTo, Submission};
use parking_lot::Mutex;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A send waiting for the sequencer's answer.
struct Pending {
    reply: ReplyTo,
    client_msg_id: Option<String>,
    since: Instant,
}

/// Produces sends and matches answers to waiting replies.
pub struct SendProducer {
    producer: FutureProducer,
    topic: String,
    node: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Where each produce's completion is awaited (the process's task tracker).
    tasks: TaskTracker,
}

impl SendProducer {
    pub fn new(
        brokers: &str,
        topic: String,
        node: String,
        timeout: Duration,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer = producer_config(brokers)
            .create()
            .map_err(|e| anyhow::anyhow!("Kafka producer for {brokers}: {e}"))?;
        Ok(SendProducer {
            producer,
            topic,
            node,
            // Unique across restarts of this node id: answers meant for a previous run are
            // ignored instead of reaching the wrong waiter.
            next: AtomicU64::new((now_ms() as u64) << 16),
            pending: Mutex::new(HashMap::new()),
            timeout,
            metrics,
            tasks,
        })
    }

    /// Produce the send; its answer comes back through [`answer`](Self::answer). Records of
    /// one edge are queued in call order, so one connection's sends keep their order.
    pub fn submit(self: &Arc<Self>, s: Submission) -> Result<()> {
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
        match sent {
            Err((e, _)) => self.not_taken(corr, e.to_string()),
            Ok(delivery) => {
                let me = self.clone();
                let t = Instant::now();
                self.tasks.spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => me.metrics.stage("produce", t.elapsed().as_secs_f64()),
                        Ok(Err((e, _))) => me.not_taken(corr, e.to_string()),
                        Err(_) => me.not_taken(corr, "producer closed".into()),
                    }
                });
            }
        }
        Ok(())
    }

    /// Kafka refused or lost the record: the send fails with `unavailable`.
    fn not_taken(&self, corr: u64, why: String) {
        tracing::warn!(cause = %why, "send not accepted by Kafka");
        self.answer(
            corr,
            Err(Error::Unavailable(
                "the message log is unreachable; the message was not sent. Retry (with the \
                 same client_msg_id)"
                    .into(),
            )),
        );
    }

    /// Deliver the answer for `corr` (from the sequencer, a produce failure or the timeout
    /// sweep). Unknown ids (answered already, or of an earlier run) are ignored.
    pub fn answer(&self, corr: u64, result: Result<Ack>) {
        let Some(p) = self.pending.lock().remove(&corr) else {
            return;
        };
        if result.is_ok() {
            self.metrics
                .ack_latency
                .observe(p.since.elapsed().as_secs_f64());
        }
        p.reply
            .answer(&self.metrics, result, p.client_msg_id.as_deref());
    }

    /// The edge has just subscribed again after losing its subscription (Redis died or failed
    /// over): answers published meanwhile are gone, so answer the sends accepted before `lost`
    /// with `unavailable` now instead of at the ack timeout. The client resends with the same
    /// `client_msg_id` and gets the original ack if the message was stored; an answer still on
    /// its way is ignored.
    pub fn fail_accepted_before(&self, lost: Instant) -> usize {
        let stale: Vec<u64> = self
            .pending
            .lock()
            .iter()
            .filter(|(_, p)| p.since < lost)
            .map(|(c, _)| *c)
            .collect();
        for corr in &stale {
            self.answer(
                *corr,
                Err(Error::Unavailable(
                    "the confirmation of this message may have been lost (Redis failed over); \
                     resend it with the same client_msg_id (it will not be duplicated)"
                        .into(),
                )),
            );
        }
        stale.len()
    }

    /// Answer sends that waited longer than the ack timeout with `unavailable`.
    fn expire(&self) {
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
                corr,
                Err(Error::Unavailable(format!(
                    "the message was not confirmed within {} ms; resend it with the same \
                     client_msg_id (it will not be duplicated)",
                    self.timeout.as_millis()
                ))),
            );
        }
    }

    /// Answer sends whose confirmation did not come in time, until `stop`; then wait
    /// (bounded) for queued records to reach Kafka and answer what is left.
    pub async fn expire_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => self.expire(),
                _ = stop.cancelled() => {
                    if let Err(e) = self.producer.flush(Duration::from_secs(5)) {
                        tracing::warn!(cause = %e, "Kafka producer flush on shutdown");
                    }
                    self.expire();
                    return;
                }
            }
        }
    }
}
