//! Day-2 operations on a real Kubernetes node (`e2e/kube/run.sh` brings the node up, installs
//! the operator with its Helm chart and runs this with `TERN_KUBE_NODE=1`). Clients send and
//! receive through the edge Service the whole time; after every step each acked message is
//! stored under its acked seq, seqs are gapless, no `client_msg_id` is stored twice, and every
//! receiver has every message (live or by `sync` after a reconnect).
//!
//! One ChatCluster (`tern-day2` in `e2e-day2`), then in order:
//! 1. **image upgrade**: `spec.image` to another tag — the setup Job of the new configuration
//!    succeeds before any new role pod exists, roles roll one pod at a time (never fewer than
//!    two serving edges), clients see `reconnect` and nothing else;
//! 2. **rollback + config change**: back to the first image with `logLevel: debug` — the same;
//! 3. **a broken upgrade is held**: an image whose setup cannot run — `SetupComplete=False`
//!    with the pod's reason within seconds, `Degraded=True`, the running pods untouched and
//!    serving; fixing the spec recovers;
//! 4. **autoscaling on live connections**: idle clients push the edge Deployment up, new pods
//!    take new clients; closing them brings it down after the stabilization window, the
//!    removed pods being the least loaded, their clients moving without loss;
//! 5. **dependency restarts**: the Redis, Kafka and CQL pods deleted one at a time under
//!    load — `Degraded`/`DependenciesReady` follow, clients get at most `unavailable` (never a
//!    false ack) and recover; the longest wait for an ack is printed;
//! 6. **leadership**: two operator replicas; the leader loses API access to its Lease and
//!    exits within the renew deadline, never two leaders at once, the other takes over after
//!    the lease expires and acts.

mod nodekit;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nodekit::stream::{Receiver, Sender, start_receiver, start_sender};
use nodekit::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

const NAME: &str = "tern-day2";
const NS: &str = "e2e-day2";
const IMAGE: &str = "ghcr.io/tern/chat-server:0.1.0";
/// The same image under another tag: an upgrade as the cluster sees it.
const IMAGE_NEXT: &str = "ghcr.io/tern/chat-server:0.1.0-next";
/// busybox under a chat-server tag: `chat-server setup` cannot run in it.
const IMAGE_BROKEN: &str = "ghcr.io/tern/chat-server:0.1.0-broken";
const BUSYBOX: &str = "tern.local/busybox:1.35.0";
const OPNS: &str = "tern-system";

fn manifest() -> Value {
    json!({
        "apiVersion": "chat.tern.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": NAME},
        "spec": {
            "image": IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "logLevel": "info",
            "edge": {
                "replicas": 2,
                "service": {"type": "NodePort", "port": 8080},
                "drain": {"timeoutSeconds": 5, "reconnectJitterMs": 500}
            },
            "delivery": {"replicas": 1},
            "presence": {"replicas": 1},
            "kafka": {"managed": {"storage": {"size": "2Gi"}}, "partitions": 8},
            "scylla": {"managed": {"engine": "cassandra", "storage": {"size": "2Gi"}}},
            "redis": {"managed": {"image": "redis:7.0", "storage": {"size": "1Gi"}}}
        }
    })
}

/// Tag an image already in the node's containerd under another name.
fn ctr_tag(src: &str, dst: &str) {
    let sock =
        std::env::var("TERN_CONTAINERD_SOCK").expect("TERN_CONTAINERD_SOCK (e2e/env/env.sh)");
    let out = Command::new("ctr")
        .args([
            "--address",
            &sock,
            "-n",
            "k8s.io",
            "images",
            "tag",
            "--force",
            src,
            dst,
        ])
        .output()
        .expect("ctr");
    assert!(
        out.status.success(),
        "ctr images tag {src} {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn patch_spec(k: &Cluster, spec: Value) {
    k.chatclusters()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        )
        .await
        .expect("patch the ChatCluster");
}

