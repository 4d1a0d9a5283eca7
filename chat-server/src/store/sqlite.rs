//! Embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that drains its queue into one transaction per
//! round (group commit): `synchronous=FULL` makes each COMMIT fsync the WAL, so an answer from
//! the writer means the data is on disk, and many concurrent writers share one fsync. Each
//! operation runs inside its own SAVEPOINT, so one failing operation does not undo the others.
//! Reads use a small pool of read-only connections on the blocking thread pool.
//!
//! A new message is appended to `message_log` (no index: a commit's messages share one leaf)
//! and held in memory in the tail until later commits move it into `messages` a chat at a
//! time; readers merge the tail (see `tail.rs` and docs/design-embedded-message-log.md).

mod media;
mod tail;
mod users;

pub use tail::TailPolicy;

use super::{Appended, MessagePage, Page, Store, UserChat};
use crate::error::{Error, Result};
use crate::model::{
    Chat, ChatId, ChatType, Marks, Member, Message, NewMessage, Role, Seq, SharedMessage, UserId,
    now_ms,
};
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tail::Tail;
use tokio::sync::{mpsc, oneshot};

/// 2: `chats.last_seq` / `chats.updated_at` are no longer written per message (they are read
/// from `messages`); a version-1 binary would trust the stale `last_seq`, so it must refuse.
/// 3: acked messages may sit in `message_log` until they are moved into `messages` (see
/// `tail`); a version-2 binary would not see them, so it must refuse.
const SCHEMA_VERSION: i64 = 3;
/// A chat's last seq and last activity, computed from its messages (primary-key lookups).
/// `chats.last_seq` stays in the table for old files but is not maintained any more.
const LAST_SEQ: &str =
    "COALESCE((SELECT MAX(x.seq) FROM messages x WHERE x.chat_id = c.chat_id), 0)";
const LAST_ACTIVITY: &str = "COALESCE((SELECT x.created_at FROM messages x WHERE x.chat_id = c.chat_id \
     ORDER BY x.seq DESC LIMIT 1), c.updated_at)";
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chats (
    chat_id    INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL,
    title      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    direct_key TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS members (
    chat_id       INTEGER NOT NULL,
    user_id       INTEGER NOT NULL,
    role          TEXT    NOT NULL,
    joined_at     INTEGER NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, chat_id);
CREATE TABLE IF NOT EXISTS messages (
    chat_id       INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    message_id    TEXT    NOT NULL,
    sender_id     INTEGER NOT NULL,
    content       TEXT    NOT NULL,
    media_url     TEXT,
    media         TEXT,
    client_msg_id TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (chat_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
    ON messages (chat_id, sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS message_log (
    id            INTEGER PRIMARY KEY,
    chat_id       INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    message_id    TEXT    NOT NULL,
    sender_id     INTEGER NOT NULL,
    content       TEXT    NOT NULL,
    media_url     TEXT,
    media         TEXT,
    client_msg_id TEXT,
    created_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
";

type Reply<T> = oneshot::Sender<Result<T>>;

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How often the writer lets the WAL restart from its beginning (see `Writer::let_wal_restart`).
const WAL_RESET_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

enum WriteOp {
    CreateDirect(UserId, UserId, Reply<(Chat, bool)>),
    CreateGroup(UserId, Option<String>, Vec<UserId>, usize, Reply<Chat>),
    AddMembers(ChatId, Vec<UserId>, usize, Reply<Vec<UserId>>),
    RemoveMember(ChatId, UserId, Reply<bool>),
    Append(Vec<NewMessage>, oneshot::Sender<Vec<Result<Appended>>>),
    SaveMarks(Vec<(ChatId, Marks)>, Reply<()>),
    /// Move due tail messages into `messages` (sent by the checkpointer's timer).
    MoveTail,
    /// Stop at once, leaving the tail in `message_log` and the WAL as they are — what the
    /// files look like after kill -9 (`SqliteStore::halt_as_if_killed`, for tests).
    Halt,
    /// A media metadata write (`media.rs`), in its own savepoint like the others.
    Media(media::Write, Reply<()>),
    Shutdown,
}

pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Acked messages not yet moved from `message_log` into `messages` (see `tail`).
    tail: Arc<RwLock<Tail>>,
    path: PathBuf,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<
        Option<(
            Arc<std::sync::atomic::AtomicBool>,
            std::thread::JoinHandle<()>,
        )>,
    >,
}

/// Copy the WAL back into the database every `every` without blocking the writer (PASSIVE),
/// so commits never pay for a checkpoint and the WAL stays small.
/// After each checkpoint that copied frames it sets `copied`, so the writer follows it with
/// its own small one (see `Writer::let_wal_restart`).
fn checkpointer(
    path: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
    copied: Arc<std::sync::atomic::AtomicBool>,
    every: std::time::Duration,
    tick: impl Fn(),
) {
    let conn = match open(&path, false) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(cause = %e, "checkpointer cannot open the database; WAL will grow");
            return;
        }
    };
    // SQLite syncs the database file only after a checkpoint that reached the end of the WAL,
    // which a PASSIVE checkpoint next to a busy writer almost never does: the pages it copied
    // stayed dirty until the writer's own (complete) checkpoint, which then spent ~7 ms in
    // fsync every 0.5 s with every commit waiting behind it (measured with `perf trace` at
    // 5,000 msg/s). Writing them back here, off the writer's thread and in steps
    // (`paced_sync`), leaves the writer's fsync less to do (6.7 → 4.3 ms median) and commits
    // never wait behind a large write-back: delivery p99 at 5,000 msg/s ~25 % lower
    // (docs/benchmarks.md, fourth pass). Any descriptor of the file flushes its pages.
    let db = match std::fs::File::open(&path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(cause = %e, "checkpointer cannot open the database file for fsync");
            None
        }
    };
    let mut backfilled = 0;
    let mut last_checkpoint = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::park_timeout(every);
        tick();
        if last_checkpoint.elapsed() < CHECKPOINT_EVERY {
            continue;
        }
        last_checkpoint = Instant::now();
        // (busy, frames in the WAL, frames backfilled into the database so far)
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(2)) {
            // Only a checkpoint that copied something new is written back and signalled (the
            // count is cumulative over the WAL's current generation).
            Ok(n) if n > 0 && n != backfilled => {
                if let Some(Err(e)) = db.as_ref().map(paced_sync) {
                    tracing::warn!(cause = %e, "fsync of the database after a checkpoint failed");
                }
                backfilled = n;
                copied.store(true, std::sync::atomic::Ordering::Release);
            }
            Ok(n) if n > 0 => {}
            Ok(_) => backfilled = 0,
            Err(e) => tracing::warn!(cause = %e, "wal checkpoint failed"),
        }
    }
}

