//! The scenarios, and what they share: setting up a fleet, ramping it with progress lines,
//! running one load phase with a drain, and turning its counters into a report.

pub mod connect;
pub mod direct;
pub mod group;
pub mod handshake;
pub mod storm;
pub mod sweep;

use crate::cli::{CommonArgs, LoadArgs};
use crate::fleet::{AfterHello, DialOptions, Fleet};
use crate::procfs;
use crate::report::{LatencySummary, LoadReport, fmt_ms, fmt_num};
use crate::session::{LoadPhase, SessionSpec, Shared};
use crate::stamp::unix_now_ns;
use crate::stats::LoadStats;
use crate::target::Target;
use crate::token::TokenMint;
use anyhow::bail;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

/// A progress line on stderr, prefixed with the time since `since`.
pub fn progress(since: Instant, msg: &str) {
    eprintln!("[{:>7.1}s] {msg}", since.elapsed().as_secs_f64());
}

/// Everything a scenario needs to open connections.
pub struct Bench {
    pub target: Target,
    pub fleet: Fleet,
    pub common: CommonArgs,
    pub started: Instant,
}

impl Bench {
    /// Parse the target, check the open-files budget for `connections`, build the fleet.
    pub fn new(
        common: &CommonArgs,
        connections: usize,
        interrupt: CancellationToken,
    ) -> anyhow::Result<Bench> {
        let target = Target::parse(&common.url, common.allow_remote)?;
        if let Some(ips) = &common.source_ips
            && !common.allow_remote
            && ips.all().iter().any(|ip| !ip.is_loopback())
        {
            bail!(
                "--source-ips must be loopback addresses (127.0.0.0/8, ::1) unless --allow-remote"
            );
        }
        let limit = procfs::raise_nofile_limit();
        let need = procfs::fds_needed(connections);
        if need > limit {
            bail!(
                "{connections} connections need about {need} open files but this process may open {limit}; \
                 run several bench processes (each with its own --user-offset and --source-ips), see \
                 docs/benchmarks-howto.md"
            );
        }
        let mut shared = Shared::new(common.ping_interval, common.system);
        shared.batch = !common.one_frame_per_message;
        let shared = Arc::new(shared);
        let fleet = Fleet::new(shared, TokenMint::new(&common.jwt_secret), interrupt);
        Ok(Bench {
            target,
            fleet,
            common: common.clone(),
            started: Instant::now(),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.fleet.shared
    }

    pub fn interrupted(&self) -> bool {
        self.fleet.interrupt.is_cancelled()
    }

    pub fn dial_options(&self, after_hello: AfterHello) -> DialOptions {
        DialOptions {
            edges: Arc::new(self.target.edges.clone()),
            source_ips: self.common.source_ips.clone(),
            concurrency: self.common.concurrency,
            connect_rate: self.common.connect_rate,
            timeout: self.common.connect_timeout,
            after_hello,
        }
    }

    /// Dial `specs` and print progress until every dial finished. Returns the ramp's length.
    pub async fn ramp(&self, specs: Vec<SessionSpec>, after_hello: AfterHello) -> Duration {
        let total = specs.len() as u64;
        let f = &self.fleet.shared.fleet;
        let start = Instant::now();
        self.fleet.dial_all(specs, self.dial_options(after_hello));
        let mut tick = tokio::time::interval(self.common.progress_interval);
        tick.tick().await;
        let mut last = (start, 0u64);
        loop {
            let done = self.fleet.dials_done.get();
            if done >= total {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {
                    let now = Instant::now();
                    let est = f.established.get();
                    let rate = (est - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
                    last = (now, est);
                    let p99 = LatencySummary::from_histogram(&f.handshake.snapshot()).p99_us;
                    progress(self.started, &format!(
                        "connecting: {}/{} established, {} failed, {} handshakes/s, handshake p99 {} ms",
                        est, total, f.failed.get(), fmt_num(rate), fmt_ms(p99)
                    ));
                }
                () = sleep(Duration::from_millis(20)) => {}
                () = self.fleet.interrupt.cancelled() => break,
            }
        }
        let took = start.elapsed();
        progress(
            self.started,
            &format!(
                "ramp done in {:.2} s: {} established, {} failed{}",
                took.as_secs_f64(),
                f.established.get(),
                f.failed.get(),
                failures_suffix(self)
            ),
        );
        took
    }

    /// Wait `d` unless interrupted, printing the open-connection count.
    pub async fn hold(&self, d: Duration, extra: impl Fn() -> String) {
        let end = Instant::now() + d;
        let mut tick = tokio::time::interval(self.common.progress_interval);
        tick.tick().await;
        let f = &self.fleet.shared.fleet;
        loop {
            tokio::select! {
                () = sleep_until(end) => break,
                () = self.fleet.interrupt.cancelled() => break,
                _ = tick.tick() => progress(self.started, &format!(
                    "holding: {} open, {} dropped, {} pings, {} pongs{}",
                    f.open.get(), f.dropped.get(), f.pings_sent.get(), f.pongs.get(), extra()
                )),
            }
        }
    }
}

fn failures_suffix(b: &Bench) -> String {
    let t = b.fleet.shared.fleet.failures.snapshot();
    if t.is_empty() {
        String::new()
    } else {
        format!(
            " ({})",
            t.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// A chat id for systems whose chats need no setup (Centrifugo channels, Socket.IO rooms):
/// unique per bench process, below 2^53.
pub fn synthetic_chat(run_id: u32, i: u64) -> u64 {
    (u64::from(run_id) << 20) | (i & 0xF_FFFF)
}

/// Matrix: register `users` (cached in --matrix-state) and publish the directory with `rooms`.
async fn matrix_setup(
    bench: &Bench,
    admin: &crate::matrix::Admin,
    users: &[u64],
    concurrency: usize,
) -> anyhow::Result<()> {
    let done = std::sync::atomic::AtomicU64::new(0);
    let reg = admin.ensure_users(users, concurrency, &done);
    tokio::pin!(reg);
    let mut tick = tokio::time::interval(bench.common.progress_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut reg => return r,
            _ = tick.tick() => progress(bench.started, &format!(
                "matrix: {}/{} users registered", done.load(std::sync::atomic::Ordering::Relaxed), users.len())),
            () = bench.fleet.interrupt.cancelled() => bail!("interrupted during setup"),
        }
    }
}

fn matrix_admin(bench: &Bench) -> anyhow::Result<crate::matrix::Admin> {
    crate::matrix::Admin::new(
        &bench.target.http_base,
        &bench.common.jwt_secret,
        bench.common.matrix_state.clone(),
    )
}

fn publish_directory(
    bench: &Bench,
    admin: &crate::matrix::Admin,
    users: &[u64],
    rooms: std::collections::HashMap<u64, String>,
) -> anyhow::Result<()> {
    let dir = admin.directory(users, rooms, users.len().max(64))?;
    if bench.shared().matrix.set(Arc::new(dir)).is_err() {
        bail!("matrix directory set twice");
    }
    Ok(())
}

/// Users only (the `connect` scenario): Matrix registers them; the others need nothing.
pub async fn setup_users(bench: &Bench, users: &[u64], concurrency: usize) -> anyhow::Result<()> {
    if bench.common.system == crate::proto::System::Matrix {
        let admin = matrix_admin(bench)?;
        matrix_setup(bench, &admin, users, concurrency).await?;
        publish_directory(bench, &admin, users, Default::default())?;
    }
    Ok(())
}

/// Direct chats for `pairs`, in order, on any system.
pub async fn setup_direct(
    bench: &Bench,
    api: Option<&Arc<crate::api::Api>>,
    pairs: &[(u64, u64)],
    concurrency: usize,
    done: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<Vec<u64>> {
    use crate::proto::System;
    let run_id = bench.shared().run_id;
    match bench.common.system {
        System::Tern => {
            let api = api.expect("Tern needs the API");
            api.create_direct_chats(pairs, concurrency, done).await
        }
        System::Centrifugo | System::Socketio => {
            done.store(pairs.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok((0..pairs.len() as u64)
                .map(|i| synthetic_chat(run_id, i))
                .collect())
        }
        System::Matrix => {
            let admin = matrix_admin(bench)?;
            let users: Vec<u64> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
            matrix_setup(bench, &admin, &users, concurrency).await?;
            let rooms = admin.direct_rooms(pairs, concurrency, done).await?;
            let ids: Vec<u64> = (0..pairs.len() as u64).collect();
            publish_directory(
                bench,
                &admin,
                &users,
                ids.iter().copied().zip(rooms).collect(),
            )?;
            Ok(ids)
        }
    }
}

/// One group: `creator` plus `others`, on any system.
pub async fn setup_group(
    bench: &Bench,
    creator: u64,
    others: &[u64],
    title: &str,
    concurrency: usize,
) -> anyhow::Result<u64> {
    use crate::proto::System;
    match bench.common.system {
        System::Tern => {
            let api = crate::api::Api::new(&bench.target.http_base, &bench.common.jwt_secret)?;
            api.create_group(creator, others, title).await
        }
        System::Centrifugo | System::Socketio => Ok(synthetic_chat(bench.shared().run_id, 0)),
        System::Matrix => {
            let admin = matrix_admin(bench)?;
            let users: Vec<u64> = std::iter::once(creator)
                .chain(others.iter().copied())
                .collect();
            matrix_setup(bench, &admin, &users, concurrency).await?;
            let done = std::sync::atomic::AtomicU64::new(0);
            let join = admin.group_room(creator, others, concurrency, &done);
            tokio::pin!(join);
            let mut tick = tokio::time::interval(bench.common.progress_interval);
            tick.tick().await;
            let room = loop {
                tokio::select! {
                    r = &mut join => break r?,
                    _ = tick.tick() => progress(bench.started, &format!(
                        "matrix: {}/{} members joined", done.load(std::sync::atomic::Ordering::Relaxed), others.len())),
                }
            };
            publish_directory(bench, &admin, &users, [(0u64, room)].into_iter().collect())?;
            Ok(0)
        }
    }
}

/// One load phase to run.
pub struct PhaseConfig {
    pub id: u32,
    pub rate: f64,
    pub senders: u32,
    pub recipients_per_message: u64,
    pub load: LoadArgs,
}

/// Counters and rates of a finished phase.
pub struct PhaseOutcome {
    pub stats: Arc<LoadStats>,
    /// How long the schedule ran (shorter than `--duration` if interrupted).
    pub sending: Duration,
    pub sent_per_s: f64,
    pub deliveries_per_s: f64,
    pub drained: bool,
    pub drain: Duration,
    pub dropped_during: u64,
}

/// Drive one phase: publish it to every session, print progress, stop sending after
/// `duration`, wait for outstanding acks and deliveries (bounded), retire the phase.
pub async fn run_phase(bench: &Bench, cfg: &PhaseConfig) -> PhaseOutcome {
    let shared = bench.shared();
    let lead = Duration::from_millis(200);
    let start = Instant::now() + lead;
    let start_unix_ns = unix_now_ns() + lead.as_nanos() as u64;
    let warmup = cfg.load.warmup.min(cfg.load.duration);
    let stats = Arc::new(LoadStats::new(start_unix_ns + warmup.as_nanos() as u64));
    let dropped_before = shared.fleet.dropped.get();
    let stop = CancellationToken::new();
    shared.phase.send_replace(Some(Arc::new(LoadPhase {
        id: cfg.id,
        start,
        start_unix_ns,
        duration: cfg.load.duration,
        rate: cfg.rate,
        senders: cfg.senders,
        message_size: cfg.load.message_size as usize,
        stats: stats.clone(),
        stop: stop.clone(),
    })));
    let end = start + cfg.load.duration;
    let warm_end = start + warmup;
    let mut at_warm_end = None;
    let mut tick = tokio::time::interval_at(
        start + bench.common.progress_interval,
        bench.common.progress_interval,
    );
    let mut last = (start, 0u64, 0u64);
    let line = |last: &mut (Instant, u64, u64), what: &str| {
        let now = Instant::now();
        let (sent, del) = (stats.sent.get(), stats.delivered.get());
        let dt = (now - last.0).as_secs_f64().max(1e-9);
        let d = LatencySummary::from_histogram(&stats.delivery.snapshot());
        progress(
            bench.started,
            &format!(
                "{what}: {} sent/s, {} delivered/s, {} acked, {} errors, delivery {}, {} open",
                fmt_num((sent - last.1) as f64 / dt),
                fmt_num((del - last.2) as f64 / dt),
                stats.acked.get(),
                stats.errors.total(),
                if d.count == 0 {
                    "p50/p99 not yet measured".to_owned()
                } else {
                    format!("p50 {} p99 {} ms", fmt_ms(d.p50_us), fmt_ms(d.p99_us))
                },
                shared.fleet.open.get()
            ),
        );
        *last = (now, sent, del);
    };
    loop {
        tokio::select! {
            () = sleep_until(warm_end), if at_warm_end.is_none() => {
                at_warm_end = Some((Instant::now(), stats.sent.get(), stats.delivered.get()));
            }
            () = sleep_until(end) => break,
            () = bench.fleet.interrupt.cancelled() => break,
            _ = tick.tick() => line(&mut last, if Instant::now() < warm_end { "warm-up" } else { "sending" }),
        }
    }
    if bench.interrupted() {
        // Cut the schedule short; what was sent is still drained and counted.
        stop.cancel();
    }
    let stopped = Instant::now();
    let (w_at, w_sent, w_del) = at_warm_end.unwrap_or((start, 0, 0));
    let window = (stopped - w_at).as_secs_f64().max(1e-9);
    let sent_per_s = (stats.sent.get().saturating_sub(w_sent)) as f64 / window;
    let deliveries_per_s = (stats.delivered.get().saturating_sub(w_del)) as f64 / window;

    // Drain: stop the schedule (senders see the phase's end on their own), wait for the rest.
    let drain_deadline = stopped + cfg.load.drain_timeout;
    let complete = || {
        let sent = stats.sent.get();
        stats.acked.get() + stats.rejected.get() >= sent
            && stats.delivered.get() >= sent * cfg.recipients_per_message
    };
    let mut drained = complete();
    while !drained && Instant::now() < drain_deadline {
        tokio::select! {
            _ = tick.tick() => line(&mut last, "draining"),
            () = sleep(Duration::from_millis(20)) => {}
        }
        drained = complete();
    }
    let drain = stopped.elapsed();
    shared.phase.send_replace(None);
    PhaseOutcome {
        stats,
        sending: stopped.saturating_duration_since(start),
        sent_per_s,
        deliveries_per_s,
        drained,
        drain,
        dropped_during: shared.fleet.dropped.get() - dropped_before,
    }
}

/// The report of a finished phase.
pub fn load_report(
    scenario: &'static str,
    bench: &Bench,
    cfg: &PhaseConfig,
    out: &PhaseOutcome,
) -> LoadReport {
    let s = &out.stats;
    let sent = s.sent.get();
    let expected = sent * cfg.recipients_per_message;
    let delivered = s.delivered.get();
    LoadReport {
        scenario,
        target: bench.target.http_base.clone(),
        connections: bench.shared().fleet.established.get(),
        senders: u64::from(cfg.senders),
        recipients_per_message: cfg.recipients_per_message,
        target_rate: cfg.rate,
        per_sender_rate: crate::schedule::per_sender_rate(cfg.rate, cfg.senders),
        duration_s: out.sending.as_secs_f64(),
        warmup_s: cfg.load.warmup.min(out.sending).as_secs_f64(),
        sent_per_s: out.sent_per_s,
        deliveries_per_s: out.deliveries_per_s,
        sent,
        acked: s.acked.get(),
        rejected: s.rejected.get(),
        send_failures: s.send_failures.get(),
        delivered,
        expected_deliveries: expected,
        lost: expected.saturating_sub(delivered),
        unacked: sent.saturating_sub(s.acked.get() + s.rejected.get()),
        duplicate_or_reordered: s.duplicate_or_reordered.get(),
        errors: s.errors.snapshot(),
        drained: out.drained,
        drain_s: out.drain.as_secs_f64(),
        dropped_connections: out.dropped_during,
        delivery: LatencySummary::from_histogram(&s.delivery.snapshot()),
        delivery_from_send: LatencySummary::from_histogram(&s.delivery_from_send.snapshot()),
        ack: LatencySummary::from_histogram(&s.ack.snapshot()),
        send_lag: LatencySummary::from_histogram(&s.send_lag.snapshot()),
    }
}

/// Check the load options and warn about a per-connection rate the server will refuse.
pub fn check_load(load: &LoadArgs, rate: f64, senders: u32) -> anyhow::Result<()> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    if load.duration.is_zero() {
        bail!("--duration must be positive");
    }
    if load.warmup >= load.duration {
        bail!(
            "--warmup ({:?}) must be shorter than --duration ({:?})",
            load.warmup,
            load.duration
        );
    }
    let per = crate::schedule::per_sender_rate(rate, senders);
    if per > 50.0 {
        eprintln!(
            "warning: {per:.1} msg/s per sending connection is above the server's default limit (50/s \
             sustained, burst 100): expect rate_limited errors; add connections (--pairs/--senders)"
        );
    }
    Ok(())
}

/// Require every connection of a load scenario to be up.
pub fn require_all_connected(bench: &Bench, want: u64) -> anyhow::Result<()> {
    let f = &bench.shared().fleet;
    let got = f.established.get();
    if got < want {
        let failures = f.failures.snapshot();
        bail!(
            "only {got} of {want} connections came up ({}); not starting the load",
            failures
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
