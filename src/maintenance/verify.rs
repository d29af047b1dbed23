//! `verify`: re-hash every chunk, check every manifest against the index, count references,
//! and check that the account journal rebuilds the index's accounts.
//!
//! Verify reads a consistent snapshot of the index and the committed bytes of every pack; it
//! never writes. Damage is reported, not repaired: the report names each damaged chunk and the
//! file versions that need it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use super::DamagedRegion;
use super::progress::Progress;
use crate::error::Result;
use crate::id::{ChunkId, FileId};
use crate::index::{Index, ReadTx, UserRecord};
use crate::pack::account::AccountEvent;
use crate::pack::manifest::{FileEvent, Manifest, VersionMeta};
use crate::pack::record::{self, RecordKind, ScanItem};
use crate::pack::{PACK_HEADER_LEN, decode_pack_header};
use crate::store::Store;

/// A file version that needs a damaged or missing chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AffectedFile {
    pub id: FileId,
    pub version: u32,
    pub owner: String,
    pub key: Option<String>,
}

/// A chunk the index references that cannot be read back intact.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedChunk {
    pub chunk: String,
    pub pack: u32,
    pub offset: u64,
    pub error: String,
    pub files: Vec<AffectedFile>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub packs: u64,
    pub records: u64,
    pub chunks: u64,
    pub files: u64,
    pub versions: u64,
    /// Plain bytes re-hashed.
    pub bytes_checked: u64,
    pub damaged_chunks: Vec<DamagedChunk>,
    pub damaged_regions: Vec<DamagedRegion>,
    /// Inconsistencies that are not a damaged chunk: manifests that disagree with the index,
    /// wrong reference counts, missing or short packs, accounts the journal does not rebuild.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is damaged or inconsistent.
    pub fn is_ok(&self) -> bool {
        self.damaged_chunks.is_empty()
            && self.damaged_regions.is_empty()
            && self.problems.is_empty()
    }
}

/// What the scan learned about the record at one (pack, offset).
enum Seen {
    Ok {
        kind: RecordKind,
        key: [u8; 32],
        len: u64,
    },
    Bad(String),
}

impl Store {
    /// Re-reads and re-hashes every committed record and cross-checks the index.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let inner = self.inner();
        let r = inner.index.read()?;
        let mut report = VerifyReport::default();
        let states = r.packs()?;
        let describe = |id| inner.packs.storage().describe(id);

        // 1. Every committed record of every pack.
        let mut seen: HashMap<(u32, u64), Seen> = HashMap::new();
        let mut journal = AccountJournal::default();
        let total: u64 = states.iter().map(|s| s.len).sum();
        progress.start("verifying packs", total);
        let mut plain = Vec::new();
        for state in &states {
            report.packs += 1;
            let bytes = match inner.packs.contents(state.id) {
                Ok(b) => b,
                Err(e) => {
                    report.problems.push(format!("{}: {e}", describe(state.id)));
                    continue;
                }
            };
            let bytes = crate::pack::storage::ReleaseOnDrop(bytes);
            let bytes: &[u8] = bytes.0.bytes();
            if (bytes.len() as u64) < state.len {
                report.problems.push(format!(
                    "{} is {} bytes but {} were committed (truncated)",
                    describe(state.id),
                    bytes.len(),
                    state.len
                ));
            }
            match decode_pack_header(bytes) {
                Ok((id, sid)) if id == state.id && sid == inner.packs.store_id() => {}
                Ok(_) => report.problems.push(format!(
                    "{}: header names another pack or store",
                    describe(state.id)
                )),
                Err(e) => report.problems.push(format!("{}: {e}", describe(state.id))),
            }
            let body = &bytes[..(state.len as usize).min(bytes.len())];
            let mut done = PACK_HEADER_LEN;
            for item in record::scan_records(body, PACK_HEADER_LEN as usize) {
                match item {
                    ScanItem::Record {
                        offset,
                        header,
                        stored,
                    } => {
                        report.records += 1;
                        let status = match record::decode_payload_into(&header, stored, &mut plain)
                        {
                            Ok(()) => {
                                report.bytes_checked += plain.len() as u64;
                                journal.note(state.id, offset as u64, header.kind, &plain);
                                Seen::Ok {
                                    kind: header.kind,
                                    key: header.key,
                                    len: header.record_len(),
                                }
                            }
                            Err(e) => Seen::Bad(e.to_string()),
                        };
                        seen.insert((state.id, offset as u64), status);
                        let end = offset as u64 + header.record_len();
                        progress.advance(end - done);
                        done = end;
                    }
                    ScanItem::Damage {
                        offset, len, error, ..
                    } => {
                        seen.insert((state.id, offset as u64), Seen::Bad(error.to_string()));
                        report.damaged_regions.push(DamagedRegion {
                            pack: state.id,
                            offset: offset as u64,
                            len: len as u64,
                            error: error.to_string(),
                        });
                    }
                }
            }
            progress.advance(state.len.saturating_sub(done));
        }
        progress.finish();

