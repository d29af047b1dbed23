//! Garbage collection, compaction, purges and retention.
//!
//! The collector is a state machine per chunk (docs/design.md, "Garbage collection"):
//!
//! ```text
//!   referenced (refs > 0) ──last reference released──▶ zero (row in `zero_refs`, stamped)
//!        ▲                                                 │
//!        └──── a commit references it again (same tx) ─────┤
//!                                                          │ grace period passed, not pinned,
//!                                                          ▼ refs still 0 (re-checked in the sweep's tx)
//!                                                       swept (row gone; bytes counted in `pack_garbage`)
//!                                                          │ pack's garbage share ≥ threshold
//!                                                          ▼
//!                                                       compacted (live records copied, pack deleted)
//! ```
//!
//! Safety against puts in flight rests on [`GcPins`]: a put pins every chunk before it looks it
//! up, and a sweep decides and commits while holding the pin lock, skipping pinned chunks, so a
//! chunk a put has seen in the index is still there when the put commits. Puts register the
//! lowest pack they may write to; compaction only rewrites packs below every registered one.
//! Memory is bounded by the batch size, never by the store or by a pack.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::commit::Change;
use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId};
use crate::index::{ListFilter, WriteTx};
use crate::pack::manifest::{FileEvent, Manifest};
use crate::pack::record::{self, Moved, RecordKind, ScanItem};
use crate::pack::{Location, PACK_HEADER_LEN, Packs};
use crate::store::{Inner, Store};

// ------------------------------------------------------------------ pins

/// What puts in flight need kept. One per store.
#[derive(Default)]
pub(crate) struct GcPins {
    state: Mutex<PinState>,
    /// Held by a collecting (not dry) run, whoever starts it (the scheduler, an admin request):
    /// a second collector would only redo the first one's scan over the same candidates and
    /// packs, doubling the I/O of a run that is already slow.
    collector: Mutex<()>,
}

#[derive(Default)]
struct PinState {
    /// Chunks referenced by puts in flight (with multiplicity).
    chunks: HashMap<ChunkId, u32>,
    /// Lowest pack each put in flight may write to → number of such puts.
    puts: BTreeMap<u32, u32>,
    /// Bumped by every sweep commit, under this lock.
    generation: u64,
}

impl GcPins {
    /// Registers a put. Returns the sweep generation (to compare at each pin) and the lowest
    /// pack the put may write to. Must run before the put takes any index snapshot.
    pub fn begin_put(&self, packs: &Packs) -> (u64, u32) {
        let mut s = self.state.lock().unwrap();
        let start = packs.lowest_writable();
        *s.puts.entry(start).or_default() += 1;
        (s.generation, start)
    }

    /// Pins a chunk; returns the current sweep generation.
    pub fn pin(&self, id: &ChunkId) -> u64 {
        let mut s = self.state.lock().unwrap();
        *s.chunks.entry(*id).or_default() += 1;
        s.generation
    }

    /// Ends a put (after its commit, or its failure).
    pub fn end_put(&self, start: u32, pinned: &[ChunkId]) {
        let mut s = self.state.lock().unwrap();
        for id in pinned {
            if let Some(n) = s.chunks.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    s.chunks.remove(id);
                }
            }
        }
        if let Some(n) = s.puts.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                s.puts.remove(&start);
            }
        }
    }

    fn lowest_busy_pack(&self) -> u32 {
        let s = self.state.lock().unwrap();
        s.puts.keys().next().copied().unwrap_or(u32::MAX)
    }
}

// ------------------------------------------------------------------ options and reports

/// What [`Store::gc`] does.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// How long a chunk stays unreferenced before it may be swept (default 1 h).
    pub grace: Duration,
    /// Garbage share of a pack (reclaimable bytes ÷ pack bytes) at which it is rewritten
    /// (default 0.2).
    pub compact_threshold: f64,
    /// Sweep candidates decided, and chunks compaction moves, per index transaction (default
    /// 1000): what bounds the index pages one transaction dirties.
    pub batch: usize,
    /// Rewrite packs after sweeping (default true).
    pub compact: bool,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(60 * 60),
            compact_threshold: 0.2,
            batch: 1000,
            compact: true,
            dry_run: false,
        }
    }
}

