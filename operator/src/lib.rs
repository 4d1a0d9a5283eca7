//! The Tern operator: runs Tern chat platforms described by `ChatCluster` resources
//! (`chat.tern.dev/v1alpha1`) and scales their edge pods on live client connections.
//!
//! # Layout
//!
//! - [`crd`]: the custom resource (spec, status, naming helpers); `crdgen` prints its CRD.
//! - [`resources`]: pure builders, one per object kind and component, returning k8s-openapi
//!   objects (Deployments, Services, PDBs, ConfigMap, generated Secret, setup Job, managed
//!   Kafka/ScyllaDB/Redis StatefulSets).
//! - [`controller`]: the controller: watches, shared context, error back-off. Its modules:
//!   - `controller::reconcile`: the reconcile path, step by step (Secrets, config, dependencies,
//!     role Deployments behind the setup gate, Services, NetworkPolicies);
//!   - `controller::apply`: server-side apply (field manager `tern-operator`), refusals
//!     recorded, removal of components no longer wanted;
//!   - `controller::setup`: the setup Job that gates the role Deployments;
//!   - `controller::scaling`: edge replicas from live connection counts, pod deletion cost;
//!   - `controller::report`: the status subresource and events.
//! - [`status`]: conditions (`Ready`, `Progressing`, `Degraded`, `DependenciesReady`) from
//!   what the reconciler observed, pure.
//! - [`autoscale`]: the edge scaling decision, pure; [`scrape`] reads `chat_connections`.
//! - [`reachability`]: TCP checks of external dependencies.
//! - [`leader`]: Lease-based leader election, so only one operator replica acts.
//! - [`metrics`]: the operator's own metrics and health endpoints.
//! - [`error`]: the crate's error type.
//! - `fixtures` (tests only): a mocked API server behind a real `kube::Client`, so the
//!   reconciler is unit-tested request by request.

pub mod autoscale;
pub mod controller;
pub mod crd;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod reachability;
pub mod resources;
pub mod scrape;
pub mod status;

pub use crd::{ChatCluster, ChatClusterSpec, ChatClusterStatus};
pub use error::{Error, Result};

/// The CRD as YAML, exactly as `crdgen` writes it to `crds/chatcluster.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = ChatCluster::crd();
    format!(
        "# Generated from operator/src/crd.rs by `cargo run -p tern-operator --bin crdgen -- <paths>`. Do not edit.\n{}",
        serde_yaml::to_string(&crd).expect("a CRD always serializes")
    )
}
