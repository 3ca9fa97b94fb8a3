//! `cdp local` loads the shipped sample directories through the operator's compile step,
//! and every sample Source accepts the example payload the start-up banner shows.

use std::path::Path;

use cdp_operator::ingest::mapping::map_record;
use cdp_operator::ingest::normalise_flags;
use cdp_operator::local::{load_platform, sample_payload};

fn dir(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name)
}

#[test]
fn samples_load_and_their_example_payloads_validate() {
    let loaded = load_platform(&dir("samples"), None).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = &loaded.config;
    assert_eq!(config.platform, "retail");
    assert!(config.sources.len() >= 3);
    let tokens = config.api_tokens.as_ref().expect("the sample platform declares API tokens");
    assert!(loaded.secrets.get(tokens).is_ok());
    for source in &config.sources {
        if let Some(http) = &source.spec.delivery.http {
            assert!(loaded.secrets.get(&http.auth_secret_ref).is_ok(), "{} key", source.name);
        }
        let payload = sample_payload(source);
        let record = map_record(source, normalise_flags(config), &payload, cdp_operator::store::now_ms());
        assert!(record.is_ok(), "{}: {payload} -> {record:?}", source.name);
    }
}

#[test]
fn febrl_sample_loads_and_maps_a_row() {
    let loaded = load_platform(&dir("febrl"), None).unwrap();
    let source = loaded.config.source("febrl").unwrap();
    let headers: Vec<String> = "record_id,entity_id,given_name,surname,street_number,address_1,address_2,suburb,postcode,state,date_of_birth,soc_sec_id"
        .split(',')
        .map(str::to_string)
        .collect();
    let row = csv::StringRecord::from(vec![
        "rec-1496-org", "1496", "mitchell", "green", "7", "wallaby place", "delmar", "cleveland", "2119", "sa", "19560409", "1804974",
    ]);
    let payload = cdp_operator::ingest::mapping::row_to_json(&headers, &row);
    let record = map_record(source, normalise_flags(&loaded.config), &payload, cdp_operator::store::now_ms()).unwrap().record;
    assert_eq!(record.source_record_id, "rec-1496-org");
    assert_eq!(record.attributes["birthDate"], "19560409");
    assert_eq!(record.attributes["street"], "wallaby place");
}
