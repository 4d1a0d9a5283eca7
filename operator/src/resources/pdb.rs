//! PodDisruptionBudgets, only for components that want more than one pod.

use super::{meta, selector};
use crate::crd::ChatCluster;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A PDB named like the workload, or `None` when `replicas <= 1` (a PDB on a single pod would
/// block node drains for ever).
pub fn pdb(
    cluster: &ChatCluster,
    name: String,
    component: &str,
    replicas: i32,
    max_unavailable: i32,
) -> Option<PodDisruptionBudget> {
    (replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(cluster, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable.max(1))),
            selector: Some(selector(cluster, component)),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn only_for_more_than_one_pod() {
        let c = testing::dev();
        assert!(pdb(&c, "chat-edge".into(), "edge", 1, 1).is_none());
        let p = pdb(&c, "chat-edge".into(), "edge", 3, 2).unwrap();
        let spec = p.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(2)));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"],
            "edge"
        );
    }
}
