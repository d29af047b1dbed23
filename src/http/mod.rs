//! The HTTP service (feature `server`): axum on tokio over the engine.
//!
//! Handlers stay thin: they authenticate, check access, and call the `Store` on tokio's
//! blocking pool ([`blocking`]) so engine work never stalls the async threads. Bodies stream
//! both ways through bounded channels (`bridge`), so a 5 GiB upload or download holds a few
//! hundred KiB. Engine errors become statuses in one place (`error`). Connections are accepted
//! by `listen` (hyper-util under a connection cap), each with a `watchdog` timer, and every
//! request body stalls out after `server.body_idle_timeout` (`body_idle`).

mod admin;
mod auth;
mod body_idle;
mod bridge;
mod download;
pub mod error;
pub mod fdlimit;
mod files;
mod form;
#[cfg(feature = "media")]
mod images;
pub mod links;
mod listen;
pub mod maintenance;
mod metrics;
mod multipart;
mod quota;
mod sharing;
pub mod tus;
mod watchdog;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, delete, get, post};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Settings;
use crate::error::{Error, IoContext, Result};
use crate::store::Store;
use error::{ApiError, ApiResult};
use links::Signer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub signer: Arc<Signer>,
    /// Base of the URLs the service hands out (links, tus `Location`), no trailing slash.
    pub public_url: Arc<str>,
}

impl AppState {
    /// Now, in Unix seconds, from the store's clock (tests move it).
    pub fn now_s(&self) -> i64 {
        self.store.inner.config.clock.now_ms().div_euclid(1000)
    }
}

/// Runs engine work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format_args!("worker failed: {e}"))),
    }
}

#[cfg(feature = "media")]
fn image_routes() -> Router<AppState> {
    images::routes()
}

#[cfg(not(feature = "media"))]
fn image_routes() -> Router<AppState> {
    Router::new()
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    let id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route(
            "/api/files",
            // Only upload routes take large bodies; the rest keep axum's 2 MB default.
            post(files::upload)
                .layer(DefaultBodyLimit::disable())
                .get(files::list),
        )
        // One URL, answers that differ by caller (owner, admin, anyone): `Vary: Authorization`.
        .route(
            "/api/files/{id}",
            get(files::get)
                .delete(files::delete)
                .layer(axum::middleware::map_response(download::vary_by_caller)),
        )
        .route(
            "/api/files/{id}/meta",
            get(files::meta).layer(axum::middleware::map_response(download::vary_by_caller)),
        )
        .route(
            "/api/files/{id}/versions",
            get(files::versions).layer(axum::middleware::map_response(download::vary_by_caller)),
        )
        .route("/api/files/{id}/undelete", post(files::undelete))
        .route("/api/files/{id}/link", post(sharing::link))
        .route("/api/files/{id}/links", delete(sharing::revoke))
        .route("/api/files/{id}/visibility", post(sharing::visibility))
        .route("/d/{token}", get(sharing::signed))
        .merge(image_routes())
        // tus: one handler per path, which applies X-HTTP-Method-Override itself.
        .route(
            "/api/uploads",
            any(tus::collection).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/uploads/{id}",
            any(tus::resource).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/admin/storage/stats", get(files::admin_stats))
        .route("/api/admin/quarantine", get(files::quarantine))
        .route("/api/admin/scan/rescan", post(files::rescan))
        // Maintenance: reports and cleanup jobs (admin only).
        .route("/api/admin/cleanup/orphaned", get(admin::orphaned))
        .route("/api/admin/cleanup/duplicates", get(admin::duplicates))
        .route("/api/admin/cleanup/deleted", post(admin::deleted))
        .route("/api/admin/cleanup/temp", post(admin::temp))
        .route("/api/admin/gc", post(admin::gc))
        .route("/api/admin/reports/storage", get(admin::storage))
        .route("/api/quota", get(quota::mine))
        .route("/api/quota/history", get(quota::history))
        .route("/api/admin/quota/report", get(quota::report))
        .route("/api/admin/quota/alerts", get(quota::alerts))
        .route("/api/admin/quota/orgs", get(quota::orgs))
        .route("/healthz", get(files::healthz))
        .route("/metrics", get(metrics::render))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(state)
        .layer(axum::middleware::from_fn(bridge::drain_on_error))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(error::with_request_id))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(PropagateRequestIdLayer::new(id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &axum::http::Request<axum::body::Body>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), id)
            },
        ))
        .layer(SetRequestIdLayer::new(id, MakeRequestUuid))
}

