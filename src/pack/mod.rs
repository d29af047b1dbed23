//! Packs: append-only files of self-describing records (chunks, manifests, events).
//!
//! `record` and `manifest` are the pure codec; `storage` is the I/O seam; this file is the writer
//! and reader the store uses. The protocol in one paragraph (details in docs/design.md): records
//! are appended to one active pack; [`Packs::sync`] makes everything appended so far durable and
//! returns the durable length of every pack touched since the last commit; the index commit
//! records those lengths; bytes past a pack's committed length belong to no committed operation
//! and are truncated at the next open.

pub mod account;
pub mod manifest;
pub mod record;
pub mod storage;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, IoContext, Result};
use record::{RecordError, RecordHeader};
use storage::{PackBytes, PackFile, PackStorage};

pub use storage::FsPackStorage;

/// Bytes read through pack maps between two releases of their pages (see
/// `Packs::note_mapped_read`): bounds the file pages a reader keeps resident.
const RELEASE_EVERY: u64 = 32 << 20;

/// First bytes of every pack file.
pub const PACK_MAGIC: [u8; 8] = *b"TESSPACK";
/// Version of the pack format.
pub const PACK_FORMAT: u16 = 1;
/// Length of the pack header; the first record starts here.
pub const PACK_HEADER_LEN: u64 = 64;

/// Encodes the 64-byte pack header.
pub fn encode_pack_header(pack_id: u32, store_id: u128) -> [u8; PACK_HEADER_LEN as usize] {
    let mut h = [0u8; PACK_HEADER_LEN as usize];
    h[..8].copy_from_slice(&PACK_MAGIC);
    h[8..10].copy_from_slice(&PACK_FORMAT.to_le_bytes());
    h[10..12].copy_from_slice(&(PACK_HEADER_LEN as u16).to_le_bytes());
    h[12..16].copy_from_slice(&pack_id.to_le_bytes());
    h[16..32].copy_from_slice(&store_id.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a pack header, returning `(pack_id, store_id)`.
pub fn decode_pack_header(h: &[u8]) -> std::result::Result<(u32, u128), String> {
    if h.len() < PACK_HEADER_LEN as usize {
        return Err(format!("pack header truncated to {} bytes", h.len()));
    }
    if h[..8] != PACK_MAGIC {
        return Err("not a pack file (bad magic)".into());
    }
    if crc32c::crc32c(&h[..60]) != u32::from_le_bytes(h[60..64].try_into().unwrap()) {
        return Err("pack header checksum mismatch".into());
    }
    let format = u16::from_le_bytes(h[8..10].try_into().unwrap());
    if format != PACK_FORMAT {
        return Err(format!(
            "pack format {format} is not supported (this build reads {PACK_FORMAT})"
        ));
    }
    let pack_id = u32::from_le_bytes(h[12..16].try_into().unwrap());
    let store_id = u128::from_le_bytes(h[16..32].try_into().unwrap());
    Ok((pack_id, store_id))
}

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    /// Whole record length, framing included.
    pub len: u32,
}

/// The durable state of one pack, as the index records it at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackState {
    pub id: u32,
    /// Bytes known durable.
    pub len: u64,
    /// No more appends will happen.
    pub sealed: bool,
}

/// What opening the packs found and did.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// `(pack, bytes)` discarded past the committed length: writes of operations that never
    /// committed, including torn tails.
    pub truncated: Vec<(u32, u64)>,
    /// Packs found on disk that the index does not know; they hold no committed data and were
    /// removed.
    pub removed: Vec<u32>,
    /// Packs shorter than their committed length, or missing: committed data is gone. Reads of
    /// it fail with `Error::Corrupt`; `verify` names the files.
    pub damaged: Vec<(u32, String)>,
}

struct Active {
    id: u32,
    file: Arc<dyn PackFile>,
    /// End of the last complete append.
    len: u64,
    /// A failed write could not be rolled back: no more appends go to this pack.
    poisoned: bool,
}

struct Writer {
    active: Option<Active>,
    next_id: u32,
    /// Packs with bytes written but not yet synced: `id -> (file, written len, sealed)`.
    unsynced: BTreeMap<u32, (Arc<dyn PackFile>, u64, bool)>,
    /// Durable state not yet recorded by an index commit.
    dirty: BTreeMap<u32, PackState>,
}

