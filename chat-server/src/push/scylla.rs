//! The distributed push store: tables of its own in the cluster's keyspace, created by
//! [`setup`] (idempotent, run by `chat-server setup`).
//!
//! | table | key | what |
//! |---|---|---|
//! | `push_devices` | (user_id), push_token | a user's devices |
//! | `push_device_owner` | push_token | which user a token belongs to (tokens are unique) |
//! | `push_mutes` | (user_id), chat_id | muted chats |
//! | `push_pending` | (shard), user_id, chat_id | coalescing rows of one shard |
//! | `push_outbox` | (shard), id | notifications to send, with retry state |
//! | `push_dead_letters` | (user_id), id | given-up notifications (30-day TTL) |
//!
//! Only the owner of a shard (its Kafka partition of `<cluster>.push`) reads and writes that
//! shard's `push_pending` and `push_outbox` partitions, so read-modify-write needs no locks,
//! and the owner knows when a partition it found empty gets rows: idle shards are read again
//! only every 10 s (in case another owner wrote them before this one took the shard over).
//! [`PushStore::schedule`] writes the outbox items before it updates the pending row: a crash
//! between the two sends a notification twice, never zero times.

use super::{Device, OutboxItem, Pending, Platform, Provider, PushEvent, PushStore, coalesce};
use crate::error::{Error, Result};
use crate::model::{ChatId, UserId, now_ms};
use async_trait::async_trait;
use parking_lot::Mutex;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.push_devices (user_id bigint, push_token text, \
     platform text, p256dh text, auth text, created_ms bigint, PRIMARY KEY (user_id, push_token))",
    "CREATE TABLE IF NOT EXISTS {ks}.push_device_owner (push_token text PRIMARY KEY, \
     user_id bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.push_mutes (user_id bigint, chat_id bigint, \
     PRIMARY KEY (user_id, chat_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.push_pending (shard int, user_id bigint, chat_id bigint, \
     count int, first_seq bigint, last_seq bigint, sender_id bigint, preview text, \
     first_at_ms bigint, due_at_ms bigint, PRIMARY KEY (shard, user_id, chat_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.push_outbox (shard int, id text, user_id bigint, \
     chat_id bigint, provider text, target text, payload text, attempts int, next_at_ms bigint, \
     created_ms bigint, last_error text, PRIMARY KEY (shard, id))",
    "CREATE TABLE IF NOT EXISTS {ks}.push_dead_letters (user_id bigint, id text, chat_id bigint, \
     provider text, target text, payload text, attempts int, created_ms bigint, \
     failed_ms bigint, error text, PRIMARY KEY (user_id, id)) \
     WITH default_time_to_live = 2592000",
];

/// Create the push tables in `keyspace` (which `scylla_schema::setup` created). Idempotent.
pub async fn setup(session: &Session, keyspace: &str) -> Result<()> {
    for t in TABLES {
        let cql = t.replace("{ks}", keyspace);
        session
            .query_unpaged(cql.as_str(), ())
            .await
            .map_err(|e| Error::internal(format!("cql `{cql}`: {e}")))?;
    }
    // Schema agreement before anyone prepares statements on the new tables.
    session
        .await_schema_agreement()
        .await
        .map_err(|e| Error::internal(format!("cql schema agreement: {e}")))?;
    Ok(())
}

struct Statements {
    device_insert: PreparedStatement,
    device_delete: PreparedStatement,
    devices_of: PreparedStatement,
    any_device: PreparedStatement,
    owner_get: PreparedStatement,
    owner_set: PreparedStatement,
    owner_delete: PreparedStatement,
    mute_insert: PreparedStatement,
    mute_delete: PreparedStatement,
    mute_get: PreparedStatement,
    pending_get: PreparedStatement,
    pending_put: PreparedStatement,
    pending_delete: PreparedStatement,
    pending_shard: PreparedStatement,
    outbox_put: PreparedStatement,
    outbox_shard: PreparedStatement,
    outbox_delete: PreparedStatement,
    outbox_retry: PreparedStatement,
    dead_put: PreparedStatement,
}

const PENDING_COLS: &str = "shard, user_id, chat_id, count, first_seq, last_seq, sender_id, \
                            preview, first_at_ms, due_at_ms";
