//! The compiled matching model: prepare, block, compare, score, decide.
//!
//! Scoring is Fellegi–Sunter: every comparison lands on one level (or is missing when either
//! side has no value); the level adds `log2(m/u)` bits to the match weight, which starts at the
//! prior `log2(λ/(1−λ))`. The match probability is `2^w / (1 + 2^w)`.

use std::collections::{BTreeMap, HashMap};

use rphonetic::{DoubleMetaphone, Encoder};
use serde::{Deserialize, Serialize};

use crate::crd::matching::{Comparator, KeyTransform, MatchingModel};
use crate::identity::limits::{LengthLimits, longer_than};
use crate::identity::normalise::{self, NormaliseFlags, days_from_civil, name_key, normalise_with};
use crate::identity::record::{CanonicalRecord, IDENTIFIER_PREFIX, is_known_attribute, is_lookup_attribute, lookup_key};

/// Why a [`MatchingModel`] cannot be compiled.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("{place}: unknown attribute {attribute:?}")]
    UnknownAttribute { place: String, attribute: String },
    #[error("{place}: m and u must be in (0, 1], got m={m} u={u}")]
    Probability { place: String, m: f64, u: f64 },
    #[error("{place}: comparator {comparator:?} needs a threshold")]
    MissingThreshold {
        place: String,
        comparator: Comparator,
    },
    #[error("{place}: threshold {threshold} out of range for {comparator:?}")]
    Threshold {
        place: String,
        comparator: Comparator,
        threshold: f64,
    },
    #[error("thresholds: need 0 < review < merge < 1, got review={review} merge={merge}")]
    Thresholds { review: f64, merge: f64 },
    #[error("priorMatchProbability must be in (0, 1), got {0}")]
    Prior(f64),
    #[error("blocking: at least one key is required")]
    NoBlocking,
    #[error("duplicate {kind} name {name:?}")]
    Duplicate { kind: &'static str, name: String },
    #[error("at most 64 comparisons, got {0}")]
    TooManyComparisons(usize),
    #[error("survivorship: unknown attribute {0:?}")]
    SurvivorshipAttribute(String),
    #[error("{0}: termFrequencyAdjustments needs an exact level")]
    TermFrequencyWithoutExact(String),
}

/// Address parts from finest to coarsest.
const ADDRESS_HIERARCHY: &[&str] = &["street", "postcode", "city"];

const NAME_ATTRIBUTES: &[&str] = &["givenName", "middleName", "familyName", "fullName", "city"];

fn is_name_attribute(a: &str) -> bool {
    NAME_ATTRIBUTES.contains(&a)
}

/// Precomputed features of one attribute value, built once in [`Engine::prepare`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Feature {
    /// Comparison key: the normalised value, or for names the particle-free joined form.
    pub key: Box<str>,
    /// Double Metaphone primary code of `key` (names only).
    pub phonetic: Box<str>,
    /// Nickname group (the canonical given name) when the policy lists one.
    pub nick: Option<Box<str>>,
    /// Date as (days since epoch, year, month, day).
    pub date: Option<(i64, i32, u32, u32)>,
    /// How many stored records carry this value, for term-frequency adjusted comparisons
    /// (attached by [`Engine::attach_term_counts`]).
    pub term: Option<TermCount>,
}

/// Records carrying one value of an attribute, and records carrying the attribute at all,
/// counted when the count was attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TermCount {
    pub value: u64,
    pub total: u64,
}

/// Occurrences of a value that the prior is worth (see [`TermCount::frequency`]).
const PRIOR_OCCURRENCES: f64 = 10.0;

impl TermCount {
    /// The value's share of the records, pulled towards the level's average `u` as if the
    /// store began with `10/u` records, ten of them carrying the value. A young store says
    /// little about how common a name is (two of its first three records sharing a surname
    /// makes it neither common nor rare); from a few thousand records on, the counts speak.
    fn frequency(self, u: f64) -> f64 {
        (self.value as f64 + PRIOR_OCCURRENCES) / (self.total as f64 + PRIOR_OCCURRENCES / u)
    }
}

/// A record ready for matching: normalised values plus precomputed comparison features.
/// Built by [`Engine::prepare`]; it belongs to the engine that built it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedRecord {
    pub source: String,
    pub source_record_id: String,
    pub observed_at_ms: i64,
    /// Attribute → normalised value, for every attribute the record carried that normalised.
    pub values: BTreeMap<String, String>,
    /// Attributes whose raw value failed to normalise, with the reason (left out of `values`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<(String, String)>,
    /// Attribute → the value as the source sent it (trimmed), for the attributes in `values`:
    /// what a golden record shows people ("Hélène", not "helene").
    #[serde(skip)]
    pub display: BTreeMap<String, String>,
    #[serde(skip)]
    pub(crate) features: Vec<Option<Feature>>,
}

impl PreparedRecord {
    /// Take display values from the attributes as the source sent them (a record read back
    /// from the store is prepared from its normalised values).
    pub fn with_display(mut self, sent: &BTreeMap<String, String>) -> Self {
        self.display = sent.iter().filter(|(a, _)| self.values.contains_key(*a)).map(|(a, v)| (a.clone(), v.trim().to_string())).collect();
        self
    }

    pub fn get(&self, attribute: &str) -> Option<&str> {
        self.values.get(attribute).map(String::as_str)
    }
}

#[derive(Clone, Debug)]
struct Level {
    comparator: Comparator,
    threshold: f64,
    weight: f64,
    label: String,
}

