//! The `chat-server setup` Job: creates the keyspace/tables and the Kafka topic. It is
//! idempotent, so a new Job runs whenever the setup-relevant configuration changes (its name
//! carries a hash of it, because a Job's pod template cannot be changed).
//!
//! Waiting for the dependencies is chat-server's part: `chat-server setup` retries the CQL
//! connection and the topic creation for `CHAT_SETUP_TIMEOUT` (default 300 s, enough for a
//! managed Cassandra's 30–90 s start), then exits non-zero; the Job restarts it
//! (`OnFailure`, up to [`BACKOFF_LIMIT`] times, within [`ACTIVE_DEADLINE_SECONDS`]). A Job
//! that failed anyway is replaced by the reconciler after [`retry_delay`].

use super::config::hex;
use super::meta;
use super::pod::{chat_container, pod_template};
use crate::crd::ChatCluster;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Job annotation: which attempt (1, 2, …) at the setup of this configuration the Job is.
pub const ATTEMPT_ANNOTATION: &str = "chat.tern.dev/setup-attempt";
/// Container restarts before the Job is Failed.
pub const BACKOFF_LIMIT: i32 = 10;
/// A setup still not done after this long is Failed (and retried by the reconciler).
pub const ACTIVE_DEADLINE_SECONDS: i64 = 1800;

/// How long a Failed setup Job of attempt `attempt` is kept (for `kubectl describe`/`logs`)
/// before the reconciler replaces it with attempt `attempt + 1`: 1 min, doubling, at most
/// 15 min.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(60u64 << attempt.clamp(1, 5).saturating_sub(1))
        .min(Duration::from_secs(900))
}

/// The attempt number of a setup Job (1 when unannotated).
pub fn attempt(job: &Job) -> u32 {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ATTEMPT_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Hash naming the setup Job: the config checksum (which covers image, endpoints,
/// partitions, replication and secrets).
pub fn setup_hash(config_checksum: &str) -> String {
    hex(&Sha256::digest(
        format!("setup/{config_checksum}").as_bytes(),
    ))
}

/// Resources of the setup container: those of the delivery role when set (it talks to the
/// same services), else requests of 100m CPU and 128Mi memory with a 512Mi memory limit.
pub fn setup_resources(cluster: &ChatCluster) -> ResourceRequirements {
    if let Some(r) = &cluster.spec.delivery.resources {
        return r.clone();
    }
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("100m")),
            ("memory".to_string(), q("128Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), q("512Mi"))])),
        ..Default::default()
    }
}

/// Attempt `attempt` (from 1) at the setup Job of `config_checksum`.
pub fn setup_job(cluster: &ChatCluster, config_checksum: &str, attempt: u32) -> Job {
    let hash = setup_hash(config_checksum);
    let container = chat_container(cluster, None, Some(&setup_resources(cluster)));
    let mut template = pod_template(cluster, "setup", container, config_checksum);
    if let Some(pod) = template.spec.as_mut() {
        pod.restart_policy = Some("OnFailure".into());
    }
    let mut metadata = meta(cluster, cluster.setup_job_name(&hash), "setup");
    metadata.annotations = Some(BTreeMap::from([(
        ATTEMPT_ANNOTATION.to_string(),
        attempt.to_string(),
    )]));
    Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn job_name_follows_config() {
        let c = testing::dev();
        let a = setup_job(&c, "sum-a", 1);
        let b = setup_job(&c, "sum-b", 1);
        assert_ne!(a.metadata.name, b.metadata.name);
        let again = setup_job(&c, "sum-a", 2);
        assert_eq!(
            again.metadata.name, a.metadata.name,
            "a retry keeps the name"
        );
        assert_eq!((attempt(&a), attempt(&again)), (1, 2));
        assert_eq!(attempt(&Job::default()), 1);
        assert!(a.metadata.name.as_ref().unwrap().starts_with("chat-setup-"));
        let spec = a.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(BACKOFF_LIMIT));
        assert!(spec.active_deadline_seconds.unwrap() >= 600);
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(
            pod.containers[0].args.as_deref(),
            Some(&["setup".to_string()][..])
        );
    }

    #[test]
    fn setup_container_has_resources() {
        let res = |c: &ChatCluster| {
            let job = setup_job(c, "sum", 1);
            job.spec.unwrap().template.spec.unwrap().containers[0]
                .resources
                .clone()
                .expect("setup container resources")
        };
        let r = res(&testing::dev());
        assert_eq!(r.requests.unwrap()["memory"].0, "128Mi");
        assert_eq!(r.limits.unwrap()["memory"].0, "512Mi");
        let c = testing::cluster(serde_json::json!({
            "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "delivery": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}
        }));
        assert_eq!(res(&c).requests.unwrap()["memory"].0, "1Gi");
    }

    #[test]
    fn failed_setup_is_retried_with_growing_delay() {
        let d: Vec<u64> = (1..=7).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(d, [60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(retry_delay(0).as_secs(), 60);
    }
}
