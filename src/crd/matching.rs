//! `MatchingPolicy`: how records become people.
//!
//! The spec types are also the identity engine's configuration: the pipeline copies them into
//! the `PipelineConfig` unchanged, so what a user declares is exactly what the matcher runs.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::{CommonStatus, PlatformRef};

/// How one platform recognises the same person across sources.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "cdp.dev",
    version = "v1alpha1",
    kind = "MatchingPolicy",
    namespaced,
    doc = "How a platform recognises the same person across sources.",
    shortname = "cdpmatch",
    status = "MatchingPolicyStatus",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".spec.platformRef.name"}"#,
    printcolumn = r#"{"name":"Merge","type":"number","jsonPath":".spec.thresholds.merge"}"#,
    printcolumn = r#"{"name":"Review","type":"number","jsonPath":".spec.thresholds.review"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MatchingPolicySpec {
    pub platform_ref: PlatformRef,
    #[serde(flatten)]
    pub model: MatchingModel,
}

/// The matching model: everything the identity engine needs to decide.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MatchingModel {
    /// Normalisation options beyond the always-on rules.
    #[serde(default)]
    pub normalise: NormaliseOptions,
    /// Blocking keys: a record is compared only with records sharing at least one key.
    #[schemars(length(min = 1, max = 32))]
    pub blocking: Vec<BlockingKey>,
    /// A blocking-key value carried by more records than this is generic (a common surname in
    /// a large town, a placeholder email): records are no longer looked up through it, only
    /// through their other keys. It bounds the work per record as the store grows.
    #[serde(default = "default_max_block_size")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_block_size: u32,
    /// Profiles a record is compared with at most; when its keys reach more, those sharing the
    /// most keys with it are kept.
    #[serde(default = "default_max_candidates")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_candidates: u32,
    /// Probabilistic comparisons (Fellegi–Sunter), one per attribute.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub comparisons: Vec<Comparison>,
    /// Deterministic rules, checked before the score.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub rules: Vec<DeterministicRule>,
    /// Attributes that, when both sides have a value and the values clearly differ, forbid a merge.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub never_merge: Vec<NeverMerge>,
    /// Prior probability that two records compared are the same person (λ), strictly between 0 and 1.
    #[serde(default = "default_prior")]
    #[schemars(range(min = 0.0, max = 1.0))]
    #[schemars(extend("exclusiveMinimum" = true, "exclusiveMaximum" = true))]
    pub prior_match_probability: f64,
    pub thresholds: Thresholds,
    /// Which value the golden profile keeps, per attribute.
    #[serde(default)]
    pub survivorship: Survivorship,
}

fn default_prior() -> f64 {
    1e-4
}

/// Records sharing one key value before it is generic: large enough that a family, a
/// household or a shared office mailbox stays a block, small enough that reading a block
/// stays cheap however large the store grows.
pub const DEFAULT_MAX_BLOCK_SIZE: u32 = 100;

fn default_max_block_size() -> u32 {
    DEFAULT_MAX_BLOCK_SIZE
}

/// Candidate profiles per record: a person's own profile shares several keys with the record
/// and ranks first; this leaves room for a household and its near namesakes, and bounds the
/// records read and compared per record.
pub const DEFAULT_MAX_CANDIDATES: u32 = 20;

