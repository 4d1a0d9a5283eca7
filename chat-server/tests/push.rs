//! Push notifications through real HTTP receivers on loopback: a Gorush-compatible gateway,
//! a signed webhook and a Web Push service (payload decrypted with the subscription's key).
//! The server is the real binary (the protocol suite's harness).

mod support;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use chat_server::push::webpush;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use support::TestServer;

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

/// An HTTP server that records every request and answers with `status` and `reply` (paths
/// containing "gone" get 410).
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    reqs: Arc<Mutex<Vec<Req>>>,
    status: Arc<AtomicU16>,
    reply: Arc<Mutex<String>>,
}

async fn record(
    State(r): State<Receiver>,
    _m: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let path = uri.path().to_string();
    r.reqs.lock().push(Req {
        path: path.clone(),
        headers,
        body: body.to_vec(),
    });
    if path.contains("gone") {
        return (StatusCode::GONE, String::new());
    }
    (
        StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap(),
        r.reply.lock().clone(),
    )
}

impl Receiver {
    async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            reqs: Default::default(),
            status: Arc::new(AtomicU16::new(200)),
            reply: Arc::new(Mutex::new(
                r#"{"counts":1,"logs":[],"success":"ok"}"#.into(),
            )),
        };
        let app = axum::Router::new().fallback(record).with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn requests(&self) -> Vec<Req> {
        self.reqs.lock().clone()
    }

    /// Wait until the requests after the first `from` come from `users` distinct users.
    async fn wait_for_users(&self, from: usize, users: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok: std::collections::BTreeSet<u64> = self.requests()[from..]
                .iter()
                .map(|r| r.json()["user_id"].as_u64().unwrap())
                .collect();
            if ok.len() == users {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after restart only {ok:?} were pushed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait for at least `n` requests.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Req> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} requests within {within:?}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A metric with labels (`name{a="b"}`), summed over matching lines; 0 when absent.
async fn metric(s: &TestServer, name_and_labels: &str) -> f64 {
    s.metrics_text()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix(name_and_labels))
        .filter_map(|r| r.trim().parse::<f64>().ok())
        .sum()
}

