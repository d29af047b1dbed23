//! tus 1.0 at `/api/uploads`: the protocol with reqwest and raw sockets against the in-process
//! service, and the reference client (tus-js-client under Node) against the real `tessera serve`
//! binary, killed and restarted mid-upload.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::Digest;

use crate::common::random_bytes;
use crate::http::Service;

const OCTETS: &str = "application/offset+octet-stream";

fn tus(s: &Service, method: Method, url: &str, token: Option<&str>) -> RequestBuilder {
    let url = if url.starts_with("http") {
        url.to_string()
    } else {
        format!("{}{url}", s.url)
    };
    let r = s.http.request(method, url).header("Tus-Resumable", "1.0.0");
    match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

fn meta(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", B64.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

fn assert_tus(r: &Response) {
    assert_eq!(
        header(r, "tus-resumable").as_deref(),
        Some("1.0.0"),
        "no Tus-Resumable on a {} answer",
        r.status()
    );
}

fn error_code(r: Response) -> String {
    let v: Value = r.json().unwrap();
    assert!(v["message"].is_string(), "error body without message: {v}");
    v["error"].as_str().unwrap().to_string()
}

/// Creates an upload of `len` bytes for `token`; returns its URL.
fn create(s: &Service, token: &str, len: u64, name: &str) -> String {
    let r = tus(s, Method::POST, "/api/uploads", Some(token))
        .header("Upload-Length", len.to_string())
        .header("Upload-Metadata", meta(&[("filename", name)]))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_tus(&r);
    let loc = header(&r, "location").unwrap();
    assert!(loc.starts_with(&format!("{}/api/uploads/", s.url)), "{loc}");
    loc
}

fn patch(s: &Service, token: &str, url: &str, offset: u64, data: &[u8]) -> Response {
    tus(s, Method::PATCH, url, Some(token))
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", offset.to_string())
        .body(data.to_vec())
        .send()
        .unwrap()
}

fn head(s: &Service, token: &str, url: &str) -> Response {
    tus(s, Method::HEAD, url, Some(token)).send().unwrap()
}

/// The offset HEAD reports.
fn offset(s: &Service, token: &str, url: &str) -> u64 {
    let r = head(s, token, url);
    assert_eq!(r.status(), StatusCode::OK);
    header(&r, "upload-offset").unwrap().parse().unwrap()
}

fn session_id(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

fn part_path(s: &Service, url: &str) -> PathBuf {
    s.store
        .dir()
        .join("uploads")
        .join(format!("{}.part", session_id(url)))
}

fn download(s: &Service, token: &str, file_id: &str) -> Vec<u8> {
    let r = s
        .get(&format!("/api/files/{file_id}"), Some(token))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().unwrap().to_vec()
}

/// Polls `f` until it returns `Some`, for at most 10 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Windows executable's header.
fn exe() -> Vec<u8> {
    let mut v = vec![0u8; 0x200];
    v[..2].copy_from_slice(b"MZ");
    v[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    v[0x80..0x84].copy_from_slice(b"PE\0\0");
    v[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
    v[0x96..0x98].copy_from_slice(&0x0022u16.to_le_bytes());
    v
}

#[test]
fn options_announces_the_protocol() {
    let s = Service::with(|c| c.uploads.max_upload = bytesize::ByteSize::mib(64));
    for path in ["/api/uploads", "/api/uploads/01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
        // No token, no Tus-Resumable: OPTIONS is the discovery request.
        let r = s
            .http
            .request(Method::OPTIONS, format!("{}{path}", s.url))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{path}");
        assert_eq!(header(&r, "tus-version").as_deref(), Some("1.0.0"));
        let ext = header(&r, "tus-extension").unwrap();
        for e in [
            "creation",
            "creation-with-upload",
            "expiration",
            "checksum",
            "termination",
        ] {
            assert!(ext.split(',').any(|x| x == e), "{e} missing from {ext}");
        }
        assert_eq!(
            header(&r, "tus-max-size").as_deref(),
            Some((64u64 << 20).to_string().as_str())
        );
        assert_eq!(
            header(&r, "tus-checksum-algorithm").as_deref(),
            Some("sha1,sha256")
        );
    }
    // X-HTTP-Method-Override turns a POST into an OPTIONS.
    let r = s
        .http
        .post(format!("{}/api/uploads", s.url))
        .header("X-HTTP-Method-Override", "OPTIONS")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "tus-version").as_deref(), Some("1.0.0"));
}

#[test]
fn chunked_upload_round_trip() {
    let s = Service::start();
    let data = random_bytes(11, 1_000_003);
    let r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice))
        .header("Upload-Length", data.len().to_string())
        .header(
            "Upload-Metadata",
            meta(&[("filename", "data.bin"), ("note", "first try\r\nX-Evil: 1")]),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_tus(&r);
    let url = header(&r, "location").unwrap();
    assert!(url.starts_with(&format!("{}/api/uploads/", s.url)), "{url}");
    let now = s.clock.0.load(Ordering::SeqCst);
    let expected_expiry = httpdate::fmt_http_date(
        UNIX_EPOCH + Duration::from_millis(now as u64) + Duration::from_secs(24 * 3600),
    );
    assert_eq!(
        header(&r, "upload-expires").as_deref(),
        Some(expected_expiry.as_str())
    );
    assert!(part_path(&s, &url).exists());

    let r = head(&s, &s.alice, &url);
    assert_eq!(r.status(), StatusCode::OK);
    assert_tus(&r);
    assert_eq!(header(&r, "upload-offset").as_deref(), Some("0"));
    assert_eq!(header(&r, "upload-length"), Some(data.len().to_string()));
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    // The metadata comes back re-encoded from the sanitised values.
    let m = header(&r, "upload-metadata").unwrap();
    assert!(
        m.contains(&format!("filename {}", B64.encode("data.bin"))),
        "{m}"
    );
    assert!(
        m.contains(&format!("note {}", B64.encode("first tryX-Evil: 1"))),
        "{m}"
    );

    let cuts = [0, 250_000, 500_000, 750_000, data.len()];
    let mut file_id = None;
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let r = patch(&s, &s.alice, &url, a as u64, &data[a..b]);
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "PATCH at {a}");
        assert_tus(&r);
        assert_eq!(header(&r, "upload-offset"), Some(b.to_string()));
        if b < data.len() {
            assert!(header(&r, "upload-expires").is_some());
            assert!(header(&r, "tessera-file-id").is_none());
            assert_eq!(offset(&s, &s.alice, &url), b as u64);
        } else {
            file_id = header(&r, "tessera-file-id");
        }
    }
    let file_id = file_id.expect("the completing PATCH names the stored file");
    assert_eq!(download(&s, &s.alice, &file_id), data);
    let m: Value = s
        .get(&format!("/api/files/{file_id}/meta"), Some(&s.alice))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m["display_name"], "data.bin");
    assert_eq!(m["owner"], "alice");
    assert_eq!(
        m["metadata"]["upload_metadata"]["note"],
        "first tryX-Evil: 1"
    );
    // The session is gone with its staged bytes.
    assert_eq!(head(&s, &s.alice, &url).status(), StatusCode::NOT_FOUND);
    assert!(!part_path(&s, &url).exists());
    assert!(s.store.list_uploads(None).unwrap().is_empty());
}

