//! Media metadata in the distributed store (schema version 2): `media` (one row per upload),
//! `media_chats` (the chats it was sent to: the access rule) and `media_unsent` (uploads not
//! yet sent, in [`UNSENT_SHARDS`] partitions ordered by time, for the orphan collector);
//! version 3 adds `media_renditions` (what the transcoder made of a video).

use super::{ScyllaOptions, ScyllaStore, exec_error, id, rows_of};
use crate::error::{Error, Result};
use crate::media::record::{MediaRecord, Renditions, UNSENT_SHARDS};
use crate::model::ChatId;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

pub(super) struct MediaStatements {
    put: PreparedStatement,
    unsent_put: PreparedStatement,
    get: PreparedStatement,
    link: PreparedStatement,
    unsent_delete: PreparedStatement,
    chats: PreparedStatement,
    unsent_list: PreparedStatement,
    delete: PreparedStatement,
    chats_delete: PreparedStatement,
    renditions_put: PreparedStatement,
    renditions_get: PreparedStatement,
    renditions_delete: PreparedStatement,
}

impl MediaStatements {
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
        Ok(MediaStatements {
            put: prep(
                "INSERT INTO {ks}.media (media_id, uploader, created_at, info) VALUES (?, ?, ?, ?)",
            )
            .await?,
            unsent_put: prep(
                "INSERT INTO {ks}.media_unsent (shard, created_at, media_id) VALUES (?, ?, ?)",
            )
            .await?,
            get: prep("SELECT info FROM {ks}.media WHERE media_id = ?").await?,
            link: prep("INSERT INTO {ks}.media_chats (media_id, chat_id) VALUES (?, ?)").await?,
            unsent_delete: prep(
                "DELETE FROM {ks}.media_unsent WHERE shard = ? AND created_at = ? AND media_id = ?",
            )
            .await?,
            chats: prep("SELECT chat_id FROM {ks}.media_chats WHERE media_id = ?").await?,
            unsent_list: prep(
                "SELECT created_at, media_id FROM {ks}.media_unsent WHERE shard = ? AND created_at < ? \
                 LIMIT ?",
            )
            .await?,
            delete: prep("DELETE FROM {ks}.media WHERE media_id = ?").await?,
            chats_delete: prep("DELETE FROM {ks}.media_chats WHERE media_id = ?").await?,
            renditions_put: prep("INSERT INTO {ks}.media_renditions (media_id, info) VALUES (?, ?)")
                .await?,
            renditions_get: prep("SELECT info FROM {ks}.media_renditions WHERE media_id = ?")
                .await?,
            renditions_delete: prep("DELETE FROM {ks}.media_renditions WHERE media_id = ?")
                .await?,
        })
    }
}

impl ScyllaStore {
    async fn media_batch(
        &self,
        what: &str,
        stmts: Vec<(PreparedStatement, Box<dyn SerializeRow + Send + Sync>)>,
    ) -> Result<()> {
        let mut batch = self.logged_batch();
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
        for (s, v) in stmts {
            batch.append_statement(s);
            values.push(v);
        }
        self.session
            .batch(&batch, values)
            .await
            .map_err(|e| exec_error(what, e))?;
        Ok(())
    }

    pub(super) async fn media_put(&self, m: MediaRecord) -> Result<()> {
        let info = serde_json::to_string(&m).map_err(Error::internal)?;
        let at = CqlTimestamp(m.created_at);
        let st = &self.media;
        self.media_batch(
            "recording a media upload",
            vec![
                (
                    st.put.clone(),
                    Box::new((m.media_id.clone(), id(m.uploader), at, info)),
                ),
                (
                    st.unsent_put.clone(),
                    Box::new((m.unsent_shard(), at, m.media_id.clone())),
                ),
            ],
        )
        .await
    }

