//! Visibility belongs to each version: a version written private is read by its owner and
//! admins only — not by id, `?version=`, `/versions`, `/meta`, variants or a shared cache —
//! and a caller who may not read a file gets what a missing file gets (404), token or not.

use reqwest::StatusCode;
use reqwest::blocking::Response;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::http::Service;

/// Uploads `data` to `key` as `token`'s user (a new version when the key exists); returns the
/// file id and the version number the upload made.
pub(super) fn put_version(
    s: &Service,
    token: &str,
    key: &str,
    data: &[u8],
    public: bool,
) -> (String, u64) {
    let form = Form::new()
        .text("key", key.to_string())
        .text("public", public.to_string())
        .part("file", Part::bytes(data.to_vec()).file_name("r.txt"));
    let r = s.upload(token, form);
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().unwrap();
    let f = &v["files"][0]["file"];
    (
        f["id"].as_str().unwrap().to_string(),
        f["version"].as_u64().unwrap(),
    )
}

/// alice's `r.txt`: v1 private, v2 public — the issue's reproduction.
pub(super) fn private_then_public(s: &Service) -> String {
    let (id, v1) = put_version(s, &s.alice, "r.txt", b"v1: alice's private draft", false);
    let (same, v2) = put_version(s, &s.alice, "r.txt", b"v2: published text", true);
    assert_eq!((same.as_str(), v1, v2), (id.as_str(), 1, 2));
    id
}

/// The error code of a JSON error answer (and that it is one, with a message).
pub(super) fn error_of(r: Response) -> String {
    let v: Value = r.json().expect("an error answer is JSON");
    assert!(v["message"].is_string(), "error without a message: {v}");
    v["error"].as_str().unwrap().to_string()
}

/// Status and body of a GET.
pub(super) fn fetch(s: &Service, path: &str, token: Option<&str>) -> (StatusCode, Vec<u8>) {
    let r = s.get(path, token).send().unwrap();
    (r.status(), r.bytes().unwrap().to_vec())
}

pub(super) fn set_public(s: &Service, token: &str, id: &str, public: bool) -> Response {
    s.http
        .post(format!("{}/api/files/{id}/visibility", s.url))
        .bearer_auth(token)
        .json(&json!({ "public": public }))
        .send()
        .unwrap()
}

/// What alice (the owner) reads of version `v`: the bytes stored stay there whatever others get.
fn owner_reads(s: &Service, id: &str, v: u32) -> Vec<u8> {
    let (status, body) = fetch(s, &format!("/api/files/{id}?version={v}"), Some(&s.alice));
    assert_eq!(status, StatusCode::OK);
    body
}

fn version_numbers(v: &Value) -> Vec<u64> {
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_u64().unwrap())
        .collect()
}

#[test]
fn anonymous_cannot_read_private_v1_via_version_param() {
    let s = Service::start();
    let id = private_then_public(&s);
    let r = s
        .get(&format!("/api/files/{id}?version=1"), None)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers().get("cache-control").is_none_or(|c| {
        let c = c.to_str().unwrap();
        !c.contains("public") && !c.contains("immutable")
    }));
    assert_eq!(error_of(r), "not_found");
    // The public v2 is served; v1 is still stored, for its owner.
    let (status, body) = fetch(&s, &format!("/api/files/{id}?version=2"), None);
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"v2: published text"[..])
    );
    assert_eq!(owner_reads(&s, &id, 1), b"v1: alice's private draft");
}

#[test]
fn another_user_cannot_read_private_v1_via_version_param() {
    let s = Service::start();
    let id = private_then_public(&s);
    let (status, body) = fetch(&s, &format!("/api/files/{id}?version=1"), Some(&s.bob));
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&body).contains("private draft"));
    // HEAD neither: no length, no ETag of the private content.
    let r = s
        .http
        .head(format!("{}/api/files/{id}?version=1", s.url))
        .bearer_auth(&s.bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers().get("etag").is_none());
    assert_eq!(owner_reads(&s, &id, 1), b"v1: alice's private draft");
}

#[test]
fn anonymous_versions_list_hides_the_private_v1() {
    let s = Service::start();
    let id = private_then_public(&s);
    let r = s
        .get(&format!("/api/files/{id}/versions"), None)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let others: Value = r.json().unwrap();
    assert_eq!(version_numbers(&others), vec![2]);
    let text = others.to_string();
    assert!(!text.contains(&tessera_blake3(b"v1: alice's private draft")));
    let bobs: Value = s
        .get(&format!("/api/files/{id}/versions"), Some(&s.bob))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(version_numbers(&bobs), vec![2]);
    let alices: Value = s
        .get(&format!("/api/files/{id}/versions"), Some(&s.alice))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(version_numbers(&alices), vec![1, 2]);
    assert_eq!(alices["versions"][0]["public"], false);
}

