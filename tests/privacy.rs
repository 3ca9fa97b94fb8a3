//! Consents, erasure, suppression, export, retention and the key of the identifier hashes, on
//! SQLite and PostgreSQL. Erasure is checked by scanning every column of every table the
//! database catalogue lists, and the raw bytes of the store's files.

mod common;

use std::sync::Arc;

use cdp_operator::crd::source::AfterErasure;
use cdp_operator::identity::CanonicalRecord;
use cdp_operator::pipeline::PipelineConfig;
use cdp_operator::privacy::{Privacy, PrivacyError, PrivacyKeyError, Subject, SubjectKey, retention};
use cdp_operator::store::{Admission, Enqueued, Event, FieldError, Store, StoreError, now_ms};
use common::{Client, ERASE_TOKEN, READ_TOKEN, TestStore, WRITE_TOKEN, config, record, resolver, worker};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};

on_both_stores!(
    a_replay_after_erasure_is_refused,
    consents_newest_statement_wins_with_history,
    consents_follow_merges_and_unmerges,
    unclear_consent_is_rejected_naming_the_field,
    erasure_leaves_no_trace_of_the_person,
    erasure_leaves_nothing_of_the_person_in_the_store_files,
    erasing_an_identifier_nobody_holds_says_so_and_the_suppression_can_be_lifted,
    suppressions_and_lifts_are_listed_a_page_at_a_time,
    a_key_given_from_outside_never_enters_the_store_and_no_other_is_accepted,
    a_store_keeps_its_own_key_until_the_key_given_is_that_same_key,
    erasure_waits_for_a_record_being_resolved,
    erased_person_is_refused_unless_the_source_allows,
    erasure_racing_intake_lets_nothing_of_the_person_in,
    export_holds_everything_on_the_person,
    retention_purges_old_records_and_empty_profiles,
    purged_records_stop_counting_towards_how_common_a_name_is,
);

const T0: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;

fn at(mut r: CanonicalRecord, observed_at_ms: i64) -> CanonicalRecord {
    r.observed_at_ms = observed_at_ms;
    r
}

async fn drain(store: &Store) {
    worker(store, resolver(), "w").drain().await.unwrap();
}

async fn events(store: &Store, kind: &str) -> Vec<Event> {
    store.events_after(0, 10_000).await.unwrap().into_iter().filter(|e| e.kind == kind).collect()
}

fn privacy(store: &Store, config: PipelineConfig) -> Privacy {
    Privacy::new(store.clone(), Arc::new(config))
}

/// What intake through `source` of `config` makes of `payload`, as HTTP intake does it.
async fn admit(store: &Store, config: PipelineConfig, source: &str, payload: Value) -> Admission {
    let named = config.source(source).unwrap().clone();
    let flags = cdp_operator::ingest::normalise_flags(&config);
    let identifiers = privacy(store, config).gate(&named, std::slice::from_ref(&payload)).await.unwrap();
    let (arrivals, _) = cdp_operator::ingest::mapping::arrivals(&named, flags, &[payload.into()], identifiers, now_ms());
    store.admit(arrivals).await.unwrap().remove(0)
}

async fn consents_newest_statement_wins_with_history(t: TestStore) {
    let ann = [("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com")];
    let with = |consent: (&'static str, &'static str)| -> Vec<(&str, &str)> { ann.iter().copied().chain([consent]).collect() };
    // the withdrawal observed last arrives first; the older grant arriving later must not win
    t.store.enqueue(&[at(record("webshop", "w1", &with(("consents.sms", "granted"))), T0)]).await.unwrap();
    drain(&t.store).await;
    t.store.enqueue(&[at(record("pos", "p1", &with(("consents.sms", "withdrawn"))), T0 + 2 * MINUTE)]).await.unwrap();
    drain(&t.store).await;
    t.store
        .enqueue(&[at(record("ticketing", "t1", &with(("consents.sms", "granted"))), T0 + MINUTE)])
        .await
        .unwrap();
    drain(&t.store).await;
    let profile = t.store.record_by_source_id("webshop", "w1").await.unwrap().unwrap().profile_id;
    let golden = t.store.profile(profile).await.unwrap().unwrap().golden.unwrap();
    assert_eq!(golden["consents"]["sms"]["state"], "withdrawn", "{golden}");
    assert_eq!(golden["consents"]["sms"]["source"], "pos");
    assert!(golden["attributes"].get("consents.sms").is_none(), "consents are not survivorship attributes");

    let consents = privacy(&t.store, config()).consents(profile).await.unwrap();
    let history: Vec<(&str, &str, i64)> =
        consents.history.iter().map(|s| (s.source.as_str(), s.state.as_str(), s.observed_at_ms)).collect();
    assert_eq!(history, vec![("webshop", "granted", T0), ("ticketing", "granted", T0 + MINUTE), ("pos", "withdrawn", T0 + 2 * MINUTE)]);
    assert_eq!(consents.current["sms"].source_record_id, "p1");

    // one event per change of state: granted (new), withdrawn; the late grant changed nothing
    let changes: Vec<(Value, Value)> = events(&t.store, "consent.changed")
        .await
        .into_iter()
        .map(|e| (e.payload["previous"].clone(), e.payload["current"].clone()))
        .collect();
    assert_eq!(changes, vec![(Value::Null, json!("granted")), (json!("granted"), json!("withdrawn"))]);
}

