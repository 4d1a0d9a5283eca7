//! Tern chat server: edge (WebSocket, long-poll, HTTP API), delivery (ordering, persistence,
//! fan-out, receipts, push) and presence, in one binary.
//!
//! # Layout (top to bottom; a module uses only what is below it, except where noted)
//! - [`server`]: the assembly — opens the backend, builds the plane and the one
//!   [`state::AppState`], starts the background tasks, accept loop, drain on shutdown.
//! - Transports and HTTP handlers, the only code that sees `AppState`: [`ws`] (WebSocket),
//!   [`longpoll`] (`/v1/poll` + `/v1/frames`), both driving one [`session::Session`]; [`api`]
//!   (chats, members, history, receipts, presence, probes), [`web`] (the web client),
//!   `media::http`/`media::tus_http` and `push::api` (own sub-states through axum `FromRef`).
//! - [`state`]: `AppState` and the operations the transports share (send, sync, history,
//!   receipts and their batched flush, typing, presence announcements).
//! - [`plane`]: the message plane — the [`plane::Plane`] seam; [`plane::local`] (embedded:
//!   shards, group commit, hub fan-out) and [`plane::cluster`] (Kafka producer on edges,
//!   [`plane::cluster::sequencer`] on delivery, Redis channels, Redis presence);
//!   [`plane::pipeline`], the pure after-append planner both use; [`plane::wire`], what
//!   travels between processes.
//! - Services the planes and handlers take directly: [`members::Directory`] (chat members and
//!   direct partners, cached), [`watchers`] (presence subscriptions), [`hub`] (this process's
//!   connections and their bounded queues), [`media`] (blob store, analysis, orphan GC),
//!   [`push`] (devices, the push queue and worker), [`metrics`], [`auth`], [`tls`],
//!   [`retry`].
//! - Ports with their implementations: [`store`] (the `Store` trait; [`store::sqlite`],
//!   `store::scylla`), [`presence::PresenceStore`] ([`presence::LocalPresence`]).
//! - Pure cores, no I/O, unit-tested: [`protocol`] (client frames: parse and validate; server
//!   frames: encode), [`ratelimit`] (token bucket), [`receipts`] (mark merging and the advance
//!   rule), [`presence`] (state machine), [`cache`] (recent messages), [`model`] (types and
//!   JSON shapes), [`config`], [`error`].
//!
//! `tests/layout.rs` keeps this honest: no import circle of more than three files, and
//! `AppState` named only by the assembly, the transports and the handlers.
//!
//! # One send's path
//! ```text
//!  client ── {"type":"message"} ──▶ ws.rs / longpoll.rs ──▶ session.rs  (rate limit, parse)
//!                                                            │
//!                            state.rs AppState::send  ◀──────┘  (validate, membership, media)
//!                                                            │ Plane::submit(Submission)
//!          ┌─────────────────────── embedded ────────────────┴──────── distributed ─────────────┐
//!  plane/local.rs: shard of chat_id                     plane/cluster/producer.rs (edge):
//!   batch ─▶ Store::append_batch (SQLite, fsync)          Kafka <cluster>.messages, key chat_id,
//!   │                                                     acks=all; waits by correlation id
//!   ▼                                                     ▼
//!  plane/pipeline.rs: plan (counts, fan-out list,       plane/cluster/sequencer.rs (delivery):
//!   members, push events, acks)                           batch ─▶ ScyllaStore::append_batch (CQL)
//!   │                                                     ─▶ plane/pipeline.rs plan
//!   ▼                                                     ─▶ Redis recent cache, routes,
//!  RecentCache, Hub::deliver (message frame to every      one batch per edge on edge:<node>
//!   member connection but the origin), push queue,        (deliveries, then the ack), push topic,
//!   ReplyTo::answer (ack to the origin)                   then the Kafka offset
//!                                                         ▼
//!                                                       plane/cluster/subscriber.rs (each edge):
//!                                                         Hub::deliver; producer answers the ack
//! ```

pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod hub;
pub mod keyfile;
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
