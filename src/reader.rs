//! The get path: `FileReader`, a `Read + Seek` stream over one file version (or a range of it).
//!
//! Reads resolve chunk locations from the index in batches and verify every chunk (CRCs, then
//! BLAKE3 against the id the manifest names). A sequential read of more than a few chunks starts
//! read-ahead: worker threads decode the next chunks — decompression and hashing are the costly
//! part — into a bounded window while the caller consumes the current one. Seeking away stops
//! the read-ahead; it restarts at the new position on the next sequential read. A range read
//! never touches chunks outside its range.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::error::{Error, Result};
use crate::id::FileId;
use crate::index::ReadTx;
use crate::pack::Location;
use crate::pack::manifest::ChunkRef;
use crate::store::Store;

/// How many chunk locations one index lookup resolves ahead (direct reads).
const LOCATE_BATCH: usize = 256;
/// Chunks decoded ahead of the reader.
const WINDOW: usize = 16;
/// Read-ahead starts once this many chunks are left to read.
const MIN_CHUNKS_FOR_READAHEAD: usize = 4;

/// A stream of one file version's bytes (or a range of them). Implements `Read` and `Seek`;
/// positions are relative to the start of the range.
///
/// Errors from the engine (a corrupt chunk, say) surface as `io::Error`s wrapping
/// [`Error`]; `io::Error::downcast::<tessera::Error>()` recovers them.
pub struct FileReader {
    store: Store,
    file: FileId,
    version: u32,
    chunks: Arc<Vec<ChunkRef>>,
    /// `starts[i]` is the offset of chunk i; the last entry is the file size.
    starts: Vec<u64>,
    locs: Vec<Option<Location>>,
    base: u64,
    pos: u64,
    end: u64,
    /// Index of the chunk held in `buf`.
    cur: Option<usize>,
    buf: Vec<u8>,
    ahead: Option<ReadAhead>,
    /// Set once a chunk came from the cold tier (for `Config::rehydrate_on_read`).
    cold: Arc<AtomicBool>,
}

