//! Hostile clients against the category decision: a category the client names must never widen
//! a limit or skip a scan (issue 13, section 3). The server decides a file's category from its
//! extension and its detected type; a named category is only checked (422
//! `category_mismatch`). Every path a client has — multipart `/api/files`, `/api/images`, tus —
//! and the admin rescan are attacked, each case asserting the status and what is stored after.

use std::io::Read;
use std::sync::Arc;

use reqwest::blocking::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tessera::config::{ScanSettings, Settings};
use tessera::scan::{Clamd, ClamdAddress, ScanCategories, ScanConfig, ScanStamp, Timeouts};
use tessera::validate::CategoryRule;
use tessera::{Config, ListQuery, Origin, PutOptions, RescanOptions, Store};

use crate::common::{TempStore, png_bytes, text_bytes};
use crate::http::Service;
use crate::scan::{EICAR, EICAR_SIG, clamd_tcp};

const MB: u64 = 1_000_000;

/// A small, real-looking PDF.
fn pdf() -> Vec<u8> {
    b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
        .to_vec()
}

/// `len` bytes that are a ZIP to the validator (a local file header, then zeros), generated as
/// they are read: a large body without a large buffer.
struct ZipStream {
    left: u64,
    sent: u64,
}

impl ZipStream {
    fn new(len: u64) -> Self {
        ZipStream { left: len, sent: 0 }
    }
}

impl Read for ZipStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        buf[..n].fill(0);
        const HEADER: &[u8] = b"PK\x03\x04\x14\x00";
        for (i, b) in buf[..n].iter_mut().enumerate() {
            match HEADER.get(self.sent as usize + i) {
                Some(h) => *b = *h,
                None => break,
            }
        }
        self.left -= n as u64;
        self.sent += n as u64;
        Ok(n)
    }
}

/// A port nothing listens on: clamd is down.
fn clamd_down() -> ClamdAddress {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    ClamdAddress::Tcp(port.to_string())
}

/// `[scan]` with `clamd`, failing closed; `categories` narrows it (`None`: the default, all).
fn scanning(s: &mut Settings, clamd: ClamdAddress, categories: Option<&[&str]>) {
    let mut scan = ScanSettings {
        clamd,
        fail_open: false,
        ..Default::default()
    };
    if let Some(c) = categories {
        scan.categories = c.iter().map(|c| c.to_string()).collect();
    }
    s.scan = Some(scan);
}

fn one_file(category: Option<&str>, name: &str, data: &[u8]) -> Form {
    let form = match category {
        Some(c) => Form::new().text("category", c.to_string()),
        None => Form::new(),
    };
    form.part(
        "file",
        Part::bytes(data.to_vec()).file_name(name.to_string()),
    )
}

fn answer(r: reqwest::blocking::Response) -> (StatusCode, Value) {
    let status = r.status();
    (status, r.json().unwrap())
}

fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A tus creation-with-upload of the whole file: the answer to the request that also finishes.
fn tus_whole(
    svc: &Service,
    token: &str,
    meta: &[(&str, &str)],
    data: &[u8],
) -> (StatusCode, Value) {
    let meta = meta
        .iter()
        .map(|(k, v)| format!("{k} {}", b64(v.as_bytes())))
        .collect::<Vec<_>>()
        .join(",");
    let r = svc
        .tus(Method::POST, "/api/uploads", token)
        .header("Upload-Length", data.len().to_string())
        .header("Upload-Metadata", meta)
        .header("Content-Type", "application/offset+octet-stream")
        .body(data.to_vec())
        .send()
        .unwrap();
    let status = r.status();
    let body = r.text().unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn category_other_cannot_carry_a_zip_past_the_archives_limit() {
    let svc = Service::with(|s| {
        let mut p = s.policy().categories;
        p.get_mut("archives").unwrap().max_size = MB;
        p.get_mut("other").unwrap().max_size = 50 * MB;
        s.categories = Some(p);
    });
    let len = MB + 1;
    let form = Form::new().text("category", "other").part(
        "file",
        Part::reader_with_length(ZipStream::new(len), len).file_name("big.zip"),
    );
    let (status, body) = answer(svc.upload(&svc.bob, form));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "too_large", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("archives"),
        "{body}"
    );
    assert_eq!(svc.stored(), (0, 0));
    // At the archives limit it is stored, as an archive, whatever the client said.
    let form = Form::new().text("category", "other").part(
        "file",
        Part::reader_with_length(ZipStream::new(MB), MB).file_name("ok.zip"),
    );
    let (status, body) = answer(svc.upload(&svc.bob, form));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["files"][0]["file"]["category"], "archives", "{body}");
    assert_eq!(svc.stored(), (1, 1));
}

