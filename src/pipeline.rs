//! The put path: read → chunk → hash → dedup → compress → pack, in parallel.
//!
//! ```text
//!  caller thread          hasher threads                workers (N)
//!  read + FastCDC  ──┬──▶ whole-file SHA-256
//!  (in order)        ├──▶ whole-file BLAKE3
//!                    └──▶ chunk BLAKE3 → dedup lookup → compress → Packs::append
//!                                   results (seq, ChunkRef) ──▶ reassembled in order
//! ```
//!
//! Every chunk's bytes are counted against the store's in-flight budget from the moment the
//! chunker hands them over until both the hasher and the worker are done with them, so memory
//! in flight stays under `Config::max_in_flight` whatever the file size and however slow the
//! disk. Queues are bounded, and the chunker blocks on the budget, not on memory.
//!
//! Dedup is store-wide and concurrent: a chunk is either in the index, or claimed in the
//! in-flight map by exactly one writer (any put), whose row every other put waits for and
//! shares. So a chunk is compressed and written once, even when two puts of the same data race.
//!
//! An input that fits in one chunk takes the inline path: no threads, same results.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use sha2::Digest;

use crate::error::{Error, Result, input_error};
use crate::id::{ChunkId, hex};
use crate::index::ChunkRow;
use crate::pack::manifest::ChunkRef;
use crate::pack::record::{self, RecordKind};
use crate::store::Inner;

/// What ingesting one input produced.
pub(crate) struct Ingested<'s> {
    /// The input's chunk list, in order.
    pub chunks: Vec<ChunkRef>,
    /// Rows of the distinct chunks that were not in the index when looked up.
    pub rows: HashMap<ChunkId, ChunkRow>,
    pub size: u64,
    pub blake3: String,
    pub sha256: String,
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    /// Keeps this put's written chunks claimed until the put ends (committed or not).
    pub _claims: Claims<'s>,
}

// ------------------------------------------------------------------ in-flight budget

/// Bytes of chunk data held by put pipelines, with a cap. Shared by all puts of a store.
pub(crate) struct InFlight {
    cap: u64,
    used: Mutex<u64>,
    freed: Condvar,
    peak: AtomicU64,
}

impl InFlight {
    pub fn new(cap: u64) -> Self {
        InFlight {
            cap,
            used: Mutex::new(0),
            freed: Condvar::new(),
            peak: AtomicU64::new(0),
        }
    }

    /// Blocks until `n` more bytes fit under the cap. A request larger than the cap is let
    /// through alone (the cap is at least four maximal chunks, see `Config`), so nothing waits
    /// forever.
    fn acquire(self: &Arc<Self>, n: u64) -> Permit {
        let mut used = self.used.lock().unwrap();
        while *used > 0 && *used + n > self.cap {
            used = self.freed.wait(used).unwrap();
        }
        *used += n;
        self.peak.fetch_max(*used, Ordering::Relaxed);
        Permit {
            pool: self.clone(),
            n,
        }
    }

    /// (bytes in flight now, highest ever).
    pub fn usage(&self) -> (u64, u64) {
        (
            *self.used.lock().unwrap(),
            self.peak.load(Ordering::Relaxed),
        )
    }
}

/// Returns its bytes to the budget when dropped.
struct Permit {
    pool: Arc<InFlight>,
    n: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.pool.used.lock().unwrap() -= self.n;
        self.pool.freed.notify_all();
    }
}

/// One chunk travelling through the pipeline; its bytes count against the budget until the
/// last holder drops it.
struct Piece {
    seq: usize,
    data: Vec<u8>,
    _permit: Permit,
}

// ------------------------------------------------------------------ claims

/// A chunk being written by some put: the row appears once it is in a pack. `None` means the
/// writer failed and the chunk must be claimed again.
pub(crate) type Slot = Arc<OnceLock<Option<ChunkRow>>>;

/// The chunks a put claimed (and wrote); released when the put ends. After a commit the index
/// has them; after a failure the next writer claims them anew.
///
/// Claims also hold the put's GC pins (see `maintenance::gc::GcPins`): every chunk the put
/// references is pinned before it is looked up, and the lowest pack it may write to is
/// registered before its first snapshot, so neither the sweep nor compaction can take away
/// what the put's commit will reference.
pub(crate) struct Claims<'s> {
    inner: &'s Inner,
    mine: Mutex<Vec<ChunkId>>,
    pinned: Mutex<Vec<ChunkId>>,
    /// Sweep generation when the put started (before any of its snapshots).
    generation: u64,
    start_pack: u32,
}

