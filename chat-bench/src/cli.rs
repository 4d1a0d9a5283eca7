//! Command line: one subcommand per scenario. The doc comments are the `--help` text.

use crate::iprange::SourceIps;
use clap::{Args, Parser, Subcommand};
use std::time::Duration;

/// Load generator for the Tern chat server.
///
/// Every scenario mints its own client tokens from --jwt-secret (the server's HS256 secret),
/// prints progress lines to stderr while it runs, and a summary table (or, with --json, one
/// JSON object) to stdout at the end. Runs are bounded: they stop by themselves after their
/// duration plus a drain timeout; Ctrl-C stops early and still reports.
#[derive(Debug, Parser)]
#[command(name = "chat-bench", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = "\
Examples (server: chat-server --listen 127.0.0.1:18080 --jwt-secret benchsecret):
  chat-bench connect   --url http://127.0.0.1:18080 --jwt-secret benchsecret -n 10000 --server-pid $PID
  chat-bench handshake --url http://127.0.0.1:18080 --jwt-secret benchsecret -n 20000
  chat-bench direct    --url http://127.0.0.1:18080 --jwt-secret benchsecret --rate 5000 --duration 20s
  chat-bench group     --url http://127.0.0.1:18080 --jwt-secret benchsecret --members 1000 --rate 100
  chat-bench sweep     --url http://127.0.0.1:18080 --jwt-secret benchsecret --rates 1000,5000,10000,20000
See docs/benchmarks-howto.md for 100k connections over several processes.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N authenticated WebSocket connections and hold them idle: handshake rate during the
    /// ramp-up, then server memory per connection (VmRSS of --server-pid before and after).
    ///
    /// Connections answer the heartbeat by sending `ping` every --ping-interval. One process
    /// can hold about 19,900 connections (20,000 open files); for more, run several bench
    /// processes with different --user-offset and --source-ips ranges.
    #[command(visible_alias = "idle")]
    Connect(ConnectArgs),
    /// Handshake rate: connect, wait for `hello`, close — N times with at most --concurrency
    /// handshakes in flight.
    Handshake(HandshakeArgs),
    /// 1:1 chats: P pairs of users, one connection each, both sides sending; a total of R msg/s
    /// on an open-loop schedule for D seconds. Reports delivery latency (from the scheduled send
    /// instant, so stalls are not hidden), ack latency, throughput and loss.
    Direct(DirectArgs),
    /// One group of M members, all connected; S of them send R msg/s in total. Every delivery
    /// to every member is measured.
    Group(GroupArgs),
    /// Run the `direct` scenario at increasing rates on one set of connections and report the
    /// knee: the first rate whose delivery p99 exceeds --p99-limit-ms.
    Sweep(SweepArgs),
    /// Reconnect storm: N clients drop their connections at once, messages are sent to their
    /// chats meanwhile, then all N reconnect at the same moment and catch up (Tern: `sync`
    /// from the last seq). Reports the time until every client is back and until every client
    /// has what it missed.
    Storm(StormArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server base URL (http:// or ws://). `/ws`, `/v1/…` and `/metrics` are derived from it.
    /// Several, comma separated, for the edges of a cluster: connections are spread over
    /// them round-robin (senders and receivers land on different edges); the API uses the
    /// first.
    #[arg(long, env = "CHAT_BENCH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// The server's HS256 token secret; the bench signs its own tokens with it. For
    /// `--system matrix`: Synapse's `registration_shared_secret` (users are registered with it).
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,

    /// The system under test: Tern, or a peer through its adapter (see
    /// docs/benchmarks-howto.md, "Peers"). Centrifugo and Socket.IO accept the same HS256
    /// tokens; chats are channels / rooms named `c<id>` and need no setup.
    #[arg(long, env = "CHAT_BENCH_SYSTEM", value_enum, default_value = "tern")]
    pub system: crate::proto::System,

    /// Matrix: a JSON file that caches registered users and created rooms between runs
    /// against the same Synapse database (registration and joins are slow).
    #[arg(long, env = "CHAT_BENCH_MATRIX_STATE")]
    pub matrix_state: Option<std::path::PathBuf>,

    /// User ids used by this process start at offset+1. Give each bench process of one run its
    /// own range (e.g. 1000000, 2000000, …) so users do not overlap.
    #[arg(long, env = "CHAT_BENCH_USER_OFFSET", default_value_t = 1_000_000)]
    pub user_offset: u64,

    /// Bind client sockets to these source addresses, round-robin: e.g. 127.0.0.2-127.0.0.40.
    /// Needed beyond ~28k connections from one address to one server port.
    #[arg(long)]
    pub source_ips: Option<SourceIps>,

    /// Most handshakes in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Most new connections started per second (default: as fast as --concurrency allows).
    #[arg(long)]
    pub connect_rate: Option<f64>,

    /// Give up on one handshake after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Send `ping` on every connection this often (the server announces a 30 s heartbeat).
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// How often to print a progress line (stderr).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub progress_interval: Duration,

    /// Tern: ask for one frame per WebSocket message (PROTOCOL.md as written) instead of the
    /// `batch=1` extension (several frames per message, one per line — what a busy client
    /// should use, and how Centrifugo's JSON protocol always works).
    #[arg(long)]
    pub one_frame_per_message: bool,

    /// Print the result as one JSON object on stdout instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,

    /// Tokio worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Connections to open (one user each).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: u32,

    /// Keep the connections open this long after the ramp.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Wait this long after the ramp before reading the server's memory.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Server process id(s) whose VmRSS is read before and after (repeatable or comma-separated).
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Handshakes to perform.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub count: u32,

    /// Distinct users to cycle through (default: one per handshake).
    #[arg(long)]
    pub users: Option<u32>,
}

/// Options shared by the message scenarios.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// How long to send (including the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Sent but not measured: the first part of --duration.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// After sending stops, wait at most this long for outstanding acks and deliveries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Bytes of message content (a timestamp plus filler).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub message_size: u32,

    /// When sizing connections automatically, keep each sender at or below this many msg/s
    /// (the server limits a connection to 50 msg/s sustained).
    #[arg(long, default_value_t = 40.0)]
    pub max_rate_per_conn: f64,

    /// Most chat-creation HTTP requests in flight during setup.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub http_concurrency: u32,
}

