//! GDPR routes: erasure, its audit, the suppression list and its lifts (erase scope), export
//! and consents (read scope).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::runtime::auth::Scope;
use crate::runtime::ops::{self, ApiError};
use super::{ApiState, EventView, ProfileView, parse_profile_id, profile_ref};
use crate::privacy::{Consents, ErasureReport, Export, Privacy, PrivacyError, Subject};
use crate::store::{ErasureRow, QuarantineEntry, Removed, ReviewRow, StoredRecord};

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

/// A reason as the audit keeps it: a short code, so that no personal data ends up there.
fn reason_code(reason: &str) -> Result<(), ApiError> {
    let code_ok = (1..=64).contains(&reason.len()) && reason.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    if !code_ok {
        return Err(ApiError::bad_request("invalid_reason", "reason must be 1-64 letters, digits or ._:- (a code, no personal data)"));
    }
    Ok(())
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
        reason_code(&self.reason)?;
        match (&self.profile_id, &self.attribute, &self.value) {
            (Some(id), None, None) => Ok(Subject::Profile(parse_profile_id(id)?)),
            (None, Some(attribute), Some(value)) => {
                Ok(Subject::Identifier { attribute: attribute.clone(), value: value.clone(), region: self.region.clone() })
            }
            _ => Err(ApiError::bad_request("invalid_request", "give either profileId, or attribute and value")),
        }
    }
}

/// An identifier refused at intake from now on, as a keyed hash (its value is not kept).
#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressedIdentifier {
    pub attribute: String,
    pub hash: String,
}

/// What an erasure did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureResult {
    /// The audit entry (`GET /v1/erasures/{id}`).
    pub erasure_id: i64,
    /// Live profiles erased (their aliases went with them); empty when no profile held the
    /// identifier.
    pub profiles: Vec<String>,
    pub removed: Removed,
    /// The person's identifiers, refused at intake from now on unless a Source lets an erased
    /// person start a new profile (`POST /v1/suppressions/lift` lifts one).
    pub suppressed: Vec<SuppressedIdentifier>,
    /// The store's files hold no copy of the erased data any more (SQLite: write-ahead log
    /// emptied; PostgreSQL: the tables of personal data rewritten). False when that failed:
    /// the erasure stands, and the next one's scrub covers it.
    pub scrubbed: bool,
    /// What may not be what was meant: no profile held the identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

impl From<ErasureReport> for ErasureResult {
    fn from(report: ErasureReport) -> Self {
        let notice = report.profiles.is_empty().then(|| {
            let attributes: Vec<&str> = report.suppressed.values().map(String::as_str).collect();
            format!(
                "no profile held this {}: no profile was erased, yet it is now refused at intake \
                 (POST /v1/suppressions/lift lifts that)",
                attributes.join(", ")
            )
        });
        ErasureResult {
            erasure_id: report.erasure_id,
            profiles: report.profiles.into_iter().map(profile_ref).collect(),
            removed: report.removed,
            suppressed: report.suppressed.into_iter().map(|(hash, attribute)| SuppressedIdentifier { attribute, hash }).collect(),
            scrubbed: report.scrubbed,
            notice,
        }
    }
}

#[utoipa::path(post, path = "/v1/erasures", tag = "gdpr", request_body = ErasureRequest,
    responses((status = 200, body = ErasureResult), (status = 400, body = ops::ErrorBody), (status = 404, body = ops::ErrorBody)))]
async fn erase(State(s): State<ApiState>, headers: HeaderMap, Json(request): Json<ErasureRequest>) -> Result<Json<ErasureResult>, ApiError> {
    let who = s.tokens.authorize(&headers, Scope::Erase)?;
    let subject = request.subject()?;
    Ok(Json(privacy(&s).erase(&subject, &request.reason, &who).await?.into()))
}

/// An audit entry: who erased what (keyed hashes only), when, and why.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureEntry {
    pub id: i64,
    pub erased_at_ms: i64,
    /// Keyed hashes of the person's identifiers.
    pub subject_hashes: Vec<String>,
    /// The live profiles erased.
    pub profile_ids: Vec<String>,
    pub reason: String,
    pub requested_by: String,
    pub removed: Removed,
}

impl From<ErasureRow> for ErasureEntry {
    fn from(row: ErasureRow) -> Self {
        ErasureEntry {
            id: row.id,
            erased_at_ms: row.erased_at_ms,
            subject_hashes: row.subject_hashes,
            profile_ids: row.profile_ids.into_iter().map(profile_ref).collect(),
            reason: row.reason,
            requested_by: row.requested_by,
            removed: row.removed,
        }
    }
}

/// The erasure audit, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureList {
    pub erasures: Vec<ErasureEntry>,
    /// `after` of the next page, when this one is full.
    pub next_after: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditPageQuery {
    /// Entries with an id above this one (`nextAfter` of the page before).
    pub after: Option<i64>,
    /// Page size (default 50, max 500).
    pub limit: Option<i64>,
}

