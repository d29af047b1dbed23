//! The `Store` facade: the only public entry to the engine.
//!
//! A store is a directory:
//!
//! ```text
//! store.json    identity: format, store id, chunk parameters (written once, at create)
//! lock          held (flock) by the one process that has the store open
//! index.redb    the index (module `index`)
//! packs/        NNNNNNNN.pack, append-only (module `pack`)
//! uploads/      <ULID>.part, staged bytes of resumable uploads (module `upload`)
//! ```
//!
//! The commit protocol (docs/design.md has the full argument): a put appends its new chunks,
//! then — inside the index's single write transaction, so manifests reach the packs in commit
//! order — appends the version's manifest, fsyncs the packs, records the packs' durable lengths
//! and the version in the index, and commits. A version exists exactly when that commit has
//! returned.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::chunking::ChunkParams;
use crate::clock::{Clock, SystemClock};
use crate::commit::{Change, Committer, Target};
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, FileId};
use crate::index::{FileRecord, Index, ListFilter, ReadOnlyOpen, VersionRecord};
use crate::maintenance::tiering::{TierRules, default_tier_rules};
use crate::pack::manifest::{VersionMeta, flags};
use crate::pack::record::RecordKind;
use crate::pack::storage::{FsPackStorage, PackStorage, sync_dir};
use crate::pack::{Location, OpenReport, Packs};
use crate::pipeline::{self, InFlight};
use crate::quota::{Admission, Backing, QuotaConfig, QuotaGate, Quotas};
pub use crate::reader::FileReader;
use crate::scan::{Outcome, ScanConfig, ScanGate, ScanStamp};
use crate::tier::ColdTier;
use crate::tier::cold::Cold;
use crate::validate::{self, Claims, Guarded, Origin, Policy};

/// Format of `store.json`.
pub const STORE_FORMAT: u32 = 1;
const IDENTITY_FILE: &str = "store.json";
const INDEX_FILE: &str = "index.redb";
const LOCK_FILE: &str = "lock";
const PACK_DIR: &str = "packs";

/// The owner used when a caller does not name one.
pub const DEFAULT_OWNER: &str = "local";
/// The category used when a caller does not name one.
pub const DEFAULT_CATEGORY: &str = "other";

/// Engine configuration. Every field has the default the product documents.
#[derive(Clone)]
pub struct Config {
    /// Chunk parameters. At create: `None` means the defaults. At open: `None` means "whatever
    /// the store was created with"; `Some` must equal them.
    pub chunking: Option<ChunkParams>,
    /// zstd level for new chunks (0 stores raw). At create: `None` means 3, and the level is
    /// recorded in the store. At open: `None` means the store's level; `Some` overrides it for
    /// this open only.
    pub compression_level: Option<i32>,
    /// A pack is sealed once it reaches this size.
    pub pack_target_size: u64,
    /// Worker threads of a put's pipeline (default: the number of cores).
    pub threads: usize,
    /// Cap on chunk bytes held in put pipelines at once, across all puts (default 64 MiB).
    pub max_in_flight: u64,
    /// Largest resumable upload, declared or streamed (default 5 GiB).
    pub max_upload: u64,
    /// How long an upload session lives after its creation or its last append (default 24 h).
    pub upload_ttl: std::time::Duration,
    /// What each category accepts; every put is checked against it (default: the SPEC's
    /// categories plus `other`, see [`Policy::default`]).
    pub policy: Arc<Policy>,
    /// Hold local puts ([`Origin::Local`]: the CLI, the library) to the categories' size
    /// limits too (default false: the store's owner is limited only by quotas; a client's put
    /// always is).
    pub local_category_limits: bool,
    /// Limits on the resumable sessions of untrusted clients (open sessions and their
    /// metadata per user) and the reservation of deferred-length sessions.
    pub sessions: crate::upload::SessionLimits,
    /// Virus scanning of puts (default: none). When set, every put in a scanned category
    /// streams its content to the scanner as the pipeline reads it and commits only with a
    /// verdict (see [`crate::scan`]).
    pub scan: Option<ScanConfig>,
    /// Quota rules (default: the SPEC's tiers; users without a tier and owners that are not
    /// users are unlimited). See [`crate::quota`].
    pub quotas: QuotaConfig,
    pub clock: Arc<dyn Clock>,
    /// Reads note a file's last-read day in memory; a read at least this long (by `clock`)
    /// after the last write of those notes writes them, in one transaction (default 60 s).
    /// Commits, [`Store::flush`] and closing the store write them too.
    pub access_flush_interval: std::time::Duration,
    /// The cold tier chunks may move to (default: none — every chunk stays in local packs).
    /// See docs/design.md, "Cold tier".
    pub cold_tier: Option<Arc<dyn ColdTier>>,
    /// Lifecycle rules per category: when a file's chunks go cold, and in which storage class
    /// (default: SPEC §6 — documents after 90 days without a read, images 30, backups 7).
    /// Applied by [`Store::move_to_cold`] with `rules`, and by the scheduler's `tier` job;
    /// they do nothing without a `cold_tier`.
    pub tier_rules: TierRules,
    /// Bytes of cold objects the read path keeps in memory (default 64 MiB).
    pub cold_cache_bytes: u64,
    /// Cold reads fetch aligned blocks of this many bytes with one range GET each (default
    /// 2 MiB): a sequential read costs one request per block, a small range read one block.
    pub cold_read_block: u64,
    /// After a read that found cold chunks, move the file back to the hot tier (default
    /// false). Started when the reader is dropped, on a thread of its own; best effort.
    pub rehydrate_on_read: bool,
    /// Image probing limits, variant workers, retries (feature `media`).
    #[cfg(feature = "media")]
    pub media: crate::media::MediaConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            chunking: None,
            compression_level: None,
            pack_target_size: 64 << 20,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_in_flight: 64 << 20,
            max_upload: 5 << 30,
            upload_ttl: std::time::Duration::from_secs(24 * 60 * 60),
            policy: Arc::new(Policy::default()),
            local_category_limits: false,
            sessions: Default::default(),
            scan: None,
            quotas: QuotaConfig::default(),
            clock: Arc::new(SystemClock),
            access_flush_interval: std::time::Duration::from_secs(60),
            cold_tier: None,
            tier_rules: default_tier_rules(&Policy::default()),
            cold_cache_bytes: 64 << 20,
            cold_read_block: 2 << 20,
            rehydrate_on_read: false,
            #[cfg(feature = "media")]
            media: Default::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("chunking", &self.chunking)
            .field("compression_level", &self.compression_level)
            .field("pack_target_size", &self.pack_target_size)
            .field("threads", &self.threads)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_upload", &self.max_upload)
            .field("upload_ttl", &self.upload_ttl)
            .field("local_category_limits", &self.local_category_limits)
            .field("sessions", &self.sessions)
            .field("scan", &self.scan)
            .field("access_flush_interval", &self.access_flush_interval)
            .field("quotas", &self.quotas)
            .field("cold_tier", &self.cold_tier.as_ref().map(|t| t.describe()))
            .field("tier_rules", &self.tier_rules)
            .field("cold_cache_bytes", &self.cold_cache_bytes)
            .field("cold_read_block", &self.cold_read_block)
            .field("rehydrate_on_read", &self.rehydrate_on_read)
            .finish_non_exhaustive()
    }
}

/// Contents of `store.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub format: u32,
    /// 32 hex digits.
    pub store_id: String,
    pub chunking: ChunkParams,
    /// The zstd level puts use unless an open overrides it.
    #[serde(default = "default_level")]
    pub compression_level: i32,
    pub created_ms: i64,
}

