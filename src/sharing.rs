//! Sharing, the engine half: a file's visibility and the revocation of its signed links.
//!
//! Visibility belongs to each version (`VersionMeta::flags`, `PUBLIC`): a put writes it, and
//! [`Store::set_public`] changes the current version's. Who may read what is the service's
//! rule (`http::auth`; docs/design.md "Visibility"); the engine records the facts, journaled,
//! so `recover` rebuilds them. Signed links are the service's too; the engine keeps the
//! per-file link epoch they are checked against (`FileRecord::link_epoch`).

use crate::commit::Change;
use crate::error::Result;
use crate::id::FileId;
use crate::store::{FileInfo, Store};

impl Store {
    /// Makes the current version of live file `id` public or private, journaled as a
    /// `visibility` event. Older versions keep the visibility they were written with (and are
    /// hidden from others while the current one is private). Going private also revokes every
    /// link of the file. Asking for what already is changes nothing.
    pub fn set_public(&self, id: FileId, public: bool) -> Result<FileInfo> {
        self.inner
            .committer
            .commit(&self.inner, Change::Visibility { id, public })
    }

    /// Revokes every signed link of file `id` minted so far (deleted files too), journaled as
    /// a `revoke_links` event so the revocation survives `recover`.
    pub fn revoke_links(&self, id: FileId) -> Result<FileInfo> {
        self.inner
            .committer
            .commit(&self.inner, Change::RevokeLinks(id))
    }
}
