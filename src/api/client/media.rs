//! Content repository endpoints (spec: client-server API, content repository): the
//! authenticated `/_matrix/client/v1/media/*` forms, the deprecated unauthenticated
//! `/_matrix/media/v3/*` downloads (frozen for media newer than `media.legacy_download_freeze`),
//! and the uploads, which only exist under `/_matrix/media`.
//!
//! Other servers' media is fetched over federation on first request and served from the
//! cache afterwards (`service::media::remote`), with the same headers as local media.
//!
//! Uploads read their body as a stream (no buffering, limit `limits.max_upload_bytes`);
//! downloads stream the file, honouring single `Range` requests. Every served file carries the
//! security headers of the spec's "serving inline content" section.

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use warp::Reply;

use crate::{
    error::{Error, Result},
    http::{json_value as json_response, Auth, Incoming, Outgoing, Response, Router},
    service::{
        media::{
            remote::{Access, Kind},
            thumbnail, UploadMeta,
        },
        Services,
    },
};

pub const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";

/// Content types served with `Content-Disposition: inline` (spec: serving inline content).
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// How long a download waits for an asynchronous upload unless `timeout_ms` says otherwise.
const DEFAULT_WAIT_MS: u64 = 20_000;

pub fn routes(router: &mut Router) {
    router.raw_streaming(
        Method::POST,
        "/_matrix/media/v3/upload",
        Auth::Required,
        true,
        |s, i| upload(s, i, false),
    );
    router.raw_streaming(
        Method::PUT,
        "/_matrix/media/v3/upload/{serverName}/{mediaId}",
        Auth::Required,
        true,
        |s, i| upload(s, i, true),
    );
    router.raw(
        Method::POST,
        "/_matrix/media/v1/create",
        Auth::Required,
        create,
    );
    for path in [
        "/_matrix/client/v1/media/config",
        "/_matrix/media/v3/config",
    ] {
        router.raw(Method::GET, path, Auth::Required, config);
    }
    for (prefix, legacy) in [
        ("/_matrix/client/v1/media", false),
        ("/_matrix/media/v3", true),
    ] {
        let auth = if legacy { Auth::None } else { Auth::Required };
        for path in [
            format!("{prefix}/download/{{serverName}}/{{mediaId}}"),
            format!("{prefix}/download/{{serverName}}/{{mediaId}}/{{fileName}}"),
        ] {
            router.raw_streaming(Method::GET, &path, auth, false, move |s, i| {
                download(s, i, legacy)
            });
        }
        let path = format!("{prefix}/thumbnail/{{serverName}}/{{mediaId}}");
        router.raw_streaming(Method::GET, &path, auth, false, move |s, i| {
            thumbnail(s, i, legacy)
        });
    }
}

/// The query string's parameters, decoded.
fn query(incoming: &Incoming) -> Vec<(String, String)> {
    crate::http::query::pairs(incoming.request.uri().query().unwrap_or_default()).collect()
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn header_str(incoming: &Incoming, name: header::HeaderName) -> Option<&str> {
    incoming
        .request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
}

async fn upload(services: Arc<Services>, mut incoming: Incoming, to_id: bool) -> Result<Outgoing> {
    let user = incoming.ctx.authed()?.user_id.clone();
    let q = query(&incoming);
    let declared_len = match header_str(&incoming, header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| Error::invalid_param("Invalid Content-Length"))?,
        ),
        None => None,
    };
    let meta = UploadMeta {
        content_type: header_str(&incoming, header::CONTENT_TYPE).map(str::to_owned),
        filename: param(&q, "filename").map(str::to_owned),
        declared_len,
    };
    let media_id = if to_id {
        let server = &incoming.path_args[0];
        if server != services.config.server_name.as_str() {
            return Err(Error::forbidden(
                "Cannot upload to another server's media id",
            ));
        }
        Some(incoming.path_args[1].clone())
    } else {
        None
    };
    let body = incoming
        .body_stream
        .take()
        .ok_or_else(|| Error::unknown("The upload body is not available"))?;
    let id = services
        .media
        .upload(&user, media_id.as_deref(), meta, body)
        .await?;
    let body = if to_id {
        json!({})
    } else {
        json!({ "content_uri": services.media.mxc(&id) })
    };
    Ok(Outgoing::Buffered(json_response(StatusCode::OK, body)))
}