async fn wait_metric(s: &TestServer, name: &str, at_least: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(s, name).await;
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v}, wanted >= {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server pushing to the webhook at `url`, signed with [`WEBHOOK_SECRET`], and `push_flags`.
async fn webhook_server(url: &str, push_flags: &[&str]) -> TestServer {
    let mut args = vec![
        "--push-webhook-url",
        url,
        "--push-webhook-secret",
        WEBHOOK_SECRET,
    ];
    args.extend(push_flags);
    TestServer::start_with(&args).await
}

async fn register(s: &TestServer, user: u64, body: Value) {
    let (st, v) = s.api(user).post("/v1/devices", body).await;
    assert_eq!(st, 201, "{v}");
}

#[tokio::test]
async fn gateway_offline_member_gets_one_coalesced_push_online_member_none() {
    let gw = Receiver::start().await;
    let url = gw.url("/api/push");
    let s = TestServer::start_with(&[
        "--push-gateway-url",
        &url,
        "--push-gateway-topic",
        "dev.tern.app",
        "--push-coalesce-ms",
        "700",
    ])
    .await;
    register(&s, 2, json!({"platform":"android","token":"a-2"})).await;
    register(&s, 2, json!({"platform":"ios","token":"i-2"})).await;
    register(&s, 3, json!({"platform":"android","token":"a-3"})).await;
    let (st, v) = s.api(2).get("/v1/devices").await;
    assert_eq!(st, 200);
    assert_eq!(v["devices"].as_array().unwrap().len(), 2, "{v}");
    // User 3 is online; user 2 is not.
    let mut online = s.ws(3).await;
    let a = s.api(1);
    let chat = a.group(&[2, 3]).await;
    for text in ["one", "two", "three"] {
        a.send(chat, text).await;
    }
    online.expect("message").await;
    let reqs = gw.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reqs_after = gw.requests();
    assert_eq!(
        reqs_after.len(),
        1,
        "exactly one coalesced push: {reqs_after:?}"
    );
    let r = &reqs[0];
    assert_eq!(r.path, "/api/push");
    assert_eq!(r.header("content-type"), "application/json");
    let body = r.json();
    let ns = body["notifications"].as_array().unwrap();
    assert_eq!(ns.len(), 2, "{body}");
    let ios = ns.iter().find(|n| n["platform"] == 1).unwrap();
    let android = ns.iter().find(|n| n["platform"] == 2).unwrap();
    assert_eq!(ios["tokens"], json!(["i-2"]));
    assert_eq!(android["tokens"], json!(["a-2"]));
    assert_eq!(ios["topic"], "dev.tern.app");
    assert_eq!(ios["title"], "g");
    assert_eq!(android["message"], "three (+2 more)");
    // Badge: user 2's unread messages.
    assert_eq!(ios["badge"], 3);
    assert_eq!(android["data"]["chat_id"], chat.to_string());
    assert_eq!(android["data"]["count"], "3");
    assert_eq!(android["data"]["last_seq"], "3");
    assert!(
        !body.to_string().contains("a-3"),
        "online member pushed: {body}"
    );
    assert_eq!(
        metric(&s, "chat_push_sent_total{provider=\"gateway\"}").await,
        1.0
    );
}

#[tokio::test]
async fn webhook_is_signed_and_a_muted_chat_stays_silent() {
    let hook = Receiver::start().await;
    hook.reply.lock().clear();
    let url = hook.url("/hooks/tern");
    let s = webhook_server(&url, &["--push-coalesce-ms", "300"]).await;
    register(&s, 2, json!({"platform":"android","token":"a-2"})).await;
    let a = s.api(1);
    let b = s.api(2);
    let muted = a.direct(2).await;
    let loud = a.group(&[2]).await;
    assert_eq!(
        b.req(
            reqwest::Method::PUT,
            &format!("/v1/chats/{muted}/mute"),
            None
        )
        .await
        .0,
        204
    );
    let (_, m) = b.get(&format!("/v1/chats/{muted}/mute")).await;
    assert_eq!(m["muted"], true);
    // Not a member: forbidden.
    assert_eq!(
        s.api(9)
            .req(
                reqwest::Method::PUT,
                &format!("/v1/chats/{muted}/mute"),
                None
            )
            .await
            .0,
        403
    );
    a.send(muted, "psst").await;
    a.send(loud, "hello group").await;
    let reqs = hook.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(hook.requests().len(), 1, "{:?}", hook.requests());
    let r = &reqs[0];
    let ts: i64 = r.header("x-tern-timestamp").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - ts).abs() < 60, "timestamp {ts} vs now {now}");
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("x-tern-signature"), expected);
    let body = r.json();
    assert_eq!(r.header("x-tern-delivery"), body["id"].as_str().unwrap());
    assert_eq!(body["user_id"], 2);
    assert_eq!(
        body["devices"],
        json!([{"platform":"android","token":"a-2"}])
    );
    assert_eq!(body["attempt"], 1);
    let n = &body["notification"];
    assert_eq!(n["chat_id"], loud);
    assert_eq!(n["count"], 1);
    assert_eq!(n["preview"], "hello group");
    assert_eq!(n["sender_id"], 1);
    // Unmuting brings pushes back.
    assert_eq!(
        b.req(
            reqwest::Method::DELETE,
            &format!("/v1/chats/{muted}/mute"),
            None
        )
        .await
        .0,
        204
    );
    a.send(muted, "again").await;
    let reqs = hook.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(reqs[1].json()["notification"]["chat_id"], muted);
    assert_eq!(
        metric(&s, "chat_push_skipped_total{reason=\"muted\"}").await,
        1.0
    );
}

