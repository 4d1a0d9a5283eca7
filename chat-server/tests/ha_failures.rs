//! No single point of failure (issue #15): one node of a dependency dies (or one delivery
//! process is cut off from Kafka) under a steady load of direct and group messages across 2
//! edges, and
//!
//! - every acknowledged message is stored under the `seq` and `message_id` its ack named,
//!   `seq` is gapless per chat and each `client_msg_id` is stored once (read from the CQL store);
//! - clients only ever see `unavailable` (never a false ack, never silence beyond the ack
//!   timeout) and only for a bounded time, which each test measures and prints (`HA-RESULT`);
//! - service returns without restarting any Tern process.
//!
//! They need the multi-node services (`e2e/env/up.sh redis-ha kafka-ha cassandra-ha`,
//! `eval "$(e2e/env/env.sh)"`, `TERN_TEST_HA=redis,kafka,cql`) and kill their nodes, so they are
//! `#[ignore]`d and run one at a time by `e2e/test-ha.sh`:
//! `TERN_TEST_BACKEND=distributed TERN_TEST_HA=redis,kafka,cql cargo test -p chat-server --test ha_failures -- --ignored --test-threads 1`
//!
//! `TERN_HA_FAULT_SECS` (default 20) is how long a node stays down / the process stays cut off.

mod support;

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use scylla::statement::{Consistency, Statement};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Time between two sends of one sender (4 senders: ~40 messages/s in all).
const PERIOD: Duration = Duration::from_millis(100);
/// How long a client waits for the answer to one attempt. The edges answer `unavailable`
/// after their ack timeout (10 s), so silence this long is a failure.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// A message not acknowledged after this long (resending) fails the test.
const GIVE_UP: Duration = Duration::from_secs(120);

fn fault_secs() -> Duration {
    Duration::from_secs(
        std::env::var("TERN_HA_FAULT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    )
}

/// Run `e2e/env/services/<svc>.sh args…`, return its stdout; panics if it fails.
fn ha_script(svc: &str, args: &[&str]) -> String {
    let script = format!(
        "{}/../e2e/env/services/{svc}.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn require_ha(service: &str) {
    require_distributed();
    assert!(
        support::services::ha(service),
        "run with TERN_TEST_HA={service} (and the multi-node services up; e2e/test-ha.sh does both)"
    );
}

/// One attempt to send one message.
#[derive(Clone, Debug)]
struct Attempt {
    cid: String,
    chat: u64,
    sent: Instant,
    answered: Instant,
    /// The ack, or the error code (`timeout`: no answer within [`ANSWER_WAIT`]).
    outcome: Result<Value, String>,
}

/// A steady load: each sender sends to its chats in turn, one message at a time, every
/// [`PERIOD`], resending a message with the same `client_msg_id` until it is acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    log: Arc<Mutex<Vec<Attempt>>>,
}

impl Load {
    fn start(s: &TestServer, senders: &[(usize, u64, Vec<u64>)]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks = senders
            .iter()
            .map(|(edge, user, chats)| {
                let url = format!("ws://{}/ws?token={}", s.edge(*edge), token(*user));
                let (user, chats) = (*user, chats.clone());
                let (stop, log) = (stop.clone(), log.clone());
                tokio::spawn(async move { send_loop(url, user, chats, stop, log).await })
            })
            .collect();
        Load { stop, tasks, log }
    }

    /// Stop sending new messages, wait for the ones in flight to be acknowledged.
    async fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await.expect("a sender panicked");
        }
        self.log.lock().unwrap().clone()
    }

    fn acked(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.outcome.is_ok())
            .count()
    }
}

