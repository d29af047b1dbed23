//! The cold tier on S3-compatible storage (AWS S3, Garage, MinIO, Ceph…) through
//! `object_store`'s AWS client.
//!
//! The engine calls [`ColdTier`] from plain threads; `object_store` is async. [`S3Tier`] owns a
//! small tokio runtime of its own and runs every call as a task on it, waiting on a std channel
//! for the result. So a call works from any thread: a plain thread, a thread of tokio's
//! blocking pool inside `tessera serve` (where `Runtime::block_on` would panic, "cannot start a
//! runtime from within a runtime"), even — blocking that worker, but without a panic — from
//! inside an async task. Dropping the tier shuts its runtime down in the background, which is
//! allowed in any context too.
//!
//! Behaviour:
//! - Objects up to `part_size` go up in one PUT; larger ones as a multipart upload of
//!   `part_size` parts (at least 5 MiB, at most 5 GiB, grown so there are at most 10,000),
//!   `part_concurrency` at a time. Any failure aborts the upload, so no parts are left behind
//!   to bill and no partial object is ever visible.
//! - Reads are range GETs; a response that does not carry exactly the asked range is `Failed`.
//! - Every request is retried by `object_store` with exponential backoff (connection errors,
//!   timeouts, 5xx) within [`RetryBudget`]; what still fails is [`TierError::Unavailable`] for
//!   connection errors, timeouts and 5xx, [`TierError::NotFound`] for 404 and
//!   [`TierError::Failed`] for the rest (403, 400, 416, a bucket that does not exist…).
//! - Path-style addressing (`endpoint/bucket/key`), which every S3-compatible server takes;
//!   plain `http` only where [`S3Options::allow_http`] says so (loopback test servers).
//! - A storage class, from the put or the tier's default, is sent as `x-amz-storage-class`.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::HttpError;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};

use super::{ColdTier, ObjectInfo, ObjectOptions, RetryBudget, Secret, TierError, check_key};

/// Smallest part S3 accepts (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// Largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Most parts one multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// `http(s)://host:port` of an S3-compatible server; `None`: AWS for `region`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Keys go under this prefix in the bucket (`/`-separated, no leading or trailing `/`;
    /// empty: the bucket's root).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Allow a plain `http` endpoint. Only for servers on a trusted network (tests, loopback).
    pub allow_http: bool,
    /// Storage class of puts that do not ask for one. `None`: the bucket's default.
    pub default_storage_class: Option<String>,
    /// Objects larger than this go up as multipart uploads of parts this size. Default 16 MiB.
    pub part_size: u64,
    /// Parts of one upload in flight at once. Default 4.
    pub part_concurrency: usize,
    pub retry: RetryBudget,
}

impl S3Options {
    /// Options for `bucket` at `endpoint` with the defaults for everything else.
    pub fn new(
        endpoint: Option<String>,
        bucket: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        S3Options {
            endpoint,
            bucket: bucket.into(),
            region: region.into(),
            prefix: String::new(),
            access_key_id: access_key_id.into(),
            secret_access_key: Secret::new(secret_access_key),
            allow_http: false,
            default_storage_class: None,
            part_size: 16 << 20,
            part_concurrency: 4,
            retry: RetryBudget::default(),
        }
    }
}

/// True when `endpoint` is `http://` to a loopback host (`localhost`, `127.x`, `[::1]`).
pub fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The cold tier in an S3 bucket. See the module docs.
pub struct S3Tier {
    store: Arc<AmazonS3>,
    /// `Some` until drop, which shuts it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    describe: String,
    prefix: String,
    default_storage_class: Option<String>,
    part_size: u64,
    part_concurrency: usize,
}

