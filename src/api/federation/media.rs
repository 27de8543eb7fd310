//! `GET /_matrix/federation/v1/media/download/{mediaId}` and `…/thumbnail/{mediaId}` (spec:
//! server-server API, content repository): this server's own media for other servers, as a
//! `multipart/mixed` body of two parts, the metadata `{}` and the bytes with their
//! `Content-Type` and `Content-Disposition`. The file is streamed between the framing, never
//! buffered. Media this server only caches from a third server is not served (each server
//! fetches from the origin).

use std::sync::Arc;

use futures_util::StreamExt;
use http::{header, HeaderValue, Method, StatusCode};
use warp::Reply;

use crate::{
    api::client::media::{
        content_disposition, file_stream, is_inline_type, thumbnail_filename, thumbnail_params,
    },
    error::{Error, Result},
    http::{Auth, Incoming, Outgoing, Router},
    service::{media::multipart, Services},
};

/// How long a request waits for an asynchronous upload unless `timeout_ms` says otherwise.
const DEFAULT_WAIT_MS: u64 = 20_000;

pub fn routes(router: &mut Router) {
    router.raw_streaming(
        Method::GET,
        "/_matrix/federation/v1/media/download/{mediaId}",
        Auth::Server,
        false,
        download,
    );
    router.raw_streaming(
        Method::GET,
        "/_matrix/federation/v1/media/thumbnail/{mediaId}",
        Auth::Server,
        false,
        thumbnail,
    );
}

fn query(incoming: &Incoming) -> Vec<(String, String)> {
    crate::http::query::pairs(incoming.request.uri().query().unwrap_or_default()).collect()
}

fn timeout_ms(q: &[(String, String)]) -> Result<u64> {
    match q.iter().find(|(k, _)| k == "timeout_ms") {
        None => Ok(DEFAULT_WAIT_MS),
        Some((_, v)) => v
            .parse()
            .map_err(|_| Error::invalid_param("timeout_ms must be a non-negative integer")),
    }
}

async fn download(services: Arc<Services>, incoming: Incoming) -> Result<Outgoing> {
    let origin = incoming.ctx.origin()?.to_owned();
    let q = query(&incoming);
    let media_id = &incoming.path_args[0];
    let own = services.config.server_name.as_str();
    let record = services
        .media
        .get(own, media_id, timeout_ms(&q)?, false)
        .await?;
    log::debug!("{origin} downloads {}", services.media.mxc(media_id));
    let content_type = record
        .content_type
        .filter(|t| HeaderValue::from_str(t).is_ok())
        .unwrap_or_else(|| "application/octet-stream".into());
    let disposition =
        content_disposition(is_inline_type(&content_type), record.filename.as_deref());
    let path = services.media.blob_path(&record.sha256);
    multipart_file(path, record.size, &content_type, &disposition).await
}

async fn thumbnail(services: Arc<Services>, incoming: Incoming) -> Result<Outgoing> {
    let origin = incoming.ctx.origin()?.to_owned();
    let q = query(&incoming);
    let spec = thumbnail_params(&q)?;
    let media_id = &incoming.path_args[0];
    let own = services.config.server_name.as_str();
    let record = services
        .media
        .get(own, media_id, timeout_ms(&q)?, false)
        .await?;
    let thumb = services
        .media
        .thumbnail(media_id, &record, spec.width, spec.height, spec.crop)
        .await?;
    log::debug!(
        "{origin} gets a thumbnail of {}",
        services.media.mxc(media_id)
    );
    let filename = thumbnail_filename(Some(&thumb.content_type));
    let disposition = content_disposition(true, Some(&filename));
    let path = services.media.blob_path(&thumb.sha256);
    multipart_file(path, thumb.size, &thumb.content_type, &disposition).await
}

/// The two-part answer around the `size` bytes of the file at `path`.
async fn multipart_file(
    path: std::path::PathBuf,
    size: u64,
    content_type: &str,
    disposition: &str,
) -> Result<Outgoing> {
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        log::error!("media file {} missing: {e}", path.display());
        Error::unknown("Cannot read the media")
    })?;
    let boundary = multipart::boundary();
    let head = bytes::Bytes::from(multipart::file_head(&boundary, content_type, disposition));
    let tail = bytes::Bytes::from(multipart::tail(&boundary));
    let length = head.len() as u64 + size + tail.len() as u64;
    let body = futures_util::stream::iter([Ok(head)])
        .chain(file_stream(file, size))
        .chain(futures_util::stream::iter([Ok(tail)]));
    let mut response = warp::reply::stream(body).into_response();
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let value = HeaderValue::from_str(&multipart::content_type(&boundary))
        .map_err(|_| Error::unknown("Cannot frame the media"))?;
    headers.insert(header::CONTENT_TYPE, value);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(Outgoing::Streamed(response))
}
