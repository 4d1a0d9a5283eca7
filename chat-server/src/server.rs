//! Assembling and running a server: state, background tasks, router, accept loop, drain.

use crate::api;
use crate::auth::Auth;
use crate::config::{BackendArg, RoleArg, ServeConfig};
use crate::hub::Hub;
use crate::longpoll;
use crate::members::Directory;
use crate::metrics::Metrics;
use crate::plane::Plane;
use crate::plane::local::{LocalDeps, LocalPlane};
use crate::state::AppState;
use crate::store::Store;
use crate::store::sqlite::SqliteStore;
use crate::watchers::Watchers;
use crate::web;
use crate::ws;
use anyhow::{Context, bail};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

/// The client listener's certificate (`--tls-cert`), when it speaks TLS.
type Tls = Arc<crate::tls::ReloadingCert>;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `--metrics-listen` is set (else on `addr`).
    pub metrics_addr: Option<SocketAddr>,
    /// Whether `addr` speaks TLS (`--tls-cert`).
    pub tls: bool,
    pub state: Arc<AppState>,
    sqlite: Option<Arc<SqliteStore>>,
    accept: tokio::task::JoinHandle<()>,
    metrics_accept: Option<tokio::task::JoinHandle<()>>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
}

/// The JWT secret: configured, or read from / generated into `<data-dir>/jwt-secret`.
pub fn resolve_secret(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<(String, bool)> {
    if let Some(s) = configured {
        if s.len() < 8 {
            bail!("--jwt-secret is too short: use at least 8 (better 32) random characters");
        }
        return Ok((s.to_string(), false));
    }
    let key = crate::keyfile::read_or_create(&data_dir.join("jwt-secret"), || {
        (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect()
    })?;
    Ok((key.secret, true))
}

fn bind(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr} (in use? try --listen)"))?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// The client router: API, WebSocket, long poll, media, web client, probes, and `/metrics`
/// unless `--metrics-listen` moves it to its own address.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = Duration::from_secs(state.cfg.request_timeout);
    let api = Router::new()
        .route("/v1/chats", post(api::create_chat).get(api::list_chats))
        .route("/v1/chats/{id}", get(api::get_chat).patch(api::update_chat))
        .route("/v1/me", get(api::get_me).patch(api::update_me))
        .route("/v1/chats/{id}/members", post(api::add_members))
        .route(
            "/v1/chats/{id}/members/{user_id}",
            delete(api::remove_member),
        )
        .route(
            "/v1/chats/{id}/messages",
            get(api::list_messages).post(api::post_message),
        )
        .route("/v1/chats/{id}/receipts", get(api::receipts))
        .route("/v1/presence", get(api::presence))
        .route("/v1/dev/token", post(api::dev_token))
        .route("/v1/frames", post(longpoll::frames))
        .merge(crate::push::api::routes())
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    Router::new()
        .merge(api)
        // Long polls and WebSockets outlive the request timeout by design.
        .route("/v1/poll", get(longpoll::poll))
        .route("/ws", get(ws::handler))
        // Media: own body limits and idle timeouts (uploads outlive the request timeout).
        .merge(crate::media::http::routes())
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(metrics_here(&state))
        .merge(web::routes())
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(state.cfg.max_frame_bytes))
        .with_state(state)
}

/// `/metrics` on the client listener, unless `--metrics-listen` gives it its own address.
fn metrics_here(state: &AppState) -> Router<Arc<AppState>> {
    let r = Router::new();
    if state.cfg.metrics_listen.is_some() {
        r
    } else {
        r.route("/metrics", get(api::metrics))
    }
}

/// The `--metrics-listen` router: `/metrics` and the probes, nothing a client uses.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .fallback(api::not_found)
        .with_state(state)
}

