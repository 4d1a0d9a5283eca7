//! The shared `CHAT_*` environment (a ConfigMap), the generated JWT Secret, the list of Secrets
//! a cluster depends on, and the checksum that rolls pods when any of them changes.

use super::meta;
use crate::crd::{ChatCluster, Dependency};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Key of the generated JWT Secret.
pub const GENERATED_JWT_KEY: &str = "secret";
pub const KAFKA_PORT: i32 = 9092;
pub const KAFKA_CONTROLLER_PORT: i32 = 9093;
pub const CQL_PORT: i32 = 9042;
pub const REDIS_PORT: i32 = 6379;
/// The chat-server data directory: an `emptyDir` in every chat-server pod (the root
/// filesystem is read-only). Scratch only — the media spool; nothing durable lives there in
/// the distributed backend.
pub const DATA_DIR: &str = "/var/lib/tern";
/// Where media blobs live when `spec.media.volume` is used (a PVC mounted inside [`DATA_DIR`]).
pub const MEDIA_DIR: &str = "/var/lib/tern/media";

fn svc_host(cluster: &ChatCluster, service: &str) -> String {
    format!(
        "{service}.{}.svc",
        cluster.namespace().unwrap_or_else(|| "default".into())
    )
}

/// Host name of pod `i` of a managed dependency's StatefulSet.
pub fn dependency_pod_host(cluster: &ChatCluster, dep: Dependency, i: i32) -> String {
    format!(
        "{}-{i}.{}",
        cluster.dependency_name(dep),
        svc_host(cluster, &cluster.dependency_headless_name(dep))
    )
}

/// `CHAT_KAFKA_BROKERS`.
pub fn kafka_brokers(cluster: &ChatCluster) -> String {
    match &cluster.spec.kafka.external {
        Some(ext) => ext.brokers.join(","),
        None => format!(
            "{}:{KAFKA_PORT}",
            svc_host(cluster, &cluster.dependency_name(Dependency::Kafka))
        ),
    }
}

