//! Idle and slow connections, and the connection cap (issue 14, section 1): half-sent headers,
//! slowloris, idle keep-alive, bodies that stall in either direction, a full cap, and
//! descriptor exhaustion under a low `ulimit -n` against the real `tessera serve`.
//!
//! Timeouts are configured short (sub-second) so the cases run quickly; no case asserts how long
//! anything took, only what happened within generous bounds ([`BOUND`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{TempStore, random_bytes, text_bytes};
use crate::http::Service;

/// How long any "is it closed (answered) yet" wait may take before the case fails.
const BOUND: Duration = Duration::from_secs(60);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(s: &Service) -> String {
    s.url.trim_start_matches("http://").to_string()
}

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

fn quiet(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Whether the server closed `c` (end of file or a reset) within `bound`; anything it sent
/// meanwhile is discarded. Looks at least once, even with a zero bound.
fn closed_within(c: &TcpStream, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    c.set_read_timeout(Some(ms(100))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut c = c;
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if quiet(&e) => {}
            Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// One HTTP/1.1 answer read off a connection.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn error_code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap();
        assert!(v["message"].is_string(), "error without a message: {v}");
        v["error"].as_str().unwrap().to_string()
    }
}

/// Reads one answer (head and `Content-Length` body) within `bound`; `None` if the server
/// closed the connection or said nothing whole by then.
fn read_answer(c: &mut TcpStream, bound: Duration) -> Option<Answer> {
    let deadline = Instant::now() + bound;
    c.set_read_timeout(Some(ms(100))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let mut a = Answer {
                status,
                head,
                body: Vec::new(),
            };
            let len: usize = a.header("content-length").map_or(0, |v| v.parse().unwrap());
            if got.len() >= end + 4 + len {
                a.body = got[end + 4..end + 4 + len].to_vec();
                return Some(a);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        match c.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if quiet(&e) => {}
            Err(_) => return None,
        }
    }
}

/// A keep-alive GET on an open connection; its status.
fn get_on(c: &mut TcpStream, path: &str) -> u16 {
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    read_answer(c, BOUND).expect("an answer").status
}

/// Whether `c` has received nothing at all yet (looking for a short while).
fn nothing_received(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(ms(300))).unwrap();
    matches!(c.read(&mut [0u8; 1]), Err(e) if quiet(&e))
}

/// `/healthz` from a new client, allowed to wait up to [`BOUND`].
fn fresh_healthz(url: &str) -> StatusCode {
    reqwest::blocking::Client::builder()
        .timeout(BOUND)
        .build()
        .unwrap()
        .get(format!("{url}/healthz"))
        .send()
        .unwrap()
        .status()
}

/// The connections the service has closed for `timeout` ("header", "idle", "send",
/// "displaced"), from `/metrics` (one recorder per process: compare before and after, holding
/// [`SEND_COUNTER`]).
fn timeouts_counted(s: &Service, timeout: &str) -> u64 {
    let text = s.get("/metrics", None).send().unwrap().text().unwrap();
    let key = format!("tessera_http_connection_timeouts_total{{timeout=\"{timeout}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Held by the cases that wait for the process-wide "send" count to move, so that one case
/// never takes another's cut for its own.
static SEND_COUNTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

// ---- Headers ----

#[test]
fn three_hundred_half_sent_headers_are_closed_after_the_header_timeout() {
    let s = Service::with(|c| c.server.header_read_timeout = ms(500));
    let a = addr(&s);
    let conns: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut c = connect(&a);
            c.write_all(format!("GET /api/files HTTP/1.1\r\nHost: t\r\nX-Half-{i}: ").as_bytes())
                .unwrap();
            c
        })
        .collect();
    let deadline = Instant::now() + BOUND;
    let open = conns
        .iter()
        .filter(|c| !closed_within(c, deadline.saturating_duration_since(Instant::now())))
        .count();
    assert_eq!(open, 0, "connections with half-sent headers are still open");
    assert_eq!(fresh_healthz(&s.url), StatusCode::OK);
    assert_eq!(s.file_count("alice"), 0);
}

