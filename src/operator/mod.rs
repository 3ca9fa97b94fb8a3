//! The operator: controllers, reconcile, status. `render/` holds the pure builders.

pub mod render;

mod apply;
mod controller;
mod enricher_status;
mod feed_status;
mod source_status;
pub mod leader;
mod members;
pub mod metrics;
mod scaler;
mod status;

pub use controller::{Context, OperatorArgs, PAUSED_ANNOTATION, platform_members, reconcile_platform, run, run_controllers};
pub use metrics::Metrics;
pub use scaler::{SCALING_PAUSED_ANNOTATION, ScalerOptions, observe};

use std::path::Path;

use kube::ResourceExt;
use thiserror::Error;

use crate::pipeline::{self, LoadError};
use render::{Images, StorePassword};

/// The images the operator gives platforms whose spec names none.
#[derive(clap::Args, Clone, Debug)]
pub struct ImageArgs {
    /// Image of `cdp` for the data plane (the deployment manifests set it to the operator's own image).
    #[arg(long = "image", env = "CDP_IMAGE", default_value = render::DEFAULT_IMAGE)]
    pub cdp: String,
    /// PostgreSQL image of in-cluster stores.
    #[arg(long = "postgres-image", env = "CDP_POSTGRES_IMAGE", default_value = render::DEFAULT_POSTGRES_IMAGE)]
    pub postgres: String,
}

impl ImageArgs {
    pub fn images(&self) -> Images {
        Images { cdp: self.cdp.clone(), postgres: self.postgres.clone() }
    }
}

/// Every CRD as one multi-document YAML stream, as `cdp crd` prints it.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for (_, yaml) in crd_files(CrdFlavour::Plain)? {
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

/// How CRD files are written: plain (kubectl, kustomize) or as Helm chart templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CrdFlavour {
    Plain,
    /// Behind `crds.enabled`, and kept on `helm uninstall` so customer data is never cascaded away.
    Helm,
}

/// One `(file name, YAML)` per CRD, named `<plural>.<group>.yaml`.
pub fn crd_files(flavour: CrdFlavour) -> Result<Vec<(String, String)>, serde_saphyr::ser::Error> {
    crate::crd::all()
        .into_iter()
        .map(|mut crd| {
            let file = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            let yaml = match flavour {
                CrdFlavour::Plain => serde_saphyr::to_string(&crd)?,
                CrdFlavour::Helm => {
                    crd.metadata.annotations = Some([("helm.sh/resource-policy".to_string(), "keep".to_string())].into());
                    format!("{{{{- if .Values.crds.enabled }}}}\n{}{{{{- end }}}}\n", serde_saphyr::to_string(&crd)?)
                }
            };
            Ok((file, yaml))
        })
        .collect()
}

#[derive(Debug, Error)]
pub enum RenderDirError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("platform {platform}: {source}")]
    Render { platform: String, source: render::RenderError },
    #[error("serialising YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser::Error),
}

/// What `cdp render` prints, and the problems it found along the way.
pub struct RenderedDir {
    pub yaml: String,
    pub warnings: Vec<String>,
}

/// Compile and render every platform found in `dir`, exactly as the operator would.
pub fn render_dir(dir: &Path, images: &Images) -> Result<RenderedDir, RenderDirError> {
    let manifests = pipeline::load_dir(dir)?;
    let mut yaml = String::new();
    let mut warnings: Vec<String> = manifests.ignored.iter().map(|i| format!("{i}: not a cdp.dev resource nor a Secret, ignored")).collect();
    for platform in &manifests.platforms {
        let compiled = pipeline::compile(platform, &manifests.members_of(platform), crate::identity::default_model());
        for verdict in compiled.verdicts.iter().filter(|v| !v.accepted()) {
            for error in &verdict.errors {
                warnings.push(format!("{} {}: Stalled ({}): {error}", verdict.kind, verdict.name, error.reason()));
            }
        }
        for error in &compiled.platform_errors {
            warnings.push(format!("CustomerDataPlatform {}: Stalled ({}): {error}", platform.name_any(), error.reason()));
        }
        // The store password Secret is left out: the operator generates it, once, in the cluster.
        // Printing one here would invite applying a known password through GitOps.
        let bundle = render::render(platform, &compiled.config, &compiled.hash, &StorePassword::Exists, images)
            .map_err(|source| RenderDirError::Render { platform: platform.name_any(), source })?;
        if bundle.store.is_some() {
            yaml.push_str(&format!(
                "# The Secret {} holding the store's password is not printed: the operator generates it\n\
                 # once, in the cluster, and the StatefulSet and workloads read it from there.\n",
                render::store_secret_name(&platform.name_any())
            ));
        }
        yaml.push_str(&format!(
            "# Nor is the Secret {} holding the key of the identifier hashes: the operator generates it\n\
             # once, in the cluster, for a new store, and the workloads read it from there.\n",
            render::privacy_key_secret_name(&platform.name_any())
        ));
        for object in bundle.objects() {
            yaml.push_str("---\n");
            yaml.push_str(&serde_saphyr::to_string(&object)?);
        }
    }
    Ok(RenderedDir { yaml, warnings })
}
