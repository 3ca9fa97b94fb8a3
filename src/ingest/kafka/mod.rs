//! Kafka intake: every Kafka Source's topic is consumed in a consumer group shared by the intake
//! replicas, and its messages go through the same mapping, validation, quarantine, erasure gate
//! and duplicate absorption as the HTTP intake ([`super::Admitter`]).
//!
//! At least once, nothing lost: a partition's offset is committed only once every message
//! before it is stored (its records queued, quarantined with their coordinates, or refused as
//! an erased person's). Batches are stored one after another, each retried until the store
//! takes it, so committing a batch's offsets never passes a message that is not stored. A crash
//! between storing and committing reads the messages again, and their event ids absorb them.
//! While one batch is being stored the next gathers what arrives, up to the Source's
//! `maxInFlight` messages in all; then the partitions are paused, and the consumer keeps
//! polling so that it stays in its group.

mod message;
mod settings;
mod status;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, Statistics, TopicPartitionList};
use tokio::task::JoinHandle;

use super::mapping::Received;
use super::{Admitter, Tally};
use crate::runtime::ops::{Metrics, Secrets, Shutdown, StartError};
use crate::crd::source::{AutoOffsetReset, KafkaDelivery};
use crate::pipeline::{NamedSource, PipelineConfig};
use crate::store::{Admission, FieldError, Store, StoreError, now_ms};
pub use message::{Coordinates, MAX_MESSAGE_BYTES, payloads};
pub use settings::group_id;
pub use status::{KafkaStatus, PartitionOffsets, partition_lag};

/// The first wait after the store refused a batch; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The wait after the consumer itself reports an error, so that a broken client does not spin.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// librdkafka's callbacks: assignments, statistics and errors go to the replica's status.
struct IntakeContext {
    source: String,
    topic: String,
    status: KafkaStatus,
}

impl ClientContext for IntakeContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let source = &self.source;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(%source, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(%source, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(%source, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(%source, facility, "librdkafka: {message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        // partition -1 is librdkafka's own, for messages not yet given a partition
        let offsets: std::collections::BTreeMap<i32, PartitionOffsets> = topic
            .partitions
            .iter()
            .filter(|(partition, _)| **partition >= 0)
            .map(|(partition, p)| {
                (*partition, PartitionOffsets { high: p.hi_offset, low: p.lo_offset, committed: p.committed_offset })
            })
            .collect();
        self.status.offsets(&self.source, offsets.len() as u32, offsets);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(source = %self.source, %error, "kafka client: {reason}");
        self.status.error(&self.source, "client", format!("{error}: {reason}"));
    }
}

impl ConsumerContext for IntakeContext {
    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |list: &TopicPartitionList| -> Vec<i32> {
            list.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect()
        };
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(source = %self.source, partitions = ?partitions(list), "kafka partitions assigned");
                self.status.assignment(&self.source, &partitions(list), true);
            }
            Rebalance::Revoke(list) => {
                tracing::info!(source = %self.source, partitions = ?partitions(list), "kafka partitions revoked");
                self.status.assignment(&self.source, &partitions(list), false);
            }
            Rebalance::Error(error) => self.status.error(&self.source, "rebalance", error.to_string()),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // a failed commit loses nothing: the messages are read again and absorbed
        if let Err(error) = result {
            tracing::debug!(source = %self.source, %error, "offset commit failed");
            self.status.error(&self.source, "commit", error.to_string());
        }
    }
}

/// Messages read and not yet stored, in the order they were read.
#[derive(Default)]
struct Batch {
    messages: Vec<Coordinates>,
    received: Vec<Received>,
}

/// The consumer of one Kafka Source.
pub struct KafkaIntake {
    source: Arc<NamedSource>,
    topic: String,
    max_in_flight: usize,
    consumer: StreamConsumer<IntakeContext>,
    admitter: Admitter,
    metrics: Arc<Metrics>,
}

impl KafkaIntake {
    /// Join the Source's consumer group (see [`group_id`]) and subscribe to its topic.
    pub fn new(
        platform: &str,
        source: &NamedSource,
        kafka: &KafkaDelivery,
        secrets: &Secrets,
        admitter: Admitter,
        metrics: Arc<Metrics>,
    ) -> Result<KafkaIntake, StartError> {
        let group = group_id(platform, &source.name, kafka);
        let context = IntakeContext { source: source.name.clone(), topic: kafka.topic.clone(), status: metrics.kafka.clone() };
        let failed = |error: KafkaError| StartError::Kafka { name: source.name.clone(), error };
        let consumer: StreamConsumer<IntakeContext> =
            settings::consumer_config(&group, kafka, secrets)?.create_with_context(context).map_err(failed)?;
        consumer.subscribe(&[&kafka.topic]).map_err(failed)?;
        metrics.kafka.start(&source.name, &kafka.topic, kafka.auto_offset_reset == AutoOffsetReset::Earliest);
        tracing::info!(source = %source.name, topic = %kafka.topic, %group, "kafka intake started");
        Ok(KafkaIntake {
            source: Arc::new(source.clone()),
            topic: kafka.topic.clone(),
            max_in_flight: kafka.max_in_flight.max(1) as usize,
            consumer,
            admitter,
            metrics,
        })
    }

