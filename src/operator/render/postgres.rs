//! The in-cluster PostgreSQL store: password Secret, headless Service, StatefulSet with a PVC.

use serde_json::{Value, json};

use super::common::{Context, container_security, pod_security, selector_labels};
use crate::crd::platform::InClusterStore;

pub const STORE_PASSWORD_KEY: &str = "password";
const PORT: i32 = 5432;
const USER: &str = "cdp";
const DATABASE: &str = "cdp";
/// The `postgres` user of the official image.
const POSTGRES_UID: i64 = 999;

pub fn store_secret_name(platform: &str) -> String {
    format!("{platform}-store")
}

/// Name of the store's StatefulSet, Service and NetworkPolicy.
pub fn store_name(platform: &str) -> String {
    format!("{platform}-postgres")
}

/// Host and port the workloads connect to (shown in the platform status).
pub fn endpoint(namespace: &str, platform: &str) -> String {
    format!("{}.{namespace}.svc:{PORT}", store_name(platform))
}

/// The workloads add the password from `CDP_STORE_PASSWORD`, so it never sits in a manifest.
pub fn url_without_password(ctx: &Context) -> String {
    format!("postgres://{USER}@{}/{DATABASE}", endpoint(&ctx.namespace, &ctx.name))
}

/// The claim the StatefulSet's `data` template creates for its only replica.
pub fn volume_claim_name(platform: &str) -> String {
    format!("data-{}-0", store_name(platform))
}

/// No owner reference: like the data volume (which a StatefulSet keeps when deleted), the
/// password must outlive the platform, or re-creating the platform would lock out its data.
pub fn password_secret(ctx: &Context, password: &str) -> Value {
    let mut metadata = ctx.metadata(&store_secret_name(&ctx.name), "store");
    metadata.as_object_mut().expect("metadata is an object").remove("ownerReferences");
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {STORE_PASSWORD_KEY: password},
    })
}

pub fn service(ctx: &Context) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(&store_name(&ctx.name), "store"),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(&ctx.name, "store"),
            "ports": [{"name": "postgres", "port": PORT, "targetPort": "postgres", "protocol": "TCP"}],
        },
    })
}

pub fn stateful_set(ctx: &Context) -> Value {
    let defaults = InClusterStore::default();
    let store = ctx.platform.spec.store.in_cluster.as_ref().unwrap_or(&defaults);
    let name = store_name(&ctx.name);
    let resources = store.resources.as_ref().map(|r| json!(r)).unwrap_or_else(|| {
        json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": DEFAULT_MEMORY_LIMIT}})
    });
    let memory_limit = match &store.resources {
        Some(r) => r.limits.as_ref().and_then(|l| l.get("memory")).and_then(|q| quantity_bytes(&q.0)),
        None => quantity_bytes(DEFAULT_MEMORY_LIMIT),
    };
    let settings = server_settings(memory_limit, quantity_bytes(&store.storage));
    let mut claim = json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": store.storage}}},
    });
    if let Some(class) = &store.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    let exec = |cmd: &str| json!({"exec": {"command": ["sh", "-c", cmd]}, "periodSeconds": 10, "timeoutSeconds": 5});
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": ctx.metadata(&name, "store"),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": selector_labels(&ctx.name, "store")},
            "template": {
                "metadata": {"labels": super::common::labels(&ctx.name, "store")},
                "spec": {
                    "serviceAccountName": ctx.service_account_name(),
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security(POSTGRES_UID),
                    "containers": [{
                        "name": "postgres",
                        "image": store.image.as_ref().unwrap_or(&ctx.images.postgres),
                        "args": settings,
                        "env": [
                            {"name": "POSTGRES_USER", "value": USER},
                            {"name": "POSTGRES_DB", "value": DATABASE},
                            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
                                "name": store_secret_name(&ctx.name), "key": STORE_PASSWORD_KEY}}},
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                        ],
                        "ports": [{"name": "postgres", "containerPort": PORT, "protocol": "TCP"}],
                        "readinessProbe": exec(&format!("pg_isready -U {USER} -d {DATABASE}")),
                        "livenessProbe": exec(&format!("pg_isready -U {USER} -d {DATABASE}")),
                        // Crash recovery can take minutes; liveness must not kill it meanwhile.
                        "startupProbe": {"exec": {"command": ["sh", "-c", format!("pg_isready -U {USER} -d {DATABASE}")]},
                                         "periodSeconds": 5, "failureThreshold": 120},
                        "resources": resources,
                        "securityContext": container_security(),
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                            // The root filesystem is read-only; PostgreSQL writes its socket and temp files here.
                            {"name": "run", "mountPath": "/var/run/postgresql"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    })
}

