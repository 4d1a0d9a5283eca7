//! tus 1.0 handlers under `/v1/media/tus`: OPTIONS (discovery), POST (creation), HEAD
//! (offset), PATCH (append), DELETE (termination), and GET (a JSON status with the media
//! object once complete). Upload state lives in the blob store (`uploads/<id>/…`), so a
//! client may resume on any server of a cluster.
//!
//! Each PATCH is spooled and stored as one part object; a PATCH whose connection breaks keeps
//! what arrived (the part is stored), so the next HEAD reports it and the client resumes
//! from there. After the last byte, the parts are joined and go through the same checks as
//! `POST /v1/media`.

use super::http::MediaState;
use super::tus::{self, TusError, UploadInfo};
use super::{MediaService, blobs, sniff};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::{UserId, now_ms};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use std::time::Duration;

fn h<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn tus_headers() -> HeaderMap {
    let mut m = HeaderMap::new();
    m.insert("tus-resumable", HeaderValue::from_static(tus::VERSION));
    m.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    m
}

/// A protocol error with the tus headers (412 adds `Tus-Version`).
fn refuse(e: TusError) -> Response {
    let mut hm = tus_headers();
    match e {
        TusError::Version => {
            hm.insert("tus-version", HeaderValue::from_static(tus::VERSION));
            let body = Error::invalid(format!("Tus-Resumable must be {}", tus::VERSION)).body();
            (StatusCode::PRECONDITION_FAILED, hm, Json(body)).into_response()
        }
        TusError::Bad(m) => {
            let e = Error::invalid(m);
            (e.status(), hm, Json(e.body())).into_response()
        }
    }
}

fn with_tus(e: Error) -> Response {
    let mut r = e.into_response();
    r.headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(tus::VERSION));
    r
}

/// `OPTIONS /v1/media/tus`
pub async fn options(State(st): State<MediaState>) -> Response {
    let media = match st.service() {
        Ok(m) => m,
        Err(e) => return with_tus(e),
    };
    let mut hm = tus_headers();
    hm.insert("tus-version", HeaderValue::from_static(tus::VERSION));
    hm.insert("tus-extension", HeaderValue::from_static(tus::EXTENSIONS));
    hm.insert("tus-max-size", HeaderValue::from(media.cfg.max_any()));
    (StatusCode::NO_CONTENT, hm).into_response()
}

async fn read_info(media: &MediaService, id: &str) -> Result<Option<UploadInfo>> {
    if !super::record::valid_id(id) {
        return Ok(None);
    }
    match media.blobs.get(&blobs::upload_info_key(id)).await {
        Ok(r) => {
            let b = r.bytes().await.map_err(Error::internal)?;
            serde_json::from_slice(&b)
                .map(Some)
                .map_err(Error::internal)
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::internal(format!("media blob store: {e}"))),
    }
}

async fn write_info(media: &MediaService, id: &str, info: &UploadInfo) -> Result<()> {
    let b = serde_json::to_vec(info).map_err(Error::internal)?;
    media
        .blobs
        .put(&blobs::upload_info_key(id), b.into())
        .await
        .map(|_| ())
        .map_err(|e| Error::internal(format!("media blob store: {e}")))
}

/// The stored parts `(offset, size)` of an upload.
async fn parts(media: &MediaService, id: &str) -> Result<Vec<(u64, u64)>> {
    let prefix = blobs::upload_prefix(id);
    let metas: Vec<_> = media
        .blobs
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| Error::internal(format!("media blob store: {e}")))?;
    Ok(metas
        .iter()
        .filter_map(|m| blobs::part_offset(&m.location).map(|o| (o, m.size)))
        .collect())
}

/// The upload, if it exists and belongs to `me` (others get 404: ids are not disclosed).
async fn owned(media: &MediaService, id: &str, me: UserId) -> Result<UploadInfo> {
    match read_info(media, id).await? {
        Some(i) if i.owner == me => Ok(i),
        _ => Err(Error::not_found(format!("upload {id} does not exist"))),
    }
}

/// Delete everything stored for an upload.
pub async fn remove(media: &MediaService, id: &str) -> Result<()> {
    let prefix = blobs::upload_prefix(id);
    let keys: Vec<_> = media
        .blobs
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| Error::internal(format!("media blob store: {e}")))?;
    for k in keys {
        match media.blobs.delete(&k).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::internal(format!("media blob store: {e}"))),
        }
    }
    Ok(())
}

