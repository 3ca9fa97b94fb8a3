//! CRs → PipelineConfig: semantic errors refuse one member with a clear message and leave the
//! rest of the platform running.

use std::path::Path;

use cdp_operator::crd::{Feed, Source};
use cdp_operator::identity::default_model;
use cdp_operator::pipeline::{self, MemberError, Manifests};

fn samples() -> Manifests {
    pipeline::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples")).expect("samples load")
}

fn compile(manifests: &Manifests) -> pipeline::Compiled {
    let platform = &manifests.platforms[0];
    pipeline::compile(platform, &manifests.members_of(platform), default_model())
}

#[test]
fn samples_compile_without_errors() {
    let manifests = samples();
    let compiled = compile(&manifests);
    let refused: Vec<_> = compiled.verdicts.iter().filter(|v| !v.accepted()).collect();
    assert!(refused.is_empty(), "samples must be valid: {refused:?}");
    assert!(compiled.platform_errors.is_empty(), "{:?}", compiled.platform_errors);
    let names: Vec<&str> = compiled.config.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pos", "ticketing", "webshop"]);
    assert_eq!(compiled.config.matching.policy.as_deref(), Some("retail"));
    assert_eq!(compiled.config.feeds.len(), 2);
    assert_eq!(compiled.config.namespace, "default");
}

#[test]
fn feed_with_unmapped_attribute_is_refused_alone() {
    let mut manifests = samples();
    let mut feed: Feed = manifests.feeds.iter().find(|f| f.metadata.name.as_deref() == Some("crm")).unwrap().clone();
    feed.spec.attributes.push("attributes.shoeSize".to_string());
    feed.spec.attributes.push("favouriteColour".to_string());
    manifests.feeds.retain(|f| f.metadata.name.as_deref() != Some("crm"));
    manifests.feeds.push(feed);

    let compiled = compile(&manifests);
    let verdict = compiled.verdict("Feed", "crm").unwrap();
    assert_eq!(
        verdict.errors,
        vec![
            MemberError::UnmappedAttribute { field: "spec.attributes[6]".into(), attribute: "attributes.shoeSize".into() },
            MemberError::UnknownAttribute { field: "spec.attributes[7]".into(), attribute: "favouriteColour".into() },
        ]
    );
    assert!(verdict.errors[0].to_string().contains("no Source of this platform maps \"attributes.shoeSize\""));
    assert_eq!(verdict.errors[0].reason(), "UnmappedAttribute");
    // The rest keeps running: the other feed and every source are in the config.
    assert_eq!(compiled.config.feeds.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["sms-gateway"]);
    assert_eq!(compiled.config.sources.len(), 3);
    assert_eq!(compiled.rejected(), 1);
}

#[test]
fn missing_secret_refuses_the_source() {
    let mut manifests = samples();
    manifests.secrets.retain(|s| s.metadata.name.as_deref() != Some("pos-intake"));
    let compiled = compile(&manifests);
    let verdict = compiled.verdict("Source", "pos").unwrap();
    assert_eq!(verdict.errors.len(), 1);
    assert_eq!(verdict.errors[0].reason(), "SecretNotFound");
    assert!(verdict.errors[0].to_string().contains("Secret \"pos-intake\" has no key \"token\""));
    assert!(compiled.config.source("pos").is_none());
    // The loyalty id was mapped only by the refused source: the CRM feed that exports it is refused
    // too, with a message naming the attribute; the SMS feed does not depend on it and stays.
    let crm = compiled.verdict("Feed", "crm").unwrap();
    assert_eq!(
        crm.errors,
        vec![MemberError::UnmappedAttribute { field: "spec.attributes[4]".into(), attribute: "identifiers.loyaltyId".into() }]
    );
    assert!(compiled.verdict("Feed", "sms-gateway").unwrap().accepted());
}

#[test]
fn duplicate_source_names_are_refused() {
    let mut manifests = samples();
    let copy: Source = manifests.sources[0].clone();
    manifests.sources.push(copy);
    let compiled = compile(&manifests);
    let name = manifests.sources[0].metadata.name.clone().unwrap();
    let verdict = compiled.verdict("Source", &name).unwrap();
    assert!(verdict.errors.iter().any(|e| e.reason() == "DuplicateName"), "{verdict:?}");
}

