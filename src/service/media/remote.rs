//! Remote media (spec: server-server API, content repository): `mxc://` URIs of other
//! servers, fetched from their federation media endpoints on a client's first request and
//! cached in the media store, so later requests (and requests while the origin is down) are
//! answered from disk.
//!
//! A fetch asks `GET /_matrix/federation/v1/media/{download,thumbnail}/{mediaId}` (signed); a
//! server that does not know that endpoint (`M_UNRECOGNIZED`, see [`falls_back`]) is asked the
//! deprecated `GET /_matrix/media/v3/…/{serverName}/{mediaId}?allow_remote=false` instead. A
//! `Location` answer is followed with a plain GET through the outbound client (same IP
//! policy, same size cap; a few redirects at most); such URLs are never cached, only the bytes.
//!
//! The bytes go into the same content-addressed files as local uploads (one reference in
//! `media_blobs` per cache row), so the same crash-safety holds: the file is durable before
//! the row that names it is committed. Thumbnails are fetched from the origin (it has the
//! original; this server may never need the whole file), in this server's size buckets.
//!
//! Concurrent requests for one item share one fetch; at most [`REMOTE_FETCHES`] fetches run at
//! once, as each holds its whole answer in memory (up to `limits.max_upload_bytes`).

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::StatusCode;
use ruma::ServerName;
use serde::{Deserialize, Serialize};

use super::{check_media_id, multipart, thumbnail, Media, MediaBlobs};
use crate::{
    error::{Error, Result},
    http::router::BoxFuture,
    service::users::now_ms,
    store::{Batch, Record, Table},
    table,
};

table!(
    /// `(server_name, media_id) → RemoteRecord`: remote media fetched and cached.
    pub MediaRemote: "media_remote", (String, String) => RemoteRecord
);
table!(
    /// `(server_name, media_id, bucket) → RemoteRecord`: thumbnails of remote media fetched
    /// from their origin; `bucket` is `"{width}x{height} {crop|scale}"`.
    pub MediaRemoteThumbs: "media_remote_thumbnails", (String, String, String) => RemoteRecord
);

/// A cached remote file (the media or one of its thumbnails).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteRecord {
    pub sha256: String,
    pub size: u64,
    /// As the origin gave it; the download path only ever serves allow-listed types inline.
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// When this copy was fetched: the legacy endpoints' freeze applies to it (spec: for
    /// remote media "newly-uploaded" is the date the cache was populated).
    pub fetched_ms: u64,
}
impl Record for RemoteRecord {}

/// Remote fetches running at once; others wait for a slot (within their time limit).
pub const REMOTE_FETCHES: usize = 2;
/// Longest a whole fetch may take (added to the time the origin may wait for an upload).
pub const REMOTE_TRANSFER_TIME: Duration = Duration::from_secs(120);
/// Room for the multipart framing around the media's bytes.
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// Redirects followed from a `Location` URL.
const MAX_REDIRECTS: usize = 3;

/// What is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Download,
    Thumbnail(thumbnail::Spec),
}

impl Kind {
    fn bucket(spec: thumbnail::Spec) -> String {
        let method = if spec.crop { "crop" } else { "scale" };
        format!("{}x{} {method}", spec.width, spec.height)
    }
}

/// How a transport request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchError {
    /// No answer: DNS, connection, TLS, timeout, the IP policy...
    Transport(String),
    /// The answer is larger than the cap given.
    TooLarge,
    /// The peer answered with an error status (`errcode` when the body was a Matrix error).
    Remote {
        status: StatusCode,
        errcode: Option<String>,
        error: String,
    },
    /// The answer made no sense.
    Response(String),
}

/// The two HTTP clients a fetch uses (the federation client and the plain outbound one);
/// a trait so the fallback and redirect logic can be tested without servers.
pub trait Transport: Send + Sync {
    /// A request to `destination`'s federation API (path-and-query URI), X-Matrix signed when
    /// `sign`. Non-2xx answers are [`FetchError::Remote`].
    fn federation(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
        sign: bool,
        timeout: Duration,
        max_body: usize,
    ) -> BoxFuture<Result<http::Response<Bytes>, FetchError>>;

    /// A plain GET of an absolute URL, redirects not followed (3xx answers are returned).
    fn get(
        &self,
        url: &str,
        timeout: Duration,
        max_body: usize,
    ) -> BoxFuture<Result<http::Response<Bytes>, FetchError>>;
}

