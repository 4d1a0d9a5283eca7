//! Users in the embedded store: `users` (the latest display name per user) and group titles.
//! Both are small writes through the writer thread's generic write operation (one savepoint
//! each, committed with whatever else is queued).

use super::media::Write;
use crate::error::Result;
use crate::model::{ChatId, UserId, now_ms};
use rusqlite::{Connection, params};
use std::collections::HashMap;

/// Additive table (created if missing; older databases gain it on open).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    user_id    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);
";

pub(super) fn set_name(user_id: UserId, name: String) -> Write {
    Box::new(move |c| {
        c.prepare_cached(
            "INSERT INTO users (user_id, name, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
        )?
        .execute(params![user_id as i64, name, now_ms()])?;
        Ok(())
    })
}

pub(super) fn set_title(chat_id: ChatId, title: Option<String>) -> Write {
    Box::new(move |c| {
        c.prepare_cached("UPDATE chats SET title = ?1 WHERE chat_id = ?2")?
            .execute(params![title, chat_id as i64])?;
        Ok(())
    })
}

/// Names of those of `users` that have one (at most 500 ids per statement).
pub(super) fn names(c: &Connection, users: &[UserId]) -> Result<HashMap<UserId, String>> {
    let mut out = HashMap::new();
    for chunk in users.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut stmt = c.prepare(&format!(
            "SELECT user_id, name FROM users WHERE user_id IN ({marks})"
        ))?;
        let ids = chunk.iter().map(|u| *u as i64);
        let rows = stmt.query_map(rusqlite::params_from_iter(ids), |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (id, name) = row?;
            out.insert(id, name);
        }
    }
    Ok(out)
}