        // 2. Every indexed chunk must be an intact record at its location.
        let mut recorded_refs: HashMap<ChunkId, u64> = HashMap::new();
        let mut damaged: HashMap<ChunkId, DamagedChunk> = HashMap::new();
        // Cold chunks are checked against `cold_packs` here; their bytes by `verify_cold`.
        let cold_lens: HashMap<u32, u64> = r
            .cold_packs()?
            .into_iter()
            .map(|(id, p)| (id, p.len))
            .collect();
        r.for_each_chunk(|id, row| {
            report.chunks += 1;
            recorded_refs.insert(id, row.refs);
            let error = match seen.get(&(row.loc.pack, row.loc.offset)) {
                _ if crate::tier::is_cold_pack(row.loc.pack) => {
                    match cold_lens.get(&row.loc.pack) {
                        None => Some("the chunk's cold pack is not in the index".to_string()),
                        Some(&len) if row.loc.offset + row.loc.len as u64 > len => {
                            Some("the chunk lies past the end of its cold pack".to_string())
                        }
                        Some(_) => None,
                    }
                }
                Some(Seen::Ok {
                    kind: RecordKind::Chunk,
                    key,
                    len,
                }) if *key == id.0 && *len == row.loc.len as u64 => None,
                Some(Seen::Ok { .. }) => Some("the index points at a different record".to_string()),
                Some(Seen::Bad(e)) => Some(e.clone()),
                None => Some("no intact record starts at the indexed location".to_string()),
            };
            if let Some(error) = error {
                damaged.insert(
                    id,
                    DamagedChunk {
                        chunk: id.to_hex(),
                        pack: row.loc.pack,
                        offset: row.loc.offset,
                        error,
                        files: Vec::new(),
                    },
                );
            }
            Ok(())
        })?;

