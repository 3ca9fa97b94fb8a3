//! One call to an enricher's endpoint: a signed JSON `POST`, bounded by the timeout, under
//! the enricher's rate limit and concurrency bound. Retrying is the worker's business.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::crd::enricher::Endpoint;
use crate::runtime::ops::{Secrets, StartError};
use crate::runtime::outbound::{self, error_chain};
use crate::runtime::sign::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign};

/// Why one call failed. The text says what happened, never what was sent.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("endpoint answered {0}")]
    Status(u16),
    #[error("no answer within {0} s")]
    Timeout(u32),
    #[error("cannot reach the endpoint: {0}")]
    Connect(String),
    #[error("the answer is not a JSON object")]
    Answer,
}

impl CallError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Status(s) if *s >= 500 => "status_5xx",
            Self::Status(_) => "status_4xx",
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Answer => "answer",
        }
    }
}

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Secret(Box<StartError>),
    #[error("enricher client: {0}")]
    Client(String),
}

/// Spaces call starts at least `1 / rate` seconds apart.
struct RateLimit {
    every: Duration,
    next: Mutex<Instant>,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        RateLimit { every: Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))), next: Mutex::new(Instant::now()) }
    }

    async fn wait(&self) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + self.every;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// An endpoint ready to call.
pub struct Caller {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    bearer: Option<String>,
    timeout_seconds: u32,
    rate: RateLimit,
    slots: Arc<Semaphore>,
}

impl Caller {
    pub fn new(endpoint: &Endpoint, rate_per_second: u32, concurrency: u32, secrets: &Secrets) -> Result<Caller, EndpointError> {
        let secret = secrets.get(&endpoint.signing_secret_ref).map_err(|e| EndpointError::Secret(e.into()))?.into_bytes();
        let bearer = endpoint
            .auth_secret_ref
            .as_ref()
            .map(|r| secrets.get(r).map(|t| t.trim().to_string()))
            .transpose()
            .map_err(|e| EndpointError::Secret(e.into()))?;
        let client = outbound::client(&endpoint.url, endpoint.timeout_seconds, endpoint.allow_insecure_http)
            .map_err(|e| EndpointError::Client(e.to_string()))?;
        Ok(Caller {
            client,
            url: endpoint.url.clone(),
            secret,
            bearer,
            timeout_seconds: endpoint.timeout_seconds,
            rate: RateLimit::new(rate_per_second),
            slots: Arc::new(Semaphore::new(concurrency.max(1) as usize)),
        })
    }

    /// Send `values` under `call_id` (also the idempotency key) and return the JSON answer,
    /// with how long the endpoint took. Waits for a slot and for the rate limit first.
    pub async fn call(&self, enricher: &str, call_id: &str, values: &BTreeMap<String, String>) -> Result<(Value, Duration), CallError> {
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        self.rate.wait().await;
        let body = serde_json::to_vec(&json!({"id": call_id, "enricher": enricher, "values": values})).expect("JSON serialises");
        let signature = sign(&self.secret, jiff::Timestamp::now().as_second(), &body);
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header(IDEMPOTENCY_HEADER, call_id)
            .header(SIGNATURE_HEADER, signature)
            .body(body);
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        let started = Instant::now();
        let response = request.send().await.map_err(|e| self.failure(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(CallError::Status(status.as_u16()));
        }
        let answer: Value = response.json().await.map_err(|e| if e.is_timeout() { self.failure(&e) } else { CallError::Answer })?;
        if !answer.is_object() {
            return Err(CallError::Answer);
        }
        Ok((answer, started.elapsed()))
    }

    fn failure(&self, e: &reqwest::Error) -> CallError {
        if e.is_timeout() { CallError::Timeout(self.timeout_seconds) } else { CallError::Connect(error_chain(e)) }
    }
}
