//! The index: the only code that touches redb.
//!
//! The index is the commit point of the store. A file version exists when the redb transaction
//! that inserts it has committed; everything it references was made durable in packs before
//! that (see `Store` and docs/design.md). The index can always be rebuilt from the packs
//! (`maintenance::recover`), so it holds nothing that is not also recorded there, except
//! access times and counters, which recovery recomputes, and upload sessions (`uploads.rs`),
//! staging state that recovery drops. Accounts (`users.rs`) are journaled too.

mod gc;
mod jobs;
mod quota;
mod reports;
mod schema;
mod tiers;
mod uploads;
mod users;

use std::path::Path;

use redb::{
    Database, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId};
use crate::pack::manifest::flags::PUBLIC;
use crate::pack::manifest::{
    ChunkRef, FileEvent, VersionMeta, decode_chunk_list, encode_chunk_list,
};
use crate::pack::{Location, PackState};
pub use jobs::{ImageJob, JobStatus, VariantRef};
pub use quota::day_of;
use schema::*;
pub use schema::{ChunkRow, INDEX_FORMAT};
pub use tiers::{ColdCounters, ColdPackRow};
pub use uploads::UploadRecord;
pub use users::{ACCOUNTS_JOURNALED, ACCOUNTS_SNAPSHOT, TokenRecord, UserRecord};

/// Maps any redb error into [`Error::Index`] naming the operation.
fn ix<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Index {
        context: context.to_string(),
        detail: e.to_string(),
    }
}

/// A file: what stays the same across its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: FileId,
    pub owner: String,
    #[serde(default)]
    pub key: Option<String>,
    pub category: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub accessed_ms: i64,
    #[serde(default)]
    pub flags: u32,
    /// The current (highest) version number.
    pub latest: u32,
    /// Set while the file is soft-deleted.
    #[serde(default)]
    pub deleted_ms: Option<i64>,
    /// Since when the file is quarantined (its current version was found infected: by the put
    /// that stored it, or by a rescan). Quarantined files of older indexes have none; their
    /// current version's time stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_ms: Option<i64>,
    /// Signed links carry the epoch they were minted in and serve only while it is still this
    /// one. It moves on (never back) with a `revoke_links` event, a delete (so an undelete
    /// brings no link back), and every change of the current version from public to private
    /// (a private version over a public one, or a `visibility` event). Derived from the
    /// journal alone, so `recover` rebuilds it; 0 in indexes older than links revocation.
    #[serde(default)]
    pub link_epoch: u32,
}

/// One version of a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub meta: VersionMeta,
    /// Where the version's manifest record is.
    pub manifest: Location,
    pub chunk_count: u64,
}

/// Store-wide counters kept in the META table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Sum of the sizes of all versions of all files (deleted ones included until purged).
    pub logical_bytes: u64,
    pub files: u64,
    pub versions: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Plain bytes of distinct chunks.
    pub chunk_raw_bytes: u64,
    /// Stored (compressed) payload bytes of distinct chunks.
    pub chunk_stored_bytes: u64,
}

const COUNTERS: [&str; 6] = [
    "logical_bytes",
    "files",
    "versions",
    "chunks",
    "chunk_raw_bytes",
    "chunk_stored_bytes",
];

/// How to list files.
#[derive(Debug, Clone, Default)]
pub struct ListFilter<'a> {
    pub owner: Option<&'a str>,
    /// Key prefix; needs `owner` (keys are unique per owner).
    pub prefix: Option<&'a str>,
    pub category: Option<&'a str>,
    pub include_deleted: bool,
    /// Only quarantined files.
    pub quarantined_only: bool,
    /// Continue after this cursor (from a previous page).
    pub after: Option<&'a str>,
    pub limit: usize,
}

/// The redb database of a store.
pub struct Index {
    db: Db,
}

enum Db {
    ReadWrite(Database),
    ReadOnly(ReadOnlyDatabase),
}

/// Why a read-only open failed.
pub enum ReadOnlyOpen {
    /// The index was not closed cleanly; a read-write open must repair it first.
    NeedsRepair,
    Failed(Error),
}

