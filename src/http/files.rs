//! The file endpoints: multipart upload, listing, metadata, download, delete/undelete,
//! versions, signed links, and the small operational ones (stats, health).

use std::io;

use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::{Admin, Caller, Subject, User, can_read, can_write};
use super::body_idle::{is_body_timeout, timeout_answer};
use super::bridge::{ChannelReader, QUEUE};
use super::download::{self, Cache, Target};
use super::error::{ApiError, ApiResult};
use super::{AppState, blocking, metrics};
use crate::error::Error;
use crate::id::FileId;
use crate::index::UserRecord;
use crate::store::{FileInfo, ListQuery, PutOptions};

/// Largest text field (category, key, public) read from a multipart body.
const MAX_TEXT_FIELD: usize = 4096;

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

#[derive(Serialize)]
struct FileResult {
    /// The file name the client sent for this part.
    name: Option<String>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<FileInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// The virus signature, when the file was refused as infected.
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    /// used, limit, percentage... when the file did not fit the quota.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    quota: Option<Box<super::error::QuotaFigures>>,
    /// On a server-side failure: the id its log lines carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(skip)]
    status: StatusCode,
}

impl FileResult {
    fn failed(name: Option<String>, e: ApiError) -> Self {
        metrics::upload_failed();
        FileResult {
            name,
            ok: false,
            file: None,
            error: Some(e.code),
            message: Some(e.message),
            signature: e.signature,
            quota: e.quota,
            request_id: e.request_id,
            status: e.status,
        }
    }
}

fn parse_bool(s: &str) -> ApiResult<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "`public` must be true or false, got {other:?}"
        ))),
    }
}

/// `POST /api/files`: multipart with one or many file parts. Text fields `category` and
/// `public` apply to the file parts after them; `key` to the next file part only. Each file is
/// validated and committed on its own, so one bad file does not fail the others: the answer
/// is 201 when all are stored, 207 with a result per file when some are, and the first
/// failure's status when none are.
pub async fn upload(
    State(state): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    receive(state, user, headers, multipart, UploadKind::Files).await
}

/// What a multipart upload stores.
#[derive(Clone)]
pub(crate) enum UploadKind {
    Files,
    /// Images, probed before they commit, with their variants scheduled (`POST /api/images`;
    /// the options come from form fields before the file parts).
    #[cfg(feature = "media")]
    Images(crate::media::ImageOptions),
}

