//! Virus scanning on the put path, against a REAL clamd (started by tests/clamd/start.sh with
//! only our custom signatures: EICAR by hash, and an .ndb pattern), plus a fault-injecting
//! fake scanner for the error paths.
//!
//! The clamd address comes from `TESSERA_CLAMD` (TCP) and `TESSERA_CLAMD_UNIX`; `make unit`
//! sets them. Without them these tests fail, saying so: they never skip.

use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::Value;
use tessera::config::ScanSettings;
use tessera::scan::{
    Clamd, ClamdAddress, FakeBehaviour, FakeScanner, ScanCategories, ScanConfig, ScanStamp,
    Scanner, Timeouts,
};
use tessera::{Config, Error, ListQuery, PutOptions, Store, StoreStats};

use crate::common::{TempStore, png_bytes, text_bytes};
use crate::http::Service;

/// The EICAR anti-virus test file (68 bytes; MD5 44d88612fea8a8f36de82e1278abb02f).
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
pub const EICAR_SIG: &str = "Eicar-Test-Signature.UNOFFICIAL";
/// The bytes tests/clamd/signatures/tessera.ndb matches anywhere in a file.
const PATTERN: &[u8] = b"TESSERA-NDB-TEST-PATTERN";
const PATTERN_SIG: &str = "Tessera-Test-Pattern.UNOFFICIAL";

fn env_address(var: &str) -> ClamdAddress {
    let v = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the scan tests need the test clamd. Run `make unit`, or \
             `env=$(tests/clamd/start.sh); eval \"$env\"` first (and tests/clamd/stop.sh after)"
        )
    });
    v.parse()
        .unwrap_or_else(|e| panic!("{var}={v:?} is not a clamd address: {e}"))
}

pub fn clamd_tcp() -> ClamdAddress {
    env_address("TESSERA_CLAMD")
}

fn clamd(addr: ClamdAddress) -> Arc<dyn Scanner> {
    Arc::new(Clamd::new(addr, Timeouts::default()))
}

fn store_with(tmp: &TempStore, scan: ScanConfig) -> Store {
    Store::create(
        tmp.path(),
        Config {
            scan: Some(scan),
            ..Config::default()
        },
    )
    .unwrap()
}

fn put(store: &Store, name: &str, data: &[u8]) -> tessera::Result<tessera::PutReport> {
    store.put(
        data,
        &PutOptions {
            name: Some(name.into()),
            ..Default::default()
        },
    )
}

fn infected(r: tessera::Result<tessera::PutReport>) -> (tessera::FileId, String) {
    match r {
        Err(Error::Infected { file, signature }) => (file, signature),
        other => panic!("expected Infected, got {other:?}"),
    }
}

/// `scan.categories = ["documents", "archives"]`: scanning narrowed by configuration.
fn documents_and_archives() -> ScanCategories {
    ScanCategories::Only(["documents", "archives"].map(String::from).into())
}

fn counts(s: &StoreStats) -> (u64, u64, u64) {
    (s.files, s.versions, s.logical_bytes)
}

fn assert_verifies(store: &Store) {
    let report = store.verify(&()).unwrap();
    assert!(report.is_ok(), "verify: {report:?}");
}

