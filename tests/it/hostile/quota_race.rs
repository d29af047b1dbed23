//! Concurrent uploads against a quota: twelve clients of 1,000,000 bytes each against a 5 MiB
//! limit (a user's, then an organisation's), by multipart with a Content-Length, by chunked
//! multipart and by tus. The declared size is reserved before the body is read, so the
//! uploads that fit are admitted and the rest refused at once; never a byte over the limit.
//! Each asserts the statuses, what is stored, and that no reservation is left behind.

use reqwest::StatusCode;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::Value;
use tessera::users::NewUser;

use super::wire::{CLOSE, expect_continue, file_part, post_head, text_part};
use crate::common::random_bytes;
use crate::http::Service;

/// 5 MiB: room for five uploads of 1,000,000 bytes (and their reservations), not six.
const QUOTA: u64 = 5 << 20;
const SIZE: usize = 1_000_000;
const RACERS: usize = 12;

/// Runs `RACERS` uploads at once, racer `i` as `tokens[i % tokens.len()]`.
fn race<T: Send>(tokens: &[String], one: impl Fn(usize, &str) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(RACERS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let (one, barrier) = (&one, &barrier);
                let token = tokens[i % tokens.len()].clone();
                scope.spawn(move || {
                    barrier.wait();
                    one(i, &token)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A multipart upload of racer `i`'s file with reqwest; `chunked` sends it without a length.
fn upload(s: &Service, i: usize, token: &str, chunked: bool) -> (StatusCode, Value) {
    let data = random_bytes(1000 + i as u64, SIZE);
    let part = if chunked {
        Part::reader(std::io::Cursor::new(data))
    } else {
        Part::bytes(data)
    };
    let r = s
        .http
        .post(format!("{}/api/files", s.url))
        .bearer_auth(token)
        .multipart(Form::new().part("file", part.file_name(format!("r{i}.bin"))))
        .send()
        .unwrap();
    let status = r.status();
    (status, r.json().unwrap())
}

/// Every answer is 201 or 413 `quota_exceeded` with the figures; returns how many are 201.
fn tally(results: &[(StatusCode, Value)], scope: &str) -> usize {
    let mut stored = 0;
    for (status, v) in results {
        match *status {
            StatusCode::CREATED => stored += 1,
            StatusCode::PAYLOAD_TOO_LARGE => {
                assert_eq!(v["error"], "quota_exceeded", "{v}");
                assert_eq!(v["scope"], scope, "{v}");
                assert_eq!(v["limit"], QUOTA, "{v}");
                assert!(v["used"].as_u64().unwrap() <= QUOTA, "{v}");
                assert!(v["percentage"].is_number(), "{v}");
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    stored
}

/// `stored` files of `SIZE` for `owners`, usage within the limit, no reservation left.
fn stored_exactly(s: &Service, owners: &[&str], stored: usize) {
    let files: usize = owners.iter().map(|o| s.file_count(o)).sum();
    assert_eq!(files, stored);
    let used: u64 = owners
        .iter()
        .map(|o| s.store.quota_status(o).unwrap().used)
        .sum();
    assert_eq!(used, (stored * SIZE) as u64);
    assert!(
        used <= QUOTA,
        "{used} bytes stored against a limit of {QUOTA}"
    );
    let r = s.store.quota_reservations();
    assert_eq!((r.entries, r.bytes), (0, 0), "{r:?}");
}

#[test]
fn twelve_concurrent_uploads_fill_a_5_mib_user_quota_fairly() {
    let s = Service::start();
    s.store.quota_set("alice", Some(QUOTA)).unwrap();
    let results = race(std::slice::from_ref(&s.alice), |i, t| {
        upload(&s, i, t, false)
    });
    let stored = tally(&results, "user");
    // Six do not fit: exactly five can, and all five are admitted.
    assert_eq!(stored, 5, "{results:?}");
    stored_exactly(&s, &["alice"], stored);
}

#[test]
fn twelve_concurrent_uploads_fill_an_organisation_limit_fairly() {
    let s = Service::start();
    let (_, carol) = s
        .store
        .user_add(
            "carol",
            NewUser {
                org: Some("acme".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let (_, dave) = s
        .store
        .user_add(
            "dave",
            NewUser {
                org: Some("acme".into()),
                ..Default::default()
            },
        )
        .unwrap();
    s.store.org_quota_set("acme", Some(QUOTA)).unwrap();
    let results = race(&[carol, dave], |i, t| upload(&s, i, t, false));
    let stored = tally(&results, "organisation");
    assert_eq!(stored, 5, "{results:?}");
    stored_exactly(&s, &["carol", "dave"], stored);
    let acme = s
        .store
        .quota_orgs()
        .unwrap()
        .into_iter()
        .find(|o| o.org == "acme")
        .unwrap();
    assert_eq!(acme.used, (stored * SIZE) as u64);
}

#[test]
fn refused_racers_are_answered_before_their_body_is_sent() {
    let s = Service::start();
    s.store.quota_set("alice", Some(QUOTA)).unwrap();
    let answers = race(std::slice::from_ref(&s.alice), |i, token| {
        let body = [
            file_part(&format!("e{i}.bin")).as_bytes(),
            &random_bytes(2000 + i as u64, SIZE),
            b"\r\n",
            CLOSE.as_bytes(),
        ]
        .concat();
        let head = post_head(
            "/api/files",
            token,
            Some(body.len() as u64),
            "Expect: 100-continue\r\n",
        );
        expect_continue(&s.url, &head, &body)
    });
    let mut admitted = 0;
    for a in &answers {
        if a.interim.contains(&100) {
            // Asked for its body: then stored.
            assert_eq!(a.status, 201, "{:?}", a.body);
            admitted += 1;
        } else {
            // Refused from the headers: no `100 Continue`, not a byte of the body sent.
            assert_eq!(a.status, 413, "{:?}", a.body);
            assert_eq!(a.code(), "quota_exceeded");
            assert_eq!(a.sent, 0);
        }
    }
    assert_eq!(admitted, 5, "{answers:?}");
    stored_exactly(&s, &["alice"], admitted);
}

#[test]
fn chunked_racers_grow_their_reservations_and_never_pass_the_quota() {
    let s = Service::start();
    s.store.quota_set("alice", Some(QUOTA)).unwrap();
    // No length: nothing can be reserved up front, so the streams grow their reservations as
    // they go. Not fair, but never over.
    let results = race(std::slice::from_ref(&s.alice), |i, t| {
        upload(&s, i, t, true)
    });
    let stored = tally(&results, "user");
    assert!((1..=5).contains(&stored), "{results:?}");
    stored_exactly(&s, &["alice"], stored);
}

#[test]
fn twelve_concurrent_tus_creations_with_upload_fill_the_quota_fairly() {
    let s = Service::start();
    s.store.quota_set("alice", Some(QUOTA)).unwrap();
    let results = race(std::slice::from_ref(&s.alice), |i, token| {
        let r = s
            .http
            .post(format!("{}/api/uploads", s.url))
            .bearer_auth(token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", SIZE.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(random_bytes(3000 + i as u64, SIZE))
            .send()
            .unwrap();
        let status = r.status();
        let done = r.headers().contains_key("tessera-file-id");
        let v: Value = if status.is_success() {
            Value::Null
        } else {
            r.json().unwrap()
        };
        (status, v, done)
    });
    let mut stored = 0;
    for (status, v, done) in &results {
        if *status == StatusCode::CREATED {
            assert!(
                done,
                "a created upload with all its bytes is stored at once"
            );
            stored += 1;
        } else {
            assert_eq!(*status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
            assert_eq!(v["error"], "quota_exceeded", "{v}");
        }
    }
    assert_eq!(stored, 5, "{results:?}");
    stored_exactly(&s, &["alice"], stored);
    assert!(s.store.list_uploads(None).unwrap().is_empty());
}

#[test]
fn a_declared_length_is_refused_at_once_only_when_even_its_least_content_cannot_fit() {
    let s = Service::start();
    let quota = 1_100_000;
    s.store.quota_set("alice", Some(quota)).unwrap();
    let send = |data: &[u8], fields: usize| {
        let mut body = Vec::new();
        for i in 0..fields {
            body.extend_from_slice(text_part(&format!("note{i}"), &"n".repeat(2000)).as_bytes());
        }
        body.extend_from_slice(file_part("f.bin").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(CLOSE.as_bytes());
        let head = post_head(
            "/api/files",
            &s.alice,
            Some(body.len() as u64),
            "Expect: 100-continue\r\n",
        );
        (body.len(), expect_continue(&s.url, &head, &body))
    };
    // The body is longer than the free space (form fields), but its file fits: admitted
    // (at least Content-Length minus 256 KiB of form overhead is reserved, the rest grown
    // into) and stored.
    let (length, a) = send(&random_bytes(1, SIZE), 60);
    assert!(length as u64 > quota);
    assert_eq!(a.interim, vec![100]);
    assert_eq!(a.status, 201, "{:?}", a.body);
    // 100,000 bytes free: even the least content a 500,000-byte body can carry does not fit.
    // Refused from the headers.
    let (_, a) = send(&random_bytes(2, 500_000), 0);
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.code(), "quota_exceeded");
    assert!(a.interim.is_empty() && a.sent == 0);
    // A 200,000-byte body might carry little enough to fit: admitted, then refused as its
    // content passes the free space, and nothing stored.
    let (_, a) = send(&random_bytes(3, 200_000), 0);
    assert_eq!(a.interim, vec![100]);
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.code(), "quota_exceeded");
    assert_eq!(s.file_count("alice"), 1);
    assert_eq!(s.store.quota_status("alice").unwrap().used, SIZE as u64);
    let r = s.store.quota_reservations();
    assert_eq!((r.entries, r.bytes), (0, 0), "{r:?}");
}
