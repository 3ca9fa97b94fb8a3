//! The custom resources (group `cdp.dev`, version `v1alpha1`): schema, CEL rules, status.

pub mod common;
pub mod enricher;
pub mod feed;
pub mod matching;
pub mod platform;
pub mod scaling;
pub mod source;

pub use common::{CommonStatus, PlatformRef, SecretKeyRef};
pub use enricher::{Enricher, EnricherSpec};
pub use feed::{Feed, FeedSpec};
pub use matching::{MatchingPolicy, MatchingPolicySpec};
pub use platform::{CustomerDataPlatform, CustomerDataPlatformSpec};
pub use scaling::{ScalingPolicy, ScalingPolicySpec};
pub use source::{Source, SourceSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub const GROUP: &str = "cdp.dev";

/// Every CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    [CustomerDataPlatform::crd(), Source::crd(), MatchingPolicy::crd(), Feed::crd(), ScalingPolicy::crd(), Enricher::crd()]
        .into_iter()
        .map(with_kubernetes_formats)
        .collect()
}

/// schemars names Rust's unsigned integers `uint32`, `uint64`, ...: formats the API server does
/// not know, and warns about on every apply. Each becomes the signed Kubernetes format that
/// holds all its values (no format at all for `uint64`); the `minimum: 0` schemars writes beside
/// it keeps negative values out.
fn with_kubernetes_formats(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn visit(schema: &mut serde_json::Value) {
        match schema {
            serde_json::Value::Object(map) => {
                let portable = match map.get("format").and_then(|f| f.as_str()) {
                    Some("uint8" | "uint16") => Some(Some("int32")),
                    Some("uint32") => Some(Some("int64")),
                    Some("uint64" | "uint") => Some(None),
                    _ => None,
                };
                match portable {
                    Some(Some(format)) => {
                        map.insert("format".to_string(), format.into());
                    }
                    Some(None) => {
                        map.remove("format");
                    }
                    None => {}
                }
                map.values_mut().for_each(visit);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(visit),
            _ => {}
        }
    }
    for version in &mut crd.spec.versions {
        let Some(validation) = version.schema.as_mut() else { continue };
        let Some(schema) = validation.open_api_v3_schema.take() else { continue };
        let mut json = serde_json::to_value(schema).expect("a JSON schema serialises");
        visit(&mut json);
        validation.open_api_v3_schema = Some(serde_json::from_value(json).expect("formats changed, shape kept"));
    }
    crd
}
