//! The edge's ports on a real node: TLS at the edge (`spec.edge.tls`), `/metrics` on its own
//! port (9090) and `spec.networkPolicy`. Run with `TERN_KUBE_NODE=1 cargo test -p
//! tern-operator --test node_edge -- --nocapture` on the node of `e2e/kube/run.sh --keep` (or
//! `e2e/kube/up.sh`), after `e2e/kube/reload.sh` has put the working tree into it.
//!
//! One ChatCluster `tern-tls` in its own namespace `e2e-edge` (created here, deleted at the
//! end; a namespace left by an aborted run is deleted first). It brings its own managed Kafka,
//! Cassandra and Redis (one small pod each: the JVM pair costs about a minute and ~3 GiB), so
//! it neither depends on nor disturbs the ChatCluster other suites run in `tern-e2e`. Steps:
//! 1. a test CA (rcgen) signs the edge certificate; a `kubernetes.io/tls` Secret holds it; the
//!    ChatCluster has `edge.tls`, a NodePort Service on port 443 and `networkPolicy.enabled`;
//!    it becomes Ready (the edge pod's probes go over HTTPS) and `status.endpoint` is `wss://`;
//! 2. WSS clients through the NodePort on 127.0.0.1 (SNI = the Service's DNS name, trusting
//!    only the test CA) create a chat over HTTPS and exchange messages; plain HTTP to the same
//!    port gets a 400;
//! 3. `/metrics`: 404 on the client port (over HTTPS), served on the pod's `metrics` port
//!    (the pod IP, port 9090) with the live connections, and the operator reads it from there
//!    (`status.edge.connections`); the Service exposes only the client port;
//! 4. the NetworkPolicies exist with the right ports and peers (this node's bridge CNI does not
//!    enforce NetworkPolicy, so the objects are what is checked, not the packet filtering);
//! 5. certificate rotation: a new certificate in the Secret reaches the running edge pod
//!    (kubelet refreshes the mounted files, chat-server reloads them): new handshakes get it,
//!    open connections keep working, the pod is not restarted and the config checksum (so
//!    the pod template) is unchanged;
//! 6. `networkPolicy.enabled: false` deletes both policies; the namespace is deleted.

mod nodekit;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nodekit::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const NS: &str = "e2e-edge";
const NAME: &str = "tern-tls";
const TLS_SECRET: &str = "tern-tls-cert";
/// The operator's namespace (the Helm release of `e2e/kube`).
const OPERATOR_NS: &str = "tern-system";

fn host() -> String {
    format!("{NAME}-edge.{NS}.svc")
}

/// The test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "tern node_edge test CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// The edge certificate: (cert PEM, key PEM, cert DER).
    fn leaf(&self, cn: &str) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![
            host(),
            format!("{}.cluster.local", host()),
            "localhost".to_string(),
        ])
        .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(cfg))
    }
}

fn tls_secret(cert: &str, key: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": TLS_SECRET},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert, "tls.key": key}
    }))
    .unwrap()
}

/// TLS through the NodePort with the Service's DNS name as SNI; the certificate shown.
async fn tls_to(
    ca: &Ca,
    addr: SocketAddr,
) -> Result<(TlsStream<TcpStream>, CertificateDer<'static>), String> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        ca.connector()
            .connect(ServerName::try_from(host()).unwrap(), tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, leaf))
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