fn default_level() -> i32 {
    DEFAULT_COMPRESSION_LEVEL
}

/// zstd level of a store created without one.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

impl Identity {
    pub fn store_id(&self) -> Result<u128> {
        u128::from_str_radix(&self.store_id, 16)
            .map_err(|_| Error::corrupt(IDENTITY_FILE, format!("bad store id {:?}", self.store_id)))
    }

    pub(crate) fn load(dir: &Path) -> Result<Identity> {
        let path = dir.join(IDENTITY_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_store(dir)),
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        let id: Identity = serde_json::from_slice(&bytes).map_err(|e| Error::NotAStore {
            path: dir.to_path_buf(),
            reason: format!("{IDENTITY_FILE} is unreadable: {e}"),
        })?;
        if id.format != STORE_FORMAT {
            return Err(Error::NotAStore {
                path: dir.to_path_buf(),
                reason: format!(
                    "store format {} (this build reads {STORE_FORMAT})",
                    id.format
                ),
            });
        }
        id.chunking.validate()?;
        Ok(id)
    }
}

/// Options of a put.
#[derive(Debug, Clone)]
pub struct PutOptions {
    pub owner: String,
    /// A path-like name, unique per owner. A put to an existing key makes a new version.
    pub key: Option<String>,
    /// The name the client gave; sanitised into the display name, kept as `original_name`.
    pub name: Option<String>,
    /// The category asked for. The file's category is decided from its extension and its
    /// detected type; a named category must take the file (else `category_mismatch`), and
    /// only a [`Origin::Local`] put may pick it over the one that lists the file (see
    /// `validate::admission`).
    pub category: Option<String>,
    /// The MIME type the client declared. The content's magic bytes must agree with it; the
    /// stored type is the validated one (see `validate::policy`).
    pub mime: Option<String>,
    pub public: bool,
    /// Free-form JSON metadata.
    pub metadata: serde_json::Value,
    /// The size the client announced: over the category's limit, the put is refused before
    /// any byte is read (or right after the first 64 KiB, when the content decides the
    /// category). The limit is enforced while streaming either way.
    pub declared_size: Option<u64>,
    /// Whom the put is made for. [`Origin::Local`] (the default: the CLI, the library)
    /// is the store's owner; [`Origin::Client`] an untrusted client, as every put of the HTTP
    /// service is: its category is the server's, and the categories' size limits always apply.
    pub origin: Origin,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            owner: DEFAULT_OWNER.to_string(),
            key: None,
            name: None,
            category: None,
            mime: None,
            public: false,
            metadata: serde_json::Value::Null,
            declared_size: None,
            origin: Origin::Local,
        }
    }
}

impl PutOptions {
    /// Options for a put made for the untrusted client `owner` (what the HTTP service uses).
    pub fn client(owner: impl Into<String>) -> Self {
        PutOptions {
            owner: owner.into(),
            origin: Origin::Client,
            ..Default::default()
        }
    }

    /// Options for a put to `key` of the default owner.
    pub fn key(key: impl Into<String>) -> Self {
        PutOptions {
            key: Some(key.into()),
            ..Default::default()
        }
    }
}

/// A file as callers see it: the file and its current version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileInfo {
    pub id: FileId,
    pub version: u32,
    pub owner: String,
    pub key: Option<String>,
    pub display_name: String,
    pub original_name: Option<String>,
    pub category: String,
    pub mime: String,
    pub size: u64,
    pub blake3: String,
    pub sha256: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub accessed_ms: i64,
    pub public: bool,
    pub processed: bool,
    pub quarantined: bool,
    pub deleted: bool,
    pub deleted_ms: Option<i64>,
    /// Since when the file is quarantined (quarantine purges count from it).
    pub quarantined_ms: Option<i64>,
    pub metadata: serde_json::Value,
    /// The current version's virus scan; `None` when its category is not scanned.
    pub scan: Option<ScanStamp>,
    /// The epoch signed links must carry to serve (see `FileRecord::link_epoch`). Not shown:
    /// it says how often the owner revoked links, which is nobody else's business.
    #[serde(skip)]
    pub link_epoch: u32,
}

impl FileInfo {
    pub(crate) fn new(f: &FileRecord, v: &VersionMeta) -> Self {
        FileInfo {
            id: f.id,
            version: v.version,
            owner: f.owner.clone(),
            key: f.key.clone(),
            display_name: v.display_name.clone(),
            original_name: v.original_name.clone(),
            category: f.category.clone(),
            mime: v.mime.clone(),
            size: v.size,
            blake3: v.blake3.clone(),
            sha256: v.sha256.clone(),
            created_ms: f.created_ms,
            updated_ms: f.updated_ms,
            accessed_ms: f.accessed_ms,
            public: f.flags & flags::PUBLIC != 0,
            processed: f.flags & flags::PROCESSED != 0,
            quarantined: f.flags & flags::QUARANTINED != 0,
            deleted: f.deleted_ms.is_some(),
            deleted_ms: f.deleted_ms,
            quarantined_ms: f
                .quarantined_ms
                .or((f.flags & flags::QUARANTINED != 0).then_some(f.updated_ms)),
            metadata: v.metadata.clone(),
            scan: v.scan.clone(),
            link_epoch: f.link_epoch,
        }
    }
}

/// One version of a file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    pub version: u32,
    pub size: u64,
    pub blake3: String,
    pub sha256: String,
    pub display_name: String,
    pub mime: String,
    pub created_ms: i64,
    pub restored_from: Option<u32>,
    pub current: bool,
    /// This version was written public (or made public while current). Others may read it
    /// only while the current version is public too (docs/design.md "Visibility").
    pub public: bool,
    /// This version's virus scan (an infected version is never served to users, even when a
    /// later clean version lifted the file's quarantine).
    pub scan: Option<ScanStamp>,
}

impl VersionInfo {
    /// The scanner found this content infected.
    pub fn infected(&self) -> bool {
        matches!(self.scan, Some(ScanStamp::Infected { .. }))
    }
}

impl VersionInfo {
    fn new(v: VersionMeta, latest: u32) -> Self {
        VersionInfo {
            version: v.version,
            size: v.size,
            blake3: v.blake3,
            sha256: v.sha256,
            display_name: v.display_name,
            mime: v.mime,
            created_ms: v.created_ms,
            restored_from: v.restored_from,
            current: v.version == latest,
            public: v.flags & flags::PUBLIC != 0,
            scan: v.scan,
        }
    }
}

/// What a put did.
#[derive(Debug, Clone, Serialize)]
pub struct PutReport {
    pub file: FileInfo,
    /// Chunks in the file.
    pub chunks: u64,
    /// Chunks that were not stored before and were written by this put.
    pub new_chunks: u64,
    /// Stored (compressed) bytes this put added to packs.
    pub new_stored_bytes: u64,
}

/// A query for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub owner: Option<String>,
    /// Key prefix (needs `owner`).
    pub prefix: Option<String>,
    pub category: Option<String>,
    pub include_deleted: bool,
    /// Only quarantined files (an admin's review list).
    pub quarantined_only: bool,
    /// Cursor from the previous page.
    pub after: Option<String>,
    /// Page size (default 100, at most 10,000).
    pub limit: Option<usize>,
}

