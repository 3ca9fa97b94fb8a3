//! HTTP intake over a real socket, on SQLite and PostgreSQL.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{INTAKE_KEY, TestStore, servers};
use serde_json::{Value, json};

on_both_stores!(
    intake_accepts_validates_and_absorbs,
    intake_formats_and_auth,
    concurrent_requests_are_each_answered_with_their_own_ids,
    a_failed_group_commit_fails_every_request_in_it,
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
