//! The HTTP service over a real socket, with a real HTTP client (reqwest).

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use reqwest::StatusCode;
use reqwest::blocking::multipart::{Form, Part};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;
use tessera::config::Settings;
use tessera::http::Server;
use tessera::pack::storage::PackStorage;
use tessera::users::NewUser;
use tessera::{Config, Store};

use crate::common::{TempStore, TestClock, random_bytes, text_bytes};

/// A [`Service`] that was stopped: its store's directory, clock and users' tokens.
pub struct Stopped {
    pub tmp: TempStore,
    pub clock: Arc<TestClock>,
    pub admin: String,
    pub alice: String,
    pub bob: String,
}

/// A service on a free loopback port, with an admin and two users.
pub struct Service {
    pub url: String,
    pub admin: String,
    pub alice: String,
    pub bob: String,
    pub store: Store,
    pub clock: Arc<TestClock>,
    pub http: Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
    _tmp: TempStore,
}

impl Service {
    pub fn start() -> Service {
        Service::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut Settings)) -> Service {
        Service::with_config(tweak, |_| {})
    }

    /// [`Service::with`], with a last say on the engine configuration (a cold tier, say).
    pub fn with_config(
        tweak: impl FnOnce(&mut Settings),
        tweak_config: impl FnOnce(&mut Config),
    ) -> Service {
        Service::with_storage(tweak, tweak_config, |_| None)
    }

    /// [`Service::with_config`] over a pack storage of the test's making (a fault injector
    /// wrapping the real one, say), given the store's directory.
    pub fn with_storage(
        tweak: impl FnOnce(&mut Settings),
        tweak_config: impl FnOnce(&mut Config),
        storage: impl FnOnce(&std::path::Path) -> Option<Arc<dyn PackStorage>>,
    ) -> Service {
        let tmp = TempStore::new();
        let mut settings = Settings::default();
        settings.server.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut settings);
        let clock = Arc::new(TestClock(AtomicI64::new(1_800_000_000_000)));
        let mut config = Config {
            clock: clock.clone(),
            ..settings.store_config()
        };
        tweak_config(&mut config);
        let store = match storage(&tmp.path()) {
            None => Store::create(tmp.path(), config).unwrap(),
            Some(storage) => {
                drop(Store::create(tmp.path(), config.clone()).unwrap());
                Store::open_with_storage(tmp.path(), config, storage).unwrap()
            }
        };
        let (_, admin) = store
            .user_add(
                "root",
                NewUser {
                    admin: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let (_, alice) = store.user_add("alice", NewUser::default()).unwrap();
        let (_, bob) = store.user_add("bob", NewUser::default()).unwrap();
        Service::serve(
            store,
            settings,
            Stopped {
                tmp,
                clock,
                admin,
                alice,
                bob,
            },
        )
    }

    /// Stops the server and closes the store, keeping its directory, clock and tokens for
    /// [`Service::restart`] (after losing the index and a `recover`, say).
    pub fn stop(mut self) -> Stopped {
        let tmp = std::mem::replace(&mut self._tmp, TempStore::new());
        let stopped = Stopped {
            tmp,
            clock: self.clock.clone(),
            admin: self.admin.clone(),
            alice: self.alice.clone(),
            bob: self.bob.clone(),
        };
        // Shuts the server down; the store closes with the last handle.
        drop(self);
        stopped
    }

    /// Serves a stopped service's store again, with the settings `tweak` makes.
    pub fn restart(stopped: Stopped, tweak: impl FnOnce(&mut Settings)) -> Service {
        let mut settings = Settings::default();
        settings.server.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut settings);
        let config = Config {
            clock: stopped.clock.clone(),
            ..settings.store_config()
        };
        let store = Store::open(stopped.tmp.path(), config).unwrap();
        Service::serve(store, settings, stopped)
    }

    fn serve(store: Store, settings: Settings, s: Stopped) -> Service {
        let Stopped {
            tmp,
            clock,
            admin,
            alice,
            bob,
        } = s;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(Server::bind(store.clone(), settings)).unwrap();
        let url = format!("http://{}", server.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(server.run(async {
            let _ = rx.await;
        }));
        Service {
            url,
            admin,
            alice,
            bob,
            store,
            clock,
            http: Client::builder().build().unwrap(),
            shutdown: Some(tx),
            rt: Some(rt),
            _tmp: tmp,
        }
    }

    /// Tells the server to stop, as Ctrl-C does: it stops accepting and finishes the requests
    /// in flight.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> RequestBuilder {
        let r = self.http.get(format!("{}{path}", self.url));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub fn upload(&self, token: &str, form: Form) -> Response {
        self.http
            .post(format!("{}/api/files", self.url))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .unwrap()
    }

    /// Uploads one file and returns its id.
    pub fn put(&self, token: &str, name: &str, data: &[u8]) -> String {
        let r = self.upload(
            token,
            Form::new().part(
                "file",
                Part::bytes(data.to_vec()).file_name(name.to_string()),
            ),
        );
        let status = r.status();
        let v: Value = r.json().unwrap();
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["files"][0]["file"]["id"].as_str().unwrap().to_string()
    }

    /// `POST /api/images` (multipart, as `POST /api/files`).
    pub fn upload_images(&self, token: &str, form: Form) -> Response {
        self.http
            .post(format!("{}/api/images", self.url))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .unwrap()
    }

    /// A tus request to `path` (or a full URL), with `Tus-Resumable: 1.0.0` and `token`.
    pub fn tus(&self, method: reqwest::Method, path: &str, token: &str) -> RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.url)
        };
        self.http
            .request(method, url)
            .header("Tus-Resumable", "1.0.0")
            .bearer_auth(token)
    }

    /// What the store holds, every owner, deleted files included: (files, versions).
    pub fn stored(&self) -> (u64, u64) {
        let s = self.store.stats().unwrap();
        (s.files, s.versions)
    }

    pub fn file_count(&self, owner: &str) -> usize {
        self.store
            .list(&tessera::ListQuery {
                owner: Some(owner.into()),
                include_deleted: true,
                ..Default::default()
            })
            .unwrap()
            .files
            .len()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// Sends `head` then `body` on a fresh connection without finishing the request, and reads the
/// answer the server gives anyway: (status, body).
fn raw_exchange(url: &str, head: &[u8], body: &[u8]) -> (u16, String) {
    use std::io::Write;
    let addr = url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    c.write_all(head).unwrap();
    // The server may answer and close before it has read all of this.
    let _ = c.write_all(body);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((h, b)) = text.split_once("\r\n\r\n")
            && let Some(len) = h.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            && b.len() >= len.parse::<usize>().unwrap()
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json(r: Response) -> Value {
    r.json().unwrap()
}

fn error_code(r: Response) -> String {
    let v = json(r);
    assert!(v["message"].is_string(), "error body without message: {v}");
    v["error"].as_str().unwrap().to_string()
}

const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

/// A Windows executable's header.
fn exe() -> Vec<u8> {
    let mut v = vec![0u8; 0x200];
    v[..2].copy_from_slice(b"MZ");
    v[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    v[0x80..0x84].copy_from_slice(b"PE\0\0");
    v[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
    v[0x96..0x98].copy_from_slice(&0x0022u16.to_le_bytes());
    v
}

#[test]
fn upload_download_head_meta_round_trip() {
    let s = Service::start();
    let data = text_bytes(1, 700_000);
    let id = s.put(&s.alice, "notes.txt", &data);

    let r = s
        .get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["etag"], format!("\"{}\"", blake3::hash(&data).to_hex()));
    assert_eq!(h["content-length"], data.len().to_string());
    assert!(h["cache-control"].to_str().unwrap().starts_with("private"));
    assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());

    let r = s
        .http
        .head(format!("{}/api/files/{id}", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], data.len().to_string());

    let meta = json(
        s.get(&format!("/api/files/{id}/meta"), Some(&s.alice))
            .send()
            .unwrap(),
    );
    assert_eq!(meta["size"], data.len() as u64);
    assert_eq!(meta["owner"], "alice");
    assert_eq!(meta["category"], "documents");
    assert_eq!(meta["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn ranges_and_conditional_requests() {
    let s = Service::start();
    let data = random_bytes(2, 300_000);
    let id = s.put(&s.alice, "blob.bin", &data);
    let path = format!("/api/files/{id}");

    let r = s
        .get(&path, Some(&s.alice))
        .header("range", "bytes=1000-1999")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", data.len())
    );
    assert_eq!(r.bytes().unwrap().as_ref(), &data[1000..2000]);

    let r = s
        .get(&path, Some(&s.alice))
        .header("range", "bytes=-10")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[data.len() - 10..]);

    let r = s
        .get(&path, Some(&s.alice))
        .header("range", "bytes=300000-")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */300000");
    assert_eq!(error_code(r), "range_not_satisfiable");

    let etag = s.get(&path, Some(&s.alice)).send().unwrap().headers()["etag"].clone();
    let r = s
        .get(&path, Some(&s.alice))
        .header("if-none-match", etag.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag);
    assert!(r.headers().contains_key("cache-control"));
    assert!(r.bytes().unwrap().is_empty());

    let r = s
        .get(&path, Some(&s.alice))
        .header("if-none-match", "\"other\"")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .get(&path, Some(&s.alice))
        .header("if-match", "\"other\"")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // A range for another representation is ignored: the whole file comes back.
    let r = s
        .get(&path, Some(&s.alice))
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().unwrap().len(), data.len());
}

#[test]
fn multi_file_upload_fails_only_the_bad_file() {
    let s = Service::start();
    let form = Form::new()
        .text("category", "images")
        .part(
            "file",
            Part::bytes(PNG.to_vec())
                .file_name("dot.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .part(
            "file",
            Part::bytes(exe())
                .file_name("holiday.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        )
        .part("file", Part::bytes(PNG.to_vec()).file_name("dot2.png"));
    let r = s.upload(&s.alice, form);
    assert_eq!(r.status(), StatusCode::MULTI_STATUS);
    let v = json(r);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    assert_eq!(files[0]["ok"], true);
    assert_eq!(files[0]["file"]["category"], "images");
    assert_eq!(files[1]["ok"], false);
    assert_eq!(files[1]["error"], "type_mismatch");
    assert_eq!(files[2]["ok"], true);
    assert_eq!(
        s.file_count("alice"),
        2,
        "the renamed executable must not be stored"
    );
}

#[test]
fn hostile_uploads_get_the_right_status_and_store_nothing() {
    let s = Service::with(|c| c.uploads.max_upload = bytesize::ByteSize::kib(512));

    // Path tricks and control characters in names are defused, not refused.
    let id = s.put(&s.alice, "../../etc/passwd", b"root:x:0:0");
    let meta = json(
        s.get(&format!("/api/files/{id}/meta"), Some(&s.alice))
            .send()
            .unwrap(),
    );
    assert_eq!(meta["display_name"], "passwd");
    // A tab is the one control character HTTP lets through in a header; a bidi override hides
    // an extension. (Other control bytes in a part's headers make it malformed: see below.)
    let id = s.put(&s.alice, "bad\tname\u{202e}txt.exe.txt", b"x");
    let meta = json(
        s.get(&format!("/api/files/{id}/meta"), Some(&s.alice))
            .send()
            .unwrap(),
    );
    assert_eq!(meta["display_name"], "badnametxt.exe.txt");
    let before = s.file_count("alice");

    // An executable renamed .jpg.
    let r = s.upload(
        &s.alice,
        Form::new().part("f", Part::bytes(exe()).file_name("cat.jpg")),
    );
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(r), "type_mismatch");
    // A PNG declared as a PDF.
    let r = s.upload(
        &s.alice,
        Form::new().part(
            "f",
            Part::bytes(PNG.to_vec())
                .file_name("report.pdf")
                .mime_str("application/pdf")
                .unwrap(),
        ),
    );
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Over the limit with a declared length: refused before the body is read. (Raw TCP: a
    // client library would report the early answer as a broken pipe while it still sends.)
    let part = |name: &str| {
        format!("--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{name}\"\r\n\r\n")
    };
    let head = format!(
        "POST /api/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {}\r\n\r\n{}",
        s.alice,
        600 << 10,
        part("big.bin")
    );
    let (status, body) = raw_exchange(&s.url, head.as_bytes(), &[]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"too_large\""), "{body}");
    // Over the limit without one (a chunked body): stopped while streaming.
    let head = format!(
        "POST /api/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=B\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.alice
    );
    let mut chunks = Vec::new();
    let first = part("big2.bin");
    chunks.extend_from_slice(format!("{:x}\r\n{first}\r\n", first.len()).as_bytes());
    for i in 0..20u64 {
        let data = random_bytes(100 + i, 32 << 10);
        chunks.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        chunks.extend_from_slice(&data);
        chunks.extend_from_slice(b"\r\n");
    }
    let (status, body) = raw_exchange(&s.url, head.as_bytes(), &chunks);
    assert_eq!(status, 413, "{body}");
    // A malformed multipart body.
    let r = s
        .http
        .post(format!("{}/api/files", s.url))
        .bearer_auth(&s.alice)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\nhalf a file and no closing boundary")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r), "bad_multipart");
    let r = s
        .http
        .post(format!("{}/api/files", s.url))
        .bearer_auth(&s.alice)
        .header("content-type", "text/plain")
        .body("not multipart")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        s.file_count("alice"),
        before,
        "a refused upload stored something"
    );
    assert_eq!(s.store.stats().unwrap().files as usize, before);
}

#[test]
fn tokens_and_ownership_are_enforced() {
    let s = Service::start();
    let id = s.put(&s.alice, "secret.txt", b"alice only");
    let path = format!("/api/files/{id}");

    // Without a token a private file is not found, like a missing one; a wrong token is 401.
    let r = s.get(&path, None).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r), "not_found");
    let r = s.get(&path, Some("tsr_not-a-real-token")).send().unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s.get("/api/files", None).send().unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Refused from the headers alone; the body is drained so the client reads the answer.
    let r = s.upload(
        "garbage",
        Form::new().part(
            "f",
            Part::bytes(random_bytes(6, 300_000)).file_name("x.txt"),
        ),
    );
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Bob cannot tell Alice's private file from a file that does not exist.
    for p in [
        path.clone(),
        format!("{path}/meta"),
        format!("{path}/versions"),
    ] {
        let r = s.get(&p, Some(&s.bob)).send().unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
    }
    let r = s
        .http
        .delete(format!("{}{path}", s.url))
        .bearer_auth(&s.bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .http
        .post(format!("{}{path}/link", s.url))
        .bearer_auth(&s.bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let bobs = json(s.get("/api/files", Some(&s.bob)).send().unwrap());
    assert_eq!(bobs["files"].as_array().unwrap().len(), 0);
    // An admin sees it.
    let r = s.get(&path, Some(&s.admin)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A public file is readable by anyone, without a token too.
    let r = s.upload(
        &s.alice,
        Form::new()
            .text("public", "true")
            .part("f", Part::bytes(b"for all".to_vec()).file_name("open.txt")),
    );
    let pid = json(r)["files"][0]["file"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for token in [Some(s.bob.as_str()), None] {
        let r = s.get(&format!("/api/files/{pid}"), token).send().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["cache-control"], "public, no-cache");
    }
    let r = s
        .get(&format!("/api/files/{pid}?version=1"), None)
        .send()
        .unwrap();
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    // ...but only its owner may delete it.
    let r = s
        .http
        .delete(format!("{}/api/files/{pid}", s.url))
        .bearer_auth(&s.bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Admin endpoints need an admin.
    let r = s
        .get("/api/admin/storage/stats", Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .get("/api/admin/storage/stats", Some(&s.admin))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v = json(r);
    assert_eq!(v["store"]["files"], 2);
    assert_eq!(v["users"], 3);
}

#[test]
fn listing_paginates_and_filters() {
    let s = Service::start();
    for i in 0..7 {
        let form = Form::new().text("key", format!("docs/{i}.txt")).part(
            "f",
            Part::bytes(format!("file {i}").into_bytes()).file_name(format!("{i}.txt")),
        );
        assert_eq!(s.upload(&s.alice, form).status(), StatusCode::CREATED);
    }
    s.put(&s.alice, "other.txt", b"not under docs/");
    s.put(&s.bob, "bobs.txt", b"bob's");

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = "/api/files?prefix=docs/&limit=3".to_string();
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let v = json(s.get(&q, Some(&s.alice)).send().unwrap());
        pages += 1;
        for f in v["files"].as_array().unwrap() {
            seen.push(f["key"].as_str().unwrap().to_string());
        }
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..7).map(|i| format!("docs/{i}.txt")).collect();
    assert_eq!(seen, want);
    let all = json(s.get("/api/files", Some(&s.alice)).send().unwrap());
    assert_eq!(all["files"].as_array().unwrap().len(), 8);
    let r = s
        .get("/api/files?owner=bob", Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let bobs = json(
        s.get("/api/files?owner=bob", Some(&s.admin))
            .send()
            .unwrap(),
    );
    assert_eq!(bobs["files"].as_array().unwrap().len(), 1);
    let r = s
        .get("/api/files?limit=many", Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn delete_undelete_and_versions() {
    let s = Service::start();
    let up = |data: &[u8]| {
        let form = Form::new()
            .text("key", "report.txt")
            .part("f", Part::bytes(data.to_vec()).file_name("report.txt"));
        json(s.upload(&s.alice, form))["files"][0]["file"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let id = up(b"first draft");
    assert_eq!(
        up(b"second draft"),
        id,
        "a put to the same key is a new version"
    );
    let v = json(
        s.get(&format!("/api/files/{id}/versions"), Some(&s.alice))
            .send()
            .unwrap(),
    );
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    let old = s
        .get(&format!("/api/files/{id}?version=1"), Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(old.bytes().unwrap().as_ref(), b"first draft");
    let r = s
        .get(&format!("/api/files/{id}?version=9"), Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = s
        .http
        .delete(format!("{}/api/files/{id}", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .http
        .post(format!("{}/api/files/{id}/undelete", s.url))
        .bearer_auth(&s.bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .http
        .post(format!("{}/api/files/{id}/undelete", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), b"second draft");
    let r = s
        .get("/api/files/not-an-id", Some(&s.alice))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[test]
fn signed_links_serve_until_they_expire_and_refuse_forgeries() {
    let s = Service::start();
    let id = s.put(&s.alice, "résumé.txt", b"private words");
    let r = s
        .http
        .post(format!("{}/api/files/{id}/link", s.url))
        .bearer_auth(&s.alice)
        .body(r#"{"ttl": 600, "download": true}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = json(r)["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/d/", s.url)), "{url}");

    let r = s.http.get(&url).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"
    );
    let cc = h["cache-control"].to_str().unwrap();
    assert!(cc.starts_with("private, max-age="), "{cc}");
    assert!(cc["private, max-age=".len()..].parse::<u64>().unwrap() <= 600);
    assert_eq!(r.bytes().unwrap().as_ref(), b"private words");

    // Change one character of the signature, then of the payload.
    let token = url.rsplit('/').next().unwrap();
    let (payload, sig) = token.split_once('.').unwrap();
    let flip = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b[3] = if b[3] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    for forged in [
        format!("{payload}.{}", flip(sig)),
        format!("{}.{sig}", flip(payload)),
        "nonsense".into(),
    ] {
        let r = s.http.get(format!("{}/d/{forged}", s.url)).send().unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{forged}");
        assert_eq!(error_code(r), "link_invalid");
    }

    s.clock.0.fetch_add(601_000, Ordering::SeqCst);
    let r = s.http.get(&url).send().unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r), "link_expired");
}

#[test]
fn active_content_is_never_served_inline() {
    let s = Service::start();
    let id = s.put(
        &s.alice,
        "page.html",
        b"<html><script>alert(1)</script></html>",
    );
    let r = s
        .get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap();
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cd.starts_with("attachment;"), "{cd}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
}

#[test]
fn health_and_metrics() {
    let s = Service::start();
    let data = text_bytes(5, 10_000);
    let id = s.put(&s.alice, "m.txt", &data);
    s.put(&s.alice, "m2.txt", &data);
    let mut body = Vec::new();
    s.get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap()
        .read_to_end(&mut body)
        .unwrap();
    s.get("/api/files/nope", Some(&s.alice)).send().unwrap();

    // Even the router's own refusals are JSON errors.
    let r = s.get("/no/such/route", None).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r), "not_found");
    let r = s.http.put(format!("{}/healthz", s.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r), "method_not_allowed");

    let r = s.get("/healthz", None).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r)["status"], "ok");

    let text = s.get("/metrics", None).send().unwrap().text().unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Counters are process-wide (tests share the recorder), so only lower bounds hold.
    assert!(value("tessera_uploads_total") >= 2.0);
    assert!(value("tessera_upload_bytes_total") >= 20_000.0);
    assert!(value("tessera_downloads_total") >= 1.0);
    assert!(value("tessera_http_responses_total{class=\"4xx\"}") >= 1.0);
    assert!(text.contains("tessera_http_request_duration_seconds_bucket{le=\"0.005\"}"));
    assert!(value("tessera_dedup_ratio") >= 1.0);
}

/// `tessera serve` as a child process, for tests that need a real process (memory, restarts).
pub struct ServeProcess {
    pub child: std::process::Child,
    pub url: String,
    pub token: String,
}

impl ServeProcess {
    /// Adds user `alice` to the store at `dir` (once) and serves it on a free port.
    pub fn start(dir: &std::path::Path, token: Option<String>) -> ServeProcess {
        Self::start_with(dir, token, None)
    }

    /// [`ServeProcess::start`] with `--config config`.
    pub fn start_with(
        dir: &std::path::Path,
        token: Option<String>,
        config: Option<&std::path::Path>,
    ) -> ServeProcess {
        const BIN: &str = env!("CARGO_BIN_EXE_tessera");
        let token = token.unwrap_or_else(|| {
            let out = std::process::Command::new(BIN)
                .args(["--store"])
                .arg(dir)
                .args(["user", "add", "alice"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = std::process::Command::new(BIN);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .arg("--store")
            .arg(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Owned before the wait, so its Drop kills the child if the wait fails.
        let server = ServeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token,
        };
        let client = Client::new();
        for _ in 0..200 {
            let health = client.get(format!("{}/healthz", server.url)).send();
            if health.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("tessera serve did not answer /healthz on port {port}");
    }

    /// Peak resident set size of the server so far, from the kernel's own accounting.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kb * 1024
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pseudo-random bytes made on the fly: `len` bytes without holding them.
struct Stream {
    xof: blake3::OutputReader,
    left: u64,
    hasher: Option<Arc<std::sync::Mutex<blake3::Hasher>>>,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        self.xof.fill(&mut buf[..n]);
        if let Some(h) = &self.hasher {
            h.lock().unwrap().update(&buf[..n]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn two_gib_up_and_down_keeps_the_server_under_256_mib() {
    const SIZE: u64 = 2 << 30;
    let tmp = TempStore::new();
    // Files no category lists may be as large as this test's (clients get 100 MB by default).
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[categories.other]\nmax_size = \"3GiB\"\n").unwrap();
    let server = ServeProcess::start_with(&tmp.path(), None, Some(config.path()));
    let client = Client::builder().timeout(None).build().unwrap();
    let sent = Arc::new(std::sync::Mutex::new(blake3::Hasher::new()));
    let body = Stream {
        xof: blake3::Hasher::new().update(b"2 GiB").finalize_xof(),
        left: SIZE,
        hasher: Some(sent.clone()),
    };
    // A reader part has no length: the body is chunked and the server cannot know the size.
    let form = Form::new().part("file", Part::reader(body).file_name("big.bin"));
    let r = client
        .post(format!("{}/api/files", server.url))
        .bearer_auth(&server.token)
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().unwrap();
    let id = v["files"][0]["file"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["files"][0]["file"]["size"], SIZE);
    let after_upload = server.peak_rss_bytes();

    let mut r = client
        .get(format!("{}/api/files/{id}", server.url))
        .bearer_auth(&server.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        got.update(&buf[..k]);
        n += k as u64;
    }
    assert_eq!(n, SIZE);
    assert_eq!(got.finalize(), sent.lock().unwrap().finalize());
    let peak = server.peak_rss_bytes();
    eprintln!(
        "server peak RSS: {} MiB after the upload, {} MiB after the download",
        after_upload >> 20,
        peak >> 20
    );
    assert!(peak < 256 << 20, "server peak RSS {} MiB", peak >> 20);
}

#[test]
fn first_start_prints_an_admin_token_once_and_user_add_prints_only_a_token() {
    use std::io::BufRead;
    const BIN: &str = env!("CARGO_BIN_EXE_tessera");
    let tmp = TempStore::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve = || {
        std::process::Command::new(BIN)
            .arg("--store")
            .arg(tmp.path())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = serve();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let token = first
        .trim()
        .strip_prefix("admin token: ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_string();
    let client = Client::new();
    let url = format!("http://127.0.0.1:{port}/api/admin/storage/stats");
    let mut status = None;
    for _ in 0..200 {
        if let Ok(r) = client.get(&url).bearer_auth(&token).send() {
            status = Some(r.status());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        status,
        Some(StatusCode::OK),
        "the printed token must be an admin's"
    );

    // A second start prints no token: there is a user already.
    let mut child = serve();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let mut rest = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert!(!rest.contains("token"), "second start printed {rest:?}");

    let out = std::process::Command::new(BIN)
        .arg("--store")
        .arg(tmp.path())
        .args(["user", "add", "carol", "--tier", "pro", "--org", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), 1);
    assert!(
        printed.starts_with("tsr_") && printed.trim().len() == 47,
        "{printed:?}"
    );
    let out = std::process::Command::new(BIN)
        .arg("--store")
        .arg(tmp.path())
        .args(["--json", "user", "add", "dave", "--admin"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["user"]["name"], "dave");
    assert_eq!(v["user"]["admin"], true);
    assert!(v["token"].as_str().unwrap().starts_with("tsr_"));
    let out = std::process::Command::new(BIN)
        .arg("--store")
        .arg(tmp.path())
        .args(["user", "add", "carol"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a taken name must be refused");
}