/// Write the database file's dirty pages back in steps, each waited for, then `fdatasync`.
/// One `fdatasync` of a few MB the checkpoint copied kept the disk busy for ~7–9 ms, and every
/// commit's WAL fsync in that time queued behind it; in steps, a commit waits for one step at
/// most (PostgreSQL's `checkpoint_flush_after` does the same). At most 256 steps of at least
/// 256 KiB, so a large file costs a bounded number of calls; a step with nothing dirty is a
/// page-cache lookup.
fn paced_sync(db: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = db.metadata()?.len() as i64;
    let step = (len / 256).max(256 * 1024);
    let mut off = 0;
    while off < len {
        // SAFETY: a valid open descriptor and a plain byte range; no memory is passed.
        let r = unsafe {
            libc::sync_file_range(
                db.as_raw_fd(),
                off,
                step,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if r != 0 {
            break; // not supported here: the fdatasync below does it all at once
        }
        off += step;
    }
    db.sync_data()
}

/// Move what the last run left in `message_log` (acked, not yet moved: it stopped without
/// `close`, e.g. kill -9 or power loss) into `messages`, before anything is served.
fn recover_message_log(conn: &Connection) -> Result<()> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM message_log", [], |r| r.get(0))?;
    if n == 0 {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let moved = tx.execute(
        &format!(
            "INSERT OR IGNORE INTO messages ({MSG_COLS}) SELECT {MSG_COLS} FROM message_log \
             ORDER BY chat_id, seq"
        ),
        [],
    )?;
    tx.execute("DELETE FROM message_log", [])?;
    tx.commit()?;
    tracing::info!(
        logged = n,
        moved,
        "moved acked messages the last run left in message_log into messages"
    );
    Ok(())
}

fn open(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every COMMIT fsyncs the WAL. An ack is only sent after COMMIT returns.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoints run on their own thread (see `checkpointer`), not inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // Savepoint (statement) journals in memory: every append runs in a SAVEPOINT, and a
        // file-backed sub-journal cost a pwrite per first-touched page (seen in profiles).
        // Nothing durable lives there; the WAL is the journal.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Open (and create or migrate) `<dir>/tern.db` and start the writer thread.
    pub fn open(dir: &Path, commit_batch: usize) -> Result<Self> {
        Self::open_with(dir, commit_batch, TailPolicy::default())
    }

    /// [`SqliteStore::open`] with a chosen policy for moving acked messages from
    /// `message_log` into `messages` (tests use extreme ones).
    pub fn open_with(dir: &Path, commit_batch: usize, policy: TailPolicy) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("tern.db");
        let conn = open(&path, false)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(media::SCHEMA)?;
        conn.execute_batch(users::SCHEMA)?;
        let version: Option<i64> = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(Error::internal(format!(
                    "{} has schema version {v}, newer than this binary's {SCHEMA_VERSION}; \
                     run a newer chat-server",
                    path.display()
                )));
            }
            Some(v) if v < SCHEMA_VERSION => {
                conn.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])?;
            }
            Some(_) => {}
        }
        recover_message_log(&conn)?;
        let (tx, rx) = mpsc::channel(commit_batch.max(16) * 4);
        let batch = commit_batch.max(1);
        let copied = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tail = Arc::new(RwLock::new(Tail::default()));
        let handle = {
            let (copied, tail) = (copied.clone(), tail.clone());
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || {
                    Writer {
                        conn,
                        seqs: HashMap::new(),
                        copied,
                        tail,
                        policy,
                        pending: Vec::new(),
                        pending_keys: HashMap::new(),
                    }
                    .run(rx, batch)
                })
                .map_err(Error::internal)?
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ckpt = {
            let (path, stop) = (path.clone(), stop.clone());
            // The checkpointer's wake-ups also remind an idle writer of tail messages that
            // became due (a busy writer checks after every commit).
            let (writer, tail) = (tx.clone(), tail.clone());
            let tick = move || {
                if tail.read().len() > 0 {
                    let _ = writer.try_send(WriteOp::MoveTail);
                }
            };
            let every = policy.max_age.clamp(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_millis(500),
            );
            std::thread::Builder::new()
                .name("sqlite-checkpoint".into())
                .spawn(move || checkpointer(path, stop, copied, every, tick))
                .map_err(Error::internal)?
        };
        Ok(SqliteStore {
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            tail,
            path,
            writer_thread: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some((stop, ckpt))),
        })
    }

    /// Stop the writer after it has committed everything queued before this call, and wait
    /// for its thread to exit. Later writes fail with `unavailable`.
    pub async fn close(&self) {
        self.stop(WriteOp::Shutdown).await;
    }

    /// Stop the writer and the checkpointer without the clean-shutdown work (no move of the
    /// tail, no final checkpoint): the files are left as a kill -9 leaves them (every commit
    /// is in the page cache). For crash-recovery tests.
    #[doc(hidden)]
    pub async fn halt_as_if_killed(self) {
        self.stop(WriteOp::Halt).await;
    }

    /// Queue `last` (`Shutdown` or `Halt`) for the writer, stop the checkpointer, and wait for
    /// both threads to exit.
    async fn stop(&self, last: WriteOp) {
        let _ = self.writer.send(last).await;
        let checkpointer = self.checkpointer.lock().take();
        if let Some((stop, h)) = checkpointer {
            stop.store(true, std::sync::atomic::Ordering::Release);
            h.thread().unpark();
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        let handle = self.writer_thread.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    async fn write<T: Send + 'static>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(op(tx))
            .await
            .map_err(|_| Error::Unavailable("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::internal("the store writer stopped"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match readers.lock().pop() {
                Some(c) => c,
                None => open(&path, true)?,
            };
            let out = f(&conn);
            let mut pool = readers.lock();
            if pool.len() < 16 {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(Error::internal)?
    }
}

/// A finished operation waiting for the COMMIT before its answer is sent.
enum Done {
    Direct(Reply<(Chat, bool)>, Result<(Chat, bool)>),
    Group(Reply<Chat>, Result<Chat>),
    Added(Reply<Vec<UserId>>, Result<Vec<UserId>>),
    Removed(Reply<bool>, Result<bool>),
    Appended(
        oneshot::Sender<Vec<Result<Appended>>>,
        Vec<Result<Appended>>,
    ),
    Marks(Reply<()>, Result<()>),
    Media(Reply<()>, Result<()>),
}

impl Done {
    fn send(self) {
        match self {
            Done::Direct(tx, r) => drop(tx.send(r)),
            Done::Group(tx, r) => drop(tx.send(r)),
            Done::Added(tx, r) => drop(tx.send(r)),
            Done::Removed(tx, r) => drop(tx.send(r)),
            Done::Appended(tx, r) => drop(tx.send(r)),
            Done::Marks(tx, r) => drop(tx.send(r)),
            Done::Media(tx, r) => drop(tx.send(r)),
        }
    }

    /// The transaction failed to commit: nothing in it is durable; every answer is an error.
    fn fail(self, why: &str) {
        let e = || Error::internal(why);
        match self {
            Done::Direct(tx, _) => drop(tx.send(Err(e()))),
            Done::Group(tx, _) => drop(tx.send(Err(e()))),
            Done::Added(tx, _) => drop(tx.send(Err(e()))),
            Done::Removed(tx, _) => drop(tx.send(Err(e()))),
            Done::Appended(tx, r) => drop(tx.send(r.into_iter().map(|_| Err(e())).collect())),
            Done::Marks(tx, _) => drop(tx.send(Err(e()))),
            Done::Media(tx, _) => drop(tx.send(Err(e()))),
        }
    }
}

struct Writer {
    conn: Connection,
    /// Last assigned seq per chat, valid only for committed state (cleared on failed commit).
    seqs: HashMap<ChatId, Seq>,
    /// Set by the background checkpointer after it copied frames: the writer's own
    /// checkpoint right after it has little left to copy and lets the WAL restart.
    copied: Arc<std::sync::atomic::AtomicBool>,
    /// Acked messages still in `message_log` (shared with readers; only the writer changes it).
    tail: Arc<RwLock<Tail>>,
    policy: TailPolicy,
    /// Messages appended in the open transaction: they join the tail once it commits.
    pending: Vec<(i64, SharedMessage)>,
    pending_keys: HashMap<tail::Key, SharedMessage>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriteOp>, batch: usize) {
        let mut ops = Vec::with_capacity(batch);
        let mut wal_reset_at = std::time::Instant::now();
        loop {
            ops.clear();
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            ops.push(first);
            while ops.len() < batch {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut shutdown = false;
            let mut halt = false;
            ops.retain(|op| match op {
                WriteOp::Shutdown => {
                    shutdown = true;
                    false
                }
                WriteOp::MoveTail => false,
                WriteOp::Halt => {
                    halt = true;
                    false
                }
                _ => true,
            });
            if halt {
                if !ops.is_empty() {
                    self.commit_round(&mut ops);
                }
                return;
            }
            if !ops.is_empty() {
                self.commit_round(&mut ops);
            } else if !shutdown {
                self.move_tail(false);
            }
            if self.copied.swap(false, std::sync::atomic::Ordering::AcqRel)
                || wal_reset_at.elapsed() >= WAL_RESET_EVERY
            {
                self.let_wal_restart();
                wal_reset_at = std::time::Instant::now();
            }
            if shutdown {
                self.move_tail(true);
                let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                tracing::info!("sqlite writer stopped after committing its queue");
                return;
            }
        }
    }

    /// One transaction for the round's operations, each in its own savepoint, plus a share of
    /// due tail messages moved into `messages` (so moving costs no fsync of its own); answers
    /// go out after the COMMIT (which fsyncs), and the round's messages join the tail just
    /// before.
    fn commit_round(&mut self, ops: &mut Vec<WriteOp>) {
        let mut done = Vec::with_capacity(ops.len());
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(cause = %e, "sqlite BEGIN failed");
        }
        for op in ops.drain(..) {
            done.push(self.apply(op));
        }
        // Keep pace with what this round appended: twice as many, at least `chunk`.
        let moved = self.move_tail_in_tx((2 * self.pending.len()).max(self.policy.chunk), false);
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                if moved.is_some() || !self.pending.is_empty() {
                    let now = Instant::now();
                    let mut tail = self.tail.write();
                    if let Some(pick) = &moved {
                        tail.remove(pick);
                    }
                    for (rowid, m) in self.pending.drain(..) {
                        tail.push(rowid, m, now);
                    }
                }
                self.pending_keys.clear();
                done.into_iter().for_each(Done::send);
            }
            Err(e) => {
                tracing::error!(cause = %e, "sqlite COMMIT failed; the batch is rejected");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.seqs.clear();
                self.pending.clear();
                self.pending_keys.clear();
                done.into_iter()
                    .for_each(|d| d.fail("the write could not be committed"));
            }
        }
    }

    /// Move due tail messages in a transaction of their own: when the writer is idle (the
    /// checkpointer's tick) and at shutdown (`all`).
    fn move_tail(&mut self, all: bool) {
        if self.tail.read().len() == 0 {
            return;
        }
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::warn!(cause = %e, "sqlite BEGIN failed");
            return;
        }
        let moved = self.move_tail_in_tx(self.policy.chunk, all);
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                if let Some(pick) = &moved {
                    self.tail.write().remove(pick);
                }
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                tracing::warn!(cause = %e, "moving acked messages from message_log failed; will retry");
            }
        }
    }

    /// Inside the open transaction: copy due tail messages into `messages`, a chat at a time
    /// (so a chat's messages share their pages), at most `budget` (more when the tail is over
    /// `max_len`; everything when `all`), and drop the `message_log` rows below the oldest
    /// message that stays — never this transaction's own rows. In a savepoint: on failure
    /// nothing of it is kept, the rest of the transaction is unaffected, the rows stay durable
    /// in `message_log` and a later round tries again. The caller forgets the returned pick
    /// from the tail once the transaction has committed.
    fn move_tail_in_tx(&mut self, budget: usize, all: bool) -> Option<tail::Pick> {
        let policy = TailPolicy {
            chunk: budget,
            ..self.policy
        };
        let mut pick = self.tail.read().pick(&policy, Instant::now(), all)?;
        if let Some((first, _)) = self.pending.first() {
            pick.watermark = pick.watermark.min(*first);
        }
        let r = self.savepoint(|w| {
            let mut ignored = 0;
            let mut insert = w.conn.prepare_cached(
                "INSERT OR IGNORE INTO messages (chat_id, seq, message_id, sender_id, content, \
                 media_url, media, client_msg_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (_, msgs) in &pick.chats {
                for m in msgs {
                    let n = insert.execute(params![
                        m.chat_id as i64,
                        m.seq as i64,
                        m.message_id,
                        m.sender_id as i64,
                        m.content,
                        m.media_url,
                        m.media.as_ref().map(|v| v.to_string()),
                        m.client_msg_id,
                        m.created_at
                    ])?;
                    ignored += 1 - n;
                }
            }
            drop(insert);
            w.conn
                .prepare_cached("DELETE FROM message_log WHERE id < ?1")?
                .execute([pick.watermark])?;
            Ok(ignored)
        });
        match r {
            Ok(ignored) => {
                if ignored > 0 {
                    // Only possible if the tail and `messages` disagree: the stored row wins.
                    tracing::warn!(ignored, "tail messages already in messages were skipped");
                }
                Some(pick)
            }
            Err(e) => {
                tracing::warn!(cause = %e, "moving acked messages from message_log failed; will retry");
                None
            }
        }
    }

    /// The last seq given out in `chat`: this transaction's messages, then the tail, then
    /// `messages` (which also proves the chat exists).
    fn last_seq(&self, chat: ChatId) -> Result<Seq> {
        if let Some((_, m)) = self.pending.iter().rev().find(|(_, m)| m.chat_id == chat) {
            return Ok(m.seq);
        }
        if let Some(m) = self.tail.read().last(chat) {
            return Ok(m.seq);
        }
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {LAST_SEQ} FROM chats c WHERE c.chat_id = ?1"
            ))?
            .query_row([chat as i64], |r| r.get::<_, i64>(0))
            .optional()?
            .ok_or_else(|| Error::not_found("no such chat"))? as u64)
    }

    /// Forget this transaction's messages from `mark` on (their savepoint rolled back).
    fn drop_pending(&mut self, mark: usize) {
        for (_, m) in self.pending.drain(mark..) {
            if let Some(cid) = &m.client_msg_id {
                self.pending_keys
                    .remove(&(m.chat_id, m.sender_id, cid.clone()));
            }
        }
    }

    /// Let the WAL start over from its first frame. The background checkpointer copies the
    /// WAL into the database, but under a steady load the writer appends while it runs, so
    /// the WAL was never completely copied and never restarted: it grew without bound (123 MB
    /// after 20 s at 10k msg/s), and every write to fresh file blocks cost the kernel a page
    /// zeroing (6 % of the server's samples). A PASSIVE checkpoint from the writer itself
    /// sees no concurrent writer, copies the few frames written since the background one
    /// (usually none to a few hundred pages) and, when no reader pins old frames, the next
    /// transaction writes the WAL from its start again. Never blocks on readers. Run after
    /// each background checkpoint that copied frames (so the WAL restarts about every 0.5 s),
    /// and at least every `WAL_RESET_EVERY`.
    fn let_wal_restart(&mut self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(cause = %e, "wal checkpoint (writer) failed");
        }
    }

    /// Run one operation inside its own savepoint.
    fn apply(&mut self, op: WriteOp) -> Done {
        match op {
            WriteOp::CreateDirect(a, b, tx) => {
                Done::Direct(tx, self.savepoint(|w| w.create_direct(a, b)))
            }
            WriteOp::CreateGroup(c, t, m, l, tx) => {
                Done::Group(tx, self.savepoint(|w| w.create_group(c, t, m, l)))
            }
            WriteOp::AddMembers(c, u, l, tx) => {
                Done::Added(tx, self.savepoint(|w| w.add_members(c, &u, l)))
            }
            WriteOp::RemoveMember(c, u, tx) => {
                Done::Removed(tx, self.savepoint(|w| w.remove_member(c, u)))
            }
            WriteOp::Append(batch, tx) => Done::Appended(tx, self.append_batch(&batch)),
            WriteOp::SaveMarks(marks, tx) => {
                Done::Marks(tx, self.savepoint(|w| w.save_marks(&marks)))
            }
            WriteOp::Media(write, tx) => Done::Media(tx, self.savepoint(|w| write(&w.conn))),
            WriteOp::Shutdown | WriteOp::MoveTail | WriteOp::Halt => {
                unreachable!("handled by run")
            }
        }
    }

    fn savepoint<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("SAVEPOINT op")?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("RELEASE op")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK TO op; RELEASE op");
                Err(e)
            }
        }
    }

    fn next_chat_id(&self) -> Result<ChatId> {
        // Random ids below 2^53 (JS-safe), not guessable from each other.
        loop {
            let id: u64 = rand::random::<u64>() & ((1 << 53) - 1);
            if id < 1000 {
                continue;
            }
            let taken: bool = self
                .conn
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM chats WHERE chat_id = ?1)")?
                .query_row([id as i64], |r| r.get(0))?;
            if !taken {
                return Ok(id);
            }
        }
    }

    fn create_direct(&mut self, a: UserId, b: UserId) -> Result<(Chat, bool)> {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let key = format!("{lo}:{hi}");
        if let Some(chat_id) = self
            .conn
            .prepare_cached("SELECT chat_id FROM chats WHERE direct_key = ?1")?
            .query_row([&key], |r| r.get::<_, i64>(0))
            .optional()?
        {
            let mut chat = load_chat(&self.conn, chat_id as u64)?.expect("exists");
            chat.last_seq = self.last_seq(chat.chat_id)?;
            return Ok((chat, false));
        }
        let id = self.next_chat_id()?;
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO chats (chat_id, kind, title, created_at, updated_at, direct_key) \
             VALUES (?1, 'direct', NULL, ?2, ?2, ?3)",
            params![id as i64, now, key],
        )?;
        for u in [lo, hi] {
            self.conn.execute(
                "INSERT INTO members (chat_id, user_id, role, joined_at) VALUES (?1, ?2, 'member', ?3)",
                params![id as i64, u as i64, now],
            )?;
        }
        Ok((load_chat(&self.conn, id)?.expect("just created"), true))
    }

    fn create_group(
        &mut self,
        creator: UserId,
        title: Option<String>,
        members: Vec<UserId>,
        limit: usize,
    ) -> Result<Chat> {
        let all = super::group_members(creator, members, limit)?;
        let id = self.next_chat_id()?;
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO chats (chat_id, kind, title, created_at, updated_at) VALUES (?1, 'group', ?2, ?3, ?3)",
            params![id as i64, title, now],
        )?;
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO members (chat_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for u in &all {
            let role = if *u == creator { "admin" } else { "member" };
            stmt.execute(params![id as i64, *u as i64, role, now])?;
        }
        drop(stmt);
        Ok(load_chat(&self.conn, id)?.expect("just created"))
    }

    fn add_members(
        &mut self,
        chat_id: ChatId,
        users: &[UserId],
        limit: usize,
    ) -> Result<Vec<UserId>> {
        let count: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM members WHERE chat_id = ?1")?
            .query_row([chat_id as i64], |r| r.get(0))?;
        let mut added = Vec::new();
        let now = now_ms();
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO members (chat_id, user_id, role, joined_at) VALUES (?1, ?2, 'member', ?3)",
        )?;
        for u in users {
            if stmt.execute(params![chat_id as i64, *u as i64, now])? == 1 && !added.contains(u) {
                added.push(*u);
            }
        }
        if count as usize + added.len() > limit {
            // The savepoint rolls the inserts back: nothing is added.
            return Err(Error::GroupFull { limit });
        }
        Ok(added)
    }

    fn remove_member(&mut self, chat_id: ChatId, user: UserId) -> Result<bool> {
        let n = self.conn.execute(
            "DELETE FROM members WHERE chat_id = ?1 AND user_id = ?2",
            params![chat_id as i64, user as i64],
        )?;
        if n == 0 {
            return Ok(false);
        }
        let admins: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM members WHERE chat_id = ?1 AND role = 'admin'",
            [chat_id as i64],
            |r| r.get(0),
        )?;
        if admins == 0 {
            self.conn.execute(
                "UPDATE members SET role = 'admin' WHERE chat_id = ?1 AND user_id = \
                 (SELECT user_id FROM members WHERE chat_id = ?1 ORDER BY joined_at, user_id LIMIT 1)",
                [chat_id as i64],
            )?;
        }
        Ok(true)
    }

    /// Append one message inside the current transaction; `touched` collects the chats whose
    /// cached last seq moved (forgotten again if the batch rolls back). Only a `message_log`
    /// row is written (the rightmost leaf of a table without indexes, shared by the whole
    /// commit); the message joins the tail when the transaction commits and moves into
    /// `messages` later (see `tail`). A resend is found by its idempotency key in this
    /// transaction, the tail or `messages`, in that order.
    fn append_one(&mut self, m: &NewMessage, touched: &mut Vec<ChatId>) -> Result<Appended> {
        if let Some(cid) = &m.client_msg_id {
            let key = (m.chat_id, m.sender_id, cid.clone());
            let mut known = self.pending_keys.get(&key).cloned();
            if known.is_none() {
                known = self.tail.read().by_key(&key);
            }
            if known.is_none() {
                known = self
                    .conn
                    .prepare_cached(&format!(
                        "SELECT {MSG_COLS} FROM messages WHERE chat_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3"
                    ))?
                    .query_row(params![m.chat_id as i64, m.sender_id as i64, cid], row_message)
                    .optional()?;
            }
            if let Some(message) = known {
                return Ok(Appended {
                    message,
                    duplicate: true,
                });
            }
        }
        let last = match self.seqs.get(&m.chat_id) {
            Some(s) => *s,
            None => self.last_seq(m.chat_id)?,
        };
        let seq = last + 1;
        let now = now_ms();
        let message_id = m
            .message_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let media = m.media.as_ref().map(|v| v.to_string());
        self.conn
            .prepare_cached(
                "INSERT INTO message_log (chat_id, seq, message_id, sender_id, content, media_url, \
                 media, client_msg_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                m.chat_id as i64,
                seq as i64,
                message_id,
                m.sender_id as i64,
                m.content,
                m.media_url,
                media,
                m.client_msg_id,
                now
            ])?;
        let rowid = self.conn.last_insert_rowid();
        self.seqs.insert(m.chat_id, seq);
        touched.push(m.chat_id);
        let message = Arc::new(Message {
            message_id,
            chat_id: m.chat_id,
            seq,
            sender_id: m.sender_id,
            content: m.content.clone(),
            media_url: m.media_url.clone(),
            media: m.media.clone(),
            client_msg_id: m.client_msg_id.clone(),
            created_at: now,
        });
        if let Some(cid) = &m.client_msg_id {
            self.pending_keys
                .insert((m.chat_id, m.sender_id, cid.clone()), message.clone());
        }
        self.pending.push((rowid, message.clone()));
        Ok(Appended {
            message,
            duplicate: false,
        })
    }

    /// Bound the last-seq cache (a miss costs one primary-key lookup).
    fn trim_seq_cache(&mut self) {
        if self.seqs.len() > 200_000 {
            self.seqs.clear();
        }
    }

    /// Append a batch: all in one savepoint (the fast path), or, if anything in it fails, one
    /// savepoint per message so one bad message fails alone.
    fn append_batch(&mut self, batch: &[NewMessage]) -> Vec<Result<Appended>> {
        let mut touched = Vec::with_capacity(batch.len());
        let mark = self.pending.len();
        let fast = self.savepoint(|w| {
            batch
                .iter()
                .map(|m| w.append_one(m, &mut touched))
                .collect::<Result<Vec<_>>>()
        });
        self.trim_seq_cache();
        match fast {
            Ok(all) => all.into_iter().map(Ok).collect(),
            Err(_) => {
                // Rolled back: the cached seqs of those chats are ahead of the database.
                self.drop_pending(mark);
                for chat in &touched {
                    self.seqs.remove(chat);
                }
                batch
                    .iter()
                    .map(|m| {
                        let mut one = Vec::with_capacity(1);
                        let mark = self.pending.len();
                        let r = self.savepoint(|w| w.append_one(m, &mut one));
                        if r.is_err() {
                            self.drop_pending(mark);
                            self.seqs.remove(&m.chat_id);
                        }
                        r
                    })
                    .collect()
            }
        }
    }

    fn save_marks(&mut self, marks: &[(ChatId, Marks)]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE members SET delivered_seq = MAX(delivered_seq, ?3, ?4), read_seq = MAX(read_seq, ?4) \
             WHERE chat_id = ?1 AND user_id = ?2",
        )?;
        for (chat_id, m) in marks {
            stmt.execute(params![
                *chat_id as i64,
                m.user_id as i64,
                m.delivered_seq as i64,
                m.read_seq as i64
            ])?;
        }
        Ok(())
    }
}

