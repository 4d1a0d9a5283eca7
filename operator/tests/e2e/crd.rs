//! The CRD on a real API server: accepted, defaults applied, CEL rules enforced.

use crate::support::{TEST_MANAGER, TestEnv};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tern_operator::ChatCluster;

fn cluster(name: &str, spec: serde_json::Value) -> ChatCluster {
    serde_json::from_value(json!({
        "apiVersion": "chat.tern.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Create with server-side dry run (untyped, so that specs the Rust types would refuse reach
/// the API server); the error message on rejection.
async fn try_create(env: &TestEnv, spec: serde_json::Value) -> Result<ChatCluster, String> {
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let ar = ApiResource::erase::<ChatCluster>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "chat.tern.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": "c"}, "spec": spec
    }))
    .unwrap();
    let created = api.create(&pp, &obj).await.map_err(|e| e.to_string())?;
    Ok(serde_json::from_value(serde_json::to_value(created).unwrap()).unwrap())
}

#[tokio::test]
async fn crd_is_accepted_with_defaults_and_cel_rejects_bad_specs() {
    let Some(env) = TestEnv::new("e2e-crd").await else {
        return;
    };
    let ok = json!({"image": "i:1", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}}});
    let created = try_create(&env, ok.clone())
        .await
        .expect("a minimal spec is valid");
    // Schema defaults are applied by the API server.
    assert_eq!(created.spec.edge.replicas, 2);
    assert_eq!(created.spec.edge.drain.timeout_seconds, 20);
    assert_eq!(created.spec.kafka.partitions, 32);
    assert_eq!(
        created.spec.scylla.managed.as_ref().unwrap().engine,
        tern_operator::crd::CqlEngine::Scylla,
        "the managed CQL engine defaults to scylla"
    );
    let cassandra = json!({"image": "i:1", "kafka": {"managed": {}}, "scylla": {"managed": {"engine": "cassandra", "replicas": 3}}, "redis": {"managed": {}}});
    let created = try_create(&env, cassandra)
        .await
        .expect("engine cassandra is valid");
    let m = created.spec.scylla.managed.unwrap();
    assert_eq!(m.engine, tern_operator::crd::CqlEngine::Cassandra);
    assert_eq!(m.replicas, 3);
    assert_eq!(
        m.storage.size, "10Gi",
        "flattened fields keep their defaults"
    );

    let cases = [
        (
            json!({"image": "i", "kafka": {"managed": {}, "external": {"brokers": ["k:9092"]}}, "scylla": {"managed": {}}, "redis": {"managed": {}}}),
            "exactly one of kafka.external or kafka.managed must be set",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {}, "redis": {"managed": {}}}),
            "exactly one of scylla.external or scylla.managed must be set",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"external": {"url": "redis://r:6379", "urlSecretRef": {"name": "s", "key": "k"}}}}),
            "exactly one of url or urlSecretRef must be set",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
                   "edge": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetConnectionsPerPod": 100}}}),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {"replicas": 3}}}),
            "managed redis runs exactly one replica",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
                   "media": {"s3": {"bucket": "b", "credentialsSecretRef": {"name": "s"}}, "volume": {}}}),
            "exactly one of media.s3 or media.volume must be set",
        ),
        (
            json!({"image": "", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}}}),
            "spec.image",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {}},
                   "edge": {"service": {"type": "Ingress"}}}),
            "Unsupported value",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {"engine": "mysql"}}, "redis": {"managed": {}}}),
            "Unsupported value",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"external": {"url": "rediss://r:6380"}}}),
            "rediss:// (TLS) is not supported",
        ),
        (
            json!({"image": "i", "kafka": {"external": {"brokers": ["k:9092"], "credentialsSecretRef": {"name": "k"}, "saslMechanism": "SCRAM-SHA-512"}}, "scylla": {"managed": {}}, "redis": {"managed": {}}}),
            "only PLAIN is supported",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}, "replicationFactor": 3}, "scylla": {"managed": {}}, "redis": {"managed": {}}}),
            "kafka.replicationFactor must not exceed kafka.managed.replicas",
        ),
        (
            json!({"image": "i", "kafka": {"managed": {}}, "scylla": {"managed": {}}, "redis": {"managed": {"storage": {"size": "lots"}}}}),
            "storage.size must be a positive Kubernetes quantity",
        ),
    ];
    for (spec, want) in cases {
        let err = try_create(&env, spec.clone())
            .await
            .expect_err(&format!("{spec} must be rejected"));
        assert!(
            err.contains(want),
            "rejection of {spec} should mention {want:?}, got: {err}"
        );
    }

    // Transition rules see updates too: a valid object cannot be changed into an invalid one.
    let api = env.api::<ChatCluster>();
    api.patch(
        "c",
        &PatchParams::apply(TEST_MANAGER),
        &Patch::Apply(&cluster("c", ok)),
    )
    .await
    .expect("create");
    let bad = json!({"spec": {"edge": {"autoscaling": {"minReplicas": 3, "maxReplicas": 1, "targetConnectionsPerPod": 1}}}});
    let err = api
        .patch("c", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .expect_err("update to min > max must be rejected");
    assert!(
        err.to_string()
            .contains("minReplicas must not exceed maxReplicas"),
        "{err}"
    );
    // The CQL engine of a managed store is fixed once set (the volumes hold its data).
    let switch = json!({"spec": {"scylla": {"managed": {"engine": "cassandra"}}}});
    let err = api
        .patch("c", &PatchParams::default(), &Patch::Merge(&switch))
        .await
        .expect_err("changing the engine must be rejected");
    assert!(
        err.to_string().contains("engine cannot be changed"),
        "{err}"
    );
    // The managed Kafka's size is fixed (its KRaft controller quorum is a static list on the
    // formatted volumes); its other settings are not.
    let grow = json!({"spec": {"kafka": {"managed": {"replicas": 3}}}});
    let err = api
        .patch("c", &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .expect_err("changing kafka.managed.replicas must be rejected");
    assert!(
        err.to_string()
            .contains("kafka.managed.replicas cannot be changed (1 to 3)"),
        "{err}"
    );
    // Keyspace and topic are fixed; partitions only grow.
    for (patch, want) in [
        (
            json!({"spec": {"scylla": {"keyspace": "other"}}}),
            "scylla.keyspace cannot be changed",
        ),
        (
            json!({"spec": {"kafka": {"topic": "other.messages"}}}),
            "kafka.topic cannot be changed",
        ),
        (
            json!({"spec": {"kafka": {"partitions": 8}}}),
            "kafka.partitions can only grow",
        ),
    ] {
        let err = api
            .patch("c", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err(&format!("{patch} must be rejected"));
        assert!(err.to_string().contains(want), "{patch}: {err}");
    }
    let image = json!({"spec": {"kafka": {"managed": {"image": "apache/kafka:4.1.2"}}}});
    api.patch("c", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .expect("other kafka.managed fields can change");
}