/// A page of files.
#[derive(Debug, Clone, Serialize)]
pub struct ListPage {
    pub files: Vec<FileInfo>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Store-wide figures.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    pub files: u64,
    pub versions: u64,
    /// Sum of the sizes of all versions.
    pub logical_bytes: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Plain bytes of distinct chunks (after dedup, before compression).
    pub unique_bytes: u64,
    /// Compressed payload bytes of distinct chunks.
    pub stored_bytes: u64,
    /// Bytes of all pack files on disk (framing, manifests and garbage included).
    pub pack_bytes: u64,
    /// Size of the index file.
    pub index_bytes: u64,
    pub packs: u64,
    /// logical / unique: what deduplication saves.
    pub dedup_ratio: f64,
    /// logical / pack bytes: what dedup and compression save together.
    pub total_ratio: f64,
    pub chunking: ChunkParams,
    /// Chunks and bytes in local packs.
    pub hot: TierStats,
    /// Chunks and bytes in the cold tier (all zero without one).
    pub cold: TierStats,
    /// The cold tier, as it describes itself (`memory`, `dir:...`, `s3://...`), if any.
    pub cold_tier: Option<String>,
}

/// Figures of one storage tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierStats {
    /// Distinct chunks kept in the tier.
    pub chunks: u64,
    /// Plain bytes of those chunks.
    pub unique_bytes: u64,
    /// Stored (compressed) payload bytes of those chunks.
    pub stored_bytes: u64,
    /// Packs: local pack files, or cold objects.
    pub packs: u64,
    /// Bytes of those packs (garbage and framing included): disk bytes, or object bytes.
    pub pack_bytes: u64,
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub identity: Identity,
    pub config: Config,
    pub index: Index,
    pub packs: Packs,
    pub open_report: OpenReport,
    /// Chunks claimed by puts in flight, so concurrent puts of the same data write one copy.
    pub pending: Mutex<HashMap<ChunkId, pipeline::Slot>>,
    /// Access times not yet written to the index (written with the next commit, on close, or
    /// by a read once `access_flush_interval` has passed). Only files whose recorded last-read
    /// day is older than the read's are noted, so this holds at most the distinct files read
    /// since the last write.
    pub touched: Mutex<HashMap<FileId, i64>>,
    /// When (store clock, ms) the oldest access time in `touched` was noted; `i64::MAX` while
    /// `touched` is empty. Changed only under the `touched` lock.
    pub touched_oldest_ms: std::sync::atomic::AtomicI64,
    /// A read is writing the noted access times (the others do not queue behind it).
    pub touched_flushing: std::sync::atomic::AtomicBool,
    /// Bytes of chunk data in put pipelines, capped.
    pub in_flight: Arc<InFlight>,
    pub committer: Committer,
    /// What puts in flight need kept: pinned chunks, the packs they write to.
    pub gc_pins: crate::maintenance::gc::GcPins,
    /// Upload sessions being written to right now (one writer per session).
    pub upload_writers: crate::upload::Writers,
    /// Open upload sessions per owner, for `Config::sessions`' limits.
    pub open_uploads: crate::upload::OpenUploads,
    /// Quota rules, reservations of uploads in flight, warning subscribers.
    pub quotas: Quotas,
    /// Opened with `open_read_only`.
    pub read_only: bool,
    /// The cold tier, when the configuration has one.
    pub cold: Option<Cold>,
    /// The image job queue of running workers (feature `media`).
    #[cfg(feature = "media")]
    pub media: crate::media::jobs::MediaState,
    _lock: File,
}

/// An open store. Cheap to clone; all clones share one engine. Any number of threads may put
/// and get at once.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn check_level(level: i32) -> Result<()> {
    if !(0..=22).contains(&level) {
        return Err(Error::InvalidInput(format!(
            "compression level {level} is not in 0..=22"
        )));
    }
    Ok(())
}

impl Inner {
    /// Moves the access times noted by reads into the open write transaction.
    pub(crate) fn write_access_times(&self, w: &mut crate::index::WriteTx) -> Result<()> {
        let touched: Vec<(FileId, i64)> = {
            let mut t = self.touched.lock().unwrap();
            self.touched_oldest_ms
                .store(i64::MAX, std::sync::atomic::Ordering::Relaxed);
            t.drain().collect()
        };
        for (id, at) in touched {
            w.touch(id, at)?;
        }
        Ok(())
    }

    /// The zstd level for new chunks (resolved at open).
    pub(crate) fn compression_level(&self) -> i32 {
        self.config
            .compression_level
            .unwrap_or(DEFAULT_COMPRESSION_LEVEL)
    }
}

fn no_store(dir: &Path) -> Error {
    Error::NotAStore {
        path: dir.to_path_buf(),
        reason: format!("{IDENTITY_FILE} is missing (run `tessera init` to create a store)"),
    }
}

fn missing_index(dir: &Path) -> Error {
    Error::NotAStore {
        path: dir.to_path_buf(),
        reason: format!(
            "{INDEX_FILE} is missing; run `tessera recover` to rebuild it from the packs"
        ),
    }
}

/// How a store is being opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opening {
    ReadWrite,
    ReadOnly,
    /// Read-write, only to let redb repair the index for a read-only open.
    Repair,
}

/// Takes the store's lock file; fails with [`Error::Locked`] if someone else holds it.
pub(crate) fn lock_store(dir: &Path) -> Result<File> {
    take_lock(dir, false)
}

/// Takes the store's lock file shared (read-only openers); fails with [`Error::Locked`] if a
/// writer holds it.
fn lock_store_shared(dir: &Path) -> Result<File> {
    take_lock(dir, true)
}

