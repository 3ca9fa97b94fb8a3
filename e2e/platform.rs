//! The samples' platform on the cluster: it comes up through its own pods' probes, and a
//! customer's records travel from intake to one golden profile, to a signed webhook, and out
//! again on erasure.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cdp_operator::crd::CustomerDataPlatform;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use serde_json::{Value, json};

use crate::cluster::{Apply, Env, PLATFORM, PLATFORM_NAMESPACE, PortForward, eventually};

pub const WORKLOADS: [&str; 4] = ["ingest", "matcher", "api", "feeds"];

/// A namespace that enforces the restricted Pod Security Standard: every pod the operator
/// renders must be admitted by it.
pub async fn restricted_namespace(env: &Env, name: &str) -> Result<()> {
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        }},
    });
    env.apply(Apply::Yaml(&namespace.to_string())).await
}

/// The samples (e2e/manifests/platform) in `namespace`.
pub async fn apply_samples(env: &Env, namespace: &str) -> Result<()> {
    let extra = format!("namespace: {namespace}\n{}", env.images_override());
    let dir = env.kustomization(&format!("platform-{namespace}"), "e2e/manifests/platform", &extra)?;
    env.apply(Apply::Kustomization(&dir.to_string_lossy())).await
}

pub fn condition(platform: &CustomerDataPlatform, kind: &str) -> Option<(String, String)> {
    let status = platform.status.as_ref()?;
    let c = status.common.conditions.iter().find(|c| c.type_ == kind)?;
    Some((c.status.clone(), c.reason.clone()))
}

pub fn is_ready(platform: &CustomerDataPlatform) -> bool {
    condition(platform, "Ready").is_some_and(|(status, _)| status == "True")
}

/// Every workload's pods and the store's are ready, as the cluster reports them.
pub async fn workloads_ready(env: &Env, namespace: &str) -> Result<Option<String>> {
    let deployments = env.api::<Deployment>(namespace);
    for workload in WORKLOADS {
        let d = deployments.get(&format!("{PLATFORM}-{workload}")).await?;
        let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.unwrap_or_default();
        if wanted < 1 || status.ready_replicas.unwrap_or(0) < wanted || status.updated_replicas.unwrap_or(0) < wanted {
            return Ok(Some(format!("{workload}: {}/{wanted} ready", status.ready_replicas.unwrap_or(0))));
        }
    }
    let store = env.api::<StatefulSet>(namespace).get(&format!("{PLATFORM}-postgres")).await?;
    if store.status.and_then(|s| s.ready_replicas).unwrap_or(0) < 1 {
        return Ok(Some("the store is not ready".into()));
    }
    Ok(None)
}

/// Wait for the platform to be `Ready=True`, and check that it is so because its pods are:
/// every time the platform says Ready, every workload must be.
pub async fn wait_ready(env: &Env, namespace: &str, timeout: Duration) -> Result<()> {
    let platforms = env.api::<CustomerDataPlatform>(namespace);
    eventually(&format!("platform {namespace}/{PLATFORM} Ready"), timeout, || async {
        let platform = platforms.get(PLATFORM).await?;
        if !is_ready(&platform) {
            return Ok(None);
        }
        match workloads_ready(env, namespace).await? {
            None => Ok(Some(())),
            // Ready is computed from the same reports: give a transition a moment, then call it
            Some(not_ready) => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let platform = platforms.get(PLATFORM).await?;
                match workloads_ready(env, namespace).await? {
                    Some(still) if is_ready(&platform) => bail!("Ready=True while {not_ready} (then {still})"),
                    _ => Ok(None),
                }
            }
        }
    })
    .await
}