impl std::fmt::Debug for S3Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Tier")
            .field("at", &self.describe)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl Drop for S3Tier {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which panics inside an async
        // context; a tier may be dropped from one (the server shutting down).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl S3Tier {
    /// Connects nothing yet: checks the options and builds the client. The first call reaches
    /// the server.
    pub fn new(opts: S3Options) -> Result<S3Tier, TierError> {
        let invalid = |message: String| TierError::Failed {
            op: "configure",
            key: String::new(),
            message,
        };
        if opts.bucket.is_empty() {
            return Err(invalid("no bucket given".into()));
        }
        let prefix = opts.prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            check_key("configure", &prefix)
                .map_err(|_| invalid(format!("prefix {:?} is not a valid key prefix", prefix)))?;
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&opts.part_size) {
            return Err(invalid(format!(
                "part size {} is outside S3's {MIN_PART_SIZE}..={MAX_PART_SIZE} bytes",
                opts.part_size
            )));
        }
        if let Some(endpoint) = &opts.endpoint
            && endpoint.starts_with("http://")
            && !opts.allow_http
        {
            return Err(invalid(format!(
                "endpoint {endpoint} is plain http; allow it explicitly (allow_http) or use https"
            )));
        }
        let client = ClientOptions::new()
            .with_allow_http(opts.allow_http)
            .with_connect_timeout(opts.retry.connect_timeout)
            .with_timeout(opts.retry.request_timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: opts.retry.max_retries,
            retry_timeout: opts.retry.retry_timeout,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&opts.bucket)
            .with_region(&opts.region)
            .with_access_key_id(&opts.access_key_id)
            .with_secret_access_key(opts.secret_access_key.expose())
            .with_virtual_hosted_style_request(false)
            .with_allow_http(opts.allow_http)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(endpoint) = &opts.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        let store = builder.build().map_err(|e| invalid(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-s3")
            .enable_all()
            .build()
            .map_err(|e| invalid(format!("starting the S3 client's runtime: {e}")))?;
        let describe = match &opts.endpoint {
            Some(e) => format!("s3://{}/{} at {e}", opts.bucket, prefix),
            None => format!("s3://{}/{} in {}", opts.bucket, prefix, opts.region),
        };
        Ok(S3Tier {
            store: Arc::new(store),
            runtime: Some(runtime),
            describe,
            prefix,
            default_storage_class: opts.default_storage_class,
            part_size: opts.part_size,
            part_concurrency: opts.part_concurrency.max(1),
        })
    }

    /// Runs `fut` on the tier's runtime and waits for it from this (any) thread.
    fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &str,
        fut: impl Future<Output = Result<T, TierError>> + Send + 'static,
    ) -> Result<T, TierError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let rt = self.runtime.as_ref().expect("the runtime lives until drop");
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(TierError::Failed {
                op,
                key: key.to_owned(),
                message: "the S3 client task ended without an answer (it panicked)".into(),
            })
        })
    }

    fn path(&self, op: &'static str, key: &str) -> Result<Path, TierError> {
        check_key(op, key)?;
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(&full).map_err(|e| TierError::Failed {
            op,
            key: key.to_owned(),
            message: e.to_string(),
        })
    }

    /// `key` of an object the store listed, relative to the prefix.
    fn relative<'a>(&self, location: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(location)
        } else {
            location
                .strip_prefix(self.prefix.as_str())
                .and_then(|r| r.strip_prefix('/'))
        }
    }

    /// The part size for an object of `len` bytes: the configured one, grown so the upload
    /// has at most [`MAX_PARTS`] parts.
    fn part_size_for(&self, len: u64) -> u64 {
        self.part_size.max(len.div_ceil(MAX_PARTS))
    }
}

/// Maps an `object_store` error to the tier's kinds. `object_store` has already retried what
/// it retries (connection errors, timeouts, 5xx), so what reaches here is final.
fn map_err(op: &'static str, key: &str, e: object_store::Error) -> TierError {
    let key = key.to_owned();
    match e {
        object_store::Error::NotFound { .. } => TierError::NotFound { key },
        e if is_temporary(&e) => TierError::Unavailable {
            op,
            key,
            message: error_chain(&e),
        },
        e => TierError::Failed {
            op,
            key,
            message: error_chain(&e),
        },
    }
}

/// Connection errors and timeouts (an [`HttpError`] anywhere in the chain) and server-side
/// errors (5xx, or S3's `InternalError`/`SlowDown` inside a 200) are temporary.
///
/// `object_store` does not export its retry error, whose status code says 5xx; its message
/// does ("Server returned non-2xx status code: 503 Service Unavailable: …"), and a unit test
/// against a fake server that answers 503 pins that reading.
fn is_temporary(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<HttpError>() {
            return true;
        }
        let text = err.to_string();
        if let Some(rest) = text.strip_prefix("Server returned non-2xx status code: ") {
            return rest.starts_with('5');
        }
        if text.starts_with("Server returned error response: ")
            && (text.contains("InternalError") || text.contains("SlowDown"))
        {
            return true;
        }
        next = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(err) = next {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = err.source();
    }
    text
}

