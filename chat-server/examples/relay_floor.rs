//! The relay floor: the least a WebSocket chat relay on this stack can do per message, to
//! measure Tern's embedded numbers against (issue #13, `docs/benchmarks.md`).
//!
//! It speaks just enough of `PROTOCOL.md` for `chat-bench direct|group|sweep`: `POST /v1/chats`
//! (direct and group, kept in memory), `GET /ws?token=` (the same HS256 tokens as the server),
//! the `hello`, `message` → `ack` to the sender and `message` to the other members, `ping` →
//! `pong`. It stores nothing, checks nothing beyond the token and membership, and assigns seqs
//! from an in-memory counter — **not a chat server**: it is Tern's own transport (axum,
//! tungstenite, serde_json, the same write batching) without the store, so the gap between it
//! and `chat-server` on the same pinned core is what durability and the rest of the server
//! cost.
//!
//! With `--durable` it is the **durable floor**: every message frame is appended to
//! `<data-dir>/floor.log` by one log thread (group commit: everything queued, one `pwrite` and
//! one `fdatasync`, into a file written with zeros first so an append changes no metadata), and
//! the ack and the deliveries go out only after that `fdatasync` — the least any server that
//! acks after a durable write can do on this stack and disk, with the same thread hand-off as
//! Tern's writer. It keeps no index and cannot read anything back.
//!
//! ```sh
//! cargo build --release -p chat-server --example relay_floor
//! taskset -c 1 target/release/examples/relay_floor --listen 127.0.0.1:18080 --jwt-secret benchsecret &
//! CHAT_BENCH_URL=http://127.0.0.1:18080 CHAT_JWT_SECRET=benchsecret taskset -c 0 target/release/chat-bench sweep --rates 10000,20000,30000
//! # or alternated with the real server, every scenario of compare.sh:
//! mkdir -p /tmp/floor && cp target/release/examples/relay_floor /tmp/floor/chat-server
//! chat-bench/scripts/compare.sh /tmp/floor target/release /tmp/floor-vs-tern 2
//! ```

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chat_server::auth::Auth;
use clap::Parser;
use futures::SinkExt;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A storage-free WebSocket relay speaking Tern's protocol subset, for floor measurements.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: String,
    /// HS256 secret of the client tokens (what chat-bench mints with).
    #[arg(long, env = "CHAT_JWT_SECRET")]
    jwt_secret: String,
    /// Accepted and ignored (nothing is stored), so the benchmark scripts can start this
    /// binary in place of `chat-server` (`compare.sh FLOOR_DIR TERN_DIR`).
    #[arg(long)]
    data_dir: Option<String>,
    /// Accepted and ignored, like `--data-dir`.
    #[arg(long)]
    log: Option<String>,
    /// Ack and deliver only after the frame is appended to `<data-dir>/floor.log` and
    /// fdatasynced (group commit on one log thread): the durable floor.
    #[arg(long)]
    durable: bool,
}

/// A message waiting for the log's fdatasync: its frame, its ack and where they go.
struct Job {
    frame: Utf8Bytes,
    ack: Utf8Bytes,
    to: Vec<mpsc::Sender<Utf8Bytes>>,
    sender: mpsc::Sender<Utf8Bytes>,
}

/// Size of the pre-written log file; appends wrap around at its end.
const LOG_BYTES: u64 = 64 << 20;

/// The log thread: take everything queued, append it with one `pwrite`, `fdatasync`, then
/// release the acks and deliveries.
fn log_writer(path: std::path::PathBuf, rx: std::sync::mpsc::Receiver<Job>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(LOG_BYTES >> 20) {
        f.write_all(&zeros)?;
    }
    f.sync_all()?;
    let mut off = 0u64;
    let mut buf = Vec::with_capacity(1 << 16);
    let mut jobs = Vec::new();
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        buf.clear();
        for j in &jobs {
            buf.extend_from_slice(j.frame.as_str().as_bytes());
            buf.push(b'\n');
        }
        if off + buf.len() as u64 > LOG_BYTES {
            off = 0;
        }
        f.write_all_at(&buf, off)?;
        off += buf.len() as u64;
        f.sync_data()?;
        for j in jobs.drain(..) {
            for tx in &j.to {
                let _ = tx.try_send(j.frame.clone());
            }
            let _ = j.sender.try_send(j.ack);
        }
    }
    Ok(())
}

/// A user's live connections: (connection id, its outgoing queue).
type Conns = HashMap<u64, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>;

#[derive(Default)]
struct Relay {
    chats: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
    direct: Mutex<HashMap<(u64, u64), u64>>,
    seqs: Mutex<HashMap<u64, u64>>,
    conns: Mutex<Conns>,
    next: AtomicU64,
}

struct App {
    auth: Auth,
    relay: Relay,
    /// `--durable`: the log thread's queue.
    log: Option<Mutex<std::sync::mpsc::Sender<Job>>>,
}

#[derive(Deserialize)]
struct NewChat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    members: Vec<u64>,
}