const OUTBOX_COLS: &str = "shard, id, user_id, chat_id, provider, target, payload, attempts, \
                           next_at_ms, created_ms, last_error";

pub struct ScyllaPushStore {
    session: Arc<Session>,
    st: Statements,
    /// What the last scans found per shard, so idle shards cost no reads.
    scans: Mutex<HashMap<i32, ShardScan>>,
}

/// An empty partition is read again only after this long (or once this process writes to it):
/// covers rows written by another owner while this process did not own the shard.
const RESCAN_MS: i64 = 10_000;

/// The last scan of a shard's `push_pending` and `push_outbox` partitions. A partition this
/// process writes to is marked non-empty, so new work is seen at the next tick.
#[derive(Debug, Clone, Copy, Default)]
struct ShardScan {
    pending_empty: bool,
    pending_at_ms: i64,
    oldest_pending: Option<i64>,
    outbox_empty: bool,
    outbox_at_ms: i64,
    oldest_outbox: Option<i64>,
}

type PendingRow = (i32, i64, i64, i32, i64, i64, i64, String, i64, i64);
type OutboxRow = (
    i32,
    String,
    i64,
    i64,
    String,
    String,
    String,
    i32,
    i64,
    i64,
    Option<String>,
);

fn pending_of(r: PendingRow) -> Pending {
    Pending {
        shard: r.0,
        user_id: r.1 as u64,
        chat_id: r.2 as u64,
        count: r.3.max(0) as u32,
        first_seq: r.4 as u64,
        last_seq: r.5 as u64,
        sender_id: r.6 as u64,
        preview: r.7,
        first_at_ms: r.8,
        due_at_ms: r.9,
    }
}

fn outbox_of(r: OutboxRow) -> OutboxItem {
    OutboxItem {
        shard: r.0,
        id: r.1,
        user_id: r.2 as u64,
        chat_id: r.3 as u64,
        provider: Provider::parse(&r.4).unwrap_or(Provider::Webhook),
        target: r.5,
        payload: r.6,
        attempts: r.7.max(0) as u32,
        next_at_ms: r.8,
        created_ms: r.9,
        last_error: r.10,
    }
}

fn rows<T>(what: &str, r: QueryResult) -> Result<Vec<T>>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    r.into_rows_result()
        .map_err(|e| Error::internal(format!("cql {what}: {e}")))?
        .rows::<T>()
        .map_err(|e| Error::internal(format!("cql {what}: {e}")))?
        .collect::<std::result::Result<Vec<T>, _>>()
        .map_err(|e| Error::internal(format!("cql {what}: {e}")))
}

fn cql(what: &str) -> impl Fn(scylla::errors::ExecutionError) -> Error + '_ {
    move |e| Error::Unavailable(format!("cql {what}: {e}"))
}

