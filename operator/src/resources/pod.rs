//! The chat-server container and pod template shared by the edge, delivery and presence
//! Deployments and the setup Job.

use super::config::{self, DATA_DIR, MEDIA_DIR};
use super::env::{field_env, plain_env, secret_env};
use super::{CHAT_PORT, CHECKSUM_ANNOTATION, METRICS_PORT, labels};
use crate::crd::ChatCluster;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    HTTPGetAction, LocalObjectReference, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// UID the chat-server image runs as (see `docker/chat-server.Dockerfile`).
pub const RUN_AS_USER: i64 = 10001;
/// Where an edge pod mounts the `spec.edge.tls` Secret (`tls.crt`, `tls.key`).
pub const TLS_DIR: &str = "/etc/tern/tls";

/// Whether pods of `role` serve TLS on the client port: edge pods with `spec.edge.tls`.
pub fn serves_tls(cluster: &ChatCluster, role: Option<&str>) -> bool {
    role == Some("edge") && cluster.spec.edge.tls.is_some()
}

/// Name of the client port of `role`'s pods: `https` when they serve TLS, else `http`.
pub fn client_port_name(cluster: &ChatCluster, role: Option<&str>) -> &'static str {
    if serves_tls(cluster, role) {
        "https"
    } else {
        "http"
    }
}

/// Environment beyond the shared ConfigMap: the role, the node id from the pod name and every
/// secret value (by reference, never copied into the spec).
pub fn role_env(cluster: &ChatCluster, role: Option<&str>) -> Vec<EnvVar> {
    let s = &cluster.spec;
    let mut env = Vec::new();
    if let Some(role) = role {
        env.push(plain_env("CHAT_ROLE", role));
        env.push(plain_env("CHAT_LISTEN", format!("0.0.0.0:{CHAT_PORT}")));
        // /metrics on its own port, off the client port (and off the client Service).
        env.push(plain_env(
            "CHAT_METRICS_LISTEN",
            format!("0.0.0.0:{METRICS_PORT}"),
        ));
    }
    if serves_tls(cluster, role) {
        env.push(plain_env("CHAT_TLS_CERT", format!("{TLS_DIR}/tls.crt")));
        env.push(plain_env("CHAT_TLS_KEY", format!("{TLS_DIR}/tls.key")));
    }
    env.push(field_env("CHAT_NODE_ID", "metadata.name"));
    let (jwt_name, jwt_key) = config::jwt_secret_ref(cluster);
    env.push(secret_env("CHAT_JWT_SECRET", &jwt_name, &jwt_key));
    if let Some(r) = s
        .kafka
        .external
        .as_ref()
        .and_then(|e| e.credentials_secret_ref.as_ref())
    {
        env.push(secret_env("CHAT_KAFKA_SASL_USERNAME", &r.name, "username"));
        env.push(secret_env("CHAT_KAFKA_SASL_PASSWORD", &r.name, "password"));
        let mut mech = secret_env("CHAT_KAFKA_SASL_MECHANISM", &r.name, "mechanism");
        if let Some(sel) = mech
            .value_from
            .as_mut()
            .and_then(|v| v.secret_key_ref.as_mut())
        {
            sel.optional = Some(true);
        }
        env.push(mech);
    }
    if let Some(r) = s
        .scylla
        .external
        .as_ref()
        .and_then(|e| e.credentials_secret_ref.as_ref())
    {
        env.push(secret_env("CHAT_SCYLLA_USERNAME", &r.name, "username"));
        env.push(secret_env("CHAT_SCYLLA_PASSWORD", &r.name, "password"));
    }
    if let Some(r) = s
        .redis
        .external
        .as_ref()
        .and_then(|e| e.url_secret_ref.as_ref())
    {
        env.push(secret_env("CHAT_REDIS_URL", &r.name, &r.key));
    }
    if let Some(s3) = s.media.as_ref().and_then(|m| m.s3.as_ref()) {
        let n = &s3.credentials_secret_ref.name;
        env.push(secret_env("AWS_ACCESS_KEY_ID", n, "accessKeyId"));
        env.push(secret_env("AWS_SECRET_ACCESS_KEY", n, "secretAccessKey"));
    }
    env
}

