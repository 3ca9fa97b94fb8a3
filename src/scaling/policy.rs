//! Effective scaling policy of one platform: its `ScalingPolicy` objects combined with the
//! platform defaults, validated.
//!
//! How several policies targeting one platform combine (policies are taken in name order, so
//! errors always name them the same way):
//!
//! - **Bounds** (min/max replicas, target utilisation, catch-up target, scale-down
//!   stabilisation) are owned per workload: at most one policy may set a given workload. Two
//!   policies setting the same workload is a contradiction, reported with both names. A
//!   workload no policy sets keeps the platform defaults.
//! - **Peak windows** are the union of every policy's windows. Window names must be unique
//!   across the platform's policies. When several windows are in force at once, each workload
//!   gets the highest of their floors.
//! - **Every floor must fit under the workload's effective maximum**: a window asking for more
//!   replicas than the workload may have is rejected rather than silently capped.
//! - **Mode** (`builtin` / `keda`) must be the same in every policy; a disagreement is a
//!   contradiction.
//! - **Pause**: any paused policy pauses scaling for the platform (pausing is a safety switch,
//!   so the most cautious policy wins).
//! - With no policy at all, the defaults apply: built-in scaler, not paused, no windows.
//!
//! Validation collects every error so that one status condition can list them all.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::schedule::{ActiveFloor, PeakSchedule, ScheduleError, active_floor, compile_window};
use super::{Floors, Workload};
use crate::crd::scaling::{ScalingMode, ScalingPolicySpec, WorkloadScaling};

/// Bounds and targets for one workload, as the decision uses them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPolicy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Fraction of a replica's true processing rate to plan for, in (0, 1].
    pub target_utilization: f64,
    /// A backlog must drain within this many seconds.
    pub catch_up_seconds: u32,
    /// Scale down only to a size that has been enough for this long.
    pub scale_down_stabilization_seconds: u32,
}

impl Default for WorkloadPolicy {
    fn default() -> Self {
        WorkloadPolicy {
            min_replicas: 1,
            max_replicas: 10,
            target_utilization: crate::crd::scaling::default_target_utilization(),
            catch_up_seconds: crate::crd::scaling::default_catch_up_seconds(),
            scale_down_stabilization_seconds: crate::crd::scaling::default_stabilization_seconds(),
        }
    }
}

/// What applies to a workload that no policy sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlatformDefaults {
    pub ingest: WorkloadPolicy,
    pub matcher: WorkloadPolicy,
    pub feeds: WorkloadPolicy,
}

impl PlatformDefaults {
    /// The bounds a CustomerDataPlatform declares for its workloads, with the policy defaults.
    pub fn of(platform: &crate::crd::CustomerDataPlatformSpec) -> Self {
        let bounds = |w: &crate::crd::platform::WorkloadSpec| WorkloadPolicy {
            min_replicas: w.min_replicas.max(0) as u32,
            max_replicas: w.max_replicas.max(1) as u32,
            ..WorkloadPolicy::default()
        };
        let w = &platform.workloads;
        PlatformDefaults { ingest: bounds(&w.ingest), matcher: bounds(&w.matcher), feeds: bounds(&w.feeds) }
    }

    pub fn get(&self, w: Workload) -> WorkloadPolicy {
        match w {
            Workload::Ingest => self.ingest,
            Workload::Matcher => self.matcher,
            Workload::Feeds => self.feeds,
        }
    }
}

impl PolicyError {
    /// The ScalingPolicy to refuse: the one named, or the later one of a contradicting pair.
    pub fn policy(&self) -> &str {
        match self {
            PolicyError::BoundsContradiction { second, .. }
            | PolicyError::ModeContradiction { second, .. }
            | PolicyError::DuplicateWindow { second, .. } => second,
            PolicyError::MinAboveMax { policy, .. }
            | PolicyError::OutOfRange { policy, .. }
            | PolicyError::FloorAboveMax { policy, .. }
            | PolicyError::Window { policy, .. } => policy,
        }
    }
}

