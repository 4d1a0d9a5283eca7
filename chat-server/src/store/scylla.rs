//! Distributed store: ScyllaDB (or any Cassandra-compatible server) over CQL.
//!
//! Same contract as the embedded [`SqliteStore`](super::sqlite::SqliteStore), kept with the
//! tools CQL has instead of transactions. The schema and the access path each table serves are
//! in `docs/schema.md`; [`setup`](super::scylla_schema::setup) creates it.
//!
//! # Layout
//! - Sequencing ([`Store::append_batch`]): one owner appends to a chat at a time (in the
//!   cluster, the delivery role that owns the chat's Kafka partition). The owner keeps the
//!   chat's last `seq` in memory; on first use it reads `chats.last_seq` and adopts any
//!   contiguous tail of messages a crashed previous owner wrote past it. Each message is
//!   checked against its idempotency key first (a replay returns the original with
//!   `duplicate = true`), then message rows are written (one single-partition batch per bucket,
//!   buckets in `seq` order, so a crash leaves a gapless prefix), then `chats.last_seq` moves.
//!   Readers never look past `chats.last_seq`, so they never see a message before it is acked.
//! - Membership: every change of a chat's `members` partition is a conditional batch on its
//!   static `version` column (Paxos), so the group limit and last-admin promotion hold under
//!   concurrent changes; `user_chats` follows in a logged batch.
//! - Direct chats: the pair key is claimed with `INSERT … IF NOT EXISTS` in `direct_chats`.
//! - Receipt marks and `chats.last_seq` are max registers: each cell is written with
//!   `USING TIMESTAMP <its own value>`, so the larger value wins whatever the order of writes,
//!   with no read and no lock.
//!
//! Every statement is prepared once, in [`ScyllaStore::connect`].

mod media;
mod users;

use super::scylla_schema::{self, SCHEMA_VERSION};
use super::{Appended, MessagePage, Page, Store, UserChat};
use crate::error::{Error, Result};
use crate::model::{
    Chat, ChatId, ChatType, Marks, Member, Message, NewMessage, Role, Seq, SharedMessage, UserId,
    now_ms,
};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};
use scylla::DeserializeRow;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlTimestamp, CqlValue, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Unread counts stop at this many (same cap as the embedded store).
const UNREAD_CAP: u64 = 10_000;
/// Bytes of message content per batch statement sent to one partition.
const BATCH_BYTES: usize = 256 * 1024;
/// Rows per multi-partition logged batch (`user_chats`): ~4 KiB, under Cassandra's default
/// `batch_size_warn_threshold` (5 KiB; single-partition batches are exempt from it).
const LOGGED_BATCH_ROWS: usize = 40;
/// Attempts of an optimistic (compare-and-set) membership change before giving up.
const CAS_ATTEMPTS: usize = 32;
/// Idempotency keys per `IN (…)` lookup or per batch write.
const IN_LIST: usize = 100;
/// Concurrent requests one store call sends.
const FAN_OUT: usize = 32;
/// Chats of one `append_batch` appended concurrently (each is a few sequential round trips).
const CHATS_AT_ONCE: usize = 128;

/// Connection and behaviour settings of [`ScyllaStore`].
#[derive(Debug, Clone)]
pub struct ScyllaOptions {
    /// Consistency of reads and writes: `Quorum` (tests, one DC) or `LocalQuorum` (production).
    /// A write answers only once this many replicas have it: that is what "durable" means here.
    pub consistency: Consistency,
    /// Consistency of the Paxos phase of lightweight transactions: `Serial` or `LocalSerial`.
    pub serial_consistency: SerialConsistency,
    /// Client-side timeout of one request.
    pub request_timeout: Duration,
    /// Prefer the nodes of this data centre (token- and DC-aware routing).
    pub local_dc: Option<String>,
    /// Username and password, when the cluster requires authentication.
    pub credentials: Option<(String, String)>,
    /// Chats whose last `seq` is kept in memory; beyond it, idle entries are dropped and
    /// re-read on next use.
    pub seq_cache_chats: usize,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        ScyllaOptions {
            consistency: Consistency::Quorum,
            serial_consistency: SerialConsistency::Serial,
            request_timeout: Duration::from_secs(5),
            local_dc: None,
            credentials: None,
            seq_cache_chats: 200_000,
        }
    }
}

/// Parse a consistency level name as CQL spells it (`quorum`, `LOCAL_QUORUM`, `one`, …).
pub fn parse_consistency(s: &str) -> Result<Consistency> {
    Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => {
            return Err(Error::invalid(format!(
                "consistency {s:?}: use one of one, two, three, quorum, all, local_quorum, \
                 each_quorum, local_one"
            )));
        }
    })
}

/// The store. Cheap to share (`Arc`); one per process.
pub struct ScyllaStore {
    session: Arc<Session>,
    st: Statements,
    keyspace: String,
    bucket_size: u64,
    seqs: SeqCache,
    media: media::MediaStatements,
    users: users::UserStatements,
}

impl ScyllaStore {
    /// Connect to `nodes` (`host:port`), check that `keyspace` was set up by
    /// [`setup`](scylla_schema::setup) with a schema this binary understands, and prepare
    /// every statement.
    pub async fn connect(nodes: &[String], keyspace: &str, options: ScyllaOptions) -> Result<Self> {
        let session = connect_session(nodes, &options).await?;
        Self::with_session(Arc::new(session), keyspace, options).await
    }

