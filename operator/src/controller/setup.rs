//! The setup Job that gates the roles: one per configuration (schema, tables, topic),
//! created after the managed dependencies, replaced after a delay when it failed, and the
//! Jobs of earlier configurations removed once it succeeded. Its [`Setup`] state feeds
//! [`crate::status::roles_gate`].

use super::Reconciler;
use crate::error::Result;
use crate::resources::{selector_string, setup_job};
use crate::status::Setup;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use std::time::Duration;
use tracing::{info, warn};

impl Reconciler<'_> {
    /// Create the setup Job for this configuration if missing; replace a Failed one once its
    /// retry delay has passed (until then it stays for `kubectl describe`/`logs`); once it
    /// succeeded, delete the Jobs of earlier configurations. Also returns when to look again
    /// (a retry due).
    pub(super) async fn setup(&self, sum: &str) -> Result<(Setup, Option<Duration>)> {
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
}

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

/// A Job's state from its conditions. Pure.
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

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
}
