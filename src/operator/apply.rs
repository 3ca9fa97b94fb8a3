//! The effects at the edge: server-side apply with one field manager, and status writes.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// The field manager of everything the operator applies except replica counts.
pub const MANAGER: &str = "cdp-operator";
/// The field manager that owns `spec.replicas` of scaled workloads.
pub const SCALER_MANAGER: &str = "cdp-operator-scaler";

/// An apply that failed, naming the object.
#[derive(Debug, Error)]
#[error("applying {object}: {source}")]
pub struct ApplyError {
    pub object: String,
    #[source]
    pub source: kube::Error,
}

impl ApplyError {
    /// The API server's refusal, when retrying the same object cannot succeed (invalid,
    /// forbidden, immutable field): the platform is Stalled until its spec or RBAC changes.
    pub fn refusal(&self) -> Option<String> {
        match &self.source {
            kube::Error::Api(status) if matches!(status.code, 400 | 403 | 404 | 422) => {
                Some(format!("the API server refused {}: {}", self.object, status.message))
            }
            _ => None,
        }
    }
}

/// Server-side apply `obj` in its namespace, taking ownership of the fields it sets.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(|source| ApplyError { object: format!("{} {}", K::kind(&()), obj.name_any()), source })
}

/// Server-side apply an object of a kind the operator has no type for (KEDA's ScaledObject).
pub async fn apply_dynamic(client: &Client, resource: &kube::api::ApiResource, obj: &kube::api::DynamicObject) -> Result<(), ApplyError> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &obj.namespace().unwrap_or_default(), resource);
    api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(|source| ApplyError { object: format!("{} {}", resource.kind, obj.name_any()), source })?;
    Ok(())
}

/// Apply `status` to the status subresource of `obj` (the body must carry apiVersion and kind).
pub async fn apply_status<K>(client: &Client, obj: &K, status: impl Serialize) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    apply_status_as(client, obj, MANAGER, status).await
}

/// [`apply_status`] as field manager `manager`, which owns only the status fields it applies.
pub async fn apply_status_as<K>(client: &Client, obj: &K, manager: &str, status: impl Serialize) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(manager).force(), &Patch::Apply(body)).await?;
    Ok(())
}
