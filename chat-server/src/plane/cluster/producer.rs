//! The edge side of the message log: accepted sends are produced to `<cluster>.messages`,
//! keyed by `chat_id` (a chat's messages share a partition and keep their order), and each
//! waits here, by correlation id, for the sequencer's answer (or a produce failure, or the
//! ack timeout).
//!
//! A watchdog replaces the producer when it is stuck: librdkafka's producer has been seen to
//! time out every record for minutes after the broker's pod was replaced while the broker
//! answered everyone else (CI, `node_day2`, 2026-11-30: one edge of two never recovered; the
//! same is reported in confluent-kafka-go#528). When no produce succeeded for
//! [`STUCK_AFTER`], at least [`STUCK_FAILURES`] failed since, and the cluster answers a
//! metadata request from a new client (so this is not an outage, where a new producer would
//! fail too), the producer is replaced by a new one (at most once per [`RECREATE_EVERY`]); a producer that
//! reports a fatal error is replaced at once. Records still queued in the old one fail with
//! `unavailable`, and clients resend them with the same `client_msg_id` (never duplicated).

use super::kafka::producer_config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{Ack, now_ms};
use crate::plane::wire::{self, SendRecord};
use crate::plane::{ReplyTo, Submission};
use parking_lot::Mutex;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
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

/// No produce succeeded for this long (and [`STUCK_FAILURES`] failed): check the producer.
pub const STUCK_AFTER: Duration = Duration::from_secs(15);
/// Failed produces since the last success before the producer counts as stuck.
pub const STUCK_FAILURES: u32 = 3;
/// At most one replacement per this long.
pub const RECREATE_EVERY: Duration = Duration::from_secs(30);

/// Whether a record refused at once by `send_result` says something about the producer (and
/// so counts toward [`Health::suspect`]). A full local queue does: a producer that delivers
/// nothing keeps every record until `message.timeout.ms`, its queue fills, and from then on
/// every send is refused here without a delivery report — without counting these the
/// watchdog would never see it fail. Refusals about the record itself (too large, unknown
/// topic or partition) do not: a new producer would refuse them too.
pub fn refusal_counts_against_producer(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

/// What the watchdog knows about the producer's recent results.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    last_ok: Instant,
    failures: u32,
    last_recreate: Option<Instant>,
}

impl Health {
    pub fn new(now: Instant) -> Self {
        Health {
            last_ok: now,
            failures: 0,
            last_recreate: None,
        }
    }

    pub fn ok(&mut self, now: Instant) {
        self.last_ok = now;
        self.failures = 0;
    }

    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// Whether the producer should be checked (and replaced if the cluster answers): nothing
    /// succeeded for [`STUCK_AFTER`], enough failed since, and no replacement in the last
    /// [`RECREATE_EVERY`].
    pub fn suspect(&self, now: Instant) -> bool {
        self.failures >= STUCK_FAILURES
            && now.duration_since(self.last_ok) >= STUCK_AFTER
            && self
                .last_recreate
                .is_none_or(|t| now.duration_since(t) >= RECREATE_EVERY)
    }

    /// A new producer took over at `now`: its own record starts clean.
    pub fn replaced(&mut self, now: Instant) {
        self.last_recreate = Some(now);
        self.last_ok = now;
        self.failures = 0;
    }
}

