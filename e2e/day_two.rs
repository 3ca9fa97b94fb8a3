//! Day two: a quiet operator, a configuration change that rolls every workload while records
//! arrive, the store's pod restarted, and the leading operator replica gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cdp_operator::crd::{CustomerDataPlatform, Source};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::cluster::{Env, OPERATOR_NAMESPACE, PLATFORM, PLATFORM_NAMESPACE, eventually};
use crate::install::leader;
use crate::load::Load;
use crate::platform::{WORKLOADS, is_ready, wait_ready};
use crate::scaling::assert_nothing_lost;

/// The field managers the operator writes with.
const OPERATOR_MANAGERS: [&str; 2] = ["cdp-operator", "cdp-operator-scaler"];
/// Everything the operator reads or writes in a platform's namespace.
const KINDS: &str = "deployments,statefulsets,services,configmaps,serviceaccounts,secrets,poddisruptionbudgets,\
networkpolicies,horizontalpodautoscalers,customerdataplatforms,sources,matchingpolicies,feeds,scalingpolicies";

/// resourceVersion and the operator's managedFields times, per object.
async fn snapshot(env: &Env) -> Result<BTreeMap<String, (String, Vec<String>)>> {
    let list: Value = serde_json::from_str(&env.kubectl(&["-n", PLATFORM_NAMESPACE, "get", KINDS, "-o", "json"]).await?)?;
    let mut out = BTreeMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let meta = &item["metadata"];
        let key = format!("{}/{}", item["kind"].as_str().unwrap_or_default(), meta["name"].as_str().unwrap_or_default());
        let times = meta["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| OPERATOR_MANAGERS.contains(&f["manager"].as_str().unwrap_or_default()))
            .map(|f| format!("{} {} {}", f["manager"], f["subresource"], f["time"]))
            .collect();
        out.insert(key, (meta["resourceVersion"].as_str().unwrap_or_default().to_string(), times));
    }
    Ok(out)
}

/// Events the operator published in the platform's namespace.
async fn operator_events(env: &Env) -> Result<usize> {
    let list: Value = serde_json::from_str(&env.kubectl(&["-n", PLATFORM_NAMESPACE, "get", "events.events.k8s.io", "-o", "json"]).await?)?;
    let count = |e: &Value| e["series"]["count"].as_u64().unwrap_or(1) as usize;
    Ok(list["items"].as_array().into_iter().flatten().filter(|e| e["reportingController"] == "cdp-operator").map(count).sum())
}

/// With nothing changing, the operator writes nothing to the API server for a minute: no
/// object, status or Event of the platform changes under its field managers. (Leader election
/// renews its Lease every 2 s by design; that is the only write.)
pub async fn no_churn(env: &Env) -> Result<()> {
    // settle: the scaler's last decision written, no rollout in progress
    wait_ready(env, PLATFORM_NAMESPACE, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = snapshot(env).await?;
    let events_before = operator_events(env).await?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = snapshot(env).await?;
    let mut writes = Vec::new();
    for (key, (_, times)) in &after {
        match before.get(key) {
            None => writes.push(format!("{key} created")),
            Some((_, old)) if old != times => writes.push(format!("{key}: {old:?} → {times:?}")),
            Some(_) => {}
        }
    }
    let events = operator_events(env).await? - events_before;
    ensure!(writes.is_empty() && events == 0, "the operator wrote in a quiet minute: {writes:?}, {events} events");
    let changed_by_others = after.iter().filter(|(k, (rv, _))| before.get(*k).is_some_and(|(old, _)| old != rv)).count();
    env.figure(
        "writes by the operator in a quiet minute (objects, statuses, Events)",
        format!("0 (of {} objects watched; {changed_by_others} changed by Kubernetes' own controllers)", after.len()),
    );
    Ok(())
}

/// The pod template's config hash of every workload is `hash`, rolled out and ready.
async fn rolled_to(env: &Env, hash: &str) -> Result<Option<()>> {
    let deployments = env.api::<Deployment>(PLATFORM_NAMESPACE);
    for workload in WORKLOADS {
        let d = deployments.get(&format!("{PLATFORM}-{workload}")).await?;
        let template_hash = d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.as_ref()).and_then(|a| a.get("cdp.dev/config-hash").cloned());
        let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let generation = d.metadata.generation;
        let status = d.status.unwrap_or_default();
        let done = template_hash.as_deref() == Some(hash)
            && status.observed_generation == generation
            && status.updated_replicas == Some(wanted)
            && status.replicas == Some(wanted)
            && status.ready_replicas == Some(wanted);
        if !done {
            return Ok(None);
        }
    }
    Ok(Some(()))
}

