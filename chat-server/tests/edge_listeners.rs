//! The edge's listeners through real sockets: `/metrics` on its own address
//! (`--metrics-listen`) and HTTPS/WSS on the client port (`--tls-cert`/`--tls-key`), with a
//! test CA made here by rcgen. The server is the real binary on port 0, embedded backend.

mod support;

use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{TestServer, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A test CA and what it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1: (cert PEM, key PEM, cert DER).
    fn leaf(&self, cn: &str) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
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

fn write_pair(dir: &Path, cert: &str, key: &str) {
    // Like the kubelet's atomic update of a Secret volume: write aside, then rename.
    for (name, body) in [("tls.crt", cert), ("tls.key", key)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A server on TLS with the pair in `dir` (as [`write_pair`] writes it) and `extra` flags.
async fn tls_server(dir: &Path, extra: &[&str]) -> TestServer {
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    let mut args = vec![
        "--tls-cert",
        c.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ];
    args.extend(extra);
    TestServer::start_embedded(&args).await
}

/// One plain HTTP/1.1 GET on a fresh connection: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read the answer");
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

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS connection to `addr` (SNI `localhost`), and the certificate the server showed.
async fn tls_connect(ca: &Ca, addr: SocketAddr) -> (TlsStream<TcpStream>, CertificateDer<'static>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = ca
        .connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the test CA");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (tls, leaf)
}

/// A WSS client of `user` that has its `hello`.
async fn wss(ca: &Ca, addr: SocketAddr, user: u64) -> Wss {
    let (tls, _) = tls_connect(ca, addr).await;
    let url = format!("wss://localhost:{}/ws?token={}", addr.port(), token(user));
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket handshake over TLS");
    let hello = next(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["user_id"], user);
    ws
}

async fn next(ws: &mut Wss) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame: {other:?}"),
        }
    }
}

async fn next_of(ws: &mut Wss, ty: &str) -> Value {
    loop {
        let f = next(ws).await;
        if f["type"] == ty {
            return f;
        }
    }
}

/// Create a direct chat between 1 and 2 over HTTPS (a raw HTTP/1.1 request on TLS).
async fn create_chat(ca: &Ca, addr: SocketAddr) -> u64 {
    let (mut tls, _) = tls_connect(ca, addr).await;
    let body = json!({"type": "direct", "members": [2]}).to_string();
    let req = format!(
        "POST /v1/chats HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token(1),
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.starts_with("HTTP/1.1 201") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    let json = text.split_once("\r\n\r\n").unwrap().1;
    // The body may be chunked: take the JSON object inside.
    let start = json.find('{').unwrap();
    let end = json.rfind('}').unwrap();
    let v: Value = serde_json::from_str(&json[start..=end]).unwrap();
    v["chat_id"].as_u64().unwrap()
}

async fn exchange(a: &mut Wss, b: &mut Wss, chat: u64, text: &str) {
    let cid = format!("c-{text}");
    a.send(Message::Text(
        json!({"type":"message","chat_id":chat,"content":text,"client_msg_id":cid})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let ack = next_of(a, "ack").await;
    assert_eq!(ack["client_msg_id"], cid.as_str());
    let m = next_of(b, "message").await;
    assert_eq!(m["content"], text);
    assert_eq!(m["sender_id"], 1);
}

#[tokio::test]
async fn metrics_listen_moves_metrics_off_the_client_port() {
    // Default: one port for everything, as `cargo run -p chat-server` always did.
    let plain = TestServer::start_embedded(&[]).await;
    assert!(plain.metrics.is_none());
    let (st, body) = http_get(plain.addr, "/metrics").await;
    assert_eq!(st, 200);
    assert!(body.contains("chat_connections"), "{body}");

    let s = TestServer::start_embedded(&["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = s.metrics.expect("metrics address printed");
    assert_ne!(metrics, s.addr);
    assert_eq!(http_get(s.addr, "/metrics").await.0, 404);
    let (st, body) = http_get(metrics, "/metrics").await;
    assert_eq!(st, 200);
    assert!(body.contains("chat_connections"), "{body}");
    // Probes answer on both; nothing a client uses is on the metrics port.
    for addr in [s.addr, metrics] {
        assert_eq!(http_get(addr, "/healthz").await.0, 200);
        assert_eq!(http_get(addr, "/readyz").await.0, 200);
    }
    assert_eq!(http_get(metrics, "/v1/chats").await.0, 404);
    assert_eq!(http_get(metrics, "/ws").await.0, 404);
    assert_ne!(http_get(s.addr, "/v1/chats").await.0, 404);
}

#[tokio::test]
async fn wss_clients_talk_and_plain_http_on_the_tls_port_is_refused() {
    let ca = Ca::new("tern test CA");
    let (cert, key, _) = ca.leaf("edge");
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &cert, &key);
    let s = tls_server(dir.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    assert_eq!(s.scheme, "https");

    let chat = create_chat(&ca, s.addr).await;
    let mut a = wss(&ca, s.addr, 1).await;
    let mut b = wss(&ca, s.addr, 2).await;
    exchange(&mut a, &mut b, chat, "over-tls").await;

    // Plain HTTP to the TLS port: a 400 that says why, then the connection closes.
    let t0 = Instant::now();
    let (st, body) = http_get(s.addr, "/readyz").await;
    assert_eq!(st, 400);
    assert!(body.contains("https://"), "{body}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // A plain WebSocket attempt is refused the same way.
    let ws_plain =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={}", s.addr, token(1))).await;
    assert!(ws_plain.is_err(), "plain ws:// must not connect");
    // Bytes that are neither TLS nor HTTP: closed without harm.
    let mut junk = TcpStream::connect(s.addr).await.unwrap();
    junk.write_all(&[0u8; 64]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut sink)).await;
    // A client that connects and says nothing does not hold up others.
    let _silent = TcpStream::connect(s.addr).await.unwrap();

    // The server keeps serving: the open connections and new ones.
    exchange(&mut a, &mut b, chat, "still-there").await;
    let mut b2 = wss(&ca, s.addr, 2).await;
    exchange(&mut a, &mut b2, chat, "new-client").await;
    // Metrics stay plain HTTP on their own port and count the TLS clients.
    let (st, body) = http_get(s.metrics.unwrap(), "/metrics").await;
    assert_eq!(st, 200);
    let conns: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("chat_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(conns, 3.0);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let ca = Ca::new("tern test CA");
    let (cert1, key1, der1) = ca.leaf("edge-1");
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &cert1, &key1);
    let s = tls_server(dir.path(), &["--tls-reload-seconds", "1"]).await;
    assert_eq!(tls_connect(&ca, s.addr).await.1, der1);
    let chat = create_chat(&ca, s.addr).await;
    let mut a = wss(&ca, s.addr, 1).await;
    let mut b = wss(&ca, s.addr, 2).await;

    // A key that does not fit the certificate: ignored, the old pair stays.
    let (cert2, key2, der2) = ca.leaf("edge-2");
    write_pair(dir.path(), &cert2, &key1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(tls_connect(&ca, s.addr).await.1, der1);
    assert!(s.log().contains("do not load"), "{}", s.log());

    // The full new pair: new handshakes get it within a few reload periods.
    write_pair(dir.path(), &cert2, &key2);
    let t0 = Instant::now();
    loop {
        if tls_connect(&ca, s.addr).await.1 == der2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Connections opened under the old certificate keep working.
    exchange(&mut a, &mut b, chat, "after-rotation").await;
}