#[derive(Deserialize)]
struct Inbound {
    #[serde(rename = "type")]
    kind: String,
    chat_id: Option<u64>,
    content: Option<String>,
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log = if args.durable {
        let dir = std::path::PathBuf::from(args.data_dir.as_deref().unwrap_or("data"));
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.join("floor.log");
        std::thread::Builder::new()
            .name("floor-log".into())
            .spawn(move || {
                if let Err(e) = log_writer(path, rx) {
                    eprintln!("relay_floor: log writer failed: {e}");
                    std::process::exit(1);
                }
            })?;
        Some(Mutex::new(tx))
    } else {
        None
    };
    let app = Arc::new(App {
        auth: Auth::new(args.jwt_secret.as_bytes()),
        relay: Relay::default(),
        log,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/v1/chats", post(create_chat))
            .route("/ws", get(ws))
            .with_state(app);
        // TCP_NODELAY like chat-server (server.rs): without it every small frame waits for
        // the peer's delayed ACK (a flat ~40 ms at 5,000 msg/s).
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await?
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        eprintln!("relay_floor: listening on http://{}", args.listen);
        axum::serve(listener, router).await?;
        Ok(())
    })
}

async fn create_chat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(body): Json<NewChat>,
) -> Response {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(user) = chat_server::auth::bearer(header, None).and_then(|t| app.auth.verify(&t).ok())
    else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let r = &app.relay;
    if body.kind == "direct" {
        let Some(&other) = body.members.first() else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let key = (user.min(other), user.max(other));
        let mut direct = r.direct.lock();
        if let Some(id) = direct.get(&key) {
            return (StatusCode::OK, Json(json!({"chat_id": id}))).into_response();
        }
        let id = r.next.fetch_add(1, Ordering::Relaxed) + 1;
        direct.insert(key, id);
        r.chats.lock().insert(id, Arc::new(vec![key.0, key.1]));
        return (StatusCode::CREATED, Json(json!({"chat_id": id}))).into_response();
    }
    let id = r.next.fetch_add(1, Ordering::Relaxed) + 1;
    let mut members = body.members;
    members.push(user);
    members.sort_unstable();
    members.dedup();
    r.chats.lock().insert(id, Arc::new(members));
    (StatusCode::CREATED, Json(json!({"chat_id": id}))).into_response()
}

async fn ws(
    State(app): State<Arc<App>>,
    Query(q): Query<TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(user) = q.token.and_then(|t| app.auth.verify(&t).ok()) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    upgrade
        .read_buffer_size(4096)
        .write_buffer_size(32 * 1024)
        .on_upgrade(move |socket| run(app, user, socket))
}

async fn run(app: Arc<App>, user: u64, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(2048);
    let conn_id = app.relay.next.fetch_add(1, Ordering::Relaxed);
    app.relay
        .conns
        .lock()
        .entry(user)
        .or_default()
        .push((conn_id, tx.clone()));
    let hello = json!({"type": "hello", "user_id": user, "session_id": conn_id.to_string(), "heartbeat_interval": 30});
    let _ = tx.try_send(hello.to_string().into());
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(first) = out else { break };
                let write = async {
                    socket.feed(Message::Text(first)).await?;
                    for _ in 1..64 {
                        match rx.try_recv() {
                            Ok(f) => socket.feed(Message::Text(f)).await?,
                            Err(_) => break,
                        }
                    }
                    socket.flush().await
                };
                if write.await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                let Some(Ok(Message::Text(text))) = incoming else {
                    match incoming {
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => break,
                    }
                };
                if let Some(reply) = handle(&app, user, conn_id, text.as_str(), &tx) {
                    let _ = tx.try_send(reply.into());
                }
            }
        }
    }
    if let Some(v) = app.relay.conns.lock().get_mut(&user) {
        v.retain(|(id, _)| *id != conn_id);
    }
}

/// One inbound frame; returns the reply for this connection (ack, pong), if any. With
/// `--durable` a message's ack and deliveries are handed to the log thread instead.
fn handle(
    app: &App,
    user: u64,
    conn_id: u64,
    text: &str,
    own: &mpsc::Sender<Utf8Bytes>,
) -> Option<String> {
    let r = &app.relay;
    let f: Inbound = serde_json::from_str(text).ok()?;
    match f.kind.as_str() {
        "ping" => Some(r#"{"type":"pong"}"#.to_string()),
        "message" => {
            let chat_id = f.chat_id?;
            let members = r.chats.lock().get(&chat_id).cloned()?;
            if !members.contains(&user) {
                return None;
            }
            let seq = {
                let mut seqs = r.seqs.lock();
                let s = seqs.entry(chat_id).or_insert(0);
                *s += 1;
                *s
            };
            let message_id = uuid::Uuid::now_v7().to_string();
            let created_at = chat_server::model::now_ms();
            let frame: Utf8Bytes = json!({
                "type": "message", "message_id": message_id, "chat_id": chat_id, "seq": seq,
                "sender_id": user, "content": f.content, "media_url": null, "media": null,
                "client_msg_id": f.client_msg_id, "created_at": created_at,
            })
            .to_string()
            .into();
            let ack =
                json!({"type": "ack", "client_msg_id": f.client_msg_id, "message_id": message_id,
                             "chat_id": chat_id, "seq": seq, "created_at": created_at})
                .to_string();
            let conns = r.conns.lock();
            let to = members
                .iter()
                .flat_map(|m| conns.get(m).into_iter().flatten())
                .filter(|(id, _)| *id != conn_id)
                .map(|(_, tx)| tx.clone());
            if let Some(log) = &app.log {
                let job = Job {
                    frame,
                    ack: ack.into(),
                    to: to.collect(),
                    sender: own.clone(),
                };
                drop(conns);
                let _ = log.lock().send(job);
                return None;
            }
            for tx in to {
                let _ = tx.try_send(frame.clone());
            }
            Some(ack)
        }
        _ => None,
    }
}