/// `CHAT_SCYLLA_NODES`: every managed pod is a contact point.
pub fn scylla_nodes(cluster: &ChatCluster) -> String {
    let s = &cluster.spec.scylla;
    match (&s.external, &s.managed) {
        (Some(ext), _) => ext.nodes.join(","),
        (None, Some(m)) => (0..m.replicas)
            .map(|i| {
                format!(
                    "{}:{CQL_PORT}",
                    dependency_pod_host(cluster, Dependency::Scylla, i)
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        (None, None) => String::new(),
    }
}

/// `CHAT_REDIS_URL` when it is not a secret (`None`: it comes from `urlSecretRef`).
pub fn redis_url(cluster: &ChatCluster) -> Option<String> {
    match &cluster.spec.redis.external {
        Some(ext) => ext.url.clone(),
        None => Some(format!(
            "redis://{}:{REDIS_PORT}",
            svc_host(cluster, &cluster.dependency_name(Dependency::Redis))
        )),
    }
}

/// The one SASL mechanism chat-server's Kafka client (librdkafka without SSL) can use.
pub const KAFKA_SASL_PLAIN: &str = "PLAIN";

/// `CHAT_KAFKA_SASL_MECHANISM`: set whenever external Kafka credentials are given
/// (`spec.kafka.external.saslMechanism`, `PLAIN` by default); `None` without credentials.
pub fn kafka_sasl_mechanism(cluster: &ChatCluster) -> Option<String> {
    let ext = cluster.spec.kafka.external.as_ref()?;
    ext.credentials_secret_ref.as_ref()?;
    Some(
        ext.sasl_mechanism
            .clone()
            .unwrap_or_else(|| KAFKA_SASL_PLAIN.into()),
    )
}

/// `CHAT_SCYLLA_REPLICATION`: `simple:N`, or `dc1:N,dc2:M` for NetworkTopologyStrategy;
/// `None` when neither is set (setup then chooses from the nodes it sees).
pub fn scylla_replication(cluster: &ChatCluster) -> Option<String> {
    let s = &cluster.spec.scylla;
    if s.datacenter_replication.is_empty() {
        s.replication_factor.map(|n| format!("simple:{n}"))
    } else {
        Some(
            s.datacenter_replication
                .iter()
                .map(|(dc, n)| format!("{dc}:{n}"))
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

/// The environment shared by every role and the setup Job (everything that is not secret).
pub fn config_env(cluster: &ChatCluster) -> BTreeMap<String, String> {
    let s = &cluster.spec;
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("CHAT_BACKEND", "distributed".into());
    set("CHAT_CLUSTER", cluster.cluster_id());
    set("CHAT_KAFKA_BROKERS", kafka_brokers(cluster));
    set("CHAT_KAFKA_PARTITIONS", s.kafka.partitions.to_string());
    if let Some(n) = s.kafka.replication_factor {
        set("CHAT_KAFKA_REPLICATION", n.to_string());
    }
    set("CHAT_SCYLLA_NODES", scylla_nodes(cluster));
    set("CHAT_SCYLLA_KEYSPACE", cluster.keyspace());
    if let Some(r) = scylla_replication(cluster) {
        set("CHAT_SCYLLA_REPLICATION", r);
    }
    if let Some(c) = &s.scylla.consistency {
        set("CHAT_SCYLLA_CONSISTENCY", c.clone());
    }
    if let Some(t) = &s.kafka.topic {
        set("CHAT_KAFKA_TOPIC", t.clone());
    }
    if let Some(mech) = kafka_sasl_mechanism(cluster) {
        // chat-server uses SASL only when a mechanism is set: without it the credentials
        // from the Secret would be ignored.
        set("CHAT_KAFKA_SASL_MECHANISM", mech);
    }
    if let Some(url) = redis_url(cluster) {
        set("CHAT_REDIS_URL", url);
    }
    set(
        "CHAT_HEARTBEAT_INTERVAL",
        s.edge.heartbeat_interval_seconds.to_string(),
    );
    set(
        "CHAT_DRAIN_TIMEOUT",
        s.edge.drain.timeout_seconds.to_string(),
    );
    set(
        "CHAT_RECONNECT_JITTER_MS",
        s.edge.drain.reconnect_jitter_ms.to_string(),
    );
    set("RUST_LOG", s.log_level.clone());
    set("CHAT_DATA_DIR", DATA_DIR.into());
    if s.media.is_none() {
        // No media storage configured: uploads are off (503 with a clear message) and no
        // process opens a blob directory.
        set("CHAT_MEDIA_DISABLED", "true".into());
    }
    if let Some(media) = &s.media {
        if let Some(s3) = &media.s3 {
            set("CHAT_MEDIA_S3_BUCKET", s3.bucket.clone());
            set("CHAT_MEDIA_S3_REGION", s3.region.clone());
            if let Some(ep) = &s3.endpoint {
                set("CHAT_MEDIA_S3_ENDPOINT", ep.clone());
                if ep.starts_with("http://") {
                    set("CHAT_MEDIA_S3_ALLOW_HTTP", "true".into());
                }
            }
        }
        if media.volume.is_some() {
            set("CHAT_MEDIA_DIR", MEDIA_DIR.into());
        }
    }
    env
}

/// The ConfigMap `<name>-config` with [`config_env`].
pub fn config_map(cluster: &ChatCluster) -> ConfigMap {
    ConfigMap {
        metadata: meta(cluster, cluster.config_name(), "config"),
        data: Some(config_env(cluster)),
        ..Default::default()
    }
}

/// The generated JWT Secret `<name>-jwt`, created once with `value` and then kept.
pub fn generated_jwt_secret(cluster: &ChatCluster, value: &str) -> Secret {
    Secret {
        metadata: meta(cluster, cluster.generated_jwt_name(), "auth"),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            GENERATED_JWT_KEY.to_string(),
            value.to_string(),
        )])),
        ..Default::default()
    }
}

/// A Secret the cluster needs and the keys it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    pub name: String,
    pub keys: Vec<String>,
    /// What it is for, in words (used in condition messages).
    pub purpose: &'static str,
}

/// The JWT secret: (Secret name, key). Generated when `spec.auth.jwtSecretRef` is unset.
pub fn jwt_secret_ref(cluster: &ChatCluster) -> (String, String) {
    match &cluster.spec.auth.jwt_secret_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (cluster.generated_jwt_name(), GENERATED_JWT_KEY.to_string()),
    }
}

