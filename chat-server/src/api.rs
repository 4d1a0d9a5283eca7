//! HTTP API under `/v1` (PROTOCOL.md "HTTP API"), health, readiness and metrics.

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::{Chat, ChatId, ChatType, MAX_ID, UserId, message_status};
use crate::protocol::{self, ChatEvent, SendFrame};
use crate::state::AppState;
use crate::store::Page;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A JSON body whose errors are protocol errors (400 `invalid` with the reason).
fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::invalid(format!("bad JSON body: {e}")))
}

fn parse_id(s: &str, what: &str) -> Result<u64> {
    match s.parse::<u64>() {
        Ok(id) if id > 0 && id <= MAX_ID => Ok(id),
        _ => Err(Error::invalid(format!(
            "{what} must be a positive integer below 2^53"
        ))),
    }
}

fn query_u64(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>> {
    match q.get(key) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid(format!("{key} must be a non-negative integer"))),
    }
}

#[derive(Deserialize)]
struct CreateChat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    members: Vec<u64>,
}

fn check_user_ids(ids: &[u64]) -> Result<()> {
    for id in ids {
        protocol::check_id("user_id", *id)?;
    }
    Ok(())
}

/// The chat object of `GET /v1/chats/{id}`: with its members and their names.
async fn chat_with_members(st: &AppState, chat: Chat) -> Result<Value> {
    let mut members = st.store.members(chat.chat_id).await?;
    let ids: Vec<UserId> = members.iter().map(|m| m.user_id).collect();
    let mut names = st.store.user_names(&ids).await?;
    for m in &mut members {
        m.name = names.remove(&m.user_id);
    }
    let mut c = chat;
    c.members = Some(members);
    serde_json::to_value(c).map_err(Error::internal)
}

