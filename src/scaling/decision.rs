//! The scaling decision for one workload, from observed load.
//!
//! Modelled on the Flink Kubernetes Operator's autoscaler:
//!
//! - **True processing rate.** A replica's capacity is measured, not configured: records
//!   processed per second divided by the fraction of time the replicas were busy. When the
//!   replicas are nearly idle the measurement is meaningless, so the last good estimate is
//!   kept (or [`Tuning::initial_rate_per_replica`] before any).
//! - **Capacity for the arrival rate at the target utilisation**, where the arrival rate is
//!   projected over the start-up time when it is rising (replicas asked for now serve the load
//!   of when they are ready).
//! - **Plus what drains the backlog within the catch-up target**, where the backlog is the one
//!   expected once new replicas are ready: the present backlog plus what accumulates during the
//!   start-up time if the ready replicas cannot keep up.
//! - **Utilisation band.** Nothing changes while the current size keeps the utilisation inside
//!   `[target - boundary, target + boundary]` and no backlog needs draining, so noise does not
//!   cause churn.
//! - **Scale up at once**, to the size the load needs at the target utilisation.
//! - **Scale down only** to the largest size recommended during the stabilisation window, only
//!   once the whole window has been observed, by at most [`Tuning::max_scale_down_factor`] of
//!   the replicas at a time, and **never while a backlog is draining**.
//! - **Bounds** (`min`, `max`) always apply, and so does the floor of a peak window in force
//!   (lead time included).
//! - **Missing or stale metrics hold the current size** (within bounds and floor) and say so;
//!   they never make the workload fall to its minimum.
//!
//! The function is pure: time is an input, and the memory it needs (recommendation history
//! for stabilisation, the arrival history for the trend, the last processing-rate estimate) is
//! an explicit [`DecisionState`] passed in and returned.

use std::collections::VecDeque;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::policy::WorkloadPolicy;
use super::{Workload, human_count};

/// Load figures of one workload, as its replicas report them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadObservation {
    /// When the figures were gathered.
    pub observed_at: Timestamp,
    /// Records arriving per second (smoothed over the reporting window).
    pub arrival_rate: f64,
    /// Records processed per second by all ready replicas together.
    pub processed_rate: f64,
    /// Busy time of the replicas over the reporting window ÷ (`ready_replicas` × window), in
    /// `[0, 1]`. `processed_rate ÷ (ready_replicas × busy_fraction)` is one replica's true
    /// processing rate.
    pub busy_fraction: f64,
    /// Records waiting (intake lag for ingest/matcher, outbox lag for feeds).
    pub backlog: u64,
    /// Replicas that reported (ready replicas).
    pub ready_replicas: u32,
}

/// Constants of the scaler that are not part of the `ScalingPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tuning {
    /// Expected time from asking for a replica to that replica doing work.
    pub startup_seconds: u32,
    /// How often decisions are taken; a rising arrival rate is projected this far beyond the
    /// start-up time.
    pub decision_interval_seconds: u32,
    /// Figures older than this are stale: the size holds.
    pub max_metric_age_seconds: u32,
    /// Half-width of the utilisation band inside which the size is kept.
    pub utilization_boundary: f64,
    /// Largest fraction of the replicas one scale-down may remove (0.5: at most halve).
    pub max_scale_down_factor: f64,
    /// A backlog smaller than this many seconds of the ready replicas' capacity is in-flight
    /// work, not a backlog that is draining.
    pub backlog_tolerance_seconds: f64,
    /// Arrival samples this old or newer estimate the trend (0 disables the projection).
    pub trend_window_seconds: u32,
    /// Processing rate of one replica (records/s) to assume before any has been measured.
    pub initial_rate_per_replica: Option<f64>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            startup_seconds: 30,
            decision_interval_seconds: 15,
            max_metric_age_seconds: 60,
            utilization_boundary: 0.1,
            max_scale_down_factor: 0.5,
            backlog_tolerance_seconds: 1.0,
            trend_window_seconds: 60,
            initial_rate_per_replica: None,
        }
    }
}

/// A peak floor in force, as the schedule computed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeakFloor {
    pub window: String,
    pub replicas: u32,
}