#[test]
fn second_matching_policy_conflicts() {
    let mut manifests = samples();
    let mut second = manifests.matching_policies[0].clone();
    second.metadata.name = Some("zz-experiment".into());
    manifests.matching_policies.push(second);
    let compiled = compile(&manifests);
    assert!(compiled.verdict("MatchingPolicy", "retail").unwrap().accepted());
    let refused = compiled.verdict("MatchingPolicy", "zz-experiment").unwrap();
    assert_eq!(refused.errors, vec![MemberError::SecondMatchingPolicy { active: "retail".into() }]);
}

#[test]
fn matching_policy_with_unknown_attribute_falls_back_to_default_model() {
    let mut manifests = samples();
    manifests.matching_policies[0].spec.model.comparisons[0].attribute = "emial".into();
    let compiled = compile(&manifests);
    let verdict = compiled.verdict("MatchingPolicy", "retail").unwrap();
    assert_eq!(verdict.errors[0].reason(), "UnknownAttribute");
    assert!(verdict.errors[0].to_string().contains("spec.comparisons[0].attribute"));
    assert_eq!(compiled.config.matching.policy, None);
    assert_eq!(compiled.config.matching.model, default_model());
}

#[test]
fn content_hash_tracks_the_config() {
    let manifests = samples();
    let first = compile(&manifests);
    assert_eq!(first.hash, compile(&manifests).hash, "same input, same hash");
    let mut fewer = manifests.clone();
    fewer.sources.retain(|s| s.metadata.name.as_deref() != Some("pos"));
    let second = compile(&fewer);
    assert_ne!(first.hash, second.hash, "deleting a Source changes the config");
    assert!(second.config.source("pos").is_none());
}

#[test]
fn missing_api_tokens_secret_stalls_the_platform() {
    let mut manifests = samples();
    manifests.secrets.retain(|s| s.metadata.name.as_deref() != Some("retail-api-tokens"));
    let compiled = compile(&manifests);
    assert_eq!(compiled.platform_errors.len(), 1);
    assert!(compiled.platform_errors[0].to_string().contains("spec.api.tokensSecretRef"));
}

#[test]
fn bad_yaml_names_the_file_and_document() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: cdp.dev/v1alpha1\nkind: Source\nmetadata: {name: broken}\nspec: {platformRef: {name: x}}\n",
    )
    .unwrap();
    let error = pipeline::load_dir(dir.path()).unwrap_err().to_string();
    assert!(error.contains("a.yaml: document 0 (Source \"broken\")"), "{error}");
    assert!(error.contains("missing field"), "{error}");
}

#[test]
fn contradicting_scaling_policies_refuse_the_later_one() {
    let mut manifests = samples();
    let mut second = manifests.scaling_policies[0].clone();
    second.metadata.name = Some("weekend".into());
    second.spec.peak_windows.clear();
    manifests.scaling_policies.push(second);
    let compiled = compile(&manifests);
    assert!(compiled.verdict("ScalingPolicy", "retail").unwrap().accepted());
    let refused = compiled.verdict("ScalingPolicy", "weekend").unwrap();
    assert!(refused.errors[0].to_string().contains("\"retail\" and \"weekend\""), "{:?}", refused.errors);
    assert_eq!(compiled.config.scaling.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["retail"]);
}

#[test]
fn keda_mode_is_accepted_when_kedas_cron_can_express_every_window() {
    let mut manifests = samples();
    manifests.scaling_policies[0].spec.mode = cdp_operator::crd::scaling::ScalingMode::Keda;
    assert!(compile(&manifests).verdict("ScalingPolicy", "retail").unwrap().accepted());
    // The 1st of the month from 23:00 for four hours crosses midnight on a day of month.
    manifests.scaling_policies[0].spec.peak_windows[1].schedule = Some("0 23 1 * *".into());
    let compiled = compile(&manifests);
    let refused = compiled.verdict("ScalingPolicy", "retail").unwrap();
    assert_eq!(refused.errors[0].reason(), "InvalidSpec");
    assert!(refused.errors[0].to_string().contains("spec.peakWindows[1]"), "{:?}", refused.errors);
}

