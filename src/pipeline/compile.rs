//! The pure compile step: member resources → `PipelineConfig` + a verdict per member.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use thiserror::Error;

use super::{MatchingConfig, NamedEnricher, NamedFeed, NamedScaling, NamedSource, PipelineConfig};
use crate::crd::matching::MatchingModel;
use crate::crd::source::MAX_VALUE_CHARS;
use crate::crd::{CustomerDataPlatform, Enricher, Feed, MatchingPolicy, ScalingPolicy, SecretKeyRef, Source};
use crate::identity::record::{CONSENT_PREFIX, is_known_attribute};

/// The resources of one platform, as found in the cluster or in a directory.
#[derive(Clone, Debug, Default)]
pub struct Members {
    pub sources: Vec<Source>,
    pub matching_policies: Vec<MatchingPolicy>,
    pub feeds: Vec<Feed>,
    pub scaling_policies: Vec<ScalingPolicy>,
    pub enrichers: Vec<Enricher>,
    /// Secret keys that exist in the namespace.
    pub secret_keys: BTreeSet<SecretKeyRef>,
}

/// Why a member resource was left out of the config. Each message says what to fix.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MemberError {
    #[error("another {kind} named {name:?} is already part of this platform; rename one of them")]
    DuplicateName { kind: &'static str, name: String },
    #[error("Secret {name:?} has no key {key:?} (referenced at {field}); create it or fix the reference")]
    MissingSecret { field: String, name: String, key: String },
    #[error("{field}: {attribute:?} is not a canonical attribute (givenName, familyName, email, phone, birthDate, ...) nor identifiers.*, attributes.* or consents.*")]
    UnknownAttribute { field: String, attribute: String },
    #[error("{field}: no Source of this platform maps {attribute:?}; map it in a Source or remove it here")]
    UnmappedAttribute { field: String, attribute: String },
    #[error("platform already uses MatchingPolicy {active:?}; a platform has one MatchingPolicy, delete or retarget this one")]
    SecondMatchingPolicy { active: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl MemberError {
    /// Short CamelCase reason for conditions, events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DuplicateName { .. } => "DuplicateName",
            Self::MissingSecret { .. } => "SecretNotFound",
            Self::UnknownAttribute { .. } => "UnknownAttribute",
            Self::UnmappedAttribute { .. } => "UnmappedAttribute",
            Self::SecondMatchingPolicy { .. } => "ConflictingPolicy",
            Self::Invalid { .. } => "InvalidSpec",
        }
    }
}

/// The outcome for one member resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub kind: &'static str,
    pub name: String,
    pub errors: Vec<MemberError>,
}

impl Verdict {
    pub fn accepted(&self) -> bool {
        self.errors.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub config: PipelineConfig,
    pub hash: String,
    pub verdicts: Vec<Verdict>,
    /// Problems in the platform's own spec; the platform cannot run until they are fixed.
    pub platform_errors: Vec<MemberError>,
}

impl Compiled {
    pub fn verdict(&self, kind: &str, name: &str) -> Option<&Verdict> {
        self.verdicts.iter().find(|v| v.kind == kind && v.name == name)
    }

