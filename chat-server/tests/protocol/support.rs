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

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    dev_auth: bool,
    stderr_log: PathBuf,
}

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
        let stderr_log = dir.path().join("server.log");
        let mut s = TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            dev_auth,
            stderr_log,
        };
        s.spawn("127.0.0.1:0");
        s
    }

    fn spawn(&mut self, listen: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", listen, "--jwt-secret", SECRET])
            .args(self.dev_auth.then_some("--dev-auth"))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn chat-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("tern: listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log:\n{}", self.log()));
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no drain, no flush.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        unsafe_kill(c.id(), "TERM");
        c.wait().unwrap()
    }

    /// Wait for a process already signalled to exit.
    pub fn terminate_wait(&mut self) -> std::process::ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// Start again on the same address and data directory.
    pub fn restart(&mut self) {
        let listen = self.addr.to_string();
        for _ in 0..50 {
            if std::net::TcpListener::bind(self.addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn(&listen);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={}", self.addr, token)
    }

    pub fn api(&self, user: u64) -> Api {
        Api {
            base: format!("http://{}", self.addr),
            token: token(user),
            http: reqwest::Client::new(),
        }
    }

    pub async fn ws(&self, user: u64) -> Ws {
        Ws::connect(&self.ws_url(&token(user))).await
    }

    /// The HTTP status of an unauthenticated GET.
    pub async fn status(&self, path: &str) -> u16 {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log());
        }
    }
}

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
