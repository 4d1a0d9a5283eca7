//! The reconciler against a mocked API server ([`crate::fixtures`]): which requests one
//! reconcile makes, in which order and with which bodies, and what it reports in status and
//! events. Managed dependencies throughout, so nothing here opens a network connection except
//! the one scaling test, which scrapes a local `/metrics`.

use super::*;
use crate::autoscale::deletion_cost;
use crate::crd::{Dependency, Role};
use crate::fixtures::{APPLY, ApiServerVerifier, Call, path_of};
use crate::resources::testing;
use crate::resources::{CHECKSUM_ANNOTATION, role};
use crate::scrape::SCRAPE_TARGETS_ANNOTATION;
use crate::status;
use http::Method;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "ns";

fn opts() -> Options {
    Options {
        operator_namespace: "tern-system".into(),
        probe_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

async fn reconcile_once(cluster: &ChatCluster, ctx: &Arc<Context>) -> Result<Action> {
    reconcile(Arc::new(cluster.clone()), ctx.clone()).await
}

/// What the StatefulSet controller would report once the managed pods are up.
fn dependencies_ready(server: &ApiServerVerifier) {
    server.overlay(
        "/statefulsets/",
        json!({"status": {"replicas": 3, "readyReplicas": 3}}),
    );
}

/// What the Job controller would report once setup finished.
fn setup_completes(server: &ApiServerVerifier) {
    server.overlay(
        "/jobs/",
        json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}),
    );
}

fn position(calls: &[Call], what: impl Fn(&Call) -> bool) -> Option<usize> {
    calls.iter().position(what)
}

fn applies<'a>(calls: &'a [Call], kind: &str) -> Vec<&'a Call> {
    calls.iter().filter(|c| c.is_apply_of(kind)).collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// (status, reason) of a condition.