/// The set of packs of one store.
pub struct Packs {
    storage: Arc<dyn PackStorage>,
    store_id: u128,
    target_size: u64,
    read_only: bool,
    writer: Mutex<Writer>,
    /// Id of the pack currently appended to (`u32::MAX` when none); every other pack is sealed.
    active_id: AtomicU32,
    maps: RwLock<HashMap<u32, PackBytes>>,
    /// Bytes read through `maps` since their pages were last released.
    mapped_reads: AtomicU64,
    files: RwLock<HashMap<u32, Arc<dyn PackFile>>>,
}

impl Packs {
    /// Opens the packs of a store against the index's view of them (`known`: the state recorded
    /// at the last commit). Truncates every pack to its committed length and removes packs the
    /// index has never heard of — unless `read_only`, which changes nothing on disk, ignores bytes
    /// past the committed lengths and refuses appends.
    pub fn open(
        storage: Arc<dyn PackStorage>,
        store_id: u128,
        target_size: u64,
        known: &[PackState],
        read_only: bool,
    ) -> Result<(Self, OpenReport)> {
        let mut report = OpenReport::default();
        let on_disk = storage.list().ctx(|| "listing pack files".into())?;
        let known_map: HashMap<u32, PackState> = known.iter().map(|p| (p.id, *p)).collect();
        let mut files = HashMap::new();
        for &id in &on_disk {
            let Some(state) = known_map.get(&id) else {
                if read_only {
                    continue;
                }
                tracing::warn!(
                    pack = id,
                    "removing pack unknown to the index (no committed data)"
                );
                storage
                    .remove(id)
                    .ctx(|| format!("removing {}", storage.describe(id)))?;
                report.removed.push(id);
                continue;
            };
            let file = storage
                .open(id)
                .ctx(|| format!("opening {}", storage.describe(id)))?;
            let len = file
                .size()
                .ctx(|| format!("reading length of {}", storage.describe(id)))?;
            if len > state.len && read_only {
                // Not ours to cut; reads only go to committed locations.
            } else if len > state.len {
                tracing::warn!(
                    pack = id,
                    bytes = len - state.len,
                    "truncating uncommitted pack tail"
                );
                file.truncate(state.len)
                    .ctx(|| format!("truncating {} to {}", storage.describe(id), state.len))?;
                report.truncated.push((id, len - state.len));
            } else if len < state.len {
                let msg = format!(
                    "{} is {len} bytes but {} were committed",
                    storage.describe(id),
                    state.len
                );
                tracing::error!("{msg}");
                report.damaged.push((id, msg));
            }
            files.insert(id, file);
        }
        for p in known {
            if !on_disk.contains(&p.id) {
                let msg = format!("{} is missing", storage.describe(p.id));
                tracing::error!("{msg}");
                report.damaged.push((p.id, msg));
            }
        }

        // Keep appending to the newest pack if it was left open and has room.
        let next_id = on_disk
            .iter()
            .chain(known.iter().map(|p| &p.id))
            .max()
            .map_or(1, |m| m + 1);
        let mut active = None;
        if let Some(last) = known.iter().max_by_key(|p| p.id)
            && !read_only
            && !last.sealed
            && last.len < target_size
            && let Some(file) = files.get(&last.id)
            && !report.damaged.iter().any(|(d, _)| *d == last.id)
        {
            active = Some(Active {
                id: last.id,
                file: file.clone(),
                len: last.len,
                poisoned: false,
            });
        }
        let active_id = active.as_ref().map_or(u32::MAX, |a| a.id);
        let packs = Packs {
            storage,
            store_id,
            target_size,
            read_only,
            writer: Mutex::new(Writer {
                active,
                next_id,
                unsynced: BTreeMap::new(),
                dirty: BTreeMap::new(),
            }),
            active_id: AtomicU32::new(active_id),
            maps: RwLock::new(HashMap::new()),
            mapped_reads: AtomicU64::new(0),
            files: RwLock::new(files),
        };
        Ok((packs, report))
    }

    pub fn storage(&self) -> &Arc<dyn PackStorage> {
        &self.storage
    }

