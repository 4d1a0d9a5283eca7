//! The `ChatCluster` controller: watches clusters and what they own, and reconciles each one.
//! It looks up what the builders need (Secrets, live objects, connection counts), applies the
//! built objects with server-side apply under one field manager, and reports status,
//! conditions and events. It builds no object itself.
//!
//! - this module: operator [`Options`], the shared [`Context`], the watches ([`run`]), the
//!   error back-off, and the per-reconcile `Reconciler`;
//! - `apply`: server-side apply of owned objects (refusals recorded, not fatal) and removal
//!   of components no longer wanted;
//! - `reconcile`: the reconcile path, step by step;
//! - `setup`: the setup Job that gates the role Deployments;
//! - `scaling`: edge replicas from live connection counts (scrape, autoscaler, deletion cost);
//! - `report`: the status subresource and events.

mod apply;
mod reconcile;
#[cfg(test)]
mod reconcile_tests;
mod report;
mod scaling;
mod setup;

pub use reconcile::{claim_templates_differ, deployment_state};
pub use scaling::DELETION_COST_ANNOTATION;
pub use setup::{job_state, setup_pod_trouble};

use crate::crd::ChatCluster;
use crate::error::{Error, Result};
use crate::metrics::{ErrorLabels, Metrics};
use crate::resources::FIELD_MANAGER;
use crate::resources::config::referenced_secrets;
use crate::status::Rejection;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use scaling::ScaleMemory;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, instrument, warn};

/// Label that makes a user Secret's changes reconcile the ChatClusters referencing it at once
/// (the operator watches only Secrets with it, and its own). Unlabelled referenced Secrets
/// are still read by name on every reconcile, so a change is seen within the resync period.
pub const SECRET_WATCH_LABEL: &str = "chat.tern.dev/watch";

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(error_backoff(1), Duration::from_secs(2));
        assert_eq!(error_backoff(3), Duration::from_secs(8));
        assert_eq!(error_backoff(40), Duration::from_secs(256));
    }

    #[test]
    fn only_labelled_user_secrets_are_watched() {
        assert_eq!(
            user_secret_watch().label_selector.as_deref(),
            Some("chat.tern.dev/watch=true")
        );
    }
}
