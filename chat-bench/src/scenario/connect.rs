//! `connect` / `idle`: open N connections, hold them, measure the ramp and the server's memory
//! per connection.

use super::{Bench, progress};
use crate::api::Api;
use crate::cli::ConnectArgs;
use crate::fleet::AfterHello;
use crate::procfs::{self, total_rss_kib};
use crate::report::{ConnectReport, LatencySummary, ServerMemory, fmt_kib};
use crate::session::SessionSpec;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

pub async fn run(args: ConnectArgs, interrupt: CancellationToken) -> anyhow::Result<ConnectReport> {
    let n = args.connections;
    let bench = Bench::new(&args.common, n as usize, interrupt)?;
    let api = Api::new(&bench.target.http_base, &args.common.jwt_secret)?;
    let pids = args.server_pids.clone();
    for &pid in &pids {
        procfs::vm_rss_kib(pid)
            .map_err(|e| anyhow::anyhow!("cannot read the memory of --server-pid {pid}: {e}"))?;
    }

    let rss_before = total_rss_kib(&pids);
    let bench_before = procfs::self_rss_kib();
    let gauge_before = api.gauge("chat_connections").await;
    progress(
        bench.started,
        &format!(
            "opening {n} connections to {} (users {}..={}), {} in flight at most{}",
            args.common.system.ws_url(&bench.target.ws_url),
            args.common.user_offset + 1,
            args.common.user_offset + u64::from(n),
            args.common.concurrency,
            rss_before.map_or(String::new(), |r| format!(
                ", server RSS {}",
                fmt_kib(r as f64)
            ))
        ),
    );

    let users: Vec<u64> = (0..n)
        .map(|i| args.common.user_offset + u64::from(i) + 1)
        .collect();
    super::setup_users(&bench, &users, 16).await?;
    let specs = (0..n)
        .map(|i| SessionSpec {
            index: i,
            user_id: args.common.user_offset + u64::from(i) + 1,
            chat_id: None,
            sender_index: None,
        })
        .collect();
    let ramp = bench.ramp(specs, AfterHello::Hold).await;
    let f = &bench.shared().fleet;
    let established = f.established.get();

    if !bench.interrupted() {
        sleep(args.settle).await;
    }
    let rss_after = total_rss_kib(&pids);
    let bench_after = procfs::self_rss_kib();
    let gauge_after = api.gauge("chat_connections").await;
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        progress(
            bench.started,
            &format!(
                "server RSS {} -> {} ({} per connection); holding for {:?}",
                fmt_kib(b as f64),
                fmt_kib(a as f64),
                fmt_kib(per_conn(b, a, established)),
                args.hold
            ),
        );
    }

    let pids_for_line = pids.clone();
    bench
        .hold(args.hold, move || {
            total_rss_kib(&pids_for_line).map_or(String::new(), |r| {
                format!(", server RSS {}", fmt_kib(r as f64))
            })
        })
        .await;
    let rss_end = total_rss_kib(&pids);
    let open_at_end = f.open.get();

    let report = ConnectReport {
        scenario: "connect",
        target: bench.target.ws_url.clone(),
        requested: u64::from(n),
        established,
        failed: f.failed.get(),
        failures: f.failures.snapshot(),
        ramp_seconds: ramp.as_secs_f64(),
        handshakes_per_s: established as f64 / ramp.as_secs_f64().max(1e-9),
        handshake: LatencySummary::from_histogram(&f.handshake.snapshot()),
        tcp_connect: LatencySummary::from_histogram(&f.tcp_connect.snapshot()),
        hold_seconds: args.hold.as_secs_f64(),
        open_at_end,
        dropped: f.dropped.get(),
        dropped_reasons: f.dropped_reasons.snapshot(),
        pings_sent: f.pings_sent.get(),
        pongs: f.pongs.get(),
        server_errors: f.errors.snapshot(),
        server_memory: match (rss_before, rss_after, rss_end) {
            (Some(b), Some(a), Some(e)) => Some(ServerMemory {
                pids,
                rss_before_kib: b,
                rss_after_kib: a,
                rss_end_kib: e,
                per_connection_kib: per_conn(b, a, established),
            }),
            _ => None,
        },
        chat_connections_before: gauge_before,
        chat_connections_after: gauge_after,
        bench_rss_before_kib: bench_before,
        bench_rss_after_kib: bench_after,
        bench_per_connection_kib: match (bench_before, bench_after) {
            (Some(b), Some(a)) => Some(per_conn(b, a, established)),
            _ => None,
        },
    };
    progress(bench.started, "closing connections");
    bench.fleet.shutdown().await;
    Ok(report)
}

fn per_conn(before_kib: u64, after_kib: u64, conns: u64) -> f64 {
    if conns == 0 {
        0.0
    } else {
        (after_kib as f64 - before_kib as f64) / conns as f64
    }
}
