//! Autoscaling with real chat-server processes and real WebSocket clients.
//!
//! The edge processes are started from the operator-generated edge Deployment: its command,
//! args and environment (ConfigMap, Secret and downward-API values resolved from the API
//! server, the generated JWT secret included). Two overrides, because there is no cluster
//! network here and the distributed data plane would need Kafka/ScyllaDB/Redis:
//! `CHAT_BACKEND=embedded` + `CHAT_ROLE=all`, and `CHAT_LISTEN=127.0.0.1:0`. The operator
//! scrapes their real `/metrics` through the `chat.tern.dev/scrape-targets` override.

use crate::support::{TestEnv, repo_root};
use futures::SinkExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tern_operator::ChatCluster;
use tern_operator::controller::DELETION_COST_ANNOTATION;
use tern_operator::scrape::SCRAPE_TARGETS_ANNOTATION;
use tokio_tungstenite::tungstenite::Message;

/// The chat-server binary: `TERN_CHAT_SERVER_BIN`, else `<target dir>/debug/chat-server`.
fn chat_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TERN_CHAT_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let p = target.join("debug").join("chat-server");
    p.exists().then_some(p)
}

/// A chat-server process, killed on drop.
struct EdgeProcess {
    child: Child,
    addr: String,
    /// Where its /metrics is served (the pods' separate metrics port).
    metrics: String,
    _dir: TempDir,
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Resolve the edge container's environment the way the kubelet would.
async fn edge_env(
    env: &TestEnv,
    deploy: &Deployment,
    pod_name: &str,
) -> (Vec<String>, BTreeMap<String, String>) {
    let pod = deploy
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let c = &pod.containers[0];
    let mut vars = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let cm_name = &from.config_map_ref.as_ref().unwrap().name;
        let cm = env.api::<ConfigMap>().get(cm_name).await.unwrap();
        vars.extend(cm.data.unwrap_or_default());
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            v.clone()
        } else {
            let src = e.value_from.as_ref().unwrap();
            if let Some(f) = &src.field_ref {
                assert_eq!(f.field_path, "metadata.name");
                pod_name.to_string()
            } else {
                let sel = src.secret_key_ref.as_ref().unwrap();
                let s = env.api::<Secret>().get(&sel.name).await.unwrap();
                String::from_utf8(s.data.unwrap()[&sel.key].0.clone()).unwrap()
            }
        };
        vars.insert(e.name.clone(), value);
    }
    let mut cmd = c.command.clone().unwrap();
    cmd.extend(c.args.clone().unwrap_or_default());
    (cmd, vars)
}

