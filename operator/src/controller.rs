//! The `ChatCluster` reconciler: looks up what the builders need (Secrets, live objects,
//! connection counts), applies the built objects with server-side apply under one field
//! manager, and reports status, conditions and events. It builds no object itself.

use crate::autoscale::{self, Direction, Policy, ScaleState};
use crate::crd::{ChatCluster, ChatClusterStatus, Dependency, DependencyStatus, EdgeStatus, Role};
use crate::error::{Error, Result};
use crate::metrics::{ClusterLabels, ErrorLabels, Metrics, ScaleLabels};
use crate::reachability;
use crate::resources::config::{
    self, checksum, config_env, referenced_secrets, secret_value_problems, setup_checksum,
};
use crate::resources::dependencies::{self, managed};
use crate::resources::{
    FIELD_MANAGER, edge, network_policy, pdb, role, selector_string, setup_job,
};
use crate::scrape::{self, SCRAPE_TARGETS_ANNOTATION, Sample, Target};
use crate::status::{self, Gate, Observed, Rejection, Setup, Workload};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, instrument, warn};

/// Pod annotation the ReplicaSet controller reads when choosing pods to remove.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Label that makes a user Secret's changes reconcile the ChatClusters referencing it at once
/// (the operator watches only Secrets with it, and its own). Unlabelled referenced Secrets
/// are still read by name on every reconcile, so a change is seen within the resync period.
pub const SECRET_WATCH_LABEL: &str = "chat.tern.dev/watch";
/// How often connections are read when autoscaling is off (for `status.edge.connections`).
const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(30);

/// Operator settings (see `main.rs` for the command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch one namespace only (`None`: all).
    pub namespace: Option<String>,
    /// Honour the `chat.tern.dev/scrape-targets` annotation (tests, special set-ups).
    pub allow_scrape_override: bool,
    /// Port of the edge pods' `/metrics` (their `metrics` port).
    pub scrape_port: u16,
    /// The operator's own namespace: `spec.networkPolicy` lets pods there read `/metrics`.
    pub operator_namespace: String,
    /// Time limit per scrape and per dependency connect.
    pub probe_timeout: Duration,
    /// `reportingInstance` of events (the pod name).
    pub instance: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: None,
            allow_scrape_override: false,
            scrape_port: crate::resources::METRICS_PORT as u16,
            operator_namespace: "default".into(),
            probe_timeout: Duration::from_secs(2),
            instance: "tern-operator".into(),
        }
    }
}

/// What the autoscaler remembers per cluster.
struct ScaleMemory {
    policy: Option<Policy>,
    state: ScaleState,
    last_scrape: Option<Instant>,
    samples: Vec<Sample>,
    deletion_costs: HashMap<String, i32>,
    /// The last decision. Authoritative over `status.edge`, which the reconciler may see
    /// stale from the watch cache right after writing it.
    desired: Option<i32>,
    last_scale_time: Option<Time>,
    reason: Option<String>,
}

/// Shared by all reconciliations.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub http: reqwest::Client,
    pub opts: Options,
    pub metrics: Arc<Metrics>,
    scaling: Mutex<HashMap<String, ScaleMemory>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, opts: Options, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(opts.instance.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            http: reqwest::Client::new(),
            opts,
            metrics,
            scaling: Mutex::default(),
            failures: Mutex::default(),
        }
    }
}

fn key(c: &ChatCluster) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

fn api_for<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Run the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = opts.namespace.clone();
    let clusters: Api<ChatCluster> = api_for(&client, &ns);
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=tern-operator");
    let ctx = Arc::new(Context::new(client.clone(), opts, metrics));
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(api_for::<Deployment>(&client, &ns), owned.clone())
        .owns(api_for::<StatefulSet>(&client, &ns), owned.clone())
        .owns(api_for::<Service>(&client, &ns), owned.clone())
        .owns(api_for::<ConfigMap>(&client, &ns), owned.clone())
        .owns(api_for::<PodDisruptionBudget>(&client, &ns), owned.clone())
        .owns(api_for::<Job>(&client, &ns), owned.clone())
        .owns(api_for::<NetworkPolicy>(&client, &ns), owned.clone())
        .owns(api_for::<Secret>(&client, &ns), owned)
        // User Secrets a cluster references and that carry the watch label: a created or
        // rotated one reconciles it at once. No other Secret is watched or cached.
        .watches(
            api_for::<Secret>(&client, &ns),
            user_secret_watch(),
            move |secret: Secret| {
                let name = secret.name_any();
                let ns = secret.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.namespace() == ns && referenced_secrets(c).iter().any(|u| u.name == name)
                    })
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(cluster = %obj.name, "reconciled"),
                Err(e) => debug!(cause = %e, "reconcile failed"),
            }
        })
        .await;
}

