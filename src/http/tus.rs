//! Resumable uploads over HTTP: tus 1.0 at `/api/uploads` (core, creation,
//! creation-with-upload, expiration, checksum, termination) over the library's sessions
//! (`crate::upload`).
//!
//! - `OPTIONS /api/uploads[/{id}]`: what the server supports.
//! - `POST /api/uploads`: create a session (`Upload-Length` or `Upload-Defer-Length: 1`,
//!   `Upload-Metadata`); with a body of type `application/offset+octet-stream`, append it at once.
//! - `HEAD /api/uploads/{id}`: the offset to resume from.
//! - `PATCH /api/uploads/{id}`: append at `Upload-Offset`; the request that completes the upload
//!   stores the file (`upload_finish`) and answers `Tessera-File-Id`.
//! - `DELETE /api/uploads/{id}`: abandon the upload.
//!
//! Both paths are served by one handler each, which applies `X-HTTP-Method-Override` before
//! choosing what to do and puts `Tus-Resumable` on every answer, errors and 401s included.
//! A PATCH body is streamed to the blocking pool through a bounded channel (`BodyReader`):
//! the end of the body is an explicit message, so a connection that breaks — a body error, a
//! body shorter than its `Content-Length`, or this handler being dropped — reaches
//! `upload_append` as a read error, never as an end of file; the library then keeps exactly
//! the bytes that arrived.

use std::io::{self, Read};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::auth::User;
use super::body_idle::{is_body_timeout, timeout_answer};
use super::bridge::QUEUE;
use super::error::{ApiError, ApiResult};
use super::{AppState, blocking, metrics};
use crate::error::Error;
use crate::index::UserRecord;
use crate::store::{PutReport, Store};
use crate::upload::{Checksum, ChecksumAlgo, UploadMeta, UploadSession};
use crate::validate::Origin;

/// The protocol version spoken (and the only one accepted).
pub const TUS_VERSION: &str = "1.0.0";
/// Extensions announced by `OPTIONS`.
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,expiration,checksum,termination";
/// The only content type of a PATCH body (and of a creation-with-upload body).
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Answered when an upload completes: the id of the stored file.
pub const FILE_ID_HEADER: &str = "tessera-file-id";

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const TUS_VERSION_H: HeaderName = HeaderName::from_static("tus-version");
const TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
const TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
const TUS_CHECKSUM_ALGORITHM: HeaderName = HeaderName::from_static("tus-checksum-algorithm");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
const METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-http-method-override");
const FILE_ID: HeaderName = HeaderName::from_static(FILE_ID_HEADER);

/// Longest metadata key accepted.
const MAX_META_KEY: usize = 64;

/// Base64 as clients send it: with or without padding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `/api/uploads`: OPTIONS and POST (creation).
pub async fn collection(State(state): State<AppState>, req: Request) -> Response {
    serve(state, None, req).await
}

/// `/api/uploads/{id}`: OPTIONS, HEAD, PATCH, DELETE.
pub async fn resource(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    serve(state, Some(id), req).await
}

