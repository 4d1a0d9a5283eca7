//! tus 1.0 resumable uploads (core, creation, termination): the header rules and the upload
//! state, without I/O. The handlers are in [`tus_http`](super::tus_http).

use crate::error::Error;
use crate::model::UserId;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

pub const VERSION: &str = "1.0.0";
pub const EXTENSIONS: &str = "creation,termination";
pub const OFFSET_CONTENT_TYPE: &str = "application/offset+octet-stream";

/// What is known of an upload (stored as `uploads/<id>/info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    pub owner: UserId,
    pub length: u64,
    /// The declared content type (from `Upload-Metadata` `filetype`/`content_type`).
    pub declared: String,
    pub created_at: i64,
    /// Set once the last byte arrived and the media was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
}

/// Why a tus request is refused (mapped to HTTP by the handlers).
#[derive(Debug, PartialEq, Eq)]
pub enum TusError {
    /// 412: not `Tus-Resumable: 1.0.0`.
    Version,
    /// 400 with a reason.
    Bad(String),
}

/// Requests other than OPTIONS must carry `Tus-Resumable: 1.0.0`.
pub fn check_resumable(h: Option<&str>) -> Result<(), TusError> {
    match h {
        Some(v) if v.trim() == VERSION => Ok(()),
        _ => Err(TusError::Version),
    }
}

/// A non-negative integer header (`Upload-Length`, `Upload-Offset`).
pub fn parse_u64(name: &str, h: Option<&str>) -> Result<u64, TusError> {
    let v = h.ok_or_else(|| TusError::Bad(format!("{name} is required")))?;
    v.trim()
        .parse()
        .map_err(|_| TusError::Bad(format!("{name} must be a non-negative integer")))
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs (a key may have no value).
pub fn parse_metadata(h: Option<&str>) -> Result<Vec<(String, String)>, TusError> {
    let Some(h) = h else { return Ok(vec![]) };
    h.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, ' ');
            let key = it.next().unwrap_or_default().to_string();
            let value = match it.next() {
                None => String::new(),
                Some(b64) => {
                    let raw = STANDARD
                        .decode(b64.trim())
                        .map_err(|_| TusError::Bad(format!("Upload-Metadata {key}: bad base64")))?;
                    String::from_utf8(raw)
                        .map_err(|_| TusError::Bad(format!("Upload-Metadata {key}: not UTF-8")))?
                }
            };
            Ok((key, value))
        })
        .collect()
}

/// The declared content type among the metadata (`filetype`, as tus-js-client sends it, or
/// `content_type`/`contentType`/`type`); `application/octet-stream` if none.
pub fn declared_type(meta: &[(String, String)]) -> String {
    ["filetype", "content_type", "contentType", "type"]
        .iter()
        .find_map(|k| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "application/octet-stream".into())
}

/// The offset an upload has reached, from its stored parts `(offset, size)`: parts must chain
/// from 0 without gaps (anything after a gap is ignored and will be overwritten).
pub fn reached(mut parts: Vec<(u64, u64)>) -> u64 {
    parts.sort_unstable();
    let mut at = 0;
    for (off, size) in parts {
        if off == at {
            at += size;
        } else if off > at {
            break;
        }
    }
    at
}

impl From<TusError> for Error {
    fn from(e: TusError) -> Self {
        match e {
            TusError::Version => Error::invalid(format!("Tus-Resumable must be {VERSION}")),
            TusError::Bad(m) => Error::invalid(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_header() {
        assert!(check_resumable(Some("1.0.0")).is_ok());
        assert_eq!(check_resumable(Some("0.2.2")), Err(TusError::Version));
        assert_eq!(check_resumable(None), Err(TusError::Version));
    }

    #[test]
    fn metadata_pairs() {
        let m = parse_metadata(Some(
            "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential, filetype aW1hZ2UvcG5n",
        ))
        .unwrap();
        assert_eq!(
            m[0],
            ("filename".into(), "world_domination_plan.pdf".into())
        );
        assert_eq!(m[1], ("is_confidential".into(), "".into()));
        assert_eq!(declared_type(&m), "image/png");
        assert_eq!(declared_type(&[]), "application/octet-stream");
        assert!(parse_metadata(Some("filetype !!!")).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("Upload-Offset", Some(" 42 ")), Ok(42));
        assert!(parse_u64("Upload-Offset", Some("-1")).is_err());
        assert!(parse_u64("Upload-Length", None).is_err());
    }

    #[test]
    fn offset_is_the_contiguous_prefix() {
        assert_eq!(reached(vec![]), 0);
        assert_eq!(reached(vec![(10, 5), (0, 10)]), 15);
        assert_eq!(reached(vec![(0, 10), (20, 5)]), 10);
        assert_eq!(reached(vec![(5, 5)]), 0);
    }
}