/// Every user-provided Secret the pods read (the generated JWT Secret is not listed).
pub fn referenced_secrets(cluster: &ChatCluster) -> Vec<SecretUse> {
    let s = &cluster.spec;
    let mut out = Vec::new();
    if let Some(r) = &s.auth.jwt_secret_ref {
        out.push(SecretUse {
            name: r.name.clone(),
            keys: vec![r.key.clone()],
            purpose: "JWT signing secret (spec.auth.jwtSecretRef)",
        });
    }
    if let Some(r) = s
        .kafka
        .external
        .as_ref()
        .and_then(|e| e.credentials_secret_ref.as_ref())
    {
        out.push(SecretUse {
            name: r.name.clone(),
            keys: vec!["username".into(), "password".into()],
            purpose: "Kafka credentials (spec.kafka.external.credentialsSecretRef)",
        });
    }
    if let Some(r) = s
        .scylla
        .external
        .as_ref()
        .and_then(|e| e.credentials_secret_ref.as_ref())
    {
        out.push(SecretUse {
            name: r.name.clone(),
            keys: vec!["username".into(), "password".into()],
            purpose: "ScyllaDB credentials (spec.scylla.external.credentialsSecretRef)",
        });
    }
    if let Some(r) = s
        .redis
        .external
        .as_ref()
        .and_then(|e| e.url_secret_ref.as_ref())
    {
        out.push(SecretUse {
            name: r.name.clone(),
            keys: vec![r.key.clone()],
            purpose: "Redis URL (spec.redis.external.urlSecretRef)",
        });
    }
    if let Some(s3) = s.media.as_ref().and_then(|m| m.s3.as_ref()) {
        out.push(SecretUse {
            name: s3.credentials_secret_ref.name.clone(),
            keys: vec!["accessKeyId".into(), "secretAccessKey".into()],
            purpose: "S3 credentials (spec.media.s3.credentialsSecretRef)",
        });
    }
    if let Some(tls) = &s.edge.tls {
        out.push(SecretUse {
            name: tls.secret_name.clone(),
            keys: vec!["tls.crt".into(), "tls.key".into()],
            purpose: TLS_PURPOSE,
        });
    }
    out
}

const TLS_PURPOSE: &str = "edge TLS certificate (spec.edge.tls.secretName)";

/// The referenced Secrets that roll pods (or rerun setup) when they change: all but the edge
/// TLS Secret, whose mounted files the kubelet refreshes and chat-server reloads in place
/// (`--tls-reload-seconds`), so a renewed certificate does not disconnect every client. A
/// Secret that is also referenced for something else still rolls. `secrets`: name → data.
pub fn rolling_secrets(
    cluster: &ChatCluster,
    secrets: &BTreeMap<String, BTreeMap<String, ByteString>>,
) -> BTreeMap<String, BTreeMap<String, ByteString>> {
    let uses = referenced_secrets(cluster);
    let reloaded = |name: &str| {
        uses.iter()
            .filter(|u| u.name == name)
            .all(|u| u.purpose == TLS_PURPOSE)
            && uses.iter().any(|u| u.name == name)
    };
    secrets
        .iter()
        .filter(|(name, _)| !reloaded(name))
        .map(|(n, d)| (n.clone(), d.clone()))
        .collect()
}

/// Keys of [`config_env`] that change how the roles run but not what `chat-server setup`
/// creates: a change of one of them rolls the roles without a new setup Job.
pub const RUNTIME_ONLY_KEYS: [&str; 4] = [
    "RUST_LOG",
    "CHAT_HEARTBEAT_INTERVAL",
    "CHAT_DRAIN_TIMEOUT",
    "CHAT_RECONNECT_JITTER_MS",
];

/// Checksum naming the setup Job: [`checksum`] of the environment without
/// [`RUNTIME_ONLY_KEYS`] (the image, the endpoints, keyspace, topic, partitions, replication
/// and the secrets stay in).
pub fn setup_checksum(
    env: &BTreeMap<String, String>,
    image: &str,
    secrets: &BTreeMap<String, BTreeMap<String, ByteString>>,
) -> String {
    let mut env = env.clone();
    env.retain(|k, _| !RUNTIME_ONLY_KEYS.contains(&k.as_str()));
    checksum(&env, image, secrets)
}

