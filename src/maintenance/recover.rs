//! `recover`: rebuild the index from the packs alone.
//!
//! Packs are replayed in id order and records in offset order, which is commit order: manifests
//! and events are appended inside the index's write transaction. Revoked records (whose commit
//! failed) are skipped. A torn tail of a pack is truncated; damage inside a pack is skipped and
//! reported, and the versions that needed it show up in the next `verify`.
//!
//! The new index is built beside the old one and renamed into place, so a crash during recovery
//! leaves the old index (if any) untouched. The old index is kept as `index.redb.bak-<ms>`.
//!
//! Accounts (users, token hashes, revocations, organisation limits) are account events in the
//! same journal and are replayed in the same order, so tokens revoked before a crash stay
//! revoked.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::DamagedRegion;
use super::progress::Progress;
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::index::{ChunkRow, Index};
use crate::pack::account::AccountEvent;
use crate::pack::manifest::{FileEvent, Manifest};
use crate::pack::record::{self, RecordKind, ScanItem};
use crate::pack::storage::{FsPackStorage, PackStorage, sync_dir};
use crate::pack::{Location, PACK_HEADER_LEN, PackState, decode_pack_header};
use crate::store::{Config, Identity, index_path, lock_store, pack_dir};

/// What `recover` found and rebuilt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoverReport {
    pub packs: u64,
    pub records: u64,
    pub chunks: u64,
    pub files: u64,
    pub versions: u64,
    pub events: u64,
    /// Delete/undelete events of files that no longer exist (purged; left behind by
    /// compaction). Harmless.
    pub stale_events: u64,
    /// Records skipped because their commit had failed.
    pub revoked: u64,
    /// `(pack, bytes)` of torn tails that were cut off.
    pub truncated: Vec<(u32, u64)>,
    pub damaged_regions: Vec<DamagedRegion>,
    /// Packs that could not be used at all, with the reason.
    pub skipped_packs: Vec<(u32, String)>,
    /// Manifests or events that could not be applied, with the reason.
    pub problems: Vec<String>,
    /// Chunk references whose chunk is not in any pack.
    pub missing_chunks: u64,
    /// Where the previous index was moved, if there was one.
    pub old_index: Option<PathBuf>,
    /// Account events replayed (users, tokens, revocations, limits, snapshots).
    pub accounts: u64,
    /// Users in the rebuilt index.
    pub users: u64,
    /// Users (with their token hashes and organisation limits) copied from the old index
    /// because it had never journaled them (a store made before accounts were journaled, not
    /// opened read-write since): without that index they would be lost.
    pub users_kept: u64,
    /// Cold packs found in the cold tier (with `Config::cold_tier`) and indexed again.
    pub cold_packs: u64,
}

/// Copies users, token hashes and organisation limits from the old index into the new one,
/// when the old one still opens and does not say its accounts are journaled: made before
/// accounts were journaled (and not opened read-write since, which would have journaled
/// them), it is the only place they are — replacing what the journal replay made of them.
/// Returns whether it did (then the next read-write open journals them).
fn carry_over_users(dir: &Path, w: &mut crate::index::WriteTx, report: &mut RecoverReport) -> bool {
    let live = index_path(dir);
    if !live.exists() {
        return false;
    }
    let copied = (|| -> Result<bool> {
        let old = match Index::open_read_only(&live) {
            Ok(i) => i,
            // Not closed cleanly (the usual case after a crash): let redb repair it; it is
            // about to be set aside anyway.
            Err(crate::index::ReadOnlyOpen::NeedsRepair) => Index::open(&live)?,
            Err(crate::index::ReadOnlyOpen::Failed(e)) => return Err(e),
        };
        let r = old.read()?;
        if r.accounts_journaled()? {
            return Ok(false);
        }
        let snapshot = r.account_snapshot(0)?;
        report.users_kept = r.user_count()?;
        w.apply_account(&snapshot)?;
        Ok(true)
    })();
    match copied {
        Ok(kept) => kept,
        Err(e) => {
            report.problems.push(format!(
                "the old index does not open ({e}): accounts come from the journal alone"
            ));
            false
        }
    }
}

// Held for the length of one recovery; the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Op {
    Version(Manifest),
    Event(FileEvent),
}

