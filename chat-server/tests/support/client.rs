//! Clients of the server under test: HS256 tokens signed with the test secret, an HTTP API
//! client per user ([`Api`]) and a WebSocket client that keeps the frames it skipped ([`Ws`]).

use super::SECRET;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

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

/// An HS256 token for `user` carrying a `name` claim (any JSON value: tests send bad ones too).
pub fn token_named(user: u64, name: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user.to_string(), "exp": now + 3600, "name": name}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A long-poll client (`GET /v1/poll` + `POST /v1/frames`) of one user on one edge: a device
/// on the fallback transport. Frames it polled but was not waiting for are kept.
pub struct LongPoll {
    base: String,
    token: String,
    cursor: Option<String>,
    http: reqwest::Client,
    pub backlog: std::collections::VecDeque<Value>,
}

impl LongPoll {
    /// Open a session at `base` (`http://host:port`) and read up to its `hello`.
    pub async fn open(base: &str, token: &str) -> (LongPoll, Value) {
        let mut lp = LongPoll {
            base: base.to_string(),
            token: token.to_string(),
            cursor: None,
            http: reqwest::Client::new(),
            backlog: Default::default(),
        };
        let hello = lp.expect("hello", Duration::from_secs(5)).await;
        (lp, hello)
    }

    async fn poll(&mut self, timeout_s: u64) {
        let mut url = format!(
            "{}/v1/poll?timeout={timeout_s}&token={}",
            self.base, self.token
        );
        if let Some(c) = &self.cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let v: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        self.cursor = Some(v["cursor"].as_str().unwrap().to_string());
        self.backlog
            .extend(v["events"].as_array().unwrap().iter().cloned());
    }

    /// The next polled frame of type `ty` within `timeout` (panics otherwise).
    pub async fn expect(&mut self, ty: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.backlog.iter().position(|v| v["type"] == ty) {
                return self.backlog.remove(i).unwrap();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no {ty} polled within {timeout:?}; got {:?}",
                self.backlog
            );
            self.poll(left.as_secs().clamp(1, 5)).await;
        }
    }

    /// Poll for `d` and assert no frame matching `bad` arrives.
    pub async fn expect_none(&mut self, d: Duration, bad: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < deadline {
            self.poll(1).await;
        }
        assert!(
            !self.backlog.iter().any(&bad),
            "unexpected frame in {:?}",
            self.backlog
        );
    }

    /// Send one client frame (`POST /v1/frames`); returns its direct replies.
    pub async fn frame(&self, body: Value) -> Vec<Value> {
        let session = self
            .cursor
            .as_ref()
            .unwrap()
            .rsplit_once('.')
            .unwrap()
            .0
            .to_string();
        let r = self
            .http
            .post(format!("{}/v1/frames?session={session}", self.base))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        v["events"].as_array().unwrap().clone()
    }
}
