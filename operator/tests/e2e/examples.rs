//! Every file in `examples/` applied to a namespace: the operator creates the expected
//! objects, each controlled by the ChatCluster.

use crate::support::{TEST_MANAGER, TestEnv, repo_root};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use std::time::Duration;
use tern_operator::ChatCluster;

/// Apply every document of an example file; returns the ChatCluster's name.
async fn apply_file(env: &TestEnv, path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let pp = PatchParams::apply(TEST_MANAGER).force();
    let mut cluster = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        match v["kind"].as_str() {
            Some("Secret") => {
                env.api::<Secret>()
                    .patch(&name, &pp, &Patch::Apply(&v))
                    .await
                    .unwrap();
            }
            Some("ChatCluster") => {
                env.api::<ChatCluster>()
                    .patch(&name, &pp, &Patch::Apply(&v))
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                cluster = Some(name);
            }
            k => panic!("{}: unexpected kind {k:?}", path.display()),
        }
    }
    cluster.expect("each example has a ChatCluster")
}

fn assert_controlled<K: Resource>(obj: &K, owner_uid: &str) {
    let refs = obj.owner_references();
    assert!(
        refs.iter()
            .any(|o| o.uid == owner_uid && o.controller == Some(true) && o.kind == "ChatCluster"),
        "{} has no controller reference to the ChatCluster: {refs:?}",
        obj.meta().name.clone().unwrap_or_default()
    );
}