#[derive(Clone, Debug)]
pub(crate) struct CompiledComparison {
    pub name: String,
    pub slot: usize,
    pub swapped: Option<usize>,
    levels: Vec<Level>,
    else_weight: f64,
    /// Rank in the address hierarchy (street 0, postcode 1, city 2).
    geo_rank: Option<u8>,
    /// With term-frequency adjustments: the exact level's index, m and u.
    term_frequency: Option<(u8, f64, f64)>,
}

impl CompiledComparison {
    pub fn level_count(&self) -> usize {
        self.levels.len() + 1
    }
}

#[derive(Clone, Debug)]
struct CompiledKey {
    name: String,
    parts: Vec<(usize, KeyTransform)>,
}

/// Level a comparison landed on, for one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LevelHit {
    /// `None`: a side has no value. `Some(i)`: level `i`, where `levels.len()` is the else level.
    pub level: Option<u8>,
    pub swapped: bool,
}

/// A comparison's counted weight for one pair.
#[derive(Clone, Copy, Debug)]
struct Weighed {
    weight: f64,
    /// Agreement implied by a finer address part, so not counted.
    implied: bool,
    term_frequency: Option<f64>,
}

/// Cheap outcome of comparing two records (no allocation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairScore {
    /// Total match weight in bits, prior included.
    pub weight: f64,
    /// Index of the deterministic rule that fired.
    pub rule: Option<usize>,
    /// Index of the never-merge constraint violated.
    pub forbidden: Option<usize>,
}

