//! The real `tern-operator` binary, twice, with leader election: one leads (and reconciles),
//! SIGTERM makes it release the Lease and exit 0, the other takes over at once.

use crate::support::{TestEnv, external_spec};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::DeleteParams;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Operator {
    child: Child,
    metrics: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(ns: &str, identity: &str) -> Operator {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_tern-operator"))
        .args([
            "--watch-namespace",
            ns,
            "--lease-namespace",
            ns,
            "--lease-seconds",
            "3",
        ])
        .args([
            "--identity",
            identity,
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start tern-operator");
    Operator {
        child,
        metrics: format!("http://127.0.0.1:{port}/metrics"),
    }
}

async fn leading(http: &reqwest::Client, op: &Operator) -> Option<bool> {
    let text = http.get(&op.metrics).send().await.ok()?.text().await.ok()?;
    Some(text.lines().any(|l| l.trim() == "tern_operator_leader 1"))
}

fn sigterm(op: &Operator) {
    let ok = Command::new("kill")
        .args(["-TERM", &op.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operator_processes_one_leader_and_hand_over_on_sigterm() {
    let Some(mut env) = TestEnv::new("e2e-binary").await else {
        return;
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut ops = vec![start(&env.ns, "op-a"), start(&env.ns, "op-b")];
    let http = reqwest::Client::new();

    let leader = env
        .wait(
            "chat",
            "exactly one leader",
            Duration::from_secs(30),
            || async {
                let a = leading(&http, &ops[0]).await?;
                let b = leading(&http, &ops[1]).await?;
                (a != b).then_some(if a { 0 } else { 1 })
            },
        )
        .await;
    env.apply_cluster("chat", external_spec(&addr)).await;
    env.wait(
        "chat",
        "status from the leader",
        Duration::from_secs(30),
        || async {
            let c = env
                .api::<tern_operator::ChatCluster>()
                .get("chat")
                .await
                .ok()?;
            (c.status?.observed_generation == c.metadata.generation).then_some(())
        },
    )
    .await;
    // The follower stays a follower for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(leading(&http, &ops[1 - leader]).await, Some(false));

    // SIGTERM: the leader releases the Lease and exits 0; the other takes over well before
    // the lease would have expired on its own, and reconciles.
    sigterm(&ops[leader]);
    let mut old = ops.remove(leader);
    let status = tokio::task::spawn_blocking(move || old.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "operator exit status after SIGTERM: {status}"
    );
    let next = &ops[0];
    env.wait(
        "chat",
        "the other replica leads",
        Duration::from_secs(10),
        || async { leading(&http, next).await?.then_some(()) },
    )
    .await;
    // Roles start once setup succeeded (the test plays the Job controller).
    env.complete_setup("chat").await;
    let deps = env.api::<Deployment>();
    env.wait(
        "chat",
        "the edge Deployment",
        Duration::from_secs(30),
        || async { deps.get_opt("chat-edge").await.ok()? },
    )
    .await;
    deps.delete("chat-edge", &DeleteParams::background())
        .await
        .unwrap();
    env.wait(
        "chat",
        "new leader recreates the edge Deployment",
        Duration::from_secs(30),
        || async { deps.get_opt("chat-edge").await.ok()? },
    )
    .await;
    sigterm(next);
    env.stop_operator().await;
}
