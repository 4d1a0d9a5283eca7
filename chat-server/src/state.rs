//! Shared state of a running server and the operations the transports (WebSocket, long-poll,
//! HTTP) share: send, sync, history, receipts, typing, presence announcements. Assembled once
//! by the server assembly (`server.rs`); handed only to the transports and the HTTP handlers. Below
//! it, modules take the parts they use; every message goes through the [`Plane`].

use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::error::{Error, Result};
use crate::hub::{ConnId, Frame, Hub, frame};
use crate::members::Directory;
use crate::metrics::Metrics;
use crate::model::{Ack, ChatId, Marks, NewMessage, Presence, ReceiptKind, Seq, UserId};
use crate::plane::{Plane, ReplyTo, Submission};
use crate::protocol::{self, SendFrame};
use crate::receipts::{self, PendingMarks};
use crate::store::{MessagePage, Page, Store};
use crate::watchers::Watchers;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pending marks of one member (with the connections that sent them).
type PendingPair = receipts::Pending;

pub struct AppState {
    pub cfg: ServeConfig,
    pub auth: Auth,
    pub store: Arc<dyn Store>,
    /// This process's connections.
    pub hub: Arc<Hub>,
    /// Chat members and direct partners, cached.
    pub directory: Arc<Directory>,
    /// Presence subscriptions of this process's connections.
    pub watchers: Arc<Watchers>,
    /// Where sends, fan-out and presence go (local or cluster).
    pub plane: Arc<dyn Plane>,
    pub receipts: Mutex<PendingMarks>,
    pub metrics: Arc<Metrics>,
    /// Media uploads and serving (blob store, limits, URL signer); `None` where media is off
    /// (`--media-disabled`) or not served (delivery and presence processes).
    pub media: Option<Arc<crate::media::MediaService>>,
    /// Push notifications (devices, mutes, the push queue); `None` where not served.
    pub push: Option<Arc<crate::push::Push>>,
    pub longpoll: crate::longpoll::Registry,
    /// Fires on SIGTERM: stop accepting, tell clients to reconnect elsewhere.
    pub draining: CancellationToken,
    /// Fires after connections are gone: background loops finish their queues and stop.
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
    pub connections: AtomicUsize,
    pub ready: AtomicBool,
}