#[test]
fn offsets_checksums_and_content_types_are_checked() {
    let s = Service::start();
    let data = random_bytes(12, 400_000);
    let url = create(&s, &s.alice, data.len() as u64, "c.bin");
    assert_eq!(
        patch(&s, &s.alice, &url, 0, &data[..100_000]).status(),
        StatusCode::NO_CONTENT
    );

    // Wrong offsets: 409, nothing changes.
    for wrong in [0u64, 99_999, 100_001, 300_000] {
        let r = patch(&s, &s.alice, &url, wrong, &data[100_000..200_000]);
        assert_eq!(r.status(), StatusCode::CONFLICT, "offset {wrong}");
        assert_tus(&r);
        assert_eq!(error_code(r), "conflict");
        assert_eq!(offset(&s, &s.alice, &url), 100_000);
    }
    assert_eq!(
        std::fs::metadata(part_path(&s, &url)).unwrap().len(),
        100_000
    );

    let part = &data[100_000..200_000];
    let sha1 = B64.encode(sha1::Sha1::digest(part));
    let sha256 = B64.encode(sha2::Sha256::digest(part));
    let with_sum = |sum: &str, body: &[u8], at: u64| {
        tus(&s, Method::PATCH, &url, Some(&s.alice))
            .header("Content-Type", OCTETS)
            .header("Upload-Offset", at.to_string())
            .header("Upload-Checksum", sum)
            .body(body.to_vec())
            .send()
            .unwrap()
    };
    // A wrong digest: 460, the part is discarded.
    let mut bad = part.to_vec();
    bad[5] ^= 1;
    for sum in [format!("sha1 {sha1}"), format!("sha256 {sha256}")] {
        let r = with_sum(&sum, &bad, 100_000);
        assert_eq!(r.status().as_u16(), 460, "{sum}");
        assert_tus(&r);
        assert_eq!(error_code(r), "checksum_mismatch");
        assert_eq!(offset(&s, &s.alice, &url), 100_000);
    }
    // Unknown algorithm, malformed digest: 400, nothing changes.
    for sum in ["md5 AAAA".to_string(), "sha1 !!!".into(), "sha1".into()] {
        let r = with_sum(&sum, part, 100_000);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{sum}");
        assert_tus(&r);
        assert_eq!(offset(&s, &s.alice, &url), 100_000);
    }
    // Good digests are accepted.
    let r = with_sum(&format!("sha1 {sha1}"), part, 100_000);
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "upload-offset").as_deref(), Some("200000"));
    let part = &data[200_000..300_000];
    let r = with_sum(
        &format!("sha256 {}", B64.encode(sha2::Sha256::digest(part))),
        part,
        200_000,
    );
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset(&s, &s.alice, &url), 300_000);

    // Another content type: 415.
    for ct in [Some("application/octet-stream"), None] {
        let mut r = tus(&s, Method::PATCH, &url, Some(&s.alice))
            .header("Upload-Offset", "300000")
            .body(data[300_000..].to_vec());
        if let Some(ct) = ct {
            r = r.header("Content-Type", ct);
        }
        let r = r.send().unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_tus(&r);
    }
    // Another protocol version, or none: 412 with Tus-Version.
    for v in [Some("0.2.2"), Some("2.0.0"), None] {
        let mut r = s
            .http
            .patch(&url)
            .bearer_auth(&s.alice)
            .header("Content-Type", OCTETS)
            .header("Upload-Offset", "300000")
            .body(data[300_000..].to_vec());
        if let Some(v) = v {
            r = r.header("Tus-Resumable", v);
        }
        let r = r.send().unwrap();
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED, "{v:?}");
        assert_eq!(header(&r, "tus-version").as_deref(), Some("1.0.0"));
        assert_tus(&r);
    }
    // Missing Upload-Offset: 400.
    let r = tus(&s, Method::PATCH, &url, Some(&s.alice))
        .header("Content-Type", OCTETS)
        .body(data[300_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(offset(&s, &s.alice, &url), 300_000);

    // X-HTTP-Method-Override: a POST that is a PATCH completes the upload.
    let r = tus(&s, Method::POST, &url, Some(&s.alice))
        .header("X-HTTP-Method-Override", "PATCH")
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", "300000")
        .body(data[300_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let id = header(&r, "tessera-file-id").unwrap();
    assert_eq!(download(&s, &s.alice, &id), data);
}

#[test]
fn tokens_and_ownership_are_enforced() {
    let s = Service::start();
    let data = random_bytes(13, 50_000);
    // Missing or wrong token: 401, still a tus answer.
    for token in [None, Some("not-a-token")] {
        let r = tus(&s, Method::POST, "/api/uploads", token)
            .header("Upload-Length", "10")
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_tus(&r);
    }
    assert!(s.store.list_uploads(None).unwrap().is_empty());

    let url = create(&s, &s.alice, data.len() as u64, "mine.bin");
    assert_eq!(
        patch(&s, &s.alice, &url, 0, &data[..20_000]).status(),
        StatusCode::NO_CONTENT
    );
    for token in [None, Some("not-a-token")] {
        let r = tus(&s, Method::HEAD, &url, token).send().unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_tus(&r);
    }
    // Bob cannot see, write or end alice's upload: it does not exist for him.
    assert_eq!(head(&s, &s.bob, &url).status(), StatusCode::NOT_FOUND);
    let r = patch(&s, &s.bob, &url, 20_000, &data[20_000..]);
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_tus(&r);
    let r = tus(&s, Method::DELETE, &url, Some(&s.bob)).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Unknown and malformed ids are 404 too.
    for bad in [
        "/api/uploads/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/api/uploads/..%2F..%2Fetc",
    ] {
        assert_eq!(
            head(&s, &s.alice, bad).status(),
            StatusCode::NOT_FOUND,
            "{bad}"
        );
    }
    // Alice's upload is untouched and completes.
    assert_eq!(offset(&s, &s.alice, &url), 20_000);
    let r = patch(&s, &s.alice, &url, 20_000, &data[20_000..]);
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.file_count("alice"), 1);
    assert_eq!(s.file_count("bob"), 0);
}

#[test]
fn creation_limits_and_variants() {
    let s = Service::with(|c| c.uploads.max_upload = bytesize::ByteSize::mib(1));
    let max = 1u64 << 20;
    // Over the maximum: 413, no session.
    let r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice))
        .header("Upload-Length", (max + 1).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_tus(&r);
    assert_eq!(error_code(r), "too_large");
    // No length, both, malformed: 400.
    for hs in [
        vec![],
        vec![("Upload-Length", "10"), ("Upload-Defer-Length", "1")],
        vec![("Upload-Length", "-1")],
        vec![("Upload-Length", "ten")],
        vec![("Upload-Defer-Length", "2")],
        vec![("Upload-Length", "10"), ("Upload-Metadata", "bad key x")],
    ] {
        let mut r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice));
        for (k, v) in &hs {
            r = r.header(*k, *v);
        }
        let r = r.send().unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{hs:?}");
        assert_tus(&r);
    }
    assert!(s.store.list_uploads(None).unwrap().is_empty());

    // More bytes than declared: 413, the part is discarded.
    let data = random_bytes(14, 3000);
    let url = create(&s, &s.alice, 2000, "small.bin");
    let r = patch(&s, &s.alice, &url, 0, &data);
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(offset(&s, &s.alice, &url), 0);

    // creation-with-upload, whole file: 201 with the offset and the stored file.
    let r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice))
        .header("Upload-Length", data.len().to_string())
        .header("Upload-Metadata", meta(&[("filename", "whole.bin")]))
        .header("Content-Type", OCTETS)
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "upload-offset"), Some(data.len().to_string()));
    let id = header(&r, "tessera-file-id").unwrap();
    assert_eq!(download(&s, &s.alice, &id), data);

    // creation-with-upload, first part; deferred length declared by the last PATCH.
    let r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice))
        .header("Upload-Defer-Length", "1")
        .header("Upload-Metadata", meta(&[("filename", "deferred.bin")]))
        .header("Content-Type", OCTETS)
        .body(data[..1000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "upload-offset").as_deref(), Some("1000"));
    assert!(header(&r, "tessera-file-id").is_none());
    let url = header(&r, "location").unwrap();
    let r = head(&s, &s.alice, &url);
    assert_eq!(header(&r, "upload-defer-length").as_deref(), Some("1"));
    assert!(header(&r, "upload-length").is_none());
    let r = tus(&s, Method::PATCH, &url, Some(&s.alice))
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", "1000")
        .header("Upload-Length", data.len().to_string())
        .body(data[1000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let id = header(&r, "tessera-file-id").unwrap();
    assert_eq!(download(&s, &s.alice, &id), data);

    // A body of another type on the POST: 415, no session.
    let before = s.store.list_uploads(None).unwrap().len();
    let r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice))
        .header("Upload-Length", "3000")
        .header("Content-Type", "application/json")
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(s.store.list_uploads(None).unwrap().len(), before);
}

