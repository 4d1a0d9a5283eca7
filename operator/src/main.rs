//! `tern-operator`: reconciles `ChatCluster` resources. See the crate docs for the layout and
//! `docs/operator.md` for operations.

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tern_operator::controller::{self, Options};
use tern_operator::leader::LeaderElector;
use tern_operator::metrics::{self, Metrics};
use tokio::sync::watch;

/// Kubernetes operator for Tern chat clusters.
#[derive(Debug, Parser)]
#[command(name = "tern-operator", version, about)]
struct Config {
    /// Watch ChatClusters in this namespace only (default: all namespaces).
    #[arg(long, env = "TERN_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Address of the operator's /metrics, /healthz and /readyz.
    #[arg(long, env = "TERN_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Elect a leader through a Lease so that only one replica reconciles.
    #[arg(long, env = "TERN_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "TERN_LEASE_NAME", default_value = "tern-operator-leader")]
    lease_name: String,
    /// Lease duration in seconds: a dead leader is replaced after this long.
    #[arg(long, env = "TERN_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// The leader stops acting and exits when it could not renew for this long; must be
    /// shorter than the lease, so it has stopped before another replica may take over
    /// [default: two thirds of the lease, 10 s for 15 s].
    #[arg(long, env = "TERN_RENEW_DEADLINE_SECONDS")]
    renew_deadline_seconds: Option<u64>,
    /// Seconds between lease attempts (renewals while leading) [default: 2, at most half the
    /// renew deadline].
    #[arg(long, env = "TERN_LEASE_RETRY_SECONDS")]
    lease_retry_seconds: Option<u64>,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Port of the edge pods' /metrics (chat-server's `CHAT_METRICS_LISTEN`, which the
    /// operator sets to 9090 in every role pod: the `metrics` port, not the client port).
    #[arg(long, env = "TERN_SCRAPE_PORT", default_value_t = tern_operator::resources::METRICS_PORT as u16)]
    scrape_port: u16,
    /// Honour the `chat.tern.dev/scrape-targets` annotation instead of discovering edge pods
    /// (tests and special set-ups only).
    #[arg(long, env = "TERN_ALLOW_SCRAPE_OVERRIDE", default_value_t = false)]
    allow_scrape_override: bool,
    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    // One TLS provider for the API-server client, chosen here: the workspace build enables
    // both of rustls' providers and rustls then refuses to guess (the operator pod crashed at
    // its first API call on a real node).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cfg.log).context("bad RUST_LOG")?)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration")?;
    let identity = cfg
        .identity
        .clone()
        .unwrap_or_else(|| format!("tern-operator-{}", std::process::id()));
    let metrics = Arc::new(Metrics::default());

    // Stop everything on SIGTERM/SIGINT.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let listener = tokio::net::TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("binding {}", cfg.metrics_listen))?;
    let http = tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));

    let opts = Options {
        namespace: cfg.watch_namespace.clone(),
        allow_scrape_override: cfg.allow_scrape_override,
        scrape_port: cfg.scrape_port,
        // The namespace this operator runs in (POD_NAMESPACE): its pods may read /metrics.
        operator_namespace: cfg.lease_namespace.clone(),
        instance: identity.clone(),
        ..Options::default()
    };

    let result = if cfg.leader_election {
        let (lead_tx, mut lead_rx) = watch::channel(false);
        let (renew_deadline, retry) = tern_operator::leader::timing(
            Duration::from_secs(cfg.lease_seconds),
            cfg.renew_deadline_seconds.map(Duration::from_secs),
            cfg.lease_retry_seconds.map(Duration::from_secs),
        );
        let elector = LeaderElector::new(
            kube::Api::<Lease>::namespaced(client.clone(), &cfg.lease_namespace),
            &cfg.lease_name,
            &identity,
            Duration::from_secs(cfg.lease_seconds),
            renew_deadline,
            retry,
        )
        .context("leader election settings")?;
        // The lease is released only after the controller has stopped (on SIGTERM), so a
        // successor never acts while this replica finishes a reconcile.
        let (release_tx, release_rx) = watch::channel(false);
        let election = tokio::spawn(elector.run(lead_tx, release_rx));
        tracing::info!(%identity, lease = %cfg.lease_name, "waiting to become leader");
        let became = tokio::select! {
            r = lead_rx.wait_for(|l| *l) => r.is_ok(),
            _ = stopped(stop_rx.clone()) => false,
        };
        if became {
            metrics.leader.set(1);
            // Losing the lease ends the process at once: a graceful controller shutdown would
            // let in-flight reconciles keep writing while another replica may already lead.
            // The kubelet restarts the container, which comes back as a follower.
            let mut lost_rx = lead_rx.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                if lost_rx.wait_for(|l| !*l).await.is_ok() && !*stop.borrow() {
                    tracing::error!(
                        "lost leadership: stepping down and exiting so that two replicas never act at once"
                    );
                    std::process::exit(1);
                }
            });
            controller::run(client, opts, metrics.clone(), stopped(stop_rx.clone())).await;
            metrics.leader.set(0);
        }
        let _ = release_tx.send(true);
        // The elector returns once stopped (releasing the lease).
        election
            .await
            .context("leader election task")?
            .map_err(Into::into)
    } else {
        controller::run(client, opts, metrics.clone(), stopped(stop_rx.clone())).await;
        Ok(())
    };
    http.await.context("metrics server task")??;
    result
}
