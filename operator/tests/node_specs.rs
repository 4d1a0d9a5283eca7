//! Bad specs on a real node: each one gets a clear answer, and none jams the reconcile.
//! Needs the node and the operator release of `e2e/kube/run.sh --keep` (or `e2e/kube/up.sh`)
//! and `TERN_KUBE_NODE=1`; skipped otherwise.
//!
//! 1. Admission: `kubectl apply` of each spec the CRD's CEL rules refuse prints the message a
//!    user sees (name too long or with a dot, `rediss://`, SCRAM, a bad quantity, replication
//!    above the managed replicas, an unknown consistency, a non-URL S3 endpoint) — and on
//!    update: keyspace and topic are fixed, partitions only grow.
//! 2. The environment chat-server reads (`CHAT_MEDIA_S3_REGION`, `CHAT_MEDIA_S3_ALLOW_HTTP`,
//!    `CHAT_KAFKA_SASL_MECHANISM`) and the setup Job's resources.
//! 3. What only the API server can refuse: a ChatCluster (external dependencies at
//!    unreachable addresses, a managed Redis whose volume never binds, an image that is never
//!    pulled: no container runs) gets a bigger Redis volume. The StatefulSet update is
//!    refused; the ChatCluster reports `Degraded=True/SpecRejected` naming the field and what
//!    to do, with a Warning event, while the rest of the same update (edge Service port, log
//!    level in the ConfigMap, status) is reconciled, and the log level starts no new setup
//!    Job. Setting the size back clears it.
//! 4. A labelled Kafka Secret changed to `mechanism: SCRAM-SHA-512`: reconciled at once,
//!    `Degraded=True/InvalidSecret` naming the Secret and what to do.
//!
//! Namespace `e2e-specs`, created and deleted here. About 30 s on a warm node.

mod nodekit;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use nodekit::*;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NS: &str = "e2e-specs";
const NAME: &str = "specs";

/// `kubectl apply -f -` of `manifest` in the test namespace: Ok(stdout) or Err(stderr).
fn apply(manifest: &serde_json::Value) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .args(["apply", "-n", NS, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl (PATH from e2e/env/env.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

fn cluster(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "chat.tern.dev/v1alpha1", "kind": "ChatCluster",
           "metadata": {"name": name}, "spec": spec})
}

/// A spec that deploys almost nothing that runs: external Kafka and CQL at a refused
/// address, a managed Redis whose claim names a StorageClass that does not exist (the pod
/// stays Pending), and an image that is never pulled (the setup pod never starts).
fn base() -> serde_json::Value {
    json!({
        "image": "tern/not-pulled:specs",
        "imagePullPolicy": "Never",
        "edge": {"replicas": 1},
        "kafka": {"external": {"brokers": ["127.0.0.1:1"], "credentialsSecretRef": {"name": "specs-kafka"}},
                  "topic": "specs.messages", "partitions": 8},
        "scylla": {"external": {"nodes": ["127.0.0.1:1"]}, "keyspace": "specs_ks"},
        "redis": {"managed": {"storage": {"size": "1Gi", "storageClassName": "e2e-specs-none"}}},
        "media": {"s3": {"bucket": "media", "endpoint": "http://minio.invalid:9000", "region": "eu-west-1",
                         "credentialsSecretRef": {"name": "specs-s3"}}}
    })
}

/// A Secret the operator watches (label `chat.tern.dev/watch=true`).
fn secret(name: &str, data: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "labels": {"chat.tern.dev/watch": "true"}},
           "stringData": data})
}

/// `kubectl apply` of `manifest` must fail, printing `want`.
fn refused(what: &str, manifest: serde_json::Value, want: &str) {
    let err = apply(&manifest).expect_err(&format!("{what}: must be refused"));
    eprintln!("   {what}: {err}");
    assert!(
        err.contains(want),
        "{what}: kubectl should print {want:?}, got: {err}"
    );
}

