//! `cdp ingest`: HTTP intake. A record is answered `202` only once it is durably in the
//! intake queue; invalid input is answered `422` with every failing field and kept in
//! quarantine; a redelivery (same source + record id) is absorbed.

pub mod import;
pub mod kafka;
pub mod mapping;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use utoipa::OpenApi;
use serde::Serialize;
use serde_json::Value;

use crate::runtime::auth::{bearer, digest, digest_matches};
use crate::runtime::ops::{self, ApiError, BearerAuth, Metrics, Secrets, StartError};
use crate::identity::normalise::NormaliseFlags;
use crate::crd::matching::EmailProviderRule;
use crate::pipeline::{NamedSource, PipelineConfig};
use crate::privacy::Privacy;
use crate::store::{Admission, Enqueued, FieldError, Store, StoreError};
use mapping::Received;

#[derive(clap::Args, Clone, Debug)]
pub struct IngestArgs {
    /// The platform's PipelineConfig (JSON, as the operator mounts it).
    #[arg(long, env = "CDP_CONFIG")]
    pub config: PathBuf,
    /// Address for intake, /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
}

/// Largest request body accepted (a batch of records).
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Normalisation options of the platform's matching model (they decide what "valid" means).
pub fn normalise_flags(config: &PipelineConfig) -> NormaliseFlags {
    NormaliseFlags { gmail: config.matching.model.normalise.email_provider_rules.contains(&EmailProviderRule::Gmail) }
}

/// One Source as intake sees it: its spec and the SHA-256 of its bearer key.
struct Intake {
    source: NamedSource,
    key_digest: Option<[u8; 32]>,
}

/// What every way into the store shares (HTTP intake, file imports, Kafka consumers): the
/// Source's mapping and validation, quarantine, the erasure gate and duplicate absorption.
#[derive(Clone)]
pub struct Admitter {
    store: Store,
    flags: NormaliseFlags,
    /// Refuses records of erased people (see the Source's `privacy.afterErasure`).
    privacy: Privacy,
}

impl Admitter {
    pub fn new(config: &PipelineConfig, store: Store) -> Admitter {
        // records of a Source a PreMatch enricher names are queued with the time they wait till
        store.hold_for_enrichment(config.enrichment_holds());
        let privacy = Privacy::new(store.clone(), Arc::new(config.clone()));
        Admitter { store, flags: normalise_flags(config), privacy }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Map and validate payloads of `source`, and durably store them, in order: queued (a
    /// redelivery absorbed), quarantined, or refused as an erased person's. With each, what to
    /// report on it: the field errors of an invalid one, the kept invalid values of a valid one.
    pub async fn admit(
        &self,
        source: &NamedSource,
        received: &[Received],
        received_at_ms: i64,
    ) -> Result<Vec<(Admission, Vec<FieldError>)>, StoreError> {
        let identifiers = self.privacy.gate(source, received.iter().map(|r| &r.payload)).await?;
        let (arrivals, notes) = mapping::arrivals(source, self.flags, received, identifiers, received_at_ms);
        Ok(self.store.admit(arrivals).await?.into_iter().zip(notes).collect())
    }
}

/// How a batch of admissions ended, as the `intake_records` metric counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Queued for the first time.
    pub accepted: usize,
    /// Queued before: absorbed.
    pub duplicates: usize,
    /// Invalid, kept in quarantine.
    pub quarantined: usize,
    /// An erased person's: not stored.
    pub refused: usize,
    /// Its event id delivered before with other content: not stored.
    pub conflicts: usize,
}

impl Tally {
    pub fn of<'a>(admissions: impl IntoIterator<Item = &'a Admission>) -> Tally {
        admissions.into_iter().fold(Tally::default(), |mut tally, admission| {
            match admission {
                Admission::Queued(e) if e.duplicate => tally.duplicates += 1,
                Admission::Queued(_) => tally.accepted += 1,
                Admission::Quarantined(_) => tally.quarantined += 1,
                Admission::Refused(_) => tally.refused += 1,
                Admission::Conflict(_) => tally.conflicts += 1,
            }
            tally
        })
    }