#[derive(Debug, Clone, Args)]
pub struct DirectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub load: LoadArgs,

    /// Total messages per second, over all senders.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Pairs of users (2 connections each). Default: enough that each sender stays at or below
    /// --max-rate-per-conn, and at least 100.
    #[arg(long)]
    pub pairs: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub load: LoadArgs,

    /// Group size, creator included (the server's default limit is 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub members: u32,

    /// Members that send. Default: enough to stay at or below --max-rate-per-conn each.
    #[arg(long)]
    pub senders: Option<u32>,

    /// Total messages per second into the group (each is delivered to members−1 connections).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub load: LoadArgs,

    /// Rates to try, in order (msg/s, comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,20000,30000,40000"
    )]
    pub rates: Vec<f64>,

    /// The knee is the first rate whose delivery p99 exceeds this.
    #[arg(long, default_value_t = 50.0)]
    pub p99_limit_ms: f64,

    /// Idle time between rates.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub pause: Duration,

    /// Pairs of users. Default: sized for the highest rate (see `direct --pairs`).
    #[arg(long)]
    pub pairs: Option<u32>,

    /// Keep going after the knee (default: stop at the first rate over the limit).
    #[arg(long)]
    pub keep_going: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Clients that drop and reconnect (the chats' senders stay connected and are extra).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub clients: u32,

    /// Members per chat: one sender plus chat-size − 1 storm clients.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub chat_size: u32,

    /// Messages each sender sends while the clients are away.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub missed: u32,

    /// Give up on a client that has not caught up this long after the storm began.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub catch_up_timeout: Duration,

    /// Most chat-creation HTTP requests in flight during setup.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub http_concurrency: u32,
}

/// `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 500ms, 10s, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=7.0 * 86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("9999h").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sweep_defaults_parse() {
        let cli = Cli::try_parse_from(["chat-bench", "sweep", "--jwt-secret", "s"]).unwrap();
        let Command::Sweep(a) = cli.command else {
            panic!("not sweep")
        };
        assert_eq!(
            a.rates,
            vec![1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0]
        );
        assert_eq!(a.p99_limit_ms, 50.0);
        assert_eq!(a.common.user_offset, 1_000_000);
        let cli = Cli::try_parse_from([
            "chat-bench",
            "idle",
            "--jwt-secret",
            "s",
            "--server-pid",
            "1,2",
            "--server-pid",
            "3",
            "--source-ips",
            "127.0.0.2-127.0.0.3",
        ])
        .unwrap();
        let Command::Connect(a) = cli.command else {
            panic!("idle is connect")
        };
        assert_eq!(a.server_pids, vec![1, 2, 3]);
        assert_eq!(a.common.source_ips.unwrap().all().len(), 2);
    }
}
