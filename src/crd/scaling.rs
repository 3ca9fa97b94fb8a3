//! `ScalingPolicy`: bounds for the operator's scaler and scheduled peak windows.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, PlatformRef};

/// Scaling bounds and known peaks for one platform's workloads.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "cdp.dev",
    version = "v1alpha1",
    kind = "ScalingPolicy",
    namespaced,
    doc = "Scaling bounds and scheduled peak windows for a platform's workloads.",
    shortname = "cdpscale",
    status = "ScalingPolicyStatus",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".spec.platformRef.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Active Peak","type":"string","jsonPath":".status.activePeakWindow"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicySpec {
    pub platform_ref: PlatformRef,
    /// `builtin`: the operator's own scaler sets replicas. `keda`: KEDA ScaledObjects are rendered instead.
    #[serde(default)]
    pub mode: ScalingMode,
    /// Stop changing replica counts; the current sizes hold.
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub workloads: ScaledWorkloads,
    /// Known events that raise the replica floor ahead of time. Keyed by `name`: server-side
    /// apply merges windows by name, so each field manager (a GitOps tool, `kubectl cdp
    /// prescale`) owns its own windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub peak_windows: Vec<PeakWindow>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ScalingMode {
    #[default]
    Builtin,
    Keda,
}

/// Bounds per scaled workload; an absent workload keeps the platform's defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaledWorkloads {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<WorkloadScaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matcher: Option<WorkloadScaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feeds: Option<WorkloadScaling>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}
]))]
pub struct WorkloadScaling {
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Fraction of a replica's true capacity to plan for (headroom for noise).
    #[serde(default = "default_target_utilization")]
    #[schemars(range(min = 0.1, max = 1.0))]
    pub target_utilization: f64,
    /// A backlog must drain within this many seconds.
    #[serde(default = "default_catch_up_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub catch_up_seconds: u32,
    /// Scale down only after the lower size has been enough for this long.
    #[serde(default = "default_stabilization_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: u32,
}

/// High, because the scaler plans on each replica's true processing rate (processed ÷ busy),
/// not on a noisy CPU reading, and the catch-up term adds capacity as soon as a backlog forms.
pub fn default_target_utilization() -> f64 {
    0.9
}
pub fn default_catch_up_seconds() -> u32 {
    30
}
/// Shorter than the HPA's 300 s: queue length is a precise signal, scale-down is also bounded
/// by a factor per step, and never happens while a backlog drains.
pub fn default_stabilization_seconds() -> u32 {
    120
}

/// A window during which workloads keep at least the given replicas.
/// Either `start`+`end` (one-off) or `schedule`+`durationMinutes` (recurring).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.start) == has(self.end)", "message": "start and end go together"},
    {"rule": "has(self.schedule) == has(self.durationMinutes)", "message": "schedule and durationMinutes go together"},
    {"rule": "has(self.start) != has(self.schedule)", "message": "set either start/end or schedule/durationMinutes"},
    {"rule": "!has(self.start) || !has(self.end) || timestamp(self.start) < timestamp(self.end)", "message": "start must be before end"}
]))]
pub struct PeakWindow {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// RFC 3339 start of a one-off window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub start: Option<String>,
    /// RFC 3339 end of a one-off window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub end: Option<String>,
    /// Five-field cron expression (minute hour day-of-month month day-of-week) for recurring windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 100))]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10080))]
    pub duration_minutes: Option<u32>,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Raise the floor this long before the window opens, so pods are warm when it starts.
    #[serde(default = "default_lead_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub lead_time_seconds: u32,
    /// Replica floors during the window.
    pub min_replicas: PeakFloors,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}
fn default_lead_seconds() -> u32 {
    300
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.ingest) || has(self.matcher) || has(self.feeds)", "message": "a peak window must raise at least one workload"}
]))]
pub struct PeakFloors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub ingest: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub matcher: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub feeds: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicyStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Name of the peak window in force now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_peak_window: Option<String>,
}
