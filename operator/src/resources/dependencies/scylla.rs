//! Managed ScyllaDB: a StatefulSet of `scylladb/scylla` with pod 0 as the seed. Good for
//! development and small clusters; for production fleets use external ScyllaDB (or the
//! Scylla Operator) and `spec.scylla.external`.

use super::DATA_VOLUME;
use crate::crd::{ChatCluster, Dependency, ManagedSpec};
use crate::resources::config::{CQL_PORT, dependency_pod_host};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe, TCPSocketAction, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const DEFAULT_IMAGE: &str = "scylladb/scylla:2025.1";

pub fn container(cluster: &ChatCluster, m: &ManagedSpec) -> (Container, Vec<(&'static str, i32)>) {
    let seed = dependency_pod_host(cluster, Dependency::Scylla, 0);
    let c = Container {
        name: "scylla".into(),
        image: Some(m.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        args: Some(vec![
            format!("--seeds={seed}"),
            "--smp=1".into(),
            "--overprovisioned=1".into(),
            "--developer-mode=1".into(),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("cql".into()),
                container_port: CQL_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("intra".into()),
                container_port: 7000,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(CQL_PORT),
                ..Default::default()
            }),
            period_seconds: Some(10),
            ..Default::default()
        }),
        resources: m.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/var/lib/scylla".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    (c, vec![("cql", CQL_PORT), ("intra", 7000)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn pod_zero_is_the_seed() {
        let c = testing::dev();
        let (ctr, _) = container(&c, c.spec.scylla.managed.as_ref().unwrap());
        assert_eq!(
            ctr.args.unwrap()[0],
            "--seeds=chat-scylla-0.chat-scylla-headless.ns.svc"
        );
    }
}
