//! What the integration tests share. Each test file declares `mod support;`:
//!
//! - [`server`]: the real `chat-server` binary under test, embedded or as a cluster;
//! - [`client`]: tokens, the HTTP API client and the WebSocket client;
//! - [`services`]: where the e2e services (`e2e/env`) are;
//! - [`cql`]: a CQL session and a keyspace per test; [`kafka`]: topic clean-up;
//! - [`media`]: audio/video files built in code (also the unit tests' `media::fixtures`).
//!
//! Every test file compiles all of it and uses a part, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod client;
#[cfg(feature = "distributed")]
pub mod cql;
#[cfg(feature = "distributed")]
pub mod kafka;
pub mod media;
pub mod server;
pub mod services;

// The names most tests use, at `support::`; not every test file uses every one.
#[allow(unused_imports)]
pub use client::{Api, LongPoll, Ws, token, token_named, token_with};
#[allow(unused_imports)]
pub use server::{TestServer, distributed, require_distributed};

/// The JWT secret every test server is started with.
pub const SECRET: &str = "test-secret-0123456789";

/// Run `f` on a runtime of its own in a thread of its own, and wait: clean-up from `Drop`,
/// where the test's runtime may be unwinding or blocking on it would panic.
#[cfg(feature = "distributed")]
fn block_on_aside<F>(f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join();
}