#[test]
fn slowloris_one_header_byte_at_a_time_is_cut_at_the_header_timeout() {
    let s = Service::with(|c| c.server.header_read_timeout = ms(1000));
    let mut c = connect(&addr(&s));
    let head = format!(
        "POST /api/files HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nX-Slow: ",
        s.alice
    );
    // One byte every ~100 ms: each byte comes well within the header timeout, the headers
    // never end.
    let deadline = Instant::now() + BOUND;
    let mut sent = 0usize;
    let cut = loop {
        if Instant::now() >= deadline {
            break false;
        }
        let byte = head.as_bytes().get(sent).copied().unwrap_or(b'a');
        if c.write_all(&[byte]).is_err() {
            break true;
        }
        sent += 1;
        if closed_within(&c, ms(100)) {
            break true;
        }
    };
    assert!(cut, "a trickled header was never cut ({sent} bytes sent)");
    assert!(sent > 3, "cut after {sent} bytes: before the trickle began");
    assert_eq!(fresh_healthz(&s.url), StatusCode::OK);
    assert_eq!(s.file_count("alice"), 0);
}

// ---- Idle keep-alive ----

#[test]
fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = Service::with(|c| {
        c.server.idle_timeout = ms(500);
        c.server.header_read_timeout = Duration::from_secs(30);
    });
    let mut c = connect(&addr(&s));
    assert_eq!(get_on(&mut c, "/healthz"), 200);
    assert!(
        closed_within(&c, BOUND),
        "an idle keep-alive connection was never closed"
    );
    assert_eq!(fresh_healthz(&s.url), StatusCode::OK);
}

/// Not an attack: the idle timeout, not the (shorter) header timeout, is what an idle
/// keep-alive connection gets between requests.
#[test]
fn keep_alive_outlives_the_header_timeout_up_to_the_idle_timeout() {
    let s = Service::with(|c| {
        c.server.header_read_timeout = ms(300);
        c.server.idle_timeout = Duration::from_secs(120);
    });
    let mut c = connect(&addr(&s));
    assert_eq!(get_on(&mut c, "/healthz"), 200);
    std::thread::sleep(ms(1500));
    assert_eq!(
        get_on(&mut c, "/healthz"),
        200,
        "closed before the idle timeout"
    );
}

// ---- Bodies that stall ----

#[test]
fn multipart_upload_that_stops_sending_is_cut_with_408_and_nothing_stored() {
    let s = Service::with(|c| c.server.body_idle_timeout = ms(500));
    let data = text_bytes(3, 200_000);
    let boundary = "tesseraXboundary";
    let part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"notes.txt\"\r\nContent-Type: text/plain\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let total = part.len() + data.len() + tail.len();
    let mut c = connect(&addr(&s));
    c.write_all(
        format!(
            "POST /api/files HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
             Content-Type: multipart/form-data; boundary={boundary}\r\n\
             Content-Length: {total}\r\n\r\n{part}",
            s.alice
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&data[..100_000]).unwrap();
    // ...and nothing more.
    let a = read_answer(&mut c, BOUND).expect("an answer to the stalled upload");
    assert_eq!(a.status, 408, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.error_code(), "body_timeout");
    assert!(closed_within(&c, BOUND));
    assert_eq!(s.file_count("alice"), 0);
    let q = s.store.quota_status("alice").unwrap();
    assert_eq!(
        (q.used, q.reserved),
        (0, 0),
        "the cut upload still holds quota"
    );
    // The client can upload again.
    s.put(&s.alice, "notes.txt", &data);
    assert_eq!(s.file_count("alice"), 1);
}

#[test]
fn tus_patch_that_stops_sending_keeps_its_bytes_and_resumes() {
    let s = Service::with(|c| c.server.body_idle_timeout = ms(500));
    let data = text_bytes(4, 100_000);
    let r = s
        .http
        .post(format!("{}/api/uploads", s.url))
        .bearer_auth(&s.alice)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", data.len().to_string())
        .header(
            "Upload-Metadata",
            format!(
                "filename {}",
                base64::engine::general_purpose::STANDARD.encode("notes.txt")
            ),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let path = location.trim_start_matches(&s.url).to_string();

    let mut c = connect(&addr(&s));
    c.write_all(
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
             Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n\
             Upload-Offset: 0\r\nContent-Length: {}\r\n\r\n",
            s.alice,
            data.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&data[..40_000]).unwrap();
    let a = read_answer(&mut c, BOUND).expect("an answer to the stalled PATCH");
    assert_eq!(a.status, 408, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("tus-resumable").as_deref(), Some("1.0.0"));
    assert_eq!(a.error_code(), "body_timeout");

    let tus = |m: reqwest::Method| {
        s.http
            .request(m, &location)
            .bearer_auth(&s.alice)
            .header("Tus-Resumable", "1.0.0")
    };
    let r = tus(reqwest::Method::HEAD).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["upload-offset"],
        "40000",
        "received bytes were lost"
    );
    assert_eq!(s.file_count("alice"), 0);

    let r = tus(reqwest::Method::PATCH)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "40000")
        .body(data[40_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let id = r.headers()["tessera-file-id"].to_str().unwrap().to_string();
    let got = s
        .get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), data.as_slice());
    assert_eq!(s.file_count("alice"), 1);
}