    pub fn rejected(&self) -> usize {
        self.verdicts.iter().filter(|v| !v.accepted()).count()
    }
}

/// Compile one platform. Members must already be filtered to this platform (by `platformRef`).
/// `default_model` applies when no MatchingPolicy is accepted.
pub fn compile(platform: &CustomerDataPlatform, members: &Members, default_model: MatchingModel) -> Compiled {
    let mut verdicts = Vec::new();

    let sources = accept_unique(&members.sources, "Source", &mut verdicts, |source| {
        source_errors(&source.spec, &members.secret_keys)
    });
    let mapped: BTreeSet<&str> =
        sources.iter().flat_map(|s| s.spec.mapping.iter().map(|m| m.to.as_str())).collect();

    let mut matching = MatchingConfig { policy: None, model: default_model };
    let mut policies = accept_unique(&members.matching_policies, "MatchingPolicy", &mut verdicts, |policy| {
        model_errors(&policy.spec.model)
    });
    // The oldest policy stays in force: creating another one must not silently replace it.
    policies.sort_by_key(|p| (p.metadata.creation_timestamp.clone().map(|t| t.0), p.name_any()));
    for policy in policies {
        match &matching.policy {
            None => matching = MatchingConfig { policy: Some(policy.name_any()), model: policy.spec.model.clone() },
            Some(active) => reject(&mut verdicts, "MatchingPolicy", &policy.name_any(), MemberError::SecondMatchingPolicy {
                active: active.clone(),
            }),
        }
    }

    let feeds = accept_unique(&members.feeds, "Feed", &mut verdicts, |feed| {
        feed_errors(&feed.spec, &mapped, &members.secret_keys)
    });
    let source_names: BTreeSet<String> = sources.iter().map(|s| s.name_any()).collect();
    let mut enrichers = accept_unique(&members.enrichers, "Enricher", &mut verdicts, |enricher| {
        enricher_errors(&enricher.spec, &mapped, &source_names, &members.secret_keys)
    });
    // a record waits for one PreMatch enricher: the first by name holds each Source
    let mut held: BTreeMap<&str, String> = BTreeMap::new();
    let mut second = Vec::new();
    for enricher in enrichers.iter().filter(|e| e.spec.stage == crate::crd::enricher::EnrichStage::PreMatch) {
        let name = enricher.name_any();
        for source in &enricher.spec.sources {
            if let Some(first) = held.get(source.as_str()).filter(|first| **first != name) {
                second.push((name.clone(), MemberError::Invalid {
                    field: "spec.sources".into(),
                    message: format!("PreMatch enricher {first:?} already enriches the records of {source:?}; a Source has one"),
                }));
            } else {
                held.insert(source, name.clone());
            }
        }
    }
    for (name, error) in second {
        reject(&mut verdicts, "Enricher", &name, error);
        enrichers.retain(|e| e.name_any() != name);
    }
    let mut scaling = accept_unique(&members.scaling_policies, "ScalingPolicy", &mut verdicts, |policy| {
        scaling_errors(&policy.spec)
    });
    // Policies must also agree with each other and with the platform's bounds.
    let named: Vec<(String, &crate::crd::ScalingPolicySpec)> = scaling.iter().map(|p| (p.name_any(), &p.spec)).collect();
    let borrowed: Vec<(&str, &crate::crd::ScalingPolicySpec)> = named.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    if let Err(errors) = crate::scaling::policy::combine(&borrowed, &crate::scaling::policy::PlatformDefaults::of(&platform.spec)) {
        for error in errors.0 {
            let blamed = error.policy().to_string();
            reject(&mut verdicts, "ScalingPolicy", &blamed, MemberError::Invalid { field: "spec".to_string(), message: error.to_string() });
            scaling.retain(|p| p.name_any() != blamed);
        }
    }

    let config = PipelineConfig {
        platform: platform.name_any(),
        namespace: platform.namespace().unwrap_or_default(),
        sources: sources.into_iter().map(|s| NamedSource { name: s.name_any(), spec: s.spec.clone() }).collect(),
        matching,
        feeds: feeds.into_iter().map(|f| NamedFeed { name: f.name_any(), spec: f.spec.clone() }).collect(),
        scaling: scaling.into_iter().map(|p| NamedScaling { name: p.name_any(), spec: p.spec.clone() }).collect(),
        enrichers: enrichers.into_iter().map(|e| NamedEnricher { name: e.name_any(), spec: e.spec.clone() }).collect(),
        api_tokens: platform.spec.api.tokens_secret_ref.clone(),
    };
    let hash = config.content_hash();
    verdicts.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Compiled { config, hash, verdicts, platform_errors: platform_errors(platform, &members.secret_keys) }
}

fn platform_errors(platform: &CustomerDataPlatform, secrets: &BTreeSet<SecretKeyRef>) -> Vec<MemberError> {
    missing_secrets(platform.spec.secret_refs(), secrets)
}

fn missing_secrets(refs: Vec<(&str, &SecretKeyRef)>, available: &BTreeSet<SecretKeyRef>) -> Vec<MemberError> {
    refs.into_iter().filter_map(|(field, secret)| secret_error(field, secret, available)).collect()
}

/// Sort members by name, refuse duplicates and members with errors; return the accepted ones.
fn accept_unique<'a, K: kube::Resource>(
    items: &'a [K],
    kind: &'static str,
    verdicts: &mut Vec<Verdict>,
    check: impl Fn(&K) -> Vec<MemberError>,
) -> Vec<&'a K> {
    let mut by_name: BTreeMap<String, Vec<&K>> = BTreeMap::new();
    for item in items {
        by_name.entry(item.meta().name.clone().unwrap_or_default()).or_default().push(item);
    }
    let mut accepted = Vec::new();
    for (name, group) in by_name {
        let mut errors = check(group[0]);
        if group.len() > 1 {
            errors.push(MemberError::DuplicateName { kind, name: name.clone() });
        }
        if errors.is_empty() {
            accepted.push(group[0]);
        }
        verdicts.push(Verdict { kind, name, errors });
    }
    accepted
}

