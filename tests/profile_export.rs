//! Listing and export of golden profiles: `GET /v1/profiles` over a real socket, and the `cdp
//! export` binary writing NDJSON and Parquet from the store, read back, on SQLite and PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{Client, ERASE_TOKEN, READ_TOKEN, TestStore, WRITE_TOKEN, resolver, worker};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Value, json};

on_both_stores!(the_list_pages_filters_by_change_and_leaves_out_the_erased, export_writes_ndjson_and_parquet_without_the_erased);

/// Ada (two records, one with an SMS consent), Bob (one record), Cy (erased), and Dee and
/// Dee's namesake merged by hand (one profile with an alias). Returns each person's profile id.
async fn people(t: &TestStore, c: &Client) -> BTreeMap<&'static str, String> {
    c.send("webshop", json!({"id": "w-ada", "givenName": "Ada", "familyName": "Lovelace", "email": "ada@example.com", "consents": {"sms": "granted"}})).await;
    c.send("pos", json!({"id": "p-ada", "givenName": "ADA", "familyName": "LOVELACE", "email": "Ada@Example.com", "identifiers": {"loyaltyId": "L1"}})).await;
    c.send("pos", json!({"id": "p-bob", "givenName": "Bob", "familyName": "Marley", "email": "bob@example.com"})).await;
    c.send("webshop", json!({"id": "w-cy", "givenName": "Cy", "familyName": "Twombly", "email": "cy@example.com"})).await;
    c.send("webshop", json!({"id": "w-dee", "givenName": "Dee", "familyName": "Dee", "email": "dee@example.com"})).await;
    c.send("ticketing", json!({"id": "t-dee", "givenName": "Dee", "familyName": "Dee", "phone": "0611223344"})).await;
    worker(&t.store, resolver(), "w").drain().await.unwrap();
    let profile_of = async |source: &str, id: &str| {
        format!("p{}", t.store.record_by_source_id(source, id).await.unwrap().unwrap().profile_id)
    };
    let mut ids = BTreeMap::new();
    for (person, source, id) in [("ada", "webshop", "w-ada"), ("bob", "pos", "p-bob"), ("cy", "webshop", "w-cy"), ("dee", "webshop", "w-dee")] {
        ids.insert(person, profile_of(source, id).await);
    }
    assert_eq!(ids["ada"], profile_of("pos", "p-ada").await, "Ada's two records are one profile");
    let other_dee = profile_of("ticketing", "t-dee").await;
    if other_dee != ids["dee"] {
        let (status, merged) = c.post(&format!("/v1/profiles/{}/merge", ids["dee"]), WRITE_TOKEN, json!({"other": other_dee})).await;
        assert_eq!(status, 200, "{merged}");
        ids.insert("dee", merged["survivor"].as_str().unwrap().to_string());
    }
    let (status, report) = c.post("/v1/erasures", ERASE_TOKEN, json!({"profileId": ids["cy"], "reason": "subject-request"})).await;
    assert_eq!(status, 200, "{report}");
    ids
}