async fn consents_follow_merges_and_unmerges(t: TestStore) {
    // two profiles of one person (email only / phone only), each with its own statement
    t.store
        .enqueue(&[
            at(record("webshop", "a", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com"), ("consents.email_marketing", "yes")]), T0),
            at(record("pos", "b", &[("givenName", "Ann"), ("familyName", "Lee"), ("phone", "0611223344"), ("consents.email_marketing", "no")]), T0 + MINUTE),
        ])
        .await
        .unwrap();
    drain(&t.store).await;
    let a = t.store.record_by_source_id("webshop", "a").await.unwrap().unwrap();
    let b = t.store.record_by_source_id("pos", "b").await.unwrap().unwrap();
    assert_ne!(a.profile_id, b.profile_id);
    let state = |golden: &Value| golden["consents"]["email_marketing"]["state"].clone();
    let r = resolver();
    let mut tx = t.store.begin().await.unwrap();
    let survivor = r.merge(&mut tx, a.profile_id, b.profile_id, "test", now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    let golden = t.store.profile(survivor).await.unwrap().unwrap().golden.unwrap();
    assert_eq!(state(&golden), "withdrawn", "the newer statement came with the absorbed profile");
    let last = events(&t.store, "consent.changed").await.pop().unwrap();
    assert_eq!((last.profile_id, &last.payload["current"]), (Some(survivor), &json!("withdrawn")));

    // splitting the withdrawing record out gives each profile its own statement back
    let mut tx = t.store.begin().await.unwrap();
    let created = r.unmerge(&mut tx, survivor, &[b.id], now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    let kept = t.store.profile(survivor).await.unwrap().unwrap().golden.unwrap();
    let split = t.store.profile(created[0]).await.unwrap().unwrap().golden.unwrap();
    assert_eq!((state(&kept), state(&split)), (json!("granted"), json!("withdrawn")));
    let last = events(&t.store, "consent.changed").await;
    assert!(last.iter().any(|e| e.profile_id == Some(survivor) && e.payload["current"] == "granted"));
    assert!(last.iter().any(|e| e.profile_id == Some(created[0]) && e.payload["current"] == "withdrawn"));
}

async fn unclear_consent_is_rejected_naming_the_field(t: TestStore) {
    let c = Client::new(&t).await;
    let (status, body) = c.send_status("webshop", json!({"id": "w1", "email": "zoe@example.com", "consents": {"sms": "maybe"}})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"][0]["errors"][0]["field"], "consents.sms");
    assert_eq!(body["error"]["details"][0]["errors"][0]["code"], "invalid");
    let (status, body) = c.send_status("webshop", json!({"id": "w2", "email": "zoe@example.com", "consents": {"sms": "1", "email_marketing": "No"}})).await;
    assert_eq!(status, 202, "{body}");
    drain(&t.store).await;
    let record = t.store.record_by_source_id("webshop", "w2").await.unwrap().unwrap();
    assert_eq!(record.normalised["consents.sms"], "granted");
    assert_eq!(record.normalised["consents.email_marketing"], "withdrawn");
}

/// Values of the test subject, as sent and as normalised: none may survive an erasure.
const SUBJECT_VALUES: &[&str] =
    &["ann.lee@example.com", "0611223344", "+33611223344", "6 11 22 33 44", "annie", "leeson", "l-4242", "rue des lilas"];
/// Another person's values: they must survive it (and prove the scan sees what is there).
const BYSTANDER_VALUES: &[&str] = &["bob.martin@example.com", "martin"];

/// Every text found in every column of every table the catalogue lists, lowercased, as
/// `(table.column, text)`.
async fn every_value(url: &str) -> Vec<(String, String)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let postgres = url.starts_with("postgres");
    let tables_sql = if postgres {
        "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    };
    let tables: Vec<String> = sqlx::query(tables_sql).fetch_all(&pool).await.unwrap().iter().map(|r| r.get("name")).collect();
    assert!(tables.len() >= 10, "the catalogue lists every table: {tables:?}");
    let mut out = Vec::new();
    for table in tables {
        let columns_sql = if postgres {
            "SELECT CAST(column_name AS TEXT) AS name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1"
        } else {
            "SELECT name FROM pragma_table_info($1)"
        };
        let columns: Vec<String> =
            sqlx::query(columns_sql).bind(&table).fetch_all(&pool).await.unwrap().iter().map(|r| r.get("name")).collect();
        for column in columns {
            // SQLite: as bytes, so blobs are read too; PostgreSQL renders every type as text
            let sql = if postgres {
                format!("SELECT convert_to(CAST(\"{column}\" AS TEXT), 'UTF8') AS v FROM \"{table}\"")
            } else {
                format!("SELECT CAST(\"{column}\" AS BLOB) AS v FROM \"{table}\"")
            };
            for row in sqlx::query(AssertSqlSafe(sql)).fetch_all(&pool).await.unwrap() {
                if let Some(v) = row.get::<Option<Vec<u8>>, _>("v") {
                    out.push((format!("{table}.{column}"), String::from_utf8_lossy(&v).to_lowercase()));
                }
            }
        }
    }
    pool.close().await;
    out
}

fn found<'a>(values: &'a [(String, String)], needles: &[&str]) -> Vec<(&'a str, String)> {
    values
        .iter()
        .flat_map(|(place, v)| needles.iter().filter(|n| v.contains(**n)).map(move |n| (place.as_str(), n.to_string())))
        .collect()
}

/// The subject's data everywhere: two profiles merged by a third record (so an alias, a
/// record merged into the profile and a review item), a consent, a quarantined payload and a
/// record still queued; plus a bystander.
async fn subject_everywhere(t: &TestStore, c: &Client) {
    let sent = [
        c.send_status("webshop", json!({"id": "a", "givenName": "Annie", "familyName": "Leeson", "email": "ann.lee@example.com", "consents": {"sms": "yes"}})).await,
        c.send_status("pos", json!({"id": "b", "givenName": "Annie", "familyName": "Leeson", "phone": "06 11 22 33 44", "street": "3 rue des Lilas", "identifiers": {"loyaltyId": "L-4242"}})).await,
        c.send_status("webshop", json!({"id": "bob", "givenName": "Bob", "familyName": "Martin", "email": "bob.martin@example.com"})).await,
    ];
    assert!(sent.iter().all(|(status, _)| *status == 202), "{sent:?}");
    drain(&t.store).await;
    assert_eq!(t.store.counts().await.unwrap().open_reviews, 1, "the name-only pair waits for review");
    let (status, _) = c.send_status("ticketing", json!({"id": "c", "givenName": "Annie", "familyName": "Leeson", "email": "ann.lee@example.com", "phone": "+33 6 11 22 33 44"})).await;
    assert_eq!(status, 202);
    drain(&t.store).await;
    let (status, body) = c.send_status("pos", json!({"id": "q", "email": "ann.lee@example.com", "birthDate": "31/02/1990"})).await;
    assert_eq!((status, body["error"]["details"][0]["quarantineId"].is_i64()), (422, true), "{body}");
    // queued, not yet resolved
    let (status, _) = c.send_status("ticketing", json!({"id": "late", "phone": "0611223344"})).await;
    assert_eq!(status, 202);
}

async fn erasure_leaves_no_trace_of_the_person(t: TestStore) {
    let c = Client::new(&t).await;
    subject_everywhere(&t, &c).await;
    let survivor = t.store.record_by_source_id("webshop", "a").await.unwrap().unwrap().profile_id;
    let aliases = t.store.aliases(survivor).await.unwrap();
    assert_eq!(aliases.len(), 1);
    let before = every_value(&t.url).await;
    let seen: std::collections::BTreeSet<String> = found(&before, SUBJECT_VALUES).into_iter().map(|(_, n)| n).collect();
    assert_eq!(seen.len(), SUBJECT_VALUES.len(), "the scan sees every value before: {seen:?}");

    // scopes: reading is not erasing
    let request = json!({"attribute": "email", "value": "Ann.Lee@example.com", "reason": "subject-request"});
    assert_eq!(c.post("/v1/erasures", READ_TOKEN, request.clone()).await.0, 403);
    assert_eq!(c.post("/v1/erasures", ERASE_TOKEN, json!({"profileId": "p1", "reason": "Ann Lee asked"})).await.0, 400);
    let (status, report) = c.post("/v1/erasures", ERASE_TOKEN, request).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["profiles"], json!([format!("p{survivor}")]), "profile ids as the rest of the API writes them");
    assert!(report.get("notice").is_none(), "a profile held the identifier: nothing to point out");
    assert_eq!(report["removed"]["records"], 3);
    assert_eq!(report["removed"]["quarantineEntries"], 1);
    assert_eq!(report["removed"]["queuedRecords"], 1);
    assert_eq!(report["removed"]["reviewItems"], 1);

    let after = every_value(&t.url).await;
    assert_eq!(found(&after, SUBJECT_VALUES), vec![], "no value of the subject is left anywhere");
    assert_eq!(found(&after, BYSTANDER_VALUES).len(), found(&before, BYSTANDER_VALUES).len(), "the bystander is untouched");
    assert_eq!(c.get(&format!("/v1/profiles/p{survivor}"), READ_TOKEN).await.0, 404);
    assert_eq!(c.get(&format!("/v1/profiles/p{}", aliases[0]), READ_TOKEN).await.0, 404);

    // feeds learn it with ids only; the audit keeps hashes, when, why and who
    let erased = events(&t.store, "profile.erased").await;
    assert_eq!(erased.len(), 1);
    assert_eq!(erased[0].profile_id, Some(survivor));
    let alias_refs: Vec<String> = aliases.iter().map(|a| format!("p{a}")).collect();
    assert_eq!(erased[0].payload["aliases"], json!(alias_refs), "profiles named as the API names them");
    let erasure_id = report["erasureId"].as_i64().unwrap();
    assert_eq!(erased[0].payload["erasureId"], erasure_id);
    let (status, audit) = c.get(&format!("/v1/erasures/{erasure_id}"), ERASE_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!((audit["reason"].as_str(), audit["requestedBy"].as_str()), (Some("subject-request"), Some("eraser")));
    assert_eq!(audit["profileIds"], json!([format!("p{survivor}")]));
    // email, phone and loyalty id, as keyed hashes
    assert_eq!(audit["subjectHashes"].as_array().unwrap().len(), 3, "{audit}");
    // nothing of the subject is left to resolve: the queue holds only what was there for others
    drain(&t.store).await;
    assert_eq!(t.store.counts().await.unwrap().records, 1);
    // no key row outlives its record (PostgreSQL has no foreign key to remove them)
    let (keys, orphans) = key_rows(&t.url).await;
    assert!(keys > 0 && orphans == 0, "the bystander's keys stay, and no other: {keys} rows, {orphans} orphans");
}

/// The raw bytes of a SQLite store's files, lowercased, by file: the database and its
/// write-ahead log.
fn sqlite_files(db: &str) -> Vec<(String, Vec<u8>)> {
    let paths: Vec<std::path::PathBuf> =
        [db.to_string(), format!("{db}-wal")].into_iter().map(Into::into).filter(|p: &std::path::PathBuf| p.exists()).collect();
    assert!(!paths.is_empty(), "the store has files");
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap().to_ascii_lowercase();
            (p.display().to_string(), bytes)
        })
        .collect()
}

/// `(file, needle)` for every needle found in the files.
fn found_in_files(files: &[(String, Vec<u8>)], needles: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, bytes) in files {
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                out.push((file.clone(), needle.to_string()));
            }
        }
    }
    out
}