fn attributes(class: Option<&str>) -> Attributes {
    let mut attrs = Attributes::new();
    if let Some(class) = class {
        attrs.insert(
            Attribute::StorageClass,
            AttributeValue::from(class.to_owned()),
        );
    }
    attrs
}

/// Uploads `data` in parts of `part_size`, `concurrency` at a time; aborts the upload on any
/// failure so neither parts nor a partial object are left.
async fn put_multipart(
    store: Arc<AmazonS3>,
    path: Path,
    data: Bytes,
    part_size: u64,
    concurrency: usize,
    attrs: Attributes,
) -> Result<(), object_store::Error> {
    let opts = PutMultipartOptions {
        attributes: attrs,
        ..Default::default()
    };
    let mut upload = store.put_multipart_opts(&path, opts).await?;
    let part_size = part_size as usize;
    let parts: Vec<_> = (0..data.len())
        .step_by(part_size)
        .map(|start| {
            let end = (start + part_size).min(data.len());
            upload.put_part(PutPayload::from_bytes(data.slice(start..end)))
        })
        .collect();
    let sent: Result<Vec<()>, _> = futures_util::stream::iter(parts)
        .buffer_unordered(concurrency)
        .try_collect()
        .await;
    let done = match sent {
        Ok(_) => upload.complete().await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        // Best effort: the upload's error is the one to report. An abort that fails too
        // leaves parts that the bucket's lifecycle rule for incomplete uploads must clean.
        if let Err(abort) = upload.abort().await {
            tracing::warn!(%path, error = %abort, "aborting a failed multipart upload failed");
        }
        return Err(e);
    }
    Ok(())
}

impl ColdTier for S3Tier {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn put(&self, key: &str, data: &[u8], opts: &ObjectOptions) -> Result<(), TierError> {
        let path = self.path("put", key)?;
        let class = opts
            .storage_class
            .as_deref()
            .or(self.default_storage_class.as_deref());
        let attrs = attributes(class);
        let store = self.store.clone();
        let owned_key = key.to_owned();
        // The task outlives nothing of the caller's: it gets its own copy of the bytes.
        let data = Bytes::copy_from_slice(data);
        if data.len() as u64 <= self.part_size {
            self.run("put", key, async move {
                let opts = PutOptions {
                    attributes: attrs,
                    ..Default::default()
                };
                store
                    .put_opts(&path, PutPayload::from_bytes(data), opts)
                    .await
                    .map(|_| ())
                    .map_err(|e| map_err("put", &owned_key, e))
            })
        } else {
            let part_size = self.part_size_for(data.len() as u64);
            let concurrency = self.part_concurrency;
            self.run("put", key, async move {
                put_multipart(store, path, data, part_size, concurrency, attrs)
                    .await
                    .map_err(|e| map_err("put", &owned_key, e))
            })
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, TierError> {
        let path = self.path("get", key)?;
        let out_of_range = |size: u64| TierError::Failed {
            op: "get",
            key: key.to_owned(),
            message: format!(
                "range {}..{} is outside the object's {size} bytes",
                range.start, range.end
            ),
        };
        if range.start >= range.end {
            // S3 has no empty range: ask for the size, which also says whether it exists.
            let size = self.head(key)?.ok_or_else(|| TierError::NotFound {
                key: key.to_owned(),
            })?;
            if range.start > range.end || range.start > size {
                return Err(out_of_range(size));
            }
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let owned_key = key.to_owned();
        let want = range.clone();
        let (bytes, size) = self.run("get", key, async move {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(want.clone())),
                ..Default::default()
            };
            let map = |e| map_err("get", &owned_key, e);
            let result = store.get_opts(&path, opts).await.map_err(map)?;
            let size = result.meta.size;
            let bytes = result.bytes().await.map_err(map)?;
            Ok((bytes, size))
        })?;
        if range.end > size || bytes.len() as u64 != range.end - range.start {
            return Err(out_of_range(size));
        }
        Ok(Vec::from(bytes))
    }

    fn head(&self, key: &str) -> Result<Option<u64>, TierError> {
        let path = self.path("head", key)?;
        let store = self.store.clone();
        let owned_key = key.to_owned();
        self.run("head", key, async move {
            match store.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(map_err("head", &owned_key, e)),
            }
        })
    }

