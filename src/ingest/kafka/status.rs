//! What this replica's Kafka consumers are doing: the `kafka` part of intake's `GET /v1/load`,
//! and the `cdp_kafka_*` metrics.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runtime::load::LOAD_WINDOW;
use crate::scaling::load::{KafkaSourceLoad, PartitionLag};

type Labels = Vec<(&'static str, String)>;

fn source_label(source: &str) -> Labels {
    vec![("source", source.to_string())]
}

/// The consumers' metrics, registered in the service's registry.
#[derive(Clone, Default)]
struct KafkaMetrics {
    /// Messages behind the end of an assigned partition, by source and partition.
    lag: Family<Labels, Gauge>,
    /// Messages read and stored (their records queued, quarantined or refused), by source.
    messages: Family<Labels, Counter>,
    /// Consumer, store and commit errors, by source and what failed.
    errors: Family<Labels, Counter>,
    /// Partitions the group gave this replica, by source.
    assigned: Family<Labels, Gauge>,
    /// Messages read and not yet stored (at most the Source's `maxInFlight`), by source.
    in_flight: Family<Labels, Gauge>,
}

/// One partition's figures from librdkafka's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Offset of the next message published (the high watermark); negative while unknown.
    pub high: i64,
    /// Offset of the oldest message kept; negative while unknown.
    pub low: i64,
    /// The group's committed offset; negative when it has none.
    pub committed: i64,
}

/// Messages between where the group will read next and the end of the partition: from its
/// committed offset, or, before it has one, from where a new group starts (the oldest message
/// kept for `earliest`; nothing is behind for `latest`). `None` while the end is unknown.
pub fn partition_lag(offsets: PartitionOffsets, from_earliest: bool) -> Option<u64> {
    let PartitionOffsets { high, low, committed } = offsets;
    if high < 0 {
        return None;
    }
    let from = match committed {
        c if c >= 0 => c,
        _ if from_earliest => low.max(0),
        _ => high,
    };
    Some((high - from).max(0) as u64)
}

/// Records stored per second over about [`LOAD_WINDOW`], from cumulative counts.
#[derive(Clone, Debug)]
struct Rate {
    marks: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn new(now: Instant) -> Rate {
        Rate { marks: VecDeque::from([(now, 0)]) }
    }

    /// Mark `total` at `now`; the rate since the newest mark at least a window old (or the first).
    fn per_second(&mut self, now: Instant, total: u64) -> f64 {
        let base = self.marks.iter().rposition(|(at, _)| now.saturating_duration_since(*at) >= LOAD_WINDOW).unwrap_or(0);
        self.marks.drain(..base);
        self.marks.push_back((now, total));
        let (from, count) = self.marks[0];
        let seconds = now.saturating_duration_since(from).as_secs_f64();
        if seconds < 1e-3 { 0.0 } else { total.saturating_sub(count) as f64 / seconds }
    }
}

/// One Source's consumer as this replica runs it.
#[derive(Clone, Debug)]
struct SourceState {
    topic: String,
    from_earliest: bool,
    partitions: u32,
    assigned: BTreeSet<i32>,
    offsets: BTreeMap<i32, PartitionOffsets>,
    records: u64,
    rate: Rate,
    last_error: Option<String>,
}

/// The state of every Kafka consumer of this replica, shared by the consumers (and their
/// librdkafka callbacks) and the load endpoint. Cheap to clone.
#[derive(Clone, Default)]
pub struct KafkaStatus {
    sources: Arc<Mutex<BTreeMap<String, SourceState>>>,
    metrics: KafkaMetrics,
}

impl KafkaStatus {
    pub fn register(registry: &mut Registry) -> KafkaStatus {
        let status = KafkaStatus::default();
        let m = &status.metrics;
        registry.register("kafka_lag", "Messages behind the end of an assigned partition, by source and partition", m.lag.clone());
        registry.register("kafka_messages", "Kafka messages read and stored, by source", m.messages.clone());
        registry.register("kafka_errors", "Kafka consumer, store and commit errors, by source and kind", m.errors.clone());
        registry.register("kafka_assigned_partitions", "Partitions assigned to this replica, by source", m.assigned.clone());
        registry.register("kafka_in_flight", "Kafka messages read and not yet stored, by source", m.in_flight.clone());
        status
    }

