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
        json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}})
    });
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
                        "image": store.image,
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
