//! Maintenance: whole-store checks and repairs. `verify` re-reads everything and reports
//! damage; `recover` rebuilds the index from the packs; `gc` collects garbage and purges;
//! `lifecycle` applies retention, expiry and the quarantine purge; `scheduler` runs those jobs
//! on their intervals; `rescan` runs stored files past the virus scanner again; `reports` are
//! the administrators' reports. Only maintenance ever deletes data.

pub mod gc;
pub mod lifecycle;
pub mod progress;
pub mod recover;
pub mod reports;
pub mod rescan;
pub mod scheduler;
pub mod tiering;
pub mod verify;

use serde::Serialize;

/// Bytes in a pack that are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedRegion {
    pub pack: u32,
    pub offset: u64,
    pub len: u64,
    pub error: String,
}
