//! `cdp api`: the profile API (REST + JSON, OpenAPI document at `/openapi.json`).
//!
//! Profiles are addressed as `p<number>`; a merged-away id keeps resolving to its survivor.
//! Every route needs a bearer token with the right scope (read, write).

mod console;
pub mod dead_letters;
pub mod enrichers;
mod privacy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::runtime::auth::{Scope, Tokens};
use crate::runtime::ops::{self, ApiError, BearerAuth, Metrics, Secrets, StartError};
use crate::identity::normalise::{NormaliseFlags, normalise_with};
use crate::matcher::{MatchError, MergedBy, Resolver, lookup_key};
use crate::pipeline::PipelineConfig;
use crate::store::{self, Admission, FieldError, MessageOrigin, ProfileRow, ReviewFilter, Store, StoredRecord, key_hash, profile_ref};

#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// The platform's PipelineConfig (JSON, as the operator mounts it).
    #[arg(long, env = "CDP_CONFIG")]
    pub config: PathBuf,
    /// Address for the API, /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
}

#[derive(Clone)]
pub struct ApiState {
    store: Store,
    metrics: Arc<Metrics>,
    resolver: Arc<Resolver>,
    tokens: Tokens,
    config: Arc<PipelineConfig>,
    flags: NormaliseFlags,
}

impl ApiState {
    pub fn new(config: &PipelineConfig, store: Store, metrics: Arc<Metrics>, resolver: Arc<Resolver>, tokens: Tokens) -> Self {
        ApiState {
            store,
            metrics,
            resolver,
            tokens,
            flags: crate::ingest::normalise_flags(config),
            config: Arc::new(config.clone()),
        }
    }
}

// ---- ids ----

/// `p12` → 12.
fn parse_profile_id(s: &str) -> Result<i64, ApiError> {
    s.strip_prefix('p')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::bad_request("invalid_id", format!("{s:?} is not a profile id (expected p<number>)")))
}