/// The parts every backend builds the same way, made before the plane (which uses them).
struct Common {
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    directory: Arc<Directory>,
    watchers: Arc<Watchers>,
    /// `None` with `--media-disabled`, and in processes without clients.
    media: Option<Arc<crate::media::MediaService>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Common {
    /// `clients`: whether this process has clients, and so serves media (delivery and presence
    /// processes open no blob store and write nothing under the data directory).
    fn new(
        cfg: &ServeConfig,
        store: Arc<dyn Store>,
        secret: &str,
        clients: bool,
    ) -> anyhow::Result<Self> {
        let media = if clients {
            crate::media::MediaService::open_unless_disabled(
                &cfg.media,
                &cfg.data_dir,
                secret.as_bytes(),
            )?
        } else {
            None
        };
        let hub = Arc::new(Hub::new(cfg.send_queue));
        let directory = Arc::new(Directory::new(store));
        Ok(Common {
            media,
            metrics: Arc::new(Metrics::new()),
            watchers: Arc::new(Watchers::new(hub.clone(), directory.clone())),
            hub,
            directory,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }
}

/// What a backend contributes to the shared state.
struct Backend {
    store: Arc<dyn Store>,
    plane: Arc<dyn Plane>,
    push: Option<Arc<crate::push::Push>>,
}

/// The one place an [`AppState`] is assembled.
fn build_state(cfg: ServeConfig, secret: &str, c: Common, b: Backend) -> Arc<AppState> {
    Arc::new(AppState {
        auth: Auth::new(secret.as_bytes()),
        store: b.store,
        hub: c.hub,
        directory: c.directory,
        watchers: c.watchers,
        plane: b.plane,
        receipts: Default::default(),
        metrics: c.metrics,
        media: c.media,
        push: b.push,
        longpoll: Default::default(),
        draining: Default::default(),
        stop: c.stop,
        tasks: c.tasks,
        connections: Default::default(),
        ready: Default::default(),
        cfg,
    })
}

/// What the push worker takes of the state.
fn push_worker_deps(state: &AppState) -> crate::push::worker::WorkerDeps {
    crate::push::worker::WorkerDeps {
        store: state.store.clone(),
        metrics: state.metrics.clone(),
        stop: state.stop.clone(),
    }
}

/// The routes of a process without clients (delivery, presence): probes and metrics.
pub fn probe_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(metrics_here(&state))
        .fallback(api::not_found)
        .with_state(state)
}

impl Server {
    /// Open the backend, start the background tasks of the configured role(s) and start
    /// accepting connections.
    pub async fn start(cfg: ServeConfig) -> anyhow::Result<Server> {
        // A bad certificate stops the start before any backend is touched.
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::ReloadingCert::load(cert, key)?),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        match cfg.backend {
            BackendArg::Embedded => Self::start_embedded(cfg, tls).await,
            #[cfg(feature = "distributed")]
            BackendArg::Distributed => Self::start_distributed(cfg, tls).await,
            #[cfg(not(feature = "distributed"))]
            BackendArg::Distributed => bail!(
                "this chat-server was built without the distributed backend; build it with \
                 `cargo build --release -p chat-server --features distributed`"
            ),
        }
    }

    async fn start_embedded(cfg: ServeConfig, tls: Option<Tls>) -> anyhow::Result<Server> {
        if cfg.role != RoleArg::All {
            bail!(
                "--role {:?} runs one role of a cluster and needs --backend distributed (Kafka, \
                 ScyllaDB, Redis); run without --role for the embedded all-in-one server",
                cfg.role
            );
        }
        let (secret, _) = resolve_secret(cfg.jwt_secret.as_deref(), &cfg.data_dir)?;
        let store = Arc::new(
            SqliteStore::open(&cfg.data_dir, cfg.commit_batch).map_err(|e| {
                anyhow::anyhow!("opening the store in {}: {e}", cfg.data_dir.display())
            })?,
        );
        let listener = bind(cfg.listen, cfg.reuse_port)?;
        let addr = listener.local_addr()?;
        let shards = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 16);
        let (push, push_rx) = crate::push::Push::open_embedded(&cfg)?;
        let common = Common::new(&cfg, store.clone(), &secret, true)?;
        let plane = LocalPlane::new(
            shards,
            16 * 1024,
            LocalDeps {
                store: store.clone(),
                hub: common.hub.clone(),
                directory: common.directory.clone(),
                metrics: common.metrics.clone(),
                push: Some(push.clone()),
                events: common.watchers.clone(),
            },
        );
        plane.start(&common.tasks, &common.stop);
        let backend = Backend {
            store: store.clone(),
            plane,
            push: Some(push.clone()),
        };
        let state = build_state(cfg, &secret, common, backend);
        crate::push::spawn_worker(
            &state.tasks,
            push_worker_deps(&state),
            push,
            crate::push::worker::ChannelSource(push_rx),
        )?;
        state.tasks.spawn(flush_receipts(state.clone()));
        state.tasks.spawn(longpoll::sweep(state.clone()));
        let mut server = Self::serve(listener, addr, state, true, tls)?;
        server.sqlite = Some(store);
        Ok(server)
    }

