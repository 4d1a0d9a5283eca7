//! The `ChatCluster` custom resource (`chat.tern.dev/v1alpha1`): spec, status and the naming
//! helpers that the builders, the reconciler and the tests share.
//!
//! The doc comments on the spec fields are the user documentation: `crdgen` copies them into
//! the CRD's OpenAPI schema (`kubectl explain chatcluster.spec.edge`).

use k8s_openapi::api::core::v1::{ResourceRequirements, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema, ResourceExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Desired state of a Tern chat platform: the chat-server roles and their dependencies.
// Several `printcolumn(type_ = …)` look like repeated attributes to clippy.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "chat.tern.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    namespaced,
    status = "ChatClusterStatus",
    shortname = "chat",
    category = "tern",
    doc = "A Tern chat platform: edge, delivery and presence roles of chat-server plus Kafka, a CQL store (ScyllaDB or Cassandra) and Redis (external or managed).",
    scale(
        spec_replicas_path = ".spec.edge.replicas",
        status_replicas_path = ".status.edge.replicas",
        label_selector_path = ".status.edge.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Edge",
        type_ = "integer",
        json_path = ".status.edge.readyReplicas"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.edge.desiredReplicas"
    ),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.edge.connections"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("self.metadata.name.size() <= 45").message("metadata.name must be at most 45 characters: the operator derives names from it (StatefulSet <name>-scylla, whose pods carry a <statefulset>-<10-character hash> label limited to 63; Service <name>-scylla-headless; Job <name>-setup-<10-character hash>); choose a shorter name"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a lowercase letter and contain only lowercase letters, digits and '-' (no '.'): Services, the keyspace and the Kafka topic are named after it")
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// chat-server container image, e.g. `ghcr.io/tern/chat-server:0.1.0`. Changing it rolls
    /// every role (edge pods drain their clients first).
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy for chat-server containers (`Always`, `IfNotPresent`, `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Names of Secrets (type `kubernetes.io/dockerconfigjson`) used to pull the images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Log filter for every role, `RUST_LOG` syntax.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The edge role: WebSocket/long-poll/HTTP API, holds the client connections.
    #[serde(default)]
    pub edge: EdgeSpec,
    /// The delivery role: ordering, persistence and fan-out.
    #[serde(default)]
    pub delivery: RoleSpec,
    /// The presence role: online/offline/last-seen.
    #[serde(default)]
    pub presence: RoleSpec,
    /// The message log (Kafka).
    pub kafka: KafkaSpec,
    /// The CQL store that keeps the messages: ScyllaDB or Apache Cassandra (or any
    /// Cassandra-compatible server). The field is named `scylla` for compatibility; it means
    /// "the CQL store" whichever engine runs it.
    pub scylla: ScyllaSpec,
    /// Routing, presence and recent-message cache (Redis).
    pub redis: RedisSpec,
    /// Media blob storage. Optional: without it media upload is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaSpec>,
    /// Client token signing.
    #[serde(default)]
    pub auth: AuthSpec,
    /// NetworkPolicies for the cluster's pods (off by default). Takes effect only where the
    /// cluster's network plugin enforces NetworkPolicy.
    #[serde(default, skip_serializing_if = "NetworkPolicySpec::is_default")]
    pub network_policy: NetworkPolicySpec,
}

/// NetworkPolicies the operator keeps for a cluster (`spec.networkPolicy`). With `enabled`:
/// the edge client port is open to everyone; the metrics port (9090) of every chat-server pod
/// only to pods in the operator's namespace (it scrapes the edges for autoscaling) and in the
/// namespaces `metricsNamespaceSelector` picks (Prometheus); the cluster's own pods reach each
/// other and the managed Kafka, CQL store and Redis on every port. Egress is not restricted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicies (and delete them again when turned off).
    #[serde(default)]
    pub enabled: bool,
    /// Namespaces, besides the operator's, whose pods may read `/metrics` (e.g.
    /// `{matchLabels: {kubernetes.io/metadata.name: monitoring}}` for Prometheus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_namespace_selector: Option<LabelSelector>,
}

impl NetworkPolicySpec {
    fn is_default(&self) -> bool {
        self == &NetworkPolicySpec::default()
    }
}

/// TLS on the edge's client port (`spec.edge.tls`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeTlsSpec {
    /// A Secret of type `kubernetes.io/tls` (keys `tls.crt` and `tls.key`, PEM) in the
    /// cluster's namespace, e.g. one cert-manager keeps. Edge pods mount it and serve HTTPS
    /// and WSS on the client port; a renewed certificate is picked up by the running pods
    /// (the kubelet refreshes the mounted files, chat-server re-reads them) without a restart.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

fn default_log_level() -> String {
    "info".into()
}

/// Longest `metadata.name` (the CEL rule at the root says the same): the StatefulSet
/// `<name>-scylla` must stay within 52 characters (its pods carry a `controller-revision-hash`
/// label `<statefulset>-<hash of up to 10 characters>`, and label values end at 63).
pub const MAX_NAME_LEN: usize = 45;

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The edge role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeSpec {
    /// Number of edge pods when `autoscaling` is not set (also what `kubectl scale` sets).
    /// Ignored while `autoscaling` is set: the operator then decides.
    #[serde(default = "default_edge_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Scale edge pods on the live number of client connections (`chat_connections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// How an edge pod leaves: on SIGTERM it refuses new connections, tells clients to
    /// reconnect after a random delay, and exits when they are gone or the timeout passes.
    #[serde(default)]
    pub drain: DrainSpec,
    /// Heartbeat interval announced to clients (seconds); two silent intervals close a
    /// connection.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 1, max = 3600))]
    pub heartbeat_interval_seconds: i32,
    /// The client-facing Service.
    #[serde(default)]
    pub service: EdgeServiceSpec,
    /// Serve HTTPS/WSS on the client port with this certificate (default: plain HTTP/WS;
    /// terminate TLS in front instead with an Ingress or Gateway, see docs/operator.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EdgeTlsSpec>,
    /// CPU/memory requests and limits of the edge container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod topology spread constraints for edge pods. The operator fills in `labelSelector`
    /// with the edge pod labels when a constraint leaves it empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PodDisruptionBudget for the edge (created only when more than one pod is wanted).
    #[serde(default)]
    pub pod_disruption_budget: PdbSpec,
}

