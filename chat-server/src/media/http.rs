//! HTTP handlers of the media API: `POST /v1/media` (streaming upload), `GET /v1/media`
//! (what this server accepts), `GET /v1/media/{id}` (bytes of the original or a variant,
//! ranges, ETag, cache headers; token or signed URL), `GET /v1/media/{id}/info` (the media
//! object as it is now: renditions made since the upload) and `GET /v1/media/{id}/url` (a
//! signed URL).

use super::range::{RangeAnswer, if_range_allows, none_match, parse_range};
use super::{MediaRecord, MediaService, Spool, blobs, record, signing, sniff};
use crate::auth::{self, Auth, Caller};
use crate::error::{Error, Result};
use crate::members::Directory;
use crate::model::UserId;
use crate::store::Store;
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What the media handlers (here and in [`tus_http`](super::tus_http)) use of the server.
#[derive(Clone)]
pub struct MediaState {
    /// `None` where media is off (`--media-disabled`): the handlers answer 503.
    pub media: Option<Arc<MediaService>>,
    pub auth: Auth,
    /// Media metadata, and the chats each media was sent to.
    pub store: Arc<dyn Store>,
    /// Chat members, for who may read a media.
    pub directory: Arc<Directory>,
}

impl MediaState {
    /// The media service, or `unavailable` with what to do when media is off here.
    pub fn service(&self) -> Result<&MediaService> {
        self.media.as_deref().ok_or_else(|| {
            Error::Unavailable(
                "media is turned off on this server (--media-disabled / CHAT_MEDIA_DISABLED; on \
                 Kubernetes: the ChatCluster has no spec.media): configure a media store to \
                 upload or fetch files"
                    .into(),
            )
        })
    }
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Receive `body` into `spool`, enforcing the limit of the declared kind, then (once sniffed)
/// of the actual kind, and refusing a type mismatch as soon as the first bytes are in. A body
/// that stalls for the idle timeout is abandoned (408).
pub(crate) async fn receive(
    media: &MediaService,
    declared: &str,
    body: Body,
    spool: &mut Spool,
    mut limit: u64,
) -> Result<()> {
    let mut kind = sniff::declared_kind(declared);
    let idle = Duration::from_secs(media.cfg.media_idle_timeout);
    let mut stream = body.into_data_stream();
    let mut sniffed = false;
    loop {
        let next = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| {
                Error::invalid(format!(
                    "no data for {} s; the upload was abandoned",
                    idle.as_secs()
                ))
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Error::invalid(format!("the upload broke off: {e}")))?;
        if spool.len + chunk.len() as u64 > limit {
            return Err(media.too_large(kind));
        }
        spool.write(&chunk).await?;
        if !sniffed && spool.can_sniff() {
            sniffed = true;
            let (_, k) = sniff::resolve(declared, sniff::sniff(&spool.head))?;
            kind = Some(k);
            limit = limit.min(media.limit(kind));
            if spool.len > limit {
                return Err(media.too_large(kind));
            }
        }
    }
    Ok(())
}

/// `POST /v1/media`: the raw bytes, `Content-Type` declared. 201 with the media object.
pub async fn upload(
    State(st): State<MediaState>,
    Caller(me): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let media = st.service()?;
    let declared = header_str(&headers, header::CONTENT_TYPE)
        .unwrap_or("application/octet-stream")
        .to_string();
    sniff::check_declared(&declared)?;
    let kind = sniff::declared_kind(&declared);
    let limit = media.limit(kind);
    // Refuse before reading a byte when the length is announced.
    if let Some(len) =
        header_str(&headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(media.too_large(kind));
    }
    let mut spool = media.spool().await?;
    receive(media, &declared, body, &mut spool, limit).await?;
    let record = media.ingest(&*st.store, me, &declared, spool).await?;
    Ok((StatusCode::CREATED, Json(record.to_json())).into_response())
}

/// Which served object a request names: `main` (the default), `thumbnail`, `poster` or a
/// rendition name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variant(String);

impl Variant {
    fn parse(q: &HashMap<String, String>) -> Result<Self> {
        match q.get("variant").map(String::as_str) {
            None | Some("") | Some("main") => Ok(Variant("main".into())),
            Some(v) if record::valid_variant_name(v) => Ok(Variant(v.into())),
            Some(other) => Err(Error::invalid(format!(
                "variant {other:?}: use \"thumbnail\", \"poster\", a rendition name from \
                 `variants`, or leave it out"
            ))),
        }
    }
    fn is_main(&self) -> bool {
        self.0 == "main"
    }
    fn as_str(&self) -> &str {
        &self.0
    }
    /// The variant's blob and what is served, or 404.
    fn of(&self, m: &MediaRecord) -> Result<(object_store::path::Path, String, u64, String)> {
        if self.is_main() {
            return Ok((
                blobs::main_key(&m.media_id),
                m.content_type.clone(),
                m.size,
                m.etag.clone(),
            ));
        }
        let (ct, size, etag) = m.variant(&self.0).ok_or_else(|| {
            Error::not_found(format!("media {} has no {} (yet)", m.media_id, self.0))
        })?;
        let key = if self.0 == "thumbnail" {
            blobs::thumbnail_key(&m.media_id)
        } else {
            blobs::variant_key(&m.media_id, &self.0)
        };
        Ok((key, ct, size, etag))
    }
}

fn now_secs() -> i64 {
    crate::model::now_ms() / 1000
}

/// The caller from `Authorization: Bearer` or `?token=`.
fn caller(st: &MediaState, headers: &HeaderMap, q: &HashMap<String, String>) -> Result<UserId> {
    let token = auth::bearer(
        header_str(headers, header::AUTHORIZATION),
        q.get("token").map(String::as_str),
    )
    .ok_or_else(|| {
        Error::Unauthenticated(
            "missing token: send Authorization: Bearer <jwt>, or use a signed URL".into(),
        )
    })?;
    st.auth.verify(&token)
}

async fn load(st: &MediaState, id: &str) -> Result<MediaRecord> {
    let missing = || Error::not_found(format!("media {id} does not exist"));
    if !record::valid_id(id) {
        return Err(missing());
    }
    st.store.media(id).await?.ok_or_else(missing)
}

async fn require_read(st: &MediaState, me: UserId, m: &MediaRecord) -> Result<()> {
    if super::can_read(&*st.store, &st.directory, me, m).await? {
        Ok(())
    } else {
        Err(Error::forbidden(
            "only the uploader and members of chats this media was sent to may read it",
        ))
    }
}

/// `GET /v1/media/{id}[?variant=thumbnail]`: with a token, or a signed URL
/// (`expires` + `sig`).
pub async fn get_media(
    State(st): State<MediaState>,
    method: axum::http::Method,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    st.service()?;
    let variant = Variant::parse(&q)?;
    let signed_until = match (q.get("expires"), q.get("sig")) {
        (Some(exp), Some(sig)) => {
            let exp: i64 = exp
                .parse()
                .map_err(|_| Error::invalid("expires must be a Unix time in seconds"))?;
            if !st
                .service()?
                .signer
                .verify(&id, variant.as_str(), exp, sig, now_secs())
            {
                return Err(Error::forbidden(
                    "the signed URL is not valid for this media, or has expired",
                ));
            }
            Some(exp)
        }
        (None, None) => None,
        _ => return Err(Error::invalid("a signed URL needs both expires and sig")),
    };
    let me = match signed_until {
        Some(_) => None,
        None => Some(caller(&st, &headers, &q)?),
    };
    let m = load(&st, &id).await?;
    if let Some(me) = me {
        require_read(&st, me, &m).await?;
    }
    let (key, content_type, size, etag) = variant.of(&m)?;
    let etag = format!("\"{etag}\"");
    let cache = match signed_until {
        // Shared caches (a CDN) may keep it until the URL expires.
        Some(exp) => format!("public, max-age={}, immutable", (exp - now_secs()).max(0)),
        None => "private, max-age=31536000, immutable".to_string(),
    };
    let mut out = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).map_err(Error::internal);
    out.insert(header::ETAG, hv(&etag)?);
    out.insert(header::CACHE_CONTROL, hv(&cache)?);
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    if none_match(header_str(&headers, header::IF_NONE_MATCH), &etag) {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    let range = if if_range_allows(header_str(&headers, header::IF_RANGE), &etag) {
        parse_range(header_str(&headers, header::RANGE), size)
    } else {
        RangeAnswer::Full
    };
    let (status, start, end) = match range {
        RangeAnswer::Full => (StatusCode::OK, 0, size),
        RangeAnswer::Partial { start, end } => {
            out.insert(
                header::CONTENT_RANGE,
                hv(&format!("bytes {start}-{end}/{size}"))?,
            );
            (StatusCode::PARTIAL_CONTENT, start, end + 1)
        }
        RangeAnswer::Unsatisfiable => {
            out.insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}"))?);
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, out).into_response());
        }
    };
    out.insert(header::CONTENT_TYPE, hv(&content_type)?);
    out.insert(header::CONTENT_LENGTH, hv(&(end - start).to_string())?);
    // HEAD (routed here by axum) needs the headers only: no blob request.
    if size == 0 || method == axum::http::Method::HEAD {
        return Ok((status, out, Body::empty()).into_response());
    }
    let opts = object_store::GetOptions {
        range: Some(object_store::GetRange::Bounded(start..end)),
        ..Default::default()
    };
    let got = st
        .service()?
        .blobs
        .get_opts(&key, opts)
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                Error::not_found(format!("media {id} has no stored bytes (deleted?)"))
            }
            e => Error::internal(format!("media blob store: {e}")),
        })?;
    let stream = got
        .into_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    Ok((status, out, Body::from_stream(stream)).into_response())
}

