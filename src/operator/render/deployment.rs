//! One Deployment per data-plane workload.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::common::{
    CONFIG_DIR, CONFIG_FILE, CONFIG_HASH_ANNOTATION, Context, PORT, SECRETS_DIR, Workload, container_security,
    pod_security, selector_labels,
};
use super::postgres;
use crate::crd::SecretKeyRef;
use crate::pipeline::PipelineConfig;

/// The uid the `cdp` image runs as (distroless `nonroot`).
pub const CDP_UID: i64 = 65532;

pub fn deployment(ctx: &Context, config: &PipelineConfig, workload: Workload) -> Value {
    let name = workload.object_name(&ctx.name);
    let component = workload.name();
    let spec = workload.spec(ctx.platform);
    let resources = spec.resources.as_ref().map(|r| json!(r)).unwrap_or_else(|| default_resources(workload));
    let secrets = mounted_secrets(ctx, config, workload);
    let mut volumes = vec![json!({"name": "config", "configMap": {"name": super::config_map_name(ctx.platform)}})];
    let mut mounts = vec![json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true})];
    if !secrets.is_empty() {
        // One projected volume: every referenced key at <secret>/<key>, as the PipelineConfig names it.
        let sources: Vec<Value> = group_by_secret(&secrets)
            .into_iter()
            .map(|(secret, keys)| {
                let items: Vec<Value> =
                    keys.iter().map(|key| json!({"key": key, "path": format!("{secret}/{key}")})).collect();
                json!({"secret": {"name": secret, "items": items}})
            })
            .collect();
        volumes.push(json!({"name": "secrets", "projected": {"sources": sources}}));
        mounts.push(json!({"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": true}));
    }
    volumes.push(json!({"name": "tmp", "emptyDir": {}}));
    mounts.push(json!({"name": "tmp", "mountPath": "/tmp"}));

    let probe = |path: &str, period: i32| {
        json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": 3})
    };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.metadata(&name, component),
        "spec": {
            "selector": {"matchLabels": selector_labels(&ctx.name, component)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": {
                "metadata": {
                    "labels": super::common::labels(&ctx.name, component),
                    // A new config hash rolls the pods, so config changes need no manual restart.
                    "annotations": {CONFIG_HASH_ANNOTATION: ctx.hash},
                },
                "spec": {
                    "serviceAccountName": ctx.service_account_name(),
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security(CDP_UID),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": component,
                        "image": ctx.platform.spec.image.as_ref().unwrap_or(&ctx.images.cdp),
                        "imagePullPolicy": ctx.platform.spec.image_pull_policy,
                        "args": [component, "--config", format!("{CONFIG_DIR}/{CONFIG_FILE}"), "--listen", format!("0.0.0.0:{PORT}")],
                        "env": env(ctx, config, workload),
                        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
                        "livenessProbe": probe("/healthz", 10),
                        "readinessProbe": probe("/readyz", 5),
                        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 30},
                        "resources": resources,
                        "securityContext": container_security(),
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// Store location: the in-cluster Service with the generated password, or the external URL
/// Secret; and the key of the identifier hashes, which every workload computes.
fn env(ctx: &Context, config: &PipelineConfig, workload: Workload) -> Value {
    let mut env = vec![
        json!({"name": "RUST_LOG", "value": "info"}),
        json!({"name": "CDP_SECRETS_DIR", "value": SECRETS_DIR}),
        super::privacy_key::env(&ctx.name),
    ];
    match &ctx.platform.spec.store.external {
        Some(external) => env.push(json!({"name": "CDP_STORE_URL", "valueFrom": {"secretKeyRef": {
            "name": external.url_secret_ref.name, "key": external.url_secret_ref.key}}})),
        None => {
            env.push(json!({"name": "CDP_STORE_PASSWORD", "valueFrom": {"secretKeyRef": {
                "name": postgres::store_secret_name(&ctx.name), "key": postgres::STORE_PASSWORD_KEY}}}));
            env.push(json!({"name": "CDP_STORE_URL", "value": postgres::url_without_password(ctx)}));
        }
    }
    // KEDA's Kafka triggers read the bootstrap servers of the container they scale
    if workload == Workload::Ingest && super::keda::keda_mode(ctx, config) {
        for source in &config.sources {
            if let Some(kafka) = &source.spec.delivery.kafka {
                let secret = &kafka.bootstrap_servers_secret_ref;
                env.push(json!({"name": super::keda::bootstrap_servers_env(&source.name), "valueFrom": {"secretKeyRef": {
                    "name": secret.name, "key": secret.key}}}));
            }
        }
    }
    json!(env)
}

/// Secret keys a workload reads: source keys for ingest, signing keys for feeds, tokens for api.
fn mounted_secrets(ctx: &Context, config: &PipelineConfig, workload: Workload) -> BTreeSet<SecretKeyRef> {
    let refs: Vec<(&str, &SecretKeyRef)> = match workload {
        Workload::Ingest => config.sources.iter().flat_map(|s| s.spec.secret_refs()).collect(),
        // the enrichers run in the feeds workload
        Workload::Feeds => config
            .feeds
            .iter()
            .flat_map(|f| f.spec.secret_refs())
            .chain(config.enrichers.iter().flat_map(|e| e.spec.secret_refs()))
            .collect(),
        Workload::Api => ctx.platform.spec.api.tokens_secret_ref.iter().map(|t| ("", t)).collect(),
        Workload::Matcher => Vec::new(),
    };
    refs.into_iter().map(|(_, secret)| secret.clone()).collect()
}

fn group_by_secret(keys: &BTreeSet<SecretKeyRef>) -> Vec<(&str, Vec<&str>)> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for key in keys {
        match groups.last_mut() {
            Some((name, keys)) if *name == key.name => keys.push(&key.key),
            _ => groups.push((&key.name, vec![&key.key])),
        }
    }
    groups
}

/// Requests sized for a small platform; limits leave headroom for bursts.
fn default_resources(workload: Workload) -> Value {
    let (cpu, memory, memory_limit) = match workload {
        Workload::Matcher => ("500m", "256Mi", "1Gi"),
        Workload::Ingest | Workload::Api => ("200m", "128Mi", "512Mi"),
        Workload::Feeds => ("100m", "128Mi", "512Mi"),
    };
    json!({"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}})
}
