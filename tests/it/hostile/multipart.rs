//! Multipart bodies that attack the parser and the limits of `POST /api/files`: a part header
//! that never ends (768 MiB, with a Content-Length and chunked), headers just under and over
//! 8 KiB, 10,000 one-byte parts, a 101st part, many and huge text fields, bulky framing,
//! hostile file names, bodies cut short, lying and absurd Content-Lengths, bad boundaries.
//! Each asserts the status, and that nothing (or exactly what should be) is stored.

use reqwest::StatusCode;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::Value;

use super::wire::{CLOSE, chunked, exchange, file_part, pieces, post_head, send_and_close};
use crate::common::{TempStore, random_bytes};
use crate::http::{ServeProcess, Service};

const MIB: u64 = 1 << 20;

/// The bytes of `parts`, as one piece.
fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A file part whose header block (from the end of its delimiter to its content) is exactly
/// `size` bytes, padded with an `X-Pad` header.
fn part_with_head_of(size: usize, name: &str) -> String {
    let start = format!(
        "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nX-Pad: "
    );
    let pad = size - start.len() - 4;
    format!("--B{start}{}\r\n\r\n", "a".repeat(pad))
}

fn files_of(s: &Service, owner: &str) -> usize {
    s.file_count(owner)
}

/// Nothing stored for alice, no reservation left behind, usage as it was.
fn nothing_stored(s: &Service, used_before: u64) {
    assert_eq!(files_of(s, "alice"), 0, "a refused request stored a file");
    assert_eq!(s.store.stats().unwrap().files, 0);
    let q = s.store.quota_status("alice").unwrap();
    assert_eq!(q.used, used_before, "quota usage changed");
    assert_eq!(
        s.store.quota_reservations().entries,
        0,
        "a reservation outlived its request"
    );
}

/// A service where alice has a quota, so every upload of hers is admitted by reservation.
fn service_with_quota() -> Service {
    let s = Service::start();
    s.store.quota_set("alice", Some(1 << 30)).unwrap();
    s
}

fn bomb(chunked_body: bool) {
    const BOMB: u64 = 768 * MIB;
    const PIECE: usize = 64 << 10;
    let tmp = TempStore::new();
    let server = ServeProcess::start(&tmp.path(), None);
    let client = reqwest::blocking::Client::new();
    let upload = |name: &str| {
        client
            .post(format!("{}/api/files", server.url))
            .bearer_auth(&server.token)
            .multipart(Form::new().part(
                "file",
                Part::bytes(b"warm".to_vec()).file_name(name.to_string()),
            ))
            .send()
            .unwrap()
            .status()
    };
    // What a first upload allocates belongs in the baseline.
    assert_eq!(upload("warm.txt"), StatusCode::CREATED);
    let before = server.peak_rss_bytes();

    let prefix =
        "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bomb.txt\"\r\nX-Pad: "
            .as_bytes()
            .to_vec();
    let suffix = b"\r\n\r\nx\r\n--B--\r\n".to_vec();
    let length = prefix.len() as u64 + BOMB + suffix.len() as u64;
    let pieces = std::iter::once(prefix)
        .chain((0..BOMB / PIECE as u64).map(|_| vec![b'a'; PIECE]))
        .chain(std::iter::once(suffix));
    let answer = if chunked_body {
        let head = post_head("/api/files", &server.token, None, "");
        exchange(&server.url, &head, chunked(pieces))
    } else {
        let head = post_head("/api/files", &server.token, Some(length), "");
        exchange(&server.url, &head, pieces)
    };
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert_eq!(answer.code(), "part_header_too_large");
    assert!(answer.body["message"].is_string());
    // Answered long before the bomb was through: the server stopped reading at 8 KiB (plus
    // what sockets and a refused request's drain hold).
    assert!(
        answer.sent < 64 * MIB,
        "{} MiB of the 768 MiB header went out before the answer",
        answer.sent / MIB
    );
    let after = server.peak_rss_bytes();
    assert!(
        after < before + 64 * MIB,
        "server peak RSS grew from {} MiB to {} MiB",
        before / MIB,
        after / MIB
    );
    // Only the warm-up file is stored, and the server still serves.
    let v: Value = client
        .get(format!("{}/api/files", server.url))
        .bearer_auth(&server.token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(upload("after.txt"), StatusCode::CREATED);
}

#[test]
fn part_header_of_768_mib_with_content_length_is_400_with_flat_memory() {
    bomb(false);
}

#[test]
fn part_header_of_768_mib_chunked_is_400_with_flat_memory() {
    bomb(true);
}

#[test]
fn part_header_just_under_8_kib_is_stored() {
    let s = Service::start();
    let b = body(&[
        part_with_head_of(8000, "under.txt").as_bytes(),
        b"under the limit\r\n",
        CLOSE.as_bytes(),
    ]);
    let head = post_head("/api/files", &s.alice, Some(b.len() as u64), "");
    let a = exchange(&s.url, &head, std::iter::once(b));
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["files"][0]["file"]["size"], 15);
    assert_eq!(files_of(&s, "alice"), 1);
}