/// Erased means gone from the files too, not only from what SQL shows: SQLite keeps deleted
/// rows in free pages and in its write-ahead log, PostgreSQL in dead row versions, which a
/// plain VACUUM only marks reusable. Also the quarantined payload and the outbox events.
async fn erasure_leaves_nothing_of_the_person_in_the_store_files(t: TestStore) {
    let c = Client::new(&t).await;
    subject_everywhere(&t, &c).await;
    let events = t.store.events_after(0, 1000).await.unwrap();
    assert!(events.iter().any(|e| e.payload.to_string().contains("ann.lee@example.com")), "outbox payloads carry the values");
    let before = match t.url.strip_prefix("sqlite:") {
        Some(db) => {
            let seen: std::collections::BTreeSet<String> =
                found_in_files(&sqlite_files(db), SUBJECT_VALUES).into_iter().map(|(_, n)| n).collect();
            assert_eq!(seen.len(), SUBJECT_VALUES.len(), "the scan sees every value before: {seen:?}");
            None
        }
        None => Some(last_vacuums(&t.url).await),
    };

    let request = json!({"attribute": "email", "value": "ann.lee@example.com", "reason": "subject-request"});
    let (status, report) = c.post("/v1/erasures", ERASE_TOKEN, request).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["scrubbed"], true, "{report}");
    assert_eq!(report["removed"]["quarantineEntries"], 1);

    match (t.url.strip_prefix("sqlite:"), before) {
        (Some(db), _) => {
            let after = sqlite_files(db);
            assert_eq!(found_in_files(&after, SUBJECT_VALUES), vec![], "no value of the subject is left in the files");
            let bystander: std::collections::BTreeSet<String> =
                found_in_files(&after, BYSTANDER_VALUES).into_iter().map(|(_, n)| n).collect();
            assert_eq!(bystander.len(), BYSTANDER_VALUES.len(), "the bystander is still there, and the scan sees it");
        }
        // PostgreSQL writes over no freed byte; what its documentation asks is that the dead
        // rows be vacuumed, which every table of personal data was, once the erasure committed
        (None, Some(before)) => {
            let after = last_vacuums(&t.url).await;
            for (table, vacuumed) in &after {
                assert!(vacuumed.is_some() && *vacuumed != before[table], "{table} was not vacuumed after the erasure");
            }
            assert_eq!(after.len(), 6, "{after:?}");
        }
        (None, None) => unreachable!("PostgreSQL's vacuums are read before the erasure"),
    }
}

