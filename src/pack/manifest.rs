//! Manifest and event payloads: what a pack records about files, so that the index can be
//! rebuilt from packs alone.
//!
//! A manifest is one file version: its metadata as JSON (additive schema: new fields get serde
//! defaults, so old packs stay readable) followed by the ordered chunk list in binary. An event is
//! a change to a file that is not a new version, or a change to the accounts (`account`).

use serde::{Deserialize, Serialize};

use super::account::AccountEvent;
use crate::id::{ChunkId, FileId};

/// One entry of a version's chunk list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    /// Plain length of the chunk.
    pub len: u32,
}

/// Bytes per chunk-list entry: 32-byte id + u32 length.
pub const CHUNK_REF_LEN: usize = 36;

/// Serialises a chunk list (also the value format of the index's version-chunks table).
pub fn encode_chunk_list(chunks: &[ChunkRef], out: &mut Vec<u8>) {
    out.reserve(chunks.len() * CHUNK_REF_LEN);
    for c in chunks {
        out.extend_from_slice(&c.id.0);
        out.extend_from_slice(&c.len.to_le_bytes());
    }
}

pub fn decode_chunk_list(buf: &[u8]) -> Result<Vec<ChunkRef>, String> {
    if !buf.len().is_multiple_of(CHUNK_REF_LEN) {
        return Err(format!(
            "chunk list of {} bytes is not a whole number of entries",
            buf.len()
        ));
    }
    Ok(buf
        .chunks_exact(CHUNK_REF_LEN)
        .map(|e| ChunkRef {
            id: ChunkId(e[..32].try_into().unwrap()),
            len: u32::from_le_bytes(e[32..].try_into().unwrap()),
        })
        .collect())
}

/// File flags. Bits only ever get added; unknown bits are preserved.
pub mod flags {
    pub const PUBLIC: u32 = 1;
    pub const PROCESSED: u32 = 1 << 1;
    pub const QUARANTINED: u32 = 1 << 2;
}

/// Everything about a file version except its chunk list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub file_id: FileId,
    /// 1 for the first version of a file.
    pub version: u32,
    pub owner: String,
    #[serde(default)]
    pub key: Option<String>,
    pub display_name: String,
    #[serde(default)]
    pub original_name: Option<String>,
    pub category: String,
    pub mime: String,
    pub size: u64,
    /// Hex BLAKE3 of the whole content.
    pub blake3: String,
    /// Hex SHA-256 of the whole content.
    pub sha256: String,
    /// When the file (its first version) was created, ms since the Unix epoch.
    pub file_created_ms: i64,
    /// When this version was created.
    pub created_ms: i64,
    #[serde(default)]
    pub flags: u32,
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Set when this version was made by restoring an older one.
    #[serde(default)]
    pub restored_from: Option<u32>,
    /// What the virus scanner said about this content; `None` when its category is not
    /// scanned (or the version predates scanning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanStamp>,
}

/// The outcome of a version's virus scan, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ScanStamp {
    /// The scanner answered clean.
    Clean,
    /// The scanner found `signature`; the file is quarantined.
    Infected { signature: String },
    /// The scanner was unavailable and the store is configured to fail open: stored without a
    /// verdict. `reason` is the scanner's error.
    Unscanned { reason: String },
}

/// A file version as recorded in a pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub meta: VersionMeta,
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// Plain payload: `u32 LE json_len | json | chunk list`.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(&self.meta).expect("manifest metadata serialises");
        let mut out = Vec::with_capacity(4 + json.len() + self.chunks.len() * CHUNK_REF_LEN);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        encode_chunk_list(&self.chunks, &mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        let len_bytes: [u8; 4] = buf
            .get(..4)
            .ok_or("manifest shorter than its length prefix")?
            .try_into()
            .unwrap();
        let json_len = u32::from_le_bytes(len_bytes) as usize;
        let json = buf
            .get(4..4 + json_len)
            .ok_or("manifest metadata runs past the record")?;
        let meta: VersionMeta =
            serde_json::from_slice(json).map_err(|e| format!("manifest metadata: {e}"))?;
        let chunks = decode_chunk_list(&buf[4 + json_len..])?;
        let total: u64 = chunks.iter().map(|c| c.len as u64).sum();
        if total != meta.size {
            return Err(format!(
                "chunk lengths add up to {total} bytes but the manifest says {}",
                meta.size
            ));
        }
        Ok(Manifest { meta, chunks })
    }
}

