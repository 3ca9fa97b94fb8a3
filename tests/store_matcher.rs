//! Store and matcher behaviour, identical on SQLite and PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cdp_operator::matcher::{Worker, lookup_key};
use cdp_operator::store::{Admission, Enqueued, FieldError, key_hash};
use common::{TestStore, record, resolver, worker};

on_both_stores!(
    redelivery_is_absorbed,
    claims_do_not_overlap_and_leases_expire,
    a_worker_leaves_records_another_worker_claimed,
    quarantine_lists_and_replays,
    one_person_across_sources_is_one_profile,
    a_record_linking_two_profiles_merges_them,
    one_batch_merges_profiles_it_created,
    unmerge_splits_and_keeps_records_apart,
    concurrent_workers_agree_with_one_worker,
    a_generic_key_finds_no_candidates,
    a_pair_of_profiles_has_one_open_review_item,
    a_value_over_its_limit_takes_no_part_in_matching,
    an_id_follows_its_records_out_of_an_unmerge,
    an_id_whose_records_were_split_up_leads_to_none_of_them_alone,
    ids_merged_away_before_the_upgrade_follow_their_records,
    events_name_profiles_as_the_api_does,
    a_person_s_records_are_resolved_in_arrival_order,
);

async fn redelivery_is_absorbed(t: TestStore) {
    let a = record("webshop", "e1", &[("email", "ann@example.com")]);
    let b = record("webshop", "e2", &[("email", "bob@example.com")]);
    let first = t.store.enqueue(&[a.clone(), b, a.clone()]).await.unwrap();
    assert!(!first[0].duplicate && !first[1].duplicate);
    assert!(first[2].duplicate);
    assert_eq!(first[2].intake_id, first[0].intake_id);
    let again = t.store.enqueue(&[a]).await.unwrap();
    assert_eq!(again[0].intake_id, first[0].intake_id);
    assert!(again[0].duplicate);
    let w = worker(&t.store, resolver(), "w");
    assert_eq!(w.drain().await.unwrap(), 2);
    // still absorbed once resolved
    let after = t.store.enqueue(&[record("webshop", "e1", &[("email", "ann@example.com")])]).await.unwrap();
    assert!(after[0].duplicate);
    assert_eq!(w.drain().await.unwrap(), 0);
    assert_eq!(t.store.counts().await.unwrap().records, 2);
}

async fn claims_do_not_overlap_and_leases_expire(t: TestStore) {
    let records: Vec<_> = (0..10).map(|i| record("pos", &format!("r{i}"), &[("email", "x@example.com")])).collect();
    t.store.enqueue(&records).await.unwrap();
    let lease = Duration::from_secs(60);
    let a = t.store.claim("w1", 6, lease).await.unwrap();
    let b = t.store.claim("w2", 6, lease).await.unwrap();
    assert_eq!((a.len(), b.len()), (6, 4));
    let ids: BTreeSet<i64> = a.iter().chain(&b).map(|i| i.id).collect();
    assert_eq!(ids.len(), 10);
    assert!(t.store.claim("w3", 10, lease).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(5)).await;
    // w1 and w2 "died": their claims are taken over once the lease has run out
    assert_eq!(t.store.claim("w3", 10, Duration::ZERO).await.unwrap().len(), 10);
}

async fn a_worker_leaves_records_another_worker_claimed(t: TestStore) {
    let records: Vec<_> = (0..10).map(|i| record("pos", &format!("r{i}"), &[("email", &format!("p{i}@example.com"))])).collect();
    t.store.enqueue(&records).await.unwrap();
    let taken = t.store.claim("busy", 4, Duration::from_secs(60)).await.unwrap();
    let w = worker(&t.store, resolver(), "w");
    assert_eq!(w.drain().await.unwrap(), 6);
    let counts = t.store.counts().await.unwrap();
    assert_eq!((counts.records, counts.queued), (6, 4));
    // the other worker's claim is intact: it resolves its own records
    let resolved = cdp_operator::matcher::resolve_batch(&t.store, &resolver(), &taken).await;
    assert!(resolved.iter().all(Result::is_ok));
    assert_eq!(t.store.counts().await.unwrap().records, 10);
}

async fn quarantine_lists_and_replays(t: TestStore) {
    let errors = vec![FieldError { field: "email".into(), code: "invalid".into(), message: "not an email".into() }];
    let q1 = t.store.quarantine("webshop", &serde_json::json!({"id": "1", "email": "nope"}), &errors).await.unwrap();
    let q2 = t.store.quarantine("pos", &serde_json::json!({"id": "2"}), &errors).await.unwrap();
    let all = t.store.quarantined(None, 0, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), vec![q1, q2]);
    assert_eq!(all[0].errors, errors);
    assert_eq!(t.store.quarantined(Some("pos"), 0, 10).await.unwrap().len(), 1);
    // still invalid: the new errors replace the old ones
    let still = vec![FieldError { field: "phone".into(), code: "invalid".into(), message: "bad".into() }];
    let store = &t.store;
    let entry = |id| async move { store.quarantine_entry(id).await.unwrap().unwrap() };
    assert_eq!(t.store.replay_quarantined(&entry(q2).await, Err(still.clone()), Default::default()).await.unwrap(), None);
    assert_eq!(t.store.quarantine_entry(q2).await.unwrap().unwrap().errors, still);
    // fixed: queued and gone from quarantine
    let fixed = record("webshop", "1", &[("email", "a@b.fr")]);
    let queued = t.store.replay_quarantined(&entry(q1).await, Ok(fixed), Default::default()).await.unwrap();
    assert!(matches!(queued, Some(Admission::Queued(Enqueued { duplicate: false, .. }))), "{queued:?}");
    assert!(t.store.quarantine_entry(q1).await.unwrap().is_none());
    assert_eq!(t.store.counts().await.unwrap().queued, 1);
}