/// A multipart upload: every file part is stored on its own, with a result per file.
pub(crate) async fn receive(
    state: AppState,
    user: UserRecord,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    #[allow(unused_mut)] mut kind: UploadKind,
) -> ApiResult<Response> {
    let max = state.settings.uploads.max_upload.as_u64();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared
        && n > max
    {
        return Err(Error::TooLarge {
            limit: max,
            what: format!("a request body of {n} bytes"),
        }
        .into());
    }
    let mut mp = multipart
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.body_text()))?;

    let mut category: Option<String> = None;
    let mut key: Option<String> = None;
    let mut public = false;
    let mut results: Vec<FileResult> = Vec::new();
    let mut received: u64 = 0;
    let mut malformed: Option<String> = None;
    // The body stalled (server.body_idle_timeout): 408 instead of 400.
    let mut timed_out = false;
    let stall = state.settings.server.body_idle_timeout;
    let cut = |timed_out: bool, message: String| {
        if timed_out {
            timeout_answer(format!(
                "no byte of the upload arrived for {}; the file was not stored",
                humantime::format_duration(stall)
            ))
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", message)
        }
    };

    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                timed_out |= is_body_timeout(&e);
                malformed = Some(e.body_text());
                break;
            }
        };
        let field_name = field.name().unwrap_or_default().to_string();
        let Some(file_name) = field.file_name().map(str::to_string) else {
            let mut text = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(b)) if text.len() + b.len() <= MAX_TEXT_FIELD => {
                        text.extend_from_slice(&b)
                    }
                    Ok(Some(_)) => {
                        return Err(ApiError::bad_request(format!(
                            "form field {field_name:?} is longer than {MAX_TEXT_FIELD} bytes"
                        )));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        timed_out |= is_body_timeout(&e);
                        malformed = Some(e.body_text());
                        break;
                    }
                }
            }
            if malformed.is_some() {
                break;
            }
            let text = String::from_utf8(text).map_err(|_| {
                ApiError::bad_request(format!("form field {field_name:?} is not UTF-8"))
            })?;
            match field_name.as_str() {
                "category" => category = Some(text.trim().to_string()).filter(|c| !c.is_empty()),
                "key" => key = Some(text.trim().to_string()).filter(|k| !k.is_empty()),
                "public" => public = parse_bool(&text)?,
                #[cfg(feature = "media")]
                other if matches!(kind, UploadKind::Images(_)) => {
                    if let UploadKind::Images(options) = &mut kind {
                        super::images::option_field(options, other, &text)?;
                    }
                }
                _ => {} // Unknown fields are ignored, as browsers send submit buttons and such.
            }
            continue;
        };

        // A browser says octet-stream when it does not know: that is no declaration at all.
        let mime = field
            .content_type()
            .map(str::to_string)
            .filter(|m| m != "application/octet-stream");
        // A part may declare its own length: then the quota is reserved before its bytes.
        let declared_size = field
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        // A client's put: the server decides the category, and its size limit applies.
        let opts = PutOptions {
            declared_size,
            key: key.take(),
            name: Some(file_name.clone()),
            category: category.clone(),
            mime,
            public,
            ..PutOptions::client(&user.name)
        };
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
        let store = state.store.clone();
        let this = kind.clone();
        let job = tokio::task::spawn_blocking(move || match this {
            UploadKind::Files => store.put(ChannelReader::new(rx), &opts),
            #[cfg(feature = "media")]
            UploadKind::Images(options) => store.put_image(ChannelReader::new(rx), &opts, &options),
        });

        let mut over_limit = false;
        loop {
            match field.chunk().await {
                Ok(Some(b)) => {
                    received += b.len() as u64;
                    if received > max {
                        over_limit = true;
                        let _ = tx
                            .send(Err(io::Error::other("upload over the limit")))
                            .await;
                        break;
                    }
                    if tx.send(Ok(b)).await.is_err() {
                        break; // The put ended early (rejected); its error says why.
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // A cut or garbled body: the put must fail, never commit a prefix.
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    timed_out |= is_body_timeout(&e);
                    malformed = Some(e.body_text());
                    break;
                }
            }
        }
        drop(tx);
        let outcome = job.await.map_err(|e| Error::Io {
            context: "the upload worker".into(),
            source: io::Error::other(e.to_string()),
        });
        let result = match outcome.and_then(|r| r) {
            Ok(report) => {
                metrics::upload_done(report.file.size);
                FileResult {
                    name: Some(file_name),
                    ok: true,
                    file: Some(report.file),
                    error: None,
                    message: None,
                    signature: None,
                    quota: None,
                    request_id: None,
                    status: StatusCode::CREATED,
                }
            }
            Err(_) if over_limit => FileResult::failed(
                Some(file_name),
                Error::TooLarge {
                    limit: max,
                    what: "the upload".into(),
                }
                .into(),
            ),
            Err(_) if malformed.is_some() => FileResult::failed(
                Some(file_name),
                cut(timed_out, malformed.clone().unwrap_or_default()),
            ),
            Err(e) => FileResult::failed(Some(file_name), e.into()),
        };
        results.push(result);
        if over_limit || malformed.is_some() {
            break;
        }
    }

    if results.is_empty() {
        return Err(match malformed {
            Some(m) => cut(timed_out, m),
            None => ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_files",
                "the multipart body holds no file part",
            ),
        });
    }
    let stored = results.iter().filter(|r| r.ok).count();
    let (status, body) = if stored == results.len() {
        (StatusCode::CREATED, json!({ "files": results }))
    } else if stored > 0 {
        (StatusCode::MULTI_STATUS, json!({ "files": results }))
    } else {
        let first = results.iter().find(|r| !r.ok).expect("a failure");
        let mut body = json!({ "error": first.error, "message": first.message });
        if let Some(sig) = &first.signature {
            body["signature"] = json!(sig);
        }
        if let Some(id) = &first.request_id {
            body["request_id"] = json!(id);
        }
        if let Some(q) = &first.quota
            && let (Some(obj), serde_json::Value::Object(fig)) = (body.as_object_mut(), json!(q))
        {
            obj.extend(fig);
        }
        body["files"] = json!(results);
        (first.status, body)
    };
    Ok((status, Json(body)).into_response())
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