/// What a GC run did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Unreferenced chunks seen.
    pub candidates: u64,
    /// Unreferenced for less than the grace period: left for a later run.
    pub young: u64,
    /// Referenced by a put in flight: left alone.
    pub pinned: u64,
    pub swept_chunks: u64,
    /// Record bytes of the swept chunks (reclaimed once their packs are compacted).
    pub swept_bytes: u64,
    /// Packs rewritten (dry: that would be).
    pub packs_compacted: Vec<u32>,
    /// Packs over the threshold left alone because a put in flight may write to them.
    pub packs_busy: Vec<u32>,
    /// Live records copied out of compacted packs.
    pub records_copied: u64,
    pub bytes_copied: u64,
    /// Pack bytes deleted minus bytes copied.
    pub bytes_reclaimed: u64,
    /// Records of compacted packs that could not be read (left behind; `verify` reports them).
    pub problems: Vec<String>,
    /// The pass over the cold tier, when the store has one (see `maintenance::tiering`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold: Option<super::tiering::ColdGcReport>,
}

/// What [`Store::purge_deleted`] and [`Store::keep_last`] did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    pub dry_run: bool,
    pub files: u64,
    pub versions: u64,
    /// Sizes of the removed versions (logical bytes).
    pub bytes: u64,
    /// Files that changed meanwhile (undeleted, say) and were left alone.
    pub skipped: u64,
}

/// Files examined per page by purge and retention.
const PAGE: usize = 500;