/// Everything one decision looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionInput {
    pub workload: Workload,
    pub now: Timestamp,
    /// Replicas currently asked for (the Deployment's `spec.replicas`).
    pub current_replicas: u32,
    /// Latest load figures; `None` when none could be read.
    pub load: Option<LoadObservation>,
    pub policy: WorkloadPolicy,
    pub floor: Option<PeakFloor>,
    pub tuning: Tuning,
}

/// One remembered decision.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    pub arrival_rate: f64,
    /// Replicas the load needed at the target utilisation (within bounds).
    pub recommended: u32,
    /// Replicas (fractional) the load needed at the bottom of the utilisation band.
    pub needed_at_low: f64,
}

/// What a decision remembers for the next one. Start with `DecisionState::default()`; an empty
/// state (after an operator restart) only delays scale-downs by one stabilisation window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionState {
    pub samples: VecDeque<Sample>,
    /// Unix seconds of the first sample of the unbroken run of fresh observations.
    pub observed_since: Option<i64>,
    /// Last good estimate of one replica's true processing rate (records/s).
    pub rate_per_replica: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    Up,
    Down,
    Hold,
}

/// What drove a decision (for events, metrics and tests; [`Decision::reason`] is for people).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    /// Arrival rate (and any backlog) needs more replicas.
    Load,
    /// A backlog needs draining.
    Backlog,
    /// A peak window's floor.
    PeakFloor,
    /// The policy's min or max.
    Bounds,
    /// Load fits the current size.
    Fits,
    /// Fewer replicas would do, but not yet for the whole stabilisation window.
    Stabilizing,
    /// Fewer replicas would do, but a backlog is draining.
    Draining,
    /// Lower load, scaled down.
    LowerLoad,
    /// No load figures, or stale ones.
    NoMetrics,
    /// Replicas idle and no processing rate known yet.
    NoRate,
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub workload: Workload,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    pub change: Change,
    pub cause: Cause,
    /// Short human reason, e.g. "backlog 42k, drains in 90 s at 6 replicas".
    pub reason: String,
}

fn pct(f: f64) -> String {
    format!("{:.0}%", f * 100.0)
}

fn ceil_div(need: f64, rate: f64) -> u32 {
    if need <= 0.0 || rate <= 0.0 {
        return 0;
    }
    let v = (need / rate - 1e-9).ceil();
    if v >= f64::from(u32::MAX) { u32::MAX } else { v.max(0.0) as u32 }
}

/// Least-squares slope (records/s per second) of the arrival samples.
fn trend(samples: &VecDeque<Sample>, now: i64, window: u32) -> f64 {
    if window == 0 {
        return 0.0;
    }
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at >= now - i64::from(window))
        .map(|s| ((s.at - now) as f64, s.arrival_rate))
        .collect();
    if pts.len() < 3 {
        return 0.0;
    }
    let span = pts.last().unwrap().0 - pts[0].0;
    if span < f64::from(window) / 2.0 {
        return 0.0;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= 0.0 { 0.0 } else { sxy / sxx }
}

/// Applies bounds and floor to a proposed size; says which one bit.
fn clamp(v: u32, floor: u32, min: u32, max: u32) -> (u32, Option<Cause>) {
    let lo = floor.max(min).min(max);
    if v < lo {
        (lo, Some(if floor > min { Cause::PeakFloor } else { Cause::Bounds }))
    } else if v > max {
        (max, Some(Cause::Bounds))
    } else {
        (v, None)
    }
}

