//! Managed Redis: one pod with an append-only file on its volume.

use super::DATA_VOLUME;
use crate::crd::ManagedSpec;
use crate::resources::config::REDIS_PORT;
use k8s_openapi::api::core::v1::{Container, ContainerPort, ExecAction, Probe, VolumeMount};

pub const DEFAULT_IMAGE: &str = "redis:7.4";
/// The official image's `redis` user and group (uid = gid = 999). Started as this user its
/// entrypoint skips the root-only `chown` of `/data` and the `gosu` step and runs
/// `redis-server` directly.
pub const UID: i64 = 999;

pub fn container(m: &ManagedSpec) -> (Container, Vec<(&'static str, i32)>) {
    let c = Container {
        name: "redis".into(),
        image: Some(m.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        args: Some(vec![
            "redis-server".into(),
            "--appendonly".into(),
            "yes".into(),
            "--dir".into(),
            "/data".into(),
            "--notify-keyspace-events".into(),
            "Ex".into(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["redis-cli".into(), "ping".into()]),
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: m.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/data".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    (c, vec![("redis", REDIS_PORT)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn appendonly_on_the_data_volume() {
        let c = testing::dev();
        let (ctr, ports) = container(c.spec.redis.managed.as_ref().unwrap());
        assert!(ctr.args.unwrap().contains(&"--appendonly".to_string()));
        assert_eq!(ctr.volume_mounts.unwrap()[0].mount_path, "/data");
        assert_eq!(ports, [("redis", 6379)]);
    }
}
