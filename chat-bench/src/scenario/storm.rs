//! `storm`: N clients lose their connections at once, messages are sent to their chats while
//! they are away, then all N reconnect at the same moment and catch up. Measures how long until
//! every client is back (handshake done) and until every client has what it missed.
//!
//! Each chat has `--chat-size` members: one sender, who stays connected, and chat-size − 1
//! clients that take part in the storm. Steps:
//! 1. everyone connects; every sender sends one message and every client waits for it, so each
//!    client has a position to resume from (Tern `seq`, Centrifugo stream offset + epoch,
//!    Socket.IO session `pid` + packet offset, Matrix `next_batch`);
//! 2. the clients drop their connections (TCP closed without a WebSocket close: a network
//!    blip, not a sign-out; Matrix: the long-poll is abandoned);
//! 3. every sender sends `--missed` messages, all acked;
//! 4. all clients reconnect at once (at most --concurrency handshakes in flight) and catch up
//!    the way each system defines: Tern `sync` from the last seq; Centrifugo subscribe with
//!    `recover` (needs history); Socket.IO connection state recovery (pid + offset); Matrix
//!    `/sync?since=`. A system without a catch-up mechanism in its configuration reconnects
//!    and is reported with nothing caught up.

use super::{Bench, progress, synthetic_chat};
use crate::cli::StormArgs;
use crate::conn::{self, Resume, Ws};
use crate::frame;
use crate::matrix;
use crate::proto::{self, PeerEvent, Pos, System};
use crate::report::{LatencySummary, StormReport};
use crate::stamp::{Stamp, unix_now_ns};
use crate::stats::{Counter, LatencyHistogram, Tally};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the driver tells every task to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Connect,
    /// Senders: send the first message.
    Warm,
    /// Clients: drop the connection.
    Drop,
    /// Senders: send the missed messages.
    SendMissed,
    /// Clients: reconnect and catch up.
    Storm,
    Close,
}

struct Ctl {
    system: System,
    matrix: Option<Arc<matrix::Directory>>,
    run_id: u32,
    step: watch::Sender<Step>,
    storm_start: std::sync::OnceLock<Instant>,
    missed: u64,
    catch_up_timeout: Duration,
    connect_timeout: Duration,
    permits: Arc<Semaphore>,
    mint: crate::token::TokenMint,
    edges: Vec<(std::net::SocketAddr, String)>,
    // counters
    connected: Counter,
    connect_failed: Counter,
    failures: Tally,
    warm_ok: Counter,
    warm_sent: Counter,
    missed_acked: Counter,
    dropped: Counter,
    reconnected: Counter,
    reconnect_failed: Counter,
    recovered_sessions: Counter,
    caught_up: Counter,
    no_catch_up: Counter,
    timed_out: Counter,
    duplicates: Counter,
    last_back_us: AtomicU64,
    last_caught_up_us: AtomicU64,
    back: LatencyHistogram,
    caught: LatencyHistogram,
    errors: Tally,
}

impl Ctl {
    fn edge(&self, i: u64) -> &(std::net::SocketAddr, String) {
        &self.edges[i as usize % self.edges.len()]
    }

    async fn wait_for(&self, at_least: Step) -> Step {
        let mut rx = self.step.subscribe();
        let s = rx.wait_for(|s| *s >= at_least).await.map(|s| *s);
        s.unwrap_or(Step::Close)
    }

    fn since_storm_us(&self) -> u64 {
        self.storm_start
            .get()
            .map_or(0, |s| s.elapsed().as_micros() as u64)
    }

    fn stamp(&self, phase: u32, conn: u32, n: u64) -> String {
        let now = unix_now_ns();
        Stamp {
            run: self.run_id,
            phase,
            conn,
            n,
            scheduled_ns: now,
            sent_ns: now,
        }
        .encode()
    }

    /// Phase of a stamp of this run.
    fn phase_of(&self, text: &str) -> Option<(u32, u32, u64)> {
        let st = Stamp::decode(text)?;
        (st.run == self.run_id).then_some((st.phase, st.conn, st.n))
    }
}

/// Where a WebSocket client is, for resuming.
#[derive(Default)]
struct Position {
    seq: u64,
    cf: Vec<(u64, String, u64)>,
    sio_pid: Option<String>,
    sio_offset: Option<String>,
}

