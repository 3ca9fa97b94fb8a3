//! `kubectl cdp status`: a platform on one screen, from its status and its members' statuses.
//! [`render`] is pure: it formats the platform and what its [`Members`] hold.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::common::{CommonStatus, condition};
use crate::crd::CustomerDataPlatform;
use crate::pipeline::Members;

/// Columns padded to their widest cell, two spaces apart, each line indented.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().enumerate().map(|(c, cell)| format!("{cell:<w$}", w = widths[c])).collect();
            format!("  {}\n", cells.join("  ").trim_end())
        })
        .collect()
}

fn condition_of<'a>(status: Option<&'a CommonStatus>, kind: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == kind)
}

/// `Ready`, `NotReady (Reason: message)` or `Unknown`: one resource's readiness in a cell.
fn readiness(status: Option<&CommonStatus>) -> String {
    match condition_of(status, condition::READY) {
        Some(c) if c.status == "True" => "Ready".into(),
        Some(c) if c.message.is_empty() => format!("NotReady ({})", c.reason),
        Some(c) => format!("NotReady ({}: {})", c.reason, c.message),
        None => "Unknown (no status yet)".into(),
    }
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// The status screen of `platform`.
pub fn render(platform: &CustomerDataPlatform, members: &Members, now: Timestamp) -> String {
    let status = platform.status.clone().unwrap_or_default();
    let name = name_of(&platform.metadata);
    let namespace = platform.metadata.namespace.clone().unwrap_or_default();
    let mut out = format!("Platform {namespace}/{name}: {}\n", readiness(Some(&status.common)));
    let generation = platform.metadata.generation.unwrap_or(0);
    match status.common.observed_generation {
        Some(seen) if seen < generation => {
            out.push_str(&format!("  the operator has not yet acted on the latest change (generation {generation}, observed {seen})\n"))
        }
        _ => {}
    }
    for (label, value) in [("Store", &status.store_endpoint), ("Config", &status.config_hash)] {
        if let Some(value) = value {
            out.push_str(&format!("  {label}: {value}\n"));
        }
    }
    for annotation in [crate::operator::PAUSED_ANNOTATION, crate::operator::SCALING_PAUSED_ANNOTATION] {
        if platform.metadata.annotations.as_ref().and_then(|a| a.get(annotation)).is_some_and(|v| v == "true") {
            out.push_str(&format!("  paused: {annotation}=true\n"));
        }
    }

    out.push_str("\nConditions\n");
    let mut rows = vec![vec!["TYPE".into(), "STATUS".into(), "REASON".into(), "SINCE".into(), "MESSAGE".into()]];
    for c in &status.common.conditions {
        rows.push(vec![c.type_.clone(), c.status.clone(), c.reason.clone(), age(&c.last_transition_time.0, now), c.message.clone()]);
    }
    out.push_str(&table(&rows));

    out.push_str("\nWorkloads\n");
    let scaling = status.scaling.clone().unwrap_or_default();
    let mut rows = vec![vec!["NAME".into(), "DESIRED".into(), "READY".into(), "SCALER".into()]];
    for w in &status.workloads {
        let decision = scaling.workloads.iter().find(|d| d.name == w.name);
        let scaler = match decision {
            Some(d) => format!(
                "{} {}→{} ({}, {} ago): {}",
                d.decision,
                d.current_replicas,
                d.desired_replicas,
                d.cause,
                d.decided_at.parse::<Timestamp>().map(|t| age(&t, now)).unwrap_or_else(|_| d.decided_at.clone()),
                d.reason
            ),
            None => "-".into(),
        };
        let ready = match &w.failed {
            Some(failure) => format!("{} (failed: {failure})", w.ready_replicas),
            None => w.ready_replicas.to_string(),
        };
        rows.push(vec![w.name.clone(), w.desired_replicas.to_string(), ready, scaler]);
    }
    out.push_str(&table(&rows));
    let scaler = match (scaling.mode.as_str(), scaling.paused) {
        ("", _) => "the scaler has not run yet".to_string(),
        (mode, true) => format!("{mode}, paused: {}", scaling.message),
        (mode, false) if scaling.message.is_empty() => format!("{mode}, running"),
        (mode, false) => format!("{mode}: {}", scaling.message),
    };
    out.push_str(&format!("  scaling: {scaler}\n"));

    out.push_str("\nMembers\n");
    if let Some(counts) = &status.members {
        out.push_str(&format!(
            "  compiled: {} sources, {} matching policies, {} feeds, {} scaling policies; {} rejected\n",
            counts.sources, counts.matching_policies, counts.feeds, counts.scaling_policies, counts.rejected
        ));
    }
    let mut rows = vec![vec!["KIND".into(), "NAME".into(), "STATUS".into(), "DETAIL".into()]];
    for s in &members.sources {
        let detail = s
            .status
            .as_ref()
            .and_then(|st| st.consumer.as_ref())
            .map(|c| {
                let error = c.last_error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default();
                format!("kafka lag {}, {:.1}/s{error}", c.lag, c.consumed_per_second)
            })
            .unwrap_or_default();
        rows.push(vec!["Source".into(), name_of(&s.metadata), readiness(s.status.as_ref().map(|s| &s.common)), detail]);
    }
    for m in &members.matching_policies {
        rows.push(vec!["MatchingPolicy".into(), name_of(&m.metadata), readiness(m.status.as_ref().map(|s| &s.common)), String::new()]);
    }
    for f in &members.feeds {
        let detail = f
            .status
            .as_ref()
            .map(|st| {
                let mut parts = vec![format!("lag {}", st.lag.unwrap_or(0))];
                if let Some(rate) = st.delivered_per_second {
                    parts.push(format!("{rate:.1}/s"));
                }
                if let Some(failures) = st.failures.filter(|&n| n > 0) {
                    parts.push(format!("{failures} failures"));
                }
                if let Some(error) = &st.last_error {
                    parts.push(format!("last error: {error}"));
                }
                parts.join(", ")
            })
            .unwrap_or_default();
        rows.push(vec!["Feed".into(), name_of(&f.metadata), readiness(f.status.as_ref().map(|s| &s.common)), detail]);
    }
    for p in &members.scaling_policies {
        let active = p.status.as_ref().and_then(|s| s.active_peak_window.clone()).map(|w| format!("peak window in force: {w}"));
        rows.push(vec!["ScalingPolicy".into(), name_of(&p.metadata), readiness(p.status.as_ref().map(|s| &s.common)), active.unwrap_or_default()]);
    }
    out.push_str(&table(&rows));

    let windows: Vec<Vec<String>> = members
        .scaling_policies
        .iter()
        .flat_map(|p| p.spec.peak_windows.iter().map(move |w| (p, w)))
        .map(|(p, w)| {
            let when = match (&w.start, &w.end, &w.schedule, w.duration_minutes) {
                (Some(start), Some(end), _, _) => format!("{start} → {end}"),
                (_, _, Some(cron), Some(minutes)) => format!("{cron} ({}) for {minutes} min", w.time_zone),
                _ => String::new(),
            };
            let floors: Vec<String> = [("ingest", w.min_replicas.ingest), ("matcher", w.min_replicas.matcher), ("feeds", w.min_replicas.feeds)]
                .into_iter()
                .filter_map(|(name, n)| Some(format!("{name}≥{}", n?)))
                .collect();
            vec![format!("{}/{}", name_of(&p.metadata), w.name), when, floors.join(" ")]
        })
        .collect();
    if !windows.is_empty() {
        out.push_str("\nPeak windows\n");
        out.push_str(&table(&windows));
    }
    out
}

/// `42s`, `5m`, `3h`, `2d`: how long ago.
fn age(then: &Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(*then).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// One line per platform of a namespace, for `status` without a name.
pub fn render_list(platforms: &[CustomerDataPlatform]) -> String {
    if platforms.is_empty() {
        return "no CustomerDataPlatform in this namespace\n".into();
    }
    let mut rows = vec![vec!["NAME".into(), "STATUS".into(), "WORKLOADS READY".into()]];
    for p in platforms {
        let status = p.status.clone().unwrap_or_default();
        let ready = status.workloads.iter().map(|w| format!("{} {}/{}", w.name, w.ready_replicas, w.desired_replicas)).collect::<Vec<_>>();
        rows.push(vec![name_of(&p.metadata), readiness(Some(&status.common)), ready.join(", ")]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn platform(status: serde_json::Value) -> CustomerDataPlatform {
        serde_json::from_value(json!({
            "apiVersion": "cdp.dev/v1alpha1", "kind": "CustomerDataPlatform",
            "metadata": {"name": "retail", "namespace": "shop", "generation": 3},
            "spec": {}, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_new_platform_says_what_it_is_waiting_for() {
        let screen = render(&platform(json!({})), &Members::default(), Timestamp::now());
        assert!(screen.starts_with("Platform shop/retail: Unknown (no status yet)\n"), "{screen}");
        assert!(screen.contains("  scaling: the scaler has not run yet\n"), "{screen}");
        assert!(!screen.contains("Peak windows"), "no windows, no section: {screen}");
    }

    #[test]
    fn a_stale_status_a_failed_rollout_and_a_paused_scaler_are_shown() {
        let now: Timestamp = "2026-12-08T10:00:00Z".parse().unwrap();
        let status = json!({
            "observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "False", "reason": "RolloutFailed", "message": "matcher: progress deadline exceeded",
                            "lastTransitionTime": "2026-12-08T09:45:00Z"}],
            "workloads": [{"name": "matcher", "desiredReplicas": 3, "readyReplicas": 1, "updatedReplicas": 1, "available": false,
                           "failed": "ProgressDeadlineExceeded"}],
            "scaling": {"mode": "builtin", "paused": true, "message": "scaling is paused by the cdp.dev/scaling-paused annotation"},
        });
        let screen = render(&platform(status), &Members::default(), now);
        assert!(screen.starts_with("Platform shop/retail: NotReady (RolloutFailed: matcher: progress deadline exceeded)\n"), "{screen}");
        assert!(screen.contains("the operator has not yet acted on the latest change (generation 3, observed 2)"), "{screen}");
        assert!(screen.contains("Ready  False   RolloutFailed  15m    matcher: progress deadline exceeded"), "{screen}");
        assert!(screen.contains("matcher  3        1 (failed: ProgressDeadlineExceeded)  -"), "{screen}");
        assert!(screen.contains("  scaling: builtin, paused: scaling is paused by the cdp.dev/scaling-paused annotation\n"), "{screen}");
    }
}
