//! Pure status computation: conditions from what the cluster reports, kstatus-style.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::common::{CommonStatus, condition};
use crate::crd::platform::WorkloadStatus;

/// Where an object stands, as kstatus reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Work is in progress: `Reconciling=True`, `Ready=False`.
    Progressing { reason: String, message: String },
    /// Cannot progress until someone changes something: `Stalled=True`, `Ready=False`.
    Stalled { reason: String, message: String },
    /// Done: `Ready=True`.
    Ready { message: String },
}

/// Compute the kstatus conditions for `phase`, keeping `lastTransitionTime` of unchanged ones
/// and any extra condition types from `previous` except the three this function owns.
pub fn conditions(previous: &[Condition], generation: Option<i64>, phase: &Phase, now: &Time) -> Vec<Condition> {
    let (ready, reconciling, stalled) = match phase {
        Phase::Progressing { reason, message } => (
            ("False", reason.as_str(), message.as_str()),
            ("True", reason.as_str(), message.as_str()),
            ("False", "Progressing", ""),
        ),
        Phase::Stalled { reason, message } => (
            ("False", reason.as_str(), message.as_str()),
            ("False", "Stalled", ""),
            ("True", reason.as_str(), message.as_str()),
        ),
        Phase::Ready { message } => (("True", "Ready", message.as_str()), ("False", "Ready", ""), ("False", "Ready", "")),
    };
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| ![condition::READY, condition::RECONCILING, condition::STALLED].contains(&c.type_.as_str()))
        .cloned()
        .collect();
    for (type_, (status, reason, message)) in
        [(condition::READY, ready), (condition::RECONCILING, reconciling), (condition::STALLED, stalled)]
    {
        out.push(make(previous, type_, status, reason, message, generation, now));
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Set one extra condition (e.g. `Paused`) in a list computed by [`conditions`].
pub fn set(conditions: &mut Vec<Condition>, previous: &[Condition], type_: &str, status: bool, reason: &str, message: &str, generation: Option<i64>, now: &Time) {
    conditions.retain(|c| c.type_ != type_);
    let status = if status { "True" } else { "False" };
    conditions.push(make(previous, type_, status, reason, message, generation, now));
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

fn make(previous: &[Condition], type_: &str, status: &str, reason: &str, message: &str, generation: Option<i64>, now: &Time) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Equal apart from timestamps: used to skip status writes that would change nothing.
pub fn same_status(a: &CommonStatus, b: &CommonStatus) -> bool {
    let strip = |s: &CommonStatus| {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone(), c.observed_generation))
            .collect::<Vec<_>>()
    };
    a.observed_generation == b.observed_generation && strip(a) == strip(b)
}

/// A workload's replicas and availability from its Deployment, as the cluster reports them.
/// Available once the current template is rolled out and the Deployment says Available; a
/// scale-up in progress does not make a rolled-out workload unavailable.
pub fn workload_status(name: &str, deployment: Option<&Deployment>) -> WorkloadStatus {
    let Some(deployment) = deployment else {
        return WorkloadStatus { name: name.to_string(), ..Default::default() };
    };
    let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let condition = |type_: &str| status.conditions.iter().flatten().find(|c| c.type_ == type_).cloned();
    let available_condition = condition("Available").is_some_and(|c| c.status == "True");
    let old_replicas_left = status.replicas.unwrap_or(0) > updated;
    WorkloadStatus {
        name: name.to_string(),
        desired_replicas: desired,
        ready_replicas: ready,
        updated_replicas: updated,
        available: observed && available_condition && updated >= desired.min(1) && !old_replicas_left,
        failed: condition("Progressing")
            .filter(|c| c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            .map(|c| c.message.unwrap_or_default()),
    }
}

/// The platform's phase from its workloads, once everything was applied.
pub fn rollout_phase(workloads: &[WorkloadStatus], store_ready: bool) -> Phase {
    if let Some(failed) = workloads.iter().find(|w| w.failed.is_some()) {
        return Phase::Stalled {
            reason: "RolloutFailed".into(),
            message: format!("{} did not roll out: {}", failed.name, failed.failed.clone().unwrap_or_default()),
        };
    }
    let waiting: Vec<&str> = workloads.iter().filter(|w| !w.available).map(|w| w.name.as_str()).collect();
    match (waiting.is_empty(), store_ready) {
        (true, true) => Phase::Ready { message: format!("{} workloads available", workloads.len()) },
        (_, false) => Phase::Progressing { reason: "StoreStarting".into(), message: "waiting for the store to be ready".into() },
        (false, true) => Phase::Progressing {
            reason: "RollingOut".into(),
            message: format!("waiting for {} to become available", waiting.join(", ")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let progressing = Phase::Progressing { reason: "RollingOut".into(), message: "waiting".into() };
        let first = conditions(&[], Some(1), &progressing, &at(100));
        let again = conditions(&first, Some(2), &progressing, &at(200));
        let ready = again.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, at(100));
        assert_eq!(ready.observed_generation, Some(2));
        let done = conditions(&again, Some(2), &Phase::Ready { message: "ok".into() }, &at(300));
        let ready = done.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.last_transition_time.clone()), ("True", at(300)));
        let reconciling = done.iter().find(|c| c.type_ == "Reconciling").unwrap();
        assert_eq!(reconciling.status, "False");
    }

    #[test]
    fn stalled_sets_stalled_and_not_reconciling() {
        let stalled = Phase::Stalled { reason: "SecretNotFound".into(), message: "create it".into() };
        let conds = conditions(&[], Some(3), &stalled, &at(1));
        let get = |t: &str| conds.iter().find(|c| c.type_ == t).unwrap().status.clone();
        assert_eq!((get("Ready"), get("Reconciling"), get("Stalled")), ("False".into(), "False".into(), "True".into()));
    }

    #[test]
    fn extra_conditions_survive() {
        let mut conds = conditions(&[], Some(1), &Phase::Ready { message: String::new() }, &at(1));
        set(&mut conds, &[], "Paused", true, "Paused", "annotation set", Some(1), &at(1));
        let again = conditions(&conds, Some(1), &Phase::Ready { message: String::new() }, &at(2));
        assert!(again.iter().any(|c| c.type_ == "Paused" && c.status == "True"));
    }

    #[test]
    fn workload_unavailable_until_rolled_out() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-ingest", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 1,
                        "conditions": [{"type": "Available", "status": "True"}]}
        }))
        .unwrap();
        assert!(!workload_status("ingest", Some(&d)).available, "one replica still on the old template");
        d.status.as_mut().unwrap().updated_replicas = Some(2);
        assert!(workload_status("ingest", Some(&d)).available);
        d.spec.as_mut().unwrap().replicas = Some(5);
        assert!(workload_status("ingest", Some(&d)).available, "a scale-up does not make it unavailable");
        d.metadata.generation = Some(3);
        assert!(!workload_status("ingest", Some(&d)).available, "new generation not yet observed");
        assert!(!workload_status("ingest", None).available);
    }

    #[test]
    fn rollout_past_its_deadline_stalls_the_platform() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-api", "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "ReplicaSet \"p-api-7d9\" has timed out progressing."}]}
        }))
        .unwrap();
        let workloads = vec![workload_status("api", Some(&d))];
        match rollout_phase(&workloads, true) {
            Phase::Stalled { reason, message } => {
                assert_eq!(reason, "RolloutFailed");
                assert!(message.contains("api did not roll out: ReplicaSet"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
