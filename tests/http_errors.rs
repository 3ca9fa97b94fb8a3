//! Every error a service answers is in the one JSON envelope, `{"error": {"code", "message"}}`,
//! including those the HTTP framework makes itself: an unknown route, a method a route does
//! not take, a path id, query string or body its extractors refuse, a request target too long.

mod common;

use common::{READ_TOKEN, WRITE_TOKEN, servers, sqlite_store};
use serde_json::Value;

async fn enveloped(response: reqwest::Response, status: u16, code: &str) -> reqwest::header::HeaderMap {
    assert_eq!(response.status().as_u16(), status, "{response:?}");
    let headers = response.headers().clone();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{status} {code}: not JSON ({content_type}): {e}"));
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    headers
}

#[tokio::test]
async fn framework_errors_are_enveloped() {
    let t = sqlite_store().await;
    let (ingest, api) = servers(&t.store).await;
    let http = reqwest::Client::new();

    enveloped(http.get(format!("{api}/v1/nowhere")).bearer_auth(READ_TOKEN).send().await.unwrap(), 404, "not_found").await;
    let headers = enveloped(http.delete(format!("{api}/v1/review")).bearer_auth(WRITE_TOKEN).send().await.unwrap(), 405, "method_not_allowed").await;
    assert!(headers.contains_key("allow"), "405 names the methods allowed: {headers:?}");
    enveloped(http.get(format!("{api}/v1/review?limit=many")).bearer_auth(READ_TOKEN).send().await.unwrap(), 400, "bad_request").await;
    enveloped(http.post(format!("{api}/v1/review/first/approve")).bearer_auth(WRITE_TOKEN).send().await.unwrap(), 400, "bad_request").await;
    let not_json = http.post(format!("{api}/v1/profiles/p1/merge")).bearer_auth(WRITE_TOKEN).header("content-type", "application/json").body("{oops");
    enveloped(not_json.send().await.unwrap(), 400, "bad_request").await;
    let no_type = http.post(format!("{api}/v1/profiles/p1/merge")).bearer_auth(WRITE_TOKEN).body("{}");
    enveloped(no_type.send().await.unwrap(), 415, "unsupported_media_type").await;

    enveloped(http.get(format!("{ingest}/v1/sources/webshop/records")).send().await.unwrap(), 405, "method_not_allowed").await;
    let long = format!("{ingest}/v1/sources/webshop/records?{}", "x".repeat(20_000));
    enveloped(http.post(long).send().await.unwrap(), 414, "uri_too_long").await;
}
