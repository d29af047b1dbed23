//! Resumable uploads: sessions, staged parts, and the finish that turns a session into a file.
//!
//! A session is a row in the index's `uploads` table (the truth about its offset) and a staging
//! file `<store>/uploads/<session id>.part` (the bytes). Session ids are random ULIDs made here;
//! a caller's id is only ever parsed back into one, so nothing a client sends becomes a path.
//!
//! Rules (docs/design.md, "Resumable uploads", has the argument):
//! - Staged bytes are fdatasynced before the index records the offset that covers them, so a
//!   recorded offset is always backed by data. Bytes past the recorded offset belong to no
//!   append and are cut off by the next status, append or finish.
//! - One writer per session: append, declare-length, finish and terminate claim the session in
//!   memory (`Writers`); a second caller gets [`Error::Busy`].
//! - An append whose source fails keeps every byte received (unless it carried a checksum,
//!   which then cannot be verified, so the part is discarded).
//! - A finish runs the ordinary [`Store::put`] and is safe to retry after a crash: see
//!   [`UploadRecord::finishing`]. A session made for an untrusted client
//!   ([`Origin::Client`], the tus endpoint) finishes as a client's put: the server decides its
//!   category and the category's size limit applies.
//! - A client holds at most [`SessionLimits::max_open_per_user`] open (unfinished, unexpired)
//!   sessions, and their metadata at most [`SessionLimits::metadata_budget`] bytes; past
//!   either, creation fails with [`Error::TooMany`] (tus: 429 with `Retry-After`). Counted in
//!   memory ([`OpenUploads`], rebuilt from the sessions table at open), so the check costs no
//!   index scan.
//! - Every session reserves quota at creation: its length, or, while the length is deferred,
//!   its category's limit when the name decides the category, else
//!   [`SessionLimits::deferred_reservation`]. So a flood of deferred sessions runs into the
//!   quota before it runs into the disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::{Error, IoContext, Result};
use crate::id::FileId;
use crate::index::{ListFilter, UploadRecord};
use crate::pack::storage::sync_dir;
use crate::quota;
use crate::store::{FileInfo, PutOptions, PutReport, Store};
use crate::validate::{self, Claims, Origin};

/// Directory of staged parts, inside the store directory.
pub const UPLOAD_DIR: &str = "uploads";
const PART_SUFFIX: &str = ".part";
/// Read buffer of an append: the most of a part held in memory at once.
const BUF_LEN: usize = 64 << 10;
/// Largest serialised [`UploadMeta`] a session accepts.
pub const MAX_META_BYTES: usize = 16 << 10;
/// File metadata key that names the session a file was uploaded through (finish idempotence).
pub const META_SESSION: &str = "upload_session";
/// File metadata key under which the session's free metadata (`UploadMeta::extras`) is kept.
pub const META_EXTRAS: &str = "upload_metadata";

/// What the finished file will be: the put options a session carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UploadMeta {
    /// The name the client gave (sanitised at finish into the display name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mime: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub public: bool,
    /// Anything else the client sent; stored in the file's metadata under [`META_EXTRAS`].
    #[serde(default)]
    pub extras: BTreeMap<String, String>,
    /// Whom the session is for: the finish is a put of this origin, and a client's sessions
    /// count against [`SessionLimits`]. The tus endpoint makes [`Origin::Client`] sessions;
    /// sessions stored before this field existed are read as client sessions (the safe side).
    #[serde(default = "stored_without_origin")]
    pub origin: Origin,
}

fn stored_without_origin() -> Origin {
    Origin::Client
}

/// Limits on resumable sessions: `Config::sessions`, the `[uploads]` keys
/// `max_sessions_per_user`, `session_metadata_budget` and `deferred_reservation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Open (unfinished, unexpired) sessions one owner may hold when it creates a client
    /// session. Default 20.
    pub max_open_per_user: usize,
    /// Bytes of session metadata (each session's [`UploadMeta`] as stored) one owner's open
    /// sessions may hold when it creates a client session. Default 256 KiB: twenty sessions
    /// of 10 KB each fit, twenty of the largest (16 KiB, `MAX_META_BYTES`) do not.
    pub metadata_budget: u64,
    /// What a deferred-length session reserves against its owner's quota when its name does
    /// not decide its category (when it does, the category's limit is reserved). Default
    /// 100 MB. Appends past the reservation grow it while the quota allows.
    pub deferred_reservation: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_open_per_user: 20,
            metadata_budget: 256 << 10,
            deferred_reservation: 100 * bytesize::MB,
        }
    }
}

/// A resumable upload session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadSession {
    /// A ULID (26 characters, Crockford base32), random, made by the store.
    pub id: String,
    pub owner: String,
    /// Total length; `None` while deferred (see [`Store::upload_declare_length`]).
    pub length: Option<u64>,
    /// Bytes received and durable.
    pub offset: u64,
    pub meta: UploadMeta,
    pub created_ms: i64,
    /// The session expires at this instant unless appended to before (each append moves it to
    /// now + `Config::upload_ttl`).
    pub expires_ms: i64,
    /// Bytes reserved against the owner's quota at creation (the length; for a deferred
    /// session the estimate of [`SessionLimits`]). A deferred session holds at least this
    /// until its length is declared. 0 for sessions stored before this field existed.
    #[serde(default)]
    pub reserved: u64,
}

