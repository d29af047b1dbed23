//! Multipart bodies under limits.
//!
//! multer (what axum's `Multipart` wraps) parses `multipart/form-data`, but it bounds neither
//! what it buffers while it looks for the end of a part's header block, nor the preamble before
//! the first boundary (it keeps reading into one buffer until it finds them), nor the body as
//! a whole unless told. [`Form`] is the stream between the request body and multer that does.
//! Its [`Scanner`] follows the body's structure exactly as multer's stages do — a preamble up
//! to the first `--boundary`; after each delimiter either `--` (the end) or transport padding
//! and CRLF; a header block up to the first CRLFCRLF; content up to the first CRLF
//! `--boundary` — and every chunk is checked before multer sees any of it:
//!
//! - no part's header block (the bytes between its delimiter and its content) passes
//!   [`MAX_PART_HEAD`], and the preamble does not pass [`MAX_PREAMBLE`]: multer never holds more
//!   than that of either, and the request fails from what was read so far;
//! - the body stays within `uploads.max_upload`, chunked bodies too;
//! - it has no more parts than a request may carry (`max_parts` files plus `max_fields` text
//!   fields; the handler counts each kind, but multer may buffer far ahead of the handler when
//!   parts are tiny, and this count keeps a flood of them from ending as "too much framing");
//! - its bytes that are not content (the framing counted here, plus the text fields the
//!   handler reports with [`Form::add_text`]) stay within `uploads.max_form_overhead`. That
//!   bound is what lets the quota take `Content-Length - max_form_overhead` as the least
//!   amount of file content a request declares (see `quota::Pool`).
//!
//! It hands multer the body in pieces of at most [`PIECE`] bytes, one per poll of multer's: multer's
//! buffer takes everything a stream has ready in one go, and a small lead keeps the limits this
//! stream checks from tripping far ahead of the parts multer has shown the handler (so 10,000
//! tiny parts are refused as too many parts, not as too much framing).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::StatusCode;
use futures_util::{Stream, StreamExt};

use super::error::ApiError;

/// Most bytes between a part's delimiter and its content: the rest of the boundary line, the
/// header lines and the blank line.
pub const MAX_PART_HEAD: u64 = 8 << 10;
/// Most bytes before the first boundary (browsers send none).
pub const MAX_PREAMBLE: u64 = 8 << 10;
/// Longest boundary RFC 2046 allows.
pub const MAX_BOUNDARY: usize = 70;
/// Most bytes handed to multer at a time (see the module docs).
const PIECE: usize = 64 << 10;

/// Why a body was stopped. The request fails whole: nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("a part's header block is longer than {MAX_PART_HEAD} bytes")]
    PartHeadTooLarge,
    #[error("the body has more than {MAX_PREAMBLE} bytes before its first boundary")]
    Preamble,
    #[error("the request body is longer than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the form's boundaries, part headers and text fields take more than {limit} bytes")]
    Overhead { limit: u64 },
    #[error("a request may carry at most {limit} parts (files and text fields)")]
    TooManyParts { limit: u64 },
    #[error("{0}")]
    Malformed(&'static str),
    /// The body could not be read (the client went away, or sent less than it declared).
    #[error("the request body could not be read to its end")]
    Cut,
    /// No byte of the body arrived for `server.body_idle_timeout` (see `body_idle`).
    #[error("no byte of the upload arrived for too long; nothing was stored")]
    TimedOut,
}

