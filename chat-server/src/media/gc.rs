//! The orphan collector: uploads never sent in a message, and tus uploads never finished,
//! are deleted (blobs, then metadata) once older than `--media-orphan-age`. Every server with
//! clients runs it; collectors racing on one media both delete it, which is harmless.

use super::{MediaService, tus_http};
use crate::error::{Error, Result};
use crate::model::now_ms;
use crate::state::AppState;
use futures::TryStreamExt;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Collect every `--media-gc-interval` until the server stops.
pub async fn run(st: Arc<AppState>) {
    let every = Duration::from_secs(st.cfg.media.media_gc_interval);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = st.stop.cancelled() => break,
        }
        match collect(&st).await {
            Ok((0, 0)) => {}
            Ok((media, uploads)) => {
                tracing::info!(media, uploads, "media orphan collection")
            }
            Err(e) => tracing::warn!(cause = %e, "media orphan collection failed; retrying later"),
        }
    }
}

/// One pass: returns (media deleted, unfinished uploads deleted).
pub async fn collect(st: &AppState) -> Result<(usize, usize)> {
    let Some(blobs) = st.media.as_deref() else {
        return Ok((0, 0));
    };
    let cutoff = now_ms() - st.cfg.media.media_orphan_age as i64 * 1000;
    let mut media = 0;
    loop {
        let batch = st.store.unsent_media(cutoff, 100).await?;
        let n = batch.len();
        for m in batch {
            // Blobs first: metadata without blobs would be served as 404 anyway, but blobs
            // without metadata would never be found again.
            blobs.delete_blobs(&m.media_id).await?;
            st.store.delete_media(&m).await?;
            media += 1;
        }
        if n < 100 || st.stop.is_cancelled() {
            break;
        }
    }
    let uploads = collect_uploads(blobs, cutoff).await?;
    Ok((media, uploads))
}

/// tus uploads whose newest object is older than `cutoff` (finished ones too: their info
/// object is only kept for late HEADs).
async fn collect_uploads(media: &MediaService, cutoff: i64) -> Result<usize> {
    let prefix = object_store::path::Path::from("uploads");
    let metas: Vec<_> = media
        .blobs
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| Error::internal(format!("media blob store: {e}")))?;
    let mut newest: HashMap<String, i64> = HashMap::new();
    for m in metas {
        let mut parts = m.location.parts();
        let (Some(_), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        let t = m.last_modified.timestamp_millis();
        let e = newest.entry(id.as_ref().to_string()).or_insert(t);
        *e = (*e).max(t);
    }
    let mut n = 0;
    for (id, t) in newest {
        if t < cutoff && media.busy_uploads.lock().get(&id).is_none() {
            tus_http::remove(media, &id).await?;
            n += 1;
        }
    }
    Ok(n)
}
