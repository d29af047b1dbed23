//! Storage tiers: hot data lives in local packs, cold data in an object store behind
//! [`ColdTier`].
//!
//! The seam is deliberately small and object-shaped: the engine writes whole immutable objects
//! (cold packs, tens of MiB each — never one object per chunk), reads them back by byte range,
//! and deletes them when compaction or rehydration no longer needs them. Everything above it —
//! which chunks go cold, the index rows that say where a chunk is, checksums, the local cache —
//! is the engine's, so every implementation (memory, a local directory, S3 through
//! `object_store`) gets the same behaviour and one conformance suite checks them all.
//!
//! The trait is synchronous: the engine's put and get paths are threads, not tasks. An
//! implementation over an async client owns its runtime and blocks on it.

pub(crate) mod cold;
mod faulty;
mod local;
#[cfg(feature = "s3")]
mod s3;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

pub use faulty::FaultyTier;
pub use local::LocalDirTier;
#[cfg(feature = "s3")]
pub use s3::{S3Options, S3Tier, is_loopback_http};

/// Cold pack ids start here; local packs count up from 1 and never get near it. So a chunk
/// row's pack id alone says its tier, and a cold pack id never names a local file.
pub const COLD_PACK_BASE: u32 = 1 << 31;

/// Whether pack `id` is a cold pack (an object in the cold tier).
pub fn is_cold_pack(id: u32) -> bool {
    id >= COLD_PACK_BASE
}

/// What can go wrong talking to a cold tier. Implementations retry transient failures with
/// backoff themselves; an error that reaches the engine is final for this call.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// No object has this key.
    #[error("cold object {key:?} does not exist")]
    NotFound { key: String },
    /// The store did not answer, or answered with a server-side error, through every retry.
    /// Temporary: the same call may succeed later, and nothing was lost.
    #[error("cold tier unavailable: {op} {key:?}: {message}")]
    Unavailable {
        op: &'static str,
        key: String,
        message: String,
    },
    /// Anything that a retry will not fix: credentials refused, no such bucket, a range the
    /// object does not have, a local I/O error.
    #[error("cold tier failed: {op} {key:?}: {message}")]
    Failed {
        op: &'static str,
        key: String,
        message: String,
    },
}

impl TierError {
    /// True for errors worth trying again later (the store was unreachable).
    pub fn is_temporary(&self) -> bool {
        matches!(self, TierError::Unavailable { .. })
    }
}

/// Checks `key` against the key rules of [`ColdTier`]; every implementation refuses a key that
/// breaks them (as `Failed`), so a key that works on one tier works on all.
pub fn check_key(op: &'static str, key: &str) -> Result<(), TierError> {
    let valid = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_graphic())
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if valid {
        Ok(())
    } else {
        Err(TierError::Failed {
            op,
            key: key.to_owned(),
            message: "not a valid object key (relative, /-separated, printable ASCII, no empty, \".\" or \"..\" segment)".into(),
        })
    }
}

