//! Where media bytes live: an `object_store` — a local directory (embedded default) or an S3
//! bucket — and the key layout inside it.
//!
//! ```text
//! objects/<media_id>/main        what is served
//! objects/<media_id>/thumbnail   image thumbnail
//! objects/<media_id>/poster      video poster (JPEG)
//! objects/<media_id>/<name>      video rendition (`360p`, `720p`: H.264/AAC MP4)
//! uploads/<upload_id>/info       a tus upload in progress (JSON)
//! uploads/<upload_id>/<offset>   its received parts, offset zero-padded to 20 digits
//! ```

use super::config::MediaArgs;
use object_store::ObjectStore;
use object_store::path::Path;
use std::sync::Arc;

/// The blob store named by the configuration, and a description for the log.
pub fn open(
    args: &MediaArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    if let Some(bucket) = &args.media_s3_bucket {
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&args.media_s3_region);
        if let Some(ep) = &args.media_s3_endpoint {
            b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
        }
        if args.media_s3_allow_http {
            b = b.with_allow_http(true);
        }
        let s3 = b
            .build()
            .map_err(|e| anyhow::anyhow!("media S3 store (bucket {bucket}): {e}"))?;
        let prefix = args.media_s3_prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        let ep = args.media_s3_endpoint.as_deref().unwrap_or("aws");
        return Ok((store, format!("s3://{bucket}/{prefix} via {ep}")));
    }
    let dir = args
        .media_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("media"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("creating the media directory {}: {e}", dir.display()))?;
    let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| anyhow::anyhow!("media directory {}: {e}", dir.display()))?
        .with_automatic_cleanup(true);
    Ok((
        Arc::new(local),
        format!("local directory {}", dir.display()),
    ))
}

pub fn main_key(media_id: &str) -> Path {
    Path::from(format!("objects/{media_id}/main"))
}

pub fn thumbnail_key(media_id: &str) -> Path {
    Path::from(format!("objects/{media_id}/thumbnail"))
}

/// A named variant: `poster` or a rendition (the name is checked by the caller).
pub fn variant_key(media_id: &str, name: &str) -> Path {
    Path::from(format!("objects/{media_id}/{name}"))
}

/// Everything stored for one media.
pub fn media_prefix(media_id: &str) -> Path {
    Path::from(format!("objects/{media_id}"))
}

pub fn upload_prefix(upload_id: &str) -> Path {
    Path::from(format!("uploads/{upload_id}"))
}

pub fn upload_info_key(upload_id: &str) -> Path {
    Path::from(format!("uploads/{upload_id}/info"))
}

pub fn upload_part_key(upload_id: &str, offset: u64) -> Path {
    Path::from(format!("uploads/{upload_id}/{offset:020}"))
}

/// The offset a part key names (`None` for the info object).
pub fn part_offset(key: &Path) -> Option<u64> {
    key.filename()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(main_key("ab").as_ref(), "objects/ab/main");
        let p = upload_part_key("u1", 42);
        assert_eq!(p.as_ref(), "uploads/u1/00000000000000000042");
        assert_eq!(part_offset(&p), Some(42));
        assert_eq!(part_offset(&upload_info_key("u1")), None);
    }
}