fn default_edge_replicas() -> i32 {
    2
}
fn default_heartbeat() -> i32 {
    30
}

impl Default for EdgeSpec {
    fn default() -> Self {
        EdgeSpec {
            replicas: default_edge_replicas(),
            autoscaling: None,
            drain: DrainSpec::default(),
            heartbeat_interval_seconds: default_heartbeat(),
            service: EdgeServiceSpec::default(),
            tls: None,
            resources: None,
            topology_spread_constraints: Vec::new(),
            pod_disruption_budget: PdbSpec::default(),
        }
    }
}

/// Edge autoscaling on live connections: replicas = ceil(total connections /
/// targetConnectionsPerPod), kept within [minReplicas, maxReplicas].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas").reason(Reason::FieldValueInvalid).field_path(".minReplicas")
)]
pub struct AutoscalingSpec {
    /// Fewest edge pods.
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most edge pods.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Connections one edge pod should hold.
    #[schemars(range(min = 1))]
    pub target_connections_per_pod: i32,
    /// Most pods added in one decision (scale-up is immediate).
    #[serde(default = "default_up_step")]
    #[schemars(range(min = 1))]
    pub scale_up_max_step: i32,
    /// A scale-down happens only to the highest recommendation seen during this window.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0))]
    pub scale_down_stabilization_seconds: i32,
    /// Most pods removed per `scaleDownPeriodSeconds`.
    #[serde(default = "default_down_step")]
    #[schemars(range(min = 1))]
    pub scale_down_max_step: i32,
    /// Least time between two scale-downs.
    #[serde(default = "default_down_period")]
    #[schemars(range(min = 0))]
    pub scale_down_period_seconds: i32,
    /// How often `chat_connections` is read from every edge pod.
    #[serde(default = "default_scrape_interval")]
    #[schemars(range(min = 1))]
    pub scrape_interval_seconds: i32,
}

