//! The metadata of an uploaded media object, as the store keeps it and as messages carry it.

use crate::model::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A served variant besides the main object (the thumbnail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantInfo {
    pub content_type: String,
    pub size: u64,
    pub etag: String,
}

/// One uploaded media object. Written once, when the upload is complete; never changed (what
/// the background worker makes later is kept apart, in [`Renditions`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    pub media_id: String,
    pub uploader: UserId,
    /// What is served (after sniffing; for images the re-encoded format).
    pub content_type: String,
    /// Bytes of the served main object.
    pub size: u64,
    /// Strong validator of the main object (hex SHA-256 prefix, without quotes).
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<VariantInfo>,
    /// Voice/audio waveform: [`PEAKS`] values 0–255 (loudest bucket = 255), computed at upload
    /// when ffmpeg is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peaks: Option<Vec<u8>>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Poster and renditions of a video, made after the upload (the store keeps them in their
    /// own row and fills this in when reading; never part of the upload's own row).
    #[serde(skip)]
    pub renditions: Option<Renditions>,
}

/// Number of waveform peaks of a voice note.
pub const PEAKS: usize = 64;

/// A `pending` job that has not finished after this long is taken as lost (e.g. cut short by a
/// restart): the media is reported as not processing any more.
pub const PENDING_STALE_MS: i64 = 3600 * 1000;

/// Where the background processing of a video stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenditionState {
    /// Queued or running.
    Pending,
    /// Finished; `poster`/`variants` hold what was made (possibly nothing: below thresholds).
    Ready,
    /// ffmpeg failed or ran out of time; whatever was made before is kept, the original plays.
    Failed,
}

/// A lower-bitrate copy of a video (H.264/AAC MP4), served as `?variant=<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendition {
    /// `360p`, `720p`: also its blob key under the media's folder.
    pub name: String,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    /// Average bits per second (size over duration).
    pub bitrate: u64,
    pub size: u64,
    pub etag: String,
}

/// A video's poster (a JPEG frame), served as `?variant=poster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poster {
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub size: u64,
    pub etag: String,
}

/// What the background worker made of a video. Replaced as a whole on each update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renditions {
    pub state: RenditionState,
    /// When the job was queued (ms since the epoch).
    pub queued_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poster: Option<Poster>,
    #[serde(default)]
    pub variants: Vec<Rendition>,
}

impl Renditions {
    pub fn pending(now: i64) -> Self {
        Renditions {
            state: RenditionState::Pending,
            queued_at: now,
            poster: None,
            variants: Vec::new(),
        }
    }

    /// Whether a client should expect more (a job queued or running, not yet stale).
    pub fn processing(&self, now: i64) -> bool {
        self.state == RenditionState::Pending && now - self.queued_at < PENDING_STALE_MS
    }
}

/// Names a served object may have besides `main` and `thumbnail`: `poster` and rendition
/// names (lowercase letters and digits, at most 16).
pub fn valid_variant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 16
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// Partitions of the "never sent" index in the distributed store.
pub const UNSENT_SHARDS: i32 = 16;

impl MediaRecord {
    /// The client-facing object: the `POST /v1/media` answer and a message's `media`.
    pub fn to_json(&self) -> Value {
        self.to_json_at(crate::model::now_ms())
    }

    /// [`Self::to_json`] as of `now` (ms): `processing` depends on the time.
    pub fn to_json_at(&self, now: i64) -> Value {
        let url = format!("/v1/media/{}", self.media_id);
        let mut v = json!({
            "media_id": self.media_id,
            "url": url,
            "content_type": self.content_type,
            "size": self.size,
        });
        let o = v.as_object_mut().expect("object");
        if let Some(w) = self.width {
            o.insert("width".into(), json!(w));
        }
        if let Some(h) = self.height {
            o.insert("height".into(), json!(h));
        }
        if let Some(d) = self.duration_ms {
            o.insert("duration_ms".into(), json!(d));
        }
        if self.thumbnail.is_some() {
            o.insert(
                "thumbnail_url".into(),
                json!(format!("{url}?variant=thumbnail")),
            );
        }
        if let Some(p) = &self.peaks {
            o.insert("peaks".into(), json!(p));
        }
        if self.content_type.starts_with("video/") {
            // Always listed for video, so "none (yet)" is explicit.
            let r = self.renditions.as_ref();
            let variants: Vec<Value> = r
                .map(|r| r.variants.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|v| {
                    json!({
                        "name": v.name,
                        "content_type": v.content_type,
                        "width": v.width,
                        "height": v.height,
                        "bitrate": v.bitrate,
                        "size": v.size,
                        "url": format!("{url}?variant={}", v.name),
                    })
                })
                .collect();
            o.insert("variants".into(), Value::Array(variants));
            if let Some(p) = r.and_then(|r| r.poster.as_ref()) {
                o.insert(
                    "poster".into(),
                    json!({
                        "url": format!("{url}?variant=poster"),
                        "content_type": p.content_type,
                        "width": p.width,
                        "height": p.height,
                    }),
                );
            }
            if r.is_some_and(|r| r.processing(now)) {
                o.insert("processing".into(), json!(true));
            }
        }
        v
    }

