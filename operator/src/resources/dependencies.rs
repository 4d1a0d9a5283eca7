//! Shared parts of the managed dependencies (Kafka, the CQL store, Redis): the StatefulSet
//! skeleton with a volume claim template, the client and headless Services, the
//! PodDisruptionBudget, the pod hardening (non-root user, `fsGroup`, no privilege escalation,
//! no capabilities, `RuntimeDefault` seccomp) and the spread over nodes, and the media PVC.
//! The per-dependency details are in [`kafka`], [`scylla`] / [`cassandra`] (the CQL store's
//! two engines) and [`redis`].

pub mod cassandra;
pub mod kafka;
pub mod redis;
pub mod scylla;

use super::{meta, pdb, selector, selector_labels};
use crate::crd::{ChatCluster, CqlEngine, Dependency, ManagedSpec, StorageSpec};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile,
    SecurityContext, Service, ServicePort, ServiceSpec, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Name of the data volume (claim template) in every managed StatefulSet.
pub const DATA_VOLUME: &str = "data";

/// Everything a managed dependency needs built.
pub struct Managed {
    pub statefulset: StatefulSet,
    pub service: Service,
    pub headless: Service,
    /// `maxUnavailable: 1` over the dependency's pods; `None` with a single pod (see
    /// [`disruption_budget`]).
    pub pdb: Option<PodDisruptionBudget>,
}

/// Desired objects of a managed dependency, or `None` when it is external.
pub fn managed(cluster: &ChatCluster, dep: Dependency) -> Option<Managed> {
    let m = managed_spec(cluster, dep)?;
    let (mut container, ports, pod) = match (dep, cql_engine(cluster)) {
        (Dependency::Kafka, _) => {
            let (c, p) = kafka::container(cluster, m);
            (c, p, PodSettings::non_root(kafka::UID, kafka::GID, 60))
        }
        (Dependency::Scylla, Some(CqlEngine::Cassandra)) => {
            let (c, p) = cassandra::container(cluster, m);
            let grace = cassandra::TERMINATION_GRACE_SECONDS;
            let uid = cassandra::CASSANDRA_UID;
            (c, p, PodSettings::non_root(uid, uid, grace))
        }
        (Dependency::Scylla, _) => {
            let managed = cluster.spec.scylla.managed.as_ref()?;
            let (c, p) = scylla::container(cluster, managed);
            (c, p, PodSettings::root(60))
        }
        (Dependency::Redis, _) => {
            let (c, p) = redis::container(m);
            (c, p, PodSettings::non_root(redis::UID, redis::UID, 60))
        }
    };
    container.security_context = pod.container.clone();
    Some(Managed {
        statefulset: statefulset(cluster, dep, m, container, pod),
        service: service(cluster, dep, &ports, false),
        headless: service(cluster, dep, &ports, true),
        pdb: disruption_budget(cluster, dep, m),
    })
}

/// Pod- and container-level settings that differ between dependencies.
struct PodSettings {
    security: Option<PodSecurityContext>,
    container: Option<SecurityContext>,
    termination_grace_seconds: i64,
}

