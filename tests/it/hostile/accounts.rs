//! Accounts after the index is lost: every case runs the service, deletes `index.redb`,
//! rebuilds it with `recover` from the packs alone, serves again and attacks. A revoked token
//! must stay refused, a user must not gain rights or lose limits, and no token may be
//! recoverable from the packs.

use reqwest::StatusCode;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::Value;
use tessera::config::Settings;
use tessera::users::NewUser;
use tessera::{Config, GcOptions, RecoverReport};

use crate::common::text_bytes;
use crate::http::Service;

/// The service's configuration in these cases: a small tier to hit.
fn settings(s: &mut Settings) {
    s.quotas
        .tiers
        .insert("tiny".into(), tessera::quota::Limit(Some(100_000)));
}

fn start() -> Service {
    Service::with(settings)
}

/// Stops the service, deletes its index, rebuilds it from the packs and serves it again.
fn lose_index_and_recover(s: Service) -> (Service, RecoverReport) {
    let stopped = s.stop();
    let dir = stopped.tmp.path();
    std::fs::remove_file(dir.join("index.redb")).unwrap();
    let mut st = Settings::default();
    settings(&mut st);
    let config = Config {
        clock: stopped.clock.clone(),
        ..st.store_config()
    };
    let report = tessera::recover(&dir, &config, &()).unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
    assert_eq!(report.users_kept, 0, "accounts come from the journal");
    (Service::restart(stopped, settings), report)
}

fn status(s: &Service, path: &str, token: &str) -> StatusCode {
    s.get(path, Some(token)).send().unwrap().status()
}

/// Uploads `len` bytes of text as `name`; returns the status and the error code, if any.
fn upload(s: &Service, token: &str, name: &str, len: usize) -> (StatusCode, Option<String>) {
    let r = s.upload(
        token,
        Form::new().part(
            "file",
            Part::bytes(text_bytes(len as u64, len)).file_name(name.to_string()),
        ),
    );
    let status = r.status();
    let v: Value = r.json().unwrap_or_default();
    (status, v["error"].as_str().map(str::to_string))
}

fn add_user(s: &Service, name: &str, new: NewUser) -> String {
    s.store.user_add(name, new).unwrap().1
}

#[test]
fn revoked_token_stays_refused_after_index_loss_and_recover() {
    let s = start();
    let id = s.put(&s.bob, "mine.txt", b"bob's private notes\n");
    let old = s.bob.clone();
    s.store.user_revoke_tokens("bob").unwrap();
    assert_eq!(status(&s, &format!("/api/files/{id}"), &old), 401);

    let (s, report) = lose_index_and_recover(s);
    assert!(report.accounts >= 4, "{report:#?}");
    // Nothing is readable with it: not bob's own file, not a listing, not his quota.
    for path in [
        format!("/api/files/{id}"),
        format!("/api/files/{id}/meta"),
        "/api/files".to_string(),
        "/api/quota".to_string(),
    ] {
        assert_eq!(status(&s, &path, &old), 401, "{path}");
    }
    // The file is still there, for its owner's admin.
    let r = s
        .get(&format!("/api/files/{id}"), Some(&s.admin))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), b"bob's private notes\n");
    assert!(s.store.authenticate(&old).unwrap().is_none());
}

#[test]
fn revoked_token_cannot_upload_after_recover_and_nothing_is_stored() {
    let s = start();
    let old = s.bob.clone();
    s.store.user_revoke_tokens("bob").unwrap();
    let (s, _) = lose_index_and_recover(s);
    let (code, error) = upload(&s, &old, "sneaky.txt", 1_000);
    assert_eq!(code, 401);
    assert_eq!(error.as_deref(), Some("unauthorized"));
    assert_eq!(s.file_count("bob"), 0);
}

#[test]
fn token_issued_after_revoke_works_after_recover_and_the_old_one_does_not() {
    let s = start();
    let old = s.alice.clone();
    s.store.user_revoke_tokens("alice").unwrap();
    let new = s.store.user_new_token("alice").unwrap();
    let (s, _) = lose_index_and_recover(s);
    let id = s.put(&new, "after.txt", b"written after the recover\n");
    assert_eq!(status(&s, &format!("/api/files/{id}"), &new), 200);
    assert_eq!(status(&s, &format!("/api/files/{id}"), &old), 401);
    assert_eq!(s.file_count("alice"), 1);
}

