//! A ChatCluster on a real Kubernetes node: kubelet + containerd + kube-proxy + CoreDNS from
//! `e2e/env/up.sh node`, every image built locally (`e2e/env/images`), the operator installed
//! as a pod by its Helm chart. Run it with `e2e/kube/run.sh`, which brings all of that up,
//! runs this test with `TERN_KUBE_NODE=1` and prints pod logs and events when it fails.
//!
//! One test, in the order a platform engineer would check a new operator:
//! 1. the ChatCluster of `e2e/kube/chatcluster.yaml` becomes Ready; every pod Running and
//!    Ready and no role pod restarted (setup ordering holds);
//! 2. real WebSocket and HTTP clients through the edge Service (NodePort on 127.0.0.1):
//!    direct and group messages across both edges, acks, receipts, presence, sync after a
//!    reconnect, a media upload and download;
//! 3. `kubectl delete pod --force --grace-period=0` of the delivery pod, then of an edge pod,
//!    while a client streams: every acked message is stored under its acked seq, no gaps, no
//!    duplicate `client_msg_id`; clients recover by reconnecting and syncing;
//! 4. a graceful delete of an edge pod: preStop pause, then drain (`reconnect`), clients move;
//! 5. deleting the ChatCluster garbage-collects what it owns; the StatefulSets' data PVCs stay.

mod nodekit;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use nodekit::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const MANIFEST: &str = include_str!("../../e2e/kube/chatcluster.yaml");
const NAME: &str = "tern-dev";

