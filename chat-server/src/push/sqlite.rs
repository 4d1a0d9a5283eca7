//! The embedded push store: its own SQLite file, `<data-dir>/push.db` (WAL, `synchronous=FULL`:
//! a call returns only once its transaction is on disk).

use super::{Device, OutboxItem, Pending, Platform, Provider, PushEvent, PushStore, coalesce};
use crate::error::{Error, Result};
use crate::model::{ChatId, UserId, now_ms};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;
use std::sync::Arc;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    token TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    platform TEXT NOT NULL,
    p256dh TEXT,
    auth TEXT,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_by_user ON devices(user_id);
CREATE TABLE IF NOT EXISTS mutes (
    user_id INTEGER NOT NULL,
    chat_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, chat_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    user_id INTEGER NOT NULL,
    chat_id INTEGER NOT NULL,
    shard INTEGER NOT NULL,
    count INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    preview TEXT NOT NULL,
    first_at_ms INTEGER NOT NULL,
    due_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, chat_id)
);
CREATE INDEX IF NOT EXISTS pending_due ON pending(shard, due_at_ms);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    shard INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    chat_id INTEGER NOT NULL,
    provider TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_at_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(shard, next_at_ms);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    chat_id INTEGER NOT NULL,
    provider TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    failed_ms INTEGER NOT NULL,
    error TEXT NOT NULL
);
";

pub struct SqlitePushStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqlitePushStore {
    /// Open (or create) `<dir>/push.db`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::internal)?;
        let conn = Connection::open(dir.join("push.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqlitePushStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(Error::internal)?
            .map_err(Error::from)
    }
}

fn device_of(r: &Row<'_>) -> rusqlite::Result<Device> {
    let platform: String = r.get(2)?;
    Ok(Device {
        token: r.get(0)?,
        user_id: r.get::<_, i64>(1)? as u64,
        platform: Platform::parse(&platform).unwrap_or(Platform::Android),
        p256dh: r.get(3)?,
        auth: r.get(4)?,
    })
}

const PENDING_COLS: &str = "shard, user_id, chat_id, count, first_seq, last_seq, sender_id, preview, first_at_ms, due_at_ms";

fn pending_of(r: &Row<'_>) -> rusqlite::Result<Pending> {
    Ok(Pending {
        shard: r.get(0)?,
        user_id: r.get::<_, i64>(1)? as u64,
        chat_id: r.get::<_, i64>(2)? as u64,
        count: r.get(3)?,
        first_seq: r.get::<_, i64>(4)? as u64,
        last_seq: r.get::<_, i64>(5)? as u64,
        sender_id: r.get::<_, i64>(6)? as u64,
        preview: r.get(7)?,
        first_at_ms: r.get(8)?,
        due_at_ms: r.get(9)?,
    })
}

fn write_pending(tx: &rusqlite::Transaction<'_>, p: &Pending) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO pending (shard, user_id, chat_id, count, first_seq, last_seq, \
         sender_id, preview, first_at_ms, due_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            p.shard,
            p.user_id as i64,
            p.chat_id as i64,
            p.count,
            p.first_seq as i64,
            p.last_seq as i64,
            p.sender_id as i64,
            p.preview,
            p.first_at_ms,
            p.due_at_ms
        ],
    )
    .map(|_| ())
}

fn read_pending(
    tx: &rusqlite::Transaction<'_>,
    user: UserId,
    chat: ChatId,
) -> rusqlite::Result<Option<Pending>> {
    tx.query_row(
        &format!("SELECT {PENDING_COLS} FROM pending WHERE user_id = ?1 AND chat_id = ?2"),
        params![user as i64, chat as i64],
        pending_of,
    )
    .optional()
}

const OUTBOX_COLS: &str = "id, shard, user_id, chat_id, provider, target, payload, attempts, \
                           next_at_ms, created_ms, last_error";

fn outbox_of(r: &Row<'_>) -> rusqlite::Result<OutboxItem> {
    let provider: String = r.get(4)?;
    Ok(OutboxItem {
        id: r.get(0)?,
        shard: r.get(1)?,
        user_id: r.get::<_, i64>(2)? as u64,
        chat_id: r.get::<_, i64>(3)? as u64,
        provider: Provider::parse(&provider).unwrap_or(Provider::Webhook),
        target: r.get(5)?,
        payload: r.get(6)?,
        attempts: r.get(7)?,
        next_at_ms: r.get(8)?,
        created_ms: r.get(9)?,
        last_error: r.get(10)?,
    })
}

