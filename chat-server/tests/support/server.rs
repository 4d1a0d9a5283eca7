//! The server under test: the real `chat-server` binary on port 0, one embedded process or a
//! cluster of separate processes on the e2e services, each test with its own data directory
//! (and, distributed, its own cluster name: keyspace, topics, Redis prefix).

use super::client::{Api, Ws, token};
use super::{SECRET, services};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The backend the suite runs against: `TERN_TEST_BACKEND=distributed` runs every test on a
/// cluster of separate processes (2 edges, 2 delivery, 1 presence) over the real Kafka,
/// Cassandra and Redis of [`services`] (`eval "$(e2e/env/env.sh)"`); otherwise one embedded
/// process.
pub fn distributed() -> bool {
    std::env::var("TERN_TEST_BACKEND").is_ok_and(|v| v == "distributed")
}

/// For tests that only make sense on a cluster.
pub fn require_distributed() {
    assert!(
        distributed(),
        "run with TERN_TEST_BACKEND=distributed and the services of e2e/env up \
         (eval \"$(e2e/env/env.sh)\"; e2e/test-distributed.sh does both)"
    );
}

/// One process of the server under test.
struct Proc {
    role: &'static str,
    index: usize,
    addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    /// Run with this group id (tests match its sockets in iptables: `--gid-owner`).
    gid: Option<u32>,
}

pub struct TestServer {
    /// The first edge (the only process in embedded mode).
    pub addr: SocketAddr,
    /// `http`, or `https` with `--tls-cert`.
    pub scheme: String,
    /// The first edge's metrics address, with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    procs: Vec<Proc>,
    args: Vec<String>,
    dev_auth: bool,
    /// Distributed: the cluster name (keyspace, topic, Redis prefix) of this test.
    cluster: Option<String>,
    /// Clients go to the first edge only (the test checks a per-node limit).
    pinned: bool,
    next_ws: std::sync::atomic::AtomicUsize,
    next_api: std::sync::atomic::AtomicUsize,
}