    /// Add the tally to `source`'s `intake_records`.
    pub fn count(&self, metrics: &Metrics, source: &str) {
        let outcomes = [
            ("accepted", self.accepted),
            ("duplicate", self.duplicates),
            ("refused", self.refused),
            ("conflict", self.conflicts),
            ("rejected", self.quarantined),
        ];
        for (outcome, n) in outcomes.into_iter().filter(|(_, n)| *n > 0) {
            let labels = vec![("source", source.to_string()), ("outcome", outcome.to_string())];
            metrics.intake_records.get_or_create(&labels).inc_by(n as u64);
        }
    }
}

#[derive(Clone)]
pub struct IngestState {
    pub admitter: Admitter,
    metrics: Arc<Metrics>,
    sources: Arc<BTreeMap<String, Intake>>,
}

impl IngestState {
    /// Read every HTTP Source's key from `secrets`.
    pub fn new(config: &PipelineConfig, secrets: &Secrets, store: Store, metrics: Arc<Metrics>) -> Result<Self, StartError> {
        let mut sources = BTreeMap::new();
        for source in &config.sources {
            let key_digest = match &source.spec.delivery.http {
                Some(http) => Some(digest(&secrets.get(&http.auth_secret_ref)?)),
                None => None,
            };
            sources.insert(source.name.clone(), Intake { source: source.clone(), key_digest });
        }
        Ok(IngestState { admitter: Admitter::new(config, store), metrics, sources: Arc::new(sources) })
    }
}

pub fn router(state: IngestState) -> Router {
    let records = Router::new().route("/v1/sources/{source}/records", post(receive)).with_state(state);
    ops::limit_body(records, BODY_LIMIT).route("/openapi.json", axum::routing::get(|| async { Json(IntakeDoc::openapi()) }))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "cdp intake", description = "Touchpoints deliver records; each Source with its own key and field names."),
    paths(receive),
    components(schemas(ops::ErrorBody, ops::ErrorDetail, FieldError, Enqueued)),
    modifiers(&BearerAuth)
)]
struct IntakeDoc;

/// `202`: every record is durably queued (or was already: a redelivery).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    accepted: Vec<AcceptedRecord>,
    /// Of `accepted`, the records this Source had delivered before, absorbed.
    duplicates: usize,
}

/// `422`: some records were invalid (kept in quarantine) or belong to an erased person
/// (refused); `error.details` lists them, `accepted` the valid ones, queued all the same.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PartlyRefused {
    error: ops::ErrorDetail,
    accepted: Vec<AcceptedRecord>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AcceptedRecord {
    /// Position of the record in the request.
    index: usize,
    #[serde(flatten)]
    enqueued: Enqueued,
    /// Invalid values the Source keeps (`onInvalidValue: Keep`): stored, not matched on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<FieldError>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RejectedRecord {
    index: usize,
    /// Where the payload is kept; none for a refused record (not stored at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantine_id: Option<i64>,
    errors: Vec<FieldError>,
}

/// Code of a record refused because it carries an identifier of an erased person (per field),
/// and of a response whose every rejected record was refused so.
pub const ERASED_SUBJECT: &str = "erasedSubject";
pub const ERASED_SUBJECT_ERROR: &str = "erased_subject";
/// Code of a record whose event id its Source delivered before with other content (on the
/// Source's eventIdField), and of a response whose every rejected record is one.
pub const EVENT_ID_CONFLICT: &str = "eventIdConflict";
pub const EVENT_ID_CONFLICT_ERROR: &str = "event_id_conflict";

