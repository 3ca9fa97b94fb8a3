//! `GET /v1/load` and the `cdp_load_*` metrics of intake and matcher, over real sockets, on
//! SQLite and PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cdp_operator::runtime::load;
use cdp_operator::runtime::ops::{self, Metrics};
use cdp_operator::matcher::{Worker, WorkerOptions};
use cdp_operator::scaling::Workload;
use cdp_operator::scaling::load::LoadReport;
use cdp_operator::store::Store;
use common::{INTAKE_KEY, TestStore, record};
use serde_json::json;

on_both_stores!(intake_reports_arrivals_and_its_own_work, matcher_reports_backlog_and_its_own_work);

/// Serve `router` plus the ops endpoints on an ephemeral port; returns the base URL.
async fn serve(router: axum::Router, store: &Store, metrics: Arc<Metrics>) -> String {
    let listener = ops::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (trigger, shutdown) = ops::shutdown_channel();
    std::mem::forget(trigger);
    tokio::spawn(ops::serve_with_ops(listener, router, store.clone(), metrics, shutdown));
    url
}

async fn load_report(base: &str) -> LoadReport {
    let response = reqwest::get(format!("{base}/v1/load")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap()
}

async fn intake_reports_arrivals_and_its_own_work(t: TestStore) {
    let metrics = Metrics::new();
    let state = cdp_operator::ingest::IngestState::new(&common::config(), &common::secrets(), t.store.clone(), metrics.clone()).unwrap();
    let router = cdp_operator::ingest::router(state).merge(load::router(t.store.clone(), &metrics, Workload::Ingest));
    let base = serve(router, &t.store, metrics).await;

    let idle = load_report(&base).await;
    assert_eq!((idle.workload, idle.arrival_per_second, idle.processed_per_second, idle.busy_fraction), (Workload::Ingest, 0.0, 0.0, 0.0));

    let batch: Vec<_> = (0..6).map(|i| json!({"id": format!("e{i}"), "email": format!("p{i}@example.com")})).collect();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/sources/webshop/records"))
        .bearer_auth(INTAKE_KEY)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let report = load_report(&base).await;
    assert_eq!(report.arrival_per_second, 6.0 / load::LOAD_WINDOW.as_secs_f64(), "{report:?}");
    assert!(report.processed_per_second > 0.0, "{report:?}");
    assert!(report.busy_fraction > 0.0 && report.busy_fraction <= 1.0, "{report:?}");
    assert_eq!((report.backlog, report.oldest_backlog_seconds), (0, 0.0), "nothing waits for intake itself");
    let text = metrics_text(&base).await;
    assert!(text.contains("cdp_load_processed_total{workload=\"ingest\"} 6"), "{text}");
    assert!(text.contains("cdp_load_busy_seconds_total{workload=\"ingest\"}"), "{text}");
    assert!(text.contains("cdp_load_arrival_per_second{workload=\"ingest\"} 0.2"), "{text}");
}

async fn matcher_reports_backlog_and_its_own_work(t: TestStore) {
    let metrics = Metrics::new();
    let base = serve(load::router(t.store.clone(), &metrics, Workload::Matcher), &t.store, metrics.clone()).await;
    let records: Vec<_> = (0..3).map(|i| record("webshop", &format!("m{i}"), &[("email", &format!("m{i}@example.com"))])).collect();
    t.store.enqueue(&records).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let waiting = load_report(&base).await;
    assert_eq!((waiting.workload, waiting.backlog), (Workload::Matcher, 3));
    assert!(waiting.oldest_backlog_seconds >= 1.0, "{waiting:?}");
    assert_eq!(waiting.arrival_per_second, 3.0 / load::LOAD_WINDOW.as_secs_f64());
    assert_eq!((waiting.processed_per_second, waiting.busy_fraction), (0.0, 0.0), "no work done yet");
    let text = metrics_text(&base).await;
    assert!(text.contains("cdp_load_backlog{workload=\"matcher\"} 3"), "{text}");

    let worker = Worker::new(t.store.clone(), common::resolver(), metrics.clone(), "w".into(), WorkerOptions::default());
    assert_eq!(worker.drain().await.unwrap(), 3);
    let drained = load_report(&base).await;
    assert_eq!((drained.backlog, drained.oldest_backlog_seconds), (0, 0.0));
    assert!(drained.processed_per_second > 0.0 && drained.busy_fraction > 0.0, "{drained:?}");
    let text = metrics_text(&base).await;
    assert!(text.contains("cdp_load_processed_total{workload=\"matcher\"} 3"), "{text}");
    assert!(text.contains("cdp_load_backlog{workload=\"matcher\"} 0"), "{text}");
}
