//! The body-inactivity timeout: a request body that delivers nothing for
//! `server.body_idle_timeout` while someone waits for it fails with [`BodyTimeout`].
//!
//! The clock runs only while the handler is waiting (a poll returned `Pending`), never while
//! the handler is busy elsewhere (a slow put applying backpressure): only the client's silence
//! counts. Every body the service reads passes through this wrapper (`listen` puts it on each
//! request before axum sees it), so a stalled upload is cut whichever handler reads it.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The error a stalled body ends with.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no byte of the request body arrived for {}",
            humantime::format_duration(self.0)
        )
    }
}

impl StdError for BodyTimeout {}

/// Whether `e`, or an error it wraps (axum, multer, io), is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<BodyTimeout>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && is_body_timeout(inner)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The answer to a request whose body stalled: 408, so a client (or proxy) that is still
/// there knows to retry; the connection is closed after it.
pub fn timeout_answer(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message)
}

/// A body that fails with [`BodyTimeout`] when no frame arrives for `timeout` while it is
/// being waited on.
pub struct IdleTimeoutBody<B> {
    inner: B,
    timeout: Duration,
    /// Armed while a poll is pending; re-armed (not reallocated) for the next wait.
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    failed: bool,
}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            armed: false,
            failed: false,
        }
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            // Once cut, always cut: a reader that retries gets the same answer, not the
            // bytes that arrive later.
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    this.sleep.as_mut().reset(Instant::now() + this.timeout);
                    this.armed = true;
                }
                ready!(this.sleep.as_mut().poll(cx));
                this.failed = true;
                tracing::info!(timeout = ?this.timeout, "request body stalled; cutting it");
                Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    type Item = Result<Frame<Bytes>, std::io::Error>;

    #[tokio::test]
    async fn a_silent_body_fails_after_the_timeout_and_stays_failed() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let stream = tokio_stream_from(rx);
        let mut body = IdleTimeoutBody::new(StreamBody::new(stream), Duration::from_millis(50));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"abc"));
        // Nothing more is sent.
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(is_body_timeout(e.as_ref()), "{e}");
        tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
            .await
            .unwrap();
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(is_body_timeout(e.as_ref()));
        assert!(!body.is_end_stream());
    }

    #[tokio::test]
    async fn time_spent_not_waiting_does_not_count() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let mut body = IdleTimeoutBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            Duration::from_millis(50),
        );
        for i in 0..3u8 {
            tx.send(Ok(Frame::data(Bytes::from(vec![i]))))
                .await
                .unwrap();
        }
        body.frame().await.unwrap().unwrap();
        // The reader is busy for twice the timeout; the frames waiting meanwhile still come.
        tokio::time::sleep(Duration::from_millis(150)).await;
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
        drop(tx);
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn the_timeout_is_found_through_wrapping_errors() {
        let inner: BoxError = Box::new(BodyTimeout(Duration::from_secs(1)));
        let axum_err = axum::Error::new(axum::Error::new(inner));
        assert!(is_body_timeout(&axum_err));
        let io = std::io::Error::other(axum_err);
        assert!(is_body_timeout(&io));
        assert!(!is_body_timeout(&std::io::Error::other("reset")));
    }

    fn tokio_stream_from(
        rx: tokio::sync::mpsc::Receiver<Item>,
    ) -> impl futures_util::Stream<Item = Item> + Unpin {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
            .boxed()
    }
}