async fn delete_namespace(nss: &Api<Namespace>) {
    let _ = nss.delete(NS, &DeleteParams::background()).await;
    wait_for(
        "namespace e2e-specs gone",
        Duration::from_secs(120),
        || async {
            match nss.get_opt(NS).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still terminating".into()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn bad_specs_get_a_clear_answer() {
    if std::env::var("TERN_KUBE_NODE").map_or(true, |v| v != "1") {
        eprintln!("SKIPPED: set TERN_KUBE_NODE=1 with a running node (e2e/kube/run.sh --keep)");
        return;
    }
    let t0 = Instant::now();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let nss: Api<Namespace> = Api::all(client.clone());
    delete_namespace(&nss).await;
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
    )
    .await
    .expect("create namespace");
    let k = Cluster {
        client: client.clone(),
        ns: NS.into(),
        name: NAME.into(),
        pods: Api::namespaced(client.clone(), NS),
    };

    // ---- 1. admission --------------------------------------------------------------------
    step(t0, "admission: each bad spec is refused with its message");
    let with = |patch: serde_json::Value| {
        let mut s = base();
        json_patch(&mut s, &patch);
        s
    };
    refused(
        "a 46-character name",
        cluster(&format!("a{}", "b".repeat(45)), base()),
        "metadata.name must be at most 45 characters",
    );
    refused(
        "a name with a dot",
        cluster("specs.v2", base()),
        "metadata.name must start with a lowercase letter and contain only lowercase letters, digits and '-' (no '.')",
    );
    refused(
        "a name starting with a digit",
        cluster("9specs", base()),
        "must start with a lowercase letter",
    );
    refused(
        "rediss://",
        cluster(
            NAME,
            with(json!({"redis": {"managed": null, "external": {"url": "rediss://r:6380"}}})),
        ),
        "The ChatCluster \"specs\" is invalid: spec.redis.external.url: Invalid value: \"string\": redis.external.url: rediss:// (TLS) is not supported: chat-server's Redis client is built without TLS",
    );
    refused(
        "SCRAM-SHA-512",
        cluster(
            NAME,
            with(
                json!({"kafka": {"external": {"credentialsSecretRef": {"name": "k"}, "saslMechanism": "SCRAM-SHA-512"}}}),
            ),
        ),
        "kafka.external.saslMechanism: only PLAIN is supported (chat-server's Kafka client is built without SSL",
    );
    refused(
        "a mechanism without credentials",
        cluster(
            NAME,
            with(
                json!({"kafka": {"external": {"credentialsSecretRef": null, "saslMechanism": "PLAIN"}}}),
            ),
        ),
        "saslMechanism needs kafka.external.credentialsSecretRef",
    );
    refused(
        "a storage size that is no quantity",
        cluster(
            NAME,
            with(json!({"redis": {"managed": {"storage": {"size": "ten gigs"}}}})),
        ),
        "storage.size must be a positive Kubernetes quantity such as 10Gi or 500Mi",
    );
    refused(
        "Kafka replication above the managed brokers",
        cluster(
            NAME,
            with(
                json!({"kafka": {"external": null, "managed": {"replicas": 1}, "replicationFactor": 3}}),
            ),
        ),
        "spec.kafka.replicationFactor: Invalid value: \"object\": kafka.replicationFactor must not exceed kafka.managed.replicas",
    );
    refused(
        "CQL replication above the managed nodes",
        cluster(
            NAME,
            with(
                json!({"scylla": {"external": null, "managed": {"replicas": 1}, "replicationFactor": 3}}),
            ),
        ),
        "scylla.replicationFactor must not exceed scylla.managed.replicas",
    );
    refused(
        "a second datacenter on a managed CQL store",
        cluster(
            NAME,
            with(
                json!({"scylla": {"external": null, "managed": {"replicas": 3}, "datacenterReplication": {"dc2": 3}}}),
            ),
        ),
        "a managed CQL store has one datacenter, datacenter1",
    );
    refused(
        "a misspelt consistency",
        cluster(NAME, with(json!({"scylla": {"consistency": "quorom"}}))),
        "scylla.consistency must be one of one, two, three, quorum, all, local_quorum",
    );
    refused(
        "an S3 endpoint that is no URL",
        cluster(
            NAME,
            with(
                json!({"media": {"s3": {"bucket": "b", "endpoint": "minio:9000", "credentialsSecretRef": {"name": "s"}}}}),
            ),
        ),
        "media.s3.endpoint must be a URL starting with http:// or https://",
    );

    // A valid cluster; then updates that change what cannot change.
    apply(&secret(
        "specs-kafka",
        json!({"username": "u", "password": "p"}),
    ))
    .unwrap();
    apply(&secret(
        "specs-s3",
        json!({"accessKeyId": "a", "secretAccessKey": "s"}),
    ))
    .unwrap();
    apply(&cluster(NAME, base())).expect("the base spec is valid");
    refused(
        "fewer partitions",
        cluster(NAME, with(json!({"kafka": {"partitions": 4}}))),
        "kafka.partitions can only grow (Kafka cannot remove partitions)",
    );
    refused(
        "another keyspace",
        cluster(NAME, with(json!({"scylla": {"keyspace": "other_ks"}}))),
        "spec.scylla.keyspace: Invalid value: \"object\": scylla.keyspace cannot be changed",
    );
    refused(
        "no keyspace (the default would differ)",
        cluster(NAME, with(json!({"scylla": {"keyspace": null}}))),
        "scylla.keyspace cannot be changed (or set or unset) after creation",
    );
    refused(
        "another topic",
        cluster(NAME, with(json!({"kafka": {"topic": "other.messages"}}))),
        "kafka.topic cannot be changed",
    );
    apply(&cluster(NAME, with(json!({"kafka": {"partitions": 16}})))).expect("more partitions");
    step(t0, "admission checks done");

    // ---- 2. a refusal only the API server can make -----------------------------------------
    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), NS);
    wait_for(
        "the operator created the Redis StatefulSet and wrote status",
        Duration::from_secs(60),
        || async {
            let observed = k
                .chatclusters()
                .get(NAME)
                .await
                .map_err(|e| e.to_string())?
                .data["status"]["observedGeneration"]
                .as_i64();
            let ss = statefulsets
                .get_opt("specs-redis")
                .await
                .map_err(|e| e.to_string())?;
            (ss.is_some() && observed == Some(2))
                .then_some(())
                .ok_or(format!(
                    "StatefulSet {}, observedGeneration {observed:?}",
                    ss.is_some()
                ))
        },
    )
    .await;
    // The environment chat-server reads (S3 region and plain-http endpoint, the SASL
    // mechanism that makes it use the Kafka credentials), and the setup Job's resources.
    let cm: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let env = cm.get("specs-config").await.unwrap().data.unwrap();
    assert_eq!(env["CHAT_MEDIA_S3_REGION"], "eu-west-1");
    assert_eq!(env["CHAT_MEDIA_S3_ALLOW_HTTP"], "true");
    assert_eq!(env["CHAT_KAFKA_SASL_MECHANISM"], "PLAIN");
    assert!(!env.contains_key("AWS_REGION"), "{env:?}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let setup_jobs = || async {
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={NAME},app.kubernetes.io/component=setup"
        ));
        let mut names: Vec<String> = jobs
            .list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .map(|j| j.name_any())
            .collect();
        names.sort();
        names
    };
    // One setup Job per setup-relevant configuration (8, then 16 partitions); the older one
    // stays until a newer one succeeded. Every one has requests and limits.
    let before = setup_jobs().await;
    assert!(!before.is_empty());
    for name in &before {
        let job = jobs.get(name).await.unwrap();
        let res = job.spec.unwrap().template.spec.unwrap().containers[0]
            .resources
            .clone()
            .expect("setup container resources");
        assert!(
            res.requests.is_some_and(|r| r.contains_key("memory"))
                && res.limits.is_some_and(|l| l.contains_key("memory")),
            "setup Job {name} has requests and limits"
        );
    }

    step(
        t0,
        "bigger Redis volume + new edge port + log level in one update",
    );
    let bigger = with(json!({
        "kafka": {"partitions": 16},
        "logLevel": "debug",
        "edge": {"service": {"port": 8081}},
        "redis": {"managed": {"storage": {"size": "2Gi"}}}
    }));
    apply(&cluster(NAME, bigger)).expect("the CRD accepts a new size");
    let (_, _, msg) = wait_for(
        "Degraded=True SpecRejected",
        Duration::from_secs(60),
        || async {
            match k.condition("Degraded").await {
                Some((s, r, m)) if s == "True" && r == "SpecRejected" => Ok((s, r, m)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!("   Degraded: {msg}");
    assert!(
        msg.starts_with(
            "spec.redis.managed.storage: the API server refused StatefulSet specs-redis: "
        ),
        "{msg}"
    );
    assert!(
        msg.contains("Forbidden: updates to statefulset spec")
            && msg.contains("set it back")
            && msg.contains("kubectl delete statefulset specs-redis --cascade=orphan"),
        "{msg}"
    );
    // The same update's other changes were reconciled, and the status is current.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc = services.get("specs-edge").await.unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8081);
    assert_eq!(
        cm.get("specs-config").await.unwrap().data.unwrap()["RUST_LOG"],
        "debug"
    );
    // A new log level rolls the roles but is no reason for another setup Job.
    assert_eq!(
        setup_jobs().await,
        before,
        "the setup Job of the same setup"
    );
    let cc = k.chatclusters().get(NAME).await.unwrap();
    assert_eq!(
        cc.data["status"]["observedGeneration"],
        cc.metadata.generation.unwrap(),
        "status describes the refused generation"
    );
    let live = statefulsets.get("specs-redis").await.unwrap();
    let size = &live.spec.unwrap().volume_claim_templates.unwrap()[0]
        .spec
        .clone()
        .unwrap()
        .resources
        .unwrap()
        .requests
        .unwrap()["storage"];
    assert_eq!(size.0, "1Gi", "the running StatefulSet is left as it was");
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let ev = wait_for(
        "a Warning event SpecRejected",
        Duration::from_secs(30),
        || async {
            let lp = ListParams::default().fields(&format!("involvedObject.name={NAME}"));
            let list = events.list(&lp).await.map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("SpecRejected")
                        && e.type_.as_deref() == Some("Warning")
                })
                .ok_or("no SpecRejected event yet".to_string())
        },
    )
    .await;
    let note = ev.message.unwrap_or_default();
    eprintln!("   event: {note}");
    assert!(note.contains("spec.redis.managed.storage"), "{note}");

    step(t0, "the size set back: SpecRejected clears");
    apply(&cluster(
        NAME,
        with(json!({"kafka": {"partitions": 16}, "logLevel": "debug", "edge": {"service": {"port": 8081}}})),
    ))
    .unwrap();
    // (Degraded may stay True for another reason: the setup pod's image is never pulled.)
    wait_for(
        "Degraded no longer SpecRejected",
        Duration::from_secs(60),
        || async {
            match k.condition("Degraded").await {
                Some((_, r, _)) if r != "SpecRejected" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // A Secret value chat-server cannot use: the labelled Secret's change reconciles at once
    // (well inside the 30 s resync) and holds the cluster.
    step(t0, "the Kafka Secret says SCRAM-SHA-512");
    apply(&secret(
        "specs-kafka",
        json!({"username": "u", "password": "p", "mechanism": "SCRAM-SHA-512"}),
    ))
    .unwrap();
    let (_, _, msg) = wait_for(
        "Degraded=True InvalidSecret within 15 s",
        Duration::from_secs(15),
        || async {
            match k.condition("Degraded").await {
                Some((s, r, m)) if s == "True" && r == "InvalidSecret" => Ok((s, r, m)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!("   Degraded: {msg}");
    assert!(
        msg.contains("Secret specs-kafka key mechanism is \"SCRAM-SHA-512\"")
            && msg.contains("remove the key or set it to PLAIN"),
        "{msg}"
    );

    step(t0, "delete the namespace");
    delete_namespace(&nss).await;
    step(t0, "done");
}

/// Merge `patch` into `target` (JSON merge patch: `null` removes).
fn json_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_patch(t.entry(k.clone()).or_insert(json!({})), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}
