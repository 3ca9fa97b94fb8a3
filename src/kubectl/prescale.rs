//! `kubectl cdp prescale`: a one-off peak window in the platform's ScalingPolicy, applied with
//! the plugin's own field manager. `spec.peakWindows` is a map list keyed by `name`, so the
//! apply owns only its window: windows other people declared stay as they are.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::crd::scaling::{PeakFloors, PeakWindow};
use crate::crd::{CustomerDataPlatform, ScalingPolicy};
use crate::scaling::Workload;
use crate::scaling::policy::{self, PlatformDefaults};

use super::PluginError;

/// What the user asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub start: Timestamp,
    pub length: SignedDuration,
    /// Raise the floor this long before `start`.
    pub lead: SignedDuration,
    pub floors: PeakFloors,
    /// The ScalingPolicy to write into, when the platform has several.
    pub policy: Option<String>,
}

/// The apply to send, and what it will do, in words.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub policy: String,
    /// The ScalingPolicy does not exist yet: the apply creates it.
    pub creates: bool,
    pub patch: Value,
    pub summary: String,
}

/// A window name from its start: `prescale-20261208-1800`.
fn window_name(start: Timestamp) -> String {
    format!("prescale-{}", start.strftime("%Y%m%d-%H%M"))
}

/// Plan the prescale of `platform`, whose ScalingPolicies are `policies`.
pub fn plan(platform: &CustomerDataPlatform, policies: &[ScalingPolicy], request: &Request, now: Timestamp) -> Result<Plan, PluginError> {
    let invalid = |m: String| Err(PluginError::Invalid(m));
    let name = platform.metadata.name.clone().unwrap_or_default();
    if request.floors == PeakFloors::default() {
        return invalid("give at least one of --ingest, --matcher, --feeds: the replicas to keep during the window".into());
    }
    if request.length <= SignedDuration::ZERO {
        return invalid("--for must be a positive duration, e.g. 2h or 90m".into());
    }
    if request.lead < SignedDuration::ZERO {
        return invalid("--lead cannot be negative".into());
    }
    let end = request.start.checked_add(request.length).map_err(|e| PluginError::Invalid(format!("--for: {e}")))?;
    if end <= now {
        return invalid(format!("the window would have ended already ({end})"));
    }
    let own: Vec<&ScalingPolicy> = policies.iter().filter(|p| p.spec.platform_ref.name == name).collect();
    let (policy, creates) = match (&request.policy, &own[..]) {
        (Some(wanted), _) => (wanted.clone(), !own.iter().any(|p| p.metadata.name.as_ref() == Some(wanted))),
        (None, []) => (format!("{name}-prescale"), true),
        (None, [one]) => (one.metadata.name.clone().unwrap_or_default(), false),
        (None, several) => {
            let names: Vec<&str> = several.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
            return invalid(format!("platform {name} has several ScalingPolicies ({}): choose one with --policy", names.join(", ")));
        }
    };
    let window = PeakWindow {
        name: window_name(request.start),
        start: Some(request.start.to_string()),
        end: Some(end.to_string()),
        schedule: None,
        duration_minutes: None,
        time_zone: "UTC".into(),
        lead_time_seconds: request.lead.as_secs() as u32,
        min_replicas: request.floors.clone(),
    };
    let patch = json!({
        "apiVersion": "cdp.dev/v1alpha1",
        "kind": "ScalingPolicy",
        "metadata": {"name": policy},
        "spec": {"platformRef": {"name": name}, "peakWindows": [window]},
    });
    let specs: Vec<(&str, &crate::crd::ScalingPolicySpec)> =
        own.iter().map(|p| (p.metadata.name.as_deref().unwrap_or_default(), &p.spec)).collect();
    let effective = policy::combine(&specs, &PlatformDefaults::of(&platform.spec)).ok();
    let raised = request.start.checked_sub(request.lead).unwrap_or(request.start);
    let mut summary = format!(
        "{} ScalingPolicy {policy}: peak window {} from {} to {end}\n",
        if creates { "create" } else { "update" },
        window_name(request.start),
        request.start
    );
    summary.push_str(&if raised <= now {
        "the floors apply at once\n".to_string()
    } else {
        format!("the floors rise at {raised} ({} ahead of the window, so pods are warm when it opens)\n", friendly(request.lead))
    });
    for workload in Workload::ALL {
        let floor = match workload {
            Workload::Ingest => request.floors.ingest,
            Workload::Matcher => request.floors.matcher,
            Workload::Feeds => request.floors.feeds,
        };
        let line = match (floor, effective.as_ref().map(|e| e.workload(workload))) {
            (None, _) => "as the scaler decides".to_string(),
            (Some(n), Some(bounds)) if n as u32 > bounds.max_replicas => {
                format!("at least {} (asked {n}, capped at its maxReplicas {})", bounds.max_replicas, bounds.max_replicas)
            }
            (Some(n), _) => format!("at least {n} replicas"),
        };
        summary.push_str(&format!("  {:<8} {line}\n", workload.as_str()));
    }
    Ok(Plan { policy, creates, patch, summary })
}