/// The user ids of a chat object's `members`.
fn member_ids(chat: &Value) -> Vec<UserId> {
    chat["members"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["user_id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Send a `chat` frame to every live connection (on every edge) of `to`.
async fn announce_chat(
    st: &AppState,
    event: ChatEvent,
    chat: &Value,
    to: &[UserId],
    user_ids: &[UserId],
) {
    let f = crate::hub::frame(protocol::chat_frame(event, chat, user_ids));
    st.fan_out(to, &f).await;
}

pub async fn create_chat(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    body: Bytes,
) -> Result<Response> {
    let req: CreateChat = json_body(&body)?;
    check_user_ids(&req.members)?;
    match ChatType::parse(&req.kind) {
        Some(ChatType::Direct) => {
            let [other] = req.members[..] else {
                return Err(Error::invalid(
                    "a direct chat needs exactly one other member: {\"type\":\"direct\",\"members\":[B]}",
                ));
            };
            if other == me {
                return Err(Error::invalid("a direct chat needs another user"));
            }
            let (chat, created) = st.store.create_direct(me, other).await?;
            let body = chat_with_members(&st, chat).await?;
            if created {
                announce_chat(&st, ChatEvent::Created, &body, &[me, other], &[]).await;
                st.partners_changed(&[me, other]).await;
                // New partners learn each other's presence now, not at the next change.
                for (to, about) in [(me, other), (other, me)] {
                    for p in st.plane.presence().get(&[about]).await {
                        st.fan_out(&[to], &crate::hub::frame(protocol::presence_frame(&p)))
                            .await;
                    }
                }
            }
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(body)).into_response())
        }
        Some(ChatType::Group) => {
            if let Some(t) = &req.title {
                protocol::check_title(t)?;
            }
            let chat = st
                .store
                .create_group(me, req.title, req.members, st.cfg.group_limit)
                .await?;
            let body = chat_with_members(&st, chat).await?;
            announce_chat(&st, ChatEvent::Created, &body, &member_ids(&body), &[]).await;
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        None => Err(Error::invalid("type must be \"direct\" or \"group\"")),
    }
}

pub async fn list_chats(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
) -> Result<Json<Value>> {
    let chats = st.store.user_chats(me).await?;
    let pending = st.receipts.lock();
    let out: Vec<Chat> = chats
        .into_iter()
        .map(|uc| {
            let mut c = uc.chat;
            let read = pending
                .get(c.chat_id, me)
                .map_or(uc.read_seq, |(_, r)| r.max(uc.read_seq));
            c.read_seq = Some(read);
            c.unread = Some(if read > uc.read_seq {
                uc.unread.min(c.last_seq.saturating_sub(read))
            } else {
                uc.unread
            });
            c
        })
        .collect();
    Ok(Json(json!({ "chats": out })))
}

async fn member_chat(st: &AppState, chat_id: ChatId, me: UserId) -> Result<Chat> {
    let chat = st
        .store
        .chat(chat_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("chat {chat_id} does not exist")))?;
    st.directory.require(chat_id, me).await?;
    Ok(chat)
}

pub async fn get_chat(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let chat = member_chat(&st, parse_id(&id, "chat id")?, me).await?;
    Ok(Json(chat_with_members(&st, chat).await?))
}

#[derive(Deserialize)]
struct AddMembers {
    user_ids: Vec<u64>,
}

async fn require_admin(st: &AppState, chat: &Chat, me: UserId) -> Result<()> {
    if chat.kind != ChatType::Group {
        return Err(Error::invalid("members of a direct chat cannot change"));
    }
    let members = st.store.members(chat.chat_id).await?;
    match members.iter().find(|m| m.user_id == me) {
        Some(m) if m.role == crate::model::Role::Admin => Ok(()),
        Some(_) => Err(Error::forbidden("only a group admin can do that")),
        None => Err(Error::forbidden(format!(
            "you are not a member of chat {}",
            chat.chat_id
        ))),
    }
}

pub async fn add_members(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let chat = member_chat(&st, parse_id(&id, "chat id")?, me).await?;
    let req: AddMembers = json_body(&body)?;
    if req.user_ids.is_empty() {
        return Err(Error::invalid("user_ids must list at least one user"));
    }
    check_user_ids(&req.user_ids)?;
    require_admin(&st, &chat, me).await?;
    let added = st
        .store
        .add_members(chat.chat_id, req.user_ids, st.cfg.group_limit)
        .await?;
    st.members_changed(chat.chat_id).await;
    let body = chat_with_members(&st, chat).await?;
    if !added.is_empty() {
        // Old and new members alike: everyone in the chat now.
        announce_chat(
            &st,
            ChatEvent::MemberAdded,
            &body,
            &member_ids(&body),
            &added,
        )
        .await;
    }
    Ok(Json(body))
}

pub async fn remove_member(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode> {
    let chat = member_chat(&st, parse_id(&id, "chat id")?, me).await?;
    let user = parse_id(&user, "user id")?;
    if user == me {
        if chat.kind != ChatType::Group {
            return Err(Error::invalid("you cannot leave a direct chat"));
        }
    } else {
        require_admin(&st, &chat, me).await?;
    }
    if !st.store.remove_member(chat.chat_id, user).await? {
        return Err(Error::not_found(format!(
            "user {user} is not a member of chat {}",
            chat.chat_id
        )));
    }
    // The member caches are dropped (here and on every process) before the event: what the
    // removed user gets after their `member_removed` no longer counts them as a member.
    st.members_changed(chat.chat_id).await;
    let body = chat_with_members(&st, chat).await?;
    let mut to = member_ids(&body);
    to.push(user);
    announce_chat(&st, ChatEvent::MemberRemoved, &body, &to, &[user]).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct UpdateChat {
    /// `null` clears the title; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    title: Option<Option<String>>,
}

/// Tell an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /v1/chats/{id}` `{"title": "…" | null}`: group admins rename a group; every member's
/// devices get a `chat` `updated` frame.
pub async fn update_chat(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let chat = member_chat(&st, parse_id(&id, "chat id")?, me).await?;
    let req: UpdateChat = json_body(&body)?;
    let Some(title) = req.title else {
        return Err(Error::invalid(
            "nothing to change: send {\"title\": \"…\"} (or null to clear it)",
        ));
    };
    if chat.kind != ChatType::Group {
        return Err(Error::invalid("a direct chat has no title"));
    }
    if let Some(t) = &title {
        protocol::check_title(t)?;
    }
    require_admin(&st, &chat, me).await?;
    let changed = chat.title != title;
    if changed {
        st.store.set_title(chat.chat_id, title.clone()).await?;
    }
    let mut chat = chat;
    chat.title = title;
    let body = chat_with_members(&st, chat).await?;
    if changed {
        announce_chat(&st, ChatEvent::Updated, &body, &member_ids(&body), &[]).await;
    }
    Ok(Json(body))
}

/// `GET /v1/me`: `{"user_id", "name"?}`.
pub async fn get_me(State(st): State<Arc<AppState>>, Caller(me): Caller) -> Result<Json<Value>> {
    let mut names = st.store.user_names(&[me]).await?;
    let mut v = json!({"user_id": me});
    if let Some(n) = names.remove(&me) {
        v["name"] = json!(n);
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
struct UpdateMe {
    name: String,
}

/// `PATCH /v1/me` `{"name": "…"}` (dev auth only: otherwise names come from the token's
/// `name` claim, set by the app's own auth service).
pub async fn update_me(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    body: Bytes,
) -> Result<Json<Value>> {
    if !st.cfg.dev_auth {
        return Err(Error::forbidden(
            "names come from the token's name claim; PATCH /v1/me needs --dev-auth",
        ));
    }
    let req: UpdateMe = json_body(&body)?;
    protocol::check_name(&req.name)?;
    st.store.set_user_name(me, &req.name).await?;
    Ok(Json(json!({"user_id": me, "name": req.name})))
}

pub async fn list_messages(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let chat_id = parse_id(&id, "chat id")?;
    let page = Page {
        after_seq: query_u64(&q, "after_seq")?,
        before_seq: query_u64(&q, "before_seq")?,
        limit: protocol::page_limit(query_u64(&q, "limit")?),
    };
    let result = st.history(me, chat_id, page).await?;
    let marks = if result.messages.iter().any(|m| m.sender_id == me) {
        st.marks(chat_id).await?
    } else {
        vec![]
    };
    let views: Vec<_> = result
        .messages
        .iter()
        .map(|m| crate::model::MessageView {
            frame_type: None,
            message: m,
            status: (m.sender_id == me).then(|| message_status(m.seq, me, &marks)),
        })
        .collect();
    Ok(Json(json!({"messages": views, "has_more": result.has_more})).into_response())
}

pub async fn post_message(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let chat_id = parse_id(&id, "chat id")?;
    let mut v: Value = json_body(&body)?;
    let Some(obj) = v.as_object_mut() else {
        return Err(Error::invalid("the body must be a JSON object"));
    };
    obj.insert("chat_id".into(), json!(chat_id));
    let f: SendFrame =
        serde_json::from_value(v).map_err(|e| Error::invalid(format!("bad message: {e}")))?;
    let ack = st.send_and_wait(me, f, None).await?;
    Ok((StatusCode::CREATED, Json(ack)).into_response())
}

pub async fn receipts(
    State(st): State<Arc<AppState>>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let chat_id = parse_id(&id, "chat id")?;
    st.directory.require(chat_id, me).await?;
    Ok(Json(json!({"members": st.marks(chat_id).await?})))
}

pub async fn presence(
    State(st): State<Arc<AppState>>,
    Caller(_me): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let raw = q.get("user_ids").map(String::as_str).unwrap_or("");
    let ids = raw
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| parse_id(s.trim(), "user_ids"))
        .collect::<Result<Vec<_>>>()?;
    if ids.len() > protocol::MAX_PRESENCE_IDS {
        return Err(Error::invalid(format!(
            "at most {} user_ids",
            protocol::MAX_PRESENCE_IDS
        )));
    }
    Ok(Json(
        json!({"presence": st.plane.presence().get(&ids).await}),
    ))
}

#[derive(Deserialize)]
struct DevToken {
    user_id: u64,
}

pub async fn dev_token(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>> {
    if !st.cfg.dev_auth {
        return Err(Error::not_found(
            "dev auth is off (start the server with --dev-auth)",
        ));
    }
    let req: DevToken = json_body(&body)?;
    let id = protocol::check_id("user_id", req.user_id)?;
    Ok(Json(json!({"token": st.auth.mint(id, 7 * 24 * 3600)?})))
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::Acquire) && !st.draining.is_cancelled() && st.plane.ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

pub async fn not_found() -> Error {
    Error::not_found("no such endpoint; see PROTOCOL.md for the API")
}
