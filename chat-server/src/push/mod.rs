//! Push notifications for members with no live connection (issue 6; `docs/push.md`).
//!
//! # Flow
//! 1. The delivery role stores a message and fans it out; every member other than the sender
//!    with no live connection (embedded: [`Hub::is_connected`](crate::hub::Hub::is_connected);
//!    distributed: no route in Redis) becomes a [`PushEvent`]. Embedded, events go through a
//!    channel to the push worker, which writes them to `<data-dir>/push.db`; distributed, they
//!    are produced to the Kafka topic `<cluster>.push` (partition = user shard) before the
//!    message's offset is stored, and the delivery role consumes that topic in the consumer
//!    group `<cluster>.push` and writes them to ScyllaDB.
//! 2. Events are **coalesced** per (user, chat) into one [`Pending`] row
//!    ([`coalesce::add`]): the first message opens a window (`--push-coalesce-ms`), later ones
//!    raise the count, and when the window closes the worker turns the row into one
//!    notification per provider target ([`OutboxItem`]) — skipped for muted chats, with the
//!    badge (the user's unread count) read at that moment.
//! 3. Outbox items are sent by [`sender`] (Gorush-compatible gateway, signed webhook, Web
//!    Push); transient failures are retried with exponential backoff and jitter
//!    ([`backoff`]) up to `--push-max-attempts`, then kept as a dead letter. A provider
//!    answering "unregistered" removes the device.
//!
//! # Layout
//! - Pure, unit-tested: [`coalesce`] (pending rows), [`backoff`] (retry schedule),
//!   [`payload`] (notification text and the three request bodies, answer classification),
//!   [`webhook`] (HMAC signature), [`webpush`] (VAPID JWT, RFC 8291 encryption).
//! - Port: [`PushStore`] (devices, mutes, pending rows, outbox, dead letters), with
//!   [`sqlite::SqlitePushStore`] (embedded) and `scylla::ScyllaPushStore` (distributed).
//! - I/O: [`sender`] (HTTP to providers), [`worker`] (intake, scheduling, sending), [`api`]
//!   (`POST /v1/devices`, `DELETE /v1/devices/{token}`, `PUT|GET|DELETE /v1/chats/{id}/mute`,
//!   `GET /v1/push/vapid`), `kafka` (the distributed topic).

pub mod api;
pub mod backoff;
pub mod coalesce;
pub mod config;
#[cfg(feature = "distributed")]
pub mod kafka;
pub mod metrics;
pub mod payload;
#[cfg(feature = "distributed")]
pub mod scylla;
pub mod sender;
pub mod sqlite;
pub mod webhook;
pub mod webpush;
pub mod worker;

use crate::error::{Error, Result};
use crate::model::{ChatId, Message, Seq, UserId, now_ms};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Characters of message content kept for the notification preview.
pub const PREVIEW_CHARS: usize = 200;
/// Devices one user may register.
pub const MAX_DEVICES_PER_USER: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ios" => Some(Platform::Ios),
            "android" => Some(Platform::Android),
            "web" => Some(Platform::Web),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }
}

/// A registered push target of a user. For `web`, `token` is the subscription endpoint and
/// `p256dh`/`auth` are its keys (base64url, as `PushSubscription.toJSON()` gives them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub user_id: UserId,
    pub platform: Platform,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p256dh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// A stored message that reached a member with no live connection: the input of coalescing.
/// Also the record of the distributed `<cluster>.push` topic (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    pub user_id: UserId,
    pub chat_id: ChatId,
    pub seq: Seq,
    pub sender_id: UserId,
    /// The start of the content (at most [`PREVIEW_CHARS`]); empty for media-only messages.
    pub preview: String,
    pub at_ms: i64,
}

impl PushEvent {
    pub fn of(m: &Message, user_id: UserId) -> Self {
        let preview = if m.content.is_empty() && m.media_url.is_some() {
            "[media]".to_string()
        } else {
            m.content.chars().take(PREVIEW_CHARS).collect()
        };
        PushEvent {
            user_id,
            chat_id: m.chat_id,
            seq: m.seq,
            sender_id: m.sender_id,
            preview,
            at_ms: now_ms(),
        }
    }
}

