//! The media repository (spec: client-server API, content repository): uploads, downloads and
//! thumbnails of local media. See `schema/media.md`.
//!
//! Bytes live in files under `data_dir/media/`, named by their sha256 (`ab/cd/<sha256>`), so
//! identical uploads share one file; the store holds the metadata and a reference count per
//! file. An upload is streamed into `media/tmp/`, hashed on the way, synced, then renamed into
//! place, and only then is its metadata committed: a crash at any point leaves either nothing
//! visible or the complete media. A crash between the rename and the commit leaves an
//! unreferenced file: invisible, and removed by the sweep at the next start ([`Media::recover`]).
//!
//! Durability: the file's bytes are fsynced before the rename, each new fan-out directory is
//! fsynced into its parent, and the directory receiving the rename is fsynced, all before the
//! metadata commit; an fsync error fails the upload. All of it goes through [`files::Files`].

pub mod files;
pub mod multipart;
mod recover;
pub mod remote;
pub mod thumbnail;
mod transport;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use rand::RngExt;
use ruma::{OwnedServerName, UserId};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{
    config::Config,
    error::{Error, Result},
    service::users::now_ms,
    store::{Batch, Record, Store},
    table,
};

table!(
    /// `media_id → MediaRecord`: every complete local upload.
    pub MediaTable: "media", String => MediaRecord
);
table!(
    /// `media_id → PendingRecord`: ids handed out by `/create` and not uploaded yet.
    pub MediaPending: "media_pending", String => PendingRecord
);
table!(
    /// `(user_id, created_ms, media_id) → size`: each user's uploads, oldest first.
    pub MediaByUser: "media_by_user", (String, u64, String) => u64
);
table!(
    /// `user_id → bytes`: the sum of the sizes of the user's uploads (the quota counter).
    pub MediaUsage: "media_usage", String => u64
);
table!(
    /// `sha256 (hex) → references`: how many media and thumbnails use the file.
    pub MediaBlobs: "media_blobs", String => u64
);
table!(
    /// `(media_id, width, height, method) → ThumbRecord`: thumbnails made so far.
    pub MediaThumbs: "media_thumbnails", (String, u64, u64, String) => ThumbRecord
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MediaRecord {
    pub sha256: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub uploader: String,
    pub created_ms: u64,
}
impl Record for MediaRecord {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingRecord {
    pub uploader: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}
impl Record for PendingRecord {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThumbRecord {
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
}
impl Record for ThumbRecord {}

/// How long an id from `/create` stays usable.
pub const PENDING_LIFETIME_MS: u64 = 24 * 3_600_000;
/// How many unused ids from `/create` a user may hold at once.
pub const MAX_PENDING_PER_USER: usize = 16;
/// Longest a download waits for an asynchronous upload.
pub const MAX_WAIT_MS: u64 = 120_000;
/// Longest a thumbnail may take to make.
pub const THUMBNAIL_TIME: Duration = Duration::from_secs(30);
/// Thumbnail jobs run at once. Each holds a decoded image (up to `max_thumbnail_pixels` × 4
/// bytes, 48 MB at the default 12 MP) plus the resized copy: one at a time keeps the peak
/// within what a 512 MB board can spare; other requests wait for the slot (up to
/// [`THUMBNAIL_TIME`]).
pub const THUMBNAIL_JOBS: usize = 1;

/// Metadata given with an upload.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// The declared `Content-Length`, checked before reading anything.
    pub declared_len: Option<u64>,
}

pub struct Media {
    store: Store,
    root: PathBuf,
    files: files::Files,
    server_name: OwnedServerName,
    max_upload: u64,
    quota: u64,
    pub max_pixels: u64,
    freeze_ms: Option<u64>,
    /// Serializes reference-count changes with the file renames and deletions they guard.
    blob_lock: tokio::sync::Mutex<()>,
    /// Bounds concurrent thumbnail jobs (each holds a decoded image in memory).
    thumb_jobs: Arc<tokio::sync::Semaphore>,
    /// Wakes downloads waiting for an asynchronous upload.
    uploaded: tokio::sync::Notify,
    /// `user → bytes` reserved by uploads in progress. Invariant: for every user,
    /// committed usage + reservations ≤ quota, so concurrent uploads cannot together pass it.
    in_flight: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    /// Remote fetches in progress.
    remote: remote::RemoteState,
}

/// Quota bytes an upload in progress holds; released when dropped (after the commit has
/// moved them into the committed usage, or when the upload fails).
struct Reservation {
    user: String,
    held: u64,
    in_flight: Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.user) {
            *n = n.saturating_sub(self.held);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// An owned temporary file removed when dropped, unless kept.
struct TempFile(Option<PathBuf>, files::Files);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: a temporary file left behind is removed at the next start.
            if let Err(e) = self.1.remove(&path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// Runs blocking filesystem work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

impl Media {
    pub fn new(store: Store, config: &Config, server_name: OwnedServerName) -> Self {
        let root = config.data_dir.join("media");
        Self {
            store,
            files: files::Files::new(root.clone()),
            root,
            server_name,
            max_upload: config.limits.max_upload_bytes,
            quota: config.media.quota_bytes_per_user,
            max_pixels: config.media.max_thumbnail_pixels,
            freeze_ms: config.media.legacy_freeze_ms(),
            blob_lock: tokio::sync::Mutex::new(()),
            thumb_jobs: Arc::new(tokio::sync::Semaphore::new(THUMBNAIL_JOBS)),
            uploaded: tokio::sync::Notify::new(),
            in_flight: Arc::default(),
            remote: remote::RemoteState::default(),
        }
    }

    pub fn max_upload(&self) -> u64 {
        self.max_upload
    }

    /// The file holding the bytes with this hash.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root
            .join(&sha256[0..2])
            .join(&sha256[2..4])
            .join(sha256)
    }

    pub fn mxc(&self, media_id: &str) -> String {
        format!("mxc://{}/{media_id}", self.server_name)
    }

    fn quota_exceeded(&self, used: u64, size: u64) -> Error {
        Error::forbidden(format!(
            "Media quota exceeded: {used} of {} bytes used or held by uploads in progress, \
             this upload needs {size}",
            self.quota
        ))
    }

    /// An empty reservation for an upload by `user`.
    fn reservation(&self, user: &UserId) -> Reservation {
        Reservation {
            user: user.to_string(),
            held: 0,
            in_flight: self.in_flight.clone(),
        }
    }

    /// Grows `r` to hold `total` bytes of quota, or refuses if the committed usage plus every
    /// upload in progress (this one included) would pass the quota.
    fn reserve(&self, r: &mut Reservation, total: u64) -> Result<()> {
        if self.quota == 0 || total <= r.held {
            return Ok(());
        }
        let more = total - r.held;
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let held_by_all = map.get(&r.user).copied().unwrap_or(0);
        let used = self.store.get::<MediaUsage>(&r.user)?.unwrap_or(0);
        let after = used.saturating_add(held_by_all).saturating_add(more);
        if after > self.quota {
            return Err(self.quota_exceeded(used.saturating_add(held_by_all), total));
        }
        *map.entry(r.user.clone()).or_insert(0) += more;
        r.held = total;
        Ok(())
    }

    /// Reserves a media id for a later upload (`/create`); returns it with its expiry.
    pub async fn create_pending(&self, user: &UserId) -> Result<(String, u64)> {
        let now = now_ms();
        let mine = self
            .store
            .range::<MediaPending>(None, false, usize::MAX)?
            .into_iter()
            .filter(|(_, p)| p.uploader == user.as_str() && p.expires_ms > now)
            .count();
        if mine >= MAX_PENDING_PER_USER {
            return Err(Error::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                format!("Too many pending uploads (at most {MAX_PENDING_PER_USER}); upload or let them expire first"),
            )
            .with("retry_after_ms", 60_000));
        }
        let media_id = random_media_id();
        let record = PendingRecord {
            uploader: user.to_string(),
            created_ms: now,
            expires_ms: now + PENDING_LIFETIME_MS,
        };
        let mut batch = Batch::new();
        batch.expect_absent::<MediaPending>(&media_id);
        batch.put::<MediaPending>(&media_id, &record);
        self.store.commit(batch).await?;
        Ok((media_id, record.expires_ms))
    }

    /// Stores an upload streamed from `body`. With `media_id`, fills an id from `/create`.
    /// Returns the media id.
    pub async fn upload<S>(
        &self,
        user: &UserId,
        media_id: Option<&str>,
        meta: UploadMeta,
        body: S,
    ) -> Result<String>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        // Quota held by this upload while it streams: the declared length up front, else
        // growing with the bytes received.
        let mut reservation = self.reservation(user);
        if let Some(len) = meta.declared_len {
            self.check_size(len)?;
            self.reserve(&mut reservation, len)?;
        }
        let pending = match media_id {
            Some(id) => Some((id.to_owned(), self.pending_for_upload(user, id)?)),
            None => None,
        };

        let (tmp, sha256, size) = self.receive(body, Some(&mut reservation)).await?;

        let media_id = match &pending {
            Some((id, _)) => id.clone(),
            None => random_media_id(),
        };
        let record = MediaRecord {
            sha256: sha256.clone(),
            size,
            content_type: meta.content_type.filter(|t| !t.is_empty()),
            filename: meta.filename.filter(|f| !f.is_empty()),
            uploader: user.to_string(),
            created_ms: now_ms(),
        };
        let _guard = self.blob_lock.lock().await;
        // The reservation already holds `size` bytes of quota for this upload, so the commit
        // below cannot take the user past it; the reservation is released (dropped) only
        // after the usage counter includes the upload.
        let user_key = user.to_string();
        let used = self.store.get::<MediaUsage>(&user_key)?;
        self.place_blob(tmp, &sha256).await?;
        let mut batch = Batch::new();
        self.stage_blob_ref(&mut batch, &sha256, 1)?;
        batch.expect_value::<MediaUsage>(&user_key, used.as_ref());
        batch.put::<MediaUsage>(&user_key, &(used.unwrap_or(0) + size));
        batch.expect_absent::<MediaTable>(&media_id);
        batch.put::<MediaTable>(&media_id, &record);
        batch.put::<MediaByUser>(&(user_key, record.created_ms, media_id.clone()), &size);
        if let Some((id, p)) = &pending {
            batch.expect_value::<MediaPending>(id, Some(p));
            batch.delete::<MediaPending>(id);
        }
        if let Err(e) = self.store.commit(batch).await {
            // Nothing references a file placed for this upload alone: remove it again.
            if self.store.get::<MediaBlobs>(&sha256)?.is_none() {
                let (files, path) = (self.files.clone(), self.blob_path(&sha256));
                if let Err(e) = blocking(move || files.remove(&path)).await {
                    // Swept at the next start.
                    log::warn!("cannot remove unreferenced media file {sha256}: {e}");
                }
            }
            return Err(match e {
                crate::store::CommitError::Conflict => cannot_overwrite(),
                e => e.into(),
            });
        }
        drop(_guard);
        drop(reservation);
        self.uploaded.notify_waiters();
        log::info!(
            "{user} uploaded {} ({size} bytes, sha256 {sha256})",
            self.mxc(&media_id)
        );
        Ok(media_id)
    }

    fn check_size(&self, len: u64) -> Result<()> {
        if len > self.max_upload {
            return Err(Error::too_large(format!(
                "Upload is larger than the maximum of {} bytes",
                self.max_upload
            )));
        }
        Ok(())
    }

    /// The pending record `user` may upload into, or why not.
    fn pending_for_upload(&self, user: &UserId, media_id: &str) -> Result<PendingRecord> {
        check_media_id(media_id)?;
        if self
            .store
            .get::<MediaTable>(&media_id.to_owned())?
            .is_some()
        {
            return Err(cannot_overwrite());
        }
        let pending = self
            .store
            .get::<MediaPending>(&media_id.to_owned())?
            .filter(|p| p.expires_ms > now_ms())
            .ok_or_else(|| Error::not_found("Unknown or expired media id"))?;
        if pending.uploader != user.as_str() {
            return Err(Error::forbidden(
                "This media id was created by another user",
            ));
        }
        Ok(pending)
    }

    /// Streams `body` into a temporary file, hashing it; returns the synced file, its hash and
    /// size. Any error (too large, connection lost) removes the file.
    /// With a reservation, the upload's quota hold grows with the bytes received.
    async fn receive<S>(
        &self,
        body: S,
        mut reservation: Option<&mut Reservation>,
    ) -> Result<(TempFile, String, u64)>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        let dir = self.root.join("tmp");
        let path = dir.join(format!("{}.part", random_media_id()));
        let files = self.files.clone();
        let mut file = {
            let (files, path) = (files.clone(), path.clone());
            blocking(move || {
                files.create_dirs(&dir)?;
                files.create(&path)
            })
            .await
            .map_err(io_error)?
        };
        let tmp = TempFile(Some(path), files.clone());
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            self.check_size(size)?;
            if let Some(r) = reservation.as_deref_mut() {
                self.reserve(r, size)?;
            }
            hasher.update(&chunk);
            let files = files.clone();
            file = blocking(move || files.write(&mut file, &chunk).map(|()| file))
                .await
                .map_err(io_error)?;
        }
        blocking(move || files.sync_file(&file))
            .await
            .map_err(io_error)?;
        let sha256 = hex(&hasher.finalize());
        Ok((tmp, sha256, size))
    }

    /// Moves a received file to its content address (or drops it if that file exists).
    /// Call with `blob_lock` held.
    async fn place_blob(&self, mut tmp: TempFile, sha256: &str) -> Result<()> {
        let dest = self.blob_path(sha256);
        let src = tmp.0.clone().expect("temp file present");
        let files = self.files.clone();
        // The rename, the new directories and the file's bytes are all durable before the
        // metadata that points at them is committed. An existing file is durable already:
        // its upload synced it the same way before committing (or, if that upload never
        // committed, it is reused here and its sweep at start cannot happen meanwhile).
        let placed = blocking(move || {
            if dest.try_exists()? {
                return Ok(false);
            }
            files.create_dirs(dest.parent().expect("blob paths have a parent"))?;
            files.rename(&src, &dest)?;
            Ok(true)
        })
        .await
        .map_err(io_error)?;
        if placed {
            tmp.0 = None;
        }
        Ok(())
    }

    /// Adds `delta` (±1) to a file's reference count; call with `blob_lock` held. Returns the
    /// new count.
    fn stage_blob_ref(&self, batch: &mut Batch, sha256: &str, delta: i64) -> Result<u64> {
        let key = sha256.to_owned();
        let current = self.store.get::<MediaBlobs>(&key)?;
        let next = (current.unwrap_or(0) as i64 + delta).max(0) as u64;
        batch.expect_value::<MediaBlobs>(&key, current.as_ref());
        if next == 0 {
            batch.delete::<MediaBlobs>(&key);
        } else {
            batch.put::<MediaBlobs>(&key, &next);
        }
        Ok(next)
    }

    /// A local media's record for download (remote media: [`Media::remote`]). An id from
    /// `/create` not uploaded yet is waited for up to `timeout_ms`.
    pub async fn get(
        &self,
        server: &str,
        media_id: &str,
        timeout_ms: u64,
        legacy: bool,
    ) -> Result<MediaRecord> {
        if server != self.server_name.as_str() {
            return Err(Error::not_found(
                "Unknown media: not a media of this server",
            ));
        }
        check_media_id(media_id).map_err(|_| Error::not_found("Unknown media"))?;
        let key = media_id.to_owned();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(timeout_ms.min(MAX_WAIT_MS));
        let record = loop {
            let notified = self.uploaded.notified();
            if let Some(record) = self.store.get::<MediaTable>(&key)? {
                break record;
            }
            let pending = self
                .store
                .get::<MediaPending>(&key)?
                .is_some_and(|p| p.expires_ms > now_ms());
            if !pending {
                return Err(Error::not_found("Unknown media"));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::new(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    "M_NOT_YET_UPLOADED",
                    "The media has not been uploaded yet",
                ));
            }
        };
        if legacy && self.freeze_ms.is_some_and(|f| record.created_ms >= f) {
            return Err(Error::not_found(
                "This media is only available through the authenticated /_matrix/client/v1/media endpoints",
            ));
        }
        Ok(record)
    }

    /// A user's uploads: `(media_id, record)`, oldest first.
    pub fn list_user(&self, user: &UserId) -> Result<Vec<(String, MediaRecord)>> {
        let rows = self
            .store
            .scan_prefix::<MediaByUser, _>(&(user.to_string(),), usize::MAX)?;
        let mut out = Vec::with_capacity(rows.len());
        for ((_, _, media_id), _) in rows {
            if let Some(record) = self.store.get::<MediaTable>(&media_id)? {
                out.push((media_id, record));
            }
        }
        Ok(out)
    }

    /// Deletes a local media, its thumbnails and any file no longer referenced. Returns
    /// whether it existed.
    pub async fn delete(&self, media_id: &str) -> Result<bool> {
        let key = media_id.to_owned();
        let guard = self.blob_lock.lock().await;
        let Some(record) = self.store.get::<MediaTable>(&key)? else {
            return Ok(false);
        };
        let mut batch = Batch::new();
        batch.expect_value::<MediaTable>(&key, Some(&record));
        batch.delete::<MediaTable>(&key);
        batch.delete::<MediaByUser>(&(record.uploader.clone(), record.created_ms, key.clone()));
        let used = self.store.get::<MediaUsage>(&record.uploader)?;
        batch.expect_value::<MediaUsage>(&record.uploader, used.as_ref());
        let left = used.unwrap_or(0).saturating_sub(record.size);
        if left == 0 {
            batch.delete::<MediaUsage>(&record.uploader);
        } else {
            batch.put::<MediaUsage>(&record.uploader, &left);
        }
        // Reference changes per file, summed (a thumbnail may share the original's file).
        let mut refs: Vec<(String, i64)> = vec![(record.sha256.clone(), -1)];
        for (thumb_key, thumb) in self
            .store
            .scan_prefix::<MediaThumbs, _>(&(key.clone(),), usize::MAX)?
        {
            batch.delete::<MediaThumbs>(&thumb_key);
            match refs.iter_mut().find(|(s, _)| *s == thumb.sha256) {
                Some((_, d)) => *d -= 1,
                None => refs.push((thumb.sha256, -1)),
            }
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
            if let Err(e) = blocking(move || files.remove(&path)).await {
                // Unreferenced now, so swept at the next start.
                log::warn!("cannot remove media file {sha}: {e}");
            }
        }
        drop(guard);
        log::info!("deleted {}", self.mxc(media_id));
        Ok(true)
    }

    /// Deletes every local media uploaded before `before_ms`; returns how many.
    pub async fn purge_before(&self, before_ms: u64) -> Result<usize> {
        let old: Vec<String> = self
            .store
            .range::<MediaTable>(None, false, usize::MAX)?
            .into_iter()
            .filter(|(_, r)| r.created_ms < before_ms)
            .map(|(id, _)| id)
            .collect();
        let mut n = 0;
        for id in old {
            if self.delete(&id).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The thumbnail of `media_id` in the size bucket for `width`×`height` and `method`,
    /// made and stored on first request.
    pub async fn thumbnail(
        &self,
        media_id: &str,
        record: &MediaRecord,
        width: u32,
        height: u32,
        crop: bool,
    ) -> Result<ThumbRecord> {
        let spec = thumbnail::bucket(width, height, crop);
        let method = if spec.crop { "crop" } else { "scale" };
        let key = (
            media_id.to_owned(),
            u64::from(spec.width),
            u64::from(spec.height),
            method.to_owned(),
        );
        if let Some(thumb) = self.store.get::<MediaThumbs>(&key)? {
            return Ok(thumb);
        }
        let source = self.blob_path(&record.sha256);
        let max_pixels = self.max_pixels;
        // Waiting for a free slot counts towards the time limit: a request never queues
        // forever behind other (possibly slow) jobs.
        let busy = || {
            Error::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                "M_UNKNOWN",
                "The server is busy making other thumbnails; try again",
            )
        };
        let permit = tokio::time::timeout(THUMBNAIL_TIME, self.thumb_jobs.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| Error::unknown("Thumbnailing is shut down"))?;
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            thumbnail::make(&source, spec, max_pixels)
        });
        let made = match tokio::time::timeout(THUMBNAIL_TIME, job).await {
            Ok(Ok(made)) => made?,
            Ok(Err(e)) => {
                log::error!("thumbnail job failed: {e}");
                return Err(Error::unknown("Cannot make the thumbnail"));
            }
            Err(_) => {
                return Err(Error::new(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    "M_UNKNOWN",
                    "Making the thumbnail took too long",
                ))
            }
        };
        let size = made.bytes.len() as u64;
        let (tmp, sha256, _) = self
            .receive(
                futures_util::stream::iter([Ok(Bytes::from(made.bytes))]),
                None,
            )
            .await?;
        let thumb = ThumbRecord {
            sha256: sha256.clone(),
            size,
            content_type: made.content_type.to_owned(),
            width: made.width,
            height: made.height,
        };
        let guard = self.blob_lock.lock().await;
        if let Some(existing) = self.store.get::<MediaThumbs>(&key)? {
            return Ok(existing);
        }
        if self
            .store
            .get::<MediaTable>(&media_id.to_owned())?
            .is_none()
        {
            return Err(Error::not_found("Unknown media"));
        }
        self.place_blob(tmp, &sha256).await?;
        let mut batch = Batch::new();
        self.stage_blob_ref(&mut batch, &sha256, 1)?;
        batch.expect_absent::<MediaThumbs>(&key);
        batch.put::<MediaThumbs>(&key, &thumb);
        self.store.commit(batch).await?;
        drop(guard);
        Ok(thumb)
    }
}

fn cannot_overwrite() -> Error {
    Error::new(
        http::StatusCode::CONFLICT,
        "M_CANNOT_OVERWRITE_MEDIA",
        "Media has already been uploaded to this id",
    )
}

fn io_error(e: std::io::Error) -> Error {
    log::error!("media storage: {e}");
    Error::unknown("Cannot store the media")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new media id: 24 random characters of `A-Za-z0-9`.
pub fn random_media_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Media ids are `A-Za-z0-9_-` (spec: content repository).
pub fn check_media_id(media_id: &str) -> Result<()> {
    let ok = !media_id.is_empty()
        && media_id.len() <= 255
        && media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_param("Invalid media id"))
    }
}

/// Splits `mxc://server/id`.
pub fn parse_mxc(mxc: &str) -> Option<(&str, &str)> {
    let rest = mxc.strip_prefix("mxc://")?;
    let (server, id) = rest.split_once('/')?;
    (!server.is_empty() && !id.is_empty()).then_some((server, id))
}
