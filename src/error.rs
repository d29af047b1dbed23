//! Errors callers can act on.
//!
//! Rules for errors in this crate:
//! - One enum for the engine ([`Error`]); lower layers (pack codec, index) have their own small
//!   enums that convert into it with context attached, so a message always says *which* pack,
//!   chunk, file or path was involved.
//! - Variants are chosen by what a caller would do differently: retry later ([`Error::Locked`]),
//!   fix the input ([`Error::InvalidInput`]), tell the user it is gone ([`Error::NotFound`]),
//!   page an operator ([`Error::Corrupt`]). Everything else is [`Error::Io`] or
//!   [`Error::Index`] with the operation named.
//! - No error path panics; a panic in the engine is a bug.

use std::io;
use std::path::PathBuf;

/// The result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from the Tessera engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file, version, key or chunk does not exist (or is deleted, for reads of live data).
    #[error("not found: {what}")]
    NotFound { what: String },

    /// Another process (or another `Store` in this process) holds the store's lock.
    #[error("store {path} is in use by another process (lock file is held)")]
    Locked { path: PathBuf },

    /// The directory is not a Tessera store, or was made by an incompatible version.
    #[error("{path} is not a usable Tessera store: {reason}")]
    NotAStore { path: PathBuf, reason: String },

    /// The configuration asks for something the existing store cannot honour, e.g. other chunk
    /// parameters than the ones the store was created with (that would defeat deduplication).
    #[error("configuration does not match the store: {0}")]
    ConfigMismatch(String),

    /// The thing to create exists already (a store in that directory, say).
    #[error("already exists: {what}")]
    AlreadyExists { what: String },

    /// The caller passed something the engine refuses: an empty key, a hostile name, a range past
    /// the end of the file...
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Stored data failed a checksum or structural check. `chunk` names the damaged chunk when
    /// one is known.
    #[error("corrupt data in {location}: {detail}{}", chunk.as_ref().map(|c| format!(" (chunk {c})")).unwrap_or_default())]
    Corrupt {
        location: String,
        detail: String,
        chunk: Option<String>,
    },

    /// An I/O operation failed; `context` says which one and on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The redb index failed.
    #[error("index error while {context}: {detail}")]
    Index { context: String, detail: String },

    /// The input is larger than a configured limit (a category's maximum size, the largest
    /// upload). Decided from a declared size before any byte is read when one is given, else
    /// while streaming; nothing is committed either way.
    #[error("too large: {what} (limit {limit} bytes)")]
    TooLarge { limit: u64, what: String },

    /// Validation refused the content: a type the category does not allow, or magic bytes that
    /// disagree with the extension or the declared type. `code` is a stable machine-readable
    /// reason (`type_not_allowed`, `type_mismatch`, ...).
    #[error("rejected ({code}): {detail}")]
    Rejected { code: &'static str, detail: String },

    /// The request does not fit the current state, e.g. a resumable upload's offset differs
    /// from the offset the caller sent. Nothing changed.
    #[error("conflict: {0}")]
    Conflict(String),

    /// Data arrived with a checksum that does not match it; the data was discarded.
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),

    /// Someone else is working on the same object right now (a second writer to one upload
    /// session); retry later.
    #[error("busy: {0}")]
    Busy(String),

    /// The object existed but has expired (an upload session past its expiry).
    #[error("expired: {what}")]
    Expired { what: String },

    /// The virus scanner found `signature` in the content. The file was stored as `file`,
    /// quarantined: it is kept but never served to users (see `scan`).
    #[error(
        "infected: the content matches the virus signature {signature}; file {file} is quarantined"
    )]
    Infected {
        file: crate::id::FileId,
        signature: String,
    },

    /// The virus scanner could not be reached, timed out or failed, and the store fails closed:
    /// nothing was stored; retry later.
    #[error("virus scanner unavailable, nothing was stored: {0}")]
    ScanUnavailable(String),

    /// The upload does not fit the owner's (or the owner's organisation's) quota: usage plus
    /// the uploads in flight plus this one would pass the limit. Decided before any byte is
    /// stored when the size is declared, else while streaming; nothing is committed.
    #[error(
        "quota exceeded: {scope} {name:?} stores {used} of its {limit} bytes ({percentage:.2} %), \
         {reserved} more are reserved by uploads in flight, and {requested} more do not fit",
        scope = .0.scope, name = .0.name, used = .0.used, limit = .0.limit,
        percentage = .0.percentage, reserved = .0.reserved, requested = .0.requested
    )]
    QuotaExceeded(Box<crate::quota::Exceeded>),

    /// The caller holds too much of something already (open upload sessions, their
    /// metadata): nothing was created. `code` is a stable reason (`too_many_sessions`,
    /// `session_metadata_budget`); the same call may succeed after `retry_after_s` seconds,
    /// when the oldest of what is held expires (or sooner, if the caller finishes or abandons
    /// some of it). HTTP answers 429 with `Retry-After`.
    #[error("too many: {detail}")]
    TooMany {
        code: &'static str,
        detail: String,
        retry_after_s: u64,
    },

    /// A service the operation needs (the cold tier's object store) did not answer, through
    /// its own retries. Temporary: nothing was lost or changed, and the same call may succeed
    /// later. HTTP answers 503 with `Retry-After`.
    #[error("temporarily unavailable: {context}: {message}")]
    Unavailable { context: String, message: String },
}