    pub(super) async fn media_get(&self, media_id: &str) -> Result<Option<MediaRecord>> {
        let r = self
            .exec("reading a media", &self.media.get, (media_id,))
            .await?;
        let row = rows_of::<(Option<String>,)>("reading a media", r)?
            .into_iter()
            .next();
        let mut m: MediaRecord = match row {
            Some((Some(info),)) => serde_json::from_str(&info)
                .map_err(|e| Error::internal(format!("bad media row: {e}")))?,
            _ => return Ok(None),
        };
        // Only videos have renditions: other media cost no second read.
        if m.content_type.starts_with("video/") {
            let r = self
                .exec(
                    "reading a media's renditions",
                    &self.media.renditions_get,
                    (media_id,),
                )
                .await?;
            if let Some((Some(info),)) =
                rows_of::<(Option<String>,)>("reading a media's renditions", r)?
                    .into_iter()
                    .next()
            {
                m.renditions = Some(
                    serde_json::from_str(&info)
                        .map_err(|e| Error::internal(format!("bad media_renditions row: {e}")))?,
                );
            }
        }
        Ok(Some(m))
    }

    /// Upsert; a job finishing after its media was collected leaves a row nobody reads
    /// (collection runs on uploads a day old, jobs last minutes).
    pub(super) async fn media_renditions_put(&self, media_id: &str, r: &Renditions) -> Result<()> {
        let info = serde_json::to_string(r).map_err(Error::internal)?;
        self.exec(
            "recording a media's renditions",
            &self.media.renditions_put,
            (media_id, info),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn media_link(&self, m: &MediaRecord, chat_id: ChatId) -> Result<()> {
        let st = &self.media;
        self.media_batch(
            "recording where a media was sent",
            vec![
                (st.link.clone(), Box::new((m.media_id.clone(), id(chat_id)))),
                (
                    st.unsent_delete.clone(),
                    Box::new((
                        m.unsent_shard(),
                        CqlTimestamp(m.created_at),
                        m.media_id.clone(),
                    )),
                ),
            ],
        )
        .await
    }

    pub(super) async fn media_chat_ids(&self, media_id: &str) -> Result<Vec<ChatId>> {
        let r = self
            .exec(
                "reading where a media was sent",
                &self.media.chats,
                (media_id,),
            )
            .await?;
        Ok(rows_of::<(i64,)>("reading where a media was sent", r)?
            .into_iter()
            .map(|(c,)| c as u64)
            .collect())
    }

    pub(super) async fn media_unsent(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<MediaRecord>> {
        let mut out = Vec::new();
        for shard in 0..UNSENT_SHARDS {
            if out.len() >= limit {
                break;
            }
            let n = (limit - out.len()).min(i32::MAX as usize) as i32;
            let r = self
                .exec(
                    "listing unsent media",
                    &self.media.unsent_list,
                    (shard, CqlTimestamp(before_ms), n),
                )
                .await?;
            for (at, media_id) in rows_of::<(CqlTimestamp, String)>("listing unsent media", r)? {
                match self.media_get(&media_id).await? {
                    Some(m) => out.push(m),
                    // The metadata is gone already (a collector stopped half-way): drop the
                    // index entry so it is not listed again.
                    None => {
                        tracing::warn!(media_id, "unsent index names a missing media; dropping it");
                        self.exec(
                            "dropping a stale unsent entry",
                            &self.media.unsent_delete,
                            (shard, at, media_id.as_str()),
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn media_delete(&self, m: &MediaRecord) -> Result<()> {
        let st = &self.media;
        self.media_batch(
            "deleting a media",
            vec![
                (st.delete.clone(), Box::new((m.media_id.clone(),))),
                (st.chats_delete.clone(), Box::new((m.media_id.clone(),))),
                (
                    st.renditions_delete.clone(),
                    Box::new((m.media_id.clone(),)),
                ),
                (
                    st.unsent_delete.clone(),
                    Box::new((
                        m.unsent_shard(),
                        CqlTimestamp(m.created_at),
                        m.media_id.clone(),
                    )),
                ),
            ],
        )
        .await
    }
}