/// Why two records are (or are not) one person: serialisable for the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairEvidence {
    /// The deterministic rule that matched, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The never-merge attribute whose values differ, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbidden_by: Option<String>,
    pub comparisons: Vec<ComparisonEvidence>,
    /// log2(λ / (1 − λ)).
    pub prior_weight: f64,
    /// Prior plus every comparison's contribution, in bits.
    pub match_weight: f64,
    pub probability: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComparisonEvidence {
    pub name: String,
    pub attribute: String,
    /// Level label (`exact`, `jaroWinkler>=0.92`, `else`) or `missing`.
    pub level: String,
    /// Level index (`None` when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_index: Option<u8>,
    /// True when the level was reached against the `swappedWith` attribute.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub swapped: bool,
    /// True when agreement is implied by a finer address part (same street): not counted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implied: bool,
    /// Share of the stored records carrying the agreed value, when the comparison weighs exact
    /// agreement by it: the weight is then log2(m / termFrequency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_frequency: Option<f64>,
    /// log2(m/u) of the level: this comparison's contribution in bits.
    pub weight: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PairDecision {
    Merge,
    Review,
    NoMatch,
    Forbidden,
}

/// A compiled [`MatchingModel`].
#[derive(Clone, Debug)]
pub struct Engine {
    model: MatchingModel,
    slots: Vec<String>,
    slot_of: HashMap<String, usize>,
    keys: Vec<CompiledKey>,
    pub(crate) comparisons: Vec<CompiledComparison>,
    rules: Vec<(String, Vec<usize>)>,
    never: Vec<usize>,
    /// For each never-merge on a name: the comparison on that attribute, if any.
    never_cmp: Vec<Option<usize>>,
    prior_weight: f64,
    merge_weight: f64,
    review_weight: f64,
    /// Attributes whose values are counted for term-frequency adjustments (slots, once each).
    term_slots: Vec<usize>,
    nicknames: HashMap<String, String>,
    flags: NormaliseFlags,
    metaphone: DoubleMetaphone,
}

pub(crate) fn logit2(p: f64) -> f64 {
    (p / (1.0 - p)).log2()
}

pub(crate) fn prob_of_weight(w: f64) -> f64 {
    1.0 / (1.0 + (-w).exp2())
}

fn check_attr(place: &str, a: &str) -> Result<(), ModelError> {
    if is_known_attribute(a) {
        Ok(())
    } else {
        Err(ModelError::UnknownAttribute {
            place: place.to_string(),
            attribute: a.to_string(),
        })
    }
}

fn check_mu(place: &str, m: f64, u: f64) -> Result<(), ModelError> {
    let ok = |p: f64| p > 0.0 && p <= 1.0 && p.is_finite();
    if ok(m) && ok(u) {
        Ok(())
    } else {
        Err(ModelError::Probability {
            place: place.to_string(),
            m,
            u,
        })
    }
}

impl Engine {
    /// Compile and validate a model.
    pub fn new(model: &MatchingModel) -> Result<Self, ModelError> {
        let mut slots: Vec<String> = Vec::new();
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut slot = |a: &str| -> usize {
            if let Some(&i) = slot_of.get(a) {
                return i;
            }
            slots.push(a.to_string());
            slot_of.insert(a.to_string(), slots.len() - 1);
            slots.len() - 1
        };
        if model.comparisons.len() > 64 {
            return Err(ModelError::TooManyComparisons(model.comparisons.len()));
        }
        if model.blocking.is_empty() {
            return Err(ModelError::NoBlocking);
        }
        let mut keys = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for k in &model.blocking {
            if !seen.insert(("blocking", k.name.clone())) {
                return Err(ModelError::Duplicate {
                    kind: "blocking key",
                    name: k.name.clone(),
                });
            }
            let mut parts = Vec::new();
            for p in &k.parts {
                check_attr(&format!("blocking {}", k.name), &p.attribute)?;
                parts.push((slot(&p.attribute), p.transform));
            }
            keys.push(CompiledKey {
                name: k.name.clone(),
                parts,
            });
        }
        let mut comparisons = Vec::new();
        for c in &model.comparisons {
            let place = format!("comparison {}", c.name);
            if !seen.insert(("comparison", c.name.clone())) {
                return Err(ModelError::Duplicate {
                    kind: "comparison",
                    name: c.name.clone(),
                });
            }
            check_attr(&place, &c.attribute)?;
            let swapped = match &c.swapped_with {
                Some(s) => {
                    check_attr(&place, s)?;
                    Some(slot(s))
                }
                None => None,
            };
            let mut levels = Vec::new();
            for (i, l) in c.levels.iter().enumerate() {
                let place = format!("{place} level {i}");
                check_mu(&place, l.m, l.u)?;
                let threshold = match (l.comparator, l.threshold) {
                    (
                        Comparator::Exact
                        | Comparator::Phonetic
                        | Comparator::Nickname
                        | Comparator::DateSwappedDayMonth,
                        t,
                    ) => t.unwrap_or(0.0),
                    (comparator, None) => {
                        return Err(ModelError::MissingThreshold { place, comparator });
                    }
                    (Comparator::JaroWinkler, Some(t)) if !(0.0..=1.0).contains(&t) => {
                        return Err(ModelError::Threshold {
                            place,
                            comparator: l.comparator,
                            threshold: t,
                        });
                    }
                    (comparator, Some(t)) if t < 0.0 || !t.is_finite() => {
                        return Err(ModelError::Threshold {
                            place,
                            comparator,
                            threshold: t,
                        });
                    }
                    (_, Some(t)) => t,
                };
                levels.push(Level {
                    comparator: l.comparator,
                    threshold,
                    weight: (l.m / l.u).log2(),
                    label: level_label(l.comparator, l.threshold),
                });
            }
            check_mu(
                &format!("{place} elseLevel"),
                c.else_level.m,
                c.else_level.u,
            )?;
            let term_frequency = if c.term_frequency_adjustments {
                let exact = c
                    .levels
                    .iter()
                    .position(|l| l.comparator == Comparator::Exact)
                    .ok_or_else(|| ModelError::TermFrequencyWithoutExact(place.clone()))?;
                let l = &c.levels[exact];
                Some((exact as u8, l.m, l.u))
            } else {
                None
            };
            comparisons.push(CompiledComparison {
                name: c.name.clone(),
                slot: slot(&c.attribute),
                swapped,
                levels,
                else_weight: (c.else_level.m / c.else_level.u).log2(),
                geo_rank: ADDRESS_HIERARCHY
                    .iter()
                    .position(|a| *a == c.attribute)
                    .map(|p| p as u8),
                term_frequency,
            });
        }
        let mut rules = Vec::new();
        for r in &model.rules {
            if !seen.insert(("rule", r.name.clone())) {
                return Err(ModelError::Duplicate {
                    kind: "rule",
                    name: r.name.clone(),
                });
            }
            let mut s = Vec::new();
            for a in &r.all_equal {
                check_attr(&format!("rule {}", r.name), a)?;
                s.push(slot(a));
            }
            rules.push((r.name.clone(), s));
        }
        let mut never = Vec::new();
        for n in &model.never_merge {
            check_attr("neverMerge", &n.attribute)?;
            never.push(slot(&n.attribute));
        }
        for a in model.survivorship.attributes.keys() {
            if !is_known_attribute(a) {
                return Err(ModelError::SurvivorshipAttribute(a.clone()));
            }
        }
        let t = &model.thresholds;
        if !(t.review > 0.0 && t.review < t.merge && t.merge < 1.0) {
            return Err(ModelError::Thresholds {
                review: t.review,
                merge: t.merge,
            });
        }
        let p = model.prior_match_probability;
        if !(p > 0.0 && p < 1.0) {
            return Err(ModelError::Prior(p));
        }
        let nicknames = model
            .normalise
            .nicknames
            .iter()
            .filter_map(|(k, v)| {
                let k = name_key(&normalise::name(k).ok()?);
                let v = name_key(&normalise::name(v).ok()?);
                Some((k, v))
            })
            .collect();
        let mut term_slots: Vec<usize> = comparisons
            .iter()
            .filter(|c| c.term_frequency.is_some())
            .map(|c| c.slot)
            .collect();
        term_slots.sort_unstable();
        term_slots.dedup();
        Ok(Engine {
            model: model.clone(),
            term_slots,
            slots,
            slot_of,
            keys,
            comparisons,
            rules,
            never_cmp: model
                .never_merge
                .iter()
                .map(|n| {
                    model
                        .comparisons
                        .iter()
                        .position(|c| c.attribute == n.attribute)
                })
                .collect(),
            never,
            prior_weight: logit2(p),
            merge_weight: logit2(t.merge),
            review_weight: logit2(t.review),
            nicknames,
            flags: NormaliseFlags::from_options(&model.normalise),
            metaphone: DoubleMetaphone::default(),
        })
    }

    pub fn model(&self) -> &MatchingModel {
        &self.model
    }

    pub fn prior_weight(&self) -> f64 {
        self.prior_weight
    }

    pub fn merge_weight(&self) -> f64 {
        self.merge_weight
    }

    pub fn review_weight(&self) -> f64 {
        self.review_weight
    }

    /// Normalise every attribute and precompute what comparisons need, under the default
    /// length limits. Values that fail to normalise are left out and listed in `invalid`
    /// (ingest has already reported them).
    pub fn prepare(&self, record: &CanonicalRecord, default_region: &str) -> PreparedRecord {
        self.prepare_within(record, default_region, &LengthLimits::default())
    }

    /// [`Engine::prepare`] under the length limits of the record's Source: a longer value is
    /// left out and listed in `invalid` too (a Source with `onInvalidValue: Keep` stores it as
    /// sent, but it takes no part in matching).
    pub fn prepare_within(&self, record: &CanonicalRecord, default_region: &str, limits: &LengthLimits) -> PreparedRecord {
        let mut values = BTreeMap::new();
        let mut display = BTreeMap::new();
        let mut invalid = Vec::new();
        for (attr, raw) in &record.attributes {
            let max = limits.max_chars(attr);
            if longer_than(raw.trim(), max) {
                invalid.push((attr.clone(), format!("longer than {max} characters")));
                continue;
            }
            match normalise_with(attr, raw, default_region, self.flags) {
                Ok(Some(v)) => {
                    values.insert(attr.clone(), v);
                    display.insert(attr.clone(), raw.trim().to_string());
                }
                Ok(None) => {}
                Err(e) => invalid.push((attr.clone(), e.to_string())),
            }
        }
        let mut p = PreparedRecord {
            source: record.source.clone(),
            source_record_id: record.source_record_id.clone(),
            observed_at_ms: record.observed_at_ms,
            values,
            invalid,
            display,
            features: Vec::new(),
        };
        self.refresh(&mut p);
        p
    }

    /// Build a prepared record from values that are already normalised (e.g. read back from
    /// the store): only the comparison features are computed. The values stay as normalised
    /// when the record was resolved, like the blocking keys stored with it; normalisers are
    /// idempotent, so normalising them again would change nothing under the same policy.
    pub fn prepare_normalised(
        &self,
        source: &str,
        source_record_id: &str,
        observed_at_ms: i64,
        values: BTreeMap<String, String>,
    ) -> PreparedRecord {
        let mut p = PreparedRecord {
            source: source.to_string(),
            source_record_id: source_record_id.to_string(),
            observed_at_ms,
            values,
            invalid: Vec::new(),
            display: BTreeMap::new(),
            features: Vec::new(),
        };
        self.refresh(&mut p);
        p
    }

    fn refresh(&self, p: &mut PreparedRecord) {
        let mut features = Vec::with_capacity(self.slots.len());
        for attr in &self.slots {
            let v = p.values.get(attr.as_str());
            let f = match v {
                Some(v) => Some(self.feature(attr, v)),
                None if attr == "fullName" => {
                    // derived: given + family, so swapped-name keys work without a fullName field
                    let parts: Vec<&str> = ["givenName", "familyName"]
                        .iter()
                        .filter_map(|a| p.values.get(*a).map(String::as_str))
                        .collect();
                    (!parts.is_empty()).then(|| self.feature(attr, &parts.join(" ")))
                }
                None => None,
            };
            features.push(f);
        }
        p.features = features;
    }

    fn feature(&self, attr: &str, v: &str) -> Feature {
        if is_name_attribute(attr) {
            let key = name_key(v);
            let phonetic = self.metaphone.encode(&key);
            let nick = self
                .nicknames
                .get(key.as_str())
                .map(|s| s.clone().into_boxed_str());
            Feature {
                key: key.into(),
                phonetic: phonetic.into(),
                nick,
                date: None,
                term: None,
            }
        } else if attr == "birthDate" {
            let date = normalise::parse_date(v)
                .ok()
                .map(|(y, m, d)| (days_from_civil(y, m, d), y, m, d));
            Feature {
                key: v.into(),
                phonetic: "".into(),
                nick: None,
                date,
                term: None,
            }
        } else {
            Feature {
                key: v.into(),
                phonetic: "".into(),
                nick: None,
                date: None,
                term: None,
            }
        }
    }

    /// What a record adds to the term counts: `attribute` (records carrying the attribute) and
    /// `attribute=value`, for each attribute a comparison weighs by term frequency.
    pub fn term_keys(&self, r: &PreparedRecord) -> Vec<String> {
        self.term_slots
            .iter()
            .filter_map(|&slot| {
                let f = Self::feat(r, slot)?;
                let attribute = &self.slots[slot];
                Some([attribute.clone(), format!("{attribute}={}", f.key)])
            })
            .flatten()
            .collect()
    }

    /// Attach term counts to a record's values, `count` answering for the keys of
    /// [`Engine::term_keys`] (counts that include the record itself).
    pub fn attach_term_counts(&self, r: &mut PreparedRecord, count: impl Fn(&str) -> u64) {
        for &slot in &self.term_slots {
            let attribute = &self.slots[slot];
            if let Some(Some(f)) = r.features.get_mut(slot) {
                f.term = Some(TermCount {
                    value: count(&format!("{attribute}={}", f.key)),
                    total: count(attribute),
                });
            }
        }
    }

    /// Drop the term counts of a resolved record. A stored record carries none, whether the
    /// matcher still holds it or reads it back from the store, so comparisons between stored
    /// records (may two profiles merge?) weigh the same either way; only the record being
    /// resolved brings counts, the freshest.
    pub fn detach_term_counts(&self, r: &mut PreparedRecord) {
        for &slot in &self.term_slots {
            if let Some(Some(f)) = r.features.get_mut(slot) {
                f.term = None;
            }
        }
    }

    /// Blocking keys of a record: `name:part|part`, one per policy key whose parts all have a
    /// value. A key on one lookup identifier as it is (`email`, `identifiers.crmId`) is that
    /// identifier's [`lookup_key`]: it blocks on the same records, and the store keeps one
    /// index row for both instead of two. Every source identifier the record carries is a
    /// blocking key too, whatever the policy declares ([`Engine::source_identifier_keys`]).
    pub fn blocking_keys(&self, r: &PreparedRecord) -> Vec<String> {
        let mut out = self.source_identifier_keys(r);
        out.extend((0..self.keys.len()).filter_map(|i| self.blocking_key(i, r)));
        out.sort();
        out.dedup();
        out
    }

    /// The key the policy's `i`-th blocking key gives the record, if all its parts have a
    /// value (training blocks on one key at a time).
    pub fn blocking_key(&self, i: usize, r: &PreparedRecord) -> Option<String> {
        let k = &self.keys[i];
        if let [(slot, KeyTransform::Exact)] = k.parts[..] {
            let attribute = &self.slots[slot];
            // a name's feature key is not its normalised value, which the lookup key holds
            if is_lookup_attribute(attribute) && !is_name_attribute(attribute) {
                let f = r.features.get(slot)?.as_ref()?;
                return Some(lookup_key(attribute, &f.key));
            }
        }
        let mut s = String::with_capacity(32);
        s.push_str(&k.name);
        s.push(':');
        for (i, (slot, t)) in k.parts.iter().enumerate() {
            let f = r.features.get(*slot)?.as_ref()?;
            if i > 0 {
                s.push('|');
            }
            match t {
                KeyTransform::Exact => s.push_str(&f.key),
                KeyTransform::Phonetic => {
                    if f.phonetic.is_empty() {
                        let code = self.metaphone.encode(&f.key);
                        if code.is_empty() {
                            return None;
                        }
                        s.push_str(&code);
                    } else {
                        s.push_str(&f.phonetic)
                    }
                }
                KeyTransform::Prefix3 => s.extend(f.key.chars().take(3)),
                KeyTransform::Year => match f.date {
                    Some((_, y, _, _)) => s.push_str(&y.to_string()),
                    None => s.extend(f.key.chars().take(4)),
                },
                KeyTransform::SortedTokens => {
                    let mut cs: Vec<char> = f.key.chars().filter(|c| !c.is_whitespace()).collect();
                    cs.sort_unstable();
                    s.extend(cs);
                }
            }
        }
        Some(s)
    }

    /// The [`lookup_key`] of each source identifier (`identifiers.*`) the record carries. A
    /// record sharing one with a stored record of its own source is that record's person
    /// ([`SOURCE_IDENTIFIER_RULE`]), so these keys always find candidates: they are never
    /// generic, and the profiles they reach are always compared.
    pub fn source_identifier_keys(&self, r: &PreparedRecord) -> Vec<String> {
        source_identifiers(r).map(|(a, v)| lookup_key(a, v)).collect()
    }

    fn level_of(&self, c: &CompiledComparison, a: &Feature, b: &Feature) -> u8 {
        // Jaro-Winkler is computed at most once per pair, whatever the number of levels
        let mut jw: Option<f64> = None;
        for (i, l) in c.levels.iter().enumerate() {
            let hit = if l.comparator == Comparator::JaroWinkler {
                *jw.get_or_insert_with(|| jaro_winkler(&a.key, &b.key)) >= l.threshold
            } else {
                level_matches(l.comparator, l.threshold, a, b)
            };
            if hit {
                return i as u8;
            }
        }
        c.levels.len() as u8
    }

    fn feat(r: &PreparedRecord, slot: usize) -> Option<&Feature> {
        r.features.get(slot).and_then(Option::as_ref)
    }

    pub(crate) fn hit(
        &self,
        c: &CompiledComparison,
        a: &PreparedRecord,
        b: &PreparedRecord,
    ) -> LevelHit {
        let direct = match (Self::feat(a, c.slot), Self::feat(b, c.slot)) {
            (Some(x), Some(y)) => Some(self.level_of(c, x, y)),
            _ => None,
        };
        let else_level = c.levels.len() as u8;
        if let Some(sw) = c.swapped
            && direct.is_none_or(|l| l == else_level)
        {
            let mut best: Option<u8> = None;
            for (x, y) in [
                (Self::feat(a, c.slot), Self::feat(b, sw)),
                (Self::feat(a, sw), Self::feat(b, c.slot)),
            ] {
                if let (Some(x), Some(y)) = (x, y) {
                    let l = self.level_of(c, x, y);
                    if l < else_level && best.is_none_or(|b| l < b) {
                        best = Some(l);
                    }
                }
            }
            // only count a cross match when the record really looks swapped
            if let Some(l) = best {
                return LevelHit {
                    level: Some(l),
                    swapped: true,
                };
            }
        }
        LevelHit {
            level: direct,
            swapped: false,
        }
    }

    pub(crate) fn level_weight(c: &CompiledComparison, level: Option<u8>) -> f64 {
        match level {
            None => 0.0,
            Some(l) if (l as usize) < c.levels.len() => c.levels[l as usize].weight,
            Some(_) => c.else_weight,
        }
    }

    /// The weight of a comparison's hit, and the agreed value's frequency when exact agreement
    /// is weighed by it: `log2(m / frequency)`, from the side that carries counts (the record
    /// being resolved; see [`Engine::detach_term_counts`]), the fresher when both do.
    fn hit_weight(
        c: &CompiledComparison,
        hit: LevelHit,
        a: &PreparedRecord,
        b: &PreparedRecord,
    ) -> (f64, Option<f64>) {
        if let Some((exact, m, u)) = c.term_frequency
            && hit.level == Some(exact)
            && !hit.swapped
        {
            let counts = [a, b].map(|r| Self::feat(r, c.slot).and_then(|f| f.term));
            // the fresher count, and on a tie the larger (the more cautious weight)
            if let Some(count) = counts.into_iter().flatten().max_by_key(|t| (t.total, t.value)) {
                let f = count.frequency(u);
                return ((m / f).log2(), Some(f));
            }
        }
        (Self::level_weight(c, hit.level), None)
    }

    /// Never-merge check: both present and clearly different. Identifiers and dates differ
    /// when more than one typo apart and (dates) not a day/month swap; a name differs when its
    /// comparison falls to the else level (no exact, nickname, fuzzy or swapped match) and
    /// neither is an initial or prefix of the other. Returns the violated constraint.
    pub(crate) fn forbidden(&self, a: &PreparedRecord, b: &PreparedRecord) -> Option<usize> {
        (0..self.never.len()).find(|&i| self.differs(i, a, b))
    }

    fn differs(&self, i: usize, a: &PreparedRecord, b: &PreparedRecord) -> bool {
        self.differs_with(i, a, b, None)
    }

    fn differs_with(
        &self,
        i: usize,
        a: &PreparedRecord,
        b: &PreparedRecord,
        hits: Option<&[LevelHit; 64]>,
    ) -> bool {
        let slot = self.never[i];
        let (Some(x), Some(y)) = (Self::feat(a, slot), Self::feat(b, slot)) else {
            return false;
        };
        if !is_name_attribute(&self.slots[slot]) {
            return never_merge_differs(x, y);
        }
        if x.key == y.key || x.key.starts_with(&*y.key) || y.key.starts_with(&*x.key) {
            return false;
        }
        match self.never_cmp[i] {
            Some(ci) => {
                let c = &self.comparisons[ci];
                let level = match hits {
                    Some(h) => h[ci].level,
                    None => self.hit(c, a, b).level,
                };
                level == Some(c.levels.len() as u8)
            }
            None => jaro_winkler(&x.key, &y.key) < 0.8,
        }
    }

    /// Whether the never-merge check on `attribute` alone would forbid this pair.
    pub(crate) fn forbidden_on(
        &self,
        attribute: &str,
        a: &PreparedRecord,
        b: &PreparedRecord,
    ) -> bool {
        (0..self.never.len())
            .any(|i| self.slots[self.never[i]] == attribute && self.differs(i, a, b))
    }

    /// The deterministic rule a pair meets: a policy rule (its index), else the implicit
    /// [`SOURCE_IDENTIFIER_RULE`] (index `rules.len()`).
    fn rule_hit(&self, a: &PreparedRecord, b: &PreparedRecord) -> Option<usize> {
        self.rules
            .iter()
            .position(|(_, slots)| {
                slots
                    .iter()
                    .all(|&s| match (Self::feat(a, s), Self::feat(b, s)) {
                        (Some(x), Some(y)) => x.key == y.key,
                        _ => false,
                    })
            })
            .or_else(|| shared_source_identifier(a, b).map(|_| self.rules.len()))
    }

    /// The name of a rule [`PairScore::rule`] reports.
    fn rule_label(&self, i: usize, a: &PreparedRecord, b: &PreparedRecord) -> String {
        match self.rules.get(i) {
            Some((name, _)) => name.clone(),
            None => {
                let attribute = shared_source_identifier(a, b).unwrap_or_default();
                format!("{SOURCE_IDENTIFIER_RULE}:{attribute}")
            }
        }
    }

    /// Whether any comparison of the pair counts against a match.
    pub(crate) fn disagrees(&self, a: &PreparedRecord, b: &PreparedRecord) -> bool {
        let mut neg = false;
        self.each_weight(a, b, |_, _, w| neg |= w.weight < 0.0);
        neg
    }

    /// Visit every comparison's hit and counted weight. Address parts are nested (a street
    /// lies in one postcode, a postcode in one city): when a finer part agrees, agreement of the
    /// coarser parts is implied and not counted again (their disagreement still counts).
    fn each_weight(
        &self,
        a: &PreparedRecord,
        b: &PreparedRecord,
        mut f: impl FnMut(usize, LevelHit, Weighed),
    ) -> [LevelHit; 64] {
        let mut hits = [LevelHit {
            level: None,
            swapped: false,
        }; 64];
        let mut weights = [(0.0, None); 64];
        let mut finest = u8::MAX;
        for (i, c) in self.comparisons.iter().enumerate() {
            let h = self.hit(c, a, b);
            hits[i] = h;
            weights[i] = Self::hit_weight(c, h, a, b);
            if let Some(rank) = c.geo_rank
                && weights[i].0 > 0.0
            {
                finest = finest.min(rank);
            }
        }
        for (i, c) in self.comparisons.iter().enumerate() {
            let (w, term_frequency) = weights[i];
            let implied = w > 0.0 && c.geo_rank.is_some_and(|r| r > finest);
            let weight = if implied { 0.0 } else { w };
            f(i, hits[i], Weighed { weight, implied, term_frequency });
        }
        hits
    }

    /// Score a pair without building an explanation.
    pub fn score(&self, a: &PreparedRecord, b: &PreparedRecord) -> PairScore {
        let mut w = self.prior_weight;
        let hits = self.each_weight(a, b, |_, _, cw| w += cw.weight);
        let forbidden = (0..self.never.len()).find(|&i| self.differs_with(i, a, b, Some(&hits)));
        PairScore {
            weight: w,
            rule: self.rule_hit(a, b),
            forbidden,
        }
    }

    /// Compare two records and explain the outcome.
    pub fn compare(&self, a: &PreparedRecord, b: &PreparedRecord) -> PairEvidence {
        let mut comparisons = Vec::with_capacity(self.comparisons.len());
        let mut w = self.prior_weight;
        self.each_weight(a, b, |i, hit, Weighed { weight, implied, term_frequency }| {
            let (c, mc) = (&self.comparisons[i], &self.model.comparisons[i]);
            w += weight;
            let level = match hit.level {
                None => "missing".to_string(),
                Some(l) if (l as usize) < c.levels.len() => c.levels[l as usize].label.clone(),
                Some(_) => "else".to_string(),
            };
            comparisons.push(ComparisonEvidence {
                name: c.name.clone(),
                attribute: mc.attribute.clone(),
                level,
                level_index: hit.level,
                swapped: hit.swapped,
                implied,
                term_frequency,
                weight,
            });
        });
        PairEvidence {
            rule: self.rule_hit(a, b).map(|i| self.rule_label(i, a, b)),
            forbidden_by: self
                .forbidden(a, b)
                .map(|i| self.slots[self.never[i]].clone()),
            comparisons,
            prior_weight: self.prior_weight,
            match_weight: w,
            probability: prob_of_weight(w),
        }
    }

    pub fn decide(&self, e: &PairEvidence) -> PairDecision {
        if e.forbidden_by.is_some() {
            PairDecision::Forbidden
        } else if e.rule.is_some() || e.match_weight >= self.merge_weight {
            PairDecision::Merge
        } else if e.match_weight >= self.review_weight {
            PairDecision::Review
        } else {
            PairDecision::NoMatch
        }
    }

    pub fn decide_score(&self, s: &PairScore) -> PairDecision {
        if s.forbidden.is_some() {
            PairDecision::Forbidden
        } else if s.rule.is_some() || s.weight >= self.merge_weight {
            PairDecision::Merge
        } else if s.weight >= self.review_weight {
            PairDecision::Review
        } else {
            PairDecision::NoMatch
        }
    }

    pub fn rule_name(&self, i: usize) -> &str {
        self.rules.get(i).map_or(SOURCE_IDENTIFIER_RULE, |(name, _)| name)
    }

    pub fn never_merge_attribute(&self, i: usize) -> &str {
        &self.slots[self.never[i]]
    }

    /// Attributes the engine precomputes features for.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.slot_of.keys().map(String::as_str)
    }
}