async fn wait_ready(k: &Cluster, what: &str, limit: Duration) {
    let gen_want = k
        .chatclusters()
        .get(NAME)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap_or(0);
    wait_for(what, limit, || async {
        let cc = k
            .chatclusters()
            .get(NAME)
            .await
            .map_err(|e| e.to_string())?;
        let conds = cc.data["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ready = conds.iter().find(|c| c["type"] == "Ready");
        match ready {
            Some(c)
                if c["status"] == "True" && c["observedGeneration"].as_i64() >= Some(gen_want) =>
            {
                Ok(())
            }
            Some(c) => Err(format!(
                "Ready={} {}: {}",
                c["status"], c["reason"], c["message"]
            )),
            None => Err("no Ready condition".into()),
        }
    })
    .await;
}

/// Serving edge pods: Ready and not terminating.
async fn serving_edges(k: &Cluster) -> Vec<Pod> {
    k.pods_of("edge")
        .await
        .into_iter()
        .filter(is_ready)
        .collect()
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

// ---- load ----------------------------------------------------------------------------------

struct Chats {
    /// (sender, receiver, chat)
    lanes: Vec<(u64, u64, u64)>,
}

struct Load {
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
}

fn start_load(c: &Clients, chats: &Chats, phase: &str) -> Load {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for &(s, r, chat) in &chats.lanes {
        senders.push(start_sender(
            c,
            s,
            chat,
            &format!("{phase}-{s}"),
            Duration::from_millis(100),
        ));
        receivers.push(start_receiver(c, r, chat));
    }
    Load { senders, receivers }
}

/// Stop the load and check it: returns (acked, errors by code, how many times clients had to
/// reconnect (told by a `reconnect` frame or not), longest gap).
async fn finish_load(
    c: &Clients,
    load: Load,
    phase: &str,
    allowed_errors: &[&str],
) -> (usize, BTreeMap<String, u64>, u64, Duration) {
    let mut acked = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut reconnect_frames = 0;
    // Connections clients had to open again (after `reconnect`, a close or silence).
    let mut moves = 0;
    let mut gap = Duration::ZERO;
    // (chat, stored messages), in lane order: receiver i follows the chat of sender i.
    let mut stored = Vec::new();
    for s in load.senders {
        let st = s.finish().await;
        acked += st.acks.len();
        assert!(!st.acks.is_empty(), "{phase}: a sender got no ack at all");
        for (k, v) in &st.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        let unexpected = st.errors_except(allowed_errors);
        assert!(
            unexpected.is_empty(),
            "{phase}: chat {} saw errors beyond {allowed_errors:?}: {unexpected:?}",
            st.chat
        );
        reconnect_frames += st.reconnect_frames;
        moves += st.reconnects;
        gap = gap.max(st.longest_gap);
        let n = assert_intact(&c.api(st.user), st.chat, &st.acks).await;
        stored.push((st.chat, n as u64));
    }
    for (i, r) in load.receivers.into_iter().enumerate() {
        let st = r.finish().await;
        let (chat, n) = stored[i];
        let want: BTreeSet<u64> = (1..=n).collect();
        assert_eq!(
            st.seqs, want,
            "{phase}: receiver of chat {chat} has every message (live or by sync)"
        );
        reconnect_frames += st.reconnect_frames;
        moves += st.reconnects;
    }
    eprintln!(
        "   {phase}: {acked} acked, all stored and received; errors {errors:?}; {reconnect_frames} reconnect frames, {moves} reconnects; longest wait for an ack {gap:.1?}"
    );
    (acked, errors, reconnect_frames.max(moves), gap)
}

// ---- the test ------------------------------------------------------------------------------

#[tokio::test]
async fn day_two_operations_on_a_real_node() {
    if std::env::var("TERN_KUBE_NODE").map_or(true, |v| v != "1") {
        eprintln!(
            "SKIPPED: set TERN_KUBE_NODE=1 (e2e/kube/run.sh brings the node up and runs this)"
        );
        return;
    }
    let t0 = Instant::now();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let k = Cluster {
        client: client.clone(),
        ns: NS.into(),
        name: NAME.into(),
        pods: Api::namespaced(client.clone(), NS),
    };
    ctr_tag(IMAGE, IMAGE_NEXT);
    ctr_tag(BUSYBOX, IMAGE_BROKEN);

    step(t0, &format!("apply the ChatCluster {NAME} in {NS}"));
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata":{"name": NS}})).unwrap(),
        )
        .await;
    let obj = serde_json::from_value(manifest()).unwrap();
    match k.chatclusters().create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(e))
            if e.code == 409 && std::env::var("TERN_KUBE_REUSE").is_ok_and(|v| v == "1") =>
        {
            eprintln!("   reusing the existing ChatCluster (TERN_KUBE_REUSE=1)");
            patch_spec(&k, manifest()["spec"].clone()).await;
        }
        Err(e) => panic!("create the ChatCluster: {e}"),
    }
    wait_ready(&k, "ChatCluster Ready", Duration::from_secs(600)).await;
    wait_for("2 edges", Duration::from_secs(120), || {
        k.ready_pods("edge", 2)
    })
    .await;
    step(t0, "Ready");

    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc = svcs.get(&format!("{NAME}-edge")).await.unwrap();
    let node_port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret = secrets
        .get(&format!("{NAME}-jwt"))
        .await
        .unwrap()
        .data
        .unwrap()["secret"]
        .0
        .clone();
    let c = Clients {
        secret,
        base: format!("127.0.0.1:{node_port}"),
        http: reqwest::Client::new(),
    };
    let mut lanes = Vec::new();
    for (s, r) in [(11u64, 12u64), (13, 14)] {
        let (st, v) = c
            .api(s)
            .post("/v1/chats", json!({"type":"direct","members":[r]}))
            .await;
        assert!(st == 200 || st == 201, "{v}");
        lanes.push((s, r, v["chat_id"].as_u64().unwrap()));
    }
    let (st, v) = c
        .api(15)
        .post(
            "/v1/chats",
            json!({"type":"group","title":"day2","members":[16,17]}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    lanes.push((15, 16, v["chat_id"].as_u64().unwrap()));
    let chats = Chats { lanes };

    // ---- 1 + 2. upgrade, then rollback with a config change ------------------------------
    roll(
        &k,
        &c,
        &chats,
        "upgrade",
        json!({"image": IMAGE_NEXT}),
        IMAGE_NEXT,
        t0,
    )
    .await;
    roll(
        &k,
        &c,
        &chats,
        "rollback",
        json!({"image": IMAGE, "logLevel": "debug"}),
        IMAGE,
        t0,
    )
    .await;

    // ---- 2b. drain the node's edge pods; 2c. rotate the JWT secret ---------------------
    drain(&k, &c, &chats, t0).await;
    let c = rotate_jwt(&k, c, t0).await;

    // ---- 3. a broken upgrade is held ---------------------------------------------------
    broken_upgrade(&k, &c, &chats, t0).await;

    // ---- 4. autoscaling ----------------------------------------------------------------
    autoscaling(&k, &c, &chats, t0).await;

    // ---- 5. dependency restarts --------------------------------------------------------
    for dep in ["redis", "kafka", "scylla"] {
        dependency_restart(&k, &c, &chats, dep, t0).await;
    }

    // ---- 6. leadership -----------------------------------------------------------------
    leadership(&k, t0).await;

    step(t0, "delete the ChatCluster and its namespace");
    let _ = k
        .chatclusters()
        .delete(NAME, &DeleteParams::background())
        .await;
    let _ = nss.delete(NS, &DeleteParams::background()).await;
    step(t0, "done");
}

/// Change the spec under load and watch the roll: setup first, one pod at a time, never
/// fewer than two serving edges, nothing but `reconnect` for clients.
#[allow(clippy::too_many_arguments)]
async fn roll(
    k: &Cluster,
    c: &Clients,
    chats: &Chats,
    phase: &str,
    spec: Value,
    image: &str,
    t0: Instant,
) {
    step(t0, &format!("{phase}: patch {spec} while clients stream"));
    let mut before = BTreeSet::new();
    for comp in ["edge", "delivery", "presence"] {
        for p in k.pods_of(comp).await {
            before.insert(p.name_any());
        }
    }
    let jobs: Api<Job> = Api::namespaced(k.client.clone(), NS);
    let old_jobs: BTreeSet<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    let load = start_load(c, chats, phase);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let patched = Instant::now();
    patch_spec(k, spec).await;

    // Watch until every role pod is new and runs `image`.
    let mut min_serving = usize::MAX;
    let mut setup_done: Option<k8s_openapi::jiff::Timestamp> = None;
    let mut new_pods: BTreeMap<String, k8s_openapi::jiff::Timestamp> = BTreeMap::new();
    loop {
        assert!(
            patched.elapsed() < Duration::from_secs(420),
            "{phase}: roll not done in 7 minutes"
        );
        min_serving = min_serving.min(serving_edges(k).await.len());
        for j in jobs.list(&ListParams::default()).await.unwrap().items {
            if old_jobs.contains(&j.name_any()) {
                continue;
            }
            if let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.as_ref()) {
                setup_done = Some(t.0);
            }
        }
        let mut all_new = true;
        for comp in ["edge", "delivery", "presence"] {
            for p in k.pods_of(comp).await {
                if before.contains(&p.name_any()) || image_of(&p) != image {
                    all_new = false;
                } else {
                    new_pods
                        .entry(p.name_any())
                        .or_insert(p.metadata.creation_timestamp.clone().unwrap().0);
                }
            }
        }
        if all_new && k.ready_pods("edge", 2).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_ready(k, &format!("{phase}: Ready"), Duration::from_secs(180)).await;
    let took = patched.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, _, reconnects, gap) = finish_load(c, load, phase, &[]).await;
    let setup_done = setup_done.expect("a setup Job for the new configuration completed");
    for (p, created) in &new_pods {
        // Timestamps have second resolution.
        assert!(
            created.as_second() >= setup_done.as_second(),
            "{phase}: pod {p} created at {created} before the setup Job completed at {setup_done}"
        );
    }
    assert!(
        min_serving >= 2,
        "{phase}: serving edges went down to {min_serving} during the roll (maxUnavailable 0)"
    );
    assert!(
        reconnects > 0,
        "{phase}: the clients moved off the replaced edges"
    );
    eprintln!(
        "   {phase}: rolled {} pods in {took:.0?}; setup Job done before every new pod; never fewer than {min_serving} serving edges; longest ack wait {gap:.1?}",
        new_pods.len()
    );
}

