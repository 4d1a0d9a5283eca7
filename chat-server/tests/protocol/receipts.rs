use crate::support::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn receipts_flow_to_the_sender_and_never_regress() {
    let s = TestServer::start_with(&["--receipt-flush-ms", "100"]).await;
    let chat = s.api(1).direct(2).await;
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    for i in 1..=5 {
        a.send_msg(chat, &format!("m{i}"), &format!("r{i}")).await;
    }
    for _ in 0..5 {
        b.expect("message").await;
    }
    b.send(json!({"type":"delivered","chat_id":chat,"seq":5}))
        .await;
    let r = a.expect("receipt").await;
    assert_eq!(
        (
            r["chat_id"].as_u64(),
            r["user_id"].as_u64(),
            r["status"].as_str(),
            r["seq"].as_u64()
        ),
        (Some(chat), Some(2), Some("delivered"), Some(5))
    );
    b.send(json!({"type":"read","chat_id":chat,"seq":3})).await;
    let r = a.expect("receipt").await;
    assert_eq!(
        (r["status"].as_str(), r["seq"].as_u64()),
        (Some("read"), Some(3))
    );

    // Going backwards changes nothing and announces nothing.
    b.send(json!({"type":"read","chat_id":chat,"seq":1})).await;
    b.send(json!({"type":"delivered","chat_id":chat,"seq":2}))
        .await;
    a.expect_none("receipt", Duration::from_millis(400)).await;
    // Beyond the last message: clamped to it.
    b.send(json!({"type":"read","chat_id":chat,"seq":99})).await;
    let r = a.expect("receipt").await;
    assert_eq!(
        (r["status"].as_str(), r["seq"].as_u64()),
        (Some("read"), Some(5))
    );

    let m2 = s.api(1).marks_of(chat, 2).await;
    assert_eq!(
        (m2["delivered_seq"].as_u64(), m2["read_seq"].as_u64()),
        (Some(5), Some(5))
    );
    // The sender's status per message.
    let h = s.api(1).history(chat, "").await;
    assert!(
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "read"),
        "{h}"
    );
    // The reader does not get its own receipts back.
    b.expect_none("receipt", Duration::from_millis(200)).await;
}

#[tokio::test]
async fn group_status_needs_every_member() {
    let s = TestServer::start_with(&["--receipt-flush-ms", "50"]).await;
    let chat = s.api(1).group(&[2, 3]).await;
    s.api(1).send(chat, "hello all").await;
    let mut b = s.ws(2).await;
    b.send(json!({"type":"read","chat_id":chat,"seq":1})).await;
    b.assert_alive().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = |h: serde_json::Value| h["messages"][0]["status"].as_str().unwrap().to_string();
    assert_eq!(status(s.api(1).history(chat, "").await), "sent");
    let mut c = s.ws(3).await;
    c.send(json!({"type":"delivered","chat_id":chat,"seq":1}))
        .await;
    c.assert_alive().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(s.api(1).history(chat, "").await), "delivered");
    c.send(json!({"type":"read","chat_id":chat,"seq":1})).await;
    c.assert_alive().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(s.api(1).history(chat, "").await), "read");
}

#[tokio::test]
async fn receipts_survive_a_graceful_restart() {
    let mut s = TestServer::start_with(&["--receipt-flush-ms", "5000"]).await;
    let chat = s.api(1).direct(2).await;
    s.api(1).send(chat, "x").await;
    let mut b = s.ws(2).await;
    b.send(json!({"type":"read","chat_id":chat,"seq":1})).await;
    b.assert_alive().await;
    // SIGTERM flushes pending marks before exit, well before the 5 s flush.
    assert!(s.terminate().success());
    s.restart_ready().await;
    let m2 = s.api(1).marks_of(chat, 2).await;
    assert_eq!(m2["read_seq"], 1);
}
