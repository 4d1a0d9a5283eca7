//! Users in the distributed store (schema version 3): `users` (the latest display name per
//! user, one partition each), and group titles (a plain column of `chats`).

use super::{ScyllaOptions, ScyllaStore, id, rows_of};
use crate::error::{Error, Result};
use crate::model::{ChatId, UserId};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use std::collections::HashMap;

/// Ids per `IN` read of names: one coordinator query touches at most this many partitions.
const NAMES_PER_READ: usize = 100;

pub(super) struct UserStatements {
    name_put: PreparedStatement,
    names_get: PreparedStatement,
    title_set: PreparedStatement,
}

impl UserStatements {
    pub(super) async fn prepare(session: &Session, ks: &str, o: &ScyllaOptions) -> Result<Self> {
        let prep = |cql: &str| {
            let cql = cql.replace("{ks}", ks);
            async move {
                let mut p = session
                    .prepare(cql.as_str())
                    .await
                    .map_err(|e| Error::internal(format!("cql preparing `{cql}`: {e}")))?;
                p.set_consistency(o.consistency);
                p.set_is_idempotent(true);
                Ok::<_, Error>(p)
            }
        };
        Ok(UserStatements {
            name_put: prep("INSERT INTO {ks}.users (user_id, name, updated_at) VALUES (?, ?, ?)")
                .await?,
            names_get: prep("SELECT user_id, name FROM {ks}.users WHERE user_id IN ?").await?,
            title_set: prep("UPDATE {ks}.chats SET title = ? WHERE chat_id = ?").await?,
        })
    }
}

impl ScyllaStore {
    pub(super) async fn user_name_put(&self, user_id: UserId, name: &str) -> Result<()> {
        let now = CqlTimestamp(crate::model::now_ms());
        self.exec(
            "saving a user name",
            &self.users.name_put,
            (id(user_id), name, now),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn user_names_get(
        &self,
        user_ids: &[UserId],
    ) -> Result<HashMap<UserId, String>> {
        let reads = user_ids.chunks(NAMES_PER_READ).map(|chunk| {
            let ids: Vec<i64> = chunk.iter().map(|u| id(*u)).collect();
            async move {
                let r = self
                    .exec("reading user names", &self.users.names_get, (ids,))
                    .await?;
                rows_of::<(i64, Option<String>)>("reading user names", r)
            }
        });
        let mut out = HashMap::new();
        for rows in futures::future::try_join_all(reads).await? {
            for (user, name) in rows {
                if let Some(name) = name {
                    out.insert(user as UserId, name);
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn chat_title_set(
        &self,
        chat_id: ChatId,
        title: Option<String>,
    ) -> Result<()> {
        self.exec(
            "setting a chat title",
            &self.users.title_set,
            (title, id(chat_id)),
        )
        .await?;
        Ok(())
    }
}