impl PodSettings {
    /// The image's own non-root user (`uid`/`gid`, as in its Containerfile or Dockerfile),
    /// set explicitly so the kubelet can check `runAsNonRoot` (Kafka's `USER appuser` is a
    /// name) and the image's entrypoint skips its root-only `chown` + `gosu` step. `fsGroup`
    /// makes a fresh volume writable by that user where the volume plugin applies it.
    fn non_root(uid: i64, gid: i64, termination_grace_seconds: i64) -> Self {
        PodSettings {
            security: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(uid),
                run_as_group: Some(gid),
                fs_group: Some(gid),
                fs_group_change_policy: Some("OnRootMismatch".into()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            container: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            termination_grace_seconds,
        }
    }

    /// ScyllaDB's image must start as root (its setup scripts and supervisord; upstream
    /// scylladb/scylladb#16253), so it keeps the runtime's defaults.
    fn root(termination_grace_seconds: i64) -> Self {
        PodSettings {
            security: None,
            container: None,
            termination_grace_seconds,
        }
    }
}

/// `maxUnavailable: 1` over the pods of a managed dependency with more than one pod: a node
/// drain takes one Kafka broker/controller or one CQL node at a time, so a 3-node KRaft quorum
/// and `QUORUM` at replication factor 3 survive it. `None` for a single pod: a budget could
/// only block drains for ever (`maxUnavailable: 0`) or allow the eviction anyway
/// (`maxUnavailable: 1`), so it protects nothing; managed Redis is always one pod.
///
/// Unlike the stateless roles' budgets, not-ready pods are evicted only while the budget is
/// met (`IfHealthyBudget`): a Kafka pod whose readiness probe times out can still be a
/// controller voter, and evicting two such pods at once (seen on the e2e node with
/// `AlwaysAllow`) would take the quorum down.
pub fn disruption_budget(
    cluster: &ChatCluster,
    dep: Dependency,
    m: &ManagedSpec,
) -> Option<PodDisruptionBudget> {
    let name = cluster.dependency_name(dep);
    let mut p = pdb::pdb(cluster, name, dep.as_str(), m.replicas, 1)?;
    if let Some(spec) = p.spec.as_mut() {
        spec.unhealthy_pod_eviction_policy = Some("IfHealthyBudget".into());
    }
    Some(p)
}

/// Prefer one pod of a dependency per node (`kubernetes.io/hostname`), never require it: a
/// single node (or fewer nodes than pods) still schedules every pod.
pub fn spread_over_nodes(cluster: &ChatCluster, component: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector(cluster, component)),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Value of a Kubernetes quantity: bytes (`2Gi`, `1536Mi`, `2G`, `1.5Gi`, `2147483648`, `1e9`)
/// or cores (`2`, `1500m`). `None` for what it cannot read.
pub fn quantity_value(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    (n >= 0.0).then_some(n * mult)
}

/// `spec.<dep>.managed`.
pub fn managed_spec(cluster: &ChatCluster, dep: Dependency) -> Option<&ManagedSpec> {
    let s = &cluster.spec;
    match dep {
        Dependency::Kafka => s.kafka.managed.as_ref(),
        Dependency::Scylla => s.scylla.managed.as_ref().map(|m| &m.common),
        Dependency::Redis => s.redis.managed.as_ref(),
    }
}

/// The engine of a managed CQL store (`None`: external).
pub fn cql_engine(cluster: &ChatCluster) -> Option<CqlEngine> {
    cluster.spec.scylla.managed.as_ref().map(|m| m.engine)
}

fn pvc_spec(storage: &StorageSpec, access: &str) -> PersistentVolumeClaimSpec {
    PersistentVolumeClaimSpec {
        access_modes: Some(vec![access.into()]),
        storage_class_name: storage.storage_class_name.clone(),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(storage.size.clone()),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn statefulset(
    cluster: &ChatCluster,
    dep: Dependency,
    m: &ManagedSpec,
    container: Container,
    pod: PodSettings,
) -> StatefulSet {
    let component = dep.as_str();
    StatefulSet {
        metadata: meta(cluster, cluster.dependency_name(dep), component),
        spec: Some(StatefulSetSpec {
            replicas: Some(m.replicas),
            service_name: Some(cluster.dependency_headless_name(dep)),
            selector: selector(cluster, component),
            // Peers must find each other before any is ready (Kafka quorum, Scylla seeds).
            pod_management_policy: Some("Parallel".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(super::labels(cluster, component)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(pod.termination_grace_seconds),
                    security_context: pod.security,
                    affinity: Some(spread_over_nodes(cluster, component)),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.into()),
                    labels: Some(selector_labels(cluster, component)),
                    ..Default::default()
                },
                spec: Some(pvc_spec(&m.storage, "ReadWriteOnce")),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(
    cluster: &ChatCluster,
    dep: Dependency,
    ports: &[(&str, i32)],
    headless: bool,
) -> Service {
    let component = dep.as_str();
    let name = if headless {
        cluster.dependency_headless_name(dep)
    } else {
        cluster.dependency_name(dep)
    };
    Service {
        metadata: meta(cluster, name, component),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(selector_labels(cluster, component)),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some((*n).into()),
                        port: *p,
                        target_port: Some(IntOrString::Int(*p)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The shared media PVC (`spec.media.volume`): ReadWriteMany, since every edge pod mounts it.
pub fn media_pvc(cluster: &ChatCluster) -> Option<PersistentVolumeClaim> {
    let storage = cluster.spec.media.as_ref()?.volume.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: meta(cluster, cluster.media_pvc_name(), "media"),
        spec: Some(pvc_spec(storage, "ReadWriteMany")),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn external_dependencies_build_nothing() {
        let c = testing::external();
        for dep in Dependency::ALL {
            assert!(managed(&c, dep).is_none());
        }
        assert!(media_pvc(&c).is_none());
    }

    #[test]
    fn managed_statefulsets_have_storage_and_two_services() {
        let c = testing::dev();
        for dep in Dependency::ALL {
            let m = managed(&c, dep).unwrap();
            let ss = m.statefulset.spec.unwrap();
            assert_eq!(
                ss.service_name.as_deref(),
                Some(format!("chat-{}-headless", dep.as_str()).as_str())
            );
            let claim = &ss.volume_claim_templates.unwrap()[0];
            assert_eq!(
                claim
                    .spec
                    .as_ref()
                    .unwrap()
                    .resources
                    .as_ref()
                    .unwrap()
                    .requests
                    .as_ref()
                    .unwrap()["storage"],
                Quantity("10Gi".into())
            );
            assert_eq!(m.headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
            assert!(m.service.spec.unwrap().cluster_ip.is_none());
            assert_eq!(m.statefulset.metadata.owner_references.unwrap().len(), 1);
        }
    }

    #[test]
    fn cql_engine_picks_the_container_and_pod_settings() {
        let pod_of = |engine: Option<&str>| {
            let mut cql = serde_json::json!({"replicas": 3});
            if let Some(e) = engine {
                cql["engine"] = serde_json::json!(e);
            }
            let c = testing::cluster(serde_json::json!({
                "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": cql},
                "redis": {"managed": {}}
            }));
            let ss = managed(&c, Dependency::Scylla).unwrap().statefulset;
            let spec = ss.spec.unwrap();
            assert_eq!(spec.replicas, Some(3));
            assert_eq!(
                ss.metadata.name.as_deref(),
                Some("chat-scylla"),
                "same names with either engine"
            );
            spec.template.spec.unwrap()
        };
        let scylla = pod_of(None);
        assert_eq!(scylla.containers[0].name, "scylla");
        assert!(scylla.security_context.is_none());
        assert_eq!(scylla.termination_grace_period_seconds, Some(60));
        assert_eq!(pod_of(Some("scylla")), scylla);

        let cassandra = pod_of(Some("cassandra"));
        assert_eq!(cassandra.containers[0].name, "cassandra");
        assert_eq!(
            cassandra.security_context.as_ref().unwrap().fs_group,
            Some(999)
        );
        assert!(cassandra.termination_grace_period_seconds.unwrap() >= 120);
    }

    /// Every managed dependency in a cluster with `replicas` Kafka and CQL pods.
    fn sized(replicas: i32, engine: &str) -> ChatCluster {
        testing::cluster(serde_json::json!({
            "image": "i", "kafka": {"managed": {"replicas": replicas}},
            "scylla": {"managed": {"replicas": replicas, "engine": engine}},
            "redis": {"managed": {}}
        }))
    }

    fn pod_spec(c: &ChatCluster, dep: Dependency) -> PodSpec {
        let ss = managed(c, dep).unwrap().statefulset;
        ss.spec.unwrap().template.spec.unwrap()
    }

    #[test]
    fn non_root_pods_run_as_the_image_user_with_its_fs_group() {
        let c = sized(3, "cassandra");
        for (dep, uid) in [
            (Dependency::Kafka, 1000),
            (Dependency::Scylla, 999),
            (Dependency::Redis, 999),
        ] {
            let pod = pod_spec(&c, dep);
            let sc = pod.security_context.unwrap();
            assert_eq!(sc.run_as_non_root, Some(true), "{dep:?}");
            assert_eq!(sc.run_as_user, Some(uid), "{dep:?}");
            assert_eq!(sc.run_as_group, Some(uid), "{dep:?}");
            assert_eq!(sc.fs_group, Some(uid), "{dep:?}");
            assert_eq!(sc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
            assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
            let ctr = pod.containers[0].security_context.clone().unwrap();
            assert_eq!(ctr.allow_privilege_escalation, Some(false), "{dep:?}");
            assert_eq!(ctr.capabilities.unwrap().drop.unwrap(), ["ALL"]);
            assert!(ctr.privileged.is_none() && ctr.run_as_user.is_none());
        }
    }

    #[test]
    fn scylla_keeps_root() {
        let pod = pod_spec(&sized(3, "scylla"), Dependency::Scylla);
        assert!(pod.security_context.is_none());
        assert!(pod.containers[0].security_context.is_none());
    }

    #[test]
    fn pods_prefer_distinct_nodes_without_requiring_them() {
        let c = sized(3, "cassandra");
        for dep in Dependency::ALL {
            let aa = pod_spec(&c, dep)
                .affinity
                .unwrap()
                .pod_anti_affinity
                .unwrap();
            assert!(
                aa.required_during_scheduling_ignored_during_execution
                    .is_none(),
                "a single node must still schedule every pod"
            );
            let pref = aa
                .preferred_during_scheduling_ignored_during_execution
                .unwrap();
            assert_eq!(pref.len(), 1);
            assert_eq!(pref[0].weight, 100);
            let term = &pref[0].pod_affinity_term;
            assert_eq!(term.topology_key, "kubernetes.io/hostname");
            assert_eq!(
                term.label_selector.as_ref().unwrap().match_labels,
                Some(selector_labels(&c, dep.as_str())),
                "only the same dependency's pods repel each other"
            );
        }
    }

    #[test]
    fn disruption_budget_for_more_than_one_pod() {
        let c = sized(3, "cassandra");
        for dep in [Dependency::Kafka, Dependency::Scylla] {
            let p = managed(&c, dep).unwrap().pdb.expect("a PDB for 3 pods");
            assert_eq!(
                p.metadata.name.as_deref(),
                Some(format!("chat-{}", dep.as_str()).as_str())
            );
            assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "ChatCluster");
            let spec = p.spec.unwrap();
            assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
            assert!(spec.min_available.is_none());
            assert_eq!(
                spec.unhealthy_pod_eviction_policy.as_deref(),
                Some("IfHealthyBudget"),
                "a not-ready voter is not evicted while another pod is down"
            );
            assert_eq!(
                spec.selector.unwrap().match_labels,
                Some(selector_labels(&c, dep.as_str()))
            );
        }
        assert!(
            managed(&c, Dependency::Redis).unwrap().pdb.is_none(),
            "managed Redis is one pod"
        );
        let single = sized(1, "scylla");
        for dep in Dependency::ALL {
            assert!(managed(&single, dep).unwrap().pdb.is_none(), "{dep:?}");
        }
    }

    #[test]
    fn media_volume_is_read_write_many() {
        let c = testing::cluster(serde_json::json!({
            "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "media": {"volume": {"size": "50Gi", "storageClassName": "nfs"}}
        }));
        let pvc = media_pvc(&c).unwrap();
        let spec = pvc.spec.unwrap();
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteMany"]);
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
    }
}
