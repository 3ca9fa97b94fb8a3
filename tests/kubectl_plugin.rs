//! `kubectl cdp` against the API fake: the status screen from what the cluster holds, prescale
//! as a server-side apply with the plugin's field manager that keeps the other windows, pause
//! and resume, and explain and erase through a real profile API with the Secret's tokens.
//! The binary itself answers as `kubectl-cdp`.

mod common;
mod support;

use cdp_operator::crd::{CustomerDataPlatform, Feed, ScalingPolicy, Source};
use cdp_operator::kubectl::{KubectlArgs, PluginCli, execute};
use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::json;
use support::fake_api::FakeApi;

const NS: &str = "shop";

fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).unwrap()
}

/// A running platform as the operator and its scaler leave it, with its members.
fn cluster() -> (FakeApi, kube::Client) {
    let (fake, client) = FakeApi::new();
    fake.put(&object::<CustomerDataPlatform>(json!({
        "apiVersion": "cdp.dev/v1alpha1", "kind": "CustomerDataPlatform",
        "metadata": {"name": "retail", "namespace": NS, "generation": 1},
        "spec": {"api": {"tokensSecretRef": {"name": "retail-api-tokens", "key": "tokens"}},
                 "workloads": {"matcher": {"minReplicas": 1, "maxReplicas": 12}}},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Available", "message": "every workload is available",
                 "lastTransitionTime": "2026-12-08T09:00:00Z"},
                {"type": "Reconciling", "status": "False", "reason": "Available", "message": "", "lastTransitionTime": "2026-12-08T09:00:00Z"}],
            "storeEndpoint": "retail-postgres.shop.svc:5432",
            "configHash": "3f2a9c",
            "workloads": [
                {"name": "ingest", "desiredReplicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "available": true},
                {"name": "matcher", "desiredReplicas": 6, "readyReplicas": 4, "updatedReplicas": 6, "available": true},
                {"name": "api", "desiredReplicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "available": true}],
            "members": {"sources": 1, "feeds": 1, "matchingPolicies": 0, "scalingPolicies": 1, "rejected": 0},
            "scaling": {"mode": "builtin", "paused": false, "message": "", "workloads": [
                {"name": "matcher", "currentReplicas": 4, "desiredReplicas": 6, "decision": "up", "cause": "backlog",
                 "reason": "backlog 42000, drains in 90 s at 6 replicas", "decidedAt": "2026-12-08T09:59:00Z"}]},
        },
    })));
    fake.put(&object::<Source>(json!({
        "apiVersion": "cdp.dev/v1alpha1", "kind": "Source", "metadata": {"name": "pos", "namespace": NS},
        "spec": {"platformRef": {"name": "retail"}, "delivery": {"http": {"authSecretRef": {"name": "pos", "key": "key"}}},
                 "mapping": [{"from": "email", "to": "email"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Compiled", "message": "", "lastTransitionTime": "2026-12-08T09:00:00Z"}]},
    })));
    fake.put(&object::<Feed>(json!({
        "apiVersion": "cdp.dev/v1alpha1", "kind": "Feed", "metadata": {"name": "crm", "namespace": NS},
        "spec": {"platformRef": {"name": "retail"}, "events": ["profile.updated"], "attributes": ["email"],
                 "destination": {"webhook": {"url": "https://crm.example.com/hook", "signingSecretRef": {"name": "crm", "key": "secret"}}}},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Failing", "message": "deliveries fail", "lastTransitionTime": "2026-12-08T09:00:00Z"}],
                   "lag": 1250, "failures": 3, "lastError": "HTTP 503"},
    })));
    fake.put(&object::<ScalingPolicy>(json!({
        "apiVersion": "cdp.dev/v1alpha1", "kind": "ScalingPolicy", "metadata": {"name": "retail-scaling", "namespace": NS},
        "spec": {"platformRef": {"name": "retail"}, "peakWindows": [
            {"name": "opening-night", "schedule": "0 18 * * 5", "durationMinutes": 240, "timeZone": "Europe/Paris",
             "leadTimeSeconds": 300, "minReplicas": {"matcher": 4}}]},
    })));
    let tokens = "reader read test-read\nwriter read,write test-write\neraser read,erase test-erase\n";
    fake.put(&object::<Secret>(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "retail-api-tokens", "namespace": NS},
        "data": {"tokens": k8s_openapi::ByteString(tokens.as_bytes().to_vec())},
    })));
    (fake, client)
}

