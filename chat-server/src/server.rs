//! Assembling and running a server: state, background tasks, router, accept loop, drain.

use crate::api;
use crate::auth::Auth;
use crate::cache::RecentCache;
use crate::config::{RoleArg, ServeConfig};
use crate::delivery::{self, Delivery};
use crate::hub::Hub;
use crate::longpoll;
use crate::members::MemberCache;
use crate::metrics::Metrics;
use crate::presence::{LocalPresence, Subscriptions};
use crate::state::AppState;
use crate::store::sqlite::SqliteStore;
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
use tower_http::timeout::TimeoutLayer;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    store: Arc<SqliteStore>,
    accept: tokio::task::JoinHandle<()>,
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
    let path = data_dir.join("jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok((s.trim().to_string(), true));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut f = opts
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
    }
    Ok((secret, true))
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

pub fn router(state: Arc<AppState>) -> Router {
    let timeout = Duration::from_secs(state.cfg.request_timeout);
    let api = Router::new()
        .route("/v1/chats", post(api::create_chat).get(api::list_chats))
        .route("/v1/chats/{id}", get(api::get_chat))
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
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    Router::new()
        .merge(api)
        // Long polls and WebSockets outlive the request timeout by design.
        .route("/v1/poll", get(longpoll::poll))
        .route("/ws", get(ws::handler))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .merge(web::routes())
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(state.cfg.max_frame_bytes))
        .with_state(state)
}

impl Server {
    /// Open the store, start the background tasks and start accepting connections.
    pub async fn start(cfg: ServeConfig) -> anyhow::Result<Server> {
        if cfg.role != RoleArg::All {
            bail!(
                "--role {:?} needs the distributed backend (Kafka, ScyllaDB, Redis), which this build \
                 does not have yet; run without --role for the embedded all-in-one server",
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
        let (delivery, shard_rxs) = Delivery::new(shards, 16 * 1024);
        let state = Arc::new(AppState {
            auth: Auth::new(secret.as_bytes()),
            store: store.clone(),
            hub: Hub::new(cfg.send_queue),
            presence: Arc::new(LocalPresence::default()),
            subs: Subscriptions::default(),
            members: MemberCache::new(100_000),
            partners: crate::members::PartnerCache::new(1_000_000),
            cache: RecentCache::new(20_000),
            receipts: Default::default(),
            metrics: Metrics::new(),
            delivery,
            longpoll: Default::default(),
            draining: Default::default(),
            stop: Default::default(),
            tasks: Default::default(),
            connections: Default::default(),
            ready: Default::default(),
            cfg,
        });
        for rx in shard_rxs {
            state.tasks.spawn(delivery::run_shard(state.clone(), rx));
        }
        state.tasks.spawn(flush_receipts(state.clone()));
        state.tasks.spawn(longpoll::sweep(state.clone()));

        let app = router(state.clone());
        let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
        let accept = tokio::spawn(accept_loop(listener, app, state.clone(), graceful.clone()));
        state.ready.store(true, Ordering::Release);
        Ok(Server {
            addr,
            state,
            store,
            accept,
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
        st.tasks.close();
        if tokio::time::timeout_at(deadline + Duration::from_secs(5), st.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop in time");
        }
        self.store.close().await;
        tracing::info!("stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
) {
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
            _ = state.draining.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
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