impl<'s> Claims<'s> {
    fn new(inner: &'s Inner) -> Self {
        let (generation, start_pack) = inner.gc_pins.begin_put(&inner.packs);
        Claims {
            inner,
            mine: Mutex::new(Vec::new()),
            pinned: Mutex::new(Vec::new()),
            generation,
            start_pack,
        }
    }

    /// Pins `id` for the rest of the put. Returns true when a sweep has committed since the
    /// put's snapshots were taken, so they may still show a chunk that is gone: look it up
    /// afresh.
    fn pin(&self, id: &ChunkId) -> bool {
        self.pinned.lock().unwrap().push(*id);
        self.inner.gc_pins.pin(id) != self.generation
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        self.inner
            .gc_pins
            .end_put(self.start_pack, self.pinned.get_mut().unwrap());
        let mine = self.mine.get_mut().unwrap();
        if mine.is_empty() {
            return;
        }
        let mut pending = self.inner.pending.lock().unwrap();
        for id in mine.iter() {
            pending.remove(id);
        }
    }
}

/// The per-chunk half of a put, shared by the workers of one pipeline (or used inline).
struct ChunkWriter<'s> {
    inner: &'s Inner,
    claims: &'s Claims<'s>,
    rows: Mutex<HashMap<ChunkId, ChunkRow>>,
    new_chunks: AtomicU64,
    new_stored_bytes: AtomicU64,
    /// Consecutive chunks that did not compress; after a few, most chunks skip the attempt.
    incompressible_streak: AtomicU32,
}

/// After this many incompressible chunks in a row, only every `PROBE_EVERY`th chunk tries zstd.
const SKIP_AFTER: u32 = 4;
const PROBE_EVERY: usize = 8;

impl<'s> ChunkWriter<'s> {
    fn new(inner: &'s Inner, claims: &'s Claims<'s>) -> Self {
        ChunkWriter {
            inner,
            claims,
            rows: Mutex::new(HashMap::new()),
            new_chunks: AtomicU64::new(0),
            new_stored_bytes: AtomicU64::new(0),
            incompressible_streak: AtomicU32::new(0),
        }
    }

    /// Hashes a chunk and makes sure it is stored: found in `snapshot`, shared from another
    /// put in flight, or compressed and appended by this call.
    fn add(
        &self,
        snapshot: &crate::index::ReadTx,
        seq: usize,
        data: &[u8],
        record: &mut Vec<u8>,
    ) -> Result<ChunkRef> {
        let id = ChunkId::of(data);
        let r = ChunkRef {
            id,
            len: data.len() as u32,
        };
        if self.rows.lock().unwrap().contains_key(&id) {
            return Ok(r);
        }
        // Pin before the lookup: a chunk seen in the index stays there until the commit.
        let stale = self.claims.pin(&id);
        let known = if stale {
            self.inner.index.read()?.chunk(&id)?
        } else {
            snapshot.chunk(&id)?
        };
        if known.is_some() {
            return Ok(r);
        }
        loop {
            // Claim the chunk, or find who has.
            let (slot, ours) = {
                let mut pending = self.inner.pending.lock().unwrap();
                match pending.get(&id) {
                    Some(s) => (s.clone(), false),
                    None => {
                        let s: Slot = Arc::new(OnceLock::new());
                        pending.insert(id, s.clone());
                        (s, true)
                    }
                }
            };
            if !ours {
                match slot.wait() {
                    Some(row) => {
                        self.rows.lock().unwrap().insert(id, *row);
                        return Ok(r);
                    }
                    None => {
                        // The writer failed; its claim is being dropped. Try again.
                        let mut pending = self.inner.pending.lock().unwrap();
                        if pending.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                            pending.remove(&id);
                        }
                        continue;
                    }
                }
            }
            self.claims.mine.lock().unwrap().push(id);
            // Every path below sets the slot: other puts may be waiting on it.
            // Our snapshot may predate the commit of a put that wrote this chunk and has since
            // released its claim (claims end after the commit). A fresh look at the index,
            // taken after we saw no claim, sees any such commit.
            let written = match self.inner.index.read().and_then(|r| r.chunk(&id)) {
                Ok(Some(indexed)) => Ok(indexed),
                Ok(None) => self.write(seq, &id, data, record),
                Err(e) => Err(e),
            };
            match written {
                Ok(row) => {
                    let _ = slot.set(Some(row));
                    self.rows.lock().unwrap().insert(id, row);
                    return Ok(r);
                }
                Err(e) => {
                    let _ = slot.set(None);
                    return Err(e);
                }
            }
        }
    }

    fn write(
        &self,
        seq: usize,
        id: &ChunkId,
        data: &[u8],
        record: &mut Vec<u8>,
    ) -> Result<ChunkRow> {
        let level = self.inner.compression_level();
        let skip = level > 0
            && self.incompressible_streak.load(Ordering::Relaxed) >= SKIP_AFTER
            && !seq.is_multiple_of(PROBE_EVERY);
        record.clear();
        record::encode_plain(
            RecordKind::Chunk,
            data,
            &id.0,
            if skip { 0 } else { level },
            record,
        );
        let stored_len = (record.len() - record::OVERHEAD) as u32;
        if !skip {
            if stored_len as usize >= data.len() {
                self.incompressible_streak.fetch_add(1, Ordering::Relaxed);
            } else {
                self.incompressible_streak.store(0, Ordering::Relaxed);
            }
        }
        let loc = self.inner.packs.append(record)?;
        self.new_chunks.fetch_add(1, Ordering::Relaxed);
        self.new_stored_bytes
            .fetch_add(stored_len as u64, Ordering::Relaxed);
        Ok(ChunkRow {
            loc,
            raw_len: data.len() as u32,
            stored_len,
            refs: 0,
        })
    }
}

