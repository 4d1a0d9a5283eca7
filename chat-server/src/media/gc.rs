//! The orphan collector: uploads never sent in a message, and tus uploads never finished,
//! are deleted (blobs, then metadata) once older than `--media-orphan-age`. Every server with
//! clients runs it; collectors racing on one media both delete it, which is harmless.

use super::{MediaService, tus_http};
use crate::error::{Error, Result};
use crate::model::now_ms;
use crate::store::Store;
use futures::TryStreamExt;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Uploads never sent in a message.
    pub media: usize,
    /// tus uploads never finished (or finished and kept only for late HEADs).
    pub uploads: usize,
}

/// Collect every `--media-gc-interval` until `stop` fires.
pub async fn run(media: Arc<MediaService>, store: Arc<dyn Store>, stop: CancellationToken) {
    let every = Duration::from_secs(media.cfg.media_gc_interval);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => break,
        }
        match collect(&media, &*store, &stop).await {
            Ok(Collected {
                media: 0,
                uploads: 0,
            }) => {}
            Ok(Collected { media, uploads }) => {
                tracing::info!(media, uploads, "media orphan collection")
            }
            Err(e) => tracing::warn!(cause = %e, "media orphan collection failed; retrying later"),
        }
    }
}

/// One pass over what is older than `--media-orphan-age`; stops early (between batches)
/// when `stop` fires.
pub async fn collect(
    blobs: &MediaService,
    store: &dyn Store,
    stop: &CancellationToken,
) -> Result<Collected> {
    let cutoff = now_ms() - blobs.cfg.media_orphan_age as i64 * 1000;
    let mut media = 0;
    loop {
        let batch = store.unsent_media(cutoff, 100).await?;
        let n = batch.len();
        for m in batch {
            // Blobs first: metadata without blobs would be served as 404 anyway, but blobs
            // without metadata would never be found again.
            blobs.delete_blobs(&m.media_id).await?;
            store.delete_media(&m).await?;
            media += 1;
        }
        if n < 100 || stop.is_cancelled() {
            break;
        }
    }
    let uploads = collect_uploads(blobs, cutoff).await?;
    Ok(Collected { media, uploads })
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