/// `GET /v1/media/{id}/url[?variant=thumbnail]`: a signed URL for a reader, valid until
/// `expires_at` without a token (shareable with a CDN).
pub async fn signed_url(
    State(st): State<MediaState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>> {
    let media = st.service()?;
    let variant = Variant::parse(&q)?;
    let m = load(&st, &id).await?;
    require_read(&st, me, &m).await?;
    variant.of(&m)?;
    let ttl = media.cfg.media_url_ttl as i64;
    let expires = signing::expiry(now_secs(), ttl, (ttl / 10).max(1));
    let sig = media.signer.sign(&id, variant.as_str(), expires);
    let base = media
        .cfg
        .media_public_url
        .as_deref()
        .unwrap_or("")
        .trim_end_matches('/');
    let mut url = format!("{base}/v1/media/{id}?");
    if !variant.is_main() {
        url.push_str(&format!("variant={}&", variant.as_str()));
    }
    url.push_str(&format!("expires={expires}&sig={sig}"));
    Ok(Json(json!({
        "url": url,
        "expires_at": crate::model::format_ts(expires * 1000),
    })))
}

/// `GET /v1/media/{id}/info`: the media object as it is now (for a reader). A video's
/// `variants` and `poster` appear here as the worker makes them; `processing: true` while it
/// works.
pub async fn info(
    State(st): State<MediaState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    st.service()?;
    let m = load(&st, &id).await?;
    require_read(&st, me, &m).await?;
    let mut v = m.to_json();
    v["uploader"] = json!(m.uploader);
    Ok(Json(v))
}

/// `GET /v1/media`: what this server accepts (for file pickers) and does with media.
pub async fn config(State(st): State<MediaState>, Caller(_me): Caller) -> Result<Response> {
    let media = st.service()?;
    let t = media.transcoder.as_ref();
    let body = json!({
        "accept": sniff::ACCEPTED_TYPES,
        "max_bytes": {
            "image": media.cfg.media_max_image_bytes,
            "audio": media.cfg.media_max_audio_bytes,
            "video": media.cfg.media_max_video_bytes,
        },
        "video_renditions": t.is_some_and(|t| t.makes_renditions() && t.ffmpeg.h264),
        "video_posters": t.is_some_and(|t| t.makes_renditions()),
        "voice_peaks": t.is_some(),
    });
    Ok((
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=300"),
        )],
        Json(body),
    )
        .into_response())
}

/// The media routes. They sit outside the API's request timeout and body limit: uploads are
/// limited per kind while streaming and abandoned after the idle timeout instead.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    MediaState: FromRef<S>,
    Auth: FromRef<S>,
{
    use super::tus_http;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/media", post(upload).get(config))
        .route("/v1/media/{id}", get(get_media))
        .route("/v1/media/{id}/info", get(info))
        .route("/v1/media/{id}/url", get(signed_url))
        .route(
            "/v1/media/tus",
            post(tus_http::create).options(tus_http::options),
        )
        .route(
            "/v1/media/tus/{id}",
            get(tus_http::status)
                .head(tus_http::head)
                .patch(tus_http::patch)
                .delete(tus_http::terminate),
        )
        .layer(DefaultBodyLimit::disable())
}
