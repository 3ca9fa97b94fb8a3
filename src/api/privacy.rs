//! GDPR routes: erasure (erase scope), its audit entry, export and consents (read scope).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Scope;
use super::ops::{self, ApiError};
use super::{ApiState, parse_profile_id};
use crate::privacy::{Consents, ErasureReport, Export, Privacy, PrivacyError, Subject};
use crate::store::ErasureRow;

impl From<PrivacyError> for ApiError {
    fn from(e: PrivacyError) -> Self {
        match e {
            PrivacyError::NotFound(what) => ApiError::not_found(&what),
            PrivacyError::Invalid(message) => ApiError::bad_request("invalid_request", message),
            PrivacyError::Match(e) if e.is_retryable() => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "the profile kept changing; retry")
            }
            e @ (PrivacyError::InFlight | PrivacyError::Changed) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
            }
            PrivacyError::Match(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.reason(), e.to_string()),
            PrivacyError::Store(e) => e.into(),
        }
    }
}

fn privacy(s: &ApiState) -> Privacy {
    Privacy::new(s.store.clone(), s.config.clone())
}

/// Whom to erase: a profile id, or an identifier that finds every profile holding it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErasureRequest {
    /// `p<number>`; an alias erases its survivor.
    pub profile_id: Option<String>,
    /// `email`, `phone`, `nationalId` or `identifiers.<name>`, with `value`.
    pub attribute: Option<String>,
    pub value: Option<String>,
    /// Region for a phone number without a country code (default: the first Source's).
    pub region: Option<String>,
    /// Why, as a short code kept in the audit (`subject-request`, `art17:ticket-123`): letters,
    /// digits and `._:-`, so that no personal data ends up in the audit.
    pub reason: String,
}

impl ErasureRequest {
    fn subject(&self) -> Result<Subject, ApiError> {
        let code_ok = (1..=64).contains(&self.reason.len())
            && self.reason.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
        if !code_ok {
            return Err(ApiError::bad_request("invalid_reason", "reason must be 1-64 letters, digits or ._:- (a code, no personal data)"));
        }
        match (&self.profile_id, &self.attribute, &self.value) {
            (Some(id), None, None) => Ok(Subject::Profile(parse_profile_id(id)?)),
            (None, Some(attribute), Some(value)) => {
                Ok(Subject::Identifier { attribute: attribute.clone(), value: value.clone(), region: self.region.clone() })
            }
            _ => Err(ApiError::bad_request("invalid_request", "give either profileId, or attribute and value")),
        }
    }
}

#[utoipa::path(post, path = "/v1/erasures", tag = "gdpr", request_body = ErasureRequest,
    responses((status = 200, body = ErasureReport), (status = 400, body = ops::ErrorBody), (status = 404, body = ops::ErrorBody)))]
async fn erase(State(s): State<ApiState>, headers: HeaderMap, Json(request): Json<ErasureRequest>) -> Result<Json<ErasureReport>, ApiError> {
    let who = s.tokens.authorize(&headers, Scope::Erase)?;
    let subject = request.subject()?;
    Ok(Json(privacy(&s).erase(&subject, &request.reason, &who).await?))
}

/// The erasure audit, oldest first: who erased what (keyed hashes only), when, and why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureList {
    pub erasures: Vec<ErasureRow>,
    /// `after` of the next page, when this one is full.
    pub next_after: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ErasureQuery {
    /// Entries with an id above this one (`nextAfter` of the page before).
    pub after: Option<i64>,
    /// Page size (default 50, max 500).
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/erasures", tag = "gdpr", params(ErasureQuery),
    responses((status = 200, body = ErasureList), (status = 400, body = ops::ErrorBody)))]
async fn erasures(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<ErasureQuery>) -> Result<Json<ErasureList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Erase)?;
    let limit = super::page_limit(q.limit, 50, 500)?;
    let erasures = s.store.erasures(q.after.unwrap_or(0), limit).await?;
    let next_after = super::next_after(erasures.len(), limit, erasures.last().map(|e| e.id));
    Ok(Json(ErasureList { erasures, next_after }))
}

#[utoipa::path(get, path = "/v1/erasures/{id}", tag = "gdpr", params(("id" = i64, Path, description = "Erasure id")),
    responses((status = 200, body = ErasureRow), (status = 404, body = ops::ErrorBody)))]
async fn erasure(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<Json<ErasureRow>, ApiError> {
    s.tokens.authorize(&headers, Scope::Erase)?;
    let row = s.store.erasure(id).await?.ok_or_else(|| ApiError::not_found(&format!("erasure {id}")))?;
    Ok(Json(row))
}

/// Everything held on the person: profile, aliases, records, consents, review items,
/// never-merge pairs, events, quarantined payloads carrying their identifiers.
#[utoipa::path(get, path = "/v1/profiles/{id}/export", tag = "gdpr", params(("id" = String, Path, description = "Profile id")),
    responses((status = 200, body = Object), (status = 404, body = ops::ErrorBody)))]
async fn export(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Export>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    Ok(Json(privacy(&s).export(parse_profile_id(&id)?).await?))
}

#[utoipa::path(get, path = "/v1/profiles/{id}/consents", tag = "gdpr", params(("id" = String, Path, description = "Profile id")),
    responses((status = 200, body = Consents), (status = 404, body = ops::ErrorBody)))]
async fn consents(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Consents>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    Ok(Json(privacy(&s).consents(parse_profile_id(&id)?).await?))
}

pub(super) fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/erasures", post(erase).get(erasures))
        .route("/v1/erasures/{id}", get(erasure))
        .route("/v1/profiles/{id}/export", get(export))
        .route("/v1/profiles/{id}/consents", get(consents))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(erase, erasures, erasure, export, consents), components(schemas(ErasureRequest, ErasureReport, ErasureRow, ErasureList, Consents)))]
pub(super) struct PrivacyDoc;
