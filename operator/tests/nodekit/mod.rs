//! Shared pieces of the real-node suites (`operator/tests/node*.rs`): waiting, kubectl, the
//! cluster's pods and conditions, WebSocket/HTTP clients through the edge Service, and the
//! zero-loss assertions. Each suite does `mod nodekit; use nodekit::*;`.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};
use tern_operator::ChatCluster;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A 16×16 RGB PNG (made with zlib; the server re-encodes images, so only its shape matters).
pub const PNG_HEX: &str = "89504e470d0a1a0a0000000d4948445200000010000000100802000000909168360000019649444154789c15d151154421084551231881084630021188608413c1084620021188400422cc1bbfd9accb758cc11cc8600df640073638030677f0063e88410e6ad083312673229335d9139dd8e44c98dcc99bf8242639a949cf0f08531061095b50c18423205ce1092e849042092d1f58cc852cd6622f74618bb36071176fe18b58e4a216bd3eb0991bd9accddee8c63667c3e66edec637b1c94d6d7a7f40998a284bd98a2aa61c05e52a4f712594544a69fd80310d3196b10d35cc3806c6359ee146186994d1f681c33cc8611df6410f7638070ef7f00e7e88431eead0e703ff02bf4abe23bfd85f906ff537fc7f171e38042414f4f73de3322f7259977dd18b5dcefd8fdfcbbbf8252e79a94bdf0f3ce6431eebb11ffab0c779ffe5f7f11efe88473eead1ef03ce74c459ce76d431e7f83fca759ee34e38e994d3fe81600612ac60071a5870e21ffc062ff020820c2ae8f84032134956b2134d2c39f93ff3262ff124924c2ae9fc40310b2956b10b2dac38f52fe516aff0228a2caae8fa40331b6956b31b6dac39fdaff036aff1269a6caae9e6078802701011b3f6fb0000000049454e44ae426082";

pub fn png() -> Vec<u8> {
    (0..PNG_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&PNG_HEX[i..i + 2], 16).unwrap())
        .collect()
}

pub fn namespace() -> String {
    std::env::var("TERN_KUBE_NS").unwrap_or_else(|_| "tern-e2e".into())
}

pub fn step(t0: Instant, what: &str) {
    eprintln!("\n== [{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// Poll `f` every 500 ms until it yields, or panic after `limit` with the last state.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                if e != last {
                    eprintln!("   … {what}: {e}");
                    last = e;
                }
            }
        }
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl (PATH from e2e/env/env.sh)");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- the cluster ---------------------------------------------------------------------------

pub struct Cluster {
    pub client: Client,
    pub ns: String,
    /// The ChatCluster's name.
    pub name: String,
    pub pods: Api<Pod>,
}

impl Cluster {
    pub fn chatclusters(&self) -> Api<DynamicObject> {
        let ar = ApiResource::erase::<ChatCluster>(&());
        Api::namespaced_with(self.client.clone(), &self.ns, &ar)
    }

    pub async fn pods_of(&self, component: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component={component}",
            self.name
        ));
        let mut pods: Vec<Pod> = self
            .pods
            .list(&lp)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    /// Running and Ready pods of a component, exactly `n` of them.
    pub async fn ready_pods(&self, component: &str, n: usize) -> Result<Vec<Pod>, String> {
        let pods = self.pods_of(component).await;
        let ready: Vec<Pod> = pods.iter().filter(|p| is_ready(p)).cloned().collect();
        if ready.len() == n && pods.len() == n {
            Ok(ready)
        } else {
            Err(format!(
                "{component}: {} of {} pods ready, want {n}: {}",
                ready.len(),
                pods.len(),
                pods.iter().map(pod_line).collect::<Vec<_>>().join("; ")
            ))
        }
    }

    pub async fn condition(&self, ty: &str) -> Option<(String, String, String)> {
        let cc = self.chatclusters().get_opt(&self.name).await.ok()??;
        let conds = cc.data["status"]["conditions"].as_array()?.clone();
        let c = conds.iter().find(|c| c["type"] == ty)?;
        Some((
            c["status"].as_str().unwrap_or("").into(),
            c["reason"].as_str().unwrap_or("").into(),
            c["message"].as_str().unwrap_or("").into(),
        ))
    }
}