fn cond(status: &Value, type_: &str) -> (String, String) {
    let c = condition(status, type_);
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn events(calls: &[Call]) -> Vec<&Value> {
    calls
        .iter()
        .filter(|c| c.method == Method::POST && c.path.ends_with("/events"))
        .map(|c| &c.body)
        .collect()
}

#[tokio::test]
async fn a_new_cluster_gets_its_setup_job_and_no_role_deployment() {
    let c = testing::dev();
    let server = ApiServerVerifier::new(&c);
    let ctx = server.context(opts());
    let action = reconcile_once(&c, &ctx).await.expect("reconcile");
    // A running setup Job is looked at again within seconds.
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let calls = server.calls();

    // Every server-side apply is forced, under the operator's one field manager.
    for a in calls
        .iter()
        .filter(|c| c.content_type.as_deref() == Some(APPLY))
    {
        assert_eq!(
            a.query.get("fieldManager").map(String::as_str),
            Some("tern-operator"),
            "{}",
            a.path
        );
        assert_eq!(
            a.query.get("force").map(String::as_str),
            Some("true"),
            "{}",
            a.path
        );
    }
    // The JWT secret is generated once: looked up, then applied with a 32-byte hex value.
    let jwt = applies(&calls, "Secret");
    assert_eq!(jwt.len(), 1);
    assert_eq!(jwt[0].name(), "chat-jwt");
    let value = jwt[0].body["stringData"].as_object().expect("stringData");
    assert!(
        value
            .values()
            .all(|v| v.as_str().is_some_and(|s| s.len() == 64)),
        "{value:?}"
    );

    let configmap = position(&calls, |c| c.is_apply_of("ConfigMap")).expect("ConfigMap applied");
    let sts: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_apply_of("StatefulSet"))
        .map(|(i, _)| i)
        .collect();
    let names: Vec<&str> = sts.iter().map(|&i| calls[i].name()).collect();
    assert_eq!(names, ["chat-kafka", "chat-scylla", "chat-redis"]);
    let job = position(&calls, |c| c.is_apply_of("Job")).expect("setup Job applied");
    assert!(
        configmap < job && sts.iter().all(|&i| i < job),
        "the Job comes after the dependencies"
    );
    let job = &calls[job];
    assert!(job.name().starts_with("chat-setup-"), "{}", job.name());
    assert_eq!(
        job.body["metadata"]["labels"]["app.kubernetes.io/component"],
        "setup"
    );
    assert_eq!(
        job.body["metadata"]["annotations"]["chat.tern.dev/setup-attempt"],
        "1"
    );
    let owner = &job.body["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].as_str(),
            owner["uid"].as_str(),
            owner["controller"].as_bool()
        ),
        (Some("ChatCluster"), Some("uid-1"), Some(true))
    );

    // The roles wait: their Deployments are looked up, never written.
    assert!(applies(&calls, "Deployment").is_empty());
    assert!(
        !calls
            .iter()
            .any(|c| c.is_on("deployments") && c.method != Method::GET)
    );
    for r in ["chat-edge", "chat-delivery", "chat-presence"] {
        assert!(
            calls
                .iter()
                .any(|c| c.method == Method::GET && c.path == path_of::<Deployment>(NS, r))
        );
    }
    // The edge Services are there from the start.
    let services: Vec<&str> = applies(&calls, "Service")
        .iter()
        .map(|c| c.name())
        .collect();
    assert!(
        services.contains(&"chat-edge") && services.contains(&"chat-edge-headless"),
        "{services:?}"
    );

    let st = server.last_status();
    assert_eq!(st["observedGeneration"], 3);
    assert_eq!(
        st["edge"]["desiredReplicas"], 2,
        "spec.edge.replicas without autoscaling"
    );
    assert_eq!(
        cond(&st, status::SETUP_COMPLETE),
        ("False".into(), "SetupRunning".into())
    );
    assert_eq!(
        cond(&st, status::PROGRESSING),
        ("True".into(), "WaitingForSetup".into())
    );
    assert_eq!(
        cond(&st, status::READY),
        ("False".into(), "DependenciesNotReady".into())
    );
    assert_eq!(
        cond(&st, status::DEGRADED),
        ("False".into(), "AsExpected".into())
    );
    // The status write is last but for the events of the first conditions.
    let status_at = position(&calls, |c| c.path.ends_with("/status")).unwrap();
    assert!(calls[status_at].path.ends_with("/chatclusters/chat/status"));
    assert!(
        calls[..status_at]
            .iter()
            .all(|c| !c.path.ends_with("/events"))
    );
    let reasons: Vec<&str> = events(&calls)
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["DependenciesNotReady", "AsExpected", "DependencyNotReady"]
    );
}