// ---- views ----

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileView {
    /// The live profile id (the survivor when the requested id was merged away).
    pub id: String,
    /// Ids merged into this profile; they keep resolving here.
    pub aliases: Vec<String>,
    /// One value per attribute with its provenance, chosen by survivorship.
    #[schema(value_type = Object)]
    pub golden: serde_json::Value,
    pub record_count: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileList {
    pub profiles: Vec<ProfileView>,
    /// `after` of the next page, when this one is full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordView {
    pub id: i64,
    pub source: String,
    pub source_record_id: String,
    pub observed_at_ms: i64,
    pub received_at_ms: i64,
    /// Attributes as the source sent them.
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
}

impl From<StoredRecord> for RecordView {
    fn from(r: StoredRecord) -> Self {
        RecordView {
            id: r.id,
            source: r.source,
            source_record_id: r.source_record_id,
            observed_at_ms: r.observed_at_ms,
            received_at_ms: r.received_at_ms,
            attributes: serde_json::to_value(r.attributes).expect("serialises"),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub profile_id: Option<String>,
    pub record_id: Option<i64>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub created_at_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    pub profile: String,
    pub records: Vec<RecordView>,
    pub events: Vec<EventView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkExplanation {
    pub record_id: i64,
    pub source: String,
    pub source_record_id: String,
    /// Why the record is in the profile, by `decision`: `linked` (the profile score and the
    /// evidence of its closest pair: per-comparison levels and weights), `new` (it started the
    /// profile: the policy's `thresholds`, and the `candidates` it was compared with, each with
    /// its score, closest pair and `shortfall`: `belowReview`, `uncertain` or `neverMerge`),
    /// `review` (a person approved a review item: `reviewId`, `approvedBy`, `approvedAtMs`,
    /// the pair and its evidence), `manual` (a merge or an unmerge by hand), or `enriched`
    /// (values an Enricher found for the profile: `enricher`, `callId`, `atMs`, `cached`, the
    /// attribute names `sent`).
    #[schema(value_type = Object)]
    pub evidence: serde_json::Value,
    /// Values PreMatch enrichers wrote into the record before it was matched: which, by which
    /// call, when.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enriched_before_matching: Vec<crate::store::AppliedEnrichment>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Explanation {
    pub profile: String,
    pub links: Vec<LinkExplanation>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewView {
    pub id: i64,
    pub record_id: i64,
    pub other_record_id: i64,
    /// Current profiles of both records.
    pub profile: Option<String>,
    pub other_profile: Option<String>,
    /// Both records as their sources sent them, to compare side by side.
    pub record: Option<RecordView>,
    pub other_record: Option<RecordView>,
    /// `uncertain`, `forbidden` or `ambiguous`.
    pub reason: String,
    pub probability: f64,
    #[schema(value_type = Object)]
    pub evidence: serde_json::Value,
    pub status: String,
    pub created_at_ms: i64,
    pub decided_by: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewList {
    pub items: Vec<ReviewView>,
    /// `after` of the next page, when this one is full.
    pub next_after: Option<i64>,
    /// Items matching the filters other than the status, per status (`open`, `approved`,
    /// `rejected`, `superseded`): what is open and what was decided.
    pub counts: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MergeResult {
    /// The profile that now holds every record.
    pub survivor: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MergeRequest {
    /// The profile to merge with this one.
    pub other: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UnmergeRequest {
    /// Record ids to split out of the profile.
    pub records: Vec<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnmergeResult {
    pub profile: String,
    /// Profiles created for the records split out and for what re-clustering separated.
    pub created: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineView {
    pub id: i64,
    pub source: String,
    pub received_at_ms: i64,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub errors: Vec<FieldError>,
    /// The Kafka message it was read from (none for HTTP intake and files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<MessageOrigin>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineList {
    pub entries: Vec<QuarantineView>,
    /// `after` of the next page, when this one is full.
    pub next_after: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayResult {
    pub intake_ids: Vec<i64>,
    pub duplicates: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    pub email: Option<String>,
    pub phone: Option<String>,
    /// `name:value` of a source identifier, e.g. `loyaltyId:C-000123`.
    pub identifier: Option<String>,
    pub national_id: Option<String>,
    /// With `sourceRecordId`: the profile holding that source's record.
    pub source: Option<String>,
    pub source_record_id: Option<String>,
    /// Region for phone numbers written without a country code (default: the first Source's).
    pub region: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    pub family_name: Option<String>,
    pub given_name: Option<String>,
    pub postcode: Option<String>,
    /// Profiles with an id above this one (`nextAfter` of the page before).
    pub after: Option<String>,
    /// At most this many profiles (default 20, max 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only profiles updated at or after this instant (RFC 3339, or Unix milliseconds): an
    /// incremental sync passes the time its previous sync started.
    pub changed_since: Option<String>,
    /// Profiles with an id above this one (`nextAfter` of the page before).
    pub after: Option<String>,
    /// At most this many profiles (default 50, max 500).
    pub limit: Option<i64>,
}

fn changed_since(raw: &str) -> Result<i64, ApiError> {
    store::parse_instant_ms(raw).map_err(|e| ApiError::bad_request("invalid_query", format!("changedSince: {e}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Return entries with an id above this one.
    pub after: Option<i64>,
    /// Page size (default 50, max 500).
    pub limit: Option<i64>,
    /// Entries of this source only.
    pub filter: Option<String>,
}

impl PageQuery {
    fn limit(&self) -> Result<i64, ApiError> {
        page_limit(self.limit, 50, 500)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ReviewQuery {
    /// Return items with an id above this one.
    pub after: Option<i64>,
    /// Page size (default 50, max 500).
    pub limit: Option<i64>,
    /// Status: `open` (default), `approved`, `rejected`, or `superseded` (closed by a merge that
    /// brought both records into one profile).
    pub filter: Option<String>,
    /// Items with a record from this source.
    pub source: Option<String>,
    /// `uncertain`, `forbidden` or `ambiguous`.
    pub reason: Option<String>,
    /// Match probability at least this (0 to 1).
    pub min_probability: Option<f64>,
    /// Match probability below this (0 to 1).
    pub max_probability: Option<f64>,
}

impl ReviewQuery {
    /// The status and filter asked for; 400 for a value that can match nothing by mistake.
    fn filter(&self, config: &PipelineConfig) -> Result<(String, ReviewFilter), ApiError> {
        let one_of = |what: &str, value: &Option<String>, known: &[&str]| match value {
            Some(v) if !known.contains(&v.as_str()) => {
                Err(ApiError::bad_request("invalid_query", format!("{what} {v:?} is not one of {}", known.join(", "))))
            }
            _ => Ok(()),
        };
        let status = self.filter.clone().unwrap_or_else(|| "open".into());
        one_of("status", &Some(status.clone()), &store::REVIEW_STATUSES)?;
        one_of("reason", &self.reason, &crate::identity::ReviewReason::ALL.map(crate::identity::ReviewReason::name))?;
        let sources: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        one_of("source", &self.source, &sources)?;
        for (name, bound) in [("minProbability", self.min_probability), ("maxProbability", self.max_probability)] {
            if bound.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
                return Err(ApiError::bad_request("invalid_query", format!("{name} must be between 0 and 1")));
            }
        }
        if let (Some(min), Some(max)) = (self.min_probability, self.max_probability)
            && min >= max
        {
            return Err(ApiError::bad_request("invalid_query", "minProbability must be below maxProbability"));
        }
        let filter = ReviewFilter {
            source: self.source.clone(),
            reason: self.reason.clone(),
            min_probability: self.min_probability,
            max_probability: self.max_probability,
        };
        Ok((status, filter))
    }
}

/// The `limit` of a list: `default` when absent, otherwise between 1 and `max` (never silently
/// cut to it: the answer would look complete).
pub(crate) fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request("invalid_limit", format!("limit {n} is out of range: 1 to {max}"))),
    }
}

/// The cursor of the page after one of `len` entries ending at `last`: none when it is not full.
pub(crate) fn next_after<T>(len: usize, limit: i64, last: Option<T>) -> Option<T> {
    (len as i64 == limit).then_some(last).flatten()
}

// ---- handlers ----

async fn view(store: &Store, row: ProfileRow) -> Result<ProfileView, ApiError> {
    let aliases = store.aliases(row.id).await?.into_iter().map(profile_ref).collect();
    Ok(view_with(aliases, row))
}

fn view_with(aliases: Vec<String>, row: ProfileRow) -> ProfileView {
    ProfileView {
        id: profile_ref(row.id),
        aliases,
        golden: row.golden.unwrap_or_default(),
        record_count: row.record_count,
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
        version: row.version,
    }
}

/// The live profile for an id; 404 when there is none, 409 naming the profiles that hold its
/// records when an unmerge split them up (the id leads to none of them alone).
async fn live_profile(store: &Store, id: &str) -> Result<ProfileRow, ApiError> {
    let number = parse_profile_id(id)?;
    if let Some(row) = store.profile(number).await? {
        return Ok(row);
    }
    match store.profile_row(number).await? {
        Some(ProfileRow { split_at_ms: Some(_), .. }) => match store.named_holders(number).await?[..] {
            [] => Err(ApiError::not_found(&format!("profile {id}"))),
            ref holders => Err(split_profile(number, holders)),
        },
        _ => Err(ApiError::not_found(&format!("profile {id}"))),
    }
}

/// 409 for an id whose records an unmerge sent to several profiles, listing them.
fn split_profile(id: i64, holders: &[i64]) -> ApiError {
    let names: Vec<String> = holders.iter().copied().map(profile_ref).collect();
    let message = format!(
        "profile {} was split: the records it named are now in {}; use one of those ids",
        profile_ref(id),
        names.join(", ")
    );
    ApiError::new(StatusCode::CONFLICT, "profile_split", message)
        .with_details(names.into_iter().map(|name| serde_json::json!({"profileId": name})).collect())
}

async fn views(store: &Store, ids: impl IntoIterator<Item = i64>) -> Result<Vec<ProfileView>, ApiError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        if let Some(row) = store.profile(id).await?
            && seen.insert(row.id)
        {
            out.push(view(store, row).await?);
        }
    }
    Ok(out)
}

/// Live profiles in id order, each with its aliases, a page at a time. An erased person is
/// never listed; a profile merged away is not either (it is an alias of the survivor).
#[utoipa::path(get, path = "/v1/profiles", tag = "profiles", params(ListQuery),
    responses((status = 200, body = ProfileList), (status = 400, body = ops::ErrorBody)))]
async fn list_profiles(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Result<Json<ProfileList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let changed_since = q.changed_since.as_deref().map(changed_since).transpose()?;
    let after = q.after.as_deref().map(parse_profile_id).transpose()?.unwrap_or(0);
    let limit = page_limit(q.limit, 50, 500)?;
    let rows = s.store.live_profiles(changed_since, after, limit).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut aliases: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (survivor, alias) in s.store.aliases_of_profiles(&ids).await? {
        aliases.entry(survivor).or_default().push(profile_ref(alias));
    }
    let next = next_after(rows.len(), limit, ids.last().copied()).map(profile_ref);
    let profiles = rows.into_iter().map(|row| view_with(aliases.remove(&row.id).unwrap_or_default(), row)).collect();
    Ok(Json(ProfileList { profiles, next_after: next }))
}

#[utoipa::path(get, path = "/v1/profiles/{id}", tag = "profiles",
    params(("id" = String, Path, description = "Profile id (an alias resolves to the profile holding its records)")),
    responses((status = 200, body = ProfileView), (status = 404, body = ops::ErrorBody),
        (status = 409, body = ops::ErrorBody, description = "`profile_split`: an unmerge sent the records of this merged-away id to several profiles; `details` lists them")))]
async fn get_profile(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<ProfileView>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let row = live_profile(&s.store, &id).await?;
    Ok(Json(view(&s.store, row).await?))
}

#[utoipa::path(get, path = "/v1/profiles/lookup", tag = "profiles", params(LookupQuery),
    responses((status = 200, body = ProfileList), (status = 400, body = ops::ErrorBody)))]
async fn lookup(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<LookupQuery>) -> Result<Json<ProfileList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    if let (Some(source), Some(id)) = (&q.source, &q.source_record_id) {
        let record = s.store.record_by_source_id(source, id).await?;
        return Ok(Json(ProfileList { profiles: views(&s.store, record.map(|r| r.profile_id)).await?, next_after: None }));
    }
    let default_region = s.config.sources.iter().find_map(|src| src.spec.default_phone_region.clone()).unwrap_or_default();
    let region = q.region.clone().unwrap_or(default_region);
    let identifier = q.identifier.as_deref().map(|i| {
        i.split_once(':').map(|(name, value)| (format!("identifiers.{name}"), value.to_string()))
    });
    let given: Vec<(String, String)> = [
        q.email.clone().map(|v| ("email".to_string(), v)),
        q.phone.clone().map(|v| ("phone".to_string(), v)),
        q.national_id.clone().map(|v| ("nationalId".to_string(), v)),
        match identifier {
            Some(None) => return Err(ApiError::bad_request("invalid_query", "identifier must be name:value")),
            Some(Some(pair)) => Some(pair),
            None => None,
        },
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.is_empty() {
        return Err(ApiError::bad_request("invalid_query", "give email, phone, nationalId, identifier, or source and sourceRecordId"));
    }
    let hashes = index_hashes(&given, &region, s.flags)?;
    let ids = s.store.profiles_with_keys(&hashes, 0, 100).await?;
    Ok(Json(ProfileList { profiles: views(&s.store, ids).await?, next_after: None }))
}

/// Hashes of the lookup index for `(attribute, raw value)` pairs, normalised as at intake.
fn index_hashes(pairs: &[(String, String)], region: &str, flags: NormaliseFlags) -> Result<Vec<i64>, ApiError> {
    pairs
        .iter()
        .map(|(attribute, raw)| match normalise_with(attribute, raw, region, flags) {
            Ok(Some(v)) => Ok(key_hash(&lookup_key(attribute, &v))),
            Ok(None) => Err(ApiError::bad_request("invalid_query", format!("{attribute} is empty"))),
            Err(e) => Err(ApiError::bad_request("invalid_query", format!("{attribute}: {e}"))),
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/profiles/search", tag = "profiles", params(SearchQuery),
    responses((status = 200, body = ProfileList), (status = 400, body = ops::ErrorBody)))]
async fn search(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<SearchQuery>) -> Result<Json<ProfileList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let given: Vec<(String, String)> = [
        q.family_name.clone().map(|v| ("familyName".to_string(), v)),
        q.given_name.clone().map(|v| ("givenName".to_string(), v)),
        q.postcode.clone().map(|v| ("postcode".to_string(), v)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.is_empty() {
        return Err(ApiError::bad_request("invalid_query", "give familyName, givenName and/or postcode"));
    }
    let hashes = index_hashes(&given, "", s.flags)?;
    let after = q.after.as_deref().map(parse_profile_id).transpose()?.unwrap_or(0);
    let limit = page_limit(q.limit, 20, 100)?;
    let ids = s.store.profiles_with_keys(&hashes, after, limit).await?;
    let next = next_after(ids.len(), limit, ids.last().copied()).map(profile_ref);
    Ok(Json(ProfileList { profiles: views(&s.store, ids).await?, next_after: next }))
}

#[utoipa::path(get, path = "/v1/profiles/{id}/timeline", tag = "profiles",
    params(("id" = String, Path, description = "Profile id")),
    responses((status = 200, body = Timeline), (status = 404, body = ops::ErrorBody)))]
async fn timeline(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Timeline>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let row = live_profile(&s.store, &id).await?;
    let records = s.store.records_of(row.id).await?.into_iter().map(RecordView::from).collect();
    let mut ids = s.store.aliases(row.id).await?;
    ids.push(row.id);
    let events = s
        .store
        .events_of(&ids, 1000)
        .await?
        .into_iter()
        .map(|e| EventView {
            id: e.id,
            kind: e.kind,
            profile_id: e.profile_id.map(profile_ref),
            record_id: e.record_id,
            payload: e.payload,
            created_at_ms: e.created_at_ms,
        })
        .collect();
    Ok(Json(Timeline { profile: profile_ref(row.id), records, events }))
}

#[utoipa::path(get, path = "/v1/profiles/{id}/explanation", tag = "profiles",
    params(("id" = String, Path, description = "Profile id")),
    responses((status = 200, body = Explanation), (status = 404, body = ops::ErrorBody)))]
async fn explanation(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Explanation>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let row = live_profile(&s.store, &id).await?;
    let records = s.store.records_of(row.id).await?;
    let mut enriched = s.store.enrichment_of_records(&records.iter().map(|r| r.id).collect::<Vec<_>>()).await?;
    let links = records
        .into_iter()
        .map(|r| LinkExplanation {
            enriched_before_matching: enriched.extract_if(.., |e| e.record_id == r.id).collect(),
            record_id: r.id,
            source: r.source,
            source_record_id: r.source_record_id,
            evidence: r.evidence,
        })
        .collect();
    Ok(Json(Explanation { profile: profile_ref(row.id), links }))
}

fn match_error(e: MatchError) -> ApiError {
    match e {
        MatchError::Store(e) => e.into(),
        MatchError::NoProfile(id) => ApiError::not_found(&format!("profile {}", profile_ref(id))),
        MatchError::Forbidden(..) => ApiError::new(StatusCode::CONFLICT, "never_merge", e.to_string()),
        MatchError::Invalid(m) => ApiError::bad_request("invalid_request", m),
        MatchError::Stale => ApiError::new(StatusCode::CONFLICT, "concurrent_change", "the profiles changed meanwhile; retry"),
        MatchError::AlreadyOne(id) => {
            ApiError::new(StatusCode::CONFLICT, "already_merged", format!("the two profiles are one already: {}", profile_ref(id)))
        }
        // split while the request ran: the next request lists where its records are
        MatchError::Split(id) => ApiError::new(
            StatusCode::CONFLICT,
            "profile_split",
            format!("profile {} was split meanwhile; ask for it again to see where its records are", profile_ref(id)),
        ),
    }
}

/// Run `$body` (with `$tx: &mut WriteTx` and `$now`) in one write transaction, retrying
/// transient conflicts between concurrent writers.
macro_rules! in_write_tx {
    ($state:expr, |$tx:ident, $now:ident| $body:expr) => {{
        let mut attempt = 0;
        loop {
            let result = async {
                let mut tx = $state.store.begin().await?;
                let $now = store::now_ms();
                let out = {
                    let $tx = &mut tx;
                    $body
                };
                tx.commit().await?;
                Ok::<_, MatchError>(out)
            }
            .await;
            match result {
                Err(e) if e.is_retryable() && attempt < 10 => attempt += 1,
                other => break other.map_err(match_error),
            }
        }
    }};
}

#[utoipa::path(post, path = "/v1/profiles/{id}/merge", tag = "profiles",
    params(("id" = String, Path, description = "Profile id")), request_body = MergeRequest,
    responses((status = 200, body = MergeResult), (status = 409, body = ops::ErrorBody)))]
async fn merge(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<MergeRequest>,
) -> Result<Json<MergeResult>, ApiError> {
    let who = s.tokens.authorize(&headers, Scope::Write)?;
    if parse_profile_id(&id)? == parse_profile_id(&body.other)? {
        return Err(ApiError::bad_request("invalid_request", format!("{id} cannot be merged with itself")));
    }
    let (a, b) = (live_profile(&s.store, &id).await?.id, live_profile(&s.store, &body.other).await?.id);
    let survivor = in_write_tx!(s, |tx, now| s.resolver.merge(tx, a, b, MergedBy::Person(&who), now).await?)?;
    tracing::info!(survivor, a, b, by = %who, "manual merge");
    Ok(Json(MergeResult { survivor: profile_ref(survivor) }))
}

#[utoipa::path(post, path = "/v1/profiles/{id}/unmerge", tag = "profiles",
    params(("id" = String, Path, description = "Profile id")), request_body = UnmergeRequest,
    responses((status = 200, body = UnmergeResult), (status = 400, body = ops::ErrorBody)))]