fn take_lock(dir: &Path, shared: bool) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = crate::disk::private_options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening lock file {}", path.display()))?;
    // A store closed a moment ago can still look locked: flock locks belong to the open file
    // description, which a child process forked meanwhile by any thread of the owner shares
    // until its exec closes it. So a busy lock is retried briefly before it counts as held.
    let mut waited = std::time::Duration::ZERO;
    loop {
        let taken = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match taken {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if waited < LOCK_GRACE => {
                std::thread::sleep(LOCK_POLL);
                waited += LOCK_POLL;
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).ctx(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// How long a busy store lock is retried before `Error::Locked`.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(250);
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(5);

pub(crate) fn index_path(dir: &Path) -> PathBuf {
    dir.join(INDEX_FILE)
}

pub(crate) fn pack_dir(dir: &Path) -> PathBuf {
    dir.join(PACK_DIR)
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let ctx = || format!("writing {}", path.display());
    let mut f = crate::disk::private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .ctx(ctx)?;
    f.write_all(bytes).ctx(ctx)?;
    f.sync_all().ctx(ctx)?;
    fs::rename(&tmp, path).ctx(ctx)?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).ctx(ctx)
}

impl Store {
    /// Creates a new store in `dir` (created if missing; must not already hold a store).
    pub fn create(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let dir = dir.as_ref();
        // Everything that can be checked is checked before anything is created.
        let chunking = config.chunking.unwrap_or_default();
        chunking.validate()?;
        let compression_level = config
            .compression_level
            .unwrap_or(DEFAULT_COMPRESSION_LEVEL);
        check_level(compression_level)?;
        if dir.join(IDENTITY_FILE).exists() {
            return Err(Error::AlreadyExists {
                what: format!("a Tessera store in {}", dir.display()),
            });
        }
        crate::disk::create_private_dir(dir).ctx(|| format!("creating {}", dir.display()))?;
        let lock = lock_store(dir)?;
        if dir.join(IDENTITY_FILE).exists() {
            return Err(Error::AlreadyExists {
                what: format!("a Tessera store in {}", dir.display()),
            });
        }
        let identity = Identity {
            format: STORE_FORMAT,
            store_id: format!("{:032x}", FileId::new().0),
            chunking,
            compression_level,
            created_ms: config.clock.now_ms(),
        };
        // The index first: a crash before store.json is written leaves a directory that is not
        // yet a store, and `create` can simply run again.
        let _ = fs::remove_file(index_path(dir));
        let index = Index::create(&index_path(dir))?;
        let mut w = index.write()?;
        w.set_meta("store_id", identity.store_id.as_bytes())?;
        w.commit()?;
        drop(index);
        let json = serde_json::to_vec_pretty(&identity).expect("identity serialises");
        write_atomic(&dir.join(IDENTITY_FILE), &json)?;
        Self::open_locked(dir, config, lock, None, Opening::ReadWrite)
    }

    /// Opens an existing store.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let dir = dir.as_ref();
        if !dir.join(IDENTITY_FILE).exists() {
            return Err(no_store(dir));
        }
        let lock = lock_store(dir)?;
        Self::open_locked(dir, config, lock, None, Opening::ReadWrite)
    }

    /// Opens an existing store for reading only: nothing on disk changes (no fsync at open or
    /// close, which makes it the cheap way for a short-lived process to read), several read-only
    /// openers may share the store, and a writer is kept out while they have it. Puts, deletes
    /// and other writes fail with `InvalidInput`; access times are not recorded.
    ///
    /// If the index was not closed cleanly (the last writer crashed), this first opens the store
    /// read-write once to repair it.
    pub fn open_read_only(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let dir = dir.as_ref();
        if !dir.join(IDENTITY_FILE).exists() {
            return Err(no_store(dir));
        }
        let lock = lock_store_shared(dir)?;
        match Index::open_read_only(&index_path(dir)) {
            Ok(index) => Self::assemble(dir, config, lock, None, index, Opening::ReadOnly),
            Err(ReadOnlyOpen::NeedsRepair) => {
                drop(lock);
                // Repairs, and nothing else: not even the journaling of an older store's
                // accounts, which waits for a read-write open of the store's owner.
                let lock = lock_store(dir)?;
                drop(Self::open_locked(
                    dir,
                    config.clone(),
                    lock,
                    None,
                    Opening::Repair,
                )?);
                let lock = lock_store_shared(dir)?;
                let index = Index::open_read_only(&index_path(dir)).map_err(|e| match e {
                    ReadOnlyOpen::Failed(e) => e,
                    ReadOnlyOpen::NeedsRepair => Error::Index {
                        context: "opening the index read-only".into(),
                        detail: "still needs repair after a read-write open".into(),
                    },
                })?;
                Self::assemble(dir, config, lock, None, index, Opening::ReadOnly)
            }
            Err(ReadOnlyOpen::Failed(e)) => {
                if !index_path(dir).exists() {
                    return Err(missing_index(dir));
                }
                Err(e)
            }
        }
    }

    /// Opens a store, creating it if `dir` holds none.
    pub fn open_or_create(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let dir = dir.as_ref();
        if dir.join(IDENTITY_FILE).exists() {
            Self::open(dir, config)
        } else {
            Self::create(dir, config)
        }
    }

    /// Opens a store whose packs live in `storage` instead of `dir/packs` — the seam tests use
    /// to inject faults.
    pub fn open_with_storage(
        dir: impl AsRef<Path>,
        config: Config,
        storage: Arc<dyn PackStorage>,
    ) -> Result<Store> {
        let dir = dir.as_ref();
        let lock = lock_store(dir)?;
        Self::open_locked(dir, config, lock, Some(storage), Opening::ReadWrite)
    }

    fn open_locked(
        dir: &Path,
        config: Config,
        lock: File,
        storage: Option<Arc<dyn PackStorage>>,
        how: Opening,
    ) -> Result<Store> {
        let ipath = index_path(dir);
        if !ipath.exists() {
            return Err(missing_index(dir));
        }
        let index = Index::open(&ipath)?;
        Self::assemble(dir, config, lock, storage, index, how)
    }

    fn assemble(
        dir: &Path,
        mut config: Config,
        lock: File,
        storage: Option<Arc<dyn PackStorage>>,
        index: Index,
        how: Opening,
    ) -> Result<Store> {
        let read_only = how == Opening::ReadOnly;
        let identity = Identity::load(dir)?;
        if let Some(asked) = config.chunking
            && asked != identity.chunking
        {
            return Err(Error::ConfigMismatch(format!(
                "the store was created with chunk sizes {}/{}/{} bytes (min/avg/max) and cannot \
                 change them; asked for {}/{}/{}",
                identity.chunking.min_size,
                identity.chunking.avg_size,
                identity.chunking.max_size,
                asked.min_size,
                asked.avg_size,
                asked.max_size
            )));
        }
        let level = config
            .compression_level
            .unwrap_or(identity.compression_level);
        check_level(level)?;
        config.compression_level = Some(level);
        if config.pack_target_size < 1 << 20 {
            return Err(Error::InvalidInput(
                "pack_target_size must be at least 1 MiB".into(),
            ));
        }
        // Room for a few maximal chunks, so the pipeline always makes progress.
        let min_in_flight = 4 * identity.chunking.max_size as u64;
        if config.max_in_flight < min_in_flight {
            return Err(Error::InvalidInput(format!(
                "max_in_flight must be at least {min_in_flight} bytes (four maximal chunks)"
            )));
        }
        let store_id = identity.store_id()?;
        let r = index.read()?;
        let indexed_id = r
            .meta("store_id")?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        if indexed_id.as_deref() != Some(identity.store_id.as_str()) {
            return Err(Error::NotAStore {
                path: dir.to_path_buf(),
                reason: format!(
                    "{INDEX_FILE} belongs to store {indexed_id:?}, not {}; run `tessera recover`",
                    identity.store_id
                ),
            });
        }
        let known = r.packs()?;
        drop(r);
        if !read_only {
            index.ensure_zero_refs(config.clock.now_ms())?;
            index.ensure_content_files()?;
            index.ensure_usage(config.clock.now_ms())?;
        }
        config.quotas.check().map_err(Error::InvalidInput)?;
        let storage = match storage {
            Some(s) => s,
            None => Arc::new(
                FsPackStorage::new(pack_dir(dir))
                    .ctx(|| format!("opening {}", pack_dir(dir).display()))?,
            ),
        };
        let (packs, open_report) = Packs::open(
            storage,
            store_id,
            config.pack_target_size,
            &known,
            read_only,
        )?;
        let in_flight = Arc::new(InFlight::new(config.max_in_flight));
        let quotas = Quotas::new(config.quotas.clone());
        let cold = config
            .cold_tier
            .clone()
            .map(|t| Cold::new(t, store_id, config.cold_read_block, config.cold_cache_bytes));
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                identity,
                config,
                index,
                packs,
                open_report,
                pending: Mutex::new(HashMap::new()),
                touched: Mutex::new(HashMap::new()),
                touched_oldest_ms: std::sync::atomic::AtomicI64::new(i64::MAX),
                touched_flushing: std::sync::atomic::AtomicBool::new(false),
                in_flight,
                committer: Committer::new(),
                gc_pins: Default::default(),
                upload_writers: Default::default(),
                open_uploads: Default::default(),
                quotas,
                read_only,
                cold,
                #[cfg(feature = "media")]
                media: Default::default(),
                _lock: lock,
            }),
        };
        crate::quota::load_sessions(&store.inner)?;
        crate::upload::load_open(&store.inner)?;
        if how == Opening::ReadWrite {
            // Stores made before accounts were journaled: journal them now, once.
            crate::users::journal_existing_accounts(&store.inner);
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn chunk_params(&self) -> ChunkParams {
        self.inner.identity.chunking
    }

    /// The zstd level puts use (the store's, unless this open overrode it).
    pub fn compression_level(&self) -> i32 {
        self.inner.compression_level()
    }

    /// What opening the store found (truncated tails, missing packs).
    pub fn open_report(&self) -> &OpenReport {
        &self.inner.open_report
    }

    /// Every row of every index table as text (tests compare it across dry runs).
    #[doc(hidden)]
    pub fn debug_index_dump(&self) -> Result<String> {
        self.inner.index.read()?.dump()
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The virus-scanning configuration puts run under, if any.
    pub fn scan_config(&self) -> Option<&ScanConfig> {
        self.inner.config.scan.as_ref()
    }

    /// Chunk bytes in put pipelines now, and the most there have ever been at once.
    pub fn in_flight(&self) -> (u64, u64) {
        self.inner.in_flight.usage()
    }

    fn now(&self) -> i64 {
        self.inner.config.clock.now_ms()
    }

    // ---------------------------------------------------------------- put

    /// Stores the bytes of `source` as a new file, or as a new version of the file at
    /// `opts.key`. Streams through the parallel pipeline: memory in flight stays under
    /// `Config::max_in_flight` whatever the size of the input. When this returns `Ok`, the
    /// version is durable.
    ///
    /// The put is checked against `Config::policy` first: category, extension, declared type
    /// and size before any byte is read, then the content's magic bytes, and the size limit
    /// while streaming. A refused put ([`Error::Rejected`], [`Error::TooLarge`]) commits nothing.
    ///
    /// With `Config::scan`, content in a scanned category goes to the virus scanner as it is
    /// read, and the version commits only with the scanner's verdict: clean, it is stored;
    /// infected, it is stored quarantined and the put fails with [`Error::Infected`] naming the
    /// signature and the file; with no verdict (scanner down, timing out, failing) the put fails
    /// with [`Error::ScanUnavailable`] and commits nothing, unless `fail_open` stores it marked
    /// unscanned.
    ///
    /// The owner's quota (and the organisation's) must have room: the declared size is
    /// reserved before any byte is read, and the reservation grows as the content streams;
    /// when it cannot, the put fails with [`Error::QuotaExceeded`] and commits nothing.
    pub fn put(&self, source: impl Read, opts: &PutOptions) -> Result<PutReport> {
        self.put_admitted(source, opts, Backing::Own)
    }

    /// A put whose quota reservation may already be held, in part, by `backing` (a resumable
    /// session's finish).
    pub(crate) fn put_admitted(
        &self,
        source: impl Read,
        opts: &PutOptions,
        backing: Backing<'_>,
    ) -> Result<PutReport> {
        self.put_inspected(source, opts, backing, None)
    }

    /// A put whose whole content `inspect` sees before it commits (the image path, feature
    /// `media`): the content is read into memory — at most `Inspect::max_bytes`, else
    /// [`Error::TooLarge`] — then `inspect` may refuse it, rewrite it (what it leaves in the
    /// buffer is what is stored), add to the version's metadata, and ask for a job row, which
    /// the same commit writes.
    pub(crate) fn put_inspected(
        &self,
        source: impl Read,
        opts: &PutOptions,
        backing: Backing<'_>,
        inspect: Option<&dyn Inspect>,
    ) -> Result<PutReport> {
        let staged = self.stage(source, opts, backing, inspect)?;
        let file = self.inner.committer.commit(&self.inner, staged.change);
        // The reservation is held until the commit has turned it into usage, and only now
        // may the put's chunk claims end (see `pipeline::Claims`).
        drop(staged.quota);
        drop(staged.ingested);
        staged.counts.report(file?)
    }

    /// Everything a put does short of its commit: validation, quota admission, ingest (chunks
    /// written to packs, claimed and pinned), the scan's verdict, the inspection. Nothing is
    /// visible until the returned change commits; dropping it commits nothing (its chunks are
    /// garbage for the collector, like those of any failed put).
    pub(crate) fn stage<'s>(
        &'s self,
        source: impl Read,
        opts: &PutOptions,
        backing: Backing<'_>,
        inspect: Option<&dyn Inspect>,
    ) -> Result<Staged<'s>> {
        let (mut prepared, mut source) = self.prepare_put(opts, source, backing)?;
        let (mut ingested, outcome, job) = match inspect {
            None => {
                let ingested = pipeline::ingest(&self.inner, &mut source)?;
                (ingested, source.finish()?, None)
            }
            Some(inspect) => {
                let limit = inspect.max_bytes();
                let mut content = Vec::new();
                (&mut source)
                    .take(limit + 1)
                    .read_to_end(&mut content)
                    .map_err(crate::error::input_error)?;
                if content.len() as u64 > limit {
                    return Err(Error::TooLarge {
                        limit,
                        what: "an image to process".into(),
                    });
                }
                let outcome = source.finish()?;
                let job = inspect.inspect(&mut content, &mut prepared.meta.metadata)?;
                let ingested = pipeline::ingest(&self.inner, &content[..])?;
                (ingested, outcome, job)
            }
        };
        let quota = prepared.quota.clone();
        let size = ingested.size;
        let (mut change, counts) = prepared.change(&mut ingested, outcome);
        if let Change::Version { image_job, .. } = &mut change {
            *image_job = job;
        }
        Ok(Staged {
            change,
            counts,
            ingested,
            quota,
            size,
        })
    }

    /// Stores many inputs and commits them together: one fsync pair for the whole batch
    /// instead of one per file. Each input succeeds or fails on its own; every `Ok` is durable
    /// when this returns.
    pub fn put_many<R: Read>(
        &self,
        items: impl IntoIterator<Item = (R, PutOptions)>,
    ) -> Vec<Result<PutReport>> {
        let mut batch = self.batch();
        for (source, opts) in items {
            batch.put(source, &opts);
        }
        batch.commit()
    }

    /// Commits staged puts in one group; one result per change, in order.
    pub(crate) fn commit_staged(&self, staged: Vec<Staged<'_>>) -> Vec<Result<PutReport>> {
        let mut changes = Vec::with_capacity(staged.len());
        let mut rest = Vec::with_capacity(staged.len());
        for s in staged {
            changes.push(s.change);
            rest.push((s.counts, s.ingested, s.quota));
        }
        let committed = self.inner.committer.commit_all(&self.inner, changes);
        rest.into_iter()
            .zip(committed)
            .map(|((counts, ingested, quota), outcome)| {
                drop(quota);
                drop(ingested);
                outcome.and_then(|file| counts.report(file))
            })
            .collect()
    }

    /// Validates a put's options, derives its names, admits it under the policy and guards its
    /// source: the returned reader has passed the magic-byte check, knows the file's category
    /// and validated MIME type, and enforces the category's size limit (when it applies to the
    /// put's origin); when the file is virus-scanned, it feeds the scan as it is read.
    #[allow(clippy::type_complexity)]
    fn prepare_put<'s, R: Read>(
        &'s self,
        opts: &PutOptions,
        source: R,
        backing: Backing<'_>,
    ) -> Result<(PreparedPut<'s>, ScanGate<'s, Guarded<QuotaGate<'s, R>>>)> {
        validate::check_label("owner", &opts.owner)?;
        if let Some(key) = &opts.key {
            validate::check_key(key)?;
        }
        if let Some(category) = &opts.category {
            validate::check_label("category", category)?;
        }
        let original = opts.name.clone().or_else(|| {
            opts.key
                .as_ref()
                .map(|k| k.rsplit('/').next().unwrap_or(k).to_string())
        });
        let display_name = validate::sanitize_display_name(original.as_deref().unwrap_or("file"));
        let admission = self.inner.config.policy.admit(&Claims {
            name: Some(&display_name),
            mime: opts.mime.as_deref(),
            category: opts.category.as_deref(),
            size: opts.declared_size,
            origin: opts.origin,
            local_limits: self.inner.config.local_category_limits,
        })?;
        // The quota last among the checks that need no content, so a refused type does not
        // count against anything; before the guard, which reads the first bytes.
        let quota = Arc::new(Mutex::new(Admission::new(
            &self.inner,
            &opts.owner,
            opts.declared_size,
            backing,
        )?));
        // The category, and with it the limit and the scan decision, is settled here, from
        // the first bytes: before anything is sent to the scanner or stored.
        let source = admission.guard(QuotaGate::new(source, quota.clone()))?;
        let category = source.category().to_string();
        let mime = source.mime().to_string();
        let scanned: Vec<String> = source
            .decision()
            .scan_categories()
            .into_iter()
            .map(String::from)
            .collect();
        let scanned: Vec<&str> = scanned.iter().map(String::as_str).collect();
        let source = ScanGate::new(
            source,
            self.inner.config.scan.as_ref(),
            &scanned,
            opts.declared_size,
        )?;
        let prepared = PreparedPut {
            quota,
            meta: VersionMeta {
                file_id: FileId(0),
                version: 0,
                owner: opts.owner.clone(),
                key: opts.key.clone(),
                original_name: original.filter(|o| *o != display_name),
                display_name,
                category,
                mime,
                size: 0,
                blake3: String::new(),
                sha256: String::new(),
                file_created_ms: 0,
                created_ms: 0,
                flags: if opts.public { flags::PUBLIC } else { 0 },
                metadata: opts.metadata.clone(),
                restored_from: None,
                scan: None,
            },
        };
        Ok((prepared, source))
    }

    // ---------------------------------------------------------------- files

    /// The id of the file at `key` of `owner`.
    pub fn resolve_key(&self, owner: &str, key: &str) -> Result<FileId> {
        self.inner
            .index
            .read()?
            .file_by_key(owner, key)?
            .map(|f| f.id)
            .ok_or_else(|| Error::not_found(format!("key {key:?} of owner {owner:?}")))
    }

    /// The file and its current version, deleted or not. Touches no data.
    pub fn stat(&self, id: FileId) -> Result<FileInfo> {
        let r = self.inner.index.read()?;
        let f = r
            .file(id)?
            .ok_or_else(|| Error::not_found(format!("file {id}")))?;
        let v = r.version(id, f.latest)?.ok_or_else(|| {
            Error::corrupt("index", format!("file {id} has no version {}", f.latest))
        })?;
        let mut info = FileInfo::new(&f, &v.meta);
        if let Some(&t) = self.inner.touched.lock().unwrap().get(&id) {
            info.accessed_ms = info.accessed_ms.max(t);
        }
        Ok(info)
    }

    /// All versions of a file, oldest first.
    pub fn versions(&self, id: FileId) -> Result<Vec<VersionInfo>> {
        let r = self.inner.index.read()?;
        let f = r
            .file(id)?
            .ok_or_else(|| Error::not_found(format!("file {id}")))?;
        Ok(r.versions(id)?
            .into_iter()
            .map(|v| VersionInfo::new(v.meta, f.latest))
            .collect())
    }

    /// One version of a file.
    pub fn version_info(&self, id: FileId, version: u32) -> Result<VersionInfo> {
        let r = self.inner.index.read()?;
        let f = r
            .file(id)?
            .ok_or_else(|| Error::not_found(format!("file {id}")))?;
        let v = r
            .version(id, version)?
            .ok_or_else(|| Error::not_found(format!("version {version} of file {id}")))?;
        Ok(VersionInfo::new(v.meta, f.latest))
    }

    /// Reads the current version of a live (not deleted) file.
    pub fn get(&self, id: FileId) -> Result<FileReader> {
        self.reader(id, None, None, true)
    }

    /// Reads an older version of a live file.
    pub fn get_version(&self, id: FileId, version: u32) -> Result<FileReader> {
        self.reader(id, Some(version), None, true)
    }

    /// Reads `range` of the current version; only the chunks that overlap it are touched.
    pub fn get_range(&self, id: FileId, range: Range<u64>) -> Result<FileReader> {
        self.reader(id, None, Some(range), true)
    }

    /// Reads `range` of an older version.
    pub fn get_version_range(
        &self,
        id: FileId,
        version: u32,
        range: Range<u64>,
    ) -> Result<FileReader> {
        self.reader(id, Some(version), Some(range), true)
    }

    /// Reads a whole version into memory (convenience for small files and tests).
    pub fn read_all(&self, id: FileId) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.get(id)?.read_to_end(&mut out).map_err(io_to_error)?;
        Ok(out)
    }

    /// Reads a version for maintenance (a rescan, say): not an access, so the file's access
    /// time, which reports and lifecycle rules go by, stays as it was.
    pub(crate) fn get_version_untracked(&self, id: FileId, version: u32) -> Result<FileReader> {
        self.reader(id, Some(version), None, false)
    }

    fn reader(
        &self,
        id: FileId,
        version: Option<u32>,
        range: Option<Range<u64>>,
        access: bool,
    ) -> Result<FileReader> {
        let r = self.inner.index.read()?;
        let f = r
            .file(id)?
            .ok_or_else(|| Error::not_found(format!("file {id}")))?;
        if f.deleted_ms.is_some() {
            return Err(Error::not_found(format!(
                "file {id} (deleted; undelete it to read)"
            )));
        }
        let version = version.unwrap_or(f.latest);
        let v: VersionRecord = r
            .version(id, version)?
            .ok_or_else(|| Error::not_found(format!("version {version} of file {id}")))?;
        let chunks = r.version_chunks(id, version)?;
        let size = v.meta.size;
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(Error::InvalidInput(format!(
                "range {}..{} is outside the file's {size} bytes",
                range.start, range.end
            )));
        }
        drop(r);
        if access && !self.inner.read_only {
            self.note_read(&f);
        }
        Ok(FileReader::new(self.clone(), id, version, chunks, range))
    }

    /// A page of files matching `q`.
    pub fn list(&self, q: &ListQuery) -> Result<ListPage> {
        let r = self.inner.index.read()?;
        let filter = ListFilter {
            owner: q.owner.as_deref(),
            prefix: q.prefix.as_deref(),
            category: q.category.as_deref(),
            include_deleted: q.include_deleted,
            quarantined_only: q.quarantined_only,
            after: q.after.as_deref(),
            limit: q.limit.unwrap_or(100).clamp(1, 10_000),
        };
        let (records, next) = r.list(&filter)?;
        let mut files = Vec::with_capacity(records.len());
        for f in records {
            let v = r.version(f.id, f.latest)?.ok_or_else(|| {
                Error::corrupt(
                    "index",
                    format!("file {} has no version {}", f.id, f.latest),
                )
            })?;
            files.push(FileInfo::new(&f, &v.meta));
        }
        Ok(ListPage { files, next })
    }

    /// Soft delete: the file disappears from reads and listings; its data stays until purged.
    /// Deleting a deleted file changes nothing.
    pub fn delete(&self, id: FileId) -> Result<FileInfo> {
        let info = self
            .inner
            .committer
            .commit(&self.inner, Change::Delete(id))?;
        // An image's variants follow it (a crash in between: the workers' next start does it).
        #[cfg(feature = "media")]
        self.variants_follow(id)?;
        Ok(info)
    }

    /// Undoes a soft delete. Undeleting a live file changes nothing.
    pub fn undelete(&self, id: FileId) -> Result<FileInfo> {
        let info = self
            .inner
            .committer
            .commit(&self.inner, Change::Undelete(id))?;
        #[cfg(feature = "media")]
        self.variants_follow(id)?;
        Ok(info)
    }

    /// Makes old `version` the current content again, as a new version (history is kept).
    pub fn restore(&self, id: FileId, version: u32) -> Result<FileInfo> {
        let r = self.inner.index.read()?;
        let f = r
            .file(id)?
            .ok_or_else(|| Error::not_found(format!("file {id}")))?;
        if f.deleted_ms.is_some() {
            return Err(Error::not_found(format!(
                "file {id} (deleted; undelete it first)"
            )));
        }
        let old = r
            .version(id, version)?
            .ok_or_else(|| Error::not_found(format!("version {version} of file {id}")))?;
        let chunks = r.version_chunks(id, version)?;
        drop(r);
        let mut meta = old.meta;
        meta.restored_from = Some(version);
        // The file keeps its flags, except that quarantine follows the content (restoring an
        // infected version quarantines the file, restoring a clean one lifts it), and the new
        // version is public only when both the file and the restored version are: a restore
        // never publishes content that was written private (restoring it onto a public file
        // makes the file private, which revokes its links).
        let public = f.flags & meta.flags & flags::PUBLIC;
        meta.flags = (f.flags & !flags::QUARANTINED & !flags::PUBLIC) | public;
        if let Some(ScanStamp::Infected { .. }) = &meta.scan {
            meta.flags |= flags::QUARANTINED;
        }
        // A restored version counts as new usage: it must fit like a put of its size.
        let _quota = Admission::new(&self.inner, &f.owner, Some(meta.size), Backing::Own)?;
        // Every chunk of an indexed version is indexed, so no rows are needed.
        let change = Change::Version {
            target: Target::Existing(id),
            meta,
            chunks,
            rows: HashMap::new(),
            image_job: None,
        };
        self.inner.committer.commit(&self.inner, change)
    }

    /// Store-wide figures.
    pub fn stats(&self) -> Result<StoreStats> {
        let r = self.inner.index.read()?;
        let c = r.counters()?;
        let packs = r.packs()?.len() as u64;
        let pack_bytes = self.inner.packs.disk_bytes()?;
        let index_bytes = fs::metadata(index_path(&self.inner.dir)).map_or(0, |m| m.len());
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let cc = r.cold_counters()?;
        let cold_packs = r.cold_packs()?;
        let cold = TierStats {
            chunks: cc.chunks,
            unique_bytes: cc.raw_bytes,
            stored_bytes: cc.stored_bytes,
            packs: cold_packs.len() as u64,
            pack_bytes: cold_packs.iter().map(|(_, p)| p.len).sum(),
        };
        let hot = TierStats {
            chunks: c.chunks.saturating_sub(cc.chunks),
            unique_bytes: c.chunk_raw_bytes.saturating_sub(cc.raw_bytes),
            stored_bytes: c.chunk_stored_bytes.saturating_sub(cc.stored_bytes),
            packs,
            pack_bytes,
        };
        Ok(StoreStats {
            files: c.files,
            versions: c.versions,
            logical_bytes: c.logical_bytes,
            chunks: c.chunks,
            unique_bytes: c.chunk_raw_bytes,
            stored_bytes: c.chunk_stored_bytes,
            pack_bytes,
            index_bytes,
            packs,
            dedup_ratio: ratio(c.logical_bytes, c.chunk_raw_bytes),
            total_ratio: ratio(c.logical_bytes, pack_bytes + cold.pack_bytes),
            chunking: self.inner.identity.chunking,
            hot,
            cold,
            cold_tier: self.inner.cold.as_ref().map(|c| c.tier.describe()),
        })
    }

    /// Notes that `f` was read now. Cheap on the common path: nothing when the index already
    /// has today as the file's last-read day; otherwise a map insert; and once the oldest
    /// noted read is `access_flush_interval` old, the read that notices writes them all in one
    /// transaction. A failed write only loses access times, so the read goes on.
    fn note_read(&self, f: &crate::index::FileRecord) {
        use std::sync::atomic::Ordering;
        let now = self.now();
        if crate::index::day_of(f.accessed_ms) >= crate::index::day_of(now) {
            return;
        }
        let oldest = {
            let mut t = self.inner.touched.lock().unwrap();
            t.insert(f.id, now);
            let oldest = self.inner.touched_oldest_ms.load(Ordering::Relaxed);
            if oldest == i64::MAX {
                self.inner.touched_oldest_ms.store(now, Ordering::Relaxed);
                now
            } else {
                oldest
            }
        };
        let interval = self.inner.config.access_flush_interval.as_millis() as i64;
        // One reader writes; the others go on reading rather than queue for the index.
        if now.saturating_sub(oldest) >= interval
            && self
                .inner
                .touched_flushing
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            if let Err(e) = self.flush() {
                tracing::warn!("could not record access times: {e}");
            }
            self.inner.touched_flushing.store(false, Ordering::Release);
        }
    }

    /// Writes pending access times to the index. Also done with every commit and on drop.
    ///
    /// Durable (one fsync), so a crash loses at most the reads noted since the last flush,
    /// commit or read-triggered write — one `access_flush_interval` of reads.
    pub fn flush(&self) -> Result<()> {
        if self.inner.touched.lock().unwrap().is_empty() {
            return Ok(());
        }
        let mut w = self.inner.index.write()?;
        self.inner.write_access_times(&mut w)?;
        w.commit()
    }

    /// Reads and checks the chunk at `loc`, which must be `id`.
    pub(crate) fn read_chunk(&self, id: &ChunkId, loc: Location, buf: &mut Vec<u8>) -> Result<()> {
        if crate::tier::is_cold_pack(loc.pack) {
            return self.read_cold_chunk(id, loc, buf);
        }
        let header = self.inner.packs.read_into(loc, buf);
        if header.is_err() && !self.inner.packs.has(loc.pack) {
            // Compaction may have moved the chunk (and removed its pack) since the reader
            // looked it up: ask the index again, once.
            if let Some(row) = self.inner.index.read()?.chunk(id)?
                && row.loc != loc
                && self.inner.packs.has(row.loc.pack)
            {
                return self.read_chunk(id, row.loc, buf);
            }
        }
        let header = header.map_err(|e| match e {
            Error::Corrupt {
                location, detail, ..
            } => Error::Corrupt {
                location,
                detail,
                chunk: Some(id.to_hex()),
            },
            other => other,
        })?;
        if header.key != id.0 || header.kind != RecordKind::Chunk {
            return Err(Error::Corrupt {
                location: format!(
                    "{} at offset {}",
                    self.inner.packs.storage().describe(loc.pack),
                    loc.offset
                ),
                detail: "the index points at a different record".into(),
                chunk: Some(id.to_hex()),
            });
        }
        Ok(())
    }
}