/// Rebuilds the index of the store in `dir` from its packs. The store must not be open.
pub fn recover(
    dir: impl AsRef<Path>,
    config: &Config,
    progress: &dyn Progress,
) -> Result<RecoverReport> {
    let dir = dir.as_ref();
    let _lock = lock_store(dir)?;
    let identity = Identity::load(dir)?;
    let store_id = identity.store_id()?;
    let storage =
        FsPackStorage::new(pack_dir(dir)).ctx(|| format!("opening {}", pack_dir(dir).display()))?;
    let mut report = RecoverReport::default();

    let ids = storage.list().ctx(|| "listing packs".into())?;
    let mut rows: HashMap<ChunkId, ChunkRow> = HashMap::new();
    // (original position = commit order, where the record is now, what it says).
    let mut ops: Vec<((u32, u64), Location, Op)> = Vec::new();
    let mut revoked: HashSet<(u32, u64)> = HashSet::new();
    let mut states = Vec::new();
    let mut plain = Vec::new();

    let mut total = 0;
    for &id in &ids {
        total += storage.open(id).and_then(|f| f.size()).unwrap_or(0);
    }
    progress.start("scanning packs", total);
    for (n, &id) in ids.iter().enumerate() {
        let last = n + 1 == ids.len();
        let map = storage
            .map(id)
            .ctx(|| format!("mapping {}", storage.describe(id)))?;
        let map = crate::pack::storage::ReleaseOnDrop(map);
        let bytes: &[u8] = map.0.bytes();
        match decode_pack_header(bytes) {
            Ok((pid, sid)) if pid == id && sid == store_id => {}
            Ok(_) => {
                report
                    .skipped_packs
                    .push((id, "header names another pack or store".into()));
                progress.advance(bytes.len() as u64);
                continue;
            }
            Err(e) => {
                report.skipped_packs.push((id, e));
                progress.advance(bytes.len() as u64);
                continue;
            }
        }
        report.packs += 1;
        let mut valid_end = PACK_HEADER_LEN;
        let mut torn_at = None;
        for item in record::scan_records(bytes, PACK_HEADER_LEN as usize) {
            match item {
                ScanItem::Record {
                    offset,
                    header,
                    stored,
                } => {
                    report.records += 1;
                    let loc = Location {
                        pack: id,
                        offset: offset as u64,
                        len: header.record_len() as u32,
                    };
                    valid_end = loc.offset + header.record_len();
                    if let Err(e) = record::decode_payload_into(&header, stored, &mut plain) {
                        report.damaged_regions.push(DamagedRegion {
                            pack: id,
                            offset: loc.offset,
                            len: loc.len as u64,
                            error: e.to_string(),
                        });
                        continue;
                    }
                    match header.kind {
                        RecordKind::Chunk => {
                            rows.entry(ChunkId(header.key)).or_insert(ChunkRow {
                                loc,
                                raw_len: header.raw_len,
                                stored_len: header.stored_len,
                                refs: 0,
                            });
                        }
                        RecordKind::Manifest | RecordKind::Event | RecordKind::Moved => {
                            // A moved record replays at its original position.
                            let (kind, body, at) = if header.kind == RecordKind::Moved {
                                match record::Moved::decode(&plain) {
                                    Ok(m) => (m.kind, m.plain, (m.orig_pack, m.orig_offset)),
                                    Err(e) => {
                                        report
                                            .problems
                                            .push(format!("record in pack {id} at {offset}: {e}"));
                                        continue;
                                    }
                                }
                            } else {
                                (header.kind, &plain[..], (loc.pack, loc.offset))
                            };
                            if kind == RecordKind::Manifest {
                                match Manifest::decode(body) {
                                    Ok(m) => ops.push((at, loc, Op::Version(m))),
                                    Err(e) => report
                                        .problems
                                        .push(format!("manifest in pack {id} at {offset}: {e}")),
                                }
                            } else {
                                match FileEvent::decode(body) {
                                    Ok(FileEvent::Revoke { pack, offset }) => {
                                        revoked.insert((pack, offset));
                                    }
                                    Ok(e) => ops.push((at, loc, Op::Event(e))),
                                    Err(e) => report
                                        .problems
                                        .push(format!("event in pack {id} at {offset}: {e}")),
                                }
                            }
                        }
                    }
                }
                ScanItem::Damage {
                    offset,
                    len,
                    error,
                    at_end,
                } => {
                    if at_end {
                        torn_at = Some(offset as u64);
                    } else {
                        report.damaged_regions.push(DamagedRegion {
                            pack: id,
                            offset: offset as u64,
                            len: len as u64,
                            error: error.to_string(),
                        });
                    }
                }
            }
        }
        progress.advance(bytes.len() as u64);
        let len = bytes.len() as u64;
        drop(map);
        if let Some(at) = torn_at {
            // Nothing valid follows: a write the crash cut short (or never committed).
            let f = storage
                .open(id)
                .ctx(|| format!("opening {}", storage.describe(id)))?;
            f.truncate(at)
                .ctx(|| format!("truncating {}", storage.describe(id)))?;
            report.truncated.push((id, len - at));
            valid_end = at;
        }
        states.push(PackState {
            id,
            len: valid_end.max(PACK_HEADER_LEN),
            sealed: !last,
        });
    }
    progress.finish();
    // The cold tier's packs, after the local ones: a chunk with a local copy stays hot.
    let cold = match &config.cold_tier {
        Some(tier) => scan_cold(&**tier, store_id, config, &mut rows, &mut report)?,
        None => Vec::new(),
    };

    let building = dir.join("index.redb.recovering");
    if building.exists() {
        fs::remove_file(&building).ctx(|| format!("removing {}", building.display()))?;
    }
    let index = Index::create(&building)?;
    let mut w = index.write()?;
    w.set_meta("store_id", identity.store_id.as_bytes())?;
    // Commit order; a record found both where it was written and as a compaction's copy (a
    // crash before the old pack was deleted) is replayed once.
    ops.sort_by_key(|(at, _, _)| *at);
    ops.dedup_by_key(|(at, _, _)| *at);
    progress.start("rebuilding the index (records)", ops.len() as u64);
    let now = config.clock.now_ms();
    // Account snapshots replayed: all but the latest are garbage, as compaction counts them.
    let mut snapshots: Vec<Location> = Vec::new();
    for (at, loc, op) in &ops {
        progress.advance(1);
        if revoked.contains(at) {
            report.revoked += 1;
            continue;
        }
        match op {
            Op::Version(m) => {
                match w.apply_version(&m.meta, &m.chunks, *loc, |id| rows.get(id).copied()) {
                    Ok((_, missing)) => {
                        report.versions += 1;
                        report.missing_chunks += missing.len() as u64;
                    }
                    Err(e) => report.problems.push(format!(
                        "file {} version {}: {e}",
                        m.meta.file_id, m.meta.version
                    )),
                }
            }
            Op::Event(FileEvent::Account(change)) => match w.apply_account(change) {
                Ok(()) => {
                    report.accounts += 1;
                    if matches!(change, AccountEvent::Snapshot { .. }) {
                        snapshots.push(*loc);
                    }
                }
                Err(err) => report
                    .problems
                    .push(format!("account event at {at:?}: {err}")),
            },
            Op::Event(e) => match w.apply_event(e) {
                Ok(_) => report.events += 1,
                // Compaction drops a purged file's manifests and purge event but may leave a
                // moved delete/undelete of it behind (in a pack below the threshold): the file
                // is gone either way.
                Err(Error::NotFound { .. })
                    if matches!(e, FileEvent::Delete { .. } | FileEvent::Undelete { .. }) =>
                {
                    report.stale_events += 1
                }
                Err(err) => report.problems.push(format!("event {e:?}: {err}")),
            },
        }
    }
    // Chunks no version references (left by puts that never committed) are indexed too, with
    // no references, so garbage collection can find them.
    for (id, row) in &rows {
        if w.chunk(id)?.is_none() {
            w.add_chunk_refs(id, *row, 0)?;
            w.mark_zero(id, now)?;
        }
    }
    w.set_packs(&states)?;
    // Cold packs: their rows, the chunks that ended up pointing into them (counted as cold),
    // and everything else in them as garbage, so the collector deletes packs nobody needs.
    let mut live: HashMap<u32, u64> = HashMap::new();
    for (id, row) in &rows {
        if crate::tier::is_cold_pack(row.loc.pack) && w.chunk(id)?.is_some() {
            *live.entry(row.loc.pack).or_default() += row.loc.len as u64;
            w.count_cold_chunk(row)?;
        }
    }
    for (id, row) in &cold {
        w.insert_cold_pack(*id, row)?;
        let used = PACK_HEADER_LEN + live.get(id).copied().unwrap_or(0);
        if row.len > used {
            w.add_garbage(*id, row.len - used)?;
        }
    }
    // Last-read times are not journaled: replay leaves each file at its latest write. Reports
    // count no file as unread for longer than the time since this rebuild.
    w.set_meta(crate::maintenance::reports::READS_SINCE, &now.to_le_bytes())?;
    // Accounts were replayed from the journal, unless the old index holds accounts it never
    // journaled (a store made before accounts were journaled).
    if !carry_over_users(dir, &mut w, &mut report) {
        w.set_accounts_journaled()?;
    }
    if let Some((latest, older)) = snapshots.split_last() {
        w.set_latest_account_snapshot(*latest)?;
        for s in older {
            w.add_garbage(s.pack, s.len as u64)?;
        }
    }
    report.users = w.users()?.len() as u64;
    // Usage was rebuilt by the replay; the warning levels are set to where usage is now,
    // without raising anything (those crossings were raised when they happened).
    crate::quota::Quotas::new(config.quotas.clone()).settle(&mut w, now)?;
    let counters = w.counters()?;
    report.chunks = counters.chunks;
    report.files = counters.files;
    w.commit()?;
    drop(index);
    progress.finish();

    let live = index_path(dir);
    if live.exists() {
        let backup = dir.join(format!("index.redb.bak-{}", config.clock.now_ms()));
        fs::rename(&live, &backup)
            .ctx(|| format!("moving the old index to {}", backup.display()))?;
        report.old_index = Some(backup);
    }
    fs::rename(&building, &live).ctx(|| format!("installing {}", live.display()))?;
    sync_dir(dir).ctx(|| format!("syncing {}", dir.display()))?;
    if report.versions == 0 && ops.iter().any(|(_, _, op)| matches!(op, Op::Version(_))) {
        return Err(Error::corrupt(
            pack_dir(dir).display().to_string(),
            "no file version could be recovered",
        ));
    }
    Ok(report)
}

