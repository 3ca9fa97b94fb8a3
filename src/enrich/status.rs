//! Figures per enricher: Prometheus metrics, and what `GET /v1/load` reports for the
//! operator to copy into each Enricher's status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::scaling::load::EnricherLoad;
use crate::store::EnricherCounts;

type Labels = Vec<(&'static str, String)>;

fn call_latency() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The enrichers' metrics, registered in the service's registry.
#[derive(Clone)]
pub struct EnrichMetrics {
    /// Calls to the endpoint, by enricher and outcome (`ok` or why it failed).
    pub calls: Family<Labels, Counter>,
    /// Lookups answered from the cache, by enricher.
    pub cache_hits: Family<Labels, Counter>,
    /// Targets not sent, by enricher and why (consent, nothing to send, unchanged, source).
    pub skipped: Family<Labels, Counter>,
    /// Seconds the endpoint took to answer, by enricher.
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Enrichments in the dead-letter list, by enricher.
    pub dead_letters: Family<Labels, Gauge>,
    /// Records matched before their PreMatch enrichment answered, by enricher.
    pub matched_unenriched: Family<Labels, Gauge>,
}

impl EnrichMetrics {
    pub fn register(registry: &mut Registry) -> EnrichMetrics {
        let m = EnrichMetrics {
            calls: Family::default(),
            cache_hits: Family::default(),
            skipped: Family::default(),
            latency: Family::new_with_constructor(call_latency),
            dead_letters: Family::default(),
            matched_unenriched: Family::default(),
        };
        registry.register("enricher_calls", "Calls to an enricher's endpoint, by enricher and outcome", m.calls.clone());
        registry.register("enricher_cache_hits", "Enrichment lookups answered from the cache", m.cache_hits.clone());
        registry.register("enricher_skipped", "Profiles or records not sent to an enricher, by reason", m.skipped.clone());
        registry.register("enricher_latency_seconds", "Time an enricher's endpoint took to answer", m.latency.clone());
        registry.register("enricher_dead_letters", "Enrichments given up after their last attempt", m.dead_letters.clone());
        registry.register("enricher_matched_unenriched", "Records matched before their enrichment answered", m.matched_unenriched.clone());
        m
    }
}

pub fn label(enricher: &str) -> Labels {
    vec![("enricher", enricher.to_string())]
}

fn with(enricher: &str, key: &'static str, value: &str) -> Labels {
    vec![("enricher", enricher.to_string()), (key, value.to_string())]
}

/// This replica's figures per enricher, since it started (store figures as last sampled).
#[derive(Clone, Default)]
pub struct EnrichBoard(Arc<Mutex<BTreeMap<String, EnricherLoad>>>);

impl EnrichBoard {
    fn update(&self, enricher: &str, f: impl FnOnce(&mut EnricherLoad)) {
        let mut figures = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = figures.entry(enricher.to_string()).or_insert_with(|| EnricherLoad { name: enricher.to_string(), ..Default::default() });
        f(entry);
    }

    /// Every enricher's figures, by name.
    pub fn figures(&self) -> Vec<EnricherLoad> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }
}

/// Where one enricher's figures go: the metrics and the board.
#[derive(Clone)]
pub struct Recorder {
    pub enricher: String,
    pub metrics: EnrichMetrics,
    pub board: EnrichBoard,
}

impl Recorder {
    pub fn answered(&self, took: Duration) {
        self.metrics.calls.get_or_create(&with(&self.enricher, "outcome", "ok")).inc();
        self.metrics.latency.get_or_create(&label(&self.enricher)).observe(took.as_secs_f64());
        self.board.update(&self.enricher, |f| {
            f.calls += 1;
            f.latency_ms_total += took.as_secs_f64() * 1000.0;
        });
    }

    pub fn failed(&self, reason: &str, error: &str) {
        self.metrics.calls.get_or_create(&with(&self.enricher, "outcome", reason)).inc();
        self.board.update(&self.enricher, |f| {
            f.calls += 1;
            f.failures += 1;
            f.last_error = Some(error.to_string());
        });
    }

    pub fn cache_hit(&self) {
        self.metrics.cache_hits.get_or_create(&label(&self.enricher)).inc();
        self.board.update(&self.enricher, |f| f.cache_hits += 1);
    }

    pub fn skipped(&self, reason: &'static str) {
        self.metrics.skipped.get_or_create(&with(&self.enricher, "reason", reason)).inc();
    }

    pub fn store_counts(&self, counts: EnricherCounts) {
        self.metrics.dead_letters.get_or_create(&label(&self.enricher)).set(counts.dead_letters);
        self.metrics.matched_unenriched.get_or_create(&label(&self.enricher)).set(counts.matched_unenriched);
        self.board.update(&self.enricher, |f| {
            f.dead_letters = counts.dead_letters.max(0) as u64;
            f.matched_unenriched = counts.matched_unenriched.max(0) as u64;
        });
    }
}