impl Store {
    /// [`Store::read_chunk`] of a chunk in a cold pack: the record through the block cache,
    /// checked like a local one (header and payload CRCs, BLAKE3 of the plain bytes against
    /// the id). A record that fails is never returned, and its cached blocks are dropped.
    fn read_cold_chunk(&self, id: &ChunkId, loc: Location, buf: &mut Vec<u8>) -> Result<()> {
        match self.read_cold_chunk_once(id, loc, buf) {
            // Bytes damaged in the cache or in transit: the blocks are dropped; fetch them
            // again, once. Damage that is in the object fails again.
            Err(Error::Corrupt { .. }) => self.read_cold_chunk_once(id, loc, buf),
            other => other,
        }
    }

    fn read_cold_chunk_once(&self, id: &ChunkId, loc: Location, buf: &mut Vec<u8>) -> Result<()> {
        let Some(cold) = &self.inner.cold else {
            return Err(Error::Unavailable {
                context: format!("reading chunk {}", id.to_hex()),
                message: "the chunk is in the cold tier and no cold tier is configured".into(),
            });
        };
        let raw = match cold.record(&self.inner.index, loc) {
            Ok(raw) => raw,
            Err(e) => {
                // A move back to hot (and the collector) may have taken the chunk out of this
                // pack since the reader looked it up: ask the index again, once.
                if let Some(row) = self.inner.index.read()?.chunk(id)?
                    && row.loc != loc
                {
                    return self.read_chunk(id, row.loc, buf);
                }
                return Err(match e {
                    Error::Corrupt {
                        location, detail, ..
                    } => Error::Corrupt {
                        location,
                        detail,
                        chunk: Some(id.to_hex()),
                    },
                    other => other,
                });
            }
        };
        let corrupt = |detail: String| {
            cold.invalidate(loc);
            Error::Corrupt {
                location: format!("{} at offset {}", cold.key(loc.pack), loc.offset),
                detail,
                chunk: Some(id.to_hex()),
            }
        };
        let (header, stored) =
            crate::pack::record::decode_record(&raw).map_err(|e| corrupt(e.to_string()))?;
        if header.record_len() != loc.len as u64 {
            return Err(corrupt(format!(
                "record is {} bytes, the index says {}",
                header.record_len(),
                loc.len
            )));
        }
        if header.key != id.0 || header.kind != RecordKind::Chunk {
            return Err(corrupt("the index points at a different record".into()));
        }
        crate::pack::record::decode_payload_into(&header, stored, buf)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(())
    }

