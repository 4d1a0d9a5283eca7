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
    let app = Arc::new(App {
        auth: Auth::new(args.jwt_secret.as_bytes()),
        relay: Relay::default(),
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
                if let Some(reply) = handle(&app.relay, user, conn_id, text.as_str()) {
                    let _ = tx.try_send(reply.into());
                }
            }
        }
    }
    if let Some(v) = app.relay.conns.lock().get_mut(&user) {
        v.retain(|(id, _)| *id != conn_id);
    }
}

/// One inbound frame; returns the reply for this connection (ack, pong), if any.
fn handle(r: &Relay, user: u64, conn_id: u64, text: &str) -> Option<String> {
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
            let conns = r.conns.lock();
            for m in members.iter() {
                for (id, tx) in conns.get(m).into_iter().flatten() {
                    if *id != conn_id {
                        let _ = tx.try_send(frame.clone());
                    }
                }
            }
            Some(
                json!({"type": "ack", "client_msg_id": f.client_msg_id, "message_id": message_id,
                       "chat_id": chat_id, "seq": seq, "created_at": created_at})
                .to_string(),
            )
        }
        _ => None,
    }
}