fn reject(verdicts: &mut [Verdict], kind: &str, name: &str, error: MemberError) {
    if let Some(v) = verdicts.iter_mut().find(|v| v.kind == kind && v.name == name) {
        v.errors.push(error);
    }
}

fn secret_error(field: &str, secret: &SecretKeyRef, available: &BTreeSet<SecretKeyRef>) -> Option<MemberError> {
    (!available.contains(secret)).then(|| MemberError::MissingSecret {
        field: field.to_string(),
        name: secret.name.clone(),
        key: secret.key.clone(),
    })
}

fn unknown(field: String, attribute: &str) -> Option<MemberError> {
    (!is_known_attribute(attribute)).then(|| MemberError::UnknownAttribute { field, attribute: attribute.to_string() })
}

fn source_errors(spec: &crate::crd::SourceSpec, secrets: &BTreeSet<SecretKeyRef>) -> Vec<MemberError> {
    let mut errors = missing_secrets(spec.secret_refs(), secrets);
    errors.extend(spec.mapping.iter().enumerate().filter_map(|(i, m)| unknown(format!("spec.mapping[{i}].to"), &m.to)));
    let mut targets = BTreeSet::new();
    for (i, m) in spec.mapping.iter().enumerate() {
        if !targets.insert(m.to.as_str()) {
            errors.push(MemberError::Invalid {
                field: format!("spec.mapping[{i}].to"),
                message: format!("{:?} is mapped twice; map each attribute from one field", m.to),
            });
        }
    }
    let rules = &spec.validation;
    for attribute in rules.required.iter().filter(|a| !targets.contains(a.as_str())) {
        errors.push(MemberError::Invalid {
            field: "spec.validation.required".to_string(),
            message: format!("{attribute:?} is required but no mapping produces it"),
        });
    }
    let any_of = &rules.require_any_of;
    if !any_of.is_empty() && !any_of.iter().any(|a| targets.contains(a.as_str())) {
        errors.push(MemberError::Invalid {
            field: "spec.validation.requireAnyOf".to_string(),
            message: format!("no mapping produces any of {any_of:?}"),
        });
    }
    // the CRD schema bounds these too, but `cdp local` reads its files without it
    let field = "spec.validation.maxLength";
    for (attribute, &max) in &rules.max_length {
        if let Some(error) = unknown(field.to_string(), attribute) {
            errors.push(error);
        } else if !targets.contains(attribute.as_str()) {
            errors.push(MemberError::Invalid {
                field: field.to_string(),
                message: format!("{attribute:?} has a limit but no mapping produces it"),
            });
        } else if !(1..=MAX_VALUE_CHARS).contains(&(max as usize)) {
            errors.push(MemberError::Invalid {
                field: field.to_string(),
                message: format!("{attribute:?}: a limit is 1 to {MAX_VALUE_CHARS} characters, got {max}"),
            });
        }
    }
    errors
}

