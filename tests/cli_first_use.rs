//! The commands a new user types from the README, as written: `cdp import` into the data file
//! `cdp local` uses, then `cdp train` on the same file.

use std::path::Path;
use std::process::Command;

fn cdp(args: &[&str], dir: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cdp")).args(args).current_dir(dir).env_remove("CDP_STORE_URL").output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn import_then_train_on_the_local_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let mut lines = String::new();
    for i in 0..60 {
        let person = i % 20;
        lines.push_str(&format!(
            "{{\"event_id\":\"imp-{i}\",\"account\":{{\"id\":\"C-{person}\",\"email\":\"person{person}@example.com\",\"given_name\":\"Ann{person}\",\"family_name\":\"Lee{person}\"}}}}\n"
        ));
    }
    std::fs::write(dir.path().join("accounts.ndjson"), lines).unwrap();

    let samples = samples.to_string_lossy();
    let (ok, stdout, stderr) = cdp(&["import", "-f", &samples, "--source", "webshop", "accounts.ndjson"], dir.path());
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("accepted:   60"), "{stdout}");
    assert!(stdout.contains("matcher resolves them"), "it says what happens next: {stdout}");
    assert!(dir.path().join("cdp-local.db").exists(), "into the file cdp local uses by default");

    // cdp train reads the same file; an empty store says so rather than a connection error
    let (ok, _, stderr) = cdp(&["train", "--data", "empty.db"], dir.path());
    assert!(!ok && stderr.contains("holds no resolved records"), "{stderr}");
}
