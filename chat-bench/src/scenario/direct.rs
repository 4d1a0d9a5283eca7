//! `direct`: P pairs of users in 1:1 chats, both sides sending on an open-loop schedule.

use super::{
    Bench, PhaseConfig, check_load, load_report, progress, require_all_connected, run_phase,
};
use crate::api::Api;
use crate::cli::{CommonArgs, DirectArgs, LoadArgs};
use crate::fleet::AfterHello;
use crate::report::LoadReport;
use crate::schedule::senders_needed;
use crate::session::SessionSpec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pairs for `rate`: each sender (two per pair) at most `max_per_conn` msg/s, at least 100 pairs.
pub fn auto_pairs(rate: f64, max_per_conn: f64) -> u32 {
    senders_needed(rate, max_per_conn).div_ceil(2).max(100)
}

/// Users of pair `i`: (offset + 2i + 1, offset + 2i + 2).
pub fn pair_users(offset: u64, i: u32) -> (u64, u64) {
    (offset + 2 * u64::from(i) + 1, offset + 2 * u64::from(i) + 2)
}

/// Create the chats and connect both users of every pair. Returns the number of senders.
pub async fn prepare(
    bench: &Bench,
    common: &CommonArgs,
    load: &LoadArgs,
    pairs: u32,
) -> anyhow::Result<u32> {
    let users: Vec<(u64, u64)> = (0..pairs)
        .map(|i| pair_users(common.user_offset, i))
        .collect();
    progress(
        bench.started,
        &format!(
            "creating {pairs} direct chats (users {}..={}), {} requests in flight",
            common.user_offset + 1,
            common.user_offset + 2 * u64::from(pairs),
            load.http_concurrency
        ),
    );
    let api = Arc::new(Api::new(&bench.target.http_base, &common.jwt_secret)?);
    let done = AtomicU64::new(0);
    let create = super::setup_direct(
        bench,
        Some(&api),
        &users,
        load.http_concurrency as usize,
        &done,
    );
    tokio::pin!(create);
    let mut tick = tokio::time::interval(common.progress_interval);
    tick.tick().await;
    let chats = loop {
        tokio::select! {
            r = &mut create => break r?,
            _ = tick.tick() => progress(bench.started, &format!("chats: {}/{pairs}", done.load(Ordering::Relaxed))),
            () = bench.fleet.interrupt.cancelled() => anyhow::bail!("interrupted during setup"),
        }
    };
    let mut specs = Vec::with_capacity(2 * pairs as usize);
    for (i, ((a, b), chat)) in users.iter().zip(&chats).enumerate() {
        for (k, user) in [*a, *b].into_iter().enumerate() {
            let index = (2 * i + k) as u32;
            specs.push(SessionSpec {
                index,
                user_id: user,
                chat_id: Some(*chat),
                sender_index: Some(index),
            });
        }
    }
    progress(bench.started, &format!("connecting {} users", specs.len()));
    bench.ramp(specs, AfterHello::Hold).await;
    require_all_connected(bench, 2 * u64::from(pairs))?;
    // Let presence notifications and the like settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(2 * pairs)
}

pub async fn run(args: DirectArgs, interrupt: CancellationToken) -> anyhow::Result<LoadReport> {
    let pairs = args
        .pairs
        .unwrap_or_else(|| auto_pairs(args.rate, args.load.max_rate_per_conn))
        .max(1);
    check_load(&args.load, args.rate, 2 * pairs)?;
    let bench = Bench::new(&args.common, 2 * pairs as usize, interrupt)?;
    let result = async {
        let senders = prepare(&bench, &args.common, &args.load, pairs).await?;
        let cfg = PhaseConfig {
            id: 1,
            rate: args.rate,
            senders,
            recipients_per_message: 1,
            load: args.load.clone(),
        };
        progress(
            bench.started,
            &format!(
                "sending {} msg/s for {:?} over {senders} connections",
                args.rate, args.load.duration
            ),
        );
        let out = run_phase(&bench, &cfg).await;
        Ok(load_report("direct", &bench, &cfg, &out))
    }
    .await;
    progress(bench.started, "closing connections");
    bench.fleet.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_do_not_overlap() {
        assert_eq!(pair_users(1_000_000, 0), (1_000_001, 1_000_002));
        assert_eq!(pair_users(1_000_000, 1), (1_000_003, 1_000_004));
    }

    #[test]
    fn auto_pairs_keep_senders_under_the_limit() {
        assert_eq!(auto_pairs(1000.0, 40.0), 100);
        assert_eq!(auto_pairs(40_000.0, 40.0), 500);
        assert!(40_000.0 / f64::from(2 * auto_pairs(40_000.0, 40.0)) <= 40.0);
    }
}
