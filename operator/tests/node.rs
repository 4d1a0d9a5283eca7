//! A ChatCluster on a real Kubernetes node: kubelet + containerd + kube-proxy + CoreDNS from
//! `e2e/env/up.sh node`, every image built locally (`e2e/env/images`), the operator installed
//! as a pod by its Helm chart. Run it with `e2e/kube/run.sh`, which brings all of that up,
//! runs this test with `TERN_KUBE_NODE=1` and prints pod logs and events when it fails.
//!
//! One test, in the order a platform engineer would check a new operator:
//! 1. the ChatCluster of `e2e/kube/chatcluster.yaml` becomes Ready; every pod Running and
//!    Ready and no role pod restarted (setup ordering holds);
//! 2. real WebSocket and HTTP clients through the edge Service (NodePort on 127.0.0.1):
//!    direct and group messages across both edges, acks, receipts, presence, sync after a
//!    reconnect, a media upload and download;
//! 3. `kubectl delete pod --force --grace-period=0` of the delivery pod, then of an edge pod,
//!    while a client streams: every acked message is stored under its acked seq, no gaps, no
//!    duplicate `client_msg_id`; clients recover by reconnecting and syncing;
//! 4. a graceful delete of an edge pod: preStop pause, then drain (`reconnect`), clients move;
//! 5. deleting the ChatCluster garbage-collects what it owns; the StatefulSets' data PVCs stay.

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};
use tern_operator::ChatCluster;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const MANIFEST: &str = include_str!("../../e2e/kube/chatcluster.yaml");
const NAME: &str = "tern-dev";

/// A 16×16 RGB PNG (made with zlib; the server re-encodes images, so only its shape matters).
const PNG_HEX: &str = "89504e470d0a1a0a0000000d4948445200000010000000100802000000909168360000019649444154789c15d151154421084551231881084630021188608413c1084620021188400422cc1bbfd9accb758cc11cc8600df640073638030677f0063e88410e6ad083312673229335d9139dd8e44c98dcc99bf8242639a949cf0f08531061095b50c18423205ce1092e849042092d1f58cc852cd6622f74618bb36071176fe18b58e4a216bd3eb0991bd9accddee8c63667c3e66edec637b1c94d6d7a7f40998a284bd98a2aa61c05e52a4f712594544a69fd80310d3196b10d35cc3806c6359ee146186994d1f681c33cc8611df6410f7638070ef7f00e7e88431eead0e703ff02bf4abe23bfd85f906ff537fc7f171e38042414f4f73de3322f7259977dd18b5dcefd8fdfcbbbf8252e79a94bdf0f3ce6431eebb11ffab0c779ffe5f7f11efe88473eead1ef03ce74c459ce76d431e7f83fca759ee34e38e994d3fe81600612ac60071a5870e21ffc062ff020820c2ae8f84032134956b2134d2c39f93ff3262ff124924c2ae9fc40310b2956b10b2dac38f52fe516aff0228a2caae8fa40331b6956b31b6dac39fdaff036aff1269a6caae9e6078802701011b3f6fb0000000049454e44ae426082";

fn png() -> Vec<u8> {
    (0..PNG_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&PNG_HEX[i..i + 2], 16).unwrap())
        .collect()
}

fn namespace() -> String {
    std::env::var("TERN_KUBE_NS").unwrap_or_else(|_| "tern-e2e".into())
}