fn start_edge(bin: &PathBuf, cmd: &[String], vars: &BTreeMap<String, String>) -> EdgeProcess {
    assert_eq!(cmd[0], "chat-server", "the Deployment runs chat-server");
    let dir =
        TempDir(std::env::temp_dir().join(format!("tern-op-edge-{:08x}", rand::random::<u32>())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut child = Command::new(bin)
        .args(&cmd[1..])
        .envs(vars)
        .env("CHAT_BACKEND", "embedded")
        .env("CHAT_ROLE", "all")
        .env("CHAT_LISTEN", "127.0.0.1:0")
        // The pods serve /metrics on their own port (9090); two processes on one host each
        // take a free one.
        .env("CHAT_METRICS_LISTEN", "127.0.0.1:0")
        .env("CHAT_DATA_DIR", &dir.0)
        .env("CHAT_DEV_AUTH", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chat-server");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("tern: listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line from chat-server: {line:?}"))
        .to_string();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let metrics = line
        .trim()
        .strip_prefix("tern: metrics on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected second line from chat-server: {line:?}"))
        .to_string();
    // Keep reading stdout so chat-server never writes into a closed pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    EdgeProcess {
        child,
        addr,
        metrics,
        _dir: dir,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(http: &reqwest::Client, addr: &str, user: u64) -> Ws {
    let tok: serde_json::Value = http
        .post(format!("http://{addr}/v1/dev/token"))
        .json(&json!({"user_id": user}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tok["token"].as_str().unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .expect("websocket connect");
    ws
}

async fn desired(env: &TestEnv) -> Option<(i32, i64, Option<i32>)> {
    let c = env.api::<ChatCluster>().get("scale").await.ok()?;
    let st = c.status?;
    let d = env.api::<Deployment>().get("scale-edge").await.ok()?;
    Some((
        st.edge.desired_replicas,
        st.edge.connections,
        d.spec?.replicas,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_replicas_follow_real_websocket_connections() {
    let Some(mut env) = TestEnv::new("e2e-scale").await else {
        return;
    };
    let Some(bin) = chat_server_bin() else {
        if std::env::var("TERN_REQUIRE_KUBE").is_ok_and(|v| v == "1") {
            panic!(
                "chat-server binary not found: build it (cargo build -p chat-server) or set TERN_CHAT_SERVER_BIN"
            );
        }
        eprintln!(
            "SKIPPED: no chat-server binary (cargo build -p chat-server, or set TERN_CHAT_SERVER_BIN)"
        );
        return;
    };
    env.start_operator();
    let mut spec = json!({
        "image": "tern/chat-server:test",
        "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
        "edge": {"autoscaling": {
            "minReplicas": 1, "maxReplicas": 4, "targetConnectionsPerPod": 5,
            "scaleUpMaxStep": 4, "scaleDownStabilizationSeconds": 8,
            "scaleDownMaxStep": 1, "scaleDownPeriodSeconds": 1, "scrapeIntervalSeconds": 1}}
    });
    env.apply_cluster("scale", spec.clone()).await;
    // Roles start after the setup Job succeeded and the managed Redis is ready; nothing runs
    // them here, so the test reports both (as the Job and StatefulSet controllers would).
    env.complete_setup("scale").await;
    env.mark_statefulsets_ready().await;
    env.poke("scale").await;
    let deploy = env
        .wait(
            "scale",
            "edge Deployment",
            Duration::from_secs(30),
            || async { env.api::<Deployment>().get_opt("scale-edge").await.ok()? },
        )
        .await;
    assert_eq!(
        deploy.spec.as_ref().unwrap().replicas,
        Some(1),
        "starts at minReplicas"
    );

    // Two edge "pods": real processes from the Deployment, plus Pod objects for the
    // deletion-cost annotations.
    let mut edges = Vec::new();
    for i in 0..2 {
        let pod_name = format!("scale-edge-{i}");
        let (cmd, vars) = edge_env(&env, &deploy, &pod_name).await;
        assert_eq!(vars["CHAT_CLUSTER"], "scale");
        assert_eq!(vars["CHAT_NODE_ID"], pod_name);
        assert_eq!(
            vars["CHAT_JWT_SECRET"].len(),
            64,
            "generated JWT secret reaches the pod"
        );
        edges.push(start_edge(&bin, &cmd, &vars));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod_name, "labels": deploy.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels},
            "spec": {"containers": [{"name": "chat-server", "image": "tern/chat-server:test"}]}
        }))
        .unwrap();
        env.api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }
    let targets = edges
        .iter()
        .enumerate()
        .map(|(i, e)| format!("scale-edge-{i}={}", e.metrics))
        .collect::<Vec<_>>()
        .join(",");
    let patch = json!({"metadata": {"annotations": {SCRAPE_TARGETS_ANNOTATION: targets}}});
    env.api::<ChatCluster>()
        .patch("scale", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    // 12 clients (8 on the first process, 4 on the second): ceil(12 / 5) = 3 pods.
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for user in 1..=12u64 {
        let e = &edges[if user <= 8 { 0 } else { 1 }];
        clients.push(connect(&http, &e.addr, user).await);
    }
    env.wait(
        "scale",
        "scale up to 3 for 12 connections",
        Duration::from_secs(30),
        || async {
            let (d, conns, replicas) = desired(&env).await?;
            (d == 3 && conns == 12 && replicas == Some(3)).then_some(())
        },
    )
    .await;
    // The emptier pod is cheaper to delete.
    env.wait(
        "scale",
        "pod-deletion-cost annotations",
        Duration::from_secs(20),
        || async {
            let cost = |p: Pod| {
                p.metadata
                    .annotations?
                    .get(DELETION_COST_ANNOTATION)
                    .cloned()
            };
            let a = cost(env.api::<Pod>().get("scale-edge-0").await.ok()?)?;
            let b = cost(env.api::<Pod>().get("scale-edge-1").await.ok()?)?;
            (a == "8" && b == "4").then_some(())
        },
    )
    .await;

    // 20 clients: ceil(20 / 5) = 4 (= maxReplicas); more are capped.
    for user in 13..=26u64 {
        clients.push(connect(&http, &edges[1].addr, user).await);
    }
    env.wait(
        "scale",
        "scale up to max 4",
        Duration::from_secs(30),
        || async {
            let (d, conns, replicas) = desired(&env).await?;
            (d == 4 && conns == 26 && replicas == Some(4)).then_some(())
        },
    )
    .await;

    // All but 2 leave: the count drops at once, the replicas only after the window.
    while clients.len() > 2 {
        let mut ws = clients.pop().unwrap();
        let _ = ws.send(Message::Close(None)).await;
    }
    // Poll: the last time the status still counted many connections, and the first time the
    // replicas went down. The scale-down must come a full window (8 s) after the last high
    // sample; the slack (3 s) covers the scrape interval and status-write latency on a busy
    // machine.
    let mut last_high = Instant::now();
    let mut first_down = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no scale-down to 1 within 60 s\n{}",
            env.dump("scale").await
        );
        if let Some((d, conns, replicas)) = desired(&env).await {
            if conns > 15 {
                last_high = Instant::now();
            }
            if d < 4 && first_down.is_none() {
                first_down = Some(Instant::now());
            }
            if d == 1 && replicas == Some(1) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = first_down.unwrap().duration_since(last_high);
    assert!(
        waited >= Duration::from_secs(5),
        "scaled down {waited:?} after the last high sample, before the 8 s window"
    );
    let reasons = env.event_reasons("scale").await;
    assert!(reasons.contains(&"ScaledUp".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"ScaledDown".to_string()), "{reasons:?}");
    let c = env.api::<ChatCluster>().get("scale").await.unwrap();
    let st = c.status.unwrap().edge;
    assert!(st.last_scale_time.is_some());
    assert!(st.scale_reason.unwrap().contains("2 connections"));

    // Turning autoscaling off hands the replicas back to spec.edge.replicas.
    spec["edge"] = json!({"replicas": 2});
    env.apply_cluster("scale", spec).await;
    env.wait(
        "scale",
        "replicas from the spec",
        Duration::from_secs(20),
        || async {
            let (d, _, replicas) = desired(&env).await?;
            (d == 2 && replicas == Some(2)).then_some(())
        },
    )
    .await;
    drop(clients);
    env.stop_operator().await;
}
