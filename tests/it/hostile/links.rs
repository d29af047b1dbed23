//! Signed links: only an owner or admin mints them; `/d/` re-checks the file at serve time
//! (exists, not deleted, purged or quarantined, version not infected, links not revoked);
//! revocation is explicit, by a delete (undelete brings nothing back) or by going private, and
//! survives `recover`.

use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use reqwest::blocking::Response;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera::{Config, PutOptions, Store};

use super::visibility::{error_of, fetch, private_then_public, put_version, set_public};
use crate::common::TempStore;
use crate::http::Service;

fn mint(s: &Service, token: Option<&str>, id: &str, body: Value) -> Response {
    let r = s
        .http
        .post(format!("{}/api/files/{id}/link", s.url))
        .body(body.to_string());
    match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
    .send()
    .unwrap()
}

/// A link alice mints (201), as its URL.
fn alices_link(s: &Service, id: &str, body: Value) -> String {
    let r = mint(s, Some(&s.alice), id, body);
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().unwrap();
    v["url"].as_str().unwrap().to_string()
}

fn revoke(s: &Service, token: &str, id: &str) -> Response {
    s.http
        .delete(format!("{}/api/files/{id}/links", s.url))
        .bearer_auth(token)
        .send()
        .unwrap()
}

/// Status, error code (if any) and body of a link's GET.
fn follow(s: &Service, url: &str) -> (StatusCode, Vec<u8>) {
    let r = s.http.get(url).send().unwrap();
    (r.status(), r.bytes().unwrap().to_vec())
}

fn refused_as(s: &Service, url: &str, status: StatusCode, code: &str) {
    let r = s.http.get(url).send().unwrap();
    assert_eq!(r.status(), status, "{url}");
    assert_eq!(error_of(r), code, "{url}");
}

#[test]
fn bob_cannot_mint_a_link_to_alices_private_v1() {
    let s = Service::start();
    let id = private_then_public(&s);
    for body in [json!({ "version": 1 }), json!({ "version": 2 }), json!({})] {
        let r = mint(&s, Some(&s.bob), &id, body.clone());
        // The file is public now, so bob may know it exists: 403, and no URL.
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{body}");
        let v: Value = r.json().unwrap();
        assert!(v.get("url").is_none());
        assert_eq!(v["error"], "forbidden");
    }
}

#[test]
fn bob_cannot_mint_a_link_to_alices_private_file() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "secret.txt", b"alice only", false);
    let r = mint(&s, Some(&s.bob), &id, json!({}));
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(r), "not_found");
    let r = mint(&s, None, &id, json!({}));
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = mint(&s, Some("tsr_made_up"), &id, json!({}));
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn a_link_dies_when_a_later_version_is_private() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"public v1", true);
    let url = alices_link(&s, &id, json!({ "version": 1 }));
    assert_eq!(follow(&s, &url), (StatusCode::OK, b"public v1".to_vec()));
    put_version(&s, &s.alice, "r.txt", b"private v2", false);
    refused_as(&s, &url, StatusCode::FORBIDDEN, "link_revoked");
    // v1 is still stored; a link alice mints now serves it.
    let fresh = alices_link(&s, &id, json!({ "version": 1 }));
    assert_eq!(follow(&s, &fresh), (StatusCode::OK, b"public v1".to_vec()));
}

#[test]
fn a_link_dies_when_the_file_is_made_private() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"shared", true);
    let url = alices_link(&s, &id, json!({}));
    assert_eq!(follow(&s, &url).0, StatusCode::OK);
    assert_eq!(
        set_public(&s, &s.alice, &id, false).status(),
        StatusCode::OK
    );
    refused_as(&s, &url, StatusCode::FORBIDDEN, "link_revoked");
    // Making it public again does not revive it.
    assert_eq!(set_public(&s, &s.alice, &id, true).status(), StatusCode::OK);
    refused_as(&s, &url, StatusCode::FORBIDDEN, "link_revoked");
}

