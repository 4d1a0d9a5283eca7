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

/// One uploaded media object. Written once, when the upload is complete; never changed.
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
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// Partitions of the "never sent" index in the distributed store.
pub const UNSENT_SHARDS: i32 = 16;

impl MediaRecord {
    /// The client-facing object: the `POST /v1/media` answer and a message's `media`.
    pub fn to_json(&self) -> Value {
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
        v
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
            created_at: 0,
        };
        let v = m.to_json();
        assert_eq!(v["url"], "/v1/media/0192aa");
        assert_eq!(v["thumbnail_url"], "/v1/media/0192aa?variant=thumbnail");
        assert_eq!(v["width"], 4);
        assert!(v.get("duration_ms").is_none());
        let back: MediaRecord = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!((0..UNSENT_SHARDS).contains(&m.unsent_shard()));
    }

    #[test]
    fn ids_are_hex() {
        assert!(valid_id("0192b3c4d5e67f8090a1b2c3d4e5f607"));
        assert!(!valid_id("../../etc/passwd"));
        assert!(!valid_id("0192B3C4D5E67F8090A1B2C3D4E5F607"));
    }
}
