//! What the feeds write to the log about an unreachable destination, on SQLite and
//! PostgreSQL: that it fails and how its events are retried, once; then that it recovered,
//! once; never a line per attempt. A binary of its own: it captures the process's log.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cdp_operator::runtime::ops::{self, Metrics, Secrets};
use cdp_operator::crd::SecretKeyRef;
use cdp_operator::feeds::{FeedsContext, WorkerOptions};
use cdp_operator::pipeline::NamedFeed;
use common::TestStore;

/// Every line logged by this process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The lines about `feed`, as JSON.
    fn lines_of(&self, feed: &str) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|l| l["fields"]["feed"] == feed).collect()
    }
}

/// The log as a service writes it (INFO and up), captured; installed before any store opens.
fn captured() -> Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let writer = log.clone();
        tracing_subscriber::fmt().json().with_env_filter("info").with_writer(move || writer.clone()).init();
        log
    })
    .clone()
}

/// Ten people's events go to `feed`, whose destination refuses connections for a few seconds
/// (retried every second), then comes up.
async fn an_unreachable_destination_is_logged_when_it_fails_and_when_it_recovers(t: TestStore, log: Captured, feed: &str) {
    // a port nothing listens on, until the receiver binds it
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let spec = format!(
        "platformRef: {{name: bench}}\n\
         destination:\n  webhook: {{url: 'http://{address}/hook', signingSecretRef: {{name: hooks, key: signing-key}}, allowInsecureHttp: true, timeoutSeconds: 1}}\n\
         events: [record.received]\nattributes: [givenName]\n\
         delivery: {{maxAttempts: 100, initialBackoffSeconds: 1, maxBackoffSeconds: 1}}\n"
    );
    let mut config = common::config();
    config.feeds = vec![NamedFeed { name: feed.into(), spec: serde_saphyr::from_str(&spec).unwrap() }];
    let secrets = Secrets::Values([(SecretKeyRef { name: "hooks".into(), key: "signing-key".into() }, "whsec".to_string())].into());
    let options = WorkerOptions { idle_poll: Duration::from_millis(100), ..WorkerOptions::default() };
    let ctx = FeedsContext::new(t.store.clone(), &Metrics::new(), options);
    let (_stop, shutdown) = ops::shutdown_channel();
    let _tasks = ctx.spawn(ctx.workers(&config, &secrets, None).unwrap(), &shutdown);
    let records: Vec<_> = (0..10)
        .map(|i| {
            let (email, phone) = (format!("p{i}@example.com"), format!("+336100000{i:02}"));
            common::record("pos", &format!("r{i}"), &[("givenName", "Ada"), ("familyName", "Lovelace"), ("email", &email), ("phone", &phone)])
        })
        .collect();
    t.store.enqueue(&records).await.unwrap();
    let resolver = Arc::new(cdp_operator::matcher::Resolver::new(&config).unwrap());
    common::worker(&t.store, resolver, "m").drain().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    let listener = ops::bind(address).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(|| async { "ok" })).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let backlog = t.store.feed_backlog(feed).await.unwrap();
        if backlog.unread == 0 && backlog.pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {backlog:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let lines = log.lines_of(feed);
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["fields"]["message"].as_str()).filter(|m| *m != "feed taken").collect();
    let failing = lines
        .iter()
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("destination failing")))
        .expect("the failure is logged");
    assert_eq!(
        failing["fields"]["retries"],
        "up to 100 attempts per event, 1 s apart at first, doubling up to 1 s, then the dead-letter list",
        "with how its events are retried"
    );
    assert_eq!(failing["fields"]["reason"], "connect");
    assert_eq!(messages.len(), 2, "one line when it fails, one when it recovers, for dozens of attempts: {messages:?}");
    assert!(messages[1].starts_with("destination recovered"), "{messages:?}");
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_unreachable_destination_is_logged_when_it_fails_and_when_it_recovers() {
        let log = super::captured();
        super::an_unreachable_destination_is_logged_when_it_fails_and_when_it_recovers(crate::common::sqlite_store().await, log, "down-sqlite").await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_unreachable_destination_is_logged_when_it_fails_and_when_it_recovers() {
        let log = super::captured();
        if let Some(store) = crate::common::postgres_store().await {
            super::an_unreachable_destination_is_logged_when_it_fails_and_when_it_recovers(store, log, "down-postgres").await;
        }
    }
}