/// A probe of the client port (over HTTPS when it serves TLS: the kubelet does not check the
/// certificate), so that it checks the path clients take.
fn http_probe(port: &str, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            scheme: (port == "https").then(|| "HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// Restricted-profile security context for chat-server containers.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pod-level security context (restricted Pod Security Standard).
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The chat-server container. `role` is `Some` for a serving role (`chat-server serve`) and
/// `None` for the setup Job (`chat-server setup`).
pub fn chat_container(
    cluster: &ChatCluster,
    role: Option<&str>,
    resources: Option<&ResourceRequirements>,
) -> Container {
    let s = &cluster.spec;
    let serving = role.is_some();
    // The root filesystem is read-only: /tmp and the data directory are emptyDirs.
    let mut mounts = vec![
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        },
    ];
    if serving && s.media.as_ref().is_some_and(|m| m.volume.is_some()) {
        mounts.push(VolumeMount {
            name: "media".into(),
            mount_path: MEDIA_DIR.into(),
            ..Default::default()
        });
    }
    if serves_tls(cluster, role) {
        // The whole Secret as a directory (not subPath): the kubelet then updates the files
        // when the Secret changes, and chat-server reloads them.
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let port = client_port_name(cluster, role);
    Container {
        name: "chat-server".into(),
        image: Some(s.image.clone()),
        image_pull_policy: s.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["chat-server".into()]),
        args: Some(vec![if serving { "serve" } else { "setup" }.into()]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: cluster.config_name(),
                optional: Some(false),
            }),
            ..Default::default()
        }]),
        env: Some(role_env(cluster, role)),
        ports: serving.then(|| {
            vec![
                ContainerPort {
                    name: Some(port.into()),
                    container_port: CHAT_PORT,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
                ContainerPort {
                    name: Some("metrics".into()),
                    container_port: METRICS_PORT,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
            ]
        }),
        liveness_probe: serving.then(|| http_probe(port, "/healthz", 10, 3)),
        readiness_probe: serving.then(|| http_probe(port, "/readyz", 5, 2)),
        resources: resources.cloned(),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// Pod template of a chat-server role; `checksum` goes into an annotation so that a change of
/// configuration or secrets rolls the pods.
pub fn pod_template(
    cluster: &ChatCluster,
    component: &str,
    container: Container,
    checksum: &str,
) -> PodTemplateSpec {
    let s = &cluster.spec;
    let mut volumes = vec![
        Volume {
            name: "tmp".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
        Volume {
            name: "data".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ];
    if container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "media")
    {
        volumes.push(Volume {
            name: "media".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cluster.media_pvc_name(),
                read_only: Some(false),
            }),
            ..Default::default()
        });
    }
    if let Some(tls) = &s.edge.tls
        && container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "tls")
    {
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                // Readable by the pod's group (fsGroup), not by others.
                default_mode: Some(0o440),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(cluster, component)),
            annotations: Some(BTreeMap::from([(
                CHECKSUM_ANNOTATION.to_string(),
                checksum.to_string(),
            )])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(pod_security()),
            image_pull_secrets: (!s.image_pull_secrets.is_empty()).then(|| {
                s.image_pull_secrets
                    .iter()
                    .map(|n| LocalObjectReference { name: n.clone() })
                    .collect()
            }),
            volumes: Some(volumes),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    fn env_names(c: &Container) -> Vec<String> {
        c.env.iter().flatten().map(|e| e.name.clone()).collect()
    }

    #[test]
    fn serving_container_runs_the_role_with_probes() {
        let c = testing::dev();
        let ctr = chat_container(&c, Some("edge"), None);
        assert_eq!(
            ctr.command.as_deref(),
            Some(&["chat-server".to_string()][..])
        );
        assert_eq!(ctr.args.as_deref(), Some(&["serve".to_string()][..]));
        let env = ctr.env.clone().unwrap();
        assert_eq!(env[0].name, "CHAT_ROLE");
        assert_eq!(env[0].value.as_deref(), Some("edge"));
        assert_eq!(env[1].value.as_deref(), Some("0.0.0.0:8080"));
        let node = env.iter().find(|e| e.name == "CHAT_NODE_ID").unwrap();
        assert_eq!(
            node.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        let jwt = env.iter().find(|e| e.name == "CHAT_JWT_SECRET").unwrap();
        let sel = jwt
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (sel.name.as_str(), sel.key.as_str()),
            ("chat-jwt", "secret")
        );
        assert_eq!(
            ctr.env_from.unwrap()[0]
                .config_map_ref
                .as_ref()
                .unwrap()
                .name,
            "chat-config"
        );
        assert!(ctr.readiness_probe.is_some() && ctr.liveness_probe.is_some());
        assert_eq!(ctr.security_context.unwrap().run_as_non_root, Some(true));
    }

    fn env_value(c: &Container, name: &str) -> Option<String> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    fn probe_port(p: &Option<Probe>) -> (String, Option<String>) {
        let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
        let IntOrString::String(port) = &get.port else {
            panic!("probe port by name")
        };
        (port.clone(), get.scheme.clone())
    }

    /// Every role serves /metrics on the `metrics` port (9090), apart from the client port.
    #[test]
    fn roles_serve_metrics_on_their_own_port() {
        let c = testing::dev();
        for role in ["edge", "delivery", "presence"] {
            let ctr = chat_container(&c, Some(role), None);
            let ports: Vec<_> = ctr
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap(), p.container_port))
                .collect();
            assert_eq!(
                ports,
                [("http".to_string(), 8080), ("metrics".to_string(), 9090)]
            );
            assert_eq!(
                env_value(&ctr, "CHAT_METRICS_LISTEN").as_deref(),
                Some("0.0.0.0:9090")
            );
            assert_eq!(env_value(&ctr, "CHAT_TLS_CERT"), None);
            assert_eq!(probe_port(&ctr.readiness_probe), ("http".into(), None));
        }
        let setup = chat_container(&c, None, None);
        assert_eq!(env_value(&setup, "CHAT_METRICS_LISTEN"), None);
    }

    /// `spec.edge.tls`: edge pods mount the Secret, serve HTTPS on a port named `https` and
    /// are probed over HTTPS; other roles are unchanged.
    #[test]
    fn tls_edge_mounts_the_secret_and_is_probed_over_https() {
        let c = testing::cluster(serde_json::json!({
            "image": "i:1", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "edge": {"tls": {"secretName": "edge-tls"}}
        }));
        let ctr = chat_container(&c, Some("edge"), None);
        assert_eq!(
            env_value(&ctr, "CHAT_TLS_CERT").as_deref(),
            Some("/etc/tern/tls/tls.crt")
        );
        assert_eq!(
            env_value(&ctr, "CHAT_TLS_KEY").as_deref(),
            Some("/etc/tern/tls/tls.key")
        );
        let mount = ctr
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "tls")
            .unwrap();
        assert_eq!(
            (
                mount.mount_path.as_str(),
                mount.read_only,
                mount.sub_path.is_none()
            ),
            (TLS_DIR, Some(true), true)
        );
        assert_eq!(
            ctr.ports.as_ref().unwrap()[0].name.as_deref(),
            Some("https")
        );
        assert_eq!(
            probe_port(&ctr.liveness_probe),
            ("https".into(), Some("HTTPS".into()))
        );
        let t = pod_template(&c, "edge", ctr, "sum");
        let vol = t
            .spec
            .unwrap()
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "tls")
            .unwrap()
            .secret
            .unwrap();
        assert_eq!(vol.secret_name.as_deref(), Some("edge-tls"));
        assert_eq!(vol.default_mode, Some(0o440));

        let delivery = chat_container(&c, Some("delivery"), None);
        assert_eq!(env_value(&delivery, "CHAT_TLS_CERT"), None);
        assert!(
            delivery
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "tls")
        );
        assert_eq!(probe_port(&delivery.readiness_probe), ("http".into(), None));
        let t = pod_template(&c, "delivery", delivery, "sum");
        assert!(
            t.spec
                .unwrap()
                .volumes
                .unwrap()
                .iter()
                .all(|v| v.name != "tls")
        );
    }

    #[test]
    fn setup_container_has_no_role_or_probes() {
        let ctr = chat_container(&testing::dev(), None, None);
        assert_eq!(ctr.args.as_deref(), Some(&["setup".to_string()][..]));
        assert!(!env_names(&ctr).contains(&"CHAT_ROLE".to_string()));
        assert!(ctr.readiness_probe.is_none() && ctr.ports.is_none());
    }

    #[test]
    fn external_credentials_come_from_secrets() {
        let ctr = chat_container(&testing::external(), Some("delivery"), None);
        let names = env_names(&ctr);
        for n in [
            "CHAT_KAFKA_SASL_USERNAME",
            "CHAT_SCYLLA_PASSWORD",
            "CHAT_REDIS_URL",
            "AWS_ACCESS_KEY_ID",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing");
        }
        assert!(
            ctr.env
                .unwrap()
                .iter()
                .all(|e| e.name == "CHAT_ROLE" || e.name.ends_with("LISTEN") || e.value.is_none())
        );
    }

    #[test]
    fn template_carries_checksum_and_labels() {
        let c = testing::dev();
        let t = pod_template(&c, "edge", chat_container(&c, Some("edge"), None), "abc");
        let m = t.metadata.unwrap();
        assert_eq!(m.annotations.unwrap()[CHECKSUM_ANNOTATION], "abc");
        assert_eq!(m.labels.unwrap()["app.kubernetes.io/component"], "edge");
        let spec = t.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        // /tmp and the data directory, both writable on a read-only root filesystem.
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 2);
        assert!(volumes.iter().all(|v| v.empty_dir.is_some()));
    }

    /// Every path the chat-server writes is a mount: the read-only root filesystem never
    /// sees a write (a real node showed `create_dir_all` under /var/lib/tern failing).
    #[test]
    fn data_dir_and_tmp_are_writable_mounts() {
        let c = testing::dev();
        for ctr in [
            chat_container(&c, Some("edge"), None),
            chat_container(&c, None, None),
        ] {
            assert_eq!(
                ctr.security_context
                    .as_ref()
                    .unwrap()
                    .read_only_root_filesystem,
                Some(true)
            );
            let paths: Vec<_> = ctr
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.as_str())
                .collect();
            assert!(
                paths.contains(&"/tmp") && paths.contains(&DATA_DIR),
                "{paths:?}"
            );
        }
        let env = config::config_env(&c);
        assert_eq!(env["CHAT_DATA_DIR"], DATA_DIR);
        // dev has no spec.media: media is off rather than a directory on the root fs.
        assert_eq!(env["CHAT_MEDIA_DISABLED"], "true");
    }
}