#[test]
fn download_the_client_stops_reading_is_cut_and_the_file_is_intact() {
    let s = Service::with(|c| c.server.body_idle_timeout = ms(500));
    // Larger than what loopback socket buffers hold, so the server's writes stall.
    let data = random_bytes(5, 32 << 20);
    let id = s.put(&s.alice, "blob.bin", &data);
    let _counter = SEND_COUNTER.lock().unwrap_or_else(|p| p.into_inner());
    let before = timeouts_counted(&s, "send");

    let mut c = connect(&addr(&s));
    c.write_all(
        format!(
            "GET /api/files/{id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
            s.alice
        )
        .as_bytes(),
    )
    .unwrap();
    // Read nothing until the service gives up on this reader.
    let deadline = Instant::now() + BOUND;
    while timeouts_counted(&s, "send") == before {
        assert!(
            Instant::now() < deadline,
            "a download nobody reads was never cut"
        );
        std::thread::sleep(ms(100));
    }
    let mut received = Vec::new();
    c.set_read_timeout(Some(BOUND)).unwrap();
    let ended = loop {
        let mut buf = vec![0u8; 1 << 20];
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if quiet(&e) => break false,
            Err(_) => break true,
        }
    };
    assert!(ended, "the cut connection did not end");
    assert!(
        received.len() < data.len(),
        "all {} bytes arrived: nothing was cut",
        received.len()
    );
    // The file is untouched and served whole to a reader that reads.
    let got = s
        .get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(got.as_ref() == data.as_slice());
    assert_eq!(s.file_count("alice"), 1);
}

#[test]
fn download_over_http2_whose_client_never_reopens_its_window_is_cut() {
    let s = Service::with(|c| c.server.body_idle_timeout = ms(500));
    let data = random_bytes(6, 32 << 20);
    let id = s.put(&s.alice, "blob.bin", &data);
    let _counter = SEND_COUNTER.lock().unwrap_or_else(|p| p.into_inner());
    let before = timeouts_counted(&s, "send");
    let client = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .timeout(BOUND)
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/api/files/{id}", s.url))
        .bearer_auth(&s.alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // Reading nothing, the client's flow-control window stays shut once full: the server
    // cannot even try to write, and must still give up.
    let deadline = Instant::now() + BOUND;
    while timeouts_counted(&s, "send") == before {
        assert!(
            Instant::now() < deadline,
            "an HTTP/2 download nobody reads was never cut"
        );
        std::thread::sleep(ms(100));
    }
    assert!(
        r.bytes().is_err(),
        "the cut stream still delivered a whole body"
    );
    let got = s
        .get(&format!("/api/files/{id}"), Some(&s.alice))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(got.as_ref() == data.as_slice());
    assert_eq!(s.file_count("alice"), 1);
}

// ---- The connection cap ----

#[test]
fn connections_over_the_cap_wait_in_the_backlog_and_are_served_when_a_slot_frees() {
    let s = Service::with(|c| {
        c.server.max_connections = Some(8);
        c.server.idle_timeout = Duration::from_secs(5);
        c.server.header_read_timeout = Duration::from_secs(5);
    });
    let a = addr(&s);
    // Eight keep-alive connections that have each been served a request: the cap is full,
    // and none of them can be displaced (only connections that never sent a request are).
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = connect(&a);
            assert_eq!(get_on(&mut c, "/healthz"), 200);
            c
        })
        .collect();
    let mut ninth = connect(&a);
    ninth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(
        nothing_received(&mut ninth),
        "a ninth connection was served"
    );
    // The eight answer after that look, so they were all open during it: the ninth waited
    // because the cap was full, and the open connections are still served.
    for c in &mut held {
        assert_eq!(get_on(c, "/healthz"), 200);
    }
    // Once idle connections time out, the ninth is accepted and answered.
    let answer = read_answer(&mut ninth, BOUND).expect("the waiting connection was served");
    assert_eq!(answer.status, 200);
    let closed = held.iter().filter(|c| closed_within(c, BOUND)).count();
    assert_eq!(closed, 8, "idle connections outlived their timeout");
    assert_eq!(s.file_count("alice"), 0);
}

