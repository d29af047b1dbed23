//! Prometheus metrics at `/metrics`. Names follow the conventions: `tessera_` prefix, base
//! units, `_total` on counters, and no user, organisation or file ids as labels (unbounded
//! label sets would make the exporter's memory grow with the store).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::AppState;
use super::error::{ApiError, ApiResult};

/// Compares two secrets in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const DURATION: &str = "tessera_http_request_duration_seconds";
/// From a cached small download (~100 µs) to a multi-GiB transfer.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The process-wide recorder: the `metrics` facade has one global recorder, so every server in
/// a process (tests start several) shares it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.into()), DURATION_BUCKETS)
            .expect("buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process")
    })
}

/// Middleware: every response counted by status class and timed. A streamed body is timed to
/// its headers; the bytes are counted where they are produced.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("tessera_http_responses_total", "class" => class).increment(1);
    metrics::histogram!(DURATION).record(start.elapsed().as_secs_f64());
    resp
}

pub fn upload_done(bytes: u64) {
    metrics::counter!("tessera_uploads_total").increment(1);
    metrics::counter!("tessera_upload_bytes_total").increment(bytes);
}

pub fn upload_failed() {
    metrics::counter!("tessera_upload_failures_total").increment(1);
}

pub fn download_started(bytes: u64) {
    metrics::counter!("tessera_downloads_total").increment(1);
    metrics::counter!("tessera_download_bytes_total").increment(bytes);
}

/// `GET /metrics`: the counters plus store gauges read at scrape time. With
/// `[server] metrics_token` set, only that bearer token (or an admin's) may scrape.
pub async fn render(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if let Some(expected) = &state.settings.server.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string());
        let Some(token) = presented else {
            return Err(ApiError::unauthorized());
        };
        let allowed = constant_time_eq(token.as_bytes(), expected.as_bytes()) || {
            let store = state.store.clone();
            super::blocking(move || store.authenticate(&token))
                .await?
                .is_some_and(|u| u.admin)
        };
        if !allowed {
            return Err(ApiError::unauthorized());
        }
    }
    let store = state.store.clone();
    let stats = super::blocking(move || store.stats()).await?;
    metrics::gauge!("tessera_dedup_ratio").set(stats.dedup_ratio);
    metrics::gauge!("tessera_files").set(stats.files as f64);
    metrics::gauge!("tessera_logical_bytes").set(stats.logical_bytes as f64);
    metrics::gauge!("tessera_stored_bytes").set(stats.stored_bytes as f64);
    metrics::gauge!("tessera_chunks").set(stats.chunks as f64);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response())
}
