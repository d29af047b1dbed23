//! The collector's tables: `zero_refs` (chunks whose reference count is zero, since when) and
//! `pack_garbage` (reclaimable bytes per pack), and the removals that feed them: purging a
//! file, dropping a version, sweeping a chunk, moving records during compaction.
//!
//! Every function here runs inside the caller's write transaction; the state machine they
//! implement is described in docs/design.md, "Garbage collection".

use redb::{ReadableTable, TableError};

use super::schema::*;
use super::{ReadTx, WriteTx, ix};
use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId};
use crate::pack::Location;

macro_rules! gc_lookups {
    () => {
        /// Up to `limit` collector candidates `(chunk, zero since ms)` with ids after `after`,
        /// in id order. Bounded, so a pass over a large store holds one batch at a time.
        pub fn zero_refs_batch(
            &self,
            after: Option<&ChunkId>,
            limit: usize,
        ) -> Result<Vec<(ChunkId, i64)>> {
            let t = match self.tx.open_table(ZERO_REFS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(ix("opening zero refs")(e)),
            };
            let mut out = Vec::new();
            let range = match after {
                Some(a) => t.range::<&[u8; 32]>((
                    std::ops::Bound::Excluded(&a.0),
                    std::ops::Bound::Unbounded,
                )),
                None => t.range::<&[u8; 32]>(..),
            }
            .map_err(ix("listing zero refs"))?;
            for entry in range {
                let (k, v) = entry.map_err(ix("listing zero refs"))?;
                out.push((ChunkId(*k.value()), v.value()));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        }

        /// Whether the index has the collector's `zero_refs` table (older indexes get it on
        /// their first read-write open).
        pub fn has_zero_refs(&self) -> Result<bool> {
            match self.tx.open_table(ZERO_REFS) {
                Ok(_) => Ok(true),
                Err(TableError::TableDoesNotExist(_)) => Ok(false),
                Err(e) => Err(ix("opening zero refs")(e)),
            }
        }

        /// When the chunk's reference count reached zero, if it is zero.
        pub fn zero_since(&self, id: &ChunkId) -> Result<Option<i64>> {
            let t = match self.tx.open_table(ZERO_REFS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(ix("opening zero refs")(e)),
            };
            Ok(t.get(&id.0)
                .map_err(ix("reading zero refs"))?
                .map(|v| v.value()))
        }

        /// Reclaimable bytes of every pack that has any.
        pub fn pack_garbage(&self) -> Result<Vec<(u32, u64)>> {
            let t = match self.tx.open_table(PACK_GARBAGE) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(ix("opening pack garbage")(e)),
            };
            let mut out = Vec::new();
            for entry in t.iter().map_err(ix("listing pack garbage"))? {
                let (k, v) = entry.map_err(ix("listing pack garbage"))?;
                out.push((k.value(), v.value()));
            }
            Ok(out)
        }

        /// Every row of every table, rendered as text (tests compare it across a dry run).
        pub fn dump(&self) -> Result<String> {
            use std::fmt::Write;
            let mut out = String::new();
            macro_rules! dump {
                ($def:expr, $name:literal) => {
                    match self.tx.open_table($def) {
                        Ok(t) => {
                            for entry in t.iter().map_err(ix("dumping"))? {
                                let (k, v) = entry.map_err(ix("dumping"))?;
                                let _ = writeln!(out, "{} {:?} {:?}", $name, k.value(), v.value());
                            }
                        }
                        Err(TableError::TableDoesNotExist(_)) => {}
                        Err(e) => return Err(ix("dumping")(e)),
                    }
                };
            }
            dump!(META, "meta");
            dump!(FILES, "files");
            dump!(KEYS, "keys");
            dump!(OWNER_FILES, "owner_files");
            dump!(CATEGORY_FILES, "category_files");
            dump!(VERSIONS, "versions");
            dump!(VERSION_CHUNKS, "version_chunks");
            dump!(CHUNKS, "chunks");
            dump!(PACKS, "packs");
            dump!(UPLOADS, "uploads");
            dump!(USERS, "users");
            dump!(TOKENS, "tokens");
            dump!(ZERO_REFS, "zero_refs");
            dump!(PACK_GARBAGE, "pack_garbage");
            dump!(CONTENT_FILES, "content_files");
            dump!(COLD_PACKS, "cold_packs");
            dump!(super::quota::OWNER_USAGE, "owner_usage");
            dump!(super::quota::ORG_USAGE, "org_usage");
            dump!(super::quota::QUOTA_LEVELS, "quota_levels");
            dump!(super::quota::ORG_LIMITS, "org_limits");
            dump!(super::quota::USAGE_HISTORY, "usage_history");
            Ok(out)
        }
    };
}

impl ReadTx {
    gc_lookups!();
}