/// The rule every policy has without declaring it: two records of one source carrying the
/// same source identifier (`identifiers.*`, the source's own customer id) are one person,
/// unless a never-merge constraint says otherwise.
pub const SOURCE_IDENTIFIER_RULE: &str = "same-source-identifier";

/// The `identifiers.*` attributes of a record with their normalised values.
fn source_identifiers(r: &PreparedRecord) -> impl Iterator<Item = (&str, &str)> {
    r.values
        .range::<str, _>((std::ops::Bound::Included(IDENTIFIER_PREFIX), std::ops::Bound::Unbounded))
        .take_while(|(a, _)| a.starts_with(IDENTIFIER_PREFIX))
        .map(|(a, v)| (a.as_str(), v.as_str()))
}

/// A source identifier both records carry with the same value, when they come from one source.
pub(crate) fn shared_source_identifier<'a>(a: &'a PreparedRecord, b: &PreparedRecord) -> Option<&'a str> {
    if a.source != b.source {
        return None;
    }
    source_identifiers(a).find(|(attribute, value)| b.get(attribute) == Some(value)).map(|(attribute, _)| attribute)
}

fn level_label(c: Comparator, t: Option<f64>) -> String {
    let name = match c {
        Comparator::Exact => "exact",
        Comparator::JaroWinkler => "jaroWinkler>=",
        Comparator::Levenshtein => "levenshtein<=",
        Comparator::DamerauLevenshtein => "damerauLevenshtein<=",
        Comparator::Phonetic => "phonetic",
        Comparator::Nickname => "nickname",
        Comparator::DateWithinDays => "dateWithinDays<=",
        Comparator::DateSwappedDayMonth => "dateSwappedDayMonth",
    };
    match (name.ends_with('='), t) {
        (true, Some(t)) => format!("{name}{t}"),
        _ => name.to_string(),
    }
}