        // 3. Every version: chunks indexed, sizes add up, manifest agrees with the index.
        let mut counted_refs: HashMap<ChunkId, u64> = HashMap::new();
        let files: HashMap<FileId, _> = r.all_files()?.into_iter().map(|f| (f.id, f)).collect();
        report.files = files.len() as u64;
        r.for_each_version_chunks(|file_id, version, chunks| {
            report.versions += 1;
            let file = files.get(&file_id);
            let affected = || AffectedFile {
                id: file_id,
                version,
                owner: file.map(|f| f.owner.clone()).unwrap_or_default(),
                key: file.and_then(|f| f.key.clone()),
            };
            let Some(v) = r.version(file_id, version)? else {
                report.problems.push(format!("file {file_id} version {version}: chunk list without a version record"));
                return Ok(());
            };
            let mut sum = 0u64;
            for c in &chunks {
                sum += c.len as u64;
                *counted_refs.entry(c.id).or_default() += 1;
                if let Some(d) = damaged.get_mut(&c.id) {
                    if d.files.last() != Some(&affected()) {
                        d.files.push(affected());
                    }
                } else if !recorded_refs.contains_key(&c.id) {
                    damaged.insert(
                        c.id,
                        DamagedChunk {
                            chunk: c.id.to_hex(),
                            pack: 0,
                            offset: 0,
                            error: "not in the index".into(),
                            files: vec![affected()],
                        },
                    );
                }
            }
            if sum != v.meta.size {
                report.problems.push(format!(
                    "file {file_id} version {version}: chunks add up to {sum} bytes, the version says {}",
                    v.meta.size
                ));
            }
            let manifest_ok = match seen.get(&(v.manifest.pack, v.manifest.offset)) {
                Some(Seen::Ok { kind: RecordKind::Manifest | RecordKind::Moved, .. }) => match inner.packs.read(v.manifest) {
                    Ok((h, plain)) => match manifest_payload(h.kind, &plain).and_then(Manifest::decode) {
                        // Events (a rescan, a visibility change) may have changed the index's
                        // copy since the manifest.
                        Ok(m) if same_but_events(&m.meta, &v.meta) && m.chunks == chunks => Ok(()),
                        Ok(_) => Err("the manifest disagrees with the index".to_string()),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.to_string()),
                },
                Some(Seen::Ok { .. }) => Err("the index points at a record that is not a manifest".into()),
                Some(Seen::Bad(e)) => Err(e.clone()),
                None => Err("no intact record at the manifest's location".into()),
            };
            if let Err(e) = manifest_ok {
                report.problems.push(format!(
                    "file {file_id} version {version}: manifest in {} at {}: {e}",
                    describe(v.manifest.pack),
                    v.manifest.offset
                ));
            }
            Ok(())
        })?;
        let mut contents = std::collections::BTreeSet::new();
        for f in files.values() {
            match r.version(f.id, f.latest)? {
                None => report.problems.push(format!(
                    "file {}: current version {} is missing",
                    f.id, f.latest
                )),
                Some(v) => {
                    if let Ok(h) = blake3::Hash::from_hex(&v.meta.blake3) {
                        contents.insert((*h.as_bytes(), f.id));
                    }
                }
            }
        }
        // The duplicates report's grouping: one row per file, under its current content.
        if let Some(rows) = r.content_rows()? {
            let rows: std::collections::BTreeSet<_> = rows.into_iter().collect();
            for (_, id) in rows.symmetric_difference(&contents) {
                report.problems.push(format!(
                    "file {id}: the content table disagrees with its current version"
                ));
            }
        }

        // 4. Reference counts, and the collector's candidates: exactly the unreferenced chunks.
        let check_zero = r.has_zero_refs()?;
        for (id, recorded) in &recorded_refs {
            if check_zero && (*recorded == 0) != r.zero_since(id)?.is_some() {
                report.problems.push(format!(
                    "chunk {id}: {recorded} references, but the collector's table disagrees"
                ));
            }
            let counted = counted_refs.get(id).copied().unwrap_or(0);
            if counted != *recorded {
                report.problems.push(format!(
                    "chunk {id}: {recorded} references recorded, {counted} counted"
                ));
            }
        }
        // 5. Quota usage counters: equal to a recount of the versions (per owner, and per
        // organisation of the owners that are users).
        // An index older than the counters, opened read-only, has none to check yet.
        let (owners, orgs) = r.recount_usage()?;
        let checked = if r.has_usage()? {
            vec![
                ("owner", r.all_owner_usage()?, owners),
                ("organisation", r.all_org_usage()?, orgs),
            ]
        } else {
            Vec::new()
        };
        for (what, recorded, counted) in checked {
            let names: std::collections::BTreeSet<&String> =
                recorded.keys().chain(counted.keys()).collect();
            for name in names {
                let (a, b) = (
                    recorded.get(name).copied().unwrap_or(0),
                    counted.get(name).copied().unwrap_or(0),
                );
                if a != b {
                    report.problems.push(format!(
                        "{what} {name:?}: usage counter says {a} bytes, its versions add up to {b}"
                    ));
                }
            }
        }

        // 6. Accounts: what the journal rebuilds is what the index holds (an account change
        // committed without its record, or a record without its change, shows here). Indexes
        // whose accounts predate the journal are checked once their first read-write open has
        // journaled them.
        if r.accounts_journaled()? {
            journal.compare(&r, &mut report.problems)?;
        }

        let mut damaged: Vec<DamagedChunk> = damaged.into_values().collect();
        damaged.sort_by(|a, b| (a.pack, a.offset, &a.chunk).cmp(&(b.pack, b.offset, &b.chunk)));
        report.damaged_chunks = damaged;
        Ok(report)
    }
}