async fn wss(ca: &Ca, addr: SocketAddr, secret: &[u8], user: u64) -> Wss {
    let mut last = String::new();
    for _ in 0..30 {
        match tls_to(ca, addr).await {
            Ok((tls, _)) => {
                let url = format!("wss://{}/ws?token={}", host(), token(secret, user));
                match tokio_tungstenite::client_async(url, tls).await {
                    Ok((mut ws, _)) => {
                        let hello = next_of(&mut ws, "hello").await;
                        assert_eq!(hello["user_id"], user);
                        return ws;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("user {user}: no WSS connection through the NodePort: {last}");
}

async fn next_of(ws: &mut Wss, ty: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for {ty}: {other:?}"),
        }
    }
}

async fn exchange(a: &mut Wss, b: &mut Wss, chat: u64, text: &str) {
    let cid = format!("c-{text}");
    a.send(Message::text(
        json!({"type":"message","chat_id":chat,"content":text,"client_msg_id":cid}).to_string(),
    ))
    .await
    .unwrap();
    let ack = next_of(a, "ack").await;
    assert_eq!(ack["client_msg_id"], cid.as_str(), "{ack}");
    let m = next_of(b, "message").await;
    assert_eq!(m["content"], text, "{m}");
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`): (status, body).
async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        host(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

async fn plain(addr: SocketAddr, path: &str) -> (u16, String) {
    let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    request(s, "GET", path, "", "").await
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn status_field(k: &Cluster, pointer: &str) -> Value {
    let cc = k.chatclusters().get(NAME).await.unwrap();
    cc.data["status"]
        .pointer(pointer)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn edge_tls_metrics_port_and_network_policy_on_a_real_node() {
    if std::env::var("TERN_KUBE_NODE").map_or(true, |v| v != "1") {
        eprintln!("SKIPPED: set TERN_KUBE_NODE=1 (a node from e2e/kube/run.sh --keep)");
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
    let nss: Api<Namespace> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), NS);

    // ---- 1. Secret, ChatCluster, Ready -------------------------------------------------
    if nss.get_opt(NS).await.unwrap().is_some() {
        step(t0, &format!("deleting {NS} left by an earlier run"));
        let _ = nss.delete(NS, &DeleteParams::default()).await;
        wait_for(&format!("{NS} gone"), Duration::from_secs(300), || async {
            match nss.get_opt(NS).await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|n| n.map(|n| n.status)))),
            }
        })
        .await;
    }
    step(
        t0,
        &format!("namespace {NS}, TLS Secret from a test CA, ChatCluster {NAME}"),
    );
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
    )
    .await
    .unwrap();
    let ca = Ca::new();
    let (cert1, key1, der1) = ca.leaf("edge-1");
    secrets
        .create(&PostParams::default(), &tls_secret(&cert1, &key1))
        .await
        .unwrap();
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "chat.tern.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": NAME},
        "spec": {
            "image": "ghcr.io/tern/chat-server:0.1.0",
            "imagePullPolicy": "IfNotPresent",
            "edge": {
                "replicas": 1,
                "service": {"type": "NodePort", "port": 443},
                "tls": {"secretName": TLS_SECRET},
                "drain": {"timeoutSeconds": 2, "reconnectJitterMs": 500},
                // The clients here stay silent while the kubelet refreshes the Secret's files
                // (a minute or more): keep the server from closing them for missed heartbeats.
                "heartbeatIntervalSeconds": 600
            },
            "delivery": {"replicas": 1},
            "presence": {"replicas": 1},
            "kafka": {"managed": {"storage": {"size": "1Gi"}}, "partitions": 4},
            "scylla": {"managed": {"engine": "cassandra", "storage": {"size": "1Gi"}}},
            "redis": {"managed": {"image": "redis:7.0", "storage": {"size": "1Gi"}}},
            "networkPolicy": {
                "enabled": true,
                "metricsNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
            }
        }
    }))
    .unwrap();
    k.chatclusters()
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
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
    step(
        t0,
        &format!("Ready {:.0} s after apply", applied.elapsed().as_secs_f64()),
    );
    let edge = wait_for("the edge pod ready", Duration::from_secs(60), || {
        k.ready_pods("edge", 1)
    })
    .await
    .remove(0);
    let endpoint = status_field(&k, "/endpoint").await;
    assert_eq!(endpoint, json!(format!("wss://{}/ws", host())));
    // The edge pod: probes over HTTPS on the `https` port, metrics on `metrics` (9090).
    let ctr = &edge.spec.as_ref().unwrap().containers[0];
    let probe = ctr
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    let ports: Vec<_> = ctr
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("https".to_string(), 8080), ("metrics".to_string(), 9090)]
    );
    for p in ["delivery", "presence"] {
        let pod = k.ready_pods(p, 1).await.unwrap().remove(0);
        let c = &pod.spec.unwrap().containers[0];
        assert!(
            c.ports.iter().flatten().any(|p| p.container_port == 9090),
            "{p}: metrics port"
        );
    }
    assert_eq!(restarts(&edge), 0);

    // The Service: the client port only.
    let svc = Api::<Service>::namespaced(client.clone(), NS)
        .get(&format!("{NAME}-edge"))
        .await
        .unwrap();
    let svc_ports = svc.spec.unwrap().ports.unwrap();
    assert_eq!(svc_ports.len(), 1, "{svc_ports:?}");
    assert_eq!(svc_ports[0].name.as_deref(), Some("https"));
    assert_eq!(svc_ports[0].port, 443);
    let node_port: SocketAddr = format!("127.0.0.1:{}", svc_ports[0].node_port.unwrap())
        .parse()
        .unwrap();

    // ---- 2. WSS through the NodePort -----------------------------------------------------
    step(t0, &format!("WSS clients through the NodePort {node_port}"));
    let jwt = secrets.get(&format!("{NAME}-jwt")).await.unwrap();
    let secret = jwt.data.unwrap()["secret"].0.clone();
    let (_, shown) = tls_to(&ca, node_port).await.unwrap();
    assert_eq!(shown, der1, "the Secret's certificate is served");
    let (tls, _) = tls_to(&ca, node_port).await.unwrap();
    let body = json!({"type": "direct", "members": [2]}).to_string();
    let (st, created) = request(
        tls,
        "POST",
        "/v1/chats",
        &format!(
            "Authorization: Bearer {}\r\nContent-Type: application/json\r\n",
            token(&secret, 1)
        ),
        &body,
    )
    .await;
    assert!(
        st == 201 || st == 200,
        "create chat over HTTPS: {st} {created}"
    );
    let json_body = &created[created.find('{').unwrap()..=created.rfind('}').unwrap()];
    let chat = serde_json::from_str::<Value>(json_body).unwrap()["chat_id"]
        .as_u64()
        .unwrap();
    let mut a = wss(&ca, node_port, &secret, 1).await;
    let mut b = wss(&ca, node_port, &secret, 2).await;
    exchange(&mut a, &mut b, chat, "hello-over-wss").await;
    exchange(&mut b, &mut a, chat, "and-back").await;
    // Plain HTTP on the TLS port: a clear 400, nothing served.
    let (st, body) = plain(node_port, "/readyz").await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("https://"), "{body}");

    // ---- 3. /metrics -----------------------------------------------------------------------
    step(
        t0,
        "/metrics: not on the client port, on the pod's metrics port",
    );
    let (tls, _) = tls_to(&ca, node_port).await.unwrap();
    let (st, _) = request(tls, "GET", "/metrics", "", "").await;
    assert_eq!(st, 404, "/metrics through the client Service");
    let ip = pod_ip(&edge);
    let client_port: SocketAddr = format!("{ip}:8080").parse().unwrap();
    assert_eq!(
        plain(client_port, "/metrics").await.0,
        400,
        "the pod's client port is TLS"
    );
    let metrics_port: SocketAddr = format!("{ip}:9090").parse().unwrap();
    let (st, text) = plain(metrics_port, "/metrics").await;
    assert_eq!(st, 200);
    assert!(
        metric(&text, "chat_connections").is_some_and(|n| n >= 2.0),
        "chat_connections on {metrics_port}: {:?}",
        metric(&text, "chat_connections")
    );
    assert_eq!(
        connections(&ip).await,
        2,
        "nodekit::connections reads port 9090"
    );
    // The operator scrapes the same port (its status shows the live connections).
    wait_for(
        "status.edge.connections = 2 (the operator scrapes :9090)",
        Duration::from_secs(90),
        || async {
            let n = status_field(&k, "/edge/connections").await;
            if n == json!(2) {
                Ok(())
            } else {
                Err(format!("connections {n}"))
            }
        },
    )
    .await;

    // ---- 4. NetworkPolicies --------------------------------------------------------------
    step(
        t0,
        "NetworkPolicies (objects only: this node's CNI does not enforce them)",
    );
    let pods_policy = policies.get(&format!("{NAME}-pods")).await.unwrap();
    let spec = pods_policy.spec.unwrap();
    let own = json!({"app.kubernetes.io/instance": NAME, "app.kubernetes.io/name": "tern"});
    assert_eq!(
        serde_json::to_value(&spec.pod_selector.as_ref().unwrap().match_labels).unwrap(),
        own
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 2);
    assert!(
        rules[0].ports.is_none(),
        "the cluster's own pods: every port"
    );
    assert_eq!(
        serde_json::to_value(&rules[0].from.as_ref().unwrap()[0].pod_selector).unwrap(),
        json!({"matchLabels": own})
    );
    assert_eq!(
        serde_json::to_value(&rules[1]).unwrap(),
        json!({
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NS}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
            "ports": [{"port": 9090, "protocol": "TCP"}]
        })
    );
    let clients_policy = policies.get(&format!("{NAME}-edge-clients")).await.unwrap();
    assert_eq!(
        serde_json::to_value(clients_policy.spec.unwrap()).unwrap(),
        json!({
            "podSelector": {"matchLabels": {
                "app.kubernetes.io/component": "edge",
                "app.kubernetes.io/instance": NAME,
                "app.kubernetes.io/name": "tern"
            }},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
        })
    );
    // The policies select what they should: every pod of the cluster, the edge pod.
    let all: Vec<Pod> = k
        .pods
        .list(&kube::api::ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={NAME},app.kubernetes.io/name=tern"
        )))
        .await
        .unwrap()
        .items;
    let components: std::collections::BTreeSet<_> = all
        .iter()
        .filter_map(|p| p.labels().get("app.kubernetes.io/component").cloned())
        .collect();
    for c in [
        "edge", "delivery", "presence", "kafka", "scylla", "redis", "setup",
    ] {
        assert!(
            components.contains(c),
            "{c} pods carry the policy's labels: {components:?}"
        );
    }

    // ---- 5. certificate rotation -----------------------------------------------------------
    step(t0, "rotate the certificate in the Secret");
    let checksum = status_field(&k, "/configChecksum").await;
    let (cert2, key2, der2) = ca.leaf("edge-2");
    secrets
        .replace(TLS_SECRET, &PostParams::default(), &{
            let mut s = tls_secret(&cert2, &key2);
            s.metadata.resource_version = secrets.get(TLS_SECRET).await.unwrap().resource_version();
            s
        })
        .await
        .unwrap();
    let rotated = Instant::now();
    wait_for(
        "new handshakes get the new certificate",
        Duration::from_secs(240),
        || async {
            let (_, leaf) = tls_to(&ca, node_port).await?;
            if leaf == der2 {
                Ok(())
            } else {
                Err("still the old certificate".into())
            }
        },
    )
    .await;
    step(
        t0,
        &format!(
            "new certificate served {:.0} s after the Secret changed",
            rotated.elapsed().as_secs_f64()
        ),
    );
    exchange(&mut a, &mut b, chat, "after-rotation").await;
    let now = k.ready_pods("edge", 1).await.unwrap().remove(0);
    assert_eq!(
        now.name_any(),
        edge.name_any(),
        "the edge pod was not replaced"
    );
    assert_eq!(restarts(&now), 0);
    assert_eq!(
        status_field(&k, "/configChecksum").await,
        checksum,
        "the TLS Secret does not roll pods"
    );

    // ---- 6. policies off, clean up -------------------------------------------------------
    step(t0, "networkPolicy.enabled=false deletes the policies");
    k.chatclusters()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"networkPolicy": {"enabled": false}}})),
        )
        .await
        .unwrap();
    wait_for("both policies gone", Duration::from_secs(60), || async {
        let left: Vec<_> = policies
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {left:?}"))
        }
    })
    .await;
    drop((a, b));
    step(t0, &format!("delete the namespace {NS}"));
    nss.delete(NS, &DeleteParams::default()).await.unwrap();
    step(t0, "done");
}