/// Decides the desired replicas of one workload. Pure: same input, same output.
pub fn decide(input: &DecisionInput, mut state: DecisionState) -> (Decision, DecisionState) {
    let p = &input.policy;
    let t = &input.tuning;
    let now = input.now.as_second();
    let cur = input.current_replicas;
    let max = p.max_replicas.max(p.min_replicas).max(1);
    let min = p.min_replicas.min(max);
    let floor_n = input.floor.as_ref().map(|f| f.replicas).unwrap_or(0);
    let floor_note = |v: u32| match &input.floor {
        Some(f) if f.replicas.min(max) >= v && f.replicas > min => format!(" (peak window {} floor {})", f.window, f.replicas.min(max)),
        _ => String::new(),
    };
    let decision = |desired: u32, cause: Cause, reason: String| Decision {
        workload: input.workload,
        current_replicas: cur,
        desired_replicas: desired,
        change: match desired.cmp(&cur) {
            std::cmp::Ordering::Greater => Change::Up,
            std::cmp::Ordering::Less => Change::Down,
            std::cmp::Ordering::Equal => Change::Hold,
        },
        cause,
        reason,
    };
    // Keep what stabilisation and the trend need, and a little more.
    let keep = i64::from(p.scale_down_stabilization_seconds.max(t.trend_window_seconds))
        + 2 * i64::from(t.decision_interval_seconds.max(1));
    while state.samples.front().is_some_and(|s| s.at < now - keep) {
        state.samples.pop_front();
    }

    // Hold the current size without fresh figures (still honouring bounds and floor).
    let hold_without_metrics = |why: String, cause: Cause, mut state: DecisionState| {
        state.observed_since = None;
        let (v, bit) = clamp(cur, floor_n, min, max);
        let reason = match bit {
            None => format!("{why}, holding {v}"),
            Some(Cause::Bounds) if v > cur => format!("{why}; raised to the minimum {v}"),
            Some(Cause::Bounds) => format!("{why}; lowered to the maximum {v}"),
            Some(_) => format!("{why}; raised to{}", floor_note(v)),
        };
        (decision(v, bit.unwrap_or(cause), reason), state)
    };
    let Some(load) = input.load else {
        return hold_without_metrics("no load metrics".into(), Cause::NoMetrics, state);
    };
    let age = input.now.as_second() - load.observed_at.as_second();
    if age > i64::from(t.max_metric_age_seconds) {
        return hold_without_metrics(format!("load metrics stale ({age} s old)"), Cause::NoMetrics, state);
    }
    let arrival = if load.arrival_rate.is_finite() { load.arrival_rate.max(0.0) } else { 0.0 };
    let backlog = load.backlog as f64;

    // True processing rate per replica.
    let busy = load.busy_fraction.clamp(0.0, 1.0);
    if load.ready_replicas > 0 && busy >= 0.05 && load.processed_rate > 0.0 {
        let measured = load.processed_rate / (f64::from(load.ready_replicas) * busy);
        if measured.is_finite() && measured > 0.0 {
            state.rate_per_replica = Some(match state.rate_per_replica {
                Some(prev) => 0.5 * prev + 0.5 * measured,
                None => measured,
            });
        }
    }
    let Some(rate) = state.rate_per_replica.or(t.initial_rate_per_replica).filter(|r| *r > 0.0) else {
        return hold_without_metrics("replicas idle, no processing rate measured yet".into(), Cause::NoRate, state);
    };

    // Arrival projected over the start-up time (and until the next decision) when rising.
    let slope = trend(&state.samples, now, t.trend_window_seconds)
        .max(0.0)
        .min(arrival.max(1.0) / f64::from(t.startup_seconds.max(1)));
    let horizon = f64::from(t.startup_seconds + t.decision_interval_seconds);
    let projected = arrival + slope * horizon;
    // Backlog once new replicas are ready: what is waiting, plus what piles up meanwhile.
    let ready_capacity = rate * f64::from(load.ready_replicas);
    let startup = f64::from(t.startup_seconds);
    let during_startup = (arrival + slope * startup / 2.0 - ready_capacity).max(0.0) * startup;
    let backlog_ahead = backlog + during_startup;
    let catch_up = f64::from(p.catch_up_seconds.max(1));
    let drain_rate = backlog_ahead / catch_up;
    let u = p.target_utilization.clamp(0.05, 1.0);
    let u_high = (u + t.utilization_boundary).min(1.0);
    let u_low = (u - t.utilization_boundary).max(0.05);
    let need = ceil_div(projected / u + drain_rate, rate);
    let need_at_high = ceil_div(projected / u_high + drain_rate, rate);
    let need_at_low = (projected / u_low + drain_rate) / rate;
    let recommended = need.clamp(min, max);
    state.samples.push_back(Sample {
        at: now,
        arrival_rate: arrival,
        recommended,
        needed_at_low: need_at_low.clamp(f64::from(min), f64::from(max)),
    });
    let since = *state.observed_since.get_or_insert(now);

    let draining = backlog > t.backlog_tolerance_seconds * ready_capacity.max(rate);
    let load_note = || {
        let rising = if slope * horizon >= 0.05 * arrival && slope > 0.0 {
            format!(" rising {}/s²", human_count(slope))
        } else {
            String::new()
        };
        format!("arrival {}/s{rising}", human_count(arrival))
    };
    let backlog_note = |n: u32| {
        let spare = f64::from(n) * rate - arrival;
        if spare > 0.0 {
            format!("backlog {}, drains in {:.0} s at {n} replicas", human_count(backlog), backlog / spare)
        } else {
            format!("backlog {}, growing even at {n} replicas", human_count(backlog))
        }
    };

    // Outside bounds or below the floor: fix that first, whatever the load.
    let lo = floor_n.max(min).min(max);
    if cur < lo || cur > max {
        let target = if cur > max { max } else { need.clamp(lo, max) };
        let (v, bit) = clamp(target, floor_n, min, max);
        let reason = if cur > max {
            format!("above the maximum {max}, lowered")
        } else if bit == Some(Cause::PeakFloor) || (floor_n >= min && floor_n > cur && v == lo) {
            format!("raised to{}; {}", floor_note(v), load_note())
        } else if v == lo {
            format!("raised to the minimum {v}")
        } else {
            format!("{} needs {v} at {} of {}/s per replica", load_note(), pct(u), human_count(rate))
        };
        let cause = if cur > max {
            Cause::Bounds
        } else if v > lo {
            Cause::Load
        } else if floor_n > min {
            Cause::PeakFloor
        } else {
            Cause::Bounds
        };
        return (decision(v, cause, reason), state);
    }

    // Scale up: the current size is over the top of the band, or a backlog needs more hands.
    if need_at_high > cur || (draining && need > cur) {
        let (v, bit) = clamp(need, floor_n, min, max);
        if v > cur {
            let reason = if draining {
                backlog_note(v)
            } else {
                format!("{} needs {v} at {} of {}/s per replica", load_note(), pct(u), human_count(rate))
            };
            let reason = if bit == Some(Cause::Bounds) { format!("{reason}; capped at the maximum {max}") } else { reason };
            let cause = if bit == Some(Cause::Bounds) {
                Cause::Bounds
            } else if draining {
                Cause::Backlog
            } else {
                Cause::Load
            };
            return (decision(v, cause, reason), state);
        }
        let why = if draining { backlog_note(cur) } else { load_note() };
        return (decision(cur, Cause::Bounds, format!("{why}; already at the maximum {max}")), state);
    }

    // Scale down?
    if need_at_low < f64::from(cur) {
        if draining {
            return (
                decision(cur, Cause::Draining, format!("{}, not scaling down from {cur}", backlog_note(cur))),
                state,
            );
        }
        let window = i64::from(p.scale_down_stabilization_seconds);
        let in_window = state.samples.iter().filter(|s| s.at > now - window || s.at == now);
        let mut window_max = 0;
        let mut window_low_max = 0.0f64;
        for s in in_window {
            window_max = window_max.max(s.recommended);
            window_low_max = window_low_max.max(s.needed_at_low);
        }
        if now - since < window {
            return (
                decision(
                    cur,
                    Cause::Stabilizing,
                    format!("{} fits {recommended}; holding {cur} until it has for {window} s", load_note()),
                ),
                state,
            );
        }
        if window_low_max >= f64::from(cur) {
            return (
                decision(
                    cur,
                    Cause::Stabilizing,
                    format!("{} fits {recommended}, but needed {cur} within the last {window} s", load_note()),
                ),
                state,
            );
        }
        let factor = t.max_scale_down_factor.clamp(0.0, 1.0);
        let step_floor = (f64::from(cur) * (1.0 - factor)).ceil() as u32;
        let target = window_max.max(step_floor);
        let (v, bit) = clamp(target, floor_n, min, max);
        if v < cur {
            let mut reason =
                format!("{} fits {window_max} for {window} s; scaling down from {cur}", load_note());
            if target == step_floor && step_floor > window_max {
                reason.push_str(&format!(" (at most {} at once)", pct(factor)));
            }
            if bit.is_some() {
                reason.push_str(&floor_note(v));
            }
            return (decision(v, Cause::LowerLoad, reason), state);
        }
        let note = floor_note(v);
        let why = if note.is_empty() { format!(" at the minimum {v}") } else { note };
        return (decision(cur, bit.unwrap_or(Cause::Fits), format!("{} fits {recommended}; holding{why}", load_note())), state);
    }

    let util = if cur > 0 { projected / (f64::from(cur) * rate) } else { 0.0 };
    let reason = if draining {
        backlog_note(cur)
    } else {
        format!("{} fits {cur} at {} utilisation", load_note(), pct(util))
    };
    (decision(cur, if draining { Cause::Backlog } else { Cause::Fits }, reason), state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use proptest::prelude::*;

    fn t0() -> Timestamp {
        "2025-05-17T10:00:00Z".parse().unwrap()
    }

    fn policy(min: u32, max: u32) -> WorkloadPolicy {
        WorkloadPolicy {
            min_replicas: min,
            max_replicas: max,
            target_utilization: 0.8,
            catch_up_seconds: 60,
            scale_down_stabilization_seconds: 300,
        }
    }

    fn tuning() -> Tuning {
        Tuning { startup_seconds: 20, decision_interval_seconds: 15, trend_window_seconds: 0, ..Tuning::default() }
    }

    /// Load where each replica processes 100 records/s when busy.
    fn load(at: Timestamp, arrival: f64, ready: u32, backlog: u64) -> LoadObservation {
        let cap = 100.0 * f64::from(ready);
        let processed = arrival.min(cap).max(if backlog > 0 { cap } else { 0.0 });
        LoadObservation {
            observed_at: at,
            arrival_rate: arrival,
            processed_rate: processed,
            busy_fraction: if cap > 0.0 { processed / cap } else { 0.0 },
            backlog,
            ready_replicas: ready,
        }
    }

    fn input(now: Timestamp, cur: u32, l: Option<LoadObservation>, p: WorkloadPolicy) -> DecisionInput {
        DecisionInput {
            workload: Workload::Matcher,
            now,
            current_replicas: cur,
            load: l,
            policy: p,
            floor: None,
            tuning: tuning(),
        }
    }

    fn at(s: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(s)
    }

    #[test]
    fn steady_load_within_the_band_holds() {
        let (d, _) = decide(&input(t0(), 10, Some(load(t0(), 760.0, 10, 0)), policy(1, 50)), DecisionState::default());
        assert_eq!((d.change, d.cause), (Change::Hold, Cause::Fits));
        assert_eq!(d.reason, "arrival 760/s fits 10 at 76% utilisation");
    }

    #[test]
    fn rising_load_scales_up_at_once_to_the_target() {
        // 1000/s at 80% of 100/s needs 13 (12.5 rounded up).
        let (d, _) = decide(&input(t0(), 10, Some(load(t0(), 1000.0, 10, 0)), policy(1, 50)), DecisionState::default());
        assert_eq!((d.desired_replicas, d.change, d.cause), (13, Change::Up, Cause::Load));
        assert_eq!(d.reason, "arrival 1.0k/s needs 13 at 80% of 100/s per replica");
    }

    #[test]
    fn backlog_drain_accounts_for_the_catch_up_target_and_start_up() {
        // 5 replicas saturated at 500/s, arrival 500/s, backlog 42k.
        // Drain 42k in 60 s: 700/s more; capacity 500/0.8 + 700 = 1325 -> 14 replicas.
        let (d, _) = decide(&input(t0(), 5, Some(load(t0(), 500.0, 5, 42_000)), policy(1, 50)), DecisionState::default());
        assert_eq!((d.desired_replicas, d.cause), (14, Cause::Backlog));
        assert_eq!(d.reason, "backlog 42k, drains in 47 s at 14 replicas");
        // Arrival above the ready capacity: what piles up during the 20 s start-up counts too.
        // 800/s against 500/s: +300*20 = 6k; (42k+6k)/60 = 800; 800/0.8 + 800 = 1800 -> 18.
        let (d, _) = decide(&input(t0(), 5, Some(load(t0(), 800.0, 5, 42_000)), policy(1, 50)), DecisionState::default());
        assert_eq!(d.desired_replicas, 18);
    }

    #[test]
    fn never_scales_down_while_a_backlog_drains() {
        let mut s = DecisionState::default();
        for i in 0..=40 {
            let (_, next) = decide(&input(at(i * 15), 20, Some(load(at(i * 15), 100.0, 20, 0)), policy(1, 50)), s);
            s = next;
        }
        // Arrival is tiny but 20 replicas drain 30k: hold.
        let now = at(41 * 15);
        let (d, _) = decide(&input(now, 20, Some(load(now, 100.0, 20, 30_000)), policy(1, 50)), s);
        assert_eq!((d.change, d.cause), (Change::Hold, Cause::Draining));
        assert_eq!(d.reason, "backlog 30k, drains in 16 s at 20 replicas, not scaling down from 20");
    }

    #[test]
    fn scale_down_waits_for_the_stabilisation_window_and_is_bounded() {
        let p = policy(1, 50);
        let mut s = DecisionState::default();
        // 20 replicas, arrival 300/s: needs 4.
        let mut last = None;
        for i in 0..=19 {
            let now = at(i * 15);
            let (d, next) = decide(&input(now, 20, Some(load(now, 300.0, 20, 0)), p), s);
            s = next;
            assert_eq!(d.change, Change::Hold, "t={} {}", i * 15, d.reason);
            assert_eq!(d.cause, Cause::Stabilizing);
            last = Some(d);
        }
        assert_eq!(last.unwrap().reason, "arrival 300/s fits 4; holding 20 until it has for 300 s");
        // After 300 s observed: down, but at most by half.
        let now = at(300);
        let (d, s) = decide(&input(now, 20, Some(load(now, 300.0, 20, 0)), p), s);
        assert_eq!((d.desired_replicas, d.change, d.cause), (10, Change::Down, Cause::LowerLoad));
        assert_eq!(d.reason, "arrival 300/s fits 4 for 300 s; scaling down from 20 (at most 50% at once)");
        let now = at(315);
        let (d, _) = decide(&input(now, 10, Some(load(now, 300.0, 10, 0)), p), s);
        assert_eq!(d.desired_replicas, 5);
    }

    #[test]
    fn scale_down_goes_to_the_largest_recommendation_of_the_window() {
        let p = policy(1, 50);
        let mut s = DecisionState::default();
        // A burst needing 10 at t=150 s, otherwise 300/s (4 replicas).
        let mut cur = 12;
        let mut changes = Vec::new();
        for i in 0..=31 {
            let now = at(i * 15);
            let arrival = if i == 10 { 780.0 } else { 300.0 };
            let (d, next) = decide(&input(now, cur, Some(load(now, arrival, cur, 0)), p), s);
            s = next;
            if d.desired_replicas != cur {
                changes.push((i * 15, d.desired_replicas));
                cur = d.desired_replicas;
            }
        }
        // 300 s: the window is observed; the burst (needing 10) pins it at 10. 450 s: the burst
        // has left the window; 4 would do, but one step removes at most half.
        assert_eq!(changes, vec![(300, 10), (450, 5), (465, 4)]);
    }

    #[test]
    fn stale_or_missing_metrics_hold_and_say_so() {
        let p = policy(2, 50);
        let (d, s) = decide(&input(t0(), 7, None, p), DecisionState::default());
        assert_eq!((d.desired_replicas, d.change, d.cause), (7, Change::Hold, Cause::NoMetrics));
        assert_eq!(d.reason, "no load metrics, holding 7");
        assert!(s.samples.is_empty());
        let old = at(-95);
        let (d, _) = decide(&input(t0(), 7, Some(load(old, 0.0, 7, 0)), p), DecisionState::default());
        assert_eq!(d.desired_replicas, 7, "stale figures never drop to the floor");
        assert_eq!(d.reason, "load metrics stale (95 s old), holding 7");
        // Stale but below a peak floor: the floor still applies (it is schedule-driven).
        let mut i = input(t0(), 3, None, p);
        i.floor = Some(PeakFloor { window: "opening".into(), replicas: 12 });
        let (d, _) = decide(&i, DecisionState::default());
        assert_eq!((d.desired_replicas, d.cause), (12, Cause::PeakFloor));
        assert_eq!(d.reason, "no load metrics; raised to (peak window opening floor 12)");
    }

    #[test]
    fn stale_metrics_restart_the_stabilisation_window() {
        let p = policy(1, 50);
        let mut s = DecisionState::default();
        for i in 0..=20 {
            let now = at(i * 15);
            s = decide(&input(now, 20, Some(load(now, 300.0, 20, 0)), p), s).1;
        }
        s = decide(&input(at(315), 20, None, p), s).1;
        let (d, _) = decide(&input(at(330), 20, Some(load(at(330), 300.0, 20, 0)), p), s);
        assert_eq!(d.cause, Cause::Stabilizing, "{}", d.reason);
    }

    #[test]
    fn idle_replicas_without_a_known_rate_hold() {
        let l = load(t0(), 0.0, 3, 0);
        let (d, s) = decide(&input(t0(), 3, Some(l), policy(1, 50)), DecisionState::default());
        assert_eq!((d.change, d.cause), (Change::Hold, Cause::NoRate));
        assert_eq!(s.rate_per_replica, None);
        // With an initial estimate the decision proceeds.
        let mut i = input(t0(), 3, Some(l), policy(1, 50));
        i.tuning.initial_rate_per_replica = Some(100.0);
        let (d, _) = decide(&i, DecisionState::default());
        assert_eq!(d.cause, Cause::Stabilizing);
    }

    #[test]
    fn true_rate_is_processed_over_busy() {
        // 4 replicas, 50% busy, 200/s processed: 100/s per replica.
        let l = LoadObservation {
            observed_at: t0(),
            arrival_rate: 200.0,
            processed_rate: 200.0,
            busy_fraction: 0.5,
            backlog: 0,
            ready_replicas: 4,
        };
        let (_, s) = decide(&input(t0(), 4, Some(l), policy(1, 50)), DecisionState::default());
        assert_eq!(s.rate_per_replica, Some(100.0));
    }

    #[test]
    fn bounds_clamp_and_say_so() {
        let (d, _) = decide(&input(t0(), 10, Some(load(t0(), 5000.0, 10, 0)), policy(1, 20)), DecisionState::default());
        assert_eq!((d.desired_replicas, d.cause), (20, Cause::Bounds));
        assert_eq!(d.reason, "arrival 5.0k/s needs 20 at 80% of 100/s per replica; capped at the maximum 20");
        let (d, _) = decide(&input(t0(), 30, Some(load(t0(), 1000.0, 30, 0)), policy(1, 20)), DecisionState::default());
        assert_eq!((d.desired_replicas, d.change), (20, Change::Down));
        let (d, _) = decide(&input(t0(), 1, Some(load(t0(), 10.0, 1, 0)), policy(3, 20)), DecisionState::default());
        assert_eq!((d.desired_replicas, d.cause), (3, Cause::Bounds));
        assert_eq!(d.reason, "raised to the minimum 3");
        let (d, _) = decide(&input(t0(), 20, Some(load(t0(), 5000.0, 20, 9000)), policy(1, 20)), DecisionState::default());
        assert_eq!((d.change, d.cause), (Change::Hold, Cause::Bounds));
        assert!(d.reason.ends_with("already at the maximum 20"), "{}", d.reason);
    }

    #[test]
    fn peak_floor_raises_and_blocks_scale_down() {
        let p = policy(1, 50);
        let mut i = input(t0(), 4, Some(load(t0(), 100.0, 4, 0)), p);
        i.floor = Some(PeakFloor { window: "opening".into(), replicas: 30 });
        let (d, _) = decide(&i, DecisionState::default());
        assert_eq!((d.desired_replicas, d.change, d.cause), (30, Change::Up, Cause::PeakFloor));
        assert_eq!(d.reason, "raised to (peak window opening floor 30); arrival 100/s");
        // A floor above max is capped at max (policy validation rejects that configuration).
        let mut i = input(t0(), 4, Some(load(t0(), 100.0, 4, 0)), policy(1, 20));
        i.floor = Some(PeakFloor { window: "opening".into(), replicas: 30 });
        assert_eq!(decide(&i, DecisionState::default()).0.desired_replicas, 20);
        // Held at the floor long after load fell.
        let mut s = DecisionState::default();
        for k in 0..60 {
            let now = at(k * 15);
            let mut i = input(now, 30, Some(load(now, 100.0, 30, 0)), p);
            i.floor = Some(PeakFloor { window: "opening".into(), replicas: 30 });
            let (d, next) = decide(&i, s);
            s = next;
            assert_eq!(d.desired_replicas, 30, "{}", d.reason);
        }
        // Load above the floor still scales up.
        let now = at(900);
        let mut i = input(now, 30, Some(load(now, 4000.0, 30, 0)), p);
        i.floor = Some(PeakFloor { window: "opening".into(), replicas: 30 });
        assert_eq!(decide(&i, s).0.desired_replicas, 50);
    }

    #[test]
    fn rising_arrival_is_projected_over_the_start_up_time() {
        let p = policy(1, 100);
        let mut i = input(t0(), 10, None, p);
        i.tuning.trend_window_seconds = 60;
        let mut s = DecisionState::default();
        let mut last = None;
        // +10/s every second: 500 -> 1100 over 60 s, replicas keep up (cap 2000).
        for k in 0..=4 {
            let now = at(k * 15);
            let arrival = 500.0 + 10.0 * (k * 15) as f64;
            i.now = now;
            i.current_replicas = 20;
            i.load = Some(load(now, arrival, 20, 0));
            let (d, next) = decide(&i, s);
            s = next;
            last = Some(d);
        }
        let d = last.unwrap();
        // 1100 + 10*(20+15) = 1450 at 80% -> 19: fits 20 (1450/2000 = 72%).
        assert_eq!(d.change, Change::Hold);
        assert_eq!(d.reason, "arrival 1.1k/s rising 10/s² fits 20 at 72% utilisation");
    }

    fn arb_load() -> impl Strategy<Value = Option<LoadObservation>> {
        prop::option::of((0.0..50_000.0f64, 0.0..50_000.0f64, 0.0..=1.0f64, 0u64..10_000_000, 0u32..200, -200i64..10).prop_map(
            |(arrival, processed, busy, backlog, ready, age)| LoadObservation {
                observed_at: t0() + SignedDuration::from_secs(-age),
                arrival_rate: arrival,
                processed_rate: processed,
                busy_fraction: busy,
                backlog,
                ready_replicas: ready,
            },
        ))
    }

    proptest! {
        #[test]
        fn always_within_bounds_and_at_least_the_floor(
            min in 0u32..20, span in 0u32..100, cur in 0u32..300,
            floor in prop::option::of(0u32..150),
            loads in prop::collection::vec(arb_load(), 1..12),
            util in 0.1..=1.0f64, catch_up in 1u32..600, stab in 0u32..900,
            rate in prop::option::of(1.0..1000.0f64),
        ) {
            let max = (min + span).max(1);
            let p = WorkloadPolicy {
                min_replicas: min, max_replicas: max, target_utilization: util,
                catch_up_seconds: catch_up, scale_down_stabilization_seconds: stab,
            };
            let mut s = DecisionState::default();
            let mut cur = cur;
            for (k, l) in loads.into_iter().enumerate() {
                let now = t0() + SignedDuration::from_secs(15 * k as i64);
                let l = l.map(|mut l| { l.observed_at += SignedDuration::from_secs(15 * k as i64); l });
                let i = DecisionInput {
                    workload: Workload::Feeds, now, current_replicas: cur, load: l, policy: p,
                    floor: floor.map(|f| PeakFloor { window: "w".into(), replicas: f }),
                    tuning: Tuning { initial_rate_per_replica: rate, ..Tuning::default() },
                };
                let (d, next) = decide(&i, s);
                s = next;
                prop_assert!(d.desired_replicas >= min && d.desired_replicas <= max, "{:?}", d);
                prop_assert!(d.desired_replicas >= floor.unwrap_or(0).min(max), "{:?}", d);
                prop_assert!(!d.reason.is_empty());
                cur = d.desired_replicas;
            }
        }
    }
}