async fn check_example(file: &str, managed: usize, pdbs: &[&str], generated_jwt: bool) {
    let Some(mut env) = TestEnv::new("e2e-example").await else {
        return;
    };
    let path = repo_root().join("examples").join(file);
    // The production example expects its Secrets to exist already.
    if file == "production.yaml" {
        env.create_secret(
            "tern-prod-auth",
            &[("hs256", "0123456789abcdef0123456789abcdef")],
        )
        .await;
        env.create_secret(
            "tern-prod-s3",
            &[("accessKeyId", "AKIA"), ("secretAccessKey", "s")],
        )
        .await;
        // The operator checks the keys; the edge pods (not run here) read the PEM.
        env.create_secret("tern-prod-tls", &[("tls.crt", "cert"), ("tls.key", "key")])
            .await;
    }
    env.start_operator();
    let name = apply_file(&env, &path).await;
    let uid = env
        .api::<ChatCluster>()
        .get(&name)
        .await
        .unwrap()
        .uid()
        .unwrap();
    let c = env.api::<ChatCluster>().get(&name).await.unwrap();

    // Status is written last in a reconcile: once it is there, so is everything else.
    let st = env
        .wait(
            &name,
            "status with conditions",
            Duration::from_secs(30),
            || async {
                let c = env.api::<ChatCluster>().get(&name).await.ok()?;
                let st = c.status?;
                (st.conditions.len() == 5 && st.observed_generation == c.metadata.generation)
                    .then_some(st)
            },
        )
        .await;
    // TLS at the edge (production.yaml) reports wss://, plain HTTP ws://.
    let scheme = if c.spec.edge.tls.is_some() {
        "wss"
    } else {
        "ws"
    };
    let endpoint = st.endpoint.unwrap();
    assert!(
        endpoint.starts_with(&format!("{scheme}://{name}-edge.{}.svc", env.ns)),
        "{file}: {endpoint}"
    );
    assert!(
        st.edge
            .selector
            .contains("app.kubernetes.io/component=edge")
    );
    // No role starts before the setup Job succeeded (and, with a managed Redis, before its
    // pod is ready): nothing here runs Jobs or pods, so the test plays the Job controller and
    // the StatefulSet controller.
    env.wait_condition(&name, "Progressing", "True", "WaitingForSetup")
        .await;
    assert!(
        env.api::<Deployment>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "{file}: role Deployments before setup"
    );
    if managed > 0 {
        let msg = env
            .wait_condition(&name, "DependenciesReady", "False", "DependencyNotReady")
            .await;
        assert!(msg.contains("0/"), "{msg}");
    }
    env.complete_setup(&name).await;
    if c.spec.redis.managed.is_some() {
        env.wait_condition(&name, "Progressing", "True", "WaitingForRedis")
            .await;
    }
    if managed > 0 {
        env.mark_statefulsets_ready().await;
        env.poke(&name).await;
    }
    let deps = env
        .wait(
            &name,
            "three role Deployments",
            Duration::from_secs(45),
            || async {
                let l = env
                    .api::<Deployment>()
                    .list(&ListParams::default())
                    .await
                    .ok()?;
                (l.items.len() == 3).then_some(l.items)
            },
        )
        .await;
    for d in &deps {
        assert_controlled(d, &uid);
    }
    let mut names: Vec<_> = deps.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("{name}-delivery"),
            format!("{name}-edge"),
            format!("{name}-presence")
        ]
    );
    let edge = deps
        .iter()
        .find(|d| d.name_any() == format!("{name}-edge"))
        .unwrap();
    let want_edge = c
        .spec
        .edge
        .autoscaling
        .as_ref()
        .map_or(c.spec.edge.replicas, |a| a.min_replicas);
    assert_eq!(
        edge.spec.as_ref().unwrap().replicas,
        Some(want_edge),
        "{file}: edge replicas"
    );

    let cm = env
        .api::<ConfigMap>()
        .get(&format!("{name}-config"))
        .await
        .unwrap();
    assert_controlled(&cm, &uid);
    assert_eq!(cm.data.as_ref().unwrap()["CHAT_CLUSTER"], name);

    let svcs = env
        .api::<Service>()
        .list(&ListParams::default())
        .await
        .unwrap();
    for s in &svcs {
        assert_controlled(s, &uid);
    }
    let svc_names: Vec<_> = svcs.iter().map(|s| s.name_any()).collect();
    assert!(
        svc_names.contains(&format!("{name}-edge"))
            && svc_names.contains(&format!("{name}-edge-headless"))
    );
    // Two Services per managed dependency.
    assert_eq!(
        svcs.items.len(),
        2 + 2 * managed,
        "{file}: services {svc_names:?}"
    );
    // spec.networkPolicy (production.yaml): the pods policy and the edge client port.
    let policies = env
        .api::<NetworkPolicy>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut policy_names: Vec<_> = policies.iter().map(|p| p.name_any()).collect();
    policy_names.sort();
    let want_policies: Vec<String> = if c.spec.network_policy.enabled {
        vec![format!("{name}-edge-clients"), format!("{name}-pods")]
    } else {
        vec![]
    };
    assert_eq!(policy_names, want_policies, "{file}: NetworkPolicies");
    for p in &policies {
        assert_controlled(p, &uid);
    }

    let sts = env
        .api::<StatefulSet>()
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(sts.items.len(), managed, "{file}: managed StatefulSets");
    for s in &sts {
        assert_controlled(s, &uid);
    }

    let pdb_list = env
        .api::<PodDisruptionBudget>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut pdb_names: Vec<_> = pdb_list.iter().map(|p| p.name_any()).collect();
    pdb_names.sort();
    let mut want: Vec<_> = pdbs.iter().map(|r| format!("{name}-{r}")).collect();
    want.sort();
    assert_eq!(
        pdb_names, want,
        "{file}: PDBs only for roles and managed dependencies with more than one pod"
    );
    for p in &pdb_list {
        assert_controlled(p, &uid);
    }

    let jobs = env.api::<Job>().list(&ListParams::default()).await.unwrap();
    assert_eq!(jobs.items.len(), 1, "{file}: one setup Job");
    assert_controlled(&jobs.items[0], &uid);
    assert_eq!(
        jobs.items[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .as_deref(),
        Some(&["setup".to_string()][..])
    );

    let generated = env
        .api::<Secret>()
        .get_opt(&format!("{name}-jwt"))
        .await
        .unwrap();
    assert_eq!(
        generated.is_some(),
        generated_jwt,
        "{file}: generated JWT Secret"
    );
    if let Some(s) = generated {
        assert_controlled(&s, &uid);
        assert_eq!(s.data.unwrap()["secret"].0.len(), 64);
    }

    if managed > 0 {
        env.wait_condition(&name, "DependenciesReady", "True", "DependenciesReady")
            .await;
    } else {
        // The example's hosts do not resolve here: reported, not fatal.
        env.wait_condition(&name, "DependenciesReady", "False", "DependencyUnreachable")
            .await;
    }
    env.stop_operator().await;
}

#[tokio::test]
async fn example_dev_creates_everything_managed() {
    check_example("dev.yaml", 3, &[], true).await;
}

#[tokio::test]
async fn example_external_creates_no_statefulsets() {
    check_example("external.yaml", 0, &["edge", "delivery"], false).await;
}

#[tokio::test]
async fn example_production_is_highly_available() {
    check_example(
        "production.yaml",
        3,
        &["edge", "delivery", "presence", "kafka", "scylla"],
        false,
    )
    .await;
}