#[test]
fn healthz_answers_while_the_cap_is_full_of_idle_sockets() {
    let s = Service::with(|c| {
        c.server.max_connections = Some(8);
        // Long: the silent sockets must not simply time out during the case.
        c.server.header_read_timeout = Duration::from_secs(300);
        c.server.idle_timeout = Duration::from_secs(300);
    });
    let a = addr(&s);
    let mut open = connect(&a);
    assert_eq!(get_on(&mut open, "/healthz"), 200);
    // 40 sockets that connect and say nothing: 7 fill the cap, 33 wait in the backlog.
    let silent: Vec<TcpStream> = (0..40).map(|_| connect(&a)).collect();
    // Requests on the connection already open keep being answered.
    for _ in 0..3 {
        assert_eq!(get_on(&mut open, "/healthz"), 200);
    }
    // A new client gets in: the full cap displaces sockets that never sent a request rather
    // than making it wait out their five-minute header timeout.
    assert_eq!(fresh_healthz(&s.url), StatusCode::OK);
    let closed = silent.iter().filter(|c| closed_within(c, ms(200))).count();
    assert!(
        closed >= 33,
        "only {closed} of the 40 silent sockets were closed to make room"
    );
    // The served connection was never displaced.
    assert_eq!(get_on(&mut open, "/healthz"), 200);
    assert_eq!(s.file_count("alice"), 0);
}

// ---- Descriptor exhaustion against the real binary ----

/// `tessera serve` under `ulimit -n <nofile>` (soft and hard), on a free port, with `config`
/// as its configuration. Killed when dropped.
struct LimitedServe {
    child: Child,
    url: String,
    token: String,
    log: std::path::PathBuf,
    _tmp: TempStore,
}

impl LimitedServe {
    fn start(nofile: u32, config: &str) -> LimitedServe {
        let tmp = TempStore::new();
        let dir = tmp.path();
        let conf = dir.with_extension("toml");
        std::fs::write(
            &conf,
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}"),
        )
        .unwrap();
        let log = dir.with_extension("log");
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$@\""))
            .arg("bash")
            .arg(env!("CARGO_BIN_EXE_tessera"))
            .arg("--store")
            .arg(&dir)
            .arg("--config")
            .arg(&conf)
            .arg("serve");
        for (k, _) in std::env::vars() {
            if k.starts_with("TESSERA_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting tessera serve");
        // First start on an empty store: the admin's token, alone on its line.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let token = line
            .trim()
            .strip_prefix("admin token: ")
            .unwrap_or_else(|| panic!("no admin token in {line:?}"))
            .to_string();
        let deadline = Instant::now() + BOUND;
        let url = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split(" on http://").nth(1) {
                break format!("http://{}", rest.lines().next().unwrap().trim());
            }
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "tessera serve did not start; its log:\n{text}"
            );
            std::thread::sleep(ms(50));
        };
        LimitedServe {
            child,
            url,
            token,
            log,
            _tmp: tmp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// The process is alive, never panicked, and can still store a file.
    fn assert_healthy(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "tessera serve died; its log:\n{}",
            self.log()
        );
        assert!(!self.log().contains("panicked"), "{}", self.log());
        let r = reqwest::blocking::Client::builder()
            .timeout(BOUND)
            .build()
            .unwrap()
            .post(format!("{}/api/files", self.url))
            .bearer_auth(&self.token)
            .multipart(
                reqwest::blocking::multipart::Form::new().part(
                    "file",
                    reqwest::blocking::multipart::Part::bytes(text_bytes(6, 300_000))
                        .file_name("after.txt"),
                ),
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", self.log());
    }

    /// CPU time (user + system) the process has used, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces), from field 3 on.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

impl Drop for LimitedServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn open_silent(url: &str, n: usize) -> Vec<TcpStream> {
    let a = url.trim_start_matches("http://");
    (0..n).map(|_| connect(a)).collect()
}

#[test]
fn descriptor_exhaustion_under_a_low_ulimit_leaves_tessera_serve_answering() {
    let mut serve = LimitedServe::start(256, "header_read_timeout = \"2s\"\n");
    let log = serve.log();
    let cap: usize = log
        .split("max_connections=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no connection cap logged:\n{log}"));
    assert!(
        (8..256).contains(&cap),
        "cap {cap} leaves no descriptors for the store"
    );
    // More idle sockets than the process may have descriptors.
    let silent = open_silent(&serve.url, 400);
    assert_eq!(fresh_healthz(&serve.url), StatusCode::OK);
    serve.assert_healthy();
    let deadline = Instant::now() + BOUND;
    let open = silent
        .iter()
        .filter(|c| !closed_within(c, deadline.saturating_duration_since(Instant::now())))
        .count();
    assert_eq!(open, 0, "idle sockets outlived the header timeout");
    let log = serve.log();
    assert!(
        !log.contains("Too many open files") && !log.contains("accepting a connection failed"),
        "the cap let descriptors run out:\n{log}"
    );
    serve.assert_healthy();
}

