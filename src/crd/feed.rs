//! `Feed`: one consumer of profile data and events.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, PlatformRef, SecretKeyRef};

/// An outbound feed: destination, which events, conditions, and what it may see.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "cdp.dev",
    version = "v1alpha1",
    kind = "Feed",
    namespaced,
    doc = "An outbound feed of profile data and events to one consumer.",
    shortname = "cdpfeed",
    status = "FeedStatus",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".spec.platformRef.name"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FeedSpec {
    pub platform_ref: PlatformRef,
    pub destination: Destination,
    /// Event types delivered.
    #[schemars(length(min = 1))]
    pub events: Vec<EventType>,
    /// All must hold for an event to be delivered (erasures are always delivered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub triggers: Vec<Trigger>,
    /// Profile attributes the feed may receive; nothing else leaves the platform.
    #[schemars(length(min = 1, max = 64))]
    pub attributes: Vec<String>,
    /// Only profiles that granted this consent purpose are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9_-]*$"))]
    pub required_consent: Option<String>,
    #[serde(default)]
    pub delivery: DeliveryPolicy,
}

impl FeedSpec {
    /// Every Secret key this Feed references, with the field that names it.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretKeyRef)> {
        let d = &self.destination;
        [
            d.webhook.as_ref().map(|w| ("spec.destination.webhook.signingSecretRef", &w.signing_secret_ref)),
            d.kafka.as_ref().map(|k| ("spec.destination.kafka.bootstrapServersSecretRef", &k.bootstrap_servers_secret_ref)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.webhook) != has(self.kafka)", "message": "destination: set exactly one of webhook or kafka"}
]))]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaTopic>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.url.matches('^https://[^/?#\\\\s]+') || (self.allowInsecureHttp && self.url.matches('^http://[^/?#\\\\s]+'))", "message": "webhook.url must be https://host/... (or http:// with allowInsecureHttp: true)"}
]))]
pub struct Webhook {
    #[schemars(length(min = 8, max = 2048))]
    pub url: String,
    /// HMAC-SHA256 signing secret.
    pub signing_secret_ref: SecretKeyRef,
    /// Permit plain http (for receivers inside the cluster network).
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: u32,
}

fn default_timeout() -> u32 {
    10
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopic {
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: String,
    pub bootstrap_servers_secret_ref: SecretKeyRef,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventType {
    #[serde(rename = "profile.created")]
    ProfileCreated,
    #[serde(rename = "profile.updated")]
    ProfileUpdated,
    #[serde(rename = "profile.merged")]
    ProfileMerged,
    #[serde(rename = "profile.unmerged")]
    ProfileUnmerged,
    #[serde(rename = "profile.erased")]
    ProfileErased,
    #[serde(rename = "record.received")]
    RecordReceived,
    #[serde(rename = "consent.changed")]
    ConsentChanged,
}

/// A condition on the event or the profile, e.g. `field: profile.attributes.tier, op: equals, value: patron`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.op in ['exists', 'notExists'] ? !has(self.value) && !has(self.values) : (self.op in ['in', 'notIn'] ? has(self.values) : has(self.value))", "message": "equals/notEquals/contains take value, in/notIn take values, exists/notExists take neither"}
]))]
pub struct Trigger {
    /// `event.source`, `event.type`, `profile.<attribute>` (e.g. `profile.attributes.tier`).
    #[schemars(regex(pattern = r"^(event\.(source|type)|profile\.[a-zA-Z][a-zA-Z0-9_.-]*)$"))]
    pub field: String,
    pub op: TriggerOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TriggerOp {
    Equals,
    NotEquals,
    In,
    NotIn,
    Contains,
    Exists,
    NotExists,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPolicy {
    /// Attempts before an event goes to the dead-letter list.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff")]
    #[schemars(range(min = 1, max = 3600))]
    pub initial_backoff_seconds: u32,
    #[serde(default = "default_max_backoff")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_backoff_seconds: u32,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            initial_backoff_seconds: default_initial_backoff(),
            max_backoff_seconds: default_max_backoff(),
        }
    }
}

fn default_attempts() -> u32 {
    12
}
fn default_initial_backoff() -> u32 {
    1
}
fn default_max_backoff() -> u32 {
    600
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeedStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Events waiting for this feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