/// redb's page cache. Its default (1 GiB) is a ceiling that whole-index passes — a GC sweep
/// over a million candidates, verify — fill and keep, so the process's memory grew with the
/// store (benches/gc_scale: peak RSS 83 MiB at 250k chunks, 134 MiB at 1M). Lookups need the
/// B-tree's interior pages (a few MiB for millions of chunks) plus hot leaves; pages past the
/// cache are read again from the OS page cache.
pub const INDEX_CACHE_BYTES: usize = 16 << 20;

impl Index {
    /// Creates a new, empty index file (fails if it exists).
    pub fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Err(Error::InvalidInput(format!(
                "{} already exists",
                path.display()
            )));
        }
        // redb creates its file with the default mode; an empty file made here first is
        // initialised in place instead, so the index is private from its first byte.
        crate::disk::private_options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(ix("creating the index"))?;
        let db = redb::Builder::new()
            .set_cache_size(INDEX_CACHE_BYTES)
            .create(path)
            .map_err(ix("creating the index"))?;
        let index = Index {
            db: Db::ReadWrite(db),
        };
        let mut w = index.write()?;
        w.set_meta("format", &INDEX_FORMAT.to_le_bytes())?;
        // Create every table now, so readers never meet a missing one.
        {
            let tx = &w.tx;
            tx.open_table(FILES).map_err(ix("creating tables"))?;
            tx.open_table(KEYS).map_err(ix("creating tables"))?;
            tx.open_table(OWNER_FILES).map_err(ix("creating tables"))?;
            tx.open_table(CATEGORY_FILES)
                .map_err(ix("creating tables"))?;
            tx.open_table(VERSIONS).map_err(ix("creating tables"))?;
            tx.open_table(VERSION_CHUNKS)
                .map_err(ix("creating tables"))?;
            tx.open_table(CHUNKS).map_err(ix("creating tables"))?;
            tx.open_table(PACKS).map_err(ix("creating tables"))?;
            tx.open_table(UPLOADS).map_err(ix("creating tables"))?;
            tx.open_table(ZERO_REFS).map_err(ix("creating tables"))?;
            tx.open_table(PACK_GARBAGE).map_err(ix("creating tables"))?;
            tx.open_table(CONTENT_FILES)
                .map_err(ix("creating tables"))?;
            tx.open_table(quota::OWNER_USAGE)
                .map_err(ix("creating tables"))?;
        }
        w.commit()?;
        Ok(index)
    }

    /// An empty index in memory, gone when dropped (`verify` replays the account journal into
    /// one, with the code `recover` uses, to compare it with the real index).
    pub fn in_memory() -> Result<Self> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(ix("creating an index in memory"))?;
        Ok(Index {
            db: Db::ReadWrite(db),
        })
    }

    /// Opens an existing index and checks its format.
    pub fn open(path: &Path) -> Result<Self> {
        let db = redb::Builder::new()
            .set_cache_size(INDEX_CACHE_BYTES)
            .open(path)
            .map_err(ix("opening the index"))?;
        Index {
            db: Db::ReadWrite(db),
        }
        .checked(path)
    }

    /// Opens an existing index without writing to it (no fsyncs at open or close), so several
    /// readers can share it. Writes fail.
    pub fn open_read_only(path: &Path) -> std::result::Result<Self, ReadOnlyOpen> {
        let db = match redb::Builder::new().open_read_only(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => return Err(ReadOnlyOpen::NeedsRepair),
            Err(e) => return Err(ReadOnlyOpen::Failed(ix("opening the index read-only")(e))),
        };
        Index {
            db: Db::ReadOnly(db),
        }
        .checked(path)
        .map_err(ReadOnlyOpen::Failed)
    }

    fn checked(self, path: &Path) -> Result<Self> {
        let index = self;
        let format = index
            .read()?
            .meta("format")?
            .and_then(|b| b.try_into().ok().map(u32::from_le_bytes));
        match format {
            Some(INDEX_FORMAT) => Ok(index),
            other => Err(Error::NotAStore {
                path: path.to_path_buf(),
                reason: format!("index format {other:?}, this build reads {INDEX_FORMAT}"),
            }),
        }
    }

    pub fn read(&self) -> Result<ReadTx> {
        let tx = match &self.db {
            Db::ReadWrite(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        };
        Ok(ReadTx {
            tx: tx.map_err(ix("starting a read transaction"))?,
        })
    }

    /// Starts the (single) write transaction; blocks while another is open.
    pub fn write(&self) -> Result<WriteTx> {
        let Db::ReadWrite(db) = &self.db else {
            return Err(Error::InvalidInput("the store is open read-only".into()));
        };
        Ok(WriteTx {
            tx: db
                .begin_write()
                .map_err(ix("starting a write transaction"))?,
            usage_touched: Default::default(),
        })
    }
}