async fn serve(state: AppState, id: Option<String>, req: Request) -> Response {
    let mut resp = match dispatch(&state, id, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.headers_mut()
        .insert(TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    resp
}

/// The method the client means: `X-HTTP-Method-Override` wins over the request line.
fn effective_method(parts: &Parts) -> ApiResult<Method> {
    let Some(v) = parts.headers.get(&METHOD_OVERRIDE) else {
        return Ok(parts.method.clone());
    };
    let name = v.to_str().unwrap_or_default().trim().to_ascii_uppercase();
    match name.as_str() {
        "OPTIONS" => Ok(Method::OPTIONS),
        "POST" => Ok(Method::POST),
        "HEAD" => Ok(Method::HEAD),
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        "GET" => Ok(Method::GET),
        _ => Err(ApiError::bad_request(
            "X-HTTP-Method-Override must name an HTTP method this endpoint knows",
        )),
    }
}

async fn dispatch(state: &AppState, id: Option<String>, req: Request) -> ApiResult<Response> {
    let (mut parts, body) = req.into_parts();
    let method = effective_method(&parts)?;
    if method == Method::OPTIONS {
        return Ok(options(state));
    }
    match parts.headers.get(&TUS_RESUMABLE).map(|v| v.as_bytes()) {
        Some(v) if v == TUS_VERSION.as_bytes() => {}
        other => {
            let what = match other {
                None => "the Tus-Resumable header is missing".to_string(),
                Some(_) => "this Tus-Resumable version is not supported".to_string(),
            };
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "tus_version",
                format!("{what}; this server speaks tus {TUS_VERSION}"),
            )
            .with_header(TUS_VERSION_H, HeaderValue::from_static(TUS_VERSION)));
        }
    }
    let User(user) = User::from_request_parts(&mut parts, state).await?;
    match (id, method) {
        (None, Method::POST) => create(state, &user, &parts.headers, body).await,
        (Some(id), Method::HEAD) => head(state, &user, &id).await,
        (Some(id), Method::PATCH) => patch(state, &user, &id, &parts.headers, body).await,
        (Some(id), Method::DELETE) => terminate(state, &user, &id).await,
        (id, method) => {
            let allow = if id.is_some() {
                "OPTIONS, HEAD, PATCH, DELETE"
            } else {
                "OPTIONS, POST"
            };
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not a tus request here (allowed: {allow})"),
            )
            .with_header(header::ALLOW, HeaderValue::from_static(allow)))
        }
    }
}

fn options(state: &AppState) -> Response {
    let algos = ChecksumAlgo::ALL.map(ChecksumAlgo::name).join(",");
    let mut h = HeaderMap::new();
    h.insert(TUS_VERSION_H, HeaderValue::from_static(TUS_VERSION));
    h.insert(TUS_EXTENSION, HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert(
        TUS_MAX_SIZE,
        num(state.settings.uploads.max_upload.as_u64()),
    );
    h.insert(
        TUS_CHECKSUM_ALGORITHM,
        HeaderValue::from_str(&algos).expect("algorithm names are ASCII"),
    );
    (StatusCode::NO_CONTENT, h).into_response()
}

fn num(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

fn expires(ms: i64) -> HeaderValue {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("an HTTP date is ASCII")
}

/// A header holding a non-negative decimal integer; malformed → 400.
fn header_u64(headers: &HeaderMap, name: &HeaderName) -> ApiResult<Option<u64>> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or_default().trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "{name} must be a non-negative integer"
        )));
    }
    s.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{name} is too large")))
}

/// Is the request's content type `application/offset+octet-stream` (parameters ignored)?
fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM))
}

/// Does the request carry a body at all?
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
fn parse_checksum(headers: &HeaderMap) -> ApiResult<Option<Checksum>> {
    let Some(v) = headers.get(&UPLOAD_CHECKSUM) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::bad_request("Upload-Checksum is not ASCII"))?
        .trim();
    let (algo, digest) = v
        .split_once(' ')
        .ok_or_else(|| ApiError::bad_request("Upload-Checksum must be `<algorithm> <base64>`"))?;
    let algo = ChecksumAlgo::from_name(algo.trim()).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "checksum_algorithm",
            format!(
                "unsupported checksum algorithm (supported: {})",
                ChecksumAlgo::ALL.map(ChecksumAlgo::name).join(", ")
            ),
        )
    })?;
    let digest = B64
        .decode(digest.trim())
        .map_err(|_| ApiError::bad_request("the Upload-Checksum digest is not base64"))?;
    Ok(Some(Checksum { algo, digest }))
}