impl Store {
    /// Sweeps chunks unreferenced for longer than the grace period, then rewrites packs whose
    /// garbage share passes the threshold. Safe to run while puts and gets are in flight.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let inner = self.inner();
        if inner.read_only {
            return Err(Error::InvalidInput("the store is open read-only".into()));
        }
        let _one_collector = (!opts.dry_run).then(|| inner.gc_pins.collector.lock().unwrap());
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let projected = sweep(inner, opts, &mut report)?;
        if opts.compact {
            compact(inner, opts, &projected, &mut report)?;
        }
        report.cold = super::tiering::collect_cold(inner, opts)?;
        Ok(report)
    }

    /// Removes for good the files soft-deleted at least `older_than` ago (default policy 30
    /// days): their versions, chunk lists and names; their chunks lose the references. Each
    /// purge is journaled as a `purge` event, so `recover` replays it.
    pub fn purge_deleted(&self, older_than: Duration, dry_run: bool) -> Result<PurgeReport> {
        let inner = self.inner();
        let cutoff = inner.config.clock.now_ms() - older_than.as_millis() as i64;
        let mut report = PurgeReport {
            dry_run,
            ..Default::default()
        };
        self.each_file_page(|r, files| {
            let mut changes = Vec::new();
            for f in files {
                if f.deleted_ms.is_some_and(|d| d <= cutoff) {
                    let versions = r.versions(f.id)?;
                    if dry_run {
                        report.files += 1;
                        report.versions += versions.len() as u64;
                        report.bytes += versions.iter().map(|v| v.meta.size).sum::<u64>();
                    } else {
                        changes.push(Change::Purge {
                            id: f.id,
                            deleted_before: cutoff,
                        });
                    }
                }
            }
            Ok(changes)
        })
        .map(|results| {
            for (removed, ok) in results {
                if ok {
                    report.files += 1;
                    report.versions += removed.0;
                    report.bytes += removed.1;
                } else {
                    report.skipped += 1;
                }
            }
            report
        })
    }

    /// Version retention: keeps the newest `keep` versions of every file (of `category`, if
    /// given) and removes the older ones for good, journaled as `drop_version` events.
    pub fn keep_last(
        &self,
        keep: u32,
        category: Option<&str>,
        dry_run: bool,
    ) -> Result<PurgeReport> {
        let keep = keep.max(1) as usize;
        let mut report = PurgeReport {
            dry_run,
            ..Default::default()
        };
        self.each_file_page(|r, files| {
            let mut changes = Vec::new();
            for f in files {
                if category.is_some_and(|c| f.category != c) {
                    continue;
                }
                let versions = r.versions(f.id)?;
                if versions.len() <= keep {
                    continue;
                }
                for v in &versions[..versions.len() - keep] {
                    if dry_run {
                        report.versions += 1;
                        report.bytes += v.meta.size;
                    } else {
                        changes.push(Change::DropVersion {
                            id: f.id,
                            version: v.meta.version,
                        });
                    }
                }
                if dry_run {
                    report.files += 1;
                }
            }
            Ok(changes)
        })
        .map(|results| {
            let mut last = None;
            for (removed, ok) in results {
                if ok {
                    report.versions += removed.0;
                    report.bytes += removed.1;
                    if last != Some(removed.2) {
                        report.files += 1;
                        last = Some(removed.2);
                    }
                } else {
                    report.skipped += 1;
                }
            }
            report
        })
    }

    /// Pages through every file (deleted ones included), asks `decide` for changes, commits
    /// them page by page, and returns per change `((versions, bytes, file), committed)`.
    #[allow(clippy::type_complexity)]
    fn each_file_page(
        &self,
        decide: impl FnMut(&crate::index::ReadTx, &[crate::index::FileRecord]) -> Result<Vec<Change>>,
    ) -> Result<Vec<((u64, u64, FileId), bool)>> {
        self.each_file_page_of(
            &ListFilter {
                include_deleted: true,
                ..Default::default()
            },
            decide,
        )
    }

    /// [`Store::each_file_page`] over the files `base` selects (its cursor and limit are
    /// set here).
    #[allow(clippy::type_complexity)]
    pub(super) fn each_file_page_of(
        &self,
        base: &ListFilter<'_>,
        mut decide: impl FnMut(
            &crate::index::ReadTx,
            &[crate::index::FileRecord],
        ) -> Result<Vec<Change>>,
    ) -> Result<Vec<((u64, u64, FileId), bool)>> {
        let inner = self.inner();
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let r = inner.index.read()?;
            let (files, next) = r.list(&ListFilter {
                after: cursor.as_deref(),
                limit: PAGE,
                ..base.clone()
            })?;
            let changes = decide(&r, &files)?;
            drop(r);
            if !changes.is_empty() {
                // What each change removes, for the report (the commit decides for real).
                let r = inner.index.read()?;
                let mut sizes = Vec::with_capacity(changes.len());
                for c in &changes {
                    sizes.push(match c {
                        Change::Purge { id, .. }
                        | Change::PurgeQuarantined { id, .. }
                        | Change::Expire { id, .. } => {
                            let vs = r.versions(*id)?;
                            (vs.len() as u64, vs.iter().map(|v| v.meta.size).sum(), *id)
                        }
                        Change::DropVersion { id, version } => {
                            (1, r.version(*id, *version)?.map_or(0, |v| v.meta.size), *id)
                        }
                        _ => (0, 0, FileId(0)),
                    });
                }
                drop(r);
                let results = inner.committer.commit_all(inner, changes);
                for (size, res) in sizes.into_iter().zip(results) {
                    out.push((size, res.is_ok()));
                }
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        Ok(out)
    }
}

// ------------------------------------------------------------------ sweep

