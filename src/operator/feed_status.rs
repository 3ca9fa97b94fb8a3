//! Delivery figures of each Feed, from the feeds workload's load reports, into the Feed's
//! status (lag, delivered per second, failures, last error).
//!
//! Written by the scaler's field manager, beside the conditions the reconcile writes. Rates
//! are refreshed when they move by more than a tenth, so that a steady feed does not rewrite
//! its status (and wake its platform's reconcile) at every poll.

use std::collections::BTreeMap;

use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::apply::{self, SCALER_MANAGER};
use super::controller::Context;
use crate::crd::Feed;
use crate::crd::feed::FeedStatus;
use crate::scaling::load::LoadReport;

/// One Feed's figures over every replica that reported.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedFigures {
    pub lag: i64,
    pub delivered_per_second: f64,
    pub failures: i64,
    pub last_error: Option<String>,
}

/// Per Feed name: lag is the workload's (the highest reported), deliveries and failures add up
/// over replicas, the last error is the newest report's that has one.
pub fn feed_figures(reports: &[LoadReport]) -> BTreeMap<String, FeedFigures> {
    let mut by_age: Vec<&LoadReport> = reports.iter().collect();
    by_age.sort_by_key(|r| r.at_ms);
    let mut out: BTreeMap<String, FeedFigures> = BTreeMap::new();
    for report in by_age {
        for feed in &report.feeds {
            let figures = out.entry(feed.name.clone()).or_insert(FeedFigures {
                lag: 0,
                delivered_per_second: 0.0,
                failures: 0,
                last_error: None,
            });
            figures.lag = figures.lag.max(feed.lag as i64);
            figures.delivered_per_second += feed.delivered_per_second;
            figures.failures += feed.failures as i64;
            if feed.last_error.is_some() {
                figures.last_error = feed.last_error.clone();
            }
        }
    }
    out
}

/// Whether `status` should be rewritten with `figures`.
fn outdated(status: &FeedStatus, figures: &FeedFigures) -> bool {
    let rate_moved = match status.delivered_per_second {
        None => true,
        Some(shown) => {
            let now = figures.delivered_per_second;
            (shown == 0.0) != (now == 0.0) || (now - shown).abs() > 0.1 * shown.abs()
        }
    };
    status.lag != Some(figures.lag) || status.failures != Some(figures.failures) || status.last_error != figures.last_error || rate_moved
}

/// Copy the figures of `reports` into the status of every Feed of the platform they name.
pub(super) async fn copy_feed_figures(ctx: &Context, namespace: &str, platform: &str, reports: &[LoadReport]) -> Result<(), kube::Error> {
    let figures = feed_figures(reports);
    if figures.is_empty() {
        return Ok(());
    }
    let feeds: Api<Feed> = Api::namespaced(ctx.client.clone(), namespace);
    for feed in feeds.list(&ListParams::default()).await?.items.iter().filter(|f| f.spec.platform_ref.name == platform) {
        let Some(figures) = figures.get(&feed.name_any()) else { continue };
        let current = feed.status.clone().unwrap_or_default();
        if !outdated(&current, figures) {
            continue;
        }
        let status = FeedStatus {
            lag: Some(figures.lag),
            delivered_per_second: Some((figures.delivered_per_second * 100.0).round() / 100.0),
            failures: Some(figures.failures),
            last_error: figures.last_error.clone(),
            ..FeedStatus::default()
        };
        apply::apply_status_as(&ctx.client, feed, SCALER_MANAGER, &status).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::Workload;
    use crate::scaling::load::FeedLoad;

    fn report(at_ms: i64, feeds: Vec<FeedLoad>) -> LoadReport {
        LoadReport {
            workload: Workload::Feeds,
            replica: format!("r{at_ms}"),
            at_ms,
            window_seconds: 30.0,
            arrival_per_second: 0.0,
            processed_per_second: 0.0,
            busy_fraction: 0.0,
            backlog: 0,
            oldest_backlog_seconds: 0.0,
            feeds,
            kafka: vec![],
        }
    }

    fn feed(name: &str, lag: u64, delivered: f64, failures: u64, error: Option<&str>) -> FeedLoad {
        FeedLoad { name: name.into(), lag, delivered_per_second: delivered, failures, dead_lettered: 0, last_error: error.map(Into::into) }
    }

    #[test]
    fn replicas_add_up_deliveries_and_the_newest_error_wins() {
        let figures = feed_figures(&[
            report(2, vec![feed("crm", 10, 4.0, 1, Some("503 from crm.example.com")), feed("sms", 0, 1.0, 0, None)]),
            report(1, vec![feed("crm", 12, 6.0, 2, Some("timeout"))]),
        ]);
        let crm = &figures["crm"];
        assert_eq!((crm.lag, crm.delivered_per_second, crm.failures), (12, 10.0, 3));
        assert_eq!(crm.last_error.as_deref(), Some("503 from crm.example.com"));
        assert_eq!(figures["sms"].last_error, None);
    }

    #[test]
    fn a_rate_moving_less_than_a_tenth_is_not_rewritten() {
        let figures = FeedFigures { lag: 3, delivered_per_second: 10.5, failures: 0, last_error: None };
        let shown = |rate: f64| FeedStatus { lag: Some(3), delivered_per_second: Some(rate), failures: Some(0), ..FeedStatus::default() };
        assert!(!outdated(&shown(10.0), &figures));
        assert!(outdated(&shown(9.0), &figures));
        assert!(outdated(&shown(0.0), &FeedFigures { delivered_per_second: 0.01, ..figures.clone() }));
        assert!(outdated(&FeedStatus { lag: Some(4), ..shown(10.0) }, &figures), "any lag change shows");
    }
}