#[test]
fn bad_time_zone_is_refused() {
    let mut manifests = samples();
    manifests.scaling_policies[0].spec.peak_windows[1].time_zone = "Europe/Atlantis".into();
    let compiled = compile(&manifests);
    let refused = compiled.verdict("ScalingPolicy", "retail").unwrap();
    assert!(refused.errors[0].to_string().contains("Europe/Atlantis"), "{:?}", refused.errors);
}

/// The samples with the address enricher of `config/enrichment/` (and its Secret).
fn with_address_enricher() -> Manifests {
    let mut manifests = samples();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/enrichment/address-enricher.yaml");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    for mut doc in docs {
        doc["metadata"]["namespace"] = "default".into();
        match doc["kind"].as_str() {
            Some("Enricher") => manifests.enrichers.push(serde_json::from_value(doc).unwrap()),
            Some("Secret") => manifests.secrets.push(serde_json::from_value(doc).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    manifests
}

#[test]
fn an_enricher_compiles_into_the_config_and_holds_its_sources_records() {
    let manifests = with_address_enricher();
    let compiled = compile(&manifests);
    assert!(compiled.verdict("Enricher", "address").unwrap().accepted(), "{:?}", compiled.verdicts);
    assert_eq!(compiled.config.enrichers.len(), 1);
    assert_eq!(compiled.config.enrichment_holds(), [("webshop".to_string(), 2000)].into());
    assert_ne!(compiled.hash, compile(&samples()).hash, "an enricher rolls the workloads");
}

#[test]
fn an_enricher_sends_only_mapped_attributes_and_writes_no_consent() {
    let mut manifests = with_address_enricher();
    let spec = &mut manifests.enrichers[0].spec;
    spec.attributes.push("attributes.shoeSize".into());
    spec.write.push(cdp_operator::crd::enricher::WriteBack { from: "optin".into(), to: "consents.sms".into() });
    spec.sources.push("kiosk".into());
    spec.endpoint.allow_insecure_http = false;
    let compiled = compile(&manifests);
    let errors = &compiled.verdict("Enricher", "address").unwrap().errors;
    assert_eq!(errors[0], MemberError::UnmappedAttribute { field: "spec.attributes[3]".into(), attribute: "attributes.shoeSize".into() });
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(messages[1].contains("spec.write[4].to: consents are stated by the person"), "{messages:?}");
    assert!(messages[2].contains("spec.sources[1]: no accepted Source \"kiosk\""), "{messages:?}");
    assert!(messages[3].contains("spec.endpoint.url: must be https://"), "{messages:?}");
    assert!(compiled.config.enrichers.is_empty());
}

#[test]
fn a_source_has_one_pre_match_enricher() {
    let mut manifests = with_address_enricher();
    let mut second = manifests.enrichers[0].clone();
    second.metadata.name = Some("geocode".into());
    manifests.enrichers.push(second);
    let compiled = compile(&manifests);
    assert!(compiled.verdict("Enricher", "address").unwrap().accepted());
    let refused = compiled.verdict("Enricher", "geocode").unwrap();
    assert!(refused.errors[0].to_string().contains("\"address\" already enriches the records of \"webshop\""), "{refused:?}");
    assert_eq!(compiled.config.enrichers.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["address"]);
}

#[test]
fn an_enricher_without_its_signing_secret_is_refused() {
    let mut manifests = with_address_enricher();
    manifests.secrets.retain(|s| s.metadata.name.as_deref() != Some("address-enricher"));
    let compiled = compile(&manifests);
    let errors = &compiled.verdict("Enricher", "address").unwrap().errors;
    assert_eq!(errors[0].reason(), "SecretNotFound");
    assert!(errors[0].to_string().contains("spec.endpoint.signingSecretRef"));
}
