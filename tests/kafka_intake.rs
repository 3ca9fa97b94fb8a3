//! Kafka intake through the real consumer, on librdkafka's mock cluster and a real store
//! (SQLite, and PostgreSQL where the store matters): a consumer killed mid-batch and another
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
use cdp_operator::bench::kafka::{kafka_config, kafka_secrets, producer};
use cdp_operator::ingest::Admitter;
use cdp_operator::ingest::kafka::KafkaIntake;
use cdp_operator::pipeline::PipelineConfig;
use cdp_operator::scaling::Workload;
use cdp_operator::scaling::load::LoadReport;
use cdp_operator::store::{Backend, Store};
use common::TestStore;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use sqlx::Connection;

const TOPIC: &str = "pos";

/// The benchmark's platform, its `pos` Source on Kafka with at most `max_in_flight` messages
/// in flight (the other Sources are left out).
fn platform(max_in_flight: u32) -> PipelineConfig {
    let mut config = kafka_config();
    config.sources.retain(|s| s.name == TOPIC);
    config.sources[0].spec.delivery.kafka.as_mut().unwrap().max_in_flight = max_in_flight;
    config
}

fn cluster(partitions: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, partitions, 1).unwrap();
    cluster
}

/// A valid record of the `pos` Source.
fn record(n: usize) -> serde_json::Value {
    json!({"id": format!("r{n}"), "email": format!("p{n}@example.com"), "givenName": "Ann"})
}

/// Publish raw message bodies, `bodies[i]` to partition `i % partitions`.
async fn publish(cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>, partitions: i32, bodies: &[Vec<u8>]) {
    let producer = producer(&cluster.bootstrap_servers()).unwrap();
    for (i, body) in bodies.iter().enumerate() {
        let message = FutureRecord::<(), _>::to(TOPIC).partition(i as i32 % partitions).payload(body);
        producer.send(message, Duration::from_secs(10)).await.unwrap();
    }
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

fn start(config: &PipelineConfig, bootstrap_servers: &str, store: &Store) -> Consumer {
    let metrics = Metrics::new();
    let source = &config.sources[0];
    let kafka = source.spec.delivery.kafka.as_ref().unwrap();
    let secrets = kafka_secrets(bootstrap_servers);
    let intake =
        KafkaIntake::new(&config.platform, source, kafka, &secrets, Admitter::new(config, store.clone()), metrics.clone()).unwrap();
    let (trigger, shutdown) = ops::shutdown_channel();
    Consumer { task: tokio::spawn(intake.run(shutdown)), metrics, _trigger: trigger }
}

impl Consumer {
    /// The value of one of this consumer's `cdp_kafka_*` metrics for `pos`.
    fn metric(&self, name: &str) -> i64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry).unwrap();
        let prefix = format!("{name}{{source=\"{TOPIC}\"}} ");
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
async fn a_consumer_killed_mid_batch_loses_nothing(t: TestStore) {
    const N: usize = 300;
    let cluster = cluster(3);
    let config = platform(50);
    publish(&cluster, 3, &bodies(0..N)).await;
    let lock = WriteLock::take(&t).await;
    let first = start(&config, &cluster.bootstrap_servers(), &t.store);
    let (first_ref, store) = (&first, &t.store);
    eventually("the first consumer holds messages it cannot store", || async move { first_ref.in_flight() > 0 }).await;
    first.kill().await;
    lock.release().await;
    let second = start(&config, &cluster.bootstrap_servers(), &t.store);
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
async fn poison_messages_are_quarantined_with_their_coordinates(t: TestStore) {
    let cluster = cluster(1);
    let config = platform(10);
    let mut messages = bodies(0..3);
    messages.push(b"{not json".to_vec());
    messages.push(b"\xff\xfe\x00".to_vec());
    messages.push(json!([record(3), {"id": "r-bad", "email": "not an email"}]).to_string().into_bytes());
    messages.extend(bodies(4..6));
    publish(&cluster, 1, &messages).await;
    let consumer = start(&config, &cluster.bootstrap_servers(), &t.store);
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
    let pos = TOPIC.to_string();
    assert_eq!(
        found,
        vec![("invalidJson".into(), pos.clone(), 3, None), ("notUtf8".into(), pos.clone(), 4, None), ("invalid".into(), pos, 5, Some(1))]
    );
    assert_eq!(entries[0].payload, json!("{not json"), "kept as it came, to be read and fixed");
    consumer.kill().await;
}

/// Two consumers share four partitions; one is killed mid-batch, the other takes its
/// partitions over: every record is stored once.
async fn a_rebalance_with_a_consumer_killed_mid_batch_loses_and_doubles_nothing(t: TestStore) {
    const N: usize = 400;
    let cluster = cluster(4);
    let config = platform(20);
    publish(&cluster, 4, &bodies(0..N)).await;
    let lock = WriteLock::take(&t).await;
    let first = start(&config, &cluster.bootstrap_servers(), &t.store);
    let first_ref = &first;
    eventually("the first consumer reads", || async move { first_ref.in_flight() > 0 }).await;
    let second = start(&config, &cluster.bootstrap_servers(), &t.store);
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

on_both_stores!(
    a_consumer_killed_mid_batch_loses_nothing,
    poison_messages_are_quarantined_with_their_coordinates,
    a_rebalance_with_a_consumer_killed_mid_batch_loses_and_doubles_nothing,
);

async fn load_report(base: &str) -> LoadReport {
    reqwest::get(format!("{base}/v1/load")).await.unwrap().json().await.unwrap()
}

/// Intake's `GET /v1/load` reports the consumer: partitions, the assigned ones with their lag
/// (messages published and not stored), the rate; lag falls to zero once the store takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_is_reported_in_the_load_report() {
    let t = common::sqlite_store().await;
    let cluster = cluster(3);
    let config = platform(5);
    let lock = WriteLock::take(&t).await;
    publish(&cluster, 3, &bodies(0..60)).await;
    let consumer = start(&config, &cluster.bootstrap_servers(), &t.store);
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
    assert_eq!((kafka.source.as_str(), kafka.topic.as_str(), kafka.partitions), (TOPIC, TOPIC, 3));
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
