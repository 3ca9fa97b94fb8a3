//! The built-in scaler, driven by the real controller against the API fake, reading load from
//! a real HTTP server standing in for the matcher's pods.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdp_operator::crd::{CustomerDataPlatform, Feed, ScalingPolicy};
use cdp_operator::crd::platform::ScaledWorkloadStatus;
use cdp_operator::operator::{Context, Metrics, SCALING_PAUSED_ANNOTATION, ScalerOptions, run_controllers};
use cdp_operator::scaling::Workload;
use cdp_operator::scaling::load::{FeedLoad, LoadReport};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use support::fake_api::FakeApi;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(20);
const INTERVAL: Duration = Duration::from_millis(200);

/// What the stand-in matcher pods report; `age` dates the report in the past.
#[derive(Clone)]
struct Served {
    report: LoadReport,
    age: Duration,
}

/// A matcher replica measured at 100 records/s (50/s processed while busy half the time),
/// with `backlog` records waiting.
fn matcher_load(backlog: u64) -> Served {
    let report = LoadReport {
        workload: Workload::Matcher,
        replica: "retail-matcher-0".into(),
        at_ms: 0,
        window_seconds: 30.0,
        arrival_per_second: 50.0,
        processed_per_second: 50.0,
        busy_fraction: 0.5,
        backlog,
        oldest_backlog_seconds: 12.0,
        feeds: vec![],
        kafka: vec![],
        enrichers: vec![],
    };
    Served { report, age: Duration::ZERO }
}

