//! Hostile tus clients flooding the service with sessions (issue 13, section 5): a per-user cap
//! on open sessions (429 `too_many_sessions` with `Retry-After`), a per-user budget for the
//! metadata they hold (429 `session_metadata_budget`), and quota reserved by deferred-length
//! sessions. Each case asserts the status and what the index holds afterwards.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::blocking::Response;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tessera::{Config, Error, Origin, Store, UploadMeta};

use crate::common::TempStore;
use crate::http::Service;

/// 24 h, the default `uploads.session_ttl`, in seconds.
const TTL_S: u64 = 24 * 3600;

fn meta(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", B64.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `POST /api/uploads` with a deferred length and `metadata`.
fn create_deferred(svc: &Service, token: &str, metadata: &str) -> Response {
    svc.tus(Method::POST, "/api/uploads", token)
        .header("Upload-Defer-Length", "1")
        .header("Upload-Metadata", metadata)
        .send()
        .unwrap()
}

fn error_of(r: Response) -> (StatusCode, Option<String>, Value) {
    let status = r.status();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().unwrap();
    (status, retry, body)
}

fn open_sessions(svc: &Service, owner: &str) -> usize {
    svc.store.list_uploads(Some(owner)).unwrap().len()
}

fn staged_files(svc: &Service) -> usize {
    match std::fs::read_dir(svc.store.dir().join("uploads")) {
        Ok(d) => d.count(),
        Err(_) => 0,
    }
}

#[test]
fn the_twenty_first_session_is_429_with_retry_after() {
    let svc = Service::start();
    for i in 0..20 {
        let r = create_deferred(&svc, &svc.bob, &meta(&[("filename", &format!("f{i}.bin"))]));
        assert_eq!(r.status(), StatusCode::CREATED, "session {i}");
    }
    let (status, retry, body) = error_of(create_deferred(
        &svc,
        &svc.bob,
        &meta(&[("filename", "f20.bin")]),
    ));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "too_many_sessions", "{body}");
    // The first of bob's sessions expires a full session_ttl from now (the clock stands still).
    assert_eq!(retry.as_deref(), Some(TTL_S.to_string().as_str()));
    assert_eq!(open_sessions(&svc, "bob"), 20);
    assert_eq!(
        staged_files(&svc),
        20,
        "no staging file for the refused session"
    );
    // The answer to a refusal still speaks tus.
    let r = create_deferred(&svc, &svc.bob, &meta(&[("filename", "f21.bin")]));
    assert_eq!(
        r.headers().get("tus-resumable").unwrap().to_str().unwrap(),
        "1.0.0"
    );
}

#[test]
fn a_flood_of_two_thousand_sessions_with_10_kb_metadata_is_capped() {
    // The reproduction: 2,000 deferred-length sessions with 10 KB of metadata each.
    let svc = Service::start();
    let index = svc.store.dir().join("index.redb");
    let size_before = std::fs::metadata(&index).map_or(0, |m| m.len());
    let note = "n".repeat(10_000);
    let (mut created, mut refused) = (0, 0);
    for i in 0..2000 {
        let r = create_deferred(
            &svc,
            &svc.bob,
            &meta(&[("filename", &format!("f{i}.bin")), ("note", &note)]),
        );
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                let body: Value = r.json().unwrap();
                assert_eq!(body["error"], "too_many_sessions", "{body}");
                refused += 1;
            }
            other => panic!("session {i}: {other}"),
        }
    }
    assert_eq!((created, refused), (20, 1980));
    let held: usize = svc
        .store
        .list_uploads(Some("bob"))
        .unwrap()
        .iter()
        .map(|s| serde_json::to_vec(&s.meta).unwrap().len())
        .sum();
    assert!((200_000..=256 << 10).contains(&held), "{held}");
    let size_after = std::fs::metadata(&index).map_or(0, |m| m.len());
    assert!(
        size_after.saturating_sub(size_before) < 4 << 20,
        "the index grew by {} bytes",
        size_after - size_before
    );
}

#[test]
fn the_default_metadata_budget_stops_sessions_with_the_largest_metadata() {
    // Twenty sessions of 16 KiB of metadata (the most one may carry) would hold 320 KiB; the
    // default budget is 256 KiB.
    let svc = Service::start();
    let note = "q".repeat(16_000);
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = create_deferred(
            &svc,
            &svc.bob,
            &meta(&[("filename", &format!("{i}.bin")), ("note", &note)]),
        );
        statuses.push(r.status());
    }
    let ok = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(ok, 16, "{statuses:?}");
    assert!(
        statuses[16..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS)
    );
    let (_, retry, body) = error_of(create_deferred(
        &svc,
        &svc.bob,
        &meta(&[("filename", "x.bin"), ("note", &note)]),
    ));
    assert_eq!(body["error"], "session_metadata_budget", "{body}");
    assert_eq!(retry.as_deref(), Some(TTL_S.to_string().as_str()));
    assert_eq!(open_sessions(&svc, "bob"), 16);
}