    /// A process of a cluster: `--role edge|delivery|presence`, or `all` of them in one.
    #[cfg(feature = "distributed")]
    async fn start_distributed(cfg: ServeConfig, tls: Option<Tls>) -> anyhow::Result<Server> {
        use crate::plane::cluster::producer::SendProducer;
        use crate::plane::cluster::sequencer::{self, Sequencer};
        use crate::plane::cluster::{
            ClusterDeps, ClusterPlane, kafka, presence, redis::Redis, subscriber,
        };
        use crate::store::scylla::{ScyllaOptions, ScyllaStore, parse_consistency};
        let role = cfg.role;
        let edge = matches!(role, RoleArg::All | RoleArg::Edge);
        let delivers = matches!(role, RoleArg::All | RoleArg::Delivery);
        let reaps = matches!(role, RoleArg::All | RoleArg::Presence);
        let Some(secret) = cfg.jwt_secret.clone() else {
            bail!(
                "--backend distributed needs --jwt-secret (CHAT_JWT_SECRET): every edge must \
                 verify tokens with the same secret"
            );
        };
        resolve_secret(Some(&secret), &cfg.data_dir)?;
        let node_id = cfg.node_id.clone().unwrap_or_else(default_node_id);
        let c = &cfg.cluster;
        tracing::info!(
            role = ?role, node = %node_id, cluster = %c.cluster, kafka = %c.kafka_brokers,
            scylla = %c.scylla_nodes.join(","), redis = %crate::plane::cluster::redis_primary::RedisTarget::parse(&c.redis_url)
                .map(|t| t.describe())
                .unwrap_or_else(|_| "(not a valid Redis URL)".into()),
            "joining the cluster"
        );
        let wait = Duration::from_secs(60);
        kafka::configure_security(c.kafka_security());
        let options = ScyllaOptions {
            consistency: parse_consistency(&c.scylla_consistency)
                .map_err(|e| anyhow::anyhow!("--scylla-consistency: {e}"))?,
            credentials: c.scylla_credentials(),
            ..ScyllaOptions::default()
        };
        let keyspace = c.keyspace();
        let store = Arc::new(
            crate::retry::until(wait, Duration::from_secs(1), "ScyllaDB", || {
                ScyllaStore::connect(&c.scylla_nodes, &keyspace, options.clone())
            })
            .await?,
        );
        let redis = Redis::connect(&c.redis_url, &c.cluster, wait).await?;
        let common = Common::new(&cfg, store.clone(), &secret, edge)?;
        let producer = if edge {
            Some(Arc::new(
                SendProducer::new(
                    &c.kafka_brokers,
                    c.topic(),
                    node_id.clone(),
                    Duration::from_millis(cfg.ack_timeout_ms),
                    common.metrics.clone(),
                    common.tasks.clone(),
                )?
                .with_fault_stuck_after(c.fault_stuck_producer_after_ms.map(Duration::from_millis)),
            ))
        } else {
            None
        };
        let assigned = delivers.then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let owned = Arc::new(sequencer::Ownership::default());
        let consumer = match &assigned {
            Some(assigned) => Some(sequencer::consumer(
                &c.kafka_brokers,
                &format!("{}.delivery", c.cluster),
                &c.topic(),
                store.clone(),
                assigned.clone(),
                owned.clone(),
            )?),
            None => None,
        };
        let (push, push_source) =
            crate::push::open_distributed(&cfg, store.session().clone(), &keyspace, delivers)
                .await?;
        let listener = bind(cfg.listen, cfg.reuse_port)?;
        let addr = listener.local_addr()?;
        let plane = ClusterPlane::new(
            ClusterDeps {
                node: node_id.clone(),
                redis: redis.clone(),
                producer: producer.clone(),
                hub: common.hub.clone(),
                directory: common.directory.clone(),
                metrics: common.metrics.clone(),
                events: common.watchers.clone(),
            },
            assigned,
        );
        let (tasks, stop) = (&common.tasks, &common.stop);
        tasks.spawn(subscriber::run(
            plane.clone(),
            edge,
            tasks.clone(),
            stop.clone(),
        ));
        let heartbeat = Duration::from_secs(cfg.heartbeat_interval);
        if edge {
            tasks.spawn(presence::refresh_loop(
                plane.redis_presence().clone(),
                plane.clone(),
                heartbeat,
                stop.clone(),
            ));
        }
        if let Some(p) = producer {
            tasks.spawn(p.expire_loop(stop.clone()));
        }
        if let Some(consumer) = consumer {
            let seq = Sequencer {
                consumer,
                owned,
                topic: c.topic(),
                store: store.clone(),
                redis: redis.clone(),
                directory: common.directory.clone(),
                metrics: common.metrics.clone(),
                push: Some(push.clone()),
            };
            tasks.spawn(seq.run(stop.clone()));
        }
        if reaps {
            tasks.spawn(presence::reaper_loop(
                redis.clone(),
                plane.clone(),
                heartbeat,
                stop.clone(),
            ));
        }
        let backend = Backend {
            store: store.clone(),
            plane,
            push: Some(push.clone()),
        };
        let state = build_state(cfg, &secret, common, backend);
        if edge {
            state.tasks.spawn(flush_receipts(state.clone()));
            state.tasks.spawn(longpoll::sweep(state.clone()));
        }
        if let Some(source) = push_source {
            crate::push::spawn_worker(&state.tasks, push_worker_deps(&state), push, source)?;
        }
        Self::serve(listener, addr, state, edge, tls)
    }

