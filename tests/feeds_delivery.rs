//! Feeds end to end, on SQLite and PostgreSQL: records resolved by the matcher, events read
//! from the outbox, delivered to a real HTTP receiver in the test (signatures checked there)
//! or to librdkafka's mock cluster; retries, dead letters and their API, isolation of a failing
//! feed, consent, triggers and the allow-list; idempotency keys, takeover after a crash, the
//! lease a replica cut off from the store gives up, and shutdown with sends in flight.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use cdp_operator::runtime::ops::{self, Metrics, Secrets};
use cdp_operator::crd::SecretKeyRef;
use cdp_operator::crd::source::FieldMapping;
use cdp_operator::feeds::keys::EventKeys;
use cdp_operator::feeds::sign::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify};
use cdp_operator::feeds::{FeedsContext, LoadBoard, WorkerOptions};
use cdp_operator::pipeline::{NamedFeed, PipelineConfig};
use cdp_operator::scaling::load::LoadReport;
use cdp_operator::store::{Backend, Store};
use common::TestStore;
use serde_json::{Value, json};

const SECRET: &str = "whsec-test-0123";

/// How the receiver answers on one path.
#[derive(Clone, Debug)]
enum Answer {
    Ok,
    /// Always this status.
    Status(u16),
    /// 500 once, on the next request (after recording it: a lost acknowledgement).
    FailOnce,
    /// Answer only after this long.
    Hang(Duration),
    /// Answer the next request only after this long, the ones after it at once.
    HangOnce(Duration),
}

#[derive(Clone, Debug)]
struct Got {
    path: String,
    key: String,
    signed: bool,
    status: u16,
    message: Value,
}

/// One request from its arrival to its answer, or to the sender dropping it.
#[derive(Clone, Debug)]
struct Span {
    key: String,
    arrived: Instant,
    ended: Option<Instant>,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Mutex<BTreeMap<String, Answer>>>,
    spans: Arc<Mutex<Vec<Span>>>,
}

/// Ends a request's span when its handler finishes or is dropped (the client went away).
struct SpanEnd(Arc<Mutex<Vec<Span>>>, usize);

impl Drop for SpanEnd {
    fn drop(&mut self) {
        self.0.lock().unwrap()[self.1].ended = Some(Instant::now());
    }
}

impl Receiver {
    fn answer(&self, path: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(path.to_string(), answer);
    }

    /// Requests to `path` that were acknowledged (2xx), in arrival order.
    fn acknowledged(&self, path: &str) -> Vec<Got> {
        self.got.lock().unwrap().iter().filter(|g| g.path == path && g.status == 200).cloned().collect()
    }

    fn all(&self, path: &str) -> Vec<Got> {
        self.got.lock().unwrap().iter().filter(|g| g.path == path).cloned().collect()
    }

    /// Every request that arrived, answered or not, in arrival order.
    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let signed = verify(SECRET.as_bytes(), &header(SIGNATURE_HEADER), &body, jiff::Timestamp::now().as_second(), 300).is_ok();
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_string();
    let answer = r.answers.lock().unwrap().get(&path).cloned().unwrap_or(Answer::Ok);
    let key = header(IDEMPOTENCY_HEADER);
    let _span = {
        let mut spans = r.spans.lock().unwrap();
        spans.push(Span { key: key.clone(), arrived: Instant::now(), ended: None });
        SpanEnd(r.spans.clone(), spans.len() - 1)
    };
    let status = match answer {
        Answer::Ok => 200,
        Answer::Status(s) => s,
        Answer::FailOnce => {
            r.answers.lock().unwrap().insert(path.clone(), Answer::Ok);
            500
        }
        Answer::Hang(d) => {
            tokio::time::sleep(d).await;
            200
        }
        Answer::HangOnce(d) => {
            r.answers.lock().unwrap().insert(path.clone(), Answer::Ok);
            tokio::time::sleep(d).await;
            200
        }
    };
    r.got.lock().unwrap().push(Got { path, key, signed, status, message });
    StatusCode::from_u16(status).unwrap()
}

/// A receiver on an ephemeral port; returns it and its base URL.
async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(receive).with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