/// `GET /v1/load` answering what `served` holds, on `address` (port 0: any free port).
async fn load_server(served: Arc<Mutex<Served>>, address: &str) -> u16 {
    let app = axum::Router::new().route(
        "/v1/load",
        axum::routing::get(move || {
            let served = served.lock().unwrap().clone();
            async move {
                let mut report = served.report;
                report.at_ms = jiff::Timestamp::now().as_millisecond() - served.age.as_millis() as i64;
                axum::Json(report)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A ready pod of `workload` at `ip`, where the test serves its load.
fn pod(workload: &str, name: &str, ip: &str) -> Pod {
    let labels = cdp_operator::operator::render::selector_labels("retail", workload);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": workload, "image": "cdp"}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap()
}

/// The samples without their peak windows (a Saturday run would otherwise start at a floor),
/// the controllers running with a fast scaler reading `served`.
async fn start(served: Served, annotate: &[(&str, &str)]) -> (FakeApi, Arc<Mutex<Served>>, tokio::task::JoinHandle<()>, u16) {
    start_with_metrics(served, annotate, Metrics::default()).await
}

/// [`start`], the operator reporting to `metrics`.
async fn start_with_metrics(
    served: Served,
    annotate: &[(&str, &str)],
    metrics: Metrics,
) -> (FakeApi, Arc<Mutex<Served>>, tokio::task::JoinHandle<()>, u16) {
    let served = Arc::new(Mutex::new(served));
    let port = load_server(served.clone(), "127.0.0.1:0").await;
    let (fake, client) = FakeApi::new();
    support::samples::put_samples(&fake);
    fake.modify::<ScalingPolicy>(NS, "retail", |p| p.spec.peak_windows.clear());
    fake.modify::<CustomerDataPlatform>(NS, "retail", |p| {
        p.annotations_mut().extend(annotate.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    });
    fake.put(&pod("matcher", "retail-matcher-0", "127.0.0.1"));
    let options = ScalerOptions { interval: INTERVAL, load_port: port, ..ScalerOptions::default() };
    let ctx = Arc::new(Context::with_scaler(client, metrics, options));
    let task = tokio::spawn(async move { run_controllers(ctx, &[NS.to_string()]).await });
    (fake, served, task, port)
}

fn replicas(fake: &FakeApi, name: &str) -> Option<i32> {
    fake.get::<Deployment>(NS, name).and_then(|d| d.spec?.replicas)
}

fn scaled(fake: &FakeApi, workload: &str) -> Option<ScaledWorkloadStatus> {
    let platform: CustomerDataPlatform = fake.get(NS, "retail")?;
    platform.status?.scaling?.workloads.into_iter().find(|w| w.name == workload)
}

#[tokio::test]
async fn backlog_scales_the_matcher_up_with_a_reason_and_an_event() {
    let (fake, _served, task, _) = start(matcher_load(3000), &[]).await;
    fake.wait_until(WAIT, |f| replicas(f, "retail-matcher") == Some(3)).await;
    // 100 records/s per replica; 50/s arriving at 90% utilisation plus 3000 drained in the
    // policy's 20 s catch-up: 206/s, three replicas.
    let status = scaled(&fake, "matcher").unwrap();
    assert_eq!((status.current_replicas, status.desired_replicas), (1, 3), "{status:?}");
    assert_eq!((status.decision.as_str(), status.cause.as_str()), ("up", "backlog"), "{status:?}");
    assert!(status.reason.starts_with("backlog 3.0k, drains in"), "{}", status.reason);
    assert!(jiff::Timestamp::now().as_second() - status.decided_at.parse::<jiff::Timestamp>().unwrap().as_second() < 20);

    let events: Vec<Event> = fake.list(Some(NS));
    let scaled_up: Vec<&Event> = events.iter().filter(|e| e.reason.as_deref() == Some("ScaledUp")).collect();
    assert_eq!(scaled_up.len(), 1, "one change, one Event: {events:?}");
    let note = scaled_up[0].note.as_deref().unwrap();
    assert!(note.starts_with("matcher scaled up from 1 to 3: backlog 3.0k"), "{note}");
    assert_eq!(scaled_up[0].regarding.as_ref().unwrap().name.as_deref(), Some("retail"));

    // Workloads without load figures hold their size and say so.
    let ingest = scaled(&fake, "ingest").unwrap();
    assert_eq!((ingest.desired_replicas, ingest.cause.as_str()), (2, "noMetrics"));
    assert!(ingest.reason.contains("no load metrics"), "{}", ingest.reason);
    // Only the scaler's field manager owns the matcher's replicas.
    let matcher: Deployment = fake.get(NS, "retail-matcher").unwrap();
    let owners: Vec<_> = matcher
        .managed_fields()
        .iter()
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0["f:spec"].get("f:replicas").is_some()))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(owners, ["cdp-operator-scaler"]);
    task.abort();
}

#[tokio::test]
async fn a_backlog_beyond_the_maximum_is_capped_by_the_policy() {
    let metrics = Metrics::default();
    let (fake, _served, task, _) = start_with_metrics(matcher_load(100_000), &[], metrics.clone()).await;
    fake.wait_until(WAIT, |f| replicas(f, "retail-matcher") == Some(8)).await;
    let status = scaled(&fake, "matcher").unwrap();
    assert_eq!((status.desired_replicas, status.cause.as_str()), (8, "bounds"), "{status:?}");
    assert!(status.reason.ends_with("capped at the maximum 8"), "{}", status.reason);
    // what the "pinned at max" alert and the dashboard read
    let exposed = metrics.encode();
    let matcher = r#"{namespace="default",platform="retail",workload="matcher"}"#;
    for line in [
        format!("cdp_operator_scaler_desired_replicas{matcher} 8"),
        format!("cdp_operator_scaler_max_replicas{matcher} 8"),
        format!("cdp_operator_scaler_min_replicas{matcher} 1"),
        format!("cdp_operator_scaler_peak_floor_replicas{matcher} 0"),
    ] {
        assert!(exposed.lines().any(|l| l == line), "{line} missing from:\n{exposed}");
    }
    task.abort();
}

#[tokio::test]
async fn stale_load_figures_hold_the_size_and_say_so() {
    let mut served = matcher_load(100_000);
    served.age = Duration::from_secs(600);
    let (fake, served, task, _) = start(served, &[]).await;
    fake.wait_until(WAIT, |f| scaled(f, "matcher").is_some_and(|s| s.cause == "noMetrics")).await;
    let status = scaled(&fake, "matcher").unwrap();
    assert!(status.reason.starts_with("load metrics stale (600 s old)"), "{}", status.reason);
    assert_eq!((status.current_replicas, status.desired_replicas, status.decision.as_str()), (1, 1, "hold"));
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(replicas(&fake, "retail-matcher"), Some(1), "stale figures never move the size");

    // Fresh figures again: the backlog is served.
    served.lock().unwrap().age = Duration::ZERO;
    fake.wait_until(WAIT, |f| replicas(f, "retail-matcher") == Some(8)).await;
    task.abort();
}

#[tokio::test]
async fn the_scaling_pause_annotation_holds_every_size() {
    let (fake, served, task, _) = start(matcher_load(0), &[]).await;
    fake.wait_until(WAIT, |f| scaled(f, "matcher").is_some_and(|s| s.decision == "hold" && s.cause != "noMetrics")).await;
    fake.modify::<CustomerDataPlatform>(NS, "retail", |p| {
        p.annotations_mut().insert(SCALING_PAUSED_ANNOTATION.into(), "true".into());
    });
    let paused = |f: &FakeApi| {
        let platform: CustomerDataPlatform = f.get(NS, "retail").unwrap();
        platform.status.and_then(|s| s.scaling).map(|s| (s.paused, s.message))
    };
    fake.wait_until(WAIT, |f| paused(f).is_some_and(|(p, _)| p)).await;
    let message = paused(&fake).unwrap().1;
    assert!(message.contains(SCALING_PAUSED_ANNOTATION), "{message}");
    served.lock().unwrap().report.backlog = 3000;
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(replicas(&fake, "retail-matcher"), Some(1), "paused: the backlog does not scale");

    fake.modify::<CustomerDataPlatform>(NS, "retail", |p| {
        p.annotations_mut().remove(SCALING_PAUSED_ANNOTATION);
    });
    fake.wait_until(WAIT, |f| replicas(f, "retail-matcher") == Some(3)).await;
    fake.wait_until(WAIT, |f| scaled(f, "matcher").is_some_and(|s| s.desired_replicas == 3)).await;
    assert_eq!(paused(&fake), Some((false, String::new())));
    task.abort();
}

#[tokio::test]
async fn keda_mode_applies_scaled_objects_and_leaves_replicas_to_them() {
    let (fake, client) = FakeApi::new();
    support::samples::put_samples_out_of_peak(&fake);
    fake.modify::<ScalingPolicy>(NS, "retail", |p| p.spec.mode = cdp_operator::crd::scaling::ScalingMode::Keda);
    fake.put(&pod("matcher", "retail-matcher-0", "127.0.0.1"));
    let options = ScalerOptions { interval: INTERVAL, ..ScalerOptions::default() };
    let ctx = Arc::new(Context::with_scaler(client, Metrics::default(), options));
    let task = tokio::spawn(async move { run_controllers(ctx, &[NS.to_string()]).await });
    let scaled_object_writes = |f: &FakeApi, method: http::Method| {
        f.requests().iter().filter(|r| r.method == method && r.path.contains("/apis/keda.sh/v1alpha1/namespaces/default/scaledobjects/")).count()
    };
    fake.wait_until(WAIT, |f| scaled_object_writes(f, http::Method::PATCH) >= 3).await;
    fake.wait_until(WAIT, |f| {
        let platform: CustomerDataPlatform = f.get(NS, "retail").unwrap();
        platform.status.and_then(|s| s.scaling).is_some_and(|s| s.mode == "keda")
    })
    .await;
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(replicas(&fake, "retail-matcher"), None, "KEDA's HPA sets the replicas, not the operator");

    // Back to the built-in scaler: the ScaledObjects go, the scaler takes the replicas over.
    fake.modify::<ScalingPolicy>(NS, "retail", |p| p.spec.mode = cdp_operator::crd::scaling::ScalingMode::Builtin);
    fake.wait_until(WAIT, |f| scaled_object_writes(f, http::Method::DELETE) == 3).await;
    fake.wait_until(WAIT, |f| replicas(f, "retail-matcher") == Some(1)).await;
    task.abort();
}

#[tokio::test]
async fn feed_delivery_figures_reach_each_feeds_status() {
    let (fake, _served, task, port) = start(matcher_load(0), &[]).await;
    // The feeds pods answer on another loopback address, at the same port.
    let feed = |name: &str, lag: u64, delivered: f64, failures: u64, error: Option<&str>| FeedLoad {
        name: name.into(),
        lag,
        delivered_per_second: delivered,
        failures,
        dead_lettered: 0,
        last_error: error.map(Into::into),
    };
    let mut report = matcher_load(0).report;
    report.workload = Workload::Feeds;
    report.feeds = vec![feed("crm", 42, 12.5, 3, Some("503 Service Unavailable from the CRM")), feed("sms-gateway", 0, 0.0, 0, None)];
    load_server(Arc::new(Mutex::new(Served { report, age: Duration::ZERO })), &format!("127.0.0.2:{port}")).await;
    fake.put(&pod("feeds", "retail-feeds-0", "127.0.0.2"));

    fake.wait_until(WAIT, |f| f.get::<Feed>(NS, "crm").and_then(|c| c.status?.lag) == Some(42)).await;
    let crm = fake.get::<Feed>(NS, "crm").unwrap().status.unwrap();
    assert_eq!((crm.delivered_per_second, crm.failures), (Some(12.5), Some(3)));
    assert_eq!(crm.last_error.as_deref(), Some("503 Service Unavailable from the CRM"));
    assert!(crm.common.conditions.iter().any(|c| c.type_ == "Ready"), "the reconcile's conditions stay beside the figures");
    let sms = fake.get::<Feed>(NS, "sms-gateway").unwrap().status.unwrap();
    assert_eq!((sms.lag, sms.delivered_per_second, sms.last_error), (Some(0), Some(0.0), None));
    task.abort();
}
