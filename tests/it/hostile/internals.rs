//! Probing for the server's insides: error bodies that could name paths, addresses or OS
//! errors, health and metrics endpoints that could describe the deployment, framework errors
//! that could escape the JSON shape, store files readable by other local users, and names that
//! render differently from what they are.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::Value;
use tessera::config::ScanSettings;
use tessera::scan::ClamdAddress;

use crate::common::{TempStore, random_bytes, text_bytes};
use crate::faults::{Faults, FaultyStorage};
use crate::http::Service;

/// Fails the test when `body` shows anything of the server's insides.
fn assert_no_internals(body: &str, store_dir: &Path) {
    let dir = store_dir.to_string_lossy();
    for leak in [
        dir.as_ref(),
        ".pack",
        "index.redb",
        "/tmp",
        "os error",
        "No space left",
        "tcp://",
        "127.0.0.1:",
        "clamd",
    ] {
        assert!(
            !body.contains(leak),
            "the answer shows {leak:?} of the server: {body}"
        );
    }
}

fn upload_one(svc: &Service, token: &str, name: &str, data: &[u8]) -> reqwest::blocking::Response {
    svc.upload(
        token,
        Form::new().part(
            "file",
            Part::bytes(data.to_vec()).file_name(name.to_string()),
        ),
    )
}

fn file_count(svc: &Service, owner: &str) -> usize {
    svc.store
        .list(&tessera::ListQuery {
            owner: Some(owner.into()),
            include_deleted: true,
            ..Default::default()
        })
        .unwrap()
        .files
        .len()
}

#[test]
fn disk_full_upload_answers_507_without_the_pack_path_and_with_a_request_id() {
    let faults = Faults::new();
    let f = faults.clone();
    let svc = Service::with_storage(
        |_| {},
        |_| {},
        move |dir| Some(Arc::new(FaultyStorage::new(dir, f))),
    );
    faults.write_budget.store(10_000, Ordering::SeqCst);
    let r = upload_one(&svc, &svc.alice, "big.txt", &text_bytes(1, 400_000));
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    let header_id = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .expect("an error names its request");
    let text = r.text().unwrap();
    assert_no_internals(&text, svc.store.dir());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "insufficient_storage");
    assert_eq!(v["request_id"], header_id.as_str());
    assert_eq!(file_count(&svc, "alice"), 0, "nothing stored");
}

#[test]
fn scanner_down_answer_names_no_clamd_address() {
    let svc = Service::with(|s| {
        s.scan = Some(ScanSettings {
            // Nothing listens on port 1.
            clamd: ClamdAddress::Tcp("127.0.0.1:1".into()),
            categories: vec!["all".into()],
            ..Default::default()
        })
    });
    let r = upload_one(&svc, &svc.alice, "notes.txt", b"hello");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = r.text().unwrap();
    assert_no_internals(&text, svc.store.dir());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "scanner_unavailable");
    assert!(v["request_id"].is_string(), "{v}");
    assert_eq!(file_count(&svc, "alice"), 0);
}

