//! The load a replica reports (`GET /v1/load`, next to `/metrics`) and the matching Prometheus
//! metrics, for the operator's scaler.
//!
//! Two kinds of figure: the arrival rate and the backlog are the workload's, read from the
//! store every replica shares; the processed rate and the busy fraction are this replica's,
//! measured by a [`WorkMeter`] around its real work (an intake request, a matcher batch).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ops::{ApiError, Metrics};
use crate::scaling::Workload;
use crate::scaling::load::LoadReport;
use crate::store::{Store, now_ms};

/// Rates are averaged over about this long.
pub const LOAD_WINDOW: Duration = Duration::from_secs(30);

type Labels = Vec<(&'static str, &'static str)>;

fn labels(workload: Workload) -> Labels {
    vec![("workload", workload.as_str())]
}

/// The load figures as Prometheus metrics, labelled by workload.
#[derive(Clone, Default)]
pub struct LoadMetrics {
    processed: Family<Labels, Counter>,
    busy_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    arrival: Family<Labels, Gauge<f64, AtomicU64>>,
    backlog: Family<Labels, Gauge>,
    oldest_backlog: Family<Labels, Gauge<f64, AtomicU64>>,
    slots: Family<Labels, Gauge>,
}

impl LoadMetrics {
    pub fn register(registry: &mut Registry) -> LoadMetrics {
        let m = LoadMetrics::default();
        registry.register("load_processed", "Work items this replica finished", m.processed.clone());
        registry.register(
            "load_busy_seconds",
            "Seconds this replica's work slots were busy (summed over slots)",
            m.busy_seconds.clone(),
        );
        registry.register("load_arrival_per_second", "Work items arriving per second for the whole workload", m.arrival.clone());
        registry.register("load_backlog", "Work items waiting for the whole workload", m.backlog.clone());
        registry.register("load_oldest_backlog_seconds", "Age of the oldest waiting work item", m.oldest_backlog.clone());
        registry.register("load_slots", "Units of work this replica runs at once (matcher workers)", m.slots.clone());
        m
    }
}

/// Measures one replica's work for one workload: items finished, and the time its work slots
/// (matcher workers; one for intake, busy while any request is in flight) were busy.
pub struct WorkMeter {
    workload: Workload,
    metrics: LoadMetrics,
    state: Mutex<MeterState>,
}

struct MeterState {
    /// Rates are averaged over about this long.
    window: Duration,
    slots: u32,
    /// When each unit of work in flight started, by its number.
    in_flight: std::collections::BTreeMap<u64, Instant>,
    next_work: u64,
    last_change: Instant,
    /// Cumulative busy slot-seconds and items since the meter started.
    busy: f64,
    processed: u64,
    /// Cumulative figures at earlier reports, to difference over the window.
    marks: VecDeque<Mark>,
}

#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    busy: f64,
    processed: u64,
}

/// This replica's share of a load report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    pub window_seconds: f64,
    pub processed_per_second: f64,
    pub busy_fraction: f64,
}

impl MeterState {
    fn new(slots: u32, now: Instant) -> MeterState {
        MeterState {
            window: LOAD_WINDOW,
            slots,
            in_flight: Default::default(),
            next_work: 0,
            last_change: now,
            busy: 0.0,
            processed: 0,
            marks: VecDeque::from([Mark { at: now, busy: 0.0, processed: 0 }]),
        }
    }

    /// Account busy time up to `now`; returns the busy slot-seconds added.
    fn advance(&mut self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.last_change).as_secs_f64();
        self.last_change = now.max(self.last_change);
        let busy = dt * f64::from((self.in_flight.len() as u32).min(self.slots.max(1)));
        self.busy += busy;
        busy
    }

    /// Figures since the last mark at least one window old (or the first one).
    fn measure(&mut self, now: Instant) -> Measured {
        let base = self.marks.iter().rposition(|m| now.saturating_duration_since(m.at) >= self.window).unwrap_or(0);
        self.marks.drain(..base);
        let mark = Mark { at: now, busy: self.busy, processed: self.processed };
        self.marks.push_back(mark);
        let from = self.marks[0];
        let seconds = now.saturating_duration_since(from.at).as_secs_f64().max(1e-3);
        let slots = f64::from(self.slots.max(1));
        Measured {
            window_seconds: seconds,
            processed_per_second: (mark.processed - from.processed) as f64 / seconds,
            busy_fraction: ((mark.busy - from.busy) / (seconds * slots)).clamp(0.0, 1.0),
        }
    }
}