fn hook_secret() -> SecretKeyRef {
    SecretKeyRef { name: "hooks".into(), key: "signing-key".into() }
}

fn kafka_secret() -> SecretKeyRef {
    SecretKeyRef { name: "kafka".into(), key: "bootstrap".into() }
}

fn feed(name: &str, yaml: &str) -> NamedFeed {
    let spec = format!("platformRef: {{name: bench}}\n{yaml}");
    NamedFeed { name: name.into(), spec: serde_saphyr::from_str(&spec).unwrap_or_else(|e| panic!("{name}: {e}")) }
}

fn webhook(base: &str, path: &str, extra: &str) -> String {
    format!(
        "destination:\n  webhook: {{url: '{base}{path}', signingSecretRef: {{name: hooks, key: signing-key}}, allowInsecureHttp: true, timeoutSeconds: 1}}\n{extra}"
    )
}

/// The test platform with `attributes.tier` and `consents.sms` mapped, and `feeds`.
fn config(feeds: Vec<NamedFeed>) -> PipelineConfig {
    let mut config = common::config();
    for s in &mut config.sources {
        for a in ["attributes.tier", "consents.sms"] {
            s.spec.mapping.push(FieldMapping { from: a.into(), to: a.into() });
        }
    }
    config.feeds = feeds;
    config
}

struct Running {
    load: LoadBoard,
    metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: ops::ShutdownTrigger,
}

impl Running {
    /// Stop as on Ctrl-C, and wait until every worker has.
    async fn stop(self) {
        self.stop.trigger();
        for task in self.tasks {
            task.await.unwrap();
        }
    }

