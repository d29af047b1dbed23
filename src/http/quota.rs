//! The quota endpoints, and the webhook that forwards quota warnings.
//!
//! - `GET /api/quota`: the caller's quota (used, limit, percentage, level, organisation).
//! - `GET /api/quota/history?days=30`: the caller's daily usage, trend and 30-day projection
//!   (an admin may add `owner=`).
//! - `GET /api/admin/quota/report?top=10`, `GET /api/admin/quota/alerts?threshold=0.8`,
//!   `GET /api/admin/quota/orgs`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Admin, User};
use super::error::{ApiError, ApiResult};
use super::{AppState, blocking};
use crate::quota::QuotaEvent;
use crate::store::Store;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(q: QueryResult<T>) -> ApiResult<T> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// `GET /api/quota`.
pub async fn mine(State(state): State<AppState>, User(user): User) -> ApiResult<Response> {
    let store = state.store.clone();
    let status = blocking(move || store.quota_status(&user.name)).await?;
    Ok(Json(status).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryParams {
    days: Option<u32>,
    owner: Option<String>,
}

/// `GET /api/quota/history`.
pub async fn history(
    State(state): State<AppState>,
    User(user): User,
    params: QueryResult<HistoryParams>,
) -> ApiResult<Response> {
    let p = query(params)?;
    let owner = match p.owner {
        Some(o) if o != user.name && !user.admin => {
            return Err(ApiError::forbidden(
                "only admins may read another owner's history",
            ));
        }
        Some(o) => o,
        None => user.name,
    };
    let store = state.store.clone();
    let h = blocking(move || store.quota_history(&owner, p.days.unwrap_or(30))).await?;
    Ok(Json(h).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ReportParams {
    top: Option<usize>,
}

/// `GET /api/admin/quota/report`.
pub async fn report(
    State(state): State<AppState>,
    Admin(_): Admin,
    params: QueryResult<ReportParams>,
) -> ApiResult<Response> {
    let p = query(params)?;
    let store = state.store.clone();
    let r = blocking(move || store.quota_report(p.top.unwrap_or(10).min(1000))).await?;
    Ok(Json(r).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AlertParams {
    threshold: Option<f64>,
}

/// `GET /api/admin/quota/alerts`.
pub async fn alerts(
    State(state): State<AppState>,
    Admin(_): Admin,
    params: QueryResult<AlertParams>,
) -> ApiResult<Response> {
    let p = query(params)?;
    let threshold = p.threshold.unwrap_or(0.8);
    let store = state.store.clone();
    let users = blocking(move || store.quota_alerts(threshold)).await?;
    Ok(Json(json!({ "threshold": threshold, "users": users })).into_response())
}

/// `GET /api/admin/quota/orgs`.
pub async fn orgs(State(state): State<AppState>, Admin(_): Admin) -> ApiResult<Response> {
    let store = state.store.clone();
    let orgs = blocking(move || store.quota_orgs()).await?;
    Ok(Json(json!({ "orgs": orgs })).into_response())
}

/// Forwards every quota warning to `url` on a thread of its own, so a slow or dead receiver
/// never holds up an upload (events wait in the subscription's bounded queue). Failures are
/// logged and the event is dropped: the warning is also in the log.
pub fn start_webhook(store: &Store, url: String, timeout: Duration) {
    let events = store.subscribe_quota_events();
    let spawned = std::thread::Builder::new()
        .name("tessera-quota-webhook".into())
        .spawn(move || {
            for ev in events {
                if let Err(e) = post_event(&url, &ev, timeout) {
                    tracing::warn!(%url, owner = %ev.owner, error = %e, "quota webhook failed");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the quota webhook thread");
    }
}

/// One POST with HTTP/1.1 and `Connection: close`; any 2xx answer is success.
fn post_event(url: &str, ev: &QuotaEvent, timeout: Duration) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "not an http:// URL".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr_text = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = addr_text
        .to_socket_addrs()
        .map_err(|e| format!("resolving {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let body = serde_json::to_vec(&json!({ "type": "quota_warning", "event": ev }))
        .expect("events serialise");
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nUser-Agent: tessera\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(&body))
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = s.take(4096).read_to_end(&mut answer);
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status in the answer".to_string())?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}
