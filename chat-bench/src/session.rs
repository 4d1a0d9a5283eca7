//! One held connection: a reader that measures everything the server sends, and a writer that
//! sends heartbeats and — while a load phase is active and this connection is a sender —
//! messages at their scheduled instants. Both run as two futures of one task.

use crate::conn::Ws;
use crate::frame::{self, Inbound};
use crate::proto::{self, PeerEvent, System};
use crate::schedule::{self, SendPlan};
use crate::stamp::{Stamp, elapsed_us, unix_now_ns};
use crate::stats::{FleetStats, LoadStats};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What one connection is: its user, the chat it sends into, and its place among senders.
#[derive(Debug, Clone, Copy)]
pub struct SessionSpec {
    /// Position in this process's fleet (also picks the source address and histogram shard).
    pub index: u32,
    pub user_id: u64,
    pub chat_id: Option<u64>,
    /// `Some(i)` for the i-th sender; `None` for receive-only connections.
    pub sender_index: Option<u32>,
}

/// A load phase: every sender follows its share of the schedule; receivers attribute what
/// arrives to `stats` if the stamp's phase id matches.
pub struct LoadPhase {
    pub id: u32,
    pub start: Instant,
    /// `start` on the CLOCK_REALTIME scale.
    pub start_unix_ns: u64,
    pub duration: Duration,
    pub rate: f64,
    pub senders: u32,
    pub message_size: usize,
    pub stats: Arc<LoadStats>,
    /// Cancelled to stop sending before the schedule ends (Ctrl-C); replies are still counted.
    pub stop: CancellationToken,
}

/// State shared by every connection of one bench process.
pub struct Shared {
    pub run_id: u32,
    /// The protocol every connection of this process speaks.
    pub system: System,
    /// Matrix only: access tokens and room ids (filled during setup).
    pub matrix: OnceLock<Arc<crate::matrix::Directory>>,
    pub fleet: FleetStats,
    pub phase: watch::Sender<Option<Arc<LoadPhase>>>,
    /// Cancelled to close every connection (clean close frames).
    pub close: CancellationToken,
    pub ping_interval: Duration,
    /// Tern: connections ask for batched frames (`/ws?…&batch=1`).
    pub batch: bool,
    /// How long a closing connection waits for the server's close.
    pub close_grace: Duration,
}

impl Shared {
    pub fn new(ping_interval: Duration, system: System) -> Shared {
        Shared {
            run_id: rand::random(),
            system,
            matrix: OnceLock::new(),
            fleet: FleetStats::default(),
            phase: watch::Sender::new(None),
            close: CancellationToken::new(),
            ping_interval,
            batch: true,
            close_grace: Duration::from_secs(2),
        }
    }
}

/// Per-connection state the peers' protocols need between the reader and the writer (unused
/// by Tern).
pub struct PeerConn {
    /// Centrifugo: publish command ids in flight and their stamps (its reply has no data).
    pending: Mutex<VecDeque<(u32, Stamp)>>,
    /// Answers to server pings, sent by the writer.
    replies: mpsc::UnboundedSender<&'static str>,
}

/// Hold `ws` until `shared.close` is cancelled or the server ends it.
pub async fn run(ws: Ws, spec: SessionSpec, shared: Arc<Shared>) {
    shared.fleet.open.inc();
    let (sink, stream) = ws.split();
    let ended = CancellationToken::new();
    let drop_reason = OnceLock::new();
    let (reply_tx, reply_rx) = mpsc::unbounded_channel();
    let peer = PeerConn {
        pending: Mutex::new(VecDeque::new()),
        replies: reply_tx,
    };
    futures::join!(
        read_loop(stream, &spec, &shared, &ended, &drop_reason, &peer),
        write_loop(sink, &spec, &shared, &ended, &drop_reason, &peer, reply_rx),
    );
    shared.fleet.open.dec();
    if let Some(reason) = drop_reason.get()
        && !shared.close.is_cancelled()
    {
        shared.fleet.dropped.inc();
        shared.fleet.dropped_reasons.add(reason);
    }
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    spec: &SessionSpec,
    shared: &Shared,
    ended: &CancellationToken,
    drop_reason: &OnceLock<String>,
    peer: &PeerConn,
) {
    let phase_rx = shared.phase.subscribe();
    let mut last_seq: Option<(u64, u64)> = None;
    // Once the writer has sent our close (or given up), the server gets a moment to answer.
    let mut grace = std::pin::pin!(async {
        ended.cancelled().await;
        sleep(shared.close_grace).await;
    });
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            () = &mut grace => break,
        };
        match msg {
            Some(Ok(Message::Text(t))) => match shared.system {
                System::Tern => {
                    for line in t.split('\n') {
                        on_text(line, spec, shared, &phase_rx, &mut last_seq);
                    }
                }
                _ => on_peer_text(&t, spec, shared, &phase_rx, &mut last_seq, peer),
            },
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map_or_else(
                    || "server closed".to_owned(),
                    |f| format!("server closed ({})", u16::from(f.code)),
                );
                let _ = drop_reason.set(why);
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let _ = drop_reason.set(format!("read error: {}", error_kind(&e)));
                break;
            }
            None => {
                let _ = drop_reason.set("eof".into());
                break;
            }
        }
    }
    ended.cancel();
}

