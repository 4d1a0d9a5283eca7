//! The operator's own Prometheus metrics and its small HTTP server (`/metrics`, `/healthz`,
//! `/readyz`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    pub direction: &'static str,
}

/// Everything the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub leader: Gauge,
    pub edge_connections: Family<ClusterLabels, Gauge>,
    pub edge_desired: Family<ClusterLabels, Gauge>,
    pub scale_events: Family<ScaleLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tern_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let edge_connections = Family::<ClusterLabels, Gauge>::default();
        let edge_desired = Family::<ClusterLabels, Gauge>::default();
        let scale_events = Family::<ScaleLabels, Counter>::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconciliation",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "edge_connections",
            "Client connections over all edge pods at the last scrape",
            edge_connections.clone(),
        );
        registry.register(
            "edge_desired_replicas",
            "Edge replicas the operator wants",
            edge_desired.clone(),
        );
        registry.register(
            "edge_scale",
            "Autoscaler replica changes",
            scale_events.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            edge_connections,
            edge_desired,
            scale_events,
        }
    }
}

impl Metrics {
    pub fn observe(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix() {
        let m = Metrics::default();
        m.observe(Duration::from_millis(20));
        m.errors.get_or_create(&ErrorLabels { error: "api" }).inc();
        let text = m.encode();
        assert!(text.contains("tern_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains("tern_operator_reconcile_errors_total{error=\"api\"} 1"),
            "{text}"
        );
    }
}