/// A secret (an S3 secret key): kept out of `Debug`, logs and serialized settings.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Read from configuration files; never written back (settings fields holding one are
/// `skip_serializing`).
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How long a networked tier (S3) keeps retrying a request before it answers
/// [`TierError::Unavailable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries of one request after its first try. Default 4.
    pub max_retries: usize,
    /// No retry starts once this long has passed since the first try. Default 5 s.
    pub retry_timeout: Duration,
    /// Establishing a connection. Default 2 s.
    pub connect_timeout: Duration,
    /// One request, body included: bounds a part upload or a range read. Default 60 s.
    pub request_timeout: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            max_retries: 4,
            retry_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Options of one put.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectOptions {
    /// Storage class to write the object in (`STANDARD_IA`, `GLACIER_IR`, …). `None`: the
    /// store's default. Implementations without classes ignore it.
    pub storage_class: Option<String>,
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// An object store holding the engine's cold objects.
///
/// Keys are relative: `/`-separated, printable ASCII, no leading `/`, no empty, `.` or `..`
/// segment ([`check_key`]); every call with another key is `Failed`. An implementation maps
/// them under its own root (bucket and prefix, directory).
///
/// Contracts every implementation keeps (checked by the conformance suite):
/// - [`put`](Self::put) returns `Ok` only once the whole object is durable and readable by any
///   later call from any client (read-after-write). A failed or interrupted put never leaves a
///   partial object visible under `key`: readers see the old object, no object, or the new one.
///   A put to an existing key replaces it.
/// - [`get_range`](Self::get_range) returns exactly the bytes `range` of the object. An empty
///   range returns no bytes; a range that reaches past the end is `Failed`, never short data.
/// - [`head`](Self::head) returns the object's size, `None` when it does not exist.
/// - [`delete`](Self::delete) is idempotent: deleting a missing object is `Ok`.
/// - [`list`](Self::list) returns every object whose key starts with `prefix`, sorted by key.
/// - Transient failures are retried inside the call; what is left is `Unavailable`.
///
/// Integrity is not delegated: an S3 ETag is not a content hash. The engine checksums what it
/// writes and checks what it reads.
pub trait ColdTier: Send + Sync + 'static {
    /// Where the objects go, for logs and `stats` (`memory`, `dir:/srv/cold`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// Writes `data` as object `key`, replacing any object of that name.
    fn put(&self, key: &str, data: &[u8], opts: &ObjectOptions) -> Result<(), TierError>;
    /// Bytes `range` of object `key`.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, TierError>;
    /// The size of object `key`, or `None`.
    fn head(&self, key: &str) -> Result<Option<u64>, TierError>;
    /// Removes object `key` if it exists.
    fn delete(&self, key: &str) -> Result<(), TierError>;
    /// Objects whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError>;
}

/// A cold tier in memory: for tests and for trying the engine without an object store.
#[derive(Debug, Default)]
pub struct MemoryTier {
    objects: Mutex<BTreeMap<String, (Vec<u8>, ObjectOptions)>>,
}

impl MemoryTier {
    pub fn new() -> Self {
        Self::default()
    }

    /// The storage class object `key` was written with (tests check that rules pass it on).
    pub fn storage_class(&self, key: &str) -> Option<String> {
        let objects = self.objects.lock().unwrap();
        objects.get(key).and_then(|(_, o)| o.storage_class.clone())
    }
}

impl ColdTier for MemoryTier {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn put(&self, key: &str, data: &[u8], opts: &ObjectOptions) -> Result<(), TierError> {
        check_key("put", key)?;
        let mut objects = self.objects.lock().unwrap();
        objects.insert(key.to_owned(), (data.to_vec(), opts.clone()));
        Ok(())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, TierError> {
        check_key("get", key)?;
        let objects = self.objects.lock().unwrap();
        let (data, _) = objects.get(key).ok_or_else(|| TierError::NotFound {
            key: key.to_owned(),
        })?;
        if range.start > range.end || range.end > data.len() as u64 {
            return Err(TierError::Failed {
                op: "get",
                key: key.to_owned(),
                message: format!(
                    "range {}..{} is outside the object's {} bytes",
                    range.start,
                    range.end,
                    data.len()
                ),
            });
        }
        Ok(data[range.start as usize..range.end as usize].to_vec())
    }

    fn head(&self, key: &str) -> Result<Option<u64>, TierError> {
        check_key("head", key)?;
        let objects = self.objects.lock().unwrap();
        Ok(objects.get(key).map(|(d, _)| d.len() as u64))
    }

    fn delete(&self, key: &str) -> Result<(), TierError> {
        check_key("delete", key)?;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        let objects = self.objects.lock().unwrap();
        Ok(objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (d, _))| ObjectInfo {
                key: k.clone(),
                size: d.len() as u64,
            })
            .collect())
    }
}
