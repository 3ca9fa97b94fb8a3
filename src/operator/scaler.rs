//! The built-in scaler: on an interval, for every platform, read each scaled workload's load
//! from its ready pods (`GET /v1/load`), run [`decide`], and set `spec.replicas` through the
//! scaler's own field manager, so the main apply (which never sets replicas) never fights it.
//!
//! Decision memory ([`DecisionState`]) is kept in memory per workload: after a restart the
//! only effect is that the first scale-down waits one stabilisation window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};

use super::apply::{self, SCALER_MANAGER};
use super::metrics::{ScalerFigures, WorkloadLabels};
use super::controller::{Context, PAUSED_ANNOTATION};
use super::{enricher_status, feed_status, source_status};
use super::render;
use crate::crd::platform::{CustomerDataPlatformStatus, ScaledWorkloadStatus, ScalingStatus};
use crate::crd::scaling::ScalingMode;
use crate::crd::{CustomerDataPlatform, ScalingPolicy};
use crate::scaling::decision::{Change, Decision, DecisionInput, DecisionState, LoadObservation, PeakFloor, Tuning, decide};
use crate::scaling::load::LoadReport;
use crate::scaling::policy::{self, EffectivePolicy, PolicyErrors};
use crate::scaling::Workload;

/// Annotation that stops the scaler (and only the scaler) while set to "true".
pub const SCALING_PAUSED_ANNOTATION: &str = "cdp.dev/scaling-paused";

/// How the scaler polls and decides.
#[derive(Clone, Debug)]
pub struct ScalerOptions {
    /// Time between two decisions for a platform.
    pub interval: Duration,
    /// Port of the workloads' `GET /v1/load`.
    pub load_port: u16,
    /// A pod that does not answer within this is left out of the figures.
    pub request_timeout: Duration,
    pub tuning: Tuning,
}

impl Default for ScalerOptions {
    fn default() -> Self {
        let tuning = Tuning::default();
        ScalerOptions {
            interval: Duration::from_secs(u64::from(tuning.decision_interval_seconds)),
            load_port: render::PORT as u16,
            request_timeout: Duration::from_secs(2),
            tuning,
        }
    }
}

/// The scaler's state: options, an HTTP client, and decision memory per workload.
pub struct Scaler {
    options: ScalerOptions,
    http: reqwest::Client,
    memory: Mutex<HashMap<(String, String, Workload), DecisionState>>,
}

impl Scaler {
    pub fn new(options: ScalerOptions) -> Scaler {
        // Pods serve their load over plain HTTP: no trust roots to load, so the client builds
        // on an image without a CA bundle too.
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .tls_certs_only([])
            .build()
            .expect("an HTTP client with no trust roots to load builds");
        Scaler { options, http, memory: Mutex::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScalerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl ScalerError {
    pub fn reason(&self) -> &'static str {
        match self {
            ScalerError::Kube(_) => "KubeApi",
        }
    }
}

/// Scale every platform of `platforms` every interval, until the task is dropped.
pub(super) async fn run(ctx: Arc<Context>, platforms: Store<CustomerDataPlatform>) {
    if platforms.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let platforms = platforms.state();
        // Forget the decisions of platforms that are gone.
        ctx.scaler.memory.lock().unwrap_or_else(PoisonError::into_inner).retain(|(namespace, name, workload), _| {
            let kept = platforms.iter().any(|p| p.namespace().as_deref() == Some(namespace.as_str()) && &p.name_any() == name);
            if !kept {
                ctx.metrics.forget(&workload_labels(namespace, name, *workload));
            }
            kept
        });
        for platform in platforms {
            if platform.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Err(error) = scale_platform(&ctx, &platform).await {
                ctx.metrics.failed(error.reason());
                tracing::warn!(platform = %platform.name_any(), %error, "scaling pass failed");
            }
        }
        tokio::time::sleep(ctx.scaler.options.interval).await;
    }
}

/// The platform's combined ScalingPolicy, as the reconcile and the scaler both read it.
pub(super) fn effective_policy<'a>(
    platform: &CustomerDataPlatform,
    policies: impl IntoIterator<Item = (&'a str, &'a crate::crd::ScalingPolicySpec)>,
) -> Result<EffectivePolicy, PolicyErrors> {
    let policies: Vec<_> = policies.into_iter().collect();
    policy::combine(&policies, &policy::PlatformDefaults::of(&platform.spec))
}