fn tessera_blake3(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

#[test]
fn anonymous_meta_of_a_private_file_is_404_like_a_missing_one() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "secret.txt", b"alice only", false);
    let missing = tessera::FileId::new().to_string();
    for path in [
        format!("/api/files/{id}/meta"),
        format!("/api/files/{id}/versions"),
        format!("/api/files/{id}"),
        format!("/api/files/{id}?version=1"),
    ] {
        let mine = s.get(&path, None).send().unwrap();
        let none = s.get(&path.replace(&id, &missing), None).send().unwrap();
        assert_eq!(mine.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(none.status(), StatusCode::NOT_FOUND, "{path}");
        let (a, b): (Value, Value) = (mine.json().unwrap(), none.json().unwrap());
        assert_eq!(a, b, "a private file must answer as a missing one: {path}");
    }
    // Only a wrong token is 401.
    let r = s
        .get(&format!("/api/files/{id}"), Some("tsr_forged"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.file_count("alice"), 1);
}

#[test]
fn another_users_private_file_is_404_on_every_route() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "secret.txt", b"alice only", false);
    for path in [
        format!("/api/files/{id}"),
        format!("/api/files/{id}/meta"),
        format!("/api/files/{id}/versions"),
    ] {
        let (status, body) = fetch(&s, &path, Some(&s.bob));
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("alice only"));
    }
    let r = set_public(&s, &s.bob, &id, true);
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .http
        .delete(format!("{}/api/files/{id}/links", s.url))
        .bearer_auth(&s.bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .http
        .delete(format!("{}/api/files/{id}", s.url))
        .bearer_auth(&s.bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Nothing changed: still private, still there.
    let f = s.store.stat(id.parse().unwrap()).unwrap();
    assert!(!f.public && !f.deleted);
}

#[test]
fn bob_cannot_publish_or_unpublish_alices_file() {
    let s = Service::start();
    let (public_id, _) = put_version(&s, &s.alice, "open.txt", b"for all", true);
    let r = set_public(&s, &s.bob, &public_id, false);
    // Public, so its existence is no secret: 403, and it stays public.
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_of(r), "forbidden");
    assert!(s.store.stat(public_id.parse().unwrap()).unwrap().public);
    let (status, body) = fetch(&s, &format!("/api/files/{public_id}"), None);
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"for all"[..]));
    let r = s
        .http
        .post(format!("{}/api/files/{public_id}/visibility", s.url))
        .json(&json!({ "public": false }))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(s.store.stat(public_id.parse().unwrap()).unwrap().public);
}

#[test]
fn hostile_visibility_bodies_are_refused_and_change_nothing() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "x.txt", b"private", false);
    for body in [
        r#"{"public": "yes"}"#,
        r#"{}"#,
        r#"{"public": true, "also": 1}"#,
        "public=true",
        "",
        r#"{"public": 1}"#,
    ] {
        let r = s
            .http
            .post(format!("{}/api/files/{id}/visibility", s.url))
            .bearer_auth(&s.alice)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_of(r), "bad_request");
    }
    assert!(!s.store.stat(id.parse().unwrap()).unwrap().public);
    let (status, _) = fetch(&s, &format!("/api/files/{id}"), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn making_a_file_private_hides_every_version_from_others() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"one", true);
    put_version(&s, &s.alice, "r.txt", b"two", true);
    let (status, _) = fetch(&s, &format!("/api/files/{id}?version=1"), None);
    assert_eq!(status, StatusCode::OK);
    let r = set_public(&s, &s.alice, &id, false);
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().unwrap();
    assert_eq!(v["public"], false);
    for path in [
        format!("/api/files/{id}"),
        format!("/api/files/{id}?version=1"),
        format!("/api/files/{id}?version=2"),
        format!("/api/files/{id}/meta"),
        format!("/api/files/{id}/versions"),
    ] {
        for token in [None, Some(s.bob.as_str())] {
            let (status, body) = fetch(&s, &path, token);
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(body != b"one" && body != b"two");
        }
    }
    assert_eq!(owner_reads(&s, &id, 1), b"one");
    assert_eq!(owner_reads(&s, &id, 2), b"two");
}