pub async fn run(args: StormArgs, interrupt: CancellationToken) -> anyhow::Result<StormReport> {
    let common = args.common.clone();
    let size = u64::from(args.chat_size.max(2));
    let clients = u64::from(args.clients);
    let chats = clients.div_ceil(size - 1);
    let total = clients + chats;
    let bench = Bench::new(&common, total as usize, interrupt.clone())?;
    let system = common.system;
    let run_id = bench.shared().run_id;
    let users = |c: u64| -> (u64, Vec<u64>) {
        let base = common.user_offset + c * size;
        let members = (1..size).map(|k| base + k + 1).collect();
        (base + 1, members)
    };
    progress(
        bench.started,
        &format!(
            "storm on {system:?}: {clients} clients in {chats} chats of {size} (one sender each), {} missed messages per chat",
            args.missed
        ),
    );
    // Chats.
    let http_conc = args.http_concurrency as usize;
    let chat_ids: Vec<u64> = match system {
        System::Tern => {
            let api = Arc::new(crate::api::Api::new(
                &bench.target.http_base,
                &common.jwt_secret,
            )?);
            let list: Vec<(u64, Vec<u64>)> = (0..chats).map(users).collect();
            futures::stream::iter(list.into_iter().enumerate())
                .map(|(i, (creator, others))| {
                    let api = api.clone();
                    async move {
                        api.create_group(creator, &others, &format!("storm {run_id:08x} {i}"))
                            .await
                    }
                })
                .buffered(http_conc.max(1))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?
        }
        System::Centrifugo | System::Socketio => {
            (0..chats).map(|i| synthetic_chat(run_id, i)).collect()
        }
        System::Matrix => {
            let admin = matrix::Admin::new(
                &bench.target.http_base,
                &common.jwt_secret,
                common.matrix_state.clone(),
            )?;
            let all: Vec<u64> = (0..chats)
                .flat_map(|c| {
                    let (s, m) = users(c);
                    std::iter::once(s).chain(m)
                })
                .collect();
            let done = AtomicU64::new(0);
            progress(
                bench.started,
                &format!("matrix: registering {} users", all.len()),
            );
            admin.ensure_users(&all, http_conc, &done).await?;
            progress(bench.started, &format!("matrix: {chats} rooms"));
            let rooms_done = AtomicU64::new(0);
            let rooms: Vec<String> = futures::stream::iter(0..chats)
                .map(|c| {
                    let (s, m) = users(c);
                    let (admin, rooms_done) = (&admin, &rooms_done);
                    async move {
                        let r = admin.group_room(s, &m, 4, &AtomicU64::new(0)).await;
                        rooms_done.fetch_add(1, Ordering::Relaxed);
                        r
                    }
                })
                .buffered((http_conc / 4).max(1))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?;
            let dir = admin.directory(&all, (0..chats).zip(rooms).collect(), total as usize)?;
            let _ = bench.shared().matrix.set(Arc::new(dir));
            (0..chats).collect()
        }
    };
    progress(bench.started, &format!("{} chats ready", chat_ids.len()));

    let (step_tx, _) = watch::channel(Step::Connect);
    let ctl = Arc::new(Ctl {
        system,
        matrix: bench.shared().matrix.get().cloned(),
        run_id,
        step: step_tx,
        storm_start: std::sync::OnceLock::new(),
        missed: u64::from(args.missed),
        catch_up_timeout: args.catch_up_timeout,
        connect_timeout: common.connect_timeout,
        permits: Arc::new(Semaphore::new(common.concurrency as usize)),
        mint: crate::token::TokenMint::new(&common.jwt_secret),
        edges: bench
            .target
            .edges
            .iter()
            .map(|(a, u)| (*a, system.ws_url(u)))
            .collect(),
        connected: Counter::default(),
        connect_failed: Counter::default(),
        failures: Tally::default(),
        warm_ok: Counter::default(),
        warm_sent: Counter::default(),
        missed_acked: Counter::default(),
        dropped: Counter::default(),
        reconnected: Counter::default(),
        reconnect_failed: Counter::default(),
        recovered_sessions: Counter::default(),
        caught_up: Counter::default(),
        no_catch_up: Counter::default(),
        timed_out: Counter::default(),
        duplicates: Counter::default(),
        last_back_us: AtomicU64::new(0),
        last_caught_up_us: AtomicU64::new(0),
        back: LatencyHistogram::default(),
        caught: LatencyHistogram::default(),
        errors: Tally::default(),
    });
    let tracker = TaskTracker::new();
    let mut index = 0u32;
    let mut n_clients = 0u64;
    for (c, &chat) in chat_ids.iter().enumerate() {
        let (sender, members) = users(c as u64);
        let (ctl2, i) = (ctl.clone(), index);
        tracker.spawn(async move { sender_task(ctl2, i, sender, chat).await });
        index += 1;
        for m in members {
            if n_clients >= clients {
                break;
            }
            n_clients += 1;
            let (ctl2, i) = (ctl.clone(), index);
            tracker.spawn(async move { client_task(ctl2, i, m, chat).await });
            index += 1;
        }
    }
    let n_senders = chat_ids.len() as u64;
    let everyone = n_senders + n_clients;
    tracker.close();
    let wait = |what: &'static str, target: u64, counter: &'static str, limit: Duration| {
        let ctl = ctl.clone();
        let started = bench.started;
        let interrupt = interrupt.clone();
        async move {
            let end = Instant::now() + limit;
            let mut last_print = Instant::now();
            loop {
                let got = match counter {
                    "connected" => ctl.connected.get() + ctl.connect_failed.get(),
                    "warm" => ctl.warm_ok.get(),
                    "missed" => ctl.missed_acked.get(),
                    "dropped" => ctl.dropped.get(),
                    _ => {
                        ctl.caught_up.get()
                            + ctl.no_catch_up.get()
                            + ctl.timed_out.get()
                            + ctl.reconnect_failed.get()
                    }
                };
                if got >= target || Instant::now() >= end || interrupt.is_cancelled() {
                    progress(started, &format!("{what}: {got}/{target}"));
                    return got;
                }
                if last_print.elapsed() >= Duration::from_secs(1) {
                    last_print = Instant::now();
                    progress(started, &format!("{what}: {got}/{target}"));
                }
                sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let limit = Duration::from_secs(120);
    wait("connected", everyone, "connected", limit).await;
    if ctl.connect_failed.get() > 0 {
        progress(
            bench.started,
            &format!(
                "{} connections failed: {:?}",
                ctl.connect_failed.get(),
                ctl.failures.snapshot()
            ),
        );
    }
    let _ = ctl.step.send(Step::Warm);
    wait(
        "first message received by clients",
        n_clients,
        "warm",
        Duration::from_secs(60),
    )
    .await;
    let _ = ctl.step.send(Step::Drop);
    wait(
        "connections dropped",
        n_clients,
        "dropped",
        Duration::from_secs(30),
    )
    .await;
    // Let the servers notice the disconnections.
    sleep(Duration::from_secs(1)).await;
    let _ = ctl.step.send(Step::SendMissed);
    let expect_acks = n_senders * u64::from(args.missed);
    wait(
        "missed messages acked",
        expect_acks,
        "missed",
        Duration::from_secs(60),
    )
    .await;
    progress(
        bench.started,
        &format!("storm: {n_clients} clients reconnect now"),
    );
    let _ = ctl.storm_start.set(Instant::now());
    let _ = ctl.step.send(Step::Storm);
    wait(
        "clients back and caught up",
        n_clients,
        "caught",
        args.catch_up_timeout + Duration::from_secs(30),
    )
    .await;
    let _ = ctl.step.send(Step::Close);
    let _ = timeout(Duration::from_secs(10), tracker.wait()).await;
    let us = |v: u64| v as f64 / 1e6;
    Ok(StormReport {
        scenario: "storm",
        system: format!("{system:?}").to_lowercase(),
        target: bench.target.http_base.clone(),
        clients: n_clients,
        senders: n_senders,
        chat_size: size,
        missed_per_chat: u64::from(args.missed),
        connected_before: ctl.connected.get(),
        connect_failed: ctl.connect_failed.get(),
        failures: ctl.failures.snapshot(),
        warm_received: ctl.warm_ok.get(),
        missed_acked: ctl.missed_acked.get(),
        reconnected: ctl.reconnected.get(),
        reconnect_failed: ctl.reconnect_failed.get(),
        recovered_sessions: ctl.recovered_sessions.get(),
        caught_up: ctl.caught_up.get(),
        no_catch_up: ctl.no_catch_up.get(),
        timed_out: ctl.timed_out.get(),
        duplicates: ctl.duplicates.get(),
        all_back_s: us(ctl.last_back_us.load(Ordering::Relaxed)),
        all_caught_up_s: (ctl.caught_up.get() == n_clients && n_clients > 0)
            .then(|| us(ctl.last_caught_up_us.load(Ordering::Relaxed))),
        back: LatencySummary::from_histogram(&ctl.back.snapshot()),
        caught_up_after: LatencySummary::from_histogram(&ctl.caught.snapshot()),
        errors: ctl.errors.snapshot(),
    })
}

// ---------------------------------------------------------------------------------------------
// WebSocket systems

async fn dial(
    ctl: &Ctl,
    index: u32,
    user: u64,
    chat: u64,
    resume: Option<&Resume>,
) -> Result<(Ws, conn::Joined), String> {
    let token = ctl.mint.mint(user);
    let (addr, url) = ctl.edge(u64::from(index));
    let r = match ctl.system {
        System::Tern => {
            timeout(ctl.connect_timeout, async {
                conn::dial(*addr, url, None, &token, false)
                    .await
                    .map(|(ws, _)| (ws, conn::Joined::default()))
            })
            .await
        }
        _ => {
            timeout(ctl.connect_timeout, async {
                conn::dial_peer(ctl.system, *addr, url, None, &token, &[chat], resume)
                    .await
                    .map(|(ws, _, j)| (ws, j))
            })
            .await
        }
    };
    match r {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(e.label()),
        Err(_) => Err("timeout".into()),
    }
}

/// What one text frame holds for the storm: stamps of messages, an ack's stamp, a reply to send.
#[derive(Default)]
struct Seen {
    stamps: Vec<String>,
    acks: Vec<String>,
    ack_ids: u32,
    reply: Option<&'static str>,
    /// Tern `sync`: whether more pages follow.
    has_more: Option<bool>,
}

fn read_frame(ctl: &Ctl, text: &str, pos: &mut Position) -> Seen {
    let mut seen = Seen::default();
    match ctl.system {
        System::Tern => {
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                return seen;
            };
            let one = |m: &Value, seen: &mut Seen, pos: &mut Position| {
                if let Some(s) = m["seq"].as_u64() {
                    pos.seq = pos.seq.max(s);
                }
                if let Some(t) = m["client_msg_id"].as_str().or(m["content"].as_str()) {
                    seen.stamps.push(t.to_owned());
                }
            };
            match v["type"].as_str() {
                Some("message") => one(&v, &mut seen, pos),
                Some("sync") => {
                    for m in v["messages"].as_array().into_iter().flatten() {
                        one(m, &mut seen, pos);
                    }
                    seen.has_more = Some(v["has_more"].as_bool().unwrap_or(false));
                }
                Some("ack") => {
                    if let Some(t) = v["client_msg_id"].as_str() {
                        seen.acks.push(t.to_owned());
                    }
                }
                Some("error") => ctl.errors.add(v["code"].as_str().unwrap_or("error")),
                _ => {}
            }
        }
        System::Centrifugo | System::Socketio => {
            let mut one = |ev: PeerEvent<'_>| match ev {
                PeerEvent::Message {
                    chat_id,
                    stamp,
                    pos: p,
                    ..
                } => {
                    match p {
                        Some(Pos::Offset(o)) => {
                            if let Some(e) = pos.cf.iter_mut().find(|e| Some(e.0) == chat_id) {
                                e.2 = e.2.max(o);
                            }
                        }
                        Some(Pos::Token(t)) => pos.sio_offset = Some(t.into_owned()),
                        None => {}
                    }
                    seen.stamps.push(stamp.into_owned());
                }
                PeerEvent::Ack { stamp } => seen.acks.push(stamp.into_owned()),
                PeerEvent::AckId { .. } => seen.ack_ids += 1,
                PeerEvent::Reply(r) => seen.reply = Some(r),
                PeerEvent::Error { code, .. } => ctl.errors.add(&code),
                PeerEvent::Other => {}
            };
            if ctl.system == System::Centrifugo {
                for line in text.split('\n').filter(|l| !l.is_empty()) {
                    one(proto::cf_parse(line));
                }
            } else {
                one(proto::sio_parse(text));
            }
        }
        System::Matrix => {}
    }
    seen
}

fn send_frame(ctl: &Ctl, chat: u64, content: &str, id: u32) -> String {
    match ctl.system {
        System::Tern => frame::encode_message(chat, content, content),
        System::Centrifugo => proto::cf_publish(proto::CF_PUBLISH_ID_BASE + id, chat, content),
        System::Socketio => proto::sio_message(1000 + u64::from(id), chat, content, content),
        System::Matrix => unreachable!(),
    }
}

async fn sender_task(ctl: Arc<Ctl>, index: u32, user: u64, chat: u64) {
    if ctl.system == System::Matrix {
        return matrix_sender(ctl, index, user, chat).await;
    }
    let (mut ws, _) = {
        let _p = ctl.permits.acquire().await;
        match dial(&ctl, index, user, chat, None).await {
            Ok(x) => {
                ctl.connected.inc();
                x
            }
            Err(e) => {
                ctl.connect_failed.inc();
                ctl.failures.add(&e);
                return;
            }
        }
    };
    let mut pos = Position::default();
    let mut step_rx = ctl.step.subscribe();
    let mut sent_phase = 0u32;
    let mut acked = 0u64;
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    loop {
        let step = *step_rx.borrow_and_update();
        if step == Step::Close {
            let _ = timeout(Duration::from_secs(1), ws.send(Message::Close(None))).await;
            return;
        }
        let want_phase = match step {
            Step::Warm | Step::Drop => 1,
            Step::SendMissed | Step::Storm => 2,
            _ => 0,
        };
        if want_phase > sent_phase {
            sent_phase = want_phase;
            acked = 0;
            let count = if want_phase == 1 { 1 } else { ctl.missed };
            for n in 0..count {
                let content = ctl.stamp(want_phase, index, n);
                if ws
                    .send(Message::text(send_frame(
                        &ctl,
                        chat,
                        &content,
                        n as u32 + 1,
                    )))
                    .await
                    .is_err()
                {
                    ctl.errors.add("sender: send failed");
                    return;
                }
            }
            if want_phase == 1 {
                ctl.warm_sent.inc();
            }
        }
        tokio::select! {
            _ = step_rx.changed() => {}
            _ = ping.tick() => {
                if ctl.system == System::Tern {
                    let _ = ws.send(Message::text(frame::PING)).await;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let seen = read_frame(&ctl, &t, &mut pos);
                    if let Some(r) = seen.reply {
                        let _ = ws.send(Message::text(r)).await;
                    }
                    let n = seen.acks.iter().filter(|a| ctl.phase_of(a).is_some_and(|p| p.0 == 2)).count() as u64
                        + if sent_phase == 2 { u64::from(seen.ack_ids) } else { 0 };
                    if sent_phase == 2 && n > 0 {
                        let before = acked;
                        acked = (acked + n).min(ctl.missed);
                        for _ in before..acked { ctl.missed_acked.inc(); }
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    ctl.errors.add("sender: connection lost");
                    return;
                }
            }
        }
    }
}

async fn client_task(ctl: Arc<Ctl>, index: u32, user: u64, chat: u64) {
    if ctl.system == System::Matrix {
        return matrix_client(ctl, index, user, chat).await;
    }
    let (mut ws, joined) = {
        let _p = ctl.permits.acquire().await;
        match dial(&ctl, index, user, chat, None).await {
            Ok(x) => {
                ctl.connected.inc();
                x
            }
            Err(e) => {
                ctl.connect_failed.inc();
                ctl.failures.add(&e);
                return;
            }
        }
    };
    let mut pos = Position {
        cf: joined.cf,
        sio_pid: joined.sio_pid,
        ..Position::default()
    };
    // 1. Wait for the first message (or the drop order).
    let mut step_rx = ctl.step.subscribe();
    let mut warm = false;
    loop {
        let step = *step_rx.borrow_and_update();
        if step >= Step::Drop {
            break;
        }
        tokio::select! {
            _ = step_rx.changed() => {}
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let seen = read_frame(&ctl, &t, &mut pos);
                    if let Some(r) = seen.reply { let _ = ws.send(Message::text(r)).await; }
                    if !warm && seen.stamps.iter().any(|s| ctl.phase_of(s).is_some_and(|p| p.0 == 1)) {
                        warm = true;
                        ctl.warm_ok.inc();
                    }
                }
                Some(Ok(_)) => {}
                _ => { ctl.errors.add("client: connection lost before the storm"); return; }
            }
        }
    }
    // 2. Drop: close the TCP connection under the WebSocket, no close frame.
    drop(ws);
    ctl.dropped.inc();
    if ctl.wait_for(Step::Storm).await == Step::Close {
        return;
    }
    // 3. Reconnect at once and catch up.
    let resume = Resume {
        cf: pos.cf.clone(),
        sio: pos.sio_pid.clone().zip(pos.sio_offset.clone()),
    };
    let dialed = {
        let _p = ctl.permits.acquire().await;
        dial(&ctl, index, user, chat, Some(&resume)).await
    };
    let (mut ws, joined) = match dialed {
        Ok(x) => x,
        Err(e) => {
            ctl.reconnect_failed.inc();
            ctl.failures.add(&format!("reconnect: {e}"));
            return;
        }
    };
    let back = ctl.since_storm_us();
    ctl.reconnected.inc();
    ctl.back.record(index as usize, back);
    ctl.last_back_us.fetch_max(back, Ordering::Relaxed);
    if joined.recovered_ok {
        ctl.recovered_sessions.inc();
    }
    let can_catch_up = match ctl.system {
        System::Tern => true,
        System::Centrifugo => !pos.cf.is_empty(),
        System::Socketio => resume.sio.is_some(),
        System::Matrix => true,
    };
    if !can_catch_up {
        ctl.no_catch_up.inc();
        hold(&ctl, ws).await;
        return;
    }
    let mut got: HashSet<(u32, u64)> = HashSet::new();
    let count = |stamps: &[String], got: &mut HashSet<(u32, u64)>| {
        for s in stamps {
            if let Some((2, conn, n)) = ctl.phase_of(s)
                && !got.insert((conn, n))
            {
                ctl.duplicates.inc();
            }
        }
    };
    count(&joined.recovered, &mut got);
    if joined.sio_offset.is_some() {
        pos.sio_offset = joined.sio_offset.clone();
    }
    if ctl.system == System::Tern {
        let sync = format!(
            r#"{{"type":"sync","chat_id":{chat},"after_seq":{},"limit":200}}"#,
            pos.seq
        );
        if ws.send(Message::text(sync)).await.is_err() {
            ctl.reconnect_failed.inc();
            return;
        }
    }
    let deadline = tokio::time::sleep(ctl.catch_up_timeout);
    tokio::pin!(deadline);
    while (got.len() as u64) < ctl.missed {
        tokio::select! {
            () = &mut deadline => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let seen = read_frame(&ctl, &t, &mut pos);
                    if let Some(r) = seen.reply { let _ = ws.send(Message::text(r)).await; }
                    count(&seen.stamps, &mut got);
                    if seen.has_more == Some(true) {
                        let sync = format!(r#"{{"type":"sync","chat_id":{chat},"after_seq":{},"limit":200}}"#, pos.seq);
                        let _ = ws.send(Message::text(sync)).await;
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
    if got.len() as u64 >= ctl.missed {
        let t = ctl.since_storm_us();
        ctl.caught_up.inc();
        ctl.caught.record(index as usize, t);
        ctl.last_caught_up_us.fetch_max(t, Ordering::Relaxed);
    } else {
        ctl.timed_out.inc();
    }
    hold(&ctl, ws).await;
}

/// Keep the connection (answering pings) until the run ends.
async fn hold(ctl: &Ctl, mut ws: Ws) {
    let mut step_rx = ctl.step.subscribe();
    let mut pos = Position::default();
    loop {
        if *step_rx.borrow_and_update() == Step::Close {
            let _ = timeout(Duration::from_secs(1), ws.send(Message::Close(None))).await;
            return;
        }
        tokio::select! {
            _ = step_rx.changed() => {}
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Some(r) = read_frame(ctl, &t, &mut pos).reply {
                        let _ = ws.send(Message::text(r)).await;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix

async fn matrix_sender(ctl: Arc<Ctl>, index: u32, user: u64, chat: u64) {
    let Some(dir) = matrix_dir(&ctl) else {
        return;
    };
    let (Some(token), Some(room)) = (dir.tokens.get(&user), dir.rooms.get(&chat)) else {
        ctl.connect_failed.inc();
        ctl.failures.add("matrix: unknown user or room");
        return;
    };
    ctl.connected.inc();
    for (step, phase, count) in [(Step::Warm, 1u32, 1u64), (Step::SendMissed, 2, ctl.missed)] {
        if ctl.wait_for(step).await == Step::Close {
            return;
        }
        for n in 0..count {
            let content = ctl.stamp(phase, index, n);
            let url = format!(
                "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                dir.base,
                matrix::enc(room),
                content
            );
            let r = dir
                .http
                .put(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"msgtype": "m.text", "body": content}))
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {
                    if phase == 2 {
                        ctl.missed_acked.inc();
                    }
                }
                Ok(resp) => ctl
                    .errors
                    .add(&format!("matrix send: http {}", resp.status().as_u16())),
                Err(_) => ctl.errors.add("matrix send: request"),
            }
        }
    }
}

fn matrix_dir(ctl: &Ctl) -> Option<Arc<matrix::Directory>> {
    ctl.matrix.clone()
}

async fn matrix_client(ctl: Arc<Ctl>, index: u32, user: u64, _chat: u64) {
    let Some(dir) = matrix_dir(&ctl) else {
        return;
    };
    let (Some(token), Some(uid)) = (dir.tokens.get(&user), dir.user_ids.get(&user)) else {
        ctl.connect_failed.inc();
        ctl.failures.add("matrix: unknown user");
        return;
    };
    let filter = matrix::filter(uid);
    let first = {
        let _p = ctl.permits.acquire().await;
        timeout(
            ctl.connect_timeout,
            matrix::sync(&dir, token, matrix::position_filter(), None, 0),
        )
        .await
    };
    let mut since = match first {
        Ok(Ok(b)) => {
            ctl.connected.inc();
            b.next_batch
        }
        Ok(Err(e)) => {
            ctl.connect_failed.inc();
            ctl.failures.add(&e);
            return;
        }
        Err(_) => {
            ctl.connect_failed.inc();
            ctl.failures.add("timeout");
            return;
        }
    };
    let mut step_rx = ctl.step.subscribe();
    let mut warm = false;
    // Long-poll until told to drop; the request in flight is abandoned then.
    loop {
        if *step_rx.borrow_and_update() >= Step::Drop {
            break;
        }
        tokio::select! {
            _ = step_rx.changed() => {}
            r = matrix::sync(&dir, token, &filter, Some(&since), 30_000) => match r {
                Ok(b) => {
                    since = b.next_batch;
                    if !warm && b.bodies.iter().any(|(_, s)| ctl.phase_of(s).is_some_and(|p| p.0 == 1)) {
                        warm = true;
                        ctl.warm_ok.inc();
                    }
                }
                Err(e) => { ctl.errors.add(&e); sleep(Duration::from_millis(200)).await; }
            }
        }
    }
    ctl.dropped.inc();
    if ctl.wait_for(Step::Storm).await == Step::Close {
        return;
    }
    let mut got: HashSet<(u32, u64)> = HashSet::new();
    let mut back_seen = false;
    let deadline = Instant::now() + ctl.catch_up_timeout;
    while (got.len() as u64) < ctl.missed && Instant::now() < deadline {
        let r = if back_seen {
            matrix::sync(&dir, token, &filter, Some(&since), 10_000).await
        } else {
            let _p = ctl.permits.acquire().await;
            matrix::sync(&dir, token, &filter, Some(&since), 10_000).await
        };
        match r {
            Ok(b) => {
                if !back_seen {
                    back_seen = true;
                    let t = ctl.since_storm_us();
                    ctl.reconnected.inc();
                    ctl.back.record(index as usize, t);
                    ctl.last_back_us.fetch_max(t, Ordering::Relaxed);
                }
                if b.limited > 0 {
                    ctl.errors.add("matrix: timeline limited (gap)");
                }
                since = b.next_batch;
                for (_, s) in &b.bodies {
                    if let Some((2, conn, n)) = ctl.phase_of(s)
                        && !got.insert((conn, n))
                    {
                        ctl.duplicates.inc();
                    }
                }
            }
            Err(e) => {
                ctl.errors.add(&e);
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if !back_seen {
        ctl.reconnect_failed.inc();
    } else if got.len() as u64 >= ctl.missed {
        let t = ctl.since_storm_us();
        ctl.caught_up.inc();
        ctl.caught.record(index as usize, t);
        ctl.last_caught_up_us.fetch_max(t, Ordering::Relaxed);
    } else {
        ctl.timed_out.inc();
    }
    // Hold (a Matrix client keeps long-polling) until the run ends.
    loop {
        if *step_rx.borrow_and_update() == Step::Close {
            return;
        }
        tokio::select! {
            _ = step_rx.changed() => {}
            r = matrix::sync(&dir, token, &filter, Some(&since), 30_000) => {
                if let Ok(b) = r { since = b.next_batch; } else { sleep(Duration::from_millis(500)).await; }
            }
        }
    }
}
