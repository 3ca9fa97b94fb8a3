//! What `kubectl apply` would refuse: the generated CRD schemas (types, enums, patterns,
//! ranges, required fields) and their CEL rules (`x-kubernetes-validations`), evaluated
//! against the samples and against bad specs. The API fake does not run admission, so this is
//! where the CRDs' own validation is proven.

use std::path::Path;

use serde_json::{Value, json};

/// One CEL rule and the schema location it applies to (`[]` steps into array items).
struct Rule {
    path: Vec<String>,
    rule: String,
    message: String,
}

fn collect_rules(schema: &Value, path: &mut Vec<String>, out: &mut Vec<Rule>) {
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        out.push(Rule {
            path: path.clone(),
            rule: rule["rule"].as_str().unwrap().to_string(),
            message: rule["message"].as_str().unwrap_or_default().to_string(),
        });
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        path.push(name.clone());
        collect_rules(property, path, out);
        path.pop();
    }
    if schema["items"].is_object() {
        path.push("[]".to_string());
        collect_rules(&schema["items"], path, out);
        path.pop();
    }
    if schema["additionalProperties"].is_object() {
        path.push("{}".to_string());
        collect_rules(&schema["additionalProperties"], path, out);
        path.pop();
    }
}

/// Every value at `path` in `obj`, with its dotted location.
fn values_at<'a>(obj: &'a Value, path: &[String], location: String, out: &mut Vec<(String, &'a Value)>) {
    let Some((step, rest)) = path.split_first() else {
        out.push((location, obj));
        return;
    };
    match step.as_str() {
        "[]" => obj.as_array().into_iter().flatten().enumerate().for_each(|(i, item)| {
            values_at(item, rest, format!("{location}[{i}]"), out)
        }),
        "{}" => obj.as_object().into_iter().flatten().for_each(|(k, v)| values_at(v, rest, format!("{location}.{k}"), out)),
        field => {
            if let Some(value) = obj.get(field) {
                values_at(value, rest, format!("{location}.{field}").trim_start_matches('.').to_string(), out);
            }
        }
    }
}

struct Crd {
    schema: Value,
    rules: Vec<Rule>,
}

/// OpenAPI v3.0 writes `exclusiveMinimum: true` beside `minimum`; JSON Schema wants the bound itself.
fn to_json_schema(schema: &mut Value) {
    if let Some(fields) = schema.as_object_mut() {
        for (flag, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
            if fields.get(flag) == Some(&Value::Bool(true)) {
                let limit = fields.remove(bound).expect("an exclusive flag comes with its bound");
                fields.insert(flag.to_string(), limit);
            }
        }
        fields.values_mut().for_each(to_json_schema);
    } else if let Some(items) = schema.as_array_mut() {
        items.iter_mut().for_each(to_json_schema);
    }
}

fn crd(kind: &str) -> Crd {
    let crd = cdp_operator::crd::all().into_iter().find(|c| c.spec.names.kind == kind).unwrap();
    let mut schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
    to_json_schema(&mut schema);
    let mut rules = Vec::new();
    collect_rules(&schema, &mut Vec::new(), &mut rules);
    Crd { schema, rules }
}

/// Fill absent properties that have a schema default, as the API server does before validating.
fn apply_defaults(schema: &Value, obj: &mut Value) {
    if let (Some(properties), Some(fields)) = (schema["properties"].as_object(), obj.as_object_mut()) {
        for (name, property) in properties {
            if !fields.contains_key(name) && property.get("default").is_some() {
                fields.insert(name.clone(), property["default"].clone());
            }
            if let Some(value) = fields.get_mut(name) {
                apply_defaults(property, value);
            }
        }
    }
    if let Some(items) = obj.as_array_mut() {
        items.iter_mut().for_each(|item| apply_defaults(&schema["items"], item));
    }
}

/// Problems the API server would report for `obj`: schema errors and failed CEL rules.
fn problems(kind: &str, obj: &Value) -> Vec<String> {
    let crd = crd(kind);
    let mut obj = obj.clone();
    apply_defaults(&crd.schema, &mut obj);
    let obj = &obj;
    let validator = jsonschema::validator_for(&crd.schema).expect("CRD schema compiles");
    let mut out: Vec<String> = validator.iter_errors(obj).map(|e| format!("{}: {e}", e.instance_path())).collect();
    // Transition rules (`oldSelf`) only run on updates; these checks are of creations.
    for rule in crd.rules.iter().filter(|r| !r.rule.contains("oldSelf")) {
        let program = cel::Program::compile(&rule.rule).unwrap_or_else(|e| panic!("rule {:?} does not parse: {e}", rule.rule));
        let mut found = Vec::new();
        values_at(obj, &rule.path, String::new(), &mut found);
        for (location, value) in found {
            let mut context = cel::Context::default();
            context.add_variable_from_value("self", cel::to_value(value).unwrap());
            // As on the API server, a rule that errors (e.g. reads an absent field) refuses the object.
            match program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => out.push(format!("{location}: {}", rule.message)),
                other => out.push(format!("{location}: error evaluating {:?}: {other:?}", rule.rule)),
            }
        }
    }
    out
}