#[test]
fn a_private_version_over_a_public_one_hides_the_older_public_version() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"published", true);
    put_version(&s, &s.alice, "r.txt", b"draft, private", false);
    for v in [1, 2] {
        let (status, _) = fetch(&s, &format!("/api/files/{id}?version={v}"), None);
        assert_eq!(status, StatusCode::NOT_FOUND, "v{v}");
    }
    // A new public version opens itself and the versions written public, never v2.
    put_version(&s, &s.alice, "r.txt", b"published again", true);
    let (status, body) = fetch(&s, &format!("/api/files/{id}?version=1"), None);
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"published"[..])
    );
    let (status, body) = fetch(&s, &format!("/api/files/{id}?version=2"), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ne!(body, b"draft, private");
    let listed: Value = s
        .get(&format!("/api/files/{id}/versions"), None)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(version_numbers(&listed), vec![1, 3]);
}

#[test]
fn publishing_a_file_opens_only_its_current_version() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"old private", false);
    put_version(&s, &s.alice, "r.txt", b"new private", false);
    assert_eq!(set_public(&s, &s.alice, &id, true).status(), StatusCode::OK);
    let (status, body) = fetch(&s, &format!("/api/files/{id}"), None);
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"new private"[..])
    );
    let (status, _) = fetch(&s, &format!("/api/files/{id}?version=1"), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    let versions = s.store.versions(id.parse().unwrap()).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.public).collect::<Vec<_>>(),
        vec![false, true]
    );
}

#[test]
fn private_content_is_never_marked_public_or_immutable_for_caches() {
    let s = Service::start();
    let id = private_then_public(&s);
    // The owner reading the private v1: private, and keyed by token for any cache.
    let r = s
        .get(&format!("/api/files/{id}?version=1"), Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cc = r.headers()["cache-control"].to_str().unwrap().to_string();
    assert!(cc.starts_with("private"), "{cc}");
    assert!(!cc.contains("public") && !cc.contains("immutable"), "{cc}");
    let vary = r.headers()["vary"].to_str().unwrap().to_ascii_lowercase();
    assert!(vary.contains("authorization"), "{vary}");
    // An admin's read of it too.
    let r = s
        .get(&format!("/api/files/{id}?version=1"), Some(&s.admin))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private")
    );
    // The public v2 pinned by version is immutable; the current URL revalidates.
    let r = s
        .get(&format!("/api/files/{id}?version=2"), None)
        .send()
        .unwrap();
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let r = s.get(&format!("/api/files/{id}"), None).send().unwrap();
    assert_eq!(r.headers()["cache-control"], "public, no-cache");
}

#[test]
fn revalidating_private_content_gets_304_only_for_its_owner() {
    let s = Service::start();
    let id = private_then_public(&s);
    let path = format!("/api/files/{id}?version=1");
    let etag = s.get(&path, Some(&s.alice)).send().unwrap().headers()["etag"].clone();
    let r = s
        .get(&path, Some(&s.alice))
        .header("if-none-match", etag.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let cc = r.headers()["cache-control"].to_str().unwrap().to_string();
    assert!(
        cc.starts_with("private") && !cc.contains("immutable"),
        "{cc}"
    );
    // A stranger holding the ETag learns nothing: 404, not 304, and no ETag back.
    for token in [None, Some(s.bob.as_str())] {
        let r = s
            .get(&path, token)
            .header("if-none-match", etag.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers().get("etag").is_none());
    }
}

#[test]
fn a_cached_public_copy_stops_revalidating_once_the_file_is_private() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"public for now", true);
    let r = s.get(&format!("/api/files/{id}"), None).send().unwrap();
    assert_eq!(r.headers()["cache-control"], "public, no-cache");
    let etag = r.headers()["etag"].clone();
    assert_eq!(
        set_public(&s, &s.alice, &id, false).status(),
        StatusCode::OK
    );
    let r = s
        .get(&format!("/api/files/{id}"), None)
        .header("if-none-match", etag)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!s.store.stat(id.parse().unwrap()).unwrap().public);
}

