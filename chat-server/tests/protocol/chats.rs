use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn direct_chat_is_unique_per_pair() {
    let s = TestServer::start().await;
    let (a, b) = (s.api(1), s.api(2));
    let (st1, c1) = a
        .post("/v1/chats", json!({"type":"direct","members":[2]}))
        .await;
    assert_eq!(st1, 201);
    let (st2, c2) = a
        .post("/v1/chats", json!({"type":"direct","members":[2]}))
        .await;
    let (st3, c3) = b
        .post("/v1/chats", json!({"type":"direct","members":[1]}))
        .await;
    assert_eq!((st2, st3), (200, 200));
    assert_eq!(c1["chat_id"], c2["chat_id"]);
    assert_eq!(c1["chat_id"], c3["chat_id"]);
    assert_eq!(c1["type"], "direct");
    assert_eq!(c1["members"].as_array().unwrap().len(), 2);
    // Not with yourself, not with two people.
    assert_eq!(
        a.post("/v1/chats", json!({"type":"direct","members":[1]}))
            .await
            .0,
        400
    );
    assert_eq!(
        a.post("/v1/chats", json!({"type":"direct","members":[2,3]}))
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn groups_roles_add_remove_leave() {
    let s = TestServer::start().await;
    let (admin, member, outsider) = (s.api(1), s.api(2), s.api(9));
    let (st, g) = admin
        .post(
            "/v1/chats",
            json!({"type":"group","title":"team","members":[2,3]}),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(g["title"], "team");
    let chat = g["chat_id"].as_u64().unwrap();
    let roles: Vec<(u64, String)> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(roles.contains(&(1, "admin".into())) && roles.contains(&(2, "member".into())));

    // Only admins add; outsiders see nothing.
    assert_eq!(
        member
            .post(
                &format!("/v1/chats/{chat}/members"),
                json!({"user_ids":[4]})
            )
            .await
            .0,
        403
    );
    assert_eq!(outsider.get(&format!("/v1/chats/{chat}")).await.0, 403);
    let (st, g) = admin
        .post(
            &format!("/v1/chats/{chat}/members"),
            json!({"user_ids":[4,5]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(g["members"].as_array().unwrap().len(), 5);

    // A member cannot remove others, but can leave; an admin can remove.
    assert_eq!(
        member
            .delete(&format!("/v1/chats/{chat}/members/3"))
            .await
            .0,
        403
    );
    assert_eq!(
        member
            .delete(&format!("/v1/chats/{chat}/members/2"))
            .await
            .0,
        204
    );
    assert_eq!(
        member.get(&format!("/v1/chats/{chat}/messages")).await.0,
        403
    );
    assert_eq!(
        admin.delete(&format!("/v1/chats/{chat}/members/3")).await.0,
        204
    );
    assert_eq!(
        admin.delete(&format!("/v1/chats/{chat}/members/3")).await.0,
        404
    );
    let (_, g) = admin.get(&format!("/v1/chats/{chat}")).await;
    let ids: Vec<u64> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&2) && !ids.contains(&3));

    // The last admin leaving hands the group to the longest-standing member.
    assert_eq!(
        admin.delete(&format!("/v1/chats/{chat}/members/1")).await.0,
        204
    );
    let (_, g) = s.api(4).get(&format!("/v1/chats/{chat}")).await;
    assert!(
        g["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "admin"),
        "{g}"
    );
}

#[tokio::test]
async fn group_limit_is_enforced_atomically() {
    let s = TestServer::start_with(&["--group-limit", "5"]).await;
    let admin = s.api(1);
    assert_eq!(
        admin
            .post("/v1/chats", json!({"type":"group","members":[2,3,4,5,6]}))
            .await
            .0,
        409
    );
    let chat = admin.group(&[2, 3]).await;
    let (st, e) = admin
        .post(
            &format!("/v1/chats/{chat}/members"),
            json!({"user_ids":[4,5,6]}),
        )
        .await;
    assert_eq!(st, 409);
    assert_eq!(e["error"]["code"], "group_full");
    let (_, g) = admin.get(&format!("/v1/chats/{chat}")).await;
    assert_eq!(
        g["members"].as_array().unwrap().len(),
        3,
        "nothing was added"
    );
    // Re-adding existing members does not count against the limit.
    assert_eq!(
        admin
            .post(
                &format!("/v1/chats/{chat}/members"),
                json!({"user_ids":[2,3,4,5]})
            )
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn chat_list_has_last_seq_read_seq_and_unread() {
    let s = TestServer::start_with(&["--receipt-flush-ms", "50"]).await;
    let (a, b) = (s.api(1), s.api(2));
    let chat = a.direct(2).await;
    for i in 0..3 {
        a.send(chat, &format!("m{i}")).await;
    }
    let (_, list) = b.get("/v1/chats").await;
    let c = &list["chats"][0];
    assert_eq!(
        (
            c["chat_id"].as_u64().unwrap(),
            c["last_seq"].as_u64(),
            c["read_seq"].as_u64(),
            c["unread"].as_u64()
        ),
        (chat, Some(3), Some(0), Some(3))
    );
    // The sender has no unread messages of its own.
    let (_, list) = a.get("/v1/chats").await;
    assert_eq!(list["chats"][0]["unread"], 0);
    let mut ws = s.ws(2).await;
    ws.send(json!({"type":"read","chat_id":chat,"seq":2})).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, list) = b.get("/v1/chats").await;
    assert_eq!(
        (
            list["chats"][0]["read_seq"].as_u64(),
            list["chats"][0]["unread"].as_u64()
        ),
        (Some(2), Some(1))
    );
}