async fn drain(t: &TestStore) -> Worker {
    let w = worker(&t.store, resolver(), "w");
    w.drain().await.unwrap();
    w
}

async fn one_person_across_sources_is_one_profile(t: TestStore) {
    t.store
        .enqueue(&[
            record("webshop", "w1", &[("givenName", "Hélène"), ("familyName", "Dupont"), ("email", "helene.dupont@example.com"), ("phone", "06 12 34 56 78")]),
            record("pos", "p1", &[("givenName", "HELENE"), ("familyName", "DUPONT"), ("phone", "+33612345678"), ("identifiers.loyaltyId", "L1")]),
            record("ticketing", "t1", &[("givenName", "Helene"), ("familyName", "Dupont"), ("email", "Helene.Dupont@example.com")]),
        ])
        .await
        .unwrap();
    drain(&t).await;
    let clusters = t.store.clusters().await.unwrap();
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    let first = t.store.record_by_source_id("webshop", "w1").await.unwrap().unwrap();
    let profile = t.store.profile(first.profile_id).await.unwrap().unwrap();
    assert_eq!(profile.record_count, 3);
    let golden = profile.golden.unwrap();
    assert_eq!(golden["attributes"]["email"]["value"], "helene.dupont@example.com");
    assert_eq!(golden["attributes"]["phone"]["value"], "+33612345678");
    // people see a value as a source sent it; matching uses the normalised one
    let given = &golden["attributes"]["givenName"];
    assert!(["Hélène", "HELENE", "Helene"].contains(&given["display"].as_str().unwrap()), "{given}");
    assert_ne!(given["display"], given["value"]);
    // every link is explained
    let records = t.store.records_of(profile.id).await.unwrap();
    assert_eq!(records[0].evidence["decision"], "new");
    assert_eq!(records[1].evidence["decision"], "linked");
    assert!(records[1].evidence["links"][0]["pair"]["comparisons"].is_array());
    // and every change is in the outbox, in order
    let kinds: Vec<String> = t.store.events_of(&[profile.id], 100).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds[..2], ["profile.created", "record.received"]);
    assert!(kinds.contains(&"profile.updated".to_string()));
    assert_eq!(kinds.iter().filter(|k| *k == "record.received").count(), 3);
    // lookups go through hashed identifiers
    let by_phone = t.store.profiles_with_keys(&[key_hash(&lookup_key("phone", "+33612345678"))], 0, 10).await.unwrap();
    assert_eq!(by_phone, vec![profile.id]);
}

/// A key value carried by more records than the policy's `maxBlockSize` (a shared office
/// mailbox here) no longer finds candidates; at the limit it still does.
async fn a_generic_key_finds_no_candidates(t: TestStore) {
    let staff = |mailbox: &str, names: &[&str]| -> Vec<_> {
        names.iter().map(|given| record("webshop", given, &[("givenName", given), ("familyName", "Lee"), ("email", mailbox)])).collect()
    };
    t.store.enqueue(&staff("a-office@example.com", &["Ann", "Bob", "Cyd"])).await.unwrap();
    t.store.enqueue(&staff("b-office@example.com", &["Zoe", "Yan", "Xia", "Wes"])).await.unwrap();
    drain(&t).await;
    assert_eq!(t.store.clusters().await.unwrap().len(), 7, "seven people share two mailboxes");
    let mut config = common::config();
    config.matching.model.max_block_size = 3;
    let w = worker(&t.store, std::sync::Arc::new(cdp_operator::matcher::Resolver::new(&config).unwrap()), "w");
    // a person again, with the mailbox and the given name only: found through the email key alone
    t.store
        .enqueue(&[
            record("pos", "ann", &[("givenName", "Ann"), ("email", "a-office@example.com")]),
            record("pos", "zoe", &[("givenName", "Zoe"), ("email", "b-office@example.com")]),
        ])
        .await
        .unwrap();
    w.drain().await.unwrap();
    let store = &t.store;
    let profile = |source: &'static str, id: &'static str| async move {
        store.record_by_source_id(source, id).await.unwrap().unwrap().profile_id
    };
    assert_eq!(profile("pos", "ann").await, profile("webshop", "Ann").await, "three records: a block");
    assert_ne!(profile("pos", "zoe").await, profile("webshop", "Zoe").await, "four records: generic");
    // what the blocks cost is measured: ann was compared with the three records of her
    // mailbox's block, zoe with none
    assert_eq!(w.metrics().compared_records.get(), 3);
}

