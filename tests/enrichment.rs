//! Enrichers end to end, on SQLite and PostgreSQL: records sent to a real intake server,
//! resolved by a running matcher, enriched by the reference address-standardisation service
//! (`cdp enricher-demo`'s router) on a real socket, read back from the real API. An address
//! standardised before matching joins two records that otherwise stay apart; a slow enricher
//! delays only its records, up to their bound, and never intake; a failing one is retried,
//! dead-lettered, and its records are matched all the same; a cache hit makes no call; a
//! withdrawn consent makes none either; an erasure takes the enriched values and the cache.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdp_operator::crd::SecretKeyRef;
use cdp_operator::crd::matching::{BlockingKey, DeterministicRule, KeyPart, KeyTransform};
use cdp_operator::crd::source::FieldMapping;
use cdp_operator::enrich::demo::{self, Behaviour, Request};
use cdp_operator::enrich::{EnrichContext, WorkerOptions as EnrichOptions};
use cdp_operator::matcher::{Resolver, Worker, WorkerOptions};
use cdp_operator::pipeline::{NamedEnricher, PipelineConfig};
use cdp_operator::runtime::ops::{self, Metrics, Secrets};
use cdp_operator::store::Store;
use common::{TestStore, eventually};
use serde_json::{Value, json};

const SIGNING_KEY: &str = "enrich-signing-0123";
const BEARER: &str = "enrich-bearer-4567";

/// The reference service on an ephemeral port, with every request it got.
struct Service {
    url: String,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Service {
    async fn start(behaviour: Behaviour) -> Service {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = demo::router(SIGNING_KEY, behaviour, tx);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let got: Arc<Mutex<Vec<Request>>> = Arc::default();
        let sink = got.clone();
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                sink.lock().unwrap().push(request);
            }
        });
        Service { url, got }
    }

    fn requests(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }
}

/// The address enricher at `stage`, with `extra` YAML lines.
fn address_enricher(service: &Service, stage: &str, extra: &str) -> NamedEnricher {
    let yaml = format!(
        "platformRef: {{name: bench}}
stage: {stage}
attributes: [street, postcode, city]
endpoint:
  url: '{}/v1/standardise'
  signingSecretRef: {{name: enrich, key: signing}}
  authSecretRef: {{name: enrich, key: token}}
  allowInsecureHttp: true
  timeoutSeconds: 5
write:
  - {{from: address.street, to: street}}
  - {{from: address.postcode, to: postcode}}
  - {{from: address.city, to: city}}
  - {{from: quality, to: attributes.addressQuality}}
trustRank: 90
retry: {{maxAttempts: 3, initialBackoffSeconds: 1, maxBackoffSeconds: 1}}
{extra}",
        service.url
    );
    NamedEnricher { name: "address".into(), spec: serde_saphyr::from_str(&yaml).unwrap() }
}

/// The test platform, where two records of one person join when they share a family name and
/// a street written the same way (and only then): what standardising addresses changes.
fn config(enrichers: Vec<NamedEnricher>) -> PipelineConfig {
    let mut config = common::config();
    for s in &mut config.sources {
        s.spec.mapping.push(FieldMapping { from: "consents.profiling".into(), to: "consents.profiling".into() });
    }
    let model = &mut config.matching.model;
    let part = |attribute: &str| KeyPart { attribute: attribute.into(), transform: KeyTransform::Exact };
    model.blocking = vec![BlockingKey { name: "family-street".into(), parts: vec![part("familyName"), part("street")] }];
    model.rules =
        vec![DeterministicRule { name: "same-address".into(), all_equal: vec!["familyName".into(), "street".into(), "postcode".into()] }];
    config.enrichers = enrichers;
    config
}

fn secrets() -> Secrets {
    let Secrets::Values(mut values) = common::secrets() else { unreachable!("the test secrets are values") };
    values.insert(SecretKeyRef { name: "enrich".into(), key: "signing".into() }, SIGNING_KEY.into());
    values.insert(SecretKeyRef { name: "enrich".into(), key: "token".into() }, BEARER.into());
    Secrets::Values(values)
}

