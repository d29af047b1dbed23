//! The I/O seam under the pack layer: where pack files live and how bytes reach the disk.
//!
//! The engine only ever talks to [`PackStorage`] and [`PackFile`]; [`FsPackStorage`] is the real
//! implementation. Tests wrap these traits to inject faults (a write that fails with ENOSPC, a
//! sync that fails) without a single branch in the engine.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Read-only bytes of a sealed pack (a memory map for [`FsPackStorage`]).
pub type PackBytes = Arc<dyn PackMap>;

/// A read-only view of a sealed pack.
pub trait PackMap: Send + Sync {
    fn bytes(&self) -> &[u8];

    /// The reader is done with `range` for now. A memory map lets those pages leave the
    /// process's resident set — they stay in the page cache and come back on the next touch —
    /// so streaming a large file does not grow RSS by the file's size. Contents never change.
    fn release(&self, _range: Range<usize>) {}
}

impl PackMap for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Holds a pack view and releases all of it when dropped: for whole-pack scans (verify,
/// recover), so RSS stays at about one pack whatever the store's size.
pub struct ReleaseOnDrop(pub PackBytes);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release(0..self.0.bytes().len());
    }
}

const PAGE: usize = 4096;

impl PackMap for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn release(&self, range: Range<usize>) {
        let start = range.start / PAGE * PAGE;
        let end = range
            .end
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(self.len());
        if start >= end {
            return;
        }
        // SAFETY: this is a read-only shared mapping of a file nobody writes (a sealed pack), so
        // MADV_DONTNEED only drops our page-table entries: the next access faults the same bytes
        // back in from the page cache. (On a private or anonymous mapping it would zero them,
        // which is why memmap2 makes it unsafe.) Failure only means the pages stay resident.
        let _ = unsafe {
            self.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

/// A directory of pack files, named by a `u32` id.
///
/// Contract:
/// - `create` never overwrites: it fails if the pack exists. When it returns, the new pack's
///   *name* is durable (the directory entry is synced), so a later `sync` of the file is enough
///   to make its contents survive a crash.
/// - `map` is only called for sealed packs, which nobody writes or truncates afterwards.
/// - `remove` is used only by maintenance, never on the put or get path.
pub trait PackStorage: Send + Sync + 'static {
    /// Ids of the packs that exist, ascending.
    fn list(&self) -> io::Result<Vec<u32>>;
    /// Creates pack `id`, empty.
    fn create(&self, id: u32) -> io::Result<Arc<dyn PackFile>>;
    /// Opens an existing pack for reading and appending.
    fn open(&self, id: u32) -> io::Result<Arc<dyn PackFile>>;
    /// Maps a sealed pack read-only.
    fn map(&self, id: u32) -> io::Result<PackBytes>;
    /// Deletes pack `id`.
    fn remove(&self, id: u32) -> io::Result<()>;
    /// A human-readable location for messages ("packs/00000003.pack").
    fn describe(&self, id: u32) -> String;
}

/// One open pack file. All methods take `&self`: positioned reads and writes need no cursor, so
/// readers never wait for the writer.
///
/// Contract:
/// - `write_at` either writes all of `buf` or returns an error; after an error the bytes at
///   `offset..offset + buf.len()` are unspecified until truncated.
/// - `sync` is a write barrier: everything written before it returns is durable when it
///   returns (fdatasync).
/// - `read_at` reads exactly `buf.len()` bytes or fails with `UnexpectedEof`.
pub trait PackFile: Send + Sync {
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// Pack files in a local directory: `NNNNNNNN.pack`.
pub struct FsPackStorage {
    dir: PathBuf,
}

impl FsPackStorage {
    /// Uses (and creates if needed) `dir` for packs.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        crate::disk::create_private_dir(&dir)?;
        Ok(FsPackStorage { dir })
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08}.pack"))
    }
}

/// fsync of a directory, so that entries created in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl PackStorage for FsPackStorage {
    fn list(&self) -> io::Result<Vec<u32>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".pack")
                && stem.len() == 8
                && let Ok(id) = stem.parse::<u32>()
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn create(&self, id: u32) -> io::Result<Arc<dyn PackFile>> {
        let file = crate::disk::private_options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(id))?;
        sync_dir(&self.dir)?;
        Ok(Arc::new(FsPackFile(file)))
    }

    fn open(&self, id: u32) -> io::Result<Arc<dyn PackFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(id))?;
        Ok(Arc::new(FsPackFile(file)))
    }

    fn map(&self, id: u32) -> io::Result<PackBytes> {
        let file = File::open(self.path(id))?;
        if file.metadata()?.len() == 0 {
            return Ok(Arc::new(Vec::<u8>::new()));
        }
        // SAFETY: sealed packs are never written or truncated while the store is open (the store
        // lock keeps other Tessera processes out); see "What we assume of the disk" in
        // docs/design.md for what an outside writer would do to us.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Arc::new(map))
    }

    fn remove(&self, id: u32) -> io::Result<()> {
        fs::remove_file(self.path(id))?;
        sync_dir(&self.dir)
    }

    fn describe(&self, id: u32) -> String {
        self.path(id).display().to_string()
    }
}

struct FsPackFile(File);

impl PackFile for FsPackFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.sync_all()
    }
}
