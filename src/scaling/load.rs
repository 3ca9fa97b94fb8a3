//! The load figures each data-plane service reports at `GET /v1/load` (on its ops port, next to
//! `/metrics`), which the operator polls to feed [`super::decision::decide`]. One shape for
//! every workload so the poller stays generic; workload-specific parts are optional.

use serde::{Deserialize, Serialize};

use super::Workload;

/// One replica's view of its workload's load over the last reporting window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub workload: Workload,
    /// Which replica answered (the pod name in a cluster, a local name otherwise).
    pub replica: String,
    /// When the figures were gathered, Unix milliseconds.
    pub at_ms: i64,
    /// Length of the window the rates are averaged over.
    pub window_seconds: f64,
    /// Work items arriving per second for the whole workload (records at intake, events in the
    /// outbox): a shared figure, read from the store, the same on every replica.
    pub arrival_per_second: f64,
    /// Work items this replica finished per second.
    pub processed_per_second: f64,
    /// Fraction of the window this replica spent working, in `[0, 1]`.
    pub busy_fraction: f64,
    /// Items waiting for the whole workload (intake queue, undelivered outbox events).
    pub backlog: u64,
    /// Age of the oldest waiting item, seconds (0 with no backlog).
    pub oldest_backlog_seconds: f64,
    /// Per-feed figures (feeds workload only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedLoad>,
    /// Per-Source figures of this replica's Kafka consumers (ingest workload only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kafka: Vec<KafkaSourceLoad>,
    /// Per-Enricher figures (feeds workload only, which runs the enrichers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrichers: Vec<EnricherLoad>,
}

impl LoadReport {
    /// A report of no load at all, to fill in from.
    pub fn idle(workload: Workload, replica: &str, at_ms: i64) -> LoadReport {
        LoadReport {
            workload,
            replica: replica.to_string(),
            at_ms,
            window_seconds: 30.0,
            arrival_per_second: 0.0,
            processed_per_second: 0.0,
            busy_fraction: 0.0,
            backlog: 0,
            oldest_backlog_seconds: 0.0,
            feeds: Vec::new(),
            kafka: Vec::new(),
            enrichers: Vec::new(),
        }
    }
}

/// One Kafka Source as one intake replica consumes it, copied by the operator into the
/// Source's status and read by the scaler (the ingest workload never runs more replicas than
/// the topic has partitions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSourceLoad {
    /// The Source's name.
    pub source: String,
    pub topic: String,
    /// Partitions of the topic (0 while its metadata is unknown).
    pub partitions: u32,
    /// The partitions the consumer group gave this replica, with their lag.
    pub assigned: Vec<PartitionLag>,
    /// Messages behind the end of the assigned partitions, summed.
    pub lag: u64,
    /// Records admitted from the topic per second over the window.
    pub consumed_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How far one assigned partition's committed position is behind its end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLag {
    pub partition: i32,
    pub lag: u64,
}

/// Delivery figures of one Feed, copied by the operator into the Feed's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedLoad {
    /// The Feed's name.
    pub name: String,
    /// Events waiting for this feed.
    pub lag: u64,
    pub delivered_per_second: f64,
    /// Failed delivery attempts since the service started.
    pub failures: u64,
    /// Events in the dead-letter list.
    pub dead_lettered: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Call figures of one Enricher since the replica started, copied by the operator into the
/// Enricher's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnricherLoad {
    /// The Enricher's name.
    pub name: String,
    /// Calls made to the endpoint (answered or not).
    pub calls: u64,
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Total time the answered calls took, milliseconds.
    pub latency_ms_total: f64,
    /// Calls that failed (each retry counts).
    pub failures: u64,
    /// Enrichments in the dead-letter list (the store's figure).
    pub dead_letters: u64,
    /// Records matched before their enrichment answered (the store's figure).
    pub matched_unenriched: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