fn level_matches(c: Comparator, t: f64, a: &Feature, b: &Feature) -> bool {
    match c {
        Comparator::Exact => a.key == b.key,
        Comparator::JaroWinkler => jaro_winkler(&a.key, &b.key) >= t,
        Comparator::Levenshtein => edit_distance_within(&a.key, &b.key, t as usize, false),
        Comparator::DamerauLevenshtein => edit_distance_within(&a.key, &b.key, t as usize, true),
        Comparator::Phonetic => !a.phonetic.is_empty() && a.phonetic == b.phonetic,
        Comparator::Nickname => {
            let ca = a.nick.as_deref().unwrap_or(&a.key);
            let cb = b.nick.as_deref().unwrap_or(&b.key);
            (a.nick.is_some() || b.nick.is_some()) && ca == cb
        }
        Comparator::DateWithinDays => match (a.date, b.date) {
            (Some(x), Some(y)) => (x.0 - y.0).abs() as f64 <= t,
            _ => false,
        },
        Comparator::DateSwappedDayMonth => match (a.date, b.date) {
            (Some((_, ya, ma, da)), Some((_, yb, mb, db))) => {
                ya == yb && ma == db && da == mb && ma != da
            }
            _ => false,
        },
    }
}

/// Never-merge "differ": not equal, not one typo apart (Damerau), not a day/month swap.
fn never_merge_differs(x: &Feature, y: &Feature) -> bool {
    x.key != y.key
        && !edit_distance_within(&x.key, &y.key, 1, true)
        && !level_matches(Comparator::DateSwappedDayMonth, 0.0, x, y)
}