/// Sweeps; a dry run returns the garbage per pack the sweep would have added.
fn sweep(inner: &Inner, opts: &GcOptions, report: &mut GcReport) -> Result<HashMap<u32, u64>> {
    let mut projected: HashMap<u32, u64> = HashMap::new();
    let cutoff = inner.config.clock.now_ms() - opts.grace.as_millis() as i64;
    let mut after: Option<ChunkId> = None;
    loop {
        let batch = inner
            .index
            .read()?
            .zero_refs_batch(after.as_ref(), opts.batch.max(1))?;
        let Some(last) = batch.last() else { break };
        after = Some(last.0);
        report.candidates += batch.len() as u64;
        let due: Vec<ChunkId> = batch
            .iter()
            .filter(|(_, since)| *since <= cutoff)
            .map(|(id, _)| *id)
            .collect();
        report.young += (batch.len() - due.len()) as u64;
        if due.is_empty() {
            continue;
        }
        if opts.dry_run {
            let r = inner.index.read()?;
            let pins = inner.gc_pins.state.lock().unwrap();
            for id in &due {
                if pins.chunks.contains_key(id) {
                    report.pinned += 1;
                } else if let Some(row) = r.chunk(id)?.filter(|row| row.refs == 0) {
                    report.swept_chunks += 1;
                    report.swept_bytes += row.loc.len as u64;
                    *projected.entry(row.loc.pack).or_default() += row.loc.len as u64;
                }
            }
            continue;
        }
        // The decision and the commit happen under the pin lock: a put either pinned the chunk
        // before (and it is skipped), or pins it after the commit and sees the new generation,
        // so it looks the chunk up afresh and finds it gone.
        let mut w = inner.index.write()?;
        let mut pins = inner.gc_pins.state.lock().unwrap();
        let mut swept = 0;
        for id in &due {
            if pins.chunks.contains_key(id) {
                report.pinned += 1;
                continue;
            }
            if let Some(loc) = w.sweep_chunk(id, cutoff)? {
                swept += 1;
                report.swept_bytes += loc.len as u64;
            }
        }
        if swept > 0 {
            w.commit()?;
            pins.generation += 1;
            report.swept_chunks += swept;
        }
    }
    Ok(projected)
}

// ------------------------------------------------------------------ compaction

fn compact(
    inner: &Inner,
    opts: &GcOptions,
    projected: &HashMap<u32, u64>,
    report: &mut GcReport,
) -> Result<()> {
    let r = inner.index.read()?;
    let states: HashMap<u32, u64> = r.packs()?.into_iter().map(|s| (s.id, s.len)).collect();
    let mut garbage: HashMap<u32, u64> = r.pack_garbage()?.into_iter().collect();
    for (id, bytes) in projected {
        *garbage.entry(*id).or_default() += bytes;
    }
    let mut chosen: Vec<u32> = garbage
        .into_iter()
        .filter(|&(id, garbage)| {
            let len = states.get(&id).copied().unwrap_or(0);
            garbage > 0 && len > 0 && garbage as f64 >= opts.compact_threshold * len as f64
        })
        .map(|(id, _)| id)
        .collect();
    drop(r);
    chosen.sort_unstable();
    for id in chosen {
        if opts.dry_run {
            report.packs_compacted.push(id);
            continue;
        }
        // Stop appends to it; a put that starts from now on writes to later packs.
        inner.packs.seal(id);
        if inner.gc_pins.lowest_busy_pack() <= id {
            report.packs_busy.push(id);
            continue;
        }
        compact_pack(inner, id, opts.batch, report)?;
        report.packs_compacted.push(id);
    }
    Ok(())
}

/// Bytes of a pack's map compaction reads before it releases them.
const RELEASE_EVERY: usize = 8 << 20;

/// A live record of the pack being rewritten, and what to update once its copy is durable.
enum Live {
    Chunk(ChunkId),
    Manifest(FileId, u32),
    Event,
}