/// A Source's mapping changes while a touchpoint keeps sending: the config hash changes,
/// every workload rolls, and every record intake accepted during the roll is in a profile.
pub async fn source_change_rolls(env: &Env) -> Result<()> {
    let platforms = env.api::<CustomerDataPlatform>(PLATFORM_NAMESPACE);
    let old_hash = platforms.get(PLATFORM).await?.status.and_then(|s| s.config_hash).context("a config hash in force")?;
    let load = Load { run_id: "roll", source: "webshop", records: 3_600, rate: 80, concurrency: 16, batch: 1 };
    load.start(env, PLATFORM_NAMESPACE).await?;
    let pods = env.api::<Pod>(PLATFORM_NAMESPACE);
    eventually("the load running", Duration::from_secs(60), || async {
        Ok((pods.get("e2e-load-roll").await?.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let started = Instant::now();
    let mapping = json!([{"op": "add", "path": "/spec/mapping/-", "value": {"from": "account.locale", "to": "attributes.locale"}}]);
    env.api::<Source>(PLATFORM_NAMESPACE)
        .patch("webshop", &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(mapping)?))
        .await?;
    let new_hash = eventually("a new config hash in force", Duration::from_secs(60), || async {
        Ok(platforms.get(PLATFORM).await?.status.and_then(|s| s.config_hash).filter(|h| *h != old_hash))
    })
    .await?;
    eventually("every workload rolled to the new config", Duration::from_secs(300), || rolled_to(env, &new_hash)).await?;
    let rolled = started.elapsed();
    let still_sending = pods.get("e2e-load-roll").await?.status.and_then(|s| s.phase).as_deref() == Some("Running");
    ensure!(still_sending, "the load ended before the roll did: records were not posted throughout it");
    wait_ready(env, PLATFORM_NAMESPACE, Duration::from_secs(120)).await?;
    env.figure("Source mapping changed → all 4 workloads rolled and ready", format!("{:.1} s", rolled.as_secs_f64()));

    let report = load.report(env, PLATFORM_NAMESPACE, Duration::from_secs(300)).await?;
    assert_nothing_lost(env, "roll", &report).await?;
    env.figure(
        "records lost during the roll",
        format!("0 of {} accepted at {:.0}/s ({} retried by the client, {} redeliveries absorbed)", report.accepted, report.records_per_second, report.retried(), report.duplicates),
    );
    Ok(())
}

/// The store's pod is deleted while records arrive: the platform reports not Ready while the
/// store is away, returns to Ready, and nothing intake accepted is lost.
pub async fn postgres_restart(env: &Env) -> Result<()> {
    let load = Load { run_id: "pg", source: "webshop", records: 2_400, rate: 60, concurrency: 16, batch: 1 };
    load.start(env, PLATFORM_NAMESPACE).await?;
    let platforms = env.api::<CustomerDataPlatform>(PLATFORM_NAMESPACE);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let started = Instant::now();
    env.kubectl(&["-n", PLATFORM_NAMESPACE, "delete", "pod", &format!("{PLATFORM}-postgres-0"), "--wait=false"]).await?;
    eventually("the platform not Ready while its store is away", Duration::from_secs(90), || async {
        Ok((!is_ready(&platforms.get(PLATFORM).await?)).then_some(()))
    })
    .await?;
    wait_ready(env, PLATFORM_NAMESPACE, Duration::from_secs(300)).await?;
    env.figure("PostgreSQL pod deleted → platform Ready again", format!("{:.1} s", started.elapsed().as_secs_f64()));
    let report = load.report(env, PLATFORM_NAMESPACE, Duration::from_secs(300)).await?;
    assert_nothing_lost(env, "pg", &report).await?;
    env.figure(
        "records lost across the PostgreSQL restart",
        format!("0 of {} accepted ({} attempts retried by the client)", report.accepted, report.retried()),
    );
    Ok(())
}

/// The leading replica is deleted: the other takes the Lease over and reconciles the next
/// change.
pub async fn leader_failover(env: &Env) -> Result<()> {
    let old = leader(env).await?;
    let started = Instant::now();
    env.kubectl(&["-n", OPERATOR_NAMESPACE, "delete", "pod", &old, "--wait=false"]).await?;
    let leases = env.api::<k8s_openapi::api::coordination::v1::Lease>(OPERATOR_NAMESPACE);
    let new = eventually("another replica leading", Duration::from_secs(60), || async {
        let holder = leases.get("cdp-operator-leader").await?.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        Ok((!holder.is_empty() && holder != old).then_some(holder))
    })
    .await?;
    env.figure("leader pod deleted → the other replica holds the Lease", format!("{:.1} s", started.elapsed().as_secs_f64()));

    // The new leader reconciles: a spec change reaches the api's HPA and the status.
    let platforms = env.api::<CustomerDataPlatform>(PLATFORM_NAMESPACE);
    let change = json!({"spec": {"workloads": {"api": {"maxReplicas": 5}}}});
    let generation = platforms.patch(PLATFORM, &PatchParams::default(), &Patch::Merge(&change)).await?.metadata.generation;
    let hpas = env.api::<HorizontalPodAutoscaler>(PLATFORM_NAMESPACE);
    eventually("the new leader applies the change", Duration::from_secs(60), || async {
        let hpa = hpas.get(&format!("{PLATFORM}-api")).await?;
        let observed = platforms.get(PLATFORM).await?.status.and_then(|s| s.common.observed_generation);
        Ok((hpa.spec.map(|s| s.max_replicas) == Some(5) && observed == generation).then_some(()))
    })
    .await?;
    env.figure("leader pod deleted → a spec change reconciled by the new leader", format!("{:.1} s", started.elapsed().as_secs_f64()));
    println!("    {new} leads");
    Ok(())
}