/// Flags whose effect is per node: tests that use them keep all clients on one edge.
const NODE_LOCAL_FLAGS: &[&str] = &["--max-connections", "--send-queue"];

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(&[]).await
    }

    /// Start with extra flags, e.g. `&["--heartbeat-interval", "1"]`.
    pub async fn start_with(args: &[&str]) -> TestServer {
        Self::start_opts(args, true, distributed()).await
    }

    /// Start without `--dev-auth` (the production default).
    pub async fn start_without_dev_auth() -> TestServer {
        Self::start_opts(&[], false, distributed()).await
    }

    /// One embedded process whatever `TERN_TEST_BACKEND` says, for tests of one process's
    /// listeners (`--tls-cert`, `--metrics-listen`).
    pub async fn start_embedded(args: &[&str]) -> TestServer {
        Self::start_opts(args, true, false).await
    }

    /// A cluster (as [`start_with`](Self::start_with) on the distributed backend) whose process
    /// `role`/`index` runs with group id `gid`: the HA tests cut exactly that process off
    /// from a service with an iptables `--gid-owner` rule.
    pub async fn start_with_gid(args: &[&str], role: &str, index: usize, gid: u32) -> TestServer {
        Self::start_full(args, true, true, Some((role, index, gid))).await
    }

    async fn start_opts(args: &[&str], dev_auth: bool, cluster: bool) -> TestServer {
        Self::start_full(args, dev_auth, cluster, None).await
    }

    async fn start_full(
        args: &[&str],
        dev_auth: bool,
        cluster: bool,
        gid: Option<(&str, usize, u32)>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = cluster.then(|| {
            format!(
                "t{:x}{:08x}",
                std::process::id() & 0xffff,
                rand::random::<u32>()
            )
        });
        let roles: &[&'static str] = if cluster.is_some() {
            &["edge", "edge", "delivery", "delivery", "presence"]
        } else {
            &["all"]
        };
        let mut counts = std::collections::HashMap::new();
        let procs = roles
            .iter()
            .map(|role| {
                let index = *counts.entry(*role).and_modify(|n| *n += 1).or_insert(0);
                Proc {
                    role,
                    index,
                    addr: "127.0.0.1:0".parse().unwrap(),
                    child: None,
                    log: dir.path().join(format!("{role}{index}.log")),
                    gid: gid
                        .filter(|(r, i, _)| r == role && *i == index)
                        .map(|(_, _, g)| g),
                }
            })
            .collect();
        let mut s = TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            scheme: String::new(),
            metrics: None,
            dir,
            procs,
            args: args.iter().map(|s| s.to_string()).collect(),
            dev_auth,
            pinned: args.iter().any(|a| NODE_LOCAL_FLAGS.contains(a)),
            cluster,
            next_ws: Default::default(),
            next_api: Default::default(),
        };
        if s.cluster.is_some() {
            s.setup();
        }
        s.spawn_dead();
        s.wait_ready().await;
        s
    }

    /// `chat-server setup` for this test's cluster (keyspace and topic).
    fn setup(&self) {
        let out = self
            .command()
            .args(["setup", "--partitions", "4", "--timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run chat-server setup");
        assert!(
            out.status.success(),
            "chat-server setup failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        c.env(
            "RUST_LOG",
            std::env::var("TERN_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("RUST_BACKTRACE", "0");
        if let Some(name) = &self.cluster {
            c.env("CHAT_CLUSTER", name)
                .env("CHAT_KAFKA_BROKERS", services::kafka_brokers())
                .env("CHAT_SCYLLA_NODES", services::cql_nodes().join(","))
                .env("CHAT_REDIS_URL", services::redis_url());
        }
        c
    }

    /// Start every process that is not running (on its old address when it had one).
    fn spawn_dead(&mut self) {
        let mut started = Vec::new();
        for i in 0..self.procs.len() {
            if self.procs[i].child.is_some() {
                continue;
            }
            let p = &self.procs[i];
            let listen = p.addr.to_string();
            if p.addr.port() != 0 {
                for _ in 0..50 {
                    if std::net::TcpListener::bind(p.addr).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p.log)
                .unwrap();
            let mut cmd = self.command();
            cmd.args(["--listen", &listen, "--jwt-secret", SECRET])
                .args(self.dev_auth.then_some("--dev-auth"))
                .arg("--data-dir")
                .arg(self.dir.path().join("data"));
            if let Some(name) = &self.cluster {
                cmd.args(["--backend", "distributed", "--role", p.role])
                    .args(["--node-id", &format!("{name}-{}{}", p.role, p.index)]);
            }
            if let Some(gid) = p.gid {
                std::os::unix::process::CommandExt::gid(&mut cmd, gid);
            }
            let child = cmd
                .args(&self.args)
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("spawn chat-server");
            self.procs[i].child = Some(child);
            started.push(i);
        }
        for i in started {
            let stdout = self.procs[i].child.as_mut().unwrap().stdout.take().unwrap();
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let (scheme, addr) = line
                .trim()
                .strip_prefix("tern: listening on ")
                .and_then(|r| r.split_once("://"))
                .unwrap_or_else(|| panic!("unexpected first line {line:?}; logs:\n{}", self.log()));
            self.procs[i].addr = addr.parse().unwrap();
            if i == 0 {
                self.scheme = scheme.to_string();
                self.metrics = self.args.iter().any(|a| a == "--metrics-listen").then(|| {
                    let mut line = String::new();
                    stdout.read_line(&mut line).unwrap();
                    line.trim()
                        .strip_prefix("tern: metrics on http://")
                        .and_then(|r| r.strip_suffix("/metrics"))
                        .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
                        .parse()
                        .unwrap()
                });
            }
        }
        self.addr = self.procs[0].addr;
    }

    /// Wait until every process answers `/readyz` (cluster joined, partitions assigned). A TLS
    /// listener does not answer plain HTTP: then the metrics address is asked, if there is one.
    async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for (i, p) in self.procs.iter().enumerate() {
            let probe = match (i, self.scheme.as_str(), self.metrics) {
                (0, "https", Some(metrics)) => metrics,
                (0, "https", None) => continue,
                _ => p.addr,
            };
            loop {
                let url = format!("http://{probe}/readyz");
                if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}{} not ready after 60 s; logs:\n{}",
                    p.role,
                    p.index,
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn edges(&self) -> Vec<SocketAddr> {
        self.procs
            .iter()
            .filter(|p| p.role == "edge" || p.role == "all")
            .map(|p| p.addr)
            .collect()
    }

    /// The last edge: another process than [`TestServer::edge`]`(0)` on a cluster, the same
    /// one in embedded mode. Tests of "across edges" use it for their second client.
    pub fn last_edge(&self) -> usize {
        self.edges().len() - 1
    }

    /// The edge the next client goes to: alternating over the edges unless pinned.
    fn pick(&self, counter: &std::sync::atomic::AtomicUsize) -> SocketAddr {
        let edges = self.edges();
        if self.pinned {
            return edges[0];
        }
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        edges[n % edges.len()]
    }

    /// Every process's log.
    pub fn log(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "== {}{} ({}) ==\n{}",
                    p.role,
                    p.index,
                    p.addr,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Distributed: this test's cluster name (also its keyspace and Redis prefix).
    pub fn cluster_name(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// The processes that have exited (`role` + `index`), e.g. after a fault that should not
    /// have killed any.
    pub fn exited(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|p| {
                let running = p
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
                (!running).then(|| format!("{}{}", p.role, p.index))
            })
            .collect()
    }

    /// The first edge's process id.
    pub fn pid(&self) -> u32 {
        self.procs[0].child.as_ref().unwrap().id()
    }

    /// SIGKILL every process: no drain, no flush.
    pub fn kill9(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                c.kill().unwrap();
                c.wait().unwrap();
            }
        }
    }

    /// SIGKILL the processes of one role (`edge`, `delivery`, `presence`) with this index.
    pub fn kill9_one(&mut self, role: &str, index: usize) {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.role == role && p.index == index)
            .expect("no such process");
        let mut c = p.child.take().expect("already stopped");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// The address of one edge.
    pub fn edge(&self, index: usize) -> SocketAddr {
        self.edges()[index]
    }

    /// SIGTERM the first edge (the whole server in embedded mode) and wait for its exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.procs[0].child.take().unwrap();
        signal(c.id(), "TERM");
        c.wait().unwrap()
    }

    /// Wait for the first edge, already signalled, to exit.
    pub fn terminate_wait(&mut self) -> std::process::ExitStatus {
        self.procs[0].child.take().unwrap().wait().unwrap()
    }

    /// Start the stopped processes again, on the same addresses and data, and wait until every
    /// process is ready.
    pub async fn restart_ready(&mut self) {
        self.spawn_dead();
        self.wait_ready().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={}", self.pick(&self.next_ws), token)
    }

    pub fn api(&self, user: u64) -> Api {
        Api {
            base: format!("http://{}", self.pick(&self.next_api)),
            token: token(user),
            http: reqwest::Client::new(),
        }
    }

    pub async fn ws(&self, user: u64) -> Ws {
        Ws::connect(&self.ws_url(&token(user))).await
    }

    /// A WebSocket to a given edge.
    pub async fn ws_at(&self, edge: usize, user: u64) -> Ws {
        Ws::connect(&format!(
            "ws://{}/ws?token={}",
            self.edge(edge),
            token(user)
        ))
        .await
    }

    /// The HTTP status of an unauthenticated GET.
    pub async fn status(&self, path: &str) -> u16 {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The first edge's `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A metric of one process (`role`, `index`), if it is running and exports it.
    pub async fn metric_of(&self, role: &str, index: usize, name: &str) -> Option<f64> {
        let p = self
            .procs
            .iter()
            .find(|p| p.role == role && p.index == index && p.child.is_some())?;
        let text = reqwest::get(format!("http://{}/metrics", p.addr))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// An API client on a given edge.
    pub fn api_at(&self, edge: usize, user: u64) -> Api {
        Api {
            base: format!("http://{}", self.edge(edge)),
            token: token(user),
            http: reqwest::Client::new(),
        }
    }

    /// A metric summed over every process.
    pub async fn metric(&self, name: &str) -> f64 {
        let mut total = 0.0;
        let mut found = false;
        for p in &self.procs {
            if p.child.is_none() {
                continue;
            }
            let Ok(resp) = reqwest::get(format!("http://{}/metrics", p.addr)).await else {
                continue;
            };
            let text = resp.text().await.unwrap();
            if let Some(v) = text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .map(|v| v.trim().parse::<f64>().unwrap())
            }) {
                total += v;
                found = true;
            }
        }
        assert!(found, "metric {name} missing");
        total
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- server logs ----\n{}", self.log());
        }
        if let Some(name) = self.cluster.take() {
            drop_cluster(name);
        }
    }
}

/// Drop a test cluster's keyspace and topics, so runs do not pile up schema in Cassandra and
/// topics in Kafka.
#[cfg(feature = "distributed")]
fn drop_cluster(name: String) {
    super::cql::drop_keyspace_now(&name);
    super::kafka::delete_topics_now(&[format!("{name}.messages"), format!("{name}.push")]);
}

#[cfg(not(feature = "distributed"))]
fn drop_cluster(_: String) {}

fn signal(pid: u32, sig: &str) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}
