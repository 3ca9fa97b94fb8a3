//! The data-steward console: a web page served from the binary (its files are compiled in, so
//! there is nothing to build or host), and `GET /v1/session`, which tells the page what the
//! signed-in token may do. The page calls the same REST routes as any client.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::ApiState;
use crate::runtime::ops::{self, ApiError};

/// The page's files: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("console/index.html")),
    ("console.css", "text/css; charset=utf-8", include_str!("console/console.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("console/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("console/api.js")),
    ("ui.js", "text/javascript; charset=utf-8", include_str!("console/ui.js")),
    ("review.js", "text/javascript; charset=utf-8", include_str!("console/review.js")),
    ("profiles.js", "text/javascript; charset=utf-8", include_str!("console/profiles.js")),
    ("quarantine.js", "text/javascript; charset=utf-8", include_str!("console/quarantine.js")),
    ("erasure.js", "text/javascript; charset=utf-8", include_str!("console/erasure.js")),
];

/// The page loads nothing but its own files and talks to nothing but this API.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the presented token may do, and what the page needs to offer it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The token's name (as decisions and erasures record it).
    pub token: String,
    /// `read`, `write`, `erase`.
    pub scopes: Vec<String>,
    pub platform: String,
    /// The platform's Sources (the review queue and quarantine filter by them).
    pub sources: Vec<String>,
}

#[utoipa::path(get, path = "/v1/session", tag = "session",
    responses((status = 200, body = Session), (status = 401, body = ops::ErrorBody)))]
async fn session(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Session>, ApiError> {
    let (token, scopes) = s.tokens.identify(&headers)?;
    Ok(Json(Session {
        token,
        scopes: scopes.into_iter().map(|scope| scope.name().to_string()).collect(),
        platform: s.config.platform.clone(),
        sources: s.config.sources.iter().map(|source| source.name.clone()).collect(),
    }))
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    serve(&name)
}

fn serve(name: &str) -> Result<Response, ApiError> {
    let (_, content_type, body) =
        ASSETS.iter().find(|(file, ..)| *file == name).ok_or_else(|| ApiError::not_found(&format!("console file {name:?}")))?;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // a new binary serves new files under the same names
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

#[derive(OpenApi)]
#[openapi(paths(session), components(schemas(Session)))]
pub struct ConsoleDoc;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/session", get(session))
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { serve("index.html") }))
        .route("/console/{name}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page imports or links is served (a missing one would break it silently).
    #[test]
    fn every_file_the_page_names_is_served() {
        let named = |text: &str, marker: &str| -> Vec<String> {
            text.split(marker).skip(1).filter_map(|rest| rest.split(['"', '\'']).next()).map(str::to_string).collect()
        };
        for (file, _, text) in ASSETS {
            for reference in named(text, "from \"./").into_iter().chain(named(text, "href=\"./")).chain(named(text, "src=\"./")) {
                assert!(ASSETS.iter().any(|(name, ..)| *name == reference), "{file} names {reference}, which is not served");
            }
        }
    }
}
