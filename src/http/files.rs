//! The file endpoints: multipart upload, listing, metadata, download, delete/undelete,
//! versions, signed links, and the small operational ones (stats, health).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Admin, Caller, User, can_read, can_write};
use super::download::{self, Cache, Target};
use super::error::{ApiError, ApiResult};
use super::links::{FLAG_ATTACHMENT, Grant, LinkError};
use super::multipart::{self, UploadKind};
use super::{AppState, blocking};
use crate::id::FileId;
use crate::index::UserRecord;
use crate::store::{FileInfo, ListQuery};

/// A path id that does not parse names no file: 404, like any unknown id.
fn parse_id(raw: &str) -> ApiResult<FileId> {
    raw.parse().map_err(|_| ApiError::not_found("file"))
}

/// The file `raw` names, if `caller` may read it; another user's private file is "not found".
pub(crate) async fn readable(
    state: &AppState,
    caller: Option<&UserRecord>,
    raw: &str,
) -> ApiResult<FileInfo> {
    let id = parse_id(raw)?;
    let store = state.store.clone();
    let file = blocking(move || store.stat(id)).await?;
    if can_read(caller, &file) {
        Ok(file)
    } else if caller.is_none() {
        Err(ApiError::unauthorized())
    } else {
        Err(ApiError::not_found("file"))
    }
}

/// The file `raw` names, if `user` may change it.
async fn writable(state: &AppState, user: &UserRecord, raw: &str) -> ApiResult<FileInfo> {
    let id = parse_id(raw)?;
    let store = state.store.clone();
    let file = blocking(move || store.stat(id)).await?;
    if can_write(user, &file) {
        Ok(file)
    } else if can_read(Some(user), &file) {
        Err(ApiError::forbidden(
            "only the owner or an admin may change this file",
        ))
    } else {
        Err(ApiError::not_found("file"))
    }
}

/// `POST /api/files`: multipart with one or many file parts. Text fields `category` and
/// `public` apply to the file parts after them; `key` to the next file part only. The request
/// is admitted (size, quota) before its body is read and bounded while it is read (see
/// `multipart`); each file is validated on its own, so one bad file does not fail the others:
/// the answer is 201 when all are stored, 207 with a result per file when some are, and the
/// first failure's status when none are.
pub async fn upload(
    State(state): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    multipart::receive(state, user, headers, body, UploadKind::Files).await
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListParams {
    prefix: Option<String>,
    category: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    /// Admins only: whose files.
    owner: Option<String>,
    deleted: bool,
}

/// `GET /api/files`: the caller's files (an admin may name another owner), paginated with an
/// opaque cursor: pass `next` back as `after`.
pub async fn list(
    State(state): State<AppState>,
    User(user): User,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let owner = match p.owner {
        Some(o) if user.admin => o,
        Some(o) if o != user.name => {
            return Err(ApiError::forbidden(
                "only admins may list another owner's files",
            ));
        }
        _ => user.name.clone(),
    };
    let q = ListQuery {
        owner: Some(owner),
        prefix: p.prefix,
        category: p.category,
        include_deleted: p.deleted,
        quarantined_only: false,
        after: p.after,
        limit: Some(p.limit.unwrap_or(100).clamp(1, 1000)),
    };
    let store = state.store.clone();
    let page = blocking(move || store.list(&q)).await?;
    Ok(Json(json!({ "files": page.files, "next": page.next })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct GetParams {
    version: Option<u32>,
    /// Serve as an attachment.
    download: bool,
}

/// `GET`/`HEAD /api/files/{id}[?version=N]`.
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    method: Method,
    headers: HeaderMap,
    params: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = parse_id(&raw)?;
    let store = state.store.clone();
    // One trip to the blocking pool for both lookups: small downloads are dominated by hops.
    let (file, info) = blocking(move || {
        let file = store.stat(id)?;
        let info = store.version_info(id, p.version.unwrap_or(file.version));
        Ok((file, info))
    })
    .await?;
    if !can_read(caller.as_ref(), &file) {
        return Err(match caller {
            None => ApiError::unauthorized(),
            Some(_) => ApiError::not_found("file"),
        });
    }
    let info = info?;
    if info.infected() && !caller.as_ref().is_some_and(|u| u.admin) {
        return Err(ApiError::not_found("file"));
    }
    let cache = match (file.public, p.version.is_some()) {
        (true, true) => Cache::Immutable,
        (true, false) => Cache::Public,
        _ => Cache::Private,
    };
    download::serve(
        &state,
        &method,
        &headers,
        Target {
            file: id,
            version: info,
            cache,
            attachment: p.download,
        },
    )
    .await
}

/// `GET /api/files/{id}/meta`.
pub async fn meta(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(readable(&state, caller.as_ref(), &raw).await?).into_response())
}

/// `GET /api/files/{id}/versions`.
pub async fn versions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let file = readable(&state, caller.as_ref(), &raw).await?;
    let store = state.store.clone();
    let versions = blocking(move || store.versions(file.id)).await?;
    Ok(Json(json!({ "id": file.id, "versions": versions })).into_response())
}

/// `DELETE /api/files/{id}`: a soft delete, undone by `POST .../undelete` until purged.
pub async fn delete(
    State(state): State<AppState>,
    User(user): User,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let file = writable(&state, &user, &raw).await?;
    if file.deleted {
        return Err(ApiError::not_found("file"));
    }
    let store = state.store.clone();
    let file = blocking(move || store.delete(file.id)).await?;
    Ok(Json(file).into_response())
}

/// `POST /api/files/{id}/undelete`.
pub async fn undelete(
    State(state): State<AppState>,
    User(user): User,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    let store = state.store.clone();
    let file = blocking(move || store.stat(id)).await?;
    // A deleted file is invisible to its owner's reads, but the owner may bring it back.
    if !can_write(&user, &file) {
        return Err(ApiError::not_found("file"));
    }
    let store = state.store.clone();
    let file = blocking(move || store.undelete(id)).await?;
    Ok(Json(file).into_response())
}

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

/// `POST /api/files/{id}/link`: a signed URL that serves this version without a token until
/// it expires.
pub async fn link(
    State(state): State<AppState>,
    User(user): User,
    Path(raw): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let p: LinkParams = if body.iter().all(u8::is_ascii_whitespace) {
        LinkParams::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("link options: {e}")))?
    };
    let file = readable(&state, Some(&user), &raw).await?;
    let version = p.version.unwrap_or(file.version);
    let store = state.store.clone();
    let id = file.id;
    blocking(move || store.version_info(id, version)).await?;
    let links = &state.settings.links;
    let ttl = p
        .ttl
        .unwrap_or(links.default_ttl.as_secs())
        .clamp(1, links.max_ttl.as_secs());
    let expires_s = state.now_s() + ttl as i64;
    let token = state.signer.sign(&Grant {
        file: id,
        version,
        expires_s,
        flags: if p.download { FLAG_ATTACHMENT } else { 0 },
    });
    let url = format!("{}/d/{token}", state.public_url);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "url": url, "expires_at": expires_s, "version": version })),
    )
        .into_response())
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
        _ => ApiError::new(
            StatusCode::FORBIDDEN,
            "link_invalid",
            "the link is not valid",
        ),
    })?;
    let store = state.store.clone();
    let (file, info) = blocking(move || {
        let file = store.stat(grant.file)?;
        let info = store.version_info(grant.file, grant.version)?;
        Ok((file, info))
    })
    .await?;
    if file.deleted || file.quarantined || info.infected() {
        return Err(ApiError::not_found("file"));
    }
    download::serve(
        &state,
        &method,
        &headers,
        Target {
            file: file.id,
            version: info,
            cache: Cache::Signed {
                max_age_s: (grant.expires_s - now).max(0) as u64,
                // A variant's bytes at a pinned version never change (see media).
                immutable: file.metadata.get("variant_of").is_some(),
            },
            attachment: grant.flags & FLAG_ATTACHMENT != 0,
        },
    )
    .await
}

