//! The accept loop: hyper-util's auto builder (HTTP/1.1, and HTTP/2 with prior knowledge) over
//! the router, with a cap on connections and a timer on each.
//!
//! - The cap is a semaphore of `max_connections` permits, taken *before* `accept`: over the
//!   cap, new connections wait in the kernel's listen backlog, holding none of our
//!   descriptors, and are accepted in turn as connections end (the permit rides with the
//!   connection's task). Connections already open keep being served meanwhile.
//! - While the cap is full, the oldest connection that has sent no complete request since it
//!   was accepted, for at least [`displace_after`], is closed to make room (as nginx reuses
//!   connections waiting for their first request). So sockets that connect and say nothing (or
//!   trickle a header) cannot keep a new client — a health check — waiting for the whole
//!   header timeout; connections that have been served a request, idle or not, are never
//!   displaced, and wait out their own timers.
//! - Accept errors that are about the process, not the peer (EMFILE, ENFILE, ENOBUFS), back off
//!   (10 ms doubling to 1 s) instead of spinning on a listener that stays readable; the loop
//!   never ends on an accept error.
//! - Each connection runs under a `watchdog` (header, idle and send timeouts) and each request
//!   body under `body_idle`.
//! - Shutdown stops accepting, asks every connection to finish gracefully (in-flight requests
//!   complete, idle ones close; the timers still run), and waits for them all.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::body_idle::IdleTimeoutBody;
use super::watchdog::{self, ConnState, Expired, TimedIo, Timeouts, TrackedBody};

