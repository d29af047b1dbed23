//! A fault injector as a wrapper: any [`ColdTier`] made unreachable or corrupting on demand,
//! for tests of the engine's error paths (STYLE: behaviour added by wrapping a trait).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{ColdTier, ObjectInfo, ObjectOptions, TierError};

/// Wraps a tier. While [`set_unavailable`](Self::set_unavailable) is on, every call fails with
/// [`TierError::Unavailable`] (as a real store's client does once its retries are spent);
/// while [`set_corrupt_reads`](Self::set_corrupt_reads) is on, `get_range` flips one bit of
/// what it returns. Counts the calls that reach the inner tier.
pub struct FaultyTier {
    inner: Arc<dyn ColdTier>,
    unavailable: AtomicBool,
    corrupt_reads: AtomicBool,
    /// Puts that fail (`Unavailable`) before the next one succeeds.
    failing_puts: AtomicU64,
    pub gets: AtomicU64,
    pub puts: AtomicU64,
}

impl FaultyTier {
    pub fn new(inner: Arc<dyn ColdTier>) -> Self {
        FaultyTier {
            inner,
            unavailable: AtomicBool::new(false),
            corrupt_reads: AtomicBool::new(false),
            failing_puts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            puts: AtomicU64::new(0),
        }
    }

    pub fn set_unavailable(&self, on: bool) {
        self.unavailable.store(on, Ordering::SeqCst);
    }

    pub fn set_corrupt_reads(&self, on: bool) {
        self.corrupt_reads.store(on, Ordering::SeqCst);
    }

    /// The next `n` puts fail with `Unavailable`.
    pub fn fail_puts(&self, n: u64) {
        self.failing_puts.store(n, Ordering::SeqCst);
    }

    fn check(&self, op: &'static str, key: &str) -> Result<(), TierError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(TierError::Unavailable {
                op,
                key: key.to_owned(),
                message: "injected fault: the object store does not answer".into(),
            });
        }
        Ok(())
    }
}

impl ColdTier for FaultyTier {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn put(&self, key: &str, data: &[u8], opts: &ObjectOptions) -> Result<(), TierError> {
        self.check("put", key)?;
        let failing = self
            .failing_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(TierError::Unavailable {
                op: "put",
                key: key.to_owned(),
                message: "injected fault: put failed".into(),
            });
        }
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, data, opts)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, TierError> {
        self.check("get", key)?;
        self.gets.fetch_add(1, Ordering::SeqCst);
        let mut data = self.inner.get_range(key, range)?;
        if self.corrupt_reads.load(Ordering::SeqCst) && !data.is_empty() {
            let at = data.len() / 2;
            data[at] ^= 0x10;
        }
        Ok(data)
    }

    fn head(&self, key: &str) -> Result<Option<u64>, TierError> {
        self.check("head", key)?;
        self.inner.head(key)
    }

    fn delete(&self, key: &str) -> Result<(), TierError> {
        self.check("delete", key)?;
        self.inner.delete(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        self.check("list", prefix)?;
        self.inner.list(prefix)
    }
}
