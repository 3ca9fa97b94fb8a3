//! Worker pools of `cdp local`, sized by the same decision the operator applies to replicas:
//! here a worker plays the part of a replica. Growth and shrinkage of the pool are logged with
//! the decision's reason, so scaling can be watched on one machine.
//!
//! A pool is generic over what a worker is ([`SpawnWorker`]); the matcher pool uses it now, a
//! feeds delivery pool can use it the same way.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::task::JoinHandle;

use crate::runtime::load::{self, WorkMeter};
use crate::runtime::ops::{self, Shutdown, ShutdownTrigger};
use crate::pipeline::PipelineConfig;
use crate::scaling::Workload;
use crate::scaling::decision::{Change, DecisionInput, DecisionState, LoadObservation, PeakFloor, Tuning, decide};
use crate::scaling::load::LoadReport;
use crate::scaling::policy::{self, PlatformDefaults, WorkloadPolicy};
use crate::scaling::schedule::{PeakSchedule, active_floor};
use crate::store::Store;

/// Starts one worker that runs until the shutdown it is given fires.
pub type SpawnWorker = Box<dyn Fn(Shutdown) -> JoinHandle<()> + Send + Sync>;

/// How a pool decides.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Time between two decisions.
    pub interval: Duration,
    /// Load rates are averaged over about this long.
    pub window: Duration,
    pub policy: WorkloadPolicy,
    pub windows: Vec<PeakSchedule>,
    pub tuning: Tuning,
}

impl PoolOptions {
    /// The platform's ScalingPolicy for `workload` (the defaults when it has none, or when its
    /// policies contradict, which is logged), with timings for in-process workers.
    pub fn for_platform(config: &PipelineConfig, workload: Workload) -> PoolOptions {
        let policies: Vec<_> = config.scaling.iter().map(|p| (p.name.as_str(), &p.spec)).collect();
        let defaults = PlatformDefaults::default();
        let (policy, windows) = match policy::combine(&policies, &defaults) {
            Ok(effective) => (effective.workload(workload), effective.schedules()),
            Err(errors) => {
                tracing::warn!(%errors, "scaling policies cannot be used; the worker pool keeps the default bounds");
                (defaults.get(workload), Vec::new())
            }
        };
        let interval = Duration::from_secs(5);
        // A worker is a task: it starts at once, unlike a pod.
        let tuning = Tuning { startup_seconds: 1, decision_interval_seconds: interval.as_secs() as u32, ..Tuning::default() };
        PoolOptions { interval, window: load::LOAD_WINDOW, policy, windows, tuning }
    }
}

/// One observation of the pool from this process's load report: the workers are the replicas.
fn pool_observation(report: &LoadReport, workers: u32) -> Option<LoadObservation> {
    Some(LoadObservation {
        observed_at: Timestamp::from_millisecond(report.at_ms).ok()?,
        arrival_rate: report.arrival_per_second,
        processed_rate: report.processed_per_second,
        busy_fraction: report.busy_fraction,
        backlog: report.backlog,
        ready_replicas: workers,
    })
}

/// A pool of workers of one workload, resized by [`decide`] every interval.
pub struct ScaledPool {
    pub workload: Workload,
    pub store: Store,
    /// Measures the pool's work (its slots are kept equal to the pool size).
    pub meter: Arc<WorkMeter>,
    pub spawn: SpawnWorker,
    pub options: PoolOptions,
}

impl ScaledPool {
    /// Start `initial` workers and keep resizing until `shutdown`; then stop every worker
    /// (each finishes the batch it holds) and return once they have.
    pub fn start(self, initial: u32, shutdown: Shutdown) -> JoinHandle<()> {
        tokio::spawn(self.run(initial, shutdown))
    }

    async fn run(self, initial: u32, shutdown: Shutdown) {
        let mut workers: Vec<(ShutdownTrigger, JoinHandle<()>)> = Vec::new();
        self.meter.set_window(self.options.window);
        self.resize(&mut workers, initial);
        let mut state = DecisionState::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.options.interval) => {}
                _ = shutdown.clone().wait() => break,
            }
            let current = workers.len() as u32;
            let load = match load::report(&self.store, &self.meter, "local").await {
                Ok(report) => pool_observation(&report, current),
                Err(error) => {
                    tracing::warn!(workload = %self.workload, %error, "no load figures; the pool holds its size");
                    None
                }
            };
            let now = Timestamp::now();
            let floor = active_floor(&self.options.windows, now)
                .map(|f| PeakFloor { replicas: f.floors.get(self.workload), window: f.name })
                .filter(|f| f.replicas > 0);
            let input = DecisionInput {
                workload: self.workload,
                now,
                current_replicas: current,
                load,
                policy: self.options.policy,
                floor,
                tuning: self.options.tuning,
            };
            let (decision, next) = decide(&input, state);
            tracing::debug!(?input.load, ?decision, "pool decision");
            state = next;
            if decision.change != Change::Hold {
                tracing::info!(
                    workload = %self.workload,
                    from = current,
                    to = decision.desired_replicas,
                    reason = %decision.reason,
                    "worker pool resized"
                );
                self.resize(&mut workers, decision.desired_replicas);
            }
        }
        for (trigger, worker) in workers.drain(..) {
            trigger.trigger();
            let _ = worker.await;
        }
        self.meter.set_slots(0);
    }

    /// Start or stop workers until there are `size`; the meter's slots follow.
    fn resize(&self, workers: &mut Vec<(ShutdownTrigger, JoinHandle<()>)>, size: u32) {
        while workers.len() < size as usize {
            let (trigger, shutdown) = ops::shutdown_channel();
            workers.push((trigger, (self.spawn)(shutdown)));
        }
        // A stopped worker ends after the batch it holds; nothing it claimed is lost.
        while workers.len() > size as usize {
            let (trigger, _) = workers.pop().expect("longer than size");
            trigger.trigger();
        }
        self.meter.set_slots(size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_are_the_replicas_of_the_observation() {
        let report = LoadReport {
            workload: Workload::Matcher,
            replica: "local".into(),
            at_ms: 1_700_000_000_000,
            window_seconds: 2.0,
            arrival_per_second: 40.0,
            processed_per_second: 30.0,
            busy_fraction: 0.5,
            backlog: 7,
            oldest_backlog_seconds: 1.0,
            feeds: vec![],
            kafka: vec![],
            enrichers: vec![],
        };
        let seen = pool_observation(&report, 3).unwrap();
        assert_eq!(seen.observed_at.as_millisecond(), 1_700_000_000_000);
        assert_eq!((seen.arrival_rate, seen.processed_rate, seen.busy_fraction, seen.backlog, seen.ready_replicas), (40.0, 30.0, 0.5, 7, 3));
    }

    #[test]
    fn platform_policy_bounds_the_pool() {
        let loaded = crate::local::load_platform(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples"), None).unwrap();
        let options = PoolOptions::for_platform(&loaded.config, Workload::Matcher);
        assert_eq!((options.policy.min_replicas, options.policy.max_replicas, options.policy.catch_up_seconds), (1, 8, 20));
        assert_eq!(options.windows.len(), 2, "the samples' peak windows raise the pool too");
    }
}
