//! `chat-bench`: a load generator for the Tern chat server.
//!
//! It speaks the client protocol (`PROTOCOL.md`) over real sockets: it mints its own tokens
//! from the server's secret, creates chats over HTTP, holds WebSocket connections and measures
//! what comes back. Scenarios: `connect` (idle connections, memory per connection),
//! `handshake` (handshake rate), `direct` (1:1 latency), `group` (fan-out), `sweep` (the rate
//! where latency breaks). See `docs/benchmarks-howto.md`.
//!
//! # Layout
//! - `cli` — options and `--help` text; `main` — runtime, Ctrl-C, output.
//! - Pure parts, unit-tested: `schedule` (open-loop send instants), `stamp` (the timestamp a
//!   message carries), `frame` (protocol frames), `iprange` (source addresses), `target`
//!   (URL and the loopback rule), `report` (summaries and tables), `procfs` parsers.
//! - I/O: `conn` (one dial: bound socket, upgrade, `hello`), `session` (a held connection:
//!   reader + scheduled writer), `fleet` (many dials with bounded concurrency; shutdown),
//!   `api` (HTTP setup calls, `/metrics`), `stats` (shared histograms and counters).
//! - `scenario/` — one file per subcommand, plus the shared ramp / phase / drain logic.

mod api;
mod cli;
mod conn;
mod fleet;
mod frame;
mod iprange;
mod matrix;
mod procfs;
mod proto;
mod report;
mod scenario;
mod schedule;
mod session;
mod stamp;
mod stats;
mod target;
mod token;

use clap::Parser;
use cli::{Cli, Command, CommonArgs};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

fn common(cmd: &Command) -> &CommonArgs {
    match cmd {
        Command::Connect(a) => &a.common,
        Command::Handshake(a) => &a.common,
        Command::Direct(a) => &a.common,
        Command::Group(a) => &a.common,
        Command::Sweep(a) => &a.common,
        Command::Storm(a) => &a.common,
    }
}

fn emit<T: Serialize>(
    json: bool,
    report: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!();
        print!("{}", table(report));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = common(&cli.command).clone();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = common.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let interrupt = CancellationToken::new();
        let on_signal = interrupt.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "interrupted: stopping and reporting what was measured (Ctrl-C again to abort)"
                );
                on_signal.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let json = common.json;
        match cli.command {
            Command::Connect(a) => emit(json, &scenario::connect::run(a, interrupt).await?, |r| {
                r.render()
            }),
            Command::Handshake(a) => {
                emit(json, &scenario::handshake::run(a, interrupt).await?, |r| {
                    r.render()
                })
            }
            Command::Direct(a) => emit(json, &scenario::direct::run(a, interrupt).await?, |r| {
                r.render()
            }),
            Command::Group(a) => emit(json, &scenario::group::run(a, interrupt).await?, |r| {
                r.render()
            }),
            Command::Sweep(a) => emit(json, &scenario::sweep::run(a, interrupt).await?, |r| {
                r.render()
            }),
            Command::Storm(a) => emit(json, &scenario::storm::run(a, interrupt).await?, |r| {
                r.render()
            }),
        }
    })?;
    // Do not wait for stragglers (connections still closing): the report is out.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
