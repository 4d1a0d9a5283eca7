//! The reconcile path, in order: Secrets, shared configuration, managed (or external)
//! dependencies, the setup Job ([`super::setup`]), edge replicas ([`super::scaling`]), the
//! role Deployments behind the setup gate with their PDBs, the Services and NetworkPolicies,
//! and finally status ([`super::report`]). Objects come from [`crate::resources`]; this
//! module only looks up, applies and reports.

use super::Reconciler;
use crate::crd::{ChatClusterStatus, Dependency, DependencyStatus, EdgeStatus, Role};
use crate::error::Result;
use crate::reachability;
use crate::resources::config::{
    self, checksum, config_env, referenced_secrets, secret_value_problems, setup_checksum,
};
use crate::resources::dependencies::{self, managed};
use crate::resources::{FIELD_MANAGER, edge, network_policy, pdb, role, selector_string};
use crate::status::{self, Gate, Observed, Setup, Workload};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{debug, info};

impl Reconciler<'_> {
    /// One reconcile of the cluster, start to finish. Returns when to look again.
    pub(super) async fn run(&self) -> Result<Action> {
        let c = self.cluster;
        let previous = c.status.clone().unwrap_or_default();

        // 0. Being deleted (foreground deletion keeps it until garbage collection removed what
        //    it owns): nothing is applied, or the operator would recreate what is being removed.
        if c.metadata.deletion_timestamp.is_some() {
            info!("being deleted; garbage collection removes what it owns, nothing is applied");
            return Ok(Action::await_change());
        }

        // 1. Secrets: every referenced one must exist with its keys, and hold values
        //    chat-server can use, before anything runs.
        let (secret_data, problems) = self.secrets().await?;
        let invalid_secrets = secret_value_problems(c, &secret_data);
        if !problems.is_empty() || !invalid_secrets.is_empty() {
            let obs = Observed {
                generation: c.metadata.generation.unwrap_or(0),
                secret_problems: problems,
                invalid_secrets,
                rejections: vec![],
                dependencies: previous.dependencies.clone(),
                workloads: vec![],
                setup: Setup::Running,
                gate: Gate::Held {
                    reason: "Blocked",
                    message: "waiting for Secrets".into(),
                },
            };
            let mut status = previous.clone();
            self.finish_status(&mut status, &obs).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }

        // 2. Shared configuration and its checksum.
        let env = config_env(c);
        // The edge TLS Secret is left out: pods reload a renewed certificate in place.
        let rolling = config::rolling_secrets(c, &secret_data);
        let sum = checksum(&env, &c.spec.image, &rolling);
        let setup_sum = setup_checksum(&env, &c.spec.image, &rolling);
        self.apply_or_record(&config::config_map(c), "spec").await?;

        // 3. Managed dependencies (and removal of ones switched to external).
        let mut dep_status = Vec::new();
        let mut managed_redis_ready = None;
        for dep in Dependency::ALL {
            let (st, ready_pods) = self.dependency(dep, &secret_data).await?;
            if dep == Dependency::Redis {
                managed_redis_ready = ready_pods;
            }
            dep_status.push(st);
        }
        if let Some(pvc) = dependencies::media_pvc(c) {
            self.apply_or_record(&pvc, "spec.media.volume").await?;
        }

        // 4. Schema and topic setup, after the dependency StatefulSets exist (the Job's
        //    chat-server waits for them to answer).
        let (setup, setup_requeue) = self.setup(&setup_sum).await?;
        let gate = status::roles_gate(&setup, managed_redis_ready);

        // 5. Edge replicas: the autoscaler's decision or the spec.
        let mut edge_status = EdgeStatus {
            selector: selector_string(c, Role::Edge.as_str()),
            ..previous.edge.clone()
        };
        let mut requeue = self.edge_scaling(&mut edge_status).await?;
        if let Some(r) = setup_requeue {
            requeue = requeue.min(r);
        }

        // 6. The roles: applied only through an open gate; while it is held, existing
        //    Deployments keep their template and pods (the edge still gets its replica
        //    count) and missing ones are not created.
        if let Gate::Held { reason, .. } = &gate {
            debug!(reason, "role Deployments held");
        }
        let mut workloads = Vec::new();
        for r in Role::ALL {
            let replicas = match r {
                Role::Edge => edge_status.desired_replicas,
                _ => role::spec_replicas(c, r),
            };
            let live = match gate {
                Gate::Open => {
                    let field = format!("spec.{}", r.as_str());
                    self.apply_or_record(&role::deployment(c, r, replicas, &sum), &field)
                        .await?
                }
                Gate::Held { .. } => self.held_deployment(r, replicas).await?,
            };
            if let Some(d) = &live {
                let w = deployment_state(d);
                if r == Role::Edge {
                    edge_status.replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    edge_status.ready_replicas = w.ready;
                }
                workloads.push(w);
            } else if r == Role::Edge {
                edge_status.replicas = 0;
                edge_status.ready_replicas = 0;
            }
            let max_unavailable = match r {
                Role::Edge => c.spec.edge.pod_disruption_budget.max_unavailable,
                _ => 1,
            };
            let min_pods = match (&c.spec.edge.autoscaling, r) {
                (Some(a), Role::Edge) => a.min_replicas.max(replicas),
                _ => replicas,
            };
            match pdb::pdb(c, c.role_name(r), r.as_str(), min_pods, max_unavailable) {
                Some(p) => {
                    let field = format!("spec.{}", r.as_str());
                    self.apply_or_record(&p, &field).await?;
                }
                None => {
                    self.delete_owned::<PodDisruptionBudget>(&c.role_name(r))
                        .await?
                }
            }
        }
        self.apply_or_record(&edge::service(c), "spec.edge.service")
            .await?;
        self.apply_or_record(&edge::headless_service(c), "spec.edge.service")
            .await?;
        if c.spec.network_policy.enabled {
            for p in network_policy::policies(c, &self.ctx.opts.operator_namespace) {
                self.apply_or_record(&p, "spec.networkPolicy").await?;
            }
        } else {
            for name in network_policy::names(c) {
                self.delete_owned::<NetworkPolicy>(&name).await?;
            }
        }

        // 7. Status, conditions, events.
        let obs = Observed {
            generation: c.metadata.generation.unwrap_or(0),
            secret_problems: vec![],
            invalid_secrets: vec![],
            rejections: self.rejections(),
            dependencies: dep_status,
            workloads,
            setup,
            gate,
        };
        let mut status = ChatClusterStatus {
            endpoint: Some(edge::websocket_endpoint(c)),
            edge: edge_status,
            config_checksum: Some(sum),
            ..previous.clone()
        };
        status.dependencies = obs.dependencies.clone();
        self.finish_status(&mut status, &obs).await?;
        // Look again at the scrape interval: connections, external reachability and
        // conditions stay fresh even when nothing in the cluster changes.
        Ok(Action::requeue(requeue))
    }

    /// Fetch every Secret the pods read; create the generated JWT Secret once.
    async fn secrets(
        &self,
    ) -> Result<(BTreeMap<String, BTreeMap<String, ByteString>>, Vec<String>)> {
        let c = self.cluster;
        let api = self.api::<Secret>();
        let mut data = BTreeMap::new();
        let mut problems = Vec::new();
        for u in referenced_secrets(c) {
            match api.get_opt(&u.name).await? {
                None => problems.push(format!("Secret {} not found ({})", u.name, u.purpose)),
                Some(s) => {
                    let d = s.data.unwrap_or_default();
                    for k in &u.keys {
                        if !d.contains_key(k) {
                            problems
                                .push(format!("Secret {} has no key {k} ({})", u.name, u.purpose));
                        }
                    }
                    data.insert(u.name, d);
                }
            }
        }
        if c.spec.auth.jwt_secret_ref.is_none() {
            let name = c.generated_jwt_name();
            let secret = match api.get_opt(&name).await? {
                Some(s) => s,
                None => {
                    info!(secret = %name, "generating the JWT secret");
                    let value = random_hex(32);
                    self.apply(&config::generated_jwt_secret(c, &value)).await?
                }
            };
            data.insert(name, secret.data.unwrap_or_default());
        }
        Ok((data, problems))
    }

    /// A role Deployment while the gate is held: the live one, untouched except that the edge
    /// follows `replicas` (a merge patch of `spec.replicas` only, so the template stays);
    /// `None` when it does not exist (it is not created).
    async fn held_deployment(&self, r: Role, replicas: i32) -> Result<Option<Deployment>> {
        let name = self.cluster.role_name(r);
        let api = self.api::<Deployment>();
        let Some(d) = api.get_opt(&name).await? else {
            return Ok(None);
        };
        let live = d.spec.as_ref().and_then(|s| s.replicas);
        if r != Role::Edge || live == Some(replicas) {
            return Ok(Some(d));
        }
        info!(deployment = %name, from = ?live, to = replicas, "scaling the edge while its template is held");
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        Ok(Some(api.patch(&name, &pp, &Patch::Merge(&patch)).await?))
    }

    /// Apply a managed dependency (or remove a formerly managed one) and report readiness,
    /// plus its ready pods when it is managed.
    async fn dependency(
        &self,
        dep: Dependency,
        secrets: &BTreeMap<String, BTreeMap<String, ByteString>>,
    ) -> Result<(DependencyStatus, Option<i32>)> {
        let c = self.cluster;
        let name = dep.as_str().to_string();
        if let Some(m) = managed(c, dep) {
            let field = format!("spec.{name}.managed");
            self.apply_or_record(&m.headless, &field).await?;
            self.apply_or_record(&m.service, &field).await?;
            let storage = format!("{field}.storage");
            let field = match self
                .api::<StatefulSet>()
                .get_opt(&m.statefulset.name_any())
                .await?
            {
                Some(live) if claim_templates_differ(&live, &m.statefulset) => storage.as_str(),
                _ => field.as_str(),
            };
            let Some(ss) = self.apply_or_record(&m.statefulset, field).await? else {
                let st = DependencyStatus {
                    name,
                    mode: "managed".into(),
                    ready: false,
                    message: "the API server refused its StatefulSet (see Degraded)".into(),
                };
                return Ok((st, Some(0)));
            };
            match &m.pdb {
                Some(p) => {
                    self.apply(p).await?;
                }
                None => {
                    self.delete_owned::<PodDisruptionBudget>(&c.dependency_name(dep))
                        .await?
                }
            }
            let want = ss.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = ss
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let st = DependencyStatus {
                name,
                mode: "managed".into(),
                ready: ready >= want,
                message: format!("{ready}/{want} pods ready"),
            };
            return Ok((st, Some(ready)));
        }
        self.delete_owned::<StatefulSet>(&c.dependency_name(dep))
            .await?;
        self.delete_owned::<PodDisruptionBudget>(&c.dependency_name(dep))
            .await?;
        self.delete_owned::<Service>(&c.dependency_name(dep))
            .await?;
        self.delete_owned::<Service>(&c.dependency_headless_name(dep))
            .await?;
        let endpoints: Vec<String> = match dep {
            Dependency::Kafka => c
                .spec
                .kafka
                .external
                .iter()
                .flat_map(|e| e.brokers.clone())
                .collect(),
            Dependency::Scylla => c
                .spec
                .scylla
                .external
                .iter()
                .flat_map(|e| e.nodes.clone())
                .collect(),
            Dependency::Redis => {
                let url = c.spec.redis.external.as_ref().and_then(|e| {
                    e.url.clone().or_else(|| {
                        let r = e.url_secret_ref.as_ref()?;
                        let v = secrets.get(&r.name)?.get(&r.key)?;
                        String::from_utf8(v.0.clone()).ok()
                    })
                });
                url.as_deref()
                    .and_then(reachability::redis_endpoint)
                    .into_iter()
                    .collect()
            }
        };
        let (ready, message) =
            match reachability::any_reachable(&endpoints, self.ctx.opts.probe_timeout).await {
                Ok(m) => (true, m),
                Err(e) => (false, format!("unreachable: {e}")),
            };
        let st = DependencyStatus {
            name,
            mode: "external".into(),
            ready,
            message,
        };
        Ok((st, None))
    }
}