    /// Consume until `shutdown`. What is stored by then is committed; what is not is read again
    /// by whichever replica takes the partition next.
    pub async fn run(self, shutdown: Shutdown) {
        let mut points = message::CommitPoints::default();
        let mut gathering = Batch::default();
        let mut storing: Option<std::pin::Pin<Box<dyn Future<Output = Batch> + Send>>> = None;
        let mut storing_messages = 0;
        let mut paused = false;
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                stored = async { storing.as_mut().expect("guarded").await }, if storing.is_some() => {
                    storing = None;
                    storing_messages = 0;
                    self.commit(&mut points, &stored.messages);
                }
                // always polled, even when full: rebalances and the group's heartbeat are served
                // here; a full consumer pauses its partitions instead (below)
                read = self.consumer.recv() => match read {
                    Ok(m) => {
                        let at = Coordinates { topic: m.topic().to_string(), partition: m.partition(), offset: m.offset() };
                        gathering.received.extend(payloads(m.payload(), &at));
                        gathering.messages.push(at);
                        // a partition assigned since the pause is not paused: pause again
                        paused &= gathering.messages.len() + storing_messages < self.max_in_flight;
                    }
                    Err(error) => {
                        tracing::warn!(source = %self.source.name, %error, "kafka consumer error");
                        self.metrics.kafka.error(&self.source.name, "consume", error.to_string());
                        tokio::time::sleep(CONSUME_ERROR_PAUSE).await;
                    }
                },
            }
            if storing.is_none() && !gathering.messages.is_empty() {
                let batch = std::mem::take(&mut gathering);
                storing_messages = batch.messages.len();
                storing = Some(Box::pin(store(self.admitter.clone(), self.source.clone(), self.metrics.clone(), batch)));
            }
            let in_flight = gathering.messages.len() + storing_messages;
            self.metrics.kafka.in_flight(&self.source.name, in_flight);
            // resumed only once half is stored: a pause drops what librdkafka fetched ahead,
            // so pausing at every batch would fetch most messages twice
            if !paused && in_flight >= self.max_in_flight {
                self.pause(true);
                paused = true;
            } else if paused && in_flight <= self.max_in_flight / 2 {
                self.pause(false);
                paused = false;
            }
        }
        tracing::info!(source = %self.source.name, "kafka intake stopped");
    }

    /// Stop fetching the assigned partitions (`true`), or fetch them again. A message already
    /// read is kept; one fetched and not yet read is fetched again after the pause.
    fn pause(&self, pause: bool) {
        let result = self.consumer.assignment().and_then(|assigned| match pause {
            true => self.consumer.pause(&assigned),
            false => self.consumer.resume(&assigned),
        });
        if let Err(error) = result {
            tracing::warn!(source = %self.source.name, %error, pause, "cannot pause or resume the partitions");
            self.metrics.kafka.error(&self.source.name, "consume", error.to_string());
        }
    }

    /// Commit past `stored` messages, on the partitions this replica still holds (another
    /// replica's progress is not moved back).
    fn commit(&self, points: &mut message::CommitPoints, stored: &[Coordinates]) {
        let assigned = self.metrics.kafka.assigned(&self.source.name);
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in points.stored(stored).into_iter().filter(|(p, _)| assigned.contains(p)) {
            if let Err(error) = offsets.add_partition_offset(&self.topic, partition, Offset::Offset(next)) {
                tracing::error!(source = %self.source.name, %error, "offset list");
            }
        }
        if offsets.count() == 0 {
            return;
        }
        if let Err(error) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(source = %self.source.name, %error, "offset commit not sent");
            self.metrics.kafka.error(&self.source.name, "commit", error.to_string());
        }
    }
}

/// Store a batch, trying again until the store takes it: nothing after it may be committed
/// before it is stored, so it is never skipped. Returns it once stored.
async fn store(admitter: Admitter, source: Arc<NamedSource>, metrics: Arc<Metrics>, batch: Batch) -> Batch {
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        let work = metrics.meters.ingest.start();
        let admitted = match admitter.admit(&source, &batch.received, now_ms()).await {
            Ok(admissions) => quarantine_conflicts(admitter.store(), &source, &batch.received, admissions).await,
            Err(error) => Err(error),
        };
        match admitted {
            Ok(admissions) => {
                work.finished(admissions.len() as u64);
                let tally = Tally::of(admissions.iter().map(|(a, _)| a));
                tally.count(&metrics, &source.name);
                metrics.kafka.stored(&source.name, batch.messages.len(), admissions.len());
                if failing {
                    tracing::info!(source = %source.name, "the store takes Kafka records again");
                }
                return batch;
            }
            Err(error) => {
                drop(work);
                metrics.kafka.error(&source.name, "store", error.to_string());
                if !failing {
                    tracing::warn!(source = %source.name, %error, "the store cannot take Kafka records; retrying, nothing is committed meanwhile");
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Keep the records whose event id was delivered before with other content in quarantine,
/// with their coordinates: over HTTP the sender is told (409) and sends again; nobody reads an
/// answer to a Kafka message, so the record is kept where a steward sees it. The first
/// delivery stands.
async fn quarantine_conflicts(
    store: &Store,
    source: &NamedSource,
    received: &[Received],
    admissions: Vec<(Admission, Vec<FieldError>)>,
) -> Result<Vec<(Admission, Vec<FieldError>)>, StoreError> {
    for ((admission, _), received) in admissions.iter().zip(received) {
        if let Admission::Conflict(first) = admission {
            let errors = [crate::ingest::conflict_error(source, *first)];
            store.quarantine_from(&source.name, &received.payload, &errors, received.origin.as_ref()).await?;
        }
    }
    Ok(admissions)
}

/// Start a consumer for every Kafka Source of `config`; each runs until `shutdown`.
pub fn spawn_all(
    config: &PipelineConfig,
    secrets: &Secrets,
    admitter: &Admitter,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let mut tasks = Vec::new();
    for source in &config.sources {
        if let Some(kafka) = &source.spec.delivery.kafka {
            let intake = KafkaIntake::new(&config.platform, source, kafka, secrets, admitter.clone(), metrics.clone())?;
            tasks.push(tokio::spawn(intake.run(shutdown.clone())));
        }
    }
    Ok(tasks)
}
