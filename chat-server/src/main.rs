use anyhow::Context;
use chat_server::auth::Auth;
use chat_server::config::{Cli, Command, ServeConfig};
use chat_server::server::{Server, resolve_secret};
use clap::Parser;

/// mimalloc instead of glibc malloc: the send path allocates and frees many small buffers
/// across threads (frames, JSON, channel nodes); see docs/benchmarks.md (issue #13).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One TLS provider for every client (S3, push gateways, Redis/Kafka over TLS): the
    // workspace build enables both of rustls' providers, and rustls then refuses to guess.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Some(Command::Token(t)) => {
            anyhow::ensure!(
                t.user > 0 && t.user < (1 << 53),
                "--user must be a positive integer below 2^53"
            );
            let (secret, _) = resolve_secret(t.jwt_secret.as_deref(), &t.data_dir)?;
            println!("{}", Auth::new(secret.as_bytes()).mint(t.user, t.ttl)?);
            Ok(())
        }
        Some(Command::Serve(cfg)) => serve(*cfg),
        Some(Command::Setup(args)) => setup(*args),
        None => serve(cli.serve),
    }
}

fn init_logs(filter: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .context("bad --log / RUST_LOG filter")?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

#[cfg(feature = "distributed")]
fn setup(args: chat_server::config::SetupArgs) -> anyhow::Result<()> {
    init_logs(&args.log)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(chat_server::server::setup(&args))?;
    println!(
        "tern: setup done (keyspace {}, topic {})",
        args.cluster.keyspace(),
        args.cluster.topic()
    );
    Ok(())
}

#[cfg(not(feature = "distributed"))]
fn setup(_: chat_server::config::SetupArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "`setup` prepares the distributed backend, which this binary was built without; build \
         it with `cargo build --release -p chat-server --features distributed`"
    )
}

fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    init_logs(&cfg.log)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let generated = cfg.jwt_secret.is_none();
        let data_dir = cfg.data_dir.clone();
        let dev_auth = cfg.dev_auth;
        let distributed = cfg.backend == chat_server::config::BackendArg::Distributed;
        let role = cfg.role;
        let server = Server::start(cfg).await?;
        let addr = server.addr;
        let (http, ws) = if server.tls {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        // One plain line on stdout that scripts and tests can wait for (a second one, in the
        // same write, with a separate metrics address).
        // A closed stdout (a supervisor that stopped reading) must not stop the server.
        let line = match server.metrics_addr {
            None => format!("tern: listening on {http}://{addr}\n"),
            Some(m) => {
                format!("tern: listening on {http}://{addr}\ntern: metrics on http://{m}/metrics\n")
            }
        };
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        }
        if distributed {
            tracing::info!(%addr, ?role, dev_auth, "chat-server ready (distributed)");
        } else {
            tracing::info!(%addr, data_dir = %data_dir.display(), dev_auth, "chat-server ready (embedded: edge+delivery+presence)");
        }
        if generated && !distributed {
            tracing::info!(
                "no --jwt-secret given: using {}/jwt-secret. Get a token with: chat-server token --user 1 --data-dir {}",
                data_dir.display(),
                data_dir.display()
            );
        }
        tracing::info!("web client: {http}://{addr}/   WebSocket: {ws}://{addr}/ws?token=<jwt>");
        wait_for_signal().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
    }
}