/// Values in referenced Secrets that chat-server cannot use (the spec itself is checked at
/// admission; Secrets are not): a Kafka `mechanism` other than the spec's, a Redis URL that is
/// not `redis://` (no TLS in chat-server's Redis client). `secrets`: Secret name → data.
pub fn secret_value_problems(
    cluster: &ChatCluster,
    secrets: &BTreeMap<String, BTreeMap<String, ByteString>>,
) -> Vec<String> {
    let s = &cluster.spec;
    let value = |name: &str, key: &str| {
        secrets
            .get(name)
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
    };
    let mut out = Vec::new();
    if let (Some(r), Some(want)) = (
        s.kafka
            .external
            .as_ref()
            .and_then(|e| e.credentials_secret_ref.as_ref()),
        kafka_sasl_mechanism(cluster),
    ) && let Some(m) = value(&r.name, "mechanism")
        && m != want
    {
        out.push(format!(
            "Secret {} key mechanism is {m:?}, but chat-server can only use SASL {want} (its Kafka client is built without SSL: no SCRAM, OAUTHBEARER, GSSAPI or TLS); remove the key or set it to {want} (spec.kafka.external.saslMechanism chooses the mechanism)",
            r.name
        ));
    }
    if let Some(r) = s
        .redis
        .external
        .as_ref()
        .and_then(|e| e.url_secret_ref.as_ref())
        && let Some(url) = value(&r.name, &r.key)
    {
        if url.starts_with("rediss://") {
            out.push(format!(
                "Secret {} key {} holds a rediss:// URL: chat-server's Redis client is built without TLS; use redis:// (a trusted network, or a local TLS tunnel)",
                r.name, r.key
            ));
        } else if !url.starts_with("redis://") {
            out.push(format!(
                "Secret {} key {} must hold a redis:// URL",
                r.name, r.key
            ));
        }
    }
    out
}