/// The samples' platform comes up: PostgreSQL runs, every workload's pods pass their own
/// probes, and Ready follows.
pub async fn up(env: &Env) -> Result<()> {
    restricted_namespace(env, PLATFORM_NAMESPACE).await?;
    let started = Instant::now();
    apply_samples(env, PLATFORM_NAMESPACE).await?;
    // Not Ready before its pods are: the first status says what it waits for.
    let platforms = env.api::<CustomerDataPlatform>(PLATFORM_NAMESPACE);
    let first = eventually("a first status", Duration::from_secs(60), || async {
        let platform = platforms.get(PLATFORM).await?;
        Ok(platform.status.as_ref().is_some_and(|s| !s.common.conditions.is_empty()).then_some(platform))
    })
    .await?;
    ensure!(!is_ready(&first), "Ready before any pod could be: {:?}", first.status);
    wait_ready(env, PLATFORM_NAMESPACE, Duration::from_secs(300)).await?;
    env.figure("samples applied → platform Ready=True (PostgreSQL initialised, 4 workloads ready)", format!("{:.1} s", started.elapsed().as_secs_f64()));

    // Every pod ran under the restricted standard and is ready through its own probe.
    let pods = env.api::<Pod>(PLATFORM_NAMESPACE).list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={PLATFORM}"))).await?;
    ensure!(pods.items.len() >= 6, "only {} pods of the platform", pods.items.len());
    for pod in &pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let container = &pod.spec.as_ref().context("pod spec")?.containers[0];
        ensure!(container.readiness_probe.is_some(), "{name} has no readiness probe");
        let security = container.security_context.as_ref().context("container security context")?;
        ensure!(security.read_only_root_filesystem == Some(true), "{name}: root filesystem writable");
    }
    Ok(())
}

/// A platform key or token, read from its Secret (the samples' development credentials).
pub async fn secret_value(env: &Env, namespace: &str, name: &str, key: &str) -> Result<String> {
    let secret = env.api::<Secret>(namespace).get(name).await?;
    let bytes = secret.data.and_then(|d| d.get(key).cloned()).with_context(|| format!("secret {name} has no {key}"))?;
    Ok(String::from_utf8(bytes.0)?.trim().to_string())
}

/// The API token of the given name in the platform's token list ("NAME SCOPES TOKEN" lines).
pub async fn api_token(env: &Env, client: &str) -> Result<String> {
    let tokens = secret_value(env, PLATFORM_NAMESPACE, "retail-api-tokens", "tokens").await?;
    tokens
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(client)).then(|| fields.nth(1)).flatten().map(str::to_string)
        })
        .with_context(|| format!("no API token for {client}"))
}

/// The deliveries `cdp receive` printed, one JSON object per line.
pub async fn deliveries(env: &Env) -> Result<Vec<Value>> {
    let logs = env.logs(PLATFORM_NAMESPACE, "deploy/e2e-receiver").await?;
    Ok(logs.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v.get("receivedAt").is_some()).collect())
}