/// A metadata key: 1–64 characters of `[A-Za-z0-9._-]`.
fn valid_meta_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_META_KEY
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A declared MIME type, normalised (`type/subtype`, lower case, no parameters). `None` for
/// no declaration: empty, or `application/octet-stream` (what clients say when they do not
/// know).
fn normalise_mime(raw: &str) -> ApiResult<Option<String>> {
    let m = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if m.is_empty() || m == "application/octet-stream" {
        return Ok(None);
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match m.split_once('/') {
        Some((t, s)) if token(t) && token(s) => Ok(Some(m)),
        _ => Err(ApiError::bad_request(
            "the filetype metadata is not a MIME type (type/subtype)",
        )),
    }
}

/// `Upload-Metadata: key base64value,key2 base64value2,key3`: decoded into the session's put
/// options. Known keys: `filename`/`name`, `filetype`/`contentType`/`type`, `category`, `key`,
/// `public`; anything else is kept as a string in the file's metadata. Keys must be simple
/// tokens and values UTF-8; control characters are removed from values.
fn parse_metadata(headers: &HeaderMap) -> ApiResult<UploadMeta> {
    // Every session made here is a client's: its finish is held to the client rules
    // (category decided by the server, size limits) and it counts against the session limits.
    let mut meta = UploadMeta {
        origin: Origin::Client,
        ..Default::default()
    };
    let Some(raw) = headers.get(&UPLOAD_METADATA) else {
        return Ok(meta);
    };
    let raw = raw
        .to_str()
        .map_err(|_| ApiError::bad_request("Upload-Metadata is not ASCII"))?;
    let mut seen = std::collections::HashSet::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (pair, ""),
        };
        if !valid_meta_key(key) {
            return Err(ApiError::bad_request(format!(
                "Upload-Metadata keys are 1 to {MAX_META_KEY} characters of letters, digits, \
                 '.', '_' and '-'"
            )));
        }
        if !seen.insert(key.to_ascii_lowercase()) {
            return Err(ApiError::bad_request(format!(
                "Upload-Metadata names {key:?} twice"
            )));
        }
        let bytes = B64.decode(value).map_err(|_| {
            ApiError::bad_request(format!(
                "the Upload-Metadata value of {key:?} is not base64"
            ))
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ApiError::bad_request(format!("the Upload-Metadata value of {key:?} is not UTF-8"))
        })?;
        let text: String = text.chars().filter(|c| !c.is_control()).collect();
        let text = text.trim().to_string();
        let some = |t: String| Some(t).filter(|t| !t.is_empty());
        match key.to_ascii_lowercase().as_str() {
            "filename" | "name" => meta.name = some(text),
            "filetype" | "contenttype" | "type" => meta.mime = normalise_mime(&text)?,
            "category" => meta.category = some(text),
            "key" => meta.key = some(text),
            "public" => {
                meta.public = match text.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => true,
                    "0" | "false" | "no" | "off" | "" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            "the `public` metadata must be true or false",
                        ));
                    }
                }
            }
            _ => {
                meta.extras.insert(key.to_string(), text);
            }
        }
    }
    Ok(meta)
}

/// The session's metadata as a tus header, rebuilt from the sanitised values (never the raw
/// header the client sent).
fn encode_metadata(meta: &UploadMeta) -> Option<HeaderValue> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(n) = &meta.name {
        pairs.push(("filename", n));
    }
    if let Some(m) = &meta.mime {
        pairs.push(("filetype", m));
    }
    if let Some(c) = &meta.category {
        pairs.push(("category", c));
    }
    if let Some(k) = &meta.key {
        pairs.push(("key", k));
    }
    if meta.public {
        pairs.push(("public", "true"));
    }
    pairs.extend(
        meta.extras
            .iter()
            .filter(|(k, _)| valid_meta_key(k))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if pairs.is_empty() {
        return None;
    }
    let text = pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", STANDARD.encode(v)))
        .collect::<Vec<_>>()
        .join(",");
    HeaderValue::from_str(&text).ok()
}