/// The manifest payload of a record at a version's manifest location: the record itself, or
/// the manifest a compaction moved.
fn manifest_payload(kind: RecordKind, plain: &[u8]) -> std::result::Result<&[u8], String> {
    match kind {
        RecordKind::Manifest => Ok(plain),
        RecordKind::Moved => match record::Moved::decode(plain)? {
            m if m.kind == RecordKind::Manifest => Ok(m.plain),
            _ => Err("the index points at a moved record that is not a manifest".into()),
        },
        _ => Err("the index points at a record that is not a manifest".into()),
    }
}

/// Manifest and index agree on a version, except for what events change in the index only:
/// the scan verdict (a `scan` event, a rescan) and the `PUBLIC` flag (a `visibility` event).
fn same_but_events(manifest: &VersionMeta, index: &VersionMeta) -> bool {
    use crate::pack::manifest::flags::PUBLIC;
    let base = |m: &VersionMeta| VersionMeta {
        scan: None,
        flags: m.flags & !PUBLIC,
        ..m.clone()
    };
    base(manifest) == base(index)
}

/// The account events of the committed records, gathered by the scan.
#[derive(Default)]
struct AccountJournal {
    /// (original position, event), for replay in commit order.
    events: Vec<((u32, u64), AccountEvent)>,
    /// Positions whose commit failed (`revoke` events).
    revoked: HashSet<(u32, u64)>,
}

impl AccountJournal {
    fn note(&mut self, pack: u32, offset: u64, kind: RecordKind, plain: &[u8]) {
        let (body, at) = match kind {
            RecordKind::Event => (plain, (pack, offset)),
            RecordKind::Moved => match record::Moved::decode(plain) {
                Ok(m) if m.kind == RecordKind::Event => (m.plain, (m.orig_pack, m.orig_offset)),
                _ => return,
            },
            _ => return,
        };
        match FileEvent::decode(body) {
            Ok(FileEvent::Account(e)) => self.events.push((at, e)),
            Ok(FileEvent::Revoke { pack, offset }) => {
                self.revoked.insert((pack, offset));
            }
            _ => {}
        }
    }

    /// Replays the events into an index in memory with `WriteTx::apply_account` and compares
    /// users, tokens and organisation limits with `r`.
    fn compare(mut self, r: &ReadTx, problems: &mut Vec<String>) -> Result<()> {
        self.events.sort_by_key(|(at, _)| *at);
        self.events.dedup_by_key(|(at, _)| *at);
        let scratch = Index::in_memory()?;
        let mut w = scratch.write()?;
        for (at, e) in &self.events {
            if !self.revoked.contains(at)
                && let Err(err) = w.apply_account(e)
            {
                problems.push(format!("account event at {at:?}: {err}"));
            }
        }
        w.commit()?;
        let rebuilt = scratch.read()?;
        let users = |r: &ReadTx| -> Result<BTreeMap<String, UserRecord>> {
            Ok(r.users()?
                .into_iter()
                .map(|u| (u.name.clone(), u))
                .collect())
        };
        let (indexed, journaled) = (users(r)?, users(&rebuilt)?);
        for name in indexed
            .keys()
            .chain(journaled.keys())
            .collect::<BTreeSet<_>>()
        {
            if indexed.get(name) != journaled.get(name) {
                problems.push(format!(
                    "user {name:?}: the index and the account journal disagree"
                ));
            }
        }
        let tokens = |r: &ReadTx| -> Result<BTreeMap<[u8; 32], String>> {
            Ok(r.tokens()?.into_iter().map(|(h, t)| (h, t.user)).collect())
        };
        let (indexed, journaled) = (tokens(r)?, tokens(&rebuilt)?);
        for hash in indexed
            .keys()
            .chain(journaled.keys())
            .collect::<BTreeSet<_>>()
        {
            let (a, b) = (indexed.get(hash), journaled.get(hash));
            if a != b {
                // Named by user, never by hash.
                let user = a.or(b).map(String::as_str).unwrap_or_default();
                problems.push(format!(
                    "a token of user {user:?}: {} in the index, {} in the account journal",
                    if a.is_some() { "valid" } else { "absent" },
                    if b.is_some() { "valid" } else { "absent" },
                ));
            }
        }
        if r.org_limits()? != rebuilt.org_limits()? {
            problems.push("organisation limits: the index and the account journal disagree".into());
        }
        Ok(())
    }
}
