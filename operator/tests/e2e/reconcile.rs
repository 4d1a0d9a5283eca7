//! The reconcile loop on a real API server: conditions, self-healing, rolling on config
//! changes, missing Secrets.

use crate::support::{TEST_MANAGER, TestEnv, external_spec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;
use tern_operator::ChatCluster;
use tern_operator::resources::CHECKSUM_ANNOTATION;
use tern_operator::resources::setup_job::ATTEMPT_ANNOTATION;
use tokio::net::TcpListener;

/// A local TCP listener standing in for a reachable dependency endpoint; it accepts and
/// drops connections until the returned handle is aborted.
async fn endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    (addr, h)
}

async fn template_checksum(env: &TestEnv, name: &str) -> Option<String> {
    let d = env.api::<Deployment>().get(name).await.ok()?;
    d.spec?
        .template
        .metadata?
        .annotations?
        .get(CHECKSUM_ANNOTATION)
        .cloned()
}

#[tokio::test]
async fn status_follows_workloads_and_dependencies() {
    let Some(mut env) = TestEnv::new("e2e-status").await else {
        return;
    };
    env.start_operator();
    let (addr, listener) = endpoint().await;
    env.apply_cluster("chat", external_spec(&addr)).await;

    let msg = env
        .wait_condition("chat", "Ready", "False", "SetupNotComplete")
        .await;
    assert!(msg.contains("setup"), "{msg}");
    env.wait_condition("chat", "DependenciesReady", "True", "DependenciesReady")
        .await;
    // The roles wait for the setup Job: no Deployment exists yet.
    env.wait_condition("chat", "SetupComplete", "False", "SetupRunning")
        .await;
    env.wait_condition("chat", "Progressing", "True", "WaitingForSetup")
        .await;
    assert!(
        env.api::<Deployment>()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no role may start before setup succeeded"
    );

    env.mark_jobs_complete().await;
    env.poke("chat").await;
    env.wait_condition("chat", "SetupComplete", "True", "SetupSucceeded")
        .await;
    env.wait_condition("chat", "Ready", "False", "PodsNotReady")
        .await;
    env.wait_condition("chat", "Progressing", "True", "RollingOut")
        .await;

    env.mark_deployments_ready().await;
    env.wait_condition("chat", "Ready", "True", "AllReady")
        .await;
    env.wait_condition("chat", "Progressing", "False", "Complete")
        .await;
    env.wait_condition("chat", "Degraded", "False", "AsExpected")
        .await;
    let c = env.api::<ChatCluster>().get("chat").await.unwrap();
    let st = c.status.unwrap();
    assert_eq!(st.observed_generation, c.metadata.generation);
    assert_eq!(st.edge.ready_replicas, 2);
    assert_eq!(st.edge.desired_replicas, 2);
    assert_eq!(
        st.endpoint.as_deref(),
        Some(format!("ws://chat-edge.{}.svc/ws", env.ns).as_str())
    );
    assert!(
        st.dependencies
            .iter()
            .all(|d| d.ready && d.mode == "external")
    );
    assert!(
        env.event_reasons("chat")
            .await
            .contains(&"AllReady".to_string())
    );

    // The dependency goes away: conditions say so, with the address.
    listener.abort();
    let _ = listener.await;
    env.poke("chat").await;
    let msg = env
        .wait_condition(
            "chat",
            "DependenciesReady",
            "False",
            "DependencyUnreachable",
        )
        .await;
    assert!(msg.contains(&addr), "{msg}");
    env.wait_condition("chat", "Ready", "False", "DependenciesNotReady")
        .await;
    assert!(
        env.event_reasons("chat")
            .await
            .contains(&"DependencyUnreachable".to_string())
    );
    env.stop_operator().await;
}

#[tokio::test]
async fn deleted_child_is_recreated_and_drift_is_corrected() {
    let Some(mut env) = TestEnv::new("e2e-heal").await else {
        return;
    };
    env.start_operator();
    let (addr, _l) = endpoint().await;
    env.apply_cluster("chat", external_spec(&addr)).await;
    env.complete_setup("chat").await;
    let deps = env.api::<Deployment>();
    let first = env
        .wait(
            "chat",
            "edge Deployment",
            Duration::from_secs(30),
            || async { deps.get_opt("chat-edge").await.ok()? },
        )
        .await;
    deps.delete("chat-edge", &DeleteParams::background())
        .await
        .unwrap();
    env.wait(
        "chat",
        "edge Deployment recreated",
        Duration::from_secs(30),
        || async {
            let d = deps.get_opt("chat-edge").await.ok()??;
            (d.uid() != first.uid()).then_some(())
        },
    )
    .await;

    // Someone else replaces the ports (an Update, not an apply): the operator's port comes
    // back; server-side apply restores the fields it owns.
    let svcs = env.api::<Service>();
    let hijack = json!({"spec": {"ports": [{"name": "other", "port": 9999, "targetPort": 9999, "protocol": "TCP"}]}});
    svcs.patch("chat-edge", &PatchParams::default(), &Patch::Merge(&hijack))
        .await
        .unwrap();
    env.wait(
        "chat",
        "edge Service port restored",
        Duration::from_secs(30),
        || async {
            let s = svcs.get("chat-edge").await.ok()?;
            let ports = s.spec?.ports?;
            ports
                .iter()
                .any(|p| p.port == 80 && p.name.as_deref() == Some("http"))
                .then_some(())
        },
    )
    .await;
    env.stop_operator().await;
}

