//! The engine's side of the cold tier: object keys and pack ids of cold packs, and the read
//! path's bounded block cache.
//!
//! Reads of cold records go through fixed-size, aligned blocks of the object (default 2 MiB):
//! a record's read fetches the blocks that cover it with one range GET each and keeps them in
//! an LRU bounded in bytes, so a sequential read of a file — whose chunks sit next to each
//! other in the pack, because a move writes them in file order — costs one GET per block, not
//! one per chunk. Concurrent misses of one block wait for a single fetch. Nothing here trusts
//! the bytes: the caller decodes every record (CRCs, BLAKE3 of the plain chunk), and drops the
//! blocks of a record that fails so a later read fetches them afresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::{COLD_PACK_BASE, ColdTier, TierError};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::pack::Location;

type Block = Arc<Vec<u8>>;
/// A block of a cold pack: (pack id, block number).
type BlockKey = (u32, u64);

struct Lru {
    blocks: HashMap<BlockKey, (Block, u64)>,
    bytes: u64,
    tick: u64,
}

/// The store's handle on its cold tier.
pub(crate) struct Cold {
    pub tier: Arc<dyn ColdTier>,
    /// `packs/<store id hex>/`: every object of this store is under it.
    prefix: String,
    block: u64,
    cache_bytes: u64,
    lru: Mutex<Lru>,
    /// One lock per block being fetched, so concurrent misses fetch it once.
    fetching: Mutex<HashMap<BlockKey, Arc<Mutex<()>>>>,
    /// Object lengths (from `cold_packs`), so block fetches never reach past an object's end.
    lens: RwLock<HashMap<u32, u64>>,
    /// Held by every move between tiers and by the cold collector: while it is held by one of
    /// them, no other has an uncommitted object in the tier, so the collector may delete any
    /// object no `cold_packs` row names.
    pub moves: Mutex<()>,
    /// Next cold pack id to hand out (never below the committed `cold_next_pack`).
    next_id: AtomicU32,
    /// Range GETs issued (for tests and stats).
    pub gets: AtomicU64,
}

impl Cold {
    pub fn new(tier: Arc<dyn ColdTier>, store_id: u128, block: u64, cache_bytes: u64) -> Self {
        Cold {
            tier,
            prefix: format!("packs/{store_id:032x}/"),
            block: block.max(64 << 10),
            cache_bytes,
            lru: Mutex::new(Lru {
                blocks: HashMap::new(),
                bytes: 0,
                tick: 0,
            }),
            fetching: Mutex::new(HashMap::new()),
            lens: RwLock::new(HashMap::new()),
            moves: Mutex::new(()),
            next_id: AtomicU32::new(COLD_PACK_BASE),
            gets: AtomicU64::new(0),
        }
    }

    /// Prefix of every object of this store.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Object key of cold pack `id`.
    pub fn key(&self, id: u32) -> String {
        format!("{}{id:08x}.pack", self.prefix)
    }