fn error_kind(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(io) => format!("{:?}", io.kind()),
        Error::ConnectionClosed | Error::AlreadyClosed => "closed".into(),
        Error::Protocol(p) => format!("protocol {p:?}").chars().take(60).collect(),
        other => other.to_string().chars().take(60).collect(),
    }
}

/// The phase a stamp belongs to, if it is this process's current one.
fn phase_of(
    rx: &watch::Receiver<Option<Arc<LoadPhase>>>,
    run_id: u32,
    st: &Stamp,
) -> Option<Arc<LoadPhase>> {
    if st.run != run_id {
        return None;
    }
    rx.borrow().as_ref().filter(|p| p.id == st.phase).cloned()
}

fn on_text(
    text: &str,
    spec: &SessionSpec,
    shared: &Shared,
    phase_rx: &watch::Receiver<Option<Arc<LoadPhase>>>,
    last_seq: &mut Option<(u64, u64)>,
) {
    let now = unix_now_ns();
    let shard = spec.index as usize;
    match frame::parse(text) {
        Some(Inbound::Ack { client_msg_id, .. }) => {
            let Some(st) = client_msg_id.as_deref().and_then(Stamp::decode) else {
                return;
            };
            if let Some(p) = phase_of(phase_rx, shared.run_id, &st) {
                p.stats.acked.inc();
                if st.scheduled_ns >= p.stats.measure_from_ns {
                    p.stats.ack.record(shard, elapsed_us(st.sent_ns, now));
                }
            }
        }
        Some(Inbound::Message {
            chat_id,
            seq,
            stamp_text,
        }) => {
            let mut repeated = false;
            if let (Some(c), Some(s)) = (chat_id, seq) {
                match *last_seq {
                    Some((lc, ls)) if lc == c && s <= ls => repeated = true,
                    _ => *last_seq = Some((c, s)),
                }
            }
            let Some(st) = stamp_text.as_deref().and_then(Stamp::decode) else {
                return;
            };
            if let Some(p) = phase_of(phase_rx, shared.run_id, &st) {
                p.stats.delivered.inc();
                if repeated {
                    p.stats.duplicate_or_reordered.inc();
                }
                if st.scheduled_ns >= p.stats.measure_from_ns {
                    p.stats
                        .delivery
                        .record(shard, elapsed_us(st.scheduled_ns, now));
                    p.stats
                        .delivery_from_send
                        .record(shard, elapsed_us(st.sent_ns, now));
                }
            }
        }
        Some(Inbound::Error {
            code,
            client_msg_id,
        }) => {
            let phase = phase_rx.borrow().clone();
            match phase {
                Some(p) => {
                    p.stats.errors.add(&code);
                    if client_msg_id.is_some() {
                        p.stats.rejected.inc();
                    }
                }
                None => shared.fleet.errors.add(&code),
            }
        }
        Some(Inbound::Pong) => shared.fleet.pongs.inc(),
        Some(Inbound::Reconnect { .. }) => shared.fleet.reconnect_frames.inc(),
        Some(Inbound::Hello { .. } | Inbound::Other) => {}
        None => shared.fleet.errors.add("bench: unparseable frame"),
    }
}

/// A message arrived with stamp `st`: count it and its latency (shared by every system).
#[inline]
pub fn record_delivery(
    st: &Stamp,
    now: u64,
    shard: usize,
    repeated: bool,
    shared: &Shared,
    phase_rx: &watch::Receiver<Option<Arc<LoadPhase>>>,
) {
    if let Some(p) = phase_of(phase_rx, shared.run_id, st) {
        p.stats.delivered.inc();
        if repeated {
            p.stats.duplicate_or_reordered.inc();
        }
        if st.scheduled_ns >= p.stats.measure_from_ns {
            p.stats
                .delivery
                .record(shard, elapsed_us(st.scheduled_ns, now));
            p.stats
                .delivery_from_send
                .record(shard, elapsed_us(st.sent_ns, now));
        }
    }
}

