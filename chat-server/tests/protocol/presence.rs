use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn direct_partners_see_online_and_offline_at_once_on_clean_close() {
    let s = TestServer::start().await;
    s.api(1).direct(2).await;
    let mut b = s.ws(2).await;
    // B connects first: A is offline and has never been seen.
    let p = b.expect("presence").await;
    assert_eq!(
        (p["user_id"].as_u64(), p["status"].as_str()),
        (Some(1), Some("offline"))
    );
    assert!(p["last_seen"].is_null());
    let mut a = s.ws(1).await;
    let p = b.expect("presence").await;
    assert_eq!(
        (p["user_id"].as_u64(), p["status"].as_str()),
        (Some(1), Some("online"))
    );
    // A sees B online right away, without subscribing.
    let p = a.expect("presence").await;
    assert_eq!(
        (p["user_id"].as_u64(), p["status"].as_str()),
        (Some(2), Some("online"))
    );
    let closed = Instant::now();
    a.stream.close(None).await.unwrap();
    let p = b.expect_within("presence", Duration::from_secs(2)).await;
    assert!(closed.elapsed() < Duration::from_secs(1));
    assert_eq!(p["status"], "offline");
    assert!(p["last_seen"].as_str().unwrap().ends_with('Z'));
    let (_, v) = s.api(2).get("/v1/presence?user_ids=1,2").await;
    assert_eq!(v["presence"][0]["status"], "offline");
    assert_eq!(v["presence"][1]["status"], "online");
}

#[tokio::test]
async fn online_while_any_device_is_connected() {
    let s = TestServer::start().await;
    let mut watcher = s.ws(9).await;
    watcher
        .send(json!({"type":"presence_subscribe","user_ids":[1]}))
        .await;
    assert_eq!(watcher.expect("presence").await["status"], "offline");
    let a1 = s.ws(1).await;
    assert_eq!(watcher.expect("presence").await["status"], "online");
    let mut a2 = s.ws(1).await;
    drop(a1);
    watcher
        .expect_none("presence", Duration::from_millis(500))
        .await;
    a2.stream.close(None).await.unwrap();
    assert_eq!(watcher.expect("presence").await["status"], "offline");
}

#[tokio::test]
async fn silent_connection_goes_offline_within_two_heartbeats() {
    let s = TestServer::start_with(&["--heartbeat-interval", "1"]).await;
    s.api(1).direct(2).await;
    let mut b = s.ws(2).await;
    b.expect("presence").await;
    let mut a = s.ws(1).await;
    assert_eq!(a.hello["heartbeat_interval"], 1);
    assert_eq!(b.expect("presence").await["status"], "online");
    // B keeps pinging; A says nothing (a half-open client).
    let start = Instant::now();
    let p = b.expect_keepalive("presence", Duration::from_secs(5)).await;
    assert_eq!(p["status"], "offline");
    let took = start.elapsed();
    assert!(
        took <= Duration::from_millis(2600),
        "offline after {took:?}, promised within two intervals (2 s)"
    );
    // A's server side closed it with the heartbeat-timeout code; B stayed connected.
    assert_eq!(a.close_code(Duration::from_secs(2)).await, Some(4000));
    b.assert_alive().await;
}

#[tokio::test]
async fn a_new_direct_chat_shares_presence_at_once() {
    let s = TestServer::start().await;
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    s.api(1).direct(2).await;
    let p = a.expect("presence").await;
    assert_eq!(
        (p["user_id"].as_u64(), p["status"].as_str()),
        (Some(2), Some("online"))
    );
    let p = b.expect("presence").await;
    assert_eq!(
        (p["user_id"].as_u64(), p["status"].as_str()),
        (Some(1), Some("online"))
    );
    // And later changes flow without subscribing.
    b.stream.close(None).await.unwrap();
    assert_eq!(a.expect("presence").await["status"], "offline");
}
