//! Prometheus metrics (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Live WebSocket connections and long-poll sessions on this node.
    pub connections: Gauge,
    pub connections_opened: Family<TransportLabel, Counter>,
    pub messages_stored: Counter,
    pub messages_duplicate: Counter,
    pub deliveries: Counter,
    pub errors: Family<CodeLabel, Counter>,
    pub slow_consumers: Counter,
    pub receipts_flushed: Counter,
    /// Kafka send producers replaced by the edge's watchdog (stuck or fatal).
    pub producer_restarts: Counter,
    /// From the server receiving a send to the message being queued on each recipient socket.
    pub delivery_latency: Histogram,
    /// From receiving a send to the durable ack.
    pub ack_latency: Histogram,
    pub store_batch: Histogram,
    /// Distributed mode: time spent per stage of the message path (where the time goes).
    pub stages: Family<StageLabel, Histogram>,
    /// Push notifications (`chat_push_*`).
    pub push: crate::push::metrics::PushMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        let connections_opened = Family::<TransportLabel, Counter>::default();
        let messages_stored = Counter::default();
        let messages_duplicate = Counter::default();
        let deliveries = Counter::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let slow_consumers = Counter::default();
        let receipts_flushed = Counter::default();
        let producer_restarts = Counter::default();
        let buckets = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let delivery_latency = Histogram::new(buckets);
        let ack_latency = Histogram::new(buckets);
        let store_batch =
            Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]);
        let stages = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ])
        });
        registry.register(
            "chat_stage_seconds",
            "Distributed message path, per stage: produce (edge → Kafka ack), consume_lag \
             (accepted → consumed), append (store), cache, routes, publish",
            stages.clone(),
        );
        registry.register(
            "chat_connections",
            "Live WebSocket connections and long-poll sessions",
            connections.clone(),
        );
        registry.register(
            "chat_connections_opened",
            "Connections opened, by transport",
            connections_opened.clone(),
        );
        registry.register(
            "chat_messages_stored",
            "Messages durably stored",
            messages_stored.clone(),
        );
        registry.register(
            "chat_messages_duplicate",
            "Idempotent re-sends answered with the original ack",
            messages_duplicate.clone(),
        );
        registry.register(
            "chat_deliveries",
            "Message frames queued to recipient connections",
            deliveries.clone(),
        );
        registry.register(
            "chat_errors",
            "Error answers, by protocol code",
            errors.clone(),
        );
        registry.register(
            "chat_slow_consumers",
            "Connections closed because their send queue was full",
            slow_consumers.clone(),
        );
        registry.register(
            "chat_receipts_flushed",
            "Receipt marks that advanced and were written",
            receipts_flushed.clone(),
        );
        registry.register(
            "chat_kafka_producer_restarts",
            "Kafka send producers the edge replaced because they were stuck (no produce \
             succeeded while the brokers answered) or reported a fatal error",
            producer_restarts.clone(),
        );
        registry.register(
            "chat_delivery_latency_seconds",
            "Send received to message queued for each recipient",
            delivery_latency.clone(),
        );
        registry.register(
            "chat_ack_latency_seconds",
            "Send received to durable ack",
            ack_latency.clone(),
        );
        registry.register(
            "chat_store_batch_messages",
            "Messages per group commit",
            store_batch.clone(),
        );
        let push = crate::push::metrics::PushMetrics::register(&mut registry);
        Metrics {
            registry,
            connections,
            connections_opened,
            messages_stored,
            messages_duplicate,
            deliveries,
            errors,
            slow_consumers,
            receipts_flushed,
            producer_restarts,
            delivery_latency,
            ack_latency,
            store_batch,
            stages,
            push,
        }
    }

    /// Record `seconds` spent in a stage of the distributed message path.
    pub fn stage(&self, stage: &'static str, seconds: f64) {
        self.stages
            .get_or_create(&StageLabel { stage })
            .observe(seconds);
    }

    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encode metrics");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
