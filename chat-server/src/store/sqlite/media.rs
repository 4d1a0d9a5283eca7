//! Media metadata in the embedded store: `media` (one row per upload, `sent` = 0 until it is
//! first sent), `media_chats` (which chats it was sent to: the access rule) and
//! `media_renditions` (what the transcoder made of a video, JSON of `Renditions`).

use super::SqliteStore;
use crate::error::{Error, Result};
use crate::media::record::{MediaRecord, Renditions};
use crate::model::ChatId;
use rusqlite::{Connection, OptionalExtension, params};

/// Additive tables (created if missing; older databases gain them on open).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS media (
    media_id   TEXT    PRIMARY KEY,
    uploader   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    sent       INTEGER NOT NULL DEFAULT 0,
    info       TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS media_unsent ON media (created_at) WHERE sent = 0;
CREATE TABLE IF NOT EXISTS media_chats (
    media_id TEXT    NOT NULL,
    chat_id  INTEGER NOT NULL,
    PRIMARY KEY (media_id, chat_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS media_renditions (
    media_id TEXT PRIMARY KEY,
    info     TEXT NOT NULL
) WITHOUT ROWID;
";

/// A write run by the writer thread inside its own savepoint.
pub(super) type Write = Box<dyn FnOnce(&Connection) -> Result<()> + Send>;

impl SqliteStore {
    pub(super) async fn media_write(&self, w: Write) -> Result<()> {
        self.write(|tx| super::WriteOp::Media(w, tx)).await
    }
}

pub(super) fn put(m: MediaRecord) -> Write {
    Box::new(move |c| {
        let info = serde_json::to_string(&m).map_err(Error::internal)?;
        c.prepare_cached(
            "INSERT INTO media (media_id, uploader, created_at, sent, info) VALUES (?1, ?2, ?3, 0, ?4)",
        )?
        .execute(params![m.media_id, m.uploader as i64, m.created_at, info])?;
        Ok(())
    })
}

pub(super) fn link(media_id: String, chat_id: ChatId) -> Write {
    Box::new(move |c| {
        c.prepare_cached("INSERT OR IGNORE INTO media_chats (media_id, chat_id) VALUES (?1, ?2)")?
            .execute(params![media_id, chat_id as i64])?;
        c.prepare_cached("UPDATE media SET sent = 1 WHERE media_id = ?1 AND sent = 0")?
            .execute([&media_id])?;
        Ok(())
    })
}

pub(super) fn delete(media_id: String) -> Write {
    Box::new(move |c| {
        c.prepare_cached("DELETE FROM media_chats WHERE media_id = ?1")?
            .execute([&media_id])?;
        c.prepare_cached("DELETE FROM media WHERE media_id = ?1")?
            .execute([&media_id])?;
        c.prepare_cached("DELETE FROM media_renditions WHERE media_id = ?1")?
            .execute([&media_id])?;
        Ok(())
    })
}

/// Only while the media exists (a job finishing after the collector took it writes nothing).
pub(super) fn set_renditions(media_id: String, r: &Renditions) -> Result<Write> {
    let info = serde_json::to_string(r).map_err(Error::internal)?;
    Ok(Box::new(move |c| {
        c.prepare_cached(
            "INSERT OR REPLACE INTO media_renditions (media_id, info) \
             SELECT media_id, ?2 FROM media WHERE media_id = ?1",
        )?
        .execute(params![media_id, info])?;
        Ok(())
    }))
}

fn parse(info: String) -> Result<MediaRecord> {
    serde_json::from_str(&info).map_err(|e| Error::internal(format!("bad media row: {e}")))
}

pub(super) fn get(c: &Connection, media_id: &str) -> Result<Option<MediaRecord>> {
    let row: Option<(String, Option<String>)> = c
        .prepare_cached(
            "SELECT m.info, r.info FROM media m LEFT JOIN media_renditions r \
             ON r.media_id = m.media_id WHERE m.media_id = ?1",
        )?
        .query_row([media_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((info, renditions)) = row else {
        return Ok(None);
    };
    let mut m = parse(info)?;
    m.renditions = renditions
        .map(|r| serde_json::from_str(&r))
        .transpose()
        .map_err(|e| Error::internal(format!("bad media_renditions row: {e}")))?;
    Ok(Some(m))
}

pub(super) fn chats(c: &Connection, media_id: &str) -> Result<Vec<ChatId>> {
    let mut stmt = c.prepare_cached("SELECT chat_id FROM media_chats WHERE media_id = ?1")?;
    let rows = stmt.query_map([media_id], |r| Ok(r.get::<_, i64>(0)? as u64))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn unsent(c: &Connection, before_ms: i64, limit: usize) -> Result<Vec<MediaRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT info FROM media WHERE sent = 0 AND created_at < ?1 ORDER BY created_at LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![before_ms, limit as i64], |r| r.get::<_, String>(0))?;
    rows.map(|r| parse(r?)).collect()
}
