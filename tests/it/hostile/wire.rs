//! A raw HTTP/1.1 client for the hostile cases a real client library would not send: bodies
//! that lie about their length, never end their headers, or stop half-way; and the exact
//! count of body bytes that went out before the server answered.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

/// What the server answered.
#[derive(Debug)]
pub struct Answer {
    /// Interim (1xx) statuses, in order, then the final one.
    pub interim: Vec<u16>,
    pub status: u16,
    pub body: Value,
    /// Body bytes the client had written when it stopped.
    pub sent: u64,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

fn connect(url: &str) -> TcpStream {
    let c = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    c
}

/// Reads one response head: (status, content length). `None` when the connection ended first.
fn read_head(c: &mut TcpStream) -> Option<(u16, Option<usize>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let len = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    Some((status, len))
}

fn read_answer(c: &mut TcpStream, interim: &mut Vec<u16>) -> Option<(u16, Value)> {
    loop {
        let (status, len) = read_head(c)?;
        if (100..200).contains(&status) {
            interim.push(status);
            if status == 100 {
                return Some((status, Value::Null));
            }
            continue;
        }
        let mut body = vec![0u8; len.unwrap_or(0)];
        c.read_exact(&mut body).ok()?;
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        return Some((status, body));
    }
}

/// Sends `head` and then the pieces of `body` from another thread, while this one reads the
/// answer; the writer stops at the first failed write or once the answer is in. Panics if no
/// answer comes.
pub fn exchange(
    url: &str,
    head: &str,
    body: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> Answer {
    let mut c = connect(url);
    c.write_all(head.as_bytes()).unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let mut w = c.try_clone().unwrap();
        let (answered, sent) = (answered.clone(), sent.clone());
        std::thread::spawn(move || {
            for piece in body {
                if answered.load(Ordering::Relaxed) || w.write_all(&piece).is_err() {
                    return;
                }
                sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let mut interim = Vec::new();
    let answer = loop {
        match read_answer(&mut c, &mut interim) {
            Some((100, _)) => continue,
            other => break other,
        }
    };
    answered.store(true, Ordering::Relaxed);
    // Unblocks a writer stuck on a full socket.
    let _ = c.shutdown(Shutdown::Both);
    writer.join().unwrap();
    let (status, body) = answer.expect("the server closed the connection without an answer");
    Answer {
        interim,
        status,
        body,
        sent: sent.load(Ordering::Relaxed),
    }
}

/// Sends `head` (which carries `Expect: 100-continue`) and waits: a final answer first means
/// the server decided without the body, which is then never sent; `100 Continue` first, and
/// `body` goes out, then the final answer is read.
pub fn expect_continue(url: &str, head: &str, body: &[u8]) -> Answer {
    let mut c = connect(url);
    c.write_all(head.as_bytes()).unwrap();
    let mut interim = Vec::new();
    let (status, value) = read_answer(&mut c, &mut interim).expect("an answer to the head");
    if status != 100 {
        return Answer {
            interim,
            status,
            body: value,
            sent: 0,
        };
    }
    c.write_all(body).unwrap();
    let (status, body_value) = read_answer(&mut c, &mut interim).expect("a final answer");
    Answer {
        interim,
        status,
        body: body_value,
        sent: body.len() as u64,
    }
}

/// Sends `head` and `body`, then closes the sending half (a client that stops mid-request),
/// and reads the answer.
pub fn send_and_close(url: &str, head: &str, body: &[u8]) -> Answer {
    let mut c = connect(url);
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut interim = Vec::new();
    let (status, value) = read_answer(&mut c, &mut interim)
        .expect("the server closed the connection without an answer");
    Answer {
        interim,
        status,
        body: value,
        sent: body.len() as u64,
    }
}

/// The head of a `POST` to `path` with a multipart body of boundary `B`: `length` as
/// `Content-Length`, or chunked with `None`; `extra` header lines end in CRLF.
pub fn post_head(path: &str, token: &str, length: Option<u64>, extra: &str) -> String {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_string(),
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: tessera\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=B\r\n{framing}{extra}\r\n"
    )
}

/// A file part's head (boundary `B`).
pub fn file_part(name: &str) -> String {
    format!(
        "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
}

/// A text field (boundary `B`), its trailing CRLF included.
pub fn text_part(name: &str, value: &str) -> String {
    format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

/// The closing delimiter.
pub const CLOSE: &str = "--B--\r\n";

/// `pieces` as chunked transfer coding, the last chunk included.
pub fn chunked(pieces: impl Iterator<Item = Vec<u8>>) -> impl Iterator<Item = Vec<u8>> {
    pieces
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = format!("{:x}\r\n", p.len()).into_bytes();
            c.extend_from_slice(&p);
            c.extend_from_slice(b"\r\n");
            c
        })
        .chain(std::iter::once(b"0\r\n\r\n".to_vec()))
}

/// `body` cut into owned pieces of `size` bytes.
pub fn pieces(body: &[u8], size: usize) -> std::vec::IntoIter<Vec<u8>> {
    body.chunks(size)
        .map(<[u8]>::to_vec)
        .collect::<Vec<_>>()
        .into_iter()
}
