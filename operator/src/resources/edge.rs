//! The edge Services: the client-facing one and a headless one (a DNS record per pod).

use super::{CHAT_PORT, meta, selector_labels};
use crate::crd::ChatCluster;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

/// The client-facing Service (`spec.edge.service`).
pub fn service(cluster: &ChatCluster) -> Service {
    let svc = &cluster.spec.edge.service;
    let mut metadata = meta(cluster, cluster.edge_service_name(), "edge");
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(cluster, "edge")),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: svc.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The headless Service: pods are listed even before they are ready (for scraping).
pub fn headless_service(cluster: &ChatCluster) -> Service {
    Service {
        metadata: meta(cluster, cluster.edge_headless_name(), "edge"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster, "edge")),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: CHAT_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The in-cluster WebSocket URL written to `status.endpoint`.
pub fn websocket_endpoint(cluster: &ChatCluster) -> String {
    let port = cluster.spec.edge.service.port;
    let host = format!(
        "{}.{}.svc",
        cluster.edge_service_name(),
        cluster.namespace().unwrap_or_else(|| "default".into())
    );
    if port == 80 {
        format!("ws://{host}/ws")
    } else {
        format!("ws://{host}:{port}/ws")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn client_service_follows_spec() {
        let c = testing::cluster(serde_json::json!({
            "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "edge": {"service": {"type": "LoadBalancer", "port": 443, "annotations": {"lb": "x"}}}
        }));
        let s = service(&c);
        assert_eq!(s.metadata.annotations.unwrap()["lb"], "x");
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.ports.unwrap()[0].port, 443);
        assert_eq!(
            spec.selector.unwrap()["app.kubernetes.io/component"],
            "edge"
        );
        assert_eq!(websocket_endpoint(&c), "ws://chat-edge.ns.svc:443/ws");
        assert_eq!(
            websocket_endpoint(&testing::dev()),
            "ws://chat-edge.ns.svc/ws"
        );
    }

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let s = headless_service(&testing::dev());
        assert_eq!(s.metadata.name.as_deref(), Some("chat-edge-headless"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
    }
}
