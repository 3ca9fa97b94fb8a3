//! What the intake replicas report of each Kafka Source's consumer group (the topic's
//! partitions, who consumes which, the lag, the rate, the last error), from the ingest
//! workload's load reports into the Source's status, and what the scaler takes from it.
//!
//! Written by the scaler's field manager, beside the conditions the reconcile writes, as the
//! Feeds' figures are ([`super::feed_status`]).

use std::collections::BTreeMap;

use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::apply::{self, SCALER_MANAGER};
use super::controller::Context;
use crate::crd::Source;
use crate::crd::source::{ConsumerAssignment, ConsumerStatus, SourceStatus};
use crate::scaling::load::LoadReport;

/// Per Source name, over every replica that reported: each partition's lag counted once (two
/// replicas may both hold one during a rebalance: the higher figure is kept), rates added up,
/// the last error the newest report's that has one.
pub fn consumer_figures(reports: &[LoadReport]) -> BTreeMap<String, ConsumerStatus> {
    let mut by_age: Vec<&LoadReport> = reports.iter().collect();
    by_age.sort_by_key(|r| r.at_ms);
    let mut out: BTreeMap<String, ConsumerStatus> = BTreeMap::new();
    let mut lags: BTreeMap<(&str, i32), u64> = BTreeMap::new();
    for report in by_age {
        for consumer in &report.kafka {
            let figures = out.entry(consumer.source.clone()).or_default();
            figures.partitions = figures.partitions.max(i64::from(consumer.partitions));
            figures.consumed_per_second += consumer.consumed_per_second;
            if consumer.last_error.is_some() {
                figures.last_error = consumer.last_error.clone();
            }
            if !consumer.assigned.is_empty() {
                let mut partitions: Vec<i32> = consumer.assigned.iter().map(|p| p.partition).collect();
                partitions.sort_unstable();
                figures.assignments.push(ConsumerAssignment { replica: report.replica.clone(), partitions });
            }
            for p in &consumer.assigned {
                let lag = lags.entry((consumer.source.as_str(), p.partition)).or_default();
                *lag = (*lag).max(p.lag);
            }
        }
    }
    for ((source, _), lag) in lags {
        if let Some(figures) = out.get_mut(source) {
            figures.lag += lag as i64;
        }
    }
    for figures in out.values_mut() {
        figures.consumed_per_second = (figures.consumed_per_second * 100.0).round() / 100.0;
        figures.assignments.sort_by(|a, b| a.replica.cmp(&b.replica));
    }
    out
}

/// The most intake replicas that can all consume, when every Source of the platform is a
/// Kafka Source: the partitions of its largest topic (a consumer group gives a partition to one
/// member, so more would idle). `None` when some intake comes over HTTP (more replicas serve
/// it) or a topic's partitions are not known yet.
pub fn partition_bound(figures: &BTreeMap<String, ConsumerStatus>, kafka_only: bool) -> Option<u32> {
    if !kafka_only || figures.is_empty() || figures.values().any(|f| f.partitions == 0) {
        return None;
    }
    figures.values().map(|f| f.partitions).max().map(|p| p.clamp(1, i64::from(u32::MAX)) as u32)
}

/// Whether the status shows other figures than `next`; a rate is rewritten only when it moved
/// by more than a tenth, so that a steady consumer does not rewrite its status at every poll.
fn outdated(current: Option<&ConsumerStatus>, next: &ConsumerStatus) -> bool {
    let Some(current) = current else { return true };
    let (shown, now) = (current.consumed_per_second, next.consumed_per_second);
    let rate_moved = (shown == 0.0) != (now == 0.0) || (now - shown).abs() > 0.1 * shown.abs();
    rate_moved || ConsumerStatus { consumed_per_second: shown, ..next.clone() } != *current
}

