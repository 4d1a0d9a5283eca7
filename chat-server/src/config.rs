//! Command line and environment configuration. Every flag has an environment variable; the
//! doc comments are the user documentation (`chat-server --help`).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Tern chat server. With no subcommand it runs every role (edge, delivery, presence) in one
/// process on an embedded SQLite store in --data-dir.
#[derive(Debug, Parser)]
#[command(name = "chat-server", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

const AFTER_HELP: &str = "\
Examples:
  chat-server --dev-auth                      # everything in one process, data in ./data
  chat-server token --user 42                 # print a token for user 42 (same secret)
  CHAT_LISTEN=127.0.0.1:9000 chat-server      # any flag can come from its env variable

Distributed (Kafka + ScyllaDB + Redis; see docs/distributed.md):
  chat-server setup --kafka-brokers k:9092 --scylla-nodes s:9042
  chat-server serve --backend distributed --role edge --jwt-secret $SECRET \
      --kafka-brokers k:9092 --scylla-nodes s:9042 --redis-url redis://r:6379
  (likewise --role delivery and --role presence; any number of each)";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(Box<ServeConfig>),
    /// Print a signed token for a user, using the configured (or generated) secret.
    Token(TokenArgs),
    /// Create (or upgrade) the distributed backend's ScyllaDB schema and Kafka topic.
    /// Idempotent: safe to run on every deploy (the operator runs it as a Job).
    Setup(Box<SetupArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BackendArg {
    /// SQLite in --data-dir, in-process bus and presence: one process runs everything.
    #[default]
    Embedded,
    /// ScyllaDB/Cassandra (CQL) store, Kafka message log, Redis presence/routing/cache.
    Distributed,
}

/// Where the distributed backend's services are (used by `serve --backend distributed` and
/// `setup`).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Name of this Tern cluster: prefix of Redis keys and channels, and the default Kafka
    /// topic (`<cluster>.messages`), consumer group and CQL keyspace.
    #[arg(long, env = "CHAT_CLUSTER", default_value = "tern")]
    pub cluster: String,

    /// CQL contact points (ScyllaDB or Cassandra), comma separated.
    #[arg(
        long,
        env = "CHAT_SCYLLA_NODES",
        value_delimiter = ',',
        default_value = "127.0.0.1:9042"
    )]
    pub scylla_nodes: Vec<String>,

    /// CQL keyspace (default: the cluster name with '-' and '.' replaced by '_').
    #[arg(long, env = "CHAT_SCYLLA_KEYSPACE")]
    pub scylla_keyspace: Option<String>,

    /// CQL consistency for reads and writes (`local_quorum` with multi-DC replication).
    #[arg(long, env = "CHAT_SCYLLA_CONSISTENCY", default_value = "quorum")]
    pub scylla_consistency: String,

    /// CQL username, when the cluster requires authentication.
    #[arg(long, env = "CHAT_SCYLLA_USERNAME")]
    pub scylla_username: Option<String>,

    /// CQL password (with --scylla-username).
    #[arg(long, env = "CHAT_SCYLLA_PASSWORD", hide_env_values = true)]
    pub scylla_password: Option<String>,

    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "CHAT_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Kafka SASL mechanism (`PLAIN`; SCRAM and TLS need a build with librdkafka's SSL
    /// support). Setting it switches the connection to SASL_PLAINTEXT.
    #[arg(long, env = "CHAT_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,

    /// Kafka SASL username.
    #[arg(long, env = "CHAT_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,

    /// Kafka SASL password.
    #[arg(long, env = "CHAT_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,

    /// Kafka topic of the message log (default `<cluster>.messages`).
    #[arg(long, env = "CHAT_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,

    /// Redis URL (presence, connection routing, fan-out channels, recent-message cache):
    /// `redis://[user:pass@]host:port[/db]` for one server, or
    /// `redis+sentinel://[user:pass@]s1:26379,s2:26379,s3:26379/<master>[/db]` for the primary
    /// that Redis Sentinels name, followed across failovers (credentials and db are the data
    /// servers'; the Sentinels are asked without authentication).
    #[arg(long, env = "CHAT_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Fault injection for the failure tests (hidden): this many ms after start, the edge's
    /// first Kafka producer stops delivering records (each fails as timed out), as a stuck
    /// librdkafka producer does, so the test can watch the producer watchdog replace it.
    #[arg(long, hide = true)]
    pub fault_stuck_producer_after_ms: Option<u64>,
}

