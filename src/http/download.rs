//! Serving a file version: Range, strong ETag, conditional requests, Content-Disposition, cache
//! headers, and a streamed body. Used by `GET /api/files/{id}` and by signed links `/d/{token}`.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::error::{ApiError, ApiResult};
use super::{AppState, blocking, bridge, metrics};
use crate::id::FileId;
use crate::store::VersionInfo;

/// Responses up to this size are read in one piece rather than streamed.
const SMALL: u64 = 256 * 1024;

/// How a response may be cached.
#[derive(Debug, Clone, Copy)]
pub enum Cache {
    /// A version open to all at a version-pinned URL: its bytes can never change.
    Immutable,
    /// A version open to all at its current-version URL: cache, but revalidate (ETag → 304),
    /// so a file made private or deleted stops being served from caches at once.
    Public,
    /// Content only its owner and admins may read, read with their token: never stored by a
    /// shared cache, revalidated before every reuse (304s carry this header too).
    Private,
    /// A signed link: private, and not cached longer than the link lives; `immutable` when
    /// the version's bytes can never change under the link (image variants).
    Signed { max_age_s: u64, immutable: bool },
}

impl Cache {
    fn header(self) -> HeaderValue {
        match self {
            Cache::Immutable => HeaderValue::from_static("public, max-age=31536000, immutable"),
            Cache::Public => HeaderValue::from_static("public, no-cache"),
            Cache::Private => HeaderValue::from_static("private, no-cache"),
            Cache::Signed {
                max_age_s,
                immutable,
            } => HeaderValue::from_str(&format!(
                "private, max-age={max_age_s}{}",
                if immutable { ", immutable" } else { "" }
            ))
            .unwrap(),
        }
    }
}

/// Marks a response of a route whose answer depends on the caller's token (the owner reads a
/// private version, anyone else gets 404; `/versions` lists more to the owner): a cache must
/// not hand one caller's answer to another. Errors included, so a cached anonymous 404 is
/// never an owner's answer.
pub async fn vary_by_caller(mut r: Response) -> Response {
    r.headers_mut()
        .append(header::VARY, HeaderValue::from_static("Authorization"));
    r
}

/// One version to serve, already authorised.
pub struct Target {
    pub file: FileId,
    pub version: VersionInfo,
    pub cache: Cache,
    pub attachment: bool,
}

/// Types a browser would run if shown inline: always served as attachments.
fn active_content(mime: &str) -> bool {
    let m = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    m == "text/html"
        || m == "application/xhtml+xml"
        || m == "image/svg+xml"
        || m == "text/xml"
        || m == "application/xml"
        || m.ends_with("+xml")
        || m.contains("javascript")
}

/// `filename*` per RFC 5987/6266: everything but unreserved characters percent-encoded.
const FILENAME_STAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn content_disposition(attachment: bool, name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let kind = if attachment { "attachment" } else { "inline" };
    let v = format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        utf8_percent_encode(name, FILENAME_STAR)
    );
    // Display names are sanitised (no control characters), so this cannot fail; fall back
    // to the bare kind rather than panic if it ever did.
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("attachment"))
}

/// A single byte range, inclusive, within a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a `Range` header. Syntax we do not serve (other units, several ranges, garbage) is
/// ignored as RFC 9110 allows: the answer is the whole file.
pub fn parse_range(value: &str, size: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeReq::Full;
        };
        if n == 0 || size == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part(size.saturating_sub(n), size - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeReq::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return RangeReq::Full,
        }
    };
    if start >= size {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part(start, end.min(size - 1))
}

fn etag_of(v: &VersionInfo) -> String {
    format!("\"{}\"", v.blake3)
}

/// Does an `If-None-Match`/`If-Match` list name `etag`? (`weak` allows `W/` matches.)
fn etag_listed(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || (weak && t.strip_prefix("W/") == Some(etag)))
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

