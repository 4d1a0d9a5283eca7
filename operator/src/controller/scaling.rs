//! The scaling path: edge replicas from live connection counts. Scrapes `chat_connections`
//! from the edge pods ([`crate::scrape`]), runs the pure decision ([`crate::autoscale`]) with
//! what it remembers per cluster, marks each pod's `pod-deletion-cost` with its connections,
//! and fills `status.edge` (desired replicas, connections, last scale). The reconcile path
//! applies the resulting replica count.

use super::{Reconciler, key};
use crate::autoscale::{self, Direction, Policy, ScaleState};
use crate::crd::{EdgeStatus, Role};
use crate::error::Result;
use crate::metrics::{ClusterLabels, ScaleLabels};
use crate::resources::selector_string;
use crate::scrape::{self, SCRAPE_TARGETS_ANNOTATION, Sample, Target};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Pod annotation the ReplicaSet controller reads when choosing pods to remove.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// How often connections are read when autoscaling is off (for `status.edge.connections`).
const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(30);

/// What the autoscaler remembers per cluster.
pub(super) struct ScaleMemory {
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

impl Reconciler<'_> {
    /// Scrape the edge pods when due, run the autoscaler, set `desired_replicas`,
    /// `connections` and the scale fields. Returns when to look again.
    pub(super) async fn edge_scaling(&self, edge: &mut EdgeStatus) -> Result<Duration> {
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
}