/// Checksum of everything pods read at start: the config environment, the image and the
/// contents of every Secret they use (by name, sorted), hex SHA-256.
pub fn checksum(
    env: &BTreeMap<String, String>,
    image: &str,
    secrets: &BTreeMap<String, BTreeMap<String, ByteString>>,
) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(image.as_bytes());
    for (k, v) in env {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    for (name, data) in secrets {
        field(name.as_bytes());
        for (k, v) in data {
            field(k.as_bytes());
            field(&v.0);
        }
    }
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn managed_endpoints_point_at_in_cluster_services() {
        let c = testing::dev();
        let env = config_env(&c);
        assert_eq!(env["CHAT_BACKEND"], "distributed");
        assert_eq!(env["CHAT_CLUSTER"], "chat");
        assert_eq!(env["CHAT_KAFKA_BROKERS"], "chat-kafka.ns.svc:9092");
        assert_eq!(
            env["CHAT_SCYLLA_NODES"],
            "chat-scylla-0.chat-scylla-headless.ns.svc:9042"
        );
        assert_eq!(env["CHAT_REDIS_URL"], "redis://chat-redis.ns.svc:6379");
        assert_eq!(env["CHAT_SCYLLA_KEYSPACE"], "chat");
        assert_eq!(env["CHAT_KAFKA_PARTITIONS"], "32");
        assert_eq!(env["CHAT_DRAIN_TIMEOUT"], "20");
        // Replication unset: `chat-server setup` chooses it from the brokers and nodes it
        // sees (min(3, n)), so 3 managed brokers get a topic of 3 replicas.
        assert!(!env.contains_key("CHAT_SCYLLA_REPLICATION"));
        assert!(!env.contains_key("CHAT_KAFKA_REPLICATION"));
        assert!(!env.contains_key("CHAT_KAFKA_TOPIC"));
        assert_eq!(env["RUST_LOG"], "info");
    }

    #[test]
    fn replication_given_in_the_spec_is_passed_to_setup() {
        let mut c = testing::dev();
        c.spec.kafka.replication_factor = Some(2);
        c.spec.scylla.replication_factor = Some(3);
        let env = config_env(&c);
        assert_eq!(env["CHAT_KAFKA_REPLICATION"], "2");
        assert_eq!(env["CHAT_SCYLLA_REPLICATION"], "simple:3");
    }

    #[test]
    fn external_endpoints_and_secret_references() {
        let c = testing::external();
        let env = config_env(&c);
        assert_eq!(env["CHAT_KAFKA_BROKERS"], "k1:9092,k2:9092");
        assert_eq!(env["CHAT_SCYLLA_NODES"], "s1:9042");
        assert_eq!(env["CHAT_SCYLLA_KEYSPACE"], "chat_prod");
        assert!(!env.contains_key("CHAT_REDIS_URL"), "the URL is a secret");
        assert_eq!(env["CHAT_MEDIA_S3_BUCKET"], "media");
        assert_eq!(env["CHAT_SCYLLA_REPLICATION"], "dc1:3,dc2:2");
        assert_eq!(env["CHAT_SCYLLA_CONSISTENCY"], "local_quorum");
        assert_eq!(env["CHAT_KAFKA_TOPIC"], "prod.messages");
        let names: Vec<_> = referenced_secrets(&c).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["jwt", "kafka-creds", "scylla-creds", "redis", "s3"]);
        assert_eq!(jwt_secret_ref(&c), ("jwt".into(), "hs256".into()));
        assert_eq!(
            jwt_secret_ref(&testing::dev()),
            ("chat-jwt".into(), "secret".into())
        );
        assert!(referenced_secrets(&testing::dev()).is_empty());
    }

    #[test]
    fn checksum_changes_with_config_image_and_secrets() {
        let c = testing::dev();
        let env = config_env(&c);
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "jwt".to_string(),
            BTreeMap::from([("k".to_string(), ByteString(b"one".to_vec()))]),
        );
        let base = checksum(&env, "img:1", &secrets);
        assert_eq!(base.len(), 64);
        assert_eq!(base, checksum(&env, "img:1", &secrets), "deterministic");
        assert_ne!(base, checksum(&env, "img:2", &secrets));
        let mut env2 = env.clone();
        env2.insert("RUST_LOG".into(), "debug".into());
        assert_ne!(base, checksum(&env2, "img:1", &secrets));
        let mut s2 = secrets.clone();
        s2.get_mut("jwt")
            .unwrap()
            .insert("k".into(), ByteString(b"two".to_vec()));
        assert_ne!(base, checksum(&env, "img:1", &s2));
    }

    #[test]
    fn s3_settings_use_chat_server_names() {
        let mut c = testing::external();
        let s3 = c.spec.media.as_mut().unwrap().s3.as_mut().unwrap();
        s3.region = "eu-west-1".into();
        s3.endpoint = Some("http://minio.data.svc:9000".into());
        let env = config_env(&c);
        assert_eq!(env["CHAT_MEDIA_S3_REGION"], "eu-west-1");
        assert_eq!(env["CHAT_MEDIA_S3_ENDPOINT"], "http://minio.data.svc:9000");
        assert_eq!(env["CHAT_MEDIA_S3_ALLOW_HTTP"], "true");
        assert!(!env.contains_key("AWS_REGION") && !env.contains_key("AWS_ALLOW_HTTP"));
        let s3 = c.spec.media.as_mut().unwrap().s3.as_mut().unwrap();
        s3.endpoint = Some("https://s3.example.com".into());
        assert!(!config_env(&c).contains_key("CHAT_MEDIA_S3_ALLOW_HTTP"));
    }

    #[test]
    fn kafka_credentials_always_come_with_a_mechanism() {
        // Credentials without a mechanism were silently ignored by chat-server.
        let c = testing::external();
        assert_eq!(config_env(&c)["CHAT_KAFKA_SASL_MECHANISM"], "PLAIN");
        assert!(!config_env(&testing::dev()).contains_key("CHAT_KAFKA_SASL_MECHANISM"));
        let mut ok = BTreeMap::new();
        ok.insert(
            "kafka-creds".to_string(),
            BTreeMap::from([("mechanism".to_string(), ByteString(b"PLAIN".to_vec()))]),
        );
        ok.insert(
            "redis".to_string(),
            BTreeMap::from([("url".to_string(), ByteString(b"redis://r:6379".to_vec()))]),
        );
        assert!(secret_value_problems(&c, &ok).is_empty());
        let mut bad = ok.clone();
        bad.get_mut("kafka-creds")
            .unwrap()
            .insert("mechanism".into(), ByteString(b"SCRAM-SHA-512".to_vec()));
        bad.get_mut("redis")
            .unwrap()
            .insert("url".into(), ByteString(b"rediss://r:6380".to_vec()));
        let p = secret_value_problems(&c, &bad);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("kafka-creds") && p[0].contains("SCRAM-SHA-512"));
        assert!(p[1].contains("rediss://") && p[1].contains("without TLS"));
    }

    #[test]
    fn setup_checksum_ignores_runtime_only_settings() {
        let c = testing::dev();
        let env = config_env(&c);
        let none = BTreeMap::new();
        let base = setup_checksum(&env, "img:1", &none);
        for (k, v) in [
            ("RUST_LOG", "debug"),
            ("CHAT_HEARTBEAT_INTERVAL", "10"),
            ("CHAT_DRAIN_TIMEOUT", "60"),
        ] {
            let mut e = env.clone();
            e.insert(k.into(), v.into());
            assert_eq!(setup_checksum(&e, "img:1", &none), base, "{k}");
            assert_ne!(
                checksum(&e, "img:1", &none),
                checksum(&env, "img:1", &none),
                "{k} rolls the pods"
            );
        }
        let mut e = env.clone();
        e.insert("CHAT_KAFKA_PARTITIONS".into(), "64".into());
        assert_ne!(setup_checksum(&e, "img:1", &none), base);
        assert_ne!(setup_checksum(&env, "img:2", &none), base);
    }

    /// The edge TLS Secret must exist with its keys, but a renewed certificate is reloaded by
    /// the pods: it changes neither the pod checksum nor the setup Job.
    #[test]
    fn tls_secret_is_required_but_does_not_roll_pods() {
        let c = testing::cluster(serde_json::json!({
            "image": "i:1", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "auth": {"jwtSecretRef": {"name": "jwt", "key": "k"}},
            "edge": {"tls": {"secretName": "edge-tls"}}
        }));
        let uses = referenced_secrets(&c);
        let tls = uses.iter().find(|u| u.name == "edge-tls").unwrap();
        assert_eq!(tls.keys, ["tls.crt", "tls.key"]);
        let data = |v: &[u8]| {
            BTreeMap::from([
                ("tls.crt".to_string(), ByteString(v.to_vec())),
                ("tls.key".to_string(), ByteString(v.to_vec())),
            ])
        };
        let jwt = BTreeMap::from([("k".to_string(), ByteString(b"s".to_vec()))]);
        let one = BTreeMap::from([
            ("edge-tls".to_string(), data(b"one")),
            ("jwt".to_string(), jwt.clone()),
        ]);
        let mut two = one.clone();
        two.insert("edge-tls".into(), data(b"two"));
        let env = config_env(&c);
        let sum = |s: &BTreeMap<String, BTreeMap<String, ByteString>>| {
            let r = rolling_secrets(&c, s);
            (checksum(&env, "i:1", &r), setup_checksum(&env, "i:1", &r))
        };
        assert_eq!(sum(&one), sum(&two));
        assert_eq!(
            rolling_secrets(&c, &one).keys().collect::<Vec<_>>(),
            ["jwt"]
        );
        // The same Secret also holding the JWT key: it rolls.
        let shared = testing::cluster(serde_json::json!({
            "image": "i:1", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "auth": {"jwtSecretRef": {"name": "edge-tls", "key": "k"}},
            "edge": {"tls": {"secretName": "edge-tls"}}
        }));
        assert_eq!(rolling_secrets(&shared, &one).len(), 2);
    }

    #[test]
    fn config_map_and_generated_secret() {
        let c = testing::dev();
        let cm = config_map(&c);
        assert_eq!(cm.metadata.name.as_deref(), Some("chat-config"));
        assert_eq!(cm.data.unwrap()["CHAT_CLUSTER"], "chat");
        let s = generated_jwt_secret(&c, "abc");
        assert_eq!(s.metadata.name.as_deref(), Some("chat-jwt"));
        assert_eq!(s.string_data.unwrap()["secret"], "abc");
    }
}