/// Host names and ports as `X-Forwarded-Host` may carry them.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The URL base for `Location`: the configured public URL, or — only when the configuration
/// says to trust a proxy — `X-Forwarded-Proto`/`X-Forwarded-Host`.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if state.settings.server.trust_forwarded {
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_string())
        };
        if let Some(host) = first("x-forwarded-host").filter(|h| valid_host(h)) {
            let proto = first("x-forwarded-proto")
                .map(|p| p.to_ascii_lowercase())
                .filter(|p| p == "http" || p == "https")
                .unwrap_or_else(|| "https".into());
            return format!("{proto}://{host}");
        }
    }
    state.public_url.to_string()
}

/// The session `id` if `user` may use it (its owner, or an admin). Another user's session is
/// "not found", expired or not, so a guessed id learns nothing. An expired session of the
/// user is `410`, or returned when `allow_expired` (termination).
async fn owned(
    state: &AppState,
    user: &UserRecord,
    id: &str,
    allow_expired: bool,
) -> ApiResult<UploadSession> {
    let may = |s: &UploadSession| user.admin || s.owner == user.name;
    let store = state.store.clone();
    let sid = id.to_string();
    match blocking(move || store.upload_status(&sid)).await {
        Ok(s) if may(&s) => Ok(s),
        Ok(_) => Err(ApiError::not_found("upload")),
        Err(e) if e.status == StatusCode::GONE => {
            let store = state.store.clone();
            let owner = (!user.admin).then(|| user.name.clone());
            let sessions = blocking(move || store.list_uploads(owner.as_deref())).await?;
            match sessions.into_iter().find(|s| s.id.eq_ignore_ascii_case(id)) {
                Some(s) if may(&s) && allow_expired => Ok(s),
                Some(s) if may(&s) => Err(e),
                _ => Err(ApiError::not_found("upload")),
            }
        }
        Err(e) => Err(e),
    }
}

/// `POST /api/uploads`.
async fn create(
    state: &AppState,
    user: &UserRecord,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let length = header_u64(headers, &UPLOAD_LENGTH)?;
    let deferred = headers.get(&UPLOAD_DEFER_LENGTH).map(|v| v.as_bytes());
    let length = match (length, deferred) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "send Upload-Length or Upload-Defer-Length, not both",
            ));
        }
        (Some(n), None) => Some(n),
        (None, Some(b"1")) => None,
        (None, Some(_)) => return Err(ApiError::bad_request("Upload-Defer-Length must be 1")),
        (None, None) => {
            return Err(ApiError::bad_request(
                "Upload-Length (or Upload-Defer-Length: 1) is required",
            ));
        }
    };
    let max = state.settings.uploads.max_upload.as_u64();
    if let Some(n) = length
        && n > max
    {
        return Err(Error::TooLarge {
            limit: max,
            what: format!("an upload of {n} bytes"),
        }
        .into());
    }
    let meta = parse_metadata(headers)?;
    let with_data = is_offset_stream(headers);
    if !with_data && has_body(headers) {
        return Err(unsupported_type());
    }
    let checksum = if with_data {
        parse_checksum(headers)?
    } else {
        None
    };

    let store = state.store.clone();
    let owner = user.name.clone();
    let session = blocking(move || store.upload_create(&owner, length, meta)).await?;
    let location = format!("{}/api/uploads/{}", base_url(state, headers), session.id);
    let location = HeaderValue::from_str(&location)
        .map_err(|_| ApiError::bad_request("the public URL is not a valid header value"))?;

    // creation-with-upload: the body is the first part. Whatever happens to it, the session
    // exists, so every answer says where.
    let with_location = |e: ApiError| e.with_header(header::LOCATION, location.clone());
    let mut session = session;
    if with_data {
        let expected = content_length(headers);
        session = append(state, &session.id, 0, checksum, body, expected)
            .await
            .map_err(with_location)?;
    }
    let mut h = HeaderMap::new();
    h.insert(header::LOCATION, location.clone());
    h.insert(UPLOAD_OFFSET, num(session.offset));
    if session.is_complete() {
        let report = finish(state, &session.id).await.map_err(with_location)?;
        h.insert(FILE_ID, file_id(&report));
    } else {
        h.insert(UPLOAD_EXPIRES, expires(session.expires_ms));
    }
    Ok((StatusCode::CREATED, h).into_response())
}