/// Produces sends and matches answers to waiting replies.
pub struct SendProducer {
    /// Replaced by the watchdog when stuck; each send uses the one current when it starts.
    producer: parking_lot::RwLock<Arc<FutureProducer>>,
    brokers: String,
    health: Mutex<Health>,
    topic: String,
    node: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Where each produce's completion is awaited (the process's task tracker).
    tasks: TaskTracker,
    /// Fault injection (`--fault-stuck-producer-after-ms`, failure tests only): from this
    /// instant the first producer takes no record (each fails as timed out) until replaced.
    fault_stuck_from: Option<Instant>,
    /// Producers made so far (1 = the first).
    generation: AtomicU64,
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
            producer: parking_lot::RwLock::new(Arc::new(producer)),
            brokers: brokers.to_string(),
            health: Mutex::new(Health::new(Instant::now())),
            topic,
            node,
            // Unique across restarts of this node id: answers meant for a previous run are
            // ignored instead of reaching the wrong waiter.
            next: AtomicU64::new((now_ms() as u64) << 16),
            pending: Mutex::new(HashMap::new()),
            timeout,
            metrics,
            tasks,
            fault_stuck_from: None,
            generation: AtomicU64::new(1),
        })
    }

    /// Arm the stuck-producer fault `after` from now (see `fault_stuck_from`).
    pub fn with_fault_stuck_after(mut self, after: Option<Duration>) -> Self {
        if let Some(after) = after {
            tracing::warn!(
                ?after,
                "fault injection: the first Kafka producer gets stuck"
            );
            self.fault_stuck_from = Some(Instant::now() + after);
        }
        self
    }

    /// Whether the injected fault holds the current producer.
    fn fault_stuck(&self) -> bool {
        self.fault_stuck_from
            .is_some_and(|t| Instant::now() >= t && self.generation.load(Ordering::Relaxed) == 1)
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
        if self.fault_stuck() {
            // What a stuck producer does: hold the record until message.timeout.ms, then fail.
            let me = self.clone();
            self.tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(super::kafka::MESSAGE_TIMEOUT_MS)).await;
                me.health.lock().failed();
                me.not_taken(
                    corr,
                    "MessageTimedOut (injected fault: stuck producer)".into(),
                );
            });
            return Ok(());
        }
        let producer = self.producer.read().clone();
        let sent = producer.send_result(FutureRecord::to(&self.topic).key(&key).payload(&payload));
        match sent {
            Err((e, _)) => {
                if refusal_counts_against_producer(&e) {
                    self.health.lock().failed();
                }
                self.not_taken(corr, e.to_string())
            }
            Ok(delivery) => {
                let me = self.clone();
                let t = Instant::now();
                self.tasks.spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => {
                            me.health.lock().ok(Instant::now());
                            me.metrics.stage("produce", t.elapsed().as_secs_f64())
                        }
                        Ok(Err((e, _))) => {
                            me.health.lock().failed();
                            me.not_taken(corr, e.to_string())
                        }
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

    /// The watchdog (see the module docs): replace the producer if it reports a fatal error,
    /// or if it is [suspect](Health::suspect) while the cluster answers metadata requests.
    async fn watch(self: &Arc<Self>) {
        let now = Instant::now();
        let current = self.producer.read().clone();
        let why = if let Some((code, reason)) = current.client().fatal_error() {
            format!("fatal producer error {code:?}: {reason}")
        } else {
            let health = *self.health.lock();
            if !health.suspect(now) {
                return;
            }
            // Ask with a new client: the stuck one's connections may be the broken part.
            let (brokers, topic) = (self.brokers.clone(), self.topic.clone());
            let probe = tokio::task::spawn_blocking(move || {
                let probe: rdkafka::producer::BaseProducer =
                    super::kafka::client_config(&brokers).create()?;
                probe
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(3))
                    .map(|m| {
                        m.topics()
                            .iter()
                            .flat_map(|t| t.partitions())
                            .all(|p| p.leader() >= 0)
                    })
            })
            .await;
            match probe {
                Ok(Ok(true)) => format!(
                    "{} sends failed and none succeeded for {} s, while the brokers answer \
                     and every partition has a leader",
                    health.failures,
                    now.duration_since(health.last_ok).as_secs()
                ),
                Ok(Ok(false)) | Ok(Err(_)) | Err(_) => {
                    // An outage (or a leader election): a new producer would fail the same way.
                    tracing::debug!("Kafka produce failing and the cluster is not answering");
                    return;
                }
            }
        };
        match producer_config(&self.brokers).create::<FutureProducer>() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *self.producer.write(), Arc::new(fresh));
                self.generation.fetch_add(1, Ordering::Relaxed);
                self.health.lock().replaced(Instant::now());
                self.metrics.producer_restarts.inc();
                tracing::warn!(
                    cause = %why,
                    "Kafka producer stuck: replaced it with a new one; records still queued in \
                     the old one are answered `unavailable` and clients resend them"
                );
                // Fail what the old producer still holds now, then let it go off the runtime
                // (destroying a librdkafka handle blocks until its threads stop).
                tokio::task::spawn_blocking(move || {
                    old.purge(PurgeConfig::default().queue().inflight());
                    drop(old);
                });
            }
            Err(e) => {
                tracing::warn!(cause = %e, "Kafka producer stuck, but a new one cannot be made")
            }
        }
    }

    /// Answer sends whose confirmation did not come in time and run the watchdog, until
    /// `stop`; then wait (bounded) for queued records to reach Kafka and answer what is left.
    pub async fn expire_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    self.expire();
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(4) {
                        self.watch().await;
                    }
                }
                _ = stop.cancelled() => {
                    let producer = self.producer.read().clone();
                    if let Err(e) = producer.flush(Duration::from_secs(5)) {
                        tracing::warn!(cause = %e, "Kafka producer flush on shutdown");
                    }
                    self.expire();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspect_only_after_enough_failures_and_time_without_success() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        assert!(
            !h.suspect(t0 + STUCK_AFTER * 2),
            "no failures: never suspect"
        );
        for _ in 0..STUCK_FAILURES {
            h.failed();
        }
        assert!(
            !h.suspect(t0 + STUCK_AFTER / 2),
            "failures, but too recent a success"
        );
        assert!(h.suspect(t0 + STUCK_AFTER));
        h.ok(t0 + STUCK_AFTER);
        assert!(
            !h.suspect(t0 + STUCK_AFTER * 3),
            "a success clears the failures"
        );
    }

    #[test]
    fn a_full_queue_counts_against_the_producer_a_bad_record_does_not() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        assert!(refusal_counts_against_producer(
            &KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
        ));
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownPartition,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            assert!(
                !refusal_counts_against_producer(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn at_most_one_replacement_per_interval() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        let fail = |h: &mut Health| {
            for _ in 0..STUCK_FAILURES {
                h.failed();
            }
        };
        fail(&mut h);
        let t1 = t0 + STUCK_AFTER;
        assert!(h.suspect(t1));
        h.replaced(t1);
        assert!(!h.suspect(t1), "the new producer starts clean");
        fail(&mut h);
        assert!(
            !h.suspect(t1 + STUCK_AFTER),
            "failing again, but replaced less than RECREATE_EVERY ago"
        );
        assert!(h.suspect(t1 + RECREATE_EVERY.max(STUCK_AFTER)));
    }
}
