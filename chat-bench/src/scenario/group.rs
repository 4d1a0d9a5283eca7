//! `group`: one group of M members, all connected; S senders at R msg/s in total, every
//! delivery to every member measured.

use super::{
    Bench, PhaseConfig, check_load, load_report, progress, require_all_connected, run_phase,
};
use crate::cli::GroupArgs;
use crate::fleet::AfterHello;
use crate::report::LoadReport;
use crate::schedule::senders_needed;
use crate::session::SessionSpec;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(args: GroupArgs, interrupt: CancellationToken) -> anyhow::Result<LoadReport> {
    let m = args.members;
    let senders = args
        .senders
        .unwrap_or_else(|| senders_needed(args.rate, args.load.max_rate_per_conn))
        .clamp(1, m);
    check_load(&args.load, args.rate, senders)?;
    let bench = Bench::new(&args.common, m as usize, interrupt)?;
    let result = async {
        let offset = args.common.user_offset;
        let creator = offset + 1;
        let others: Vec<u64> = (2..=u64::from(m)).map(|i| offset + i).collect();
        let title = format!("chat-bench {:08x}", bench.shared().run_id);
        progress(
            bench.started,
            &format!(
                "creating group {title:?} with {m} members (users {}..={})",
                offset + 1,
                offset + u64::from(m)
            ),
        );
        let chat = super::setup_group(
            &bench,
            creator,
            &others,
            &title,
            args.load.http_concurrency as usize,
        )
        .await?;
        progress(
            bench.started,
            &format!("group chat {chat}; connecting {m} members"),
        );
        let specs = (0..m)
            .map(|i| SessionSpec {
                index: i,
                user_id: offset + u64::from(i) + 1,
                chat_id: Some(chat),
                sender_index: (i < senders).then_some(i),
            })
            .collect();
        bench.ramp(specs, AfterHello::Hold).await;
        require_all_connected(&bench, u64::from(m))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cfg = PhaseConfig {
            id: 1,
            rate: args.rate,
            senders,
            recipients_per_message: u64::from(m) - 1,
            load: args.load.clone(),
        };
        progress(
            bench.started,
            &format!(
                "sending {} msg/s from {senders} members for {:?}: {} deliveries/s expected",
                args.rate,
                args.load.duration,
                args.rate * f64::from(m - 1)
            ),
        );
        let out = run_phase(&bench, &cfg).await;
        Ok(load_report("group", &bench, &cfg, &out))
    }
    .await;
    progress(bench.started, "closing connections");
    bench.fleet.shutdown().await;
    result
}