/// Intake, API, a running matcher and the enrichers of `config`, over one store.
struct Platform {
    http: reqwest::Client,
    ingest: String,
    api: String,
    stop: ops::ShutdownTrigger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Platform {
    async fn start(store: &Store, config: &PipelineConfig) -> Platform {
        let metrics = Metrics::new();
        let (stop, shutdown) = ops::shutdown_channel();
        let resolver = Arc::new(Resolver::new(config).unwrap());
        let ingest = cdp_operator::ingest::IngestState::new(config, &secrets(), store.clone(), metrics.clone()).unwrap();
        let api = cdp_operator::api::ApiState::new(config, store.clone(), metrics.clone(), resolver.clone(), common::tokens());
        let ingest_listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let api_listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ingest_url = format!("http://{}", ingest_listener.local_addr().unwrap());
        let api_url = format!("http://{}", api_listener.local_addr().unwrap());
        let router = cdp_operator::ingest::router(ingest);
        let mut tasks =
            vec![tokio::spawn(ops::serve_with_ops(ingest_listener, router, store.clone(), metrics.clone(), shutdown.clone()))];
        let router = cdp_operator::api::router(api);
        tasks.push(tokio::spawn(ops::serve_with_ops(api_listener, router, store.clone(), metrics.clone(), shutdown.clone())));
        let options = WorkerOptions { idle_poll: Duration::from_millis(100), ..WorkerOptions::default() };
        let matcher = Worker::new(store.clone(), resolver, metrics.clone(), "m".into(), options);
        tasks.push(tokio::spawn(matcher.run(shutdown.clone())));
        let fast = EnrichOptions { idle_poll: Duration::from_millis(50), status_interval: Duration::from_millis(100), ..EnrichOptions::default() };
        let enrich = EnrichContext::new(store.clone(), &metrics, fast);
        tasks.extend(enrich.spawn(enrich.workers(config, &secrets()).unwrap(), &shutdown));
        Platform { http: reqwest::Client::new(), ingest: ingest_url, api: api_url, stop, tasks }
    }

    async fn stop(self) {
        self.stop.trigger();
        for task in self.tasks {
            task.await.unwrap();
        }
    }

    /// Send one record to a source's intake; its status and how long the answer took.
    async fn send(&self, source: &str, record: Value) -> (u16, Duration) {
        let started = Instant::now();
        let url = format!("{}/v1/sources/{source}/records", self.ingest);
        let response = self.http.post(url).bearer_auth(common::INTAKE_KEY).json(&record).send().await.unwrap();
        (response.status().as_u16(), started.elapsed())
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.api)).bearer_auth(common::READ_TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }
}


/// Wait until `n` source records are stored (the enrichers' own included).
async fn records(store: &Store, n: i64) {
    eventually(&format!("{n} records"), || async { (store.counts().await.unwrap().records >= n).then_some(()) }).await;
}

fn person(id: &str, given: &str, family: &str, street: &str, postcode: &str, extra: &[(&str, &str)]) -> Value {
    let mut record = json!({"id": id, "givenName": given, "familyName": family, "street": street, "postcode": postcode, "city": "Paris"});
    for (k, v) in extra {
        // a dotted attribute is a nested field of the payload
        match k.split_once('.') {
            Some((outer, inner)) => record[outer][inner] = json!(v),
            None => record[*k] = json!(v),
        }
    }
    record
}

/// The profile holding the record `source`/`id` once `attribute` of its golden record comes
/// from the address enricher.
async fn enriched_profile(platform: &Platform, store: &Store, source: &str, id: &str, attribute: &str) -> Value {
    eventually(&format!("{attribute} of {source}/{id} from the enricher"), || async {
        let profile = profile_of(platform, store, source, id).await?;
        (profile["golden"]["attributes"][attribute]["source"] == "enricher/address").then_some(profile)
    })
    .await
}