async fn unmerge(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<UnmergeRequest>,
) -> Result<Json<UnmergeResult>, ApiError> {
    let who = s.tokens.authorize(&headers, Scope::Write)?;
    let profile = live_profile(&s.store, &id).await?.id;
    let created = in_write_tx!(s, |tx, now| s.resolver.unmerge(tx, profile, &body.records, now).await?)?;
    tracing::info!(profile, created = ?created, by = %who, "unmerge");
    Ok(Json(UnmergeResult { profile: profile_ref(profile), created: created.into_iter().map(profile_ref).collect() }))
}

#[utoipa::path(get, path = "/v1/review", tag = "review", params(ReviewQuery),
    responses((status = 200, body = ReviewList), (status = 400, body = ops::ErrorBody)))]
async fn review_list(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<ReviewQuery>) -> Result<Json<ReviewList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let (status, filter) = q.filter(&s.config)?;
    let limit = page_limit(q.limit, 50, 500)?;
    let mut items = Vec::new();
    for r in s.store.review_items(&status, &filter, q.after.unwrap_or(0), limit).await? {
        let (record, other_record) = (s.store.record(r.record_id).await?, s.store.record(r.other_record_id).await?);
        items.push(ReviewView {
            profile: record.as_ref().map(|r| profile_ref(r.profile_id)),
            other_profile: other_record.as_ref().map(|r| profile_ref(r.profile_id)),
            record: record.map(RecordView::from),
            other_record: other_record.map(RecordView::from),
            id: r.id,
            record_id: r.record_id,
            other_record_id: r.other_record_id,
            reason: r.reason,
            probability: r.probability,
            evidence: r.evidence,
            status: r.status,
            created_at_ms: r.created_at_ms,
            decided_by: r.decided_by,
        });
    }
    let next_after = next_after(items.len(), limit, items.last().map(|i| i.id));
    Ok(Json(ReviewList { items, next_after, counts: s.store.review_counts(&filter).await? }))
}