/// The coalesced, not yet notified messages of one chat for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub shard: i32,
    pub user_id: UserId,
    pub chat_id: ChatId,
    /// Messages coalesced into this row.
    pub count: u32,
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// Sender and preview of the latest message.
    pub sender_id: UserId,
    pub preview: String,
    /// When the first message of the row arrived; the window closes at `due_at_ms`.
    pub first_at_ms: i64,
    pub due_at_ms: i64,
}

/// Which provider an outbox item goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Gateway,
    Webhook,
    Webpush,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Gateway => "gateway",
            Provider::Webhook => "webhook",
            Provider::Webpush => "webpush",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gateway" => Some(Provider::Gateway),
            "webhook" => Some(Provider::Webhook),
            "webpush" => Some(Provider::Webpush),
            _ => None,
        }
    }
}

/// One notification for one provider target (a gateway or webhook request for the user's
/// mobile devices, or one Web Push subscription), with its retry state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: String,
    pub shard: i32,
    pub user_id: UserId,
    pub chat_id: ChatId,
    pub provider: Provider,
    /// The devices it goes to (JSON array of [`Device`]).
    pub target: String,
    /// The notification ([`payload::Notification`], JSON), fixed when it was scheduled.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: u32,
    pub next_at_ms: i64,
    pub created_ms: i64,
    pub last_error: Option<String>,
}

/// Storage of the push feature. Contract:
/// - Devices are unique by token: registering a token another user had moves it.
/// - [`add_events`](Self::add_events) is durable when it returns and applies
///   [`coalesce::add`] per (user, chat); an event whose `seq` is not above the row's
///   `last_seq` is a replay and changes nothing, and events of users with no registered
///   device are dropped. Returns how many events were taken.
/// - [`schedule`](Self::schedule) atomically (SQLite) or in order outbox-first (CQL, a crash
///   between gives at most a duplicate, never a loss) turns what `taken` covered into outbox
///   items and leaves in the row only messages that arrived after `taken` was read.
/// - Only one process works on a shard at a time (distributed: the owner of the Kafka
///   partition with that number); the store does no locking across calls.
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    async fn register_device(&self, d: Device) -> Result<()>;
    /// Remove `token` of `user`; false if the user had no such device.
    async fn remove_device(&self, user: UserId, token: &str) -> Result<bool>;
    async fn devices(&self, user: UserId) -> Result<Vec<Device>>;
    async fn set_muted(&self, user: UserId, chat: ChatId, muted: bool) -> Result<()>;
    async fn is_muted(&self, user: UserId, chat: ChatId) -> Result<bool>;
    async fn add_events(&self, shard: i32, events: Vec<PushEvent>, window_ms: i64)
    -> Result<usize>;
    /// Pending rows of `shard` whose window has closed by `now_ms`, oldest first.
    async fn due_pending(&self, shard: i32, now_ms: i64, limit: usize) -> Result<Vec<Pending>>;
    async fn schedule(&self, taken: &Pending, items: Vec<OutboxItem>) -> Result<()>;
    /// Outbox items of `shard` due by `now_ms`.
    async fn due_outbox(&self, shard: i32, now_ms: i64, limit: usize) -> Result<Vec<OutboxItem>>;
    async fn outbox_done(&self, item: &OutboxItem) -> Result<()>;
    /// Record a failed attempt: `item.attempts`, `next_at_ms` and `last_error` as given.
    async fn outbox_retry(&self, item: &OutboxItem) -> Result<()>;
    /// Move the item to the dead letters (kept for inspection), out of the outbox.
    async fn dead_letter(&self, item: &OutboxItem, error: &str) -> Result<()>;
    /// The oldest `first_at_ms`/`created_ms` of what `shard` still has to send, if any.
    async fn oldest(&self, shard: i32) -> Result<Option<i64>>;
}