#[test]
fn non_admin_does_not_become_admin_after_recover() {
    let s = start();
    let secret = s.put(&s.bob, "secret.txt", b"bob only\n");
    assert_eq!(status(&s, "/api/admin/storage/stats", &s.alice), 403);
    let (s, _) = lose_index_and_recover(s);
    for path in [
        "/api/admin/storage/stats",
        "/api/admin/quota/report",
        "/api/admin/quarantine",
    ] {
        assert_eq!(status(&s, path, &s.alice), 403, "{path}");
    }
    // Another user's private file stays out of reach (404, as if it did not exist).
    assert_eq!(status(&s, &format!("/api/files/{secret}"), &s.alice), 404);
    assert!(!s.store.user("alice").unwrap().admin);
    assert!(!s.store.user("bob").unwrap().admin);
    assert_eq!(status(&s, "/api/admin/storage/stats", &s.admin), 200);
}

#[test]
fn demoted_admin_stays_demoted_after_recover() {
    let s = start();
    let eve = add_user(
        &s,
        "eve",
        NewUser {
            admin: true,
            ..Default::default()
        },
    );
    assert_eq!(status(&s, "/api/admin/storage/stats", &eve), 200);
    let mut demoted = s.store.user("eve").unwrap();
    demoted.admin = false;
    s.store.user_update(&demoted).unwrap();
    assert_eq!(status(&s, "/api/admin/storage/stats", &eve), 403);
    let (s, _) = lose_index_and_recover(s);
    assert_eq!(status(&s, "/api/admin/storage/stats", &eve), 403);
    assert_eq!(status(&s, "/api/admin/quota/report", &eve), 403);
    assert!(!s.store.user("eve").unwrap().admin);
}

#[test]
fn refused_user_add_over_an_existing_name_is_not_replayed_by_recover() {
    let s = start();
    // Re-adding alice as an admin would hand out an admin token for her name.
    let err = s
        .store
        .user_add(
            "alice",
            NewUser {
                admin: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, tessera::Error::AlreadyExists { .. }), "{err}");
    let (s, _) = lose_index_and_recover(s);
    assert_eq!(status(&s, "/api/admin/storage/stats", &s.alice), 403);
    assert_eq!(status(&s, "/api/files", &s.alice), 200);
    assert!(!s.store.user("alice").unwrap().admin);
    assert_eq!(s.store.users().unwrap().len(), 3);
}

#[test]
fn quota_override_still_refuses_an_upload_after_recover() {
    let s = start();
    s.store.quota_set("alice", Some(50_000)).unwrap();
    assert_eq!(upload(&s, &s.alice, "a.txt", 40_000).0, 201);
    let (code, error) = upload(&s, &s.alice, "b.txt", 20_000);
    assert_eq!(
        (code.as_u16(), error.as_deref()),
        (413, Some("quota_exceeded"))
    );
    let (s, _) = lose_index_and_recover(s);
    let (code, error) = upload(&s, &s.alice, "b.txt", 20_000);
    assert_eq!(
        (code.as_u16(), error.as_deref()),
        (413, Some("quota_exceeded"))
    );
    assert_eq!(s.file_count("alice"), 1, "only the file that fitted");
    let q: Value = s
        .get("/api/quota", Some(&s.alice))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (q["used"].as_u64(), q["limit"].as_u64()),
        (Some(40_000), Some(50_000))
    );
}

#[test]
fn tier_limit_still_refuses_an_upload_after_recover() {
    let s = start();
    let carol = add_user(
        &s,
        "carol",
        NewUser {
            tier: Some("tiny".into()),
            ..Default::default()
        },
    );
    assert_eq!(upload(&s, &carol, "a.txt", 90_000).0, 201);
    let (s, _) = lose_index_and_recover(s);
    assert_eq!(s.store.user("carol").unwrap().tier.as_deref(), Some("tiny"));
    let (code, error) = upload(&s, &carol, "b.txt", 20_000);
    assert_eq!(
        (code.as_u16(), error.as_deref()),
        (413, Some("quota_exceeded"))
    );
    assert_eq!(s.file_count("carol"), 1);
}

