//! Managed ScyllaDB: a StatefulSet of `scylladb/scylla` with pod 0 as the seed. Production
//! mode unless `developerMode` is set; one shard per whole core of the CPU limit. Good for
//! small clusters; for production fleets with node tuning use the Scylla Operator (or a
//! service) and `spec.scylla.external`.

use super::{DATA_VOLUME, quantity_value};
use crate::crd::{ChatCluster, Dependency, ManagedCqlSpec};
use crate::resources::config::{CQL_PORT, dependency_pod_host};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe, TCPSocketAction, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const DEFAULT_IMAGE: &str = "scylladb/scylla:2025.1";

/// CPU cores of `resources.limits.cpu`, else `resources.requests.cpu`.
fn cpu(m: &ManagedCqlSpec, limit: bool) -> Option<f64> {
    let r = m.resources.as_ref()?;
    let list = if limit { &r.limits } else { &r.requests };
    list.as_ref()?.get("cpu").and_then(quantity_value)
}

/// `--smp`: one shard per whole core the container may use (the CPU limit, else the request),
/// at least 1; 1 without either.
pub fn smp(m: &ManagedCqlSpec) -> i64 {
    cpu(m, true)
        .or_else(|| cpu(m, false))
        .map_or(1, |cores| (cores.floor() as i64).max(1))
}

/// `--overprovisioned`: `0` only when the pod asks for whole cores with request = limit (the
/// Guaranteed QoS a static CPU manager can pin); otherwise the shards share CPUs with other
/// pods and must not busy-poll.
pub fn overprovisioned(m: &ManagedCqlSpec) -> bool {
    match (cpu(m, false), cpu(m, true)) {
        (Some(req), Some(lim)) => !(req == lim && lim.fract() == 0.0 && lim >= 1.0),
        _ => true,
    }
}

pub fn container(
    cluster: &ChatCluster,
    m: &ManagedCqlSpec,
) -> (Container, Vec<(&'static str, i32)>) {
    let seed = dependency_pod_host(cluster, Dependency::Scylla, 0);
    let flag = |b: bool| if b { "1" } else { "0" };
    let c = Container {
        name: "scylla".into(),
        image: Some(m.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        args: Some(vec![
            format!("--seeds={seed}"),
            format!("--smp={}", smp(m)),
            format!("--overprovisioned={}", flag(overprovisioned(m))),
            format!("--developer-mode={}", flag(m.developer_mode)),
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

    fn args(managed: serde_json::Value) -> Vec<String> {
        let c = testing::cluster(serde_json::json!({
            "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": managed},
            "redis": {"managed": {}}
        }));
        let (ctr, _) = container(&c, c.spec.scylla.managed.as_ref().unwrap());
        ctr.args.unwrap()
    }

    #[test]
    fn pod_zero_is_the_seed() {
        let c = testing::dev();
        let (ctr, _) = container(&c, c.spec.scylla.managed.as_ref().unwrap());
        assert_eq!(
            ctr.args.unwrap()[0],
            "--seeds=chat-scylla-0.chat-scylla-headless.ns.svc"
        );
    }

    #[test]
    fn production_mode_unless_developer_mode_is_asked_for() {
        let a = args(serde_json::json!({}));
        assert_eq!(
            a[1..],
            ["--smp=1", "--overprovisioned=1", "--developer-mode=0"]
        );
        let a = args(serde_json::json!({"developerMode": true}));
        assert_eq!(a[3], "--developer-mode=1");
    }

    #[test]
    fn shards_follow_the_cpu_limit() {
        let res = |r: serde_json::Value| args(serde_json::json!({"resources": r}));
        // The production example: 4 whole cores, request = limit.
        let a = res(serde_json::json!({"requests": {"cpu": "4"}, "limits": {"cpu": "4"}}));
        assert_eq!(a[1..3], ["--smp=4", "--overprovisioned=0"]);
        // A fractional limit rounds down; shared CPUs keep overprovisioned.
        let a = res(serde_json::json!({"requests": {"cpu": "1"}, "limits": {"cpu": "2500m"}}));
        assert_eq!(a[1..3], ["--smp=2", "--overprovisioned=1"]);
        // Only a request: its cores, overprovisioned.
        let a = res(serde_json::json!({"requests": {"cpu": "3"}}));
        assert_eq!(a[1..3], ["--smp=3", "--overprovisioned=1"]);
        // Less than a core is still one shard.
        let a = res(serde_json::json!({"requests": {"cpu": "500m"}, "limits": {"cpu": "500m"}}));
        assert_eq!(a[1..3], ["--smp=1", "--overprovisioned=1"]);
    }
}