fn default_up_step() -> i32 {
    4
}
fn default_stabilization() -> i32 {
    300
}
fn default_down_step() -> i32 {
    1
}
fn default_down_period() -> i32 {
    60
}
fn default_scrape_interval() -> i32 {
    15
}

/// Edge drain behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// Seconds an edge pod waits for its clients to leave before exiting
    /// (`CHAT_DRAIN_TIMEOUT`). A stopping edge pod first pauses 5 s (preStop) while endpoints
    /// stop sending it connections, then drains; its termination grace period is 5 s + this
    /// + 10 s.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 3600))]
    pub timeout_seconds: i32,
    /// Clients are told to reconnect after a random delay up to this many milliseconds
    /// (`CHAT_RECONNECT_JITTER_MS`), so they do not all come back at once.
    #[serde(default = "default_jitter")]
    #[schemars(range(min = 0, max = 600000))]
    pub reconnect_jitter_ms: i32,
}

fn default_drain_timeout() -> i32 {
    20
}
fn default_jitter() -> i32 {
    5000
}

impl Default for DrainSpec {
    fn default() -> Self {
        DrainSpec {
            timeout_seconds: default_drain_timeout(),
            reconnect_jitter_ms: default_jitter(),
        }
    }
}

/// The client-facing edge Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Service port clients connect to (the pods listen on 8080).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra annotations on the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_service_port() -> i32 {
    80
}

