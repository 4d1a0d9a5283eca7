//! Long-poll transport: `GET /v1/poll` and `POST /v1/frames`, with WebSocket semantics.
//!
//! A long-poll session is a hub connection whose queue is drained by polls. Events are
//! numbered; the `cursor` a poll returns names the session and the last event it carried, and
//! the next poll acknowledges everything up to it. Events after the cursor are re-sent, so a
//! poll response lost on the way costs nothing. An unknown or expired cursor starts a new
//! session (a new `hello`); clients then `sync`, as after a WebSocket reconnect. A session with
//! no poll for two heartbeat intervals expires and its user may go offline.

use crate::auth;
use crate::error::{Error, Result};
use crate::hub::Frame;
use crate::model::{UserId, now_ms};
use crate::protocol;
use crate::session::{AckMode, Session};
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

const MAX_EVENTS: usize = 500;
const MAX_POLL_TIMEOUT: u64 = 60;

struct Queue {
    rx: mpsc::Receiver<Frame>,
    buffer: VecDeque<(u64, Frame)>,
    next: u64,
}

pub struct LpSession {
    user_id: UserId,
    session_id: String,
    session: tokio::sync::Mutex<Option<Session>>,
    queue: tokio::sync::Mutex<Queue>,
    last_active: AtomicI64,
    /// Poll requests in flight for this session.
    polling: AtomicUsize,
    kicked: tokio_util::sync::CancellationToken,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<LpSession>>>,
}

impl Registry {
    fn get(&self, id: &str) -> Option<Arc<LpSession>> {
        self.sessions.lock().get(id).cloned()
    }

    fn remove(&self, id: &str) -> Option<Arc<LpSession>> {
        self.sessions.lock().remove(id)
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Deserialize)]
pub struct PollQuery {
    token: Option<String>,
    cursor: Option<String>,
    timeout: Option<u64>,
}

#[derive(Deserialize)]
pub struct FramesQuery {
    token: Option<String>,
    session: Option<String>,
}

fn authenticate(st: &AppState, headers: &HeaderMap, token: Option<&str>) -> Result<UserId> {
    identify(st, headers, token).map(|i| i.user_id)
}

fn identify(st: &AppState, headers: &HeaderMap, token: Option<&str>) -> Result<auth::Identity> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token =
        auth::bearer(h, token).ok_or_else(|| Error::Unauthenticated("missing token".into()))?;
    st.auth.identify(&token)
}

