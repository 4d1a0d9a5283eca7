//! What the background worker makes of a media (pure, unit-tested): which renditions a video
//! gets, the ffmpeg command lines for them and for the poster and the waveform, and the
//! waveform peaks from decoded samples.

use super::record::PEAKS;

/// A rendition rung: its name, the length of its short side and its target video bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    pub name: &'static str,
    pub short_side: u32,
    pub video_bps: u64,
}

/// The ladder, smallest first. H.264 Main + AAC-LC in MP4 with `faststart`: every browser
/// plays it in a plain `<video>`, starting before the download ends.
pub const LADDER: [Rung; 2] = [
    Rung {
        name: "360p",
        short_side: 360,
        video_bps: 700_000,
    },
    Rung {
        name: "720p",
        short_side: 720,
        video_bps: 2_000_000,
    },
];

/// Bitrate of the audio track of a rendition.
pub const AUDIO_BPS: u64 = 96_000;

/// Limits of the transcoder (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Videos at or below this average bitrate get no renditions (a poster only).
    pub min_bitrate: u64,
    /// Longest video transcoded, ms (longer: a poster only).
    pub max_duration_ms: u64,
    /// Most pixels per frame of a video that is decoded at all.
    pub max_pixels: u64,
}

/// What the worker does for one video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub poster: bool,
    pub rungs: Vec<Rung>,
    /// Why no renditions are made, for the log (`None` when there are some).
    pub skipped: Option<String>,
}

/// Average bits per second of `size` bytes lasting `duration_ms`.
pub fn bitrate(size: u64, duration_ms: u64) -> u64 {
    if duration_ms == 0 {
        return 0;
    }
    (size as u128 * 8 * 1000 / duration_ms as u128).min(u64::MAX as u128) as u64
}

/// The work for a video of `width`×`height` (as the container says; `None`: unknown), `size`
/// bytes and `duration_ms`. A rung is made when it is smaller than the source, or the same
/// size at well under the source's bitrate.
pub fn plan(
    width: Option<u32>,
    height: Option<u32>,
    size: u64,
    duration_ms: Option<u64>,
    l: &Limits,
) -> Plan {
    let skip = |why: String, poster: bool| Plan {
        poster,
        rungs: Vec::new(),
        skipped: Some(why),
    };
    let (Some(w), Some(h)) = (width, height) else {
        // No video track size (e.g. an audio-only MP4): decode nothing.
        return skip("no video size in the container".into(), false);
    };
    if w == 0 || h == 0 {
        return skip("no video size in the container".into(), false);
    }
    if w as u64 * h as u64 > l.max_pixels {
        return skip(
            format!(
                "{w}x{h} is more than {} pixels (--media-transcode-max-pixels)",
                l.max_pixels
            ),
            false,
        );
    }
    let Some(d) = duration_ms.filter(|d| *d > 0) else {
        return skip("unknown duration".into(), true);
    };
    if d > l.max_duration_ms {
        return skip(
            format!(
                "longer than {} s (--media-transcode-max-duration)",
                l.max_duration_ms / 1000
            ),
            true,
        );
    }
    let bps = bitrate(size, d);
    if bps <= l.min_bitrate {
        return skip(
            format!(
                "{bps} bit/s is not above {} (--media-transcode-min-bitrate)",
                l.min_bitrate
            ),
            true,
        );
    }
    let short = w.min(h);
    let rungs: Vec<Rung> = LADDER
        .iter()
        .copied()
        .filter(|r| {
            r.short_side < short
                || (r.short_side == short && bps > (r.video_bps + AUDIO_BPS) * 3 / 2)
        })
        .collect();
    let skipped = rungs
        .is_empty()
        .then(|| format!("{w}x{h} at {bps} bit/s is already small"));
    Plan {
        poster: true,
        rungs,
        skipped,
    }
}

/// Longest side of the poster, px.
pub const POSTER_SIDE: u32 = 1280;

