//! NetworkPolicies of a cluster (`spec.networkPolicy.enabled`), two objects with one purpose
//! each (NetworkPolicies add up):
//!
//! - `<name>-pods` selects every pod of the cluster (chat-server roles, setup Job, managed
//!   Kafka/CQL/Redis) and allows ingress from the cluster's own pods on any port (roles to
//!   their dependencies, Kafka and Cassandra among themselves, the setup Job) and, on the
//!   metrics port only, from the operator's namespace and the namespaces of
//!   `metricsNamespaceSelector` (Prometheus).
//! - `<name>-edge-clients` selects the edge pods and opens their client port to everyone.
//!
//! Egress is not restricted. A node's kubelet probes are host traffic, which common network
//! plugins (Calico, Cilium) let through whatever the policy says.

use super::{CHAT_PORT, METRICS_PORT, meta, selector_labels};
use crate::crd::ChatCluster;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Label every namespace carries with its own name (Kubernetes ≥ 1.22).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Every pod of this cluster: the selector labels without the component.
fn cluster_pods(cluster: &ChatCluster) -> LabelSelector {
    let mut labels = selector_labels(cluster, "");
    labels.remove("app.kubernetes.io/component");
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// `<name>-pods`: the cluster's pods reach each other; the metrics port is for the operator's
/// namespace (and `metricsNamespaceSelector`).
pub fn pods_policy(cluster: &ChatCluster, operator_namespace: &str) -> NetworkPolicy {
    let mut metrics_from = vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                operator_namespace.to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if let Some(sel) = &cluster.spec.network_policy.metrics_namespace_selector {
        metrics_from.push(NetworkPolicyPeer {
            namespace_selector: Some(sel.clone()),
            ..Default::default()
        });
    }
    NetworkPolicy {
        metadata: meta(cluster, cluster.pods_policy_name(), "network-policy"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(cluster_pods(cluster)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(cluster_pods(cluster)),
                        ..Default::default()
                    }]),
                    ports: None,
                },
                NetworkPolicyIngressRule {
                    from: Some(metrics_from),
                    ports: Some(vec![tcp(METRICS_PORT)]),
                },
            ]),
            ..Default::default()
        }),
    }
}

/// `<name>-edge-clients`: the edge client port, open to every source.
pub fn edge_clients_policy(cluster: &ChatCluster) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(
            cluster,
            cluster.edge_clients_policy_name(),
            "network-policy",
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cluster, "edge")),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![tcp(CHAT_PORT)]),
            }]),
            ..Default::default()
        }),
    }
}

/// The policies `spec.networkPolicy` asks for: both when enabled, none otherwise.
pub fn policies(cluster: &ChatCluster, operator_namespace: &str) -> Vec<NetworkPolicy> {
    if cluster.spec.network_policy.enabled {
        vec![
            pods_policy(cluster, operator_namespace),
            edge_clients_policy(cluster),
        ]
    } else {
        Vec::new()
    }
}

/// Names of every policy this module can create (to delete them when turned off).
pub fn names(cluster: &ChatCluster) -> [String; 2] {
    [
        cluster.pods_policy_name(),
        cluster.edge_clients_policy_name(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    fn enabled(extra: serde_json::Value) -> ChatCluster {
        let mut np = serde_json::json!({"enabled": true});
        if let serde_json::Value::Object(m) = extra {
            np.as_object_mut().unwrap().extend(m);
        }
        testing::cluster(serde_json::json!({
            "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "networkPolicy": np
        }))
    }

    #[test]
    fn off_by_default() {
        let c = testing::dev();
        assert!(!c.spec.network_policy.enabled);
        assert!(policies(&c, "tern-system").is_empty());
        assert_eq!(names(&c), ["chat-pods", "chat-edge-clients"]);
    }

    #[test]
    fn metrics_only_from_the_operator_and_prometheus_namespaces() {
        let c = enabled(serde_json::json!({
            "metricsNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
        }));
        let all = policies(&c, "tern-system");
        assert_eq!(all.len(), 2);
        let p = &all[0];
        assert_eq!(p.metadata.name.as_deref(), Some("chat-pods"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            p.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        let sel = spec
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .clone()
            .unwrap();
        assert_eq!(
            sel,
            BTreeMap::from([
                ("app.kubernetes.io/instance".to_string(), "chat".to_string()),
                ("app.kubernetes.io/name".to_string(), "tern".to_string()),
            ])
        );
        let rules = spec.ingress.as_ref().unwrap();
        assert_eq!(rules.len(), 2);
        // The cluster's own pods, every port.
        assert!(rules[0].ports.is_none());
        let peers = rules[0].from.as_ref().unwrap();
        assert_eq!(peers.len(), 1);
        assert!(peers[0].namespace_selector.is_none(), "same namespace only");
        assert_eq!(
            peers[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref(),
            Some(&sel)
        );
        // The metrics port, from the operator's and the monitoring namespace.
        let ports = rules[1].ports.as_ref().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(IntOrString::Int(9090)));
        let ns: Vec<_> = rules[1]
            .from
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| {
                assert!(p.pod_selector.is_none());
                p.namespace_selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .clone()
                    .unwrap()[NAMESPACE_NAME_LABEL]
                    .clone()
            })
            .collect();
        assert_eq!(ns, ["tern-system", "monitoring"]);
    }

    #[test]
    fn edge_client_port_is_open_to_everyone() {
        let c = enabled(serde_json::json!({}));
        let p = &policies(&c, "ops")[1];
        assert_eq!(p.metadata.name.as_deref(), Some("chat-edge-clients"));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            spec.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/component"],
            "edge"
        );
        let rules = spec.ingress.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].from.is_none(), "any source");
        let ports = rules[0].ports.as_ref().unwrap();
        assert_eq!(ports.len(), 1, "the client port and nothing else");
        assert_eq!(ports[0].port, Some(IntOrString::Int(8080)));
        // Without a Prometheus selector only the operator's namespace reads metrics.
        let pods = &policies(&c, "ops")[0];
        let rules = pods.spec.as_ref().unwrap().ingress.as_ref().unwrap();
        assert_eq!(rules[1].from.as_ref().unwrap().len(), 1);
    }
}