fn unsupported_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("upload data must be sent as Content-Type: {OFFSET_OCTET_STREAM}"),
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

fn file_id(report: &PutReport) -> HeaderValue {
    HeaderValue::from_str(&report.file.id.to_string()).expect("a file id is ASCII")
}

/// `HEAD /api/uploads/{id}`. A complete session that was not stored yet (the request that
/// completed it failed, or the server died in between) is stored now, so a client that
/// resumes, sees every byte acknowledged and stops still gets its file.
async fn head(state: &AppState, user: &UserRecord, id: &str) -> ApiResult<Response> {
    let s = owned(state, user, id, false).await?;
    let mut h = HeaderMap::new();
    h.insert(UPLOAD_OFFSET, num(s.offset));
    match s.length {
        Some(n) => h.insert(UPLOAD_LENGTH, num(n)),
        None => h.insert(UPLOAD_DEFER_LENGTH, HeaderValue::from_static("1")),
    };
    if let Some(m) = encode_metadata(&s.meta) {
        h.insert(UPLOAD_METADATA, m);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if s.is_complete() {
        match finish(state, &s.id).await {
            Ok(report) => {
                h.insert(FILE_ID, file_id(&report));
            }
            // Another request is finishing it right now.
            Err(e) if e.status == StatusCode::LOCKED => {}
            Err(e) => return Err(e),
        }
    } else {
        h.insert(UPLOAD_EXPIRES, expires(s.expires_ms));
    }
    Ok((StatusCode::OK, h).into_response())
}

/// `PATCH /api/uploads/{id}`.
async fn patch(
    state: &AppState,
    user: &UserRecord,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if !is_offset_stream(headers) {
        return Err(unsupported_type());
    }
    let offset = header_u64(headers, &UPLOAD_OFFSET)?
        .ok_or_else(|| ApiError::bad_request("Upload-Offset is required"))?;
    let checksum = parse_checksum(headers)?;
    let declared = header_u64(headers, &UPLOAD_LENGTH)?;
    let s = owned(state, user, id, false).await?;
    match (declared, s.length) {
        (Some(n), None) => {
            let store = state.store.clone();
            let sid = s.id.clone();
            blocking(move || store.upload_declare_length(&sid, n)).await?;
        }
        (Some(n), Some(len)) if n != len => {
            return Err(ApiError::bad_request(format!(
                "the upload's length is {len} bytes; Upload-Length cannot change it"
            )));
        }
        _ => {}
    }
    let s = append(
        state,
        &s.id,
        offset,
        checksum,
        body,
        content_length(headers),
    )
    .await?;
    let mut h = HeaderMap::new();
    h.insert(UPLOAD_OFFSET, num(s.offset));
    if s.is_complete() {
        let report = finish(state, &s.id).await?;
        h.insert(FILE_ID, file_id(&report));
    } else {
        h.insert(UPLOAD_EXPIRES, expires(s.expires_ms));
    }
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

/// `DELETE /api/uploads/{id}` (termination): the session and its staged bytes are gone.
async fn terminate(state: &AppState, user: &UserRecord, id: &str) -> ApiResult<Response> {
    let s = owned(state, user, id, true).await?;
    let store = state.store.clone();
    blocking(move || store.upload_terminate(&s.id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Stores a complete session as a file (validation, scanning, quota: the ordinary put).
async fn finish(state: &AppState, id: &str) -> ApiResult<PutReport> {
    let store = state.store.clone();
    let sid = id.to_string();
    match blocking(move || store.upload_finish(&sid)).await {
        Ok(report) => {
            metrics::upload_done(report.file.size);
            Ok(report)
        }
        Err(e) => {
            if e.status != StatusCode::LOCKED {
                metrics::upload_failed();
            }
            Err(e)
        }
    }
}

/// What the body pump hands the blocking reader.
enum Piece {
    Data(Bytes),
    /// The whole body arrived.
    End,
    /// The body broke off (connection lost, or shorter than its `Content-Length`).
    Broken(String),
    /// The client sent nothing for `server.body_idle_timeout`.
    Stalled(String),
}

/// The error a [`BodyReader`] fails with when the client's body broke off.
#[derive(Debug)]
struct BodyBroken {
    why: String,
    /// Cut by the body-inactivity timeout rather than by the client.
    stalled: bool,
}

impl std::fmt::Display for BodyBroken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body broke off: {}", self.why)
    }
}

impl std::error::Error for BodyBroken {}

fn broken(why: impl Into<String>, stalled: bool) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        BodyBroken {
            why: why.into(),
            stalled,
        },
    )
}

/// A blocking `Read` over a request body. End of file only on an explicit [`Piece::End`]: a
/// channel closed without one (the pump or the handler was dropped) is an error too.
struct BodyReader {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(b)) => self.current = b,
                Some(Piece::End) => self.ended = true,
                Some(Piece::Broken(why)) => return Err(broken(why, false)),
                Some(Piece::Stalled(why)) => return Err(broken(why, true)),
                None => return Err(broken("the request ended before its body", false)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Moves a request body into the channel, frame by frame (at most [`QUEUE`] frames wait).
/// Runs as its own task, so every frame that reached the server is handed over even if the
/// handler is dropped.
async fn pump(body: Body, tx: mpsc::Sender<Piece>, expected: Option<u64>) {
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    loop {
        let piece = match stream.next().await {
            Some(Ok(b)) => {
                received += b.len() as u64;
                Piece::Data(b)
            }
            Some(Err(e)) if is_body_timeout(&e) => {
                Piece::Stalled(format!("after {received} bytes: {e}"))
            }
            Some(Err(e)) => Piece::Broken(format!("after {received} bytes: {e}")),
            None => match expected {
                Some(n) if received < n => {
                    Piece::Broken(format!("{received} of the {n} bytes announced arrived"))
                }
                _ => Piece::End,
            },
        };
        let last = !matches!(piece, Piece::Data(_));
        // A closed channel: the append stopped reading (refused, or failed); its error says why.
        if tx.send(piece).await.is_err() || last {
            return;
        }
    }
}

/// Streams `body` into `upload_append` on the blocking pool.
async fn append(
    state: &AppState,
    id: &str,
    offset: u64,
    checksum: Option<Checksum>,
    body: Body,
    expected: Option<u64>,
) -> ApiResult<UploadSession> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(pump(body, tx, expected));
    let store: Store = state.store.clone();
    let sid = id.to_string();
    let job = tokio::task::spawn_blocking(move || {
        let reader = BodyReader {
            rx,
            current: Bytes::new(),
            ended: false,
        };
        store.upload_append(&sid, offset, reader, checksum)
    });
    match job.await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(Error::Io { source, .. }))
            if source
                .get_ref()
                .is_some_and(|e| e.downcast_ref::<BodyBroken>().is_some()) =>
        {
            // The client went away (or fell silent); the bytes that arrived are kept (see
            // `upload_append`), so HEAD gives the offset to resume from.
            tracing::info!(upload = %id, "upload body broke off: {source}");
            let stalled = source
                .get_ref()
                .and_then(|e| e.downcast_ref::<BodyBroken>())
                .is_some_and(|b| b.stalled);
            Err(if stalled {
                timeout_answer(format!(
                    "{source}; the bytes received are kept: HEAD for the offset, then resume"
                ))
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "incomplete_body",
                    source.to_string(),
                )
            })
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::internal(format_args!(
            "upload worker failed: {e}"
        ))),
    }
}

