//! The edge Services: the client-facing one (the client port only: never `/metrics`) and a
//! headless one (a DNS record per pod, with the metrics port for Prometheus).

use super::pod::client_port_name;
use super::{CHAT_PORT, METRICS_PORT, meta, selector_labels};
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
    let port = client_port_name(cluster, Some("edge"));
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(cluster, "edge")),
            ports: Some(vec![ServicePort {
                name: Some(port.into()),
                port: svc.port,
                target_port: Some(IntOrString::String(port.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some(port.into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The headless Service: pods are listed even before they are ready (for scraping), with the
/// client port and the metrics port (what a Prometheus ServiceMonitor selects).
pub fn headless_service(cluster: &ChatCluster) -> Service {
    let port = client_port_name(cluster, Some("edge"));
    Service {
        metadata: meta(cluster, cluster.edge_headless_name(), "edge"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster, "edge")),
            ports: Some(vec![
                ServicePort {
                    name: Some(port.into()),
                    port: CHAT_PORT,
                    target_port: Some(IntOrString::String(port.into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::String("metrics".into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The in-cluster WebSocket URL written to `status.endpoint`: `wss://` with `spec.edge.tls`.
pub fn websocket_endpoint(cluster: &ChatCluster) -> String {
    let port = cluster.spec.edge.service.port;
    let host = format!(
        "{}.{}.svc",
        cluster.edge_service_name(),
        cluster.namespace().unwrap_or_else(|| "default".into())
    );
    let (scheme, default_port) = if cluster.spec.edge.tls.is_some() {
        ("wss", 443)
    } else {
        ("ws", 80)
    };
    if port == default_port {
        format!("{scheme}://{host}/ws")
    } else {
        format!("{scheme}://{host}:{port}/ws")
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
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1, "only the client port: {ports:?}");
        assert_eq!(ports[0].port, 443);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
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

    /// `spec.edge.tls`: the Service port is `https` (no metrics port) and the endpoint `wss://`.
    #[test]
    fn tls_edge_service_and_endpoint() {
        let tls = |port: i32| {
            testing::cluster(serde_json::json!({
                "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
                "edge": {"service": {"type": "LoadBalancer", "port": port}, "tls": {"secretName": "t"}}
            }))
        };
        let c = tls(443);
        let ports = service(&c).spec.unwrap().ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.as_deref(), Some("https"));
        assert_eq!(ports[0].app_protocol.as_deref(), Some("https"));
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("https".into()))
        );
        assert_eq!(websocket_endpoint(&c), "wss://chat-edge.ns.svc/ws");
        assert_eq!(
            websocket_endpoint(&tls(8443)),
            "wss://chat-edge.ns.svc:8443/ws"
        );
        let headless = headless_service(&c).spec.unwrap().ports.unwrap();
        assert_eq!(headless[0].name.as_deref(), Some("https"));
    }

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let s = headless_service(&testing::dev());
        assert_eq!(s.metadata.name.as_deref(), Some("chat-edge-headless"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [("http".to_string(), 8080), ("metrics".to_string(), 9090)]
        );
    }
}
