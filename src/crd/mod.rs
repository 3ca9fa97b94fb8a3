//! The custom resources (group `cdp.dev`, version `v1alpha1`): schema, CEL rules, status.

pub mod common;
pub mod feed;
pub mod matching;
pub mod platform;
pub mod scaling;
pub mod source;

pub use common::{CommonStatus, PlatformRef, SecretKeyRef};
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
    vec![
        CustomerDataPlatform::crd(),
        Source::crd(),
        MatchingPolicy::crd(),
        Feed::crd(),
        ScalingPolicy::crd(),
    ]
}