/// Rewrites pack `id` in two phases, and deletes it only after the index forgot it.
///
/// Phase one moves the live chunks — nearly all of a pack — in batches of `batch`, each its
/// own commit (copies appended, synced, rows pointed at them, the old records counted as the
/// pack's garbage), so the index pages a transaction dirties are bounded by the batch, not by
/// the pack. Between batches a chunk's row may point at either copy; both are intact, and
/// commits and reads go on meanwhile. Phase two holds one write transaction throughout: it
/// copies what is still live in the pack (manifests, events, any chunk left), forgets the pack
/// and commits. A crash anywhere leaves a pack with more garbage, which the next run takes.
fn compact_pack(inner: &Inner, id: u32, batch: usize, report: &mut GcReport) -> Result<()> {
    // Through the write lock: a commit group that appended to this pack before it was sealed
    // has committed by the time we read its committed length.
    let Some(state) = inner
        .index
        .write()?
        .packs()?
        .into_iter()
        .find(|s| s.id == id)
    else {
        return Ok(());
    };
    let bytes = inner.packs.contents(id)?;
    let bytes = crate::pack::storage::ReleaseOnDrop(bytes);
    let all: &[u8] = bytes.0.bytes();
    let body = &all[..(state.len as usize).min(all.len())];
    let mut copied_bytes = 0u64;
    if !move_live_chunks(
        inner,
        &bytes,
        body,
        id,
        batch.max(1),
        &mut copied_bytes,
        report,
    )? {
        return Ok(());
    }

    let mut w = inner.index.write()?;
    if !w.packs()?.iter().any(|s| s.id == id) {
        return Ok(());
    }
    let mut moves: Vec<(Live, Location, Location)> = Vec::new();
    // Account events are not copied: those before the latest snapshot are superseded by it,
    // and one new snapshot replaces the others (below).
    let latest = w
        .latest_account_snapshot()?
        .map_or((0, 0), |l| (l.pack, l.offset));
    let mut accounts = false;
    let mut plain = Vec::new();
    let mut wrapped = Vec::new();
    let mut rec = Vec::new();
    let mut released = 0usize;
    for item in record::scan_records(body, PACK_HEADER_LEN as usize) {
        let (offset, header, stored) = match item {
            ScanItem::Record {
                offset,
                header,
                stored,
            } => (offset, header, stored),
            ScanItem::Damage { offset, error, .. } => {
                report
                    .problems
                    .push(format!("pack {id} at {offset}: {error}"));
                return Ok(());
            }
        };
        release_behind(&bytes, &mut released, offset);
        let from = Location {
            pack: id,
            offset: offset as u64,
            len: header.record_len() as u32,
        };
        let raw = &body[offset..offset + header.record_len() as usize];
        // Chunks are settled by phase one; only one that became live here since is checked.
        if header.kind == RecordKind::Chunk {
            let cid = ChunkId(header.key);
            if !w.chunk(&cid)?.is_some_and(|row| row.loc == from) {
                continue;
            }
        }
        // A live record that fails its check is left behind, and the pack with it: deleting
        // it would lose what verify can still name.
        if let Err(e) = record::decode_payload_into(&header, stored, &mut plain) {
            report.problems.push(format!("pack {id} at {offset}: {e}"));
            return Ok(());
        }
        let live = match header.kind {
            RecordKind::Chunk => Some(Live::Chunk(ChunkId(header.key))),
            RecordKind::Manifest => live_manifest(&w, &plain, from)?,
            RecordKind::Event => {
                let live = live_event(&w, inner, id, &plain)?;
                account_event(live, (id, offset as u64), latest, &mut accounts)
            }
            RecordKind::Moved => {
                let m =
                    Moved::decode(&plain).map_err(|e| Error::corrupt(format!("pack {id}"), e))?;
                match m.kind {
                    RecordKind::Manifest => live_manifest(&w, m.plain, from)?,
                    _ => {
                        let live = live_event(&w, inner, id, m.plain)?;
                        account_event(live, (m.orig_pack, m.orig_offset), latest, &mut accounts)
                    }
                }
            }
        };
        let Some(live) = live else { continue };
        let to = match header.kind {
            RecordKind::Chunk | RecordKind::Moved => inner.packs.append(raw)?,
            kind => {
                // Keep its place in commit order: wrap it with its original position.
                wrapped.clear();
                Moved {
                    orig_pack: id,
                    orig_offset: offset as u64,
                    kind,
                    plain: &plain,
                }
                .encode(&mut wrapped);
                rec.clear();
                record::encode_plain(
                    RecordKind::Moved,
                    &wrapped,
                    &ChunkId::of(&wrapped).0,
                    inner.compression_level(),
                    &mut rec,
                );
                inner.packs.append(&rec)?
            }
        };
        copied_bytes += to.len as u64;
        report.bytes_copied += to.len as u64;
        report.records_copied += 1;
        moves.push((live, from, to));
    }
    if accounts {
        // The accounts as this transaction sees them: the result of every account event
        // committed so far, in order. Appended after every committed record (no commit
        // interleaves: we hold the write transaction), so replay reaches it after all the
        // events it replaces, wherever they are, and before any later one. The account events
        // of this pack, revoked ones included, are dropped with it.
        let plain = FileEvent::Account(w.account_snapshot(inner.config.clock.now_ms())?).encode();
        let to =
            crate::commit::append(inner, RecordKind::Event, &plain, inner.compression_level())?;
        // The snapshot it replaces is garbage now (unless it is in this pack, going anyway).
        if let Some(prev) = w.latest_account_snapshot()?
            && prev.pack != id
            && inner.packs.has(prev.pack)
        {
            w.add_garbage(prev.pack, prev.len as u64)?;
        }
        w.set_latest_account_snapshot(to)?;
        copied_bytes += to.len as u64;
        report.bytes_copied += to.len as u64;
        report.records_copied += 1;
    }
    let states = inner.packs.sync()?;
    w.set_packs(&states)?;
    for (live, from, to) in &moves {
        match live {
            Live::Chunk(cid) => {
                w.move_chunk(cid, *from, *to)?;
            }
            Live::Manifest(file, version) => {
                w.move_manifest(*file, *version, *from, *to)?;
            }
            Live::Event => {}
        }
    }
    w.forget_pack(id)?;
    // Before the commit: a commit leader may take the index the moment ours is done.
    let retired = inner.packs.retire(id);
    if let Err(e) = w.commit() {
        inner.packs.unretire(retired);
        return Err(e);
    }
    inner.packs.committed(&states);
    let pack_len = all.len() as u64;
    drop(bytes);
    inner.packs.remove(id)?;
    report.bytes_reclaimed += pack_len.saturating_sub(copied_bytes);
    Ok(())
}