/// A change to a file that is not a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileEvent {
    /// Soft delete: the file disappears from reads and listings.
    Delete { file_id: FileId, at_ms: i64 },
    /// Undo of a soft delete.
    Undelete { file_id: FileId, at_ms: i64 },
    /// The index commit for the manifest or event record at (`pack`, `offset`) failed after
    /// the record was written: it never happened, and replay must skip it.
    Revoke { pack: u32, offset: u64 },
    /// The file and all its versions are gone for good (a purge of a soft-deleted file):
    /// replay removes them and releases their chunk references. `manifests` are the original
    /// positions `(pack, offset)` of the purged versions' manifests; while any of those packs
    /// exists, compaction keeps this event (replay would resurrect the versions without it).
    Purge {
        file_id: FileId,
        at_ms: i64,
        #[serde(default)]
        manifests: Vec<(u32, u64)>,
    },
    /// One version is gone for good (retention). `manifest` is the original position of its
    /// manifest, with the same role as in `Purge`.
    DropVersion {
        file_id: FileId,
        version: u32,
        at_ms: i64,
        manifest: (u32, u64),
    },
    /// A later scan of a stored version (`tessera scan --rescan`, after a signature update)
    /// replaced its verdict: an infected verdict quarantines the file when the version is its
    /// current one. `manifest` is the original position of the version's manifest; compaction
    /// keeps this event while the version (or that manifest) can still be replayed.
    Scan {
        file_id: FileId,
        version: u32,
        at_ms: i64,
        manifest: (u32, u64),
        scan: ScanStamp,
    },
    /// The owner (or an admin) made the file's current version public or private
    /// (`Store::set_public`). Only that version's `PUBLIC` flag changes; older versions keep
    /// theirs, and the read rule (docs/design.md "Visibility") hides them all while the current
    /// version is private. Making it private also revokes the file's links (its link epoch
    /// moves on). `manifest` is the original position of the version's manifest.
    Visibility {
        file_id: FileId,
        version: u32,
        public: bool,
        at_ms: i64,
        manifest: (u32, u64),
    },
    /// Every signed link of the file minted so far stops working: its link epoch moves on
    /// (`Store::revoke_links`). Journaled so that `recover` does not bring revoked links back.
    RevokeLinks { file_id: FileId, at_ms: i64 },
    /// A change to users, tokens or organisation limits (`pack::account`). Not about a file,
    /// but journaled and replayed in the same order as file events.
    Account(AccountEvent),
}

impl FileEvent {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("event serialises")
    }

    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(buf).map_err(|e| format!("event: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let chunks = vec![
            ChunkRef {
                id: ChunkId::of(b"a"),
                len: 10,
            },
            ChunkRef {
                id: ChunkId::of(b"b"),
                len: 5,
            },
        ];
        Manifest {
            meta: VersionMeta {
                file_id: FileId::new(),
                version: 2,
                owner: "alice".into(),
                key: Some("docs/a.txt".into()),
                display_name: "a.txt".into(),
                original_name: None,
                category: "documents".into(),
                mime: "text/plain".into(),
                size: 15,
                blake3: "00".into(),
                sha256: "11".into(),
                file_created_ms: 1,
                created_ms: 2,
                flags: flags::PUBLIC,
                metadata: serde_json::json!({"k": [1, 2]}),
                restored_from: Some(1),
                scan: Some(ScanStamp::Infected {
                    signature: "Eicar-Test-Signature.UNOFFICIAL".into(),
                }),
            },
            chunks,
        }
    }

    #[test]
    fn manifest_round_trips_and_checks_sizes() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);

        let mut wrong = sample();
        wrong.meta.size = 99;
        assert!(
            Manifest::decode(&wrong.encode())
                .unwrap_err()
                .contains("add up")
        );
        assert!(Manifest::decode(&m.encode()[..3]).is_err());
        let enc = m.encode();
        assert!(Manifest::decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn float_metadata_survives_round_trips_exactly() {
        // Found by fuzzing: without serde_json's float_roundtrip this value drifted.
        let mut m = sample();
        m.meta.metadata = serde_json::json!({ "x": 7.370437700706684e208 });
        let once = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(once, m);
        assert_eq!(Manifest::decode(&once.encode()).unwrap(), m);
    }

    #[test]
    fn events_round_trip() {
        let e = FileEvent::Delete {
            file_id: FileId::new(),
            at_ms: 5,
        };
        assert_eq!(FileEvent::decode(&e.encode()).unwrap(), e);
        assert!(FileEvent::decode(b"{\"op\":\"explode\"}").is_err());
        let e = FileEvent::Scan {
            file_id: FileId::new(),
            version: 3,
            at_ms: 9,
            manifest: (2, 4096),
            scan: ScanStamp::Infected {
                signature: "Win.Test.EICAR_HDB-1".into(),
            },
        };
        assert_eq!(FileEvent::decode(&e.encode()).unwrap(), e);
        let e = FileEvent::Visibility {
            file_id: FileId::new(),
            version: 2,
            public: false,
            at_ms: 11,
            manifest: (1, 512),
        };
        assert_eq!(FileEvent::decode(&e.encode()).unwrap(), e);
        let e = FileEvent::RevokeLinks {
            file_id: FileId::new(),
            at_ms: 12,
        };
        assert_eq!(FileEvent::decode(&e.encode()).unwrap(), e);
    }
}
