//! cdp-operator: a Kubernetes operator and the customer-data platform it deploys.

pub mod api;
pub mod bench;
pub mod crd;
pub mod enrich;
pub mod export;
pub mod feeds;
pub mod identity;
pub mod ingest;
pub mod kubectl;
pub mod local;
pub mod matcher;
pub mod operator;
pub mod pipeline;
pub mod privacy;
pub mod runtime;
pub mod scaling;
pub mod store;
pub mod telemetry;