/// The longest keys the fuzzy comparators (Jaro-Winkler, Levenshtein, Damerau-Levenshtein)
/// compare, in characters: above the default length limit of every attribute they are used
/// on. Their work grows with the product of the two lengths, so a longer key (stored before
/// the limits, kept as sent by a Source with `onInvalidValue: Keep`, imported, or under a
/// raised limit) is only compared for equality: equal, or reaching no fuzzy level. No pair
/// costs more than this bound squared, whatever the store holds.
pub(crate) const MAX_FUZZY_CHARS: usize = 300;

/// Whether either key is too long for a fuzzy comparison ([`MAX_FUZZY_CHARS`]).
fn beyond_fuzzy_bound(a: &str, b: &str) -> bool {
    longer_than(a, MAX_FUZZY_CHARS) || longer_than(b, MAX_FUZZY_CHARS)
}

/// The longest values the string comparators handle on the stack.
const SHORT_KEY_BYTES: usize = 64;

/// Both values as bytes when both are ASCII and at most [`SHORT_KEY_BYTES`] long (keys are
/// ASCII after normalisation; others go to `strsim`, which works on chars).
fn short_ascii<'a>(a: &'a str, b: &'a str) -> Option<(&'a [u8], &'a [u8])> {
    let short = |s: &str| s.len() <= SHORT_KEY_BYTES && s.is_ascii();
    (short(a) && short(b)).then(|| (a.as_bytes(), b.as_bytes()))
}