#[test]
fn anonymous_healthz_says_only_that_the_service_is_up() {
    let svc = Service::start();
    svc.put(&svc.alice, "a.txt", b"one file");
    let anon: Value = svc.get("/healthz", None).send().unwrap().json().unwrap();
    assert_eq!(anon, serde_json::json!({ "status": "ok" }));
    let user: Value = svc
        .get("/healthz", Some(&svc.alice))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        user,
        serde_json::json!({ "status": "ok" }),
        "users are no admins"
    );
    let admin: Value = svc
        .get("/healthz", Some(&svc.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(admin["status"], "ok");
    assert_eq!(admin["files"], 1);
    assert!(admin["version"].is_string());
}

#[test]
fn healthz_scanner_details_are_for_admins_only() {
    let svc = Service::with(|s| {
        s.scan = Some(ScanSettings {
            clamd: ClamdAddress::Tcp("127.0.0.1:1".into()),
            ..Default::default()
        })
    });
    let anon = svc.get("/healthz", None).send().unwrap().text().unwrap();
    assert_no_internals(&anon, svc.store.dir());
    assert!(!anon.contains("scanner"), "{anon}");
    let admin: Value = svc
        .get("/healthz", Some(&svc.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(admin.get("scanner").is_some(), "{admin}");
}

#[test]
fn metrics_behind_a_token_refuse_anonymous_wrong_and_user_tokens() {
    let svc = Service::with(|s| s.server.metrics_token = Some("scrape-secret-0123456789".into()));
    let status = |token: Option<&str>| svc.get("/metrics", token).send().unwrap().status();
    let anon = svc.get("/metrics", None).send().unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let v: Value = anon.json().unwrap();
    assert_eq!(v["error"], "unauthorized");
    assert_eq!(
        status(Some("scrape-secret-012345678")),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(Some("scrape-secret-0123456789x")),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(Some(&svc.alice)), StatusCode::UNAUTHORIZED);
    let ok = svc
        .get("/metrics", Some("scrape-secret-0123456789"))
        .send()
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.text().unwrap().contains("tessera_files"));
    assert_eq!(status(Some(&svc.admin)), StatusCode::OK);
}

#[test]
fn metrics_without_a_token_configured_stay_open() {
    let svc = Service::start();
    assert_eq!(
        svc.get("/metrics", None).send().unwrap().status(),
        StatusCode::OK
    );
}

#[test]
fn oversized_json_body_gets_a_json_413() {
    let svc = Service::start();
    let id = svc.put(&svc.alice, "a.txt", b"some text");
    // The link endpoint keeps axum's 2 MB body limit.
    let r = svc
        .http
        .post(format!("{}/api/files/{id}/link", svc.url))
        .bearer_auth(&svc.alice)
        .body(vec![b' '; 3 << 20])
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"], "too_large");
    assert!(v["message"].is_string());
}

#[test]
fn wrong_methods_get_json_405s() {
    let svc = Service::start();
    let id = svc.put(&svc.alice, "a.txt", b"some text");
    for (method, path) in [
        (reqwest::Method::PUT, "/api/files".to_string()),
        (reqwest::Method::PATCH, format!("/api/files/{id}")),
        (reqwest::Method::DELETE, "/healthz".to_string()),
        (reqwest::Method::PUT, format!("/api/files/{id}/meta")),
        (reqwest::Method::GET, format!("/api/files/{id}/undelete")),
    ] {
        let r = svc
            .http
            .request(method.clone(), format!("{}{path}", svc.url))
            .bearer_auth(&svc.alice)
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let v: Value = r.json().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(v["error"], "method_not_allowed", "{method} {path}");
    }
    assert_eq!(file_count(&svc, "alice"), 1);
}

#[test]
fn malformed_queries_and_unknown_routes_get_json_errors() {
    let svc = Service::start();
    for path in [
        "/api/files?limit=-1",
        "/api/files?limit=abc",
        "/api/files?deleted=maybe",
        "/api/quota/history?days=99999999999999999999",
        "/no/such/route",
        "/api/files/..%2F..%2Fetc%2Fpasswd",
    ] {
        let r = svc.get(path, Some(&svc.alice)).send().unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        let text = r.text().unwrap();
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "{path}: {v}"
        );
    }
}

#[test]
fn bidi_and_invisible_characters_are_stripped_from_uploaded_names() {
    let svc = Service::start();
    for name in [
        "invoice\u{061c}.pdf.txt",
        "report\u{202e}txt.exe",
        "a\u{200b}b\u{feff}c\u{2066}.txt",
        "\u{3164}\u{115f}.txt",
    ] {
        let r = upload_one(&svc, &svc.alice, name, b"plain text");
        assert_eq!(r.status(), StatusCode::CREATED, "{name:?}");
        let v: Value = r.json().unwrap();
        let shown = v["files"][0]["file"]["display_name"].as_str().unwrap();
        assert!(
            shown
                .chars()
                .all(|c| c.is_ascii_graphic() || c == ' ' || (c as u32) > 0x7f && !c.is_control()),
            "{shown:?}"
        );
        for bad in [
            '\u{061c}', '\u{202e}', '\u{200b}', '\u{feff}', '\u{2066}', '\u{3164}', '\u{115f}',
        ] {
            assert!(!shown.contains(bad), "{name:?} shown as {shown:?}");
        }
    }
    assert_eq!(shown_names(&svc)[0], "invoice.pdf.txt");
}

fn shown_names(svc: &Service) -> Vec<String> {
    svc.store
        .list(&tessera::ListQuery {
            owner: Some("alice".into()),
            ..Default::default()
        })
        .unwrap()
        .files
        .into_iter()
        .map(|f| f.display_name)
        .collect()
}

/// Every file under `dir` is 0600 and every directory 0700.
fn assert_private_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        if e.file_type().unwrap().is_dir() {
            assert_eq!(mode, 0o700, "{}", e.path().display());
            assert_private_tree(&e.path());
        } else {
            assert_eq!(mode, 0o600, "{}", e.path().display());
        }
    }
}

#[test]
fn store_files_are_private_even_under_a_permissive_umask() {
    let t = TempStore::new();
    let store = t.path();
    let data = t.dir.path().join("data.bin");
    std::fs::write(&data, random_bytes(1, 300_000)).unwrap();
    let script = format!(
        "umask 000 && {bin} --store {s} init && {bin} --store {s} put {d} --key a && \
         {bin} --store {s} put {d} --key b",
        bin = env!("CARGO_BIN_EXE_tessera"),
        s = store.display(),
        d = data.display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = std::fs::metadata(&store).unwrap().permissions().mode() & 0o777;
    assert_eq!(root, 0o700, "the store directory tessera made");
    assert_private_tree(&store);
}

#[test]
fn staged_uploads_and_signing_keys_are_private() {
    let svc = Service::start();
    let r = svc
        .http
        .post(format!("{}/api/uploads", svc.url))
        .bearer_auth(&svc.alice)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "10")
        .header("Upload-Metadata", "filename YS50eHQ=")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_private_tree(svc.store.dir());
}

#[test]
fn an_unscanned_stamp_shown_to_the_owner_names_no_scanner_address() {
    let svc = Service::with(|s| {
        s.scan = Some(ScanSettings {
            clamd: ClamdAddress::Tcp("127.0.0.1:1".into()),
            fail_open: true,
            categories: vec!["all".into()],
            ..Default::default()
        })
    });
    let r = upload_one(&svc, &svc.alice, "notes.txt", b"hello");
    assert_eq!(r.status(), StatusCode::CREATED);
    let text = r.text().unwrap();
    assert_no_internals(&text, svc.store.dir());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["files"][0]["file"]["scan"]["status"], "unscanned", "{v}");
    let id = v["files"][0]["file"]["id"].as_str().unwrap().to_string();
    let meta = svc
        .get(&format!("/api/files/{id}/meta"), Some(&svc.alice))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_no_internals(&meta, svc.store.dir());
}