/// Two records of one person that share nothing strong (one has the email, one the phone),
/// then a third carrying both.
async fn linked_pair(t: &TestStore) -> (i64, i64) {
    t.store
        .enqueue(&[
            record("webshop", "a", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com")]),
            record("pos", "b", &[("givenName", "Ann"), ("familyName", "Lee"), ("phone", "0611223344")]),
        ])
        .await
        .unwrap();
    let worker = drain(t).await;
    assert_eq!(worker.metrics().review_items.get(), 1, "cdp_review_items_total counts the item opened");
    let a = t.store.record_by_source_id("webshop", "a").await.unwrap().unwrap();
    let b = t.store.record_by_source_id("pos", "b").await.unwrap().unwrap();
    assert_ne!(a.profile_id, b.profile_id, "names alone must not merge");
    (a.profile_id, b.profile_id)
}

async fn a_record_linking_two_profiles_merges_them(t: TestStore) {
    merge_through_a_third_record(&t).await;
    // the keys of the absorbed profile's records lead to the survivor now
    let survivor = t.store.record_by_source_id("ticketing", "c").await.unwrap().unwrap().profile_id;
    let by_phone = t.store.profiles_with_keys(&[key_hash(&lookup_key("phone", "+33611223344"))], 0, 10).await.unwrap();
    assert_eq!(by_phone, vec![survivor]);
    t.store.enqueue(&[record("pos", "b2", &[("givenName", "Ann"), ("familyName", "Lee"), ("phone", "06 11 22 33 44")])]).await.unwrap();
    drain(&t).await;
    assert_eq!(t.store.record_by_source_id("pos", "b2").await.unwrap().unwrap().profile_id, survivor);
    assert_eq!(t.store.clusters().await.unwrap().len(), 1);
}

async fn merge_through_a_third_record(t: &TestStore) {
    let (pa, pb) = linked_pair(t).await;
    // the name-only pair is uncertain: a person looks at it
    assert_eq!(t.store.counts().await.unwrap().open_reviews, 1);
    t.store
        .enqueue(&[record("ticketing", "c", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com"), ("phone", "+33 6 11 22 33 44")])])
        .await
        .unwrap();
    drain(t).await;
    let survivor = pa.min(pb);
    let absorbed = pa.max(pb);
    assert_eq!(t.store.profile(absorbed).await.unwrap().unwrap().id, survivor, "an absorbed id resolves to the survivor");
    assert_eq!(t.store.profile_row(absorbed).await.unwrap().unwrap().merged_into, Some(survivor));
    assert_eq!(t.store.aliases(survivor).await.unwrap(), vec![absorbed]);
    assert_eq!(t.store.records_of(survivor).await.unwrap().len(), 3);
    let c = t.store.record_by_source_id("ticketing", "c").await.unwrap().unwrap();
    assert_eq!(c.evidence["links"].as_array().unwrap().len(), 2);
    let merged = t.store.events_of(&[survivor], 100).await.unwrap().into_iter().find(|e| e.kind == "profile.merged").unwrap();
    // ids in events are written as the API writes them
    assert_eq!(merged.payload["absorbed"], serde_json::json!([format!("p{absorbed}")]));
    assert_eq!(merged.payload["survivor"], format!("p{survivor}"));
    // the merge answered the name-only pair's question: its item is closed, not left open
    assert_eq!(t.store.counts().await.unwrap().open_reviews, 0);
    let closed = t.store.review_items("superseded", &Default::default(), 0, 100).await.unwrap();
    assert_eq!(closed.len(), 1);
    assert!(closed[0].decided_at_ms.is_some());
}

/// A person looks at a pair of profiles once: another record of the same profile that is
/// uncertain with the same other profile opens no second item.
async fn a_pair_of_profiles_has_one_open_review_item(t: TestStore) {
    let (pa, _) = linked_pair(&t).await;
    assert_eq!(t.store.counts().await.unwrap().open_reviews, 1);
    t.store.enqueue(&[record("webshop", "a2", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com")])]).await.unwrap();
    let worker = drain(&t).await;
    assert_eq!(t.store.record_by_source_id("webshop", "a2").await.unwrap().unwrap().profile_id, pa);
    assert_eq!(t.store.counts().await.unwrap().open_reviews, 1);
    assert_eq!(worker.metrics().review_items.get(), 0, "no item opened, none counted");
    // in one batch too: two more records of each side
    t.store
        .enqueue(&[
            record("webshop", "a3", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com")]),
            record("pos", "b3", &[("givenName", "Ann"), ("familyName", "Lee"), ("phone", "0611223344")]),
        ])
        .await
        .unwrap();
    drain(&t).await;
    assert_eq!(t.store.counts().await.unwrap().open_reviews, 1);
    assert_eq!(t.store.clusters().await.unwrap().len(), 2);
}

/// The same three records as above, resolved in one batch: the profiles the first two create
/// are merged before they ever reach the store, and the store holds the same final state.
async fn one_batch_merges_profiles_it_created(t: TestStore) {
    t.store
        .enqueue(&[
            record("webshop", "a", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com")]),
            record("pos", "b", &[("givenName", "Ann"), ("familyName", "Lee"), ("phone", "0611223344")]),
            record("ticketing", "c", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com"), ("phone", "+33 6 11 22 33 44")]),
        ])
        .await
        .unwrap();
    let w = worker(&t.store, resolver(), "w");
    assert!(w.next_claim() >= 3, "one claim holds all three");
    w.drain().await.unwrap();
    let a = t.store.record_by_source_id("webshop", "a").await.unwrap().unwrap();
    let survivor = t.store.profile(a.profile_id).await.unwrap().unwrap();
    assert_eq!(survivor.record_count, 3);
    assert_eq!(t.store.records_of(survivor.id).await.unwrap().len(), 3);
    let aliases = t.store.aliases(survivor.id).await.unwrap();
    assert_eq!(aliases.len(), 1, "the second profile became an alias");
    let alias = t.store.profile_row(aliases[0]).await.unwrap().unwrap();
    assert!(alias.golden.is_none() && alias.record_count == 0);
    assert_eq!(t.store.profile(aliases[0]).await.unwrap().unwrap().id, survivor.id);
    assert_eq!(survivor.golden.unwrap()["attributes"]["phone"]["value"], "+33611223344");
    let kinds: Vec<String> = t.store.events_of(&[survivor.id], 100).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"profile.merged".to_string()), "{kinds:?}");
    // the uncertain pair of the first two records was answered within the batch
    assert_eq!(t.store.counts().await.unwrap().open_reviews, 0);
    // the batch's profile ids do not collide with later ones
    t.store.enqueue(&[record("pos", "z", &[("givenName", "Zoe"), ("familyName", "Kim"), ("phone", "0699887766")])]).await.unwrap();
    drain(&t).await;
    let z = t.store.record_by_source_id("pos", "z").await.unwrap().unwrap();
    assert!(z.profile_id > aliases[0], "new profile {} after {}", z.profile_id, aliases[0]);
    assert_eq!(t.store.clusters().await.unwrap().len(), 2);
}

async fn unmerge_splits_and_keeps_records_apart(t: TestStore) {
    merge_through_a_third_record(&t).await;
    let b = t.store.record_by_source_id("pos", "b").await.unwrap().unwrap();
    let profile = b.profile_id;
    let r = resolver();
    let mut tx = t.store.begin().await.unwrap();
    let created = r.unmerge(&mut tx, profile, &[b.id], cdp_operator::store::now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(t.store.record(b.id).await.unwrap().unwrap().profile_id, created[0]);
    assert_eq!(t.store.records_of(profile).await.unwrap().len(), 2, "the email records stay together");
    // lookups follow the records: b's phone leads to its new profile, and so does c's phone
    let by_phone = t.store.profiles_with_keys(&[key_hash(&lookup_key("phone", "+33611223344"))], 0, 10).await.unwrap();
    let c = t.store.record_by_source_id("ticketing", "c").await.unwrap().unwrap();
    let mut expected = vec![created[0], c.profile_id];
    expected.sort_unstable();
    assert_eq!(by_phone, expected);
    // a new record carrying both identifiers does not glue them back
    t.store
        .enqueue(&[record("webshop", "d", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com"), ("phone", "0611223344")])])
        .await
        .unwrap();
    drain(&t).await;
    assert_ne!(t.store.record(b.id).await.unwrap().unwrap().profile_id, t.store.record_by_source_id("webshop", "d").await.unwrap().unwrap().profile_id);
    assert_eq!(t.store.clusters().await.unwrap().len(), 2);
    let forbidden = t.store.review_items("open", &Default::default(), 0, 100).await.unwrap().into_iter().filter(|r| r.reason == "forbidden").count();
    assert_eq!(forbidden, 1);
    // and merging them by hand is refused
    let mut tx = t.store.begin().await.unwrap();
    assert!(r.merge(&mut tx, profile, created[0], "test", 0).await.is_err());
}

/// People whose records only come together through a third record: the email record and
/// the phone record of a person resolve apart, the record with both merges them.
fn people(n: usize) -> Vec<Vec<cdp_operator::identity::CanonicalRecord>> {
    const GIVEN: &[&str] = &["Ann", "Bruno", "Chloé", "Denis", "Elsa", "Fabien", "Gaëlle", "Hugo", "Inès", "Jules"];
    const FAMILY: &[&str] = &["Martin", "Bernard", "Petit", "Durand", "Moreau", "Lefèvre", "Roux", "Fournier", "Girard", "Bonnet",
        "Lambert", "Fontaine", "Rousseau", "Mercier", "Blanc", "Guérin", "Boyer", "Garnier", "Chevalier", "Legrand"];
    (0..n)
        .map(|i| {
            let given = GIVEN[i % GIVEN.len()];
            let family = FAMILY[(i / GIVEN.len()) % FAMILY.len()];
            // far apart: no two people's emails, phones or birth dates are near-misses
            let email = format!("{:08x}@example.com", (i as u32).wrapping_mul(2_654_435_761));
            let phone = format!("0612{:06}", i * 3_797);
            let born = format!("{}-{:02}-{:02}", 1940 + i % 60, 1 + i % 12, 1 + (i * 7) % 28);
            let name = [("givenName", given), ("familyName", family)];
            let with = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
                name.iter().chain(extra).map(|(k, v)| (*k, v.to_string())).collect()
            };
            let as_record = |source: &str, id: String, attrs: Vec<(&str, String)>| {
                let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                record(source, &id, &attrs)
            };
            vec![
                as_record("webshop", format!("{i}-email"), with(&[("email", &email)])),
                as_record("pos", format!("{i}-phone"), with(&[("phone", &phone)])),
                as_record("ticketing", format!("{i}-both"), with(&[("email", &email), ("phone", &phone), ("birthDate", &born)])),
            ]
        })
        .collect()
}

fn truth(people: &[Vec<cdp_operator::identity::CanonicalRecord>]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = people
        .iter()
        .map(|p| {
            let mut c: Vec<(String, String)> = p.iter().map(|r| (r.source.clone(), r.source_record_id.clone())).collect();
            c.sort();
            c
        })
        .collect();
    out.sort();
    out
}

async fn concurrent_workers_agree_with_one_worker(t: TestStore) {
    let people = people(150);
    let expected = truth(&people);

    // one worker, records in arrival order
    let single = common::sqlite_store().await;
    single.store.enqueue(&people.concat()).await.unwrap();
    drain(&single).await;
    assert_people(&single.store.clusters().await.unwrap(), &expected);

    // adversarial order: the linking record first for some people, last for others, the
    // three records of a person next to each other so that different workers take them at once
    let mut order = Vec::new();
    for (i, p) in people.iter().enumerate() {
        match i % 3 {
            0 => order.extend([p[2].clone(), p[0].clone(), p[1].clone()]),
            1 => order.extend([p[0].clone(), p[1].clone(), p[2].clone()]),
            _ => order.extend([p[1].clone(), p[2].clone(), p[0].clone()]),
        }
    }
    t.store.enqueue(&order).await.unwrap();
    // several workers in this process, plus (the same database through separate pools, as
    // separate processes would) two more stores
    let mut stores = vec![t.store.clone()];
    for _ in 0..2 {
        stores.push(cdp_operator::store::Store::open(&t.url).await.unwrap());
    }
    let r = resolver();
    let mut tasks = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        for j in 0..3 {
            // batches of different sizes, so records of one person meet inside a batch too
            let resolver = if i == 0 { r.clone() } else { resolver() };
            let w = common::worker_claiming(store, resolver, &format!("w{i}-{j}"), [1, 3, 16][j]);
            tasks.push(tokio::spawn(async move { w.drain().await.unwrap() }));
        }
    }
    let mut resolved = 0;
    for task in tasks {
        resolved += task.await.unwrap();
    }
    assert_eq!(resolved, order.len(), "every record resolved exactly once");
    let retried = worker(&t.store, resolver(), "check").drain().await.unwrap();
    assert_eq!(retried, 0, "nothing failed and came back: {:?}", t.store.counts().await.unwrap());
    assert_people(&t.store.clusters().await.unwrap(), &expected);
    assert_eq!(t.store.counts().await.unwrap().profiles, people.len() as i64, "no duplicate profile");
}

fn assert_people(clusters: &[Vec<(String, String)>], expected: &[Vec<(String, String)>]) {
    let wrong: Vec<_> = clusters.iter().filter(|c| !expected.contains(c)).collect();
    assert!(wrong.is_empty(), "clusters that are not one person: {wrong:?}");
    assert_eq!(clusters.len(), expected.len());
}

/// SQLite: the write-ahead log is copied into the database file while the store runs (the
/// writers never checkpoint themselves), so what is written does not pile up in the log.
#[tokio::test]
async fn sqlite_writes_reach_the_database_file_while_open() {
    let t = common::sqlite_store().await;
    let path = t.url.trim_start_matches("sqlite:").to_string();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    let emails: Vec<String> = (0..2000).map(|i| format!("p{i}@example.com")).collect();
    let records: Vec<_> =
        emails.iter().enumerate().map(|(i, email)| record("pos", &format!("r{i}"), &[("email", email.as_str())])).collect();
    t.store.enqueue(&records).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size() <= before {
        assert!(std::time::Instant::now() < deadline, "the database file stayed at {before} bytes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The matcher keeps recently resolved records prepared in memory and reads the others back
/// from the store: where a candidate's records come from must not change any decision (a
/// record held in memory once carried the name counts of when it arrived, and weighed two
/// profiles' records against each other differently from one read back).
#[tokio::test]
async fn decisions_do_not_depend_on_the_prepared_cache() {
    use cdp_operator::bench::generate::{Generator, Population};
    // the crowded town: many namesakes, so candidates come from both the cache and the store
    let mut generator = Generator::new(7, 6000, 3.0, Population::Town);
    let records: Vec<_> = (0..6000).map(|_| generator.next_record().record).collect();
    let mut outcomes = Vec::new();
    for capacity in [1, 100_000] {
        let t = common::sqlite_store().await;
        t.store.enqueue(&records).await.unwrap();
        let resolver = cdp_operator::matcher::Resolver::with_prepared_cache(&common::config(), capacity).unwrap();
        let w = common::worker_claiming(&t.store, std::sync::Arc::new(resolver), "w", 256);
        w.drain().await.unwrap();
        let counts = t.store.counts().await.unwrap();
        outcomes.push((t.store.clusters().await.unwrap(), counts.profiles, counts.open_reviews));
    }
    assert!(outcomes[0] == outcomes[1], "profiles or review items differ with a cold cache");
}

/// A store filling faster than autovacuum's round keeps statistics that match its size, so
/// the planner keeps its index-driven plans (with none, it scanned the whole key table in
/// every merge). Autovacuum's own analyze comes a minute after the database appears at the
/// earliest; this asks for fresh statistics well before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_statistics_follow_a_growing_store() {
    let Some(t) = common::postgres_store().await else { return };
    let records: Vec<_> = (0..3000).map(|i| record("pos", &format!("r{i}"), &[("email", "x@example.com")])).collect();
    t.store.enqueue(&records).await.unwrap();
    let pool = sqlx::PgPool::connect(&t.url).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows: f32 = sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'intake' AND relnamespace = current_schema()::regnamespace")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows >= 3000.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "intake still planned as {rows} rows after 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// PostgreSQL: a batch looks up which profiles its keys reach once, after locking the keys,
/// and then locks those profiles. An unmerge moves records to new profiles and leaves the old
/// one live, which the profile lock does not show: it holds the locks of the keys it moves
/// until it commits, so a batch carrying one of them waits and then reads where they went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unmerge_holds_the_keys_it_moves() {
    let Some(t) = common::postgres_store().await else { return };
    merge_through_a_third_record(&t).await;
    let b = t.store.record_by_source_id("pos", "b").await.unwrap().unwrap();
    let a = t.store.record_by_source_id("webshop", "a").await.unwrap().unwrap();
    // one connection: a session lock taken by the probe is released on that same connection
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&t.url).await.unwrap();
    let keys_of = |record: i64| {
        sqlx::query_scalar::<_, i64>("SELECT hash FROM record_keys WHERE record_id = $1").bind(record).fetch_all(&pool)
    };
    let (moved, kept) = (keys_of(b.id).await.unwrap(), keys_of(a.id).await.unwrap());
    assert!(!moved.is_empty() && !kept.is_empty());
    let free = |hash: i64| {
        let pool = pool.clone();
        async move {
            let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(hash).fetch_one(&pool).await.unwrap();
            if free {
                sqlx::query("SELECT pg_advisory_unlock_all()").execute(&pool).await.unwrap();
            }
            free
        }
    };
    let mut tx = t.store.begin().await.unwrap();
    resolver().unmerge(&mut tx, b.profile_id, &[b.id], cdp_operator::store::now_ms()).await.unwrap();
    for &hash in &moved {
        assert!(!free(hash).await, "key {hash} of the moved record is not locked by the unmerge");
    }
    // keys carried only by records that stay are left to batches
    for hash in kept.iter().filter(|h| !moved.contains(h)) {
        assert!(free(*hash).await, "key {hash} of a record that stays is locked");
    }
    tx.commit().await.unwrap();
    for &hash in &moved {
        assert!(free(hash).await, "key {hash} still locked after the commit");
    }
}

/// A record queued before the length limits (or kept as sent by its Source) with a value
/// longer than its limit: the value is stored as sent, but neither compared, nor blocked on,
/// nor shown in the golden profile.
async fn a_value_over_its_limit_takes_no_part_in_matching(t: TestStore) {
    let person = [("familyName", "Lovelace"), ("email", "ada@example.com"), ("phone", "06 12 34 56 78")];
    let long = "x".repeat(200_000);
    t.store
        .enqueue(&[
            record("webshop", "w1", &[&person[..], &[("givenName", "Ada")]].concat()),
            record("pos", "p1", &[&person[..], &[("givenName", long.as_str())]].concat()),
        ])
        .await
        .unwrap();
    drain(&t).await;
    let kept = t.store.record_by_source_id("pos", "p1").await.unwrap().unwrap();
    assert_eq!(kept.attributes["givenName"], long, "stored as sent");
    assert!(!kept.normalised.contains_key("givenName"));
    // a clearly different given name would have kept them apart (never-merge)
    assert_eq!(t.store.clusters().await.unwrap().len(), 1);
    let golden = t.store.profile(kept.profile_id).await.unwrap().unwrap().golden.unwrap();
    assert_eq!(golden["attributes"]["givenName"]["display"], "Ada");
    assert!(golden.to_string().len() < 10_000, "{} bytes", golden.to_string().len());
}

const LEASE: Duration = Duration::from_secs(60);

/// Ann (one record) and Bob (two records), who share nothing: two profiles, Ann's first.
async fn ann_and_bob(t: &TestStore) -> (i64, i64) {
    t.store
        .enqueue(&[
            record("webshop", "a", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com")]),
            record("pos", "b1", &[("givenName", "Bob"), ("familyName", "Kim"), ("phone", "0699887766"), ("birthDate", "1980-02-03")]),
            record("pos", "b2", &[("givenName", "Bob"), ("familyName", "Kim"), ("phone", "0699887766"), ("birthDate", "1980-02-03")]),
        ])
        .await
        .unwrap();
    drain(t).await;
    let store = &t.store;
    let profile = |id: &'static str| async move { store.record_by_source_id(record_source(id), id).await.unwrap().unwrap().profile_id };
    let (ann, bob) = (profile("a").await, profile("b1").await);
    assert_eq!(profile("b2").await, bob, "Bob's records are one profile");
    assert!(ann < bob);
    (ann, bob)
}

fn record_source(id: &str) -> &'static str {
    if id.starts_with('a') { "webshop" } else { "pos" }
}

async fn merge_by_hand(t: &TestStore, a: i64, b: i64) -> i64 {
    let mut tx = t.store.begin().await.unwrap();
    let survivor = resolver().merge(&mut tx, a, b, "tester", cdp_operator::store::now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    survivor
}

async fn unmerge_by_hand(t: &TestStore, profile: i64, records: &[&str]) -> Vec<i64> {
    let mut ids = Vec::new();
    for id in records {
        ids.push(t.store.record_by_source_id(record_source(id), id).await.unwrap().unwrap().id);
    }
    let mut tx = t.store.begin().await.unwrap();
    let created = resolver().unmerge(&mut tx, profile, &ids, cdp_operator::store::now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    created
}

/// Bob's profile merged into Ann's by mistake, then his records split out again: his old id
/// leads to the profile holding them, not to Ann's.
async fn an_id_follows_its_records_out_of_an_unmerge(t: TestStore) {
    let (ann, bob) = ann_and_bob(&t).await;
    assert_eq!(merge_by_hand(&t, ann, bob).await, ann);
    assert_eq!(t.store.profile(bob).await.unwrap().unwrap().id, ann);
    let created = unmerge_by_hand(&t, ann, &["b1", "b2"]).await;
    assert_eq!(created.len(), 1, "Bob's two records stay together");
    let bob_now = created[0];
    assert_eq!(t.store.profile(bob).await.unwrap().unwrap().id, bob_now, "the old id leads to Bob's records");
    assert_eq!(t.store.profile_row(bob).await.unwrap().unwrap().merged_into, Some(bob_now));
    assert_eq!(t.store.aliases(bob_now).await.unwrap(), vec![bob]);
    assert!(t.store.aliases(ann).await.unwrap().is_empty(), "Ann's profile no longer claims Bob's id");
    let unmerged = t.store.events_after(0, 1000).await.unwrap().into_iter().find(|e| e.kind == "profile.unmerged").unwrap();
    assert_eq!(unmerged.payload["aliases"], serde_json::json!([{"alias": format!("p{bob}"), "profileId": format!("p{bob_now}")}]));
    // Bob's next record joins his profile, which his old id leads to
    t.store.enqueue(&[record("pos", "b3", &[("givenName", "Bob"), ("familyName", "Kim"), ("phone", "0699887766")])]).await.unwrap();
    drain(&t).await;
    assert_eq!(t.store.record_by_source_id("pos", "b3").await.unwrap().unwrap().profile_id, bob_now);
    assert_eq!(t.store.profile(bob).await.unwrap().unwrap().id, bob_now);
}

/// Bob's records split up by an unmerge: his old id cannot name one profile any more, and
/// says which ones hold its records; once they are together again it leads there.
async fn an_id_whose_records_were_split_up_leads_to_none_of_them_alone(t: TestStore) {
    let (ann, bob) = ann_and_bob(&t).await;
    merge_by_hand(&t, ann, bob).await;
    // b1 out: it gets a profile of its own, and b2, left with Ann's record, one too
    let created = unmerge_by_hand(&t, ann, &["b1"]).await;
    let store = &t.store;
    let holder = |id: &'static str| async move { store.record_by_source_id("pos", id).await.unwrap().unwrap().profile_id };
    let (b1, b2) = (holder("b1").await, holder("b2").await);
    assert!(b1 != b2 && b1 != ann && b2 != ann, "{created:?}");
    assert!(t.store.profile(bob).await.unwrap().is_none(), "a split id leads to none of its holders alone");
    let row = t.store.profile_row(bob).await.unwrap().unwrap();
    assert!(row.split_at_ms.is_some() && row.merged_into.is_none());
    let mut expected = vec![b1, b2];
    expected.sort_unstable();
    assert_eq!(t.store.named_holders(bob).await.unwrap(), expected);
    assert!(!t.store.aliases(ann).await.unwrap().contains(&bob));
    let unmerged = t.store.events_after(0, 1000).await.unwrap().into_iter().find(|e| e.kind == "profile.unmerged").unwrap();
    let split: Vec<String> = expected.iter().map(|p| format!("p{p}")).collect();
    assert_eq!(unmerged.payload["aliases"], serde_json::json!([{"alias": format!("p{bob}"), "splitInto": split}]));
    // a split id is neither merged nor unmerged
    let mut tx = t.store.begin().await.unwrap();
    assert!(matches!(resolver().merge(&mut tx, bob, ann, "tester", 0).await, Err(cdp_operator::matcher::MatchError::Split(id)) if id == bob));
    drop(tx);
    // a person puts Bob's records together again: the id leads there
    let together = merge_by_hand(&t, b1, b2).await;
    assert_eq!(t.store.profile(bob).await.unwrap().unwrap().id, together);
}

/// A store from before ids followed their records: an unmerge had left an id pointing at
/// the profile its records were taken from. The upgrade reads what each id named from the
/// outbox and sends it after its records.
async fn ids_merged_away_before_the_upgrade_follow_their_records(t: TestStore) {
    let (ann, bob) = ann_and_bob(&t).await;
    merge_by_hand(&t, ann, bob).await;
    let bob_now = unmerge_by_hand(&t, ann, &["b1", "b2"]).await[0];
    // the store as the previous version left it
    let pool = sqlx::AnyPool::connect(&t.url).await.unwrap();
    let ann_text = ann.to_string();
    for sql in [
        format!("UPDATE profiles SET merged_into = {ann} WHERE id = {bob}"),
        format!("UPDATE outbox SET payload = '{{\"survivor\": {ann}, \"absorbed\": [{bob}], \"action\": \"merge by tester\"}}' WHERE type = 'profile.merged'"),
        "DROP TABLE merged_records".into(),
        "ALTER TABLE profiles DROP COLUMN split_at_ms".into(),
        "DELETE FROM _sqlx_migrations WHERE version = 12".into(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let upgraded = cdp_operator::store::Store::open(&t.url).await.unwrap();
    assert_eq!(upgraded.profile(bob).await.unwrap().unwrap().id, bob_now, "p{ann_text} no longer holds Bob's records");
    assert_eq!(upgraded.aliases(bob_now).await.unwrap(), vec![bob]);
    // and it keeps following them from now on
    assert_eq!(upgraded.named_holders(bob).await.unwrap(), vec![bob_now]);
    upgraded.close().await;
}

/// Profile ids in every event payload read as in the API (`p12`), so a consumer can ask the
/// API about what an event names.
async fn events_name_profiles_as_the_api_does(t: TestStore) {
    merge_through_a_third_record(&t).await;
    t.store
        .enqueue(&[record("webshop", "a9", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com"), ("consents.sms", "yes")])])
        .await
        .unwrap();
    drain(&t).await;
    let b = t.store.record_by_source_id("pos", "b").await.unwrap().unwrap();
    let mut tx = t.store.begin().await.unwrap();
    resolver().unmerge(&mut tx, b.profile_id, &[b.id], cdp_operator::store::now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    let events = t.store.events_after(0, 1000).await.unwrap();
    let kinds: BTreeSet<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["profile.created", "profile.updated", "profile.merged", "profile.unmerged", "record.received", "consent.changed"] {
        assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
    }
    let is_ref = |v: &serde_json::Value| v.as_str().is_some_and(|s| s.strip_prefix('p').is_some_and(|n| n.parse::<i64>().is_ok()));
    for e in &events {
        let p = &e.payload;
        for field in ["profileId", "survivor"] {
            assert!(p.get(field).is_none_or(is_ref), "{} {field}: {p}", e.kind);
        }
        for field in ["absorbed", "created"] {
            assert!(p.get(field).is_none_or(|v| v.as_array().unwrap().iter().all(is_ref)), "{} {field}: {p}", e.kind);
        }
        if let Some(profile) = e.profile_id {
            assert!(["profileId", "survivor"].iter().any(|f| p[f] == format!("p{profile}")), "{}: {p}", e.kind);
        }
    }
}

/// A web-shop sign-up carrying an SMS consent, then a ticket scan of the same person, then a
/// record of someone else. A worker claims the sign-up and is slow; another worker resolves
/// the other person's record at once, but leaves the scan until the sign-up is resolved:
/// feeds see the consent before the scan.
async fn a_person_s_records_are_resolved_in_arrival_order(t: TestStore) {
    let records = arrivals();
    t.store.enqueue(&records).await.unwrap();
    // the slow worker's claim, as the record-by-record path marks it
    let held = t.store.claim("slow", 1, LEASE).await.unwrap();
    assert_eq!(held[0].record.source_record_id, "signup");
    let fast = worker(&t.store, resolver(), "fast");
    let fast = tokio::spawn(async move { fast.drain().await.unwrap() });
    resolved_soon(&t, "ticketing", "someone-else").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.store.record_by_source_id("ticketing", "scan").await.unwrap().is_none(), "the scan overtook the sign-up");
    let resolved = cdp_operator::matcher::resolve_batch(&t.store, &resolver(), &held).await;
    assert!(resolved.iter().all(Result::is_ok));
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), fast).await.unwrap().unwrap(), 2);
    assert_resolved_in_order(&t).await;
}

fn arrivals() -> Vec<cdp_operator::identity::CanonicalRecord> {
    let ada = [("givenName", "Ada"), ("familyName", "Lovelace"), ("email", "ada@example.com")];
    vec![
        record("webshop", "signup", &[&ada[..], &[("phone", "0612345678"), ("consents.sms", "true")]].concat()),
        record("ticketing", "scan", &ada),
        record("ticketing", "someone-else", &[("givenName", "Zoe"), ("familyName", "Kim"), ("email", "zoe@example.com")]),
    ]
}

async fn resolved_soon(t: &TestStore, source: &str, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while t.store.record_by_source_id(source, id).await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "{source}/{id} was never resolved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sign-up's events (its record and its consent) come before the scan's, which joined it.
async fn assert_resolved_in_order(t: &TestStore) {
    let signup = t.store.record_by_source_id("webshop", "signup").await.unwrap().unwrap();
    let scan = t.store.record_by_source_id("ticketing", "scan").await.unwrap().unwrap();
    assert_eq!(scan.profile_id, signup.profile_id, "the scan joined the sign-up's profile");
    let events = t.store.events_after(0, 1000).await.unwrap();
    let position = |kind: &str, record: Option<i64>| {
        events.iter().position(|e| e.kind == kind && (record.is_none() || e.record_id == record)).unwrap_or_else(|| panic!("no {kind}"))
    };
    assert!(position("record.received", Some(signup.id)) < position("record.received", Some(scan.id)));
    assert!(position("consent.changed", None) < position("record.received", Some(scan.id)));
}

/// PostgreSQL, as on the cluster where it was seen: a worker's claiming transaction holds the
/// sign-up (`FOR UPDATE SKIP LOCKED`) and is slow to lock its keys; another worker claims the
/// scan. It must not take its keys first: it waits for the transaction holding the sign-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_record_waits_for_an_older_one_a_claiming_transaction_holds() {
    let Some(t) = common::postgres_store().await else { return };
    t.store.enqueue(&arrivals()).await.unwrap();
    let mut slow = t.store.begin().await.unwrap();
    let held = slow.queued(1, LEASE).await.unwrap();
    assert_eq!(held[0].record.source_record_id, "signup");
    let fast = worker(&t.store, resolver(), "fast");
    let fast = tokio::spawn(async move { fast.drain().await.unwrap() });
    resolved_soon(&t, "ticketing", "someone-else").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.store.record_by_source_id("ticketing", "scan").await.unwrap().is_none(), "the scan overtook the sign-up");
    // the slow worker's transaction ends (here without resolving: the sign-up is queued again)
    slow.rollback().await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), fast).await.unwrap().unwrap(), 3);
    assert_resolved_in_order(&t).await;
}

/// A worker sizes its batches on the time it holds the store, not on the time it waited for
/// the writer (held by intake or another worker): counting the wait shrank every batch after
/// one, until under steady intake the matcher resolved a few records a batch and fell behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_writer_does_not_shrink_the_next_batch() {
    use sqlx::Connection;
    let t = common::sqlite_store().await;
    let records: Vec<_> = (0..3000).map(|n| record("pos", &format!("w{n}"), &[("email", &format!("p{n}@example.com"))])).collect();
    t.store.enqueue(&records).await.unwrap();
    let w = common::worker_claiming(&t.store, resolver(), "w", 4096);
    w.step().await.unwrap();
    let timed = w.next_claim();

    // another connection holds SQLite's writer for three seconds while the worker claims
    let mut holder = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut holder).await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    });
    let claimed = w.step().await.unwrap();
    release.await.unwrap();
    assert!(claimed > 0);
    assert!(w.next_claim() * 4 >= timed * 3, "the next claim shrank from {timed} to {} after waiting", w.next_claim());
}
