//! Bearer-token authentication (who is calling) and the access rule (what they may read):
//! [`can_read`] over a [`Subject`], one version of a file. Owners and admins read every
//! version; others only versions open to all (docs/design.md "Visibility"). Whoever may not
//! read a file gets the answer a missing file gets: 404, signed in or not.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::error::{Error, Result};
use crate::id::FileId;
use crate::index::UserRecord;
use crate::store::{FileInfo, Store, VersionInfo};

/// The caller, when the request carries a valid token. A request with a token that is wrong
/// is refused outright (401) even on routes that also serve anonymous callers: a client with
/// a stale token should learn it, not silently get less.
pub struct Caller(pub Option<UserRecord>);

/// A caller that must be signed in.
pub struct User(pub UserRecord);

/// A caller that must be an admin.
pub struct Admin(pub UserRecord);

fn bearer(parts: &Parts) -> ApiResult<Option<&str>> {
    let Some(v) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ApiError::unauthorized())?;
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(ApiError::unauthorized()),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let Some(token) = bearer(parts)? else {
            return Ok(Caller(None));
        };
        // One redb read transaction: microseconds, fine on the async thread.
        match state.store.authenticate(token)? {
            Some(user) => Ok(Caller(Some(user))),
            None => Err(ApiError::unauthorized()),
        }
    }
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        match Caller::from_request_parts(parts, state).await?.0 {
            Some(u) => Ok(User(u)),
            None => Err(ApiError::unauthorized()),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let User(u) = User::from_request_parts(parts, state).await?;
        if u.admin {
            Ok(Admin(u))
        } else {
            Err(ApiError::forbidden("this endpoint needs an admin token"))
        }
    }
}

/// What an access decision looks at: a file, one of its versions, and — for an image
/// variant — the original version it was made from.
pub struct Subject {
    pub file: FileInfo,
    pub version: VersionInfo,
    pub origin: Origin,
}

/// Where a file's content comes from, for the rules.
#[derive(Clone)]
pub enum Origin {
    /// An ordinary file.
    Own,
    /// An image variant (`variant_of` in its metadata) of this original version, which has the
    /// same owner: the variant follows the original's rule.
    VariantOf(Box<(FileInfo, VersionInfo)>),
    /// A variant whose original (or that version of it) is gone: it serves no one but its
    /// owner and admins.
    Gone,
}

impl Subject {
    /// Looks the subject up: `file`'s version `version` (the current one when `None`), and the
    /// original when it is a variant. Blocking: run it on the blocking pool.
    pub fn load(store: &Store, id: FileId, version: Option<u32>) -> Result<Subject> {
        let file = store.stat(id)?;
        let version = store.version_info(id, version.unwrap_or(file.version))?;
        let origin = Origin::of(store, &file)?;
        Ok(Subject {
            file,
            version,
            origin,
        })
    }

    /// The subject with another version of the same file.
    pub fn with_version(&self, version: VersionInfo) -> Subject {
        Subject {
            file: self.file.clone(),
            version,
            origin: self.origin.clone(),
        }
    }

    /// The file whose link epoch this subject's links carry: the original's for a variant.
    pub fn link_epoch(&self) -> Option<u32> {
        match &self.origin {
            Origin::Own => Some(self.file.link_epoch),
            Origin::VariantOf(o) => Some(o.0.link_epoch),
            Origin::Gone => None,
        }
    }

    /// Anyone, without a token, may read this version: public content, the only kind that may
    /// be cached by shared caches. A version is open when the file is neither deleted nor
    /// quarantined, the version is not infected, it was written (or made) public, and the
    /// file's current version is public too — so making a file private hides all of it, and a
    /// version written private never opens, whatever later versions are. A variant is open
    /// when its original's version is (its own flag is not consulted: variants follow their
    /// original).
    pub fn open_to_all(&self) -> bool {
        let (file, v) = (&self.file, &self.version);
        let served = !file.deleted && !file.quarantined && !v.infected();
        served
            && match &self.origin {
                Origin::Own => v.public && file.public,
                Origin::VariantOf(o) => open_version(&o.0, &o.1),
                Origin::Gone => false,
            }
    }

    /// Is this live content a link may serve: file and original neither deleted nor
    /// quarantined, versions not infected? (Visibility is not asked: links are how an owner
    /// shares private content.)
    pub fn servable(&self) -> bool {
        let ok = |f: &FileInfo, v: &VersionInfo| !f.deleted && !f.quarantined && !v.infected();
        ok(&self.file, &self.version)
            && match &self.origin {
                Origin::Own => true,
                Origin::VariantOf(o) => ok(&o.0, &o.1),
                Origin::Gone => false,
            }
    }
}

impl Origin {
    fn of(store: &Store, file: &FileInfo) -> Result<Origin> {
        let Some(of) = file.metadata.get("variant_of") else {
            return Ok(Origin::Own);
        };
        let original = of
            .get("file")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<FileId>().ok());
        let version = of
            .get("version")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok());
        let (Some(original), Some(version)) = (original, version) else {
            return Ok(Origin::Gone);
        };
        let found = store
            .stat(original)
            .and_then(|f| Ok((store.version_info(original, version)?, f)));
        match found {
            // Only the owner's own image can be a file's original.
            Ok((v, f)) if f.owner == file.owner => Ok(Origin::VariantOf(Box::new((f, v)))),
            Ok(_) | Err(Error::NotFound { .. }) => Ok(Origin::Gone),
            Err(e) => Err(e),
        }
    }
}

/// An ordinary version open to all (see [`Subject::open_to_all`]).
fn open_version(file: &FileInfo, v: &VersionInfo) -> bool {
    !file.deleted && !file.quarantined && !v.infected() && v.public && file.public
}

/// May `caller` read the subject's version? Admins read everything (deleted files too, where
/// the route serves them); an owner reads every version of their files except while the file
/// is deleted or quarantined, and never an infected version; anyone else (signed in or not)
/// only what is [open to all](Subject::open_to_all).
pub fn can_read(caller: Option<&UserRecord>, s: &Subject) -> bool {
    match caller {
        Some(u) if u.admin => true,
        Some(u) if u.name == s.file.owner => {
            !s.file.deleted && !s.file.quarantined && !s.version.infected()
        }
        _ => s.open_to_all(),
    }
}

/// May `user` change `file` (delete, undelete, visibility, links)?
pub fn can_write(user: &UserRecord, file: &FileInfo) -> bool {
    user.admin || user.name == file.owner
}
