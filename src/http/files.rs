//! The file endpoints: multipart upload, listing, metadata, download, delete/undelete,
//! versions, and the small operational ones (stats, health).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Admin, Caller, Subject, User, can_read, can_write};
use super::download::{self, Cache, Target};
use super::error::{ApiError, ApiResult};
use super::multipart::{self, UploadKind};
use super::{AppState, blocking};
use crate::error::Error;
use crate::id::FileId;
use crate::index::UserRecord;
use crate::store::{FileInfo, ListQuery};

/// A path id that does not parse names no file: 404, like any unknown id.
pub(crate) fn parse_id(raw: &str) -> ApiResult<FileId> {
    raw.parse().map_err(|_| ApiError::not_found("file"))
}

/// Looks up a [`Subject`] on the blocking pool. Whatever is missing — file, version, the
/// original of a variant — is the one uniform "file not found", the answer a file the caller
/// may not read gets too, so the two cannot be told apart.
pub(crate) async fn subject(
    state: &AppState,
    id: FileId,
    version: Option<u32>,
) -> ApiResult<Subject> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || Subject::load(&store, id, version)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(Error::NotFound { .. })) => Err(ApiError::not_found("file")),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("worker failed: {e}"),
        )),
    }
}

/// The file `raw` names with its current version, if `caller` may read it. A file the
/// caller may not read is "not found", exactly like a missing one, with or without a token.
pub(crate) async fn readable(
    state: &AppState,
    caller: Option<&UserRecord>,
    raw: &str,
) -> ApiResult<Subject> {
    let id = parse_id(raw)?;
    let subject = subject(state, id, None).await?;
    if can_read(caller, &subject) {
        Ok(subject)
    } else {
        Err(ApiError::not_found("file"))
    }
}

/// The file `raw` names, if `user` may change it: another user's file is 404, or 403 when the
/// user may read it (it is public, so its existence is no secret).
pub(crate) async fn writable(
    state: &AppState,
    user: &UserRecord,
    raw: &str,
) -> ApiResult<FileInfo> {
    let id = parse_id(raw)?;
    let subject = subject(state, id, None).await?;
    if can_write(user, &subject.file) {
        Ok(subject.file)
    } else if can_read(Some(user), &subject) {
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
    // One trip to the blocking pool for every lookup: small downloads are dominated by hops.
    let subject = subject(&state, id, p.version).await?;
    if !can_read(caller.as_ref(), &subject) {
        return Err(ApiError::not_found("file"));
    }
    // Only content anyone may read is cacheable by shared caches; what the caller reads as
    // owner or admin is private, 304s included (they carry the same header).
    let cache = match (subject.open_to_all(), p.version.is_some()) {
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
            version: subject.version,
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
    Ok(Json(readable(&state, caller.as_ref(), &raw).await?.file).into_response())
}

/// `GET /api/files/{id}/versions`: every version for the owner and admins; for anyone else
/// only the versions they may read.
pub async fn versions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let subject = readable(&state, caller.as_ref(), &raw).await?;
    let store = state.store.clone();
    let id = subject.file.id;
    let versions = blocking(move || store.versions(id)).await?;
    let versions: Vec<_> = versions
        .into_iter()
        .filter(|v| can_read(caller.as_ref(), &subject.with_version(v.clone())))
        .collect();
    Ok(Json(json!({ "id": id, "versions": versions })).into_response())
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

/// `GET /healthz`: the store answers a read. Anyone learns only that (`{"status": "ok"}`);
/// an admin also gets the build version, the file count and, with scanning configured, the
/// scanner's version or why it does not answer (uploads it must scan are then refused, or
/// stored unscanned) — facts an attacker probing the service has no use for.
pub async fn healthz(State(state): State<AppState>, Caller(caller): Caller) -> ApiResult<Response> {
    let admin = caller.is_some_and(|u| u.admin);
    let store = state.store.clone();
    let (stats, scanner) = blocking(move || {
        let stats = store.stats()?;
        Ok((stats, admin.then(|| store.scanner_status()).flatten()))
    })
    .await?;
    let mut body = json!({ "status": "ok" });
    if admin {
        body["version"] = json!(env!("CARGO_PKG_VERSION"));
        body["files"] = json!(stats.files);
        if let Some(s) = scanner {
            body["scanner"] = json!(s);
        }
    }
    Ok(Json(body).into_response())
}