impl super::Index {
    /// Indexes made before the collector have no `zero_refs`: fills it from the chunks with no
    /// references (stamped `now_ms`), in one transaction, on the first read-write open.
    pub fn ensure_zero_refs(&self, now_ms: i64) -> Result<()> {
        match self.read()?.tx.open_table(ZERO_REFS) {
            Ok(_) => return Ok(()),
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(ix("opening zero refs")(e)),
        }
        let w = self.write()?;
        {
            let chunks = w.tx.open_table(CHUNKS).map_err(ix("opening chunks"))?;
            let mut zero =
                w.tx.open_table(ZERO_REFS)
                    .map_err(ix("opening zero refs"))?;
            for entry in chunks.iter().map_err(ix("listing chunks"))? {
                let (k, v) = entry.map_err(ix("listing chunks"))?;
                if ChunkRow::decode(v.value()).refs == 0 {
                    zero.insert(k.value(), now_ms)
                        .map_err(ix("writing zero refs"))?;
                }
            }
        }
        w.commit()
    }
}

impl WriteTx {
    gc_lookups!();

    /// Records that a chunk's reference count reached zero at `at_ms`.
    pub fn mark_zero(&mut self, id: &ChunkId, at_ms: i64) -> Result<()> {
        let mut t = self
            .tx
            .open_table(ZERO_REFS)
            .map_err(ix("opening zero refs"))?;
        t.insert(&id.0, at_ms).map_err(ix("writing zero refs"))?;
        Ok(())
    }

    pub(super) fn unmark_zero(&mut self, id: &ChunkId) -> Result<()> {
        let mut t = self
            .tx
            .open_table(ZERO_REFS)
            .map_err(ix("opening zero refs"))?;
        t.remove(&id.0).map_err(ix("writing zero refs"))?;
        Ok(())
    }

    /// Adds `bytes` to the reclaimable bytes of `pack`.
    pub fn add_garbage(&mut self, pack: u32, bytes: u64) -> Result<()> {
        let mut t = self
            .tx
            .open_table(PACK_GARBAGE)
            .map_err(ix("opening pack garbage"))?;
        let cur = t
            .get(pack)
            .map_err(ix("reading pack garbage"))?
            .map_or(0, |v| v.value());
        t.insert(pack, cur + bytes)
            .map_err(ix("writing pack garbage"))?;
        Ok(())
    }

    /// Removes `n` references from a chunk; at zero it becomes a collector candidate, stamped
    /// `at_ms`. A chunk the index does not have is ignored (replay after damage).
    pub fn release_chunk_refs(&mut self, id: &ChunkId, n: u64, at_ms: i64) -> Result<()> {
        let Some(mut row) = self.chunk(id)? else {
            return Ok(());
        };
        row.refs = row.refs.saturating_sub(n);
        {
            let mut t = self.tx.open_table(CHUNKS).map_err(ix("opening chunks"))?;
            t.insert(&id.0, &row.encode())
                .map_err(ix("writing a chunk"))?;
        }
        if row.refs == 0 {
            self.mark_zero(id, at_ms)?;
        }
        Ok(())
    }

    /// Removes one version: its row and chunk list, its references (chunks reaching zero are
    /// stamped `at_ms`), and counts its manifest as garbage. Returns the manifest's location,
    /// or `None` when there was no such version.
    pub fn remove_version(
        &mut self,
        file: FileId,
        version: u32,
        at_ms: i64,
    ) -> Result<Option<Location>> {
        let Some(v) = self.version(file, version)? else {
            return Ok(None);
        };
        let chunks = self.version_chunks(file, version)?;
        {
            let mut t = self
                .tx
                .open_table(VERSIONS)
                .map_err(ix("opening versions"))?;
            t.remove((file.0, version))
                .map_err(ix("removing a version"))?;
            let mut t = self
                .tx
                .open_table(VERSION_CHUNKS)
                .map_err(ix("opening version chunks"))?;
            t.remove((file.0, version))
                .map_err(ix("removing version chunks"))?;
        }
        let mut counts: std::collections::HashMap<ChunkId, u64> = Default::default();
        for c in &chunks {
            *counts.entry(c.id).or_default() += 1;
        }
        for (id, n) in counts {
            self.release_chunk_refs(&id, n, at_ms)?;
        }
        self.add_garbage(v.manifest.pack, v.manifest.len as u64)?;
        self.add_counter("versions", -1)?;
        self.add_counter("logical_bytes", -(v.meta.size as i64))?;
        self.add_usage(&v.meta.owner, -(v.meta.size as i64), at_ms)?;
        Ok(Some(v.manifest))
    }