/// Whether a failed request to the federation media endpoint means the origin predates it,
/// so the deprecated endpoint is to be asked. The spec names `404 M_UNRECOGNIZED`; servers of
/// that age also answer unknown endpoints with `400 M_UNRECOGNIZED`, `405`, or a 404 that is
/// not a Matrix error at all (a proxy in front of them). `404 M_NOT_FOUND` is a real answer.
pub fn falls_back(err: &FetchError) -> bool {
    match err {
        FetchError::Remote {
            status, errcode, ..
        } => match errcode.as_deref() {
            Some("M_UNRECOGNIZED") => matches!(status.as_u16(), 400 | 404 | 405),
            Some(_) => false,
            None => matches!(status.as_u16(), 404 | 405),
        },
        _ => false,
    }
}

/// The bytes of a fetched file with what the origin said about them.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

fn header(response: &http::Response<Bytes>, name: http::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Bookkeeping of fetches in progress.
pub struct RemoteState {
    /// One cell per item being fetched: every request for it awaits the same fetch.
    inflight: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Result<RemoteRecord>>>>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Default for RemoteState {
    fn default() -> Self {
        RemoteState {
            inflight: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(REMOTE_FETCHES)),
        }
    }
}

/// How a request for remote media may be answered.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// How long the origin may wait for an asynchronous upload.
    pub timeout_ms: u64,
    /// Through the deprecated unauthenticated endpoints (subject to the freeze).
    pub legacy: bool,
    /// Whether a copy not cached yet may be fetched (`allow_remote`).
    pub fetch: bool,
}

fn too_large(max: u64) -> Error {
    Error::new(
        StatusCode::BAD_GATEWAY,
        "M_TOO_LARGE",
        format!("The remote media is larger than this server's limit of {max} bytes"),
    )
}

/// The client's view of a failed fetch from `server`.
fn fetch_error(server: &ServerName, kind: Kind, max: u64, e: FetchError) -> Error {
    match e {
        FetchError::TooLarge => too_large(max),
        FetchError::Transport(why) => Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("Cannot fetch the media from {server}: {why}"),
        ),
        FetchError::Response(why) => Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{server} sent an unusable answer for the media: {why}"),
        ),
        FetchError::Remote {
            status,
            errcode,
            error,
        } => match (status.as_u16(), errcode.as_deref()) {
            (404, _) => Error::not_found(format!("{server} does not have this media")),
            (_, Some("M_NOT_YET_UPLOADED")) => Error::new(
                StatusCode::GATEWAY_TIMEOUT,
                "M_NOT_YET_UPLOADED",
                "The media has not been uploaded to its server yet",
            ),
            (_, Some("M_TOO_LARGE")) => Error::new(
                StatusCode::BAD_GATEWAY,
                "M_TOO_LARGE",
                format!("{server} refuses to serve this media: {error}"),
            ),
            (400, _) if matches!(kind, Kind::Thumbnail(_)) => Error::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("{server} cannot make a thumbnail of this media: {error}"),
            ),
            _ => Error::new(
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!(
                    "{server} answered {status} {}: {error}",
                    errcode.as_deref().unwrap_or("(no Matrix error)")
                ),
            ),
        },
    }
}

/// The query of a federation or legacy request.
fn query(kind: Kind, timeout_ms: u64, legacy: bool) -> String {
    let mut q = format!("timeout_ms={timeout_ms}");
    if let Kind::Thumbnail(spec) = kind {
        let method = if spec.crop { "crop" } else { "scale" };
        q = format!(
            "width={}&height={}&method={method}&{q}",
            spec.width, spec.height
        );
    }
    if legacy {
        // Spec: servers MUST set allow_remote=false when falling back (no routing loops).
        q.push_str("&allow_remote=false");
    }
    q
}

fn get_request(path: String) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .expect("a path-and-query URI built from checked ids is valid")
}

