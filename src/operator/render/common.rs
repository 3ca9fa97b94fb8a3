//! What every builder shares: names, labels, owner reference, security contexts.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Images, RenderError};
use crate::crd::CustomerDataPlatform;
use crate::crd::platform::WorkloadSpec;

/// The four data-plane workloads, all running the same image with a different subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Ingest,
    Matcher,
    Api,
    Feeds,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::Ingest, Workload::Matcher, Workload::Api, Workload::Feeds];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Ingest => "ingest",
            Workload::Matcher => "matcher",
            Workload::Api => "api",
            Workload::Feeds => "feeds",
        }
    }

    pub fn spec(self, platform: &CustomerDataPlatform) -> &WorkloadSpec {
        let w = &platform.spec.workloads;
        match self {
            Workload::Ingest => &w.ingest,
            Workload::Matcher => &w.matcher,
            Workload::Api => &w.api,
            Workload::Feeds => &w.feeds,
        }
    }

    /// Object name of this workload's Deployment, Service and PDB.
    pub fn object_name(self, platform: &str) -> String {
        format!("{platform}-{}", self.name())
    }
}

pub const PORT: i32 = 8080;
pub const CONFIG_DIR: &str = "/etc/cdp";
pub const CONFIG_FILE: &str = "pipeline.json";
pub const SECRETS_DIR: &str = "/var/run/cdp/secrets";
pub const CONFIG_HASH_ANNOTATION: &str = "cdp.dev/config-hash";

/// Labels that select one component of one platform.
pub fn selector_labels(platform: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "cdp".to_string()),
        ("app.kubernetes.io/instance".to_string(), platform.to_string()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
    ])
}

/// Selector labels plus the informational ones.
pub fn labels(platform: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(platform, component);
    labels.insert("app.kubernetes.io/part-of".to_string(), "cdp".to_string());
    labels.insert("app.kubernetes.io/managed-by".to_string(), "cdp-operator".to_string());
    labels
}

/// The platform facts builders need, computed once.
pub struct Context<'a> {
    pub platform: &'a CustomerDataPlatform,
    pub name: String,
    pub namespace: String,
    pub hash: String,
    /// The operator's images, for a spec that names none.
    pub images: &'a Images,
    owner: Option<OwnerReference>,
}

impl<'a> Context<'a> {
    pub fn new(platform: &'a CustomerDataPlatform, hash: &str, images: &'a Images) -> Result<Self, RenderError> {
        Ok(Self {
            platform,
            name: platform.name_any(),
            namespace: platform.namespace().ok_or(RenderError::NoNamespace)?,
            hash: hash.to_string(),
            images,
            owner: platform.controller_owner_ref(&()),
        })
    }

    /// `metadata` for an object named `name` belonging to `component`.
    pub fn metadata(&self, name: &str, component: &str) -> Value {
        let mut meta = json!({
            "name": name,
            "namespace": self.namespace,
            "labels": labels(&self.name, component),
        });
        if let Some(owner) = &self.owner {
            meta["ownerReferences"] = json!([owner]);
        }
        meta
    }

    pub fn service_account_name(&self) -> String {
        format!("{}-cdp", self.name)
    }

    /// Turn a builder's JSON into the typed object (a shape error is a bug caught by tests).
    pub fn typed<K: DeserializeOwned>(&self, kind: &'static str, value: Value) -> Result<K, RenderError> {
        serde_json::from_value(value).map_err(|source| RenderError::Shape { kind, source })
    }
}

/// Pod-level security for the restricted Pod Security Standard.
pub fn pod_security(user: i64) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": user,
        "runAsGroup": user,
        "fsGroup": user,
        // Re-chown a volume only when needed, not on every mount of a large data directory.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// Container-level security for the restricted Pod Security Standard.
pub fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}