/// A Deployment's rollout state from its status. Pure.
pub fn deployment_state(d: &Deployment) -> Workload {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    Workload {
        name: d.name_any(),
        want,
        ready: st.ready_replicas.unwrap_or(0),
        updated: st.updated_replicas.unwrap_or(0),
        total: st.replicas.unwrap_or(0),
        current: st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0),
    }
}

/// Whether two StatefulSets ask for different volume claims (size or storage class): the
/// change the API server refuses on an existing StatefulSet. Pure.
pub fn claim_templates_differ(live: &StatefulSet, desired: &StatefulSet) -> bool {
    let claims = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.as_ref())
            .map(|v| {
                v.iter()
                    .map(|pvc| {
                        let spec = pvc.spec.clone().unwrap_or_default();
                        let size = spec
                            .resources
                            .and_then(|r| r.requests)
                            .and_then(|r| r.get("storage").cloned())
                            .map(|q| q.0);
                        (pvc.metadata.name.clone(), size, spec.storage_class_name)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    claims(live) != claims(desired)
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    config::hex(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatCluster;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    #[test]
    fn deployment_rollout_state() {
        let mut d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: Some(3),
                updated_replicas: Some(3),
                replicas: Some(4),
                observed_generation: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        d.metadata.generation = Some(2);
        assert!(
            !deployment_state(&d).rolled_out(),
            "a pod of the old ReplicaSet is still there"
        );
        d.status.as_mut().unwrap().replicas = Some(3);
        assert!(deployment_state(&d).rolled_out());
        d.metadata.generation = Some(3);
        assert!(!deployment_state(&d).rolled_out());
    }

    #[test]
    fn storage_changes_are_told_apart() {
        use crate::resources::testing;
        let mut c = testing::dev();
        let build = |c: &ChatCluster| managed(c, Dependency::Redis).unwrap().statefulset;
        let live = build(&c);
        c.spec.redis.managed.as_mut().unwrap().replicas = 1;
        c.spec.image = "other:2".into();
        assert!(
            !claim_templates_differ(&live, &build(&c)),
            "image is not storage"
        );
        c.spec.redis.managed.as_mut().unwrap().storage.size = "20Gi".into();
        assert!(claim_templates_differ(&live, &build(&c)));
        let mut c = testing::dev();
        c.spec
            .redis
            .managed
            .as_mut()
            .unwrap()
            .storage
            .storage_class_name = Some("fast".into());
        assert!(claim_templates_differ(&live, &build(&c)));
    }

    #[test]
    fn random_secret_is_hex() {
        let s = random_hex(32);
        assert_eq!(s.len(), 64);
        assert_ne!(s, random_hex(32));
    }
}
