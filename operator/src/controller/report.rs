//! What a reconcile tells the user: the status subresource (conditions from
//! [`crate::status::conditions`], written with server-side apply under the one field
//! manager) and Kubernetes events for condition transitions and other notable steps.

use super::Reconciler;
use crate::crd::{ChatCluster, ChatClusterStatus, Role};
use crate::error::Result;
use crate::resources::selector_string;
use crate::status::{self, Observed};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::Patch;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

impl Reconciler<'_> {
    /// Compute conditions, write the status (server-side apply on the status subresource)
    /// and publish events for transitions.
    pub(super) async fn finish_status(
        &self,
        status: &mut ChatClusterStatus,
        obs: &Observed,
    ) -> Result<()> {
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

    pub(super) async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
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
