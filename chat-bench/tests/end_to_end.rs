//! The `chat-bench` binary against a real server (in this test process, on port 0): every
//! scenario runs with small numbers and its JSON report is checked for what the protocol
//! guarantees — everything sent is acked and delivered, nothing lost, no errors.

use chat_server::config::ServeConfig;
use chat_server::server::Server;
use serde_json::Value;
use std::process::Output;

const SECRET: &str = "test-secret";

async fn start_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = ServeConfig::for_tests(dir.path().to_path_buf());
    cfg.jwt_secret = Some(SECRET.into());
    let server = Server::start(cfg).await.expect("server starts");
    (server, dir)
}

async fn run_bench(server: &Server, args: &[&str]) -> Output {
    let url = format!("http://{}", server.addr);
    tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(args)
        .args(["--url", &url, "--progress-interval", "500ms"])
        .env("CHAT_JWT_SECRET", SECRET)
        .kill_on_drop(true)
        .output()
        .await
        .expect("chat-bench runs")
}

/// Run a scenario with `--json`, require success, return the report.
async fn report(server: &Server, args: &[&str]) -> Value {
    let out = run_bench(server, &[args, &["--json"]].concat()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chat-bench {args:?} failed: {stderr}");
    assert!(
        stderr.contains("[ "),
        "progress lines expected on stderr: {stderr}"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v:#}"))
}

fn assert_clean_load(r: &Value, recipients: u64) {
    let sent = u(r, "sent");
    assert!(sent > 0, "{r:#}");
    assert_eq!(u(r, "acked"), sent, "every send acked: {r:#}");
    assert_eq!(
        u(r, "delivered"),
        sent * recipients,
        "every member got every message: {r:#}"
    );
    assert_eq!(u(r, "lost"), 0, "{r:#}");
    assert_eq!(u(r, "unacked"), 0, "{r:#}");
    assert_eq!(u(r, "duplicate_or_reordered"), 0, "{r:#}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r:#}");
    assert_eq!(r["drained"], true, "{r:#}");
    assert!(u(&r["delivery"], "count") > 0, "{r:#}");
    assert!(
        u(&r["delivery"], "p99_us") >= u(&r["delivery"], "p50_us"),
        "{r:#}"
    );
    assert!(u(&r["ack"], "count") > 0, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_delivers_everything_at_the_scheduled_rate() {
    let (server, _dir) = start_server().await;
    let r = report(
        &server,
        &[
            "direct",
            "--pairs",
            "5",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
        ],
    )
    .await;
    assert_eq!(u(&r, "connections"), 10);
    assert_eq!(u(&r, "senders"), 10);
    let sent = u(&r, "sent");
    assert!((195..=205).contains(&sent), "100 msg/s for 2 s: {sent}");
    assert_clean_load(&r, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_counts_every_delivery_to_every_member() {
    let (server, _dir) = start_server().await;
    let r = report(
        &server,
        &[
            "group",
            "--members",
            "20",
            "--senders",
            "2",
            "--rate",
            "20",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
        ],
    )
    .await;
    assert_eq!(u(&r, "recipients_per_message"), 19);
    assert_clean_load(&r, 19);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_holds_connections_and_reads_server_memory() {
    let (server, _dir) = start_server().await;
    // The server runs in this process, so its pid is ours.
    let pid = std::process::id().to_string();
    let r = report(
        &server,
        &[
            "connect",
            "-n",
            "50",
            "--hold",
            "1s",
            "--settle",
            "200ms",
            "--server-pid",
            &pid,
            "--ping-interval",
            "300ms",
        ],
    )
    .await;
    assert_eq!(u(&r, "established"), 50, "{r:#}");
    assert_eq!(u(&r, "failed"), 0);
    assert_eq!(u(&r, "open_at_end"), 50);
    assert_eq!(u(&r, "dropped"), 0);
    assert!(u(&r, "pongs") > 0, "pings are answered: {r:#}");
    assert_eq!(r["chat_connections_after"].as_f64(), Some(50.0), "{r:#}");
    assert!(
        r["server_memory"]["rss_after_kib"].as_u64().unwrap() > 0,
        "{r:#}"
    );
    assert!(u(&r["handshake"], "count") == 50);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_opens_and_closes() {
    let (server, _dir) = start_server().await;
    let r = report(&server, &["handshake", "-n", "100", "--concurrency", "8"]).await;
    assert_eq!(u(&r, "established"), 100, "{r:#}");
    assert!(r["handshakes_per_s"].as_f64().unwrap() > 0.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_reports_every_step() {
    let (server, _dir) = start_server().await;
    let r = report(
        &server,
        &[
            "sweep",
            "--rates",
            "50,100",
            "--pairs",
            "5",
            "--duration",
            "1s",
            "--warmup",
            "0",
            "--pause",
            "100ms",
            "--p99-limit-ms",
            "60000",
            "--keep-going",
        ],
    )
    .await;
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for s in steps {
        assert_clean_load(s, 1);
    }
    assert_eq!(r["knee_rate"], Value::Null, "{r:#}");
    assert_eq!(r["best_rate"].as_f64(), Some(100.0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_reported_as_401s() {
    let (server, _dir) = start_server().await;
    let out = run_bench(
        &server,
        &[
            "connect",
            "-n",
            "3",
            "--hold",
            "0s",
            "--settle",
            "0s",
            "--json",
            "--jwt-secret",
            "wrong",
        ],
    )
    .await;
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&r, "established"), 0);
    assert_eq!(r["failures"]["http 401"].as_u64(), Some(3), "{r:#}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_non_loopback_targets() {
    // Refused while parsing the URL: nothing is ever sent to this address.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args([
            "connect",
            "-n",
            "1",
            "--url",
            "http://10.1.2.3:8080",
            "--jwt-secret",
            "x",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_reconnects_and_catches_up_with_sync() {
    let (server, _dir) = start_server().await;
    let r = report(
        &server,
        &[
            "storm",
            "-n",
            "30",
            "--chat-size",
            "4",
            "--missed",
            "3",
            "--concurrency",
            "64",
            "--catch-up-timeout",
            "20s",
        ],
    )
    .await;
    assert_eq!(u(&r, "clients"), 30, "{r:#}");
    assert_eq!(u(&r, "senders"), 10, "{r:#}");
    assert_eq!(u(&r, "connect_failed"), 0, "{r:#}");
    assert_eq!(u(&r, "missed_acked"), 30, "{r:#}");
    assert_eq!(u(&r, "reconnected"), 30, "{r:#}");
    assert_eq!(
        u(&r, "caught_up"),
        30,
        "every client got what it missed: {r:#}"
    );
    assert_eq!(u(&r, "duplicates"), 0, "{r:#}");
    assert!(r["all_caught_up_s"].as_f64().unwrap() > 0.0, "{r:#}");
    server.shutdown().await;
}