/// Whole-file digests.
struct Digests {
    blake3: blake3::Hasher,
    sha256: sha2::Sha256,
}

impl Digests {
    fn new() -> Self {
        Digests {
            blake3: blake3::Hasher::new(),
            sha256: sha2::Sha256::new(),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.blake3.update(data);
        self.sha256.update(data);
    }

    fn finish(self) -> (String, String) {
        (
            self.blake3.finalize().to_hex().to_string(),
            hex(&self.sha256.finalize()),
        )
    }
}

// ------------------------------------------------------------------ the pipeline

/// Reads `source` to the end and stores its chunks. Nothing is committed here.
pub(crate) fn ingest<'s>(inner: &'s Inner, source: impl Read) -> Result<Ingested<'s>> {
    let claims = Claims::new(inner);
    let params = inner.identity.chunking;
    let mut chunker = params.chunker(source);
    let first = chunker.next().transpose().map_err(input_error)?;
    let second = match &first {
        Some(_) => chunker.next().transpose().map_err(input_error)?,
        None => None,
    };
    let second_exists = second.is_some();
    let (chunks, rows, size, digests, new_chunks, new_stored_bytes) = {
        let writer = ChunkWriter::new(inner, &claims);
        let mut digests = Digests::new();
        let head = first.into_iter().chain(second).map(Ok);
        let (chunks, size) = if second_exists && inner.config.threads > 1 {
            run_parallel(inner, &writer, head.chain(chunker), &mut digests)?
        } else {
            // Zero or one chunk (or a store configured without worker threads): no threads.
            run_inline(inner, &writer, head.chain(chunker), &mut digests)?
        };
        let rows = writer.rows.into_inner().unwrap();
        (
            chunks,
            rows,
            size,
            digests,
            writer.new_chunks.into_inner(),
            writer.new_stored_bytes.into_inner(),
        )
    };
    let (blake3, sha256) = digests.finish();
    Ok(Ingested {
        chunks,
        rows,
        size,
        blake3,
        sha256,
        new_chunks,
        new_stored_bytes,
        _claims: claims,
    })
}

