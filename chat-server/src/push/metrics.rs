//! Push metrics, registered in the server's registry (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailLabel {
    pub provider: &'static str,
    /// `retry` (will be tried again), `dead` (gave up: dead letter), `unregistered`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `muted`, `no_device`, `no_provider`.
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct PushMetrics {
    /// Messages written to the durable push queue (one per offline member).
    pub queued: Counter,
    /// Notifications accepted by a provider.
    pub sent: Family<ProviderLabel, Counter>,
    /// Failed attempts, by provider and outcome.
    pub failed: Family<FailLabel, Counter>,
    /// Coalesced notifications not sent, by reason.
    pub skipped: Family<ReasonLabel, Counter>,
    /// Devices removed because a provider said they are gone.
    pub devices_removed: Counter,
    /// Age of the oldest notification still to send (seconds; 0 when none).
    pub queue_age: Gauge<f64, AtomicU64>,
    /// From the first coalesced message to the provider's acceptance.
    pub latency: Histogram,
}

impl PushMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = PushMetrics {
            queued: Counter::default(),
            sent: Family::default(),
            failed: Family::default(),
            skipped: Family::default(),
            devices_removed: Counter::default(),
            queue_age: Gauge::default(),
            latency: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
            ]),
        };
        registry.register(
            "chat_push_queued",
            "Messages queued durably for a push to an offline member",
            m.queued.clone(),
        );
        registry.register(
            "chat_push_sent",
            "Notifications accepted by a push provider",
            m.sent.clone(),
        );
        registry.register(
            "chat_push_failed",
            "Failed push attempts by provider and outcome (retry, dead, unregistered)",
            m.failed.clone(),
        );
        registry.register(
            "chat_push_skipped",
            "Coalesced notifications not sent (muted chat, no device, no provider)",
            m.skipped.clone(),
        );
        registry.register(
            "chat_push_devices_removed",
            "Devices removed because the provider reported them unregistered",
            m.devices_removed.clone(),
        );
        registry.register(
            "chat_push_queue_age_seconds",
            "Age of the oldest push still to send",
            m.queue_age.clone(),
        );
        registry.register(
            "chat_push_latency_seconds",
            "First coalesced message to provider acceptance",
            m.latency.clone(),
        );
        m
    }
}
