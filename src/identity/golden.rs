//! Golden record: one value per attribute, chosen by survivorship.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crd::matching::{Survivorship, SurvivorshipRule};
use crate::identity::consent::{self, ConsentStatement};
use crate::identity::engine::{Engine, PreparedRecord};
use crate::identity::record::CONSENT_PREFIX;

/// A profile's record with what survivorship needs to know about its source.
#[derive(Clone, Copy, Debug)]
pub struct SourcedRecord<'a> {
    pub record: &'a PreparedRecord,
    /// The Source's trust rank: higher wins.
    pub trust_rank: i32,
}

/// The value kept for one attribute and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoldenValue {
    /// The normalised value (what matching and lookups use).
    pub value: String,
    /// The value as its source sent it, for people and outbound feeds.
    #[serde(default)]
    pub display: String,
    pub source: String,
    pub source_record_id: String,
    pub observed_at_ms: i64,
    pub rule: SurvivorshipRule,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoldenProfile {
    pub attributes: BTreeMap<String, GoldenValue>,
    /// Current state per consent purpose: the newest statement, not a survivorship rule.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consents: BTreeMap<String, ConsentStatement>,
}

impl GoldenProfile {
    pub fn get(&self, attribute: &str) -> Option<&str> {
        self.attributes.get(attribute).map(|v| v.value.as_str())
    }
}

impl Engine {
    pub fn golden(&self, records: &[SourcedRecord<'_>]) -> GoldenProfile {
        golden(&self.model().survivorship, records)
    }
}

/// Survivorship per attribute. Deterministic: the result does not depend on the order of
/// `records` (final ties go to the smallest value, then source and record id).
pub fn golden(rules: &Survivorship, records: &[SourcedRecord<'_>]) -> GoldenProfile {
    // attribute -> candidates (value, record)
    let mut by_attr: BTreeMap<&str, Vec<(&str, &SourcedRecord<'_>)>> = BTreeMap::new();
    for r in records {
        for (a, v) in r.record.values.iter().filter(|(a, _)| !a.starts_with(CONSENT_PREFIX)) {
            by_attr.entry(a.as_str()).or_default().push((v.as_str(), r));
        }
    }
    let mut out = BTreeMap::new();
    for (attr, cands) in by_attr {
        let rule = rules.attributes.get(attr).copied().unwrap_or(rules.default);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        if rule == SurvivorshipRule::MostFrequent {
            for (v, _) in &cands {
                *counts.entry(v).or_default() += 1;
            }
        }
        // total order: rule-specific primary key, then recency, trust, value, provenance
        let key = |(v, r): &(&str, &SourcedRecord<'_>)| {
            let primary: i64 = match rule {
                SurvivorshipRule::TrustRank => r.trust_rank as i64,
                SurvivorshipRule::MostRecent => 0,
                SurvivorshipRule::MostFrequent => counts[v] as i64,
                SurvivorshipRule::MostComplete => {
                    v.chars().filter(|c| !c.is_whitespace()).count() as i64
                }
            };
            (primary, r.record.observed_at_ms, r.trust_rank)
        };
        let best = cands
            .iter()
            .max_by(|a, b| {
                key(a)
                    .cmp(&key(b))
                    // remaining ties: smallest value, then smallest provenance, wins
                    .then_with(|| b.0.cmp(a.0))
                    .then_with(|| b.1.record.source.cmp(&a.1.record.source))
                    .then_with(|| {
                        b.1.record
                            .source_record_id
                            .cmp(&a.1.record.source_record_id)
                    })
            })
            .expect("non-empty");
        out.insert(
            attr.to_string(),
            GoldenValue {
                value: best.0.to_string(),
                display: best.1.record.display.get(attr).cloned().unwrap_or_else(|| best.0.to_string()),
                source: best.1.record.source.clone(),
                source_record_id: best.1.record.source_record_id.clone(),
                observed_at_ms: best.1.record.observed_at_ms,
                rule,
            },
        );
    }
    let consents = consent::current(&consent::statements(records.iter().map(|r| r.record)));
    GoldenProfile { attributes: out, consents }
}
