//! Tern chat server: edge (WebSocket, long-poll, HTTP API), delivery (ordering, persistence,
//! fan-out, receipts) and presence, in one binary.
//!
//! # Layout
//! - Pure cores, no I/O, unit-tested: [`protocol`] (client frames: parse and validate; server
//!   frames: encode), [`ratelimit`] (token bucket), [`receipts`] (mark merging and the advance
//!   rule), [`presence`] (state machine), [`cache`] (recent messages), [`model`] (types and
//!   JSON shapes).
//! - Ports with embedded implementations: [`store`] (the `Store` trait; [`store::sqlite`]),
//!   [`presence::PresenceStore`] ([`presence::LocalPresence`]), [`hub`] (local connections and
//!   fan-out), [`delivery`] (the per-chat ordered message pipeline).
//! - Transports: [`ws`] (WebSocket), [`longpoll`] (`/v1/poll` + `/v1/frames`), [`api`] (HTTP),
//!   all driving one transport-agnostic [`session::Session`] and [`state::AppState`].
//! - [`server`] assembles it all, runs the accept loop and the drain on shutdown; [`tls`]
//!   puts the client listener behind rustls (reloading certificates) when asked to.

pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod hub;
pub mod longpoll;
pub mod media;
pub mod members;
pub mod metrics;
pub mod model;
pub mod plane;
pub mod presence;
pub mod protocol;
pub mod push;
pub mod ratelimit;
pub mod receipts;
pub mod retry;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod tls;
pub mod watchers;
pub mod web;
pub mod ws;
