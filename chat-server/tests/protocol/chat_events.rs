//! `chat` frames: created / member_added / member_removed / updated reach every live device
//! (WebSocket and long-poll, on every edge) of every member concerned, and nobody else.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The next `chat` frame about `chat` (others stay in the backlog).
async fn chat_event(ws: &mut Ws, chat: u64) -> Value {
    loop {
        let f = ws.expect("chat").await;
        if f["chat"]["chat_id"] == chat {
            return f;
        }
    }
}

fn member_ids(f: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = f["chat"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn group_events_reach_every_member_device_and_only_them() {
    let s = TestServer::start().await;
    // Devices spread over the edges (clients alternate); user 2 also on long-poll on the last.
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    let mut c = s.ws(3).await;
    let mut d = s.ws(4).await;
    let mut outsider = s.ws(5).await;
    let (mut b_lp, _) =
        LongPoll::open(&format!("http://{}", s.edge(s.last_edge())), &token(2)).await;

    // created: to every initial member, with the chat object of GET /v1/chats/{id}.
    let (st, created) = s
        .api(1)
        .post(
            "/v1/chats",
            json!({"type":"group","title":"Trip","members":[2,3]}),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let g = created["chat_id"].as_u64().unwrap();
    for ws in [&mut a, &mut b, &mut c] {
        let f = chat_event(ws, g).await;
        assert_eq!(f["event"], "created");
        assert_eq!(f["chat"]["title"], "Trip");
        assert_eq!(f["chat"]["type"], "group");
        assert_eq!(member_ids(&f), vec![1, 2, 3]);
        assert!(f.get("user_ids").is_none(), "{f}");
    }
    let f = b_lp.expect("chat", Duration::from_secs(5)).await;
    assert_eq!(
        (f["event"].as_str(), f["chat"]["chat_id"].as_u64()),
        (Some("created"), Some(g))
    );

    // member_added: to the old and the new members; user_ids = the ones actually added.
    let (st, v) = s
        .api(1)
        .post(
            &format!("/v1/chats/{g}/members"),
            json!({"user_ids":[4, 2]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    for ws in [&mut a, &mut b, &mut c, &mut d] {
        let f = chat_event(ws, g).await;
        assert_eq!(f["event"], "member_added", "{f}");
        assert_eq!(f["user_ids"], json!([4]));
        assert_eq!(member_ids(&f), vec![1, 2, 3, 4]);
    }
    let f = b_lp.expect("chat", Duration::from_secs(5)).await;
    assert_eq!(f["event"], "member_added");

    // updated: the title change, to everyone.
    let (st, v) = s
        .api(1)
        .req(
            reqwest::Method::PATCH,
            &format!("/v1/chats/{g}"),
            Some(json!({"title":"Trip 2026"})),
        )
        .await;
    assert_eq!((st, v["title"].as_str()), (200, Some("Trip 2026")), "{v}");
    for ws in [&mut a, &mut b, &mut c, &mut d] {
        let f = chat_event(ws, g).await;
        assert_eq!(
            (f["event"].as_str(), f["chat"]["title"].as_str()),
            (Some("updated"), Some("Trip 2026"))
        );
    }
    assert_eq!(
        s.api(3).get(&format!("/v1/chats/{g}")).await.1["title"],
        "Trip 2026"
    );

    // member_removed: to the remaining members and the removed one, and then nothing more.
    let (st, _) = s.api(1).delete(&format!("/v1/chats/{g}/members/3")).await;
    assert_eq!(st, 204);
    for ws in [&mut a, &mut b, &mut d, &mut c] {
        let f = chat_event(ws, g).await;
        assert_eq!(f["event"], "member_removed", "{f}");
        assert_eq!(f["user_ids"], json!([3]));
        assert_eq!(member_ids(&f), vec![1, 2, 4]);
    }
    let f = b_lp.expect("chat", Duration::from_secs(5)).await;
    assert_eq!(f["event"], "updated");
    let f = b_lp.expect("chat", Duration::from_secs(5)).await;
    assert_eq!(f["event"], "member_removed");
    b.send_msg(g, "after 3 left", "m1").await;
    b.send(json!({"type":"typing","chat_id":g})).await;
    let (st, _) = s
        .api(1)
        .req(
            reqwest::Method::PATCH,
            &format!("/v1/chats/{g}"),
            Some(json!({"title":"Secret"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(chat_event(&mut d, g).await["event"], "updated");
    c.expect_none("message", Duration::from_millis(500)).await;
    c.expect_none("typing", Duration::from_millis(10)).await;
    c.expect_none("chat", Duration::from_millis(10)).await;
    // The device that was away learns from the chat list.
    let (_, list) = s.api(3).get("/v1/chats").await;
    assert!(
        !list["chats"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["chat_id"] == g),
        "{list}"
    );

    // Leaving is a removal too: the leaver's devices get it.
    let (st, _) = s.api(4).delete(&format!("/v1/chats/{g}/members/4")).await;
    assert_eq!(st, 204);
    let f = chat_event(&mut d, g).await;
    assert_eq!(
        (f["event"].as_str(), f["user_ids"].clone()),
        (Some("member_removed"), json!([4]))
    );
    assert_eq!(chat_event(&mut a, g).await["event"], "updated");
    assert_eq!(chat_event(&mut a, g).await["event"], "member_removed");

    // Nothing ever reached the outsider.
    outsider
        .expect_none("chat", Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_new_direct_chat_is_announced_to_both_once() {
    let s = TestServer::start().await;
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    let chat = s.api(1).direct(2).await;
    for ws in [&mut a, &mut b] {
        let f = chat_event(ws, chat).await;
        assert_eq!(
            (f["event"].as_str(), f["chat"]["type"].as_str()),
            (Some("created"), Some("direct"))
        );
        assert_eq!(member_ids(&f), vec![1, 2]);
    }
    // Asking again answers 200 with the same chat and announces nothing.
    assert_eq!(s.api(2).direct(1).await, chat);
    a.expect_none("chat", Duration::from_millis(300)).await;
    b.expect_none("chat", Duration::from_millis(10)).await;
}

#[tokio::test]
async fn title_changes_are_checked() {
    let s = TestServer::start().await;
    let g = s.api(1).group(&[2]).await;
    let direct = s.api(1).direct(2).await;
    let patch = |user: u64, chat: u64, body: Value| {
        let api = s.api(user);
        async move {
            api.req(
                reqwest::Method::PATCH,
                &format!("/v1/chats/{chat}"),
                Some(body),
            )
            .await
        }
    };
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();
    let (st, v) = patch(2, g, json!({"title":"mine now"})).await;
    assert_eq!(
        (st, code(&v)),
        (403, "forbidden".into()),
        "members are not admins: {v}"
    );
    let (st, v) = patch(3, g, json!({"title":"x"})).await;
    assert_eq!((st, code(&v)), (403, "forbidden".into()), "{v}");
    let (st, v) = patch(1, direct, json!({"title":"x"})).await;
    assert_eq!((st, code(&v)), (400, "invalid".into()), "{v}");
    let (st, v) = patch(1, g, json!({"title":"t".repeat(201)})).await;
    assert_eq!((st, code(&v)), (400, "invalid".into()));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("200"),
        "{v}"
    );
    let (st, v) = patch(1, g, json!({"title":"line\nbreak"})).await;
    assert_eq!((st, code(&v)), (400, "invalid".into()));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("control"),
        "{v}"
    );
    let (st, v) = patch(1, g, json!({"title": 5})).await;
    assert_eq!((st, code(&v)), (400, "invalid".into()), "{v}");
    let (st, v) = patch(1, g, json!({})).await;
    assert_eq!((st, code(&v)), (400, "invalid".into()), "{v}");
    let (st, v) = patch(1, 123_456_789, json!({"title":"x"})).await;
    assert_eq!((st, code(&v)), (404, "not_found".into()), "{v}");
    // null clears the title.
    let (st, v) = patch(1, g, json!({"title": null})).await;
    assert_eq!(st, 200, "{v}");
    assert!(v.get("title").is_none(), "{v}");
    // Creating with a bad title is refused the same way.
    let (st, v) = s
        .api(1)
        .post(
            "/v1/chats",
            json!({"type":"group","title":"a\u{7}b","members":[2]}),
        )
        .await;
    assert_eq!((st, code(&v)), (400, "invalid".into()), "{v}");
}