impl ScyllaPushStore {
    /// Prepare the statements; the tables must exist (`chat-server setup`).
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        let prep = |q: String| {
            let session = session.clone();
            async move {
                let q = q.replace("{ks}", keyspace);
                let mut p = session.prepare(q.as_str()).await.map_err(|e| {
                    Error::Unavailable(format!(
                        "cql preparing `{q}`: {e} (run `chat-server setup` to create the push tables)"
                    ))
                })?;
                p.set_is_idempotent(true);
                Ok::<_, Error>(p)
            }
        };
        let st = Statements {
            device_insert: prep("INSERT INTO {ks}.push_devices (user_id, push_token, platform, p256dh, auth, created_ms) VALUES (?, ?, ?, ?, ?, ?)".into()).await?,
            device_delete: prep("DELETE FROM {ks}.push_devices WHERE user_id = ? AND push_token = ?".into()).await?,
            devices_of: prep("SELECT push_token, platform, p256dh, auth FROM {ks}.push_devices WHERE user_id = ?".into()).await?,
            any_device: prep("SELECT push_token FROM {ks}.push_devices WHERE user_id = ? LIMIT 1".into()).await?,
            owner_get: prep("SELECT user_id FROM {ks}.push_device_owner WHERE push_token = ?".into()).await?,
            owner_set: prep("INSERT INTO {ks}.push_device_owner (push_token, user_id) VALUES (?, ?)".into()).await?,
            owner_delete: prep("DELETE FROM {ks}.push_device_owner WHERE push_token = ?".into()).await?,
            mute_insert: prep("INSERT INTO {ks}.push_mutes (user_id, chat_id) VALUES (?, ?)".into()).await?,
            mute_delete: prep("DELETE FROM {ks}.push_mutes WHERE user_id = ? AND chat_id = ?".into()).await?,
            mute_get: prep("SELECT chat_id FROM {ks}.push_mutes WHERE user_id = ? AND chat_id = ?".into()).await?,
            pending_get: prep(format!("SELECT {PENDING_COLS} FROM {{ks}}.push_pending WHERE shard = ? AND user_id = ? AND chat_id = ?")).await?,
            pending_put: prep(format!("INSERT INTO {{ks}}.push_pending ({PENDING_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")).await?,
            pending_delete: prep("DELETE FROM {ks}.push_pending WHERE shard = ? AND user_id = ? AND chat_id = ?".into()).await?,
            pending_shard: prep(format!("SELECT {PENDING_COLS} FROM {{ks}}.push_pending WHERE shard = ?")).await?,
            outbox_put: prep(format!("INSERT INTO {{ks}}.push_outbox ({OUTBOX_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")).await?,
            outbox_shard: prep(format!("SELECT {OUTBOX_COLS} FROM {{ks}}.push_outbox WHERE shard = ?")).await?,
            outbox_delete: prep("DELETE FROM {ks}.push_outbox WHERE shard = ? AND id = ?".into()).await?,
            outbox_retry: prep("UPDATE {ks}.push_outbox SET attempts = ?, next_at_ms = ?, last_error = ? WHERE shard = ? AND id = ?".into()).await?,
            dead_put: prep("INSERT INTO {ks}.push_dead_letters (user_id, id, chat_id, provider, target, payload, attempts, created_ms, failed_ms, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)".into()).await?,
        };
        Ok(ScyllaPushStore {
            session,
            st,
            scans: Mutex::new(HashMap::new()),
        })
    }

    async fn pending_row(&self, shard: i32, user: UserId, chat: ChatId) -> Result<Option<Pending>> {
        let r = self
            .session
            .execute_unpaged(&self.st.pending_get, (shard, user as i64, chat as i64))
            .await
            .map_err(cql("reading push_pending"))?;
        Ok(rows::<PendingRow>("push_pending", r)?
            .into_iter()
            .next()
            .map(pending_of))
    }

    async fn put_pending(&self, p: &Pending) -> Result<()> {
        self.session
            .execute_unpaged(
                &self.st.pending_put,
                (
                    p.shard,
                    p.user_id as i64,
                    p.chat_id as i64,
                    p.count as i32,
                    p.first_seq as i64,
                    p.last_seq as i64,
                    p.sender_id as i64,
                    p.preview.as_str(),
                    p.first_at_ms,
                    p.due_at_ms,
                ),
            )
            .await
            .map_err(cql("writing push_pending"))?;
        Ok(())
    }
}

#[async_trait]
impl PushStore for ScyllaPushStore {
    async fn register_device(&self, d: Device) -> Result<()> {
        let r = self
            .session
            .execute_unpaged(&self.st.owner_get, (d.token.as_str(),))
            .await
            .map_err(cql("reading push_device_owner"))?;
        if let Some((owner,)) = rows::<(i64,)>("push_device_owner", r)?.into_iter().next()
            && owner as u64 != d.user_id
        {
            self.session
                .execute_unpaged(&self.st.device_delete, (owner, d.token.as_str()))
                .await
                .map_err(cql("moving a device"))?;
        }
        self.session
            .execute_unpaged(
                &self.st.device_insert,
                (
                    d.user_id as i64,
                    d.token.as_str(),
                    d.platform.as_str(),
                    d.p256dh.as_deref(),
                    d.auth.as_deref(),
                    now_ms(),
                ),
            )
            .await
            .map_err(cql("writing push_devices"))?;
        self.session
            .execute_unpaged(&self.st.owner_set, (d.token.as_str(), d.user_id as i64))
            .await
            .map_err(cql("writing push_device_owner"))?;
        Ok(())
    }