/// A ZIP holding one stored (uncompressed) member.
fn zip_of(name: &str, data: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let crc = crc32(data);
    let (n, len) = (name.len() as u16, data.len() as u32);
    let mut z = Vec::new();
    z.extend_from_slice(b"PK\x03\x04");
    z.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, stored, time, date
    for v in [crc, len, len] {
        z.extend_from_slice(&v.to_le_bytes());
    }
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let cd_start = z.len() as u32;
    z.extend_from_slice(b"PK\x01\x02");
    z.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for v in [crc, len, len] {
        z.extend_from_slice(&v.to_le_bytes());
    }
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&[0; 12]); // extra, comment, disk, internal attrs, external attrs
    z.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    z.extend_from_slice(name.as_bytes());
    let cd_len = z.len() as u32 - cd_start;
    z.extend_from_slice(b"PK\x05\x06");
    z.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    z.extend_from_slice(&cd_len.to_le_bytes());
    z.extend_from_slice(&cd_start.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

/// A minimal PDF whose one stream is the EICAR file, Flate-encoded (as a stored deflate
/// block): clamd decodes the stream and matches the EICAR hash on the decoded bytes.
fn pdf_with_eicar() -> Vec<u8> {
    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        b << 16 | a
    }
    let len = EICAR.len() as u16;
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend_from_slice(&len.to_le_bytes());
    z.extend_from_slice(&(!len).to_le_bytes());
    z.extend_from_slice(EICAR);
    z.extend_from_slice(&adler32(EICAR).to_be_bytes());
    let mut p = format!(
        "%PDF-1.4\n1 0 obj\n<< /Length {} /Filter /FlateDecode >>\nstream\n",
        z.len()
    )
    .into_bytes();
    p.extend_from_slice(&z);
    p.extend_from_slice(b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n");
    p
}

// ------------------------------------------------------------------------------ real clamd

#[test]
fn clamd_answers_ping_and_version_over_tcp_and_unix() {
    for addr in [clamd_tcp(), env_address("TESSERA_CLAMD_UNIX")] {
        let c = Clamd::new(addr.clone(), Timeouts::default());
        c.ping().unwrap_or_else(|e| panic!("{addr}: {e}"));
        let v = c.version().unwrap();
        assert!(v.starts_with("ClamAV "), "{v}");
    }
}

#[test]
fn eicar_is_quarantined_and_a_clean_document_stored() {
    let tmp = TempStore::new();
    let store = store_with(&tmp, ScanConfig::new(clamd(clamd_tcp())));

    let clean = put(&store, "notes.txt", &text_bytes(1, 300_000)).unwrap();
    assert!(!clean.file.quarantined);
    assert_eq!(clean.file.scan, Some(ScanStamp::Clean));
    assert_eq!(
        store.read_all(clean.file.id).unwrap(),
        text_bytes(1, 300_000)
    );

    let (id, sig) = infected(put(&store, "eicar.txt", EICAR));
    assert_eq!(sig, EICAR_SIG);
    let f = store.stat(id).unwrap();
    assert!(f.quarantined, "{f:?}");
    assert_eq!(f.category, "documents");
    assert_eq!(
        f.scan,
        Some(ScanStamp::Infected {
            signature: EICAR_SIG.into()
        })
    );
    // Stored (admins can inspect it), just flagged.
    assert_eq!(store.read_all(id).unwrap(), EICAR);

    // EICAR inside a ZIP (archives) and inside a PDF (documents).
    let (zid, sig) = infected(put(&store, "bundle.zip", &zip_of("eicar.com", EICAR)));
    assert_eq!(sig, EICAR_SIG);
    let (pid, sig) = infected(put(&store, "report.pdf", &pdf_with_eicar()));
    assert_eq!(sig, EICAR_SIG);
    assert_eq!(store.stat(pid).unwrap().mime, "application/pdf");

    let q = store
        .list(&ListQuery {
            quarantined_only: true,
            ..Default::default()
        })
        .unwrap();
    let mut listed: Vec<_> = q.files.iter().map(|f| f.id).collect();
    listed.sort();
    let mut expect = vec![id, zid, pid];
    expect.sort();
    assert_eq!(listed, expect);
    assert_verifies(&store);
}

#[test]
fn the_ndb_pattern_is_detected_over_the_unix_socket() {
    let tmp = TempStore::new();
    let store = store_with(
        &tmp,
        ScanConfig::new(clamd(env_address("TESSERA_CLAMD_UNIX"))),
    );
    // The pattern deep in a multi-chunk file: the whole stream reaches clamd.
    let mut data = text_bytes(2, 3 << 20);
    data.extend_from_slice(PATTERN);
    data.extend_from_slice(&text_bytes(3, 100_000));
    let (id, sig) = infected(put(&store, "long.txt", &data));
    assert_eq!(sig, PATTERN_SIG);
    assert!(store.stat(id).unwrap().quarantined);
    // The same file without the pattern is clean.
    let ok = put(&store, "long2.txt", &text_bytes(2, 3 << 20)).unwrap();
    assert_eq!(ok.file.scan, Some(ScanStamp::Clean));
    assert_verifies(&store);
}

#[test]
fn categories_that_are_not_scanned_never_reach_clamd() {
    let tmp = TempStore::new();
    let store = store_with(
        &tmp,
        ScanConfig {
            categories: documents_and_archives(),
            ..ScanConfig::new(clamd(clamd_tcp()))
        },
    );
    // EICAR without an extension is in `other`, but its content is text, a document's: the
    // detected type decides, so it is scanned.
    let (_, sig) = infected(put(&store, "eicar", EICAR));
    assert_eq!(sig, EICAR_SIG);
    // An image holding the pattern: images are not scanned when narrowed...
    let mut png = png_bytes(4, 5000);
    png.extend_from_slice(PATTERN);
    let r = put(&store, "a.png", &png).unwrap();
    assert_eq!(r.file.scan, None);
    assert!(!r.file.quarantined);
    drop(store);

    // ...but are by default (categories = all).
    let tmp = TempStore::new();
    let store = store_with(&tmp, ScanConfig::new(clamd(clamd_tcp())));
    let (_, sig) = infected(put(&store, "a.png", &png));
    assert_eq!(sig, PATTERN_SIG);
    let (_, sig) = infected(put(&store, "eicar", EICAR));
    assert_eq!(sig, EICAR_SIG);
}

#[test]
fn files_over_the_stream_limit_are_refused_never_passed() {
    let tmp = TempStore::new();
    let store = store_with(
        &tmp,
        ScanConfig {
            stream_max: 1 << 20,
            ..ScanConfig::new(clamd(clamd_tcp()))
        },
    );
    let before = counts(&store.stats().unwrap());
    // Declared: refused before any byte is read.
    let err = store
        .put(
            &text_bytes(5, 10)[..],
            &PutOptions {
                name: Some("big.txt".into()),
                declared_size: Some(2 << 20),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    // Streamed past the limit.
    let err = put(&store, "big.txt", &text_bytes(5, (1 << 20) + 1)).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == 1 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("scan"), "{err}");
    // At the limit exactly: scanned and stored.
    put(&store, "edge.txt", &text_bytes(5, 1 << 20)).unwrap();
    assert_eq!(store.stats().unwrap().files, before.0 + 1);
    drop(store);

    // clamd's own StreamMaxLength (16 MiB in the test config) below ours: clamd refuses the
    // stream and closes the socket; the answer is read and the file refused.
    let tmp = TempStore::new();
    let store = store_with(
        &tmp,
        ScanConfig {
            stream_max: 64 << 20,
            ..ScanConfig::new(clamd(clamd_tcp()))
        },
    );
    let err = put(&store, "huge.txt", &text_bytes(6, 20 << 20)).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("size limit"), "{err}");
    assert_eq!(store.stats().unwrap().files, 0);
    assert_verifies(&store);
}

#[test]
fn scanner_down_fails_closed_and_fail_open_stores_unscanned() {
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = ClamdAddress::Tcp(port.to_string());
    let tmp = TempStore::new();
    let store = store_with(
        &tmp,
        ScanConfig {
            categories: documents_and_archives(),
            ..ScanConfig::new(clamd(down.clone()))
        },
    );
    put(&store, "pic.png", &png_bytes(1, 2000)).unwrap(); // not scanned: unaffected
    let before = counts(&store.stats().unwrap());
    let err = put(&store, "doc.txt", &text_bytes(7, 500_000)).unwrap_err();
    assert!(matches!(err, Error::ScanUnavailable(_)), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert_eq!(counts(&store.stats().unwrap()), before);
    assert_verifies(&store);
    drop(store);

    let tmp = TempStore::new();
    let store = store_with(
        &tmp,
        ScanConfig {
            fail_open: true,
            ..ScanConfig::new(clamd(down))
        },
    );
    let r = put(&store, "doc.txt", &text_bytes(7, 500_000)).unwrap();
    assert!(!r.file.quarantined);
    match &r.file.scan {
        Some(ScanStamp::Unscanned { reason }) => assert!(reason.contains("reach"), "{reason}"),
        other => panic!("expected unscanned, got {other:?}"),
    }
    // The mark survives a reopen (it is in the manifest).
    let id = r.file.id;
    drop(store);
    let store = Store::open(tmp.path(), Config::default()).unwrap();
    assert!(matches!(
        store.stat(id).unwrap().scan,
        Some(ScanStamp::Unscanned { .. })
    ));
}

// ------------------------------------------------------------------------------ faults

#[test]
fn every_scanner_fault_commits_nothing_when_failing_closed() {
    let fake = Arc::new(FakeScanner::detecting(b"EVIL", "Fake.Evil"));
    let tmp = TempStore::new();
    let store = store_with(
        &tmp,
        ScanConfig {
            categories: documents_and_archives(),
            ..ScanConfig::new(fake.clone())
        },
    );
    let data = text_bytes(8, 2 << 20); // several chunks, through the parallel pipeline
    put(&store, "warmup.txt", &text_bytes(9, 1000)).unwrap();
    let before = counts(&store.stats().unwrap());
    for behaviour in [
        FakeBehaviour::Down,
        FakeBehaviour::Timeout,
        FakeBehaviour::ErrorReply("stream: Can't allocate memory ERROR".into()),
        FakeBehaviour::ErrorReply("stream: OKAY".into()),
        FakeBehaviour::DropAfter(1 << 20),
    ] {
        fake.set(behaviour.clone());
        let err = put(&store, "doc.txt", &data).unwrap_err();
        assert!(
            matches!(err, Error::ScanUnavailable(_)),
            "{behaviour:?}: {err}"
        );
        assert_eq!(counts(&store.stats().unwrap()), before, "{behaviour:?}");
        // The same through put_many.
        let r = store.put_many([(
            &data[..],
            PutOptions {
                name: Some("many.txt".into()),
                ..Default::default()
            },
        )]);
        assert!(
            matches!(r[0], Err(Error::ScanUnavailable(_))),
            "{behaviour:?}"
        );
        assert_eq!(counts(&store.stats().unwrap()), before, "{behaviour:?}");
    }
    assert_verifies(&store);

    // The stream the scanner saw is exactly the content.
    fake.set(FakeBehaviour::Scan {
        infected_marker: b"EVIL".to_vec(),
        signature: "Fake.Evil".into(),
    });
    let (scans, bytes) = (fake.scans(), fake.bytes());
    put(&store, "doc.txt", &data).unwrap();
    assert_eq!(
        (fake.scans(), fake.bytes()),
        (scans + 1, bytes + data.len() as u64)
    );
    // Not-scanned categories do not start a scan.
    put(&store, "pic.png", &png_bytes(2, 3000)).unwrap();
    assert_eq!(fake.scans(), scans + 1);
}

// ------------------------------------------------------------------------------ HTTP

fn scanning(addr: ClamdAddress, fail_open: bool) -> impl FnOnce(&mut tessera::config::Settings) {
    move |s| {
        s.scan = Some(ScanSettings {
            clamd: addr,
            fail_open,
            ..Default::default()
        })
    }
}

fn upload_one(svc: &Service, token: &str, name: &str, data: &[u8]) -> (StatusCode, Value) {
    let r = svc.upload(
        token,
        Form::new().part(
            "file",
            Part::bytes(data.to_vec()).file_name(name.to_string()),
        ),
    );
    let status = r.status();
    (status, r.json().unwrap())
}

#[test]
fn http_infected_is_422_with_the_signature_and_hidden_from_users() {
    let svc = Service::with(scanning(clamd_tcp(), false));
    let (status, body) = upload_one(&svc, &svc.alice, "eicar.txt", EICAR);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "infected", "{body}");
    assert_eq!(body["signature"], EICAR_SIG, "{body}");
    assert_eq!(body["files"][0]["signature"], EICAR_SIG, "{body}");
    assert!(body["message"].as_str().unwrap().contains(EICAR_SIG));

    // Stored quarantined: the uploader cannot read or list-download it; admins see it.
    let q: Value = svc
        .get("/api/admin/quarantine", Some(&svc.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(q["files"].as_array().unwrap().len(), 1, "{q}");
    let f = &q["files"][0];
    assert_eq!(f["owner"], "alice");
    assert_eq!(f["quarantined"], true);
    assert_eq!(f["scan"]["status"], "infected");
    assert_eq!(f["scan"]["signature"], EICAR_SIG);
    let id = f["id"].as_str().unwrap();
    let r = svc
        .get(&format!("/api/files/{id}"), Some(&svc.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = svc
        .get(&format!("/api/files/{id}"), Some(&svc.admin))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().unwrap().as_ref(), EICAR);
    let r = svc
        .get("/api/admin/quarantine", Some(&svc.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A clean document is stored; the scanner's version is in /healthz.
    let (status, body) = upload_one(&svc, &svc.alice, "clean.txt", b"just words\n");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["files"][0]["file"]["scan"]["status"], "clean");
    let h: Value = svc
        .get("/healthz", Some(&svc.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["scanner"]["status"], "ok", "{h}");
    let st: Value = svc
        .get("/api/admin/storage/stats", Some(&svc.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        st["scanner"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("ClamAV ")),
        "{st}"
    );
    assert!(
        h["scanner"]["version"]
            .as_str()
            .unwrap()
            .starts_with("ClamAV ")
    );
    // A clean new version lifts the file's quarantine, but the infected version stays
    // unreadable for users.
    let keyed = |data: &[u8]| {
        svc.upload(
            &svc.alice,
            Form::new()
                .text("key", "docs/k.txt")
                .part("file", Part::bytes(data.to_vec()).file_name("k.txt")),
        )
    };
    assert_eq!(keyed(EICAR).status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = keyed(b"fine now\n");
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().unwrap();
    let f = &v["files"][0]["file"];
    assert_eq!(
        (f["version"].as_u64(), f["quarantined"].as_bool()),
        (Some(2), Some(false))
    );
    let id = f["id"].as_str().unwrap();
    let get = |q: &str, token: &str| {
        svc.get(&format!("/api/files/{id}{q}"), Some(token))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(get("", &svc.alice), StatusCode::OK);
    assert_eq!(get("?version=1", &svc.alice), StatusCode::NOT_FOUND);
    assert_eq!(get("?version=1", &svc.admin), StatusCode::OK);
}

#[test]
fn http_tus_upload_of_eicar_is_422_with_the_signature() {
    let svc = Service::with(scanning(clamd_tcp(), false));
    let meta = format!("filename {}", base64_of(b"eicar.txt"));
    let r = svc
        .http
        .post(format!("{}/api/uploads", svc.url))
        .bearer_auth(&svc.alice)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", EICAR.len().to_string())
        .header("Upload-Metadata", meta)
        .header("Content-Type", "application/offset+octet-stream")
        .body(EICAR.to_vec())
        .send()
        .unwrap();
    let status = r.status();
    let body: Value = r.json().unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "infected");
    assert_eq!(body["signature"], EICAR_SIG);
    assert_eq!(
        svc.store
            .list(&ListQuery {
                quarantined_only: true,
                ..Default::default()
            })
            .unwrap()
            .files
            .len(),
        1
    );
}

#[test]
fn http_scanner_down_is_503_and_nothing_is_stored_fail_open_stores_unscanned() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = ClamdAddress::Tcp(port.to_string());
    let svc = Service::with(scanning(down.clone(), false));
    let before = counts(&svc.store.stats().unwrap());
    let (status, body) = upload_one(&svc, &svc.alice, "doc.txt", &text_bytes(10, 200_000));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "scanner_unavailable", "{body}");
    assert_eq!(counts(&svc.store.stats().unwrap()), before);
    let h: Value = svc
        .get("/healthz", Some(&svc.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["scanner"]["status"], "unavailable", "{h}");
    drop(svc);

    let svc = Service::with(scanning(down, true));
    let (status, body) = upload_one(&svc, &svc.alice, "doc.txt", &text_bytes(10, 200_000));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["files"][0]["file"]["scan"]["status"], "unscanned",
        "{body}"
    );
    assert_eq!(body["files"][0]["file"]["quarantined"], false);
}

fn base64_of(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn quarantine_follows_the_content_across_versions_and_restores() {
    let fake = Arc::new(FakeScanner::detecting(b"EVIL", "Fake.Evil"));
    let tmp = TempStore::new();
    let store = store_with(&tmp, ScanConfig::new(fake));
    let opts = PutOptions::key("docs/a.txt");
    let (id, sig) = infected(store.put(&b"an EVIL file"[..], &opts));
    assert_eq!(sig, "Fake.Evil");
    assert!(store.stat(id).unwrap().quarantined);
    let v2 = store.put(&b"a good file"[..], &opts).unwrap();
    assert_eq!((v2.file.id, v2.file.version), (id, 2));
    assert!(!v2.file.quarantined);
    let versions = store.versions(id).unwrap();
    assert!(versions[0].infected() && !versions[1].infected());
    // Restoring the infected version quarantines the file again; restoring the clean one
    // lifts it.
    let f = store.restore(id, 1).unwrap();
    assert!(f.quarantined, "{f:?}");
    let f = store.restore(id, 2).unwrap();
    assert!(!f.quarantined, "{f:?}");
    assert_verifies(&store);
}

#[test]
fn cli_put_of_eicar_fails_with_the_signature_and_quarantine_ls_lists_it() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let config = tmp.path().join("tessera.toml");
    std::fs::write(&config, format!("[scan]\nclamd = \"{}\"\n", clamd_tcp())).unwrap();
    std::fs::write(tmp.path().join("eicar.txt"), EICAR).unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"plain words\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--store")
            .arg(&store)
            .arg("--config")
            .arg(&config)
            .args(args)
            .current_dir(tmp.path())
            .env_remove("TESSERA_STORE")
            .env_remove("TESSERA_OWNER")
            .env_remove("TESSERA_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&["put", "notes.txt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["put", "eicar.txt"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(EICAR_SIG), "{err}");

    let out = run(&["--json", "quarantine", "ls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{v}");
    assert_eq!(files[0]["display_name"], "eicar.txt");
    assert_eq!(files[0]["scan"]["signature"], EICAR_SIG);
    let out = run(&["quarantine", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("[infected: {EICAR_SIG}]")), "{text}");
    assert!(!text.contains("notes.txt"), "{text}");
}

/// A clamd of the test's own (tests/clamd/start.sh), stopped and removed when dropped: for
/// tests that kill it or change its signatures.
pub struct PrivateClamd {
    /// Its directory; the signature database is `db/` in it.
    pub dir: String,
    pub pid: i32,
    pub addr: ClamdAddress,
}

impl PrivateClamd {
    pub fn start() -> PrivateClamd {
        use std::process::Command;
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clamd/start.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "a private clamd did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: std::collections::HashMap<String, String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = vars["TESSERA_CLAMD_DIR"].clone();
        let pid = std::fs::read_to_string(format!("{dir}/clamd.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        PrivateClamd {
            dir,
            pid,
            addr: vars["TESSERA_CLAMD"].parse().unwrap(),
        }
    }
}

impl Drop for PrivateClamd {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clamd/stop.sh"))
                .env("TESSERA_CLAMD_DIR", &self.dir)
                .status();
    }
}

/// A private clamd (tests/clamd/start.sh), killed with SIGKILL while a put streams to it.
#[test]
fn clamd_killed_mid_upload_fails_closed_and_stores_nothing() {
    use std::io::Read;
    use std::process::Command;

    let private = PrivateClamd::start();
    let (pid, addr) = (private.pid, private.addr.clone());

    /// Yields `data`, killing clamd once `at` bytes were read.
    struct KillAt<'a> {
        data: &'a [u8],
        pos: usize,
        at: usize,
        pid: i32,
        killed: bool,
    }
    impl Read for KillAt<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pos >= self.at && !self.killed {
                self.killed = true;
                let pid = self.pid.to_string();
                assert!(
                    Command::new("kill")
                        .args(["-KILL", &pid])
                        .status()
                        .unwrap()
                        .success()
                );
                while Command::new("kill")
                    .args(["-0", &pid])
                    .status()
                    .unwrap()
                    .success()
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            let n = buf.len().min(self.data.len() - self.pos).min(64 * 1024);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    let tmp = TempStore::new();
    let store = store_with(&tmp, ScanConfig::new(clamd(addr)));
    put(&store, "before.txt", b"scanned while clamd was up\n").unwrap();
    let before = counts(&store.stats().unwrap());
    let data = text_bytes(11, 8 << 20);
    let mut source = KillAt {
        data: &data,
        pos: 0,
        at: 3 << 20,
        pid,
        killed: false,
    };
    let err = store
        .put(
            &mut source,
            &PutOptions {
                name: Some("during.txt".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(source.killed, "clamd was not killed");
    assert!(matches!(err, Error::ScanUnavailable(_)), "{err}");
    assert_eq!(counts(&store.stats().unwrap()), before);
    assert_verifies(&store);
    // And the next put finds nobody listening.
    let err = put(&store, "after.txt", b"words\n").unwrap_err();
    assert!(matches!(err, Error::ScanUnavailable(_)), "{err}");
}

/// A TCP front for the test clamd that can be switched off: while down it closes every
/// connection at once (a scanner that accepts and dies), while up it forwards to clamd.
struct Switch {
    addr: ClamdAddress,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Switch {
    fn new(target: ClamdAddress) -> Switch {
        use std::sync::atomic::{AtomicBool, Ordering};
        let ClamdAddress::Tcp(target) = target else {
            panic!("TESSERA_CLAMD must be a TCP address")
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ClamdAddress::Tcp(l.local_addr().unwrap().to_string());
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(client) = conn else { continue };
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let server = std::net::TcpStream::connect(&target).unwrap();
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c, mut s) = (client, server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c, &mut s);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Switch { addr, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn tus_keeps_a_session_the_scanner_could_not_check_and_finishes_it_later() {
    let switch = Switch::new(clamd_tcp());
    let svc = Service::with(scanning(switch.addr.clone(), false));
    let data = text_bytes(12, 300_000);
    let meta = format!("filename {}", base64_of(b"later.txt"));
    let r = svc
        .http
        .post(format!("{}/api/uploads", svc.url))
        .bearer_auth(&svc.alice)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", data.len().to_string())
        .header("Upload-Metadata", meta)
        .header("Content-Type", "application/offset+octet-stream")
        .body(data.clone())
        .send()
        .unwrap();
    let status = r.status();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "scanner_unavailable");
    assert_eq!(svc.store.stats().unwrap().files, 0);
    // Nothing is lost: the session and its bytes are kept.
    let sessions = svc.store.list_uploads(None).unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let url = location.unwrap_or_else(|| format!("{}/api/uploads/{}", svc.url, sessions[0].id));
    let head = || {
        svc.http
            .head(&url)
            .bearer_auth(&svc.alice)
            .header("Tus-Resumable", "1.0.0")
            .send()
            .unwrap()
    };
    assert_eq!(head().status(), StatusCode::SERVICE_UNAVAILABLE);
    // clamd is back: the next HEAD stores it, scanned.
    switch.set(true);
    let r = head();
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.headers()["tessera-file-id"].to_str().unwrap().to_string();
    let f = svc.store.stat(id.parse().unwrap()).unwrap();
    assert_eq!(f.scan, Some(ScanStamp::Clean));
    assert_eq!(svc.store.read_all(f.id).unwrap(), data);
}