impl From<Stop> for ApiError {
    fn from(s: Stop) -> Self {
        let (status, code) = match &s {
            Stop::PartHeadTooLarge => (StatusCode::BAD_REQUEST, "part_header_too_large"),
            Stop::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Stop::Overhead { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "form_too_large"),
            Stop::TooManyParts { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_parts"),
            Stop::Preamble | Stop::Malformed(_) | Stop::Cut => {
                (StatusCode::BAD_REQUEST, "bad_multipart")
            }
            Stop::TimedOut => return super::body_idle::timeout_answer(s.to_string()),
        };
        ApiError::new(status, code, s.to_string())
    }
}

/// A streaming search for one pattern (Knuth–Morris–Pratt across chunk edges, `memmem`
/// within a chunk).
struct Finder {
    pat: Vec<u8>,
    /// `fail[i]`: length of the longest proper border of `pat[..=i]`.
    fail: Vec<usize>,
    /// Length of the longest suffix of what was fed that is a prefix of `pat`.
    matched: usize,
}

impl Finder {
    fn new(pat: Vec<u8>) -> Self {
        let mut fail = vec![0; pat.len()];
        let mut k = 0;
        for i in 1..pat.len() {
            while k > 0 && pat[i] != pat[k] {
                k = fail[k - 1];
            }
            if pat[i] == pat[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Finder {
            pat,
            fail,
            matched: 0,
        }
    }

    /// Feeds one byte; true when it completes a match (the search then starts afresh).
    fn step(&mut self, b: u8) -> bool {
        let mut m = self.matched;
        while m > 0 && self.pat[m] != b {
            m = self.fail[m - 1];
        }
        if self.pat[m] == b {
            m += 1;
        }
        if m == self.pat.len() {
            self.matched = 0;
            return true;
        }
        self.matched = m;
        false
    }

    /// The index in `data` just past the end of the first match, counting a match begun in
    /// earlier data; `None` when `data` completes none.
    fn find(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        // A partial match that began before `data`: follow it byte by byte until it completes,
        // dies, or lies wholly inside `data` (where `memmem` finds it again).
        while self.matched > i && i < data.len() {
            let done = self.step(data[i]);
            i += 1;
            if done {
                return Some(i);
            }
        }
        if self.matched > i {
            return None;
        }
        // Any match from here on starts at or after the live partial match.
        let from = i - self.matched;
        if let Some(pos) = memchr::memmem::find(&data[from..], &self.pat) {
            self.matched = 0;
            return Some(from + pos + self.pat.len());
        }
        self.matched = 0;
        let tail = data.len().saturating_sub(self.pat.len() - 1).max(from);
        for &b in &data[tail..] {
            let done = self.step(b);
            debug_assert!(!done, "memmem found no match");
        }
        None
    }
}

/// Where the body is, as multer's stages see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first `--boundary`.
    Preamble,
    /// Just after a `--boundary`: `--` ends the body, anything else opens a part.
    Delimiter,
    /// After `--boundary-`.
    Dash,
    /// Spaces and tabs after the boundary, up to the line's CR.
    Padding,
    /// After that CR.
    Lf,
    /// The part's header lines, up to and including the blank line.
    Head,
    /// The part's content, up to CRLF `--boundary`.
    Content,
    /// After the closing `--boundary--`.
    Epilogue,
}

/// Follows a body's multipart structure and counts its framing (see the module docs).
pub struct Scanner {
    stage: Stage,
    /// `--boundary`, which ends the preamble.
    first: Finder,
    /// CRLF `--boundary`, which ends a part's content.
    next: Finder,
    /// CRLFCRLF, which ends a header block.
    blank: Finder,
    /// Bytes of the preamble, or of the current part's header block so far.
    head: u64,
    /// Bytes that are not part content: preamble, delimiters, header blocks, epilogue.
    pub framing: u64,
    /// Bytes of part content (files and text fields).
    pub content: u64,
    /// Parts whose header block ended.
    pub parts: u64,
}

impl Scanner {
    pub fn new(boundary: &str) -> Self {
        let dashed = format!("--{boundary}").into_bytes();
        Scanner {
            stage: Stage::Preamble,
            next: Finder::new([b"\r\n".as_slice(), &dashed].concat()),
            first: Finder::new(dashed),
            blank: Finder::new(b"\r\n\r\n".to_vec()),
            head: 0,
            framing: 0,
            content: 0,
            parts: 0,
        }
    }

    /// True once the closing delimiter has gone by.
    pub fn at_end(&self) -> bool {
        self.stage == Stage::Epilogue
    }