#[test]
fn location_follows_trusted_forwarded_headers_only() {
    let s = Service::start();
    let r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice))
        .header("Upload-Length", "10")
        .header("X-Forwarded-Host", "files.example.com")
        .header("X-Forwarded-Proto", "https")
        .send()
        .unwrap();
    assert!(
        header(&r, "location")
            .unwrap()
            .starts_with(&format!("{}/api/uploads/", s.url))
    );

    let s = Service::with(|c| c.server.trust_forwarded = true);
    let r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice))
        .header("Upload-Length", "10")
        .header("X-Forwarded-Host", "files.example.com")
        .header("X-Forwarded-Proto", "https")
        .send()
        .unwrap();
    let loc = header(&r, "location").unwrap();
    assert!(
        loc.starts_with("https://files.example.com/api/uploads/"),
        "{loc}"
    );
}

#[test]
fn termination_removes_the_session_and_its_bytes() {
    let s = Service::start();
    let data = random_bytes(15, 100_000);
    let url = create(&s, &s.alice, 200_000, "t.bin");
    assert_eq!(
        patch(&s, &s.alice, &url, 0, &data).status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        std::fs::metadata(part_path(&s, &url)).unwrap().len(),
        100_000
    );
    let r = tus(&s, Method::DELETE, &url, Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_tus(&r);
    assert_eq!(head(&s, &s.alice, &url).status(), StatusCode::NOT_FOUND);
    assert_eq!(
        patch(&s, &s.alice, &url, 100_000, &data).status(),
        StatusCode::NOT_FOUND
    );
    assert!(!part_path(&s, &url).exists());
    assert!(s.store.list_uploads(None).unwrap().is_empty());
    let r = tus(&s, Method::DELETE, &url, Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[test]
fn expired_sessions_answer_410_and_the_sweep_frees_them() {
    let s = Service::with(|c| c.uploads.session_ttl = Duration::from_secs(3600));
    let data = random_bytes(16, 70_000);
    let url = create(&s, &s.alice, 100_000, "e.bin");
    let r = patch(&s, &s.alice, &url, 0, &data);
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let now = s.clock.0.load(Ordering::SeqCst);
    let expiry =
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(now as u64 + 3_600_000));
    assert_eq!(header(&r, "upload-expires"), Some(expiry));

    s.clock.0.fetch_add(3_600_000 - 1, Ordering::SeqCst);
    assert_eq!(offset(&s, &s.alice, &url), 70_000);
    s.clock.0.fetch_add(1, Ordering::SeqCst);
    let r = head(&s, &s.alice, &url);
    assert_eq!(r.status(), StatusCode::GONE);
    assert_tus(&r);
    let r = patch(&s, &s.alice, &url, 70_000, &data[..30_000]);
    assert_eq!(r.status(), StatusCode::GONE);
    // Another user still sees nothing at all.
    assert_eq!(head(&s, &s.bob, &url).status(), StatusCode::NOT_FOUND);
    assert_eq!(
        tus(&s, Method::DELETE, &url, Some(&s.bob))
            .send()
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        std::fs::metadata(part_path(&s, &url)).unwrap().len(),
        70_000
    );

    let report = s.store.upload_sweep_expired().unwrap();
    assert_eq!(report.expired_sessions, 1);
    assert_eq!(report.bytes_freed, 70_000);
    assert!(!part_path(&s, &url).exists());
    assert_eq!(head(&s, &s.alice, &url).status(), StatusCode::NOT_FOUND);

    // An expired session can still be terminated by its owner.
    let url = create(&s, &s.alice, 100_000, "e2.bin");
    s.clock.0.fetch_add(3_600_000, Ordering::SeqCst);
    assert_eq!(head(&s, &s.alice, &url).status(), StatusCode::GONE);
    let r = tus(&s, Method::DELETE, &url, Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(!part_path(&s, &url).exists());
}

#[test]
fn the_server_sweeps_expired_sessions_on_its_own() {
    let s = Service::with(|c| {
        c.uploads.session_ttl = Duration::from_secs(60);
        c.uploads.sweep_interval = Duration::from_secs(1);
    });
    let data = random_bytes(17, 10_000);
    let url = create(&s, &s.alice, 20_000, "swept.bin");
    assert_eq!(
        patch(&s, &s.alice, &url, 0, &data).status(),
        StatusCode::NO_CONTENT
    );
    // Live sessions survive sweeps.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(offset(&s, &s.alice, &url), 10_000);
    s.clock.0.fetch_add(61_000, Ordering::SeqCst);
    eventually("the periodic sweep", || {
        (head(&s, &s.alice, &url).status() == StatusCode::NOT_FOUND).then_some(())
    });
    assert!(!part_path(&s, &url).exists());
    assert!(s.store.list_uploads(None).unwrap().is_empty());
}

/// Sends a PATCH's headers announcing `announced` bytes and then only `data`, on a raw socket.
fn raw_patch(
    s: &Service,
    url: &str,
    at: u64,
    announced: usize,
    data: &[u8],
    extra: &str,
) -> TcpStream {
    let addr = s.url.trim_start_matches("http://");
    let path = &url[s.url.len()..];
    let mut sock = TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Tus-Resumable: 1.0.0\r\nContent-Type: {OCTETS}\r\nUpload-Offset: {at}\r\n\
         {extra}Content-Length: {announced}\r\n\r\n",
        s.alice
    )
    .unwrap();
    sock.write_all(data).unwrap();
    sock.flush().unwrap();
    sock
}

#[test]
fn a_broken_connection_keeps_exactly_the_bytes_received() {
    let s = Service::start();
    let data = random_bytes(18, 2_000_000);
    let url = create(&s, &s.alice, data.len() as u64, "cut.bin");

    // First cut: half-close after 300,001 of the 1,000,000 bytes announced, read the answer.
    let m1 = 300_001;
    let mut sock = raw_patch(&s, &url, 0, 1_000_000, &data[..m1], "");
    sock.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = sock.read_to_string(&mut answer);
    assert!(
        !answer.starts_with("HTTP/1.1 204"),
        "a cut body was taken as complete: {answer}"
    );
    drop(sock);
    let got = eventually("the kept bytes", || {
        let o = offset(&s, &s.alice, &url);
        (o != 0).then_some(o)
    });
    assert_eq!(got, m1 as u64);

    // Second cut: shut the socket down both ways after 123,457 more bytes.
    let m2 = 123_457;
    let sock = raw_patch(&s, &url, m1 as u64, 1_000_000, &data[m1..m1 + m2], "");
    std::thread::sleep(Duration::from_millis(100));
    sock.shutdown(Shutdown::Both).unwrap();
    drop(sock);
    let at = (m1 + m2) as u64;
    let got = eventually("the kept bytes", || {
        let o = offset(&s, &s.alice, &url);
        (o != m1 as u64).then_some(o)
    });
    assert_eq!(got, at);
    assert_eq!(std::fs::metadata(part_path(&s, &url)).unwrap().len(), at);

    // A cut part that carried a checksum cannot be verified: it is discarded.
    let sum = format!(
        "Upload-Checksum: sha1 {}\r\n",
        B64.encode(sha1::Sha1::digest(&data[m1 + m2..m1 + m2 + 500_000]))
    );
    let mut sock = raw_patch(
        &s,
        &url,
        at,
        500_000,
        &data[m1 + m2..m1 + m2 + 200_000],
        &sum,
    );
    sock.shutdown(Shutdown::Write).unwrap();
    let _ = sock.read_to_string(&mut String::new());
    drop(sock);
    // Wait until the writer let go (a PATCH at the right offset no longer gets 423).
    eventually("the cut append to end", || {
        let r = patch(&s, &s.alice, &url, at, &[]);
        (r.status() != StatusCode::LOCKED).then_some(())
    });
    assert_eq!(offset(&s, &s.alice, &url), at);

    // Resume from the offset HEAD gives: the file is byte-identical.
    let r = patch(&s, &s.alice, &url, at, &data[m1 + m2..]);
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let id = header(&r, "tessera-file-id").unwrap();
    assert_eq!(download(&s, &s.alice, &id), data);
}

#[test]
fn a_second_writer_gets_423() {
    let s = Service::start();
    let data = random_bytes(19, 300_000);
    let url = create(&s, &s.alice, data.len() as u64, "busy.bin");
    // A PATCH that stays open, holding the session: once its first bytes are in the staging
    // file, its append is running.
    let sock = raw_patch(&s, &url, 0, data.len(), &data[..1000], "");
    let part = part_path(&s, &url);
    eventually("the first writer to start", || {
        (std::fs::metadata(&part).unwrap().len() == 1000).then_some(())
    });
    let r = patch(&s, &s.alice, &url, 0, &[]);
    assert_eq!(r.status(), StatusCode::LOCKED);
    assert_tus(&r);
    assert_eq!(error_code(r), "busy");
    let r = tus(&s, Method::DELETE, &url, Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::LOCKED);
    sock.shutdown(Shutdown::Both).unwrap();
    drop(sock);
    let got = eventually("the first writer to end", || {
        let o = offset(&s, &s.alice, &url);
        (o != 0).then_some(o)
    });
    assert_eq!(got, 1000);
    let r = patch(&s, &s.alice, &url, 1000, &data[1000..]);
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let id = header(&r, "tessera-file-id").unwrap();
    assert_eq!(download(&s, &s.alice, &id), data);
}

#[test]
fn a_rejected_file_answers_422_and_stores_nothing() {
    let s = Service::start();
    let data = exe();
    let r = tus(&s, Method::POST, "/api/uploads", Some(&s.alice))
        .header("Upload-Length", data.len().to_string())
        .header(
            "Upload-Metadata",
            meta(&[("filename", "holiday.jpg"), ("filetype", "image/jpeg")]),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = header(&r, "location").unwrap();
    assert_eq!(
        patch(&s, &s.alice, &url, 0, &data[..100]).status(),
        StatusCode::NO_CONTENT
    );
    let r = patch(&s, &s.alice, &url, 100, &data[100..]);
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_tus(&r);
    assert!(header(&r, "tessera-file-id").is_none());
    let v: Value = r.json().unwrap();
    assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    assert_eq!(s.file_count("alice"), 0);
    assert!(s.store.list_uploads(None).unwrap().is_empty());
    assert!(!part_path(&s, &url).exists());
    assert_eq!(head(&s, &s.alice, &url).status(), StatusCode::NOT_FOUND);
}

#[test]
fn a_complete_but_unstored_session_is_stored_by_head() {
    // The request that completed the upload died before storing it (simulated with the
    // library: all bytes appended, no finish): a resuming client's HEAD stores it.
    let s = Service::start();
    let data = random_bytes(20, 90_000);
    let url = create(&s, &s.alice, data.len() as u64, "late.bin");
    s.store
        .upload_append(session_id(&url), 0, &data[..], None)
        .unwrap();
    let r = head(&s, &s.alice, &url);
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "upload-offset"), Some(data.len().to_string()));
    let id = header(&r, "tessera-file-id").expect("HEAD stores a complete upload");
    assert_eq!(download(&s, &s.alice, &id), data);
    assert_eq!(s.file_count("alice"), 1);
}

// ---- The reference client against the real binary ----

/// Kills its child (SIGKILL, by pid through `Child`) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tessera(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TESSERA_") {
            c.env_remove(k);
        }
    }
    c.arg("--store").arg(store);
    c
}

