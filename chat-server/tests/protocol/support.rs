//! Test harness: runs the real `chat-server` binary on port 0 and talks to it through real
//! HTTP and WebSocket clients. Every test gets its own server process and data directory.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789";

/// The backend the suite runs against: `TERN_TEST_BACKEND=distributed` runs every test on a
/// cluster of separate processes (2 edges, 2 delivery, 1 presence) over the real Kafka,
/// Cassandra and Redis named by `TERN_KAFKA_BROKERS`, `TERN_CQL_NODES` and `TERN_REDIS_URL`
/// (`eval "$(e2e/env/env.sh)"`); otherwise one embedded process.
pub fn distributed() -> bool {
    std::env::var("TERN_TEST_BACKEND").is_ok_and(|v| v == "distributed")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// One process of the server under test.
struct Proc {
    role: &'static str,
    index: usize,
    addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

pub struct TestServer {
    /// The first edge (the only process in embedded mode).
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    procs: Vec<Proc>,
    args: Vec<String>,
    dev_auth: bool,
    /// Distributed: the cluster name (keyspace, topic, Redis prefix) of this test.
    cluster: Option<String>,
    /// Clients go to the first edge only (the test checks a per-node limit).
    pinned: bool,
    next_ws: std::sync::atomic::AtomicUsize,
    next_api: std::sync::atomic::AtomicUsize,
}

/// Flags whose effect is per node: tests that use them keep all clients on one edge.
const NODE_LOCAL_FLAGS: &[&str] = &["--max-connections", "--send-queue"];

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(&[]).await
    }

    /// Start with extra flags, e.g. `&["--heartbeat-interval", "1"]`.
    pub async fn start_with(args: &[&str]) -> TestServer {
        Self::start_opts(args, true).await
    }

    /// Start without `--dev-auth` (the production default).
    pub async fn start_without_dev_auth() -> TestServer {
        Self::start_opts(&[], false).await
    }

    async fn start_opts(args: &[&str], dev_auth: bool) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster =
            distributed().then(|| format!("t{:x}{:08x}", std::process::id() & 0xffff, rand_u32()));
        let roles: &[&'static str] = if cluster.is_some() {
            &["edge", "edge", "delivery", "delivery", "presence"]
        } else {
            &["all"]
        };
        let mut counts = std::collections::HashMap::new();
        let procs = roles
            .iter()
            .map(|role| {
                let index = *counts.entry(*role).and_modify(|n| *n += 1).or_insert(0);
                Proc {
                    role,
                    index,
                    addr: "127.0.0.1:0".parse().unwrap(),
                    child: None,
                    log: dir.path().join(format!("{role}{index}.log")),
                }
            })
            .collect();
        let mut s = TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            procs,
            args: args.iter().map(|s| s.to_string()).collect(),
            dev_auth,
            pinned: args.iter().any(|a| NODE_LOCAL_FLAGS.contains(a)),
            cluster,
            next_ws: Default::default(),
            next_api: Default::default(),
        };
        if s.cluster.is_some() {
            s.setup();
        }
        s.spawn_dead();
        s.wait_ready().await;
        s
    }

    /// `chat-server setup` for this test's cluster (keyspace and topic).
    fn setup(&self) {
        let out = self
            .command()
            .args(["setup", "--partitions", "4", "--timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run chat-server setup");
        assert!(
            out.status.success(),
            "chat-server setup failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        c.env(
            "RUST_LOG",
            std::env::var("TERN_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("RUST_BACKTRACE", "0");
        if let Some(name) = &self.cluster {
            c.env("CHAT_CLUSTER", name)
                .env(
                    "CHAT_KAFKA_BROKERS",
                    env_or("TERN_KAFKA_BROKERS", "127.0.0.1:19092"),
                )
                .env(
                    "CHAT_SCYLLA_NODES",
                    env_or("TERN_CQL_NODES", "127.0.0.1:19042"),
                )
                .env(
                    "CHAT_REDIS_URL",
                    env_or("TERN_REDIS_URL", "redis://127.0.0.1:16379"),
                );
        }
        c
    }

    /// Start every process that is not running (on its old address when it had one).
    fn spawn_dead(&mut self) {
        let mut started = Vec::new();
        for i in 0..self.procs.len() {
            if self.procs[i].child.is_some() {
                continue;
            }
            let p = &self.procs[i];
            let listen = p.addr.to_string();
            if p.addr.port() != 0 {
                for _ in 0..50 {
                    if std::net::TcpListener::bind(p.addr).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p.log)
                .unwrap();
            let mut cmd = self.command();
            cmd.args(["--listen", &listen, "--jwt-secret", SECRET])
                .args(self.dev_auth.then_some("--dev-auth"))
                .arg("--data-dir")
                .arg(self.dir.path().join("data"));
            if let Some(name) = &self.cluster {
                cmd.args(["--backend", "distributed", "--role", p.role])
                    .args(["--node-id", &format!("{name}-{}{}", p.role, p.index)]);
            }
            let child = cmd
                .args(&self.args)
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("spawn chat-server");
            self.procs[i].child = Some(child);
            started.push(i);
        }
        for i in started {
            let mut line = String::new();
            let stdout = self.procs[i].child.as_mut().unwrap().stdout.take().unwrap();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            let addr = line
                .trim()
                .strip_prefix("tern: listening on http://")
                .unwrap_or_else(|| panic!("unexpected first line {line:?}; logs:\n{}", self.log()));
            self.procs[i].addr = addr.parse().unwrap();
        }
        self.addr = self.procs[0].addr;
    }

    /// Wait until every process answers `/readyz` (cluster joined, partitions assigned).
    async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for p in &self.procs {
            loop {
                let url = format!("http://{}/readyz", p.addr);
                if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}{} not ready after 60 s; logs:\n{}",
                    p.role,
                    p.index,
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn edges(&self) -> Vec<SocketAddr> {
        self.procs
            .iter()
            .filter(|p| p.role == "edge" || p.role == "all")
            .map(|p| p.addr)
            .collect()
    }

    /// The edge the next client goes to: alternating over the edges unless pinned.
    fn pick(&self, counter: &std::sync::atomic::AtomicUsize) -> SocketAddr {
        let edges = self.edges();
        if self.pinned {
            return edges[0];
        }
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        edges[n % edges.len()]
    }

    /// Every process's log.
    pub fn log(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "== {}{} ({}) ==\n{}",
                    p.role,
                    p.index,
                    p.addr,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The first edge's process id.
    pub fn pid(&self) -> u32 {
        self.procs[0].child.as_ref().unwrap().id()
    }

    /// SIGKILL every process: no drain, no flush.
    pub fn kill9(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                c.kill().unwrap();
                c.wait().unwrap();
            }
        }
    }

    /// SIGKILL the processes of one role (`edge`, `delivery`, `presence`) with this index.
    pub fn kill9_one(&mut self, role: &str, index: usize) {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.role == role && p.index == index)
            .expect("no such process");
        let mut c = p.child.take().expect("already stopped");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// The address of one edge.
    pub fn edge(&self, index: usize) -> SocketAddr {
        self.edges()[index]
    }

    /// SIGTERM the first edge (the whole server in embedded mode) and wait for its exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.procs[0].child.take().unwrap();
        unsafe_kill(c.id(), "TERM");
        c.wait().unwrap()
    }

    /// Wait for the first edge, already signalled, to exit.
    pub fn terminate_wait(&mut self) -> std::process::ExitStatus {
        self.procs[0].child.take().unwrap().wait().unwrap()
    }

    /// Start the stopped processes again, on the same addresses and data.
    pub fn restart(&mut self) {
        self.spawn_dead();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for p in &self.procs {
            while std::net::TcpStream::connect(p.addr).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "restart: {} not listening",
                    p.addr
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Like [`restart`](Self::restart), then wait until every process is ready.
    pub async fn restart_ready(&mut self) {
        self.restart();
        self.wait_ready().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={}", self.pick(&self.next_ws), token)
    }

    pub fn api(&self, user: u64) -> Api {
        Api {
            base: format!("http://{}", self.pick(&self.next_api)),
            token: token(user),
            http: reqwest::Client::new(),
        }
    }

    pub async fn ws(&self, user: u64) -> Ws {
        Ws::connect(&self.ws_url(&token(user))).await
    }

    /// A WebSocket to a given edge.
    pub async fn ws_at(&self, edge: usize, user: u64) -> Ws {
        Ws::connect(&format!(
            "ws://{}/ws?token={}",
            self.edge(edge),
            token(user)
        ))
        .await
    }

    /// The HTTP status of an unauthenticated GET.
    pub async fn status(&self, path: &str) -> u16 {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A metric of one process (`role`, `index`), if it is running and exports it.
    pub async fn metric_of(&self, role: &str, index: usize, name: &str) -> Option<f64> {
        let p = self
            .procs
            .iter()
            .find(|p| p.role == role && p.index == index && p.child.is_some())?;
        let text = reqwest::get(format!("http://{}/metrics", p.addr))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// An API client on a given edge.
    pub fn api_at(&self, edge: usize, user: u64) -> Api {
        Api {
            base: format!("http://{}", self.edge(edge)),
            token: token(user),
            http: reqwest::Client::new(),
        }
    }

    /// A metric summed over every process.
    pub async fn metric(&self, name: &str) -> f64 {
        let mut total = 0.0;
        let mut found = false;
        for p in &self.procs {
            if p.child.is_none() {
                continue;
            }
            let Ok(resp) = reqwest::get(format!("http://{}/metrics", p.addr)).await else {
                continue;
            };
            let text = resp.text().await.unwrap();
            if let Some(v) = text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .map(|v| v.trim().parse::<f64>().unwrap())
            }) {
                total += v;
                found = true;
            }
        }
        assert!(found, "metric {name} missing");
        total
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- server logs ----\n{}", self.log());
        }
        if let Some(name) = self.cluster.take() {
            drop_cluster(name);
        }
    }
}

/// Drop a test cluster's keyspace and topic, so runs do not pile up schema in Cassandra.
#[cfg(feature = "distributed")]
fn drop_cluster(name: String) {
    let cleanup = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nodes = vec![env_or("TERN_CQL_NODES", "127.0.0.1:19042")];
            if let Ok(session) = scylla::client::session_builder::SessionBuilder::new()
                .known_nodes(&nodes)
                .build()
                .await
            {
                let _ = session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
                    .await;
            }
            let admin: Result<
                rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
                _,
            > = rdkafka::ClientConfig::new()
                .set(
                    "bootstrap.servers",
                    env_or("TERN_KAFKA_BROKERS", "127.0.0.1:19092"),
                )
                .create();
            if let Ok(admin) = admin {
                let _ = admin
                    .delete_topics(
                        &[&format!("{name}.messages")],
                        &rdkafka::admin::AdminOptions::new(),
                    )
                    .await;
            }
        });
    });
    let _ = cleanup.join();
}

