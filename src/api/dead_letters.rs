//! Dead letters of the feeds: events a feed gave up on after its `maxAttempts`. List them,
//! inspect one (the message as it was sent, the attempts, the last error), and replay one once
//! the receiver is fixed: it gets fresh attempts, in line behind nothing but its own profile.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use crate::runtime::auth::Scope;
use crate::runtime::ops::ApiError;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterQuery {
    /// Return dead letters of events after this event id.
    #[serde(default)]
    after: i64,
    /// At most this many (1-500, default 100).
    limit: Option<i64>,
}

/// A dead letter: an event a feed could not deliver.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    pub feed: String,
    pub event_id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub profile_id: Option<String>,
    /// The message as it was sent (minimised to the feed's allow-list).
    #[schema(value_type = Object)]
    pub message: serde_json::Value,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub dead_at_ms: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    pub feed: String,
    pub event_id: i64,
}

impl From<crate::store::Delivery> for DeadLetterView {
    fn from(d: crate::store::Delivery) -> Self {
        DeadLetterView {
            feed: d.feed,
            event_id: d.event_id,
            kind: d.kind,
            profile_id: d.profile_id.map(super::profile_ref),
            message: d.message,
            attempts: d.attempts,
            last_error: d.last_error,
            created_at_ms: d.created_at_ms,
            dead_at_ms: d.dead_at_ms,
        }
    }
}

fn known_feed(s: &ApiState, feed: &str) -> Result<(), ApiError> {
    match s.config.feeds.iter().any(|f| f.name == feed) {
        true => Ok(()),
        false => Err(ApiError::not_found(&format!("feed {feed:?}"))),
    }
}

/// Dead letters of a feed, oldest event first.
#[utoipa::path(get, path = "/v1/feeds/{feed}/dead-letters", params(("feed" = String, Path), DeadLetterQuery),
    responses((status = 200, body = DeadLetterList), (status = 404, body = crate::runtime::ops::ErrorBody)))]
pub async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(feed): Path<String>,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    known_feed(&s, &feed)?;
    let limit = super::page_limit(q.limit, 100, 500)?;
    let page = s.store.dead_letters(&feed, q.after, limit).await?;
    Ok(Json(DeadLetterList {
        dead_letters: page.dead_letters.into_iter().map(Into::into).collect(),
        next_after: page.next_after,
    }))
}

/// One dead letter.
#[utoipa::path(get, path = "/v1/feeds/{feed}/dead-letters/{eventId}", params(("feed" = String, Path), ("eventId" = i64, Path)),
    responses((status = 200, body = DeadLetterView), (status = 404, body = crate::runtime::ops::ErrorBody)))]
pub async fn inspect(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((feed, event_id)): Path<(String, i64)>,
) -> Result<Json<DeadLetterView>, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    known_feed(&s, &feed)?;
    let dead = s.store.dead_letter(&feed, event_id).await?;
    dead.map(|d| Json(d.into())).ok_or_else(|| ApiError::not_found(&format!("dead letter {event_id} of feed {feed:?}")))
}

/// Deliver a dead letter again, with fresh attempts.
#[utoipa::path(post, path = "/v1/feeds/{feed}/dead-letters/{eventId}/replay", params(("feed" = String, Path), ("eventId" = i64, Path)),
    responses((status = 202, body = Replayed), (status = 404, body = crate::runtime::ops::ErrorBody)))]
pub async fn replay(State(s): State<ApiState>, headers: HeaderMap, Path((feed, event_id)): Path<(String, i64)>) -> Result<Response, ApiError> {
    s.tokens.authorize(&headers, Scope::Write)?;
    known_feed(&s, &feed)?;
    if !s.store.replay_dead_letter(&feed, event_id).await? {
        return Err(ApiError::not_found(&format!("dead letter {event_id} of feed {feed:?}")));
    }
    tracing::info!(%feed, event_id, "dead letter replayed");
    Ok((StatusCode::ACCEPTED, Json(Replayed { feed, event_id })).into_response())
}

/// The dead-letter routes, merged into the API router.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/feeds/{feed}/dead-letters", get(list))
        .route("/v1/feeds/{feed}/dead-letters/{eventId}", get(inspect))
        .route("/v1/feeds/{feed}/dead-letters/{eventId}/replay", post(replay))
}