/// Lookups shared by read and write transactions.
macro_rules! lookups {
    () => {
        pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
            let t = self.tx.open_table(META).map_err(ix("opening meta"))?;
            Ok(t.get(name)
                .map_err(ix("reading meta"))?
                .map(|v| v.value().to_vec()))
        }

        pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRow>> {
            let t = self.tx.open_table(CHUNKS).map_err(ix("opening chunks"))?;
            Ok(t.get(&id.0)
                .map_err(ix("reading a chunk"))?
                .map(|v| ChunkRow::decode(v.value())))
        }

        pub fn file(&self, id: FileId) -> Result<Option<FileRecord>> {
            let t = self.tx.open_table(FILES).map_err(ix("opening files"))?;
            t.get(id.0)
                .map_err(ix("reading a file"))?
                .map(|v| decode_json(v.value(), "file record"))
                .transpose()
        }

        pub fn file_by_key(&self, owner: &str, key: &str) -> Result<Option<FileRecord>> {
            let t = self.tx.open_table(KEYS).map_err(ix("opening keys"))?;
            let id = t
                .get((owner, key))
                .map_err(ix("reading a key"))?
                .map(|v| v.value());
            match id {
                Some(id) => self.file(FileId(id)),
                None => Ok(None),
            }
        }

        pub fn version(&self, id: FileId, version: u32) -> Result<Option<VersionRecord>> {
            let t = self
                .tx
                .open_table(VERSIONS)
                .map_err(ix("opening versions"))?;
            t.get((id.0, version))
                .map_err(ix("reading a version"))?
                .map(|v| decode_json(v.value(), "version record"))
                .transpose()
        }

        /// All versions of a file, oldest first.
        pub fn versions(&self, id: FileId) -> Result<Vec<VersionRecord>> {
            let t = self
                .tx
                .open_table(VERSIONS)
                .map_err(ix("opening versions"))?;
            let mut out = Vec::new();
            for entry in t
                .range((id.0, 0)..=(id.0, u32::MAX))
                .map_err(ix("listing versions"))?
            {
                let (_, v) = entry.map_err(ix("listing versions"))?;
                out.push(decode_json(v.value(), "version record")?);
            }
            Ok(out)
        }

        pub fn version_chunks(&self, id: FileId, version: u32) -> Result<Vec<ChunkRef>> {
            let t = self
                .tx
                .open_table(VERSION_CHUNKS)
                .map_err(ix("opening version chunks"))?;
            let v = t
                .get((id.0, version))
                .map_err(ix("reading version chunks"))?
                .ok_or_else(|| Error::not_found(format!("chunk list of {id} version {version}")))?;
            decode_chunk_list(v.value()).map_err(|e| Error::corrupt("index version chunks", e))
        }

        /// The pack states recorded at the last commit.
        pub fn packs(&self) -> Result<Vec<PackState>> {
            let t = self.tx.open_table(PACKS).map_err(ix("opening packs"))?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(ix("listing packs"))? {
                let (k, v) = entry.map_err(ix("listing packs"))?;
                out.push(decode_pack_row(k.value(), v.value()));
            }
            Ok(out)
        }

        pub fn counters(&self) -> Result<Counters> {
            let mut c = [0u64; COUNTERS.len()];
            for (slot, name) in c.iter_mut().zip(COUNTERS) {
                *slot = self.counter(name)?;
            }
            Ok(Counters {
                logical_bytes: c[0],
                files: c[1],
                versions: c[2],
                chunks: c[3],
                chunk_raw_bytes: c[4],
                chunk_stored_bytes: c[5],
            })
        }

        fn counter(&self, name: &str) -> Result<u64> {
            Ok(self
                .meta(name)?
                .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
                .unwrap_or(0))
        }
    };
}

