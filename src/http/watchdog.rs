//! One timer per connection, so that no connection waits on its client forever.
//!
//! A connection is in one of three phases, and each has its deadline:
//!
//! - **head**: waiting for a request's headers, from the accept (or, on a keep-alive
//!   connection, from the first byte after an idle spell): `header_read_timeout`;
//! - **idle**: no request in flight and no byte of a new one: `idle_timeout`;
//! - **busy**: requests in flight. Time the handlers spend working is the server's, not the
//!   client's, and request bodies have their own timer (`body_idle`); what the watchdog times
//!   is a response the client has stopped taking: a response whose next frame the transport
//!   has not come back for within `body_idle_timeout` (a full socket on HTTP/1, a flow-control
//!   window never reopened on HTTP/2 — no write is even attempted then, so watching the
//!   socket's writes would not see it).
//!
//! hyper's own `header_read_timeout` cannot tell the first two apart (hyper 1.x starts it when
//! a keep-alive connection goes idle, and it does not run at all while the auto builder reads
//! the first 24 bytes to tell HTTP/1 from HTTP/2), so the watchdog keeps both; hyper's timer is
//! set to the longer of the two as a backstop. [`TimedIo`] reports reads, [`RequestGuard`] a
//! request from its headers to the end of its response, [`TrackedBody`] the transport taking
//! response frames, and [`watch`] sleeps until the current deadline, woken when a change brings
//! it closer.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The connection's limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    /// Also the longest a response may wait for the client to take its next frame.
    pub body: Duration,
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Header,
    Idle,
    /// The client stopped taking a response.
    Send,
    /// Closed to make room: the connection cap was full and this one had sent no complete
    /// request (see `listen`).
    Displaced,
}

impl Expired {
    pub fn label(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
            Expired::Send => "send",
            Expired::Displaced => "displaced",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Head(Instant),
    Idle(Instant),
    Busy(usize),
}

#[derive(Debug)]
struct Clocks {
    phase: Phase,
    /// Responses (by request number) handed to hyper and waiting for the transport to take
    /// their next frame, since when.
    owed: BTreeMap<u64, Instant>,
    next_request: u64,
    /// HTTP/2 frames arrive on an idle connection (window updates, pings) without starting a
    /// request: on such a connection only the idle timer runs between requests.
    h2: bool,
    /// Whether any request has started on this connection.
    served: bool,
    /// When [`ConnState::displace`] closed it.
    displaced: Option<Instant>,
}

/// What the connection's I/O, its requests and its watchdog share.
pub struct ConnState {
    timeouts: Timeouts,
    clocks: Mutex<Clocks>,
    /// Wakes the watchdog when a deadline appears or moves earlier.
    changed: Notify,
}

impl ConnState {
    /// A connection just accepted: waiting for its first request's headers.
    pub fn new(timeouts: Timeouts) -> Arc<ConnState> {
        Arc::new(ConnState {
            timeouts,
            clocks: Mutex::new(Clocks {
                phase: Phase::Head(Instant::now()),
                owed: BTreeMap::new(),
                next_request: 0,
                h2: false,
                served: false,
                displaced: None,
            }),
            changed: Notify::new(),
        })
    }

    fn clocks(&self) -> std::sync::MutexGuard<'_, Clocks> {
        // Nothing panics while holding it; a poisoned lock still holds consistent figures.
        self.clocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_read(&self) {
        let mut c = self.clocks();
        if let Phase::Idle(_) = c.phase
            && !c.h2
        {
            c.phase = Phase::Head(Instant::now());
            drop(c);
            self.changed.notify_one();
        }
    }

    /// A request's headers have arrived; the guard marks the end of its response when dropped.
    pub fn request_started(self: &Arc<Self>, version: axum::http::Version) -> RequestGuard {
        let mut c = self.clocks();
        c.h2 |= version == axum::http::Version::HTTP_2;
        c.served = true;
        c.phase = match c.phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        let id = c.next_request;
        c.next_request += 1;
        // The deadline moved later (or went away): the watchdog finds out when it wakes.
        RequestGuard {
            state: self.clone(),
            id,
        }
    }

    /// Response `id` waits for the transport to take its next frame.
    fn owe(&self, id: u64) {
        let mut c = self.clocks();
        let first = c.owed.is_empty();
        c.owed.insert(id, Instant::now());
        drop(c);
        // Any other wait started earlier and ends earlier: only the first one is news.
        if first {
            self.changed.notify_one();
        }
    }

    /// The transport came back for response `id`'s next frame.
    fn paid(&self, id: u64) {
        self.clocks().owed.remove(&id);
    }

    fn request_done(&self, id: u64) {
        let mut c = self.clocks();
        c.owed.remove(&id);
        if let Phase::Busy(n) = c.phase {
            c.phase = if n > 1 {
                Phase::Busy(n - 1)
            } else {
                Phase::Idle(Instant::now())
            };
        }
        drop(c);
        self.changed.notify_one();
    }

    /// Since when the connection has been waiting for its first request's headers; `None`
    /// once a request has started (or it was displaced).
    pub fn first_wait(&self) -> Option<Instant> {
        let c = self.clocks();
        match c.phase {
            Phase::Head(since) if !c.served && c.displaced.is_none() => Some(since),
            _ => None,
        }
    }

    /// Closes the connection (through its watchdog) if it is still waiting for its first
    /// request's headers; says whether it did.
    pub fn displace(&self) -> bool {
        let mut c = self.clocks();
        if c.served || !matches!(c.phase, Phase::Head(_)) || c.displaced.is_some() {
            return false;
        }
        c.displaced = Some(Instant::now());
        drop(c);
        self.changed.notify_one();
        true
    }