pub fn is_ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running")
        && st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

pub fn pod_ip(p: &Pod) -> String {
    p.status.as_ref().unwrap().pod_ip.clone().unwrap()
}

pub fn pod_line(p: &Pod) -> String {
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    format!(
        "{} {phase} ready={} restarts={}",
        p.name_any(),
        is_ready(p),
        restarts(p)
    )
}

/// `chat_connections` of one edge pod, read from its /metrics on the pod IP (the `metrics`
/// port, 9090: /metrics is not on the client port).
pub async fn connections(ip: &str) -> i64 {
    let port = tern_operator::resources::METRICS_PORT;
    let text = reqwest::get(format!("http://{ip}:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("chat_connections "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as i64)
}

// ---- clients -------------------------------------------------------------------------------

pub struct Api2 {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api2 {
    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.req(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.req(reqwest::Method::POST, path, Some(body)).await
    }

    /// Every message of a chat, by pages of 200.
    pub async fn history(&self, chat: u64) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (s, v) = self
                .get(&format!(
                    "/v1/chats/{chat}/messages?after_seq={after}&limit=200"
                ))
                .await;
            assert_eq!(s, 200, "history: {v}");
            let page = v["messages"].as_array().unwrap().clone();
            if let Some(last) = page.last() {
                after = last["seq"].as_u64().unwrap();
            }
            all.extend(page);
            if v["has_more"] != true {
                return all;
            }
        }
    }
}

pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub stash: Vec<Value>,
}

impl Ws {
    pub async fn connect(url: &str) -> Result<Ws, String> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let mut w = Ws { ws, stash: vec![] };
        w.expect("hello", Duration::from_secs(5))
            .await
            .ok_or("no hello")?;
        Ok(w)
    }

    pub async fn send(&mut self, v: Value) -> bool {
        self.ws.send(Message::text(v.to_string())).await.is_ok()
    }

    /// The next frame (stashed ones first); `None` on timeout or a closed socket.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        if !self.stash.is_empty() {
            return Some(self.stash.remove(0));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return None;
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The first frame of type `ty` (others are stashed for later).
    pub async fn expect(&mut self, ty: &str, timeout: Duration) -> Option<Value> {
        if let Some(i) = self.stash.iter().position(|f| f["type"] == ty) {
            return Some(self.stash.remove(i));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut other = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == ty {
                        break Some(v);
                    }
                    other.push(v);
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    break None;
                }
                Ok(Some(Ok(_))) => {}
            }
        };
        self.stash.extend(other);
        found
    }

    /// Every `message` frame that arrives within `quiet` of the previous one.
    pub async fn drain_messages(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .stash
            .iter()
            .filter(|f| f["type"] == "message")
            .cloned()
            .collect();
        self.stash.retain(|f| f["type"] != "message");
        while let Some(f) = self.next(quiet).await {
            if f["type"] == "message" {
                out.push(f);
            }
        }
        out
    }

    /// Wait for the ack (or error) answering `cid`.
    pub async fn answer(&mut self, cid: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err("timeout".into());
            }
            let Some(f) = self.next(left).await else {
                return Err("closed or timeout".into());
            };
            if f["client_msg_id"] == cid {
                if f["type"] == "ack" {
                    return Ok(f);
                }
                if f["type"] == "error" {
                    return Err(format!("error {}", f["code"]));
                }
            }
        }
    }
}

