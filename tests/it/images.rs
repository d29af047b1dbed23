//! Images (feature `media`): probing real photographs (tests/images, see its README),
//! orientation, variants that fit their boxes and carry no EXIF, bombs and truncated files
//! refused before anything commits, jobs that run exactly once, optimisation, watermarks.

use std::io::Cursor;
use std::path::PathBuf;

use image::{DynamicImage, GenericImageView};
use tessera::index::JobStatus;
use tessera::media::{Encoding, ImageOptions, Position, Watermark};
use tessera::{Config, Error, ListQuery, PutOptions, Store};

use crate::common::TempStore;

fn photo(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/images")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every photograph in tests/images.
pub fn photos() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".md"))
        .map(|n| {
            let b = photo(&n);
            (n, b)
        })
        .collect();
    out.sort();
    out
}

fn named(name: &str) -> PutOptions {
    PutOptions {
        name: Some(name.to_string()),
        ..Default::default()
    }
}

fn decode(bytes: &[u8]) -> DynamicImage {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .unwrap()
        .decode()
        .unwrap()
}

fn has_gps(bytes: &[u8]) -> bool {
    exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .is_ok_and(|e| e.fields().any(|f| f.tag.context() == exif::Context::Gps))
}

fn has_exif(bytes: &[u8]) -> bool {
    exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .is_ok()
}

