//! Tessera: an embedded file storage engine.
//!
//! Files are split into content-defined chunks (FastCDC), deduplicated by BLAKE3 hash,
//! zstd-compressed and appended to pack files; a redb index tracks files, versions and chunks.
//! A put is durable when it returns; a crash at any instant leaves a store that opens and holds
//! every file whose put returned.
//!
//! ```
//! use std::io::Read;
//! use tessera::{Config, PutOptions, Store};
//!
//! # fn main() -> tessera::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::create(dir.path().join("store"), Config::default())?;
//!
//! let put = store.put(&b"hello, tessera"[..], &PutOptions::key("greetings/hello.txt"))?;
//! assert_eq!(put.file.mime, "text/plain");
//!
//! let mut text = String::new();
//! store.get(put.file.id)?.read_to_string(&mut text).unwrap();
//! assert_eq!(text, "hello, tessera");
//!
//! // A second put to the same key is a new version of the same file.
//! let again = store.put(&b"hello again"[..], &PutOptions::key("greetings/hello.txt"))?;
//! assert_eq!((again.file.id, again.file.version), (put.file.id, 2));
//! # Ok(())
//! # }
//! ```
//!
//! ARCHITECTURE.md maps the modules; docs/design.md has the on-disk formats and the commit
//! protocol.

pub mod batch;
pub mod chunking;
pub mod clock;
mod commit;
pub mod config;
mod disk;
pub mod error;
#[cfg(feature = "server")]
pub mod http;
pub mod id;
pub mod index;
pub mod maintenance;
#[cfg(feature = "media")]
pub mod media;
pub mod pack;
mod pipeline;
pub mod quota;
mod reader;
pub mod scan;
mod sharing;
pub mod store;
pub mod tier;
pub mod upload;
pub mod users;
pub mod validate;

pub use batch::Batch;
pub use chunking::ChunkParams;
pub use error::{Error, Result};
pub use id::{ChunkId, FileId};
pub use maintenance::gc::{GcOptions, GcReport, PurgeReport};
pub use maintenance::lifecycle::{ExpiryRules, RetentionRule, RetentionRules};
pub use maintenance::progress::Progress;
pub use maintenance::recover::{RecoverReport, recover};
pub use maintenance::reports::{
    AccountTierUsage, CategoryUsage, DuplicateFile, DuplicateGroup, DuplicatesReport, OwnerUsage,
    StorageReport, TierUsage, UnreadFile, UnreadQuery, UnreadReport, Usage,
};
pub use maintenance::rescan::{RescanChange, RescanOptions, RescanReport};
pub use maintenance::scheduler::{Job, JobReport, JobRun, Scheduled, Scheduler};
pub use maintenance::tiering::{
    ColdGcReport, TierMoveOptions, TierMoveReport, TierRule, TierRules,
};
pub use maintenance::verify::VerifyReport;
pub use maintenance::verify::{AffectedFile, DamagedChunk};
pub use quota::{QuotaConfig, QuotaEvent, QuotaStatus};
pub use store::{
    Config, FileInfo, FileReader, ListPage, ListQuery, PutOptions, PutReport, Store, StoreStats,
    TierStats, VersionInfo,
};
pub use upload::{Checksum, ChecksumAlgo, SessionLimits, SweepReport, UploadMeta, UploadSession};
pub use validate::Origin;