fn args(line: &[&str]) -> KubectlArgs {
    PluginCli::try_parse_from(std::iter::once("kubectl-cdp").chain(line.iter().copied()).chain(["-n", NS])).unwrap().args
}

#[tokio::test]
async fn status_shows_conditions_workloads_decisions_members_and_windows() {
    let (_, client) = cluster();
    let screen = execute(client.clone(), args(&["status", "retail"])).await.unwrap();
    for expected in [
        "Platform shop/retail: Ready\n",
        "  Store: retail-postgres.shop.svc:5432\n",
        "Ready        True    Available",
        "every workload is available",
        "matcher  6        4      up 4→6 (backlog, ",
        "backlog 42000, drains in 90 s at 6 replicas",
        "  scaling: builtin, running\n",
        "compiled: 1 sources, 0 matching policies, 1 feeds, 1 scaling policies; 0 rejected",
        "Feed           crm             NotReady (Failing: deliveries fail)  lag 1250, 3 failures, last error: HTTP 503",
        "Source         pos             Ready",
        "retail-scaling/opening-night  0 18 * * 5 (Europe/Paris) for 240 min  matcher≥4",
    ] {
        assert!(screen.contains(expected), "{expected:?} missing from:\n{screen}");
    }
    let list = execute(client, args(&["status"])).await.unwrap();
    assert!(list.contains("retail  Ready   ingest 2/2, matcher 4/6, api 2/2"), "{list}");
}

#[tokio::test]
async fn prescale_applies_one_window_with_its_own_field_manager_and_keeps_the_others() {
    let (fake, client) = cluster();
    let at = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(3)).round(jiff::Unit::Minute).unwrap();
    let dry = execute(client.clone(), args(&["prescale", "retail", "--for", "2h", "--at", &at.to_string(), "--matcher", "8", "--dry-run"])).await.unwrap();
    assert!(dry.starts_with("(dry run) update ScalingPolicy retail-scaling"), "{dry}");
    assert_eq!(fake.get::<ScalingPolicy>(NS, "retail-scaling").unwrap().spec.peak_windows.len(), 1, "a dry run changes nothing");

    let said = execute(client, args(&["prescale", "retail", "--for", "2h", "--at", &at.to_string(), "--matcher", "8", "--ingest", "3"])).await.unwrap();
    assert!(said.contains("  matcher  at least 8 replicas\n") && said.contains("  feeds    as the scaler decides\n"), "{said}");
    assert!(said.contains("(5m ahead of the window"), "{said}");
    let policy = fake.get::<ScalingPolicy>(NS, "retail-scaling").unwrap();
    let windows: Vec<&str> = policy.spec.peak_windows.iter().map(|w| w.name.as_str()).collect();
    let name = format!("prescale-{}", at.strftime("%Y%m%d-%H%M"));
    assert_eq!(windows, ["opening-night", name.as_str()]);
    let window = &policy.spec.peak_windows[1];
    assert_eq!((window.start.as_deref(), window.min_replicas.matcher, window.min_replicas.ingest), (Some(at.to_string().as_str()), Some(8), Some(3)));
    let apply = fake.requests().into_iter().find(|r| r.method == http::Method::PATCH).unwrap();
    assert_eq!(apply.content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert!(apply.query.contains("fieldManager=kubectl-cdp"), "{}", apply.query);
}

