//! HTTP endpoints of push: device registration (PROTOCOL.md `POST /v1/devices`) and the
//! extensions `DELETE /v1/devices/{token}`, `PUT|GET|DELETE /v1/chats/{id}/mute` and
//! `GET /v1/push/vapid` (the Web Push application server key).

use super::{Push, device_of};
use crate::auth::{Auth, Caller};
use crate::error::{Error, Result};
use crate::members::Directory;
use crate::model::{ChatId, MAX_ID, UserId};
use axum::body::Bytes;
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The body of `POST /v1/devices`.
#[derive(Debug, Deserialize)]
pub struct RegisterDevice {
    pub platform: String,
    pub token: String,
    /// Web only: the subscription's keys (or pass the whole subscription JSON as `token`).
    #[serde(default)]
    pub keys: Option<WebKeys>,
}

#[derive(Debug, Deserialize)]
pub struct WebKeys {
    pub p256dh: String,
    pub auth: String,
}

/// `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize)]
pub struct WebSubscription {
    pub endpoint: String,
    pub keys: WebKeys,
}

/// What the push handlers use of the server.
#[derive(Clone)]
pub struct PushState {
    /// `None` where push is not served: the handlers answer 404.
    pub push: Option<Arc<Push>>,
    /// Chat members, for who may mute a chat.
    pub directory: Arc<Directory>,
}

impl PushState {
    /// The push feature, or `not_found` when it is off here.
    fn service(&self) -> Result<&Push> {
        self.push
            .as_deref()
            .ok_or_else(|| Error::not_found("push notifications are not enabled on this server"))
    }

    /// The chat of a `/v1/chats/{id}/…` path, if `me` is a member.
    async fn member_chat(&self, id: &str, me: UserId) -> Result<ChatId> {
        let chat = chat_id(id)?;
        self.directory.require(chat, me).await?;
        Ok(chat)
    }
}

/// Routes merged into the API router (they share its timeout and body limit).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    PushState: FromRef<S>,
    Auth: FromRef<S>,
{
    Router::new()
        .route("/v1/devices", post(register).get(list))
        .route("/v1/devices/{token}", axum::routing::delete(unregister))
        .route(
            "/v1/chats/{id}/mute",
            get(get_mute).put(mute).delete(unmute),
        )
        .route("/v1/push/vapid", get(vapid))
}

fn chat_id(s: &str) -> Result<u64> {
    match s.parse::<u64>() {
        Ok(id) if id > 0 && id <= MAX_ID => Ok(id),
        _ => Err(Error::invalid(
            "chat id must be a positive integer below 2^53",
        )),
    }
}

pub async fn register(
    State(st): State<PushState>,
    Caller(me): Caller,
    body: Bytes,
) -> Result<Response> {
    let push = st.service()?;
    let req: RegisterDevice =
        serde_json::from_slice(&body).map_err(|e| Error::invalid(format!("bad JSON body: {e}")))?;
    let device = device_of(me, req)?;
    let existing = push.store.devices(me).await?;
    if existing.len() >= super::MAX_DEVICES_PER_USER
        && !existing.iter().any(|d| d.token == device.token)
    {
        return Err(Error::Conflict(format!(
            "at most {} devices per user; remove one with DELETE /v1/devices/{{token}}",
            super::MAX_DEVICES_PER_USER
        )));
    }
    let answer = json!({"platform": device.platform, "token": device.token});
    push.store.register_device(device).await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /v1/devices`: the caller's devices (extension).
pub async fn list(State(st): State<PushState>, Caller(me): Caller) -> Result<Response> {
    let push = st.service()?;
    let devices: Vec<_> = push
        .store
        .devices(me)
        .await?
        .into_iter()
        .map(|d| json!({"platform": d.platform, "token": d.token}))
        .collect();
    Ok(Json(json!({ "devices": devices })).into_response())
}

pub async fn unregister(
    State(st): State<PushState>,
    Caller(me): Caller,
    Path(token): Path<String>,
) -> Result<StatusCode> {
    let push = st.service()?;
    if push.store.remove_device(me, &token).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("no such device registered for you"))
    }
}

pub async fn mute(
    State(st): State<PushState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let push = st.service()?;
    let chat = st.member_chat(&id, me).await?;
    push.store.set_muted(me, chat, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unmute(
    State(st): State<PushState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let push = st.service()?;
    let chat = st.member_chat(&id, me).await?;
    push.store.set_muted(me, chat, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_mute(
    State(st): State<PushState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let push = st.service()?;
    let chat = st.member_chat(&id, me).await?;
    let muted = push.store.is_muted(me, chat).await?;
    Ok(Json(json!({"chat_id": chat, "muted": muted})).into_response())
}

/// `GET /v1/push/vapid`: `{"public_key": "<base64url>"}` for `pushManager.subscribe`.
pub async fn vapid(State(st): State<PushState>) -> Result<Response> {
    let push = st.service()?;
    let v = push
        .vapid
        .as_ref()
        .ok_or_else(|| Error::not_found("Web Push is not enabled on this server"))?;
    Ok(Json(json!({"public_key": v.public_key()})).into_response())
}
