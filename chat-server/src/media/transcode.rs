//! The background worker that runs ffmpeg: video posters and lower renditions (queued at
//! upload, run at most `--media-transcode-jobs` at a time), and voice-note waveforms (at
//! upload). What to make and the command lines are [`ladder`](super::ladder)'s; this file
//! runs them under limits and stores the results.
//!
//! Every ffmpeg run gets a wall-clock budget (`--media-transcode-timeout`; killed when it
//! runs out), a CPU-time limit of twice that (`ulimit -t`) and `nice` 10. A failed job is
//! logged and recorded as `failed`; the original stays what is served.

use super::ladder::{self, Rung};
use super::record::{Poster, Rendition, RenditionState, Renditions};
use super::{MediaService, blobs, hex16, sniff::Container};
use crate::error::{Error, Result};
use crate::model::now_ms;
use crate::store::Store;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most videos waiting for a free job slot; more uploads get no renditions (logged).
const QUEUE: usize = 256;

/// A usable ffmpeg, found at start-up.
#[derive(Debug, Clone)]
pub struct Ffmpeg {
    path: String,
    /// Whether it has the H.264 encoder (Debian's has): renditions need it, posters and
    /// waveforms do not.
    pub h264: bool,
}

impl Ffmpeg {
    /// Run `path -encoders`; `None` (and a log line saying what is lost) when it cannot run.
    pub fn detect(path: &str) -> Option<Ffmpeg> {
        let out = std::process::Command::new(path)
            .args(["-hide_banner", "-loglevel", "error", "-encoders"])
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let list = String::from_utf8_lossy(&o.stdout);
                let h264 = list.contains("libx264") && list.contains(" aac ");
                if !h264 {
                    tracing::warn!(
                        ffmpeg = path,
                        "ffmpeg has no libx264/aac encoder: video posters and waveforms only, no renditions"
                    );
                }
                tracing::info!(ffmpeg = path, h264, "media transcoding available");
                Some(Ffmpeg {
                    path: path.to_string(),
                    h264,
                })
            }
            Ok(o) => {
                tracing::warn!(ffmpeg = path, status = %o.status, "ffmpeg does not run: no video posters, renditions or voice waveforms");
                None
            }
            Err(e) => {
                tracing::warn!(ffmpeg = path, cause = %e, "ffmpeg not found: no video posters, renditions or voice waveforms (install it, or set --media-ffmpeg)");
                None
            }
        }
    }

    /// Run ffmpeg with `args` under the budget (wall clock; CPU time twice that; nice 10).
    /// Returns its standard output.
    pub async fn run(&self, args: &[String], budget: Duration) -> Result<Vec<u8>, String> {
        let cpu = (budget.as_secs() * 2).max(1);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(r#"cpu=$1; shift; ulimit -t "$cpu" 2>/dev/null; exec nice -n 10 "$@""#)
            .arg("sh")
            .arg(cpu.to_string())
            .arg(&self.path)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| format!("starting ffmpeg: {e}"))?;
        match tokio::time::timeout(budget, child.wait_with_output()).await {
            Err(_) => Err(format!(
                "ffmpeg ran out of its {} s budget and was killed",
                budget.as_secs()
            )),
            Ok(Err(e)) => Err(format!("ffmpeg: {e}")),
            Ok(Ok(o)) if o.status.success() => Ok(o.stdout),
            Ok(Ok(o)) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let tail: String = err
                    .chars()
                    .rev()
                    .take(400)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(format!("ffmpeg failed ({}): {}", o.status, tail.trim()))
            }
        }
    }
}

/// The transcoder of a media service: ffmpeg and the job queue.
#[derive(Debug)]
pub struct Transcoder {
    pub ffmpeg: Ffmpeg,
    /// Whether renditions and posters are made here (`--media-transcode-jobs` > 0).
    jobs: usize,
    tx: mpsc::Sender<String>,
    rx: parking_lot::Mutex<Option<mpsc::Receiver<String>>>,
}

impl Transcoder {
    /// `None` when ffmpeg cannot run.
    pub fn open(path: &str, jobs: u32) -> Option<Transcoder> {
        let ffmpeg = Ffmpeg::detect(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        Some(Transcoder {
            ffmpeg,
            jobs: jobs as usize,
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
        })
    }

    /// Whether uploaded videos get a job.
    pub fn makes_renditions(&self) -> bool {
        self.jobs > 0
    }

    /// Queue a video; `false` when the queue is full.
    pub fn enqueue(&self, media_id: &str) -> bool {
        self.tx.try_send(media_id.to_string()).is_ok()
    }
}

/// Waveform peaks of an audio file, or `None` (logged) when ffmpeg fails.
pub async fn peaks(media: &MediaService, path: &Path, media_id: &str) -> Option<Vec<u8>> {
    let t = media.transcoder.as_ref()?;
    let budget = Duration::from_secs(media.cfg.media_transcode_timeout.min(60));
    let started = Instant::now();
    match t
        .ffmpeg
        .run(&ladder::pcm_args(&path.to_string_lossy()), budget)
        .await
    {
        Ok(pcm) => {
            let p = ladder::peaks(&pcm);
            tracing::debug!(
                media_id,
                ms = started.elapsed().as_millis() as u64,
                "waveform"
            );
            Some(p)
        }
        Err(e) => {
            tracing::warn!(media_id, cause = %e, "no waveform for this audio");
            None
        }
    }
}

/// Run queued jobs, at most `--media-transcode-jobs` at once, until `stop` fires (running
/// ffmpeg processes are killed then; their media stay `pending` until that goes stale).
pub async fn run(media: Arc<MediaService>, store: Arc<dyn Store>, stop: CancellationToken) {
    let Some(t) = media.transcoder.as_ref() else {
        return;
    };
    let Some(mut rx) = t.rx.lock().take() else {
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(t.jobs.max(1)));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = stop.cancelled() => break,
        };
        let id = tokio::select! {
            id = rx.recv() => match id { Some(id) => id, None => break },
            _ = stop.cancelled() => break,
        };
        while running.try_join_next().is_some() {}
        let (media, store) = (media.clone(), store.clone());
        running.spawn(async move {
            job(&media, &*store, &id).await;
            drop(permit);
        });
    }
    running.shutdown().await;
}