/// A consistent snapshot of the index.
pub struct ReadTx {
    tx: ReadTransaction,
}

impl ReadTx {
    lookups!();

    /// Calls `f` for every chunk row, in chunk id order.
    pub fn for_each_chunk(&self, mut f: impl FnMut(ChunkId, ChunkRow) -> Result<()>) -> Result<()> {
        let t = self.tx.open_table(CHUNKS).map_err(ix("opening chunks"))?;
        for entry in t.iter().map_err(ix("listing chunks"))? {
            let (k, v) = entry.map_err(ix("listing chunks"))?;
            f(ChunkId(*k.value()), ChunkRow::decode(v.value()))?;
        }
        Ok(())
    }

    /// Calls `f` for every version's chunk list, in (file, version) order.
    pub fn for_each_version_chunks(
        &self,
        mut f: impl FnMut(FileId, u32, Vec<ChunkRef>) -> Result<()>,
    ) -> Result<()> {
        let t = self
            .tx
            .open_table(VERSION_CHUNKS)
            .map_err(ix("opening version chunks"))?;
        for entry in t.iter().map_err(ix("listing version chunks"))? {
            let (k, v) = entry.map_err(ix("listing version chunks"))?;
            let (file, version) = k.value();
            let chunks = decode_chunk_list(v.value())
                .map_err(|e| Error::corrupt("index version chunks", e))?;
            f(FileId(file), version, chunks)?;
        }
        Ok(())
    }

    /// Every file, in id order (for verify and comparisons).
    pub fn all_files(&self) -> Result<Vec<FileRecord>> {
        let t = self.tx.open_table(FILES).map_err(ix("opening files"))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(ix("listing files"))? {
            let (_, v) = entry.map_err(ix("listing files"))?;
            out.push(decode_json(v.value(), "file record")?);
        }
        Ok(out)
    }

    /// One page of files matching `f`, and the cursor of the next page if there is one.
    ///
    /// With a key prefix the order is by key and the cursor is the last key; otherwise the order
    /// is by file id (creation time) and the cursor is the last id.
    pub fn list(&self, f: &ListFilter<'_>) -> Result<(Vec<FileRecord>, Option<String>)> {
        let limit = f.limit.max(1);
        let mut out: Vec<FileRecord> = Vec::new();
        let mut more = false;
        let keep = |r: &FileRecord| {
            (f.include_deleted || r.deleted_ms.is_none())
                && f.owner.is_none_or(|o| r.owner == o)
                && f.category.is_none_or(|c| r.category == c)
                && (!f.quarantined_only || r.flags & crate::pack::manifest::flags::QUARANTINED != 0)
        };
        let mut push = |r: FileRecord, out: &mut Vec<FileRecord>| -> bool {
            if !keep(&r) {
                return true;
            }
            if out.len() == limit {
                more = true;
                return false;
            }
            out.push(r);
            true
        };

        if let Some(prefix) = f.prefix {
            let owner = f.owner.ok_or_else(|| {
                Error::InvalidInput("listing by key prefix needs an owner".into())
            })?;
            let t = self.tx.open_table(KEYS).map_err(ix("opening keys"))?;
            let start = f.after.unwrap_or(prefix);
            for entry in t.range((owner, start)..).map_err(ix("listing keys"))? {
                let (k, v) = entry.map_err(ix("listing keys"))?;
                let (o, key) = k.value();
                if o != owner || !key.starts_with(prefix) {
                    break;
                }
                if f.after == Some(key) {
                    continue;
                }
                let Some(r) = self.file(FileId(v.value()))? else {
                    continue;
                };
                if !push(r, &mut out) {
                    break;
                }
            }
            let next = more
                .then(|| out.last().and_then(|r| r.key.clone()))
                .flatten();
            return Ok((out, next));
        }

        let after = match f.after {
            Some(a) => Some(a.parse::<FileId>()?.0),
            None => None,
        };
        let lower = after.map_or(0, |a| a.saturating_add(1));
        let ids: Box<dyn Iterator<Item = Result<u128>>> = match (f.owner, f.category) {
            (Some(owner), _) => {
                let t = self
                    .tx
                    .open_table(OWNER_FILES)
                    .map_err(ix("opening owner files"))?;
                let r = t
                    .range((owner, lower)..=(owner, u128::MAX))
                    .map_err(ix("listing by owner"))?;
                Box::new(r.map(|e| e.map(|(k, _)| k.value().1).map_err(ix("listing by owner"))))
            }
            (None, Some(cat)) => {
                let t = self
                    .tx
                    .open_table(CATEGORY_FILES)
                    .map_err(ix("opening category files"))?;
                let r = t
                    .range((cat, lower)..=(cat, u128::MAX))
                    .map_err(ix("listing by category"))?;
                Box::new(r.map(|e| {
                    e.map(|(k, _)| k.value().1)
                        .map_err(ix("listing by category"))
                }))
            }
            (None, None) => {
                let t = self.tx.open_table(FILES).map_err(ix("opening files"))?;
                let r = t.range(lower..).map_err(ix("listing files"))?;
                Box::new(r.map(|e| e.map(|(k, _)| k.value()).map_err(ix("listing files"))))
            }
        };
        for id in ids {
            let Some(r) = self.file(FileId(id?))? else {
                continue;
            };
            if !push(r, &mut out) {
                break;
            }
        }
        let next = more.then(|| out.last().map(|r| r.id.to_string())).flatten();
        Ok((out, next))
    }
}