/// Attribute names a model refers to must exist in the vocabulary.
fn model_errors(model: &MatchingModel) -> Vec<MemberError> {
    let blocking = model.blocking.iter().enumerate().flat_map(|(i, key)| {
        key.parts.iter().enumerate().map(move |(j, part)| (format!("spec.blocking[{i}].parts[{j}].attribute"), &part.attribute))
    });
    let comparisons = model.comparisons.iter().enumerate().flat_map(|(i, c)| {
        std::iter::once((format!("spec.comparisons[{i}].attribute"), &c.attribute))
            .chain(c.swapped_with.iter().map(move |s| (format!("spec.comparisons[{i}].swappedWith"), s)))
    });
    let rules = model.rules.iter().enumerate().flat_map(|(i, r)| {
        r.all_equal.iter().enumerate().map(move |(j, a)| (format!("spec.rules[{i}].allEqual[{j}]"), a))
    });
    let never = model.never_merge.iter().enumerate().map(|(i, n)| (format!("spec.neverMerge[{i}].attribute"), &n.attribute));
    let survivorship = model.survivorship.attributes.keys().map(|a| ("spec.survivorship.attributes".to_string(), a));
    blocking
        .chain(comparisons)
        .chain(rules)
        .chain(never)
        .chain(survivorship)
        .filter_map(|(field, attribute)| unknown(field, attribute))
        .collect()
}

fn scaling_errors(spec: &crate::crd::ScalingPolicySpec) -> Vec<MemberError> {
    match spec.mode {
        // KEDA's cron trigger must be able to express every peak window.
        crate::crd::scaling::ScalingMode::Keda => spec
            .peak_windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| crate::scaling::keda::cron_span(w).err().map(|e| (i, e)))
            .map(|(i, e)| MemberError::Invalid { field: format!("spec.peakWindows[{i}]"), message: e.to_string() })
            .collect(),
        crate::crd::scaling::ScalingMode::Builtin => Vec::new(),
    }
}

/// An allow-list of attributes that leave the platform (a Feed's, an Enricher's) and the
/// consent purpose it requires: each attribute known and mapped by a Source, the purpose too.
fn allow_list_errors(attributes: &[String], required_consent: Option<&String>, mapped: &BTreeSet<&str>) -> Vec<MemberError> {
    let mut errors = Vec::new();
    for (i, attribute) in attributes.iter().enumerate() {
        let field = format!("spec.attributes[{i}]");
        if let Some(error) = unknown(field.clone(), attribute) {
            errors.push(error);
        } else if !mapped.contains(attribute.as_str()) {
            errors.push(MemberError::UnmappedAttribute { field, attribute: attribute.clone() });
        }
    }
    if let Some(purpose) = required_consent {
        let consent = format!("{CONSENT_PREFIX}{purpose}");
        if !mapped.contains(consent.as_str()) {
            errors.push(MemberError::UnmappedAttribute { field: "spec.requiredConsent".to_string(), attribute: consent });
        }
    }
    errors
}

fn feed_errors(spec: &crate::crd::FeedSpec, mapped: &BTreeSet<&str>, secrets: &BTreeSet<SecretKeyRef>) -> Vec<MemberError> {
    let mut errors = missing_secrets(spec.secret_refs(), secrets);
    errors.extend(allow_list_errors(&spec.attributes, spec.required_consent.as_ref(), mapped));
    errors.extend(trigger_errors(&spec.triggers, mapped));
    errors
}

/// Triggers read attributes the Sources map, with the operands their operators take.
fn trigger_errors(triggers: &[crate::crd::feed::Trigger], mapped: &BTreeSet<&str>) -> Vec<MemberError> {
    let mut errors = Vec::new();
    for (i, trigger) in triggers.iter().enumerate() {
        if let Some(attribute) = trigger.field.strip_prefix("profile.") {
            let field = format!("spec.triggers[{i}].field");
            if let Some(error) = unknown(field.clone(), attribute) {
                errors.push(error);
            } else if !mapped.contains(attribute) {
                errors.push(MemberError::UnmappedAttribute { field, attribute: attribute.to_string() });
            }
        }
    }
    // `cdp local` reads its files without the CRD's rules
    if let Err(e) = super::trigger::Conditions::compile(triggers) {
        errors.push(MemberError::Invalid { field: "spec.triggers".into(), message: e.to_string() });
    }
    errors
}