    async fn remove_device(&self, user: UserId, token: &str) -> Result<bool> {
        let had = self.devices(user).await?.iter().any(|d| d.token == token);
        if !had {
            return Ok(false);
        }
        self.session
            .execute_unpaged(&self.st.device_delete, (user as i64, token))
            .await
            .map_err(cql("deleting a device"))?;
        let r = self
            .session
            .execute_unpaged(&self.st.owner_get, (token,))
            .await
            .map_err(cql("reading push_device_owner"))?;
        if rows::<(i64,)>("push_device_owner", r)?
            .into_iter()
            .next()
            .is_some_and(|(o,)| o as u64 == user)
        {
            self.session
                .execute_unpaged(&self.st.owner_delete, (token,))
                .await
                .map_err(cql("deleting push_device_owner"))?;
        }
        Ok(true)
    }

    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        let r = self
            .session
            .execute_unpaged(&self.st.devices_of, (user as i64,))
            .await
            .map_err(cql("reading push_devices"))?;
        Ok(
            rows::<(String, String, Option<String>, Option<String>)>("push_devices", r)?
                .into_iter()
                .map(|(token, platform, p256dh, auth)| Device {
                    user_id: user,
                    platform: Platform::parse(&platform).unwrap_or(Platform::Android),
                    token,
                    p256dh,
                    auth,
                })
                .collect(),
        )
    }

    async fn set_muted(&self, user: UserId, chat: ChatId, muted: bool) -> Result<()> {
        let st = if muted {
            &self.st.mute_insert
        } else {
            &self.st.mute_delete
        };
        self.session
            .execute_unpaged(st, (user as i64, chat as i64))
            .await
            .map_err(cql("writing push_mutes"))?;
        Ok(())
    }

    async fn is_muted(&self, user: UserId, chat: ChatId) -> Result<bool> {
        let r = self
            .session
            .execute_unpaged(&self.st.mute_get, (user as i64, chat as i64))
            .await
            .map_err(cql("reading push_mutes"))?;
        Ok(!rows::<(i64,)>("push_mutes", r)?.is_empty())
    }

    async fn add_events(
        &self,
        shard: i32,
        events: Vec<PushEvent>,
        window_ms: i64,
    ) -> Result<usize> {
        let mut has_device: HashMap<UserId, bool> = HashMap::new();
        let mut by_key: BTreeMap<(UserId, ChatId), Vec<PushEvent>> = BTreeMap::new();
        for e in events {
            by_key.entry((e.user_id, e.chat_id)).or_default().push(e);
        }
        let mut taken = 0;
        for ((user, chat), evs) in by_key {
            let has = match has_device.get(&user) {
                Some(h) => *h,
                None => {
                    let r = self
                        .session
                        .execute_unpaged(&self.st.any_device, (user as i64,))
                        .await
                        .map_err(cql("reading push_devices"))?;
                    let h = !rows::<(String,)>("push_devices", r)?.is_empty();
                    has_device.insert(user, h);
                    h
                }
            };
            if !has {
                continue;
            }
            let mut row = self.pending_row(shard, user, chat).await?;
            let mut changed = false;
            for e in &evs {
                if let Some(p) = coalesce::add(row.as_ref(), shard, e, window_ms) {
                    row = Some(p);
                    changed = true;
                    taken += 1;
                }
            }
            if let (true, Some(p)) = (changed, &row) {
                self.put_pending(p).await?;
                self.scans.lock().entry(shard).or_default().pending_empty = false;
            }
        }
        Ok(taken)
    }

    async fn due_pending(&self, shard: i32, now: i64, limit: usize) -> Result<Vec<Pending>> {
        let clock = now_ms();
        if let Some(sc) = self.scans.lock().get(&shard)
            && sc.pending_empty
            && clock - sc.pending_at_ms < RESCAN_MS
        {
            return Ok(vec![]);
        }
        let r = self
            .session
            .execute_unpaged(&self.st.pending_shard, (shard,))
            .await
            .map_err(cql("reading push_pending"))?;
        let all: Vec<Pending> = rows::<PendingRow>("push_pending", r)?
            .into_iter()
            .map(pending_of)
            .collect();
        {
            let mut scans = self.scans.lock();
            let sc = scans.entry(shard).or_default();
            sc.pending_empty = all.is_empty();
            sc.pending_at_ms = clock;
            sc.oldest_pending = all.iter().map(|p| p.first_at_ms).min();
        }
        let mut due: Vec<Pending> = all.into_iter().filter(|p| p.due_at_ms <= now).collect();
        due.sort_by_key(|p| p.due_at_ms);
        due.truncate(limit);
        Ok(due)
    }

    async fn schedule(&self, taken: &Pending, items: Vec<OutboxItem>) -> Result<()> {
        for i in &items {
            self.session
                .execute_unpaged(
                    &self.st.outbox_put,
                    (
                        i.shard,
                        i.id.as_str(),
                        i.user_id as i64,
                        i.chat_id as i64,
                        i.provider.as_str(),
                        i.target.as_str(),
                        i.payload.as_str(),
                        i.attempts as i32,
                        i.next_at_ms,
                        i.created_ms,
                        i.last_error.as_deref(),
                    ),
                )
                .await
                .map_err(cql("writing push_outbox"))?;
            self.scans.lock().entry(i.shard).or_default().outbox_empty = false;
        }
        let current = self
            .pending_row(taken.shard, taken.user_id, taken.chat_id)
            .await?;
        let window = taken.due_at_ms - taken.first_at_ms;
        match current.and_then(|c| coalesce::after_taken(&c, taken, now_ms(), window)) {
            Some(left) => self.put_pending(&left).await,
            None => {
                self.session
                    .execute_unpaged(
                        &self.st.pending_delete,
                        (taken.shard, taken.user_id as i64, taken.chat_id as i64),
                    )
                    .await
                    .map_err(cql("deleting push_pending"))?;
                Ok(())
            }
        }
    }

    async fn due_outbox(&self, shard: i32, now: i64, limit: usize) -> Result<Vec<OutboxItem>> {
        let clock = now_ms();
        if let Some(sc) = self.scans.lock().get(&shard)
            && sc.outbox_empty
            && clock - sc.outbox_at_ms < RESCAN_MS
        {
            return Ok(vec![]);
        }
        let r = self
            .session
            .execute_unpaged(&self.st.outbox_shard, (shard,))
            .await
            .map_err(cql("reading push_outbox"))?;
        let all: Vec<OutboxItem> = rows::<OutboxRow>("push_outbox", r)?
            .into_iter()
            .map(outbox_of)
            .collect();
        {
            let mut scans = self.scans.lock();
            let sc = scans.entry(shard).or_default();
            sc.outbox_empty = all.is_empty();
            sc.outbox_at_ms = clock;
            sc.oldest_outbox = all.iter().map(|i| i.created_ms).min();
        }
        let mut due: Vec<OutboxItem> = all.into_iter().filter(|i| i.next_at_ms <= now).collect();
        due.sort_by_key(|i| i.next_at_ms);
        due.truncate(limit);
        Ok(due)
    }

    async fn outbox_done(&self, item: &OutboxItem) -> Result<()> {
        self.session
            .execute_unpaged(&self.st.outbox_delete, (item.shard, item.id.as_str()))
            .await
            .map_err(cql("deleting push_outbox"))?;
        Ok(())
    }

    async fn outbox_retry(&self, item: &OutboxItem) -> Result<()> {
        self.session
            .execute_unpaged(
                &self.st.outbox_retry,
                (
                    item.attempts as i32,
                    item.next_at_ms,
                    item.last_error.as_deref(),
                    item.shard,
                    item.id.as_str(),
                ),
            )
            .await
            .map_err(cql("updating push_outbox"))?;
        Ok(())
    }

    async fn dead_letter(&self, item: &OutboxItem, error: &str) -> Result<()> {
        self.session
            .execute_unpaged(
                &self.st.dead_put,
                (
                    item.user_id as i64,
                    item.id.as_str(),
                    item.chat_id as i64,
                    item.provider.as_str(),
                    item.target.as_str(),
                    item.payload.as_str(),
                    item.attempts as i32,
                    item.created_ms,
                    now_ms(),
                    error,
                ),
            )
            .await
            .map_err(cql("writing push_dead_letters"))?;
        self.outbox_done(item).await
    }

    /// From the last scans (no extra reads): the worker scans every shard it owns each tick.
    async fn oldest(&self, shard: i32) -> Result<Option<i64>> {
        let scans = self.scans.lock();
        let Some(sc) = scans.get(&shard) else {
            return Ok(None);
        };
        let pending = (!sc.pending_empty).then_some(sc.oldest_pending).flatten();
        let outbox = (!sc.outbox_empty).then_some(sc.oldest_outbox).flatten();
        Ok(pending.into_iter().chain(outbox).min())
    }
}