/// Jaro-Winkler similarity on bytes without allocating for values up to 64 bytes (keys are
/// ASCII after normalisation; longer or non-ASCII values fall back to `strsim`). Keys beyond
/// [`MAX_FUZZY_CHARS`] are 1 when equal, else 0.
pub(crate) fn jaro_winkler(a: &str, b: &str) -> f64 {
    let Some((x, y)) = short_ascii(a, b) else {
        if beyond_fuzzy_bound(a, b) {
            return if a == b { 1.0 } else { 0.0 };
        }
        return strsim::jaro_winkler(a, b);
    };
    if x.is_empty() && y.is_empty() {
        return 1.0;
    }
    if x.is_empty() || y.is_empty() {
        return 0.0;
    }
    if x == y {
        return 1.0;
    }
    let window = (x.len().max(y.len()) / 2).saturating_sub(1);
    let mut ym = [false; SHORT_KEY_BYTES];
    let mut xm = [false; SHORT_KEY_BYTES];
    let mut matches = 0usize;
    for (i, &c) in x.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(y.len());
        for j in lo..hi {
            if !ym[j] && y[j] == c {
                ym[j] = true;
                xm[i] = true;
                matches += 1;
                break;
            }
        }
    }
    if matches == 0 {
        return 0.0;
    }
    let mut t = 0usize;
    let mut k = 0usize;
    for (i, &c) in x.iter().enumerate() {
        if xm[i] {
            while !ym[k] {
                k += 1;
            }
            if c != y[k] {
                t += 1;
            }
            k += 1;
        }
    }
    let m = matches as f64;
    let jaro = (m / x.len() as f64 + m / y.len() as f64 + (m - (t / 2) as f64) / m) / 3.0;
    if jaro <= 0.7 {
        return jaro;
    }
    let prefix = x.iter().zip(y).take(4).take_while(|(p, q)| p == q).count() as f64;
    jaro + 0.1 * prefix * (1.0 - jaro)
}