/// The single write transaction. Dropping it without [`WriteTx::commit`] aborts it.
pub struct WriteTx {
    tx: WriteTransaction,
    /// Owners whose usage changed in this transaction (see `quota.rs`).
    usage_touched: std::collections::BTreeSet<String>,
}

impl WriteTx {
    lookups!();

    pub fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()> {
        let mut t = self.tx.open_table(META).map_err(ix("opening meta"))?;
        t.insert(name, value).map_err(ix("writing meta"))?;
        Ok(())
    }

    fn add_counter(&mut self, name: &str, delta: i64) -> Result<()> {
        let v = (self.counter(name)? as i64 + delta).max(0) as u64;
        self.set_meta(name, &v.to_le_bytes())
    }

    /// Adds `n` references to a chunk, inserting `row` first if the chunk is not yet indexed.
    /// Returns true when the chunk was new.
    pub fn add_chunk_refs(&mut self, id: &ChunkId, row: ChunkRow, n: u64) -> Result<bool> {
        let existing = self.chunk(id)?;
        let mut t = self.tx.open_table(CHUNKS).map_err(ix("opening chunks"))?;
        let (row, new) = match existing {
            Some(mut r) => {
                r.refs += n;
                (r, false)
            }
            None => (ChunkRow { refs: n, ..row }, true),
        };
        t.insert(&id.0, &row.encode())
            .map_err(ix("writing a chunk"))?;
        drop(t);
        // Referenced again: no longer a candidate for the collector. This runs in the same
        // transaction as the sweep's re-check would, so the two cannot interleave.
        if row.refs > 0 && existing.is_some_and(|r| r.refs == 0) {
            self.unmark_zero(id)?;
        }
        if new {
            self.add_counter("chunks", 1)?;
            self.add_counter("chunk_raw_bytes", row.raw_len as i64)?;
            self.add_counter("chunk_stored_bytes", row.stored_len as i64)?;
        }
        Ok(new)
    }

    /// Inserts a new file (and its owner, key and category entries).
    pub fn insert_file(&mut self, r: &FileRecord) -> Result<()> {
        {
            if let Some(key) = &r.key {
                let mut keys = self.tx.open_table(KEYS).map_err(ix("opening keys"))?;
                if keys
                    .insert((r.owner.as_str(), key.as_str()), r.id.0)
                    .map_err(ix("writing a key"))?
                    .is_some()
                {
                    return Err(Error::InvalidInput(format!(
                        "key {key:?} of owner {:?} already exists",
                        r.owner
                    )));
                }
            }
            let mut by_owner = self
                .tx
                .open_table(OWNER_FILES)
                .map_err(ix("opening owner files"))?;
            by_owner
                .insert((r.owner.as_str(), r.id.0), ())
                .map_err(ix("writing owner files"))?;
            let mut by_cat = self
                .tx
                .open_table(CATEGORY_FILES)
                .map_err(ix("opening category files"))?;
            by_cat
                .insert((r.category.as_str(), r.id.0), ())
                .map_err(ix("writing category files"))?;
        }
        self.add_counter("files", 1)?;
        self.update_file(r)
    }