#[tokio::test]
async fn roles_are_applied_in_the_reconcile_their_setup_job_completes() {
    let c = testing::dev();
    let server = ApiServerVerifier::new(&c);
    dependencies_ready(&server);
    setup_completes(&server);
    let ctx = server.context(opts());
    reconcile_once(&c, &ctx).await.expect("reconcile");
    let calls = server.calls();

    let job = position(&calls, |c| c.is_apply_of("Job")).expect("setup Job applied");
    let deployments: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_apply_of("Deployment"))
        .map(|(i, _)| i)
        .collect();
    let names: Vec<&str> = deployments.iter().map(|&i| calls[i].name()).collect();
    assert_eq!(names, ["chat-edge", "chat-delivery", "chat-presence"]);
    assert!(
        deployments.iter().all(|&i| i > job),
        "roles only after the setup Job"
    );

    let st = server.last_status();
    let edge = &calls[deployments[0]].body;
    assert_eq!(edge["spec"]["replicas"], 2);
    assert_eq!(
        edge["spec"]["template"]["spec"]["containers"][0]["image"],
        "tern/chat-server:1.0"
    );
    assert_eq!(
        edge["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION],
        st["configChecksum"],
        "pods carry the checksum the status reports"
    );
    // Two edge pods: a PDB; the single delivery and presence pods get none.
    let pdbs: Vec<&str> = applies(&calls, "PodDisruptionBudget")
        .iter()
        .map(|c| c.name())
        .collect();
    assert!(pdbs.contains(&"chat-edge"), "{pdbs:?}");
    assert_eq!(
        cond(&st, status::SETUP_COMPLETE),
        ("True".into(), "SetupSucceeded".into())
    );
    assert_eq!(
        cond(&st, status::DEPENDENCIES_READY),
        ("True".into(), "DependenciesReady".into())
    );
    assert_eq!(
        cond(&st, status::PROGRESSING),
        ("True".into(), "RollingOut".into())
    );
    assert_eq!(
        cond(&st, status::READY),
        ("False".into(), "PodsNotReady".into())
    );

    // The Deployment controller catches up: Ready, with a Normal event saying so.
    server.overlay(
        "/deployments/",
        json!({"status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1}}),
    );
    // One delivery and one presence pod are wanted: `replicas` counts every pod, so 2 there
    // would be an old one still running.
    server.overlay("-delivery", json!({"status": {"replicas": 1}}));
    server.overlay("-presence", json!({"status": {"replicas": 1}}));
    let mut c2 = c.clone();
    c2.status = serde_json::from_value(st).ok();
    let before = server.calls().len();
    reconcile_once(&c2, &ctx).await.expect("reconcile");
    let st = server.last_status();
    assert_eq!(
        cond(&st, status::READY),
        ("True".into(), "AllReady".into()),
        "{}",
        st["conditions"]
    );
    assert_eq!(
        cond(&st, status::PROGRESSING),
        ("False".into(), "Complete".into())
    );
    assert_eq!(st["edge"]["readyReplicas"], 2);
    let calls = server.calls();
    let new_events = events(&calls[before..]);
    assert_eq!(new_events.len(), 1, "only Ready changed: {new_events:?}");
    assert_eq!(
        (
            new_events[0]["type"].as_str(),
            new_events[0]["reason"].as_str()
        ),
        (Some("Normal"), Some("AllReady"))
    );
}

#[tokio::test]
async fn a_completed_setup_still_waits_for_the_managed_redis_pod() {
    let c = testing::dev();
    let server = ApiServerVerifier::new(&c);
    setup_completes(&server);
    let ctx = server.context(opts());
    reconcile_once(&c, &ctx).await.expect("reconcile");
    let calls = server.calls();
    assert_eq!(applies(&calls, "Job").len(), 1);
    assert!(
        applies(&calls, "Deployment").is_empty(),
        "no role before Redis is ready"
    );
    let st = server.last_status();
    assert_eq!(
        cond(&st, status::SETUP_COMPLETE),
        ("True".into(), "SetupSucceeded".into())
    );
    assert_eq!(
        cond(&st, status::PROGRESSING),
        ("True".into(), "WaitingForRedis".into())
    );
}

#[tokio::test]
async fn while_setup_holds_the_roles_the_edge_still_follows_its_replica_count() {
    let mut c = testing::dev();
    c.spec.edge.replicas = 4;
    let server = ApiServerVerifier::new(&c);
    let mut live = role::deployment(&c, Role::Edge, 2, "old-checksum");
    live.metadata.namespace = Some(NS.into());
    server.put(&live);
    let ctx = server.context(opts());
    reconcile_once(&c, &ctx).await.expect("reconcile");
    let calls = server.calls();

    assert!(
        applies(&calls, "Deployment").is_empty(),
        "templates are held"
    );
    let patches: Vec<&Call> = calls
        .iter()
        .filter(|c| c.is_on("deployments") && c.is_merge())
        .collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].path, path_of::<Deployment>(NS, "chat-edge"));
    assert_eq!(
        patches[0].body,
        json!({"spec": {"replicas": 4}}),
        "only the replica count"
    );
    let edge = server.get(&path_of::<Deployment>(NS, "chat-edge")).unwrap();
    assert_eq!(
        edge["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION],
        "old-checksum"
    );
    // Missing roles are not created meanwhile.
    assert!(
        server
            .get(&path_of::<Deployment>(NS, "chat-delivery"))
            .is_none()
    );
}

#[tokio::test]
async fn a_spec_change_patches_what_it_touches_and_replaces_the_setup_job() {
    let c = testing::dev();
    let server = ApiServerVerifier::new(&c);
    dependencies_ready(&server);
    setup_completes(&server);
    let ctx = server.context(opts());
    reconcile_once(&c, &ctx).await.expect("first reconcile");
    let first = server.calls();
    let old_job = applies(&first, "Job")[0].name().to_string();
    let old_edge = applies(&first, "Deployment")[0].body.clone();

    let mut c2 = c.clone();
    c2.spec.image = "tern/chat-server:1.1".into();
    c2.spec.edge.replicas = 5;
    c2.metadata.generation = Some(4);
    reconcile_once(&c2, &ctx).await.expect("second reconcile");
    let calls = server.calls()[first.len()..].to_vec();

    // A new setup Job for the new configuration; once it completed the old one is deleted.
    let jobs = applies(&calls, "Job");
    assert_eq!(jobs.len(), 1);
    let new_job = jobs[0].name();
    assert_ne!(new_job, old_job);
    assert_eq!(
        jobs[0].body["spec"]["template"]["spec"]["containers"][0]["image"],
        "tern/chat-server:1.1"
    );
    let deleted: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == Method::DELETE)
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0].path, path_of::<Job>(NS, &old_job));
    assert_eq!(deleted[0].body["propagationPolicy"], "Background");

    let edge = applies(&calls, "Deployment")
        .into_iter()
        .find(|c| c.name() == "chat-edge")
        .expect("edge applied")
        .body
        .clone();
    assert_eq!(edge["spec"]["replicas"], 5);
    assert_eq!(
        edge["spec"]["template"]["spec"]["containers"][0]["image"],
        "tern/chat-server:1.1"
    );
    let sum =
        |d: &Value| d["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION].clone();
    assert_ne!(sum(&edge), sum(&old_edge), "a new image rolls the pods");
    // The managed dependencies keep their own images.
    for s in applies(&calls, "StatefulSet") {
        let image = s.body["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap();
        assert!(!image.starts_with("tern/chat-server"), "{image}");
    }
    let st = server.last_status();
    assert_eq!(st["observedGeneration"], 4);
    assert_eq!(st["edge"]["desiredReplicas"], 5);
    assert_eq!(condition(&st, status::READY)["observedGeneration"], 4);
}

#[tokio::test]
async fn missing_secrets_block_everything_and_are_reported() {
    let c = testing::external();
    let server = ApiServerVerifier::new(&c);
    let ctx = server.context(opts());
    let action = reconcile_once(&c, &ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let calls = server.calls();

    // Only lookups, then the status: nothing is applied or deleted.
    for c in &calls {
        let ok = c.method == Method::GET && c.is_on("secrets")
            || c.method == Method::PATCH && c.path.ends_with("/status")
            || c.method == Method::POST && c.path.ends_with("/events");
        assert!(ok, "unexpected {} {}", c.method, c.path);
    }
    let st = server.last_status();
    let degraded = condition(&st, status::DEGRADED);
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("MissingSecret"))
    );
    let msg = degraded["message"].as_str().unwrap();
    for s in ["kafka-creds", "scylla-creds", "redis", "jwt", "s3"] {
        assert!(msg.contains(&format!("Secret {s} not found")), "{msg}");
    }
    assert_eq!(
        cond(&st, status::READY),
        ("False".into(), "MissingSecret".into())
    );
    assert_eq!(
        cond(&st, status::PROGRESSING),
        ("False".into(), "Blocked".into())
    );
    let warnings: Vec<&str> = events(&calls)
        .iter()
        .filter(|e| e["type"] == "Warning")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(warnings.contains(&"MissingSecret"), "{warnings:?}");
}

