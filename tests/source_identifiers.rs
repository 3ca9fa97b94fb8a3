//! A source's own customer id links that customer's records, with the samples' Sources and
//! MatchingPolicy, on SQLite and PostgreSQL.

mod common;

use std::path::Path;
use std::sync::Arc;

use cdp_operator::identity::CanonicalRecord;
use cdp_operator::matcher::{Resolver, Worker, WorkerOptions};
use cdp_operator::pipeline::{self, PipelineConfig};
use cdp_operator::store::{Store, now_ms};
use common::TestStore;
use serde_json::{Value, json};

on_both_stores!(
    a_customer_s_update_events_join_their_profile,
    a_never_merge_keeps_records_of_one_customer_id_apart,
    a_customer_with_more_records_than_a_block_holds_is_still_found,
);

/// The samples' platform: the retailer's Sources and MatchingPolicy as the operator compiles
/// them. The webshop maps `account.id` to `identifiers.webshopId`, which the policy neither
/// blocks on nor compares.
fn samples() -> PipelineConfig {
    let manifests = pipeline::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples")).unwrap();
    let platform = &manifests.platforms[0];
    let compiled = pipeline::compile(platform, &manifests.members_of(platform), cdp_operator::identity::default_model());
    let policy = compiled.config.matching.policy.as_ref().expect("the samples' MatchingPolicy is in force");
    assert_eq!(policy, "retail");
    let webshop = compiled.config.source("webshop").unwrap();
    assert!(webshop.spec.mapping.iter().any(|m| m.from == "account.id" && m.to == "identifiers.webshopId"));
    let model = &compiled.config.matching.model;
    let webshop_id = |a: &str| a == "identifiers.webshopId";
    assert!(!model.blocking.iter().any(|k| k.parts.iter().any(|p| webshop_id(&p.attribute))), "the policy blocks on it");
    assert!(!model.comparisons.iter().any(|c| webshop_id(&c.attribute)), "the policy compares it");
    compiled.config
}

/// A webshop event as the web shop sends it, mapped by the sample Source.
fn webshop(config: &PipelineConfig, payload: Value) -> CanonicalRecord {
    let source = config.source("webshop").unwrap();
    let flags = cdp_operator::ingest::normalise_flags(config);
    cdp_operator::ingest::mapping::map_record(source, flags, &payload, now_ms()).unwrap().record
}

async fn drain(store: &Store, config: &PipelineConfig) {
    let resolver = Arc::new(Resolver::new(config).unwrap());
    let metrics = cdp_operator::runtime::ops::Metrics::new();
    Worker::new(store.clone(), resolver, metrics, "w".into(), WorkerOptions::default()).drain().await.unwrap();
}

async fn profile_of(store: &Store, id: &str) -> i64 {
    store.record_by_source_id("webshop", id).await.unwrap().unwrap().profile_id
}

/// A sign-up that agrees to texts, then two ordinary update events of the same account: a
/// withdrawal of that consent, and a new address. They carry the account id and the email
/// only, which alone would not reach the merge threshold.
async fn a_customer_s_update_events_join_their_profile(t: TestStore) {
    let config = samples();
    let signup = json!({"event_id": "e1", "occurred_at": "2026-01-05T10:00:00Z", "marketing": {"sms_optin": "true"},
        "account": {"id": "CN1", "email": "ada@example.com", "given_name": "Ada", "family_name": "Lovelace", "mobile": "+33 6 12 34 56 78"}});
    t.store.enqueue(&[webshop(&config, signup)]).await.unwrap();
    drain(&t.store, &config).await;
    let updates = [
        json!({"event_id": "e2", "occurred_at": "2026-01-06T10:00:00Z", "account": {"id": "CN1", "email": "ada@example.com"},
            "marketing": {"sms_optin": "false"}}),
        json!({"event_id": "e3", "occurred_at": "2026-01-07T10:00:00Z", "account": {"id": "CN1", "email": "ada@example.com"},
            "address": {"city": "Paris"}}),
    ];
    t.store.enqueue(&updates.map(|u| webshop(&config, u))).await.unwrap();
    drain(&t.store, &config).await;

    let profile = profile_of(&t.store, "e1").await;
    assert_eq!((profile_of(&t.store, "e2").await, profile_of(&t.store, "e3").await), (profile, profile));
    let golden = t.store.profile(profile).await.unwrap().unwrap().golden.unwrap();
    assert_eq!(golden["consents"]["sms"]["state"], "withdrawn", "the newest statement wins: {golden}");
    assert_eq!(golden["attributes"]["city"]["display"], "Paris");
    let update = t.store.record_by_source_id("webshop", "e2").await.unwrap().unwrap();
    assert_eq!(update.evidence["decision"], "linked", "{}", update.evidence);
    assert_eq!(update.evidence["links"][0]["pair"]["rule"], "same-source-identifier:identifiers.webshopId");
}

/// Two accounts sharing an id by mistake, with different birth dates: the policy's
/// never-merge on the birth date keeps them apart.
async fn a_never_merge_keeps_records_of_one_customer_id_apart(t: TestStore) {
    let config = samples();
    let account = |event: &str, born: &str| {
        json!({"event_id": event, "account": {"id": "CN2", "email": "shared@example.com", "birth_date": born}})
    };
    t.store.enqueue(&[webshop(&config, account("e1", "1990-01-01"))]).await.unwrap();
    drain(&t.store, &config).await;
    t.store.enqueue(&[webshop(&config, account("e2", "1975-06-30"))]).await.unwrap();
    drain(&t.store, &config).await;
    assert_ne!(profile_of(&t.store, "e1").await, profile_of(&t.store, "e2").await);
    let second = t.store.record_by_source_id("webshop", "e2").await.unwrap().unwrap();
    assert_eq!(second.evidence["candidates"][0]["shortfall"], "neverMerge", "{}", second.evidence);
}

/// A customer of many years has more records under their id (and email) than the policy's
/// `maxBlockSize`: such a key is too common to find candidates by, but a source identifier
/// still finds its customer.
async fn a_customer_with_more_records_than_a_block_holds_is_still_found(t: TestStore) {
    let mut config = samples();
    config.matching.model.max_block_size = 2;
    for n in 0..5 {
        let event = json!({"event_id": format!("e{n}"), "account": {"id": "CN3", "email": "loyal@example.com"}});
        t.store.enqueue(&[webshop(&config, event)]).await.unwrap();
        drain(&t.store, &config).await;
    }
    let profile = profile_of(&t.store, "e0").await;
    for n in 1..5 {
        assert_eq!(profile_of(&t.store, &format!("e{n}")).await, profile, "record {n}");
    }
    assert_eq!(t.store.counts().await.unwrap().profiles, 1);
}