#[tokio::test]
async fn webpush_is_vapid_signed_and_decrypts_with_the_subscription_key_gone_removes_it() {
    let svc = Receiver::start().await;
    svc.status.store(201, Ordering::SeqCst);
    svc.reply.lock().clear();
    let s = TestServer::start_with(&["--push-coalesce-ms", "200", "--push-hide-content"]).await;
    let (st, v) = s.api(2).get("/v1/push/vapid").await;
    assert_eq!(st, 200, "{v}");
    let server_key = v["public_key"].as_str().unwrap().to_string();
    // The browser's side: a key pair and an auth secret.
    let ua = webpush::random_secret();
    let p256dh = webpush::b64(&webpush::public_bytes(&ua.public_key()));
    let auth: [u8; 16] = rand::random();
    let endpoint = svc.url("/wpush/sub-1");
    register(
        &s,
        2,
        json!({"platform":"web","token": endpoint, "keys":{"p256dh": p256dh, "auth": webpush::b64(&auth)}}),
    )
    .await;
    // A second subscription, given as the whole PushSubscription JSON, that has expired.
    let gone = json!({"endpoint": svc.url("/wpush/gone"), "keys":{"p256dh": p256dh, "auth": webpush::b64(&auth)}});
    register(&s, 2, json!({"platform":"web","token": gone.to_string()})).await;
    let a = s.api(1);
    let chat = a.direct(2).await;
    a.send(chat, "secret words").await;
    a.send(chat, "more secret words").await;
    let reqs = svc.wait_for(2, Duration::from_secs(10)).await;
    let r = reqs.iter().find(|r| r.path == "/wpush/sub-1").unwrap();
    assert_eq!(r.header("content-encoding"), "aes128gcm");
    assert_eq!(r.header("ttl"), "86400");
    let authz = r.header("authorization");
    let rest = authz.strip_prefix("vapid t=").unwrap();
    let (jwt, k) = rest.split_once(", k=").unwrap();
    assert_eq!(k, server_key);
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&webpush::unb64(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let claims: Value = serde_json::from_slice(&webpush::unb64(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["aud"], format!("http://{}", svc.addr));
    assert!(
        claims["exp"].as_i64().unwrap()
            > (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64)
    );
    assert_eq!(claims["sub"], "mailto:admin@localhost");
    {
        use p256::ecdsa::signature::Verifier;
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&webpush::unb64(k).unwrap()).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&webpush::unb64(parts[2]).unwrap()).unwrap();
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .expect("VAPID JWT signature");
    }
    let plain = webpush::decrypt(&ua, &auth, &r.body).expect("decrypts with the subscription key");
    let n: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(n["chat_id"], chat);
    assert_eq!(n["count"], 2);
    assert_eq!(n["body"], "2 new messages");
    // --push-hide-content: no content and no sender anywhere.
    assert!(
        n.get("preview").is_none() && n.get("sender_id").is_none(),
        "{n}"
    );
    assert!(!String::from_utf8_lossy(&plain).contains("secret"));
    // The expired subscription (410) was removed; the live one stays.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = s.api(2).get("/v1/devices").await;
        let tokens: Vec<String> = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["token"].as_str().unwrap().to_string())
            .collect();
        if tokens == vec![endpoint.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "devices still {tokens:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(svc.requests().len(), 2, "one push per subscription");
}

#[tokio::test]
async fn receiver_down_for_a_while_is_retried_and_gets_it_when_back() {
    // Reserve a port and leave it closed: the webhook is down.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/hook");
    let s = webhook_server(
        &url,
        &[
            "--push-coalesce-ms",
            "100",
            "--push-retry-base-ms",
            "200",
            "--push-retry-max-ms",
            "800",
        ],
    )
    .await;
    register(&s, 2, json!({"platform":"ios","token":"i-2"})).await;
    let a = s.api(1);
    let chat = a.direct(2).await;
    a.send(chat, "are you there").await;
    wait_metric(
        &s,
        "chat_push_failed_total{provider=\"webhook\",outcome=\"retry\"}",
        3.0,
        Duration::from_secs(15),
    )
    .await;
    let hook = Receiver::start_on(addr).await;
    hook.reply.lock().clear();
    let reqs = hook.wait_for(1, Duration::from_secs(10)).await;
    let body = reqs[0].json();
    assert!(body["attempt"].as_u64().unwrap() >= 4, "{body}");
    assert_eq!(body["notification"]["preview"], "are you there");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.requests().len(), 1, "delivered once");
    wait_metric(
        &s,
        "chat_push_sent_total{provider=\"webhook\"}",
        1.0,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test]