    fn serve(
        listener: TcpListener,
        addr: SocketAddr,
        state: Arc<AppState>,
        clients: bool,
        tls: Option<Tls>,
    ) -> anyhow::Result<Server> {
        let app = if clients {
            router(state.clone())
        } else {
            probe_router(state.clone())
        };
        // Not SO_REUSEPORT even with --reuse-port: a scrape must reach the process it names.
        let metrics = state
            .cfg
            .metrics_listen
            .map(|a| bind(a, false).context("--metrics-listen"))
            .transpose()?;
        let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
        let acceptor = tls
            .as_ref()
            .map(|c| crate::tls::acceptor(c.clone()))
            .transpose()?;
        if let Some(cert) = &tls
            && state.cfg.tls_reload_seconds > 0
        {
            state.tasks.spawn(crate::tls::reload_loop(
                cert.clone(),
                Duration::from_secs(state.cfg.tls_reload_seconds),
                state.stop.clone(),
            ));
        }
        if clients && let Some(media) = &state.media {
            state.tasks.spawn(crate::media::gc::run(
                media.clone(),
                state.store.clone(),
                state.stop.clone(),
            ));
            state.tasks.spawn(crate::media::transcode::run(
                media.clone(),
                state.store.clone(),
                state.stop.clone(),
            ));
        }
        let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
        let accept = tokio::spawn(accept_loop(
            listener,
            app,
            state.clone(),
            Some(graceful.clone()),
            acceptor,
            state.draining.clone(),
        ));
        // Metrics stay up through the drain (the operator and Prometheus watch it) and stop
        // with the background tasks.
        let metrics_accept = metrics.map(|l| {
            tokio::spawn(accept_loop(
                l,
                metrics_router(state.clone()),
                state.clone(),
                None,
                None,
                state.stop.clone(),
            ))
        });
        state.ready.store(true, Ordering::Release);
        Ok(Server {
            addr,
            metrics_addr,
            tls: tls.is_some(),
            state,
            sqlite: None,
            accept,
            metrics_accept,
            graceful,
        })
    }