#[test]
fn a_link_does_not_survive_delete_and_undelete() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"private words", false);
    let url = alices_link(&s, &id, json!({}));
    assert_eq!(follow(&s, &url).0, StatusCode::OK);
    let r = s
        .http
        .delete(format!("{}/api/files/{id}", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    refused_as(&s, &url, StatusCode::NOT_FOUND, "not_found");
    let r = s
        .http
        .post(format!("{}/api/files/{id}/undelete", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    refused_as(&s, &url, StatusCode::FORBIDDEN, "link_revoked");
    // The file is back for its owner, and new links work.
    let (status, body) = fetch(&s, &format!("/api/files/{id}"), Some(&s.alice));
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"private words"[..])
    );
    assert_eq!(
        follow(&s, &alices_link(&s, &id, json!({}))).0,
        StatusCode::OK
    );
}

#[test]
fn revoked_links_stop_and_links_minted_after_work() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"private words", false);
    let a = alices_link(&s, &id, json!({}));
    let b = alices_link(&s, &id, json!({ "download": true }));
    let r = revoke(&s, &s.alice, &id);
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for url in [&a, &b] {
        refused_as(&s, url, StatusCode::FORBIDDEN, "link_revoked");
    }
    let c = alices_link(&s, &id, json!({}));
    assert_eq!(follow(&s, &c), (StatusCode::OK, b"private words".to_vec()));
    // Revocation took nothing else: the file is intact.
    let f = s.store.stat(id.parse().unwrap()).unwrap();
    assert!(!f.deleted && f.size == 13);
}

#[test]
fn replaying_a_revoked_link_with_head_or_range_is_refused_too() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"0123456789", false);
    let url = alices_link(&s, &id, json!({}));
    let r = s
        .http
        .get(&url)
        .header("range", "bytes=2-4")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let etag = r.headers()["etag"].clone();
    assert_eq!(revoke(&s, &s.alice, &id).status(), StatusCode::NO_CONTENT);
    let r = s.http.head(&url).send().unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("content-range").is_none());
    let r = s
        .http
        .get(&url)
        .header("range", "bytes=2-4")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .http
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a revoked link must not revalidate"
    );
}

#[test]
fn bob_cannot_revoke_alices_links() {
    let s = Service::start();
    let (private, _) = put_version(&s, &s.alice, "p.txt", b"private", false);
    let (public, _) = put_version(&s, &s.alice, "o.txt", b"public", true);
    let lp = alices_link(&s, &private, json!({}));
    let lo = alices_link(&s, &public, json!({}));
    assert_eq!(revoke(&s, &s.bob, &private).status(), StatusCode::NOT_FOUND);
    assert_eq!(revoke(&s, &s.bob, &public).status(), StatusCode::FORBIDDEN);
    let r = s
        .http
        .delete(format!("{}/api/files/{public}/links", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(follow(&s, &lp), (StatusCode::OK, b"private".to_vec()));
    assert_eq!(follow(&s, &lo), (StatusCode::OK, b"public".to_vec()));
}

#[test]
fn an_admin_mints_and_revokes_like_an_owner() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"private words", false);
    let r = mint(&s, Some(&s.admin), &id, json!({ "version": 1 }));
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = r.json::<Value>().unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(follow(&s, &url).0, StatusCode::OK);
    // The owner's revocation ends the admin's link too.
    assert_eq!(revoke(&s, &s.alice, &id).status(), StatusCode::NO_CONTENT);
    refused_as(&s, &url, StatusCode::FORBIDDEN, "link_revoked");
}

#[test]
fn links_after_purge_are_not_found() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"soon gone", false);
    let url = alices_link(&s, &id, json!({ "ttl": 86_400 * 7 }));
    let r = s
        .http
        .delete(format!("{}/api/files/{id}", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.clock.0.fetch_add(3_600_000, Ordering::SeqCst);
    let purged = s
        .store
        .purge_deleted(std::time::Duration::from_secs(60), false)
        .unwrap();
    assert_eq!(purged.files, 1);
    assert!(s.store.stat(id.parse().unwrap()).is_err(), "purged");
    refused_as(&s, &url, StatusCode::NOT_FOUND, "not_found");
    // And nothing to mint a new link to.
    assert_eq!(
        mint(&s, Some(&s.alice), &id, json!({})).status(),
        StatusCode::NOT_FOUND
    );
}

#[test]
fn a_link_to_a_dropped_version_is_not_found() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"old", false);
    put_version(&s, &s.alice, "r.txt", b"new", false);
    let old = alices_link(&s, &id, json!({ "version": 1 }));
    let cur = alices_link(&s, &id, json!({ "version": 2 }));
    s.store.keep_last(1, None, false).unwrap();
    assert!(
        s.store.version_info(id.parse().unwrap(), 1).is_err(),
        "dropped"
    );
    refused_as(&s, &old, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(follow(&s, &cur), (StatusCode::OK, b"new".to_vec()));
}