/// Fetches one file from `server`: the federation endpoint first, the deprecated one if the
/// origin does not know it. At most `max` bytes.
pub async fn fetch(
    transport: &dyn Transport,
    server: &ServerName,
    media_id: &str,
    kind: Kind,
    timeout_ms: u64,
    max: usize,
) -> Result<Fetched, FetchError> {
    let time = Duration::from_millis(timeout_ms) + REMOTE_TRANSFER_TIME;
    let endpoint = match kind {
        Kind::Download => "download",
        Kind::Thumbnail(_) => "thumbnail",
    };
    let path = format!(
        "/_matrix/federation/v1/media/{endpoint}/{media_id}?{}",
        query(kind, timeout_ms, false)
    );
    let started = tokio::time::Instant::now();
    let err = match transport
        .federation(
            server,
            get_request(path),
            true,
            time,
            max + MULTIPART_OVERHEAD,
        )
        .await
    {
        Ok(response) => return from_multipart(transport, response, time, max).await,
        Err(e) => e,
    };
    if !falls_back(&err) {
        return Err(err);
    }
    log::debug!("{server} has no federation media endpoint; asking /_matrix/media/v3");
    let path = format!(
        "/_matrix/media/v3/{endpoint}/{server}/{media_id}?{}",
        query(kind, timeout_ms, true)
    );
    let left = time.saturating_sub(started.elapsed());
    let response = transport
        .federation(server, get_request(path), false, left, max)
        .await?;
    Ok(plain_file(&response))
}

/// The file of a plain answer: its body with its `Content-Type` and `Content-Disposition`.
fn plain_file(response: &http::Response<Bytes>) -> Fetched {
    Fetched {
        bytes: response.body().clone(),
        content_type: header(response, http::header::CONTENT_TYPE).filter(|t| !t.is_empty()),
        filename: header(response, http::header::CONTENT_DISPOSITION)
            .and_then(|d| multipart::disposition_filename(&d)),
    }
}

async fn from_multipart(
    transport: &dyn Transport,
    response: http::Response<Bytes>,
    time: Duration,
    max: usize,
) -> Result<Fetched, FetchError> {
    let content_type = header(&response, http::header::CONTENT_TYPE).unwrap_or_default();
    match multipart::parse(&content_type, response.into_body()).map_err(FetchError::Response)? {
        multipart::Payload::File {
            bytes,
            content_type,
            disposition,
        } => {
            if bytes.len() > max {
                return Err(FetchError::TooLarge);
            }
            Ok(Fetched {
                bytes,
                content_type,
                filename: disposition.and_then(|d| multipart::disposition_filename(&d)),
            })
        }
        multipart::Payload::Location(url) => follow(transport, url, time, max).await,
    }
}

/// GETs a `Location` URL, following at most [`MAX_REDIRECTS`] redirects, all within `time`.
async fn follow(
    transport: &dyn Transport,
    mut url: String,
    time: Duration,
    max: usize,
) -> Result<Fetched, FetchError> {
    let deadline = tokio::time::Instant::now() + time;
    for _ in 0..=MAX_REDIRECTS {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let response = transport.get(&url, left, max).await?;
        if response.status().is_redirection() {
            let next = header(&response, http::header::LOCATION)
                .ok_or_else(|| FetchError::Response("a redirect without Location".into()))?;
            url = absolute(&url, &next).ok_or_else(|| {
                FetchError::Response(format!("cannot follow redirect to {next:?}"))
            })?;
            continue;
        }
        if !response.status().is_success() {
            return Err(FetchError::Remote {
                status: response.status(),
                errcode: None,
                error: "the media's Location answered with an error".into(),
            });
        }
        return Ok(plain_file(&response));
    }
    Err(FetchError::Response(format!(
        "more than {MAX_REDIRECTS} redirects from the media's Location"
    )))
}

/// A redirect target relative to `base`: absolute URLs as they are, absolute paths on the
/// same origin; anything else is refused.
fn absolute(base: &str, next: &str) -> Option<String> {
    if next.starts_with("https://") || next.starts_with("http://") {
        return Some(next.to_owned());
    }
    if next.starts_with('/') && !next.starts_with("//") {
        let uri: http::Uri = base.parse().ok()?;
        return Some(format!(
            "{}://{}{next}",
            uri.scheme_str()?,
            uri.authority()?.as_str()
        ));
    }
    None
}

impl Media {
    /// The cached copy of a remote file, if any.
    pub fn cached_remote(
        &self,
        server: &str,
        media_id: &str,
        kind: Kind,
    ) -> Result<Option<RemoteRecord>> {
        let (server, id) = (server.to_owned(), media_id.to_owned());
        Ok(match kind {
            Kind::Download => self.store.get::<MediaRemote>(&(server, id))?,
            Kind::Thumbnail(spec) => {
                self.store
                    .get::<MediaRemoteThumbs>(&(server, id, Kind::bucket(spec)))?
            }
        })
    }