/// Whether the edit distance of `a` and `b` is at most `max`: Levenshtein, or optimal string
/// alignment with `transpositions` (an adjacent swap is one edit). On bytes, without
/// allocating, for ASCII values up to 64 bytes (keys after normalisation); it stops as soon
/// as no alignment can stay within `max`. Other values go to `strsim`, but for keys beyond
/// [`MAX_FUZZY_CHARS`], which are within no distance unless equal.
pub(crate) fn edit_distance_within(a: &str, b: &str, max: usize, transpositions: bool) -> bool {
    if a == b {
        return true;
    }
    let Some((x, y)) = short_ascii(a, b) else {
        if beyond_fuzzy_bound(a, b) {
            return false;
        }
        let distance = if transpositions { strsim::osa_distance(a, b) } else { strsim::levenshtein(a, b) };
        return distance <= max;
    };
    if x.len().abs_diff(y.len()) > max {
        return false;
    }
    // rows i-2, i-1 and i of the distance table; a distance is at most the longer length
    // (64), so it and its sums with 1 fit in a u8
    let n = y.len();
    let (mut two_back, mut prev, mut cur) = ([0u8; SHORT_KEY_BYTES + 1], [0u8; SHORT_KEY_BYTES + 1], [0u8; SHORT_KEY_BYTES + 1]);
    for (j, d) in prev.iter_mut().enumerate().take(n + 1) {
        *d = j as u8;
    }
    let mut prev_min = 0u8;
    for i in 1..=x.len() {
        cur[0] = i as u8;
        let mut row_min = cur[0];
        for j in 1..=n {
            let substitution = prev[j - 1] + u8::from(x[i - 1] != y[j - 1]);
            let mut d = substitution.min(prev[j] + 1).min(cur[j - 1] + 1);
            if transpositions && i > 1 && j > 1 && x[i - 1] == y[j - 2] && x[i - 2] == y[j - 1] {
                d = d.min(two_back[j - 2] + 1);
            }
            cur[j] = d;
            row_min = row_min.min(d);
        }
        // every later cell comes from this row or (a transposition) the one before, plus
        // something: once both exceed `max`, so does the answer
        if usize::from(row_min) > max && (!transpositions || usize::from(prev_min) > max) {
            return false;
        }
        prev_min = row_min;
        two_back = prev;
        prev = cur;
    }
    usize::from(prev[n]) <= max
}