#[test]
fn part_header_just_over_8_kib_is_400_and_stores_nothing() {
    let s = service_with_quota();
    // A good file first: the request fails whole, so it is not stored either.
    let b = body(&[
        file_part("first.txt").as_bytes(),
        b"fine\r\n",
        part_with_head_of(8193, "over.txt").as_bytes(),
        b"over the limit\r\n",
        CLOSE.as_bytes(),
    ]);
    let head = post_head("/api/files", &s.alice, Some(b.len() as u64), "");
    let a = exchange(&s.url, &head, std::iter::once(b.clone()));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "part_header_too_large");
    // Chunked, the same.
    let head = post_head("/api/files", &s.alice, None, "");
    let a = exchange(&s.url, &head, chunked(pieces(&b, 1000)));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "part_header_too_large");
    nothing_stored(&s, 0);
}

fn one_byte_parts(n: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..n {
        b.extend_from_slice(file_part(&format!("p{i}.txt")).as_bytes());
        b.extend_from_slice(b"x\r\n");
    }
    b.extend_from_slice(CLOSE.as_bytes());
    b
}

#[test]
fn ten_thousand_one_byte_parts_are_413_and_store_nothing() {
    let s = service_with_quota();
    let b = one_byte_parts(10_000);
    let head = post_head("/api/files", &s.alice, Some(b.len() as u64), "");
    let a = exchange(&s.url, &head, pieces(&b, 64 << 10));
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.code(), "too_many_parts");
    nothing_stored(&s, 0);
}

#[test]
fn ten_thousand_one_byte_parts_chunked_are_413_and_store_nothing() {
    let s = service_with_quota();
    let b = one_byte_parts(10_000);
    let head = post_head("/api/files", &s.alice, None, "");
    let a = exchange(&s.url, &head, chunked(pieces(&b, 64 << 10)));
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.code(), "too_many_parts");
    nothing_stored(&s, 0);
}

#[test]
fn a_101st_file_part_is_413_and_the_first_100_are_not_stored() {
    let s = service_with_quota();
    let form = |n: usize| {
        (0..n).fold(Form::new(), |f, i| {
            f.part(
                "file",
                Part::bytes(format!("file {i}").into_bytes()).file_name(format!("f{i}.txt")),
            )
        })
    };
    let r = s.upload(&s.alice, form(101));
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"], "too_many_parts", "{v}");
    nothing_stored(&s, 0);
    // The limit is exactly 100 (and configurable).
    let r = s.upload(&s.alice, form(100));
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(files_of(&s, "alice"), 100);
    let s = Service::with(|c| c.uploads.max_parts = 2);
    let r = s.upload(&s.alice, form(3));
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(files_of(&s, "alice"), 0);
}

#[test]
fn too_many_text_fields_are_413_and_store_nothing() {
    let s = service_with_quota();
    let form = |n: usize| {
        (0..n).fold(
            Form::new().part("file", Part::bytes(b"a file".to_vec()).file_name("f.txt")),
            |f, i| f.text(format!("field{i}"), "v"),
        )
    };
    let r = s.upload(&s.alice, form(301));
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"], "too_many_fields", "{v}");
    nothing_stored(&s, 0);
    let r = s.upload(&s.alice, form(300));
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(files_of(&s, "alice"), 1);
}

#[test]
fn a_huge_text_field_is_413_and_stores_nothing() {
    let s = service_with_quota();
    let form = |len: usize| {
        Form::new()
            .part("file", Part::bytes(b"a file".to_vec()).file_name("f.txt"))
            .text("note", "n".repeat(len))
            .part("file", Part::bytes(b"another".to_vec()).file_name("g.txt"))
    };
    // 64 MiB of text after a file: refused once 4 KiB of it is in, without reading on.
    let prefix = body(&[
        file_part("f.txt").as_bytes(),
        b"a file\r\n--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n",
    ]);
    let field = (0..1024).map(|_| vec![b'n'; 64 << 10]);
    let head = post_head(
        "/api/files",
        &s.alice,
        Some(prefix.len() as u64 + 64 * MIB),
        "",
    );
    let a = exchange(&s.url, &head, std::iter::once(prefix).chain(field));
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.code(), "field_too_large");
    assert!(
        a.sent < 32 * MIB,
        "{} MiB went out before the answer",
        a.sent / MIB
    );
    nothing_stored(&s, 0);
    let r = s.upload(&s.alice, form(4097));
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    nothing_stored(&s, 0);
    // 4 KiB is the limit.
    let r = s.upload(&s.alice, form(4096));
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(files_of(&s, "alice"), 2);
}