/// Copy the consumer figures of `reports` into the status of each Kafka Source of the platform.
pub(super) async fn copy_consumer_figures(
    ctx: &Context,
    sources: &[Source],
    figures: &BTreeMap<String, ConsumerStatus>,
) -> Result<(), kube::Error> {
    for source in sources {
        let Some(next) = figures.get(&source.name_any()) else { continue };
        if !outdated(source.status.as_ref().and_then(|s| s.consumer.as_ref()), next) {
            continue;
        }
        let status = SourceStatus { consumer: Some(next.clone()), ..SourceStatus::default() };
        apply::apply_status_as(&ctx.client, source, SCALER_MANAGER, &status).await?;
    }
    Ok(())
}

/// The platform's Sources.
pub(super) async fn platform_sources(ctx: &Context, namespace: &str, platform: &str) -> Result<Vec<Source>, kube::Error> {
    let sources: Api<Source> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(sources.list(&ListParams::default()).await?.items.into_iter().filter(|s| s.spec.platform_ref.name == platform).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::Workload;
    use crate::scaling::load::{KafkaSourceLoad, PartitionLag};

    fn report(replica: &str, at_ms: i64, kafka: Vec<KafkaSourceLoad>) -> LoadReport {
        LoadReport { kafka, ..LoadReport::idle(Workload::Ingest, replica, at_ms) }
    }

    fn consumer(source: &str, partitions: u32, assigned: &[(i32, u64)], rate: f64, error: Option<&str>) -> KafkaSourceLoad {
        KafkaSourceLoad {
            source: source.into(),
            topic: format!("{source}-topic"),
            partitions,
            assigned: assigned.iter().map(|&(partition, lag)| PartitionLag { partition, lag }).collect(),
            lag: assigned.iter().map(|(_, lag)| lag).sum(),
            consumed_per_second: rate,
            last_error: error.map(str::to_string),
        }
    }

    #[test]
    fn partitions_are_counted_once_and_rates_add_up_over_replicas() {
        let reports = [
            report("ingest-b", 2, vec![consumer("gates", 4, &[(2, 10), (3, 5), (1, 7)], 40.0, Some("broker down"))]),
            // during a rebalance both replicas hold partition 1: its lag counts once
            report("ingest-a", 1, vec![consumer("gates", 4, &[(1, 3), (0, 100)], 60.004, None), consumer("tills", 0, &[], 0.0, None)]),
        ];
        let figures = consumer_figures(&reports);
        let gates = &figures["gates"];
        assert_eq!((gates.partitions, gates.lag, gates.consumed_per_second), (4, 100 + 7 + 10 + 5, 100.0));
        assert_eq!(
            gates.assignments,
            [
                ConsumerAssignment { replica: "ingest-a".into(), partitions: vec![0, 1] },
                ConsumerAssignment { replica: "ingest-b".into(), partitions: vec![1, 2, 3] },
            ]
        );
        assert_eq!(gates.last_error.as_deref(), Some("broker down"));
        assert_eq!(figures["tills"].assignments, []);
        // the unknown partitions of one topic leave replicas unbounded
        assert_eq!(partition_bound(&figures, true), None);
        let known: BTreeMap<_, _> = figures.into_iter().filter(|(name, _)| name == "gates").collect();
        assert_eq!(partition_bound(&known, true), Some(4));
        assert_eq!(partition_bound(&known, false), None, "HTTP intake is served by any number of replicas");
    }

    #[test]
    fn a_steady_consumer_keeps_its_status() {
        let shown = ConsumerStatus { partitions: 4, lag: 10, consumed_per_second: 100.0, ..Default::default() };
        assert!(!outdated(Some(&shown), &ConsumerStatus { consumed_per_second: 105.0, ..shown.clone() }));
        assert!(outdated(Some(&shown), &ConsumerStatus { consumed_per_second: 120.0, ..shown.clone() }));
        assert!(outdated(Some(&shown), &ConsumerStatus { lag: 11, ..shown.clone() }));
        assert!(outdated(None, &shown));
    }
}
