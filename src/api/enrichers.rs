//! Dead letters of the enrichers: profiles and records an enricher gave up on after its
//! `retry.maxAttempts`. List them, and enrich one again once the endpoint is fixed (fresh
//! attempts; a record matched meanwhile is enriched in its profile).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::ApiState;
use crate::runtime::auth::Scope;
use crate::runtime::ops::ApiError;
use crate::store::{EnrichDeadLetter, EnrichTarget};

#[derive(Debug, Deserialize, IntoParams)]
pub struct EnrichDeadLetterQuery {
    /// At most this many, newest first (1-500, default 100).
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrichDeadLetterList {
    pub enricher: String,
    pub dead_letters: Vec<EnrichDeadLetter>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrichReplayed {
    pub enricher: String,
    pub kind: String,
    pub target: i64,
}

fn known_enricher(s: &ApiState, enricher: &str) -> Result<(), ApiError> {
    match s.config.enrichers.iter().any(|e| e.name == enricher) {
        true => Ok(()),
        false => Err(ApiError::not_found(&format!("enricher {enricher:?}"))),
    }
}

/// Dead letters of an enricher, newest first.
#[utoipa::path(get, path = "/v1/enrichers/{enricher}/dead-letters", params(("enricher" = String, Path), EnrichDeadLetterQuery),
    responses((status = 200, body = EnrichDeadLetterList), (status = 404, body = crate::runtime::ops::ErrorBody)))]
pub async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(enricher): Path<String>,
    Query(q): Query<EnrichDeadLetterQuery>,
) -> Result<Json<EnrichDeadLetterList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    known_enricher(&s, &enricher)?;
    let limit = super::page_limit(q.limit, 100, 500)?;
    let dead_letters = s.store.enrich_dead_letters(&enricher, limit).await?;
    Ok(Json(EnrichDeadLetterList { enricher, dead_letters }))
}

/// Enrich a dead letter again, with fresh attempts. `kind` is `profile` or `record`.
#[utoipa::path(post, path = "/v1/enrichers/{enricher}/dead-letters/{kind}/{target}/replay",
    params(("enricher" = String, Path), ("kind" = String, Path), ("target" = i64, Path)),
    responses((status = 202, body = EnrichReplayed), (status = 404, body = crate::runtime::ops::ErrorBody)))]
pub async fn replay(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((enricher, kind, target)): Path<(String, String, i64)>,
) -> Result<Response, ApiError> {
    s.tokens.authorize(&headers, Scope::Write)?;
    known_enricher(&s, &enricher)?;
    let job = match kind.as_str() {
        "profile" => EnrichTarget::Profile(target),
        "record" => EnrichTarget::Record(target),
        _ => return Err(ApiError::bad_request("invalid_kind", format!("kind is profile or record, not {kind:?}"))),
    };
    if !s.store.replay_enrichment(&enricher, job).await? {
        return Err(ApiError::not_found(&format!("dead letter {kind}/{target} of enricher {enricher:?}")));
    }
    tracing::info!(%enricher, %kind, target, "enrichment dead letter replayed");
    Ok((StatusCode::ACCEPTED, Json(EnrichReplayed { enricher, kind, target })).into_response())
}

/// The enrichers' routes, merged into the API router.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/enrichers/{enricher}/dead-letters", get(list))
        .route("/v1/enrichers/{enricher}/dead-letters/{kind}/{target}/replay", post(replay))
}

#[derive(OpenApi)]
#[openapi(paths(list, replay), components(schemas(EnrichDeadLetterList, EnrichReplayed, EnrichDeadLetter)))]
pub(super) struct EnrichDoc;
