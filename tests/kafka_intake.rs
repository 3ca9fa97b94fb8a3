//! Kafka intake through the real consumer, on librdkafka's mock cluster and on a real broker
//! (the one `CDP_TEST_KAFKA_BROKERS` names, started by `scripts/with-kafka.sh`), with a real
//! store (SQLite, and PostgreSQL where the store matters): a consumer killed mid-batch and another
//! taking over store every record exactly once; unreadable messages are quarantined with their
//! coordinates without holding up their partition; a rebalance between two consumers, one
//! killed mid-batch, loses and doubles nothing; lag is reported in `GET /v1/load`.
//!
//! "Mid-batch" is made certain, not left to timing: the store's writes are held by a lock the
//! test takes, so the consumer has read messages it cannot store when it is killed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdp_operator::runtime::load;
use cdp_operator::runtime::ops::{self, Metrics};
use cdp_operator::bench::kafka::{Brokers, fresh_suffix, kafka_config, kafka_secrets, producer};
use cdp_operator::ingest::Admitter;
use cdp_operator::ingest::kafka::KafkaIntake;
use cdp_operator::pipeline::PipelineConfig;
use cdp_operator::scaling::Workload;
use cdp_operator::scaling::load::LoadReport;
use cdp_operator::store::{Backend, Store};
use common::TestStore;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use sqlx::Connection;

const SOURCE: &str = "pos";

/// The real broker the tests run against as well, when one is given. In CI (`CI=true`) a
/// missing broker fails the test instead of skipping it.
fn real_broker() -> Option<Brokers> {
    match std::env::var("CDP_TEST_KAFKA_BROKERS") {
        Ok(servers) => Some(Brokers::External(servers)),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("CDP_TEST_KAFKA_BROKERS is not set: run the tests through scripts/with-kafka.sh (after scripts/python-tools.sh)")
        }
        Err(_) => {
            eprintln!("skipped on a real broker: CDP_TEST_KAFKA_BROKERS is not set (run through scripts/with-kafka.sh)");
            None
        }
    }
}

/// The `pos` Source of the benchmark's platform on a fresh topic of `partitions` (the other
/// Sources left out), with at most `max_in_flight` messages in flight.
struct Topic {
    brokers: Brokers,
    config: PipelineConfig,
    partitions: i32,
}

impl Topic {
    async fn new(brokers: Brokers, partitions: i32, max_in_flight: u32) -> Topic {
        let mut config = kafka_config(&fresh_suffix());
        config.sources.retain(|s| s.name == SOURCE);
        let kafka = config.sources[0].spec.delivery.kafka.as_mut().unwrap();
        kafka.max_in_flight = max_in_flight;
        brokers.create_topic(&kafka.topic, partitions).await.unwrap();
        Topic { brokers, config, partitions }
    }

    fn name(&self) -> &str {
        &self.config.sources[0].spec.delivery.kafka.as_ref().unwrap().topic
    }

    /// Publish raw message bodies, `bodies[i]` to partition `i % partitions`.
    async fn publish(&self, bodies: &[Vec<u8>]) {
        let producer = producer(&self.brokers.bootstrap_servers()).unwrap();
        for (i, body) in bodies.iter().enumerate() {
            let message = FutureRecord::<(), _>::to(self.name()).partition(i as i32 % self.partitions).payload(body);
            producer.send(message, Duration::from_secs(10)).await.unwrap();
        }
    }

    /// A consumer of the topic in its own task, with its own metrics (as a replica has).
    fn start(&self, store: &Store) -> Consumer {
        let metrics = Metrics::new();
        let (config, source) = (&self.config, &self.config.sources[0]);
        let kafka = source.spec.delivery.kafka.as_ref().unwrap();
        let secrets = kafka_secrets(&self.brokers.bootstrap_servers());
        let intake =
            KafkaIntake::new(&config.platform, source, kafka, &secrets, Admitter::new(config, store.clone()), metrics.clone()).unwrap();
        let (trigger, shutdown) = ops::shutdown_channel();
        Consumer { task: tokio::spawn(intake.run(shutdown)), metrics, _trigger: trigger }
    }
}