impl WorkMeter {
    pub fn new(workload: Workload, slots: u32, metrics: LoadMetrics) -> Arc<WorkMeter> {
        Arc::new(WorkMeter { workload, metrics, state: Mutex::new(MeterState::new(slots, Instant::now())) })
    }

    pub fn workload(&self) -> Workload {
        self.workload
    }

    /// The state, with busy time accounted up to now.
    fn lock_now(&self) -> std::sync::MutexGuard<'_, MeterState> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let busy = state.advance(Instant::now());
        if busy > 0.0 {
            self.metrics.busy_seconds.get_or_create(&labels(self.workload)).inc_by(busy);
        }
        state
    }

    /// How many units of work can run at once (matcher workers in this process).
    pub fn set_slots(&self, slots: u32) {
        self.lock_now().slots = slots;
        self.metrics.slots.get_or_create(&labels(self.workload)).set(i64::from(slots));
    }

    /// Average rates over about `window` ([`LOAD_WINDOW`] unless set).
    pub fn set_window(&self, window: Duration) {
        self.lock_now().window = window;
    }

    pub fn window(&self) -> Duration {
        self.lock_now().window
    }

    /// Start one unit of work; it is busy until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> Work {
        let mut state = self.lock_now();
        let id = state.next_work;
        state.next_work += 1;
        state.in_flight.insert(id, Instant::now());
        Work { meter: self.clone(), id }
    }

    /// How long the oldest unit of work in flight has been running, at `now`.
    pub fn oldest_in_flight(&self, now: Instant) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_flight.values().min().map(|started| now.saturating_duration_since(*started))
    }

    /// Processed rate and busy fraction over about the last window (successive
    /// reports difference cumulative figures, so any number of readers may ask).
    pub fn measure(&self) -> Measured {
        self.lock_now().measure(Instant::now())
    }
}

/// One unit of work in progress; dropping it (even on an error path) ends its busy time.
pub struct Work {
    meter: Arc<WorkMeter>,
    id: u64,
}

impl Work {
    /// Count `items` finished by this unit of work.
    pub fn finished(&self, items: u64) {
        self.meter.lock_now().processed += items;
        self.meter.metrics.processed.get_or_create(&labels(self.meter.workload)).inc_by(items);
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.meter.lock_now().in_flight.remove(&self.id);
    }
}

/// How long a unit of work may run before the process reports itself stuck (not ready).
pub const STUCK_AFTER: Duration = Duration::from_secs(120);

/// The meters of the scaled workloads a process may run (`cdp local` runs several).
pub struct Meters {
    pub ingest: Arc<WorkMeter>,
    pub matcher: Arc<WorkMeter>,
    pub feeds: Arc<WorkMeter>,
    pub metrics: LoadMetrics,
}

impl Meters {
    pub fn new(metrics: LoadMetrics) -> Meters {
        Meters {
            // Intake is busy while any request is in flight: one slot.
            ingest: WorkMeter::new(Workload::Ingest, 1, metrics.clone()),
            // Matcher slots are its workers, set when they start.
            matcher: WorkMeter::new(Workload::Matcher, 0, metrics.clone()),
            // Feeds slots are its delivery workers, set when they start.
            feeds: WorkMeter::new(Workload::Feeds, 0, metrics.clone()),
            metrics,
        }
    }

    /// Why this process is stuck, if it is: a unit of work (an intake request, a matcher
    /// batch, a delivery) running for longer than [`STUCK_AFTER`] at `now`. Each is bounded
    /// far below that (a batch by its time budget, a delivery by its timeout), so one that
    /// runs on is waiting on something that will not come.
    pub fn stuck(&self, now: Instant) -> Option<String> {
        [&self.ingest, &self.matcher, &self.feeds].into_iter().find_map(|meter| {
            let age = meter.oldest_in_flight(now).filter(|age| *age > STUCK_AFTER)?;
            Some(format!("{} work has been running for {} s", meter.workload.as_str(), age.as_secs()))
        })
    }

    pub fn of(&self, workload: Workload) -> &Arc<WorkMeter> {
        match workload {
            Workload::Ingest => &self.ingest,
            Workload::Matcher => &self.matcher,
            Workload::Feeds => &self.feeds,
        }
    }
}

#[derive(Clone)]
struct LoadState {
    store: Store,
    meter: Arc<WorkMeter>,
    metrics: LoadMetrics,
    replica: Arc<str>,
    /// Intake's Kafka consumers, reported by the ingest workload only.
    kafka: Option<crate::ingest::kafka::KafkaStatus>,
}

/// This replica's name in reports: the pod name in a cluster.
pub fn replica_name() -> String {
    std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "local".to_string())
}