fn events_json(cursor: Option<&str>, events: impl Iterator<Item = Frame>) -> Response {
    let mut body = String::from("{");
    if let Some(c) = cursor {
        body.push_str("\"cursor\":");
        body.push_str(&serde_json::to_string(c).expect("string"));
        body.push(',');
    }
    body.push_str("\"events\":[");
    for (i, e) in events.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(e.as_str());
    }
    body.push_str("]}");
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET /v1/poll?cursor=…&timeout=…`
pub async fn poll(
    State(st): State<Arc<AppState>>,
    Query(q): Query<PollQuery>,
    headers: HeaderMap,
) -> Response {
    let who = match identify(&st, &headers, q.token.as_deref()) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let (session_id, acked) = match q.cursor.as_deref().and_then(parse_cursor) {
        Some((id, n)) => (Some(id), n),
        None => (None, 0),
    };
    let existing = session_id
        .and_then(|id| st.longpoll.get(id))
        .filter(|s| s.user_id == who.user_id);
    let lp = match existing {
        Some(lp) => lp,
        None => match open(&st, who).await {
            Ok(lp) => lp,
            Err(e) => return e.into_response(),
        },
    };
    let _polling = Polling::start(&lp);
    let wait = Duration::from_secs(q.timeout.unwrap_or(25).min(MAX_POLL_TIMEOUT));
    let mut queue = lp.queue.lock().await;
    while queue.buffer.front().is_some_and(|(i, _)| *i <= acked) {
        queue.buffer.pop_front();
    }
    if queue.buffer.is_empty() {
        tokio::select! {
            f = queue.rx.recv() => if let Some(f) = f { push(&mut queue, f) },
            _ = tokio::time::sleep(wait) => {}
            _ = lp.kicked.cancelled() => {}
            _ = st.draining.cancelled() => {
                let after = rand::random_range(0..=st.cfg.reconnect_jitter_ms);
                push(&mut queue, protocol::reconnect_frame(after).into());
            }
        }
    }
    while queue.buffer.len() < MAX_EVENTS {
        match queue.rx.try_recv() {
            Ok(f) => push(&mut queue, f),
            Err(_) => break,
        }
    }
    let cursor = format!("{}.{}", lp.session_id, queue.next - 1);
    let events: Vec<Frame> = queue.buffer.iter().map(|(_, f)| f.clone()).collect();
    drop(queue);
    if lp.kicked.is_cancelled() {
        st.metrics.slow_consumers.inc();
        expire(&st, &lp.session_id).await;
    }
    events_json(Some(&cursor), events.into_iter())
}

/// Marks a session as being polled for as long as the request lives — also when the client
/// goes away mid-wait and the handler is dropped — so the sweeper can expire it afterwards.
struct Polling<'a>(&'a LpSession);

impl<'a> Polling<'a> {
    fn start(lp: &'a LpSession) -> Self {
        lp.polling.fetch_add(1, Ordering::AcqRel);
        lp.last_active.store(now_ms(), Ordering::Release);
        Polling(lp)
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.last_active.store(now_ms(), Ordering::Release);
        self.0.polling.fetch_sub(1, Ordering::AcqRel);
    }
}

fn push(q: &mut Queue, f: Frame) {
    q.buffer.push_back((q.next, f));
    q.next += 1;
}

fn parse_cursor(c: &str) -> Option<(&str, u64)> {
    let (id, n) = c.rsplit_once('.')?;
    Some((id, n.parse().ok()?))
}

async fn open(st: &Arc<AppState>, who: auth::Identity) -> Result<Arc<LpSession>> {
    let slot = st.acquire_slot()?;
    let user = who.user_id;
    let (session, rx) = Session::open(st.clone(), who, slot, "longpoll").await;
    let lp = Arc::new(LpSession {
        user_id: user,
        session_id: session.session_id.clone(),
        kicked: session.conn.kicked().clone(),
        session: tokio::sync::Mutex::new(Some(session)),
        queue: tokio::sync::Mutex::new(Queue {
            rx,
            buffer: VecDeque::new(),
            next: 1,
        }),
        last_active: AtomicI64::new(now_ms()),
        polling: AtomicUsize::new(0),
    });
    st.longpoll
        .sessions
        .lock()
        .insert(lp.session_id.clone(), lp.clone());
    Ok(lp)
}

async fn expire(st: &AppState, id: &str) {
    if let Some(lp) = st.longpoll.remove(id)
        && let Some(session) = lp.session.lock().await.take()
    {
        session.close().await;
    }
}

/// `POST /v1/frames?session=…` with one client frame as the body.
pub async fn frames(
    State(st): State<Arc<AppState>>,
    Query(q): Query<FramesQuery>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let user = match authenticate(&st, &headers, q.token.as_deref()) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let Some(lp) = q
        .session
        .as_deref()
        .and_then(|id| st.longpoll.get(id))
        .filter(|s| s.user_id == user)
    else {
        return Error::not_found("unknown or expired session; start one with GET /v1/poll")
            .into_response();
    };
    lp.last_active.store(now_ms(), Ordering::Release);
    let mut guard = lp.session.lock().await;
    let Some(session) = guard.as_mut() else {
        return Error::not_found("the session has ended; start one with GET /v1/poll")
            .into_response();
    };
    let replies = session.handle(&body, AckMode::Return).await;
    drop(guard);
    events_json(None, replies.into_iter())
}

/// Expire sessions nobody polls (every second), and close all of them when the node drains.
pub async fn sweep(st: Arc<AppState>) {
    let silence = (st.cfg.heartbeat_interval * 2 * 1000) as i64;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = st.stop.cancelled() => break,
        }
        let now = now_ms();
        let stale: Vec<String> = st
            .longpoll
            .sessions
            .lock()
            .values()
            .filter(|s| {
                s.kicked.is_cancelled()
                    || (s.polling.load(Ordering::Acquire) == 0
                        && now - s.last_active.load(Ordering::Acquire) > silence)
            })
            .map(|s| s.session_id.clone())
            .collect();
        for id in stale {
            tracing::debug!(session_id = %id, "long-poll session expired");
            expire(&st, &id).await;
        }
    }
    let all: Vec<String> = st.longpoll.sessions.lock().keys().cloned().collect();
    for id in all {
        expire(&st, &id).await;
    }
}
