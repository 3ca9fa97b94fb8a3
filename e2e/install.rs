//! Installing the operator as the README says: CRDs and config/default server-side, then the
//! Helm chart, rendered and applied, in its namespace-scoped mode.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;

use crate::cluster::{Apply, Env, OPERATOR_NAMESPACE, eventually};

const OPERATOR: &str = "cdp-operator";
const OPERATOR_PODS: &str = "app.kubernetes.io/name=cdp-operator";

/// config/default with the images under test and two replicas, applied server-side.
pub async fn kustomize(env: &Env) -> Result<()> {
    let extra = format!("{}replicas:\n  - name: {OPERATOR}\n    count: 2\n", env.images_override());
    let dir = env.kustomization("install", "config/default", &extra)?;
    let started = Instant::now();
    // Fails on any warning of the API server (a CRD format it does not know, for one).
    env.apply(Apply::Kustomization(&dir.to_string_lossy())).await?;
    env.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd", "-l", "app.kubernetes.io/name=cdp-operator"]).await?;
    wait_available(env, 2).await?;
    // Each replica runs under the operator's ServiceAccount, with the images the manifests
    // name: kustomize's images: rewrote the container and the operator's defaults alike.
    let pods = env.api::<Pod>(OPERATOR_NAMESPACE).list(&ListParams::default().labels(OPERATOR_PODS)).await?;
    for pod in &pods.items {
        let spec = pod.spec.as_ref().context("a pod has a spec")?;
        ensure!(spec.service_account_name.as_deref() == Some(OPERATOR), "operator pod runs as {:?}", spec.service_account_name);
        let container = &spec.containers[0];
        ensure!(container.image.as_deref() == Some(env.image.as_str()), "operator image {:?}", container.image);
        let env_value = |name: &str| container.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone());
        ensure!(env_value("CDP_IMAGE").as_deref() == Some(env.image.as_str()), "CDP_IMAGE {:?}", env_value("CDP_IMAGE"));
        ensure!(
            env_value("CDP_POSTGRES_IMAGE").as_deref() == Some(env.postgres_image.as_str()),
            "CDP_POSTGRES_IMAGE {:?}",
            env_value("CDP_POSTGRES_IMAGE")
        );
    }
    let holder = leader(env).await?;
    ensure!(pods.items.iter().any(|p| p.metadata.name.as_deref() == Some(holder.as_str())), "the lease holder {holder} is not an operator pod");
    env.figure("operator installed (config/default), 2 replicas ready, one leading", format!("{:.1} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// The operator Deployment has `replicas` ready pods.
pub async fn wait_available(env: &Env, replicas: i32) -> Result<()> {
    let deployments = env.api::<Deployment>(OPERATOR_NAMESPACE);
    eventually(&format!("{replicas} operator replicas ready"), Duration::from_secs(180), || async {
        let status = deployments.get(OPERATOR).await?.status.unwrap_or_default();
        let updated = status.updated_replicas.unwrap_or(0) == replicas && status.replicas.unwrap_or(0) == replicas;
        Ok((updated && status.ready_replicas.unwrap_or(0) == replicas).then_some(()))
    })
    .await
}

/// The pod holding the leader-election Lease.
pub async fn leader(env: &Env) -> Result<String> {
    let leases = env.api::<Lease>(OPERATOR_NAMESPACE);
    eventually("a leader", Duration::from_secs(60), || async {
        let lease = leases.get_opt("cdp-operator-leader").await?;
        Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty()))
    })
    .await
}

/// Remove what config/default installed, except the CRDs (they hold every platform's
/// resources) and the namespace.
pub async fn uninstall_kustomize(env: &Env) -> Result<()> {
    let dir = env.work.join("install");
    let built = env.kubectl(&["kustomize", &dir.to_string_lossy()]).await?;
    let kept = ["kind: CustomResourceDefinition", "kind: Namespace"];
    let objects: Vec<&str> = built.split("\n---\n").filter(|doc| !kept.iter().any(|k| doc.contains(k))).collect();
    env.kubectl_stdin(&["delete", "--ignore-not-found", "--wait=true", "-f", "-"], &objects.join("\n---\n")).await?;
    let pods = env.api::<Pod>(OPERATOR_NAMESPACE);
    eventually("the kustomize operator gone", Duration::from_secs(120), || async {
        Ok(pods.list(&ListParams::default().labels(OPERATOR_PODS)).await?.items.is_empty().then_some(()))
    })
    .await
}

/// The chart rendered with `values` (by helm, or Helm's SDK where no helm binary is
/// installed, as the manifest checks render it), then applied server-side.
pub async fn helm(env: &Env, values: serde_json::Value) -> Result<()> {
    let values_file = env.work.join("helm-values.json");
    std::fs::write(&values_file, serde_json::to_string_pretty(&values)?)?;
    let python = run(env, env.root.join("scripts/python-tools.sh"), &[]).await?;
    let rendered = run(
        env,
        python.trim().into(),
        &["scripts/validate_manifests.py", "template", "charts/cdp-operator", "--release", OPERATOR, "--namespace", OPERATOR_NAMESPACE,
          "--values", &values_file.to_string_lossy()],
    )
    .await?;
    std::fs::write(helm_rendered(env), &rendered)?;
    env.apply(Apply::Yaml(&rendered)).await
}

/// Where the chart's rendered objects are kept (to remove them at the end).
pub fn helm_rendered(env: &Env) -> std::path::PathBuf {
    env.work.join("helm-rendered.yaml")
}

async fn run(env: &Env, program: std::path::PathBuf, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(&program).args(args).current_dir(&env.root).output().await
        .with_context(|| format!("{}", program.display()))?;
    if !output.status.success() {
        bail!("{} {}: {}", program.display(), args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}
