use crate::support::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_keeps_working() {
    let s = TestServer::start().await;
    let chat = s.api(1).direct(2).await;
    let foreign = s.api(3).direct(4).await;
    let mut a = s.ws(1).await;
    let big = "x".repeat(16 * 1024 + 1);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid"),
        ("[1,2,3]".into(), "invalid"),
        (r#"{"chat_id":1}"#.into(), "invalid"),
        (r#"{"type":"launch_missiles"}"#.into(), "invalid"),
        (
            r#"{"type":"message","content":"no chat"}"#.into(),
            "invalid",
        ),
        (
            format!(r#"{{"type":"message","chat_id":"{chat}","content":"string id"}}"#),
            "invalid",
        ),
        (
            format!(r#"{{"type":"message","chat_id":{chat},"content":42}}"#),
            "invalid",
        ),
        (
            format!(r#"{{"type":"message","chat_id":{chat}}}"#),
            "invalid",
        ),
        (
            format!(
                r#"{{"type":"message","chat_id":{chat},"content":"{big}","client_msg_id":"big"}}"#
            ),
            "too_large",
        ),
        (
            format!(r#"{{"type":"message","chat_id":{foreign},"content":"hi"}}"#),
            "forbidden",
        ),
        (
            r#"{"type":"message","chat_id":123456,"content":"hi"}"#.into(),
            "not_found",
        ),
        (
            format!(r#"{{"type":"read","chat_id":{foreign},"seq":1}}"#),
            "forbidden",
        ),
        (
            format!(r#"{{"type":"sync","chat_id":{foreign},"after_seq":0}}"#),
            "forbidden",
        ),
        (
            format!(r#"{{"type":"typing","chat_id":{foreign}}}"#),
            "forbidden",
        ),
        (
            r#"{"type":"sync","chat_id":-5,"after_seq":0}"#.into(),
            "invalid",
        ),
        (
            r#"{"type":"presence_subscribe","user_ids":"everyone"}"#.into(),
            "invalid",
        ),
        (
            format!(r#"{{"type":"message","chat_id":{chat},"media_id":"nope"}}"#),
            "invalid",
        ),
    ];
    for (frame, code) in &cases {
        a.send_text(frame).await;
        let e = a.expect("error").await;
        assert_eq!(
            e["code"],
            *code,
            "for {}: {e}",
            &frame[..frame.len().min(80)]
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Errors about a chat-scoped frame name the chat.
    a.send(json!({"type":"read","chat_id":foreign,"seq":1}))
        .await;
    assert_eq!(a.expect("error").await["chat_id"], foreign);
    // The too-large send names its client_msg_id.
    a.send_text(&cases[8].0).await;
    assert_eq!(a.expect("error").await["client_msg_id"], "big");
    // Binary frames are refused, not fatal.
    use futures::SinkExt;
    a.stream
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![1, 2, 3].into(),
        ))
        .await
        .unwrap();
    assert_eq!(a.expect("error").await["code"], "invalid");
    a.assert_alive().await;
    // Nothing bad was stored; good messages still flow.
    let ack = a.send_msg(chat, "still fine", "ok-1").await;
    assert_eq!(ack["seq"], 1);
    assert_eq!(
        s.api(3).history(foreign, "").await["messages"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn oversize_frame_closes_only_that_connection() {
    let s = TestServer::start_with(&["--max-frame-bytes", "65536"]).await;
    let chat = s.api(1).direct(2).await;
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    let huge = format!(
        r#"{{"type":"message","chat_id":{chat},"content":"{}"}}"#,
        "y".repeat(200_000)
    );
    let _ = futures::SinkExt::send(
        &mut a.stream,
        tokio_tungstenite::tungstenite::Message::Text(huge.into()),
    )
    .await;
    // a is closed (message too big); b and the server are fine.
    let mut frames = 0;
    while a.next_frame(Duration::from_secs(3)).await.is_some() {
        frames += 1;
        assert!(frames < 10, "connection not closed");
    }
    b.assert_alive().await;
    assert_eq!(s.api(2).send(chat, "after").await["seq"], 1);
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let s = TestServer::start().await;
    let http = reqwest::Client::new();
    let expired = token_with(1, SECRET, -3600);
    let forged = token_with(1, "not-the-secret", 3600);
    for t in [expired.as_str(), forged.as_str(), "garbage"] {
        let r = http
            .get(s.url("/v1/chats"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated");
        match tokio_tungstenite::connect_async(s.ws_url(t)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401)
            }
            other => panic!("websocket upgrade not refused: {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(
        http.get(s.url("/v1/chats"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    match tokio_tungstenite::connect_async(format!("ws://{}/ws", s.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!(
            "websocket without token not refused: {:?}",
            other.map(|_| ())
        ),
    }
    // The Authorization header works for WebSocket too.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws", s.addr).into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(5)).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = futures::StreamExt::next(&mut ws).await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"user_id\":5"));
}

#[tokio::test]
async fn bad_http_requests_get_json_errors() {
    let s = TestServer::start().await;
    let a = s.api(1);
    let chat = a.direct(2).await;
    let (st, e) = a.req(reqwest::Method::POST, "/v1/chats", None).await;
    assert_eq!((st, e["error"]["code"].as_str()), (400, Some("invalid")));
    let raw = a
        .http
        .post(s.url("/v1/chats"))
        .bearer_auth(&a.token)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(a.post("/v1/chats", json!({"type":"channel"})).await.0, 400);
    assert_eq!(
        a.post("/v1/chats", json!({"type":"group","members":["x"]}))
            .await
            .0,
        400
    );
    assert_eq!(
        a.post("/v1/chats", json!({"type":"group","members":[0]}))
            .await
            .0,
        400
    );
    assert_eq!(a.get("/v1/chats/abc").await.0, 400);
    assert_eq!(a.get("/v1/chats/999999").await.0, 404);
    assert_eq!(s.api(7).get(&format!("/v1/chats/{chat}")).await.0, 403);
    assert_eq!(
        s.api(7)
            .post(
                &format!("/v1/chats/{chat}/messages"),
                json!({"content":"x"})
            )
            .await
            .0,
        403
    );
    assert_eq!(
        a.get(&format!("/v1/chats/{chat}/messages?limit=abc"))
            .await
            .0,
        400
    );
    assert_eq!(
        a.post(&format!("/v1/chats/{chat}/messages"), json!({"content":""}))
            .await
            .0,
        400
    );
    let (st, e) = a
        .post(
            &format!("/v1/chats/{chat}/messages"),
            json!({"content":"x".repeat(17000)}),
        )
        .await;
    assert_eq!((st, e["error"]["code"].as_str()), (413, Some("too_large")));
    assert_eq!(a.get("/v1/presence?user_ids=1,x").await.0, 400);
    let (st, e) = a.get("/v1/nope").await;
    assert_eq!((st, e["error"]["code"].as_str()), (404, Some("not_found")));
    // Dev tokens only with --dev-auth (on in tests) and for valid ids.
    assert_eq!(a.post("/v1/dev/token", json!({"user_id":0})).await.0, 400);
    assert_eq!(a.post("/v1/dev/token", json!({"user_id":3})).await.0, 200);
    // Still serving.
    assert_eq!(a.send(chat, "fine").await["seq"], 1);
}

#[tokio::test]
async fn slow_and_half_open_http_requests_time_out() {
    let s = TestServer::start_with(&["--request-timeout", "1"]).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap(); // never finished
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
        .await
        .expect("server closed the slow request");
    // Either a 408 or a plain close, but never a hang.
    let text = String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).to_string();
    assert!(text.is_empty() || text.contains("408"), "{text}");
    assert_eq!(s.status("/healthz").await, 200);
}

#[tokio::test]
async fn dev_auth_is_off_unless_asked_for() {
    let s = TestServer::start_without_dev_auth().await;
    let (st, _) = s.api(1).post("/v1/dev/token", json!({"user_id":1})).await;
    assert_eq!(st, 404);
}
