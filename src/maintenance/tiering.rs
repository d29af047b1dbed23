//! Moves between the hot tier (local packs) and the cold tier (objects behind `ColdTier`), the
//! lifecycle rules that choose what goes cold, the cold side of the collector, and
//! `verify --cold` (docs/design.md, "Cold tier").
//!
//! A move to cold copies the chosen chunks' records, as they are (format and checksums kept),
//! into a new cold pack built in memory (up to `pack_target_size`), writes it as one object,
//! checks its size with a HEAD, and only then points the chunk rows at it and records it in
//! `cold_packs`, in one index transaction. The old records become garbage of their hot packs,
//! which compaction reclaims: the local copy is freed only after the object is durable and the
//! index change committed. A crash before the commit leaves an object no row names (an orphan,
//! replaced by the next move that takes its id or deleted by the collector) and no index change.
//!
//! A move to hot appends the records to the active hot pack, syncs it, and points the rows at
//! the copies in one transaction; the cold records become garbage of their cold pack. A cold
//! pack with no live record left is forgotten by the index and then deleted from the tier; one
//! whose garbage passes the compaction threshold has its live chunks moved hot first.
//!
//! Every move and the cold collector hold `Cold::moves`, so while one runs no other has an
//! uncommitted object in the tier — which is what lets the collector delete orphans.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId};
use crate::index::{ColdPackRow, FileRecord, ListFilter, ReadTx};
use crate::maintenance::DamagedRegion;
use crate::maintenance::gc::GcOptions;
use crate::maintenance::verify::{DamagedChunk, VerifyReport};
use crate::pack::record::{self, RecordKind, ScanItem};
use crate::pack::{Location, PACK_HEADER_LEN, encode_pack_header};
use crate::store::{Inner, Store};
use crate::tier::cold::{Cold, tier_error};
use crate::tier::{ObjectOptions, is_cold_pack};
use crate::validate::Policy;

/// When a category's files go cold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRule {
    /// A file not read (nor written) for this long is cold-eligible.
    pub cold_after: Duration,
    /// Storage class of the objects its chunks are written in (`STANDARD_IA`, …); `None`: the
    /// tier's default.
    pub storage_class: Option<String>,
}

/// Tier rules by category name.
pub type TierRules = BTreeMap<String, TierRule>;

/// SPEC §6's defaults: documents cold after 90 days, images after 30, backups after 7.
pub const SPEC_COLD_DAYS: [(&str, u64); 3] = [("documents", 90), ("images", 30), ("backups", 7)];

/// The SPEC defaults for the categories `policy` has.
pub fn default_tier_rules(policy: &Policy) -> TierRules {
    SPEC_COLD_DAYS
        .iter()
        .filter(|(c, _)| policy.categories.contains_key(*c))
        .map(|&(c, days)| {
            (
                c.to_string(),
                TierRule {
                    cold_after: Duration::from_secs(days * 24 * 60 * 60),
                    storage_class: None,
                },
            )
        })
        .collect()
}

/// What a move between tiers takes. The selections add up: named files, a whole category,
/// the files the lifecycle rules make eligible, or everything. A chunk goes cold only when
/// every reference to it comes from a selected file's versions.
#[derive(Debug, Clone, Default)]
pub struct TierMoveOptions {
    /// These files (all their versions).
    pub files: Vec<FileId>,
    /// Every file of this category (deleted ones included).
    pub category: Option<String>,
    /// The files `Config::tier_rules` makes cold-eligible (not read for the rule's age).
    pub rules: bool,
    /// Every file (to cold), or every cold chunk (to hot).
    pub all: bool,
    /// Storage class of the objects written (to cold); default: the rule of the file's
    /// category, else the tier's default.
    pub storage_class: Option<String>,
    /// Report what would move; change nothing.
    pub dry_run: bool,
}

impl TierMoveOptions {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.category.is_none() && !self.rules && !self.all
    }
}

/// What a move did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TierMoveReport {
    pub dry_run: bool,
    /// Files selected.
    pub files: u64,
    /// Chunks moved (dry: that would move).
    pub chunks: u64,
    /// Record bytes of those chunks.
    pub bytes: u64,
    /// Chunks of selected files already in the target tier.
    pub already: u64,
    /// Chunks left where they are because files outside the move reference them too (or a
    /// version committed meanwhile does).
    pub shared: u64,
    /// Cold packs written (to cold).
    pub packs_written: Vec<u32>,
    /// Cold packs emptied and deleted afterwards.
    pub packs_deleted: Vec<u32>,
}