impl Default for EdgeServiceSpec {
    fn default() -> Self {
        EdgeServiceSpec {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

/// Kubernetes Service type.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// PodDisruptionBudget settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Pods of the role that voluntary disruptions (node drains) may take down at once.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

fn default_max_unavailable() -> i32 {
    1
}

impl Default for PdbSpec {
    fn default() -> Self {
        PdbSpec {
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// The delivery or presence role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Number of pods. A PodDisruptionBudget is created when this is above 1.
    #[serde(default = "default_role_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// CPU/memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_role_replicas() -> i32 {
    1
}

impl Default for RoleSpec {
    fn default() -> Self {
        RoleSpec {
            replicas: default_role_replicas(),
            resources: None,
        }
    }
}

/// A Secret in the ChatCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// One key of a Secret in the ChatCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A dependency the operator runs in the cluster as a StatefulSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedSpec {
    /// Number of pods.
    #[serde(default = "default_role_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Container image; each dependency has a pinned default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Persistent storage per pod.
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU/memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// A PersistentVolumeClaim template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size, e.g. `10Gi`. For a managed dependency, size and class cannot change once its
    /// StatefulSet exists (volume claim templates are immutable): the operator then reports
    /// `Degraded=True` (`SpecRejected`) and keeps the running StatefulSet.
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("storage.size must be a positive Kubernetes quantity such as 10Gi or 500Mi"))]
    pub size: String,
    /// StorageClass; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Kafka: exactly one of `external` or `managed`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.external) != has(self.managed)").message("exactly one of kafka.external or kafka.managed must be set").reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.managed) || !has(self.replicationFactor) || self.replicationFactor <= self.managed.replicas").message("kafka.replicationFactor must not exceed kafka.managed.replicas (a topic cannot have more replicas than there are brokers): lower replicationFactor or add brokers").field_path(".replicationFactor"),
    validation = Rule::new("has(self.topic) == has(oldSelf.topic) && (!has(self.topic) || self.topic == oldSelf.topic)").message("kafka.topic cannot be changed (or set or unset) after creation: the message log lives in the topic the cluster was created with; keep the old value, or create a new ChatCluster").field_path(".topic")
)]
pub struct KafkaSpec {
    /// An existing Kafka cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalKafka>,
    /// A single- or multi-node KRaft Kafka run by the operator. `replicas` is fixed once the
    /// cluster exists: every pod is a controller, and the controller quorum written on the
    /// formatted volumes is this static list (see docs/operator.md, "Managed dependencies").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.replicas == oldSelf.replicas").message(Message::Expression("'kafka.managed.replicas cannot be changed (%d to %d): the KRaft controller quorum is fixed when the volumes are formatted; keep %d, or create a new ChatCluster of the size you want (docs/operator.md, Managed dependencies)'.format([oldSelf.replicas, self.replicas, oldSelf.replicas])".into())).reason(Reason::FieldValueForbidden))]
    pub managed: Option<ManagedSpec>,
    /// Topic of the message log (`CHAT_KAFKA_TOPIC`); default `<name>.messages`. Cannot be
    /// changed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: Option<String>,
    /// Partitions of the message topic (`CHAT_KAFKA_PARTITIONS`), set when the setup Job
    /// creates it. Can only grow.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("kafka.partitions can only grow (Kafka cannot remove partitions): set it back to its current value or higher"))]
    pub partitions: i32,
    /// Replication factor of the message topic (`CHAT_KAFKA_REPLICATION`). Unset: `chat-server
    /// setup` chooses `min(3, brokers it sees)`, with `min.insync.replicas` 2 at 3 or more;
    /// a factor below that on a cluster of 3 or more brokers is refused by setup (an unsafe
    /// choice needs `--allow-unsafe-replication`, not available through the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replication_factor: Option<i32>,
}

fn default_partitions() -> i32 {
    32
}

/// Connection to an existing Kafka cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.saslMechanism) || has(self.credentialsSecretRef)").message("kafka.external.saslMechanism needs kafka.external.credentialsSecretRef (a Secret with username and password)").field_path(".saslMechanism").reason(Reason::FieldValueRequired)
)]
pub struct ExternalKafka {
    /// Bootstrap brokers, `host:port`.
    #[schemars(length(min = 1))]
    pub brokers: Vec<String>,
    /// Secret with keys `username` and `password` for SASL (exposed to chat-server as
    /// `CHAT_KAFKA_SASL_USERNAME`/`_PASSWORD`). An optional key `mechanism` must say `PLAIN`
    /// if present (the operator reports anything else as `Degraded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// SASL mechanism used with `credentialsSecretRef` (`CHAT_KAFKA_SASL_MECHANISM`,
    /// connection `SASL_PLAINTEXT`); `PLAIN` when unset. Only `PLAIN`: chat-server's Kafka
    /// client is built without SSL, so SCRAM, OAUTHBEARER, GSSAPI and TLS are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'PLAIN'").message("kafka.external.saslMechanism: only PLAIN is supported (chat-server's Kafka client is built without SSL, so SCRAM-SHA-256/512, OAUTHBEARER, GSSAPI and TLS are not available); use PLAIN on a trusted network or a broker listener that accepts it"))]
    pub sasl_mechanism: Option<String>,
}

/// The CQL server a managed `spec.scylla` runs.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CqlEngine {
    #[default]
    Scylla,
    Cassandra,
}

impl CqlEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            CqlEngine::Scylla => "scylla",
            CqlEngine::Cassandra => "cassandra",
        }
    }
}

/// A managed CQL store: the common managed settings plus the engine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedCqlSpec {
    /// Which CQL server the StatefulSet runs: `scylla` (ScyllaDB, `scylladb/scylla`) or
    /// `cassandra` (Apache Cassandra, the official `cassandra` image). Both serve CQL on 9042
    /// in the datacenter `datacenter1`. Cannot be changed later: the data on the volumes
    /// belongs to the engine that wrote it.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("engine cannot be changed: the data on the volumes belongs to the engine that wrote it"))]
    pub engine: CqlEngine,
    /// ScyllaDB only: run with `--developer-mode=1` (no XFS, I/O-tuning or resource checks;
    /// for laptops and test clusters). Default `false`: production mode, which needs XFS under
    /// the data volume and measures the disk (iotune) on the first start. `--smp` is the CPU
    /// limit (or request) in whole cores, 1 without either. Ignored by `cassandra`.
    #[serde(default)]
    pub developer_mode: bool,
    /// Pods, image, storage and resources, as for the other managed dependencies.
    #[serde(flatten)]
    pub common: ManagedSpec,
}

