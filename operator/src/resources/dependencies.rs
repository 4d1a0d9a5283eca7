//! Shared parts of the managed dependencies (Kafka, the CQL store, Redis): the StatefulSet
//! skeleton with a volume claim template, the client and headless Services, and the media PVC.
//! The per-dependency details are in [`kafka`], [`scylla`] / [`cassandra`] (the CQL store's
//! two engines) and [`redis`].

pub mod cassandra;
pub mod kafka;
pub mod redis;
pub mod scylla;

use super::{meta, selector, selector_labels};
use crate::crd::{ChatCluster, CqlEngine, Dependency, ManagedSpec, StorageSpec};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Service, ServicePort, ServiceSpec, VolumeResourceRequirements,
};
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
}

/// Desired objects of a managed dependency, or `None` when it is external.
pub fn managed(cluster: &ChatCluster, dep: Dependency) -> Option<Managed> {
    let m = managed_spec(cluster, dep)?;
    let mut pod = PodSettings {
        security: None,
        termination_grace_seconds: 60,
    };
    let (container, ports) = match (dep, cql_engine(cluster)) {
        (Dependency::Kafka, _) => kafka::container(cluster, m),
        (Dependency::Scylla, Some(CqlEngine::Cassandra)) => {
            pod = PodSettings {
                security: Some(cassandra::pod_security()),
                termination_grace_seconds: cassandra::TERMINATION_GRACE_SECONDS,
            };
            cassandra::container(cluster, m)
        }
        (Dependency::Scylla, _) => scylla::container(cluster, m),
        (Dependency::Redis, _) => redis::container(m),
    };
    Some(Managed {
        statefulset: statefulset(cluster, dep, m, container, pod),
        service: service(cluster, dep, &ports, false),
        headless: service(cluster, dep, &ports, true),
    })
}

/// Pod-level settings that differ between dependencies.
struct PodSettings {
    security: Option<PodSecurityContext>,
    termination_grace_seconds: i64,
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
