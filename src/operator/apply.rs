//! The effects at the edge: server-side apply with one field manager, and status writes.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The field manager of everything the operator applies except replica counts.
pub const MANAGER: &str = "cdp-operator";
/// The field manager that owns `spec.replicas` of scaled workloads.
pub const SCALER_MANAGER: &str = "cdp-operator-scaler";

/// Server-side apply `obj` in its namespace, taking ownership of the fields it sets.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await
}

/// Apply `status` to the status subresource of `obj` (the body must carry apiVersion and kind).
pub async fn apply_status<K>(client: &Client, obj: &K, status: impl Serialize) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(body)).await?;
    Ok(())
}