/// What the collector did in the cold tier.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ColdGcReport {
    /// Cold packs with no live chunk, forgotten and deleted (dry: that would be).
    pub packs_deleted: Vec<u32>,
    /// Cold packs over the garbage threshold whose live chunks moved back to hot.
    pub packs_compacted: Vec<u32>,
    /// Chunks those moves brought back.
    pub chunks_rehydrated: u64,
    /// Objects under the store's prefix that no cold pack row names (left by interrupted
    /// moves), deleted (dry: found).
    pub orphans: Vec<String>,
    pub problems: Vec<String>,
}

/// Records moved hot per index transaction: bounds what a move holds in memory.
const HOT_BATCH_BYTES: usize = 16 << 20;
/// Files examined per index snapshot.
const PAGE: usize = 500;

fn require_cold(inner: &Inner) -> Result<&Cold> {
    if inner.read_only {
        return Err(Error::InvalidInput("the store is open read-only".into()));
    }
    inner.cold.as_ref().ok_or_else(|| {
        Error::InvalidInput("no cold tier is configured (Config::cold_tier, [cold])".into())
    })
}

/// A file with the storage class its chunks go cold in.
type Selected = (FileRecord, Option<String>);

impl Store {
    /// Moves the chunks of the selected files to the cold tier (see [`TierMoveOptions`] and
    /// the module docs for the protocol). Safe to run while puts and gets are in flight; an
    /// interrupted run (an error, a crash) is completed by running it again.
    pub fn move_to_cold(&self, opts: &TierMoveOptions) -> Result<TierMoveReport> {
        let inner = self.inner();
        let cold = require_cold(inner)?;
        if opts.is_empty() {
            return Err(Error::InvalidInput(
                "nothing selected: name files, a category, --rules or --all".into(),
            ));
        }
        let _moves = cold.moves.lock().unwrap();
        let mut report = TierMoveReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let mut builders: BTreeMap<Option<String>, ColdBuilder> = BTreeMap::new();
        self.each_selected(opts, |r, files| {
            report.files += files.len() as u64;
            // References per chunk from the batch's versions, in first-use order (file order,
            // so a sequential read of a file reads its cold pack front to back).
            let mut counts: HashMap<ChunkId, u64> = HashMap::new();
            let mut order: Vec<(ChunkId, Option<String>)> = Vec::new();
            for (f, class) in files {
                for v in r.versions(f.id)? {
                    for c in r.version_chunks(f.id, v.meta.version)? {
                        let n = counts.entry(c.id).or_default();
                        if *n == 0 {
                            order.push((c.id, class.clone()));
                        }
                        *n += 1;
                    }
                }
            }
            for (cid, class) in order {
                let Some(row) = r.chunk(&cid)? else { continue };
                if is_cold_pack(row.loc.pack) {
                    report.already += 1;
                    continue;
                }
                if row.refs != counts[&cid] {
                    report.shared += 1;
                    continue;
                }
                if opts.dry_run {
                    report.chunks += 1;
                    report.bytes += row.loc.len as u64;
                    continue;
                }
                // Compaction may have moved the record (and removed its pack) since the batch's
                // snapshot: follow the row once, as reads do.
                let (from, raw) = match inner.packs.read_raw(row.loc) {
                    Ok(raw) => (row.loc, raw),
                    Err(e) => match inner.index.read()?.chunk(&cid)? {
                        Some(now) if now.loc != row.loc && !is_cold_pack(now.loc.pack) => {
                            (now.loc, inner.packs.read_raw(now.loc)?)
                        }
                        _ => return Err(e),
                    },
                };
                check_record(&raw, &cid).map_err(|e| Error::Corrupt {
                    location: format!(
                        "{} at offset {}",
                        inner.packs.storage().describe(from.pack),
                        from.offset
                    ),
                    detail: format!("not moved to the cold tier: {e}"),
                    chunk: Some(cid.to_hex()),
                })?;
                let b = builders
                    .entry(class.clone())
                    .or_insert_with(ColdBuilder::new);
                b.push(cid, from, row.refs, &raw);
                if b.buf.len() as u64 >= inner.config.pack_target_size {
                    b.flush(inner, cold, class.as_deref(), &mut report)?;
                }
            }
            Ok(())
        })?;
        for (class, mut b) in builders {
            b.flush(inner, cold, class.as_deref(), &mut report)?;
        }
        Ok(report)
    }

