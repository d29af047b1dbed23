//! Bearer-token authentication: who is calling. Access rules live with the handlers: a user
//! sees their own files and public files, an admin sees everything.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::index::UserRecord;
use crate::store::FileInfo;

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

/// May `caller` read `file`? Deleted and quarantined files are only for admins.
pub fn can_read(caller: Option<&UserRecord>, file: &FileInfo) -> bool {
    match caller {
        Some(u) if u.admin => true,
        _ if file.deleted || file.quarantined => false,
        Some(u) => u.name == file.owner || file.public,
        None => file.public,
    }
}

/// May `user` change `file` (delete, undelete, link)?
pub fn can_write(user: &UserRecord, file: &FileInfo) -> bool {
    user.admin || user.name == file.owner
}
