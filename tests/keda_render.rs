//! KEDA mode: the ScaledObjects rendered for the samples, validated against KEDA's own CRD
//! schema (tests/schemas/keda), and what they carry.

use std::path::Path;

use cdp_operator::crd::scaling::ScalingMode;
use cdp_operator::operator::render::{self, StorePassword};
use cdp_operator::pipeline::{self, Manifests};
use serde_json::Value;

fn samples_in_keda_mode() -> Manifests {
    let mut manifests = pipeline::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples")).unwrap();
    for policy in &mut manifests.scaling_policies {
        policy.spec.mode = ScalingMode::Keda;
    }
    manifests
}

/// The rendered ScaledObjects of the samples' platform, and compile's verdict errors.
fn render_keda(manifests: &Manifests) -> (Vec<Value>, Vec<String>) {
    let platform = &manifests.platforms[0];
    let compiled = pipeline::compile(platform, &manifests.members_of(platform), cdp_operator::identity::default_model());
    let errors = compiled.verdicts.iter().flat_map(|v| v.errors.iter().map(move |e| format!("{} {}: {e}", v.kind, v.name))).collect();
    let bundle = render::render(platform, &compiled.config, &compiled.hash, &StorePassword::Exists, &render::Images::default()).unwrap();
    (bundle.scaled_objects.iter().map(|o| serde_json::to_value(o).unwrap()).collect(), errors)
}

fn keda_schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemas/keda/keda.sh_scaledobjects.yaml")).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let version = crd["spec"]["versions"].as_array().unwrap().iter().find(|v| v["name"] == "v1alpha1").unwrap();
    jsonschema::validator_for(&version["schema"]["openAPIV3Schema"]).unwrap()
}

fn trigger<'a>(object: &'a Value, name: &str) -> &'a Value {
    object["spec"]["triggers"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("no trigger {name} in {object}"))
}

#[test]
fn scaled_objects_satisfy_kedas_schema() {
    let (objects, errors) = render_keda(&samples_in_keda_mode());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(objects.len(), 3);
    let schema = keda_schema();
    for object in &objects {
        let problems: Vec<String> = schema.iter_errors(object).map(|e| format!("{}: {e}", e.instance_path())).collect();
        assert!(problems.is_empty(), "{}: {problems:?}", object["metadata"]["name"]);
    }
    // The schema does bite: a ScaledObject without triggers or target is refused.
    let mut broken = objects[0].clone();
    broken["spec"].as_object_mut().unwrap().remove("triggers");
    broken["spec"]["minReplicaCount"] = "one".into();
    assert_eq!(schema.iter_errors(&broken).count(), 2);
}

#[test]
fn bounds_peak_windows_and_intake_lag_become_keda_settings() {
    let (objects, _) = render_keda(&samples_in_keda_mode());
    let named = |name: &str| objects.iter().find(|o| o["metadata"]["name"] == name).unwrap();
    let matcher = named("retail-matcher");
    assert_eq!(matcher["spec"]["scaleTargetRef"]["name"], "retail-matcher");
    assert_eq!((matcher["spec"]["minReplicaCount"].as_u64(), matcher["spec"]["maxReplicaCount"].as_u64()), (Some(1), Some(8)));
    // Opening night (18:00 Paris, 10 minutes' lead) in UTC; the Saturday rush in its zone.
    let opening = &trigger(matcher, "peak-opening-night")["metadata"];
    assert_eq!((opening["timezone"].as_str(), opening["start"].as_str(), opening["end"].as_str()), (Some("UTC"), Some("50 16 11 12 *"), Some("0 22 11 12 *")));
    assert_eq!(opening["desiredReplicas"], "6");
    let rush = &trigger(matcher, "peak-saturday-rush")["metadata"];
    assert_eq!((rush["timezone"].as_str(), rush["start"].as_str(), rush["end"].as_str()), (Some("Europe/Paris"), Some("55 13 * * 6"), Some("0 18 * * 6")));
    let lag = trigger(matcher, "intake-lag");
    assert_eq!(lag["type"], "postgresql");
    assert_eq!(lag["metadata"]["query"], "SELECT COUNT(*) FROM intake WHERE state = 'queued'");
    assert_eq!(lag["metadata"]["targetQueryValue"], "250");
    assert_eq!(lag["metadata"]["host"], "retail-postgres.default.svc");
    assert_eq!(lag["metadata"]["passwordFromEnv"], "CDP_STORE_PASSWORD", "the password stays in its Secret");

    // Feeds: no Saturday floor, so only the opening night's cron, plus CPU.
    let feeds = named("retail-feeds");
    let kinds: Vec<&str> = feeds["spec"]["triggers"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["peak-opening-night", "cpu"]);
    assert_eq!(trigger(named("retail-ingest"), "cpu")["metadata"]["value"], "70", "the ingest policy's target utilisation");
}