    /// Follows `data`, the body's next bytes; an error names the limit or rule they break.
    pub fn scan(&mut self, data: &[u8]) -> Result<(), Stop> {
        let mut i = 0;
        while i < data.len() {
            let rest = &data[i..];
            match self.stage {
                Stage::Preamble => {
                    let found = self.first.find(rest);
                    let used = found.unwrap_or(rest.len());
                    self.framing += used as u64;
                    self.head += used as u64;
                    let delimiter = self.first.pat.len() as u64;
                    let before = match found {
                        Some(_) => self.head - delimiter,
                        // A partial delimiter at the end may not be preamble.
                        None => self.head.saturating_sub(delimiter),
                    };
                    if before > MAX_PREAMBLE {
                        return Err(Stop::Preamble);
                    }
                    if found.is_some() {
                        self.delimiter();
                    }
                    i += used;
                }
                Stage::Head => {
                    let found = self.blank.find(rest);
                    let used = found.unwrap_or(rest.len());
                    self.framing += used as u64;
                    self.head += used as u64;
                    if self.head > MAX_PART_HEAD {
                        return Err(Stop::PartHeadTooLarge);
                    }
                    if found.is_some() {
                        self.stage = Stage::Content;
                        self.parts += 1;
                    }
                    i += used;
                }
                Stage::Content => {
                    let found = self.next.find(rest);
                    let used = found.unwrap_or(rest.len());
                    self.content += used as u64;
                    if found.is_some() {
                        // The delimiter's bytes were counted as content as they came.
                        let delimiter = self.next.pat.len() as u64;
                        self.content -= delimiter;
                        self.framing += delimiter;
                        self.delimiter();
                    }
                    i += used;
                }
                Stage::Epilogue => {
                    self.framing += rest.len() as u64;
                    i = data.len();
                }
                // The boundary line, a byte at a time (multer peeks two bytes for `--`, then
                // skips spaces and tabs and wants CRLF).
                stage => {
                    let b = rest[0];
                    i += 1;
                    self.framing += 1;
                    self.head += 1;
                    if self.head > MAX_PART_HEAD {
                        return Err(Stop::PartHeadTooLarge);
                    }
                    self.stage = match (stage, b) {
                        (Stage::Delimiter, b'-') => Stage::Dash,
                        (Stage::Dash, b'-') => Stage::Epilogue,
                        (Stage::Dash, _) => {
                            return Err(Stop::Malformed("a boundary is followed by garbage"));
                        }
                        (Stage::Delimiter | Stage::Padding, b' ' | b'\t') => Stage::Padding,
                        (Stage::Delimiter | Stage::Padding, b'\r') => Stage::Lf,
                        (Stage::Lf, b'\n') => {
                            self.blank.matched = 0;
                            Stage::Head
                        }
                        _ => return Err(Stop::Malformed("a boundary line must end with CRLF")),
                    };
                }
            }
        }
        Ok(())
    }

    /// A delimiter has just ended: a header block (or the end) follows.
    fn delimiter(&mut self) {
        self.stage = Stage::Delimiter;
        self.head = 0;
        self.next.matched = 0;
    }
}

/// The limits a [`Form`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct FormLimits {
    /// The whole body (`uploads.max_upload`).
    pub max_body: u64,
    /// Framing and text fields together (`uploads.max_form_overhead`).
    pub max_overhead: u64,
    /// Parts of any kind (`uploads.max_parts + uploads.max_fields`).
    pub max_parts: u64,
}

struct Guard {
    body: BodyDataStream,
    /// The body has ended (it must not be polled again).
    ended: bool,
    /// Bytes read from the body and not handed out yet.
    pending: Bytes,
    scanner: Scanner,
    limits: FormLimits,
    /// Body bytes handed out.
    total: u64,
    /// Text field bytes the handler reported.
    text: u64,
    stop: Option<Stop>,
    /// A piece was handed out since the stream last returned `Pending`.
    handed: bool,
}

impl Guard {
    fn fail(&mut self, s: Stop) -> Poll<Option<Result<Bytes, Stop>>> {
        self.stop = Some(s.clone());
        Poll::Ready(Some(Err(s)))
    }