/// One reason a platform's scaling policies cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "ScalingPolicy {first:?} and {second:?} both set bounds for {workload}; set each workload in one policy only"
    )]
    BoundsContradiction { workload: Workload, first: String, second: String },
    #[error("ScalingPolicy {first:?} (mode {first_mode}) and {second:?} (mode {second_mode}) disagree on mode")]
    ModeContradiction { first: String, first_mode: &'static str, second: String, second_mode: &'static str },
    #[error("ScalingPolicy {first:?} and {second:?} both define peak window {window:?}; window names must be unique")]
    DuplicateWindow { window: String, first: String, second: String },
    #[error("ScalingPolicy {policy:?}: {workload} minReplicas {min} exceeds maxReplicas {max}")]
    MinAboveMax { policy: String, workload: Workload, min: i32, max: i32 },
    #[error("ScalingPolicy {policy:?}: {workload} {field} {value} is out of range ({range})")]
    OutOfRange { policy: String, workload: Workload, field: &'static str, value: String, range: &'static str },
    #[error(
        "ScalingPolicy {policy:?}: peak window {window:?} asks for {floor} {workload} replicas, above its maxReplicas {max}{max_from}"
    )]
    FloorAboveMax { policy: String, window: String, workload: Workload, floor: u32, max: u32, max_from: String },
    #[error("ScalingPolicy {policy:?}: {source}")]
    Window { policy: String, source: ScheduleError },
}

/// Every error found in a platform's policies (never empty).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// A compiled peak window and the policy it came from.
#[derive(Clone, Debug)]
pub struct PolicyWindow {
    pub policy: String,
    pub schedule: PeakSchedule,
}

/// The platform's scaling policy after combination and validation.
#[derive(Clone, Debug)]
pub struct EffectivePolicy {
    pub mode: ScalingMode,
    pub paused: bool,
    pub ingest: WorkloadPolicy,
    pub matcher: WorkloadPolicy,
    pub feeds: WorkloadPolicy,
    /// For each workload, the policy that set its bounds (`None`: platform defaults).
    pub bounds_from: [(Workload, Option<String>); 3],
    pub windows: Vec<PolicyWindow>,
}

impl EffectivePolicy {
    pub fn workload(&self, w: Workload) -> WorkloadPolicy {
        match w {
            Workload::Ingest => self.ingest,
            Workload::Matcher => self.matcher,
            Workload::Feeds => self.feeds,
        }
    }

    /// Peak windows as schedules, for [`active_floor`].
    pub fn schedules(&self) -> Vec<PeakSchedule> {
        self.windows.iter().map(|w| w.schedule.clone()).collect()
    }

    /// The peak floor in force at `now`, if any.
    pub fn active_floor(&self, now: jiff::Timestamp) -> Option<ActiveFloor> {
        active_floor(&self.schedules(), now)
    }
}

fn mode_name(m: ScalingMode) -> &'static str {
    match m {
        ScalingMode::Builtin => "builtin",
        ScalingMode::Keda => "keda",
    }
}

fn workload_spec(spec: &ScalingPolicySpec, w: Workload) -> Option<&WorkloadScaling> {
    match w {
        Workload::Ingest => spec.workloads.ingest.as_ref(),
        Workload::Matcher => spec.workloads.matcher.as_ref(),
        Workload::Feeds => spec.workloads.feeds.as_ref(),
    }
}

