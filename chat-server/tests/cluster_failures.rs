//! Failure tests of the distributed mode: processes and services die mid-stream, and no
//! acknowledged message is lost, `seq` stays gapless, and service recovers.
//!
//! They need the real services (`e2e/env/up.sh redis kafka cassandra`,
//! `eval "$(e2e/env/env.sh)"`) and they restart shared services (Redis, Kafka), so they are
//! `#[ignore]`d in a plain `cargo test` and run one at a time by `e2e/test-distributed.sh`:
//! `TERN_TEST_BACKEND=distributed cargo test -p chat-server --test cluster_failures -- --ignored --test-threads 1`

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// Run an e2e service script action (`start`/`stop`) and check it worked.
fn service(name: &str, action: &str) {
    let script = format!(
        "{}/../e2e/env/services/{name}.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let st = Command::new(&script).arg(action).status().expect(&script);
    assert!(st.success(), "{script} {action} failed");
}

/// Every stored message of `chat`, in order (paging through the HTTP API).
async fn full_history(api: &Api, chat: u64) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .history(chat, &format!("after_seq={after}&limit=100"))
            .await;
        let msgs = page["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            return all;
        }
        after = msgs.last().unwrap()["seq"].as_u64().unwrap();
        all.extend(msgs);
    }
}

/// The log of `chat` is intact: seq 1..=n without gaps, every client_msg_id once, and every
/// acknowledged message stored with the seq and id its ack named.
async fn assert_intact(api: &Api, chat: u64, acks: &BTreeMap<String, Value>, expect_n: usize) {
    let history = full_history(api, chat).await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=history.len() as u64).collect();
    assert_eq!(seqs, want, "seq must be gapless");
    let mut cids = HashSet::new();
    for m in &history {
        if let Some(c) = m["client_msg_id"].as_str() {
            assert!(cids.insert(c.to_string()), "client_msg_id {c} stored twice");
        }
    }
    for (cid, ack) in acks {
        let stored = history
            .iter()
            .find(|m| m["message_id"] == ack["message_id"])
            .unwrap_or_else(|| panic!("acknowledged message {cid} ({ack}) was lost"));
        assert_eq!(stored["seq"], ack["seq"], "{cid}: stored under another seq");
        assert_eq!(stored["client_msg_id"], cid.as_str());
    }
    assert_eq!(history.len(), expect_n, "every message sent exactly once");
}

