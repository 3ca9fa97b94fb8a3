//! cdp-operator: a Kubernetes operator and the customer-data platform it deploys.

pub mod crd;
pub mod identity;
pub mod operator;
pub mod pipeline;
pub mod scaling;
pub mod telemetry;