#[tokio::test]
async fn a_refused_object_is_reported_against_its_spec_field_and_the_rest_goes_on() {
    let c = testing::dev();
    let server = ApiServerVerifier::new(&c);
    let redis = path_of::<StatefulSet>(NS, "chat-redis");
    server.refuse(
        Method::PATCH,
        &redis,
        422,
        "spec.replicas: Invalid value: -1",
    );
    let ctx = server.context(opts());
    reconcile_once(&c, &ctx)
        .await
        .expect("a refusal is not a reconcile error");
    let calls = server.calls();

    // After the refusal the live object is looked up, and the reconcile carries on.
    let refused = position(&calls, |c| c.method == Method::PATCH && c.path == redis).unwrap();
    assert_eq!(calls[refused + 1].method, Method::GET);
    assert_eq!(calls[refused + 1].path, redis);
    assert_eq!(applies(&calls, "Job").len(), 1, "setup still starts");
    let st = server.last_status();
    let degraded = condition(&st, status::DEGRADED);
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("SpecRejected"))
    );
    let msg = degraded["message"].as_str().unwrap();
    assert!(
        msg.starts_with("spec.redis.managed: the API server refused StatefulSet chat-redis"),
        "{msg}"
    );
    assert!(msg.contains("Invalid value: -1"), "{msg}");
    let redis_status = st["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "redis")
        .unwrap();
    assert_eq!(redis_status["ready"], false);
    assert!(
        events(&calls)
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "SpecRejected")
    );
}