impl std::ops::Deref for ManagedCqlSpec {
    type Target = ManagedSpec;
    fn deref(&self) -> &ManagedSpec {
        &self.common
    }
}

/// The CQL store: exactly one of `external` or `managed`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.external) != has(self.managed)").message("exactly one of scylla.external or scylla.managed must be set").reason(Reason::FieldValueRequired),
    validation = Rule::new("has(self.keyspace) == has(oldSelf.keyspace) && (!has(self.keyspace) || self.keyspace == oldSelf.keyspace)").message("scylla.keyspace cannot be changed (or set or unset) after creation: the messages live in the keyspace the cluster was created with; keep the old value, or create a new ChatCluster").field_path(".keyspace"),
    validation = Rule::new("!has(self.managed) || (has(self.datacenterReplication) && size(self.datacenterReplication) > 0) || !has(self.replicationFactor) || self.replicationFactor <= self.managed.replicas").message("scylla.replicationFactor must not exceed scylla.managed.replicas (a keyspace cannot keep more copies than there are nodes): lower replicationFactor or add nodes").field_path(".replicationFactor"),
    validation = Rule::new("!has(self.managed) || !has(self.datacenterReplication) || self.datacenterReplication.all(dc, dc == 'datacenter1' && self.datacenterReplication[dc] <= self.managed.replicas)").message("a managed CQL store has one datacenter, datacenter1, with scylla.managed.replicas nodes: datacenterReplication may only name datacenter1, with at most that many copies (or use replicationFactor)").field_path(".datacenterReplication")
)]
pub struct ScyllaSpec {
    /// An existing ScyllaDB or Cassandra cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalScylla>,
    /// A CQL StatefulSet run by the operator: ScyllaDB (default) or Apache Cassandra
    /// (`engine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedCqlSpec>,
    /// Keyspace (`CHAT_SCYLLA_KEYSPACE`); default: the cluster name with `-` and `.` as `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9_]{0,47}$"))]
    pub keyspace: Option<String>,
    /// Replication factor of the keyspace with SimpleStrategy (`CHAT_SCYLLA_REPLICATION=simple:N`).
    /// Ignored when `datacenterReplication` is set. Unset (and no `datacenterReplication`):
    /// `chat-server setup` chooses `simple:min(3, nodes it sees)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replication_factor: Option<i32>,
    /// Replication per datacenter with NetworkTopologyStrategy, e.g. `{dc1: 3, dc2: 3}`
    /// (`CHAT_SCYLLA_REPLICATION=dc1:3,dc2:3`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub datacenter_replication: BTreeMap<String, i32>,
    /// CQL consistency for reads and writes (`CHAT_SCYLLA_CONSISTENCY`), e.g. `quorum` or
    /// `local_quorum`; chat-server's default (`quorum`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.lowerAscii().replace('-', '_') in ['one', 'two', 'three', 'quorum', 'all', 'local_quorum', 'each_quorum', 'local_one']").message("scylla.consistency must be one of one, two, three, quorum, all, local_quorum, each_quorum, local_one"))]
    pub consistency: Option<String>,
}