#[tokio::test]
async fn pause_and_resume_set_and_remove_the_annotations_the_operator_honours() {
    let (fake, client) = cluster();
    let annotations = || fake.get::<CustomerDataPlatform>(NS, "retail").unwrap().annotations().clone();
    execute(client.clone(), args(&["pause", "retail", "--scaling-only"])).await.unwrap();
    assert_eq!(annotations().get("cdp.dev/scaling-paused").map(String::as_str), Some("true"));
    assert!(!annotations().contains_key("cdp.dev/paused"));
    execute(client.clone(), args(&["pause", "retail"])).await.unwrap();
    assert_eq!(annotations().get("cdp.dev/paused").map(String::as_str), Some("true"));
    let screen = execute(client.clone(), args(&["status", "retail"])).await.unwrap();
    assert!(screen.contains("paused: cdp.dev/paused=true") && screen.contains("paused: cdp.dev/scaling-paused=true"), "{screen}");
    execute(client.clone(), args(&["resume", "retail"])).await.unwrap();
    execute(client, args(&["resume", "retail", "--scaling-only"])).await.unwrap();
    assert!(!annotations().contains_key("cdp.dev/paused") && !annotations().contains_key("cdp.dev/scaling-paused"), "{:?}", annotations());
}

#[tokio::test]
async fn explain_and_erase_go_through_the_profile_api_with_the_secrets_tokens() {
    let t = common::sqlite_store().await;
    let c = common::Client::new(&t).await;
    c.send("webshop", json!({"id": "w1", "givenName": "Ada", "familyName": "Lovelace", "email": "ada@example.com"})).await;
    c.send("pos", json!({"id": "p1", "givenName": "ADA", "familyName": "LOVELACE", "email": "Ada@Example.com"})).await;
    common::worker(&t.store, common::resolver(), "w").drain().await.unwrap();
    let profile = format!("p{}", t.store.record_by_source_id("pos", "p1").await.unwrap().unwrap().profile_id);
    let (_, client) = cluster();

    let explained = execute(client.clone(), args(&["explain", "retail", &profile, "--api", &c.api])).await.unwrap();
    assert!(explained.starts_with(&format!("{profile}: 2 records\n")), "{explained}");
    assert!(explained.contains("webshop/w1 (record ") && explained.contains("started the profile"), "{explained}");
    assert!(explained.contains("pos/p1 (record ") && explained.contains("linked: "), "{explained}");

    let unconfirmed = execute(client.clone(), args(&["erase", "retail", "--email", "ada@example.com", "--reason", "subject-request", "--api", &c.api])).await;
    assert!(unconfirmed.unwrap_err().to_string().contains("--yes"));
    assert!(t.store.record_by_source_id("pos", "p1").await.unwrap().is_some(), "nothing erased without --yes");
    let wrong_scope = execute(client.clone(), args(&["erase", "retail", "--profile", &profile, "--reason", "subject-request", "--yes", "--api", &c.api, "--token-name", "writer"])).await;
    assert!(wrong_scope.unwrap_err().to_string().contains("lacks the erase scope"));

    let report = execute(client.clone(), args(&["erase", "retail", "--email", "ada@example.com", "--reason", "subject-request", "--yes", "--api", &c.api])).await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["profiles"], json!([profile]));
    assert!(t.store.record_by_source_id("pos", "p1").await.unwrap().is_none());
    let gone = execute(client, args(&["explain", "retail", &profile, "--api", &c.api])).await.unwrap_err();
    assert!(gone.to_string().contains("404 Not Found not_found"), "{gone}");
}

#[test]
fn the_binary_installed_as_kubectl_cdp_is_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-cdp");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cdp"), &plugin).unwrap();
    let out = std::process::Command::new(&plugin).args(["completion", "bash"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("kubectl__cdp") || script.contains("kubectl-cdp"), "{script}");
    assert!(script.contains("prescale") && script.contains("--scaling-only"));
    let help = std::process::Command::new(&plugin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: kubectl cdp"));
    let same = std::process::Command::new(env!("CARGO_BIN_EXE_cdp")).args(["kubectl", "completion", "bash"]).output().unwrap();
    assert_eq!(String::from_utf8(same.stdout).unwrap(), script, "cdp kubectl is the same plugin");
}
