//! KEDA ScaledObjects for the scaled workloads, rendered instead of using the built-in scaler
//! when the platform's ScalingPolicy says `mode: keda` (see [`crate::scaling::keda`] for how
//! peak windows and the intake lag become triggers).

use kube::api::ApiResource;
use serde_json::{Value, json};

use super::common::{Context, Workload};
use super::postgres;
use crate::crd::scaling::ScalingMode;
use crate::pipeline::PipelineConfig;
use crate::scaling::Workload as Scaled;
use crate::scaling::keda::{INTAKE_LAG_QUERY, LAG_PER_REPLICA, cron_trigger};
use crate::scaling::policy::{self, PlatformDefaults};

/// KEDA's ScaledObject kind.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    }
}

/// Seconds between KEDA's checks of the triggers.
const POLLING_SECONDS: u32 = 15;
/// The upper bound KEDA (the HPA) accepts for a stabilisation window.
const MAX_STABILIZATION_SECONDS: u32 = 3600;

const SCALED: [(Workload, Scaled); 3] =
    [(Workload::Ingest, Scaled::Ingest), (Workload::Matcher, Scaled::Matcher), (Workload::Feeds, Scaled::Feeds)];

/// One ScaledObject per scaled workload in KEDA mode; none otherwise (or when the policies
/// contradict, which their own status reports).
pub fn scaled_objects(ctx: &Context, config: &PipelineConfig) -> Vec<Value> {
    let policies: Vec<_> = config.scaling.iter().map(|p| (p.name.as_str(), &p.spec)).collect();
    let Ok(effective) = policy::combine(&policies, &PlatformDefaults::of(&ctx.platform.spec)) else { return Vec::new() };
    if effective.mode != ScalingMode::Keda {
        return Vec::new();
    }
    let windows: Vec<_> = config.scaling.iter().flat_map(|p| &p.spec.peak_windows).collect();
    SCALED
        .iter()
        .map(|(workload, scaled)| {
            let bounds = effective.workload(*scaled);
            let mut triggers: Vec<Value> = windows
                .iter()
                // Compile refuses KEDA mode for a window KEDA cannot express.
                .filter_map(|w| cron_trigger(w, *scaled).ok().flatten())
                .map(|t| {
                    json!({
                        "type": "cron",
                        "name": format!("peak-{}", t.window),
                        "metadata": {"timezone": t.timezone, "start": t.start, "end": t.end, "desiredReplicas": t.desired_replicas.to_string()},
                    })
                })
                .collect();
            triggers.push(match scaled {
                Scaled::Matcher => json!({
                    "type": "postgresql",
                    "name": "intake-lag",
                    "metadata": lag_metadata(ctx),
                }),
                // Intake and delivery have no queue of their own in the store: CPU, at the
                // policy's target utilisation.
                Scaled::Ingest | Scaled::Feeds => json!({
                    "type": "cpu",
                    "name": "cpu",
                    "metricType": "Utilization",
                    "metadata": {"value": format!("{:.0}", bounds.target_utilization * 100.0)},
                }),
            });
            let name = workload.object_name(&ctx.name);
            let stabilization = bounds.scale_down_stabilization_seconds.min(MAX_STABILIZATION_SECONDS);
            json!({
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": ctx.metadata(&name, workload.name()),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicaCount": bounds.min_replicas,
                    "maxReplicaCount": bounds.max_replicas,
                    "pollingInterval": POLLING_SECONDS,
                    "cooldownPeriod": stabilization,
                    "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                        "scaleDown": {"stabilizationWindowSeconds": stabilization},
                    }}},
                    "triggers": triggers,
                },
            })
        })
        .collect()
}

fn lag_metadata(ctx: &Context) -> Value {
    let mut metadata = match ctx.platform.spec.store.external {
        Some(_) => json!({"connectionFromEnv": "CDP_STORE_URL"}),
        None => postgres::keda_connection(ctx),
    };
    metadata["query"] = json!(INTAKE_LAG_QUERY);
    metadata["targetQueryValue"] = json!(LAG_PER_REPLICA.to_string());
    metadata
}
