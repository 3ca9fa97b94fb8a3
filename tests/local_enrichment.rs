//! An Enricher declared in YAML, on `cdp local`: the samples plus `config/enrichment/`'s
//! address enricher, pointed at `cdp enricher-demo`, both run as the README runs them. A
//! web-shop sign-up is matched with its address standardised, and says which call wrote it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Running, eventually, free_address};
use serde_json::{Value, json};




/// A GET of the API with the samples' CRM token, once it answers 200.
async fn read(http: &reqwest::Client, api: &str, path: String) -> Option<Value> {
    let response = http.get(format!("http://{api}{path}")).bearer_auth("crm-2f6c1d0e9a7b4c58").send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    response.json::<Value>().await.ok()
}

#[tokio::test]
async fn an_enricher_declared_in_yaml_standardises_addresses_on_cdp_local() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cdp = env!("CARGO_BIN_EXE_cdp");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root.join("config/samples")).unwrap().chain(std::fs::read_dir(root.join("config/enrichment")).unwrap()) {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let (demo, ingest, api) = (free_address(), free_address(), free_address());
    let enricher = dir.path().join("address-enricher.yaml");
    let yaml = std::fs::read_to_string(&enricher).unwrap().replace("127.0.0.1:9998", &demo);
    std::fs::write(&enricher, yaml).unwrap();

    let _demo = Running(
        Command::new(cdp)
            .args(["enricher-demo", "--listen", &demo, "--secret", "whsec-address-5e1d7c3b9a2f4860"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let data = dir.path().join("local.db");
    let _local = Running(
        Command::new(cdp)
            .args(["local", "-f"])
            .arg(dir.path())
            .args(["--data"])
            .arg(&data)
            .args(["--listen-ingest", &ingest, "--listen-api", &api])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let signup = json!({
        "event_id": "evt-enrich-1",
        "account": {"id": "C-77", "email": "ada.lovelace@example.com", "given_name": "Ada", "family_name": "Lovelace"},
        "address": {"street": "12 r. de la Paix", "postcode": "75 002", "city": "Paris"},
    });
    let accepted = eventually("intake", || async {
        let response = http
            .post(format!("http://{ingest}/v1/sources/webshop/records"))
            .bearer_auth("webshop-9d2e4f6a8b0c1d35")
            .json(&signup)
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    })
    .await;
    assert_eq!(accepted, 202);

    let profile = eventually("the profile", || async {
        let found = read(&http, &api, "/v1/profiles/lookup?email=ada.lovelace@example.com".into()).await?;
        found["profiles"].get(0).cloned()
    })
    .await;
    let street = &profile["golden"]["attributes"]["street"];
    assert_eq!(street["display"], "12 Rue de la Paix", "{profile}");
    assert_eq!(profile["golden"]["attributes"]["city"]["display"], "PARIS");
    let explanation = read(&http, &api, format!("/v1/profiles/{}/explanation", profile["id"].as_str().unwrap())).await.unwrap();
    let enriched = &explanation["links"][0]["enrichedBeforeMatching"][0];
    assert_eq!(enriched["enricher"], "address", "{explanation}");
    assert!(enriched["callId"].as_str().unwrap().starts_with("address-"), "{enriched}");
}
