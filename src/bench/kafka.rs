//! `cdp bench kafka`: Kafka intake on librdkafka's mock cluster or a real broker (`--brokers`),
//! through the real consumers (one per Source, each on a topic of its own). Three runs, each on
//! a fresh store and fresh topics:
//! records per second from a full topic to the intake queue, then to resolved profiles (the
//! matcher running beside), and the latency from a record's produce call to its profile being
//! readable in the store the API reads, under a steady rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer};
use serde::Serialize;

use super::generate::Generator;
use super::{Awaited, GIVE_UP, LatencyArgs, LatencyReport, bench_config, open_scratch, payload, percentile, remove_sqlite, resolved_count, watch};
use crate::runtime::ops::{self, Metrics, Secrets, StartError};
use crate::crd::SecretKeyRef;
use crate::crd::source::{Delivery, KafkaDelivery};
use crate::identity::CanonicalRecord;
use crate::ingest::Admitter;
use crate::ingest::mapping::map_record;
use crate::matcher::{Resolver, WorkerOptions, spawn_workers};
use crate::pipeline::PipelineConfig;
use crate::store::{Store, now_ms};

#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// PostgreSQL server URL (a scratch database is created on it); SQLite in a temporary file by default.
    #[arg(long)]
    pub postgres: Option<String>,
    /// A real broker's bootstrap servers (HOST:PORT,...); librdkafka's mock cluster in process by default.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Records published before the consumers start, for the two throughput runs.
    #[arg(long, default_value_t = 50_000)]
    pub records: usize,
    /// Partitions of each Source's topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Records per message: 1 publishes JSON objects, more JSON arrays of records.
    #[arg(long, default_value_t = 1)]
    pub per_message: usize,
    /// The latency run (records published per second, one per message; measured ones are
    /// polled in the store), and the matcher workers and records of every run.
    #[command(flatten)]
    pub steady: LatencyArgs,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaReport {
    pub store: &'static str,
    pub records: usize,
    pub partitions: i32,
    pub per_message: usize,
    /// Records quarantined (invalid values), stored all the same.
    pub quarantined: usize,
    /// From a full topic to every record durably stored (no matcher running).
    pub topic_to_queued: Run,
    /// From a full topic to every valid record resolved into a profile.
    pub topic_to_profile: Run,
    pub latency: LatencyReport,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub seconds: f64,
    pub records_per_second: f64,
}

/// The Secret key the bootstrap servers are read from.
fn servers_ref() -> SecretKeyRef {
    SecretKeyRef { name: "kafka".into(), key: "servers".into() }
}

/// The benchmark's platform ([`bench_config`]) with every Source delivered by Kafka, on the
/// topic `<source><suffix>`, read by the consumer group of the same name (a suffix keeps the
/// runs and tests sharing one broker apart).
pub fn kafka_config(suffix: &str) -> PipelineConfig {
    let mut config = bench_config();
    for source in &mut config.sources {
        let topic = format!("{}{suffix}", source.name);
        let kafka = KafkaDelivery {
            consumer_group: Some(topic.clone()),
            topic,
            bootstrap_servers_secret_ref: servers_ref(),
            auto_offset_reset: Default::default(),
            max_in_flight: 1000,
            missing_event_id: Default::default(),
            tls: None,
            sasl: None,
            broker_ports: Vec::new(),
        };
        source.spec.delivery = Delivery { kafka: Some(kafka), ..Delivery::default() };
    }
    config
}

/// The secrets of [`kafka_config`] for brokers at `bootstrap_servers`.
pub fn kafka_secrets(bootstrap_servers: &str) -> Secrets {
    Secrets::Values([(servers_ref(), bootstrap_servers.to_string())].into())
}

/// A producer that queues as much as a run publishes at once.
pub fn producer(bootstrap_servers: &str) -> Result<FutureProducer, StartError> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("queue.buffering.max.messages", "2000000")
        .set("linger.ms", "1")
        .create()
        .map_err(|error| StartError::Kafka { name: "bench producer".into(), error })
}

/// Where the topics live: librdkafka's mock cluster in this process, or a real broker.
pub enum Brokers {
    Mock(MockCluster<'static, DefaultProducerContext>),
    External(String),
}

impl Brokers {
    /// A one-broker mock cluster.
    pub fn mock() -> Result<Brokers, KafkaError> {
        MockCluster::new(1).map(Brokers::Mock)
    }

    /// The mock cluster, or the broker at `servers`.
    pub fn new(servers: Option<&str>) -> Result<Brokers, KafkaError> {
        servers.map_or_else(Brokers::mock, |s| Ok(Brokers::External(s.to_string())))
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Brokers::Mock(cluster) => cluster.bootstrap_servers(),
            Brokers::External(servers) => servers.clone(),
        }
    }