    /// Appends `buf` — one or more whole encoded records — and returns where it starts. The
    /// bytes are readable at once but durable only after [`Packs::sync`].
    pub fn append(&self, buf: &[u8]) -> Result<Location> {
        if self.read_only {
            return Err(Error::InvalidInput("the store is open read-only".into()));
        }
        let mut w = self.writer.lock().unwrap();
        let must_roll = match &w.active {
            None => true,
            Some(a) => {
                a.poisoned
                    || (a.len > PACK_HEADER_LEN && a.len + buf.len() as u64 > self.target_size)
            }
        };
        if must_roll {
            self.roll(&mut w)?;
        }
        let a = w.active.as_mut().expect("roll leaves an active pack");
        let offset = a.len;
        if let Err(e) = a.file.write_at(offset, buf) {
            // Roll back so the next append lands on a clean boundary; if even that fails, stop
            // appending to this pack (its tail is garbage past the committed length, which the
            // next open truncates).
            if a.file.truncate(offset).is_err() {
                a.poisoned = true;
            }
            return Err(Error::Io {
                context: format!(
                    "writing {} bytes to {} at offset {offset}",
                    buf.len(),
                    self.storage.describe(a.id)
                ),
                source: e,
            });
        }
        a.len += buf.len() as u64;
        let (id, file, len) = (a.id, a.file.clone(), a.len);
        w.unsynced.insert(id, (file, len, false));
        Ok(Location {
            pack: id,
            offset,
            len: buf.len() as u32,
        })
    }

