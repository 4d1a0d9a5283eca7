//! Desired objects as pure functions of a `ChatCluster` (plus the few facts the reconciler
//! looked up, such as a checksum or a replica count). No I/O here: the reconciler applies what
//! these return with server-side apply, and each builder has its own unit tests.
//!
//! Every object carries the recommended `app.kubernetes.io/*` labels and a controller owner
//! reference to its `ChatCluster`.

pub mod config;
pub mod dependencies;
pub mod edge;
pub mod env;
pub mod network_policy;
pub mod pdb;
pub mod pod;
pub mod role;
pub mod setup_job;

use crate::crd::ChatCluster;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// The one server-side apply field manager of the operator.
pub const FIELD_MANAGER: &str = "tern-operator";
/// Pod-template annotation with the checksum of configuration and secrets: a change rolls pods.
pub const CHECKSUM_ANNOTATION: &str = "chat.tern.dev/config-checksum";
/// Port every chat-server role listens on for clients (HTTP or, with `spec.edge.tls`, HTTPS:
/// API, WebSocket, long poll, /healthz, /readyz). Named `http` (`https` with TLS).
pub const CHAT_PORT: i32 = 8080;
/// Port of `/metrics` (and the probes, plain HTTP) on every chat-server role
/// (`CHAT_METRICS_LISTEN`), named `metrics`: never behind the client Service.
pub const METRICS_PORT: i32 = 9090;

/// The recommended labels plus the component.
pub fn labels(cluster: &ChatCluster, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster, component);
    l.insert("app.kubernetes.io/part-of".into(), "tern".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        FIELD_MANAGER.to_string(),
    );
    l
}

/// The stable subset of [`labels`] used in selectors (selectors are immutable).
pub fn selector_labels(cluster: &ChatCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "tern".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// A `LabelSelector` matching [`selector_labels`].
pub fn selector(cluster: &ChatCluster, component: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(cluster, component)),
        ..Default::default()
    }
}

/// `key=value,…` form of [`selector_labels`] (for list calls and the scale subresource).
pub fn selector_string(cluster: &ChatCluster, component: &str) -> String {
    selector_labels(cluster, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of an owned object: name, namespace, labels and the controller owner reference.
pub fn meta(cluster: &ChatCluster, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster, component)),
        owner_references: cluster.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::crd::{ChatCluster, ChatClusterSpec};

    /// A cluster as the API server would return it: namespace, uid, defaults applied.
    pub fn cluster(spec: serde_json::Value) -> ChatCluster {
        let spec: ChatClusterSpec = serde_json::from_value(spec).expect("spec");
        let mut c = ChatCluster::new("chat", spec);
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("uid-1".into());
        c.metadata.generation = Some(3);
        c
    }

    /// Everything managed, defaults elsewhere.
    pub fn dev() -> ChatCluster {
        cluster(serde_json::json!({
            "image": "tern/chat-server:1.0",
            "kafka": {"managed": {}},
            "scylla": {"managed": {}},
            "redis": {"managed": {}}
        }))
    }

    /// Everything external, with credentials.
    pub fn external() -> ChatCluster {
        cluster(serde_json::json!({
            "image": "tern/chat-server:1.0",
            "kafka": {"external": {"brokers": ["k1:9092", "k2:9092"], "credentialsSecretRef": {"name": "kafka-creds"}}, "topic": "prod.messages"},
            "scylla": {"external": {"nodes": ["s1:9042"], "credentialsSecretRef": {"name": "scylla-creds"}}, "keyspace": "chat_prod",
                       "datacenterReplication": {"dc1": 3, "dc2": 2}, "consistency": "local_quorum"},
            "redis": {"external": {"urlSecretRef": {"name": "redis", "key": "url"}}},
            "auth": {"jwtSecretRef": {"name": "jwt", "key": "hs256"}},
            "media": {"s3": {"bucket": "media", "credentialsSecretRef": {"name": "s3"}}}
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_has_owner_and_recommended_labels() {
        let c = testing::dev();
        let m = meta(&c, "chat-edge".into(), "edge");
        assert_eq!(m.namespace.as_deref(), Some("ns"));
        let owner = &m.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "ChatCluster");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        let l = m.labels.unwrap();
        assert_eq!(l["app.kubernetes.io/instance"], "chat");
        assert_eq!(l["app.kubernetes.io/component"], "edge");
        assert_eq!(l["app.kubernetes.io/managed-by"], "tern-operator");
        assert_eq!(
            selector_string(&c, "edge"),
            "app.kubernetes.io/component=edge,app.kubernetes.io/instance=chat,app.kubernetes.io/name=tern"
        );
    }
}