/// Why replica counts are left alone, if they are.
pub(super) fn pause_reason(platform: &CustomerDataPlatform, effective: Option<&EffectivePolicy>) -> Option<String> {
    let annotated = |name: &str| platform.annotations().get(name).is_some_and(|v| v == "true");
    if annotated(SCALING_PAUSED_ANNOTATION) {
        Some(format!("scaling is paused by the {SCALING_PAUSED_ANNOTATION} annotation"))
    } else if annotated(PAUSED_ANNOTATION) {
        Some(format!("every change to the platform is paused by the {PAUSED_ANNOTATION} annotation"))
    } else if effective.is_some_and(|e| e.paused) {
        Some("scaling is paused by a ScalingPolicy (spec.paused)".to_string())
    } else {
        None
    }
}

/// Time until the floor of a peak window next rises (its opening minus its lead time).
pub(super) fn until_next_floor(effective: &EffectivePolicy, now: Timestamp) -> Option<Duration> {
    effective
        .windows
        .iter()
        .filter_map(|w| {
            let lead = w.schedule.lead;
            let opening = w.schedule.next_opening(now.checked_add(lead).ok()?)?;
            let rises = opening.checked_sub(lead).ok()?;
            Duration::try_from(rises.duration_since(now)).ok()
        })
        .min()
}