/// Send `cid` until it is acknowledged (resending with the same client_msg_id after errors),
/// reconnecting through `reconnect` when the connection dies.
async fn send_until_acked<F, Fut>(
    ws: &mut Ws,
    chat: u64,
    cid: &str,
    deadline: Duration,
    mut reconnect: F,
) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Ws>,
{
    let end = Instant::now() + deadline;
    let mut last = String::new();
    while Instant::now() < end {
        match ws
            .try_send_msg(
                chat,
                &format!("body of {cid}"),
                cid,
                Duration::from_secs(15),
            )
            .await
        {
            Ok(ack) => return ack,
            Err(e) if e == "closed" => *ws = reconnect().await,
            Err(e) => {
                last = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    panic!("{cid} not acknowledged within {deadline:?} (last error {last})");
}

/// Which delivery process stores this chat's messages (it owns the chat's partition).
async fn delivery_owner(s: &TestServer) -> usize {
    for i in 0..2 {
        if s.metric_of("delivery", i, "chat_messages_stored_total")
            .await
            .is_some_and(|n| n > 0.0)
        {
            return i;
        }
    }
    panic!("no delivery process has stored anything");
}

fn seqs_of(frames: &[Value]) -> Vec<u64> {
    let mut v: Vec<u64> = frames.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    v.sort_unstable();
    v.dedup(); // at-least-once: clients de-duplicate
    v
}

#[tokio::test]
#[ignore = "needs the e2e services; run with e2e/test-distributed.sh"]
async fn kill_9_the_delivery_process_mid_stream() {
    require_distributed();
    let s = TestServer::start_with(&["--rate-burst", "1000"]).await;
    let chat = s.api_at(0, 1).direct(2).await;
    let mut a = s.ws_at(0, 1).await;
    let mut b = s.ws_at(1, 2).await;
    let mut acks = BTreeMap::new();
    for i in 0..20 {
        let cid = format!("m{i}");
        acks.insert(cid.clone(), a.send_msg(chat, "warm-up", &cid).await);
    }
    let owner = delivery_owner(&s).await;
    let survivor = 1 - owner;
    let stored_before = s
        .metric_of("delivery", survivor, "chat_messages_stored_total")
        .await
        .unwrap_or(0.0);
    // A burst in flight, then the partition owner dies.
    let mut s = s;
    for i in 20..60 {
        let cid = format!("m{i}");
        assert!(
            a.try_send(
                json!({"type":"message","chat_id":chat,"content":"burst","client_msg_id":cid})
            )
            .await
        );
    }
    s.kill9_one("delivery", owner);
    let t0 = Instant::now();
    for i in 20..200 {
        let cid = format!("m{i}");
        let ack = match if i < 60 {
            a.wait_answer(&cid, Duration::from_secs(20)).await
        } else {
            Err("not sent yet".into())
        } {
            Ok(ack) => ack,
            Err(_) => {
                send_until_acked(&mut a, chat, &cid, Duration::from_secs(60), || async {
                    unreachable!("the edge stays up")
                })
                .await
            }
        };
        acks.insert(cid, ack);
    }
    eprintln!(
        "200 messages acknowledged; {:?} after the kill",
        t0.elapsed()
    );
    // The surviving delivery process took the partition over and kept the sequence.
    let stored_after = s
        .metric_of("delivery", survivor, "chat_messages_stored_total")
        .await
        .unwrap();
    assert!(stored_after > stored_before, "the survivor took over");
    assert_intact(&s.api_at(1, 2), chat, &acks, 200).await;
    // The receiver got every message live or gets the rest by sync.
    let mut got = b.drain_messages(Duration::from_millis(1500)).await;
    let have = seqs_of(&got);
    let after = have.iter().zip(1..).take_while(|(s, i)| **s == *i).count() as u64;
    b.send(json!({"type":"sync","chat_id":chat,"after_seq":after,"limit":500}))
        .await;
    let page = b.expect("sync").await;
    got.extend(page["messages"].as_array().unwrap().iter().cloned());
    assert_eq!(seqs_of(&got), (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
#[ignore = "needs the e2e services; run with e2e/test-distributed.sh"]
async fn kill_9_an_edge_clients_move_to_the_other_and_sync() {
    require_distributed();
    let mut s =
        TestServer::start_with(&["--rate-burst", "1000", "--heartbeat-interval", "2"]).await;
    let chat = s.api_at(1, 1).group(&[2, 3]).await;
    let partner = s.api_at(1, 4).direct(3).await;
    let mut a = s.ws_at(0, 1).await; // sender, on the edge that dies
    let mut b = s.ws_at(0, 2).await; // receiver, on the edge that dies
    let mut c = s.ws_at(1, 3).await; // receiver on the surviving edge
    let _d = s.ws_at(0, 4).await; // only on the dying edge: must go offline
    let _ = partner;
    let mut acks = BTreeMap::new();
    for i in 0..30 {
        let cid = format!("e{i}");
        acks.insert(cid.clone(), a.send_msg(chat, "before", &cid).await);
    }
    let b_before = b.drain_messages(Duration::from_millis(500)).await;
    for i in 30..50 {
        let cid = format!("e{i}");
        assert!(
            a.try_send(
                json!({"type":"message","chat_id":chat,"content":"burst","client_msg_id":cid})
            )
            .await
        );
    }
    s.kill9_one("edge", 0);
    let killed = Instant::now();
    let other = s.edge(1);
    let url = move |u: u64| format!("ws://{other}/ws?token={}", token(u));
    // Answers that made it before the edge died; the rest are resent on the other edge.
    let mut unanswered = Vec::new();
    for i in 30..50 {
        let cid = format!("e{i}");
        match a.wait_answer(&cid, Duration::from_secs(2)).await {
            Ok(ack) => {
                acks.insert(cid, ack);
            }
            Err(_) => unanswered.push(cid),
        }
    }
    let mut a = Ws::connect(&url(1)).await;
    let more = (50..120).map(|i| format!("e{i}"));
    for cid in unanswered.into_iter().chain(more) {
        let u = url(1);
        let ack = send_until_acked(&mut a, chat, &cid, Duration::from_secs(60), || {
            let u = u.clone();
            async move { Ws::connect(&u).await }
        })
        .await;
        acks.insert(cid, ack);
        // c stays silent otherwise, and a 2 s heartbeat would close it.
        c.try_send(json!({"type":"ping"})).await;
    }
    assert_intact(&s.api_at(1, 3), chat, &acks, 120).await;
    // b reconnects to the surviving edge and syncs from the last seq it saw.
    let mut b2 = Ws::connect(&url(2)).await;
    let mut seen = seqs_of(&b_before);
    let last = seen.last().copied().unwrap_or(0);
    b2.send(json!({"type":"sync","chat_id":chat,"after_seq":last,"limit":500}))
        .await;
    let page = b2.expect("sync").await;
    seen.extend(seqs_of(page["messages"].as_array().unwrap()));
    assert_eq!(
        seqs_of(&seen.iter().map(|s| json!({"seq":s})).collect::<Vec<_>>()),
        (1..=120).collect::<Vec<_>>()
    );
    // c, on the surviving edge, saw every message live.
    let c_got = c.drain_messages(Duration::from_millis(1500)).await;
    assert_eq!(seqs_of(&c_got), (1..=120).collect::<Vec<_>>());
    // d was only on the dead edge: the presence role drops it within two heartbeats.
    let api = s.api_at(1, 3);
    loop {
        let (_, v) = api.get("/v1/presence?user_ids=4").await;
        if v["presence"][0]["status"] == "offline" {
            assert!(v["presence"][0]["last_seen"].is_string());
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(8),
            "user 4 still online {:?} after its edge died: {v}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("user on the dead edge offline after {:?}", killed.elapsed());
}

#[tokio::test]
#[ignore = "needs the e2e services; run with e2e/test-distributed.sh"]
async fn restart_redis_routing_and_presence_recover() {
    require_distributed();
    let s = TestServer::start_with(&["--heartbeat-interval", "10"]).await;
    let chat = s.api_at(0, 1).direct(2).await;
    let mut a = s.ws_at(0, 1).await;
    let mut b = s.ws_at(1, 2).await;
    let mut acks = BTreeMap::new();
    for i in 0..10 {
        let cid = format!("r{i}");
        acks.insert(cid.clone(), a.send_msg(chat, "before", &cid).await);
    }
    service("redis", "stop");
    service("redis", "start"); // empty: Redis here keeps nothing on disk
    let restarted = Instant::now();
    let edge0 = s.edge(0);
    for i in 10..30 {
        let cid = format!("r{i}");
        let ack = send_until_acked(&mut a, chat, &cid, Duration::from_secs(60), || async move {
            Ws::connect(&format!("ws://{edge0}/ws?token={}", token(1))).await
        })
        .await;
        acks.insert(cid, ack);
        b.try_send(json!({"type":"ping"})).await;
    }
    eprintln!(
        "sends acknowledged again {:?} after the restart",
        restarted.elapsed()
    );
    assert_intact(&s.api_at(1, 2), chat, &acks, 30).await;
    // Presence recovered: both users show online again. The edges re-register their
    // connections (routes and presence together) right after resubscribing, retrying while
    // the fresh Redis connection is not usable yet; a send before that is stored and acked but
    // only reachable by sync (checked below), so live delivery is checked once it is back.
    let api = s.api_at(1, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = api.get("/v1/presence?user_ids=1,2").await;
        if v["presence"][0]["status"] == "online" && v["presence"][1]["status"] == "online" {
            break;
        }
        assert!(Instant::now() < deadline, "presence not restored: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Routing recovered: a new message reaches b live.
    let ack = a.send_msg(chat, "after recovery", "r-live").await;
    let mut seen = b.drain_messages(Duration::from_millis(1500)).await;
    if !seen.iter().any(|m| m["message_id"] == ack["message_id"]) {
        seen.push(b.expect_within("message", Duration::from_secs(5)).await);
        seen.extend(b.drain_messages(Duration::from_millis(500)).await);
    }
    assert!(
        seen.iter().any(|m| m["message_id"] == ack["message_id"]),
        "live delivery after the restart"
    );
    // Anything b missed while Redis was gone is recoverable by sync.
    b.send(json!({"type":"sync","chat_id":chat,"after_seq":0,"limit":500}))
        .await;
    let page = b.expect("sync").await;
    assert_eq!(
        seqs_of(page["messages"].as_array().unwrap()),
        (1..=31).collect::<Vec<_>>()
    );
}

#[tokio::test]
#[ignore = "needs the e2e services; run with e2e/test-distributed.sh"]
async fn stop_kafka_for_10_s_sends_fail_clearly_then_recover() {
    require_distributed();
    let s = TestServer::start().await;
    let chat = s.api_at(0, 1).direct(2).await;
    let mut a = s.ws_at(0, 1).await;
    let mut acks = BTreeMap::new();
    for i in 0..10 {
        let cid = format!("k{i}");
        acks.insert(cid.clone(), a.send_msg(chat, "before", &cid).await);
    }
    service("kafka", "stop");
    let stopped = Instant::now();
    let mut refused = Vec::new();
    for i in 10..15 {
        let cid = format!("k{i}");
        let t = Instant::now();
        match a
            .try_send_msg(chat, "during the outage", &cid, Duration::from_secs(15))
            .await
        {
            Ok(ack) => {
                acks.insert(cid, ack);
            }
            Err(code) => {
                assert_eq!(code, "unavailable", "{cid}: a clear error");
                assert!(t.elapsed() < Duration::from_secs(12), "answered in time");
                refused.push(cid);
            }
        }
    }
    assert!(!refused.is_empty(), "sends while Kafka is down are refused");
    let rest = Duration::from_secs(10).saturating_sub(stopped.elapsed());
    tokio::time::sleep(rest).await;
    service("kafka", "start");
    let started = Instant::now();
    for cid in refused
        .iter()
        .cloned()
        .chain((15..25).map(|i| format!("k{i}")))
    {
        let ack = send_until_acked(&mut a, chat, &cid, Duration::from_secs(90), || async {
            unreachable!("the edge stays up")
        })
        .await;
        acks.insert(cid, ack);
    }
    eprintln!("service back {:?} after Kafka restarted", started.elapsed());
    assert_intact(&s.api_at(1, 2), chat, &acks, 25).await;
}

/// How often the first edge replaced its Kafka producer.
async fn restarts(s: &TestServer) -> f64 {
    s.metric_of("edge", 0, "chat_kafka_producer_restarts_total")
        .await
        .expect("the edge exports chat_kafka_producer_restarts")
}

/// The edge's producer watchdog. On the real node (CI, 2026-11-30) one edge's librdkafka
/// producer timed out every record for minutes after the Kafka pod was replaced, while the
/// other edge recovered. That librdkafka state could not be reproduced on purpose (blackholing
/// the producer's open connections: librdkafka reconnects by itself within ~5 s), so the
/// edges are started with the hidden `--fault-stuck-producer-after-ms`: from then on their
/// first producer takes no record and each fails as timed out, exactly that symptom, while
/// Kafka itself is fine. The edge must replace the producer after STUCK_AFTER (15 s) of
/// failures (a new, real producer on the real Kafka), say so in its log and metrics, and sends
/// must go through again; nothing acknowledged is lost or stored twice.
#[tokio::test]
#[ignore = "needs the e2e services; run with e2e/test-distributed.sh"]
async fn stuck_kafka_producer_is_replaced() {
    require_distributed();
    let stuck_after = Duration::from_secs(8);
    let s = TestServer::start_with(&[
        "--fault-stuck-producer-after-ms",
        &stuck_after.as_millis().to_string(),
    ])
    .await;
    let started = Instant::now();
    let chat = s.api_at(0, 1).direct(2).await;
    let mut a = s.ws_at(0, 1).await;
    let mut acks = BTreeMap::new();
    for i in 0..5 {
        let cid = format!("p{i}");
        acks.insert(cid.clone(), a.send_msg(chat, "before", &cid).await);
    }
    assert!(
        started.elapsed() < stuck_after,
        "the first sends took {:?}: past the fault",
        started.elapsed()
    );
    assert_eq!(
        restarts(&s).await,
        0.0,
        "no replacement while produces succeed"
    );
    tokio::time::sleep(stuck_after.saturating_sub(started.elapsed())).await;
    let since = Instant::now();
    let mut refused = Vec::new();
    let mut i = 5;
    while restarts(&s).await < 1.0 {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "no producer replacement after {:?} of failing sends; log:\n{}",
            since.elapsed(),
            s.log()
        );
        let cid = format!("p{i}");
        i += 1;
        match a
            .try_send_msg(
                chat,
                "while the producer is stuck",
                &cid,
                Duration::from_secs(20),
            )
            .await
        {
            Ok(ack) => panic!("{cid} acked through the stuck producer: {ack}"),
            Err(code) => assert_eq!(code, "unavailable", "{cid}: a clear error"),
        }
        refused.push(cid);
    }
    let replaced_after = since.elapsed();
    assert!(
        refused.len() >= 3,
        "replaced after only {} refused sends",
        refused.len()
    );
    assert!(
        replaced_after >= Duration::from_secs(14),
        "replaced after {replaced_after:?}: before STUCK_AFTER (15 s) of failures"
    );
    assert!(
        s.log().contains("Kafka producer stuck: replaced it"),
        "the edge says why it replaced the producer"
    );
    let back = Instant::now();
    for cid in refused
        .iter()
        .cloned()
        .chain((100..105).map(|i| format!("p{i}")))
    {
        let ack = send_until_acked(&mut a, chat, &cid, Duration::from_secs(30), || async {
            unreachable!("the edge stays up")
        })
        .await;
        acks.insert(cid, ack);
    }
    eprintln!(
        "producer replaced {replaced_after:?} after it got stuck; {} sends refused meanwhile, \
         all acked {:?} later and stored once",
        refused.len(),
        back.elapsed()
    );
    assert_eq!(restarts(&s).await, 1.0, "one replacement was enough");
    let n = acks.len();
    assert_intact(&s.api_at(1, 2), chat, &acks, n).await;
}
