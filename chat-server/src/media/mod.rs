//! Media messages: uploads (`POST /v1/media`, tus), checks, storage and serving of images,
//! voice and video. See `docs/media.md` for the rules as users see them.
//!
//! # Layout
//! - Pure cores, unit-tested without I/O: [`sniff`] (magic bytes, allow-list, declared vs.
//!   actual type), [`range`] (`Range`/`If-None-Match`), [`signing`] (signed URLs),
//!   [`container`] (duration and video size from MP4/WebM/Ogg/MP3/ADTS headers), [`image`]
//!   (pixel limit, re-encoding without metadata, thumbnails), [`tus`] (tus 1.0 header rules).
//! - [`record`]: the metadata the store keeps (`Store::put_media` and friends, in both stores).
//! - [`blobs`]: the `object_store` (local directory or S3) and its key layout.
//! - [`http`]: the handlers — streaming upload with per-kind limits, `GET` with ranges,
//!   ETags and cache headers, signed URLs; [`tus_http`]: resumable uploads.
//! - [`gc`]: the orphan collector (uploads never sent).
//! - [`ladder`] (pure: which renditions, ffmpeg command lines, waveform peaks) and
//!   [`transcode`] (runs ffmpeg under limits: video posters and renditions in a background
//!   worker, voice-note waveforms at upload). ffmpeg is optional.
//!
//! An upload is spooled to a local file while it is counted, hashed and sniffed (nothing is
//! held in memory but images, which are decoded anyway), checked and analysed from that file,
//! then written to the blob store; its metadata is stored last, so a media id that exists in
//! the store always has its blobs.

pub mod blobs;
pub mod config;
pub mod container;
pub mod gc;
pub mod http;
pub mod image;
pub mod ladder;
pub mod range;
pub mod record;
pub mod signing;
pub mod sniff;
pub mod transcode;
pub mod tus;
pub mod tus_http;

#[cfg(test)]
#[path = "../../tests/support/media.rs"]
mod fixtures;

pub use record::{
    MediaRecord, Poster, Rendition, RenditionState, Renditions, UNSENT_SHARDS, VariantInfo,
};

use crate::error::{Error, Result};
use crate::members::Directory;
use crate::model::{ChatId, UserId, now_ms};
use crate::store::Store;
use config::MediaArgs;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use sniff::{Container, Kind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Media must be sent this long before the orphan collector may take it (at most a tenth
/// of the orphan age).
const SEND_MARGIN_MS: i64 = 10 * 60 * 1000;

/// The media service of a server: blob store, limits, URL signer.
pub struct MediaService {
    pub blobs: Arc<dyn ObjectStore>,
    pub cfg: MediaArgs,
    pub signer: signing::Signer,
    spool_dir: PathBuf,
    /// Image decoding is CPU-heavy: at most this many at once.
    cpu: tokio::sync::Semaphore,
    /// tus uploads with a PATCH in progress on this process.
    pub(crate) busy_uploads: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// ffmpeg and the video job queue; `None` when ffmpeg cannot run here.
    pub transcoder: Option<transcode::Transcoder>,
}

impl std::fmt::Debug for MediaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MediaService({})", self.blobs)
    }
}

impl MediaService {
    /// Open the configured media service, or `None` with `--media-disabled`.
    pub fn open_unless_disabled(
        cfg: &MediaArgs,
        data_dir: &Path,
        secret: &[u8],
    ) -> anyhow::Result<Option<std::sync::Arc<Self>>> {
        if cfg.media_disabled {
            tracing::info!("media is off (--media-disabled): /v1/media answers 503");
            return Ok(None);
        }
        Self::open(cfg, data_dir, secret).map(|m| Some(std::sync::Arc::new(m)))
    }

