//! Managed Apache Cassandra (`spec.scylla.managed.engine: cassandra`): a StatefulSet of the
//! official `cassandra` image with pod 0 as the seed, configured only through the image's
//! documented environment (its `docker-entrypoint.sh` writes `cassandra.yaml` and
//! `cassandra-rackdc.properties` from `CASSANDRA_*`; `cassandra-env.sh` reads
//! `MAX_HEAP_SIZE`/`HEAP_NEWSIZE`). The entrypoint and command of the image are kept.

use super::{DATA_VOLUME, quantity_value};
use crate::crd::{ChatCluster, Dependency, ManagedSpec};
use crate::resources::config::{CQL_PORT, dependency_pod_host};
use crate::resources::env::{field_env, plain_env};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe, TCPSocketAction, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

pub const DEFAULT_IMAGE: &str = "cassandra:5.0.6";
/// Inter-node (gossip/streaming) port.
pub const INTRA_PORT: i32 = 7000;
/// The official image's `cassandra` user and group (uid = gid = 999). Started as root its
/// entrypoint chowns the data directory and drops to it; the operator starts it as this user
/// directly (`runAsUser`), so the entrypoint skips that step and the pod's `fsGroup` makes
/// fresh volumes writable.
pub const CASSANDRA_UID: i64 = 999;
/// Datacenter and rack of every managed node (also ScyllaDB's default datacenter name, so
/// `datacenterReplication: {datacenter1: N}` means the same with either engine).
pub const DATACENTER: &str = "datacenter1";
pub const RACK: &str = "rack1";
/// Heap when no memory limit (or request) is given: enough for a development node.
pub const DEFAULT_HEAP: (&str, &str) = ("768M", "200M");
/// A JVM start, commit log replay and gossip settling take 30–90 s on a small node: the
/// startup probe allows this long before the kubelet restarts the container.
pub const STARTUP_SECONDS: i32 = 600;
/// Seconds Cassandra gets on SIGTERM (flushing memtables) before it is killed.
pub const TERMINATION_GRACE_SECONDS: i64 = 120;

/// `MAX_HEAP_SIZE` and `HEAP_NEWSIZE` (e.g. `1024M`, `256M`): half of the memory limit (or
/// the request when there is no limit), between 256M and 8G, new generation a quarter of the
/// heap; [`DEFAULT_HEAP`] without either.
pub fn heap_sizes(m: &ManagedSpec) -> (String, String) {
    let mem = m.resources.as_ref().and_then(|r| {
        let pick = |l: &Option<std::collections::BTreeMap<String, Quantity>>| {
            l.as_ref()?.get("memory").and_then(quantity_value)
        };
        pick(&r.limits).or_else(|| pick(&r.requests))
    });
    match mem {
        None => (DEFAULT_HEAP.0.into(), DEFAULT_HEAP.1.into()),
        Some(bytes) => {
            let heap_mb = ((bytes / 2.0 / (1024.0 * 1024.0)) as i64).clamp(256, 8192);
            (format!("{heap_mb}M"), format!("{}M", heap_mb / 4))
        }
    }
}

/// Pod 0 (the seed) names itself by IP; every pod then runs the official entrypoint with its
/// default command.
pub const SEED_SELF: &str = r#"if [ "${HOSTNAME##*-}" = 0 ]; then export CASSANDRA_SEEDS="$CASSANDRA_BROADCAST_ADDRESS"; fi; exec docker-entrypoint.sh cassandra -f"#;

