//! What the reports read: `content_files` (files grouped by the BLAKE3 of their current
//! content) and streaming walks over `files`, so a report over a large store holds one row (or
//! one group of identical files) at a time rather than the whole table.

use redb::{ReadableTable, TableError};

use super::schema::*;
use super::{FileRecord, ReadTx, WriteTx, decode_json, ix};
use crate::error::{Error, Result};
use crate::id::FileId;

/// The 32 bytes of a hex BLAKE3 hash as stored in a `VersionMeta`; `None` for anything else
/// (such a version is simply not grouped).
fn content_key(hex: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

/// A `content_files` row: (BLAKE3 of the current content, file).
pub type ContentRow = ([u8; 32], FileId);

impl ReadTx {
    /// Calls `f` with every file whose id is greater than `after`, in id order, until `f`
    /// returns false.
    pub fn walk_files(
        &self,
        after: Option<FileId>,
        mut f: impl FnMut(FileRecord) -> Result<bool>,
    ) -> Result<()> {
        let t = self.tx.open_table(FILES).map_err(ix("opening files"))?;
        let lower = after.map_or(0, |a| a.0.saturating_add(1));
        if after.is_some_and(|a| a.0 == u128::MAX) {
            return Ok(());
        }
        for entry in t.range(lower..).map_err(ix("listing files"))? {
            let (_, v) = entry.map_err(ix("listing files"))?;
            if !f(decode_json(v.value(), "file record")?)? {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` with every `(content hash, file id)` of `content_files`, grouped by hash (in
    /// hash order), until `f` returns false. An index made before the table existed (and not
    /// opened read-write since) cannot answer.
    pub fn walk_contents(&self, mut f: impl FnMut([u8; 32], FileId) -> Result<bool>) -> Result<()> {
        let t = match self.tx.open_table(CONTENT_FILES) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => {
                return Err(Error::InvalidInput(
                    "this index predates the content table; open the store read-write once \
                     (e.g. `tessera gc --dry-run`) to build it"
                        .into(),
                ));
            }
            Err(e) => return Err(ix("opening content files")(e)),
        };
        for entry in t.iter().map_err(ix("listing content files"))? {
            let (k, _) = entry.map_err(ix("listing content files"))?;
            let (hash, id) = k.value();
            if !f(*hash, FileId(id))? {
                break;
            }
        }
        Ok(())
    }

    /// Every `content_files` row (for verify), in table order; `None` without the table.
    pub fn content_rows(&self) -> Result<Option<Vec<ContentRow>>> {
        let t = match self.tx.open_table(CONTENT_FILES) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(ix("opening content files")(e)),
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(ix("listing content files"))? {
            let (k, _) = entry.map_err(ix("listing content files"))?;
            let (hash, id) = k.value();
            out.push((*hash, FileId(id)));
        }
        Ok(Some(out))
    }
}

impl WriteTx {
    /// Moves file `id` from the group of content `old` to that of `new` (either may be absent:
    /// a new file, a removed one). Runs in the transaction that changes the current version.
    pub(super) fn set_content(
        &mut self,
        id: FileId,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<()> {
        let old = old.and_then(content_key);
        let new = new.and_then(content_key);
        if old == new {
            return Ok(());
        }
        let mut t = self
            .tx
            .open_table(CONTENT_FILES)
            .map_err(ix("opening content files"))?;
        if let Some(h) = old {
            t.remove((&h, id.0)).map_err(ix("removing content files"))?;
        }
        if let Some(h) = new {
            t.insert((&h, id.0), ())
                .map_err(ix("writing content files"))?;
        }
        Ok(())
    }
}

impl super::Index {
    /// Indexes made before the duplicates report have no `content_files`: fills it from every
    /// file's current version, in one transaction, on the first read-write open.
    pub fn ensure_content_files(&self) -> Result<()> {
        match self.read()?.tx.open_table(CONTENT_FILES) {
            Ok(_) => return Ok(()),
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(ix("opening content files")(e)),
        }
        let mut w = self.write()?;
        let files: Vec<(FileId, u32)> = {
            let t = w.tx.open_table(FILES).map_err(ix("opening files"))?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(ix("listing files"))? {
                let (_, v) = entry.map_err(ix("listing files"))?;
                let f: FileRecord = decode_json(v.value(), "file record")?;
                out.push((f.id, f.latest));
            }
            out
        };
        // The table must exist even when the store has no files.
        w.tx.open_table(CONTENT_FILES)
            .map_err(ix("creating content files"))?;
        for (id, latest) in files {
            let hash = w.version(id, latest)?.map(|v| v.meta.blake3);
            w.set_content(id, None, hash.as_deref())?;
        }
        w.commit()
    }
}

#[cfg(test)]
impl super::Index {
    /// Makes this index look like one written before `content_files` existed.
    pub(crate) fn drop_content_files(&self) -> Result<()> {
        let w = self.write()?;
        w.tx.delete_table(CONTENT_FILES)
            .map_err(ix("deleting content files"))?;
        w.commit()
    }

    /// Files `id` under the wrong content, as a bug in the upkeep of the table would.
    pub(crate) fn misfile_content(&self, id: FileId) -> Result<()> {
        let mut w = self.write()?;
        w.set_content(id, None, Some(&blake3::hash(b"not its content").to_hex()))?;
        w.commit()
    }
}
