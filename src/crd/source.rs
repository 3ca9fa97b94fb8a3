//! `Source`: one touchpoint that sends what it learns about customers.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, PlatformRef, SecretKeyRef};

/// A touchpoint: how it delivers, how its fields map to canonical attributes, how it is validated.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "cdp.dev",
    version = "v1alpha1",
    kind = "Source",
    namespaced,
    doc = "A touchpoint that sends customer records to a platform.",
    shortname = "cdpsrc",
    status = "SourceStatus",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".spec.platformRef.name"}"#,
    printcolumn = r#"{"name":"Trust","type":"integer","jsonPath":".spec.trustRank"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    pub platform_ref: PlatformRef,
    pub delivery: Delivery,
    /// Field mapping from the touchpoint's payload to canonical attributes.
    #[schemars(length(min = 1, max = 128))]
    pub mapping: Vec<FieldMapping>,
    /// Payload field holding the touchpoint's own record or event id (makes redelivery
    /// idempotent); an id is at most 256 characters.
    #[serde(default = "default_event_id_field")]
    #[schemars(length(min = 1))]
    pub event_id_field: String,
    /// Payload field holding when the touchpoint observed the record (RFC 3339); intake time when
    /// absent. From 1900 to 24 hours after the record arrives: a later one would make its
    /// statements the newest for ever, so it is refused (`outOfRange`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at_field: Option<String>,
    #[serde(default)]
    pub validation: ValidationRules,
    /// ISO 3166-1 alpha-2 region used to read phone numbers written without a country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z]{2}$"))]
    pub default_phone_region: Option<String>,
    /// How this Source writes dates with slashes or dots: `DMY` (31/12/1990) or `MDY`
    /// (12/31/1990). Undeclared, a date whose day and month could be either (01/02/1990) is
    /// refused as ambiguous, never guessed; unambiguous ones (31/12/1990, ISO dates) are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_order: Option<DateOrder>,
    /// Survivorship rank: values from a higher-ranked source win in the golden profile.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub trust_rank: i32,
    /// Retention of this source's records and what happens to a person it sends after erasure.
    #[serde(default, skip_serializing_if = "SourcePrivacy::is_default")]
    pub privacy: SourcePrivacy,
}

impl SourceSpec {
    /// Every Secret key this Source references, with the field that names it.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretKeyRef)> {
        let d = &self.delivery;
        [
            d.http.as_ref().map(|h| ("spec.delivery.http.authSecretRef", &h.auth_secret_ref)),
            d.batch.as_ref().map(|b| ("spec.delivery.batch.authSecretRef", &b.auth_secret_ref)),
        ]
        .into_iter()
        .flatten()
        .chain(d.kafka.iter().flat_map(KafkaDelivery::secret_refs))
        .collect()
    }
}

/// The order of day, month and year in a date such as `01/02/1990` or `01.02.1990`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum DateOrder {
    /// Day first: `01/02/1990` is 1 February.
    #[serde(rename = "DMY")]
    DayMonthYear,
    /// Month first: `01/02/1990` is 2 January.
    #[serde(rename = "MDY")]
    MonthDayYear,
}

fn default_event_id_field() -> String {
    "id".to_string()
}

/// Exactly one delivery kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.http), has(self.kafka), has(self.batch)].filter(x, x).size() == 1", "message": "delivery: set exactly one of http, kafka or batch"}
]))]
pub struct Delivery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpDelivery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaDelivery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchDelivery>,
}

/// HTTP push to `POST /v1/sources/{name}/records` with a bearer key.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpDelivery {
    /// The bearer key the touchpoint presents.
    pub auth_secret_ref: SecretKeyRef,
}

/// A Kafka topic intake consumes: each message is one record (a JSON object) or a JSON array
/// of records, as the HTTP intake takes them. Offsets are committed only once the records
/// before them are stored (at least once; redeliveries are absorbed by the event id).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaDelivery {
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: String,
    /// Secret key holding the comma-separated bootstrap servers.
    pub bootstrap_servers_secret_ref: SecretKeyRef,
    /// The consumer group intake replicas share the topic's partitions in; `<platform>-<source>`
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub consumer_group: Option<String>,
    /// Where a consumer group with no committed offset starts: `Earliest`, every message the
    /// topic still holds, or `Latest`, only messages published from then on. A group resumes
    /// from its committed offsets whatever this says.
    #[serde(default)]
    pub auto_offset_reset: AutoOffsetReset,
    /// Messages read and not yet stored, at most, per intake replica: reading waits at this
    /// many until the store has taken them, which bounds memory (a message is at most 16 MiB).
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_in_flight: u32,
    /// A record without the Source's `eventIdField`: `Quarantine` it, as the HTTP intake does, or
    /// take its message's `Coordinates` as its id (`topic/partition/offset`, and `/index` for a
    /// record of an array): a redelivered message is absorbed, a record published twice is not.
    #[serde(default)]
    pub missing_event_id: MissingEventId,
    /// TLS to the brokers (`{}` for the system's trust store and no client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL authentication (over TLS when `tls` is set, else in clear text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// Ports the brokers listen on, opened in the intake NetworkPolicy's egress; 9092 and 9093
    /// when empty. Brokers are reached on the ports they advertise, so list those too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("items" = {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535}))]
    pub broker_ports: Vec<u16>,
}

fn default_max_in_flight() -> u32 {
    1000
}