/// What the samples' platform renders with the `pos` tills delivering through Kafka over SCRAM
/// and TLS, their Secrets present, in `mode`.
fn render_kafka_tills(mode: ScalingMode) -> render::Bundle {
    let mut manifests = samples_in_keda_mode();
    manifests.scaling_policies.iter_mut().for_each(|p| p.spec.mode = mode);
    let platform = &manifests.platforms[0];
    let mut members = manifests.members_of(platform);
    let tills = members.sources.iter_mut().find(|s| s.metadata.name.as_deref() == Some("pos")).unwrap();
    tills.spec.delivery = serde_json::from_value(serde_json::json!({"kafka": {
        "topic": "till-receipts",
        "bootstrapServersSecretRef": {"name": "kafka", "key": "servers"},
        "autoOffsetReset": "Latest",
        "tls": {"caSecretRef": {"name": "kafka", "key": "ca.crt"}},
        "sasl": {"mechanism": "SCRAM-SHA-512", "usernameSecretRef": {"name": "kafka-user", "key": "username"},
                 "passwordSecretRef": {"name": "kafka-user", "key": "password"}},
    }}))
    .unwrap();
    for (name, key) in [("kafka", "servers"), ("kafka", "ca.crt"), ("kafka-user", "username"), ("kafka-user", "password")] {
        members.secret_keys.insert(cdp_operator::crd::SecretKeyRef { name: name.into(), key: key.into() });
    }
    let compiled = pipeline::compile(platform, &members, cdp_operator::identity::default_model());
    assert!(compiled.verdicts.iter().all(|v| v.accepted()), "{:?}", compiled.verdicts);
    render::render(platform, &compiled.config, &compiled.hash, &StorePassword::Exists, &render::Images::default()).unwrap()
}

#[test]
fn a_kafka_source_scales_intake_by_its_consumer_lag() {
    let bundle = render_kafka_tills(ScalingMode::Keda);
    let ingest = bundle.scaled_objects.iter().map(|o| serde_json::to_value(o).unwrap()).find(|o| o["metadata"]["name"] == "retail-ingest").unwrap();
    let problems: Vec<String> = keda_schema().iter_errors(&ingest).map(|e| e.to_string()).collect();
    assert!(problems.is_empty(), "{problems:?}");
    let kafka = trigger(&ingest, "kafka-pos");
    assert_eq!(kafka["type"], "kafka");
    let metadata = &kafka["metadata"];
    assert_eq!(metadata["topic"], "till-receipts");
    assert_eq!(metadata["consumerGroup"], "retail-pos", "the group the intake replicas consume in");
    assert_eq!(metadata["offsetResetPolicy"], "latest");
    assert_eq!((metadata["sasl"].as_str(), metadata["tls"].as_str()), (Some("scram_sha512"), Some("enable")));
    assert!(metadata.get("bootstrapServers").is_none(), "the servers stay in their Secret");
    let env = metadata["bootstrapServersFromEnv"].as_str().unwrap();
    assert_eq!(env, "CDP_KAFKA_BOOTSTRAP_POS");
    // that variable is the ingest container's, from the Secret
    let deployment = bundle.deployments.iter().map(|d| serde_json::to_value(d).unwrap()).find(|d| d["metadata"]["name"] == "retail-ingest").unwrap();
    let variable = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().iter().find(|e| e["name"] == env).cloned();
    assert_eq!(variable.unwrap()["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "kafka", "key": "servers"}));
    // the credentials, by reference, in the TriggerAuthentication the trigger names
    let authentications: Vec<Value> = bundle.trigger_authentications.iter().map(|o| serde_json::to_value(o).unwrap()).collect();
    assert_eq!(authentications.len(), 1);
    assert_eq!(authentications[0]["metadata"]["name"], kafka["authenticationRef"]["name"]);
    let refs: Vec<(&str, &str, &str)> = authentications[0]["spec"]["secretTargetRef"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["parameter"].as_str().unwrap(), r["name"].as_str().unwrap(), r["key"].as_str().unwrap()))
        .collect();
    assert_eq!(refs, [("username", "kafka-user", "username"), ("password", "kafka-user", "password"), ("ca", "kafka", "ca.crt")]);
    // built-in mode: no trigger credentials, and the servers stay out of the environment
    let builtin = render_kafka_tills(ScalingMode::Builtin);
    assert!(builtin.scaled_objects.is_empty() && builtin.trigger_authentications.is_empty());
    assert!(!serde_json::to_string(&builtin.deployments).unwrap().contains("CDP_KAFKA_BOOTSTRAP"));
}

#[test]
fn builtin_mode_renders_no_scaled_object() {
    let manifests = pipeline::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples")).unwrap();
    assert!(render_keda(&manifests).0.is_empty());
}

#[test]
fn a_window_keda_cannot_express_refuses_the_policy() {
    let mut manifests = samples_in_keda_mode();
    manifests.scaling_policies[0].spec.peak_windows[1].schedule = Some("*/15 9 * * 6".into());
    let (objects, errors) = render_keda(&manifests);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("spec.peakWindows[1]") && errors[0].contains("plain number"), "{}", errors[0]);
    assert!(objects.is_empty(), "the refused policy is left out: no KEDA mode");
}