fn listed(page: &Value) -> Vec<String> {
    page["profiles"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

async fn the_list_pages_filters_by_change_and_leaves_out_the_erased(t: TestStore) {
    let c = Client::new(&t).await;
    let ids = people(&t, &c).await;

    let mut seen = Vec::new();
    let mut path = "/v1/profiles?limit=2".to_string();
    loop {
        let (status, page) = c.get(&path, READ_TOKEN).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["profiles"].as_array().unwrap().len() <= 2);
        seen.extend(listed(&page));
        match page["nextAfter"].as_str() {
            Some(after) => path = format!("/v1/profiles?limit=2&after={after}"),
            None => break,
        }
    }
    let mut expected = vec![ids["ada"].clone(), ids["bob"].clone(), ids["dee"].clone()];
    expected.sort_by_key(|id| id[1..].parse::<i64>().unwrap());
    assert_eq!(seen, expected, "every live profile once, in id order; the erased person is not listed");

    let (_, all) = c.get("/v1/profiles", READ_TOKEN).await;
    let dee = all["profiles"].as_array().unwrap().iter().find(|p| p["id"] == ids["dee"].as_str()).unwrap();
    assert_eq!(dee["aliases"].as_array().unwrap().len(), 1, "the merged-away id is an alias, not a profile: {dee}");
    assert_eq!(dee["recordCount"], 2);
    let ada = all["profiles"].as_array().unwrap().iter().find(|p| p["id"] == ids["ada"].as_str()).unwrap();
    assert_eq!(ada["golden"]["attributes"]["identifiers.loyaltyId"]["value"], "L1");

    // an incremental sync: only what changed since it last started
    let since = all["profiles"].as_array().unwrap().iter().map(|p| p["updatedAtMs"].as_i64().unwrap()).max().unwrap() + 1;
    let (_, none) = c.get(&format!("/v1/profiles?changedSince={since}"), READ_TOKEN).await;
    assert_eq!(listed(&none), Vec::<String>::new());
    c.send("pos", json!({"id": "p-bob-2", "givenName": "Bob", "familyName": "Marley", "email": "bob@example.com", "phone": "0699887766"})).await;
    worker(&t.store, resolver(), "w").drain().await.unwrap();
    let (_, changed) = c.get(&format!("/v1/profiles?changedSince={since}"), READ_TOKEN).await;
    assert_eq!(listed(&changed), vec![ids["bob"].clone()]);
    let rfc3339 = jiff::Timestamp::from_millisecond(since).unwrap().to_string();
    let (_, same) = c.get(&format!("/v1/profiles?changedSince={rfc3339}"), READ_TOKEN).await;
    assert_eq!(listed(&same), vec![ids["bob"].clone()], "an RFC 3339 instant means the same");

    // bad input is refused with the codes of the other lists; reading needs a token
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=501", "invalid_limit"),
        ("after=12", "invalid_id"),
        ("changedSince=yesterday", "invalid_query"),
    ] {
        let (status, body) = c.get(&format!("/v1/profiles?{query}"), READ_TOKEN).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    assert_eq!(c.get("/v1/profiles", "nope").await.0, 401);
    let doc: Value = c.http.get(format!("{}/openapi.json", c.api)).send().await.unwrap().json().await.unwrap();
    let params: Vec<&str> =
        doc["paths"]["/v1/profiles"]["get"]["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(params, ["changedSince", "after", "limit"]);
}

fn cdp_export(t: &TestStore, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cdp")).arg("export").arg("--store").arg(&t.url).args(args).output().unwrap();
    assert!(out.status.success(), "cdp export {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The rows of a Parquet file as JSON objects (column name → value).
fn parquet_rows(path: &std::path::Path) -> Vec<BTreeMap<String, Value>> {
    fn value(field: &Field) -> Value {
        match field {
            Field::Str(s) => json!(s),
            Field::Long(n) | Field::TimestampMillis(n) => json!(n),
            Field::Bool(b) => json!(b),
            Field::ListInternal(list) => Value::Array(list.elements().iter().map(value).collect()),
            other => panic!("unexpected Parquet field {other:?}"),
        }
    }
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| row.unwrap().get_column_iter().map(|(name, field)| (name.clone(), value(field))).collect())
        .collect()
}

async fn export_writes_ndjson_and_parquet_without_the_erased(t: TestStore) {
    let c = Client::new(&t).await;
    let ids = people(&t, &c).await;
    let mut live = vec![ids["ada"].clone(), ids["bob"].clone(), ids["dee"].clone()];
    live.sort_by_key(|id| id[1..].parse::<i64>().unwrap());

    // NDJSON on standard output: profiles only
    let lines: Vec<Value> = cdp_export(&t, &[]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let exported: Vec<&str> = lines.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(exported, live, "every golden profile, the erased person left out");
    assert!(lines.iter().all(|p| p.get("records").is_none() && p.get("consents").is_none()));
    let text = lines.iter().map(Value::to_string).collect::<String>();
    assert!(!text.contains("Twombly") && !text.contains("cy@example.com"), "nothing of the erased person");

    // with records and consents, to a file
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profiles.ndjson");
    cdp_export(&t, &["--records", "--consents", "--output", file.to_str().unwrap()]);
    let lines: Vec<Value> = std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ada = lines.iter().find(|p| p["id"] == ids["ada"].as_str()).unwrap();
    let sources: Vec<&str> = ada["records"].as_array().unwrap().iter().map(|r| r["sourceRecordId"].as_str().unwrap()).collect();
    assert_eq!(sources, ["w-ada", "p-ada"]);
    assert_eq!(ada["golden"]["attributes"]["email"]["value"], "ada@example.com");
    assert_eq!(ada["consents"]["current"]["sms"]["state"], "granted");
    assert_eq!(ada["records"][1]["attributes"]["identifiers.loyaltyId"], "L1");
    let dee = lines.iter().find(|p| p["id"] == ids["dee"].as_str()).unwrap();
    assert_eq!((dee["aliases"].as_array().unwrap().len(), dee["records"].as_array().unwrap().len()), (1, 2));

    // Parquet tables, read back with the same crate
    let tables = dir.path().join("parquet");
    cdp_export(&t, &["--format", "parquet", "--records", "--consents", "--output", tables.to_str().unwrap()]);
    let profiles = parquet_rows(&tables.join("profiles.parquet"));
    let ids_in: Vec<&str> = profiles.iter().map(|p| p["profile_id"].as_str().unwrap()).collect();
    assert_eq!(ids_in, live);
    let by_id = |id: &str| profiles.iter().find(|p| p["profile_id"] == id).unwrap().clone();
    assert_eq!(by_id(&ids["dee"])["aliases"], dee["aliases"]);
    assert_eq!(by_id(&ids["bob"])["aliases"], json!([]));
    assert_eq!(by_id(&ids["ada"])["updated_at"], ada["updatedAtMs"]);

    let attributes = parquet_rows(&tables.join("attributes.parquet"));
    let ada_email = attributes.iter().find(|a| a["profile_id"] == ids["ada"].as_str() && a["attribute"] == "email").unwrap();
    assert_eq!(ada_email["value"], "ada@example.com");
    assert_eq!(ada_email["rule"], ada["golden"]["attributes"]["email"]["rule"]);
    let golden_values: usize = lines.iter().map(|p| p["golden"]["attributes"].as_object().unwrap().len()).sum();
    assert_eq!(attributes.len(), golden_values, "one row per golden attribute");

    let records = parquet_rows(&tables.join("records.parquet"));
    assert_eq!(records.len(), 5, "Ada's two, Bob's one and Dee's two: {records:?}");
    let loyal = records.iter().find(|r| r["source_record_id"] == "p-ada").unwrap();
    let sent: Value = serde_json::from_str(loyal["attributes"].as_str().unwrap()).unwrap();
    assert_eq!(sent["identifiers.loyaltyId"], "L1");
    let consents = parquet_rows(&tables.join("consents.parquet"));
    assert_eq!(consents.len(), 1, "{consents:?}");
    assert_eq!((consents[0]["purpose"].as_str(), consents[0]["state"].as_str(), &consents[0]["current"]), (Some("sms"), Some("granted"), &json!(true)));
    for table in [&profiles, &attributes, &records, &consents] {
        assert!(!format!("{table:?}").contains("Twombly"), "nothing of the erased person");
    }

    // an incremental export, and a Parquet export needs its directory
    let since = lines.iter().map(|p| p["updatedAtMs"].as_i64().unwrap()).max().unwrap() + 1;
    assert_eq!(cdp_export(&t, &["--changed-since", &since.to_string()]), "");
    let out = Command::new(env!("CARGO_BIN_EXE_cdp")).args(["export", "--format", "parquet", "--store", &t.url]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--output DIR"));
}