pub fn token(secret: &[u8], user: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user.to_string(), "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[derive(Clone)]
pub struct Clients {
    pub secret: Vec<u8>,
    pub base: String,
    pub http: reqwest::Client,
}

impl Clients {
    pub fn api(&self, user: u64) -> Api2 {
        Api2 {
            http: self.http.clone(),
            base: format!("http://{}", self.base),
            token: token(&self.secret, user),
        }
    }
    pub fn url(&self, user: u64) -> String {
        format!("ws://{}/ws?token={}", self.base, token(&self.secret, user))
    }
    /// Connect through the Service, retrying while kube-proxy still routes to a dead pod.
    pub async fn ws(&self, user: u64) -> Ws {
        let mut last = String::new();
        for _ in 0..60 {
            match Ws::connect(&self.url(user)).await {
                Ok(w) => return w,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("user {user} could not connect through the Service: {last}");
    }
    /// Connect through the Service until the connection lands on the edge pod at `want` (told
    /// by that pod's `chat_connections` growing), so a test can place clients on both edges
    /// while going through kube-proxy like any client.
    pub async fn ws_on(&self, user: u64, want: &str) -> Ws {
        for _ in 0..40 {
            let before = connections(want).await;
            let w = self.ws(user).await;
            if connections(want).await > before {
                return w;
            }
            drop(w);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("user {user} never landed on edge {want} through the Service");
    }
}

/// Send `cid` until an ack comes back: resend the same `client_msg_id` (idempotent) after
/// `unavailable`, a timeout or a dropped connection (then reconnect through the Service).
pub async fn send_until_acked(
    c: &Clients,
    ws: &mut Ws,
    user: u64,
    chat: u64,
    cid: &str,
    limit: Duration,
) -> Value {
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < limit, "{cid} not acked within {limit:?}");
        let frame = json!({"type":"message","chat_id":chat,"content":format!("stream {cid}"),"client_msg_id":cid});
        if ws.send(frame).await {
            match ws.answer(cid, Duration::from_secs(10)).await {
                Ok(ack) => return ack,
                Err(e) if e.starts_with("error") => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                Err(_) => {}
            }
        }
        // The connection is gone or silent: reconnect through the Service.
        *ws = c.ws(user).await;
    }
}

/// Every acked message is stored under its acked seq, seqs are 1..=n without gaps, and each
/// `client_msg_id` appears once.
pub async fn assert_intact(api: &Api2, chat: u64, acks: &BTreeMap<String, Value>) -> usize {
    let all = api.history(chat).await;
    let seqs: Vec<u64> = all.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "gapless seq in chat {chat}"
    );
    let mut seen = BTreeSet::new();
    for m in &all {
        if let Some(cid) = m["client_msg_id"].as_str() {
            assert!(
                seen.insert(cid.to_string()),
                "duplicate client_msg_id {cid}"
            );
        }
    }
    let by_cid: BTreeMap<&str, &Value> = all
        .iter()
        .filter_map(|m| Some((m["client_msg_id"].as_str()?, m)))
        .collect();
    for (cid, ack) in acks {
        let m = by_cid
            .get(cid.as_str())
            .unwrap_or_else(|| panic!("acked {cid} is not stored"));
        assert_eq!(m["seq"], ack["seq"], "{cid} stored under another seq");
        assert_eq!(m["message_id"], ack["message_id"], "{cid}");
    }
    all.len()
}

pub fn seqs(frames: &[Value]) -> Vec<u64> {
    let mut s: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// A receiver's view after a stream: what it got live plus a sync from the first gap.
pub async fn caught_up(ws: &mut Ws, chat: u64, n: u64) {
    let mut got = seqs(&ws.drain_messages(Duration::from_millis(1500)).await);
    let contiguous = got.iter().zip(1..).take_while(|(s, i)| **s == *i).count() as u64;
    let mut after = contiguous;
    loop {
        assert!(
            ws.send(json!({"type":"sync","chat_id":chat,"after_seq":after,"limit":200}))
                .await
        );
        let page = ws
            .expect("sync", Duration::from_secs(10))
            .await
            .expect("sync answer");
        let msgs = page["messages"].as_array().unwrap().clone();
        got.extend(seqs(&msgs));
        if let Some(l) = msgs.last() {
            after = l["seq"].as_u64().unwrap();
        }
        if page["has_more"] != true {
            break;
        }
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, (1..=n).collect::<Vec<_>>(), "receiver caught up");
}

/// The next `presence` frame about `user` (others are skipped).
pub async fn presence_of(ws: &mut Ws, user: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = ws
            .expect("presence", left)
            .await
            .unwrap_or_else(|| panic!("no presence of user {user}"));
        if p["user_id"] == user {
            return p;
        }
    }
}

pub fn force_delete(ns: &str, pod: &str) {
    kubectl(&[
        "delete",
        "pod",
        "-n",
        ns,
        pod,
        "--force",
        "--grace-period=0",
        "--wait=false",
    ]);
}

pub mod deps;
pub mod stream;
