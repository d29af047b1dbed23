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
