//! Admin maintenance endpoints: reports (unread files, duplicates, storage) and cleanup jobs
//! (purge of deleted files, the upload sweep, GC), each with a dry run where it deletes.
//! Every one needs an admin token; the engine work runs on the blocking pool.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Admin;
use super::error::{ApiError, ApiResult};
use super::{AppState, blocking};
use crate::id::FileId;
use crate::maintenance::gc::GcOptions;
use crate::maintenance::reports::UnreadQuery;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Query strings are strict: an unknown or malformed parameter is a 400 naming it, not
/// silently a default (a typo in `dry_run` must not run the real job).
fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrphanedParams {
    /// Not read for at least this many days (default 90).
    days: Option<u32>,
    owner: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/admin/cleanup/orphaned?days=90[&owner=&after=&limit=]`: files nobody has read
/// for `days` days (orphan candidates), a page at a time.
pub async fn orphaned(
    State(state): State<AppState>,
    Admin(_): Admin,
    params: Result<Query<OrphanedParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(params)?;
    let after = match &p.after {
        Some(a) => Some(
            a.parse::<FileId>()
                .map_err(|_| ApiError::bad_request(format!("after {a:?} is not a file id")))?,
        ),
        None => None,
    };
    let q = UnreadQuery {
        days: p.days.unwrap_or(90),
        owner: p.owner,
        after,
        limit: p.limit,
    };
    let store = state.store.clone();
    let report = blocking(move || store.report_unread(&q)).await?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuplicatesParams {
    limit: Option<usize>,
}

/// `GET /api/admin/cleanup/duplicates[?limit=N]`: groups of identical files and what dedup
/// saves.
pub async fn duplicates(
    State(state): State<AppState>,
    Admin(_): Admin,
    params: Result<Query<DuplicatesParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(params)?;
    let store = state.store.clone();
    let report = blocking(move || store.report_duplicates(p.limit)).await?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletedParams {
    /// Purge files deleted at least this many days ago (default 30).
    days: Option<u32>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/admin/cleanup/deleted?days=30[&dry_run=true]`: purges soft-deleted files.
pub async fn deleted(
    State(state): State<AppState>,
    Admin(admin): Admin,
    params: Result<Query<DeletedParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(params)?;
    let days = p.days.unwrap_or(30);
    tracing::info!(admin = %admin.name, days, dry_run = p.dry_run, "purge of deleted files");
    let store = state.store.clone();
    let report = blocking(move || store.purge_deleted(DAY * days, p.dry_run)).await?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunParams {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/admin/cleanup/temp[?dry_run=true]`: expired upload sessions and staged files no
/// session owns.
pub async fn temp(
    State(state): State<AppState>,
    Admin(admin): Admin,
    params: Result<Query<DryRunParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(params)?;
    tracing::info!(admin = %admin.name, dry_run = p.dry_run, "upload sweep");
    let store = state.store.clone();
    let report = blocking(move || store.upload_sweep(p.dry_run)).await?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcParams {
    #[serde(default)]
    dry_run: bool,
    /// Seconds a chunk stays unreferenced before it is swept (default 3600).
    grace_s: Option<u64>,
    /// Garbage share (0..1) at which a pack is rewritten (default 0.2).
    threshold: Option<f64>,
}

/// `POST /api/admin/gc[?dry_run=true&grace_s=&threshold=]`: sweep and compaction.
pub async fn gc(
    State(state): State<AppState>,
    Admin(admin): Admin,
    params: Result<Query<GcParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(params)?;
    if p.threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(ApiError::bad_request("threshold must be between 0 and 1"));
    }
    let d = GcOptions::default();
    let opts = GcOptions {
        dry_run: p.dry_run,
        grace: p.grace_s.map_or(d.grace, Duration::from_secs),
        compact_threshold: p.threshold.unwrap_or(d.compact_threshold),
        ..d
    };
    tracing::info!(admin = %admin.name, dry_run = p.dry_run, "garbage collection");
    let store = state.store.clone();
    let report = blocking(move || store.gc(&opts)).await?;
    Ok(Json(report).into_response())
}

/// `GET /api/admin/reports/storage`: files, versions and bytes by category, owner and tier.
pub async fn storage(State(state): State<AppState>, Admin(_): Admin) -> ApiResult<Response> {
    let store = state.store.clone();
    let report = blocking(move || store.report_storage()).await?;
    Ok(Json(report).into_response())
}