fn parse_media(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn load_chat(conn: &Connection, chat_id: ChatId) -> Result<Option<Chat>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT c.kind, c.title, c.created_at, {LAST_SEQ} FROM chats c WHERE c.chat_id = ?1"
        ))?
        .query_row([chat_id as i64], |r| {
            Ok(Chat {
                chat_id,
                kind: ChatType::parse(&r.get::<_, String>(0)?).unwrap_or(ChatType::Group),
                title: r.get(1)?,
                created_at: r.get(2)?,
                last_seq: r.get::<_, i64>(3)? as u64,
                members: None,
                read_seq: None,
                unread: None,
            })
        })
        .optional()?)
}

fn row_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<SharedMessage> {
    Ok(Arc::new(Message {
        chat_id: r.get::<_, i64>(0)? as u64,
        seq: r.get::<_, i64>(1)? as u64,
        message_id: r.get(2)?,
        sender_id: r.get::<_, i64>(3)? as u64,
        content: r.get(4)?,
        media_url: r.get(5)?,
        media: parse_media(r.get(6)?),
        client_msg_id: r.get(7)?,
        created_at: r.get(8)?,
    }))
}

const MSG_COLS: &str =
    "chat_id, seq, message_id, sender_id, content, media_url, media, client_msg_id, created_at";

