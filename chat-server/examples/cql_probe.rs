//! The CQL server's own write latency at a fixed rate: the floor under Tern's distributed
//! append (issue #13). Writes ~200-byte rows, each to its own partition, with the same driver,
//! consistency and prepared-statement path as the store, at `--rate` per second for
//! `--seconds`, and prints p50/p90/p99/p99.9/max in ms.
//!
//!   cargo run --release -p chat-server --example cql_probe -- 127.0.0.1:9042 2000 10
//!
//! Uses (and leaves) a keyspace `tern_probe` with replication factor 1.

use chat_server::store::scylla::{ScyllaOptions, connect_session};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 || args[1] == "--help" {
        eprintln!("usage: cql_probe <host:port> <rate per s> <seconds>");
        std::process::exit(2);
    }
    let node = args[1].clone();
    let rate: f64 = args[2].parse()?;
    let seconds: f64 = args[3].parse()?;
    let session = Arc::new(connect_session(&[node], &ScyllaOptions::default()).await?);
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS tern_probe WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            (),
        )
        .await?;
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS tern_probe.rows (k bigint, seq bigint, body text, \
             PRIMARY KEY (k, seq))",
            (),
        )
        .await?;
    let insert = Arc::new(
        session
            .prepare("INSERT INTO tern_probe.rows (k, seq, body) VALUES (?, ?, ?)")
            .await?,
    );
    let body = "x".repeat(200);
    let total = (rate * seconds) as u64;
    let every = Duration::from_secs_f64(1.0 / rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let start = Instant::now();
    for i in 0..total {
        let due = start + every.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (s, ins, b, tx) = (session.clone(), insert.clone(), body.clone(), tx.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let k = (i % 100_000) as i64;
            if s.execute_unpaged(&ins, (k, i as i64, b)).await.is_ok() {
                let _ = tx.send(t.elapsed().as_micros() as u64);
            }
        });
    }
    drop(tx);
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    while let Some(us) = rx.recv().await {
        h.record(us.max(1))?;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "cql write at {rate} /s for {seconds} s: {} ok of {total}; p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}",
        h.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    Ok(())
}
