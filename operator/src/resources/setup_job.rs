//! The `chat-server setup` Job: creates the keyspace/tables and the Kafka topic. It is
//! idempotent, so a new Job runs whenever the setup-relevant configuration changes (its name
//! carries a hash of it, because a Job's pod template cannot be changed).

use super::config::hex;
use super::meta;
use super::pod::{chat_container, pod_template};
use crate::crd::ChatCluster;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use sha2::{Digest, Sha256};

/// Hash naming the setup Job: the config checksum (which covers image, endpoints,
/// partitions, replication and secrets).
pub fn setup_hash(config_checksum: &str) -> String {
    hex(&Sha256::digest(
        format!("setup/{config_checksum}").as_bytes(),
    ))
}

pub fn setup_job(cluster: &ChatCluster, config_checksum: &str) -> Job {
    let hash = setup_hash(config_checksum);
    let container = chat_container(cluster, None, None);
    let mut template = pod_template(cluster, "setup", container, config_checksum);
    if let Some(pod) = template.spec.as_mut() {
        pod.restart_policy = Some("OnFailure".into());
    }
    Job {
        metadata: meta(cluster, cluster.setup_job_name(&hash), "setup"),
        spec: Some(JobSpec {
            backoff_limit: Some(10),
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
        let a = setup_job(&c, "sum-a");
        let b = setup_job(&c, "sum-b");
        assert_ne!(a.metadata.name, b.metadata.name);
        assert!(a.metadata.name.as_ref().unwrap().starts_with("chat-setup-"));
        let spec = a.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(
            pod.containers[0].args.as_deref(),
            Some(&["setup".to_string()][..])
        );
    }
}