async fn scale_platform(ctx: &Context, platform: &CustomerDataPlatform) -> Result<(), ScalerError> {
    let namespace = platform.namespace().unwrap_or_default();
    let name = platform.name_any();
    let policies: Api<ScalingPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let policies: Vec<ScalingPolicy> =
        policies.list(&ListParams::default()).await?.items.into_iter().filter(|p| p.spec.platform_ref.name == name).collect();
    let effective = effective_policy(platform, policies.iter().map(|p| (p.metadata.name.as_deref().unwrap_or_default(), &p.spec)));
    // Delivery figures go to the Feeds whatever the scaling mode.
    let feeds_load = fetch_load(ctx, &namespace, &name, Workload::Feeds).await?;
    feed_status::copy_feed_figures(ctx, &namespace, &name, &feeds_load).await?;
    enricher_status::copy_enricher_figures(ctx, &namespace, &name, &feeds_load).await?;
    // And the consumers' figures to the Kafka Sources.
    let ingest_load = fetch_load(ctx, &namespace, &name, Workload::Ingest).await?;
    let consumers = source_status::consumer_figures(&ingest_load);
    // a platform without Kafka consumers has no Source status to copy and no partition bound
    let sources =
        if consumers.is_empty() { Vec::new() } else { source_status::platform_sources(ctx, &namespace, &name).await? };
    source_status::copy_consumer_figures(ctx, &sources, &consumers).await?;
    let kafka_only = !sources.is_empty() && sources.iter().all(|s| s.spec.delivery.kafka.is_some());
    let mut fetched = HashMap::from([(Workload::Feeds, feeds_load), (Workload::Ingest, ingest_load)]);
    let previous = platform.status.as_ref().and_then(|s| s.scaling.clone()).unwrap_or_default();
    let effective = match effective {
        Ok(effective) => effective,
        Err(errors) => {
            let message = format!("scaling policies cannot be used, replicas hold: {errors}");
            let status = ScalingStatus { mode: "builtin".into(), paused: false, message, workloads: previous.workloads };
            return write_status(ctx, platform, status).await;
        }
    };
    if effective.mode == ScalingMode::Keda {
        let message = "KEDA ScaledObjects set the replicas".to_string();
        return write_status(ctx, platform, ScalingStatus { mode: "keda".into(), paused: false, message, workloads: vec![] }).await;
    }
    if let Some(message) = pause_reason(platform, Some(&effective)) {
        let status = ScalingStatus { mode: "builtin".into(), paused: true, message, workloads: previous.workloads };
        return write_status(ctx, platform, status).await;
    }

    let now = Timestamp::now();
    let floor = effective.active_floor(now);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut workloads = Vec::new();
    for workload in Workload::ALL {
        let object = rendered(workload).object_name(&name);
        let Some(current) = deployments.get_opt(&object).await?.and_then(|d| d.spec?.replicas) else {
            // Not applied yet: the reconcile creates it and sets its first size.
            continue;
        };
        let reports = match fetched.remove(&workload) {
            Some(reports) => reports,
            None => fetch_load(ctx, &namespace, &name, workload).await?,
        };
        let mut policy = effective.workload(workload);
        let partitions = (workload == Workload::Ingest).then(|| source_status::partition_bound(&consumers, kafka_only)).flatten();
        let bound_by_partitions = partitions.filter(|&p| p < policy.max_replicas);
        if let Some(partitions) = bound_by_partitions {
            policy.max_replicas = partitions;
        }
        let input = DecisionInput {
            workload,
            now,
            current_replicas: current.max(0) as u32,
            load: observe(&reports),
            policy,
            floor: floor
                .as_ref()
                .map(|f| PeakFloor { window: f.name.clone(), replicas: f.floors.get(workload) })
                .filter(|f| f.replicas > 0),
            tuning: ctx.scaler.options.tuning,
        };
        let key = (namespace.clone(), name.clone(), workload);
        let state = ctx.scaler.memory.lock().unwrap_or_else(PoisonError::into_inner).remove(&key).unwrap_or_default();
        let (mut decision, state) = decide(&input, state);
        if let Some(partitions) = bound_by_partitions.filter(|&p| decision.desired_replicas >= p) {
            decision.reason.push_str(&format!(
                "; the Kafka topics have at most {partitions} partitions: more intake replicas would idle"
            ));
        }
        ctx.scaler.memory.lock().unwrap_or_else(PoisonError::into_inner).insert(key, state);
        let figures = ScalerFigures {
            current: input.current_replicas,
            desired: decision.desired_replicas,
            min: input.policy.min_replicas,
            max: input.policy.max_replicas,
            peak_floor: input.floor.as_ref().map_or(0, |f| f.replicas),
        };
        ctx.metrics.scaled(&workload_labels(&namespace, &name, workload), figures);
        if decision.change != Change::Hold {
            set_replicas(&deployments, &object, decision.desired_replicas).await?;
            let (reason, verb) = if decision.change == Change::Up { ("ScaledUp", "up") } else { ("ScaledDown", "down") };
            let note = format!(
                "{workload} scaled {verb} from {} to {}: {}",
                decision.current_replicas, decision.desired_replicas, decision.reason
            );
            tracing::info!(platform = %name, %workload, from = decision.current_replicas, to = decision.desired_replicas, reason = %decision.reason, "scaled");
            ctx.event(platform, EventType::Normal, reason, note).await;
        }
        let before = previous.workloads.iter().find(|w| w.name == workload.as_str());
        workloads.push(workload_status(&decision, before, now));
    }
    write_status(ctx, platform, ScalingStatus { mode: "builtin".into(), paused: false, message: String::new(), workloads }).await
}

fn workload_labels(namespace: &str, platform: &str, workload: Workload) -> WorkloadLabels {
    WorkloadLabels { namespace: namespace.into(), platform: platform.into(), workload: workload.as_str().into() }
}

fn rendered(workload: Workload) -> render::Workload {
    match workload {
        Workload::Ingest => render::Workload::Ingest,
        Workload::Matcher => render::Workload::Matcher,
        Workload::Feeds => render::Workload::Feeds,
    }
}

async fn set_replicas(deployments: &Api<Deployment>, name: &str, replicas: u32) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": replicas}});
    deployments.patch(name, &PatchParams::apply(SCALER_MANAGER).force(), &Patch::Apply(patch)).await?;
    Ok(())
}

