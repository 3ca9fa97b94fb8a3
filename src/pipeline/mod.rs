//! CRs → one validated `PipelineConfig`, shared by the operator and `cdp local`.
//!
//! `compile` is pure: it takes the platform's member resources and the Secret keys that exist,
//! and returns the config plus a verdict per member. A member with a semantic error is left out
//! of the config and reported (its `Ready=False`, `Stalled=True`); the rest keeps running.

mod compile;
mod load;
pub mod trigger;

pub use compile::{Compiled, Members, MemberError, Verdict, compile};
pub use load::{LoadError, Manifests, load_dir, secret_keys};

use crate::crd::enricher::EnricherSpec;
use crate::crd::feed::FeedSpec;
use crate::crd::matching::MatchingModel;
use crate::crd::scaling::ScalingPolicySpec;
use crate::crd::source::SourceSpec;
use crate::crd::SecretKeyRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything the data plane of one platform runs on. Serialised as JSON into a ConfigMap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineConfig {
    pub platform: String,
    pub namespace: String,
    /// Sorted by name.
    pub sources: Vec<NamedSource>,
    pub matching: MatchingConfig,
    /// Sorted by name.
    pub feeds: Vec<NamedFeed>,
    /// Sorted by name.
    pub scaling: Vec<NamedScaling>,
    /// Sorted by name. Absent when none, so configs without enrichers hash as they did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrichers: Vec<NamedEnricher>,
    /// API tokens (lines of `NAME SCOPES TOKEN`), from the platform's `spec.api.tokensSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tokens: Option<SecretKeyRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedSource {
    pub name: String,
    #[serde(flatten)]
    pub spec: SourceSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedFeed {
    pub name: String,
    #[serde(flatten)]
    pub spec: FeedSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedScaling {
    pub name: String,
    #[serde(flatten)]
    pub spec: ScalingPolicySpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedEnricher {
    pub name: String,
    #[serde(flatten)]
    pub spec: EnricherSpec,
}

/// The source name the values an Enricher writes back carry in golden records, explanations
/// and exports: `enricher/<name>` (a `/` no Source name can hold).
pub fn enricher_source(enricher: &str) -> String {
    format!("{ENRICHER_SOURCE_PREFIX}{enricher}")
}

pub const ENRICHER_SOURCE_PREFIX: &str = "enricher/";

/// The matching model in force and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchingConfig {
    /// Name of the MatchingPolicy, or `None` when the built-in default applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub model: MatchingModel,
}

impl PipelineConfig {
    /// Content hash of the config: equal configs hash equal, any change changes it.
    pub fn content_hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("PipelineConfig serialises");
        hex::encode(&Sha256::digest(&bytes)[..8])
    }

    pub fn source(&self, name: &str) -> Option<&NamedSource> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Per Source a PreMatch enricher names, how long (ms) its records wait for it before they
    /// are matched as they are.
    pub fn enrichment_holds(&self) -> std::collections::BTreeMap<String, i64> {
        self.enrichers
            .iter()
            .filter(|e| e.spec.stage == crate::crd::enricher::EnrichStage::PreMatch)
            .flat_map(|e| e.spec.sources.iter().map(|s| (s.clone(), i64::from(e.spec.max_wait_seconds) * 1000)))
            .collect()
    }
}