    /// A remote file for a client: the cached copy, else fetched from its server through
    /// `transport` and cached. Thumbnails are asked for in this server's size bucket.
    pub async fn remote(
        &self,
        transport: &dyn Transport,
        server: &str,
        media_id: &str,
        kind: Kind,
        access: Access,
    ) -> Result<RemoteRecord> {
        let unknown = || Error::not_found("Unknown media");
        let server_name = ServerName::parse(server).map_err(|_| unknown())?;
        check_media_id(media_id).map_err(|_| unknown())?;
        let kind = match kind {
            Kind::Thumbnail(s) => Kind::Thumbnail(thumbnail::bucket(s.width, s.height, s.crop)),
            k => k,
        };
        let frozen = |at: u64| access.legacy && self.freeze_ms.is_some_and(|f| at >= f);
        let frozen_error = || {
            Error::not_found(
                "This media is only available through the authenticated /_matrix/client/v1/media endpoints",
            )
        };
        if let Some(record) = self.cached_remote(server, media_id, kind)? {
            if frozen(record.fetched_ms) {
                return Err(frozen_error());
            }
            return Ok(record);
        }
        if !access.fetch {
            return Err(Error::not_found(
                "This remote media is not cached here and allow_remote is false",
            ));
        }
        // A copy fetched now would be new, so frozen for the deprecated endpoints.
        if frozen(now_ms()) {
            return Err(frozen_error());
        }
        let key = format!("{kind:?} {server} {media_id}");
        let cell = {
            let mut map = self
                .remote
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let timeout_ms = access.timeout_ms.min(super::MAX_WAIT_MS);
        let result = cell
            .get_or_init(|| async {
                // A fetch that finished just before this cell was made has cached it.
                if let Some(record) = self.cached_remote(server, media_id, kind)? {
                    return Ok(record);
                }
                self.fetch_and_cache(transport, &server_name, media_id, kind, timeout_ms)
                    .await
            })
            .await
            .clone();
        let mut map = self
            .remote
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        result
    }

    async fn fetch_and_cache(
        &self,
        transport: &dyn Transport,
        server: &ServerName,
        media_id: &str,
        kind: Kind,
        timeout_ms: u64,
    ) -> Result<RemoteRecord> {
        let busy = || {
            Error::new(
                StatusCode::GATEWAY_TIMEOUT,
                "M_UNKNOWN",
                "The server is busy fetching other remote media; try again",
            )
        };
        let _slot = tokio::time::timeout(
            REMOTE_TRANSFER_TIME,
            self.remote.slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| busy())?
        .map_err(|_| Error::unknown("Remote media fetching is shut down"))?;
        let started = std::time::Instant::now();
        let max = usize::try_from(self.max_upload).unwrap_or(usize::MAX);
        let fetched = fetch(transport, server, media_id, kind, timeout_ms, max)
            .await
            .map_err(|e| {
                log::info!("fetching mxc://{server}/{media_id} ({kind:?}) failed: {e:?}");
                fetch_error(server, kind, self.max_upload, e)
            })?;
        let record = RemoteRecord {
            sha256: String::new(),
            size: 0,
            content_type: fetched.content_type,
            filename: fetched.filename,
            fetched_ms: now_ms(),
        };
        let (server_s, id) = (server.to_string(), media_id.to_owned());
        let record = match kind {
            Kind::Download => {
                self.cache_file::<MediaRemote>((server_s, id), record, fetched.bytes)
                    .await?
            }
            Kind::Thumbnail(spec) => {
                self.cache_file::<MediaRemoteThumbs>(
                    (server_s, id, Kind::bucket(spec)),
                    record,
                    fetched.bytes,
                )
                .await?
            }
        };
        log::info!(
            "fetched mxc://{server}/{media_id} ({kind:?}, {} bytes) in {} ms",
            record.size,
            started.elapsed().as_millis()
        );
        Ok(record)
    }

    /// Stores `bytes` as a content file and commits `record` (with the file's hash and size)
    /// under `key`; an existing row wins.
    async fn cache_file<T>(
        &self,
        key: T::Key,
        mut record: RemoteRecord,
        bytes: Bytes,
    ) -> Result<RemoteRecord>
    where
        T: Table<Value = RemoteRecord>,
    {
        let (tmp, sha256, size) = self
            .receive(futures_util::stream::iter([Ok(bytes)]), None)
            .await?;
        record.sha256 = sha256.clone();
        record.size = size;
        let _guard = self.blob_lock.lock().await;
        if let Some(existing) = self.store.get::<T>(&key)? {
            return Ok(existing);
        }
        self.place_blob(tmp, &sha256).await?;
        let mut batch = Batch::new();
        self.stage_blob_ref(&mut batch, &sha256, 1)?;
        batch.expect_absent::<T>(&key);
        batch.put::<T>(&key, &record);
        if let Err(e) = self.store.commit(batch).await {
            if self.store.get::<MediaBlobs>(&sha256)?.is_none() {
                let (files, path) = (self.files.clone(), self.blob_path(&sha256));
                if let Err(e) = super::blocking(move || files.remove(&path)).await {
                    log::warn!("cannot remove unreferenced media file {sha256}: {e}");
                }
            }
            return Err(e.into());
        }
        Ok(record)
    }
}

/// A row of the remote cache.
enum CachedRow {
    Media((String, String)),
    Thumb((String, String, String)),
}

impl Media {
    /// Drops the cached copy of remote media `mxc://server/media_id` and its cached
    /// thumbnails (the next request fetches them again). Returns whether anything was cached.
    pub async fn delete_remote(&self, server: &str, media_id: &str) -> Result<bool> {
        let mut rows = Vec::new();
        let key = (server.to_owned(), media_id.to_owned());
        if self.store.get::<MediaRemote>(&key)?.is_some() {
            rows.push(CachedRow::Media(key.clone()));
        }
        for (k, _) in self
            .store
            .scan_prefix::<MediaRemoteThumbs, _>(&key, usize::MAX)?
        {
            rows.push(CachedRow::Thumb(k));
        }
        Ok(self.drop_cached(rows).await? > 0)
    }