/// `GET /api/admin/storage/stats`.
pub async fn admin_stats(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> ApiResult<Response> {
    tracing::debug!(admin = %admin.name, "storage stats");
    let store = state.store.clone();
    let (stats, users, scanner) =
        blocking(move || Ok((store.stats()?, store.user_count()?, store.scanner_status()))).await?;
    let mut body = json!({ "store": stats, "users": users });
    if let Some(s) = scanner {
        body["scanner"] = json!(s);
    }
    Ok(Json(body).into_response())
}

/// Query of `POST /api/admin/scan/rescan`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RescanParams {
    dry_run: bool,
    all_categories: bool,
    recheck_infected: bool,
}

/// `POST /api/admin/scan/rescan`: rescans stored files (after a signature update) and answers
/// with the report: new hits are quarantined. It runs to the end of the store before it
/// answers; a scanner that goes down meanwhile is a 503 (the hits found so far are recorded).
pub async fn rescan(
    State(state): State<AppState>,
    Admin(admin): Admin,
    params: Result<Query<RescanParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    tracing::info!(admin = %admin.name, dry_run = p.dry_run, "rescan");
    let store = state.store.clone();
    let report = blocking(move || {
        store.rescan(&crate::RescanOptions {
            dry_run: p.dry_run,
            all_categories: p.all_categories,
            recheck_infected: p.recheck_infected,
        })
    })
    .await?;
    Ok(Json(report).into_response())
}

/// `GET /api/admin/quarantine`: quarantined files of every owner (or `owner`'s), with the
/// signature found, paginated like `GET /api/files`.
pub async fn quarantine(
    State(state): State<AppState>,
    Admin(_): Admin,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let q = ListQuery {
        owner: p.owner,
        prefix: None,
        category: p.category,
        include_deleted: p.deleted,
        quarantined_only: true,
        after: p.after,
        limit: Some(p.limit.unwrap_or(100).clamp(1, 1000)),
    };
    let store = state.store.clone();
    let page = blocking(move || store.list(&q)).await?;
    Ok(Json(json!({ "files": page.files, "next": page.next })).into_response())
}

/// `GET /healthz`: the store answers a read; with scanning configured, the scanner's version
/// (or why it does not answer: uploads it must scan are then refused, or stored unscanned).
pub async fn healthz(State(state): State<AppState>) -> ApiResult<Response> {
    let store = state.store.clone();
    let (stats, scanner) = blocking(move || Ok((store.stats()?, store.scanner_status()))).await?;
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "files": stats.files,
    });
    if let Some(s) = scanner {
        body["scanner"] = json!(s);
    }
    Ok(Json(body).into_response())
}