/// The watch on user Secrets: only those labelled [`SECRET_WATCH_LABEL`]`=true` are listed,
/// watched and cached (the operator's own Secrets come through `owns`).
pub fn user_secret_watch() -> watcher::Config {
    watcher::Config::default().labels(&format!("{SECRET_WATCH_LABEL}=true"))
}

/// Backoff per cluster: 2 s, 4 s, … up to 5 min; reset by a successful reconcile.
pub fn error_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.clamp(1, 8)).min(Duration::from_secs(300))
}

fn error_policy(cluster: Arc<ChatCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    let n = {
        let mut f = ctx.failures.lock().expect("failures lock");
        let n = f.entry(key(&cluster)).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = error_backoff(n);
    warn!(cluster = %key(&cluster), cause = %err, failures = n, retry_in = ?delay, "reconcile failed");
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            error: err.metric_label(),
        })
        .inc();
    Action::requeue(delay)
}

#[instrument(skip_all, fields(cluster = %key(&cluster)))]
async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let res = Reconciler::new(&cluster, &ctx)?.run().await;
    ctx.metrics.observe(started.elapsed());
    if res.is_ok() {
        ctx.failures
            .lock()
            .expect("failures lock")
            .remove(&key(&cluster));
    }
    res
}

struct Reconciler<'a> {
    cluster: &'a ChatCluster,
    ctx: &'a Context,
    ns: String,
    pp: PatchParams,
    /// Objects the API server refused in this reconcile (reported, not fatal).
    rejections: Mutex<Vec<Rejection>>,
}