/// Where the poster frame is taken: 1 s in, or the middle of shorter videos.
pub fn poster_at_ms(duration_ms: Option<u64>) -> u64 {
    duration_ms.map_or(0, |d| (d / 2).min(1000))
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `ffmpeg` arguments writing one JPEG frame of `input` to `output`.
pub fn poster_args(input: &str, output: &str, at_ms: u64) -> Vec<String> {
    let side = POSTER_SIDE;
    let mut a: Vec<String> = ["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        .map(String::from)
        .to_vec();
    a.extend(["-ss".into(), secs(at_ms), "-i".into(), input.into()]);
    a.extend([
        "-frames:v".into(),
        "1".into(),
        "-an".into(),
        "-vf".into(),
        format!("scale=w='min({side},iw)':h='min({side},ih)':force_original_aspect_ratio=decrease"),
        "-q:v".into(),
        "3".into(),
        "-f".into(),
        "image2".into(),
        "-c:v".into(),
        "mjpeg".into(),
        output.into(),
    ]);
    a
}

/// `ffmpeg` arguments transcoding `input` to the rung in `output` (H.264/AAC MP4). Portrait
/// videos keep their orientation: the short side is scaled to the rung's.
pub fn rendition_args(input: &str, output: &str, r: &Rung, threads: u32) -> Vec<String> {
    let s = r.short_side;
    let v = r.video_bps;
    let mut a: Vec<String> = ["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        .map(String::from)
        .to_vec();
    a.extend(["-i".into(), input.into()]);
    a.extend([
        "-map".into(),
        "0:v:0".into(),
        "-map".into(),
        "0:a:0?".into(),
        "-vf".into(),
        format!("scale=w='if(gt(iw,ih),-2,{s})':h='if(gt(iw,ih),{s},-2)'"),
        "-c:v".into(),
        "libx264".into(),
        "-preset".into(),
        "veryfast".into(),
        "-profile:v".into(),
        "main".into(),
        "-pix_fmt".into(),
        "yuv420p".into(),
        "-b:v".into(),
        v.to_string(),
        "-maxrate".into(),
        (v * 3 / 2).to_string(),
        "-bufsize".into(),
        (v * 2).to_string(),
        "-c:a".into(),
        "aac".into(),
        "-b:a".into(),
        AUDIO_BPS.to_string(),
        "-ac".into(),
        "2".into(),
        "-threads".into(),
        threads.max(1).to_string(),
        "-movflags".into(),
        "+faststart".into(),
        "-f".into(),
        "mp4".into(),
        output.into(),
    ]);
    a
}

/// Sample rate the waveform is decoded at (mono, signed 16-bit).
pub const PEAKS_RATE: u32 = 8000;

/// Longest stretch of audio decoded for the waveform, s.
pub const PEAKS_MAX_SECONDS: u32 = 1800;

/// `ffmpeg` arguments decoding `input` to raw mono s16le PCM on stdout.
pub fn pcm_args(input: &str) -> Vec<String> {
    let mut a: Vec<String> = ["-nostdin", "-hide_banner", "-loglevel", "error"]
        .map(String::from)
        .to_vec();
    a.extend([
        "-i".into(),
        input.into(),
        "-vn".into(),
        "-t".into(),
        PEAKS_MAX_SECONDS.to_string(),
        "-ac".into(),
        "1".into(),
        "-ar".into(),
        PEAKS_RATE.to_string(),
        "-f".into(),
        "s16le".into(),
        "-".into(),
    ]);
    a
}

/// [`PEAKS`] values 0–255 from raw s16le mono PCM: the loudest sample of each of `PEAKS`
/// equal stretches, scaled so that the loudest stretch is 255 (a quiet recording still shows
/// its shape). Silence (or nothing) is all zeros.
pub fn peaks(pcm: &[u8]) -> Vec<u8> {
    let samples: Vec<u16> = pcm
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]).unsigned_abs())
        .collect();
    let mut out = [0u16; PEAKS];
    if samples.is_empty() {
        return vec![0; PEAKS];
    }
    for (i, bucket) in out.iter_mut().enumerate() {
        let from = i * samples.len() / PEAKS;
        let to = ((i + 1) * samples.len() / PEAKS)
            .max(from + 1)
            .min(samples.len());
        if from < samples.len() {
            *bucket = samples[from..to].iter().copied().max().unwrap_or(0);
        }
    }
    let top = out.iter().copied().max().unwrap_or(0);
    if top == 0 {
        return vec![0; PEAKS];
    }
    out.iter()
        .map(|&p| ((p as u32 * 255 + top as u32 / 2) / top as u32) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        min_bitrate: 1_000_000,
        max_duration_ms: 600_000,
        max_pixels: 3840 * 2160,
    };

    fn names(p: &Plan) -> Vec<&str> {
        p.rungs.iter().map(|r| r.name).collect()
    }

    #[test]
    fn ladder_follows_size_and_bitrate() {
        // 1080p at 8 Mbit/s: both rungs.
        let p = plan(Some(1920), Some(1080), 8_000_000, Some(8000), &L);
        assert_eq!(names(&p), ["360p", "720p"]);
        assert!(p.poster && p.skipped.is_none());
        // 720p at 5 Mbit/s: 360p, and 720p because the source is well above its bitrate.
        let p = plan(Some(1280), Some(720), 5_000_000, Some(8000), &L);
        assert_eq!(names(&p), ["360p", "720p"]);
        // 720p at 2 Mbit/s: only 360p.
        let p = plan(Some(1280), Some(720), 2_000_000, Some(8000), &L);
        assert_eq!(names(&p), ["360p"]);
        // Portrait phone video: the short side decides.
        let p = plan(Some(1080), Some(1920), 8_000_000, Some(8000), &L);
        assert_eq!(names(&p), ["360p", "720p"]);
        // Small or low-bitrate videos: a poster only.
        let p = plan(Some(640), Some(360), 1_100_000, Some(8000), &L);
        assert!(p.rungs.is_empty() && p.poster && p.skipped.is_some());
        let p = plan(Some(1920), Some(1080), 100_000, Some(8000), &L);
        assert!(p.rungs.is_empty() && p.poster);
    }

    #[test]
    fn limits_are_kept() {
        let p = plan(Some(1920), Some(1080), 800_000_000, Some(900_000), &L);
        assert!(p.rungs.is_empty() && p.poster, "too long: poster only");
        let p = plan(Some(7680), Some(4320), 8_000_000, Some(8000), &L);
        assert!(
            p.rungs.is_empty() && !p.poster,
            "too many pixels: nothing decoded"
        );
        let p = plan(None, None, 8_000_000, Some(8000), &L);
        assert!(!p.poster);
        let p = plan(Some(1920), Some(1080), 8_000_000, None, &L);
        assert!(p.rungs.is_empty() && p.poster);
    }

    #[test]
    fn bitrate_and_poster_time() {
        assert_eq!(bitrate(1_000_000, 8000), 1_000_000);
        assert_eq!(bitrate(5, 0), 0);
        assert_eq!(poster_at_ms(Some(600)), 300);
        assert_eq!(poster_at_ms(Some(60_000)), 1000);
        assert_eq!(poster_at_ms(None), 0);
        assert_eq!(secs(1500), "1.500");
    }

    #[test]
    fn command_lines() {
        let a = rendition_args("in.mp4", "out.mp4", &LADDER[0], 2);
        let s = a.join(" ");
        assert!(s.contains("-c:v libx264") && s.contains("-c:a aac"), "{s}");
        assert!(
            s.contains("+faststart") && s.ends_with("-f mp4 out.mp4"),
            "{s}"
        );
        assert!(s.contains("if(gt(iw,ih),-2,360)"), "{s}");
        let p = poster_args("in.mp4", "p.jpg", 1000).join(" ");
        assert!(
            p.contains("-ss 1.000 -i in.mp4") && p.contains("-frames:v 1"),
            "{p}"
        );
        let c = pcm_args("v.ogg").join(" ");
        assert!(c.contains("-ac 1 -ar 8000 -f s16le -"), "{c}");
    }

    #[test]
    fn peaks_are_scaled_buckets() {
        assert_eq!(peaks(&[]), vec![0; PEAKS]);
        assert_eq!(peaks(&[0; 1000]), vec![0; PEAKS]);
        // A ramp: rising peaks, the last one 255.
        let pcm: Vec<u8> = (0..6400i32)
            .flat_map(|i| ((i * 5) as i16).to_le_bytes())
            .collect();
        let p = peaks(&pcm);
        assert_eq!(p.len(), PEAKS);
        assert_eq!(p[PEAKS - 1], 255);
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
        assert!(p[0] < 10);
        // Fewer samples than buckets still gives PEAKS values.
        let p = peaks(&(-300i16).to_le_bytes());
        assert_eq!(p.len(), PEAKS);
        assert_eq!(p[0], 255);
        // i16::MIN does not overflow.
        let p = peaks(&i16::MIN.to_le_bytes());
        assert_eq!(p[0], 255);
    }
}
