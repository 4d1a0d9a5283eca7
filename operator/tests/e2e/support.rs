//! Shared helpers: API server connection, CRD install, namespaces, the in-process operator,
//! waiting with a dump on timeout, and envtest-style status fakes.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_operator::ChatCluster;
use tern_operator::controller::{self, Options};
use tern_operator::metrics::Metrics;
use tokio::sync::OnceCell;

pub const TEST_MANAGER: &str = "tern-e2e";

fn required() -> bool {
    std::env::var("TERN_REQUIRE_KUBE").is_ok_and(|v| v == "1")
}

/// A client for the test API server, or `None` (test skipped) when there is none.
pub async fn client() -> Option<Client> {
    let why = match std::env::var("KUBECONFIG") {
        Err(_) => "KUBECONFIG is not set".to_string(),
        Ok(_) => match Client::try_default().await {
            Err(e) => format!("cannot build a client: {e}"),
            Ok(c) => {
                match tokio::time::timeout(Duration::from_secs(5), c.apiserver_version()).await {
                    Ok(Ok(_)) => match has_nodes(&c).await {
                        false => return Some(c),
                        true => "a kubelet is registered (e2e/env node mode): this suite fakes \
                                 Job/StatefulSet/Deployment status, which real controllers would \
                                 overwrite, and would start real pods on that node; run it against \
                                 the bare API server"
                            .into(),
                    },
                    Ok(Err(e)) => format!("API server unreachable: {e}"),
                    Err(_) => "API server did not answer in 5 s".into(),
                }
            }
        },
    };
    if required() {
        panic!(
            "TERN_REQUIRE_KUBE=1 but {why}; start it with: e2e/env/up.sh etcd kube && eval \"$(e2e/env/env.sh)\""
        );
    }
    eprintln!(
        "SKIPPED: {why} (start one with `e2e/env/up.sh etcd kube && eval \"$(e2e/env/env.sh)\"`)"
    );
    None
}

/// Whether a kubelet is alive on this API server (its node Lease was renewed in the last
/// minute): then pods really run and the controllers write the status this suite fakes. A
/// Node object left in etcd by an earlier node-mode run does not count.
async fn has_nodes(client: &Client) -> bool {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = k8s_openapi::jiff::Timestamp::now();
    leases.list(&ListParams::default()).await.is_ok_and(|l| {
        l.items.iter().any(|lease| {
            lease
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .is_some_and(|t| now.duration_since(t.0).as_secs() < 60)
        })
    })
}

static CRD: OnceCell<()> = OnceCell::const_new();