#[tokio::test]
async fn a_refused_storage_change_points_at_the_storage_field() {
    let c = testing::dev();
    let server = ApiServerVerifier::new(&c);
    // The live StatefulSet was made with another volume size.
    let mut old = c.clone();
    old.spec.redis.managed.as_mut().unwrap().storage.size = "1Gi".into();
    let mut live = crate::resources::dependencies::managed(&old, Dependency::Redis)
        .unwrap()
        .statefulset;
    live.metadata.namespace = Some(NS.into());
    server.put(&live);
    let redis = path_of::<StatefulSet>(NS, "chat-redis");
    server.refuse(
        Method::PATCH,
        &redis,
        422,
        "StatefulSet.apps \"chat-redis\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden",
    );
    let ctx = server.context(opts());
    reconcile_once(&c, &ctx).await.expect("reconcile");
    let st = server.last_status();
    let msg = condition(&st, status::DEGRADED)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.starts_with("spec.redis.managed.storage: "), "{msg}");
    assert!(msg.contains("--cascade=orphan"), "{msg}");
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_back_off_until_one_succeeds() {
    let c = testing::dev();
    let server = ApiServerVerifier::new(&c);
    let config = path_of::<ConfigMap>(NS, "chat-config");
    server.refuse(Method::PATCH, &config, 500, "etcd is down");
    let ctx = server.context(opts());
    let cluster = Arc::new(c.clone());

    let err = reconcile_once(&c, &ctx)
        .await
        .expect_err("a 500 fails the reconcile");
    assert!(
        matches!(&err, Error::Kube(kube::Error::Api(s)) if s.code == 500),
        "{err}"
    );
    assert_eq!(err.metric_label(), "api");
    let calls = server.calls();
    assert_eq!(
        calls.last().unwrap().path,
        config,
        "nothing after the failed write"
    );
    assert!(!calls.iter().any(|c| c.path.ends_with("/status")));

    assert_eq!(
        error_policy(cluster.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(
        error_policy(cluster.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(4))
    );
    let failures = ctx
        .metrics
        .errors
        .get_or_create(&ErrorLabels { error: "api" })
        .get();
    assert_eq!(failures, 2);

    server.clear_refusals();
    reconcile_once(&c, &ctx).await.expect("recovers");
    assert_eq!(
        error_policy(cluster, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(2)),
        "a success resets the back-off"
    );
}

#[tokio::test]
async fn a_cluster_without_namespace_is_an_error_and_no_request() {
    let mut c = testing::dev();
    c.metadata.namespace = None;
    let server = ApiServerVerifier::new(&testing::dev());
    let ctx = server.context(opts());
    let err = reconcile_once(&c, &ctx).await.expect_err("no namespace");
    assert!(matches!(err, Error::NoNamespace));
    assert_eq!(err.metric_label(), "no_namespace");
    assert!(server.calls().is_empty());
}

/// A one-request-per-connection `/metrics` endpoint on a free local port.
async fn metrics_endpoint(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let _ = sock.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    port
}

#[tokio::test]
async fn the_edge_scales_on_scraped_connections_and_pods_get_their_deletion_cost() {
    let port = metrics_endpoint("# TYPE chat_connections gauge\nchat_connections 250\n").await;
    let mut c = testing::dev();
    c.spec.edge.autoscaling = serde_json::from_value(json!({
        "minReplicas": 1, "maxReplicas": 10, "targetConnectionsPerPod": 100
    }))
    .unwrap();
    c.annotations_mut().insert(
        SCRAPE_TARGETS_ANNOTATION.into(),
        format!("chat-edge-a=127.0.0.1:{port}"),
    );
    let server = ApiServerVerifier::new(&c);
    dependencies_ready(&server);
    setup_completes(&server);
    let mut pod = Pod::default();
    pod.metadata.name = Some("chat-edge-a".into());
    pod.metadata.namespace = Some(NS.into());
    server.put(&pod);
    let ctx = server.context(Options {
        allow_scrape_override: true,
        ..opts()
    });
    let action = reconcile_once(&c, &ctx).await.expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "the scrape interval"
    );
    let calls = server.calls();

    // 250 connections / 100 per pod → 3 edge pods, up from the minimum of 1 in one step.
    let st = server.last_status();
    assert_eq!(st["edge"]["connections"], 250);
    assert_eq!(st["edge"]["desiredReplicas"], 3);
    assert!(st["edge"]["lastScaleTime"].is_string());
    let reason = st["edge"]["scaleReason"].as_str().unwrap();
    assert!(
        reason.contains("250 connections / 100 per pod → 3"),
        "{reason}"
    );
    let edge = applies(&calls, "Deployment")
        .into_iter()
        .find(|c| c.name() == "chat-edge")
        .unwrap();
    assert_eq!(edge.body["spec"]["replicas"], 3);
    let cost = calls
        .iter()
        .find(|c| c.is_merge() && c.path == path_of::<Pod>(NS, "chat-edge-a"))
        .expect("pod-deletion-cost patch");
    assert_eq!(
        cost.body["metadata"]["annotations"][DELETION_COST_ANNOTATION],
        deletion_cost(250).to_string()
    );
    let scaled: Vec<&Value> = events(&calls)
        .into_iter()
        .filter(|e| e["reason"] == "ScaledUp")
        .collect();
    assert_eq!(scaled.len(), 1);
    assert_eq!(scaled[0]["type"], "Normal");
    assert_eq!(
        ctx.metrics
            .scale_events
            .get_or_create(&crate::metrics::ScaleLabels { direction: "up" })
            .get(),
        1
    );

    // Within the scrape interval nothing is scraped again and the decision stands.
    let before = server.calls().len();
    reconcile_once(&c, &ctx).await.expect("reconcile");
    let calls = server.calls();
    assert!(
        !calls[before..]
            .iter()
            .any(|c| c.is_on("pods") && c.is_merge()),
        "same cost, no patch"
    );
    assert_eq!(server.last_status()["edge"]["desiredReplicas"], 3);
}

#[tokio::test]
async fn a_cluster_being_deleted_gets_no_writes() {
    let mut c = testing::dev();
    c.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    c.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    let server = ApiServerVerifier::new(&c);
    dependencies_ready(&server);
    setup_completes(&server);
    let ctx = server.context(opts());
    let action = reconcile_once(&c, &ctx).await.expect("reconcile");
    assert_eq!(action, Action::await_change(), "nothing to look at again");
    let writes: Vec<String> = server
        .calls()
        .iter()
        .filter(|c| c.method != Method::GET)
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(
        writes.is_empty(),
        "garbage collection owns the teardown: {writes:?}"
    );
}