    /// Seals the active pack (if any) and starts a new one.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        if let Some(old) = w.active.take() {
            // A poisoned pack's good prefix is `old.len`; sync will make that durable.
            w.unsynced.insert(old.id, (old.file.clone(), old.len, true));
            self.active_id.store(u32::MAX, Ordering::Release);
        }
        let id = w.next_id;
        let describe = || format!("creating {}", self.storage.describe(id));
        let file = self.storage.create(id).ctx(describe)?;
        w.next_id += 1;
        let header = encode_pack_header(id, self.store_id);
        if let Err(e) = file.write_at(0, &header) {
            // The pack exists but is unusable; leave it for the next open to remove (it is
            // unknown to the index) and report the error.
            return Err(e).ctx(|| format!("writing header of {}", self.storage.describe(id)));
        }
        self.files.write().unwrap().insert(id, file.clone());
        w.unsynced
            .insert(id, (file.clone(), PACK_HEADER_LEN, false));
        w.active = Some(Active {
            id,
            file,
            len: PACK_HEADER_LEN,
            poisoned: false,
        });
        self.active_id.store(id, Ordering::Release);
        Ok(())
    }

    /// Makes everything appended so far durable, and returns the durable state of each pack
    /// changed since the last [`Packs::committed`].
    ///
    /// The fsyncs run without the writer lock, so appends of other threads proceed meanwhile.
    pub fn sync(&self) -> Result<Vec<PackState>> {
        let todo: Vec<(u32, Arc<dyn PackFile>, u64, bool)> = {
            let w = self.writer.lock().unwrap();
            w.unsynced
                .iter()
                .map(|(&id, (f, len, sealed))| (id, f.clone(), *len, *sealed))
                .collect()
        };
        for (id, file, _, _) in &todo {
            file.sync()
                .ctx(|| format!("syncing {}", self.storage.describe(*id)))?;
        }
        let mut w = self.writer.lock().unwrap();
        for (id, _, len, sealed) in todo {
            let state = w.dirty.entry(id).or_insert(PackState {
                id,
                len: 0,
                sealed: false,
            });
            state.len = state.len.max(len);
            state.sealed |= sealed;
            // Forget the entry only if nothing was appended since we looked.
            if let Some((_, cur_len, cur_sealed)) = w.unsynced.get(&id)
                && *cur_len == len
                && *cur_sealed == sealed
            {
                w.unsynced.remove(&id);
            }
        }
        Ok(w.dirty.values().copied().collect())
    }

    /// Tells the packs that an index commit recorded `states`, so they need not be reported
    /// again.
    pub fn committed(&self, states: &[PackState]) {
        let mut w = self.writer.lock().unwrap();
        for s in states {
            if w.dirty.get(&s.id) == Some(s) {
                w.dirty.remove(&s.id);
            }
        }
    }

    /// Reads and checks the record at `loc`, returning its header and plain payload.
    pub fn read(&self, loc: Location) -> Result<(RecordHeader, Vec<u8>)> {
        let mut plain = Vec::new();
        let header = self.read_into(loc, &mut plain)?;
        Ok((header, plain))
    }

    /// [`Packs::read`] into a reusable buffer.
    pub fn read_into(&self, loc: Location, plain: &mut Vec<u8>) -> Result<RecordHeader> {
        let corrupt = |e: RecordError| {
            Error::corrupt(
                format!(
                    "{} at offset {}",
                    self.storage.describe(loc.pack),
                    loc.offset
                ),
                e.to_string(),
            )
        };
        let with_record = |bytes: &[u8], plain: &mut Vec<u8>| -> Result<RecordHeader> {
            let (header, stored) = record::decode_record(bytes).map_err(corrupt)?;
            if header.record_len() != loc.len as u64 {
                return Err(corrupt(RecordError::LengthMismatch {
                    declared: loc.len,
                    actual: header.record_len(),
                }));
            }
            record::decode_payload_into(&header, stored, plain).map_err(corrupt)?;
            Ok(header)
        };
        if loc.pack != self.active_id.load(Ordering::Acquire) {
            let map = self.map(loc.pack)?;
            let bytes = map.bytes();
            let end = loc.offset + loc.len as u64;
            if end > bytes.len() as u64 {
                return Err(corrupt(RecordError::Truncated {
                    need: end,
                    have: bytes.len() as u64,
                }));
            }
            let header = with_record(&bytes[loc.offset as usize..end as usize], plain);
            self.note_mapped_read(loc.len as u64);
            return header;
        }
        let file = self.file(loc.pack)?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_at(loc.offset, &mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt(RecordError::Truncated {
                    need: loc.offset + loc.len as u64,
                    have: file.size().unwrap_or(0),
                })
            } else {
                Error::Io {
                    context: format!(
                        "reading {} at {}",
                        self.storage.describe(loc.pack),
                        loc.offset
                    ),
                    source: e,
                }
            }
        })?;
        with_record(&buf, plain)
    }

    /// The record at `loc` as stored, framing included, unchecked (moves between tiers copy
    /// records as they are, after checking them themselves).
    pub fn read_raw(&self, loc: Location) -> Result<Vec<u8>> {
        let end = loc.offset + loc.len as u64;
        if loc.pack != self.active_id.load(Ordering::Acquire) {
            let map = self.map(loc.pack)?;
            let bytes = map.bytes();
            if end > bytes.len() as u64 {
                return Err(Error::corrupt(
                    self.storage.describe(loc.pack),
                    format!("record {}..{end} lies past the end of the pack", loc.offset),
                ));
            }
            self.note_mapped_read(loc.len as u64);
            return Ok(bytes[loc.offset as usize..end as usize].to_vec());
        }
        let mut buf = vec![0u8; loc.len as usize];
        self.file(loc.pack)?
            .read_at(loc.offset, &mut buf)
            .ctx(|| format!("reading {}", self.storage.describe(loc.pack)))?;
        Ok(buf)
    }

    fn file(&self, id: u32) -> Result<Arc<dyn PackFile>> {
        if let Some(f) = self.files.read().unwrap().get(&id) {
            return Ok(f.clone());
        }
        let f = self
            .storage
            .open(id)
            .ctx(|| format!("opening {}", self.storage.describe(id)))?;
        self.files.write().unwrap().insert(id, f.clone());
        Ok(f)
    }

    /// Counts bytes read through maps; every [`RELEASE_EVERY`] bytes, lets every mapped page
    /// leave the process's resident set. Without this, streaming a 2 GiB file leaves 2 GiB of
    /// file pages counted in RSS; releasing per record instead costs a syscall and refaults on
    /// every read (get throughput fell by half when we tried it).
    fn note_mapped_read(&self, n: u64) {
        let total = self.mapped_reads.fetch_add(n, Ordering::Relaxed) + n;
        if total >= RELEASE_EVERY {
            self.mapped_reads.store(0, Ordering::Relaxed);
            for m in self.maps.read().unwrap().values() {
                m.release(0..m.bytes().len());
            }
        }
    }

    fn map(&self, id: u32) -> Result<PackBytes> {
        if let Some(m) = self.maps.read().unwrap().get(&id) {
            return Ok(m.clone());
        }
        let m = self.storage.map(id).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::corrupt(self.storage.describe(id), "pack file is missing")
            } else {
                Error::Io {
                    context: format!("mapping {}", self.storage.describe(id)),
                    source: e,
                }
            }
        })?;
        self.maps.write().unwrap().insert(id, m.clone());
        Ok(m)
    }

    /// The whole current contents of pack `id` (for verify and recover): the map of a sealed
    /// pack, or a copy of the active one.
    pub fn contents(&self, id: u32) -> Result<PackBytes> {
        if id != self.active_id.load(Ordering::Acquire) {
            return self.map(id);
        }
        let file = self.file(id)?;
        let len = file
            .size()
            .ctx(|| format!("reading length of {}", self.storage.describe(id)))?;
        let mut buf = vec![0u8; len as usize];
        file.read_at(0, &mut buf)
            .ctx(|| format!("reading {}", self.storage.describe(id)))?;
        Ok(Arc::new(buf))
    }

    /// The lowest pack id any append from now on can land in: the active pack, or the next
    /// one to be created. Compaction never takes a pack at or above what a put in flight saw
    /// here when it started (see `maintenance::gc`).
    pub fn lowest_writable(&self) -> u32 {
        let w = self.writer.lock().unwrap();
        w.active.as_ref().map_or(w.next_id, |a| a.id)
    }

    /// The pack appended to now, if any.
    pub fn active(&self) -> Option<u32> {
        let id = self.active_id.load(Ordering::Acquire);
        (id != u32::MAX).then_some(id)
    }

    /// Seals the active pack if it is `id`: the next append starts a new pack. (Compaction
    /// seals a pack before it rewrites it.)
    pub fn seal(&self, id: u32) {
        let mut w = self.writer.lock().unwrap();
        if w.active.as_ref().is_some_and(|a| a.id == id) {
            let old = w.active.take().expect("checked");
            w.unsynced.insert(old.id, (old.file.clone(), old.len, true));
            self.active_id.store(u32::MAX, Ordering::Release);
        }
    }

    /// Whether pack `id` is open (exists and was not removed).
    pub fn has(&self, id: u32) -> bool {
        self.files.read().unwrap().contains_key(&id)
    }

    /// Ids of all open packs, ascending.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.files.read().unwrap().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Stops reporting pack `id`'s pending state (compaction, just before the commit that forgets
    /// the pack). Compaction commits outside the committer's leader lock, so a leader that takes
    /// the index right after that commit — before compaction called [`Packs::committed`] and
    /// [`Packs::remove`] — would otherwise find the pack still pending in `sync` and write its
    /// row back, naming a file about to be deleted. Returns what was pending, for
    /// [`Packs::unretire`] when the commit fails.
    pub fn retire(&self, id: u32) -> Option<PackState> {
        let mut w = self.writer.lock().unwrap();
        w.unsynced.remove(&id);
        w.dirty.remove(&id)
    }

    /// Undoes [`Packs::retire`] after a failed commit: the state is pending again.
    pub fn unretire(&self, state: Option<PackState>) {
        if let Some(s) = state {
            let mut w = self.writer.lock().unwrap();
            let e = w.dirty.entry(s.id).or_insert(s);
            e.len = e.len.max(s.len);
            e.sealed |= s.sealed;
        }
    }

    /// Deletes a sealed pack that the committed index no longer references (compaction only).
    pub fn remove(&self, id: u32) -> Result<()> {
        {
            let mut w = self.writer.lock().unwrap();
            if w.active.as_ref().is_some_and(|a| a.id == id) {
                return Err(Error::InvalidInput(format!("pack {id} is active")));
            }
            w.unsynced.remove(&id);
            w.dirty.remove(&id);
        }
        self.maps.write().unwrap().remove(&id);
        self.files.write().unwrap().remove(&id);
        self.storage
            .remove(id)
            .ctx(|| format!("removing {}", self.storage.describe(id)))
    }

    pub fn store_id(&self) -> u128 {
        self.store_id
    }

    /// Bytes on disk in all packs.
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for id in self.storage.list().ctx(|| "listing pack files".into())? {
            total += self
                .file(id)?
                .size()
                .ctx(|| format!("reading length of {}", self.storage.describe(id)))?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_header_round_trips_and_rejects_damage() {
        let h = encode_pack_header(7, 0xdead_beef);
        assert_eq!(decode_pack_header(&h).unwrap(), (7, 0xdead_beef));
        let mut bad = h;
        bad[20] ^= 1;
        assert!(decode_pack_header(&bad).unwrap_err().contains("checksum"));
        assert!(decode_pack_header(&h[..10]).is_err());
        assert!(
            decode_pack_header(
                b"something else entirely, not a pack header at all, at least 64 bytes"
            )
            .is_err()
        );
    }
}