    /// Create `topic` with `partitions`, and wait until the brokers' metadata shows them all
    /// (a consumer subscribing earlier would be given fewer).
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        let servers = match self {
            Brokers::Mock(cluster) => return cluster.create_topic(topic, partitions, 1),
            Brokers::External(servers) => servers,
        };
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new().set("bootstrap.servers", servers).create()?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for result in admin.create_topics([&new], &AdminOptions::new()).await? {
            result.map_err(|(_, code)| KafkaError::AdminOp(code))?;
        }
        let producer = producer(servers).map_err(|_| KafkaError::ClientCreation("bench producer".into()))?;
        for _ in 0..100 {
            let metadata = producer.client().fetch_metadata(Some(topic), Duration::from_secs(5))?;
            if metadata.topics().first().is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition))
    }
}

/// A suffix no earlier run on the same broker used.
pub fn fresh_suffix() -> String {
    format!("-{}", now_ms())
}

/// Brokers with a topic per Source, a store, and the Sources' consumers running on them.
struct Platform {
    brokers: Brokers,
    store: Store,
    file: Option<std::path::PathBuf>,
    metrics: Arc<Metrics>,
    config: PipelineConfig,
    trigger: ops::ShutdownTrigger,
    shutdown: ops::Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Platform {
    async fn new(args: &KafkaArgs) -> Result<Platform, StartError> {
        let kafka = |error| StartError::Kafka { name: "bench brokers".into(), error };
        let brokers = Brokers::new(args.brokers.as_deref()).map_err(kafka)?;
        let config = kafka_config(&fresh_suffix());
        for source in &config.sources {
            let topic = &source.spec.delivery.kafka.as_ref().expect("every bench Source is on Kafka").topic;
            brokers.create_topic(topic, args.partitions).await.map_err(kafka)?;
        }
        let (store, file) = open_scratch(args.postgres.as_deref()).await?;
        let (trigger, shutdown) = ops::shutdown_channel();
        Ok(Platform { brokers, store, file, metrics: Metrics::new(), config, trigger, shutdown, tasks: Vec::new() })
    }

    /// Start the Sources' consumers and wait until their group gave each its partitions (a new
    /// group waits a few seconds for more members first: not intake's time).
    async fn start_consumers(&mut self) -> Result<(), StartError> {
        let secrets = kafka_secrets(&self.brokers.bootstrap_servers());
        let admitter = Admitter::new(&self.config, self.store.clone());
        self.tasks.extend(crate::ingest::kafka::spawn_all(&self.config, &secrets, &admitter, &self.metrics, &self.shutdown)?);
        let assigned = || self.config.sources.iter().all(|s| !self.metrics.kafka.assigned(&s.name).is_empty());
        until(Instant::now(), assigned).await;
        Ok(())
    }

    fn start_matchers(&mut self, workers: usize) -> Result<(), StartError> {
        let resolver = Arc::new(Resolver::new(&self.config)?);
        let options = WorkerOptions::default();
        self.tasks.extend(spawn_workers(&self.store, resolver, self.metrics.clone(), workers, options, &self.shutdown));
        Ok(())
    }

    /// Records stored with `outcome` (`accepted`: queued; `rejected`: quarantined), by the
    /// intake metrics.
    fn stored(&self, outcome: &str) -> usize {
        let count = |source: &str| {
            let labels = vec![("source", source.to_string()), ("outcome", outcome.to_string())];
            self.metrics.intake_records.get_or_create(&labels).get()
        };
        self.config.sources.iter().map(|s| count(&s.name)).sum::<u64>() as usize
    }

    /// Every record of a run is stored: queued or quarantined (the generator's typos make a
    /// few values invalid).
    fn all_stored(&self, records: usize) -> bool {
        self.stored("accepted") + self.stored("rejected") >= records
    }

    async fn stop(self) {
        self.trigger.trigger();
        for task in self.tasks {
            let _ = task.await;
        }
        self.store.close().await;
        remove_sqlite(self.file);
    }
}

/// The topic `source` is read from.
fn topic<'a>(config: &'a PipelineConfig, source: &'a str) -> &'a str {
    config.source(source).and_then(|s| s.spec.delivery.kafka.as_ref()).map_or(source, |k| k.topic.as_str())
}

/// Publish `records`, `per_message` to a message, on the topic of each one's Source (spread
/// over its partitions by key), and wait until the brokers have them all.
async fn publish(config: &PipelineConfig, producer: &FutureProducer, records: &[CanonicalRecord], per_message: usize) -> Result<(), StartError> {
    let failed = |error| StartError::Kafka { name: "bench producer".into(), error };
    let mut by_source: std::collections::BTreeMap<&str, Vec<serde_json::Value>> = Default::default();
    for record in records {
        by_source.entry(&record.source).or_default().push(payload(record));
    }
    let mut deliveries = Vec::new();
    for (source, payloads) in &by_source {
        for (n, chunk) in payloads.chunks(per_message.max(1)).enumerate() {
            let body = match chunk {
                [one] => one.to_string(),
                many => serde_json::Value::from(many.to_vec()).to_string(),
            };
            let key = n.to_string();
            // librdkafka copies the message: the future does not hold it
            let queued = producer.send_result(FutureRecord::to(topic(config, source)).key(&key).payload(&body));
            deliveries.push(queued.map_err(|(error, _)| failed(error))?);
        }
    }
    for delivery in futures::future::join_all(deliveries).await {
        match delivery {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(failed(error)),
            Err(_) => return Err(failed(rdkafka::error::KafkaError::Canceled)),
        }
    }
    Ok(())
}

/// Seconds until `done` holds, checked every 20 ms.
async fn until(started: Instant, done: impl Fn() -> bool) -> f64 {
    while !done() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed().as_secs_f64()
}

pub async fn kafka(args: &KafkaArgs) -> Result<KafkaReport, StartError> {
    let mut generator = Generator::new(args.steady.seed, args.records, 3.0, args.steady.population);
    let records: Vec<CanonicalRecord> = (0..args.records).map(|_| generator.next_record().record).collect();

    // a full topic to the intake queue
    let mut platform = Platform::new(args).await?;
    publish(&platform.config, &producer(&platform.brokers.bootstrap_servers())?, &records, args.per_message).await?;
    platform.start_consumers().await?;
    let started = Instant::now();
    let seconds = until(started, || platform.all_stored(args.records)).await;
    let quarantined = platform.stored("rejected");
    let topic_to_queued = Run { seconds, records_per_second: args.records as f64 / seconds };
    eprintln!("topic to queued: {topic_to_queued:?}");
    platform.stop().await;

    // a full topic to profiles
    let mut platform = Platform::new(args).await?;
    publish(&platform.config, &producer(&platform.brokers.bootstrap_servers())?, &records, args.per_message).await?;
    platform.start_consumers().await?;
    platform.start_matchers(args.steady.workers)?;
    let started = Instant::now();
    let seconds =
        until(started, || platform.all_stored(args.records) && resolved_count(&platform.metrics) >= platform.stored("accepted")).await;
    let topic_to_profile = Run { seconds, records_per_second: args.records as f64 / seconds };
    eprintln!("topic to profile: {topic_to_profile:?}");
    platform.stop().await;

    let latency = steady(args).await?;
    Ok(KafkaReport {
        store: if args.postgres.is_some() { "postgres" } else { "sqlite" },
        records: args.records,
        partitions: args.partitions,
        per_message: args.per_message,
        quarantined,
        topic_to_queued,
        topic_to_profile,
        latency,
    })
}

/// Publish at the steady rate for its seconds, one record a message; for one in its sample,
/// the time from the produce call to its record being in a profile ([`watch`]).
async fn steady(args: &KafkaArgs) -> Result<LatencyReport, StartError> {
    let mut platform = Platform::new(args).await?;
    platform.start_consumers().await?;
    platform.start_matchers(args.steady.workers)?;
    let flags = crate::ingest::normalise_flags(&platform.config);
    let producer = producer(&platform.brokers.bootstrap_servers())?;
    let total = args.steady.rate as u64 * args.steady.seconds;
    let mut generator = Generator::new(args.steady.seed, total as usize, 3.0, args.steady.population);
    let (awaited_tx, awaited_rx) = tokio::sync::mpsc::unbounded_channel::<Awaited>();
    let store = platform.store.clone();
    let watcher = tokio::spawn(watch(awaited_rx, move |record: &Awaited| {
        let (store, source, id) = (store.clone(), record.source.clone(), record.id.clone());
        async move { matches!(store.record_by_source_id(&source, &id).await, Ok(Some(_))) }
    }));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (args.steady.rate / 100).max(1) as u64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut deliveries = Vec::with_capacity(total as usize);
    while sent < total {
        tick.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let record = generator.next_record().record;
            let body = payload(&record).to_string();
            // an invalid record (a generated typo) is quarantined: no profile to wait for
            let valid = platform.config.source(&record.source).is_some_and(|s| map_record(s, flags, &payload(&record), now_ms()).is_ok());
            if sent.is_multiple_of(args.steady.sample) && valid {
                let _ = awaited_tx.send(Awaited { source: record.source.clone(), id: record.source_record_id.clone(), since: Instant::now() });
            }
            sent += 1;
            let message = FutureRecord::to(topic(&platform.config, &record.source)).key(&record.source_record_id).payload(&body);
            deliveries.push(producer.send_result(message).map_err(|(error, _)| StartError::Kafka { name: "bench producer".into(), error })?);
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    drop(awaited_tx);
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for delivery in futures::future::join_all(deliveries).await {
        if !matches!(delivery, Ok(Ok(_))) {
            *errors.entry("not delivered to the broker".into()).or_default() += 1;
        }
    }
    let (mut latencies, gave_up) = watcher.await.expect("the watcher does not panic");
    if gave_up > 0 {
        errors.insert(format!("not in a profile after {} s", GIVE_UP.as_secs()), gave_up);
    }
    platform.stop().await;
    latencies.sort_by(f64::total_cmp);
    Ok(LatencyReport {
        target_rate: args.steady.rate,
        achieved_rate: total as f64 / send_seconds,
        seconds: args.steady.seconds,
        measured: latencies.len(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        intake_errors: errors,
    })
}

