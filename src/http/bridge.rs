//! Streaming between the async request/response bodies and the engine's blocking `Read`s, with
//! bounded buffers on both sides: neither direction ever holds a whole file in memory.

use std::io::{self, Read};

use axum::body::Bytes;
use tokio::sync::mpsc;

/// Buffers in flight per stream; with [`READ_BUF`] this bounds a download's memory.
pub const QUEUE: usize = 4;
/// Size of a download read.
pub const READ_BUF: usize = 256 * 1024;

/// A blocking `Read` fed by an async task. An `Err` item ends the stream with that error (a
/// broken client connection), so a put reading from it fails instead of committing a
/// truncated file.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Pumps a blocking reader into a channel from the blocking pool; the receiver becomes a
/// response body. Stops early when the client goes away (the receiver is dropped).
pub fn pump(mut source: impl Read + Send + 'static) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; READ_BUF];
            match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The status line has gone out; the client sees a cut body, never
                    // unverified bytes.
                    tracing::error!(error = %e, "download failed mid-stream");
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    rx
}

/// Most of an unread request body the server reads and discards after an error answer.
const DRAIN_LIMIT: usize = 4 << 20;
/// How long it waits for that.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Middleware: when a handler answers with an error without reading the whole request body
/// (401 from the headers alone, 415, 412...), read and discard what is left of the body — up to
/// [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`] — before answering. Closing a socket that still
/// holds unread data makes the kernel send a reset, and a client that is still writing its body
/// then reports a broken connection instead of the answer. Bodies above the limit (an oversize
/// upload) are not drained: the connection is closed as before. Nor is the body of a client
/// that sent `Expect: 100-continue` and was answered before the handler read any of it: that
/// client sends nothing until told to, and reading would tell it to (hyper answers `100
/// Continue` on the first read), so an upload refused from its headers is never sent at all.
pub async fn drain_on_error(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use futures_util::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return next.run(req).await;
    }
    let expects_continue = req
        .headers()
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let shared = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let read = Arc::new(AtomicBool::new(false));
    let for_handler = (shared.clone(), read.clone());
    let stream = futures_util::stream::unfold(for_handler, |(s, read)| async move {
        read.store(true, Ordering::Relaxed);
        let item = s.lock().await.next().await;
        item.map(|i| (i, (s, read)))
    });
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::from_stream(stream));
    let resp = next.run(req).await;
    if expects_continue && !read.load(Ordering::Relaxed) {
        return resp;
    }
    if resp.status().is_client_error() || resp.status().is_server_error() {
        let drain = async {
            let mut left = DRAIN_LIMIT;
            let mut s = shared.lock().await;
            while let Some(Ok(b)) = s.next().await {
                left = left.saturating_sub(b.len());
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }
    resp
}
