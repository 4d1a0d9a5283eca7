//! Names: a token's `name` claim and `PATCH /v1/me` (dev auth) set a user's display name;
//! `hello` and member objects carry it, stored exactly as given; bad names are `invalid`.

use crate::support::*;
use serde_json::{Value, json};

const XSS: &str = "<img src=x onerror=alert(1)>";

fn member_name(chat: &Value, user: u64) -> Value {
    chat["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == user)
        .unwrap()
        .get("name")
        .cloned()
        .unwrap_or(Value::Null)
}

async fn patch_me(s: &TestServer, user: u64, body: Value) -> (u16, Value) {
    s.api(user)
        .req(reqwest::Method::PATCH, "/v1/me", Some(body))
        .await
}

#[tokio::test]
async fn the_token_name_is_kept_and_shown_to_members() {
    let s = TestServer::start().await;
    let chat = s.api(1).direct(7).await;
    // No name yet: hello and the member object have none.
    let ws = Ws::connect(&s.ws_url(&token(7))).await;
    assert!(ws.hello.get("name").is_none(), "{}", ws.hello);
    let (_, c) = s.api(1).get(&format!("/v1/chats/{chat}")).await;
    assert_eq!(member_name(&c, 7), Value::Null);

    let ws = Ws::connect(&s.ws_url(&token_named(7, json!("Ada")))).await;
    assert_eq!(ws.hello["name"], "Ada");
    let (_, c) = s.api(1).get(&format!("/v1/chats/{chat}")).await;
    assert_eq!(member_name(&c, 7), "Ada");
    // Kept: a later token without the claim (on another edge) still gets it.
    let ws = Ws::connect(&s.ws_url(&token(7))).await;
    assert_eq!(ws.hello["name"], "Ada");
    // The latest claim wins; long-poll sessions take it too.
    let base = format!("http://{}", s.edge(s.last_edge()));
    let (_lp, hello) = LongPoll::open(&base, &token_named(7, json!("Ada L."))).await;
    assert_eq!(hello["name"], "Ada L.");
    assert_eq!(
        s.api(7).get("/v1/me").await.1,
        json!({"user_id":7,"name":"Ada L."})
    );
    // A bad claim never makes a valid token invalid: it is ignored.
    for bad in [json!(5), json!("x".repeat(65)), json!("tab\there")] {
        let ws = Ws::connect(&s.ws_url(&token_named(7, bad))).await;
        assert_eq!(ws.hello["name"], "Ada L.");
    }
}

#[tokio::test]
async fn names_are_stored_as_given_and_bad_ones_refused() {
    let s = TestServer::start().await;
    let g = s.api(1).group(&[2]).await;
    let (st, v) = patch_me(&s, 2, json!({"name": XSS})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"user_id": 2, "name": XSS}));
    // Not escaped by the server: escaping is the client's job (see the browser test).
    let (_, c) = s.api(1).get(&format!("/v1/chats/{g}")).await;
    assert_eq!(member_name(&c, 2), XSS);
    let ws = s.ws(2).await;
    assert_eq!(ws.hello["name"], XSS);
    let long = "é".repeat(64);
    assert_eq!(
        patch_me(&s, 1, json!({"name": long})).await.0,
        200,
        "64 characters fit"
    );

    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();
    let message = |v: &Value| v["error"]["message"].as_str().unwrap_or("").to_string();
    let (st, v) = patch_me(&s, 2, json!({"name": "x".repeat(65)})).await;
    assert_eq!((st, code(&v)), (400, "invalid".into()));
    assert!(message(&v).contains("64"), "{v}");
    for bad in ["bell\u{7}", "new\nline", "del\u{7f}", "rtl\u{202e}txt"] {
        let (st, v) = patch_me(&s, 2, json!({ "name": bad })).await;
        assert_eq!((st, code(&v)), (400, "invalid".into()), "{bad:?}: {v}");
        assert!(message(&v).contains("control"), "{v}");
    }
    for bad in [
        json!({"name": 5}),
        json!({"name": null}),
        json!({}),
        json!({"name": "  "}),
    ] {
        let (st, v) = patch_me(&s, 2, bad.clone()).await;
        assert_eq!((st, code(&v)), (400, "invalid".into()), "{bad}: {v}");
    }
    // Nothing bad was stored.
    assert_eq!(s.api(2).get("/v1/me").await.1["name"], XSS);
}

#[tokio::test]
async fn only_dev_auth_servers_take_names_over_http() {
    let s = TestServer::start_without_dev_auth().await;
    let (st, v) = patch_me(&s, 2, json!({"name": "Bob"})).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    // The token's claim still works there.
    let ws = Ws::connect(&s.ws_url(&token_named(2, json!("Bob")))).await;
    assert_eq!(ws.hello["name"], "Bob");
}
