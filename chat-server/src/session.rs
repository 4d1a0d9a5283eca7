//! One client session (a WebSocket connection or a long-poll session), independent of the
//! transport: it registers with the hub and presence, answers client frames, and cleans up.

use crate::auth::Identity;
use crate::error::{Error, Result};
use crate::hub::{ConnHandle, Frame, frame};
use crate::model::{ChatId, ReceiptKind, UserId};
use crate::plane::ReplyTo;
use crate::protocol::{self, ClientFrame};
use crate::ratelimit::TokenBucket;
use crate::state::{AppState, ConnSlot};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub struct Session {
    pub state: Arc<AppState>,
    pub conn: ConnHandle,
    pub session_id: String,
    messages: TokenBucket,
    frames: TokenBucket,
    subscribed: Vec<UserId>,
    epoch: Instant,
    _slot: ConnSlot,
}

/// How a send's ack reaches the client.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Queued on the connection (WebSocket).
    Queue,
    /// Returned from `handle` (long-poll `POST /v1/frames`).
    Return,
}

impl Session {
    /// Open a session: register with the hub, mark the user online, queue `hello` and the
    /// presence of the user's direct-chat partners.
    pub async fn open(
        state: Arc<AppState>,
        who: Identity,
        slot: ConnSlot,
        transport: &'static str,
    ) -> (Session, mpsc::Receiver<Frame>) {
        let session_id = uuid::Uuid::now_v7().to_string();
        let user_id = who.user_id;
        let name = state.user_name(&who).await;
        let hello = frame(protocol::hello(
            user_id,
            &session_id,
            state.cfg.heartbeat_interval,
            name.as_deref(),
        ));
        let (conn, rx, _) = state.hub.register(user_id, hello);
        state
            .metrics
            .connections_opened
            .get_or_create(&crate::metrics::TransportLabel { transport })
            .inc();
        if let Some(p) = state.plane.presence().connected(user_id).await {
            let st = state.clone();
            state
                .tasks
                .spawn(async move { st.announce_presence(p).await });
        }
        match state.directory.partners(user_id).await {
            Ok(partners) if !partners.is_empty() => {
                for p in state.plane.presence().get(&partners).await {
                    conn.send(frame(protocol::presence_frame(&p)));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(cause = %e, user_id, "cannot list direct partners"),
        }
        let epoch = Instant::now();
        let cfg = &state.cfg;
        let session = Session {
            messages: TokenBucket::new(cfg.rate_limit, cfg.rate_burst, 0.0),
            frames: TokenBucket::new(
                cfg.rate_limit * 4.0 + 10.0,
                cfg.rate_burst.saturating_mul(4).max(40),
                0.0,
            ),
            state: state.clone(),
            conn,
            session_id,
            subscribed: Vec::new(),
            epoch,
            _slot: slot,
        };
        (session, rx)
    }

    pub fn user_id(&self) -> UserId {
        self.conn.user_id
    }

    /// Handle one client frame. Returns the frames to answer with directly (errors, pong,
    /// sync; and in [`AckMode::Return`] the ack). In [`AckMode::Queue`] acks arrive on the
    /// connection's queue.
    pub async fn handle(&mut self, text: &str, mode: AckMode) -> Vec<Frame> {
        let now = self.epoch.elapsed().as_secs_f64();
        if !self.frames.take(now) {
            return vec![self.error(
                &Error::RateLimited("too many frames; slow down".into()),
                None,
            )];
        }
        let parsed = match protocol::parse_client_frame(text) {
            Ok(f) => f,
            Err(e) => {
                let cid = client_msg_id_of(text);
                return vec![self.error(&e, cid.as_deref())];
            }
        };
        let user = self.user_id();
        let st = self.state.clone();
        match parsed {
            ClientFrame::Message(f) => {
                let cid = f.client_msg_id.clone();
                if !self.messages.take(now) {
                    let e = Error::RateLimited(format!(
                        "more than {} messages/s (burst {}); wait and resend",
                        st.cfg.rate_limit, st.cfg.rate_burst
                    ));
                    return vec![self.error(&e, cid.as_deref())];
                }
                match mode {
                    AckMode::Queue => {
                        let reply = ReplyTo::Conn(self.conn.clone());
                        match st
                            .send(user, f, reply, Some(self.conn.id), Instant::now())
                            .await
                        {
                            Ok(()) => vec![],
                            Err(e) => vec![self.error(&e, cid.as_deref())],
                        }
                    }
                    AckMode::Return => match st.send_and_wait(user, f, Some(self.conn.id)).await {
                        Ok(ack) => vec![frame(protocol::ack_frame(&ack))],
                        Err(e) => vec![self.error(&e, cid.as_deref())],
                    },
                }
            }
            ClientFrame::Delivered(m) => self.result(
                m.chat_id,
                st.mark(user, m.chat_id, ReceiptKind::Delivered, m.seq, self.conn.id)
                    .await,
            ),
            ClientFrame::Read(m) => self.result(
                m.chat_id,
                st.mark(user, m.chat_id, ReceiptKind::Read, m.seq, self.conn.id)
                    .await,
            ),
            ClientFrame::Sync(s) => {
                let limit = protocol::page_limit(s.limit);
                match st.sync(user, s.chat_id, s.after_seq, limit).await {
                    Ok(mut page) => {
                        let cut = protocol::fit_sync_page(&mut page.messages);
                        vec![frame(protocol::sync_frame(
                            s.chat_id,
                            &page.messages,
                            page.has_more || cut,
                        ))]
                    }
                    Err(e) => vec![self.error_in(&e, None, Some(s.chat_id))],
                }
            }
            ClientFrame::PresenceSubscribe(p) => {
                let new: Vec<UserId> = p
                    .user_ids
                    .iter()
                    .copied()
                    .filter(|u| !self.subscribed.contains(u))
                    .collect();
                if self.subscribed.len() + new.len() > protocol::MAX_PRESENCE_IDS {
                    let e = Error::invalid(format!(
                        "at most {} presence subscriptions per connection",
                        protocol::MAX_PRESENCE_IDS
                    ));
                    return vec![self.error(&e, None)];
                }
                st.watchers.subscribe(user, &new);
                self.subscribed.extend(&new);
                st.plane
                    .presence()
                    .get(&p.user_ids)
                    .await
                    .iter()
                    .map(|p| frame(protocol::presence_frame(p)))
                    .collect()
            }
            ClientFrame::Typing(t) => self.result(t.chat_id, st.typing(user, t.chat_id).await),
            ClientFrame::Ping {} => vec![frame(protocol::pong_frame())],
        }
    }

    fn result(&self, chat_id: ChatId, r: Result<()>) -> Vec<Frame> {
        match r {
            Ok(()) => vec![],
            Err(e) => vec![self.error_in(&e, None, Some(chat_id))],
        }
    }

    fn error(&self, e: &Error, client_msg_id: Option<&str>) -> Frame {
        self.error_in(e, client_msg_id, None)
    }

    /// An `error` frame; `chat_id` names the chat a chat-scoped frame was about.
    fn error_in(&self, e: &Error, client_msg_id: Option<&str>, chat_id: Option<ChatId>) -> Frame {
        self.state.metrics.error(e.code());
        if let Error::Internal(cause) = e {
            tracing::error!(%cause, user_id = self.user_id(), "frame failed");
        }
        frame(protocol::error_frame_in(e, client_msg_id, chat_id))
    }

    /// Close the session: unregister, drop subscriptions, and mark the user offline if this
    /// was their last connection.
    pub async fn close(self) {
        let st = self.state.clone();
        st.hub.unregister(&self.conn);
        st.watchers.unsubscribe(self.user_id(), &self.subscribed);
        if let Some(p) = st.plane.presence().disconnected(self.user_id()).await {
            st.announce_presence(p).await;
        }
    }
}

/// Best effort: the `client_msg_id` of a frame that failed validation, so the error can name it.
fn client_msg_id_of(text: &str) -> Option<String> {
    if text.len() > 256 * 1024 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("client_msg_id")?
        .as_str()
        .filter(|s| s.len() <= protocol::MAX_CLIENT_MSG_ID)
        .map(str::to_string)
}