#[test]
fn category_other_with_a_101_mb_zip_is_refused_at_the_real_defaults() {
    // The reproduction exactly: the shipped defaults, a 101 MB .zip under `-F category=other`.
    let d = Settings::default().policy();
    assert_eq!(d.categories["archives"].max_size, 100 * MB);
    assert_eq!(d.categories["other"].max_size, 100 * MB);
    let svc = Service::start();
    let len = 101 * MB;
    let form = Form::new().text("category", "other").part(
        "file",
        Part::reader_with_length(ZipStream::new(len), len).file_name("backup.zip"),
    );
    let (status, body) = answer(svc.upload(&svc.bob, form));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["files"][0]["error"], "too_large", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("archives"),
        "{body}"
    );
    assert_eq!(svc.stored(), (0, 0));
    assert_eq!(svc.file_count("bob"), 0);
}

#[test]
fn tus_declared_zip_over_the_archives_limit_is_refused_before_a_byte() {
    let svc = Service::start();
    let meta = format!("filename {},category {}", b64(b"backup.zip"), b64(b"other"));
    let r = svc
        .tus(Method::POST, "/api/uploads", &svc.bob)
        .header("Upload-Length", (101 * MB).to_string())
        .header("Upload-Metadata", meta)
        .send()
        .unwrap();
    let (status, body) = answer(r);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("archives"),
        "{body}"
    );
    assert!(svc.store.list_uploads(Some("bob")).unwrap().is_empty());
    assert_eq!(svc.stored(), (0, 0));
}

#[test]
fn a_listed_file_is_its_category_whatever_the_client_says() {
    let svc = Service::start();
    // `category` applies to every later part: neither part becomes `other`.
    let form = Form::new()
        .text("category", "other")
        .part(
            "file",
            Part::bytes(png_bytes(1, 3000)).file_name("photo.png"),
        )
        .part("file", Part::bytes(pdf()).file_name("report.pdf"));
    let (status, body) = answer(svc.upload(&svc.bob, form));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["files"][0]["file"]["category"], "images", "{body}");
    assert_eq!(body["files"][1]["file"]["category"], "documents", "{body}");
    let other = svc
        .store
        .list(&ListQuery {
            category: Some("other".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(other.files.is_empty(), "{:?}", other.files);
}

#[test]
fn pdf_under_category_other_is_scanned_so_clamd_down_is_503() {
    let svc = Service::with(|s| scanning(s, clamd_down(), None));
    let (status, body) =
        answer(svc.upload(&svc.bob, one_file(Some("other"), "report.pdf", &pdf())));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "scanner_unavailable", "{body}");
    assert_eq!(svc.stored(), (0, 0));
}

#[test]
fn pdf_renamed_to_dodge_a_narrowed_scan_is_still_scanned() {
    // Only documents are scanned; the client names the PDF `x.bin` and asks for `other`.
    let svc = Service::with(|s| scanning(s, clamd_down(), Some(&["documents"])));
    for name in ["x.bin", "report", "notes.dat"] {
        let (status, body) = answer(svc.upload(&svc.bob, one_file(Some("other"), name, &pdf())));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {body}");
        assert_eq!(body["error"], "scanner_unavailable", "{name}: {body}");
    }
    assert_eq!(svc.stored(), (0, 0));
    // What the narrowing leaves out is stored unscanned: a PNG is an image.
    let (status, body) = answer(svc.upload(
        &svc.bob,
        one_file(Some("other"), "x.bin", &png_bytes(2, 2000)),
    ));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["files"][0]["file"]["category"], "images", "{body}");
    assert!(body["files"][0]["file"]["scan"].is_null(), "{body}");
}

#[test]
fn pdf_through_tus_under_category_other_is_503_with_clamd_down() {
    let svc = Service::with(|s| scanning(s, clamd_down(), None));
    let (status, body) = tus_whole(
        &svc,
        &svc.bob,
        &[("filename", "report.pdf"), ("category", "other")],
        &pdf(),
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "scanner_unavailable", "{body}");
    assert_eq!(svc.stored(), (0, 0));
    // The session is kept for a retry once the scanner is back; its bytes are not a file.
    assert_eq!(svc.store.list_uploads(Some("bob")).unwrap().len(), 1);
}

