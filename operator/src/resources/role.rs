//! Deployments of the chat-server roles (edge, delivery, presence).

use super::pod::{chat_container, pod_template};
use super::{meta, selector, selector_labels};
use crate::crd::{ChatCluster, Role};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Lifecycle, LifecycleHandler, SleepAction, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Extra seconds on top of the drain timeout before the kubelet kills an edge pod.
pub const DRAIN_GRACE_MARGIN: i64 = 10;
/// Seconds an edge pod keeps accepting after it is told to stop and before chat-server gets
/// SIGTERM (a `preStop` sleep): time for the endpoints controller and kube-proxy (or a load
/// balancer) to stop sending it new connections, which a draining edge would refuse.
pub const EDGE_PRESTOP_SECONDS: i64 = 5;

/// The Deployment of `role` with `replicas` pods (for the edge: the autoscaler's decision or
/// `spec.edge.replicas`) and the config `checksum` in the pod template.
pub fn deployment(cluster: &ChatCluster, role: Role, replicas: i32, checksum: &str) -> Deployment {
    let s = &cluster.spec;
    let component = role.as_str();
    let resources = match role {
        Role::Edge => s.edge.resources.as_ref(),
        Role::Delivery => s.delivery.resources.as_ref(),
        Role::Presence => s.presence.resources.as_ref(),
    };
    let container = chat_container(cluster, Some(component), resources);
    let mut template = pod_template(cluster, component, container, checksum);
    let pod = template.spec.as_mut().expect("pod_template sets spec");
    let strategy = if role == Role::Edge {
        // The grace period covers the preStop pause, then the drain (clients told to
        // reconnect elsewhere, receipts flushed), then a margin.
        pod.termination_grace_period_seconds = Some(
            EDGE_PRESTOP_SECONDS + i64::from(s.edge.drain.timeout_seconds) + DRAIN_GRACE_MARGIN,
        );
        if let Some(c) = pod.containers.first_mut() {
            c.lifecycle = Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    sleep: Some(SleepAction {
                        seconds: EDGE_PRESTOP_SECONDS,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if !s.edge.topology_spread_constraints.is_empty() {
            pod.topology_spread_constraints = Some(spread_constraints(
                cluster,
                &s.edge.topology_spread_constraints,
            ));
        }
        // Replace edge pods one at a time and never drop below the wanted count: every
        // replaced pod drains its clients onto the others.
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }
    } else {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::String("25%".into())),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }
    };
    Deployment {
        metadata: meta(cluster, cluster.role_name(role), component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(cluster, component),
            template,
            strategy: Some(strategy),
            revision_history_limit: Some(5),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The user's spread constraints, with the edge pod selector filled in where left empty.
fn spread_constraints(
    cluster: &ChatCluster,
    given: &[TopologySpreadConstraint],
) -> Vec<TopologySpreadConstraint> {
    given
        .iter()
        .cloned()
        .map(|mut c| {
            if c.label_selector.is_none() {
                c.label_selector = Some(LabelSelector {
                    match_labels: Some(selector_labels(cluster, "edge")),
                    ..Default::default()
                });
            }
            c
        })
        .collect()
}

/// Replicas of a non-edge role from the spec.
pub fn spec_replicas(cluster: &ChatCluster, role: Role) -> i32 {
    match role {
        Role::Edge => cluster.spec.edge.replicas,
        Role::Delivery => cluster.spec.delivery.replicas,
        Role::Presence => cluster.spec.presence.replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CHECKSUM_ANNOTATION, testing};

    #[test]
    fn edge_deployment_drains_and_rolls_one_by_one() {
        let c = testing::cluster(serde_json::json!({
            "image": "i:1", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "edge": {"drain": {"timeoutSeconds": 45},
                     "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]}
        }));
        let d = deployment(&c, Role::Edge, 3, "sum");
        assert_eq!(d.metadata.name.as_deref(), Some("chat-edge"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let ru = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        let t = spec.template;
        assert_eq!(
            t.metadata.unwrap().annotations.unwrap()[CHECKSUM_ANNOTATION],
            "sum"
        );
        let pod = t.spec.unwrap();
        // preStop 5 s + drain 45 s + margin 10 s.
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        let pre_stop = pod.containers[0]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map(|s| s.seconds);
        assert_eq!(pre_stop, Some(EDGE_PRESTOP_SECONDS));
        let tsc = &pod.topology_spread_constraints.unwrap()[0];
        assert_eq!(
            tsc.label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/component"],
            "edge"
        );
        assert_eq!(
            spec.selector.match_labels.unwrap()["app.kubernetes.io/instance"],
            "chat"
        );
    }

    #[test]
    fn delivery_and_presence_use_their_replicas_and_resources() {
        let c = testing::cluster(serde_json::json!({
            "image": "i:1", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "delivery": {"replicas": 3, "resources": {"requests": {"cpu": "500m"}}}
        }));
        assert_eq!(spec_replicas(&c, Role::Delivery), 3);
        assert_eq!(spec_replicas(&c, Role::Presence), 1);
        let d = deployment(&c, Role::Delivery, 3, "x");
        let pod = d.spec.unwrap().template.spec.unwrap();
        let ctr = &pod.containers[0];
        assert!(
            ctr.resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()
                .contains_key("cpu")
        );
        assert_eq!(
            ctr.env.as_ref().unwrap()[0].value.as_deref(),
            Some("delivery")
        );
        assert!(pod.termination_grace_period_seconds.is_none());
    }
}