#[tokio::test]
async fn config_and_secret_changes_roll_the_pods() {
    let Some(mut env) = TestEnv::new("e2e-roll").await else {
        return;
    };
    env.start_operator();
    let (addr, _l) = endpoint().await;
    env.create_secret("jwt", &[("k", "first-secret-value")])
        .await;
    let mut spec = external_spec(&addr);
    spec["auth"] = json!({"jwtSecretRef": {"name": "jwt", "key": "k"}});
    env.apply_cluster("chat", spec.clone()).await;
    env.complete_setup("chat").await;
    let first = env
        .wait("chat", "edge checksum", Duration::from_secs(30), || {
            template_checksum(&env, "chat-edge")
        })
        .await;

    // A setup-relevant config change (more partitions) rolls every role, but only once the
    // setup Job of the new configuration succeeded. Until then the Deployments keep their
    // template, and the edge still follows a replica change. (The log level alone would roll
    // the roles without a new setup Job: it is not part of the setup hash.)
    spec["kafka"]["partitions"] = json!(64);
    spec["edge"] = json!({"replicas": 3});
    env.apply_cluster("chat", spec.clone()).await;
    env.wait(
        "chat",
        "edge scaled while its template is held",
        Duration::from_secs(30),
        || async {
            let d = env.api::<Deployment>().get("chat-edge").await.ok()?;
            (d.spec?.replicas == Some(3)).then_some(())
        },
    )
    .await;
    env.wait_condition("chat", "Progressing", "True", "WaitingForSetup")
        .await;
    assert_eq!(
        template_checksum(&env, "chat-edge").await.as_deref(),
        Some(first.as_str()),
        "the template must not change before the new setup succeeded"
    );
    assert_eq!(
        template_checksum(&env, "chat-delivery").await.as_deref(),
        Some(first.as_str())
    );
    env.complete_setup("chat").await;
    let second = env
        .wait(
            "chat",
            "checksum after the partitions change",
            Duration::from_secs(30),
            || async {
                let s = template_checksum(&env, "chat-edge").await?;
                (s != first).then_some(s)
            },
        )
        .await;
    // Every role gets the same checksum, and the status reports it.
    env.wait(
        "chat",
        "delivery and presence rolled too",
        Duration::from_secs(30),
        || async {
            let d = template_checksum(&env, "chat-delivery").await?;
            let p = template_checksum(&env, "chat-presence").await?;
            (d == second && p == second).then_some(())
        },
    )
    .await;
    env.wait(
        "chat",
        "status.configChecksum",
        Duration::from_secs(30),
        || async {
            let c = env.api::<ChatCluster>().get("chat").await.ok()?;
            (c.status?.config_checksum? == second).then_some(())
        },
    )
    .await;

    // Rotating the referenced Secret rolls too (the Secret watch triggers the reconcile).
    env.create_secret("jwt", &[("k", "rotated-secret-value")])
        .await;
    env.complete_setup("chat").await;
    env.wait(
        "chat",
        "checksum after Secret rotation",
        Duration::from_secs(30),
        || async {
            let s = template_checksum(&env, "chat-presence").await?;
            (s != second && s != first).then_some(())
        },
    )
    .await;
    env.stop_operator().await;
}

