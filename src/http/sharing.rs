//! Sharing endpoints: signed links (minting `POST /api/files/{id}/link`, serving `GET /d/{token}`,
//! revoking `DELETE /api/files/{id}/links`) and visibility (`POST /api/files/{id}/visibility`).
//!
//! Only the owner or an admin mints a link, and only to a version a link may serve. A link is a
//! capability checked twice: its signature and expiry when it arrives, then, at serve time, the
//! file as it is now — the version still exists, file and original (for a variant) are neither
//! deleted nor quarantined, the version is not infected, and the file's link epoch is still the
//! one the link was minted in (revocation, delete and going private move it on).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Origin, Subject, User};
use super::download::{self, Cache, Target};
use super::error::{ApiError, ApiResult};
use super::files::{subject, writable};
use super::links::{FLAG_ATTACHMENT, Grant, LinkError};
use super::{AppState, blocking};

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LinkParams {
    /// Life of the link in seconds (default from configuration, capped by `max_ttl`).
    ttl: Option<u64>,
    /// Pin a version; default the current one.
    version: Option<u32>,
    /// Serve as an attachment.
    download: bool,
}

/// A JSON body that may be empty (then the defaults).
fn options<T: for<'de> Deserialize<'de> + Default>(body: &Bytes, what: &str) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

/// Mints the token of a link to `s` for `expires_s`; `None` when no link may serve it (a
/// variant whose original is gone).
pub(crate) fn sign(state: &AppState, s: &Subject, expires_s: i64, flags: u8) -> Option<String> {
    Some(state.signer.sign(&Grant {
        file: s.file.id,
        version: s.version.version,
        expires_s,
        flags,
        epoch: s.link_epoch()?,
    }))
}

/// `POST /api/files/{id}/link`: a signed URL that serves this version without a token until
/// it expires or is revoked. Owner or admin only; another user's file is 404 (403 when it is
/// public to them).
pub async fn link(
    State(state): State<AppState>,
    User(user): User,
    Path(raw): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let p: LinkParams = options(&body, "link options")?;
    let file = writable(&state, &user, &raw).await?;
    let subject = subject(&state, file.id, p.version).await?;
    if !subject.servable() {
        // Deleted, quarantined or infected: no link could serve it. An owner may not know the
        // file at all in those states; an admin learns why.
        return Err(if user.admin {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_linkable",
                "the file is deleted or quarantined, or the version is infected",
            )
        } else {
            ApiError::not_found("file")
        });
    }
    let links = &state.settings.links;
    let ttl = p
        .ttl
        .unwrap_or(links.default_ttl.as_secs())
        .clamp(1, links.max_ttl.as_secs());
    let expires_s = state.now_s() + ttl as i64;
    let flags = if p.download { FLAG_ATTACHMENT } else { 0 };
    let token =
        sign(&state, &subject, expires_s, flags).ok_or_else(|| ApiError::not_found("file"))?;
    let url = format!("{}/d/{token}", state.public_url);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "url": url,
            "expires_at": expires_s,
            "version": subject.version.version,
        })),
    )
        .into_response())
}

/// `DELETE /api/files/{id}/links`: revokes every link of the file minted so far (204).
pub async fn revoke(
    State(state): State<AppState>,
    User(user): User,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    // Deleted files too: their links are dead already, but the owner may want to be sure.
    let id = writable(&state, &user, &raw).await?.id;
    let store = state.store.clone();
    blocking(move || store.revoke_links(id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisibilityParams {
    public: bool,
}

/// `POST /api/files/{id}/visibility` `{"public": bool}`: makes the current version public or
/// private (older versions keep theirs; going private hides them all and revokes every link).
pub async fn visibility(
    State(state): State<AppState>,
    User(user): User,
    Path(raw): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let p: VisibilityParams = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "visibility: expected {{\"public\": true|false}}: {e}"
        ))
    })?;
    let file = writable(&state, &user, &raw).await?;
    if file.deleted {
        return Err(ApiError::not_found("file"));
    }
    let store = state.store.clone();
    let file = blocking(move || store.set_public(file.id, p.public)).await?;
    Ok(Json(file).into_response())
}

/// `GET`/`HEAD /d/{token}`: a signed link, no bearer token needed.
pub async fn signed(
    State(state): State<AppState>,
    Path(token): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let now = state.now_s();
    let grant = state.signer.verify(&token, now).map_err(|e| match e {
        LinkError::Expired => ApiError::new(
            StatusCode::FORBIDDEN,
            "link_expired",
            "the link has expired",
        ),
        LinkError::Outdated => ApiError::new(
            StatusCode::FORBIDDEN,
            "link_invalid",
            "links of this kind are no longer honoured; ask the owner for a new one",
        ),
        _ => ApiError::new(
            StatusCode::FORBIDDEN,
            "link_invalid",
            "the link is not valid",
        ),
    })?;
    let subject = subject(&state, grant.file, Some(grant.version)).await?;
    if !subject.servable() {
        return Err(ApiError::not_found("file"));
    }
    if subject.link_epoch() != Some(grant.epoch) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "link_revoked",
            "the link was revoked",
        ));
    }
    let variant = matches!(subject.origin, Origin::VariantOf(_));
    download::serve(
        &state,
        &method,
        &headers,
        Target {
            file: subject.file.id,
            version: subject.version,
            cache: Cache::Signed {
                // Private (never in a shared cache), and no longer than the link lives.
                max_age_s: (grant.expires_s - now).max(0) as u64,
                // A variant's bytes at a pinned version never change (see media).
                immutable: variant,
            },
            attachment: grant.flags & FLAG_ATTACHMENT != 0,
        },
    )
    .await
}