/// `GET /v1/load` for `workload`, as this replica measures it.
pub fn router<S>(store: Store, metrics: &Metrics, workload: Workload) -> Router<S> {
    let state = LoadState {
        store,
        meter: metrics.meters.of(workload).clone(),
        metrics: metrics.meters.metrics.clone(),
        replica: replica_name().into(),
        kafka: (workload == Workload::Ingest).then(|| metrics.kafka.clone()),
    };
    Router::new().route("/v1/load", get(load)).with_state(state)
}

async fn load(State(state): State<LoadState>) -> Result<Json<LoadReport>, ApiError> {
    let mut report = report(&state.store, &state.meter, &state.replica).await?;
    if let Some(kafka) = &state.kafka {
        report.kafka = kafka.report();
    }
    let l = labels(report.workload);
    state.metrics.arrival.get_or_create(&l).set(report.arrival_per_second);
    state.metrics.backlog.get_or_create(&l).set(report.backlog as i64);
    state.metrics.oldest_backlog.get_or_create(&l).set(report.oldest_backlog_seconds);
    Ok(Json(report))
}

/// The load report of `meter`'s workload now.
pub async fn report(store: &Store, meter: &WorkMeter, replica: &str) -> Result<LoadReport, crate::store::StoreError> {
    let at_ms = now_ms();
    let window = meter.window();
    let intake = store.intake_load(at_ms - window.as_millis() as i64).await?;
    let measured = meter.measure();
    // Intake answers each request as it comes: nothing waits for it in the store. The intake
    // queue is the matcher's backlog.
    let (backlog, oldest_backlog_seconds) = match meter.workload() {
        Workload::Ingest => (0, 0.0),
        Workload::Matcher | Workload::Feeds => (
            intake.queued.max(0) as u64,
            intake.oldest_queued_at_ms.map_or(0.0, |oldest| (at_ms - oldest).max(0) as f64 / 1000.0),
        ),
    };
    Ok(LoadReport {
        workload: meter.workload(),
        replica: replica.to_string(),
        at_ms,
        window_seconds: measured.window_seconds,
        arrival_per_second: intake.received as f64 / window.as_secs_f64(),
        processed_per_second: measured.processed_per_second,
        busy_fraction: measured.busy_fraction,
        backlog,
        oldest_backlog_seconds,
        feeds: Vec::new(),
        kafka: Vec::new(),
        enrichers: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_fraction_counts_the_slots_in_use() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut state = MeterState::new(2, t0);
        state.advance(at(0));
        state.in_flight.insert(0, at(0));
        state.advance(at(1000));
        state.processed += 10;
        state.in_flight.remove(&0);
        let m = state.measure(at(2000));
        // One of two slots busy for half the time: a quarter.
        assert_eq!(m.busy_fraction, 0.25);
        assert_eq!(m.processed_per_second, 5.0);
        assert_eq!(m.window_seconds, 2.0);
    }

    #[test]
    fn busy_fraction_never_exceeds_the_slots() {
        let t0 = Instant::now();
        let mut state = MeterState::new(1, t0);
        state.in_flight = (0..3).map(|n| (n, t0)).collect();
        assert_eq!(state.advance(t0 + Duration::from_secs(4)), 4.0, "three requests in flight on one slot");
        assert_eq!(state.measure(t0 + Duration::from_secs(4)).busy_fraction, 1.0);
    }

    #[test]
    fn work_running_past_its_bound_makes_the_process_stuck() {
        let meters = Meters::new(LoadMetrics::default());
        let now = Instant::now();
        assert_eq!(meters.stuck(now), None);
        let batch = meters.matcher.start();
        assert_eq!(meters.stuck(now + STUCK_AFTER / 2), None, "a long batch is not yet a stuck one");
        let reason = meters.stuck(now + STUCK_AFTER + Duration::from_secs(5)).expect("stuck");
        assert!(reason.starts_with("matcher work has been running for"), "{reason}");
        drop(batch);
        assert_eq!(meters.stuck(now + STUCK_AFTER * 2), None, "finished: ready again");
    }

    #[test]
    fn reports_difference_over_about_one_window() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut state = MeterState::new(1, t0);
        state.processed = 100;
        state.measure(s(10));
        state.processed = 400;
        state.measure(s(35));
        // The mark at 0 s is more than a window old at 40 s, the one at 10 s too: base is 10 s.
        state.processed = 700;
        let m = state.measure(s(40));
        assert_eq!(m.window_seconds, 30.0);
        assert_eq!(m.processed_per_second, 20.0);
    }
}
