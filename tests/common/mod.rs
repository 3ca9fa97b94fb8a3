//! Shared by the data-plane integration tests: fresh stores on SQLite (a temporary file) and
//! PostgreSQL (a scratch database on the server `CDP_TEST_POSTGRES_URL` names, started by
//! `scripts/with-postgres.sh`), a test platform, and HTTP servers on real sockets.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;

use cdp_operator::runtime::auth::Tokens;
use cdp_operator::runtime::ops::{self, Metrics, Secrets};
use cdp_operator::crd::SecretKeyRef;
use cdp_operator::identity::CanonicalRecord;
use cdp_operator::matcher::{Resolver, Worker, WorkerOptions};
use cdp_operator::pipeline::PipelineConfig;
use cdp_operator::store::{Store, scratch_database};

/// A fresh, empty store and the URL that opens it again (for separate pools).
pub struct TestStore {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// Warnings (e.g. a failed resolution) show in the output of a failing test.
fn init_logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
}

pub async fn sqlite_store() -> TestStore {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("store.db").display());
    TestStore { store: Store::open(&url).await.unwrap(), url, _dir: Some(dir) }
}

/// A scratch PostgreSQL database, or `None` (test skipped) when no server is configured.
/// In CI (`CI=true`) a missing server fails the test instead of skipping it.
pub async fn postgres_store() -> Option<TestStore> {
    init_logs();
    let Ok(server) = std::env::var("CDP_TEST_POSTGRES_URL") else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CDP_TEST_POSTGRES_URL is not set: run the tests through scripts/with-postgres.sh (after scripts/test-deps.sh)");
        }
        eprintln!("skipped: CDP_TEST_POSTGRES_URL is not set (run through scripts/with-postgres.sh)");
        return None;
    };
    let url = scratch_database(&server, "cdp_test").await.unwrap();
    Some(TestStore { store: Store::open(&url).await.unwrap(), url, _dir: None })
}

/// Generate `sqlite` and `postgres` test modules running the same async cases, each case an
/// `async fn(TestStore)` in the including file.
#[macro_export]
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case($crate::common::sqlite_store().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(store) = $crate::common::postgres_store().await {
                        super::$case(store).await;
                    }
                }
            )*
        }
    };
}

pub const INTAKE_KEY: &str = "test-intake-key";
pub const READ_TOKEN: &str = "test-read";
pub const WRITE_TOKEN: &str = "test-write";
pub const ERASE_TOKEN: &str = "test-erase";

/// The benchmark's platform: sources `pos`, `ticketing`, `webshop` whose payload fields are
/// canonical attribute names (`identifiers.loyaltyId` nested), FR phones, the default model.
pub fn config() -> PipelineConfig {
    let mut config = cdp_operator::bench::bench_config();
    for s in &mut config.sources {
        s.spec.validation.require_any_of = vec!["email".into(), "phone".into(), "identifiers.loyaltyId".into()];
        for purpose in ["consents.sms", "consents.email_marketing"] {
            s.spec.mapping.push(cdp_operator::crd::source::FieldMapping { from: purpose.into(), to: purpose.into() });
        }
    }
    config
}

pub fn secrets() -> Secrets {
    Secrets::Values([(SecretKeyRef { name: "bench".into(), key: "token".into() }, INTAKE_KEY.to_string())].into())
}

pub fn tokens() -> Tokens {
    Tokens::parse(&format!("reader read {READ_TOKEN}\nwriter read,write {WRITE_TOKEN}\neraser read,erase {ERASE_TOKEN}\n")).unwrap()
}

pub fn record(source: &str, id: &str, attributes: &[(&str, &str)]) -> CanonicalRecord {
    CanonicalRecord {
        source: source.into(),
        source_record_id: id.into(),
        observed_at_ms: 1_700_000_000_000,
        attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

pub fn resolver() -> Arc<Resolver> {
    Arc::new(Resolver::new(&config()).unwrap())
}

pub fn worker(store: &Store, resolver: Arc<Resolver>, name: &str) -> Worker {
    worker_claiming(store, resolver, name, 16)
}

/// A worker claiming at most `batch` records at a time.
pub fn worker_claiming(store: &Store, resolver: Arc<Resolver>, name: &str, batch: i64) -> Worker {
    Worker::new(store.clone(), resolver, Metrics::new(), name.into(), WorkerOptions { batch, ..WorkerOptions::default() })
}

/// Ingest and API servers on ephemeral local ports; returns their base URLs.
pub async fn servers(store: &Store) -> (String, String) {
    let metrics = Metrics::new();
    let config = config();
    let ingest = cdp_operator::ingest::IngestState::new(&config, &secrets(), store.clone(), metrics.clone()).unwrap();
    let api = cdp_operator::api::ApiState::new(&config, store.clone(), metrics.clone(), resolver(), tokens());
    let ingest_listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let api_listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let urls = (
        format!("http://{}", ingest_listener.local_addr().unwrap()),
        format!("http://{}", api_listener.local_addr().unwrap()),
    );
    // the tests' runtime ends with the test; the servers go with it
    let (trigger, shutdown) = ops::shutdown_channel();
    std::mem::forget(trigger);
    tokio::spawn(ops::serve_with_ops(ingest_listener, cdp_operator::ingest::router(ingest), store.clone(), metrics.clone(), shutdown.clone()));
    tokio::spawn(ops::serve_with_ops(api_listener, cdp_operator::api::router(api), store.clone(), metrics, shutdown));
    urls
}

/// HTTP client of the ingest and API servers of a test store.
pub struct Client {
    pub http: reqwest::Client,
    pub ingest: String,
    pub api: String,
}

impl Client {
    pub async fn new(t: &TestStore) -> Client {
        let (ingest, api) = servers(&t.store).await;
        Client { http: reqwest::Client::new(), ingest, api }
    }

    /// Send records to a source's intake; the response body.
    pub async fn send(&self, source: &str, records: serde_json::Value) -> serde_json::Value {
        self.send_status(source, records).await.1
    }

    /// Send records to a source's intake; the response status and body.
    pub async fn send_status(&self, source: &str, records: serde_json::Value) -> (u16, serde_json::Value) {
        let url = format!("{}/v1/sources/{source}/records", self.ingest);
        let response = self.http.post(url).bearer_auth(INTAKE_KEY).json(&records).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(format!("{}{path}", self.api)).bearer_auth(token).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post(&self, path: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.post(format!("{}{path}", self.api)).bearer_auth(token).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// A local address no server listens on yet.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A child process (a `cdp` subcommand), killed when dropped.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait (up to a minute) until `check` gives a value.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