    /// Removes a file with all its versions and its key, owner and category entries. Returns
    /// the manifest locations of the removed versions (empty when the file did not exist).
    pub fn remove_file(&mut self, file: FileId, at_ms: i64) -> Result<Vec<Location>> {
        let Some(f) = self.file(file)? else {
            return Ok(Vec::new());
        };
        let content = self.version(file, f.latest)?.map(|v| v.meta.blake3);
        self.set_content(file, content.as_deref(), None)?;
        let mut out = Vec::new();
        for v in self.versions(file)? {
            if let Some(loc) = self.remove_version(file, v.meta.version, at_ms)? {
                out.push(loc);
            }
        }
        {
            if let Some(key) = &f.key {
                let mut t = self.tx.open_table(KEYS).map_err(ix("opening keys"))?;
                t.remove((f.owner.as_str(), key.as_str()))
                    .map_err(ix("removing a key"))?;
            }
            let mut t = self
                .tx
                .open_table(OWNER_FILES)
                .map_err(ix("opening owner files"))?;
            t.remove((f.owner.as_str(), file.0))
                .map_err(ix("removing owner files"))?;
            let mut t = self
                .tx
                .open_table(CATEGORY_FILES)
                .map_err(ix("opening category files"))?;
            t.remove((f.category.as_str(), file.0))
                .map_err(ix("removing category files"))?;
            let mut t = self.tx.open_table(FILES).map_err(ix("opening files"))?;
            t.remove(file.0).map_err(ix("removing a file"))?;
        }
        self.add_counter("files", -1)?;
        Ok(out)
    }

    /// The sweep of one candidate: removes the chunk if its reference count is still zero and
    /// it has been zero since `cutoff_ms` or earlier. Returns the freed record, if any.
    pub fn sweep_chunk(&mut self, id: &ChunkId, cutoff_ms: i64) -> Result<Option<Location>> {
        let Some(since) = self.zero_since(id)? else {
            return Ok(None);
        };
        if since > cutoff_ms {
            return Ok(None);
        }
        let row = match self.chunk(id)? {
            Some(r) if r.refs == 0 => r,
            Some(_) => {
                // Cannot happen (a referenced chunk is unmarked in the transaction that
                // references it); heal it rather than delete a live chunk.
                self.unmark_zero(id)?;
                return Ok(None);
            }
            None => {
                self.unmark_zero(id)?;
                return Ok(None);
            }
        };
        {
            let mut t = self.tx.open_table(CHUNKS).map_err(ix("opening chunks"))?;
            t.remove(&id.0).map_err(ix("removing a chunk"))?;
        }
        self.unmark_zero(id)?;
        self.add_garbage(row.loc.pack, row.loc.len as u64)?;
        self.add_counter("chunks", -1)?;
        self.add_counter("chunk_raw_bytes", -(row.raw_len as i64))?;
        self.add_counter("chunk_stored_bytes", -(row.stored_len as i64))?;
        if crate::tier::is_cold_pack(row.loc.pack) {
            self.count_cold(&row, -1)?;
        }
        Ok(Some(row.loc))
    }

    /// Points a chunk at its copy `to` if it is still at `from`. Returns whether it moved.
    pub fn move_chunk(&mut self, id: &ChunkId, from: Location, to: Location) -> Result<bool> {
        let Some(mut row) = self.chunk(id)? else {
            return Ok(false);
        };
        if row.loc != from {
            return Ok(false);
        }
        row.loc = to;
        let mut t = self.tx.open_table(CHUNKS).map_err(ix("opening chunks"))?;
        t.insert(&id.0, &row.encode())
            .map_err(ix("writing a chunk"))?;
        Ok(true)
    }

    /// Points a version at its manifest's copy `to` if it is still at `from`.
    pub fn move_manifest(
        &mut self,
        file: FileId,
        version: u32,
        from: Location,
        to: Location,
    ) -> Result<bool> {
        let Some(mut v) = self.version(file, version)? else {
            return Ok(false);
        };
        if v.manifest != from {
            return Ok(false);
        }
        v.manifest = to;
        let json = serde_json::to_vec(&v).expect("version record serialises");
        let mut t = self
            .tx
            .open_table(VERSIONS)
            .map_err(ix("opening versions"))?;
        t.insert((file.0, version), json.as_slice())
            .map_err(ix("writing a version"))?;
        Ok(true)
    }

    /// Forgets a pack that compaction emptied (its state and garbage rows).
    pub fn forget_pack(&mut self, pack: u32) -> Result<()> {
        let mut t = self.tx.open_table(PACKS).map_err(ix("opening packs"))?;
        t.remove(pack).map_err(ix("removing a pack"))?;
        let mut t = self
            .tx
            .open_table(PACK_GARBAGE)
            .map_err(ix("opening pack garbage"))?;
        t.remove(pack).map_err(ix("removing pack garbage"))?;
        Ok(())
    }
}

/// Unused-import guard for `Error` in builds where no function above names it.
#[allow(dead_code)]
fn _uses(_: Error) {}