/// Checks one workload's bounds and converts them.
pub fn workload_policy(policy: &str, w: Workload, s: &WorkloadScaling) -> Result<WorkloadPolicy, Vec<PolicyError>> {
    let mut errs = Vec::new();
    let range = |field, value: String, range| PolicyError::OutOfRange {
        policy: policy.to_string(),
        workload: w,
        field,
        value,
        range,
    };
    if !(0..=1000).contains(&s.min_replicas) {
        errs.push(range("minReplicas", s.min_replicas.to_string(), "0..=1000"));
    }
    if !(1..=1000).contains(&s.max_replicas) {
        errs.push(range("maxReplicas", s.max_replicas.to_string(), "1..=1000"));
    }
    if s.min_replicas > s.max_replicas {
        errs.push(PolicyError::MinAboveMax {
            policy: policy.to_string(),
            workload: w,
            min: s.min_replicas,
            max: s.max_replicas,
        });
    }
    if !(s.target_utilization >= 0.1 && s.target_utilization <= 1.0) {
        errs.push(range("targetUtilization", s.target_utilization.to_string(), "0.1..=1.0"));
    }
    if s.catch_up_seconds == 0 || s.catch_up_seconds > 86_400 {
        errs.push(range("catchUpSeconds", s.catch_up_seconds.to_string(), "1..=86400"));
    }
    if s.scale_down_stabilization_seconds > 86_400 {
        errs.push(range(
            "scaleDownStabilizationSeconds",
            s.scale_down_stabilization_seconds.to_string(),
            "0..=86400",
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(WorkloadPolicy {
        min_replicas: s.min_replicas as u32,
        max_replicas: s.max_replicas as u32,
        target_utilization: s.target_utilization,
        catch_up_seconds: s.catch_up_seconds,
        scale_down_stabilization_seconds: s.scale_down_stabilization_seconds,
    })
}

/// Combines the `ScalingPolicy` specs of one platform (given as `(name, spec)`) with the
/// platform defaults, following the rules in the module documentation.
pub fn combine(policies: &[(&str, &ScalingPolicySpec)], defaults: &PlatformDefaults) -> Result<EffectivePolicy, PolicyErrors> {
    let mut sorted: Vec<(&str, &ScalingPolicySpec)> = policies.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut errs = Vec::new();

    // Mode.
    let mut mode: Option<(&str, ScalingMode)> = None;
    for (name, spec) in &sorted {
        match mode {
            None => mode = Some((name, spec.mode)),
            Some((first, m)) if m != spec.mode => errs.push(PolicyError::ModeContradiction {
                first: first.to_string(),
                first_mode: mode_name(m),
                second: name.to_string(),
                second_mode: mode_name(spec.mode),
            }),
            Some(_) => {}
        }
    }

    // Bounds, per workload.
    let mut effective = [defaults.ingest, defaults.matcher, defaults.feeds];
    let mut from: [(Workload, Option<String>); 3] =
        [(Workload::Ingest, None), (Workload::Matcher, None), (Workload::Feeds, None)];
    for (i, w) in Workload::ALL.into_iter().enumerate() {
        for (name, spec) in &sorted {
            let Some(s) = workload_spec(spec, w) else { continue };
            if let Some(first) = &from[i].1 {
                errs.push(PolicyError::BoundsContradiction { workload: w, first: first.clone(), second: name.to_string() });
                continue;
            }
            from[i].1 = Some(name.to_string());
            match workload_policy(name, w, s) {
                Ok(p) => effective[i] = p,
                Err(mut e) => errs.append(&mut e),
            }
        }
    }

    // Peak windows.
    let mut windows: Vec<PolicyWindow> = Vec::new();
    for (name, spec) in &sorted {
        for pw in &spec.peak_windows {
            if let Some(prev) = windows.iter().find(|w| w.schedule.name == pw.name) {
                errs.push(PolicyError::DuplicateWindow {
                    window: pw.name.clone(),
                    first: prev.policy.clone(),
                    second: name.to_string(),
                });
                continue;
            }
            match compile_window(pw) {
                Ok(schedule) => {
                    for (i, w) in Workload::ALL.into_iter().enumerate() {
                        let floor = schedule.floors.get(w);
                        let max = effective[i].max_replicas;
                        if floor > max {
                            let max_from = match &from[i].1 {
                                Some(p) => format!(" (from ScalingPolicy {p:?})"),
                                None => " (platform default)".to_string(),
                            };
                            errs.push(PolicyError::FloorAboveMax {
                                policy: name.to_string(),
                                window: pw.name.clone(),
                                workload: w,
                                floor,
                                max,
                                max_from,
                            });
                        }
                    }
                    windows.push(PolicyWindow { policy: name.to_string(), schedule });
                }
                Err(source) => errs.push(PolicyError::Window { policy: name.to_string(), source }),
            }
        }
    }

    if !errs.is_empty() {
        return Err(PolicyErrors(errs));
    }
    Ok(EffectivePolicy {
        mode: mode.map(|m| m.1).unwrap_or_default(),
        paused: sorted.iter().any(|(_, s)| s.paused),
        ingest: effective[0],
        matcher: effective[1],
        feeds: effective[2],
        bounds_from: from,
        windows,
    })
}

/// Floors in force at `now` for every workload (zero where no window applies).
pub fn floors_at(policy: &EffectivePolicy, now: jiff::Timestamp) -> Floors {
    policy.active_floor(now).map(|a| a.floors).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::PlatformRef;
    use crate::crd::scaling::{PeakFloors, PeakWindow, ScaledWorkloads};

    fn spec() -> ScalingPolicySpec {
        ScalingPolicySpec {
            platform_ref: PlatformRef { name: "shop".into() },
            mode: ScalingMode::Builtin,
            paused: false,
            workloads: ScaledWorkloads::default(),
            peak_windows: vec![],
        }
    }

    fn bounds(min: i32, max: i32) -> WorkloadScaling {
        WorkloadScaling {
            min_replicas: min,
            max_replicas: max,
            target_utilization: 0.7,
            catch_up_seconds: 30,
            scale_down_stabilization_seconds: 300,
        }
    }

    fn window(name: &str, matcher: i32) -> PeakWindow {
        PeakWindow {
            name: name.into(),
            start: Some("2025-05-17T10:00:00Z".into()),
            end: Some("2025-05-17T12:00:00Z".into()),
            schedule: None,
            duration_minutes: None,
            time_zone: "UTC".into(),
            lead_time_seconds: 0,
            min_replicas: PeakFloors { matcher: Some(matcher), ..Default::default() },
        }
    }

    #[test]
    fn no_policy_gives_defaults() {
        let d = PlatformDefaults::default();
        let e = combine(&[], &d).unwrap();
        assert_eq!(e.mode, ScalingMode::Builtin);
        assert!(!e.paused);
        assert_eq!(e.matcher, WorkloadPolicy::default());
        assert!(e.windows.is_empty());
        assert!(e.bounds_from.iter().all(|(_, f)| f.is_none()));
    }

    #[test]
    fn policies_setting_different_workloads_combine() {
        let mut a = spec();
        a.workloads.matcher = Some(bounds(2, 20));
        a.peak_windows = vec![window("opening", 15)];
        let mut b = spec();
        b.workloads.feeds = Some(bounds(1, 4));
        b.paused = true;
        let e = combine(&[("b", &b), ("a", &a)], &PlatformDefaults::default()).unwrap();
        assert_eq!((e.matcher.min_replicas, e.matcher.max_replicas), (2, 20));
        assert_eq!((e.feeds.min_replicas, e.feeds.max_replicas), (1, 4));
        assert_eq!(e.ingest, WorkloadPolicy::default());
        assert_eq!(e.bounds_from[1].1.as_deref(), Some("a"));
        assert_eq!(e.bounds_from[2].1.as_deref(), Some("b"));
        assert!(e.paused, "any paused policy pauses the platform");
        let f = floors_at(&e, "2025-05-17T11:00:00Z".parse().unwrap());
        assert_eq!(f.matcher, 15);
    }

    #[test]
    fn two_policies_bounding_one_workload_contradict() {
        let mut a = spec();
        a.workloads.matcher = Some(bounds(2, 20));
        let mut b = spec();
        b.workloads.matcher = Some(bounds(1, 5));
        let err = combine(&[("zeta", &b), ("alpha", &a)], &PlatformDefaults::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ScalingPolicy \"alpha\" and \"zeta\" both set bounds for matcher; set each workload in one policy only"
        );
    }

    #[test]
    fn modes_must_agree() {
        let a = spec();
        let mut b = spec();
        b.mode = ScalingMode::Keda;
        let err = combine(&[("a", &a), ("b", &b)], &PlatformDefaults::default()).unwrap_err();
        assert!(matches!(err.0[0], PolicyError::ModeContradiction { .. }));
        assert!(err.to_string().contains("(mode builtin)"), "{err}");
        let e = combine(&[("b", &b)], &PlatformDefaults::default()).unwrap();
        assert_eq!(e.mode, ScalingMode::Keda);
    }

    #[test]
    fn windows_union_and_floors_take_the_max() {
        let mut a = spec();
        a.peak_windows = vec![window("opening", 6)];
        let mut b = spec();
        let mut w = window("press", 9);
        w.start = Some("2025-05-17T11:00:00Z".into());
        w.end = Some("2025-05-17T13:00:00Z".into());
        b.peak_windows = vec![w];
        let e = combine(&[("a", &a), ("b", &b)], &PlatformDefaults::default()).unwrap();
        assert_eq!(e.windows.len(), 2);
        let now = "2025-05-17T11:30:00Z".parse().unwrap();
        let f = e.active_floor(now).unwrap();
        assert_eq!((f.name.as_str(), f.floors.matcher), ("opening+press", 9));
    }

    #[test]
    fn duplicate_window_names_are_rejected() {
        let mut a = spec();
        a.peak_windows = vec![window("opening", 6)];
        let mut b = spec();
        b.peak_windows = vec![window("opening", 3)];
        let err = combine(&[("a", &a), ("b", &b)], &PlatformDefaults::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ScalingPolicy \"a\" and \"b\" both define peak window \"opening\"; window names must be unique"
        );
    }

    #[test]
    fn floor_above_max_is_rejected_naming_where_the_max_comes_from() {
        let mut a = spec();
        a.workloads.matcher = Some(bounds(1, 8));
        let mut b = spec();
        b.peak_windows = vec![window("opening", 12)];
        let err = combine(&[("a", &a), ("b", &b)], &PlatformDefaults::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ScalingPolicy \"b\": peak window \"opening\" asks for 12 matcher replicas, above its maxReplicas 8 (from ScalingPolicy \"a\")"
        );
        let mut c = spec();
        c.peak_windows = vec![window("opening", 11)];
        let err = combine(&[("c", &c)], &PlatformDefaults::default()).unwrap_err();
        assert!(err.to_string().ends_with("above its maxReplicas 10 (platform default)"), "{err}");
    }

    #[test]
    fn bad_bounds_and_windows_are_all_reported() {
        let mut a = spec();
        let mut m = bounds(5, 2);
        m.target_utilization = 1.5;
        a.workloads.matcher = Some(m);
        let mut w = window("nightly", 2);
        w.start = None;
        w.end = None;
        w.schedule = Some("0 25 * * *".into());
        w.duration_minutes = Some(30);
        let mut w2 = window("weekly", 2);
        w2.start = None;
        w2.end = None;
        w2.schedule = Some("0 9 * * MON".into());
        w2.duration_minutes = Some(30);
        w2.time_zone = "Mars/Olympus".into();
        a.peak_windows = vec![w, w2];
        let err = combine(&[("a", &a)], &PlatformDefaults::default()).unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        let text = err.to_string();
        assert!(text.contains("matcher minReplicas 5 exceeds maxReplicas 2"), "{text}");
        assert!(text.contains("targetUtilization 1.5 is out of range"), "{text}");
        assert!(text.contains("schedule \"0 25 * * *\" is not a five-field cron expression"), "{text}");
        assert!(text.contains("unknown time zone \"Mars/Olympus\""), "{text}");
    }
}