/// Approve (merge the two records' profiles) or reject (never merge them).
async fn decide(s: &ApiState, id: i64, who: &str, approve: bool) -> Result<Option<i64>, ApiError> {
    let item = s.store.review_item(id).await?.ok_or_else(|| ApiError::not_found(&format!("review item {id}")))?;
    let status = if approve { "approved" } else { "rejected" };
    in_write_tx!(s, |tx, now| {
        if !tx.decide_review(id, status, who, now).await? {
            return Err(MatchError::Invalid(format!("review item {id} is already decided")));
        }
        if approve {
            let records = tx.records(&[item.record_id, item.other_record_id]).await?;
            let [a, b] = &records[..] else { return Err(MatchError::Invalid("a record of this pair was erased".into())) };
            match s.resolver.merge(tx, a.profile_id, b.profile_id, MergedBy::Review { item: &item, by: who }, now).await {
                // a later record joined the pair meanwhile: the approval holds
                Err(MatchError::AlreadyOne(survivor)) => Some(survivor),
                merged => Some(merged?),
            }
        } else {
            tx.add_never_merge(item.record_id, item.other_record_id, now).await?;
            None
        }
    })
}

#[utoipa::path(post, path = "/v1/review/{id}/approve", tag = "review",
    params(("id" = i64, Path, description = "Review item id")),
    responses((status = 200, body = MergeResult), (status = 409, body = ops::ErrorBody)))]
