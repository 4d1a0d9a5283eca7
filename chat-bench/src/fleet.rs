//! Opening many connections: dials with bounded concurrency (and an optional rate cap),
//! each successful one handed to a session task (or closed at once, for handshake runs).
//! Every task is tracked; `shutdown` closes them all and waits.

use crate::conn::{self, Ws};
use crate::iprange::SourceIps;
use crate::matrix;
use crate::proto::System;
use crate::session::{self, SessionSpec, Shared};
use crate::stats::Counter;
use crate::token::TokenMint;
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What to do once `hello` arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterHello {
    /// Keep the connection as a session until shutdown.
    Hold,
    /// Close it right away (handshake-rate runs).
    Close,
}

/// How to dial.
pub struct DialOptions {
    /// Where connections go: connection `i` dials `edges[i % len]` (several edges of a
    /// cluster share the load).
    pub edges: Arc<Vec<(SocketAddr, String)>>,
    pub source_ips: Option<SourceIps>,
    pub concurrency: u32,
    pub connect_rate: Option<f64>,
    pub timeout: Duration,
    pub after_hello: AfterHello,
}

pub struct Fleet {
    pub shared: Arc<Shared>,
    mint: Arc<TokenMint>,
    tracker: TaskTracker,
    /// Dials finished, successfully or not.
    pub dials_done: Arc<Counter>,
    /// Stops dialing early (Ctrl-C).
    pub interrupt: CancellationToken,
}

impl Fleet {
    pub fn new(shared: Arc<Shared>, mint: TokenMint, interrupt: CancellationToken) -> Fleet {
        Fleet {
            shared,
            mint: Arc::new(mint),
            tracker: TaskTracker::new(),
            dials_done: Arc::default(),
            interrupt,
        }
    }

    /// Start dialing `specs` in order; returns at once. Watch `dials_done` for progress.
    pub fn dial_all(&self, specs: Vec<SessionSpec>, opts: DialOptions) {
        let shared = self.shared.clone();
        let mint = self.mint.clone();
        let tracker = self.tracker.clone();
        let done = self.dials_done.clone();
        let interrupt = self.interrupt.clone();
        self.tracker.spawn(async move {
            let opts = Arc::new(opts);
            let permits = Arc::new(Semaphore::new(opts.concurrency as usize));
            let start = Instant::now();
            let total = specs.len();
            for (i, spec) in specs.into_iter().enumerate() {
                if let Some(rate) = opts.connect_rate.filter(|r| *r > 0.0) {
                    let at = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::select! {
                        () = sleep_until(at) => {}
                        () = interrupt.cancelled() => {}
                    }
                }
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                    () = interrupt.cancelled() => {
                        // Count the dials that will never happen as done so waiters finish.
                        for _ in i..total { done.inc(); }
                        return;
                    }
                };
                if interrupt.is_cancelled() || shared.close.is_cancelled() {
                    for _ in i..total {
                        done.inc();
                    }
                    return;
                }
                let (shared, mint, opts, done) =
                    (shared.clone(), mint.clone(), opts.clone(), done.clone());
                tracker.spawn(async move {
                    let token = mint.mint(spec.user_id);
                    let fleet = &shared.fleet;
                    fleet.attempts.inc();
                    let source = opts
                        .source_ips
                        .as_ref()
                        .map(|s| s.pick(spec.index as usize));
                    let (addr, url) = &opts.edges[spec.index as usize % opts.edges.len()];
                    let outcome = match shared.system {
                        System::Tern => {
                            timeout(
                                opts.timeout,
                                conn::dial(*addr, url, source, &token, shared.batch),
                            )
                            .await
                        }
                        System::Centrifugo | System::Socketio => {
                            let sys = shared.system;
                            let chats: Vec<u64> = spec.chat_id.into_iter().collect();
                            timeout(opts.timeout, async {
                                conn::dial_peer(
                                    sys,
                                    *addr,
                                    &sys.ws_url(url),
                                    source,
                                    &token,
                                    &chats,
                                    None,
                                )
                                .await
                                .map(|(ws, t, _)| (ws, t))
                            })
                            .await
                        }
                        System::Matrix => {
                            match timeout(opts.timeout, matrix::dial(&shared, spec.user_id)).await {
                                Ok(Ok((mconn, took))) => {
                                    fleet.established.inc();
                                    fleet
                                        .handshake
                                        .record(spec.index as usize, took.as_micros() as u64);
                                    drop(permit);
                                    done.inc();
                                    if opts.after_hello == AfterHello::Hold {
                                        matrix::run(mconn, spec, shared).await;
                                    }
                                }
                                Ok(Err(e)) => {
                                    fleet.failed.inc();
                                    fleet.failures.add(&e);
                                    done.inc();
                                }
                                Err(_) => {
                                    fleet.failed.inc();
                                    fleet.failures.add("timeout");
                                    done.inc();
                                }
                            }
                            return;
                        }
                    };
                    match outcome {
                        Ok(Ok((ws, t))) => {
                            fleet.established.inc();
                            fleet
                                .handshake
                                .record(spec.index as usize, t.to_hello.as_micros() as u64);
                            fleet
                                .tcp_connect
                                .record(spec.index as usize, t.tcp_connect.as_micros() as u64);
                            match opts.after_hello {
                                AfterHello::Hold => {
                                    drop(permit);
                                    done.inc();
                                    session::run(ws, spec, shared).await;
                                }
                                AfterHello::Close => {
                                    // The slot is held through the close, so open sockets stay
                                    // bounded by the concurrency.
                                    close_now(ws).await;
                                    drop(permit);
                                    done.inc();
                                }
                            }
                        }
                        Ok(Err(e)) => {
                            fleet.failed.inc();
                            fleet.failures.add(&e.label());
                            done.inc();
                        }
                        Err(_) => {
                            fleet.failed.inc();
                            fleet.failures.add("timeout");
                            done.inc();
                        }
                    }
                });
            }
        });
    }

    /// Close every connection and wait (bounded) for the tasks to end.
    pub async fn shutdown(self) {
        self.shared.close.cancel();
        self.interrupt.cancel();
        self.tracker.close();
        let bound = self.shared.close_grace * 2 + Duration::from_secs(3);
        if timeout(bound, self.tracker.wait()).await.is_err() {
            eprintln!(
                "warning: {} connection tasks still running after {:?}; exiting anyway",
                self.tracker.len(),
                bound
            );
        }
    }
}

/// Clean close: our close frame, then wait briefly for the server's.
async fn close_now(mut ws: Ws) {
    let _ = timeout(Duration::from_secs(1), async {
        if ws.send(Message::Close(None)).await.is_ok() {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        }
    })
    .await;
}