/// `POST /v1/media/tus`: `Upload-Length`, `Upload-Metadata` (`filetype`). 201 + `Location`.
pub async fn create(
    State(st): State<MediaState>,
    Caller(me): Caller,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = tus::check_resumable(h(&headers, "tus-resumable")) {
        return refuse(e);
    }
    if h(&headers, "upload-defer-length").is_some() {
        return refuse(TusError::Bad(
            "Upload-Defer-Length is not supported: send Upload-Length".into(),
        ));
    }
    let length = match tus::parse_u64("Upload-Length", h(&headers, "upload-length")) {
        Ok(l) => l,
        Err(e) => return refuse(e),
    };
    let meta = match tus::parse_metadata(h(&headers, "upload-metadata")) {
        Ok(m) => m,
        Err(e) => return refuse(e),
    };
    let media = match st.service() {
        Ok(m) => m,
        Err(e) => return with_tus(e),
    };
    let declared = tus::declared_type(&meta);
    if let Err(e) = sniff::check_declared(&declared) {
        return with_tus(e);
    }
    let kind = sniff::declared_kind(&declared);
    if length > media.limit(kind) {
        return with_tus(media.too_large(kind));
    }
    if length == 0 {
        return refuse(TusError::Bad("Upload-Length must be at least 1".into()));
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    let info = UploadInfo {
        owner: me,
        length,
        declared,
        created_at: now_ms(),
        media_id: None,
    };
    if let Err(e) = write_info(media, &id, &info).await {
        return with_tus(e);
    }
    let mut hm = tus_headers();
    hm.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/media/tus/{id}")).expect("ascii"),
    );
    (StatusCode::CREATED, hm).into_response()
}

fn offset_headers(offset: u64, info: &UploadInfo) -> HeaderMap {
    let mut hm = tus_headers();
    hm.insert("upload-offset", HeaderValue::from(offset));
    hm.insert("upload-length", HeaderValue::from(info.length));
    if let Some(m) = &info.media_id
        && let Ok(v) = HeaderValue::from_str(m)
    {
        hm.insert("tern-media-id", v);
    }
    hm
}

/// `HEAD /v1/media/tus/{id}`: `Upload-Offset` and `Upload-Length`.
pub async fn head(
    State(st): State<MediaState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = tus::check_resumable(h(&headers, "tus-resumable")) {
        return refuse(e);
    }
    let r = async {
        let info = owned(st.service()?, &id, me).await?;
        let offset = match info.media_id {
            Some(_) => info.length,
            None => tus::reached(parts(st.service()?, &id).await?),
        };
        Ok::<_, Error>(offset_headers(offset, &info))
    }
    .await;
    match r {
        Ok(hm) => (StatusCode::OK, hm).into_response(),
        Err(e) => with_tus(e),
    }
}

/// `GET /v1/media/tus/{id}` (not part of tus): `{"offset","length","media"}`, `media` being
/// the media object once the upload is complete.
pub async fn status(
    State(st): State<MediaState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    let info = owned(st.service()?, &id, me).await?;
    let (offset, media) = match &info.media_id {
        Some(m) => (info.length, st.store.media(m).await?.map(|r| r.to_json())),
        None => (tus::reached(parts(st.service()?, &id).await?), None),
    };
    Ok(Json(
        serde_json::json!({"offset": offset, "length": info.length, "media": media}),
    ))
}

/// Marks an upload busy on this process while a PATCH runs.
struct Busy<'a>(&'a MediaService, String);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_uploads.lock().remove(&self.1);
    }
}

/// `PATCH /v1/media/tus/{id}`: `Upload-Offset` = the current offset, body
/// `application/offset+octet-stream`. 204 with the new `Upload-Offset`; after the last byte
/// also `Tern-Media-Id`.
pub async fn patch(
    State(st): State<MediaState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = tus::check_resumable(h(&headers, "tus-resumable")) {
        return refuse(e);
    }
    match patch_inner(&st, me, &id, &headers, body).await {
        Ok(hm) => (StatusCode::NO_CONTENT, hm).into_response(),
        Err(e) => with_tus(e),
    }
}