/// `tessera serve` on `port`, up and answering `/healthz`. A restart right after a kill may
/// find the port still held for a moment: retried a few times.
fn serve(store: &Path, port: u16, log: &Path) -> Proc {
    let health = format!("http://127.0.0.1:{port}/healthz");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for _attempt in 0..5 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut p = Proc(
            tessera(store)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting tessera serve"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = p.0.try_wait().unwrap() {
                eprintln!("tessera serve exited early ({status}); retrying");
                break;
            }
            if http
                .get(&health)
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return p;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "tessera serve did not come up on port {port}; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Node harness must be runnable: a missing Node.js or npm install fails, never skips.
fn node_harness() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tus");
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`node --version` failed ({}): Node.js is required for this test",
            o.status
        ),
        Err(e) => panic!(
            "Node.js is required for the tus-js-client test but `node` cannot be run ({e}); \
             install Node.js (and npm), then run `npm ci --prefix tests/tus`"
        ),
    }
    assert!(
        dir.join("node_modules/tus-js-client/package.json").exists(),
        "tests/tus/node_modules/tus-js-client is missing: run `npm ci --prefix tests/tus` \
         (`make test` does it)"
    );
    dir
}

#[test]
fn tus_js_client_resumes_across_abort_and_server_restart() {
    const CHUNK: u64 = 8 << 20;
    const TOTAL: usize = 50 << 20;
    let harness = node_harness();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let log = tmp.path().join("serve.log");
    let file = tmp.path().join("big.bin");
    let data = random_bytes(50, TOTAL);
    std::fs::write(&file, &data).unwrap();

    let out = tessera(&store)
        .args(["user", "add", "alice"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "user add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!token.is_empty());
    let port = free_port();
    let mut server = serve(&store, port, &log);
    let base = format!("http://127.0.0.1:{port}");

    let mut node = Proc(
        Command::new("node")
            .arg(harness.join("upload.mjs"))
            .env("TUS_ENDPOINT", format!("{base}/api/uploads"))
            .env("TUS_TOKEN", &token)
            .env("TUS_FILE", &file)
            .env("TUS_CHUNK_SIZE", CHUNK.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting node"),
    );
    let mut stdin: ChildStdin = node.0.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = node.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = node.0.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut transcript = Vec::new();
    let mut aborted_at = None;
    let mut restarts = 0;
    let mut file_id = None;
    while file_id.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(e) => panic!(
                "the tus client stopped talking ({e:?}); transcript:\n{}",
                transcript.join("\n")
            ),
        };
        transcript.push(line.clone());
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("ABORTED"), Some(n)) => aborted_at = Some(n.parse::<u64>().unwrap()),
            (Some("PAUSED"), Some(_)) => {
                assert!(aborted_at.is_some(), "paused before the abort");
                // Between two PATCHes: kill the server outright and bring it back.
                drop(server);
                server = serve(&store, port, &log);
                restarts += 1;
                writeln!(stdin, "GO").unwrap();
                stdin.flush().unwrap();
            }
            (Some("DONE"), Some(id)) => file_id = Some(id.to_string()),
            (Some("ERROR"), _) => panic!(
                "the tus client failed: {line}\ntranscript:\n{}",
                transcript.join("\n")
            ),
            _ => {}
        }
    }
    let status = node.0.wait().unwrap();
    let node_err = errors.join().unwrap();
    let transcript = transcript.join("\n");
    assert!(
        status.success(),
        "node exited with {status}: {node_err}\n{transcript}"
    );
    eprintln!("tus-js-client transcript:\n{transcript}");

    let aborted_at = aborted_at.expect("upload #1 was aborted");
    assert!(
        aborted_at as f64 >= 0.3 * TOTAL as f64,
        "aborted the PATCH at {aborted_at}"
    );
    assert_eq!(restarts, 1, "{transcript}");
    // Upload #2 resumed: its first accepted PATCH started where upload #1 left off (at least
    // the two chunks acknowledged before the abort), not at 0.
    let mut last_patch = None;
    let mut resumed_at = None;
    for l in transcript.split("\nURL ").nth(1).unwrap().lines() {
        if let Some(o) = l.strip_prefix("PATCH ") {
            last_patch = o.parse::<u64>().ok();
        } else if l.starts_with("RESPONSE PATCH 204") {
            resumed_at = last_patch;
            break;
        }
    }
    let resumed_at = resumed_at.expect("upload #2 sent an accepted PATCH");
    assert!(
        resumed_at >= 2 * CHUNK,
        "resumed at {resumed_at}:\n{transcript}"
    );
    if resumed_at % CHUNK != 0 {
        eprintln!(
            "the server kept {} bytes of the aborted PATCH",
            resumed_at - aborted_at
        );
    }
    // PATCHes went to the restarted server and were accepted.
    let after_pause = transcript.split("PAUSED").nth(1).unwrap();
    assert!(
        after_pause
            .lines()
            .any(|l| l.starts_with("RESPONSE PATCH 204")),
        "{transcript}"
    );

    let file_id = file_id.unwrap();
    let r = reqwest::blocking::Client::new()
        .get(format!("{base}/api/files/{file_id}"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got = r.bytes().unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&data),
        "the stored file differs"
    );
    let meta: Value = reqwest::blocking::Client::new()
        .get(format!("{base}/api/files/{file_id}/meta"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(meta["display_name"], "big.bin");
    assert_eq!(meta["sha256"], sha256_hex(&data));
    drop(server);
}