/// The profile holding the record `source`/`id`, as the API shows it, once it is stored.
async fn profile_of(platform: &Platform, store: &Store, source: &str, id: &str) -> Option<Value> {
    let record = store.record_by_source_id(source, id).await.unwrap()?;
    Some(platform.get(&format!("/v1/profiles/p{}", record.profile_id)).await)
}

// ---- cases ----

async fn an_address_standardised_before_matching_joins_two_records(t: TestStore) {
    // without the enricher, two writings of one address keep one person in two profiles
    let plain = Platform::start(&t.store, &config(vec![])).await;
    plain.send("pos", person("g1", "Grace", "Hopper", "3 r. des Écoles", "75005", &[("email", "grace@example.com")])).await;
    plain.send("webshop", person("g2", "Grace", "Hopper", "3, RUE DES ECOLES", "75 005", &[("phone", "+33698765432")])).await;
    records(&t.store, 2).await;
    plain.stop().await;
    let apart = t.store.clusters().await.unwrap();
    assert_eq!(apart.len(), 2, "no enricher, two profiles: {apart:?}");

    let service = Service::start(Behaviour::default()).await;
    let config = config(vec![address_enricher(&service, "PreMatch", "sources: [pos, webshop]\nmaxWaitSeconds: 30\n")]);
    let platform = Platform::start(&t.store, &config).await;
    let (status, _) = platform.send("pos", person("a1", "Ada", "Lovelace", "12 r. de la Paix", "75002", &[("email", "ada@example.com")])).await;
    assert_eq!(status, 202);
    platform.send("webshop", person("a2", "Ada", "Lovelace", "12, RUE DE LA PAIX", "75 002", &[("phone", "+33612345678")])).await;
    records(&t.store, 4).await;
    let a1 = t.store.record_by_source_id("pos", "a1").await.unwrap().unwrap();
    let a2 = t.store.record_by_source_id("webshop", "a2").await.unwrap().unwrap();
    assert_eq!(a1.profile_id, a2.profile_id, "standardised, the two records are one person");
    assert_eq!(a1.attributes["street"], "12 Rue de la Paix");
    assert_eq!(a2.attributes["postcode"], "75002");

    // only the allow-listed attributes left, signed (the service checks) and authenticated
    let sent = service.requests();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for request in &sent {
        assert_eq!(request.values.keys().collect::<Vec<_>>(), ["city", "postcode", "street"]);
        assert_eq!(request.authorization.as_deref(), Some(format!("Bearer {BEARER}").as_str()));
    }
    // provenance: which enricher wrote what, by which call, in the explanation and the export
    let explanation = platform.get(&format!("/v1/profiles/p{}/explanation", a1.profile_id)).await;
    for link in explanation["links"].as_array().unwrap() {
        let enriched = &link["enrichedBeforeMatching"][0];
        assert_eq!(enriched["enricher"], "address", "{link}");
        assert!(enriched["attributes"].as_array().unwrap().contains(&json!("street")));
        assert!(sent.iter().any(|r| enriched["callId"] == r.id), "the call id is the request's: {enriched}");
    }
    let export = platform.get(&format!("/v1/profiles/p{}/export", a1.profile_id)).await;
    assert_eq!(export["enrichments"].as_array().unwrap().len(), 2, "{}", export["enrichments"]);
    platform.stop().await;
}