async fn post(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> Result<(u16, Value)> {
    let response = http.post(url).bearer_auth(key).json(body).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn lookup(http: &reqwest::Client, api: &PortForward, token: &str, email: &str) -> Result<Vec<Value>> {
    let url = format!("{}/v1/profiles/lookup?email={email}", api.base_url);
    let body: Value = http.get(url).bearer_auth(token).send().await?.error_for_status()?.json().await?;
    Ok(body["profiles"].as_array().cloned().unwrap_or_default())
}

/// A web-shop sign-up and a ticket scan of the same person, sent to the ingest Service,
/// become one golden profile read from the api Service; the scan of a patron who agreed to
/// texts reaches the SMS gateway's receiver as a signed webhook; an erasure removes the
/// person, tells the CRM, and closes intake to them.
pub async fn data_path(env: &Env) -> Result<()> {
    let ingest = PortForward::service(PLATFORM_NAMESPACE, &format!("{PLATFORM}-ingest"), 80).await?;
    let api = PortForward::service(PLATFORM_NAMESPACE, &format!("{PLATFORM}-api"), 80).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let webshop_key = secret_value(env, PLATFORM_NAMESPACE, "webshop-intake", "token").await?;
    let ticketing_key = secret_value(env, PLATFORM_NAMESPACE, "ticketing-intake", "token").await?;
    let reader = api_token(env, "crm-sync").await?;
    let email = "ada.lovelace@example.com";

    let signup = json!({"event_id": "e2e-signup-1", "account": {"id": "C-1", "email": email, "given_name": "Ada",
        "family_name": "Lovelace", "mobile": "+33 6 12 34 56 78"}, "marketing": {"sms_optin": "true"}});
    let (status, body) = post(&http, &format!("{}/v1/sources/webshop/records", ingest.base_url), &webshop_key, &signup).await?;
    ensure!(status == 202, "sign-up: {status} {body}");
    eventually("the sign-up readable through the API", Duration::from_secs(60), || async {
        Ok((!lookup(&http, &api, &reader, email).await?.is_empty()).then_some(()))
    })
    .await?;

    // At the gate: the same person, written differently.
    let scan = json!({"scan_id": "e2e-scan-1", "ticket": {"tier": "patron", "holder": {"email": "ADA.Lovelace@example.com",
        "first_name": "Ada", "last_name": "Lovelace", "phone": "06 12 34 56 78"}}});
    let (status, body) = post(&http, &format!("{}/v1/sources/ticketing/records", ingest.base_url), &ticketing_key, &scan).await?;
    let accepted_at = jiff::Timestamp::now();
    ensure!(status == 202, "ticket scan: {status} {body}");
    let welcome = eventually("the welcome webhook at the SMS gateway", Duration::from_secs(60), || async {
        Ok(deliveries(env).await?.into_iter().find(|d| d["path"] == "/v1/welcome"))
    })
    .await?;
    let received_at: jiff::Timestamp = welcome["receivedAt"].as_str().context("receivedAt")?.parse()?;
    let latency = received_at.duration_since(accepted_at);
    env.figure("ticket scan 202 at intake → signed webhook at the receiver pod (in-cluster)", format!("{:.0} ms", latency.as_secs_f64() * 1000.0));
    ensure!(welcome["message"]["type"] == "record.received", "welcome: {welcome}");

    let profiles = lookup(&http, &api, &reader, email).await?;
    ensure!(profiles.len() == 1, "one golden profile, got {}", profiles.len());
    ensure!(profiles[0]["recordCount"] == 2, "both records in it: {}", profiles[0]);
    ensure!(profiles[0]["golden"]["consents"]["sms"]["state"] == "granted", "{}", profiles[0]);
    let profile_id = profiles[0]["id"].as_str().context("profile id")?.to_string();

    // GDPR erasure, by identifier, with the DPO's token.
    let dpo = api_token(env, "dpo-console").await?;
    let erasure = json!({"attribute": "email", "value": email, "reason": "subject-request"});
    let (status, body) = post(&http, &format!("{}/v1/erasures", api.base_url), &dpo, &erasure).await?;
    ensure!(status == 200, "erasure: {status} {body}");
    ensure!(lookup(&http, &api, &reader, email).await?.is_empty(), "the profile is gone");
    let by_id = http.get(format!("{}/v1/profiles/{profile_id}", api.base_url)).bearer_auth(&reader).send().await?.status();
    ensure!(by_id == 404, "GET /v1/profiles/{profile_id} after erasure: {by_id}");
    let records = env.sql_count(PLATFORM_NAMESPACE, "SELECT count(*) FROM source_records WHERE source_record_id LIKE 'e2e-%'").await?;
    ensure!(records == 0, "{records} records of the erased person left in the store");
    eventually("profile.erased at the CRM's receiver", Duration::from_secs(60), || async {
        Ok(deliveries(env).await?.into_iter().find(|d| d["message"]["type"] == "profile.erased" && d["path"] == "/hooks/cdp").map(drop))
    })
    .await?;
    let again = json!({"event_id": "e2e-signup-2", "account": {"id": "C-1", "email": email, "given_name": "Ada"}});
    let (status, body) = post(&http, &format!("{}/v1/sources/webshop/records", ingest.base_url), &webshop_key, &again).await?;
    ensure!(status == 422 && body["error"]["code"] == "erased_subject", "intake refuses the erased person: {status} {body}");
    Ok(())
}
