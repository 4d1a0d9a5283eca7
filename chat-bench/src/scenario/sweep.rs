//! `sweep`: the `direct` scenario at increasing rates on one set of connections; the knee is
//! the first rate whose delivery p99 exceeds the limit.

use super::direct::{auto_pairs, prepare};
use super::{Bench, PhaseConfig, check_load, load_report, progress, run_phase};
use crate::cli::SweepArgs;
use crate::report::{SweepReport, find_knee, fmt_ms};
use tokio_util::sync::CancellationToken;

pub async fn run(args: SweepArgs, interrupt: CancellationToken) -> anyhow::Result<SweepReport> {
    if args.rates.is_empty() {
        anyhow::bail!("--rates is empty");
    }
    let max_rate = args.rates.iter().copied().fold(0.0, f64::max);
    let pairs = args
        .pairs
        .unwrap_or_else(|| auto_pairs(max_rate, args.load.max_rate_per_conn))
        .max(1);
    for &r in &args.rates {
        check_load(&args.load, r, 2 * pairs)?;
    }
    let bench = Bench::new(&args.common, 2 * pairs as usize, interrupt)?;
    let result = async {
        let senders = prepare(&bench, &args.common, &args.load, pairs).await?;
        let mut steps = Vec::new();
        for (i, &rate) in args.rates.iter().enumerate() {
            if bench.interrupted() {
                break;
            }
            if i > 0 {
                tokio::time::sleep(args.pause).await;
            }
            progress(
                bench.started,
                &format!(
                    "step {}/{}: {rate} msg/s for {:?}",
                    i + 1,
                    args.rates.len(),
                    args.load.duration
                ),
            );
            let cfg = PhaseConfig {
                id: i as u32 + 1,
                rate,
                senders,
                recipients_per_message: 1,
                load: args.load.clone(),
            };
            let out = run_phase(&bench, &cfg).await;
            let step = load_report("sweep", &bench, &cfg, &out);
            progress(
                bench.started,
                &format!(
                    "step {}: {rate} msg/s -> delivery p50 {} p99 {} ms, {} lost, {} errors",
                    i + 1,
                    fmt_ms(step.delivery.p50_us),
                    fmt_ms(step.delivery.p99_us),
                    step.lost,
                    step.errors.values().sum::<u64>()
                ),
            );
            let over = step.delivery.p99_us as f64 / 1000.0 > args.p99_limit_ms;
            steps.push(step);
            if over && !args.keep_going {
                progress(
                    bench.started,
                    &format!(
                        "p99 over {} ms: stopping (--keep-going to continue)",
                        args.p99_limit_ms
                    ),
                );
                break;
            }
        }
        let p99s: Vec<u64> = steps.iter().map(|s| s.delivery.p99_us).collect();
        let knee = find_knee(&p99s, args.p99_limit_ms);
        let knee_rate = knee.map(|k| steps[k].target_rate);
        let best_rate = match knee {
            Some(0) => None,
            Some(k) => Some(steps[k - 1].target_rate),
            None => steps.last().map(|s| s.target_rate),
        };
        Ok(SweepReport {
            scenario: "sweep",
            p99_limit_ms: args.p99_limit_ms,
            knee_rate,
            best_rate,
            steps,
        })
    }
    .await;
    progress(bench.started, "closing connections");
    bench.fleet.shutdown().await;
    result
}