async fn patch_inner(
    st: &MediaState,
    me: UserId,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<HeaderMap> {
    let media = st.service()?;
    let ct = h(headers, "content-type").unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim() != tus::OFFSET_CONTENT_TYPE {
        return Err(Error::UnsupportedMediaType(format!(
            "PATCH bodies must be {}",
            tus::OFFSET_CONTENT_TYPE
        )));
    }
    let claimed = tus::parse_u64("Upload-Offset", h(headers, "upload-offset"))?;
    let mut info = owned(media, id, me).await?;
    if info.media_id.is_some() {
        return Err(Error::Conflict("the upload is already complete".into()));
    }
    if !media.busy_uploads.lock().insert(id.to_string()) {
        return Err(Error::Conflict(
            "another PATCH of this upload is in progress".into(),
        ));
    }
    let _busy = Busy(media, id.to_string());
    let offset = tus::reached(parts(media, id).await?);
    if claimed != offset {
        return Err(Error::Conflict(format!(
            "Upload-Offset is {claimed} but the upload is at {offset}"
        )));
    }
    let remaining = info.length - offset;
    if let Some(len) = h(headers, "content-length").and_then(|v| v.parse::<u64>().ok())
        && len > remaining
    {
        return Err(Error::TooLarge(format!(
            "the body would take the upload past its Upload-Length ({remaining} bytes remain)"
        )));
    }
    // Receive what comes, up to the end of the upload; keep it even if the connection breaks.
    let mut spool = media.spool().await?;
    let idle = Duration::from_secs(media.cfg.media_idle_timeout);
    let mut stream = body.into_data_stream();
    let mut broke = None;
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                broke = Some(format!("no data for {} s", idle.as_secs()));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                broke = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(c))) => c,
        };
        if spool.len + chunk.len() as u64 > remaining {
            return Err(Error::TooLarge(format!(
                "the body takes the upload past its Upload-Length ({remaining} bytes remained)"
            )));
        }
        spool.write(&chunk).await?;
    }
    let got = spool.len;
    if offset == 0 && got > 0 && (spool.can_sniff() || got == info.length) {
        // The first bytes decide the type: refuse a mismatch now, not after 100 MiB.
        if let Err(e) = sniff::resolve(&info.declared, sniff::sniff(&spool.head)) {
            remove(media, id).await?;
            return Err(e);
        }
    }
    if got > 0 {
        spool.finish().await?;
        media
            .put_file(&blobs::upload_part_key(id, offset), &spool.path)
            .await?;
    }
    drop(spool);
    if let Some(why) = broke {
        tracing::info!(upload = id, received = got, cause = %why, "tus PATCH broke off; kept what arrived");
        return Err(Error::invalid(format!(
            "the body broke off after {got} bytes ({why}); they are kept: resume with HEAD"
        )));
    }
    let now_at = offset + got;
    if now_at == info.length {
        let record = finish(st, id, &info).await?;
        info.media_id = Some(record.media_id.clone());
        write_info(media, id, &info).await?;
        // The parts are no longer needed; the info object stays for HEAD/GET until collected.
        for (off, _) in parts(media, id).await? {
            let _ = media.blobs.delete(&blobs::upload_part_key(id, off)).await;
        }
    }
    Ok(offset_headers(now_at, &info))
}

/// Join the parts into one spool file and run it through the upload checks.
async fn finish(st: &MediaState, id: &str, info: &UploadInfo) -> Result<super::MediaRecord> {
    let media = st.service()?;
    let mut ps = parts(media, id).await?;
    ps.sort_unstable();
    let mut spool = media.spool().await?;
    for (off, _) in ps {
        if off >= info.length || off != spool.len {
            continue;
        }
        let mut s = media
            .blobs
            .get(&blobs::upload_part_key(id, off))
            .await
            .map_err(|e| Error::internal(format!("media blob store: {e}")))?
            .into_stream();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| Error::internal(format!("media blob store: {e}")))?;
            spool.write(&chunk).await?;
        }
    }
    if spool.len != info.length {
        return Err(Error::internal(format!(
            "upload {id}: joined {} of {} bytes",
            spool.len, info.length
        )));
    }
    match media
        .ingest(&*st.store, info.owner, &info.declared, spool)
        .await
    {
        Ok(r) => Ok(r),
        Err(e) => {
            // Refused content (type, corrupt, too many pixels): the upload cannot succeed.
            if !matches!(e, Error::Internal(_) | Error::Unavailable(_)) {
                remove(media, id).await?;
            }
            Err(e)
        }
    }
}

/// `DELETE /v1/media/tus/{id}` (termination): 204; the parts are deleted.
pub async fn terminate(
    State(st): State<MediaState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = tus::check_resumable(h(&headers, "tus-resumable")) {
        return refuse(e);
    }
    let r = async {
        owned(st.service()?, &id, me).await?;
        remove(st.service()?, &id).await
    }
    .await;
    match r {
        Ok(()) => (StatusCode::NO_CONTENT, tus_headers()).into_response(),
        Err(e) => with_tus(e),
    }
}