/// The HMAC key for signed links: from the configuration, else `<store>/signing.key`, made
/// with 32 random bytes on first use.
pub fn load_signer(store_dir: &Path, settings: &Settings) -> Result<Signer> {
    let hex_key = |what: &str, s: &str| -> Result<Vec<u8>> {
        let s = s.trim();
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .filter(|b| b.len() >= 32 && s.len().is_multiple_of(2))
            .ok_or_else(|| {
                Error::InvalidInput(format!("{what} must be at least 32 bytes written as hex"))
            })?;
        Ok(bytes)
    };
    let previous = settings
        .links
        .previous_keys
        .iter()
        .map(|k| hex_key("links.previous_keys", k))
        .collect::<Result<Vec<_>>>()?;
    if let Some(k) = &settings.links.signing_key {
        return Ok(Signer::new(hex_key("links.signing_key", k)?, previous));
    }
    let path = store_dir.join("signing.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(Signer::new(k, previous)),
        Ok(_) => {
            return Err(Error::InvalidInput(format!(
                "{} is shorter than 32 bytes; delete it to make a new key (old links stop working)",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| Error::Io {
        context: "drawing random bytes for the signing key".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let tmp = store_dir.join("signing.key.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        f.write_all(&key)
            .and_then(|_| f.sync_all())
            .ctx(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &path).ctx(|| format!("installing {}", path.display()))?;
    Ok(Signer::new(key, previous))
}

/// A bound, not yet running service.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    budget: fdlimit::FdBudget,
}

impl Server {
    /// Binds `settings.server.listen` (port 0 picks a free port). Raises the process's soft
    /// open-file limit to the hard limit and derives the connection cap from it (logged; see
    /// `fdlimit`), after the store is open, so its packs count as in use.
    pub async fn bind(store: Store, settings: Settings) -> Result<Server> {
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .ctx(|| format!("listening on {}", settings.server.listen))?;
        let addr = listener
            .local_addr()
            .ctx(|| "reading the bound address".into())?;
        let public_url = match &settings.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{addr}"),
        };
        let signer = load_signer(store.dir(), &settings)?;
        metrics::handle();
        let budget = fdlimit::budget(&settings.server);
        budget.log();
        Ok(Server {
            budget,
            listener,
            state: AppState {
                store,
                settings: Arc::new(settings),
                signer: Arc::new(signer),
                public_url: public_url.into(),
            },
        })
    }

    /// The connection cap and the figures it came from.
    pub fn budget(&self) -> &fdlimit::FdBudget {
        &self.budget
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight (idle
    /// connections close; the timeouts keep running). Meanwhile
    /// expired upload sessions are swept every `uploads.sweep_interval` (and once at start),
    /// and, with `maintenance.enabled`, the maintenance scheduler runs its jobs.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let sweeper = tokio::spawn(tus::sweep_loop(
            self.state.store.clone(),
            self.state.settings.uploads.sweep_interval,
        ));
        if let Some(url) = &self.state.settings.quotas.webhook {
            quota::start_webhook(
                &self.state.store,
                url.clone(),
                self.state.settings.quotas.webhook_timeout,
            );
        }
        let (stop_maintenance, stopped) = tokio::sync::watch::channel(false);
        let maintenance = self.state.settings.maintenance.enabled.then(|| {
            let m = &self.state.settings.maintenance;
            let jobs = m.jobs(&self.state.settings.policy());
            let scheduler =
                crate::maintenance::scheduler::Scheduler::new(self.state.store.clone(), jobs);
            tokio::spawn(maintenance::run(scheduler, stopped))
        });
        // Image variants: resumes the jobs a previous run left pending. Dropped (workers
        // joined after their current job) when serving ends.
        #[cfg(feature = "media")]
        let image_workers = self.state.store.start_image_workers()?;
        let server = &self.state.settings.server;
        let limits = listen::Limits {
            timeouts: watchdog::Timeouts {
                header: server.header_read_timeout,
                idle: server.idle_timeout,
                body: server.body_idle_timeout,
            },
            max_connections: self.budget.max_connections,
        };
        let app = router(self.state);
        listen::serve(self.listener, app, limits, shutdown).await;
        sweeper.abort();
        let _ = stop_maintenance.send(true);
        if let Some(task) = maintenance {
            // Waits for a job in progress to finish its current step.
            let _ = task.await;
        }
        #[cfg(feature = "media")]
        let _ = tokio::task::spawn_blocking(move || drop(image_workers)).await;
        Ok(())
    }
}
