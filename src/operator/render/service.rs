//! ServiceAccount, Services, PodDisruptionBudgets and the api HorizontalPodAutoscaler.

use serde_json::{Value, json};

use super::common::{Context, Workload, selector_labels};

pub fn service_account(ctx: &Context) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ctx.metadata(&ctx.service_account_name(), "platform"),
        // The data plane never calls the Kubernetes API.
        "automountServiceAccountToken": false,
    })
}

/// Services exist for the workloads that take traffic: ingest (intake) and api.
pub fn service(ctx: &Context, workload: Workload) -> Value {
    let service_type = match workload {
        Workload::Api => json!(ctx.platform.spec.api.service_type),
        _ => json!("ClusterIP"),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(&workload.object_name(&ctx.name), workload.name()),
        "spec": {
            "type": service_type,
            "selector": selector_labels(&ctx.name, workload.name()),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    })
}

/// maxUnavailable 1 lets a node drain evict a single-replica workload, unlike minAvailable 1.
pub fn disruption_budget(ctx: &Context, workload: Workload) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": ctx.metadata(&workload.object_name(&ctx.name), workload.name()),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(&ctx.name, workload.name())},
        },
    })
}

pub fn api_autoscaler(ctx: &Context) -> Value {
    let bounds = Workload::Api.spec(ctx.platform);
    let name = Workload::Api.object_name(&ctx.name);
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ctx.metadata(&name, "api"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": bounds.min_replicas.max(1),
            "maxReplicas": bounds.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
        },
    })
}