/// A reserved connection slot; released on drop.
pub struct ConnSlot(Arc<AppState>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

impl AppState {
    /// Reserve a connection slot, or `unavailable` at the cap or while draining.
    pub fn acquire_slot(self: &Arc<Self>) -> Result<ConnSlot> {
        if self.draining.is_cancelled() {
            return Err(Error::Unavailable(
                "this node is draining; reconnect to another".into(),
            ));
        }
        let n = self.connections.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.connections.inc();
        let slot = ConnSlot(self.clone());
        if n > self.cfg.max_connections {
            return Err(Error::Unavailable(format!(
                "this node is at its limit of {} connections; retry later",
                self.cfg.max_connections
            )));
        }
        Ok(slot)
    }

    /// Validate and queue a send; the ack/error goes to `reply`.
    /// `origin` is the sending connection, which gets the ack instead of the message.
    pub async fn send(
        &self,
        sender: UserId,
        f: SendFrame,
        reply: ReplyTo,
        origin: Option<ConnId>,
        received: Instant,
    ) -> Result<()> {
        protocol::check_send(&f)?;
        self.directory.require(f.chat_id, sender).await?;
        let media = match &f.media_id {
            Some(id) => Some(
                crate::media::attach(
                    &*self.store,
                    self.cfg.media.media_orphan_age,
                    sender,
                    f.chat_id,
                    id,
                )
                .await?,
            ),
            None => None,
        };
        let message = NewMessage {
            chat_id: f.chat_id,
            sender_id: sender,
            content: f.content.unwrap_or_default(),
            media_url: f.media_url.filter(|u| !u.is_empty()).or_else(|| {
                let url = media.as_ref()?.get("url")?.as_str()?;
                Some(url.to_string())
            }),
            media,
            client_msg_id: f.client_msg_id,
            message_id: None,
        };
        self.plane
            .submit(Submission {
                message,
                reply,
                origin,
                received,
            })
            .await
    }

    /// Queue `f` on every connection of `users` (on every edge, in the distributed mode).
    pub async fn fan_out(&self, users: &[UserId], f: &Frame) {
        self.plane.fan_out(users, f).await;
    }

    /// Send and wait for the durable ack (HTTP and long-poll).
    pub async fn send_and_wait(
        &self,
        sender: UserId,
        f: SendFrame,
        origin: Option<ConnId>,
    ) -> Result<Ack> {
        let (tx, rx) = oneshot::channel();
        self.send(sender, f, ReplyTo::Waiter(tx), origin, Instant::now())
            .await?;
        rx.await
            .map_err(|_| Error::Unavailable("the server is shutting down; resend".into()))?
    }

    /// Messages after `after_seq` (the `sync` frame), from the recent cache when it covers them.
    pub async fn sync(
        &self,
        user: UserId,
        chat_id: ChatId,
        after_seq: Seq,
        limit: usize,
    ) -> Result<MessagePage> {
        self.directory.require(chat_id, user).await?;
        if let Some(page) = self.plane.recent_after(chat_id, after_seq, limit).await {
            return Ok(page);
        }
        self.store
            .messages(
                chat_id,
                Page {
                    after_seq: Some(after_seq),
                    before_seq: None,
                    limit,
                },
            )
            .await
    }

    /// A history page (HTTP), from the cache for the common "latest" and "after" reads.
    pub async fn history(&self, user: UserId, chat_id: ChatId, page: Page) -> Result<MessagePage> {
        self.directory.require(chat_id, user).await?;
        let cached = match (page.after_seq, page.before_seq) {
            (None, None) => self.plane.recent_latest(chat_id, page.limit).await,
            (Some(after), None) => self.plane.recent_after(chat_id, after, page.limit).await,
            _ => None,
        };
        match cached {
            Some(p) => Ok(p),
            None => self.store.messages(chat_id, page).await,
        }
    }

    /// A chat's membership changed: drop cached members here and, in a cluster, everywhere.
    pub async fn members_changed(&self, chat_id: ChatId) {
        self.plane.members_changed(chat_id).await;
    }

    /// Users' direct partners changed: drop cached partners here and, in a cluster, everywhere.
    pub async fn partners_changed(&self, users: &[UserId]) {
        self.plane.partners_changed(users).await;
    }

    /// Record a delivered/read mark sent by connection `origin`; it is written and announced
    /// at the next flush (to every member's connections but `origin`).
    pub async fn mark(
        &self,
        user: UserId,
        chat_id: ChatId,
        kind: ReceiptKind,
        seq: Seq,
        origin: ConnId,
    ) -> Result<()> {
        self.directory.require(chat_id, user).await?;
        self.receipts
            .lock()
            .record(chat_id, user, kind, seq, Some(origin));
        Ok(())
    }

    /// The display name of a connecting user: the token's `name` claim (kept in the store
    /// when it differs from the stored one), else the stored name. Store errors are logged:
    /// a name never stops a connection.
    pub async fn user_name(&self, who: &crate::auth::Identity) -> Option<String> {
        let stored = match self.store.user_names(&[who.user_id]).await {
            Ok(mut names) => names.remove(&who.user_id),
            Err(e) => {
                tracing::warn!(cause = %e, user_id = who.user_id, "cannot read the user's name");
                None
            }
        };
        match &who.name {
            Some(n) if stored.as_deref() != Some(n.as_str()) => {
                if let Err(e) = self.store.set_user_name(who.user_id, n).await {
                    tracing::warn!(cause = %e, user_id = who.user_id, "cannot save the token's name");
                }
                Some(n.clone())
            }
            Some(n) => Some(n.clone()),
            None => stored,
        }
    }

    /// Stored marks merged with pending ones (so a reader sees its own recent marks).
    pub async fn marks(&self, chat_id: ChatId) -> Result<Vec<Marks>> {
        let mut marks = self.store.marks(chat_id).await?;
        let pending = self.receipts.lock();
        for m in &mut marks {
            if let Some((d, r)) = pending.get(chat_id, m.user_id) {
                m.read_seq = m.read_seq.max(r);
                m.delivered_seq = m.delivered_seq.max(d).max(m.read_seq);
            }
        }
        Ok(marks)
    }

    /// Write the pending marks that advance and announce them to every member's connections
    /// (the marking user's own other devices included) but the connection that sent the mark.
    pub async fn flush_receipts(&self) {
        let pending = self.receipts.lock().take();
        if pending.is_empty() {
            return;
        }
        let mut by_chat: HashMap<ChatId, Vec<(UserId, PendingPair)>> = HashMap::new();
        for ((chat, user), p) in pending {
            by_chat.entry(chat).or_default().push((user, p));
        }
        let mut writes = Vec::new();
        let mut announcements = Vec::new();
        for (chat_id, users) in by_chat {
            let (chat, stored) = match tokio::try_join!(
                self.store.chat(chat_id),
                self.store.marks(chat_id)
            ) {
                Ok((Some(c), s)) => (c, s),
                Ok((None, _)) => continue,
                Err(e) => {
                    tracing::error!(cause = %e, chat_id, "receipt flush: cannot read marks; retrying next flush");
                    let mut p = self.receipts.lock();
                    for (user, pending) in users {
                        p.restore(chat_id, user, pending);
                    }
                    continue;
                }
            };
            for (user, p) in users {
                let Some(current) = stored.iter().find(|m| m.user_id == user) else {
                    continue;
                };
                if let Some(adv) = receipts::advance(*current, (p.delivered, p.read), chat.last_seq)
                {
                    writes.push((chat_id, adv.marks));
                    announcements.push((chat_id, user, adv.announce, p));
                }
            }
        }
        let n = writes.len();
        if let Err(e) = self.store.save_marks(writes).await {
            tracing::error!(cause = %e, "receipt flush failed; marks kept for the next flush");
            let mut p = self.receipts.lock();
            for (chat, user, _, pending) in announcements {
                p.restore(chat, user, pending);
            }
            return;
        }
        self.metrics.receipts_flushed.inc_by(n as u64);
        for (chat_id, user, announce, pending) in announcements {
            let Ok(members) = self.directory.members(chat_id).await else {
                continue;
            };
            // Every member, the marking user included (their other devices); connection ids
            // are unique in this process, so skipping the origin skips only that device.
            for (kind, seq) in announce {
                let f = frame(protocol::receipt_frame(chat_id, user, kind, seq));
                self.plane
                    .fan_out_except(&members.users, &f, pending.origin(kind))
                    .await;
            }
        }
    }

    /// Relay `typing` to the other members.
    pub async fn typing(&self, user: UserId, chat_id: ChatId) -> Result<()> {
        let members = self.directory.require(chat_id, user).await?;
        let others = members.others(user);
        self.fan_out(&others, &frame(protocol::typing_frame(chat_id, user)))
            .await;
        Ok(())
    }

    /// Send a presence change to watchers and direct-chat partners (in the distributed mode:
    /// broadcast to every edge, each tells its own connections).
    pub async fn announce_presence(&self, p: Presence) {
        self.plane.announce_presence(p).await;
    }
}

// What the handlers below the app take of it (axum `State` extractors).

impl axum::extract::FromRef<Arc<AppState>> for Auth {
    fn from_ref(st: &Arc<AppState>) -> Self {
        st.auth.clone()
    }
}

impl axum::extract::FromRef<Arc<AppState>> for crate::media::http::MediaState {
    fn from_ref(st: &Arc<AppState>) -> Self {
        crate::media::http::MediaState {
            media: st.media.clone(),
            auth: st.auth.clone(),
            store: st.store.clone(),
            directory: st.directory.clone(),
        }
    }
}

impl axum::extract::FromRef<Arc<AppState>> for crate::push::api::PushState {
    fn from_ref(st: &Arc<AppState>) -> Self {
        crate::push::api::PushState {
            push: st.push.clone(),
            directory: st.directory.clone(),
        }
    }
}