#[tokio::test]
async fn missing_secret_degrades_without_blocking_other_clusters() {
    let Some(mut env) = TestEnv::new("e2e-secret").await else {
        return;
    };
    env.start_operator();
    let (addr, _l) = endpoint().await;
    let mut bad = external_spec(&addr);
    bad["auth"] = json!({"jwtSecretRef": {"name": "not-yet", "key": "hs256"}});
    env.apply_cluster("broken", bad).await;
    env.apply_cluster("healthy", external_spec(&addr)).await;

    let msg = env
        .wait_condition("broken", "Degraded", "True", "MissingSecret")
        .await;
    assert!(msg.contains("not-yet"), "{msg}");
    env.wait_condition("broken", "DependenciesReady", "False", "MissingSecret")
        .await;
    env.wait_condition("broken", "Ready", "False", "MissingSecret")
        .await;
    env.complete_setup("healthy").await;
    env.wait(
        "broken",
        "a MissingSecret warning event",
        Duration::from_secs(20),
        || async {
            env.event_reasons("broken")
                .await
                .contains(&"MissingSecret".to_string())
                .then_some(())
        },
    )
    .await;
    // Nothing of the broken cluster runs; the other cluster is reconciled normally.
    assert!(
        env.api::<Deployment>()
            .get_opt("broken-edge")
            .await
            .unwrap()
            .is_none()
    );
    env.wait(
        "healthy",
        "the healthy cluster's Deployments",
        Duration::from_secs(30),
        || async { env.api::<Deployment>().get_opt("healthy-edge").await.ok()? },
    )
    .await;

    // A Secret without the key is still reported, naming the key.
    env.create_secret("not-yet", &[("other", "x")]).await;
    env.wait(
        "broken",
        "missing key reported",
        Duration::from_secs(30),
        || async {
            let (_, _, m) = env.condition("broken", "Degraded").await?;
            m.contains("has no key hs256").then_some(())
        },
    )
    .await;
    // With the right key the cluster recovers on its own (Secret watch).
    env.create_secret("not-yet", &[("hs256", "a-long-enough-secret")])
        .await;
    env.wait_condition("broken", "Degraded", "False", "AsExpected")
        .await;
    env.complete_setup("broken").await;
    env.wait(
        "broken",
        "Deployments after the Secret appeared",
        Duration::from_secs(30),
        || async { env.api::<Deployment>().get_opt("broken-edge").await.ok()? },
    )
    .await;
    let _ = TEST_MANAGER;
    env.stop_operator().await;
}

#[tokio::test]
async fn failed_setup_holds_the_roles_and_is_reported() {
    let Some(mut env) = TestEnv::new("e2e-setupfail").await else {
        return;
    };
    env.start_operator();
    let (addr, _l) = endpoint().await;
    let mut spec = external_spec(&addr);
    env.apply_cluster("chat", spec.clone()).await;
    env.complete_setup("chat").await;
    let first = env
        .wait("chat", "edge checksum", Duration::from_secs(30), || {
            template_checksum(&env, "chat-edge")
        })
        .await;

    // The setup of a new configuration fails: reported with the Job's message and the next
    // attempt; the running roles are left alone.
    spec["kafka"]["partitions"] = json!(64);
    env.apply_cluster("chat", spec).await;
    let job = env.finish_setup("chat", false).await;
    let msg = env
        .wait_condition("chat", "SetupComplete", "False", "SetupFailed")
        .await;
    assert!(
        msg.contains(&job) && msg.contains("backoff limit") && msg.contains("attempt 2"),
        "{msg}"
    );
    env.wait_condition("chat", "Degraded", "True", "SetupFailed")
        .await;
    env.wait_condition("chat", "Ready", "False", "SetupFailed")
        .await;
    env.wait_condition("chat", "Progressing", "False", "SetupFailed")
        .await;
    env.poke("chat").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for role in ["edge", "delivery", "presence"] {
        assert_eq!(
            template_checksum(&env, &format!("chat-{role}"))
                .await
                .as_deref(),
            Some(first.as_str()),
            "{role} keeps its template while setup is failed"
        );
    }

    // Once the retry delay (1 min after the first failure) has passed, the operator replaces
    // the failed Job with attempt 2 under the same name. Dating the failure 2 min back stands
    // in for the wait.
    let first_uid = env.api::<Job>().get(&job).await.unwrap().metadata.uid;
    env.finish_job_at(&job, false, 120).await;
    let retried = env
        .wait(
            "chat",
            "attempt 2 of the setup Job",
            Duration::from_secs(30),
            || async {
                let j = env.api::<Job>().get_opt(&job).await.ok()??;
                let attempt = j
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(ATTEMPT_ANNOTATION)?
                    .clone();
                (j.metadata.uid != first_uid && attempt == "2").then_some(j)
            },
        )
        .await;
    assert!(retried.status.is_none_or(|s| s.conditions.is_none()));
    env.wait_condition("chat", "SetupComplete", "False", "SetupRunning")
        .await;
    env.wait_condition("chat", "Progressing", "True", "WaitingForSetup")
        .await;
    assert!(
        env.event_reasons("chat")
            .await
            .contains(&"SetupRetry".to_string())
    );
    // The second attempt succeeds: the roles roll to the new configuration.
    env.complete_setup("chat").await;
    env.wait(
        "chat",
        "roles on the new configuration",
        Duration::from_secs(30),
        || async {
            let s = template_checksum(&env, "chat-presence").await?;
            (s != first).then_some(())
        },
    )
    .await;
    env.stop_operator().await;
}
