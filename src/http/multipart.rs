//! Multipart uploads (`POST /api/files`, `POST /api/images`): one request, one batch.
//!
//! Before any byte of the body is read, the request is admitted: its `Content-Length` against
//! `uploads.max_upload`, then against the quota, reserved up front for the whole request (see
//! `quota::Pool`: a request that cannot fit is refused at once, 413 `quota_exceeded`). Then
//! multer parses the body through [`Form`], which bounds what multer buffers and the body's
//! size and framing (see `form`), while this loop bounds the parts: at most
//! `uploads.max_parts` files and `uploads.max_fields` text fields of `uploads.max_field_size`.
//!
//! Each file part streams through a bounded channel to a put on a blocking thread, which
//! stages it in a [`Batch`]: validated, scanned and written, not committed. Only when the
//! whole body has been read and found within every limit does the batch commit, all files in
//! one group; a request that breaks a limit or is cut off on the way — the 101st part, a
//! header block over 8 KiB, a body that ends mid-part — stores nothing at all. A file that
//! fails on its own (its type, its size, a virus) fails alone: the answer is 201 when every
//! file is stored, 207 with a result per file when some are, and the first failure's status
//! when none are.

use std::io;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::AppState;
use super::bridge::{ChannelReader, QUEUE};
use super::error::{ApiError, ApiResult, QuotaFigures};
use super::form::{Form, FormLimits, MAX_BOUNDARY};
use super::metrics;
use crate::error::Error;
use crate::index::UserRecord;
use crate::store::{FileInfo, PutOptions, PutReport, Store};

/// What a multipart upload stores.
#[derive(Clone)]
pub(crate) enum UploadKind {
    Files,
    /// Images, probed before they commit, with their variants scheduled (`POST /api/images`;
    /// the options come from form fields before the file parts).
    #[cfg(feature = "media")]
    Images(crate::media::ImageOptions),
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
    quota: Option<Box<QuotaFigures>>,
    /// On a server-side failure: the id its log lines carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<Box<str>>,
    #[serde(skip)]
    status: StatusCode,
}

