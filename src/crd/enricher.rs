//! `Enricher`: one step that adds third-party data to records or profiles over HTTP.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, PlatformRef, SecretKeyRef};
use super::feed::{DeliveryPolicy, Trigger};

/// An enrichment step: when it runs, what it sends where, and what it writes back.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "cdp.dev",
    version = "v1alpha1",
    kind = "Enricher",
    namespaced,
    doc = "An enrichment step: third-party data added to records before matching or to profiles after they change.",
    shortname = "cdpenrich",
    status = "EnricherStatus",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".spec.platformRef.name"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".spec.stage"}"#,
    printcolumn = r#"{"name":"Calls","type":"integer","jsonPath":".status.calls"}"#,
    printcolumn = r#"{"name":"Failures","type":"integer","jsonPath":".status.failures"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.stage != 'PreMatch' || (has(self.sources) && size(self.sources) > 0)", "message": "a PreMatch enricher names the Sources whose records it enriches (sources)"},
    {"rule": "self.stage == 'ProfileChange' || !has(self.triggers)", "message": "triggers select profile changes: a PreMatch enricher selects by sources"}
]))]
pub struct EnricherSpec {
    pub platform_ref: PlatformRef,
    /// `PreMatch`: a record is enriched before it is matched (what matching compares, e.g. a
    /// standardised address); `ProfileChange`: a profile is enriched after it changes.
    pub stage: EnrichStage,
    /// Only records of these Sources (PreMatch), or profiles changed by a record of one of
    /// them (ProfileChange; empty: any change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub sources: Vec<String>,
    /// ProfileChange: all must hold for a change to be enriched, in the Feeds' trigger syntax
    /// (`event.type`, `profile.<attribute>`, e.g. `profile.country equals FR`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub triggers: Vec<Trigger>,
    /// Attributes sent to the endpoint; nothing else leaves the platform. A record or profile
    /// holding none of them is not sent.
    #[schemars(length(min = 1, max = 32))]
    pub attributes: Vec<String>,
    pub endpoint: Endpoint,
    /// What is written back: a field of the endpoint's JSON answer to an attribute.
    #[schemars(length(min = 1, max = 32))]
    pub write: Vec<WriteBack>,
    /// Survivorship rank of the values written back (ProfileChange), as a Source's.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub trust_rank: i32,
    /// Only people who granted this consent purpose are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9_-]*$"))]
    pub required_consent: Option<String>,
    /// How long an answer is reused for the same values sent.
    #[serde(default = "default_cache_ttl")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub cache_ttl_seconds: u32,
    /// Calls started per second at most.
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 10_000))]
    pub rate_limit_per_second: u32,
    /// Calls in flight at most.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: u32,
    /// PreMatch: how long a record waits for its enrichment before it is matched as it is
    /// (and enriched later, in its profile).
    #[serde(default = "default_max_wait")]
    #[schemars(range(min = 1, max = 300))]
    pub max_wait_seconds: u32,
    /// Attempts and backoff before a call goes to the dead letters.
    #[serde(default)]
    pub retry: DeliveryPolicy,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum EnrichStage {
    PreMatch,
    ProfileChange,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.url.matches('^https://[^/?#\\\\s]+') || (self.allowInsecureHttp && self.url.matches('^http://[^/?#\\\\s]+'))", "message": "endpoint.url must be https://host/... (or http:// with allowInsecureHttp: true)"}
]))]
pub struct Endpoint {
    #[schemars(length(min = 8, max = 2048))]
    pub url: String,
    /// HMAC-SHA256 secret signing each request, as the feeds' webhooks (`Cdp-Signature`).
    pub signing_secret_ref: SecretKeyRef,
    /// A bearer token sent as `Authorization: Bearer ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,
    /// Permit plain http (for services inside the cluster network).
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: u32,
}

/// One value written back: `from` a field of the answer (dotted path), `to` an attribute.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WriteBack {
    #[schemars(length(min = 1, max = 256))]
    pub from: String,
    /// A canonical attribute (`street`, `postcode`, ...) or `attributes.<name>`.
    #[schemars(length(min = 1, max = 128))]
    pub to: String,
}

impl EnricherSpec {
    /// Every Secret key this Enricher references, with the field that names it.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretKeyRef)> {
        let e = &self.endpoint;
        std::iter::once(("spec.endpoint.signingSecretRef", &e.signing_secret_ref))
            .chain(e.auth_secret_ref.as_ref().map(|a| ("spec.endpoint.authSecretRef", a)))
            .collect()
    }
}

fn default_cache_ttl() -> u32 {
    86_400
}
fn default_rate() -> u32 {
    50
}
fn default_concurrency() -> u32 {
    8
}
fn default_max_wait() -> u32 {
    2
}
fn default_timeout() -> u32 {
    5
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnricherStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Calls made to the endpoint (answered or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<i64>,
    /// Share of lookups answered from the cache, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit_ratio: Option<f64>,
    /// Mean latency of the endpoint's answers, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Failed calls (each retry counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<i64>,
    /// Enrichments given up after the last retry, listed as dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<i64>,
    /// PreMatch: records matched as they were because the enricher did not answer in time
    /// (enriched later in their profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_unenriched: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