impl Error {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    pub(crate) fn corrupt(location: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            detail: detail.into(),
            chunk: None,
        }
    }

    /// An equal error for a second recipient: a group commit that fails reports the same
    /// failure to every put in the group. `io::Error`s keep their kind and message.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::NotFound { what } => Error::NotFound { what: what.clone() },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::NotAStore { path, reason } => Error::NotAStore {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::ConfigMismatch(m) => Error::ConfigMismatch(m.clone()),
            Error::AlreadyExists { what } => Error::AlreadyExists { what: what.clone() },
            Error::InvalidInput(m) => Error::InvalidInput(m.clone()),
            Error::Corrupt {
                location,
                detail,
                chunk,
            } => Error::Corrupt {
                location: location.clone(),
                detail: detail.clone(),
                chunk: chunk.clone(),
            },
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            Error::Index { context, detail } => Error::Index {
                context: context.clone(),
                detail: detail.clone(),
            },
            Error::TooLarge { limit, what } => Error::TooLarge {
                limit: *limit,
                what: what.clone(),
            },
            Error::Rejected { code, detail } => Error::Rejected {
                code,
                detail: detail.clone(),
            },
            Error::Conflict(m) => Error::Conflict(m.clone()),
            Error::ChecksumMismatch(m) => Error::ChecksumMismatch(m.clone()),
            Error::Busy(m) => Error::Busy(m.clone()),
            Error::Expired { what } => Error::Expired { what: what.clone() },
            Error::Infected { file, signature } => Error::Infected {
                file: *file,
                signature: signature.clone(),
            },
            Error::ScanUnavailable(m) => Error::ScanUnavailable(m.clone()),
            Error::QuotaExceeded(x) => Error::QuotaExceeded(x.clone()),
            Error::TooMany {
                code,
                detail,
                retry_after_s,
            } => Error::TooMany {
                code,
                detail: detail.clone(),
                retry_after_s: *retry_after_s,
            },
            Error::Unavailable { context, message } => Error::Unavailable {
                context: context.clone(),
                message: message.clone(),
            },
        }
    }

    /// True when the same call may succeed later (the cold tier was unreachable).
    pub fn is_temporary(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// True when the error reports damaged stored data rather than a failed operation.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }

    /// True when the underlying cause is a full disk (ENOSPC / EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

/// Attaches a description of the operation to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

/// An error reading a put's input. Readers on the put path carry the engine's own errors
/// inside `io::Error` (the validation guard's [`Error::TooLarge`]); those come back out
/// unchanged, so the put fails with what refused it rather than a generic [`Error::Io`].
pub(crate) fn input_error(e: io::Error) -> Error {
    match e.downcast::<Error>() {
        Ok(inner) => inner,
        Err(source) => Error::Io {
            context: "reading the input".into(),
            source,
        },
    }
}