impl<'a> Reconciler<'a> {
    fn new(cluster: &'a ChatCluster, ctx: &'a Context) -> Result<Self> {
        Ok(Reconciler {
            cluster,
            ctx,
            ns: cluster.namespace().ok_or(Error::NoNamespace)?,
            pp: PatchParams::apply(FIELD_MANAGER).force(),
            rejections: Mutex::default(),
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    async fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
        K::DynamicType: Default,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        Ok(self
            .api::<K>()
            .patch(&name, &self.pp, &Patch::Apply(obj))
            .await?)
    }

    /// Apply `obj`; when the API server refuses it (400 or 422: an invalid value, or a change
    /// to an immutable field), record the refusal against `field` (the spec field the object
    /// comes from) and carry on with the live object, if there is one. Other errors stop the
    /// reconcile as usual (they are retried with backoff).
    async fn apply_or_record<K>(&self, obj: &K, field: &str) -> Result<Option<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
        K::DynamicType: Default,
    {
        match self.apply(obj).await {
            Ok(o) => Ok(Some(o)),
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 400 || s.code == 422 => {
                let kind = K::kind(&Default::default()).to_string();
                let name = obj.meta().name.clone().unwrap_or_default();
                warn!(kind = %kind, object = %name, field, cause = %s.message, "the API server refused an object; reconciling the rest");
                self.record(Rejection::new(&kind, &name, field, &s.message));
                Ok(self.api::<K>().get_opt(&name).await?)
            }
            Err(e) => Err(e),
        }
    }

    fn record(&self, r: Rejection) {
        self.rejections.lock().expect("rejections lock").push(r);
    }

    fn rejections(&self) -> Vec<Rejection> {
        self.rejections.lock().expect("rejections lock").clone()
    }

    /// Delete `name` if it exists and this cluster controls it (a component that is no longer
    /// wanted: a PDB after scaling to one pod, a managed dependency switched to external).
    async fn delete_owned<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        if let Some(obj) = api.get_opt(name).await?
            && obj
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == self.cluster.uid().as_ref())
        {
            info!(object = name, kind = %K::kind(&Default::default()), "deleting component no longer wanted");
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn run(&self) -> Result<Action> {
        let c = self.cluster;
        let previous = c.status.clone().unwrap_or_default();

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

    /// Create the setup Job for this configuration if missing; replace a Failed one once its
    /// retry delay has passed (until then it stays for `kubectl describe`/`logs`); once it
    /// succeeded, delete the Jobs of earlier configurations. Also returns when to look again
    /// (a retry due).
    async fn setup(&self, sum: &str) -> Result<(Setup, Option<Duration>)> {
        let c = self.cluster;
        let job = setup_job::setup_job(c, sum, 1);
        let name = job.metadata.name.clone().unwrap_or_default();
        let api = self.api::<Job>();
        let current = match api.get_opt(&name).await? {
            // A failed attempt being replaced; the next one is created when it is gone.
            Some(j) if j.metadata.deletion_timestamp.is_some() => {
                return Ok((Setup::Running, Some(Duration::from_secs(2))));
            }
            Some(j) => j,
            None => {
                info!(job = %name, "starting schema and topic setup");
                match self.apply_or_record(&job, "spec").await? {
                    Some(j) => j,
                    None => {
                        let why = format!("the API server refused the setup Job {name}");
                        return Ok((Setup::Failed(why), None));
                    }
                }
            }
        };
        match job_state(&current) {
            Setup::Succeeded => {
                let lp = ListParams::default().labels(&selector_string(c, "setup"));
                for old in api.list(&lp).await? {
                    if old.name_any() != name {
                        self.delete_owned::<Job>(&old.name_any()).await?;
                    }
                }
                Ok((Setup::Succeeded, None))
            }
            Setup::Running => {
                // A Job whose pod cannot start or keeps crashing may take many minutes to
                // use up its back-off limit; say why now (the Job keeps retrying).
                let lp = ListParams::default().labels(&format!("job-name={name}"));
                let pods = self.api::<Pod>().list(&lp).await?;
                match pods.items.iter().find_map(setup_pod_trouble) {
                    Some(why) => Ok((
                        Setup::Failed(format!(
                            "setup Job {name}: {why}; the Job retries with back-off"
                        )),
                        Some(Duration::from_secs(5)),
                    )),
                    // Job status does not change while its pod restarts in place: look again
                    // soon, so a stuck setup is reported within seconds.
                    None => Ok((Setup::Running, Some(Duration::from_secs(5)))),
                }
            }
            Setup::Failed(why) => {
                let attempt = setup_job::attempt(&current);
                let delay = setup_job::retry_delay(attempt);
                let now = Timestamp::now();
                let failed_at = failed_since(&current).unwrap_or(now);
                let waited = now.duration_since(failed_at).as_secs().max(0);
                let left = delay.as_secs().saturating_sub(waited.unsigned_abs());
                if left == 0 {
                    warn!(job = %name, attempt, cause = %why, "setup failed; starting the next attempt");
                    self.event(
                        EventType::Warning,
                        "SetupRetry",
                        "Setup",
                        format!("{why}; starting attempt {}", attempt + 1),
                    )
                    .await;
                    self.delete_owned::<Job>(&name).await?;
                    if api.get_opt(&name).await?.is_some() {
                        return Ok((Setup::Running, Some(Duration::from_secs(2))));
                    }
                    self.apply(&setup_job::setup_job(c, sum, attempt + 1))
                        .await?;
                    return Ok((Setup::Running, None));
                }
                let next = failed_at
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                        delay.as_secs() as i64,
                    ))
                    .unwrap_or(now);
                Ok((
                    Setup::Failed(format!(
                        "{why} (attempt {attempt}); attempt {} starts at {next}",
                        attempt + 1,
                    )),
                    Some(Duration::from_secs(left)),
                ))
            }
        }
    }

    /// Scrape the edge pods when due, run the autoscaler, set `desired_replicas`,
    /// `connections` and the scale fields. Returns when to look again.
    async fn edge_scaling(&self, edge: &mut EdgeStatus) -> Result<Duration> {
        let c = self.cluster;
        let auto = c.spec.edge.autoscaling.as_ref();
        let interval = auto.map_or(DEFAULT_SCRAPE_INTERVAL, |a| {
            Duration::from_secs(
                u64::try_from(a.scrape_interval_seconds)
                    .unwrap_or(15)
                    .max(1),
            )
        });
        let due = {
            let mut map = self.ctx.scaling.lock().expect("scaling lock");
            let mem = map.entry(key(c)).or_insert_with(|| ScaleMemory {
                policy: None,
                state: ScaleState::new(Instant::now()),
                last_scrape: None,
                samples: Vec::new(),
                deletion_costs: HashMap::new(),
                desired: None,
                last_scale_time: None,
                reason: None,
            });
            let policy = auto.map(Policy::from_spec);
            if mem.policy != policy {
                // A new policy starts a fresh observation window.
                mem.state = ScaleState::new(Instant::now());
                if policy.is_none() || mem.policy.is_none() {
                    mem.desired = None;
                }
                mem.policy = policy;
            }
            mem.last_scrape.is_none_or(|t| t.elapsed() >= interval)
        };
        if due {
            let targets = self.scrape_targets().await?;
            let samples =
                scrape::scrape_all(&self.ctx.http, &targets, self.ctx.opts.probe_timeout).await;
            for s in &samples {
                match &s.connections {
                    Err(e) if s.target.serving => {
                        warn!(cause = %e, "could not read chat_connections")
                    }
                    Err(e) => debug!(cause = %e, "edge pod not serving, counted as empty"),
                    Ok(_) => {}
                }
            }
            let mut map = self.ctx.scaling.lock().expect("scaling lock");
            if let Some(mem) = map.get_mut(&key(c)) {
                mem.last_scrape = Some(Instant::now());
                mem.samples = samples;
            }
        }
        let (total, complete, costs) = {
            let map = self.ctx.scaling.lock().expect("scaling lock");
            let mem = map.get(&key(c)).expect("inserted above");
            let total: u64 = mem
                .samples
                .iter()
                .filter_map(|s| s.connections.as_ref().ok())
                .sum();
            // Only a serving pod that did not answer makes the count uncertain; a pod that
            // is not Ready (starting, crash-looping, draining) gets no new clients.
            let complete = mem
                .samples
                .iter()
                .all(|s| s.connections.is_ok() || !s.target.serving);
            let costs: Vec<(String, i32)> = mem
                .samples
                .iter()
                .filter_map(|s| {
                    let pod = s.target.pod.clone()?;
                    let n = *s.connections.as_ref().ok()?;
                    let cost = autoscale::deletion_cost(n);
                    (mem.deletion_costs.get(&pod) != Some(&cost)).then_some((pod, cost))
                })
                .collect();
            (total, complete, costs)
        };
        edge.connections = i64::try_from(total).unwrap_or(i64::MAX);
        let labels = ClusterLabels {
            namespace: self.ns.clone(),
            name: c.name_any(),
        };
        self.ctx
            .metrics
            .edge_connections
            .get_or_create(&labels)
            .set(edge.connections);
        self.annotate_deletion_costs(costs).await;

        let Some(a) = auto else {
            edge.desired_replicas = c.spec.edge.replicas;
            edge.scale_reason = None;
            self.ctx
                .metrics
                .edge_desired
                .get_or_create(&labels)
                .set(edge.desired_replicas.into());
            return Ok(interval);
        };
        let (current, scaled) = {
            let mut map = self.ctx.scaling.lock().expect("scaling lock");
            let mem = map.get_mut(&key(c)).expect("inserted above");
            let current = mem.desired.unwrap_or(if edge.desired_replicas > 0 {
                edge.desired_replicas
            } else {
                a.min_replicas
            });
            if mem.last_scale_time.is_none() {
                mem.last_scale_time = edge.last_scale_time.clone();
            }
            let mut scaled = None;
            if due {
                let policy = mem.policy.clone().expect("autoscaling policy set above");
                let d = autoscale::decide(
                    &policy,
                    &mut mem.state,
                    current,
                    total,
                    complete,
                    Instant::now(),
                );
                if d.direction != Direction::Hold && d.replicas != current {
                    mem.last_scale_time = Some(Time(Timestamp::now()));
                    scaled = Some(d.clone());
                }
                mem.desired = Some(d.replicas);
                mem.reason = Some(d.reason);
            }
            edge.desired_replicas = mem.desired.unwrap_or(current);
            edge.last_scale_time = mem.last_scale_time.clone();
            edge.scale_reason = mem.reason.clone().or(edge.scale_reason.take());
            (current, scaled)
        };
        if let Some(d) = scaled {
            let (reason, label) = if d.replicas > current {
                ("ScaledUp", "up")
            } else {
                ("ScaledDown", "down")
            };
            info!(from = current, to = d.replicas, total, reason = %d.reason, "edge autoscaling");
            self.ctx
                .metrics
                .scale_events
                .get_or_create(&ScaleLabels { direction: label })
                .inc();
            self.event(EventType::Normal, reason, "Scale", d.reason)
                .await;
        }
        self.ctx
            .metrics
            .edge_desired
            .get_or_create(&labels)
            .set(edge.desired_replicas.into());
        Ok(interval)
    }

    /// Edge pods to scrape: the override annotation (when allowed) or the live edge Pods.
    async fn scrape_targets(&self) -> Result<Vec<Target>> {
        let c = self.cluster;
        if self.ctx.opts.allow_scrape_override
            && let Some(v) = c.annotations().get(SCRAPE_TARGETS_ANNOTATION)
        {
            return Ok(scrape::parse_override(v));
        }
        let lp = ListParams::default().labels(&selector_string(c, Role::Edge.as_str()));
        let pods = self.api::<Pod>().list(&lp).await?;
        Ok(scrape::targets_from_pods(
            &pods.items,
            self.ctx.opts.scrape_port,
        ))
    }

    /// Set `pod-deletion-cost` on edge pods whose connection count changed. Best effort: a pod
    /// that is gone or cannot be patched is logged and skipped.
    async fn annotate_deletion_costs(&self, costs: Vec<(String, i32)>) {
        let api = self.api::<Pod>();
        for (pod, cost) in costs {
            let patch = serde_json::json!({"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost.to_string()}}});
            match api
                .patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    let mut map = self.ctx.scaling.lock().expect("scaling lock");
                    if let Some(mem) = map.get_mut(&key(self.cluster)) {
                        mem.deletion_costs.insert(pod, cost);
                    }
                }
                Err(e) => debug!(pod = %pod, cause = %e, "could not set pod-deletion-cost"),
            }
        }
    }

    /// Compute conditions, write the status (server-side apply on the status subresource)
    /// and publish events for transitions.
    async fn finish_status(&self, status: &mut ChatClusterStatus, obs: &Observed) -> Result<()> {
        let c = self.cluster;
        let old: Vec<Condition> = c
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        status.conditions = status::conditions(obs, &old, Time(Timestamp::now()));
        status.observed_generation = c.metadata.generation;
        if status.edge.selector.is_empty() {
            status.edge.selector = selector_string(c, Role::Edge.as_str());
        }
        let patch = serde_json::json!({
            "apiVersion": ChatCluster::api_version(&()),
            "kind": ChatCluster::kind(&()),
            "status": status,
        });
        self.api::<ChatCluster>()
            .patch_status(&c.name_any(), &self.pp, &Patch::Apply(&patch))
            .await?;
        for t in [status::READY, status::DEGRADED, status::DEPENDENCIES_READY] {
            let (Some(new), prev) = (status::find(&status.conditions, t), status::find(&old, t))
            else {
                continue;
            };
            // Degraded also speaks up when its message changes (another object refused, a
            // different Secret missing), not only on a new status or reason.
            if prev.is_some_and(|p| {
                p.status == new.status
                    && p.reason == new.reason
                    && (t != status::DEGRADED || p.message == new.message)
            }) {
                continue;
            }
            let bad = (t == status::DEGRADED) == (new.status == "True");
            let ty = if bad {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let note = if new.message.is_empty() {
                format!("{t}={}", new.status)
            } else {
                format!("{t}={}: {}", new.status, new.message)
            };
            self.event(ty, &new.reason, t, note).await;
        }
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &self.cluster.object_ref(&()))
            .await
        {
            warn!(cause = %e, "could not publish event");
        }
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

/// A Job's state from its conditions. Pure.
/// Why a setup pod is not getting anywhere, if it is stuck: a container waiting in a
/// back-off or with an image/config error, or one that already failed. Pure.
pub fn setup_pod_trouble(p: &Pod) -> Option<String> {
    const STUCK: &[&str] = &[
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerError",
        "CreateContainerConfigError",
        "RunContainerError",
        "StartError",
    ];
    let status = p.status.as_ref()?;
    for cs in status.container_statuses.iter().flatten() {
        let st = cs.state.as_ref();
        if let Some(w) = st.and_then(|s| s.waiting.as_ref())
            && let Some(reason) = w.reason.as_deref()
            && STUCK.contains(&reason)
        {
            let last = cs
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .map(|t| {
                    format!(
                        "; last exit {} ({})",
                        t.exit_code,
                        t.message
                            .as_deref()
                            .or(t.reason.as_deref())
                            .unwrap_or("no message")
                            .trim()
                    )
                })
                .unwrap_or_default();
            return Some(format!(
                "pod {} container {} is in {reason} after {} restarts: {}{last}",
                p.name_any(),
                cs.name,
                cs.restart_count,
                w.message.as_deref().unwrap_or("no message").trim()
            ));
        }
        if let Some(t) = st.and_then(|s| s.terminated.as_ref())
            && t.exit_code != 0
        {
            return Some(format!(
                "pod {} container {} exited with {} ({})",
                p.name_any(),
                cs.name,
                t.exit_code,
                t.message
                    .as_deref()
                    .or(t.reason.as_deref())
                    .unwrap_or("no message")
                    .trim()
            ));
        }
    }
    None
}

pub fn job_state(job: &Job) -> Setup {
    let conds = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let is = |t: &str| conds.iter().find(|c| c.type_ == t && c.status == "True");
    if is("Complete").is_some() {
        Setup::Succeeded
    } else if let Some(f) = is("Failed") {
        Setup::Failed(format!(
            "setup Job {} failed: {}",
            job.name_any(),
            f.message.clone().or(f.reason.clone()).unwrap_or_default()
        ))
    } else {
        Setup::Running
    }
}

/// When a Job got its `Failed` condition.
fn failed_since(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
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
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(error_backoff(1), Duration::from_secs(2));
        assert_eq!(error_backoff(3), Duration::from_secs(8));
        assert_eq!(error_backoff(40), Duration::from_secs(256));
    }

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
                observed_generation: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        d.metadata.generation = Some(2);
        assert!(deployment_state(&d).rolled_out());
        d.metadata.generation = Some(3);
        assert!(!deployment_state(&d).rolled_out());
    }

    #[test]
    fn stuck_setup_pods_are_explained() {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
            PodStatus,
        };
        let pod = |state: ContainerState, last: Option<ContainerState>| Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("c-setup-x".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "setup".into(),
                    restart_count: 3,
                    state: Some(state),
                    last_state: last,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let waiting = |r: &str, m: &str| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(r.into()),
                message: Some(m.into()),
            }),
            ..Default::default()
        };
        let crashed = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 2,
                reason: Some("Error".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = setup_pod_trouble(&pod(
            waiting("CrashLoopBackOff", "back-off 40s"),
            Some(crashed.clone()),
        ))
        .unwrap();
        assert!(m.contains("CrashLoopBackOff after 3 restarts"), "{m}");
        assert!(m.contains("last exit 2 (Error)"), "{m}");
        let m = setup_pod_trouble(&pod(waiting("ImagePullBackOff", "not found"), None)).unwrap();
        assert!(
            m.contains("ImagePullBackOff") && m.contains("not found"),
            "{m}"
        );
        assert_eq!(
            setup_pod_trouble(&pod(waiting("ContainerCreating", ""), None)),
            None
        );
        assert!(setup_pod_trouble(&pod(crashed, None)).is_some());
    }

    #[test]
    fn job_states() {
        let job = |t: &str| Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: t.into(),
                    status: "True".into(),
                    message: Some("boom".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(job_state(&job("Complete")), Setup::Succeeded);
        assert!(matches!(job_state(&job("Failed")), Setup::Failed(m) if m.contains("boom")));
        assert_eq!(job_state(&Job::default()), Setup::Running);
    }

    #[test]
    fn only_labelled_user_secrets_are_watched() {
        assert_eq!(
            user_secret_watch().label_selector.as_deref(),
            Some("chat.tern.dev/watch=true")
        );
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