impl AuditPageQuery {
    fn limit(&self) -> Result<i64, ApiError> {
        super::page_limit(self.limit, 50, 500)
    }
}

#[utoipa::path(get, path = "/v1/erasures", tag = "gdpr", params(AuditPageQuery),
    responses((status = 200, body = ErasureList), (status = 400, body = ops::ErrorBody)))]
async fn erasures(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<AuditPageQuery>) -> Result<Json<ErasureList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Erase)?;
    let limit = q.limit()?;
    let erasures: Vec<ErasureEntry> = s.store.erasures(q.after.unwrap_or(0), limit).await?.into_iter().map(Into::into).collect();
    let next_after = super::next_after(erasures.len(), limit, erasures.last().map(|e| e.id));
    Ok(Json(ErasureList { erasures, next_after }))
}

#[utoipa::path(get, path = "/v1/erasures/{id}", tag = "gdpr", params(("id" = i64, Path, description = "Erasure id")),
    responses((status = 200, body = ErasureEntry), (status = 404, body = ops::ErrorBody)))]
async fn erasure(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<Json<ErasureEntry>, ApiError> {
    s.tokens.authorize(&headers, Scope::Erase)?;
    let row = s.store.erasure(id).await?.ok_or_else(|| ApiError::not_found(&format!("erasure {id}")))?;
    Ok(Json(row.into()))
}

/// An identifier refused at intake.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Suppression {
    pub id: i64,
    /// Keyed hash of the identifier (its value is not kept).
    pub hash: String,
    /// The erasure that suppressed it.
    pub erasure_id: i64,
    pub created_at_ms: i64,
}

/// The suppression list, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionList {
    pub suppressions: Vec<Suppression>,
    /// `after` of the next page, when this one is full.
    pub next_after: Option<i64>,
}

#[utoipa::path(get, path = "/v1/suppressions", tag = "gdpr", params(AuditPageQuery),
    responses((status = 200, body = SuppressionList), (status = 400, body = ops::ErrorBody)))]
async fn suppressions(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<AuditPageQuery>) -> Result<Json<SuppressionList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Erase)?;
    let limit = q.limit()?;
    let suppressions: Vec<Suppression> = s
        .store
        .suppressions(q.after.unwrap_or(0), limit)
        .await?
        .into_iter()
        .map(|r| Suppression { id: r.id, hash: r.hash, erasure_id: r.erasure_id, created_at_ms: r.created_at_ms })
        .collect();
    let next_after = super::next_after(suppressions.len(), limit, suppressions.last().map(|e| e.id));
    Ok(Json(SuppressionList { suppressions, next_after }))
}

/// Which suppression to lift: its keyed hash (from the list), or the identifier itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiftRequest {
    pub hash: Option<String>,
    /// `email`, `phone`, `nationalId` or `identifiers.<name>`, with `value`.
    pub attribute: Option<String>,
    pub value: Option<String>,
    /// Region for a phone number without a country code (default: the first Source's).
    pub region: Option<String>,
    /// Why, as a short code kept in the audit (`subject-returned`, `art17:ticket-123`).
    pub reason: String,
}

/// A lifted suppression, as audited: the keyed hash, from which erasure, when, why, by whom.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lift {
    pub id: i64,
    pub lifted_at_ms: i64,
    pub hash: String,
    /// The erasure that had suppressed it.
    pub erasure_id: i64,
    pub reason: String,
    pub requested_by: String,
}

/// Accept an erased person's identifier at intake again (a person who asked to be forgotten
/// came back). Audited, with the keyed hash only.
#[utoipa::path(post, path = "/v1/suppressions/lift", tag = "gdpr", request_body = LiftRequest,
    responses((status = 200, body = Lift), (status = 400, body = ops::ErrorBody), (status = 404, body = ops::ErrorBody)))]
async fn lift(State(s): State<ApiState>, headers: HeaderMap, Json(request): Json<LiftRequest>) -> Result<Json<Lift>, ApiError> {
    let who = s.tokens.authorize(&headers, Scope::Erase)?;
    reason_code(&request.reason)?;
    let hash = match (&request.hash, &request.attribute, &request.value) {
        (Some(hash), None, None) => hash.clone(),
        (None, Some(attribute), Some(value)) => privacy(&s).identifier_hash(attribute, value, request.region.as_deref()).await?,
        _ => return Err(ApiError::bad_request("invalid_request", "give either hash, or attribute and value")),
    };
    let lifted = s.store.lift_suppression(&hash, &request.reason, &who).await?;
    let row = lifted.ok_or_else(|| ApiError::not_found("suppression of this identifier"))?;
    tracing::info!(lift = row.id, erasure_id = row.erasure_id, reason = %row.reason, by = %who, "suppression lifted");
    Ok(Json(Lift {
        id: row.id,
        lifted_at_ms: row.lifted_at_ms,
        hash: row.hash,
        erasure_id: row.erasure_id,
        reason: row.reason,
        requested_by: row.requested_by,
    }))
}