#[async_trait]
impl PushStore for SqlitePushStore {
    async fn register_device(&self, d: Device) -> Result<()> {
        self.run(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO devices (token, user_id, platform, p256dh, auth, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    d.token,
                    d.user_id as i64,
                    d.platform.as_str(),
                    d.p256dh,
                    d.auth,
                    now_ms()
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn remove_device(&self, user: UserId, token: &str) -> Result<bool> {
        let token = token.to_string();
        self.run(move |c| {
            c.execute(
                "DELETE FROM devices WHERE token = ?1 AND user_id = ?2",
                params![token, user as i64],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT token, user_id, platform, p256dh, auth FROM devices WHERE user_id = ?1 \
                 ORDER BY created_ms, token",
            )?;
            st.query_map(params![user as i64], device_of)?.collect()
        })
        .await
    }

    async fn set_muted(&self, user: UserId, chat: ChatId, muted: bool) -> Result<()> {
        self.run(move |c| {
            if muted {
                c.execute(
                    "INSERT OR IGNORE INTO mutes (user_id, chat_id) VALUES (?1, ?2)",
                    params![user as i64, chat as i64],
                )?;
            } else {
                c.execute(
                    "DELETE FROM mutes WHERE user_id = ?1 AND chat_id = ?2",
                    params![user as i64, chat as i64],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn is_muted(&self, user: UserId, chat: ChatId) -> Result<bool> {
        self.run(move |c| {
            c.query_row(
                "SELECT 1 FROM mutes WHERE user_id = ?1 AND chat_id = ?2",
                params![user as i64, chat as i64],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
        })
        .await
    }

    async fn add_events(
        &self,
        shard: i32,
        events: Vec<PushEvent>,
        window_ms: i64,
    ) -> Result<usize> {
        self.run(move |c| {
            let tx = c.transaction()?;
            let mut taken = 0;
            for ev in &events {
                let has_device = tx
                    .query_row(
                        "SELECT 1 FROM devices WHERE user_id = ?1 LIMIT 1",
                        params![ev.user_id as i64],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !has_device {
                    continue;
                }
                let row = read_pending(&tx, ev.user_id, ev.chat_id)?;
                if let Some(p) = coalesce::add(row.as_ref(), shard, ev, window_ms) {
                    write_pending(&tx, &p)?;
                    taken += 1;
                }
            }
            tx.commit()?;
            Ok(taken)
        })
        .await
    }

    async fn due_pending(&self, shard: i32, now: i64, limit: usize) -> Result<Vec<Pending>> {
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {PENDING_COLS} FROM pending WHERE shard = ?1 AND due_at_ms <= ?2 \
                 ORDER BY due_at_ms LIMIT ?3"
            ))?;
            st.query_map(params![shard, now, limit as i64], pending_of)?
                .collect()
        })
        .await
    }

    async fn schedule(&self, taken: &Pending, items: Vec<OutboxItem>) -> Result<()> {
        let taken = taken.clone();
        self.run(move |c| {
            let tx = c.transaction()?;
            for i in &items {
                tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO outbox ({OUTBOX_COLS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                    ),
                    params![
                        i.id,
                        i.shard,
                        i.user_id as i64,
                        i.chat_id as i64,
                        i.provider.as_str(),
                        i.target,
                        i.payload,
                        i.attempts,
                        i.next_at_ms,
                        i.created_ms,
                        i.last_error
                    ],
                )?;
            }
            if let Some(current) = read_pending(&tx, taken.user_id, taken.chat_id)? {
                let window = taken.due_at_ms - taken.first_at_ms;
                match coalesce::after_taken(&current, &taken, now_ms(), window) {
                    Some(left) => write_pending(&tx, &left)?,
                    None => {
                        tx.execute(
                            "DELETE FROM pending WHERE user_id = ?1 AND chat_id = ?2",
                            params![taken.user_id as i64, taken.chat_id as i64],
                        )?;
                    }
                }
            }
            tx.commit()
        })
        .await
    }

    async fn due_outbox(&self, shard: i32, now: i64, limit: usize) -> Result<Vec<OutboxItem>> {
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {OUTBOX_COLS} FROM outbox WHERE shard = ?1 AND next_at_ms <= ?2 \
                 ORDER BY next_at_ms LIMIT ?3"
            ))?;
            st.query_map(params![shard, now, limit as i64], outbox_of)?
                .collect()
        })
        .await
    }

    async fn outbox_done(&self, item: &OutboxItem) -> Result<()> {
        let id = item.id.clone();
        self.run(move |c| {
            c.execute("DELETE FROM outbox WHERE id = ?1", params![id])
                .map(|_| ())
        })
        .await
    }

    async fn outbox_retry(&self, item: &OutboxItem) -> Result<()> {
        let i = item.clone();
        self.run(move |c| {
            c.execute(
                "UPDATE outbox SET attempts = ?2, next_at_ms = ?3, last_error = ?4 WHERE id = ?1",
                params![i.id, i.attempts, i.next_at_ms, i.last_error],
            )
            .map(|_| ())
        })
        .await
    }

    async fn dead_letter(&self, item: &OutboxItem, error: &str) -> Result<()> {
        let (i, error) = (item.clone(), error.to_string());
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO dead_letters (id, user_id, chat_id, provider, target, \
                 payload, attempts, created_ms, failed_ms, error) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    i.id,
                    i.user_id as i64,
                    i.chat_id as i64,
                    i.provider.as_str(),
                    i.target,
                    i.payload,
                    i.attempts,
                    i.created_ms,
                    now_ms(),
                    error
                ],
            )?;
            tx.execute("DELETE FROM outbox WHERE id = ?1", params![i.id])?;
            tx.commit()
        })
        .await
    }

    async fn oldest(&self, shard: i32) -> Result<Option<i64>> {
        self.run(move |c| {
            c.query_row(
                "SELECT min(t) FROM (SELECT min(first_at_ms) AS t FROM pending WHERE shard = ?1 \
                 UNION ALL SELECT min(created_ms) FROM outbox WHERE shard = ?1)",
                params![shard],
                |r| r.get::<_, Option<i64>>(0),
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: u64, chat: u64, seq: u64, at: i64) -> PushEvent {
        PushEvent {
            user_id: user,
            chat_id: chat,
            seq,
            sender_id: 1,
            preview: format!("m{seq}"),
            at_ms: at,
        }
    }

    #[tokio::test]
    async fn queue_survives_reopen_and_schedules_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqlitePushStore::open(dir.path()).unwrap();
        for user in [2, 3] {
            s.register_device(Device {
                user_id: user,
                platform: Platform::Android,
                token: format!("t{user}"),
                p256dh: None,
                auth: None,
            })
            .await
            .unwrap();
        }
        let events = vec![
            ev(2, 7, 1, 1000),
            ev(2, 7, 2, 1100),
            ev(3, 7, 1, 1000),
            ev(4, 7, 1, 1000),
        ];
        // User 4 has no device: not queued.
        assert_eq!(s.add_events(0, events, 500).await.unwrap(), 3);
        // A replay changes nothing.
        assert_eq!(
            s.add_events(0, vec![ev(2, 7, 2, 1200)], 500).await.unwrap(),
            0
        );
        drop(s);
        let s = SqlitePushStore::open(dir.path()).unwrap();
        assert!(s.due_pending(0, 1499, 10).await.unwrap().is_empty());
        let due = s.due_pending(0, 1500, 10).await.unwrap();
        assert_eq!(due.len(), 2);
        let p = due.iter().find(|p| p.user_id == 2).unwrap().clone();
        assert_eq!((p.count, p.first_seq, p.last_seq), (2, 1, 2));
        assert_eq!(s.oldest(0).await.unwrap(), Some(1000));
        // A message arrives between reading and scheduling: it stays pending.
        s.add_events(0, vec![ev(2, 7, 3, 1600)], 500).await.unwrap();
        let item = OutboxItem {
            id: "n1".into(),
            shard: 0,
            user_id: 2,
            chat_id: 7,
            provider: Provider::Webhook,
            target: "[]".into(),
            payload: "{}".into(),
            attempts: 0,
            next_at_ms: 0,
            created_ms: 1500,
            last_error: None,
        };
        s.schedule(&p, vec![item.clone()]).await.unwrap();
        let left = s.due_pending(0, i64::MAX, 10).await.unwrap();
        let left = left.iter().find(|p| p.user_id == 2).unwrap();
        assert_eq!((left.count, left.first_seq, left.last_seq), (1, 3, 3));
        let out = s.due_outbox(0, 0, 10).await.unwrap();
        assert_eq!(out, vec![item.clone()]);
        let mut retry = item.clone();
        retry.attempts = 1;
        retry.next_at_ms = 5000;
        retry.last_error = Some("HTTP 503".into());
        s.outbox_retry(&retry).await.unwrap();
        assert!(s.due_outbox(0, 4999, 10).await.unwrap().is_empty());
        assert_eq!(
            s.due_outbox(0, 5000, 10).await.unwrap(),
            vec![retry.clone()]
        );
        s.dead_letter(&retry, "gave up").await.unwrap();
        assert!(s.due_outbox(0, i64::MAX, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn devices_are_unique_by_token_and_mutes_toggle() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqlitePushStore::open(dir.path()).unwrap();
        let d = |user, token: &str| Device {
            user_id: user,
            platform: Platform::Android,
            token: token.into(),
            p256dh: None,
            auth: None,
        };
        s.register_device(d(1, "t1")).await.unwrap();
        s.register_device(d(1, "t2")).await.unwrap();
        s.register_device(d(2, "t2")).await.unwrap();
        assert_eq!(s.devices(1).await.unwrap(), vec![d(1, "t1")]);
        assert_eq!(s.devices(2).await.unwrap(), vec![d(2, "t2")]);
        assert!(!s.remove_device(1, "t2").await.unwrap());
        assert!(s.remove_device(2, "t2").await.unwrap());
        assert!(!s.is_muted(1, 9).await.unwrap());
        s.set_muted(1, 9, true).await.unwrap();
        s.set_muted(1, 9, true).await.unwrap();
        assert!(s.is_muted(1, 9).await.unwrap());
        s.set_muted(1, 9, false).await.unwrap();
        assert!(!s.is_muted(1, 9).await.unwrap());
    }
}