    /// Open the configured blob store and spool directory.
    pub fn open(cfg: &MediaArgs, data_dir: &Path, secret: &[u8]) -> anyhow::Result<Self> {
        let (blobs, what) = blobs::open(cfg, data_dir)?;
        let spool_dir = cfg
            .media_spool_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("media-spool"));
        std::fs::create_dir_all(&spool_dir).map_err(|e| {
            anyhow::anyhow!(
                "creating the media spool directory {}: {e}",
                spool_dir.display()
            )
        })?;
        // Spooled files older than an hour are leftovers of a crash (the directory may be
        // shared by several processes: younger files may be someone's upload in progress).
        if let Ok(entries) = std::fs::read_dir(&spool_dir) {
            let hour = std::time::Duration::from_secs(3600);
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > hour));
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        tracing::info!(store = %what, "media blobs");
        Ok(MediaService {
            blobs,
            cfg: cfg.clone(),
            signer: signing::Signer::new(secret),
            spool_dir,
            cpu: tokio::sync::Semaphore::new(2),
            busy_uploads: Default::default(),
            transcoder: transcode::Transcoder::open(&cfg.media_ffmpeg, cfg.media_transcode_jobs),
        })
    }

    /// The size limit of a kind (`None`: not known yet, the largest).
    pub fn limit(&self, kind: Option<Kind>) -> u64 {
        match kind {
            Some(Kind::Image) => self.cfg.media_max_image_bytes,
            Some(Kind::Audio) => self.cfg.media_max_audio_bytes,
            Some(Kind::Video) => self.cfg.media_max_video_bytes,
            None => self.cfg.max_any(),
        }
    }

    pub fn too_large(&self, kind: Option<Kind>) -> Error {
        let limit = self.limit(kind);
        Error::TooLarge(match kind {
            Some(k) => format!("{} uploads are limited to {limit} bytes", k.as_str()),
            None => format!("uploads are limited to {limit} bytes"),
        })
    }

    /// A new spool file (deleted when dropped).
    pub async fn spool(&self) -> Result<Spool> {
        let path = self
            .spool_dir
            .join(uuid::Uuid::now_v7().simple().to_string());
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::internal(format!("media spool {}: {e}", path.display())))?;
        Ok(Spool {
            path,
            file: Some(file),
            len: 0,
            sha: Sha256::new(),
            head: Vec::with_capacity(sniff::SNIFF_BYTES),
        })
    }

    /// Check, analyse and store a completely received upload; record its metadata in `store`.
    pub async fn ingest(
        &self,
        store: &dyn Store,
        uploader: UserId,
        declared: &str,
        mut spool: Spool,
    ) -> Result<MediaRecord> {
        spool.finish().await?;
        let container = sniff::sniff(&spool.head);
        let (content_type, kind) = sniff::resolve(declared, container)?;
        let container: Container = container.expect("resolve checked it");
        if spool.len > self.limit(Some(kind)) {
            return Err(self.too_large(Some(kind)));
        }
        if spool.len == 0 {
            return Err(Error::invalid("the upload is empty"));
        }
        let media_id = uuid::Uuid::now_v7().simple().to_string();
        let mut record = MediaRecord {
            media_id: media_id.clone(),
            uploader,
            content_type: content_type.to_string(),
            size: spool.len,
            etag: hex16(&spool.sha.clone().finalize()),
            width: None,
            height: None,
            duration_ms: None,
            thumbnail: None,
            peaks: None,
            created_at: now_ms(),
            renditions: None,
        };
        match kind {
            Kind::Image => {
                let bytes = tokio::fs::read(&spool.path)
                    .await
                    .map_err(Error::internal)?;
                let limits = image::ImageLimits {
                    max_pixels: self.cfg.media_max_pixels,
                    thumbnail_side: self.cfg.media_thumbnail_size,
                };
                let _permit = self.cpu.acquire().await.map_err(Error::internal)?;
                let p =
                    tokio::task::spawn_blocking(move || image::process(&bytes, container, &limits))
                        .await
                        .map_err(Error::internal)??;
                record.width = Some(p.width);
                record.height = Some(p.height);
                record.size = p.main.len() as u64;
                record.etag = hex16(&Sha256::digest(&p.main));
                record.thumbnail = Some(VariantInfo {
                    content_type: p.thumbnail_type.to_string(),
                    size: p.thumbnail.len() as u64,
                    etag: hex16(&Sha256::digest(&p.thumbnail)),
                });
                self.put(&blobs::main_key(&media_id), p.main).await?;
                self.put(&blobs::thumbnail_key(&media_id), p.thumbnail)
                    .await?;
            }
            Kind::Audio | Kind::Video => {
                let path = spool.path.clone();
                let info = tokio::task::spawn_blocking(move || {
                    let mut f = std::fs::File::open(path)?;
                    container::probe(container, &mut f)
                })
                .await
                .map_err(Error::internal)?
                .map_err(|e| {
                    Error::UnsupportedMediaType(format!(
                        "the {} is corrupt or truncated: {e}",
                        kind.as_str()
                    ))
                })?;
                record.duration_ms = info.duration_ms;
                if kind == Kind::Video {
                    record.width = info.width;
                    record.height = info.height;
                } else if self.transcoder.is_some() {
                    let _permit = self.cpu.acquire().await.map_err(Error::internal)?;
                    record.peaks = transcode::peaks(self, &spool.path, &media_id).await;
                }
                self.put_file(&blobs::main_key(&media_id), &spool.path)
                    .await?;
            }
        }
        store.put_media(record.clone()).await?;
        if kind == Kind::Video
            && let Some(t) = self.transcoder.as_ref().filter(|t| t.makes_renditions())
        {
            let pending = Renditions::pending(now_ms());
            store.set_media_renditions(&media_id, &pending).await?;
            if t.enqueue(&media_id) {
                record.renditions = Some(pending);
            } else {
                tracing::warn!(
                    media_id,
                    "transcode queue full: this video gets no renditions"
                );
                let failed = Renditions {
                    state: RenditionState::Failed,
                    ..pending
                };
                store.set_media_renditions(&media_id, &failed).await?;
                record.renditions = Some(failed);
            }
        }
        tracing::info!(
            media_id,
            uploader,
            content_type,
            size = record.size,
            "media uploaded"
        );
        Ok(record)
    }

    pub(crate) async fn put(&self, key: &object_store::path::Path, bytes: Vec<u8>) -> Result<()> {
        use object_store::ObjectStoreExt;
        self.blobs
            .put(key, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| Error::internal(format!("media blob store: {e}")))
    }

    /// Stream a file into the blob store (multipart for large files).
    pub(crate) async fn put_file(&self, key: &object_store::path::Path, path: &Path) -> Result<()> {
        let mut file = tokio::fs::File::open(path).await.map_err(Error::internal)?;
        let mut w = object_store::buffered::BufWriter::new(self.blobs.clone(), key.clone());
        let copied = tokio::io::copy(&mut file, &mut w).await;
        match copied {
            Ok(_) => w
                .shutdown()
                .await
                .map_err(|e| Error::internal(format!("media blob store: {e}"))),
            Err(e) => {
                let _ = w.abort().await;
                Err(Error::internal(format!("media blob store: {e}")))
            }
        }
    }

    /// A fresh path in the spool directory (nothing created).
    pub(crate) fn temp_path(&self, ext: &str) -> PathBuf {
        self.spool_dir
            .join(format!("{}.{ext}", uuid::Uuid::now_v7().simple()))
    }

    /// Copy a blob into a local file.
    pub(crate) async fn download(&self, key: &object_store::path::Path, to: &Path) -> Result<()> {
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        let got = self
            .blobs
            .get(key)
            .await
            .map_err(|e| Error::internal(format!("media blob store: {e}")))?;
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(|e| Error::internal(format!("media spool {}: {e}", to.display())))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::internal(format!("media blob store: {e}")))?;
            file.write_all(&chunk).await.map_err(Error::internal)?;
        }
        file.flush().await.map_err(Error::internal)
    }

    /// Delete a media's blobs — the original, thumbnail, poster and renditions (missing ones
    /// are fine).
    pub async fn delete_blobs(&self, media_id: &str) -> Result<()> {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        let prefix = blobs::media_prefix(media_id);
        let mut keys: Vec<object_store::path::Path> = self
            .blobs
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| Error::internal(format!("media blob store: {e}")))?;
        for k in [blobs::main_key(media_id), blobs::thumbnail_key(media_id)] {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for key in keys {
            match self.blobs.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::internal(format!("media blob store: {e}"))),
            }
        }
        Ok(())
    }
}