/// The load report of every ready pod of `workload` that answers; the others are left out
/// (fewer reports only make the figures more cautious: see [`observe`]).
async fn fetch_load(ctx: &Context, namespace: &str, platform: &str, workload: Workload) -> Result<Vec<LoadReport>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = render::selector_labels(platform, workload.as_str())
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = pods.list(&ListParams::default().labels(&selector)).await?.items;
    let addresses: Vec<(String, String)> = pods.iter().filter_map(|pod| Some((pod.name_any(), ready_address(pod)?))).collect();
    let port = ctx.scaler.options.load_port;
    let fetches = addresses.into_iter().map(|(pod, ip)| async move {
        let url = format!("http://{ip}:{port}/v1/load");
        let result = async { ctx.scaler.http.get(&url).send().await?.error_for_status()?.json::<LoadReport>().await }.await;
        match result {
            Ok(report) if report.workload == workload => Some(report),
            Ok(report) => {
                tracing::warn!(%pod, expected = %workload, reported = %report.workload, "pod reports another workload's load");
                None
            }
            Err(error) => {
                tracing::debug!(%pod, %error, "no load report");
                None
            }
        }
    });
    Ok(futures::future::join_all(fetches).await.into_iter().flatten().collect())
}

/// The pod's IP when it is ready and not terminating.
fn ready_address(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    ready.then(|| status.pod_ip.clone()).flatten()
}

/// One observation of a workload from its replicas' reports; `None` without any.
///
/// Shared figures (arrival, backlog) are the workload's, so the highest reported is taken;
/// the processed rate adds up over replicas and the busy fraction averages; the oldest report
/// dates the observation, so one stale replica makes the whole observation stale.
pub fn observe(reports: &[LoadReport]) -> Option<LoadObservation> {
    let oldest = reports.iter().map(|r| r.at_ms).min()?;
    let n = reports.len() as f64;
    Some(LoadObservation {
        observed_at: Timestamp::from_millisecond(oldest).ok()?,
        arrival_rate: reports.iter().map(|r| r.arrival_per_second).fold(0.0, f64::max),
        processed_rate: reports.iter().map(|r| r.processed_per_second).sum(),
        busy_fraction: reports.iter().map(|r| r.busy_fraction).sum::<f64>() / n,
        // Kafka lag is each replica's own partitions': it adds up
        backlog: reports.iter().map(|r| r.backlog).max().unwrap_or(0)
            + source_status::consumer_figures(reports).values().map(|c| c.lag.max(0) as u64).sum::<u64>(),
        ready_replicas: reports.len() as u32,
    })
}