async fn create(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let user = &incoming.ctx.authed()?.user_id;
    let (id, expires) = services.media.create_pending(user).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "content_uri": services.media.mxc(&id), "unused_expires_at": expires }),
    ))
}

async fn config(services: Arc<Services>, _incoming: Incoming) -> Result<Response> {
    Ok(json_response(
        StatusCode::OK,
        json!({ "m.upload.size": services.media.max_upload() }),
    ))
}

fn timeout_ms(q: &[(String, String)]) -> Result<u64> {
    match param(q, "timeout_ms") {
        None => Ok(DEFAULT_WAIT_MS),
        Some(v) => v
            .parse()
            .map_err(|_| Error::invalid_param("timeout_ms must be a non-negative integer")),
    }
}

/// Whether the media of `server` is this server's own.
fn is_local(services: &Services, server: &str) -> bool {
    server == services.config.server_name.as_str()
}

/// How a request may reach remote media: the authenticated endpoints always fetch; the
/// deprecated ones only with `allow_remote` (default true) and subject to the freeze.
fn remote_access(q: &[(String, String)], legacy: bool) -> Result<Access> {
    Ok(Access {
        timeout_ms: timeout_ms(q)?,
        legacy,
        fetch: !legacy || param(q, "allow_remote") != Some("false"),
    })
}

async fn download(services: Arc<Services>, incoming: Incoming, legacy: bool) -> Result<Outgoing> {
    let q = query(&incoming);
    let (server, media_id) = (&incoming.path_args[0], &incoming.path_args[1]);
    let mut file = if is_local(&services, server) {
        let record = services
            .media
            .get(server, media_id, timeout_ms(&q)?, legacy)
            .await?;
        ServedFile {
            path: services.media.blob_path(&record.sha256),
            size: record.size,
            content_type: record.content_type,
            filename: record.filename,
        }
    } else {
        let transport = services.media_transport();
        let record = services
            .media
            .remote(
                &transport,
                server,
                media_id,
                Kind::Download,
                remote_access(&q, legacy)?,
            )
            .await?;
        ServedFile {
            path: services.media.blob_path(&record.sha256),
            size: record.size,
            content_type: record.content_type,
            filename: record.filename,
        }
    };
    if let Some(name) = incoming.path_args.get(2) {
        file.filename = Some(name.clone());
    }
    serve(
        header_str(&incoming, header::RANGE).map(str::to_owned),
        file,
    )
    .await
}

/// The `width`, `height` and `method` of a thumbnail request.
pub fn thumbnail_params(q: &[(String, String)]) -> Result<thumbnail::Spec> {
    let dimension = |name: &str| -> Result<u32> {
        let v = param(q, name).ok_or_else(|| Error::missing_param(format!("Missing {name}")))?;
        match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::invalid_param(format!(
                "{name} must be a positive integer"
            ))),
        }
    };
    let (width, height) = (dimension("width")?, dimension("height")?);
    let crop = match param(q, "method").unwrap_or("scale") {
        "scale" => false,
        "crop" => true,
        other => {
            return Err(Error::invalid_param(format!(
                "method must be crop or scale, not {other:?}"
            )))
        }
    };
    Ok(thumbnail::Spec {
        width,
        height,
        crop,
    })
}

/// The file name a thumbnail is served under.
pub fn thumbnail_filename(content_type: Option<&str>) -> String {
    let ext = match content_type.map(essence).as_deref() {
        Some("image/jpeg") => "jpg",
        Some("image/gif") => "gif",
        Some("image/webp") => "webp",
        _ => "png",
    };
    format!("thumbnail.{ext}")
}

async fn thumbnail(services: Arc<Services>, incoming: Incoming, legacy: bool) -> Result<Outgoing> {
    let q = query(&incoming);
    let spec = thumbnail_params(&q)?;
    let (server, media_id) = (&incoming.path_args[0], &incoming.path_args[1]);
    let (sha256, size, content_type) = if is_local(&services, server) {
        let record = services
            .media
            .get(server, media_id, timeout_ms(&q)?, legacy)
            .await?;
        let thumb = services
            .media
            .thumbnail(media_id, &record, spec.width, spec.height, spec.crop)
            .await?;
        (thumb.sha256, thumb.size, Some(thumb.content_type))
    } else {
        let transport = services.media_transport();
        let record = services
            .media
            .remote(
                &transport,
                server,
                media_id,
                Kind::Thumbnail(spec),
                remote_access(&q, legacy)?,
            )
            .await?;
        (record.sha256, record.size, record.content_type)
    };
    let file = ServedFile {
        path: services.media.blob_path(&sha256),
        size,
        filename: Some(thumbnail_filename(content_type.as_deref())),
        content_type,
    };
    serve(
        header_str(&incoming, header::RANGE).map(str::to_owned),
        file,
    )
    .await
}

