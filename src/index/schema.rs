//! The index schema: every redb table, its key and value types, and the fixed-width row codecs.
//!
//! Changing a table's types is a format change (bump `INDEX_FORMAT` and write a migration);
//! adding a table is not. The tables are described for humans in docs/design.md.

use redb::TableDefinition;

use crate::pack::{Location, PackState};

/// Version of the index layout, stored in `META` under `format`.
pub const INDEX_FORMAT: u32 = 1;

/// Store-wide values: `format`, `store_id`, `chunk_params`, counters.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// File id → `FileRecord` (JSON).
pub const FILES: TableDefinition<u128, &[u8]> = TableDefinition::new("files");
/// (owner, key) → file id. Keys are unique per owner.
pub const KEYS: TableDefinition<(&str, &str), u128> = TableDefinition::new("keys");
/// (owner, file id) → (): list by owner in id (= creation) order.
pub const OWNER_FILES: TableDefinition<(&str, u128), ()> = TableDefinition::new("owner_files");
/// (category, file id) → (): list by category.
pub const CATEGORY_FILES: TableDefinition<(&str, u128), ()> =
    TableDefinition::new("category_files");
/// (file id, version) → `VersionRecord` (JSON).
pub const VERSIONS: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("versions");
/// (file id, version) → chunk list (`pack::manifest::encode_chunk_list`).
pub const VERSION_CHUNKS: TableDefinition<(u128, u32), &[u8]> =
    TableDefinition::new("version_chunks");
/// Chunk id → `ChunkRow` (fixed 32 bytes).
pub const CHUNKS: TableDefinition<&[u8; 32], &[u8; CHUNK_ROW_LEN]> = TableDefinition::new("chunks");
/// Pack id → `PackState` (fixed 9 bytes): committed length and sealed flag.
pub const PACKS: TableDefinition<u32, &[u8; PACK_ROW_LEN]> = TableDefinition::new("packs");
/// Upload session id (ULID string) → `UploadRecord` (JSON). Index-only state: sessions are not
/// recorded in packs, so `recover` does not bring them back.
pub const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// (file id, version) → `ImageJob` (JSON): the background image job of one version. Index-only,
/// like `uploads`; written in the transaction that commits the version (see `index/jobs.rs`).
pub const IMAGE_JOBS: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("image_jobs");

/// User name → `UserRecord` (JSON): the people and services the HTTP service knows.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// SHA-256 of a bearer token → `TokenRecord` (JSON). The token itself is never stored.
pub const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens");

/// Chunk id → ms when its reference count last reached zero: the collector's candidates
/// (docs/design.md, "Garbage collection"). A chunk is here exactly when its `refs` is zero.
pub const ZERO_REFS: TableDefinition<&[u8; 32], i64> = TableDefinition::new("zero_refs");
/// Pack id → bytes of records in the pack that nothing needs any more (swept chunks, manifests
/// of purged versions): what compaction would reclaim.
pub const PACK_GARBAGE: TableDefinition<u32, u64> = TableDefinition::new("pack_garbage");

/// (BLAKE3 of a file's current content, file id) → (): files grouped by content, for the
/// duplicates report. One row per file in `files` (deleted ones included until purged); derived
/// from the versions, so `recover` rebuilds it by replay.
pub const CONTENT_FILES: TableDefinition<(&[u8; 32], u128), ()> =
    TableDefinition::new("content_files");

/// Cold pack id → `ColdPackRow` (JSON): the packs that live as objects in the cold tier (see
/// `tier` and docs/design.md, "Cold tier"). A chunk is cold exactly when its row points at a
/// pack listed here; cold pack ids are at or above `tier::COLD_PACK_BASE`, so they never
/// collide with local packs, which `PACKS` lists.
pub const COLD_PACKS: TableDefinition<u32, &[u8]> = TableDefinition::new("cold_packs");

pub const CHUNK_ROW_LEN: usize = 32;
pub const PACK_ROW_LEN: usize = 9;

/// Where a chunk is stored and how many version chunk-list entries reference it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRow {
    pub loc: Location,
    /// Plain length.
    pub raw_len: u32,
    /// Payload length on disk (compressed or raw).
    pub stored_len: u32,
    /// References from version chunk lists (a chunk used twice by one version counts twice).
    pub refs: u64,
}

impl ChunkRow {
    /// `pack u32 | offset u64 | record len u32 | raw_len u32 | stored_len u32 | refs u64`, LE.
    pub fn encode(&self) -> [u8; CHUNK_ROW_LEN] {
        let mut b = [0u8; CHUNK_ROW_LEN];
        b[0..4].copy_from_slice(&self.loc.pack.to_le_bytes());
        b[4..12].copy_from_slice(&self.loc.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.loc.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.raw_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.stored_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.refs.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; CHUNK_ROW_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        ChunkRow {
            loc: Location {
                pack: u32_at(0),
                offset: u64_at(4),
                len: u32_at(12),
            },
            raw_len: u32_at(16),
            stored_len: u32_at(20),
            refs: u64_at(24),
        }
    }
}

pub fn encode_pack_row(s: &PackState) -> [u8; PACK_ROW_LEN] {
    let mut b = [0u8; PACK_ROW_LEN];
    b[..8].copy_from_slice(&s.len.to_le_bytes());
    b[8] = s.sealed as u8;
    b
}

pub fn decode_pack_row(id: u32, b: &[u8; PACK_ROW_LEN]) -> PackState {
    PackState {
        id,
        len: u64::from_le_bytes(b[..8].try_into().unwrap()),
        sealed: b[8] != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let row = ChunkRow {
            loc: Location {
                pack: 3,
                offset: 1 << 40,
                len: 70_000,
            },
            raw_len: 65_536,
            stored_len: 69_944,
            refs: 1 << 33,
        };
        assert_eq!(ChunkRow::decode(&row.encode()), row);
        let p = PackState {
            id: 9,
            len: 123_456_789,
            sealed: true,
        };
        assert_eq!(decode_pack_row(9, &encode_pack_row(&p)), p);
    }
}
