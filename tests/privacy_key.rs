//! The data plane takes the key of the identifier hashes from `CDP_PRIVACY_KEY` (a cluster
//! gives it from the platform's Secret) and keeps no copy of it in the store; run as a real
//! `cdp` process on SQLite and PostgreSQL.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestStore;

on_both_stores!(the_data_plane_hashes_with_the_key_of_its_environment);

const KEY: &str = "0f4c2a9e7b1d3c5e8a6f2b4d9c1e3a5f";

/// `cdp import` of two web-shop sign-ups into the store of `t`, with `key` in the environment.
fn import(t: &TestStore, key: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.ndjson");
    std::fs::write(
        &file,
        "{\"event_id\":\"e1\",\"account\":{\"id\":\"C-1\",\"email\":\"ann.lee@example.com\",\"given_name\":\"Ann\"}}\n\
         {\"event_id\":\"e2\",\"account\":{\"id\":\"C-2\",\"email\":\"bob.martin@example.com\",\"given_name\":\"Bob\"}}\n",
    )
    .unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let output = Command::new(env!("CARGO_BIN_EXE_cdp"))
        .args(["import", "-f", &samples.to_string_lossy(), "--source", "webshop", "--store", &t.url])
        .arg(&file)
        .env_remove("CDP_STORE_URL")
        .env("CDP_PRIVACY_KEY", key)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

async fn the_data_plane_hashes_with_the_key_of_its_environment(t: TestStore) {
    // intake checks every record against the suppression list with keyed hashes
    let (ok, out) = import(&t, KEY);
    assert!(ok && out.contains("accepted:   2"), "{out}");
    assert_eq!(t.store.privacy_secret_with(Some(KEY)).await.unwrap(), KEY, "the store took the key it was given");
    let missing = t.store.privacy_secret_with(None).await.unwrap_err().to_string();
    assert!(missing.contains("CDP_PRIVACY_KEY, which is not set"), "it made no key of its own: {missing}");

    let (ok, out) = import(&t, "another-key");
    assert!(!ok && out.contains("CDP_PRIVACY_KEY is not the key"), "another key is refused: {out}");
}
