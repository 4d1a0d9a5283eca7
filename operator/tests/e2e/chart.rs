//! The Helm chart: `helm lint --strict`, and its rendered manifests (CRDs included) accepted
//! by the real API server in a server-side dry run.

use crate::support::{client, repo_root};
use std::process::Command;

fn tool(name: &str) -> Option<()> {
    Command::new(name)
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| ())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[tokio::test]
async fn chart_lints_and_applies_with_server_side_dry_run() {
    if client().await.is_none() {
        return;
    }
    if tool("helm").is_none() || tool("kubectl").is_none() {
        if std::env::var("TERN_REQUIRE_KUBE").is_ok_and(|v| v == "1") {
            panic!("helm and kubectl must be on PATH (eval \"$(e2e/env/env.sh)\")");
        }
        eprintln!("SKIPPED: helm/kubectl not on PATH");
        return;
    }
    let chart = repo_root().join("charts/tern-operator");
    run(Command::new("helm").args(["lint", "--strict"]).arg(&chart));
    run(Command::new("helm")
        .args([
            "lint",
            "--strict",
            "--set",
            "crds.install=false,replicaCount=2,watchNamespace=chat",
        ])
        .arg(&chart));
    // values.schema.json rejects nonsense.
    let bad = Command::new("helm")
        .args(["template", "t", "--set", "replicaCount=zero"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "the values schema must reject replicaCount=zero"
    );

    let ns = format!("e2e-chart-{:08x}", rand::random::<u32>());
    run(Command::new("kubectl").args(["create", "namespace", &ns]));
    let namespaced = format!("crds.install=false,watchNamespace={ns},replicaCount=2");
    for set in ["crds.install=true", namespaced.as_str()] {
        let rendered = run(Command::new("helm")
            .args([
                "template",
                "tern",
                "--kube-version",
                "1.34.0",
                "--namespace",
                &ns,
                "--include-crds",
                "--set",
                set,
            ])
            .arg(&chart));
        let path = std::env::temp_dir().join(format!("{ns}.yaml"));
        std::fs::write(&path, &rendered).unwrap();
        let out = run(Command::new("kubectl")
            .args([
                "apply",
                "--server-side",
                "--dry-run=server",
                // The CRD may already be owned by a real Helm release (the real-node suite
                // installs the chart, and the chart keeps its CRD on uninstall): this checks
                // that the API server accepts the rendered objects, not who manages them.
                "--force-conflicts",
                "--field-manager=tern-e2e",
                "-n",
                &ns,
                "-f",
            ])
            .arg(&path));
        for kind in ["serviceaccount", "deployment.apps", "service/", "role"] {
            assert!(
                out.contains(kind),
                "{set}: nothing of kind {kind} applied:\n{out}"
            );
        }
        if set.starts_with("crds.install=true") {
            assert!(out.contains("customresourcedefinition"), "{out}");
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// The operator, running with nothing but the permissions the chart grants its
/// ServiceAccount (impersonated), reconciles a cluster that uses every object kind, holds
/// the leader Lease, and is refused what it does not need.
#[tokio::test]
async fn operator_works_with_only_the_charts_rbac() {
    use crate::support::TestEnv;
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{Api, DeleteParams, ListParams};
    use std::time::Duration;
    use tern_operator::ChatCluster;

    let Some(mut env) = TestEnv::new("e2e-rbac").await else {
        return;
    };
    if tool("helm").is_none() || tool("kubectl").is_none() {
        assert!(
            !std::env::var("TERN_REQUIRE_KUBE").is_ok_and(|v| v == "1"),
            "helm and kubectl must be on PATH"
        );
        eprintln!("SKIPPED: helm/kubectl not on PATH");
        return;
    }
    let ns = env.ns.clone();
    let chart = repo_root().join("charts/tern-operator");
    let rendered = run(Command::new("helm")
        .args([
            "template",
            "tern",
            "--kube-version",
            "1.34.0",
            "--namespace",
            &ns,
            "--set",
        ])
        .arg(format!("crds.install=false,watchNamespace={ns}"))
        .arg(&chart));
    let path = std::env::temp_dir().join(format!("{ns}-rbac.yaml"));
    std::fs::write(&path, &rendered).unwrap();
    run(Command::new("kubectl")
        .args([
            "apply",
            "--server-side",
            "--field-manager=tern-e2e",
            "-n",
            &ns,
            "-f",
        ])
        .arg(&path));
    let _ = std::fs::remove_file(&path);

    let mut cfg = kube::Config::infer().await.unwrap();
    cfg.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:tern-tern-operator"));
    let sa_client = kube::Client::try_from(cfg).unwrap();

    // Leader election in the release namespace.
    let elector = tern_operator::leader::LeaderElector::new(
        Api::<Lease>::namespaced(sa_client.clone(), &ns),
        "tern-operator-leader",
        "rbac-test",
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(
        elector
            .try_acquire_or_renew()
            .await
            .expect("lease with the chart's Role")
    );

    let metrics = env.start_operator_with(sa_client.clone());
    env.apply_cluster(
        "rbac",
        serde_json::json!({
            "image": "tern/chat-server:test",
            "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
            "edge": {"autoscaling": {"minReplicas": 2, "maxReplicas": 3, "targetConnectionsPerPod": 10, "scrapeIntervalSeconds": 60}},
            "delivery": {"replicas": 2},
            "media": {"volume": {"size": "1Gi"}}
        }),
    )
    .await;
    env.wait(
        "rbac",
        "status written by the ServiceAccount",
        Duration::from_secs(45),
        || async {
            let c = env.api::<ChatCluster>().get("rbac").await.ok()?;
            let st = c.status?;
            (st.conditions.len() == 5 && st.observed_generation == c.metadata.generation)
                .then_some(())
        },
    )
    .await;
    // Roles start after setup and a ready Redis (the test plays the Job and StatefulSet
    // controllers; the operator's reaction goes through its watches).
    env.complete_setup("rbac").await;
    env.mark_statefulsets_ready().await;
    let ours = ListParams::default().labels("app.kubernetes.io/managed-by=tern-operator");
    env.wait(
        "rbac",
        "three role Deployments",
        Duration::from_secs(30),
        || async {
            let n = env.api::<Deployment>().list(&ours).await.ok()?.items.len();
            (n == 3).then_some(())
        },
    )
    .await;
    assert_eq!(
        env.api::<StatefulSet>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    assert_eq!(
        env.api::<PodDisruptionBudget>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert!(
        env.api::<PersistentVolumeClaim>()
            .get_opt("rbac-media")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        env.api::<Secret>()
            .get_opt("rbac-jwt")
            .await
            .unwrap()
            .is_some()
    );
    // Events were published (the Ready/Degraded/DependenciesReady transitions).
    assert!(!env.event_reasons("rbac").await.is_empty());
    // A scale-down of delivery to one pod makes the operator delete its PDB.
    let mut spec =
        serde_json::to_value(env.api::<ChatCluster>().get("rbac").await.unwrap().spec).unwrap();
    spec["delivery"]["replicas"] = serde_json::json!(1);
    env.apply_cluster("rbac", spec).await;
    env.wait(
        "rbac",
        "delivery PDB removed",
        Duration::from_secs(30),
        || async {
            env.api::<PodDisruptionBudget>()
                .get_opt("rbac-delivery")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    // The watches work with these permissions: a deleted child comes back well before the
    // next periodic reconcile (60 s here).
    let deps = env.api::<Deployment>();
    let uid = deps.get("rbac-presence").await.unwrap().metadata.uid;
    deps.delete("rbac-presence", &DeleteParams::background())
        .await
        .unwrap();
    env.wait(
        "rbac",
        "presence Deployment recreated through the watch",
        Duration::from_secs(15),
        || async {
            let d = deps.get_opt("rbac-presence").await.ok()??;
            (d.metadata.uid != uid).then_some(())
        },
    )
    .await;
    let text = metrics.encode();
    assert!(
        !text.contains("reconcile_errors_total{"),
        "no reconcile may fail for lack of permissions:\n{text}"
    );

    // Least privilege: no deleting Secrets, no touching other namespaces.
    let err = Api::<Secret>::namespaced(sa_client.clone(), &ns)
        .delete("rbac-jwt", &DeleteParams::default())
        .await
        .expect_err("the operator's ServiceAccount must not delete Secrets");
    assert!(err.to_string().contains("forbidden"), "{err}");
    let err = Api::<Secret>::namespaced(sa_client, "default")
        .list(&ListParams::default())
        .await
        .expect_err("a namespaced install must not read Secrets elsewhere");
    assert!(err.to_string().contains("forbidden"), "{err}");
    env.stop_operator().await;
}