    /// Moves the chunks of the selected files (or, with `all`, every cold chunk) back to
    /// local packs. Cold packs left without live chunks are deleted from the tier.
    pub fn move_to_hot(&self, opts: &TierMoveOptions) -> Result<TierMoveReport> {
        let inner = self.inner();
        let cold = require_cold(inner)?;
        if opts.is_empty() {
            return Err(Error::InvalidInput(
                "nothing selected: name files, a category, --rules or --all".into(),
            ));
        }
        let _moves = cold.moves.lock().unwrap();
        self.move_to_hot_locked(cold, opts)
    }

    /// Best-effort rehydration after a read found cold chunks (`Config::rehydrate_on_read`).
    /// Skipped when another move holds the tier.
    pub(crate) fn rehydrate(&self, file: FileId) {
        let Some(cold) = &self.inner().cold else {
            return;
        };
        let Ok(_moves) = cold.moves.try_lock() else {
            return;
        };
        let opts = TierMoveOptions {
            files: vec![file],
            ..Default::default()
        };
        if let Err(e) = self.move_to_hot_locked(cold, &opts) {
            tracing::warn!(%file, "could not rehydrate file read from the cold tier: {e}");
        }
    }

    fn move_to_hot_locked(&self, cold: &Cold, opts: &TierMoveOptions) -> Result<TierMoveReport> {
        let inner = self.inner();
        let mut report = TierMoveReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let mut pending = HotBatch::default();
        if opts.all {
            let packs = inner.index.read()?.cold_packs()?;
            for (id, row) in packs {
                let mut problems = Vec::new();
                rehydrate_pack(
                    inner,
                    cold,
                    id,
                    &row,
                    opts.dry_run,
                    &mut report,
                    &mut problems,
                )?;
                for p in problems {
                    tracing::warn!("{p}");
                }
            }
        }
        let files_only = TierMoveOptions {
            all: false,
            ..opts.clone()
        };
        if !files_only.is_empty() {
            self.each_selected(&files_only, |r, files| {
                report.files += files.len() as u64;
                let mut seen: HashSet<ChunkId> = HashSet::new();
                let mut todo: Vec<(Location, ChunkId)> = Vec::new();
                for (f, _) in files {
                    for v in r.versions(f.id)? {
                        for c in r.version_chunks(f.id, v.meta.version)? {
                            if !seen.insert(c.id) {
                                continue;
                            }
                            let Some(row) = r.chunk(&c.id)? else { continue };
                            if is_cold_pack(row.loc.pack) {
                                todo.push((row.loc, c.id));
                            } else {
                                report.already += 1;
                            }
                        }
                    }
                }
                // Object order: neighbouring records share the cached blocks.
                todo.sort_unstable_by_key(|(l, _)| (l.pack, l.offset));
                for (loc, cid) in todo {
                    if opts.dry_run {
                        report.chunks += 1;
                        report.bytes += loc.len as u64;
                        continue;
                    }
                    let raw = cold.record(&inner.index, loc)?;
                    if let Err(e) = check_record(&raw, &cid) {
                        cold.invalidate(loc);
                        return Err(Error::Corrupt {
                            location: format!("{} at offset {}", cold.key(loc.pack), loc.offset),
                            detail: e,
                            chunk: Some(cid.to_hex()),
                        });
                    }
                    pending.push(cid, loc, raw);
                    if pending.bytes >= HOT_BATCH_BYTES {
                        pending.commit(inner, &mut report)?;
                    }
                }
                Ok(())
            })?;
        }
        pending.commit(inner, &mut report)?;
        if !opts.dry_run {
            let mut gc = ColdGcReport::default();
            drop_empty_packs(inner, cold, false, &mut gc)?;
            report.packs_deleted = gc.packs_deleted;
        }
        Ok(report)
    }