impl FileReader {
    pub(crate) fn new(
        store: Store,
        file: FileId,
        version: u32,
        chunks: Vec<ChunkRef>,
        range: std::ops::Range<u64>,
    ) -> Self {
        let mut starts = Vec::with_capacity(chunks.len() + 1);
        let mut at = 0u64;
        for c in &chunks {
            starts.push(at);
            at += c.len as u64;
        }
        starts.push(at);
        FileReader {
            store,
            file,
            version,
            locs: vec![None; chunks.len()],
            chunks: Arc::new(chunks),
            starts,
            base: range.start,
            pos: range.start,
            end: range.end,
            cur: None,
            buf: Vec::new(),
            ahead: None,
            cold: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn file_id(&self) -> FileId {
        self.file
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Bytes this reader yields in total.
    pub fn len(&self) -> u64 {
        self.end - self.base
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index one past the last chunk the range needs.
    fn last_chunk(&self) -> usize {
        self.starts.partition_point(|&s| s < self.end)
    }

    fn locate(&mut self, i: usize) -> Result<Location> {
        if let Some(l) = self.locs[i] {
            return Ok(l);
        }
        let r = self.store.inner().index.read()?;
        let last = (i + LOCATE_BATCH).min(self.last_chunk());
        for j in i..last {
            if self.locs[j].is_some() {
                break;
            }
            self.locs[j] = Some(locate(&r, &self.chunks[j], self.file, self.version)?);
        }
        Ok(self.locs[i].expect("located above"))
    }

    fn load(&mut self, i: usize) -> Result<()> {
        if self.cur == Some(i) {
            return Ok(());
        }
        self.cur = None;
        if self.ahead.as_ref().is_some_and(|a| a.next != i) {
            self.ahead = None; // a seek: stop reading ahead of the old position
        }
        let remaining = self.last_chunk().saturating_sub(i);
        if self.ahead.is_none()
            && remaining >= MIN_CHUNKS_FOR_READAHEAD
            && self.store.inner().config.threads > 1
        {
            self.ahead = Some(ReadAhead::start(self, i));
        }
        match &mut self.ahead {
            Some(a) => {
                let data = a.take(i)?;
                self.buf = data;
            }
            None => {
                let loc = self.locate(i)?;
                let mut buf = std::mem::take(&mut self.buf);
                let res = decode(
                    &self.store,
                    &self.chunks[i],
                    loc,
                    self.file,
                    self.version,
                    &mut buf,
                );
                if crate::tier::is_cold_pack(loc.pack) {
                    self.cold.store(true, Ordering::Relaxed);
                }
                self.buf = buf;
                res?;
            }
        }
        self.cur = Some(i);
        Ok(())
    }
}

fn locate(r: &ReadTx, c: &ChunkRef, file: FileId, version: u32) -> Result<Location> {
    let row = r.chunk(&c.id)?.ok_or_else(|| Error::Corrupt {
        location: "index".into(),
        detail: format!("chunk of file {file} version {version} is not indexed"),
        chunk: Some(c.id.to_hex()),
    })?;
    Ok(row.loc)
}

/// Reads and checks one chunk into `buf`.
fn decode(
    store: &Store,
    c: &ChunkRef,
    loc: Location,
    file: FileId,
    version: u32,
    buf: &mut Vec<u8>,
) -> Result<()> {
    store.read_chunk(&c.id, loc, buf)?;
    if buf.len() != c.len as usize {
        return Err(Error::Corrupt {
            location: format!("file {file} version {version}"),
            detail: format!("chunk is {} bytes, the manifest says {}", buf.len(), c.len),
            chunk: Some(c.id.to_hex()),
        });
    }
    Ok(())
}

/// Worker threads decoding chunks `next..last` ahead of the reader, at most `WINDOW` ahead.
struct ReadAhead {
    /// The chunk the reader wants next.
    next: usize,
    results: Receiver<(usize, Result<Vec<u8>>)>,
    stash: BTreeMap<usize, Result<Vec<u8>>>,
    /// Shared with workers: how far the reader has consumed, so they stay inside the window.
    consumed: Arc<(Mutex<usize>, Condvar)>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl ReadAhead {
    fn start(reader: &FileReader, first: usize) -> Self {
        let last = reader.last_chunk();
        let (tx, results) = crossbeam_channel::unbounded();
        let claim = Arc::new(AtomicUsize::new(first));
        let consumed = Arc::new((Mutex::new(first), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..reader.store.inner().config.threads)
            .map(|_| {
                let (store, chunks, tx) = (reader.store.clone(), reader.chunks.clone(), tx.clone());
                let (claim, consumed, stop) = (claim.clone(), consumed.clone(), stop.clone());
                let (file, version) = (reader.file, reader.version);
                let cold = reader.cold.clone();
                std::thread::spawn(move || {
                    let snapshot = store.inner().index.read();
                    loop {
                        let i = claim.fetch_add(1, Ordering::Relaxed);
                        if i >= last {
                            return;
                        }
                        {
                            let (lock, cv) = &*consumed;
                            let mut c = lock.lock().unwrap();
                            while i >= *c + WINDOW && !stop.load(Ordering::Acquire) {
                                c = cv.wait(c).unwrap();
                            }
                        }
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let mut buf = Vec::new();
                        let res = match &snapshot {
                            Ok(r) => locate(r, &chunks[i], file, version).and_then(|loc| {
                                if crate::tier::is_cold_pack(loc.pack) {
                                    cold.store(true, Ordering::Relaxed);
                                }
                                decode(&store, &chunks[i], loc, file, version, &mut buf)
                            }),
                            Err(e) => Err(e.duplicate()),
                        };
                        if tx.send((i, res.map(|()| buf))).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ReadAhead {
            next: first,
            results,
            stash: BTreeMap::new(),
            consumed,
            stop,
            workers,
        }
    }

    /// The decoded chunk `i` (which must be `self.next`).
    fn take(&mut self, i: usize) -> Result<Vec<u8>> {
        debug_assert_eq!(i, self.next);
        let res = loop {
            if let Some(r) = self.stash.remove(&i) {
                break r;
            }
            match self.results.recv() {
                Ok((j, r)) => {
                    self.stash.insert(j, r);
                }
                Err(_) => {
                    break Err(Error::Io {
                        context: "reading ahead".into(),
                        source: io::Error::other("read-ahead workers stopped"),
                    });
                }
            }
        };
        self.next = i + 1;
        let (lock, cv) = &*self.consumed;
        *lock.lock().unwrap() = self.next;
        cv.notify_all();
        res
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.consumed.1.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        // Rehydration on read: on a thread of its own, so dropping a reader never blocks (the
        // HTTP service may drop one on an async worker). Best effort, see `Store::rehydrate`.
        self.ahead = None;
        if self.cold.load(Ordering::Relaxed)
            && self.store.inner().config.rehydrate_on_read
            && !self.store.inner().read_only
        {
            let (store, file) = (self.store.clone(), self.file);
            std::thread::spawn(move || store.rehydrate(file));
        }
    }
}

impl Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end || out.is_empty() {
            return Ok(0);
        }
        // The chunk holding `pos`: the last one starting at or before it.
        let i = self.starts.partition_point(|&s| s <= self.pos) - 1;
        self.load(i).map_err(io::Error::other)?;
        let in_chunk = (self.pos - self.starts[i]) as usize;
        let avail = (self.buf.len() - in_chunk).min((self.end - self.pos) as usize);
        let n = avail.min(out.len());
        out[..n].copy_from_slice(&self.buf[in_chunk..in_chunk + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.len() as i128;
        let rel = (self.pos - self.base) as i128;
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => rel + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        // Seeking past the end is allowed (reads then return 0), as for files.
        self.pos = self.base + (target.min(len) as u64);
        Ok(target as u64)
    }
}
