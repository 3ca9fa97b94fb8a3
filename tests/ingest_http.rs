//! HTTP intake over a real socket, on SQLite and PostgreSQL.

mod common;

use common::{INTAKE_KEY, TestStore, servers};
use serde_json::{Value, json};

on_both_stores!(intake_accepts_validates_and_absorbs, intake_formats_and_auth);

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