const DEFAULT_MEMORY_LIMIT: &str = "1Gi";

/// The server's command line, with settings sized to its container. The image's defaults
/// (128 MB of shared buffers, a checkpoint at most every 1 GB of WAL) suit a small shared
/// host. A store with its pod to itself caches a quarter of the memory it may use, as
/// PostgreSQL's documentation advises, and lets a fifth of its volume hold WAL between
/// checkpoints: after each checkpoint, the first change to a page writes the whole page to
/// the WAL, and the key index's changes land on scattered pages.
fn server_settings(memory_limit: Option<u64>, storage: Option<u64>) -> Vec<String> {
    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;
    let mut settings = Vec::new();
    if let Some(memory) = memory_limit.filter(|m| m / 4 > 128 * MB) {
        settings.push(format!("shared_buffers={}MB", memory / 4 / MB));
        settings.push(format!("effective_cache_size={}MB", memory / 4 * 3 / MB));
    }
    if let Some(storage) = storage {
        settings.push(format!("max_wal_size={}MB", (storage / 5).clamp(GB, 16 * GB) / MB));
    }
    std::iter::once("postgres".to_string()).chain(settings.into_iter().flat_map(|s| ["-c".to_string(), s])).collect()
}

/// Bytes of a Kubernetes quantity such as `1Gi`, `512Mi`, `2G` or `1.5Gi`; `None` for any
/// other form (the API server has checked it; the image's defaults then stay).
fn quantity_bytes(quantity: &str) -> Option<u64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((quantity, 1.0));
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let value = number.parse::<f64>().ok()? * factor;
    (value < u64::MAX as f64).then_some(value as u64)
}

/// How KEDA's PostgreSQL trigger reaches the in-cluster store: the scale target's own
/// `CDP_STORE_PASSWORD`, so the password never sits in a manifest.
pub fn keda_connection(ctx: &Context) -> Value {
    json!({
        "host": format!("{}.{}.svc", store_name(&ctx.name), ctx.namespace),
        "port": PORT.to_string(),
        "userName": USER,
        "dbName": DATABASE,
        "sslmode": "disable",
        "passwordFromEnv": "CDP_STORE_PASSWORD",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kubernetes_quantities() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("2G"), Some(2_000_000_000));
        assert_eq!(quantity_bytes("1000"), Some(1000));
        for not_bytes in ["", "Gi", "1.5.1Gi", "-1Gi", "1e3Gi", "lots"] {
            assert_eq!(quantity_bytes(not_bytes), None, "{not_bytes}");
        }
    }

    #[test]
    fn sizes_the_server_to_its_container() {
        let settings = server_settings(quantity_bytes("4Gi"), quantity_bytes("100Gi"));
        assert_eq!(
            settings,
            ["postgres", "-c", "shared_buffers=1024MB", "-c", "effective_cache_size=3072MB", "-c", "max_wal_size=16384MB"]
        );
        // the platform's defaults: a 1 GiB limit and a 10 GiB volume
        assert_eq!(
            server_settings(quantity_bytes("1Gi"), quantity_bytes("10Gi")),
            ["postgres", "-c", "shared_buffers=256MB", "-c", "effective_cache_size=768MB", "-c", "max_wal_size=2048MB"]
        );
    }

    #[test]
    fn keeps_the_image_defaults_where_they_are_larger_or_nothing_is_known() {
        // a quarter of 256 MiB is below the image's 128 MB of shared buffers; a small volume
        // still gets the 1 GB of WAL the image allows
        assert_eq!(server_settings(quantity_bytes("256Mi"), quantity_bytes("1Gi")), ["postgres", "-c", "max_wal_size=1024MB"]);
        assert_eq!(server_settings(None, None), ["postgres"]);
    }
}