/// One video: poster, then each rendition, recording progress after each.
async fn job(media: &MediaService, store: &dyn Store, media_id: &str) {
    let started = Instant::now();
    let m = match store.media(media_id).await {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(media_id, cause = %e, "transcode: reading the media failed");
            return;
        }
    };
    let mut r = m
        .renditions
        .clone()
        .unwrap_or_else(|| Renditions::pending(now_ms()));
    let outcome = make(media, store, &m, &mut r).await;
    r.state = match &outcome {
        Ok(()) => RenditionState::Ready,
        Err(_) => RenditionState::Failed,
    };
    let ms = started.elapsed().as_millis() as u64;
    match &outcome {
        Ok(()) => tracing::info!(
            media_id,
            ms,
            poster = r.poster.is_some(),
            variants = r.variants.len(),
            "video processed"
        ),
        Err(e) => tracing::warn!(
            media_id,
            ms,
            cause = %e,
            variants = r.variants.len(),
            "video processing failed; the original is served"
        ),
    }
    if let Err(e) = store.set_media_renditions(media_id, &r).await {
        tracing::warn!(media_id, cause = %e, "transcode: recording the result failed");
    }
}

/// A spool-directory file removed when dropped.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn make(
    media: &MediaService,
    store: &dyn Store,
    m: &super::MediaRecord,
    r: &mut Renditions,
) -> Result<()> {
    let t = media
        .transcoder
        .as_ref()
        .ok_or_else(|| Error::internal("no transcoder"))?;
    let plan = ladder::plan(
        m.width,
        m.height,
        m.size,
        m.duration_ms,
        &media.cfg.transcode_limits(),
    );
    if let Some(why) = &plan.skipped {
        tracing::info!(media_id = m.media_id, why, "no renditions for this video");
    }
    if !plan.poster && plan.rungs.is_empty() {
        return Ok(());
    }
    let budget = Duration::from_secs(media.cfg.media_transcode_timeout);
    let input = Temp(media.temp_path("in"));
    media
        .download(&blobs::main_key(&m.media_id), &input.0)
        .await?;
    let input_s = input.0.to_string_lossy().to_string();
    if plan.poster {
        let out = Temp(media.temp_path("jpg"));
        let args = ladder::poster_args(
            &input_s,
            &out.0.to_string_lossy(),
            ladder::poster_at_ms(m.duration_ms),
        );
        t.ffmpeg.run(&args, budget).await.map_err(Error::internal)?;
        let bytes = tokio::fs::read(&out.0)
            .await
            .map_err(|e| Error::internal(format!("ffmpeg wrote no poster: {e}")))?;
        let (width, height) =
            image::ImageReader::with_format(std::io::Cursor::new(&bytes), image::ImageFormat::Jpeg)
                .into_dimensions()
                .map_err(|e| Error::internal(format!("the poster is no JPEG: {e}")))?;
        r.poster = Some(Poster {
            content_type: "image/jpeg".into(),
            width,
            height,
            size: bytes.len() as u64,
            etag: hex16(&Sha256::digest(&bytes)),
        });
        media
            .put(&blobs::variant_key(&m.media_id, "poster"), bytes)
            .await?;
        // Clients see the poster while the renditions are made.
        store.set_media_renditions(&m.media_id, r).await?;
    }
    if !t.ffmpeg.h264 {
        return Ok(());
    }
    for rung in &plan.rungs {
        let v = rendition(media, t, &input_s, &m.media_id, rung, budget).await?;
        r.variants.push(v);
        store.set_media_renditions(&m.media_id, r).await?;
    }
    Ok(())
}

async fn rendition(
    media: &MediaService,
    t: &Transcoder,
    input: &str,
    media_id: &str,
    rung: &Rung,
    budget: Duration,
) -> Result<Rendition> {
    let started = Instant::now();
    let out = Temp(media.temp_path("mp4"));
    let args = ladder::rendition_args(input, &out.0.to_string_lossy(), rung, 2);
    t.ffmpeg.run(&args, budget).await.map_err(Error::internal)?;
    let path = out.0.clone();
    let (info, size, sha) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(&path)?;
        let info = super::container::probe(Container::Mp4, &mut f)?;
        f.rewind()?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            h.update(&buf[..n]);
        }
        Ok::<_, std::io::Error>((info, size, h.finalize()))
    })
    .await
    .map_err(Error::internal)?
    .map_err(|e| Error::internal(format!("ffmpeg wrote no usable {}: {e}", rung.name)))?;
    media
        .put_file(&blobs::variant_key(media_id, rung.name), &out.0)
        .await?;
    let v = Rendition {
        name: rung.name.to_string(),
        content_type: "video/mp4".into(),
        width: info.width.unwrap_or(0),
        height: info.height.unwrap_or(0),
        bitrate: ladder::bitrate(size, info.duration_ms.unwrap_or(0)),
        size,
        etag: hex16(&sha),
    };
    tracing::info!(
        media_id,
        rendition = rung.name,
        width = v.width,
        height = v.height,
        bitrate = v.bitrate,
        ms = started.elapsed().as_millis() as u64,
        "rendition made"
    );
    Ok(v)
}
