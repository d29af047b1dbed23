//! How the store makes files and directories: private to the user running it.
//!
//! A store holds other people's files, token hashes and signing keys, so every file it creates
//! is `0600` and every directory `0700`. Modes are given at creation rather than fixed up
//! afterwards: the umask can only take bits away, so `0600` stays `0600` (or less) whatever it
//! is, and there is no moment when a file is readable by others. Directories that already
//! exist (the store directory a user made, say) are left as they are.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every file the store creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the store creates.
pub const DIR_MODE: u32 = 0o700;

/// `OpenOptions` that create files with [`FILE_MODE`].
pub fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates `dir` and any missing parents with [`DIR_MODE`] (`create_dir_all`).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

// Tested end to end in tests/it/hostile/internals.rs: `tessera` under `umask 000` makes a
// store, puts, stages an upload, and every file and directory it created is private.