fn samples() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        docs.extend(serde_saphyr::from_multiple::<Value>(&text).unwrap());
    }
    docs.into_iter().filter(|d| d["apiVersion"] == "cdp.dev/v1alpha1").collect()
}

fn sample(kind: &str, name: &str) -> Value {
    samples().into_iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap()
}

#[test]
fn every_rule_compiles_and_every_sample_is_valid() {
    let samples = samples();
    assert_eq!(samples.len(), 8, "platform, 3 sources, matching policy, 2 feeds, scaling policy");
    for doc in samples {
        let kind = doc["kind"].as_str().unwrap();
        assert_eq!(problems(kind, &doc), Vec::<String>::new(), "{kind} {}", doc["metadata"]["name"]);
    }
}

fn assert_refused(kind: &str, obj: &Value, expected: &str) {
    let found = problems(kind, obj);
    assert!(found.iter().any(|p| p.contains(expected)), "expected {expected:?} in {found:#?}");
}

#[test]
fn platform_ref_is_immutable() {
    let rule = crd("Source").rules.into_iter().find(|r| r.path == ["spec", "platformRef"]).expect("a transition rule");
    let program = cel::Program::compile(&rule.rule).unwrap();
    let eval = |old: Value, new: Value| {
        let mut context = cel::Context::default();
        context.add_variable_from_value("self", cel::to_value(new).unwrap());
        context.add_variable_from_value("oldSelf", cel::to_value(old).unwrap());
        program.execute(&context).unwrap()
    };
    assert_eq!(eval(json!({"name": "retail"}), json!({"name": "retail"})), cel::Value::Bool(true));
    assert_eq!(eval(json!({"name": "retail"}), json!({"name": "wholesale"})), cel::Value::Bool(false));
    assert!(rule.message.contains("platformRef is immutable"));
}

#[test]
fn replica_bounds_must_be_ordered() {
    let mut platform = sample("CustomerDataPlatform", "retail");
    platform["spec"]["workloads"]["matcher"] = json!({"minReplicas": 9, "maxReplicas": 3});
    assert_refused("CustomerDataPlatform", &platform, "spec.workloads.matcher: minReplicas must not exceed maxReplicas");
    let mut policy = sample("ScalingPolicy", "retail");
    policy["spec"]["workloads"]["feeds"]["minReplicas"] = json!(5);
    assert_refused("ScalingPolicy", &policy, "spec.workloads.feeds: minReplicas must not exceed maxReplicas");
}

#[test]
fn review_threshold_must_be_below_merge() {
    let mut policy = sample("MatchingPolicy", "retail");
    policy["spec"]["thresholds"] = json!({"merge": 0.8, "review": 0.9});
    assert_refused("MatchingPolicy", &policy, "spec.thresholds: thresholds.review must be below thresholds.merge");
    policy["spec"]["thresholds"] = json!({"merge": 1.5, "review": 0.9});
    assert_refused("MatchingPolicy", &policy, "/spec/thresholds/merge");
    policy["spec"]["thresholds"] = json!({"merge": 1.0, "review": 0.9});
    assert_refused("MatchingPolicy", &policy, "thresholds must lie strictly between 0 and 1");
    policy["spec"]["thresholds"] = json!({"merge": 0.9, "review": 0.5});
    policy["spec"]["priorMatchProbability"] = json!(0.0);
    assert_refused("MatchingPolicy", &policy, "/spec/priorMatchProbability");
}

#[test]
fn exactly_one_delivery_kind() {
    let mut source = sample("Source", "pos");
    source["spec"]["delivery"]["batch"] = json!({"format": "csv", "authSecretRef": {"name": "x", "key": "y"}});
    assert_refused("Source", &source, "spec.delivery: delivery: set exactly one of http, kafka or batch");
    source["spec"]["delivery"] = json!({});
    assert_refused("Source", &source, "delivery: set exactly one of http, kafka or batch");
    let mut feed = sample("Feed", "crm");
    feed["spec"]["destination"]["kafka"] = json!({"topic": "cdp", "bootstrapServersSecretRef": {"name": "k", "key": "b"}});
    assert_refused("Feed", &feed, "spec.destination: destination: set exactly one of webhook or kafka");
}