    /// Whether the store has a cold tier (`Config::cold_tier`).
    pub fn has_cold_tier(&self) -> bool {
        self.inner.cold.is_some()
    }

    /// Bytes the cold read path's cache holds now (never more than `Config::cold_cache_bytes`,
    /// plus one block).
    pub fn cold_cached_bytes(&self) -> u64 {
        self.inner.cold.as_ref().map_or(0, |c| c.cached_bytes())
    }

    /// Range GETs the cold read path has issued since the store opened (tests, benchmarks).
    pub fn cold_gets(&self) -> u64 {
        self.inner
            .cold
            .as_ref()
            .map_or(0, |c| c.gets.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.touched.get_mut().unwrap().is_empty() {
            return;
        }
        let flush = || -> Result<()> {
            let mut w = self.index.write()?;
            self.write_access_times(&mut w)?;
            w.commit_lazy()
        };
        if let Err(e) = flush() {
            tracing::warn!("could not record access times on close: {e}");
        }
    }
}

/// A put that has read and written its content and waits for its commit (see
/// [`Store::stage`]).
pub(crate) struct Staged<'s> {
    pub change: Change,
    counts: PutCounts,
    /// Keeps the put's chunks claimed and pinned until it commits or is dropped.
    ingested: pipeline::Ingested<'s>,
    /// The put's quota reservation, held until the commit has turned it into usage.
    quota: Arc<Mutex<Admission<'s>>>,
    /// Content bytes.
    pub size: u64,
}