async fn review_approve(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<Json<MergeResult>, ApiError> {
    let who = s.tokens.authorize(&headers, Scope::Write)?;
    let survivor = decide(&s, id, &who, true).await?.expect("approve merges");
    Ok(Json(MergeResult { survivor: profile_ref(survivor) }))
}

#[utoipa::path(post, path = "/v1/review/{id}/reject", tag = "review",
    params(("id" = i64, Path, description = "Review item id")),
    responses((status = 204), (status = 409, body = ops::ErrorBody)))]
async fn review_reject(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    let who = s.tokens.authorize(&headers, Scope::Write)?;
    decide(&s, id, &who, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/quarantine", tag = "quarantine", params(PageQuery),
    responses((status = 200, body = QuarantineList)))]
async fn quarantine_list(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Result<Json<QuarantineList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let limit = q.limit()?;
    let entries: Vec<QuarantineView> = s
        .store
        .quarantined(q.filter.as_deref(), q.after.unwrap_or(0), limit)
        .await?
        .into_iter()
        .map(|e| QuarantineView {
            id: e.id,
            source: e.source,
            received_at_ms: e.received_at_ms,
            payload: e.payload,
            errors: e.errors,
            origin: e.origin,
        })
        .collect();
    let next_after = next_after(entries.len(), limit, entries.last().map(|e| e.id));
    Ok(Json(QuarantineList { entries, next_after }))
}