#[cfg(not(feature = "distributed"))]
fn drop_cluster(_: String) {}

fn unsafe_kill(pid: u32, sig: &str) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

/// An HS256 token for `user` signed with the test secret.
pub fn token(user: u64) -> String {
    token_with(user, SECRET, 3600)
}

pub fn token_with(user: u64, secret: &str, ttl: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user.to_string(), "exp": now + ttl}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// HTTP client for one user.
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.req(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.req(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.req(reqwest::Method::DELETE, path, None).await
    }

    pub async fn direct(&self, other: u64) -> u64 {
        let (s, v) = self
            .post("/v1/chats", json!({"type":"direct","members":[other]}))
            .await;
        assert!(s == 201 || s == 200, "{s} {v}");
        v["chat_id"].as_u64().unwrap()
    }

    pub async fn group(&self, members: &[u64]) -> u64 {
        let (s, v) = self
            .post(
                "/v1/chats",
                json!({"type":"group","title":"g","members":members}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["chat_id"].as_u64().unwrap()
    }

    /// One member's entry of `GET /v1/chats/{chat}/receipts`.
    pub async fn marks_of(&self, chat: u64, user: u64) -> Value {
        let (st, rec) = self.get(&format!("/v1/chats/{chat}/receipts")).await;
        assert_eq!(st, 200, "{rec}");
        rec["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user_id"] == user)
            .unwrap_or_else(|| panic!("user {user} not in {rec}"))
            .clone()
    }

    pub async fn history(&self, chat: u64, query: &str) -> Value {
        let (s, v) = self
            .get(&format!("/v1/chats/{chat}/messages?{query}"))
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    pub async fn send(&self, chat: u64, content: &str) -> Value {
        let (s, v) = self
            .post(
                &format!("/v1/chats/{chat}/messages"),
                json!({"content": content}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client that has received its `hello`.
pub struct Ws {
    pub stream: WsStream,
    pub hello: Value,
    /// Frames read while waiting for something else, in arrival order.
    pub backlog: std::collections::VecDeque<Value>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        let mut ws = Ws {
            stream,
            hello: Value::Null,
            backlog: Default::default(),
        };
        let hello = ws.next_frame(Duration::from_secs(5)).await.expect("hello");
        assert_eq!(hello["type"], "hello", "{hello}");
        ws.hello = hello;
        ws
    }

    /// Connect with a tiny kernel receive buffer (no autotuning), to play a client that
    /// cannot keep up.
    pub async fn connect_tiny_rcvbuf(addr: SocketAddr, url: &str) -> Ws {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(8 * 1024).unwrap();
        sock.connect(&addr.into()).unwrap();
        sock.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(sock.into()).unwrap();
        let (stream, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                .await
                .unwrap();
        let mut ws = Ws {
            stream,
            hello: Value::Null,
            backlog: Default::default(),
        };
        ws.hello = ws.next_frame(Duration::from_secs(5)).await.expect("hello");
        ws
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.stream
            .send(Message::Text(t.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON frame (backlog first), or None on timeout/close.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return None;
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next frame of type `ty`; others go to the backlog.
    pub async fn expect(&mut self, ty: &str) -> Value {
        self.expect_within(ty, Duration::from_secs(5)).await
    }

    pub async fn expect_within(&mut self, ty: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(i) = self.backlog.iter().position(|v| v["type"] == ty) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == ty {
                        return v;
                    }
                    self.backlog.push_back(v);
                }
                Ok(Some(Ok(Message::Close(c)))) => panic!(
                    "closed ({c:?}) while waiting for {ty}; backlog {:?}",
                    self.backlog
                ),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("error {e} while waiting for {ty}"),
                Ok(None) => panic!("stream ended while waiting for {ty}"),
                Err(_) => panic!(
                    "no {ty} frame within {timeout:?}; backlog {:?}",
                    self.backlog
                ),
            }
        }
    }

    /// Like [`Ws::expect_within`], but pings every 500 ms meanwhile (to stay alive with short
    /// heartbeat intervals).
    pub async fn expect_keepalive(&mut self, ty: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.backlog.iter().position(|v| v["type"] == ty) {
                return self.backlog.remove(i).unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {ty} within {timeout:?}; backlog {:?}",
                self.backlog
            );
            self.send(serde_json::json!({"type":"ping"})).await;
            let until = tokio::time::Instant::now() + Duration::from_millis(500);
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, self.stream.next()).await {
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == ty {
                        return v;
                    }
                    if v["type"] != "pong" {
                        self.backlog.push_back(v);
                    }
                }
            }
        }
    }

    /// Assert nothing of type `ty` arrives within `d`.
    pub async fn expect_none(&mut self, ty: &str, d: Duration) {
        assert!(
            !self.backlog.iter().any(|v| v["type"] == ty),
            "unexpected {ty} in backlog"
        );
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, self.stream.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_ne!(v["type"], ty, "unexpected frame {v}");
                self.backlog.push_back(v);
            }
        }
    }

    /// Send a message frame and wait for its ack.
    pub async fn send_msg(&mut self, chat: u64, content: &str, cid: &str) -> Value {
        self.send(json!({"type":"message","chat_id":chat,"content":content,"client_msg_id":cid}))
            .await;
        loop {
            let f = self.expect("ack").await;
            if f["client_msg_id"] == cid {
                return f;
            }
        }
    }

    /// Send a message and wait for its `ack` (`Ok`) or its `error` (`Err(code)`); `Err("closed")`
    /// when the connection dies, `Err("timeout")` after `timeout`. Other frames are kept.
    pub async fn try_send_msg(
        &mut self,
        chat: u64,
        content: &str,
        cid: &str,
        timeout: Duration,
    ) -> Result<Value, String> {
        let frame = json!({"type":"message","chat_id":chat,"content":content,"client_msg_id":cid});
        if self
            .stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            return Err("closed".into());
        }
        self.wait_answer(cid, timeout).await
    }

    /// Wait for the `ack` or `error` answering `cid` (see [`Ws::try_send_msg`]).
    pub async fn wait_answer(&mut self, cid: &str, timeout: Duration) -> Result<Value, String> {
        let answers =
            |v: &Value| (v["type"] == "ack" || v["type"] == "error") && v["client_msg_id"] == cid;
        let outcome = |v: Value| {
            if v["type"] == "ack" {
                Ok(v)
            } else {
                Err(v["code"].as_str().unwrap_or("?").to_string())
            }
        };
        if let Some(i) = self.backlog.iter().position(answers) {
            return outcome(self.backlog.remove(i).unwrap());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if answers(&v) {
                        return outcome(v);
                    }
                    self.backlog.push_back(v);
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                    return Err("closed".into());
                }
                Ok(Some(Ok(_))) => {}
                Err(_) => return Err("timeout".into()),
            }
        }
    }

    /// Send a frame without waiting; false when the connection is gone.
    pub async fn try_send(&mut self, v: Value) -> bool {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .is_ok()
    }

    /// Every `message` frame received within `quiet` of the previous one (backlog included).
    pub async fn drain_messages(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let backlog: Vec<Value> = self.backlog.drain(..).collect();
        for v in backlog {
            if v["type"] == "message" {
                out.push(v);
            } else {
                self.backlog.push_back(v);
            }
        }
        loop {
            match tokio::time::timeout(quiet, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "message" {
                        out.push(v);
                    } else {
                        self.backlog.push_back(v);
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return out;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The connection still answers a ping.
    pub async fn assert_alive(&mut self) {
        self.send(json!({"type":"ping"})).await;
        self.expect("pong").await;
    }

    /// Wait for the close frame; returns its code.
    pub async fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Close(Some(c))))) => return Some(c.code.into()),
                Ok(Some(Ok(Message::Close(None)))) => return None,
                Ok(Some(Ok(Message::Text(t)))) => self
                    .backlog
                    .push_back(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("no close within {timeout:?}"),
            }
        }
    }
}