#[async_trait]
impl Store for SqliteStore {
    async fn create_direct(&self, a: UserId, b: UserId) -> Result<(Chat, bool)> {
        self.write(|tx| WriteOp::CreateDirect(a, b, tx)).await
    }

    async fn create_group(
        &self,
        creator: UserId,
        title: Option<String>,
        members: Vec<UserId>,
        limit: usize,
    ) -> Result<Chat> {
        self.write(|tx| WriteOp::CreateGroup(creator, title, members, limit, tx))
            .await
    }

    async fn chat(&self, chat_id: ChatId) -> Result<Option<Chat>> {
        let tail = self.tail.clone();
        self.read(move |c| {
            // The tail first: a message moved in between is then seen in `messages`.
            let in_tail = tail.read().last(chat_id).map(|m| m.seq);
            Ok(load_chat(c, chat_id)?.map(|mut chat| {
                chat.last_seq = chat.last_seq.max(in_tail.unwrap_or(0));
                chat
            }))
        })
        .await
    }

    async fn members(&self, chat_id: ChatId) -> Result<Vec<Member>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, role, joined_at FROM members WHERE chat_id = ?1 ORDER BY joined_at, user_id",
            )?;
            let rows = stmt.query_map([chat_id as i64], |r| {
                Ok(Member {
                    user_id: r.get::<_, i64>(0)? as u64,
                    role: Role::parse(&r.get::<_, String>(1)?),
                    joined_at: r.get(2)?,
                    name: None,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn user_chats(&self, user_id: UserId) -> Result<Vec<UserChat>> {
        let tail = self.tail.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT c.chat_id, c.kind, c.title, c.created_at, {LAST_SEQ}, m.read_seq, \
                 (SELECT COUNT(*) FROM (SELECT 1 FROM messages x WHERE x.chat_id = c.chat_id \
                    AND x.seq > m.read_seq AND x.sender_id != m.user_id LIMIT 10000)), \
                 {LAST_ACTIVITY} \
                 FROM members m JOIN chats c ON c.chat_id = m.chat_id \
                 WHERE m.user_id = ?1"
            ))?;
            // The tail after `messages`, checked against the tail's move counter: if no move
            // happened in between, every message is in exactly one of the two, or in both
            // (moved before the query, forgotten after), which the seq comparison below
            // counts once. If one did, read again.
            for attempt in 0.. {
                let moves = tail.read().moves();
                let rows = stmt.query_map([user_id as i64], |r| {
                    Ok((
                        UserChat {
                            chat: Chat {
                                chat_id: r.get::<_, i64>(0)? as u64,
                                kind: ChatType::parse(&r.get::<_, String>(1)?)
                                    .unwrap_or(ChatType::Group),
                                title: r.get(2)?,
                                created_at: r.get(3)?,
                                last_seq: r.get::<_, i64>(4)? as u64,
                                members: None,
                                read_seq: None,
                                unread: None,
                            },
                            read_seq: r.get::<_, i64>(5)? as u64,
                            unread: r.get::<_, i64>(6)? as u64,
                        },
                        r.get::<_, i64>(7)?,
                    ))
                })?;
                let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
                let t = tail.read();
                if t.moves() != moves && attempt < 5 {
                    continue;
                }
                for (uc, activity) in &mut out {
                    if let Some(last) = t.last(uc.chat.chat_id)
                        && last.seq > uc.chat.last_seq
                    {
                        let after = uc.read_seq.max(uc.chat.last_seq);
                        uc.unread =
                            (uc.unread + t.unread(uc.chat.chat_id, after, user_id)).min(10_000);
                        uc.chat.last_seq = last.seq;
                        *activity = (*activity).max(last.created_at);
                    }
                }
                drop(t);
                out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.chat.chat_id.cmp(&b.0.chat.chat_id)));
                return Ok(out.into_iter().map(|(uc, _)| uc).collect());
            }
            unreachable!("the loop returns")
        })
        .await
    }

    async fn add_members(
        &self,
        chat_id: ChatId,
        user_ids: Vec<UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>> {
        self.write(|tx| WriteOp::AddMembers(chat_id, user_ids, limit, tx))
            .await
    }

    async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<bool> {
        self.write(|tx| WriteOp::RemoveMember(chat_id, user_id, tx))
            .await
    }

    async fn append_batch(&self, batch: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let n = batch.len();
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriteOp::Append(batch, tx)).await.is_err() {
            return (0..n)
                .map(|_| Err(Error::Unavailable("the store is shutting down".into())))
                .collect();
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => (0..n)
                .map(|_| Err(Error::internal("the store writer stopped")))
                .collect(),
        }
    }

    async fn messages(&self, chat_id: ChatId, page: Page) -> Result<MessagePage> {
        let tail = self.tail.clone();
        self.read(move |c| {
            let limit = page.limit.max(1);
            let before = page
                .before_seq
                .unwrap_or(i64::MAX as u64)
                .min(i64::MAX as u64) as i64;
            // The tail's part first, then `messages`: a message moved in between is in both
            // (merged by seq), never in neither.
            let recent = tail
                .read()
                .range(chat_id, page.after_seq, before as u64, limit + 1);
            let mut out = Vec::with_capacity(limit + 1);
            if let Some(after) = page.after_seq {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {MSG_COLS} FROM messages WHERE chat_id = ?1 AND seq > ?2 AND seq < ?3 \
                     ORDER BY seq ASC LIMIT ?4"
                ))?;
                let rows = stmt.query_map(
                    params![chat_id as i64, after as i64, before, (limit + 1) as i64],
                    row_message,
                )?;
                for r in rows {
                    out.push(r?);
                }
                let (messages, has_more) = tail::merge_page(out, recent, true, limit);
                Ok(MessagePage { messages, has_more })
            } else {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {MSG_COLS} FROM messages WHERE chat_id = ?1 AND seq < ?2 \
                     ORDER BY seq DESC LIMIT ?3"
                ))?;
                let rows = stmt.query_map(
                    params![chat_id as i64, before, (limit + 1) as i64],
                    row_message,
                )?;
                for r in rows {
                    out.push(r?);
                }
                let (messages, has_more) = tail::merge_page(out, recent, false, limit);
                Ok(MessagePage { messages, has_more })
            }
        })
        .await
    }

    async fn marks(&self, chat_id: ChatId) -> Result<Vec<Marks>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, delivered_seq, read_seq FROM members WHERE chat_id = ?1 ORDER BY user_id",
            )?;
            let rows = stmt.query_map([chat_id as i64], |r| {
                Ok(Marks {
                    user_id: r.get::<_, i64>(0)? as u64,
                    delivered_seq: r.get::<_, i64>(1)? as u64,
                    read_seq: r.get::<_, i64>(2)? as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn save_marks(&self, updates: Vec<(ChatId, Marks)>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        self.write(|tx| WriteOp::SaveMarks(updates, tx)).await
    }

    async fn direct_partners(&self, user_id: UserId) -> Result<Vec<UserId>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT o.user_id FROM members m JOIN chats c ON c.chat_id = m.chat_id AND c.kind = 'direct' \
                 JOIN members o ON o.chat_id = m.chat_id AND o.user_id != m.user_id WHERE m.user_id = ?1",
            )?;
            let rows = stmt.query_map([user_id as i64], |r| Ok(r.get::<_, i64>(0)? as u64))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_title(&self, chat_id: ChatId, title: Option<String>) -> Result<()> {
        self.media_write(users::set_title(chat_id, title)).await
    }

    async fn set_user_name(&self, user_id: UserId, name: &str) -> Result<()> {
        self.media_write(users::set_name(user_id, name.to_string()))
            .await
    }

    async fn user_names(&self, user_ids: &[UserId]) -> Result<HashMap<UserId, String>> {
        if user_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = user_ids.to_vec();
        self.read(move |c| users::names(c, &ids)).await
    }

    async fn put_media(&self, m: crate::media::record::MediaRecord) -> Result<()> {
        self.media_write(media::put(m)).await
    }

    async fn media(&self, media_id: &str) -> Result<Option<crate::media::record::MediaRecord>> {
        let id = media_id.to_string();
        self.read(move |c| media::get(c, &id)).await
    }

    async fn link_media(
        &self,
        m: &crate::media::record::MediaRecord,
        chat_id: ChatId,
    ) -> Result<()> {
        self.media_write(media::link(m.media_id.clone(), chat_id))
            .await
    }

    async fn media_chats(&self, media_id: &str) -> Result<Vec<ChatId>> {
        let id = media_id.to_string();
        self.read(move |c| media::chats(c, &id)).await
    }

    async fn unsent_media(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::media::record::MediaRecord>> {
        self.read(move |c| media::unsent(c, before_ms, limit)).await
    }

    async fn delete_media(&self, m: &crate::media::record::MediaRecord) -> Result<()> {
        self.media_write(media::delete(m.media_id.clone())).await
    }

    async fn set_media_renditions(
        &self,
        media_id: &str,
        r: &crate::media::record::Renditions,
    ) -> Result<()> {
        self.media_write(media::set_renditions(media_id.to_string(), r)?)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::paced_sync;
    use std::io::Write;

    #[test]
    fn paced_sync_writes_back_files_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1, 300 * 1024, 3 * 1024 * 1024 + 17] {
            let path = dir.path().join(format!("f{size}"));
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&vec![7u8; size]).unwrap();
            let ro = std::fs::File::open(&path).unwrap();
            paced_sync(&ro).unwrap();
            assert_eq!(std::fs::read(&path).unwrap().len(), size);
        }
    }
}
