//! The Secret holding the key of the platform's keyed identifier hashes (what the suppression
//! list of erased people and the erasure audit are made of), and how the workloads read it.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::RenderError;
use super::common::labels;
use crate::crd::CustomerDataPlatform;
use crate::privacy::PRIVACY_KEY_ENV;

/// The key of the Secret's data holding the privacy key.
pub const PRIVACY_KEY_KEY: &str = "key";

pub fn privacy_key_secret_name(platform: &str) -> String {
    format!("{platform}-privacy-key")
}

/// The Secret, with `key`. No owner reference: like the store's data, the key must outlive the
/// platform; the store keeps nothing but hashes made with it, and another key would let erased
/// people back in.
pub fn privacy_key_secret(platform: &CustomerDataPlatform, key: &str) -> Result<Secret, RenderError> {
    let name = platform.name_any();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": privacy_key_secret_name(&name),
            "namespace": platform.namespace().ok_or(RenderError::NoNamespace)?,
            "labels": labels(&name, "privacy"),
        },
        "type": "Opaque",
        "stringData": {PRIVACY_KEY_KEY: key},
    });
    serde_json::from_value(secret).map_err(|source| RenderError::Shape { kind: "Secret", source })
}

/// The workloads' key, from the Secret. Optional: a platform whose store was made before the
/// key moved to a Secret has none, and its workloads keep using the key the store holds.
pub fn env(platform: &str) -> Value {
    json!({"name": PRIVACY_KEY_ENV, "valueFrom": {"secretKeyRef": {
        "name": privacy_key_secret_name(platform), "key": PRIVACY_KEY_KEY, "optional": true}}})
}