#[test]
fn bulky_part_headers_pass_the_form_overhead_limit_and_store_nothing() {
    let s = service_with_quota();
    // Each part's header block is under 8 KiB, and there are fewer than 100 parts, but
    // together the framing passes max_form_overhead (256 KiB).
    let mut b = Vec::new();
    for i in 0..60 {
        b.extend_from_slice(part_with_head_of(6000, &format!("f{i}.txt")).as_bytes());
        b.extend_from_slice(b"content\r\n");
    }
    b.extend_from_slice(CLOSE.as_bytes());
    let head = post_head("/api/files", &s.alice, Some(b.len() as u64), "");
    let a = exchange(&s.url, &head, std::iter::once(b));
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.code(), "form_too_large");
    nothing_stored(&s, 0);
}

#[test]
fn hostile_file_names_are_defused_and_never_become_paths() {
    let s = Service::start();
    let names = [
        "../../../../etc/passwd",
        "..",
        "C:\\Windows\\System32\\evil.txt",
        "%2e%2e%2fescape.txt",
        "a/../../b.txt",
        "name\"with\"quotes.txt",
        &format!("{}.txt", "n".repeat(4000)),
    ];
    let form = names.iter().enumerate().fold(Form::new(), |f, (i, n)| {
        f.part(
            "file",
            Part::bytes(format!("content {i}").into_bytes()).file_name(n.to_string()),
        )
    });
    let r = s.upload(&s.alice, form);
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), names.len());
    for f in files {
        let shown = f["file"]["display_name"].as_str().unwrap();
        assert!(
            !shown.contains('/')
                && !shown.contains('\\')
                && !shown.contains("..")
                && !shown.is_empty(),
            "{shown:?}"
        );
        assert!(shown.len() <= 255, "{} bytes", shown.len());
    }
    // Nothing the client named exists on disk: the store holds only its own names.
    let mut stack = vec![s.store.dir().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            assert!(
                !["passwd", "evil.txt", "b.txt", "escape.txt"]
                    .iter()
                    .any(|n| name.contains(n)),
                "{name} in {}",
                dir.display()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    // A control character in the part's headers makes the body malformed: 400, nothing more
    // stored.
    let b = body(&[
        file_part("nul\u{0}.txt").as_bytes(),
        b"x\r\n",
        CLOSE.as_bytes(),
    ]);
    let head = post_head("/api/files", &s.alice, Some(b.len() as u64), "");
    let a = exchange(&s.url, &head, std::iter::once(b));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "bad_multipart");
    assert_eq!(files_of(&s, "alice"), names.len());
}

#[test]
fn a_body_cut_mid_part_stores_nothing() {
    let s = service_with_quota();
    let full = body(&[
        file_part("one.txt").as_bytes(),
        b"complete\r\n",
        file_part("two.bin").as_bytes(),
        &random_bytes(1, 300_000),
        b"\r\n",
        CLOSE.as_bytes(),
    ]);
    let cut = &full[..full.len() - 150_000];
    // The declared length is the whole body, but the client stops half-way through the
    // second file.
    let head = post_head("/api/files", &s.alice, Some(full.len() as u64), "");
    let a = send_and_close(&s.url, &head, cut);
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "bad_multipart");
    nothing_stored(&s, 0);
    // Chunked, properly ended, but the multipart body stops mid-part.
    let head = post_head("/api/files", &s.alice, None, "");
    let a = exchange(&s.url, &head, chunked(pieces(cut, 32 << 10)));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "bad_multipart");
    nothing_stored(&s, 0);
}

#[test]
fn a_chunked_body_over_max_upload_is_413_and_stores_nothing() {
    let s = Service::with(|c| c.uploads.max_upload = bytesize::ByteSize::kib(512));
    s.store.quota_set("alice", Some(1 << 30)).unwrap();
    let b = body(&[
        file_part("small.txt").as_bytes(),
        b"small\r\n",
        file_part("big.bin").as_bytes(),
        &random_bytes(2, 700 << 10),
        b"\r\n",
        CLOSE.as_bytes(),
    ]);
    let head = post_head("/api/files", &s.alice, None, "");
    let a = exchange(&s.url, &head, chunked(pieces(&b, 32 << 10)));
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.code(), "too_large");
    nothing_stored(&s, 0);
}