    fn with<T>(&self, source: &str, f: impl FnOnce(&mut SourceState) -> T) -> Option<T> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources.get_mut(source).map(f)
    }

    /// A consumer of `source` starts.
    pub fn start(&self, source: &str, topic: &str, from_earliest: bool) {
        let state = SourceState {
            topic: topic.to_string(),
            from_earliest,
            partitions: 0,
            assigned: BTreeSet::new(),
            offsets: BTreeMap::new(),
            records: 0,
            rate: Rate::new(Instant::now()),
            last_error: None,
        };
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).insert(source.to_string(), state);
    }

    /// The group gave `partitions` to this replica (`assigned`) or took them back.
    pub fn assignment(&self, source: &str, partitions: &[i32], assigned: bool) {
        let count = self.with(source, |s| {
            for p in partitions {
                if assigned {
                    s.assigned.insert(*p);
                } else {
                    s.assigned.remove(p);
                    s.offsets.remove(p);
                }
            }
            s.assigned.len()
        });
        if let Some(count) = count {
            self.metrics.assigned.get_or_create(&source_label(source)).set(count as i64);
        }
    }

    /// The partitions assigned now.
    pub fn assigned(&self, source: &str) -> BTreeSet<i32> {
        self.with(source, |s| s.assigned.clone()).unwrap_or_default()
    }

    /// librdkafka's latest figures of the topic: its partition count and per partition offsets.
    pub fn offsets(&self, source: &str, partitions: u32, offsets: BTreeMap<i32, PartitionOffsets>) {
        let lags = self.with(source, |s| {
            s.partitions = partitions;
            s.offsets = offsets;
            s.assigned.iter().map(|p| (*p, s.offsets.get(p).and_then(|o| partition_lag(*o, s.from_earliest)))).collect::<Vec<_>>()
        });
        for (partition, lag) in lags.into_iter().flatten() {
            let labels = vec![("source", source.to_string()), ("partition", partition.to_string())];
            self.metrics.lag.get_or_create(&labels).set(lag.map_or(0, |l| l as i64));
        }
    }

    /// `messages` are read and not yet stored.
    pub fn in_flight(&self, source: &str, messages: usize) {
        self.metrics.in_flight.get_or_create(&source_label(source)).set(messages as i64);
    }

    /// `messages` holding `records` are stored.
    pub fn stored(&self, source: &str, messages: usize, records: usize) {
        self.with(source, |s| s.records += records as u64);
        self.metrics.messages.get_or_create(&source_label(source)).inc_by(messages as u64);
    }

    /// Something failed (`kind`: consume, store, commit, client); it is the last error shown.
    pub fn error(&self, source: &str, kind: &'static str, error: String) {
        self.with(source, |s| s.last_error = Some(format!("{kind}: {error}")));
        self.metrics.errors.get_or_create(&vec![("source", source.to_string()), ("kind", kind.to_string())]).inc();
    }

    /// The `kafka` part of a load report.
    pub fn report(&self) -> Vec<KafkaSourceLoad> {
        self.report_at(Instant::now())
    }

    fn report_at(&self, now: Instant) -> Vec<KafkaSourceLoad> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources
            .iter_mut()
            .map(|(name, s)| {
                let assigned: Vec<PartitionLag> = s
                    .assigned
                    .iter()
                    .map(|p| PartitionLag {
                        partition: *p,
                        lag: s.offsets.get(p).and_then(|o| partition_lag(*o, s.from_earliest)).unwrap_or(0),
                    })
                    .collect();
                KafkaSourceLoad {
                    source: name.clone(),
                    topic: s.topic.clone(),
                    partitions: s.partitions,
                    lag: assigned.iter().map(|p| p.lag).sum(),
                    assigned,
                    consumed_per_second: s.rate.per_second(now, s.records),
                    last_error: s.last_error.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lag_counts_from_the_committed_offset_or_where_a_new_group_starts() {
        let offsets = |low, committed, high| PartitionOffsets { high, low, committed };
        assert_eq!(partition_lag(offsets(0, 40, 100), true), Some(60));
        assert_eq!(partition_lag(offsets(0, 100, 100), true), Some(0));
        // no commit yet: everything kept is behind for earliest, nothing for latest
        assert_eq!(partition_lag(offsets(20, -1001, 100), true), Some(80));
        assert_eq!(partition_lag(offsets(20, -1001, 100), false), Some(0));
        assert_eq!(partition_lag(offsets(-1, -1001, -1), true), None, "end unknown");
    }

    #[test]
    fn the_report_shows_assigned_partitions_their_lag_and_the_rate() {
        let status = KafkaStatus::default();
        status.start("pos", "tills", true);
        status.assignment("pos", &[0, 2], true);
        let figures = |committed| PartitionOffsets { high: 50, low: 0, committed };
        status.offsets("pos", 3, BTreeMap::from([(0, figures(45)), (1, figures(0)), (2, figures(-1001))]));
        let t0 = Instant::now();
        status.report_at(t0);
        status.stored("pos", 10, 30);
        status.error("pos", "commit", "coordinator moved".into());
        let report = status.report_at(t0 + Duration::from_secs(10));
        assert_eq!(report.len(), 1);
        let pos = &report[0];
        assert_eq!((pos.topic.as_str(), pos.partitions), ("tills", 3));
        assert_eq!(pos.assigned, vec![PartitionLag { partition: 0, lag: 5 }, PartitionLag { partition: 2, lag: 50 }]);
        assert_eq!(pos.lag, 55, "partition 1 is another replica's");
        assert!((pos.consumed_per_second - 3.0).abs() < 0.01, "{}", pos.consumed_per_second);
        assert_eq!(pos.last_error.as_deref(), Some("commit: coordinator moved"));
        status.assignment("pos", &[2], false);
        assert_eq!(status.report_at(t0 + Duration::from_secs(11))[0].lag, 5);
    }
}
