//! `CustomerDataPlatform`: one deployment of the platform.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, SecretKeyRef};


/// A customer-data platform: its store, image, API exposure and workload defaults.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "cdp.dev",
    version = "v1alpha1",
    kind = "CustomerDataPlatform",
    namespaced,
    doc = "A customer-data platform: its store, image, API exposure and workload bounds.",
    shortname = "cdp",
    status = "CustomerDataPlatformStatus",
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".status.storeEndpoint"}"#,
    printcolumn = r#"{"name":"Config","type":"string","jsonPath":".status.configHash"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CustomerDataPlatformSpec {
    /// Container image of `cdp` run by every workload. Absent: the operator's own image (its
    /// `--image` setting), so the data plane runs the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Where profiles live. Absent: a PostgreSQL managed by the operator in this namespace.
    #[serde(default)]
    pub store: StoreSpec,
    #[serde(default)]
    pub api: ApiSpec,
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Replica bounds and resources per workload. A ScalingPolicy may narrow the bounds.
    #[serde(default)]
    pub workloads: Workloads,
}

impl CustomerDataPlatformSpec {
    /// Every Secret key the platform's own spec references, with the field that names it.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretKeyRef)> {
        [
            self.store.external.as_ref().map(|e| ("spec.store.external.urlSecretRef", &e.url_secret_ref)),
            self.api.tokens_secret_ref.as_ref().map(|t| ("spec.api.tokensSecretRef", t)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// The profile store: in-cluster PostgreSQL (default) or an external one.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.inCluster) && has(self.external))", "message": "store: set inCluster or external, not both"}
]))]
pub struct StoreSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<InClusterStore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStore>,
}

/// A single-instance PostgreSQL StatefulSet owned by the platform.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InClusterStore {
    /// A PostgreSQL image honouring the official image's contract (`POSTGRES_USER`,
    /// `POSTGRES_PASSWORD`, `POSTGRES_DB`, `PGDATA`, uid 999). Absent: the operator's
    /// `--postgres-image` setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Size of the data volume.
    #[serde(default = "default_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)$"))]
    pub storage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for InClusterStore {
    fn default() -> Self {
        Self {
            image: None,
            storage: default_storage(),
            storage_class_name: None,
            resources: None,
        }
    }
}

fn default_storage() -> String {
    "10Gi".to_string()
}

/// Any PostgreSQL-compatible service; the Secret key holds a `postgres://` URL.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalStore {
    pub url_secret_ref: SecretKeyRef,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    #[serde(default)]
    pub service_type: ServiceType,
    /// API tokens, one per line: `NAME SCOPES TOKEN` (scopes `read`, `write`, `erase`, comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_secret_ref: Option<SecretKeyRef>,
    /// Namespaces allowed to call the API (NetworkPolicy); empty allows every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

impl Default for ApiSpec {
    fn default() -> Self {
        Self { service_type: ServiceType::ClusterIP, tokens_secret_ref: None, allowed_namespaces: vec![] }
    }
}

/// Who may scrape the workloads' Prometheus metrics.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Peers the NetworkPolicies admit to every workload's HTTP port, where `/metrics` is
    /// served (e.g. Prometheus's namespace and pods). Intake is open to all already; the
    /// operator, which reads the workloads' load, is always admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workloads {
    #[serde(default)]
    pub ingest: WorkloadSpec,
    #[serde(default)]
    pub matcher: WorkloadSpec,
    #[serde(default)]
    pub api: WorkloadSpec,
    #[serde(default)]
    pub feeds: WorkloadSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}
]))]
pub struct WorkloadSpec {
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Container resources; sane requests and limits apply when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self { min_replicas: default_min_replicas(), max_replicas: default_max_replicas(), resources: None }
    }
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomerDataPlatformStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Host:port of the store the workloads use (no credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_endpoint: Option<String>,
    /// Content hash of the PipelineConfig in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Per workload: desired and ready replicas as the cluster reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadStatus>,
    /// Counts of the resources compiled into the config, and of those refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<MemberCounts>,
    /// What the scaler decided for the scaled workloads (written by the scaler alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
}

/// The scaler's view of a platform.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    /// `builtin` (the operator's scaler sets replicas) or `keda` (KEDA ScaledObjects do).
    pub mode: String,
    /// Replica counts are left as they are (annotation `cdp.dev/scaling-paused`, a paused
    /// ScalingPolicy, or `cdp.dev/paused`).
    pub paused: bool,
    /// Why scaling is paused or cannot run; empty while it runs (always written, so that the
    /// scaler's apply clears an old message).
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<ScaledWorkloadStatus>,
}

/// The last scaling decision for one workload.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaledWorkloadStatus {
    pub name: String,
    /// `spec.replicas` of the Deployment when the decision was taken.
    pub current_replicas: i32,
    pub desired_replicas: i32,
    /// `up`, `down` or `hold`.
    pub decision: String,
    /// What drove it (e.g. `backlog`, `load`, `bounds`, `peakFloor`, `noMetrics`).
    pub cause: String,
    /// Short human reason, e.g. "backlog 42k, drains in 90 s at 6 replicas".
    pub reason: String,
    /// When this decision was first taken (a repeated one keeps its time).
    #[schemars(extend("format" = "date-time"))]
    pub decided_at: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub name: String,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    pub updated_replicas: i32,
    pub available: bool,
    /// Why the rollout failed (e.g. its progress deadline passed), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberCounts {
    pub sources: u32,
    pub feeds: u32,
    pub matching_policies: u32,
    pub scaling_policies: u32,
    /// Resources of this platform that are Stalled and left out of the config.
    pub rejected: u32,
}
