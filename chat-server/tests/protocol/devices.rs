//! Every device of a user in step: a user's own `delivered`/`read` marks reach their other
//! devices (WebSocket and long-poll, on any edge) as `receipt` frames with their own
//! `user_id`, and not the device that sent the mark.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

fn is_own_receipt(f: &Value, user: u64) -> bool {
    f["type"] == "receipt" && f["user_id"] == user
}

#[tokio::test]
async fn reading_on_one_device_clears_the_others() {
    let s = TestServer::start_with(&["--receipt-flush-ms", "100"]).await;
    let chat = s.api(1).direct(2).await;
    let mut sender = s.ws_at(0, 1).await;
    // User 2: a phone on a WebSocket on the first edge, a laptop on long-poll on the last
    // edge and a tablet on a WebSocket there too (other processes on a cluster).
    let mut phone = s.ws_at(0, 2).await;
    let mut tablet = s.ws_at(s.last_edge(), 2).await;
    let laptop_base = format!("http://{}", s.edge(s.last_edge()));
    let (mut laptop, _) = LongPoll::open(&laptop_base, &token(2)).await;
    for i in 1..=3 {
        sender
            .send_msg(chat, &format!("m{i}"), &format!("c{i}"))
            .await;
    }
    for _ in 0..3 {
        phone.expect("message").await;
    }
    let (_, list) = s.api(2).get("/v1/chats").await;
    assert_eq!(list["chats"][0]["unread"], 3, "{list}");

    // The phone reads: the laptop and the tablet learn it, the sender too; the phone does not.
    phone
        .send(json!({"type":"read","chat_id":chat,"seq":3}))
        .await;
    let r = laptop.expect("receipt", Duration::from_secs(5)).await;
    assert!(is_own_receipt(&r, 2), "{r}");
    let mut got = vec![(r["status"].clone(), r["seq"].clone())];
    got.push({
        let r = laptop.expect("receipt", Duration::from_secs(5)).await;
        (r["status"].clone(), r["seq"].clone())
    });
    got.sort_by_key(|(s, _)| s.to_string());
    assert_eq!(
        got,
        vec![(json!("delivered"), json!(3)), (json!("read"), json!(3))]
    );
    let r = tablet.expect("receipt").await;
    assert_eq!(
        (r["user_id"].as_u64(), r["chat_id"].as_u64()),
        (Some(2), Some(chat))
    );
    let r = sender.expect("receipt").await;
    assert_eq!(r["user_id"], 2);
    phone
        .expect_none("receipt", Duration::from_millis(400))
        .await;
    let (_, list) = s.api(2).get("/v1/chats").await;
    assert_eq!(list["chats"][0]["unread"], 0, "{list}");

    // The laptop (long-poll) reads newer messages: the phone and the tablet learn it.
    sender.send_msg(chat, "m4", "c4").await;
    sender.send_msg(chat, "m5", "c5").await;
    laptop.backlog.clear();
    let answers = laptop
        .frame(json!({"type":"read","chat_id":chat,"seq":5}))
        .await;
    assert!(answers.is_empty(), "{answers:?}");
    for ws in [&mut phone, &mut tablet] {
        // (The tablet may still hold the earlier delivered/read 3.)
        loop {
            let r = ws.expect("receipt").await;
            assert_eq!(r["user_id"], 2, "{r}");
            if r["status"] == "read" && r["seq"] == 5 {
                break;
            }
        }
    }
    laptop
        .expect_none(Duration::from_millis(500), |f| {
            is_own_receipt(f, 2) && f["seq"] == 5
        })
        .await;
}

#[tokio::test]
async fn own_receipts_stay_within_the_user_and_the_chat() {
    let s = TestServer::start_with(&["--receipt-flush-ms", "100"]).await;
    let g = s.api(1).group(&[2]).await;
    s.api(1).send(g, "hi").await;
    let mut reader = s.ws(2).await;
    let mut other_device = s.ws(2).await;
    let mut outsider = s.ws(3).await;
    reader
        .send(json!({"type":"read","chat_id":g,"seq":1}))
        .await;
    let r = other_device.expect("receipt").await;
    assert_eq!(
        (r["user_id"].as_u64(), r["status"].as_str()),
        (Some(2), Some("delivered"))
    );
    let r = other_device.expect("receipt").await;
    assert_eq!(
        (r["user_id"].as_u64(), r["status"].as_str()),
        (Some(2), Some("read"))
    );
    outsider
        .expect_none("receipt", Duration::from_millis(400))
        .await;
    reader
        .expect_none("receipt", Duration::from_millis(10))
        .await;
}