/// Why a record was not taken: `source` delivered its event id before with other content, as
/// intake id `first`, which stands (taking this one silently would lose it).
pub fn conflict_error(source: &NamedSource, first: i64) -> FieldError {
    FieldError {
        field: source.spec.event_id_field.clone(),
        code: EVENT_ID_CONFLICT.into(),
        message: format!(
            "this event id was delivered before with other content (intake id {first}), which stands; \
             send a new event with an id of its own"
        ),
    }
}

/// Split the body into payloads by Content-Type: one JSON object, a JSON array, or NDJSON.
fn payloads(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(one) => Ok(vec![one]),
            Err(e) => Err(ApiError::bad_request("invalid_json", format!("body is not JSON: {e}"))),
        },
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => body
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(i, line)| {
                serde_json::from_slice(line)
                    .map_err(|e| ApiError::bad_request("invalid_json", format!("line {}: not JSON: {e}", i + 1)))
            })
            .collect(),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json (one record or an array) or application/x-ndjson",
        )),
    }
}

/// The Source a request may deliver for. The key is checked first, against every Source's,
/// so that a caller without a key learns nothing, not even which Sources exist: no key or an
/// unknown one is a 401; a key of another Source a 403 saying so; only then is an unknown
/// Source a 404.
fn authenticate<'a>(state: &'a IngestState, source: &str, headers: &HeaderMap) -> Result<&'a Intake, ApiError> {
    let presented = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    // every Source's digest is compared, so timing does not tell which one matched
    let holders: Vec<&Intake> = state
        .sources
        .values()
        .filter(|intake| intake.key_digest.as_ref().is_some_and(|expected| digest_matches(expected, presented)))
        .collect();
    let Some(holder) = holders.first() else { return Err(ApiError::unauthorized()) };
    match state.sources.get(source) {
        Some(intake) if holders.iter().any(|h| std::ptr::eq(*h, intake)) => Ok(intake),
        Some(intake) if intake.key_digest.is_none() => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_http_source", format!("source {source:?} does not deliver over HTTP")))
        }
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key is source {:?}'s; it may not deliver for source {source:?}", holder.source.name),
        )),
        None => Err(ApiError::not_found(&format!("source {source:?}"))),
    }
}

/// Deliver records: one JSON object, a JSON array of them, or NDJSON, in the Source's own
/// shape (its mapping names the fields). The key is the Source's (`Authorization: Bearer`).
#[utoipa::path(post, path = "/v1/sources/{source}/records", tag = "intake",
    params(("source" = String, Path, description = "The Source's name")),
    request_body(content = Object, content_type = "application/json",
                 description = "A record, or an array of records; also application/x-ndjson, one per line"),
    responses(
        (status = 202, body = Accepted, description = "Durably queued"),
        (status = 422, body = PartlyRefused, description = "Some records invalid (quarantined) or of an erased person (refused)"),
        (status = 409, body = PartlyRefused, description = "Every record not taken reuses an event id delivered before with other content"),
        (status = 400, body = ops::ErrorBody, description = "Not JSON, or no record"),
        (status = 401, body = ops::ErrorBody, description = "No key, or an unknown one"),
        (status = 403, body = ops::ErrorBody, description = "Another Source's key"),
        (status = 404, body = ops::ErrorBody, description = "No such Source, or not one that delivers over HTTP"),
        (status = 413, body = ops::ErrorBody, description = "The body is over the limit"),
        (status = 415, body = ops::ErrorBody, description = "Not JSON nor NDJSON"),
        (status = 503, body = ops::ErrorBody, description = "The store cannot take it now; send it again"),
    ),
    security(("bearer" = [])))]