    /// Drops every cached remote file (media and thumbnails) fetched before `before_ms`;
    /// returns how many.
    pub async fn purge_remote_before(&self, before_ms: u64) -> Result<usize> {
        let mut rows = Vec::new();
        for (k, r) in self.store.range::<MediaRemote>(None, false, usize::MAX)? {
            if r.fetched_ms < before_ms {
                rows.push(CachedRow::Media(k));
            }
        }
        for (k, r) in self
            .store
            .range::<MediaRemoteThumbs>(None, false, usize::MAX)?
        {
            if r.fetched_ms < before_ms {
                rows.push(CachedRow::Thumb(k));
            }
        }
        self.drop_cached(rows).await
    }

    /// Deletes cache rows and their files' references, then the files nothing references
    /// any more; returns how many rows were deleted.
    async fn drop_cached(&self, rows: Vec<CachedRow>) -> Result<usize> {
        let guard = self.blob_lock.lock().await;
        let mut batch = Batch::new();
        let mut refs: Vec<(String, i64)> = Vec::new();
        let mut n = 0;
        for row in rows {
            let record = match &row {
                CachedRow::Media(k) => self.store.get::<MediaRemote>(k)?,
                CachedRow::Thumb(k) => self.store.get::<MediaRemoteThumbs>(k)?,
            };
            let Some(record) = record else { continue };
            match &row {
                CachedRow::Media(k) => {
                    batch.expect_value::<MediaRemote>(k, Some(&record));
                    batch.delete::<MediaRemote>(k);
                }
                CachedRow::Thumb(k) => {
                    batch.expect_value::<MediaRemoteThumbs>(k, Some(&record));
                    batch.delete::<MediaRemoteThumbs>(k);
                }
            }
            match refs.iter_mut().find(|(s, _)| *s == record.sha256) {
                Some((_, d)) => *d -= 1,
                None => refs.push((record.sha256, -1)),
            }
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let mut unreferenced = Vec::new();
        for (sha, delta) in &refs {
            if self.stage_blob_ref(&mut batch, sha, *delta)? == 0 {
                unreferenced.push(sha.clone());
            }
        }
        self.store.commit(batch).await?;
        for sha in unreferenced {
            let (files, path) = (self.files.clone(), self.blob_path(&sha));
            if let Err(e) = super::blocking(move || files.remove(&path)).await {
                // Unreferenced now, so swept at the next start.
                log::warn!("cannot remove media file {sha}: {e}");
            }
        }
        drop(guard);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