/// Sweeps expired sessions every `interval` (and once at start) until the task is aborted.
pub async fn sweep_loop(store: Store, interval: Duration) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.upload_sweep_expired()).await {
            Ok(Ok(r)) if r.expired_sessions + r.orphan_files > 0 => tracing::info!(
                expired_sessions = r.expired_sessions,
                orphan_files = r.orphan_files,
                bytes_freed = r.bytes_freed,
                "swept upload sessions"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping upload sessions failed"),
            Err(e) => tracing::warn!(error = %e, "the upload sweep task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn metadata_is_decoded_sanitised_and_re_encoded() {
        let raw = format!(
            "filename {},filetype {},category {},public {},note {},empty",
            b64("a\u{7}b.JPG"),
            b64("Image/JPEG; charset=x"),
            b64("images"),
            b64("yes"),
            b64("hello\r\nworld"),
        );
        let m = parse_metadata(&headers(&[("upload-metadata", &raw)])).unwrap();
        assert_eq!(m.name.as_deref(), Some("ab.JPG"));
        assert_eq!(m.mime.as_deref(), Some("image/jpeg"));
        assert_eq!(m.category.as_deref(), Some("images"));
        assert!(m.public);
        assert_eq!(m.extras["note"], "helloworld");
        assert_eq!(m.extras["empty"], "");
        assert_eq!(m.origin, Origin::Client, "a tus session is a client's");
        let back = encode_metadata(&m).unwrap();
        let back = back.to_str().unwrap();
        assert!(
            back.contains(&format!("filename {}", b64("ab.JPG"))),
            "{back}"
        );
        assert!(!back.contains('\n'));

        // Unpadded base64 is accepted; octet-stream is no declaration.
        let raw = format!(
            "filetype {}",
            b64("application/octet-stream").trim_end_matches('=')
        );
        let m = parse_metadata(&headers(&[("upload-metadata", &raw)])).unwrap();
        assert_eq!(m.mime, None);
        assert_eq!(
            parse_metadata(&HeaderMap::new()).unwrap().origin,
            Origin::Client
        );

        for bad in [
            "bad key aGk=".to_string(),
            "k !!!".to_string(),
            format!("k {},k {}", b64("a"), b64("b")),
            format!("filetype {}", b64("not a type")),
            format!("public {}", b64("maybe")),
            format!("k {}", STANDARD.encode([0xff, 0xfe])),
        ] {
            assert!(
                parse_metadata(&headers(&[("upload-metadata", &bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn checksum_header_parsing() {
        let c = parse_checksum(&headers(&[(
            "upload-checksum",
            "sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(c.algo, ChecksumAlgo::Sha1);
        assert_eq!(c.digest.len(), 20);
        let e = parse_checksum(&headers(&[("upload-checksum", "md5 AAAA")])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(parse_checksum(&headers(&[("upload-checksum", "sha1")])).is_err());
        assert!(parse_checksum(&headers(&[("upload-checksum", "sha256 %%%")])).is_err());
        assert!(parse_checksum(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn body_reader_needs_an_explicit_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Data then a dropped sender: an error after the data, not a clean end.
        let (tx, rx) = mpsc::channel(4);
        rt.block_on(async {
            tx.send(Piece::Data(Bytes::from_static(b"abc")))
                .await
                .unwrap();
        });
        drop(tx);
        let mut r = BodyReader {
            rx,
            current: Bytes::new(),
            ended: false,
        };
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);

        let (tx, rx) = mpsc::channel(4);
        rt.block_on(async {
            tx.send(Piece::Data(Bytes::from_static(b"xy")))
                .await
                .unwrap();
            tx.send(Piece::End).await.unwrap();
        });
        drop(tx);
        let mut r = BodyReader {
            rx,
            current: Bytes::new(),
            ended: false,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"xy");
    }
}