    /// Rewrites a file's record. Owner, key and category never change.
    pub fn update_file(&mut self, r: &FileRecord) -> Result<()> {
        let mut t = self.tx.open_table(FILES).map_err(ix("opening files"))?;
        let json = serde_json::to_vec(r).expect("file record serialises");
        t.insert(r.id.0, json.as_slice())
            .map_err(ix("writing a file"))?;
        Ok(())
    }

    /// Inserts a version and its chunk list. Chunk references are counted separately
    /// ([`WriteTx::add_chunk_refs`]).
    pub fn insert_version(&mut self, v: &VersionRecord, chunks: &[ChunkRef]) -> Result<()> {
        let key = (v.meta.file_id.0, v.meta.version);
        {
            let mut t = self
                .tx
                .open_table(VERSIONS)
                .map_err(ix("opening versions"))?;
            let json = serde_json::to_vec(v).expect("version record serialises");
            if t.insert(key, json.as_slice())
                .map_err(ix("writing a version"))?
                .is_some()
            {
                return Err(Error::InvalidInput(format!(
                    "version {} of {} already exists",
                    v.meta.version, v.meta.file_id
                )));
            }
            let mut list = Vec::new();
            encode_chunk_list(chunks, &mut list);
            let mut t = self
                .tx
                .open_table(VERSION_CHUNKS)
                .map_err(ix("opening version chunks"))?;
            t.insert(key, list.as_slice())
                .map_err(ix("writing version chunks"))?;
        }
        self.add_counter("versions", 1)?;
        self.add_counter("logical_bytes", v.meta.size as i64)?;
        self.add_usage(&v.meta.owner, v.meta.size as i64, v.meta.created_ms)
    }

    /// Applies one file version — the same code for a live put and for replay by `recover`:
    /// creates the file or advances it to this version (a new version also ends a soft
    /// delete), inserts the version, and counts one reference per chunk-list entry.
    ///
    /// `row_for` supplies the location of chunks the index does not have yet. Chunks it cannot
    /// supply are returned, not counted; a live put treats that as an error, recovery as damage.
    pub fn apply_version(
        &mut self,
        meta: &VersionMeta,
        chunks: &[ChunkRef],
        manifest: Location,
        mut row_for: impl FnMut(&ChunkId) -> Option<ChunkRow>,
    ) -> Result<(FileRecord, Vec<ChunkId>)> {
        // Decide the file first: a version that cannot apply must change nothing.
        let mut old_content = None;
        let (file, is_new) = match self.file(meta.file_id)? {
            Some(mut f) => {
                if meta.version <= f.latest {
                    return Err(Error::InvalidInput(format!(
                        "version {} of {} is not newer than {}",
                        meta.version, meta.file_id, f.latest
                    )));
                }
                old_content = self.version(f.id, f.latest)?.map(|v| v.meta.blake3);
                if f.flags & PUBLIC != 0 && meta.flags & PUBLIC == 0 {
                    // Public to private: links minted while the file was public die with it.
                    f.link_epoch = f.link_epoch.wrapping_add(1);
                }
                f.latest = meta.version;
                f.updated_ms = meta.created_ms;
                f.accessed_ms = f.accessed_ms.max(meta.created_ms);
                f.flags = meta.flags;
                f.deleted_ms = None;
                f.quarantined_ms = quarantined_since(meta);
                (f, false)
            }
            None => {
                if let Some(key) = &meta.key
                    && self.file_by_key(&meta.owner, key)?.is_some()
                {
                    return Err(Error::InvalidInput(format!(
                        "key {key:?} of owner {:?} belongs to another file",
                        meta.owner
                    )));
                }
                let f = FileRecord {
                    id: meta.file_id,
                    owner: meta.owner.clone(),
                    key: meta.key.clone(),
                    category: meta.category.clone(),
                    created_ms: meta.file_created_ms,
                    updated_ms: meta.created_ms,
                    accessed_ms: meta.created_ms,
                    flags: meta.flags,
                    latest: meta.version,
                    deleted_ms: None,
                    quarantined_ms: quarantined_since(meta),
                    link_epoch: 0,
                };
                (f, true)
            }
        };
        let mut counts: std::collections::HashMap<ChunkId, u64> = std::collections::HashMap::new();
        for c in chunks {
            *counts.entry(c.id).or_default() += 1;
        }
        let mut missing = Vec::new();
        for (id, n) in counts {
            if self.chunk(&id)?.is_some() {
                self.add_chunk_refs(&id, ChunkRow::decode(&[0; CHUNK_ROW_LEN]), n)?;
            } else if let Some(row) = row_for(&id) {
                self.add_chunk_refs(&id, row, n)?;
            } else {
                missing.push(id);
            }
        }
        if is_new {
            self.insert_file(&file)?;
        } else {
            self.update_file(&file)?;
        }
        let record = VersionRecord {
            meta: meta.clone(),
            manifest,
            chunk_count: chunks.len() as u64,
        };
        self.insert_version(&record, chunks)?;
        self.set_content(file.id, old_content.as_deref(), Some(&meta.blake3))?;
        Ok((file, missing))
    }