#[test]
fn a_deleted_public_file_is_gone_for_everyone_but_stays_stored() {
    let s = Service::start();
    let (id, _) = put_version(&s, &s.alice, "r.txt", b"public then deleted", true);
    let r = s
        .http
        .delete(format!("{}/api/files/{id}", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for path in [
        format!("/api/files/{id}"),
        format!("/api/files/{id}?version=1"),
        format!("/api/files/{id}/meta"),
        format!("/api/files/{id}/versions"),
    ] {
        for token in [None, Some(s.bob.as_str()), Some(s.alice.as_str())] {
            let (status, _) = fetch(&s, &path, token);
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }
    let f = s.store.stat(id.parse().unwrap()).unwrap();
    assert!(f.deleted && f.public);
}

/// A small PNG the image pipeline accepts.
#[cfg(feature = "media")]
pub(super) fn small_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Uploads an image as alice and waits for its variants; returns the image id and the
/// variants' (id, version) as the owner's listing gives them, with their signed URLs.
#[cfg(feature = "media")]
pub(super) fn image_with_variants(
    s: &Service,
    public: bool,
) -> (String, Vec<(String, u64, String)>) {
    let form = Form::new()
        .text("public", public.to_string())
        .part("file", Part::bytes(small_png()).file_name("pic.png"));
    let r = s
        .http
        .post(format!("{}/api/images", s.url))
        .bearer_auth(&s.alice)
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().unwrap();
    let id = v["files"][0]["file"]["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let v: Value = s
            .get(&format!("/api/images/{id}/variants"), Some(&s.alice))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if v["status"] == "done" {
            let vars = v["variants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        x["file"].as_str().unwrap().to_string(),
                        x["version"].as_u64().unwrap(),
                        x["url"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>();
            assert!(!vars.is_empty());
            return (id, vars);
        }
        assert_ne!(v["status"], "failed", "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "variants still pending"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(feature = "media")]
#[test]
fn variants_of_a_private_image_are_not_readable_by_others() {
    let s = Service::start();
    let (id, variants) = image_with_variants(&s, false);
    for (vid, ver, _) in &variants {
        for path in [
            format!("/api/files/{vid}?version={ver}"),
            format!("/api/files/{vid}"),
            format!("/api/files/{vid}/meta"),
            format!("/api/files/{vid}/versions"),
        ] {
            for token in [None, Some(s.bob.as_str())] {
                let (status, _) = fetch(&s, &path, token);
                assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            }
        }
        let (status, body) = fetch(&s, &format!("/api/files/{vid}"), Some(&s.alice));
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
    }
    let (status, _) = fetch(&s, &format!("/api/images/{id}/variants"), Some(&s.bob));
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[cfg(feature = "media")]
#[test]
fn variants_follow_their_original_when_it_goes_private() {
    let s = Service::start();
    let (id, variants) = image_with_variants(&s, true);
    // Public: bob's listing gives plain URLs (no signed links he could not mint himself).
    let bobs: Value = s
        .get(&format!("/api/images/{id}/variants"), Some(&s.bob))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for x in bobs["variants"].as_array().unwrap() {
        let url = x["url"].as_str().unwrap();
        assert!(url.contains("/api/files/") && !url.contains("/d/"), "{url}");
        assert!(x.get("expires_at").is_none());
    }
    let (vid, ver, link) = &variants[0];
    let (status, _) = fetch(&s, &format!("/api/files/{vid}?version={ver}"), None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.http.get(link).send().unwrap().status(), StatusCode::OK);
    assert_eq!(
        set_public(&s, &s.alice, &id, false).status(),
        StatusCode::OK
    );
    for (vid, ver, link) in &variants {
        let (status, _) = fetch(&s, &format!("/api/files/{vid}?version={ver}"), None);
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = fetch(&s, &format!("/api/files/{vid}/meta"), Some(&s.bob));
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The variant's links were the original's: revoked with it.
        let r = s.http.get(link).send().unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(error_of(r), "link_revoked");
    }
    // The variants are still stored, for alice.
    let (status, _) = fetch(
        &s,
        &format!("/api/files/{vid}?version={ver}"),
        Some(&s.alice),
    );
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn restoring_a_private_version_onto_a_public_file_does_not_publish_it() {
    let s = Service::start();
    let id = private_then_public(&s);
    // The owner restores the private draft (v1) as v3 of a public file.
    let file: tessera::id::FileId = id.parse().unwrap();
    let restored = s.store.restore(file, 1).unwrap();
    assert_eq!(restored.version, 3);
    assert!(!restored.public, "the draft's content stays private");
    for path in [
        format!("/api/files/{id}"),
        format!("/api/files/{id}?version=3"),
        format!("/api/files/{id}?version=2"),
    ] {
        let (status, body) = fetch(&s, &path, None);
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!body.windows(2).any(|w| w == b"v1"), "{path}");
    }
    assert_eq!(owner_reads(&s, &id, 3), b"v1: alice's private draft");
    // Restoring the public v2 over it keeps the file private: the owner publishes explicitly.
    let again = s.store.restore(file, 2).unwrap();
    assert!(!again.public);
    assert_eq!(
        fetch(&s, &format!("/api/files/{id}"), None).0,
        StatusCode::NOT_FOUND
    );
}