#[test]
fn content_length_smaller_than_the_body_stores_nothing() {
    let s = service_with_quota();
    let b = body(&[
        file_part("one.txt").as_bytes(),
        b"first file\r\n",
        file_part("two.txt").as_bytes(),
        b"second file, cut by the declared length\r\n",
        CLOSE.as_bytes(),
    ]);
    // The server reads only what was declared: the second part never ends.
    let declared = b.len() as u64 - 40;
    let head = post_head("/api/files", &s.alice, Some(declared), "");
    let a = exchange(&s.url, &head, std::iter::once(b));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "bad_multipart");
    nothing_stored(&s, 0);
}

#[test]
fn content_length_larger_than_the_body_stores_nothing() {
    let s = service_with_quota();
    // A complete multipart body, but fewer bytes than declared, then the client stops: the
    // request never ended, so nothing of it counts.
    let b = body(&[
        file_part("one.txt").as_bytes(),
        b"complete file\r\n",
        CLOSE.as_bytes(),
    ]);
    let head = post_head("/api/files", &s.alice, Some(b.len() as u64 + 1000), "");
    let a = send_and_close(&s.url, &head, &b);
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "bad_multipart");
    nothing_stored(&s, 0);
}

#[test]
fn negative_and_huge_content_lengths_are_refused_before_the_body() {
    let s = Service::with(|c| c.uploads.max_upload = bytesize::ByteSize::mib(1));
    let b = body(&[file_part("x.txt").as_bytes(), b"x\r\n", CLOSE.as_bytes()]);
    for (length, status) in [
        ("-1", 400),
        ("18446744073709551616", 400),
        ("1e9", 400),
        // hyper's own limit (u64::MAX is its marker for "no length"): 431.
        ("18446744073709551615", 431),
        ("18446744073709551613", 413),
        ("1048577", 413),
    ] {
        let head = format!(
            "POST /api/files HTTP/1.1\r\nHost: tessera\r\nAuthorization: Bearer {}\r\n\
             Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {length}\r\n\r\n",
            s.alice
        );
        let a = exchange(&s.url, &head, std::iter::once(b.clone()));
        assert_eq!(a.status, status, "Content-Length {length}: {:?}", a.body);
        if status == 413 {
            assert_eq!(a.code(), "too_large");
        }
    }
    assert_eq!(files_of(&s, "alice"), 0);
}

#[test]
fn bad_and_lying_boundaries_are_400_and_nested_ones_are_just_content() {
    let s = service_with_quota();
    let good = body(&[file_part("a.txt").as_bytes(), b"a\r\n", CLOSE.as_bytes()]);
    let post = |content_type: &str, b: &[u8]| {
        let head = format!(
            "POST /api/files HTTP/1.1\r\nHost: tessera\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            s.alice,
            b.len()
        );
        exchange(&s.url, &head, std::iter::once(b.to_vec()))
    };
    // No boundary, an empty one, one longer than RFC 2046's 70 characters.
    for ct in [
        "multipart/form-data".to_string(),
        "multipart/form-data; boundary=\"\"".to_string(),
        format!("multipart/form-data; boundary={}", "B".repeat(71)),
        "text/plain; boundary=B".to_string(),
    ] {
        let a = post(&ct, &good);
        assert_eq!(a.status, 400, "{ct}: {:?}", a.body);
        assert_eq!(a.code(), "bad_multipart", "{ct}");
    }
    // The body uses another boundary than the one declared.
    let a = post("multipart/form-data; boundary=C", &good);
    assert_eq!(a.status, 400, "{:?}", a.body);
    // The boundary followed by garbage after a complete first file.
    let b = body(&[
        file_part("a.txt").as_bytes(),
        b"a\r\n--Bgarbage\r\n",
        CLOSE.as_bytes(),
    ]);
    let a = post("multipart/form-data; boundary=B", &b);
    assert_eq!(a.status, 400, "{:?}", a.body);
    nothing_stored(&s, 0);
    // A multipart document inside a file, with its own boundary: it is content, stored byte
    // for byte.
    let inner =
        b"--INNER\r\nContent-Disposition: form-data; name=\"inner\"\r\n\r\nvalue\r\n--INNER--\r\n";
    let b = body(&[
        file_part("nested.txt").as_bytes(),
        inner,
        b"\r\n",
        CLOSE.as_bytes(),
    ]);
    let a = post("multipart/form-data; boundary=B", &b);
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = a.body["files"][0]["file"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = s
        .get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(&stored[..], &inner[..]);
}

#[test]
fn a_preamble_bomb_is_400_without_reading_on() {
    let s = Service::start();
    // 64 MiB before any boundary.
    let pieces = (0..1024).map(|_| vec![b'p'; 64 << 10]);
    let head = post_head("/api/files", &s.alice, Some(64 * MIB), "");
    let a = exchange(&s.url, &head, pieces);
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "bad_multipart");
    assert!(
        a.sent < 32 * MIB,
        "{} MiB went out before the answer",
        a.sent / MIB
    );
    assert_eq!(files_of(&s, "alice"), 0);
}