#[test]
fn the_metadata_budget_is_429_and_frees_up_when_a_session_goes() {
    let svc = Service::with(|s| s.uploads.session_metadata_budget = bytesize::ByteSize::kib(4));
    let note = "m".repeat(1500);
    let mut urls = Vec::new();
    for i in 0..2 {
        let r = create_deferred(
            &svc,
            &svc.bob,
            &meta(&[("filename", &format!("{i}.bin")), ("note", &note)]),
        );
        assert_eq!(r.status(), StatusCode::CREATED);
        urls.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    let (status, retry, body) = error_of(create_deferred(
        &svc,
        &svc.bob,
        &meta(&[("filename", "2.bin"), ("note", &note)]),
    ));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "session_metadata_budget", "{body}");
    assert_eq!(retry.as_deref(), Some(TTL_S.to_string().as_str()));
    assert_eq!(open_sessions(&svc, "bob"), 2);
    // Metadata larger than the whole budget can never fit: 400, not "retry later".
    let (status, retry, body) = error_of(create_deferred(
        &svc,
        &svc.alice,
        &meta(&[("filename", "big.bin"), ("note", &"x".repeat(5000))]),
    ));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(retry.is_none());
    assert_eq!(open_sessions(&svc, "alice"), 0);
    // Terminating one session frees its share.
    let r = svc.tus(Method::DELETE, &urls[0], &svc.bob).send().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = create_deferred(
        &svc,
        &svc.bob,
        &meta(&[("filename", "2.bin"), ("note", &note)]),
    );
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(open_sessions(&svc, "bob"), 2);
}

#[test]
fn one_users_flood_does_not_lock_out_another() {
    let svc = Service::with(|s| s.uploads.max_sessions_per_user = 3);
    for _ in 0..3 {
        assert_eq!(
            create_deferred(&svc, &svc.bob, &meta(&[("filename", "a.bin")])).status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(
        create_deferred(&svc, &svc.bob, &meta(&[("filename", "a.bin")])).status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        create_deferred(&svc, &svc.alice, &meta(&[("filename", "a.bin")])).status(),
        StatusCode::CREATED
    );
    assert_eq!(
        (open_sessions(&svc, "bob"), open_sessions(&svc, "alice")),
        (3, 1)
    );
}

#[test]
fn finished_terminated_and_expired_sessions_free_their_slot() {
    let svc = Service::with(|s| s.uploads.max_sessions_per_user = 2);
    let created = |name: &str| {
        let r = svc
            .tus(Method::POST, "/api/uploads", &svc.bob)
            .header("Upload-Length", "5")
            .header("Upload-Metadata", meta(&[("filename", name)]))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{name}");
        r.headers()["location"].to_str().unwrap().to_string()
    };
    let a = created("a.txt");
    let _b = created("b.txt");
    let refused = || {
        let (status, retry, _) = error_of(
            svc.tus(Method::POST, "/api/uploads", &svc.bob)
                .header("Upload-Length", "5")
                .send()
                .unwrap(),
        );
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        retry.unwrap().parse::<u64>().unwrap()
    };
    assert_eq!(refused(), TTL_S);
    // Finishing `a` frees a slot.
    let r = svc
        .tus(Method::PATCH, &a, &svc.bob)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(b"hello".to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(svc.file_count("bob"), 1);
    let _c = created("c.txt");
    // Retry-After follows the clock: an hour later, the first expiry is an hour nearer.
    svc.clock.advance(Duration::from_secs(3600));
    assert_eq!(refused(), TTL_S - 3600);
    // Expired sessions do not count, swept or not.
    svc.clock.advance(Duration::from_secs(TTL_S));
    let _d = created("d.txt");
    let _e = created("e.txt");
    assert_eq!(refused(), TTL_S);
}

#[test]
fn concurrent_creations_cannot_pass_the_cap_together() {
    let svc = Service::with(|s| s.uploads.max_sessions_per_user = 20);
    let statuses: Vec<StatusCode> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let svc = &svc;
                scope.spawn(move || {
                    create_deferred(svc, &svc.bob, &meta(&[("filename", &format!("{i}.bin"))]))
                        .status()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, limited), (20, 20), "{statuses:?}");
    assert_eq!(open_sessions(&svc, "bob"), 20);
}

#[test]
fn a_deferred_session_reserves_quota_and_is_refused_over_it() {
    let svc = Service::start();
    svc.store.quota_set("bob", Some(50 * 1_000_000)).unwrap();
    // A name no category lists: the configured default (100 MB) is reserved, more than the
    // 50 MB bob may store.
    let (status, _, body) = error_of(create_deferred(
        &svc,
        &svc.bob,
        &meta(&[("filename", "x.bin")]),
    ));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "quota_exceeded", "{body}");
    assert_eq!(body["requested"], 100_000_000, "{body}");
    assert_eq!(open_sessions(&svc, "bob"), 0);
    assert_eq!(staged_files(&svc), 0);
    // An image's limit (10 MB) is what a deferred .jpg reserves.
    let r = create_deferred(&svc, &svc.bob, &meta(&[("filename", "a.jpg")]));
    assert_eq!(r.status(), StatusCode::CREATED);
    let q: Value = svc
        .get("/api/quota", Some(&svc.bob))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(q["reserved"], 10_000_000, "{q}");
}

#[test]
fn deferred_sessions_cannot_book_more_than_the_quota() {
    let svc = Service::with(|s| s.uploads.max_sessions_per_user = 50);
    svc.store.quota_set("bob", Some(1_000_000_000)).unwrap();
    let mut created = 0;
    for i in 0..15 {
        let r = create_deferred(&svc, &svc.bob, &meta(&[("filename", &format!("{i}.zip"))]));
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::PAYLOAD_TOO_LARGE => {}
            other => panic!("session {i}: {other}"),
        }
    }
    // 1 GB holds ten 100 MB archive reservations.
    assert_eq!(created, 10);
    assert_eq!(open_sessions(&svc, "bob"), 10);
    assert_eq!(
        svc.store.quota_status("bob").unwrap().reserved,
        1_000_000_000
    );
}

#[test]
fn declaring_a_length_over_the_category_limit_is_refused() {
    let svc = Service::start();
    let r = create_deferred(&svc, &svc.bob, &meta(&[("filename", "photo.jpg")]));
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = r.headers()["location"].to_str().unwrap().to_string();
    let r = svc
        .tus(Method::PATCH, &url, &svc.bob)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .header("Upload-Length", "20000000")
        .body(b"\xFF\xD8\xFF".to_vec())
        .send()
        .unwrap();
    let (status, _, body) = error_of(r);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("images"),
        "{body}"
    );
    let s = &svc.store.list_uploads(Some("bob")).unwrap()[0];
    assert_eq!((s.length, s.offset), (None, 0));
    assert_eq!(svc.stored(), (0, 0));
}