#[test]
fn org_limit_still_refuses_a_member_upload_after_recover() {
    let s = start();
    let dan = add_user(
        &s,
        "dan",
        NewUser {
            org: Some("acme".into()),
            ..Default::default()
        },
    );
    let erin = add_user(
        &s,
        "erin",
        NewUser {
            org: Some("acme".into()),
            ..Default::default()
        },
    );
    s.store.org_quota_set("acme", Some(100_000)).unwrap();
    assert_eq!(upload(&s, &dan, "a.txt", 60_000).0, 201);
    let (s, _) = lose_index_and_recover(s);
    // erin has no limit of her own: her organisation's, full of dan's file, refuses her.
    let (code, error) = upload(&s, &erin, "b.txt", 60_000);
    assert_eq!(
        (code.as_u16(), error.as_deref()),
        (413, Some("quota_exceeded"))
    );
    assert_eq!(s.file_count("erin"), 0);
    let orgs: Value = s
        .get("/api/admin/quota/orgs", Some(&s.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let acme = orgs["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["org"] == "acme")
        .cloned()
        .unwrap_or_else(|| panic!("{orgs}"));
    assert_eq!(
        (acme["used"].as_u64(), acme["limit"].as_u64()),
        (Some(60_000), Some(100_000))
    );
}

#[test]
fn tokens_never_appear_in_the_packs_in_clear() {
    let s = start();
    let extra = s.store.user_new_token("alice").unwrap();
    let tokens = [
        s.admin.clone(),
        s.alice.clone(),
        s.bob.clone(),
        extra.clone(),
    ];
    let stopped = s.stop();
    let mut packs = Vec::new();
    for e in std::fs::read_dir(stopped.tmp.path().join("packs")).unwrap() {
        packs.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    let contains = |needle: &[u8]| packs.windows(needle.len()).any(|w| w == needle);
    for t in &tokens {
        assert!(!contains(t.as_bytes()), "a token is in the packs");
        // Nor its random part alone.
        assert!(
            !contains(&t.as_bytes()[4..]),
            "a token's secret is in the packs"
        );
        // What is journaled is its SHA-256.
        let hash = tessera::pack::account::to_hex(&sha256(t));
        assert!(contains(hash.as_bytes()), "the token's hash is journaled");
    }
    let s = Service::restart(stopped, settings);
    let (s, _) = lose_index_and_recover(s);
    assert_eq!(status(&s, "/api/files", &extra), 200);
}

#[test]
fn journaled_token_hash_used_as_a_token_is_refused() {
    let s = start();
    let hash = tessera::pack::account::to_hex(&sha256(&s.admin));
    let (s, _) = lose_index_and_recover(s);
    // Someone who read the packs holds the hashes; none of these forms is a token.
    for forged in [
        hash.clone(),
        format!("tsr_{hash}"),
        format!("tsr_{}", &hash[..43]),
    ] {
        assert_eq!(
            status(&s, "/api/admin/storage/stats", &forged),
            401,
            "{forged}"
        );
        let (code, _) = upload(&s, &forged, "x.txt", 100);
        assert_eq!(code, 401);
    }
    assert_eq!(s.file_count("root"), 0);
    assert_eq!(status(&s, "/api/admin/storage/stats", &s.admin), 200);
}

#[test]
fn revocation_survives_compaction_and_recover() {
    let s = start();
    let old = s.bob.clone();
    s.store.user_revoke_tokens("bob").unwrap();
    let new = s.store.user_new_token("bob").unwrap();
    // Garbage in the pack that holds the account events, so compaction rewrites it.
    let big = s.put(&s.alice, "big.txt", &text_bytes(9, 3_000_000));
    let big = big.parse().unwrap();
    s.store.delete(big).unwrap();
    s.store
        .purge_deleted(std::time::Duration::ZERO, false)
        .unwrap();
    let gc = s
        .store
        .gc(&GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    assert!(gc.packs_compacted.contains(&1), "{gc:#?}");
    let (s, report) = lose_index_and_recover(s);
    assert_eq!(
        report.accounts, 1,
        "one snapshot replaced the account events"
    );
    assert_eq!(status(&s, "/api/files", &old), 401);
    assert_eq!(status(&s, "/api/files", &new), 200);
    assert_eq!(s.file_count("alice"), 0, "the purged file stays purged");
}

fn sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}