/// How events reach the durable queue.
pub enum Intake {
    /// Embedded: the push worker writes them to `push.db`.
    Channel(mpsc::Sender<PushEvent>),
    #[cfg(feature = "distributed")]
    /// Distributed delivery role: produced to `<cluster>.push`.
    Kafka(Arc<kafka::PushProducer>),
    /// This process does not queue pushes: it does not deliver (a distributed edge or
    /// presence process); events are dropped.
    NotHere,
}

/// The push feature of a running process: devices and mutes for the HTTP API, the intake
/// for the delivery role, the queue for the worker.
pub struct Push {
    pub cfg: config::PushArgs,
    pub store: Arc<dyn PushStore>,
    pub intake: Intake,
    /// Web Push application server key, when Web Push is on.
    pub vapid: Option<webpush::Vapid>,
}

/// The events for the members of `members` other than the sender for whom `online` is false.
pub fn offline_events(
    m: &Message,
    members: &[UserId],
    online: impl Fn(UserId) -> bool,
) -> Vec<PushEvent> {
    members
        .iter()
        .copied()
        .filter(|u| *u != m.sender_id && !online(*u))
        .map(|u| PushEvent::of(m, u))
        .collect()
}

impl Push {
    /// Queue the events (embedded: to the worker; distributed: to Kafka, waiting for its ack).
    pub async fn enqueue(&self, events: Vec<PushEvent>) {
        if events.is_empty() {
            return;
        }
        match &self.intake {
            Intake::Channel(tx) => {
                for e in events {
                    if tx.send(e).await.is_err() {
                        tracing::warn!("push: worker stopped; event dropped");
                        return;
                    }
                }
            }
            #[cfg(feature = "distributed")]
            Intake::Kafka(p) => p.produce(events).await,
            Intake::NotHere => {}
        }
    }
}

/// Validate a registration (`POST /v1/devices`) into a [`Device`].
pub fn device_of(user_id: UserId, req: api::RegisterDevice) -> Result<Device> {
    let platform = Platform::parse(&req.platform)
        .ok_or_else(|| Error::invalid("platform must be \"ios\", \"android\" or \"web\""))?;
    let token = req.token.trim().to_string();
    if token.is_empty() || token.len() > 4096 {
        return Err(Error::invalid("token must be 1 to 4096 characters"));
    }
    if platform != Platform::Web {
        return Ok(Device {
            user_id,
            platform,
            token,
            p256dh: None,
            auth: None,
        });
    }
    // Web: the endpoint plus keys, given as `keys` or as the whole subscription JSON in `token`.
    let (endpoint, keys) = if token.starts_with('{') {
        let sub: api::WebSubscription = serde_json::from_str(&token)
            .map_err(|e| Error::invalid(format!("token is not a PushSubscription: {e}")))?;
        (sub.endpoint, Some(sub.keys))
    } else {
        (token, req.keys)
    };
    let keys = keys.ok_or_else(|| {
        Error::invalid(
            "a web device needs its subscription keys: {\"platform\":\"web\",\"token\":\
             \"<endpoint>\",\"keys\":{\"p256dh\":\"…\",\"auth\":\"…\"}}",
        )
    })?;
    if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
        return Err(Error::invalid(
            "a web token is the subscription's endpoint URL",
        ));
    }
    webpush::Subscription::parse(&endpoint, &keys.p256dh, &keys.auth)?;
    Ok(Device {
        user_id,
        platform,
        token: endpoint,
        p256dh: Some(keys.p256dh),
        auth: Some(keys.auth),
    })
}

/// Queued events between the delivery shards and the embedded push worker.
const CHANNEL: usize = 16 * 1024;