    fn delete(&self, key: &str) -> Result<(), TierError> {
        let path = self.path("delete", key)?;
        let store = self.store.clone();
        let owned_key = key.to_owned();
        self.run("delete", key, async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(map_err("delete", &owned_key, e)),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        // object_store lists whole path segments ("a/b" finds "a/b/c", not "a/bc"); the
        // contract is a string prefix. List from the last complete segment, then filter.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let full_dir = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, _) => dir.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{dir}", self.prefix),
        };
        let list_path = if full_dir.is_empty() {
            None
        } else {
            Some(Path::parse(&full_dir).map_err(|e| TierError::Failed {
                op: "list",
                key: prefix.to_owned(),
                message: e.to_string(),
            })?)
        };
        let store = self.store.clone();
        let owned_prefix = prefix.to_owned();
        let metas = self.run("list", prefix, async move {
            store
                .list(list_path.as_ref())
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| map_err("list", &owned_prefix, e))
        })?;
        let mut out: Vec<ObjectInfo> = metas
            .iter()
            .filter_map(|m| {
                let key = self.relative(m.location.as_ref())?;
                key.starts_with(prefix).then(|| ObjectInfo {
                    key: key.to_owned(),
                    size: m.size,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A server that answers every request with `status` and counts the requests.
    fn fake_server(status: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Read the head (and whatever body arrived); answer, close.
                let mut buf = [0u8; 65536];
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = conn.read(&mut buf);
                let body = "<Error><Code>X</Code></Error>";
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (format!("http://{addr}"), count)
    }

    fn tier_at(endpoint: String) -> S3Tier {
        let mut o = S3Options::new(Some(endpoint), "b", "garage", "id", "secret");
        o.allow_http = true;
        o.retry = RetryBudget {
            max_retries: 2,
            retry_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
        };
        S3Tier::new(o).unwrap()
    }

    #[test]
    fn server_errors_are_retried_then_unavailable() {
        let (endpoint, count) = fake_server("503 Service Unavailable");
        let tier = tier_at(endpoint);
        let e = tier.get_range("a/b", 0..10).unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert!(
            count.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the 503 was retried"
        );
        let e = tier.head("a/b").unwrap_err();
        assert!(
            matches!(e, TierError::Unavailable { op: "head", .. }),
            "{e}"
        );
    }

    #[test]
    fn client_errors_are_failed_and_not_retried() {
        for status in [
            "403 Forbidden",
            "400 Bad Request",
            "416 Range Not Satisfiable",
        ] {
            let (endpoint, count) = fake_server(status);
            let tier = tier_at(endpoint);
            let e = tier.get_range("a/b", 0..10).unwrap_err();
            assert!(matches!(e, TierError::Failed { .. }), "{status}: {e}");
            assert_eq!(
                count.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "{status}"
            );
        }
        let (endpoint, _) = fake_server("404 Not Found");
        let e = tier_at(endpoint).get_range("a/b", 0..10).unwrap_err();
        assert!(matches!(e, TierError::NotFound { .. }), "{e}");
    }

    #[test]
    fn options_are_checked() {
        let mut o = S3Options::new(
            Some("http://10.0.0.1:3900".into()),
            "b",
            "r",
            "id",
            "secret",
        );
        let e = S3Tier::new(o.clone()).unwrap_err();
        assert!(e.to_string().contains("plain http"), "{e}");
        o.allow_http = true;
        o.part_size = 1 << 20;
        let e = S3Tier::new(o.clone()).unwrap_err();
        assert!(e.to_string().contains("part size"), "{e}");
        o.part_size = 8 << 20;
        o.prefix = "a/../b".into();
        assert!(S3Tier::new(o.clone()).is_err());
        o.prefix = "/cold/".into();
        let t = S3Tier::new(o).unwrap();
        assert_eq!(t.prefix, "cold");
        assert_eq!(t.part_size_for(1 << 20), 8 << 20);
        // 10,000 parts at most: a 100 GiB object needs parts over 10 MiB.
        let p = t.part_size_for(100 << 30);
        assert!(p > 10 << 20 && (100u64 << 30).div_ceil(p) <= MAX_PARTS);
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn loopback_endpoints() {
        for yes in [
            "http://127.0.0.1:3900",
            "http://localhost:1/",
            "http://[::1]:3900",
            "http://127.1.2.3",
        ] {
            assert!(is_loopback_http(yes), "{yes}");
        }
        for no in [
            "https://127.0.0.1:3900",
            "http://10.0.0.1:3900",
            "http://localhost.example.com",
            "http://[::2]:1",
        ] {
            assert!(!is_loopback_http(no), "{no}");
        }
    }
}
