//! Scaling real pods: a burst of records makes the operator's scaler, which reads the pods'
//! `GET /v1/load`, raise the matcher, drain the backlog and shrink back; a peak window raises
//! the floor ahead of a known event. `status.scaling` explains each decision.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cdp_operator::crd::platform::ScaledWorkloadStatus;
use cdp_operator::crd::{CustomerDataPlatform, ScalingPolicy};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use crate::cluster::{Env, PLATFORM, PLATFORM_NAMESPACE, eventually};
use crate::load::{Load, Report};

const MATCHER: &str = "retail-matcher";

/// `kubectl cdp ARGS -n <platform namespace>`: kubectl finds the plugin as `kubectl-cdp` on
/// its PATH, a link to the binary under test.
async fn kubectl_cdp(env: &Env, args: &[&str]) -> Result<String> {
    let bin = env.work.join("plugin-bin");
    std::fs::create_dir_all(&bin)?;
    let link = bin.join("kubectl-cdp");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cdp"), &link)?;
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = tokio::process::Command::new("kubectl")
        .arg("cdp")
        .args(args)
        .args(["-n", PLATFORM_NAMESPACE])
        .env("PATH", path)
        .output()
        .await
        .context("kubectl is not on PATH")?;
    ensure!(out.status.success(), "kubectl cdp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

async fn matcher_replicas(env: &Env) -> Result<(i32, i32)> {
    let d = env.api::<Deployment>(PLATFORM_NAMESPACE).get(MATCHER).await?;
    let wanted = d.spec.and_then(|s| s.replicas).unwrap_or(0);
    Ok((wanted, d.status.and_then(|s| s.ready_replicas).unwrap_or(0)))
}

/// The scaler's last decision for the matcher, from the platform's status.
pub async fn matcher_decision(env: &Env) -> Result<Option<ScaledWorkloadStatus>> {
    let platform = env.api::<CustomerDataPlatform>(PLATFORM_NAMESPACE).get(PLATFORM).await?;
    Ok(platform.status.and_then(|s| s.scaling).and_then(|s| s.workloads.into_iter().find(|w| w.name == "matcher")))
}

/// Records not resolved yet.
pub async fn backlog(env: &Env) -> Result<i64> {
    env.sql_count(PLATFORM_NAMESPACE, "SELECT count(*) FROM intake WHERE state = 'queued'").await
}

/// Nothing of `run` is lost: every record intake accepted is resolved into a profile, exactly
/// once, and every record it refused as invalid is in quarantine. (The load sends as the web
/// shop, whose event id is `event_id`.)
pub async fn assert_nothing_lost(env: &Env, run: &str, report: &Report) -> Result<()> {
    ensure!(report.failed == 0, "{run}: records given up by the client: {report:?}");
    let pending = format!("SELECT count(*) FROM intake WHERE source_record_id LIKE '{run}-%' AND state <> 'done'");
    eventually(&format!("the records of {run} resolved"), Duration::from_secs(600), || async {
        Ok((env.sql_count(PLATFORM_NAMESPACE, &pending).await? == 0).then_some(()))
    })
    .await?;
    let stored = env.sql_count(PLATFORM_NAMESPACE, &format!("SELECT count(*) FROM source_records WHERE source_record_id LIKE '{run}-%'")).await?;
    ensure!(stored as usize == report.accepted, "{run}: {} records accepted (202), {stored} in profiles", report.accepted);
    let quarantined = env
        .sql_count(PLATFORM_NAMESPACE, &format!(
            "SELECT count(DISTINCT payload::jsonb->>'event_id') FROM quarantine WHERE payload::jsonb->>'event_id' LIKE '{run}-%'"
        ))
        .await?;
    let refused: usize = report.rejected.values().sum();
    ensure!(quarantined as usize == refused, "{run}: {refused} records refused as invalid (422), {quarantined} in quarantine");
    Ok(())
}

fn minimum() -> i32 {
    // the matcher's minReplicas in the samples' ScalingPolicy
    1
}

/// A burst scales the matcher up on its backlog; one matcher pod is deleted with --force in
/// the middle of a batch and nothing is lost; once drained, the matcher shrinks back.
pub async fn burst(env: &Env) -> Result<()> {
    let (before, _) = matcher_replicas(env).await?;
    ensure!(before == minimum(), "the matcher starts at its minimum, not {before}");
    let load = Load { run_id: "burst", source: "webshop", records: 24_000, rate: 0, concurrency: 8, batch: 25 };
    let started = Instant::now();
    load.start(env, PLATFORM_NAMESPACE).await?;

    let raised = eventually("the scaler raises the matcher", Duration::from_secs(240), || async {
        let (wanted, _) = matcher_replicas(env).await?;
        Ok((wanted > before).then_some(wanted))
    })
    .await?;
    env.figure("burst start → scaler raises the matcher", format!("{:.1} s (1 → {raised} replicas)", started.elapsed().as_secs_f64()));
    explained(env, "up").await?;
    eventually("the new matcher pods ready", Duration::from_secs(120), || async {
        let (wanted, ready) = matcher_replicas(env).await?;
        Ok((ready >= raised.min(wanted) && ready > before).then_some(()))
    })
    .await?;
    env.figure("burst start → added matcher pods ready", format!("{:.1} s", started.elapsed().as_secs_f64()));

    // Mid-batch, with work queued: one matcher pod goes away without a chance to finish.
    ensure!(backlog(env).await? > 0, "the backlog drained before a matcher could be deleted");
    let pods = env.api::<Pod>(PLATFORM_NAMESPACE).list(&ListParams::default().labels("app.kubernetes.io/component=matcher")).await?;
    let victim = pods.items.iter().filter_map(|p| p.metadata.name.clone()).next().context("a matcher pod")?;
    env.kubectl(&["-n", PLATFORM_NAMESPACE, "delete", "pod", &victim, "--force", "--grace-period=0"]).await?;
    println!("    deleted {victim} with --force while {} records were queued", backlog(env).await?);

    let report = load.report(env, PLATFORM_NAMESPACE, Duration::from_secs(600)).await?;
    println!("    load: {} records, {} accepted, {:.0} records/s at intake, p99 {:.0} ms", report.records, report.accepted, report.records_per_second, report.p99_ms);
    assert_nothing_lost(env, "burst", &report).await?;
    let drained = Instant::now();
    env.figure(
        "burst with a matcher pod force-deleted: lost records",
        format!("0 ({} accepted, all in profiles; {} invalid, all in quarantine)", report.accepted, report.rejected.values().sum::<usize>()),
    );
    env.figure("burst start → backlog drained", format!("{:.1} s", started.elapsed().as_secs_f64()));

    // Every scale-down shows in the status, with its reason, as it happens.
    let explained_down = std::sync::atomic::AtomicBool::new(false);
    eventually("the matcher back at its minimum", Duration::from_secs(300), || async {
        if let Some(d) = matcher_decision(env).await?.filter(|d| d.decision == "down" && !d.reason.is_empty())
            && !explained_down.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            println!("    status.scaling: matcher {} → {}: {} ({})", d.current_replicas, d.desired_replicas, d.reason, d.cause);
        }
        let (wanted, _) = matcher_replicas(env).await?;
        Ok((wanted == minimum()).then_some(()))
    })
    .await?;
    ensure!(explained_down.into_inner(), "status.scaling never showed the scale-down");
    env.figure("backlog drained → matcher back at its minimum", format!("{:.1} s (stabilisation window 30 s)", drained.elapsed().as_secs_f64()));
    Ok(())
}

/// `status.scaling` shows a matcher decision of `kind` with its reason.
async fn explained(env: &Env, kind: &str) -> Result<()> {
    let decision = eventually(&format!("status.scaling explains the matcher's scale-{kind}"), Duration::from_secs(30), || async {
        Ok(matcher_decision(env).await?.filter(|d| d.decision == kind && !d.reason.is_empty()))
    })
    .await?;
    println!("    status.scaling: matcher {} → {}: {} ({})", decision.current_replicas, decision.desired_replicas, decision.reason, decision.cause);
    Ok(())
}

/// A one-off peak window whose lead time starts soon raises the matcher's floor before the
/// window opens, and the matcher shrinks back after it closes.
pub async fn peak_window(env: &Env) -> Result<()> {
    let policies = env.api::<ScalingPolicy>(PLATFORM_NAMESPACE);
    let now = jiff::Timestamp::now();
    let start = (now + jiff::SignedDuration::from_secs(30)).round(jiff::Unit::Second)?;
    let end = start + jiff::SignedDuration::from_secs(30);
    let applied = Instant::now();
    // what an ops team types before an event: the kubectl plugin writes the window
    let at = start.to_string();
    let said = kubectl_cdp(env, &["prescale", PLATFORM, "--at", &at, "--for", "30s", "--lead", "20s", "--matcher", "3"]).await?;
    ensure!(said.contains("  matcher  at least 3 replicas"), "prescale says what will happen: {said}");
    eventually("the matcher at the window's floor", Duration::from_secs(90), || async {
        let (wanted, ready) = matcher_replicas(env).await?;
        Ok((wanted == 3 && ready == 3).then_some(()))
    })
    .await?;
    let raised = jiff::Timestamp::now();
    ensure!(raised < start, "the floor was raised before the window opened ({raised} ≥ {start})");
    let screen = kubectl_cdp(env, &["status", PLATFORM]).await?;
    let window = format!("prescale-{}", start.strftime("%Y%m%d-%H%M"));
    ensure!(screen.contains(&format!("Platform {PLATFORM_NAMESPACE}/{PLATFORM}: ")) && screen.contains(&window), "kubectl cdp status:\n{screen}");
    env.figure(
        "peak window (lead 20 s) → 3 matcher pods ready",
        format!("{:.1} s after the change, {:.0} s before the window opens", applied.elapsed().as_secs_f64(), start.duration_since(raised).as_secs_f64()),
    );
    eventually("the matcher back at its minimum after the window", Duration::from_secs(240), || async {
        let (wanted, _) = matcher_replicas(env).await?;
        Ok((wanted == minimum() && jiff::Timestamp::now() > end).then_some(()))
    })
    .await?;
    env.figure("window closed → matcher back at its minimum", format!("{:.1} s", jiff::Timestamp::now().duration_since(end).as_secs_f64()));
    policies.patch(PLATFORM, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"peakWindows": null}}))).await?;
    Ok(())
}
