//! Delivery status per feed: Prometheus metrics, and the figures of `GET /v1/load`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::scaling::Workload;
use crate::scaling::load::{FeedLoad, LoadReport};
use crate::store::FeedBacklog;

type Labels = Vec<(&'static str, String)>;

fn delivery_lag() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The feeds' metrics, registered in the service's registry.
#[derive(Clone)]
pub struct FeedMetrics {
    /// Events acknowledged by the destination, by feed.
    pub delivered: Family<Labels, Counter>,
    /// Events not sent, by feed and why (event type, trigger, consent, nothing allowed).
    pub skipped: Family<Labels, Counter>,
    /// Failed attempts, by feed and reason.
    pub failures: Family<Labels, Counter>,
    /// Events moved to the dead-letter list, by feed.
    pub dead_lettered: Family<Labels, Counter>,
    /// Events waiting for the feed (unread outbox events and kept deliveries), by feed.
    pub lag: Family<Labels, Gauge>,
    /// Dead letters waiting for a replay, by feed.
    pub dead_letters: Family<Labels, Gauge>,
    /// Unix time of the feed's last failed attempt.
    pub last_failure: Family<Labels, Gauge>,
    /// Seconds from the event's commit to its acknowledgement, by feed.
    pub delivery_lag: Family<Labels, Histogram, fn() -> Histogram>,
}

impl FeedMetrics {
    pub fn register(registry: &mut Registry) -> FeedMetrics {
        let m = FeedMetrics {
            delivered: Family::default(),
            skipped: Family::default(),
            failures: Family::default(),
            dead_lettered: Family::default(),
            lag: Family::default(),
            dead_letters: Family::default(),
            last_failure: Family::default(),
            delivery_lag: Family::new_with_constructor(delivery_lag),
        };
        registry.register("feed_delivered", "Events delivered, by feed", m.delivered.clone());
        registry.register("feed_skipped", "Events not sent to a feed, by feed and reason", m.skipped.clone());
        registry.register("feed_failures", "Failed delivery attempts, by feed and reason", m.failures.clone());
        registry.register("feed_dead_lettered", "Events moved to the dead-letter list, by feed", m.dead_lettered.clone());
        registry.register("feed_lag", "Events waiting for a feed", m.lag.clone());
        registry.register("feed_dead_letters", "Dead letters waiting for a replay, by feed", m.dead_letters.clone());
        registry.register("feed_last_failure_timestamp_seconds", "Unix time of a feed's last failed attempt", m.last_failure.clone());
        registry.register("feed_delivery_lag_seconds", "Time from an event's commit to its delivery", m.delivery_lag.clone());
        m
    }
}

pub fn feed_label(feed: &str) -> Labels {
    vec![("feed", feed.to_string())]
}

/// What one feed's worker did since the service started (in memory, this replica only).
#[derive(Clone, Debug, Default)]
pub struct FeedCounters {
    /// Events finished: delivered, skipped or dead-lettered.
    pub processed: u64,
    pub delivered: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// Milliseconds spent in steps that did work.
    pub busy_ms: u64,
}

/// The counters of every feed of this replica, shared by the workers and the load endpoint.
#[derive(Clone, Default)]
pub struct FeedBoard(Arc<Mutex<BTreeMap<String, FeedCounters>>>);

impl FeedBoard {
    pub fn update(&self, feed: &str, f: impl FnOnce(&mut FeedCounters)) {
        let mut board = self.0.lock().expect("feed board lock");
        f(board.entry(feed.to_string()).or_default());
    }

    pub fn snapshot(&self) -> BTreeMap<String, FeedCounters> {
        self.0.lock().expect("feed board lock").clone()
    }
}

/// One sample of every feed: counters and backlog at a time.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at_ms: i64,
    pub feeds: BTreeMap<String, (FeedCounters, FeedBacklog)>,
}

/// The load report from two samples a window apart (pure).
pub fn load_report(replica: &str, before: &Sample, now: &Sample) -> LoadReport {
    let window = ((now.at_ms - before.at_ms).max(1)) as f64 / 1000.0;
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / window;
    let mut report = LoadReport { window_seconds: window, ..LoadReport::idle(Workload::Feeds, replica, now.at_ms) };
    let mut busy_ms = 0;
    for (name, (counters, backlog)) in &now.feeds {
        let old = before.feeds.get(name);
        let old_counters = old.map(|(c, _)| c.clone()).unwrap_or_default();
        let lag = (backlog.unread + backlog.pending).max(0) as u64;
        report.processed_per_second += rate(old_counters.processed, counters.processed);
        if let Some((_, old_backlog)) = old {
            // the outbox is shared: its growth is the same for every feed
            report.arrival_per_second = rate(old_backlog.head as u64, backlog.head as u64);
        }
        report.backlog += lag;
        if let Some(oldest) = backlog.oldest_ms {
            report.oldest_backlog_seconds = report.oldest_backlog_seconds.max((now.at_ms - oldest).max(0) as f64 / 1000.0);
        }
        busy_ms += counters.busy_ms.saturating_sub(old_counters.busy_ms);
        report.feeds.push(FeedLoad {
            name: name.clone(),
            lag,
            delivered_per_second: rate(old_counters.delivered, counters.delivered),
            failures: counters.failures,
            dead_lettered: backlog.dead.max(0) as u64,
            last_error: counters.last_error.clone(),
        });
    }
    // feeds work concurrently: the busiest share of the window, capped at 1
    report.busy_fraction = (busy_ms as f64 / 1000.0 / window / now.feeds.len().max(1) as f64).min(1.0);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_backlog_from_two_samples() {
        let counters = |processed, delivered, failures| FeedCounters { processed, delivered, failures, ..Default::default() };
        let backlog = |unread, pending, dead, head| FeedBacklog { unread, pending, dead, oldest_ms: Some(1_000), head };
        let before = Sample { at_ms: 1_000, feeds: [("crm".into(), (counters(10, 10, 0), backlog(0, 0, 0, 100)))].into() };
        let now = Sample {
            at_ms: 3_000,
            feeds: [
                ("crm".into(), (counters(50, 40, 2), backlog(5, 1, 1, 160))),
                ("sms".into(), (counters(8, 8, 0), backlog(0, 0, 0, 160))),
            ]
            .into(),
        };
        let r = load_report("feeds-0", &before, &now);
        assert_eq!(r.workload, Workload::Feeds);
        assert_eq!(r.window_seconds, 2.0);
        assert_eq!(r.arrival_per_second, 30.0);
        assert_eq!(r.processed_per_second, 24.0);
        assert_eq!(r.backlog, 6);
        assert_eq!(r.oldest_backlog_seconds, 2.0);
        let crm = &r.feeds[0];
        assert_eq!((crm.name.as_str(), crm.lag, crm.delivered_per_second, crm.failures, crm.dead_lettered), ("crm", 6, 15.0, 2, 1));
    }
}