#[tokio::test]
async fn chatcluster_on_a_real_node() {
    if std::env::var("TERN_KUBE_NODE").map_or(true, |v| v != "1") {
        eprintln!(
            "SKIPPED: set TERN_KUBE_NODE=1 (e2e/kube/run.sh brings the node up and runs this)"
        );
        return;
    }
    let t0 = Instant::now();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let ns = namespace();
    let k = Cluster {
        client: client.clone(),
        ns: ns.clone(),
        name: NAME.into(),
        pods: Api::namespaced(client.clone(), &ns),
    };

    // ---- 1. apply, Ready, no restarts --------------------------------------------------
    step(t0, &format!("kubectl apply the ChatCluster {NAME} in {ns}"));
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata":{"name": ns}})).unwrap(),
        )
        .await;
    let obj: DynamicObject = serde_yaml::from_str(MANIFEST).unwrap();
    match k.chatclusters().create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        // Iterating on the test: `TERN_KUBE_REUSE=1` runs it on the cluster a kept run left.
        Err(kube::Error::Api(e))
            if e.code == 409 && std::env::var("TERN_KUBE_REUSE").is_ok_and(|v| v == "1") =>
        {
            eprintln!("   reusing the existing ChatCluster (TERN_KUBE_REUSE=1)")
        }
        Err(e) => panic!("create the ChatCluster: {e}"),
    }
    let applied = Instant::now();
    wait_for(
        "ChatCluster Ready=True",
        Duration::from_secs(600),
        || async {
            match k.condition("Ready").await {
                Some((s, _, _)) if s == "True" => Ok(()),
                Some((s, r, m)) => Err(format!("Ready={s} {r}: {m}")),
                None => Err("no Ready condition yet".into()),
            }
        },
    )
    .await;
    let ready_after = applied.elapsed();
    step(
        t0,
        &format!("Ready=True {:.0} s after apply", ready_after.as_secs_f64()),
    );
    let edges = wait_for("2 edge pods ready", Duration::from_secs(60), || {
        k.ready_pods("edge", 2)
    })
    .await;
    for (component, n) in [
        ("delivery", 1),
        ("presence", 1),
        ("kafka", 1),
        ("scylla", 1),
        ("redis", 1),
    ] {
        wait_for(
            &format!("{component} ready"),
            Duration::from_secs(60),
            || k.ready_pods(component, n),
        )
        .await;
    }
    let all = k.pods.list(&ListParams::default()).await.unwrap().items;
    for p in &all {
        eprintln!("   {}", pod_line(p));
    }
    for component in ["edge", "delivery", "presence"] {
        for p in k.pods_of(component).await {
            assert_eq!(
                restarts(&p),
                0,
                "role pod {} restarted: setup ordering failed",
                p.name_any()
            );
        }
    }
    // The dependencies start cleanly too (Cassandra pod 0 used to exit until its own DNS name
    // resolved: the image's entrypoint now waits for a seed to resolve).
    for component in ["kafka", "scylla", "redis"] {
        for p in k.pods_of(component).await {
            assert_eq!(restarts(&p), 0, "{} restarted", p.name_any());
        }
    }
    let printed = kubectl(&["get", "chatclusters", "-n", &ns]);
    eprintln!("{printed}");
    assert!(
        printed.contains(&format!("{NAME}-edge.{ns}.svc")),
        "kubectl get chatclusters shows the endpoint"
    );
    // The managed dependencies run production-shaped: non-root, no privilege escalation,
    // PDBs, spread (nodekit::deps).
    step(
        t0,
        "managed dependencies: security context, volumes, PDBs, spread",
    );
    nodekit::deps::assert_dependencies_hardened(&k).await;

    // ---- 2. clients through the Service ------------------------------------------------
    step(
        t0,
        "real clients through the edge Service (NodePort on 127.0.0.1)",
    );
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = svcs.get(&format!("{NAME}-edge")).await.unwrap();
    let node_port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let jwt = secrets.get(&format!("{NAME}-jwt")).await.unwrap();
    let secret = jwt.data.unwrap()["secret"].0.clone();
    let c = Clients {
        secret,
        base: format!("127.0.0.1:{node_port}"),
        http: reqwest::Client::new(),
    };
    let edge_ips: Vec<String> = edges.iter().map(pod_ip).collect();
    let (e0, e1) = (edge_ips[0].clone(), edge_ips[1].clone());
    let mut a = c.ws_on(1, &e0).await;
    let mut b = c.ws_on(2, &e1).await;
    let mut g3 = c.ws_on(3, &e1).await;
    eprintln!("   user 1 on {e0}, users 2 and 3 on {e1}");
    // The operator reads the edges' live connections into the status (and the printer
    // column of `kubectl get chatclusters`).
    wait_for(
        "status.edge.connections >= 3",
        Duration::from_secs(90),
        || async {
            let cc = k
                .chatclusters()
                .get(NAME)
                .await
                .map_err(|e| e.to_string())?;
            let n = cc.data["status"]["edge"]["connections"]
                .as_i64()
                .unwrap_or(0);
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("connections {n}"))
            }
        },
    )
    .await;
    eprintln!("{}", kubectl(&["get", "chatclusters", "-n", &ns]));
    let api1 = c.api(1);

    // Direct chat across edges: ack to the sender, the message to the receiver.
    let (s, chat) = api1
        .post("/v1/chats", json!({"type":"direct","members":[2]}))
        .await;
    assert!(s == 201 || s == 200, "create direct chat: {chat}");
    let direct = chat["chat_id"].as_u64().unwrap();
    assert!(
        a.send(json!({"type":"message","chat_id":direct,"content":"hi across edges","client_msg_id":"d1"}))
            .await
    );
    let ack = a.answer("d1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["seq"], 1);
    let m = b.expect("message", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (m["seq"].as_u64(), m["content"].as_str()),
        (Some(1), Some("hi across edges"))
    );
    // Receipts: the receiver marks read; the sender gets the receipt (batched, ~1 s).
    assert!(
        b.send(json!({"type":"read","chat_id":direct,"seq":1}))
            .await
    );
    let r = loop {
        let r = a
            .expect("receipt", Duration::from_secs(10))
            .await
            .expect("a receipt for the sender");
        if r["status"] == "read" {
            break r;
        }
    };
    assert_eq!(
        (r["user_id"].as_u64(), r["seq"].as_u64()),
        (Some(2), Some(1))
    );
    let (_, marks) = api1.get(&format!("/v1/chats/{direct}/receipts")).await;
    let m2 = marks["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == 2)
        .unwrap()
        .clone();
    assert_eq!(m2["read_seq"], 1, "{marks}");

    // Group across edges.
    let (s, g) = api1
        .post(
            "/v1/chats",
            json!({"type":"group","title":"node","members":[2,3]}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let group = g["chat_id"].as_u64().unwrap();
    assert!(
        g3.send(
            json!({"type":"message","chat_id":group,"content":"group hello","client_msg_id":"g1"})
        )
        .await
    );
    assert_eq!(
        g3.answer("g1", Duration::from_secs(10)).await.unwrap()["seq"],
        1
    );
    for w in [&mut a, &mut b] {
        let m = w.expect("message", Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            (m["chat_id"].as_u64(), m["seq"].as_u64()),
            (Some(group), Some(1))
        );
    }

    // Presence: user 4 comes online on any edge, then leaves cleanly.
    assert!(
        a.send(json!({"type":"presence_subscribe","user_ids":[4]}))
            .await
    );
    assert_eq!(presence_of(&mut a, 4).await["status"], "offline");
    let mut d = c.ws(4).await;
    assert_eq!(presence_of(&mut a, 4).await["status"], "online");
    let _ = d.ws.close(None).await;
    let p = presence_of(&mut a, 4).await;
    assert_eq!(p["status"], "offline");
    assert!(p["last_seen"].is_string(), "{p}");

    // Sync after a reconnect: b goes away, 5 messages are sent, b comes back and syncs.
    let _ = b.ws.close(None).await;
    for i in 2..=6 {
        let cid = format!("d{i}");
        assert!(a.send(json!({"type":"message","chat_id":direct,"content":"while away","client_msg_id":cid})).await);
        assert_eq!(
            a.answer(&cid, Duration::from_secs(10)).await.unwrap()["seq"],
            i
        );
    }
    let mut b = c.ws(2).await;
    assert!(
        b.send(json!({"type":"sync","chat_id":direct,"after_seq":1}))
            .await
    );
    let page = b.expect("sync", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        seqs(page["messages"].as_array().unwrap()),
        vec![2, 3, 4, 5, 6]
    );

    // Media: upload through the Service, send it, download it from both edges (a shared
    // volume behind both).
    let up = c
        .http
        .post(format!("http://{}/v1/media", c.base))
        .bearer_auth(token(&c.secret, 1))
        .header("content-type", "image/png")
        .body(png())
        .send()
        .await
        .unwrap();
    assert_eq!(up.status().as_u16(), 201);
    let media: Value = up.json().await.unwrap();
    let media_id = media["media_id"].as_str().unwrap().to_string();
    assert!(a.send(json!({"type":"message","chat_id":direct,"content":"a picture","media_id":media_id,"client_msg_id":"pic"})).await);
    a.answer("pic", Duration::from_secs(10)).await.unwrap();
    let m = b.expect("message", Duration::from_secs(10)).await.unwrap();
    assert_eq!(m["media"]["media_id"], media_id.as_str(), "{m}");
    let mut bodies = Vec::new();
    for ip in &edge_ips {
        let r = c
            .http
            .get(format!("http://{ip}:8080/v1/media/{media_id}"))
            .bearer_auth(token(&c.secret, 2))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "download from edge {ip}");
        assert_eq!(r.headers()["content-type"], "image/png");
        bodies.push(r.bytes().await.unwrap());
    }
    assert_eq!(bodies[0].len() as u64, media["size"].as_u64().unwrap());
    assert_eq!(bodies[0], bodies[1], "both edges serve the same bytes");

    // ---- 3. force-delete a delivery pod, then an edge pod, mid-stream ------------------
    step(
        t0,
        "kubectl delete pod --force of the delivery pod during a stream",
    );
    let mut acks = BTreeMap::new();
    let delivery = k.pods_of("delivery").await[0].name_any();
    for i in 0..150 {
        let cid = format!("s{i}");
        if i == 40 {
            force_delete(&ns, &delivery);
            eprintln!("   deleted {delivery} after 40 acks");
        }
        let ack = send_until_acked(&c, &mut a, 1, group, &cid, Duration::from_secs(180)).await;
        acks.insert(cid, ack);
    }
    let n = assert_intact(&c.api(2), group, &acks).await;
    eprintln!("   150 acked; {n} stored, gapless, no duplicates");
    caught_up(&mut g3, group, n as u64).await;
    wait_for("a new delivery pod ready", Duration::from_secs(120), || {
        k.ready_pods("delivery", 1)
    })
    .await;

    step(
        t0,
        "kubectl delete pod --force of the sender's edge pod during a stream",
    );
    let victim = edges.iter().find(|p| pod_ip(p) == e0).unwrap().name_any();
    for i in 150..300 {
        let cid = format!("s{i}");
        if i == 190 {
            force_delete(&ns, &victim);
            eprintln!("   deleted {victim} (user 1's edge) after {i} sends");
        }
        let ack = send_until_acked(&c, &mut a, 1, group, &cid, Duration::from_secs(180)).await;
        acks.insert(cid, ack);
        if i % 20 == 0 {
            g3.send(json!({"type":"ping"})).await;
        }
    }
    let n = assert_intact(&c.api(3), group, &acks).await;
    eprintln!("   300 acked; {n} stored, gapless, no duplicates");
    // The receivers reconnect (the one on the surviving edge may still be connected) and sync.
    let mut g3 = c.ws(3).await;
    caught_up(&mut g3, group, n as u64).await;
    let mut b = c.ws(2).await;
    caught_up(&mut b, group, n as u64).await;
    wait_for("2 edge pods ready again", Duration::from_secs(120), || {
        k.ready_pods("edge", 2)
    })
    .await;
    drop((a, b, g3));

    step(
        t0,
        "kubectl delete pod (graceful) of an edge: preStop pause, then drain",
    );
    // A client on the edge that is told to stop: the pod keeps serving through its preStop
    // pause (endpoints drop it meanwhile), then chat-server drains and the client gets
    // `reconnect`; it reconnects through the Service (to the other edge) and carries on.
    let edges = wait_for("2 edge pods ready", Duration::from_secs(60), || {
        k.ready_pods("edge", 2)
    })
    .await;
    let target = pod_ip(&edges[0]);
    let mut w = c.ws_on(5, &target).await;
    let deleted = Instant::now();
    kubectl(&[
        "delete",
        "pod",
        "-n",
        &ns,
        &edges[0].name_any(),
        "--wait=false",
    ]);
    let r = w
        .expect("reconnect", Duration::from_secs(30))
        .await
        .expect("a reconnect frame from the draining edge");
    let after = deleted.elapsed();
    eprintln!("   reconnect after {after:?}: {r}");
    assert!(
        after >= Duration::from_secs(4),
        "the drain began after the preStop pause, not at once ({after:?})"
    );
    let mut w = c.ws(5).await;
    assert!(
        w.send(
            json!({"type":"message","chat_id":group,"content":"x","client_msg_id":"after-drain"})
        )
        .await
    );
    let e = w.answer("after-drain", Duration::from_secs(10)).await;
    assert!(
        matches!(&e, Err(m) if m.contains("forbidden")),
        "user 5 is no member; the answer proves the new connection works: {e:?}"
    );

    // ---- 4. delete the ChatCluster -----------------------------------------------------
    step(
        t0,
        "kubectl delete chatcluster: owned objects are garbage-collected",
    );
    k.chatclusters()
        .delete(NAME, &DeleteParams::background())
        .await
        .unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let owned = ListParams::default().labels(&format!("app.kubernetes.io/instance={NAME}"));
    wait_for("owned objects gone", Duration::from_secs(180), || async {
        let left = [
            deps.list(&owned).await.unwrap().items.len(),
            sts.list(&owned).await.unwrap().items.len(),
            svcs.list(&owned).await.unwrap().items.len(),
            cms.list(&owned).await.unwrap().items.len(),
            secrets.list(&owned).await.unwrap().items.len(),
            k.pods.list(&owned).await.unwrap().items.len(),
        ];
        if left.iter().all(|n| *n == 0) {
            Ok(())
        } else {
            Err(format!(
                "left (deployments, statefulsets, services, configmaps, secrets, pods): {left:?}"
            ))
        }
    })
    .await;
    // The media PVC is owned by the ChatCluster and goes with it (once no pod mounts it: the
    // pvc-protection finalizer); the StatefulSets' data PVCs (Kafka, CQL, Redis) are kept, as
    // StatefulSets keep them: data outlives an accidental delete (docs/operator.md says how to
    // remove them).
    let media_pvc = format!("{NAME}-media");
    wait_for(
        "the media PVC deleted",
        Duration::from_secs(120),
        || async {
            match pvcs.get_opt(&media_pvc).await.unwrap() {
                None => Ok(()),
                Some(p) => Err(format!(
                    "{media_pvc} still there (deleting: {})",
                    p.metadata.deletion_timestamp.is_some()
                )),
            }
        },
    )
    .await;
    let left: Vec<String> = pvcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    eprintln!("   PVCs left: {left:?}");
    for dep in ["kafka", "scylla", "redis"] {
        assert!(
            left.iter()
                .any(|n| n.starts_with(&format!("data-{NAME}-{dep}-"))),
            "{dep} data PVC kept"
        );
    }
    step(t0, "done");
}
