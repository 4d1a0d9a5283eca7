//! `handshake`: connect, wait for `hello`, close — as fast as bounded concurrency allows.

use super::{Bench, progress};
use crate::cli::HandshakeArgs;
use crate::fleet::AfterHello;
use crate::report::{HandshakeReport, LatencySummary};
use crate::session::SessionSpec;
use tokio_util::sync::CancellationToken;

pub async fn run(
    args: HandshakeArgs,
    interrupt: CancellationToken,
) -> anyhow::Result<HandshakeReport> {
    let users = args.users.unwrap_or(args.count).max(1);
    // Closed sockets leave the process quickly; in-flight ones are bounded by --concurrency.
    let bench = Bench::new(
        &args.common,
        (args.common.concurrency as usize * 2).min(args.count as usize),
        interrupt,
    )?;
    progress(
        bench.started,
        &format!(
            "{} handshakes against {}, {} in flight at most, {users} distinct users",
            args.count, bench.target.ws_url, args.common.concurrency
        ),
    );
    let specs = (0..args.count)
        .map(|i| SessionSpec {
            index: i,
            user_id: args.common.user_offset + u64::from(i % users) + 1,
            chat_id: None,
            sender_index: None,
        })
        .collect();
    let took = bench.ramp(specs, AfterHello::Close).await;
    let f = &bench.shared().fleet;
    let report = HandshakeReport {
        scenario: "handshake",
        target: bench.target.ws_url.clone(),
        requested: u64::from(args.count),
        concurrency: args.common.concurrency as usize,
        established: f.established.get(),
        failed: f.failed.get(),
        failures: f.failures.snapshot(),
        seconds: took.as_secs_f64(),
        handshakes_per_s: f.established.get() as f64 / took.as_secs_f64().max(1e-9),
        handshake: LatencySummary::from_histogram(&f.handshake.snapshot()),
        tcp_connect: LatencySummary::from_histogram(&f.tcp_connect.snapshot()),
    };
    bench.fleet.shutdown().await;
    Ok(report)
}