#[test]
fn pdf_through_api_images_under_category_other_is_503_with_clamd_down() {
    let svc = Service::with(|s| scanning(s, clamd_down(), None));
    let (status, body) =
        answer(svc.upload_images(&svc.bob, one_file(Some("other"), "report.pdf", &pdf())));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "scanner_unavailable", "{body}");
    assert_eq!(svc.stored(), (0, 0));
}

#[test]
fn a_category_that_does_not_take_the_file_is_422_category_mismatch() {
    let svc = Service::start();
    let zip = {
        let mut v = b"PK\x05\x06".to_vec();
        v.resize(22, 0);
        v
    };
    for (category, name, data) in [
        ("images", "notes.txt", b"plain words\n".to_vec()),
        ("documents", "a.zip", zip.clone()),
        ("videos", "photo.png", png_bytes(3, 1000)),
        // Decided by the content: a PDF named x.bin is a document, which images do not take.
        ("images", "x.bin", pdf()),
    ] {
        let (status, body) = answer(svc.upload(&svc.bob, one_file(Some(category), name, &data)));
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{category} {name}: {body}"
        );
        assert_eq!(
            body["error"], "category_mismatch",
            "{category} {name}: {body}"
        );
    }
    assert_eq!(svc.stored(), (0, 0));
    // An unknown category is bad input.
    let (status, body) = answer(svc.upload(&svc.bob, one_file(Some("backups"), "a.txt", b"x\n")));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(svc.stored(), (0, 0));
}

#[test]
fn tus_category_mismatch_is_refused_at_creation() {
    let svc = Service::start();
    let meta = format!("filename {},category {}", b64(b"notes.txt"), b64(b"images"));
    let r = svc
        .tus(Method::POST, "/api/uploads", &svc.bob)
        .header("Upload-Length", "12")
        .header("Upload-Metadata", meta)
        .send()
        .unwrap();
    let (status, body) = answer(r);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "category_mismatch", "{body}");
    assert!(svc.store.list_uploads(Some("bob")).unwrap().is_empty());
    // Decided by the content at the finish: the session is removed, nothing is stored.
    let (status, body) = tus_whole(
        &svc,
        &svc.bob,
        &[("filename", "scan.bin"), ("category", "images")],
        &pdf(),
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "category_mismatch", "{body}");
    assert!(svc.store.list_uploads(Some("bob")).unwrap().is_empty());
    assert_eq!(svc.stored(), (0, 0));
}

#[test]
fn api_images_category_mismatch_is_422_and_stores_nothing() {
    let svc = Service::start();
    let (status, body) = answer(svc.upload_images(
        &svc.bob,
        one_file(Some("documents"), "photo.png", &png_bytes(4, 2000)),
    ));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "category_mismatch", "{body}");
    assert_eq!(svc.stored(), (0, 0));
}

#[test]
fn api_images_cannot_take_an_image_past_the_images_limit_under_other() {
    let svc = Service::with(|s| {
        let mut p = s.policy().categories;
        p.get_mut("images").unwrap().max_size = 10_000;
        s.categories = Some(p);
    });
    let (status, body) = answer(svc.upload_images(
        &svc.bob,
        one_file(Some("other"), "huge.png", &png_bytes(5, 10_001)),
    ));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("images"),
        "{body}"
    );
    assert_eq!(svc.stored(), (0, 0));
}

#[test]
fn eicar_under_every_claimable_category_reaches_clamd() {
    // Scanning narrowed to documents: what the client names (category, extension) must not
    // keep the EICAR text from clamd.
    let svc = Service::with(|s| scanning(s, clamd_tcp(), Some(&["documents"])));
    let categories: Vec<String> = Settings::default()
        .policy()
        .categories
        .into_keys()
        .collect();
    let names = [
        "eicar.txt",
        "eicar.rs",
        "eicar.bin",
        "eicar",
        "eicar.jpg",
        "eicar.zip",
        "eicar.mp4",
    ];
    let mut reached = Vec::new();
    for category in &categories {
        for name in names {
            let (status, body) =
                answer(svc.upload(&svc.bob, one_file(Some(category), name, EICAR)));
            let what = format!("{category} {name}: {body}");
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}");
            match body["error"].as_str().unwrap() {
                "infected" => {
                    assert_eq!(body["signature"], EICAR_SIG, "{what}");
                    reached.push((category.as_str(), name));
                }
                "category_mismatch" | "type_mismatch" => {}
                other => panic!("{other}: {what}"),
            }
        }
    }
    // Every category that takes an EICAR text at all took it to clamd.
    assert_eq!(
        reached,
        [
            ("documents", "eicar.txt"),
            ("other", "eicar.txt"),
            ("other", "eicar.rs"),
            ("other", "eicar.bin"),
            ("other", "eicar"),
        ]
    );
    // Each is stored quarantined, and nothing else is stored.
    let all = svc
        .store
        .list(&ListQuery {
            include_deleted: true,
            ..Default::default()
        })
        .unwrap()
        .files;
    assert_eq!(all.len(), reached.len());
    assert!(all.iter().all(|f| f.quarantined
        && matches!(&f.scan, Some(ScanStamp::Infected { signature }) if signature == EICAR_SIG)));
}

