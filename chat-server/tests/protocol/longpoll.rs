use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

struct Poller {
    base: String,
    token: String,
    cursor: Option<String>,
    http: reqwest::Client,
}

impl Poller {
    fn new(s: &TestServer, user: u64) -> Self {
        Poller {
            base: s.url(""),
            token: token(user),
            cursor: None,
            http: reqwest::Client::new(),
        }
    }

    async fn poll(&mut self, timeout_s: u64) -> Vec<Value> {
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
        v["events"].as_array().unwrap().clone()
    }

    fn session(&self) -> String {
        self.cursor
            .as_ref()
            .unwrap()
            .rsplit_once('.')
            .unwrap()
            .0
            .to_string()
    }

    async fn frame(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!(
                "{}/v1/frames?session={}",
                self.base,
                self.session()
            ))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

#[tokio::test]
async fn long_poll_has_websocket_semantics() {
    let s = TestServer::start_with(&["--receipt-flush-ms", "50"]).await;
    let chat = s.api(1).direct(2).await;
    let mut lp = Poller::new(&s, 2);
    let first = lp.poll(1).await;
    assert_eq!(first[0]["type"], "hello");
    assert_eq!(first[0]["user_id"], 2);
    let mut ws = s.ws(1).await;
    // The long-poll user is online for its partner.
    let p = ws.expect("presence").await;
    assert_eq!(
        (p["user_id"].as_u64(), p["status"].as_str()),
        (Some(2), Some("online"))
    );

    // Send over long-poll: the ack comes back in the response.
    let (st, r) = lp
        .frame(json!({"type":"message","chat_id":chat,"content":"from lp","client_msg_id":"lp1"}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(r["events"][0]["type"], "ack");
    assert_eq!(r["events"][0]["seq"], 1);
    assert_eq!(ws.expect("message").await["content"], "from lp");
    // Idempotent here too.
    let (_, r2) = lp
        .frame(json!({"type":"message","chat_id":chat,"content":"from lp","client_msg_id":"lp1"}))
        .await;
    assert_eq!(r2["events"][0]["message_id"], r["events"][0]["message_id"]);

    // Receive over long-poll; a waiting poll returns as soon as something arrives.
    lp.poll(0).await; // takes the presence of user 1
    let waiting = tokio::spawn(async move {
        let mut events = Vec::new();
        while !events.iter().any(|e: &Value| e["type"] == "message") {
            events.extend(lp.poll(10).await);
        }
        (lp, events)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_at = std::time::Instant::now();
    ws.send_msg(chat, "to lp", "w1").await;
    let (mut lp, events) = waiting.await.unwrap();
    assert!(sent_at.elapsed() < Duration::from_secs(2));
    let m = events
        .iter()
        .find(|e| e["type"] == "message")
        .expect("message event");
    assert_eq!(
        (m["content"].as_str(), m["seq"].as_u64()),
        (Some("to lp"), Some(2))
    );

    // Replay: polling with an older cursor returns the same events again.
    let cursor = lp.cursor.clone().unwrap();
    let (session, n) = cursor.rsplit_once('.').unwrap();
    let older = format!("{session}.{}", n.parse::<u64>().unwrap() - 1);
    lp.cursor = Some(older);
    let again = lp.poll(1).await;
    assert!(again.iter().any(|e| e["content"] == "to lp"), "{again:?}");

    // Other frames: ping, sync, read, errors.
    assert_eq!(
        lp.frame(json!({"type":"ping"})).await.1["events"][0]["type"],
        "pong"
    );
    let (_, r) = lp
        .frame(json!({"type":"sync","chat_id":chat,"after_seq":0}))
        .await;
    assert_eq!(r["events"][0]["messages"].as_array().unwrap().len(), 2);
    let (_, r) = lp.frame(json!({"type":"bogus"})).await;
    assert_eq!(r["events"][0]["code"], "invalid");
    lp.frame(json!({"type":"read","chat_id":chat,"seq":2}))
        .await;
    // A read mark implies delivered: both are announced.
    let mut got = Vec::new();
    while got.len() < 2 {
        let rc = ws.expect("receipt").await;
        got.push((
            rc["status"].as_str().unwrap().to_string(),
            rc["seq"].as_u64().unwrap(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        vec![("delivered".to_string(), 2), ("read".to_string(), 2)]
    );
}

#[tokio::test]
async fn long_poll_sessions_expire_and_unknown_cursors_start_over() {
    let s = TestServer::start_with(&["--heartbeat-interval", "1"]).await;
    s.api(1).direct(2).await;
    let mut lp = Poller::new(&s, 2);
    lp.poll(0).await;
    let mut ws = s.ws(1).await;
    assert_eq!(ws.expect("presence").await["status"], "online");
    // Nobody polls for two intervals: the session expires and the user goes offline.
    // (A second "online" may arrive first: the announcement of the poll session racing with
    // the snapshot sent on connect. Presence frames are state, so repeats are harmless.)
    let started = std::time::Instant::now();
    loop {
        let p = ws
            .expect_keepalive("presence", Duration::from_secs(4))
            .await;
        if p["status"] == "offline" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    let (st, e) = lp.frame(json!({"type":"ping"})).await;
    assert_eq!(st, 404);
    assert_eq!(e["error"]["code"], "not_found");
    // The old cursor gets a fresh session with a new hello.
    let old = lp.session();
    let events = lp.poll(0).await;
    assert_eq!(events[0]["type"], "hello");
    assert_ne!(lp.session(), old);
    // Someone else's cursor is not yours.
    let mut thief = Poller::new(&s, 3);
    thief.cursor = lp.cursor.clone();
    let events = thief.poll(0).await;
    assert_eq!(events[0]["user_id"], 3);
}

#[tokio::test]
async fn an_abandoned_poll_still_expires() {
    // A client that goes away in the middle of a poll (browser closed, network gone) must not
    // keep its user online forever.
    let s = TestServer::start_with(&["--heartbeat-interval", "1"]).await;
    s.api(1).direct(2).await;
    let mut lp = Poller::new(&s, 2);
    lp.poll(0).await;
    let mut ws = s.ws(1).await;
    assert_eq!(ws.expect("presence").await["status"], "online");
    // Take user 1's "online" (announced asynchronously), so the next poll has to wait.
    let mut seen = false;
    for _ in 0..20 {
        let events = lp.poll(1).await;
        if events
            .iter()
            .any(|e| e["type"] == "presence" && e["user_id"] == 1)
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "user 1's presence never reached the poll session");
    let url = format!(
        "{}/v1/poll?timeout=30&token={}&cursor={}",
        lp.base,
        lp.token,
        lp.cursor.clone().unwrap()
    );
    let aborted = tokio::time::timeout(Duration::from_millis(300), reqwest::get(url)).await;
    assert!(
        aborted.is_err(),
        "the poll should still be waiting when we hang up"
    );
    let started = std::time::Instant::now();
    loop {
        let p = ws
            .expect_keepalive("presence", Duration::from_secs(5))
            .await;
        if p["status"] == "offline" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "user 2 stayed online"
        );
    }
    let connections = s.metric("chat_connections").await;
    assert_eq!(connections, 1.0, "the poll session's slot was released");
}