/// Phase one of [`compact_pack`]: moves the live chunks of pack `id` in committed batches.
/// Returns false if the pack must be left behind (a damaged record).
fn move_live_chunks(
    inner: &Inner,
    bytes: &crate::pack::storage::ReleaseOnDrop,
    body: &[u8],
    id: u32,
    batch: usize,
    copied_bytes: &mut u64,
    report: &mut GcReport,
) -> Result<bool> {
    let mut pending: Vec<(ChunkId, Location)> = Vec::with_capacity(batch);
    let mut snapshot = None;
    let mut plain = Vec::new();
    let mut released = 0usize;
    for item in record::scan_records(body, PACK_HEADER_LEN as usize) {
        let (offset, header, stored) = match item {
            ScanItem::Record {
                offset,
                header,
                stored,
            } => (offset, header, stored),
            ScanItem::Damage { offset, error, .. } => {
                report
                    .problems
                    .push(format!("pack {id} at {offset}: {error}"));
                return Ok(false);
            }
        };
        release_behind(bytes, &mut released, offset);
        if header.kind != RecordKind::Chunk {
            continue;
        }
        let from = Location {
            pack: id,
            offset: offset as u64,
            len: header.record_len() as u32,
        };
        let cid = ChunkId(header.key);
        let r = match &snapshot {
            Some(r) => r,
            None => snapshot.insert(inner.index.read()?),
        };
        if !r.chunk(&cid)?.is_some_and(|row| row.loc == from) {
            continue;
        }
        if let Err(e) = record::decode_payload_into(&header, stored, &mut plain) {
            report.problems.push(format!("pack {id} at {offset}: {e}"));
            return Ok(false);
        }
        pending.push((cid, from));
        if pending.len() >= batch {
            // A fresh snapshot per batch: an old one would keep the pages it sees alive.
            snapshot = None;
            commit_chunk_moves(inner, body, &mut pending, copied_bytes, report)?;
        }
    }
    drop(snapshot);
    commit_chunk_moves(inner, body, &mut pending, copied_bytes, report)?;
    Ok(true)
}

/// Copies `pending` chunks (records of the pack `body`) to the active pack and, in one commit,
/// points each row still at its old place at the copy and counts the old record as garbage. A
/// copy whose row changed meanwhile is garbage itself.
fn commit_chunk_moves(
    inner: &Inner,
    body: &[u8],
    pending: &mut Vec<(ChunkId, Location)>,
    copied_bytes: &mut u64,
    report: &mut GcReport,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut copies = Vec::with_capacity(pending.len());
    for (_, from) in pending.iter() {
        let at = from.offset as usize;
        copies.push(inner.packs.append(&body[at..at + from.len as usize])?);
    }
    // Synced under the write lock, as commits do: lengths recorded in `packs` only grow.
    let mut w = inner.index.write()?;
    let states = inner.packs.sync()?;
    w.set_packs(&states)?;
    for ((cid, from), to) in pending.iter().zip(&copies) {
        if w.move_chunk(cid, *from, *to)? {
            w.add_garbage(from.pack, from.len as u64)?;
            *copied_bytes += to.len as u64;
            report.bytes_copied += to.len as u64;
            report.records_copied += 1;
        } else {
            w.add_garbage(to.pack, to.len as u64)?;
        }
    }
    w.commit()?;
    inner.packs.committed(&states);
    pending.clear();
    Ok(())
}