async fn a_slow_enricher_delays_only_its_records_and_never_intake(t: TestStore) {
    let service = Service::start(Behaviour { delay: Duration::from_secs(4), fail_status: None }).await;
    let config = config(vec![address_enricher(&service, "PreMatch", "sources: [pos]\nmaxWaitSeconds: 1\n")]);
    let platform = Platform::start(&t.store, &config).await;
    let (status, _) = platform.send("pos", person("s1", "Ada", "Lovelace", "12 r. de la Paix", "75002", &[("email", "ada@example.com")])).await;
    assert_eq!(status, 202);
    // intake answered while the enricher had not: the record is queued, unenriched
    assert!(t.store.record_by_source_id("pos", "s1").await.unwrap().is_none());
    // a record of a Source the enricher does not name is matched meanwhile
    platform.send("ticketing", person("t1", "Grace", "Hopper", "3 rue des Écoles", "75005", &[("email", "grace@example.com")])).await;
    records(&t.store, 1).await;
    assert!(t.store.record_by_source_id("ticketing", "t1").await.unwrap().is_some());
    assert!(t.store.record_by_source_id("pos", "s1").await.unwrap().is_none(), "the held record still waits for its enricher");

    // after its bound, matched as it was; enriched later, in its profile, with provenance
    records(&t.store, 2).await;
    let s1 = t.store.record_by_source_id("pos", "s1").await.unwrap().unwrap();
    assert_eq!(s1.attributes["street"], "12 r. de la Paix", "matched as sent");
    let golden = enriched_profile(&platform, &t.store, "pos", "s1", "street").await;
    let street = &golden["golden"]["attributes"]["street"];
    assert_eq!(street["display"], "12 Rue de la Paix");
    assert!(street["sourceRecordId"].as_str().unwrap().starts_with("address-"), "the call is the value's provenance: {street}");
    let counts = t.store.enricher_counts("address").await.unwrap();
    assert_eq!(counts.matched_unenriched, 1, "the status counts the record matched before its enrichment");
    platform.stop().await;
}