    /// Applies a file event (delete, undelete, ...) or an account event. Returns the updated
    /// file (none for account events); revocations are handled by the replayer and ignored
    /// here.
    pub fn apply_event(&mut self, event: &FileEvent) -> Result<Option<FileRecord>> {
        let (id, deleted) = match *event {
            FileEvent::Delete { file_id, at_ms } => (file_id, Some(at_ms)),
            FileEvent::Visibility {
                file_id,
                version,
                public,
                ..
            } => return self.set_visibility(file_id, version, public),
            FileEvent::RevokeLinks { file_id, .. } => {
                // A replayed revocation of a file purged since changes nothing.
                let Some(mut f) = self.file(file_id)? else {
                    return Ok(None);
                };
                f.link_epoch = f.link_epoch.wrapping_add(1);
                self.update_file(&f)?;
                return Ok(Some(f));
            }
            FileEvent::Undelete { file_id, .. } => (file_id, None),
            FileEvent::Revoke { .. } => return Ok(None),
            FileEvent::Account(ref change) => {
                self.apply_account(change)?;
                return Ok(None);
            }
            FileEvent::Purge { file_id, at_ms, .. } => {
                // A replayed purge may find the file gone already (its manifests were
                // compacted away before the event was): nothing to do.
                self.remove_file(file_id, at_ms)?;
                return Ok(None);
            }
            FileEvent::DropVersion {
                file_id,
                version,
                at_ms,
                ..
            } => {
                self.remove_version(file_id, version, at_ms)?;
                return Ok(None);
            }
            FileEvent::Scan {
                file_id,
                version,
                at_ms,
                ref scan,
                ..
            } => return self.set_scan(file_id, version, scan, at_ms),
        };
        let mut f = self
            .file(id)?
            .ok_or_else(|| Error::not_found(format!("file {id}")))?;
        if deleted.is_some() && f.deleted_ms.is_none() {
            // A delete ends every link, and an undelete must not bring them back.
            f.link_epoch = f.link_epoch.wrapping_add(1);
        }
        f.deleted_ms = deleted;
        self.update_file(&f)?;
        Ok(Some(f))
    }

