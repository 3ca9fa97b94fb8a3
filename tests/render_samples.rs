//! The objects rendered for the samples: snapshot, plus the properties a platform engineer relies on.

use std::path::Path;

use cdp_operator::identity::default_model;
use cdp_operator::operator::render::{self, StorePassword, Workload};
use cdp_operator::pipeline;
use serde_json::Value;

fn samples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples")
}

fn rendered() -> Vec<Value> {
    let manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let platform = &manifests.platforms[0];
    let compiled = pipeline::compile(platform, &manifests.members_of(platform), default_model());
    render::render(platform, &compiled.config, &compiled.hash, &StorePassword::Create("pw".into()), &render::Images::default())
        .unwrap()
        .objects()
}

/// Every port a NetworkPolicy lets out.
fn egress_ports(policy: &Value) -> Vec<i64> {
    policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap().iter().map(|p| p["port"].as_i64().unwrap()))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

#[test]
fn render_dir_snapshot() {
    let out = cdp_operator::operator::render_dir(&samples_dir(), &render::Images::default()).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    insta::assert_snapshot!("samples", out.yaml);
}

#[test]
fn every_kind_is_rendered() {
    let objects = rendered();
    let mut kinds: Vec<(String, String)> = objects
        .iter()
        .map(|o| (o["kind"].as_str().unwrap().to_string(), o["metadata"]["name"].as_str().unwrap().to_string()))
        .collect();
    kinds.sort();
    let expected = [
        ("ConfigMap", "retail-pipeline"),
        ("Deployment", "retail-api"),
        ("Deployment", "retail-feeds"),
        ("Deployment", "retail-ingest"),
        ("Deployment", "retail-matcher"),
        ("HorizontalPodAutoscaler", "retail-api"),
        ("NetworkPolicy", "retail-api"),
        ("NetworkPolicy", "retail-feeds"),
        ("NetworkPolicy", "retail-ingest"),
        ("NetworkPolicy", "retail-matcher"),
        ("NetworkPolicy", "retail-postgres"),
        ("PodDisruptionBudget", "retail-api"),
        ("PodDisruptionBudget", "retail-feeds"),
        ("PodDisruptionBudget", "retail-ingest"),
        ("PodDisruptionBudget", "retail-matcher"),
        ("Secret", "retail-store"),
        ("Service", "retail-api"),
        ("Service", "retail-ingest"),
        ("Service", "retail-postgres"),
        ("ServiceAccount", "retail-cdp"),
        ("StatefulSet", "retail-postgres"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(k, n)| (k.to_string(), n.to_string())).collect();
    assert_eq!(kinds, expected);
}

#[test]
fn pods_meet_the_restricted_pod_security_standard() {
    for object in rendered().iter().filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet") {
        let pod = &object["spec"]["template"]["spec"];
        let name = &object["metadata"]["name"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for container in pod["containers"].as_array().unwrap() {
            let sc = &container["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
            assert!(container["resources"]["requests"]["cpu"].is_string(), "{name} has requests");
            assert!(container["resources"]["limits"]["memory"].is_string(), "{name} has a memory limit");
        }
    }
}

#[test]
fn scaled_workloads_leave_replicas_to_the_scaler() {
    let objects = rendered();
    for workload in Workload::ALL {
        let deployment = find(&objects, "Deployment", &workload.object_name("retail"));
        assert!(deployment["spec"].get("replicas").is_none(), "{workload:?}: replicas belong to the scaler or the HPA");
    }
}

#[test]
fn probes_point_at_health_endpoints_and_config_hash_rolls_pods() {
    let manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let platform = &manifests.platforms[0];
    let compiled = pipeline::compile(platform, &manifests.members_of(platform), default_model());
    let objects = rendered();
    let ingest = find(&objects, "Deployment", "retail-ingest");
    let container = &ingest["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["args"][0], "ingest");
    assert_eq!(ingest["spec"]["template"]["metadata"]["annotations"]["cdp.dev/config-hash"], compiled.hash.as_str());
    // Ingest sees exactly the source keys, not the feeds' signing keys.
    let projected = &ingest["spec"]["template"]["spec"]["volumes"][1]["projected"]["sources"];
    let secrets: Vec<&str> = projected.as_array().unwrap().iter().map(|s| s["secret"]["name"].as_str().unwrap()).collect();
    assert_eq!(secrets, ["pos-intake", "ticketing-intake", "webshop-intake"]);
    let config = find(&objects, "ConfigMap", "retail-pipeline");
    let body: pipeline::PipelineConfig = serde_json::from_str(config["data"]["pipeline.json"].as_str().unwrap()).unwrap();
    assert_eq!(body, compiled.config, "the ConfigMap carries the compiled config verbatim");
}

#[test]
fn every_workload_reads_the_privacy_key_from_a_secret_that_outlives_the_platform() {
    let objects = rendered();
    for name in ["retail-ingest", "retail-matcher", "retail-api", "retail-feeds"] {
        let env = find(&objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        let key = env.iter().find(|e| e["name"] == "CDP_PRIVACY_KEY").unwrap_or_else(|| panic!("{name} has no CDP_PRIVACY_KEY"));
        // optional: the workloads of a store made before the Secret existed use the store's own key
        let from = serde_json::json!({"name": "retail-privacy-key", "key": "key", "optional": true});
        assert_eq!(key["valueFrom"]["secretKeyRef"], from, "{name}");
    }
    let manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let secret = serde_json::to_value(render::privacy_key_secret(&manifests.platforms[0], "k-1").unwrap()).unwrap();
    assert_eq!((secret["metadata"]["name"].as_str(), secret["metadata"]["namespace"].as_str()), (Some("retail-privacy-key"), Some("default")));
    assert!(secret["metadata"].get("ownerReferences").is_none(), "the key outlives the platform, like the store's data");
    assert_eq!(secret["stringData"], serde_json::json!({"key": "k-1"}));
}

#[test]
fn existing_store_password_is_never_regenerated() {
    let manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let platform = &manifests.platforms[0];
    let compiled = pipeline::compile(platform, &manifests.members_of(platform), default_model());
    let bundle = render::render(platform, &compiled.config, &compiled.hash, &StorePassword::Exists, &render::Images::default()).unwrap();
    assert!(bundle.store_secret.is_none());
    assert!(bundle.store.is_some());
}

#[test]
fn external_store_renders_no_postgres() {
    let manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let mut platform = manifests.platforms[0].clone();
    platform.spec.store.in_cluster = None;
    platform.spec.store.external = Some(serde_json::from_value(serde_json::json!({"urlSecretRef": {"name": "pg", "key": "url"}})).unwrap());
    let compiled = pipeline::compile(&platform, &manifests.members_of(&platform), default_model());
    let bundle = render::render(&platform, &compiled.config, &compiled.hash, &StorePassword::Create("x".into()), &render::Images::default()).unwrap();
    assert!(bundle.store.is_none() && bundle.store_service.is_none() && bundle.store_secret.is_none());
    let env = &serde_json::to_value(&bundle.deployments[0]).unwrap()["spec"]["template"]["spec"]["containers"][0]["env"];
    let url = env.as_array().unwrap().iter().find(|e| e["name"] == "CDP_STORE_URL").unwrap();
    assert_eq!(url["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "pg", "key": "url"}));
}

#[test]
fn network_policies_admit_only_intake_and_api_traffic() {
    let objects = rendered();
    let api = find(&objects, "NetworkPolicy", "retail-api");
    let from = api["spec"]["ingress"][0]["from"].as_array().unwrap();
    let namespaces: Vec<&Value> = from.iter().map(|p| &p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]).collect();
    assert!(namespaces.contains(&&Value::from("crm")) && namespaces.contains(&&Value::from("marketing")));
    let matcher = find(&objects, "NetworkPolicy", "retail-matcher");
    assert_eq!(matcher["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "cdp-operator");
    let feeds = find(&objects, "NetworkPolicy", "retail-feeds");
    let egress_ports = egress_ports(feeds);
    assert!(egress_ports.contains(&443), "feeds reach their https webhooks");
    assert!(!egress_ports.contains(&9092), "no Kafka feed, no Kafka port");
}

#[test]
fn the_in_cluster_store_is_sized_to_its_container() {
    let store = rendered().into_iter().find(|o| o["kind"] == "StatefulSet").expect("the sample keeps its store in the cluster");
    let args = &store["spec"]["template"]["spec"]["containers"][0]["args"];
    // the sample's 20 GiB volume, the default 1 GiB memory limit
    let expected =
        ["postgres", "-c", "shared_buffers=256MB", "-c", "effective_cache_size=768MB", "-c", "max_wal_size=4096MB"];
    assert_eq!(args, &serde_json::json!(expected));
}

#[test]
fn workloads_run_the_operators_images_unless_the_spec_names_its_own() {
    let manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let mut platform = manifests.platforms[0].clone();
    let compiled = pipeline::compile(&platform, &manifests.members_of(&platform), default_model());
    let images = render::Images { cdp: "registry.example/cdp:1.2.3".into(), postgres: "registry.example/pg:17".into() };
    let image_of = |objects: Vec<Value>, kind: &str| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .map(|o| o["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_string())
            .collect()
    };
    let objects = render::render(&platform, &compiled.config, &compiled.hash, &StorePassword::Exists, &images).unwrap().objects();
    assert_eq!(image_of(objects.clone(), "Deployment"), vec!["registry.example/cdp:1.2.3"; 4]);
    assert_eq!(image_of(objects, "StatefulSet"), ["registry.example/pg:17"]);

    platform.spec.image = Some("mirror.example/cdp:pinned".into());
    platform.spec.store.in_cluster.as_mut().unwrap().image = Some("mirror.example/pg:pinned".into());
    let objects = render::render(&platform, &compiled.config, &compiled.hash, &StorePassword::Exists, &images).unwrap().objects();
    assert_eq!(image_of(objects.clone(), "Deployment"), vec!["mirror.example/cdp:pinned"; 4]);
    assert_eq!(image_of(objects, "StatefulSet"), ["mirror.example/pg:pinned"]);
}

#[test]
fn monitoring_peers_may_scrape_every_workload() {
    let manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let mut platform = manifests.platforms[0].clone();
    let prometheus = serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    });
    platform.spec.monitoring.allowed_from = vec![serde_json::from_value(prometheus.clone()).unwrap()];
    let compiled = pipeline::compile(&platform, &manifests.members_of(&platform), default_model());
    let objects = render::render(&platform, &compiled.config, &compiled.hash, &StorePassword::Exists, &render::Images::default())
        .unwrap()
        .objects();
    for workload in ["retail-matcher", "retail-feeds", "retail-api"] {
        let from = &find(&objects, "NetworkPolicy", workload)["spec"]["ingress"][0]["from"];
        assert!(from.as_array().unwrap().contains(&prometheus), "{workload}: {from}");
    }
    // intake takes traffic from anywhere already
    assert!(find(&objects, "NetworkPolicy", "retail-ingest")["spec"]["ingress"][0].get("from").is_none());
    // without it, the matcher admits the operator alone
    let objects = rendered();
    let from = find(&objects, "NetworkPolicy", "retail-matcher")["spec"]["ingress"][0]["from"].as_array().unwrap().clone();
    assert_eq!(from.len(), 1);
}

#[test]
fn a_kafka_source_gets_its_secrets_mounted_and_its_brokers_reachable() {
    let manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let platform = &manifests.platforms[0];
    let mut members = manifests.members_of(platform);
    let mut tills: cdp_operator::crd::Source = members.sources[0].clone();
    tills.metadata.name = Some("tills".into());
    tills.spec.delivery = serde_json::from_value(serde_json::json!({"kafka": {
        "topic": "till-sales",
        "bootstrapServersSecretRef": {"name": "kafka", "key": "servers"},
        "tls": {"caSecretRef": {"name": "kafka", "key": "ca.crt"}},
        "sasl": {"mechanism": "SCRAM-SHA-512", "usernameSecretRef": {"name": "kafka-user", "key": "username"},
                 "passwordSecretRef": {"name": "kafka-user", "key": "password"}},
        "brokerPorts": [9096],
    }}))
    .unwrap();
    members.sources.push(tills);
    for (name, key) in [("kafka", "servers"), ("kafka", "ca.crt"), ("kafka-user", "username"), ("kafka-user", "password")] {
        members.secret_keys.insert(cdp_operator::crd::SecretKeyRef { name: name.into(), key: key.into() });
    }
    let compiled = pipeline::compile(platform, &members, default_model());
    assert!(compiled.verdicts.iter().all(|v| v.accepted()), "{:?}", compiled.verdicts);
    let objects = render::render(platform, &compiled.config, &compiled.hash, &StorePassword::Exists, &render::Images::default())
        .unwrap()
        .objects();
    let ingest = find(&objects, "Deployment", "retail-ingest");
    let volumes = ingest["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let projected = volumes.iter().find(|v| v["name"] == "secrets").unwrap()["projected"]["sources"].as_array().unwrap();
    let mounted: Vec<String> = projected
        .iter()
        .flat_map(|s| s["secret"]["items"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap().to_string()))
        .collect();
    for path in ["kafka/servers", "kafka/ca.crt", "kafka-user/username", "kafka-user/password"] {
        assert!(mounted.contains(&path.to_string()), "{path} not mounted: {mounted:?}");
    }
    let policy = find(&objects, "NetworkPolicy", "retail-ingest");
    let egress_ports = egress_ports(policy);
    assert!(egress_ports.contains(&9096), "the brokers' own port: {egress_ports:?}");
    assert!(!egress_ports.contains(&9092), "only the ports the Source lists: {egress_ports:?}");
}

#[test]
fn the_feeds_workload_may_reach_the_enrichers_and_reads_their_secrets() {
    let mut manifests = pipeline::load_dir(&samples_dir()).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/enrichment/address-enricher.yaml");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    for mut doc in docs {
        doc["metadata"]["namespace"] = "default".into();
        if doc["kind"] == "Enricher" {
            doc["spec"]["endpoint"]["url"] = "https://address.example.com:8443/v1/standardise".into();
            manifests.enrichers.push(serde_json::from_value(doc).unwrap());
        } else {
            manifests.secrets.push(serde_json::from_value(doc).unwrap());
        }
    }
    let platform = &manifests.platforms[0];
    let compiled = pipeline::compile(platform, &manifests.members_of(platform), default_model());
    assert!(compiled.verdicts.iter().all(|v| v.accepted()), "{:?}", compiled.verdicts);
    let objects = render::render(platform, &compiled.config, &compiled.hash, &StorePassword::Exists, &render::Images::default())
        .unwrap()
        .objects();
    let policy = find(&objects, "NetworkPolicy", "retail-feeds");
    let egress_ports = egress_ports(policy);
    assert!(egress_ports.contains(&8443), "the enricher's endpoint: {egress_ports:?}");
    let feeds = find(&objects, "Deployment", "retail-feeds");
    let volumes = feeds["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let projected = volumes.iter().find(|v| v["name"] == "secrets").unwrap()["projected"]["sources"].as_array().unwrap();
    let mounted: Vec<&str> =
        projected.iter().flat_map(|s| s["secret"]["items"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap())).collect();
    assert!(mounted.contains(&"address-enricher/signing-key"), "{mounted:?}");
}