    /// Stop as a kill -9 leaves the store: the workers vanish, their leases unreleased.
    fn crash(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn fast() -> WorkerOptions {
    WorkerOptions { idle_poll: Duration::from_millis(100), status_interval: Duration::from_millis(200), ..WorkerOptions::default() }
}

fn start_feeds(store: &Store, config: &PipelineConfig, secrets: &Secrets) -> Running {
    let metrics = Metrics::new();
    let ctx = FeedsContext::new(store.clone(), &metrics, fast());
    let (stop, shutdown) = ops::shutdown_channel();
    let workers = ctx.workers(config, secrets, None).unwrap();
    let (tasks, load) = ctx.spawn(workers, &shutdown);
    Running { load, metrics, tasks, stop }
}

fn secrets(extra: &[(SecretKeyRef, String)]) -> Secrets {
    let mut values: BTreeMap<SecretKeyRef, String> = [(hook_secret(), SECRET.to_string())].into();
    values.extend(extra.iter().cloned());
    Secrets::Values(values)
}

/// Resolve queued records with a matcher worker.
async fn resolve(store: &Store, config: &PipelineConfig, records: &[cdp_operator::identity::CanonicalRecord]) {
    store.enqueue(records).await.unwrap();
    let resolver = Arc::new(cdp_operator::matcher::Resolver::new(config).unwrap());
    common::worker(store, resolver, "m").drain().await.unwrap();
}

/// The outbox event each of `feed`'s idempotency keys stands for.
async fn event_ids_by_key(store: &Store, feed: &str) -> BTreeMap<String, i64> {
    let keys = EventKeys::new(store.privacy_secret().await.unwrap().as_bytes());
    store.events_after(0, 10_000).await.unwrap().iter().map(|e| (keys.key(feed, e.id), e.id)).collect()
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `feed` has read the whole outbox and owes nothing but dead letters.
async fn settled(store: &Store, feed: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = store.feed_backlog(feed).await.unwrap();
        if b.unread == 0 && b.pending == 0 && b.head > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "feed {feed} did not settle: {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn person(source: &str, id: &str, given: &str, extra: &[(&str, &str)]) -> cdp_operator::identity::CanonicalRecord {
    let mut attributes = vec![("givenName", given), ("familyName", "Lovelace"), ("email", "ada@example.com"), ("phone", "+33612345678")];
    attributes.extend_from_slice(extra);
    common::record(source, id, &attributes)
}

// ---- cases ----

/// Lag is what a feed still owes: before its first step, everything in the outbox (what the
/// scaler and the Feed's status read), not zero.
async fn a_feed_not_started_yet_owes_the_whole_outbox(t: TestStore) {
    let (_r, base) = receiver().await;
    let config = config(vec![feed("crm", &webhook(&base, "/crm", "events: [record.received]\nattributes: [givenName]\n"))]);
    resolve(&t.store, &config, &[person("pos", "p1", "Ada", &[])]).await;
    let before = t.store.feed_backlog("crm").await.unwrap();
    assert!(before.head > 0);
    assert_eq!((before.unread, before.pending, before.dead), (before.head, 0, 0), "{before:?}");
    assert!(before.oldest_ms.is_some(), "the oldest owed event has an age: {before:?}");
    let _feeds = start_feeds(&t.store, &config, &secrets(&[]));
    settled(&t.store, "crm").await;
    assert_eq!(t.store.feed_backlog("crm").await.unwrap().oldest_ms, None);
}

async fn ordered_signed_and_deduplicable(t: TestStore) {
    let (r, base) = receiver().await;
    let crm = feed(
        "crm",
        &webhook(&base, "/crm", "events: [profile.created, profile.updated, record.received]\nattributes: [givenName, familyName]\n"),
    );
    let config = config(vec![crm]);
    // one person: the tills do not know her family name, the web shop adds it (an update)
    let till = common::record("pos", "p1", &[("givenName", "Ada"), ("email", "ada@example.com"), ("phone", "+33612345678")]);
    let events = [till, person("webshop", "w1", "Ada", &[]), person("pos", "p2", "Ada", &[])];
    let _feeds = start_feeds(&t.store, &config, &secrets(&[]));
    resolve(&t.store, &config, &events[..1]).await;
    settled(&t.store, "crm").await;
    // the first event after these loses its acknowledgement once: it is sent again, and the
    // events after it (same profile) wait for it
    r.answer("/crm", Answer::FailOnce);
    resolve(&t.store, &config, &events[1..]).await;
    settled(&t.store, "crm").await;
    let flaky = r.all("/crm").iter().find(|g| g.status == 500).expect("one failed request").key.clone();

    let all = r.all("/crm");
    assert!(all.iter().all(|g| g.signed), "every request carries a valid signature");
    assert!(all.iter().all(|g| g.key == g.message["id"].as_str().unwrap()), "the idempotency key is the message's id");
    let retried: Vec<&Got> = all.iter().filter(|g| g.key == flaky).collect();
    assert_eq!(retried.len(), 2, "the unacknowledged event is sent again");
    assert_eq!(retried[0].message, retried[1].message, "a redelivery is the same message");
    // acknowledged, deduplicated by key: every event once, in outbox order (one profile)
    let mut keys = Vec::new();
    for g in r.acknowledged("/crm") {
        if !keys.contains(&g.key) {
            keys.push(g.key.clone());
        }
    }
    let outbox = t.store.events_after(0, 100).await.unwrap();
    let event_of = event_ids_by_key(&t.store, "crm").await;
    let acked: Vec<i64> = keys.iter().map(|k| event_of[k]).collect();
    let mut sorted = acked.clone();
    sorted.sort();
    assert_eq!(acked, sorted, "events of one profile arrive in order");
    let selected: Vec<i64> = outbox
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "profile.created" | "record.received"))
        .map(|e| e.id)
        .collect();
    assert!(selected.iter().all(|id| acked.contains(id)), "{selected:?} all delivered in {acked:?}");
    let kinds: Vec<String> = r.acknowledged("/crm").iter().map(|g| g.message["type"].as_str().unwrap().to_string()).collect();
    assert!(kinds.iter().any(|k| k == "profile.updated"), "name changes reach the CRM: {kinds:?}");
    for g in r.acknowledged("/crm") {
        let attributes: Vec<&String> = g.message["profile"].as_object().unwrap().keys().collect();
        assert!(attributes.iter().all(|a| *a == "givenName" || *a == "familyName"), "only allowed attributes: {attributes:?}");
        if let Some(changed) = g.message["data"].get("changed") {
            assert!(changed.as_object().unwrap().keys().all(|a| a == "givenName" || a == "familyName"));
        }
    }
}

async fn retries_dead_letters_and_replay(t: TestStore) {
    let (r, base) = receiver().await;
    r.answer("/down", Answer::Status(503));
    let hook = feed(
        "hook",
        &webhook(
            &base,
            "/down",
            "events: [record.received]\nattributes: [givenName]\ndelivery: {maxAttempts: 2, initialBackoffSeconds: 1, maxBackoffSeconds: 1}\n",
        ),
    );
    let config = config(vec![hook]);
    let running = start_feeds(&t.store, &config, &secrets(&[]));
    resolve(&t.store, &config, &[person("pos", "p1", "Ada", &[]), person("webshop", "w9", "Grace", &[("email", "grace@example.com"), ("familyName", "Hopper"), ("phone", "+33698765432")])]).await;

    let api = api_server(&t.store, &config).await;
    let client = reqwest::Client::new();
    let list = |after: i64| {
        let (client, api) = (client.clone(), api.clone());
        async move {
            client
                .get(format!("{api}/v1/feeds/hook/dead-letters?after={after}"))
                .bearer_auth(common::READ_TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let page = list(0).await;
        if page["deadLetters"].as_array().unwrap().len() == 2 {
            break page;
        }
        assert!(Instant::now() < deadline, "no dead letters: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = &dead["deadLetters"][0];
    assert_eq!(first["attempts"], 2);
    assert_eq!(first["lastError"], "receiver answered 503");
    assert_eq!(r.all("/down").len(), 4, "two attempts for each of the two events");
    let event_id = first["eventId"].as_i64().unwrap();
    let one: Value = client
        .get(format!("{api}/v1/feeds/hook/dead-letters/{event_id}"))
        .bearer_auth(common::READ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["message"]["type"], "record.received");
    // golden values are the normalised ones
    assert_eq!(one["message"]["profile"], json!({"givenName": "ada"}));
    let missing = client.get(format!("{api}/v1/feeds/nope/dead-letters")).bearer_auth(common::READ_TOKEN).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let reader_cannot_replay = client
        .post(format!("{api}/v1/feeds/hook/dead-letters/{event_id}/replay"))
        .bearer_auth(common::READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reader_cannot_replay.status(), 403);

    // the receiver is fixed; replaying delivers the event, once
    r.answer("/down", Answer::Ok);
    let replay = client
        .post(format!("{api}/v1/feeds/hook/dead-letters/{event_id}/replay"))
        .bearer_auth(common::WRITE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let delivered = eventually("the replayed event", || {
        let acked = r.acknowledged("/down");
        (!acked.is_empty()).then_some(acked)
    })
    .await;
    assert_eq!(delivered[0].key, one["message"]["id"].as_str().unwrap(), "the dead letter's own key");
    let remaining = list(0).await;
    assert_eq!(remaining["deadLetters"].as_array().unwrap().len(), 1, "only the other event is still dead: {remaining}");
    // the status, as the operator reads it from the feeds service
    let listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let load_url = format!("http://{}/v1/load", listener.local_addr().unwrap());
    let load_router = cdp_operator::feeds::router(running.load.clone());
    tokio::spawn(async move { axum::serve(listener, load_router).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    let hook_load = loop {
        let load: LoadReport = client.get(&load_url).send().await.unwrap().json().await.unwrap();
        assert_eq!(load.workload, cdp_operator::scaling::Workload::Feeds);
        let hook = load.feeds.into_iter().find(|f| f.name == "hook").unwrap();
        // sampled every 200 ms: wait for the sample after the last attempt
        if hook.failures == 4 || Instant::now() > deadline {
            break hook;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(hook_load.failures, 4);
    assert_eq!(hook_load.last_error.as_deref(), Some("receiver answered 503"));

    // erasing the other person drops the message the feed kept of them
    let grace = remaining["deadLetters"][0]["profileId"].as_str().unwrap().trim_start_matches('p').parse::<i64>().unwrap();
    let mut tx = t.store.begin().await.unwrap();
    assert_eq!(tx.erase_feed_deliveries(&[grace]).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(list(0).await["deadLetters"], json!([]));
}

async fn a_failing_feed_does_not_delay_the_others(t: TestStore) {
    let (r, base) = receiver().await;
    r.answer("/slow", Answer::Hang(Duration::from_secs(60)));
    r.answer("/broken", Answer::Status(500));
    let selection = "events: [record.received]\nattributes: [givenName]\n";
    let config = config(vec![
        feed("slow", &webhook(&base, "/slow", selection)),
        feed("broken", &webhook(&base, "/broken", selection)),
        feed("healthy", &webhook(&base, "/healthy", selection)),
    ]);
    let running = start_feeds(&t.store, &config, &secrets(&[]));
    let records: Vec<_> = (0..20)
        .map(|i| {
            let (email, phone, family) = (format!("p{i}@example.com"), format!("+336100000{i:02}"), format!("Name{i}"));
            person("pos", &format!("r{i}"), "Ada", &[("email", email.as_str()), ("phone", phone.as_str()), ("familyName", family.as_str())])
        })
        .collect();
    resolve(&t.store, &config, &records).await;
    settled(&t.store, "healthy").await;
    let settled_at = cdp_operator::store::now_ms();
    assert_eq!(r.acknowledged("/healthy").len(), 20, "the healthy feed got every event");
    assert!(r.acknowledged("/slow").len() < 20, "the slow feed is still behind");
    assert!(r.acknowledged("/broken").is_empty());
    // a sample taken before the healthy feed settled could still show its lag
    let load = eventually("a load sample, taken once the healthy feed settled, with the failures", || {
        let load = running.load.report();
        let failing = load.feeds.iter().any(|f| f.name == "broken" && f.failures > 0 && f.lag > 0);
        (load.at_ms >= settled_at && failing).then_some(load)
    })
    .await;
    let healthy = load.feeds.iter().find(|f| f.name == "healthy").unwrap();
    assert_eq!((healthy.lag, healthy.failures), (0, 0));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &running.metrics.registry).unwrap();
    assert!(text.contains("cdp_feed_delivered_total{feed=\"healthy\"} 20"), "{text}");
    assert!(text.contains("cdp_feed_failures_total{feed=\"broken\",reason=\"status_5xx\"}"), "{text}");
}

async fn consent_triggers_and_allow_list(t: TestStore) {
    let (r, base) = receiver().await;
    let sms = feed(
        "sms",
        &webhook(
            &base,
            "/sms",
            "events: [record.received]\ntriggers:\n- {field: event.source, op: equals, value: ticketing}\n\
             - {field: profile.attributes.tier, op: equals, value: patron}\nattributes: [givenName, phone, attributes.tier]\nrequiredConsent: sms\n",
        ),
    );
    let config = config(vec![sms]);
    let _feeds = start_feeds(&t.store, &config, &secrets(&[]));
    let who = |n: &str| {
        (format!("{n}@example.com"), format!("+3361234{:04}", n.len() * 7 + n.as_bytes()[0] as usize))
    };
    let mut records = Vec::new();
    for (id, name, source, tier, consent) in [
        ("t1", "granted", "ticketing", "patron", "true"),
        ("t2", "withdrawn", "ticketing", "patron", "false"),
        ("t3", "visitor", "ticketing", "visitor", "true"),
        ("p4", "atthetill", "pos", "patron", "true"),
    ] {
        let (email, phone) = who(name);
        records.push(common::record(
            source,
            id,
            &[("givenName", name), ("familyName", "Test"), ("email", email.as_str()), ("phone", phone.as_str()), ("attributes.tier", tier), ("consents.sms", consent)],
        ));
    }
    resolve(&t.store, &config, &records).await;
    settled(&t.store, "sms").await;
    let got = r.acknowledged("/sms");
    assert_eq!(got.len(), 1, "only the consenting patron scanned at the gates: {got:?}");
    let message = &got[0].message;
    assert_eq!(message["data"]["sourceRecordId"], "t1");
    assert_eq!(message["profile"], json!({"givenName": "granted", "phone": who("granted").1, "attributes.tier": "patron"}));
    assert!(!message.to_string().contains("@example.com"), "no email leaves: {message}");

    // a real erasure, named by the patron's email, reaches the feed whatever its selection,
    // with ids only
    let profile = message["profileId"].as_str().unwrap().trim_start_matches('p').parse::<i64>().unwrap();
    let privacy = cdp_operator::privacy::Privacy::new(t.store.clone(), Arc::new(config.clone()));
    let subject = cdp_operator::privacy::Subject::Identifier { attribute: "email".into(), value: who("granted").0, region: None };
    privacy.erase(&subject, "gdpr.request", "test").await.unwrap();
    let erased = eventually("the erasure", || r.acknowledged("/sms").into_iter().find(|g| g.message["type"] == "profile.erased")).await;
    assert_eq!(erased.message["data"]["profileId"], format!("p{profile}"), "profiles named as the API names them");
    assert!(erased.message.get("profile").is_none());
    assert!(!erased.message.to_string().contains(&who("granted").1), "no phone in the erasure: {}", erased.message);
    assert_eq!(erased.message["profileId"], format!("p{profile}"));
}

async fn kafka_topic_keyed_by_profile(t: TestStore) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("profiles", 3, 1).unwrap();
    let topic = feed(
        "stream",
        "destination:\n  kafka: {topic: profiles, bootstrapServersSecretRef: {name: kafka, key: bootstrap}}\n\
         events: [profile.created, profile.updated, record.received]\nattributes: [givenName]\n",
    );
    let config = config(vec![topic]);
    let running = start_feeds(&t.store, &config, &secrets(&[(kafka_secret(), cluster.bootstrap_servers())]));
    let records = [
        person("webshop", "w1", "Ada", &[]),
        person("pos", "p1", "Ada", &[]),
        person("pos", "x1", "Grace", &[("email", "grace@example.com"), ("phone", "+33698765432"), ("familyName", "Hopper")]),
    ];
    resolve(&t.store, &config, &records).await;
    settled(&t.store, "stream").await;

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "test")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["profiles"]).unwrap();
    let expected = running.metrics.feeds.delivered.get_or_create(&vec![("feed", "stream".to_string())]).get() as usize;
    assert!(expected >= 4, "two profiles created, three records received: {expected}");
    let event_of = event_ids_by_key(&t.store, "stream").await;
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received < expected {
        assert!(Instant::now() < deadline, "only {received} of {expected} messages");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.unwrap();
        let body: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let key = std::str::from_utf8(m.key().unwrap()).unwrap().to_string();
        assert_eq!(Some(key.as_str()), body["profileId"].as_str(), "the key is the profile id");
        let header = m.headers().unwrap().iter().find(|h| h.key == IDEMPOTENCY_HEADER).unwrap();
        assert_eq!(header.value.unwrap(), body["id"].as_str().unwrap().as_bytes());
        assert!(body["profile"].as_object().unwrap().keys().all(|k| k == "givenName"));
        by_key.entry(key).or_default().push(event_of[body["id"].as_str().unwrap()]);
        received += 1;
    }
    assert_eq!(by_key.len(), 2, "two people: {by_key:?}");
    for ids in by_key.values() {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order per profile: {ids:?}");
    }
}

/// A fresh, empty store of the same kind as `t`'s.
async fn another_store(t: &TestStore) -> TestStore {
    match t.store.backend() {
        Backend::Sqlite => common::sqlite_store().await,
        Backend::Postgres => common::postgres_store().await.expect("the first store is on this server"),
    }
}

/// A consumer that remembers the keys it has processed must never take a new event for a
/// repeat: keys differ from one store (platform) to another for the same outbox position, and
/// one event keeps its key on every redelivery, after a restart too.
async fn idempotency_keys_differ_across_stores_and_survive_a_restart(t: TestStore) {
    let (r, base) = receiver().await;
    let selection = "events: [record.received]\nattributes: [givenName]\n";
    let first = config(vec![feed("crm", &webhook(&base, "/first", selection))]);
    let second = config(vec![feed("crm", &webhook(&base, "/second", selection))]);
    let other = another_store(&t).await;
    let grace = [("email", "grace@example.com"), ("familyName", "Hopper"), ("phone", "+33698765432")];
    let records = [person("pos", "p1", "Ada", &[]), person("webshop", "w9", "Grace", &grace)];
    // the first store's receiver is down: its events wait for a retry across a restart
    r.answer("/first", Answer::Status(503));
    let feeds = start_feeds(&t.store, &first, &secrets(&[]));
    let _other_feeds = start_feeds(&other.store, &second, &secrets(&[]));
    resolve(&t.store, &first, &records).await;
    resolve(&other.store, &second, &records).await;
    settled(&other.store, "crm").await;
    let failed = eventually("a failed attempt of each event", || {
        let all = r.all("/first");
        let keys: std::collections::BTreeSet<String> = all.iter().map(|g| g.key.clone()).collect();
        (keys.len() == 2).then_some(keys)
    })
    .await;
    feeds.stop().await;
    r.answer("/first", Answer::Ok);
    let _restarted = start_feeds(&t.store, &first, &secrets(&[]));
    settled(&t.store, "crm").await;

    let acked = r.acknowledged("/first");
    assert_eq!(acked.iter().map(|g| g.key.clone()).collect::<std::collections::BTreeSet<_>>(), failed, "each event kept its key after the restart");
    assert!(acked.iter().all(|g| g.key == g.message["id"].as_str().unwrap()), "the message's id is its key");
    let elsewhere: Vec<String> = r.acknowledged("/second").iter().map(|g| g.key.clone()).collect();
    assert_eq!(elsewhere.len(), 2);
    assert!(elsewhere.iter().all(|k| !failed.contains(k)), "the other store's events have keys of their own: {elsewhere:?} {failed:?}");
    assert_eq!(t.store.events_after(0, 100).await.unwrap().len(), other.store.events_after(0, 100).await.unwrap().len(), "the same outbox positions");
}

/// A replica killed without releasing its feeds (kill -9, a lost node) holds them up only as
/// long as its short lease: the restarted one takes over within seconds.
async fn a_crashed_replicas_feed_is_taken_over_within_seconds(t: TestStore) {
    let (r, base) = receiver().await;
    let config = config(vec![feed("crm", &webhook(&base, "/crm", "events: [record.received]\nattributes: [givenName]\n"))]);
    let crashed = start_feeds(&t.store, &config, &secrets(&[]));
    resolve(&t.store, &config, &[person("pos", "p1", "Ada", &[])]).await;
    settled(&t.store, "crm").await;
    crashed.crash();
    let restarted_at = Instant::now();
    let _restarted = start_feeds(&t.store, &config, &secrets(&[]));
    resolve(&t.store, &config, &[person("pos", "x1", "Grace", &[("email", "grace@example.com"), ("familyName", "Hopper"), ("phone", "+33698765432")])]).await;
    eventually("the record sent after the restart", || (r.acknowledged("/crm").len() == 2).then_some(())).await;
    let lease = WorkerOptions::default().lease;
    // the dead replica's lease, and a few seconds for a loaded test machine
    assert!(restarted_at.elapsed() < lease + Duration::from_secs(5), "taken over after {:?}", restarted_at.elapsed());
}

/// A replica that can no longer renew its lease (cut off from the store, but not from the
/// destination) drops its sends in flight before its lease ends, so that the replica taking
/// the feed over never sends the same profile's events at the same time.
async fn a_replica_cut_off_from_the_store_stops_sending_before_another_takes_over(t: TestStore) {
    let (r, base) = receiver().await;
    let hook = "destination:\n  webhook: {url: 'BASE/crm', signingSecretRef: {name: hooks, key: signing-key}, allowInsecureHttp: true, timeoutSeconds: 30}\n\
                events: [record.received]\nattributes: [givenName]\n";
    let config = config(vec![feed("crm", &hook.replace("BASE", &base))]);
    // the first request is answered after 30 s, past any lease
    r.answer("/crm", Answer::HangOnce(Duration::from_secs(30)));
    let cut_off = Store::open(&t.url).await.unwrap();
    let _first = start_feeds(&cut_off, &config, &secrets(&[]));
    resolve(&t.store, &config, &[person("pos", "p1", "Ada", &[])]).await;
    eventually("the first request in flight", || (!r.spans().is_empty()).then_some(())).await;
    cut_off.close().await;
    let _second = start_feeds(&t.store, &config, &secrets(&[]));
    let acked = eventually("the delivery by the replica that took over", || r.acknowledged("/crm").first().cloned()).await;
    let spans = r.spans();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!((&spans[0].key, &spans[1].key), (&acked.key, &acked.key), "the same event");
    let dropped = spans[0].ended.expect("the cut-off replica dropped its request");
    assert!(dropped < spans[1].arrived, "no overlap: dropped at {dropped:?}, sent again at {:?}", spans[1].arrived);
}

/// Ctrl-C does not wait for sends in flight (a destination that does not answer), and loses
/// nothing: what was not acknowledged is sent after the restart, with the same key.
async fn shutdown_drops_sends_in_flight_and_loses_nothing(t: TestStore) {
    let (r, base) = receiver().await;
    let hook = "destination:\n  webhook: {url: 'BASE/crm', signingSecretRef: {name: hooks, key: signing-key}, allowInsecureHttp: true, timeoutSeconds: 30}\n\
                events: [record.received]\nattributes: [givenName]\n";
    let config = config(vec![feed("crm", &hook.replace("BASE", &base))]);
    r.answer("/crm", Answer::Hang(Duration::from_secs(60)));
    let feeds = start_feeds(&t.store, &config, &secrets(&[]));
    resolve(&t.store, &config, &[person("pos", "p1", "Ada", &[])]).await;
    let in_flight = eventually("a request in flight", || r.spans().first().cloned()).await;
    // far below the send's own 30 s timeout
    tokio::time::timeout(Duration::from_secs(10), feeds.stop()).await.expect("the feeds stop without waiting for the send");
    r.answer("/crm", Answer::Ok);
    let _restarted = start_feeds(&t.store, &config, &secrets(&[]));
    settled(&t.store, "crm").await;
    let acked = r.acknowledged("/crm");
    assert_eq!(acked.len(), 1, "{acked:?}");
    assert_eq!(acked[0].key, in_flight.key);
}

async fn api_server(store: &Store, config: &PipelineConfig) -> String {
    let metrics = Metrics::new();
    let resolver = Arc::new(cdp_operator::matcher::Resolver::new(config).unwrap());
    let api = cdp_operator::api::ApiState::new(config, store.clone(), metrics, resolver, common::tokens());
    let listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, cdp_operator::api::router(api)).await });
    url
}

on_both_stores!(
    a_feed_not_started_yet_owes_the_whole_outbox,
    ordered_signed_and_deduplicable,
    retries_dead_letters_and_replay,
    a_failing_feed_does_not_delay_the_others,
    consent_triggers_and_allow_list,
    kafka_topic_keyed_by_profile,
    idempotency_keys_differ_across_stores_and_survive_a_restart,
    a_crashed_replicas_feed_is_taken_over_within_seconds,
    a_replica_cut_off_from_the_store_stops_sending_before_another_takes_over,
    shutdown_drops_sends_in_flight_and_loses_nothing,
);

/// `cdp receive`'s router: accepts a delivery signed with any of its secrets, refuses others,
/// and flags a repeated idempotency key.
#[tokio::test]
async fn the_receiver_checks_signatures_and_flags_repeats() {
    use cdp_operator::feeds::sign::sign;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let secrets = ["whsec-a".to_string(), "whsec-b".to_string()];
    let listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, cdp_operator::feeds::receive::router(&secrets, 300, tx)).await });
    let client = reqwest::Client::new();
    let post = |secret: &'static str, at: i64| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = br#"{"id":"41","type":"record.received"}"#;
            let response = client
                .post(url)
                .header(SIGNATURE_HEADER, sign(secret.as_bytes(), at, body))
                .header(IDEMPOTENCY_HEADER, "41")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    };
    let now = jiff::Timestamp::now().as_second();
    assert_eq!(post("whsec-b", now).await, 200);
    assert_eq!(post("whsec-a", now).await, 200);
    assert_eq!(post("whsec-c", now).await, 401, "unknown secret");
    assert_eq!(post("whsec-a", now - 3600).await, 401, "stale timestamp");
    let first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    assert_eq!((first.path.as_str(), first.duplicate, second.duplicate), ("/hook", false, true));
    assert_eq!(first.message["type"], "record.received");
    assert!(rx.try_recv().is_err(), "refused requests are not passed on");
}
