//! Pure builders: (platform, compiled config) → the Kubernetes objects the operator applies.
//!
//! No API calls here. One builder per resource kind; `render` assembles them in apply order.
//! Replica counts of scaled workloads are deliberately absent: the scaler owns that field
//! through its own field manager, so the main apply never fights it.

mod common;
mod config_map;
mod deployment;
pub mod keda;
mod network_policy;
mod postgres;
mod privacy_key;
mod service;

pub use common::{CONFIG_HASH_ANNOTATION, PORT, Workload, labels, selector_labels};
pub use postgres::{STORE_PASSWORD_KEY, endpoint as store_endpoint, store_name, store_secret_name, volume_claim_name as store_volume_claim_name};
pub use privacy_key::{PRIVACY_KEY_KEY, privacy_key_secret, privacy_key_secret_name};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use serde::Serialize;
use thiserror::Error;

use crate::crd::CustomerDataPlatform;
use crate::pipeline::PipelineConfig;

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("platform has no namespace")]
    NoNamespace,
    #[error("building {kind}: {source}")]
    Shape { kind: &'static str, source: serde_json::Error },
    #[error("serialising the pipeline config: {0}")]
    Config(serde_json::Error),
}

impl RenderError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoNamespace => "NoNamespace",
            Self::Shape { .. } => "RenderFailed",
            Self::Config(_) => "ConfigSerialisation",
        }
    }
}

/// The images a platform runs when its spec names none: the operator's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// `cdp` for every data-plane workload.
    pub cdp: String,
    /// PostgreSQL for the in-cluster store.
    pub postgres: String,
}

/// The release image of this very binary, so an operator started without `--image` deploys
/// a data plane of its own version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/cdp-operator/cdp:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_POSTGRES_IMAGE: &str = "postgres:17-bookworm";

impl Default for Images {
    fn default() -> Self {
        Images { cdp: DEFAULT_IMAGE.to_string(), postgres: DEFAULT_POSTGRES_IMAGE.to_string() }
    }
}

/// Whether the generated store password Secret must be created, or already exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorePassword {
    /// It exists: never regenerate it (the database was initialised with it).
    Exists,
    /// Create it with this freshly generated password.
    Create(String),
}

/// Everything one platform runs on, in apply order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bundle {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    /// Only when the store password must be created.
    pub store_secret: Option<Secret>,
    pub store_service: Option<Service>,
    pub store: Option<StatefulSet>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    pub api_autoscaler: HorizontalPodAutoscaler,
    /// KEDA ScaledObjects, in KEDA mode only.
    pub scaled_objects: Vec<kube::api::DynamicObject>,
    /// KEDA mode: the credentials of the Kafka Sources' triggers.
    pub trigger_authentications: Vec<kube::api::DynamicObject>,
}

impl Bundle {
    /// All objects as JSON values, in apply order (what `cdp render` prints).
    pub fn objects(&self) -> Vec<serde_json::Value> {
        fn push<T: Serialize>(out: &mut Vec<serde_json::Value>, obj: &T) {
            out.push(serde_json::to_value(obj).expect("Kubernetes objects serialise"));
        }
        let mut out = Vec::new();
        push(&mut out, &self.service_account);
        push(&mut out, &self.config_map);
        self.store_secret.iter().for_each(|o| push(&mut out, o));
        self.store_service.iter().for_each(|o| push(&mut out, o));
        self.store.iter().for_each(|o| push(&mut out, o));
        self.deployments.iter().for_each(|o| push(&mut out, o));
        self.services.iter().for_each(|o| push(&mut out, o));
        self.disruption_budgets.iter().for_each(|o| push(&mut out, o));
        self.network_policies.iter().for_each(|o| push(&mut out, o));
        push(&mut out, &self.api_autoscaler);
        self.trigger_authentications.iter().for_each(|o| push(&mut out, o));
        self.scaled_objects.iter().for_each(|o| push(&mut out, o));
        out
    }
}

/// Build every object of `platform` for `config`.
pub fn render(
    platform: &CustomerDataPlatform,
    config: &PipelineConfig,
    hash: &str,
    password: &StorePassword,
    images: &Images,
) -> Result<Bundle, RenderError> {
    let ctx = common::Context::new(platform, hash, images)?;
    let in_cluster_store = platform.spec.store.external.is_none();
    Ok(Bundle {
        service_account: ctx.typed("ServiceAccount", service::service_account(&ctx))?,
        config_map: ctx.typed("ConfigMap", config_map::pipeline(&ctx, config)?)?,
        store_secret: match (in_cluster_store, password) {
            (true, StorePassword::Create(password)) => Some(ctx.typed("Secret", postgres::password_secret(&ctx, password))?),
            _ => None,
        },
        store_service: in_cluster_store.then(|| ctx.typed("Service", postgres::service(&ctx))).transpose()?,
        store: in_cluster_store.then(|| ctx.typed("StatefulSet", postgres::stateful_set(&ctx))).transpose()?,
        deployments: Workload::ALL
            .iter()
            .map(|w| ctx.typed("Deployment", deployment::deployment(&ctx, config, *w)))
            .collect::<Result<_, _>>()?,
        services: [Workload::Ingest, Workload::Api]
            .iter()
            .map(|w| ctx.typed("Service", service::service(&ctx, *w)))
            .collect::<Result<_, _>>()?,
        disruption_budgets: Workload::ALL
            .iter()
            .map(|w| ctx.typed("PodDisruptionBudget", service::disruption_budget(&ctx, *w)))
            .collect::<Result<_, _>>()?,
        network_policies: network_policy::all(&ctx, config)
            .into_iter()
            .map(|p| ctx.typed("NetworkPolicy", p))
            .collect::<Result<_, _>>()?,
        api_autoscaler: ctx.typed("HorizontalPodAutoscaler", service::api_autoscaler(&ctx))?,
        scaled_objects: keda::scaled_objects(&ctx, config)
            .into_iter()
            .map(|o| ctx.typed("ScaledObject", o))
            .collect::<Result<_, _>>()?,
        trigger_authentications: keda::trigger_authentications(&ctx, config)
            .into_iter()
            .map(|o| ctx.typed("TriggerAuthentication", o))
            .collect::<Result<_, _>>()?,
    })
}

/// Name of the ConfigMap holding a platform's PipelineConfig.
pub fn config_map_name(platform: &CustomerDataPlatform) -> String {
    format!("{}-pipeline", platform.name_any())
}