fn default_max_candidates() -> u32 {
    DEFAULT_MAX_CANDIDATES
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NormaliseOptions {
    /// Email providers whose address rules apply (`gmail`: dots and `+tag` ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_provider_rules: Vec<EmailProviderRule>,
    /// Nickname equivalence, e.g. `bob: robert`; compared as the same given name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nicknames: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EmailProviderRule {
    Gmail,
}

/// A blocking key: the concatenation of the listed attribute transforms.
/// `fullName` is derived from given and family name when a record has none.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlockingKey {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// Parts of the key; every part must be non-empty for the record to get this key.
    #[schemars(length(min = 1, max = 4))]
    pub parts: Vec<KeyPart>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyPart {
    /// Canonical attribute (`email`, `phone`, `familyName`, `identifiers.loyaltyId`, ...).
    pub attribute: String,
    #[serde(default)]
    pub transform: KeyTransform,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KeyTransform {
    /// The normalised value.
    #[default]
    Exact,
    /// Double Metaphone primary code.
    Phonetic,
    /// The first three characters.
    Prefix3,
    /// Year of a date.
    Year,
    /// Letters of the value sorted (spaces ignored), so swapped tokens share the key.
    SortedTokens,
}

/// One comparison: ordered levels, first match wins; anything else falls to the `else` level.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.levels.all(l, l.m > 0.0 && l.u > 0.0)", "message": "every level needs m > 0 and u > 0"},
    {"rule": "self.elseLevel.m > 0.0 && self.elseLevel.u > 0.0", "message": "elseLevel needs m > 0 and u > 0"}
]))]
pub struct Comparison {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// Canonical attribute compared.
    pub attribute: String,
    /// Also compare against this attribute of the other record (catches swapped given/family names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapped_with: Option<String>,
    #[schemars(length(min = 1, max = 8))]
    pub levels: Vec<ComparisonLevel>,
    /// m and u when no level matches and both values are present.
    pub else_level: Probabilities,
    /// Weigh exact agreement by how common the agreed value is among the stored records, as
    /// Splink's term-frequency adjustments do: two records sharing a rare family name are
    /// stronger evidence than two sharing the commonest one. The exact level's `u` is the
    /// average; each value gets its own frequency instead, estimated from the store and
    /// pulled towards `u` while the store is young. Needs an `exact` level.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub term_frequency_adjustments: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComparisonLevel {
    pub comparator: Comparator,
    /// Similarity threshold (Jaro-Winkler, 0..1) or maximum distance (edit distances, days for dates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// P(level | same person).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub m: f64,
    /// P(level | different people).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub u: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct Probabilities {
    #[schemars(range(min = 0.0, max = 1.0))]
    pub m: f64,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub u: f64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Comparator {
    Exact,
    /// Jaro-Winkler similarity ≥ threshold.
    JaroWinkler,
    /// Levenshtein distance ≤ threshold.
    Levenshtein,
    /// Damerau-Levenshtein (transpositions count once) ≤ threshold.
    DamerauLevenshtein,
    /// Same Double Metaphone code.
    Phonetic,
    /// Same nickname group (see `normalise.nicknames`).
    Nickname,
    /// Dates at most `threshold` days apart.
    DateWithinDays,
    /// Dates equal once day and month are swapped (a common entry error).
    DateSwappedDayMonth,
}

/// Merge when every listed attribute is present on both sides and equal.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeterministicRule {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    #[schemars(length(min = 1, max = 8))]
    pub all_equal: Vec<String>,
}

/// "Clearly differ": ids and dates more than one typo apart and not a day/month swap; names not
/// the same even allowing for nicknames, typos, swapped given/family names, initials or prefixes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NeverMerge {
    pub attribute: String,
}

/// Decision thresholds on the match probability.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.review < self.merge", "message": "thresholds.review must be below thresholds.merge"},
    {"rule": "self.review > 0.0 && self.merge < 1.0", "message": "thresholds must lie strictly between 0 and 1"}
]))]
pub struct Thresholds {
    /// At or above: the record joins the profile.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub merge: f64,
    /// At or above (and below `merge`): the pair goes to the review queue.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub review: f64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Survivorship {
    /// Rule for attributes not listed in `attributes`.
    #[serde(default)]
    pub default: SurvivorshipRule,
    /// Per-attribute rules, e.g. `email: mostRecent`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, SurvivorshipRule>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SurvivorshipRule {
    /// The value from the source with the highest `trustRank`; ties go to the most recent.
    #[default]
    TrustRank,
    MostRecent,
    MostFrequent,
    /// The longest value (e.g. a full middle name over an initial).
    MostComplete,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MatchingPolicyStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
}