    /// Drain and stop: refuse new connections, tell clients to reconnect (with jitter), wait
    /// for connections to go (up to --drain-timeout), flush receipts, finish queued writes,
    /// stop every task and close the store.
    pub async fn shutdown(self) {
        let st = self.state.clone();
        tracing::info!(
            connections = st.connections.load(Ordering::Acquire),
            "draining"
        );
        st.draining.cancel();
        let _ = self.accept.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(st.cfg.drain_timeout);
        let graceful = Arc::try_unwrap(self.graceful).ok();
        if let Some(g) = graceful {
            let _ = tokio::time::timeout_at(deadline, g.shutdown()).await;
        }
        while st.connections.load(Ordering::Acquire) > st.longpoll.len()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        st.stop.cancel();
        if let Some(m) = self.metrics_accept {
            let _ = m.await;
        }
        st.tasks.close();
        if tokio::time::timeout_at(deadline + Duration::from_secs(5), st.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop in time");
        }
        st.plane.close().await;
        if let Some(store) = &self.sqlite {
            store.close().await;
        }
        tracing::info!("stopped");
    }
}

/// `<hostname>-<random>`: unique per process even when several share a host.
#[cfg(feature = "distributed")]
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// `chat-server setup`: create or upgrade the keyspace and the message topic. Idempotent.
///
/// Replication is chosen from the cluster setup sees (3 replicas from 3 nodes/brokers on, with
/// `min.insync.replicas` 2 on the topics), or taken from the flags; a choice that does not
/// survive the loss of one node is refused without `--allow-unsafe-replication`, and so is an
/// existing keyspace or topic with such a replication (it is never changed here: that takes
/// `ALTER KEYSPACE` plus a repair, or a Kafka partition reassignment).
#[cfg(feature = "distributed")]
pub async fn setup(args: &crate::config::SetupArgs) -> anyhow::Result<()> {
    use crate::plane::cluster::kafka;
    use crate::store::scylla::{ScyllaOptions, connect_session};
    use crate::store::scylla_schema::{self, Replication};
    let c = &args.cluster;
    let wait = Duration::from_secs(args.timeout);
    let unsafe_ok = args.allow_unsafe_replication;
    let asked: Option<Replication> = args
        .scylla_replication
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--scylla-replication: {e}"))?;
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    tracing::info!(nodes = %c.scylla_nodes.join(","), keyspace = %c.keyspace(), "CQL: connecting");
    kafka::configure_security(c.kafka_security());
    let options = ScyllaOptions {
        credentials: c.scylla_credentials(),
        ..ScyllaOptions::default()
    };
    let session = crate::retry::until(wait, Duration::from_secs(1), "ScyllaDB", || {
        connect_session(&c.scylla_nodes, &options)
    })
    .await?;
    let dcs = scylla_schema::cluster_dcs(&session);
    let replication = scylla_schema::choose_replication(asked.as_ref(), &dcs, unsafe_ok)
        .map_err(|e| anyhow::anyhow!("--scylla-replication: {e}"))?;
    if let Some(existing) = scylla_schema::keyspace_replication(&session, &c.keyspace())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        scylla_schema::check_replication(&existing, &dcs, unsafe_ok).map_err(|e| {
            anyhow::anyhow!(
                "keyspace {} exists with {e}. Change it with ALTER KEYSPACE {} WITH \
                 replication = {} and run a full repair (nodetool repair -full {}) on every \
                 node",
                c.keyspace(),
                c.keyspace(),
                replication.to_cql(),
                c.keyspace()
            )
        })?;
        if existing != replication {
            tracing::warn!(keyspace = %c.keyspace(), %existing, wanted = %replication,
                "the keyspace exists with another replication; it is kept");
        }
    }
    let multi_dc = dcs.len() > 1;
    tracing::info!(?dcs, %replication, serve_with = if multi_dc { "local_quorum" } else { "quorum" },
        "CQL replication");
    scylla_schema::setup(&session, &c.keyspace(), &replication)
        .await
        .map_err(|e| anyhow::anyhow!("creating the schema in {}: {e}", c.keyspace()))?;
    tracing::info!(keyspace = %c.keyspace(), "CQL schema is current");
    let topic = c.topic();
    let push_topic = crate::push::kafka::topic(&c.cluster);
    let names = [topic.as_str(), push_topic.as_str()];
    let (brokers, existing) = crate::retry::until(wait, Duration::from_secs(2), "Kafka", || {
        kafka::describe(&c.kafka_brokers, &names)
    })
    .await?;
    let kafka_replication = kafka::choose_replication(args.kafka_replication, brokers, unsafe_ok)
        .map_err(|e| anyhow::anyhow!("--kafka-replication: {e}"))?;
    for (name, rf) in &existing {
        kafka::choose_replication(Some(*rf as i32), brokers, unsafe_ok).map_err(|e| {
            anyhow::anyhow!(
                "topic {name} exists with {e}; raise it with a partition reassignment \
                 (kafka-reassign-partitions.sh) before running Tern on this cluster"
            )
        })?;
    }
    tracing::info!(
        brokers,
        replication = kafka_replication,
        min_insync = kafka::min_insync(kafka_replication),
        "Kafka replication"
    );
    crate::retry::until(wait, Duration::from_secs(2), "Kafka", || {
        kafka::ensure_topic(&c.kafka_brokers, &topic, args.partitions, kafka_replication)
    })
    .await?;
    crate::push::setup(
        &session,
        &c.keyspace(),
        &c.kafka_brokers,
        &c.cluster,
        args.partitions,
        kafka_replication,
    )
    .await?;
    Ok(())
}

