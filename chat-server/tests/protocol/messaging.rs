use crate::support::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test]
async fn ack_to_sender_message_to_everyone_else() {
    let s = TestServer::start().await;
    let chat = s.api(1).direct(2).await;
    let mut a1 = s.ws(1).await;
    let mut a2 = s.ws(1).await; // the sender's other device
    let mut b = s.ws(2).await;
    assert_eq!(a1.hello["user_id"], 1);
    assert_eq!(a1.hello["heartbeat_interval"], 30);
    assert!(
        a1.hello["session_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    let ack = a1.send_msg(chat, "hello", "c-1").await;
    assert_eq!(
        (ack["chat_id"].as_u64(), ack["seq"].as_u64()),
        (Some(chat), Some(1))
    );
    assert!(ack["message_id"].as_str().is_some());
    assert!(ack["created_at"].as_str().unwrap().ends_with('Z'));

    for ws in [&mut b, &mut a2] {
        let m = ws.expect("message").await;
        assert_eq!(m["content"], "hello");
        assert_eq!(m["sender_id"], 1);
        assert_eq!(m["seq"], 1);
        assert_eq!(m["client_msg_id"], "c-1");
        assert_eq!(m["message_id"], ack["message_id"]);
        assert!(m["media"].is_null() && m["media_url"].is_null());
    }
    // The sending connection gets the ack in place of the message.
    a1.expect_none("message", Duration::from_millis(300)).await;

    // HTTP send reaches WebSocket members too.
    let http_ack = s.api(2).send(chat, "via http").await;
    assert_eq!(http_ack["seq"], 2);
    assert_eq!(a1.expect("message").await["content"], "via http");
}

#[tokio::test]
async fn resending_the_same_client_msg_id_is_idempotent() {
    let s = TestServer::start().await;
    let chat = s.api(1).direct(2).await;
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    let first = a.send_msg(chat, "once", "dup-1").await;
    let again = a.send_msg(chat, "once", "dup-1").await;
    assert_eq!(first["message_id"], again["message_id"]);
    assert_eq!(first["seq"], again["seq"]);
    // Over HTTP too.
    let (st, http) = s
        .api(1)
        .post(
            &format!("/v1/chats/{chat}/messages"),
            json!({"content":"once","client_msg_id":"dup-1"}),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(http["message_id"], first["message_id"]);
    // The same id from another user is another message.
    let other = b.send_msg(chat, "mine", "dup-1").await;
    assert_eq!(other["seq"], 2);
    let h = s.api(1).history(chat, "").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
    assert_eq!(b.expect("message").await["seq"], 1);
    b.expect_none("message", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn ordering_is_gapless_under_concurrent_senders() {
    let s = TestServer::start().await;
    const SENDERS: u64 = 6;
    const EACH: usize = 60;
    let members: Vec<u64> = (2..=SENDERS + 1).collect();
    let chat = s.api(1).group(&members).await;
    let mut reader = s.ws(1).await;
    let mut senders = Vec::new();
    for u in 2..=SENDERS + 1 {
        senders.push(s.ws(u).await);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                // Pipelined: all frames first, then the acks.
                for n in 0..EACH {
                    ws.send(json!({"type":"message","chat_id":chat,"content":format!("{i}:{n}"),"client_msg_id":format!("{i}-{n}")})).await;
                }
                let mut seqs = Vec::new();
                while seqs.len() < EACH {
                    let f = ws.next_frame(Duration::from_secs(10)).await.expect("frame");
                    if f["type"] == "ack" {
                        seqs.push((f["client_msg_id"].as_str().unwrap().to_string(), f["seq"].as_u64().unwrap()));
                    }
                }
                seqs
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        // One connection's messages get increasing seq in the order sent.
        let expected: Vec<String> = (0..EACH)
            .map(|n| format!("{}-{n}", seqs[0].0.split('-').next().unwrap()))
            .collect();
        let got: Vec<String> = seqs.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(got, expected, "acks arrive in send order");
        assert!(
            seqs.windows(2).all(|w| w[0].1 < w[1].1),
            "seq increases per connection"
        );
        acked.extend(seqs.into_iter().map(|(_, s)| s));
    }
    let total = SENDERS as usize * EACH;
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=total as u64).collect::<Vec<_>>(),
        "seq is gapless"
    );
    // The reader sees every message exactly in seq order.
    let mut seen = Vec::new();
    while seen.len() < total {
        let m = reader.expect("message").await;
        seen.push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=total as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn reconnect_and_sync_catches_up() {
    let s = TestServer::start().await;
    let chat = s.api(1).direct(2).await;
    let mut b = s.ws(2).await;
    let a = s.api(1);
    a.send(chat, "m1").await;
    assert_eq!(b.expect("message").await["seq"], 1);
    drop(b); // away
    for i in 2..=130 {
        a.send(chat, &format!("m{i}")).await;
    }
    let mut b = s.ws(2).await;
    let mut got = Vec::new();
    let mut after = 1;
    loop {
        b.send(json!({"type":"sync","chat_id":chat,"after_seq":after,"limit":50}))
            .await;
        let f = b.expect("sync").await;
        assert_eq!(f["chat_id"], chat);
        let msgs = f["messages"].as_array().unwrap();
        for m in msgs {
            got.push(m["seq"].as_u64().unwrap());
        }
        after = *got.last().unwrap();
        if !f["has_more"].as_bool().unwrap() {
            break;
        }
        assert_eq!(msgs.len(), 50);
    }
    assert_eq!(got, (2..=130).collect::<Vec<u64>>());
    // Default limit and an up-to-date device.
    b.send(json!({"type":"sync","chat_id":chat,"after_seq":130}))
        .await;
    let f = b.expect("sync").await;
    assert_eq!(f["messages"].as_array().unwrap().len(), 0);
    assert_eq!(f["has_more"], false);
}

#[tokio::test]
async fn history_pages_in_both_directions() {
    let s = TestServer::start().await;
    let a = s.api(1);
    let chat = a.direct(2).await;
    for i in 1..=120 {
        a.send(chat, &format!("m{i}")).await;
    }
    let seqs = |v: &Value| {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let latest = a.history(chat, "").await;
    assert_eq!(seqs(&latest), (71..=120).collect::<Vec<_>>());
    assert_eq!(latest["has_more"], true);
    let older = a.history(chat, "before_seq=71&limit=60").await;
    assert_eq!(seqs(&older), (11..=70).collect::<Vec<_>>());
    let oldest = a.history(chat, "before_seq=11&limit=200").await;
    assert_eq!(seqs(&oldest), (1..=10).collect::<Vec<_>>());
    assert_eq!(oldest["has_more"], false);
    let forward = a.history(chat, "after_seq=100&limit=10").await;
    assert_eq!(seqs(&forward), (101..=110).collect::<Vec<_>>());
    assert_eq!(forward["has_more"], true);
    let window = a.history(chat, "after_seq=5&before_seq=9").await;
    assert_eq!(seqs(&window), vec![6, 7, 8]);
    // limit is capped at 200.
    let capped = a.history(chat, "after_seq=0&limit=1000").await;
    assert_eq!(seqs(&capped).len(), 120);
    // The sender sees a status on its own messages.
    assert_eq!(latest["messages"][0]["status"], "sent");
}

#[tokio::test]
async fn typing_is_relayed_to_other_members() {
    let s = TestServer::start().await;
    let chat = s.api(1).group(&[2, 3]).await;
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    let mut c = s.ws(3).await;
    a.send(json!({"type":"typing","chat_id":chat})).await;
    for ws in [&mut b, &mut c] {
        let t = ws.expect("typing").await;
        assert_eq!(
            (t["chat_id"].as_u64(), t["user_id"].as_u64()),
            (Some(chat), Some(1))
        );
    }
    a.expect_none("typing", Duration::from_millis(200)).await;
}

#[tokio::test]
async fn group_of_1000_fans_out_to_every_member() {
    let s = TestServer::start().await;
    let members: Vec<u64> = (2..=1000).collect();
    let chat = s.api(1).group(&members).await;
    let mut conns = Vec::new();
    for u in 1..=1000u64 {
        conns.push(s.ws(u).await);
    }
    let mut sender = conns.remove(0);
    for i in 0..3 {
        sender
            .send_msg(chat, &format!("to all {i}"), &format!("all-{i}"))
            .await;
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut seqs = HashSet::new();
                for _ in 0..3 {
                    seqs.insert(
                        ws.expect_within("message", Duration::from_secs(20)).await["seq"]
                            .as_u64()
                            .unwrap(),
                    );
                }
                seqs
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), HashSet::from([1, 2, 3]));
    }
    assert!(s.metric("chat_deliveries_total").await >= 2997.0);
    // 1000 is the limit: one more is refused.
    let (st, _) = s
        .api(1)
        .post(
            &format!("/v1/chats/{chat}/members"),
            json!({"user_ids":[5000]}),
        )
        .await;
    assert_eq!(st, 409);
}

/// The `batch=1` extension (docs/protocol.md): a client that asks for it gets whatever is
/// queued for it as one WebSocket message, one JSON frame per line; a client that does not ask
/// keeps getting exactly one frame per message.
#[tokio::test]
async fn batched_frames_only_for_clients_that_ask_and_in_order() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start().await;
    let chat = s.api(1).direct(2).await;
    s.api(1).direct(3).await;
    let (mut raw, _) = tokio_tungstenite::connect_async(format!("{}&batch=1", s.ws_url(&token(1))))
        .await
        .unwrap();
    async fn next_lines(
        raw: &mut (
                 impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin
             ),
    ) -> Vec<Value> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), raw.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return t
                        .as_str()
                        .split('\n')
                        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
                        .collect();
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("no frame: {other:?}"),
            }
        }
    }
    // hello and both partners' presence are queued before the connection's writer starts:
    // they leave together, hello first.
    let first = next_lines(&mut raw).await;
    let types: Vec<&str> = first.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["hello", "presence", "presence"], "{first:?}");
    // Without asking: one frame per message, as PROTOCOL.md says.
    let (mut plain, _) = tokio_tungstenite::connect_async(s.ws_url(&token(1)))
        .await
        .unwrap();
    assert_eq!(next_lines(&mut plain).await.len(), 1);
    assert_eq!(next_lines(&mut plain).await.len(), 1);
    // The other side sends 40 messages without waiting for acks: all arrive, gapless, in order,
    // however the server grouped them.
    let mut b = s.ws(2).await;
    for i in 0..40 {
        b.send(json!({"type":"message","chat_id":chat,"content":format!("m{i}"),"client_msg_id":format!("b{i}")}))
            .await;
    }
    let mut seqs = vec![];
    while seqs.len() < 40 {
        for f in next_lines(&mut raw).await {
            if f["type"] == "message" {
                assert_eq!(f["content"], format!("m{}", seqs.len()));
                seqs.push(f["seq"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    // Replies to the batched client (its ack) come the same way.
    raw.send(Message::Text(
        json!({"type":"message","chat_id":chat,"content":"back","client_msg_id":"a1"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let ack = loop {
        if let Some(a) = next_lines(&mut raw)
            .await
            .into_iter()
            .find(|f| f["type"] == "ack")
        {
            break a;
        }
    };
    assert_eq!(
        (ack["client_msg_id"].as_str(), ack["seq"].as_u64()),
        (Some("a1"), Some(41))
    );
}