fn label<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The status of one decision; a decision like the previous one (same size, change and
/// cause) keeps the previous entry, so a steady platform does not rewrite its status.
fn workload_status(decision: &Decision, before: Option<&ScaledWorkloadStatus>, now: Timestamp) -> ScaledWorkloadStatus {
    let next = ScaledWorkloadStatus {
        name: decision.workload.as_str().to_string(),
        current_replicas: decision.current_replicas as i32,
        desired_replicas: decision.desired_replicas as i32,
        decision: label(decision.change),
        cause: label(decision.cause),
        reason: decision.reason.clone(),
        decided_at: now.to_string(),
    };
    match before {
        Some(b)
            if (b.current_replicas, b.desired_replicas, &b.decision, &b.cause)
                == (next.current_replicas, next.desired_replicas, &next.decision, &next.cause) =>
        {
            b.clone()
        }
        _ => next,
    }
}

async fn write_status(ctx: &Context, platform: &CustomerDataPlatform, scaling: ScalingStatus) -> Result<(), ScalerError> {
    if platform.status.as_ref().and_then(|s| s.scaling.as_ref()) == Some(&scaling) {
        return Ok(());
    }
    let status = CustomerDataPlatformStatus { scaling: Some(scaling), ..CustomerDataPlatformStatus::default() };
    apply::apply_status_as(&ctx.client, platform, SCALER_MANAGER, &status).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ScalingPolicySpec;

    fn report(at_ms: i64, arrival: f64, processed: f64, busy: f64, backlog: u64) -> LoadReport {
        LoadReport {
            workload: Workload::Matcher,
            replica: "r".into(),
            at_ms,
            window_seconds: 30.0,
            arrival_per_second: arrival,
            processed_per_second: processed,
            busy_fraction: busy,
            backlog,
            oldest_backlog_seconds: 0.0,
            feeds: vec![],
            kafka: vec![],
            enrichers: vec![],
        }
    }

    #[test]
    fn observation_sums_own_work_and_keeps_shared_figures_once() {
        let seen = observe(&[report(2_000, 40.0, 30.0, 0.5, 900), report(1_000, 41.0, 10.0, 0.1, 1000)]).unwrap();
        assert_eq!(seen.observed_at.as_millisecond(), 1_000, "the oldest report dates it");
        assert_eq!((seen.arrival_rate, seen.processed_rate, seen.backlog, seen.ready_replicas), (41.0, 40.0, 1000, 2));
        assert!((seen.busy_fraction - 0.3).abs() < 1e-12);
        assert_eq!(observe(&[]), None);
    }

    fn platform(annotations: &[(&str, &str)]) -> CustomerDataPlatform {
        let mut p = CustomerDataPlatform::new("shop", serde_json::from_value(serde_json::json!({})).unwrap());
        p.annotations_mut().extend(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        p
    }

    fn policy(windows: serde_json::Value, paused: bool) -> ScalingPolicySpec {
        serde_json::from_value(serde_json::json!({"platformRef": {"name": "shop"}, "paused": paused, "peakWindows": windows})).unwrap()
    }

    #[test]
    fn next_floor_is_the_nearest_opening_minus_its_lead() {
        let spec = policy(
            serde_json::json!([
                {"name": "gala", "start": "2030-01-01T20:00:00Z", "end": "2030-01-01T23:00:00Z", "leadTimeSeconds": 600, "minReplicas": {"matcher": 4}},
                {"name": "daily", "schedule": "0 9 * * *", "durationMinutes": 60, "leadTimeSeconds": 300, "minReplicas": {"ingest": 3}},
            ]),
            false,
        );
        let effective = effective_policy(&platform(&[]), [("p", &spec)]).unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        // The daily window's floor rises at 08:55.
        assert_eq!(until_next_floor(&effective, at("2030-01-01T08:00:00Z")), Some(Duration::from_secs(55 * 60)));
        // Inside its lead time already: the next rise is the gala's, at 19:50.
        assert_eq!(until_next_floor(&effective, at("2030-01-01T08:57:00Z")), Some(Duration::from_secs(10 * 3600 + 53 * 60)));
        let none = policy(serde_json::json!([]), false);
        assert_eq!(until_next_floor(&effective_policy(&platform(&[]), [("p", &none)]).unwrap(), at("2030-01-01T08:00:00Z")), None);
    }

    #[test]
    fn pause_comes_from_either_annotation_or_a_policy() {
        let running = policy(serde_json::json!([]), false);
        let effective = effective_policy(&platform(&[]), [("p", &running)]).unwrap();
        assert_eq!(pause_reason(&platform(&[]), Some(&effective)), None);
        assert!(pause_reason(&platform(&[(SCALING_PAUSED_ANNOTATION, "true")]), Some(&effective)).unwrap().contains("scaling-paused"));
        assert!(pause_reason(&platform(&[(PAUSED_ANNOTATION, "true")]), None).unwrap().contains("cdp.dev/paused"));
        assert_eq!(pause_reason(&platform(&[(SCALING_PAUSED_ANNOTATION, "false")]), None), None);
        let paused = policy(serde_json::json!([]), true);
        let effective = effective_policy(&platform(&[]), [("p", &paused)]).unwrap();
        assert!(pause_reason(&platform(&[]), Some(&effective)).unwrap().contains("spec.paused"));
    }

    #[test]
    fn a_repeated_decision_keeps_its_status_entry() {
        let decision = |desired: u32, reason: &str| Decision {
            workload: Workload::Matcher,
            current_replicas: 2,
            desired_replicas: desired,
            change: if desired == 2 { Change::Hold } else { Change::Up },
            cause: crate::scaling::decision::Cause::Fits,
            reason: reason.into(),
        };
        let t0 = "2030-01-01T00:00:00Z".parse::<Timestamp>().unwrap();
        let first = workload_status(&decision(2, "arrival 10/s"), None, t0);
        assert_eq!((first.decision.as_str(), first.cause.as_str(), first.decided_at.as_str()), ("hold", "fits", "2030-01-01T00:00:00Z"));
        let later = t0 + jiff::SignedDuration::from_secs(15);
        assert_eq!(workload_status(&decision(2, "arrival 11/s"), Some(&first), later), first);
        let changed = workload_status(&decision(3, "arrival 90/s"), Some(&first), later);
        assert_eq!((changed.desired_replicas, changed.reason.as_str()), (3, "arrival 90/s"));
        assert_eq!(changed.decided_at, later.to_string());
    }
}
