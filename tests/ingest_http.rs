//! HTTP intake over a real socket, on SQLite and PostgreSQL.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cdp_operator::runtime::ops::{self, Metrics};
use cdp_operator::crd::source::InvalidValuePolicy;
use cdp_operator::ingest::{IngestState, router};
use cdp_operator::matcher::Resolver;
use cdp_operator::pipeline::PipelineConfig;
use common::{INTAKE_KEY, TestStore, servers};
use serde_json::{Value, json};

on_both_stores!(
    intake_accepts_validates_and_absorbs,
    intake_formats_and_auth,
    concurrent_requests_are_each_answered_with_their_own_ids,
    a_failed_group_commit_fails_every_request_in_it,
    values_and_ids_over_their_limit_are_refused_naming_the_field,
    a_source_keeping_invalid_values_keeps_a_long_one_out_of_matching,
    an_event_id_resent_with_other_content_is_a_conflict,
    an_invalid_record_resent_is_one_quarantine_entry,
);

async fn post(url: &str, key: &str, content_type: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn intake_accepts_validates_and_absorbs(t: TestStore) {
    let (ingest, _) = servers(&t.store).await;
    let url = format!("{ingest}/v1/sources/webshop/records");
    let one = json!({"id": "e1", "givenName": "Ann", "email": "ann@example.com"});
    let (status, body) = post(&url, INTAKE_KEY, "application/json", one.to_string()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"][0]["duplicate"], false);
    let intake_id = body["accepted"][0]["intakeId"].as_i64().unwrap();
    // durably queued before the answer
    assert_eq!(t.store.counts().await.unwrap().queued, 1);

    // a batch with a redelivery and two invalid records
    let batch = json!([
        {"id": "e1", "givenName": "Ann", "email": "ann@example.com"},
        {"id": "e2", "email": "not-an-email", "phone": "12", "birthDate": "1990-02-31"},
        {"id": "e3", "phone": "06 12 34 56 78", "identifiers": {"loyaltyId": "L9"}},
        {"givenName": "Nobody"}
    ]);
    let (status, body) = post(&url, INTAKE_KEY, "application/json; charset=utf-8", batch.to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let accepted = body["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0]["intakeId"].as_i64().unwrap(), intake_id);
    assert_eq!(accepted[0]["duplicate"], true);
    assert_eq!(accepted[1]["duplicate"], false);
    let details = body["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 2);
    assert_eq!(details[0]["index"], 1);
    let fields: Vec<&str> = details[0]["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["birthDate", "email", "phone", "email|phone|identifiers.loyaltyId"]);
    assert_eq!(details[1]["errors"][0]["field"], "id");
    // kept in quarantine, with every reason
    let quarantined = t.store.quarantined(Some("webshop"), 0, 10).await.unwrap();
    assert_eq!(quarantined.len(), 2);
    assert_eq!(quarantined[0].errors.len(), 4);
    assert_eq!(quarantined[0].payload["email"], "not-an-email");
    assert_eq!(t.store.counts().await.unwrap().queued, 2);
}

async fn an_event_id_resent_with_other_content_is_a_conflict(t: TestStore) {
    let (ingest, _) = servers(&t.store).await;
    let url = format!("{ingest}/v1/sources/webshop/records");
    let send = |body: String| post(&url, INTAKE_KEY, "application/json", body);
    let (status, body) = send(json!({"id": "c1", "givenName": "Ann", "email": "ann@example.com"}).to_string()).await;
    assert_eq!(status, 202, "{body}");
    let first = body["accepted"][0]["intakeId"].as_i64().unwrap();
    // the same payload, its fields in another order: a redelivery, absorbed
    let (status, body) = send(r#"{"email": "ann@example.com", "givenName": "Ann", "id": "c1"}"#.into()).await;
    assert_eq!((status, &body["accepted"][0]["duplicate"]), (202, &json!(true)), "{body}");
    // other content under the same id is not taken, and the answer says so
    let conflicting = json!({"id": "c1", "givenName": "Anna", "email": "ann@example.com"});
    let (status, body) = send(conflicting.to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "event_id_conflict");
    let error = &body["error"]["details"][0]["errors"][0];
    assert_eq!((&error["field"], &error["code"]), (&json!("id"), &json!("eventIdConflict")), "{body}");
    assert!(error["message"].as_str().unwrap().contains(&first.to_string()), "{body}");
    // in a batch, the new record is queued and the conflict reported beside it
    let (status, body) = send(json!([conflicting, {"id": "c2", "email": "bob@example.com"}]).to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["accepted"][0]["index"], 1);
    assert_eq!(body["error"]["details"][0]["index"], 0);
    // still told apart once the first delivery is resolved and its queued payload dropped
    common::worker(&t.store, common::resolver(), "w").drain().await.unwrap();
    assert_eq!(send(conflicting.to_string()).await.0, 409);
    assert_eq!(send(json!({"id": "c1", "givenName": "Ann", "email": "ann@example.com"}).to_string()).await.0, 202);
    let stored = t.store.record_by_source_id("webshop", "c1").await.unwrap().unwrap();
    assert_eq!(stored.attributes["givenName"], "Ann", "the first delivery stands");
}

async fn an_invalid_record_resent_is_one_quarantine_entry(t: TestStore) {
    let (ingest, api) = servers(&t.store).await;
    let url = format!("{ingest}/v1/sources/webshop/records");
    let invalid = json!({"id": "q1", "email": "not-an-email"});
    let mut ids = BTreeSet::new();
    for body in [invalid.to_string(), json!([invalid, invalid]).to_string(), invalid.to_string()] {
        let (status, body) = post(&url, INTAKE_KEY, "application/json", body).await;
        assert_eq!(status, 422, "{body}");
        for detail in body["error"]["details"].as_array().unwrap() {
            ids.insert(detail["quarantineId"].as_i64().unwrap());
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(t.store.quarantined(Some("webshop"), 0, 10).await.unwrap().len(), 1);
    // other content is an entry of its own
    post(&url, INTAKE_KEY, "application/json", json!({"id": "q1", "email": "still-not"}).to_string()).await;
    assert_eq!(t.store.quarantined(Some("webshop"), 0, 10).await.unwrap().len(), 2);
    // an entry deleted and its payload sent again: kept again, under a new id
    let id = *ids.first().unwrap();
    let deleted = reqwest::Client::new()
        .delete(format!("{api}/v1/quarantine/{id}"))
        .bearer_auth(common::WRITE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let (_, body) = post(&url, INTAKE_KEY, "application/json", invalid.to_string()).await;
    assert_ne!(body["error"]["details"][0]["quarantineId"].as_i64().unwrap(), id);
}

async fn intake_formats_and_auth(t: TestStore) {
    let (ingest, _) = servers(&t.store).await;
    let url = format!("{ingest}/v1/sources/pos/records");
    let ndjson = "{\"id\": \"p1\", \"phone\": \"0612345678\"}\n\n{\"id\": \"p2\", \"email\": \"b@example.com\"}\n";
    let (status, body) = post(&url, INTAKE_KEY, "application/x-ndjson", ndjson.into()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"].as_array().unwrap().len(), 2);

    let (status, body) = post(&url, "wrong", "application/json", "{}".into()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = post(&url, INTAKE_KEY, "text/csv", "a,b".into()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (415, Some("unsupported_media_type")));
    let (status, body) = post(&url, INTAKE_KEY, "application/x-ndjson", "{\"id\": 1}\n{oops".into()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")));
    assert!(body["error"]["message"].as_str().unwrap().starts_with("line 2"));
    let (status, body) = post(&format!("{ingest}/v1/sources/nope/records"), INTAKE_KEY, "application/json", "{}".into()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));

    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{ingest}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{ingest}/readyz")).send().await.unwrap().status(), 200);
    let metrics = client.get(format!("{ingest}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("cdp_intake_records_total{source=\"pos\",outcome=\"accepted\"} 2"), "{metrics}");
    // intake documents itself, as the API does
    let doc: Value = client.get(format!("{ingest}/openapi.json")).send().await.unwrap().json().await.unwrap();
    let post = &doc["paths"]["/v1/sources/{source}/records"]["post"];
    for status in ["202", "401", "403", "413", "422"] {
        assert!(post["responses"][status].is_object(), "{status} is documented: {post}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object(), "{doc}");
}

/// Send every batch to `url` at once, each as its own request; the answers, in batch order.
async fn send_all(url: &str, batches: &[Value]) -> Vec<(u16, Value)> {
    let client = reqwest::Client::new();
    let requests = batches.iter().map(|batch| {
        let request = client.post(url).bearer_auth(INTAKE_KEY).json(batch);
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        })
    });
    let handles: Vec<_> = requests.collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.unwrap());
    }
    answers
}

async fn concurrent_requests_are_each_answered_with_their_own_ids(t: TestStore) {
    let (ingest, _) = servers(&t.store).await;
    let url = format!("{ingest}/v1/sources/webshop/records");
    // 300 requests for 60 records: each record sent by several requests at once (so within
    // one group and across groups), every tenth request sending a record twice itself
    let keys = |i: usize| {
        let (a, b) = (format!("r{}", i % 60), format!("r{}", (i * 7 + 3) % 60));
        if i.is_multiple_of(10) { vec![a.clone(), b, a] } else { vec![a, b] }
    };
    let batches: Vec<Value> =
        (0..300).map(|i| keys(i).iter().map(|k| json!({"id": k, "email": format!("{k}@example.com")})).collect()).collect();
    let answers = send_all(&url, &batches).await;

    let mut ids: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut queued: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 202, "{body}");
        let accepted = body["accepted"].as_array().unwrap();
        assert_eq!(accepted.len(), keys(i).len(), "{body}");
        for (index, (key, answer)) in keys(i).into_iter().zip(accepted).enumerate() {
            assert_eq!(answer["index"], index);
            ids.entry(key.clone()).or_default().insert(answer["intakeId"].as_i64().unwrap());
            *queued.entry(key).or_default() += usize::from(answer["duplicate"] == false);
        }
    }
    assert_eq!(ids.len(), 60);
    assert!(ids.values().all(|i| i.len() == 1), "every copy of a record names the one queued: {ids:?}");
    assert!(queued.values().all(|n| *n == 1), "exactly one copy of each is not a duplicate: {queued:?}");
    let by_id: BTreeMap<i64, String> = ids.iter().map(|(k, i)| (*i.first().unwrap(), k.clone())).collect();
    assert_eq!(by_id.len(), 60, "one queue row per record");
    // each id is the row holding that record, stored before the answer
    let items = t.store.claim("check", 1000, Duration::from_secs(60)).await.unwrap();
    let stored: BTreeMap<i64, String> = items.into_iter().map(|i| (i.id, i.record.source_record_id)).collect();
    assert_eq!(stored, by_id);
}

async fn a_failed_group_commit_fails_every_request_in_it(t: TestStore) {
    let (ingest, _) = servers(&t.store).await;
    let url = format!("{ingest}/v1/sources/pos/records");
    // each request: a valid record and an invalid one (to quarantine, in the same transaction)
    let batches: Vec<Value> =
        (0..40).map(|i| json!([{"id": format!("ok{i}"), "email": format!("p{i}@example.com")}, {"id": format!("bad{i}")}])).collect();
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&t.url).await.unwrap();
    sqlx::query("ALTER TABLE intake RENAME TO intake_away").execute(&admin).await.unwrap();
    for (status, body) in send_all(&url, &batches).await {
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("store_unavailable")), "{body}");
    }
    sqlx::query("ALTER TABLE intake_away RENAME TO intake").execute(&admin).await.unwrap();
    admin.close().await;
    let counts = t.store.counts().await.unwrap();
    assert_eq!((counts.queued, counts.quarantined), (0, 0), "nothing of a failed group is kept");
    // the sources deliver again: all of it is taken, nothing is a duplicate
    for (status, body) in send_all(&url, &batches).await {
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("validation_failed")), "{body}");
        assert_eq!(body["accepted"][0]["duplicate"], false);
        assert!(body["error"]["details"][0]["quarantineId"].is_i64());
    }
    let counts = t.store.counts().await.unwrap();
    assert_eq!((counts.queued, counts.quarantined), (40, 40));
}

/// The error list of the one record of a 422 answer, as (field, code, message).
fn field_errors(body: &Value) -> Vec<(String, String, String)> {
    let errors = body["error"]["details"][0]["errors"].as_array().unwrap();
    errors.iter().map(|e| [&e["field"], &e["code"], &e["message"]].map(|v| v.as_str().unwrap().to_string()).into()).collect()
}

async fn values_and_ids_over_their_limit_are_refused_naming_the_field(t: TestStore) {
    let (ingest, _) = servers(&t.store).await;
    let url = format!("{ingest}/v1/sources/webshop/records");
    let send = |record: Value| post(&url, INTAKE_KEY, "application/json", record.to_string());
    let megabyte = "x".repeat(1 << 20);
    let (status, body) = send(json!({"id": "e1", "givenName": megabyte, "email": "ann@example.com"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("validation_failed")), "{body}");
    assert_eq!(
        field_errors(&body),
        [("givenName".into(), "tooLong".into(), "givenName: 1048576 characters, longer than the limit of 100 characters".into())]
    );
    let (status, body) = send(json!({"id": "x".repeat(10_000), "email": "ann@example.com"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        field_errors(&body),
        [("id".into(), "tooLong".into(), "the record's id: 10000 characters, longer than the limit of 256 characters".into())]
    );
    // every attribute has a limit: one character over it is refused, naming the attribute
    let limits = [
        ("familyName", 100),
        ("email", 254),
        ("phone", 40),
        ("birthDate", 40),
        ("street", 200),
        ("postcode", 16),
        ("city", 100),
        ("identifiers.loyaltyId", 256),
    ];
    let batch: Vec<Value> = limits
        .iter()
        .enumerate()
        .map(|(i, (attribute, limit))| {
            let mut record = json!({"id": format!("a{i}"), "email": "ann@example.com"});
            let (parent, field) = attribute.split_once('.').map_or((None, *attribute), |(p, f)| (Some(p), f));
            let at = match parent {
                Some(p) => &mut record[p],
                None => &mut record,
            };
            at[field] = json!("x".repeat(limit + 1));
            record
        })
        .collect();
    let (status, body) = send(Value::Array(batch)).await;
    assert_eq!(status, 422, "{body}");
    for (i, (attribute, limit)) in limits.iter().enumerate() {
        let errors = &body["error"]["details"][i]["errors"];
        assert_eq!((errors[0]["field"].as_str(), errors[0]["code"].as_str()), (Some(*attribute), Some("tooLong")), "{body}");
        assert!(errors[0]["message"].as_str().unwrap().ends_with(&format!("the limit of {limit} characters")), "{errors}");
    }
    // kept in quarantine, as sent, to replay once the Source allows them
    let quarantined = t.store.quarantined(Some("webshop"), 0, 20).await.unwrap();
    assert_eq!(quarantined.len(), 2 + limits.len());
    assert_eq!(quarantined[0].payload["givenName"].as_str().map(str::len), Some(1 << 20));
    assert_eq!(t.store.counts().await.unwrap().queued, 0);
    // characters, not bytes: 100 two-byte letters and a 256-character id are within the limits
    let (status, body) = send(json!({"id": "é".repeat(256), "givenName": "é".repeat(100), "email": "ann@example.com"})).await;
    assert_eq!(status, 202, "{body}");
}

/// A platform whose `webshop` keeps invalid values and allows given names of 20 characters.
fn keeping_config() -> PipelineConfig {
    let mut config = common::config();
    let webshop = config.sources.iter_mut().find(|s| s.name == "webshop").unwrap();
    webshop.spec.validation.on_invalid_value = InvalidValuePolicy::Keep;
    webshop.spec.validation.max_length = [("givenName".to_string(), 20)].into();
    config
}

async fn a_source_keeping_invalid_values_keeps_a_long_one_out_of_matching(t: TestStore) {
    let config = keeping_config();
    let state = IngestState::new(&config, &common::secrets(), t.store.clone(), Metrics::new()).unwrap();
    let listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}/v1/sources/webshop/records", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router(state)).into_future());
    let send = |record: Value| post(&url, INTAKE_KEY, "application/json", record.to_string());

    let long = "Adelaide Augusta".repeat(2);
    let (status, body) = send(json!({"id": "e1", "givenName": "Ada", "familyName": "Lovelace", "email": "ada@example.com"})).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = send(json!({"id": "e2", "givenName": long, "familyName": "Lovelace", "email": "ada@example.com"})).await;
    assert_eq!(status, 202, "{body}");
    let warning = &body["accepted"][0]["warnings"][0];
    assert_eq!((warning["field"].as_str(), warning["code"].as_str()), (Some("givenName"), Some("tooLong")), "{body}");
    assert!(warning["message"].as_str().unwrap().ends_with("limit of 20 characters"), "{warning}");
    // even kept as sent, a value has a hard maximum
    let (status, body) = send(json!({"id": "e3", "givenName": "x".repeat(10_001), "email": "ada@example.com"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(field_errors(&body)[0].1, "tooLong");

    common::worker(&t.store, Arc::new(Resolver::new(&config).unwrap()), "w").drain().await.unwrap();
    let kept = t.store.record_by_source_id("webshop", "e2").await.unwrap().unwrap();
    assert_eq!(kept.attributes["givenName"], long, "stored as sent");
    assert!(!kept.normalised.contains_key("givenName"), "left out of matching");
    // the long name neither kept the records apart (a different given name would) nor reached the profile
    let first = t.store.record_by_source_id("webshop", "e1").await.unwrap().unwrap();
    assert_eq!(kept.profile_id, first.profile_id);
    let golden = t.store.profile(first.profile_id).await.unwrap().unwrap().golden.unwrap();
    assert_eq!(golden["attributes"]["givenName"]["display"], "Ada");
}

/// What the service answers to a request (no socket: a body over the limit is refused before
/// it is read whole, and a client still sending may see the connection close first).
async fn answer(app: axum::Router, uri: &str, body: Vec<u8>) -> (u16, Value) {
    use tower::ServiceExt;
    let request = http::Request::post(uri)
        .header("authorization", format!("Bearer {INTAKE_KEY}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_in_the_error_envelope() {
    let t = common::sqlite_store().await;
    let config = common::config();
    let ingest = router(IngestState::new(&config, &common::secrets(), t.store.clone(), Metrics::new()).unwrap());
    let records = format!("[{}]", vec![json!({"id": "e", "email": "ann@example.com"}).to_string(); 500_000].join(","));
    assert!(records.len() > 16 << 20);
    let (status, body) = answer(ingest, "/v1/sources/webshop/records", records.into_bytes()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{body}");
    assert_eq!(body["error"]["message"], "the request body is larger than the limit of 16 MiB (16777216 bytes)");
    assert_eq!(body["error"]["details"][0]["limitBytes"], 16 << 20);

    let api = cdp_operator::api::router(cdp_operator::api::ApiState::new(
        &config,
        t.store.clone(),
        Metrics::new(),
        common::resolver(),
        common::tokens(),
    ));
    let erasure = json!({"attribute": "email", "value": "ann@example.com", "reason": "x".repeat(2 << 20)});
    let (status, body) = answer(api, "/v1/erasures", erasure.to_string().into_bytes()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{body}");
    assert_eq!(body["error"]["message"], "the request body is larger than the limit of 2 MiB (2097152 bytes)");
}

/// A caller learns nothing without a key, not even which Sources exist; a key of another
/// Source is refused as such.
#[tokio::test]
async fn keys_are_checked_before_sources_are_named() {
    use tower::ServiceExt;
    let t = common::sqlite_store().await;
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let loaded = cdp_operator::local::load_platform(&samples, None).unwrap();
    let ingest = router(IngestState::new(&loaded.config, &loaded.secrets, t.store.clone(), Metrics::new()).unwrap());
    let key = |source: &str| {
        let http = loaded.config.source(source).unwrap().spec.delivery.http.clone().unwrap();
        loaded.secrets.get(&http.auth_secret_ref).unwrap()
    };
    let send = |path: &str, key: Option<String>| {
        let mut request = http::Request::post(path).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let app = ingest.clone();
        let request = request.body(axum::body::Body::from(r#"{"event_id":"k1","account":{"id":"C-1","email":"a@example.com"}}"#)).unwrap();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    for path in ["/v1/sources/webshop/records", "/v1/sources/no-such-source/records"] {
        let (status, body) = send(path, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{path}: {body}");
        let (status, _) = send(path, Some("a-guess".into())).await;
        assert_eq!(status, 401, "{path}: an unknown key");
    }
    let (status, body) = send("/v1/sources/webshop/records", Some(key("ticketing"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("ticketing"), "{body}");
    let (status, _) = send("/v1/sources/no-such-source/records", Some(key("webshop"))).await;
    assert_eq!(status, 404, "with a key, an unknown source is named as such");
    assert_eq!(send("/v1/sources/webshop/records", Some(key("webshop"))).await.0, 202);
}