/// The lifted suppressions, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiftList {
    pub lifts: Vec<Lift>,
    /// `after` of the next page, when this one is full.
    pub next_after: Option<i64>,
}

#[utoipa::path(get, path = "/v1/suppressions/lifts", tag = "gdpr", params(AuditPageQuery),
    responses((status = 200, body = LiftList), (status = 400, body = ops::ErrorBody)))]
async fn lifts(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<AuditPageQuery>) -> Result<Json<LiftList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Erase)?;
    let limit = q.limit()?;
    let lifts: Vec<Lift> = s
        .store
        .suppression_lifts(q.after.unwrap_or(0), limit)
        .await?
        .into_iter()
        .map(|r| Lift {
            id: r.id,
            lifted_at_ms: r.lifted_at_ms,
            hash: r.hash,
            erasure_id: r.erasure_id,
            reason: r.reason,
            requested_by: r.requested_by,
        })
        .collect();
    let next_after = super::next_after(lifts.len(), limit, lifts.last().map(|e| e.id));
    Ok(Json(LiftList { lifts, next_after }))
}

/// A source record as exported: everything stored of it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportedRecord {
    id: i64,
    source: String,
    source_record_id: String,
    observed_at_ms: i64,
    received_at_ms: i64,
    profile_id: String,
    attributes: BTreeMap<String, String>,
    normalised: BTreeMap<String, String>,
    evidence: serde_json::Value,
}

impl From<StoredRecord> for ExportedRecord {
    fn from(r: StoredRecord) -> Self {
        ExportedRecord {
            id: r.id,
            source: r.source,
            source_record_id: r.source_record_id,
            observed_at_ms: r.observed_at_ms,
            received_at_ms: r.received_at_ms,
            profile_id: profile_ref(r.profile_id),
            attributes: r.attributes,
            normalised: r.normalised,
            evidence: r.evidence,
        }
    }
}

/// Everything held on a person, profile ids as the rest of the API writes them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportView {
    exported_at_ms: i64,
    profile: ProfileView,
    aliases: Vec<String>,
    records: Vec<ExportedRecord>,
    consents: Consents,
    review_items: Vec<ReviewRow>,
    never_merge: Vec<(i64, i64)>,
    events: Vec<EventView>,
    quarantine: Vec<QuarantineEntry>,
    /// Values enrichers wrote into the records before matching: by which call, when.
    enrichments: Vec<crate::store::AppliedEnrichment>,
}

impl From<Export> for ExportView {
    fn from(e: Export) -> Self {
        let aliases: Vec<String> = e.aliases.into_iter().map(profile_ref).collect();
        ExportView {
            exported_at_ms: e.exported_at_ms,
            profile: ProfileView {
                id: profile_ref(e.profile.id),
                aliases: aliases.clone(),
                golden: e.profile.golden.unwrap_or_default(),
                record_count: e.profile.record_count,
                created_at_ms: e.profile.created_at_ms,
                updated_at_ms: e.profile.updated_at_ms,
                version: e.profile.version,
            },
            aliases,
            records: e.records.into_iter().map(Into::into).collect(),
            consents: e.consents,
            review_items: e.review_items,
            never_merge: e.never_merge,
            events: e
                .events
                .into_iter()
                .map(|ev| EventView {
                    id: ev.id,
                    kind: ev.kind,
                    profile_id: ev.profile_id.map(profile_ref),
                    record_id: ev.record_id,
                    payload: ev.payload,
                    created_at_ms: ev.created_at_ms,
                })
                .collect(),
            quarantine: e.quarantine,
            enrichments: e.enrichments,
        }
    }
}

/// Everything held on the person: profile, aliases, records, consents, review items,
/// never-merge pairs, events, quarantined payloads carrying their identifiers.
#[utoipa::path(get, path = "/v1/profiles/{id}/export", tag = "gdpr", params(("id" = String, Path, description = "Profile id")),
    responses((status = 200, body = Object), (status = 404, body = ops::ErrorBody)))]
async fn export(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<ExportView>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    Ok(Json(privacy(&s).export(parse_profile_id(&id)?).await?.into()))
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
        .route("/v1/suppressions", get(suppressions))
        .route("/v1/suppressions/lift", post(lift))
        .route("/v1/suppressions/lifts", get(lifts))
        .route("/v1/profiles/{id}/export", get(export))
        .route("/v1/profiles/{id}/consents", get(consents))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(erase, erasures, erasure, suppressions, lift, lifts, export, consents),
    components(schemas(
        ErasureRequest, ErasureResult, SuppressedIdentifier, ErasureEntry, ErasureList, Suppression, SuppressionList,
        LiftRequest, Lift, LiftList, Consents
    ))
)]
pub(super) struct PrivacyDoc;
