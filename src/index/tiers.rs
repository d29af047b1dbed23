//! The cold tier's table, `cold_packs`, and the chunk moves between tiers.
//!
//! A chunk's tier is the tier of the pack its row points at: `ChunkRow` keeps its format, and
//! a move between tiers is a location change like compaction's, plus the per-tier counters
//! `stats` shows. The protocol around these calls is in `maintenance::tiering` and
//! docs/design.md, "Cold tier".

use redb::{ReadableTable, TableError};
use serde::{Deserialize, Serialize};

use super::schema::*;
use super::{ReadTx, WriteTx, decode_json, ix};
use crate::error::Result;
use crate::id::ChunkId;
use crate::pack::Location;
use crate::tier::is_cold_pack;

/// One cold pack: an object in the cold tier holding chunk records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdPackRow {
    /// Object key in the tier.
    pub key: String,
    /// Object length in bytes (pack header included).
    pub len: u64,
    /// BLAKE3 of the whole object, hex: our own checksum (an S3 ETag is not one).
    pub blake3: String,
    /// Storage class it was written in; `None`: the tier's default.
    pub storage_class: Option<String>,
    /// When the move that wrote it committed (store clock, ms).
    pub created_ms: i64,
}

/// Store-wide figures of the cold tier, kept with the other counters in `meta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ColdCounters {
    pub chunks: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

const COLD_CHUNKS: &str = "cold_chunks";
const COLD_RAW: &str = "cold_raw_bytes";
const COLD_STORED: &str = "cold_stored_bytes";
/// The lowest cold pack id no committed move has used (see `tier::cold`).
const COLD_NEXT: &str = "cold_next_pack";

macro_rules! tier_lookups {
    () => {
        /// The cold pack `id`, if the index knows it.
        pub fn cold_pack(&self, id: u32) -> Result<Option<ColdPackRow>> {
            let t = match self.tx.open_table(COLD_PACKS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(ix("opening cold packs")(e)),
            };
            match t.get(id).map_err(ix("reading cold packs"))? {
                Some(v) => Ok(Some(decode_json(v.value(), "cold pack")?)),
                None => Ok(None),
            }
        }

        /// Every cold pack, in id order.
        pub fn cold_packs(&self) -> Result<Vec<(u32, ColdPackRow)>> {
            let t = match self.tx.open_table(COLD_PACKS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(ix("opening cold packs")(e)),
            };
            let mut out = Vec::new();
            for entry in t.iter().map_err(ix("listing cold packs"))? {
                let (k, v) = entry.map_err(ix("listing cold packs"))?;
                out.push((k.value(), decode_json(v.value(), "cold pack")?));
            }
            Ok(out)
        }

        pub fn cold_counters(&self) -> Result<ColdCounters> {
            Ok(ColdCounters {
                chunks: self.counter(COLD_CHUNKS)?,
                raw_bytes: self.counter(COLD_RAW)?,
                stored_bytes: self.counter(COLD_STORED)?,
            })
        }

        /// The lowest cold pack id no committed move has used.
        pub fn cold_next_pack(&self) -> Result<u32> {
            Ok(self
                .meta(COLD_NEXT)?
                .and_then(|b| b.try_into().ok().map(u32::from_le_bytes))
                .unwrap_or(crate::tier::COLD_PACK_BASE))
        }
    };
}

impl ReadTx {
    tier_lookups!();
}

impl WriteTx {
    tier_lookups!();

    /// Records a cold pack (its object is durable in the tier), and that ids up to `id` are used.
    pub fn insert_cold_pack(&mut self, id: u32, row: &ColdPackRow) -> Result<()> {
        let json = serde_json::to_vec(row).expect("cold pack row serialises");
        {
            let mut t = self
                .tx
                .open_table(COLD_PACKS)
                .map_err(ix("opening cold packs"))?;
            t.insert(id, json.as_slice())
                .map_err(ix("writing a cold pack"))?;
        }
        if self.cold_next_pack()? <= id {
            self.set_meta(COLD_NEXT, &(id + 1).to_le_bytes())?;
        }
        Ok(())
    }

    /// Forgets a cold pack (nothing points into it any more) and its garbage row. Its object
    /// is deleted from the tier after this commits.
    pub fn remove_cold_pack(&mut self, id: u32) -> Result<()> {
        {
            let mut t = self
                .tx
                .open_table(COLD_PACKS)
                .map_err(ix("opening cold packs"))?;
            t.remove(id).map_err(ix("removing a cold pack"))?;
        }
        let mut t = self
            .tx
            .open_table(PACK_GARBAGE)
            .map_err(ix("opening pack garbage"))?;
        t.remove(id).map_err(ix("removing pack garbage"))?;
        Ok(())
    }

    /// Moves a chunk between tiers: points it at `to` if it is still at `from` and, when
    /// `refs` is given, still has exactly that many references (a version committed since the
    /// caller counted may make it ineligible). The record at `from` becomes garbage of its pack.
    /// Returns whether it moved.
    pub fn retier_chunk(
        &mut self,
        id: &ChunkId,
        from: Location,
        to: Location,
        refs: Option<u64>,
    ) -> Result<bool> {
        let Some(row) = self.chunk(id)? else {
            return Ok(false);
        };
        if row.loc != from || refs.is_some_and(|n| n != row.refs) {
            return Ok(false);
        }
        if !self.move_chunk(id, from, to)? {
            return Ok(false);
        }
        self.add_garbage(from.pack, from.len as u64)?;
        match (is_cold_pack(from.pack), is_cold_pack(to.pack)) {
            (false, true) => self.count_cold(&row, 1)?,
            (true, false) => self.count_cold(&row, -1)?,
            _ => {}
        }
        Ok(true)
    }

    /// Counts a cold chunk row in the cold counters (`recover`, which rebuilds them).
    pub fn count_cold_chunk(&mut self, row: &ChunkRow) -> Result<()> {
        self.count_cold(row, 1)
    }

    /// Adds (`sign` 1) or removes (-1) a chunk from the cold counters.
    pub(super) fn count_cold(&mut self, row: &ChunkRow, sign: i64) -> Result<()> {
        self.add_counter(COLD_CHUNKS, sign)?;
        self.add_counter(COLD_RAW, sign * row.raw_len as i64)?;
        self.add_counter(COLD_STORED, sign * row.stored_len as i64)?;
        Ok(())
    }
}