impl Staged<'_> {
    /// The signature the scanner found, if it found one.
    pub fn infected(&self) -> Option<&str> {
        self.counts.infected.as_deref()
    }

    /// The owner of the put.
    pub fn owner(&self) -> &str {
        match &self.change {
            Change::Version { meta, .. } => &meta.owner,
            _ => "",
        }
    }
}

/// A put's options, checked, waiting for its content.
struct PreparedPut<'s> {
    meta: VersionMeta,
    /// The put's quota reservation, shared with the gate that grows it.
    quota: Arc<Mutex<Admission<'s>>>,
}

impl PreparedPut<'_> {
    /// The change that commits the ingested content (taking its chunk list and rows; the
    /// claims stay with `ingested`), and the put's counts.
    /// An infected verdict quarantines the file.
    fn change(self, ingested: &mut pipeline::Ingested<'_>, scan: Outcome) -> (Change, PutCounts) {
        let mut meta = self.meta;
        let mut infected = None;
        if let Outcome::Stamped(stamp) = scan {
            if let ScanStamp::Infected { signature } = &stamp {
                meta.flags |= flags::QUARANTINED;
                infected = Some(signature.clone());
            }
            meta.scan = Some(stamp);
        }
        meta.size = ingested.size;
        meta.blake3 = std::mem::take(&mut ingested.blake3);
        meta.sha256 = std::mem::take(&mut ingested.sha256);
        let counts = PutCounts {
            chunks: ingested.chunks.len() as u64,
            new_chunks: ingested.new_chunks,
            new_stored_bytes: ingested.new_stored_bytes,
            infected,
        };
        let change = Change::Version {
            target: Target::ByKey,
            meta,
            chunks: std::mem::take(&mut ingested.chunks),
            rows: std::mem::take(&mut ingested.rows),
            image_job: None,
        };
        (change, counts)
    }
}