pub fn container(cluster: &ChatCluster, m: &ManagedSpec) -> (Container, Vec<(&'static str, i32)>) {
    let seed = dependency_pod_host(cluster, Dependency::Scylla, 0);
    let (heap, newsize) = heap_sizes(m);
    let tcp = |period: i32, failures: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(CQL_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let c = Container {
        name: "cassandra".into(),
        image: Some(m.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        // The image's entrypoint and default command, with one change for pod 0: it is the
        // seed, and names itself by its IP instead of its DNS name. After a restart with a new
        // IP the name can still resolve to the old one for a while (the DNS cache); the node
        // then did not recognise itself as the seed, tried to gossip with its old address and
        // exited ("Unable to gossip with any peers"), seen on the real node.
        command: Some(vec!["sh".into(), "-c".into(), SEED_SELF.into()]),
        env: Some(vec![
            plain_env("CASSANDRA_SEEDS", seed),
            plain_env("CASSANDRA_CLUSTER_NAME", cluster.name_any()),
            plain_env("CASSANDRA_DC", DATACENTER),
            plain_env("CASSANDRA_RACK", RACK),
            plain_env("CASSANDRA_ENDPOINT_SNITCH", "GossipingPropertyFileSnitch"),
            plain_env("CASSANDRA_NUM_TOKENS", "16"),
            field_env("CASSANDRA_LISTEN_ADDRESS", "status.podIP"),
            field_env("CASSANDRA_BROADCAST_ADDRESS", "status.podIP"),
            plain_env("CASSANDRA_RPC_ADDRESS", "0.0.0.0"),
            field_env("CASSANDRA_BROADCAST_RPC_ADDRESS", "status.podIP"),
            plain_env("MAX_HEAP_SIZE", &heap),
            plain_env("HEAP_NEWSIZE", &newsize),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("cql".into()),
                container_port: CQL_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("intra".into()),
                container_port: INTRA_PORT,
                ..Default::default()
            },
        ]),
        startup_probe: Some(tcp(5, STARTUP_SECONDS / 5)),
        readiness_probe: Some(tcp(10, 3)),
        resources: m.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/var/lib/cassandra".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    (c, vec![("cql", CQL_PORT), ("intra", INTRA_PORT)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;
    use k8s_openapi::api::core::v1::EnvVar;

    fn cassandra(extra: serde_json::Value) -> ChatCluster {
        let mut managed = serde_json::json!({"engine": "cassandra"});
        if let (Some(m), Some(e)) = (managed.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        testing::cluster(serde_json::json!({
            "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": managed},
            "redis": {"managed": {}}
        }))
    }

    fn get<'a>(ctr: &'a Container, name: &str) -> &'a EnvVar {
        ctr.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn value(ctr: &Container, name: &str) -> String {
        get(ctr, name).value.clone().unwrap()
    }

    #[test]
    fn official_image_contract() {
        let c = cassandra(serde_json::json!({}));
        let (ctr, ports) = container(&c, c.spec.scylla.managed.as_ref().unwrap());
        assert_eq!(ctr.image.as_deref(), Some("cassandra:5.0.6"));
        assert_eq!(
            ctr.command,
            Some(vec!["sh".into(), "-c".into(), SEED_SELF.to_string()]),
            "the image's entrypoint, pod 0 naming itself by IP"
        );
        assert!(ctr.args.is_none());
        assert!(SEED_SELF.ends_with("exec docker-entrypoint.sh cassandra -f"));
        assert_eq!(
            value(&ctr, "CASSANDRA_SEEDS"),
            "chat-scylla-0.chat-scylla-headless.ns.svc"
        );
        assert_eq!(value(&ctr, "CASSANDRA_CLUSTER_NAME"), "chat");
        assert_eq!(value(&ctr, "CASSANDRA_DC"), "datacenter1");
        assert_eq!(value(&ctr, "CASSANDRA_RACK"), "rack1");
        assert_eq!(
            value(&ctr, "CASSANDRA_ENDPOINT_SNITCH"),
            "GossipingPropertyFileSnitch"
        );
        assert_eq!(value(&ctr, "CASSANDRA_NUM_TOKENS"), "16");
        assert_eq!(value(&ctr, "CASSANDRA_RPC_ADDRESS"), "0.0.0.0");
        for n in [
            "CASSANDRA_LISTEN_ADDRESS",
            "CASSANDRA_BROADCAST_ADDRESS",
            "CASSANDRA_BROADCAST_RPC_ADDRESS",
        ] {
            let f = get(&ctr, n)
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap();
            assert_eq!(f.field_path, "status.podIP", "{n}");
        }
        assert_eq!(value(&ctr, "MAX_HEAP_SIZE"), "768M");
        assert_eq!(value(&ctr, "HEAP_NEWSIZE"), "200M");
        assert_eq!(
            ctr.volume_mounts.as_ref().unwrap()[0].mount_path,
            "/var/lib/cassandra"
        );
        assert_eq!(ports, [("cql", 9042), ("intra", 7000)]);
        let ready = ctr.readiness_probe.unwrap();
        assert_eq!(
            ready.tcp_socket.unwrap().port,
            IntOrString::Int(9042),
            "ready when CQL accepts"
        );
        let startup = ctr.startup_probe.unwrap();
        let budget = startup.period_seconds.unwrap() * startup.failure_threshold.unwrap();
        assert!(budget >= 300, "a slow JVM start is not killed: {budget} s");
    }

    #[test]
    fn heap_follows_the_memory_limit() {
        let c = cassandra(serde_json::json!({"resources": {"limits": {"memory": "4Gi"}}}));
        let (ctr, _) = container(&c, c.spec.scylla.managed.as_ref().unwrap());
        assert_eq!(value(&ctr, "MAX_HEAP_SIZE"), "2048M");
        assert_eq!(value(&ctr, "HEAP_NEWSIZE"), "512M");
        let heap = |mem: &str| {
            let c = cassandra(serde_json::json!({"resources": {"requests": {"memory": mem}}}));
            heap_sizes(c.spec.scylla.managed.as_ref().unwrap())
        };
        assert_eq!(heap("1500M"), ("715M".into(), "178M".into()));
        assert_eq!(heap("256Mi"), ("256M".into(), "64M".into()), "floor");
        assert_eq!(heap("64Gi"), ("8192M".into(), "2048M".into()), "cap");
    }

    #[test]
    fn quantities() {
        let b = |s: &str| quantity_value(&Quantity(s.into()));
        assert_eq!(b("2Gi"), Some(2147483648.0));
        assert_eq!(b("1.5Gi"), Some(1610612736.0));
        assert_eq!(b("512M"), Some(512e6));
        assert_eq!(b("1e9"), Some(1e9));
        assert_eq!(b("1048576"), Some(1048576.0));
        assert_eq!(b("lots"), None);
    }
}
