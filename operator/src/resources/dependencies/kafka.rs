//! Managed Kafka: KRaft, every pod both broker and controller, the official `apache/kafka`
//! image configured through its `KAFKA_*` environment.

use super::DATA_VOLUME;
use crate::crd::{ChatCluster, Dependency, ManagedSpec};
use crate::resources::config::{KAFKA_CONTROLLER_PORT, KAFKA_PORT, dependency_pod_host};
use crate::resources::env::{field_env, plain_env};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe, TCPSocketAction, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

pub const DEFAULT_IMAGE: &str = "apache/kafka:4.1.1";
/// The image's `appuser` (uid and gid 1000 in `apache/kafka`); its `USER` is a name, so the
/// pod sets the number for the kubelet's `runAsNonRoot` check.
pub const UID: i64 = 1000;
pub const GID: i64 = 1000;

/// A KRaft cluster id (22 characters of URL-safe base64 of 16 bytes) derived from the
/// ChatCluster's uid, so it is stable across reconciles and unique per cluster.
pub fn kraft_cluster_id(cluster: &ChatCluster) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let seed = cluster.uid().unwrap_or_else(|| cluster.name_any());
    let d = Sha256::digest(seed.as_bytes());
    (0..22)
        .map(|i| ALPHABET[(d[i] & 63) as usize] as char)
        .collect()
}

pub fn container(cluster: &ChatCluster, m: &ManagedSpec) -> (Container, Vec<(&'static str, i32)>) {
    let headless = format!(
        "{}.{}.svc",
        cluster.dependency_headless_name(Dependency::Kafka),
        cluster.namespace().unwrap_or_default()
    );
    let voters = (0..m.replicas)
        .map(|i| {
            format!(
                "{i}@{}:{KAFKA_CONTROLLER_PORT}",
                dependency_pod_host(cluster, Dependency::Kafka, i)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let internal_rf = m.replicas.min(3).to_string();
    let env = vec![
        field_env("POD_NAME", "metadata.name"),
        plain_env("CLUSTER_ID", kraft_cluster_id(cluster)),
        plain_env("KAFKA_PROCESS_ROLES", "broker,controller"),
        plain_env(
            "KAFKA_LISTENERS",
            format!("PLAINTEXT://:{KAFKA_PORT},CONTROLLER://:{KAFKA_CONTROLLER_PORT}"),
        ),
        plain_env(
            "KAFKA_ADVERTISED_LISTENERS",
            format!("PLAINTEXT://$(POD_NAME).{headless}:{KAFKA_PORT}"),
        ),
        plain_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER"),
        plain_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ),
        plain_env("KAFKA_CONTROLLER_QUORUM_VOTERS", voters),
        plain_env("KAFKA_LOG_DIRS", "/var/lib/kafka/data/logs"),
        plain_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false"),
        plain_env(
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            internal_rf.clone(),
        ),
        plain_env(
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            internal_rf,
        ),
        plain_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
        plain_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
    ];
    let c = Container {
        name: "kafka".into(),
        image: Some(m.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        // The node id is the pod ordinal (`<name>-kafka-<n>`).
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "export KAFKA_NODE_ID=\"${POD_NAME##*-}\"; exec /etc/kafka/docker/run".into(),
        ]),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("kafka".into()),
                container_port: KAFKA_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("controller".into()),
                container_port: KAFKA_CONTROLLER_PORT,
                ..Default::default()
            },
        ]),
        // A TCP check of the client listener: Kafka opens its acceptors only at the end of
        // broker start-up. (An exec probe running kafka-broker-api-versions.sh starts a JVM
        // every period; on a busy 2-core node those piled up past their timeout and flipped
        // readiness of a healthy broker.)
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(KAFKA_PORT),
                ..Default::default()
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: m.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/var/lib/kafka/data".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    (
        c,
        vec![("kafka", KAFKA_PORT), ("controller", KAFKA_CONTROLLER_PORT)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn kraft_quorum_lists_every_pod() {
        let c = testing::cluster(serde_json::json!({
            "image": "i", "kafka": {"managed": {"replicas": 3}}, "scylla": {"managed": {}}, "redis": {"managed": {}}
        }));
        let (ctr, ports) = container(&c, c.spec.kafka.managed.as_ref().unwrap());
        let env = ctr.env.unwrap();
        let get = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .unwrap()
                .value
                .clone()
                .unwrap()
        };
        assert_eq!(
            get("KAFKA_CONTROLLER_QUORUM_VOTERS"),
            "0@chat-kafka-0.chat-kafka-headless.ns.svc:9093,1@chat-kafka-1.chat-kafka-headless.ns.svc:9093,2@chat-kafka-2.chat-kafka-headless.ns.svc:9093"
        );
        assert_eq!(get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"), "3");
        assert_eq!(get("CLUSTER_ID").len(), 22);
        assert_eq!(get("CLUSTER_ID"), kraft_cluster_id(&c));
        assert_eq!(ctr.image.as_deref(), Some(DEFAULT_IMAGE));
        assert_eq!(ports.len(), 2);
    }
}