/// Install (server-side apply) the CRD generated from the Rust types, once per test binary,
/// and wait until it is Established.
pub async fn install_crd(client: &Client) {
    CRD.get_or_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd = ChatCluster::crd();
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        wait_for("CRD Established", Duration::from_secs(30), || async {
            let c = api.get(&name).await.ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
        // Discovery needs a moment after Established.
        let clusters: Api<ChatCluster> = Api::all(client.clone());
        wait_for("ChatCluster served", Duration::from_secs(30), || async {
            clusters
                .list(&ListParams::default().limit(1))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    })
    .await;
}

/// A test's world: its namespace and, optionally, an operator watching it.
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
}

impl TestEnv {
    /// Connect, install the CRD, create a fresh namespace. `None`: skipped (see [`client`]).
    pub async fn new(prefix: &str) -> Option<TestEnv> {
        // Operator logs on stderr when RUST_LOG is set (e.g. RUST_LOG=tern_operator=debug).
        if let Ok(filter) = std::env::var("RUST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let client = client().await?;
        install_crd(&client).await;
        let ns = format!("{prefix}-{:08x}", rand::random::<u32>());
        let nsapi: Api<Namespace> = Api::all(client.clone());
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        nsapi
            .create(&PostParams::default(), &obj)
            .await
            .expect("create namespace");
        Some(TestEnv {
            client,
            ns,
            stop: None,
            operator: None,
        })
    }

    /// Start the operator in this process, watching only this namespace.
    pub fn start_operator(&mut self) {
        let client = self.client.clone();
        self.start_operator_with(client);
    }

    /// Start the operator with its own client (e.g. one impersonating a ServiceAccount);
    /// returns its metrics.
    pub fn start_operator_with(&mut self, client: Client) -> Arc<Metrics> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = Options {
            namespace: Some(self.ns.clone()),
            allow_scrape_override: true,
            probe_timeout: Duration::from_millis(700),
            instance: format!("e2e-{}", self.ns),
            ..Options::default()
        };
        let metrics = Arc::new(Metrics::default());
        self.operator = Some(tokio::spawn(controller::run(
            client,
            opts,
            metrics.clone(),
            async move {
                let _ = rx.await;
            },
        )));
        self.stop = Some(tx);
        metrics
    }

    /// Stop the operator, wait for it (graceful shutdown of the controller), then delete the
    /// namespace's Services: without a namespace controller nothing else frees their cluster
    /// IPs, and the test API server's service range is small.
    pub async fn stop_operator(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), h).await;
        }
        let svcs = self.api::<Service>();
        if let Ok(list) = svcs.list(&ListParams::default()).await {
            for s in list {
                let _ = svcs.delete(&s.name_any(), &Default::default()).await;
            }
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Create (server-side apply) a ChatCluster from JSON `spec`.
    pub async fn apply_cluster(&self, name: &str, spec: serde_json::Value) -> ChatCluster {
        let obj = json!({
            "apiVersion": "chat.tern.dev/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.api::<ChatCluster>()
            .patch(
                name,
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("apply ChatCluster {name}: {e}"))
    }

    pub async fn create_secret(&self, name: &str, data: &[(&str, &str)]) {
        let string_data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            // The label makes the operator watch it (a rotation reconciles at once).
            "metadata": {"name": name, "labels": {"chat.tern.dev/watch": "true"}},
            "stringData": string_data
        }))
        .unwrap();
        self.api::<Secret>()
            .patch(
                name,
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&s),
            )
            .await
            .expect("apply secret");
    }

    /// Everything about a cluster, for failure messages.
    pub async fn dump(&self, cluster: &str) -> String {
        let mut out = format!("--- namespace {} ---\n", self.ns);
        if let Ok(c) = self.api::<ChatCluster>().get(cluster).await {
            out += &format!(
                "ChatCluster {cluster} generation {:?} status:\n{}\n",
                c.metadata.generation,
                serde_json::to_string_pretty(&c.status).unwrap_or_default()
            );
        }
        if let Ok(evs) = self.api::<Event>().list(&ListParams::default()).await {
            for e in evs {
                out += &format!(
                    "event {} {} {}: {}\n",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.regarding.and_then(|r| r.name).unwrap_or_default(),
                    e.note.unwrap_or_default()
                );
            }
        }
        if let Ok(js) = self.api::<Job>().list(&ListParams::default()).await {
            for j in js {
                let name = j.name_any();
                let conds: Vec<String> = j
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.status == "True")
                    .map(|c| c.type_)
                    .collect();
                out += &format!("job {name} conditions {conds:?}\n");
            }
        }
        if let Ok(ds) = self.api::<Deployment>().list(&ListParams::default()).await {
            for d in ds {
                out += &format!(
                    "deployment {} replicas {:?}\n",
                    d.name_any(),
                    d.spec.and_then(|s| s.replicas)
                );
            }
        }
        out
    }

    /// Wait for `f` to give `Some`, or panic with `what` and a dump of `cluster`.
    pub async fn wait<T, F, Fut>(&self, cluster: &str, what: &str, timeout: Duration, f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        match try_wait(timeout, f).await {
            Some(v) => v,
            None => panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.dump(cluster).await
            ),
        }
    }

    /// The ChatCluster's condition `type_` as (status, reason).
    pub async fn condition(&self, cluster: &str, type_: &str) -> Option<(String, String, String)> {
        let c = self.api::<ChatCluster>().get(cluster).await.ok()?;
        let cond = c
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)?;
        Some((cond.status, cond.reason, cond.message))
    }

    /// Wait until condition `type_` has `status` and `reason`.
    pub async fn wait_condition(
        &self,
        cluster: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> String {
        self.wait(
            cluster,
            &format!("{type_}={status} ({reason})"),
            Duration::from_secs(45),
            || async {
                let (s, r, m) = self.condition(cluster, type_).await?;
                (s == status && r == reason).then_some(m)
            },
        )
        .await
    }

    /// Reasons of events about `cluster`.
    pub async fn event_reasons(&self, cluster: &str) -> Vec<String> {
        self.api::<Event>()
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter(|e| {
                        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(cluster)
                    })
                    .filter_map(|e| e.reason)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nudge a reconcile by changing an annotation (metadata changes trigger the watch).
    pub async fn poke(&self, cluster: &str) {
        let patch = json!({"metadata": {"annotations": {"e2e/poke": format!("{:x}", rand::random::<u64>())}}});
        self.api::<ChatCluster>()
            .patch(cluster, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("poke");
    }

    /// envtest-style: report every Deployment of the namespace as fully rolled out.
    pub async fn mark_deployments_ready(&self) {
        let api = self.api::<Deployment>();
        for d in api
            .list(&ListParams::default())
            .await
            .expect("list deployments")
        {
            let n = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = json!({"status": {
                "observedGeneration": d.metadata.generation, "replicas": n, "readyReplicas": n,
                "updatedReplicas": n, "availableReplicas": n}});
            api.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&st))
                .await
                .expect("patch deployment status");
        }
    }

    /// envtest-style: every StatefulSet ready.
    pub async fn mark_statefulsets_ready(&self) {
        let api = self.api::<StatefulSet>();
        for s in api
            .list(&ListParams::default())
            .await
            .expect("list statefulsets")
        {
            let n = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = json!({"status": {
                "observedGeneration": s.metadata.generation, "replicas": n, "readyReplicas": n,
                "currentReplicas": n, "updatedReplicas": n, "availableReplicas": n}});
            api.patch_status(&s.name_any(), &PatchParams::default(), &Patch::Merge(&st))
                .await
                .expect("patch statefulset status");
        }
    }

    /// envtest-style: every Job of the namespace completed successfully.
    ///
    /// This API server has no kubelet and no Job controller, so a setup Job never runs. Its
    /// status is written here through the status subresource, as the Job controller would
    /// after `chat-server setup` exited 0 (`SuccessCriteriaMet` + `Complete`, which the API
    /// server's Job status validation requires together). The operator starts the roles only
    /// after this: tests that need role Deployments call it (or [`Self::complete_setup`]).
    pub async fn mark_jobs_complete(&self) {
        let api = self.api::<Job>();
        for j in api.list(&ListParams::default()).await.expect("list jobs") {
            self.finish_job(&j.name_any(), true).await;
        }
    }

    /// Write a terminal Job status (see [`Self::mark_jobs_complete`]): `Complete`, or
    /// `Failed` with reason `BackoffLimitExceeded` as the Job controller reports it.
    pub async fn finish_job(&self, name: &str, success: bool) {
        self.finish_job_at(name, success, 0).await;
    }

    /// [`Self::finish_job`] with the terminal conditions dated `age_secs` seconds ago (for a
    /// Job that already finished: only the conditions are rewritten).
    pub async fn finish_job_at(&self, name: &str, success: bool, age_secs: i64) {
        let now = k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(age_secs);
        let start = now - k8s_openapi::jiff::SignedDuration::from_secs(5);
        let st = if success {
            json!({"status": {
            "startTime": start.to_string(), "completionTime": now.to_string(), "succeeded": 1,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now.to_string()},
                {"type": "Complete", "status": "True", "lastTransitionTime": now.to_string()}
            ]}})
        } else {
            json!({"status": {
            "startTime": start.to_string(), "failed": 11,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit", "lastTransitionTime": now.to_string()},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit", "lastTransitionTime": now.to_string()}
            ]}})
        };
        let mut st = st;
        // Keep a start time that is already set (it cannot change).
        if let Some(t) = self
            .api::<Job>()
            .get(name)
            .await
            .ok()
            .and_then(|j| j.status?.start_time)
        {
            st["status"]["startTime"] = json!(t.0.to_string());
        }
        if age_secs > 0 {
            // Re-dating a finished Job: only its conditions (the start time is fixed).
            let conds = st["status"]["conditions"].take();
            st = json!({"status": {"conditions": conds}});
        }
        self.api::<Job>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .unwrap_or_else(|e| panic!("patch status of Job {name}: {e}"));
    }

    /// Stand-in for the Job controller (see [`Self::mark_jobs_complete`]): wait until the
    /// operator created a setup Job of `cluster` that has not finished (the one of the
    /// configuration in force), mark it `Complete` (`success`) or `Failed`, and return its name.
    pub async fn finish_setup(&self, cluster: &str, success: bool) -> String {
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={cluster},app.kubernetes.io/component=setup"
        ));
        let api = self.api::<Job>();
        let name = self
            .wait(
                cluster,
                "an unfinished setup Job",
                Duration::from_secs(45),
                || async {
                    api.list(&lp)
                        .await
                        .ok()?
                        .items
                        .into_iter()
                        .find(|j| {
                            j.metadata.deletion_timestamp.is_none()
                                && !j
                                    .status
                                    .as_ref()
                                    .and_then(|s| s.conditions.as_ref())
                                    .is_some_and(|c| {
                                        c.iter().any(|c| {
                                            (c.type_ == "Complete" || c.type_ == "Failed")
                                                && c.status == "True"
                                        })
                                    })
                        })
                        .map(|j| j.name_any())
                },
            )
            .await;
        self.finish_job(&name, success).await;
        name
    }

    /// [`Self::finish_setup`] with success: the roles of `cluster` may start.
    pub async fn complete_setup(&self, cluster: &str) -> String {
        self.finish_setup(cluster, true).await
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Poll `f` every 200 ms until it gives `Some` or `timeout` passes.
pub async fn try_wait<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Like [`TestEnv::wait`] without a cluster to dump.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    try_wait(timeout, f)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// A spec with every dependency external, pointing at `addr` (a listener the test owns).
pub fn external_spec(addr: &str) -> serde_json::Value {
    json!({
        "image": "tern/chat-server:test",
        "kafka": {"external": {"brokers": [addr]}},
        "scylla": {"external": {"nodes": [addr]}},
        "redis": {"external": {"url": format!("redis://{addr}")}}
    })
}

/// The repository root (for examples/, charts/, crds/).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