#[test]
fn webhooks_must_be_https_unless_explicitly_allowed() {
    let mut feed = sample("Feed", "crm");
    feed["spec"]["destination"]["webhook"]["url"] = json!("http://crm.apps.svc/hooks");
    assert_refused("Feed", &feed, "webhook.url must be https://");
    feed["spec"]["destination"]["webhook"]["allowInsecureHttp"] = json!(true);
    assert_eq!(problems("Feed", &feed), Vec::<String>::new());
    feed["spec"]["destination"]["webhook"]["url"] = json!("ftp://crm.apps.svc/hooks");
    assert_refused("Feed", &feed, "webhook.url must be https://");
    feed["spec"]["destination"]["webhook"]["url"] = json!("https://");
    feed["spec"]["destination"]["webhook"]["allowInsecureHttp"] = json!(false);
    assert_refused("Feed", &feed, "webhook.url must be https://");
}

#[test]
fn triggers_take_the_operands_their_operator_needs() {
    let mut feed = sample("Feed", "sms-gateway");
    feed["spec"]["triggers"][0] = json!({"field": "event.source", "op": "in"});
    assert_refused("Feed", &feed, "spec.triggers[0]: equals/notEquals/contains take value");
    feed["spec"]["triggers"][0] = json!({"field": "event.source", "op": "exists", "value": "x"});
    assert_refused("Feed", &feed, "spec.triggers[0]");
    feed["spec"]["triggers"][0] = json!({"field": "event.source", "op": "in", "values": ["ticketing", "pos"]});
    assert_eq!(problems("Feed", &feed), Vec::<String>::new());
    feed["spec"]["triggers"][0] = json!({"field": "customer.tier", "op": "exists"});
    assert_refused("Feed", &feed, "/spec/triggers/0/field");
}

#[test]
fn peak_windows_are_one_off_or_recurring_and_ordered() {
    let mut policy = sample("ScalingPolicy", "retail");
    policy["spec"]["peakWindows"][0]["end"] = json!("2026-12-11T17:00:00+01:00");
    assert_refused("ScalingPolicy", &policy, "spec.peakWindows[0]: start must be before end");
    let mut policy = sample("ScalingPolicy", "retail");
    policy["spec"]["peakWindows"][1]["start"] = json!("2026-12-11T17:00:00+01:00");
    assert_refused("ScalingPolicy", &policy, "spec.peakWindows[1]: start and end go together");
    assert_refused("ScalingPolicy", &policy, "spec.peakWindows[1]: set either start/end or schedule/durationMinutes");
    let mut policy = sample("ScalingPolicy", "retail");
    policy["spec"]["peakWindows"][1]["minReplicas"] = json!({});
    assert_refused("ScalingPolicy", &policy, "a peak window must raise at least one workload");
}

#[test]
fn schema_refuses_bad_types_enums_and_patterns() {
    let mut feed = sample("Feed", "crm");
    feed["spec"]["events"] = json!(["profile.deleted"]);
    assert_refused("Feed", &feed, "/spec/events/0");
    let mut source = sample("Source", "pos");
    source["spec"]["defaultPhoneRegion"] = json!("france");
    assert_refused("Source", &source, "/spec/defaultPhoneRegion");
    source["spec"]["mapping"][0]["to"] = json!("identifiers.");
    assert_refused("Source", &source, "/spec/mapping/0/to");
    let mut source = sample("Source", "pos");
    source["spec"].as_object_mut().unwrap().remove("platformRef");
    assert_refused("Source", &source, "\"platformRef\" is a required property");
    let mut platform = sample("CustomerDataPlatform", "retail");
    platform["spec"]["store"]["external"] = json!({"urlSecretRef": {"name": "pg", "key": "url"}});
    assert_refused("CustomerDataPlatform", &platform, "store: set inCluster or external, not both");
}

#[test]
fn length_limits_are_positive_and_within_the_hard_maximum() {
    let mut source = sample("Source", "pos");
    source["spec"]["validation"]["maxLength"] = json!({"givenName": 1, "attributes.homeStore": 10000});
    assert_eq!(problems("Source", &source), Vec::<String>::new());
    for refused in [json!(0), json!(10001), json!(-5), json!(2.5), json!("100")] {
        source["spec"]["validation"]["maxLength"] = json!({"givenName": refused});
        assert_refused("Source", &source, "/spec/validation/maxLength/givenName");
    }
    let too_many: serde_json::Map<String, Value> = (0..129).map(|i| (format!("attributes.a{i}"), json!(10))).collect();
    source["spec"]["validation"]["maxLength"] = Value::Object(too_many);
    assert_refused("Source", &source, "/spec/validation/maxLength");
}