fn parse_http_date(h: &HeaderValue) -> Option<i64> {
    let t = httpdate::parse_http_date(h.to_str().ok()?).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// Answers GET or HEAD for `t`, honouring the request's conditional and range headers.
pub async fn serve(
    state: &AppState,
    method: &Method,
    req: &HeaderMap,
    t: Target,
) -> ApiResult<Response> {
    let v = &t.version;
    let size = v.size;
    let etag = etag_of(v);
    let modified_s = v.created_ms.div_euclid(1000);

    let mut h = HeaderMap::new();
    h.insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
    h.insert(header::CACHE_CONTROL, t.cache.header());
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&http_date(v.created_ms)).unwrap(),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );

    // Preconditions, in RFC 9110 §13.2.2 order.
    if let Some(im) = req.get(header::IF_MATCH).and_then(|x| x.to_str().ok())
        && !etag_listed(im, &etag, false)
    {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "If-Match does not match the current ETag",
        )
        .with_header(header::ETAG, HeaderValue::from_str(&etag).unwrap()));
    }
    let not_modified = match req.get(header::IF_NONE_MATCH).and_then(|x| x.to_str().ok()) {
        Some(inm) => etag_listed(inm, &etag, true),
        None => req
            .get(header::IF_MODIFIED_SINCE)
            .and_then(parse_http_date)
            .is_some_and(|since| modified_s <= since),
    };
    if not_modified && (method == Method::GET || method == Method::HEAD) {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        *resp.headers_mut() = h;
        return Ok(resp);
    }

    let mut range = req
        .get(header::RANGE)
        .and_then(|x| x.to_str().ok())
        .map_or(RangeReq::Full, |r| parse_range(r, size));
    if let Some(ir) = req.get(header::IF_RANGE) {
        // A range only applies to the representation the client has; otherwise send it all.
        let same = match ir.to_str() {
            Ok(s) if s.trim_start().starts_with('"') => s.trim() == etag,
            _ => parse_http_date(ir) == Some(modified_s),
        };
        if !same {
            range = RangeReq::Full;
        }
    }

    let mime = v.mime.as_str();
    let attachment = t.attachment || active_content(mime);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        content_disposition(attachment, &v.display_name),
    );
    // Even inline, a stored file is never a page of this origin.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );

    let (status, start, end) = match range {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part(a, b) => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")).unwrap(),
            );
            (StatusCode::PARTIAL_CONTENT, a, b + 1)
        }
        RangeReq::Unsatisfiable => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            )
            .with_header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).unwrap(),
            ));
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));

    let body = if method == Method::HEAD || start == end {
        Body::empty()
    } else if end - start <= SMALL {
        // Small: read it whole in one blocking call instead of setting up a stream.
        let store = state.store.clone();
        let (id, version) = (t.file, v.version);
        let data = blocking(move || {
            let mut r = store.get_version_range(id, version, start..end)?;
            let mut buf = Vec::with_capacity((end - start) as usize);
            std::io::Read::read_to_end(&mut r, &mut buf).map_err(crate::store::io_to_error)?;
            Ok(buf)
        })
        .await?;
        metrics::download_started(end - start);
        Body::from(data)
    } else {
        let store = state.store.clone();
        let (id, version) = (t.file, v.version);
        // The first bytes are read before the answer starts, so a cold tier that is down is a
        // 503 with Retry-After rather than a 200 cut short.
        let (first, reader) = blocking(move || {
            let mut r = store.get_version_range(id, version, start..end)?;
            let mut first = vec![0u8; 64 << 10];
            let n = std::io::Read::read(&mut r, &mut first).map_err(crate::store::io_to_error)?;
            first.truncate(n);
            Ok((first, r))
        })
        .await?;
        metrics::download_started(end - start);
        let rx = bridge::pump(std::io::Read::chain(std::io::Cursor::new(first), reader));
        Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = h;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeReq::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeReq::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeReq::Part(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), RangeReq::Part(0, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeReq::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeReq::Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeReq::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeReq::Full);
        assert_eq!(parse_range("bytes=x-", 100), RangeReq::Full);
    }

    #[test]
    fn dispositions_carry_both_names_and_nothing_raw() {
        let v = content_disposition(true, "résumé \"final\".pdf");
        let s = v.to_str().unwrap();
        assert_eq!(
            s,
            "attachment; filename=\"r_sum_ _final_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
        );
        assert!(active_content("image/svg+xml"));
        assert!(active_content("text/html; charset=utf-8"));
        assert!(!active_content("image/png"));
    }
}
