//! Image endpoints (feature `media`): `POST /api/images` (the multipart upload of
//! `multipart::receive`, storing through `Store::put_image`, with the variant options as form
//! fields) and `GET /api/images/{id}/variants` (processing status and a signed link per
//! variant; signed links to variants answer `Cache-Control: private, max-age=…, immutable`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use super::auth::{Subject, User, can_write};
use super::error::{ApiError, ApiResult};
use super::files;
use super::multipart::{self, UploadKind};
use super::sharing::sign;
use crate::media::ImageOptions;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/images",
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/images/{id}/variants", get(variants))
}

/// One form field of `POST /api/images`: `thumbnails`, `optimise`, `jpeg` (booleans),
/// `max_kb`, `watermark` (the text), `watermark_position`, `watermark_opacity`. Others are
/// ignored, as on `POST /api/files`.
pub(crate) fn option_field(o: &mut ImageOptions, name: &str, text: &str) -> ApiResult<()> {
    let text = text.trim();
    let bad = |what: &str| ApiError::bad_request(format!("form field {name:?}: {what}"));
    let flag = || match text {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad("expected true or false")),
    };
    match name {
        "thumbnails" => o.thumbnails = flag()?,
        "optimise" | "optimize" => o.optimise = flag()?,
        "jpeg" => o.jpeg = flag()?,
        "max_kb" => o.max_kb = Some(text.parse().map_err(|_| bad("expected a number of KiB"))?),
        "watermark" => o.watermark.get_or_insert_with(Default::default).text = text.to_string(),
        "watermark_position" => {
            o.watermark.get_or_insert_with(Default::default).position =
                text.parse().map_err(|e: String| bad(&e))?
        }
        "watermark_opacity" => {
            let v: f32 = text.parse().map_err(|_| bad("expected 0 to 1"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(bad("expected 0 to 1"));
            }
            o.watermark.get_or_insert_with(Default::default).opacity = v;
        }
        _ => {}
    }
    Ok(())
}

/// `POST /api/images`: like `POST /api/files`, each file probed (422 `image_invalid` or
/// `image_too_large`, nothing stored) and its variants scheduled.
async fn upload(
    State(state): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let kind = UploadKind::Images(ImageOptions::default());
    multipart::receive(state, user, headers, body, kind).await
}

/// `GET /api/images/{id}/variants`: the current version's processing status and its
/// variants. The owner and admins get a signed link per variant, pinned to its version (links
/// only they may mint); anyone else who may read the image gets each variant's plain URL
/// (`/api/files/{variant}?version=N`), which serves under the original's rule.
async fn variants(
    State(state): State<AppState>,
    User(user): User,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let image = files::readable(&state, Some(&user), &raw).await?;
    let store = state.store.clone();
    let (id, version) = (image.file.id, image.file.version);
    let owner = can_write(&user, &image.file);
    let ttl = state.settings.links.default_ttl.as_secs();
    let expires_s = state.now_s() + ttl as i64;
    let (status, subjects) = super::blocking(move || {
        let status = store.image_status_of(id, version)?;
        // A variant gone meanwhile (its original purged under us) is left out.
        let subjects = status
            .variants
            .iter()
            .map(|v| match Subject::load(&store, v.file, Some(v.version)) {
                Ok(s) => Ok(Some(s)),
                Err(crate::error::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            })
            .collect::<crate::error::Result<Vec<_>>>()?;
        Ok((status, subjects))
    })
    .await?;
    let variants: Vec<_> = status
        .variants
        .iter()
        .zip(&subjects)
        .filter_map(|(v, s)| Some((v, s.as_ref()?)))
        .map(|(v, s)| {
            let mut j = json!(v);
            if owner {
                if let Some(token) = sign(&state, s, expires_s, 0) {
                    j["url"] = json!(format!("{}/d/{token}", state.public_url));
                    j["expires_at"] = json!(expires_s);
                }
            } else {
                j["url"] = json!(format!(
                    "{}/api/files/{}?version={}",
                    state.public_url, v.file, v.version
                ));
            }
            j
        })
        .collect();
    Ok(Json(json!({
        "file": status.file,
        "version": status.version,
        "status": status.status,
        "attempts": status.attempts,
        "error": status.error,
        "variants": variants,
    }))
    .into_response())
}