/// The formats the API server knows (apiextensions' supported formats); any other one makes it
/// warn on every apply of the CRD.
const KUBERNETES_FORMATS: [&str; 24] = [
    "bsonobjectid", "uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid", "uuid3", "uuid4", "uuid5",
    "isbn", "isbn10", "isbn13", "creditcard", "ssn", "hexcolor", "rgbcolor", "byte", "password", "date",
    "date-time", "duration",
];
const NUMBER_FORMATS: [&str; 4] = ["int32", "int64", "float", "double"];

fn formats(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match schema {
        Value::Object(map) => {
            if let Some(format) = map.get("format").and_then(Value::as_str) {
                out.push((path.to_string(), format.to_string()));
            }
            for (key, value) in map {
                formats(value, &format!("{path}/{key}"), out);
            }
        }
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| formats(v, &format!("{path}/{i}"), out)),
        _ => {}
    }
}

#[test]
fn every_format_is_one_the_api_server_knows() {
    for crd in cdp_operator::crd::all() {
        let mut found = Vec::new();
        formats(&serde_json::to_value(&crd).unwrap(), "", &mut found);
        assert!(!found.is_empty(), "the CRDs carry formats: the check must see them");
        for (path, format) in found {
            assert!(
                KUBERNETES_FORMATS.contains(&format.as_str()) || NUMBER_FORMATS.contains(&format.as_str()),
                "{} {path}: format {format:?} is unknown to the API server",
                crd.metadata.name.as_deref().unwrap_or_default()
            );
        }
    }
}

#[test]
fn kafka_sources_name_a_client_key_with_its_certificate() {
    let mut source = sample("Source", "pos");
    let secret = |key: &str| json!({"name": "kafka", "key": key});
    source["spec"]["delivery"] = json!({"kafka": {"topic": "tills", "bootstrapServersSecretRef": secret("servers"),
        "tls": {"caSecretRef": secret("ca"), "certSecretRef": secret("crt")},
        "sasl": {"mechanism": "SCRAM-SHA-256", "usernameSecretRef": secret("u"), "passwordSecretRef": secret("p")}}});
    assert_refused("Source", &source, "tls: set both certSecretRef and keySecretRef, or neither");
    source["spec"]["delivery"]["kafka"]["tls"]["keySecretRef"] = secret("key");
    assert_eq!(problems("Source", &source), Vec::<String>::new());
    source["spec"]["delivery"]["kafka"]["sasl"]["mechanism"] = json!("GSSAPI");
    assert!(!problems("Source", &source).is_empty(), "only PLAIN and SCRAM are offered");
    source["spec"]["delivery"]["kafka"]["sasl"]["mechanism"] = json!("PLAIN");
    source["spec"]["delivery"]["kafka"]["maxInFlight"] = json!(0);
    assert!(!problems("Source", &source).is_empty(), "at least one message in flight");
}

fn address_enricher() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/enrichment/address-enricher.yaml");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    docs.into_iter().find(|d| d["kind"] == "Enricher").unwrap()
}

#[test]
fn enrichers_call_https_unless_allowed_and_pre_match_names_its_sources() {
    let mut enricher = address_enricher();
    assert_eq!(problems("Enricher", &enricher), Vec::<String>::new());
    enricher["spec"]["endpoint"]["allowInsecureHttp"] = false.into();
    assert_refused("Enricher", &enricher, "endpoint.url must be https://");
    enricher["spec"]["endpoint"]["url"] = "https://address.example.com/v1/standardise".into();
    assert_eq!(problems("Enricher", &enricher), Vec::<String>::new());
    enricher["spec"].as_object_mut().unwrap().remove("sources");
    assert_refused("Enricher", &enricher, "a PreMatch enricher names the Sources");
    enricher["spec"]["stage"] = "ProfileChange".into();
    assert_eq!(problems("Enricher", &enricher), Vec::<String>::new(), "a ProfileChange enricher may take any profile");
    enricher["spec"]["stage"] = "Sometimes".into();
    assert_refused("Enricher", &enricher, "/spec/stage");
    enricher["spec"]["stage"] = "PreMatch".into();
    enricher["spec"]["sources"] = serde_json::json!(["webshop"]);
    enricher["spec"]["triggers"] = serde_json::json!([{"field": "profile.country", "op": "equals", "value": "FR"}]);
    assert_refused("Enricher", &enricher, "a PreMatch enricher selects by sources");
    enricher["spec"]["stage"] = "ProfileChange".into();
    assert_eq!(problems("Enricher", &enricher), Vec::<String>::new());
    enricher["spec"]["write"] = serde_json::json!([]);
    assert_refused("Enricher", &enricher, "/spec/write");
}
