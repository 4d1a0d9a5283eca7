//! Media configuration (flattened into `ServeConfig`; every flag has a `CHAT_MEDIA_*`
//! variable). The doc comments are the `--help` text.

use clap::Args;
use std::path::PathBuf;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Args)]
pub struct MediaArgs {
    /// Turn media off: no blob store or spool directory is opened, and every `/v1/media…`
    /// request answers 503 `unavailable` saying so. For clusters without media storage (the
    /// operator sets it when a ChatCluster has no `spec.media`).
    #[arg(long, env = "CHAT_MEDIA_DISABLED", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub media_disabled: bool,

    /// Largest image upload, in bytes.
    #[arg(long, env = "CHAT_MEDIA_MAX_IMAGE_BYTES", default_value_t = 16 * MIB)]
    pub media_max_image_bytes: u64,

    /// Largest voice/audio upload, in bytes.
    #[arg(long, env = "CHAT_MEDIA_MAX_AUDIO_BYTES", default_value_t = 16 * MIB)]
    pub media_max_audio_bytes: u64,

    /// Largest video upload, in bytes.
    #[arg(long, env = "CHAT_MEDIA_MAX_VIDEO_BYTES", default_value_t = 100 * MIB)]
    pub media_max_video_bytes: u64,

    /// Most pixels (width × height) of an image; larger ones are refused before decoding
    /// (decompression bombs). All frames of an animated GIF together may have 4× this.
    #[arg(long, env = "CHAT_MEDIA_MAX_PIXELS", default_value_t = 50_000_000)]
    pub media_max_pixels: u64,

    /// Longest side of image thumbnails, in pixels.
    #[arg(long, env = "CHAT_MEDIA_THUMBNAIL_SIZE", default_value_t = 320, value_parser = clap::value_parser!(u32).range(16..=2048))]
    pub media_thumbnail_size: u32,

    /// Directory of the local blob store (used unless --media-s3-bucket is set).
    /// Default: <data-dir>/media.
    #[arg(long, env = "CHAT_MEDIA_DIR")]
    pub media_dir: Option<PathBuf>,

    /// Directory where uploads are spooled while they are checked. Default: <data-dir>/media-spool.
    #[arg(long, env = "CHAT_MEDIA_SPOOL_DIR")]
    pub media_spool_dir: Option<PathBuf>,

    /// S3 bucket for media blobs. When set, blobs go to S3 (any S3-compatible service) instead
    /// of the local directory, whatever --backend is. Credentials come from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the other usual AWS_* variables).
    #[arg(long, env = "CHAT_MEDIA_S3_BUCKET")]
    pub media_s3_bucket: Option<String>,

    /// S3 endpoint URL, for S3-compatible services (MinIO, Ceph, R2…); unset for AWS.
    #[arg(long, env = "CHAT_MEDIA_S3_ENDPOINT")]
    pub media_s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "CHAT_MEDIA_S3_REGION", default_value = "us-east-1")]
    pub media_s3_region: String,

    /// Allow a plain-http S3 endpoint (test setups only).
    #[arg(long, env = "CHAT_MEDIA_S3_ALLOW_HTTP", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub media_s3_allow_http: bool,

    /// Key prefix inside the bucket (several clusters can share one bucket).
    #[arg(long, env = "CHAT_MEDIA_S3_PREFIX", default_value = "tern")]
    pub media_s3_prefix: String,

    /// Lifetime of signed media URLs (`GET /v1/media/{id}/url`), in seconds. Expiries are
    /// rounded up to a tenth of this so that URLs (and CDN cache entries) are shared.
    #[arg(long, env = "CHAT_MEDIA_URL_TTL", default_value_t = 24 * 3600, value_parser = clap::value_parser!(u64).range(60..=30 * 24 * 3600))]
    pub media_url_ttl: u64,

    /// Base URL put in front of signed media URLs, e.g. a CDN whose origin is this server
    /// (`https://cdn.example.com`). Default: relative URLs (`/v1/media/…`).
    #[arg(long, env = "CHAT_MEDIA_PUBLIC_URL")]
    pub media_public_url: Option<String>,

    /// Uploads never sent in a message are deleted after this many seconds. A media must be
    /// sent within this time (minus 10 minutes, or a tenth of it if less) of its upload.
    #[arg(long, env = "CHAT_MEDIA_ORPHAN_AGE", default_value_t = 24 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub media_orphan_age: u64,

    /// How often the orphan collector runs, in seconds.
    #[arg(long, env = "CHAT_MEDIA_GC_INTERVAL", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub media_gc_interval: u64,

    /// An upload that sends no byte for this many seconds is aborted (resume it with tus).
    #[arg(long, env = "CHAT_MEDIA_IDLE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub media_idle_timeout: u64,

    /// The ffmpeg binary for video posters, lower renditions and voice-note waveforms (a path,
    /// or a name looked up in PATH). Optional: when it cannot be run, uploads work as before
    /// and videos list no renditions (`"variants": []`), voice notes no peaks.
    #[arg(long, env = "CHAT_MEDIA_FFMPEG", default_value = "ffmpeg")]
    pub media_ffmpeg: String,

    /// Most transcoding jobs (posters and renditions of one video each) running at once on this
    /// process; more wait in a queue. Each job may use two cores. 0: no transcoding.
    #[arg(long, env = "CHAT_MEDIA_TRANSCODE_JOBS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub media_transcode_jobs: u32,

    /// Wall-clock budget of one ffmpeg run (a poster or one rendition), in seconds; its CPU
    /// time is limited to twice this. ffmpeg is killed when either runs out, and the job fails
    /// (the original stays playable). ffmpeg runs at `nice` 10.
    #[arg(long, env = "CHAT_MEDIA_TRANSCODE_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub media_transcode_timeout: u64,

    /// Videos longer than this many seconds get a poster but no renditions.
    #[arg(long, env = "CHAT_MEDIA_TRANSCODE_MAX_DURATION", default_value_t = 600)]
    pub media_transcode_max_duration: u64,

    /// Videos with more pixels per frame than this are not decoded at all (no poster, no
    /// renditions).
    #[arg(long, env = "CHAT_MEDIA_TRANSCODE_MAX_PIXELS", default_value_t = 3840 * 2160)]
    pub media_transcode_max_pixels: u64,

    /// Videos at or below this average bitrate (bits per second, over the whole file) get a
    /// poster but no lower renditions: they are light enough already.
    #[arg(
        long,
        env = "CHAT_MEDIA_TRANSCODE_MIN_BITRATE",
        default_value_t = 1_000_000
    )]
    pub media_transcode_min_bitrate: u64,
}

impl MediaArgs {
    /// The transcoder's limits.
    pub fn transcode_limits(&self) -> super::ladder::Limits {
        super::ladder::Limits {
            min_bitrate: self.media_transcode_min_bitrate,
            max_duration_ms: self.media_transcode_max_duration.saturating_mul(1000),
            max_pixels: self.media_transcode_max_pixels,
        }
    }

    /// The largest of the per-kind limits (tus uploads and undeclared types start with it).
    pub fn max_any(&self) -> u64 {
        self.media_max_image_bytes
            .max(self.media_max_audio_bytes)
            .max(self.media_max_video_bytes)
    }
}
