//! The dashboard and the alerts shipped in the chart (charts/cdp-operator/monitoring): the
//! rules pass `promtool test rules`, and every metric their queries read is one the binary
//! really exports, scraped from a running `cdp local` and from the operator's registry.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cdp_operator::local::{load_platform, sample_payload};
use cdp_operator::operator::Metrics as OperatorMetrics;
use cdp_operator::runtime::ops::Metrics;
use cdp_operator::operator::metrics::{ScalerFigures, WorkloadLabels};

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/cdp-operator/monitoring")
}

/// What kube-state-metrics exports that the dashboard reads (ready replicas per Deployment):
/// the one series not from this binary.
const KUBE_STATE_METRICS: [&str; 1] = ["kube_deployment_status_replicas_ready"];

/// Metric names in PromQL text: the `cdp_` and `kube_` identifiers.
fn metric_names(promql: &str) -> BTreeSet<String> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|token| token.starts_with("cdp_") || token.starts_with("kube_"))
        .map(str::to_string)
        .collect()
}

/// The sample names an OpenMetrics exposition declares: `# TYPE name kind` gives `name_total`
/// for a counter, `name_bucket`/`_sum`/`_count` for a histogram, `name` otherwise.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .flat_map(|declared| {
            let (name, kind) = declared.split_once(' ').unwrap();
            match kind {
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{name}{s}")).collect(),
                _ => vec![name.to_string()],
            }
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `cdp local` process, stopped when dropped.
struct Local(Child);

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get_text(client: &reqwest::Client, url: &str) -> Option<String> {
    client.get(url).send().await.ok()?.error_for_status().ok()?.text().await.ok()
}

/// `/metrics` of both listeners of a running `cdp local` with the samples, after each sample
/// Source sent its example record, the matcher resolved them, and the readiness probe and the
/// load poll ran, as the kubelet and the operator's scaler call them in a cluster.
async fn scrape_cdp_local() -> String {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let data = tempfile::tempdir().unwrap();
    let (ingest, api) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let _local = Local(
        Command::new(env!("CARGO_BIN_EXE_cdp"))
            .arg("local")
            .arg("-f")
            .arg(&samples)
            .arg("--data")
            .arg(data.path().join("local.db"))
            .args(["--listen-ingest", &ingest, "--listen-api", &api])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_text(&client, &format!("http://{ingest}/readyz")).await.is_none() {
        assert!(Instant::now() < deadline, "cdp local did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let loaded = load_platform(&samples, None).unwrap();
    for source in &loaded.config.sources {
        let Some(http) = &source.spec.delivery.http else { continue };
        let key = loaded.secrets.get(&http.auth_secret_ref).unwrap();
        let url = format!("http://{ingest}/v1/sources/{}/records", source.name);
        let response = client.post(url).bearer_auth(key).json(&sample_payload(source)).send().await.unwrap();
        assert_eq!(response.status(), 202, "{}", source.name);
    }
    let mut text = String::new();
    loop {
        let scraped = get_text(&client, &format!("http://{ingest}/metrics")).await.unwrap();
        if scraped.contains("cdp_matcher_records_total{") {
            text.push_str(&scraped);
            break;
        }
        assert!(Instant::now() < deadline, "the matcher resolved nothing:\n{scraped}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    get_text(&client, &format!("http://{api}/readyz")).await.expect("ready");
    for listener in [&ingest, &api] {
        get_text(&client, &format!("http://{listener}/v1/load")).await.expect("a load report");
    }
    text.push_str(&get_text(&client, &format!("http://{ingest}/metrics")).await.unwrap());
    text.push_str(&get_text(&client, &format!("http://{api}/metrics")).await.unwrap());
    text
}

/// Families a quiet platform leaves empty (and so unexposed) until their event happens: a
/// resolution failure, a failed or dead-lettered delivery, a delivery. Their names as the
/// data plane registers them.
fn event_driven_metrics() -> String {
    let metrics = Metrics::new();
    let labels = |pairs: &[(&'static str, &str)]| pairs.iter().map(|(k, v)| (*k, v.to_string())).collect::<Vec<_>>();
    metrics.matcher_errors.get_or_create(&labels(&[("reason", "store")])).inc();
    metrics.feeds.failures.get_or_create(&labels(&[("feed", "crm"), ("reason", "status")])).inc();
    metrics.feeds.dead_lettered.get_or_create(&labels(&[("feed", "crm")])).inc();
    metrics.feeds.delivered.get_or_create(&labels(&[("feed", "crm")])).inc();
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics.registry).unwrap();
    out
}

/// The operator's exposition, with one scaled workload so that every family has a sample.
fn operator_metrics() -> String {
    let metrics = OperatorMetrics::default();
    let workload = WorkloadLabels { namespace: "shop".into(), platform: "retail".into(), workload: "matcher".into() };
    metrics.scaled(&workload, ScalerFigures { current: 2, desired: 3, min: 1, max: 8, peak_floor: 3 });
    metrics.encode()
}

fn dashboard_queries() -> String {
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap()).unwrap();
    let mut queries = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            queries.push_str(target["expr"].as_str().unwrap());
            queries.push('\n');
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push_str(query);
            queries.push('\n');
        }
    }
    queries
}

fn rule_queries() -> String {
    let rules: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(monitoring().join("rules.yaml")).unwrap()).unwrap();
    let mut queries = String::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            queries.push_str(rule["expr"].as_str().unwrap());
            queries.push('\n');
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_read_is_exported() {
    let scraped = scrape_cdp_local().await;
    let exported: BTreeSet<String> =
        [scraped.as_str(), &event_driven_metrics(), &operator_metrics()].into_iter().flat_map(exported).collect();
    assert!(exported.contains("cdp_intake_records_total") && exported.contains("cdp_operator_scaler_desired_replicas"), "{exported:?}");
    for (what, queries) in [("dashboard", dashboard_queries()), ("rules", rule_queries())] {
        let used = metric_names(&queries);
        assert!(used.len() >= 5, "{what}: {used:?}");
        let unknown: Vec<&String> =
            used.iter().filter(|name| !exported.contains(*name) && !KUBE_STATE_METRICS.contains(&name.as_str())).collect();
        assert!(unknown.is_empty(), "{what} reads metrics nothing exports: {unknown:?}");
    }
}

#[test]
fn the_dashboard_has_a_panel_for_each_concern() {
    let queries = dashboard_queries();
    for metric in [
        "cdp_intake_records_total",
        "cdp_intake_queued",
        "cdp_load_oldest_backlog_seconds",
        "cdp_matcher_records_total",
        "cdp_review_open",
        "cdp_feed_lag",
        "cdp_feed_failures_total",
        "cdp_operator_scaler_desired_replicas",
        "kube_deployment_status_replicas_ready",
        "cdp_operator_scaler_peak_floor_replicas",
    ] {
        assert!(metric_names(&queries).contains(metric), "no panel reads {metric}");
    }
}

#[test]
fn the_alerting_rules_pass_their_promtool_tests() {
    if Command::new("promtool").arg("--version").output().is_err() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("promtool is missing: scripts/test-deps.sh installs it (Debian's prometheus package)");
        }
        eprintln!("skipped: promtool is not installed (scripts/test-deps.sh installs it)");
        return;
    }
    for args in [["check", "rules", "rules.yaml"], ["test", "rules", "rules-test.yaml"]] {
        let out = Command::new("promtool").args(args).current_dir(monitoring()).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
