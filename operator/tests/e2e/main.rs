//! Operator tests against a real kube-apiserver (etcd + kube-apiserver from `e2e/env`, no
//! kubelet: workload readiness is faked by patching status, as envtest users do).
//!
//! Needs `KUBECONFIG` (from `eval "$(e2e/env/env.sh)"` after `e2e/env/up.sh etcd kube`).
//! Without a reachable API server every test prints why and passes, unless
//! `TERN_REQUIRE_KUBE=1` (set by `e2e/operator/ci.sh`), which turns that into a failure.
//! Each test gets its own namespace and its own in-process operator watching only that
//! namespace; on failure the test prints the ChatCluster, its events and its children.

mod autoscaling;
mod binary;
mod chart;
mod crd;
mod examples;
mod leader;
mod reconcile;
mod support;