/// Accept until `until` fires. With `tls`, each connection's handshake runs in its own task
/// (a slow or plain-HTTP client never holds up the loop). Connections are watched by
/// `graceful` when given (the client listener, drained on shutdown).
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    graceful: Option<Arc<hyper_util::server::graceful::GracefulShutdown>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    until: tokio_util::sync::CancellationToken,
) {
    let handshake_timeout = Duration::from_secs(state.cfg.request_timeout);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(state.cfg.request_timeout))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = until.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let watcher = graceful.as_ref().map(|g| g.watcher());
        let Some(acceptor) = tls.clone() else {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            tokio::spawn(async move {
                match watcher {
                    Some(w) => drop(w.watch(conn).await),
                    None => drop(conn.await),
                }
            });
            continue;
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            let crate::tls::Accepted::Tls(stream) =
                crate::tls::accept(&acceptor, stream, handshake_timeout).await
            else {
                return;
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(*stream), svc);
            match watcher {
                Some(w) => drop(w.watch(conn.into_owned()).await),
                None => drop(conn.await),
            }
        });
    }
}

async fn flush_receipts(st: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(st.cfg.receipt_flush_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => st.flush_receipts().await,
            _ = st.stop.cancelled() => break,
        }
    }
    st.flush_receipts().await;
}
