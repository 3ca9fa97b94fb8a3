//! Operator metrics: reconciles, their duration, and errors by reason; and per scaled workload,
//! the scaler's last decision against its bounds and the peak floor in force (what the
//! dashboard draws beside the replicas, and what the "pinned at max" alert reads).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

/// One scaled workload of one platform.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub platform: String,
    pub workload: String,
}

/// The scaler's figures for one workload at its last decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalerFigures {
    pub current: u32,
    pub desired: u32,
    pub min: u32,
    pub max: u32,
    /// The peak window's floor in force (0 when none is).
    pub peak_floor: u32,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    current_replicas: Family<WorkloadLabels, Gauge>,
    desired_replicas: Family<WorkloadLabels, Gauge>,
    min_replicas: Family<WorkloadLabels, Gauge>,
    max_replicas: Family<WorkloadLabels, Gauge>,
    peak_floor: Family<WorkloadLabels, Gauge>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cdp_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register("reconciles", "Platform reconciles started", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles by reason", failures.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration", duration.clone());
        let gauges: [Family<WorkloadLabels, Gauge>; 5] = Default::default();
        let [current_replicas, desired_replicas, min_replicas, max_replicas, peak_floor] = gauges;
        registry.register("scaler_current_replicas", "Replicas of a scaled workload when the scaler last decided", current_replicas.clone());
        registry.register("scaler_desired_replicas", "Replicas the scaler last decided for a workload", desired_replicas.clone());
        registry.register("scaler_min_replicas", "Lower bound of a scaled workload (its ScalingPolicy or platform)", min_replicas.clone());
        registry.register(
            "scaler_max_replicas",
            "Upper bound of a scaled workload (its ScalingPolicy or platform, or its Kafka partitions)",
            max_replicas.clone(),
        );
        registry.register("scaler_peak_floor_replicas", "Replica floor of the peak window in force (0 when none is)", peak_floor.clone());
        Self {
            reconciles,
            failures,
            duration,
            current_replicas,
            desired_replicas,
            min_replicas,
            max_replicas,
            peak_floor,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub fn failed(&self, reason: &str) {
        self.failures.get_or_create(&ErrorLabels { reason: reason.to_string() }).inc();
    }

    fn scaler_gauges(&self) -> [&Family<WorkloadLabels, Gauge>; 5] {
        [&self.current_replicas, &self.desired_replicas, &self.min_replicas, &self.max_replicas, &self.peak_floor]
    }

    /// Record the scaler's decision for one workload.
    pub fn scaled(&self, workload: &WorkloadLabels, figures: ScalerFigures) {
        let ScalerFigures { current, desired, min, max, peak_floor } = figures;
        for (gauge, value) in self.scaler_gauges().into_iter().zip([current, desired, min, max, peak_floor]) {
            gauge.get_or_create(workload).set(i64::from(value));
        }
    }

    /// Drop the figures of a workload the scaler no longer decides for (its platform is gone).
    pub fn forget(&self, workload: &WorkloadLabels) {
        for gauge in self.scaler_gauges() {
            gauge.remove(workload);
        }
    }
}