    /// The counts that grow with the body: parts, then framing and text.
    fn overhead(&self) -> Result<(), Stop> {
        if self.scanner.parts > self.limits.max_parts {
            return Err(Stop::TooManyParts {
                limit: self.limits.max_parts,
            });
        }
        if self.scanner.framing + self.text > self.limits.max_overhead {
            return Err(Stop::Overhead {
                limit: self.limits.max_overhead,
            });
        }
        Ok(())
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Stop>>> {
        if let Some(s) = &self.stop {
            return Poll::Ready(Some(Err(s.clone())));
        }
        if self.handed {
            // One piece per poll: let multer work through it before it takes more.
            self.handed = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        while self.pending.is_empty() {
            if self.ended {
                return Poll::Ready(None);
            }
            match self.body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    let stop = if super::body_idle::is_body_timeout(&e) {
                        Stop::TimedOut
                    } else {
                        Stop::Cut
                    };
                    return self.fail(stop);
                }
                Poll::Ready(Some(Ok(b))) => self.pending = b,
            }
        }
        let piece = self.pending.split_to(self.pending.len().min(PIECE));
        self.total += piece.len() as u64;
        if self.total > self.limits.max_body {
            let limit = self.limits.max_body;
            return self.fail(Stop::TooLarge { limit });
        }
        if let Err(s) = self.scanner.scan(&piece).and_then(|()| self.overhead()) {
            return self.fail(s);
        }
        self.handed = true;
        Poll::Ready(Some(Ok(piece)))
    }
}

/// A request body under the limits; see the module docs. Cloned handles share it.
#[derive(Clone)]
pub struct Form(Arc<Mutex<Guard>>);

impl Form {
    pub fn new(body: Body, boundary: &str, limits: FormLimits) -> Form {
        Form(Arc::new(Mutex::new(Guard {
            body: body.into_data_stream(),
            ended: false,
            pending: Bytes::new(),
            scanner: Scanner::new(boundary),
            limits,
            total: 0,
            text: 0,
            stop: None,
            handed: false,
        })))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the body was stopped, if it was.
    pub fn stop(&self) -> Option<Stop> {
        self.guard().stop.clone()
    }

    /// Counts a text field's bytes against the overhead limit.
    pub fn add_text(&self, n: u64) -> Result<(), Stop> {
        let mut g = self.guard();
        g.text += n;
        let checked = g.overhead();
        if let Err(s) = &checked {
            g.stop = Some(s.clone());
        }
        checked
    }

    /// Reads the rest of the body after multer has seen the closing delimiter (the epilogue,
    /// counted as framing), so a body that is cut or runs on past the limits fails the request.
    pub async fn finish(&self) -> Result<(), Stop> {
        futures_util::future::poll_fn(|cx| {
            let mut g = self.guard();
            loop {
                match g.poll_chunk(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(s))) => return Poll::Ready(Err(s)),
                    Poll::Ready(None) if g.scanner.at_end() => return Poll::Ready(Ok(())),
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(Stop::Malformed(
                            "the body ended before its closing boundary",
                        )));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }
}

impl Stream for Form {
    type Item = Result<Bytes, Stop>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.guard().poll_chunk(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `body` in pieces cut at `cuts`.
    fn scan_in_pieces(boundary: &str, body: &[u8], cuts: &[usize]) -> (Scanner, Result<(), Stop>) {
        let mut s = Scanner::new(boundary);
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(body.len());
        for c in cuts {
            if c > at {
                if let Err(e) = s.scan(&body[at..c]) {
                    return (s, Err(e));
                }
                at = c;
            }
        }
        (s, Ok(()))
    }

    fn naive_find(hay: &[u8], pat: &[u8]) -> Option<usize> {
        hay.windows(pat.len())
            .position(|w| w == pat)
            .map(|p| p + pat.len())
    }

    proptest! {
        #[test]
        fn finder_in_pieces_finds_the_first_match(
            hay in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'-'), Just(b'x')], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let pat = b"\r\n--x-\r".to_vec();
            let mut f = Finder::new(pat.clone());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (hay.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(hay.len());
            let mut at = 0;
            let mut found = None;
            for c in cuts {
                if c > at && found.is_none() {
                    if let Some(end) = f.find(&hay[at..c]) {
                        found = Some(at + end);
                    }
                    at = c;
                }
            }
            prop_assert_eq!(found, naive_find(&hay, &pat));
        }

        #[test]
        fn a_form_scans_the_same_in_any_pieces(cuts in proptest::collection::vec(0usize..400, 0..10)) {
            let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\
                         one\r\n--XyZ  \r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.txt\"\r\n\
                         Content-Type: text/plain\r\n\r\nx\r\n--Xy\r\n-XyZ\r\n--XyZ--\r\nepilogue";
            let (s, r) = scan_in_pieces("XyZ", body, &cuts);
            prop_assert_eq!(r, Ok(()));
            prop_assert!(s.at_end());
            prop_assert_eq!(s.parts, 2);
            // "one" and "x\r\n--Xy\r\n-XyZ" are the contents.
            prop_assert_eq!(s.content, 3 + 13);
            prop_assert_eq!(s.framing + s.content, body.len() as u64);
        }
    }

    #[test]
    fn a_header_block_is_capped_at_8_kib() {
        let mut body =
            b"--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\nX-Pad: "
                .to_vec();
        let head_so_far = body.len() - 3;
        body.extend(std::iter::repeat_n(
            b'a',
            MAX_PART_HEAD as usize - head_so_far - 4,
        ));
        body.extend_from_slice(b"\r\n\r\ndata\r\n--B--");
        // Exactly 8 KiB between the delimiter and the content: accepted.
        let (s, r) = scan_in_pieces("B", &body, &[100, 5000]);
        assert_eq!(r, Ok(()));
        assert!(s.at_end());
        // One byte more: stopped, whatever the pieces.
        body.insert(80, b'a');
        for cuts in [&[][..], &[8000], &[1, 2, 3, 8199]] {
            assert_eq!(
                scan_in_pieces("B", &body, cuts).1,
                Err(Stop::PartHeadTooLarge)
            );
        }
        // A header block that never ends is stopped once it passes the cap.
        let mut s = Scanner::new("B");
        s.scan(b"--B\r\n").unwrap();
        let a = vec![b'a'; 1024];
        let mut fed = 0;
        let err = loop {
            match s.scan(&a) {
                Ok(()) => fed += a.len(),
                Err(e) => break e,
            }
        };
        assert_eq!(err, Stop::PartHeadTooLarge);
        assert!(fed < MAX_PART_HEAD as usize);
    }

    #[test]
    fn an_empty_header_block_is_looked_for_as_multer_does() {
        // multer reads the boundary line's CRLF, then looks for CRLFCRLF from there on: the
        // blank line right after the boundary does not end the headers.
        let mut s = Scanner::new("B");
        s.scan(b"--B\r\n\r\nno blank line here").unwrap();
        assert_eq!(s.parts, 0);
        assert_eq!(s.stage, Stage::Head);
    }

    #[test]
    fn preamble_and_garbage_after_a_boundary() {
        let mut body = vec![b'p'; MAX_PREAMBLE as usize];
        body.extend_from_slice(b"--B--");
        assert_eq!(scan_in_pieces("B", &body, &[10]).1, Ok(()));
        body.insert(0, b'p');
        assert_eq!(scan_in_pieces("B", &body, &[10]).1, Err(Stop::Preamble));
        assert!(matches!(
            scan_in_pieces("B", b"--B-x", &[]).1,
            Err(Stop::Malformed(_))
        ));
        assert!(matches!(
            scan_in_pieces("B", b"--Bxyz\r\n", &[]).1,
            Err(Stop::Malformed(_))
        ));
    }
}
