//! WebSocket transport: `GET /ws?token=…`.
//!
//! One task per connection runs a single loop over: frames from the client, frames queued for
//! the client (written in batches, one flush per batch), the heartbeat deadline (two intervals
//! of silence close the connection), the slow-consumer kick and the drain signal.
//! With `&batch=1` a batch is one WebSocket message, a frame per line ([`join_frames`]).

use crate::auth;
use crate::error::Error;
use crate::hub::CLOSE_SLOW_CONSUMER;
use crate::protocol;
use crate::session::{AckMode, Session};
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, sleep_until, timeout};

#[derive(Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
    /// `batch=1`: the client accepts several frames per WebSocket message, one per line
    /// (see [`join_frames`]).
    pub batch: Option<String>,
}

impl TokenQuery {
    fn batched(&self) -> bool {
        matches!(self.batch.as_deref(), Some("1" | "true"))
    }
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_BATCH: usize = 64;
/// A batched WebSocket message stops growing once it holds this many bytes (so it may exceed
/// it by one frame; a `sync` page of up to ~1 MiB goes out as it is).
const BATCH_BYTES: usize = 64 * 1024;
/// Close code for a connection that missed two heartbeats.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
const SLOW: (u16, &str) = (CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and sync");
/// Close code sent when the node drains (after the `reconnect` frame).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

pub async fn handler(
    State(st): State<Arc<AppState>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = auth::bearer(header, q.token.as_deref()) else {
        return Error::Unauthenticated("missing token: connect to /ws?token=<jwt>".into())
            .into_response();
    };
    let who = match st.auth.identify(&token) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let slot = match st.acquire_slot() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let max = st.cfg.max_frame_bytes;
    let batched = q.batched();
    let tracked = st.clone();
    ws.read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(crate::protocol::MAX_SYNC_BYTES * 2 + max * 4)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(cause = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let (session, rx) = Session::open(tracked.clone(), who, slot, "websocket").await;
            tracked
                .tasks
                .track_future(run(session, rx, socket, batched))
                .await
        })
}

async fn run(
    mut session: Session,
    mut rx: tokio::sync::mpsc::Receiver<crate::hub::Frame>,
    mut socket: WebSocket,
    batched: bool,
) {
    let st = session.state.clone();
    let silence = Duration::from_secs(st.cfg.heartbeat_interval * 2);
    let mut deadline = Instant::now() + silence;
    let kicked = session.conn.kicked().clone();
    let close: Option<(u16, &str)> = loop {
        tokio::select! {
            biased;
            _ = kicked.cancelled() => break Some(SLOW),
            _ = st.draining.cancelled() => {
                let after = rand::random_range(0..=st.cfg.reconnect_jitter_ms);
                let _ = timeout(WRITE_TIMEOUT, socket.send(Message::Text(protocol::reconnect_frame(after).into()))).await;
                break Some((CLOSE_SERVICE_RESTART, "server draining: reconnect"));
            }
            out = rx.recv() => {
                let Some(first) = out else { break None };
                // Whatever is queued goes out together (bounded): batched, as one message —
                // one write, one wake-up on the client however many frames a busy group made.
                let mut frames = vec![first];
                let mut bytes = frames[0].len();
                while frames.len() < WRITE_BATCH && bytes < BATCH_BYTES {
                    let Ok(f) = rx.try_recv() else { break };
                    bytes += f.len() + 1;
                    frames.push(f);
                }
                let write = write_frames(&mut socket, frames, batched);
                // A client that stops reading blocks this write; the kick (its queue filled
                // meanwhile) or the timeout ends it.
                tokio::select! {
                    r = timeout(WRITE_TIMEOUT, write) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break None,
                        Err(_) => break Some(SLOW),
                    },
                    _ = kicked.cancelled() => break Some(SLOW),
                }
            }
            incoming = socket.recv() => {
                let msg = match incoming {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!(cause = %e, user_id = session.user_id(), "websocket read error");
                        break None;
                    }
                    None => break None,
                };
                deadline = Instant::now() + silence;
                let replies = match msg {
                    Message::Text(text) => session.handle(text.as_str(), AckMode::Queue).await,
                    Message::Binary(_) => {
                        st.metrics.error("invalid");
                        vec![protocol::error_frame(&Error::invalid("binary frames are not supported; send JSON text frames"), None).into()]
                    }
                    Message::Ping(_) | Message::Pong(_) => vec![],
                    Message::Close(_) => break None,
                };
                if !replies.is_empty() {
                    let write = write_frames(&mut socket, replies, batched);
                    if !matches!(timeout(WRITE_TIMEOUT, write).await, Ok(Ok(()))) {
                        break None;
                    }
                }
            }
            _ = sleep_until(deadline) => {
                break Some((CLOSE_HEARTBEAT_TIMEOUT, "no frame for two heartbeat intervals"));
            }
        }
    };
    if close == Some(SLOW) {
        st.metrics.slow_consumers.inc();
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // A slow consumer may still be draining what the kernel buffered; give the close frame
        // time to reach it (bounded) so it learns why and resyncs.
        let _ = timeout(WRITE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    }
    session.close().await;
}

/// Write `frames` in order: as one message of lines when the client asked for batches
/// (`batch=1`), else one message each, flushed once at the end.
async fn write_frames(
    socket: &mut WebSocket,
    frames: Vec<crate::hub::Frame>,
    batched: bool,
) -> Result<(), axum::Error> {
    if batched {
        return socket.send(Message::Text(join_frames(frames))).await;
    }
    for f in frames {
        socket.feed(Message::Text(f)).await?;
    }
    socket.flush().await
}

/// Several encoded frames as one WebSocket text message, separated by `\n` (the `batch=1`
/// extension). Each frame is compact JSON, which has no raw newline (serde_json escapes it in
/// strings), so a client splits the message on `\n` and parses every line. One frame is
/// returned as it is, without a copy.
pub fn join_frames(mut frames: Vec<crate::hub::Frame>) -> crate::hub::Frame {
    if frames.len() == 1 {
        return frames.pop().expect("one frame");
    }
    let len = frames.iter().map(|f| f.len() + 1).sum::<usize>();
    let mut out = String::with_capacity(len);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(f.as_str());
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::frame;

    #[test]
    fn joined_frames_split_back_into_the_same_frames_in_order() {
        let one = frame(r#"{"type":"pong"}"#.into());
        assert_eq!(join_frames(vec![one.clone()]).as_str(), one.as_str());
        let text_with_newline = serde_json::json!({"type":"message","content":"a\nb"}).to_string();
        let frames = vec![one.clone(), frame(text_with_newline.clone()), one.clone()];
        let joined = join_frames(frames);
        let lines: Vec<&str> = joined.as_str().split('\n').collect();
        assert_eq!(
            lines,
            [one.as_str(), text_with_newline.as_str(), one.as_str()]
        );
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["content"], "a\nb");
    }

    #[test]
    fn only_1_and_true_ask_for_batches() {
        let q = |b: Option<&str>| TokenQuery {
            token: None,
            batch: b.map(str::to_owned),
        };
        assert!(q(Some("1")).batched());
        assert!(q(Some("true")).batched());
        assert!(!q(Some("0")).batched());
        assert!(!q(None).batched());
    }
}