#[test]
fn forged_tokens_are_refused_and_serve_nothing() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"alice's", false);
    let (other, _) = put_version(&s, &s.alice, "o.txt", b"another file", false);
    let url = alices_link(&s, &id, json!({}));
    let token = url.rsplit('/').next().unwrap().to_string();
    let (payload, sig) = token.split_once('.').unwrap();
    let mut p = B64.decode(payload).unwrap();
    assert_eq!(p.len(), 38, "layout 2: 38 bytes");
    let with = |p: &[u8]| format!("{}/d/{}.{sig}", s.url, B64.encode(p));
    // Another file id under the same signature.
    let mut q = p.clone();
    let other_id: tessera::FileId = other.parse().unwrap();
    q[5..21].copy_from_slice(&other_id.0.to_le_bytes());
    refused_as(&s, &with(&q), StatusCode::FORBIDDEN, "link_invalid");
    // A later expiry, another version, another epoch, the attachment flag off.
    for (at, delta) in [(25usize, 1u8), (21, 1), (34, 1), (33, 1)] {
        let mut q = p.clone();
        q[at] = q[at].wrapping_add(delta);
        refused_as(&s, &with(&q), StatusCode::FORBIDDEN, "link_invalid");
    }
    // Another layout byte, a truncated payload, garbage.
    p[0] = 3;
    refused_as(&s, &with(&p), StatusCode::FORBIDDEN, "link_invalid");
    refused_as(&s, &with(&p[..37]), StatusCode::FORBIDDEN, "link_invalid");
    for junk in ["x", "a.b", ".", "%00", &format!("{payload}.")] {
        let (status, body) = follow(&s, &format!("{}/d/{junk}", s.url));
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "{junk}: {status}"
        );
        assert!(!String::from_utf8_lossy(&body).contains("alice's"));
    }
    // A link signed with another key.
    let stranger = Hmac::<Sha256>::new_from_slice(&[9u8; 32])
        .unwrap()
        .chain_update(format!("GET\n/d/{payload}"))
        .finalize()
        .into_bytes();
    refused_as(
        &s,
        &format!("{}/d/{payload}.{}", s.url, B64.encode(stranger)),
        StatusCode::FORBIDDEN,
        "link_invalid",
    );
}

#[test]
fn a_correctly_signed_link_of_the_old_layout_is_refused() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"private words", false);
    // The first layout, signed with the service's own key: what a reader could mint before
    // only owners could.
    let key = std::fs::read(s.store.dir().join("signing.key")).unwrap();
    let kid = u32::from_le_bytes(Sha256::digest(&key)[..4].try_into().unwrap());
    let file: tessera::FileId = id.parse().unwrap();
    let mut p = Vec::new();
    p.extend_from_slice(&kid.to_le_bytes());
    p.extend_from_slice(&file.0.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&(s.clock.0.load(Ordering::SeqCst) / 1000 + 600).to_le_bytes());
    p.push(0);
    let payload = B64.encode(&p);
    let sig = Hmac::<Sha256>::new_from_slice(&key)
        .unwrap()
        .chain_update(format!("GET\n/d/{payload}"))
        .finalize()
        .into_bytes();
    let url = format!("{}/d/{payload}.{}", s.url, B64.encode(sig));
    let (status, body) = follow(&s, &url);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!String::from_utf8_lossy(&body).contains("private words"));
}

#[test]
fn expired_links_are_refused_even_for_public_files() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"public", true);
    let url = alices_link(&s, &id, json!({ "ttl": 60 }));
    assert_eq!(follow(&s, &url).0, StatusCode::OK);
    s.clock.0.fetch_add(61_000, Ordering::SeqCst);
    refused_as(&s, &url, StatusCode::FORBIDDEN, "link_expired");
}

#[test]
fn hostile_link_options_are_refused_or_bounded() {
    let s = Service::with(|c| c.links.max_ttl = std::time::Duration::from_secs(3600));
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"words", false);
    for body in [
        json!({ "ttl": -5 }),
        json!({ "ttl": "forever" }),
        json!({ "version": -1 }),
        json!({ "owner": "bob" }),
        json!({ "epoch": 0 }),
    ] {
        let r = mint(&s, Some(&s.alice), &id, body.clone());
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_of(r), "bad_request");
    }
    for version in [0, 2, u32::MAX] {
        let r = mint(&s, Some(&s.alice), &id, json!({ "version": version }));
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "v{version}");
    }
    // A huge ttl is capped by max_ttl.
    let now = s.clock.0.load(Ordering::SeqCst) / 1000;
    let r = mint(&s, Some(&s.alice), &id, json!({ "ttl": u64::MAX }));
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().unwrap();
    assert_eq!(v["expires_at"].as_i64().unwrap(), now + 3600);
}