/// Connection to an existing ScyllaDB/Cassandra cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalScylla {
    /// Contact points, `host:port`.
    #[schemars(length(min = 1))]
    pub nodes: Vec<String>,
    /// Secret with keys `username` and `password` (exposed as `CHAT_SCYLLA_USERNAME` and
    /// `CHAT_SCYLLA_PASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// Redis: exactly one of `external` or `managed`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.external) != has(self.managed)").message("exactly one of redis.external or redis.managed must be set").reason(Reason::FieldValueRequired)
)]
pub struct RedisSpec {
    /// An existing Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
    /// A single Redis StatefulSet run by the operator (`replicas` must be 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.replicas == 1").message("managed redis runs exactly one replica"))]
    pub managed: Option<ManagedSpec>,
}

/// Connection to an existing Redis: exactly one of `url` or `urlSecretRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.urlSecretRef)").message("exactly one of url or urlSecretRef must be set").reason(Reason::FieldValueRequired)
)]
pub struct ExternalRedis {
    /// `redis://host:port[/db]` without credentials. `rediss://` (TLS) is refused: chat-server's
    /// Redis client is built without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.startsWith('rediss://')").message("redis.external.url: rediss:// (TLS) is not supported: chat-server's Redis client is built without TLS; use redis:// (a trusted network, or a local TLS tunnel)"))]
    #[x_kube(validation = Rule::new("self.startsWith('redis://') || self.startsWith('rediss://')").message("redis.external.url must start with redis://"))]
    pub url: Option<String>,
    /// A Secret key holding the full URL, credentials included (`CHAT_REDIS_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
}

/// Media blobs: exactly one of `s3` or `volume`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.s3) != has(self.volume)").message("exactly one of media.s3 or media.volume must be set").reason(Reason::FieldValueRequired)
)]
pub struct MediaSpec {
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Media>,
    /// A shared volume (a ReadWriteMany PersistentVolumeClaim the operator creates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<StorageSpec>,
}

/// S3-compatible media storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Media {
    /// Bucket name.
    #[schemars(length(min = 1))]
    pub bucket: String,
    /// Endpoint URL for non-AWS S3 (MinIO, Ceph…); AWS when unset
    /// (`CHAT_MEDIA_S3_ENDPOINT`). An `http://` endpoint sets `CHAT_MEDIA_S3_ALLOW_HTTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("media.s3.endpoint must be a URL starting with http:// or https://"))]
    pub endpoint: Option<String>,
    /// Region (`CHAT_MEDIA_S3_REGION`).
    #[serde(default = "default_region")]
    #[schemars(length(min = 1))]
    pub region: String,
    /// Secret with keys `accessKeyId` and `secretAccessKey` (exposed as
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`).
    pub credentials_secret_ref: SecretRef,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Client token signing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The HS256 secret (at least 8 bytes) for client tokens. When unset, the operator
    /// generates one into the Secret `<name>-jwt` (key `secret`) and keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `DependenciesReady` and `SetupComplete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// In-cluster WebSocket URL of the edge Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Edge replicas and connections.
    #[serde(default)]
    pub edge: EdgeStatus,
    /// Readiness of Kafka, the CQL store (`scylla`) and Redis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<DependencyStatus>,
    /// Checksum of the configuration and secrets the pods run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_checksum: Option<String>,
}

/// Edge replicas and connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeStatus {
    /// Pods of the edge Deployment (scale subresource `status.replicas`).
    #[serde(default)]
    pub replicas: i32,
    /// Ready edge pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas the operator wants (the autoscaler's decision or `spec.edge.replicas`).
    #[serde(default)]
    pub desired_replicas: i32,
    /// Live client connections summed over all edge pods at the last scrape.
    #[serde(default)]
    pub connections: i64,
    /// Last time the autoscaler changed the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why the replicas are what they are (the last autoscaler decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_reason: Option<String>,
    /// Label selector of the edge pods (scale subresource).
    #[serde(default)]
    pub selector: String,
}

/// Readiness of one dependency.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DependencyStatus {
    /// `kafka`, `scylla` or `redis`.
    pub name: String,
    /// `external` or `managed`.
    pub mode: String,
    /// Whether it is usable.
    pub ready: bool,
    /// Why not, or where it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The chat-server roles the operator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Edge,
    Delivery,
    Presence,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Edge, Role::Delivery, Role::Presence];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Delivery => "delivery",
            Role::Presence => "presence",
        }
    }
}

