//! The destinations: a signed HTTPS webhook, or a Kafka topic keyed by profile id. Each send is
//! one attempt; retrying is the worker's business.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::sign::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign};
use crate::runtime::ops::{Secrets, StartError};
use crate::runtime::outbound::{self, error_chain};
use crate::crd::feed::{Destination as Spec, KafkaTopic, Webhook};

/// One message to send.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The idempotency key: the same on every attempt of one event.
    pub key: &'a str,
    pub profile_id: Option<i64>,
    pub body: &'a [u8],
}

/// Why one attempt failed. The text says what happened, never what was sent.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("no answer within {0} s")]
    Timeout(u32),
    #[error("cannot reach the receiver: {0}")]
    Connect(String),
    #[error("kafka: {0}")]
    Kafka(String),
}

impl DeliveryError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Status(s) if *s >= 500 => "status_5xx",
            Self::Status(_) => "status_4xx",
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Kafka(_) => "kafka",
        }
    }
}

/// A destination ready to send.
pub enum Destination {
    Webhook { client: reqwest::Client, url: String, secret: Vec<u8>, timeout_seconds: u32 },
    Kafka { producer: FutureProducer, topic: String },
}

/// Why a destination could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("spec.destination: set exactly one of webhook or kafka")]
    NotOne,
    #[error(transparent)]
    Secret(Box<StartError>),
    #[error("webhook client: {0}")]
    Client(String),
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl DestinationError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotOne => "Destination",
            Self::Secret(e) => e.reason(),
            Self::Client(_) => "WebhookClient",
            Self::Kafka(_) => "KafkaProducer",
        }
    }
}

/// How long librdkafka keeps trying one message before the attempt counts as failed.
const KAFKA_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

impl Destination {
    pub fn new(spec: &Spec, secrets: &Secrets) -> Result<Destination, DestinationError> {
        match (&spec.webhook, &spec.kafka) {
            (Some(w), None) => Self::webhook(w, secrets),
            (None, Some(k)) => Self::kafka(k, secrets),
            _ => Err(DestinationError::NotOne),
        }
    }

    fn webhook(w: &Webhook, secrets: &Secrets) -> Result<Destination, DestinationError> {
        let secret = secrets.get(&w.signing_secret_ref).map_err(|e| DestinationError::Secret(e.into()))?.into_bytes();
        let client =
            outbound::client(&w.url, w.timeout_seconds, w.allow_insecure_http).map_err(|e| DestinationError::Client(e.to_string()))?;
        Ok(Destination::Webhook { client, url: w.url.clone(), secret, timeout_seconds: w.timeout_seconds })
    }

    fn kafka(k: &KafkaTopic, secrets: &Secrets) -> Result<Destination, DestinationError> {
        let servers = secrets.get(&k.bootstrap_servers_secret_ref).map_err(|e| DestinationError::Secret(e.into()))?;
        let producer = ClientConfig::new()
            .set("bootstrap.servers", servers.trim())
            // no duplicates nor reordering from librdkafka's own retries
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", KAFKA_MESSAGE_TIMEOUT.as_millis().to_string())
            .create()?;
        Ok(Destination::Kafka { producer, topic: k.topic.clone() })
    }

    /// Send one message once; `Ok` when the destination acknowledged it.
    pub async fn send(&self, message: Outgoing<'_>) -> Result<(), DeliveryError> {
        let key = message.key;
        match self {
            Destination::Webhook { client, url, secret, timeout_seconds } => {
                let signature = sign(secret, jiff::Timestamp::now().as_second(), message.body);
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header(IDEMPOTENCY_HEADER, key)
                    .header(SIGNATURE_HEADER, signature)
                    .body(message.body.to_vec())
                    .send()
                    .await
                    .map_err(|e| {
                        if e.is_timeout() {
                            DeliveryError::Timeout(*timeout_seconds)
                        } else {
                            DeliveryError::Connect(error_chain(&e))
                        }
                    })?;
                match response.status() {
                    s if s.is_success() => Ok(()),
                    s => Err(DeliveryError::Status(s.as_u16())),
                }
            }
            Destination::Kafka { producer, topic } => {
                let profile = message.profile_id.map_or_else(|| format!("e{key}"), |p| format!("p{p}"));
                let headers = OwnedHeaders::new().insert(Header { key: IDEMPOTENCY_HEADER, value: Some(key) });
                let record = FutureRecord::to(topic).key(&profile).payload(message.body).headers(headers);
                producer
                    .send(record, KAFKA_MESSAGE_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| DeliveryError::Kafka(e.to_string()))
            }
        }
    }
}

/// `url` with the scheme, host and port of `base` (and its path as a prefix).
pub fn redirected(url: &str, base: &url::Url) -> String {
    let path = url::Url::parse(url).map(|u| u.path().trim_start_matches('/').to_string()).unwrap_or_default();
    base.join(&path).map_or_else(|_| url.to_string(), |u| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_keeps_the_path() {
        let base = url::Url::parse("http://127.0.0.1:9999").unwrap();
        assert_eq!(redirected("https://crm.example.com/hooks/cdp", &base), "http://127.0.0.1:9999/hooks/cdp");
        let prefixed = url::Url::parse("http://127.0.0.1:9999/feeds/").unwrap();
        assert_eq!(redirected("https://sms.example.com/v1/welcome", &prefixed), "http://127.0.0.1:9999/feeds/v1/welcome");
    }
}