    /// A fresh cold pack id, at or above `committed_next` (the index's `cold_next_pack`). An
    /// id handed out but never committed may be handed out again after a restart; the put of
    /// the new object then replaces the orphan of the old attempt.
    pub fn alloc_id(&self, committed_next: u32) -> u32 {
        self.next_id.fetch_max(committed_next, Ordering::SeqCst);
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// The whole record at `loc` (framing included), as stored; not yet checked.
    pub fn record(&self, index: &Index, loc: Location) -> Result<Vec<u8>> {
        let len = self.object_len(index, loc.pack)?;
        let (start, end) = (loc.offset, loc.offset + loc.len as u64);
        if end > len {
            return Err(Error::corrupt(
                self.key(loc.pack),
                format!("record {start}..{end} lies past the object's {len} bytes"),
            ));
        }
        let mut out = Vec::with_capacity(loc.len as usize);
        let mut b = start / self.block;
        while b * self.block < end {
            let block = self.block(loc.pack, b, len)?;
            let block_start = b * self.block;
            let from = start.max(block_start) - block_start;
            let to = end.min(block_start + block.len() as u64) - block_start;
            out.extend_from_slice(&block[from as usize..to as usize]);
            b += 1;
        }
        Ok(out)
    }

    /// Drops cached blocks of the record at `loc` (it failed its checks).
    pub fn invalidate(&self, loc: Location) {
        let mut lru = self.lru.lock().unwrap();
        let end = loc.offset + loc.len as u64;
        let mut b = loc.offset / self.block;
        while b * self.block < end {
            if let Some((blk, _)) = lru.blocks.remove(&(loc.pack, b)) {
                lru.bytes -= blk.len() as u64;
            }
            b += 1;
        }
    }

    /// Forgets everything cached about cold pack `id` (its object was deleted).
    pub fn forget(&self, id: u32) {
        self.lens.write().unwrap().remove(&id);
        let mut lru = self.lru.lock().unwrap();
        let gone: Vec<(u32, u64)> = lru.blocks.keys().filter(|k| k.0 == id).copied().collect();
        for k in gone {
            if let Some((blk, _)) = lru.blocks.remove(&k) {
                lru.bytes -= blk.len() as u64;
            }
        }
    }

    /// Bytes held by the cache now.
    pub fn cached_bytes(&self) -> u64 {
        self.lru.lock().unwrap().bytes
    }

    fn object_len(&self, index: &Index, id: u32) -> Result<u64> {
        if let Some(&len) = self.lens.read().unwrap().get(&id) {
            return Ok(len);
        }
        let row = index
            .read()?
            .cold_pack(id)?
            .ok_or_else(|| Error::corrupt(self.key(id), "the index has no cold pack of this id"))?;
        self.lens.write().unwrap().insert(id, row.len);
        Ok(row.len)
    }

    fn cached(&self, key: (u32, u64)) -> Option<Block> {
        let mut lru = self.lru.lock().unwrap();
        lru.tick += 1;
        let tick = lru.tick;
        lru.blocks.get_mut(&key).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    fn block(&self, id: u32, b: u64, len: u64) -> Result<Block> {
        if let Some(blk) = self.cached((id, b)) {
            return Ok(blk);
        }
        let gate = self
            .fetching
            .lock()
            .unwrap()
            .entry((id, b))
            .or_default()
            .clone();
        let _fetch = gate.lock().unwrap();
        if let Some(blk) = self.cached((id, b)) {
            return Ok(blk);
        }
        let range = b * self.block..((b + 1) * self.block).min(len);
        let key = self.key(id);
        self.gets.fetch_add(1, Ordering::Relaxed);
        let got = self.tier.get_range(&key, range.clone());
        self.fetching.lock().unwrap().remove(&(id, b));
        let data = got.map_err(|e| tier_error("reading a cold pack", e))?;
        if data.len() as u64 != range.end - range.start {
            return Err(Error::corrupt(
                key,
                format!(
                    "range {}..{} returned {} bytes",
                    range.start,
                    range.end,
                    data.len()
                ),
            ));
        }
        let blk = Arc::new(data);
        let mut lru = self.lru.lock().unwrap();
        lru.tick += 1;
        let tick = lru.tick;
        lru.bytes += blk.len() as u64;
        if let Some((old, _)) = lru.blocks.insert((id, b), (blk.clone(), tick)) {
            lru.bytes -= old.len() as u64;
        }
        while lru.bytes > self.cache_bytes && lru.blocks.len() > 1 {
            let oldest = lru
                .blocks
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
                .expect("not empty");
            if let Some((old, _)) = lru.blocks.remove(&oldest) {
                lru.bytes -= old.len() as u64;
            }
        }
        Ok(blk)
    }
}

/// A tier error as an engine error: unreachable → [`Error::Unavailable`] (temporary); a
/// missing object → [`Error::Corrupt`] (the index names it, so data is gone); anything else →
/// [`Error::Io`].
pub(crate) fn tier_error(context: &str, e: TierError) -> Error {
    match e {
        TierError::Unavailable { .. } => Error::Unavailable {
            context: context.to_string(),
            message: e.to_string(),
        },
        TierError::NotFound { key } => Error::corrupt(key, "cold object is missing"),
        TierError::Failed { .. } => Error::Io {
            context: context.to_string(),
            source: std::io::Error::other(e.to_string()),
        },
    }
}