/// When PostgreSQL last vacuumed each table holding personal data (by hand: VACUUM).
async fn last_vacuums(url: &str) -> std::collections::BTreeMap<String, Option<String>> {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT CAST(relname AS TEXT) AS relname, CAST(last_vacuum AS TEXT) AS at FROM pg_stat_user_tables
         WHERE relname IN ('intake', 'quarantine', 'profiles', 'source_records', 'outbox', 'feed_deliveries')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter().map(|r| (r.get::<String, _>("relname"), r.get::<Option<String>, _>("at"))).collect()
}

/// An erasure by an identifier no profile holds still suppresses it: the answer says so, the
/// suppression is listed, and a token with the erase scope can lift it, audited by hash only.
async fn erasing_an_identifier_nobody_holds_says_so_and_the_suppression_can_be_lifted(t: TestStore) {
    let c = Client::new(&t).await;
    let request = json!({"attribute": "email", "value": "Zoe.Roux@example.com", "reason": "subject-request"});
    let (status, report) = c.post("/v1/erasures", ERASE_TOKEN, request).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["profiles"], json!([]));
    let notice = report["notice"].as_str().unwrap_or_default();
    assert!(notice.contains("no profile held") && notice.contains("refused at intake"), "{report}");
    let suppressed = report["suppressed"].as_array().unwrap();
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0]["attribute"], "email");
    let hash = suppressed[0]["hash"].as_str().unwrap().to_string();

    assert_eq!(c.get("/v1/suppressions", READ_TOKEN).await.0, 403, "the list is for the erase scope");
    let (status, list) = c.get("/v1/suppressions", ERASE_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(list["suppressions"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["suppressions"][0]["hash"], hash.as_str());
    assert_eq!(list["suppressions"][0]["erasureId"], report["erasureId"]);
    let zoe = json!({"id": "z1", "email": "zoe.roux@example.com"});
    let (status, body) = c.send_status("webshop", zoe.clone()).await;
    assert_eq!((status, &body["error"]["code"]), (422, &json!("erased_subject")), "{body}");

    // Zoé comes back and asks to be a customer again
    let lift = json!({"attribute": "email", "value": "zoe.roux@EXAMPLE.com", "reason": "subject-returned"});
    assert_eq!(c.post("/v1/suppressions/lift", WRITE_TOKEN, lift.clone()).await.0, 403);
    assert_eq!(c.post("/v1/suppressions/lift", ERASE_TOKEN, json!({"hash": hash, "reason": "Zoé came back"})).await.0, 400);
    let (status, lifted) = c.post("/v1/suppressions/lift", ERASE_TOKEN, lift.clone()).await;
    assert_eq!(status, 200, "{lifted}");
    assert_eq!((lifted["hash"].as_str(), &lifted["erasureId"]), (Some(hash.as_str()), &report["erasureId"]));
    assert_eq!((lifted["reason"].as_str(), lifted["requestedBy"].as_str()), (Some("subject-returned"), Some("eraser")));
    let (status, body) = c.post("/v1/suppressions/lift", ERASE_TOKEN, lift).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")), "lifted already: {body}");
    assert_eq!(c.get("/v1/suppressions", ERASE_TOKEN).await.1["suppressions"], json!([]));
    let (status, lifts) = c.get("/v1/suppressions/lifts", ERASE_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(lifts["lifts"].as_array().unwrap().len(), 1);
    assert_eq!(lifts["lifts"][0]["id"], lifted["id"]);
    assert!(!lifts.to_string().to_lowercase().contains("zoe"), "the audit holds no value: {lifts}");

    let (status, body) = c.send_status("webshop", zoe).await;
    assert_eq!(status, 202, "accepted again: {body}");
}

async fn suppressions_and_lifts_are_listed_a_page_at_a_time(t: TestStore) {
    let c = Client::new(&t).await;
    for n in 0..3 {
        let request = json!({"attribute": "email", "value": format!("gone{n}@example.com"), "reason": "subject-request"});
        assert_eq!(c.post("/v1/erasures", ERASE_TOKEN, request).await.0, 200);
    }
    let (status, first) = c.get("/v1/suppressions?limit=2", ERASE_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(first["suppressions"].as_array().unwrap().len(), 2);
    let after = first["nextAfter"].as_i64().expect("a full page has a next one");
    let (_, second) = c.get(&format!("/v1/suppressions?limit=2&after={after}"), ERASE_TOKEN).await;
    assert_eq!(second["suppressions"].as_array().unwrap().len(), 1);
    assert_eq!(second["nextAfter"], Value::Null);
    let (status, body) = c.get("/v1/suppressions?limit=0", ERASE_TOKEN).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_limit")));

    for suppression in first["suppressions"].as_array().unwrap() {
        let lift = json!({"hash": suppression["hash"], "reason": "subject-returned"});
        assert_eq!(c.post("/v1/suppressions/lift", ERASE_TOKEN, lift).await.0, 200);
    }
    let (_, lifts) = c.get("/v1/suppressions/lifts?limit=1", ERASE_TOKEN).await;
    assert_eq!(lifts["lifts"].as_array().unwrap().len(), 1);
    let after = lifts["nextAfter"].as_i64().unwrap();
    let (_, rest) = c.get(&format!("/v1/suppressions/lifts?limit=1&after={after}"), ERASE_TOKEN).await;
    assert_eq!(rest["lifts"].as_array().unwrap().len(), 1);
    assert_ne!(rest["lifts"][0]["id"], lifts["lifts"][0]["id"]);
}

/// The key error a store answered with.
fn key_error(result: Result<String, StoreError>) -> PrivacyKeyError {
    match result {
        Err(StoreError::Db(sqlx::Error::Configuration(e))) => match e.downcast::<PrivacyKeyError>() {
            Ok(e) => *e,
            Err(e) => panic!("not a key error: {e}"),
        },
        other => panic!("expected a key error, got {other:?}"),
    }
}

async fn a_key_given_from_outside_never_enters_the_store_and_no_other_is_accepted(t: TestStore) {
    const KEY: &str = "k-from-a-kubernetes-secret-4b1d";
    assert_eq!(t.store.privacy_secret_with(Some(KEY)).await.unwrap(), KEY);
    assert_eq!(t.store.privacy_secret_with(Some(KEY)).await.unwrap(), KEY, "the same key again");
    assert_eq!(found(&every_value(&t.url).await, &[KEY]), vec![], "the key is nowhere in the store");
    // hashes made with it would not match another key's: refused, not silently replaced
    assert!(matches!(key_error(t.store.privacy_secret_with(Some("another-key")).await), PrivacyKeyError::Mismatch));
    assert!(matches!(key_error(t.store.privacy_secret_with(None).await), PrivacyKeyError::Missing));
}

/// A store made before keys moved to Secrets keeps producing the same hashes whatever key
/// the first rollout brings, until the key given is its own: then it leaves the store.
async fn a_store_keeps_its_own_key_until_the_key_given_is_that_same_key(t: TestStore) {
    let own = t.store.privacy_secret_with(None).await.unwrap();
    let c = Client::new(&t).await;
    let (status, _) = c.post("/v1/erasures", ERASE_TOKEN, json!({"attribute": "email", "value": "ann.lee@example.com", "reason": "art17"})).await;
    assert_eq!(status, 200);
    let suppressed = |store: Store| async move { store.suppressions(0, 10).await.unwrap().into_iter().map(|s| s.hash).collect::<Vec<_>>() };
    let hash = SubjectKey::new(&own).hash("email", "ann.lee@example.com");
    assert_eq!(suppressed(t.store.clone()).await, vec![hash.clone()]);

    // a fresh key from a new Secret is not used: the suppression list was made with the old one
    assert_eq!(t.store.privacy_secret_with(Some("fresh-key-of-a-new-secret")).await.unwrap(), own);
    // the store's key copied into the Secret: it moves out of the store
    assert_eq!(t.store.privacy_secret_with(Some(&own)).await.unwrap(), own);
    assert_eq!(found(&every_value(&t.url).await, &[own.as_str()]), vec![], "the key left the store");
    if let Some(db) = t.url.strip_prefix("sqlite:") {
        assert_eq!(found_in_files(&sqlite_files(db), &[own.as_str()]), vec![], "and its files");
    }
    assert!(matches!(key_error(t.store.privacy_secret_with(None).await), PrivacyKeyError::Missing));
    assert_eq!(t.store.privacy_secret_with(Some(&own)).await.unwrap(), own);
    assert_eq!(suppressed(t.store.clone()).await, vec![hash], "the same hashes throughout");
}

/// Key rows in all, and those whose record is gone.
async fn key_rows(url: &str) -> (i64, i64) {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COUNT(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM source_records r WHERE r.id = k.record_id)) AS orphans
         FROM record_keys k",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    (row.get("n"), row.get("orphans"))
}

async fn erasure_waits_for_a_record_being_resolved(t: TestStore) {
    let ann = [("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com")];
    t.store.enqueue(&[record("webshop", "a", &ann)]).await.unwrap();
    drain(&t.store).await;
    let profile = t.store.record_by_source_id("webshop", "a").await.unwrap().unwrap().profile_id;
    // a matcher holds the person's next record: erasing now would let it slip through
    t.store.enqueue(&[record("pos", "b", &ann)]).await.unwrap();
    let claimed = t.store.claim("busy", 10, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let subject = Subject::Identifier { attribute: "email".into(), value: "ann.lee@example.com".into(), region: None };
    let privacy = privacy(&t.store, config());
    assert!(matches!(privacy.erase(&subject, "test", "tester").await, Err(PrivacyError::InFlight)));
    assert!(t.store.profile(profile).await.unwrap().is_some(), "nothing is erased half-way");
    // once resolved, the erasure takes the new record too
    let resolved = cdp_operator::matcher::resolve_batch(&t.store, &resolver(), &claimed).await;
    assert!(resolved.iter().all(Result::is_ok));
    let report = privacy.erase(&subject, "test", "tester").await.unwrap();
    assert_eq!(report.removed.records, 2);
    assert_eq!(t.store.counts().await.unwrap().records, 0);
}

async fn erased_person_is_refused_unless_the_source_allows(t: TestStore) {
    let c = Client::new(&t).await;
    let profile = resolved(&t, &c, json!({"id": "a", "givenName": "Annie", "email": "ann.lee@example.com", "phone": "0611223344"})).await;
    let (status, _) = c.post("/v1/erasures", ERASE_TOKEN, json!({"profileId": format!("p{profile}"), "reason": "art17"})).await;
    assert_eq!(status, 200);
    let counts = t.store.counts().await.unwrap();

    // the same phone, written differently, from another source: refused and not stored;
    // the stranger in the same batch is accepted
    let (status, body) = c
        .send_status("pos", json!([{"id": "again", "phone": "+33 6 11 22 33 44", "birthDate": "not a date"}, {"id": "zoe", "email": "zoe@example.com"}]))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "erased_subject");
    assert_eq!(body["error"]["details"][0]["index"], 0);
    assert!(body["error"]["details"][0].get("quarantineId").is_none());
    assert_eq!(body["error"]["details"][0]["errors"][0], json!({"field": "phone", "code": "erasedSubject",
        "message": "belongs to an erased person; this source may not send it again (privacy.afterErasure)"}));
    assert_eq!(body["accepted"].as_array().unwrap().len(), 1);
    let now = t.store.counts().await.unwrap();
    assert_eq!((now.queued, now.quarantined), (counts.queued + 1, counts.quarantined));
    assert!(t.store.quarantined(None, 0, 100).await.unwrap().is_empty());

    // a source that lets the person come back: a new profile starts
    let mut allowing = config();
    allowing.sources.iter_mut().for_each(|s| s.spec.privacy.after_erasure = AfterErasure::NewProfile);
    let payload = json!({"id": "back", "email": "ANN.LEE@example.com"});
    assert_eq!(admit(&t.store, config(), "ticketing", payload.clone()).await, Admission::Refused(vec!["email".into()]));
    assert!(matches!(admit(&t.store, allowing, "ticketing", payload).await, Admission::Queued(Enqueued { duplicate: false, .. })));
    drain(&t.store).await;
    let back = t.store.record_by_source_id("ticketing", "back").await.unwrap().unwrap();
    assert_ne!(back.profile_id, profile);
    assert_eq!(t.store.records_of(back.profile_id).await.unwrap().len(), 1, "nothing of the erased profile comes back");
}

/// Send `payload` (id `a`) through the web shop and resolve it; returns its profile.
async fn resolved(t: &TestStore, c: &Client, payload: Value) -> i64 {
    let (status, _) = c.send_status("webshop", payload).await;
    assert_eq!(status, 202);
    drain(&t.store).await;
    t.store.record_by_source_id("webshop", "a").await.unwrap().unwrap().profile_id
}

/// A quarantined payload replayed after its person's erasure (one the erasure could not
/// recognise, say, before a mapping fix) arrives now: refused, and its entry removed.
async fn a_replay_after_erasure_is_refused(t: TestStore) {
    let c = Client::new(&t).await;
    let profile = resolved(&t, &c, json!({"id": "a", "givenName": "Annie", "email": "ann.lee@example.com"})).await;
    let (status, _) = c.post("/v1/erasures", ERASE_TOKEN, json!({"profileId": format!("p{profile}"), "reason": "art17"})).await;
    assert_eq!(status, 200);
    let counts = t.store.counts().await.unwrap();
    let payload = json!({"id": "q", "email": "Ann.Lee@example.com"});
    let errors = vec![FieldError { field: "birthDate".into(), code: "invalid".into(), message: "not a date".into() }];
    let entry = t.store.quarantine("pos", &payload, &errors).await.unwrap();
    let config = config();
    let named = config.source("pos").unwrap().clone();
    let identifiers = privacy(&t.store, config.clone()).gate(&named, std::slice::from_ref(&payload)).await.unwrap().remove(0);
    let flags = cdp_operator::ingest::normalise_flags(&config);
    let record = cdp_operator::ingest::mapping::map_record(&named, flags, &payload, now_ms()).unwrap().record;
    let replayed = t.store.replay_quarantined(entry, Ok(record), identifiers).await.unwrap();
    assert_eq!(replayed, Some(Admission::Refused(vec!["email".into()])));
    assert!(t.store.quarantine_entry(entry).await.unwrap().is_none(), "nothing of the person stays in quarantine");
    assert_eq!(t.store.counts().await.unwrap().queued, counts.queued);
}

/// Sources keep delivering a person's records while the person is erased: each record is
/// either queued before the erasure (and dropped by it) or refused after it; none slips in
/// between the suppression check and the queue.
async fn erasure_racing_intake_lets_nothing_of_the_person_in(t: TestStore) {
    let c = Client::new(&t).await;
    let profile = resolved(&t, &c, json!({"id": "a", "givenName": "Ann", "email": "ann.lee@example.com"})).await;
    let erased = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..6)
        .map(|s| {
            let (http, url, erased) = (c.http.clone(), format!("{}/v1/sources/pos/records", c.ingest), erased.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                // until the erasure has answered, and one request more
                for n in 0.. {
                    let done = erased.load(std::sync::atomic::Ordering::SeqCst);
                    let record = json!({"id": format!("s{s}-{n}"), "email": "ann.lee@example.com"});
                    let response = http.post(&url).bearer_auth(common::INTAKE_KEY).json(&record).send().await.unwrap();
                    answers.push(response.status().as_u16());
                    if done {
                        break;
                    }
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, body) = c.post("/v1/erasures", ERASE_TOKEN, json!({"profileId": format!("p{profile}"), "reason": "art17"})).await;
    assert_eq!(status, 200, "{body}");
    erased.store(true, std::sync::atomic::Ordering::SeqCst);
    for sender in senders {
        let answers = sender.await.unwrap();
        assert!(answers.iter().all(|s| *s == 202 || *s == 422), "{answers:?}");
        assert_eq!(answers.last(), Some(&422), "refused once the erasure is done");
    }
    drain(&t.store).await;
    let counts = t.store.counts().await.unwrap();
    assert_eq!((counts.records, counts.queued, counts.quarantined), (0, 0, 0), "nothing of the person is left: {counts:?}");
}

async fn export_holds_everything_on_the_person(t: TestStore) {
    let c = Client::new(&t).await;
    subject_everywhere(&t, &c).await;
    let survivor = t.store.record_by_source_id("webshop", "a").await.unwrap().unwrap().profile_id;
    let alias = t.store.aliases(survivor).await.unwrap()[0];
    // an alias exports the person too
    let (status, export) = c.get(&format!("/v1/profiles/p{alias}/export"), READ_TOKEN).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["profile"]["id"], format!("p{survivor}"), "profile ids as the rest of the API writes them");
    assert_eq!(export["aliases"], json!([format!("p{alias}")]));
    assert!(export["records"].as_array().unwrap().iter().all(|r| r["profileId"] == format!("p{survivor}")), "{export}");
    assert!(export["events"].as_array().unwrap().iter().all(|e| e["profileId"].as_str().unwrap().starts_with('p')), "{export}");
    let mut records: Vec<&str> = export["records"].as_array().unwrap().iter().map(|r| r["sourceRecordId"].as_str().unwrap()).collect();
    records.sort();
    assert_eq!(records, vec!["a", "b", "c"]);
    assert_eq!(export["profile"]["golden"]["attributes"]["email"]["value"], "ann.lee@example.com");
    assert_eq!(export["consents"]["current"]["sms"]["state"], "granted");
    assert_eq!(export["consents"]["history"].as_array().unwrap().len(), 1);
    assert_eq!(export["reviewItems"].as_array().unwrap().len(), 1);
    let kinds: Vec<&str> = export["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in ["profile.created", "record.received", "profile.merged", "consent.changed"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let quarantine = export["quarantine"].as_array().unwrap();
    assert_eq!(quarantine.len(), 1);
    assert_eq!(quarantine[0]["payload"]["email"], "ann.lee@example.com");
    // nothing of the bystander
    assert!(!export.to_string().contains("bob.martin"));
    let (status, consents) = c.get(&format!("/v1/profiles/p{survivor}/consents"), READ_TOKEN).await;
    assert_eq!((status, &consents["current"]["sms"]["source"]), (200, &json!("webshop")));
    assert_eq!(c.get(&format!("/v1/profiles/p{survivor}/export"), WRITE_TOKEN).await.0, 200);
    assert_eq!(c.get("/v1/profiles/p999999/export", READ_TOKEN).await.0, 404);
    let doc: Value = c.http.get(format!("{}/openapi.json", c.api)).send().await.unwrap().json().await.unwrap();
    for path in [
        "/v1/erasures",
        "/v1/erasures/{id}",
        "/v1/suppressions",
        "/v1/suppressions/lift",
        "/v1/suppressions/lifts",
        "/v1/profiles/{id}/export",
        "/v1/profiles/{id}/consents",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
}

/// The test config, with the `pos` source's records kept for 30 days.
fn pos_kept_for_30_days() -> PipelineConfig {
    let mut config = config();
    for s in &mut config.sources {
        if s.name == "pos" {
            s.spec.privacy.retention_days = Some(30);
        }
    }
    config
}

async fn retention_purges_old_records_and_empty_profiles(t: TestStore) {
    let config = pos_kept_for_30_days();
    let now = now_ms();
    let old = now - 31 * 86_400_000;
    t.store
        .enqueue(&[
            at(record("pos", "ann-old", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com"), ("street", "3 rue des Lilas"), ("consents.sms", "yes")]), old),
            at(record("webshop", "ann-new", &[("givenName", "Ann"), ("familyName", "Lee"), ("email", "ann.lee@example.com")]), now),
            at(record("pos", "bob-old", &[("givenName", "Bob"), ("familyName", "Martin"), ("email", "bob.martin@example.com")]), old),
            at(record("pos", "cy-new", &[("givenName", "Cy"), ("familyName", "Roux"), ("email", "cy@example.com")]), now),
        ])
        .await
        .unwrap();
    drain(&t.store).await;
    let ann = t.store.record_by_source_id("webshop", "ann-new").await.unwrap().unwrap().profile_id;
    let bob = t.store.record_by_source_id("pos", "bob-old").await.unwrap().unwrap().profile_id;
    assert_eq!(t.store.records_of(ann).await.unwrap().len(), 2);
    let errors = [FieldError { field: "email".into(), code: "invalid".into(), message: "not an email".into() }];
    t.store.quarantine("pos", &json!({"id": "bad", "email": "nope"}), &errors).await.unwrap();
    t.store.quarantine("webshop", &json!({"id": "bad", "email": "nope"}), &errors).await.unwrap();

    let privacy = privacy(&t.store, config);
    // today, the quarantined entries are fresh: only records are old enough
    let report = retention::purge(&privacy, &resolver(), now).await.unwrap();
    assert_eq!((report.records, report.profiles_updated, report.profiles_erased, report.quarantine_entries), (2, 1, 1, 0));
    let golden = t.store.profile(ann).await.unwrap().unwrap().golden.unwrap();
    assert!(golden["attributes"].get("street").is_none(), "the purged record's values leave the golden record: {golden}");
    assert!(golden.get("consents").is_none(), "and so does its consent: {golden}");
    assert_eq!(t.store.records_of(ann).await.unwrap().len(), 1);
    assert!(t.store.profile(bob).await.unwrap().is_none(), "a profile left with no record is erased");
    assert!(t.store.record_by_source_id("pos", "cy-new").await.unwrap().is_some(), "recent records stay");
    let erased = events(&t.store, "profile.erased").await;
    assert_eq!(erased.iter().map(|e| e.profile_id).collect::<Vec<_>>(), vec![Some(bob)]);
    let updated = events(&t.store, "profile.updated").await;
    assert!(updated.iter().any(|e| e.profile_id == Some(ann) && e.payload["changed"].get("street").is_some()));
    let withdrawn = events(&t.store, "consent.changed").await.pop().unwrap();
    assert_eq!((withdrawn.profile_id, &withdrawn.payload["current"]), (Some(ann), &Value::Null));
    // erased by retention, not suppressed: Bob may come back from any source
    let bob_again = json!({"id": "x", "email": "bob.martin@example.com"});
    assert!(matches!(admit(&t.store, common::config(), "webshop", bob_again).await, Admission::Queued(_)));

    // a month on, the quarantined pos payload is old too; webshop keeps everything
    let report = retention::purge(&privacy, &resolver(), now + 31 * 86_400_000).await.unwrap();
    assert_eq!((report.quarantine_entries, report.profiles_erased), (1, 1), "{report:?}");
    let left: Vec<String> = t.store.quarantined(None, 0, 10).await.unwrap().into_iter().map(|e| e.source).collect();
    assert_eq!(left, vec!["webshop"]);
    assert!(t.store.record_by_source_id("webshop", "ann-new").await.unwrap().is_some());
}

/// Names are weighed by how common they are among the stored records; a purged (or erased)
/// record leaves those counts too.
async fn purged_records_stop_counting_towards_how_common_a_name_is(t: TestStore) {
    let config = pos_kept_for_30_days();
    let now = now_ms();
    let givens = ["Bruno", "Chloe", "David", "Emile", "Fanny", "Gael", "Hugo", "Ines", "Jules", "Karim"];
    let martins: Vec<CanonicalRecord> = (0..400)
        .map(|i| {
            let card = format!("M-{i}");
            let martin = record("pos", &card, &[("givenName", givens[i % 10]), ("familyName", "Martin"), ("identifiers.loyaltyId", &card)]);
            at(martin, now - 31 * 86_400_000)
        })
        .collect();
    t.store.enqueue(&martins).await.unwrap();
    drain(&t.store).await;
    let store = &t.store;
    // Anna Martin again and again, from cards that say nothing: one more namesake each time
    let namesake = |id: &'static str| async move {
        store.enqueue(&[at(record("webshop", id, &[("givenName", "Anna"), ("familyName", "Martin"), ("identifiers.loyaltyId", id)]), now)]).await.unwrap();
        drain(store).await;
        let stored = store.record_by_source_id("webshop", id).await.unwrap().unwrap();
        let open = store.reviews_of_records(&[stored.id]).await.unwrap().into_iter().filter(|r| r.status == "open").count();
        (stored.profile_id, open)
    };
    let (a, _) = namesake("a").await;
    let (b, reviews) = namesake("b").await;
    assert_ne!(a, b);
    assert_eq!(reviews, 0, "two namesakes among 400 Martins are no question");

    let report = retention::purge(&privacy(&t.store, config), &resolver(), now).await.unwrap();
    assert_eq!(report.records, 400);
    let (c, reviews) = namesake("c").await;
    assert!(c != a && c != b);
    assert_eq!(reviews, 2, "with the Martins gone, a shared Martin is worth a look");
}
