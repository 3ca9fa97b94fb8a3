//! Call figures of each Enricher (calls, cache hit ratio, latency, failures, dead letters,
//! records matched before their enrichment, last error), from the feeds workload's load
//! reports (the workload that runs the enrichers) into the Enricher's status.
//!
//! Written by the scaler's field manager, beside the conditions the reconcile writes, as the
//! Feeds' figures are ([`super::feed_status`]).

use std::collections::BTreeMap;

use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::apply::{self, SCALER_MANAGER};
use super::controller::Context;
use crate::crd::Enricher;
use crate::crd::enricher::EnricherStatus;
use crate::scaling::load::LoadReport;

/// Per Enricher name: calls, hits, latency and failures add up over replicas (each counts its
/// own), dead letters and late records are the store's figures (the highest reported), the
/// last error is the newest report's that has one.
pub fn enricher_figures(reports: &[LoadReport]) -> BTreeMap<String, EnricherStatus> {
    let mut by_age: Vec<&LoadReport> = reports.iter().collect();
    by_age.sort_by_key(|r| r.at_ms);
    let mut totals: BTreeMap<String, (u64, u64, f64, u64, u64, u64, Option<String>)> = BTreeMap::new();
    for report in by_age {
        for e in &report.enrichers {
            let t = totals.entry(e.name.clone()).or_default();
            t.0 += e.calls;
            t.1 += e.cache_hits;
            t.2 += e.latency_ms_total;
            t.3 += e.failures;
            t.4 = t.4.max(e.dead_letters);
            t.5 = t.5.max(e.matched_unenriched);
            if e.last_error.is_some() {
                t.6 = e.last_error.clone();
            }
        }
    }
    totals
        .into_iter()
        .map(|(name, (calls, hits, latency, failures, dead, late, last_error))| {
            let lookups = calls + hits;
            let answered = calls.saturating_sub(failures);
            let round = |x: f64| (x * 100.0).round() / 100.0;
            let status = EnricherStatus {
                calls: Some(calls as i64),
                cache_hit_ratio: (lookups > 0).then(|| round(hits as f64 / lookups as f64)),
                latency_ms: (answered > 0).then(|| round(latency / answered as f64)),
                failures: Some(failures as i64),
                dead_letters: Some(dead as i64),
                matched_unenriched: Some(late as i64),
                last_error,
                ..EnricherStatus::default()
            };
            (name, status)
        })
        .collect()
}

/// Whether the shown figures differ from `next`; latency and hit ratio are rewritten only
/// when they moved by more than a tenth, so a steady enricher does not rewrite its status at
/// every poll.
fn outdated(shown: &EnricherStatus, next: &EnricherStatus) -> bool {
    let moved = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (b - a).abs() > 0.1 * a.abs().max(0.01),
        (a, b) => a.is_some() != b.is_some(),
    };
    moved(shown.latency_ms, next.latency_ms)
        || moved(shown.cache_hit_ratio, next.cache_hit_ratio)
        || (shown.calls, shown.failures, shown.dead_letters, shown.matched_unenriched, &shown.last_error)
            != (next.calls, next.failures, next.dead_letters, next.matched_unenriched, &next.last_error)
}

/// Copy the figures of `reports` into the status of every Enricher of the platform they name.
pub(super) async fn copy_enricher_figures(ctx: &Context, namespace: &str, platform: &str, reports: &[LoadReport]) -> Result<(), kube::Error> {
    let figures = enricher_figures(reports);
    if figures.is_empty() {
        return Ok(());
    }
    let enrichers: Api<Enricher> = Api::namespaced(ctx.client.clone(), namespace);
    for enricher in enrichers.list(&ListParams::default()).await?.items.iter().filter(|e| e.spec.platform_ref.name == platform) {
        let Some(next) = figures.get(&enricher.name_any()) else { continue };
        if !outdated(&enricher.status.clone().unwrap_or_default(), next) {
            continue;
        }
        apply::apply_status_as(&ctx.client, enricher, SCALER_MANAGER, next).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::Workload;
    use crate::scaling::load::EnricherLoad;

    fn report(at_ms: i64, enrichers: Vec<EnricherLoad>) -> LoadReport {
        LoadReport { enrichers, ..LoadReport::idle(Workload::Feeds, &format!("r{at_ms}"), at_ms) }
    }

    #[test]
    fn replicas_add_up_calls_and_the_store_figures_count_once() {
        let a = EnricherLoad {
            name: "address".into(),
            calls: 8,
            cache_hits: 2,
            latency_ms_total: 600.0,
            failures: 2,
            dead_letters: 1,
            matched_unenriched: 3,
            last_error: Some("endpoint answered 503".into()),
        };
        let b = EnricherLoad { calls: 2, cache_hits: 8, latency_ms_total: 200.0, failures: 0, last_error: None, ..a.clone() };
        let figures = enricher_figures(&[report(2, vec![a]), report(1, vec![b])]);
        let address = &figures["address"];
        assert_eq!((address.calls, address.failures, address.dead_letters, address.matched_unenriched), (Some(10), Some(2), Some(1), Some(3)));
        assert_eq!(address.cache_hit_ratio, Some(0.5));
        // 800 ms over the 8 answered calls
        assert_eq!(address.latency_ms, Some(100.0));
        assert_eq!(address.last_error.as_deref(), Some("endpoint answered 503"));
        assert!(!outdated(address, &EnricherStatus { latency_ms: Some(105.0), ..address.clone() }));
        assert!(outdated(address, &EnricherStatus { latency_ms: Some(150.0), ..address.clone() }));
        assert!(outdated(address, &EnricherStatus { failures: Some(3), ..address.clone() }));
    }
}