impl Push {
    /// Embedded: `<data-dir>/push.db`; the VAPID key from the flag, else read from (or
    /// generated into) `<data-dir>/vapid-private-key`.
    pub fn open_embedded(
        cfg: &crate::config::ServeConfig,
    ) -> anyhow::Result<(Arc<Push>, mpsc::Receiver<PushEvent>)> {
        let args = (*cfg.push).clone();
        args.validate().map_err(anyhow::Error::msg)?;
        let store = sqlite::SqlitePushStore::open(&cfg.data_dir)
            .map_err(|e| anyhow::anyhow!("opening {}/push.db: {e}", cfg.data_dir.display()))?;
        let vapid = if args.push_no_webpush {
            None
        } else {
            Some(vapid_key(&args, Some(&cfg.data_dir))?)
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let push = Push {
            cfg: args,
            store: Arc::new(store),
            intake: Intake::Channel(tx),
            vapid,
        };
        Ok((Arc::new(push), rx))
    }
}

/// The VAPID key: configured, or (with a data dir) read from / generated into
/// `<dir>/vapid-private-key` (mode 0600).
pub fn vapid_key(
    args: &config::PushArgs,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<webpush::Vapid> {
    let subject = &args.push_vapid_subject;
    if let Some(k) = &args.push_vapid_private_key {
        return webpush::Vapid::from_private(k, subject)
            .map_err(|e| anyhow::anyhow!("--push-vapid-private-key: {e}"));
    }
    let Some(dir) = dir else {
        anyhow::bail!("no VAPID key: set --push-vapid-private-key");
    };
    let path = dir.join("vapid-private-key");
    let key = crate::keyfile::read_or_create(&path, || webpush::Vapid::generate(subject).1)?;
    if key.created {
        tracing::info!(path = %path.display(), "push: generated a VAPID key for Web Push");
    }
    webpush::Vapid::from_private(&key.secret, subject)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Start the worker on `tasks` (it stops when `deps.stop` fires).
pub fn spawn_worker(
    tasks: &TaskTracker,
    deps: worker::WorkerDeps,
    push: Arc<Push>,
    source: impl worker::Source + 'static,
) -> anyhow::Result<()> {
    let sender = Arc::new(sender::Sender::new(&push.cfg, push.vapid.clone())?);
    tasks.spawn(worker::run(deps, push, sender, source));
    Ok(())
}

/// Distributed: the push tables in ScyllaDB; a delivery process also gets the Kafka producer
/// and the worker's source. Web Push only with a configured VAPID key.
#[cfg(feature = "distributed")]
pub async fn open_distributed(
    cfg: &crate::config::ServeConfig,
    session: Arc<::scylla::client::session::Session>,
    keyspace: &str,
    delivers: bool,
) -> anyhow::Result<(Arc<Push>, Option<kafka::KafkaSource>)> {
    let args = (*cfg.push).clone();
    args.validate().map_err(anyhow::Error::msg)?;
    let store = scylla::ScyllaPushStore::new(session, keyspace)
        .await
        .map_err(|e| anyhow::anyhow!("push store: {e}"))?;
    let vapid = match (&args.push_vapid_private_key, args.push_no_webpush) {
        (Some(_), false) => Some(vapid_key(&args, None)?),
        _ => None,
    };
    let c = &cfg.cluster;
    let topic = kafka::topic(&c.cluster);
    let (intake, source) = if delivers {
        (
            Intake::Kafka(Arc::new(kafka::PushProducer::new(
                &c.kafka_brokers,
                topic.clone(),
            )?)),
            Some(kafka::KafkaSource::new(
                &c.kafka_brokers,
                &kafka::group(&c.cluster),
                &topic,
            )?),
        )
    } else {
        (Intake::NotHere, None)
    };
    let push = Push {
        cfg: args,
        store: Arc::new(store),
        intake,
        vapid,
    };
    Ok((Arc::new(push), source))
}

/// `chat-server setup`: the push tables and the `<cluster>.push` topic. Idempotent.
#[cfg(feature = "distributed")]
pub async fn setup(
    session: &::scylla::client::session::Session,
    keyspace: &str,
    brokers: &str,
    cluster: &str,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    scylla::setup(session, keyspace)
        .await
        .map_err(|e| anyhow::anyhow!("creating the push tables in {keyspace}: {e}"))?;
    crate::plane::cluster::kafka::ensure_topic(
        brokers,
        &kafka::topic(cluster),
        partitions,
        replication,
    )
    .await
}