    /// When the connection expires, and why; `None` while nothing is timed.
    fn deadline(&self) -> Option<(Instant, Expired)> {
        let c = self.clocks();
        let t = &self.timeouts;
        if let Some(at) = c.displaced {
            return Some((at, Expired::Displaced));
        }
        match c.phase {
            Phase::Head(since) => Some((since + t.header, Expired::Header)),
            Phase::Idle(since) => Some((since + t.idle, Expired::Idle)),
            Phase::Busy(_) => {
                let oldest = c.owed.values().min()?;
                Some((*oldest + t.body, Expired::Send))
            }
        }
    }
}

/// Resolves when the connection has outstayed its phase's deadline.
pub async fn watch(state: &ConnState) -> Expired {
    loop {
        // Created before the deadline is read, so a change in between is not missed.
        let changed = state.changed.notified();
        match state.deadline() {
            Some((at, why)) if at <= Instant::now() => return why,
            Some((at, _)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }
}

/// Held by a request from its headers to the end of its response (it rides in the response
/// body, which hyper drops once the last byte is written or the connection is gone).
pub struct RequestGuard {
    state: Arc<ConnState>,
    id: u64,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.state.request_done(self.id);
    }
}

/// A response body carrying its request's [`RequestGuard`], which tells the watchdog whether
/// the transport keeps taking its frames: from the moment the response is handed over, and
/// after each frame, the transport owes a poll. A poll that finds the body not ready is the
/// server's wait, not the client's, and is not timed.
pub struct TrackedBody<B> {
    inner: B,
    guard: RequestGuard,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        guard.state.owe(guard.id);
        TrackedBody { inner, guard }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        this.guard.state.paid(this.guard.id);
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(Some(Ok(_)))) {
            this.guard.state.owe(this.guard.id);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that reports the bytes it reads to the connection's [`ConnState`].
pub struct TimedIo<T> {
    io: T,
    state: Arc<ConnState>,
}

impl<T> TimedIo<T> {
    pub fn new(io: T, state: Arc<ConnState>) -> Self {
        TimedIo { io, state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn timeouts() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            body: Duration::from_secs(45),
        }
    }

    #[tokio::test]
    async fn deadlines_follow_the_phases() {
        let s = ConnState::new(timeouts());
        let start = Instant::now();
        let (at, why) = s.deadline().unwrap();
        assert_eq!(why, Expired::Header);
        assert!(at >= start + Duration::from_secs(29) && at <= start + Duration::from_secs(30));

        let g = s.request_started(axum::http::Version::HTTP_11);
        assert!(s.deadline().is_none(), "a handler at work is not timed");
        let g2 = s.request_started(axum::http::Version::HTTP_11);
        drop(g);
        assert!(s.deadline().is_none(), "one request still in flight");
        drop(g2);
        assert_eq!(s.deadline().unwrap().1, Expired::Idle);
        s.on_read();
        assert_eq!(
            s.deadline().unwrap().1,
            Expired::Header,
            "a new request began"
        );
        s.on_read();
        assert_eq!(s.deadline().unwrap().1, Expired::Header);
    }

    #[tokio::test]
    async fn a_response_is_timed_only_while_the_transport_owes_a_poll() {
        let s = ConnState::new(timeouts());
        let g = s.request_started(axum::http::Version::HTTP_11);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, io::Error>(Frame::data(b)), rx))
        });
        let mut body = TrackedBody::new(http_body_util::StreamBody::new(Box::pin(stream)), g);
        assert_eq!(
            s.deadline().unwrap().1,
            Expired::Send,
            "handed over, not yet taken"
        );
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        assert_eq!(
            s.deadline().unwrap().1,
            Expired::Send,
            "the next frame is owed"
        );
        // The transport comes back and finds the body waiting on the server: not timed.
        let waiting = tokio::time::timeout(Duration::from_millis(20), body.frame()).await;
        assert!(waiting.is_err());
        assert!(s.deadline().is_none());
        drop(tx);
        assert!(body.frame().await.is_none());
        drop(body);
        assert_eq!(s.deadline().unwrap().1, Expired::Idle);
    }

    #[tokio::test]
    async fn http2_frames_between_requests_leave_the_idle_timer_alone() {
        let s = ConnState::new(timeouts());
        drop(s.request_started(axum::http::Version::HTTP_2));
        s.on_read();
        assert_eq!(s.deadline().unwrap().1, Expired::Idle);
    }

    #[tokio::test]
    async fn the_watchdog_fires_at_the_phase_that_expires() {
        let s = ConnState::new(Timeouts {
            header: Duration::from_millis(20),
            idle: Duration::from_secs(3600),
            body: Duration::from_secs(3600),
        });
        assert_eq!(watch(&s).await, Expired::Header);
        let s = ConnState::new(Timeouts {
            header: Duration::from_secs(3600),
            idle: Duration::from_millis(20),
            body: Duration::from_secs(3600),
        });
        drop(s.request_started(axum::http::Version::HTTP_11));
        assert_eq!(watch(&s).await, Expired::Idle);
        let s = ConnState::new(Timeouts {
            header: Duration::from_secs(3600),
            idle: Duration::from_secs(3600),
            body: Duration::from_millis(20),
        });
        let g = s.request_started(axum::http::Version::HTTP_11);
        let body = TrackedBody::new(http_body_util::Empty::<Bytes>::new(), g);
        assert_eq!(watch(&s).await, Expired::Send);
        drop(body);
    }
}