/// A valid record of the `pos` Source.
fn record(n: usize) -> serde_json::Value {
    json!({"id": format!("r{n}"), "email": format!("p{n}@example.com"), "givenName": "Ann"})
}

fn bodies(records: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    records.map(|n| record(n).to_string().into_bytes()).collect()
}

/// A consumer of `pos` running in its own task, with its own metrics (as a replica has).
struct Consumer {
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
    _trigger: ops::ShutdownTrigger,
}

impl Consumer {
    /// The value of one of this consumer's `cdp_kafka_*` metrics for `pos`.
    fn metric(&self, name: &str) -> i64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry).unwrap();
        let prefix = format!("{name}{{source=\"{SOURCE}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    }

    fn in_flight(&self) -> i64 {
        self.metric("cdp_kafka_in_flight")
    }

    fn assigned(&self) -> i64 {
        self.metric("cdp_kafka_assigned_partitions")
    }

    /// Kill it: the task is aborted wherever it is, nothing more is committed.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Wait (up to a minute) until `done` holds.
async fn eventually<F: Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn queued(store: &Store) -> i64 {
    store.counts().await.unwrap().queued
}

/// Holds the store's intake table until released: intake waits (PostgreSQL) or is told the
/// database is busy (SQLite) meanwhile.
struct WriteLock(sqlx::AnyConnection);

impl WriteLock {
    async fn take(t: &TestStore) -> WriteLock {
        let mut connection = sqlx::AnyConnection::connect(&t.url).await.unwrap();
        let statements: &[&str] = match t.store.backend() {
            Backend::Sqlite => &["BEGIN IMMEDIATE"],
            Backend::Postgres => &["BEGIN", "LOCK TABLE intake IN EXCLUSIVE MODE"],
        };
        for statement in statements {
            sqlx::query(*statement).execute(&mut connection).await.unwrap();
        }
        WriteLock(connection)
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
    }
}

/// N records on three partitions; a consumer reads some and is killed before it can store
/// them; another takes over: the store holds each record once.
async fn a_consumer_killed_mid_batch_loses_nothing(t: TestStore, brokers: Brokers) {
    const N: usize = 300;
    let topic = Topic::new(brokers, 3, 50).await;
    topic.publish(&bodies(0..N)).await;
    let lock = WriteLock::take(&t).await;
    let first = topic.start(&t.store);
    let (first_ref, store) = (&first, &t.store);
    eventually("the first consumer holds messages it cannot store", || async move { first_ref.in_flight() > 0 }).await;
    first.kill().await;
    lock.release().await;
    let second = topic.start(&t.store);
    eventually("every record is queued", || async move { queued(store).await >= N as i64 }).await;
    // what the second consumer reads twice (the killed one's batch, stored after its death
    // but never committed) is absorbed, and nothing more arrives
    let second_ref = &second;
    eventually("the second consumer is done", || async move { second_ref.in_flight() == 0 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = t.store.counts().await.unwrap();
    assert_eq!((counts.queued, counts.quarantined), (N as i64, 0));
    second.kill().await;
}

/// Unreadable messages and invalid records are quarantined with where they were read, and
/// the records after them on the same partition arrive.
async fn poison_messages_are_quarantined_with_their_coordinates(t: TestStore, brokers: Brokers) {
    let topic = Topic::new(brokers, 1, 10).await;
    let mut messages = bodies(0..3);
    messages.push(b"{not json".to_vec());
    messages.push(b"\xff\xfe\x00".to_vec());
    messages.push(json!([record(3), {"id": "r-bad", "email": "not an email"}]).to_string().into_bytes());
    messages.extend(bodies(4..6));
    topic.publish(&messages).await;
    let consumer = topic.start(&t.store);
    let store = &t.store;
    eventually("the records after the poison arrive", || async move { queued(store).await == 6 }).await;
    let entries = t.store.quarantined(None, 0, 10).await.unwrap();
    let found: Vec<(String, String, i64, Option<usize>)> = entries
        .iter()
        .map(|e| {
            let origin = e.origin.clone().expect("a Kafka entry names its message");
            (e.errors[0].code.clone(), origin.topic, origin.offset, origin.index)
        })
        .collect();
    let pos = topic.name().to_string();
    assert_eq!(
        found,
        vec![("invalidJson".into(), pos.clone(), 3, None), ("notUtf8".into(), pos.clone(), 4, None), ("invalid".into(), pos, 5, Some(1))]
    );
    assert_eq!(entries[0].payload, json!("{not json"), "kept as it came, to be read and fixed");
    consumer.kill().await;
}

/// A record whose event id came before with other content is kept in quarantine with its
/// coordinates (no sender reads an answer to a Kafka message); the first delivery stands, and
/// reading the messages again keeps one entry, not two.
async fn a_reused_event_id_is_quarantined_with_its_coordinates(t: TestStore, brokers: Brokers) {
    let topic = Topic::new(brokers, 1, 10).await;
    let mut changed = record(1);
    changed["email"] = json!("someone.else@example.com");
    topic.publish(&[bodies(0..2), vec![changed.to_string().into_bytes()], bodies(2..3)].concat()).await;
    let consumer = topic.start(&t.store);
    let store = &t.store;
    eventually("the records after the conflict arrive", || async move { queued(store).await == 3 }).await;
    let (consumer_ref, store) = (&consumer, &t.store);
    eventually("the conflict is quarantined", || async move {
        consumer_ref.in_flight() == 0 && store.counts().await.unwrap().quarantined == 1
    })
    .await;
    let entries = t.store.quarantined(None, 0, 10).await.unwrap();
    let origin = entries[0].origin.clone().expect("a Kafka entry names its message");
    assert_eq!((entries[0].errors[0].code.as_str(), origin.offset), ("eventIdConflict", 2));
    assert_eq!(entries[0].payload, changed, "the second content is kept, to be looked at");
    consumer.kill().await;

    // a consumer of a new group reads every message again: nothing doubles
    let group = format!("{}-again", topic.name());
    let mut again = Topic { brokers: topic.brokers, config: topic.config, partitions: 1 };
    again.config.sources[0].spec.delivery.kafka.as_mut().unwrap().consumer_group = Some(group);
    let consumer = again.start(&t.store);
    let consumer_ref = &consumer;
    eventually("the second group has read the topic", || async move { consumer_ref.metric("cdp_kafka_messages_total") >= 4 }).await;
    let counts = t.store.counts().await.unwrap();
    assert_eq!((counts.queued, counts.quarantined), (3, 1));
    let queued = t.store.claim("test", 10, Duration::from_secs(60)).await.unwrap();
    let r1 = queued.iter().find(|item| item.record.source_record_id == "r1").expect("r1 is queued");
    assert_eq!(r1.record.attributes.get("email").map(String::as_str), Some("p1@example.com"), "the first delivery stands");
    consumer.kill().await;
}

/// Two consumers share four partitions; one is killed mid-batch, the other takes its
/// partitions over: every record is stored once.
async fn a_rebalance_with_a_consumer_killed_mid_batch_loses_and_doubles_nothing(t: TestStore, brokers: Brokers) {
    const N: usize = 400;
    let topic = Topic::new(brokers, 4, 20).await;
    topic.publish(&bodies(0..N)).await;
    let lock = WriteLock::take(&t).await;
    let first = topic.start(&t.store);
    let first_ref = &first;
    eventually("the first consumer reads", || async move { first_ref.in_flight() > 0 }).await;
    let second = topic.start(&t.store);
    let (second_ref, store) = (&second, &t.store);
    eventually("the group shares the partitions", || async move {
        first_ref.assigned() > 0 && second_ref.assigned() > 0 && first_ref.assigned() + second_ref.assigned() == 4
    })
    .await;
    eventually("both hold messages they cannot store", || async move { first_ref.in_flight() > 0 && second_ref.in_flight() > 0 })
        .await;
    first.kill().await;
    eventually("the survivor takes every partition", || async move { second_ref.assigned() == 4 }).await;
    lock.release().await;
    eventually("every record is queued", || async move { queued(store).await >= N as i64 }).await;
    eventually("the survivor is done", || async move { second_ref.in_flight() == 0 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = t.store.counts().await.unwrap();
    assert_eq!((counts.queued, counts.quarantined), (N as i64, 0));
    second.kill().await;
}

/// Each case on the mock cluster with both stores, and on the real broker with SQLite (the
/// store's part is the same; the broker's is what that run adds).
macro_rules! on_both_brokers {
    ($($case:ident),* $(,)?) => {
        mod mock {
            use super::*;
            async fn with_mock<F: Future<Output = ()>>(t: TestStore, case: impl FnOnce(TestStore, Brokers) -> F) {
                case(t, Brokers::mock().unwrap()).await
            }
            $(async fn $case(t: TestStore) { with_mock(t, super::$case).await })*
            on_both_stores!($($case),*);
        }
        mod real_broker {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(brokers) = real_broker() {
                        super::$case(common::sqlite_store().await, brokers).await;
                    }
                }
            )*
        }
    };
}

on_both_brokers!(
    a_consumer_killed_mid_batch_loses_nothing,
    poison_messages_are_quarantined_with_their_coordinates,
    a_reused_event_id_is_quarantined_with_its_coordinates,
    a_rebalance_with_a_consumer_killed_mid_batch_loses_and_doubles_nothing,
    lag_is_reported_in_the_load_report,
);

async fn load_report(base: &str) -> LoadReport {
    reqwest::get(format!("{base}/v1/load")).await.unwrap().json().await.unwrap()
}

/// Intake's `GET /v1/load` reports the consumer: partitions, the assigned ones with their lag
/// (messages published and not stored), the rate; lag falls to zero once the store takes them.
async fn lag_is_reported_in_the_load_report(t: TestStore, brokers: Brokers) {
    let topic = Topic::new(brokers, 3, 5).await;
    let lock = WriteLock::take(&t).await;
    topic.publish(&bodies(0..60)).await;
    let consumer = topic.start(&t.store);
    let listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_trigger, shutdown) = ops::shutdown_channel();
    let router = load::router(t.store.clone(), &consumer.metrics, Workload::Ingest);
    tokio::spawn(ops::serve_with_ops(listener, router, t.store.clone(), consumer.metrics.clone(), shutdown));
    let base = base.as_str();
    eventually("the report shows the 60 messages behind", || async move {
        let report = load_report(base).await;
        report.kafka.first().is_some_and(|k| k.lag == 60 && k.assigned.len() == 3)
    })
    .await;
    let report = load_report(base).await;
    let kafka = &report.kafka[0];
    assert_eq!((kafka.source.as_str(), kafka.topic.as_str(), kafka.partitions), (SOURCE, topic.name(), 3));
    let lags: Vec<(i32, u64)> = kafka.assigned.iter().map(|p| (p.partition, p.lag)).collect();
    assert_eq!(lags, vec![(0, 20), (1, 20), (2, 20)]);
    assert!(consumer.in_flight() <= 5, "no more than maxInFlight read ahead of the store");

    lock.release().await;
    eventually("the lag falls to zero once stored", || async move { load_report(base).await.kafka[0].lag == 0 }).await;
    let report = load_report(base).await;
    assert!(report.kafka[0].consumed_per_second > 0.0, "{report:?}");
    assert_eq!(queued(&t.store).await, 60);
    consumer.kill().await;
}