impl KafkaDelivery {
    /// Every Secret key the consumer reads, with the field that names it.
    fn secret_refs(&self) -> Vec<(&'static str, &SecretKeyRef)> {
        let tls = self.tls.iter().flat_map(|t| {
            [
                t.ca_secret_ref.as_ref().map(|r| ("spec.delivery.kafka.tls.caSecretRef", r)),
                t.cert_secret_ref.as_ref().map(|r| ("spec.delivery.kafka.tls.certSecretRef", r)),
                t.key_secret_ref.as_ref().map(|r| ("spec.delivery.kafka.tls.keySecretRef", r)),
            ]
        });
        let sasl = self.sasl.iter().flat_map(|s| {
            [
                Some(("spec.delivery.kafka.sasl.usernameSecretRef", &s.username_secret_ref)),
                Some(("spec.delivery.kafka.sasl.passwordSecretRef", &s.password_secret_ref)),
            ]
        });
        std::iter::once(Some(("spec.delivery.kafka.bootstrapServersSecretRef", &self.bootstrap_servers_secret_ref)))
            .chain(tls)
            .chain(sasl)
            .flatten()
            .collect()
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AutoOffsetReset {
    #[default]
    Earliest,
    Latest,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum MissingEventId {
    #[default]
    Quarantine,
    Coordinates,
}

/// TLS to Kafka brokers; every value is PEM from a Secret key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.certSecretRef) == has(self.keySecretRef)", "message": "tls: set both certSecretRef and keySecretRef, or neither"}
]))]
pub struct KafkaTls {
    /// CA bundle the brokers' certificates are checked against; the system's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate, for brokers that authenticate clients by TLS (with `keySecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// The client certificate's private key (unencrypted PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

/// SASL authentication to Kafka brokers.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username_secret_ref: SecretKeyRef,
    pub password_secret_ref: SecretKeyRef,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka and the brokers use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Files imported with `cdp import`; the key authenticates the importer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchDelivery {
    pub format: BatchFormat,
    pub auth_secret_ref: SecretKeyRef,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BatchFormat {
    Csv,
    Ndjson,
}

/// `from` a payload field (dotted path into nested JSON) `to` a canonical attribute.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FieldMapping {
    #[schemars(length(min = 1, max = 256))]
    pub from: String,
    /// `givenName`, `familyName`, `email`, `phone`, `birthDate`, ..., or
    /// `identifiers.<name>`, `attributes.<name>`, `consents.<purpose>`.
    #[schemars(regex(pattern = r"^([a-zA-Z]+|(identifiers|attributes|consents)\.[a-zA-Z][a-zA-Z0-9_-]*)$"))]
    pub to: String,
}

/// The longest value kept at all, in characters, whatever a Source's `maxLength` or
/// `onInvalidValue` say: nothing unbounded is stored, even as sent.
pub const MAX_VALUE_CHARS: usize = 10_000;

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValidationRules {
    /// Canonical attributes every record must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// At least one of these must be present (e.g. `email`, `phone`, `identifiers.loyaltyId`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_any_of: Vec<String>,
    /// A value that cannot be normalised (an impossible date, a malformed phone number), or
    /// is longer than its limit (`maxLength`): `Reject` refuses the record (422, kept in
    /// quarantine); `Keep` accepts it, stores the value as sent, leaves it out of matching and
    /// reports it as a warning. A required attribute must always be valid, and no value longer
    /// than 10000 characters is kept.
    #[serde(default)]
    pub on_invalid_value: InvalidValuePolicy,
    /// The longest value accepted per attribute, in characters (not bytes), e.g.
    /// `{givenName: 50, attributes.note: 2000}`; at most 10000. Attributes not listed keep
    /// their default: 100 for givenName, middleName, familyName, city and country; 300 for
    /// fullName; 200 for street; 254 for email; 40 for phone and birthDate; 16 for postcode;
    /// 64 for gender and nationalId; 256 for identifiers.*; 32 for consents.*; 1000 for
    /// attributes.*. Values longer than 300 characters, whatever their limit, are only compared
    /// for equality in matching.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 128,
        "additionalProperties" = {"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_VALUE_CHARS}
    ))]
    pub max_length: BTreeMap<String, u32>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum InvalidValuePolicy {
    #[default]
    Reject,
    Keep,
}

/// GDPR settings of a source.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourcePrivacy {
    /// Records observed longer ago than this many days are purged on a schedule (with their
    /// quarantined payloads); a profile left with no records is erased. Kept forever when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub retention_days: Option<u32>,
    /// A record of an erased person arriving from this source: `Refuse` it at intake (not
    /// stored), or accept it as the start of a `NewProfile` (the person came back).
    #[serde(default)]
    pub after_erasure: AfterErasure,
}

impl SourcePrivacy {
    fn is_default(&self) -> bool {
        *self == SourcePrivacy::default()
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AfterErasure {
    #[default]
    Refuse,
    NewProfile,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// How the intake replicas consume a Kafka Source's topic, as they last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<ConsumerStatus>,
}

/// A Kafka Source's consumer group as its intake replicas report it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    /// Partitions of the topic (0 while unknown).
    pub partitions: i64,
    /// Messages behind the end of the topic, over every assigned partition.
    pub lag: i64,
    /// Records taken from the topic per second, over every replica.
    pub consumed_per_second: f64,
    /// Which replica consumes which partitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assignments: Vec<ConsumerAssignment>,
    /// The newest error a replica reported (broker unreachable, authentication refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The partitions one intake replica consumes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerAssignment {
    pub replica: String,
    pub partitions: Vec<i32>,
}