/// The same work as [`run_parallel`], on the calling thread.
fn run_inline(
    inner: &Inner,
    writer: &ChunkWriter<'_>,
    chunks: impl Iterator<Item = std::io::Result<crate::chunking::Chunk>>,
    digests: &mut Digests,
) -> Result<(Vec<ChunkRef>, u64)> {
    let snapshot = inner.index.read()?;
    let mut record = Vec::new();
    let mut out = Vec::new();
    let mut size = 0;
    for (seq, chunk) in chunks.enumerate() {
        let chunk = chunk.map_err(input_error)?;
        digests.update(&chunk.data);
        size += chunk.data.len() as u64;
        out.push(writer.add(&snapshot, seq, &chunk.data, &mut record)?);
    }
    Ok((out, size))
}

/// The threaded pipeline for inputs of two or more chunks.
fn run_parallel(
    inner: &Inner,
    writer: &ChunkWriter<'_>,
    chunks: impl Iterator<Item = std::io::Result<crate::chunking::Chunk>>,
    digests: &mut Digests,
) -> Result<(Vec<ChunkRef>, u64)> {
    let workers = inner.config.threads.max(1);
    // Queues hold Arcs; the budget, not the queue length, bounds memory.
    // SHA-256 (~1 GB/s) and BLAKE3 (~3 GB/s) of the whole file each get a thread: on their own
    // they would be the slowest stage of ingesting known or incompressible data.
    let (to_sha, sha_rx) = crossbeam_channel::bounded::<Arc<Piece>>(64);
    let (to_b3, b3_rx) = crossbeam_channel::bounded::<Arc<Piece>>(64);
    let (to_workers, work_rx) = crossbeam_channel::bounded::<Arc<Piece>>(64);
    let (results_tx, results_rx) = crossbeam_channel::unbounded::<(usize, ChunkRef)>();
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        first_error.lock().unwrap().get_or_insert(e);
        failed.store(true, Ordering::Release);
    };

    let mut size = 0u64;
    let mut count = 0usize;
    std::thread::scope(|s| {
        let Digests { blake3, sha256 } = digests;
        s.spawn(move || {
            for piece in sha_rx {
                sha256.update(&piece.data);
            }
        });
        s.spawn(move || {
            for piece in b3_rx {
                blake3.update(&piece.data);
            }
        });
        for _ in 0..workers {
            let work_rx = work_rx.clone();
            let results_tx = results_tx.clone();
            let fail = &fail;
            let failed = &failed;
            s.spawn(move || {
                let snapshot = match inner.index.read() {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                };
                let mut record = Vec::new();
                for piece in work_rx {
                    if failed.load(Ordering::Acquire) {
                        continue; // drain
                    }
                    match writer.add(&snapshot, piece.seq, &piece.data, &mut record) {
                        Ok(r) => {
                            let _ = results_tx.send((piece.seq, r));
                        }
                        Err(e) => fail(e),
                    }
                }
            });
        }
        drop(work_rx);
        drop(results_tx);

        // This thread reads and chunks, in order.
        for chunk in chunks {
            if failed.load(Ordering::Acquire) {
                break;
            }
            let chunk = match chunk.map_err(input_error) {
                Ok(c) => c,
                Err(e) => {
                    fail(e);
                    break;
                }
            };
            let permit = inner.in_flight.acquire(chunk.data.len() as u64);
            size += chunk.data.len() as u64;
            let piece = Arc::new(Piece {
                seq: count,
                data: chunk.data,
                _permit: permit,
            });
            count += 1;
            let sent = to_sha.send(piece.clone()).is_ok()
                && to_b3.send(piece.clone()).is_ok()
                && to_workers.send(piece).is_ok();
            if !sent {
                break;
            }
        }
        drop(to_sha);
        drop(to_b3);
        drop(to_workers);
    });

    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    let mut ordered: Vec<Option<ChunkRef>> = vec![None; count];
    for (seq, r) in results_rx {
        ordered[seq] = Some(r);
    }
    let chunks = ordered
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .expect("every chunk has a result when no worker failed");
    Ok((chunks, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_blocks_until_bytes_are_returned() {
        let pool = Arc::new(InFlight::new(100));
        let a = pool.acquire(60);
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let _b = pool.acquire(60);
                pool.usage().0
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(pool.usage().0, 60, "the second acquire must wait");
        drop(a);
        assert_eq!(waiter.join().unwrap(), 60);
        assert_eq!(pool.usage(), (0, 60));
        // Larger than the cap: let through alone.
        let big = pool.acquire(500);
        assert_eq!(pool.usage().0, 500);
        drop(big);
    }
}