async fn a_failing_enricher_is_retried_then_dead_lettered_and_records_are_still_matched(t: TestStore) {
    let service = Service::start(Behaviour { delay: Duration::ZERO, fail_status: Some(503) }).await;
    let config = config(vec![address_enricher(&service, "PreMatch", "sources: [pos]\nmaxWaitSeconds: 30\n")]);
    let platform = Platform::start(&t.store, &config).await;
    let (status, _) = platform.send("pos", person("f1", "Ada", "Lovelace", "12 r. de la Paix", "75002", &[("email", "ada@example.com")])).await;
    assert_eq!(status, 202);
    let dead = eventually("a dead letter", || async {
        let dead = t.store.enrich_dead_letters("address", 10).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!((dead.len(), dead[0].attempts), (1, 3), "{dead:?}");
    assert_eq!(dead[0].last_error.as_deref(), Some("endpoint answered 503"));
    assert_eq!(service.requests().len(), 3, "each attempt reached the service");
    // given up, the record waits no longer than that: matched as sent, long before its bound
    records(&t.store, 1).await;
    let f1 = t.store.record_by_source_id("pos", "f1").await.unwrap().unwrap();
    assert_eq!(f1.attributes["street"], "12 r. de la Paix");
    assert_eq!(t.store.enricher_counts("address").await.unwrap().dead_letters, 1);

    // listed by the API; replayed, it gets fresh attempts (and is matched already: its answer
    // would go to its profile)
    let listed = platform.get("/v1/enrichers/address/dead-letters").await;
    assert_eq!(listed["deadLetters"][0]["target"], dead[0].target, "{listed}");
    let replay = |path: String| platform.http.post(format!("{}{path}", platform.api)).bearer_auth(common::WRITE_TOKEN).send();
    let target = dead[0].target;
    assert_eq!(replay(format!("/v1/enrichers/address/dead-letters/record/{target}/replay")).await.unwrap().status(), 202);
    eventually("the replayed attempts", || async { (service.requests().len() > 3).then_some(()) }).await;
    assert_eq!(replay("/v1/enrichers/geocode/dead-letters/record/1/replay".into()).await.unwrap().status(), 404);
    platform.stop().await;
}

async fn a_cached_answer_makes_no_second_call(t: TestStore) {
    let service = Service::start(Behaviour::default()).await;
    let config = config(vec![address_enricher(&service, "ProfileChange", "")]);
    let platform = Platform::start(&t.store, &config).await;
    // two people at one address: one lookup
    platform.send("pos", person("c1", "Ada", "Lovelace", "12 r. de la Paix", "75002", &[("email", "ada@example.com")])).await;
    platform.send("pos", person("c2", "Grace", "Hopper", "12 r. de la Paix", "75002", &[("email", "grace@example.com")])).await;
    for id in ["c1", "c2"] {
        let profile = enriched_profile(&platform, &t.store, "pos", id, "attributes.addressQuality").await;
        // the enricher's trust rank wins survivorship over the till's
        assert_eq!(profile["golden"]["attributes"]["street"]["display"], "12 Rue de la Paix", "{profile}");
    }
    assert_eq!(service.requests().len(), 1, "the second person's address came from the cache");
    // whichever went first was called, the other answered from the cache, and says so
    let mut cached = Vec::new();
    for id in ["c1", "c2"] {
        let profile = t.store.record_by_source_id("pos", id).await.unwrap().unwrap().profile_id;
        let explanation = platform.get(&format!("/v1/profiles/p{profile}/explanation")).await;
        let links = explanation["links"].as_array().unwrap();
        let enriched = links.iter().find(|l| l["source"] == "enricher/address").unwrap();
        cached.push(enriched["evidence"]["cached"].as_bool().unwrap());
    }
    cached.sort();
    assert_eq!(cached, [false, true]);
    platform.stop().await;
}

async fn no_call_for_a_person_who_withdrew_the_consent(t: TestStore) {
    let service = Service::start(Behaviour::default()).await;
    let config = config(vec![address_enricher(&service, "ProfileChange", "requiredConsent: profiling\n")]);
    let platform = Platform::start(&t.store, &config).await;
    platform
        .send("pos", person("n1", "Grace", "Hopper", "3 r. des Écoles", "75005", &[("email", "grace@example.com"), ("consents.profiling", "false")]))
        .await;
    platform
        .send("pos", person("y1", "Ada", "Lovelace", "12 r. de la Paix", "75002", &[("email", "ada@example.com"), ("consents.profiling", "true")]))
        .await;
    enriched_profile(&platform, &t.store, "pos", "y1", "street").await;
    // every job done, and the withdrawn person's address never left
    eventually("no enrichment pending", || async { (t.store.enricher_counts("address").await.unwrap().pending == 0).then_some(()) }).await;
    let sent = service.requests();
    assert!(sent.iter().all(|r| r.values["street"] != "3 r. des Écoles"), "{sent:?}");
    let withheld = profile_of(&platform, &t.store, "pos", "n1").await.expect("matched");
    assert_eq!(withheld["golden"]["attributes"]["street"]["source"], "pos");
    platform.stop().await;
}

async fn erasure_removes_enriched_values_and_their_cache_entries(t: TestStore) {
    let service = Service::start(Behaviour::default()).await;
    let config = config(vec![address_enricher(&service, "ProfileChange", "")]);
    let platform = Platform::start(&t.store, &config).await;
    platform.send("pos", person("e1", "Ada", "Lovelace", "12 r. de la Paix", "75002", &[("email", "ada@example.com")])).await;
    let profile = enriched_profile(&platform, &t.store, "pos", "e1", "street").await;
    let id = profile["id"].as_str().unwrap().to_string();
    // the export carries the enriched values with their provenance
    let export = platform.get(&format!("/v1/profiles/{id}/export")).await;
    let enriched: Vec<&Value> = export["records"].as_array().unwrap().iter().filter(|r| r["source"] == "enricher/address").collect();
    assert_eq!(enriched.len(), 1, "{}", export["records"]);
    assert_eq!(enriched[0]["attributes"]["street"], "12 Rue de la Paix");
    assert!(t.store.cache_entries().await.unwrap() > 0);

    let response = platform
        .http
        .post(format!("{}/v1/erasures", platform.api))
        .bearer_auth(common::ERASE_TOKEN)
        .json(&json!({"profileId": id, "reason": "subject-request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let erased: Value = response.json().await.unwrap();
    assert!(erased["removed"]["enrichmentCacheEntries"].as_u64().unwrap() >= 1, "{erased}");
    assert_eq!(t.store.cache_entries().await.unwrap(), 0, "the person's cached answers are gone");
    let left: BTreeMap<String, i64> =
        t.store.clusters().await.unwrap().into_iter().flatten().map(|(source, _)| (source, 1)).collect();
    assert!(!left.contains_key("enricher/address"), "no enriched value is left: {left:?}");
    platform.stop().await;
}

async fn an_unmerge_leaves_no_profile_of_enriched_values_alone(t: TestStore) {
    let service = Service::start(Behaviour::default()).await;
    let config = config(vec![address_enricher(&service, "ProfileChange", "")]);
    let platform = Platform::start(&t.store, &config).await;
    platform.send("pos", person("u1", "Ada", "Lovelace", "12 rue de la Paix", "75002", &[("email", "ada@example.com")])).await;
    platform.send("webshop", person("u2", "Ada", "Lovelace", "12 rue de la Paix", "75002", &[("phone", "+33612345678")])).await;
    records(&t.store, 2).await;
    let profile = enriched_profile(&platform, &t.store, "pos", "u1", "street").await;
    let u2 = t.store.record_by_source_id("webshop", "u2").await.unwrap().unwrap();
    assert_eq!(profile["id"], format!("p{}", u2.profile_id), "one person");
    let response = platform
        .http
        .post(format!("{}/v1/profiles/{}/unmerge", platform.api, profile["id"].as_str().unwrap()))
        .bearer_auth(common::WRITE_TOKEN)
        .json(&json!({"records": [u2.id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    // both profiles enriched in the end, and none holds enriched values alone
    enriched_profile(&platform, &t.store, "webshop", "u2", "street").await;
    enriched_profile(&platform, &t.store, "pos", "u1", "street").await;
    for cluster in t.store.clusters().await.unwrap() {
        assert!(cluster.iter().any(|(source, _)| !source.starts_with("enricher/")), "{cluster:?}");
    }
    platform.stop().await;
}

async fn triggers_select_the_profile_changes_enriched(t: TestStore) {
    let service = Service::start(Behaviour::default()).await;
    let triggers = "triggers:\n- {field: profile.city, op: equals, value: lyon}\n- {field: event.type, op: in, values: [profile.created, profile.updated]}\n";
    let config = config(vec![address_enricher(&service, "ProfileChange", triggers)]);
    let platform = Platform::start(&t.store, &config).await;
    let mut lyon = person("l1", "Ada", "Lovelace", "3 pl. Bellecour", "69002", &[("email", "ada@example.com")]);
    lyon["city"] = json!("Lyon");
    platform.send("pos", person("p1", "Grace", "Hopper", "3 r. des Écoles", "75005", &[("email", "grace@example.com")])).await;
    platform.send("pos", lyon).await;
    enriched_profile(&platform, &t.store, "pos", "l1", "street").await;
    eventually("no enrichment pending", || async { (t.store.enricher_counts("address").await.unwrap().pending == 0).then_some(()) }).await;
    let sent = service.requests();
    assert!(sent.iter().all(|r| r.values["postcode"] == "69002"), "only the profile in Lyon: {sent:?}");
    platform.stop().await;
}

on_both_stores!(
    triggers_select_the_profile_changes_enriched,
    an_unmerge_leaves_no_profile_of_enriched_values_alone,
    an_address_standardised_before_matching_joins_two_records,
    a_slow_enricher_delays_only_its_records_and_never_intake,
    a_failing_enricher_is_retried_then_dead_lettered_and_records_are_still_matched,
    a_cached_answer_makes_no_second_call,
    no_call_for_a_person_who_withdrew_the_consent,
    erasure_removes_enriched_values_and_their_cache_entries,
);