    /// Calls `f` with each batch of selected files, each with its storage class.
    fn each_selected(
        &self,
        opts: &TierMoveOptions,
        mut f: impl FnMut(&ReadTx, &[Selected]) -> Result<()>,
    ) -> Result<()> {
        let inner = self.inner();
        let rules = &inner.config.tier_rules;
        let class_of = |category: &str| -> Option<String> {
            opts.storage_class
                .clone()
                .or_else(|| rules.get(category).and_then(|r| r.storage_class.clone()))
        };
        let mut done: HashSet<FileId> = HashSet::new();
        if !opts.files.is_empty() {
            let r = inner.index.read()?;
            let mut batch = Vec::new();
            for id in &opts.files {
                let file = r
                    .file(*id)?
                    .ok_or_else(|| Error::not_found(format!("file {id}")))?;
                if done.insert(file.id) {
                    let class = class_of(&file.category);
                    batch.push((file, class));
                }
            }
            f(&r, &batch)?;
        }
        let now = inner.config.clock.now_ms();
        // (category filter, minimum idle time) of each pass over the files.
        let mut passes: Vec<(Option<String>, Option<Duration>)> = Vec::new();
        if opts.all {
            passes.push((None, None));
        } else {
            if let Some(c) = &opts.category {
                passes.push((Some(c.clone()), None));
            }
            if opts.rules {
                for (c, rule) in rules {
                    passes.push((Some(c.clone()), Some(rule.cold_after)));
                }
            }
        }
        for (category, idle) in passes {
            let mut cursor: Option<String> = None;
            loop {
                let r = inner.index.read()?;
                let (files, next) = r.list(&ListFilter {
                    category: category.as_deref(),
                    include_deleted: true,
                    after: cursor.as_deref(),
                    limit: PAGE,
                    ..Default::default()
                })?;
                let batch: Vec<Selected> = {
                    let touched = inner.touched.lock().unwrap();
                    files
                        .into_iter()
                        .filter(|file| {
                            idle.is_none_or(|idle| {
                                let read = touched
                                    .get(&file.id)
                                    .copied()
                                    .unwrap_or(0)
                                    .max(file.accessed_ms)
                                    .max(file.updated_ms);
                                now.saturating_sub(read) >= idle.as_millis() as i64
                            })
                        })
                        .filter(|file| !done.contains(&file.id))
                        .map(|file| {
                            let class = class_of(&file.category);
                            (file, class)
                        })
                        .collect()
                };
                for (file, _) in &batch {
                    done.insert(file.id);
                }
                if !batch.is_empty() {
                    f(&r, &batch)?;
                }
                match next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Downloads every cold object and checks it: its length and BLAKE3 against the index,
    /// every record's checksums and content hash, and that every cold chunk row points at an
    /// intact record of its id. Fails only when the tier cannot be reached.
    pub fn verify_cold(&self) -> Result<VerifyReport> {
        let inner = self.inner();
        let cold = inner.cold.as_ref().ok_or_else(|| {
            Error::InvalidInput("no cold tier is configured (Config::cold_tier, [cold])".into())
        })?;
        let mut report = VerifyReport::default();
        let r = inner.index.read()?;
        let packs: HashMap<u32, ColdPackRow> = r.cold_packs()?.into_iter().collect();
        // (pack, offset) → (chunk id, record len) of every intact chunk record.
        let mut seen: HashMap<(u32, u64), SeenRecord> = HashMap::new();
        let mut ids: Vec<&u32> = packs.keys().collect();
        ids.sort_unstable();
        for &id in ids {
            let row = &packs[&id];
            report.packs += 1;
            let data = match cold.tier.get_range(&row.key, 0..row.len) {
                Ok(d) => d,
                Err(e) if e.is_temporary() => return Err(tier_error("verifying the cold tier", e)),
                Err(e) => {
                    report
                        .problems
                        .push(format!("cold pack {id} ({}): {e}", row.key));
                    continue;
                }
            };
            if blake3::hash(&data).to_hex().as_str() != row.blake3 {
                report.problems.push(format!(
                    "cold pack {id} ({}): the object's BLAKE3 differs from the one recorded",
                    row.key
                ));
            }
            match crate::pack::decode_pack_header(&data) {
                Ok((hid, sid)) if hid == id && sid == inner.packs.store_id() => {}
                Ok((hid, _)) => report.problems.push(format!(
                    "cold pack {id} ({}): header names pack {hid} of another store or id",
                    row.key
                )),
                Err(e) => report
                    .problems
                    .push(format!("cold pack {id} ({}): {e}", row.key)),
            }
            let mut plain = Vec::new();
            for item in record::scan_records(&data, PACK_HEADER_LEN as usize) {
                match item {
                    ScanItem::Record {
                        offset,
                        header,
                        stored,
                    } => {
                        report.records += 1;
                        let res = record::decode_payload_into(&header, stored, &mut plain)
                            .map(|()| (header.key, header.record_len()))
                            .map_err(|e| e.to_string());
                        if res.is_ok() {
                            report.bytes_checked += plain.len() as u64;
                        }
                        seen.insert((id, offset as u64), res);
                    }
                    ScanItem::Damage {
                        offset, len, error, ..
                    } => report.damaged_regions.push(DamagedRegion {
                        pack: id,
                        offset: offset as u64,
                        len: len as u64,
                        error: error.to_string(),
                    }),
                }
            }
        }
        r.for_each_chunk(|cid, row| {
            if !is_cold_pack(row.loc.pack) {
                return Ok(());
            }
            report.chunks += 1;
            let error = match seen.get(&(row.loc.pack, row.loc.offset)) {
                _ if !packs.contains_key(&row.loc.pack) => {
                    Some("the cold pack is not in the index".to_string())
                }
                Some(Ok((key, len))) if *key == cid.0 && *len == row.loc.len as u64 => None,
                Some(Ok(_)) => Some("the index points at a different record".into()),
                Some(Err(e)) => Some(e.clone()),
                None => Some("no intact record starts at the indexed location".into()),
            };
            if let Some(error) = error {
                report.damaged_chunks.push(DamagedChunk {
                    chunk: cid.to_hex(),
                    pack: row.loc.pack,
                    offset: row.loc.offset,
                    error,
                    files: Vec::new(),
                });
            }
            Ok(())
        })?;
        Ok(report)
    }
}

/// What `verify_cold` found at one (pack, offset): the record's key and length, or its error.
type SeenRecord = std::result::Result<([u8; 32], u64), String>;

/// Checks a whole record as stored: framing, CRCs, and that it is chunk `id` (BLAKE3).
fn check_record(raw: &[u8], id: &ChunkId) -> std::result::Result<(), String> {
    let (header, stored) = record::decode_record(raw).map_err(|e| e.to_string())?;
    if header.kind != RecordKind::Chunk || header.key != id.0 {
        return Err("the record is not this chunk".into());
    }
    if header.record_len() != raw.len() as u64 {
        return Err("the record's length differs from the index's".into());
    }
    record::decode_payload(&header, stored).map_err(|e| e.to_string())?;
    Ok(())
}

/// A cold pack being assembled in memory: header placeholder, then records.
struct ColdBuilder {
    buf: Vec<u8>,
    /// (chunk, where it is now, its reference count when chosen, offset in `buf`, length).
    entries: Vec<(ChunkId, Location, u64, u64, u32)>,
}

impl ColdBuilder {
    fn new() -> Self {
        ColdBuilder {
            buf: vec![0u8; PACK_HEADER_LEN as usize],
            entries: Vec::new(),
        }
    }

    fn push(&mut self, id: ChunkId, from: Location, refs: u64, raw: &[u8]) {
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(raw);
        self.entries
            .push((id, from, refs, offset, raw.len() as u32));
    }

    /// Writes the pack as one object, checks it, and commits the moves (see the module docs).
    fn flush(
        &mut self,
        inner: &Inner,
        cold: &Cold,
        class: Option<&str>,
        report: &mut TierMoveReport,
    ) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let id = cold.alloc_id(inner.index.read()?.cold_next_pack()?);
        self.buf[..PACK_HEADER_LEN as usize]
            .copy_from_slice(&encode_pack_header(id, inner.packs.store_id()));
        let key = cold.key(id);
        let len = self.buf.len() as u64;
        let opts = ObjectOptions {
            storage_class: class.map(str::to_string),
        };
        cold.tier
            .put(&key, &self.buf, &opts)
            .map_err(|e| tier_error("writing a cold pack", e))?;
        match cold.tier.head(&key) {
            Ok(Some(n)) if n == len => {}
            Ok(found) => {
                return Err(Error::Io {
                    context: format!("checking cold pack {key}"),
                    source: std::io::Error::other(format!(
                        "the tier holds {found:?} bytes after a put of {len}"
                    )),
                });
            }
            Err(e) => return Err(tier_error("checking a cold pack", e)),
        }
        let row = ColdPackRow {
            key: key.clone(),
            len,
            blake3: blake3::hash(&self.buf).to_hex().to_string(),
            storage_class: opts.storage_class,
            created_ms: inner.config.clock.now_ms(),
        };
        let mut w = inner.index.write()?;
        let (mut moved, mut bytes) = (0u64, 0u64);
        for &(cid, from, refs, offset, rec_len) in &self.entries {
            let to = Location {
                pack: id,
                offset,
                len: rec_len,
            };
            if w.retier_chunk(&cid, from, to, Some(refs))? {
                moved += 1;
                bytes += rec_len as u64;
            } else {
                // Referenced anew (or moved by compaction) since it was chosen: its copy in
                // the object is garbage from the start.
                w.add_garbage(id, rec_len as u64)?;
                report.shared += 1;
            }
        }
        if moved == 0 {
            drop(w);
            if let Err(e) = cold.tier.delete(&key) {
                tracing::warn!("could not delete unused cold pack {key}: {e}");
            }
        } else {
            w.insert_cold_pack(id, &row)?;
            w.commit()?;
            report.chunks += moved;
            report.bytes += bytes;
            report.packs_written.push(id);
        }
        *self = ColdBuilder::new();
        Ok(())
    }
}

/// Verified cold records waiting to be written hot.
#[derive(Default)]
struct HotBatch {
    records: Vec<(ChunkId, Location, Vec<u8>)>,
    bytes: usize,
}

impl HotBatch {
    fn push(&mut self, id: ChunkId, from: Location, raw: Vec<u8>) {
        self.bytes += raw.len();
        self.records.push((id, from, raw));
    }

    /// Appends the records to the active pack, syncs, and points the rows at the copies, in
    /// one index transaction held throughout (as compaction does), so no commit interleaves.
    fn commit(&mut self, inner: &Inner, report: &mut TierMoveReport) -> Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let mut w = inner.index.write()?;
        let mut copies = Vec::with_capacity(self.records.len());
        for (cid, from, raw) in &self.records {
            if w.chunk(cid)?.is_some_and(|row| row.loc == *from) {
                copies.push((*cid, *from, inner.packs.append(raw)?));
            }
        }
        let states = inner.packs.sync()?;
        w.set_packs(&states)?;
        for (cid, from, to) in &copies {
            if w.retier_chunk(cid, *from, *to, None)? {
                report.chunks += 1;
                report.bytes += to.len as u64;
            } else {
                w.add_garbage(to.pack, to.len as u64)?;
            }
        }
        w.commit()?;
        inner.packs.committed(&states);
        *self = HotBatch::default();
        Ok(())
    }
}

/// Moves every live chunk of cold pack `id` hot, reading the object whole (one GET).
fn rehydrate_pack(
    inner: &Inner,
    cold: &Cold,
    id: u32,
    row: &ColdPackRow,
    dry_run: bool,
    report: &mut TierMoveReport,
    problems: &mut Vec<String>,
) -> Result<()> {
    let data = cold
        .tier
        .get_range(&row.key, 0..row.len)
        .map_err(|e| tier_error("reading a cold pack", e))?;
    if blake3::hash(&data).to_hex().as_str() != row.blake3 {
        // Records still prove themselves one by one; the damaged ones stay where they are.
        problems.push(format!(
            "cold pack {id} ({}): the object's BLAKE3 differs from the one recorded",
            row.key
        ));
    }
    let mut pending = HotBatch::default();
    let r = inner.index.read()?;
    for item in record::scan_records(&data, PACK_HEADER_LEN as usize) {
        let ScanItem::Record {
            offset,
            header,
            stored,
        } = item
        else {
            continue;
        };
        if header.kind != RecordKind::Chunk {
            continue;
        }
        let cid = ChunkId(header.key);
        let loc = Location {
            pack: id,
            offset: offset as u64,
            len: header.record_len() as u32,
        };
        if !r.chunk(&cid)?.is_some_and(|row| row.loc == loc) {
            continue;
        }
        if let Err(e) = record::decode_payload(&header, stored) {
            problems.push(format!(
                "cold pack {id} at {offset}: chunk {} left in place: {e}",
                cid.to_hex()
            ));
            continue;
        }
        if dry_run {
            report.chunks += 1;
            report.bytes += loc.len as u64;
            continue;
        }
        let end = offset + loc.len as usize;
        pending.push(cid, loc, data[offset..end].to_vec());
        if pending.bytes >= HOT_BATCH_BYTES {
            pending.commit(inner, report)?;
        }
    }
    drop(r);
    pending.commit(inner, report)
}

/// Live record bytes of a cold pack, from its length and its garbage.
fn live_bytes(row: &ColdPackRow, garbage: u64) -> u64 {
    row.len
        .saturating_sub(PACK_HEADER_LEN)
        .saturating_sub(garbage)
}

/// Forgets, then deletes, cold packs with no live record. The caller holds `Cold::moves`.
fn drop_empty_packs(
    inner: &Inner,
    cold: &Cold,
    dry_run: bool,
    gc: &mut ColdGcReport,
) -> Result<()> {
    let r = inner.index.read()?;
    let garbage: HashMap<u32, u64> = r.pack_garbage()?.into_iter().collect();
    let empty: Vec<(u32, ColdPackRow)> = r
        .cold_packs()?
        .into_iter()
        .filter(|(id, row)| live_bytes(row, garbage.get(id).copied().unwrap_or(0)) == 0)
        .collect();
    drop(r);
    for (id, row) in empty {
        gc.packs_deleted.push(id);
        if dry_run {
            continue;
        }
        let mut w = inner.index.write()?;
        w.remove_cold_pack(id)?;
        w.commit()?;
        cold.forget(id);
        // After the commit: a crash here leaves an orphan, which the next collection deletes.
        if let Err(e) = cold.tier.delete(&row.key) {
            gc.problems
                .push(format!("could not delete cold pack {} yet: {e}", row.key));
        }
    }
    Ok(())
}

/// The collector's pass over the cold tier: cold packs over the garbage threshold have their
/// live chunks moved hot, empty ones are forgotten and deleted, and orphaned objects (of moves
/// interrupted before their commit) are deleted.
pub(crate) fn collect_cold(inner: &Inner, opts: &GcOptions) -> Result<Option<ColdGcReport>> {
    let Some(cold) = &inner.cold else {
        return Ok(None);
    };
    if inner.read_only {
        return Ok(None);
    }
    let _moves = cold.moves.lock().unwrap();
    let mut gc = ColdGcReport::default();
    let r = inner.index.read()?;
    let garbage: HashMap<u32, u64> = r.pack_garbage()?.into_iter().collect();
    let packs = r.cold_packs()?;
    drop(r);
    for (id, row) in &packs {
        let g = garbage.get(id).copied().unwrap_or(0);
        if g == 0 || live_bytes(row, g) == 0 {
            continue;
        }
        if g as f64 >= opts.compact_threshold * row.len as f64 {
            gc.packs_compacted.push(*id);
            let mut moved = TierMoveReport::default();
            rehydrate_pack(
                inner,
                cold,
                *id,
                row,
                opts.dry_run,
                &mut moved,
                &mut gc.problems,
            )?;
            gc.chunks_rehydrated += moved.chunks;
        }
    }
    drop_empty_packs(inner, cold, opts.dry_run, &mut gc)?;
    let known: HashSet<String> = inner
        .index
        .read()?
        .cold_packs()?
        .into_iter()
        .map(|(_, p)| p.key)
        .collect();
    let listed = cold
        .tier
        .list(cold.prefix())
        .map_err(|e| tier_error("listing the cold tier", e))?;
    for obj in listed {
        if known.contains(&obj.key) {
            continue;
        }
        if !opts.dry_run
            && let Err(e) = cold.tier.delete(&obj.key)
        {
            gc.problems
                .push(format!("could not delete orphan {}: {e}", obj.key));
            continue;
        }
        gc.orphans.push(obj.key);
    }
    Ok(Some(gc))
}