#[test]
fn the_cap_survives_a_restart() {
    let tmp = TempStore::new();
    let config = || Config {
        sessions: tessera::SessionLimits {
            max_open_per_user: 3,
            ..Default::default()
        },
        ..Config::default()
    };
    let client = || UploadMeta {
        name: Some("a.bin".into()),
        origin: Origin::Client,
        ..Default::default()
    };
    let store = Store::create(tmp.path(), config()).unwrap();
    for _ in 0..3 {
        store.upload_create("bob", Some(10), client()).unwrap();
    }
    drop(store);
    let store = Store::open(tmp.path(), config()).unwrap();
    match store.upload_create("bob", Some(10), client()) {
        Err(Error::TooMany { code, .. }) => assert_eq!(code, "too_many_sessions"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.list_uploads(Some("bob")).unwrap().len(), 3);
    // The store's owner, through the library, is not held to the client cap.
    let local = UploadMeta {
        origin: Origin::Local,
        ..client()
    };
    store.upload_create("bob", Some(10), local).unwrap();
    assert_eq!(store.list_uploads(Some("bob")).unwrap().len(), 4);
}

#[test]
fn a_deferred_image_session_cannot_stream_past_the_images_limit() {
    let svc = Service::with(|s| {
        let mut p = s.policy().categories;
        p.get_mut("images").unwrap().max_size = 10_000;
        s.categories = Some(p);
    });
    let r = create_deferred(&svc, &svc.bob, &meta(&[("filename", "photo.jpg")]));
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = r.headers()["location"].to_str().unwrap().to_string();
    let patch = |offset: u64, data: Vec<u8>| {
        svc.tus(Method::PATCH, &url, &svc.bob)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", offset.to_string())
            .body(data)
            .send()
            .unwrap()
    };
    // Up to the limit the bytes are taken; one more is refused with the whole part.
    let r = patch(0, vec![0xFF; 6_000]);
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, _, body) = error_of(patch(6_000, vec![0xFF; 4_001]));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let s = &svc.store.list_uploads(Some("bob")).unwrap()[0];
    assert_eq!(s.offset, 6_000);
    let staged = svc
        .store
        .dir()
        .join("uploads")
        .join(format!("{}.part", s.id));
    assert_eq!(std::fs::metadata(staged).unwrap().len(), 6_000);
    assert_eq!(svc.stored(), (0, 0));
}