#[test]
fn eicar_renamed_through_tus_still_reaches_clamd() {
    let svc = Service::with(|s| scanning(s, clamd_tcp(), Some(&["documents"])));
    let (status, body) = tus_whole(
        &svc,
        &svc.bob,
        &[("filename", "innocent.rs"), ("category", "other")],
        EICAR,
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "infected", "{body}");
    assert_eq!(body["signature"], EICAR_SIG, "{body}");
    let q = svc
        .store
        .list(&ListQuery {
            quarantined_only: true,
            ..Default::default()
        })
        .unwrap()
        .files;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].category, "other");
    assert_eq!(svc.stored(), (1, 1));
}

#[test]
fn rescan_finds_eicar_that_a_name_kept_out_of_the_scanned_categories() {
    // Stored before scanning was configured, under a name that makes it `other`.
    let tmp = TempStore::new();
    let store = tmp.create();
    let hidden = store
        .put(
            EICAR,
            &PutOptions {
                name: Some("notes.rs".into()),
                ..PutOptions::client("bob")
            },
        )
        .unwrap()
        .file;
    assert_eq!(
        (hidden.category.as_str(), hidden.scan.clone()),
        ("other", None)
    );
    let clean = store
        .put(
            &text_bytes(1, 5000)[..],
            &PutOptions {
                name: Some("clean.rs".into()),
                ..PutOptions::client("bob")
            },
        )
        .unwrap()
        .file;
    drop(store);
    // Scanning of documents only: the rescan decides from the content, as a put does.
    let scan = ScanConfig {
        categories: ScanCategories::Only(["documents".to_string()].into()),
        ..ScanConfig::new(Arc::new(Clamd::new(clamd_tcp(), Timeouts::default())))
    };
    let store = Store::open(
        tmp.path(),
        Config {
            scan: Some(scan),
            ..Config::default()
        },
    )
    .unwrap();
    let report = store.rescan(&RescanOptions::default()).unwrap();
    assert_eq!(report.scanned, 2, "{report:?}");
    assert_eq!(report.infected.len(), 1, "{report:?}");
    assert_eq!(report.infected[0].file, hidden.id);
    assert!(store.stat(hidden.id).unwrap().quarantined);
    assert!(!store.stat(clean.id).unwrap().quarantined);
}

#[test]
fn the_library_acting_for_a_client_is_held_to_the_same_rules() {
    // An application that serves untrusted clients itself, through the library.
    let tmp = TempStore::new();
    let mut policy = tessera::validate::Policy::default();
    policy.categories.insert(
        "archives".into(),
        CategoryRule {
            extensions: vec!["zip".into()],
            mime_types: vec![],
            max_size: 1000,
        },
    );
    let store = Store::create(
        tmp.path(),
        Config {
            policy: Arc::new(policy),
            ..Config::default()
        },
    )
    .unwrap();
    let mut zip = b"PK\x03\x04".to_vec();
    zip.resize(2000, 0);
    let opts = |origin| PutOptions {
        name: Some("a.zip".into()),
        category: Some("other".into()),
        origin,
        ..PutOptions::client("bob")
    };
    let err = store.put(&zip[..], &opts(Origin::Client)).unwrap_err();
    assert!(
        matches!(err, tessera::Error::TooLarge { limit: 1000, .. }),
        "{err}"
    );
    assert_eq!(store.stats().unwrap().files, 0);
    // The store's owner is not bound by category limits, and may pick `other`.
    let f = store.put(&zip[..], &opts(Origin::Local)).unwrap().file;
    assert_eq!((f.category.as_str(), f.size), ("other", 2000));
}