/// The scans read a whole pack through its map; give the pages behind them back every few MiB
/// so a compaction holds a window, not a pack (a record read again faults back in from the
/// page cache).
fn release_behind(bytes: &crate::pack::storage::ReleaseOnDrop, released: &mut usize, at: usize) {
    if at - *released >= RELEASE_EVERY {
        bytes.0.release(*released..at);
        *released = at;
    }
}

fn live_manifest(w: &WriteTx, plain: &[u8], at: Location) -> Result<Option<Live>> {
    let m = Manifest::decode(plain).map_err(|e| Error::corrupt(format!("pack {}", at.pack), e))?;
    let (file, version) = (m.meta.file_id, m.meta.version);
    Ok(w.version(file, version)?
        .filter(|v| v.manifest == at)
        .map(|_| Live::Manifest(file, version)))
}

/// What compaction does with an event.
enum EventFate {
    /// Copy it: `recover` still needs it once its pack is gone.
    Keep,
    Drop,
    /// An account event: never copied (see [`account_event`]).
    Account,
}

/// Account events are never copied. One at or after the latest snapshot (the snapshot
/// itself included) sets `accounts`: a new snapshot replaces it. One before it is superseded.
fn account_event(
    fate: EventFate,
    at: (u32, u64),
    latest: (u32, u64),
    accounts: &mut bool,
) -> Option<Live> {
    match fate {
        EventFate::Keep => Some(Live::Event),
        EventFate::Drop => None,
        EventFate::Account => {
            *accounts |= at >= latest;
            None
        }
    }
}

/// What becomes of an event of pack `id` once that pack is gone.
fn live_event(w: &WriteTx, inner: &Inner, id: u32, plain: &[u8]) -> Result<EventFate> {
    let ev = FileEvent::decode(plain).map_err(|e| Error::corrupt(format!("pack {id}"), e))?;
    let exists = |pack: u32| pack != id && inner.packs.has(pack);
    let live = match ev {
        // The file's state still depends on it.
        FileEvent::Delete { file_id, .. } | FileEvent::Undelete { file_id, .. } => {
            w.file(file_id)?.is_some()
        }
        // Kept for good. The record it cancels (a failed delete, say) may itself be copied by
        // this or a later compaction — its file still exists, so it looks live — and the copy
        // keeps its original position, which is what the revocation names. Dropping the
        // revocation once the original pack is gone would let `recover` replay the copy: a
        // change its caller was told had failed. Revocations are a few dozen bytes, one per
        // record of a failed commit.
        FileEvent::Revoke { .. } => true,
        FileEvent::Purge { manifests, .. } => manifests.iter().any(|&(p, _)| exists(p)),
        FileEvent::DropVersion { manifest, .. } => exists(manifest.0),
        // The verdict belongs to the version while it lives, and replay needs the event
        // while the version's original manifest can still be read.
        FileEvent::Scan {
            file_id,
            version,
            manifest,
            ..
        } => w.version(file_id, version)?.is_some() || exists(manifest.0),
        // The file's link epoch (and the version's flag) still depend on it; replay needs it
        // after the version's manifest while that can still be read.
        FileEvent::Visibility {
            file_id, manifest, ..
        } => w.file(file_id)?.is_some() || exists(manifest.0),
        FileEvent::RevokeLinks { file_id, .. } => w.file(file_id)?.is_some(),
        FileEvent::Account(_) => return Ok(EventFate::Account),
    };
    Ok(if live {
        EventFate::Keep
    } else {
        EventFate::Drop
    })
}