#[test]
fn accept_errors_under_exhaustion_back_off_without_spinning_and_serving_resumes() {
    // A cap configured far above the limit: accept itself runs out of descriptors.
    let mut serve = LimitedServe::start(
        128,
        "header_read_timeout = \"3s\"\nmax_connections = 1000\n",
    );
    let silent = open_silent(&serve.url, 300);
    let deadline = Instant::now() + BOUND;
    while !serve.log().contains("accepting a connection failed") {
        assert!(
            Instant::now() < deadline,
            "the descriptors never ran out:\n{}",
            serve.log()
        );
        std::thread::sleep(ms(20));
    }
    // While accept fails, the loop sleeps between attempts instead of retrying at once.
    let window = ms(1000);
    let before = serve.cpu_ticks();
    std::thread::sleep(window);
    let used = serve.cpu_ticks() - before;
    let budget = clock_ticks_per_second() * window.as_millis() as u64 / 1000 / 2;
    assert!(
        used < budget,
        "{used} ticks of CPU in {window:?} of exhaustion: the accept loop spins"
    );
    assert_eq!(fresh_healthz(&serve.url), StatusCode::OK);
    let deadline = Instant::now() + BOUND;
    let open = silent
        .iter()
        .filter(|c| !closed_within(c, deadline.saturating_duration_since(Instant::now())))
        .count();
    assert_eq!(open, 0, "idle sockets outlived the header timeout");
    // With the flood gone, the engine has its descriptors back.
    serve.assert_healthy();
}

// ---- The server itself ----

/// Not an attack: HTTP/2 with prior knowledge is served beside HTTP/1.1.
#[test]
fn http2_prior_knowledge_is_served() {
    let s = Service::start();
    let client = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client.get(format!("{}/healthz", s.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

/// Not an attack: shutdown stops accepting but finishes an upload in flight.
#[test]
fn shutdown_finishes_an_upload_in_flight_and_stops_accepting() {
    let mut s = Service::start();
    let data = text_bytes(8, 200_000);
    let boundary = "tesseraXboundary";
    let part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"late.txt\"\r\nContent-Type: text/plain\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let total = part.len() + data.len() + tail.len();
    let mut c = connect(&addr(&s));
    c.write_all(
        format!(
            "POST /api/files HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
             Content-Type: multipart/form-data; boundary={boundary}\r\n\
             Expect: 100-continue\r\nContent-Length: {total}\r\n\r\n",
            s.alice
        )
        .as_bytes(),
    )
    .unwrap();
    // The handler asks for the body: the request is in flight (a connection whose headers
    // had not been read yet would be closed by the shutdown, as with any server).
    let interim = read_answer(&mut c, BOUND).expect("100 Continue");
    assert_eq!(interim.status, 100);
    c.write_all(part.as_bytes()).unwrap();
    c.write_all(&data[..100_000]).unwrap();
    let a = addr(&s);
    s.begin_shutdown();
    // New connections are refused once the listener is gone.
    let deadline = Instant::now() + BOUND;
    while TcpStream::connect(&a).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        std::thread::sleep(ms(20));
    }
    c.write_all(&data[100_000..]).unwrap();
    c.write_all(tail.as_bytes()).unwrap();
    let answer = read_answer(&mut c, BOUND).expect("the upload in flight was answered");
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(s.file_count("alice"), 1);
}