async fn receive(
    State(state): State<IngestState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let intake = authenticate(&state, &source, &headers)?;
    let payloads = payloads(&headers, &body)?;
    if payloads.is_empty() {
        return Err(ApiError::bad_request("empty", "no record in the body"));
    }
    let work = state.metrics.meters.ingest.start();
    let received = crate::store::now_ms();
    let total = payloads.len();
    let received_payloads: Vec<Received> = payloads.into_iter().map(Received::from).collect();
    let admissions = state.admitter.admit(&intake.source, &received_payloads, received).await?;
    let tally = Tally::of(admissions.iter().map(|(a, _)| a));
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for (index, (admission, notes)) in admissions.into_iter().enumerate() {
        match admission {
            Admission::Queued(enqueued) => accepted.push(AcceptedRecord { index, enqueued, warnings: notes }),
            Admission::Quarantined(id) => rejected.push(RejectedRecord { index, quarantine_id: Some(id), errors: notes }),
            Admission::Refused(attributes) => {
                // an erased person's data: neither queued nor quarantined
                let errors = attributes
                    .into_iter()
                    .map(|field| FieldError {
                        field,
                        code: ERASED_SUBJECT.into(),
                        message: "belongs to an erased person; this source may not send it again (privacy.afterErasure)".into(),
                    })
                    .collect();
                rejected.push(RejectedRecord { index, quarantine_id: None, errors });
            }
            Admission::Conflict(first) => {
                rejected.push(RejectedRecord { index, quarantine_id: None, errors: vec![conflict_error(&intake.source, first)] });
            }
        }
    }
    work.finished(total as u64);
    tally.count(&state.metrics, &source);
    let duplicates = tally.duplicates;
    tracing::debug!(%source, accepted = accepted.len(), duplicates, rejected = rejected.len(), "intake");
    if rejected.is_empty() {
        return Ok((StatusCode::ACCEPTED, Json(Accepted { accepted, duplicates })).into_response());
    }
    // valid records of a mixed batch are queued all the same: resending the whole batch is
    // safe, the queued ones are absorbed as duplicates
    let details = rejected.iter().map(|r| serde_json::to_value(r).expect("serialises")).collect();
    let Tally { quarantined, refused, conflicts, .. } = tally;
    let (status, code, message) = if conflicts == rejected.len() {
        let message = format!("{conflicts} of {total} records reuse an event id delivered before with other content and were not taken");
        (StatusCode::CONFLICT, EVENT_ID_CONFLICT_ERROR, message)
    } else if refused == rejected.len() {
        let message = format!("{refused} of {total} records belong to an erased person and were refused");
        (StatusCode::UNPROCESSABLE_ENTITY, ERASED_SUBJECT_ERROR, message)
    } else {
        let mut message = format!("{quarantined} of {total} records are invalid and were quarantined");
        if refused > 0 {
            message.push_str(&format!("; {refused} refused (erased person)"));
        }
        if conflicts > 0 {
            message.push_str(&format!("; {conflicts} not taken (event id delivered before with other content)"));
        }
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
    };
    let error = ApiError::new(status, code, message).with_details(details);
    let body = PartlyRefused { error: ops::ErrorBody::from(error).error, accepted };
    Ok((status, Json(body)).into_response())
}

/// `cdp ingest`.
pub async fn run(args: IngestArgs) -> Result<(), StartError> {
    let config = ops::load_config(&args.config)?;
    let store = ops::open_store_from_env().await?;
    let metrics = Metrics::new();
    let secrets = Secrets::from_env();
    let state = IngestState::new(&config, &secrets, store.clone(), metrics.clone())?;
    let (trigger, shutdown) = ops::shutdown_channel();
    ops::on_signal(trigger, ops::DRAIN_DELAY);
    let listener = ops::bind(args.listen).await?;
    let consumers = kafka::spawn_all(&config, &secrets, &state.admitter, &metrics, &shutdown)?;
    tracing::info!(platform = %config.platform, listen = %args.listen, kafka_sources = consumers.len(), "ingest started");
    let load = crate::runtime::load::router(store.clone(), &metrics, crate::scaling::Workload::Ingest);
    ops::serve_with_ops(listener, router(state).merge(load), store.clone(), metrics, shutdown).await;
    for consumer in consumers {
        let _ = consumer.await;
    }
    store.close().await;
    Ok(())
}