/// The send stamped `st` was acknowledged.
#[inline]
pub fn record_ack(
    st: &Stamp,
    now: u64,
    shard: usize,
    shared: &Shared,
    phase_rx: &watch::Receiver<Option<Arc<LoadPhase>>>,
) {
    if let Some(p) = phase_of(phase_rx, shared.run_id, st) {
        p.stats.acked.inc();
        if st.scheduled_ns >= p.stats.measure_from_ns {
            p.stats.ack.record(shard, elapsed_us(st.sent_ns, now));
        }
    }
}

/// An error answered a send (`rejected`) or came on its own.
pub fn record_error(
    code: &str,
    answers_send: bool,
    shared: &Shared,
    phase_rx: &watch::Receiver<Option<Arc<LoadPhase>>>,
) {
    let phase = phase_rx.borrow().clone();
    match phase {
        Some(p) => {
            p.stats.errors.add(code);
            if answers_send {
                p.stats.rejected.inc();
            }
        }
        None => shared.fleet.errors.add(code),
    }
}

/// `seq` went backwards (or repeated) on this connection's chat.
fn repeated_seq(last_seq: &mut Option<(u64, u64)>, chat_id: Option<u64>, seq: Option<u64>) -> bool {
    if let (Some(c), Some(s)) = (chat_id, seq) {
        match *last_seq {
            Some((lc, ls)) if lc == c && s <= ls => return true,
            _ => *last_seq = Some((c, s)),
        }
    }
    false
}

/// A text frame from a peer (Centrifugo: possibly several lines; Socket.IO: one packet).
fn on_peer_text(
    text: &str,
    spec: &SessionSpec,
    shared: &Shared,
    phase_rx: &watch::Receiver<Option<Arc<LoadPhase>>>,
    last_seq: &mut Option<(u64, u64)>,
    peer: &PeerConn,
) {
    let now = unix_now_ns();
    let shard = spec.index as usize;
    let mut one = |ev: PeerEvent<'_>| match ev {
        PeerEvent::Message {
            chat_id,
            seq,
            stamp,
            ..
        } => {
            let repeated = repeated_seq(last_seq, chat_id, seq);
            // Centrifugo delivers a publication to every subscriber, the publisher included:
            // its own copy is not a delivery to another member.
            if let Some(st) = Stamp::decode(&stamp)
                && !(st.conn == spec.index && st.run == shared.run_id)
            {
                record_delivery(&st, now, shard, repeated, shared, phase_rx);
            }
        }
        PeerEvent::Ack { stamp } => {
            if let Some(st) = Stamp::decode(&stamp) {
                record_ack(&st, now, shard, shared, phase_rx);
            }
        }
        PeerEvent::AckId { id } => {
            if let Some(st) = take_pending(peer, id) {
                record_ack(&st, now, shard, shared, phase_rx);
            }
        }
        PeerEvent::Error { code, id } => {
            let answers_send = id.is_some_and(|i| i >= proto::CF_PUBLISH_ID_BASE)
                && id.and_then(|i| take_pending(peer, i)).is_some();
            record_error(&code, answers_send, shared, phase_rx);
        }
        PeerEvent::Reply(r) => {
            let _ = peer.replies.send(r);
            shared.fleet.pongs.inc();
        }
        PeerEvent::Other => {}
    };
    match shared.system {
        System::Centrifugo => {
            for line in text.split('\n').filter(|l| !l.is_empty()) {
                one(proto::cf_parse(line));
            }
        }
        _ => one(proto::sio_parse(text)),
    }
}

/// The stamp of Centrifugo publish `id` (replies come in command order; older entries
/// without a reply are dropped).
fn take_pending(peer: &PeerConn, id: u32) -> Option<Stamp> {
    let mut q = peer.pending.lock().unwrap_or_else(|p| p.into_inner());
    while let Some((i, st)) = q.pop_front() {
        if i == id {
            return Some(st);
        }
    }
    None
}

/// This connection's part of an active phase.
struct Active {
    phase: Arc<LoadPhase>,
    chat_id: u64,
    plan: SendPlan,
    next: u64,
}

impl Active {
    fn for_phase(phase: Option<Arc<LoadPhase>>, spec: &SessionSpec) -> Option<Active> {
        let phase = phase?;
        let chat_id = spec.chat_id?;
        let plan = schedule::plan_for(
            phase.rate,
            phase.senders,
            spec.sender_index?,
            phase.duration,
        )?;
        Some(Active {
            phase,
            chat_id,
            plan,
            next: 0,
        })
    }

    fn next_instant(&self) -> Instant {
        self.phase.start + self.plan.offset(self.next)
    }
}

/// Spread heartbeats over the interval so 20k connections do not ping in the same tick.
fn first_ping_delay(index: u32, every: Duration) -> Duration {
    let frac = f64::from(index.wrapping_mul(2_654_435_761) % 10_000) / 10_000.0;
    every.mul_f64(frac.max(0.01))
}