async fn send_loop(
    url: String,
    user: u64,
    chats: Vec<u64>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
) {
    let mut ws = Ws::connect(&url).await;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let chat = chats[i % chats.len()];
        let cid = format!("u{user}-{i}");
        let first = Instant::now();
        loop {
            let sent = Instant::now();
            let outcome = ws
                .try_send_msg(chat, &format!("load {cid}"), &cid, ANSWER_WAIT)
                .await;
            let ok = outcome.is_ok();
            let closed = outcome.as_ref().is_err_and(|e| e == "closed");
            log.lock().unwrap().push(Attempt {
                cid: cid.clone(),
                chat,
                sent,
                answered: Instant::now(),
                outcome,
            });
            if ok {
                break;
            }
            let code = log
                .lock()
                .unwrap()
                .last()
                .unwrap()
                .outcome
                .clone()
                .unwrap_err();
            assert!(
                ["unavailable", "timeout", "closed"].contains(&code.as_str()),
                "{cid}: error {code:?}: clients may only see `unavailable` during a fault"
            );
            assert!(
                first.elapsed() < GIVE_UP,
                "{cid} not acknowledged within {GIVE_UP:?}"
            );
            if closed {
                ws = Ws::connect(&url).await;
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Frames from the other senders pile up while this one waits for answers.
        ws.backlog.clear();
        i += 1;
    }
}

/// What a fault did to the clients.
struct Measured {
    sends: usize,
    attempts: usize,
    errors: BTreeMap<String, usize>,
    /// First failed attempt → the first ack after the last failed attempt (0: no error).
    unavailable: Duration,
    /// Longest time one message took from its first attempt to its ack.
    longest_wait: Duration,
    /// Ack latency of the attempts sent from the fault until the fault ended plus 10 s.
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// The same before the fault.
    p99_before: Duration,
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn measure(log: &[Attempt], fault: Instant, healed: Instant) -> Measured {
    let mut errors = BTreeMap::new();
    for a in log {
        if let Err(e) = &a.outcome {
            *errors.entry(e.clone()).or_insert(0) += 1;
        }
    }
    let failed: Vec<&Attempt> = log.iter().filter(|a| a.outcome.is_err()).collect();
    let unavailable = match (
        failed.iter().map(|a| a.sent).min(),
        failed.iter().map(|a| a.answered).max(),
    ) {
        (Some(first), Some(last)) => {
            let back = log
                .iter()
                .filter(|a| a.outcome.is_ok() && a.answered >= last)
                .map(|a| a.answered)
                .min()
                .unwrap_or(last);
            back - first
        }
        _ => Duration::ZERO,
    };
    let mut first_try: HashMap<&str, Instant> = HashMap::new();
    let mut longest_wait = Duration::ZERO;
    for a in log {
        let t0 = *first_try.entry(a.cid.as_str()).or_insert(a.sent);
        if a.outcome.is_ok() {
            longest_wait = longest_wait.max(a.answered - t0);
        }
    }
    let lat = |from: Instant, to: Instant| -> Vec<Duration> {
        log.iter()
            .filter(|a| a.outcome.is_ok() && a.sent >= from && a.sent < to)
            .map(|a| a.answered - a.sent)
            .collect()
    };
    let during = lat(fault, healed + Duration::from_secs(10));
    let before = lat(fault - Duration::from_secs(3600), fault);
    Measured {
        sends: first_try.len(),
        attempts: log.len(),
        errors,
        unavailable,
        longest_wait,
        p50: percentile(during.clone(), 0.50),
        p99: percentile(during.clone(), 0.99),
        max: percentile(during, 1.0),
        p99_before: percentile(before, 0.99),
    }
}

impl Measured {
    /// One line for e2e/test-ha.sh's summary and docs/distributed.md.
    fn report(&self, fault: &str) {
        let ms = |d: Duration| d.as_millis();
        eprintln!(
            "HA-RESULT fault={fault} sends={} attempts={} errors={:?} unavailable_ms={} \
             longest_wait_ms={} ack_p50_ms={} ack_p99_ms={} ack_max_ms={} ack_p99_before_ms={}",
            self.sends,
            self.attempts,
            self.errors,
            ms(self.unavailable),
            ms(self.longest_wait),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            ms(self.p99_before),
        );
    }
}

/// The clients' side of the contract: only `unavailable` errors, and each message acked with
/// one (seq, message_id) however often it was resent.
fn assert_clients_saw_only_unavailable(log: &[Attempt]) -> HashMap<String, (u64, u64, String)> {
    let mut acks: HashMap<String, (u64, u64, String)> = HashMap::new();
    for a in log {
        match &a.outcome {
            Ok(ack) => {
                let got = (
                    a.chat,
                    ack["seq"].as_u64().expect("ack seq"),
                    ack["message_id"].as_str().expect("ack id").to_string(),
                );
                assert_eq!(ack["chat_id"].as_u64(), Some(a.chat), "{}: {ack}", a.cid);
                if let Some(before) = acks.insert(a.cid.clone(), got.clone()) {
                    assert_eq!(before, got, "{} acknowledged twice, differently", a.cid);
                }
            }
            Err(code) => assert_eq!(
                code, "unavailable",
                "{}: clients may only see `unavailable` during a fault",
                a.cid
            ),
        }
    }
    acks
}

/// Read every chat's messages from the CQL store (QUORUM) and check them against the acks:
/// gapless seqs (1..=last_seq), each client_msg_id once, every ack stored as acked, nothing
/// stored that was not sent.
async fn assert_store_intact(
    keyspace: &str,
    chats: &[u64],
    acks: &HashMap<String, (u64, u64, String)>,
) {
    let session = support::cql::session().await;
    let mut stored: HashMap<String, (u64, u64, String)> = HashMap::new();
    for chat in chats {
        let mut q = Statement::new(format!(
            "SELECT last_seq FROM {keyspace}.chats WHERE chat_id = ?"
        ));
        q.set_consistency(Consistency::Quorum);
        let last: Option<i64> = session
            .query_unpaged(q, (*chat as i64,))
            .await
            .expect("read chats")
            .into_rows_result()
            .unwrap()
            .maybe_first_row::<(Option<i64>,)>()
            .unwrap()
            .and_then(|(l,)| l);
        let last = last.unwrap_or(0) as u64;
        assert!(last < 10_000, "the test reads bucket 0 only");
        let mut q = Statement::new(format!(
            "SELECT seq, message_id, client_msg_id FROM {keyspace}.messages \
             WHERE chat_id = ? AND bucket = 0"
        ));
        q.set_consistency(Consistency::Quorum);
        q.set_page_size(5000);
        let rows: Vec<(i64, Option<String>, Option<String>)> = session
            .query_iter(q, (*chat as i64,))
            .await
            .expect("read messages")
            .rows_stream::<(i64, Option<String>, Option<String>)>()
            .unwrap()
            .map(|r| r.expect("row"))
            .collect::<Vec<_>>()
            .await;
        let seqs: Vec<u64> = rows.iter().map(|r| r.0 as u64).collect();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "chat {chat}: seq must be 1..=last_seq without gaps"
        );
        for (seq, mid, cid) in rows {
            let cid = cid.unwrap_or_else(|| panic!("chat {chat} seq {seq}: no client_msg_id"));
            let mid = mid.unwrap_or_default();
            assert!(
                stored
                    .insert(cid.clone(), (*chat, seq as u64, mid))
                    .is_none(),
                "{cid} stored twice"
            );
        }
    }
    for (cid, ack) in acks {
        let got = stored
            .get(cid)
            .unwrap_or_else(|| panic!("acknowledged message {cid} {ack:?} was lost"));
        assert_eq!(got, ack, "{cid}: stored differently from its ack");
    }
    for cid in stored.keys() {
        assert!(
            acks.contains_key(cid),
            "{cid} stored but never acknowledged (the sender resends until acked)"
        );
    }
}

/// A cluster with 4 senders (2 per edge) over 6 chats: 4 direct chats across the edges and
/// 2 groups.
struct Scene {
    s: TestServer,
    chats: Vec<u64>,
    senders: Vec<(usize, u64, Vec<u64>)>,
}

async fn scene(s: TestServer) -> Scene {
    let d13 = s.api_at(0, 1).direct(3).await;
    let d14 = s.api_at(0, 1).direct(4).await;
    let d24 = s.api_at(0, 2).direct(4).await;
    let d23 = s.api_at(1, 3).direct(2).await;
    let g_all = s.api_at(0, 1).group(&[2, 3, 4]).await;
    let g_13 = s.api_at(1, 3).group(&[1, 5]).await;
    let senders = vec![
        (0, 1, vec![d13, d14, g_all]),
        (0, 2, vec![d24, d23, g_all]),
        (1, 3, vec![d13, d23, g_13]),
        (1, 4, vec![d14, d24, g_all]),
    ];
    Scene {
        s,
        chats: vec![d13, d14, d24, d23, g_all, g_13],
        senders,
    }
}

/// The common shape: warm up, `fault()`, keep the load on for the fault's length, `heal()`,
/// keep it on 10 s more, then check clients, processes and the store, and report.
async fn run_fault<F, H>(name: &str, sc: &mut Scene, fault: F, heal: H)
where
    F: FnOnce(&TestServer),
    H: FnOnce(&TestServer),
{
    let load = Load::start(&sc.s, &sc.senders);
    // Warm up until the load flows (slow on a loaded machine: first produce, first writes).
    let warm = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    while load.acked() < 100 {
        assert!(
            warm.elapsed() < Duration::from_secs(60),
            "the load does not flow before the fault ({} acks)",
            load.acked()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fault_at = Instant::now();
    // The service scripts block (start-node waits until the node answers): off the runtime.
    tokio::task::block_in_place(|| fault(&sc.s));
    eprintln!("{name}: fault injected");
    tokio::time::sleep(fault_secs()).await;
    tokio::task::block_in_place(|| heal(&sc.s));
    let healed = Instant::now();
    eprintln!("{name}: healed {:?} after the fault", healed - fault_at);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let log = load.finish().await;
    let m = measure(&log, fault_at, healed);
    m.report(name);
    // Service is back: every sender gets an ack at normal speed, with no process restarted.
    let exited = sc.s.exited();
    assert!(exited.is_empty(), "processes exited: {exited:?}");
    let after = Load::start(&sc.s, &sc.senders);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_log = after.finish().await;
    assert!(
        after_log.iter().all(|a| a.outcome.is_ok()),
        "after the fault every send is acknowledged at once: {:?}",
        after_log.iter().find(|a| a.outcome.is_err())
    );
    let after_p99 = percentile(
        after_log.iter().map(|a| a.answered - a.sent).collect(),
        0.99,
    );
    eprintln!(
        "{name}: after recovery ack p99 {after_p99:?} over {} sends",
        after_log.len()
    );
    let mut all = log;
    all.extend(after_log);
    let acks = assert_clients_saw_only_unavailable(&all);
    let keyspace = sc.s.cluster_name().expect("a cluster").to_string();
    assert_store_intact(&keyspace, &sc.chats, &acks).await;
    eprintln!(
        "{name}: {} messages acknowledged, all stored once under their acked seq",
        acks.len()
    );
}

fn start_args() -> Vec<&'static str> {
    vec!["--rate-burst", "1000"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the multi-node services; run with e2e/test-ha.sh"]
async fn kill_9_the_kafka_leader_of_the_busiest_partition() {
    require_ha("kafka");
    let s = TestServer::start_with(&start_args()).await;
    let topic = format!("{}.messages", s.cluster_name().unwrap());
    let mut sc = scene(s).await;
    let node = Arc::new(Mutex::new(String::new()));
    let (n1, n2) = (node.clone(), node.clone());
    run_fault(
        "kafka-leader-kill",
        &mut sc,
        move |_| {
            let (partition, count, leader) = busiest_partition(&topic);
            eprintln!("busiest partition {partition} ({count} records), leader node {leader}");
            *n1.lock().unwrap() = leader.to_string();
            ha_script("kafka-ha", &["kill", &leader.to_string()]);
        },
        move |_| {
            let n = n2.lock().unwrap().clone();
            ha_script("kafka-ha", &["start-node", &n]);
        },
    )
    .await;
    ha_script("kafka-ha", &["wait-isr", "120"]);
}

/// The partition of `topic` with the most records, its record count and its leader's id.
fn busiest_partition(topic: &str) -> (i32, i64, i32) {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::services::kafka_brokers())
        .set("group.id", "tern-ha-test-probe")
        .create()
        .expect("Kafka client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("the topic");
    t.partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            (p.id(), hi - lo, p.leader())
        })
        .max_by_key(|(_, n, _)| *n)
        .expect("partitions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the multi-node services; run with e2e/test-ha.sh"]
async fn kill_9_a_cql_node() {
    require_ha("cql");
    let s = TestServer::start_with(&start_args()).await;
    let mut sc = scene(s).await;
    // Node 2: not the seed (node 1), so the ring's gossip seed stays; every node holds a
    // replica of everything at RF 3 on 3 nodes.
    run_fault(
        "cql-node-kill",
        &mut sc,
        |_| {
            ha_script("cassandra-ha", &["kill", "2"]);
        },
        |_| {
            let t = Instant::now();
            ha_script("cassandra-ha", &["start-node", "2"]);
            eprintln!("cql node 2 back (answering) after {:?}", t.elapsed());
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the multi-node services; run with e2e/test-ha.sh"]
async fn kill_9_the_redis_primary_failover_to_a_replica() {
    require_ha("redis");
    let s = TestServer::start_with(&start_args()).await;
    let mut sc = scene(s).await;
    let node = Arc::new(Mutex::new(String::new()));
    let (n1, n2) = (node.clone(), node.clone());
    // A member of g_13 on edge 1 that stays connected through the failover (pinging, so its
    // connection is not closed for silence): its route and presence must survive it.
    let witness = Witness::start(&format!("ws://{}/ws?token={}", sc.s.edge(1), token(5))).await;
    run_fault(
        "redis-primary-kill",
        &mut sc,
        move |_| {
            let primary = ha_script("redis-ha", &["primary"]);
            eprintln!("Redis primary is node {primary}");
            *n1.lock().unwrap() = primary.clone();
            ha_script("redis-ha", &["kill", &primary]);
        },
        move |_| {
            let n = n2.lock().unwrap().clone();
            ha_script("redis-ha", &["start-node", &n]);
            eprintln!(
                "Redis primary now node {}",
                ha_script("redis-ha", &["primary"])
            );
        },
    )
    .await;
    // Presence and routing came back on the new primary: the witness, connected through the
    // whole test, shows online from the other edge, and a new message reaches it live.
    let api = sc.s.api_at(0, 1);
    let t = Instant::now();
    loop {
        let (_, v) = api.get("/v1/presence?user_ids=5").await;
        if v["presence"][0]["status"] == "online" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the witness is not online after the failover: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let g_13 = sc.chats[5];
    let mut a = sc.s.ws_at(0, 1).await;
    let ack = a
        .send_msg(g_13, "after the failover", "after-failover")
        .await;
    let frames = witness.finish(Duration::from_secs(5), &ack).await;
    assert!(
        frames.iter().any(|m| m["message_id"] == ack["message_id"]),
        "a message after the failover reaches the witness on the other edge live"
    );
    eprintln!(
        "redis-primary-kill: witness online and reached live after the failover ({} frames live)",
        frames.len()
    );
}

/// A connection held through a fault: pings every 5 s and collects the `message` frames.
struct Witness {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Value>>,
    want: Arc<Mutex<Option<String>>>,
}

impl Witness {
    async fn start(url: &str) -> Witness {
        let mut ws = Ws::connect(url).await;
        let stop = Arc::new(AtomicBool::new(false));
        let want: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let (st, w) = (stop.clone(), want.clone());
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut ping = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = ping.tick() => {
                        ws.try_send(serde_json::json!({"type":"ping"})).await;
                    }
                    f = ws.next_frame(Duration::from_millis(200)) => {
                        if let Some(f) = f
                            && f["type"] == "message"
                        {
                            got.push(f);
                        }
                    }
                }
                let wanted = w.lock().unwrap().clone();
                let seen = wanted
                    .as_deref()
                    .is_some_and(|id| got.iter().any(|m| m["message_id"] == id));
                if st.load(Ordering::Acquire) || seen {
                    return got;
                }
            }
        });
        Witness { stop, task, want }
    }

    /// Wait (up to `wait`) for the message `ack` names, then stop; every message frame seen.
    async fn finish(self, wait: Duration, ack: &Value) -> Vec<Value> {
        *self.want.lock().unwrap() = ack["message_id"].as_str().map(str::to_string);
        let stop = self.stop.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            stop.store(true, Ordering::Release);
        });
        let got = self.task.await.expect("witness");
        timer.abort();
        got
    }
}

/// The group id the cut-off delivery process runs with (matched by iptables `--gid-owner`).
const CUT_GID: u32 = 4215;
const CUT_MARK: &str = "0x4215";

/// iptables rules that cut the sockets of group [`CUT_GID`] off from the Kafka brokers in both
/// directions: its packets to a broker port mark the connection and are dropped; packets of a
/// marked connection are dropped on the way in too. Removed on drop (also when a test fails).
struct KafkaCut {
    rules: Vec<Vec<String>>,
}

impl KafkaCut {
    fn apply() -> KafkaCut {
        let ports: Vec<String> = support::services::kafka_brokers()
            .split(',')
            .filter_map(|b| b.rsplit_once(':').map(|(_, p)| p.to_string()))
            .collect();
        let gid = CUT_GID.to_string();
        let rules: Vec<Vec<String>> = [
            vec![
                "OUTPUT",
                "-p",
                "tcp",
                "-m",
                "owner",
                "--gid-owner",
                &gid,
                "-m",
                "multiport",
                "--dports",
                &ports.join(","),
                "-j",
                "CONNMARK",
                "--set-mark",
                CUT_MARK,
            ],
            vec!["OUTPUT", "-m", "connmark", "--mark", CUT_MARK, "-j", "DROP"],
            vec!["INPUT", "-m", "connmark", "--mark", CUT_MARK, "-j", "DROP"],
        ]
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect();
        let mut cut = KafkaCut { rules: Vec::new() };
        // The marking rule first (position 1), the dropping one right after it (position 2):
        // both ahead of whatever else is in the chain.
        for (i, r) in rules.iter().enumerate() {
            let pos = if r[0] == "OUTPUT" {
                (i + 1).to_string()
            } else {
                "1".into()
            };
            let mut args = vec!["-w".to_string(), "-I".into(), r[0].clone(), pos];
            args.extend(r[1..].iter().cloned());
            iptables(&args);
            cut.rules.push(r.clone());
        }
        cut
    }
}

fn iptables(args: &[String]) {
    let st = Command::new("iptables")
        .args(args)
        .status()
        .expect("iptables");
    assert!(st.success(), "iptables {args:?} failed");
}

impl Drop for KafkaCut {
    fn drop(&mut self) {
        for r in self.rules.drain(..) {
            let mut args = vec!["-w".to_string(), "-D".into()];
            args.extend(r);
            let _ = Command::new("iptables").args(&args).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the multi-node services and root (iptables); run with e2e/test-ha.sh"]
async fn cut_one_delivery_process_off_kafka_for_20_s() {
    require_distributed();
    let s = TestServer::start_with_gid(&start_args(), "delivery", 1, CUT_GID).await;
    let mut sc = scene(s).await;
    let cut: Arc<Mutex<Option<KafkaCut>>> = Arc::new(Mutex::new(None));
    let (c1, c2) = (cut.clone(), cut.clone());
    run_fault(
        "delivery-cut-from-kafka",
        &mut sc,
        move |s| {
            let owned = tokio::runtime::Handle::current().block_on(s.metric_of(
                "delivery",
                1,
                "chat_messages_stored_total",
            ));
            eprintln!("delivery 1 stored {owned:?} messages before the cut");
            *c1.lock().unwrap() = Some(KafkaCut::apply());
        },
        move |_| {
            c2.lock().unwrap().take();
        },
    )
    .await;
    // Evidence that the cut took: the cut-off process lost its partitions (librdkafka's
    // session timed out) and the other delivery process was assigned them meanwhile.
    let log = sc.s.log();
    let (mut section, mut assigned0, mut lost1) = (String::new(), 0, 0);
    for line in log.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            section = name.split(' ').next().unwrap_or_default().to_string();
        } else if section == "delivery0" && line.contains("partitions assigned") {
            assigned0 += 1;
        } else if section == "delivery1" && line.contains("partitions revoked") {
            lost1 += 1;
        }
    }
    eprintln!("delivery 0 assignments: {assigned0}; delivery 1 revocations: {lost1}");
    assert!(
        assigned0 >= 2 && lost1 >= 1,
        "the cut process gave its partitions up and the other took them"
    );
}