#[test]
fn signed_link_answers_are_private_and_no_longer_than_the_link() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"public text", true);
    let url = alices_link(&s, &id, json!({ "ttl": 300 }));
    s.clock.0.fetch_add(100_000, Ordering::SeqCst);
    let r = s.http.get(&url).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cc = r.headers()["cache-control"].to_str().unwrap().to_string();
    assert!(cc.starts_with("private, max-age="), "{cc}");
    assert!(!cc.contains("public"), "{cc}");
    let age: u64 = cc["private, max-age=".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(age <= 200, "{cc}");
    // A 304 says the same.
    let etag = r.headers()["etag"].clone();
    let r = s
        .http
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private")
    );
}

#[test]
fn links_to_another_users_ids_cannot_be_minted_or_revoked() {
    let s = Service::start();
    let (alices, _) = put_version(&s, &s.alice, "a.txt", b"alice's", false);
    let (bobs, _) = put_version(&s, &s.bob, "b.txt", b"bob's", false);
    let url = alices_link(&s, &alices, json!({}));
    // bob works only on his own ids.
    assert_eq!(
        mint(&s, Some(&s.bob), &bobs, json!({})).status(),
        StatusCode::CREATED
    );
    assert_eq!(revoke(&s, &s.bob, &bobs).status(), StatusCode::NO_CONTENT);
    assert_eq!(
        mint(&s, Some(&s.bob), &alices, json!({})).status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(revoke(&s, &s.bob, &alices).status(), StatusCode::NOT_FOUND);
    for junk in ["not-an-id", "00000000000000000000000000", "../../etc"] {
        assert_eq!(
            mint(&s, Some(&s.bob), junk, json!({})).status(),
            StatusCode::NOT_FOUND,
            "{junk}"
        );
    }
    assert_eq!(follow(&s, &url), (StatusCode::OK, b"alice's".to_vec()));
}

#[cfg(feature = "media")]
#[test]
fn variant_links_die_with_their_originals_revocation_and_delete() {
    let s = Service::start();
    let (id, variants) = super::visibility::image_with_variants(&s, false);
    for (_, _, link) in &variants {
        assert_eq!(follow(&s, link).0, StatusCode::OK);
    }
    assert_eq!(revoke(&s, &s.alice, &id).status(), StatusCode::NO_CONTENT);
    for (_, _, link) in &variants {
        refused_as(&s, link, StatusCode::FORBIDDEN, "link_revoked");
    }
    // Fresh variant links work until the original is deleted (the variants follow it).
    let fresh: Value = s
        .get(&format!("/api/images/{id}/variants"), Some(&s.alice))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let link = fresh["variants"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(follow(&s, &link).0, StatusCode::OK);
    let r = s
        .http
        .delete(format!("{}/api/files/{id}", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    refused_as(&s, &link, StatusCode::NOT_FOUND, "not_found");
}

/// Library level: visibility changes and revocations are journaled, so an index rebuilt from
/// the packs alone has the same flags and link epochs (revoked links stay revoked).
#[test]
fn revocations_and_visibility_changes_survive_recover_without_the_index() {
    let t = TempStore::new();
    let store = Store::create(t.path(), Config::default()).unwrap();
    let put = |key: &str, data: &[u8], public: bool| {
        store
            .put(
                data,
                &PutOptions {
                    public,
                    ..PutOptions::key(key)
                },
            )
            .unwrap()
            .file
    };
    let a = put("a.txt", b"a1", true);
    put("a.txt", b"a2", true);
    store.set_public(a.id, false).unwrap();
    store.revoke_links(a.id).unwrap();
    let b = put("b.txt", b"b1", false);
    store.set_public(b.id, true).unwrap();
    store.revoke_links(b.id).unwrap();
    store.revoke_links(b.id).unwrap();
    let c = put("c.txt", b"c1", true);
    put("c.txt", b"c2", false); // public to private by a put
    store.delete(c.id).unwrap();
    store.undelete(c.id).unwrap();
    let snapshot = |store: &Store| {
        [a.id, b.id, c.id]
            .map(|id| {
                let f = store.stat(id).unwrap();
                let flags: Vec<bool> = store
                    .versions(id)
                    .unwrap()
                    .iter()
                    .map(|v| v.public)
                    .collect();
                (f.public, f.link_epoch, flags)
            })
            .to_vec()
    };
    let before = snapshot(&store);
    // The index's flags now differ from the manifests' by journaled events only: verify agrees.
    let verified = store.verify(&()).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(
        before,
        vec![
            (false, 2, vec![true, false]),
            (true, 2, vec![true]),
            (false, 2, vec![true, false]),
        ]
    );
    drop(store);
    std::fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &Config::default(), &()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let store = Store::open(t.path(), Config::default()).unwrap();
    assert_eq!(snapshot(&store), before);
    let verified = store.verify(&()).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.problems);
}

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn tessera(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("--store")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// The reproductions, replayed against the real binary (`tessera serve`).
#[test]
fn the_reproductions_fail_against_tessera_serve() {
    use reqwest::blocking::Client;
    use reqwest::blocking::multipart::{Form, Part};
    let t = TempStore::new();
    let add = |name: &str| {
        let out = tessera(&t.path(), &["user", "add", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let alice = add("alice");
    let bob = add("bob");
    let server = crate::http::ServeProcess::start(&t.path(), Some(alice));
    let (url, alice) = (&server.url, &server.token);
    let http = Client::new();
    let put = |data: &'static [u8], public: bool| -> Value {
        let form = Form::new()
            .text("key", "r.txt")
            .text("public", public.to_string())
            .part("file", Part::bytes(data).file_name("r.txt"));
        let r = http
            .post(format!("{url}/api/files"))
            .bearer_auth(alice)
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().unwrap()["files"][0]["file"].clone()
    };
    let id = put(b"v1 private", false)["id"]
        .as_str()
        .unwrap()
        .to_string();
    put(b"v2 public", true);
    // Anonymous ?version=1: 404, no public caching, no bytes.
    let r = http
        .get(format!("{url}/api/files/{id}?version=1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let cc = r
        .headers()
        .get("cache-control")
        .map(|c| c.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(!cc.contains("public") && !cc.contains("immutable"), "{cc}");
    assert!(!r.text().unwrap().contains("v1 private"));
    // Anonymous /versions lists v2 only.
    let v: Value = http
        .get(format!("{url}/api/files/{id}/versions"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let listed: Vec<u64> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![2]);
    // bob cannot mint a link to v1 (nor to v2).
    for version in [1, 2] {
        let r = http
            .post(format!("{url}/api/files/{id}/link"))
            .bearer_auth(&bob)
            .body(json!({ "version": version }).to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // alice's link to the public v2 dies when she makes a later version private.
    let r = http
        .post(format!("{url}/api/files/{id}/link"))
        .bearer_auth(alice)
        .body(json!({ "version": 2 }).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let link = r.json::<Value>().unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(http.get(&link).send().unwrap().text().unwrap(), "v2 public");
    put(b"v3 private", false);
    let r = http.get(&link).send().unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!r.text().unwrap().contains("v2 public"));
    // A private file and a missing one answer alike to an anonymous caller.
    let missing = tessera::FileId::new();
    for path in [format!("/api/files/{id}"), format!("/api/files/{missing}")] {
        let r = http.get(format!("{url}{path}")).send().unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[test]
fn cli_visibility_and_link_revoke_are_journaled_and_refuse_unknown_files() {
    let t = TempStore::new();
    let dir = t.path();
    let src = t.dir.path().join("r.txt");
    std::fs::write(&src, b"shared words").unwrap();
    let out = tessera(
        &dir,
        &["put", src.to_str().unwrap(), "--key", "r.txt", "--public"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tessera(&dir, &["--json", "visibility", "r.txt", "private"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["public"], false);
    let out = tessera(&dir, &["--json", "link", "revoke", "r.txt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["links_revoked"], true);
    // Unknown files and bad values: exit codes, nothing changes.
    let out = tessera(&dir, &["--json", "link", "revoke", "no-such-key"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "not_found", "{v}");
    let out = tessera(&dir, &["visibility", "r.txt", "sort-of"]);
    assert_eq!(out.status.code(), Some(2));
    // Journaled: the same after the index is rebuilt from the packs.
    std::fs::remove_file(dir.join("index.redb")).unwrap();
    let out = tessera(&dir, &["recover"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = Store::open(&dir, Config::default()).unwrap();
    let id = store.resolve_key("local", "r.txt").unwrap();
    let f = store.stat(id).unwrap();
    assert!(!f.public);
    assert_eq!(f.link_epoch, 2, "private (1) then revoked (2)");
}

#[test]
fn a_quarantined_file_serves_no_link_and_an_infected_version_gets_none() {
    use reqwest::blocking::multipart::{Form, Part};
    use std::sync::Arc;
    use tessera::scan::{FakeScanner, ScanConfig};
    let s = Service::with_config(
        |_| {},
        |c| {
            c.scan = Some(ScanConfig::new(Arc::new(FakeScanner::detecting(
                b"EVIL",
                "Test.Hostile",
            ))))
        },
    );
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"clean v1", true);
    let link = alices_link(&s, &id, json!({ "version": 1 }));
    assert_eq!(follow(&s, &link).0, StatusCode::OK);
    let form = Form::new()
        .text("key", "r.txt")
        .text("public", "true")
        .part("file", Part::bytes(b"EVIL v2".to_vec()).file_name("r.txt"));
    let r = s.upload(&s.alice, form);
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let f = s.store.stat(id.parse().unwrap()).unwrap();
    assert!(f.quarantined && f.version == 2, "stored, quarantined");
    // The clean v1 is not served while the file is quarantined: not by link, not by id.
    refused_as(&s, &link, StatusCode::NOT_FOUND, "not_found");
    let (status, _) = fetch(&s, &format!("/api/files/{id}?version=1"), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    // No new link to anything of it: the owner is told "not found", an admin why.
    for v in [1, 2] {
        let r = mint(&s, Some(&s.alice), &id, json!({ "version": v }));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = mint(&s, Some(&s.admin), &id, json!({ "version": v }));
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(error_of(r), "not_linkable");
    }
    // A clean v3 lifts the quarantine; the infected v2 still gets no link and is not served.
    put_version(&s, &s.alice, "r.txt", b"clean v3", true);
    let r = mint(&s, Some(&s.admin), &id, json!({ "version": 2 }));
    assert_eq!(r.status(), StatusCode::CONFLICT);
    for token in [None, Some(s.bob.as_str()), Some(s.alice.as_str())] {
        let (status, body) = fetch(&s, &format!("/api/files/{id}?version=2"), token);
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_ne!(body, b"EVIL v2");
    }
    let listed: Value = s
        .get(&format!("/api/files/{id}/versions"), None)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let versions: Vec<u64> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 3]);
}

/// Compaction rewrites the packs holding the sharing events; `recover` afterwards must still
/// see them (a revoked link brought back by a GC would be as bad as one brought back by a
/// crash).
#[test]
fn revocations_survive_compaction_then_recover() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicI64;
    use std::time::Duration;
    let t = TempStore::new();
    let clock = Arc::new(crate::common::TestClock(AtomicI64::new(1_800_000_000_000)));
    let config = || Config {
        clock: clock.clone(),
        pack_target_size: 1 << 20,
        ..Config::default()
    };
    let store = Store::create(t.path(), config()).unwrap();
    let public = |key: &str| PutOptions {
        public: true,
        ..PutOptions::key(key)
    };
    let a = store
        .put(&b"shared once"[..], &public("a.txt"))
        .unwrap()
        .file
        .id;
    store.set_public(a, false).unwrap();
    store.revoke_links(a).unwrap();
    // Garbage around the events: big files, deleted and purged, so their packs get compacted.
    for i in 0..3u64 {
        let big = store
            .put(
                &crate::common::random_bytes(70 + i, 700_000)[..],
                &PutOptions::key(format!("big{i}.bin")),
            )
            .unwrap()
            .file
            .id;
        store.delete(big).unwrap();
    }
    clock.advance(Duration::from_secs(31 * 24 * 3600));
    store
        .purge_deleted(Duration::from_secs(30 * 24 * 3600), false)
        .unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let gc = store.gc(&tessera::GcOptions::default()).unwrap();
    // The first pack (the file and its events, then garbage) is among those rewritten.
    assert!(gc.packs_compacted.contains(&1), "{gc:#?}");
    let before = store.stat(a).unwrap();
    assert_eq!((before.public, before.link_epoch), (false, 2));
    drop(store);
    std::fs::remove_file(t.path().join("index.redb")).unwrap();
    let report = tessera::recover(t.path(), &config(), &()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let store = Store::open(t.path(), config()).unwrap();
    let after = store.stat(a).unwrap();
    assert_eq!((after.public, after.link_epoch), (false, 2));
    assert_eq!(store.read_all(a).unwrap(), b"shared once");
}
