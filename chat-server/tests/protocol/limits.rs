use crate::support::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn defaults_let_a_burst_of_100_through() {
    let s = TestServer::start().await;
    let chat = s.api(1).direct(2).await;
    let mut a = s.ws(1).await;
    for i in 0..100 {
        a.send(json!({"type":"message","chat_id":chat,"content":format!("b{i}"),"client_msg_id":format!("b{i}")})).await;
    }
    let mut acks = 0;
    while acks < 100 {
        let f = a.next_frame(Duration::from_secs(5)).await.expect("frame");
        assert_ne!(f["type"], "error", "{f}");
        if f["type"] == "ack" {
            acks += 1;
        }
    }
}

#[tokio::test]
async fn flooding_gets_rate_limited_and_nothing_else_breaks() {
    let s = TestServer::start_with(&["--rate-limit", "5", "--rate-burst", "10"]).await;
    let chat = s.api(1).direct(2).await;
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    for i in 0..30 {
        a.send(json!({"type":"message","chat_id":chat,"content":"flood","client_msg_id":format!("f{i}")})).await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 30 {
        let f = a.next_frame(Duration::from_secs(5)).await.expect("frame");
        match f["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(f["code"], "rate_limited");
                assert!(f["client_msg_id"].as_str().unwrap().starts_with('f'));
                limited += 1;
            }
            _ => {}
        }
    }
    assert!((10..=12).contains(&acks), "{acks} acked");
    assert_eq!(acks + limited, 30);
    // b is unaffected and a recovers after a pause.
    b.assert_alive().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.send_msg(chat, "later", "later").await;
}

#[tokio::test]
async fn connection_cap_refuses_with_503() {
    let s = TestServer::start_with(&["--max-connections", "3"]).await;
    let _c: Vec<Ws> = futures::future::join_all((1..=3).map(|u| s.ws(u))).await;
    match tokio_tungstenite::connect_async(s.ws_url(&token(4))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    assert_eq!(s.metric("chat_connections").await, 3.0);
    drop(_c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.metric("chat_connections").await, 0.0);
    s.ws(4).await.assert_alive().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_resyncs() {
    let s = TestServer::start_with(&[
        "--send-queue",
        "16",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ])
    .await;
    let chat = s.api(1).direct(2).await;
    let mut sender = s.ws(1).await;
    let mut stuck = Ws::connect_tiny_rcvbuf(s.addr, &s.ws_url(&token(2))).await; // never reads while the flood runs
    let content = "z".repeat(16_000);
    let mut last = 0;
    for i in 0..800 {
        // The sender reads its acks (its own queue is small too).
        last = sender.send_msg(chat, &content, &format!("s{i}")).await["seq"]
            .as_u64()
            .unwrap();
        // Stop flooding once the kick happened: the stuck client must start reading within
        // the server's write timeout to receive the close frame behind the buffered data.
        if i >= 100 && i % 20 == 0 && s.metric("chat_slow_consumers_total").await >= 1.0 {
            break;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.metric("chat_slow_consumers_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "slow consumer never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stuck client drains what was buffered and then sees the slow-consumer close.
    assert_eq!(stuck.close_code(Duration::from_secs(20)).await, Some(4008));
    // The sender was not affected, and the stuck client catches up with sync.
    sender.assert_alive().await;
    assert!(last > 0);
    let mut again = s.ws(2).await;
    again
        .send(json!({"type":"sync","chat_id":chat,"after_seq":0,"limit":200}))
        .await;
    let f = again.expect("sync").await;
    // 16 KB messages: the page is cut at about 1 MiB and says there is more.
    let n = f["messages"].as_array().unwrap().len();
    assert!((50..200).contains(&n), "{n}");
    assert_eq!(f["messages"][0]["seq"], 1);
    assert_eq!(f["has_more"], true);
}