/// The first 16 bytes of a digest, hex.
fn hex16(d: &[u8]) -> String {
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// An upload being received into a local file: counted, hashed, its first bytes kept for
/// sniffing. The file is deleted when the spool is dropped.
pub struct Spool {
    pub path: PathBuf,
    file: Option<tokio::fs::File>,
    pub len: u64,
    sha: Sha256,
    pub head: Vec<u8>,
}

impl Spool {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.head.len() < sniff::SNIFF_BYTES {
            let n = (sniff::SNIFF_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
        }
        self.sha.update(chunk);
        self.len += chunk.len() as u64;
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| Error::internal("spool already finished"))?;
        f.write_all(chunk)
            .await
            .map_err(|e| Error::internal(format!("media spool: {e}")))
    }

    /// Whether enough has arrived to sniff.
    pub fn can_sniff(&self) -> bool {
        self.head.len() >= sniff::SNIFF_BYTES
    }

    pub(crate) async fn finish(&mut self) -> Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()
                .await
                .map_err(|e| Error::internal(format!("media spool: {e}")))?;
        }
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Resolve a `media_id` of a message being sent: it must exist, be the sender's own upload,
/// and not be near its orphan deadline. Records the chat it goes to (before the message is
/// stored, so readers can fetch it as soon as they see the message) and returns the `media`
/// object the message carries. `orphan_age_s` is `--media-orphan-age`.
pub async fn attach(
    store: &dyn Store,
    orphan_age_s: u64,
    sender: UserId,
    chat_id: ChatId,
    media_id: &str,
) -> Result<serde_json::Value> {
    let unknown = || {
        Error::invalid(format!(
            "unknown media_id \"{media_id}\": upload it with POST /v1/media first"
        ))
    };
    if !record::valid_id(media_id) {
        return Err(unknown());
    }
    let m = store.media(media_id).await?.ok_or_else(unknown)?;
    if m.uploader != sender {
        return Err(Error::forbidden(
            "a media can only be sent by the user who uploaded it",
        ));
    }
    let age_ms = orphan_age_s as i64 * 1000;
    let deadline = m.created_at + age_ms - SEND_MARGIN_MS.min(age_ms / 10);
    if store.media_chats(media_id).await?.is_empty() && now_ms() > deadline {
        return Err(Error::invalid(format!(
            "media_id \"{media_id}\" was uploaded too long ago and never sent; upload it again"
        )));
    }
    store.link_media(&m, chat_id).await?;
    Ok(m.to_json())
}

/// Whether `user` may read the media: the uploader, or a member of a chat it was sent to.
pub async fn can_read(
    store: &dyn Store,
    directory: &Directory,
    user: UserId,
    m: &MediaRecord,
) -> Result<bool> {
    if m.uploader == user {
        return Ok(true);
    }
    for chat in store.media_chats(&m.media_id).await? {
        if directory.members(chat).await?.contains(user) {
            return Ok(true);
        }
    }
    Ok(false)
}