/// `2h`, `90m`, `45s`: a duration as the user would type it.
pub fn friendly(d: SignedDuration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A duration typed on the command line: `2h`, `90m`, `1h30m`, `45s`.
pub fn parse_duration(raw: &str) -> Result<SignedDuration, String> {
    raw.parse::<SignedDuration>().map_err(|_| format!("{raw:?} is not a duration (e.g. 2h, 90m, 1h30m, 45s)"))
}

/// An instant typed on the command line (RFC 3339).
pub fn parse_time(raw: &str) -> Result<Timestamp, String> {
    raw.parse::<Timestamp>().map_err(|_| format!("{raw:?} is not an RFC 3339 time (e.g. 2026-12-08T18:00:00Z)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> CustomerDataPlatform {
        serde_json::from_value(json!({
            "apiVersion": "cdp.dev/v1alpha1", "kind": "CustomerDataPlatform",
            "metadata": {"name": "retail", "namespace": "shop"},
            "spec": {"workloads": {"matcher": {"minReplicas": 1, "maxReplicas": 6}}},
        }))
        .unwrap()
    }

    fn policy(name: &str, platform: &str) -> ScalingPolicy {
        serde_json::from_value(json!({
            "apiVersion": "cdp.dev/v1alpha1", "kind": "ScalingPolicy", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"platformRef": {"name": platform}, "peakWindows": [
                {"name": "opening-night", "schedule": "0 18 * * 5", "durationMinutes": 240, "minReplicas": {"matcher": 4}}]},
        }))
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn request(floors: PeakFloors) -> Request {
        Request {
            start: at("2026-12-08T18:00:00Z"),
            length: SignedDuration::from_hours(2),
            lead: SignedDuration::from_mins(5),
            floors,
            policy: None,
        }
    }

    #[test]
    fn the_apply_holds_only_its_own_window_and_says_what_will_happen() {
        let floors = PeakFloors { matcher: Some(8), ingest: Some(3), feeds: None };
        let plan = plan(&platform(), &[policy("retail-scaling", "retail"), policy("other", "elsewhere")], &request(floors), at("2026-12-08T12:00:00Z")).unwrap();
        assert_eq!((plan.policy.as_str(), plan.creates), ("retail-scaling", false));
        assert_eq!(
            plan.patch,
            json!({"apiVersion": "cdp.dev/v1alpha1", "kind": "ScalingPolicy", "metadata": {"name": "retail-scaling"},
                   "spec": {"platformRef": {"name": "retail"}, "peakWindows": [{
                       "name": "prescale-20261208-1800", "start": "2026-12-08T18:00:00Z", "end": "2026-12-08T20:00:00Z",
                       "timeZone": "UTC", "leadTimeSeconds": 300, "minReplicas": {"ingest": 3, "matcher": 8}}]}})
        );
        assert_eq!(
            plan.summary,
            "update ScalingPolicy retail-scaling: peak window prescale-20261208-1800 from 2026-12-08T18:00:00Z to 2026-12-08T20:00:00Z\n\
             the floors rise at 2026-12-08T17:55:00Z (5m ahead of the window, so pods are warm when it opens)\n\
             \x20 ingest   at least 3 replicas\n\
             \x20 matcher  at least 6 (asked 8, capped at its maxReplicas 6)\n\
             \x20 feeds    as the scaler decides\n"
        );
    }

    #[test]
    fn a_platform_without_a_policy_gets_one_and_several_need_a_choice() {
        let floors = PeakFloors { matcher: Some(2), ..PeakFloors::default() };
        let now = at("2026-12-08T18:30:00Z");
        let created = plan(&platform(), &[], &request(floors.clone()), now).unwrap();
        assert_eq!((created.policy.as_str(), created.creates), ("retail-prescale", true));
        assert!(created.summary.contains("the floors apply at once"), "{}", created.summary);
        let two = [policy("a", "retail"), policy("b", "retail")];
        let refused = plan(&platform(), &two, &request(floors.clone()), now).unwrap_err();
        assert!(refused.to_string().contains("several ScalingPolicies (a, b): choose one with --policy"), "{refused}");
        let chosen = plan(&platform(), &two, &Request { policy: Some("b".into()), ..request(floors) }, now).unwrap();
        assert_eq!((chosen.policy.as_str(), chosen.creates), ("b", false));
    }

    #[test]
    fn bad_requests_are_refused_with_what_to_type() {
        let now = at("2026-12-08T12:00:00Z");
        let none = plan(&platform(), &[], &request(PeakFloors::default()), now).unwrap_err();
        assert!(none.to_string().contains("--ingest, --matcher, --feeds"));
        let floors = PeakFloors { matcher: Some(2), ..PeakFloors::default() };
        let past = Request { start: at("2026-12-01T00:00:00Z"), ..request(floors.clone()) };
        assert!(plan(&platform(), &[], &past, now).unwrap_err().to_string().contains("ended already"));
        let empty = Request { length: SignedDuration::ZERO, ..request(floors) };
        assert!(plan(&platform(), &[], &empty, now).unwrap_err().to_string().contains("positive duration"));
        assert_eq!(parse_duration("2h").unwrap(), SignedDuration::from_hours(2));
        assert_eq!(parse_duration("1h30m").unwrap(), SignedDuration::from_mins(90));
        assert!(parse_duration("soon").unwrap_err().contains("e.g. 2h"));
        assert!(parse_time("tonight").unwrap_err().contains("RFC 3339"));
    }
}