/// Delete a quarantined payload for good (a test message, a record the source will never fix).
#[utoipa::path(delete, path = "/v1/quarantine/{id}", tag = "quarantine",
    params(("id" = i64, Path, description = "Quarantine entry id")),
    responses((status = 204), (status = 404, body = ops::ErrorBody)))]
async fn quarantine_delete(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    let who = s.tokens.authorize(&headers, Scope::Write)?;
    if !s.store.delete_quarantined(id).await? {
        return Err(ApiError::not_found(&format!("quarantine entry {id}")));
    }
    tracing::info!(id, by = %who, "quarantine entry deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/quarantine/{id}/replay", tag = "quarantine",
    params(("id" = i64, Path, description = "Quarantine entry id")),
    responses((status = 202, body = ReplayResult), (status = 409, body = ops::ErrorBody), (status = 422, body = ops::ErrorBody)))]
async fn quarantine_replay(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<Response, ApiError> {
    s.tokens.authorize(&headers, Scope::Write)?;
    let entry = s.store.quarantine_entry(id).await?.ok_or_else(|| ApiError::not_found(&format!("quarantine entry {id}")))?;
    let source = s
        .config
        .source(&entry.source)
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "unknown_source", format!("source {:?} is gone", entry.source)))?;
    // validated again with the Source as it is now (the point of a replay after a fix), and
    // checked against the suppression list as any record arriving now
    let fallback_id = crate::ingest::mapping::fallback_event_id(source, entry.origin.as_ref());
    let outcome = crate::ingest::mapping::map_record_from(source, s.flags, &entry.payload, fallback_id, entry.received_at_ms)
        .map(|m| m.record);
    let identifiers = crate::privacy::Privacy::new(s.store.clone(), s.config.clone())
        .gate(source, std::slice::from_ref(&entry.payload))
        .await?
        .pop()
        .unwrap_or_default();
    let errors = outcome.as_ref().err().cloned();
    let enqueued = match s.store.replay_quarantined(&entry, outcome, identifiers).await? {
        Some(Admission::Queued(enqueued)) => vec![enqueued],
        Some(Admission::Conflict(first)) => {
            let message = format!(
                "its event id was delivered since with other content (intake id {first}), which stands; the entry is kept"
            );
            return Err(ApiError::new(StatusCode::CONFLICT, crate::ingest::EVENT_ID_CONFLICT_ERROR, message));
        }
        Some(Admission::Refused(attributes)) => {
            let message = format!("it belongs to an erased person ({}); the entry is removed", attributes.join(", "));
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, crate::ingest::ERASED_SUBJECT_ERROR, message));
        }
        Some(Admission::Quarantined(_)) | None => Vec::new(),
    };
    if let Some(errors) = errors {
        let details = errors.iter().map(|e| serde_json::to_value(e).expect("serialises")).collect();
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "the record is still invalid")
            .with_details(details));
    }
    let body = ReplayResult {
        intake_ids: enqueued.iter().map(|e| e.intake_id).collect(),
        duplicates: enqueued.iter().filter(|e| e.duplicate).count(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "cdp profile API", description = "Golden profiles, lookups, timelines, explanations, review queue and quarantine."),
    paths(list_profiles, get_profile, lookup, search, timeline, explanation, merge, unmerge, review_list, review_approve, review_reject,
          quarantine_list, quarantine_delete, quarantine_replay, dead_letters::list, dead_letters::inspect, dead_letters::replay),
    components(schemas(ops::ErrorBody, ops::ErrorDetail, FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;


async fn count_requests(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics.api_requests.get_or_create(&vec![("route", route), ("status", response.status().as_u16().to_string())]).inc();
    response
}

/// Largest request body accepted (the API's bodies are a few identifiers).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

pub fn router(state: ApiState) -> Router {
    let metrics = state.metrics.clone();
    let routes = Router::new()
        .route("/v1/profiles", get(list_profiles))
        .route("/v1/profiles/lookup", get(lookup))
        .route("/v1/profiles/search", get(search))
        .route("/v1/profiles/{id}", get(get_profile))
        .route("/v1/profiles/{id}/timeline", get(timeline))
        .route("/v1/profiles/{id}/explanation", get(explanation))
        .route("/v1/profiles/{id}/merge", post(merge))
        .route("/v1/profiles/{id}/unmerge", post(unmerge))
        .route("/v1/review", get(review_list))
        .route("/v1/review/{id}/approve", post(review_approve))
        .route("/v1/review/{id}/reject", post(review_reject))
        .route("/v1/quarantine", get(quarantine_list))
        .route("/v1/quarantine/{id}", axum::routing::delete(quarantine_delete))
        .route("/v1/quarantine/{id}/replay", post(quarantine_replay))
        .merge(privacy::router())
        .merge(dead_letters::router())
        .merge(enrichers::router())
        .merge(console::router())
        .route_layer(middleware::from_fn_with_state(metrics, count_requests))
        .with_state(state)
        .route("/openapi.json", get(|| async {
            let doc = ApiDoc::openapi().merge_from(privacy::PrivacyDoc::openapi());
            Json(doc.merge_from(enrichers::EnrichDoc::openapi()).merge_from(console::ConsoleDoc::openapi()))
        }));
    ops::limit_body(routes, BODY_LIMIT)
}

/// `cdp api`.
pub async fn run(args: ApiArgs) -> Result<(), StartError> {
    let config = ops::load_config(&args.config)?;
    let store = ops::open_store_from_env().await?;
    let secrets = Secrets::from_env();
    let tokens = match &config.api_tokens {
        Some(secret) => Tokens::parse(&secrets.get(secret)?).map_err(StartError::Tokens)?,
        None => return Err(StartError::Tokens("the platform declares no spec.api.tokensSecretRef".into())),
    };
    let metrics = Metrics::new();
    let resolver = Arc::new(Resolver::new(&config)?);
    let state = ApiState::new(&config, store.clone(), metrics.clone(), resolver, tokens);
    let (trigger, shutdown) = ops::shutdown_channel();
    ops::on_signal(trigger, ops::DRAIN_DELAY);
    let listener = ops::bind(args.listen).await?;
    tracing::info!(platform = %config.platform, listen = %args.listen, "api started");
    ops::serve_with_ops(listener, router(state), store.clone(), metrics, shutdown).await;
    store.close().await;
    Ok(())
}