/// The dependencies; `as_str` is also the component label of a managed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dependency {
    Kafka,
    Scylla,
    Redis,
}

impl Dependency {
    pub const ALL: [Dependency; 3] = [Dependency::Kafka, Dependency::Scylla, Dependency::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Kafka => "kafka",
            Dependency::Scylla => "scylla",
            Dependency::Redis => "redis",
        }
    }
}

/// Names of every object the operator creates for a cluster, in one place.
impl ChatCluster {
    fn n(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name_any())
    }
    /// Deployment of a role: `<name>-edge`, `<name>-delivery`, `<name>-presence`.
    pub fn role_name(&self, role: Role) -> String {
        self.n(role.as_str())
    }
    /// The client-facing edge Service (same name as the edge Deployment).
    pub fn edge_service_name(&self) -> String {
        self.role_name(Role::Edge)
    }
    /// The headless edge Service (one DNS record per pod; used for scraping and debugging).
    pub fn edge_headless_name(&self) -> String {
        self.n("edge-headless")
    }
    /// The ConfigMap with the shared `CHAT_*` environment.
    pub fn config_name(&self) -> String {
        self.n("config")
    }
    /// The generated JWT Secret (only when `spec.auth.jwtSecretRef` is unset).
    pub fn generated_jwt_name(&self) -> String {
        self.n("jwt")
    }
    /// The schema/topic setup Job: one per setup-relevant configuration.
    pub fn setup_job_name(&self, setup_hash: &str) -> String {
        self.n(&format!(
            "setup-{}",
            &setup_hash[..setup_hash.len().min(10)]
        ))
    }
    /// StatefulSet (and client Service) of a managed dependency.
    pub fn dependency_name(&self, dep: Dependency) -> String {
        self.n(dep.as_str())
    }
    /// Headless Service that gives a managed dependency's pods stable DNS names.
    pub fn dependency_headless_name(&self, dep: Dependency) -> String {
        self.n(&format!("{}-headless", dep.as_str()))
    }
    /// NetworkPolicy over every pod of the cluster (`spec.networkPolicy`): traffic among
    /// them, and the metrics port from the operator (and Prometheus).
    pub fn pods_policy_name(&self) -> String {
        self.n("pods")
    }
    /// NetworkPolicy opening the edge client port to everyone (`spec.networkPolicy`).
    pub fn edge_clients_policy_name(&self) -> String {
        self.n("edge-clients")
    }
    /// The media PersistentVolumeClaim (`spec.media.volume`).
    pub fn media_pvc_name(&self) -> String {
        self.n("media")
    }
    /// `CHAT_CLUSTER`: prefix of Redis keys, Kafka topic and default keyspace.
    pub fn cluster_id(&self) -> String {
        self.name_any()
    }
    /// The CQL keyspace: `spec.scylla.keyspace` or the name with `-` and `.` replaced by `_`.
    pub fn keyspace(&self) -> String {
        self.spec
            .scylla
            .keyspace
            .clone()
            .unwrap_or_else(|| self.name_any().replace(['-', '.'], "_"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn crd_json() -> serde_json::Value {
        serde_json::to_value(ChatCluster::crd()).unwrap()
    }

    #[test]
    fn crd_has_status_and_scale_subresources() {
        let crd = crd_json();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert!(v["subresources"]["status"].is_object());
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.edge.replicas"
        );
        assert_eq!(
            v["subresources"]["scale"]["labelSelectorPath"],
            ".status.edge.selector"
        );
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(cols.contains(&"Ready") && cols.contains(&"Connections"));
    }

    #[test]
    fn crd_carries_cel_rules() {
        let s = serde_json::to_string(&crd_json()).unwrap();
        assert!(s.contains("self.minReplicas <= self.maxReplicas"));
        assert!(s.contains("has(self.external) != has(self.managed)"));
        assert!(s.contains("has(self.url) != has(self.urlSecretRef)"));
        assert!(
            s.contains("self.replicas == oldSelf.replicas"),
            "kafka quorum size"
        );
    }

    /// Every name derived from the longest allowed `metadata.name` fits its limit: DNS-1035
    /// labels (Services) and label values (`job-name`, `statefulset.kubernetes.io/pod-name`,
    /// `controller-revision-hash` = `<statefulset>-<up to 10 characters>`) end at 63.
    #[test]
    fn derived_names_of_the_longest_name_fit() {
        let spec: ChatClusterSpec = serde_json::from_value(serde_json::json!({
            "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}}
        }))
        .unwrap();
        let name = format!("a{}", "b".repeat(MAX_NAME_LEN - 1));
        let c = ChatCluster::new(&name, spec);
        let mut services = vec![c.edge_service_name(), c.edge_headless_name()];
        for d in Dependency::ALL {
            services.push(c.dependency_name(d));
            services.push(c.dependency_headless_name(d));
            // StatefulSet revision label and pod names (ordinals up to 999).
            assert!(c.dependency_name(d).len() + 1 + 10 <= 63, "{d:?}");
            assert!(format!("{}-999", c.dependency_name(d)).len() <= 63);
        }
        for s in services {
            assert!(s.len() <= 63, "{s}");
        }
        assert!(c.setup_job_name(&"f".repeat(64)).len() <= 63);
        assert!(c.keyspace().len() <= 48);
        for r in Role::ALL {
            assert!(c.role_name(r).len() <= 63);
        }
        // …and one more character would not.
        let c = ChatCluster::new(&format!("{name}x"), c.spec.clone());
        assert!(c.dependency_name(Dependency::Scylla).len() + 1 + 10 > 63);
    }

    #[test]
    fn crd_carries_admission_rules_and_a_condition_map() {
        let crd = crd_json();
        let s = serde_json::to_string(&crd).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let root: Vec<&str> = schema["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap())
            .collect();
        assert!(
            root.contains(&"self.metadata.name.size() <= 45"),
            "{root:?}"
        );
        for rule in [
            "self >= oldSelf",
            "self.keyspace == oldSelf.keyspace",
            "self.topic == oldSelf.topic",
            "self.replicationFactor <= self.managed.replicas",
            "!self.startsWith('rediss://')",
            "self == 'PLAIN'",
            "isQuantity(self)",
        ] {
            assert!(s.contains(rule), "{rule}");
        }
        let conds = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conds["x-kubernetes-list-type"], "map");
        assert_eq!(
            conds["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec: ChatClusterSpec = serde_json::from_value(serde_json::json!({
            "image": "tern/chat-server:dev",
            "kafka": {"managed": {}},
            "scylla": {"managed": {}},
            "redis": {"managed": {}}
        }))
        .unwrap();
        assert_eq!(spec.edge.replicas, 2);
        assert_eq!(spec.edge.drain.timeout_seconds, 20);
        assert_eq!(spec.delivery.replicas, 1);
        assert_eq!(spec.kafka.partitions, 32);
        assert_eq!(spec.kafka.managed.as_ref().unwrap().storage.size, "10Gi");
        assert_eq!(spec.log_level, "info");
    }

    #[test]
    fn names_and_keyspace() {
        let spec: ChatClusterSpec = serde_json::from_value(serde_json::json!({
            "image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}}
        }))
        .unwrap();
        let c = ChatCluster::new("team-chat", spec);
        assert_eq!(c.role_name(Role::Edge), "team-chat-edge");
        assert_eq!(c.edge_headless_name(), "team-chat-edge-headless");
        assert_eq!(
            c.dependency_headless_name(Dependency::Kafka),
            "team-chat-kafka-headless"
        );
        assert_eq!(c.keyspace(), "team_chat");
        assert_eq!(
            c.setup_job_name("0123456789abcdef"),
            "team-chat-setup-0123456789"
        );
    }
}