/// What bounds the connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeouts: Timeouts,
    pub max_connections: usize,
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` completes, then lets the open connections
/// finish (see the module docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // The watchdog times the header and idle waits apart; hyper's own timer (which covers
        // both, see `watchdog`) is the backstop at the longer of the two.
        .header_read_timeout(limits.timeouts.header.max(limits.timeouts.idle));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_MIN;
    let mut waiting = Waiting::new(limits.max_connections);
    let grace = displace_after(limits.timeouts.header);

    'serving: loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            // Full: make room if someone has been saying nothing for long enough, then wait
            // for a slot (looking again every `grace`, as more connections grow old enough).
            Err(_) => loop {
                let before = Instant::now()
                    .checked_sub(grace)
                    .unwrap_or_else(Instant::now);
                waiting.displace_oldest(before);
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break 'serving,
                    p = permits.clone().acquire_owned() => {
                        break p.expect("the semaphore is never closed");
                    }
                    _ = tokio::time::sleep(grace) => {}
                }
            },
        };
        let tcp = loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break 'serving,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((tcp, _)) => {
                    backoff = BACKOFF_MIN;
                    break tcp;
                }
                // The peer gave up before we got to it: nothing wrong here.
                Err(e) if is_peer_error(&e) => continue,
                Err(e) => {
                    metrics::counter!("tessera_http_accept_errors_total").increment(1);
                    if backoff == BACKOFF_MIN {
                        tracing::warn!(error = %e, "accepting a connection failed; backing off");
                    } else {
                        tracing::debug!(error = %e, ?backoff, "accept still failing");
                    }
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break 'serving,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        let state = ConnState::new(limits.timeouts);
        waiting.push(&state);
        connections.spawn(connection(
            tcp,
            state,
            builder.clone(),
            router.clone(),
            limits.timeouts,
            stop.clone(),
            permit,
        ));
    }

    // No new connections (the backlog's are reset), then the open ones wind down.
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// Errors of one connection that `accept` reports (Linux passes some through).
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Serves one connection until it ends, its watchdog expires, or shutdown finishes it.
async fn connection(
    tcp: TcpStream,
    state: Arc<ConnState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    timeouts: Timeouts,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    // Without TCP_NODELAY a response written as headers then body waits for the client's
    // delayed ACK (Nagle): 40 ms per small download.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!(error = %e, "could not set TCP_NODELAY");
    }
    let _open = OpenGauge::new();
    let service = ConnService {
        router,
        state: state.clone(),
        body_idle: timeouts.body,
    };
    let conn = builder.serve_connection(TokioIo::new(TimedIo::new(tcp, state.clone())), service);
    tokio::pin!(conn);
    let expired = watchdog::watch(&state);
    tokio::pin!(expired);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            why = &mut expired => {
                // Dropping the connection closes the socket; a request still in flight (a
                // stalled download) is cut.
                closed_by(why);
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// How long a connection must have waited for its first request before a full cap may displace
/// it: a client's headers normally follow its connection within a round trip, so this only
/// spares clients on very slow links. A tenth of the header timeout, between 10 ms and 1 s.
fn displace_after(header_timeout: Duration) -> Duration {
    (header_timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The connections still waiting for their first request, in accept order (so oldest first).
struct Waiting {
    queue: VecDeque<Weak<ConnState>>,
    /// Length at which entries that no longer wait are swept out, so the queue stays within a
    /// small multiple of the connections open (entries leave the front only under pressure).
    sweep_at: usize,
    floor: usize,
}

impl Waiting {
    fn new(max_connections: usize) -> Self {
        let floor = max_connections.clamp(64, 1 << 16) * 2;
        Waiting {
            queue: VecDeque::new(),
            sweep_at: floor,
            floor,
        }
    }

    fn push(&mut self, c: &Arc<ConnState>) {
        self.queue.push_back(Arc::downgrade(c));
        if self.queue.len() >= self.sweep_at {
            self.queue
                .retain(|w| w.upgrade().is_some_and(|c| c.first_wait().is_some()));
            self.sweep_at = (self.queue.len() * 2).max(self.floor);
        }
    }

    /// Displaces the oldest connection that has waited for its first request since before
    /// `before`, if there is one.
    fn displace_oldest(&mut self, before: Instant) {
        while let Some(front) = self.queue.front() {
            match front.upgrade().and_then(|c| Some((c.first_wait()?, c))) {
                // Everything behind it was accepted later still.
                Some((since, _)) if since > before => return,
                Some((_, c)) => {
                    self.queue.pop_front();
                    if c.displace() {
                        return;
                    }
                }
                None => {
                    self.queue.pop_front();
                }
            }
        }
    }
}

fn closed_by(why: Expired) {
    tracing::debug!(timeout = why.label(), "closing a connection that timed out");
    metrics::counter!("tessera_http_connection_timeouts_total", "timeout" => why.label())
        .increment(1);
}

/// `tessera_http_connections`: the connections open now.
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        metrics::gauge!("tessera_http_connections").increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("tessera_http_connections").decrement(1.0);
    }
}

/// The router as hyper sees it on one connection: each request's body gets the inactivity
/// timer, and its response carries the guard that tells the watchdog when it is done.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
    body_idle: Duration,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<TrackedBody<Body>>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody<Body>>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let guard = self.state.request_started(req.version());
        let body_idle = self.body_idle;
        let req = req.map(|b| Body::new(IdleTimeoutBody::new(b, body_idle)));
        let router = self.router.clone();
        Box::pin(async move {
            let resp = router.oneshot(req).await?;
            Ok(resp.map(|b| TrackedBody::new(b, guard)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            body: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_full_cap_displaces_the_oldest_connection_that_never_sent_a_request() {
        let mut w = Waiting::new(8);
        let served = ConnState::new(timeouts());
        w.push(&served);
        let guard = served.request_started(axum::http::Version::HTTP_11);
        let silent_old = ConnState::new(timeouts());
        w.push(&silent_old);
        let gone = ConnState::new(timeouts());
        w.push(&gone);
        drop(gone);
        let cut = Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let silent_young = ConnState::new(timeouts());
        w.push(&silent_young);

        w.displace_oldest(cut);
        assert!(
            silent_old.first_wait().is_none(),
            "the oldest silent one went"
        );
        assert!(
            served.first_wait().is_none() && !served.displace(),
            "served ones stay"
        );
        assert!(silent_young.first_wait().is_some(), "too young to displace");
        w.displace_oldest(cut);
        assert!(silent_young.first_wait().is_some());
        w.displace_oldest(Instant::now());
        assert!(silent_young.first_wait().is_none());
        assert!(w.queue.is_empty());
        drop(guard);
    }

    #[test]
    fn the_queue_sweeps_connections_that_stopped_waiting() {
        let mut w = Waiting::new(8);
        for _ in 0..10_000 {
            let c = ConnState::new(timeouts());
            w.push(&c);
        }
        assert!(w.queue.len() <= 2 * w.floor, "{}", w.queue.len());
    }
}
