//! `cdp ingest` as a pod runs it, stopped as Kubernetes stops a pod in a rolling update:
//! on SIGTERM it first says it is not ready, so that its Service stops sending it new
//! connections, while it still accepts records; then it exits cleanly.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cdp_operator::runtime::ops::Secrets;
use cdp_operator::local::load_platform;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn ingest_drains_before_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load_platform(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples"), None).unwrap();
    let config = dir.path().join("pipeline.json");
    std::fs::write(&config, serde_json::to_string(&loaded.config).unwrap()).unwrap();
    // the Secrets as the workloads mount them: <dir>/<secret>/<key>
    let Secrets::Values(values) = &loaded.secrets else { panic!("a directory's secrets are values") };
    for (secret, value) in values {
        std::fs::create_dir_all(dir.path().join("secrets").join(&secret.name)).unwrap();
        std::fs::write(dir.path().join("secrets").join(&secret.name).join(&secret.key), value).unwrap();
    }
    let key = values.iter().find(|(s, _)| s.name == "webshop-intake").map(|(_, v)| v.clone()).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdp"))
        .args(["ingest", "--config", &config.to_string_lossy(), "--listen", &format!("127.0.0.1:{port}")])
        .env("CDP_STORE_URL", format!("sqlite:{}", dir.path().join("store.db").display()))
        .env("CDP_SECRETS_DIR", dir.path().join("secrets"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let ready = || async { http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready().await != 200 {
        assert!(Instant::now() < deadline, "cdp ingest not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stopped = Instant::now();
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(3);
    while ready().await != 503 {
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = serde_json::json!({"event_id": "late-1", "account": {"id": "C-9", "email": "late@example.com"}});
    let answer = http.post(format!("{base}/v1/sources/webshop/records")).bearer_auth(&key).json(&record).send().await.unwrap();
    assert_eq!(answer.status(), 202, "a record sent while draining is still accepted");

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(20), "cdp ingest did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    assert!(stopped.elapsed() >= Duration::from_secs(4), "it stopped after {:?}, before its Service could let it go", stopped.elapsed());
}