struct ServedFile {
    path: PathBuf,
    size: u64,
    content_type: Option<String>,
    filename: Option<String>,
}

/// The essence of a content type (`type/subtype`, lower case, no parameters).
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

pub fn is_inline_type(content_type: &str) -> bool {
    INLINE_TYPES.contains(&essence(content_type).as_str())
}

/// RFC 5987 `attr-char`: what may stay unescaped in `filename*`.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `Content-Disposition` per RFC 6266: `inline` for safe types, else `attachment`; a plain
/// ASCII filename as a quoted string, anything else as `filename*=utf-8''…`.
pub fn content_disposition(inline: bool, filename: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    match filename {
        None => kind.to_owned(),
        Some(name) => {
            let plain = name
                .chars()
                .all(|c| (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\');
            if plain {
                format!("{kind}; filename=\"{name}\"")
            } else {
                let encoded = percent_encoding::utf8_percent_encode(name, ATTR_CHAR);
                format!("{kind}; filename*=utf-8''{encoded}")
            }
        }
    }
}

/// The requested byte range of a file of `size` bytes: `None` serves the whole file (no or
/// unusable `Range`, or several ranges), `Some(Err(()))` is unsatisfiable.
fn parse_range(value: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        let n: u64 = end.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        return Some(Ok((size.saturating_sub(n), size - 1)));
    }
    let start: u64 = start.parse().ok()?;
    let end = if end.is_empty() {
        None
    } else {
        Some(end.parse::<u64>().ok()?)
    };
    if end.is_some_and(|e| e < start) {
        return None;
    }
    if start >= size {
        return Some(Err(()));
    }
    Some(Ok((start, end.unwrap_or(size - 1).min(size - 1))))
}

async fn serve(range: Option<String>, file: ServedFile) -> Result<Outgoing> {
    let inline = file.content_type.as_deref().is_some_and(is_inline_type);
    // Only the normalised essence of a listed safe type is ever sent, never the uploaded string:
    // `text/plain;x=1,text/html` would otherwise reach a browser, which takes the last type.
    let content_type = file
        .content_type
        .as_deref()
        .filter(|_| inline)
        .and_then(|t| HeaderValue::from_str(&essence(t)).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let disposition = content_disposition(inline, file.filename.as_deref());
    let range = range.and_then(|r| parse_range(&r, file.size));

    let security = |headers: &mut http::HeaderMap| {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            "cross-origin-resource-policy",
            HeaderValue::from_static("cross-origin"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    };
    let (status, start, len) = match range {
        None => (StatusCode::OK, 0, file.size),
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Some(Err(())) => {
            let mut response = json_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                json!({
                    "errcode": "M_UNKNOWN",
                    "error": format!("The range is outside the file ({} bytes)", file.size),
                }),
            );
            let headers = response.headers_mut();
            security(headers);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            return Ok(Outgoing::Buffered(response));
        }
    };

    let mut handle = tokio::fs::File::open(&file.path).await.map_err(|e| {
        log::error!("media file {} missing: {e}", file.path.display());
        Error::unknown("Cannot read the media")
    })?;
    if start > 0 {
        handle
            .seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|_| Error::unknown("Cannot read the media"))?;
    }
    let mut response = warp::reply::stream(file_stream(handle, len)).into_response();
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{}", start + len - 1, file.size);
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(header::CONTENT_RANGE, v);
        }
    }
    security(headers);
    Ok(Outgoing::Streamed(response))
}

/// `len` bytes of `file` from its current position, in chunks, read by a task that stops as
/// soon as the client goes away.
pub fn file_stream(
    mut file: tokio::fs::File,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    const CHUNK: u64 = 256 * 1024;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left) as usize];
            let item = match file.read(&mut buf).await {
                Ok(0) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            content_disposition(true, Some("cat.png")),
            "inline; filename=\"cat.png\""
        );
        assert_eq!(content_disposition(false, None), "attachment");
        assert_eq!(
            content_disposition(false, Some("naïve \"x\".html")),
            "attachment; filename*=utf-8''na%C3%AFve%20%22x%22.html"
        );
    }
}