async fn kill_9_with_pushes_pending_then_delivered_after_restart() {
    let hook = Receiver::start().await;
    hook.reply.lock().clear();
    // The receiver fails (503) until the server has been killed and restarted.
    hook.status.store(503, Ordering::SeqCst);
    let url = hook.url("/hook");
    let mut s = webhook_server(
        &url,
        &[
            "--push-coalesce-ms",
            "100",
            "--push-retry-base-ms",
            "300",
            "--push-retry-max-ms",
            "600",
        ],
    )
    .await;
    register(&s, 2, json!({"platform":"android","token":"a-2"})).await;
    register(&s, 3, json!({"platform":"android","token":"a-3"})).await;
    let a = s.api(1);
    let c2 = a.direct(2).await;
    let c3 = a.direct(3).await;
    a.send(c2, "for two").await;
    a.send(c3, "for three").await;
    hook.wait_for(2, Duration::from_secs(10)).await;
    s.kill9();
    hook.status.store(200, Ordering::SeqCst);
    let before = hook.requests().len();
    s.restart_ready().await;
    hook.wait_for_users(before, 2, Duration::from_secs(15))
        .await;
    wait_metric(
        &s,
        "chat_push_sent_total{provider=\"webhook\"}",
        2.0,
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test]
async fn unregistered_tokens_reported_by_the_gateway_are_removed() {
    let gw = Receiver::start().await;
    *gw.reply.lock() = json!({"counts": 2, "success": "ok", "logs": [
        {"type": "failed-push", "platform": "android", "token": "dead", "message": "x", "error": "NotRegistered"}
    ]})
    .to_string();
    let url = gw.url("/api/push");
    let s =
        TestServer::start_with(&["--push-gateway-url", &url, "--push-coalesce-ms", "100"]).await;
    register(&s, 2, json!({"platform":"android","token":"dead"})).await;
    register(&s, 2, json!({"platform":"android","token":"alive"})).await;
    let a = s.api(1);
    let chat = a.direct(2).await;
    a.send(chat, "hi").await;
    let reqs = gw.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        reqs[0].json()["notifications"][0]["tokens"],
        json!(["dead", "alive"])
    );
    wait_metric(
        &s,
        "chat_push_devices_removed_total",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    let (_, v) = s.api(2).get("/v1/devices").await;
    assert_eq!(
        v["devices"],
        json!([{"platform":"android","token":"alive"}])
    );
}

#[tokio::test]
async fn device_registration_validates_and_deletes() {
    let s = TestServer::start().await;
    let b = s.api(2);
    for bad in [
        json!({"platform":"blackberry","token":"x"}),
        json!({"platform":"ios","token":""}),
        json!({"platform":"web","token":"https://push.example/x"}),
        json!({"platform":"web","token":"https://push.example/x","keys":{"p256dh":"AAAA","auth":"AAAA"}}),
        json!({"token":"x"}),
    ] {
        let (st, v) = b.post("/v1/devices", bad.clone()).await;
        assert_eq!(st, 400, "{bad} → {v}");
        assert_eq!(v["error"]["code"], "invalid");
    }
    assert_eq!(s.status("/v1/devices").await, 401);
    register(&s, 2, json!({"platform":"ios","token":"t/with slash"})).await;
    // Registering again is fine (idempotent).
    register(&s, 2, json!({"platform":"ios","token":"t/with slash"})).await;
    // Another user cannot delete it; the owner can, once.
    assert_eq!(s.api(3).delete("/v1/devices/t%2Fwith%20slash").await.0, 404);
    assert_eq!(b.delete("/v1/devices/t%2Fwith%20slash").await.0, 204);
    assert_eq!(b.delete("/v1/devices/t%2Fwith%20slash").await.0, 404);
    let (_, v) = b.get("/v1/devices").await;
    assert_eq!(v["devices"], json!([]));
}

/// The distributed path: the delivery role produces to `<cluster>.push`, consumes it in its
/// own group, coalesces in ScyllaDB and sends. Needs the real services:
/// `TERN_TEST_BACKEND=distributed cargo test -p chat-server --test push -- --ignored`.
#[cfg(feature = "distributed")]
#[tokio::test]
#[ignore = "needs TERN_TEST_BACKEND=distributed and Kafka, Cassandra, Redis (e2e/env)"]
async fn distributed_offline_member_gets_one_push_through_kafka() {
    support::require_distributed();
    let hook = Receiver::start().await;
    hook.reply.lock().clear();
    let url = hook.url("/hook");
    let s = webhook_server(&url, &["--push-coalesce-ms", "1000"]).await;
    // Devices and mutes go through either edge (ScyllaDB).
    let (st, v) = s
        .api_at(0, 2)
        .post("/v1/devices", json!({"platform":"android","token":"a-2"}))
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = s
        .api_at(1, 3)
        .post("/v1/devices", json!({"platform":"android","token":"a-3"}))
        .await;
    assert_eq!(st, 201);
    let (_, v) = s.api_at(1, 2).get("/v1/devices").await;
    assert_eq!(v["devices"], json!([{"platform":"android","token":"a-2"}]));
    let mut online = s.ws_at(1, 3).await;
    let a = s.api_at(0, 1);
    let chat = a.group(&[2, 3]).await;
    let muted = a.direct(2).await;
    let b = s.api_at(1, 2);
    assert_eq!(
        b.req(
            reqwest::Method::PUT,
            &format!("/v1/chats/{muted}/mute"),
            None
        )
        .await
        .0,
        204
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send(muted, "quiet").await;
    for text in ["one", "two", "three"] {
        a.send(chat, text).await;
    }
    online
        .expect_within("message", Duration::from_secs(10))
        .await;
    let reqs = hook.wait_for(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = hook.requests();
    assert_eq!(all.len(), 1, "exactly one push: {all:?}");
    let body = reqs[0].json();
    assert_eq!(body["user_id"], 2, "{body}");
    assert_eq!(body["notification"]["chat_id"], chat);
    assert_eq!(body["notification"]["count"], 3);
    assert_eq!(body["notification"]["preview"], "three");
    // The badge counts every unread message, the muted chat's included.
    assert_eq!(body["notification"]["badge"], 4);
}

/// Distributed: pushes pending in ScyllaDB (receiver failing) survive `kill -9` of every
/// process and are sent after the restart.
#[cfg(feature = "distributed")]
#[tokio::test]
#[ignore = "needs TERN_TEST_BACKEND=distributed and Kafka, Cassandra, Redis (e2e/env)"]
async fn distributed_kill_9_with_pushes_pending_then_delivered_after_restart() {
    support::require_distributed();
    let hook = Receiver::start().await;
    hook.reply.lock().clear();
    hook.status.store(503, Ordering::SeqCst);
    let url = hook.url("/hook");
    let mut s = webhook_server(
        &url,
        &[
            "--push-coalesce-ms",
            "200",
            "--push-retry-base-ms",
            "300",
            "--push-retry-max-ms",
            "600",
        ],
    )
    .await;
    for user in [2, 3] {
        let (st, v) = s
            .api_at(0, user)
            .post(
                "/v1/devices",
                json!({"platform":"ios","token": format!("i-{user}")}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let a = s.api_at(0, 1);
    let c2 = a.direct(2).await;
    let c3 = a.direct(3).await;
    a.send(c2, "for two").await;
    a.send(c3, "for three").await;
    hook.wait_for(2, Duration::from_secs(30)).await;
    s.kill9();
    hook.status.store(200, Ordering::SeqCst);
    let before = hook.requests().len();
    s.restart_ready().await;
    hook.wait_for_users(before, 2, Duration::from_secs(60))
        .await;
}
