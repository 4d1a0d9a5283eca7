//! Clients that keep talking while the cluster under them changes: a sender that sends one
//! message after another into a chat until told to stop, resending the same `client_msg_id`
//! after an error or a lost connection (as the protocol asks of clients), and a receiver that
//! follows the chat live and resumes with `sync` after every reconnect. Both count what a user
//! would notice — `reconnect` frames, errors by code, reconnects, the longest wait for an ack —
//! so a test can assert "nothing but a reconnect" for a roll and "only `unavailable`, bounded"
//! for a dependency restart.

use super::{Clients, Ws};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What one sender saw.
#[derive(Debug, Default, Clone)]
pub struct SendStats {
    pub user: u64,
    pub chat: u64,
    /// `client_msg_id` → ack frame.
    pub acks: BTreeMap<String, Value>,
    /// Error frames answering a send, by code.
    pub errors: BTreeMap<String, u64>,
    /// `reconnect` frames received (edge drains).
    pub reconnect_frames: u64,
    /// New connections after the first (drain, close, silence).
    pub reconnects: u64,
    /// The longest time between two acks: how long a user could not send.
    pub longest_gap: Duration,
}

impl SendStats {
    /// Errors other than the given codes.
    pub fn errors_except(&self, allowed: &[&str]) -> BTreeMap<String, u64> {
        self.errors
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.trim_matches('"')))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

pub struct Sender {
    stop: watch::Sender<bool>,
    task: JoinHandle<SendStats>,
}

impl Sender {
    /// Stop after the message in flight is acked; return what was seen.
    pub async fn finish(self) -> SendStats {
        let _ = self.stop.send(true);
        self.task.await.expect("sender task")
    }
}

/// Start sending `prefix-0`, `prefix-1`, … from `user` into `chat`, one every `every`.
pub fn start_sender(c: &Clients, user: u64, chat: u64, prefix: &str, every: Duration) -> Sender {
    let (stop, mut stopped) = watch::channel(false);
    let c = c.clone();
    let prefix = prefix.to_string();
    let task = tokio::spawn(async move {
        let mut st = SendStats {
            user,
            chat,
            ..Default::default()
        };
        let mut ws = c.ws(user).await;
        let mut last_ack = Instant::now();
        for i in 0.. {
            if *stopped.borrow_and_update() {
                break;
            }
            let cid = format!("{prefix}-{i}");
            loop {
                assert!(
                    last_ack.elapsed() < Duration::from_secs(240),
                    "{cid}: no ack for 4 minutes; {st:?}"
                );
                let frame = json!({"type":"message","chat_id":chat,"content":format!("day2 {cid}"),"client_msg_id":cid});
                let mut reconnect = !ws.send(frame).await;
                if !reconnect {
                    match answer(&mut ws, &cid, &mut st).await {
                        Answer::Ack(a) => {
                            st.longest_gap = st.longest_gap.max(last_ack.elapsed());
                            last_ack = Instant::now();
                            st.acks.insert(cid.clone(), a);
                            break;
                        }
                        Answer::Error(code) => {
                            *st.errors.entry(code).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        Answer::Lost => reconnect = true,
                    }
                }
                if reconnect {
                    st.reconnects += 1;
                    ws = c.ws(user).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopped.changed() => {}
            }
        }
        st
    });
    Sender { stop, task }
}

enum Answer {
    Ack(Value),
    Error(String),
    /// The connection closed, was drained, or stayed silent for 15 s.
    Lost,
}

async fn answer(ws: &mut Ws, cid: &str, st: &mut SendStats) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = ws.next(left).await else {
            return Answer::Lost;
        };
        match f["type"].as_str() {
            Some("reconnect") => {
                // The edge is draining: the answer to this send may still come, but the
                // client is asked to move; resending the same id is idempotent.
                st.reconnect_frames += 1;
                return Answer::Lost;
            }
            Some("ack") if f["client_msg_id"] == cid => return Answer::Ack(f),
            Some("error") if f["client_msg_id"] == cid => {
                return Answer::Error(f["code"].as_str().unwrap_or("?").to_string());
            }
            _ => {}
        }
    }
}

/// What one receiver saw.
#[derive(Debug, Default, Clone)]
pub struct RecvStats {
    /// Every seq received, live or by sync.
    pub seqs: BTreeSet<u64>,
    pub reconnects: u64,
    pub reconnect_frames: u64,
    /// Messages received more than once (at-least-once delivery around a reconnect).
    pub duplicates: u64,
}

pub struct Receiver {
    stop: watch::Sender<bool>,
    task: JoinHandle<RecvStats>,
}

impl Receiver {
    /// Stop, after a final `sync` that catches up to `through` (the last acked seq).
    pub async fn finish(self) -> RecvStats {
        let _ = self.stop.send(true);
        self.task.await.expect("receiver task")
    }
}

/// Follow `chat` as `user`: live `message` frames, and after every reconnect a `sync` from
/// the highest gapless seq seen (what a real client does).
pub fn start_receiver(c: &Clients, user: u64, chat: u64) -> Receiver {
    let (stop, mut stopped) = watch::channel(false);
    let c = c.clone();
    let task = tokio::spawn(async move {
        let mut st = RecvStats::default();
        let mut ws = c.ws(user).await;
        loop {
            let stopping = *stopped.borrow_and_update();
            if stopping {
                // Final catch-up on a fresh connection, then done.
                ws = c.ws(user).await;
                sync_all(&mut ws, chat, &mut st).await;
                break;
            }
            tokio::select! {
                f = ws.next(Duration::from_secs(20)) => match f {
                    Some(f) if f["type"] == "message" && f["chat_id"] == chat => {
                        let seq = f["seq"].as_u64().unwrap();
                        if !st.seqs.insert(seq) {
                            st.duplicates += 1;
                        }
                    }
                    Some(f) if f["type"] == "reconnect" => {
                        st.reconnect_frames += 1;
                        st.reconnects += 1;
                        ws = c.ws(user).await;
                        sync_all(&mut ws, chat, &mut st).await;
                    }
                    Some(_) => {}
                    None => {
                        st.reconnects += 1;
                        ws = c.ws(user).await;
                        sync_all(&mut ws, chat, &mut st).await;
                    }
                },
                _ = stopped.changed() => {}
            }
        }
        st
    });
    Receiver { stop, task }
}

/// `sync` from the highest gapless seq until the server says there is no more.
async fn sync_all(ws: &mut Ws, chat: u64, st: &mut RecvStats) {
    for _ in 0..1000 {
        let after = (1..)
            .take_while(|s| st.seqs.contains(s))
            .last()
            .unwrap_or(0);
        if !ws
            .send(json!({"type":"sync","chat_id":chat,"after_seq":after}))
            .await
        {
            return;
        }
        let Some(page) = ws.expect("sync", Duration::from_secs(15)).await else {
            return;
        };
        for m in page["messages"].as_array().into_iter().flatten() {
            st.seqs.insert(m["seq"].as_u64().unwrap());
        }
        if page["has_more"] != true {
            return;
        }
    }
}