fn step(t0: Instant, what: &str) {
    eprintln!("\n== [{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// Poll `f` every 500 ms until it yields, or panic after `limit` with the last state.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
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

fn kubectl(args: &[&str]) -> String {
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

struct Cluster {
    client: Client,
    ns: String,
    pods: Api<Pod>,
}

impl Cluster {
    fn chatclusters(&self) -> Api<DynamicObject> {
        let ar = ApiResource::erase::<ChatCluster>(&());
        Api::namespaced_with(self.client.clone(), &self.ns, &ar)
    }

    async fn pods_of(&self, component: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={NAME},app.kubernetes.io/component={component}"
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
    async fn ready_pods(&self, component: &str, n: usize) -> Result<Vec<Pod>, String> {
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

    async fn condition(&self, ty: &str) -> Option<(String, String, String)> {
        let cc = self.chatclusters().get_opt(NAME).await.ok()??;
        let conds = cc.data["status"]["conditions"].as_array()?.clone();
        let c = conds.iter().find(|c| c["type"] == ty)?;
        Some((
            c["status"].as_str().unwrap_or("").into(),
            c["reason"].as_str().unwrap_or("").into(),
            c["message"].as_str().unwrap_or("").into(),
        ))
    }
}

fn is_ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running")
        && st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

fn pod_ip(p: &Pod) -> String {
    p.status.as_ref().unwrap().pod_ip.clone().unwrap()
}

fn pod_line(p: &Pod) -> String {
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

/// `chat_connections` of one edge pod, read from its /metrics on the pod IP.
async fn connections(ip: &str) -> i64 {
    let text = reqwest::get(format!("http://{ip}:8080/metrics"))
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

struct Api2 {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api2 {
    async fn req(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
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
    async fn get(&self, path: &str) -> (u16, Value) {
        self.req(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.req(reqwest::Method::POST, path, Some(body)).await
    }

    /// Every message of a chat, by pages of 200.
    async fn history(&self, chat: u64) -> Vec<Value> {
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

struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    stash: Vec<Value>,
}

impl Ws {
    async fn connect(url: &str) -> Result<Ws, String> {
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

    async fn send(&mut self, v: Value) -> bool {
        self.ws.send(Message::text(v.to_string())).await.is_ok()
    }

    /// The next frame (stashed ones first); `None` on timeout or a closed socket.
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
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
    async fn expect(&mut self, ty: &str, timeout: Duration) -> Option<Value> {
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
    async fn drain_messages(&mut self, quiet: Duration) -> Vec<Value> {
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
    async fn answer(&mut self, cid: &str, timeout: Duration) -> Result<Value, String> {
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

fn token(secret: &[u8], user: u64) -> String {
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

struct Clients {
    secret: Vec<u8>,
    base: String,
    http: reqwest::Client,
}

impl Clients {
    fn api(&self, user: u64) -> Api2 {
        Api2 {
            http: self.http.clone(),
            base: format!("http://{}", self.base),
            token: token(&self.secret, user),
        }
    }
    fn url(&self, user: u64) -> String {
        format!("ws://{}/ws?token={}", self.base, token(&self.secret, user))
    }
    /// Connect through the Service, retrying while kube-proxy still routes to a dead pod.
    async fn ws(&self, user: u64) -> Ws {
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
    async fn ws_on(&self, user: u64, want: &str) -> Ws {
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
async fn send_until_acked(
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
async fn assert_intact(api: &Api2, chat: u64, acks: &BTreeMap<String, Value>) -> usize {
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

fn seqs(frames: &[Value]) -> Vec<u64> {
    let mut s: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// A receiver's view after a stream: what it got live plus a sync from the first gap.
async fn caught_up(ws: &mut Ws, chat: u64, n: u64) {
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
async fn presence_of(ws: &mut Ws, user: u64) -> Value {
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

fn force_delete(ns: &str, pod: &str) {
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

#[tokio::test]
async fn chatcluster_on_a_real_node() {
    if std::env::var("TERN_KUBE_NODE").map_or(true, |v| v != "1") {
        eprintln!(
            "SKIPPED: set TERN_KUBE_NODE=1 (e2e/kube/run.sh brings the node up and runs this)"
        );
        return;
    }
    let t0 = Instant::now();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let ns = namespace();
    let k = Cluster {
        client: client.clone(),
        ns: ns.clone(),
        pods: Api::namespaced(client.clone(), &ns),
    };

    // ---- 1. apply, Ready, no restarts --------------------------------------------------
    step(t0, &format!("kubectl apply the ChatCluster {NAME} in {ns}"));
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata":{"name": ns}})).unwrap(),
        )
        .await;
    let obj: DynamicObject = serde_yaml::from_str(MANIFEST).unwrap();
    match k.chatclusters().create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        // Iterating on the test: `TERN_KUBE_REUSE=1` runs it on the cluster a kept run left.
        Err(kube::Error::Api(e))
            if e.code == 409 && std::env::var("TERN_KUBE_REUSE").is_ok_and(|v| v == "1") =>
        {
            eprintln!("   reusing the existing ChatCluster (TERN_KUBE_REUSE=1)")
        }
        Err(e) => panic!("create the ChatCluster: {e}"),
    }
    let applied = Instant::now();
    wait_for(
        "ChatCluster Ready=True",
        Duration::from_secs(600),
        || async {
            match k.condition("Ready").await {
                Some((s, _, _)) if s == "True" => Ok(()),
                Some((s, r, m)) => Err(format!("Ready={s} {r}: {m}")),
                None => Err("no Ready condition yet".into()),
            }
        },
    )
    .await;
    let ready_after = applied.elapsed();
    step(
        t0,
        &format!("Ready=True {:.0} s after apply", ready_after.as_secs_f64()),
    );
    let edges = wait_for("2 edge pods ready", Duration::from_secs(60), || {
        k.ready_pods("edge", 2)
    })
    .await;
    for (component, n) in [
        ("delivery", 1),
        ("presence", 1),
        ("kafka", 1),
        ("scylla", 1),
        ("redis", 1),
    ] {
        wait_for(
            &format!("{component} ready"),
            Duration::from_secs(60),
            || k.ready_pods(component, n),
        )
        .await;
    }
    let all = k.pods.list(&ListParams::default()).await.unwrap().items;
    for p in &all {
        eprintln!("   {}", pod_line(p));
    }
    for component in ["edge", "delivery", "presence"] {
        for p in k.pods_of(component).await {
            assert_eq!(
                restarts(&p),
                0,
                "role pod {} restarted: setup ordering failed",
                p.name_any()
            );
        }
    }
    // The dependencies start cleanly too (Cassandra pod 0 used to exit until its own DNS name
    // resolved: the image's entrypoint now waits for a seed to resolve).
    for component in ["kafka", "scylla", "redis"] {
        for p in k.pods_of(component).await {
            assert_eq!(restarts(&p), 0, "{} restarted", p.name_any());
        }
    }
    let printed = kubectl(&["get", "chatclusters", "-n", &ns]);
    eprintln!("{printed}");
    assert!(
        printed.contains(&format!("{NAME}-edge.{ns}.svc")),
        "kubectl get chatclusters shows the endpoint"
    );

    // ---- 2. clients through the Service ------------------------------------------------
    step(
        t0,
        "real clients through the edge Service (NodePort on 127.0.0.1)",
    );
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = svcs.get(&format!("{NAME}-edge")).await.unwrap();
    let node_port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let jwt = secrets.get(&format!("{NAME}-jwt")).await.unwrap();
    let secret = jwt.data.unwrap()["secret"].0.clone();
    let c = Clients {
        secret,
        base: format!("127.0.0.1:{node_port}"),
        http: reqwest::Client::new(),
    };
    let edge_ips: Vec<String> = edges.iter().map(pod_ip).collect();
    let (e0, e1) = (edge_ips[0].clone(), edge_ips[1].clone());
    let mut a = c.ws_on(1, &e0).await;
    let mut b = c.ws_on(2, &e1).await;
    let mut g3 = c.ws_on(3, &e1).await;
    eprintln!("   user 1 on {e0}, users 2 and 3 on {e1}");
    // The operator reads the edges' live connections into the status (and the printer
    // column of `kubectl get chatclusters`).
    wait_for(
        "status.edge.connections >= 3",
        Duration::from_secs(90),
        || async {
            let cc = k
                .chatclusters()
                .get(NAME)
                .await
                .map_err(|e| e.to_string())?;
            let n = cc.data["status"]["edge"]["connections"]
                .as_i64()
                .unwrap_or(0);
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("connections {n}"))
            }
        },
    )
    .await;
    eprintln!("{}", kubectl(&["get", "chatclusters", "-n", &ns]));
    let api1 = c.api(1);

    // Direct chat across edges: ack to the sender, the message to the receiver.
    let (s, chat) = api1
        .post("/v1/chats", json!({"type":"direct","members":[2]}))
        .await;
    assert!(s == 201 || s == 200, "create direct chat: {chat}");
    let direct = chat["chat_id"].as_u64().unwrap();
    assert!(
        a.send(json!({"type":"message","chat_id":direct,"content":"hi across edges","client_msg_id":"d1"}))
            .await
    );
    let ack = a.answer("d1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["seq"], 1);
    let m = b.expect("message", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (m["seq"].as_u64(), m["content"].as_str()),
        (Some(1), Some("hi across edges"))
    );
    // Receipts: the receiver marks read; the sender gets the receipt (batched, ~1 s).
    assert!(
        b.send(json!({"type":"read","chat_id":direct,"seq":1}))
            .await
    );
    let r = loop {
        let r = a
            .expect("receipt", Duration::from_secs(10))
            .await
            .expect("a receipt for the sender");
        if r["status"] == "read" {
            break r;
        }
    };
    assert_eq!(
        (r["user_id"].as_u64(), r["seq"].as_u64()),
        (Some(2), Some(1))
    );
    let (_, marks) = api1.get(&format!("/v1/chats/{direct}/receipts")).await;
    let m2 = marks["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == 2)
        .unwrap()
        .clone();
    assert_eq!(m2["read_seq"], 1, "{marks}");

    // Group across edges.
    let (s, g) = api1
        .post(
            "/v1/chats",
            json!({"type":"group","title":"node","members":[2,3]}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let group = g["chat_id"].as_u64().unwrap();
    assert!(
        g3.send(
            json!({"type":"message","chat_id":group,"content":"group hello","client_msg_id":"g1"})
        )
        .await
    );
    assert_eq!(
        g3.answer("g1", Duration::from_secs(10)).await.unwrap()["seq"],
        1
    );
    for w in [&mut a, &mut b] {
        let m = w.expect("message", Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            (m["chat_id"].as_u64(), m["seq"].as_u64()),
            (Some(group), Some(1))
        );
    }

    // Presence: user 4 comes online on any edge, then leaves cleanly.
    assert!(
        a.send(json!({"type":"presence_subscribe","user_ids":[4]}))
            .await
    );
    assert_eq!(presence_of(&mut a, 4).await["status"], "offline");
    let mut d = c.ws(4).await;
    assert_eq!(presence_of(&mut a, 4).await["status"], "online");
    let _ = d.ws.close(None).await;
    let p = presence_of(&mut a, 4).await;
    assert_eq!(p["status"], "offline");
    assert!(p["last_seen"].is_string(), "{p}");

    // Sync after a reconnect: b goes away, 5 messages are sent, b comes back and syncs.
    let _ = b.ws.close(None).await;
    for i in 2..=6 {
        let cid = format!("d{i}");
        assert!(a.send(json!({"type":"message","chat_id":direct,"content":"while away","client_msg_id":cid})).await);
        assert_eq!(
            a.answer(&cid, Duration::from_secs(10)).await.unwrap()["seq"],
            i
        );
    }
    let mut b = c.ws(2).await;
    assert!(
        b.send(json!({"type":"sync","chat_id":direct,"after_seq":1}))
            .await
    );
    let page = b.expect("sync", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        seqs(page["messages"].as_array().unwrap()),
        vec![2, 3, 4, 5, 6]
    );

    // Media: upload through the Service, send it, download it from both edges (a shared
    // volume behind both).
    let up = c
        .http
        .post(format!("http://{}/v1/media", c.base))
        .bearer_auth(token(&c.secret, 1))
        .header("content-type", "image/png")
        .body(png())
        .send()
        .await
        .unwrap();
    assert_eq!(up.status().as_u16(), 201);
    let media: Value = up.json().await.unwrap();
    let media_id = media["media_id"].as_str().unwrap().to_string();
    assert!(a.send(json!({"type":"message","chat_id":direct,"content":"a picture","media_id":media_id,"client_msg_id":"pic"})).await);
    a.answer("pic", Duration::from_secs(10)).await.unwrap();
    let m = b.expect("message", Duration::from_secs(10)).await.unwrap();
    assert_eq!(m["media"]["media_id"], media_id.as_str(), "{m}");
    let mut bodies = Vec::new();
    for ip in &edge_ips {
        let r = c
            .http
            .get(format!("http://{ip}:8080/v1/media/{media_id}"))
            .bearer_auth(token(&c.secret, 2))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "download from edge {ip}");
        assert_eq!(r.headers()["content-type"], "image/png");
        bodies.push(r.bytes().await.unwrap());
    }
    assert_eq!(bodies[0].len() as u64, media["size"].as_u64().unwrap());
    assert_eq!(bodies[0], bodies[1], "both edges serve the same bytes");

    // ---- 3. force-delete a delivery pod, then an edge pod, mid-stream ------------------
    step(
        t0,
        "kubectl delete pod --force of the delivery pod during a stream",
    );
    let mut acks = BTreeMap::new();
    let delivery = k.pods_of("delivery").await[0].name_any();
    for i in 0..150 {
        let cid = format!("s{i}");
        if i == 40 {
            force_delete(&ns, &delivery);
            eprintln!("   deleted {delivery} after 40 acks");
        }
        let ack = send_until_acked(&c, &mut a, 1, group, &cid, Duration::from_secs(180)).await;
        acks.insert(cid, ack);
    }
    let n = assert_intact(&c.api(2), group, &acks).await;
    eprintln!("   150 acked; {n} stored, gapless, no duplicates");
    caught_up(&mut g3, group, n as u64).await;
    wait_for("a new delivery pod ready", Duration::from_secs(120), || {
        k.ready_pods("delivery", 1)
    })
    .await;

    step(
        t0,
        "kubectl delete pod --force of the sender's edge pod during a stream",
    );
    let victim = edges.iter().find(|p| pod_ip(p) == e0).unwrap().name_any();
    for i in 150..300 {
        let cid = format!("s{i}");
        if i == 190 {
            force_delete(&ns, &victim);
            eprintln!("   deleted {victim} (user 1's edge) after {i} sends");
        }
        let ack = send_until_acked(&c, &mut a, 1, group, &cid, Duration::from_secs(180)).await;
        acks.insert(cid, ack);
        if i % 20 == 0 {
            g3.send(json!({"type":"ping"})).await;
        }
    }
    let n = assert_intact(&c.api(3), group, &acks).await;
    eprintln!("   300 acked; {n} stored, gapless, no duplicates");
    // The receivers reconnect (the one on the surviving edge may still be connected) and sync.
    let mut g3 = c.ws(3).await;
    caught_up(&mut g3, group, n as u64).await;
    let mut b = c.ws(2).await;
    caught_up(&mut b, group, n as u64).await;
    wait_for("2 edge pods ready again", Duration::from_secs(120), || {
        k.ready_pods("edge", 2)
    })
    .await;
    drop((a, b, g3));

    step(
        t0,
        "kubectl delete pod (graceful) of an edge: preStop pause, then drain",
    );
    // A client on the edge that is told to stop: the pod keeps serving through its preStop
    // pause (endpoints drop it meanwhile), then chat-server drains and the client gets
    // `reconnect`; it reconnects through the Service (to the other edge) and carries on.
    let edges = wait_for("2 edge pods ready", Duration::from_secs(60), || {
        k.ready_pods("edge", 2)
    })
    .await;
    let target = pod_ip(&edges[0]);
    let mut w = c.ws_on(5, &target).await;
    let deleted = Instant::now();
    kubectl(&[
        "delete",
        "pod",
        "-n",
        &ns,
        &edges[0].name_any(),
        "--wait=false",
    ]);
    let r = w
        .expect("reconnect", Duration::from_secs(30))
        .await
        .expect("a reconnect frame from the draining edge");
    let after = deleted.elapsed();
    eprintln!("   reconnect after {after:?}: {r}");
    assert!(
        after >= Duration::from_secs(4),
        "the drain began after the preStop pause, not at once ({after:?})"
    );
    let mut w = c.ws(5).await;
    assert!(
        w.send(
            json!({"type":"message","chat_id":group,"content":"x","client_msg_id":"after-drain"})
        )
        .await
    );
    let e = w.answer("after-drain", Duration::from_secs(10)).await;
    assert!(
        matches!(&e, Err(m) if m.contains("forbidden")),
        "user 5 is no member; the answer proves the new connection works: {e:?}"
    );

    // ---- 4. delete the ChatCluster -----------------------------------------------------
    step(
        t0,
        "kubectl delete chatcluster: owned objects are garbage-collected",
    );
    k.chatclusters()
        .delete(NAME, &DeleteParams::background())
        .await
        .unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let owned = ListParams::default().labels(&format!("app.kubernetes.io/instance={NAME}"));
    wait_for("owned objects gone", Duration::from_secs(180), || async {
        let left = [
            deps.list(&owned).await.unwrap().items.len(),
            sts.list(&owned).await.unwrap().items.len(),
            svcs.list(&owned).await.unwrap().items.len(),
            cms.list(&owned).await.unwrap().items.len(),
            secrets.list(&owned).await.unwrap().items.len(),
            k.pods.list(&owned).await.unwrap().items.len(),
        ];
        if left.iter().all(|n| *n == 0) {
            Ok(())
        } else {
            Err(format!(
                "left (deployments, statefulsets, services, configmaps, secrets, pods): {left:?}"
            ))
        }
    })
    .await;
    // The media PVC is owned by the ChatCluster and goes with it (once no pod mounts it: the
    // pvc-protection finalizer); the StatefulSets' data PVCs (Kafka, CQL, Redis) are kept, as
    // StatefulSets keep them: data outlives an accidental delete (docs/operator.md says how to
    // remove them).
    let media_pvc = format!("{NAME}-media");
    wait_for(
        "the media PVC deleted",
        Duration::from_secs(120),
        || async {
            match pvcs.get_opt(&media_pvc).await.unwrap() {
                None => Ok(()),
                Some(p) => Err(format!(
                    "{media_pvc} still there (deleting: {})",
                    p.metadata.deletion_timestamp.is_some()
                )),
            }
        },
    )
    .await;
    let left: Vec<String> = pvcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    eprintln!("   PVCs left: {left:?}");
    for dep in ["kafka", "scylla", "redis"] {
        assert!(
            left.iter()
                .any(|n| n.starts_with(&format!("data-{NAME}-{dep}-"))),
            "{dep} data PVC kept"
        );
    }
    step(t0, "done");
}