impl ClusterArgs {
    pub fn keyspace(&self) -> String {
        self.scylla_keyspace
            .clone()
            .unwrap_or_else(|| self.cluster.replace(['-', '.'], "_"))
    }
    /// librdkafka security settings shared by producers, consumers and the admin client.
    pub fn kafka_security(&self) -> Vec<(&'static str, String)> {
        let mut s = Vec::new();
        if let Some(m) = &self.kafka_sasl_mechanism {
            s.push(("security.protocol", "SASL_PLAINTEXT".into()));
            s.push(("sasl.mechanism", m.clone()));
            if let Some(u) = &self.kafka_sasl_username {
                s.push(("sasl.username", u.clone()));
            }
            if let Some(p) = &self.kafka_sasl_password {
                s.push(("sasl.password", p.clone()));
            }
        }
        s
    }

    /// CQL credentials, when both are given.
    pub fn scylla_credentials(&self) -> Option<(String, String)> {
        match (&self.scylla_username, &self.scylla_password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        }
    }

    pub fn topic(&self) -> String {
        self.kafka_topic
            .clone()
            .unwrap_or_else(|| format!("{}.messages", self.cluster))
    }
}

#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Partitions of the message topic (more partitions: more delivery processes can share
    /// the work; a partition is the unit of ordering). Only ever increased.
    #[arg(long, env = "CHAT_KAFKA_PARTITIONS", default_value_t = 32)]
    pub partitions: i32,
    /// Replication factor of new topics. Default: chosen from the brokers setup sees — 3
    /// (with `min.insync.replicas` 2) from 3 brokers on, else every broker.
    #[arg(long, env = "CHAT_KAFKA_REPLICATION")]
    pub kafka_replication: Option<i32>,
    /// Keyspace replication: `simple:N` or `dc1:N,dc2:M` (NetworkTopologyStrategy; serve with
    /// `--scylla-consistency local_quorum` then). Default: chosen from the nodes setup sees —
    /// 3 per data centre (or every node of a smaller one).
    #[arg(long, env = "CHAT_SCYLLA_REPLICATION")]
    pub scylla_replication: Option<String>,
    /// Accept a replication factor below what survives the loss of one node (e.g. RF 1 on a
    /// 3-node cluster), for the topics and the keyspace. Refused without it.
    #[arg(long, env = "CHAT_ALLOW_UNSAFE_REPLICATION", default_value_t = false)]
    pub allow_unsafe_replication: bool,
    /// How long to keep retrying while the services come up (seconds).
    #[arg(long, env = "CHAT_SETUP_TIMEOUT", default_value_t = 300)]
    pub timeout: u64,
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum RoleArg {
    #[default]
    All,
    Edge,
    Delivery,
    Presence,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on for HTTP, WebSocket and long-poll clients.
    #[arg(long, env = "CHAT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Separate address for `/metrics` (with `/healthz` and `/readyz` too), plain HTTP. When
    /// set, `/metrics` is no longer served on --listen, so a public load balancer in front of
    /// the client port does not expose it. Default: unset, `/metrics` is on --listen.
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// PEM certificate chain (leaf first): with --tls-key, --listen serves HTTPS and WSS
    /// instead of plain HTTP (a plain-HTTP request there gets a 400). Default: unset, plain
    /// HTTP. The files are re-read every --tls-reload-seconds and a changed pair is served
    /// to new connections without a restart.
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How often the TLS files are checked for a new certificate (seconds; 0: never).
    #[arg(long, env = "CHAT_TLS_RELOAD_SECONDS", default_value_t = 10)]
    pub tls_reload_seconds: u64,

    /// Directory for the embedded store (SQLite, WAL) and the generated JWT secret.
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// HS256 secret for client tokens. If unset, one is generated into <data-dir>/jwt-secret.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Enable `POST /v1/dev/token {"user_id":N}`, which hands out tokens to anyone. Dev only.
    #[arg(long, env = "CHAT_DEV_AUTH", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub dev_auth: bool,

    /// Which role(s) to run. The embedded backend runs them all in one process; with
    /// `--backend distributed` run any number of each role as separate processes.
    #[arg(long, env = "CHAT_ROLE", value_enum, default_value_t = RoleArg::All)]
    pub role: RoleArg,

    /// Storage, message log and presence backend.
    #[arg(long, env = "CHAT_BACKEND", value_enum, default_value_t = BackendArg::Embedded)]
    pub backend: BackendArg,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// This process's id in the cluster (routing key for its connections). Default:
    /// the hostname plus a random suffix. Set it to the pod name in Kubernetes.
    #[arg(long, env = "CHAT_NODE_ID")]
    pub node_id: Option<String>,

    /// Distributed mode: how long an edge waits for the delivery role to confirm a send
    /// before telling the client `unavailable` (it resends safely with its client_msg_id).
    #[arg(long, env = "CHAT_ACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub ack_timeout_ms: u64,

    /// Set SO_REUSEPORT so several server processes can share one port.
    #[arg(long, env = "CHAT_REUSE_PORT", default_value_t = false)]
    pub reuse_port: bool,

    /// Heartbeat interval in seconds, announced in `hello`. A connection silent for two
    /// intervals is closed and its user goes offline.
    #[arg(long, env = "CHAT_HEARTBEAT_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_interval: u64,

    /// How often merged delivered/read marks are written and sent to members (ms).
    #[arg(long, env = "CHAT_RECEIPT_FLUSH_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=5000))]
    pub receipt_flush_ms: u64,

    /// Largest number of members in a group.
    #[arg(long, env = "CHAT_GROUP_LIMIT", default_value_t = 1000)]
    pub group_limit: usize,

    /// Cap on concurrent WebSocket connections and long-poll sessions; more get 503.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Frames queued for one connection before it counts as a slow consumer and is closed
    /// with code 4008 (the client reconnects and syncs).
    #[arg(long, env = "CHAT_SEND_QUEUE", default_value_t = 2048)]
    pub send_queue: usize,

    /// Sustained messages per second one connection may send (token bucket).
    #[arg(long, env = "CHAT_RATE_LIMIT", default_value_t = 50.0)]
    pub rate_limit: f64,

    /// Burst size of the per-connection message rate limit.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = 100)]
    pub rate_burst: u32,

    /// Largest WebSocket message or HTTP JSON body, in bytes.
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", default_value_t = 128 * 1024)]
    pub max_frame_bytes: usize,

    /// Time limit for reading request headers and for whole API requests (seconds).
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,

    /// On SIGTERM: clients are told to reconnect after a random delay up to this (ms).
    #[arg(long, env = "CHAT_RECONNECT_JITTER_MS", default_value_t = 5000)]
    pub reconnect_jitter_ms: u64,

    /// On SIGTERM: how long to wait for connections to close before exiting (seconds).
    #[arg(long, env = "CHAT_DRAIN_TIMEOUT", default_value_t = 20)]
    pub drain_timeout: u64,

    /// Most writes committed together in one SQLite transaction (group commit).
    #[arg(long, env = "CHAT_COMMIT_BATCH", default_value_t = 1024)]
    pub commit_batch: usize,

    #[command(flatten)]
    pub media: Box<crate::media::config::MediaArgs>,

    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    #[command(flatten)]
    pub push: Box<crate::push::config::PushArgs>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (positive integer) the token names.
    #[arg(long)]
    pub user: u64,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub ttl: u64,
    /// Secret to sign with (else <data-dir>/jwt-secret).
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

impl ServeConfig {
    /// A configuration for tests: loopback, port 0, fast heartbeats.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut cli = Cli::parse_from(["chat-server"]);
        cli.serve.listen = "127.0.0.1:0".parse().expect("addr");
        cli.serve.data_dir = data_dir;
        cli.serve.jwt_secret = Some("test-secret".into());
        cli.serve.dev_auth = true;
        cli.serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_means_serve_all() {
        let cli = Cli::parse_from(["chat-server", "--dev-auth", "--listen", "127.0.0.1:1"]);
        assert!(cli.command.is_none());
        assert!(cli.serve.dev_auth);
        assert_eq!(cli.serve.role, RoleArg::All);
        assert!(cli.serve.metrics_listen.is_none() && cli.serve.tls_cert.is_none());
    }

    #[test]
    fn tls_needs_both_files() {
        assert!(Cli::try_parse_from(["chat-server", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["chat-server", "--tls-key", "k.pem"]).is_err());
        let cli = Cli::try_parse_from([
            "chat-server",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--metrics-listen",
            "127.0.0.1:9090",
        ])
        .unwrap();
        assert_eq!(
            cli.serve.tls_key.as_deref(),
            Some(std::path::Path::new("k.pem"))
        );
        assert_eq!(cli.serve.metrics_listen.unwrap().port(), 9090);
    }
}