impl UploadSession {
    /// True when every declared byte has arrived.
    pub fn is_complete(&self) -> bool {
        self.length == Some(self.offset)
    }
}

/// A checksum algorithm of the tus checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgo {
    Sha1,
    Sha256,
}

impl ChecksumAlgo {
    /// Every supported algorithm (for `Tus-Checksum-Algorithm`).
    pub const ALL: [ChecksumAlgo; 2] = [ChecksumAlgo::Sha1, ChecksumAlgo::Sha256];

    /// The tus name: `sha1`, `sha256`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgo::Sha1 => "sha1",
            ChecksumAlgo::Sha256 => "sha256",
        }
    }

    /// Parses a tus name (ASCII case-insensitive); `None` for an unsupported algorithm.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgo::Sha1 => 20,
            ChecksumAlgo::Sha256 => 32,
        }
    }
}

/// The expected digest of one append's bytes (raw bytes, not base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algo: ChecksumAlgo,
    pub digest: Vec<u8>,
}

/// What [`Store::upload_sweep_expired`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Nothing was removed: the counts say what a sweep now would remove.
    pub dry_run: bool,
    /// Expired sessions removed, with their staged data.
    pub expired_sessions: u64,
    /// Staged files that belonged to no session, removed.
    pub orphan_files: u64,
    /// Bytes of staged data freed.
    pub bytes_freed: u64,
}

/// The sessions being written to right now: at most one writer per session.
#[derive(Debug, Default)]
pub(crate) struct Writers {
    busy: Mutex<HashSet<String>>,
}

impl Writers {
    fn try_claim(&self, id: &str) -> Option<Claim<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(id.to_string()).then(|| Claim {
            writers: self,
            id: id.to_string(),
        })
    }

    fn claim(&self, id: &str) -> Result<Claim<'_>> {
        self.try_claim(id).ok_or_else(|| {
            Error::Busy(format!(
                "upload {id} is being written by another request; retry later"
            ))
        })
    }
}

/// Open sessions per owner, in memory: what [`SessionLimits`] counts. Rebuilt from the
/// sessions table at open ([`load_open`]); a session enters before its row is written and
/// leaves when its row is removed, so the count never misses a session that exists. Expired
/// sessions stay listed until the sweep removes them but are not counted.
#[derive(Debug, Default)]
pub(crate) struct OpenUploads {
    table: Mutex<OpenTable>,
}

#[derive(Debug, Default)]
struct OpenTable {
    by_owner: HashMap<String, HashMap<String, Slot>>,
    owner_of: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    expires_ms: i64,
    meta_bytes: u64,
}

impl OpenUploads {
    fn table(&self) -> std::sync::MutexGuard<'_, OpenTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the new session `id` of `owner`, first checking `limits` (a client's session)
    /// against the owner's open sessions at `now`: check and insertion under one lock, so
    /// concurrent creations cannot pass the cap together.
    fn open(
        &self,
        owner: &str,
        id: &str,
        slot: Slot,
        limits: Option<&SessionLimits>,
        now: i64,
    ) -> Result<()> {
        let mut t = self.table();
        if let Some(limits) = limits {
            let live: Vec<Slot> = t
                .by_owner
                .get(owner)
                .map(|m| m.values().filter(|s| s.expires_ms > now).copied().collect())
                .unwrap_or_default();
            // The earliest a slot frees itself: the first of the open sessions to expire.
            let retry_after_s = live
                .iter()
                .map(|s| s.expires_ms.saturating_sub(now))
                .min()
                .map_or(1, |ms| (ms.max(0) as u64).div_ceil(1000).max(1));
            if live.len() >= limits.max_open_per_user {
                return Err(Error::TooMany {
                    code: "too_many_sessions",
                    detail: format!(
                        "{owner:?} has {} open upload sessions, the most one user may hold; \
                         finish or terminate one, or wait for one to expire",
                        live.len()
                    ),
                    retry_after_s,
                });
            }
            if slot.meta_bytes > limits.metadata_budget {
                return Err(Error::InvalidInput(format!(
                    "upload metadata of {} bytes is more than the {} one user's sessions may hold",
                    slot.meta_bytes, limits.metadata_budget
                )));
            }
            let held: u64 = live.iter().map(|s| s.meta_bytes).sum();
            if held + slot.meta_bytes > limits.metadata_budget {
                return Err(Error::TooMany {
                    code: "session_metadata_budget",
                    detail: format!(
                        "{owner:?}'s open upload sessions hold {held} bytes of metadata; \
                         {} more would pass the {} bytes one user's sessions may hold",
                        slot.meta_bytes, limits.metadata_budget
                    ),
                    retry_after_s,
                });
            }
        }
        t.by_owner
            .entry(owner.to_string())
            .or_default()
            .insert(id.to_string(), slot);
        t.owner_of.insert(id.to_string(), owner.to_string());
        Ok(())
    }

    fn renew(&self, id: &str, expires_ms: i64) {
        let mut t = self.table();
        let Some(owner) = t.owner_of.get(id).cloned() else {
            return;
        };
        if let Some(slot) = t.by_owner.get_mut(&owner).and_then(|m| m.get_mut(id)) {
            slot.expires_ms = expires_ms;
        }
    }

    fn close(&self, id: &str) {
        let mut t = self.table();
        let Some(owner) = t.owner_of.remove(id) else {
            return;
        };
        if let Some(m) = t.by_owner.get_mut(&owner) {
            m.remove(id);
            if m.is_empty() {
                t.by_owner.remove(&owner);
            }
        }
    }
}