/// An Enricher sends only attributes a Source maps, to an endpoint it may reach, and writes
/// back attributes of the vocabulary (never consents: only the person states those).
fn enricher_errors(
    spec: &crate::crd::EnricherSpec,
    mapped: &BTreeSet<&str>,
    sources: &BTreeSet<String>,
    secrets: &BTreeSet<SecretKeyRef>,
) -> Vec<MemberError> {
    let mut errors = missing_secrets(spec.secret_refs(), secrets);
    errors.extend(allow_list_errors(&spec.attributes, spec.required_consent.as_ref(), mapped));
    for (i, write) in spec.write.iter().enumerate() {
        let field = format!("spec.write[{i}].to");
        if let Some(error) = unknown(field.clone(), &write.to) {
            errors.push(error);
        } else if write.to.starts_with(CONSENT_PREFIX) {
            errors.push(MemberError::Invalid { field, message: "consents are stated by the person, never written by an enricher".into() });
        }
    }
    for (i, source) in spec.sources.iter().enumerate().filter(|(_, s)| !sources.contains(*s)) {
        errors.push(MemberError::Invalid {
            field: format!("spec.sources[{i}]"),
            message: format!("no accepted Source {source:?} in this platform"),
        });
    }
    errors.extend(trigger_errors(&spec.triggers, mapped));
    if spec.stage == crate::crd::enricher::EnrichStage::PreMatch && !spec.triggers.is_empty() {
        errors.push(MemberError::Invalid {
            field: "spec.triggers".into(),
            message: "triggers select profile changes: a PreMatch enricher selects by sources".into(),
        });
    }
    if spec.stage == crate::crd::enricher::EnrichStage::PreMatch && spec.sources.is_empty() {
        errors.push(MemberError::Invalid {
            field: "spec.sources".into(),
            message: "a PreMatch enricher names the Sources whose records it enriches".into(),
        });
    }
    let endpoint = &spec.endpoint;
    let scheme_ok = endpoint.url.starts_with("https://") || (endpoint.allow_insecure_http && endpoint.url.starts_with("http://"));
    if !scheme_ok || url::Url::parse(&endpoint.url).is_err() {
        errors.push(MemberError::Invalid {
            field: "spec.endpoint.url".into(),
            message: "must be https://host/... (or http:// with allowInsecureHttp: true)".into(),
        });
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cdp local` reads Sources without the CRD schema: the limits are checked here too.
    #[test]
    fn length_limits_name_mapped_attributes_within_the_hard_maximum() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
        let mut manifests = crate::pipeline::load_dir(&dir).unwrap();
        let pos = manifests.sources.iter_mut().find(|s| s.name_any() == "pos").unwrap();
        let limits = [("givenName", 50), ("attributes.homeStore", 0), ("email", 100), ("familyName", 10_001), ("nickname", 10)];
        pos.spec.validation.max_length = limits.iter().map(|(a, n)| (a.to_string(), *n)).collect();
        let platform = manifests.platforms[0].clone();
        let compiled = compile(&platform, &manifests.members_of(&platform), crate::identity::default_model());
        let invalid = |message: &str| MemberError::Invalid { field: "spec.validation.maxLength".into(), message: message.into() };
        assert_eq!(
            compiled.verdict("Source", "pos").unwrap().errors,
            [
                invalid("\"attributes.homeStore\": a limit is 1 to 10000 characters, got 0"),
                invalid("\"email\" has a limit but no mapping produces it"),
                invalid("\"familyName\": a limit is 1 to 10000 characters, got 10001"),
                MemberError::UnknownAttribute { field: "spec.validation.maxLength".into(), attribute: "nickname".into() },
            ]
        );
        let pos = manifests.sources.iter_mut().find(|s| s.name_any() == "pos").unwrap();
        pos.spec.validation.max_length = [("givenName".to_string(), 50), ("attributes.homeStore".to_string(), 10_000)].into();
        let compiled = compile(&platform, &manifests.members_of(&platform), crate::identity::default_model());
        assert!(compiled.verdict("Source", "pos").unwrap().accepted());
        assert_eq!(compiled.config.source("pos").unwrap().spec.validation.max_length["givenName"], 50);
    }
}