/// Downloads every cold pack of the store from `tier` and adds its chunk records to `rows`
/// (where no local copy was found). Returns the cold pack rows to index.
fn scan_cold(
    tier: &dyn crate::tier::ColdTier,
    store_id: u128,
    config: &Config,
    rows: &mut HashMap<ChunkId, ChunkRow>,
    report: &mut RecoverReport,
) -> Result<Vec<(u32, crate::index::ColdPackRow)>> {
    use crate::tier::cold::tier_error;
    let prefix = format!("packs/{store_id:032x}/");
    let listed = tier
        .list(&prefix)
        .map_err(|e| tier_error("listing the cold tier", e))?;
    let mut out = Vec::new();
    let mut plain = Vec::new();
    for obj in listed {
        let id = obj
            .key
            .strip_prefix(&prefix)
            .and_then(|n| n.strip_suffix(".pack"))
            .filter(|n| n.len() == 8)
            .and_then(|n| u32::from_str_radix(n, 16).ok())
            .filter(|&id| crate::tier::is_cold_pack(id));
        let Some(id) = id else { continue };
        let data = tier
            .get_range(&obj.key, 0..obj.size)
            .map_err(|e| tier_error("reading a cold pack", e))?;
        match decode_pack_header(&data) {
            Ok((pid, sid)) if pid == id && sid == store_id => {}
            Ok(_) => {
                report.skipped_packs.push((
                    id,
                    format!("{}: header names another pack or store", obj.key),
                ));
                continue;
            }
            Err(e) => {
                report.skipped_packs.push((id, format!("{}: {e}", obj.key)));
                continue;
            }
        }
        report.cold_packs += 1;
        for item in record::scan_records(&data, PACK_HEADER_LEN as usize) {
            match item {
                ScanItem::Record {
                    offset,
                    header,
                    stored,
                } if header.kind == RecordKind::Chunk => {
                    report.records += 1;
                    if let Err(e) = record::decode_payload_into(&header, stored, &mut plain) {
                        report.damaged_regions.push(DamagedRegion {
                            pack: id,
                            offset: offset as u64,
                            len: header.record_len(),
                            error: e.to_string(),
                        });
                        continue;
                    }
                    rows.entry(ChunkId(header.key)).or_insert(ChunkRow {
                        loc: Location {
                            pack: id,
                            offset: offset as u64,
                            len: header.record_len() as u32,
                        },
                        raw_len: header.raw_len,
                        stored_len: header.stored_len,
                        refs: 0,
                    });
                }
                ScanItem::Record { offset, .. } => report.problems.push(format!(
                    "cold pack {} at {offset}: not a chunk record (ignored)",
                    obj.key
                )),
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
        out.push((
            id,
            crate::index::ColdPackRow {
                key: obj.key.clone(),
                len: data.len() as u64,
                blake3: blake3::hash(&data).to_hex().to_string(),
                storage_class: None,
                created_ms: config.clock.now_ms(),
            },
        ));
    }
    Ok(out)
}
