//! Reading resources from YAML files, for `cdp render` and `cdp local`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::Members;
use crate::crd::{CustomerDataPlatform, Enricher, Feed, MatchingPolicy, ScalingPolicy, SecretKeyRef, Source};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: document {index} ({kind} {name:?}): {message}")]
    Invalid { path: PathBuf, index: usize, kind: String, name: String, message: String },
    #[error("{dir}: no CustomerDataPlatform found")]
    NoPlatform { dir: PathBuf },
}

/// The resources found in a directory, by kind. Unknown kinds are ignored (listed in `ignored`).
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub platforms: Vec<CustomerDataPlatform>,
    pub sources: Vec<Source>,
    pub matching_policies: Vec<MatchingPolicy>,
    pub feeds: Vec<Feed>,
    pub scaling_policies: Vec<ScalingPolicy>,
    pub enrichers: Vec<Enricher>,
    pub secrets: Vec<Secret>,
    /// `kind/name` of documents that are none of the above.
    pub ignored: Vec<String>,
}

/// Load every `*.yaml`/`*.yml` file in `dir` (not recursive), in file-name order.
/// Resources without a namespace get `default`, as `kubectl apply` would give them.
pub fn load_dir(dir: &Path) -> Result<Manifests, LoadError> {
    let read_err = |source| LoadError::Read { path: dir.to_path_buf(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut manifests = Manifests::default();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read { path: path.clone(), source })?;
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| LoadError::Yaml { path: path.clone(), message: e.to_string() })?;
        for (index, doc) in docs.into_iter().enumerate() {
            manifests.add(&path, index, doc)?;
        }
    }
    if manifests.platforms.is_empty() {
        return Err(LoadError::NoPlatform { dir: dir.to_path_buf() });
    }
    Ok(manifests)
}

impl Manifests {
    fn add(&mut self, path: &Path, index: usize, mut doc: serde_json::Value) -> Result<(), LoadError> {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if doc["metadata"]["namespace"].is_null() && doc["metadata"].is_object() {
            doc["metadata"]["namespace"] = "default".into();
        }
        let invalid = |message: String| LoadError::Invalid {
            path: path.to_path_buf(),
            index,
            kind: kind.clone(),
            name: name.clone(),
            message,
        };
        fn parse<T: DeserializeOwned>(doc: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(doc).map_err(|e| e.to_string())
        }
        let is_cdp = api_version == format!("{}/v1alpha1", crate::crd::GROUP);
        match (is_cdp, kind.as_str(), api_version.as_str()) {
            (true, "CustomerDataPlatform", _) => self.platforms.push(parse(doc).map_err(invalid)?),
            (true, "Source", _) => self.sources.push(parse(doc).map_err(invalid)?),
            (true, "MatchingPolicy", _) => self.matching_policies.push(parse(doc).map_err(invalid)?),
            (true, "Feed", _) => self.feeds.push(parse(doc).map_err(invalid)?),
            (true, "ScalingPolicy", _) => self.scaling_policies.push(parse(doc).map_err(invalid)?),
            (true, "Enricher", _) => self.enrichers.push(parse(doc).map_err(invalid)?),
            (_, "Secret", "v1") => self.secrets.push(parse(doc).map_err(invalid)?),
            // A kustomization beside the manifests is how they are applied, not a resource.
            (_, "Kustomization", v) if v.starts_with("kustomize.config.k8s.io/") => {}
            _ => self.ignored.push(format!("{kind}/{name}")),
        }
        Ok(())
    }

    /// The members of `platform`: resources in its namespace whose `platformRef` names it.
    pub fn members_of(&self, platform: &CustomerDataPlatform) -> Members {
        let ns = platform.namespace();
        let name = platform.name_any();
        fn mine<'a, K: kube::Resource + Clone>(
            items: &'a [K],
            ns: &'a Option<String>,
            name: &'a str,
            platform_of: impl Fn(&K) -> &str + 'a,
        ) -> Vec<K> {
            items.iter().filter(|i| &i.meta().namespace == ns && platform_of(i) == name).cloned().collect()
        }
        Members {
            sources: mine(&self.sources, &ns, &name, |s| &s.spec.platform_ref.name),
            matching_policies: mine(&self.matching_policies, &ns, &name, |p| &p.spec.platform_ref.name),
            feeds: mine(&self.feeds, &ns, &name, |f| &f.spec.platform_ref.name),
            scaling_policies: mine(&self.scaling_policies, &ns, &name, |p| &p.spec.platform_ref.name),
            enrichers: mine(&self.enrichers, &ns, &name, |e| &e.spec.platform_ref.name),
            secret_keys: secret_keys(self.secrets.iter().filter(|s| s.namespace() == ns)),
        }
    }

    /// Secret values by reference, for `cdp local` (files in a directory stand in for the cluster).
    pub fn secret_value(&self, namespace: &str, secret: &SecretKeyRef) -> Option<String> {
        let found = self
            .secrets
            .iter()
            .find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == secret.name)?;
        secret_data(found).remove(&secret.key)
    }
}

/// Every (name, key) pair the given Secrets hold.
pub fn secret_keys<'a>(secrets: impl Iterator<Item = &'a Secret>) -> std::collections::BTreeSet<SecretKeyRef> {
    secrets
        .flat_map(|s| {
            let name = s.name_any();
            secret_data(s).into_keys().map(move |key| SecretKeyRef { name: name.clone(), key })
        })
        .collect()
}

/// A Secret's keys and values, from `data` (decoded) and `stringData` (which wins, as on apply).
fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    out.extend(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
    out
}
