//! Table family `uploads`: resumable upload sessions, keyed by session id.
//!
//! Unlike every other row, a session is recorded nowhere but here: it is staging state, not
//! stored data, so `recover` (which rebuilds the index from packs) starts without sessions and
//! their staged files become orphans for the sweep. A store created before this table existed
//! has no `uploads` table until the first session is written; readers treat that as empty.

use redb::{ReadableTable, TableError};
use serde::{Deserialize, Serialize};

use super::schema::UPLOADS;
use super::{ReadTx, WriteTx, decode_json, ix};
use crate::error::Result;
use crate::id::FileId;
use crate::upload::UploadSession;

/// One upload session as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub session: UploadSession,
    /// Set, durably, just before `upload_finish` runs its put: the put's file is either a
    /// version of the session's key or a file with a greater id than this one, and it carries
    /// the session id in its metadata. A finish that finds it set looks for that file first, so
    /// a retry after a crash never stores the upload twice.
    #[serde(default)]
    pub finishing: Option<FileId>,
}

fn encode(r: &UploadRecord) -> Vec<u8> {
    serde_json::to_vec(r).expect("upload record serialises")
}

impl ReadTx {
    /// The session `id` (a canonical ULID string).
    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        let t = match self.tx.open_table(UPLOADS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(ix("opening uploads")(e)),
        };
        t.get(id)
            .map_err(ix("reading an upload"))?
            .map(|v| decode_json(v.value(), "upload record"))
            .transpose()
    }

    /// Every session, in id order.
    pub fn uploads(&self) -> Result<Vec<UploadRecord>> {
        let t = match self.tx.open_table(UPLOADS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(ix("opening uploads")(e)),
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(ix("listing uploads"))? {
            let (_, v) = entry.map_err(ix("listing uploads"))?;
            out.push(decode_json(v.value(), "upload record")?);
        }
        Ok(out)
    }
}

impl WriteTx {
    /// The session `id`, as this transaction sees it.
    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        let t = self.tx.open_table(UPLOADS).map_err(ix("opening uploads"))?;
        t.get(id)
            .map_err(ix("reading an upload"))?
            .map(|v| decode_json(v.value(), "upload record"))
            .transpose()
    }

    /// Inserts or replaces a session.
    pub fn put_upload(&mut self, r: &UploadRecord) -> Result<()> {
        let mut t = self.tx.open_table(UPLOADS).map_err(ix("opening uploads"))?;
        t.insert(r.session.id.as_str(), encode(r).as_slice())
            .map_err(ix("writing an upload"))?;
        Ok(())
    }

    /// Removes a session; true if it existed.
    pub fn remove_upload(&mut self, id: &str) -> Result<bool> {
        let mut t = self.tx.open_table(UPLOADS).map_err(ix("opening uploads"))?;
        Ok(t.remove(id).map_err(ix("removing an upload"))?.is_some())
    }
}