/// The bytes of session metadata [`SessionLimits::metadata_budget`] counts: the metadata as
/// the index stores it.
fn meta_bytes(meta: &UploadMeta) -> u64 {
    serde_json::to_vec(meta).map_or(u64::MAX, |v| v.len() as u64)
}

/// Rebuilds [`OpenUploads`] from the sessions table (at open).
pub(crate) fn load_open(inner: &crate::store::Inner) -> Result<()> {
    let r = inner.index.read()?;
    for rec in r.uploads()? {
        let s = &rec.session;
        let slot = Slot {
            expires_ms: s.expires_ms,
            meta_bytes: meta_bytes(&s.meta),
        };
        inner.open_uploads.open(&s.owner, &s.id, slot, None, 0)?;
    }
    Ok(())
}

/// A session claimed by one writer, released on drop.
struct Claim<'a> {
    writers: &'a Writers,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut busy = self.writers.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.id);
    }
}

enum PartHasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl PartHasher {
    fn new(algo: ChecksumAlgo) -> Self {
        match algo {
            ChecksumAlgo::Sha1 => PartHasher::Sha1(sha1::Sha1::new()),
            ChecksumAlgo::Sha256 => PartHasher::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            PartHasher::Sha1(h) => h.update(data),
            PartHasher::Sha256(h) => h.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            PartHasher::Sha1(h) => h.finalize().to_vec(),
            PartHasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// The canonical form of a session id, or `NotFound`: whatever the caller sent, only a parsed
/// ULID is ever used as a key or a file name.
fn session_id(id: &str) -> Result<String> {
    ulid::Ulid::from_string(id)
        .map(|u| u.to_string())
        .map_err(|_| match id.len() {
            0..=64 => Error::not_found(format!("upload {id:?}")),
            _ => Error::not_found("upload (malformed id)"),
        })
}

fn expired(s: &UploadSession, now: i64) -> bool {
    now >= s.expires_ms
}

fn check_live(s: &UploadSession, now: i64) -> Result<()> {
    if expired(s, now) {
        return Err(Error::Expired {
            what: format!("upload {}", s.id),
        });
    }
    Ok(())
}

/// Errors that say the upload itself is unacceptable, so retrying its finish cannot help.
fn is_rejection(e: &Error) -> bool {
    matches!(
        e,
        Error::Rejected { .. } | Error::TooLarge { .. } | Error::InvalidInput(_)
    )
}

/// Cuts a part back to `len` after a failed or refused append. Best effort: if it fails, the
/// stray bytes lie past the recorded offset and the next access cuts them.
fn cut_back(file: &File, len: u64, path: &Path) {
    if let Err(e) = file.set_len(len) {
        tracing::warn!("could not cut {} back to {len} bytes: {e}", path.display());
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

fn ttl_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    fn upload_dir(&self) -> PathBuf {
        self.dir().join(UPLOAD_DIR)
    }

    /// The staging file of a session; `id` is a canonical ULID (see `session_id`).
    fn part_path(&self, id: &str) -> PathBuf {
        self.upload_dir().join(format!("{id}{PART_SUFFIX}"))
    }

    fn upload_now(&self) -> i64 {
        self.inner().config.clock.now_ms()
    }

    fn check_writable(&self) -> Result<()> {
        if self.inner().read_only {
            return Err(Error::InvalidInput("the store is open read-only".into()));
        }
        Ok(())
    }

    fn load_upload(&self, id: &str) -> Result<UploadRecord> {
        self.inner()
            .index
            .read()?
            .upload(id)?
            .ok_or_else(|| Error::not_found(format!("upload {id}")))
    }

    fn store_upload(&self, rec: &UploadRecord) -> Result<()> {
        let mut w = self.inner().index.write()?;
        w.put_upload(rec)?;
        w.commit()
    }

    /// Removes a session: the row first, then the staged file (a crash in between leaves an
    /// orphan file for the sweep, never a row without its data). Returns the bytes freed.
    fn remove_upload(&self, id: &str) -> Result<u64> {
        let mut w = self.inner().index.write()?;
        w.remove_upload(id)?;
        w.commit()?;
        self.inner()
            .quotas
            .release(&quota::Key::Session(id.to_string()));
        self.inner().open_uploads.close(id);
        let path = self.part_path(id);
        let len = file_len(&path);
        match fs::remove_file(&path) {
            Ok(()) => Ok(len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).ctx(|| format!("removing {}", path.display())),
        }
    }

    /// Creates an empty staging file and makes its directory entry durable, so a session row
    /// never outlives a crash without its file.
    fn create_part(&self, id: &str) -> Result<()> {
        let dir = self.upload_dir();
        if !dir.exists() {
            crate::disk::create_private_dir(&dir).ctx(|| format!("creating {}", dir.display()))?;
            sync_dir(self.dir()).ctx(|| format!("syncing {}", self.dir().display()))?;
        }
        let path = self.part_path(id);
        crate::disk::private_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        sync_dir(&dir).ctx(|| format!("syncing {}", dir.display()))
    }

    /// Opens a session's staging file cut to `offset`, the recorded offset. A file shorter than
    /// that lost data the index says was durable: that is damage.
    fn open_part(&self, id: &str, offset: u64) -> Result<File> {
        let path = self.part_path(id);
        let open = || OpenOptions::new().read(true).write(true).open(&path);
        let file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && offset == 0 => {
                self.create_part(id)?;
                open().ctx(|| format!("opening {}", path.display()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::corrupt(
                    path.display().to_string(),
                    format!("staged data is missing, but the session has received {offset} bytes"),
                ));
            }
            Err(e) => return Err(e).ctx(|| format!("opening {}", path.display())),
        };
        let len = file
            .metadata()
            .ctx(|| format!("reading the size of {}", path.display()))?
            .len();
        if len < offset {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("staged data is {len} bytes, but the session has received {offset}"),
            ));
        }
        if len > offset {
            file.set_len(offset)
                .ctx(|| format!("cutting {} back to {offset} bytes", path.display()))?;
        }
        Ok(file)
    }

    /// Starts a resumable upload for `owner`. `length` is the total size, or `None` to declare
    /// it later. Fails with `TooLarge` over `Config::max_upload`, `InvalidInput` for a bad
    /// owner, key or category, and with whatever the validation policy says about the declared
    /// name, type, category and length (`Rejected`, `TooLarge`) — before any byte is sent. A
    /// client's session ([`UploadMeta::origin`]) must fit [`SessionLimits`] (`TooMany`
    /// otherwise). The session reserves its length against the owner's quota — a deferred one
    /// its category's limit or [`SessionLimits::deferred_reservation`] — or fails with
    /// `QuotaExceeded`. It expires `Config::upload_ttl` from now.
    pub fn upload_create(
        &self,
        owner: &str,
        length: Option<u64>,
        meta: UploadMeta,
    ) -> Result<UploadSession> {
        self.check_writable()?;
        validate::check_label("owner", owner)?;
        if let Some(key) = &meta.key {
            validate::check_key(key)?;
        }
        if let Some(category) = &meta.category {
            validate::check_label("category", category)?;
        }
        let max = self.inner().config.max_upload;
        if let Some(len) = length
            && len > max
        {
            return Err(Error::TooLarge {
                limit: max,
                what: format!("an upload of {len} bytes"),
            });
        }
        // The category's rules, decided now from what is declared (the put at finish checks
        // them again, with the content): a client learns before sending anything.
        let known_limit = self.admit_session(&meta, length)?;
        let meta_len = meta_bytes(&meta);
        if meta_len > MAX_META_BYTES as u64 {
            return Err(Error::InvalidInput(format!(
                "upload metadata is {meta_len} bytes, more than {MAX_META_BYTES}"
            )));
        }
        let limits = &self.inner().config.sessions;
        let reserve = match length {
            Some(len) => len,
            None => known_limit.unwrap_or(limits.deferred_reservation).min(max),
        };
        let id = ulid::Ulid::generate().to_string();
        let now = self.upload_now();
        let session = UploadSession {
            id: id.clone(),
            owner: owner.to_string(),
            length,
            offset: 0,
            created_ms: now,
            expires_ms: now.saturating_add(ttl_ms(self.inner().config.upload_ttl)),
            reserved: reserve,
            meta,
        };
        // Claimed until the row exists, so a sweep running meanwhile does not take the new
        // file for an orphan.
        let _claim = self.inner().upload_writers.claim(&id)?;
        let client = session.meta.origin == Origin::Client;
        self.inner().open_uploads.open(
            owner,
            &id,
            Slot {
                expires_ms: session.expires_ms,
                meta_bytes: meta_len,
            },
            client.then_some(limits),
            now,
        )?;
        // The reservation is held while the session lives (rebuilt from the sessions table at
        // open).
        let key = quota::Key::Session(id.clone());
        let created = self
            .inner()
            .quotas
            .reserve(self.inner(), &key, owner, reserve)
            .and_then(|()| {
                self.create_part(&id).and_then(|()| {
                    self.store_upload(&UploadRecord {
                        session: session.clone(),
                        finishing: None,
                    })
                })
            });
        if let Err(e) = created {
            self.inner().quotas.release(&key);
            self.inner().open_uploads.close(&id);
            return Err(e);
        }
        Ok(session)
    }

    /// The most bytes the validation policy lets a session's file have, as far as its name
    /// and declared facts tell; `None` when no category limit applies (a local session).
    fn session_bound(&self, meta: &UploadMeta) -> Result<Option<u64>> {
        self.with_session_admission(meta, None, |a| a.size_bound().map(|(b, _)| b))
    }

    /// Admits a session's declared facts under the validation policy, as a put of its origin
    /// with `length` declared; returns the limit of its category when the name decides it.
    fn admit_session(&self, meta: &UploadMeta, length: Option<u64>) -> Result<Option<u64>> {
        let policy = &self.inner().config.policy;
        self.with_session_admission(meta, length, |a| {
            a.known_category().map(|c| policy.categories[c].max_size)
        })
    }

    fn with_session_admission<T>(
        &self,
        meta: &UploadMeta,
        length: Option<u64>,
        f: impl FnOnce(&validate::Admission<'_>) -> T,
    ) -> Result<T> {
        let name = meta.name.clone().or_else(|| {
            meta.key
                .as_ref()
                .map(|k| k.rsplit('/').next().unwrap_or(k).to_string())
        });
        let display_name = validate::sanitize_display_name(name.as_deref().unwrap_or("file"));
        let config = &self.inner().config;
        let admission = config.policy.admit(&Claims {
            name: Some(&display_name),
            mime: meta.mime.as_deref(),
            category: meta.category.as_deref(),
            size: length,
            origin: meta.origin,
            local_limits: config.local_category_limits,
        })?;
        Ok(f(&admission))
    }

    /// The session `id`: `NotFound` if unknown, `Expired` past its expiry. Staged bytes past the
    /// recorded offset (a crash between writing them and recording them) are cut off, unless an
    /// append is running.
    pub fn upload_status(&self, id: &str) -> Result<UploadSession> {
        let id = session_id(id)?;
        let rec = self.load_upload(&id)?;
        check_live(&rec.session, self.upload_now())?;
        if !self.inner().read_only
            && let Some(_claim) = self.inner().upload_writers.try_claim(&id)
        {
            // Re-read under the claim: a writer may have moved the offset since.
            let rec = self.load_upload(&id)?;
            self.open_part(&id, rec.session.offset)?;
            return Ok(rec.session);
        }
        Ok(rec.session)
    }

    /// Appends the bytes of `source` at `offset`, which must be the session's offset
    /// (`Conflict` otherwise, and nothing changes). Streams through a 64 KiB buffer.
    ///
    /// - More bytes than the declared length (or, while the length is deferred, than
    ///   `Config::max_upload` or the limit the validation policy sets a file of that name):
    ///   `TooLarge`, and the whole part is discarded.
    /// - With `checksum`, the part is hashed as it is written; on a mismatch it is discarded and
    ///   the error is `ChecksumMismatch`.
    /// - If `source` fails (a broken connection) and there is no checksum, every byte received
    ///   is kept and recorded, then the read error is returned as `Io`. With a checksum the
    ///   partial part cannot be verified and is discarded.
    /// - A second append to the same session while one runs: `Busy`.
    ///
    /// Returns the session with its new offset; the bytes are durable when this returns.
    pub fn upload_append(
        &self,
        id: &str,
        offset: u64,
        source: impl Read,
        checksum: Option<Checksum>,
    ) -> Result<UploadSession> {
        self.check_writable()?;
        let id = session_id(id)?;
        if let Some(c) = &checksum
            && c.digest.len() != c.algo.digest_len()
        {
            return Err(Error::InvalidInput(format!(
                "a {} digest is {} bytes, got {}",
                c.algo.name(),
                c.algo.digest_len(),
                c.digest.len()
            )));
        }
        let _claim = self.inner().upload_writers.claim(&id)?;
        let result = self.append_claimed(&id, offset, source, checksum);
        // A deferred session holds its reservation, or what it has received when that is
        // more: bytes grown into but not kept are given back (under the claim, so no other
        // append of this session runs meanwhile).
        if let Ok(Some(rec)) = self.inner().index.read().and_then(|r| r.upload(&id))
            && rec.session.length.is_none()
        {
            self.inner().quotas.shrink_to(
                &quota::Key::Session(id.clone()),
                rec.session.offset.max(rec.session.reserved),
            );
        }
        result
    }

    fn append_claimed(
        &self,
        id: &str,
        offset: u64,
        mut source: impl Read,
        checksum: Option<Checksum>,
    ) -> Result<UploadSession> {
        let id = id.to_string();
        let rec = self.load_upload(&id)?;
        let s = &rec.session;
        check_live(s, self.upload_now())?;
        if rec.finishing.is_some() {
            return Err(Error::Conflict(format!("upload {id} is being finished")));
        }
        if offset != s.offset {
            return Err(Error::Conflict(format!(
                "upload {id} is at offset {}, not {offset}",
                s.offset
            )));
        }
        // While the length is deferred, no more than the file could be: `max_upload`, or less
        // when its category's limit binds the session (a client's deferred `.jpg` stops at
        // the images limit, not at 5 GiB).
        let limit = match s.length {
            Some(len) => len,
            None => {
                let max = self.inner().config.max_upload;
                self.session_bound(&s.meta)?.map_or(max, |b| b.min(max))
            }
        };
        let room = limit.saturating_sub(s.offset);

        let path = self.part_path(&id);
        let mut file = self.open_part(&id, s.offset)?;
        file.seek(SeekFrom::Start(s.offset))
            .ctx(|| format!("seeking in {}", path.display()))?;
        let mut hasher = checksum.as_ref().map(|c| PartHasher::new(c.algo));
        let mut buf = vec![0u8; BUF_LEN];
        let mut received = 0u64;
        let broken = loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Some(e),
            };
            // Without a declared length nothing was reserved: the quota is checked as the
            // bytes arrive, growing the session's reservation.
            if s.length.is_none()
                && let Err(e) = self.grow_session(&id, &s.owner, s.offset + received + n as u64)
            {
                cut_back(&file, s.offset, &path);
                return Err(e);
            }
            if received + n as u64 > room {
                cut_back(&file, s.offset, &path);
                return Err(Error::TooLarge {
                    limit,
                    what: format!(
                        "upload {id}: more than the {room} bytes left after offset {}",
                        s.offset
                    ),
                });
            }
            if let Err(e) = file.write_all(&buf[..n]) {
                cut_back(&file, s.offset, &path);
                return Err(e).ctx(|| format!("writing {}", path.display()));
            }
            if let Some(h) = &mut hasher {
                h.update(&buf[..n]);
            }
            received += n as u64;
        };

        if let Some(e) = broken {
            let err = Error::Io {
                context: format!("reading the data of upload {id} at offset {}", s.offset),
                source: e,
            };
            if checksum.is_some() || received == 0 {
                cut_back(&file, s.offset, &path);
                return Err(err);
            }
            // Keep what arrived: durable first, then recorded.
            if let Err(e) = self.commit_part(&file, &path, &id, s.offset + received) {
                tracing::warn!("could not keep the partial data of upload {id}: {e}");
            }
            return Err(err);
        }
        if let (Some(h), Some(c)) = (hasher, &checksum)
            && h.finish() != c.digest
        {
            cut_back(&file, s.offset, &path);
            return Err(Error::ChecksumMismatch(format!(
                "the {} of the {received} bytes sent to upload {id} at offset {} differs from \
                 the one given; the part was discarded",
                c.algo.name(),
                s.offset
            )));
        }
        self.commit_part(&file, &path, &id, s.offset + received)
    }

    /// Grows a deferred session's reservation to cover `total` bytes (a step ahead when that
    /// fits, so not every buffer takes the table's lock and an index snapshot).
    fn grow_session(&self, id: &str, owner: &str, total: u64) -> Result<()> {
        let q = &self.inner().quotas;
        let key = quota::Key::Session(id.to_string());
        if total <= q.held(&key) {
            return Ok(());
        }
        q.reserve(self.inner(), &key, owner, total + quota::STEP)
            .or_else(|_| q.reserve(self.inner(), &key, owner, total))
    }

    /// Makes the staged bytes durable, then records `offset` (and a renewed expiry).
    fn commit_part(
        &self,
        file: &File,
        path: &Path,
        id: &str,
        offset: u64,
    ) -> Result<UploadSession> {
        file.sync_data()
            .ctx(|| format!("syncing {}", path.display()))?;
        let mut w = self.inner().index.write()?;
        let mut rec = w
            .upload(id)?
            .ok_or_else(|| Error::not_found(format!("upload {id}")))?;
        rec.session.offset = offset;
        rec.session.expires_ms = self
            .upload_now()
            .saturating_add(ttl_ms(self.inner().config.upload_ttl));
        w.put_upload(&rec)?;
        w.commit()?;
        self.inner().open_uploads.renew(id, rec.session.expires_ms);
        Ok(rec.session)
    }

    /// Declares the total length of a deferred-length session, once. `Conflict` if it was
    /// already declared, `InvalidInput` if below the bytes received, `TooLarge` over
    /// `Config::max_upload` or over what the validation policy allows the session's file (as
    /// at creation). The reservation becomes the length.
    pub fn upload_declare_length(&self, id: &str, length: u64) -> Result<UploadSession> {
        self.check_writable()?;
        let id = session_id(id)?;
        let _claim = self.inner().upload_writers.claim(&id)?;
        let mut rec = self.load_upload(&id)?;
        check_live(&rec.session, self.upload_now())?;
        if let Some(old) = rec.session.length {
            return Err(Error::Conflict(format!(
                "upload {id} already has a length ({old} bytes)"
            )));
        }
        if length < rec.session.offset {
            return Err(Error::InvalidInput(format!(
                "upload {id} has already received {} bytes, more than {length}",
                rec.session.offset
            )));
        }
        let max = self.inner().config.max_upload;
        if length > max {
            return Err(Error::TooLarge {
                limit: max,
                what: format!("an upload of {length} bytes"),
            });
        }
        self.admit_session(&rec.session.meta, Some(length))?;
        let key = quota::Key::Session(id.clone());
        let before = self.inner().quotas.held(&key);
        self.inner()
            .quotas
            .reserve(self.inner(), &key, &rec.session.owner, length)?;
        rec.session.length = Some(length);
        if let Err(e) = self.store_upload(&rec) {
            self.inner().quotas.shrink_to(&key, before);
            return Err(e);
        }
        Ok(rec.session)
    }

    /// Stores a complete upload as a file through the ordinary [`Store::put`] (owner, key,
    /// name, MIME type, category and public flag from the session; the session id and the
    /// free metadata go into the file's metadata), then removes the session and its staged
    /// data. `Conflict` while bytes are missing or the length is not declared.
    ///
    /// If the put refuses the upload (`Rejected`, `TooLarge`, `InvalidInput`), the session is
    /// removed too and the error returned: the data will never become valid. Other failures
    /// (I/O, index) keep the session, and the finish can be retried. A retry — also after a
    /// crash between the put's commit and the session's removal — first looks for the file a
    /// previous attempt stored (see [`UploadRecord::finishing`]) and returns it instead of
    /// storing the data twice; its report then counts no new chunks.
    pub fn upload_finish(&self, id: &str) -> Result<PutReport> {
        self.check_writable()?;
        let id = session_id(id)?;
        let _claim = self.inner().upload_writers.claim(&id)?;
        let mut rec = self.load_upload(&id)?;
        if rec.finishing.is_none() {
            check_live(&rec.session, self.upload_now())?;
        }
        let s = &rec.session;
        let Some(length) = s.length else {
            return Err(Error::Conflict(format!(
                "upload {id} has no declared length yet"
            )));
        };
        if s.offset != length {
            return Err(Error::Conflict(format!(
                "upload {id} has {} of its {length} bytes",
                s.offset
            )));
        }
        match rec.finishing {
            Some(since) => {
                if let Some(report) = self.find_finished(&rec, since)? {
                    self.remove_finished(&id);
                    // An earlier finish stored it infected: the answer is the same as then.
                    if let Some(crate::scan::ScanStamp::Infected { signature }) = &report.file.scan
                        && report.file.quarantined
                    {
                        return Err(Error::Infected {
                            file: report.file.id,
                            signature: signature.clone(),
                        });
                    }
                    return Ok(report);
                }
            }
            None => {
                // Durable before the put: any file id the put makes is greater.
                rec.finishing = Some(FileId::new());
                self.store_upload(&rec)?;
            }
        }
        let mut file = self.open_part(&id, length)?;
        file.seek(SeekFrom::Start(0))
            .ctx(|| format!("seeking in {}", self.part_path(&id).display()))?;
        match self.put_admitted(
            file.take(length),
            &finish_options(&rec.session),
            quota::Backing::Session(&id),
        ) {
            Ok(report) => {
                self.remove_finished(&id);
                Ok(report)
            }
            // Stored, quarantined: the session is done.
            Err(e @ Error::Infected { .. }) => {
                self.remove_finished(&id);
                Err(e)
            }
            Err(e) if is_rejection(&e) => {
                if let Err(e2) = self.remove_upload(&id) {
                    tracing::warn!("could not remove rejected upload {id}: {e2}");
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes a finished session. Its file is stored whatever happens here: a failure only
    /// leaves the session for a retried finish (which finds the file) or the sweep.
    fn remove_finished(&self, id: &str) {
        if let Err(e) = self.remove_upload(id) {
            tracing::warn!("upload {id} is stored, but its session could not be removed: {e}");
        }
    }

    /// The file an earlier finish of `rec` stored, if it committed: a version of the session's
    /// key, or (without a key) a new file of the owner made after `since`, carrying the session
    /// id in its metadata.
    fn find_finished(&self, rec: &UploadRecord, since: FileId) -> Result<Option<PutReport>> {
        let s = &rec.session;
        let r = self.inner().index.read()?;
        let ours = |v: &crate::index::VersionRecord| {
            v.meta.metadata.get(META_SESSION).and_then(|m| m.as_str()) == Some(s.id.as_str())
        };
        let found = match &s.meta.key {
            Some(key) => match r.file_by_key(&s.owner, key)? {
                Some(f) => r
                    .versions(f.id)?
                    .into_iter()
                    .rev()
                    .find(|v| ours(v))
                    .map(|v| (f, v)),
                None => None,
            },
            None => {
                let mut after = since.to_string();
                let mut found = None;
                'pages: loop {
                    let (page, next) = r.list(&ListFilter {
                        owner: Some(&s.owner),
                        include_deleted: true,
                        after: Some(&after),
                        limit: 1000,
                        ..Default::default()
                    })?;
                    for f in page {
                        if let Some(v) = r.version(f.id, 1)?
                            && ours(&v)
                        {
                            found = Some((f, v));
                            break 'pages;
                        }
                    }
                    match next {
                        Some(n) => after = n,
                        None => break,
                    }
                }
                found
            }
        };
        Ok(found.map(|(f, v)| PutReport {
            file: FileInfo::new(&f, &v.meta),
            chunks: v.chunk_count,
            new_chunks: 0,
            new_stored_bytes: 0,
        }))
    }

    /// Abandons an upload: removes the session and its staged data. Expired sessions can be
    /// terminated too; `Busy` while an append runs.
    pub fn upload_terminate(&self, id: &str) -> Result<()> {
        self.check_writable()?;
        let id = session_id(id)?;
        let _claim = self.inner().upload_writers.claim(&id)?;
        self.load_upload(&id)?;
        self.remove_upload(&id)?;
        Ok(())
    }

    /// Removes expired sessions with their staged data, and staged files that belong to no
    /// session (left by a crash or by `recover`). Sessions being written to are skipped.
    pub fn upload_sweep_expired(&self) -> Result<SweepReport> {
        self.upload_sweep(false)
    }

    /// [`Store::upload_sweep_expired`], or with `dry_run` only its report: the same sessions
    /// and files are chosen (sessions being written to are skipped too), nothing is removed.
    pub fn upload_sweep(&self, dry_run: bool) -> Result<SweepReport> {
        self.check_writable()?;
        let mut report = SweepReport {
            dry_run,
            ..Default::default()
        };
        let now = self.upload_now();
        let sessions = self.inner().index.read()?.uploads()?;
        for rec in sessions.iter().filter(|r| expired(&r.session, now)) {
            let id = &rec.session.id;
            let Some(_claim) = self.inner().upload_writers.try_claim(id) else {
                continue;
            };
            match self.inner().index.read()?.upload(id)? {
                Some(r) if expired(&r.session, now) => {}
                _ => continue,
            }
            report.bytes_freed += if dry_run {
                file_len(&self.part_path(id))
            } else {
                self.remove_upload(id)?
            };
            report.expired_sessions += 1;
        }

        let dir = self.upload_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(e).ctx(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            // Only files this module names: a canonical ULID and the suffix.
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(PART_SUFFIX)) else {
                continue;
            };
            if session_id(stem).ok().as_deref() != Some(stem) {
                continue;
            }
            let Some(_claim) = self.inner().upload_writers.try_claim(stem) else {
                continue;
            };
            if self.inner().index.read()?.upload(stem)?.is_some() {
                continue;
            }
            let path = entry.path();
            let len = file_len(&path);
            if dry_run {
                report.orphan_files += 1;
                report.bytes_freed += len;
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.orphan_files += 1;
                    report.bytes_freed += len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx(|| format!("removing {}", path.display())),
            }
        }
        Ok(report)
    }

    /// Every session (of `owner`, if given), expired ones included, in id order.
    pub fn list_uploads(&self, owner: Option<&str>) -> Result<Vec<UploadSession>> {
        Ok(self
            .inner()
            .index
            .read()?
            .uploads()?
            .into_iter()
            .map(|r| r.session)
            .filter(|s| owner.is_none_or(|o| s.owner == o))
            .collect())
    }
}

/// The put a finished session becomes.
fn finish_options(s: &UploadSession) -> PutOptions {
    let mut metadata = serde_json::Map::new();
    metadata.insert(META_SESSION.into(), s.id.clone().into());
    if !s.meta.extras.is_empty() {
        let extras = s
            .meta
            .extras
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        metadata.insert(META_EXTRAS.into(), serde_json::Value::Object(extras));
    }
    PutOptions {
        owner: s.owner.clone(),
        key: s.meta.key.clone(),
        name: s.meta.name.clone(),
        category: s.meta.category.clone(),
        mime: s.meta.mime.clone(),
        public: s.meta.public,
        metadata: serde_json::Value::Object(metadata),
        declared_size: s.length,
        origin: s.meta.origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Config, ListQuery};

    fn complete_upload(store: &Store, key: Option<&str>, data: &[u8]) -> UploadRecord {
        let meta = UploadMeta {
            key: key.map(str::to_string),
            name: Some("a.bin".into()),
            ..Default::default()
        };
        let s = store
            .upload_create("alice", Some(data.len() as u64), meta)
            .unwrap();
        store.upload_append(&s.id, 0, data, None).unwrap();
        store.load_upload(&s.id).unwrap()
    }

    /// A crash after the put committed but before the session was removed: the retried finish
    /// must return the stored file, not store it again.
    fn crash_after_put(key: Option<&str>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("s"), Config::default()).unwrap();
        let data = vec![7u8; 100_000];
        let mut rec = complete_upload(&store, key, &data);
        let id = rec.session.id.clone();
        // The first attempt's steps, up to the crash.
        rec.finishing = Some(FileId::new());
        store.store_upload(&rec).unwrap();
        let first = store
            .put(
                File::open(store.part_path(&id)).unwrap(),
                &finish_options(&rec.session),
            )
            .unwrap();
        // Another file of the owner made meanwhile must not be mistaken for it.
        store
            .put(
                &b"other"[..],
                &PutOptions {
                    owner: "alice".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        drop(store);
        let store = Store::open(dir.path().join("s"), Config::default()).unwrap();

        let again = store.upload_finish(&id).unwrap();
        assert_eq!(
            (again.file.id, again.file.version),
            (first.file.id, first.file.version)
        );
        assert_eq!(again.file.size, data.len() as u64);
        let files = store
            .list(&ListQuery {
                owner: Some("alice".into()),
                ..Default::default()
            })
            .unwrap()
            .files;
        assert_eq!(files.len(), 2, "the upload was stored twice: {files:?}");
        assert_eq!(store.versions(first.file.id).unwrap().len(), 1);
        assert!(matches!(
            store.upload_status(&id),
            Err(Error::NotFound { .. })
        ));
        assert!(!store.part_path(&id).exists());
    }

    #[test]
    fn finish_after_crash_without_key_does_not_store_twice() {
        crash_after_put(None);
    }

    #[test]
    fn finish_after_crash_with_key_does_not_store_twice() {
        crash_after_put(Some("docs/a.bin"));
    }

    /// A crash after the marker was written but before the put: the retry stores the file once.
    #[test]
    fn finish_after_crash_before_put_stores_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("s"), Config::default()).unwrap();
        let data = vec![3u8; 5000];
        let mut rec = complete_upload(&store, None, &data);
        rec.finishing = Some(FileId::new());
        store.store_upload(&rec).unwrap();
        let report = store.upload_finish(&rec.session.id).unwrap();
        assert_eq!(report.file.size, 5000);
        assert_eq!(store.read_all(report.file.id).unwrap(), data);
        assert_eq!(store.stats().unwrap().files, 1);
    }
}