fn rejected(r: tessera::Result<tessera::PutReport>) -> &'static str {
    match r {
        Err(Error::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A PNG whose header declares `w`×`h` pixels, with a few bytes of image data: tiny on disk,
/// gigabytes once decoded.
pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    // A stored (uncompressed) zlib block of zero rows' worth of bytes.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn nothing_stored(store: &Store) {
    let page = store.list(&ListQuery::default()).unwrap();
    assert!(page.files.is_empty(), "stored: {:?}", page.files);
    assert_eq!(store.stats().unwrap().files, 0);
}

#[test]
fn real_photos_are_probed_and_get_variants_that_fit_and_carry_no_exif() {
    let t = TempStore::new();
    let store = t.create();
    let photos = photos();
    assert!(
        photos.len() >= 10,
        "tests/images holds {} photos",
        photos.len()
    );
    let mut ids = Vec::new();
    for (name, bytes) in &photos {
        let r = store
            .put_image(&bytes[..], &named(name), &ImageOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The original is stored as uploaded.
        assert_eq!(store.read_all(r.file.id).unwrap(), *bytes, "{name}");
        let facts = &r.file.metadata["image"];
        let oriented = decode(bytes);
        let (w, h) = (
            facts["width"].as_u64().unwrap(),
            facts["height"].as_u64().unwrap(),
        );
        let orientation = facts["orientation"].as_u64().unwrap();
        // Orientations 5–8 swap the stored sides.
        let (sw, sh) = (u64::from(oriented.width()), u64::from(oriented.height()));
        if orientation >= 5 {
            assert_eq!((w, h), (sh, sw), "{name}");
        } else {
            assert_eq!((w, h), (sw, sh), "{name}");
        }
        if let Some(n) = name.strip_prefix("orientation_") {
            let n: u64 = n.trim_end_matches(".jpg").parse().unwrap();
            assert_eq!(orientation, n, "{name}");
            // Every orientation displays as the same upright 50×70 photo.
            assert_eq!((w, h), (50, 70), "{name}");
        }
        assert_eq!(
            store.image_status(r.file.id).unwrap().status,
            JobStatus::Pending
        );
        ids.push((name.clone(), r.file.id, (w as u32, h as u32)));
    }
    let gps = &store
        .stat(ids.iter().find(|i| i.0 == "gps_sample1.jpg").unwrap().1)
        .unwrap()
        .metadata["image"];
    assert_eq!(gps["gps"], true);
    assert_eq!(gps["exif"], true);
    assert!(gps["camera"].is_string(), "{gps}");
    assert!(gps.get("latitude").is_none() && !gps.to_string().contains("GPSLatitude"));

    let done = store.run_pending_image_jobs().unwrap();
    assert_eq!(done.len(), ids.len());
    let upright = decode(
        &store
            .read_all(ids.iter().find(|i| i.0 == "orientation_1.jpg").unwrap().1)
            .unwrap(),
    );
    for (name, id, (w, h)) in &ids {
        let status = store.image_status(*id).unwrap();
        assert_eq!(status.status, JobStatus::Done, "{name}: {:?}", status.error);
        assert_eq!(status.attempts, 1);
        let names: Vec<&str> = status.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            ["small", "medium", "large", "optimised", "jpeg"],
            "{name}"
        );
        for v in &status.variants {
            let bytes = store.read_all(v.file).unwrap();
            let img = decode(&bytes);
            let side = match v.name.as_str() {
                "small" => 150,
                "medium" => 300,
                "large" => 600,
                _ => 4096,
            };
            // Fits its box, keeps the aspect ratio, never upscaled.
            let expect = if *w <= side && *h <= side {
                (*w, *h)
            } else {
                let s = f64::from(side) / f64::from((*w).max(*h));
                (
                    (f64::from(*w) * s).round() as u32,
                    (f64::from(*h) * s).round() as u32,
                )
            };
            assert_eq!(img.dimensions(), expect, "{name} {}", v.name);
            assert_eq!((v.width, v.height), expect);
            assert!(
                !has_gps(&bytes) && !has_exif(&bytes),
                "{name} {} carries EXIF",
                v.name
            );
            let file = store.stat(v.file).unwrap();
            assert_eq!(file.metadata["variant_of"]["file"], serde_json::json!(id));
            assert_eq!(file.mime, v.mime);
            if name.starts_with("orientation_") && v.name == "jpeg" {
                // Orientation applied: the pixels match the upright photo.
                assert_eq!(img.dimensions(), upright.dimensions());
                let diff: u64 = img
                    .to_rgb8()
                    .as_raw()
                    .iter()
                    .zip(upright.to_rgb8().as_raw())
                    .map(|(a, b)| u64::from(a.abs_diff(*b)))
                    .sum();
                let mean = diff as f64 / (50.0 * 70.0 * 3.0);
                assert!(
                    mean < 12.0,
                    "{name}: mean difference {mean} from the upright photo"
                );
            }
        }
    }
    // The GPS original is kept as uploaded (the default), with its EXIF.
    assert!(has_gps(&photo("gps_sample1.jpg")));
}

#[test]
fn strip_original_exif_removes_gps_from_the_stored_original() {
    let t = TempStore::new();
    let mut config = Config::default();
    config.media.strip_original_exif = true;
    let store = Store::create(t.path(), config).unwrap();
    let bytes = photo("gps_sample1.jpg");
    let r = store
        .put_image(&bytes[..], &named("a.jpg"), &ImageOptions::default())
        .unwrap();
    let stored = store.read_all(r.file.id).unwrap();
    assert!(!has_gps(&stored) && stored.len() < bytes.len());
    assert_eq!(decode(&stored).dimensions(), decode(&bytes).dimensions());
    assert_eq!(r.file.metadata["image"]["gps"], true);
}

#[test]
fn a_bomb_and_a_truncated_jpeg_are_refused_and_nothing_is_stored() {
    let t = TempStore::new();
    let store = t.create();
    let bomb = bomb_png(50_000, 50_000);
    assert!(bomb.len() < 100);
    let code = rejected(store.put_image(&bomb[..], &named("bomb.png"), &ImageOptions::default()));
    assert_eq!(code, "image_too_large");
    // Under the pixel cap but over the allocation limit: refused by the decoder's limits.
    let mut config = Config::default();
    config.media.max_alloc = 1 << 20;
    let t2 = TempStore::new();
    let small_alloc = Store::create(t2.path(), config).unwrap();
    let code = rejected(small_alloc.put_image(
        &bomb_png(2_000, 2_000)[..],
        &named("b.png"),
        &ImageOptions::default(),
    ));
    assert_eq!(code, "image_too_large");
    nothing_stored(&small_alloc);

    let jpeg = photo("branches.jpg");
    for cut in [jpeg.len() / 2, jpeg.len() - 100, 600] {
        let code =
            rejected(store.put_image(&jpeg[..cut], &named("cut.jpg"), &ImageOptions::default()));
        assert_eq!(code, "image_invalid", "cut at {cut}");
    }
    let png = photo("flowers.png");
    let code = rejected(store.put_image(
        &png[..png.len() / 2],
        &named("cut.png"),
        &ImageOptions::default(),
    ));
    assert_eq!(code, "image_invalid");
    nothing_stored(&store);
    assert!(store.run_pending_image_jobs().unwrap().is_empty());
}

#[test]
fn a_job_rerun_after_an_interrupted_run_reuses_what_it_stored() {
    let t = TempStore::new();
    let store = t.create();
    let bytes = photo("branches.jpg");
    let r = store
        .put_image(&bytes[..], &named("b.jpg"), &ImageOptions::default())
        .unwrap();
    // What a run killed after its first variant put leaves: the variant at its key, the job
    // still pending.
    let key = tessera::media::jobs::variant_key(r.file.id, r.file.version, "small", "webp");
    let earlier = store
        .put(
            &store
                .optimise_image(&bytes, Encoding::Webp, 1000)
                .unwrap()
                .bytes[..],
            &PutOptions {
                key: Some(key),
                name: Some("b-small.webp".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let status = store.run_image_job(r.file.id, r.file.version).unwrap();
    assert_eq!((status.status, status.attempts), (JobStatus::Done, 1));
    assert_eq!(status.variants[0].file, earlier.file.id);
    for v in &status.variants {
        assert_eq!(store.versions(v.file).unwrap().len(), 1, "{}", v.name);
    }
    // Done is final: running it again changes nothing.
    assert!(store.run_pending_image_jobs().unwrap().is_empty());
    assert_eq!(
        store.run_image_job(r.file.id, r.file.version).unwrap(),
        status
    );
    // Variants are deduplicated like any file: the same photo's thumbnails share content.
    let twin = store
        .put_image(&bytes[..], &named("c.jpg"), &ImageOptions::default())
        .unwrap();
    store.run_pending_image_jobs().unwrap();
    let twin = store.image_status(twin.file.id).unwrap();
    assert_eq!(twin.variants[1].blake3, status.variants[1].blake3);
    assert_ne!(twin.variants[1].file, status.variants[1].file);
}

#[test]
fn workers_resume_pending_jobs_after_a_reopen_and_finish_each_once() {
    let t = TempStore::new();
    let mut ids = Vec::new();
    {
        let store = t.create();
        for (name, bytes) in photos().into_iter().take(4) {
            ids.push(
                store
                    .put_image(&bytes[..], &named(&name), &ImageOptions::default())
                    .unwrap()
                    .file
                    .id,
            );
        }
        // Closed with every job pending: no worker ran.
    }
    let store = t.open();
    let workers = store.start_image_workers().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while ids
        .iter()
        .any(|id| store.image_status(*id).unwrap().status == JobStatus::Pending)
    {
        assert!(std::time::Instant::now() < deadline, "jobs still pending");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(workers);
    for id in ids {
        let s = store.image_status(id).unwrap();
        assert_eq!((s.status, s.attempts), (JobStatus::Done, 1));
        for v in s.variants {
            assert_eq!(store.versions(v.file).unwrap().len(), 1);
        }
    }
}

#[test]
fn a_job_that_keeps_failing_is_retried_then_marked_failed_with_its_error() {
    let t = TempStore::new();
    let mut config = Config::default();
    // Images may not be named .webp in this store: every WebP variant put (into its
    // original's category, images) is refused.
    let mut policy = tessera::validate::Policy::default();
    policy.categories.get_mut("images").unwrap().extensions =
        vec!["jpg".into(), "jpeg".into(), "png".into()];
    config.policy = std::sync::Arc::new(policy);
    config.media.max_attempts = 3;
    let store = Store::create(t.path(), config).unwrap();
    let r = store
        .put_image(
            &photo("branches.jpg")[..],
            &named("b.jpg"),
            &ImageOptions::default(),
        )
        .unwrap();
    store.run_pending_image_jobs().unwrap();
    let s = store.image_status(r.file.id).unwrap();
    assert_eq!((s.status, s.attempts), (JobStatus::Failed, 3));
    assert!(
        s.error.as_deref().unwrap().contains("category_mismatch"),
        "{:?}",
        s.error
    );
}

#[test]
fn optimise_to_a_size_lowers_the_quality_to_a_floor_and_says_so() {
    let t = TempStore::new();
    let store = t.create();
    let bytes = photo("flowers.png");
    let full = store
        .optimise_image(&bytes, Encoding::Webp, 10_000)
        .unwrap();
    assert!(full.met && full.quality == 90.0);
    let target = full.bytes.len() as u64 / 1024 / 2;
    let o = store
        .optimise_image(&bytes, Encoding::Webp, target)
        .unwrap();
    assert!(o.met && o.quality < 90.0 && o.bytes.len() as u64 <= target * 1024);
    assert_eq!(decode(&o.bytes).dimensions(), (600, 400));
    let tiny = store.optimise_image(&bytes, Encoding::Jpeg, 1).unwrap();
    assert!(!tiny.met);
    assert_eq!(tiny.quality, tessera::media::optimise::QUALITY_FLOOR);
}

#[test]
fn a_watermark_changes_only_its_corner() {
    let img = decode(&photo("branches.png"));
    let wm = Watermark {
        text: "Tessera".into(),
        position: Position::BottomRight,
        opacity: 0.8,
    };
    let marked = tessera::media::watermark::apply(&img, &wm);
    let (a, b) = (img.to_rgb8(), marked.to_rgb8());
    let changed = |x0: u32, y0: u32, x1: u32, y1: u32| {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| a.get_pixel(x, y) != b.get_pixel(x, y))
            .count()
    };
    assert!(changed(300, 300, 600, 400) > 100);
    assert_eq!(changed(0, 0, 600, 250), 0);
    let faint = tessera::media::watermark::apply(&img, &Watermark { opacity: 0.0, ..wm });
    assert_eq!(faint.to_rgb8(), a);
}

// ---------------------------------------------------------------- HTTP

use reqwest::StatusCode;
use reqwest::blocking::multipart::{Form, Part};
use reqwest::blocking::{Client, Response};
use serde_json::Value;

use crate::http::{ServeProcess, Service};

fn post_image(
    client: &Client,
    url: &str,
    token: &str,
    name: &str,
    bytes: &[u8],
    fields: &[(&str, &str)],
) -> Response {
    let mut form = Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part(
        "file",
        Part::bytes(bytes.to_vec()).file_name(name.to_string()),
    );
    client
        .post(format!("{url}/api/images"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .unwrap()
}

fn variants_of(client: &Client, url: &str, token: &str, id: &str) -> Value {
    let r = client
        .get(format!("{url}/api/images/{id}/variants"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().unwrap()
}

/// Polls until the image's job is no longer pending. The deadline only guards against a hang.
fn wait_done(client: &Client, url: &str, token: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let v = variants_of(client, url, token, id);
        if v["status"] != "pending" {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job of {id} still pending"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn refused(r: Response) -> String {
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = r.json().unwrap();
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn http_image_upload_variants_with_immutable_signed_links_and_owner_only_status() {
    let s = Service::start();
    let bytes = photo("gps_sample1.jpg");
    let r = post_image(
        &s.http,
        &s.url,
        &s.alice,
        "holiday.jpg",
        &bytes,
        &[
            ("watermark", "© alice"),
            ("watermark_position", "center"),
            ("max_kb", "20"),
        ],
    );
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().unwrap();
    let file = &v["files"][0]["file"];
    assert_eq!(file["metadata"]["image"]["width"], 500);
    assert_eq!(file["metadata"]["image"]["gps"], true);
    let id = file["id"].as_str().unwrap();
    let done = wait_done(&s.http, &s.url, &s.alice, id);
    assert_eq!(done["status"], "done", "{done}");
    let variants = done["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 5);
    for var in variants {
        let r = s.http.get(var["url"].as_str().unwrap()).send().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let cache = r.headers()["cache-control"].to_str().unwrap().to_string();
        assert!(
            cache.contains("immutable") && cache.starts_with("private"),
            "{cache}"
        );
        assert_eq!(r.headers()["content-type"], var["mime"].as_str().unwrap());
        let body = r.bytes().unwrap();
        assert!(!has_gps(&body));
        let img = decode(&body);
        assert_eq!(
            (img.width(), img.height()),
            (
                var["width"].as_u64().unwrap() as u32,
                var["height"].as_u64().unwrap() as u32
            )
        );
        if var["name"] == "optimised" {
            assert!(body.len() <= 20 * 1024, "{}", body.len());
        }
    }
    // Ordinary signed links (not variants) stay without `immutable`.
    let link: Value = s
        .http
        .post(format!("{}/api/files/{id}/link", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = s.http.get(link["url"].as_str().unwrap()).send().unwrap();
    assert!(
        !r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    // Another user's image is not found; no token is 401.
    let r = s
        .get(&format!("/api/images/{id}/variants"), Some(&s.bob))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .get(&format!("/api/images/{id}/variants"), None)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post_image(
        &s.http,
        &s.url,
        &s.alice,
        "x.jpg",
        &bytes,
        &[("max_kb", "lots")],
    );
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// Uploads a bomb and a truncated JPEG to a real server process (422 each, nothing stored,
/// the server's peak memory bounded), then ten photos; kills the server with SIGKILL while
/// their jobs are queued, restarts it, and checks that every job finished exactly once.
#[test]
fn restart_after_sigkill_finishes_every_job_exactly_once() {
    let tmp = TempStore::new();
    let mut server = ServeProcess::start(&tmp.path(), None);
    let client = Client::new();
    let (url, token) = (server.url.clone(), server.token.clone());

    let bomb = bomb_png(50_000, 50_000);
    assert_eq!(
        refused(post_image(&client, &url, &token, "bomb.png", &bomb, &[])),
        "image_too_large"
    );
    let jpeg = photo("branches.jpg");
    let cut = &jpeg[..jpeg.len() / 2];
    assert_eq!(
        refused(post_image(&client, &url, &token, "cut.jpg", cut, &[])),
        "image_invalid"
    );
    let peak = server.peak_rss_bytes();
    assert!(peak < 128 << 20, "server peak RSS {} MiB", peak >> 20);
    let listed: Value = client
        .get(format!("{url}/api/files"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["files"].as_array().unwrap().len(), 0, "{listed}");

    let photos: Vec<_> = photos().into_iter().take(10).collect();
    let mut ids = Vec::new();
    for (name, bytes) in &photos {
        let r = post_image(&client, &url, &token, name, bytes, &[]);
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().unwrap();
        ids.push(v["files"][0]["file"]["id"].as_str().unwrap().to_string());
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    drop(server);
    // The kill really left work queued: each job makes five variants, far slower than an
    // upload, so the two workers were well behind the ten uploads.
    {
        let store = Store::open_read_only(tmp.path(), Config::default()).unwrap();
        let unfinished = ids
            .iter()
            .filter(|id| store.image_status(id.parse().unwrap()).unwrap().status != JobStatus::Done)
            .count();
        assert!(unfinished > 0, "every job finished before the kill");
        eprintln!("{unfinished} of {} jobs unfinished at the kill", ids.len());
    }

    let server = ServeProcess::start(&tmp.path(), Some(token.clone()));
    for id in &ids {
        let v = wait_done(&client, &server.url, &token, id);
        assert_eq!(v["status"], "done", "{v}");
        // One run, or two when the kill interrupted it.
        let attempts = v["attempts"].as_u64().unwrap();
        assert!((1..=2).contains(&attempts), "{v}");
        assert_eq!(v["variants"].as_array().unwrap().len(), 5);
    }
    drop(server);
    let store = Store::open_read_only(tmp.path(), Config::default()).unwrap();
    let all = store
        .list(&ListQuery {
            include_deleted: true,
            limit: Some(1000),
            ..Default::default()
        })
        .unwrap()
        .files;
    // Ten originals and five variants each: no variant stored twice, none lost.
    assert_eq!(all.len(), photos.len() * 6);
    for f in &all {
        assert_eq!(store.versions(f.id).unwrap().len(), 1, "{}", f.display_name);
    }
}

#[test]
fn variants_follow_their_original_through_delete_and_undelete() {
    let t = TempStore::new();
    let store = t.create();
    let r = store
        .put_image(
            &photo("flowers.png")[..],
            &named("f.png"),
            &ImageOptions::default(),
        )
        .unwrap();
    store.run_pending_image_jobs().unwrap();
    let variants = store.image_status(r.file.id).unwrap().variants;
    store.delete(r.file.id).unwrap();
    assert!(variants.iter().all(|v| store.stat(v.file).unwrap().deleted));
    store.undelete(r.file.id).unwrap();
    assert!(
        variants
            .iter()
            .all(|v| !store.stat(v.file).unwrap().deleted)
    );
}

#[test]
fn cli_probe_variants_and_optimize() {
    let cli = crate::cli::Cli::new();
    let id = {
        let store = Store::create(cli.store(), Config::default()).unwrap();
        store
            .put_image(
                &photo("orientation_6.jpg")[..],
                &named("o.jpg"),
                &ImageOptions::default(),
            )
            .unwrap()
            .file
            .id
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images/gps_sample1.jpg");
    let facts = cli.json(&["image", "probe", path.to_str().unwrap()]);
    assert_eq!(
        (facts["width"].as_u64(), facts["gps"].as_bool()),
        (Some(500), Some(true))
    );
    let facts = cli.json(&["image", "probe", &id.to_string()]);
    assert_eq!(
        (facts["width"].as_u64(), facts["orientation"].as_u64()),
        (Some(50), Some(6))
    );
    let pending = cli.json(&["image", "variants", &id.to_string()]);
    assert_eq!(pending["status"], "pending");
    let done = cli.json(&["image", "variants", &id.to_string(), "--wait"]);
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_u64()),
        (Some("done"), Some(1))
    );
    assert_eq!(done["variants"].as_array().unwrap().len(), 5);
    let out = cli.path("small.webp");
    let flowers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images/flowers.png");
    let r = cli.json(&[
        "image",
        "optimize",
        flowers.to_str().unwrap(),
        "--max-kb",
        "15",
        "-o",
        out.to_str().unwrap(),
    ]);
    let written = std::fs::read(&out).unwrap();
    assert_eq!(r["bytes"].as_u64(), Some(written.len() as u64));
    assert!(r["target_met"] == true && written.len() <= 15 * 1024, "{r}");
    assert!(r["quality"].as_f64().unwrap() < 90.0);
    assert_eq!(decode(&written).dimensions(), (600, 400));
}