/// `kubectl drain` of the node's edge pods under load: the drain evicts one edge, its
/// replacement cannot schedule (the node is cordoned, and it is the only one), so the edge
/// PodDisruptionBudget (maxUnavailable 1) refuses the second eviction: the drain times out
/// with one edge still serving; clients move to it without loss. Uncordon: two again.
async fn drain(k: &Cluster, c: &Clients, chats: &Chats, t0: Instant) {
    step(
        t0,
        "drain: kubectl drain the node's edge pods while clients stream",
    );
    let node = k.pods_of("edge").await[0]
        .spec
        .as_ref()
        .unwrap()
        .node_name
        .clone()
        .unwrap();
    let node_name = node.clone();
    let load = start_load(c, chats, "drain");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let selector = format!("app.kubernetes.io/instance={NAME},app.kubernetes.io/component=edge");
    let started = Instant::now();
    let drain = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .args([
                "drain",
                &node,
                "--pod-selector",
                &selector,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=25s",
            ])
            .output()
            .expect("kubectl drain")
    });
    let mut min_serving = usize::MAX;
    while !drain.is_finished() {
        min_serving = min_serving.min(serving_edges(k).await.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = drain.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    kubectl(&["uncordon", &node_name]);
    eprintln!(
        "   drain ended after {:.0?} (exit {:?}); serving edges never below {min_serving}",
        started.elapsed(),
        out.status.code()
    );
    assert!(
        !out.status.success(),
        "the drain cannot finish: the budget keeps one edge"
    );
    assert!(
        stderr.contains("disruption budget"),
        "the drain was held by the edge PodDisruptionBudget: {stderr}"
    );
    assert!(min_serving >= 1, "an edge served throughout the drain");
    wait_for("2 edges after uncordon", Duration::from_secs(120), || {
        k.ready_pods("edge", 2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, _, reconnects, _) = finish_load(c, load, "drain", &[]).await;
    assert!(reconnects > 0, "the evicted edge drained its clients");
}

/// Rotate the generated JWT secret: delete it, the operator makes a new one and the roles
/// roll; tokens signed with the old secret are refused, new ones work.
async fn rotate_jwt(k: &Cluster, c: Clients, t0: Instant) -> Clients {
    step(t0, "rotate the JWT secret: delete the generated Secret");
    let secrets: Api<Secret> = Api::namespaced(k.client.clone(), NS);
    let name = format!("{NAME}-jwt");
    let old = c.secret.clone();
    kubectl(&["delete", "secret", "-n", NS, &name]);
    let new = wait_for("a new JWT secret", Duration::from_secs(60), || async {
        match secrets.get_opt(&name).await {
            Ok(Some(s)) => {
                let v = s.data.unwrap_or_default()["secret"].0.clone();
                if v != old {
                    Ok(v)
                } else {
                    Err("same value".into())
                }
            }
            Ok(None) => Err("not yet".into()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let c = Clients { secret: new, ..c };
    // Every role pod runs with the new secret once the roll is done: a new token works on
    // every edge and an old one is refused.
    wait_for(
        "the roles rolled with the new secret",
        Duration::from_secs(240),
        || async {
            let edges = k.ready_pods("edge", 2).await?;
            for e in &edges {
                let ip = pod_ip(e);
                let new_ok =
                    Ws::connect(&format!("ws://{ip}:8080/ws?token={}", token(&c.secret, 21)))
                        .await
                        .is_ok();
                let old_ok = Ws::connect(&format!("ws://{ip}:8080/ws?token={}", token(&old, 21)))
                    .await
                    .is_ok();
                if !new_ok || old_ok {
                    return Err(format!(
                        "edge {ip}: new token accepted {new_ok}, old token accepted {old_ok}"
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    wait_ready(k, "Ready after the rotation", Duration::from_secs(180)).await;
    c
}

/// An upgrade whose setup cannot run: reported at once, running pods untouched; fixed by
/// going back.
async fn broken_upgrade(k: &Cluster, c: &Clients, chats: &Chats, t0: Instant) {
    step(
        t0,
        "broken upgrade: an image in which `chat-server setup` cannot run",
    );
    let mut before = BTreeSet::new();
    for comp in ["edge", "delivery", "presence"] {
        for p in k.pods_of(comp).await {
            before.insert(p.name_any());
        }
    }
    let load = start_load(c, chats, "broken");
    let patched = Instant::now();
    patch_spec(k, json!({"image": IMAGE_BROKEN})).await;
    let msg = wait_for(
        "SetupComplete=False SetupFailed with the pod's reason",
        Duration::from_secs(120),
        || async {
            match k.condition("SetupComplete").await {
                Some((s, r, m)) if s == "False" && r == "SetupFailed" => Ok(m),
                Some((s, r, m)) => Err(format!("SetupComplete={s} {r}: {m}")),
                None => Err("no condition".into()),
            }
        },
    )
    .await;
    eprintln!("   reported after {:.0?}: {msg}", patched.elapsed());
    assert!(msg.contains("setup Job"), "{msg}");
    let (d, dr, _) = k.condition("Degraded").await.unwrap();
    assert_eq!((d.as_str(), dr.as_str()), ("True", "SetupFailed"));
    // The running pods stay and keep serving for a while.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mut now = BTreeSet::new();
    for comp in ["edge", "delivery", "presence"] {
        for p in k.pods_of(comp).await {
            assert_eq!(image_of(&p), IMAGE, "{} was replaced", p.name_any());
            now.insert(p.name_any());
        }
    }
    assert_eq!(now, before, "role pods untouched while setup fails");
    let (acked, _, _, _) = finish_load(c, load, "broken", &[]).await;
    assert!(
        acked > 50,
        "clients kept sending while the upgrade was held"
    );
    step(t0, "fix: back to the working image");
    patch_spec(k, json!({"image": IMAGE})).await;
    wait_ready(k, "Ready again", Duration::from_secs(180)).await;
    let (s, r, _) = k.condition("SetupComplete").await.unwrap();
    assert_eq!((s.as_str(), r.as_str()), ("True", "SetupSucceeded"));
}

/// Autoscaling with real pods: up on idle connections, down after the window, least loaded
/// pods removed, their clients moving without loss.
async fn autoscaling(k: &Cluster, c: &Clients, chats: &Chats, t0: Instant) {
    step(t0, "autoscaling: 40 connections per pod, 1..3 edges");
    patch_spec(
        k,
        json!({"edge": {"autoscaling": {
            "minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerPod": 40,
            "scrapeIntervalSeconds": 3, "scaleUpMaxStep": 2,
            "scaleDownStabilizationSeconds": 15, "scaleDownMaxStep": 1, "scaleDownPeriodSeconds": 10
        }}}),
    )
    .await;
    let load = start_load(c, chats, "autoscale");
    // 100 idle clients: ceil((100 + load) / 40) = 3.
    let mut idle = Vec::new();
    for u in 1000..1100u64 {
        idle.push(c.ws(u).await);
    }
    let grown = Instant::now();
    let edges = wait_for("3 edge pods ready", Duration::from_secs(180), || {
        k.ready_pods("edge", 3)
    })
    .await;
    eprintln!(
        "   3 edges ready {:.0?} after 100 connections",
        grown.elapsed()
    );
    // New clients land on new pods too (kube-proxy spreads them).
    let mut per_pod = BTreeMap::new();
    for p in &edges {
        per_pod.insert(p.name_any(), connections(&pod_ip(p)).await);
    }
    for u in 1100..1160u64 {
        idle.push(c.ws(u).await);
    }
    let mut gained = 0;
    for p in &edges {
        if connections(&pod_ip(p)).await > per_pod[&p.name_any()] {
            gained += 1;
        }
    }
    assert!(
        gained >= 2,
        "new connections spread over the edges: {per_pod:?}"
    );

    step(
        t0,
        "close the idle clients: the Deployment shrinks to the least loaded",
    );
    drop(idle);
    let closed = Instant::now();
    // Record each pod's deletion cost (its connections, set by the operator) as seen last,
    // and for every pod removed, check it was among the least loaded at that moment.
    let mut last_cost: BTreeMap<String, i64> = BTreeMap::new();
    let mut removed = Vec::new();
    let mut first_removal = None;
    loop {
        assert!(
            closed.elapsed() < Duration::from_secs(240),
            "edges did not shrink to 1: {last_cost:?}"
        );
        let pods = k
            .pods
            .list(&ListParams::default().labels(&format!(
                "app.kubernetes.io/instance={NAME},app.kubernetes.io/component=edge"
            )))
            .await
            .unwrap()
            .items;
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        for p in &pods {
            let name = p.name_any();
            if p.metadata.deletion_timestamp.is_some() && !removed.contains(&name) {
                let mine = last_cost.get(&name).copied().unwrap_or(0);
                let others: Vec<i64> = live
                    .iter()
                    .filter_map(|o| last_cost.get(&o.name_any()).copied())
                    .collect();
                assert!(
                    others.iter().all(|&o| mine <= o),
                    "scale-down removed {name} with {mine} connections while others had {others:?}"
                );
                eprintln!(
                    "   removed {name} ({mine} connections; others {others:?}) {:.0?} after closing",
                    closed.elapsed()
                );
                removed.push(name);
                first_removal.get_or_insert(closed.elapsed());
            } else if p.metadata.deletion_timestamp.is_none()
                && let Some(v) = p
                    .annotations()
                    .get("controller.kubernetes.io/pod-deletion-cost")
            {
                last_cost.insert(name, v.parse().unwrap_or(0));
            }
        }
        if live.len() == 1 && k.ready_pods("edge", 1).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The window holds the last high recommendation, made up to one scrape interval (3 s)
    // before the clients closed: the first removal comes no sooner than 15 - 3 s after.
    let first = first_removal.expect("a pod was removed");
    assert!(
        first >= Duration::from_secs(11),
        "scale-down waited for the stabilization window (first removal after {first:?})"
    );
    assert_eq!(removed.len(), 2, "two pods removed: {removed:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    finish_load(c, load, "autoscale", &[]).await;
    // Back to two fixed edges for the rest (a merge patch's null removes the field).
    patch_spec(k, json!({"edge": {"autoscaling": null}})).await;
    wait_for("2 edges again", Duration::from_secs(120), || {
        k.ready_pods("edge", 2)
    })
    .await;
}

/// Restart one dependency pod under load.
async fn dependency_restart(k: &Cluster, c: &Clients, chats: &Chats, dep: &str, t0: Instant) {
    step(t0, &format!("{dep}: delete its pod under load"));
    let pod = format!("{NAME}-{dep}-0");
    let load = start_load(c, chats, &format!("dep-{dep}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deleted = Instant::now();
    kubectl(&["delete", "pod", "-n", NS, &pod, "--wait=false"]);
    let seen = wait_for(
        &format!("{dep}: DependenciesReady=False and Degraded=True"),
        Duration::from_secs(90),
        || async {
            let d = k.condition("DependenciesReady").await;
            let g = k.condition("Degraded").await;
            match (d, g) {
                (Some((ds, _, dm)), Some((gs, gr, _))) if ds == "False" && gs == "True" => {
                    Ok(format!("{dm} / Degraded {gr}"))
                }
                (d, g) => Err(format!("{d:?} {g:?}")),
            }
        },
    )
    .await;
    eprintln!("   reported after {:.1?}: {seen}", deleted.elapsed());
    assert!(seen.contains(dep), "{seen}");
    wait_ready(k, &format!("{dep}: Ready again"), Duration::from_secs(300)).await;
    let (g, _, _) = k.condition("Degraded").await.unwrap();
    assert_eq!(g, "False", "Degraded clears when {dep} is back");
    let back = deleted.elapsed();
    // Each chat-server process reconnects on its own: wait until every edge answers a read
    // that needs the store and Redis (the chat list), and count that in the outage.
    let user = chats.lanes[0].0;
    wait_for(
        &format!("{dep}: every edge serves reads"),
        Duration::from_secs(180),
        || async {
            for e in k.ready_pods("edge", 2).await? {
                let url = format!("http://{}:8080/v1/chats", pod_ip(&e));
                let r = c
                    .http
                    .get(&url)
                    .bearer_auth(token(&c.secret, user))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status() != 200 {
                    return Err(format!("{url}: {}", r.status()));
                }
            }
            Ok(())
        },
    )
    .await;
    let reads = deleted.elapsed();
    // Give clients a moment to get through after the pod is back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, errors, _, gap) = finish_load(c, load, &format!("dep-{dep}"), &["unavailable"]).await;
    eprintln!(
        "   {dep}: Ready again {back:.0?} after the delete, reads through every edge after {reads:.0?}; clients: {errors:?}, longest ack wait {gap:.1?}"
    );
    for comp in ["edge", "delivery", "presence"] {
        for p in k.pods_of(comp).await {
            assert_eq!(
                restarts(&p),
                0,
                "{} restarted after {dep} came back",
                p.name_any()
            );
        }
    }
}

/// Two operator replicas; the leader loses its Lease permissions: it must stop and exit
/// within the renew deadline; the other takes over only after the lease expired, and acts.
async fn leadership(k: &Cluster, t0: Instant) {
    step(t0, "leadership: two operator replicas");
    let deploys: Api<Deployment> = Api::namespaced(k.client.clone(), OPNS);
    let opname = deploys
        .list(&ListParams::default().labels("app.kubernetes.io/name=tern-operator"))
        .await
        .unwrap()
        .items[0]
        .name_any();
    kubectl(&["scale", "deploy", "-n", OPNS, &opname, "--replicas=2"]);
    let oppods: Api<Pod> = Api::namespaced(k.client.clone(), OPNS);
    let lp = ListParams::default().labels("app.kubernetes.io/name=tern-operator");
    wait_for(
        "2 operator pods ready",
        Duration::from_secs(120),
        || async {
            let ps: Vec<Pod> = oppods
                .list(&lp)
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let ready = ps.iter().filter(|p| is_ready(p)).count();
            if ready == 2 && ps.len() == 2 {
                Ok(())
            } else {
                Err(format!("{ready}/{} ready", ps.len()))
            }
        },
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(k.client.clone(), OPNS);
    let leader = leases
        .get("tern-operator-leader")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let pods = oppods.list(&lp).await.unwrap().items;
    assert!(
        pods.iter().any(|p| p.name_any() == leader),
        "the lease holder {leader} is one of the pods"
    );
    let restarts_before: BTreeMap<String, i32> =
        pods.iter().map(|p| (p.name_any(), restarts(p))).collect();
    eprintln!("   leader {leader}");

    // Sample both replicas' leader gauge: never two at once.
    let ips: Vec<String> = pods.iter().map(pod_ip).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut max_leaders = 0;
        let mut samples = 0;
        while !*stop_rx.borrow() {
            let mut n = 0;
            for ip in &ips {
                if let Ok(r) = reqwest::get(format!("http://{ip}:8080/metrics")).await
                    && let Ok(t) = r.text().await
                    && t.lines().any(|l| l.trim() == "tern_operator_leader 1")
                {
                    n += 1;
                }
            }
            max_leaders = max_leaders.max(n);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (max_leaders, samples)
    });

    // Take the Lease permissions away (the chart's RoleBinding for leader election).
    let rb = format!("{opname}-leader-election");
    let saved = kubectl(&["get", "rolebinding", "-n", OPNS, &rb, "-o", "json"]);
    let cut = Instant::now();
    kubectl(&["delete", "rolebinding", "-n", OPNS, &rb]);
    let exited = wait_for("the leader exits", Duration::from_secs(40), || async {
        let p = oppods.get(&leader).await.map_err(|e| e.to_string())?;
        if restarts(&p) > restarts_before[&leader] {
            Ok(cut.elapsed())
        } else {
            Err("still running".into())
        }
    })
    .await;
    eprintln!("   the leader exited {exited:.1?} after losing access (renew deadline 10 s)");
    assert!(
        exited < Duration::from_secs(10 + 2 + 5),
        "stepped down within the renew deadline (+ retry + restart detection)"
    );
    // The lease as the old leader left it: its last renewal.
    let last_renew = leases
        .get("tern-operator-leader")
        .await
        .unwrap()
        .spec
        .unwrap()
        .renew_time
        .expect("renewTime")
        .0;
    // Give the permissions back: a replica takes over once the lease has expired.
    let mut obj: Value = serde_json::from_str(&saved).unwrap();
    for f in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        obj["metadata"].as_object_mut().unwrap().remove(f);
    }
    let path = std::env::temp_dir().join("tern-day2-rb.json");
    std::fs::write(&path, obj.to_string()).unwrap();
    kubectl(&["apply", "-f", path.to_str().unwrap()]);
    // Someone leads again: the other replica once the lease expired, or the restarted
    // container of the old leader (same identity; its previous process has exited, so it
    // resumes the lease it holds — as client-go does).
    let (holder, acquired, renewed) =
        wait_for("a leader again", Duration::from_secs(90), || async {
            let s = leases
                .get("tern-operator-leader")
                .await
                .map_err(|e| e.to_string())?
                .spec
                .unwrap_or_default();
            match (s.holder_identity, s.acquire_time, s.renew_time) {
                (Some(h), Some(a), Some(r)) if r.0 > last_renew => Ok((h, a.0, r.0)),
                (h, _, r) => Err(format!("holder {h:?} renewed {r:?}")),
            }
        })
        .await;
    if holder == leader {
        eprintln!(
            "   the restarted {holder} resumed the lease at {renewed} ({:.0?} after the cut)",
            cut.elapsed()
        );
    } else {
        let after = acquired.duration_since(last_renew);
        eprintln!(
            "   {holder} leads since {acquired}: {after:#} after the old leader's last renewal ({:.0?} after the cut)",
            cut.elapsed()
        );
        assert!(
            after >= k8s_openapi::jiff::SignedDuration::from_secs(15),
            "the lease was taken over before it expired (15 s): {after:#}"
        );
    }
    let _ = stop_tx.send(true);
    let (max_leaders, samples) = sampler.await.unwrap();
    eprintln!("   leader gauge sampled {samples} times: at most {max_leaders} leader(s) at once");
    assert!(max_leaders <= 1, "two replicas led at once");
    // The new leader acts: a change to the ChatCluster reaches the Deployment.
    patch_spec(k, json!({"edge": {"replicas": 3}})).await;
    let d: Api<Deployment> = Api::namespaced(k.client.clone(), NS);
    wait_for(
        "the new leader reconciles",
        Duration::from_secs(60),
        || async {
            let r = d
                .get(&format!("{NAME}-edge"))
                .await
                .map_err(|e| e.to_string())?
                .spec
                .unwrap()
                .replicas;
            if r == Some(3) {
                Ok(())
            } else {
                Err(format!("edge replicas {r:?}"))
            }
        },
    )
    .await;
    kubectl(&["scale", "deploy", "-n", OPNS, &opname, "--replicas=1"]);
}