    /// Like [`connect`](Self::connect) on an existing session (shared with setup or tests).
    pub async fn with_session(
        session: Arc<Session>,
        keyspace: &str,
        options: ScyllaOptions,
    ) -> Result<Self> {
        scylla_schema::check_keyspace_name(keyspace)?;
        let info = scylla_schema::read_version(&session, keyspace)
            .await?
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "keyspace {keyspace} has no Tern schema; run `chat-server setup` first"
                ))
            })?;
        if info.version != SCHEMA_VERSION {
            return Err(Error::internal(format!(
                "keyspace {keyspace} has schema version {}, this binary needs {SCHEMA_VERSION}; \
                 run `chat-server setup` with the matching binary",
                info.version
            )));
        }
        let st = Statements::prepare(&session, keyspace, &options).await?;
        let media = media::MediaStatements::prepare(&session, keyspace, &options).await?;
        let users = users::UserStatements::prepare(&session, keyspace, &options).await?;
        Ok(ScyllaStore {
            session,
            st,
            keyspace: keyspace.to_string(),
            bucket_size: info.bucket_size.max(1),
            seqs: SeqCache::new(options.seq_cache_chats),
            media,
            users,
        })
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Messages per `messages` partition, as recorded in the keyspace.
    pub fn bucket_size(&self) -> u64 {
        self.bucket_size
    }

    /// Forget the cached last `seq` of every chat, so the next append re-reads it. The delivery
    /// role calls this when its Kafka partitions are revoked or assigned: another owner may
    /// have appended in between.
    pub fn forget_sequences(&self) {
        self.seqs.clear();
    }

    fn bucket(&self, seq: Seq) -> i64 {
        (seq / self.bucket_size) as i64
    }

    // ---- reads -------------------------------------------------------------------------

    async fn chat_row(&self, chat_id: ChatId) -> Result<Option<(Chat, i64)>> {
        let r = self
            .exec("reading a chat", &self.st.chat_get, (id(chat_id),))
            .await?;
        let row = rows_of::<ChatRow>("reading a chat", r)?.into_iter().next();
        Ok(row.map(|c| c.into_chat(chat_id)))
    }

    /// The members partition: rows and the static `version` (`None`: the chat has no members
    /// partition). `serial` reads through Paxos, for read-modify-write.
    async fn member_rows(
        &self,
        chat_id: ChatId,
        serial: bool,
    ) -> Result<(Vec<MemberRow>, Option<i64>)> {
        let stmt = if serial {
            &self.st.members_get_serial
        } else {
            &self.st.members_get
        };
        let r = self.exec("reading members", stmt, (id(chat_id),)).await?;
        let mut version = None;
        let mut out = Vec::new();
        for row in rows_of::<MemberRowRaw>("reading members", r)? {
            version = version.or(row.version);
            if let Some(m) = row.into_member() {
                out.push(m);
            }
        }
        Ok((out, version))
    }

    async fn message_at(&self, chat_id: ChatId, seq: Seq) -> Result<Option<Message>> {
        let r = self
            .exec(
                "reading a message",
                &self.st.msg_get,
                (id(chat_id), self.bucket(seq), seq as i64),
            )
            .await?;
        Ok(rows_of::<MessageRow>("reading a message", r)?
            .into_iter()
            .next()
            .map(|m| m.into_message(chat_id)))
    }

    /// Messages of one bucket with `after < seq <= upper`, ascending, at most `limit`.
    async fn bucket_asc(
        &self,
        chat_id: ChatId,
        bucket: i64,
        after: Seq,
        upper: Seq,
        limit: usize,
    ) -> Result<Vec<SharedMessage>> {
        let r = self
            .exec(
                "reading messages",
                &self.st.msgs_asc,
                (
                    id(chat_id),
                    bucket,
                    after as i64,
                    upper.min(i64::MAX as u64) as i64,
                    limit.min(i32::MAX as usize) as i32,
                ),
            )
            .await?;
        Ok(rows_of::<MessageRow>("reading messages", r)?
            .into_iter()
            .map(|m| Arc::new(m.into_message(chat_id)))
            .collect())
    }

    /// Messages with `after < seq <= upper` in ascending order, at most `limit`.
    async fn range_asc(
        &self,
        chat_id: ChatId,
        after: Seq,
        upper: Seq,
        limit: usize,
    ) -> Result<Vec<SharedMessage>> {
        let mut out = Vec::new();
        if upper <= after {
            return Ok(out);
        }
        let mut b = self.bucket(after + 1);
        while out.len() < limit && b <= self.bucket(upper) {
            let page = self
                .bucket_asc(chat_id, b, after, upper, limit - out.len())
                .await?;
            out.extend(page);
            b += 1;
        }
        Ok(out)
    }

    /// Messages with `seq <= upper`, newest first, at most `limit`.
    async fn range_desc(
        &self,
        chat_id: ChatId,
        upper: Seq,
        limit: usize,
    ) -> Result<Vec<SharedMessage>> {
        let mut out = Vec::new();
        if upper == 0 {
            return Ok(out);
        }
        let lowest = self.bucket(1);
        let mut b = self.bucket(upper);
        while out.len() < limit && b >= lowest {
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            let r = self
                .exec(
                    "reading messages",
                    &self.st.msgs_desc,
                    (id(chat_id), b, upper as i64, want),
                )
                .await?;
            for m in rows_of::<MessageRow>("reading messages", r)? {
                out.push(Arc::new(m.into_message(chat_id)));
            }
            b -= 1;
        }
        Ok(out)
    }

    /// Messages from anyone but `user` with `from < seq <= to`, counted up to [`UNREAD_CAP`].
    async fn count_unread(&self, chat_id: ChatId, user: UserId, from: Seq, to: Seq) -> Result<u64> {
        let mut n = 0;
        if to <= from {
            return Ok(0);
        }
        for b in self.bucket(from + 1)..=self.bucket(to) {
            let pager = self
                .session
                .execute_iter(
                    self.st.senders.clone(),
                    (id(chat_id), b, from as i64, to as i64),
                )
                .await
                .map_err(|e| pager_error("counting unread messages", e))?;
            let mut rows = pager
                .rows_stream::<(i64,)>()
                .map_err(|e| Error::internal(format!("cql counting unread messages: {e}")))?;
            while let Some(row) = rows.next().await {
                let (sender,) = row.map_err(|e| next_row_error("counting unread messages", e))?;
                if sender as u64 != user {
                    n += 1;
                    if n >= UNREAD_CAP {
                        return Ok(n);
                    }
                }
            }
        }
        Ok(n)
    }

    /// A member's read mark (0 if none).
    async fn read_seq(&self, chat_id: ChatId, user_id: UserId, epoch: i64) -> Result<Seq> {
        let r = self
            .exec(
                "reading receipt marks",
                &self.st.mark_get,
                (id(chat_id), id(user_id), epoch),
            )
            .await?;
        Ok(rows_of::<(Option<i64>,)>("reading receipt marks", r)?
            .into_iter()
            .next()
            .and_then(|(r,)| r)
            .unwrap_or(0)
            .max(0) as u64)
    }

    async fn user_chat_rows(&self, user_id: UserId) -> Result<Vec<UserChatRow>> {
        let pager = self
            .session
            .execute_iter(self.st.user_chats_get.clone(), (id(user_id),))
            .await
            .map_err(|e| pager_error("reading the user's chats", e))?;
        pager
            .rows_stream::<UserChatRow>()
            .map_err(|e| Error::internal(format!("cql reading the user's chats: {e}")))?
            .map_err(|e| next_row_error("reading the user's chats", e))
            .try_collect()
            .await
    }

    // ---- membership --------------------------------------------------------------------

    /// Claim a fresh random chat id by creating its members partition (a conditional batch, so
    /// an id in use is never overwritten) with `members`. Returns the id and the epochs.
    async fn reserve_chat(
        &self,
        members: &[(UserId, Role)],
        now: i64,
    ) -> Result<(ChatId, Vec<i64>)> {
        for _ in 0..CAS_ATTEMPTS {
            let chat_id = random_chat_id();
            let mut batch = self.lwt_batch();
            let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
            batch.append_statement(self.st.members_create.clone());
            values.push(Box::new((id(chat_id),)));
            let epochs: Vec<i64> = members.iter().map(|_| random_epoch()).collect();
            for ((user, role), epoch) in members.iter().zip(&epochs) {
                batch.append_statement(self.st.member_insert.clone());
                values.push(Box::new((
                    id(chat_id),
                    id(*user),
                    role.as_str(),
                    CqlTimestamp(now),
                    *epoch,
                )));
            }
            let r = self
                .session
                .batch(&batch, values)
                .await
                .map_err(|e| exec_error("creating a chat's members", e))?;
            if lwt_applied("creating a chat's members", r)?.0 {
                return Ok((chat_id, epochs));
            }
        }
        Err(Error::internal(
            "could not find a free chat id (every random id tried was taken)",
        ))
    }

    /// Write `user_chats` rows (and optionally the chat row first), in logged batches.
    async fn write_user_chats(
        &self,
        chat_row: Option<(ChatId, ChatType, Option<&str>, i64)>,
        rows: &[(UserId, ChatId, Option<UserId>, i64)],
    ) -> Result<()> {
        let mut batches: Vec<(Batch, Vec<Box<dyn SerializeRow + Send + Sync>>)> = Vec::new();
        let mut first = Some(chat_row);
        let mut rest = rows;
        loop {
            let mut batch = self.logged_batch();
            let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
            if let Some(Some((chat_id, kind, title, created_at))) = first.take() {
                batch.append_statement(self.st.chat_insert.clone());
                values.push(Box::new((
                    id(chat_id),
                    kind.as_str(),
                    title.map(str::to_string),
                    CqlTimestamp(created_at),
                )));
            }
            let n = rest.len().min(LOGGED_BATCH_ROWS);
            for (user, chat, peer, epoch) in &rest[..n] {
                batch.append_statement(self.st.user_chat_insert.clone());
                values.push(Box::new((id(*user), id(*chat), peer.map(id), *epoch)));
            }
            rest = &rest[n..];
            if !values.is_empty() {
                batches.push((batch, values));
            }
            if rest.is_empty() {
                break;
            }
        }
        let writes: Vec<_> = batches
            .into_iter()
            .map(|(b, v)| async move {
                self.session
                    .batch(&b, v)
                    .await
                    .map_err(|e| exec_error("writing the user's chat list", e))
            })
            .collect();
        stream::iter(writes)
            .buffer_unordered(FAN_OUT)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// A direct chat found by its pair key. Writes the chat row and the `user_chats` rows if a
    /// creator stopped between claiming the pair and writing them (same values, idempotent).
    async fn ensure_direct(
        &self,
        chat_id: ChatId,
        created_at: i64,
        pair: (UserId, UserId),
    ) -> Result<Chat> {
        if let Some((chat, _)) = self.chat_row(chat_id).await? {
            return Ok(chat);
        }
        let (rows, _) = self.member_rows(chat_id, false).await?;
        let epoch_of = |u: UserId| rows.iter().find(|m| m.user_id == u).map_or(0, |m| m.epoch);
        let (a, b) = pair;
        self.write_user_chats(
            Some((chat_id, ChatType::Direct, None, created_at)),
            &[
                (a, chat_id, Some(b), epoch_of(a)),
                (b, chat_id, Some(a), epoch_of(b)),
            ],
        )
        .await?;
        Ok(new_chat(chat_id, ChatType::Direct, None, created_at))
    }

    // ---- sequencing --------------------------------------------------------------------

    /// The chat's last `seq` for a new owner: `chats.last_seq`, advanced over any contiguous
    /// run of messages a previous owner wrote after it (their idempotency keys are rewritten so
    /// replays find them). `None` if the chat does not exist.
    async fn recover_last_seq(&self, chat_id: ChatId) -> Result<Option<Seq>> {
        let Some((chat, _)) = self.chat_row(chat_id).await? else {
            return Ok(None);
        };
        let stored = chat.last_seq;
        let mut last = stored;
        let mut adopted = Vec::new();
        const PAGE: usize = 1000;
        let mut gap_in = None;
        loop {
            let b = self.bucket(last + 1);
            let tail = self.bucket_asc(chat_id, b, last, u64::MAX, PAGE).await?;
            let before = last;
            for m in &tail {
                if m.seq != last + 1 {
                    gap_in = Some(b);
                    break;
                }
                last = m.seq;
                adopted.push(m.clone());
            }
            let bucket_done = self.bucket(last + 1) != b;
            if gap_in.is_some() || last == before || (tail.len() < PAGE && !bucket_done) {
                break;
            }
        }
        if let Some(mut b) = gap_in {
            // Rows past a gap were never acknowledged (appends are acked only once every row
            // and `last_seq` are written). Delete them, or a later owner would adopt them once
            // new messages close the gap, duplicating messages that were resent meanwhile.
            tracing::warn!(
                chat_id,
                after = last,
                "deleting unacknowledged messages past a gap"
            );
            loop {
                self.exec(
                    "deleting unacknowledged messages",
                    &self.st.msgs_drop_after,
                    (id(chat_id), b, last as i64),
                )
                .await?;
                b += 1;
                if self
                    .bucket_asc(chat_id, b, last, u64::MAX, 1)
                    .await?
                    .is_empty()
                {
                    break;
                }
            }
        }
        if last > stored {
            tracing::warn!(
                chat_id,
                from = stored,
                to = last,
                "adopting messages written by a previous owner after chats.last_seq"
            );
            self.write_idempotency(&adopted).await?;
            self.advance(
                chat_id,
                last,
                adopted.last().map_or_else(now_ms, |m| m.created_at),
            )
            .await?;
        }
        Ok(Some(last))
    }

    /// The stored messages that resends from `sender` refer to, by `client_msg_id`: keys are
    /// read in one query (one partition per chat and sender), and a key counts only if it
    /// points at a visible message (`seq <= last`) that is still the one it was written for.
    async fn originals(
        &self,
        chat_id: ChatId,
        sender: UserId,
        client_msg_ids: Vec<String>,
        last: Seq,
    ) -> Result<HashMap<String, Message>> {
        let mut keys: Vec<(String, Seq, String)> = Vec::new();
        for chunk in client_msg_ids.chunks(IN_LIST) {
            let r = self
                .exec(
                    "reading idempotency keys",
                    &self.st.idem_get,
                    (id(chat_id), id(sender), chunk),
                )
                .await?;
            for (cid, seq, message_id) in
                rows_of::<(String, i64, String)>("reading idempotency keys", r)?
            {
                let seq = seq.max(0) as u64;
                if seq != 0 && seq <= last {
                    keys.push((cid, seq, message_id));
                }
            }
        }
        let checks: Vec<_> = keys
            .into_iter()
            .map(|(cid, seq, message_id)| async move {
                let found = self.message_at(chat_id, seq).await?;
                Ok::<_, Error>(
                    found
                        .filter(|m| m.message_id == message_id && m.sender_id == sender)
                        .map(|m| (cid, m)),
                )
            })
            .collect();
        let found: Vec<Option<(String, Message)>> = stream::iter(checks)
            .buffer_unordered(FAN_OUT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Idempotency keys of `messages` (all of one chat): one single-partition batch per sender.
    /// A message without `client_msg_id` is keyed by its own id, so that a replay of the same
    /// Kafka record (same edge-assigned `message_id`) is recognised too.
    async fn write_idempotency(&self, messages: &[SharedMessage]) -> Result<()> {
        let mut by_sender: HashMap<UserId, Vec<&Message>> = HashMap::new();
        for m in messages.iter() {
            by_sender.entry(m.sender_id).or_default().push(m);
        }
        let mut writes = Vec::new();
        for group in by_sender.values() {
            for chunk in group.chunks(IN_LIST) {
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_consistency(self.st.consistency);
                batch.set_is_idempotent(true);
                let mut values = Vec::with_capacity(chunk.len());
                for m in chunk {
                    batch.append_statement(self.st.idem_put.clone());
                    values.push((
                        id(m.chat_id),
                        id(m.sender_id),
                        idempotency_key(m),
                        m.seq as i64,
                        m.message_id.as_str(),
                    ));
                }
                writes.push(async move {
                    self.session
                        .batch(&batch, values)
                        .await
                        .map_err(|e| exec_error("writing idempotency keys", e))
                });
            }
        }
        stream::iter(writes)
            .buffer_unordered(FAN_OUT)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// Message rows: one unlogged single-partition batch per bucket (split by size), written
    /// one after the other in `seq` order so that a failure leaves a gapless prefix.
    async fn write_rows(&self, messages: &[SharedMessage]) -> Result<()> {
        let mut i = 0;
        while i < messages.len() {
            let bucket = self.bucket(messages[i].seq);
            let mut j = i;
            let mut bytes = 0;
            while j < messages.len()
                && self.bucket(messages[j].seq) == bucket
                && (j == i || bytes + messages[j].content.len() <= BATCH_BYTES)
            {
                bytes += messages[j].content.len() + 128;
                j += 1;
            }
            let chunk = &messages[i..j];
            if let [m] = chunk {
                self.exec(
                    "writing a message",
                    &self.st.msg_insert,
                    self.message_values(m),
                )
                .await?;
            } else {
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_consistency(self.st.consistency);
                batch.set_is_idempotent(true);
                let mut values = Vec::with_capacity(chunk.len());
                for m in chunk {
                    batch.append_statement(self.st.msg_insert.clone());
                    values.push(self.message_values(m));
                }
                self.session
                    .batch(&batch, values)
                    .await
                    .map_err(|e| exec_error("writing messages", e))?;
            }
            i = j;
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn message_values<'a>(
        &self,
        m: &'a Message,
    ) -> (
        i64,
        i64,
        i64,
        &'a str,
        i64,
        &'a str,
        Option<&'a str>,
        Option<String>,
        Option<&'a str>,
        CqlTimestamp,
    ) {
        (
            id(m.chat_id),
            self.bucket(m.seq),
            m.seq as i64,
            m.message_id.as_str(),
            id(m.sender_id),
            m.content.as_str(),
            m.media_url.as_deref(),
            m.media.as_ref().map(|v| v.to_string()),
            m.client_msg_id.as_deref(),
            CqlTimestamp(m.created_at),
        )
    }

    /// Move `chats.last_seq` (and `updated_at`) forward; never back (max register).
    async fn advance(&self, chat_id: ChatId, last: Seq, at: i64) -> Result<()> {
        self.exec(
            "advancing the chat's last seq",
            &self.st.chat_advance,
            (last as i64, last as i64, CqlTimestamp(at), id(chat_id)),
        )
        .await?;
        Ok(())
    }

    /// Append one chat's messages (in order) while holding that chat's sequencing slot.
    async fn append_chat(
        &self,
        chat_id: ChatId,
        batch: Vec<(usize, NewMessage)>,
    ) -> Vec<(usize, Result<Appended>)> {
        let slot = self.seqs.slot(chat_id);
        let mut cached = slot.lock().await;
        let generation = self.seqs.generation();
        let last = match cached.get(generation) {
            Some(s) => s,
            None => match self.recover_last_seq(chat_id).await {
                Ok(Some(s)) => {
                    cached.set(s, generation);
                    s
                }
                Ok(None) => {
                    return batch
                        .into_iter()
                        .map(|(i, _)| (i, Err(Error::not_found("no such chat"))))
                        .collect();
                }
                Err(e) => {
                    return batch
                        .into_iter()
                        .map(|(i, _)| (i, Err(same_error(&e))))
                        .collect();
                }
            },
        };
        // Idempotency: the keys of each sender are looked up in one query, senders concurrently.
        let mut asked: HashMap<UserId, Vec<String>> = HashMap::new();
        for (_, m) in &batch {
            if let Some(cid) = m.dedupe_key() {
                let ids = asked.entry(m.sender_id).or_default();
                if !ids.contains(&cid) {
                    ids.push(cid);
                }
            }
        }
        let lookups: Vec<_> = asked
            .into_iter()
            .map(|(sender, ids)| async move {
                (sender, self.originals(chat_id, sender, ids, last).await)
            })
            .collect();
        let mut originals: HashMap<UserId, Result<HashMap<String, Message>>> =
            stream::iter(lookups)
                .buffer_unordered(FAN_OUT)
                .collect()
                .await;
        let lookups: Vec<Result<Option<Message>>> = batch
            .iter()
            .map(
                |(_, m)| match (m.dedupe_key(), originals.get_mut(&m.sender_id)) {
                    (Some(cid), Some(Ok(found))) => Ok(found.get(&cid).cloned()),
                    (Some(_), Some(Err(e))) => Err(same_error(e)),
                    _ => Ok(None),
                },
            )
            .collect();

        let now = now_ms();
        let mut next = last;
        let mut results: Vec<(usize, Option<Result<Appended>>)> = Vec::with_capacity(batch.len());
        let mut fresh: Vec<SharedMessage> = Vec::new();
        let mut fresh_at: Vec<usize> = Vec::new();
        let mut in_batch: HashMap<(UserId, String), SharedMessage> = HashMap::new();
        for ((i, m), found) in batch.into_iter().zip(lookups) {
            let key = m.dedupe_key();
            let earlier = key
                .as_ref()
                .and_then(|c| in_batch.get(&(m.sender_id, c.clone())).cloned());
            let outcome = match (found, earlier) {
                (Err(e), _) => Some(Err(e)),
                (Ok(Some(original)), _) => Some(Ok(Appended {
                    message: Arc::new(original),
                    duplicate: true,
                })),
                (Ok(None), Some(first)) => Some(Ok(Appended {
                    message: first,
                    duplicate: true,
                })),
                (Ok(None), None) => {
                    next += 1;
                    let message = Arc::new(Message {
                        message_id: m
                            .message_id
                            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                        chat_id,
                        seq: next,
                        sender_id: m.sender_id,
                        content: m.content,
                        media_url: m.media_url,
                        media: m.media,
                        client_msg_id: m.client_msg_id,
                        created_at: now,
                    });
                    if let Some(c) = key {
                        in_batch.insert((message.sender_id, c), message.clone());
                    }
                    fresh_at.push(results.len());
                    fresh.push(message);
                    None
                }
            };
            results.push((i, outcome));
        }
        if !fresh.is_empty() {
            let written = async {
                let (rows, keys) =
                    futures::join!(self.write_rows(&fresh), self.write_idempotency(&fresh));
                rows?;
                keys?;
                self.advance(chat_id, next, now).await
            }
            .await;
            match written {
                Ok(()) => {
                    cached.set(next, generation);
                    for (k, message) in fresh_at.into_iter().zip(fresh) {
                        results[k].1 = Some(Ok(Appended {
                            message,
                            duplicate: false,
                        }));
                    }
                }
                Err(e) => {
                    // Unknown how much landed: the next append re-reads the chat's tail.
                    cached.last = None;
                    tracing::error!(cause = %e, chat_id, "append failed");
                    for k in fresh_at {
                        results[k].1 = Some(Err(same_error(&e)));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|(i, r)| (i, r.expect("every message has an outcome")))
            .collect()
    }

    // ---- helpers -----------------------------------------------------------------------

    async fn exec(
        &self,
        what: &str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult> {
        self.session
            .execute_unpaged(stmt, values)
            .await
            .map_err(|e| exec_error(what, e))
    }

    fn logged_batch(&self) -> Batch {
        let mut b = Batch::new(BatchType::Logged);
        b.set_consistency(self.st.consistency);
        b.set_is_idempotent(true);
        b
    }

    fn lwt_batch(&self) -> Batch {
        let mut b = Batch::new(BatchType::Logged);
        b.set_consistency(self.st.consistency);
        b.set_serial_consistency(Some(self.st.serial));
        b
    }

    /// Run a conditional batch on the members partition: `version` moves from `from` to
    /// `from + 1` together with `changes`.
    async fn members_cas(
        &self,
        chat_id: ChatId,
        from: i64,
        changes: Vec<(PreparedStatement, Box<dyn SerializeRow + Send + Sync>)>,
    ) -> Result<Cas> {
        let mut batch = self.lwt_batch();
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
        batch.append_statement(self.st.members_bump.clone());
        values.push(Box::new((from + 1, id(chat_id), from)));
        for (stmt, v) in changes {
            batch.append_statement(stmt);
            values.push(v);
        }
        match self.session.batch(&batch, values).await {
            Ok(r) => Ok(if lwt_applied("changing members", r)?.0 {
                Cas::Applied
            } else {
                Cas::Conflict
            }),
            // Contention: the caller re-reads (SERIAL, which finishes any pending proposal)
            // and checks whether its change is there.
            Err(e) if is_cas_timeout(&e) => Ok(Cas::Unknown),
            Err(e) => Err(exec_error("changing members", e)),
        }
    }

    /// After members were added: their `user_chats` rows, and a repair of the rows of users
    /// asked for who already were members (a failed earlier call may have left them out).
    async fn finish_add(
        &self,
        chat_id: ChatId,
        added: &[(UserId, i64)],
        asked: &[UserId],
        before: &[MemberRow],
    ) -> Result<()> {
        let rows: Vec<_> = added.iter().map(|(u, e)| (*u, chat_id, None, *e)).collect();
        if !rows.is_empty() {
            self.write_user_chats(None, &rows).await?;
        }
        let touches: Vec<_> = before
            .iter()
            .filter(|m| asked.contains(&m.user_id))
            .map(|m| {
                self.exec(
                    "repairing the user's chat list",
                    &self.st.user_chat_touch,
                    (m.epoch, id(m.user_id), id(chat_id)),
                )
            })
            .collect();
        stream::iter(touches)
            .buffer_unordered(FAN_OUT)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// After a member was removed: drop the chat from their list and their receipt marks; a
    /// direct chat's survivor no longer has a partner in it.
    async fn finish_remove(
        &self,
        chat_id: ChatId,
        user_id: UserId,
        epoch: i64,
        remaining: &[&MemberRow],
    ) -> Result<()> {
        let mut batch = self.logged_batch();
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
        batch.append_statement(self.st.user_chat_delete.clone());
        values.push(Box::new((id(user_id), id(chat_id))));
        batch.append_statement(self.st.marks_delete.clone());
        values.push(Box::new((id(chat_id), id(user_id), epoch)));
        if let [other] = remaining {
            batch.append_statement(self.st.user_chat_clear_peer.clone());
            values.push(Box::new((id(other.user_id), id(chat_id))));
        }
        self.session
            .batch(&batch, values)
            .await
            .map_err(|e| exec_error("removing a chat from the user's list", e))?;
        Ok(())
    }
}

/// Outcome of a compare-and-set on a members partition.
enum Cas {
    Applied,
    /// Someone else changed the partition first.
    Conflict,
    /// Timed out: it may or may not have been applied.
    Unknown,
}

/// A session to `nodes` with the options' consistency, timeout, DC preference, credentials and
/// client-side monotonic write timestamps (for `chat-server setup` and [`ScyllaStore::connect`]).
pub async fn connect_session(nodes: &[String], options: &ScyllaOptions) -> Result<Session> {
    if nodes.is_empty() {
        return Err(Error::invalid("no CQL nodes given"));
    }
    let profile = scylla::client::execution_profile::ExecutionProfile::builder()
        .consistency(options.consistency)
        .serial_consistency(Some(options.serial_consistency))
        .request_timeout(Some(options.request_timeout))
        .load_balancing_policy({
            let mut lb =
                scylla::policies::load_balancing::DefaultPolicy::builder().token_aware(true);
            if let Some(dc) = &options.local_dc {
                lb = lb.prefer_datacenter(dc.clone()).permit_dc_failover(false);
            }
            lb.build()
        })
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(profile.into_handle())
        // Client-side, strictly increasing write timestamps: a delete followed by a re-insert
        // from this process (leave and re-join) is ordered even across coordinators.
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
    if let Some((user, pass)) = &options.credentials {
        builder = builder.user(user, pass);
    }
    builder.build().await.map_err(|e| {
        Error::Unavailable(format!(
            "cannot connect to the CQL cluster at {}: {e}",
            nodes.join(",")
        ))
    })
}

#[async_trait]
impl Store for ScyllaStore {
    async fn create_direct(&self, a: UserId, b: UserId) -> Result<(Chat, bool)> {
        if a == b {
            return Err(Error::invalid("a direct chat needs two different users"));
        }
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let pair = format!("{lo}:{hi}");
        for _ in 0..CAS_ATTEMPTS {
            let r = self
                .exec(
                    "reading a direct chat",
                    &self.st.direct_get,
                    (pair.as_str(),),
                )
                .await?;
            if let Some((chat_id, created_at)) =
                rows_of::<(i64, CqlTimestamp)>("reading a direct chat", r)?
                    .into_iter()
                    .next()
            {
                let chat = self
                    .ensure_direct(chat_id as u64, created_at.0, (lo, hi))
                    .await?;
                return Ok((chat, false));
            }
            let now = now_ms();
            let (chat_id, epochs) = self
                .reserve_chat(&[(lo, Role::Member), (hi, Role::Member)], now)
                .await?;
            let claim = self
                .session
                .execute_unpaged(
                    &self.st.direct_claim,
                    (pair.as_str(), id(chat_id), CqlTimestamp(now)),
                )
                .await;
            let applied = match claim {
                Ok(r) => lwt_applied("claiming a direct chat", r)?.0,
                // Contention: unknown outcome; the next round reads the pair again (and, if the
                // claim did land, completes this chat as the winner's chat).
                Err(e) if is_cas_timeout(&e) => continue,
                Err(e) => return Err(exec_error("claiming a direct chat", e)),
            };
            if applied {
                self.write_user_chats(
                    Some((chat_id, ChatType::Direct, None, now)),
                    &[
                        (lo, chat_id, Some(hi), epochs[0]),
                        (hi, chat_id, Some(lo), epochs[1]),
                    ],
                )
                .await?;
                return Ok((new_chat(chat_id, ChatType::Direct, None, now), true));
            }
            // Lost the race: release the reserved id; the next round finds the winner's chat.
            if let Err(e) = self
                .exec("releasing a chat id", &self.st.members_drop, (id(chat_id),))
                .await
            {
                tracing::warn!(cause = %e, chat_id, "could not release an unused chat id");
            }
        }
        Err(Error::Unavailable(
            "creating the direct chat kept conflicting with concurrent creates; retry".into(),
        ))
    }

    async fn create_group(
        &self,
        creator: UserId,
        title: Option<String>,
        members: Vec<UserId>,
        limit: usize,
    ) -> Result<Chat> {
        let all = super::group_members(creator, members, limit)?;
        let now = now_ms();
        let roles: Vec<(UserId, Role)> = all
            .iter()
            .map(|u| {
                (
                    *u,
                    if *u == creator {
                        Role::Admin
                    } else {
                        Role::Member
                    },
                )
            })
            .collect();
        let (chat_id, epochs) = self.reserve_chat(&roles, now).await?;
        let rows: Vec<_> = all
            .iter()
            .zip(&epochs)
            .map(|(u, e)| (*u, chat_id, None, *e))
            .collect();
        self.write_user_chats(
            Some((chat_id, ChatType::Group, title.as_deref(), now)),
            &rows,
        )
        .await?;
        Ok(new_chat(chat_id, ChatType::Group, title, now))
    }

    async fn chat(&self, chat_id: ChatId) -> Result<Option<Chat>> {
        Ok(self.chat_row(chat_id).await?.map(|(c, _)| c))
    }

    async fn members(&self, chat_id: ChatId) -> Result<Vec<Member>> {
        let (mut rows, _) = self.member_rows(chat_id, false).await?;
        rows.sort_by_key(|m| (m.joined_at, m.user_id));
        Ok(rows
            .into_iter()
            .map(|m| Member {
                user_id: m.user_id,
                role: m.role,
                joined_at: m.joined_at,
                name: None,
            })
            .collect())
    }

    async fn user_chats(&self, user_id: UserId) -> Result<Vec<UserChat>> {
        let rows = self.user_chat_rows(user_id).await?;
        let reads: Vec<_> = rows
            .into_iter()
            .map(|row| async move {
                let chat_id = row.chat_id as u64;
                let listed_epoch = row.epoch.unwrap_or(0);
                // The list row is only a pointer: the members row decides (a removal that
                // failed half-way can leave a stale pointer behind).
                let (chat_row, member, mark) = futures::join!(
                    self.chat_row(chat_id),
                    self.exec(
                        "reading a member",
                        &self.st.member_epoch,
                        (row.chat_id, id(user_id)),
                    ),
                    self.read_seq(chat_id, user_id, listed_epoch)
                );
                let Some((chat, updated_at)) = chat_row? else {
                    return Ok(None);
                };
                let Some((Some(epoch),)) = rows_of::<(Option<i64>,)>("reading a member", member?)?
                    .into_iter()
                    .next()
                else {
                    return Ok(None);
                };
                let read_seq = if epoch == listed_epoch {
                    mark?
                } else {
                    self.read_seq(chat_id, user_id, epoch).await?
                };
                let unread = if chat.last_seq > read_seq {
                    self.count_unread(chat_id, user_id, read_seq, chat.last_seq)
                        .await?
                } else {
                    0
                };
                Ok::<_, Error>(Some((
                    UserChat {
                        chat,
                        read_seq,
                        unread,
                    },
                    updated_at,
                )))
            })
            .collect();
        let found: Vec<Option<(UserChat, i64)>> = stream::iter(reads)
            .buffer_unordered(FAN_OUT)
            .try_collect()
            .await?;
        let mut chats: Vec<(UserChat, i64)> = found.into_iter().flatten().collect();
        chats.sort_by(|(a, au), (b, bu)| bu.cmp(au).then(a.chat.chat_id.cmp(&b.chat.chat_id)));
        Ok(chats.into_iter().map(|(c, _)| c).collect())
    }

    async fn add_members(
        &self,
        chat_id: ChatId,
        user_ids: Vec<UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>> {
        // A change whose outcome is unknown (timed out under contention): (user, epoch).
        let mut unsure: Option<Vec<(UserId, i64)>> = None;
        for _ in 0..CAS_ATTEMPTS {
            let (rows, version) = self.member_rows(chat_id, true).await?;
            let Some(version) = version else {
                return Err(Error::not_found("no such chat"));
            };
            if let Some(tried) = unsure.take()
                && tried
                    .iter()
                    .all(|(u, e)| rows.iter().any(|m| m.user_id == *u && m.epoch == *e))
            {
                // It did land.
                self.finish_add(chat_id, &tried, &user_ids, &rows).await?;
                return Ok(tried.into_iter().map(|(u, _)| u).collect());
            }
            let existing: HashSet<UserId> = rows.iter().map(|m| m.user_id).collect();
            let mut added: Vec<(UserId, i64)> = Vec::new();
            for u in &user_ids {
                if !existing.contains(u) && !added.iter().any(|(a, _)| a == u) {
                    added.push((*u, random_epoch()));
                }
            }
            if existing.len() + added.len() > limit {
                return Err(Error::GroupFull { limit });
            }
            if added.is_empty() {
                // Nothing to add; still repair the chat lists of the users asked for.
                self.finish_add(chat_id, &[], &user_ids, &rows).await?;
                return Ok(Vec::new());
            }
            let now = now_ms();
            let changes = added
                .iter()
                .map(|(u, e)| {
                    let v: Box<dyn SerializeRow + Send + Sync> = Box::new((
                        id(chat_id),
                        id(*u),
                        Role::Member.as_str(),
                        CqlTimestamp(now),
                        *e,
                    ));
                    (self.st.member_insert.clone(), v)
                })
                .collect();
            match self.members_cas(chat_id, version, changes).await? {
                Cas::Applied => {
                    self.finish_add(chat_id, &added, &user_ids, &rows).await?;
                    return Ok(added.into_iter().map(|(u, _)| u).collect());
                }
                Cas::Conflict => {}
                Cas::Unknown => unsure = Some(added),
            }
        }
        Err(Error::Unavailable(
            "the member list kept changing concurrently; retry".into(),
        ))
    }

    async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<bool> {
        // The epoch of a removal whose outcome is unknown (timed out under contention).
        let mut unsure: Option<i64> = None;
        for _ in 0..CAS_ATTEMPTS {
            let (rows, version) = self.member_rows(chat_id, true).await?;
            let Some(leaving) = rows.iter().find(|m| m.user_id == user_id).cloned() else {
                if let Some(epoch) = unsure {
                    // It did land.
                    let remaining: Vec<&MemberRow> = rows.iter().collect();
                    self.finish_remove(chat_id, user_id, epoch, &remaining)
                        .await?;
                    return Ok(true);
                }
                return Ok(false);
            };
            let version = version.unwrap_or(0);
            let remaining: Vec<&MemberRow> = rows.iter().filter(|m| m.user_id != user_id).collect();
            let promote = if remaining.iter().any(|m| m.role == Role::Admin) {
                None
            } else {
                remaining
                    .iter()
                    .min_by_key(|m| (m.joined_at, m.user_id))
                    .map(|m| m.user_id)
            };
            let mut changes: Vec<(PreparedStatement, Box<dyn SerializeRow + Send + Sync>)> =
                vec![(
                    self.st.member_delete.clone(),
                    Box::new((id(chat_id), id(user_id))),
                )];
            if let Some(p) = promote {
                changes.push((
                    self.st.member_promote.clone(),
                    Box::new((id(chat_id), id(p))),
                ));
            }
            match self.members_cas(chat_id, version, changes).await? {
                Cas::Applied => {
                    self.finish_remove(chat_id, user_id, leaving.epoch, &remaining)
                        .await?;
                    return Ok(true);
                }
                Cas::Conflict => {}
                Cas::Unknown => unsure = Some(leaving.epoch),
            }
        }
        Err(Error::Unavailable(
            "the member list kept changing concurrently; retry".into(),
        ))
    }

    async fn append_batch(&self, batch: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let n = batch.len();
        let mut groups: Vec<(ChatId, Vec<(usize, NewMessage)>)> = Vec::new();
        let mut index: HashMap<ChatId, usize> = HashMap::new();
        for (i, m) in batch.into_iter().enumerate() {
            let g = *index.entry(m.chat_id).or_insert_with(|| {
                groups.push((m.chat_id, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push((i, m));
        }
        let chats: Vec<_> = groups
            .into_iter()
            .map(|(chat_id, msgs)| self.append_chat(chat_id, msgs))
            .collect();
        let done: Vec<Vec<(usize, Result<Appended>)>> = stream::iter(chats)
            .buffer_unordered(CHATS_AT_ONCE)
            .collect()
            .await;
        let mut out: Vec<Option<Result<Appended>>> = (0..n).map(|_| None).collect();
        for (i, r) in done.into_iter().flatten() {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every message has a result"))
            .collect()
    }

    async fn messages(&self, chat_id: ChatId, page: Page) -> Result<MessagePage> {
        let limit = page.limit.max(1);
        let Some((chat, _)) = self.chat_row(chat_id).await? else {
            return Ok(MessagePage {
                messages: Vec::new(),
                has_more: false,
            });
        };
        // Only what `chats.last_seq` covers is visible: a batch still being written is not.
        let upper = match page.before_seq {
            Some(b) => b.saturating_sub(1).min(chat.last_seq),
            None => chat.last_seq,
        };
        let mut messages = match page.after_seq {
            Some(after) => self.range_asc(chat_id, after, upper, limit + 1).await?,
            None => {
                let mut m = self.range_desc(chat_id, upper, limit + 1).await?;
                m.truncate(limit + 1);
                m.reverse();
                m
            }
        };
        let has_more = messages.len() > limit;
        if has_more {
            if page.after_seq.is_some() {
                messages.truncate(limit);
            } else {
                messages.remove(0);
            }
        }
        Ok(MessagePage { messages, has_more })
    }

    async fn marks(&self, chat_id: ChatId) -> Result<Vec<Marks>> {
        let (members, marks) = futures::join!(
            self.member_rows(chat_id, false),
            self.exec("reading receipt marks", &self.st.marks_get, (id(chat_id),))
        );
        let (members, _) = members?;
        let mut stored: HashMap<(u64, i64), (u64, u64)> = HashMap::new();
        for (user, epoch, d, r) in
            rows_of::<(i64, i64, Option<i64>, Option<i64>)>("reading receipt marks", marks?)?
        {
            let (d, r) = (d.unwrap_or(0) as u64, r.unwrap_or(0) as u64);
            stored.insert((user as u64, epoch), (d.max(r), r));
        }
        let mut out: Vec<Marks> = members
            .iter()
            .map(|m| {
                let (delivered_seq, read_seq) =
                    stored.get(&(m.user_id, m.epoch)).copied().unwrap_or((0, 0));
                Marks {
                    user_id: m.user_id,
                    delivered_seq,
                    read_seq,
                }
            })
            .collect();
        out.sort_by_key(|m| m.user_id);
        Ok(out)
    }

    async fn save_marks(&self, updates: Vec<(ChatId, Marks)>) -> Result<()> {
        let writes: Vec<_> = updates
            .into_iter()
            .map(|(chat_id, m)| async move {
                let r = self
                    .exec(
                        "reading a member",
                        &self.st.member_epoch,
                        (id(chat_id), id(m.user_id)),
                    )
                    .await?;
                let Some((Some(epoch),)) = rows_of::<(Option<i64>,)>("reading a member", r)?
                    .into_iter()
                    .next()
                else {
                    return Ok(()); // not a member: nothing to mark (as in the embedded store)
                };
                let delivered = m.delivered_seq.max(m.read_seq) as i64;
                let read = m.read_seq as i64;
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_consistency(self.st.consistency);
                batch.set_is_idempotent(true);
                let mut values: Vec<(i64, i64, i64, i64, i64)> = Vec::new();
                // Each cell's write timestamp is its value: the larger mark always wins.
                if delivered > 0 {
                    batch.append_statement(self.st.mark_delivered.clone());
                    values.push((delivered, delivered, id(chat_id), id(m.user_id), epoch));
                }
                if read > 0 {
                    batch.append_statement(self.st.mark_read.clone());
                    values.push((read, read, id(chat_id), id(m.user_id), epoch));
                }
                if !values.is_empty() {
                    self.session
                        .batch(&batch, values)
                        .await
                        .map_err(|e| exec_error("writing receipt marks", e))?;
                }
                Ok::<_, Error>(())
            })
            .collect();
        stream::iter(writes)
            .buffer_unordered(FAN_OUT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn direct_partners(&self, user_id: UserId) -> Result<Vec<UserId>> {
        Ok(self
            .user_chat_rows(user_id)
            .await?
            .into_iter()
            .filter_map(|r| r.peer.map(|p| p as u64))
            .collect())
    }

    async fn set_title(&self, chat_id: ChatId, title: Option<String>) -> Result<()> {
        self.chat_title_set(chat_id, title).await
    }

    async fn set_user_name(&self, user_id: UserId, name: &str) -> Result<()> {
        self.user_name_put(user_id, name).await
    }

    async fn user_names(&self, user_ids: &[UserId]) -> Result<HashMap<UserId, String>> {
        self.user_names_get(user_ids).await
    }

    async fn put_media(&self, m: crate::media::record::MediaRecord) -> Result<()> {
        self.media_put(m).await
    }

    async fn media(&self, media_id: &str) -> Result<Option<crate::media::record::MediaRecord>> {
        self.media_get(media_id).await
    }

    async fn link_media(
        &self,
        m: &crate::media::record::MediaRecord,
        chat_id: ChatId,
    ) -> Result<()> {
        self.media_link(m, chat_id).await
    }

    async fn media_chats(&self, media_id: &str) -> Result<Vec<ChatId>> {
        self.media_chat_ids(media_id).await
    }

    async fn unsent_media(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::media::record::MediaRecord>> {
        self.media_unsent(before_ms, limit).await
    }

    async fn delete_media(&self, m: &crate::media::record::MediaRecord) -> Result<()> {
        self.media_delete(m).await
    }

    async fn set_media_renditions(
        &self,
        media_id: &str,
        r: &crate::media::record::Renditions,
    ) -> Result<()> {
        self.media_renditions_put(media_id, r).await
    }
}

// ---- statements ----------------------------------------------------------------------------

/// Every statement the store runs, prepared once per store.
struct Statements {
    consistency: Consistency,
    serial: SerialConsistency,
    chat_get: PreparedStatement,
    chat_insert: PreparedStatement,
    chat_advance: PreparedStatement,
    direct_get: PreparedStatement,
    direct_claim: PreparedStatement,
    members_get: PreparedStatement,
    members_get_serial: PreparedStatement,
    member_epoch: PreparedStatement,
    members_create: PreparedStatement,
    members_bump: PreparedStatement,
    members_drop: PreparedStatement,
    member_insert: PreparedStatement,
    member_delete: PreparedStatement,
    member_promote: PreparedStatement,
    user_chats_get: PreparedStatement,
    user_chat_insert: PreparedStatement,
    user_chat_delete: PreparedStatement,
    user_chat_clear_peer: PreparedStatement,
    user_chat_touch: PreparedStatement,
    marks_get: PreparedStatement,
    mark_get: PreparedStatement,
    mark_delivered: PreparedStatement,
    mark_read: PreparedStatement,
    marks_delete: PreparedStatement,
    msg_insert: PreparedStatement,
    msg_get: PreparedStatement,
    msgs_asc: PreparedStatement,
    msgs_desc: PreparedStatement,
    msgs_drop_after: PreparedStatement,
    senders: PreparedStatement,
    idem_get: PreparedStatement,
    idem_put: PreparedStatement,
}

/// How a statement is run: plain (idempotent, safe to retry), a lightweight transaction, or a
/// linearizable (SERIAL) read.
#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Lwt,
    SerialRead,
}

/// The idempotency key a stored message is found by (see [`NewMessage::dedupe_key`]).
fn idempotency_key(m: &Message) -> String {
    match &m.client_msg_id {
        Some(c) => c.clone(),
        None => crate::model::mid_key(&m.message_id),
    }
}

impl Statements {
    async fn prepare(session: &Session, ks: &str, o: &ScyllaOptions) -> Result<Self> {
        let serial_read = match o.serial_consistency {
            SerialConsistency::LocalSerial => Consistency::LocalSerial,
            _ => Consistency::Serial,
        };
        let prep = |cql: String, kind: Kind| async move {
            let cql = cql.replace("{ks}", ks);
            let mut p = session
                .prepare(cql.as_str())
                .await
                .map_err(|e| Error::internal(format!("cql preparing `{cql}`: {e}")))?;
            match kind {
                Kind::Plain => {
                    p.set_consistency(o.consistency);
                    p.set_is_idempotent(true);
                }
                Kind::Lwt => {
                    p.set_consistency(o.consistency);
                    p.set_serial_consistency(Some(o.serial_consistency));
                }
                Kind::SerialRead => {
                    p.set_consistency(serial_read);
                    p.set_is_idempotent(true);
                }
            }
            Ok::<_, Error>(p)
        };
        use Kind::*;
        const MSG_COLS: &str =
            "seq, message_id, sender_id, content, media_url, media, client_msg_id, created_at";
        const MEMBER_COLS: &str = "user_id, role, joined_at, epoch, version";
        Ok(Statements {
            consistency: o.consistency,
            serial: o.serial_consistency,
            chat_get: prep(
                "SELECT kind, title, created_at, last_seq, updated_at FROM {ks}.chats \
                 WHERE chat_id = ?"
                    .into(),
                Plain,
            )
            .await?,
            chat_insert: prep(
                "INSERT INTO {ks}.chats (chat_id, kind, title, created_at) VALUES (?, ?, ?, ?)"
                    .into(),
                Plain,
            )
            .await?,
            chat_advance: prep(
                "UPDATE {ks}.chats USING TIMESTAMP ? SET last_seq = ?, updated_at = ? \
                 WHERE chat_id = ?"
                    .into(),
                Plain,
            )
            .await?,
            direct_get: prep(
                "SELECT chat_id, created_at FROM {ks}.direct_chats WHERE pair = ?".into(),
                Plain,
            )
            .await?,
            direct_claim: prep(
                "INSERT INTO {ks}.direct_chats (pair, chat_id, created_at) VALUES (?, ?, ?) \
                 IF NOT EXISTS"
                    .into(),
                Lwt,
            )
            .await?,
            members_get: prep(
                format!("SELECT {MEMBER_COLS} FROM {{ks}}.members WHERE chat_id = ?"),
                Plain,
            )
            .await?,
            members_get_serial: prep(
                format!("SELECT {MEMBER_COLS} FROM {{ks}}.members WHERE chat_id = ?"),
                SerialRead,
            )
            .await?,
            member_epoch: prep(
                "SELECT epoch FROM {ks}.members WHERE chat_id = ? AND user_id = ?".into(),
                Plain,
            )
            .await?,
            members_create: prep(
                "INSERT INTO {ks}.members (chat_id, version) VALUES (?, 1) IF NOT EXISTS".into(),
                Lwt,
            )
            .await?,
            members_bump: prep(
                "UPDATE {ks}.members SET version = ? WHERE chat_id = ? IF version = ?".into(),
                Lwt,
            )
            .await?,
            members_drop: prep("DELETE FROM {ks}.members WHERE chat_id = ?".into(), Plain).await?,
            member_insert: prep(
                "INSERT INTO {ks}.members (chat_id, user_id, role, joined_at, epoch) \
                 VALUES (?, ?, ?, ?, ?)"
                    .into(),
                Lwt,
            )
            .await?,
            member_delete: prep(
                "DELETE FROM {ks}.members WHERE chat_id = ? AND user_id = ?".into(),
                Lwt,
            )
            .await?,
            member_promote: prep(
                "UPDATE {ks}.members SET role = 'admin' WHERE chat_id = ? AND user_id = ?".into(),
                Lwt,
            )
            .await?,
            user_chats_get: prep(
                "SELECT chat_id, peer, epoch FROM {ks}.user_chats WHERE user_id = ?".into(),
                Plain,
            )
            .await?,
            user_chat_insert: prep(
                "INSERT INTO {ks}.user_chats (user_id, chat_id, peer, epoch) VALUES (?, ?, ?, ?)"
                    .into(),
                Plain,
            )
            .await?,
            user_chat_delete: prep(
                "DELETE FROM {ks}.user_chats WHERE user_id = ? AND chat_id = ?".into(),
                Plain,
            )
            .await?,
            user_chat_clear_peer: prep(
                "UPDATE {ks}.user_chats SET peer = null WHERE user_id = ? AND chat_id = ?".into(),
                Plain,
            )
            .await?,
            user_chat_touch: prep(
                "UPDATE {ks}.user_chats SET epoch = ? WHERE user_id = ? AND chat_id = ?".into(),
                Plain,
            )
            .await?,
            marks_get: prep(
                "SELECT user_id, epoch, delivered_seq, read_seq FROM {ks}.receipt_marks \
                 WHERE chat_id = ?"
                    .into(),
                Plain,
            )
            .await?,
            mark_get: prep(
                "SELECT read_seq FROM {ks}.receipt_marks \
                 WHERE chat_id = ? AND user_id = ? AND epoch = ?"
                    .into(),
                Plain,
            )
            .await?,
            mark_delivered: prep(
                "UPDATE {ks}.receipt_marks USING TIMESTAMP ? SET delivered_seq = ? \
                 WHERE chat_id = ? AND user_id = ? AND epoch = ?"
                    .into(),
                Plain,
            )
            .await?,
            mark_read: prep(
                "UPDATE {ks}.receipt_marks USING TIMESTAMP ? SET read_seq = ? \
                 WHERE chat_id = ? AND user_id = ? AND epoch = ?"
                    .into(),
                Plain,
            )
            .await?,
            marks_delete: prep(
                "DELETE FROM {ks}.receipt_marks WHERE chat_id = ? AND user_id = ? AND epoch = ?"
                    .into(),
                Plain,
            )
            .await?,
            msg_insert: prep(
                "INSERT INTO {ks}.messages (chat_id, bucket, seq, message_id, sender_id, content, \
                 media_url, media, client_msg_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    .into(),
                Plain,
            )
            .await?,
            msg_get: prep(
                format!(
                    "SELECT {MSG_COLS} FROM {{ks}}.messages \
                     WHERE chat_id = ? AND bucket = ? AND seq = ?"
                ),
                Plain,
            )
            .await?,
            msgs_asc: prep(
                format!(
                    "SELECT {MSG_COLS} FROM {{ks}}.messages WHERE chat_id = ? AND bucket = ? \
                     AND seq > ? AND seq <= ? ORDER BY seq ASC LIMIT ?"
                ),
                Plain,
            )
            .await?,
            msgs_desc: prep(
                format!(
                    "SELECT {MSG_COLS} FROM {{ks}}.messages WHERE chat_id = ? AND bucket = ? \
                     AND seq <= ? ORDER BY seq DESC LIMIT ?"
                ),
                Plain,
            )
            .await?,
            msgs_drop_after: prep(
                "DELETE FROM {ks}.messages WHERE chat_id = ? AND bucket = ? AND seq > ?".into(),
                Plain,
            )
            .await?,
            senders: prep(
                "SELECT sender_id FROM {ks}.messages WHERE chat_id = ? AND bucket = ? \
                 AND seq > ? AND seq <= ?"
                    .into(),
                Plain,
            )
            .await?,
            idem_get: prep(
                "SELECT client_msg_id, seq, message_id FROM {ks}.idempotency \
                 WHERE chat_id = ? AND sender_id = ? AND client_msg_id IN ?"
                    .into(),
                Plain,
            )
            .await?,
            idem_put: prep(
                "INSERT INTO {ks}.idempotency (chat_id, sender_id, client_msg_id, seq, message_id) \
                 VALUES (?, ?, ?, ?, ?)"
                    .into(),
                Plain,
            )
            .await?,
        })
    }
}

// ---- rows ----------------------------------------------------------------------------------

#[derive(DeserializeRow)]
struct ChatRow {
    kind: Option<String>,
    title: Option<String>,
    created_at: Option<CqlTimestamp>,
    last_seq: Option<i64>,
    updated_at: Option<CqlTimestamp>,
}

impl ChatRow {
    /// The chat and its `updated_at` (creation time until the first message).
    fn into_chat(self, chat_id: ChatId) -> (Chat, i64) {
        let created_at = self.created_at.map_or(0, |t| t.0);
        let kind = self
            .kind
            .as_deref()
            .and_then(ChatType::parse)
            .unwrap_or(ChatType::Group);
        let mut chat = new_chat(chat_id, kind, self.title, created_at);
        chat.last_seq = self.last_seq.unwrap_or(0).max(0) as u64;
        (chat, self.updated_at.map_or(created_at, |t| t.0))
    }
}

#[derive(DeserializeRow)]
struct MemberRowRaw {
    user_id: Option<i64>,
    role: Option<String>,
    joined_at: Option<CqlTimestamp>,
    epoch: Option<i64>,
    version: Option<i64>,
}

#[derive(Debug, Clone)]
struct MemberRow {
    user_id: UserId,
    role: Role,
    joined_at: i64,
    epoch: i64,
}

impl MemberRowRaw {
    /// `None` for the static-only row of a partition without members.
    fn into_member(self) -> Option<MemberRow> {
        Some(MemberRow {
            user_id: self.user_id? as u64,
            role: Role::parse(self.role.as_deref().unwrap_or("member")),
            joined_at: self.joined_at.map_or(0, |t| t.0),
            epoch: self.epoch.unwrap_or(0),
        })
    }
}

#[derive(DeserializeRow)]
struct UserChatRow {
    chat_id: i64,
    peer: Option<i64>,
    epoch: Option<i64>,
}

#[derive(DeserializeRow)]
struct MessageRow {
    seq: i64,
    message_id: Option<String>,
    sender_id: Option<i64>,
    content: Option<String>,
    media_url: Option<String>,
    media: Option<String>,
    client_msg_id: Option<String>,
    created_at: Option<CqlTimestamp>,
}

impl MessageRow {
    fn into_message(self, chat_id: ChatId) -> Message {
        Message {
            message_id: self.message_id.unwrap_or_default(),
            chat_id,
            seq: self.seq as u64,
            sender_id: self.sender_id.unwrap_or(0) as u64,
            content: self.content.unwrap_or_default(),
            media_url: self.media_url,
            media: self.media.and_then(|s| serde_json::from_str(&s).ok()),
            client_msg_id: self.client_msg_id,
            created_at: self.created_at.map_or(0, |t| t.0),
        }
    }
}

fn new_chat(chat_id: ChatId, kind: ChatType, title: Option<String>, created_at: i64) -> Chat {
    Chat {
        chat_id,
        kind,
        title,
        created_at,
        last_seq: 0,
        members: None,
        read_seq: None,
        unread: None,
    }
}

/// Ids are below 2^53 (JS-safe), so they fit a CQL `bigint` unchanged.
fn id(v: u64) -> i64 {
    v as i64
}

fn random_chat_id() -> ChatId {
    loop {
        let id: u64 = rand::random::<u64>() & ((1 << 53) - 1);
        if id >= 1000 {
            return id;
        }
    }
}

fn random_epoch() -> i64 {
    loop {
        let e: i64 = rand::random();
        if e != 0 {
            return e;
        }
    }
}

// ---- the last-seq cache ------------------------------------------------------------------

/// Per-chat sequencing slots: the cached last `seq` behind an async lock, so appends to one
/// chat never interleave in this process even if callers send them concurrently. Slots stay
/// unique per chat while in use; forgetting everything bumps a generation instead of dropping
/// slots, so an append in flight during [`ScyllaStore::forget_sequences`] still excludes the
/// next one.
struct SeqCache {
    slots: parking_lot::Mutex<HashMap<ChatId, Arc<tokio::sync::Mutex<SeqSlot>>>>,
    cap: usize,
    generation: AtomicU64,
}

#[derive(Default)]
struct SeqSlot {
    last: Option<Seq>,
    generation: u64,
}

impl SeqSlot {
    /// The cached last `seq`, if it was stored in the current generation.
    fn get(&self, generation: u64) -> Option<Seq> {
        self.last.filter(|_| self.generation == generation)
    }

    fn set(&mut self, last: Seq, generation: u64) {
        self.last = Some(last);
        self.generation = generation;
    }
}

impl SeqCache {
    fn new(cap: usize) -> Self {
        SeqCache {
            slots: parking_lot::Mutex::new(HashMap::new()),
            cap: cap.max(16),
            generation: AtomicU64::new(0),
        }
    }

    fn slot(&self, chat_id: ChatId) -> Arc<tokio::sync::Mutex<SeqSlot>> {
        let mut slots = self.slots.lock();
        if slots.len() >= self.cap && !slots.contains_key(&chat_id) {
            // Keep only slots in use; the rest are re-read on next use.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots.entry(chat_id).or_default().clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Invalidate every cached `seq` (read again on next use).
    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

// ---- results and errors ----------------------------------------------------------------

fn rows_of<T>(what: &str, r: QueryResult) -> Result<Vec<T>>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let rows = r
        .into_rows_result()
        .map_err(|e| Error::internal(format!("cql {what}: {e}")))?;
    let out = rows
        .rows::<T>()
        .map_err(|e| Error::internal(format!("cql {what}: {e}")))?
        .collect::<std::result::Result<Vec<T>, _>>()
        .map_err(|e| Error::internal(format!("cql {what}: {e}")))?;
    Ok(out)
}

/// Whether a lightweight transaction (or conditional batch) applied, and the current values
/// the server sent back when it did not.
fn lwt_applied(what: &str, r: QueryResult) -> Result<(bool, HashMap<String, CqlValue>)> {
    let rows = r
        .into_rows_result()
        .map_err(|e| Error::internal(format!("cql {what}: not an LWT result: {e}")))?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let Some(row) = rows
        .maybe_first_row::<Row>()
        .map_err(|e| Error::internal(format!("cql {what}: {e}")))?
    else {
        return Err(Error::internal(format!("cql {what}: empty LWT result")));
    };
    let mut applied = false;
    let mut current = HashMap::new();
    for (name, value) in names.into_iter().zip(row.columns) {
        if name == "[applied]" {
            applied = matches!(value, Some(CqlValue::Boolean(true)));
        } else if let Some(v) = value {
            current.insert(name, v);
        }
    }
    Ok((applied, current))
}

fn is_cas_timeout(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::WriteTimeout { .. } | DbError::Unavailable { .. },
            _
        ))
    ) || matches!(e, ExecutionError::RequestTimeout(_))
}

/// Whether a failure means "the cluster cannot answer now" (retry later) rather than a bug.
fn is_unavailable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::LastAttemptError(a) => attempt_unavailable(a),
        ExecutionError::RequestTimeout(_)
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan => true,
        _ => false,
    }
}

fn attempt_unavailable(a: &RequestAttemptError) -> bool {
    match a {
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::ReadFailure { .. }
                | DbError::WriteFailure { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. }
        ),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        _ => false,
    }
}

fn exec_error(what: &str, e: ExecutionError) -> Error {
    if is_unavailable(&e) {
        Error::Unavailable(format!("the message store is unavailable ({what}): {e}"))
    } else {
        Error::internal(format!("cql {what}: {e}"))
    }
}

fn pager_error(what: &str, e: scylla::errors::PagerExecutionError) -> Error {
    use scylla::errors::{NextPageError, PagerExecutionError, RequestError};
    match &e {
        PagerExecutionError::NextPageError(NextPageError::RequestFailure(r)) => match r {
            RequestError::LastAttemptError(a) if attempt_unavailable(a) => {
                Error::Unavailable(format!("the message store is unavailable ({what}): {e}"))
            }
            RequestError::RequestTimeout(_)
            | RequestError::ConnectionPoolError(_)
            | RequestError::EmptyPlan => {
                Error::Unavailable(format!("the message store is unavailable ({what}): {e}"))
            }
            _ => Error::internal(format!("cql {what}: {e}")),
        },
        _ => Error::internal(format!("cql {what}: {e}")),
    }
}

fn next_row_error(what: &str, e: scylla::errors::NextRowError) -> Error {
    use scylla::errors::{NextPageError, NextRowError, RequestError};
    match &e {
        NextRowError::NextPageError(NextPageError::RequestFailure(
            RequestError::RequestTimeout(_)
            | RequestError::ConnectionPoolError(_)
            | RequestError::EmptyPlan,
        )) => Error::Unavailable(format!("the message store is unavailable ({what}): {e}")),
        NextRowError::NextPageError(NextPageError::RequestFailure(
            RequestError::LastAttemptError(a),
        )) if attempt_unavailable(a) => {
            Error::Unavailable(format!("the message store is unavailable ({what}): {e}"))
        }
        _ => Error::internal(format!("cql {what}: {e}")),
    }
}

/// The same failure again, for every message of a group that failed together.
fn same_error(e: &Error) -> Error {
    match e {
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::Internal(m) => Error::Internal(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_names_parse() {
        assert_eq!(parse_consistency("quorum").unwrap(), Consistency::Quorum);
        assert_eq!(
            parse_consistency("LOCAL_QUORUM").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(
            parse_consistency("local-one").unwrap(),
            Consistency::LocalOne
        );
        assert!(parse_consistency("serial").is_err());
    }

    #[test]
    fn seq_slots_are_shared_per_chat_and_evicted_when_idle() {
        let cache = SeqCache::new(16);
        let a = cache.slot(1);
        let a2 = cache.slot(1);
        assert!(Arc::ptr_eq(&a, &a2));
        drop(a2);
        for chat in 2..40 {
            drop(cache.slot(chat));
        }
        // Slot 1 is held, so it survived every eviction; idle ones were dropped.
        assert!(Arc::ptr_eq(&a, &cache.slot(1)));
        assert!(cache.slots.lock().len() <= 17);
    }

    #[test]
    fn forgetting_sequences_keeps_slots_but_invalidates_them() {
        let cache = SeqCache::new(16);
        let slot = cache.slot(7);
        let g = cache.generation();
        slot.try_lock().unwrap().set(41, g);
        assert_eq!(slot.try_lock().unwrap().get(cache.generation()), Some(41));
        cache.clear();
        // Same slot (still the one lock for chat 7), but the value must be read again.
        assert!(Arc::ptr_eq(&slot, &cache.slot(7)));
        assert_eq!(slot.try_lock().unwrap().get(cache.generation()), None);
    }

    #[test]
    fn random_ids_are_js_safe() {
        for _ in 0..1000 {
            let id = random_chat_id();
            assert!((1000..1 << 53).contains(&id));
        }
    }
}