impl FileResult {
    fn of(name: String, outcome: crate::Result<PutReport>) -> Self {
        match outcome {
            Ok(report) => {
                metrics::upload_done(report.file.size);
                FileResult {
                    name: Some(name),
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
            Err(e) => {
                metrics::upload_failed();
                let e = ApiError::from(e);
                FileResult {
                    name: Some(name),
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

fn bad_multipart(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", message)
}

fn too_large(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
}

/// A put of the bytes that arrive on `source`.
struct FileJob {
    source: mpsc::Receiver<io::Result<Bytes>>,
    opts: PutOptions,
    kind: UploadKind,
}

/// What the blocking side of a request is asked to do.
enum Job {
    /// Stage a put.
    File(Box<FileJob>),
    /// The body was read to its end within every limit: commit.
    Commit,
}

/// The blocking side of a request: reserves its quota (answering on `ready` before any of the
/// body is read), stages each file as it arrives, and commits the batch when asked; the job
/// channel closing without `Commit` drops the batch, storing nothing.
fn run_batch(
    store: Store,
    owner: String,
    declared: Option<u64>,
    overhead: u64,
    ready: oneshot::Sender<crate::Result<()>>,
    mut jobs: mpsc::Receiver<Job>,
) -> Option<Vec<crate::Result<PutReport>>> {
    let mut batch = match store.batch_reserving(&owner, declared, overhead) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    let _ = ready.send(Ok(()));
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::File(job) => {
                let FileJob { source, opts, kind } = *job;
                let source = ChannelReader::new(source);
                match kind {
                    UploadKind::Files => batch.put(source, &opts),
                    #[cfg(feature = "media")]
                    UploadKind::Images(options) => batch.put_image(source, &opts, &options),
                };
            }
            Job::Commit => return Some(batch.commit()),
        }
    }
    None
}

/// A multipart upload: every file part of the request staged, then committed together.
pub(crate) async fn receive(
    state: AppState,
    user: UserRecord,
    headers: HeaderMap,
    body: Body,
    kind: UploadKind,
) -> ApiResult<Response> {
    let uploads = &state.settings.uploads;
    let max = uploads.max_upload.as_u64();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| bad_multipart("expected a multipart/form-data body with a boundary"))?;
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY {
        return Err(bad_multipart(format!(
            "a multipart boundary is 1 to {MAX_BOUNDARY} characters long"
        )));
    }
    // hyper has refused a Content-Length that is not a number.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if let Some(n) = declared
        && n > max
    {
        return Err(Error::TooLarge {
            limit: max,
            what: format!("a request body of {n} bytes"),
        }
        .into());
    }

    // The quota, before the body.
    let (jobs, job_rx) = mpsc::channel::<Job>(1);
    let (ready_tx, ready) = oneshot::channel();
    let store = state.store.clone();
    let owner = user.name.clone();
    let overhead = uploads.max_form_overhead.as_u64();
    let worker = tokio::task::spawn_blocking(move || {
        run_batch(store, owner, declared, overhead, ready_tx, job_rx)
    });
    let admitted = ready.await;
    if !matches!(admitted, Ok(Ok(()))) {
        let _ = worker.await;
        return Err(match admitted {
            Ok(Err(e)) => e.into(),
            _ => ApiError::internal("the upload worker failed"),
        });
    }

    let form = Form::new(
        body,
        &boundary,
        FormLimits {
            max_body: max,
            max_overhead: overhead,
            max_parts: (uploads.max_parts + uploads.max_fields) as u64,
        },
    );
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(max.saturating_add(1)));
    let mut parts = multer::Multipart::with_constraints(form.clone(), boundary, constraints);
    let driven = drive(&mut parts, &form, &jobs, &state, &user, kind).await;
    drop(parts);
    let names = match driven {
        Ok(names) => form.finish().await.map(|()| names).map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let names = names.and_then(|names| {
        if names.is_empty() {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_files",
                "the multipart body holds no file part",
            ))
        } else {
            Ok(names)
        }
    });
    if names.is_ok() {
        let _ = jobs.send(Job::Commit).await;
    }
    drop(jobs);
    // Waited for on every path: when the answer goes out, the batch has committed or been
    // dropped, and its reservation is released.
    let outcome = worker.await;
    let names = names?;
    let Ok(Some(outcomes)) = outcome else {
        return Err(ApiError::internal("the upload worker failed"));
    };
    answer(
        names
            .into_iter()
            .zip(outcomes)
            .map(|(n, o)| FileResult::of(n, o))
            .collect(),
    )
}

/// Reads the parts: text fields into the options, file parts to the batch. Returns the file
/// parts' names; an error means the request stores nothing.
async fn drive(
    parts: &mut multer::Multipart<'static>,
    form: &Form,
    jobs: &mpsc::Sender<Job>,
    state: &AppState,
    user: &UserRecord,
    #[allow(unused_mut)] mut kind: UploadKind,
) -> ApiResult<Vec<String>> {
    let uploads = &state.settings.uploads;
    let max_field = uploads.max_field_size.as_u64();
    // A failure inside multer may be the guard's stop: that says why.
    let failed = |e: multer::Error| match form.stop() {
        Some(stop) => ApiError::from(stop),
        None => bad_multipart(e.to_string()),
    };
    let mut category: Option<String> = None;
    let mut key: Option<String> = None;
    let mut public = false;
    let mut names = Vec::new();
    let mut fields = 0usize;
    while let Some(mut field) = parts.next_field().await.map_err(failed)? {
        let field_name = field.name().unwrap_or_default().to_string();
        let Some(file_name) = field.file_name().map(str::to_string) else {
            fields += 1;
            if fields > uploads.max_fields {
                return Err(too_large(
                    "too_many_fields",
                    format!(
                        "a request may carry at most {} text fields",
                        uploads.max_fields
                    ),
                ));
            }
            let mut text = Vec::new();
            while let Some(b) = field.chunk().await.map_err(failed)? {
                form.add_text(b.len() as u64)?;
                if (text.len() + b.len()) as u64 > max_field {
                    return Err(too_large(
                        "field_too_large",
                        format!("form field {field_name:?} is longer than {max_field} bytes"),
                    ));
                }
                text.extend_from_slice(&b);
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
        // Counted at its header, before any of its content is read.
        if names.len() >= uploads.max_parts {
            return Err(too_large(
                "too_many_parts",
                format!(
                    "a request may carry at most {} files; nothing was stored",
                    uploads.max_parts
                ),
            ));
        }
        // A browser says octet-stream when it does not know: that is no declaration at all.
        let mime = field
            .content_type()
            .map(|m| m.to_string())
            .filter(|m| m != "application/octet-stream");
        // A part may declare its own length: then validation and the quota see it first.
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
        names.push(file_name);
        let (tx, source) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
        let job = Job::File(Box::new(FileJob {
            source,
            opts,
            kind: kind.clone(),
        }));
        if jobs.send(job).await.is_err() {
            return Err(ApiError::internal("the upload worker failed"));
        }
        loop {
            match field.chunk().await {
                Ok(Some(b)) => {
                    if tx.send(Ok(b)).await.is_err() {
                        // The put ended early (refused); the rest of the part is skipped.
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The put must fail, never stage a prefix (the batch is dropped anyway).
                    let _ = tx.send(Err(io::Error::other("the body was cut off"))).await;
                    return Err(failed(e));
                }
            }
        }
    }
    Ok(names)
}

/// 201 when every file is stored, 207 when some are, else the first failure's status.
fn answer(results: Vec<FileResult>) -> ApiResult<Response> {
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