    /// Sets or clears `PUBLIC` on one version (a `visibility` event). When it is the current
    /// version the file's flags follow, and going private moves the link epoch on. A file or
    /// version that is gone (a replayed event of something purged or dropped since) changes
    /// what is left: nothing, or only the file.
    fn set_visibility(
        &mut self,
        file: FileId,
        version: u32,
        public: bool,
    ) -> Result<Option<FileRecord>> {
        let Some(mut f) = self.file(file)? else {
            return Ok(None);
        };
        let with = |flags: u32| {
            if public {
                flags | PUBLIC
            } else {
                flags & !PUBLIC
            }
        };
        if let Some(mut v) = self.version(file, version)? {
            v.meta.flags = with(v.meta.flags);
            self.put_version_record(&v)?;
        }
        if version == f.latest {
            if f.flags & PUBLIC != 0 && !public {
                f.link_epoch = f.link_epoch.wrapping_add(1);
            }
            f.flags = with(f.flags);
            self.update_file(&f)?;
        }
        Ok(Some(f))
    }

    /// Rewrites a version's record in place (its metadata changed: a rescan, a visibility
    /// change). The chunk list and counters stay.
    fn put_version_record(&mut self, v: &VersionRecord) -> Result<()> {
        let json = serde_json::to_vec(v).expect("version record serialises");
        self.tx
            .open_table(VERSIONS)
            .map_err(ix("opening versions"))?
            .insert((v.meta.file_id.0, v.meta.version), json.as_slice())
            .map_err(ix("writing a version"))?;
        Ok(())
    }

    /// Replaces a version's scan verdict (a rescan). The file's quarantine follows its current
    /// version, as on a put: set by an infected verdict, lifted by any other. A version that is
    /// gone (a replayed rescan of a version purged since) changes nothing and returns `None`.
    fn set_scan(
        &mut self,
        file: FileId,
        version: u32,
        scan: &crate::pack::manifest::ScanStamp,
        at_ms: i64,
    ) -> Result<Option<FileRecord>> {
        use crate::pack::manifest::{ScanStamp, flags};
        let (Some(mut f), Some(mut v)) = (self.file(file)?, self.version(file, version)?) else {
            return Ok(None);
        };
        v.meta.scan = Some(scan.clone());
        let json = serde_json::to_vec(&v).expect("version record serialises");
        self.tx
            .open_table(VERSIONS)
            .map_err(ix("opening versions"))?
            .insert((file.0, version), json.as_slice())
            .map_err(ix("writing a version"))?;
        if version == f.latest {
            let infected = matches!(scan, ScanStamp::Infected { .. });
            let flagged = if infected {
                f.flags | flags::QUARANTINED
            } else {
                f.flags & !flags::QUARANTINED
            };
            if flagged != f.flags {
                f.flags = flagged;
                f.quarantined_ms = infected.then_some(at_ms);
                self.update_file(&f)?;
            }
        }
        Ok(Some(f))
    }

    /// Stores access times (best effort; see [`WriteTx::commit_lazy`]). Day granularity: a
    /// file already marked read on that day (UTC) is not rewritten.
    pub fn touch(&mut self, id: FileId, accessed_ms: i64) -> Result<()> {
        if let Some(mut f) = self.file(id)?
            && day_of(f.accessed_ms) < day_of(accessed_ms)
        {
            f.accessed_ms = accessed_ms;
            self.update_file(&f)?;
        }
        Ok(())
    }

    /// Records the durable state of packs.
    pub fn set_packs(&mut self, states: &[PackState]) -> Result<()> {
        let mut t = self.tx.open_table(PACKS).map_err(ix("opening packs"))?;
        for s in states {
            t.insert(s.id, &encode_pack_row(s))
                .map_err(ix("writing packs"))?;
        }
        Ok(())
    }

    /// Commits durably: when this returns, the transaction survives a crash.
    pub fn commit(self) -> Result<()> {
        self.tx.commit().map_err(ix("committing"))
    }

    /// Commits without waiting for the disk; made durable by the next [`WriteTx::commit`].
    /// Only for data the store can afford to lose in a crash (access times).
    pub fn commit_lazy(mut self) -> Result<()> {
        self.tx
            .set_durability(Durability::None)
            .map_err(ix("setting durability"))?;
        self.tx.commit().map_err(ix("committing"))
    }
}

/// When a file whose current version is `meta` became quarantined: when that version was made.
fn quarantined_since(meta: &VersionMeta) -> Option<i64> {
    (meta.flags & crate::pack::manifest::flags::QUARANTINED != 0).then_some(meta.created_ms)
}

fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(format!("index {what}"), e.to_string()))
}
