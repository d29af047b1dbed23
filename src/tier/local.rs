//! A cold tier in a local directory: for tests that need objects to outlive a process (crash
//! tests), and for a store that keeps its cold data on a cheaper mounted disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ColdTier, ObjectInfo, ObjectOptions, TierError, check_key};

/// Objects are files under `root`, named by their key plus [`OBJ_SUFFIX`]: the suffix keeps
/// an object's file apart from the directory of the keys below it, so `a` and `a/b` can both
/// exist, as in any object store. A put writes a temporary file, fsyncs it, renames it over
/// the object's file and fsyncs the directory, so a crash leaves the old object or the new one,
/// never a torn one. (One name clash remains: key `a` cannot coexist with keys under `a.obj/`.)
#[derive(Debug)]
pub struct LocalDirTier {
    root: PathBuf,
    tmp_seq: AtomicU64,
}

/// Temporary files of puts in progress: never listed, never returned.
const TMP_SUFFIX: &str = ".tessera-tmp";
/// Suffix of every object's file name (directories carry none).
const OBJ_SUFFIX: &str = ".obj";

impl LocalDirTier {
    /// A tier rooted at `root`, which is created if missing.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        crate::disk::create_private_dir(&root)?;
        Ok(Self {
            root,
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn path(&self, op: &'static str, key: &str) -> Result<PathBuf, TierError> {
        check_key(op, key)?;
        Ok(self.root.join(format!("{key}{OBJ_SUFFIX}")))
    }
}

fn failed(op: &'static str, key: &str, e: io::Error) -> TierError {
    TierError::Failed {
        op,
        key: key.to_owned(),
        message: e.to_string(),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ColdTier for LocalDirTier {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn put(&self, key: &str, data: &[u8], _opts: &ObjectOptions) -> Result<(), TierError> {
        let path = self.path("put", key)?;
        let dir = path.parent().expect("keys are under the root");
        crate::disk::create_private_dir(dir).map_err(|e| failed("put", key, e))?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_file_name(format!(
            "{}.{}.{seq}{TMP_SUFFIX}",
            path.file_name().unwrap().to_string_lossy(),
            std::process::id()
        ));
        let write = || -> io::Result<()> {
            let mut f = crate::disk::private_options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(dir)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            failed("put", key, e)
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, TierError> {
        let path = self.path("get", key)?;
        let f = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => TierError::NotFound {
                key: key.to_owned(),
            },
            _ => failed("get", key, e),
        })?;
        let meta = f.metadata().map_err(|e| failed("get", key, e))?;
        if !meta.is_file() {
            return Err(TierError::NotFound {
                key: key.to_owned(),
            });
        }
        let size = meta.len();
        if range.start > range.end || range.end > size {
            return Err(TierError::Failed {
                op: "get",
                key: key.to_owned(),
                message: format!(
                    "range {}..{} is outside the object's {size} bytes",
                    range.start, range.end
                ),
            });
        }
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        f.read_exact_at(&mut buf, range.start)
            .map_err(|e| failed("get", key, e))?;
        Ok(buf)
    }

    fn head(&self, key: &str) -> Result<Option<u64>, TierError> {
        let path = self.path("head", key)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(failed("head", key, e)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), TierError> {
        let path = self.path("delete", key)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap()).map_err(|e| failed("delete", key, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed("delete", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        let mut out = Vec::new();
        let mut dirs = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| failed("list", prefix, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = format!("{rel}{name}");
                let ty = entry.file_type().map_err(|e| failed("list", prefix, e))?;
                if ty.is_dir() {
                    // Only descend where keys with the prefix can be.
                    let sub = format!("{key}/");
                    if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                        dirs.push((entry.path(), sub));
                    }
                } else if let Some(key) = key.strip_suffix(OBJ_SUFFIX)
                    && key.starts_with(prefix)
                {
                    let key = key.to_owned();
                    let size = entry
                        .metadata()
                        .map_err(|e| failed("list", prefix, e))?
                        .len();
                    out.push(ObjectInfo { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