/// Looks at a put's whole content before it commits; see [`Store::put_inspected`].
pub(crate) trait Inspect {
    /// The most content it takes into memory.
    fn max_bytes(&self) -> u64;
    /// Refuses the content (the put commits nothing), or returns the options of the job the
    /// commit must enqueue. May rewrite `content` and add to `metadata`.
    fn inspect(
        &self,
        content: &mut Vec<u8>,
        metadata: &mut serde_json::Value,
    ) -> Result<Option<serde_json::Value>>;
}

/// What a put did, apart from the file the commit returns.
struct PutCounts {
    chunks: u64,
    new_chunks: u64,
    new_stored_bytes: u64,
    /// The signature the scanner found: the committed file is quarantined and the put fails.
    infected: Option<String>,
}

impl PutCounts {
    fn report(self, file: FileInfo) -> Result<PutReport> {
        if let Some(signature) = self.infected {
            tracing::warn!(file = %file.id, owner = %file.owner, %signature, "infected upload quarantined");
            return Err(Error::Infected {
                file: file.id,
                signature,
            });
        }
        Ok(PutReport {
            file,
            chunks: self.chunks,
            new_chunks: self.new_chunks,
            new_stored_bytes: self.new_stored_bytes,
        })
    }
}

pub(crate) fn io_to_error(e: io::Error) -> Error {
    // FileReader wraps engine errors in io::Error; unwrap them again.
    match e.downcast::<Error>() {
        Ok(inner) => inner,
        Err(e) => Error::Io {
            context: "reading a file".into(),
            source: e,
        },
    }
}