    /// The stored object named by a `?variant=` value other than `main`: its content type,
    /// size and etag (`None`: this media has no such variant).
    pub fn variant(&self, name: &str) -> Option<(String, u64, String)> {
        if name == "thumbnail" {
            return self
                .thumbnail
                .as_ref()
                .map(|t| (t.content_type.clone(), t.size, t.etag.clone()));
        }
        let r = self.renditions.as_ref()?;
        if name == "poster" {
            return r
                .poster
                .as_ref()
                .map(|p| (p.content_type.clone(), p.size, p.etag.clone()));
        }
        r.variants
            .iter()
            .find(|v| v.name == name)
            .map(|v| (v.content_type.clone(), v.size, v.etag.clone()))
    }

    /// The partition of the "never sent" index this media is listed in.
    pub fn unsent_shard(&self) -> i32 {
        let h = self
            .media_id
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
        (h % UNSENT_SHARDS as u32) as i32
    }
}

/// Media ids are 32 lowercase hex digits (a UUIDv7); anything else is not an id.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_follows_the_protocol() {
        let m = MediaRecord {
            media_id: "0192aa".into(),
            uploader: 1,
            content_type: "image/jpeg".into(),
            size: 10,
            etag: "ab".into(),
            width: Some(4),
            height: Some(3),
            duration_ms: None,
            thumbnail: Some(VariantInfo {
                content_type: "image/jpeg".into(),
                size: 2,
                etag: "cd".into(),
            }),
            peaks: None,
            created_at: 0,
            renditions: None,
        };
        let v = m.to_json();
        assert_eq!(v["url"], "/v1/media/0192aa");
        assert_eq!(v["thumbnail_url"], "/v1/media/0192aa?variant=thumbnail");
        assert_eq!(v["width"], 4);
        assert!(v.get("duration_ms").is_none());
        let back: MediaRecord = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!((0..UNSENT_SHARDS).contains(&m.unsent_shard()));
        assert!(v.get("variants").is_none(), "images have no renditions");
    }

    #[test]
    fn video_lists_its_renditions_and_processing_state() {
        let mut m = MediaRecord {
            media_id: "0192aa".into(),
            uploader: 1,
            content_type: "video/mp4".into(),
            size: 10,
            etag: "ab".into(),
            width: Some(1280),
            height: Some(720),
            duration_ms: Some(2000),
            thumbnail: None,
            peaks: None,
            created_at: 0,
            renditions: None,
        };
        let v = m.to_json_at(5);
        assert_eq!(v["variants"], json!([]));
        assert!(v.get("poster").is_none() && v.get("processing").is_none());
        m.renditions = Some(Renditions::pending(0));
        assert_eq!(m.to_json_at(5)["processing"], true);
        assert!(m.to_json_at(PENDING_STALE_MS).get("processing").is_none());
        let r = m.renditions.as_mut().unwrap();
        r.state = RenditionState::Ready;
        r.poster = Some(Poster {
            content_type: "image/jpeg".into(),
            width: 1280,
            height: 720,
            size: 3,
            etag: "pp".into(),
        });
        r.variants.push(Rendition {
            name: "360p".into(),
            content_type: "video/mp4".into(),
            width: 640,
            height: 360,
            bitrate: 800_000,
            size: 200_000,
            etag: "rr".into(),
        });
        let v = m.to_json_at(5);
        assert!(v.get("processing").is_none());
        assert_eq!(v["poster"]["url"], "/v1/media/0192aa?variant=poster");
        assert_eq!(v["variants"][0]["url"], "/v1/media/0192aa?variant=360p");
        assert_eq!(v["variants"][0]["height"], 360);
        assert_eq!(m.variant("360p").unwrap().1, 200_000);
        assert_eq!(m.variant("poster").unwrap().0, "image/jpeg");
        assert!(m.variant("1080p").is_none());
        // The upload's own row never carries the renditions.
        let row = serde_json::to_string(&m).unwrap();
        assert!(!row.contains("360p"), "{row}");
        assert!(valid_variant_name("360p") && !valid_variant_name("../x"));
    }

    #[test]
    fn ids_are_hex() {
        assert!(valid_id("0192b3c4d5e67f8090a1b2c3d4e5f607"));
        assert!(!valid_id("../../etc/passwd"));
        assert!(!valid_id("0192B3C4D5E67F8090A1B2C3D4E5F607"));
    }
}