async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    spec: &SessionSpec,
    shared: &Shared,
    ended: &CancellationToken,
    drop_reason: &OnceLock<String>,
    peer: &PeerConn,
    mut replies: mpsc::UnboundedReceiver<&'static str>,
) {
    let mut phase_rx = shared.phase.subscribe();
    let client_pings = shared.system.client_pings();
    let mut cmd_id: u32 = 0;
    let every = shared.ping_interval;
    let mut ping =
        tokio::time::interval_at(Instant::now() + first_ping_delay(spec.index, every), every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut active = Active::for_phase(phase_rx.borrow_and_update().clone(), spec);
    let far = Duration::from_secs(365 * 86_400);
    loop {
        let next_at = active
            .as_ref()
            .map_or_else(|| Instant::now() + far, Active::next_instant);
        tokio::select! {
            biased;
            () = shared.close.cancelled() => {
                let _ = timeout(shared.close_grace, sink.send(Message::Close(None))).await;
                break;
            }
            () = ended.cancelled() => break,
            changed = phase_rx.changed() => {
                active = match changed {
                    Ok(()) => Active::for_phase(phase_rx.borrow_and_update().clone(), spec),
                    Err(_) => None,
                };
            }
            () = sleep_until(next_at), if active.is_some() => {
                let Some(a) = active.as_mut() else { continue };
                if a.phase.stop.is_cancelled() {
                    active = None;
                    continue;
                }
                cmd_id = cmd_id.wrapping_add(1);
                if let Err(e) = send_scheduled(&mut sink, a, spec, shared, peer, cmd_id).await {
                    let _ = drop_reason.set(format!("send error: {}", error_kind(&e)));
                    break;
                }
                a.next += 1;
                if a.next >= a.plan.count {
                    active = None;
                }
            }
            Some(r) = replies.recv() => {
                if let Err(e) = sink.send(Message::text(r)).await {
                    let _ = drop_reason.set(format!("send error: {}", error_kind(&e)));
                    break;
                }
            }
            _ = ping.tick(), if client_pings => {
                if let Err(e) = sink.send(Message::text(frame::PING)).await {
                    let _ = drop_reason.set(format!("send error: {}", error_kind(&e)));
                    break;
                }
                shared.fleet.pings_sent.inc();
            }
        }
    }
    ended.cancel();
}

async fn send_scheduled(
    sink: &mut SplitSink<Ws, Message>,
    a: &Active,
    spec: &SessionSpec,
    shared: &Shared,
    peer: &PeerConn,
    cmd_id: u32,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let offset = a.plan.offset(a.next);
    let scheduled_ns = a.phase.start_unix_ns + offset.as_nanos() as u64;
    let sent_ns = unix_now_ns();
    let stamp = Stamp {
        run: shared.run_id,
        phase: a.phase.id,
        conn: spec.index,
        n: a.next,
        scheduled_ns,
        sent_ns,
    };
    let id = stamp.encode();
    let text = match shared.system {
        System::Tern => frame::encode_message(a.chat_id, &stamp.content(a.phase.message_size), &id),
        System::Centrifugo => {
            let cid = proto::CF_PUBLISH_ID_BASE
                .wrapping_add(cmd_id)
                .max(proto::CF_PUBLISH_ID_BASE);
            peer.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((cid, stamp));
            proto::cf_publish(cid, a.chat_id, &stamp.content(a.phase.message_size))
        }
        System::Socketio => proto::sio_message(
            u64::from(cmd_id) + 1000,
            a.chat_id,
            &stamp.content(a.phase.message_size),
            &id,
        ),
        System::Matrix => unreachable!("Matrix sessions are HTTP (matrix.rs)"),
    };
    let stats = &a.phase.stats;
    // Counted before the write so an ack can never be seen before its send.
    stats.sent.inc();
    match sink.send(Message::text(text)).await {
        Ok(()) => {
            if scheduled_ns >= stats.measure_from_ns {
                stats
                    .send_lag
                    .record(spec.index as usize, elapsed_us(scheduled_ns, sent_ns));
            }
            Ok(())
        }
        Err(e) => {
            stats.sent.dec();
            stats.send_failures.inc();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_spread_over_the_interval() {
        let every = Duration::from_secs(25);
        let delays: Vec<Duration> = (0..1000).map(|i| first_ping_delay(i, every)).collect();
        assert!(delays.iter().all(|d| *d > Duration::ZERO && *d <= every));
        let early = delays.iter().filter(|d| **d < every / 2).count();
        assert!(
            (400..=600).contains(&early),
            "{early} of 1000 in the first half"
        );
    }
}
